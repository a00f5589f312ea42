//! Many nodes allocating at once against one etcd, with processes killed mid-flight and the
//! etcd leader stopped: no address handed out twice, nothing leaked after DEL and GC.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod audit;
mod runs;
