//! Calico's data model in etcd: keys, the IPAM objects and the v3 resources.

pub mod cidr;
pub mod ipam;
pub mod keys;
pub mod names;
pub mod resources;
pub mod time;

pub use ipam::{AllocationAttribute, AllocationBlock, BlockAffinity, IpamConfigValue, IpamHandle};
pub use resources::{
    ClusterInformation, ClusterInformationSpec, EntityRule, IpPool, IpPoolSpec, IpReservation,
    IpReservationSpec, Node, ObjectMeta, Profile, ProfileSpec, Resource, Rule, WorkloadEndpoint,
    WorkloadEndpointPort, WorkloadEndpointSpec, new_cluster_guid, new_uid,
};
