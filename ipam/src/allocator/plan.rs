//! Planning: the changes one transaction will make, built against one [`Snapshot`] and
//! nothing written. An assignment goes phase by phase ([`Plan::family`]: affine, claim or
//! reclaim, borrow); a specific address is [`Plan::specific`]; releases are planned in
//! `release`; `commit` writes the plan.
//!
//! Stored blocks are validated as they are loaded; a corrupt one is logged and skipped by
//! every phase and every release (never allocated from, released in or written over).

use super::{
    AssignRequest, EMPTY_BLOCK_MIN_RECLAIM_AGE, Ipam, Snapshot, decode_block, decode_handle, encode,
};
use crate::block::{self, Owner, OwnerRole};
use crate::error::IpamError;
use crate::pools::{self, Pool};
use calico_datastore::model::{
    AllocationAttribute, AllocationBlock, BlockAffinity, IpamHandle, keys,
};
use calico_datastore::{Guard, Kv, Read, Write};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Whether `b` overlaps a block in `existing` (same size, or bigger or smaller blocks left by
/// pools with another block size).
fn overlaps_any(existing: &BTreeSet<IpNet>, b: &IpNet) -> bool {
    if existing.contains(b) {
        return true;
    }
    let bigger = (0..b.prefix_len())
        .filter_map(|len| IpNet::new(b.network(), len).ok().map(|n| n.trunc()))
        .any(|n| existing.contains(&n));
    let (Ok(lo), Ok(hi)) = (
        IpNet::new(b.network(), 0),
        IpNet::new(b.broadcast(), b.max_prefix_len()),
    ) else {
        return bigger;
    };
    bigger || existing.range(lo..=hi).any(|e| b.contains(e))
}

fn family_name(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

/// A block as the plan changes it.
#[derive(Debug, Clone)]
pub(super) struct PlannedBlock {
    /// The stored state (`None`: the plan creates the block).
    pub(super) current: Option<Kv>,
    pub(super) block: AllocationBlock,
    pub(super) changed: bool,
}

impl PlannedBlock {
    /// Whether the commit deletes the block: it changed, is stored, is empty (Calico's
    /// `empty()`) and has no affinity, as Go's release does.
    pub(super) fn deleted(&self) -> bool {
        self.changed
            && self.current.is_some()
            && block::is_empty(&self.block)
            && self.block.affinity.is_none()
    }
}

/// A handle as the plan changes it.
#[derive(Debug, Clone)]
pub(super) struct PlannedHandle {
    pub(super) key: String,
    pub(super) current: Option<Kv>,
    pub(super) value: IpamHandle,
    pub(super) changed: bool,
}

impl PlannedHandle {
    pub(super) fn new(id: &str, current: Option<Kv>) -> Result<Self, IpamError> {
        let value = match &current {
            Some(kv) => decode_handle(kv)?,
            None => IpamHandle::default(),
        };
        Ok(PlannedHandle {
            key: keys::handle(id),
            current,
            value,
            changed: false,
        })
    }

    /// A handle whose stored value cannot be decoded, as a release plans it: empty, and
    /// changed, so the commit deletes it (guarded by its revision).
    pub(super) fn unreadable(id: &str, current: Option<Kv>) -> Self {
        PlannedHandle {
            key: keys::handle(id),
            current,
            value: IpamHandle::default(),
            changed: true,
        }
    }

    pub(super) fn adjust(&mut self, cidr: &IpNet, delta: i64) {
        if delta == 0 {
            return;
        }
        let k = cidr.to_string();
        let n = self.value.block.get(&k).copied().unwrap_or(0) + delta;
        if n > 0 {
            self.value.block.insert(k, n);
        } else {
            self.value.block.remove(&k);
        }
        self.changed = true;
    }

    /// The blocks the handle holds addresses in, as it records them.
    pub(super) fn blocks(&self) -> Vec<IpNet> {
        self.value
            .block
            .keys()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    pub(super) fn held_in(&self, cidr: &IpNet) -> i64 {
        self.value
            .block
            .get(&cidr.to_string())
            .copied()
            .unwrap_or(0)
    }
}

/// One family's request as the phases fill it.
struct Want<'r> {
    v4: bool,
    wanted: usize,
    got: Vec<IpNet>,
    owner: &'r Owner,
    /// The pools the request may use, in the order they are tried.
    chosen: &'r [&'r Pool],
}

impl Want<'_> {
    fn done(&self) -> bool {
        self.got.len() >= self.wanted
    }

    fn in_pools(&self, cidr: &IpNet) -> bool {
        self.chosen.iter().any(|p| p.cidr.contains(cidr))
    }

    /// Takes what is still wanted from a loaded block.
    fn take(&mut self, plan: &mut Plan<'_, '_>, cidr: &IpNet) -> Result<(), IpamError> {
        let n = self.wanted - self.got.len();
        self.got.extend(plan.take(cidr, n, self.owner)?);
        Ok(())
    }
}

/// The changes one transaction will make, built against one snapshot.
pub(super) struct Plan<'a, 's> {
    pub(super) ipam: &'a Ipam<'s>,
    pub(super) snap: &'a Snapshot,
    pub(super) blocks: BTreeMap<IpNet, Option<PlannedBlock>>,
    pub(super) handles: BTreeMap<String, PlannedHandle>,
    /// Affinity key to its guard and write (claim, confirm or drop; another node's affinity
    /// dropped by a reclaim is guarded by its block instead).
    pub(super) affinities: BTreeMap<String, (Option<Guard>, Write)>,
    /// Every block key per family (`true`: IPv4), read when first needed.
    block_keys: BTreeMap<bool, BTreeSet<IpNet>>,
    /// Every block per family, read when first needed (borrowing).
    all_blocks: BTreeMap<bool, Vec<Kv>>,
    /// Stored blocks that are corrupt ([`AllocationBlock::validate`]), each logged once:
    /// never loaded, so nothing is allocated from, released in or written over them.
    corrupt: BTreeSet<IpNet>,
}

impl<'a, 's> Plan<'a, 's> {
    pub(super) fn new(ipam: &'a Ipam<'s>, snap: &'a Snapshot) -> Self {
        Plan {
            ipam,
            snap,
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
            affinities: BTreeMap::new(),
            block_keys: BTreeMap::new(),
            all_blocks: BTreeMap::new(),
            corrupt: BTreeSet::new(),
        }
    }

    /// [`Plan::planned`], with a corrupt block logged, remembered and skipped (`None`).
    fn planned_or_skip(&mut self, cidr: IpNet, kv: Kv) -> Result<Option<PlannedBlock>, IpamError> {
        match self.planned(kv) {
            Ok(pb) => Ok(Some(pb)),
            Err(IpamError::Corrupt { key, reason }) => {
                if self.corrupt.insert(cidr) {
                    log::warn!("block {key} skipped: {reason}");
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the stored block of `cidr` was found corrupt (and is skipped).
    pub(super) fn is_corrupt(&self, cidr: &IpNet) -> bool {
        self.corrupt.contains(cidr)
    }

    /// Which blocks still have a free, unreserved address after the plan (for the node's
    /// block hint: the next call prefetches only blocks with room).
    pub(super) fn room(&self) -> BTreeMap<IpNet, bool> {
        let reserved = |ip: IpAddr| self.snap.is_reserved(ip);
        self.blocks
            .iter()
            .filter_map(|(c, pb)| {
                pb.as_ref()
                    .map(|pb| (*c, block::free(&pb.block, &reserved) > 0))
            })
            .collect()
    }

    pub(super) fn handle(&mut self, id: &str) -> Result<&mut PlannedHandle, IpamError> {
        if !self.handles.contains_key(id) {
            let current = self.stored_handle(id)?;
            self.handles
                .insert(id.to_string(), PlannedHandle::new(id, current)?);
        }
        self.handles
            .get_mut(id)
            .ok_or_else(|| IpamError::Other("handle vanished from the plan".into()))
    }

    /// The handle's stored key-value, from the snapshot when it read it.
    pub(super) fn stored_handle(&self, id: &str) -> Result<Option<Kv>, IpamError> {
        Ok(match self.snap.handles.get(id) {
            Some(kv) => kv.clone(),
            None => self.ipam.store.get(&keys::handle(id))?,
        })
    }

    /// A stored block as the plan starts from it: addresses whose 3.33 cooldown has passed
    /// are free (Go's `blockFromBackend`; written back only with the plan's own changes).
    pub(super) fn planned(&self, kv: Kv) -> Result<PlannedBlock, IpamError> {
        let mut block = decode_block(&kv)?;
        block::collect_cooled(
            &mut block,
            self.snap.settings.ip_cooldown_seconds,
            (self.ipam.now)(),
        );
        Ok(PlannedBlock {
            block,
            current: Some(kv),
            changed: false,
        })
    }

    /// Makes sure the blocks are loaded: from the snapshot if it read them, else with one
    /// read for all the others. Blocks are decoded only when needed.
    pub(super) fn load(&mut self, cidrs: &[IpNet]) -> Result<(), IpamError> {
        let mut missing = Vec::new();
        for c in cidrs {
            if self.blocks.contains_key(c) || self.corrupt.contains(c) {
                continue;
            }
            match self.snap.blocks.get(c) {
                Some(Some(kv)) => {
                    if let Some(pb) = self.planned_or_skip(*c, kv.clone())? {
                        self.blocks.insert(*c, Some(pb));
                    }
                }
                Some(None) => {
                    self.blocks.insert(*c, None);
                }
                None => missing.push(*c),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let reads: Vec<Read> = missing.iter().map(|c| Read::Key(keys::block(c))).collect();
        for (cidr, found) in missing.iter().zip(self.ipam.store.read(&reads)?) {
            match found.into_iter().next() {
                Some(kv) => {
                    if let Some(pb) = self.planned_or_skip(*cidr, kv)? {
                        self.blocks.insert(*cidr, Some(pb));
                    }
                }
                None => {
                    self.blocks.insert(*cidr, None);
                }
            }
        }
        Ok(())
    }

    /// Takes up to `n` addresses from a loaded block for `owner`.
    fn take(&mut self, cidr: &IpNet, n: usize, owner: &Owner) -> Result<Vec<IpNet>, IpamError> {
        let snap = self.snap;
        let reserved = |ip: IpAddr| snap.is_reserved(ip);
        let Some(Some(pb)) = self.blocks.get_mut(cidr) else {
            return Ok(Vec::new());
        };
        let ips = block::assign_next(&mut pb.block, n, owner, &reserved);
        if ips.is_empty() {
            return Ok(Vec::new());
        }
        pb.changed = true;
        let count = ips.len() as i64;
        self.handle(&owner.handle)?.adjust(cidr, count);
        Ok(ips
            .into_iter()
            .map(|ip| block::with_block_mask(cidr, ip))
            .collect())
    }

    /// Plans a new block for this node (and its confirmed affinity). `replacing` is the
    /// stored block a reclaim makes anew (the write is guarded on it).
    pub(super) fn create_block(&mut self, cidr: IpNet, replacing: Option<Kv>) {
        let aff_key = keys::affinity(&self.ipam.node, &cidr);
        let guard = Guard::for_current(&aff_key, self.snap.affinities.get(&cidr));
        let confirmed = serde_json::to_vec(&BlockAffinity::confirmed()).unwrap_or_default();
        self.affinities.insert(
            aff_key.clone(),
            (Some(guard), Write::Put(aff_key, confirmed)),
        );
        self.blocks.insert(
            cidr,
            Some(PlannedBlock {
                current: replacing,
                block: block::new_block(cidr, &self.ipam.node, (self.ipam.now)()),
                changed: true,
            }),
        );
    }

    /// Every block of a family, read when first needed (borrowing, reclaiming).
    pub(super) fn all_blocks(&mut self, v4: bool) -> Result<Vec<Kv>, IpamError> {
        if !self.all_blocks.contains_key(&v4) {
            let all = self.ipam.store.list(&keys::blocks_prefix(v4))?;
            self.all_blocks.insert(v4, all);
        }
        Ok(self.all_blocks[&v4].clone())
    }

    /// Go's `findUsableBlock`, then the claim: the first block CIDR of the chosen pools
    /// (each walked from this node's offset) that no block overlaps and that is not
    /// wholly reserved; failing that, the first empty block (in the same walk) that
    /// another node claimed at least [`EMPTY_BLOCK_MIN_RECLAIM_AGE`] ago, reclaimed: its
    /// affinity is dropped and the block made anew for this node, guarded on the block as
    /// read, so an allocation into it or another reclaim in between fails the transaction
    /// and the plan is made again. `None` if there is neither.
    fn claim_usable_block(
        &mut self,
        chosen: &[&Pool],
        v4: bool,
    ) -> Result<Option<IpNet>, IpamError> {
        let node = self.ipam.node.clone();
        let mut taken = self.block_keys(v4)?.clone();
        taken.extend(self.blocks.keys().filter(|c| is_v4(c) == v4));
        let fresh = chosen.iter().find_map(|pool| {
            pool.blocks_from_node_offset(&node)
                .find(|b| !overlaps_any(&taken, b) && !self.fully_reserved(b))
        });
        if let Some(cidr) = fresh {
            self.create_block(cidr, None);
            return Ok(Some(cidr));
        }
        // No unclaimed block is left, so these pools were just walked whole: small enough
        // to walk again.
        let stored: BTreeMap<IpNet, Kv> = self
            .all_blocks(v4)?
            .into_iter()
            .filter_map(|kv| Some((keys::block_cidr_of(&kv.key)?, kv)))
            .collect();
        let now = (self.ipam.now)();
        for pool in chosen {
            for cidr in pool.blocks_from_node_offset(&node) {
                if self.blocks.contains_key(&cidr) {
                    continue; // in this plan already (ours, or looked at)
                }
                let Some(kv) = stored.get(&cidr) else {
                    continue;
                };
                let Some(pb) = self.planned_or_skip(cidr, kv.clone())? else {
                    continue;
                };
                let reserved = |ip: IpAddr| self.snap.is_reserved(ip);
                let Some(other) = block::affine_node(&pb.block).map(str::to_string) else {
                    continue;
                };
                if other == node
                    || !block::is_empty(&pb.block)
                    || block::free(&pb.block, &reserved) == 0
                {
                    continue;
                }
                let claimed_at = pb
                    .block
                    .affinity_claim_time
                    .as_deref()
                    .and_then(calico_datastore::model::time::parse_rfc3339);
                let age = claimed_at.map(|t| now.duration_since(t).unwrap_or_default());
                // No claim time (older blocks): claimed long ago.
                if age.is_some_and(|a| a < EMPTY_BLOCK_MIN_RECLAIM_AGE) {
                    log::info!(
                        "block {cidr} was claimed {:.1}s ago by {other}, not reclaiming it",
                        age.unwrap_or_default().as_secs_f64()
                    );
                    continue;
                }
                log::info!("reclaiming empty block {cidr} from node {other}");
                let theirs = keys::affinity(&other, &cidr);
                self.affinities
                    .insert(theirs.clone(), (None, Write::Delete(theirs)));
                self.drop_handles(&cidr, block::handle_counts(&pb.block))?;
                self.create_block(cidr, Some(kv.clone()));
                return Ok(Some(cidr));
            }
        }
        Ok(None)
    }

    pub(super) fn block_keys(&mut self, v4: bool) -> Result<&BTreeSet<IpNet>, IpamError> {
        if !self.block_keys.contains_key(&v4) {
            let keys: BTreeSet<IpNet> = self
                .ipam
                .store
                .list_keys(&keys::blocks_prefix(v4))?
                .iter()
                .filter_map(|k| keys::block_cidr_of(k))
                .collect();
            self.block_keys.insert(v4, keys);
        }
        Ok(&self.block_keys[&v4])
    }

    /// Plans up to `wanted` addresses of one family, phase by phase as Go's `autoAssign`:
    /// the node's affine blocks ([`Plan::affine`]), then new blocks claimed or reclaimed for
    /// it ([`Plan::claim`]), then, without strict affinity, other nodes' blocks
    /// ([`Plan::borrow`]).
    pub(super) fn family(
        &mut self,
        req: &AssignRequest,
        owner: &Owner,
        v4: bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let snap = self.snap;
        snap.config_for_allocation()?;
        let node = self.ipam.node.clone();
        if !snap.node_registered {
            return Err(IpamError::NodeNotFound { node });
        }
        let requested = if v4 { &req.v4_pools } else { &req.v6_pools };
        let chosen = pools::choose_for(
            req.intended_use,
            &snap.pools,
            &snap.unusable_pools,
            requested,
            v4,
            &node,
            &snap.node_labels,
            &req.namespace_labels,
        )?;
        let mut want = Want {
            v4,
            wanted: if v4 { req.num_v4 } else { req.num_v6 },
            got: Vec::new(),
            owner,
            chosen: &chosen,
        };
        self.affine(&mut want)?;
        self.claim(&mut want)?;
        if !snap.settings.strict_affinity {
            self.borrow(&mut want)?;
        }
        if want.done() {
            return Ok(want.got);
        }
        Err(IpamError::Exhausted {
            family: family_name(v4),
            pools: chosen.iter().map(|p| p.cidr.to_string()).collect(),
        })
    }

    /// Phase 1: blocks affine to this node: those the snapshot prefetched (the node's
    /// blocks with room, as last seen) first, then the others, in key order, read only if
    /// needed. A stale affinity (the block is another node's) is dropped; a pending one
    /// confirmed as its block is used.
    fn affine(&mut self, want: &mut Want<'_>) -> Result<(), IpamError> {
        let snap = self.snap;
        let node = self.ipam.node.clone();
        let mut affine: Vec<(IpNet, Kv)> = snap
            .affinities
            .iter()
            .filter(|(cidr, _)| is_v4(cidr) == want.v4 && want.in_pools(cidr))
            .map(|(c, kv)| (*c, kv.clone()))
            .collect();
        affine.sort_by_key(|(c, _)| !snap.blocks.contains_key(c));
        let prefetched = affine
            .iter()
            .take_while(|(c, _)| snap.blocks.contains_key(c))
            .count();
        for (i, (cidr, aff_kv)) in affine.iter().enumerate() {
            if want.done() {
                break;
            }
            if i == prefetched {
                let rest: Vec<IpNet> = affine[i..].iter().map(|(c, _)| *c).collect();
                self.load(&rest)?;
            } else {
                self.load(&[*cidr])?;
            }
            if self.is_corrupt(cidr) {
                continue;
            }
            let aff = BlockAffinity::from_bytes(&aff_kv.value)
                .map_err(|e| IpamError::corrupt(&aff_kv.key, e))?;
            if aff.state == BlockAffinity::PENDING_DELETION {
                continue;
            }
            let owner_node = match self.blocks.get(cidr) {
                Some(Some(pb)) => block::affine_node(&pb.block).map(str::to_string),
                _ => {
                    // An affinity whose block was never written (a claim cut short).
                    self.create_block(*cidr, None);
                    Some(node.clone())
                }
            };
            if owner_node.as_deref() != Some(node.as_str()) {
                // The block belongs to another node: our affinity is stale; drop it.
                self.affinities.insert(
                    aff_kv.key.clone(),
                    (
                        Some(Guard::Revision(aff_kv.key.clone(), aff_kv.mod_revision)),
                        Write::Delete(aff_kv.key.clone()),
                    ),
                );
                continue;
            }
            if !aff.is_confirmed() && !self.affinities.contains_key(&aff_kv.key) {
                let confirmed = encode(&aff_kv.key, &BlockAffinity::confirmed())?;
                self.affinities.insert(
                    aff_kv.key.clone(),
                    (
                        Some(Guard::Revision(aff_kv.key.clone(), aff_kv.mod_revision)),
                        Write::Put(aff_kv.key.clone(), confirmed),
                    ),
                );
            }
            want.take(self, cidr)?;
        }
        Ok(())
    }

    /// Phase 2: new blocks claimed (or reclaimed, see [`Plan::claim_usable_block`]) for this
    /// node, as Go's `findOrClaimBlock` does: at the block limit (counting only the node's
    /// blocks in the pools allowed here), or with auto-allocation off, the request fails now,
    /// without borrowing. Ends quietly when no block is left to claim (borrowing may help).
    fn claim(&mut self, want: &mut Want<'_>) -> Result<(), IpamError> {
        let snap = self.snap;
        let family = family_name(want.v4);
        let owned = snap
            .affinities
            .keys()
            .filter(|c| is_v4(c) == want.v4 && want.in_pools(c))
            .count();
        let limit = snap.settings.max_blocks_per_host;
        let mut claimed = 0;
        while !want.done() {
            if owned + claimed >= limit {
                return Err(IpamError::BlockLimit { family, limit });
            }
            if !snap.settings.auto_allocate_blocks {
                return Err(IpamError::NoBlockToClaim { family });
            }
            let Some(cidr) = self.claim_usable_block(want.chosen, want.v4)? else {
                break; // no free block: borrow, unless strict
            };
            claimed += 1;
            want.take(self, &cidr)?;
        }
        Ok(())
    }

    /// Phase 3 (not under strict affinity): addresses from blocks affine to other nodes (or
    /// to none), in key order.
    fn borrow(&mut self, want: &mut Want<'_>) -> Result<(), IpamError> {
        if want.done() {
            return Ok(());
        }
        let node = self.ipam.node.clone();
        let candidates: Vec<Kv> = self
            .all_blocks(want.v4)?
            .into_iter()
            .filter(|kv| keys::block_cidr_of(&kv.key).is_some_and(|c| want.in_pools(&c)))
            .collect();
        for kv in candidates {
            if want.done() {
                break;
            }
            let Some(cidr) = keys::block_cidr_of(&kv.key) else {
                continue;
            };
            if !self.blocks.contains_key(&cidr) {
                let Some(pb) = self.planned_or_skip(cidr, kv)? else {
                    continue;
                };
                self.blocks.insert(cidr, Some(pb));
            }
            let mine = matches!(self.blocks.get(&cidr), Some(Some(pb))
                if block::affine_node(&pb.block) == Some(node.as_str()));
            if !mine {
                want.take(self, &cidr)?;
            }
        }
        Ok(())
    }

    fn fully_reserved(&self, cidr: &IpNet) -> bool {
        !self.snap.reservations.is_empty()
            && (0..block::capacity(cidr)).all(|o| self.snap.is_reserved(block::address(cidr, o)))
    }

    /// Plans one specific address for `owner`.
    pub(super) fn specific(&mut self, ip: IpAddr, owner: &Owner) -> Result<IpNet, IpamError> {
        let snap = self.snap;
        snap.config_for_allocation()?;
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
        self.load(&[cidr])?;
        if self.is_corrupt(&cidr) {
            return Err(IpamError::corrupt(
                &keys::block(&cidr),
                "invalid block (see the log); no address is assigned from it",
            ));
        }
        if matches!(self.blocks.get(&cidr), Some(None)) {
            self.create_block(cidr, None);
        }
        let node = self.ipam.node.clone();
        let Some(Some(pb)) = self.blocks.get_mut(&cidr) else {
            return Err(IpamError::NotInPool { ip });
        };
        if snap.settings.strict_affinity && block::affine_node(&pb.block).is_some_and(|n| n != node)
        {
            return Err(IpamError::ForeignBlock {
                ip,
                block: cidr.to_string(),
            });
        }
        // Already this handle's: a repeated ADD asking for the same address gets it back.
        if block::attribute_of(&pb.block, ip).and_then(|a| a.handle()) == Some(&owner.handle) {
            return Ok(block::with_block_mask(&cidr, ip));
        }
        block::assign_specific(&mut pb.block, ip, owner).map_err(|_| {
            IpamError::AlreadyAssigned {
                ip,
                block: cidr.to_string(),
            }
        })?;
        pb.changed = true;
        self.handle(&owner.handle)?.adjust(&cidr, 1);
        Ok(block::with_block_mask(&cidr, ip))
    }

    /// The addresses `handle_id` holds, with their blocks (loaded): Go's `IPsByHandle`.
    /// Nothing if the handle does not exist.
    pub(super) fn held_by(&mut self, handle_id: &str) -> Result<Vec<(IpNet, IpAddr)>, IpamError> {
        let cidrs = self.handle(handle_id)?.blocks();
        self.load(&cidrs)?;
        Ok(cidrs
            .iter()
            .filter_map(|c| match self.blocks.get(c) {
                Some(Some(pb)) => Some(
                    block::addresses_of(&pb.block, handle_id)
                        .into_iter()
                        .map(|ip| (*c, ip))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect())
    }

    /// What `handle_id` holds whose allocation names this node as its owner, or names none
    /// (what a repeated ADD on this node gets back).
    pub(super) fn held_here(&mut self, handle_id: &str) -> Result<Vec<(IpNet, IpAddr)>, IpamError> {
        let node = self.ipam.node.clone();
        let held = self.held_by(handle_id)?;
        Ok(held
            .into_iter()
            .filter(|(cidr, ip)| match self.blocks.get(cidr) {
                Some(Some(pb)) => block::attribute_of(&pb.block, *ip)
                    .and_then(|a| a.owner("node"))
                    .is_none_or(|n| n == node),
                _ => false,
            })
            .collect())
    }

    /// Whether `ip` lies in a pool `req` may allocate from (a held address from a pool the
    /// request no longer names is not handed back). A request whose pools cannot be chosen
    /// reuses nothing; its allocation reports why.
    pub(super) fn usable_for(&self, req: &AssignRequest, ip: IpAddr) -> bool {
        let snap = self.snap;
        let v4 = ip.is_ipv4();
        let requested = if v4 { &req.v4_pools } else { &req.v6_pools };
        pools::choose_for(
            req.intended_use,
            &snap.pools,
            &snap.unusable_pools,
            requested,
            v4,
            &self.ipam.node,
            &snap.node_labels,
            &req.namespace_labels,
        )
        .is_ok_and(|chosen| chosen.iter().any(|p| p.cidr.contains(&ip)))
    }

    /// Sets one owner of the allocation at `ip` (in `cidr`, which is loaded) to `attrs`, or
    /// clears it.
    pub(super) fn set_owner(
        &mut self,
        cidr: &IpNet,
        ip: IpAddr,
        handle_id: &str,
        role: OwnerRole,
        attrs: Option<BTreeMap<String, String>>,
    ) {
        if let Some(Some(pb)) = self.blocks.get_mut(cidr)
            && block::set_owner(&mut pb.block, ip, handle_id, role, attrs)
        {
            pb.changed = true;
        }
    }

    /// The attribute entry of the allocation at `ip` in a loaded block.
    pub(super) fn attribute(&self, cidr: &IpNet, ip: IpAddr) -> Option<&AllocationAttribute> {
        match self.blocks.get(cidr) {
            Some(Some(pb)) => block::attribute_of(&pb.block, ip),
            _ => None,
        }
    }

    /// The handles of allocations a block loses without their release (it is deleted, or
    /// made anew by a reclaim: only Windows-reserved ones can be left) give up their count
    /// for it, so no handle keeps a block that is gone. Missing handles stay missing.
    pub(super) fn drop_handles(
        &mut self,
        cidr: &IpNet,
        counts: BTreeMap<String, i64>,
    ) -> Result<(), IpamError> {
        for (h, n) in counts {
            let planned = self.handle(&h)?;
            if planned.current.is_some() {
                planned.adjust(cidr, -n);
            }
        }
        Ok(())
    }

    /// Whether the plan writes anything.
    pub(super) fn is_empty(&self) -> bool {
        !self.blocks.values().flatten().any(|b| b.changed)
            && !self.handles.values().any(|h| h.changed)
            && self.affinities.is_empty()
    }
}
