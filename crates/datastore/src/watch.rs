//! Calico's syncer pattern on etcd: list several prefixes at one revision, watch them from
//! the next revision, and on compaction or a broken stream list again; the consumer gets a
//! [`SyncEvent::Snapshot`] (the full state) first and after every re-list, and
//! [`SyncEvent::Put`] / [`SyncEvent::Delete`] in between. Mirrors libcalico-go's
//! `lib/backend/watchersyncer` (`watchercache.go`: `resyncAndCreateWatcher` lists then
//! watches from the list's revision; an `ErrorTypeCompacted` or a closed watch makes it
//! re-list), with one difference: a re-list is delivered as one complete snapshot, not as
//! the updates and deletions that turn the old state into the new one.
//!
//! [`SyncedKeys`] keeps the consumer's copy and turns a re-list's snapshot into the puts and
//! deletions it implies, for consumers that act on changes only.
//!
//! The logic ([`Syncer`]) works on a [`WatchSource`]: [`EtcdClient`] is the real one (one
//! gRPC watch stream carrying one watcher per prefix); [`WatchableMemKv`] is an in-memory
//! test double with etcd's revisions and compaction, for unit tests of the logic and of
//! what consumes the events.
//!
//! A layer-4 module of the crate (beside [`crate::etcd`]): it uses the store types, the
//! errors and the etcd client.

use crate::error::EtcdError;
use crate::etcd::{EtcdClient, to_kv};
use crate::store::{Kv, Read};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// What a syncer tells its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// The full state of every watched prefix at `revision`, in key order: first, and again
    /// after every re-list (the consumer replaces what it had).
    Snapshot { kvs: Vec<Kv>, revision: i64 },
    /// A key was created or changed (its `mod_revision` is the change's revision).
    Put(Kv),
    /// A key was deleted at `revision`.
    Delete { key: String, revision: i64 },
}

/// One change to the watched keys, as [`SyncedKeys::apply`] derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Created or changed.
    Put(Kv),
    /// Gone.
    Deleted(String),
}

/// The watched keys as a consumer keeps them, with what each event changed: a snapshot is
/// turned into the puts and deletions between the old state and the new (what
/// libcalico-go's watcher cache sends on a resync), so a consumer can act on changes only.
///
/// Only each key's `mod_revision` is kept, not its value: etcd gives every write a new
/// revision, so two versions of a key with the same `mod_revision` are the same write (the
/// values, megabytes at scale, are the consumer's to keep or drop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncedKeys {
    /// Every watched key by name, with the revision of its last write.
    pub keys: BTreeMap<String, i64>,
    /// The revision of the last event applied.
    pub revision: i64,
    /// Whether a snapshot has arrived (before it, the keys are not the datastore's).
    pub in_sync: bool,
}

impl SyncedKeys {
    pub fn new() -> Self {
        SyncedKeys::default()
    }

    /// Applies `event`; returns what changed, in key order for a snapshot. A put that
    /// changes nothing (the same write, by its revision, as a re-list repeats) is not a
    /// change.
    pub fn apply(&mut self, event: SyncEvent) -> Vec<KeyChange> {
        match event {
            SyncEvent::Snapshot { kvs, revision } => {
                self.revision = revision;
                self.in_sync = true;
                // The snapshot's values are moved into the changes, never copied.
                let mut fresh: BTreeMap<String, i64> = BTreeMap::new();
                let mut puts = Vec::new();
                for kv in kvs {
                    let unchanged = self.keys.get(&kv.key) == Some(&kv.mod_revision);
                    fresh.insert(kv.key.clone(), kv.mod_revision);
                    if !unchanged {
                        puts.push(KeyChange::Put(kv));
                    }
                }
                let mut changes: Vec<KeyChange> = self
                    .keys
                    .keys()
                    .filter(|k| !fresh.contains_key(*k))
                    .map(|k| KeyChange::Deleted(k.clone()))
                    .collect();
                changes.extend(puts);
                self.keys = fresh;
                changes.sort_by(|a, b| change_key(a).cmp(change_key(b)));
                changes
            }
            SyncEvent::Put(kv) => {
                self.revision = self.revision.max(kv.mod_revision);
                if self.keys.get(&kv.key) == Some(&kv.mod_revision) {
                    return Vec::new();
                }
                self.keys.insert(kv.key.clone(), kv.mod_revision);
                vec![KeyChange::Put(kv)]
            }
            SyncEvent::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                match self.keys.remove(&key) {
                    Some(_) => vec![KeyChange::Deleted(key)],
                    None => Vec::new(),
                }
            }
        }
    }
}

fn change_key(change: &KeyChange) -> &str {
    match change {
        KeyChange::Put(kv) => &kv.key,
        KeyChange::Deleted(key) => key,
    }
}

/// What one read of a watch stream brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes, each [`SyncEvent::Put`] or [`SyncEvent::Delete`], in revision order per
    /// prefix.
    Changes(Vec<SyncEvent>),
    /// The history the watch needs is gone (etcd compacted up to this revision): list again.
    Compacted { compact_revision: i64 },
}

/// Where a [`Syncer`] lists and watches.
pub trait WatchSource: Send + Sync {
    type Stream: WatchStream;

    /// Every key under each prefix (prefixes do not overlap), read at one revision, returned
    /// with that revision.
    fn list(
        &self,
        prefixes: &[String],
    ) -> impl Future<Output = Result<(Vec<Kv>, i64), EtcdError>> + Send;

    /// A stream of the changes under the prefixes from `start_revision` on.
    fn watch(
        &self,
        prefixes: &[String],
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Stream, EtcdError>> + Send;
}

/// An open watch.
pub trait WatchStream: Send {
    /// The next batch; an error (or `Ok(None)`: the server ended the stream) means the
    /// stream is broken.
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchBatch>, EtcdError>> + Send;
}

/// How long to wait between attempts after a failure: doubling from `min` up to `max`, back
/// to `min` once a list and watch succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// As libcalico-go's watcher cache retries a failed list: quickly at first, then at
    /// most every few seconds.
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Lists and watches a set of prefixes, forever (until the consumer goes away).
#[derive(Debug, Clone)]
pub struct Syncer {
    prefixes: Vec<String>,
    backoff: Backoff,
}

impl Syncer {
    /// A syncer of `prefixes`. A prefix under another one is dropped (its keys come with
    /// the wider one, once); duplicates too.
    pub fn new(prefixes: Vec<String>) -> Syncer {
        let mut sorted = prefixes;
        sorted.sort();
        sorted.dedup();
        let mut kept: Vec<String> = Vec::new();
        for p in sorted {
            // Sorted: a prefix of `p` sorts before it, so only kept ones need checking.
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        Syncer {
            prefixes: kept,
            backoff: Backoff::default(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Syncer {
        self.backoff = backoff;
        self
    }

    /// The prefixes watched, after dropping the covered ones.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Lists, sends the snapshot, watches and forwards the changes; on compaction lists
    /// again at once, on any other failure after a backoff. Returns `Ok` when `tx`'s
    /// receiver is dropped, and an error only for one no retry can cure (a bad
    /// configuration, or no prefix at all).
    pub async fn run<S: WatchSource>(
        &self,
        source: &S,
        tx: UnboundedSender<SyncEvent>,
    ) -> Result<(), EtcdError> {
        if self.prefixes.is_empty() {
            return Err(EtcdError::Config("nothing to watch: no prefix".into()));
        }
        let mut delay = self.backoff.min;
        loop {
            let outcome = tokio::select! {
                _ = tx.closed() => return Ok(()),
                outcome = self.list_and_watch(source, &tx) => outcome,
            };
            match outcome {
                Round::ConsumerGone => return Ok(()),
                Round::Compacted { watched } => {
                    if watched {
                        delay = self.backoff.min;
                    }
                }
                Round::Failed { error, watched } => {
                    if let EtcdError::Config(_) = error {
                        return Err(error);
                    }
                    if watched {
                        delay = self.backoff.min;
                    }
                    log::warn!(
                        "watch of {:?} failed, listing again in {delay:?}: {error}",
                        self.prefixes
                    );
                    tokio::select! {
                        _ = tx.closed() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff.max);
                }
            }
        }
    }

    /// One list and the watch that follows it, until the watch ends.
    async fn list_and_watch<S: WatchSource>(
        &self,
        source: &S,
        tx: &UnboundedSender<SyncEvent>,
    ) -> Round {
        let failed = |error, watched| Round::Failed { error, watched };
        let (kvs, revision) = match source.list(&self.prefixes).await {
            Ok(listed) => listed,
            Err(e) => return failed(e, false),
        };
        log::debug!(
            "listed {} keys under {:?} at revision {revision}",
            kvs.len(),
            self.prefixes
        );
        if tx.send(SyncEvent::Snapshot { kvs, revision }).is_err() {
            return Round::ConsumerGone;
        }
        let mut stream = match source.watch(&self.prefixes, revision + 1).await {
            Ok(stream) => stream,
            Err(e) => return failed(e, false),
        };
        let mut watched = false;
        loop {
            match stream.next().await {
                Ok(Some(WatchBatch::Changes(changes))) => {
                    watched = true;
                    for change in changes {
                        if tx.send(change).is_err() {
                            return Round::ConsumerGone;
                        }
                    }
                }
                Ok(Some(WatchBatch::Compacted { compact_revision })) => {
                    log::info!(
                        "watch of {:?} is behind etcd's compaction (revision \
                         {compact_revision}): listing again",
                        self.prefixes
                    );
                    return Round::Compacted { watched };
                }
                Ok(None) => {
                    let error = EtcdError::Request("the watch stream was closed".into());
                    return failed(error, watched);
                }
                Err(e) => return failed(e, watched),
            }
        }
    }
}

/// How one list-and-watch round ended. `watched`: the watch delivered something, so the
/// backoff starts over.
enum Round {
    ConsumerGone,
    Compacted { watched: bool },
    Failed { error: EtcdError, watched: bool },
}

/// Syncs `prefixes` of `client` into `tx` with the default backoff: see [`Syncer::run`].
pub async fn sync_prefixes(
    client: &EtcdClient,
    prefixes: Vec<String>,
    tx: UnboundedSender<SyncEvent>,
) -> Result<(), EtcdError> {
    Syncer::new(prefixes).run(client, tx).await
}

impl WatchSource for EtcdClient {
    type Stream = EtcdWatch;

    async fn list(&self, prefixes: &[String]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let reads: Vec<Read> = prefixes.iter().map(|p| Read::Prefix(p.clone())).collect();
        let (lists, revision) = self.read_at_revision(&reads).await?;
        let mut kvs: Vec<Kv> = lists.into_iter().flatten().collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((kvs, revision))
    }

    async fn watch(
        &self,
        prefixes: &[String],
        start_revision: i64,
    ) -> Result<EtcdWatch, EtcdError> {
        let stream = self.open_watch(prefixes, start_revision).await?;
        Ok(EtcdWatch {
            stream,
            client: self.clone(),
            idle: EtcdWatch::IDLE,
        })
    }
}

/// An etcd watch stream (one watcher per prefix on one gRPC stream). An idle stream is
/// probed: after [`EtcdWatch::IDLE`] without a message it asks etcd for a progress report,
/// and a stream that does not answer that within [`EtcdWatch::PROBE`] (or the request
/// timeout, if shorter) counts as broken (a silently dead connection would otherwise stall
/// the syncer forever). A progress report needs no commit, so its bound can be shorter than
/// a request's.
pub struct EtcdWatch {
    stream: etcd_client::WatchStream,
    client: EtcdClient,
    idle: Duration,
}

impl EtcdWatch {
    const IDLE: Duration = Duration::from_secs(30);
    const PROBE: Duration = Duration::from_secs(5);
}

impl WatchStream for EtcdWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>, EtcdError> {
        let mut probed = false;
        loop {
            let limit = if probed {
                self.client.request_timeout().min(EtcdWatch::PROBE)
            } else {
                self.idle
            };
            let message = match tokio::time::timeout(limit, self.stream.message()).await {
                Ok(message) => message.map_err(|e| self.client.classify_stream_error(e))?,
                Err(_) if probed => {
                    return Err(EtcdError::Unreachable {
                        endpoints: self.client.endpoints().to_string(),
                        reason: format!("the watch stream did not answer within {limit:?}"),
                    });
                }
                Err(_) => {
                    self.stream
                        .request_progress()
                        .await
                        .map_err(|e| self.client.classify_stream_error(e))?;
                    probed = true;
                    continue;
                }
            };
            let Some(response) = message else {
                return Ok(None);
            };
            probed = false;
            if response.compact_revision() > 0 {
                return Ok(Some(WatchBatch::Compacted {
                    compact_revision: response.compact_revision(),
                }));
            }
            if response.canceled() {
                return Err(EtcdError::Request(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                )));
            }
            let changes: Vec<SyncEvent> = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        etcd_client::EventType::Put => SyncEvent::Put(to_kv(kv)),
                        etcd_client::EventType::Delete => SyncEvent::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            revision: kv.mod_revision(),
                        },
                    })
                })
                .collect();
            // Creation confirmations and progress reports carry no change.
            if !changes.is_empty() {
                return Ok(Some(WatchBatch::Changes(changes)));
            }
        }
    }
}

/// A test double, not a datastore: an in-memory key space with etcd's revisions, an
/// event history, compaction, and injected failures, that a [`Syncer`] can list and watch.
/// For unit tests of the syncer and of what consumes its events; the real thing is tested
/// against Debian's etcd.
#[derive(Debug, Clone, Default)]
pub struct WatchableMemKv {
    shared: Arc<MemShared>,
}

#[derive(Debug, Default)]
struct MemShared {
    state: Mutex<MemState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct MemState {
    revision: i64,
    keys: BTreeMap<String, Kv>,
    /// Every change after `compacted`, in revision order.
    history: Vec<SyncEvent>,
    compacted: i64,
    /// Streams opened before this generation are broken.
    generation: u64,
    fail_lists: usize,
    lists: usize,
}

impl WatchableMemKv {
    pub fn new() -> Self {
        WatchableMemKv::default()
    }

    /// Looks at (or counts in) the state without waking the watches.
    fn with_state<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> T {
        let mut state = match self.shared.state.lock() {
            Ok(state) => state,
            // A test that panicked while holding the lock: its state is still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// Changes the state and wakes the watches.
    fn change<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> T {
        let out = self.with_state(f);
        self.shared.changed.notify_waiters();
        out
    }

    /// Stores `value` at a new revision; returns it.
    pub fn put(&self, key: &str, value: &[u8]) -> i64 {
        self.change(|s| {
            s.revision += 1;
            let kv = Kv {
                key: key.to_string(),
                value: value.to_vec(),
                mod_revision: s.revision,
            };
            s.keys.insert(key.to_string(), kv.clone());
            s.history.push(SyncEvent::Put(kv));
            s.revision
        })
    }

    /// Deletes `key` at a new revision if it exists; returns the revision.
    pub fn delete(&self, key: &str) -> Option<i64> {
        self.change(|s| {
            s.keys.remove(key)?;
            s.revision += 1;
            s.history.push(SyncEvent::Delete {
                key: key.to_string(),
                revision: s.revision,
            });
            Some(s.revision)
        })
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.with_state(|s| s.revision)
    }

    /// Discards the history up to `revision` (etcd's compaction): a watch that still needs
    /// it gets [`WatchBatch::Compacted`].
    pub fn compact(&self, revision: i64) {
        self.change(|s| {
            s.compacted = s.compacted.max(revision);
            let kept = s.compacted;
            s.history.retain(|e| event_revision(e) > kept);
        })
    }

    /// Breaks every open watch stream (as a lost connection would).
    pub fn break_streams(&self) {
        self.change(|s| s.generation += 1);
    }

    /// Makes the next `n` lists fail as unreachable.
    pub fn fail_next_lists(&self, n: usize) {
        self.with_state(|s| s.fail_lists = n);
    }

    /// How many lists were answered or refused.
    pub fn lists(&self) -> usize {
        self.with_state(|s| s.lists)
    }
}

fn event_revision(event: &SyncEvent) -> i64 {
    match event {
        SyncEvent::Put(kv) => kv.mod_revision,
        SyncEvent::Delete { revision, .. } => *revision,
        SyncEvent::Snapshot { revision, .. } => *revision,
    }
}

fn event_key(event: &SyncEvent) -> &str {
    match event {
        SyncEvent::Put(kv) => &kv.key,
        SyncEvent::Delete { key, .. } => key,
        SyncEvent::Snapshot { .. } => "",
    }
}

fn unreachable(reason: &str) -> EtcdError {
    EtcdError::Unreachable {
        endpoints: "the in-memory test double".into(),
        reason: reason.into(),
    }
}

impl WatchSource for WatchableMemKv {
    type Stream = MemWatch;

    async fn list(&self, prefixes: &[String]) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.with_state(|s| {
            s.lists += 1;
            if s.fail_lists > 0 {
                s.fail_lists -= 1;
                return Err(unreachable("injected list failure"));
            }
            let kvs = s
                .keys
                .values()
                .filter(|kv| prefixes.iter().any(|p| kv.key.starts_with(p.as_str())))
                .cloned()
                .collect();
            Ok((kvs, s.revision))
        })
    }

    async fn watch(&self, prefixes: &[String], start_revision: i64) -> Result<MemWatch, EtcdError> {
        let generation = self.with_state(|s| s.generation);
        Ok(MemWatch {
            store: self.clone(),
            prefixes: prefixes.to_vec(),
            next_revision: start_revision,
            generation,
        })
    }
}

/// A watch of [`WatchableMemKv`] (test double).
pub struct MemWatch {
    store: WatchableMemKv,
    prefixes: Vec<String>,
    next_revision: i64,
    generation: u64,
}

impl WatchStream for MemWatch {
    async fn next(&mut self) -> Result<Option<WatchBatch>, EtcdError> {
        let shared = self.store.shared.clone();
        loop {
            // Registered before looking, so a change made in between still wakes us.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = self.store.with_state(|s| {
                if s.generation != self.generation {
                    return Err(unreachable("stream broken"));
                }
                if self.next_revision <= s.compacted {
                    let batch = WatchBatch::Compacted {
                        compact_revision: s.compacted,
                    };
                    return Ok(Some((batch, s.revision)));
                }
                let changes: Vec<SyncEvent> = s
                    .history
                    .iter()
                    .filter(|e| event_revision(e) >= self.next_revision)
                    .filter(|e| {
                        let key = event_key(e);
                        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
                    })
                    .cloned()
                    .collect();
                if changes.is_empty() {
                    return Ok(None);
                }
                Ok(Some((WatchBatch::Changes(changes), s.revision)))
            })?;
            match found {
                Some((batch, seen)) => {
                    self.next_revision = seen + 1;
                    return Ok(Some(batch));
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    const BOUND: Duration = Duration::from_secs(5);

    fn fast() -> Backoff {
        Backoff {
            min: Duration::from_millis(1),
            max: Duration::from_millis(4),
        }
    }

    async fn next(rx: &mut UnboundedReceiver<SyncEvent>) -> SyncEvent {
        tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("an event within the bound")
            .expect("the syncer is running")
    }

    fn keys(event: &SyncEvent) -> Vec<(String, String)> {
        match event {
            SyncEvent::Snapshot { kvs, .. } => kvs
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect(),
            other => panic!("not a snapshot: {other:?}"),
        }
    }

    fn spawn(
        store: &WatchableMemKv,
        prefixes: &[&str],
    ) -> (
        UnboundedReceiver<SyncEvent>,
        tokio::task::JoinHandle<Result<(), EtcdError>>,
    ) {
        let (tx, rx) = unbounded_channel();
        let syncer =
            Syncer::new(prefixes.iter().map(|p| p.to_string()).collect()).with_backoff(fast());
        let store = store.clone();
        let task = tokio::spawn(async move { syncer.run(&store, tx).await });
        (rx, task)
    }

    #[test]
    fn covered_and_repeated_prefixes_are_watched_once() {
        let syncer = Syncer::new(vec![
            "/calico/resources/v3/projectcalico.org/bgppeers/".into(),
            "/calico/ipam/v2/".into(),
            "/calico/resources/v3/".into(),
            "/calico/ipam/v2/".into(),
        ]);
        assert_eq!(
            syncer.prefixes(),
            ["/calico/ipam/v2/", "/calico/resources/v3/"]
        );
    }

    /// Mirrors watchercache.go resyncAndCreateWatcher: list, then watch from the list's
    /// revision + 1, so nothing written in between is lost or repeated.
    #[tokio::test]
    async fn snapshot_then_changes_of_the_watched_prefixes_only() {
        let store = WatchableMemKv::new();
        store.put("/a/1", b"one");
        store.put("/b/1", b"bee");
        store.put("/c/1", b"not watched");
        let (mut rx, task) = spawn(&store, &["/a/", "/b/"]);
        let first = next(&mut rx).await;
        assert_eq!(
            keys(&first),
            [("/a/1".into(), "one".into()), ("/b/1".into(), "bee".into())]
        );
        assert!(matches!(first, SyncEvent::Snapshot { revision: 3, .. }));

        store.put("/c/2", b"ignored");
        let rev = store.put("/b/2", b"new");
        match next(&mut rx).await {
            SyncEvent::Put(kv) => {
                assert_eq!((kv.key.as_str(), kv.mod_revision), ("/b/2", rev));
            }
            other => panic!("{other:?}"),
        }
        let rev = store.delete("/a/1").unwrap();
        assert_eq!(
            next(&mut rx).await,
            SyncEvent::Delete {
                key: "/a/1".into(),
                revision: rev
            }
        );
        drop(rx);
        tokio::time::timeout(BOUND, task)
            .await
            .expect("the syncer stops when its consumer goes")
            .unwrap()
            .unwrap();
    }

    // The tests run on tokio's single-threaded runtime: the syncer's task runs only while
    // the test awaits, so what the test does between two awaits is atomic for the syncer,
    // and once the test holds an event the syncer is parked in its watch.

    /// Mirrors watchercache.go resyncAndCreateWatcher: a watch that hits
    /// ErrorTypeCompacted re-lists; the new snapshot holds the current state, including
    /// what changed in the compacted history.
    #[tokio::test]
    async fn compaction_before_the_watch_reads_gives_a_fresh_snapshot() {
        let store = WatchableMemKv::new();
        store.put("/a/1", b"one");
        store.put("/a/2", b"two");
        let (mut rx, _task) = spawn(&store, &["/a/"]);
        assert_eq!(keys(&next(&mut rx).await).len(), 2);

        store.delete("/a/1");
        let latest = store.put("/a/3", b"three");
        store.compact(latest);
        let snapshot = next(&mut rx).await;
        assert!(
            matches!(snapshot, SyncEvent::Snapshot { revision, .. } if revision == latest),
            "{snapshot:?}"
        );
        assert_eq!(
            keys(&snapshot),
            [
                ("/a/2".into(), "two".into()),
                ("/a/3".into(), "three".into())
            ]
        );
        assert_eq!(store.lists(), 2);
        // And the new watch carries on from the new snapshot.
        let rev = store.put("/a/4", b"four");
        match next(&mut rx).await {
            SyncEvent::Put(kv) => assert_eq!(kv.mod_revision, rev),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn compaction_of_an_open_watch_relists_without_backoff() {
        let store = WatchableMemKv::new();
        store.put("/a/1", b"one");
        let (tx, mut rx) = unbounded_channel();
        // A backoff far beyond the bound: a compaction must not wait for it.
        let syncer = Syncer::new(vec!["/a/".into()]).with_backoff(Backoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(60),
        });
        let watched = store.clone();
        tokio::spawn(async move { syncer.run(&watched, tx).await });
        next(&mut rx).await;
        store.put("/a/2", b"two");
        assert!(matches!(next(&mut rx).await, SyncEvent::Put(_)));
        // The watch is open and waiting: compact past it, with a change it never saw.
        store.delete("/a/1");
        store.compact(store.revision());
        let event = next(&mut rx).await;
        assert_eq!(keys(&event), [("/a/2".into(), "two".into())]);
    }

    /// A broken stream (lost connection) and failing lists: retried with backoff, and the
    /// consumer gets a complete snapshot once etcd answers again.
    #[tokio::test]
    async fn a_broken_stream_is_relisted_after_failed_lists() {
        let store = WatchableMemKv::new();
        store.put("/a/1", b"one");
        let (mut rx, _task) = spawn(&store, &["/a/"]);
        next(&mut rx).await;
        store.fail_next_lists(3);
        store.put("/a/2", b"two");
        store.break_streams();
        let event = next(&mut rx).await;
        assert_eq!(
            keys(&event),
            [("/a/1".into(), "one".into()), ("/a/2".into(), "two".into())]
        );
        assert_eq!(store.lists(), 5, "first list, three refused, one answered");
    }

    /// A re-list becomes the puts and deletions between the old state and the new, as
    /// watchercache.go's resync sends them.
    #[test]
    fn synced_keys_turn_a_snapshot_into_changes() {
        let kv = |k: &str, v: &str, rev: i64| Kv {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            mod_revision: rev,
        };
        let mut synced = SyncedKeys::new();
        assert!(!synced.in_sync);
        let first = synced.apply(SyncEvent::Snapshot {
            kvs: vec![kv("/a", "1", 2), kv("/b", "1", 3)],
            revision: 3,
        });
        assert_eq!(
            first,
            [
                KeyChange::Put(kv("/a", "1", 2)),
                KeyChange::Put(kv("/b", "1", 3))
            ]
        );
        assert!(synced.in_sync);
        assert_eq!(
            synced.apply(SyncEvent::Put(kv("/c", "1", 4))),
            [KeyChange::Put(kv("/c", "1", 4))]
        );
        assert_eq!(
            synced.apply(SyncEvent::Put(kv("/c", "1", 4))),
            [],
            "a repeated put"
        );
        // Compaction: /a deleted and /b changed unseen, /d new; /c unchanged.
        let resync = synced.apply(SyncEvent::Snapshot {
            kvs: vec![kv("/b", "2", 6), kv("/c", "1", 4), kv("/d", "1", 7)],
            revision: 9,
        });
        assert_eq!(
            resync,
            [
                KeyChange::Deleted("/a".into()),
                KeyChange::Put(kv("/b", "2", 6)),
                KeyChange::Put(kv("/d", "1", 7)),
            ]
        );
        assert_eq!(synced.revision, 9);
        assert_eq!(
            synced.apply(SyncEvent::Delete {
                key: "/c".into(),
                revision: 10
            }),
            [KeyChange::Deleted("/c".into())]
        );
        assert_eq!(
            synced.apply(SyncEvent::Delete {
                key: "/zz".into(),
                revision: 11
            }),
            []
        );
        assert_eq!(synced.keys.len(), 2);
    }

    #[tokio::test]
    async fn nothing_to_watch_is_an_error() {
        let (tx, _rx) = unbounded_channel();
        let err = Syncer::new(Vec::new())
            .run(&WatchableMemKv::new(), tx)
            .await
            .unwrap_err();
        assert!(matches!(err, EtcdError::Config(_)), "{err}");
    }
}
