//! The cluster-wide objects Calico's start-up makes sure of (`EnsureInitialized`,
//! `ensureDefaultConfig`): `clusterinformations/default` (a random `clusterGUID`, this
//! build's `calicoVersion`, `CLUSTER_TYPE`, `datastoreReady: true`) and the default tiers
//! (`default`, `kube-admin`, `kube-baseline`), each created when missing.
//!
//! A ClusterInformation that exists keeps every value it has: only empty fields are filled
//! (a GUID, the version, the cluster type; `datastoreReady` when absent, so `false` from an
//! upgrade lock stays). Calico also overwrites a `calicoVersion` that differs from its own.

use super::guarded::{self, Outcome};
use super::{Report, StartupError};
use calico_datastore::model::{
    ClusterInformation, ClusterInformationSpec, DEFAULT_TIERS, default_tier, keys, new_cluster_guid,
};
use calico_datastore::{Guard, KvStore, Read, TxnOutcome, Write};
use std::time::SystemTime;

/// The version written to `calicoVersion`.
pub fn calico_version() -> String {
    format!("v{}", crate::VERSION)
}

/// Calico's default tiers: name, default action, order.
/// Makes sure of `clusterinformations/default` and the tiers.
pub fn ensure(
    store: &dyn KvStore,
    cluster_type: &str,
    now: SystemTime,
    report: &mut Report,
) -> Result<(), StartupError> {
    let key = keys::resource("clusterinformations", "default");
    let outcome = guarded::converge(store, &key, |current| {
        let corrupt = |e: serde_json::Error| StartupError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        };
        let Some(kv) = current else {
            let mut ci = ClusterInformation::new(
                "ClusterInformation",
                "default",
                ClusterInformationSpec {
                    cluster_guid: new_cluster_guid(),
                    cluster_type: cluster_type.to_string(),
                    calico_version: calico_version(),
                    datastore_ready: Some(true),
                    ..ClusterInformationSpec::default()
                },
            );
            ci.stamp_created(now);
            return ci.to_stored().map(Some).map_err(corrupt);
        };
        let stored = ClusterInformation::from_kv(kv).map_err(corrupt)?;
        let mut ci = stored.clone();
        let s = &mut ci.spec;
        if s.cluster_guid.is_empty() {
            s.cluster_guid = new_cluster_guid();
        }
        if s.calico_version.is_empty() {
            s.calico_version = calico_version();
        }
        if s.cluster_type.is_empty() {
            s.cluster_type = cluster_type.to_string();
        }
        if s.datastore_ready.is_none() {
            s.datastore_ready = Some(true);
        }
        if ci == stored {
            return Ok(None);
        }
        ci.to_stored().map(Some).map_err(corrupt)
    })?;
    match outcome {
        Outcome::Created => report.changed("created clusterinformations/default".into()),
        Outcome::Updated => {
            report.changed("filled in the empty fields of clusterinformations/default".into());
        }
        Outcome::Unchanged => log::info!("clusterinformations/default is present"),
    }
    let reads: Vec<Read> = DEFAULT_TIERS
        .iter()
        .map(|(n, ..)| Read::Key(keys::resource("tiers", n)))
        .collect();
    let found = store.read(&reads)?;
    for ((name, action, order), got) in DEFAULT_TIERS.iter().zip(found) {
        if !got.is_empty() {
            continue;
        }
        let tier = default_tier(name, action, *order, now);
        let key = keys::resource("tiers", name);
        let bytes = tier.to_stored().map_err(|e| StartupError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        // Someone else's tier of that name stands.
        if let TxnOutcome::Applied(_) =
            store.txn(&[Guard::Absent(key.clone())], &[Write::Put(key, bytes)])?
        {
            report.changed(format!("created tier {name}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use calico_datastore::MemKv;
    use serde_json::{Value, json};

    fn t0() -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_629_600)
    }

    fn ci(m: &MemKv) -> Value {
        let kv = m
            .get(&keys::resource("clusterinformations", "default"))
            .unwrap()
            .unwrap();
        serde_json::from_slice(&kv.value).unwrap()
    }

    /// Mirrors client.go `ensureClusterInformation` on an empty datastore, and the tiers of
    /// `EnsureInitialized`.
    #[test]
    fn created_when_missing_kept_when_present() {
        let m = MemKv::new();
        let mut r = Report::default();
        ensure(&m, "typha,bgp", t0(), &mut r).unwrap();
        let spec = &ci(&m)["spec"];
        assert_eq!(spec["clusterGUID"].as_str().unwrap().len(), 32);
        assert_eq!(spec["clusterType"], "typha,bgp");
        assert_eq!(spec["calicoVersion"], calico_version());
        assert_eq!(spec["datastoreReady"], true);
        assert_eq!(r.changes.len(), 4, "{:?}", r.changes);
        let tier: Value = serde_json::from_slice(
            &m.get(&keys::resource("tiers", "default"))
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(
            tier["spec"],
            json!({"order": 1_000_000, "defaultAction": "Deny"})
        );
        let before = m.dump();
        let mut r = Report::default();
        ensure(&m, "other", t0(), &mut r).unwrap();
        assert_eq!(m.dump(), before, "kept as it is");
        assert!(r.changes.is_empty());
    }

    #[test]
    fn only_empty_fields_are_filled() {
        let m = MemKv::new();
        m.put(
            &keys::resource("clusterinformations", "default"),
            br#"{"kind":"ClusterInformation","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"clusterGUID":"abc","calicoVersion":"v3.31.0","datastoreReady":false}}"#,
        );
        ensure(&m, "k8s", t0(), &mut Report::default()).unwrap();
        let spec = &ci(&m)["spec"];
        assert_eq!(spec["clusterGUID"], "abc");
        assert_eq!(spec["calicoVersion"], "v3.31.0");
        assert_eq!(spec["datastoreReady"], false, "an upgrade lock stays");
        assert_eq!(spec["clusterType"], "k8s");
    }
}
