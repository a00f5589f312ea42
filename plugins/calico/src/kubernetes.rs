//! What the plugin reads from the Kubernetes API: for `policy.type: k8s` the pod and its
//! namespace; for host-local's `usePodCidr` the node's pod CIDRs. The kubeconfig is read
//! again on every call, so a rotated token works at once.

use crate::endpoint::PodMeta;
use crate::workload::Context;
use calico_datastore::model::WorkloadEndpointPort;
use calico_k8s::K8sConfig;
use cni_protocol::CniError;

/// The client settings from Calico's config, with Calico's precedence
/// ([`calico_ipam::kubernetes::client_config`]; the IPAM's reads use the same).
pub fn client_config(ctx: &Context) -> K8sConfig {
    calico_ipam::kubernetes::client_config(&ctx.conf)
}

/// Whether this call needs the Kubernetes API.
pub fn wanted(ctx: &Context) -> bool {
    ctx.conf.policy.policy_type == "k8s" && ctx.workload.orchestrator == "k8s"
}

/// Reads the pod and its namespace; failures as CNI errors (unreachable: try again later).
pub fn pod_meta(ctx: &Context) -> Result<PodMeta, CniError> {
    let w = &ctx.workload;
    let (pod, ns) = calico_k8s::fetch_pod_and_namespace(&client_config(ctx), &w.namespace, &w.pod)
        .map_err(calico_ipam::kubernetes::api_error)?;
    Ok(PodMeta {
        labels: pod.labels,
        annotations: pod.annotations,
        service_account: pod.service_account,
        generate_name: pod.generate_name,
        ports: pod
            .ports
            .into_iter()
            .map(|p| WorkloadEndpointPort {
                name: p.name,
                protocol: serde_json::Value::String(p.protocol),
                port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip,
            })
            .collect(),
        namespace_labels: ns.labels,
        namespace_annotations: ns.annotations,
    })
}

/// The node's pod CIDRs by family, for host-local's `usePodCidr`: the Node named
/// `kubernetes.node_name` (else this node's name), its `spec.podCIDRs`. Mirrors k8s.go
/// `getPodCidrs` and `getIPsByFamily`, errors included ("no podCidr for node ...").
pub fn node_pod_cidrs(ctx: &Context) -> Result<(Option<String>, Option<String>), CniError> {
    let name = if ctx.conf.kubernetes.node_name.is_empty() {
        ctx.node.as_str()
    } else {
        ctx.conf.kubernetes.node_name.as_str()
    };
    let node = calico_k8s::fetch_node(&client_config(ctx), name).map_err(|e| match e {
        // A missing Node means no pod CIDR to use: the config cannot work on this node.
        e @ calico_k8s::K8sError::NotFound { .. } => {
            CniError::invalid_config(format!("usePodCidr needs the node's pod CIDRs: {e}"))
        }
        e => calico_ipam::kubernetes::api_error(e),
    })?;
    if node.pod_cidrs.is_empty() {
        return Err(CniError::invalid_config(format!(
            "no podCidr for node {name}"
        )));
    }
    crate::host_local::cidrs_by_family(&node.pod_cidrs)
}
