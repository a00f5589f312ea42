//! `portmap`: the chained hostPort plugin. DNAT from the node's addresses to the pod, with
//! SNAT for hairpin and localhost traffic; the reference plugin's iptables layout or our own
//! nftables table; one kernel transaction per call.

pub mod config;
pub mod ipt;
pub mod layout;
pub mod nftb;
pub mod state;
pub mod verbs;
