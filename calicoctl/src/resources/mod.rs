//! The resource kinds this calicoctl manages, read from YAML/JSON documents.
//!
//! - [`Kind`]: IPPool, Node, IPAMConfiguration, BGPConfiguration, BGPPeer, the policy kinds
//!   (NetworkPolicy, GlobalNetworkPolicy, Tier, NetworkSet, GlobalNetworkSet, Profile,
//!   FelixConfiguration) and the read-only (`get` only) WorkloadEndpoint, their aliases and
//!   etcd keys;
//! - [`parse_documents`]: a file's documents (several `---` documents, a YAML sequence, or a
//!   `<Kind>List`/`List`) into typed objects, rejecting unknown fields as calicoctl's strict
//!   decoding does;
//! - [`validate`]: Calico's checks and defaults; [`print`](mod@print): tables, YAML and JSON;
//!   [`ops`]: get, apply, create and delete against the datastore; [`node_delete`]: what
//!   deleting a Node removes with it.

pub mod node_delete;
pub mod ops;
pub mod print;
pub mod validate;

#[cfg(test)]
mod policy_tests;

use crate::yaml;
use calico_datastore::model::bgp::{BGP_CONFIGURATIONS, BGP_PEERS, BgpConfiguration, BgpPeer};
use calico_datastore::model::keys;
use calico_datastore::model::policy::{
    FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, Tier,
};
use calico_datastore::model::{
    IpPool, IpPoolSpec, IpamConfiguration, Node, ObjectMeta, Profile, Resource, WorkloadEndpoint,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub const API_VERSION: &str = "projectcalico.org/v3";

/// A kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    IpPool,
    Node,
    IpamConfiguration,
    /// Read-only here: `get` only.
    WorkloadEndpoint,
    Profile,
    BgpConfiguration,
    BgpPeer,
    NetworkPolicy,
    GlobalNetworkPolicy,
    Tier,
    NetworkSet,
    GlobalNetworkSet,
    FelixConfiguration,
}

/// The namespace `get` reads for a namespaced kind when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The Profile the etcd backend adds to every profile list and returns for its name without
/// storing it (libcalico-go's `resources.DefaultAllowProfile`).
pub const DEFAULT_ALLOW_PROFILE: &str = "projectcalico-default-allow";

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::IpPool,
        Kind::Node,
        Kind::IpamConfiguration,
        Kind::WorkloadEndpoint,
        Kind::Profile,
        Kind::BgpConfiguration,
        Kind::BgpPeer,
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
        Kind::Tier,
        Kind::NetworkSet,
        Kind::GlobalNetworkSet,
        Kind::FelixConfiguration,
    ];

    /// The kind as written in documents.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::Node => "Node",
            Kind::IpamConfiguration => "IPAMConfiguration",
            Kind::WorkloadEndpoint => "WorkloadEndpoint",
            Kind::Profile => "Profile",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::Tier => "Tier",
            Kind::NetworkSet => "NetworkSet",
            Kind::GlobalNetworkSet => "GlobalNetworkSet",
            Kind::FelixConfiguration => "FelixConfiguration",
        }
    }

    /// The names `get`/`delete` accept (case-insensitive), as calicoctl's resource managers.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::IpPool => &["ippool", "ippools", "ipp", "ipps", "pool", "pools"],
            Kind::Node => &["node", "nodes", "no", "nos"],
            Kind::IpamConfiguration => &[
                "ipamconfiguration",
                "ipamconfigurations",
                "ipamconfig",
                "ipamconfigs",
            ],
            Kind::WorkloadEndpoint => &["workloadendpoint", "workloadendpoints", "wep", "weps"],
            Kind::Profile => &["profile", "profiles", "pro", "pros"],
            // calicoctl/resourcemgr/bgpconfig.go and bgppeer.go.
            Kind::BgpConfiguration => &[
                "bgpconfiguration",
                "bgpconfigurations",
                "bgpconfig",
                "bgpconfigs",
            ],
            Kind::BgpPeer => &["bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"],
            // calicoctl/resourcemgr/networkpolicy.go, globalnetworkpolicy.go, tier.go,
            // networkset.go, globalnetworkset.go and felixconfig.go.
            Kind::NetworkPolicy => &[
                "networkpolicy",
                "networkpolicies",
                "policy",
                "np",
                "policies",
                "pol",
                "pols",
            ],
            Kind::GlobalNetworkPolicy => &[
                "globalnetworkpolicy",
                "globalnetworkpolicies",
                "gnp",
                "gnps",
            ],
            Kind::Tier => &["tier", "tiers"],
            Kind::NetworkSet => &["networkset", "networksets", "netsets"],
            Kind::GlobalNetworkSet => &["globalnetworkset", "globalnetworksets", "gnetsets"],
            Kind::FelixConfiguration => &[
                "felixconfiguration",
                "felixconfigurations",
                "felixconfig",
                "felixconfigs",
            ],
        }
    }

    pub fn from_alias(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.aliases().contains(&lower.as_str()))
    }

    pub fn from_kind_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::WorkloadEndpoint | Kind::NetworkPolicy | Kind::NetworkSet
        )
    }

    /// Whether this calicoctl only reads the kind (`get`); apply, create and delete refuse it.
    pub fn read_only(self) -> bool {
        self == Kind::WorkloadEndpoint
    }

    /// The one-line error for writing a read-only kind.
    pub fn read_only_error(self) -> String {
        format!(
            "resource type '{}' is read-only in this calicoctl: only get is supported",
            self.name()
        )
    }

    /// The plural in etcd keys.
    fn plural(self) -> &'static str {
        match self {
            Kind::IpPool => "ippools",
            Kind::Node => "nodes",
            Kind::IpamConfiguration => "ipamconfigurations",
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::Profile => "profiles",
            Kind::BgpConfiguration => BGP_CONFIGURATIONS,
            Kind::BgpPeer => BGP_PEERS,
            Kind::NetworkPolicy => "networkpolicies",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::Tier => "tiers",
            Kind::NetworkSet => "networksets",
            Kind::GlobalNetworkSet => "globalnetworksets",
            Kind::FelixConfiguration => "felixconfigurations",
        }
    }

    /// Where an object of this kind lives (`namespace` is ignored for cluster-scoped kinds):
    /// `model/resource.go`'s `ResourceKey` path. IPAMConfiguration is an ordinary v3
    /// resource there (`ipamconfigurations/<name>`); in etcd mode it is not the config the
    /// IPAM reads (`/calico/ipam/v2/config`, see [`crate::ipam::configure`]).
    pub fn key(self, namespace: &str, name: &str) -> String {
        if self.namespaced() {
            keys::namespaced_resource(self.plural(), namespace, name)
        } else {
            keys::resource(self.plural(), name)
        }
    }

    /// The prefix a list of this kind reads. For a namespaced kind, `namespace` picks one
    /// namespace and `None` reads them all.
    pub fn list_prefix(self, namespace: Option<&str>) -> String {
        match (self, namespace) {
            (k, Some(ns)) if k.namespaced() => {
                format!("{}{ns}/", keys::resources_prefix(k.plural()))
            }
            (k, _) => keys::resources_prefix(k.plural()),
        }
    }
}

/// One resource from a document or the datastore. WorkloadEndpoints only come from the
/// datastore (documents of that kind are refused: it is read-only here).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    IpPool(IpPool),
    Node(Node),
    IpamConfiguration(IpamConfiguration),
    WorkloadEndpoint(Box<WorkloadEndpoint>),
    Profile(Box<Profile>),
    BgpConfiguration(Box<BgpConfiguration>),
    BgpPeer(Box<BgpPeer>),
    NetworkPolicy(Box<NetworkPolicy>),
    GlobalNetworkPolicy(Box<GlobalNetworkPolicy>),
    Tier(Box<Tier>),
    NetworkSet(Box<NetworkSet>),
    GlobalNetworkSet(Box<GlobalNetworkSet>),
    FelixConfiguration(Box<FelixConfiguration>),
}

/// Calls `$f` on the resource inside any [`Object`].
macro_rules! each_object {
    ($o:expr, $r:ident => $f:expr) => {
        match $o {
            Object::IpPool($r) => $f,
            Object::Node($r) => $f,
            Object::IpamConfiguration($r) => $f,
            Object::WorkloadEndpoint($r) => $f,
            Object::Profile($r) => $f,
            Object::BgpConfiguration($r) => $f,
            Object::BgpPeer($r) => $f,
            Object::NetworkPolicy($r) => $f,
            Object::GlobalNetworkPolicy($r) => $f,
            Object::Tier($r) => $f,
            Object::NetworkSet($r) => $f,
            Object::GlobalNetworkSet($r) => $f,
            Object::FelixConfiguration($r) => $f,
        }
    };
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::IpPool(_) => Kind::IpPool,
            Object::Node(_) => Kind::Node,
            Object::IpamConfiguration(_) => Kind::IpamConfiguration,
            Object::WorkloadEndpoint(_) => Kind::WorkloadEndpoint,
            Object::Profile(_) => Kind::Profile,
            Object::BgpConfiguration(_) => Kind::BgpConfiguration,
            Object::BgpPeer(_) => Kind::BgpPeer,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::GlobalNetworkPolicy(_) => Kind::GlobalNetworkPolicy,
            Object::Tier(_) => Kind::Tier,
            Object::NetworkSet(_) => Kind::NetworkSet,
            Object::GlobalNetworkSet(_) => Kind::GlobalNetworkSet,
            Object::FelixConfiguration(_) => Kind::FelixConfiguration,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_object!(self, r => &r.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_object!(self, r => &mut r.metadata)
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// `Kind(name)` (`Kind(namespace/name)` for a namespaced kind), how Calico's errors name
    /// a resource.
    pub fn id(&self) -> String {
        id_in(self.kind(), &self.metadata().namespace, self.name())
    }

    /// The object as JSON (for output).
    pub fn to_json(&self) -> Value {
        each_object!(self, r => serde_json::to_value(r)).unwrap_or(Value::Null)
    }
}

/// A `Kind(name)` identifier for messages.
pub fn id(kind: Kind, name: &str) -> String {
    format!("{}({name})", kind.name())
}

/// `Kind(namespace/name)` for a namespaced kind (as libcalico-go's `ResourceKey`), else
/// `Kind(name)`.
pub fn id_in(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("{}({namespace}/{name})", kind.name())
    } else {
        id(kind, name)
    }
}

/// Which keys a level of a document may have, and how to check below them.
struct Fields(&'static [(&'static str, Sub)]);

enum Sub {
    Leaf,
    Obj(&'static Fields),
    List(&'static Fields),
}

const OBJECT_META: Fields = Fields(&[
    ("name", Sub::Leaf),
    ("generateName", Sub::Leaf),
    ("namespace", Sub::Leaf),
    ("selfLink", Sub::Leaf),
    ("uid", Sub::Leaf),
    ("resourceVersion", Sub::Leaf),
    ("generation", Sub::Leaf),
    ("creationTimestamp", Sub::Leaf),
    ("deletionTimestamp", Sub::Leaf),
    ("deletionGracePeriodSeconds", Sub::Leaf),
    ("labels", Sub::Leaf),
    ("annotations", Sub::Leaf),
    ("ownerReferences", Sub::Leaf),
    ("finalizers", Sub::Leaf),
    ("managedFields", Sub::Leaf),
]);

const LIST_META: Fields = Fields(&[
    ("selfLink", Sub::Leaf),
    ("resourceVersion", Sub::Leaf),
    ("continue", Sub::Leaf),
    ("remainingItemCount", Sub::Leaf),
]);

const IPPOOL_SPEC: Fields = Fields(&[
    ("cidr", Sub::Leaf),
    ("vxlanMode", Sub::Leaf),
    ("ipipMode", Sub::Leaf),
    ("natOutgoing", Sub::Leaf),
    ("disabled", Sub::Leaf),
    ("disableBGPExport", Sub::Leaf),
    ("blockSize", Sub::Leaf),
    ("nodeSelector", Sub::Leaf),
    ("namespaceSelector", Sub::Leaf),
    ("allowedUses", Sub::Leaf),
    ("assignmentMode", Sub::Leaf),
]);

const IPPOOL_STATUS: Fields = Fields(&[("conditions", Sub::Leaf)]);

const NODE_BGP: Fields = Fields(&[
    ("asNumber", Sub::Leaf),
    ("ipv4Address", Sub::Leaf),
    ("ipv6Address", Sub::Leaf),
    ("ipv4IPIPTunnelAddr", Sub::Leaf),
    ("routeReflectorClusterID", Sub::Leaf),
]);

const NODE_ORCH_REF: Fields = Fields(&[("nodeName", Sub::Leaf), ("orchestrator", Sub::Leaf)]);

const NODE_WIREGUARD: Fields = Fields(&[
    ("interfaceIPv4Address", Sub::Leaf),
    ("interfaceIPv6Address", Sub::Leaf),
]);

const NODE_ADDRESS: Fields = Fields(&[("address", Sub::Leaf), ("type", Sub::Leaf)]);

const NODE_INTERFACE: Fields = Fields(&[("name", Sub::Leaf), ("addresses", Sub::Leaf)]);

const NODE_SPEC: Fields = Fields(&[
    ("bgp", Sub::Obj(&NODE_BGP)),
    ("ipv4VXLANTunnelAddr", Sub::Leaf),
    ("vxlanTunnelMACAddr", Sub::Leaf),
    ("ipv6VXLANTunnelAddr", Sub::Leaf),
    ("vxlanTunnelMACAddrV6", Sub::Leaf),
    ("orchRefs", Sub::List(&NODE_ORCH_REF)),
    ("wireguard", Sub::Obj(&NODE_WIREGUARD)),
    ("addresses", Sub::List(&NODE_ADDRESS)),
    ("interfaces", Sub::List(&NODE_INTERFACE)),
]);

const NODE_STATUS: Fields = Fields(&[
    ("wireguardPublicKey", Sub::Leaf),
    ("wireguardPublicKeyV6", Sub::Leaf),
    ("podCIDRs", Sub::Leaf),
]);

const IPAM_CONFIG_SPEC: Fields = Fields(&[
    ("strictAffinity", Sub::Leaf),
    ("maxBlocksPerHost", Sub::Leaf),
    ("autoAllocateBlocks", Sub::Leaf),
    ("kubeVirtVMAddressPersistence", Sub::Leaf),
]);

const CIDR_BLOCK: Fields = Fields(&[("cidr", Sub::Leaf)]);

const COMMUNITY: Fields = Fields(&[("name", Sub::Leaf), ("value", Sub::Leaf)]);

const PREFIX_ADVERTISEMENT: Fields = Fields(&[("cidr", Sub::Leaf), ("communities", Sub::Leaf)]);

const SECRET_KEY_REF: Fields = Fields(&[
    ("name", Sub::Leaf),
    ("key", Sub::Leaf),
    ("optional", Sub::Leaf),
]);

const BGP_PASSWORD: Fields = Fields(&[("secretKeyRef", Sub::Obj(&SECRET_KEY_REF))]);

/// `BGPConfigurationSpec`'s JSON names (api/pkg/apis/projectcalico/v3/bgpconfig.go).
const BGP_CONFIGURATION_SPEC: Fields = Fields(&[
    ("logSeverityScreen", Sub::Leaf),
    ("nodeToNodeMeshEnabled", Sub::Leaf),
    ("asNumber", Sub::Leaf),
    ("serviceLoadBalancerIPs", Sub::List(&CIDR_BLOCK)),
    ("serviceExternalIPs", Sub::List(&CIDR_BLOCK)),
    ("serviceClusterIPs", Sub::List(&CIDR_BLOCK)),
    ("serviceLoadBalancerAggregation", Sub::Leaf),
    ("communities", Sub::List(&COMMUNITY)),
    ("prefixAdvertisements", Sub::List(&PREFIX_ADVERTISEMENT)),
    ("listenPort", Sub::Leaf),
    ("nodeMeshPassword", Sub::Obj(&BGP_PASSWORD)),
    ("nodeMeshMaxRestartTime", Sub::Leaf),
    ("bindMode", Sub::Leaf),
    ("ignoredInterfaces", Sub::Leaf),
    ("localWorkloadPeeringIPV4", Sub::Leaf),
    ("localWorkloadPeeringIPV6", Sub::Leaf),
    ("programClusterRoutes", Sub::Leaf),
    ("ipv4NormalRoutePriority", Sub::Leaf),
    ("ipv6NormalRoutePriority", Sub::Leaf),
]);

/// `BGPPeerSpec`'s JSON names (api/pkg/apis/projectcalico/v3/bgppeer.go).
const BGP_PEER_SPEC: Fields = Fields(&[
    ("node", Sub::Leaf),
    ("nodeSelector", Sub::Leaf),
    ("peerIP", Sub::Leaf),
    ("asNumber", Sub::Leaf),
    ("localASNumber", Sub::Leaf),
    ("peerSelector", Sub::Leaf),
    ("keepOriginalNextHop", Sub::Leaf),
    ("nextHopMode", Sub::Leaf),
    ("password", Sub::Obj(&BGP_PASSWORD)),
    ("sourceAddress", Sub::Leaf),
    ("maxRestartTime", Sub::Leaf),
    ("keepaliveTime", Sub::Leaf),
    ("numAllowedLocalASNumbers", Sub::Leaf),
    ("ttlSecurity", Sub::Leaf),
    ("reachableBy", Sub::Leaf),
    ("filters", Sub::Leaf),
    ("localWorkloadSelector", Sub::Leaf),
    ("reversePeering", Sub::Leaf),
]);

const BGP_CONFIGURATION_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&BGP_CONFIGURATION_SPEC)),
]);

const BGP_PEER_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&BGP_PEER_SPEC)),
]);

const IPPOOL_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&IPPOOL_SPEC)),
    ("status", Sub::Obj(&IPPOOL_STATUS)),
]);

const NODE_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&NODE_SPEC)),
    ("status", Sub::Obj(&NODE_STATUS)),
]);

const IPAM_CONFIG_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&IPAM_CONFIG_SPEC)),
]);

const ICMP_FIELDS: Fields = Fields(&[("type", Sub::Leaf), ("code", Sub::Leaf)]);

const SERVICE_MATCH: Fields = Fields(&[("name", Sub::Leaf), ("namespace", Sub::Leaf)]);

const SERVICE_ACCOUNT_MATCH: Fields = Fields(&[("names", Sub::Leaf), ("selector", Sub::Leaf)]);

/// `EntityRule` (api/pkg/apis/projectcalico/v3/policy_common.go).
const ENTITY_RULE: Fields = Fields(&[
    ("nets", Sub::Leaf),
    ("selector", Sub::Leaf),
    ("namespaceSelector", Sub::Leaf),
    ("services", Sub::Obj(&SERVICE_MATCH)),
    ("ports", Sub::Leaf),
    ("notNets", Sub::Leaf),
    ("notSelector", Sub::Leaf),
    ("notPorts", Sub::Leaf),
    ("serviceAccounts", Sub::Obj(&SERVICE_ACCOUNT_MATCH)),
]);

const HTTP_PATH: Fields = Fields(&[("exact", Sub::Leaf), ("prefix", Sub::Leaf)]);

const HTTP_MATCH: Fields = Fields(&[("methods", Sub::Leaf), ("paths", Sub::List(&HTTP_PATH))]);

const RULE_METADATA: Fields = Fields(&[("annotations", Sub::Leaf)]);

/// `Rule` (policy_common.go).
const RULE: Fields = Fields(&[
    ("action", Sub::Leaf),
    ("ipVersion", Sub::Leaf),
    ("protocol", Sub::Leaf),
    ("icmp", Sub::Obj(&ICMP_FIELDS)),
    ("notProtocol", Sub::Leaf),
    ("notICMP", Sub::Obj(&ICMP_FIELDS)),
    ("source", Sub::Obj(&ENTITY_RULE)),
    ("destination", Sub::Obj(&ENTITY_RULE)),
    ("http", Sub::Obj(&HTTP_MATCH)),
    ("metadata", Sub::Obj(&RULE_METADATA)),
]);

const NETWORK_POLICY_SPEC: Fields = Fields(&[
    ("tier", Sub::Leaf),
    ("order", Sub::Leaf),
    ("ingress", Sub::List(&RULE)),
    ("egress", Sub::List(&RULE)),
    ("selector", Sub::Leaf),
    ("types", Sub::Leaf),
    ("serviceAccountSelector", Sub::Leaf),
    ("performanceHints", Sub::Leaf),
]);

const GLOBAL_NETWORK_POLICY_SPEC: Fields = Fields(&[
    ("tier", Sub::Leaf),
    ("order", Sub::Leaf),
    ("ingress", Sub::List(&RULE)),
    ("egress", Sub::List(&RULE)),
    ("selector", Sub::Leaf),
    ("types", Sub::Leaf),
    ("doNotTrack", Sub::Leaf),
    ("preDNAT", Sub::Leaf),
    ("applyOnForward", Sub::Leaf),
    ("serviceAccountSelector", Sub::Leaf),
    ("namespaceSelector", Sub::Leaf),
    ("performanceHints", Sub::Leaf),
]);

const TIER_SPEC: Fields = Fields(&[("order", Sub::Leaf), ("defaultAction", Sub::Leaf)]);

const TIER_STATUS: Fields = Fields(&[("conditions", Sub::Leaf)]);

const NETWORK_SET_SPEC: Fields = Fields(&[("nets", Sub::Leaf)]);

const PROFILE_SPEC: Fields = Fields(&[
    ("ingress", Sub::List(&RULE)),
    ("egress", Sub::List(&RULE)),
    ("labelsToApply", Sub::Leaf),
]);

/// `FelixConfigurationSpec`'s JSON names (api/pkg/apis/projectcalico/v3/felixconfig.go of
/// release-v3.32); the values below them are not checked.
const FELIX_CONFIGURATION_SPEC: Fields = Fields(&[
    ("nodeSelector", Sub::Leaf),
    ("useInternalDataplaneDriver", Sub::Leaf),
    ("dataplaneDriver", Sub::Leaf),
    ("dataplaneWatchdogTimeout", Sub::Leaf),
    ("ipv6Support", Sub::Leaf),
    ("routeRefreshInterval", Sub::Leaf),
    ("interfaceRefreshInterval", Sub::Leaf),
    ("iptablesRefreshInterval", Sub::Leaf),
    ("iptablesPostWriteCheckInterval", Sub::Leaf),
    ("iptablesLockProbeInterval", Sub::Leaf),
    ("featureDetectOverride", Sub::Leaf),
    ("featureGates", Sub::Leaf),
    ("ipsetsRefreshInterval", Sub::Leaf),
    ("maxIpsetSize", Sub::Leaf),
    ("iptablesBackend", Sub::Leaf),
    ("xdpRefreshInterval", Sub::Leaf),
    ("netlinkTimeout", Sub::Leaf),
    ("metadataAddr", Sub::Leaf),
    ("metadataPort", Sub::Leaf),
    ("openstackRegion", Sub::Leaf),
    ("interfacePrefix", Sub::Leaf),
    ("interfaceExclude", Sub::Leaf),
    ("chainInsertMode", Sub::Leaf),
    ("defaultEndpointToHostAction", Sub::Leaf),
    ("iptablesFilterAllowAction", Sub::Leaf),
    ("iptablesMangleAllowAction", Sub::Leaf),
    ("iptablesFilterDenyAction", Sub::Leaf),
    ("logPrefix", Sub::Leaf),
    ("logActionRateLimit", Sub::Leaf),
    ("logActionRateLimitBurst", Sub::Leaf),
    ("logFilePath", Sub::Leaf),
    ("logSeverityFile", Sub::Leaf),
    ("logSeverityScreen", Sub::Leaf),
    ("logSeveritySys", Sub::Leaf),
    ("logDebugFilenameRegex", Sub::Leaf),
    ("ipipEnabled", Sub::Leaf),
    ("ipipMTU", Sub::Leaf),
    ("vxlanEnabled", Sub::Leaf),
    ("vxlanMTU", Sub::Leaf),
    ("vxlanMTUV6", Sub::Leaf),
    ("vxlanPort", Sub::Leaf),
    ("vxlanVNI", Sub::Leaf),
    ("allowVXLANPacketsFromWorkloads", Sub::Leaf),
    ("allowIPIPPacketsFromWorkloads", Sub::Leaf),
    ("reportingInterval", Sub::Leaf),
    ("reportingTTL", Sub::Leaf),
    ("endpointReportingEnabled", Sub::Leaf),
    ("endpointReportingDelay", Sub::Leaf),
    ("endpointStatusPathPrefix", Sub::Leaf),
    ("iptablesMarkMask", Sub::Leaf),
    ("disableConntrackInvalidCheck", Sub::Leaf),
    ("healthEnabled", Sub::Leaf),
    ("healthHost", Sub::Leaf),
    ("healthPort", Sub::Leaf),
    ("healthTimeoutOverrides", Sub::Leaf),
    ("prometheusMetricsEnabled", Sub::Leaf),
    ("prometheusMetricsHost", Sub::Leaf),
    ("prometheusMetricsPort", Sub::Leaf),
    ("prometheusGoMetricsEnabled", Sub::Leaf),
    ("prometheusProcessMetricsEnabled", Sub::Leaf),
    ("prometheusWireGuardMetricsEnabled", Sub::Leaf),
    ("prometheusMetricsCAFile", Sub::Leaf),
    ("prometheusMetricsCertFile", Sub::Leaf),
    ("prometheusMetricsKeyFile", Sub::Leaf),
    ("prometheusMetricsClientAuth", Sub::Leaf),
    ("failsafeInboundHostPorts", Sub::Leaf),
    ("failsafeOutboundHostPorts", Sub::Leaf),
    ("kubeNodePortRanges", Sub::Leaf),
    ("policySyncPathPrefix", Sub::Leaf),
    ("usageReportingEnabled", Sub::Leaf),
    ("usageReportingInitialDelay", Sub::Leaf),
    ("usageReportingInterval", Sub::Leaf),
    ("natPortRange", Sub::Leaf),
    ("natOutgoingAddress", Sub::Leaf),
    ("natOutgoingExclusions", Sub::Leaf),
    ("deviceRouteSourceAddress", Sub::Leaf),
    ("deviceRouteSourceAddressIPv6", Sub::Leaf),
    ("deviceRouteProtocol", Sub::Leaf),
    ("removeExternalRoutes", Sub::Leaf),
    ("programClusterRoutes", Sub::Leaf),
    ("ipForwarding", Sub::Leaf),
    ("externalNodesList", Sub::Leaf),
    ("debugMemoryProfilePath", Sub::Leaf),
    ("debugDisableLogDropping", Sub::Leaf),
    ("debugSimulateCalcGraphHangAfter", Sub::Leaf),
    ("debugSimulateDataplaneHangAfter", Sub::Leaf),
    ("debugSimulateDataplaneApplyDelay", Sub::Leaf),
    ("debugHost", Sub::Leaf),
    ("debugPort", Sub::Leaf),
    ("iptablesNATOutgoingInterfaceFilter", Sub::Leaf),
    ("sidecarAccelerationEnabled", Sub::Leaf),
    ("xdpEnabled", Sub::Leaf),
    ("genericXDPEnabled", Sub::Leaf),
    ("nftablesMode", Sub::Leaf),
    ("nftablesRefreshInterval", Sub::Leaf),
    ("nftablesFilterAllowAction", Sub::Leaf),
    ("nftablesMangleAllowAction", Sub::Leaf),
    ("nftablesFilterDenyAction", Sub::Leaf),
    ("nftablesMarkMask", Sub::Leaf),
    ("bpfEnabled", Sub::Leaf),
    ("bpfDisableUnprivileged", Sub::Leaf),
    ("bpfJITHardening", Sub::Leaf),
    ("bpfLogLevel", Sub::Leaf),
    ("bpfConntrackLogLevel", Sub::Leaf),
    ("bpfConntrackMode", Sub::Leaf),
    ("bpfConntrackTimeouts", Sub::Leaf),
    ("bpfLogFilters", Sub::Leaf),
    ("bpfCTLBLogFilter", Sub::Leaf),
    ("bpfDataIfacePattern", Sub::Leaf),
    ("bpfL3IfacePattern", Sub::Leaf),
    ("bpfConnectTimeLoadBalancingEnabled", Sub::Leaf),
    ("bpfConnectTimeLoadBalancing", Sub::Leaf),
    ("bpfHostNetworkedNATWithoutCTLB", Sub::Leaf),
    ("bpfExternalServiceMode", Sub::Leaf),
    ("bpfDSROptoutCIDRs", Sub::Leaf),
    ("bpfExtToServiceConnmark", Sub::Leaf),
    ("bpfKubeProxyIptablesCleanupEnabled", Sub::Leaf),
    ("bpfKubeProxyMinSyncPeriod", Sub::Leaf),
    ("bpfKubeProxyHealthzPort", Sub::Leaf),
    ("bpfPSNATPorts", Sub::Leaf),
    ("bpfMapSizeNATFrontend", Sub::Leaf),
    ("bpfMapSizeNATBackend", Sub::Leaf),
    ("bpfMapSizeNATAffinity", Sub::Leaf),
    ("bpfMapSizeRoute", Sub::Leaf),
    ("bpfMapSizeConntrack", Sub::Leaf),
    ("bpfMapSizePerCpuConntrack", Sub::Leaf),
    ("bpfMapSizeConntrackScaling", Sub::Leaf),
    ("bpfMapSizeConntrackCleanupQueue", Sub::Leaf),
    ("bpfMapSizeIPSets", Sub::Leaf),
    ("bpfMapSizeIfState", Sub::Leaf),
    ("bpfHostConntrackBypass", Sub::Leaf),
    ("bpfEnforceRPF", Sub::Leaf),
    ("bpfPolicyDebugEnabled", Sub::Leaf),
    ("bpfForceTrackPacketsFromIfaces", Sub::Leaf),
    ("bpfDisableGROForIfaces", Sub::Leaf),
    ("bpfExcludeCIDRsFromNAT", Sub::Leaf),
    ("bpfExportBufferSizeMB", Sub::Leaf),
    ("istioAmbientMode", Sub::Leaf),
    ("istioDSCPMark", Sub::Leaf),
    ("cgroupV2Path", Sub::Leaf),
    ("flowLogsPolicyEvaluationMode", Sub::Leaf),
    ("bpfRedirectToPeer", Sub::Leaf),
    ("bpfAttachType", Sub::Leaf),
    ("flowLogsFlushInterval", Sub::Leaf),
    ("flowLogsCollectorDebugTrace", Sub::Leaf),
    ("flowLogsGoldmaneServer", Sub::Leaf),
    ("flowLogsLocalReporter", Sub::Leaf),
    ("bpfProfiling", Sub::Leaf),
    ("routeSource", Sub::Leaf),
    ("routeTableRanges", Sub::Leaf),
    ("routeTableRange", Sub::Leaf),
    ("routeSyncDisabled", Sub::Leaf),
    ("ipv4NormalRoutePriority", Sub::Leaf),
    ("ipv4ElevatedRoutePriority", Sub::Leaf),
    ("ipv6NormalRoutePriority", Sub::Leaf),
    ("ipv6ElevatedRoutePriority", Sub::Leaf),
    ("liveMigrationRouteConvergenceTime", Sub::Leaf),
    ("wireguardEnabled", Sub::Leaf),
    ("wireguardEnabledV6", Sub::Leaf),
    ("wireguardThreadingEnabled", Sub::Leaf),
    ("wireguardListeningPort", Sub::Leaf),
    ("wireguardListeningPortV6", Sub::Leaf),
    ("wireguardRoutingRulePriority", Sub::Leaf),
    ("wireguardInterfaceName", Sub::Leaf),
    ("wireguardInterfaceNameV6", Sub::Leaf),
    ("wireguardMTU", Sub::Leaf),
    ("wireguardMTUV6", Sub::Leaf),
    ("wireguardHostEncryptionEnabled", Sub::Leaf),
    ("wireguardKeepAlive", Sub::Leaf),
    ("awsSrcDstCheck", Sub::Leaf),
    ("serviceLoopPrevention", Sub::Leaf),
    ("workloadSourceSpoofing", Sub::Leaf),
    ("mtuIfacePattern", Sub::Leaf),
    ("floatingIPs", Sub::Leaf),
    ("windowsManageFirewallRules", Sub::Leaf),
    ("goGCThreshold", Sub::Leaf),
    ("goMemoryLimitMB", Sub::Leaf),
    ("goMaxProcs", Sub::Leaf),
    ("requireMTUFile", Sub::Leaf),
    ("bpfMaglevMaxEndpointsPerService", Sub::Leaf),
    ("bpfMaglevMaxServices", Sub::Leaf),
]);

const NETWORK_POLICY_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&NETWORK_POLICY_SPEC)),
]);

const GLOBAL_NETWORK_POLICY_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&GLOBAL_NETWORK_POLICY_SPEC)),
]);

const TIER_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&TIER_SPEC)),
    ("status", Sub::Obj(&TIER_STATUS)),
]);

const NETWORK_SET_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&NETWORK_SET_SPEC)),
]);

const PROFILE_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&PROFILE_SPEC)),
]);

const FELIX_CONFIGURATION_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&OBJECT_META)),
    ("spec", Sub::Obj(&FELIX_CONFIGURATION_SPEC)),
]);

const LIST_TOP: Fields = Fields(&[
    ("apiVersion", Sub::Leaf),
    ("kind", Sub::Leaf),
    ("metadata", Sub::Obj(&LIST_META)),
    ("items", Sub::Leaf),
]);

/// calicoctl's message for a field its strict decoding does not know.
pub fn unknown_field_message(name: &str) -> String {
    format!("field in document is not recognized or is in the wrong location: {name}")
}

fn check_fields(v: &Value, fields: &Fields) -> Result<(), String> {
    let Value::Object(m) = v else {
        // Type mismatches are reported by the decoding that follows.
        return Ok(());
    };
    for (k, child) in m {
        let Some((_, sub)) = fields.0.iter().find(|(name, _)| name == k) else {
            return Err(unknown_field_message(k));
        };
        match (sub, child) {
            (Sub::Obj(f), _) => check_fields(child, f)?,
            (Sub::List(f), Value::Array(items)) => {
                for item in items {
                    check_fields(item, f)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(v: Value, kind: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        format!("cannot decode field {path} of {kind}: {}", e.into_inner())
    })
}

/// Reads one resource document (a JSON object).
pub fn decode_resource(v: Value) -> Result<Object, String> {
    let Value::Object(mut m) = v else {
        return Err(format!(
            "a document must hold a resource (a mapping with kind and apiVersion), not {v}"
        ));
    };
    let kind = match m.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => {
            return Err(format!(
                "Object 'Kind' is missing in '{}'",
                Value::Object(m.clone())
            ));
        }
    };
    let api_version = m
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let known = Kind::from_kind_name(&kind).filter(|_| api_version == API_VERSION);
    let Some(k) = known else {
        return Err(format!(
            "unknown resource type ({kind}) and/or version ({api_version})"
        ));
    };
    let top = match k {
        Kind::IpPool => &IPPOOL_TOP,
        Kind::Node => &NODE_TOP,
        Kind::IpamConfiguration => &IPAM_CONFIG_TOP,
        Kind::BgpConfiguration => &BGP_CONFIGURATION_TOP,
        Kind::BgpPeer => &BGP_PEER_TOP,
        Kind::NetworkPolicy => &NETWORK_POLICY_TOP,
        Kind::GlobalNetworkPolicy => &GLOBAL_NETWORK_POLICY_TOP,
        Kind::Tier => &TIER_TOP,
        Kind::NetworkSet | Kind::GlobalNetworkSet => &NETWORK_SET_TOP,
        Kind::Profile => &PROFILE_TOP,
        Kind::FelixConfiguration => &FELIX_CONFIGURATION_TOP,
        Kind::WorkloadEndpoint => return Err(k.read_only_error()),
    };
    let whole = Value::Object(m.clone());
    check_fields(&whole, top)?;
    // Go decodes a missing metadata or spec as empty; validation then names what is missing.
    for part in ["metadata", "spec"] {
        if m.get(part).is_none_or(Value::is_null) {
            m.insert(part.into(), Value::Object(Map::new()));
        }
    }
    if k == Kind::IpPool
        && let Some(Value::Object(spec)) = m.get_mut("spec")
    {
        spec.entry("cidr").or_insert(Value::String(String::new()));
    }
    let v = Value::Object(m);
    Ok(match k {
        Kind::IpPool => Object::IpPool(decode::<Resource<IpPoolSpec>>(v, "IPPool")?),
        Kind::Node => {
            let mut n: Node = decode(v, "Node")?;
            n.status.get_or_insert_with(|| Value::Object(Map::new()));
            Object::Node(n)
        }
        Kind::IpamConfiguration => Object::IpamConfiguration(decode(v, "IPAMConfiguration")?),
        Kind::BgpConfiguration => {
            Object::BgpConfiguration(Box::new(decode(v, "BGPConfiguration")?))
        }
        Kind::BgpPeer => Object::BgpPeer(Box::new(decode(v, "BGPPeer")?)),
        Kind::NetworkPolicy => Object::NetworkPolicy(Box::new(decode(v, "NetworkPolicy")?)),
        Kind::GlobalNetworkPolicy => {
            Object::GlobalNetworkPolicy(Box::new(decode(v, "GlobalNetworkPolicy")?))
        }
        Kind::Tier => Object::Tier(Box::new(decode(v, "Tier")?)),
        Kind::NetworkSet => Object::NetworkSet(Box::new(decode(v, "NetworkSet")?)),
        Kind::GlobalNetworkSet => {
            Object::GlobalNetworkSet(Box::new(decode(v, "GlobalNetworkSet")?))
        }
        Kind::Profile => Object::Profile(Box::new(decode(v, "Profile")?)),
        Kind::FelixConfiguration => {
            Object::FelixConfiguration(Box::new(decode(v, "FelixConfiguration")?))
        }
        Kind::WorkloadEndpoint => return Err(k.read_only_error()),
    })
}

/// Every resource in a file's text: documents separated by `---`, each a resource, a
/// sequence of resources, or a list (`IPPoolList`, ..., or a generic `List`) with `items`.
/// The first problem found is returned and nothing else.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, String> {
    let docs = yaml::parse_documents(text).map_err(|e| {
        format!(
            "error converting YAML to JSON: yaml: {}",
            e.replace('\n', " ")
        )
    })?;
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            Value::Array(items) => {
                for item in items {
                    out.push(decode_resource(item)?);
                }
            }
            Value::Object(ref m) if is_list_kind(m) => {
                check_fields(&doc, &LIST_TOP)?;
                let items = match m.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => return Err("the items of a list must be a sequence".into()),
                };
                for item in items {
                    out.push(decode_resource(item)?);
                }
            }
            other => out.push(decode_resource(other)?),
        }
    }
    Ok(out)
}

fn is_list_kind(m: &Map<String, Value>) -> bool {
    match m.get("kind").and_then(Value::as_str) {
        Some("List") => true,
        Some(k) => k
            .strip_suffix("List")
            .is_some_and(|base| Kind::from_kind_name(base).is_some()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_datastore::model::AsNumber;
    use serde_json::json;

    #[test]
    fn aliases_and_keys() {
        for a in ["ippool", "IPPools", "ipp", "ipps", "pool", "pools"] {
            assert_eq!(Kind::from_alias(a), Some(Kind::IpPool), "{a}");
        }
        for a in ["node", "nodes", "no", "nos"] {
            assert_eq!(Kind::from_alias(a), Some(Kind::Node), "{a}");
        }
        for a in [
            "ipamconfig",
            "ipamconfigs",
            "ipamconfiguration",
            "IPAMConfigurations",
        ] {
            assert_eq!(Kind::from_alias(a), Some(Kind::IpamConfiguration), "{a}");
        }
        for a in ["workloadendpoint", "WorkloadEndpoints", "wep", "weps"] {
            assert_eq!(Kind::from_alias(a), Some(Kind::WorkloadEndpoint), "{a}");
        }
        for a in ["profile", "Profiles", "pro", "pros"] {
            assert_eq!(Kind::from_alias(a), Some(Kind::Profile), "{a}");
        }
        for a in [
            "bgpconfig",
            "BGPConfigs",
            "bgpconfiguration",
            "bgpconfigurations",
        ] {
            assert_eq!(Kind::from_alias(a), Some(Kind::BgpConfiguration), "{a}");
        }
        for a in ["bgpPeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"] {
            assert_eq!(Kind::from_alias(a), Some(Kind::BgpPeer), "{a}");
        }
        assert_eq!(
            Kind::BgpPeer.key("", "tor"),
            "/calico/resources/v3/projectcalico.org/bgppeers/tor"
        );
        assert_eq!(
            Kind::BgpConfiguration.key("", "node.n1"),
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/node.n1"
        );
        // calicoctl/resourcemgr/*.go of release-v3.32.
        let policy_kinds: [(Kind, &[&str], &str); 7] = [
            (
                Kind::NetworkPolicy,
                &[
                    "networkpolicy",
                    "NetworkPolicies",
                    "policy",
                    "np",
                    "policies",
                    "pol",
                    "pols",
                ],
                "networkpolicies/ns/n",
            ),
            (
                Kind::GlobalNetworkPolicy,
                &[
                    "globalnetworkpolicy",
                    "globalnetworkpolicies",
                    "gnp",
                    "GNPs",
                ],
                "globalnetworkpolicies/n",
            ),
            (Kind::Tier, &["tier", "tiers"], "tiers/n"),
            (
                Kind::NetworkSet,
                &["networkset", "networksets", "netsets"],
                "networksets/ns/n",
            ),
            (
                Kind::GlobalNetworkSet,
                &["globalnetworkset", "globalnetworksets", "gnetsets"],
                "globalnetworksets/n",
            ),
            (Kind::Profile, &["profile", "pro"], "profiles/n"),
            (
                Kind::FelixConfiguration,
                &[
                    "felixconfiguration",
                    "felixconfigurations",
                    "felixconfig",
                    "felixconfigs",
                ],
                "felixconfigurations/n",
            ),
        ];
        for (kind, aliases, key) in policy_kinds {
            for a in aliases {
                assert_eq!(Kind::from_alias(a), Some(kind), "{a}");
            }
            assert_eq!(
                kind.key("ns", "n"),
                format!("/calico/resources/v3/projectcalico.org/{key}")
            );
            assert_eq!(Kind::from_kind_name(kind.name()), Some(kind));
        }
        assert!(!Kind::Profile.read_only() && Kind::WorkloadEndpoint.read_only());
        assert_eq!(Kind::from_alias("policy"), Some(Kind::NetworkPolicy));
        assert_eq!(Kind::from_alias("policyx"), None);
        assert_eq!(
            Kind::IpPool.key("ignored", "p1"),
            "/calico/resources/v3/projectcalico.org/ippools/p1"
        );
        assert_eq!(
            Kind::Node.key("", "n1"),
            "/calico/resources/v3/projectcalico.org/nodes/n1"
        );
        assert_eq!(
            Kind::IpamConfiguration.key("", "default"),
            "/calico/resources/v3/projectcalico.org/ipamconfigurations/default"
        );
        assert_eq!(
            Kind::IpamConfiguration.list_prefix(None),
            "/calico/resources/v3/projectcalico.org/ipamconfigurations/"
        );
        assert_eq!(
            Kind::WorkloadEndpoint.key("ns1", "w1"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/w1"
        );
        assert_eq!(
            Kind::WorkloadEndpoint.list_prefix(Some("default")),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/"
        );
        assert_eq!(
            Kind::WorkloadEndpoint.list_prefix(None),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/"
        );
        assert_eq!(
            Kind::Profile.key("", "net"),
            "/calico/resources/v3/projectcalico.org/profiles/net"
        );
        assert_eq!(
            Kind::Profile.list_prefix(Some("ignored")),
            "/calico/resources/v3/projectcalico.org/profiles/"
        );
        assert_eq!(
            id_in(Kind::WorkloadEndpoint, "ns", "w"),
            "WorkloadEndpoint(ns/w)"
        );
        assert_eq!(id_in(Kind::Profile, "ns", "p"), "Profile(p)");
    }

    #[test]
    fn several_documents_and_lists() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p1\nspec:\n  cidr: 10.1.0.0/16\n\
                    ---\n\
                    apiVersion: projectcalico.org/v3\nkind: NodeList\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: Node\n  metadata:\n    name: n1\n  spec:\n    bgp:\n      asNumber: \"1.10\"\n      ipv4Address: 192.168.1.1/24\n\
                    ---\n\
                    - apiVersion: projectcalico.org/v3\n  kind: IPAMConfiguration\n  metadata:\n    name: default\n  spec:\n    strictAffinity: true\n";
        let objs = parse_documents(text).expect("parses");
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0].id(), "IPPool(p1)");
        let Object::Node(n) = &objs[1] else {
            panic!("node expected")
        };
        assert_eq!(
            n.spec.bgp.as_ref().and_then(|b| b.as_number),
            Some(AsNumber(65546))
        );
        assert_eq!(n.status, Some(json!({})));
        let Object::IpamConfiguration(c) = &objs[2] else {
            panic!("ipam config expected")
        };
        // A missing autoAllocateBlocks is Go's zero value (the CRD default does not apply).
        assert!(c.spec.strict_affinity && !c.spec.auto_allocate_blocks);
    }

    #[test]
    fn clear_errors() {
        let unknown_kind =
            parse_documents("apiVersion: projectcalico.org/v3\nkind: Foo\nmetadata:\n  name: x\n")
                .unwrap_err();
        assert_eq!(
            unknown_kind,
            "unknown resource type (Foo) and/or version (projectcalico.org/v3)"
        );
        let unknown_field = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: x\nspec:\n  cidr: 10.0.0.0/8\n  blocksize: 24\n",
        )
        .unwrap_err();
        assert_eq!(
            unknown_field,
            "field in document is not recognized or is in the wrong location: blocksize"
        );
        let nested = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: x\nspec:\n  bgp:\n    asn: 1\n",
        )
        .unwrap_err();
        assert!(nested.ends_with(": asn"), "{nested}");
        let bad_type = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: x\nspec:\n  cidr: 10.0.0.0/8\n  blockSize: big\n",
        )
        .unwrap_err();
        assert!(
            bad_type.starts_with("cannot decode field spec.blockSize of IPPool"),
            "{bad_type}"
        );
        let no_kind =
            parse_documents("apiVersion: projectcalico.org/v3\nmetadata: {}\n").unwrap_err();
        assert!(no_kind.starts_with("Object 'Kind' is missing"), "{no_kind}");
        let bad_yaml = parse_documents("kind: IPPool\n  bad: [\n").unwrap_err();
        assert!(
            bad_yaml.starts_with("error converting YAML to JSON: yaml: "),
            "{bad_yaml}"
        );
        assert!(!bad_yaml.contains('\n'), "one line: {bad_yaml}");
        let wrong_version =
            parse_documents("apiVersion: v1\nkind: IPPool\nmetadata:\n  name: x\n").unwrap_err();
        assert_eq!(
            wrong_version,
            "unknown resource type (IPPool) and/or version (v1)"
        );
    }

    #[test]
    fn read_only_kinds_are_refused_in_documents() {
        let wep = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: default\nspec: {}\n",
        )
        .unwrap_err();
        assert_eq!(
            wep,
            "resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported"
        );
        let listed = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpointList\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: WorkloadEndpoint\n  metadata:\n    name: p\n",
        )
        .unwrap_err();
        assert_eq!(
            listed,
            "resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported"
        );
    }

    #[test]
    fn missing_cidr_decodes_so_validation_can_name_it() {
        let objs = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: x\n",
        )
        .expect("decodes");
        let Object::IpPool(p) = &objs[0] else {
            panic!("pool expected")
        };
        assert_eq!(p.spec.cidr, "");
    }
}
