//! Taking an attachment's datastore state back: its allocation and its endpoint record (if
//! still this container's). DEL does it, and so does an ADD rolling back its commit.

use super::records::{endpoint_delete, snapshot_key};
use super::{Deps, delegated_ipam};
use crate::workload::Context;
use calico_datastore::KvStore;
use calico_ipam::cni::store_error;
use cni_protocol::{CniError, Command, Request};

/// Releases the allocation under this attachment's handle (Calico IPAM, in-process) and,
/// in the same transaction, the endpoint record if it is still this container's. Nothing to
/// release is success.
pub(super) fn release_in_process(
    req: &Request,
    ctx: &Context,
    deps: &Deps<'_>,
) -> Result<(), CniError> {
    calico_ipam::cni::release(
        deps.store,
        &ctx.conf,
        req,
        &ctx.node,
        std::slice::from_ref(&ctx.wep_key),
        &mut |_, snap| {
            Ok(endpoint_delete(
                ctx,
                snapshot_key(snap, &ctx.wep_key).as_ref(),
            ))
        },
    )
    .map(|_| ())
}

/// Rolls back a delegated IPAM plugin's ADD (`used_ipam`: it was run), logging a failure.
pub(super) fn undo_delegated_ipam(req: &Request, ctx: &Context, used_ipam: bool) {
    if !used_ipam || ctx.ipam_in_process() {
        return;
    }
    if let Err(e) = delegated_ipam(req, ctx, Command::Del) {
        log::error!("rolling back: IPAM DEL failed: {e}");
    }
}

/// Takes back a committed ADD: the allocation and the endpoint record (if still ours).
pub(super) fn undo_datastore(req: &Request, ctx: &Context, deps: &Deps<'_>, used_ipam: bool) {
    let undo = if ctx.ipam_in_process() && used_ipam {
        release_in_process(req, ctx, deps)
    } else {
        undo_delegated_ipam(req, ctx, used_ipam);
        delete_endpoint(deps.store, ctx)
    };
    if let Err(e) = undo {
        log::error!(
            "rolling back: cannot release the allocation of {}: {e}",
            ctx.handle
        );
    }
}

/// Deletes the endpoint record if ours (outside an IPAM transaction).
pub(super) fn delete_endpoint(store: &dyn KvStore, ctx: &Context) -> Result<(), CniError> {
    let current = store.get(&ctx.wep_key).map_err(store_error)?;
    let extra = endpoint_delete(ctx, current.as_ref());
    if extra.is_empty() {
        return Ok(());
    }
    // A concurrent change means someone else owns it now: leave it.
    store
        .txn(&extra.guards, &extra.writes)
        .map(|_| ())
        .map_err(store_error)
}
