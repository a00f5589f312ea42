//! The etcd client against Debian's etcd: plain, mutual TLS, a cluster losing its leader,
//! and an endpoint nobody answers.

use std::time::{Duration, Instant};

use calico_datastore::{Etcd, EtcdConfig, EtcdError, Guard, Read, TxnOutcome, Write};
use testkit::{EtcdCluster, require};

fn plain_config(endpoints: &str) -> EtcdConfig {
    EtcdConfig::new(endpoints.split(',').map(str::to_string).collect())
}

#[test]
fn cas_writes_reads_and_lists() {
    require!("etcd");
    let server = testkit::Etcd::start().unwrap();
    let db = Etcd::connect(&plain_config(&server.endpoints())).unwrap();

    assert!(db.create("/t/a", b"1".to_vec()).unwrap());
    assert!(
        !db.create("/t/a", b"again".to_vec()).unwrap(),
        "create of an existing key"
    );
    let a = db.get("/t/a").unwrap().unwrap();
    assert_eq!(a.value, b"1");
    assert!(db.update("/t/a", b"2".to_vec(), a.mod_revision).unwrap());
    assert!(
        !db.update("/t/a", b"stale".to_vec(), a.mod_revision)
            .unwrap(),
        "update with a stale revision"
    );
    assert_eq!(server.get("/t/a").unwrap().as_deref(), Some("2"));

    // Several keys in one transaction: all or nothing.
    let a = db.get("/t/a").unwrap().unwrap();
    let applied = db
        .txn(
            &[
                Guard::Revision("/t/a".into(), a.mod_revision),
                Guard::Absent("/t/b".into()),
            ],
            &[
                Write::Put("/t/a".into(), b"3".to_vec()),
                Write::Put("/t/b".into(), b"x".to_vec()),
            ],
        )
        .unwrap();
    assert!(applied.applied());
    let not_applied = db
        .txn(
            &[
                Guard::Revision("/t/a".into(), a.mod_revision),
                Guard::Absent("/t/c".into()),
            ],
            &[Write::Put("/t/c".into(), b"y".to_vec())],
        )
        .unwrap();
    // The failed transaction reports the guarded keys' current state.
    let current_a = db.get("/t/a").unwrap();
    assert_eq!(not_applied, TxnOutcome::Conflict(vec![current_a, None]));
    assert_eq!(db.get("/t/c").unwrap(), None);

    let listed: Vec<_> = db
        .list("/t/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(listed, ["/t/a", "/t/b"]);
    // A batch of reads is one consistent snapshot, in one round trip.
    let batch = db
        .read(&[
            Read::Key("/t/a".into()),
            Read::PrefixKeys("/t/".into()),
            Read::Key("/none".into()),
        ])
        .unwrap();
    assert_eq!(batch[0][0].value, b"3");
    assert_eq!(batch[1].len(), 2);
    assert!(batch[1][0].value.is_empty(), "keys only");
    assert!(batch[2].is_empty());
    let b = db.get("/t/b").unwrap().unwrap();
    assert!(!db.delete("/t/b", b.mod_revision - 1).unwrap());
    assert!(db.delete("/t/b", b.mod_revision).unwrap());
    assert_eq!(db.get("/t/b").unwrap(), None);
}

#[test]
fn mutual_tls_works_with_the_right_identity_only() {
    require!("etcd");
    let server = testkit::Etcd::start_tls().unwrap();
    let config = EtcdConfig {
        ca_cert_file: Some(server.ca_path()),
        cert_file: Some(server.cert_path()),
        key_file: Some(server.key_path()),
        ..plain_config(&server.endpoints())
    };
    let db = Etcd::connect(&config).unwrap();
    db.put("/tls/k", b"v".to_vec()).unwrap();
    assert_eq!(db.get("/tls/k").unwrap().unwrap().value, b"v");

    let wrong = EtcdConfig {
        cert_file: Some(server.wrong_cert_path()),
        key_file: Some(server.wrong_key_path()),
        request_timeout: Duration::from_secs(2),
        ..config.clone()
    };
    let err = Etcd::connect(&wrong)
        .and_then(|db| db.get("/tls/k"))
        .unwrap_err();
    assert!(
        matches!(err, EtcdError::Tls { .. }),
        "wrong client certificate: {err}"
    );
    assert!(err.to_string().contains(&server.endpoints()), "{err}");

    let anonymous = EtcdConfig {
        cert_file: None,
        key_file: None,
        request_timeout: Duration::from_secs(2),
        ..config.clone()
    };
    let err = Etcd::connect(&anonymous)
        .and_then(|db| db.get("/tls/k"))
        .unwrap_err();
    assert!(
        matches!(err, EtcdError::Tls { .. }),
        "no client certificate: {err}"
    );

    let missing = EtcdConfig {
        key_file: Some("/nonexistent/key.pem".into()),
        ..config
    };
    let err = Etcd::connect(&missing).err().expect("unreadable key");
    assert!(matches!(err, EtcdError::Config(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
}

/// A server certificate our CA did not sign fails the handshake in the connector; that is a
/// TLS error (fix the certificates), not an unreachable etcd (retry later).
#[test]
fn an_untrusted_server_certificate_is_a_tls_error() {
    require!("etcd");
    let server = testkit::Etcd::start_tls().unwrap();
    let pki = server.pki().expect("TLS member");
    let config = EtcdConfig {
        ca_cert_file: Some(pki.wrong_ca_path()),
        cert_file: Some(server.cert_path()),
        key_file: Some(server.key_path()),
        request_timeout: Duration::from_secs(2),
        ..plain_config(&server.endpoints())
    };
    let err = Etcd::connect(&config)
        .and_then(|db| db.get("/tls/k"))
        .unwrap_err();
    assert!(
        matches!(err, EtcdError::Tls { .. }),
        "untrusted server: {err}"
    );
    assert!(!err.is_unreachable(), "{err}");
}

#[test]
fn an_unreachable_endpoint_is_reported_as_such_and_quickly() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = EtcdConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(800),
        ..plain_config(&endpoint)
    };
    let started = Instant::now();
    let err = Etcd::connect(&config)
        .and_then(|db| db.get("/x"))
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_cluster_keeps_serving_when_the_leader_stops() {
    require!("etcd");
    let cluster = EtcdCluster::start(3).unwrap();
    let db = Etcd::connect(&plain_config(&cluster.endpoints())).unwrap();
    assert!(db.create("/c/before", b"1".to_vec()).unwrap());

    let leader = cluster.leader_index().unwrap();
    cluster.member(leader).stop().unwrap();
    // The same connection (all three endpoints) keeps working on the two left; a request
    // may land on the stopped member while the balancer notices, so allow a few tries.
    let mut created = false;
    for _ in 0..20 {
        match db.create("/c/during", b"2".to_vec()) {
            Ok(c) => {
                created = c;
                break;
            }
            Err(e) if e.is_unreachable() => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(created, "no write succeeded with the leader stopped");
    cluster.member(leader).restart().unwrap();
    let back = cluster.member(leader).ctl().get("/c/during").unwrap();
    assert_eq!(back.as_deref(), Some("2"));
}
