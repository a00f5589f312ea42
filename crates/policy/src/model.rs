//! Calico's policy objects read into what the calculation needs: selectors scoped and
//! parsed, rules checked and split (`libcalico-go/lib/backend/syncersv1/updateprocessors/`
//! `networkpolicyprocessor.go`, `globalnetworkpolicyprocessor.go`, `rules.go`,
//! `selectors.go`; `felix/calc/rule_scanner.go: ruleToParsedRule`).
//!
//! Anything Calico's validator would refuse (a selector that does not parse, ports without a
//! protocol that has ports, an unknown action) makes the whole object an [`InvalidObject`]:
//! the engine skips it and says why, and keeps enforcing the rest.

use calico_datastore::model::policy::{
    EntityRule, GlobalNetworkPolicy, IcmpFields, NetworkPolicy, Port, Protocol, Rule,
};
use calico_datastore::model::resources::Profile;
use calico_selector::Selector;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Label of an endpoint's namespace (`apiv3.LabelNamespace`).
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label of an endpoint's service account (`apiv3.LabelServiceAccount`).
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// Namespace labels as profiles hand them to endpoints (`conversion.NamespaceLabelPrefix`).
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Service-account labels (`conversion.ServiceAccountLabelPrefix`).
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";

/// Why an object is not enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidObject(pub String);

fn invalid(msg: impl Into<String>) -> InvalidObject {
    InvalidObject(msg.into())
}

/// Which kind of policy, for ids (`felix/types/policy_id.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    NetworkPolicy,
    GlobalNetworkPolicy,
}

/// A policy's identity: kind, namespace (empty for global ones), name. The calculation's
/// maps and the label index each hold one per policy: the texts are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl PolicyKey {
    /// Felix's `PolicyID.ID()`: `np/<ns>/<name>` or `gnp/<name>`; the chains' suffix.
    pub fn id(&self) -> String {
        match self.kind {
            PolicyKind::NetworkPolicy => format!("np/{}/{}", self.namespace, self.name),
            PolicyKind::GlobalNetworkPolicy => format!("gnp/{}", self.name),
        }
    }
}

/// Rule actions (`Allow`, `Deny`, `Log`, `Pass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    Allow,
    Deny,
    Log,
    Pass,
}

/// What a set holds: the addresses of what a selector matches, or the (address, protocol,
/// port) of the named port of endpoints a selector matches (`felix/calc/rule_scanner.go:
/// IPSetData`).
///
/// Its texts are shared: a set's spec is held by the rules that use it, the policies'
/// references, the set's id and its live state (clones are counts, not copies).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetSpec {
    Selector(Arc<str>),
    NamedPort {
        selector: Arc<str>,
        /// The rule's protocol, `None` for any (Felix's `ProtocolAny`).
        proto: Option<u8>,
        port: Arc<str>,
    },
}

impl SetSpec {
    /// Felix's `IPSetData.UniqueID()`: `s:<hash>` or `n:<hash>`.
    pub fn id(&self) -> String {
        match self {
            SetSpec::Selector(s) => crate::names::unique_id("s", s),
            SetSpec::NamedPort {
                selector,
                proto,
                port,
            } => {
                let sel_id = crate::names::unique_id("s", selector);
                let proto = match proto {
                    None => "any".to_string(),
                    Some(6) => "tcp".into(),
                    Some(17) => "udp".into(),
                    Some(132) => "sctp".into(),
                    Some(n) => n.to_string(),
                };
                crate::names::unique_id("n", &format!("{sel_id},{proto},{port}"))
            }
        }
    }

    pub fn selector_text(&self) -> &str {
        match self {
            SetSpec::Selector(s) => s,
            SetSpec::NamedPort { selector, .. } => selector,
        }
    }

    pub fn is_named_port(&self) -> bool {
        matches!(self, SetSpec::NamedPort { .. })
    }
}

/// One side of a rule (source or destination) after parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ParsedEntity {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    /// Address sets the packet's address must be in (at most one: the combined selector).
    pub sets: Vec<SetSpec>,
    /// Address sets it must not be in.
    pub not_sets: Vec<SetSpec>,
    pub ports: Vec<(u16, u16)>,
    /// Named-port sets; numeric `ports` and these are alternatives (any may match).
    pub named_port_sets: Vec<SetSpec>,
    pub not_ports: Vec<(u16, u16)>,
    pub not_named_port_sets: Vec<SetSpec>,
}

impl ParsedEntity {
    fn all_sets(&self) -> impl Iterator<Item = &SetSpec> {
        self.sets
            .iter()
            .chain(&self.not_sets)
            .chain(&self.named_port_sets)
            .chain(&self.not_named_port_sets)
    }
}

/// A rule ready to render (Felix's `ParsedRule`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParsedRule {
    pub action: RuleAction,
    pub ip_version: Option<u8>,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub icmp: Option<(u8, Option<u8>)>,
    pub not_icmp: Option<(u8, Option<u8>)>,
    pub src: ParsedEntity,
    pub dst: ParsedEntity,
}

impl ParsedRule {
    pub fn sets(&self) -> impl Iterator<Item = &SetSpec> {
        self.src.all_sets().chain(self.dst.all_sets())
    }
}

/// A policy as the calculation uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPolicy {
    pub key: PolicyKey,
    pub tier: String,
    pub order: Option<f64>,
    /// The scoped selector (canonical text) of the endpoints it applies to.
    pub selector: String,
    /// `None` when the policy's types leave out ingress.
    pub ingress: Option<Vec<ParsedRule>>,
    pub egress: Option<Vec<ParsedRule>>,
}

impl ParsedPolicy {
    pub fn sets(&self) -> impl Iterator<Item = &SetSpec> {
        self.ingress
            .iter()
            .flatten()
            .chain(self.egress.iter().flatten())
            .flat_map(ParsedRule::sets)
    }
}

/// A profile: rules and the labels it gives its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedProfile {
    pub name: String,
    pub ingress: Vec<ParsedRule>,
    pub egress: Vec<ParsedRule>,
    pub labels: BTreeMap<String, String>,
}

impl ParsedProfile {
    pub fn sets(&self) -> impl Iterator<Item = &SetSpec> {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flat_map(ParsedRule::sets)
    }
}

/// A selector parsed, or the reason.
pub fn parse_selector(text: &str, what: &str) -> Result<Selector, InvalidObject> {
    Selector::parse(text).map_err(|e| invalid(format!("{what}: {e}")))
}

/// Every label key prefixed (libcalico-go's `parser.PrefixVisitor`).
pub fn prefix_keys(sel: &Selector, prefix: &str) -> Selector {
    let p = |k: &String| format!("{prefix}{k}");
    match sel {
        Selector::All => Selector::All,
        Selector::Global => Selector::Global,
        Selector::Has(k) => Selector::Has(p(k)),
        Selector::Eq(k, v) => Selector::Eq(p(k), v.clone()),
        Selector::NotEq(k, v) => Selector::NotEq(p(k), v.clone()),
        Selector::In(k, v) => Selector::In(p(k), v.clone()),
        Selector::NotIn(k, v) => Selector::NotIn(p(k), v.clone()),
        Selector::Contains(k, v) => Selector::Contains(p(k), v.clone()),
        Selector::StartsWith(k, v) => Selector::StartsWith(p(k), v.clone()),
        Selector::EndsWith(k, v) => Selector::EndsWith(p(k), v.clone()),
        Selector::Not(s) => Selector::Not(Box::new(prefix_keys(s, prefix))),
        Selector::And(l) => Selector::And(l.iter().map(|s| prefix_keys(s, prefix)).collect()),
        Selector::Or(l) => Selector::Or(l.iter().map(|s| prefix_keys(s, prefix)).collect()),
    }
}

/// `all()` and `global()` replaced, as the update processors' `strings.Replace` does.
fn replace_all(sel: &Selector, all: &Selector, global: Option<&Selector>) -> Selector {
    match sel {
        Selector::All => all.clone(),
        Selector::Global => global.cloned().unwrap_or(Selector::Global),
        Selector::Not(s) => Selector::Not(Box::new(replace_all(s, all, global))),
        Selector::And(l) => Selector::And(l.iter().map(|s| replace_all(s, all, global)).collect()),
        Selector::Or(l) => Selector::Or(l.iter().map(|s| replace_all(s, all, global)).collect()),
        other => other.clone(),
    }
}

fn and(a: Selector, b: Selector) -> Selector {
    let mut list = Vec::new();
    for s in [a, b] {
        match s {
            Selector::And(l) => list.extend(l),
            other => list.push(other),
        }
    }
    Selector::And(list)
}

fn ns_eq(ns: &str) -> Selector {
    Selector::Eq(LABEL_NAMESPACE.into(), ns.into())
}

fn has(key: &str) -> Selector {
    Selector::Has(key.into())
}

/// `parseServiceAccounts`: the selector with the `pcsa.` prefix and the names as
/// `projectcalico.org/serviceaccount in {…}`.
fn service_account_selector(
    sam: &calico_datastore::model::policy::ServiceAccountMatch,
) -> Result<Option<Selector>, InvalidObject> {
    let mut sel = None;
    if !sam.selector.is_empty() {
        let s = parse_selector(&sam.selector, "serviceAccounts.selector")?;
        sel = Some(prefix_keys(&s, SERVICE_ACCOUNT_LABEL_PREFIX));
    }
    if sam.names.is_empty() {
        return Ok(sel);
    }
    let names = Selector::In(LABEL_SERVICE_ACCOUNT.into(), sam.names.clone());
    Ok(Some(match sel {
        Some(s) => and(s, names),
        None => names,
    }))
}

/// `GetEntityRuleSelector` then `combineMatchesIfPossible`: the positive selector (scoped to
/// the policy's namespace unless a namespace selector is given) and the negative one.
fn entity_selectors(
    er: &EntityRule,
    ns: &str,
) -> Result<(Option<Selector>, Option<Selector>), InvalidObject> {
    let ns_sel = if !er.namespace_selector.is_empty() {
        let s = parse_selector(&er.namespace_selector, "namespaceSelector")?;
        let s = prefix_keys(&s, NAMESPACE_LABEL_PREFIX);
        Some(replace_all(
            &s,
            &has(LABEL_NAMESPACE),
            Some(&Selector::Not(Box::new(has(LABEL_NAMESPACE)))),
        ))
    } else if !ns.is_empty() {
        Some(ns_eq(ns))
    } else {
        None
    };
    let mut parts = Vec::new();
    if let Some(sam) = &er.service_accounts
        && let Some(s) = service_account_selector(sam)?
    {
        parts.push(s);
    }
    if !er.selector.is_empty() {
        parts.push(parse_selector(&er.selector, "selector")?);
    }
    let not_sel = if er.not_selector.is_empty() {
        None
    } else {
        Some(parse_selector(&er.not_selector, "notSelector")?)
    };
    let mut sel = match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(Selector::And(parts)),
    };
    if let Some(nss) = ns_sel
        && (sel.is_some() || not_sel.is_some() || !er.namespace_selector.is_empty())
    {
        sel = Some(match sel {
            Some(s) => and(nss, s),
            None => nss,
        });
    }
    // combineMatchesIfPossible: with a positive selector, the negative one narrows it.
    Ok(match (sel, not_sel) {
        (Some(s), Some(n)) => (Some(and(s, Selector::Not(Box::new(n)))), None),
        other => other,
    })
}

fn parse_nets(nets: &[String], what: &str) -> Result<Vec<IpNet>, InvalidObject> {
    nets.iter()
        .map(|n| {
            n.parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(format!("{what}: {n:?} is not a CIDR")))
        })
        .collect()
}

fn protocol_number(p: &Protocol, what: &str) -> Result<u8, InvalidObject> {
    p.number()
        .ok_or_else(|| invalid(format!("{what}: unknown protocol {p}")))
}

fn icmp(f: &IcmpFields, what: &str) -> Result<Option<(u8, Option<u8>)>, InvalidObject> {
    let byte = |v: i64, name: &str| {
        u8::try_from(v)
            .ok()
            .filter(|b| *b != 255)
            .ok_or_else(|| invalid(format!("{what}: ICMP {name} {v} is out of range")))
    };
    match (f.icmp_type, f.code) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid(format!("{what}: ICMP code without a type"))),
        (Some(t), c) => Ok(Some((
            byte(t, "type")?,
            c.map(|c| byte(c, "code")).transpose()?,
        ))),
    }
}

fn split_ports(ports: &[Port]) -> (Vec<(u16, u16)>, Vec<String>) {
    let mut numeric = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            Port::Range { min, max } => numeric.push((*min, *max)),
            Port::Named(n) => named.push(n.clone()),
        }
    }
    (numeric, named)
}

fn parse_entity(
    er: &EntityRule,
    ns: &str,
    proto: Option<u8>,
    side: &str,
) -> Result<ParsedEntity, InvalidObject> {
    if er.services.is_some() {
        // Felix matches services through sets of Kubernetes endpoint slices, which this agent
        // does not read; ignoring the match would widen the rule.
        return Err(invalid(format!(
            "{side}: services matches are not supported (no Kubernetes service data)"
        )));
    }
    let (sel, not_sel) = entity_selectors(er, ns)?;
    let (ports, named) = split_ports(&er.ports);
    let (not_ports, not_named) = split_ports(&er.not_ports);
    if (!er.ports.is_empty() || !er.not_ports.is_empty())
        && !matches!(proto, Some(6 | 17 | 132 | 136))
    {
        return Err(invalid(format!(
            "{side}: ports need protocol TCP, UDP, SCTP or UDPLite"
        )));
    }
    let sel_text: Option<Arc<str>> = sel.as_ref().map(|s| Arc::from(s.to_string()));
    // Named ports are filtered by the positive selector (rule_scanner.go: namedPortsToIPSets).
    let named_set = |name: &String| SetSpec::NamedPort {
        selector: sel_text.clone().unwrap_or_else(|| "all()".into()),
        proto,
        port: Arc::from(name.as_str()),
    };
    let mut out = ParsedEntity {
        nets: parse_nets(&er.nets, side)?,
        not_nets: parse_nets(&er.not_nets, side)?,
        named_port_sets: named.iter().map(named_set).collect(),
        not_named_port_sets: not_named.iter().map(named_set).collect(),
        ports,
        not_ports,
        ..Default::default()
    };
    // The selector's set is left out when named ports already filter by it.
    if let Some(s) = sel_text
        && (!out.ports.is_empty() || named.is_empty())
    {
        out.sets.push(SetSpec::Selector(s));
    }
    if let Some(n) = not_sel {
        out.not_sets.push(SetSpec::Selector(n.to_string().into()));
    }
    Ok(out)
}

/// One rule of a policy in namespace `ns` (empty: global, or a profile).
pub fn parse_rule(rule: &Rule, ns: &str) -> Result<ParsedRule, InvalidObject> {
    let action = match rule.action.as_str() {
        "Allow" => RuleAction::Allow,
        "Deny" => RuleAction::Deny,
        "Log" => RuleAction::Log,
        "Pass" => RuleAction::Pass,
        other => return Err(invalid(format!("unknown rule action {other:?}"))),
    };
    let ip_version = match rule.ip_version {
        None => None,
        Some(4) => Some(4),
        Some(6) => Some(6),
        Some(v) => return Err(invalid(format!("ipVersion {v} is neither 4 nor 6"))),
    };
    let protocol = rule
        .protocol
        .as_ref()
        .map(|p| protocol_number(p, "protocol"))
        .transpose()?;
    let not_protocol = rule
        .not_protocol
        .as_ref()
        .map(|p| protocol_number(p, "notProtocol"))
        .transpose()?;
    let icmp_of = |f: &Option<IcmpFields>, what: &str| -> Result<_, InvalidObject> {
        match f {
            None => Ok(None),
            Some(f) => {
                let v = icmp(f, what)?;
                if v.is_some() && !matches!(protocol, Some(1 | 58)) {
                    return Err(invalid(format!("{what} needs protocol ICMP or ICMPv6")));
                }
                Ok(v)
            }
        }
    };
    let parsed = ParsedRule {
        action,
        ip_version,
        protocol,
        not_protocol,
        icmp: icmp_of(&rule.icmp, "icmp")?,
        not_icmp: icmp_of(&rule.not_icmp, "notICMP")?,
        src: parse_entity(&rule.source(), ns, protocol, "source")?,
        dst: parse_entity(&rule.destination(), ns, protocol, "destination")?,
    };
    Ok(parsed)
}

fn parse_rules(rules: &[Rule], ns: &str, dir: &str) -> Result<Vec<ParsedRule>, InvalidObject> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(r, ns).map_err(|e| invalid(format!("{dir} rule {}: {}", i + 1, e.0)))
        })
        .collect::<Result<Vec<_>, _>>()
        // Kept as long as the policy: no room for rules that are not there (a collected
        // Vec starts at 4, and a rule is ~400 bytes).
        .map(|mut v| {
            v.shrink_to_fit();
            v
        })
}

/// `types` as Calico defaults them: `[Ingress]` without egress rules, `[Egress]` with only
/// egress rules, both with both.
fn directions(
    types: &[String],
    has_ingress: bool,
    has_egress: bool,
) -> Result<(bool, bool), InvalidObject> {
    if types.is_empty() {
        return Ok(match (has_ingress, has_egress) {
            (_, false) => (true, false),
            (false, true) => (false, true),
            (true, true) => (true, true),
        });
    }
    let mut out = (false, false);
    for t in types {
        match t.as_str() {
            "Ingress" => out.0 = true,
            "Egress" => out.1 = true,
            other => return Err(invalid(format!("unknown policy type {other:?}"))),
        }
    }
    Ok(out)
}

fn check_order(order: Option<f64>) -> Result<(), InvalidObject> {
    match order {
        Some(o) if !o.is_finite() => Err(invalid(format!("order {o} is not a number"))),
        _ => Ok(()),
    }
}

/// A namespaced NetworkPolicy (`ConvertNetworkPolicyV3ToV1Value`): its selector scoped to
/// its namespace, then the service-account selector with the `pcsa.` prefix.
pub fn parse_network_policy(p: &NetworkPolicy) -> Result<ParsedPolicy, InvalidObject> {
    let ns = p.metadata.namespace.as_str();
    if ns.is_empty() {
        return Err(invalid("a NetworkPolicy needs a namespace"));
    }
    check_order(p.spec.order)?;
    let mut sel = if p.spec.selector.is_empty() {
        ns_eq(ns)
    } else {
        and(parse_selector(&p.spec.selector, "selector")?, ns_eq(ns))
    };
    if !p.spec.service_account_selector.is_empty() {
        let sa = parse_selector(&p.spec.service_account_selector, "serviceAccountSelector")?;
        sel = and(sel, prefix_keys(&sa, SERVICE_ACCOUNT_LABEL_PREFIX));
    }
    let (i, e) = directions(
        &p.spec.types,
        !p.spec.ingress.is_empty(),
        !p.spec.egress.is_empty(),
    )?;
    Ok(ParsedPolicy {
        key: PolicyKey {
            kind: PolicyKind::NetworkPolicy,
            namespace: ns.into(),
            name: p.metadata.name.as_str().into(),
        },
        tier: tier_or_default(&p.spec.tier),
        order: p.spec.order,
        selector: sel.to_string(),
        ingress: if i {
            Some(parse_rules(&p.spec.ingress, ns, "ingress")?)
        } else {
            None
        },
        egress: if e {
            Some(parse_rules(&p.spec.egress, ns, "egress")?)
        } else {
            None
        },
    })
}

fn tier_or_default(t: &str) -> String {
    if t.is_empty() {
        "default".into()
    } else {
        t.to_string()
    }
}

/// A GlobalNetworkPolicy (`ConvertGlobalNetworkPolicyV3ToV1Value`). `None` for the policies
/// that never apply to workloads (`doNotTrack`, `preDNAT`: host endpoints only).
pub fn parse_global_network_policy(
    p: &GlobalNetworkPolicy,
) -> Result<Option<ParsedPolicy>, InvalidObject> {
    check_order(p.spec.order)?;
    let mut sel = if p.spec.selector.is_empty() {
        None
    } else {
        Some(parse_selector(&p.spec.selector, "selector")?)
    };
    let join = |cur: Option<Selector>, new: Selector| match cur {
        Some(c) => and(c, new),
        None => new,
    };
    if !p.spec.namespace_selector.is_empty() {
        let ns = parse_selector(&p.spec.namespace_selector, "namespaceSelector")?;
        let s = join(sel, prefix_keys(&ns, NAMESPACE_LABEL_PREFIX));
        sel = Some(replace_all(&s, &has(LABEL_NAMESPACE), None));
    }
    if !p.spec.service_account_selector.is_empty() {
        let sa = parse_selector(&p.spec.service_account_selector, "serviceAccountSelector")?;
        let s = join(sel, prefix_keys(&sa, SERVICE_ACCOUNT_LABEL_PREFIX));
        sel = Some(replace_all(&s, &has(LABEL_SERVICE_ACCOUNT), None));
    }
    let (i, e) = directions(
        &p.spec.types,
        !p.spec.ingress.is_empty(),
        !p.spec.egress.is_empty(),
    )?;
    let parsed = ParsedPolicy {
        key: PolicyKey {
            kind: PolicyKind::GlobalNetworkPolicy,
            namespace: "".into(),
            name: p.metadata.name.as_str().into(),
        },
        tier: tier_or_default(&p.spec.tier),
        order: p.spec.order,
        selector: sel.unwrap_or(Selector::All).to_string(),
        ingress: if i {
            Some(parse_rules(&p.spec.ingress, "", "ingress")?)
        } else {
            None
        },
        egress: if e {
            Some(parse_rules(&p.spec.egress, "", "egress")?)
        } else {
            None
        },
    };
    if p.spec.do_not_track || p.spec.pre_dnat {
        return Ok(None);
    }
    Ok(Some(parsed))
}

/// A profile: its rules (not scoped to a namespace) and `labelsToApply`.
pub fn parse_profile(p: &Profile) -> Result<ParsedProfile, InvalidObject> {
    Ok(ParsedProfile {
        name: p.metadata.name.clone(),
        ingress: parse_rules(&p.spec.ingress, "", "ingress")?,
        egress: parse_rules(&p.spec.egress, "", "egress")?,
        labels: p.spec.labels_to_apply.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::model::policy::{NetworkPolicySpec, ServiceAccountMatch};

    fn np(ns: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
        let mut p = NetworkPolicy::new("NetworkPolicy", "p", spec);
        p.metadata.namespace = ns.into();
        p
    }

    /// Mirrors networkpolicyprocessor.go ConvertNetworkPolicyV3ToV1Value and rules.go
    /// getEndpointSelector.
    #[test]
    fn namespaced_selectors_are_scoped_as_calicos_update_processor_does() {
        let mut rule = Rule::allow();
        rule.source = Some(EntityRule {
            selector: "role == 'fe'".into(),
            ..Default::default()
        });
        rule.destination = Some(EntityRule {
            namespace_selector: "team == 'a'".into(),
            service_accounts: Some(ServiceAccountMatch {
                names: vec!["sa1".into()],
                selector: String::new(),
            }),
            ..Default::default()
        });
        let p = parse_network_policy(&np(
            "prod",
            NetworkPolicySpec {
                selector: "app == 'web'".into(),
                service_account_selector: "x == 'y'".into(),
                ingress: vec![rule],
                ..Default::default()
            },
        ))
        .expect("valid");
        assert_eq!(
            p.selector,
            "app == \"web\" && projectcalico.org/namespace == \"prod\" && pcsa.x == \"y\""
        );
        let r = &p.ingress.as_ref().expect("ingress")[0];
        assert_eq!(
            r.src.sets,
            [SetSpec::Selector(
                "projectcalico.org/namespace == \"prod\" && role == \"fe\"".into()
            )]
        );
        assert_eq!(
            r.dst.sets,
            [SetSpec::Selector(
                "pcns.team == \"a\" && projectcalico.org/serviceaccount in {\"sa1\"}".into()
            )]
        );
        assert!(p.egress.is_none(), "types default to Ingress");
    }

    #[test]
    fn invalid_rules_make_the_object_invalid() {
        let mut rule = Rule::allow();
        rule.destination = Some(EntityRule {
            ports: vec![Port::single(80)],
            ..Default::default()
        });
        let err = parse_network_policy(&np(
            "a",
            NetworkPolicySpec {
                ingress: vec![rule],
                ..Default::default()
            },
        ))
        .expect_err("ports without protocol");
        assert!(err.0.contains("ports need protocol"), "{err}");
        let err = parse_network_policy(&np(
            "a",
            NetworkPolicySpec {
                selector: "a ==".into(),
                ..Default::default()
            },
        ))
        .expect_err("selector");
        assert!(err.0.contains("selector"), "{err}");
        let mut rule = Rule::allow();
        rule.destination = Some(EntityRule {
            services: Some(calico_datastore::model::policy::ServiceMatch {
                name: "kube-dns".into(),
                namespace: "kube-system".into(),
            }),
            ..Default::default()
        });
        let err = parse_network_policy(&np(
            "a",
            NetworkPolicySpec {
                egress: vec![rule],
                ..Default::default()
            },
        ))
        .expect_err("services");
        assert!(err.0.contains("services"), "{err}");
    }

    #[test]
    fn types_default_as_calico_does() {
        assert_eq!(directions(&[], false, false), Ok((true, false)));
        assert_eq!(directions(&[], true, false), Ok((true, false)));
        assert_eq!(directions(&[], false, true), Ok((false, true)));
        assert_eq!(directions(&[], true, true), Ok((true, true)));
        assert_eq!(
            directions(&["Egress".into()], true, false),
            Ok((false, true))
        );
    }
}
