//! What Calico IPAM reads from the Kubernetes API: the pod namespace's labels, for the IP
//! pools' `namespaceSelector`. Calico's IPAM plugin reads the namespace whenever a
//! kubeconfig is set or `policy.type` is `k8s` (`ipam_plugin.go`, before `AutoAssign`), and
//! a failed read fails the ADD.

use crate::cni::Workload;
use calico_k8s::{K8sConfig, K8sError};
use calico_netconf::NetConf;
use cni_protocol::{CniError, ErrorCode};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The client settings from Calico's config: the kubeconfig, and the `policy.k8s_*` and
/// `kubernetes.k8s_api_root` overrides.
pub fn client_config(conf: &NetConf) -> K8sConfig {
    let p = &conf.policy;
    let k = &conf.kubernetes;
    K8sConfig {
        api_root: non_empty(&p.k8s_api_root).or_else(|| non_empty(&k.k8s_api_root)),
        token: non_empty(&p.k8s_auth_token),
        client_certificate: non_empty(&p.k8s_client_certificate).map(PathBuf::from),
        client_key: non_empty(&p.k8s_client_key).map(PathBuf::from),
        certificate_authority: non_empty(&p.k8s_certificate_authority).map(PathBuf::from),
        ..K8sConfig::new(&k.kubeconfig)
    }
}

/// A failed read as a CNI error: unreachable is "try again later", a missing object an
/// unknown container, an unusable configuration code 7.
pub fn api_error(e: K8sError) -> CniError {
    let code = match e {
        K8sError::Unreachable { .. } => ErrorCode::TRY_AGAIN_LATER,
        K8sError::NotFound { .. } => ErrorCode::UNKNOWN_CONTAINER,
        K8sError::Config(_) => ErrorCode::INVALID_NETWORK_CONFIG,
        _ => ErrorCode::DATASTORE,
    };
    CniError::new(code, e.to_string())
}

/// Whether Calico IPAM reads the namespace for this config: a kubeconfig is set or
/// `policy.type` is `k8s` (mirrors the condition in `ipam_plugin.go` `cmdAdd`).
pub fn reads_namespace(conf: &NetConf) -> bool {
    !conf.kubernetes.kubeconfig.is_empty() || conf.policy.policy_type == "k8s"
}

/// The labels of the workload's namespace (the pod's, or `default` / `CNI_TEST_NAMESPACE`
/// for other orchestrators, as Calico's identifiers say), read from the API.
pub fn namespace_labels(
    conf: &NetConf,
    workload: &Workload,
) -> Result<BTreeMap<String, String>, CniError> {
    calico_k8s::fetch_namespace(&client_config(conf), &workload.namespace)
        .map(|ns| ns.labels)
        .map_err(|e| {
            let mut err = api_error(e);
            err.msg = format!(
                "failed to get namespace {}: {}",
                workload.namespace, err.msg
            );
            err
        })
}

/// The namespace labels an automatic assignment needs, if Calico IPAM reads them for this
/// call: only when no address is asked for explicitly (Calico reads the namespace on the
/// `AutoAssign` path only).
pub fn labels_for_auto_assign(
    conf: &NetConf,
    workload: &Workload,
    explicit: bool,
) -> Result<Option<BTreeMap<String, String>>, CniError> {
    if explicit || !reads_namespace(conf) || workload.namespace.is_empty() {
        return Ok(None);
    }
    namespace_labels(conf, workload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(kubeconfig: &str, policy: &str) -> NetConf {
        let mut c = NetConf::default();
        c.kubernetes.kubeconfig = kubeconfig.into();
        c.policy.policy_type = policy.into();
        c
    }

    /// Mirrors ipam_plugin.go `cmdAdd`: `conf.Kubernetes.Kubeconfig != "" ||
    /// conf.Policy.PolicyType == "k8s"`.
    #[test]
    fn the_namespace_is_read_with_a_kubeconfig_or_kubernetes_policy() {
        assert!(reads_namespace(&conf(
            "/etc/cni/net.d/calico-kubeconfig",
            ""
        )));
        assert!(reads_namespace(&conf("", "k8s")));
        assert!(!reads_namespace(&conf("", "")));
        let w = Workload {
            node: "n".into(),
            orchestrator: "k8s",
            namespace: "default".into(),
            pod: "p".into(),
            container_id: "c".into(),
        };
        // Nothing to read: no API call at all.
        assert_eq!(
            labels_for_auto_assign(&conf("", ""), &w, false).unwrap(),
            None
        );
        assert_eq!(
            labels_for_auto_assign(&conf("/nowhere", ""), &w, true).unwrap(),
            None
        );
        // A kubeconfig that cannot be read is a configuration error.
        let e =
            labels_for_auto_assign(&conf("/nonexistent/kubeconfig", ""), &w, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{}", e.msg);
        assert!(
            e.msg.contains("failed to get namespace default"),
            "{}",
            e.msg
        );
    }
}
