//! The `calico` plugin on simulated nodes, driven through libcni, against mutual-TLS etcd at
//! the seed's address.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod add_options;
mod agent;
mod annotations;
mod common;
mod datastore;
mod failures;
mod gc;
mod gc_check;
mod host_local;
mod kubeconfig;
mod kubevirt;
mod lifecycle;
mod policy_gate;
mod scale;
mod seed;
mod traffic;
