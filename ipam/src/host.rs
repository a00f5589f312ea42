//! Taking a node out of IPAM, for `calicoctl delete node` (libcalico-go `clientv3/node.go`
//! Delete) and pool deletion:
//!
//! - [`release_ips_with`]: `ipam.ReleaseIPs` by address (the node's workload and tunnel
//!   addresses), committed in one transaction with the caller's own writes (deleting the
//!   WorkloadEndpoint or the Node that recorded the addresses);
//! - [`release_block_affinity`]: `blockReaderWriter.releaseBlockAffinity` for one block:
//!   the affinity goes, an empty block goes with it, a block still in use loses its affinity;
//! - [`remove_host`]: `ipam.RemoveIPAMHost`, every affinity of the node released;
//! - [`release_pool_affinities`]: `ipam.ReleasePoolAffinities`, every affinity of a block in
//!   a pool being deleted released.
//!
//! Each is built on the allocator's plans ([`Ipam::release_ips_with`],
//! [`Ipam::release_block_affinity`]): one guarded transaction per change (blocks, handles and
//! affinity together, with the caller's writes), re-planned from fresh reads after a
//! conflict, so a process that dies at any point leaves a state the same call finishes, and
//! Calico 3.33's `ipCooldownSeconds` applies as to any release. Calico writes these objects
//! one by one (affinity marked pending, block, affinity deleted, handles decremented
//! afterwards); the end state is the same.

use crate::allocator::{Ipam, Selection};
use crate::error::IpamError;
use calico_datastore::model::keys;
use calico_datastore::{Guard, KvStore, Write};
use ipnet::IpNet;
use std::net::IpAddr;

pub use crate::allocator::{AffinityReleased, ReleaseStep};
pub use crate::block::WINDOWS_RESERVED_HANDLE;

/// A node name that cannot be a key segment (empty, or with `/`) would address other keys.
fn check_node(node: &str) -> Result<(), IpamError> {
    if node.is_empty() || node.contains('/') {
        return Err(IpamError::Other(format!("invalid node name {node:?}")));
    }
    Ok(())
}

/// Releases addresses by address as `ipam.ReleaseIPs` does (from their blocks, into their
/// cooldown when `ipCooldownSeconds` is set, their handles decremented, a block left empty
/// and without affinity deleted), only where the allocation belongs to `node` (its `node`
/// attribute is `node`, or it has none: [`Selection::Node`]), in one transaction with the
/// caller's `extra` writes.
///
/// `step` is called before each attempt and reads the caller's current state: `None` means
/// there is nothing (left) to do. A conflict on any guarded key, the caller's included,
/// re-runs `step` and the plan. Returns the addresses released.
pub fn release_ips_with(
    store: &dyn KvStore,
    node: &str,
    step: &mut dyn FnMut() -> Result<Option<ReleaseStep>, IpamError>,
) -> Result<Vec<IpAddr>, IpamError> {
    check_node(node)?;
    let ipam = Ipam::new(store, node);
    let snap = ipam.snapshot(&[])?;
    ipam.release_ips_with(&snap, Selection::Node(node), &mut |_| step())
}

/// `releaseBlockAffinity` for `node`'s affinity to block `cidr`, as one transaction: the
/// affinity goes, an empty block goes with it, a block still in use loses its affinity.
pub fn release_block_affinity(
    store: &dyn KvStore,
    node: &str,
    cidr: &IpNet,
) -> Result<AffinityReleased, IpamError> {
    check_node(node)?;
    Ipam::new(store, node).release_block_affinity(cidr)
}

/// What [`remove_host`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRemoved {
    /// Affinities deleted.
    pub affinities: usize,
    /// Empty blocks deleted with their affinity.
    pub blocks_deleted: usize,
    /// Blocks still in use, kept without affinity.
    pub blocks_kept: usize,
}

/// `RemoveIPAMHost`: releases every block affinity of `node` (both families, in key order),
/// then deletes the host key `/calico/ipam/v2/host/<node>` if one exists. Addresses are not
/// released: blocks still in use stay, without affinity.
pub fn remove_host(store: &dyn KvStore, node: &str) -> Result<HostRemoved, IpamError> {
    check_node(node)?;
    let host_key = format!("/calico/ipam/v2/host/{node}");
    let mut done = HostRemoved::default();
    for key in store.list_keys(&format!("{host_key}/"))? {
        let Some((owner, cidr)) = keys::parse_affinity(&key) else {
            continue;
        };
        if owner != node {
            continue;
        }
        match release_block_affinity(store, node, &cidr)? {
            AffinityReleased::Gone => continue,
            AffinityReleased::BlockDeleted => done.blocks_deleted += 1,
            AffinityReleased::BlockKept => done.blocks_kept += 1,
            AffinityReleased::AffinityOnly => {}
        }
        done.affinities += 1;
    }
    if let Some(kv) = store.get(&host_key)? {
        // A leftover from another writer; a concurrent change means it is not ours to drop.
        let _ = store.txn(
            &[Guard::Revision(host_key.clone(), kv.mod_revision)],
            &[Write::Delete(host_key)],
        )?;
    }
    Ok(done)
}

/// `ReleasePoolAffinities`: every affinity of a block in `pool` is released as
/// [`release_block_affinity`] does (an empty block goes with it, a used one loses its
/// affinity, one transaction each). Calico leaves an affinity whose block is missing; we
/// delete it too.
pub fn release_pool_affinities(store: &dyn KvStore, pool: &IpNet) -> Result<(), IpamError> {
    for aff_key in store.list_keys("/calico/ipam/v2/host/")? {
        let Some((host, cidr)) = keys::parse_affinity(&aff_key) else {
            continue;
        };
        if host.is_empty()
            || !pool.contains(&cidr.network())
            || pool.prefix_len() > cidr.prefix_len()
        {
            continue;
        }
        release_block_affinity(store, &host, &cidr)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
