//! The Calico Node resource, typed (`internalapi.Node`): what calicoctl reads, validates
//! and prints, and what the node agent will write. Fields we do not know (from newer
//! writers) are kept in [`NodeSpec::extra`].

use super::resources::Resource;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// An AS number: a number, or a string with the number or the dotted `high.low` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsNumber(pub u32);

impl Serialize for AsNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("invalid AS number {v}"));
        match &v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(AsNumber)
                .ok_or_else(bad),
            Value::String(s) => {
                if let Ok(n) = s.parse::<u32>() {
                    return Ok(AsNumber(n));
                }
                let (hi, lo) = s.split_once('.').ok_or_else(bad)?;
                let hi: u16 = hi.parse().map_err(|_| bad())?;
                let lo: u16 = lo.parse().map_err(|_| bad())?;
                Ok(AsNumber((u32::from(hi) << 16) | u32::from(lo)))
            }
            _ => Err(bad()),
        }
    }
}

/// `NodeBGPSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBgpSpec {
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(
        rename = "ipv4Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_address: String,
    #[serde(
        rename = "ipv6Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_address: String,
    #[serde(
        rename = "ipv4IPIPTunnelAddr",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_ipip_tunnel_addr: String,
    #[serde(
        rename = "routeReflectorClusterID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub route_reflector_cluster_id: String,
}

/// `OrchRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchRef {
    #[serde(rename = "nodeName", default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default)]
    pub orchestrator: String,
}

/// `NodeWireguardSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWireguardSpec {
    #[serde(
        rename = "interfaceIPv4Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub interface_ipv4_address: String,
    #[serde(
        rename = "interfaceIPv6Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub interface_ipv6_address: String,
}

/// `NodeAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// `NodeInterface`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInterface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// The Calico Node's spec (`internalapi.NodeSpec`), fields in Calico's order. Fields we do
/// not know (from newer writers) are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
    #[serde(
        rename = "ipv4VXLANTunnelAddr",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_vxlan_tunnel_addr: String,
    #[serde(
        rename = "vxlanTunnelMACAddr",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub vxlan_tunnel_mac_addr: String,
    #[serde(
        rename = "ipv6VXLANTunnelAddr",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_vxlan_tunnel_addr: String,
    #[serde(
        rename = "vxlanTunnelMACAddrV6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub vxlan_tunnel_mac_addr_v6: String,
    #[serde(rename = "orchRefs", default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguardSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NodeInterface>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A Calico Node.
pub type Node = Resource<NodeSpec>;
