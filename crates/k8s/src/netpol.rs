//! Kubernetes NetworkPolicy → Calico NetworkPolicy, as Calico's kube-controllers stores it in
//! etcd mode: `K8sNetworkPolicyToCalico` and its helpers in
//! `libcalico-go/lib/backend/k8s/conversion/conversion.go` (release-v3.32), then
//! `kube-controllers/pkg/converter/networkpolicy_converter.go` (the name `knp.default.<name>`,
//! metadata reduced to name and namespace), then the defaulting of `clientv3`'s Create
//! (`api/pkg/defaults`: the `projectcalico.org/tier` label).
//!
//! What comes out:
//! - tier `default`, order 1000, `selector` = `projectcalico.org/orchestrator == 'k8s'` and
//!   the pod selector's terms (`matchLabels` in key order, then `matchExpressions` as written:
//!   `k in { 'a', 'b' }`, `k not in { ... }`, `has(k)`, `! has(k)`);
//! - `types`: `Ingress` and/or `Egress` from `policyTypes`; `[Ingress]` when it names neither
//!   (egress rules are converted all the same, as Calico does);
//! - one Allow rule per (protocol, peer) of each Kubernetes rule, protocols in string order:
//!   a port's protocol defaults to TCP, each protocol's ports merged into ranges
//!   ([`simplify_ports`]), a protocol with a port entry without `port` allowing all its
//!   ports; no `ports` at all means any protocol;
//! - a peer is its `ipBlock` (`nets`, `except` → `notNets`, each CIDR masked as Go's
//!   `net.ParseCIDR` prints it) or its selectors: the pod selector as above (absent = every
//!   pod of the namespace), the namespace selector without the orchestrator term, `{}` =
//!   `all()`, absent = the policy's namespace. Calico's Felix, not this conversion, maps the
//!   namespace selector onto the `pcns.` labels of the namespace profiles.
//! - A Kubernetes rule with a port Calico cannot parse is dropped whole and reported in
//!   [`KnpConversion::dropped`]; a CIDR Go cannot parse makes the peer match everything,
//!   exactly as Calico (which only logs it) — the API server validates both, so neither
//!   happens with objects read from it.

use calico_datastore::model::policy::{
    EntityRule, NetworkPolicy, NetworkPolicySpec, Port, Protocol, Rule,
};
use calico_datastore::model::resources::{ObjectMeta, Resource};
use k8s_openapi::api::networking::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kube-controllers prefixes to a Kubernetes policy's name in etcd
/// (`KubernetesNetworkPolicyEtcdPrefix`).
pub const KNP_NAME_PREFIX: &str = "knp.default.";
/// The order of every converted policy.
pub const KNP_ORDER: f64 = 1000.0;
/// `apiv3.LabelOrchestrator`.
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// `apiv3.LabelTier`, set by `clientv3`'s defaulting on every policy it writes.
pub const LABEL_TIER: &str = "projectcalico.org/tier";

/// Which kind of Kubernetes selector is converted (`selectorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorKind {
    /// Pods: the orchestrator term first; absent or empty = every pod.
    Pod,
    /// Namespaces: absent = none given (`""`), empty = `all()`.
    Namespace,
}

/// A Kubernetes rule's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A Kubernetes rule left out (`ErrorPolicyConversionRule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRule {
    pub direction: Direction,
    /// Its index in the Kubernetes policy's `ingress` or `egress`.
    pub index: usize,
    /// Calico's reason, e.g. `k8s rule couldn't be converted: failed to parse k8s port:
    /// invalid port -50:-1: invalid name for named port (-50:-1)`.
    pub reason: String,
}

/// The converted policy and what Calico would have logged.
#[derive(Debug, Clone, PartialEq)]
pub struct KnpConversion {
    pub policy: NetworkPolicy,
    /// Rules left out (Calico's `ErrorPolicyConversion`, which kube-controllers ignores).
    pub dropped: Vec<DroppedRule>,
    /// CIDRs of `ipBlock`s that did not parse (Calico logs "Failed to parse CIDR").
    pub bad_cidrs: Vec<String>,
    /// `policyTypes` lacks `Egress` while there are egress rules (Calico warns).
    pub egress_rules_without_egress_type: bool,
}

/// Converts `np` as kube-controllers does before writing it to etcd.
pub fn k8s_network_policy_to_calico(np: &k8s::NetworkPolicy) -> KnpConversion {
    let mut out = KnpConversion {
        policy: Resource::new("NetworkPolicy", "", NetworkPolicySpec::default()),
        dropped: Vec::new(),
        bad_cidrs: Vec::new(),
        egress_rules_without_egress_type: false,
    };
    let spec = np.spec.clone().unwrap_or_default();

    let mut ingress = Vec::new();
    for (index, r) in spec.ingress.iter().flatten().enumerate() {
        let peers = r.from.as_deref().unwrap_or_default();
        let ports = r.ports.as_deref().unwrap_or_default();
        match rule_to_calico(peers, ports, Direction::Ingress, &mut out.bad_cidrs) {
            Ok(rules) => ingress.extend(rules),
            Err(reason) => out.dropped.push(DroppedRule {
                direction: Direction::Ingress,
                index,
                reason,
            }),
        }
    }
    let mut egress = Vec::new();
    for (index, r) in spec.egress.iter().flatten().enumerate() {
        let peers = r.to.as_deref().unwrap_or_default();
        let ports = r.ports.as_deref().unwrap_or_default();
        match rule_to_calico(peers, ports, Direction::Egress, &mut out.bad_cidrs) {
            Ok(rules) => egress.extend(rules),
            Err(reason) => out.dropped.push(DroppedRule {
                direction: Direction::Egress,
                index,
                reason,
            }),
        }
    }

    let named = |t: &str| spec.policy_types.iter().flatten().any(|p| p == t);
    let mut types = Vec::new();
    if named("Ingress") {
        types.push("Ingress".to_string());
    }
    if named("Egress") {
        types.push("Egress".to_string());
    } else if !egress.is_empty() {
        out.egress_rules_without_egress_type = true;
    }
    // No types: a cluster from before `policyTypes` (Kubernetes 1.7), ingress only.
    if types.is_empty() {
        types.push("Ingress".to_string());
    }

    let name = np.metadata.name.clone().unwrap_or_default();
    out.policy.metadata = ObjectMeta {
        name: format!("{KNP_NAME_PREFIX}{name}"),
        namespace: np.metadata.namespace.clone().unwrap_or_default(),
        labels: BTreeMap::from([(LABEL_TIER.to_string(), "default".to_string())]),
        ..ObjectMeta::default()
    };
    out.policy.spec = NetworkPolicySpec {
        tier: "default".to_string(),
        order: Some(KNP_ORDER),
        ingress,
        egress,
        selector: k8s_selector_to_calico(spec.pod_selector.as_ref(), SelectorKind::Pod),
        types,
        ..NetworkPolicySpec::default()
    };
    out
}

/// `k8sSelectorToCalico`.
pub fn k8s_selector_to_calico(s: Option<&LabelSelector>, kind: SelectorKind) -> String {
    let mut terms = Vec::new();
    if kind == SelectorKind::Pod {
        terms.push(format!("{LABEL_ORCHESTRATOR} == 'k8s'"));
    }
    let Some(s) = s else {
        return terms.join(" && ");
    };
    let labels = s.match_labels.as_ref();
    let exprs = s.match_expressions.as_deref().unwrap_or_default();
    if kind == SelectorKind::Namespace && labels.is_none_or(BTreeMap::is_empty) && exprs.is_empty()
    {
        return "all()".to_string();
    }
    // A BTreeMap iterates in key order: Go sorts the keys.
    for (k, v) in labels.into_iter().flatten() {
        terms.push(format!("{k} == '{v}'"));
    }
    for e in exprs {
        let values = e.values.as_deref().unwrap_or_default().join("', '");
        match e.operator.as_str() {
            "In" => terms.push(format!("{} in {{ '{values}' }}", e.key)),
            "NotIn" => terms.push(format!("{} not in {{ '{values}' }}", e.key)),
            "Exists" => terms.push(format!("has({})", e.key)),
            "DoesNotExist" => terms.push(format!("! has({})", e.key)),
            // Calico skips an operator it does not know.
            _ => {}
        }
    }
    terms.join(" && ")
}

/// `k8sRuleToCalico`: one Kubernetes rule as Calico rules, or why it is dropped.
fn rule_to_calico(
    peers: &[k8s::NetworkPolicyPeer],
    ports: &[k8s::NetworkPolicyPort],
    direction: Direction,
    bad_cidrs: &mut Vec<String>,
) -> Result<Vec<Rule>, String> {
    // Protocol (its string; "" for "no ports given": any protocol) → ports (None: all).
    let mut by_protocol: BTreeMap<String, Option<Vec<Port>>> = BTreeMap::new();
    if ports.is_empty() {
        by_protocol.insert(String::new(), None);
    }
    for p in ports {
        // TCP is the implicit default of a NetworkPolicyPort.
        let protocol = protocol_from_string(p.protocol.as_deref().unwrap_or("TCP"));
        let calico_ports = port_to_calico(p).map_err(|e| {
            format!("k8s rule couldn't be converted: failed to parse k8s port: {e}")
        })?;
        let key = protocol.to_string();
        match calico_ports {
            // A port entry without a port: every port of the protocol, whatever else.
            None => {
                by_protocol.insert(key, None);
            }
            Some(list) => {
                if let Some(existing) = by_protocol.entry(key).or_insert_with(|| Some(Vec::new())) {
                    existing.extend(list);
                }
            }
        }
    }

    let peer_fields: Vec<PeerFields> = if peers.is_empty() {
        vec![PeerFields::default()]
    } else {
        peers.iter().map(|p| peer_to_calico(p, bad_cidrs)).collect()
    };

    let mut rules = Vec::new();
    // BTreeMap order is Go's sort.Strings of the protocol strings.
    for (protocol, ports) in by_protocol {
        let ports = simplify_ports(ports.unwrap_or_default());
        let protocol = (!protocol.is_empty()).then(|| protocol_from_string(&protocol));
        for peer in &peer_fields {
            let mut rule = Rule::allow();
            rule.protocol = protocol.clone();
            let selected = EntityRule {
                nets: peer.nets.clone(),
                selector: peer.selector.clone(),
                namespace_selector: peer.namespace_selector.clone(),
                not_nets: peer.not_nets.clone(),
                ..EntityRule::default()
            };
            let to_ports = EntityRule {
                ports: ports.clone(),
                ..EntityRule::default()
            };
            let (source, destination) = match direction {
                Direction::Ingress => (selected, to_ports),
                Direction::Egress => (
                    EntityRule::default(),
                    EntityRule {
                        ports: ports.clone(),
                        ..selected
                    },
                ),
            };
            rule.source = (!source.is_empty()).then_some(source);
            rule.destination = (!destination.is_empty()).then_some(destination);
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// `numorstring.ProtocolFromString`: Calico's names matched case-insensitively and written
/// its way (`TCP`, `UDP`, `SCTP`, ...), anything else kept as given (a string, even digits).
fn protocol_from_string(p: &str) -> Protocol {
    const NAMES: [&str; 6] = ["UDP", "TCP", "ICMP", "ICMPv6", "SCTP", "UDPLite"];
    let name = NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(p))
        .map_or(p, |n| *n);
    Protocol::Name(name.to_string())
}

/// `k8sPortToCalico`: `None` for an entry without a port (all ports), else the port or the
/// range `port:endPort`, parsed as `numorstring.PortFromString` does.
fn port_to_calico(p: &k8s::NetworkPolicyPort) -> Result<Option<Vec<Port>>, String> {
    let Some(port) = &p.port else {
        return Ok(None);
    };
    let mut text = match port {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    if let Some(end) = p.end_port {
        text = format!("{text}:{end}");
    }
    port_from_string(&text)
        .map(|p| Some(vec![p]))
        .map_err(|e| format!("invalid port {text}: {e}"))
}

/// `numorstring.PortFromString`, with its messages.
fn port_from_string(s: &str) -> Result<Port, String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if digits(s) {
        return s
            .parse::<u16>()
            .map(Port::single)
            .map_err(|_| format!("invalid port format ({s})"));
    }
    if let Some((a, b)) = s.split_once(':')
        && digits(a)
        && digits(b)
    {
        let min = a
            .parse::<u16>()
            .map_err(|_| format!("invalid minimum port number in range ({s})"))?;
        let max = b
            .parse::<u16>()
            .map_err(|_| format!("invalid maximum port number in range ({s})"))?;
        if min > max {
            return Err(format!(
                "minimum port number ({min}) is greater than maximum port number ({max}) in port range"
            ));
        }
        return Ok(Port::Range { min, max });
    }
    let name_ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name_ok {
        Ok(Port::Named(s.to_string()))
    } else {
        Err(format!("invalid name for named port ({s})"))
    }
}

/// `SimplifyPorts`: named ports first, as given, then the numeric ports merged into the
/// fewest ranges, in order. Fewer than two entries, or fewer than two numeric ports in all,
/// are returned as given.
pub fn simplify_ports(ports: Vec<Port>) -> Vec<Port> {
    if ports.len() <= 1 {
        return ports;
    }
    let mut named = Vec::new();
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    let mut numeric_count: u64 = 0;
    for p in &ports {
        match p {
            Port::Named(_) => named.push(p.clone()),
            Port::Range { min, max } => {
                // A reversed range holds no port, as Go's loop over it.
                if min <= max {
                    numeric_count += u64::from(*max - *min) + 1;
                    ranges.push((*min, *max));
                }
            }
        }
    }
    if numeric_count <= 1 {
        return ports;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (min, max) in ranges {
        match merged.last_mut() {
            // Overlapping or adjacent: one range.
            Some(last) if u32::from(min) <= u32::from(last.1) + 1 => last.1 = last.1.max(max),
            _ => merged.push((min, max)),
        }
    }
    named.extend(
        merged
            .into_iter()
            .map(|(min, max)| Port::Range { min, max }),
    );
    named
}

#[derive(Debug, Default)]
struct PeerFields {
    selector: String,
    namespace_selector: String,
    nets: Vec<String>,
    not_nets: Vec<String>,
}

/// `k8sPeerToCalicoFields`.
fn peer_to_calico(peer: &k8s::NetworkPolicyPeer, bad_cidrs: &mut Vec<String>) -> PeerFields {
    let mut f = PeerFields::default();
    if let Some(block) = &peer.ip_block {
        // As Calico: a CIDR that does not parse leaves what was converted so far.
        let Some(net) = go_parse_cidr(&block.cidr) else {
            bad_cidrs.push(block.cidr.clone());
            return f;
        };
        f.nets = vec![net];
        for except in block.except.iter().flatten() {
            let Some(net) = go_parse_cidr(except) else {
                bad_cidrs.push(except.clone());
                return f;
            };
            f.not_nets.push(net);
        }
        // With an ipBlock the API server allows no selector.
        return f;
    }
    f.selector = k8s_selector_to_calico(peer.pod_selector.as_ref(), SelectorKind::Pod);
    f.namespace_selector =
        k8s_selector_to_calico(peer.namespace_selector.as_ref(), SelectorKind::Namespace);
    f
}

/// Go's `net.ParseCIDR` then `IPNet.String()`: the network (host bits cleared) over the
/// prefix length; an IPv4-mapped IPv6 network prints as IPv4. `None` where Go fails (no
/// `/`, a zone, a prefix that is not plain digits or too long).
fn go_parse_cidr(s: &str) -> Option<String> {
    let (addr, prefix) = s.split_once('/')?;
    // Go's dtoi: plain digits (leading zeros allowed), no sign.
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u32 = prefix.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            if len > 32 {
                return None;
            }
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            Some(format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask)))
        }
        IpAddr::V6(a) => {
            if len > 128 {
                return None;
            }
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            let net = Ipv6Addr::from(u128::from(a) & mask);
            match net.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Some(format!("{v4}/{}", len - 96)),
                _ => Some(format!("{net}/{len}")),
            }
        }
    }
}

#[cfg(test)]
#[path = "netpol_tests.rs"]
mod tests;
