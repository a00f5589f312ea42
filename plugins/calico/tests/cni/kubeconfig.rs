//! A kubeconfig without `policy.type: k8s`: the pod is not read, but Calico IPAM still
//! reads the namespace's labels for the pools' `namespaceSelector` (the Kubernetes API
//! stand-in serves them: there is no API server on these machines).

use crate::common::*;
use serde_json::json;
use testkit::{NetNs, require};

/// Mirrors ipam_plugin.go `cmdAdd` (namespace read when `conf.Kubernetes.Kubeconfig != ""
/// || conf.Policy.PolicyType == "k8s"`), with the calico plugin's in-process IPAM.
#[test]
fn namespace_selector_applies_with_a_kubeconfig_and_no_policy() {
    require!(root; "etcd", "go", "ip");
    let c = testkit::Cluster::start(1, &[]).unwrap();
    for (name, cidr, selector) in [
        ("team-a-pool", "10.60.0.0/16", "team == 'a'"),
        ("others", "10.61.0.0/16", "!has(team)"),
    ] {
        let pool = json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name},
            "spec": {"cidr": cidr, "namespaceSelector": selector}});
        c.etcd
            .put(
                &format!("/calico/resources/v3/projectcalico.org/ippools/{name}"),
                &pool.to_string(),
            )
            .unwrap();
    }
    let api = start_api(&c);
    let mut list = testkit::cluster::seed_conflist().unwrap();
    list["plugins"][0].as_object_mut().unwrap().remove("policy");
    list["cniVersion"] = json!("1.0.0");
    c.install(0, &list).unwrap();
    let rt = c.runtime(0);
    let web = NetNs::new("web").unwrap();
    let r = rt
        .add("k8s-pod-network", &web.path(), &pod_args("team-a", "web"))
        .unwrap()
        .unwrap();
    assert!(addresses(&r)[0].starts_with("10.60."), "{r}");
    let nginx = NetNs::new("nginx").unwrap();
    let r = rt
        .add(
            "k8s-pod-network",
            &nginx.path(),
            &pod_args("default", "nginx"),
        )
        .unwrap()
        .unwrap();
    assert!(addresses(&r)[0].starts_with("10.61."), "{r}");
    // Only the namespaces were read (no policy.type k8s: not the pods).
    assert_eq!(
        api.requests(),
        [
            "GET /api/v1/namespaces/team-a",
            "GET /api/v1/namespaces/default"
        ]
    );
    // The endpoint carries no pod metadata (profiles by network, as without policy).
    assert_eq!(
        endpoint_of(&c, "team-a", "web")["spec"]["profiles"],
        json!(["k8s-pod-network"])
    );
    for (ns, pod, p) in [("team-a", "web", &web), ("default", "nginx", &nginx)] {
        rt.del("k8s-pod-network", &p.path(), &pod_args(ns, pod))
            .unwrap()
            .unwrap();
    }
}
