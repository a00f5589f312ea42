//! The `calico` CNI plugin.
//!
//! - [`workload`]: identity and names (host interface, endpoint, handle), MTU, MAC;
//! - [`endpoint`]: the WorkloadEndpoint and Profile records;
//! - [`kubernetes`]: the pod and namespace for `policy.type: k8s`;
//! - [`verbs`]: ADD, DEL, CHECK, GC, STATUS over a datastore and a dataplane.

pub mod endpoint;
pub mod kubernetes;
pub mod verbs;
pub mod workload;
