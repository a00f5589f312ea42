//! `get`, `apply`, `create` and `delete` against the datastore.
//!
//! Writes follow calicoctl's resource managers and libcalico-go's etcdv3 backend: the whole
//! object is stored with `kind`/`apiVersion` and without `resourceVersion` (the key's mod
//! revision is the version); create keeps only name, labels and annotations from the
//! document and sets a new `uid` and `creationTimestamp`; update keeps the stored metadata
//! but takes labels and annotations from the document; an update with a `resourceVersion`
//! must match the stored one. Every write is a guarded etcd transaction.
//!
//! The policy kinds follow libcalico-go's clients: a policy's tier must exist (the default
//! tiers always count: they are created before the first write), Calico's defaults are
//! written (`calico_validation::default_*`) and the v3 validator runs on the result;
//! deleting a built-in or non-empty tier, `knp.default.*` policies and the
//! `projectcalico-default-allow` profile are refused with Calico's messages.
//!
//! One deliberate difference: every document is decoded and validated (against the
//! datastore's current state and the documents before it) before anything is written, so a
//! file with one bad document changes nothing.

use super::print::{self, Fetched, Format, TableOpts};
use super::validate::{self, PoolContext};
use super::{DEFAULT_ALLOW_PROFILE, DEFAULT_NAMESPACE, Kind, Object, id_in};
use crate::error::{CmdError, CmdResult};
use calico_datastore::model::bgp::{BgpConfiguration, BgpPeer};
use calico_datastore::model::policy::{
    FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, Tier,
};
use calico_datastore::model::{
    ClusterInformation, ClusterInformationSpec, DEFAULT_TIERS, IpPool, IpamConfiguration, Node,
    Profile, ProfileSpec, Resource, Rule, WorkloadEndpoint, default_tier, keys, new_cluster_guid,
};
use calico_datastore::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The datastore and the clock (replaceable in tests).
pub struct Ctx<'a> {
    pub store: &'a dyn KvStore,
    pub now: fn() -> SystemTime,
}

impl<'a> Ctx<'a> {
    pub fn new(store: &'a dyn KvStore) -> Self {
        Ctx {
            store,
            now: SystemTime::now,
        }
    }
}

/// Calico's default AS number, shown for Nodes without their own when there is no global
/// BGPConfiguration.
pub const DEFAULT_ASN: u32 = 64512;

/// `resource does not exist: Kind(name) with error: <nil>` (`Kind(namespace/name)` for a
/// namespaced kind).
pub fn does_not_exist(kind: Kind, namespace: &str, name: &str) -> String {
    format!(
        "resource does not exist: {} with error: <nil>",
        id_in(kind, namespace, name)
    )
}

/// The store's current revision (an etcd transaction without writes does not create one).
fn current_revision(store: &dyn KvStore) -> CmdResult<i64> {
    match store.txn(&[], &[])? {
        TxnOutcome::Applied(rev) => Ok(rev),
        TxnOutcome::Conflict(_) => Ok(0),
    }
}

/// A stored object of `kind` read as `get` shows it (IPPool defaults applied, as
/// `convertIpPoolFromStorage` does on read). `None` if the value does not decode.
pub fn read_object(kind: Kind, kv: &Kv) -> Option<Object> {
    match kind {
        Kind::IpPool => {
            let mut p = IpPool::from_kv(kv).ok()?;
            p.spec = p.spec.with_defaults();
            Some(Object::IpPool(p))
        }
        Kind::Node => {
            let mut n = Node::from_kv(kv).ok()?;
            n.status.get_or_insert_with(|| Value::Object(Map::new()));
            Some(Object::Node(n))
        }
        Kind::IpamConfiguration => IpamConfiguration::from_kv(kv)
            .ok()
            .map(Object::IpamConfiguration),
        Kind::WorkloadEndpoint => WorkloadEndpoint::from_kv(kv)
            .ok()
            .map(|w| Object::WorkloadEndpoint(Box::new(w))),
        Kind::Profile => Profile::from_kv(kv)
            .ok()
            .map(|p| Object::Profile(Box::new(p))),
        Kind::BgpConfiguration => BgpConfiguration::from_kv(kv)
            .ok()
            .map(|c| Object::BgpConfiguration(Box::new(c))),
        Kind::BgpPeer => BgpPeer::from_kv(kv)
            .ok()
            .map(|p| Object::BgpPeer(Box::new(p))),
        // The clients add the tier label to a policy read without one
        // (`defaultTierLabelIfMissing`).
        Kind::NetworkPolicy => NetworkPolicy::from_kv(kv).ok().map(|mut p| {
            tier_label_if_missing(&mut p.metadata);
            Object::NetworkPolicy(Box::new(p))
        }),
        Kind::GlobalNetworkPolicy => GlobalNetworkPolicy::from_kv(kv).ok().map(|mut p| {
            tier_label_if_missing(&mut p.metadata);
            Object::GlobalNetworkPolicy(Box::new(p))
        }),
        // `status` is a struct in Go: always there, `{}` when empty.
        Kind::Tier => Tier::from_kv(kv).ok().map(|mut t| {
            t.status.get_or_insert_with(|| Value::Object(Map::new()));
            Object::Tier(Box::new(t))
        }),
        Kind::NetworkSet => NetworkSet::from_kv(kv)
            .ok()
            .map(|n| Object::NetworkSet(Box::new(n))),
        Kind::GlobalNetworkSet => GlobalNetworkSet::from_kv(kv)
            .ok()
            .map(|n| Object::GlobalNetworkSet(Box::new(n))),
        Kind::FelixConfiguration => FelixConfiguration::from_kv(kv)
            .ok()
            .map(|c| Object::FelixConfiguration(Box::new(c))),
    }
}

/// `defaultTierLabelIfMissing`: `projectcalico.org/tier: default` when there is no tier label.
fn tier_label_if_missing(meta: &mut calico_datastore::model::ObjectMeta) {
    meta.labels
        .entry(calico_validation::LABEL_TIER.into())
        .or_insert_with(|| calico_validation::DEFAULT_TIER.into());
}

/// The prefix of the policies the Kubernetes controllers write in etcd mode
/// (`converter.KubernetesNetworkPolicyEtcdPrefix`); calicoctl refuses to manage them.
pub const KNP_PREFIX: &str = "knp.default.";

/// calicoctl's refusal of a `knp.default.*` NetworkPolicy (`operation` as resourcemgr words it).
pub fn knp_refusal(operation: &str, id: &str) -> String {
    format!(
        "operation {operation} is not supported on {id}: kubernetes network policies must be \
         managed through the kubernetes API"
    )
}

/// clientv3/profile.go's refusals for `projectcalico-default-allow`.
fn default_allow_refusal(operation: &str) -> String {
    let p = DEFAULT_ALLOW_PROFILE;
    match operation {
        "Create" => format!(
            "resource already exists: {p} with error: {p} already exists. The profile \"{p}\" is \
             default provided by Calico"
        ),
        op => format!(
            "operation {op} is not supported on {p}: The profile \"{p}\" is a default provided \
             by Calico and cannot be {}",
            if op == "Delete" { "deleted" } else { "updated" }
        ),
    }
}

/// Go's `sort.SliceStable` of calicoctl's tier list: by order, tiers without one last.
fn sort_tiers(items: &mut [Object]) {
    let order = |o: &Object| match o {
        Object::Tier(t) => t.spec.order,
        _ => None,
    };
    items.sort_by(|a, b| match (order(a), order(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// `projectcalico-default-allow`: never stored, but the etcd backend returns it for its name
/// and appends it to every profile list, with resourceVersion `1`.
pub fn default_allow_profile() -> Object {
    let mut p = Profile::new(
        Kind::Profile.name(),
        DEFAULT_ALLOW_PROFILE,
        ProfileSpec {
            ingress: vec![Rule::allow()],
            egress: vec![Rule::allow()],
            ..ProfileSpec::default()
        },
    );
    p.metadata.resource_version = "1".into();
    Object::Profile(Box::new(p))
}

fn global_asn(store: &dyn KvStore) -> CmdResult<u32> {
    // Read as the typed resource: an AS number may be stored as text (`"1.10"`).
    let kv = store.get(&Kind::BgpConfiguration.key("", "default"))?;
    Ok(kv
        .and_then(|kv| BgpConfiguration::from_kv(&kv).ok())
        .and_then(|c| c.spec.as_number)
        .map_or(DEFAULT_ASN, |a| a.0))
}

/// Which namespaces `get` reads: `-n <ns>` and `-A`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// `-n <ns>` (an empty namespace counts as not given).
    pub namespace: Option<String>,
    /// `-A`.
    pub all: bool,
}

impl Namespaces {
    fn given(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|ns| !ns.is_empty())
    }

    /// Either flag was given: a namespaced kind's table then starts with NAMESPACE.
    pub fn shown(&self) -> bool {
        self.all || self.given().is_some()
    }

    /// calicoctl's `handleNamespace` (and `GetOrList`) check: the error each requested
    /// resource fails with, if the flags do not fit the kind.
    fn misuse(&self, kind: Kind, named: bool) -> Option<String> {
        if !kind.namespaced() {
            return self
                .shown()
                .then(|| format!("{} is not namespaced", kind.name()));
        }
        if self.all && self.given().is_some() {
            return Some(
                "cannot use both --namespace and --all-namespaces flags at the same time".into(),
            );
        }
        (self.all && named)
            .then(|| "cannot use --all-namespace flag for getting a single resource".into())
    }

    /// The namespace read for a namespaced kind: `None` for all of them.
    fn read(&self) -> Option<&str> {
        if self.all {
            None
        } else {
            Some(self.given().unwrap_or(DEFAULT_NAMESPACE))
        }
    }
}

/// `calicoctl get <kind> [<name>...]`: prints what was found, then fails naming what was not.
pub fn get(
    ctx: &Ctx,
    kind: Kind,
    names: &[String],
    namespaces: &Namespaces,
    format: Format,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    if let Some(e) = namespaces.misuse(kind, !names.is_empty()) {
        // calicoctl fails each requested resource the same way.
        return Err(CmdError::Failed(vec![e; names.len().max(1)].join("\n")));
    }
    let namespace = namespaces.read();
    let mut fetched = Vec::new();
    let mut errors = Vec::new();
    if names.is_empty() {
        let kvs = ctx.store.list(&kind.list_prefix(namespace))?;
        let revision = current_revision(ctx.store)?;
        let mut items: Vec<Object> = kvs.iter().filter_map(|kv| read_object(kind, kv)).collect();
        if kind == Kind::Profile {
            items.push(default_allow_profile());
        }
        if kind == Kind::Tier {
            sort_tiers(&mut items);
        }
        fetched.push(Fetched::List {
            kind,
            revision,
            items,
        });
    } else {
        let ns = namespace.unwrap_or_default();
        let reads: Vec<Read> = names.iter().map(|n| Read::Key(kind.key(ns, n))).collect();
        let found = ctx.store.read(&reads)?;
        for (name, kvs) in names.iter().zip(found) {
            let obj = if kind == Kind::Profile && name == DEFAULT_ALLOW_PROFILE {
                Some(default_allow_profile())
            } else {
                kvs.first().and_then(|kv| read_object(kind, kv))
            };
            match obj {
                Some(o) => fetched.push(Fetched::One(Box::new(o))),
                None => errors.push(does_not_exist(kind, ns, name)),
            }
        }
    }
    let global_asn = if format == Format::Wide && kind == Kind::Node {
        global_asn(ctx.store)?
    } else {
        DEFAULT_ASN
    };
    let opts = TableOpts {
        global_asn,
        namespace_column: namespaces.shown(),
    };
    if !fetched.is_empty() || errors.is_empty() {
        out.write_all(print::render(&fetched, format, opts).as_bytes())?;
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CmdError::Failed(errors.join("\n")))
    }
}

/// apply or create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Apply,
    Create,
    /// Update an existing resource; a missing one is an error.
    Replace,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Apply => "apply",
            Action::Create => "create",
            Action::Replace => "replace",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Action::Apply => "applied",
            Action::Create => "created",
            Action::Replace => "replaced",
        }
    }
}

/// The kinds whose checks are `calico_validation`'s.
fn is_policy_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::NetworkPolicy
            | Kind::GlobalNetworkPolicy
            | Kind::Tier
            | Kind::NetworkSet
            | Kind::GlobalNetworkSet
            | Kind::Profile
            | Kind::FelixConfiguration
    )
}

/// calicoctl's `handleNamespace` for the documents of apply, create, replace and delete:
/// `-n` fills in a namespaced document's missing namespace (`default` without `-n`) and
/// must agree with one it has; other kinds take no namespace. The error of each document.
pub fn handle_namespaces(objects: &mut [Object], cli: Option<&str>) -> Vec<String> {
    let cli = cli.filter(|ns| !ns.is_empty());
    let mut errors = Vec::new();
    for o in objects {
        let kind = o.kind();
        let meta = o.metadata_mut();
        if kind.namespaced() {
            match cli {
                Some(ns) if meta.namespace.is_empty() => meta.namespace = ns.to_string(),
                Some(ns) if meta.namespace != ns => errors.push(format!(
                    "resource namespace does not match client namespace. {} != {ns}",
                    meta.namespace
                )),
                None if meta.namespace.is_empty() => meta.namespace = DEFAULT_NAMESPACE.into(),
                _ => {}
            }
        } else if !meta.namespace.is_empty() {
            errors.push(format!(
                "namespace should not be specified for a non-namespaced resource. {} is not a \
                 namespaced resource",
                kind.name()
            ));
        } else if cli.is_some() {
            errors.push(format!("{} is not namespaced", kind.name()));
        }
    }
    errors
}

/// The kind all objects share, if they do.
fn single_kind(objects: &[Object]) -> Option<Kind> {
    let first = objects.first()?.kind();
    objects.iter().all(|o| o.kind() == first).then_some(first)
}

fn slice(errs: &[String]) -> String {
    format!("[{}]", errs.join(" "))
}

/// calicoctl's message when no resource could be applied/created.
pub fn all_failed(verb: &str, kind: Option<Kind>, total: usize, errs: &[String]) -> String {
    match (total, kind) {
        (1, Some(k)) => format!("failed to {verb} '{}' resource: {}", k.name(), slice(errs)),
        (_, Some(k)) => format!(
            "failed to {verb} any '{}' resources: {}",
            k.name(),
            slice(errs)
        ),
        _ => format!("failed to {verb} any resources: {}", slice(errs)),
    }
}

/// A write decided before anything is written.
struct Planned {
    id: String,
    key: String,
    value: Vec<u8>,
}

/// What planning knows of the datastore: the state read, and the documents planned so far.
struct Plan<'a> {
    ctx: &'a Ctx<'a>,
    action: Action,
    skip_exists: bool,
    /// Stored values by key, as read.
    stored: BTreeMap<String, Option<Kv>>,
    /// Objects planned earlier in this run, by key (they win over `stored`).
    planned: BTreeMap<String, Object>,
    /// Pool name -> CIDR: stored pools, updated by planned ones.
    pools: BTreeMap<String, String>,
    /// Every block in the datastore.
    blocks: Vec<IpNet>,
}

enum Existing {
    None,
    Stored(Kv),
    Planned(Box<Object>),
}

impl Plan<'_> {
    fn existing(&self, key: &str) -> Existing {
        if let Some(o) = self.planned.get(key) {
            return Existing::Planned(Box::new(o.clone()));
        }
        match self.stored.get(key).cloned().flatten() {
            Some(kv) => Existing::Stored(kv),
            None => Existing::None,
        }
    }

    /// The metadata a new object gets from a document (calicoctl's `prepareMetadataForCreate`);
    /// the backend's uid and creationTimestamp are added by `Resource::stamp_created`.
    fn create_meta(doc: &Object) -> calico_datastore::model::ObjectMeta {
        let m = doc.metadata();
        calico_datastore::model::ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            ..Default::default()
        }
    }

    /// The metadata an update stores: the live object's, with the document's labels and
    /// annotations (`mergeMetadataForUpdate`).
    fn update_meta(
        live: &calico_datastore::model::ObjectMeta,
        doc: &Object,
    ) -> calico_datastore::model::ObjectMeta {
        let mut m = live.clone();
        m.labels = doc.metadata().labels.clone();
        m.annotations = doc.metadata().annotations.clone();
        m.resource_version.clear();
        m
    }

    fn check_version(doc: &Object, live_rev: Option<i64>) -> Result<(), String> {
        let rv = &doc.metadata().resource_version;
        match live_rev {
            Some(live) if !rv.is_empty() && *rv != live.to_string() => {
                Err(format!("update conflict: {}", doc.id()))
            }
            _ => Ok(()),
        }
    }

    /// Plans one document: `Ok(None)` if it is skipped (`--skip-exists`).
    fn one(&mut self, doc: &Object) -> Result<Option<Planned>, String> {
        let kind = doc.kind();
        let name = doc.name().to_string();
        if kind.read_only() {
            return Err(kind.read_only_error());
        }
        if !kind.namespaced() && !doc.metadata().namespace.is_empty() {
            return Err(format!(
                "namespace should not be specified for a non-namespaced resource. {} is not a \
                 namespaced resource",
                kind.name()
            ));
        }
        if is_policy_kind(kind) {
            if name.is_empty() {
                validate::check_name(kind.name(), &name).map_err(|e| e.to_string())?;
            }
            self.check_policy_kind(doc)?;
        }
        match doc {
            Object::IpamConfiguration(c) => validate::ipam_configuration(&name, &c.spec)?,
            Object::BgpConfiguration(c) => {
                validate::bgp_configuration(&name, &c.spec).map_err(|e| e.to_string())?
            }
            Object::BgpPeer(p) => validate::bgp_peer(&name, &p.spec).map_err(|e| e.to_string())?,
            _ if is_policy_kind(kind) => {}
            _ => validate::check_name(kind.name(), &name).map_err(|e| e.to_string())?,
        }
        let key = kind.key(&doc.metadata().namespace, &name);
        let existing = self.existing(&key);
        let exists = !matches!(existing, Existing::None);
        if !exists && self.action == Action::Replace {
            // etcdv3.go Update: the guarded put finds no key (ErrorResourceDoesNotExist).
            return Err(format!(
                "resource does not exist: {} with error: <nil>",
                doc.id()
            ));
        }
        if exists && self.action == Action::Create {
            if self.skip_exists {
                return Ok(None);
            }
            return Err(format!(
                "resource already exists: {} with error: <nil>",
                doc.id()
            ));
        }
        let live_rev = match &existing {
            Existing::Stored(kv) => Some(kv.mod_revision),
            _ => None,
        };
        let (obj, value) = match doc {
            Object::IpPool(p) => self.plan_pool(p, doc, &existing, live_rev)?,
            Object::Node(n) => {
                validate::node(&n.spec).map_err(|e| e.to_string())?;
                let mut n = n.clone();
                n.status.get_or_insert_with(|| Value::Object(Map::new()));
                let (n, bytes) = self.plan_plain(n, doc, &existing, live_rev)?;
                (Object::Node(n), bytes)
            }
            Object::IpamConfiguration(c) => {
                let (c, bytes) = self.plan_plain(c.clone(), doc, &existing, live_rev)?;
                (Object::IpamConfiguration(c), bytes)
            }
            Object::BgpConfiguration(c) => {
                let (c, bytes) = self.plan_plain((**c).clone(), doc, &existing, live_rev)?;
                (Object::BgpConfiguration(Box::new(c)), bytes)
            }
            Object::BgpPeer(p) => {
                let (p, bytes) = self.plan_plain((**p).clone(), doc, &existing, live_rev)?;
                (Object::BgpPeer(Box::new(p)), bytes)
            }
            Object::NetworkPolicy(p) => {
                let mut p = (**p).clone();
                self.plan_meta(&mut p, doc, &existing, live_rev)?;
                calico_validation::default_network_policy(&mut p);
                let bytes = p.to_stored().map_err(|e| e.to_string())?;
                (Object::NetworkPolicy(Box::new(p)), bytes)
            }
            Object::GlobalNetworkPolicy(p) => {
                let mut p = (**p).clone();
                self.plan_meta(&mut p, doc, &existing, live_rev)?;
                calico_validation::default_global_network_policy(&mut p);
                let bytes = p.to_stored().map_err(|e| e.to_string())?;
                (Object::GlobalNetworkPolicy(Box::new(p)), bytes)
            }
            Object::Tier(t) => {
                let mut t = (**t).clone();
                self.plan_meta(&mut t, doc, &existing, live_rev)?;
                calico_validation::default_tier(&mut t);
                t.status.get_or_insert_with(|| Value::Object(Map::new()));
                let bytes = t.to_stored().map_err(|e| e.to_string())?;
                (Object::Tier(Box::new(t)), bytes)
            }
            Object::NetworkSet(n) => {
                let (n, bytes) = self.plan_plain((**n).clone(), doc, &existing, live_rev)?;
                (Object::NetworkSet(Box::new(n)), bytes)
            }
            Object::GlobalNetworkSet(n) => {
                let (n, bytes) = self.plan_plain((**n).clone(), doc, &existing, live_rev)?;
                (Object::GlobalNetworkSet(Box::new(n)), bytes)
            }
            Object::Profile(p) => {
                let (p, bytes) = self.plan_plain((**p).clone(), doc, &existing, live_rev)?;
                (Object::Profile(Box::new(p)), bytes)
            }
            Object::FelixConfiguration(c) => {
                let (c, bytes) = self.plan_plain((**c).clone(), doc, &existing, live_rev)?;
                (Object::FelixConfiguration(Box::new(c)), bytes)
            }
            Object::WorkloadEndpoint(_) => {
                return Err(kind.read_only_error());
            }
        };
        self.planned.insert(key.clone(), obj);
        Ok(Some(Planned {
            id: doc.id(),
            key,
            value,
        }))
    }

    /// A kind without defaults or cross-object checks (Node, IPAMConfiguration): the generic
    /// `resources.Create`/`Update` metadata handling.
    fn plan_plain<S>(
        &self,
        mut r: Resource<S>,
        doc: &Object,
        existing: &Existing,
        live_rev: Option<i64>,
    ) -> Result<(Resource<S>, Vec<u8>), String>
    where
        S: serde::Serialize + serde::de::DeserializeOwned + Clone,
    {
        self.plan_meta(&mut r, doc, existing, live_rev)?;
        let bytes = r.to_stored().map_err(|e| e.to_string())?;
        Ok((r, bytes))
    }

    /// The checks of the policy kinds that come before the write is planned, in
    /// libcalico-go's order: calicoctl's refusals, the tier's existence, then the
    /// defaults and the validator on a copy.
    fn check_policy_kind(&self, doc: &Object) -> Result<(), String> {
        let invalid = |e: calico_validation::ValidationError| e.to_string();
        match doc {
            Object::NetworkPolicy(p) => {
                if p.metadata.name.starts_with(KNP_PREFIX) {
                    let op = if self.action == Action::Replace {
                        "apply or replace"
                    } else {
                        "create or apply"
                    };
                    return Err(knp_refusal(op, &doc.id()));
                }
                self.tier_exists(&p.spec.tier)?;
                let mut p = (**p).clone();
                calico_validation::default_network_policy(&mut p);
                calico_validation::network_policy(&p).map_err(invalid)
            }
            Object::GlobalNetworkPolicy(p) => {
                self.tier_exists(&p.spec.tier)?;
                let mut p = (**p).clone();
                calico_validation::default_global_network_policy(&mut p);
                calico_validation::global_network_policy(&p).map_err(invalid)
            }
            Object::Tier(t) => {
                let mut t = (**t).clone();
                calico_validation::default_tier(&mut t);
                calico_validation::tier(&t).map_err(invalid)
            }
            Object::NetworkSet(n) => calico_validation::network_set(n).map_err(invalid),
            Object::GlobalNetworkSet(n) => {
                calico_validation::global_network_set(n).map_err(invalid)
            }
            Object::Profile(p) => {
                if p.metadata.name == DEFAULT_ALLOW_PROFILE {
                    return Err(default_allow_refusal(match self.action {
                        Action::Create => "Create",
                        Action::Apply | Action::Replace => "Update",
                    }));
                }
                calico_validation::profile(p).map_err(invalid)
            }
            Object::FelixConfiguration(c) => {
                calico_validation::felix_configuration(c).map_err(invalid)
            }
            _ => Ok(()),
        }
    }

    /// A policy's tier must exist (`networkpolicy.go` Create): stored, planned earlier in
    /// this run, or one of the default tiers (created before anything is written).
    fn tier_exists(&self, tier: &str) -> Result<(), String> {
        let tier = calico_validation::tier_of(tier);
        if DEFAULT_TIERS.iter().any(|(n, ..)| *n == tier) {
            return Ok(());
        }
        match self.existing(&Kind::Tier.key("", tier)) {
            Existing::None => Err(does_not_exist(Kind::Tier, "", tier)),
            _ => Ok(()),
        }
    }

    /// The metadata a write stores (`resources.Create`/`Update`), the kind, and on create
    /// the uid and creation time.
    fn plan_meta<S>(
        &self,
        r: &mut Resource<S>,
        doc: &Object,
        existing: &Existing,
        live_rev: Option<i64>,
    ) -> Result<(), String>
    where
        S: serde::Serialize + serde::de::DeserializeOwned + Clone,
    {
        r.metadata = match existing {
            Existing::None => Self::create_meta(doc),
            Existing::Stored(kv) => {
                Self::check_version(doc, live_rev)?;
                let live = Resource::<Value>::from_kv(kv)
                    .map_err(|e| format!("cannot decode the stored {}: {e}", doc.id()))?;
                Self::update_meta(&live.metadata, doc)
            }
            Existing::Planned(o) => Self::update_meta(o.metadata(), doc),
        };
        if matches!(existing, Existing::None) {
            r.stamp_created((self.ctx.now)());
        }
        r.kind = doc.kind().name().into();
        Ok(())
    }

    fn plan_pool(
        &mut self,
        p: &IpPool,
        doc: &Object,
        existing: &Existing,
        live_rev: Option<i64>,
    ) -> Result<(Object, Vec<u8>), String> {
        let name = p.metadata.name.clone();
        // Calico's apply tries Create first: its checks apply whether or not the pool exists.
        let others: Vec<(String, String)> = self
            .pools
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        let mut spec = p.spec.clone();
        validate::ippool(
            &name,
            &mut spec,
            &PoolContext {
                old: None,
                others: Some(&others),
            },
        )
        .map_err(|e| e.to_string())?;
        validate::block_size_conflict(&spec, &self.blocks).map_err(|e| e.to_string())?;
        let live: Option<IpPool> = match existing {
            Existing::None => None,
            Existing::Stored(kv) => Some(
                IpPool::from_kv(kv)
                    .map_err(|e| format!("cannot decode the stored {}: {e}", doc.id()))?,
            ),
            Existing::Planned(o) => match &**o {
                Object::IpPool(o) => Some(o.clone()),
                _ => None,
            },
        };
        let mut pool = p.clone();
        pool.kind = Kind::IpPool.name().into();
        match &live {
            None => {
                pool.spec = spec;
                pool.metadata = Self::create_meta(doc);
                pool.stamp_created((self.ctx.now)());
            }
            Some(live) => {
                let old = live.spec.with_defaults();
                let mut updated = p.spec.clone();
                validate::ippool(
                    &name,
                    &mut updated,
                    &PoolContext {
                        old: Some(&old),
                        others: None,
                    },
                )
                .map_err(|e| e.to_string())?;
                Self::check_version(doc, live_rev)?;
                pool.spec = updated;
                pool.metadata = Self::update_meta(&live.metadata, doc);
            }
        }
        self.pools.insert(name, pool.spec.cidr.clone());
        let bytes = pool.to_stored().map_err(|e| e.to_string())?;
        Ok((Object::IpPool(pool), bytes))
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything else
/// replaces. On Calico's v3 types (no `patchStrategy` tags) this is what the strategic merge
/// patch of `calicoctl patch` does.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (k, v) in changes {
            if v.is_null() {
                fields.remove(k);
            } else {
                merge_patch(fields.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `calicoctl patch <kind> <name> -p <patch>`: resourcemgr.go `Patch`: the stored object,
/// the patch merged into its JSON (`strategicpatch.StrategicMergePatch`; calicoctl ignores
/// `--type`), decoded as a document and written as an update guarded on the revision read.
/// `namespace` is `-n` (`default` for a namespaced kind when not given; refused for
/// other kinds).
pub fn patch(
    ctx: &Ctx,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    patch_text: &str,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    // patch.go prints each failed resource as one line ending in a newline.
    let failed = |why: String| {
        CmdError::Failed(format!(
            "Failed to patch '{}' resource: {why}\n",
            kind.name()
        ))
    };
    if kind.read_only() {
        return Err(CmdError::failed(kind.read_only_error()));
    }
    let namespace = namespace.filter(|ns| !ns.is_empty());
    let ns = match (kind.namespaced(), namespace) {
        (true, ns) => ns.unwrap_or(DEFAULT_NAMESPACE),
        (false, None) => "",
        (false, Some(_)) => return Err(failed(format!("{} is not namespaced", kind.name()))),
    };
    let key = kind.key(ns, name);
    let Some(kv) = ctx.store.get(&key)? else {
        return Err(failed(format!(
            "resource does not exist: {} with error: <nil>",
            id_in(kind, ns, name)
        )));
    };
    let Some(live) = read_object(kind, &kv) else {
        return Err(failed(format!(
            "cannot decode the stored {}",
            id_in(kind, ns, name)
        )));
    };
    let changes: Value = serde_json::from_str(patch_text)
        .map_err(|e| failed(format!("performing strategic merge patch: {e}")))?;
    let mut patched = live.to_json();
    merge_patch(&mut patched, &changes);
    let mut doc = super::decode_resource(patched)
        .map_err(|e| failed(format!("creating resource from patched data: {e}")))?;
    // mergeMetadataForPatch: the live object's identity and revision (so a change made
    // since the read is a conflict, not overwritten).
    let meta = doc.metadata_mut();
    meta.name = name.to_string();
    meta.namespace = ns.to_string();
    meta.resource_version = kv.mod_revision.to_string();
    let mut discarded = Vec::new();
    match apply(ctx, &[doc], Action::Replace, false, &mut discarded) {
        Ok(()) => {
            writeln!(out, "Successfully patched 1 '{}' resource", kind.name())?;
            Ok(())
        }
        Err(CmdError::Failed(m)) | Err(CmdError::Stdout(m)) => {
            // The one error inside apply's "failed to replace '<Kind>' resource: [...]".
            let inner = m
                .split_once(": [")
                .and_then(|(_, rest)| rest.strip_suffix(']'))
                .unwrap_or(&m);
            Err(failed(format!("updating existing resource: {inner}")))
        }
    }
}

/// `calicoctl apply|create -f`: validates every document, then writes them in order.
pub fn apply(
    ctx: &Ctx,
    objects: &[Object],
    action: Action,
    skip_exists: bool,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    // A namespaced document without a namespace is in `default` (handleNamespace).
    let objects: Vec<Object> = objects
        .iter()
        .cloned()
        .map(|mut o| {
            if o.kind().namespaced() && o.metadata().namespace.is_empty() {
                o.metadata_mut().namespace = DEFAULT_NAMESPACE.into();
            }
            o
        })
        .collect();
    let objects = objects.as_slice();
    let kind = single_kind(objects);
    let total = objects.len();
    let any_pool = objects.iter().any(|o| o.kind() == Kind::IpPool);
    let mut keys_wanted: Vec<String> = objects
        .iter()
        .map(|o| o.kind().key(&o.metadata().namespace, o.name()))
        .collect();
    // The tiers the policies name, to check that they exist.
    keys_wanted.extend(objects.iter().filter_map(|o| {
        let tier = match o {
            Object::NetworkPolicy(p) => &p.spec.tier,
            Object::GlobalNetworkPolicy(p) => &p.spec.tier,
            _ => return None,
        };
        Some(Kind::Tier.key("", calico_validation::tier_of(tier)))
    }));
    // A built-in tier in the file: it is made before the writes (EnsureInitialized), so
    // writing it is an update of that one (see `made` below).
    let built_in_key = |o: &Object| {
        (o.kind() == Kind::Tier && DEFAULT_TIERS.iter().any(|(n, ..)| *n == o.name()))
            .then(|| Kind::Tier.key("", o.name()))
    };
    keys_wanted.extend(objects.iter().filter_map(built_in_key));
    let mut reads: Vec<Read> = keys_wanted.iter().map(|k| Read::Key(k.clone())).collect();
    if any_pool {
        reads.push(Read::Prefix(keys::resources_prefix("ippools")));
        reads.push(Read::PrefixKeys("/calico/ipam/v2/assignment/".into()));
    }
    let mut got = ctx.store.read(&reads)?.into_iter();
    let mut stored = BTreeMap::new();
    for k in &keys_wanted {
        let kv = got.next().and_then(|mut v| v.pop());
        stored.entry(k.clone()).or_insert(kv);
    }
    let pools = got
        .next()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| IpPool::from_kv(kv).ok())
        .map(|p| (p.metadata.name.clone(), p.spec.cidr.clone()))
        .collect();
    let blocks = got
        .next()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| keys::block_cidr_of(&kv.key))
        .collect();
    // The built-in tiers the file names that are missing, as EnsureInitialized will make
    // them: the documents update these.
    let mut made: BTreeMap<String, Resource<Value>> = BTreeMap::new();
    for o in objects {
        let Some(key) = built_in_key(o) else { continue };
        if made.contains_key(&key) || matches!(stored.get(&key), Some(Some(_))) {
            continue;
        }
        if let Some((name, act, order)) = DEFAULT_TIERS.iter().find(|(n, ..)| *n == o.name()) {
            made.insert(key, default_tier(name, act, *order, (ctx.now)()));
        }
    }
    let mut planned_before = BTreeMap::new();
    for (key, t) in &made {
        if let Ok(t) = serde_json::to_value(t).and_then(serde_json::from_value::<Tier>) {
            planned_before.insert(key.clone(), Object::Tier(Box::new(t)));
        }
    }
    let mut plan = Plan {
        ctx,
        action,
        skip_exists,
        stored,
        planned: planned_before,
        pools,
        blocks,
    };
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    for doc in objects {
        match plan.one(doc) {
            Ok(p) => planned.push(p),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(CmdError::Failed(all_failed(
            action.verb(),
            kind,
            total,
            &errors,
        )));
    }
    ensure_initialized_with(ctx, &made);

    // Write, guarding each key on what we read (or on our own earlier write to it).
    let mut latest: BTreeMap<String, Option<i64>> = plan
        .stored
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|kv| kv.mod_revision)))
        .collect();
    for key in made.keys() {
        if let Some(kv) = ctx.store.get(key)? {
            latest.insert(key.clone(), Some(kv.mod_revision));
        }
    }
    let mut handled = 0;
    for p in planned {
        let Some(p) = p else {
            handled += 1;
            continue;
        };
        let guard = match latest.get(&p.key).copied().flatten() {
            Some(rev) => Guard::Revision(p.key.clone(), rev),
            None => Guard::Absent(p.key.clone()),
        };
        match ctx.store.txn(
            std::slice::from_ref(&guard),
            &[Write::Put(p.key.clone(), p.value)],
        )? {
            TxnOutcome::Applied(rev) => {
                latest.insert(p.key, Some(rev));
                handled += 1;
            }
            TxnOutcome::Conflict(_) => errors.push(match guard {
                Guard::Absent(_) => format!("resource already exists: {} with error: <nil>", p.id),
                Guard::Revision(..) => format!("update conflict: {}", p.id),
            }),
        }
    }
    if handled == 0 {
        return Err(CmdError::Failed(all_failed(
            action.verb(),
            kind,
            total,
            &errors,
        )));
    }
    if errors.is_empty() {
        match kind {
            Some(k) => writeln!(
                out,
                "Successfully {} {handled} '{}' resource(s)",
                action.past(),
                k.name()
            )?,
            None => writeln!(out, "Successfully {} {handled} resource(s)", action.past())?,
        }
        return Ok(());
    }
    if handled > errors.len() {
        match kind {
            Some(k) => writeln!(
                out,
                "Partial success: {} the first {handled} out of {total} '{}' resources:",
                action.past(),
                k.name()
            )?,
            None => writeln!(
                out,
                "Partial success: {} the first {handled} out of {total} resources:",
                action.past()
            )?,
        }
    }
    let label = if action == Action::Apply {
        "hit error(s)"
    } else {
        "hit error"
    };
    Err(CmdError::Failed(format!("{label}: {}", slice(&errors))))
}

/// calicoctl's `EnsureInitialized` before writes: the ClusterInformation `default` (with a
/// GUID and `datastoreReady: true`) and the default tiers, if missing. Failures are ignored,
/// as calicoctl ignores them.
pub fn ensure_initialized(ctx: &Ctx) {
    ensure_initialized_with(ctx, &BTreeMap::new());
}

/// [`ensure_initialized`], writing the given objects for the built-in tiers it makes (by
/// key), so that a document planned as their update finds what it planned against.
fn ensure_initialized_with(ctx: &Ctx, made: &BTreeMap<String, Resource<Value>>) {
    let ci_key = keys::resource("clusterinformations", "default");
    let mut reads = vec![Read::Key(ci_key.clone())];
    reads.extend(
        DEFAULT_TIERS
            .iter()
            .map(|(n, ..)| Read::Key(keys::resource("tiers", n))),
    );
    let Ok(got) = ctx.store.read(&reads) else {
        return;
    };
    let mut got = got.into_iter();
    let now = (ctx.now)();
    match got.next().and_then(|mut v| v.pop()) {
        None => {
            let mut ci = ClusterInformation::new(
                "ClusterInformation",
                "default",
                ClusterInformationSpec {
                    cluster_guid: new_cluster_guid(),
                    datastore_ready: Some(true),
                    ..Default::default()
                },
            );
            ci.stamp_created(now);
            if let Ok(bytes) = ci.to_stored() {
                let _ = ctx.store.txn(
                    &[Guard::Absent(ci_key.clone())],
                    &[Write::Put(ci_key.clone(), bytes)],
                );
            }
        }
        Some(kv) => {
            if let Ok(mut ci) = ClusterInformation::from_kv(&kv) {
                let mut changed = false;
                if ci.spec.cluster_guid.is_empty() {
                    ci.spec.cluster_guid = new_cluster_guid();
                    changed = true;
                }
                if ci.spec.datastore_ready.is_none() {
                    ci.spec.datastore_ready = Some(true);
                    changed = true;
                }
                if changed && let Ok(bytes) = ci.to_stored() {
                    let _ = ctx.store.txn(
                        &[Guard::Revision(ci_key.clone(), kv.mod_revision)],
                        &[Write::Put(ci_key.clone(), bytes)],
                    );
                }
            }
        }
    }
    for (name, action, order) in DEFAULT_TIERS {
        if got.next().and_then(|mut v| v.pop()).is_some() {
            continue;
        }
        let key = keys::resource("tiers", name);
        let tier = made
            .get(&key)
            .cloned()
            .unwrap_or_else(|| default_tier(name, action, order, now));
        if let Ok(bytes) = tier.to_stored() {
            let _ = ctx
                .store
                .txn(&[Guard::Absent(key.clone())], &[Write::Put(key, bytes)]);
        }
    }
}

/// `calicoctl delete`: deletes each object, reporting each failure.
pub fn delete(
    ctx: &Ctx,
    objects: &[Object],
    single: Option<Kind>,
    skip_not_exists: bool,
    out: &mut dyn std::io::Write,
) -> CmdResult {
    let mut handled = 0;
    let mut errors = Vec::new();
    for o in objects {
        match delete_one(ctx, o) {
            Ok(()) => handled += 1,
            Err(DeleteError::Missing) if skip_not_exists => handled += 1,
            Err(DeleteError::Missing) => {
                errors.push(does_not_exist(o.kind(), &o.metadata().namespace, o.name()))
            }
            Err(DeleteError::Other(e)) => errors.push(e),
        }
    }
    let kind = single.or_else(|| single_kind(objects));
    if handled > 0 {
        match kind {
            Some(k) => writeln!(
                out,
                "Successfully deleted {handled} '{}' resource(s)",
                k.name()
            )?,
            None => writeln!(out, "Successfully deleted {handled} resource(s)")?,
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors
        .iter()
        .map(|e| match kind {
            Some(k) => format!("Failed to delete '{}' resource: {e}", k.name()),
            None => format!("Failed to delete resource: {e}"),
        })
        .collect();
    Err(CmdError::Failed(lines.join("\n")))
}

/// clientv3/tier.go Delete: the built-in tiers stay, and so does a tier a policy is in.
fn tier_deletable(ctx: &Ctx, name: &str) -> Result<(), DeleteError> {
    if DEFAULT_TIERS.iter().any(|(n, ..)| *n == name) {
        return Err(DeleteError::Other(format!(
            "operation Delete is not supported on {name}: Cannot delete {name} tier"
        )));
    }
    let lists = ctx.store.read(&[
        Read::Prefix(Kind::NetworkPolicy.list_prefix(None)),
        Read::Prefix(Kind::GlobalNetworkPolicy.list_prefix(None)),
    ])?;
    let in_tier = lists.iter().flatten().any(|kv| {
        serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .is_some_and(|v| v["spec"]["tier"].as_str() == Some(name))
    });
    if in_tier {
        return Err(DeleteError::Other(format!(
            "operation delete is not supported on {name}: Cannot delete a non-empty tier"
        )));
    }
    Ok(())
}

/// Why one object was not deleted: it does not exist, or the message of what failed.
pub enum DeleteError {
    Missing,
    Other(String),
}

impl From<calico_datastore::StoreError> for DeleteError {
    fn from(e: calico_datastore::StoreError) -> Self {
        DeleteError::Other(e.to_string())
    }
}

fn delete_one(ctx: &Ctx, o: &Object) -> Result<(), DeleteError> {
    let kind = o.kind();
    if kind.read_only() {
        return Err(DeleteError::Other(kind.read_only_error()));
    }
    if kind == Kind::Node {
        // Its endpoints, addresses, affinities and per-node resources go first.
        return super::node_delete::delete_node(ctx, o);
    }
    if kind == Kind::NetworkPolicy && o.name().starts_with(KNP_PREFIX) {
        return Err(DeleteError::Other(knp_refusal("delete", &o.id())));
    }
    if kind == Kind::Profile && o.name() == DEFAULT_ALLOW_PROFILE {
        return Err(DeleteError::Other(default_allow_refusal("Delete")));
    }
    if kind == Kind::Tier {
        tier_deletable(ctx, o.name())?;
    }
    let key = kind.key(&o.metadata().namespace, o.name());
    let kv = ctx.store.get(&key)?.ok_or(DeleteError::Missing)?;
    let rv = &o.metadata().resource_version;
    let conflict = || DeleteError::Other(format!("update conflict: {}", o.id()));
    if !rv.is_empty() && *rv != kv.mod_revision.to_string() {
        return Err(conflict());
    }
    let mut rev = kv.mod_revision;
    if kind == Kind::IpPool {
        let mut pool = IpPool::from_kv(&kv)
            .map_err(|e| DeleteError::Other(format!("cannot decode the stored {}: {e}", o.id())))?;
        let cidr = validate::parse_cidr(&pool.spec.cidr).map(|(_, n)| n);
        // Calico disables an enabled pool first, so nothing is assigned from it while its
        // affinities are released (it then waits 500 ms; we do not).
        if !pool.spec.disabled {
            pool.spec = pool.spec.with_defaults();
            pool.spec.disabled = true;
            let bytes = pool
                .to_stored()
                .map_err(|e| DeleteError::Other(e.to_string()))?;
            match ctx.store.txn(
                &[Guard::Revision(key.clone(), rev)],
                &[Write::Put(key.clone(), bytes)],
            )? {
                TxnOutcome::Applied(r) => rev = r,
                TxnOutcome::Conflict(_) => return Err(conflict()),
            }
        }
        if let Some(cidr) = cidr {
            calico_ipam::host::release_pool_affinities(ctx.store, &cidr)
                .map_err(|e| DeleteError::Other(e.to_string()))?;
        }
    }
    match ctx
        .store
        .txn(&[Guard::Revision(key.clone(), rev)], &[Write::Delete(key)])?
    {
        TxnOutcome::Applied(_) => Ok(()),
        TxnOutcome::Conflict(current) if current.first().is_some_and(Option::is_none) => {
            Err(DeleteError::Missing)
        }
        TxnOutcome::Conflict(_) => Err(conflict()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7386's examples: merge, replace, remove with null, arrays replaced whole.
    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = serde_json::json!({"a":"b","c":{"d":"e","f":"g"},"l":[1,2]});
        merge_patch(
            &mut target,
            &serde_json::json!({"a":"z","c":{"f":null},"l":[3],"n":{"x":1}}),
        );
        assert_eq!(
            target,
            serde_json::json!({"a":"z","c":{"d":"e"},"l":[3],"n":{"x":1}})
        );
        let mut scalar = serde_json::json!({"a":1});
        merge_patch(&mut scalar, &serde_json::json!(["x"]));
        assert_eq!(scalar, serde_json::json!(["x"]));
    }
    use crate::resources::parse_documents;
    use calico_datastore::MemKv;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_777_629_600)
    }

    fn ctx(store: &MemKv) -> Ctx<'_> {
        Ctx { store, now: t0 }
    }

    /// The uid of a stored object, checked to be a random UUID v4 (`uuid.New().String()`).
    fn uid_of(stored: &str) -> String {
        let v: Value = serde_json::from_str(stored).expect("json");
        let uid = v["metadata"]["uid"].as_str().expect("uid").to_string();
        let parts: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{uid}");
        assert_eq!(&uid[14..15], "4", "version 4: {uid}");
        assert!(
            uid.bytes()
                .all(|c| c == b'-' || (c.is_ascii_hexdigit() && !c.is_ascii_uppercase())),
            "{uid}"
        );
        uid
    }

    fn run_apply(store: &MemKv, text: &str, action: Action) -> (String, CmdResult) {
        let objs = parse_documents(text).expect("parses");
        let mut out = Vec::new();
        let r = apply(&ctx(store), &objs, action, false, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), r)
    }

    const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool1\nspec:\n  cidr: 10.244.0.0/16\n  ipipMode: Always\n  natOutgoing: true\n";

    fn stored(store: &MemKv, key: &str) -> Option<String> {
        store
            .dump()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn create_writes_calicos_object_and_initialises() {
        let store = MemKv::new();
        let (out, r) = run_apply(&store, POOL, Action::Create);
        assert_eq!(r, Ok(()));
        assert_eq!(out, "Successfully created 1 'IPPool' resource(s)\n");
        let pool = stored(
            &store,
            "/calico/resources/v3/projectcalico.org/ippools/pool1",
        )
        .expect("pool");
        let uid = uid_of(&pool);
        assert_eq!(
            pool,
            format!(
                r#"{{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{{"name":"pool1","uid":"{uid}","creationTimestamp":"2026-05-01T10:00:00Z"}},"spec":{{"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}}}"#
            )
        );
        let ci = stored(
            &store,
            "/calico/resources/v3/projectcalico.org/clusterinformations/default",
        )
        .expect("cluster information");
        let ci: Value = serde_json::from_str(&ci).expect("json");
        assert_eq!(ci["spec"]["datastoreReady"], true);
        assert_eq!(ci["spec"]["clusterGUID"].as_str().map(str::len), Some(32));
        assert!(
            stored(
                &store,
                "/calico/resources/v3/projectcalico.org/tiers/default"
            )
            .is_some()
        );

        for tier in ["default", "kube-admin", "kube-baseline"] {
            let t = stored(
                &store,
                &format!("/calico/resources/v3/projectcalico.org/tiers/{tier}"),
            )
            .expect("tier");
            uid_of(&t);
        }

        let (_, again) = run_apply(&store, POOL, Action::Create);
        assert_eq!(
            again,
            Err(CmdError::Failed(
                "failed to create 'IPPool' resource: [resource already exists: IPPool(pool1) with error: <nil>]"
                    .into()
            ))
        );

        // A document's uid and creationTimestamp are not kept: create makes new ones.
        let doc = POOL
            .replace(
                "name: pool1",
                "name: pool2\n  uid: doc-uid\n  creationTimestamp: \"2020-01-01T00:00:00Z\"",
            )
            .replace("10.244.0.0/16", "10.245.0.0/16");
        run_apply(&store, &doc, Action::Create).1.expect("created");
        let p2 = stored(
            &store,
            "/calico/resources/v3/projectcalico.org/ippools/pool2",
        )
        .expect("pool2");
        assert_ne!(uid_of(&p2), uid);
        let v: Value = serde_json::from_str(&p2).expect("json");
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-05-01T10:00:00Z");
    }

    #[test]
    fn apply_updates_keeping_uid_and_creation_time() {
        let store = MemKv::new();
        store.put(
            "/calico/resources/v3/projectcalico.org/ippools/pool1",
            br#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"pool1","uid":"old-uid","creationTimestamp":"2020-01-01T00:00:00Z","labels":{"a":"b"}},"spec":{"cidr":"10.244.0.0/16"}}"#,
        );
        let (out, r) = run_apply(&store, POOL, Action::Apply);
        assert_eq!(r, Ok(()));
        assert_eq!(out, "Successfully applied 1 'IPPool' resource(s)\n");
        let v: Value = serde_json::from_str(
            &stored(
                &store,
                "/calico/resources/v3/projectcalico.org/ippools/pool1",
            )
            .expect("pool"),
        )
        .expect("json");
        assert_eq!(v["metadata"]["uid"], "old-uid");
        assert_eq!(v["metadata"]["creationTimestamp"], "2020-01-01T00:00:00Z");
        assert!(
            v["metadata"].get("labels").is_none(),
            "labels come from the document"
        );
        assert_eq!(v["spec"]["ipipMode"], "Always");
        assert!(v["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn one_bad_document_writes_nothing() {
        let store = MemKv::new();
        let text = format!(
            "{POOL}---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool2\nspec:\n  cidr: 10.244.128.0/17\n"
        );
        let (out, r) = run_apply(&store, &text, Action::Apply);
        assert_eq!(out, "");
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "failed to apply any 'IPPool' resources: [error with field IPPool.Spec.CIDR = '10.244.128.0/17' (IPPool(pool2) CIDR overlaps with IPPool(pool1) CIDR 10.244.0.0/16)]"
                    .into()
            ))
        );
        assert!(store.dump().is_empty(), "{:?}", store.dump());
    }

    /// Mirrors clientv3/ipamconfig.go (Create, Update, Delete through the generic resources
    /// client) and model/resource.go (the `ipamconfigurations` key): an ordinary v3 resource,
    /// not `/calico/ipam/v2/config`.
    #[test]
    fn ipam_configuration_is_its_own_v3_resource() {
        let store = MemKv::new();
        const KEY: &str = "/calico/resources/v3/projectcalico.org/ipamconfigurations/default";
        let (out, r) = run_apply(
            &store,
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: default\nspec:\n  strictAffinity: true\n  maxBlocksPerHost: 4\n",
            Action::Apply,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            "Successfully applied 1 'IPAMConfiguration' resource(s)\n"
        );
        let raw = stored(&store, KEY).expect("stored");
        let uid = uid_of(&raw);
        assert_eq!(
            raw,
            format!(
                r#"{{"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3","metadata":{{"name":"default","uid":"{uid}","creationTimestamp":"2026-05-01T10:00:00Z"}},"spec":{{"strictAffinity":true,"maxBlocksPerHost":4,"autoAllocateBlocks":false}}}}"#
            )
        );
        assert_eq!(stored(&store, "/calico/ipam/v2/config"), None);

        let (out, r) = run_get(
            &store,
            Kind::IpamConfiguration,
            &[],
            &Namespaces::default(),
            Format::Wide,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            "NAME      STRICTAFFINITY   AUTOALLOCATEBLOCKS   MAXBLOCKSPERHOST   \n\
             default   true             false                4                  \n\n"
        );

        // An update keeps uid and creation time.
        run_apply(
            &store,
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: default\nspec:\n  autoAllocateBlocks: true\n  kubeVirtVMAddressPersistence: Disabled\n",
            Action::Apply,
        )
        .1
        .expect("updated");
        let v: Value = serde_json::from_str(&stored(&store, KEY).expect("stored")).expect("json");
        assert_eq!(v["metadata"]["uid"], uid.as_str());
        assert_eq!(
            v["spec"],
            json!({"strictAffinity": false, "autoAllocateBlocks": true, "kubeVirtVMAddressPersistence": "Disabled"})
        );

        let (_, r) = run_apply(
            &store,
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: other\nspec: {}\n",
            Action::Create,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                r#"failed to create 'IPAMConfiguration' resource: [Cannot create an IPAMConfiguration resource with a name other than "default"]"#
                    .into()
            ))
        );

        let named = |n: &str| {
            vec![Object::IpamConfiguration(IpamConfiguration::new(
                "IPAMConfiguration",
                n,
                Default::default(),
            ))]
        };
        let mut out = Vec::new();
        let r = delete(
            &ctx(&store),
            &named("other"),
            Some(Kind::IpamConfiguration),
            false,
            &mut out,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "Failed to delete 'IPAMConfiguration' resource: resource does not exist: IPAMConfiguration(other) with error: <nil>"
                    .into()
            ))
        );
        delete(
            &ctx(&store),
            &named("default"),
            Some(Kind::IpamConfiguration),
            false,
            &mut out,
        )
        .expect("deleted");
        assert_eq!(stored(&store, KEY), None);
    }

    const WEP_KEY: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints";

    fn put_wep(store: &MemKv, ns: &str, name: &str, spec: Value) {
        let v = json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":name,"namespace":ns,"uid":"u-1","creationTimestamp":"2026-05-01T10:00:00Z"},
            "spec":spec});
        store.put(&format!("{WEP_KEY}/{ns}/{name}"), v.to_string().as_bytes());
    }

    fn run_get(
        store: &MemKv,
        kind: Kind,
        names: &[&str],
        ns: &Namespaces,
        format: Format,
    ) -> (String, CmdResult) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        let mut out = Vec::new();
        let r = get(&ctx(store), kind, &names, ns, format, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), r)
    }

    fn ns(namespace: Option<&str>, all: bool) -> Namespaces {
        Namespaces {
            namespace: namespace.map(str::to_string),
            all,
        }
    }

    #[test]
    fn get_workload_endpoints_by_namespace() {
        let store = MemKv::new();
        put_wep(
            &store,
            "default",
            "node1-k8s-nginx-eth0",
            json!({"orchestrator":"k8s","node":"node1","pod":"nginx","endpoint":"eth0",
                   "ipNetworks":["10.244.1.5/32","fd00::5/128"],"profiles":["kns.default","ksa.default.sa"],
                   "interfaceName":"cali1234567890a",
                   "ipNATs":[{"internalIP":"10.244.1.5","externalIP":"172.16.0.5"}]}),
        );
        put_wep(
            &store,
            "other",
            "node2-cni-abc-eth0",
            json!({"orchestrator":"cni","workload":"wl1","pod":"ignored","node":"node2",
                   "ipNetworks":["10.244.2.7/32"],"profiles":["mynet"],"interfaceName":"caliabc"}),
        );
        let (out, r) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &[],
            &ns(None, false),
            Format::Ps,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            "WORKLOAD   NODE    NETWORKS                    INTERFACE         \n\
             nginx      node1   10.244.1.5/32,fd00::5/128   cali1234567890a   \n\n"
        );
        let (out, _) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &[],
            &ns(Some("other"), false),
            Format::Wide,
        );
        assert_eq!(
            out,
            "NAMESPACE   NAME                 WORKLOAD   NODE    NETWORKS        INTERFACE   PROFILES   NATS   \n\
             other       node2-cni-abc-eth0   wl1        node2   10.244.2.7/32   caliabc     mynet             \n\n"
        );
        let (out, _) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &[],
            &ns(None, true),
            Format::Wide,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("NAMESPACE   NAME "), "{out}");
        assert!(
            lines[1].starts_with("default     node1-k8s-nginx-eth0")
                && lines[1].contains(" kns.default,ksa.default.sa   {10.244.1.5 172.16.0.5}   "),
            "{out}"
        );
        assert!(
            lines[2].starts_with("other       node2-cni-abc-eth0"),
            "{out}"
        );

        // Named: in the namespace asked for; missing ones are named with their namespace.
        let (out, r) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &["node2-cni-abc-eth0", "nope"],
            &ns(Some("other"), false),
            Format::Json,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "resource does not exist: WorkloadEndpoint(other/nope) with error: <nil>".into()
            ))
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["metadata"]["namespace"], "other");
        assert_eq!(v["spec"]["workload"], "wl1");
        let (_, r) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &["node2-cni-abc-eth0"],
            &ns(None, false),
            Format::Ps,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "resource does not exist: WorkloadEndpoint(default/node2-cni-abc-eth0) with error: <nil>"
                    .into()
            ))
        );
        // The list object of one namespace.
        let (out, _) = run_get(
            &store,
            Kind::WorkloadEndpoint,
            &[],
            &ns(None, false),
            Format::Yaml,
        );
        assert!(
            out.starts_with("apiVersion: projectcalico.org/v3\nitems:\n- apiVersion"),
            "{out}"
        );
        assert!(out.contains("\nkind: WorkloadEndpointList\n"), "{out}");
        assert_eq!(
            out.matches("  kind: WorkloadEndpoint\n").count(),
            1,
            "{out}"
        );
    }

    #[test]
    fn namespace_flags_are_checked_as_calicoctl_does() {
        let store = MemKv::new();
        let cases: [(Kind, &[&str], Namespaces, &str); 5] = [
            (
                Kind::IpPool,
                &[],
                ns(Some("x"), false),
                "IPPool is not namespaced",
            ),
            (
                Kind::Profile,
                &[],
                ns(None, true),
                "Profile is not namespaced",
            ),
            (
                Kind::Node,
                &["a", "b"],
                ns(Some("x"), false),
                "Node is not namespaced\nNode is not namespaced",
            ),
            (
                Kind::WorkloadEndpoint,
                &[],
                ns(Some("x"), true),
                "cannot use both --namespace and --all-namespaces flags at the same time",
            ),
            (
                Kind::WorkloadEndpoint,
                &["w"],
                ns(None, true),
                "cannot use --all-namespace flag for getting a single resource",
            ),
        ];
        for (kind, names, flags, want) in cases {
            let (out, r) = run_get(&store, kind, names, &flags, Format::Ps);
            assert_eq!(out, "", "{kind:?}");
            assert_eq!(r, Err(CmdError::Failed(want.into())), "{kind:?}");
        }
        // An empty -n is no -n.
        let (_, r) = run_get(&store, Kind::IpPool, &[], &ns(Some(""), false), Format::Ps);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn get_profiles_adds_the_default_allow_profile() {
        let store = MemKv::new();
        store.put(
            "/calico/resources/v3/projectcalico.org/profiles/mynet",
            br#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"mynet","uid":"u-2","creationTimestamp":"2026-05-01T10:00:00Z"},"spec":{"ingress":[{"action":"Allow","source":{"selector":"has(mynet)"}}],"egress":[{"action":"Allow"}],"labelsToApply":{"mynet":"","a.b":"1","a":"2"}}}"#,
        );
        let (out, r) = run_get(
            &store,
            Kind::Profile,
            &[],
            &Namespaces::default(),
            Format::Wide,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            "NAME                          LABELS             \n\
             mynet                         a.b=1,a=2,mynet=   \n\
             projectcalico-default-allow                      \n\n"
        );
        let (out, r) = run_get(
            &store,
            Kind::Profile,
            &["projectcalico-default-allow"],
            &Namespaces::default(),
            Format::Json,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            "{\n  \"kind\": \"Profile\",\n  \"apiVersion\": \"projectcalico.org/v3\",\n  \"metadata\": {\n    \"name\": \"projectcalico-default-allow\",\n    \"resourceVersion\": \"1\"\n  },\n  \"spec\": {\n    \"ingress\": [\n      {\n        \"action\": \"Allow\"\n      }\n    ],\n    \"egress\": [\n      {\n        \"action\": \"Allow\"\n      }\n    ]\n  }\n}"
        );
        let (_, r) = run_get(
            &store,
            Kind::Profile,
            &["nope"],
            &Namespaces::default(),
            Format::Ps,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "resource does not exist: Profile(nope) with error: <nil>".into()
            ))
        );
    }

    #[test]
    fn read_only_kinds_are_not_written_or_deleted() {
        let store = MemKv::new();
        let mut w = WorkloadEndpoint::new("WorkloadEndpoint", "n1-k8s-p-eth0", Default::default());
        w.metadata.namespace = "default".into();
        let mut out = Vec::new();
        let r = apply(
            &ctx(&store),
            &[Object::WorkloadEndpoint(Box::new(w.clone()))],
            Action::Apply,
            false,
            &mut out,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "failed to apply 'WorkloadEndpoint' resource: [resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported]"
                    .into()
            ))
        );
        store.put(
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-p-eth0",
            &w.to_stored().expect("json"),
        );
        let r = delete(
            &ctx(&store),
            &[Object::WorkloadEndpoint(Box::new(w))],
            Some(Kind::WorkloadEndpoint),
            false,
            &mut out,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "Failed to delete 'WorkloadEndpoint' resource: resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported"
                    .into()
            ))
        );
        assert_eq!(store.dump().len(), 1, "nothing written or deleted");
    }

    #[test]
    fn get_missing_and_delete_pool_releases_affinities() {
        let store = MemKv::new();
        run_apply(&store, POOL, Action::Create).1.expect("created");
        let mut out = Vec::new();
        let r = get(
            &ctx(&store),
            Kind::IpPool,
            &["pool1".into(), "nope".into()],
            &Namespaces::default(),
            Format::Ps,
            &mut out,
        );
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "resource does not exist: IPPool(nope) with error: <nil>".into()
            ))
        );
        assert!(String::from_utf8_lossy(&out).contains("pool1"));

        // An empty affine block and a used one in the pool.
        let empty =
            calico_ipam::block::new_block("10.244.1.0/26".parse().expect("net"), "n1", t0());
        store.put(
            "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26",
            &serde_json::to_vec(&empty).expect("json"),
        );
        store.put(
            "/calico/ipam/v2/host/n1/ipv4/block/10.244.1.0-26",
            br#"{"state":"confirmed","deleted":false}"#,
        );
        let mut used =
            calico_ipam::block::new_block("10.244.2.0/26".parse().expect("net"), "n1", t0());
        used.allocations[0] = Some(0);
        used.unallocated.retain(|o| *o != 0);
        used.attributes = Some(vec![calico_datastore::model::AllocationAttribute::new(
            "h",
            BTreeMap::new(),
        )]);
        store.put(
            "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26",
            &serde_json::to_vec(&used).expect("json"),
        );
        store.put(
            "/calico/ipam/v2/host/n1/ipv4/block/10.244.2.0-26",
            br#"{"state":"confirmed","deleted":false}"#,
        );

        let objs = vec![Object::IpPool(IpPool::new(
            "IPPool",
            "pool1",
            calico_datastore::model::IpPoolSpec::for_cidr(""),
        ))];
        let mut out = Vec::new();
        delete(&ctx(&store), &objs, Some(Kind::IpPool), false, &mut out).expect("deleted");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Successfully deleted 1 'IPPool' resource(s)\n"
        );
        let keys: Vec<String> = store.dump().into_iter().map(|(k, _)| k).collect();
        assert!(!keys.iter().any(|k| k.contains("/ippools/")));
        assert!(!keys.iter().any(|k| k.contains("/host/")));
        assert!(!keys.iter().any(|k| k.ends_with("10.244.1.0-26")));
        let b: calico_datastore::model::AllocationBlock = serde_json::from_str(
            &stored(
                &store,
                "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26",
            )
            .expect("kept"),
        )
        .expect("block");
        assert_eq!(b.affinity, None);

        let mut out = Vec::new();
        let r = delete(&ctx(&store), &objs, Some(Kind::IpPool), false, &mut out);
        assert_eq!(
            r,
            Err(CmdError::Failed(
                "Failed to delete 'IPPool' resource: resource does not exist: IPPool(pool1) with error: <nil>"
                    .into()
            ))
        );
    }
}
