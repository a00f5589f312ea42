//! How to reach etcd: the one copy of the etcd settings. A leaf: it imports nothing of this
//! crate. `calico-netconf` (the CNI config) and calicoctl's `calicoctl.cfg` convert into it.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// `etcd_discovery_srv`: find the endpoints in this domain's DNS SRV records
    /// ([`crate::discovery`]); exclusive with `endpoints`.
    pub discovery_srv: Option<String>,
    pub ca_cert_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Bound on establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Bound on any single request, connection included. Generous (see
    /// [`EtcdConfig::DEFAULT_REQUEST_TIMEOUT`]): an etcd that is down is found by the connect
    /// bound; this one only ends a wait on an etcd that is connected but slow.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Calico's plugin waits up to 90 s for its IPAM work and 30 s for its pools; a busy
    /// node's etcd (a WAL fsync stalled behind the disk's writeback, a hundred pods started at
    /// once) can take seconds to commit, and a pod failed for that is a pod the runtime has to
    /// start again. 5 s had failed one ADD of a hundred concurrent ones in a test run.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            discovery_srv: None,
            ca_cert_file: None,
            cert_file: None,
            key_file: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Whether any endpoint is `https://`.
    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}
