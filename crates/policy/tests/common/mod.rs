//! What the golden and kernel tests share: the cases under `testdata/policy` and feeding
//! their resources to an engine.

#![allow(dead_code)]

use calico_policy::PolicyEngine;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const NODE: &str = "node1";

pub fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/policy");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("testdata/policy")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no golden cases under {}", root.display());
    dirs
}

pub fn resources(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("input.yaml");
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).expect("YAML");
        if v.is_null() {
            continue;
        }
        if v["kind"] == "List" {
            out.extend(v["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(v);
        }
    }
    out
}

pub fn de<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

/// Feeds one resource; returns the skip reason if any.
pub fn apply(e: &mut PolicyEngine, v: &Value) -> Option<String> {
    let r = match v["kind"].as_str().unwrap_or_default() {
        "WorkloadEndpoint" => e.upsert_workload_endpoint(&de(v)),
        "Profile" => e.upsert_profile(&de(v)),
        "NetworkPolicy" => e.upsert_network_policy(&de(v)),
        "GlobalNetworkPolicy" => e.upsert_global_network_policy(&de(v)),
        "Tier" => e.upsert_tier(&de(v)),
        "NetworkSet" => e.upsert_network_set(&de(v)),
        "GlobalNetworkSet" => e.upsert_global_network_set(&de(v)),
        "IPPool" => e.upsert_ip_pool(&de(v)),
        "Node" => {
            e.upsert_node(&de(v));
            Ok(())
        }
        "FelixConfiguration" => e.upsert_felix_configuration(&de(v)),
        other => panic!("unknown kind {other}"),
    };
    r.err().map(|s| s.to_string())
}

pub fn remove(e: &mut PolicyEngine, v: &Value) {
    let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    match v["kind"].as_str().unwrap_or_default() {
        "WorkloadEndpoint" => e.remove_workload_endpoint(ns, name),
        "Profile" => e.remove_profile(name),
        "NetworkPolicy" => e.remove_network_policy(ns, name),
        "GlobalNetworkPolicy" => e.remove_global_network_policy(name),
        "Tier" => e.remove_tier(name),
        "NetworkSet" => e.remove_network_set(ns, name),
        "GlobalNetworkSet" => e.remove_global_network_set(name),
        "IPPool" => e.remove_ip_pool(name),
        "Node" => e.remove_node(name),
        "FelixConfiguration" => e.remove_felix_configuration(name),
        other => panic!("unknown kind {other}"),
    }
}
