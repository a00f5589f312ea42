//! The `calico` CNI plugin.
//!
//! - [`workload`]: identity and names (host interface, endpoint, handle), MTU, MAC;
//! - [`endpoint`]: the WorkloadEndpoint and Profile records;
//! - [`annotations`]: Calico's pod annotations beyond IPAM (`ipFamilies`, `floatingIPs`,
//!   `allowedSourcePrefixes`);
//! - [`kubernetes`]: the pod and namespace for `policy.type: k8s`;
//! - [`verbs`]: ADD, DEL, CHECK, GC, STATUS over a datastore and a dataplane.

pub mod annotations;
pub mod endpoint;
pub mod kubernetes;
pub mod verbs;
pub mod workload;
