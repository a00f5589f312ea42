//! Committing: a plan and the caller's writes as one guarded transaction, planned again
//! from fresh reads after each conflict (up to [`MAX_RETRIES`]).

use super::plan::{Plan, PlannedHandle};
use super::{Extra, ExtraFn, Ipam, MAX_RETRIES, Snapshot, encode};
use crate::block;
use crate::error::IpamError;
use calico_datastore::model::keys;
use calico_datastore::{Guard, Write};
use ipnet::IpNet;
use std::collections::BTreeMap;

impl PlannedHandle {
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

impl Plan<'_, '_> {
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

impl<'s> Ipam<'s> {
    /// Runs `plan` against `snap` and commits it with the caller's `extra` writes, re-reading
    /// and re-planning after each conflict. `plan` and `extra` see the current snapshot.
    pub(super) fn plan_and_commit<T>(
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
}
