//! The plugin's records as guarded writes for the IPAM transaction: the WorkloadEndpoint
//! (and the network's Profile) an ADD commits, the endpoint deletion of DEL and rollbacks;
//! and the readiness flag an ADD reads first.

use super::overrides::PodOverrides;
use crate::annotations;
use crate::endpoint::{PodMeta, network_profile, workload_endpoint};
use crate::workload::{Context, format_mac};
use calico_datastore::model::{ClusterInformation, Profile, WorkloadEndpoint, keys};
use calico_datastore::{Guard, Kv, Write};
use calico_ipam::Snapshot;
use calico_ipam::allocator::Extra;
use cni_protocol::{CniError, ErrorCode, Request};
use ipnet::IpNet;
use std::time::SystemTime;

/// Where Calico's readiness flag lives.
pub fn cluster_information_key() -> String {
    keys::resource("clusterinformations", "default")
}

pub(super) fn profile_key(network: &str) -> String {
    keys::resource("profiles", network)
}

/// `datastoreReady: false` in `clusterinformations/default` (Calico's upgrade switch) means
/// "try again later". A missing object does not block.
pub(super) fn check_ready(current: Option<&Kv>) -> Result<(), CniError> {
    let Some(kv) = current else {
        return Ok(());
    };
    let ci = ClusterInformation::from_kv(kv).map_err(|e| {
        CniError::new(
            ErrorCode::DATASTORE,
            format!("cannot decode {}: {e}", kv.key),
        )
    })?;
    if ci.spec.datastore_ready == Some(false) {
        return Err(CniError::try_again_later(
            "Calico is currently not ready to process requests (datastoreReady is false)",
        ));
    }
    Ok(())
}

/// The endpoint (and, without `policy.type`, the network's profile if missing) as writes
/// guarded on what the snapshot saw.
#[allow(clippy::too_many_arguments)]
pub(super) fn endpoint_writes(
    ctx: &Context,
    req: &Request,
    addresses: &[IpNet],
    mac: &[u8; 6],
    pod: Option<&PodMeta>,
    ov: &PodOverrides,
    current: impl Fn(&str) -> Option<Kv>,
) -> Result<Extra, CniError> {
    let mut wep = workload_endpoint(
        ctx,
        &req.env.ifname,
        addresses,
        &format_mac(mac),
        &req.network_name,
        pod,
    );
    wep.spec.allow_spoofed_source_prefixes = ov.source_prefixes.clone();
    wep.spec.ip_nats = annotations::ip_nats(&ov.floating_ips, addresses)?;
    let existing = current(&ctx.wep_key);
    match existing
        .as_ref()
        .and_then(|kv| WorkloadEndpoint::from_kv(kv).ok())
    {
        // An update keeps the object's identity, as libcalico-go's Update does.
        Some(old) => {
            wep.metadata.uid = old.metadata.uid;
            wep.metadata.creation_timestamp = old.metadata.creation_timestamp;
        }
        None => wep.stamp_created(SystemTime::now()),
    }
    let encode = |what: &str, e: serde_json::Error| {
        CniError::new(
            ErrorCode::INTERNAL,
            format!("cannot encode the {what}: {e}"),
        )
    };
    let mut extra = Extra {
        guards: vec![Guard::for_current(&ctx.wep_key, existing.as_ref())],
        writes: vec![Write::Put(
            ctx.wep_key.clone(),
            wep.to_stored().map_err(|e| encode("endpoint", e))?,
        )],
    };
    if ctx.conf.policy.policy_type.is_empty() {
        let key = profile_key(&req.network_name);
        if current(&key).is_none() {
            let mut profile: Profile =
                network_profile(&req.network_name, ctx.workload.orchestrator == "k8s");
            profile.stamp_created(SystemTime::now());
            extra.guards.push(Guard::Absent(key.clone()));
            extra.writes.push(Write::Put(
                key,
                profile.to_stored().map_err(|e| encode("profile", e))?,
            ));
        }
    }
    Ok(extra)
}

/// Deletes the endpoint record if it belongs to this container (a newer sandbox of the same
/// pod must keep its record).
pub(super) fn endpoint_delete(ctx: &Context, current: Option<&Kv>) -> Extra {
    let Some(kv) = current else {
        return Extra::default();
    };
    let ours = match WorkloadEndpoint::from_kv(kv) {
        Ok(w) => w.spec.container_id.is_empty() || w.spec.container_id == ctx.workload.container_id,
        // A record we cannot decode is still judged by its container ID, as Calico's k8s.go
        // cmdDelK8s does: only one that is not JSON at all, or whose raw spec.containerID
        // is absent, empty or ours, is deleted (guarded by its revision) so it cannot keep
        // the pod from being deleted; a newer sandbox's record in a shape we do not know
        // is kept.
        Err(e) => match serde_json::from_slice::<serde_json::Value>(&kv.value) {
            Err(_) => {
                log::warn!("endpoint {} is not JSON ({e}); deleted", kv.key);
                true
            }
            Ok(raw) => {
                let owner = raw.pointer("/spec/containerID");
                let ours = match owner {
                    None | Some(serde_json::Value::Null) => true,
                    Some(serde_json::Value::String(c)) => {
                        c.is_empty() || *c == ctx.workload.container_id
                    }
                    Some(_) => false,
                };
                if ours {
                    log::warn!("endpoint {} is unreadable ({e}); deleted", kv.key);
                }
                ours
            }
        },
    };
    if !ours {
        log::info!(
            "endpoint {} belongs to another container; kept",
            ctx.wep_name
        );
        return Extra::default();
    }
    Extra {
        guards: vec![Guard::Revision(kv.key.clone(), kv.mod_revision)],
        writes: vec![Write::Delete(kv.key.clone())],
    }
}

/// A key read in the same round trip as IPAM's own objects, as the snapshot saw it.
pub(super) fn snapshot_key(snap: &Snapshot, key: &str) -> Option<Kv> {
    snap.extra.get(key).cloned().flatten()
}
