//! The kernel side of the suite: network namespaces, veth pairs, addresses, routes and
//! sysctls, behind the [`workload::Dataplane`] trait so the plugin's logic is testable without
//! root, and tested for real in namespaces.
//!
//! - [`netns`]: entering a namespace for the moment a socket or a sysctl needs it;
//! - [`netlink`]: links, addresses and routes (and the route lookup) over rtnetlink, on the
//!   shared socket layer (`calico-netlink`), one socket per namespace;
//! - [`forwarding`]: a namespace's forwarding setting, asked over netlink;
//! - [`sysctl`]: settings under `/proc/sys/net`;
//! - [`workload`]: Calico's wiring of a pod;
//! - [`link_removal`]: the deletion of a pod's interface by index that DEL hands to the node
//!   agent (`calico-node run`), or does itself without one;
//! - [`routes`]: the routes the node agent distributes (BGP-learned, blackholes of local
//!   blocks, VXLAN), each set owned by its route protocol, converged by dump and delta;
//! - [`vxlan`]: the `vxlan.calico` device, and whether `ipip` (`tunl0`) is available;
//! - [`neigh`]: permanent ARP/NDP entries and the VXLAN device's FDB entries;
//! - [`fake`]: the kernel in memory, for tests of the logic above without root.
//!
//! Imports point one way: `workload` → `link_removal` → `netlink`, `netns`;
//! `routes`, `vxlan`, `neigh` → `netlink`; `fake` implements
//! `workload`'s trait; nothing else imports `workload`. The crate must not import
//! `calico-netconf`, `cni-protocol` or the datastore: it knows interfaces, addresses and
//! routes, not CNI or Calico's resources. Of the workspace it imports only `calico-netlink`
//! and `calico-agent-protocol` (to hand work to the agent).
//!
//! Everything created is recognisable: host ends are named `cali…`, routes carry protocol
//! [`netlink::ROUTE_PROTOCOL`].

pub mod error;
pub mod fake;
pub mod forwarding;
pub mod link_removal;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod routes;
pub mod sysctl;
pub mod vxlan;
pub mod workload;

pub use error::DataplaneError;
pub use workload::{Dataplane, Links, LinuxDataplane, Observed, WorkloadSpec};
