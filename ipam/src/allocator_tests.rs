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

/// Registers a Calico Node as calico-node does (automatic assignment needs it).
fn register_node(store: &MemKv, name: &str) {
    let node = Resource::new("Node", name, json!({}));
    store.put(
        &keys::resource("nodes", name),
        &node.to_stored().expect("encodes"),
    );
}

/// A store with the nodes the tests use registered.
fn store() -> MemKv {
    let store = MemKv::new();
    for n in ["n1", "n2", "node-a", "node-b"] {
        register_node(&store, n);
    }
    store
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

/// A request of one attachment, as the CNI plugins make it: the interface is an
/// attribute, and a repeat gets back what that interface holds.
fn attachment(handle: &str, ifname: &str, v4: usize, v6: usize) -> AssignRequest {
    let mut req = request(handle, v4, v6);
    req.attrs
        .insert(ATTACHMENT_ATTRIBUTE.to_string(), ifname.to_string());
    req.reuse_if = Some((ATTACHMENT_ATTRIBUTE.to_string(), ifname.to_string()));
    req
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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

/// Mirrors ipam.go findOrClaimBlock with AutoAllocateBlocks false: "failed to find or claim
/// a block", and no borrowing even without strict affinity.
#[test]
fn auto_allocate_off_means_no_claims_and_no_borrowing() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    // n2 has a block with room that n1 could borrow from.
    ipam(&store, "n2")
        .auto_assign(&request("n.b", 1, 0))
        .expect("n2 claims");
    // A stored {} turns auto-allocation off (Calico's omitempty quirk).
    store.put(keys::IPAM_CONFIG, b"{}");
    let before = store.dump();
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("no claim");
    assert!(matches!(e, IpamError::NoBlockToClaim { .. }), "{e}");
    assert!(
        e.to_string().contains("failed to find or claim a block"),
        "{e}"
    );
    assert_eq!(store.dump(), before, "nothing borrowed");
    // n2 still uses its own block.
    ipam(&store, "n2")
        .auto_assign(&request("n.b2", 1, 0))
        .expect("own block");
}

/// Mirrors ipam.go autoAssign/findOrClaimBlock: at the limit, ErrBlockLimit at once, without
/// borrowing from the blocks of other nodes (strict affinity off).
#[test]
fn at_the_block_limit_the_request_fails_without_borrowing() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 30);
    set_config(
        &store,
        IpamConfigValue {
            max_blocks_per_host: 1,
            ..IpamConfigValue::calico_default()
        },
    );
    ipam(&store, "n2")
        .auto_assign(&request("n.b", 1, 0))
        .expect("n2's block has room");
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("own block");
    }
    let before = store.dump();
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a4", 1, 0))
        .expect_err("limit");
    assert!(matches!(e, IpamError::BlockLimit { limit: 1, .. }), "{e}");
    assert_eq!(store.dump(), before, "no address borrowed from n2's block");
}

/// Mirrors ipam.go autoAssign: numBlocksOwned counts only the node's affine blocks in the
/// pools allowed for this request (prepareAffinityBlocksForHost's allowedAffBlocks).
#[test]
fn the_block_limit_counts_only_blocks_in_the_requested_pools() {
    let store = store();
    add_pool(&store, "a", "10.1.0.0/24", |s| s.block_size = 30);
    add_pool(&store, "b", "10.2.0.0/24", |s| s.block_size = 30);
    set_config(
        &store,
        IpamConfigValue {
            max_blocks_per_host: 1,
            ..IpamConfigValue::calico_default()
        },
    );
    let mut in_a = request("n.a", 1, 0);
    in_a.v4_pools = vec!["a".into()];
    let got = ipam(&store, "n1").auto_assign(&in_a).expect("block in a");
    assert!(net("10.1.0.0/24").contains(&got.v4[0].addr()));
    // The node's block in pool a does not count against a request for pool b.
    let mut in_b = request("n.b", 1, 0);
    in_b.v4_pools = vec!["b".into()];
    let got = ipam(&store, "n1").auto_assign(&in_b).expect("block in b");
    assert!(net("10.2.0.0/24").contains(&got.v4[0].addr()));
    // Now each pool has one: a third block in a is over the limit once a is full.
    for i in 0..3 {
        let mut r = in_a.clone();
        r.handle = format!("n.a{i}");
        ipam(&store, "n1")
            .auto_assign(&r)
            .expect("room in a's block");
    }
    in_a.handle = "n.a9".into();
    let e = ipam(&store, "n1")
        .auto_assign(&in_a)
        .expect_err("limit in a");
    assert!(matches!(e, IpamError::BlockLimit { limit: 1, .. }), "{e}");
}

fn t30() -> SystemTime {
    t0() + Duration::from_secs(30)
}

fn t61() -> SystemTime {
    t0() + Duration::from_secs(61)
}

/// Two /30 blocks of a /29: n2 claims both (at t0) and empties one.
fn two_blocks_claimed_by_n2(store: &MemKv) -> (IpNet, IpNet) {
    add_pool(store, "tiny", "10.0.0.0/29", |s| s.block_size = 30);
    set_config(
        store,
        IpamConfigValue {
            strict_affinity: true,
            ..IpamConfigValue::calico_default()
        },
    );
    for i in 0..5 {
        ipam(store, "n2")
            .auto_assign(&request(&format!("n.b{i}"), 1, 0))
            .expect("n2");
    }
    let last = ipam(store, "n2").addresses_of_handle("n.b4").expect("read")[0];
    let second = IpNet::new(last, 30).expect("net").trunc();
    let first = if second == net("10.0.0.0/30") {
        net("10.0.0.4/30")
    } else {
        net("10.0.0.0/30")
    };
    ipam(store, "n2")
        .release_by_handle("n.b4")
        .expect("empties the second block");
    (first, second)
}

/// Mirrors ipam_block_reader_writer.go findUsableBlock: with no unclaimed block left, an
/// empty block affine to another node whose claim is at least EmptyBlockMinReclaimAge (60 s)
/// old is released (releaseBlockAffinity, RequireEmpty) and claimed; a block in use, or
/// claimed less than a minute ago, is not.
#[test]
fn an_empty_block_of_another_node_is_reclaimed_once_its_claim_is_a_minute_old() {
    let store = store();
    let (full, empty) = two_blocks_claimed_by_n2(&store);
    let key = |node: &str, b: &IpNet| keys::affinity(node, b);
    // 30 s after n2's claim: too young; the full block is never a candidate.
    let before = store.dump();
    let e = Ipam::new(&store, "n1")
        .with_clock(t30)
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("too young");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(store.dump(), before);
    // 61 s after: reclaimed in one transaction.
    let got = Ipam::new(&store, "n1")
        .with_clock(t61)
        .auto_assign(&request("n.a", 1, 0))
        .expect("reclaimed");
    assert_eq!(got.v4[0].trunc(), empty);
    let b = block(&store, &empty.to_string()).expect("block");
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
    assert_eq!(
        b.affinity_claim_time.as_deref(),
        Some("2026-05-01T10:01:01Z")
    );
    assert!(
        store.get(&key("n2", &empty)).expect("read").is_none(),
        "n2's affinity gone"
    );
    assert!(store.get(&key("n1", &empty)).expect("read").is_some());
    assert!(
        store.get(&key("n2", &full)).expect("read").is_some(),
        "the other untouched"
    );
    // n2 no longer uses it: its next address would need a new block, and there is none.
    let e = Ipam::new(&store, "n2")
        .with_clock(t61)
        .auto_assign(&request("n.b9", 1, 0))
        .expect_err("n2 is full");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
}

/// A block without affinity_claim_time (written before Calico 3.32) counts as claimed long
/// ago (Go's zero time), and the reclaim also happens without strict affinity, before any
/// borrowing.
#[test]
fn a_block_without_a_claim_time_is_reclaimable_and_reclaim_comes_before_borrowing() {
    let store = store();
    let (_, empty) = two_blocks_claimed_by_n2(&store);
    store.put(keys::IPAM_CONFIG, br#"{"auto_allocate_blocks":true}"#);
    let mut b = block(&store, &empty.to_string()).expect("block");
    b.affinity_claim_time = None;
    store.put(
        &keys::block(&empty),
        &serde_json::to_vec(&b).expect("encodes"),
    );
    let got = Ipam::new(&store, "n1")
        .with_clock(t30)
        .auto_assign(&request("n.a", 1, 0))
        .expect("reclaimed");
    assert_eq!(got.v4[0].trunc(), empty);
}

/// Reserves `n` addresses of the stored block `cidr` for Windows, as a Windows node's
/// calico-node does (`windows-reserved-ipam-handle`), and counts them in that handle, which
/// may also hold `elsewhere` addresses in another block.
fn reserve_for_windows(store: &MemKv, cidr: &IpNet, n: usize, elsewhere: Option<(&str, i64)>) {
    let mut b = block(store, &cidr.to_string()).expect("block");
    let owner = crate::block::Owner {
        handle: crate::block::WINDOWS_RESERVED_HANDLE.into(),
        attrs: BTreeMap::new(),
    };
    assert_eq!(
        crate::block::assign_next(&mut b, n, &owner, &|_| false).len(),
        n
    );
    store.put(
        &keys::block(cidr),
        &serde_json::to_vec(&b).expect("encodes"),
    );
    let mut h = IpamHandle::default();
    h.block.insert(cidr.to_string(), n as i64);
    if let Some((other, count)) = elsewhere {
        h.block.insert(other.into(), count);
    }
    store.put(
        &keys::handle(crate::block::WINDOWS_RESERVED_HANDLE),
        &serde_json::to_vec(&h).expect("encodes"),
    );
}

/// Mirrors ipam_block_reader_writer.go findUsableBlock, which takes a block for empty when
/// ipam_block.go empty() says so: only Windows-reserved addresses left. Such a block of
/// another node is reclaimed (made anew for this node), and the Windows handle gives up its
/// count for it in the same transaction (Calico deletes the block and leaves the count).
#[test]
fn a_block_holding_only_windows_reserved_addresses_is_reclaimed() {
    let store = store();
    let (_, empty) = two_blocks_claimed_by_n2(&store);
    reserve_for_windows(&store, &empty, 2, Some(("10.9.9.0/30", 4)));
    let got = Ipam::new(&store, "n1")
        .with_clock(t61)
        .auto_assign(&request("n.a", 1, 0))
        .expect("reclaimed");
    assert_eq!(got.v4[0].trunc(), empty);
    let b = block(&store, &empty.to_string()).expect("block");
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
    assert_eq!(crate::block::in_use(&b), 1, "only n1's new address");
    assert!(
        store
            .get(&keys::affinity("n2", &empty))
            .expect("read")
            .is_none()
    );
    let windows = handle(&store, crate::block::WINDOWS_RESERVED_HANDLE).expect("handle");
    assert_eq!(
        windows.block,
        [("10.9.9.0/30".to_string(), 4)].into_iter().collect(),
        "its count for the reclaimed block is gone"
    );
}

/// Mirrors ipam.go releaseIPsFromBlock: a block without affinity that the release leaves
/// empty (ipam_block.go empty(): only Windows-reserved addresses left) is deleted; the
/// Windows handle gives up its count for it in the same transaction, and goes if that was
/// all it held.
#[test]
fn a_release_leaving_only_windows_reserved_addresses_deletes_the_block() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    let a = ipam(&store, "n1")
        .auto_assign(&request("n.a", 2, 0))
        .expect("a");
    let cidr = a.v4[0].trunc();
    reserve_for_windows(&store, &cidr, 3, Some(("10.9.9.0/30", 4)));
    let mut b = block(&store, &cidr.to_string()).expect("block");
    b.affinity = None;
    store.put(
        &keys::block(&cidr),
        &serde_json::to_vec(&b).expect("encodes"),
    );
    // One address left: the block is still in use.
    ipam(&store, "n1")
        .release_ips(&[a.v4[0].addr()], None)
        .expect("release");
    assert!(block(&store, &cidr.to_string()).is_some());
    assert_eq!(
        handle(&store, crate::block::WINDOWS_RESERVED_HANDLE)
            .expect("handle")
            .block
            .get(&cidr.to_string()),
        Some(&3)
    );
    // The last one: only the reserved addresses remain, so the block goes.
    let out = ipam(&store, "n1")
        .release_by_handle("n.a")
        .expect("release");
    assert_eq!(out, Some(vec![a.v4[1].addr()]));
    assert!(block(&store, &cidr.to_string()).is_none(), "deleted");
    assert!(handle(&store, "n.a").is_none());
    let windows = handle(&store, crate::block::WINDOWS_RESERVED_HANDLE).expect("handle");
    assert_eq!(
        windows.block,
        [("10.9.9.0/30".to_string(), 4)].into_iter().collect()
    );
    // With no other block, the handle itself goes.
    let a = ipam(&store, "n1")
        .auto_assign(&request("n.b", 1, 0))
        .expect("b");
    let cidr = a.v4[0].trunc();
    reserve_for_windows(&store, &cidr, 2, None);
    let mut b = block(&store, &cidr.to_string()).expect("block");
    b.affinity = None;
    store.put(
        &keys::block(&cidr),
        &serde_json::to_vec(&b).expect("encodes"),
    );
    ipam(&store, "n1")
        .release_ips(&[a.v4[0].addr()], None)
        .expect("release");
    assert!(block(&store, &cidr.to_string()).is_none());
    assert!(handle(&store, crate::block::WINDOWS_RESERVED_HANDLE).is_none());
}

/// The reclaim is guarded on the block as read: an allocation into it in between (here by
/// its owner) fails the transaction, and the new plan finds nothing to reclaim.
#[test]
fn an_allocation_into_a_block_being_reclaimed_wins_and_the_reclaim_is_planned_again() {
    let store = store();
    let (_, empty) = two_blocks_claimed_by_n2(&store);
    let racing = Racing {
        inner: &store,
        interfere: Cell::new(Some(Box::new(|s: &MemKv| {
            Ipam::new(s, "n2")
                .with_clock(t61)
                .auto_assign(&request("n.b5", 1, 0))
                .expect("n2 uses its empty block");
        }))),
    };
    let e = Ipam::new(&racing, "n1")
        .with_clock(t61)
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("nothing left to reclaim");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    let b = block(&store, &empty.to_string()).expect("block");
    assert_eq!(b.affinity.as_deref(), Some("host:n2"), "n2 kept it");
    assert_eq!(
        ipam(&store, "n2")
            .addresses_of_handle("n.b5")
            .expect("read")
            .len(),
        1
    );
    assert!(handle(&store, "n.a").is_none());
}

/// Two nodes reclaiming the same block: the second transaction fails on the block's guard
/// and its new plan takes another empty block.
#[test]
fn two_reclaims_of_one_block_do_not_both_succeed() {
    let store = store();
    add_pool(&store, "tiny", "10.0.0.0/29", |s| s.block_size = 30);
    set_config(
        &store,
        IpamConfigValue {
            strict_affinity: true,
            ..IpamConfigValue::calico_default()
        },
    );
    // n2 claims both blocks and empties both.
    for i in 0..5 {
        ipam(&store, "n2")
            .auto_assign(&request(&format!("n.b{i}"), 1, 0))
            .expect("n2");
    }
    for i in 0..5 {
        ipam(&store, "n2")
            .release_by_handle(&format!("n.b{i}"))
            .expect("release");
    }
    register_node(&store, "n3");
    let racing = Racing {
        inner: &store,
        interfere: Cell::new(Some(Box::new(|s: &MemKv| {
            // n3 reclaims the block n1 is about to reclaim (the first of n1's walk).
            let first = crate::pools::Pool::from_resource(
                &calico_datastore::model::IpPool::from_kv(
                    &s.get(&keys::resource("ippools", "tiny"))
                        .expect("read")
                        .expect("pool"),
                )
                .expect("pool"),
            )
            .expect("usable")
            .blocks_from_node_offset("n1")
            .next()
            .expect("a block");
            let got = Ipam::new(s, "n3")
                .with_clock(t61)
                .auto_assign(&request("n.c", 1, 0))
                .expect("n3 reclaims");
            assert_eq!(got.v4[0].trunc(), first, "test premise: same block");
        }))),
    };
    let got = Ipam::new(&racing, "n1")
        .with_clock(t61)
        .auto_assign(&request("n.a", 1, 0))
        .expect("the other block");
    let mine = got.v4[0].trunc();
    let theirs = ipam(&store, "n3").addresses_of_handle("n.c").expect("read")[0];
    assert_ne!(mine, IpNet::new(theirs, 30).expect("net").trunc());
    for (b, node) in [
        (mine, "n1"),
        (IpNet::new(theirs, 30).expect("net").trunc(), "n3"),
    ] {
        let blk = block(&store, &b.to_string()).expect("block");
        assert_eq!(blk.affinity, Some(format!("host:{node}")));
    }
    assert!(
        store
            .list("/calico/ipam/v2/host/n2/")
            .expect("list")
            .is_empty(),
        "n2 has no affinities left"
    );
}

/// Mirrors ipam.go prepareAffinityBlocksForHost: automatic assignment Gets the node's Node
/// resource first and fails without it; AssignIP (explicit addresses) never reads it.
#[test]
fn a_missing_node_resource_fails_automatic_assignment_but_not_explicit_addresses() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let before = store.dump();
    let e = ipam(&store, "ghost")
        .auto_assign(&request("n.g", 1, 0))
        .expect_err("not registered");
    assert!(matches!(e, IpamError::NodeNotFound { .. }), "{e}");
    assert!(e.is_transient(), "calico-node registers it soon: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ghost") && msg.contains("calico-node"),
        "names the node and who registers it: {msg}"
    );
    assert_eq!(
        cni_protocol::CniError::from(e).code,
        cni_protocol::ErrorCode::TRY_AGAIN_LATER
    );
    assert_eq!(store.dump(), before, "nothing written");
    // Requested pools do not help: the Node is read first.
    let mut req = request("n.g", 1, 0);
    req.v4_pools = vec!["p".into()];
    let e = ipam(&store, "ghost").auto_assign(&req).expect_err("still");
    assert!(matches!(e, IpamError::NodeNotFound { .. }), "{e}");
    // An explicit address does not need the Node.
    ipam(&store, "ghost")
        .assign_ip(ip("10.0.0.9"), "n.g", &BTreeMap::new())
        .expect("AssignIP");
    // Once registered, automatic assignment works.
    register_node(&store, "ghost");
    ipam(&store, "ghost")
        .auto_assign(&request("n.g2", 1, 0))
        .expect("registered");
}

fn t10() -> SystemTime {
    t0() + Duration::from_secs(10)
}

fn t31() -> SystemTime {
    t0() + Duration::from_secs(31)
}

/// Mirrors Calico 3.33's ipam_block.go releaseByHandle and garbageCollect: with
/// ipCooldownSeconds set, a released address points at an entry holding only releasedAt and
/// stays taken until the cooldown has passed; then it is freed (to the tail of unallocated)
/// and the entry dropped.
#[test]
fn with_a_cooldown_released_addresses_stay_taken_until_it_has_passed() {
    let store = store();
    add_pool(&store, "tiny", "10.0.0.0/30", |s| s.block_size = 30);
    store.put(
        keys::IPAM_CONFIG,
        br#"{"strict_affinity":true,"auto_allocate_blocks":true,"ipCooldownSeconds":30}"#,
    );
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.a{i}"), 1, 0))
            .expect("fill");
    }
    let gone = ipam(&store, "n1")
        .release_by_handle("n.a1")
        .expect("release")
        .expect("existed");
    assert_eq!(gone, [ip("10.0.0.1")]);
    assert!(handle(&store, "n.a1").is_none(), "the handle goes at once");
    let raw: Value = serde_json::from_slice(
        &store
            .get(&keys::block(&net("10.0.0.0/30")))
            .expect("read")
            .expect("block")
            .value,
    )
    .expect("json");
    let idx = raw["allocations"][1].as_u64().expect("still taken") as usize;
    assert_eq!(
        raw["attributes"][idx],
        json!({"releasedAt": "2026-05-01T10:00:00Z"})
    );
    assert_eq!(raw["unallocated"], json!([]));
    // 10 s later: still cooling down (strict affinity: nowhere else to go).
    let e = Ipam::new(&store, "n1")
        .with_clock(t10)
        .auto_assign(&request("n.b", 1, 0))
        .expect_err("cooling down");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    // Releasing it again changes nothing.
    assert!(
        Ipam::new(&store, "n1")
            .with_clock(t10)
            .release_ips(&[ip("10.0.0.1")], None)
            .expect("release")
            .is_empty()
    );
    // 31 s later: it is free again.
    let got = Ipam::new(&store, "n1")
        .with_clock(t31)
        .auto_assign(&request("n.b", 1, 0))
        .expect("cooled down");
    assert_eq!(v4(&got), ["10.0.0.1/30"]);
    let b = block(&store, "10.0.0.0/30").expect("block");
    assert!(
        b.attributes
            .expect("attributes")
            .iter()
            .all(|a| a.released_at().is_none()),
        "the cooldown entry is dropped"
    );
}

/// Without ipCooldownSeconds, release frees at once (3.32); an address a 3.33 node left in
/// cooldown is freed as soon as a block is read (3.33's garbageCollect with a cooldown of 0).
#[test]
fn without_a_cooldown_release_is_immediate_and_left_over_cooldowns_end() {
    let store = store();
    add_pool(&store, "tiny", "10.0.0.0/30", |s| s.block_size = 30);
    ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect("a");
    ipam(&store, "n1")
        .release_by_handle("n.a")
        .expect("release");
    let b = block(&store, "10.0.0.0/30").expect("block");
    assert_eq!(b.attributes, Some(vec![]), "3.32: freed and compacted");
    assert_eq!(*b.unallocated.last().expect("tail"), 0);
    // A 3.33 node released ordinal 1 into a cooldown that is no longer configured.
    let mut b = block(&store, "10.0.0.0/30").expect("block");
    b.unallocated.retain(|o| *o != 1);
    b.allocations[1] = Some(0);
    b.attributes = Some(vec![
        calico_datastore::model::AllocationAttribute::released("2026-05-01T09:59:59Z".into()),
    ]);
    store.put(
        &keys::block(&net("10.0.0.0/30")),
        &serde_json::to_vec(&b).expect("encodes"),
    );
    for i in 0..4 {
        ipam(&store, "n1")
            .auto_assign(&request(&format!("n.x{i}"), 1, 0))
            .expect("all four usable");
    }
}

/// Mirrors 3.33's ipam_block.go release (by address): released into cooldown, with the
/// block's sequence number recorded for the ordinal; the handle is decremented at once.
#[test]
fn release_of_an_address_with_a_cooldown_marks_it_and_updates_its_handle() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 28);
    store.put(
        keys::IPAM_CONFIG,
        br#"{"auto_allocate_blocks":true,"ipCooldownSeconds":60}"#,
    );
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.m", 2, 0))
        .expect("two");
    let first = got.v4[0].addr();
    let out = ipam(&store, "n1")
        .release_ips(&[first], None)
        .expect("release");
    assert_eq!(out, [first]);
    let cidr = got.v4[0].trunc();
    assert_eq!(
        handle(&store, "n.m")
            .expect("handle")
            .block
            .get(&cidr.to_string()),
        Some(&1)
    );
    let b = block(&store, &cidr.to_string()).expect("block");
    let ord = crate::block::ordinal(&cidr, first).expect("inside");
    let idx = b.allocations[ord].expect("in cooldown");
    assert!(
        b.attributes.as_ref().expect("attrs")[idx]
            .released_at()
            .is_some()
    );
    assert_eq!(
        b.sequence_number_for_allocation.get(&ord.to_string()),
        Some(&(b.sequence_number - 1)),
        "the sequence number before this write"
    );
    assert_eq!(
        ipam(&store, "n1").addresses_of_handle("n.m").expect("read"),
        [got.v4[1].addr()]
    );
}

#[test]
fn disabled_pools_are_never_used() {
    let store = store();
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
    let store = store();
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
    // A Node resource without labels: no pool selects it.
    let e = ipam(&store, "n2")
        .auto_assign(&request("n.b", 1, 0))
        .expect_err("no labels");
    assert!(matches!(e, IpamError::NoPools { .. }), "{e}");
}

#[test]
fn reserved_addresses_are_skipped() {
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    let store = store();
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
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, calico_datastore::StoreError> {
        self.inner.read(reads)
    }
    fn txn(
        &self,
        guards: &[Guard],
        writes: &[Write],
    ) -> Result<TxnOutcome, calico_datastore::StoreError> {
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
    let store = store();
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
    let store = store();
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
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    let before = store.dump();
    store.fail_next_txns(1);
    let e = ipam(&store, "n1")
        .auto_assign(&request("n.a", 1, 0))
        .expect_err("down");
    assert!(e.is_transient(), "{e}");
    assert_eq!(store.dump(), before);
}

const VM_HANDLE: &str = "k8s-pod-network.vmi.vms.vm1";

/// A VM pod's request: the VM's handle and the VMI attributes Calico adds.
fn vm_request(pod: &str, node: &str, migration: Option<&str>) -> AssignRequest {
    let mut attrs: BTreeMap<String, String> = [
        ("node", node),
        ("namespace", "vms"),
        ("pod", pod),
        ("vmi-name", "vm1"),
        ("vmi-uid", "vmi-uid-1"),
        ("vm-uid", "vm-uid-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(m) = migration {
        attrs.insert("vmim-uid".into(), m.into());
    }
    AssignRequest {
        handle: VM_HANDLE.into(),
        attrs,
        num_v4: 1,
        num_v6: 1,
        ..AssignRequest::default()
    }
}

fn vm_assign(
    store: &dyn KvStore,
    node: &str,
    req: &AssignRequest,
    target: bool,
) -> Result<VmAssigned, IpamError> {
    let i = ipam(store, node);
    let snap = i.snapshot(&[VM_HANDLE])?;
    i.assign_vm_with(&snap, req, &[], target, &mut |_, _| Ok(Extra::default()))
}

fn vm_release(store: &MemKv, node: &str, pod: &str, vm_gone: bool) -> Vec<IpAddr> {
    let i = ipam(store, node);
    let snap = i.snapshot(&[VM_HANDLE]).expect("snapshot");
    i.release_vm_with(&snap, VM_HANDLE, ("vms", pod), vm_gone, &mut |_, _| {
        Ok(Extra::default())
    })
    .expect("release")
}

/// The attribute entry of `ip` (block mask `len`).
fn attr_of(store: &MemKv, ip: IpNet) -> calico_datastore::model::AllocationAttribute {
    let b = block(store, &ip.trunc().to_string()).expect("block");
    crate::block::attribute_of(&b, ip.addr())
        .expect("allocated")
        .clone()
}

fn vm_store() -> MemKv {
    let store = store();
    add_pool(&store, "v4", "10.0.0.0/24", |_| {});
    add_pool(&store, "v6", "fd00::/120", |_| {});
    store
}

/// Mirrors ipam_plugin.go cmdAdd + handleVirtLauncherPod for a VM's first pod: nothing under
/// the VM's handle yet, so a normal assignment under it, with the VMI attributes.
#[test]
fn a_vms_first_pod_is_assigned_under_the_vm_handle() {
    let store = vm_store();
    let got = vm_assign(
        &store,
        "n1",
        &vm_request("virt-launcher-vm1-a", "n1", None),
        false,
    )
    .expect("assigned");
    assert!(!got.reused);
    assert_eq!(got.addresses.len(), 2, "both families");
    let h = handle(&store, VM_HANDLE).expect("the VM's handle");
    assert_eq!(h.block.len(), 2);
    let a = attr_of(&store, got.addresses[0]);
    assert_eq!(a.handle(), Some(VM_HANDLE));
    assert_eq!(a.owner("vmi-uid"), Some("vmi-uid-1"));
    assert_eq!(a.owner("pod"), Some("virt-launcher-vm1-a"));
}

/// Mirrors handleVirtLauncherPod: a later pod of the VM (a restart, or a migration target on
/// another node) gets the VM's addresses; a source pod becomes the active owner (secondary),
/// a target the alternate owner (alternateOwnerAttrs); nothing new is allocated.
#[test]
fn later_pods_of_a_vm_reuse_its_addresses_as_active_or_alternate_owner() {
    let store = vm_store();
    let first = vm_assign(
        &store,
        "n1",
        &vm_request("virt-launcher-vm1-a", "n1", None),
        false,
    )
    .expect("first");
    // A migration target on n2.
    let target = vm_assign(
        &store,
        "n2",
        &vm_request("virt-launcher-vm1-b", "n2", Some("job-1")),
        true,
    )
    .expect("target");
    assert!(target.reused);
    assert_eq!(
        target.addresses, first.addresses,
        "the same addresses, same masks"
    );
    for a in &first.addresses {
        let attr = attr_of(&store, *a);
        assert_eq!(
            attr.owner("pod"),
            Some("virt-launcher-vm1-a"),
            "source still active"
        );
        let alt = attr.alternate_owner_attrs.as_ref().expect("alternate");
        assert_eq!(alt["pod"], "virt-launcher-vm1-b");
        assert_eq!(alt["node"], "n2");
        assert_eq!(alt["vmim-uid"], "job-1");
    }
    assert_eq!(
        handle(&store, VM_HANDLE)
            .expect("handle")
            .block
            .values()
            .sum::<i64>(),
        2,
        "no address added"
    );
    // A recreated source pod replaces the active owner.
    let again = vm_assign(
        &store,
        "n1",
        &vm_request("virt-launcher-vm1-c", "n1", None),
        false,
    )
    .expect("restart");
    assert!(again.reused);
    assert_eq!(
        attr_of(&store, first.addresses[0]).owner("pod"),
        Some("virt-launcher-vm1-c")
    );
}

/// Mirrors handleVirtLauncherPod: a migration target needs the source's addresses.
#[test]
fn a_migration_target_without_the_vms_addresses_fails() {
    let store = vm_store();
    let before = store.dump();
    let e = vm_assign(
        &store,
        "n2",
        &vm_request("virt-launcher-vm1-b", "n2", Some("job-1")),
        true,
    )
    .expect_err("nothing to migrate");
    assert!(matches!(e, IpamError::NoVmAddress { .. }), "{e}");
    assert!(e.to_string().contains(VM_HANDLE), "{e}");
    assert_eq!(store.dump(), before);
}

/// Mirrors ipam_plugin.go cmdDel's VM branch: a pod is removed as active or alternate owner;
/// the addresses go only when the VM is being deleted and no owner is left.
#[test]
fn a_vm_pods_del_gives_up_its_claim_and_the_vm_releases_the_addresses() {
    let store = vm_store();
    let first = vm_assign(
        &store,
        "n1",
        &vm_request("virt-launcher-vm1-a", "n1", None),
        false,
    )
    .expect("first");
    vm_assign(
        &store,
        "n2",
        &vm_request("virt-launcher-vm1-b", "n2", Some("job-1")),
        true,
    )
    .expect("target");
    // The source pod goes after the migration (the VM lives on): active owner cleared.
    assert!(vm_release(&store, "n1", "virt-launcher-vm1-a", false).is_empty());
    let a = attr_of(&store, first.addresses[0]);
    assert!(a.secondary.is_none(), "active owner cleared: {a:?}");
    assert!(a.alternate_owner_attrs.is_some(), "target kept");
    // A pod that owns nothing changes nothing, even with the VM going.
    let before = store.dump();
    assert!(vm_release(&store, "n1", "virt-launcher-vm1-z", true).is_empty());
    assert_eq!(store.dump(), before);
    // The VM is deleted: the last owner's DEL releases everything.
    let released = vm_release(&store, "n2", "virt-launcher-vm1-b", true);
    assert_eq!(released.len(), 2);
    assert!(handle(&store, VM_HANDLE).is_none());
    // Idempotent: the handle is gone, nothing to do (Go's IPsByHandle would fail here).
    assert!(vm_release(&store, "n2", "virt-launcher-vm1-b", true).is_empty());
}

/// A concurrent ADD for the same VM: the transaction that loses plans again and takes the
/// winner's addresses (Go's MaxAllocToHandlePerIPVersion=1 then handleMaxAllocReached).
#[test]
fn two_pods_of_one_vm_at_once_get_the_same_addresses() {
    let store = vm_store();
    let racing = Racing {
        inner: &store,
        interfere: Cell::new(Some(Box::new(|s: &MemKv| {
            vm_assign(
                s,
                "n1",
                &vm_request("virt-launcher-vm1-a", "n1", None),
                false,
            )
            .expect("the other pod");
        }))),
    };
    let got = vm_assign(
        &racing,
        "n1",
        &vm_request("virt-launcher-vm1-c", "n1", None),
        false,
    )
    .expect("planned again");
    assert!(got.reused);
    assert_eq!(
        handle(&store, VM_HANDLE)
            .expect("handle")
            .block
            .values()
            .sum::<i64>(),
        2,
        "one address per family, not two"
    );
}

/// Issue 12 #12: a repeated ADD of the same attachment (same handle, same node) gets the
/// addresses its handle holds back, per family, and only the shortfall is newly assigned;
/// one release frees everything.
#[test]
fn a_repeated_assignment_with_the_same_handle_returns_what_it_holds() {
    let store = store();
    add_pool(&store, "p4", "10.0.0.0/24", |_| {});
    add_pool(&store, "p6", "fd00::/120", |_| {});
    let first = ipam(&store, "n1")
        .auto_assign(&attachment("net.c1", "eth0", 1, 0))
        .expect("first");
    let again = ipam(&store, "n1")
        .auto_assign(&attachment("net.c1", "eth0", 1, 0))
        .expect("again");
    assert_eq!(again.v4, first.v4);
    let cidr = first.v4[0].trunc().to_string();
    let b = block(&store, &cidr).expect("block");
    assert_eq!(b.allocations.iter().filter(|a| a.is_some()).count(), 1);
    assert_eq!(handle(&store, "net.c1").expect("handle").block[&cidr], 1);
    // Dual stack asked later: the IPv4 address is kept, an IPv6 one added.
    let dual = ipam(&store, "n1")
        .auto_assign(&attachment("net.c1", "eth0", 1, 1))
        .expect("dual");
    assert_eq!(dual.v4, first.v4);
    assert_eq!(dual.v6.len(), 1);
    // Another handle still gets its own address.
    let other = ipam(&store, "n1")
        .auto_assign(&request("net.c2", 1, 0))
        .expect("other");
    assert_ne!(other.v4, first.v4);
    let released = ipam(&store, "n1")
        .release_by_handle("net.c1")
        .expect("release")
        .expect("held");
    assert_eq!(released.len(), 2);
    let b = block(&store, &cidr).expect("block");
    assert_eq!(
        b.allocations.iter().filter(|a| a.is_some()).count(),
        1,
        "c2's"
    );
}

/// Issue 12 #13 (findings #13): a stored block that is not what its key says, or whose
/// ordinals or attribute indices are out of range, used to hand out addresses outside the
/// block and pool (a free ordinal 9999 gave 198.40.39.15 from a /26). Each such block is
/// skipped (logged): the address comes from another block of the pool, the corrupt block is
/// not written, and a specific address inside it is refused as corrupt (code 102).
#[test]
fn corrupt_blocks_are_never_allocated_from() {
    let cidr = net("10.0.0.0/26");
    type Corruption = (&'static str, fn(&mut AllocationBlock));
    let corruptions: [Corruption; 7] = [
        ("free ordinal out of range", |b| {
            b.unallocated.insert(0, 9999)
        }),
        // Issue 12 review #1: ordinal 0 is free and allocated at once; handing it out would
        // give a second pod the first one's address.
        ("free ordinal allocated", |b| {
            b.attributes = Some(vec![calico_datastore::model::AllocationAttribute {
                handle_id: Some("other".into()),
                secondary: None,
                alternate_owner_attrs: None,
                extra: Default::default(),
            }]);
            b.allocations[0] = Some(0);
        }),
        ("free ordinal twice", |b| b.unallocated.push(1)),
        ("cidr not the key's", |b| b.cidr = net("10.9.0.0/26")),
        ("too few slots", |b| b.allocations.truncate(10)),
        ("too many slots", |b| b.allocations.push(None)),
        ("attribute index out of range", |b| {
            b.unallocated.retain(|o| *o != 5);
            b.allocations[5] = Some(7);
        }),
    ];
    for (what, corrupt) in corruptions {
        let store = store();
        add_pool(&store, "p", "10.0.0.0/24", |_| {});
        let mut b = crate::block::new_block(cidr, "n1", t0());
        corrupt(&mut b);
        let key = keys::block(&cidr);
        let stored = serde_json::to_vec(&b).expect("encode");
        store.put(&key, &stored);
        store.put(
            &keys::affinity("n1", &cidr),
            br#"{"state":"confirmed","deleted":false}"#,
        );
        let got = ipam(&store, "n1")
            .auto_assign(&request("n.c", 1, 0))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let addr = got.v4[0].addr();
        assert!(net("10.0.0.0/24").contains(&addr), "{what}: {addr}");
        assert!(
            !cidr.contains(&addr),
            "{what}: {addr} from the corrupt block"
        );
        assert_eq!(
            store.get(&key).expect("get").expect("kept").value,
            stored,
            "{what}: the corrupt block is not written"
        );
        let e = ipam(&store, "n1")
            .assign_ip(ip("10.0.0.9"), "n.d", &BTreeMap::new())
            .expect_err(what);
        assert!(
            matches!(&e, IpamError::Corrupt { key: k, .. } if *k == key),
            "{what}: {e}"
        );
        let cni = cni_protocol::CniError::from(e);
        assert_eq!(cni.code, cni_protocol::ErrorCode::DATASTORE, "{what}");
    }
}

/// Issue 12 review #3: a stored pool whose block size Calico's validation refuses (IPv4
/// outside /20../32, IPv6 outside /116../128; validator.go validateIPPool) is an unusable
/// pool: no block of it is ever claimed (before, each ADD claimed a /18 that block
/// validation then refused, one block per pod), automatic choice uses the other pools, and
/// a request naming it is a configuration error (code 7).
#[test]
fn pools_with_a_block_size_calico_refuses_are_unusable() {
    let store = store();
    add_pool(&store, "wide-v4", "10.0.0.0/16", |s| s.block_size = 18);
    add_pool(&store, "wide-v6", "fd00::/64", |s| s.block_size = 112);
    add_pool(&store, "good-v4", "10.9.0.0/24", |s| s.block_size = 26);
    add_pool(&store, "good-v6", "fd09::/120", |s| s.block_size = 122);
    for i in 0..3 {
        let got = ipam(&store, "n1")
            .auto_assign(&request(&format!("n.c{i}"), 1, 1))
            .expect("assigned from the good pools");
        assert!(net("10.9.0.0/24").contains(&got.v4[0].addr()), "{got:?}");
        assert!(net("fd09::/120").contains(&got.v6[0].addr()), "{got:?}");
    }
    let blocks = store
        .list_keys("/calico/ipam/v2/assignment/")
        .expect("list");
    assert_eq!(blocks.len(), 2, "one block per good pool only: {blocks:?}");
    for (pools, v4n, v6n) in [
        (vec!["wide-v4".to_string()], 1, 0),
        (vec!["fd00::/64".to_string()], 0, 1),
    ] {
        let mut req = request("n.named", v4n, v6n);
        if v4n > 0 {
            req.v4_pools = pools.clone();
        } else {
            req.v6_pools = pools.clone();
        }
        let e = ipam(&store, "n1").auto_assign(&req).expect_err("named");
        assert!(e.to_string().contains("blockSize"), "{e}");
        let cni = cni_protocol::CniError::from(e);
        assert_eq!(
            cni.code,
            cni_protocol::ErrorCode::INVALID_NETWORK_CONFIG,
            "{pools:?}"
        );
    }
}

/// Issue 12 review #6: an unreadable stored IPAM config is corrupt (code 102) for an
/// allocation, automatic or specific, as Calico's `GetIPAMConfig` error stops `AutoAssign`
/// and `AssignIP`; a release still goes on under the defaults (a pod must stay deletable).
#[test]
fn a_corrupt_ipam_config_refuses_allocations_but_not_releases() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 26);
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.before", 1, 0))
        .expect("assigned");
    store.put(keys::IPAM_CONFIG, br#"{"strict_affinity":"yes"}"#);
    let auto = ipam(&store, "n1")
        .auto_assign(&request("n.c", 1, 0))
        .expect_err("auto");
    let specific = ipam(&store, "n1")
        .assign_ip(ip("10.0.0.40"), "n.d", &BTreeMap::new())
        .expect_err("specific");
    for e in [auto, specific] {
        assert!(
            matches!(&e, IpamError::Corrupt { key, .. } if key == keys::IPAM_CONFIG),
            "{e}"
        );
        let cni = cni_protocol::CniError::from(e);
        assert_eq!(cni.code, cni_protocol::ErrorCode::DATASTORE);
    }
    assert!(handle(&store, "n.c").is_none() && handle(&store, "n.d").is_none());
    let freed = ipam(&store, "n1")
        .release_by_handle("n.before")
        .expect("released under the defaults")
        .expect("held");
    assert_eq!(freed, vec![got.v4[0].addr()]);
    assert!(handle(&store, "n.before").is_none());
}

/// Issue 12 review #8: releasing a handle whose block is corrupt (skipped, logged) leaves
/// the handle's count for that block, so the handle is not deleted while the block still
/// points at it; its allocations in sound blocks are released.
#[test]
fn a_release_keeps_the_handle_for_allocations_in_a_corrupt_block() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 26);
    add_pool(&store, "p6", "fd00::/120", |s| s.block_size = 122);
    let got = ipam(&store, "n1")
        .auto_assign(&request("n.c", 1, 1))
        .expect("assigned");
    let cidr = got.v4[0].trunc();
    let mut b = block(&store, &cidr.to_string()).expect("block");
    b.allocations.push(None); // one slot too many: corrupt
    store.put(
        &keys::block(&cidr),
        &serde_json::to_vec(&b).expect("encode"),
    );
    let freed = ipam(&store, "n1")
        .release_by_handle("n.c")
        .expect("a corrupt block does not stop the release")
        .expect("held");
    assert_eq!(
        freed,
        vec![got.v6[0].addr()],
        "only the sound block's address"
    );
    let h = handle(&store, "n.c").expect("the handle is kept");
    assert_eq!(h.block.get(&cidr.to_string()), Some(&1), "{h:?}");
    assert_eq!(h.block.len(), 1, "the v6 block's count is gone: {h:?}");
}

/// Issue 12 review #7: one unreadable handle does not stop IPAM GC: it is logged and
/// skipped, and the other handles' allocations are still candidates.
#[test]
fn gc_skips_a_corrupt_handle() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |s| s.block_size = 26);
    let a = ipam(&store, "n1")
        .auto_assign(&request("net.c1", 1, 0))
        .expect("assigned");
    store.put(&keys::handle("net.c0"), b"{\"block\":7");
    let got = crate::gc::candidates(&store, "net", "n1", &Default::default())
        .expect("GC goes on past the corrupt handle");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].container_id, "c1");
    assert_eq!(got[0].addresses, vec![a.v4[0].addr()]);
}

/// Issue 12 review #2: Calico's handle is the network and container ID, without the
/// interface, so a second attachment of the same container (Multus: another CNI_IFNAME)
/// must get its own address, while a repeated ADD of the same attachment gets its own back.
/// A request without `reuse_if` (Calico's behaviour) always gets another address, and a
/// held address outside the pools the request names is not handed back.
#[test]
fn only_a_repeat_of_the_same_attachment_gets_its_addresses_back() {
    let store = store();
    add_pool(&store, "p", "10.0.0.0/24", |_| {});
    add_pool(&store, "q", "10.1.0.0/24", |_| {});
    let eth0 = ipam(&store, "n1")
        .auto_assign(&attachment("net.c1", "eth0", 1, 0))
        .expect("eth0");
    let net1 = ipam(&store, "n1")
        .auto_assign(&attachment("net.c1", "net1", 1, 0))
        .expect("net1");
    assert_ne!(eth0.v4, net1.v4, "two interfaces, two addresses");
    for (ifname, first) in [("eth0", &eth0), ("net1", &net1)] {
        let again = ipam(&store, "n1")
            .auto_assign(&attachment("net.c1", ifname, 1, 0))
            .expect("again");
        assert_eq!(again.v4, first.v4, "{ifname}: the same address again");
    }
    let calico = ipam(&store, "n1")
        .auto_assign(&request("net.c1", 1, 0))
        .expect("no reuse");
    assert!(calico.v4 != eth0.v4 && calico.v4 != net1.v4, "{calico:?}");
    // eth0 again, now limited to the other pool: a new address from it.
    let in_q = eth0.v4[0].addr();
    let other_pool = if net("10.0.0.0/24").contains(&in_q) {
        "q"
    } else {
        "p"
    };
    let mut req = attachment("net.c1", "eth0", 1, 0);
    req.v4_pools = vec![other_pool.into()];
    let moved = ipam(&store, "n1").auto_assign(&req).expect("moved");
    assert_ne!(moved.v4, eth0.v4);
    let b = handle(&store, "net.c1").expect("handle");
    assert_eq!(b.block.values().sum::<i64>(), 4, "{b:?}");
}
