//! Calico's allocation algorithm over a [`KvStore`]: affine blocks first, then a new block
//! claimed for the node, then (without strict affinity) borrowing from other nodes' blocks.
//!
//! Every write is one guarded etcd transaction. An assignment writes the block and the handle
//! together, and claiming a block writes the block (with the new address in it), the node's
//! confirmed affinity and the handle together, so there is never a handle without its
//! address, an address without its handle, or a claimed block without its affinity, whatever
//! happens to the process in between. (Calico writes them one by one because its Kubernetes
//! datastore cannot do multi-object transactions; the end state is the same.)

use crate::block::{self, Owner};
use crate::error::IpamError;
use crate::pools::{self, Pool};
use calico_datastore::model::resources::Node;
use calico_datastore::model::{
    AllocationBlock, BlockAffinity, IpPool, IpReservation, IpamConfigValue, IpamHandle, keys,
};
use calico_datastore::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

/// Calico's bound on compare-and-swap retries of one object.
pub const MAX_RETRIES: usize = 100;
/// Calico's per-node block limit when the config sets none.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: usize = 20;

/// What to allocate.
#[derive(Debug, Clone, Default)]
pub struct AssignRequest {
    pub handle: String,
    pub attrs: BTreeMap<String, String>,
    pub num_v4: usize,
    pub num_v6: usize,
    /// Pool names or CIDRs; empty means "every pool that selects this node".
    pub v4_pools: Vec<String>,
    pub v6_pools: Vec<String>,
    /// Labels of the pod's namespace, for pools with a `namespaceSelector` (empty if unknown).
    pub namespace_labels: BTreeMap<String, String>,
}

/// The addresses assigned, each with its block's mask (`10.244.1.5/26`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
}

/// The IPAM settings in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamSettings {
    pub strict_affinity: bool,
    pub auto_allocate_blocks: bool,
    pub max_blocks_per_host: usize,
}

impl IpamSettings {
    /// From the stored config (`None`: the key is absent, so Calico's defaults).
    pub fn from_stored(v: Option<&IpamConfigValue>) -> Self {
        let c = v.cloned().unwrap_or_else(IpamConfigValue::calico_default);
        IpamSettings {
            strict_affinity: c.strict_affinity,
            auto_allocate_blocks: c.auto_allocate_blocks,
            max_blocks_per_host: usize::try_from(c.max_blocks_per_host)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MAX_BLOCKS_PER_HOST),
        }
    }
}

/// Everything an allocation needs that is not a block, read in one round trip.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub settings: IpamSettings,
    pub pools: Vec<Pool>,
    /// The Calico Node's labels; empty if there is no Node resource.
    pub node_labels: BTreeMap<String, String>,
    pub reservations: Vec<IpNet>,
    /// This node's affinities (both families), by block.
    pub affinities: BTreeMap<IpNet, Kv>,
    /// The handles asked for, current state.
    pub handles: BTreeMap<String, Option<Kv>>,
    /// Blocks read along with the rest because the caller expected to need them (the
    /// node's affine blocks as last seen): `None` if the block does not exist.
    pub blocks: BTreeMap<IpNet, Option<Kv>>,
}

impl Snapshot {
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.reservations.iter().any(|r| r.contains(&ip))
    }
}

/// A handle as this call last saw it, kept current across its own writes.
#[derive(Debug, Clone)]
struct HandleState {
    id: String,
    key: String,
    current: Option<Kv>,
    value: IpamHandle,
}

impl HandleState {
    fn new(id: &str, current: Option<Kv>) -> Result<Self, IpamError> {
        let key = keys::handle(id);
        let value = match &current {
            Some(kv) => {
                serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&key, e))?
            }
            None => IpamHandle::default(),
        };
        Ok(HandleState {
            id: id.to_string(),
            key,
            current,
            value,
        })
    }

    fn guard(&self) -> Guard {
        Guard::for_current(&self.key, self.current.as_ref())
    }

    /// The handle with `delta` more addresses in `cidr`, and the write that stores it.
    fn adjusted(&self, cidr: &IpNet, delta: i64) -> Result<(IpamHandle, Write), IpamError> {
        let mut v = self.value.clone();
        let k = cidr.to_string();
        let n = v.block.get(&k).copied().unwrap_or(0) + delta;
        if n > 0 {
            v.block.insert(k, n);
        } else {
            v.block.remove(&k);
        }
        let write = if v.block.is_empty() {
            Write::Delete(self.key.clone())
        } else {
            Write::Put(self.key.clone(), encode(&self.key, &v)?)
        };
        Ok((v, write))
    }

    /// Records a successful write at `revision`.
    fn committed(&mut self, value: IpamHandle, write: &Write, revision: i64) {
        self.current = match write {
            Write::Put(k, bytes) => Some(Kv {
                key: k.clone(),
                value: bytes.clone(),
                mod_revision: revision,
            }),
            Write::Delete(_) => None,
        };
        self.value = value;
    }

    /// Takes the state a failed transaction reported.
    fn refresh(&mut self, current: Option<Kv>) -> Result<(), IpamError> {
        *self = HandleState::new(&self.id, current)?;
        Ok(())
    }
}

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::corrupt(key, e))
}

fn decode_block(kv: &Kv) -> Result<AllocationBlock, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))
}

/// Whether `b` overlaps a block in `existing` (same size, or bigger or smaller blocks left by
/// pools with another block size).
fn overlaps_any(existing: &BTreeSet<IpNet>, b: &IpNet) -> bool {
    if existing.contains(b) {
        return true;
    }
    let max = b.max_prefix_len();
    // A bigger block containing b.
    let bigger = (0..b.prefix_len())
        .filter_map(|len| IpNet::new(b.network(), len).ok().map(|n| n.trunc()))
        .any(|n| existing.contains(&n));
    // A smaller block inside b: something between b's first and last address.
    let (Ok(lo), Ok(hi)) = (IpNet::new(b.network(), 0), IpNet::new(b.broadcast(), max)) else {
        return bigger;
    };
    bigger || existing.range(lo..=hi).any(|e| b.contains(e))
}

fn family_name(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

/// IPAM for one node.
pub struct Ipam<'s> {
    store: &'s dyn KvStore,
    node: String,
    now: fn() -> SystemTime,
    deadline: Option<(Instant, std::time::Duration)>,
}

impl<'s> Ipam<'s> {
    pub fn new(store: &'s dyn KvStore, node: &str) -> Self {
        Ipam {
            store,
            node: node.to_string(),
            now: SystemTime::now,
            deadline: None,
        }
    }

    /// Gives up (as transient) once `budget` has passed; the clock starts now, which is why
    /// callers set it after taking the host lock.
    pub fn with_budget(mut self, budget: std::time::Duration) -> Self {
        self.deadline = Some((Instant::now() + budget, budget));
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn check_deadline(&self) -> Result<(), IpamError> {
        match self.deadline {
            Some((at, budget)) if Instant::now() > at => Err(IpamError::Timeout(budget)),
            _ => Ok(()),
        }
    }

    /// Reads config, pools, node labels, reservations, this node's affinities and the given
    /// handles in one round trip.
    pub fn snapshot(&self, handles: &[&str]) -> Result<Snapshot, IpamError> {
        self.snapshot_with_blocks(handles, &[])
    }

    /// As [`Ipam::snapshot`], also reading the blocks `likely` (the node's affine blocks as
    /// last seen), so the usual allocation needs no second read. A stale guess costs only
    /// the extra keys: what counts is the affinities read in the same snapshot.
    pub fn snapshot_with_blocks(
        &self,
        handles: &[&str],
        likely: &[IpNet],
    ) -> Result<Snapshot, IpamError> {
        let mut reads = vec![
            Read::Key(keys::IPAM_CONFIG.into()),
            Read::Prefix(keys::resources_prefix("ippools")),
            Read::Key(keys::resource("nodes", &self.node)),
            Read::Prefix(keys::resources_prefix("ipreservations")),
            Read::Prefix(format!("/calico/ipam/v2/host/{}/", self.node)),
        ];
        reads.extend(handles.iter().map(|h| Read::Key(keys::handle(h))));
        reads.extend(likely.iter().map(|b| Read::Key(keys::block(b))));
        let mut got = self.store.read(&reads)?.into_iter();
        let mut next = || got.next().unwrap_or_default();

        let config = match next().pop() {
            Some(kv) => Some(
                serde_json::from_slice::<IpamConfigValue>(&kv.value)
                    .map_err(|e| IpamError::corrupt(keys::IPAM_CONFIG, e))?,
            ),
            None => None,
        };
        let pools = next()
            .iter()
            .filter_map(|kv| IpPool::from_kv(kv).ok())
            .filter_map(|p| Pool::from_resource(&p))
            .collect();
        let node_labels = next()
            .pop()
            .and_then(|kv| Node::from_kv(&kv).ok())
            .map(|n| n.metadata.labels)
            .unwrap_or_default();
        let reservations = next()
            .iter()
            .filter_map(|kv| IpReservation::from_kv(kv).ok())
            .flat_map(|r| r.spec.networks())
            .collect();
        let affinities = next()
            .into_iter()
            .filter_map(|kv| {
                let (node, cidr) = keys::parse_affinity(&kv.key)?;
                (node == self.node).then_some((cidr, kv))
            })
            .collect();
        let handles = handles
            .iter()
            .map(|h| (h.to_string(), next().pop()))
            .collect();
        let blocks = likely.iter().map(|b| (*b, next().pop())).collect();
        Ok(Snapshot {
            settings: IpamSettings::from_stored(config.as_ref()),
            pools,
            node_labels,
            reservations,
            affinities,
            handles,
            blocks,
        })
    }

    /// Allocates per `req`: all IPv4 first, then IPv6. If the IPv6 half fails after the IPv4
    /// half succeeded, the IPv4 addresses are released before the error returns.
    pub fn auto_assign(&self, req: &AssignRequest) -> Result<Assigned, IpamError> {
        let snap = self.snapshot(&[&req.handle])?;
        self.auto_assign_with(&snap, req)
    }

    /// As [`Ipam::auto_assign`], with a snapshot already read.
    pub fn auto_assign_with(
        &self,
        snap: &Snapshot,
        req: &AssignRequest,
    ) -> Result<Assigned, IpamError> {
        let owner = Owner {
            handle: req.handle.clone(),
            attrs: req.attrs.clone(),
        };
        let mut handle = HandleState::new(
            &req.handle,
            snap.handles.get(&req.handle).cloned().flatten(),
        )?;
        let mut out = Assigned::default();
        if req.num_v4 > 0 {
            out.v4 = self.assign_family(snap, req, &owner, &mut handle, true)?;
        }
        if req.num_v6 > 0 {
            match self.assign_family(snap, req, &owner, &mut handle, false) {
                Ok(v6) => out.v6 = v6,
                Err(e) => {
                    if !out.v4.is_empty() {
                        let ips: Vec<IpAddr> = out.v4.iter().map(IpNet::addr).collect();
                        if let Err(undo) = self.release_ips(&ips, Some(&req.handle)) {
                            log::error!(
                                "IPv6 failed and releasing the IPv4 addresses {ips:?} failed \
                                 too: {undo}"
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn assign_family(
        &self,
        snap: &Snapshot,
        req: &AssignRequest,
        owner: &Owner,
        handle: &mut HandleState,
        v4: bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let wanted = if v4 { req.num_v4 } else { req.num_v6 };
        let requested = if v4 { &req.v4_pools } else { &req.v6_pools };
        let pools = pools::choose(
            &snap.pools,
            requested,
            v4,
            &self.node,
            &snap.node_labels,
            &req.namespace_labels,
        )?;
        let in_pools = |cidr: &IpNet| pools.iter().any(|p| p.cidr.contains(cidr));
        let reserved = |ip: IpAddr| snap.is_reserved(ip);
        let mut got: Vec<IpNet> = Vec::new();

        // 1. Blocks affine to this node, in key order.
        let affine: Vec<(&IpNet, &Kv)> = snap
            .affinities
            .iter()
            .filter(|(cidr, _)| matches!(cidr, IpNet::V4(_)) == v4 && in_pools(cidr))
            .collect();
        if !affine.is_empty() {
            let missing: Vec<Read> = affine
                .iter()
                .filter(|(cidr, _)| !snap.blocks.contains_key(cidr))
                .map(|(cidr, _)| Read::Key(keys::block(cidr)))
                .collect();
            let mut fetched = if missing.is_empty() {
                Vec::new()
            } else {
                self.store.read(&missing)?
            }
            .into_iter();
            let blocks: Vec<Vec<Kv>> = affine
                .iter()
                .map(|(cidr, _)| match snap.blocks.get(cidr) {
                    Some(kv) => kv.iter().cloned().collect(),
                    None => fetched.next().unwrap_or_default(),
                })
                .collect();
            for ((cidr, aff), found) in affine.iter().zip(blocks) {
                if got.len() >= wanted {
                    break;
                }
                let ips = self.fill_affine(
                    cidr,
                    aff,
                    found.into_iter().next(),
                    wanted - got.len(),
                    owner,
                    handle,
                    &reserved,
                )?;
                got.extend(ips);
            }
        }
        if got.len() >= wanted {
            return Ok(got);
        }

        // 2. Claim new blocks for this node.
        let family_affinities = snap
            .affinities
            .keys()
            .filter(|c| matches!(c, IpNet::V4(_)) == v4)
            .count();
        let limit = snap.settings.max_blocks_per_host;
        let may_claim = snap.settings.auto_allocate_blocks && family_affinities < limit;
        if may_claim {
            let mut claimed = 0;
            while got.len() < wanted && family_affinities + claimed < limit {
                match self.claim_new_block(&pools, wanted - got.len(), owner, handle, &reserved)? {
                    Some(ips) => {
                        claimed += 1;
                        got.extend(ips);
                    }
                    None => break,
                }
            }
        }
        if got.len() >= wanted {
            return Ok(got);
        }

        // 3. Borrow from blocks affine to other nodes.
        if !snap.settings.strict_affinity {
            let ips = self.borrow(&pools, wanted - got.len(), owner, handle, &reserved)?;
            got.extend(ips);
        }
        if got.len() >= wanted {
            return Ok(got);
        }
        if !got.is_empty() {
            let ips: Vec<IpAddr> = got.iter().map(IpNet::addr).collect();
            let _ = self.release_ips(&ips, Some(&owner.handle));
        }
        let family = family_name(v4);
        if snap.settings.auto_allocate_blocks && family_affinities >= limit {
            return Err(IpamError::BlockLimit { family, limit });
        }
        Err(IpamError::Exhausted {
            family,
            pools: pools.iter().map(|p| p.cidr.to_string()).collect(),
        })
    }

    /// Uses a block this node has an affinity for: claims it if the block is missing, drops
    /// the affinity if the block belongs to someone else, confirms a pending affinity.
    #[allow(clippy::too_many_arguments)]
    fn fill_affine(
        &self,
        cidr: &IpNet,
        affinity: &Kv,
        block: Option<Kv>,
        n: usize,
        owner: &Owner,
        handle: &mut HandleState,
        reserved: &impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let aff = BlockAffinity::from_bytes(&affinity.value)
            .map_err(|e| IpamError::corrupt(&affinity.key, e))?;
        if aff.state == BlockAffinity::PENDING_DELETION {
            return Ok(Vec::new());
        }
        let Some(block_kv) = block else {
            // An affinity whose block was never written (a claim cut short): claim it now.
            return self.claim_block(*cidr, Some(affinity), n, owner, handle, reserved);
        };
        let current = decode_block(&block_kv)?;
        if block::affine_node(&current) != Some(self.node.as_str()) {
            // The block belongs to another node: our affinity is stale.
            let _ = self.store.txn(
                &[Guard::Revision(affinity.key.clone(), affinity.mod_revision)],
                &[Write::Delete(affinity.key.clone())],
            )?;
            return Ok(Vec::new());
        }
        let confirm = (!aff.is_confirmed()).then_some(affinity);
        self.assign_in_block(block_kv, n, owner, handle, reserved, confirm)
    }

    /// Assigns up to `n` addresses in an existing block, retrying on conflicts. `confirm`
    /// is a pending affinity of ours to confirm in the same write.
    fn assign_in_block(
        &self,
        mut block_kv: Kv,
        n: usize,
        owner: &Owner,
        handle: &mut HandleState,
        reserved: &impl Fn(IpAddr) -> bool,
        confirm: Option<&Kv>,
    ) -> Result<Vec<IpNet>, IpamError> {
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let mut block = decode_block(&block_kv)?;
            let ips = block::assign_next(&mut block, n, owner, reserved);
            if ips.is_empty() {
                return Ok(Vec::new());
            }
            block.sequence_number += 1;
            let (new_handle, handle_write) = handle.adjusted(&block.cidr, ips.len() as i64)?;
            let mut guards = vec![
                Guard::Revision(block_kv.key.clone(), block_kv.mod_revision),
                handle.guard(),
            ];
            let mut writes = vec![
                Write::Put(block_kv.key.clone(), encode(&block_kv.key, &block)?),
                handle_write.clone(),
            ];
            if let Some(aff) = confirm {
                guards.push(Guard::Revision(aff.key.clone(), aff.mod_revision));
                writes.push(Write::Put(
                    aff.key.clone(),
                    encode(&aff.key, &BlockAffinity::confirmed())?,
                ));
            }
            match self.store.txn(&guards, &writes)? {
                TxnOutcome::Applied(rev) => {
                    handle.committed(new_handle, &handle_write, rev);
                    return Ok(ips
                        .into_iter()
                        .map(|ip| block::with_block_mask(&block.cidr, ip))
                        .collect());
                }
                TxnOutcome::Conflict(current) => {
                    let mut current = current.into_iter();
                    let Some(b) = current.next().flatten() else {
                        return Ok(Vec::new()); // the block went away
                    };
                    block_kv = b;
                    handle.refresh(current.next().flatten())?;
                    if confirm.is_some() {
                        // Our pending affinity changed under us; use the block unconfirmed
                        // next time round and let a later call confirm it.
                        return self.assign_in_block(block_kv, n, owner, handle, reserved, None);
                    }
                }
            }
        }
        Err(IpamError::TooManyRetries { key: block_kv.key })
    }

    /// Creates block `cidr` for this node with the first addresses already assigned, the
    /// confirmed affinity and the handle, in one transaction. `None` if someone else created
    /// the block first (or it is entirely reserved).
    fn claim_block(
        &self,
        cidr: IpNet,
        existing_affinity: Option<&Kv>,
        n: usize,
        owner: &Owner,
        handle: &mut HandleState,
        reserved: &impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let block_key = keys::block(&cidr);
        let aff_key = keys::affinity(&self.node, &cidr);
        let mut aff_current = existing_affinity.cloned();
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let mut block = block::new_block(cidr, &self.node, (self.now)());
            let ips = block::assign_next(&mut block, n, owner, reserved);
            if ips.is_empty() {
                return Ok(Vec::new());
            }
            block.sequence_number += 1;
            let (new_handle, handle_write) = handle.adjusted(&cidr, ips.len() as i64)?;
            let guards = [
                Guard::Absent(block_key.clone()),
                Guard::for_current(&aff_key, aff_current.as_ref()),
                handle.guard(),
            ];
            let writes = [
                Write::Put(block_key.clone(), encode(&block_key, &block)?),
                Write::Put(
                    aff_key.clone(),
                    encode(&aff_key, &BlockAffinity::confirmed())?,
                ),
                handle_write.clone(),
            ];
            match self.store.txn(&guards, &writes)? {
                TxnOutcome::Applied(rev) => {
                    handle.committed(new_handle, &handle_write, rev);
                    log::info!("claimed block {cidr} for node {}", self.node);
                    return Ok(ips
                        .into_iter()
                        .map(|ip| block::with_block_mask(&cidr, ip))
                        .collect());
                }
                TxnOutcome::Conflict(current) => {
                    let mut current = current.into_iter();
                    if current.next().flatten().is_some() {
                        // Another node won this block; a stale affinity of ours for it is
                        // dropped by the next call that finds it (see fill_affine).
                        return Ok(Vec::new());
                    }
                    aff_current = current.next().flatten();
                    handle.refresh(current.next().flatten())?;
                }
            }
        }
        Err(IpamError::TooManyRetries { key: block_key })
    }

    /// Finds an unclaimed block in the pools (starting at this node's offset) and claims it.
    /// `None` when every pool is full of blocks.
    fn claim_new_block(
        &self,
        pools: &[&Pool],
        n: usize,
        owner: &Owner,
        handle: &mut HandleState,
        reserved: &impl Fn(IpAddr) -> bool,
    ) -> Result<Option<Vec<IpNet>>, IpamError> {
        let v4 = pools.first().is_none_or(|p| p.is_v4());
        for _ in 0..MAX_RETRIES {
            let existing: BTreeSet<IpNet> = self
                .store
                .list_keys(&keys::blocks_prefix(v4))?
                .iter()
                .filter_map(|k| keys::block_cidr_of(k))
                .collect();
            let candidate = pools.iter().find_map(|pool| {
                pool.blocks_from_node_offset(&self.node)
                    .find(|b| !overlaps_any(&existing, b))
            });
            let Some(cidr) = candidate else {
                return Ok(None);
            };
            let ips = self.claim_block(cidr, None, n, owner, handle, reserved)?;
            if !ips.is_empty() {
                return Ok(Some(ips));
            }
            // Lost the race for that block (or it is all reserved): look again.
            if (0..block::capacity(&cidr)).all(|o| reserved(block::address(&cidr, o))) {
                return Ok(None);
            }
        }
        Err(IpamError::TooManyRetries {
            key: keys::blocks_prefix(v4),
        })
    }

    /// Takes addresses from blocks affine to other nodes (or to none).
    fn borrow(
        &self,
        pools: &[&Pool],
        n: usize,
        owner: &Owner,
        handle: &mut HandleState,
        reserved: &impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let v4 = pools.first().is_none_or(|p| p.is_v4());
        let all = self.store.list(&keys::blocks_prefix(v4))?;
        let mut got = Vec::new();
        for pool in pools {
            for kv in all
                .iter()
                .filter(|kv| keys::block_cidr_of(&kv.key).is_some_and(|c| pool.cidr.contains(&c)))
            {
                if got.len() >= n {
                    return Ok(got);
                }
                let b = decode_block(kv)?;
                if block::affine_node(&b) == Some(self.node.as_str())
                    || block::free(&b, reserved) == 0
                {
                    continue;
                }
                got.extend(self.assign_in_block(
                    kv.clone(),
                    n - got.len(),
                    owner,
                    handle,
                    reserved,
                    None,
                )?);
            }
        }
        Ok(got)
    }

    /// Assigns one specific address (`IP=` in CNI_ARGS, fixed addresses). Returns it with
    /// the block's mask.
    pub fn assign_ip(
        &self,
        ip: IpAddr,
        handle_id: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<IpNet, IpamError> {
        let snap = self.snapshot(&[handle_id])?;
        self.assign_ip_with(&snap, ip, handle_id, attrs)
    }

    pub fn assign_ip_with(
        &self,
        snap: &Snapshot,
        ip: IpAddr,
        handle_id: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<IpNet, IpamError> {
        let pool = snap
            .pools
            .iter()
            .find(|p| p.cidr.contains(&ip) && !p.disabled)
            .ok_or(IpamError::NotInPool { ip })?;
        if !pool.allows_workloads {
            return Err(IpamError::PoolNotUsable {
                pool: pool.name.clone(),
                reason: "does not allow Workload use".into(),
            });
        }
        if snap.is_reserved(ip) {
            return Err(IpamError::Reserved { ip });
        }
        let cidr = pool.block_of(ip).ok_or(IpamError::NotInPool { ip })?;
        let owner = Owner {
            handle: handle_id.to_string(),
            attrs: attrs.clone(),
        };
        let mut handle =
            HandleState::new(handle_id, snap.handles.get(handle_id).cloned().flatten())?;
        let block_key = keys::block(&cidr);
        let aff_key = keys::affinity(&self.node, &cidr);
        let only_ip = |a: IpAddr| a != ip;
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let got = self
                .store
                .read(&[Read::Key(block_key.clone()), Read::Key(aff_key.clone())])?;
            let mut got = got.into_iter();
            let block_kv = got.next().unwrap_or_default().pop();
            let aff = got.next().unwrap_or_default().pop();
            let Some(block_kv) = block_kv else {
                // No block yet: claim it for this node with the address in it.
                let ips = self.claim_block(cidr, aff.as_ref(), 1, &owner, &mut handle, &only_ip)?;
                match ips.into_iter().next() {
                    Some(net) => return Ok(net),
                    None => continue,
                }
            };
            let mut b = decode_block(&block_kv)?;
            if snap.settings.strict_affinity
                && block::affine_node(&b).is_some_and(|n| n != self.node)
            {
                return Err(IpamError::ForeignBlock {
                    ip,
                    block: cidr.to_string(),
                });
            }
            block::assign_specific(&mut b, ip, &owner).map_err(|_| IpamError::AlreadyAssigned {
                ip,
                block: cidr.to_string(),
            })?;
            b.sequence_number += 1;
            let (new_handle, handle_write) = handle.adjusted(&cidr, 1)?;
            let guards = [
                Guard::Revision(block_key.clone(), block_kv.mod_revision),
                handle.guard(),
            ];
            let writes = [
                Write::Put(block_key.clone(), encode(&block_key, &b)?),
                handle_write.clone(),
            ];
            match self.store.txn(&guards, &writes)? {
                TxnOutcome::Applied(rev) => {
                    handle.committed(new_handle, &handle_write, rev);
                    return Ok(block::with_block_mask(&cidr, ip));
                }
                TxnOutcome::Conflict(current) => {
                    handle.refresh(current.into_iter().nth(1).flatten())?;
                }
            }
        }
        Err(IpamError::TooManyRetries { key: block_key })
    }

    /// Releases everything `handle` holds. `Ok(None)` if the handle does not exist.
    pub fn release_by_handle(&self, handle_id: &str) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let current = self.store.get(&keys::handle(handle_id))?;
        self.release_handle_with(handle_id, current, None, &BTreeMap::new())
    }

    /// Releases what `handle_id` holds (only the allocations whose `node` attribute is
    /// `only_node`, when given), starting from the handle's state `current`. Blocks already
    /// read (`prefetched`, `None` = absent) are not read again.
    pub fn release_handle_with(
        &self,
        handle_id: &str,
        current: Option<Kv>,
        only_node: Option<&str>,
        prefetched: &BTreeMap<IpNet, Option<Kv>>,
    ) -> Result<Option<Vec<IpAddr>>, IpamError> {
        if current.is_none() {
            return Ok(None);
        }
        let mut handle = HandleState::new(handle_id, current)?;
        let cidrs: Vec<IpNet> = handle
            .value
            .block
            .keys()
            .filter_map(|c| c.parse().ok())
            .collect();
        let reads: Vec<Read> = cidrs
            .iter()
            .filter(|c| !prefetched.contains_key(c))
            .map(|c| Read::Key(keys::block(c)))
            .collect();
        let mut fetched = if reads.is_empty() {
            Vec::new()
        } else {
            self.store.read(&reads)?
        }
        .into_iter();
        let mut released = Vec::new();
        for cidr in &cidrs {
            let found = match prefetched.get(cidr) {
                Some(kv) => kv.clone(),
                None => fetched.next().unwrap_or_default().pop(),
            };
            released.extend(self.release_in_block(cidr, found, &mut handle, only_node)?);
        }
        Ok(Some(released))
    }

    fn release_in_block(
        &self,
        cidr: &IpNet,
        mut block_kv: Option<Kv>,
        handle: &mut HandleState,
        only_node: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let key = keys::block(cidr);
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let mut guards = vec![handle.guard()];
            let mut writes = Vec::new();
            let mut freed = Vec::new();
            let held = handle
                .value
                .block
                .get(&cidr.to_string())
                .copied()
                .unwrap_or(0);
            let mut delta = -held;
            if let Some(kv) = &block_kv {
                let mut b = decode_block(kv)?;
                let id = handle.id.clone();
                freed = block::release_where(&mut b, |_, a| {
                    a.is_some_and(|a| {
                        a.handle() == Some(id.as_str())
                            && only_node.is_none_or(|n| a.owner("node") == Some(n))
                    })
                })
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
                if only_node.is_some() {
                    delta = -(freed.len() as i64);
                }
                if !freed.is_empty() {
                    guards.push(Guard::Revision(key.clone(), kv.mod_revision));
                    if block::is_empty(&b) && b.affinity.is_none() {
                        writes.push(Write::Delete(key.clone()));
                    } else {
                        b.sequence_number += 1;
                        writes.push(Write::Put(key.clone(), encode(&key, &b)?));
                    }
                }
            }
            if delta == 0 && freed.is_empty() {
                return Ok(freed);
            }
            let (new_handle, handle_write) = handle.adjusted(cidr, delta)?;
            writes.push(handle_write.clone());
            match self.store.txn(&guards, &writes)? {
                TxnOutcome::Applied(rev) => {
                    handle.committed(new_handle, &handle_write, rev);
                    return Ok(freed);
                }
                TxnOutcome::Conflict(current) => {
                    let mut current = current.into_iter();
                    handle.refresh(current.next().flatten())?;
                    if handle.current.is_none() {
                        return Ok(Vec::new());
                    }
                    if guards.len() > 1 {
                        block_kv = current.next().flatten();
                    }
                }
            }
        }
        Err(IpamError::TooManyRetries { key })
    }

    /// Releases specific addresses (only those owned by `handle_id`, when given); returns
    /// the ones released. Their handles are decremented in the same transactions.
    pub fn release_ips(
        &self,
        ips: &[IpAddr],
        handle_id: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let mut by_block: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        let mut snap_pools: Option<Vec<Pool>> = None;
        for ip in ips {
            let pools = match &snap_pools {
                Some(p) => p,
                None => snap_pools.insert(self.snapshot(&[])?.pools),
            };
            let cidr = match pools
                .iter()
                .find(|p| p.cidr.contains(ip))
                .and_then(|p| p.block_of(*ip))
            {
                Some(c) => Some(c),
                None => self
                    .store
                    .list_keys(&keys::blocks_prefix(ip.is_ipv4()))?
                    .iter()
                    .filter_map(|k| keys::block_cidr_of(k))
                    .find(|c| c.contains(ip)),
            };
            if let Some(c) = cidr {
                by_block.entry(c).or_default().push(*ip);
            }
        }
        let mut released = Vec::new();
        for (cidr, ips) in by_block {
            released.extend(self.release_ips_in_block(&cidr, &ips, handle_id)?);
        }
        Ok(released)
    }

    fn release_ips_in_block(
        &self,
        cidr: &IpNet,
        ips: &[IpAddr],
        handle_id: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let key = keys::block(cidr);
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let Some(kv) = self.store.get(&key)? else {
                return Ok(Vec::new());
            };
            let mut b = decode_block(&kv)?;
            let ords: BTreeSet<usize> = ips
                .iter()
                .filter_map(|ip| block::ordinal(cidr, *ip))
                .collect();
            let freed = block::release_where(&mut b, |ord, a| {
                ords.contains(&ord)
                    && handle_id.is_none_or(|h| a.and_then(|a| a.handle()) == Some(h))
            });
            if freed.is_empty() {
                return Ok(Vec::new());
            }
            let mut per_handle: BTreeMap<String, i64> = BTreeMap::new();
            for (_, h) in &freed {
                if let Some(h) = h {
                    *per_handle.entry(h.clone()).or_default() += 1;
                }
            }
            let handle_reads: Vec<Read> = per_handle
                .keys()
                .map(|h| Read::Key(keys::handle(h)))
                .collect();
            let current_handles = self.store.read(&handle_reads)?;
            let mut guards = vec![Guard::Revision(key.clone(), kv.mod_revision)];
            let mut writes = Vec::new();
            if block::is_empty(&b) && b.affinity.is_none() {
                writes.push(Write::Delete(key.clone()));
            } else {
                b.sequence_number += 1;
                writes.push(Write::Put(key.clone(), encode(&key, &b)?));
            }
            for ((h, n), cur) in per_handle.iter().zip(current_handles) {
                let state = HandleState::new(h, cur.into_iter().next())?;
                if state.current.is_none() {
                    continue;
                }
                let (_, w) = state.adjusted(cidr, -n)?;
                guards.push(state.guard());
                writes.push(w);
            }
            if self.store.txn(&guards, &writes)?.applied() {
                return Ok(freed.into_iter().map(|(ip, _)| ip).collect());
            }
        }
        Err(IpamError::TooManyRetries { key })
    }

    /// The addresses `handle_id` holds, per its blocks.
    pub fn addresses_of_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(kv) = self.store.get(&keys::handle(handle_id))? else {
            return Ok(Vec::new());
        };
        let h = HandleState::new(handle_id, Some(kv))?;
        let reads: Vec<Read> = h
            .value
            .block
            .keys()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .map(|c| Read::Key(keys::block(&c)))
            .collect();
        let mut out = Vec::new();
        for kv in self.store.read(&reads)?.into_iter().flatten() {
            out.extend(block::addresses_of(&decode_block(&kv)?, handle_id));
        }
        Ok(out)
    }
}
