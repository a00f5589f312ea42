//! `portmap`: the chained hostPort plugin. DNAT from the node's addresses to the pod, with
//! SNAT for hairpin and localhost traffic; the reference plugin's iptables layout
//! ([`ipt`], [`layout`]) or our own nftables table ([`nftb`]), both behind
//! [`backend::Backend`]; per ADD, whatever the number of mappings, one nf_tables
//! transaction (nftables) or one `iptables-restore` per family (iptables).
//! Everything that reaches a rule is validated in [`config`] (code 7 naming the field); a
//! failed or killed ADD leaves nothing DEL cannot remove, and DEL always finishes
//! ([`verbs`], [`state`]).
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
