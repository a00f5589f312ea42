//! The pools' `namespaceSelector` in the standalone `calico-ipam`: the namespace's labels
//! come from the Kubernetes API whenever a kubeconfig is set (the API stand-in serves them:
//! there is no API server on these machines).

use crate::lab::Lab;
use serde_json::json;
use testkit::k8s::K8sApiStandIn;
use testkit::{CallOpts, require};

/// Mirrors ipam_plugin.go `cmdAdd`: with `kubernetes.kubeconfig` set (no `policy.type`),
/// the namespace is read and the pools' `namespaceSelector` applies; without a kubeconfig it
/// is not read at all.
#[test]
fn namespace_selector_applies_with_a_kubeconfig() {
    require!("etcd", "go");
    let lab = Lab::new();
    let api = K8sApiStandIn::start(None, "127.0.0.1".parse().unwrap()).unwrap();
    api.load_dir(&testkit::driver::repo_root().join("testdata/k8s"))
        .unwrap();
    let kubeconfig = lab.dir.path().join("calico-kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    lab.add_pool("team-a-pool", "10.60.0.0/16", |p| {
        p.namespace_selector = "team == 'a'".into();
    });
    lab.add_pool("others", "10.61.0.0/16", |p| {
        p.namespace_selector = "!has(team)".into();
    });
    let mut plugin = lab.plugin("node-1", json!({}));
    plugin["kubernetes"] = json!({"kubeconfig": kubeconfig});
    lab.install("net", plugin.clone());
    let pod_in = |ns: &str, pod: &str| {
        CallOpts::args(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"
        ))
    };
    let rt = lab.runtime();
    let a = lab.pod("a");
    let r = rt
        .add("net", &a, &pod_in("team-a", "web"))
        .unwrap()
        .unwrap();
    assert!(
        testkit::result_ips(&r)[0].to_string().starts_with("10.60."),
        "{r}"
    );
    let b = lab.pod("b");
    let r = rt
        .add("net", &b, &pod_in("default", "nginx"))
        .unwrap()
        .unwrap();
    assert!(
        testkit::result_ips(&r)[0].to_string().starts_with("10.61."),
        "{r}"
    );
    assert_eq!(
        api.requests(),
        [
            "GET /api/v1/namespaces/team-a",
            "GET /api/v1/namespaces/default"
        ],
        "only the namespaces are read"
    );
    // A namespace the API does not know fails the ADD, as in Calico.
    let c = lab.pod("c");
    let e = rt
        .add("net", &c, &pod_in("ghost-ns", "p"))
        .unwrap()
        .unwrap_err();
    assert!(e.msg.contains("failed to get namespace ghost-ns"), "{e}");
    for (p, args) in [
        (&a, pod_in("team-a", "web")),
        (&b, pod_in("default", "nginx")),
    ] {
        rt.del("net", p, &args).unwrap().unwrap();
    }

    // Without a kubeconfig the namespace is not read: no labels, so only "others" matches.
    plugin.as_object_mut().unwrap().remove("kubernetes");
    lab.install("net", plugin);
    let r = rt
        .add("net", &a, &pod_in("team-a", "web"))
        .unwrap()
        .unwrap();
    assert!(
        testkit::result_ips(&r)[0].to_string().starts_with("10.61."),
        "{r}"
    );
    assert_eq!(api.requests().len(), 3, "no new request");
    rt.del("net", &a, &pod_in("team-a", "web"))
        .unwrap()
        .unwrap();
}
