//! Golden tests: the bytes we store are Calico's schema. Fixtures in Calico's older and
//! newer block schemas (testdata/calico) are read, used and rewritten with every unknown
//! field kept. Regenerate with `UPDATE_GOLDEN=1` and review the diff.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calico_datastore::model::{IpPoolSpec, Resource, keys};
use calico_datastore::{Etcd, EtcdConfig};
use calico_ipam::{AssignRequest, Ipam};
use ipnet::IpNet;
use testkit::require;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/calico")
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_777_629_600)
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = testdata().join("golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{actual}\n")).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        expected.trim_end(),
        "{name} differs from the golden file"
    );
}

fn raw(db: &Etcd, key: &str) -> String {
    String::from_utf8(db.get(key).unwrap().unwrap().value).unwrap()
}

fn setup(pool_cidr: &str) -> (testkit::Etcd, Etcd) {
    let etcd = testkit::Etcd::start().unwrap();
    let db = Etcd::connect(&EtcdConfig::new(vec![etcd.endpoints()])).unwrap();
    let mut spec = IpPoolSpec::for_cidr(pool_cidr);
    spec.block_size = 29;
    db.put(
        &keys::resource("ippools", "golden"),
        Resource::new("IPPool", "golden", spec).to_stored().unwrap(),
    )
    .unwrap();
    // The node is registered, as calico-node does.
    db.put(
        &keys::resource("nodes", "node-1"),
        Resource::new("Node", "node-1", serde_json::json!({}))
            .to_stored()
            .unwrap(),
    )
    .unwrap();
    (etcd, db)
}

fn new_pod() -> AssignRequest {
    let attrs: BTreeMap<String, String> = [
        ("namespace", "default"),
        ("node", "node-1"),
        ("pod", "new"),
        ("timestamp", "2026-05-01 10:00:00.25 +0000 UTC"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    AssignRequest {
        handle: "golden.new".into(),
        attrs,
        num_v4: 1,
        ..AssignRequest::default()
    }
}

#[test]
fn a_fresh_claim_writes_calicos_block_affinity_and_handle() {
    require!("etcd");
    let (_etcd, db) = setup("10.66.0.0/24");
    let got = Ipam::new(&db, "node-1")
        .with_clock(t0)
        .auto_assign(&new_pod())
        .unwrap();
    let cidr: IpNet = got.v4[0].trunc();
    golden("fresh-block.json", &raw(&db, &keys::block(&cidr)));
    golden(
        "fresh-affinity.json",
        &raw(&db, &keys::affinity("node-1", &cidr)),
    );
    golden("fresh-handle.json", &raw(&db, &keys::handle("golden.new")));
    // After the last address goes, the handle is gone and the block is written back with
    // an empty attribute list (as Calico rebuilds it).
    Ipam::new(&db, "node-1")
        .release_by_handle("golden.new")
        .unwrap();
    assert!(db.get(&keys::handle("golden.new")).unwrap().is_none());
    golden("fresh-block-released.json", &raw(&db, &keys::block(&cidr)));
}

#[test]
fn every_schema_generation_is_read_used_and_rewritten_with_unknown_fields_kept() {
    require!("etcd");
    for name in ["block-v3.22", "block-v3.31", "block-v3.32", "block-master"] {
        let (_etcd, db) = setup("10.65.0.0/24");
        let fixture = std::fs::read_to_string(testdata().join(format!("{name}.json"))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&fixture).unwrap();
        let cidr: IpNet = value["cidr"].as_str().unwrap().parse().unwrap();
        db.put(&keys::block(&cidr), fixture.trim().as_bytes().to_vec())
            .unwrap();
        db.put(
            &keys::affinity("node-1", &cidr),
            br#"{"state":"confirmed","deleted":false}"#.to_vec(),
        )
        .unwrap();
        db.put(
            &keys::handle("k8s-pod-network.old1"),
            format!(r#"{{"block":{{"{cidr}":1}},"deleted":false}}"#).into_bytes(),
        )
        .unwrap();

        let ipam = Ipam::new(&db, "node-1").with_clock(t0);
        let got = ipam.auto_assign(&new_pod()).unwrap();
        assert_eq!(got.v4[0].trunc(), cidr, "{name}: the affine block is used");
        let released = ipam.release_by_handle("k8s-pod-network.old1").unwrap();
        assert_eq!(released.map(|r| r.len()), Some(1), "{name}");
        golden(
            &format!("{name}.after.json"),
            &raw(&db, &keys::block(&cidr)),
        );
    }
}
