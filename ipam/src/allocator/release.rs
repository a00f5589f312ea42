//! Planning releases: by handle, by address, a block affinity; at once or, with Calico
//! 3.33's `ipCooldownSeconds`, into a cooldown.

use super::plan::{Plan, PlannedHandle};
use super::{AffinityReleased, Selection};
use crate::block;
use crate::error::IpamError;
use calico_datastore::Guard;
use calico_datastore::Write;
use calico_datastore::model::AllocationAttribute;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

impl Plan<'_, '_> {
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
    ///
    /// A handle that cannot be decoded does not stop the release (a pod must always be
    /// deletable): its allocations are looked for in this node's affine blocks, and the
    /// handle is deleted; the log says so.
    pub(super) fn release_handle(
        &mut self,
        handle_id: &str,
        only_node: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let cidrs = match self.handle(handle_id) {
            Ok(h) => h.blocks(),
            Err(IpamError::Corrupt { key, reason }) => {
                log::warn!(
                    "handle {key} is unreadable ({reason}): releasing its allocations found in \
                     node {}'s blocks, and deleting it",
                    self.ipam.node
                );
                let current = self.stored_handle(handle_id)?;
                self.handles.insert(
                    handle_id.to_string(),
                    PlannedHandle::unreadable(handle_id, current),
                );
                self.snap.affinities.keys().copied().collect()
            }
            Err(e) => return Err(e),
        };
        self.load(&cidrs)?;
        let mut freed_all = Vec::new();
        for cidr in cidrs {
            // A corrupt block is skipped: it may still point at the handle, so the handle
            // keeps its count for it (and is not deleted) until the block is repaired.
            if self.is_corrupt(&cidr) {
                log::warn!(
                    "handle {handle_id}: its allocations in block {cidr} are not released \
                     (the block is corrupt); the handle keeps them"
                );
                continue;
            }
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
    pub(super) fn release_ips(
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
    pub(super) fn release_affinity(&mut self, cidr: &IpNet) -> Result<AffinityReleased, IpamError> {
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
}
