//! The `calico` CNI plugin's logic; the binary (`main.rs`) picks the real kernel and
//! datastore and hands them over. The library reaches the kernel only through
//! [`calico_dataplane::Dataplane`] and the datastore only through
//! [`calico_datastore::KvStore`], so it must not import `LinuxDataplane`, `Etcd`, netlink or
//! etcd-client: its tests run without root on the fake kernel and the in-memory store.
//!
//! - [`workload`]: identity and names (host interface, endpoint, handle), MTU, MAC;
//! - [`endpoint`]: the WorkloadEndpoint and Profile records;
//! - [`annotations`]: Calico's pod annotations beyond IPAM (`ipFamilies`, `floatingIPs`,
//!   `allowedSourcePrefixes`);
//! - [`host_local`]: Calico's special cases for host-local IPAM (`usePodCidr`, `routes`);
//! - [`kubernetes`]: the pod and namespace for `policy.type: k8s`, the node's pod CIDRs;
//! - [`readiness`]: `readiness_gates`, polled before an ADD;
//! - [`policy_gate`]: `policy_setup_timeout_seconds`, the wait after an ADD for the policy
//!   agent's endpoint status file (`calico-epstatus`);
//! - [`verbs`]: ADD, DEL, CHECK, GC, STATUS over a datastore and a dataplane, one module
//!   each (CHECK's comparison pure), tested without root against the in-memory store and
//!   the fake kernel.

pub mod annotations;
pub mod endpoint;
pub mod host_local;
pub mod kubernetes;
pub mod policy_gate;
pub mod readiness;
pub mod verbs;
pub mod workload;
