//! Bad input (findings #3 and #17 among it), CHECK for every family mix, GC.

use crate::common::*;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
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

/// A pod on the v4-only network `v4only` with no mappings yet: namespace, ID, ADD result.
fn v4_pod(c: &testkit::Cluster, hint: &str) -> (NetNs, String, Value) {
    let ns = NetNs::new(hint).unwrap();
    let id = new_id(hint);
    let prev = c
        .runtime(0)
        .add("v4only", &ns.path(), &opts(&id, Value::Null))
        .unwrap()
        .unwrap();
    (ns, id, prev)
}

/// Review of findings #1's fix. A holds a host port (`snat: false`, so its record names
/// nothing but the port's key); its element is removed behind its back (as another tool or
/// plugin may, or as an ADD killed before installing leaves it), so its claim is stale. B
/// takes the port and installs it; A's DEL must leave B's element (a DEL by key deleted it).
/// Then A holds 7102 and 7103 the same way, B takes 7102 (A's first recorded key), and C
/// asks for 7103: B's element on A's first key must not make A look alive (the tag says
/// whose an element is). A's DEL leaves B's and C's elements, which still forward; after
/// every DEL nothing is left.
#[test]
fn a_stale_holders_del_spares_the_ports_taken_over() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(0, &conflist_named("v4only", true, false, json!({})))
        .unwrap();
    let node = c.node(0);
    let (a, ida, preva) = v4_pod(&c, "psa");
    let (b, idb, prevb) = v4_pod(&c, "psb");
    let (cc, idc, prevc) = v4_pod(&c, "psc");
    let extra = json!({"snat": false});
    let map = |ports: &[u16]| {
        Value::Array(
            ports
                .iter()
                .map(|p| json!({"hostPort": p, "containerPort": 80}))
                .collect(),
        )
    };
    let add = |ns: &NetNs, id: &str, prev: &Value, ports: &[u16]| {
        let conf = portmap_conf("v4only", extra.clone(), map(ports), prev);
        portmap_direct(node, "ADD", id, &ns.path(), &conf).ok();
    };
    let del = |ns: &NetNs, id: &str, prev: &Value| {
        let conf = portmap_conf("v4only", json!({}), Value::Null, prev);
        portmap_direct(node, "DEL", id, &ns.path(), &conf).done();
    };
    let lose = |ports: &str| {
        node.sh(&format!(
            "nft delete element inet calico_portmap hostports4 '{{ {ports} }}'"
        ))
        .unwrap();
    };
    let _echo_b = Echo::start(&b, &[80], &[]);
    let _echo_c = Echo::start(&cc, &[80], &[]);
    let node_ip = IpAddr::V4(node.underlay_ip());
    let forwards = |port: u16| tcp_source(node.netns(), SocketAddr::new(node_ip, port)).is_some();

    add(&a, &ida, &preva, &[7101]);
    lose("tcp . 7101");
    add(&b, &idb, &prevb, &[7101]);
    del(&a, &ida, &preva);
    let set = nft_set(node, "hostports4");
    assert!(set.contains(&idb), "B's element stays:\n{set}");
    assert!(forwards(7101), "7101 still forwards to B");

    add(&a, &ida, &preva, &[7102, 7103]);
    lose("tcp . 7102, tcp . 7103");
    add(&b, &idb, &prevb, &[7101, 7102]);
    add(&cc, &idc, &prevc, &[7103]);
    assert!(forwards(7102) && forwards(7103));
    del(&a, &ida, &preva);
    let set = nft_set(node, "hostports4");
    assert!(set.contains(&idb) && set.contains(&idc), "{set}");
    assert!(!set.contains(&ida), "{set}");
    for port in [7101, 7102, 7103] {
        assert!(forwards(port), "{port} still forwards");
    }
    // The claims are B's and C's.
    let state = portmap_state(node);
    assert_eq!(
        state.iter().filter(|s| s.starts_with("ports/")).count(),
        3,
        "{state:?}"
    );
    del(&b, &idb, &prevb);
    del(&cc, &idc, &prevc);
    assert!(portmap_state(node).is_empty(), "{:?}", portmap_state(node));
    let left = rules(node);
    for id in [&ida, &idb, &idc] {
        assert!(!left.contains(id.as_str()), "{id} left:\n{left}");
    }
    for (ns, id) in [(&a, &ida), (&b, &idb), (&cc, &idc)] {
        c.runtime(0)
            .del("v4only", &ns.path(), &opts(id, Value::Null))
            .unwrap()
            .unwrap();
    }
}

/// A 200-character container ID (the CNI spec sets no bound): nf_tables keeps the first 127
/// bytes of the tag, and every comparison goes by that. ADD, CHECK, a GC that lists it as
/// valid (its elements stay), DEL: nothing left.
#[test]
fn a_200_character_container_id_is_added_and_removed() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(0, &conflist_named("v4only", true, false, json!({})))
        .unwrap();
    let node = c.node(0);
    let (pod, short, prev) = v4_pod(&c, "plong");
    let id = format!("{short}{}", "x".repeat(200 - short.len()));
    let conf = portmap_conf("v4only", json!({}), two_mappings(), &prev);
    portmap_direct(node, "ADD", &id, &pod.path(), &conf).ok();
    let out = portmap_direct(node, "CHECK", &id, &pod.path(), &conf);
    assert!(out.status.success(), "CHECK: {}{}", out.stdout, out.stderr);
    let tag = &id[..127];
    let set = nft_set(node, "hostports4");
    assert!(set.contains(tag), "{}", rules(node));
    let gc = json!({"cniVersion": "1.1.0", "name": "v4only", "type": "portmap",
                    "cni.dev/valid-attachments": [{"containerID": id, "ifname": "eth0"}]});
    portmap_direct(node, "GC", &id, &pod.path(), &gc).done();
    let set = nft_set(node, "hostports4");
    assert!(set.contains(tag), "GC kept the valid container:\n{set}");
    let del = portmap_conf("v4only", json!({}), Value::Null, &prev);
    portmap_direct(node, "DEL", &id, &pod.path(), &del).done();
    let left = rules(node);
    assert!(!left.contains(tag), "left:\n{left}");
    assert!(portmap_state(node).is_empty(), "{:?}", portmap_state(node));
    c.runtime(0)
        .del("v4only", &pod.path(), &opts(&short, Value::Null))
        .unwrap()
        .unwrap();
}

/// Review of findings #1's fix: a DEL whose removal fails while the container's rules stay
/// (iptables: a rule portmap did not write jumps to the container's chain, so the chain
/// cannot be deleted) reports code 103 and keeps the record and the claims, since the port
/// still forwards to the container: another pod asking for it is refused. Once the foreign
/// rule is gone, the retried DEL leaves nothing.
#[test]
fn a_del_that_cannot_remove_the_rules_keeps_the_claims() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    let c = cluster(1);
    c.install(
        0,
        &conflist_named("v4only", true, false, json!({"backend": "iptables"})),
    )
    .unwrap();
    let node = c.node(0);
    let (a, ida, preva) = v4_pod(&c, "pka");
    let (b, idb, prevb) = v4_pod(&c, "pkb");
    let one = json!([{"hostPort": 7201, "containerPort": 80}]);
    let conf =
        |prev: &Value| portmap_conf("v4only", json!({"backend": "iptables"}), one.clone(), prev);
    portmap_direct(node, "ADD", &ida, &a.path(), &conf(&preva)).ok();
    let chain = portmap::layout::chain_name("v4only", &ida);
    node.sh(&format!(
        "iptables -t nat -N PORTMAP-TEST-FOREIGN && iptables -t nat -A PORTMAP-TEST-FOREIGN -j {chain}"
    ))
    .unwrap();
    let del = portmap_conf("v4only", json!({}), Value::Null, &preva);
    let (code, msg) = portmap_direct(node, "DEL", &ida, &a.path(), &del).err();
    assert_eq!(code, 103, "{msg}");
    assert!(msg.contains("iptables"), "{msg}");
    let state = portmap_state(node);
    assert!(
        state.contains(&"ports/tcp-7201/v4-any".to_string())
            && state.contains(&format!("{chain}.json")),
        "{state:?}"
    );
    let (code, msg) = portmap_direct(node, "ADD", &idb, &b.path(), &conf(&prevb)).err();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains(&ida), "{msg}");
    node.sh("iptables -t nat -F PORTMAP-TEST-FOREIGN && iptables -t nat -X PORTMAP-TEST-FOREIGN")
        .unwrap();
    portmap_direct(node, "DEL", &ida, &a.path(), &del).done();
    assert!(portmap_state(node).is_empty(), "{:?}", portmap_state(node));
    let left = rules(node);
    assert!(!left.contains(&chain) && !left.contains(&ida), "{left}");
    for (ns, id) in [(&a, &ida), (&b, &idb)] {
        c.runtime(0)
            .del("v4only", &ns.path(), &opts(id, Value::Null))
            .unwrap()
            .unwrap();
    }
}
