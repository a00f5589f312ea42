//! Taking a node out of IPAM, for `calicoctl delete node` (libcalico-go `clientv3/node.go`
//! Delete) and pool deletion:
//!
//! - [`release_ips_with`]: `ipam.ReleaseIPs` by address (the node's workload and tunnel
//!   addresses), committed in one transaction with the caller's own writes (deleting the
//!   WorkloadEndpoint or the Node that recorded the addresses);
//! - [`release_block_affinity`]: `blockReaderWriter.releaseBlockAffinity` for one block:
//!   the affinity goes, an empty block goes with it, a block still in use loses its affinity;
//! - [`remove_host`]: `ipam.RemoveIPAMHost`, every affinity of the node released.
//!
//! Each change is a single guarded transaction (blocks, handles and affinity together, with
//! the caller's writes), re-planned from fresh reads after a conflict, so a process that dies
//! at any point leaves a state the same call finishes. Calico writes these objects one by
//! one (affinity marked pending, block, affinity deleted, handles decremented afterwards);
//! the end state is the same.

use crate::allocator::{Extra, MAX_RETRIES};
use crate::block;
use crate::error::IpamError;
use calico_datastore::model::{AllocationAttribute, AllocationBlock, IpamHandle, keys};
use calico_datastore::{Guard, Kv, KvStore, Read, Write};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use crate::block::WINDOWS_RESERVED_HANDLE;

/// Whether a node removal may release this allocation: its `node` attribute names `node`,
/// or it has none (allocations written without owner attributes). An address a stale
/// record points at but that now belongs to another node's workload stays allocated.
fn released_for(attr: Option<&AllocationAttribute>, node: &str) -> bool {
    attr.and_then(|a| a.owner("node")).is_none_or(|n| n == node)
}

fn decode<T: serde::de::DeserializeOwned>(kv: &Kv) -> Result<T, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))
}

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::corrupt(key, e))
}

/// A node name that cannot be a key segment (empty, or with `/`) would address other keys.
fn check_node(node: &str) -> Result<(), IpamError> {
    if node.is_empty() || node.contains('/') {
        return Err(IpamError::Other(format!("invalid node name {node:?}")));
    }
    Ok(())
}

/// Guards and writes of one planned transaction.
#[derive(Debug, Default)]
struct Txn {
    guards: Vec<Guard>,
    writes: Vec<Write>,
}

impl Txn {
    fn commit(self, store: &dyn KvStore) -> Result<bool, IpamError> {
        if self.writes.is_empty() {
            return Ok(true);
        }
        Ok(store.txn(&self.guards, &self.writes)?.applied())
    }
}

/// Handle decrements, per handle and block.
type HandleCounts = BTreeMap<String, BTreeMap<IpNet, i64>>;

/// Reads the handles in `counts` and plans their decrements (`decrementHandle`): a block
/// entry at zero goes, an empty handle is deleted. A missing handle is left missing.
fn plan_handles(
    store: &dyn KvStore,
    counts: &HandleCounts,
    txn: &mut Txn,
) -> Result<(), IpamError> {
    let ids: Vec<&String> = counts.keys().collect();
    let reads: Vec<Read> = ids.iter().map(|h| Read::Key(keys::handle(h))).collect();
    for (id, found) in ids.into_iter().zip(store.read(&reads)?) {
        let Some(kv) = found.into_iter().next() else {
            continue;
        };
        let mut h: IpamHandle = decode(&kv)?;
        for (cidr, n) in &counts[id] {
            let k = cidr.to_string();
            let left = h.block.get(&k).copied().unwrap_or(0) - n;
            if left > 0 {
                h.block.insert(k, left);
            } else {
                h.block.remove(&k);
            }
        }
        txn.guards
            .push(Guard::Revision(kv.key.clone(), kv.mod_revision));
        if h.block.is_empty() {
            txn.writes.push(Write::Delete(kv.key));
        } else {
            let bytes = encode(&kv.key, &h)?;
            txn.writes.push(Write::Put(kv.key, bytes));
        }
    }
    Ok(())
}

/// Counts the handles of every allocation left in a block that is about to be deleted
/// (only Windows-reserved ones can be left), so their handles do not keep the block.
fn count_leftovers(b: &AllocationBlock, counts: &mut HandleCounts) {
    let attrs = b.attributes.as_deref().unwrap_or_default();
    for i in b.allocations.iter().flatten() {
        if let Some(h) = attrs.get(*i).and_then(AllocationAttribute::handle) {
            *counts
                .entry(h.to_string())
                .or_default()
                .entry(b.cidr)
                .or_default() += 1;
        }
    }
}

/// Plans the release of `ips` for `node` (`ReleaseIPs` + `releaseIPsFromBlock`); returns
/// the addresses that will be freed. An address in no block, or free, is skipped.
fn plan_release(
    store: &dyn KvStore,
    node: &str,
    ips: &[IpAddr],
    txn: &mut Txn,
) -> Result<Vec<IpAddr>, IpamError> {
    // The block of each address, found among the existing blocks of its family.
    let mut blocks_of: BTreeMap<bool, Vec<IpNet>> = BTreeMap::new();
    let mut by_block: BTreeMap<IpNet, BTreeSet<usize>> = BTreeMap::new();
    for ip in ips {
        let v4 = ip.is_ipv4();
        let cidrs = match blocks_of.entry(v4) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(
                store
                    .list_keys(&keys::blocks_prefix(v4))?
                    .iter()
                    .filter_map(|k| keys::block_cidr_of(k))
                    .collect(),
            ),
        };
        let found = cidrs.iter().find(|c| c.contains(ip));
        if let Some(cidr) = found
            && let Some(ord) = block::ordinal(cidr, *ip)
        {
            by_block.entry(*cidr).or_default().insert(ord);
        }
    }
    let cidrs: Vec<IpNet> = by_block.keys().copied().collect();
    let reads: Vec<Read> = cidrs.iter().map(|c| Read::Key(keys::block(c))).collect();
    let mut released = Vec::new();
    let mut counts = HandleCounts::new();
    for (cidr, found) in cidrs.iter().zip(store.read(&reads)?) {
        let Some(kv) = found.into_iter().next() else {
            continue;
        };
        let mut b: AllocationBlock = decode(&kv)?;
        let ords = &by_block[cidr];
        let freed = block::release_where(&mut b, |ord, attr| {
            ords.contains(&ord) && released_for(attr, node)
        });
        if freed.is_empty() {
            continue;
        }
        for (ip, handle) in freed {
            if let Some(h) = handle {
                *counts.entry(h).or_default().entry(*cidr).or_default() += 1;
            }
            released.push(ip);
        }
        txn.guards
            .push(Guard::Revision(kv.key.clone(), kv.mod_revision));
        if block::is_empty(&b) && b.affinity.is_none() {
            count_leftovers(&b, &mut counts);
            txn.writes.push(Write::Delete(kv.key));
        } else {
            b.sequence_number += 1;
            let bytes = encode(&kv.key, &b)?;
            txn.writes.push(Write::Put(kv.key, bytes));
        }
    }
    plan_handles(store, &counts, txn)?;
    Ok(released)
}

/// What to release in one transaction, and the caller's writes that go with it.
#[derive(Debug, Clone, Default)]
pub struct ReleaseStep {
    pub ips: Vec<IpAddr>,
    pub extra: Extra,
}

/// Releases addresses by address as `ipam.ReleaseIPs` does (from their blocks, their
/// handles decremented, a block left empty and without affinity deleted), only where the
/// allocation belongs to `node` (its `node` attribute is `node`, or it has none), in one
/// transaction with the caller's `extra` writes.
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
    for _ in 0..MAX_RETRIES {
        let Some(step) = step()? else {
            return Ok(Vec::new());
        };
        let mut txn = Txn::default();
        let released = plan_release(store, node, &step.ips, &mut txn)?;
        txn.guards.extend(step.extra.guards);
        txn.writes.extend(step.extra.writes);
        if txn.commit(store)? {
            return Ok(released);
        }
    }
    Err(IpamError::TooManyRetries {
        key: "address release".into(),
    })
}

/// What releasing one affinity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityReleased {
    /// The affinity was already gone.
    Gone,
    /// The block was empty and is deleted with the affinity.
    BlockDeleted,
    /// The block still holds addresses: it stays, without affinity.
    BlockKept,
    /// The block is another node's, or missing: only the stale affinity is deleted.
    /// (Calico leaves an affinity whose block is missing; we delete it too.)
    AffinityOnly,
}

/// `releaseBlockAffinity` for `node`'s affinity to block `cidr`, as one transaction.
pub fn release_block_affinity(
    store: &dyn KvStore,
    node: &str,
    cidr: &IpNet,
) -> Result<AffinityReleased, IpamError> {
    check_node(node)?;
    let aff_key = keys::affinity(node, cidr);
    let block_key = keys::block(cidr);
    for _ in 0..MAX_RETRIES {
        let got = store.read(&[Read::Key(aff_key.clone()), Read::Key(block_key.clone())])?;
        let mut got = got.into_iter().map(|v| v.into_iter().next());
        let (Some(Some(aff)), block_kv) = (got.next(), got.next().flatten()) else {
            return Ok(AffinityReleased::Gone);
        };
        let mut txn = Txn {
            guards: vec![Guard::Revision(aff_key.clone(), aff.mod_revision)],
            writes: vec![Write::Delete(aff_key.clone())],
        };
        let outcome = match block_kv {
            None => AffinityReleased::AffinityOnly,
            Some(bkv) => {
                let mut b: AllocationBlock = decode(&bkv)?;
                let theirs = b
                    .affinity
                    .as_deref()
                    .is_some_and(|a| a != block::host_affinity(node));
                if theirs {
                    AffinityReleased::AffinityOnly
                } else {
                    txn.guards
                        .push(Guard::Revision(block_key.clone(), bkv.mod_revision));
                    if block::is_empty(&b) {
                        let mut counts = HandleCounts::new();
                        count_leftovers(&b, &mut counts);
                        plan_handles(store, &counts, &mut txn)?;
                        txn.writes.push(Write::Delete(block_key.clone()));
                        AffinityReleased::BlockDeleted
                    } else {
                        b.affinity = None;
                        b.affinity_claim_time = None;
                        b.sequence_number += 1;
                        txn.writes
                            .push(Write::Put(block_key.clone(), encode(&block_key, &b)?));
                        AffinityReleased::BlockKept
                    }
                }
            }
        };
        if txn.commit(store)? {
            return Ok(outcome);
        }
    }
    Err(IpamError::TooManyRetries { key: aff_key })
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

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
