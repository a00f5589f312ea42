//! Taking a node out of IPAM, on the in-memory store: affinities released, empty blocks
//! deleted, used blocks kept without affinity, addresses released with the caller's writes,
//! conflicts re-planned, and every crash point resumable.

use super::*;
use crate::allocator::{Extra, Ipam};
use crate::block;
use calico_datastore::model::{AllocationBlock, BlockAffinity, IpPoolSpec, IpamHandle, Resource};
use calico_datastore::{FailNthTxn, MemKv};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_777_629_600)
}

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ipam<'s>(store: &'s dyn KvStore, node: &str) -> Ipam<'s> {
    Ipam::new(store, node).with_clock(t0)
}

fn attrs(node: &str) -> BTreeMap<String, String> {
    [("node".to_string(), node.to_string())]
        .into_iter()
        .collect()
}

fn block_of(store: &MemKv, cidr: &str) -> Option<AllocationBlock> {
    store
        .get(&keys::block(&net(cidr)))
        .expect("read")
        .map(|kv| serde_json::from_slice(&kv.value).expect("block"))
}

fn handle_of(store: &MemKv, id: &str) -> Option<IpamHandle> {
    store
        .get(&keys::handle(id))
        .expect("read")
        .map(|kv| serde_json::from_slice(&kv.value).expect("handle"))
}

fn put_json<T: serde::Serialize>(store: &MemKv, key: &str, v: &T) {
    store.put(key, &serde_json::to_vec(v).expect("json"));
}

/// Four /30 blocks in `10.0.0.0/28`:
/// - A `10.0.0.0/30`: n1's, full (`net.a0` .. `net.a3`);
/// - B `10.0.0.4/30`: n1's, holding only n1's IPIP tunnel address;
/// - C `10.0.0.8/30`: n2's (`net.b0`), plus `net.a9` borrowed by n1;
/// - D `10.0.0.12/30`: n1's, empty.
///
/// n1 also has a stale affinity to C and one to `10.0.1.0/30`, a block that does not exist.
fn cluster(store: &MemKv) {
    let pool = Resource::new("IPPool", "tiny", {
        let mut s = IpPoolSpec::for_cidr("10.0.0.0/28");
        s.block_size = 30;
        s
    });
    store.put(
        &keys::resource("ippools", "tiny"),
        &pool.to_stored().expect("pool"),
    );
    // Specific addresses, so the blocks are known: assigning one in a missing block claims
    // that block for the assigning node.
    let take = |node: &str, addr: &str, handle: &str| {
        ipam(store, node)
            .assign_ip(ip(addr), handle, &attrs(node))
            .expect("assigned");
    };
    for i in 0..4 {
        take("n1", &format!("10.0.0.{i}"), &format!("net.a{i}"));
    }
    take("n1", "10.0.0.4", "ipip-tunnel-addr-n1");
    take("n2", "10.0.0.8", "net.b0");
    take("n1", "10.0.0.9", "net.a9");
    let d = net("10.0.0.12/30");
    put_json(store, &keys::block(&d), &block::new_block(d, "n1", t0()));
    let confirmed = BlockAffinity::confirmed();
    for cidr in [d, net("10.0.0.8/30"), net("10.0.1.0/30")] {
        put_json(store, &keys::affinity("n1", &cidr), &confirmed);
    }
}

fn keys_under(store: &MemKv, prefix: &str) -> Vec<String> {
    store
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(prefix))
        .collect()
}

/// Mirrors ipam.go RemoveIPAMHost over ReleaseHostAffinities and
/// ipam_block_reader_writer.go releaseBlockAffinity (mustBeEmpty false).
#[test]
fn remove_host_releases_affinities_deletes_empty_blocks_and_keeps_used_ones() {
    let store = MemKv::new();
    cluster(&store);
    let done = remove_host(&store, "n1").expect("removed");
    assert_eq!(
        done,
        HostRemoved {
            affinities: 5,
            blocks_deleted: 1,
            blocks_kept: 2,
        }
    );
    assert_eq!(
        keys_under(&store, "/calico/ipam/v2/host/n1/"),
        Vec::<String>::new()
    );
    for used in ["10.0.0.0/30", "10.0.0.4/30"] {
        let b = block_of(&store, used).expect("kept");
        assert_eq!(b.affinity, None, "{used}");
        assert_eq!(b.affinity_claim_time, None, "{used}");
        assert!(!block::is_empty(&b), "its addresses stay allocated");
    }
    assert_eq!(
        block_of(&store, "10.0.0.12/30"),
        None,
        "empty block deleted"
    );
    let c = block_of(&store, "10.0.0.8/30").expect("n2's block");
    assert_eq!(
        c.affinity.as_deref(),
        Some("host:n2"),
        "not n1's to release"
    );
    assert_eq!(
        keys_under(&store, "/calico/ipam/v2/host/n2/"),
        [keys::affinity("n2", &net("10.0.0.8/30"))]
    );
    // Handles are untouched: RemoveIPAMHost releases no address.
    assert!(handle_of(&store, "net.a0").is_some());
    assert_eq!(
        remove_host(&store, "n1").expect("again"),
        HostRemoved::default()
    );
}

/// Mirrors ipam.go ReleaseIPs and releaseIPsFromBlock (then decrementHandle), as
/// clientv3/node.go Delete calls them for a node's addresses.
#[test]
fn release_frees_the_nodes_addresses_with_the_callers_writes() {
    let store = MemKv::new();
    cluster(&store);
    let wep_key = "/calico/resources/v3/projectcalico.org/workloadendpoints/ns/w";
    store.put(wep_key, b"{}");
    let wep = store.get(wep_key).expect("read").expect("wep");
    let ips = [
        ip("10.0.0.0"),
        ip("10.0.0.1"),
        ip("10.0.0.4"),
        // Borrowed by n1 from n2's block.
        ip("10.0.0.9"),
        // n2's pod: a stale record of n1 must not free it.
        ip("10.0.0.8"),
        // Free, and in no block.
        ip("10.0.0.10"),
        ip("192.0.2.1"),
    ];
    let mut calls = 0;
    let released = release_ips_with(&store, "n1", &mut || {
        calls += 1;
        Ok(Some(ReleaseStep {
            ips: ips.to_vec(),
            extra: Extra {
                guards: vec![Guard::Revision(wep_key.into(), wep.mod_revision)],
                writes: vec![Write::Delete(wep_key.into())],
            },
        }))
    })
    .expect("released");
    assert_eq!(calls, 1);
    assert_eq!(
        released,
        [
            ip("10.0.0.0"),
            ip("10.0.0.1"),
            ip("10.0.0.4"),
            ip("10.0.0.9")
        ]
    );
    assert_eq!(store.get(wep_key).expect("read"), None, "in the same txn");
    for gone in ["net.a0", "net.a1", "ipip-tunnel-addr-n1", "net.a9"] {
        assert_eq!(handle_of(&store, gone), None, "{gone}");
    }
    assert!(handle_of(&store, "net.b0").is_some());
    let a = block_of(&store, "10.0.0.0/30").expect("A");
    assert_eq!(a.allocations, [None, None, Some(0), Some(1)]);
    assert_eq!(a.affinity.as_deref(), Some("host:n1"));
    assert_eq!(&a.unallocated[..], [0, 1]);
    let b = block_of(&store, "10.0.0.4/30").expect("B stays: still affine");
    assert!(block::is_empty(&b));
    let c = block_of(&store, "10.0.0.8/30").expect("C");
    assert_eq!(c.allocations[0], Some(0), "n2's address kept");
    assert_eq!(c.allocations[1], None);

    // Once the host's affinities are gone, releasing the rest deletes the emptied block.
    remove_host(&store, "n1").expect("removed");
    assert_eq!(
        block_of(&store, "10.0.0.4/30"),
        None,
        "empty B went with its affinity"
    );
    let released = release_ips_with(&store, "n1", &mut || {
        Ok(Some(ReleaseStep {
            ips: vec![ip("10.0.0.2"), ip("10.0.0.3")],
            extra: Extra::default(),
        }))
    })
    .expect("released");
    assert_eq!(released.len(), 2);
    assert_eq!(
        block_of(&store, "10.0.0.0/30"),
        None,
        "empty, no affinity: deleted"
    );
    assert_eq!(handle_of(&store, "net.a2"), None);
    // Nothing to do is not an error.
    assert_eq!(
        release_ips_with(&store, "n1", &mut || Ok(None)).expect("nothing"),
        Vec::<IpAddr>::new()
    );
}

/// Mirrors 3.33's ipam.go ReleaseIPs and ipam_block.go release with ipCooldownSeconds set,
/// as clientv3/node.go Delete calls them: the node's addresses go into their cooldown (still
/// taken, their handles decremented at once), so a block holding them is not empty.
#[test]
fn release_honours_the_ip_cooldown() {
    let store = MemKv::new();
    cluster(&store);
    store.put(
        keys::IPAM_CONFIG,
        br#"{"strict_affinity":false,"auto_allocate_blocks":true,"ipCooldownSeconds":60}"#,
    );
    let released = release_ips_with(&store, "n1", &mut || {
        Ok(Some(ReleaseStep {
            ips: vec![ip("10.0.0.0"), ip("10.0.0.4")],
            extra: Extra::default(),
        }))
    })
    .expect("released");
    assert_eq!(released, [ip("10.0.0.0"), ip("10.0.0.4")]);
    for gone in ["net.a0", "ipip-tunnel-addr-n1"] {
        assert_eq!(handle_of(&store, gone), None, "{gone}");
    }
    for (cidr, ord) in [("10.0.0.0/30", 0), ("10.0.0.4/30", 0)] {
        let b = block_of(&store, cidr).expect("block");
        assert!(!b.unallocated.contains(&ord), "{cidr}: still taken");
        let idx = b.allocations[ord].expect("in its cooldown");
        let attr = &b.attributes.as_ref().expect("attributes")[idx];
        assert!(
            attr.released_at().is_some() && attr.handle().is_none(),
            "{cidr}"
        );
    }
    // Cooling, B is not empty: removing the host keeps it, without affinity.
    remove_host(&store, "n1").expect("removed");
    let b = block_of(&store, "10.0.0.4/30").expect("B kept while cooling");
    assert_eq!(b.affinity, None);
    // Releasing it again frees nothing.
    let again = release_ips_with(&store, "n1", &mut || {
        Ok(Some(ReleaseStep {
            ips: vec![ip("10.0.0.4")],
            extra: Extra::default(),
        }))
    })
    .expect("nothing");
    assert!(again.is_empty());
}

/// A block without affinity that a release leaves holding only Windows-reserved addresses
/// is deleted, its Windows handle decremented (ipam.go releaseIPsFromBlock, ipam_block.go
/// empty()).
#[test]
fn release_leaving_only_windows_reserved_addresses_deletes_the_block() {
    let store = MemKv::new();
    cluster(&store);
    remove_host(&store, "n1").expect("removed");
    let cidr = net("10.0.0.4/30");
    let mut b = block_of(&store, "10.0.0.4/30").expect("B, in use, without affinity");
    let owner = block::Owner {
        handle: WINDOWS_RESERVED_HANDLE.into(),
        attrs: BTreeMap::new(),
    };
    block::assign_next(&mut b, 3, &owner, &|_| false);
    put_json(&store, &keys::block(&cidr), &b);
    store.put(
        &keys::handle(WINDOWS_RESERVED_HANDLE),
        br#"{"block":{"10.0.0.4/30":3,"10.0.9.0/30":3},"deleted":false}"#,
    );
    let released = release_ips_with(&store, "n1", &mut || {
        Ok(Some(ReleaseStep {
            ips: vec![ip("10.0.0.4")],
            extra: Extra::default(),
        }))
    })
    .expect("released");
    assert_eq!(released, [ip("10.0.0.4")]);
    assert_eq!(block_of(&store, "10.0.0.4/30"), None);
    let windows = handle_of(&store, WINDOWS_RESERVED_HANDLE).expect("handle");
    assert_eq!(
        windows.block,
        [("10.0.9.0/30".to_string(), 3)].into_iter().collect()
    );
}

/// A conflict on the caller's key (the endpoint changed) re-runs the step and the plan:
/// the handle is decremented once, not twice.
#[test]
fn a_conflict_replans_from_fresh_reads() {
    let store = MemKv::new();
    cluster(&store);
    let key = "/caller/record";
    store.put(key, b"1");
    let mut calls = 0;
    let released = release_ips_with(&store, "n1", &mut || {
        calls += 1;
        let kv = store.get(key)?.expect("record");
        if calls == 1 {
            // Someone rewrites the record after we read it.
            store.put(key, b"2");
        }
        Ok(Some(ReleaseStep {
            ips: vec![ip("10.0.0.0")],
            extra: Extra {
                guards: vec![Guard::Revision(key.into(), kv.mod_revision)],
                writes: vec![Write::Delete(key.into())],
            },
        }))
    })
    .expect("released");
    assert_eq!(calls, 2);
    assert_eq!(released, [ip("10.0.0.0")]);
    assert_eq!(handle_of(&store, "net.a0"), None);
    let a = block_of(&store, "10.0.0.0/30").expect("A");
    assert_eq!(a.allocations, [None, Some(0), Some(1), Some(2)]);
}

/// A crash before any of remove_host's transactions leaves what a second run finishes, with
/// the same end state as an uninterrupted run.
#[test]
fn remove_host_resumes_after_a_crash_at_any_transaction() {
    let reference = MemKv::new();
    cluster(&reference);
    let counting = FailNthTxn::new(&reference, 0);
    remove_host(&counting, "n1").expect("removed");
    let total = counting.txns();
    assert_eq!(total, 5, "one transaction per affinity");
    for n in 1..=total {
        let store = MemKv::new();
        cluster(&store);
        let crashing = FailNthTxn::new(&store, n);
        let e = remove_host(&crashing, "n1").expect_err("injected failure");
        assert!(e.is_transient(), "{e}");
        remove_host(&store, "n1").expect("resumed");
        assert_eq!(store.dump(), reference.dump(), "crash at transaction {n}");
    }
}

/// Calico's `empty()` ignores Windows-reserved addresses: such a block is deleted, and its
/// handle with it.
#[test]
fn a_block_with_only_windows_reserved_addresses_counts_as_empty() {
    let store = MemKv::new();
    let cidr = net("10.0.2.0/30");
    let mut b = block::new_block(cidr, "n1", t0());
    let owner = block::Owner {
        handle: WINDOWS_RESERVED_HANDLE.into(),
        attrs: BTreeMap::new(),
    };
    block::assign_next(&mut b, 2, &owner, &|_| false);
    assert!(block::is_empty(&b) && block::in_use(&b) == 2);
    put_json(&store, &keys::block(&cidr), &b);
    put_json(
        &store,
        &keys::affinity("n1", &cidr),
        &BlockAffinity::confirmed(),
    );
    store.put(
        &keys::handle(WINDOWS_RESERVED_HANDLE),
        br#"{"block":{"10.0.2.0/30":2},"deleted":false}"#,
    );
    assert_eq!(
        release_block_affinity(&store, "n1", &cidr).expect("released"),
        AffinityReleased::BlockDeleted
    );
    assert_eq!(store.dump(), Vec::<(String, String)>::new());
}

#[test]
fn node_names_that_are_not_key_segments_are_refused() {
    let store = MemKv::new();
    for bad in ["", "a/b"] {
        assert!(remove_host(&store, bad).is_err(), "{bad:?}");
        assert!(release_ips_with(&store, bad, &mut || Ok(None)).is_err());
    }
}
