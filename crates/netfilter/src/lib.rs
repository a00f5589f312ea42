//! Netfilter from Rust, for the plugins that program it (portmap now, policy later):
//! nf_tables and conntrack over nfnetlink ([`socket`], [`nft`], [`conntrack`]), and the
//! iptables tools for the iptables layouts ([`xtables`]).
//!
//! Everything here acts in the network namespace of the calling thread.

pub mod conntrack;
pub mod error;
pub mod linger;
pub mod nft;
pub mod nlattr;
pub mod route;
pub mod socket;
pub mod xtables;

pub use error::NfError;
pub use socket::NfSocket;
