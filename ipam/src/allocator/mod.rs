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
//!
//! What is read is not trusted: a stored pool IPAM cannot use is skipped ([`Snapshot`]'s
//! `unusable_pools`), a corrupt block is skipped (see `plan`), and a release goes on past an
//! unreadable handle or IPAM config, so a pod can always be deleted. An auto-assignment gets
//! back what its handle already holds (a repeated ADD).
//!
//! - `snapshot`: the one read an operation starts from ([`Snapshot`]);
//! - `plan`: the changes, phase by phase, against a snapshot; `release`: releases planned;
//! - `commit`: the plan as one guarded transaction, re-planned after a conflict;
//! - here: the operations ([`Ipam`]) and what they take and give.

mod commit;
mod plan;
mod release;
mod snapshot;

pub use snapshot::{IpamSettings, Snapshot, SnapshotRequest};

use crate::block::{self, Owner, OwnerRole};
use crate::error::IpamError;
use calico_datastore::model::{AllocationAttribute, AllocationBlock, IpamHandle, keys};
use calico_datastore::{Guard, Kv, KvStore, Read, Write};
use ipnet::IpNet;
use std::collections::BTreeMap;
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
    /// What the addresses are for (Go's `IntendedUse`): pools must allow it.
    pub intended_use: crate::pools::PoolUse,
    /// When a repeated ADD may get back what the handle already holds: only allocations
    /// whose attribute `.0` is `.1` (the CNI plugins use [`ATTACHMENT_ATTRIBUTE`] and
    /// `CNI_IFNAME`: Calico's handle is the network and container ID only, so another
    /// interface of the same container must not get this one's address). `None`: never,
    /// Calico's behaviour (another address under the same handle).
    pub reuse_if: Option<(String, String)>,
}

/// The allocation attribute naming the attachment's interface (`CNI_IFNAME`): with the
/// handle (network and container ID) it identifies the attachment a repeated ADD is for.
/// Calico's own plugin writes no such attribute, so its allocations are never taken for a
/// repeat (it assigns another address instead, as Calico does).
pub const ATTACHMENT_ATTRIBUTE: &str = "ifname";

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

fn encode<T: serde::Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::corrupt(key, e))
}

/// Decodes a stored block and checks it ([`AllocationBlock::validate`]): a block that fails
/// is corrupt; the planner skips it (nothing is allocated from it or written over it).
fn decode_block(kv: &Kv) -> Result<AllocationBlock, IpamError> {
    let block: AllocationBlock =
        serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))?;
    block
        .validate(keys::block_cidr_of(&kv.key).as_ref())
        .map_err(|why| IpamError::corrupt(&kv.key, format!("invalid block: {why}")))?;
    Ok(block)
}

fn decode_handle(kv: &Kv) -> Result<IpamHandle, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::corrupt(&kv.key, e))
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

    /// Allocates per `req`.
    pub fn auto_assign(&self, req: &AssignRequest) -> Result<Assigned, IpamError> {
        let snap = self.snapshot(&[&req.handle])?;
        self.auto_assign_with(&snap, req, &mut |_, _| Ok(Extra::default()))
    }

    /// Allocates per `req` (IPv4, then IPv6) against `snap`, committing `extra(assigned,
    /// snapshot)` in the same transaction. Nothing is written if either family fails.
    ///
    /// Addresses the handle already holds for the same attachment (`req.reuse_if`) in the
    /// pools the request may use count first, per family: a repeated ADD of the same
    /// attachment gets its addresses back rather than more of them (the CNI spec's
    /// idempotence; Calico 3.32 assigns another address under the same handle, see README
    /// "Differences from Calico"). Only the shortfall is newly assigned.
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
                let held: Vec<(IpNet, IpAddr)> = match &req.reuse_if {
                    None => Vec::new(),
                    Some((key, value)) => plan
                        .held_here(&req.handle)?
                        .into_iter()
                        .filter(|(cidr, ip)| {
                            plan.attribute(cidr, *ip)
                                .and_then(|a| a.owner(key))
                                .is_some_and(|v| v == value)
                                && plan.usable_for(req, *ip)
                        })
                        .collect(),
                };
                let mut out = Assigned::default();
                for (v4, wanted) in [(true, req.num_v4), (false, req.num_v6)] {
                    if wanted == 0 {
                        continue;
                    }
                    let mut got: Vec<IpNet> = held
                        .iter()
                        .filter(|(_, ip)| ip.is_ipv4() == v4)
                        .map(|(cidr, ip)| block::with_block_mask(cidr, *ip))
                        .take(wanted)
                        .collect();
                    if !got.is_empty() {
                        log::info!(
                            "handle {} already holds {got:?}: returned again",
                            req.handle
                        );
                    }
                    if got.len() < wanted {
                        let mut rest = req.clone();
                        let short = wanted - got.len();
                        (rest.num_v4, rest.num_v6) = if v4 { (short, 0) } else { (0, short) };
                        got.extend(plan.family(&rest, &owner, v4)?);
                    }
                    if v4 {
                        out.v4 = got;
                    } else {
                        out.v6 = got;
                    }
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
