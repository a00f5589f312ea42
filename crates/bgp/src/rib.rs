//! The RIB: Adj-RIB-In per peer (with graceful-restart stale marks), our originated routes,
//! the decision process with ECMP, and Adj-RIB-Out per established peer (route reflection,
//! iBGP/eBGP export rules, the export filter). Pure: callers feed changes and get back the
//! [`RibEvent`]s and the UPDATE contents to send; no sockets, no clocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::wire::{Family, InboundUpdate, PathAttrs};
use crate::{ExportFilter, LearnedRoutes, NextHopMode, NextHops, RibEvent, Route};

/// How many recent next-hop sets are kept for sharing.
const SHARED_HOP_SETS: usize = 16;

/// Entries added to the RIB's maps since the last [`Rib::compact`] before the next quiet
/// moment repacks them (a start-up's burst adds tens of thousands; a block claimed now and
/// then never gets there).
const COMPACT_AFTER: usize = 4096;

/// LOCAL_PREF assumed when a path has none (RFC 4271 default, as BIRD).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// What the RIB needs to know of a peer's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibPeer {
    pub address: IpAddr,
    /// Our address on the session: the next hop when we set next hop self.
    pub local_addr: IpAddr,
    pub local_as: u32,
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    pub rr_client: bool,
    pub next_hop: NextHopMode,
    pub families: Vec<Family>,
}

impl RibPeer {
    pub fn ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }
}

/// The UPDATE contents for one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutUpdate {
    pub announce: Vec<(IpNet, Arc<PathAttrs>)>,
    pub withdraw: Vec<IpNet>,
}

impl OutUpdate {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// The result of one change.
#[derive(Debug, Default)]
pub struct Changes {
    pub events: Vec<RibEvent>,
    pub out: BTreeMap<u64, OutUpdate>,
}

impl Changes {
    /// Appends a later change: for a prefix in both, the later one wins (a peer's update is
    /// sent as withdrawals then announcements, so the two lists must stay disjoint).
    pub fn merge(&mut self, other: Changes) {
        self.events.extend(other.events);
        for (id, u) in other.out {
            let e = self.out.entry(id).or_default();
            let withdrawn: BTreeSet<IpNet> = u.withdraw.iter().copied().collect();
            let announced: BTreeSet<IpNet> = u.announce.iter().map(|(n, _)| *n).collect();
            e.announce
                .retain(|(n, _)| !withdrawn.contains(n) && !announced.contains(n));
            e.withdraw
                .retain(|n| !announced.contains(n) && !withdrawn.contains(n));
            e.announce.extend(u.announce);
            e.withdraw.extend(u.withdraw);
        }
    }
}

/// The communities of a route we originate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Communities {
    communities: Vec<u32>,
    large_communities: Vec<[u32; 3]>,
}

type LocalAttrs = Arc<Communities>;

#[derive(Debug, Clone)]
struct InPath {
    attrs: Arc<PathAttrs>,
    stale: bool,
}

/// A path taking part in the decision.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub peer: u64,
    pub attrs: &'a PathAttrs,
    pub ebgp: bool,
    pub peer_id: Ipv4Addr,
    pub peer_addr: IpAddr,
}

/// The decision process (RFC 4271 §9.1.2 with RFC 4456 §9): returns the indexes of the ECMP
/// set (paths equal up to the router-id step) and the index of the single best path.
pub fn decide(c: &[Candidate<'_>]) -> Option<(Vec<usize>, usize)> {
    // One path (a full mesh announces each prefix once): it is the decision.
    if c.len() == 1 {
        return Some((vec![0], 0));
    }
    let mut set: Vec<usize> = (0..c.len()).collect();
    fn keep_min<K: Ord + Copy>(set: &mut Vec<usize>, key: impl Fn(usize) -> K) {
        if let Some(m) = set.iter().map(|&i| key(i)).min() {
            set.retain(|&i| key(i) == m);
        }
    }
    keep_min(&mut set, |i| {
        std::cmp::Reverse(c[i].attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF))
    });
    keep_min(&mut set, |i| c[i].attrs.as_path_len());
    keep_min(&mut set, |i| c[i].attrs.origin);
    // MED only between paths from the same neighbouring AS (missing MED = 0).
    let snapshot = set.clone();
    set.retain(|&i| {
        !snapshot.iter().any(|&j| {
            c[j].attrs.neighbor_as() == c[i].attrs.neighbor_as()
                && c[j].attrs.med.unwrap_or(0) < c[i].attrs.med.unwrap_or(0)
        })
    });
    keep_min(&mut set, |i| !c[i].ebgp);
    keep_min(&mut set, |i| c[i].attrs.cluster_list.len());
    let best = *set.iter().min_by_key(|&&i| {
        (
            c[i].attrs.originator_id.unwrap_or(c[i].peer_id),
            c[i].peer_addr,
        )
    })?;
    Some((set, best))
}

/// The RIB of one speaker.
#[derive(Debug)]
pub struct Rib {
    router_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
    /// Sessions that are established.
    up: BTreeMap<u64, RibPeer>,
    /// What we last knew of every peer that has routes in Adj-RIB-In (stale ones too).
    meta: HashMap<u64, RibPeer>,
    adj_in: HashMap<u64, BTreeMap<IpNet, InPath>>,
    /// The routes we originate: their communities, one shared allocation per distinct
    /// set (a node's blocks all have the same, usually none).
    local: BTreeMap<IpNet, LocalAttrs>,
    filter: ExportFilter,
    adj_out: HashMap<u64, BTreeMap<IpNet, Arc<PathAttrs>>>,
    /// The attributes last announced to each peer: an equal set is shared rather than
    /// stored again (a node's blocks all go out with one set, so Adj-RIB-Out holds one
    /// allocation per peer instead of one per prefix).
    last_out: HashMap<u64, Arc<PathAttrs>>,
    /// The next hops last reported per prefix, shared with the speaker's user. B-trees, not
    /// hash maps: with 30,000 learned prefixes a hash table's doubling left half its buckets
    /// empty. The best path's peer is not kept: it is decided again where an export needs
    /// it (another map of 30,000 entries otherwise).
    reported: LearnedRoutes,
    /// Recently reported next-hop sets, handed out again when equal: one allocation per
    /// distinct set rather than one per prefix (here and in every reader's copy).
    hop_sets: Vec<NextHops>,
    /// Restarting speaker: announcements are held until released.
    hold_out: bool,
    /// Entries added to the maps since the last compaction.
    grown: usize,
}

impl Rib {
    pub fn new(router_id: Ipv4Addr, cluster_id: Option<Ipv4Addr>, hold_out: bool) -> Self {
        Rib {
            router_id,
            cluster_id,
            up: BTreeMap::new(),
            meta: HashMap::new(),
            adj_in: HashMap::new(),
            local: BTreeMap::new(),
            filter: ExportFilter::default(),
            adj_out: HashMap::new(),
            last_out: HashMap::new(),
            reported: LearnedRoutes::default(),
            hop_sets: Vec::new(),
            hold_out,
            grown: 0,
        }
    }

    /// Whether enough was added since the last [`Rib::compact`] to make another worth it.
    pub fn wants_compaction(&self) -> bool {
        self.grown >= COMPACT_AFTER
    }

    /// Repacks the per-prefix maps. B-tree nodes filled in key order (a peer's UPDATEs, a
    /// start-up's table) split at insertion and stay a little over half full; rebuilt from
    /// their sorted entries they are full: with 30,000 learned prefixes and 10,000 blocks of
    /// our own sent to three peers that is ~2 MB less. For a quiet moment (the speaker calls
    /// it once a burst is over): it costs a few milliseconds per 100,000 entries.
    pub fn compact(&mut self) {
        fn repack<K: Ord, V>(m: &mut BTreeMap<K, V>) {
            // `FromIterator` builds a B-tree from sorted entries with every node full.
            let entries = std::mem::take(m);
            *m = entries.into_iter().collect();
        }
        self.adj_in.values_mut().for_each(repack);
        self.adj_out.values_mut().for_each(repack);
        repack(&mut self.local);
        repack(&mut self.reported.lock());
        self.grown = 0;
    }

    pub fn holding(&self) -> bool {
        self.hold_out
    }

    /// The best next hops of every learned prefix (the table [`RibEvent`]s report changes of).
    pub fn learned(&self) -> LearnedRoutes {
        self.reported.clone()
    }

    pub fn routes_received(&self, peer: u64) -> usize {
        self.adj_in.get(&peer).map_or(0, BTreeMap::len)
    }

    pub fn routes_sent(&self, peer: u64) -> usize {
        self.adj_out.get(&peer).map_or(0, BTreeMap::len)
    }

    /// A session came up: returns the full table for it (unless held).
    pub fn peer_up(&mut self, id: u64, peer: RibPeer) -> Changes {
        self.meta.insert(id, peer.clone());
        self.up.insert(id, peer);
        self.adj_out.insert(id, BTreeMap::new());
        // Stale paths of this peer may now compare differently; the decision reruns below.
        let prefixes: BTreeSet<IpNet> = self
            .adj_in
            .get(&id)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        let mut ch = self.recompute(prefixes);
        ch.merge(self.export_all_to(id));
        ch
    }

    /// A session went down: its routes go, or stay marked stale (graceful-restart helper).
    pub fn peer_down(&mut self, id: u64, keep_stale: bool) -> Changes {
        self.up.remove(&id);
        self.adj_out.remove(&id);
        self.last_out.remove(&id);
        let Some(paths) = self.adj_in.get_mut(&id) else {
            return Changes::default();
        };
        if keep_stale {
            paths.values_mut().for_each(|p| p.stale = true);
            return Changes::default();
        }
        let prefixes: BTreeSet<IpNet> = paths.keys().copied().collect();
        self.adj_in.remove(&id);
        self.meta.remove(&id);
        self.recompute(prefixes)
    }

    /// Drops the peer's stale paths of `family` (its End-of-RIB), or of all families.
    pub fn sweep_stale(&mut self, id: u64, family: Option<Family>) -> Changes {
        let Some(paths) = self.adj_in.get_mut(&id) else {
            return Changes::default();
        };
        let gone: BTreeSet<IpNet> = paths
            .iter()
            .filter(|(n, p)| p.stale && family.is_none_or(|f| Family::of(n) == f))
            .map(|(n, _)| *n)
            .collect();
        paths.retain(|n, _| !gone.contains(n));
        if paths.is_empty() && !self.up.contains_key(&id) {
            self.adj_in.remove(&id);
            self.meta.remove(&id);
        }
        self.recompute(gone)
    }

    pub fn has_stale(&self, id: u64) -> bool {
        self.adj_in
            .get(&id)
            .is_some_and(|m| m.values().any(|p| p.stale))
    }

    /// Applies a received UPDATE (after its import checks).
    pub fn update(&mut self, id: u64, u: InboundUpdate) -> Changes {
        let Some(peer) = self.up.get(&id).cloned() else {
            return Changes::default();
        };
        let paths = self.adj_in.entry(id).or_default();
        let mut touched = BTreeSet::new();
        for n in u.withdrawn {
            if paths.remove(&n).is_some() {
                touched.insert(n);
            }
        }
        for (n, attrs) in u.announced {
            touched.insert(n);
            match self_import(self.router_id, self.cluster_id, &peer, attrs) {
                Some(attrs) => {
                    let new = paths
                        .insert(
                            n,
                            InPath {
                                attrs,
                                stale: false,
                            },
                        )
                        .is_none();
                    self.grown += usize::from(new);
                }
                None => {
                    paths.remove(&n);
                }
            }
        }
        self.recompute(touched)
    }

    /// Replaces the routes we originate.
    pub fn set_local(&mut self, routes: Vec<Route>) -> Changes {
        let mut last: Option<LocalAttrs> = None;
        let new: BTreeMap<IpNet, LocalAttrs> = routes
            .into_iter()
            .map(|r| {
                let attrs = match &last {
                    Some(a)
                        if a.communities == r.communities
                            && a.large_communities == r.large_communities =>
                    {
                        a.clone()
                    }
                    _ => {
                        let a = LocalAttrs::new(Communities {
                            communities: r.communities,
                            large_communities: r.large_communities,
                        });
                        last = Some(a.clone());
                        a
                    }
                };
                (r.prefix.trunc(), attrs)
            })
            .collect();
        let mut touched: BTreeSet<IpNet> = self
            .local
            .keys()
            .filter(|k| !new.contains_key(k))
            .copied()
            .collect();
        touched.extend(
            new.iter()
                .filter(|(k, v)| self.local.get(k) != Some(v))
                .map(|(k, _)| *k),
        );
        self.local = new;
        self.recompute(touched)
    }

    pub fn set_filter(&mut self, f: ExportFilter) -> Changes {
        if self.filter == f {
            return Changes::default();
        }
        self.filter = f;
        let all = self.all_prefixes();
        self.recompute(all)
    }

    /// Ends the restarting speaker's hold: every established peer gets its full table.
    pub fn release_hold(&mut self) -> Changes {
        if !self.hold_out {
            return Changes::default();
        }
        self.hold_out = false;
        let ids: Vec<u64> = self.up.keys().copied().collect();
        let mut ch = Changes::default();
        for id in ids {
            ch.merge(self.export_all_to(id));
        }
        ch
    }

    /// Adj-RIB-Out of a peer, to answer ROUTE-REFRESH (RFC 2918).
    pub fn adj_rib_out(&self, id: u64, family: Option<Family>) -> OutUpdate {
        OutUpdate {
            announce: self
                .adj_out
                .get(&id)
                .map(|m| {
                    m.iter()
                        .filter(|(n, _)| family.is_none_or(|f| Family::of(n) == f))
                        .map(|(n, a)| (*n, a.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            withdraw: Vec::new(),
        }
    }

    fn all_prefixes(&self) -> BTreeSet<IpNet> {
        let mut all: BTreeSet<IpNet> = self.local.keys().copied().collect();
        for m in self.adj_in.values() {
            all.extend(m.keys().copied());
        }
        for m in self.adj_out.values() {
            all.extend(m.keys().copied());
        }
        all
    }

    fn export_all_to(&mut self, id: u64) -> Changes {
        let all = self.all_prefixes();
        let mut ch = Changes::default();
        for p in all {
            let best = self.candidates(&p).1;
            self.export_prefix_to(id, &p, best, &mut ch);
        }
        ch
    }

    /// The paths for `prefix` in the decision (ordered by peer), the ECMP set's next hops
    /// (none for a prefix we originate ourselves: ours wins), and the best path's peer.
    fn candidates(&self, prefix: &IpNet) -> (Vec<IpAddr>, Option<u64>) {
        let mut cands = Vec::new();
        for (peer, paths) in &self.adj_in {
            if let (Some(p), Some(meta)) = (paths.get(prefix), self.meta.get(peer)) {
                cands.push(Candidate {
                    peer: *peer,
                    attrs: &p.attrs,
                    ebgp: !meta.ibgp(),
                    peer_id: meta.remote_id,
                    peer_addr: meta.address,
                });
            }
        }
        cands.sort_by_key(|c| c.peer);
        let Some((set, best)) = decide(&cands) else {
            return (Vec::new(), None);
        };
        let mut next_hops: Vec<IpAddr> = if self.local.contains_key(prefix) {
            Vec::new()
        } else {
            set.iter().map(|&i| cands[i].attrs.next_hop).collect()
        };
        next_hops.sort();
        next_hops.dedup();
        (next_hops, Some(cands[best].peer))
    }

    fn recompute(&mut self, prefixes: BTreeSet<IpNet>) -> Changes {
        let mut ch = Changes::default();
        let reported = self.reported.clone();
        let mut reported = reported.lock();
        let ids: Vec<u64> = self.up.keys().copied().collect();
        for prefix in prefixes {
            let (next_hops, best) = self.candidates(&prefix);
            let old = reported.get(&prefix);
            if next_hops.is_empty() {
                if old.is_some() {
                    reported.remove(&prefix);
                    ch.events.push(RibEvent::Withdrawn { prefix });
                }
            } else if old.map(|o| &o[..]) != Some(&next_hops[..]) {
                let next_hops = self.shared_hops(&next_hops);
                self.grown += usize::from(reported.insert(prefix, next_hops.clone()).is_none());
                ch.events.push(RibEvent::Best { prefix, next_hops });
            }
            for id in &ids {
                self.export_prefix_to(*id, &prefix, best, &mut ch);
            }
        }
        ch
    }

    /// `hops` as a shared set: a recent equal one, else a new one remembered.
    fn shared_hops(&mut self, hops: &[IpAddr]) -> NextHops {
        if let Some(i) = self.hop_sets.iter().position(|s| &s[..] == hops) {
            let set = self.hop_sets.remove(i);
            self.hop_sets.push(set.clone());
            return set;
        }
        let set: NextHops = hops.into();
        if self.hop_sets.len() == SHARED_HOP_SETS {
            self.hop_sets.remove(0);
        }
        self.hop_sets.push(set.clone());
        set
    }

    /// `best`: the peer whose path for `prefix` is best, if any.
    fn export_prefix_to(&mut self, id: u64, prefix: &IpNet, best: Option<u64>, ch: &mut Changes) {
        if self.hold_out {
            return;
        }
        let want = self.export(id, prefix, best);
        let Some(out) = self.adj_out.get_mut(&id) else {
            return;
        };
        match want {
            Some(mut a) => {
                if out.get(prefix) != Some(&a) {
                    match self.last_out.get(&id) {
                        Some(last) if **last == *a => a = last.clone(),
                        _ => {
                            self.last_out.insert(id, a.clone());
                        }
                    }
                    self.grown += usize::from(out.insert(*prefix, a.clone()).is_none());
                    ch.out.entry(id).or_default().announce.push((*prefix, a));
                }
            }
            None => {
                if out.remove(prefix).is_some() {
                    ch.out.entry(id).or_default().withdraw.push(*prefix);
                }
            }
        }
    }

    /// What we send peer `id` for `prefix` (RFC 4271 §9.2, RFC 4456 §8).
    fn export(&self, id: u64, prefix: &IpNet, best: Option<u64>) -> Option<Arc<PathAttrs>> {
        let to = self.up.get(&id)?;
        let family = Family::of(prefix);
        if !to.families.contains(&family) {
            return None;
        }
        let self_nh = (Family::of_addr(&to.local_addr) == family).then_some(to.local_addr);
        if let Some(r) = self.local.get(prefix) {
            let mut a = PathAttrs {
                origin: 0,
                as_path: Vec::new(),
                next_hop: self_nh?,
                med: None,
                local_pref: to.ibgp().then_some(DEFAULT_LOCAL_PREF),
                communities: r.communities.clone(),
                large_communities: r.large_communities.clone(),
                originator_id: None,
                cluster_list: Vec::new(),
                other: Vec::new(),
            };
            if !to.ibgp() {
                a.prepend(to.local_as);
            }
            return Some(Arc::new(a));
        }
        let from_id = best?;
        if from_id == id || !self.filter.allows(prefix) {
            return None;
        }
        let from = self.meta.get(&from_id)?;
        // iBGP to iBGP only when reflecting: client routes to all, others to clients
        // (decided before the path is copied: in a full mesh no learned route goes on).
        if to.ibgp()
            && from.ibgp()
            && (self.cluster_id.is_none() || !(from.rr_client || to.rr_client))
        {
            return None;
        }
        let path = self.adj_in.get(&from_id)?.get(prefix)?;
        let mut a = (*path.attrs).clone();
        if to.ibgp() {
            if from.ibgp() {
                let cluster = self.cluster_id?;
                let originator = *a.originator_id.get_or_insert(from.remote_id);
                if originator == to.remote_id {
                    return None;
                }
                a.cluster_list.insert(0, cluster);
            } else {
                a.local_pref.get_or_insert(DEFAULT_LOCAL_PREF);
            }
            if to.next_hop == NextHopMode::SelfAddr {
                a.next_hop = self_nh?;
            }
        } else {
            a.prepend(to.local_as);
            a.local_pref = None;
            a.med = None;
            a.originator_id = None;
            a.cluster_list.clear();
            if to.next_hop != NextHopMode::Keep {
                a.next_hop = self_nh?;
            }
        }
        Some(Arc::new(a))
    }
}

/// Import checks: loop detection (AS_PATH for eBGP, ORIGINATOR_ID/CLUSTER_LIST for iBGP,
/// RFC 4456 §8) and attribute normalisation. `None`: the path is ignored (as withdrawn).
fn self_import(
    router_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
    peer: &RibPeer,
    attrs: Arc<PathAttrs>,
) -> Option<Arc<PathAttrs>> {
    if peer.ibgp() {
        if attrs.originator_id == Some(router_id) {
            return None;
        }
        if cluster_id.is_some_and(|c| attrs.cluster_list.contains(&c)) {
            return None;
        }
        Some(attrs)
    } else {
        if attrs.contains_as(peer.local_as) {
            return None;
        }
        if attrs.local_pref.is_some()
            || attrs.originator_id.is_some()
            || !attrs.cluster_list.is_empty()
        {
            let mut a = (*attrs).clone();
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            return Some(Arc::new(a));
        }
        Some(attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustbgpd_wire::attribute::AsPathSegment;

    const AS: u32 = 64512;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn peer(addr: &str, remote_as: u32, rr_client: bool) -> RibPeer {
        RibPeer {
            address: ip(addr),
            local_addr: ip("10.0.0.1"),
            local_as: AS,
            remote_as,
            remote_id: addr.parse().unwrap(),
            rr_client,
            next_hop: NextHopMode::Auto,
            families: vec![Family::Ipv4, Family::Ipv6],
        }
    }
    fn path(nh: &str) -> PathAttrs {
        PathAttrs {
            origin: 0,
            as_path: vec![],
            next_hop: ip(nh),
            med: None,
            local_pref: Some(100),
            communities: vec![],
            large_communities: vec![],
            originator_id: None,
            cluster_list: vec![],
            other: vec![],
        }
    }
    fn announce(n: &str, a: PathAttrs) -> InboundUpdate {
        InboundUpdate {
            announced: vec![(net(n), Arc::new(a))],
            ..Default::default()
        }
    }

    #[test]
    fn routes_with_equal_next_hops_share_one_set() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, false);
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        let attrs = Arc::new(path("10.0.0.2"));
        let ch = rib.update(
            2,
            InboundUpdate {
                announced: (0..100u8)
                    .map(|i| (net(&format!("10.65.{i}.0/26")), attrs.clone()))
                    .collect(),
                ..Default::default()
            },
        );
        let sets: Vec<&NextHops> = ch
            .events
            .iter()
            .filter_map(|e| match e {
                RibEvent::Best { next_hops, .. } => Some(next_hops),
                _ => None,
            })
            .collect();
        assert_eq!(sets.len(), 100);
        assert!(sets.iter().all(|s| Arc::ptr_eq(s, sets[0])));
        assert_eq!(&sets[0][..], &[ip("10.0.0.2")]);
    }

    #[test]
    fn a_burst_asks_for_compaction_and_compacting_changes_nothing_but_the_layout() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, false);
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        rib.peer_up(3, peer("10.0.0.3", AS, false));
        rib.set_local(
            (0..100u8)
                .map(|i| Route::new(net(&format!("10.64.{i}.0/26"))))
                .collect(),
        );
        let attrs = Arc::new(path("10.0.0.2"));
        let announced: Vec<(IpNet, Arc<PathAttrs>)> = (0..COMPACT_AFTER / 2)
            .map(|i| {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 65, 0, 0)) + (i as u32) * 64);
                (
                    IpNet::V4(ipnet::Ipv4Net::new(a, 26).unwrap()),
                    attrs.clone(),
                )
            })
            .collect();
        assert!(!rib.wants_compaction());
        // Adj-RIB-In and the learned table grow by one entry per prefix each (with our 100
        // blocks in both peers' Adj-RIB-Out, past the threshold).
        rib.update(
            2,
            InboundUpdate {
                announced,
                ..Default::default()
            },
        );
        assert!(rib.wants_compaction());
        let before = (
            rib.learned().with(|l| l.clone()),
            rib.adj_rib_out(3, Some(Family::Ipv4)),
            rib.routes_received(2),
            rib.routes_sent(2),
            rib.routes_sent(3),
        );
        rib.compact();
        assert!(!rib.wants_compaction());
        let after = (
            rib.learned().with(|l| l.clone()),
            rib.adj_rib_out(3, Some(Family::Ipv4)),
            rib.routes_received(2),
            rib.routes_sent(2),
            rib.routes_sent(3),
        );
        assert_eq!(before, after);
        assert_eq!(after.2, COMPACT_AFTER / 2);
        assert_eq!((after.3, after.4), (100, 100));
        // A withdrawal after the repacking is found and reported as before.
        let ch = rib.update(
            2,
            InboundUpdate {
                withdrawn: vec![net("10.65.0.0/26")],
                ..Default::default()
            },
        );
        assert_eq!(
            ch.events,
            vec![RibEvent::Withdrawn {
                prefix: net("10.65.0.0/26")
            }]
        );
    }

    #[test]
    fn equal_paths_from_two_peers_are_merged_into_ecmp() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, false);
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        rib.peer_up(3, peer("10.0.0.3", AS, false));
        let ch = rib.update(2, announce("10.65.0.0/26", path("10.0.0.2")));
        assert_eq!(
            ch.events,
            vec![RibEvent::Best {
                prefix: net("10.65.0.0/26"),
                next_hops: vec![ip("10.0.0.2")].into()
            }]
        );
        // Learned iBGP routes are not passed to other iBGP peers.
        assert!(ch.out.is_empty());
        let ch = rib.update(3, announce("10.65.0.0/26", path("10.0.0.3")));
        assert_eq!(
            ch.events,
            vec![RibEvent::Best {
                prefix: net("10.65.0.0/26"),
                next_hops: vec![ip("10.0.0.2"), ip("10.0.0.3")].into()
            }]
        );
        let ch = rib.update(
            2,
            InboundUpdate {
                withdrawn: vec![net("10.65.0.0/26")],
                ..Default::default()
            },
        );
        assert_eq!(
            ch.events,
            vec![RibEvent::Best {
                prefix: net("10.65.0.0/26"),
                next_hops: vec![ip("10.0.0.3")].into()
            }]
        );
        let ch = rib.peer_down(3, false);
        assert_eq!(
            ch.events,
            vec![RibEvent::Withdrawn {
                prefix: net("10.65.0.0/26")
            }]
        );
    }

    #[test]
    fn decision_prefers_local_pref_then_path_length_then_origin_then_med() {
        let mut a = path("10.0.0.2");
        let mut b = path("10.0.0.3");
        let cand = |a: &PathAttrs, b: &PathAttrs| {
            let c = [
                Candidate {
                    peer: 1,
                    attrs: a,
                    ebgp: false,
                    peer_id: "1.1.1.1".parse().unwrap(),
                    peer_addr: ip("10.0.0.2"),
                },
                Candidate {
                    peer: 2,
                    attrs: b,
                    ebgp: false,
                    peer_id: "2.2.2.2".parse().unwrap(),
                    peer_addr: ip("10.0.0.3"),
                },
            ];
            decide(&c)
        };
        b.local_pref = Some(200);
        assert_eq!(cand(&a, &b), Some((vec![1], 1)));
        b.local_pref = Some(100);
        a.as_path = vec![AsPathSegment::AsSequence(vec![65001])];
        assert_eq!(cand(&a, &b), Some((vec![1], 1)));
        b.as_path = vec![AsPathSegment::AsSequence(vec![65001])];
        b.origin = 2;
        assert_eq!(cand(&a, &b), Some((vec![0], 0)));
        b.origin = 0;
        a.med = Some(10);
        b.med = Some(5);
        assert_eq!(cand(&a, &b), Some((vec![1], 1)));
        // MED is not compared between different neighbour ASes: ECMP, best by router id.
        b.as_path = vec![AsPathSegment::AsSequence(vec![65002])];
        assert_eq!(cand(&a, &b), Some((vec![0, 1], 0)));
        // Shorter CLUSTER_LIST wins.
        a.cluster_list = vec!["9.9.9.9".parse().unwrap()];
        assert_eq!(cand(&a, &b), Some((vec![1], 1)));
    }

    #[test]
    fn ebgp_wins_over_ibgp() {
        let a = path("10.0.0.2");
        let b = path("10.0.0.3");
        let c = [
            Candidate {
                peer: 1,
                attrs: &a,
                ebgp: false,
                peer_id: "1.1.1.1".parse().unwrap(),
                peer_addr: ip("10.0.0.2"),
            },
            Candidate {
                peer: 2,
                attrs: &b,
                ebgp: true,
                peer_id: "2.2.2.2".parse().unwrap(),
                peer_addr: ip("10.0.0.3"),
            },
        ];
        assert_eq!(decide(&c), Some((vec![1], 1)));
    }

    #[test]
    fn route_reflector_reflects_client_routes_with_originator_and_cluster_list() {
        let cluster: Ipv4Addr = "1.0.0.1".parse().unwrap();
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), Some(cluster), false);
        rib.peer_up(2, peer("10.0.0.2", AS, true));
        rib.peer_up(3, peer("10.0.0.3", AS, true));
        rib.peer_up(4, peer("10.0.0.4", AS, false));
        rib.set_filter(ExportFilter {
            accept: vec![net("10.65.0.0/16")],
            reject: vec![],
        });
        let ch = rib.update(2, announce("10.65.0.0/26", path("10.0.0.2")));
        let to3 = &ch.out[&3].announce[0].1;
        assert_eq!(to3.originator_id, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(to3.cluster_list, vec![cluster]);
        assert_eq!(to3.next_hop, ip("10.0.0.2"));
        assert!(
            ch.out.contains_key(&4),
            "client routes go to non-clients too"
        );
        assert!(!ch.out.contains_key(&2), "never back to the originator");
        // A non-client's route goes to clients only.
        let ch = rib.update(4, announce("10.65.1.0/26", path("10.0.0.4")));
        assert!(ch.out.contains_key(&2) && ch.out.contains_key(&3));
        assert!(!ch.out.contains_key(&4));
        // Loop prevention: our cluster id in CLUSTER_LIST, our router id as ORIGINATOR_ID.
        let mut looped = path("10.0.0.3");
        looped.cluster_list = vec![cluster];
        let ch = rib.update(3, announce("10.65.2.0/26", looped));
        assert!(ch.events.is_empty());
        let mut mine = path("10.0.0.3");
        mine.originator_id = Some("10.0.0.1".parse().unwrap());
        assert!(
            rib.update(3, announce("10.65.3.0/26", mine))
                .events
                .is_empty()
        );
        // The export filter: reject wins.
        let ch = rib.set_filter(ExportFilter {
            accept: vec![net("10.65.0.0/16")],
            reject: vec![net("10.65.0.0/24")],
        });
        assert_eq!(ch.out[&3].withdraw, vec![net("10.65.0.0/26")]);
    }

    #[test]
    fn ebgp_export_prepends_and_sets_next_hop_self() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, false);
        rib.set_filter(ExportFilter {
            accept: vec![net("0.0.0.0/0")],
            reject: vec![],
        });
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        rib.peer_up(5, peer("10.0.0.5", 65005, false));
        let ch = rib.set_local(vec![Route::new(net("10.65.9.0/26"))]);
        let to5 = &ch.out[&5].announce[0].1;
        assert_eq!(to5.as_path, vec![AsPathSegment::AsSequence(vec![AS])]);
        assert_eq!(to5.local_pref, None);
        let to2 = &ch.out[&2].announce[0].1;
        assert!(to2.as_path.is_empty());
        assert_eq!(to2.local_pref, Some(100));
        assert_eq!(to2.next_hop, ip("10.0.0.1"));
        let ch = rib.update(2, announce("10.65.0.0/26", path("10.0.0.2")));
        let to5 = &ch.out[&5].announce[0].1;
        assert_eq!(to5.next_hop, ip("10.0.0.1"));
        assert_eq!(to5.as_path, vec![AsPathSegment::AsSequence(vec![AS])]);
        // An eBGP path with our AS is a loop.
        let mut looped = path("10.0.0.5");
        looped.as_path = vec![AsPathSegment::AsSequence(vec![65005, AS])];
        assert!(
            rib.update(5, announce("10.65.7.0/26", looped))
                .events
                .is_empty()
        );
        // Unchanged local routes send nothing.
        assert!(
            rib.set_local(vec![Route::new(net("10.65.9.0/26"))])
                .out
                .is_empty()
        );
        let ch = rib.set_local(vec![]);
        assert_eq!(ch.out[&2].withdraw, vec![net("10.65.9.0/26")]);
    }

    #[test]
    fn stale_routes_stay_until_end_of_rib() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, false);
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        rib.update(2, announce("10.65.0.0/26", path("10.0.0.2")));
        rib.update(2, announce("10.65.1.0/26", path("10.0.0.2")));
        assert!(rib.peer_down(2, true).events.is_empty());
        assert!(rib.has_stale(2));
        rib.peer_up(2, peer("10.0.0.2", AS, false));
        assert!(
            rib.update(2, announce("10.65.0.0/26", path("10.0.0.2")))
                .events
                .is_empty()
        );
        let ch = rib.sweep_stale(2, Some(Family::Ipv4));
        assert_eq!(
            ch.events,
            vec![RibEvent::Withdrawn {
                prefix: net("10.65.1.0/26")
            }]
        );
        assert!(!rib.has_stale(2));
    }

    #[test]
    fn merged_changes_keep_the_later_state_of_a_prefix() {
        let a = Arc::new(path("10.0.0.2"));
        let mut first = Changes::default();
        first.out.insert(
            1,
            OutUpdate {
                announce: vec![(net("10.65.0.0/26"), a.clone())],
                withdraw: vec![net("10.65.1.0/26")],
            },
        );
        let mut later = Changes::default();
        later.out.insert(
            1,
            OutUpdate {
                announce: vec![(net("10.65.1.0/26"), a)],
                withdraw: vec![net("10.65.0.0/26")],
            },
        );
        first.merge(later);
        assert_eq!(first.out[&1].withdraw, vec![net("10.65.0.0/26")]);
        assert_eq!(
            first.out[&1]
                .announce
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>(),
            vec![net("10.65.1.0/26")]
        );
    }

    #[test]
    fn restarting_speaker_holds_announcements_until_released() {
        let mut rib = Rib::new("10.0.0.1".parse().unwrap(), None, true);
        rib.set_local(vec![Route::new(net("10.65.9.0/26"))]);
        assert!(rib.peer_up(2, peer("10.0.0.2", AS, false)).out.is_empty());
        let ch = rib.release_hold();
        assert_eq!(ch.out[&2].announce.len(), 1);
        assert_eq!(rib.adj_rib_out(2, None).announce.len(), 1);
    }
}
