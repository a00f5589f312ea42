//! Shared helpers for the plugin's tests.

use serde_json::{Value, json};
use testkit::k8s::K8sApiStandIn;
use testkit::{CallOpts, Cluster, NetNs};

/// A cluster with `n` nodes and the default pools (10.244.0.0/16, fd00:10:244::/48).
pub fn cluster(n: usize) -> Cluster {
    let c = Cluster::start(n, &["host-local"]).unwrap();
    c.add_pool("default-ipv4-ippool", "10.244.0.0/16", None)
        .unwrap();
    c.add_pool("default-ipv6-ippool", "fd00:10:244::/48", None)
        .unwrap();
    c
}

/// The seed conflist without its Kubernetes sections, at `version`, with `ipam` merged into
/// calico's ipam section.
pub fn conflist(version: &str, ipam: Value) -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["cniVersion"] = json!(version);
    for (k, v) in ipam.as_object().unwrap() {
        list["plugins"][0]["ipam"][k] = v.clone();
    }
    list
}

/// CNI_ARGS for a Kubernetes pod.
pub fn pod_args(ns: &str, pod: &str) -> CallOpts {
    CallOpts::args(&format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x"
    ))
}

/// The addresses of an ADD result, without masks.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect()
}

/// `ip -o ...` output inside a namespace.
pub fn sh(ns: &NetNs, cmd: &str) -> String {
    ns.sh(cmd).unwrap()
}

/// One echo answered within three tries (the first packet may wait for ARP/NDP on
/// every hop).
pub fn ping(from: &NetNs, to: &str) -> bool {
    (0..3).any(|_| {
        from.run("busybox", ["ping", "-c1", "-W2", to])
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// The `i`th address of an ADD result, without its mask.
pub fn ip_of(result: &Value, i: usize) -> String {
    addresses(result)[i].split('/').next().unwrap().to_string()
}

/// Everything a failed ADD could leave behind on node 0 and in etcd: the node's links and
/// routes, and every key.
pub fn node_state(c: &Cluster) -> (String, String, Vec<(String, String)>) {
    let node = c.node(0);
    (
        node.sh("ip -o link show | cut -d: -f2 | sort").unwrap(),
        node.sh("ip route show; ip -6 route show").unwrap(),
        c.etcd
            .get_prefix("/calico/")
            .unwrap()
            .into_iter()
            // The IPAM's block hint on the node is a cache, not state; keys are what count.
            .collect(),
    )
}

/// The Kubernetes API stand-in (there is no API server on these machines) on node 0's
/// loopback, serving testdata/k8s, with the seed's kubeconfig written for it.
pub fn start_api(c: &Cluster) -> K8sApiStandIn {
    let api = K8sApiStandIn::start(Some(c.node(0).netns()), "127.0.0.1".parse().unwrap()).unwrap();
    api.load_dir(&testkit::driver::repo_root().join("testdata/k8s"))
        .unwrap();
    api.write_kubeconfig(&c.node(0).conf_dir().join("calico-kubeconfig"))
        .unwrap();
    api
}

/// A pod as the API server returns it, with only what Calico reads: scheduled to node-1,
/// the `default` service account, these annotations.
pub fn pod_object(ns: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                     "labels": {"app": name}, "uid": format!("uid-{ns}-{name}")},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "nodeName": "node-1", "serviceAccountName": "default"},
        "status": {"phase": "Pending"}
    })
}

/// A namespace as the API server returns it.
pub fn namespace_object(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    })
}

/// The WorkloadEndpoint of a pod on node-1.
pub fn endpoint_of(c: &Cluster, ns: &str, pod: &str) -> Value {
    let name = format!("node--1-k8s-{}-eth0", pod.replace('-', "--"));
    let key = format!("/calico/resources/v3/projectcalico.org/workloadendpoints/{ns}/{name}");
    c.values(&key)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no endpoint {key}"))
        .1
}
