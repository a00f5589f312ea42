//! `calico-ipam` as a runtime drives it (through libcni), against Debian's etcd.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod kubevirt;
mod lab;
mod namespace;
mod parity;
mod verbs;
