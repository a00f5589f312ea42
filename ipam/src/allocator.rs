//! Calico's allocation algorithm over a [`KvStore`]: affine blocks first, then a new block
//! claimed for the node, then (without strict affinity) borrowing from other nodes' blocks.
//!
//! Every allocation and every release is planned against a snapshot and committed as **one**
//! guarded etcd transaction: the blocks, the handle, any affinity claimed or confirmed, and
//! whatever the caller adds (the `calico` plugin's WorkloadEndpoint). So there is never a
//! handle without its address, an address without its handle, a claimed block without its
//! affinity, or an endpoint without its address, whatever happens to the process; and the
//! IPv4 half of a dual-stack request is never written if the IPv6 half fails. (Calico writes
//! these objects one by one because its Kubernetes datastore cannot do multi-object
//! transactions; the end state is the same.) A conflict means someone else wrote in between:
//! the plan is rebuilt from a fresh snapshot, up to Calico's bound of 100 times.

use crate::block::{self, Owner, OwnerRole};
use crate::error::IpamError;
use crate::pools::{self, Pool};
use calico_datastore::model::{
    AllocationAttribute, AllocationBlock, BlockAffinity, IpPool, IpReservation, IpamConfigValue,
    IpamHandle, Resource, keys,
};
use calico_datastore::{Guard, Kv, KvStore, Read, Write};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

/// Calico's bound on compare-and-swap retries.
pub const MAX_RETRIES: usize = 100;
/// Calico's per-node block limit when the config sets none.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: usize = 20;
/// How long after another node claimed a block that block may be reclaimed once empty
/// (Go's `EmptyBlockMinReclaimAge`): a block cannot ping-pong between two nodes before
/// either could use it.
pub const EMPTY_BLOCK_MIN_RECLAIM_AGE: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// The blocks the allocation looked at, and whether each still has room.
    pub room: BTreeMap<IpNet, bool>,
}

impl Assigned {
    pub fn all(&self) -> Vec<IpNet> {
        self.v4.iter().chain(&self.v6).copied().collect()
    }
}

/// What [`Ipam::assign_vm_with`] gave a KubeVirt VM pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmAssigned {
    /// With their blocks' masks.
    pub addresses: Vec<IpNet>,
    /// The VM's addresses, which its handle held already (not newly assigned).
    pub reused: bool,
}

/// Writes a caller commits in the same transaction as an allocation or a release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
}

impl Extra {
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty() && self.writes.is_empty()
    }
}

/// Builds a caller's extra writes from the planned outcome and the snapshot it was planned
/// against (called again after each conflict).
pub type ExtraFn<'a, T> = dyn FnMut(&T, &Snapshot) -> Result<Extra, IpamError> + 'a;

/// Which allocations at the given addresses a release by address frees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Every one (`calicoctl ipam release`).
    #[default]
    Any,
    /// Only this handle's (Go's `ReleaseOptions.Handle`).
    Handle(&'a str),
    /// Only those whose `node` attribute names this node, or that have none (allocations
    /// written without owner attributes): a node's removal, where an address a stale record
    /// names but that now belongs to another node's workload stays allocated.
    Node(&'a str),
}

impl Selection<'_> {
    fn admits(&self, attr: Option<&AllocationAttribute>) -> bool {
        match self {
            Selection::Any => true,
            Selection::Handle(h) => attr.and_then(AllocationAttribute::handle) == Some(*h),
            Selection::Node(n) => attr
                .and_then(|a| a.owner("node"))
                .is_none_or(|owner| owner == *n),
        }
    }
}

/// What to release by address in one transaction, and the caller's writes that go with it.
#[derive(Debug, Clone, Default)]
pub struct ReleaseStep {
    pub ips: Vec<IpAddr>,
    pub extra: Extra,
}

/// Gives the [`ReleaseStep`] for the caller's current state: called before each plan (the
/// first, and again after a conflict) with the snapshot it is planned against. `None`:
/// nothing (left) to do, and nothing is written.
pub type ReleaseStepFn<'a> = dyn FnMut(&Snapshot) -> Result<Option<ReleaseStep>, IpamError> + 'a;

/// What releasing one block affinity did ([`Ipam::release_block_affinity`]).
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

/// The IPAM settings in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamSettings {
    pub strict_affinity: bool,
    pub auto_allocate_blocks: bool,
    pub max_blocks_per_host: usize,
    /// Calico 3.33's `ipCooldownSeconds`: released addresses stay taken this long (0: freed
    /// at once, as 3.32 does).
    pub ip_cooldown_seconds: i64,
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
            ip_cooldown_seconds: c.ip_cooldown_seconds(),
        }
    }
}

/// Everything an allocation needs, read in one round trip.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub settings: IpamSettings,
    pub pools: Vec<Pool>,
    /// Whether calico-node has registered this node (its Node resource exists): automatic
    /// assignment needs it, as Calico's `prepareAffinityBlocksForHost` does.
    pub node_registered: bool,
    /// The Calico Node's labels.
    pub node_labels: BTreeMap<String, String>,
    /// `kubeVirtVMAddressPersistence` is not `Disabled` in the v3 `IPAMConfiguration`
    /// `default` (absent means enabled): what Calico's CNI plugin reads to decide whether a
    /// KubeVirt VM keeps its addresses (`ipam_plugin.go` `getKubeVirtVMAddressPersistence`).
    pub vm_address_persistence: bool,
    pub reservations: Vec<IpNet>,
    /// This node's affinities (both families), by block.
    pub affinities: BTreeMap<IpNet, Kv>,
    /// The handles asked for, current state.
    pub handles: BTreeMap<String, Option<Kv>>,
    /// Blocks read along with the rest because the caller expected to need them (the
    /// node's affine blocks as last seen): `None` if the block does not exist.
    pub blocks: BTreeMap<IpNet, Option<Kv>>,
    /// Keys the caller asked to read in the same round trip (its own objects).
    pub extra: BTreeMap<String, Option<Kv>>,
}

impl Snapshot {
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.reservations.iter().any(|r| r.contains(&ip))
    }
}

/// What a caller wants read in a snapshot besides IPAM's own objects.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest<'a> {
    pub handles: &'a [&'a str],
    /// Blocks likely needed (the node's affine blocks as last seen).
    pub blocks: &'a [IpNet],
    /// The caller's own keys.
    pub keys: &'a [String],
}

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::corrupt(key, e))
}

fn decode_block(kv: &Kv) -> Result<AllocationBlock, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))
}

fn decode_handle(kv: &Kv) -> Result<IpamHandle, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))
}

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
struct PlannedBlock {
    /// The stored state (`None`: the plan creates the block).
    current: Option<Kv>,
    block: AllocationBlock,
    changed: bool,
}

impl PlannedBlock {
    /// Whether the commit deletes the block: it changed, is stored, is empty (Calico's
    /// `empty()`) and has no affinity, as Go's release does.
    fn deleted(&self) -> bool {
        self.changed
            && self.current.is_some()
            && block::is_empty(&self.block)
            && self.block.affinity.is_none()
    }
}

/// A handle as the plan changes it.
#[derive(Debug, Clone)]
struct PlannedHandle {
    key: String,
    current: Option<Kv>,
    value: IpamHandle,
    changed: bool,
}

impl PlannedHandle {
    fn new(id: &str, current: Option<Kv>) -> Result<Self, IpamError> {
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

    fn adjust(&mut self, cidr: &IpNet, delta: i64) {
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

    fn held_in(&self, cidr: &IpNet) -> i64 {
        self.value
            .block
            .get(&cidr.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The guard and write, if the handle changed.
    fn finish(&self, guards: &mut Vec<Guard>, writes: &mut Vec<Write>) -> Result<(), IpamError> {
        if !self.changed {
            return Ok(());
        }
        guards.push(Guard::for_current(&self.key, self.current.as_ref()));
        if self.value.block.is_empty() {
            if self.current.is_some() {
                writes.push(Write::Delete(self.key.clone()));
            }
        } else {
            writes.push(Write::Put(
                self.key.clone(),
                encode(&self.key, &self.value)?,
            ));
        }
        Ok(())
    }
}

/// The changes one transaction will make, built against one snapshot.
struct Plan<'a, 's> {
    ipam: &'a Ipam<'s>,
    snap: &'a Snapshot,
    blocks: BTreeMap<IpNet, Option<PlannedBlock>>,
    handles: BTreeMap<String, PlannedHandle>,
    /// Affinity key to its guard and write (claim, confirm or drop; another node's affinity
    /// dropped by a reclaim is guarded by its block instead).
    affinities: BTreeMap<String, (Option<Guard>, Write)>,
    /// Every block key per family (`true`: IPv4), read when first needed.
    block_keys: BTreeMap<bool, BTreeSet<IpNet>>,
    /// Every block per family, read when first needed (borrowing).
    all_blocks: BTreeMap<bool, Vec<Kv>>,
}

impl<'a, 's> Plan<'a, 's> {
    fn new(ipam: &'a Ipam<'s>, snap: &'a Snapshot) -> Self {
        Plan {
            ipam,
            snap,
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
            affinities: BTreeMap::new(),
            block_keys: BTreeMap::new(),
            all_blocks: BTreeMap::new(),
        }
    }

    /// Which blocks still have a free, unreserved address after the plan (for the node's
    /// block hint: the next call prefetches only blocks with room).
    fn room(&self) -> BTreeMap<IpNet, bool> {
        let reserved = |ip: IpAddr| self.snap.is_reserved(ip);
        self.blocks
            .iter()
            .filter_map(|(c, pb)| {
                pb.as_ref()
                    .map(|pb| (*c, block::free(&pb.block, &reserved) > 0))
            })
            .collect()
    }

    fn handle(&mut self, id: &str) -> Result<&mut PlannedHandle, IpamError> {
        if !self.handles.contains_key(id) {
            let current = match self.snap.handles.get(id) {
                Some(kv) => kv.clone(),
                None => self.ipam.store.get(&keys::handle(id))?,
            };
            self.handles
                .insert(id.to_string(), PlannedHandle::new(id, current)?);
        }
        self.handles
            .get_mut(id)
            .ok_or_else(|| IpamError::Other("handle vanished from the plan".into()))
    }

    /// A stored block as the plan starts from it: addresses whose 3.33 cooldown has passed
    /// are free (Go's `blockFromBackend`; written back only with the plan's own changes).
    fn planned(&self, kv: Kv) -> Result<PlannedBlock, IpamError> {
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
    fn load(&mut self, cidrs: &[IpNet]) -> Result<(), IpamError> {
        let mut missing = Vec::new();
        for c in cidrs {
            if self.blocks.contains_key(c) {
                continue;
            }
            match self.snap.blocks.get(c) {
                Some(kv) => {
                    let p = kv.clone().map(|kv| self.planned(kv)).transpose()?;
                    self.blocks.insert(*c, p);
                }
                None => missing.push(*c),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let reads: Vec<Read> = missing.iter().map(|c| Read::Key(keys::block(c))).collect();
        for (cidr, found) in missing.iter().zip(self.ipam.store.read(&reads)?) {
            let p = found
                .into_iter()
                .next()
                .map(|kv| self.planned(kv))
                .transpose()?;
            self.blocks.insert(*cidr, p);
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
    fn create_block(&mut self, cidr: IpNet, replacing: Option<Kv>) {
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
    fn all_blocks(&mut self, v4: bool) -> Result<Vec<Kv>, IpamError> {
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
                let pb = self.planned(kv.clone())?;
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

    fn block_keys(&mut self, v4: bool) -> Result<&BTreeSet<IpNet>, IpamError> {
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

    /// Plans up to `wanted` addresses of one family.
    fn family(
        &mut self,
        req: &AssignRequest,
        owner: &Owner,
        v4: bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let snap = self.snap;
        let node = self.ipam.node.clone();
        if !snap.node_registered {
            return Err(IpamError::NodeNotFound { node });
        }
        let wanted = if v4 { req.num_v4 } else { req.num_v6 };
        let requested = if v4 { &req.v4_pools } else { &req.v6_pools };
        let chosen = pools::choose(
            &snap.pools,
            requested,
            v4,
            &node,
            &snap.node_labels,
            &req.namespace_labels,
        )?;
        let in_pools = |cidr: &IpNet| chosen.iter().any(|p| p.cidr.contains(cidr));
        let mut got: Vec<IpNet> = Vec::new();

        // 1. Blocks affine to this node: those the snapshot prefetched (the node's blocks
        // with room, as last seen) first, then the others, in key order, read only if needed.
        let mut affine: Vec<(IpNet, Kv)> = snap
            .affinities
            .iter()
            .filter(|(cidr, _)| is_v4(cidr) == v4 && in_pools(cidr))
            .map(|(c, kv)| (*c, kv.clone()))
            .collect();
        affine.sort_by_key(|(c, _)| !snap.blocks.contains_key(c));
        let prefetched = affine
            .iter()
            .take_while(|(c, _)| snap.blocks.contains_key(c))
            .count();
        for (i, (cidr, aff_kv)) in affine.iter().enumerate() {
            if got.len() >= wanted {
                break;
            }
            if i == prefetched {
                let rest: Vec<IpNet> = affine[i..].iter().map(|(c, _)| *c).collect();
                self.load(&rest)?;
            } else {
                self.load(&[*cidr])?;
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
            got.extend(self.take(cidr, wanted - got.len(), owner)?);
        }

        // 2. Claim new blocks for this node, as Go's `findOrClaimBlock` does: at the block
        // limit (counting only the node's blocks in the pools allowed here), or with
        // auto-allocation off, the request fails now, without borrowing.
        let family = family_name(v4);
        let owned = snap
            .affinities
            .keys()
            .filter(|c| is_v4(c) == v4 && in_pools(c))
            .count();
        let limit = snap.settings.max_blocks_per_host;
        let mut claimed = 0;
        while got.len() < wanted {
            if owned + claimed >= limit {
                return Err(IpamError::BlockLimit { family, limit });
            }
            if !snap.settings.auto_allocate_blocks {
                return Err(IpamError::NoBlockToClaim { family });
            }
            let Some(cidr) = self.claim_usable_block(&chosen, v4)? else {
                break; // no free block: borrow, unless strict
            };
            claimed += 1;
            got.extend(self.take(&cidr, wanted - got.len(), owner)?);
        }

        // 3. Borrow from blocks affine to other nodes (or to none).
        if got.len() < wanted && !snap.settings.strict_affinity {
            let candidates: Vec<Kv> = self
                .all_blocks(v4)?
                .into_iter()
                .filter(|kv| keys::block_cidr_of(&kv.key).is_some_and(|c| in_pools(&c)))
                .collect();
            for kv in candidates {
                if got.len() >= wanted {
                    break;
                }
                let Some(cidr) = keys::block_cidr_of(&kv.key) else {
                    continue;
                };
                if !self.blocks.contains_key(&cidr) {
                    let pb = self.planned(kv)?;
                    self.blocks.insert(cidr, Some(pb));
                }
                let mine = matches!(self.blocks.get(&cidr), Some(Some(pb))
                    if block::affine_node(&pb.block) == Some(node.as_str()));
                if !mine {
                    got.extend(self.take(&cidr, wanted - got.len(), owner)?);
                }
            }
        }

        if got.len() >= wanted {
            return Ok(got);
        }
        Err(IpamError::Exhausted {
            family,
            pools: chosen.iter().map(|p| p.cidr.to_string()).collect(),
        })
    }

    fn fully_reserved(&self, cidr: &IpNet) -> bool {
        !self.snap.reservations.is_empty()
            && (0..block::capacity(cidr)).all(|o| self.snap.is_reserved(block::address(cidr, o)))
    }

    /// Plans one specific address for `owner`.
    fn specific(&mut self, ip: IpAddr, owner: &Owner) -> Result<IpNet, IpamError> {
        let snap = self.snap;
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

    /// Releases the selected allocations of a loaded block: at once, or, with a 3.33
    /// cooldown configured, into their cooldown (Go's `release` when `by_address`, else its
    /// `releaseByHandle`), freeing meanwhile whatever has cooled down.
    fn release_in(
        &mut self,
        cidr: &IpNet,
        select: impl Fn(usize, Option<&AllocationAttribute>) -> bool,
        by_address: bool,
    ) -> Vec<(IpAddr, Option<String>)> {
        let cooldown = self.snap.settings.ip_cooldown_seconds;
        let now = (self.ipam.now)();
        let Some(Some(pb)) = self.blocks.get_mut(cidr) else {
            return Vec::new();
        };
        let freed = if cooldown > 0 {
            let freed = block::release_into_cooldown(&mut pb.block, select, now, by_address);
            block::collect_cooled(&mut pb.block, cooldown, now);
            freed
        } else {
            block::release_where(&mut pb.block, select)
        };
        pb.changed |= !freed.is_empty();
        freed
    }

    /// Plans the release of what `handle_id` holds (only allocations whose `node` attribute
    /// is `only_node`, when given).
    fn release_handle(
        &mut self,
        handle_id: &str,
        only_node: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let cidrs: Vec<IpNet> = self
            .handle(handle_id)?
            .value
            .block
            .keys()
            .filter_map(|c| c.parse().ok())
            .collect();
        self.load(&cidrs)?;
        let mut freed_all = Vec::new();
        for cidr in cidrs {
            let held = self.handle(handle_id)?.held_in(&cidr);
            let freed: Vec<IpAddr> = self
                .release_in(
                    &cidr,
                    |_, a| {
                        a.is_some_and(|a| {
                            a.handle() == Some(handle_id)
                                && only_node.is_none_or(|n| a.owner("node") == Some(n))
                        })
                    },
                    false,
                )
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            // Without a node filter the handle holds nothing in this block any more.
            let delta = if only_node.is_some() {
                -(freed.len() as i64)
            } else {
                -held
            };
            self.handle(handle_id)?.adjust(&cidr, delta);
            freed_all.extend(freed);
        }
        Ok(freed_all)
    }

    /// Plans the release of specific addresses (those `select` admits): Go's `ReleaseIPs`
    /// and `releaseIPsFromBlock`. An address in no block, free, or in its cooldown is
    /// skipped.
    fn release_ips(
        &mut self,
        ips: &[IpAddr],
        select: Selection<'_>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let mut by_block: BTreeMap<IpNet, BTreeSet<usize>> = BTreeMap::new();
        for ip in ips {
            let cidr = match self
                .snap
                .pools
                .iter()
                .find(|p| p.cidr.contains(ip))
                .and_then(|p| p.block_of(*ip))
            {
                Some(c) => Some(c),
                None => self
                    .block_keys(ip.is_ipv4())?
                    .iter()
                    .find(|c| c.contains(ip))
                    .copied(),
            };
            if let Some(c) = cidr
                && let Some(ord) = block::ordinal(&c, *ip)
            {
                by_block.entry(c).or_default().insert(ord);
            }
        }
        let cidrs: Vec<IpNet> = by_block.keys().copied().collect();
        self.load(&cidrs)?;
        let mut released = Vec::new();
        for (cidr, ords) in by_block {
            let freed = self.release_in(
                &cidr,
                |ord, a| ords.contains(&ord) && select.admits(a),
                true,
            );
            for (ip, h) in freed {
                if let Some(h) = h {
                    let planned = self.handle(&h)?;
                    if planned.current.is_some() {
                        planned.adjust(&cidr, -1);
                    }
                }
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Plans Go's `releaseBlockAffinity` (without `RequireEmpty`) of this node's affinity to
    /// `cidr` as the snapshot read it: the affinity is deleted; the block, if this node's (or
    /// nobody's), loses its affinity, which makes the commit delete it if it is empty.
    fn release_affinity(&mut self, cidr: &IpNet) -> Result<AffinityReleased, IpamError> {
        let Some(aff) = self.snap.affinities.get(cidr) else {
            return Ok(AffinityReleased::Gone);
        };
        self.affinities.insert(
            aff.key.clone(),
            (
                Some(Guard::Revision(aff.key.clone(), aff.mod_revision)),
                Write::Delete(aff.key.clone()),
            ),
        );
        self.load(&[*cidr])?;
        let ours = block::host_affinity(&self.ipam.node);
        let Some(Some(pb)) = self.blocks.get_mut(cidr) else {
            return Ok(AffinityReleased::AffinityOnly);
        };
        if pb.block.affinity.as_ref().is_some_and(|a| *a != ours) {
            return Ok(AffinityReleased::AffinityOnly);
        }
        pb.block.affinity = None;
        pb.block.affinity_claim_time = None;
        pb.changed = true;
        Ok(if pb.deleted() {
            AffinityReleased::BlockDeleted
        } else {
            AffinityReleased::BlockKept
        })
    }

    /// The addresses `handle_id` holds, with their blocks (loaded): Go's `IPsByHandle`.
    /// Nothing if the handle does not exist.
    fn held_by(&mut self, handle_id: &str) -> Result<Vec<(IpNet, IpAddr)>, IpamError> {
        let cidrs: Vec<IpNet> = self
            .handle(handle_id)?
            .value
            .block
            .keys()
            .filter_map(|c| c.parse().ok())
            .collect();
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

    /// Sets one owner of the allocation at `ip` (in `cidr`, which is loaded) to `attrs`, or
    /// clears it.
    fn set_owner(
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
    fn attribute(&self, cidr: &IpNet, ip: IpAddr) -> Option<&AllocationAttribute> {
        match self.blocks.get(cidr) {
            Some(Some(pb)) => block::attribute_of(&pb.block, ip),
            _ => None,
        }
    }

    /// The handles of allocations a block loses without their release (it is deleted, or
    /// made anew by a reclaim: only Windows-reserved ones can be left) give up their count
    /// for it, so no handle keeps a block that is gone. Missing handles stay missing.
    fn drop_handles(
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
    fn is_empty(&self) -> bool {
        !self.blocks.values().flatten().any(|b| b.changed)
            && !self.handles.values().any(|h| h.changed)
            && self.affinities.is_empty()
    }

    /// Commits the plan and `extra` in one transaction; false on a conflict.
    fn commit(mut self, extra: Extra) -> Result<bool, IpamError> {
        let deleted: Vec<(IpNet, BTreeMap<String, i64>)> = self
            .blocks
            .iter()
            .filter_map(|(cidr, pb)| {
                let pb = pb.as_ref().filter(|pb| pb.deleted())?;
                Some((*cidr, block::handle_counts(&pb.block)))
            })
            .collect();
        for (cidr, leftovers) in deleted {
            self.drop_handles(&cidr, leftovers)?;
        }
        let mut guards = Vec::new();
        let mut writes = Vec::new();
        for (cidr, pb) in self.blocks {
            let Some(mut pb) = pb.filter(|b| b.changed) else {
                continue;
            };
            let key = keys::block(&cidr);
            guards.push(Guard::for_current(&key, pb.current.as_ref()));
            if pb.deleted() {
                writes.push(Write::Delete(key));
            } else {
                pb.block.sequence_number += 1;
                writes.push(Write::Put(key.clone(), encode(&key, &pb.block)?));
            }
        }
        for h in self.handles.values() {
            h.finish(&mut guards, &mut writes)?;
        }
        for (guard, write) in self.affinities.into_values() {
            guards.extend(guard);
            writes.push(write);
        }
        guards.extend(extra.guards);
        writes.extend(extra.writes);
        if writes.is_empty() {
            return Ok(true);
        }
        Ok(self.ipam.store.txn(&guards, &writes)?.applied())
    }
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

    pub fn store(&self) -> &'s dyn KvStore {
        self.store
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
        self.read_snapshot(&SnapshotRequest {
            handles,
            ..SnapshotRequest::default()
        })
    }

    /// One round trip for everything: IPAM's objects, the blocks the caller expects to use
    /// (a stale guess costs only the extra keys; the affinities read in the same snapshot
    /// decide), and the caller's own keys.
    pub fn read_snapshot(&self, req: &SnapshotRequest<'_>) -> Result<Snapshot, IpamError> {
        let mut reads = vec![
            Read::Key(keys::IPAM_CONFIG.into()),
            Read::Prefix(keys::resources_prefix("ippools")),
            Read::Key(keys::resource("nodes", &self.node)),
            Read::Key(keys::resource("ipamconfigurations", "default")),
            Read::Prefix(keys::resources_prefix("ipreservations")),
            Read::Prefix(format!("/calico/ipam/v2/host/{}/", self.node)),
        ];
        reads.extend(req.handles.iter().map(|h| Read::Key(keys::handle(h))));
        reads.extend(req.blocks.iter().map(|b| Read::Key(keys::block(b))));
        reads.extend(req.keys.iter().map(|k| Read::Key(k.clone())));
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
        let node = next().pop();
        let node_registered = node.is_some();
        // Only the labels matter here: the spec stays raw, so a field the typed Node model
        // cannot read does not hide the node's labels.
        let node_labels = node
            .and_then(|kv| Resource::<serde_json::Value>::from_kv(&kv).ok())
            .map(|n| n.metadata.labels)
            .unwrap_or_default();
        // Unreadable counts as absent, as Go's Get error does: persistence stays on.
        let vm_address_persistence = next()
            .pop()
            .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
            .and_then(|v| {
                v.pointer("/spec/kubeVirtVMAddressPersistence")
                    .and_then(serde_json::Value::as_str)
                    .map(|p| p != "Disabled")
            })
            .unwrap_or(true);
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
        let handles = req
            .handles
            .iter()
            .map(|h| (h.to_string(), next().pop()))
            .collect();
        let blocks = req.blocks.iter().map(|b| (*b, next().pop())).collect();
        let extra = req.keys.iter().map(|k| (k.clone(), next().pop())).collect();
        Ok(Snapshot {
            settings: IpamSettings::from_stored(config.as_ref()),
            pools,
            node_registered,
            node_labels,
            vm_address_persistence,
            reservations,
            affinities,
            handles,
            blocks,
            extra,
        })
    }

    /// Re-reads what a plan against `snap` used, after a conflict.
    fn refresh(&self, snap: &Snapshot) -> Result<Snapshot, IpamError> {
        let handles: Vec<&str> = snap.handles.keys().map(String::as_str).collect();
        let blocks: Vec<IpNet> = snap.blocks.keys().copied().collect();
        let keys: Vec<String> = snap.extra.keys().cloned().collect();
        self.read_snapshot(&SnapshotRequest {
            handles: &handles,
            blocks: &blocks,
            keys: &keys,
        })
    }

    /// Runs `plan` against `snap` and commits it with the caller's `extra` writes, re-reading
    /// and re-planning after each conflict. `plan` and `extra` see the current snapshot.
    fn plan_and_commit<T>(
        &self,
        snap: &Snapshot,
        mut plan: impl FnMut(&mut Plan<'_, 's>) -> Result<T, IpamError>,
        extra: &mut ExtraFn<'_, T>,
    ) -> Result<T, IpamError> {
        let mut current = snap.clone();
        for _ in 0..MAX_RETRIES {
            self.check_deadline()?;
            let mut p = Plan::new(self, &current);
            let out = plan(&mut p)?;
            let ex = extra(&out, &current)?;
            if p.is_empty() && ex.is_empty() {
                return Ok(out);
            }
            if p.commit(ex)? {
                return Ok(out);
            }
            current = self.refresh(&current)?;
        }
        Err(IpamError::TooManyRetries {
            key: "ipam transaction".into(),
        })
    }

    /// Allocates per `req`.
    pub fn auto_assign(&self, req: &AssignRequest) -> Result<Assigned, IpamError> {
        let snap = self.snapshot(&[&req.handle])?;
        self.auto_assign_with(&snap, req, &mut |_, _| Ok(Extra::default()))
    }

    /// Allocates per `req` (IPv4, then IPv6) against `snap`, committing `extra(assigned,
    /// snapshot)` in the same transaction. Nothing is written if either family fails.
    pub fn auto_assign_with(
        &self,
        snap: &Snapshot,
        req: &AssignRequest,
        extra: &mut ExtraFn<'_, Assigned>,
    ) -> Result<Assigned, IpamError> {
        let owner = Owner {
            handle: req.handle.clone(),
            attrs: req.attrs.clone(),
        };
        self.plan_and_commit(
            snap,
            |plan| {
                let mut out = Assigned::default();
                if req.num_v4 > 0 {
                    out.v4 = plan.family(req, &owner, true)?;
                }
                if req.num_v6 > 0 {
                    out.v6 = plan.family(req, &owner, false)?;
                }
                out.room = plan.room();
                Ok(out)
            },
            extra,
        )
    }

    /// Assigns one specific address; returns it with the block's mask.
    pub fn assign_ip(
        &self,
        ip: IpAddr,
        handle_id: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<IpNet, IpamError> {
        let snap = self.snapshot(&[handle_id])?;
        let got = self.assign_ips_with(&snap, &[ip], handle_id, attrs, &mut |_, _| {
            Ok(Extra::default())
        })?;
        got.into_iter().next().ok_or(IpamError::NotAssigned { ip })
    }

    /// Assigns specific addresses (`IP=`, fixed addresses) all or none, with `extra` in the
    /// same transaction.
    pub fn assign_ips_with(
        &self,
        snap: &Snapshot,
        ips: &[IpAddr],
        handle_id: &str,
        attrs: &BTreeMap<String, String>,
        extra: &mut ExtraFn<'_, Vec<IpNet>>,
    ) -> Result<Vec<IpNet>, IpamError> {
        let owner = Owner {
            handle: handle_id.to_string(),
            attrs: attrs.clone(),
        };
        self.plan_and_commit(
            snap,
            |plan| ips.iter().map(|ip| plan.specific(*ip, &owner)).collect(),
            extra,
        )
    }

    /// Releases everything `handle` holds. `Ok(None)` if the handle does not exist.
    pub fn release_by_handle(&self, handle_id: &str) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let snap = self.snapshot(&[handle_id])?;
        if snap.handles.get(handle_id).is_none_or(Option::is_none) {
            return Ok(None);
        }
        self.release_handles_with(&snap, None, &mut |_, _| Ok(Extra::default()))
            .map(Some)
    }

    /// Releases what the snapshot's handles hold (those that exist; only allocations whose
    /// `node` attribute is `only_node`, when given), with `extra` in the same transaction.
    /// Blocks already in the snapshot are not read again.
    pub fn release_handles_with(
        &self,
        snap: &Snapshot,
        only_node: Option<&str>,
        extra: &mut ExtraFn<'_, Vec<IpAddr>>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        self.plan_and_commit(
            snap,
            |plan| {
                let mut freed = Vec::new();
                let existing: Vec<String> = plan
                    .snap
                    .handles
                    .iter()
                    .filter(|(_, kv)| kv.is_some())
                    .map(|(h, _)| h.clone())
                    .collect();
                for h in existing {
                    freed.extend(plan.release_handle(&h, only_node)?);
                }
                Ok(freed)
            },
            extra,
        )
    }

    /// Releases specific addresses (only those owned by `handle_id`, when given); returns
    /// the ones released. Their handles are decremented in the same transaction.
    pub fn release_ips(
        &self,
        ips: &[IpAddr],
        handle_id: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let snap = self.snapshot(&[])?;
        let select = handle_id.map_or(Selection::Any, Selection::Handle);
        self.release_ips_with(&snap, select, &mut |_| {
            Ok(Some(ReleaseStep {
                ips: ips.to_vec(),
                extra: Extra::default(),
            }))
        })
    }

    /// Releases by address, as Go's `ReleaseIPs`, the allocations `select` admits at the
    /// addresses `step` gives, in one transaction with the caller's writes from the same
    /// step: into their cooldown when `ipCooldownSeconds` is set, their handles decremented,
    /// a block left empty and without affinity deleted. A conflict on any guarded key, the
    /// caller's included, re-reads and calls `step` again. Returns the addresses released.
    pub fn release_ips_with(
        &self,
        snap: &Snapshot,
        select: Selection<'_>,
        step: &mut ReleaseStepFn<'_>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let (released, _) = self.plan_and_commit(
            snap,
            |plan| match step(plan.snap)? {
                None => Ok((Vec::new(), Extra::default())),
                Some(ReleaseStep { ips, extra }) => Ok((plan.release_ips(&ips, select)?, extra)),
            },
            &mut |(_, extra): &(Vec<IpAddr>, Extra), _| Ok(extra.clone()),
        )?;
        Ok(released)
    }

    /// Go's `releaseBlockAffinity` (without `RequireEmpty`) of this node's affinity to block
    /// `cidr`, in one transaction: the affinity goes; the block, unless another node's, goes
    /// with it if empty (its leftover Windows-reserved handles decremented), else stays
    /// without affinity.
    pub fn release_block_affinity(&self, cidr: &IpNet) -> Result<AffinityReleased, IpamError> {
        let snap = self.read_snapshot(&SnapshotRequest {
            blocks: &[*cidr],
            ..SnapshotRequest::default()
        })?;
        self.plan_and_commit(&snap, |plan| plan.release_affinity(cidr), &mut |_, _| {
            Ok(Extra::default())
        })
    }

    /// ADD of a KubeVirt virt-launcher pod whose VM keeps its addresses (`req.handle` is the
    /// VM's handle, `req.attrs` carry the VMI attributes), as Calico's
    /// `handleVirtLauncherPod` then its assignment: if the handle holds addresses already, they
    /// are the pod's, and its attributes become their active owner (`secondary`), or, for a
    /// live-migration target, their alternate owner (`alternateOwnerAttrs`); otherwise a
    /// migration target fails, and any other pod is assigned `specific` addresses, or
    /// addresses per `req`. One transaction, with `extra`; a concurrent ADD for the same VM
    /// makes it plan again and then find the other's addresses (Go's per-handle limit of
    /// one address per family does that job).
    pub fn assign_vm_with(
        &self,
        snap: &Snapshot,
        req: &AssignRequest,
        specific: &[IpAddr],
        migration_target: bool,
        extra: &mut ExtraFn<'_, VmAssigned>,
    ) -> Result<VmAssigned, IpamError> {
        let owner = Owner {
            handle: req.handle.clone(),
            attrs: req.attrs.clone(),
        };
        let role = if migration_target {
            OwnerRole::Alternate
        } else {
            OwnerRole::Active
        };
        self.plan_and_commit(
            snap,
            |plan| {
                let held = plan.held_by(&req.handle)?;
                if !held.is_empty() {
                    let mut addresses = Vec::new();
                    for (cidr, ip) in held {
                        plan.set_owner(&cidr, ip, &req.handle, role, Some(req.attrs.clone()));
                        addresses.push(block::with_block_mask(&cidr, ip));
                    }
                    // IPv4 first, as an assignment lists them.
                    addresses.sort_by_key(|a| !a.addr().is_ipv4());
                    return Ok(VmAssigned {
                        addresses,
                        reused: true,
                    });
                }
                if migration_target {
                    return Err(IpamError::NoVmAddress {
                        handle: req.handle.clone(),
                    });
                }
                let mut addresses = Vec::new();
                if !specific.is_empty() {
                    for ip in specific {
                        addresses.push(plan.specific(*ip, &owner)?);
                    }
                } else {
                    if req.num_v4 > 0 {
                        addresses.extend(plan.family(req, &owner, true)?);
                    }
                    if req.num_v6 > 0 {
                        addresses.extend(plan.family(req, &owner, false)?);
                    }
                }
                Ok(VmAssigned {
                    addresses,
                    reused: false,
                })
            },
            extra,
        )
    }

    /// DEL of a KubeVirt virt-launcher pod whose VM keeps its addresses, as the VM branch of
    /// Calico's `cmdDel`: the pod (`namespace`/`pod`) is removed as the active or alternate
    /// owner of every address the VM's handle holds, and only if `vm_gone` (the VM, or a
    /// standalone VMI, is being deleted) and no owner is left are the addresses released.
    /// One transaction, with `extra`. A missing handle is nothing to do (Go fails there).
    pub fn release_vm_with(
        &self,
        snap: &Snapshot,
        handle_id: &str,
        pod: (&str, &str),
        vm_gone: bool,
        extra: &mut ExtraFn<'_, Vec<IpAddr>>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        // Go's `AttributeOwner.Matches`: the pod and namespace attributes name this pod.
        let is_this_pod = |attrs: Option<&BTreeMap<String, String>>| {
            attrs.is_some_and(|a| {
                a.get("namespace").map(String::as_str) == Some(pod.0)
                    && a.get("pod").map(String::as_str) == Some(pod.1)
            })
        };
        self.plan_and_commit(
            snap,
            |plan| {
                let held = plan.held_by(handle_id)?;
                for (cidr, ip) in &held {
                    let Some(attr) = plan.attribute(cidr, *ip) else {
                        continue;
                    };
                    let role = if is_this_pod(attr.secondary.as_ref()) {
                        OwnerRole::Active
                    } else if is_this_pod(attr.alternate_owner_attrs.as_ref()) {
                        OwnerRole::Alternate
                    } else {
                        continue;
                    };
                    plan.set_owner(cidr, *ip, handle_id, role, None);
                }
                let owned = held.iter().any(|(cidr, ip)| {
                    plan.attribute(cidr, *ip).is_some_and(|a| {
                        a.secondary.as_ref().is_some_and(|m| !m.is_empty())
                            || a.alternate_owner_attrs
                                .as_ref()
                                .is_some_and(|m| !m.is_empty())
                    })
                });
                if vm_gone && !owned {
                    return plan.release_handle(handle_id, None);
                }
                Ok(Vec::new())
            },
            extra,
        )
    }

    /// The addresses `handle_id` holds, per its blocks.
    pub fn addresses_of_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(kv) = self.store.get(&keys::handle(handle_id))? else {
            return Ok(Vec::new());
        };
        let h = decode_handle(&kv)?;
        let reads: Vec<Read> = h
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
