//! The node's snapshot on the in-memory store: a following ADD plans from it with no read,
//! a stale entry costs one conflict and never a duplicate, per-pod objects are taken as
//! absent and checked, and an old, foreign or spoiled snapshot is not used.

use super::*;
use crate::allocator::{AssignRequest, Ipam};
use calico_datastore::MemKv;
use calico_datastore::model::{IpPoolSpec, Resource, keys};
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Counts what reaches the store.
struct Counting<'a> {
    inner: &'a MemKv,
    reads: Cell<usize>,
    txns: Cell<usize>,
    conflicts: Cell<usize>,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a MemKv) -> Self {
        Counting {
            inner,
            reads: Cell::new(0),
            txns: Cell::new(0),
            conflicts: Cell::new(0),
        }
    }
}

impl KvStore for Counting<'_> {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.read(reads)
    }
    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        self.txns.set(self.txns.get() + 1);
        let out = self.inner.txn(guards, writes)?;
        if !out.applied() {
            self.conflicts.set(self.conflicts.get() + 1);
        }
        Ok(out)
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

fn cluster() -> MemKv {
    let store = MemKv::new();
    let node = Resource::new("Node", "n1", json!({}));
    store.put(
        &keys::resource("nodes", "n1"),
        &node.to_stored().expect("node"),
    );
    let pool = Resource::new("IPPool", "p", IpPoolSpec::for_cidr("10.9.0.0/24"));
    store.put(
        &keys::resource("ippools", "p"),
        &pool.to_stored().expect("pool"),
    );
    store
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "snapshot-cache-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).expect("dir");
        Dir(d)
    }
    fn lock(&self) -> PathBuf {
        self.0.join("ipam.lock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn request(handle: &str) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        num_v4: 1,
        ..AssignRequest::default()
    }
}

/// One ADD as `cni::allocate_detailed` makes it: a snapshot with the handle and the
/// node's blocks as last seen (the hint: here every block in the pool's first /26s), then
/// the allocation, through a caching store that may serve.
fn add(store: &dyn KvStore, dir: &Dir, handle: &str) -> (Vec<IpAddr>, bool) {
    let cache = CachingStore::new(store, &dir.lock(), "n1", true).for_pod(handle, PodCall::Add);
    let ipam = Ipam::new(&cache, "n1");
    let likely = likely_blocks();
    let snap = ipam
        .read_snapshot(&crate::allocator::SnapshotRequest {
            handles: &[handle],
            blocks: &likely,
            keys: &[],
        })
        .expect("snapshot");
    let got = ipam
        .auto_assign_with(&snap, &request(handle), &mut |_, _| {
            Ok(crate::allocator::Extra::default())
        })
        .expect("assigned");
    let served = cache.served_from_snapshot();
    cache.finish();
    (got.all().iter().map(|a| a.addr()).collect(), served)
}

/// The pool's four /26 blocks: whichever the node claims is among them.
fn likely_blocks() -> Vec<ipnet::IpNet> {
    [
        "10.9.0.0/26",
        "10.9.0.64/26",
        "10.9.0.128/26",
        "10.9.0.192/26",
    ]
    .iter()
    .map(|b| b.parse().expect("cidr"))
    .collect()
}

#[test]
fn a_following_add_plans_from_the_snapshot_without_a_read() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let (first, served) = add(&store, &dir, "net.a");
    assert!(!served);
    // The first ADD reads (and, claiming the node's first block, looks for a free one).
    assert!(store.reads.get() >= 1);
    let reads_after_first = store.reads.get();
    let mut all: BTreeSet<IpAddr> = first.into_iter().collect();
    for i in 0..10 {
        let (got, served) = add(&store, &dir, &format!("net.b{i}"));
        assert!(served, "ADD {i} is served from the snapshot");
        all.extend(got);
    }
    assert_eq!(store.reads.get(), reads_after_first, "no further reads");
    assert_eq!(store.conflicts.get(), 0);
    assert_eq!(all.len(), 11, "every address distinct: {all:?}");
}

/// Makes every entry of the node's snapshot, and of its blocks' own files, as young as a
/// real read now would: the next call is served from them however long the test took so far
/// (a call past MAX_AGE reads the store, which the tests could otherwise not tell from
/// what they test).
fn refresh(dir: &Dir) {
    let snapshot = path(&dir.lock());
    let now = now_ms();
    let mut file: File =
        serde_json::from_slice(&std::fs::read(&snapshot).expect("snapshot")).expect("parses");
    for e in file.entries.iter_mut().chain(file.blocks.iter_mut()) {
        e.at = now;
    }
    write_json(&snapshot, &file).expect("write");
    let Ok(files) = std::fs::read_dir(blocks_dir(&snapshot)) else {
        return;
    };
    for f in files.flatten() {
        let bytes = std::fs::read(f.path()).expect("block file");
        let split = bytes.iter().position(|b| *b == b'\n').expect("header line");
        let mut header: BlockHeader = serde_json::from_slice(&bytes[..split]).expect("header");
        header.at = now;
        let mut out = serde_json::to_vec(&header).expect("header");
        out.extend_from_slice(&bytes[split..]);
        std::fs::write(f.path(), out).expect("write");
    }
}

/// The key of the pool's /26 block holding `addr`.
fn block_of(addr: IpAddr) -> String {
    let net = ipnet::IpNet::new(addr, 26).expect("prefix").trunc();
    keys::block(&net)
}

/// The block files of the node's snapshot, by file name.
fn block_files(dir: &Dir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(blocks_dir(&path(&dir.lock())))
        .map(|d| {
            d.flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Blocks other than the last call's are in files of their own, read only when asked for:
/// the snapshot's file holds one block however many blocks (and pods) the node has, and an
/// ADD served from it reads and writes only the block it allocates from.
#[test]
fn blocks_are_kept_in_files_of_their_own() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let mut all = BTreeSet::new();
    // Three of the pool's four blocks filled or started: 64 + 64 + 2 addresses.
    let mut firsts = Vec::new();
    for i in 0..130 {
        let (got, _) = add(&store, &dir, &format!("net.p{i}"));
        firsts.extend(got.first().copied());
        all.extend(got);
    }
    assert_eq!(all.len(), 130, "every address distinct");
    let files = block_files(&dir);
    assert!(
        files.len() >= 2
            && files
                .iter()
                .all(|f| f.starts_with("%2fcalico%2fipam%2fv2%2fassignment%2f")),
        "{files:?}"
    );
    let snapshot = std::fs::read_to_string(path(&dir.lock())).expect("snapshot file");
    assert_eq!(
        snapshot.matches("\\\"allocations\\\"").count(),
        1,
        "one block's value in the snapshot's file: {snapshot}"
    );
    assert!(snapshot.len() < 4096, "{} bytes", snapshot.len());
    // A block's file (the first filled) holds the value as the store does, at its revision.
    let key = block_of(firsts[0]);
    let stored = kv.get(&key).expect("read").expect("block");
    let bytes = std::fs::read(blocks_dir(&path(&dir.lock())).join(file_name_for(&key)))
        .expect("block file");
    let entry = block_entry_from(&bytes, &key, "n1", "counting").expect("parses");
    assert_eq!(entry.kvs.len(), 1);
    assert_eq!(entry.kvs[0].v.as_bytes(), stored.value.as_slice());
    assert_eq!(entry.kvs[0].r, stored.mod_revision);
    // Another node's or datastore's file, a cut header or a short value is not used.
    assert!(block_entry_from(&bytes, &key, "n2", "counting").is_none());
    assert!(block_entry_from(&bytes, &key, "n1", "etcd at elsewhere").is_none());
    assert!(block_entry_from(&bytes[..20], &key, "n1", "counting").is_none());
    assert!(block_entry_from(&bytes[..bytes.len() - 1], &key, "n1", "counting").is_none());
    // A write cut short between two pages: the new header, then new bytes and old ones.
    let mut torn = bytes.clone();
    let last = torn.len() - 2;
    torn[last] = if torn[last] == b'1' { b'2' } else { b'1' };
    assert!(block_entry_from(&torn, &key, "n1", "counting").is_none());
    // Served from the files: no read, no conflict.
    refresh(&dir);
    let reads = store.reads.get();
    let (_, served) = add(&store, &dir, "net.last");
    assert!(served);
    assert_eq!(store.reads.get(), reads);
}

/// The blocks the last call changed are in the snapshot's file (the usual ADD reads and
/// writes that one file); a block leaving it is written to its own file first, as the store
/// has it, and is served from there.
#[test]
fn the_last_calls_block_is_kept_in_the_snapshots_file() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let own = |key: &str| blocks_dir(&path(&dir.lock())).join(file_name_for(key));
    let kept = |key: &str| -> Option<Entry> {
        let bytes = std::fs::read(path(&dir.lock())).expect("snapshot file");
        let file: File = serde_json::from_slice(&bytes).expect("parses");
        file.blocks.into_iter().find(|e| e.path == key)
    };
    // As the store has it, at its revision.
    let current = |entry: &Entry, key: &str| {
        let stored = kv.get(key).expect("read").expect("block");
        entry.kvs.len() == 1
            && entry.kvs[0].v.as_bytes() == stored.value.as_slice()
            && entry.kvs[0].r == stored.mod_revision
    };
    let own_entry = |key: &str| {
        let bytes = std::fs::read(own(key)).expect("block's own file");
        block_entry_from(&bytes, key, "n1", "counting").expect("parses")
    };
    let (p0, _) = add(&store, &dir, "net.p0");
    let first = block_of(p0[0]);
    for i in 1..3 {
        add(&store, &dir, &format!("net.p{i}"));
    }
    assert!(
        !own(&first).exists(),
        "no file of its own: {:?}",
        block_files(&dir)
    );
    assert!(current(
        &kept(&first).expect("in the snapshot's file"),
        &first
    ));
    // The first block filled: the second is allocated from, the first has left.
    for i in 3..64 {
        add(&store, &dir, &format!("net.p{i}"));
    }
    // Served (a call that reads the store keeps every block it read in the snapshot's file).
    refresh(&dir);
    let (p64, served) = add(&store, &dir, "net.p64");
    assert!(served);
    let second = block_of(p64[0]);
    assert_ne!(first, second);
    assert!(kept(&first).is_none());
    assert!(current(&own_entry(&first), &first));
    assert!(current(
        &kept(&second).expect("in the snapshot's file"),
        &second
    ));
    // A DEL in the first block takes it back; the second leaves, as the store has it.
    refresh(&dir);
    let (released, served) = del(&store, &dir, "net.p0");
    assert!(served);
    assert_eq!(released.len(), 1);
    assert!(current(
        &kept(&first).expect("back in the snapshot's file"),
        &first
    ));
    assert!(kept(&second).is_none());
    assert!(current(&own_entry(&second), &second));
    // The next ADD takes the address freed; the one after it is planned from the second
    // block's file, which was current: no conflict.
    refresh(&dir);
    assert!(add(&store, &dir, "net.after1").1);
    refresh(&dir);
    assert!(add(&store, &dir, "net.after2").1);
    assert!(current(&kept(&second).expect("back again"), &second));
    assert_eq!(store.conflicts.get(), 0, "never behind the store");
}

/// A block older than MAX_AGE, in its own file or the snapshot's, is not served: the ADD
/// reads the store.
#[test]
fn an_old_block_is_not_used() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let (a, _) = add(&store, &dir, "net.a");
    let key = block_of(a[0]);
    let snapshot = path(&dir.lock());
    let read = || -> File {
        serde_json::from_slice(&std::fs::read(&snapshot).expect("snapshot")).expect("parses")
    };
    let too_old = u64::try_from(MAX_AGE.as_millis()).expect("ms") + 1;
    // Moved to its own file, too old there.
    let mut file = read();
    let at = file
        .blocks
        .iter()
        .position(|e| e.path == key)
        .expect("kept");
    let mut entry = file.blocks.remove(at);
    write_json(&snapshot, &file).expect("write");
    entry.at -= too_old;
    std::fs::create_dir_all(blocks_dir(&snapshot)).expect("dir");
    let own = blocks_dir(&snapshot).join(file_name_for(&key));
    std::fs::write(&own, block_file_bytes(&entry, "n1", "counting")).expect("write");
    assert!(!add(&store, &dir, "net.b").1, "too old in its own file");
    // Too old in the snapshot's file.
    let mut file = read();
    for e in file.blocks.iter_mut().filter(|e| e.path == key) {
        e.at -= too_old;
    }
    write_json(&snapshot, &file).expect("write");
    assert!(
        !add(&store, &dir, "net.c").1,
        "too old in the snapshot's file"
    );
    assert!(add(&store, &dir, "net.d").1, "rewritten by the last read");
}

#[test]
fn a_stale_block_costs_one_conflict_and_never_a_duplicate() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let (a, _) = add(&store, &dir, "net.a");
    // Another writer (a second plugin binary without this file, say) takes the next address
    // behind the snapshot's back.
    let (b, _) = {
        let ipam = Ipam::new(&kv, "n1");
        let got = ipam.auto_assign(&request("net.other")).expect("assigned");
        (got.all().iter().map(|a| a.addr()).collect::<Vec<_>>(), ())
    };
    let (c, served) = add(&store, &dir, "net.c");
    assert!(served);
    assert_eq!(store.conflicts.get(), 1, "the stale block conflicts once");
    let all: BTreeSet<IpAddr> = a.iter().chain(&b).chain(&c).copied().collect();
    assert_eq!(all.len(), 3, "no duplicate: {a:?} {b:?} {c:?}");
    // The conflict's re-read refreshed the snapshot: the next ADD goes straight through.
    let conflicts = store.conflicts.get();
    let (_, served) = add(&store, &dir, "net.d");
    assert!(served);
    assert_eq!(store.conflicts.get(), conflicts);
}

#[test]
fn a_repeated_add_is_planned_from_what_exists() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let (first, _) = add(&store, &dir, "net.a");
    let mut repeat = request("net.a");
    repeat.attrs.insert("ifname".into(), "eth0".into());
    // The handle is never kept: served as absent, the guard finds it, the re-read sees it.
    let cache = CachingStore::new(&store, &dir.lock(), "n1", true);
    let ipam = Ipam::new(&cache, "n1");
    let likely = likely_blocks();
    let snap = ipam
        .read_snapshot(&crate::allocator::SnapshotRequest {
            handles: &["net.a"],
            blocks: &likely,
            keys: &[],
        })
        .expect("snapshot");
    assert!(cache.served_from_snapshot());
    assert_eq!(snap.handles.get("net.a"), Some(&None));
    let got = ipam
        .auto_assign_with(&snap, &request("net.a"), &mut |_, _| {
            Ok(crate::allocator::Extra::default())
        })
        .expect("assigned");
    cache.finish();
    assert_eq!(store.conflicts.get(), 1);
    let handle = kv
        .get(&keys::handle("net.a"))
        .expect("read")
        .expect("handle");
    let text = String::from_utf8(handle.value).expect("utf8");
    assert!(
        text.contains("/26\":2"),
        "both addresses counted under the handle: {text}"
    );
    assert_ne!(got.all()[0].addr(), first[0]);
    let text = std::fs::read_to_string(path(&dir.lock())).expect("snapshot file");
    assert!(!text.contains("/calico/ipam/v2/handle/"), "{text}");
}

#[test]
fn an_old_or_foreign_snapshot_is_not_used() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    add(&store, &dir, "net.a");
    let file = path(&dir.lock());
    let mut stored: File =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("parse");
    let fresh = stored.clone();
    for e in &mut stored.entries {
        e.at -= u64::try_from(MAX_AGE.as_millis()).expect("ms") + 1;
    }
    std::fs::write(&file, serde_json::to_vec(&stored).expect("encode")).expect("write");
    assert!(!add(&store, &dir, "net.b").1, "too old");
    let mut other = fresh.clone();
    other.node = "n2".into();
    std::fs::write(&file, serde_json::to_vec(&other).expect("encode")).expect("write");
    assert!(!add(&store, &dir, "net.c").1, "another node's");
    let mut elsewhere = fresh.clone();
    elsewhere.store = "etcd at https://elsewhere:2379".into();
    std::fs::write(&file, serde_json::to_vec(&elsewhere).expect("encode")).expect("write");
    assert!(!add(&store, &dir, "net.c2").1, "another datastore's");
    let mut future = fresh.clone();
    for e in &mut future.entries {
        e.at = now_ms() + 60_000;
    }
    std::fs::write(&file, serde_json::to_vec(&future).expect("encode")).expect("write");
    assert!(
        !add(&store, &dir, "net.c3").1,
        "from the future (the clock went back)"
    );
    std::fs::write(&file, b"{not json").expect("write");
    assert!(!add(&store, &dir, "net.d").1, "unreadable");
    assert!(add(&store, &dir, "net.e").1, "rewritten by the last read");
}

#[test]
fn an_unknown_outcome_or_an_abandoned_call_removes_the_snapshot() {
    let dir = Dir::new();
    let kv = cluster();
    add(&kv, &dir, "net.a");
    assert!(path(&dir.lock()).exists());
    kv.fail_next_txns(1);
    let cache = CachingStore::new(&kv, &dir.lock(), "n1", true);
    let ipam = Ipam::new(&cache, "n1");
    let snap = ipam.snapshot(&["net.b"]).expect("snapshot");
    let failed = ipam.auto_assign_with(&snap, &request("net.b"), &mut |_, _| {
        Ok(crate::allocator::Extra::default())
    });
    assert!(failed.is_err());
    drop(cache);
    assert!(
        !path(&dir.lock()).exists(),
        "removed after an unknown outcome"
    );
    assert_eq!(block_files(&dir), Vec::<String>::new(), "blocks' files too");

    add(&kv, &dir, "net.c");
    let cache = CachingStore::new(&kv, &dir.lock(), "n1", true);
    let ipam = Ipam::new(&cache, "n1");
    ipam.snapshot(&["net.d"]).expect("snapshot");
    drop(cache);
    assert!(path(&dir.lock()).exists(), "a call that only read keeps it");
    let cache = CachingStore::new(&kv, &dir.lock(), "n1", false);
    Ipam::new(&cache, "n1")
        .snapshot(&["net.d"])
        .expect("snapshot");
    drop(cache);
    assert!(
        !path(&dir.lock()).exists(),
        "a call that read the store and did not finish removes it"
    );
}

#[test]
fn writes_fold_into_the_entries_that_cover_them() {
    let mut prefix = Entry {
        kind: ReadKind::Prefix,
        path: "/a/".into(),
        at: 0,
        kvs: vec![StoredKv {
            k: "/a/2".into(),
            v: "x".into(),
            r: 1,
        }],
    };
    prefix.apply(&Write::Put("/a/1".into(), b"one".to_vec()), 5);
    prefix.apply(&Write::Put("/a/2".into(), b"two".to_vec()), 5);
    prefix.apply(&Write::Put("/b/1".into(), b"no".to_vec()), 5);
    assert_eq!(
        prefix
            .kvs
            .iter()
            .map(|kv| (kv.k.as_str(), kv.v.as_str(), kv.r))
            .collect::<Vec<_>>(),
        vec![("/a/1", "one", 5), ("/a/2", "two", 5)]
    );
    prefix.apply(&Write::Delete("/a/1".into()), 6);
    assert_eq!(prefix.kvs.len(), 1);
    let mut key = Entry {
        kind: ReadKind::Key,
        path: "/k".into(),
        at: 0,
        kvs: vec![],
    };
    key.apply(&Write::Put("/k/x".into(), b"no".to_vec()), 7);
    assert!(key.kvs.is_empty());
    key.apply(&Write::Put("/k".into(), b"v".to_vec()), 7);
    assert_eq!(key.kvs[0].r, 7);
    // Listings that would hold per-pod objects are never kept.
    assert!(Entry::of(&Read::Prefix("/calico/ipam/v2/".into())).is_none());
    assert!(Entry::of(&Read::Key("/calico/ipam/v2/handle/net.a".into())).is_none());
    assert!(
        Entry::of(&Read::Prefix(
            "/calico/resources/v3/projectcalico.org/ippools/".into()
        ))
        .is_some()
    );
}

/// One DEL as `cni::release` makes it: the pod's handle and Calico's legacy handle, the
/// node's blocks, then the release.
fn del(store: &dyn KvStore, dir: &Dir, handle: &str) -> (Vec<IpAddr>, bool) {
    let cache = CachingStore::new(store, &dir.lock(), "n1", true).for_pod(handle, PodCall::Del);
    let ipam = Ipam::new(&cache, "n1");
    let likely = likely_blocks();
    let snap = ipam
        .read_snapshot(&crate::allocator::SnapshotRequest {
            handles: &[handle, "default.legacy"],
            blocks: &likely,
            keys: &[],
        })
        .expect("snapshot");
    let released = ipam
        .release_handles_with(&snap, None, &mut |_, _| {
            Ok(crate::allocator::Extra::default())
        })
        .expect("released");
    let served = cache.served_from_snapshot();
    cache.finish();
    (released, served)
}

#[test]
fn a_del_after_its_add_is_served_from_the_pods_record_and_removes_it() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    let (a, _) = add(&store, &dir, "net.a");
    let (b, _) = add(&store, &dir, "net.b");
    let record = dir.0.join(POD_DIR).join("net.a");
    assert!(record.exists());
    let reads = store.reads.get();
    let (released, served) = del(&store, &dir, "net.a");
    assert!(served, "planned from the snapshot and the record");
    assert_eq!(store.reads.get(), reads, "no read");
    assert_eq!(released, a);
    assert!(!record.exists(), "the record goes with the DEL");
    assert!(kv.get(&keys::handle("net.a")).expect("read").is_none());
    // The block the snapshot holds was updated by the DEL: the next one goes straight on.
    let (released, served) = del(&store, &dir, "net.b");
    assert!(served);
    assert_eq!(released, b);
    assert_eq!(store.conflicts.get(), 0);
    // Idempotent: no record, so a real read, and nothing to release.
    let (released, served) = del(&store, &dir, "net.b");
    assert!(!served);
    assert!(released.is_empty());
}

#[test]
fn a_record_overtaken_by_another_writer_costs_one_conflict() {
    let dir = Dir::new();
    let kv = cluster();
    let store = Counting::new(&kv);
    add(&store, &dir, "net.a");
    // A repeated ADD by another binary (no snapshot) adds a second address to the handle.
    let mut again = request("net.a");
    again.attrs.insert("x".into(), "y".into());
    Ipam::new(&kv, "n1").auto_assign(&again).expect("assigned");
    let (released, served) = del(&store, &dir, "net.a");
    assert!(served);
    assert_eq!(store.conflicts.get(), 1);
    assert_eq!(released.len(), 2, "both addresses released: {released:?}");
    assert!(kv.get(&keys::handle("net.a")).expect("read").is_none());
}

#[test]
fn a_file_overwritten_in_place_reads_back_exactly_what_was_written_last() {
    let dir = Dir::new();
    let path = path(&dir.lock());
    let long = json!({"entries": ["a".repeat(300)]});
    let short = json!({"entries": ["b".repeat(200)]});
    let tiny = json!({"entries": []});
    for value in [&long, &short, &tiny, &long] {
        overwrite_in_place(&path, serde_json::to_vec(value).expect("encode")).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let back: serde_json::Value = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(&back, value);
    }
    // A shorter content is padded (no truncation) unless the old one was over twice as long.
    let before = std::fs::metadata(&path).expect("stat").len();
    overwrite_in_place(&path, serde_json::to_vec(&short).expect("encode")).expect("write");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), before);
    overwrite_in_place(&path, serde_json::to_vec(&tiny).expect("encode")).expect("write");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        serde_json::to_vec(&tiny).expect("encode").len() as u64
    );
}

#[test]
fn lock_files_sharing_a_directory_share_no_file() {
    let dir = Path::new("/var/run/calico");
    let default = dir.join("ipam.lock");
    assert_eq!(path(&default), dir.join("ipam-snapshot.json"));
    assert_eq!(pod_path(&path(&default), "h"), dir.join("ipam-pods/h"));
    assert_eq!(
        beside_lock(&default, "ipam-affine-blocks"),
        dir.join("ipam-affine-blocks")
    );
    let a = dir.join("node-1.lock");
    let b = dir.join("node-2.lock");
    assert_eq!(path(&a), dir.join("node-1.lock.ipam-snapshot.json"));
    assert_eq!(
        pod_path(&path(&a), "h"),
        dir.join("node-1.lock.ipam-pods/h")
    );
    for name in ["ipam-snapshot.json", "ipam-affine-blocks"] {
        let of = |l: &Path| beside_lock(l, name);
        assert_ne!(of(&a), of(&b));
        assert_ne!(of(&a), of(&default));
    }
    assert_ne!(pod_path(&path(&a), "h"), pod_path(&path(&b), "h"));
    assert_eq!(blocks_dir(&path(&default)), dir.join("ipam-blocks"));
    assert_ne!(blocks_dir(&path(&a)), blocks_dir(&path(&b)));
}
