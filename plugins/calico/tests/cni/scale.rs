//! Fifty pods at once on one node: all succeed, all distinct, all reachable; fifty DELs at
//! once leave nothing.

use crate::common::*;
use serde_json::json;
use std::collections::BTreeSet;
use testkit::{NetNs, require};

#[test]
fn fifty_concurrent_adds_then_fifty_concurrent_dels() {
    require!(root; "etcd", "go", "ip", "busybox");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let pods: Vec<NetNs> = (0..50)
        .map(|i| NetNs::new(&format!("p{i}")).unwrap())
        .collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rt = c.runtime(0);
                s.spawn(move || {
                    rt.add(
                        "k8s-pod-network",
                        &p.path(),
                        &pod_args("default", &format!("pod{i}")),
                    )
                    .unwrap()
                    .unwrap_or_else(|e| panic!("pod{i}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: BTreeSet<String> = results
        .iter()
        .map(|r| addresses(r)[0].split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 50, "all addresses distinct");
    let node = c.node(0);
    for ip in &ips {
        let out = node
            .netns()
            .run("busybox", ["ping", "-c1", "-W2", ip])
            .unwrap();
        assert!(out.status.success(), "{ip} unreachable from its node");
    }
    assert_eq!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .len(),
        50
    );

    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let rt = c.runtime(0);
            s.spawn(move || {
                rt.del(
                    "k8s-pod-network",
                    &p.path(),
                    &pod_args("default", &format!("pod{i}")),
                )
                .unwrap()
                .unwrap_or_else(|e| panic!("pod{i}: {e}"));
            });
        }
    });
    assert!(
        node.sh("ip route show proto 77").unwrap().trim().is_empty(),
        "no host route"
    );
    // The interfaces are freed by detached helpers, one at a time under the kernel's lock.
    assert!(
        testkit::eventually(std::time::Duration::from_secs(10), || {
            node.sh("ip -o link show | grep cali || true")
                .unwrap()
                .trim()
                .is_empty()
        }),
        "no veth"
    );
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
    assert!(
        c.values("/calico/ipam/v2/handle/").unwrap().is_empty(),
        "no allocation"
    );
}
