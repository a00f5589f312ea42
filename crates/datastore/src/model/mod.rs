//! Calico's data model in etcd: keys, the IPAM objects and the v3 resources (the typed Node
//! included). Models only: no datastore calls and no rules of the IPAM or of calicoctl.

pub mod bgp;
pub mod cidr;
pub mod ipam;
pub mod keys;
pub mod names;
pub mod node;
pub mod policy;
pub mod resources;
pub mod time;

pub use bgp::{
    BgpConfiguration, BgpConfigurationSpec, BgpPassword, BgpPeer, BgpPeerSpec, CidrBlock,
    Community, PrefixAdvertisement, SecretKeyRef, parse_go_duration,
};
pub use ipam::{AllocationAttribute, AllocationBlock, BlockAffinity, IpamConfigValue, IpamHandle};
pub use node::{
    AsNumber, Node, NodeAddress, NodeBgpSpec, NodeInterface, NodeSpec, NodeWireguardSpec, OrchRef,
};
pub use policy::{
    FelixConfiguration, FelixConfigurationSpec, GlobalNetworkPolicy, GlobalNetworkPolicySpec,
    GlobalNetworkSet, IcmpFields, NetworkPolicy, NetworkPolicySpec, NetworkSet, NetworkSetSpec,
    Port, PortError, Protocol, ServiceAccountMatch, ServiceMatch, Tier, TierSpec,
};
pub use resources::{
    ClusterInformation, ClusterInformationSpec, DEFAULT_TIERS, EntityRule, IpPool, IpPoolSpec,
    IpReservation, IpReservationSpec, IpamConfiguration, IpamConfigurationSpec, ObjectMeta,
    Profile, ProfileSpec, Resource, Rule, WorkloadEndpoint, WorkloadEndpointPort,
    WorkloadEndpointSpec, default_tier, new_cluster_guid, new_uid,
};
