//! STATUS: whether the datastore can be reached, then IPAM's answer.

use super::delegated_ipam;
use super::records::cluster_information_key;
use crate::workload::Context;
use calico_datastore::KvStore;
use cni_protocol::{CniError, Command, ErrorCode, Request};

/// STATUS: 50 if the datastore cannot be reached; then IPAM's answer.
pub fn status(req: &Request, ctx: &Context, store: &dyn KvStore) -> Result<(), CniError> {
    store
        .get(&cluster_information_key())
        .map_err(|e| CniError::new(ErrorCode::PLUGIN_NOT_AVAILABLE, e.to_string()))?;
    if ctx.ipam_in_process() {
        calico_ipam::cni::status(store, &ctx.conf, &ctx.node)
    } else {
        delegated_ipam(req, ctx, Command::Status)
    }
}
