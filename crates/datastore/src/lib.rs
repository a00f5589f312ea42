//! Calico's datastore on etcd v3.
//!
//! - [`store`]: what the logic needs (batched reads, guarded atomic writes) and an in-memory
//!   stand-in for unit tests;
//! - [`etcd`]: the real thing: one connection per invocation, plain or mutual TLS;
//! - [`faults`]: crash injection for tests (a store that fails its Nth transaction);
//! - [`discovery`]: etcd endpoints from DNS SRV records (`etcd_discovery_srv`);
//! - [`keeper`]: a per-node holder of warm TLS connections, so calls skip the handshake;
//! - [`model`]: Calico's keys and JSON, byte-compatible with Calico 3.32.

pub mod discovery;
pub mod etcd;
pub mod faults;
pub mod keeper;
pub mod model;
pub mod store;
pub mod transport;

pub use etcd::{Etcd, EtcdConfig, EtcdError};
pub use faults::FailNthTxn;
pub use store::{Guard, Kv, KvStore, MemKv, Read, TxnOutcome, Write};
