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

/// The Kubernetes client settings from the network config, with Calico's precedence
/// (`cni-plugin/pkg/k8s/k8s.go` `getK8sRestConfig`, used for every read: pod, namespace,
/// Node, KubeVirt): the file `kubernetes.kubeconfig`, overridden field by field by the
/// non-empty `policy.k8s_api_root` (cut before `/api/`), `policy.k8s_client_certificate`,
/// `policy.k8s_client_key`, `policy.k8s_certificate_authority` and `policy.k8s_auth_token`,
/// and last by a non-empty `kubernetes.k8s_api_root`, which wins over `policy.k8s_api_root`.
/// The `kubernetes` section has no credentials; the `policy` section no kubeconfig.
pub fn client_config(conf: &NetConf) -> K8sConfig {
    let p = &conf.policy;
    let k = &conf.kubernetes;
    K8sConfig {
        // Calico cuts the policy root before testing it, so `/api/v1/` alone overrides
        // nothing. (The kubernetes root is cut too, when the client is built.)
        api_root: non_empty(&k.k8s_api_root)
            .or_else(|| non_empty(calico_k8s::config::strip_api_root(&p.k8s_api_root))),
        token: non_empty(&p.k8s_auth_token),
        client_certificate: non_empty(&p.k8s_client_certificate).map(PathBuf::from),
        client_key: non_empty(&p.k8s_client_key).map(PathBuf::from),
        certificate_authority: non_empty(&p.k8s_certificate_authority).map(PathBuf::from),
        ..K8sConfig::new(&k.kubeconfig)
    }
}

/// A failed read as a CNI error: unreachable is "try again later", a missing pod, namespace
/// or Node an unknown container, an unusable configuration code 7, anything else (a missing
/// KubeVirt VMI or VM that a pod names among them) a datastore error.
pub fn api_error(e: K8sError) -> CniError {
    let code = match e {
        K8sError::Unreachable { .. } => ErrorCode::TRY_AGAIN_LATER,
        K8sError::NotFound {
            kind: "VirtualMachineInstance" | "VirtualMachine",
            ..
        } => ErrorCode::DATASTORE,
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

    /// Mirrors k8s.go `getK8sRestConfig`: the kubeconfig, then the non-empty `policy.k8s_*`
    /// overrides (the API root cut before `/api/` first), then a non-empty
    /// `kubernetes.k8s_api_root` over all. Checked through the server the client would use.
    #[test]
    fn client_settings_take_calicos_precedence() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("calico-kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\n\
             clusters: [{name: c, cluster: {server: 'https://10.0.0.1:6443'}}]\n\
             users: [{name: u, user: {token: from-file}}]\n\
             contexts: [{name: x, context: {cluster: c, user: u}}]\n\
             current-context: x\n",
        )
        .expect("kubeconfig written");
        let server = |c: &NetConf| {
            calico_k8s::config::load(&client_config(c))
                .map(|k| k.cluster_url.to_string())
                .unwrap_or_else(|e| format!("error: {e}"))
        };
        let mut c = conf(kubeconfig.to_str().expect("UTF-8 path"), "k8s");

        // The kubeconfig alone.
        assert_eq!(client_config(&c), K8sConfig::new(&kubeconfig));
        assert_eq!(server(&c), "https://10.0.0.1:6443/");
        // policy.k8s_api_root overrides the kubeconfig's server, cut before `/api/`.
        c.policy.k8s_api_root = "https://10.0.0.2:6443/api/v1/".into();
        assert_eq!(server(&c), "https://10.0.0.2:6443/");
        // kubernetes.k8s_api_root wins over policy.k8s_api_root.
        c.kubernetes.k8s_api_root = "https://10.0.0.3:6443".into();
        assert_eq!(
            client_config(&c).api_root.as_deref(),
            Some("https://10.0.0.3:6443")
        );
        assert_eq!(server(&c), "https://10.0.0.3:6443/");
        // ...and alone too.
        c.policy.k8s_api_root.clear();
        assert_eq!(server(&c), "https://10.0.0.3:6443/");
        // A policy root that is nothing before `/api/` overrides nothing.
        c.kubernetes.k8s_api_root.clear();
        c.policy.k8s_api_root = "/api/v1/".into();
        assert_eq!(client_config(&c).api_root, None);
        assert_eq!(server(&c), "https://10.0.0.1:6443/");

        // The credentials and the CA come from the policy section only, each when non-empty.
        c.policy.k8s_auth_token = "policy-token".into();
        c.policy.k8s_client_certificate = "/etc/cni/net.d/client.crt".into();
        c.policy.k8s_client_key = "/etc/cni/net.d/client.key".into();
        c.policy.k8s_certificate_authority = "/etc/cni/net.d/ca.crt".into();
        let k = client_config(&c);
        assert_eq!(k.kubeconfig, kubeconfig);
        assert_eq!(k.token.as_deref(), Some("policy-token"));
        assert_eq!(
            k.client_certificate,
            Some(PathBuf::from("/etc/cni/net.d/client.crt"))
        );
        assert_eq!(
            k.client_key,
            Some(PathBuf::from("/etc/cni/net.d/client.key"))
        );
        assert_eq!(
            k.certificate_authority,
            Some(PathBuf::from("/etc/cni/net.d/ca.crt"))
        );
        assert_eq!(k.timeout, K8sConfig::DEFAULT_TIMEOUT);
        // No kubeconfig: the overrides are the whole configuration.
        let mut bare = conf("", "k8s");
        bare.policy.k8s_api_root = "https://10.0.0.4:6443".into();
        assert_eq!(server(&bare), "https://10.0.0.4:6443/");
    }

    #[test]
    fn api_failures_map_to_cni_codes() {
        let url = || "https://10.0.0.1:6443".to_string();
        let not_found = |kind| K8sError::NotFound {
            kind,
            name: "ns/x".into(),
            url: url(),
        };
        for (e, code) in [
            (
                K8sError::Unreachable {
                    url: url(),
                    message: "refused".into(),
                },
                ErrorCode::TRY_AGAIN_LATER,
            ),
            (not_found("Pod"), ErrorCode::UNKNOWN_CONTAINER),
            (not_found("Namespace"), ErrorCode::UNKNOWN_CONTAINER),
            (not_found("VirtualMachineInstance"), ErrorCode::DATASTORE),
            (not_found("VirtualMachine"), ErrorCode::DATASTORE),
            (
                K8sError::Config("bad".into()),
                ErrorCode::INVALID_NETWORK_CONFIG,
            ),
            (
                K8sError::Unauthorized {
                    url: url(),
                    code: 401,
                    message: "no".into(),
                },
                ErrorCode::DATASTORE,
            ),
            (
                K8sError::Other {
                    url: url(),
                    message: "500".into(),
                },
                ErrorCode::DATASTORE,
            ),
        ] {
            let text = e.to_string();
            let err = api_error(e);
            assert_eq!((err.code, err.msg.as_str()), (code, text.as_str()));
        }
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
