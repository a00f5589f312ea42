//! Calico-compatible IP address management on etcd.
//!
//! - [`block`]: block maths and the rules inside one block (FIFO, attributes);
//! - [`pools`]: which pools a request may use, and each node's block search order;
//! - [`allocator`]: affine blocks, claiming, borrowing, release, all as guarded
//!   transactions over a [`calico_datastore::KvStore`] (snapshot, plan, commit);
//! - [`gc`]: CNI GC of one network's allocations on one node, keeping whatever is alive;
//! - [`host`]: taking a node out of IPAM (its addresses, affinities and empty blocks);
//! - [`lock`]: the host-wide IPAM lock;
//! - [`kubevirt`]: KubeVirt VMs keep their addresses across their pods;
//! - [`cni`]: the `calico-ipam` CNI verbs, shared by the binary and the `calico` plugin;
//! - [`kubernetes`]: the pod namespace's labels from the Kubernetes API (pools'
//!   `namespaceSelector`).
//!
//! Owns every IPAM rule (calicoctl only calls it: pool deletion's affinity release, the
//! block-size rule, a node's removal). Must not import calicoctl or the `calico` plugin.

pub mod allocator;
#[cfg(test)]
mod allocator_tests;
pub mod block;
pub mod cni;
pub mod error;
pub mod gc;
pub mod host;
pub mod kubernetes;
pub mod kubevirt;
pub mod lock;
pub mod pools;
pub mod snapshot_cache;

pub use allocator::{AssignRequest, Assigned, Ipam, IpamSettings, Snapshot, VmAssigned};
pub use error::IpamError;
