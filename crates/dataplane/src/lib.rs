//! The kernel side of the suite: network namespaces, veth pairs, addresses, routes and
//! sysctls, behind the [`workload::Dataplane`] trait so the plugin's logic is testable without
//! root, and tested for real in namespaces.
//!
//! - [`netns`]: entering a namespace for the moment a socket or a sysctl needs it;
//! - [`netlink`]: a synchronous rtnetlink socket per namespace;
//! - [`netconf`]: a namespace's forwarding setting, asked over netlink;
//! - [`sysctl`]: settings under `/proc/sys/net`;
//! - [`workload`]: Calico's wiring of a pod;
//! - [`fake`]: the kernel in memory, for tests of the logic above without root.
//!
//! Everything created is recognisable: host ends are named `cali…`, routes carry protocol
//! [`netlink::ROUTE_PROTOCOL`].

pub mod error;
pub mod fake;
pub mod netconf;
pub mod netlink;
pub mod netns;
pub mod reaper;
pub mod sysctl;
pub mod workload;

pub use error::DataplaneError;
pub use workload::{Dataplane, Links, LinuxDataplane, Observed, WorkloadSpec};
