//! What the verbs' tests without root start from: the in-memory store (`MemKv`) with a pool
//! and this node. The real kernel and etcd are tested in tests/cni.

use calico_datastore::MemKv;
use calico_datastore::model::{IpPoolSpec, Resource, keys};
use serde_json::json;

pub(super) const NODE: &str = "n1";
/// The pool every test allocates from.
pub(super) const POOL: &str = "10.0.0.0/24";

/// The in-memory store with the pool and this node.
pub(super) fn store() -> MemKv {
    let store = MemKv::new();
    let pool = Resource::new("IPPool", "p", IpPoolSpec::for_cidr(POOL));
    store.put(
        &keys::resource("ippools", "p"),
        &pool.to_stored().expect("encodes"),
    );
    let node = Resource::new("Node", NODE, json!({}));
    store.put(
        &keys::resource("nodes", NODE),
        &node.to_stored().expect("encodes"),
    );
    store
}
