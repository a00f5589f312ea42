//! The one way this suite speaks netlink: a synchronous socket ([`Socket`]) that sends
//! `netlink-packet-*` messages and collects the kernel's answers, and the attribute helpers
//! ([`attr`]) for the few messages no crate types.
//!
//! Why a crate of its own: both kernel-side crates speak netlink (`calico-dataplane`
//! rtnetlink for links, addresses and routes; `calico-netfilter` nfnetlink for nf_tables and
//! conntrack), and neither should depend on the other for it. Why synchronous: a CNI plugin
//! makes a handful of requests per call, each answered in microseconds; an async client
//! (rtnetlink's) needs a runtime per socket, whose start-up every ADD paid, and buys nothing
//! here. The socket stays in the network namespace of the thread that opened it, so a caller
//! opens one per namespace (see `calico_dataplane::netns`).
//!
//! Owns: framing (headers, sequence numbers, acknowledgements, dumps, runs of requests in
//! one datagram, and socket buffers sized to a large run and its acknowledgements) and errors
//! (the kernel's errno kept as a number, so callers can accept `EEXIST` and the like).
//! Message contents belong to the protocol crates: `netlink-packet-route` in dataplane,
//! nfnetlink in netfilter. Must not import any other crate of this workspace.

pub mod attr;
pub mod error;
pub mod socket;

pub use error::NetlinkError;
pub use netlink_packet_core as packet;
pub use socket::Socket;
