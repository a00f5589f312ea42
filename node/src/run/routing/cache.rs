//! The datastore as route distribution sees it: every key under the watched prefixes, kept
//! up to date from the syncer's events, and turned into a [`ClusterView`] on demand. A value
//! that does not parse is logged once per revision and left out; everything else stays in
//! use (an invalid object written by another tool must not stop routing).

use calico_datastore::Kv;
use calico_datastore::model::bgp::{BGP_CONFIGURATIONS, BGP_PEERS};
use calico_datastore::model::keys::{parse_affinity, resources_prefix};
use calico_datastore::model::{
    BgpConfiguration, BgpConfigurationSpec, BgpPeer, BgpPeerSpec, BlockAffinity, IpPool,
    IpPoolSpec, Node, Resource, WorkloadEndpointSpec,
};
use calico_datastore::watch::SyncEvent;
use calico_routing::ClusterView;
use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Where affinities live (every host, both families).
pub const AFFINITIES: &str = "/calico/ipam/v2/host/";

/// Whose block affinities are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityScope {
    /// Only this node's: all BGP needs (its blocks, blackholes, borrowed addresses). Calico's
    /// BGP syncer does the same (`bgpsyncer.go`: `BlockAffinityListOptions{Host: node}`),
    /// and a node then lists its own few blocks rather than the whole cluster's.
    Own,
    /// Every node's: VXLAN routes go to other nodes' blocks (Felix reads them all).
    All,
}

/// The prefixes route distribution watches for `node`.
pub fn prefixes(node: &str, scope: AffinityScope) -> Vec<String> {
    vec![
        resources_prefix("nodes"),
        resources_prefix(BGP_CONFIGURATIONS),
        resources_prefix(BGP_PEERS),
        resources_prefix("ippools"),
        resources_prefix("workloadendpoints"),
        match scope {
            // The trailing slash keeps node-10's keys out of node-1's prefix.
            AffinityScope::Own => format!("{AFFINITIES}{node}/"),
            AffinityScope::All => AFFINITIES.to_string(),
        },
    ]
}

/// One key, parsed when it arrives (a view is then cheap to make, however often).
#[derive(Debug, Clone)]
enum Entry {
    Node(Box<Node>),
    Config(Box<BgpConfiguration>),
    Peer(Box<BgpPeer>),
    Pool(Box<IpPool>),
    Affinity(String, IpNet),
    /// A workload endpoint's node and addresses.
    Workload(String, Vec<IpNet>),
    /// Unparsable, pending or not ours: kept out of the view.
    Skipped,
}

/// The keys seen so far, parsed.
#[derive(Debug, Default)]
pub struct Cache {
    entries: BTreeMap<String, Entry>,
    /// Set by the first snapshot: nothing is computed from a partial view.
    synced: bool,
    revision: i64,
    /// Snapshots seen (a restarted syncer's first one replaces everything).
    snapshots: u64,
}

impl Cache {
    pub fn new() -> Self {
        Cache::default()
    }

    /// Whether a full snapshot has been seen.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// How many full snapshots have been applied.
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// Applies one event.
    pub fn apply(&mut self, event: SyncEvent) {
        match event {
            SyncEvent::Snapshot { kvs, revision } => {
                self.entries = kvs
                    .into_iter()
                    .map(|kv| {
                        let entry = parse(&kv);
                        (kv.key, entry)
                    })
                    .collect();
                self.synced = true;
                self.revision = revision;
                self.snapshots += 1;
            }
            SyncEvent::Put(kv) => {
                self.revision = self.revision.max(kv.mod_revision);
                let entry = parse(&kv);
                self.entries.insert(kv.key, entry);
            }
            SyncEvent::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                self.entries.remove(&key);
            }
        }
    }

    /// The addresses of the workload endpoints on `node`.
    pub fn workload_addresses(&self, node: &str) -> Vec<IpNet> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Workload(n, nets) if n == node => Some(nets.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The view the route calculation reads.
    pub fn view(&self) -> ClusterView {
        let mut view = ClusterView::default();
        for e in self.entries.values() {
            match e {
                Entry::Node(n) => view.nodes.push((**n).clone()),
                Entry::Config(c) => view.bgp_configurations.push((**c).clone()),
                Entry::Peer(p) => view.bgp_peers.push((**p).clone()),
                Entry::Pool(p) => view.pools.push((**p).clone()),
                Entry::Affinity(node, block) => view.affinities.push((node.clone(), *block)),
                Entry::Workload(..) => {}
                Entry::Skipped => {}
            }
        }
        view
    }
}

/// A key's entry; one that does not parse is logged (naming the key) and skipped.
fn parse(kv: &Kv) -> Entry {
    let key = kv.key.as_str();
    let under = |plural: &str| key.starts_with(&resources_prefix(plural));
    if under("nodes") {
        resource::<calico_datastore::model::NodeSpec>(kv)
            .map_or(Entry::Skipped, |r| Entry::Node(Box::new(r)))
    } else if under(BGP_CONFIGURATIONS) {
        resource::<BgpConfigurationSpec>(kv).map_or(Entry::Skipped, |r| Entry::Config(Box::new(r)))
    } else if under(BGP_PEERS) {
        resource::<BgpPeerSpec>(kv).map_or(Entry::Skipped, |r| Entry::Peer(Box::new(r)))
    } else if under("ippools") {
        resource::<IpPoolSpec>(kv).map_or(Entry::Skipped, |r| Entry::Pool(Box::new(r)))
    } else if under("workloadendpoints") {
        resource::<WorkloadEndpointSpec>(kv).map_or(Entry::Skipped, |r| {
            let nets = r
                .spec
                .ip_networks
                .iter()
                .filter_map(|n| n.parse::<IpNet>().ok())
                .collect();
            Entry::Workload(r.spec.node, nets)
        })
    } else if key.starts_with(AFFINITIES) {
        let Some((node, block)) = parse_affinity(key) else {
            return Entry::Skipped;
        };
        match BlockAffinity::from_bytes(&kv.value) {
            // Pending ones are left out, as confd does: the block is not the node's yet.
            Ok(a) if a.is_confirmed() && !a.deleted => Entry::Affinity(node, block),
            Ok(_) => Entry::Skipped,
            Err(e) => {
                log::warn!("skipping {key}: {e}");
                Entry::Skipped
            }
        }
    } else {
        Entry::Skipped
    }
}

fn resource<S>(kv: &Kv) -> Option<Resource<S>>
where
    S: Serialize + DeserializeOwned + Clone,
{
    Resource::<S>::from_kv(kv)
        .map_err(|e| {
            log::warn!("skipping {} (revision {}): {e}", kv.key, kv.mod_revision);
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
        }
    }

    /// Mirrors bgpsyncer.go `New` (`BlockAffinityListOptions{Host: node}`): BGP reads its
    /// own node's affinities only, and node-1's prefix does not take in node-10's keys.
    #[test]
    fn own_scope_reads_only_this_nodes_affinities() {
        let own = prefixes("node-1", AffinityScope::Own);
        let all = prefixes("node-1", AffinityScope::All);
        let key = |node: &str| format!("{AFFINITIES}{node}/ipv4/block/10.244.0.0-26");
        assert!(own.iter().any(|p| key("node-1").starts_with(p.as_str())));
        assert!(!own.iter().any(|p| key("node-10").starts_with(p.as_str())));
        assert!(all.iter().any(|p| key("node-10").starts_with(p.as_str())));
        assert_eq!(own.len(), all.len());
    }

    #[test]
    fn a_view_comes_from_the_snapshot_and_the_changes_after_it() {
        let mut c = Cache::new();
        assert!(!c.synced());
        c.apply(SyncEvent::Snapshot {
            kvs: vec![
                kv(
                    "/calico/resources/v3/projectcalico.org/nodes/a",
                    r#"{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"a"},"spec":{"bgp":{"ipv4Address":"10.0.0.1/24"}}}"#,
                    5,
                ),
                kv(
                    "/calico/ipam/v2/host/a/ipv4/block/10.244.0.0-26",
                    r#"{"state":"confirmed"}"#,
                    6,
                ),
                kv(
                    "/calico/ipam/v2/host/a/ipv4/block/10.244.0.64-26",
                    r#"{"state":"pending"}"#,
                    7,
                ),
                kv(
                    "/calico/resources/v3/projectcalico.org/ippools/broken",
                    "{not json",
                    8,
                ),
            ],
            revision: 8,
        });
        assert!(c.synced());
        let v = c.view();
        assert_eq!(v.nodes.len(), 1);
        assert_eq!(
            v.affinities,
            vec![("a".to_string(), "10.244.0.0/26".parse().unwrap())]
        );
        assert!(v.pools.is_empty(), "the broken pool is skipped");
        c.apply(SyncEvent::Delete {
            key: "/calico/ipam/v2/host/a/ipv4/block/10.244.0.0-26".into(),
            revision: 9,
        });
        c.apply(SyncEvent::Put(kv(
            "/calico/resources/v3/projectcalico.org/bgppeers/p",
            r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"peerIP":"10.0.0.9","asNumber":64512}}"#,
            10,
        )));
        let v = c.view();
        assert!(v.affinities.is_empty());
        assert_eq!(v.bgp_peers.len(), 1);
        assert_eq!(c.revision(), 10);
    }
}
