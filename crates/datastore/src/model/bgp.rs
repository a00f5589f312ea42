//! The BGP resources, typed as Calico's v3 API has them (`BGPConfigurationSpec`,
//! `BGPPeerSpec` in `api/pkg/apis/projectcalico/v3`): what calicoctl validates and prints and
//! what calico-node's route distribution reads. JSON names and omission rules follow Calico's
//! `json:"...,omitempty"` tags, so a resource written by Calico's tools reads back unchanged;
//! fields we do not know are kept in `extra`. Durations stay strings (Go's `metav1.Duration`
//! text, e.g. `"120s"`, `"1m30s"`) and are parsed by [`parse_go_duration`].

use super::node::AsNumber;
use super::resources::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// Calico's `BGPConfiguration` default AS number when neither the node nor the global
/// configuration names one.
pub const DEFAULT_AS_NUMBER: u32 = 64512;

/// The etcd plural of BGPConfiguration (`/calico/resources/v3/projectcalico.org/bgpconfigurations/<name>`).
pub const BGP_CONFIGURATIONS: &str = "bgpconfigurations";
/// The etcd plural of BGPPeer.
pub const BGP_PEERS: &str = "bgppeers";

/// `{ "cidr": ... }` of `serviceClusterIPs`, `serviceExternalIPs`, `serviceLoadBalancerIPs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrBlock {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr: String,
}

/// A named community (`aa:nn` or `aa:nn:mm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Community {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// `prefixAdvertisements[]`: communities (names or literal values) attached to a CIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixAdvertisement {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
}

/// Kubernetes' `SecretKeySelector` as Calico's `BGPPassword.secretKeyRef` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// `BGPPassword`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPassword {
    #[serde(
        rename = "secretKeyRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// `BGPConfigurationSpec`. The resource named `default` is global; `node.<name>` applies to
/// one node (only some fields are honoured per node, as in Calico).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpConfigurationSpec {
    #[serde(
        rename = "logSeverityScreen",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub log_severity_screen: String,
    #[serde(
        rename = "nodeToNodeMeshEnabled",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_to_node_mesh_enabled: Option<bool>,
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(
        rename = "serviceLoadBalancerIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<CidrBlock>,
    #[serde(
        rename = "serviceExternalIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<CidrBlock>,
    #[serde(
        rename = "serviceClusterIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<CidrBlock>,
    #[serde(
        rename = "serviceLoadBalancerAggregation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_load_balancer_aggregation: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    #[serde(
        rename = "prefixAdvertisements",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    #[serde(
        rename = "listenPort",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub listen_port: Option<u16>,
    #[serde(
        rename = "nodeMeshPassword",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_mesh_password: Option<BgpPassword>,
    /// Go duration text (`"120s"`).
    #[serde(
        rename = "nodeMeshMaxRestartTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_mesh_max_restart_time: Option<String>,
    /// `None` or `NodeIP`.
    #[serde(rename = "bindMode", default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<String>,
    #[serde(
        rename = "ignoredInterfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ignored_interfaces: Vec<String>,
    #[serde(
        rename = "localWorkloadPeeringIPV4",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub local_workload_peering_ipv4: String,
    #[serde(
        rename = "localWorkloadPeeringIPV6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub local_workload_peering_ipv6: String,
    #[serde(
        rename = "programClusterRoutes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub program_cluster_routes: Option<String>,
    #[serde(
        rename = "ipv4NormalRoutePriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_normal_route_priority: Option<i64>,
    #[serde(
        rename = "ipv6NormalRoutePriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_normal_route_priority: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type BgpConfiguration = Resource<BgpConfigurationSpec>;

/// `BGPPeerSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeerSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(
        rename = "nodeSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub node_selector: String,
    /// `ip`, `ip:port` or `[ipv6]:port`.
    #[serde(rename = "peerIP", default, skip_serializing_if = "String::is_empty")]
    pub peer_ip: String,
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(
        rename = "localASNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub local_as_number: Option<AsNumber>,
    #[serde(
        rename = "peerSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub peer_selector: String,
    #[serde(
        rename = "keepOriginalNextHop",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub keep_original_next_hop: bool,
    /// `Auto`, `Self` or `Keep`.
    #[serde(
        rename = "nextHopMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_hop_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// `UseNodeIP` (the default when empty) or `None`.
    #[serde(
        rename = "sourceAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub source_address: String,
    /// Go duration text.
    #[serde(
        rename = "maxRestartTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_restart_time: Option<String>,
    /// Go duration text.
    #[serde(
        rename = "keepaliveTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive_time: Option<String>,
    #[serde(
        rename = "numAllowedLocalASNumbers",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub num_allowed_local_as_numbers: Option<i32>,
    #[serde(
        rename = "ttlSecurity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_security: Option<u8>,
    #[serde(
        rename = "reachableBy",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub reachable_by: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    #[serde(
        rename = "localWorkloadSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub local_workload_selector: String,
    /// `Auto` (default) or `Manual`.
    #[serde(
        rename = "reversePeering",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reverse_peering: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type BgpPeer = Resource<BgpPeerSpec>;

/// Parses Go's `time.Duration` text as `metav1.Duration` writes and reads it: a sequence of
/// decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` (`"90s"`, `"1m30s"`,
/// `"1.5h"`), or `"0"`. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let s = text.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    if !total.is_finite() || total > u64::MAX as f64 / 2.0 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_metav1_writes_them() {
        assert_eq!(parse_go_duration("120s"), Some(Duration::from_secs(120)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn a_calico_bgp_peer_reads_and_writes_back_unchanged() {
        let json = r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"rack1-tor"},"spec":{"nodeSelector":"rack == 'rack-1'","peerIP":"192.20.30.40:1790","asNumber":64567,"password":{"secretKeyRef":{"name":"bgp-secrets","key":"rr-password"}},"keepaliveTime":"30s","reversePeering":"Manual","newField":1}}"#;
        let peer: BgpPeer = serde_json::from_str(json).unwrap();
        assert_eq!(peer.spec.as_number, Some(AsNumber(64567)));
        assert_eq!(peer.spec.extra.get("newField"), Some(&Value::from(1)));
        let back: Value = serde_json::to_value(&peer).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
    }

    #[test]
    fn a_calico_bgp_configuration_reads_and_writes_back_unchanged() {
        let json = r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"logSeverityScreen":"Info","nodeToNodeMeshEnabled":false,"asNumber":63400,"serviceClusterIPs":[{"cidr":"10.96.0.0/12"}],"communities":[{"name":"bgp-large-community","value":"63400:300:100"}],"prefixAdvertisements":[{"cidr":"172.218.4.0/26","communities":["bgp-large-community","63400:120"]}],"listenPort":178,"bindMode":"NodeIP","nodeMeshMaxRestartTime":"120s"}}"#;
        let cfg: BgpConfiguration = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.spec.node_to_node_mesh_enabled, Some(false));
        assert_eq!(cfg.spec.listen_port, Some(178));
        let back: Value = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
    }
}
