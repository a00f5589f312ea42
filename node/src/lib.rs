//! `calico-node`, the per-node agent: what Calico's `calico-node` does beside the CNI
//! plugins on every node.
//!
//! - [`config`]: the settings read from the environment, under Calico's variable names;
//! - [`startup`]: the one-shot start-up (Calico's `node/pkg/lifecycle/startup`): node name,
//!   the Node resource, default pools, cluster information, tunnel addresses, the MTU and
//!   nodename files; its own settings module reads the variables it needs;
//! - [`run`]: the long-lived daemon and the per-node services it gives the plugins over its
//!   socket (`calico-agent-protocol`): etcd on the node's one connection, deferred kernel
//!   work, metrics;
//! - [`health`]: the liveness and readiness probes, answered by the daemon;
//! - [`bgpd`]: `calico-bgpd`, the routing process `run` starts under the BGP backend (the
//!   speaker, its RIB and the kernel's learned routes and blackholes: Calico's BIRD);
//! - [`logging`]: stderr, at `CALICO_LOG_LEVEL` / `LOG_LEVEL`.
//!
//! It sits above the library crates (datastore, ipam, selector, dataplane, netfilter) and below only
//! its own thin `main`. It must not import the plugins' crates: they talk to it over its
//! socket, never by linking it.

pub mod bgpd;
pub mod config;
pub mod health;
pub mod logging;
pub mod run;
pub mod startup;

/// The version `calico-node version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
