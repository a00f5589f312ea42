//! Calico's object names (libcalico-go `names`).

/// A WorkloadEndpoint's name: `[node, orchestrator, workload, endpoint]` (the workload is the
/// pod for `k8s`, the container ID for `cni`), each `-` doubled inside a part, the parts
/// joined with `-`. Node `node-1`, pod `my-pod`, `eth0` gives `node--1-k8s-my--pod-eth0`.
pub fn workload_endpoint(node: &str, orchestrator: &str, workload: &str, endpoint: &str) -> String {
    [node, orchestrator, workload, endpoint]
        .iter()
        .map(|part| part.replace('-', "--"))
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_are_doubled_inside_parts() {
        assert_eq!(
            workload_endpoint("node-1", "k8s", "my-pod", "eth0"),
            "node--1-k8s-my--pod-eth0"
        );
        assert_eq!(
            workload_endpoint("node1", "k8s", "nginx", "eth0"),
            "node1-k8s-nginx-eth0"
        );
        assert_eq!(
            workload_endpoint("n", "cni", "cnitool-62d3", "eth0"),
            "n-cni-cnitool--62d3-eth0"
        );
    }
}
