//! CHECK catches what changed; other IPAM plugins are delegated to.

use crate::common::*;
use serde_json::json;
use testkit::{NetNs, require};

#[test]
fn check_catches_a_deleted_route_a_changed_address_and_a_missing_record() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let node = c.node(0);
    let mut pods = Vec::new();
    for name in ["route", "addr", "record"] {
        let p = NetNs::new(name).unwrap();
        let r = rt
            .add("k8s-pod-network", &p.path(), &pod_args("default", name))
            .unwrap()
            .unwrap();
        rt.check("k8s-pod-network", &p.path(), &pod_args("default", name))
            .unwrap()
            .unwrap();
        pods.push((name, p, r));
    }
    let ip = |r: &serde_json::Value| addresses(r)[0].split('/').next().unwrap().to_string();

    node.sh(&format!("ip route del {}", ip(&pods[0].2)))
        .unwrap();
    let e = rt
        .check(
            "k8s-pod-network",
            &pods[0].1.path(),
            &pod_args("default", "route"),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(106), "{e}");
    assert!(
        e.msg.contains("no route") && e.msg.contains(&ip(&pods[0].2)),
        "{e}"
    );

    pods[1]
        .1
        .sh(&format!(
            "ip addr del {}/32 dev eth0 && ip addr add 10.250.0.1/32 dev eth0",
            ip(&pods[1].2)
        ))
        .unwrap();
    let e = rt
        .check(
            "k8s-pod-network",
            &pods[1].1.path(),
            &pod_args("default", "addr"),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(106), "{e}");
    assert!(e.msg.contains("10.250.0.1"), "{e}");

    c.etcd
        .delete_prefix("/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-record-eth0")
        .unwrap();
    let e = rt
        .check(
            "k8s-pod-network",
            &pods[2].1.path(),
            &pod_args("default", "record"),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(106), "{e}");
    assert!(
        e.msg.contains("endpoint record") && e.msg.contains("does not exist"),
        "{e}"
    );

    for (name, p, _) in &pods {
        rt.del("k8s-pod-network", &p.path(), &pod_args("default", name))
            .unwrap()
            .unwrap();
    }
}

#[test]
fn host_local_ipam_is_delegated() {
    require!(root; "etcd", "go", "ip", "/usr/lib/cni/host-local");
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["ipam"] = json!({"type": "host-local", "subnet": "10.77.0.0/24",
                                         "dataDir": "/var/lib/cni/host-local"});
    c.install(0, &list).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("hl").unwrap();
    let r = rt
        .add("k8s-pod-network", &pod.path(), &pod_args("default", "hl"))
        .unwrap()
        .unwrap();
    let a = addresses(&r);
    assert!(a[0].starts_with("10.77.0.") && a[0].ends_with("/32"), "{r}");
    assert!(
        pod.sh("ip -4 route")
            .unwrap()
            .contains("default via 169.254.1.1")
    );
    let weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .unwrap();
    assert_eq!(weps[0].1["spec"]["ipNetworks"], json!([a[0]]));
    rt.check("k8s-pod-network", &pod.path(), &pod_args("default", "hl"))
        .unwrap()
        .unwrap();
    let hl = c.node(0).cni_lib_dir().join("host-local/k8s-pod-network");
    assert!(hl.join(a[0].trim_end_matches("/32")).exists());
    rt.del("k8s-pod-network", &pod.path(), &pod_args("default", "hl"))
        .unwrap()
        .unwrap();
    assert!(
        !hl.join(a[0].trim_end_matches("/32")).exists(),
        "host-local released"
    );
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
}
