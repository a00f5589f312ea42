//! Gathering: everything the check looks at, read from the datastore in one round trip.

use super::{CheckData, Wep};
use crate::error::CmdResult;
use calico_datastore::model::{
    BlockAffinity, ClusterInformation, IpPool, IpamHandle, NodeSpec, Resource, keys,
};
use calico_datastore::{KvStore, Read};
use serde_json::Value;

/// Reads the snapshot. Values that do not decode are skipped, as Calico's lists skip them.
pub fn gather(store: &dyn KvStore) -> CmdResult<CheckData> {
    let reads = [
        Read::Key(keys::resource("clusterinformations", "default")),
        Read::Prefix("/calico/ipam/v2/assignment/".into()),
        Read::Prefix(keys::resources_prefix("ippools")),
        Read::Prefix(keys::resources_prefix("nodes")),
        Read::Prefix(keys::resources_prefix("workloadendpoints")),
        Read::Prefix(keys::HANDLES.into()),
        Read::Prefix("/calico/ipam/v2/host/".into()),
    ];
    let mut got = store.read(&reads)?.into_iter();
    let mut next = || got.next().unwrap_or_default();
    let cluster = next().pop().and_then(|kv| {
        ClusterInformation::from_kv(&kv)
            .ok()
            .map(|c| (c, kv.mod_revision))
    });
    // A corrupt block is reported and left out rather than counted wrongly.
    let blocks = crate::ipam::sound_blocks(&next());
    let pools = next()
        .iter()
        .filter_map(|kv| IpPool::from_kv(kv).ok())
        .collect();
    let nodes = next()
        .iter()
        .filter_map(|kv| Resource::<NodeSpec>::from_kv(kv).ok())
        .map(|n| (n.metadata.name, n.spec))
        .collect();
    let weps = next()
        .iter()
        .filter_map(|kv| {
            let v: Value = serde_json::from_slice(&kv.value).ok()?;
            let mut parts = kv.key.rsplit('/');
            let key_name = parts.next().unwrap_or_default();
            let key_ns = parts.next().unwrap_or_default();
            let text = |p: &str, fallback: &str| {
                v["metadata"][p]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(fallback)
                    .to_string()
            };
            Some(Wep {
                namespace: text("namespace", key_ns),
                name: text("name", key_name),
                ip_networks: v["spec"]["ipNetworks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    let handles = next()
        .iter()
        .filter_map(|kv| {
            let id = kv.key.strip_prefix(keys::HANDLES)?.to_string();
            let h: IpamHandle = serde_json::from_slice(&kv.value).ok()?;
            Some((id, (h, kv.mod_revision)))
        })
        .collect();
    let affinities = next()
        .iter()
        .filter_map(|kv| {
            let (host, cidr) = keys::parse_affinity(&kv.key)?;
            Some((host, cidr, BlockAffinity::from_bytes(&kv.value).ok()?))
        })
        .collect();
    Ok(CheckData {
        cluster,
        blocks,
        pools,
        nodes,
        weps,
        handles,
        affinities,
    })
}
