//! The seed conflist verbatim (cniVersion 0.3.0, mutual-TLS etcd at 10.10.0.174:2379,
//! `policy.type: k8s` with its kubeconfig) against a stand-in for the Kubernetes API: there
//! is no API server on these machines, so `testkit::k8s::K8sApiStandIn` serves recorded pod
//! and namespace objects (testdata/k8s).

use crate::common::*;
use serde_json::json;
use testkit::{NetNs, require};

#[test]
fn seed_conflist_verbatim_with_kubernetes_policy() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.add_pool("pool-a", "10.60.0.0/16", None).unwrap();
    c.add_pool("pool-b", "10.61.0.0/16", None).unwrap();
    let api = start_api(&c);
    let seed = testkit::cluster::seed_conflist().unwrap();
    c.install(0, &seed).unwrap();
    let rt = c.runtime(0);

    // default/nginx: labels, service account, ports and profiles from the API.
    let nginx = NetNs::new("nginx").unwrap();
    let r = rt
        .add(
            "k8s-pod-network",
            &nginx.path(),
            &pod_args("default", "nginx"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(r["cniVersion"], "0.3.0");
    assert_eq!(
        r["ips"][0]["version"], "4",
        "0.3.0 results carry ips[].version"
    );
    assert_eq!(r["interfaces"][0]["name"], "calic440f455693");
    let wep = &c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-nginx-eth0")
        .unwrap()[0]
        .1;
    assert_eq!(
        wep["metadata"]["labels"],
        json!({"app":"nginx","projectcalico.org/namespace":"default",
               "projectcalico.org/orchestrator":"k8s","projectcalico.org/serviceaccount":"default"})
    );
    assert_eq!(
        wep["spec"]["profiles"],
        json!(["kns.default", "ksa.default.default"])
    );
    assert_eq!(wep["spec"]["serviceAccountName"], "default");
    assert_eq!(
        wep["spec"]["ports"],
        json!([{"name":"http","protocol":"TCP","port":80,"hostPort":0,"hostIP":""},
               {"name":"","protocol":"TCP","port":8080,"hostPort":8080,"hostIP":""},
               {"name":"init-probe","protocol":"TCP","port":9000,"hostPort":0,"hostIP":""}])
    );
    // policy.type k8s: no per-network profile is created.
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/profiles/")
            .unwrap()
            .is_empty()
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/namespaces/default/pods/nginx"))
    );

    // A pod the API server does not know is an unknown container, and leaves nothing.
    let p1 = NetNs::new("p1").unwrap();
    let e = rt
        .add("k8s-pod-network", &p1.path(), &pod_args("default", "ghost"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(3), "{e}");
    assert!(e.msg.contains("default/ghost"), "{e}");
    assert!(p1.sh("ip link show eth0").is_err());

    // Pool annotations: the pod's overrides the namespace's.
    let web = NetNs::new("web").unwrap();
    let r = rt
        .add("k8s-pod-network", &web.path(), &pod_args("team-a", "web"))
        .unwrap()
        .unwrap();
    assert!(addresses(&r)[0].starts_with("10.61."), "pool-b: {r}");

    // ipAddrs: exactly the address asked for.
    let fixed = NetNs::new("fixed").unwrap();
    let r = rt
        .add(
            "k8s-pod-network",
            &fixed.path(),
            &pod_args("default", "fixed"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&r)[0], "10.244.200.10/32");

    // ipAddrsNoIpam needs the feature flag, which the seed does not set.
    let noipam = NetNs::new("noipam").unwrap();
    let e = rt
        .add(
            "k8s-pod-network",
            &noipam.path(),
            &pod_args("default", "noipam"),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("ip_addrs_no_ipam"), "{e}");
    rt.del(
        "k8s-pod-network",
        &noipam.path(),
        &pod_args("default", "noipam"),
    )
    .unwrap()
    .unwrap();

    for (ns, pod, p) in [
        ("default", "nginx", &nginx),
        ("team-a", "web", &web),
        ("default", "fixed", &fixed),
    ] {
        rt.del("k8s-pod-network", &p.path(), &pod_args(ns, pod))
            .unwrap()
            .unwrap();
    }
    assert!(c.values("/calico/ipam/v2/handle/").unwrap().is_empty());
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn check_with_the_seed_at_1_0_0_and_a_rotated_token() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let api = start_api(&c);
    let mut seed = testkit::cluster::seed_conflist().unwrap();
    seed["cniVersion"] = json!("1.0.0");
    c.install(0, &seed).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("pod").unwrap();
    rt.add(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();
    rt.check(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();
    rt.del(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();

    // calico-node rotates the token: the old file is refused until it is rewritten, and
    // then the very next ADD works (the kubeconfig is read on every call).
    api.set_token("rotated-token");
    let e = rt
        .add(
            "k8s-pod-network",
            &pod.path(),
            &pod_args("default", "nginx"),
        )
        .unwrap()
        .unwrap_err();
    assert!(e.msg.contains("token"), "{e}");
    rt.del(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();
    api.write_kubeconfig(&c.node(0).conf_dir().join("calico-kubeconfig"))
        .unwrap();
    rt.add(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();
    rt.del(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "nginx"),
    )
    .unwrap()
    .unwrap();
}

#[test]
fn ip_addrs_no_ipam_with_the_feature_flag() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let _api = start_api(&c);
    let mut seed = testkit::cluster::seed_conflist().unwrap();
    seed["plugins"][0]["feature_control"] = json!({"ip_addrs_no_ipam": true});
    c.install(0, &seed).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("noipam").unwrap();
    let r = rt
        .add(
            "k8s-pod-network",
            &pod.path(),
            &pod_args("default", "noipam"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&r)[0], "10.99.0.5/32");
    assert!(
        c.values("/calico/ipam/v2/handle/").unwrap().is_empty(),
        "no IPAM involved"
    );
    assert!(
        pod.sh("ip -4 addr show dev eth0")
            .unwrap()
            .contains("10.99.0.5/32")
    );
    rt.del(
        "k8s-pod-network",
        &pod.path(),
        &pod_args("default", "noipam"),
    )
    .unwrap()
    .unwrap();
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
}
