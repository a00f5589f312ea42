//! Calico's policy resources (`projectcalico.org/v3`) as stored in etcd: NetworkPolicy,
//! GlobalNetworkPolicy, Tier, NetworkSet, GlobalNetworkSet, FelixConfiguration, and the
//! rules they share with Profiles (`api/pkg/apis/projectcalico/v3/policy_common.go` and
//! `numorstring` of release-v3.32).
//!
//! Fields are in Calico's Go order (calicoctl prints them in that order) and omitted when
//! Go's `omitempty` omits them. Fields this suite does not interpret are kept in `extra`, so
//! an object written by Calico's tools survives a read-modify-write. Validation is not here
//! (models only): calicoctl and the agent validate.

use super::resources::Resource;
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

fn is_false(b: &bool) -> bool {
    !*b
}

/// An `order` as Go's `encoding/json` writes a float64: a whole number without a fraction
/// (`100`, not `100.0`), anything else as a float.
fn go_order<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => s.serialize_i64(*n as i64),
        Some(n) => s.serialize_f64(*n),
        None => s.serialize_none(),
    }
}

/// `numorstring.Protocol`: a number (0-255) or a name (`TCP`, `UDP`, `ICMP`, `ICMPv6`,
/// `SCTP`, `UDPLite`; other strings are kept for validation to refuse). A string of digits
/// reads as a number, as `Uint8OrString` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Number(u8),
    Name(String),
}

impl Protocol {
    /// The IP protocol number, when known: a number, or one of Calico's names (matched
    /// case-insensitively, as `ProtocolFromString` does).
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Number(n) => Some(*n),
            Protocol::Name(s) => match s.to_ascii_lowercase().as_str() {
                "tcp" => Some(6),
                "udp" => Some(17),
                "icmp" => Some(1),
                "icmpv6" => Some(58),
                "sctp" => Some(132),
                "udplite" => Some(136),
                _ => None,
            },
        }
    }

    /// Whether rules with this protocol may name ports (`Protocol.SupportsPorts`).
    pub fn supports_ports(&self) -> bool {
        matches!(self.number(), Some(6 | 17 | 132 | 136))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Number(n) => write!(f, "{n}"),
            Protocol::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u8(*n),
            Protocol::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(match s.parse::<u8>() {
                Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Protocol::Number(n),
                _ => Protocol::Name(s),
            }),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .map(Protocol::Number)
                .ok_or_else(|| de::Error::custom(format!("invalid protocol number {n}"))),
            other => Err(de::Error::custom(format!(
                "a protocol is a number or a string, not {other}"
            ))),
        }
    }
}

/// `numorstring.Port`: one port, a range `min:max`, or a named port (the endpoint's
/// `ports[].name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Range { min: u16, max: u16 },
    Named(String),
}

/// Why a port string is refused (`numorstring.PortFromString`'s messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("invalid port format ({0})")]
    Format(String),
    #[error("minimum port number ({0}) is greater than maximum port number ({1}) in port range")]
    Reversed(u16, u16),
    #[error("invalid name for named port ({0})")]
    Name(String),
}

impl Port {
    pub fn single(p: u16) -> Port {
        Port::Range { min: p, max: p }
    }

    /// `PortFromString`: digits are a port, `a:b` a range, anything else a name of 1-128
    /// characters from `[a-zA-Z0-9_.-]`.
    pub fn parse(s: &str) -> Result<Port, PortError> {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if digits(s) {
            return s
                .parse::<u16>()
                .map(Port::single)
                .map_err(|_| PortError::Format(s.to_string()));
        }
        if let Some((a, b)) = s.split_once(':')
            && digits(a)
            && digits(b)
        {
            let min = a
                .parse::<u16>()
                .map_err(|_| PortError::Format(s.to_string()))?;
            let max = b
                .parse::<u16>()
                .map_err(|_| PortError::Format(s.to_string()))?;
            if min > max {
                return Err(PortError::Reversed(min, max));
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
            Err(PortError::Name(s.to_string()))
        }
    }

    pub fn is_named(&self) -> bool {
        matches!(self, Port::Named(_))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Range { min, max } if min == max => write!(f, "{min}"),
            Port::Range { min, max } => write!(f, "{min}:{max}"),
            Port::Named(n) => f.write_str(n),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Range { min, max } if min == max => s.serialize_u16(*min),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Port::parse(&s).map_err(de::Error::custom),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Port::single)
                .ok_or_else(|| de::Error::custom(format!("invalid port number {n}"))),
            other => Err(de::Error::custom(format!(
                "a port is a number or a string, not {other}"
            ))),
        }
    }
}

/// `ICMPFields`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpFields {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
}

/// `ServiceAccountMatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceAccountMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

/// `ServiceMatch` (kept for round trips; Felix enforces it only with kube-proxy data this
/// suite does not read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// `EntityRule`, the source or destination of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    #[serde(
        rename = "namespaceSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace_selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(rename = "notNets", default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    #[serde(
        rename = "notSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub not_selector: String,
    #[serde(rename = "notPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    #[serde(
        rename = "serviceAccounts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_accounts: Option<ServiceAccountMatch>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EntityRule {
    /// Go's `omitzero`: an entity rule with nothing set is left out.
    pub fn is_empty(&self) -> bool {
        *self == EntityRule::default()
    }
}

/// A policy or profile rule. `source`/`destination` are left out when empty (3.32's
/// `omitzero`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub action: String,
    #[serde(rename = "ipVersion", default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    #[serde(
        rename = "notProtocol",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub not_protocol: Option<Protocol>,
    #[serde(rename = "notICMP", default, skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Rule {
    /// A rule with only an action.
    pub fn action(action: &str) -> Self {
        Rule {
            action: action.to_string(),
            ip_version: None,
            protocol: None,
            icmp: None,
            not_protocol: None,
            not_icmp: None,
            source: None,
            destination: None,
            http: None,
            metadata: None,
            extra: Map::new(),
        }
    }

    pub fn allow() -> Self {
        Rule::action("Allow")
    }

    /// The source, empty when absent.
    pub fn source(&self) -> EntityRule {
        self.source.clone().unwrap_or_default()
    }

    /// The destination, empty when absent.
    pub fn destination(&self) -> EntityRule {
        self.destination.clone().unwrap_or_default()
    }
}

/// `NetworkPolicySpec` (namespaced).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkPolicySpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_order"
    )]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(
        rename = "serviceAccountSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_account_selector: String,
    #[serde(
        rename = "performanceHints",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub performance_hints: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GlobalNetworkPolicySpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalNetworkPolicySpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_order"
    )]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(rename = "doNotTrack", default, skip_serializing_if = "is_false")]
    pub do_not_track: bool,
    #[serde(rename = "preDNAT", default, skip_serializing_if = "is_false")]
    pub pre_dnat: bool,
    #[serde(rename = "applyOnForward", default, skip_serializing_if = "is_false")]
    pub apply_on_forward: bool,
    #[serde(
        rename = "serviceAccountSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_account_selector: String,
    #[serde(
        rename = "namespaceSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace_selector: String,
    #[serde(
        rename = "performanceHints",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub performance_hints: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `TierSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierSpec {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_order"
    )]
    pub order: Option<f64>,
    #[serde(
        rename = "defaultAction",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_action: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `NetworkSetSpec` and `GlobalNetworkSetSpec` (the same shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSetSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `FelixConfigurationSpec`: the fields the policy agent reads, typed; every other field
/// (Felix has well over a hundred) kept as it was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FelixConfigurationSpec {
    /// `Drop` (Felix's default), `Accept` or `Return`.
    #[serde(
        rename = "defaultEndpointToHostAction",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_endpoint_to_host_action: Option<String>,
    #[serde(
        rename = "endpointStatusPathPrefix",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_status_path_prefix: Option<String>,
    #[serde(
        rename = "logSeverityScreen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub log_severity_screen: Option<String>,
    #[serde(rename = "logPrefix", default, skip_serializing_if = "Option::is_none")]
    pub log_prefix: Option<String>,
    #[serde(
        rename = "nftablesMarkMask",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub nftables_mark_mask: Option<u32>,
    #[serde(
        rename = "disableConntrackInvalidCheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_conntrack_invalid_check: Option<bool>,
    #[serde(
        rename = "allowVXLANPacketsFromWorkloads",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_vxlan_packets_from_workloads: Option<bool>,
    #[serde(
        rename = "allowIPIPPacketsFromWorkloads",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_ipip_packets_from_workloads: Option<bool>,
    #[serde(rename = "vxlanPort", default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl FelixConfigurationSpec {
    /// This node's settings over the cluster's (`node.<name>` wins field by field, as
    /// Felix's config loader layers them).
    pub fn layered(cluster: &FelixConfigurationSpec, node: &FelixConfigurationSpec) -> Self {
        let mut out = cluster.clone();
        macro_rules! take {
            ($($f:ident),*) => { $( if node.$f.is_some() { out.$f = node.$f.clone(); } )* };
        }
        take!(
            default_endpoint_to_host_action,
            endpoint_status_path_prefix,
            log_severity_screen,
            log_prefix,
            nftables_mark_mask,
            disable_conntrack_invalid_check,
            allow_vxlan_packets_from_workloads,
            allow_ipip_packets_from_workloads,
            vxlan_port
        );
        for (k, v) in &node.extra {
            out.extra.insert(k.clone(), v.clone());
        }
        out
    }
}

pub type NetworkPolicy = Resource<NetworkPolicySpec>;
pub type GlobalNetworkPolicy = Resource<GlobalNetworkPolicySpec>;
pub type Tier = Resource<TierSpec>;
pub type NetworkSet = Resource<NetworkSetSpec>;
pub type GlobalNetworkSet = Resource<NetworkSetSpec>;
pub type FelixConfiguration = Resource<FelixConfigurationSpec>;

/// Labels of a resource, for selectors (NetworkSets and GlobalNetworkSets are selected by
/// their labels).
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_read_and_write_as_numorstring_does() {
        let ports: Vec<Port> =
            serde_json::from_value(json!([80, "443", "8000:8080", "http", "web-2"]))
                .expect("ports");
        assert_eq!(
            ports,
            vec![
                Port::single(80),
                Port::single(443),
                Port::Range {
                    min: 8000,
                    max: 8080
                },
                Port::Named("http".into()),
                Port::Named("web-2".into()),
            ]
        );
        assert_eq!(
            serde_json::to_value(&ports).expect("json"),
            json!([80, 443, "8000:8080", "http", "web-2"])
        );
        assert_eq!(Port::parse("90:80"), Err(PortError::Reversed(90, 80)));
        assert!(Port::parse("70000").is_err());
        assert!(Port::parse("a b").is_err());
        assert!(serde_json::from_value::<Port>(json!(-1)).is_err());
    }

    #[test]
    fn protocols_read_as_uint8_or_string() {
        let p: Vec<Protocol> =
            serde_json::from_value(json!(["TCP", 17, "6", "icmpv6", "bogus"])).expect("protos");
        assert_eq!(p[0].number(), Some(6));
        assert_eq!(p[1], Protocol::Number(17));
        assert_eq!(p[2], Protocol::Number(6));
        assert_eq!(p[3].number(), Some(58));
        assert_eq!(p[4].number(), None);
        assert!(p[0].supports_ports() && !p[3].supports_ports());
        assert_eq!(
            serde_json::to_value(&p).expect("json"),
            json!(["TCP", 17, 6, "icmpv6", "bogus"])
        );
    }

    #[test]
    fn a_policy_round_trips_in_calicos_field_order() {
        let text = r#"{"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.allow-web","namespace":"prod"},"spec":{"tier":"default","order":100,"ingress":[{"action":"Allow","protocol":"TCP","source":{"selector":"role == 'fe'","namespaceSelector":"all()"},"destination":{"ports":[80,"8000:8080","http"]}},{"action":"Deny","ipVersion":4,"protocol":"ICMP","icmp":{"type":8,"code":0}}],"egress":[{"action":"Allow"}],"selector":"app == 'web'","types":["Ingress","Egress"],"futureField":{"x":1}}}"#;
        let p: NetworkPolicy = serde_json::from_str(text).expect("policy");
        assert_eq!(p.spec.order, Some(100.0));
        let spec = serde_json::to_value(&p.spec).expect("json");
        assert_eq!(
            spec["order"].to_string(),
            "100",
            "whole orders as Go writes them"
        );
        let tier = TierSpec {
            order: Some(10.5),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&tier).expect("json"),
            r#"{"order":10.5}"#
        );
        assert_eq!(
            p.spec.ingress[0].destination().ports[2],
            Port::Named("http".into())
        );
        assert_eq!(p.spec.extra["futureField"], json!({"x": 1}));
        let back = String::from_utf8(p.to_stored().expect("encodes")).expect("utf8");
        let again: NetworkPolicy = serde_json::from_str(&back).expect("re-reads");
        assert_eq!(again, p);
        // Field order as Go writes it: action, ipVersion, protocol, icmp, ...
        let rule = serde_json::to_string(&p.spec.ingress[1]).expect("json");
        assert_eq!(
            rule,
            r#"{"action":"Deny","ipVersion":4,"protocol":"ICMP","icmp":{"type":8,"code":0}}"#
        );
    }

    #[test]
    fn node_felix_configuration_overrides_the_clusters() {
        let cluster = FelixConfigurationSpec {
            default_endpoint_to_host_action: Some("Accept".into()),
            log_severity_screen: Some("Info".into()),
            ..Default::default()
        };
        let node = FelixConfigurationSpec {
            default_endpoint_to_host_action: Some("Return".into()),
            ..Default::default()
        };
        let l = FelixConfigurationSpec::layered(&cluster, &node);
        assert_eq!(l.default_endpoint_to_host_action.as_deref(), Some("Return"));
        assert_eq!(l.log_severity_screen.as_deref(), Some("Info"));
    }
}
