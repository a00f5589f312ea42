//! GC: what is dead and not in the runtime's list of valid attachments goes, with its
//! endpoint records.

use super::records::snapshot_key;
use super::{Deps, dataplane_error, delegated_ipam};
use crate::workload::Context;
use calico_datastore::model::{WorkloadEndpoint, keys};
use calico_datastore::{Guard, Kv, KvStore, Write};
use calico_ipam::IpamError;
use calico_ipam::allocator::Extra;
use calico_ipam::cni::store_error;
use cni_protocol::{CniError, Command, Request};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// GC: this network's allocations on this node whose container is not in
/// `cni.dev/valid-attachments` and which the kernel shows dead, each released in one
/// transaction with the endpoint records that carry its addresses (see [`calico_ipam::gc`]).
///
/// What is alive is kept whatever the list says: an endpoint whose host interface still
/// exists (its pod's namespace exists), an allocation whose address is still in use on the
/// host (routed to a pod, or on an interface in some namespace). Interfaces are
/// never deleted: a veth goes with its namespace. An endpoint is this network's only through
/// its allocation (the handle `<network>.<container>` holds its addresses), so with a
/// delegated IPAM plugin only that plugin's GC runs.
pub fn gc(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    if !ctx.ipam_in_process() {
        return delegated_ipam(req, ctx, Command::Gc);
    }
    // The endpoints and interfaces are read once the candidates have been listed (the first
    // judgement asks for them): an ADD that commits after the listing is no candidate, and
    // one that committed before has its endpoint (committed with the allocation, once its
    // veth existed) in this view. So an allocation without a live endpoint or an address
    // in use is not an ADD in flight, and needs no grace period.
    let view = std::cell::OnceCell::new();
    let view = || -> Result<&GcView, String> {
        if let Some(v) = view.get() {
            return Ok(v);
        }
        let v = GcView::read(ctx, deps).map_err(|e| e.to_string())?;
        Ok(view.get_or_init(|| v))
    };
    let ask = || deps.dataplane.addresses_in_use().map_err(|e| e.to_string());
    let in_use = calico_ipam::gc::InUse::new(&ask);
    let alive = |c: &calico_ipam::gc::Candidate| -> Result<bool, String> {
        let v = view()?;
        if v.endpoints_of(c)
            .any(|(_, w)| v.host_interfaces.contains(&w.spec.interface_name))
        {
            return Ok(true);
        }
        in_use.any(&c.addresses)
    };
    let liveness = calico_ipam::gc::Liveness {
        alive: &alive,
        grace: std::time::Duration::ZERO,
        now: SystemTime::now(),
    };
    let keys_of = |c: &calico_ipam::gc::Candidate| match view() {
        Ok(v) => v.endpoints_of(c).map(|(kv, _)| kv.key.clone()).collect(),
        Err(_) => Vec::new(),
    };
    calico_ipam::cni::gc_with(
        deps.store,
        &ctx.conf,
        req,
        &ctx.node,
        &liveness,
        &keys_of,
        &mut |c, _, snap| {
            let mut extra = Extra::default();
            let v = view().map_err(IpamError::Other)?;
            for (listed, w) in v.endpoints_of(c) {
                // Only the record as it was judged: one rewritten since (a new sandbox of
                // the same pod took the key over) is not this container's any more.
                match snapshot_key(snap, &listed.key) {
                    Some(now) if now.mod_revision == listed.mod_revision => {
                        extra
                            .guards
                            .push(Guard::Revision(now.key.clone(), now.mod_revision));
                        extra.writes.push(Write::Delete(now.key.clone()));
                        log::info!("GC removes endpoint {}", w.metadata.name);
                    }
                    _ => log::info!("GC keeps endpoint {}: changed since", w.metadata.name),
                }
            }
            Ok(extra)
        },
    )
}

/// What GC reads of this node: its endpoint records and its host interfaces.
struct GcView {
    endpoints: Vec<(Kv, WorkloadEndpoint)>,
    host_interfaces: BTreeSet<String>,
}

impl GcView {
    fn read(ctx: &Context, deps: &Deps<'_>) -> Result<GcView, CniError> {
        let prefix = crate::workload::interface_prefix(|k| std::env::var(k).ok());
        Ok(GcView {
            endpoints: node_endpoints(deps.store, &ctx.node)?,
            host_interfaces: deps
                .dataplane
                .host_interfaces(&prefix)
                .map_err(dataplane_error)?
                .into_iter()
                .collect(),
        })
    }

    /// The endpoints that carry a candidate's addresses (all of theirs among the handle's).
    fn endpoints_of<'v>(
        &'v self,
        c: &'v calico_ipam::gc::Candidate,
    ) -> impl Iterator<Item = &'v (Kv, WorkloadEndpoint)> + 'v {
        self.endpoints.iter().filter(|(_, w)| {
            let ips = w.addresses();
            w.spec.container_id == c.container_id
                && !ips.is_empty()
                && ips.iter().all(|ip| c.addresses.contains(ip))
        })
    }
}

/// This node's endpoint records.
fn node_endpoints(
    store: &dyn KvStore,
    node: &str,
) -> Result<Vec<(Kv, WorkloadEndpoint)>, CniError> {
    Ok(store
        .list(&keys::resources_prefix("workloadendpoints"))
        .map_err(store_error)?
        .into_iter()
        .filter_map(|kv| {
            let w = WorkloadEndpoint::from_kv(&kv).ok()?;
            (w.spec.node == node).then_some((kv, w))
        })
        .collect())
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
