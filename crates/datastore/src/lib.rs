//! Calico's datastore on etcd v3: the store interface the logic works on, the etcd client
//! behind it, and Calico's keys and JSON.
//!
//! Owns: the etcd settings ([`EtcdConfig`]) and errors, the [`KvStore`] interface with its
//! in-memory stand-in, the etcd client and its connections, and Calico's data model
//! ([`model`]). Must not import `calico-netconf` or `cni-protocol` (they sit above it:
//! `calico-netconf` converts the CNI config into [`EtcdConfig`]), nor any IPAM rule (those
//! are `calico-ipam`'s).
//!
//! Modules, in layers: each imports only modules of the layers below it.
//!
//! 1. [`config`]: how to reach etcd; [`error`]: [`StoreError`] (the store's) and
//!    [`EtcdError`] (the etcd client's). Leaves.
//! 2. [`store`]: what the logic needs (batched reads, guarded atomic writes) and [`MemKv`],
//!    an in-memory stand-in for unit tests; [`transport`]: how bytes reach etcd (TCP, TLS);
//!    [`discovery`]: etcd endpoints from DNS SRV records (`etcd_discovery_srv`).
//! 3. [`model`]: Calico's keys and JSON, byte-compatible with Calico 3.32 (reads [`Kv`]);
//!    [`faults`]: crash injection for tests (a store that fails its Nth transaction).
//! 4. [`etcd`]: the real store, plain or mutual TLS: [`EtcdClient`] (asynchronous, shared by
//!    the node agent's requests) and [`Etcd`] (synchronous, one connection per process);
//!    [`watch`]: Calico's syncer pattern (list at one revision, watch from the next,
//!    re-list on compaction) over the client, with an in-memory test double.
//! 5. [`agent`]: etcd through the node agent (`calico-node run`): the plugins' store
//!    ([`PluginStore`]: the agent's connection when it serves the same etcd, else their own)
//!    and the agent's side of it. Its messages are `calico-agent-protocol`'s.
//!
//! Of the workspace it imports only `calico-agent-protocol` and `calico-fsbound` (the TLS
//! files, read bounded and without blocking).

pub mod agent;
pub mod config;
pub mod discovery;
pub mod error;
pub mod etcd;
pub mod faults;
pub mod model;
pub mod store;
pub mod transport;
pub mod watch;

pub use agent::PluginStore;
pub use config::EtcdConfig;
pub use error::{EtcdError, StoreError};
pub use etcd::{Etcd, EtcdClient};
pub use faults::FailNthTxn;
pub use store::{Guard, Kv, KvStore, MemKv, Read, TxnOutcome, Write};
pub use watch::{KeyChange, SyncEvent, SyncedKeys, Syncer, WatchableMemKv, sync_prefixes};
