//! `policy.type: k8s`: the pod and its namespace from the Kubernetes API (the kubeconfig is
//! read again on every call, so a rotated token works at once).

use crate::endpoint::PodMeta;
use crate::workload::Context;
use calico_datastore::model::WorkloadEndpointPort;
use calico_k8s::{K8sConfig, K8sError};
use cni_protocol::{CniError, ErrorCode};
use std::path::PathBuf;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The client settings from Calico's config: the kubeconfig, and the `policy.k8s_*` and
/// `kubernetes.k8s_api_root` overrides.
pub fn client_config(ctx: &Context) -> K8sConfig {
    let p = &ctx.conf.policy;
    let k = &ctx.conf.kubernetes;
    K8sConfig {
        api_root: non_empty(&p.k8s_api_root).or_else(|| non_empty(&k.k8s_api_root)),
        token: non_empty(&p.k8s_auth_token),
        client_certificate: non_empty(&p.k8s_client_certificate).map(PathBuf::from),
        client_key: non_empty(&p.k8s_client_key).map(PathBuf::from),
        certificate_authority: non_empty(&p.k8s_certificate_authority).map(PathBuf::from),
        ..K8sConfig::new(&k.kubeconfig)
    }
}

/// Whether this call needs the Kubernetes API.
pub fn wanted(ctx: &Context) -> bool {
    ctx.conf.policy.policy_type == "k8s" && ctx.workload.orchestrator == "k8s"
}

/// Reads the pod and its namespace; failures as CNI errors (unreachable: try again later).
pub fn pod_meta(ctx: &Context) -> Result<PodMeta, CniError> {
    let w = &ctx.workload;
    let (pod, ns) = calico_k8s::fetch_pod_and_namespace(&client_config(ctx), &w.namespace, &w.pod)
        .map_err(|e| {
            let code = match e {
                K8sError::Unreachable { .. } => ErrorCode::TRY_AGAIN_LATER,
                K8sError::NotFound { .. } => ErrorCode::UNKNOWN_CONTAINER,
                K8sError::Config(_) => ErrorCode::INVALID_NETWORK_CONFIG,
                _ => ErrorCode::DATASTORE,
            };
            CniError::new(code, e.to_string())
        })?;
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
