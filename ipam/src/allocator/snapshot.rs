//! Reading: everything an allocation or a release needs, in one round trip at one
//! revision, decoded into a [`Snapshot`].

use super::{DEFAULT_MAX_BLOCKS_PER_HOST, Ipam};
use crate::error::IpamError;
use crate::pools::{Pool, UnusablePool};
use calico_datastore::Kv;
use calico_datastore::Read;
use calico_datastore::model::{IpPool, IpReservation, IpamConfigValue, Resource, keys};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The IPAM settings in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamSettings {
    pub strict_affinity: bool,
    pub auto_allocate_blocks: bool,
    pub max_blocks_per_host: usize,
    /// Calico 3.33's `ipCooldownSeconds`: released addresses stay taken this long (0: freed
    /// at once, as 3.32 does).
    pub ip_cooldown_seconds: i64,
}

impl IpamSettings {
    /// From the stored config (`None`: the key is absent, so Calico's defaults).
    pub fn from_stored(v: Option<&IpamConfigValue>) -> Self {
        let c = v.cloned().unwrap_or_else(IpamConfigValue::calico_default);
        IpamSettings {
            strict_affinity: c.strict_affinity,
            auto_allocate_blocks: c.auto_allocate_blocks,
            max_blocks_per_host: usize::try_from(c.max_blocks_per_host)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MAX_BLOCKS_PER_HOST),
            ip_cooldown_seconds: c.ip_cooldown_seconds(),
        }
    }
}

/// Everything an allocation needs, read in one round trip.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub settings: IpamSettings,
    /// Why the stored IPAM config could not be read, if it could not: releases go on under
    /// Calico's defaults, but an allocation refuses it as corrupt (code 102) rather than
    /// guessing settings such as strict affinity ([`Snapshot::config_for_allocation`]).
    pub config_error: Option<String>,
    pub pools: Vec<Pool>,
    /// Stored pools IPAM cannot use (each logged when read): never chosen, and a request
    /// naming one gets the reason.
    pub unusable_pools: Vec<UnusablePool>,
    /// Whether calico-node has registered this node (its Node resource exists): automatic
    /// assignment needs it, as Calico's `prepareAffinityBlocksForHost` does.
    pub node_registered: bool,
    /// The Calico Node's labels.
    pub node_labels: BTreeMap<String, String>,
    /// `kubeVirtVMAddressPersistence` is not `Disabled` in the v3 `IPAMConfiguration`
    /// `default` (absent means enabled): what Calico's CNI plugin reads to decide whether a
    /// KubeVirt VM keeps its addresses (`ipam_plugin.go` `getKubeVirtVMAddressPersistence`).
    pub vm_address_persistence: bool,
    pub reservations: Vec<IpNet>,
    /// This node's affinities (both families), by block.
    pub affinities: BTreeMap<IpNet, Kv>,
    /// The handles asked for, current state.
    pub handles: BTreeMap<String, Option<Kv>>,
    /// Blocks read along with the rest because the caller expected to need them (the
    /// node's affine blocks as last seen): `None` if the block does not exist.
    pub blocks: BTreeMap<IpNet, Option<Kv>>,
    /// Keys the caller asked to read in the same round trip (its own objects).
    pub extra: BTreeMap<String, Option<Kv>>,
}

impl Snapshot {
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.reservations.iter().any(|r| r.contains(&ip))
    }
}

/// What a caller wants read in a snapshot besides IPAM's own objects.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest<'a> {
    pub handles: &'a [&'a str],
    /// Blocks likely needed (the node's affine blocks as last seen).
    pub blocks: &'a [IpNet],
    /// The caller's own keys.
    pub keys: &'a [String],
}

impl Ipam<'_> {
    /// Reads config, pools, node labels, reservations, this node's affinities and the given
    /// handles in one round trip.
    pub fn snapshot(&self, handles: &[&str]) -> Result<Snapshot, IpamError> {
        self.read_snapshot(&SnapshotRequest {
            handles,
            ..SnapshotRequest::default()
        })
    }

    /// One round trip for everything: IPAM's objects, the blocks the caller expects to use
    /// (a stale guess costs only the extra keys; the affinities read in the same snapshot
    /// decide), and the caller's own keys.
    pub fn read_snapshot(&self, req: &SnapshotRequest<'_>) -> Result<Snapshot, IpamError> {
        let mut reads = vec![
            Read::Key(keys::IPAM_CONFIG.into()),
            Read::Prefix(keys::resources_prefix("ippools")),
            Read::Key(keys::resource("nodes", &self.node)),
            Read::Key(keys::resource("ipamconfigurations", "default")),
            Read::Prefix(keys::resources_prefix("ipreservations")),
            Read::Prefix(format!("/calico/ipam/v2/host/{}/", self.node)),
        ];
        reads.extend(req.handles.iter().map(|h| Read::Key(keys::handle(h))));
        reads.extend(req.blocks.iter().map(|b| Read::Key(keys::block(b))));
        reads.extend(req.keys.iter().map(|k| Read::Key(k.clone())));
        let mut got = self.store.read(&reads)?.into_iter();
        let mut next = || got.next().unwrap_or_default();

        // An unreadable config means Calico's defaults (logged) for releases: it must not
        // stop a DEL. An allocation refuses it (`config_error`): Calico's GetIPAMConfig fails.
        let mut config_error = None;
        let config = next().pop().and_then(|kv| {
            serde_json::from_slice::<IpamConfigValue>(&kv.value)
                .map_err(|e| {
                    log::warn!(
                        "{} is unreadable ({e}): releases use Calico's default IPAM settings, \
                         allocations are refused",
                        keys::IPAM_CONFIG
                    );
                    config_error = Some(e.to_string());
                })
                .ok()
        });
        let mut pools = Vec::new();
        let mut unusable_pools = Vec::new();
        for kv in next() {
            let read = IpPool::from_kv(&kv)
                .map_err(|e| UnusablePool {
                    name: kv.key.rsplit('/').next().unwrap_or_default().to_string(),
                    cidr: None,
                    reason: format!("cannot be decoded: {e}"),
                    invalid: true,
                })
                .and_then(|p| Pool::from_resource(&p));
            match read {
                Ok(p) => pools.push(p),
                Err(u) => {
                    log::warn!("IP pool {} skipped: it {}", u.name, u.reason);
                    unusable_pools.push(u);
                }
            }
        }
        let node = next().pop();
        let node_registered = node.is_some();
        // Only the labels matter here: the spec stays raw, so a field the typed Node model
        // cannot read does not hide the node's labels.
        let node_labels = node
            .and_then(|kv| Resource::<serde_json::Value>::from_kv(&kv).ok())
            .map(|n| n.metadata.labels)
            .unwrap_or_default();
        // Unreadable counts as absent, as Go's Get error does: persistence stays on.
        let vm_address_persistence = next()
            .pop()
            .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
            .and_then(|v| {
                v.pointer("/spec/kubeVirtVMAddressPersistence")
                    .and_then(serde_json::Value::as_str)
                    .map(|p| p != "Disabled")
            })
            .unwrap_or(true);
        let reservations = next()
            .iter()
            .filter_map(|kv| IpReservation::from_kv(kv).ok())
            .flat_map(|r| r.spec.networks())
            .collect();
        let affinities = next()
            .into_iter()
            .filter_map(|kv| {
                let (node, cidr) = keys::parse_affinity(&kv.key)?;
                (node == self.node).then_some((cidr, kv))
            })
            .collect();
        let handles = req
            .handles
            .iter()
            .map(|h| (h.to_string(), next().pop()))
            .collect();
        let blocks = req.blocks.iter().map(|b| (*b, next().pop())).collect();
        let extra = req.keys.iter().map(|k| (k.clone(), next().pop())).collect();
        Ok(Snapshot {
            settings: IpamSettings::from_stored(config.as_ref()),
            config_error,
            pools,
            unusable_pools,
            node_registered,
            node_labels,
            vm_address_persistence,
            reservations,
            affinities,
            handles,
            blocks,
            extra,
        })
    }

    /// Re-reads what a plan against `snap` used, after a conflict.
    pub(super) fn refresh(&self, snap: &Snapshot) -> Result<Snapshot, IpamError> {
        let handles: Vec<&str> = snap.handles.keys().map(String::as_str).collect();
        let blocks: Vec<IpNet> = snap.blocks.keys().copied().collect();
        let keys: Vec<String> = snap.extra.keys().cloned().collect();
        self.read_snapshot(&SnapshotRequest {
            handles: &handles,
            blocks: &blocks,
            keys: &keys,
        })
    }
}

impl Snapshot {
    /// The settings an allocation may use: an unreadable stored IPAM config is corrupt
    /// (code 102) for an allocation, as Calico's `GetIPAMConfig` error stops `AutoAssign`.
    pub fn config_for_allocation(&self) -> Result<&IpamSettings, IpamError> {
        match &self.config_error {
            None => Ok(&self.settings),
            Some(reason) => Err(IpamError::Corrupt {
                key: keys::IPAM_CONFIG.to_string(),
                reason: reason.clone(),
            }),
        }
    }
}
