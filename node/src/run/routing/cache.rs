//! The datastore as route distribution sees it: every key under the watched prefixes, kept
//! up to date from the syncer's events, and turned into a [`ClusterView`] on demand. A value
//! that does not parse is logged once per revision and left out; everything else stays in
//! use (an invalid object written by another tool must not stop routing).
//!
//! Block affinities (tens of thousands on a large node) are kept apart and compactly: per
//! node, the set of its confirmed blocks. Their keys are not kept: a key names its node and
//! block (`parse_affinity`), so a deletion finds its entry from the key alone.

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
use std::collections::{BTreeMap, BTreeSet};

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
    /// A workload endpoint's node and addresses.
    Workload(String, Vec<IpNet>),
    /// Unparsable, pending or not ours: kept out of the view.
    Skipped,
}

/// The keys seen so far, parsed.
#[derive(Debug, Default)]
pub struct Cache {
    /// Every key but the affinities.
    entries: BTreeMap<String, Entry>,
    /// Confirmed block affinities: node → its blocks.
    affinities: BTreeMap<String, BTreeSet<IpNet>>,
    /// Set by the first snapshot: nothing is computed from a partial view.
    synced: bool,
    revision: i64,
    /// Snapshots seen (a restarted syncer's first one replaces everything).
    snapshots: u64,
    /// Events applied: a view made at the same count is still current.
    generation: u64,
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

    /// Counts the events applied: a view made at the same generation is still current.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many full snapshots have been applied.
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// Applies one event.
    pub fn apply(&mut self, event: SyncEvent) {
        self.generation += 1;
        match event {
            SyncEvent::Snapshot { kvs, revision } => {
                self.entries.clear();
                self.affinities.clear();
                for kv in kvs {
                    self.put(kv);
                }
                self.synced = true;
                self.revision = revision;
                self.snapshots += 1;
            }
            SyncEvent::Put(kv) => {
                self.revision = self.revision.max(kv.mod_revision);
                self.put(kv);
            }
            SyncEvent::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                match parse_affinity_key(&key) {
                    Some((node, block)) => self.remove_affinity(&node, &block),
                    None => {
                        self.entries.remove(&key);
                    }
                }
            }
        }
    }

    /// One key's new value (an affinity that is no longer confirmed leaves the set).
    fn put(&mut self, kv: Kv) {
        let Some((node, block)) = parse_affinity_key(&kv.key) else {
            let entry = parse(&kv);
            self.entries.insert(kv.key, entry);
            return;
        };
        match BlockAffinity::from_bytes(&kv.value) {
            // Pending ones are left out, as confd does: the block is not the node's yet.
            Ok(a) if a.is_confirmed() && !a.deleted => {
                self.affinities.entry(node).or_default().insert(block);
            }
            Ok(_) => self.remove_affinity(&node, &block),
            Err(e) => {
                log::warn!("skipping {}: {e}", kv.key);
                self.remove_affinity(&node, &block);
            }
        }
    }

    fn remove_affinity(&mut self, node: &str, block: &IpNet) {
        if let Some(blocks) = self.affinities.get_mut(node) {
            blocks.remove(block);
            if blocks.is_empty() {
                self.affinities.remove(node);
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
                Entry::Workload(..) => {}
                Entry::Skipped => {}
            }
        }
        view.affinities = self
            .affinities
            .iter()
            .flat_map(|(node, blocks)| blocks.iter().map(|b| (node.clone(), *b)))
            .collect();
        view
    }
}

/// The node and block an affinity key names; `None` for any other key (and for an affinity
/// key that does not parse, which is then kept, skipped, with the other keys).
fn parse_affinity_key(key: &str) -> Option<(String, IpNet)> {
    key.starts_with(AFFINITIES)
        .then(|| parse_affinity(key))
        .flatten()
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

    /// Mirrors confd's affinity handling (bgpsyncer.go: only confirmed affinities are the
    /// node's): a put that makes an affinity pending takes its block out, a delete (which
    /// carries only the key) finds the block from the key, and a later snapshot replaces
    /// everything.
    #[test]
    fn affinities_follow_puts_deletes_and_snapshots_by_key_alone() {
        let key = |node: &str, block: &str| format!("{AFFINITIES}{node}/ipv4/block/{block}");
        let blocks = |c: &Cache| -> Vec<(String, String)> {
            c.view()
                .affinities
                .into_iter()
                .map(|(n, b)| (n, b.to_string()))
                .collect()
        };
        let mut c = Cache::new();
        c.apply(SyncEvent::Snapshot {
            kvs: vec![
                kv(&key("a", "10.244.0.0-26"), r#"{"state":"confirmed"}"#, 2),
                kv(&key("a", "10.244.0.64-26"), r#"{"state":"confirmed"}"#, 3),
                kv(&key("b", "10.244.1.0-26"), r#"{"state":"confirmed"}"#, 4),
            ],
            revision: 4,
        });
        assert_eq!(blocks(&c).len(), 3);
        c.apply(SyncEvent::Put(kv(
            &key("a", "10.244.0.64-26"),
            r#"{"state":"pending"}"#,
            5,
        )));
        c.apply(SyncEvent::Delete {
            key: key("b", "10.244.1.0-26"),
            revision: 6,
        });
        assert_eq!(blocks(&c), vec![("a".into(), "10.244.0.0/26".into())]);
        c.apply(SyncEvent::Put(kv(
            &key("a", "10.244.0.0-26"),
            "{not json",
            7,
        )));
        assert!(
            blocks(&c).is_empty(),
            "an unreadable value takes the block out"
        );
        c.apply(SyncEvent::Put(kv(
            &key("a", "10.244.0.128-26"),
            r#"{"state":"confirmed"}"#,
            8,
        )));
        c.apply(SyncEvent::Snapshot {
            kvs: vec![kv(
                &key("c", "10.244.2.0-26"),
                r#"{"state":"confirmed"}"#,
                9,
            )],
            revision: 9,
        });
        assert_eq!(blocks(&c), vec![("c".into(), "10.244.2.0/26".into())]);
        assert_eq!(c.revision(), 9);
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
