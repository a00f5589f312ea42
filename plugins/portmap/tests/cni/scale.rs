//! A hundred pods at once, two mappings each.

use crate::common::*;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use testkit::{NetNs, require};

#[test]
fn a_hundred_concurrent_adds_and_dels() {
    require!(root; "etcd", "go", "ip", "iptables", "nft");
    const N: u16 = 100;
    let c = cluster(1);
    c.install(0, &conflist(json!({}))).unwrap();
    let node = c.node(0);
    let pods: Vec<(NetNs, String)> = (0..N)
        .map(|i| (NetNs::new("ps").unwrap(), new_id(&format!("s{i}"))))
        .collect();
    let maps = |i: u16| {
        json!([
            {"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 21000 + i, "containerPort": 81, "protocol": "tcp"}
        ])
    };
    std::thread::scope(|s| {
        for (i, (ns, id)) in pods.iter().enumerate() {
            let c = &c;
            s.spawn(move || {
                c.runtime(0)
                    .add(NET, &ns.path(), &opts(id, maps(i as u16)))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("ADD {i}: {e}"));
            });
        }
    });
    let echoes: Vec<Echo> = pods
        .iter()
        .map(|(ns, _)| Echo::start(ns, &[80, 81], &[]))
        .collect();
    let node_ip = IpAddr::V4(node.underlay_ip());
    for i in 0..N {
        for port in [20000 + i, 21000 + i] {
            assert!(
                tcp_source(node.netns(), SocketAddr::new(node_ip, port)).is_some(),
                "host port {port} forwards"
            );
        }
    }
    drop(echoes);
    std::thread::scope(|s| {
        for (ns, id) in &pods {
            let c = &c;
            s.spawn(move || {
                c.runtime(0)
                    .del(NET, &ns.path(), &opts(id, Value::Null))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("DEL {id}: {e}"));
            });
        }
    });
    let left = rules(node);
    assert!(
        !left.contains("CNI-DN-"),
        "per-container rules left:\n{left}"
    );
    // The default backend here is nftables: each container's set elements carry its ID.
    for (_, id) in &pods {
        assert!(!left.contains(id.as_str()), "{id} left behind:\n{left}");
    }
}
