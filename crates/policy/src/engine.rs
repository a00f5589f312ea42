//! The incremental engine the agent feeds with datastore changes and asks for the wanted
//! table (Felix's calculation graph: `felix/calc/active_rules_calculator.go`,
//! `rule_scanner.go`, `policy_resolver.go`, `policy_sorter.go`, and the dataplane managers'
//! "desired state", `felix/dataplane/linux/endpoint_mgr.go`, `policy_mgr.go`).
//!
//! Each update records the object and marks what it touches as dirty; [`PolicyEngine::desired`]
//! re-renders only those chains, sets and map elements. Policies are evaluated against
//! local endpoints only (a label index), and only policies and profiles that apply to a
//! local endpoint are rendered ("active rules"); the sets their rules use are evaluated
//! against every endpoint and network set of the cluster (a second label index). What
//! changed since the last apply is named by [`PolicyEngine::take_touched`] and copied into
//! an edit of the programmed table by [`PolicyEngine::write_changes`].
//!
//! An update that does not validate acts as the object's deletion (Felix's
//! `ValidationFilter`): it returns [`Skipped`] with the reason, and the rest stays enforced.

use crate::index::{FastMap, FastSet};
use crate::index::{Interner, LabelIndex, LabelSet, Labels};
use crate::ir::{self, Action, Match, Rule};
use crate::model::{
    self, InvalidObject, LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT, NAMESPACE_LABEL_PREFIX,
    ParsedPolicy, ParsedProfile, ParsedRule, PolicyKey, SERVICE_ACCOUNT_LABEL_PREFIX, SetSpec,
};
use crate::names;
use crate::render::{self, Direction, EndpointChainOptions, MarkBits, TierChains, verdict};
use calico_datastore::model::node::Node;
use calico_datastore::model::policy::{
    FelixConfiguration, FelixConfigurationSpec, GlobalNetworkPolicy, GlobalNetworkSet,
    NetworkPolicy, NetworkSet, Protocol, Tier,
};
use calico_datastore::model::resources::{DEFAULT_TIERS, IpPool, Profile, WorkloadEndpoint};
use calico_netfilter::NfError;
use calico_netfilter::nft::{self, Verdict};
use calico_netfilter::ruleset::Edit;
use calico_netfilter::ruleset::{
    BaseChain, Chain, ChainHook, ChainKind, ChainPolicy, Ruleset, Set, SetElem, SetElems, SetKey,
};
use calico_selector::Selector;
use ipnet::IpNet;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher as _, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

/// Settings that come from the agent's environment, not the datastore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Workload interface prefixes (`FELIX_INTERFACEPREFIX`, default `cali`).
    pub interface_prefixes: Vec<String>,
    /// Prefix of Log rules' kernel log lines (`FELIX_LOGPREFIX`, default `calico-packet`).
    pub log_prefix: String,
    /// Keep each chain's typed rules for [`PolicyEngine::text`] (tests, debugging); off, the
    /// engine holds only the netfilter rules.
    pub keep_text: bool,
    /// Hold no copy of the chains nor of the sets' members (the programmed table has them; a
    /// fingerprint per chain and per set tells what changed; the members are counted in the
    /// set index anyway): [`PolicyEngine::desired`] then has the maps and the sets' types
    /// only, whole tables come from [`PolicyEngine::full_table`] and changes from
    /// [`PolicyEngine::write_changes`]. What the agent wants at scale.
    pub lean: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            interface_prefixes: vec!["cali".into()],
            log_prefix: "calico-packet".into(),
            keep_text: false,
            lean: false,
        }
    }
}

/// Which object a skip is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// An object the engine does not enforce, and why (to log; everything else stays enforced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object} skipped: {reason}")]
pub struct Skipped {
    pub object: ObjectRef,
    pub reason: String,
}

/// A local endpoint whose rules are in the wanted table: what its status file says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointStatus {
    pub orchestrator_id: String,
    pub workload_id: String,
    pub endpoint_id: String,
    pub iface_name: String,
    pub mac: String,
    pub ipv4_nets: Vec<String>,
    pub ipv6_nets: Vec<String>,
}

/// A workload endpoint's key: namespace and name of the resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ItemKey {
    Endpoint(EndpointKey),
    NetSet { namespace: String, name: String },
}

/// An endpoint as the calculation keeps it. Most are other nodes' (10,000 at the issue's
/// scale), which feed only sets: what only local endpoints have is boxed apart, and lists
/// are boxed slices (no spare room), so that a remote endpoint's entry is small.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    nets: Box<[IpNet]>,
    profiles: Box<[String]>,
    own_labels: LabelSet,
    /// (name, protocol, port).
    ports: Box<[(String, u8, u16)]>,
    /// This node's endpoints only.
    local: Option<Box<LocalEndpoint>>,
}

/// What an endpoint of this node has beyond what every endpoint has.
#[derive(Debug, Clone, PartialEq)]
struct LocalEndpoint {
    iface: String,
    /// `allowSpoofedSourcePrefixes`: other sources it may send from.
    spoof_ok: Vec<IpNet>,
    status: EndpointStatus,
}

impl Endpoint {
    fn is_local(&self) -> bool {
        self.local.is_some()
    }
}

/// An endpoint's labels for selectors: its own, then those its profiles give (in the
/// profiles' order; the endpoint's own win, then the first profile's).
fn effective_labels(
    strings: &mut Interner,
    profiles: &FastMap<String, ParsedProfile>,
    ep: &Endpoint,
) -> LabelSet {
    let inherited = ep
        .profiles
        .iter()
        .filter_map(|p| profiles.get(p))
        .flat_map(|p| p.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    LabelSet::new(ep.own_labels.iter().chain(inherited), strings)
}

/// What an endpoint or network set contributes to sets: addresses, and named ports.
#[derive(Debug, Clone, Default, PartialEq)]
struct ItemData {
    nets: Vec<IpNet>,
    /// (name, protocol, port).
    ports: Vec<(String, u8, u16)>,
}

/// The elements an item brings to a set: its addresses (selector sets) or the (address,
/// protocol, port) of its ports of the set's name and protocol (named-port sets).
fn item_elems(spec: &SetSpec, d: &ItemData) -> Vec<SetElem> {
    match spec {
        SetSpec::Selector(_) => d.nets.iter().map(|n| SetElem::Net(*n)).collect(),
        SetSpec::NamedPort { proto, port, .. } => {
            let mut out = Vec::new();
            for (pname, pproto, pport) in &d.ports {
                if pname.as_str() != &**port || proto.is_some_and(|p| p != *pproto) {
                    continue;
                }
                for n in &d.nets {
                    out.push(SetElem::AddrProtoPort(n.addr(), *pproto, *pport));
                }
            }
            out
        }
    }
}

/// A set rules use: what it is, its names (v4, v6) and its elements, each counted by how
/// many items bring it.
struct LiveSet {
    spec: SetSpec,
    names: (String, String),
    counts: ElemCounts,
    /// Distinct members per family (IPv4, IPv6): a family's set exists while its count is
    /// not 0 (see [`render::SetMembers`]).
    filled: [u32; 2],
    /// Of those, prefixes (not single hosts): while there is one, the family's set is an
    /// interval set under its own name.
    wide: [u32; 2],
}

impl LiveSet {
    /// The family's set now: `None` while it has no members, else whether it is an interval
    /// set (it holds a prefix).
    fn shape(&self, v4: bool) -> Option<bool> {
        let f = usize::from(!v4);
        (self.filled[f] > 0).then_some(self.wide[f] > 0)
    }

    /// The family's set now: its name and whether it is an interval set; `None` when empty.
    fn kernel_set(&self, v4: bool) -> Option<(Cow<'_, str>, bool)> {
        let interval = self.shape(v4)?;
        let exact = if v4 { &self.names.0 } else { &self.names.1 };
        Some(if interval {
            (Cow::Owned(names::prefix_set_name(exact)), true)
        } else {
            (Cow::Borrowed(exact.as_str()), false)
        })
    }
}

/// Whether a set member is a prefix rather than one host (it needs an interval set).
fn elem_is_wide(e: &SetElem) -> bool {
    matches!(e, SetElem::Net(n) if n.prefix_len() < n.max_prefix_len())
}

/// Whether a set member is an IPv4 one (port-only members count as IPv4).
fn elem_is_v4(e: &SetElem) -> bool {
    match e {
        SetElem::Net(n) => matches!(n, IpNet::V4(_)),
        SetElem::AddrProtoPort(a, _, _) => a.is_ipv4(),
        SetElem::Ports(..) => true,
    }
}

/// The live sets as the renderer asks about them.
struct LiveMembers<'a> {
    ids: &'a Ids<SetSpec>,
    live: &'a FastMap<u32, LiveSet>,
}

impl render::SetMembers for LiveMembers<'_> {
    fn set_name(&self, spec: &SetSpec, v4: bool) -> Option<String> {
        let live = self.live.get(&self.ids.get(spec)?)?;
        live.kernel_set(v4).map(|(name, _)| name.into_owned())
    }
}

/// A set's members, each counted by how many items bring it: the members packed and
/// sorted ([`SetElems`], 8 bytes each for IPv4, where the cluster's ~200,000 members
/// would take 28 as counted pairs), and beside them the rare member more than one item
/// brings (two network sets naming the same prefix), with the count of the others. The
/// families are kept apart (IPv4 and port-only members, IPv6 members): an IPv6 member would
/// unpack the IPv4 ones of a dual-stack set.
#[derive(Default)]
struct ElemCounts {
    members: [SetElems; 2],
    more: FastMap<SetElem, u32>,
}

/// Which of [`ElemCounts::members`] holds `e`.
fn family_of(e: &SetElem) -> usize {
    usize::from(!elem_is_v4(e))
}

impl ElemCounts {
    /// Counts (the members' multiset, in any order).
    fn from_elems(mut all: Vec<SetElem>) -> Self {
        all.sort_unstable();
        let mut more: FastMap<SetElem, u32> = FastMap::default();
        let mut distinct: [Vec<SetElem>; 2] = [Vec::new(), Vec::new()];
        let mut last: Option<SetElem> = None;
        for e in all {
            if last == Some(e) {
                *more.entry(e).or_insert(0) += 1;
            } else {
                distinct[family_of(&e)].push(e);
                last = Some(e);
            }
        }
        let [v4, v6] = distinct;
        ElemCounts {
            members: [v4.into_iter().collect(), v6.into_iter().collect()],
            more,
        }
    }

    /// One more item brings `e`; whether it is a new member.
    fn add(&mut self, e: SetElem) -> bool {
        if self.members[family_of(&e)].insert(e) {
            return true;
        }
        *self.more.entry(e).or_insert(0) += 1;
        false
    }

    /// One item less brings `e`; whether it stopped being a member.
    fn remove(&mut self, e: &SetElem) -> bool {
        match self.more.get_mut(e) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.more.remove(e);
                false
            }
            None => self.members[family_of(e)].remove(e),
        }
    }

    /// The members: IPv4 ones, then IPv6 ones, each in order.
    fn members(&self) -> impl Iterator<Item = SetElem> + '_ {
        self.members[0].iter().chain(self.members[1].iter())
    }
}

/// Small numbers for keys: ids are reused after release.
struct Ids<T> {
    ids: FastMap<T, u32>,
    keys: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Ids<T> {
    fn default() -> Self {
        Ids {
            ids: FastMap::default(),
            keys: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Ids<T> {
    fn get(&self, k: &T) -> Option<u32> {
        self.ids.get(k).copied()
    }

    fn intern(&mut self, k: &T) -> u32 {
        if let Some(id) = self.ids.get(k) {
            return *id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = Some(k.clone());
                id
            }
            None => {
                self.keys.push(Some(k.clone()));
                (self.keys.len() - 1) as u32
            }
        };
        self.ids.insert(k.clone(), id);
        id
    }

    fn release(&mut self, k: &T) -> Option<u32> {
        let id = self.ids.remove(k)?;
        self.keys[id as usize] = None;
        self.free.push(id);
        Some(id)
    }

    fn key(&self, id: u32) -> Option<&T> {
        self.keys.get(id as usize).and_then(Option::as_ref)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TierInfo {
    order: Option<f64>,
    pass: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Pool {
    net: IpNet,
    masquerade: bool,
    ipip: bool,
    vxlan: bool,
}

#[derive(Default)]
struct Dirty {
    endpoints: FastSet<EndpointKey>,
    policies: FastSet<PolicyKey>,
    profiles: FastSet<String>,
    sets: FastSet<SetSpec>,
    /// Sets of which a family gained its first member or lost its last: the chains that use
    /// them render differently.
    filled: FastSet<SetSpec>,
    statics: bool,
}

/// The policy calculation of one node. See the module doc.
pub struct PolicyEngine {
    node: String,
    config: EngineConfig,
    felix_cluster: FelixConfigurationSpec,
    felix_node: FelixConfigurationSpec,
    felix: FelixConfigurationSpec,
    marks: MarkBits,
    tiers: FastMap<String, TierInfo>,
    policies: FastMap<PolicyKey, ParsedPolicy>,
    profiles: FastMap<String, ParsedProfile>,
    endpoints: FastMap<EndpointKey, Endpoint>,
    endpoints_by_profile: FastMap<String, FastSet<EndpointKey>>,
    local_by_profile: FastMap<String, usize>,
    netsets: FastMap<ItemKey, Vec<IpNet>>,
    pools: BTreeMap<String, Pool>,
    node_addrs: BTreeMap<String, Vec<IpAddr>>,
    skipped: BTreeMap<ObjectRef, String>,
    /// Policy selectors over local endpoints.
    policy_index: LabelIndex<EndpointKey, PolicyKey>,
    /// Set selectors over every endpoint and network set.
    set_index: LabelIndex<u32, u32>,
    /// Small ids of the set index's items and selectors (an index entry is 4 bytes, not a
    /// key's strings).
    item_ids: Ids<ItemKey>,
    set_ids: Ids<SetSpec>,
    active_policies: FastSet<PolicyKey>,
    active_profiles: FastSet<String>,
    set_refs: FastMap<SetSpec, usize>,
    /// The sets rules use now, by id, with their elements.
    live_sets: FastMap<u32, LiveSet>,
    /// The sets each active policy and profile references (what to release).
    policy_sets: FastMap<PolicyKey, Vec<SetSpec>>,
    profile_sets: FastMap<String, Vec<SetSpec>>,
    /// Interface each rendered endpoint was rendered with (to remove its chains).
    rendered: FastMap<EndpointKey, String>,
    /// Counts endpoint renders: unchanged, the programmed endpoints' statuses are too.
    endpoint_renders: u64,
    dirty: Dirty,
    touched: Touched,
    /// Lean mode: each chain's fingerprint (by its name's key: no copy of thousands of
    /// names), and the chains changed since the last take.
    chain_prints: FastMap<NameKey, (u64, usize)>,
    pending_chains: BTreeMap<String, Option<Chain>>,
    /// Set while [`Self::full_table`] renders every chain into it.
    collect: Option<BTreeMap<String, Chain>>,
    /// Lean mode: each set's fingerprint (its type and the sum of its members' hashes, kept
    /// up to date member by member), and the sets to copy whole since the last take.
    set_prints: FastMap<NameKey, u64>,
    /// The keys of [`NameKey`]s (random per engine).
    name_keys: (RandomState, RandomState),
    pending_sets: BTreeMap<String, Set>,
    /// Set while [`Self::full_table`] renders every set into it (lean mode).
    collect_sets: Option<BTreeMap<String, Set>>,
    /// Label strings, shared; swept when it doubled since the last sweep.
    strings: Interner,
    sweep_at: usize,
    out: Ruleset,
    chains: BTreeMap<String, (Option<BaseChain>, Vec<Rule>)>,
}

fn object(kind: &'static str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn order_cmp(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// A CIDR (host bits cleared) or a bare address, as Calico's `ParseCIDROrIP`.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// A chain's or set's name as the fingerprint maps hold it: 128 bits of two keyed SipHash
/// digests (random keys per engine: no one can craft two names that collide), so that the
/// maps hold no copy of the names.
type NameKey = (u64, u64);

/// A chain's fingerprint in lean mode (its typed rules hashed; equal rules lower equally).
fn fingerprint(base: &Option<BaseChain>, rules: &[Rule]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    base.hash(&mut h);
    rules.hash(&mut h);
    h.finish()
}

/// A set member's hash, summed into its set's fingerprint (a sum, so that a member joining
/// or leaving updates it without a walk over the set).
fn elem_hash(e: &SetElem) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

/// `name`'s [`NameKey`] under `keys`.
fn name_key(keys: &(RandomState, RandomState), name: &str) -> NameKey {
    (keys.0.hash_one(name), keys.1.hash_one(name))
}

/// A whole set's fingerprint (lean mode): its type and its members.
fn set_print(set: &Set) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (set.key, set.interval).hash(&mut h);
    set.elems
        .iter()
        .fold(h.finish(), |acc, e| acc.wrapping_add(elem_hash(&e)))
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

impl PolicyEngine {
    /// An engine for `node_name` with Calico's default tiers and Felix's defaults.
    pub fn new(node_name: &str, config: EngineConfig) -> Self {
        let mut e = PolicyEngine {
            node: node_name.to_string(),
            config,
            felix_cluster: FelixConfigurationSpec::default(),
            felix_node: FelixConfigurationSpec::default(),
            felix: FelixConfigurationSpec::default(),
            marks: MarkBits::default(),
            tiers: FastMap::default(),
            policies: FastMap::default(),
            profiles: FastMap::default(),
            endpoints: FastMap::default(),
            endpoints_by_profile: FastMap::default(),
            local_by_profile: FastMap::default(),
            netsets: FastMap::default(),
            pools: BTreeMap::new(),
            node_addrs: BTreeMap::new(),
            skipped: BTreeMap::new(),
            policy_index: LabelIndex::new(),
            set_index: LabelIndex::new(),
            item_ids: Ids::default(),
            set_ids: Ids::default(),
            active_policies: FastSet::default(),
            active_profiles: FastSet::default(),
            set_refs: FastMap::default(),
            live_sets: FastMap::default(),
            policy_sets: FastMap::default(),
            profile_sets: FastMap::default(),
            rendered: FastMap::default(),
            endpoint_renders: 0,
            dirty: Dirty {
                statics: true,
                ..Default::default()
            },
            touched: Touched::default(),
            chain_prints: FastMap::default(),
            pending_chains: BTreeMap::new(),
            collect: None,
            set_prints: FastMap::default(),
            name_keys: (RandomState::new(), RandomState::new()),
            pending_sets: BTreeMap::new(),
            collect_sets: None,
            strings: Interner::default(),
            sweep_at: 1024,
            out: Ruleset::new(names::TABLE),
            chains: BTreeMap::new(),
        };
        for (name, action, order) in DEFAULT_TIERS {
            e.tiers.insert(
                name.to_string(),
                TierInfo {
                    order: Some(order as f64),
                    pass: action == "Pass",
                },
            );
        }
        e
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// This node's FelixConfiguration (`node.<name>` over `default`), for the settings the
    /// agent applies itself (`endpointStatusPathPrefix`, `logSeverityScreen`, ...).
    pub fn felix_configuration(&self) -> &FelixConfigurationSpec {
        &self.felix
    }

    /// Objects not enforced now, with why.
    pub fn skipped(&self) -> impl Iterator<Item = Skipped> + '_ {
        self.skipped.iter().map(|(o, r)| Skipped {
            object: o.clone(),
            reason: r.clone(),
        })
    }

    /// Records the outcome of an update: an invalid object is dropped as if deleted
    /// (Felix's `ValidationFilter`), and the reason returned and kept.
    fn outcome(&mut self, obj: ObjectRef, r: Result<(), InvalidObject>) -> Result<(), Skipped> {
        match r {
            Ok(()) => {
                self.skipped.remove(&obj);
                Ok(())
            }
            Err(e) => {
                self.skipped.insert(obj.clone(), e.0.clone());
                Err(Skipped {
                    object: obj,
                    reason: e.0,
                })
            }
        }
    }

    /// Keeps a skip decided outside the engine (an undecodable value), to report it.
    pub(crate) fn record_skip(&mut self, s: Skipped) -> Skipped {
        self.skipped.insert(s.object.clone(), s.reason.clone());
        s
    }

    // ---- sets ----

    fn add_set_ref(&mut self, spec: &SetSpec) {
        let n = self.set_refs.entry(spec.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let id = self.set_ids.intern(spec);
            // The text is our own canonical rendering of a selector that parsed.
            if let Ok(sel) = Selector::parse(spec.selector_text()) {
                self.set_index.upsert_selector(id, sel);
            }
            let mut all = Vec::new();
            for item in self.set_index.matches(&id) {
                if let Some(d) = self.item_ids.key(*item).and_then(|k| self.item_data(k)) {
                    all.extend(item_elems(spec, &d));
                }
            }
            let counts = ElemCounts::from_elems(all);
            let (mut filled, mut wide) = ([0, 0], [0, 0]);
            for e in counts.members() {
                let f = usize::from(!elem_is_v4(&e));
                filled[f] += 1;
                wide[f] += u32::from(elem_is_wide(&e));
            }
            self.live_sets.insert(
                id,
                LiveSet {
                    spec: spec.clone(),
                    names: render::set_names(spec),
                    counts,
                    filled,
                    wide,
                },
            );
            self.dirty.sets.insert(spec.clone());
        }
    }

    fn remove_set_ref(&mut self, spec: &SetSpec) {
        if let Some(n) = self.set_refs.get_mut(spec) {
            *n -= 1;
            if *n == 0 {
                self.set_refs.remove(spec);
                if let Some(id) = self.set_ids.release(spec) {
                    self.live_sets.remove(&id);
                    self.set_index.remove_selector(&id);
                }
                self.dirty.sets.insert(spec.clone());
            }
        }
    }

    /// What an item (endpoint or network set) puts into the sets that select it.
    fn item_data(&self, key: &ItemKey) -> Option<ItemData> {
        match key {
            ItemKey::Endpoint(k) => self.endpoints.get(k).map(|e| ItemData {
                nets: e.nets.to_vec(),
                ports: e.ports.to_vec(),
            }),
            ItemKey::NetSet { .. } => self.netsets.get(key).map(|n| ItemData {
                nets: n.clone(),
                ports: Vec::new(),
            }),
        }
    }

    /// Adds (or takes away) an item's elements to a live set: counted, since two items may
    /// bring the same element; the rendered set changes only when a count leaves or reaches 0.
    fn apply_elems(&mut self, set: u32, d: &ItemData, add: bool) {
        let Some(live) = self.live_sets.get_mut(&set) else {
            return;
        };
        for e in item_elems(&live.spec, d) {
            let v4 = elem_is_v4(&e);
            let changed = if add {
                live.counts.add(e)
            } else {
                live.counts.remove(&e)
            };
            if !changed {
                continue;
            }
            let before = live.shape(v4);
            let f = usize::from(!v4);
            let step = |n: &mut u32| *n = if add { *n + 1 } else { n.saturating_sub(1) };
            step(&mut live.filled[f]);
            if elem_is_wide(&e) {
                step(&mut live.wide[f]);
            }
            if before != live.shape(v4) {
                // The family's set appears, goes or changes kind (and name): it is rendered
                // whole, and the rules testing it anew.
                self.dirty.sets.insert(live.spec.clone());
                self.dirty.filled.insert(live.spec.clone());
                continue;
            }
            let Some((name, _)) = live.kernel_set(v4) else {
                continue;
            };
            let name: &str = &name;
            if let Some(out) = self.out.sets.get_mut(name) {
                if self.config.lean {
                    // No copy of the members: the fingerprint follows them, and a set to
                    // be copied whole is updated in place.
                    let key = name_key(&self.name_keys, name);
                    if let Some(print) = self.set_prints.get_mut(&key) {
                        let h = elem_hash(&e);
                        *print = if add {
                            print.wrapping_add(h)
                        } else {
                            print.wrapping_sub(h)
                        };
                    }
                    if let Some(whole) = self.pending_sets.get_mut(name) {
                        if add {
                            whole.elems.insert(e);
                        } else {
                            whole.elems.remove(&e);
                        }
                    }
                } else if add {
                    out.elems.insert(e);
                } else {
                    out.elems.remove(&e);
                }
                // A set already named whole is copied whole; else the element is recorded.
                if !self.touched.sets.contains(name) {
                    let d = self.touched.elems.entry(name.to_string()).or_default();
                    let (this, other) = if add {
                        (&mut d.added, &mut d.removed)
                    } else {
                        (&mut d.removed, &mut d.added)
                    };
                    if !other.remove(&e) {
                        this.insert(e);
                    }
                }
            }
        }
    }

    /// An item's labels or data changed: its old elements leave the sets that selected it,
    /// its new ones join the sets that select it now.
    fn set_item(&mut self, key: ItemKey, old: Option<ItemData>, new: Option<(ItemData, LabelSet)>) {
        let id = match &new {
            Some(_) => self.item_ids.intern(&key),
            None => match self.item_ids.get(&key) {
                Some(id) => id,
                None => return,
            },
        };
        if let Some(o) = &old {
            let before: Vec<u32> = self.set_index.matched_by(&id).copied().collect();
            for s in before {
                self.apply_elems(s, o, false);
            }
        }
        match new {
            Some((d, labels)) => {
                self.set_index.upsert_item(id, labels);
                let now: Vec<u32> = self.set_index.matched_by(&id).copied().collect();
                for s in now {
                    self.apply_elems(s, &d, true);
                }
            }
            None => {
                self.set_index.remove_item(&id);
                self.item_ids.release(&key);
            }
        }
    }

    // ---- activity ----

    /// Re-evaluates whether a policy is active (applies to a local endpoint) and references
    /// the sets of its current rules; the chains are re-rendered when either changed.
    fn refresh_policy(&mut self, key: &PolicyKey, content_changed: bool) {
        let active = self.policy_index.match_count(key) > 0 && self.policies.contains_key(key);
        let was = self.active_policies.contains(key);
        if active == was && !(active && content_changed) {
            return;
        }
        let new_sets: Vec<SetSpec> = if active {
            self.active_policies.insert(key.clone());
            self.policies[key].sets().cloned().collect()
        } else {
            self.active_policies.remove(key);
            Vec::new()
        };
        // The new references first, so that a set both use is kept, not re-created.
        for s in &new_sets {
            self.add_set_ref(s);
        }
        let old_sets = match active {
            false => self.policy_sets.remove(key),
            true => self.policy_sets.insert(key.clone(), new_sets),
        };
        for s in old_sets.iter().flatten() {
            self.remove_set_ref(s);
        }
        self.dirty.policies.insert(key.clone());
    }

    /// As [`Self::refresh_policy`], for a profile (active when a local endpoint lists it).
    fn refresh_profile(&mut self, name: &str, content_changed: bool) {
        let active = self.local_by_profile.get(name).copied().unwrap_or(0) > 0
            && self.profiles.contains_key(name);
        let was = self.active_profiles.contains(name);
        if active == was && !(active && content_changed) {
            return;
        }
        let new_sets: Vec<SetSpec> = if active {
            self.active_profiles.insert(name.to_string());
            self.profiles[name].sets().cloned().collect()
        } else {
            self.active_profiles.remove(name);
            Vec::new()
        };
        for s in &new_sets {
            self.add_set_ref(s);
        }
        let old_sets = match active {
            false => self.profile_sets.remove(name),
            true => self.profile_sets.insert(name.to_string(), new_sets),
        };
        for s in old_sets.iter().flatten() {
            self.remove_set_ref(s);
        }
        self.dirty.profiles.insert(name.to_string());
    }

    // ---- endpoints ----

    fn parse_endpoint(&mut self, wep: &WorkloadEndpoint) -> Result<Endpoint, InvalidObject> {
        let ns = &wep.metadata.namespace;
        let spec = &wep.spec;
        let local = spec.node == self.node;
        if local && spec.interface_name.is_empty() {
            return Err(InvalidObject(
                "a local endpoint needs an interfaceName".into(),
            ));
        }
        let mut nets = Vec::new();
        for n in &spec.ip_networks {
            let net = parse_net(n)
                .ok_or_else(|| InvalidObject(format!("ipNetworks: {n:?} is not a CIDR")))?;
            nets.push(net);
        }
        let mut spoof_ok = Vec::new();
        for n in &spec.allow_spoofed_source_prefixes {
            spoof_ok.push(parse_net(n).ok_or_else(|| {
                InvalidObject(format!("allowSpoofedSourcePrefixes: {n:?} is not a CIDR"))
            })?);
        }
        // As the WEP update processor: no pcns./pcsa. labels of its own (an endpoint must not
        // pretend to be in another namespace), the service account from the spec.
        let mut own: Labels = wep
            .metadata
            .labels
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(NAMESPACE_LABEL_PREFIX)
                    && !k.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !spec.service_account_name.is_empty() {
            own.insert(
                LABEL_SERVICE_ACCOUNT.into(),
                spec.service_account_name.clone(),
            );
        }
        if !ns.is_empty() {
            own.entry(LABEL_NAMESPACE.into())
                .or_insert_with(|| ns.clone());
        }
        let mut ports = Vec::new();
        for p in &spec.ports {
            let proto = serde_json::from_value::<Protocol>(p.protocol.clone())
                .ok()
                .and_then(|p| p.number())
                .ok_or_else(|| {
                    InvalidObject(format!(
                        "port {:?}: unknown protocol {}",
                        p.name, p.protocol
                    ))
                })?;
            ports.push((p.name.clone(), proto, p.port));
        }
        let workload = if spec.pod.is_empty() {
            &spec.workload
        } else {
            &spec.pod
        };
        let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
            nets.iter().partition(|n| matches!(n, IpNet::V4(_)));
        Ok(Endpoint {
            profiles: spec.profiles.clone().into_boxed_slice(),
            own_labels: LabelSet::new(
                own.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &mut self.strings,
            ),
            ports: ports.into_boxed_slice(),
            local: local.then(|| {
                Box::new(LocalEndpoint {
                    iface: spec.interface_name.clone(),
                    spoof_ok,
                    status: EndpointStatus {
                        orchestrator_id: spec.orchestrator.clone(),
                        workload_id: format!("{ns}/{workload}"),
                        endpoint_id: spec.endpoint.clone(),
                        iface_name: spec.interface_name.clone(),
                        mac: spec.mac.clone(),
                        ipv4_nets: v4.iter().map(ToString::to_string).collect(),
                        ipv6_nets: v6.iter().map(ToString::to_string).collect(),
                    },
                })
            }),
            nets: nets.into_boxed_slice(),
        })
    }

    /// Adds or replaces a WorkloadEndpoint (of any node: remote ones feed the sets).
    pub fn upsert_workload_endpoint(&mut self, wep: &WorkloadEndpoint) -> Result<(), Skipped> {
        let key = EndpointKey {
            namespace: self.strings.get(&wep.metadata.namespace),
            name: Arc::from(wep.metadata.name.as_str()),
        };
        let obj = object("WorkloadEndpoint", &key.namespace, &key.name);
        let parsed = self.parse_endpoint(wep);
        let r = match parsed {
            Ok(ep) => {
                self.set_endpoint(key, Some(ep));
                Ok(())
            }
            Err(e) => {
                self.set_endpoint(key, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_workload_endpoint(&mut self, namespace: &str, name: &str) {
        let key = EndpointKey {
            namespace: Arc::from(namespace),
            name: Arc::from(name),
        };
        self.skipped
            .remove(&object("WorkloadEndpoint", namespace, name));
        self.set_endpoint(key, None);
    }

    fn set_endpoint(&mut self, key: EndpointKey, ep: Option<Endpoint>) {
        let old = self.endpoints.remove(&key);
        if old.is_none() && ep.is_none() {
            return;
        }
        if let Some(o) = &old {
            for p in &o.profiles {
                if let Some(s) = self.endpoints_by_profile.get_mut(p) {
                    s.remove(&key);
                    if s.is_empty() {
                        self.endpoints_by_profile.remove(p);
                    }
                }
                if o.is_local()
                    && let Some(n) = self.local_by_profile.get_mut(p)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.local_by_profile.remove(p);
                    }
                }
            }
            if o.is_local() {
                self.dirty.endpoints.insert(key.clone());
            }
        }
        let labels = ep
            .as_ref()
            .map(|e| effective_labels(&mut self.strings, &self.profiles, e));
        // Sets.
        let data = |e: &Endpoint| ItemData {
            nets: e.nets.to_vec(),
            ports: e.ports.to_vec(),
        };
        let new = ep.as_ref().zip(labels.clone()).map(|(e, l)| (data(e), l));
        self.set_item(ItemKey::Endpoint(key.clone()), old.as_ref().map(data), new);
        // Policies (local endpoints only).
        let mut touched: Vec<PolicyKey> = Vec::new();
        match (&ep, labels) {
            (Some(e), Some(l)) if e.is_local() => {
                for (p, _) in self.policy_index.upsert_item(key.clone(), l) {
                    touched.push(p);
                }
                self.dirty.endpoints.insert(key.clone());
            }
            _ => {
                touched.extend(self.policy_index.remove_item(&key));
            }
        }
        if let Some(e) = &ep {
            for p in &e.profiles {
                self.endpoints_by_profile
                    .entry(p.clone())
                    .or_default()
                    .insert(key.clone());
                if e.is_local() {
                    *self.local_by_profile.entry(p.clone()).or_insert(0) += 1;
                }
            }
        }
        let profiles: BTreeSet<String> = old
            .iter()
            .chain(ep.iter())
            .flat_map(|e| e.profiles.iter().cloned())
            .collect();
        if let Some(e) = ep {
            self.endpoints.insert(key, e);
        }
        for p in touched {
            self.refresh_policy(&p, false);
        }
        for p in profiles {
            self.refresh_profile(&p, false);
        }
    }

    /// Re-labels the endpoints of a profile whose labels changed.
    fn relabel_profile_endpoints(&mut self, profile: &str) {
        let keys: Vec<EndpointKey> = self
            .endpoints_by_profile
            .get(profile)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let Some(ep) = self.endpoints.get(&key) else {
                continue;
            };
            let labels = effective_labels(&mut self.strings, &self.profiles, ep);
            let local = ep.is_local();
            let d = ItemData {
                nets: ep.nets.to_vec(),
                ports: ep.ports.to_vec(),
            };
            self.set_item(
                ItemKey::Endpoint(key.clone()),
                Some(d.clone()),
                Some((d, labels.clone())),
            );
            if local {
                let touched: Vec<PolicyKey> = self
                    .policy_index
                    .upsert_item(key.clone(), labels)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                if !touched.is_empty() {
                    self.dirty.endpoints.insert(key.clone());
                }
                for p in touched {
                    self.refresh_policy(&p, false);
                }
            }
        }
    }

    // ---- policies ----

    fn set_policy(&mut self, key: PolicyKey, mut p: Option<ParsedPolicy>) {
        if let Some(np) = &mut p {
            // One copy of the key's texts, whoever holds it.
            np.key = key.clone();
        }
        let old = self.policies.remove(&key);
        // Endpoints whose chain lists the policy change when where it sorts or which
        // directions it has change.
        let placement = |p: &ParsedPolicy| {
            (
                p.tier.clone(),
                p.order.map(f64::to_bits),
                p.ingress.is_some(),
                p.egress.is_some(),
            )
        };
        let moved = match (&old, &p) {
            (Some(a), Some(b)) => placement(a) != placement(b),
            _ => true,
        };
        let content_changed = old.as_ref() != p.as_ref();
        let mut affected: FastSet<EndpointKey> = FastSet::default();
        if moved {
            affected.extend(self.policy_index.matches(&key).cloned());
        }
        match &p {
            Some(np) => {
                let sel = Selector::parse(&np.selector).unwrap_or(Selector::All);
                for (ep, _) in self.policy_index.upsert_selector(key.clone(), sel) {
                    affected.insert(ep);
                }
                if moved {
                    affected.extend(self.policy_index.matches(&key).cloned());
                }
            }
            None => {
                affected.extend(self.policy_index.remove_selector(&key));
            }
        }
        if let Some(np) = p {
            self.policies.insert(key.clone(), np);
        }
        self.dirty.endpoints.extend(affected);
        self.refresh_policy(&key, content_changed);
    }

    pub fn upsert_network_policy(&mut self, p: &NetworkPolicy) -> Result<(), Skipped> {
        let key = PolicyKey {
            kind: model::PolicyKind::NetworkPolicy,
            namespace: self.strings.get(&p.metadata.namespace),
            name: p.metadata.name.as_str().into(),
        };
        let obj = object("NetworkPolicy", &key.namespace, &key.name);
        let r = match model::parse_network_policy(p) {
            Ok(np) => {
                self.set_policy(key, Some(np));
                Ok(())
            }
            Err(e) => {
                self.set_policy(key, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_network_policy(&mut self, namespace: &str, name: &str) {
        self.skipped
            .remove(&object("NetworkPolicy", namespace, name));
        self.set_policy(
            PolicyKey {
                kind: model::PolicyKind::NetworkPolicy,
                namespace: namespace.into(),
                name: name.into(),
            },
            None,
        );
    }

    pub fn upsert_global_network_policy(&mut self, p: &GlobalNetworkPolicy) -> Result<(), Skipped> {
        let key = PolicyKey {
            kind: model::PolicyKind::GlobalNetworkPolicy,
            namespace: "".into(),
            name: p.metadata.name.as_str().into(),
        };
        let obj = object("GlobalNetworkPolicy", "", &key.name);
        let r = match model::parse_global_network_policy(p) {
            Ok(np) => {
                self.set_policy(key, np);
                Ok(())
            }
            Err(e) => {
                self.set_policy(key, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_global_network_policy(&mut self, name: &str) {
        self.skipped
            .remove(&object("GlobalNetworkPolicy", "", name));
        self.set_policy(
            PolicyKey {
                kind: model::PolicyKind::GlobalNetworkPolicy,
                namespace: "".into(),
                name: name.into(),
            },
            None,
        );
    }

    // ---- profiles ----

    fn set_profile(&mut self, name: &str, p: Option<ParsedProfile>) {
        let old = self.profiles.remove(name);
        let labels_changed = old.as_ref().map(|o| &o.labels) != p.as_ref().map(|n| &n.labels);
        let content_changed = old.as_ref() != p.as_ref();
        let existed = old.is_some();
        let exists = p.is_some();
        if let Some(np) = p {
            self.profiles.insert(name.to_string(), np);
        }
        self.refresh_profile(name, content_changed);
        if existed != exists {
            // Endpoint chains jump only to profiles that exist.
            if let Some(eps) = self.endpoints_by_profile.get(name) {
                let local: Vec<EndpointKey> = eps
                    .iter()
                    .filter(|k| self.endpoints.get(*k).is_some_and(|e| e.is_local()))
                    .cloned()
                    .collect();
                self.dirty.endpoints.extend(local);
            }
        }
        if labels_changed {
            self.relabel_profile_endpoints(name);
        }
    }

    pub fn upsert_profile(&mut self, p: &Profile) -> Result<(), Skipped> {
        let name = p.metadata.name.clone();
        let obj = object("Profile", "", &name);
        let r = match model::parse_profile(p) {
            Ok(pp) => {
                self.set_profile(&name, Some(pp));
                Ok(())
            }
            Err(e) => {
                self.set_profile(&name, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_profile(&mut self, name: &str) {
        self.skipped.remove(&object("Profile", "", name));
        self.set_profile(name, None);
    }

    // ---- tiers ----

    fn set_tier(&mut self, name: &str, t: Option<TierInfo>) {
        match t {
            Some(t) => {
                self.tiers.insert(name.to_string(), t);
            }
            None => {
                self.tiers.remove(name);
            }
        }
        let local: Vec<EndpointKey> = self.rendered.keys().cloned().collect();
        self.dirty.endpoints.extend(local);
    }

    pub fn upsert_tier(&mut self, t: &Tier) -> Result<(), Skipped> {
        let name = t.metadata.name.clone();
        let obj = object("Tier", "", &name);
        let pass = match t.spec.default_action.as_deref() {
            None | Some("Deny") => Ok(false),
            Some("Pass") => Ok(true),
            Some(other) => Err(InvalidObject(format!("unknown defaultAction {other:?}"))),
        };
        let r = match pass {
            Ok(pass) if t.spec.order.is_none_or(f64::is_finite) => {
                self.set_tier(
                    &name,
                    Some(TierInfo {
                        order: t.spec.order,
                        pass,
                    }),
                );
                Ok(())
            }
            Ok(_) => {
                self.set_tier(&name, None);
                Err(InvalidObject("order is not a number".into()))
            }
            Err(e) => {
                self.set_tier(&name, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_tier(&mut self, name: &str) {
        self.skipped.remove(&object("Tier", "", name));
        self.set_tier(name, None);
    }

    // ---- network sets ----

    fn set_netset(&mut self, key: ItemKey, v: Option<(Labels, Vec<IpNet>)>) {
        let old = self.item_data(&key);
        let new = v.map(|(labels, nets)| {
            (
                ItemData {
                    nets,
                    ports: Vec::new(),
                },
                LabelSet::new(
                    labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    &mut self.strings,
                ),
            )
        });
        match &new {
            Some((d, _)) => {
                self.netsets.insert(key.clone(), d.nets.clone());
            }
            None => {
                self.netsets.remove(&key);
            }
        }
        self.set_item(key, old, new);
    }

    fn parse_netset(
        labels: &Labels,
        nets: &[String],
        namespace: &str,
    ) -> Result<(Labels, Vec<IpNet>), InvalidObject> {
        let mut l = labels.clone();
        if !namespace.is_empty() {
            l.insert(LABEL_NAMESPACE.into(), namespace.into());
        }
        let mut out = Vec::new();
        for n in nets {
            out.push(
                n.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidObject(format!("nets: {n:?} is not a CIDR")))?,
            );
        }
        Ok((l, out))
    }

    /// A namespaced NetworkSet: matched by its labels plus `projectcalico.org/namespace`.
    pub fn upsert_network_set(&mut self, s: &NetworkSet) -> Result<(), Skipped> {
        let ns = s.metadata.namespace.clone();
        let key = ItemKey::NetSet {
            namespace: ns.clone(),
            name: s.metadata.name.clone(),
        };
        let obj = object("NetworkSet", &ns, &s.metadata.name);
        let r = match Self::parse_netset(&s.metadata.labels, &s.spec.nets, &ns) {
            Ok(v) => {
                self.set_netset(key, Some(v));
                Ok(())
            }
            Err(e) => {
                self.set_netset(key, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_network_set(&mut self, namespace: &str, name: &str) {
        self.skipped.remove(&object("NetworkSet", namespace, name));
        self.set_netset(
            ItemKey::NetSet {
                namespace: namespace.into(),
                name: name.into(),
            },
            None,
        );
    }

    pub fn upsert_global_network_set(&mut self, s: &GlobalNetworkSet) -> Result<(), Skipped> {
        let key = ItemKey::NetSet {
            namespace: String::new(),
            name: s.metadata.name.clone(),
        };
        let obj = object("GlobalNetworkSet", "", &s.metadata.name);
        let r = match Self::parse_netset(&s.metadata.labels, &s.spec.nets, "") {
            Ok(v) => {
                self.set_netset(key, Some(v));
                Ok(())
            }
            Err(e) => {
                self.set_netset(key, None);
                Err(e)
            }
        };
        self.outcome(obj, r)
    }

    pub fn remove_global_network_set(&mut self, name: &str) {
        self.skipped.remove(&object("GlobalNetworkSet", "", name));
        self.set_netset(
            ItemKey::NetSet {
                namespace: String::new(),
                name: name.into(),
            },
            None,
        );
    }

    // ---- pools, nodes, configuration ----

    pub fn upsert_ip_pool(&mut self, p: &IpPool) -> Result<(), Skipped> {
        let name = p.metadata.name.clone();
        let obj = object("IPPool", "", &name);
        let r = match p.spec.network() {
            Some(net) => {
                let mode = |m: &str| !m.is_empty() && m != "Never";
                self.pools.insert(
                    name,
                    Pool {
                        net,
                        masquerade: p.spec.nat_outgoing,
                        ipip: mode(&p.spec.ipip_mode),
                        vxlan: mode(&p.spec.vxlan_mode),
                    },
                );
                Ok(())
            }
            None => {
                self.pools.remove(&name);
                Err(InvalidObject(format!(
                    "cidr {:?} is not a CIDR",
                    p.spec.cidr
                )))
            }
        };
        self.dirty.statics = true;
        self.outcome(obj, r)
    }

    pub fn remove_ip_pool(&mut self, name: &str) {
        self.skipped.remove(&object("IPPool", "", name));
        self.pools.remove(name);
        self.dirty.statics = true;
    }

    /// A node's addresses (BGP addresses and `spec.addresses`) for the tunnels' allow-list.
    pub fn upsert_node(&mut self, n: &Node) {
        let mut addrs = BTreeSet::new();
        let mut add = |s: &str| {
            let a = s.split('/').next().unwrap_or(s);
            if let Ok(ip) = a.parse::<IpAddr>() {
                addrs.insert(ip);
            }
        };
        if let Some(bgp) = &n.spec.bgp {
            add(&bgp.ipv4_address);
            add(&bgp.ipv6_address);
        }
        for a in &n.spec.addresses {
            add(&a.address);
        }
        self.node_addrs
            .insert(n.metadata.name.clone(), addrs.into_iter().collect());
        self.dirty.statics = true;
    }

    pub fn remove_node(&mut self, name: &str) {
        self.node_addrs.remove(name);
        self.dirty.statics = true;
    }

    /// FelixConfiguration `default` and `node.<this node>` (others are ignored).
    pub fn upsert_felix_configuration(&mut self, c: &FelixConfiguration) -> Result<(), Skipped> {
        let name = c.metadata.name.as_str();
        if name == "default" {
            self.felix_cluster = c.spec.clone();
        } else if name == format!("node.{}", self.node) {
            self.felix_node = c.spec.clone();
        } else {
            return Ok(());
        }
        self.apply_felix_config(name)
    }

    pub fn remove_felix_configuration(&mut self, name: &str) {
        if name == "default" {
            self.felix_cluster = FelixConfigurationSpec::default();
        } else if name == format!("node.{}", self.node) {
            self.felix_node = FelixConfigurationSpec::default();
        } else {
            return;
        }
        let _ = self.apply_felix_config(name);
    }

    fn apply_felix_config(&mut self, name: &str) -> Result<(), Skipped> {
        let layered = FelixConfigurationSpec::layered(&self.felix_cluster, &self.felix_node);
        let obj = object("FelixConfiguration", "", name);
        let mut problems = Vec::new();
        let marks = match layered.nftables_mark_mask {
            None => MarkBits::default(),
            Some(m) => MarkBits::from_mask(m).unwrap_or_else(|| {
                problems.push(format!(
                    "nftablesMarkMask {m:#x} has fewer than 5 bits; using {:#x}",
                    render::DEFAULT_MARK_MASK
                ));
                MarkBits::default()
            }),
        };
        if let Some(a) = &layered.default_endpoint_to_host_action
            && !matches!(a.as_str(), "Drop" | "Accept" | "Return")
        {
            problems.push(format!("defaultEndpointToHostAction {a:?}: using Drop"));
        }
        if marks != self.marks || layered.log_prefix != self.felix.log_prefix {
            // Rules carry mark bits and log prefixes.
            self.dirty
                .policies
                .extend(self.active_policies.iter().cloned());
            self.dirty
                .profiles
                .extend(self.active_profiles.iter().cloned());
        }
        self.marks = marks;
        self.felix = layered;
        let all: Vec<EndpointKey> = self.rendered.keys().cloned().collect();
        self.dirty.endpoints.extend(all);
        self.dirty.statics = true;
        let r = if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidObject(problems.join("; ")))
        };
        self.outcome(obj, r)
    }

    // ---- output ----

    fn put_chain(&mut self, name: String, base: Option<BaseChain>, rules: Vec<Rule>) {
        if self.collect.is_some() {
            // full_table(): every chain; in lean mode its fingerprint is recorded afresh.
            if self.config.lean {
                let print = (fingerprint(&base, &rules), rules.len());
                self.chain_prints
                    .insert(name_key(&self.name_keys, &name), print);
            }
            let lowered = Chain {
                base,
                rules: rules.iter().map(Rule::lower).collect(),
            };
            if self.config.lean && self.config.keep_text {
                // What changed is rendered only here now (see full_table).
                self.chains.insert(name.clone(), (base, rules));
            }
            if let Some(all) = &mut self.collect {
                all.insert(name, lowered);
            }
            return;
        }
        if self.config.lean {
            let print = (fingerprint(&base, &rules), rules.len());
            let key = name_key(&self.name_keys, &name);
            if self.chain_prints.get(&key) == Some(&print) {
                return;
            }
            let lowered = Chain {
                base,
                rules: rules.iter().map(Rule::lower).collect(),
            };
            self.chain_prints.insert(key, print);
            self.pending_chains.insert(name.clone(), Some(lowered));
            self.touched.chains.insert(name.clone());
        } else {
            let lowered = Chain {
                base,
                rules: rules.iter().map(Rule::lower).collect(),
            };
            if self.out.chains.get(&name) == Some(&lowered) {
                return;
            }
            self.touched.chains.insert(name.clone());
            self.out.chains.insert(name.clone(), lowered);
        }
        if self.config.keep_text {
            self.chains.insert(name, (base, rules));
        }
    }

    fn drop_chain(&mut self, name: &str) {
        if self.collect.is_some() {
            // Not in the table being collected; its text goes (keep_text).
            self.chains.remove(name);
            return;
        }
        let had = if self.config.lean {
            let had = self
                .chain_prints
                .remove(&name_key(&self.name_keys, name))
                .is_some();
            if had {
                self.pending_chains.insert(name.to_string(), None);
            }
            had
        } else {
            self.out.chains.remove(name).is_some()
        };
        if had {
            self.touched.chains.insert(name.to_string());
        }
        self.chains.remove(name);
    }

    /// The whole wanted table, chains included, rendered afresh from the current state:
    /// for the first apply and for a whole replace after a refused edit. With
    /// [`EngineConfig::lean`] it is the only way to see the chains, and it takes what was
    /// touched (the whole table carries it); without, it equals [`Self::desired`].
    pub fn full_table(&mut self) -> Ruleset {
        let lean = self.config.lean;
        let mut done = Dirty::default();
        if lean {
            // Everything goes into the table: fingerprints and set shapes are recorded
            // afresh as chains and sets are collected, and what changed since the last
            // call is rendered straight into the table (not into pending copies first: at
            // a cold start that is every chain, twice the memory).
            self.chain_prints.clear();
            self.set_prints.clear();
            self.out.sets.clear();
            // The whole table carries every change: nothing is left to copy into an edit.
            self.take_touched();
            self.collect = Some(BTreeMap::new());
            self.collect_sets = Some(BTreeMap::new());
            done = self.render_dirty();
        } else {
            self.desired();
            self.collect = Some(BTreeMap::new());
        }
        let mut all = BTreeMap::new();
        if lean {
            // The members are rendered from the set index's counts, as a new set is.
            let specs: Vec<SetSpec> = (self.live_sets.values())
                .filter(|l| !done.sets.contains(&l.spec))
                .map(|l| l.spec.clone())
                .collect();
            for spec in &specs {
                self.render_set(spec);
            }
        }
        if !done.statics {
            self.render_statics();
        }
        let policies: Vec<PolicyKey> = (self.active_policies.iter())
            .filter(|p| !done.policies.contains(*p))
            .cloned()
            .collect();
        for p in &policies {
            self.render_policy(p);
        }
        let profiles: Vec<String> = (self.active_profiles.iter())
            .filter(|p| !done.profiles.contains(*p))
            .cloned()
            .collect();
        for p in &profiles {
            self.render_profile(p);
        }
        let endpoints: Vec<EndpointKey> = (self.rendered.keys())
            .filter(|e| !done.endpoints.contains(*e))
            .cloned()
            .collect();
        for e in &endpoints {
            self.render_endpoint(e);
        }
        if let Some(c) = self.collect.take() {
            all = c;
        }
        let sets = match self.collect_sets.take() {
            Some(sets) => sets,
            None => self.out.sets.clone(),
        };
        Ruleset {
            family: self.out.family,
            name: self.out.name.clone(),
            chains: all,
            sets,
            maps: self.out.maps.clone(),
        }
    }

    fn put_set(&mut self, name: String, set: Set) {
        if self.collect_sets.is_some() {
            // full_table() (lean mode): every set, its fingerprint and shape afresh.
            self.set_prints
                .insert(name_key(&self.name_keys, &name), set_print(&set));
            (self.out.sets).insert(name.clone(), Set::new(set.key, set.interval));
            if let Some(all) = &mut self.collect_sets {
                all.insert(name, set);
            }
            return;
        }
        if self.config.lean {
            let print = set_print(&set);
            let key = name_key(&self.name_keys, &name);
            if self.out.sets.contains_key(&name) && self.set_prints.get(&key) == Some(&print) {
                return;
            }
            self.touched.elems.remove(&name);
            self.touched.sets.insert(name.clone());
            self.set_prints.insert(key, print);
            let shape = Set::new(set.key, set.interval);
            self.out.sets.insert(name.clone(), shape);
            self.pending_sets.insert(name, set);
            return;
        }
        if self.out.sets.get(&name) != Some(&set) {
            self.touched.elems.remove(&name);
            self.touched.sets.insert(name.clone());
            self.out.sets.insert(name, set);
        }
    }

    fn drop_set(&mut self, name: &str) {
        if self.collect_sets.is_some() {
            return;
        }
        self.set_prints.remove(&name_key(&self.name_keys, name));
        self.pending_sets.remove(name);
        if self.out.sets.remove(name).is_some() {
            self.touched.elems.remove(name);
            self.touched.sets.insert(name.to_string());
        }
    }

    /// The names of chains, sets and maps whose definition or elements may differ from
    /// what they were at the previous call (added, changed or removed), for a caller that
    /// plans only those. The first call names everything.
    pub fn take_touched(&mut self) -> Touched {
        self.pending_chains.clear();
        self.pending_sets.clear();
        std::mem::take(&mut self.touched)
    }

    fn render_set(&mut self, spec: &SetSpec) {
        let (n4, n6) = render::set_names(spec);
        let live = self
            .set_ids
            .get(spec)
            .and_then(|id| self.live_sets.get(&id));
        // A family's set exists only while it has members, as an interval set only while
        // it holds a prefix (render::SetMembers); its other names go.
        let mut gone = Vec::new();
        let mut put = Vec::new();
        for (v4, exact) in [(true, n4), (false, n6)] {
            let now = live.and_then(|l| l.kernel_set(v4));
            let prefixes = names::prefix_set_name(&exact);
            for name in [exact, prefixes] {
                if now.as_ref().is_none_or(|(n, _)| *n != name) {
                    gone.push(name);
                }
            }
            let (Some(live), Some((name, interval))) = (live, now) else {
                continue;
            };
            let key = match (spec.is_named_port(), v4) {
                (true, true) => SetKey::Ipv4AddrProtoPort,
                (true, false) => SetKey::Ipv6AddrProtoPort,
                (false, true) => SetKey::Ipv4Addr,
                (false, false) => SetKey::Ipv6Addr,
            };
            let mut set = Set::new(key, interval);
            set.elems = (live.counts.members())
                .filter(|e| elem_is_v4(e) == v4)
                .collect();
            put.push((name.into_owned(), set));
        }
        for name in gone {
            self.drop_set(&name);
        }
        for (name, set) in put {
            self.put_set(name, set);
        }
    }

    fn render_policy(&mut self, key: &PolicyKey) {
        let id = key.id();
        let (ci, co) = (
            names::policy_chain(true, &id),
            names::policy_chain(false, &id),
        );
        let p = match self.policies.get(key) {
            Some(p) if self.active_policies.contains(key) => p,
            _ => {
                self.drop_chain(&ci);
                self.drop_chain(&co);
                return;
            }
        };
        let ing = (p.ingress.as_ref())
            .map(|r| self.render_rules(&format!("Policy {id} ingress"), r, Direction::Ingress));
        let eg = (p.egress.as_ref())
            .map(|r| self.render_rules(&format!("Policy {id} egress"), r, Direction::Egress));
        for (name, rules) in [(ci, ing), (co, eg)] {
            match rules {
                Some(r) => self.put_chain(name, None, r),
                None => self.drop_chain(&name),
            }
        }
    }

    /// A policy's or profile's rules for one direction, with the node's mark bits, Log prefix
    /// and the sets as they are now.
    fn render_rules(&self, what: &str, rules: &[ParsedRule], direction: Direction) -> Vec<Rule> {
        let log_prefix = self.log_prefix();
        let members = LiveMembers {
            ids: &self.set_ids,
            live: &self.live_sets,
        };
        let cx = render::RenderContext {
            marks: &self.marks,
            log_prefix: &log_prefix,
            members: &members,
        };
        render::render_rules_chain(what, rules, direction, &cx)
    }

    fn render_profile(&mut self, name: &str) {
        let (ci, co) = (
            names::profile_chain(true, name),
            names::profile_chain(false, name),
        );
        let p = match self.profiles.get(name) {
            Some(p) if self.active_profiles.contains(name) => p,
            _ => {
                self.drop_chain(&ci);
                self.drop_chain(&co);
                return;
            }
        };
        let ing = self.render_rules(
            &format!("Profile {name} ingress"),
            &p.ingress,
            Direction::Ingress,
        );
        let eg = self.render_rules(
            &format!("Profile {name} egress"),
            &p.egress,
            Direction::Egress,
        );
        self.put_chain(ci, None, ing);
        self.put_chain(co, None, eg);
    }

    fn log_prefix(&self) -> String {
        self.felix
            .log_prefix
            .clone()
            .unwrap_or_else(|| self.config.log_prefix.clone())
    }

    fn tier_info(&self, name: &str) -> TierInfo {
        self.tiers.get(name).copied().unwrap_or(TierInfo {
            order: None,
            pass: false,
        })
    }

    /// The tiers of an endpoint, each with its policies for one direction, in Felix's order
    /// (`policy_sorter.go`).
    fn endpoint_tiers(&self, key: &EndpointKey, ingress: bool) -> Vec<(String, bool, Vec<String>)> {
        let mut pols: Vec<&ParsedPolicy> = self
            .policy_index
            .matched_by(key)
            .filter_map(|k| self.policies.get(k))
            .filter(|p| {
                if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                }
            })
            .collect();
        pols.sort_by(|a, b| {
            let (ta, tb) = (self.tier_info(&a.tier), self.tier_info(&b.tier));
            order_cmp(ta.order, tb.order)
                .then_with(|| a.tier.cmp(&b.tier))
                .then_with(|| order_cmp(a.order, b.order))
                .then_with(|| a.key.name.cmp(&b.key.name))
                .then_with(|| a.key.namespace.cmp(&b.key.namespace))
                .then_with(|| a.key.kind.cmp(&b.key.kind))
        });
        let mut out: Vec<(String, bool, Vec<String>)> = Vec::new();
        for p in pols {
            let chain = names::policy_chain(ingress, &p.key.id());
            match out.last_mut() {
                Some((t, _, chains)) if *t == p.tier => chains.push(chain),
                _ => out.push((p.tier.clone(), self.tier_info(&p.tier).pass, vec![chain])),
            }
        }
        out
    }

    fn render_endpoint(&mut self, key: &EndpointKey) {
        self.endpoint_renders += 1;
        let now = self
            .endpoints
            .get(key)
            .and_then(|e| e.local.as_ref())
            .map(|l| l.iface.clone());
        if let Some(old_iface) = self.rendered.remove(key)
            && now.as_ref() != Some(&old_iface)
        {
            self.drop_chain(&names::endpoint_chain(true, &old_iface));
            self.drop_chain(&names::endpoint_chain(false, &old_iface));
            for m in [names::MAP_TO_WL, names::MAP_FROM_WL] {
                if let Some(map) = self.out.maps.get_mut(m) {
                    map.elems.remove(&old_iface);
                    self.touched.maps.insert(m.to_string());
                }
            }
        }
        let Some(ep) = self.endpoints.get(key) else {
            return;
        };
        let Some(local) = &ep.local else {
            return;
        };
        let iface = local.iface.clone();
        let profiles: Vec<String> = ep.profiles.to_vec();
        let sources: Vec<IpNet> = ep.nets.iter().chain(&local.spoof_ok).copied().collect();
        let invalid_check = self.felix.disable_conntrack_invalid_check != Some(true);
        let vxlan_port = self.felix.vxlan_port.unwrap_or(4789);
        for ingress in [true, false] {
            let tiers = self.endpoint_tiers(key, ingress);
            let tier_chains: Vec<TierChains<'_>> = tiers
                .iter()
                .map(|(name, pass, chains)| TierChains {
                    name,
                    pass_by_default: *pass,
                    chains: chains.clone(),
                })
                .collect();
            let prof_chains: Vec<String> = profiles
                .iter()
                .filter(|p| self.profiles.contains_key(*p))
                .map(|p| names::profile_chain(ingress, p))
                .collect();
            let opts = EndpointChainOptions {
                ingress,
                sources: sources.clone(),
                invalid_check,
                drop_vxlan: (self.felix.allow_vxlan_packets_from_workloads != Some(true))
                    .then_some(vxlan_port),
                drop_ipip: self.felix.allow_ipip_packets_from_workloads != Some(true),
            };
            let rules =
                render::render_endpoint_chain(&tier_chains, &prof_chains, &opts, &self.marks);
            let name = names::endpoint_chain(ingress, &iface);
            self.put_chain(name.clone(), None, rules);
            let map = if ingress {
                names::MAP_TO_WL
            } else {
                names::MAP_FROM_WL
            };
            let elems = &mut self.out.maps.entry(map.to_string()).or_default().elems;
            if elems.get(&iface) != Some(&Verdict::Goto(name.clone())) {
                elems.insert(iface.clone(), Verdict::Goto(name));
                self.touched.maps.insert(map.to_string());
            }
        }
        self.rendered.insert(key.clone(), iface);
    }

    fn render_statics(&mut self) {
        let m = self.marks;
        let filter = |hook| {
            Some(BaseChain {
                kind: ChainKind::Filter,
                hook,
                priority: 0,
                policy: ChainPolicy::Accept,
            })
        };
        let wl = |output: bool, p: &str| Match::IfName {
            output,
            name: format!("{p}*"),
            neq: false,
        };
        let prefixes = self.config.interface_prefixes.clone();
        // FORWARD (static.go StaticFilterForwardChains + StaticFilterForwardAppendRules).
        let mut fwd = vec![Rule::new(
            vec![],
            vec![Action::SetMark {
                set: 0,
                clear: m.all(),
            }],
        )];
        for p in &prefixes {
            fwd.push(Rule::new(
                vec![wl(false, p)],
                vec![verdict(Verdict::Jump(names::CHAIN_FROM_WL_DISPATCH.into()))],
            ));
            fwd.push(Rule::new(
                vec![wl(true, p)],
                vec![verdict(Verdict::Jump(names::CHAIN_TO_WL_DISPATCH.into()))],
            ));
        }
        fwd.push(
            Rule::new(
                vec![render::mark_set(m.accept)],
                vec![verdict(Verdict::Accept)],
            )
            .comment("Policy explicitly accepted packet."),
        );
        self.put_chain(names::CHAIN_FORWARD.into(), filter(ChainHook::Forward), fwd);
        // Dispatch (dispatch.go, nftables' verdict maps).
        for (chain, output) in [
            (names::CHAIN_FROM_WL_DISPATCH, false),
            (names::CHAIN_TO_WL_DISPATCH, true),
        ] {
            if !self.out.maps.contains_key(chain) {
                self.out.maps.insert(chain.to_string(), Default::default());
                self.touched.maps.insert(chain.to_string());
            }
            let rules = vec![
                Rule::new(
                    vec![],
                    vec![Action::Vmap {
                        output,
                        map: chain.to_string(),
                    }],
                ),
                Rule::new(vec![], vec![verdict(Verdict::Drop)]).comment("Unknown interface"),
            ];
            self.put_chain(chain.to_string(), None, rules);
        }
        // INPUT (static.go filterInputChain).
        let (mut ipip, mut vxlan4, mut vxlan6) = (false, false, false);
        for p in self.pools.values() {
            let v4 = matches!(p.net, IpNet::V4(_));
            ipip |= p.ipip && v4;
            vxlan4 |= p.vxlan && v4;
            vxlan6 |= p.vxlan && !v4;
        }
        let hosts4 = names::set_name(true, "all-hosts-net");
        let hosts6 = names::set_name(false, "all-hosts-net");
        let mut input = Vec::new();
        if ipip {
            let proto = Match::Proto {
                proto: 4,
                neq: false,
            };
            input.push(
                Rule::new(
                    vec![
                        Match::Family { v4: true },
                        proto.clone(),
                        Match::AddrSet {
                            source: true,
                            v4: true,
                            set: hosts4.clone(),
                            neq: false,
                        },
                    ],
                    vec![verdict(Verdict::Accept)],
                )
                .comment("Allow IPIP packets from Calico hosts"),
            );
            input.push(
                Rule::new(
                    vec![Match::Family { v4: true }, proto],
                    vec![verdict(Verdict::Drop)],
                )
                .comment("Drop IPIP packets from non-Calico hosts"),
            );
        }
        let vxlan_port = self.felix.vxlan_port.unwrap_or(4789);
        for (on, v4, set, fam) in [
            (vxlan4, true, &hosts4, "IPv4"),
            (vxlan6, false, &hosts6, "IPv6"),
        ] {
            if !on {
                continue;
            }
            let base = vec![
                Match::Family { v4 },
                Match::Proto {
                    proto: nft::IPPROTO_UDP,
                    neq: false,
                },
                Match::Ports {
                    dst: true,
                    first: vxlan_port,
                    last: vxlan_port,
                    neq: false,
                },
            ];
            let mut allow = base.clone();
            allow.push(Match::AddrSet {
                source: true,
                v4,
                set: set.clone(),
                neq: false,
            });
            allow.push(Match::LocalDaddr);
            input.push(
                Rule::new(allow, vec![verdict(Verdict::Accept)])
                    .comment(format!("Allow {fam} VXLAN packets from allowed hosts")),
            );
            let mut deny = base;
            deny.push(Match::LocalDaddr);
            input.push(
                Rule::new(deny, vec![verdict(Verdict::Drop)])
                    .comment(format!("Drop {fam} VXLAN packets from non-allowed hosts")),
            );
        }
        for p in &prefixes {
            input.push(Rule::new(
                vec![wl(false, p)],
                vec![verdict(Verdict::Goto(names::CHAIN_WL_TO_HOST.into()))],
            ));
        }
        self.put_chain(names::CHAIN_INPUT.into(), filter(ChainHook::Input), input);
        // Workload to host (static.go filterWorkloadToHostChain).
        let mut wl_to_host: Vec<Rule> = [130u8, 131, 132, 133, 135, 136]
            .iter()
            .map(|t| {
                Rule::new(
                    vec![
                        Match::Family { v4: false },
                        Match::Proto {
                            proto: nft::IPPROTO_ICMPV6,
                            neq: false,
                        },
                        Match::Icmp {
                            v4: false,
                            icmp_type: *t,
                            code: None,
                            neq: false,
                        },
                    ],
                    vec![verdict(Verdict::Accept)],
                )
                .comment("Allow IPv6 neighbour discovery and MLD")
            })
            .collect();
        wl_to_host.push(Rule::new(
            vec![],
            vec![verdict(Verdict::Jump(names::CHAIN_FROM_WL_DISPATCH.into()))],
        ));
        let action = match self.felix.default_endpoint_to_host_action.as_deref() {
            Some("Accept") => Verdict::Accept,
            Some("Return") => Verdict::Return,
            _ => Verdict::Drop,
        };
        wl_to_host.push(
            Rule::new(vec![], vec![verdict(action)])
                .comment("Configured DefaultEndpointToHostAction"),
        );
        self.put_chain(names::CHAIN_WL_TO_HOST.into(), None, wl_to_host);
        // OUTPUT (static.go filterOutputChain): host to workload is not policed.
        let output: Vec<Rule> = prefixes
            .iter()
            .map(|p| {
                Rule::new(vec![wl(true, p)], vec![verdict(Verdict::Return)])
                    .comment("Host to workload: no policy, as Felix's cali-OUTPUT")
            })
            .collect();
        self.put_chain(
            names::CHAIN_OUTPUT.into(),
            filter(ChainHook::Output),
            output,
        );
        // NAT (static.go StaticNATPostroutingChains, nat-outgoing).
        self.put_chain(
            names::CHAIN_NAT_POSTROUTING.into(),
            Some(BaseChain {
                kind: ChainKind::Nat,
                hook: ChainHook::Postrouting,
                priority: nft::PRIORITY_SRCNAT + 10,
                policy: ChainPolicy::Accept,
            }),
            vec![Rule::new(
                vec![],
                vec![verdict(Verdict::Jump(names::CHAIN_NAT_OUTGOING.into()))],
            )],
        );
        let mut nat = Vec::new();
        for v4 in [true, false] {
            nat.push(
                Rule::new(
                    vec![
                        Match::Family { v4 },
                        Match::AddrSet {
                            source: true,
                            v4,
                            set: names::set_name(v4, "masq-ipam-pools"),
                            neq: false,
                        },
                        Match::AddrSet {
                            source: false,
                            v4,
                            set: names::set_name(v4, "all-ipam-pools"),
                            neq: true,
                        },
                    ],
                    vec![Action::Masquerade],
                )
                .comment("Masquerade traffic of natOutgoing pools leaving the pools"),
            );
        }
        self.put_chain(names::CHAIN_NAT_OUTGOING.into(), None, nat);
        // Fixed sets.
        for v4 in [true, false] {
            let fam = |n: &IpNet| matches!(n, IpNet::V4(_)) == v4;
            let all = self.pools.values().map(|p| p.net).filter(fam);
            self.put_set(names::set_name(v4, "all-ipam-pools"), Set::nets(v4, all));
            let masq = self
                .pools
                .values()
                .filter(|p| p.masquerade)
                .map(|p| p.net)
                .filter(fam);
            self.put_set(names::set_name(v4, "masq-ipam-pools"), Set::nets(v4, masq));
            let hosts = self
                .node_addrs
                .values()
                .flatten()
                .map(|a| host_net(*a))
                .filter(fam);
            self.put_set(names::set_name(v4, "all-hosts-net"), Set::nets(v4, hosts));
        }
    }

    /// Brings the wanted table up to date with every update so far and returns it. Only
    /// what the updates touched is re-rendered.
    pub fn desired(&mut self) -> &Ruleset {
        self.render_dirty();
        &self.out
    }

    /// Renders what changed since the last call; returns what that was.
    fn render_dirty(&mut self) -> Dirty {
        if self.strings.len() > self.sweep_at {
            self.strings.sweep();
            self.sweep_at = (self.strings.len() * 2).max(1024);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        if !dirty.filled.is_empty() {
            // The chains using a set whose family appeared or went render anew.
            let uses = |sets: &Vec<SetSpec>| sets.iter().any(|s| dirty.filled.contains(s));
            let policies: Vec<PolicyKey> = (self.policy_sets.iter())
                .filter(|(_, sets)| uses(sets))
                .map(|(k, _)| k.clone())
                .collect();
            let profiles: Vec<String> = (self.profile_sets.iter())
                .filter(|(_, sets)| uses(sets))
                .map(|(k, _)| k.clone())
                .collect();
            dirty.policies.extend(policies);
            dirty.profiles.extend(profiles);
        }
        if dirty.statics {
            self.render_statics();
        }
        for s in &dirty.sets {
            self.render_set(s);
        }
        for p in &dirty.policies {
            self.render_policy(p);
        }
        for p in &dirty.profiles {
            self.render_profile(p);
        }
        // Endpoints that went first, so that a new endpoint reusing an interface name is not
        // undone by the removal of the old one.
        let (gone, present): (Vec<&EndpointKey>, Vec<&EndpointKey>) = dirty
            .endpoints
            .iter()
            .partition(|k| !self.endpoints.get(*k).is_some_and(|e| e.is_local()));
        for e in gone.into_iter().chain(present) {
            self.render_endpoint(e);
        }
        dirty
    }

    /// Brings the wanted table up to date and copies what changed since the last call (or
    /// since [`Self::take_touched`]) into an edit of the table the kernel holds, entry by
    /// entry (set members one by one), so that the edit's transaction costs what changed,
    /// not the table's size.
    ///
    /// The first apply is a whole replace (`ProgrammedTable::sync` with
    /// [`Self::full_table`], then [`Self::take_touched`] to start counting from it). If the
    /// commit (or this call) fails, the edit is undone but these changes are taken: sync
    /// [`Self::full_table`] again.
    pub fn write_changes(&mut self, edit: &mut Edit<'_>) -> Result<Touched, NfError> {
        self.desired();
        let mut pending = std::mem::take(&mut self.pending_chains);
        let mut pending_sets = std::mem::take(&mut self.pending_sets);
        let t = self.take_touched();
        for c in &t.chains {
            let chain = match pending.remove(c) {
                Some(p) => p,
                None => self.out.chains.get(c).cloned(),
            };
            match chain {
                Some(chain) => edit.put_chain(c, chain),
                None => edit.remove_chain(c),
            }
        }
        for s in &t.sets {
            let wanted = if self.config.lean {
                match pending_sets.remove(s) {
                    Some(set) => Some(set),
                    // Every set put since the last take is pending whole.
                    None if self.out.sets.contains_key(s) => {
                        return Err(NfError::Input(format!("set {s}: no members to copy")));
                    }
                    None => None,
                }
            } else {
                self.out.sets.get(s).cloned()
            };
            match wanted {
                Some(set) => match edit.set_mut(s) {
                    Some(live) if live.key == set.key && live.interval == set.interval => {
                        live.elems = set.elems
                    }
                    _ => edit.put_set(s, set),
                },
                None => edit.remove_set(s),
            }
        }
        for (s, d) in &t.elems {
            for e in &d.removed {
                edit.remove_elem(s, e)?;
            }
            for e in &d.added {
                edit.add_elem(s, *e)?;
            }
        }
        for m in &t.maps {
            match self.out.maps.get(m) {
                Some(map) => edit.put_map(m, map.clone()),
                None => edit.remove_map(m),
            }
        }
        Ok(t)
    }

    /// Whether updates are waiting for [`Self::desired`].
    pub fn has_changes(&self) -> bool {
        let d = &self.dirty;
        d.statics
            || !d.sets.is_empty()
            || !d.policies.is_empty()
            || !d.profiles.is_empty()
            || !d.endpoints.is_empty()
    }

    /// The local endpoints whose rules the last [`Self::desired`] holds: what their status
    /// files say (write them after the table is applied; remove the others).
    pub fn programmed_endpoints(&self) -> Vec<EndpointStatus> {
        let mut out: Vec<EndpointStatus> = self
            .rendered
            .keys()
            .filter_map(|k| self.endpoints.get(k))
            .filter_map(|e| e.local.as_ref().map(|l| l.status.clone()))
            .collect();
        out.sort();
        out
    }

    /// Gives back the room the calculation's lists grew into during a cold start (they
    /// grow one member at a time), so that what stays is what is held. Costs one pass over
    /// them: call it once the first table is in.
    pub fn shrink_to_fit(&mut self) {
        self.set_index.shrink_to_fit();
        self.policy_index.shrink_to_fit();
        for live in self.live_sets.values_mut() {
            for family in &mut live.counts.members {
                family.shrink_to_fit();
            }
        }
    }

    /// Changes whenever an endpoint is rendered (added, changed, removed): while it stays the
    /// same, so does [`Self::programmed_endpoints`].
    pub fn endpoint_generation(&self) -> u64 {
        self.endpoint_renders
    }

    /// Counts for metrics: (local endpoints, active policies, active profiles, sets, rules).
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            local_endpoints: self.rendered.len(),
            endpoints: self.endpoints.len(),
            active_policies: self.active_policies.len(),
            active_profiles: self.active_profiles.len(),
            sets: self.out.sets.len(),
            chains: if self.config.lean {
                self.chain_prints.len()
            } else {
                self.out.chains.len()
            },
            rules: if self.config.lean {
                self.chain_prints.values().map(|(_, n)| n).sum()
            } else {
                self.out.chains.values().map(|c| c.rules.len()).sum()
            },
        }
    }

    /// The wanted table in nft's syntax (stable: maps, sets, chains by name), as
    /// `nft list table inet calico` would show it. Call after [`Self::desired`]. Chains are
    /// shown only with [`EngineConfig::keep_text`] (their typed rules cost memory).
    pub fn text(&self) -> String {
        let mut out = format!("table inet {} {{\n", self.out.name);
        for (name, map) in &self.out.maps {
            out.push_str(&ir::map_text(name, map));
        }
        for (name, set) in &self.out.sets {
            out.push_str(&ir::set_text(name, set));
        }
        for (name, (base, rules)) in &self.chains {
            let _ = writeln!(out, "\tchain {name} {{");
            if let Some(b) = base {
                let _ = writeln!(out, "\t\t{}", ir::base_text(b));
            }
            for r in rules {
                let _ = writeln!(out, "\t\t{r}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }
}

/// Names in the wanted table that changed (see [`PolicyEngine::take_touched`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub chains: BTreeSet<String>,
    /// Sets added, removed or to be copied whole.
    pub sets: BTreeSet<String>,
    pub maps: BTreeSet<String>,
    /// Members added to or removed from sets not in `sets`.
    pub elems: BTreeMap<String, ElemDelta>,
}

/// The members a set gained and lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElemDelta {
    pub added: BTreeSet<SetElem>,
    pub removed: BTreeSet<SetElem>,
}

/// Sizes of the wanted table, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub local_endpoints: usize,
    /// Workload endpoints known cluster-wide (they feed selector sets).
    pub endpoints: usize,
    pub active_policies: usize,
    pub active_profiles: usize,
    pub sets: usize,
    pub chains: usize,
    pub rules: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(i: u8) -> SetElem {
        SetElem::Net(IpNet::from(IpAddr::from([10, 0, 0, i])))
    }

    /// Members are counted: an element two items bring stays until both are gone, and
    /// only the first add and the last removal change the set.
    #[test]
    fn set_members_are_counted() {
        let mut c = ElemCounts::from_elems(vec![host(3), host(1), host(3)]);
        assert_eq!(c.members().collect::<Vec<_>>(), [host(1), host(3)]);
        assert!(!c.remove(&host(3)), "one item still brings it");
        assert!(c.remove(&host(3)));
        assert!(!c.remove(&host(3)), "not a member: nothing to remove");
        assert!(c.add(host(2)));
        assert!(!c.add(host(2)));
        assert!(c.add(host(0)));
        assert_eq!(c.members().collect::<Vec<_>>(), [host(0), host(1), host(2)]);
        // IPv6 members are kept apart (the IPv4 ones stay packed), listed after.
        let v6 = SetElem::Net(IpNet::from(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1])));
        assert!(c.add(v6));
        assert!(!c.add(v6));
        assert!(c.add(host(5)));
        assert_eq!(
            c.members().collect::<Vec<_>>(),
            [host(0), host(1), host(2), host(5), v6]
        );
        assert!(!c.remove(&v6));
        assert!(c.remove(&v6));
        assert_eq!(c.members().count(), 4);
    }
}
