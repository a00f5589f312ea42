//! `portmap`: the chained hostPort plugin. DNAT from the node's addresses to the pod, with
//! SNAT for hairpin and localhost traffic; the reference plugin's iptables layout
//! ([`ipt`], [`layout`]) or our own nftables table ([`nftb`]), both behind
//! [`backend::Backend`]; one kernel transaction per call.
//!
//! Netfilter comes from `calico-netfilter`, the route lookup from `calico-dataplane`; must
//! not import `calico-netconf` or the datastore (portmap knows nothing of Calico's
//! resources).

pub mod backend;
pub mod config;
pub mod ipt;
pub mod layout;
pub mod nftb;
pub mod state;
pub mod verbs;
