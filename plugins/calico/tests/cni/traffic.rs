//! Real traffic: pods on one node reach each other and the node; pods on two nodes reach
//! each other once the nodes route each other's blocks over the underlay.

use crate::common::*;
use serde_json::json;
use testkit::{NetNs, require};

#[test]
fn pods_reach_each_other_on_a_node_and_across_nodes() {
    require!(root; "etcd", "go", "ip", "busybox");
    let c = cluster(2);
    for n in 0..2 {
        c.install(n, &conflist("1.0.0", json!({"assign_ipv6": "true"})))
            .unwrap();
    }
    let (a, b, x) = (
        NetNs::new("pa").unwrap(),
        NetNs::new("pb").unwrap(),
        NetNs::new("px").unwrap(),
    );
    let ra = c
        .runtime(0)
        .add("k8s-pod-network", &a.path(), &pod_args("default", "a"))
        .unwrap()
        .unwrap();
    let rb = c
        .runtime(0)
        .add("k8s-pod-network", &b.path(), &pod_args("default", "b"))
        .unwrap()
        .unwrap();
    let rx = c
        .runtime(1)
        .add("k8s-pod-network", &x.path(), &pod_args("default", "x"))
        .unwrap()
        .unwrap();

    // Same node, both families, and the node itself.
    assert!(ping(&a, &ip_of(&rb, 0)), "a -> b (IPv4)");
    assert!(ping(&a, &ip_of(&rb, 1)), "a -> b (IPv6)");
    assert!(
        ping(&b, &c.node(0).underlay_ip().to_string()),
        "b -> its node"
    );

    // Across nodes: each node routes the other's blocks via the underlay (what the BGP
    // helper will do later).
    let block = |r: &serde_json::Value, i: usize| -> String {
        let ip: ipnet::IpNet = addresses(r)[i].parse().unwrap();
        let len = if ip.addr().is_ipv4() { 26 } else { 122 };
        ipnet::IpNet::new(ip.addr(), len)
            .unwrap()
            .trunc()
            .to_string()
    };
    let (n1, n2) = (c.node(0), c.node(1));
    n1.sh(&format!(
        "ip route add {} via {}",
        block(&rx, 0),
        n2.underlay_ip()
    ))
    .unwrap();
    n2.sh(&format!(
        "ip route add {} via {}",
        block(&ra, 0),
        n1.underlay_ip()
    ))
    .unwrap();
    n1.sh(&format!(
        "ip -6 route add {} via {}",
        block(&rx, 1),
        n2.underlay_ip6()
    ))
    .unwrap();
    n2.sh(&format!(
        "ip -6 route add {} via {}",
        block(&ra, 1),
        n1.underlay_ip6()
    ))
    .unwrap();
    assert!(ping(&a, &ip_of(&rx, 0)), "a (node-1) -> x (node-2), IPv4");
    assert!(ping(&x, &ip_of(&ra, 1)), "x (node-2) -> a (node-1), IPv6");

    for (n, p, args) in [(0, &a, "a"), (0, &b, "b"), (1, &x, "x")] {
        c.runtime(n)
            .del("k8s-pod-network", &p.path(), &pod_args("default", args))
            .unwrap()
            .unwrap();
    }
}
