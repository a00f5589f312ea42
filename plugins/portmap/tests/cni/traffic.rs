//! Real traffic through the mappings, both backends: from another host, from the node (its
//! address and 127.0.0.1) and from the pod itself (hairpin); IPv4 and IPv6; the source
//! address the pod sees says whether SNAT applied.

use crate::common::*;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use testkit::{NetNs, require};

fn forwards_everything(backend: &str) {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(0, &conflist(json!({"backend": backend})))
        .unwrap();
    let node = c.node(0);
    let pod = NetNs::new("pm").unwrap();
    let id = new_id("pm");
    let result = c
        .runtime(0)
        .add(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
    let _echo = Echo::start(&pod, &[80], &[53]);
    let client_ip = std::net::Ipv4Addr::new(10, 10, 0, 99);
    let client = c.underlay.attach("cl", client_ip).unwrap();
    let client_ip6 = testkit::Underlay::ipv6_for(client_ip);
    let node4 = IpAddr::V4(node.underlay_ip());
    let node6 = IpAddr::V6(node.underlay_ip6());
    let pod4 = pod_ip(&result, true);
    let pod6 = pod_ip(&result, false);
    let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);

    for (proto, port, probe) in [
        (
            "TCP",
            8080u16,
            tcp_source as fn(&NetNs, SocketAddr) -> Option<String>,
        ),
        ("UDP", 8053, udp_source),
    ] {
        // Another host: DNAT only, the client's own address arrives.
        assert_eq!(
            probe(&client, at(node4, port)).as_deref(),
            Some(client_ip.to_string().as_str()),
            "{backend} {proto} v4 from another host"
        );
        assert_eq!(
            probe(&client, at(node6, port)).as_deref(),
            Some(client_ip6.to_string().as_str()),
            "{backend} {proto} v6 from another host"
        );
        // The node to its own address: no SNAT, the node's address arrives.
        assert_eq!(
            probe(node.netns(), at(node4, port)).as_deref(),
            Some(node4.to_string().as_str()),
            "{backend} {proto} v4 from the node"
        );
        assert_eq!(
            probe(node.netns(), at(node6, port)).as_deref(),
            Some(node6.to_string().as_str()),
            "{backend} {proto} v6 from the node"
        );
        // 127.0.0.1 (route_localnet): masqueraded, so not 127.0.0.1.
        let local = probe(node.netns(), at("127.0.0.1".parse().unwrap(), port));
        assert!(local.is_some(), "{backend} {proto} via 127.0.0.1");
        assert_ne!(
            local.as_deref(),
            Some("127.0.0.1"),
            "{backend} {proto} 127.0.0.1 is masqueraded"
        );
        // Hairpin: the pod to its own hostPort; masqueraded, or it would answer itself.
        let hair4 = probe(&pod, at(node4, port));
        assert!(hair4.is_some(), "{backend} {proto} v4 hairpin");
        assert_ne!(
            hair4.as_deref(),
            Some(pod4.to_string().as_str()),
            "{backend} {proto} v4 hairpin is masqueraded"
        );
        let hair6 = probe(&pod, at(node6, port));
        assert!(hair6.is_some(), "{backend} {proto} v6 hairpin");
        assert_ne!(
            hair6.as_deref(),
            Some(pod6.to_string().as_str()),
            "{backend} {proto} v6 hairpin is masqueraded"
        );
    }

    // CHECK passes; DEL removes every rule of the container, also without the mappings.
    c.runtime(0)
        .check(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
    let chain = chain_of(&id);
    // iptables: the container's chain; nftables: its elements, tagged with its ID.
    let mark = if backend == "iptables" {
        chain.clone()
    } else {
        id.clone()
    };
    assert!(rules(node).contains(&mark), "{backend}: the rules exist");
    if std::env::var_os("SHOW_RULES").is_some() {
        eprintln!("{}", rules(node));
    }
    c.runtime(0)
        .del(NET, &pod.path(), &opts(&id, serde_json::Value::Null))
        .unwrap()
        .unwrap();
    let after = rules(node);
    assert!(
        !after.contains(&chain) && !after.contains(&id),
        "{backend}: left behind:\n{after}"
    );
    assert!(
        tcp_source(&client, at(node4, 8080)).is_none(),
        "{backend}: no forwarding after DEL"
    );
    c.runtime(0)
        .del(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
}

#[test]
fn nftables_forwards_from_everywhere() {
    forwards_everything("nftables");
}

#[test]
fn iptables_forwards_from_everywhere() {
    forwards_everything("iptables");
}

/// A UDP flow that began before the mapping existed (or while it pointed at the old pod)
/// would keep its conntrack entry: ADD and DEL delete the entries of their UDP host ports.
fn udp_flows_are_flushed(backend: &str) {
    require!(root; "etcd", "go", "ip", "iptables", "nft", "conntrack");
    let c = cluster(1);
    c.install(0, &conflist(json!({"backend": backend})))
        .unwrap();
    let node = c.node(0);
    let client_ip = std::net::Ipv4Addr::new(10, 10, 0, 98);
    let client = c.underlay.attach("cu", client_ip).unwrap();
    let to = SocketAddr::new(IpAddr::V4(node.underlay_ip()), 8053);
    // A fixed client port: the same flow before and after the mapping.
    let send = || {
        client
            .within(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:40053").unwrap();
                s.send_to(b"x", to).unwrap();
            })
            .unwrap()
    };
    let flows = || {
        node.sh("conntrack -L -p udp --orig-port-dst 8053 2>/dev/null")
            .unwrap()
    };
    // Conntrack tracks a namespace's flows once a rule there needs it.
    node.sh("nft add table inet ct_warmup; \
         nft 'add chain inet ct_warmup c { type filter hook prerouting priority 0; }'; \
         nft add rule inet ct_warmup c ct state new counter")
        .unwrap();
    // (The first datagram may wait for ARP.)
    assert!(
        testkit::eventually(std::time::Duration::from_secs(3), || {
            send();
            flows().contains("dport=8053")
        }),
        "a flow before the mapping:\n{}",
        flows()
    );
    let pod = NetNs::new("pu").unwrap();
    let id = new_id("pu");
    let result = c
        .runtime(0)
        .add(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
    let pod4 = pod_ip(&result, true).to_string();
    assert!(
        testkit::eventually(std::time::Duration::from_secs(3), || !flows()
            .contains("dst=10.10.0.98 ")
            || flows().contains(&pod4)),
        "the flow from before the mapping was deleted:\n{}",
        flows()
    );
    let _echo = Echo::start(&pod, &[], &[53]);
    send();
    assert!(
        testkit::eventually(std::time::Duration::from_secs(3), || flows()
            .contains(&pod4)),
        "the same flow now goes to the pod:\n{}",
        flows()
    );
    c.runtime(0)
        .del(NET, &pod.path(), &opts(&id, serde_json::Value::Null))
        .unwrap()
        .unwrap();
    assert!(
        testkit::eventually(std::time::Duration::from_secs(3), || !flows()
            .contains(&pod4)),
        "DEL deleted the flow to the pod:\n{}",
        flows()
    );
    node.sh("nft delete table inet ct_warmup").unwrap();
}

#[test]
fn nftables_flushes_udp_flows() {
    udp_flows_are_flushed("nftables");
}

#[test]
fn iptables_flushes_udp_flows() {
    udp_flows_are_flushed("iptables");
}
