//! `portmap` chained after `calico` on simulated nodes, driven through libcni with
//! `CAP_ARGS`, with real traffic.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;
mod interop;
mod lifecycle;
mod scale;
mod traffic;
