//! Shared helpers for the plugin's tests.

use serde_json::{Value, json};
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
