//! The suite's binaries and the libcni driver, run as a container runtime runs them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod bench_helper;
mod binaries;
mod reference_chain;

/// Our three plugin binaries.
pub const OURS: [&str; 3] = ["calico", "calico-ipam", "portmap"];

/// Every version, in VERSION's order.
pub const ALL_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
