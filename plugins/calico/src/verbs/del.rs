//! DEL: the interface, the endpoint record and the allocation, the kernel and the datastore
//! side at the same time.

use super::release::{delete_endpoint, release_in_process};
use super::{Deps, dataplane_error, delegated_ipam};
use crate::workload::Context;
use calico_dataplane::DataplaneError;
use cni_protocol::{CniError, Command, Request};

/// DEL: the pod's interface, the endpoint record (if ours), the allocation. Idempotent; all
/// three are attempted, and every failure is reported.
pub fn del(req: &Request, ctx: &Context, deps: &Deps<'_>) -> Result<(), CniError> {
    let netns = req.env.netns.clone();
    let (removed, released) = std::thread::scope(|s| {
        let removing = s.spawn(|| {
            deps.dataplane
                .remove_detached(netns.as_deref(), &req.env.ifname)
        });
        let released = if ctx.ipam_in_process() {
            release_in_process(req, ctx, deps)
        } else {
            let ipam = delegated_ipam(req, ctx, Command::Del);
            let wep = delete_endpoint(deps.store, ctx);
            ipam.and(wep)
        };
        let removed = removing.join().unwrap_or_else(|_| {
            Err(DataplaneError::netlink(
                "remove",
                "the dataplane thread panicked",
            ))
        });
        (removed, released)
    });
    match (removed.map_err(dataplane_error), released) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(CniError::new(a.code, format!("{}; and {}", a.msg, b.msg))),
    }
}

#[cfg(test)]
#[path = "del_tests.rs"]
mod tests;
