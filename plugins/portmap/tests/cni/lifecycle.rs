//! Bad input, CHECK for every family mix, GC.

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
