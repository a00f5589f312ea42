//! The allocation algorithm on the in-memory store: affinity, claiming, borrowing, strict
//! affinity, the block limit, exhaustion, reservations, release and conflict retries.

use super::allocator::*;
use crate::error::IpamError;
use calico_datastore::model::{
    AllocationBlock, IpPoolSpec, IpReservationSpec, IpamConfigValue, IpamHandle, Resource, keys,
};
use calico_datastore::{Guard, Kv, KvStore, MemKv, Read, TxnOutcome, Write};
use ipnet::IpNet;
use serde_json::{Value, json};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_777_629_600)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn add_pool(store: &MemKv, name: &str, cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) {
    let mut spec = IpPoolSpec::for_cidr(cidr);
    f(&mut spec);
    let pool = Resource::new("IPPool", name, spec);
    store.put(
        &keys::resource("ippools", name),
        &pool.to_stored().expect("encodes"),
    );
}

fn set_config(store: &MemKv, c: IpamConfigValue) {
    store.put(keys::IPAM_CONFIG, &serde_json::to_vec(&c).expect("encodes"));
}

fn request(handle: &str, v4: usize, v6: usize) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        attrs: [("node".to_string(), "n1".to_string())]
            .into_iter()
            .collect(),
        num_v4: v4,
        num_v6: v6,
        ..AssignRequest::default()
    }
}

fn ipam<'s>(store: &'s dyn KvStore, node: &str) -> Ipam<'s> {
    Ipam::new(store, node).with_clock(t0)
}

fn block(store: &MemKv, cidr: &str) -> Option<AllocationBlock> {
    store
        .get(&keys::block(&net(cidr)))
        .expect("read")
        .map(|kv| serde_json::from_slice(&kv.value).expect("block"))
}

fn handle(store: &MemKv, id: &str) -> Option<IpamHandle> {
    store
        .get(&keys::handle(id))
        .expect("read")
        .map(|kv| serde_json::from_slice(&kv.value).expect("handle"))
}

fn v4(a: &Assigned) -> Vec<String> {
    a.v4.iter().map(ToString::to_string).collect()
}

#[test]
fn first_allocation_claims_a_block_with_affinity_handle_and_address_together() {
    let store = MemKv::new();
    add_pool(&store, "default-ipv4-ippool", "10.244.0.0/24", |s| {
        s.block_size = 26
    });
    let got = ipam(&store, "n1")
        .auto_assign(&request("net.c1", 1, 0))
        .expect("assigned");
    assert_eq!(got.v4.len(), 1);
    let addr = got.v4[0];
    assert_eq!(addr.prefix_len(), 26, "returned with the block's mask");
    let cidr = addr.trunc();
    let b = block(&store, &cidr.to_string()).expect("block");
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
    assert_eq!(
        b.affinity_claim_time.as_deref(),
        Some("2026-05-01T10:00:00Z")
    );
    assert_eq!(b.sequence_number, 1_777_629_600_000_000_001);
    let ord = crate::block::ordinal(&cidr, addr.addr()).expect("inside");
    assert_eq!(ord, 0, "first address of the block, FIFO");
    assert_eq!(b.allocations[0], Some(0));
    assert_eq!(
        b.sequence_number_for_allocation.get("0"),
        Some(&1_777_629_600_000_000_000)
    );
    let attr = &b.attributes.expect("attributes")[0];
    assert_eq!(attr.handle(), Some("net.c1"));
    assert_eq!(attr.owner("node"), Some("n1"));
    let aff = store
        .get(&keys::affinity("n1", &cidr))
        .expect("read")
        .expect("affinity");
    assert_eq!(
        String::from_utf8(aff.value).expect("utf8"),
        r#"{"state":"confirmed","deleted":false}"#
    );
    let h = handle(&store, "net.c1").expect("handle");
    assert_eq!(h.block.get(&cidr.to_string()), Some(&1));
}

#[test]
fn a_node_fills_its_own_block_first_and_nodes_get_different_blocks() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.244.0.0/20", |s| s.block_size = 26);
    let a1 = ipam(&store, "node-a")
        .auto_assign(&request("n.a1", 1, 0))
        .expect("a1");
    let a2 = ipam(&store, "node-a")
        .auto_assign(&request("n.a2", 1, 0))
        .expect("a2");
    let b1 = ipam(&store, "node-b")
        .auto_assign(&request("n.b1", 1, 0))
        .expect("b1");
    assert_eq!(a1.v4[0].trunc(), a2.v4[0].trunc(), "same affine block");
    assert_eq!(
        crate::block::ordinal(&a2.v4[0].trunc(), a2.v4[0].addr()),
        Some(1)
    );
    assert_ne!(
        a1.v4[0].trunc(),
        b1.v4[0].trunc(),
        "nodes claim their own blocks"
    );
}

#[test]
fn full_affine_block_leads_to_a_second_claim_then_borrowing_then_exhaustion() {
    let store = MemKv::new();
    // Two /30 blocks of four addresses.
    add_pool(&store, "tiny", "10.0.0.0/29", |s| s.block_size = 30);
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("n1 fills");
    }
    let b = ipam(&store, "n2")
        .auto_assign(&request("n.b0", 1, 0))
        .expect("n2 claims the other");
    let n2_block = b.v4[0].trunc();
    // n1's block is full and no block is unclaimed: it borrows from n2's block.
    let borrowed = ipam(&store, "n1")
        .auto_assign(&request("n.a4", 1, 0))
        .expect("borrow");
    assert_eq!(borrowed.v4[0].trunc(), n2_block);
    assert_eq!(
        block(&store, &n2_block.to_string())
            .expect("block")
            .affinity
            .as_deref(),
        Some("host:n2"),
        "borrowing does not move the affinity"
    );
    for i in 5..7 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("more");
    }
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a7", 1, 0))
        .expect_err("full");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert!(e.to_string().contains("10.0.0.0/29"), "names the pool: {e}");
}

#[test]
fn strict_affinity_never_borrows() {
    let store = MemKv::new();
    add_pool(&store, "tiny", "10.0.0.0/29", |s| s.block_size = 30);
    set_config(
        &store,
        IpamConfigValue {
            strict_affinity: true,
            ..IpamConfigValue::calico_default()
        },
    );
    ipam(&store, "n2")
        .auto_assign(&request("n.b0", 1, 0))
        .expect("n2");
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("n1");
    }
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a4", 1, 0))
        .expect_err("no borrowing");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
}

#[test]
fn the_block_limit_stops_claims_but_not_use_of_owned_blocks() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 30);
    set_config(
        &store,
        IpamConfigValue {
            strict_affinity: true,
            max_blocks_per_host: 1,
            ..IpamConfigValue::calico_default()
        },
    );
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("own block");
    }
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a4", 1, 0))
        .expect_err("limit");
    assert!(matches!(e, IpamError::BlockLimit { limit: 1, .. }), "{e}");
    // The default limit is 20 blocks.
    assert_eq!(IpamSettings::from_stored(None).max_blocks_per_host, 20);
}

#[test]
fn auto_allocate_off_means_no_claims() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    // A stored {} turns auto-allocation off (Calico's omitempty quirk).
    store.put(keys::IPAM_CONFIG, b"{}");
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("no claim");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
}

#[test]
fn disabled_pools_are_never_used() {
    let store = MemKv::new();
    add_pool(&store, "off", "10.1.0.0/24", |s| s.disabled = true);
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("no pool");
    assert!(matches!(e, IpamError::NoPools { .. }), "{e}");
    add_pool(&store, "on", "10.2.0.0/24", |_| {});
    for i in 0..10 {
        let got = ipam(&store, "n1")
            .auto_assign(&request(&format!("n.{i}"), 1, 0))
            .expect("on");
        assert!(net("10.2.0.0/24").contains(&got.v4[0].addr()));
    }
    let mut req = request("n.x", 1, 0);
    req.v4_pools = vec!["off".into()];
    let e = ipam(&store, "n1")
        .auto_assign(&req)
        .expect_err("requested disabled");
    assert!(e.to_string().contains("not enabled"), "{e}");
}

#[test]
fn node_selectors_use_the_node_labels() {
    let store = MemKv::new();
    add_pool(&store, "zone-a", "10.1.0.0/24", |s| {
        s.node_selector = "zone == 'a'".into()
    });
    add_pool(&store, "zone-b", "10.2.0.0/24", |s| {
        s.node_selector = "zone == 'b'".into()
    });
    let mut node = Resource::new("Node", "n1", json!({}));
    node.metadata.labels.insert("zone".into(), "b".into());
    store.put(
        &keys::resource("nodes", "n1"),
        &node.to_stored().expect("encodes"),
    );
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect("zone b");
    assert!(net("10.2.0.0/24").contains(&got.v4[0].addr()));
    // A node without a Node resource has no labels: no pool selects it.
    let e = ipam(&store, "n2")
        .auto_assign(&request("n.b", 1, 0))
        .expect_err("no labels");
    assert!(matches!(e, IpamError::NoPools { .. }), "{e}");
}

#[test]
fn reserved_addresses_are_skipped() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 29);
    // Reserve the whole first half of the pool, one by one and as a range.
    let r = Resource::new(
        "IPReservation",
        "r",
        IpReservationSpec {
            reserved_cidrs: vec!["10.0.0.0/25".into(), "10.0.0.129".into()],
            extra: serde_json::Map::new(),
        },
    );
    store.put(
        &keys::resource("ipreservations", "r"),
        &r.to_stored().expect("encodes"),
    );
    for i in 0..20 {
        let got = ipam(&store, "n1")
            .auto_assign(&request(&format!("n.{i}"), 1, 0))
            .expect("ok");
        let a = got.v4[0].addr();
        assert!(
            !net("10.0.0.0/25").contains(&a) && a != ip("10.0.0.129"),
            "{a}"
        );
    }
}

#[test]
fn dual_stack_and_the_rollback_of_a_half_failure() {
    let store = MemKv::new();
    add_pool(&store, "v4", "10.0.0.0/24", |_| {});
    let before = store.dump();
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.d", 1, 1))
        .expect_err("no v6 pool");
    assert!(
        matches!(e, IpamError::NoPools { family: "IPv6", .. }),
        "{e}"
    );
    assert_eq!(store.dump(), before, "the IPv4 half was never written");

    add_pool(&store, "v6", "fd00:10:244::/120", |_| {});
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.d", 1, 1))
        .expect("dual");
    assert_eq!(got.v4.len(), 1);
    assert_eq!(got.v6[0].prefix_len(), 122);
    let h = handle(&store, "n.d").expect("handle");
    assert_eq!(
        h.block.len(),
        2,
        "both families in one handle, one transaction"
    );
}

#[test]
fn release_by_handle_frees_addresses_and_deletes_empty_unaffine_blocks() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    let a = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect("a");
    let cidr = a.v4[0].trunc();
    let released = ipam(&store, "n1")
        .release_by_handle("n.a")
        .expect("release");
    assert_eq!(released, Some(vec![a.v4[0].addr()]));
    assert!(handle(&store, "n.a").is_none(), "handle deleted");
    let b = block(&store, &cidr.to_string()).expect("affine block kept");
    assert_eq!(b.attributes, Some(vec![]));
    assert_eq!(
        *b.unallocated.last().expect("tail"),
        0,
        "freed ordinal at the tail"
    );
    // Not found is not an error.
    assert_eq!(
        ipam(&store, "n1").release_by_handle("n.a").expect("again"),
        None
    );

    // A block without affinity (released by its node) is deleted once empty.
    ipam(&store, "n1")
        .auto_assign(&request("n.b", 1, 0))
        .expect("b");
    let key = keys::block(&cidr);
    let mut blk = block(&store, &cidr.to_string()).expect("block");
    blk.affinity = None;
    store.put(&key, &serde_json::to_vec(&blk).expect("encodes"));
    ipam(&store, "n1")
        .release_by_handle("n.b")
        .expect("release");
    assert!(
        store.get(&key).expect("read").is_none(),
        "empty unaffine block deleted"
    );
}

#[test]
fn specific_addresses_claim_their_block_and_refuse_duplicates() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let attrs = BTreeMap::new();
    let got = ipam(&store, "n1")
        .assign_ip(ip("10.0.0.77"), "n.s", &attrs)
        .expect("free");
    assert_eq!(got.to_string(), "10.0.0.77/26");
    let b = block(&store, "10.0.0.64/26").expect("claimed for n1");
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
    assert_eq!(b.allocations[13], Some(0));
    let e = ipam(&store, "n2")
        .assign_ip(ip("10.0.0.77"), "n.t", &attrs)
        .expect_err("taken");
    assert!(matches!(e, IpamError::AlreadyAssigned { .. }), "{e}");
    let e = ipam(&store, "n1")
        .assign_ip(ip("10.9.0.1"), "n.u", &attrs)
        .expect_err("no pool");
    assert!(matches!(e, IpamError::NotInPool { .. }), "{e}");
    // Another node may take a free address in n1's block (no strict affinity).
    ipam(&store, "n2")
        .assign_ip(ip("10.0.0.78"), "n.v", &attrs)
        .expect("borrowed");
    assert_eq!(
        ipam(&store, "n2").addresses_of_handle("n.v").expect("read"),
        [ip("10.0.0.78")]
    );
}

#[test]
fn release_of_specific_addresses_updates_their_handles() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let mut req = request("n.m", 3, 0);
    req.num_v4 = 3;
    let got = ipam(&store, "n1").auto_assign(&req).expect("three");
    let first = got.v4[0].addr();
    let out = ipam(&store, "n1")
        .release_ips(&[first], None)
        .expect("release");
    assert_eq!(out, [first]);
    let cidr = got.v4[0].trunc().to_string();
    assert_eq!(
        handle(&store, "n.m").expect("handle").block.get(&cidr),
        Some(&2)
    );
    // A wrong handle releases nothing.
    let second = got.v4[1].addr();
    assert!(
        ipam(&store, "n1")
            .release_ips(&[second], Some("other"))
            .expect("ok")
            .is_empty()
    );
}

#[test]
fn release_limited_to_a_node_leaves_other_nodes_allocations() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let mut req = request("n.shared", 1, 0);
    ipam(&store, "n1").auto_assign(&req).expect("n1");
    req.attrs.insert("node".into(), "n2".into());
    ipam(&store, "n2").auto_assign(&req).expect("n2");
    let ipam1 = ipam(&store, "n1");
    let snap = ipam1.snapshot(&["n.shared"]).expect("snapshot");
    let released = ipam1
        .release_handles_with(&snap, Some("n2"), &mut |_, _| Ok(Extra::default()))
        .expect("release");
    assert_eq!(released.len(), 1);
    let h = handle(&store, "n.shared").expect("handle kept for n1's address");
    assert_eq!(h.block.values().sum::<i64>(), 1);
}

#[test]
fn old_schema_blocks_are_used_and_written_back_in_the_new_schema_with_unknown_fields() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 30);
    let old = json!({"cidr":"10.0.0.0/30","affinity":"host:n1","allocations":[0,null,null,null],
        "unallocated":[1,2,3],"attributes":[{"handle_id":"old","secondary":null}],
        "deleted":false,"someFutureField":"kept"});
    store.put(
        &keys::block(&net("10.0.0.0/30")),
        old.to_string().as_bytes(),
    );
    store.put(
        &keys::affinity("n1", &net("10.0.0.0/30")),
        br#"{"state":"confirmed","deleted":false}"#,
    );
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.new", 1, 0))
        .expect("assign");
    assert_eq!(v4(&got), ["10.0.0.1/30"]);
    let raw: Value = serde_json::from_slice(
        &store
            .get(&keys::block(&net("10.0.0.0/30")))
            .expect("read")
            .expect("block")
            .value,
    )
    .expect("json");
    assert_eq!(raw["someFutureField"], "kept");
    assert_eq!(raw["sequenceNumber"], 1);
    assert_eq!(raw["sequenceNumberForAllocation"], json!({"1": 0}));
    assert_eq!(raw["attributes"][0], json!({"handle_id":"old"}));
    assert_eq!(raw["allocations"], json!([0, 1, null, null]));
}

#[test]
fn a_pending_affinity_is_confirmed_and_a_missing_block_is_claimed() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    // A claim cut short after writing only the affinity.
    let cidr = net("10.0.0.48/28");
    store.put(
        &keys::affinity("n1", &cidr),
        br#"{"state":"pending","deleted":false}"#,
    );
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.p", 1, 0))
        .expect("assign");
    assert_eq!(got.v4[0].trunc(), cidr, "the affine block is used first");
    let aff = store
        .get(&keys::affinity("n1", &cidr))
        .expect("read")
        .expect("aff");
    assert!(String::from_utf8_lossy(&aff.value).contains("confirmed"));
}

/// What another node does between our read and our write.
type Interference<'a> = Box<dyn FnOnce(&MemKv) + 'a>;

/// Runs `interfere` once, right before the first transaction, to simulate another node.
struct Racing<'a> {
    inner: &'a MemKv,
    interfere: Cell<Option<Interference<'a>>>,
}

impl KvStore for Racing<'_> {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, calico_datastore::EtcdError> {
        self.inner.read(reads)
    }
    fn txn(
        &self,
        guards: &[Guard],
        writes: &[Write],
    ) -> Result<TxnOutcome, calico_datastore::EtcdError> {
        if let Some(f) = self.interfere.take() {
            f(self.inner);
        }
        self.inner.txn(guards, writes)
    }
    fn describe(&self) -> String {
        "racing".into()
    }
}

#[test]
fn a_conflicting_write_is_retried_without_losing_either_allocation() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    ipam(&store, "n1")
        .auto_assign(&request("n.first", 1, 0))
        .expect("block claimed");
    // Between our read and our write, another process takes the next address.
    let racing = Racing {
        inner: &store,
        interfere: Cell::new(Some(Box::new(|s: &MemKv| {
            ipam(s, "n1")
                .auto_assign(&request("n.other", 1, 0))
                .expect("other");
        }))),
    };
    let got = ipam(&racing, "n1")
        .auto_assign(&request("n.mine", 1, 0))
        .expect("retried");
    let other = ipam(&store, "n1")
        .addresses_of_handle("n.other")
        .expect("read");
    assert_ne!(got.v4[0].addr(), other[0], "no address handed out twice");
    let cidr = got.v4[0].trunc();
    assert_eq!(
        cidr,
        IpNet::new(other[0], 28).expect("net").trunc(),
        "same affine block"
    );
    assert_eq!(crate::block::ordinal(&cidr, got.v4[0].addr()), Some(2));
}

#[test]
fn a_lost_claim_race_moves_on_to_another_block() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    let racing = Racing {
        inner: &store,
        interfere: Cell::new(Some(Box::new(|s: &MemKv| {
            // Node n2 claims exactly the block n1 is about to claim.
            let first = crate::pools::Pool::from_resource(
                &calico_datastore::model::IpPool::from_kv(
                    &s.get(&keys::resource("ippools", "p"))
                        .expect("read")
                        .expect("pool"),
                )
                .expect("pool"),
            )
            .expect("usable")
            .blocks_from_node_offset("n1")
            .next()
            .expect("a block");
            ipam(s, "n2")
                .assign_ip(first.network(), "n.x", &BTreeMap::new())
                .expect("n2 claims");
        }))),
    };
    let got = ipam(&racing, "n1")
        .auto_assign(&request("n.y", 1, 0))
        .expect("another block");
    let b = block(&store, &got.v4[0].trunc().to_string()).expect("block");
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
}

#[test]
fn an_unreachable_store_fails_the_assignment_as_transient_and_writes_nothing() {
    let store = MemKv::new();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let before = store.dump();
    store.fail_next_txns(1);
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("down");
    assert!(e.is_transient(), "{e}");
    assert_eq!(store.dump(), before);
}
