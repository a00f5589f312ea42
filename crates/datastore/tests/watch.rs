//! The syncer ([`calico_datastore::watch`]) against Debian's etcd: plain and mutual TLS,
//! a compaction that overtakes a watch, and a restarted etcd.

// Helpers shared by the tests unwrap like the tests themselves.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use calico_datastore::watch::{EtcdWatch, SyncEvent, Syncer, WatchSource};
use calico_datastore::{EtcdClient, EtcdConfig, EtcdError, Kv, sync_prefixes};
use testkit::{EtcdCluster, require};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::oneshot;

const BOUND: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn plain_config(endpoints: &str) -> EtcdConfig {
    EtcdConfig::new(endpoints.split(',').map(str::to_string).collect())
}

async fn next(rx: &mut UnboundedReceiver<SyncEvent>) -> SyncEvent {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("an event within the bound")
        .expect("the syncer is running")
}

/// The next snapshot, skipping changes delivered before it.
async fn next_snapshot(rx: &mut UnboundedReceiver<SyncEvent>) -> (Vec<(String, String)>, i64) {
    loop {
        if let SyncEvent::Snapshot { kvs, revision } = next(rx).await {
            return (pairs(&kvs), revision);
        }
    }
}

fn pairs(kvs: &[Kv]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

async fn current_revision(client: &EtcdClient) -> i64 {
    client.read_at_revision(&[]).await.unwrap().1
}

/// Snapshot, then puts and deletes of the watched prefixes only, in order.
async fn lists_then_watches(client: EtcdClient) {
    client.put("/w/a/1", b"one".to_vec()).await.unwrap();
    client.put("/w/b/1", b"bee".to_vec()).await.unwrap();
    client.put("/w/c/1", b"other".to_vec()).await.unwrap();
    let (tx, mut rx) = unbounded_channel();
    let watched = client.clone();
    let task = tokio::spawn(async move {
        sync_prefixes(&watched, vec!["/w/a/".into(), "/w/b/".into()], tx).await
    });
    let (snapshot, revision) = next_snapshot(&mut rx).await;
    assert_eq!(snapshot, [pair("/w/a/1", "one"), pair("/w/b/1", "bee")]);
    assert_eq!(revision, current_revision(&client).await);

    client.put("/w/c/2", b"ignored".to_vec()).await.unwrap();
    client.put("/w/b/2", b"new".to_vec()).await.unwrap();
    match next(&mut rx).await {
        SyncEvent::Put(kv) => {
            assert_eq!(pairs(std::slice::from_ref(&kv)), [pair("/w/b/2", "new")]);
            assert_eq!(kv.mod_revision, current_revision(&client).await);
        }
        other => panic!("{other:?}"),
    }
    client.delete_prefix("/w/a/1").await.unwrap();
    match next(&mut rx).await {
        SyncEvent::Delete { key, revision } => {
            assert_eq!(key, "/w/a/1");
            assert_eq!(revision, current_revision(&client).await);
        }
        other => panic!("{other:?}"),
    }
    drop(rx);
    tokio::time::timeout(BOUND, task)
        .await
        .expect("the syncer stops when its consumer goes")
        .unwrap()
        .unwrap();
}

#[test]
fn lists_then_watches_plain() {
    require!("etcd");
    let server = testkit::Etcd::start().unwrap();
    runtime().block_on(async {
        let client = EtcdClient::connect(&plain_config(&server.endpoints()))
            .await
            .unwrap();
        lists_then_watches(client).await;
    });
}

#[test]
fn lists_then_watches_over_mutual_tls() {
    require!("etcd");
    let server = testkit::Etcd::start_tls().unwrap();
    let config = EtcdConfig {
        ca_cert_file: Some(server.ca_path()),
        cert_file: Some(server.cert_path()),
        key_file: Some(server.key_path()),
        ..plain_config(&server.endpoints())
    };
    runtime().block_on(async {
        let client = EtcdClient::connect(&config).await.unwrap();
        lists_then_watches(client).await;
    });
}

/// The real etcd client whose first watch waits for the test's signal: the only way to
/// make etcd's compaction overtake a watch deterministically (etcd compacts under a
/// caught-up watcher without cancelling it; it cancels one that still needs the history).
/// Lists and watches are etcd's own.
struct FirstWatchWaits {
    client: EtcdClient,
    gate: Mutex<Option<oneshot::Receiver<()>>>,
}

impl WatchSource for FirstWatchWaits {
    type Stream = EtcdWatch;

    async fn list(&self, prefixes: &[String]) -> Result<(Vec<Kv>, i64), EtcdError> {
        self.client.list(prefixes).await
    }

    async fn watch(&self, prefixes: &[String], start: i64) -> Result<EtcdWatch, EtcdError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        self.client.watch(prefixes, start).await
    }
}

/// Mirrors watchercache.go resyncAndCreateWatcher: etcd answers a watch from a compacted
/// revision with ErrorTypeCompacted, and the syncer lists again: the new snapshot is the
/// state after the changes it never saw, and the watch carries on from there.
#[test]
fn a_compaction_that_overtakes_the_watch_gives_a_fresh_snapshot() {
    require!("etcd");
    let server = testkit::Etcd::start().unwrap();
    runtime().block_on(async {
        let client = EtcdClient::connect(&plain_config(&server.endpoints()))
            .await
            .unwrap();
        client.put("/w/a/1", b"one".to_vec()).await.unwrap();
        client.put("/w/a/2", b"two".to_vec()).await.unwrap();
        let (open, gate) = oneshot::channel();
        let source = FirstWatchWaits {
            client: client.clone(),
            gate: Mutex::new(Some(gate)),
        };
        let (tx, mut rx) = unbounded_channel();
        tokio::spawn(async move { Syncer::new(vec!["/w/a/".into()]).run(&source, tx).await });
        let (snapshot, first) = next_snapshot(&mut rx).await;
        assert_eq!(snapshot.len(), 2);

        // Between the list and the watch: changes, then a compaction past them.
        client.delete_prefix("/w/a/1").await.unwrap();
        client.put("/w/a/3", b"three".to_vec()).await.unwrap();
        let latest = current_revision(&client).await;
        client.compact(latest).await.unwrap();
        open.send(()).unwrap();

        let event = next(&mut rx).await;
        let SyncEvent::Snapshot { kvs, revision } = event else {
            panic!("a change from a compacted history: {event:?}");
        };
        assert!(revision >= latest && revision > first, "{revision}");
        assert_eq!(
            pairs(&kvs),
            [pair("/w/a/2", "two"), pair("/w/a/3", "three")]
        );
        client.put("/w/a/4", b"four".to_vec()).await.unwrap();
        match next(&mut rx).await {
            SyncEvent::Put(kv) => assert_eq!(kv.key, "/w/a/4"),
            other => panic!("{other:?}"),
        }
    });
}

/// etcd stops and comes back: the broken stream is noticed, the lists retried with backoff,
/// and the consumer gets a snapshot with what was written meanwhile.
#[test]
fn a_restarted_etcd_gives_a_fresh_snapshot() {
    require!("etcd");
    let cluster = EtcdCluster::start(1).unwrap();
    let member = cluster.member(0);
    runtime().block_on(async {
        let client = EtcdClient::connect(&plain_config(&cluster.endpoints()))
            .await
            .unwrap();
        client.put("/w/a/1", b"one".to_vec()).await.unwrap();
        let (tx, mut rx) = unbounded_channel();
        let watched = client.clone();
        tokio::spawn(async move { sync_prefixes(&watched, vec!["/w/a/".into()], tx).await });
        assert_eq!(next_snapshot(&mut rx).await.0, [pair("/w/a/1", "one")]);

        member.stop().unwrap();
        member.restart().unwrap();
        // Written through etcdctl: the syncer's connection may still be re-dialling.
        member.ctl().put("/w/a/2", "two").unwrap();
        let mut snapshot = next_snapshot(&mut rx).await.0;
        // A re-list may have run before the put; the put then comes as a change.
        if snapshot.len() == 1 {
            match next(&mut rx).await {
                SyncEvent::Put(kv) => snapshot.extend(pairs(&[kv])),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(snapshot, [pair("/w/a/1", "one"), pair("/w/a/2", "two")]);
    });
}
