//! Calico's data model in etcd: keys, the IPAM objects and the v3 resources.

pub mod ipam;
pub mod keys;
pub mod resources;
pub mod time;

pub use ipam::{AllocationAttribute, AllocationBlock, BlockAffinity, IpamConfigValue, IpamHandle};
pub use resources::{
    ClusterInformation, ClusterInformationSpec, IpPool, IpPoolSpec, IpReservation,
    IpReservationSpec, Node, ObjectMeta, Resource,
};
