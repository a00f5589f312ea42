//! Bad input (findings #3 and #17 among it), CHECK for every family mix, GC.

use crate::common::*;
use serde_json::{Value, json};
use testkit::{NetNs, require};

#[test]
fn bad_input_is_a_clear_error_and_touches_nothing() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(0, &conflist(json!({}))).unwrap();
    c.install(0, &conflist_named("v4only", true, false, json!({})))
        .unwrap();
    let node = c.node(0);
    let holder = NetNs::new("ph").unwrap();
    let holder_id = new_id("ph");
    c.runtime(0)
        .add(NET, &holder.path(), &opts(&holder_id, two_mappings()))
        .unwrap()
        .unwrap();
    let before = stable_rules(node);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            NET,
            json!([{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]),
            "hostPort",
        ),
        (
            NET,
            json!([{"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}]),
            "hostPort",
        ),
        (
            NET,
            json!([{"hostPort": 9000, "containerPort": 0, "protocol": "tcp"}]),
            "containerPort",
        ),
        (
            NET,
            json!([{"hostPort": 9000, "containerPort": 80, "protocol": "icmp"}]),
            "unknown protocol",
        ),
        (
            NET,
            json!([{"hostPort": 9000, "containerPort": 80, "hostIP": "not-an-ip"}]),
            "hostIP",
        ),
        (
            "v4only",
            json!([{"hostPort": 9000, "containerPort": 80, "hostIP": "fd00::1"}]),
            "no IPv6 address",
        ),
        (
            NET,
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
            "already mapped to container",
        ),
        // Findings #17: one host port and protocol twice in one call.
        (
            NET,
            json!([{"hostPort": 9000, "containerPort": 80, "protocol": "tcp"},
                   {"hostPort": 9000, "containerPort": 81, "protocol": "tcp"}]),
            "portMappings[1]\": host port 9000/tcp is already mapped by runtimeConfig.portMappings[0]",
        ),
    ];
    for (net, mappings, says) in cases {
        let pod = NetNs::new("pb").unwrap();
        let id = new_id("pb");
        let e = c
            .runtime(0)
            .add(net, &pod.path(), &opts(&id, mappings.clone()))
            .unwrap()
            .expect_err("refused");
        assert_eq!(e.code, Some(7), "{mappings}: {e}");
        assert!(e.msg.contains(says), "{mappings}: {}", e.msg);
        assert_eq!(stable_rules(node), before, "{mappings} changed the rules");
        // The runtime cleans up the failed sandbox.
        c.runtime(0)
            .del(net, &pod.path(), &opts(&id, mappings))
            .unwrap()
            .unwrap();
    }
    // The holder still forwards; another protocol on the same port is free.
    let other = NetNs::new("po").unwrap();
    let other_id = new_id("po");
    c.runtime(0)
        .add(
            NET,
            &other.path(),
            &opts(
                &other_id,
                json!([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]),
            ),
        )
        .unwrap()
        .unwrap();
    c.runtime(0)
        .del(NET, &other.path(), &opts(&other_id, Value::Null))
        .unwrap()
        .unwrap();
    c.runtime(0)
        .del(NET, &holder.path(), &opts(&holder_id, Value::Null))
        .unwrap()
        .unwrap();
    let left = rules(node);
    assert!(
        !left.contains("CNI-DN-") && !left.contains(&holder_id) && !left.contains(&other_id),
        "{left}"
    );
}

fn check_catches_missing_rules(backend: &str, name: &str, v4: bool, v6: bool) {
    let c = cluster(1);
    c.install(
        0,
        &conflist_named(name, v4, v6, json!({"backend": backend})),
    )
    .unwrap();
    let node = c.node(0);
    let pod = NetNs::new("pc").unwrap();
    let id = new_id("pc");
    let rt = c.runtime(0);
    rt.add(name, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
    rt.check(name, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap_or_else(|e| panic!("{backend} {name}: CHECK after ADD: {e}"));
    let chain = portmap::layout::chain_name(name, &id);
    let fam = if v4 { "4" } else { "6" };
    let flush = match backend {
        "nftables" => {
            format!("nft delete element inet calico_portmap hostports{fam} '{{ tcp . 8080 }}'")
        }
        _ if v4 => format!("iptables -t nat -F {chain}"),
        _ => format!("ip6tables -t nat -F {chain}"),
    };
    node.sh(&flush).unwrap();
    let e = rt
        .check(name, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .expect_err("CHECK fails");
    assert_eq!(e.code, Some(106), "{backend} {name}: {e}");
    // iptables names the missing rule, nftables the missing element: both the port.
    assert!(e.msg.contains("8080"), "{backend} {name}: {}", e.msg);
    rt.del(name, &pod.path(), &opts(&id, Value::Null))
        .unwrap()
        .unwrap();
    let left = rules(node);
    assert!(
        !left.contains(&chain) && !left.contains(&id),
        "{backend} {name}: left behind:\n{left}"
    );
}

#[test]
fn check_verifies_v4_only_v6_only_and_dual_stack() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    for backend in ["nftables", "iptables"] {
        check_catches_missing_rules(backend, "v4only", true, false);
        check_catches_missing_rules(backend, "v6only", false, true);
        check_catches_missing_rules(backend, "dual", true, true);
    }
}

#[test]
fn gc_removes_only_what_is_not_valid() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    for backend in ["nftables", "iptables"] {
        let c = cluster(1);
        c.install(0, &conflist(json!({"backend": backend})))
            .unwrap();
        let (a, b) = (NetNs::new("pga").unwrap(), NetNs::new("pgb").unwrap());
        let (ida, idb) = (derived_id(&a.path()), derived_id(&b.path()));
        let rt = c.runtime(0);
        rt.add(
            NET,
            &a.path(),
            &opts(&ida, json!([{"hostPort": 8081, "containerPort": 80}])),
        )
        .unwrap()
        .unwrap();
        rt.add(
            NET,
            &b.path(),
            &opts(&idb, json!([{"hostPort": 8082, "containerPort": 80}])),
        )
        .unwrap()
        .unwrap();
        // Only a is valid. (The driver's gc takes the valid namespaces; the IDs follow.)
        rt.gc(NET, &[a.path().as_path()], &testkit::CallOpts::default())
            .unwrap()
            .unwrap();
        let after = rules(c.node(0));
        // iptables: the container's chain; nftables: its elements, tagged with its ID.
        let (ma, mb) = if backend == "iptables" {
            (chain_of(&ida), chain_of(&idb))
        } else {
            (ida.clone(), idb.clone())
        };
        assert!(after.contains(&ma), "{backend}: a kept ({ma}):\n{after}");
        assert!(!after.contains(&mb), "{backend}: b removed:\n{after}");
        rt.del(NET, &a.path(), &opts(&ida, Value::Null))
            .unwrap()
            .unwrap();
        rt.del(NET, &b.path(), &opts(&idb, Value::Null))
            .unwrap()
            .unwrap();
        let left = rules(c.node(0));
        assert!(!left.contains("CNI-DN-") && !left.contains(&ida), "{left}");
    }
}

/// Findings #3: a line break in `externalSetMarkChain` added a rule of its own to the
/// iptables-restore document (and it survived DEL). Now code 7 naming the field, the nat
/// table unchanged, and DEL still succeeds.
#[test]
fn external_set_mark_chain_injection_is_refused() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    let injected = "ACCEPT\n-I OUTPUT 1 -p tcp --dport 9 -m comment --comment INJECTED -j DNAT --to-destination 127.0.0.1:1";
    c.install(
        0,
        &conflist(json!({"backend": "iptables", "externalSetMarkChain": injected})),
    )
    .unwrap();
    let node = c.node(0);
    let nat = || {
        node.sh("iptables-save -t nat; ip6tables-save -t nat")
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = nat();
    let pod = NetNs::new("pi").unwrap();
    let id = new_id("pi");
    let e = c
        .runtime(0)
        .add(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .expect_err("refused");
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("externalSetMarkChain"), "{}", e.msg);
    assert_eq!(nat(), before);
    assert!(!nat().contains("INJECTED"));
    c.runtime(0)
        .del(NET, &pod.path(), &opts(&id, two_mappings()))
        .unwrap()
        .unwrap();
    assert_eq!(nat(), before);
    assert!(portmap_state(node).is_empty(), "{:?}", portmap_state(node));
}

/// Findings #17: a prevResult whose address is unspecified, loopback, multicast or a /0
/// is no DNAT target: code 7, one error object, nothing installed or claimed.
#[test]
fn nonsense_targets_are_refused() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    let node = c.node(0);
    let before = stable_rules(node);
    let pod = NetNs::new("pt").unwrap();
    for address in [
        "0.0.0.0/0",
        "10.244.9.9/0",
        "127.0.0.1/8",
        "224.0.0.5/32",
        "::/0",
        "::1/128",
    ] {
        let id = new_id("pt");
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": pod.path()}],
            "ips": [{"address": address, "interface": 0}]});
        for backend in ["nftables", "iptables"] {
            let conf = portmap_conf(NET, json!({"backend": backend}), two_mappings(), &prev);
            let (code, msg) = portmap_direct(node, "ADD", &id, &pod.path(), &conf).err();
            assert_eq!(code, 7, "{address} {backend}: {msg}");
            assert!(msg.contains(address.split('/').next().unwrap()), "{msg}");
            assert_eq!(stable_rules(node), before, "{address} {backend}");
            assert!(portmap_state(node).is_empty(), "{address} {backend}");
        }
    }
}

/// A second ADD of one container with fewer mappings (a runtime retrying with a changed
/// spec) releases the claims it no longer maps, so another pod can take them; DEL then
/// leaves no claim or record.
#[test]
fn a_repeated_add_releases_the_ports_it_no_longer_maps() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(0, &conflist(json!({}))).unwrap();
    let node = c.node(0);
    let (a, b) = (NetNs::new("pra").unwrap(), NetNs::new("prb").unwrap());
    let (ida, idb) = (new_id("pra"), new_id("prb"));
    let rt = c.runtime(0);
    let prev = rt
        .add(NET, &a.path(), &opts(&ida, Value::Null))
        .unwrap()
        .unwrap();
    let three = json!([{"hostPort": 7001, "containerPort": 80},
                       {"hostPort": 7002, "containerPort": 80},
                       {"hostPort": 7003, "containerPort": 80}]);
    let one = json!([{"hostPort": 7001, "containerPort": 80}]);
    for mappings in [three, one] {
        let conf = portmap_conf(NET, json!({}), mappings, &prev);
        portmap_direct(node, "ADD", &ida, &a.path(), &conf).ok();
    }
    let state = portmap_state(node);
    assert!(
        state
            .iter()
            .filter(|s| s.starts_with("ports/"))
            .all(|s| s.contains("tcp-7001/")),
        "{state:?}"
    );
    rt.add(
        NET,
        &b.path(),
        &opts(&idb, json!([{"hostPort": 7002, "containerPort": 80}])),
    )
    .unwrap()
    .unwrap();
    for (ns, id) in [(&a, &ida), (&b, &idb)] {
        rt.del(NET, &ns.path(), &opts(id, Value::Null))
            .unwrap()
            .unwrap();
    }
    assert!(portmap_state(node).is_empty(), "{:?}", portmap_state(node));
    let left = rules(node);
    assert!(!left.contains(&ida) && !left.contains(&idb), "{left}");
}
