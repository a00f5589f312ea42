//! Reads a pod and its namespace from the Kubernetes API, as Calico's CNI plugin does with
//! `policy.type: k8s` (`cni-plugin/pkg/k8s/k8s.go`, conversion in
//! `libcalico-go/lib/backend/k8s/conversion/workload_endpoint_default.go`).
//!
//! - The kubeconfig is read on every call and nothing is cached, so a token that calico-node
//!   rotated in the file is used by the next call ([`config`]).
//! - The conf's overrides (`k8s_api_root`, `k8s_auth_token`, client certificate, key and CA)
//!   win over the kubeconfig, as with client-go's `ConfigOverrides`.
//! - Both GETs go out at once on a private single-threaded runtime, so a call costs one round
//!   trip (plus the TLS handshakes, also concurrent); the public API is blocking.
//! - [`kubevirt`]: whether a pod is a KubeVirt VM's virt-launcher pod, and the VM's state
//!   (Calico's IPAM keeps a VM's addresses across its pods).
//! - A Namespace alone and a Node are read the same way ([`fetch_namespace`],
//!   [`fetch_node`]).
//! - Objects are requested as JSON and read into small structs of what Calico uses: the
//!   typed `k8s-openapi` objects are not used for reading ([`convert`]).
//! - [`netpol`]: a Kubernetes NetworkPolicy (`k8s-openapi`'s type) as the Calico
//!   NetworkPolicy `knp.default.<name>` that kube-controllers stores in etcd, exactly as
//!   Calico's conversion; a library function, no API reads (the controller comes later).
//!
//! Owns the reading of the Kubernetes API and the NetworkPolicy conversion; must not import
//! the dataplane or `cni-protocol`, and of the datastore only its model types (the
//! conversion's output), never a store: the plugin turns what it returns into records and
//! errors. Of the workspace it imports only `calico-fsbound` (the kubeconfig and the files it
//! names) and `calico-datastore`'s `model`.

pub mod config;
pub mod convert;
mod error;
mod fetch;
pub mod kubevirt;
pub mod netpol;
mod single;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use error::K8sError;
pub use fetch::fetch_pod_and_namespace;
pub use netpol::{KnpConversion, k8s_network_policy_to_calico};
pub use single::{fetch_namespace, fetch_node};

/// How the call reaches the API server: the kubeconfig plus the network conf's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sConfig {
    /// `kubernetes.kubeconfig`, read on every call. An empty path means no file: then
    /// `api_root` must be set and the overrides are the whole configuration.
    pub kubeconfig: PathBuf,
    /// `kubernetes.k8s_api_root`, else `policy.k8s_api_root` (Calico's precedence): the
    /// server URL. Anything from `/api/` on is dropped, as Calico does for the latter (old
    /// confs gave `https://host:6443/api/v1/`).
    pub api_root: Option<String>,
    /// `policy.k8s_auth_token`: a bearer token instead of the kubeconfig's credentials.
    pub token: Option<String>,
    /// `policy.k8s_client_certificate`: a PEM file.
    pub client_certificate: Option<PathBuf>,
    /// `policy.k8s_client_key`: a PEM file.
    pub client_key: Option<PathBuf>,
    /// `policy.k8s_certificate_authority`: a PEM file that replaces the kubeconfig's CA.
    pub certificate_authority: Option<PathBuf>,
    /// Bound on the network part of the call: connecting, TLS and both answers (kube's
    /// connect, read and write timeouts are set to it too). Past it the call fails with
    /// [`K8sError::Unreachable`]. Reading the kubeconfig and its files comes before.
    pub timeout: Duration,
}

impl K8sConfig {
    /// The bound used by [`K8sConfig::new`]. A CNI ADD that cannot reach the API server
    /// should fail soon with "try again later" rather than hold the runtime's call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The kubeconfig alone, no overrides, [`K8sConfig::DEFAULT_TIMEOUT`].
    pub fn new(kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            kubeconfig: kubeconfig.into(),
            api_root: None,
            token: None,
            client_certificate: None,
            client_key: None,
            certificate_authority: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// What Calico takes from a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `metadata.generateName` (copied into the WorkloadEndpoint's metadata).
    pub generate_name: String,
    pub labels: BTreeMap<String, String>,
    /// Where the IPAM annotations live (`cni.projectcalico.org/ipv4pools`, `ipAddrs`, ...).
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, empty if none.
    pub service_account: String,
    /// The ports as Calico's conversion keeps them, see [`convert::endpoint_ports`].
    pub ports: Vec<PodPort>,
}

/// One entry of a WorkloadEndpoint's `spec.ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPort {
    pub name: String,
    /// `"TCP"`, `"UDP"` or `"SCTP"`.
    pub protocol: String,
    pub container_port: u16,
    /// 0 if none.
    pub host_port: u16,
    /// Empty if none.
    pub host_ip: String,
}

/// What Calico takes from a Namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Feed the IP pools' `namespaceSelector`.
    pub labels: BTreeMap<String, String>,
    /// `cni.projectcalico.org/ipv4pools`, `ipv6pools` and `ipFamilies` live here.
    pub annotations: BTreeMap<String, String>,
}

/// What Calico takes from a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// `spec.podCIDR` (empty if none).
    pub pod_cidr: String,
    /// `spec.podCIDRs`: what Calico reads for host-local's `usePodCidr` (the API server keeps
    /// its first entry equal to `podCIDR`).
    pub pod_cidrs: Vec<String>,
}
