//! Calico v3 resources as the etcdv3 backend stores them: the whole object with `kind` and
//! `apiVersion`, `metadata.resourceVersion` stripped (it is the key's revision on read).

use super::cidr;
pub use super::policy::{EntityRule, Rule};
use crate::store::Kv;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const API_VERSION: &str = "projectcalico.org/v3";

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// `metav1.ObjectMeta`, the fields Calico's objects use; the rest kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(
        rename = "generateName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Never stored; filled in from the key's revision when read.
    #[serde(
        rename = "resourceVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_version: String,
    #[serde(
        rename = "creationTimestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Calico's default tiers (name, default action, order), which calico-node's start-up and
/// calicoctl's first write create when missing (libcalico-go's `EnsureInitialized`).
pub const DEFAULT_TIERS: [(&str, &str, u64); 3] = [
    ("default", "Deny", 1_000_000),
    ("kube-admin", "Pass", 1_000),
    ("kube-baseline", "Pass", 10_000_000),
];

/// One of [`DEFAULT_TIERS`] as a resource created `now`.
pub fn default_tier(
    name: &str,
    action: &str,
    order: u64,
    now: std::time::SystemTime,
) -> Resource<serde_json::Value> {
    let mut tier = Resource::new(
        "Tier",
        name,
        serde_json::json!({"order": order, "defaultAction": action}),
    );
    tier.stamp_created(now);
    tier.status = Some(serde_json::json!({}));
    tier
}

/// A v3 resource with spec `S`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource<S> {
    pub kind: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<S: Serialize + DeserializeOwned + Clone> Resource<S> {
    pub fn new(kind: &str, name: &str, spec: S) -> Self {
        Resource {
            kind: kind.to_string(),
            api_version: API_VERSION.to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
            extra: Map::new(),
        }
    }

    /// Reads a stored value; `resourceVersion` comes from the key's revision.
    pub fn from_kv(kv: &Kv) -> serde_json::Result<Self> {
        let mut r: Self = serde_json::from_slice(&kv.value)?;
        r.metadata.resource_version = kv.mod_revision.to_string();
        Ok(r)
    }

    /// Fills in what the datastore sets on create, as libcalico-go does: a random `uid`
    /// and the creation time (RFC 3339, seconds), unless already set.
    pub fn stamp_created(&mut self, now: std::time::SystemTime) {
        if self.metadata.uid.is_empty() {
            self.metadata.uid = new_uid();
        }
        if self.metadata.creation_timestamp.is_none() {
            self.metadata.creation_timestamp = Some(crate::model::time::rfc3339_seconds(now));
        }
    }

    /// The value to store: `resourceVersion` stripped, `kind`/`apiVersion` set.
    pub fn to_stored(&self) -> serde_json::Result<Vec<u8>> {
        let mut r = self.clone();
        r.metadata.resource_version.clear();
        r.api_version = API_VERSION.to_string();
        serde_json::to_vec(&r)
    }
}

/// A random UUID (v4) in the canonical text form, as `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A cluster GUID as Calico makes it: 16 random bytes as 32 hex digits.
pub fn new_cluster_guid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `IPPoolSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPoolSpec {
    pub cidr: String,
    #[serde(
        rename = "vxlanMode",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub vxlan_mode: String,
    #[serde(rename = "ipipMode", default, skip_serializing_if = "String::is_empty")]
    pub ipip_mode: String,
    #[serde(rename = "natOutgoing", default, skip_serializing_if = "is_false")]
    pub nat_outgoing: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(rename = "disableBGPExport", default, skip_serializing_if = "is_false")]
    pub disable_bgp_export: bool,
    #[serde(rename = "blockSize", default, skip_serializing_if = "is_zero")]
    pub block_size: u8,
    #[serde(
        rename = "nodeSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub node_selector: String,
    #[serde(
        rename = "namespaceSelector",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace_selector: String,
    #[serde(rename = "allowedUses", default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<String>,
    #[serde(
        rename = "assignmentMode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub assignment_mode: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type IpPool = Resource<IpPoolSpec>;

impl IpPoolSpec {
    /// A spec with just a CIDR (what a user writes).
    pub fn for_cidr(cidr: &str) -> Self {
        IpPoolSpec {
            cidr: cidr.to_string(),
            vxlan_mode: String::new(),
            ipip_mode: String::new(),
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            block_size: 0,
            node_selector: String::new(),
            namespace_selector: String::new(),
            allowed_uses: Vec::new(),
            assignment_mode: None,
            extra: Map::new(),
        }
    }

    /// Calico's defaults, applied on read (and written by calicoctl on create).
    pub fn with_defaults(&self) -> Self {
        let mut s = self.clone();
        let v4 = !s.cidr.contains(':');
        if s.block_size == 0 {
            s.block_size = if v4 { 26 } else { 122 };
        }
        if s.allowed_uses.is_empty() {
            s.allowed_uses = vec!["Workload".into(), "Tunnel".into()];
        }
        if s.node_selector.is_empty() {
            s.node_selector = "all()".into();
        }
        if s.ipip_mode.is_empty() {
            s.ipip_mode = "Never".into();
        }
        if s.vxlan_mode.is_empty() {
            s.vxlan_mode = "Never".into();
        }
        if s.assignment_mode.is_none() {
            s.assignment_mode = Some("Automatic".into());
        }
        s
    }

    /// The CIDR, parsed and truncated to its network.
    pub fn network(&self) -> Option<IpNet> {
        self.cidr.parse::<IpNet>().ok().map(|n| n.trunc())
    }
}

/// The IPAMConfiguration spec (`api/pkg/apis/projectcalico/v3/ipamconfig.go`), with Go's
/// JSON: `strictAffinity` and `autoAllocateBlocks` always written, the other two only when
/// set. A field missing from a document is Go's zero value: in etcd mode the CRD defaults
/// (`autoAllocateBlocks: true`) never apply, because calicoctl decodes into the typed struct,
/// which marshals `false`, before `validator.Validate` defaults what is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfigurationSpec {
    #[serde(rename = "strictAffinity", default)]
    pub strict_affinity: bool,
    #[serde(
        rename = "maxBlocksPerHost",
        default,
        skip_serializing_if = "is_zero_i32"
    )]
    pub max_blocks_per_host: i32,
    #[serde(rename = "autoAllocateBlocks", default)]
    pub auto_allocate_blocks: bool,
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kubevirt_vm_address_persistence: Option<String>,
}

pub type IpamConfiguration = Resource<IpamConfigurationSpec>;

/// `IPReservationSpec`: CIDRs (or bare addresses) IPAM never hands out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReservationSpec {
    #[serde(
        rename = "reservedCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reserved_cidrs: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type IpReservation = Resource<IpReservationSpec>;

impl IpReservationSpec {
    /// The reserved ranges; a bare address is a /32 or /128.
    pub fn networks(&self) -> Vec<IpNet> {
        self.reserved_cidrs
            .iter()
            .filter_map(|c| {
                c.parse::<IpNet>()
                    .ok()
                    .or_else(|| c.parse::<std::net::IpAddr>().ok().map(IpNet::from))
            })
            .collect()
    }
}

/// `ClusterInformationSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInformationSpec {
    #[serde(
        rename = "clusterGUID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cluster_guid: String,
    #[serde(
        rename = "clusterType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cluster_type: String,
    #[serde(
        rename = "calicoVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub calico_version: String,
    #[serde(
        rename = "datastoreReady",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub datastore_ready: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type ClusterInformation = Resource<ClusterInformationSpec>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_written_by_calicoctl_reads_and_round_trips() {
        let stored = json!({"kind":"IPPool","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"pool1","uid":"5b1f0000-0000-4000-8000-000000000000","creationTimestamp":"2026-05-01T10:00:00Z"},
            "spec":{"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,
                    "blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],
                    "assignmentMode":"Automatic","someNewField":7}});
        let kv = Kv {
            key: "/k".into(),
            value: serde_json::to_vec(&stored).expect("encodes"),
            mod_revision: 45,
        };
        let pool = IpPool::from_kv(&kv).expect("reads");
        assert_eq!(pool.metadata.resource_version, "45");
        assert!(pool.spec.nat_outgoing);
        let written: Value =
            serde_json::from_slice(&pool.to_stored().expect("encodes")).expect("json");
        assert_eq!(written, stored, "field for field, unknown fields kept");
    }

    #[test]
    fn pool_defaults_on_read() {
        let v6 = IpPoolSpec::for_cidr("fd00:10:244::/48").with_defaults();
        assert_eq!(v6.block_size, 122);
        assert_eq!(v6.allowed_uses, ["Workload", "Tunnel"]);
        assert_eq!(v6.node_selector, "all()");
        assert_eq!(v6.assignment_mode.as_deref(), Some("Automatic"));
        assert_eq!(
            IpPoolSpec::for_cidr("10.0.0.0/16")
                .with_defaults()
                .block_size,
            26
        );
        let written =
            serde_json::to_value(IpPool::new("p", "p", IpPoolSpec::for_cidr("10.0.0.0/16")))
                .expect("encodes");
        assert_eq!(
            written,
            json!({"kind":"p","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":"10.0.0.0/16"}})
        );
    }

    #[test]
    fn reservations_accept_bare_addresses() {
        let r = IpReservationSpec {
            reserved_cidrs: vec!["10.0.0.0/30".into(), "10.0.1.7".into(), "nonsense".into()],
            extra: Map::new(),
        };
        let nets: Vec<String> = r.networks().iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/30", "10.0.1.7/32"]);
    }
}

/// `WorkloadEndpointSpec` (every field omitempty, in Calico's order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadEndpointSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub orchestrator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(
        rename = "containerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(
        rename = "serviceAccountName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_account_name: String,
    #[serde(rename = "ipNetworks", default, skip_serializing_if = "Vec::is_empty")]
    pub ip_networks: Vec<String>,
    #[serde(rename = "ipNATs", default, skip_serializing_if = "Vec::is_empty")]
    pub ip_nats: Vec<Value>,
    #[serde(
        rename = "ipv4Gateway",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv4_gateway: String,
    #[serde(
        rename = "ipv6Gateway",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_gateway: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(
        rename = "interfaceName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub interface_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadEndpointPort>,
    #[serde(
        rename = "allowSpoofedSourcePrefixes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_spoofed_source_prefixes: Vec<String>,
    #[serde(
        rename = "qosControls",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub qos_controls: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A workload port. No field is omitted (Calico's struct has no omitempty here); the
/// protocol is a string (`"TCP"`) or a number, as Calico's `numorstring.Protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadEndpointPort {
    pub name: String,
    pub protocol: Value,
    pub port: u16,
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

pub type WorkloadEndpoint = Resource<WorkloadEndpointSpec>;

impl WorkloadEndpoint {
    /// The addresses the endpoint records: each `spec.ipNetworks` entry read as Calico's
    /// `ParseCIDROrIP` reads it ([`cidr::parse_cidr_or_ip`]), its address without the mask
    /// (IPv4-mapped ones as IPv4), in order. Entries that are neither are skipped.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.spec
            .ip_networks
            .iter()
            .filter_map(|n| cidr::parse_cidr_or_ip(n).map(|c| c.addr))
            .collect()
    }
}

/// `ProfileSpec` (omitempty fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(
        rename = "labelsToApply",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels_to_apply: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

pub type Profile = Resource<ProfileSpec>;

#[cfg(test)]
mod endpoint_tests {
    use super::*;
    use serde_json::json;

    /// Mirrors libcalico-go `ParseCIDROrIP` over `ipNetworks`, as `clientv3/node.go` Delete
    /// reads an endpoint's addresses to release them.
    #[test]
    fn an_endpoints_addresses_are_its_ip_networks_without_masks() {
        let wep = WorkloadEndpoint::new(
            "WorkloadEndpoint",
            "node1-k8s-nginx-eth0",
            WorkloadEndpointSpec {
                ip_networks: vec![
                    "10.244.1.5/32".into(),
                    "fd00::5/128".into(),
                    // A bare address, a wider mask (the address is kept, not the network),
                    // an IPv4-mapped one (IPv4, as Go), and two that are not addresses.
                    "10.244.1.6".into(),
                    "10.244.1.7/26".into(),
                    "::ffff:10.244.1.8/128".into(),
                    "10.244.1.9/33".into(),
                    "garbage".into(),
                ],
                ..WorkloadEndpointSpec::default()
            },
        );
        let want: Vec<IpAddr> = [
            "10.244.1.5",
            "fd00::5",
            "10.244.1.6",
            "10.244.1.7",
            "10.244.1.8",
        ]
        .iter()
        .map(|a| a.parse().expect("an address"))
        .collect();
        assert_eq!(wep.addresses(), want);
        let empty = WorkloadEndpoint::new("WorkloadEndpoint", "x", WorkloadEndpointSpec::default());
        assert!(empty.addresses().is_empty());
    }

    #[test]
    fn workload_endpoint_json_is_calicos() {
        let mut wep = WorkloadEndpoint::new(
            "WorkloadEndpoint",
            "node1-k8s-nginx-eth0",
            WorkloadEndpointSpec {
                orchestrator: "k8s".into(),
                node: "node1".into(),
                container_id: "abc".into(),
                pod: "nginx".into(),
                endpoint: "eth0".into(),
                ip_networks: vec!["10.244.1.5/32".into()],
                profiles: vec!["kns.default".into()],
                interface_name: "calic440f455693".into(),
                mac: "9a:00:00:00:00:01".into(),
                ports: vec![WorkloadEndpointPort {
                    name: "http".into(),
                    protocol: json!("TCP"),
                    port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                }],
                ..WorkloadEndpointSpec::default()
            },
        );
        wep.metadata.namespace = "default".into();
        let v: Value = serde_json::from_slice(&wep.to_stored().expect("encodes")).expect("json");
        assert_eq!(
            v,
            json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
                "metadata":{"name":"node1-k8s-nginx-eth0","namespace":"default"},
                "spec":{"orchestrator":"k8s","node":"node1","containerID":"abc","pod":"nginx",
                    "endpoint":"eth0","ipNetworks":["10.244.1.5/32"],"profiles":["kns.default"],
                    "interfaceName":"calic440f455693","mac":"9a:00:00:00:00:01",
                    "ports":[{"name":"http","protocol":"TCP","port":80,"hostPort":0,"hostIP":""}]}})
        );
    }

    #[test]
    fn stamp_created_sets_uid_and_time_once() {
        let mut p = Profile::new("Profile", "net", ProfileSpec::default());
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_629_600);
        p.stamp_created(t);
        let uid = p.metadata.uid.clone();
        assert_eq!(uid.len(), 36);
        assert_eq!(
            p.metadata.creation_timestamp.as_deref(),
            Some("2026-05-01T10:00:00Z")
        );
        p.stamp_created(t + std::time::Duration::from_secs(5));
        assert_eq!(p.metadata.uid, uid);
        assert_eq!(new_cluster_guid().len(), 32);
    }
}
