//! ADD, DEL, CHECK, GC and STATUS of the `calico` plugin, one module each, over a datastore
//! and a dataplane passed in ([`Deps`]): the orchestration, rollbacks included, is tested
//! without root against [`calico_datastore::MemKv`] and
//! [`calico_dataplane::fake::FakeDataplane`], and for real in `tests/cni`.
//!
//! - `add`: ADD, the datastore half on the calling thread; `kernel_thread`: its kernel half;
//! - `del`, `gc`, `status`: the other verbs; `check`: CHECK, a pure comparison ([`Wanted`])
//!   of what the ADD made with what is found;
//! - `overrides`: what the pod's annotations change; `records`: the endpoint and profile
//!   records as guarded writes, the readiness flag; `release`: taking an attachment's
//!   allocation and record back (DEL, and ADD's rollback).

mod add;
mod check;
mod del;
mod gc;
mod kernel_thread;
mod overrides;
mod records;
mod release;
mod status;

pub use add::add;
pub use check::{Wanted, check};
pub use del::del;
pub use gc::gc;
pub use records::cluster_information_key;
pub use status::status;

use crate::endpoint::PodMeta;
use crate::workload::Context;
use calico_dataplane::{Dataplane, DataplaneError};
use calico_datastore::KvStore;
use cni_protocol::{CniError, Command, ErrorCode, Request, delegate};
use std::collections::BTreeMap;
use std::path::Path;

/// Kernel failures as CNI errors: a vanished namespace is "unknown container", a
/// `CNI_NETNS` that is no pod's namespace a wrong environment.
pub fn dataplane_error(e: DataplaneError) -> CniError {
    let code = match e {
        DataplaneError::NetnsMissing(_) => ErrorCode::UNKNOWN_CONTAINER,
        DataplaneError::NotPodNetns { .. } => ErrorCode::INVALID_ENVIRONMENT,
        _ => ErrorCode::DATAPLANE,
    };
    CniError::new(code, e.to_string())
}

/// Runs the delegated IPAM plugin (`ipam.type`) for `command`, with this call's config.
fn delegated_ipam(req: &Request, ctx: &Context, command: Command) -> Result<(), CniError> {
    delegate::run(&req.env, command, &ctx.conf.ipam.ipam_type, &req.stdin)
}

/// Everything a verb needs besides the request: the datastore, the kernel, and what was read
/// from files and the Kubernetes API before.
pub struct Deps<'a> {
    pub store: &'a dyn KvStore,
    pub dataplane: &'a (dyn Dataplane + Sync),
    /// Calico's `/var/lib/calico/mtu`.
    pub mtu_file: &'a Path,
    /// From the Kubernetes API when `policy.type` is `k8s`.
    pub pod: Option<PodMeta>,
    /// The namespace's labels when there is no `pod` but Calico IPAM reads them (a
    /// kubeconfig is set): the pools' `namespaceSelector`.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod testing;
