//! Calico's datastore on etcd v3.
//!
//! - [`etcd`]: the connection (plain or mutual TLS), reads, and compare-and-swap writes.

pub mod etcd;

pub use etcd::{Etcd, EtcdConfig, EtcdError, Guard, Kv, Write};
