//! The protocol between `calico-node run` (the per-node agent) and the plugins, which talk
//! to it over a unix socket and must never link `calico-node` itself.
//!
//! - [`message`]: what is said: the agent's greeting, the requests (etcd reads and guarded
//!   transactions for the plugins, deferred kernel work, health, BGP status for
//!   `calicoctl node status`) and their replies;
//! - [`frame`]: how it goes on the wire: a length, the protocol [`VERSION`], a postcard body;
//!   descriptors (a namespace, a netlink socket) ride along as `SCM_RIGHTS`;
//! - [`client`]: the plugins' side: find the agent, connect with a bound, call it, and fall
//!   back (once per process, logged once at debug level) when there is none.
//!
//! Owns the protocol only. A leaf of the workspace: it must not import any other crate of
//! it (the datastore, dataplane and netfilter crates, which use it, convert their own types
//! into its messages), and it has no async runtime (the plugins are synchronous; the agent
//! reads frames with its own).

pub mod client;
pub mod frame;
pub mod message;

pub use client::{CallError, Connection};
pub use message::{BgpPeerStatus, BgpStatusReport, Hello, Reply, Request};

/// The version of the messages. A frame says which version it is written in; a reader that
/// does not speak it treats the peer as absent (a plugin then does the work itself).
pub const VERSION: u16 = 1;

/// Where the agent listens unless [`SOCKET_ENV`] says otherwise. `/var/run/calico` is where
/// Calico's node keeps its sockets (BIRD's, the policy sync).
pub const DEFAULT_SOCKET: &str = "/var/run/calico/calico-node.sock";

/// The environment variable that moves the socket, read by the agent, its `health` probe
/// and the plugins alike (the runtime's environment reaches the plugins).
pub const SOCKET_ENV: &str = "CALICO_NODE_SOCKET";

/// The socket's path: [`SOCKET_ENV`] if set and not empty, else [`DEFAULT_SOCKET`].
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| DEFAULT_SOCKET.into(), std::path::PathBuf::from)
}
