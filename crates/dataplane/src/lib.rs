//! The kernel side of the suite: network namespaces, veth pairs, addresses, routes and
//! sysctls, each behind a small interface so the logic above it is testable without root.
//!
//! Filled in by the `calico` plugin's issue; the crate exists now so the workspace's shape
//! (protocol, datastore, dataplane) is in place from the start.
