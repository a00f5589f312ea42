//! Netfilter from Rust, for the plugins that program it (portmap) and the policy agent:
//! nf_tables and conntrack over nfnetlink ([`socket`], [`nft`], [`conntrack`]), a
//! declarative nf_tables table and the engine that applies changes to it incrementally, in
//! one transaction ([`ruleset`]), the
//! iptables tools for the iptables layouts ([`xtables`], whose document writer refuses a
//! line that would carry another), and the [`release`] of a call's
//! socket and UDP conntrack flush, handed to the node agent (`calico-node run`) when there is
//! one so the call does not wait for them.
//!
//! The socket and the framing of single requests and dumps are the shared netlink layer's
//! (`calico-netlink`); nf_tables transactions are framed here, once, as they are planned
//! ([`socket::WireBatch`]: one buffer, one `sendmsg`, one acknowledgement); the nfnetlink
//! header and conntrack attributes are `netlink-packet-netfilter`'s; only the nf_tables
//! messages ([`nft`]) are encoded here. Must not import `calico-dataplane`, `cni-protocol`
//! or the plugins: it knows netfilter, not CNI. Of the workspace it imports only
//! `calico-netlink` and `calico-agent-protocol`.
//!
//! Everything here acts in the network namespace of the calling thread.

pub mod conntrack;
pub mod error;
pub mod nft;
pub mod release;
pub mod ruleset;
pub mod socket;
pub mod xtables;

pub use error::NfError;
pub use socket::NfSocket;
