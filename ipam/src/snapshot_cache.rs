//! The node's last IPAM snapshot, kept next to the host lock (read and written only under
//! it), so that an ADD or DEL following another within [`MAX_AGE`] plans from it and goes
//! straight to its transaction: one datastore round trip instead of two.
//!
//! Why this is safe: every key an allocation or release writes (block, affinity, handle,
//! endpoint) is guarded in its transaction by the revision the snapshot gave it, or by its
//! absence. A stale entry therefore makes the transaction fail, and the allocator's conflict
//! path reads everything again from the store ([`crate::allocator`]): no address is ever
//! handed out twice or lost. Per-pod objects (IPAM handles, workload endpoints) are not in
//! the snapshot: an ADD served from it takes them as absent, which its guards check (a
//! repeated ADD conflicts once and is then planned from a real read); an ADD leaves what it
//! wrote of them in a record of its own (`ipam-pods/<handle>`), from which that pod's DEL is
//! served and which the DEL removes. What is read but not written (pools, reservations, IPAM
//! settings, the Node, cluster information) is at most [`MAX_AGE`] old; a plugin that reads
//! the store itself can be descheduled as long between its read and its commit. A call that
//! fails after planning from the snapshot, having written nothing, is made again from the
//! store by its caller ([`CachingStore::may_retry_from_the_store`]). Every transaction
//! applied through [`CachingStore`] is folded into the snapshot (at the revision etcd gave
//! it), so the next call sees this node's own writes; an unknown outcome or an abandoned
//! call removes the file. The file names the node and the datastore it came from (two
//! networks of a node may share the lock file and not the datastore); an entry is served
//! only if it is at most [`MAX_AGE`] old by the wall clock (a clock gone back makes it stale).
//!
//! The IPAM blocks, the only large values (a /26 with its pods' attributes is ~14 KB), are
//! not all kept in the snapshot's file: with every block in it, an ADD on a node of 500 pods
//! parsed and wrote ~130 KB of escaped JSON (1.4 ms). The blocks the last call changed (the
//! one the node allocates from, as a rule) stay in it, so the usual ADD or DEL reads and
//! writes one file; any other is in a file of its own (`ipam-blocks/<key>`: a header line,
//! then the value as etcd holds it, checked against the header's SHA-256), read only when a
//! call asks for that block. A block leaving the snapshot's file is written to its own
//! first; until then its own file (if any) is older and is not read. A call costs what it
//! touches, not what the node holds (a second file per call, as session 29 had it, cost
//! ~0.2 ms on a node of 50 pods).
//!
//! Written by hand: the entries are the store's own read results, and no crate caches a
//! key-value snapshot with these rules.

use calico_datastore::{Guard, Kv, KvStore, Read, StoreError, TxnOutcome, Write};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How old (since its last real read) a snapshot may be and still serve an ADD.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Key prefixes of per-pod objects: never kept; an ADD served from the file takes them as
/// absent (guarded as such).
const PER_POD_PREFIXES: [&str; 2] = [
    "/calico/ipam/v2/handle/",
    "/calico/resources/v3/projectcalico.org/workloadendpoints/",
];

/// 2: blocks in files of their own; 3: the last call's blocks in the snapshot's file.
const VERSION: u32 = 3;

/// The pods' records, beside the snapshot.
const POD_DIR: &str = "ipam-pods";

/// The blocks' files, beside the snapshot.
const BLOCK_DIR: &str = "ipam-blocks";

/// Keys of IPAM blocks: each kept in a file of its own (see the module's doc).
const BLOCK_PREFIX: &str = "/calico/ipam/v2/assignment/";

/// Where the snapshot of the node whose host lock is `lock_file` is kept.
pub fn path(lock_file: &Path) -> PathBuf {
    beside_lock(lock_file, "ipam-snapshot.json")
}

/// The file `name` of the lock domain of `lock_file`: `name` itself next to the default lock
/// (`ipam.lock`), else prefixed with the lock's own file name. Two lock files in one
/// directory (several networks, or simulated nodes, sharing it) must never share a file:
/// each is written in place under its own lock only.
pub(crate) fn beside_lock(lock_file: &Path, name: &str) -> PathBuf {
    match lock_file.file_name().and_then(|n| n.to_str()) {
        Some("ipam.lock") | None => lock_file.with_file_name(name),
        Some(lock) => lock_file.with_file_name(format!("{lock}.{name}")),
    }
}

/// The directory of the pods' records beside the snapshot at `snapshot`.
fn pods_dir(snapshot: &Path) -> PathBuf {
    dir_beside(snapshot, POD_DIR)
}

/// The directory of the blocks' files beside the snapshot at `snapshot`.
fn blocks_dir(snapshot: &Path) -> PathBuf {
    dir_beside(snapshot, BLOCK_DIR)
}

fn dir_beside(snapshot: &Path, dir: &str) -> PathBuf {
    let name = snapshot.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let prefix = name.strip_suffix("ipam-snapshot.json").unwrap_or("");
    snapshot.with_file_name(format!("{prefix}{dir}"))
}

fn is_block_key(key: &str) -> bool {
    key.starts_with(BLOCK_PREFIX)
}

fn per_pod(key: &str) -> bool {
    PER_POD_PREFIXES.iter().any(|p| key.starts_with(p))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReadKind {
    Key,
    Prefix,
    Keys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredKv {
    k: String,
    /// The stored value (Calico's values are JSON text).
    v: String,
    r: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    kind: ReadKind,
    path: String,
    /// When this read was last made against the store (ms since the epoch); writes folded
    /// in since do not change it.
    at: u64,
    kvs: Vec<StoredKv>,
}

impl Entry {
    /// What an entry for `read` would be: none for a per-pod key or a prefix that holds
    /// per-pod keys (a listing without them would be wrong).
    fn of(read: &Read) -> Option<(ReadKind, &str)> {
        let holds_per_pod = |p: &str| PER_POD_PREFIXES.iter().any(|pp| pp.starts_with(p));
        match read {
            Read::Key(k) if per_pod(k) => None,
            Read::Key(k) => Some((ReadKind::Key, k)),
            Read::Prefix(p) | Read::PrefixKeys(p) if per_pod(p) || holds_per_pod(p) => None,
            Read::Prefix(p) => Some((ReadKind::Prefix, p)),
            Read::PrefixKeys(p) => Some((ReadKind::Keys, p)),
        }
    }

    fn answers(&self, read: &Read) -> bool {
        Entry::of(read).is_some_and(|(kind, path)| kind == self.kind && path == self.path)
    }

    fn same_read(&self, other: &Entry) -> bool {
        self.kind == other.kind && self.path == other.path
    }

    fn covers(&self, key: &str) -> bool {
        match self.kind {
            ReadKind::Key => self.path == key,
            ReadKind::Prefix | ReadKind::Keys => key.starts_with(&self.path),
        }
    }

    /// A key read whose entry is kept in a block's file rather than the snapshot's.
    fn is_block(&self) -> bool {
        self.kind == ReadKind::Key && is_block_key(&self.path)
    }

    /// Folds an applied write (at `revision`) in; whether it changed the entry.
    fn apply(&mut self, write: &Write, revision: i64) -> bool {
        let (key, value) = match write {
            Write::Put(k, v) => (k, Some(v)),
            Write::Delete(k) => (k, None),
        };
        if !self.covers(key) {
            return false;
        }
        let at = self.kvs.binary_search_by(|kv| kv.k.as_str().cmp(key));
        match (at, value) {
            (Ok(i), None) => {
                self.kvs.remove(i);
            }
            (Err(_), None) => return false,
            (at, Some(v)) => {
                let kv = StoredKv {
                    k: key.clone(),
                    v: if self.kind == ReadKind::Keys {
                        String::new()
                    } else {
                        String::from_utf8_lossy(v).into_owned()
                    },
                    r: revision,
                };
                match at {
                    Ok(i) => self.kvs[i] = kv,
                    Err(i) => self.kvs.insert(i, kv),
                }
            }
        }
        true
    }
}

/// The first line of a block's file; the value (when the block exists) follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BlockHeader {
    version: u32,
    node: String,
    store: String,
    /// As [`Entry::at`].
    at: u64,
    /// The value's revision, length and SHA-256 (hex); `None`: the block does not exist.
    r: Option<i64>,
    len: usize,
    /// A write cut short between two pages (the call killed, the machine crashing) can
    /// leave the new header before a mix of new and old bytes, which might still parse and
    /// would be served under the new revision: the sum refuses it.
    sum: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A block's entry (a key read: the block, or nothing) as its file's bytes.
fn block_file_bytes(entry: &Entry, node: &str, store: &str) -> Vec<u8> {
    let kv = entry.kvs.first();
    let header = BlockHeader {
        version: VERSION,
        node: node.to_string(),
        store: store.to_string(),
        at: entry.at,
        r: kv.map(|kv| kv.r),
        len: kv.map_or(0, |kv| kv.v.len()),
        sum: sha256_hex(kv.map_or(&[][..], |kv| kv.v.as_bytes())),
    };
    let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
    bytes.push(b'\n');
    if let Some(kv) = kv {
        bytes.extend_from_slice(kv.v.as_bytes());
    }
    bytes
}

/// The entry of the block `key` from its file's bytes, if they are this node's and store's,
/// the header is whole and the value is what it was written as; its age is the caller's to
/// judge.
fn block_entry_from(bytes: &[u8], key: &str, node: &str, store: &str) -> Option<Entry> {
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let header: BlockHeader = serde_json::from_slice(&bytes[..split]).ok()?;
    if header.version != VERSION || header.node != node || header.store != store {
        return None;
    }
    let kvs = match header.r {
        Some(r) => {
            let value = bytes.get(split + 1..split + 1 + header.len)?;
            if sha256_hex(value) != header.sum {
                return None;
            }
            vec![StoredKv {
                k: key.to_string(),
                v: String::from_utf8(value.to_vec()).ok()?,
                r,
            }]
        }
        None => Vec::new(),
    };
    Some(Entry {
        kind: ReadKind::Key,
        path: key.to_string(),
        at: header.at,
        kvs,
    })
}

fn fresh(at: u64, now: u64) -> bool {
    // A clock that went back makes an entry stale, not young.
    now.checked_sub(at)
        .is_some_and(|age| Duration::from_millis(age) <= MAX_AGE)
}

/// A block's entry as this call knows it.
#[derive(Debug, Default)]
struct BlockSlot {
    /// `None`: no usable file, and not read.
    entry: Option<Entry>,
    /// To be written back.
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct File {
    version: u32,
    node: String,
    /// The store the entries came from ([`KvStore::describe`]): two networks of a node may
    /// use different datastores with one lock file.
    store: String,
    entries: Vec<Entry>,
    /// The blocks the last call changed (key reads, as in `entries`): kept here, not in
    /// their own files, which are older while a block is here.
    blocks: Vec<Entry>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the call is to a pod's record (see [`CachingStore::for_pod`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodCall {
    /// Its ADD (or a repeat): the per-pod objects it writes are recorded.
    Add,
    /// Its DEL (or an ADD's rollback): served from the record when there is one; the record
    /// goes in any case.
    Del,
}

#[derive(Debug, Default)]
struct State {
    /// The file's content as it will be written.
    file: Option<File>,
    /// The blocks this call asked for or wrote, by key.
    blocks: std::collections::BTreeMap<String, BlockSlot>,
    /// Whether the first read may be served from the file.
    may_serve: bool,
    /// The pod's handle and what the call is to it.
    pod: Option<(String, PodCall)>,
    /// The per-pod objects written by transactions applied in this call.
    pod_writes: Vec<StoredKv>,
    /// Whether the first read was served from the file (so the next one must be real).
    served: bool,
    reads: usize,
    /// The snapshot's file (with the blocks kept in it) is to be written back; blocks leaving
    /// it are written to their own files then.
    changed: bool,
    /// An outcome is unknown or a write was refused: the file goes.
    spoiled: bool,
    /// A transaction was applied, or its outcome is unknown.
    wrote: bool,
    /// A transaction's outcome is unknown: the file goes, whatever is read afterwards.
    unknown: bool,
}

/// A [`KvStore`] that serves an ADD's first read from the node's snapshot when it is fresh
/// and complete, and keeps the snapshot current with every read and applied transaction.
/// [`CachingStore::finish`] writes it back (or removes it); drop without finishing removes it.
pub struct CachingStore<'a> {
    inner: &'a dyn KvStore,
    path: PathBuf,
    node: String,
    state: RefCell<State>,
}

impl<'a> CachingStore<'a> {
    /// `serve`: whether the first read may come from the file; false records only.
    pub fn new(inner: &'a dyn KvStore, lock_file: &Path, node: &str, serve: bool) -> Self {
        CachingStore {
            inner,
            path: path(lock_file),
            node: node.to_string(),
            state: RefCell::new(State {
                may_serve: serve,
                ..State::default()
            }),
        }
    }

    /// The call is an ADD or DEL of the pod whose IPAM handle is `handle`. An ADD records
    /// the per-pod objects it writes (its handle, its endpoint) in `ipam-pods/` beside the
    /// snapshot; a DEL served from that record needs no read of them either. A record needs
    /// no age limit: a DEL guards every key it writes by the revision recorded, so a record
    /// overtaken by another writer costs one conflict and a real read. Handles other than
    /// the pod's own (Calico's legacy `<namespace>.<pod>` handle) are taken as absent then:
    /// this suite never writes them.
    pub fn for_pod(self, handle: &str, call: PodCall) -> Self {
        self.state.borrow_mut().pod = Some((handle.to_string(), call));
        self
    }

    fn pod_path(&self, handle: &str) -> PathBuf {
        pod_path(&self.path, handle)
    }

    fn block_path(&self, key: &str) -> PathBuf {
        blocks_dir(&self.path).join(file_name_for(key))
    }

    /// The block `key`'s entry from its file, if there is a fresh one of this node and store.
    fn load_block(&self, key: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.block_path(key)).ok()?;
        block_entry_from(&bytes, key, &self.node, &self.inner.describe())
            .filter(|e| fresh(e.at, now_ms()))
    }

    /// The block `key` as this call knows it (from the snapshot's file, else its own file,
    /// on first need).
    fn block_slot<'s>(&self, state: &'s mut State, key: &str) -> &'s mut BlockSlot {
        let State { file, blocks, .. } = state;
        blocks.entry(key.to_string()).or_insert_with(|| {
            let inline = file
                .as_ref()
                .and_then(|f| f.blocks.iter().find(|e| e.path == key));
            BlockSlot {
                entry: inline.cloned().or_else(|| self.load_block(key)),
                dirty: false,
            }
        })
    }

    /// Writes the block `entry` to its own file (removing the file if that fails).
    fn write_block_file(&self, entry: &Entry, store: &str) {
        let path = self.block_path(&entry.path);
        let done = std::fs::create_dir_all(blocks_dir(&self.path))
            .and_then(|()| overwrite_in_place(&path, block_file_bytes(entry, &self.node, store)));
        if let Err(e) = done {
            log::debug!("cannot update {}: {e}", path.display());
            self.remove_file(&path);
        }
    }

    /// Removes the snapshot's file and every block's: what they hold may be wrong.
    fn remove_snapshot(&self) {
        self.remove_file(&self.path);
        if let Ok(files) = std::fs::read_dir(blocks_dir(&self.path)) {
            for f in files.flatten() {
                self.remove_file(&f.path());
            }
        }
    }

    fn load_pod(&self, handle: &str) -> Option<Vec<StoredKv>> {
        let bytes = std::fs::read(self.pod_path(handle)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the first read came from the file.
    pub fn served_from_snapshot(&self) -> bool {
        self.state.borrow().served
    }

    /// Whether a call that failed may be made again from a real read: it was planned from
    /// the file and wrote nothing (no transaction applied, none with an unknown outcome).
    pub fn may_retry_from_the_store(&self) -> bool {
        let state = self.state.borrow();
        state.served && !state.wrote
    }

    /// The node's file, without entries too old to serve.
    fn load(&self) -> Option<File> {
        let bytes = std::fs::read(&self.path).ok()?;
        let mut file: File = serde_json::from_slice(&bytes)
            .map_err(|e| log::debug!("{} ignored: {e}", self.path.display()))
            .ok()?;
        if file.version != VERSION || file.node != self.node || file.store != self.inner.describe()
        {
            return None;
        }
        let now = now_ms();
        file.entries.retain(|e| fresh(e.at, now));
        // A block too old here is older still in its own file: neither is served.
        file.blocks.retain(|e| fresh(e.at, now) && e.is_block());
        Some(file)
    }

    /// The reads answered from the file (and, for a DEL, the pod's record), or None if
    /// anything is missing.
    fn answer(
        file: &File,
        blocks: &std::collections::BTreeMap<String, BlockSlot>,
        pod: Option<(&str, &[StoredKv])>,
        reads: &[Read],
    ) -> Option<Vec<Vec<Kv>>> {
        let kv = |kv: &StoredKv| Kv {
            key: kv.k.clone(),
            value: kv.v.clone().into_bytes(),
            mod_revision: kv.r,
        };
        if let Some((handle, record)) = pod {
            let own = calico_datastore::model::keys::handle(handle);
            if !record.iter().any(|r| r.k == own) {
                return None;
            }
        }
        reads
            .iter()
            .map(|read| match (read, pod) {
                (Read::Key(k), None) if per_pod(k) => Some(Vec::new()),
                (Read::Key(k), Some((_, record))) if per_pod(k) => {
                    match record.iter().find(|r| r.k == *k) {
                        Some(r) => Some(vec![kv(r)]),
                        None if k.starts_with(PER_POD_PREFIXES[0]) => Some(Vec::new()),
                        None => None,
                    }
                }
                (Read::Key(k), _) if is_block_key(k) => blocks
                    .get(k)
                    .and_then(|b| b.entry.as_ref())
                    .map(|e| e.kvs.iter().map(kv).collect()),
                _ => file
                    .entries
                    .iter()
                    .find(|e| e.answers(read))
                    .map(|e| e.kvs.iter().map(kv).collect()),
            })
            .collect()
    }

    /// Writes the snapshot back if anything changed, or removes it if it may be wrong; an
    /// ADD's record of its pod is written, a DEL's removed.
    pub fn finish(self) {
        let mut state = self.state.take();
        match state.pod.take() {
            Some((handle, PodCall::Del)) => self.remove_file(&self.pod_path(&handle)),
            Some((handle, PodCall::Add))
                if !state.spoiled && !state.unknown && !state.pod_writes.is_empty() =>
            {
                let path = self.pod_path(&handle);
                let done = std::fs::create_dir_all(pods_dir(&self.path))
                    .and_then(|()| write_json(&path, &state.pod_writes));
                if let Err(e) = done {
                    log::debug!("cannot write {}: {e}", path.display());
                    self.remove_file(&path);
                }
            }
            _ => {}
        }
        if state.spoiled || state.unknown {
            self.remove_snapshot();
            return;
        }
        let store = self.inner.describe();
        let changed: Vec<&Entry> = state
            .blocks
            .values()
            .filter(|slot| slot.dirty)
            .filter_map(|slot| slot.entry.as_ref())
            .collect();
        let Some(mut file) = state.file.take() else {
            // Nothing was read (no file to keep blocks in): each in its own.
            for entry in changed {
                self.write_block_file(entry, &store);
            }
            return;
        };
        if !changed.is_empty() {
            // The blocks this call changed go into the snapshot's file; those that were there
            // and are not any more, to their own files first (as this call knows them).
            for old in &file.blocks {
                if changed.iter().any(|e| e.path == old.path) {
                    continue;
                }
                let known = state.blocks.get(&old.path).and_then(|s| s.entry.as_ref());
                self.write_block_file(known.unwrap_or(old), &store);
            }
            file.blocks = changed.into_iter().cloned().collect();
            state.changed = true;
        }
        if state.changed
            && let Err(e) = write_json(&self.path, &file)
        {
            log::debug!("cannot update {}: {e}", self.path.display());
            self.remove_file(&self.path);
            // Their own files are older than what was lost: not to be served either.
            for entry in &file.blocks {
                self.remove_file(&self.block_path(&entry.path));
            }
        }
    }

    /// Drops the snapshot: the next call reads the store.
    pub fn discard(self) {
        self.state.borrow_mut().spoiled = true;
        self.finish();
    }

    fn remove_file(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// Where the record of the pod whose handle is `handle` is kept (`snapshot` is the
/// snapshot's path).
fn pod_path(snapshot: &Path, handle: &str) -> PathBuf {
    pods_dir(snapshot).join(file_name_for(handle))
}

/// `name` as a file name: other characters than letters, digits, `.`, `-` and `_` escaped.
fn file_name_for(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("%{:02x}", u32::from(c))
            }
        })
        .collect()
}

/// Removes the record of a pod whose handle was released otherwise (GC).
pub fn forget_pod(lock_file: &Path, handle: &str) {
    let path = pod_path(&path(lock_file), handle);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove {}: {e}", path.display());
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    overwrite_in_place(path, bytes)
}

/// Replaces a small file's content in place, neither renaming a new file over it nor
/// truncating it to zero first: on ext4 (where `/run` is when it is not a tmpfs) either of
/// those makes the kernel allocate the new blocks and start writing them back at once
/// (`auto_da_alloc`), which cost an ADD 0.2-2.8 ms on the benchmark machine. A shorter
/// content is padded with trailing whitespace (which JSON and the hint's lines ignore) up to
/// the old length when that is at most twice as long, so the file need not shrink either.
///
/// Why in place is safe here: the files are read and written under the host lock, so no
/// reader sees a half-written file; a write cut short (the call killed between two pages of
/// it, or the machine crashing) leaves a file that fails to parse (new JSON followed by the
/// old one's tail), or one older than [`MAX_AGE`] when anything reads it again, and every
/// entry served is guarded by its revision anyway.
pub(crate) fn overwrite_in_place(path: &Path, mut bytes: Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let old = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if old > bytes.len() && old <= bytes.len().saturating_mul(2) {
        bytes.resize(old, b' ');
    }
    file.write_all_at(&bytes, 0)?;
    if old > bytes.len() {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

impl KvStore for CachingStore<'_> {
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        let first = {
            let mut state = self.state.borrow_mut();
            state.reads += 1;
            state.reads == 1
        };
        if first {
            // Loaded (if fresh) whatever the call: a DEL's read and writes are folded in too.
            let file = self.load();
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            state.file = file;
            if state.may_serve {
                let record = match &state.pod {
                    Some((handle, PodCall::Del)) => {
                        // No record: this pod's objects must be read.
                        self.load_pod(handle).map(|r| (handle.clone(), r))
                    }
                    _ => None,
                };
                let del = matches!(state.pod, Some((_, PodCall::Del)));
                let pod = record.as_ref().map(|(h, r)| (h.as_str(), r.as_slice()));
                if state.file.is_some() && (!del || pod.is_some()) {
                    for read in reads {
                        if let Read::Key(k) = read
                            && is_block_key(k)
                        {
                            self.block_slot(state, k);
                        }
                    }
                    let answered = state
                        .file
                        .as_ref()
                        .and_then(|f| Self::answer(f, &state.blocks, pod, reads));
                    if let Some(got) = answered {
                        state.served = true;
                        return Ok(got);
                    }
                }
            }
        }
        let got = self.inner.read(reads)?;
        let now = now_ms();
        // Per-pod objects stay out; what was read replaces what was kept of the same reads.
        let entries: Vec<Entry> = reads
            .iter()
            .zip(&got)
            .filter_map(|(read, kvs)| {
                let (kind, path) = Entry::of(read)?;
                // Calico's values are JSON text; anything else is not kept.
                if kvs.iter().any(|kv| std::str::from_utf8(&kv.value).is_err()) {
                    return None;
                }
                Some(Entry {
                    kind,
                    path: path.to_string(),
                    at: now,
                    kvs: kvs
                        .iter()
                        .map(|kv| StoredKv {
                            k: kv.key.clone(),
                            v: String::from_utf8_lossy(&kv.value).into_owned(),
                            r: kv.mod_revision,
                        })
                        .collect(),
                })
            })
            .collect();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let file = state.file.get_or_insert_with(|| File {
            version: VERSION,
            node: self.node.clone(),
            store: self.inner.describe(),
            entries: Vec::new(),
            blocks: Vec::new(),
        });
        for entry in entries {
            if entry.is_block() {
                state.blocks.insert(
                    entry.path.clone(),
                    BlockSlot {
                        entry: Some(entry),
                        dirty: true,
                    },
                );
                continue;
            }
            match file.entries.iter_mut().find(|e| e.same_read(&entry)) {
                Some(e) => *e = entry,
                None => file.entries.push(entry),
            }
        }
        state.changed = true;
        state.spoiled = false;
        Ok(got)
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        let outcome = self.inner.txn(guards, writes);
        let mut state = self.state.borrow_mut();
        if !matches!(outcome, Ok(TxnOutcome::Conflict(_))) {
            state.wrote = true;
        }
        if outcome.is_err() {
            state.unknown = true;
        }
        match &outcome {
            Ok(TxnOutcome::Applied(revision)) => {
                for write in writes {
                    match write {
                        Write::Put(k, v) if per_pod(k) => {
                            state.pod_writes.retain(|kv| kv.k != *k);
                            state.pod_writes.push(StoredKv {
                                k: k.clone(),
                                v: String::from_utf8_lossy(v).into_owned(),
                                r: *revision,
                            });
                        }
                        Write::Delete(k) if per_pod(k) => state.pod_writes.retain(|kv| kv.k != *k),
                        _ => {}
                    }
                }
                if let Some(file) = state.file.as_mut() {
                    let mut changed = false;
                    for write in writes {
                        for entry in &mut file.entries {
                            changed |= entry.apply(write, *revision);
                        }
                    }
                    state.changed |= changed;
                }
                // A block written is loaded (if its file is fresh) so the file is updated,
                // never left behind at an older revision.
                for write in writes {
                    let (Write::Put(key, _) | Write::Delete(key)) = write;
                    if !is_block_key(key) {
                        continue;
                    }
                    let slot = self.block_slot(&mut state, key);
                    if let Some(entry) = slot.entry.as_mut() {
                        slot.dirty |= entry.apply(write, *revision);
                    }
                }
            }
            // The next read is a real one (the allocator re-reads after a conflict); until
            // then the snapshot is known stale.
            Ok(TxnOutcome::Conflict(_)) | Err(_) => state.spoiled = true,
        }
        outcome
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl Drop for CachingStore<'_> {
    fn drop(&mut self) {
        // finish() takes the state; anything still here was abandoned mid-call.
        let state = self.state.get_mut();
        let del = match &state.pod {
            Some((handle, PodCall::Del)) => Some(handle.clone()),
            _ => None,
        };
        let dirty = state.changed || state.blocks.values().any(|b| b.dirty);
        let abandoned = state.reads > 0 && (dirty || state.spoiled || state.unknown);
        if let Some(handle) = del {
            self.remove_file(&self.pod_path(&handle));
        }
        if abandoned {
            self.remove_snapshot();
        }
    }
}

#[cfg(test)]
#[path = "snapshot_cache_tests.rs"]
mod tests;
