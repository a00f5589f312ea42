//! Random update sequences: after every update the incrementally maintained table equals a
//! fresh build from the objects that exist at that point (mirrors the contract of Felix's
//! calculation graph: the dataplane depends on the state, not on the order of updates).
//! Objects are drawn from small pools of variants (labels, nodes, selectors, ports, profile
//! labels, network sets) so that every index path (a label change that moves an endpoint
//! between sets, a profile's labels reaching its endpoints, a policy going inactive) is hit.

use calico_policy::{EngineConfig, PolicyEngine};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A tiny deterministic generator (no dependency, reproducible by seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn endpoint(r: &mut Lcg, i: usize) -> Value {
    let apps = ["web", "db", "fe"];
    let nodes = ["n1", "n1", "n2"];
    let mut labels = json!({"app": apps[r.next(3)]});
    if r.next(2) == 0 {
        labels["tier"] = json!("gold");
    }
    let ns = ["a", "b"][i % 2];
    let proto = ["TCP", "UDP"][r.next(2)];
    let port = 8000 + r.next(3);
    let node = nodes[r.next(3)];
    let v4 = format!("10.0.{}.{}/32", r.next(2), i + 1);
    json!({"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": format!("ep{i}"), "namespace": ns, "labels": labels},
        "spec": {"orchestrator": "k8s", "node": node, "pod": format!("p{i}"),
            "endpoint": "eth0", "interfaceName": format!("cali{i}"),
            "ipNetworks": [v4, format!("fd00::{:x}/128", i + 1)],
            "profiles": [format!("kns.{ns}")],
            "ports": [{"name": "http", "protocol": proto, "port": port,
                "hostPort": 0, "hostIP": ""}]}})
}

fn profile(r: &mut Lcg, i: usize) -> Value {
    let ns = ["a", "b"][i % 2];
    let team = ["x", "y"][r.next(2)];
    json!({"kind": "Profile", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": format!("kns.{ns}")},
        "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
            "labelsToApply": {"pcns.team": team}}})
}

fn policy(r: &mut Lcg, i: usize) -> Value {
    let sels = [
        "app == 'web'",
        "all()",
        "tier == 'gold'",
        "app == 'db' || app == 'fe'",
        "app == 'none'",
    ];
    let peers = [
        json!({"selector": "app == 'fe'"}),
        json!({"namespaceSelector": "team == 'x'"}),
        json!({"selector": "has(tier)", "notSelector": "app == 'db'"}),
        json!({"nets": ["10.9.0.0/16"], "notNets": ["10.9.1.0/24"]}),
        json!({"selector": "kind == 'ext'"}),
    ];
    let ports = [json!([80]), json!(["http"]), json!(["http", "9000:9100"])];
    let action = ["Allow", "Deny", "Pass", "Log"][r.next(4)];
    let peer = peers[r.next(5)].clone();
    let mut rule = json!({"action": action, "source": peer});
    if r.next(2) == 0 {
        rule["protocol"] = json!("TCP");
        let p = ports[r.next(3)].clone();
        rule["destination"] = json!({"ports": p});
    }
    let tier = ["default", "t1"][r.next(2)];
    let sel = sels[r.next(5)];
    let mut p = json!({"apiVersion": "projectcalico.org/v3",
        "spec": {"tier": tier, "selector": sel, "ingress": [rule.clone()], "egress": [rule]}});
    if r.next(3) == 0 {
        p["spec"]["order"] = json!(r.next(3));
    }
    if i.is_multiple_of(3) {
        p["kind"] = json!("GlobalNetworkPolicy");
        p["metadata"] = json!({"name": format!("{tier}.g{i}")});
    } else {
        p["kind"] = json!("NetworkPolicy");
        let ns = ["a", "b"][i % 2];
        p["metadata"] = json!({"name": format!("{tier}.p{i}"), "namespace": ns});
    }
    p
}

fn netset(r: &mut Lcg, i: usize) -> Value {
    let kind = ["ext", "int"][r.next(2)];
    let net = format!("192.168.{}.0/24", r.next(3));
    json!({"kind": "GlobalNetworkSet", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": format!("s{i}"), "labels": {"kind": kind}},
        "spec": {"nets": [net, "fd99::/64"]}})
}

fn tier(r: &mut Lcg) -> Value {
    let order = 10 + r.next(2);
    let action = ["Deny", "Pass"][r.next(2)];
    json!({"kind": "Tier", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "t1"},
        "spec": {"order": order, "defaultAction": action}})
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["kind"].as_str().unwrap_or_default(),
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn kind(v: &Value) -> calico_policy::ResourceKind {
    let k = v["kind"].as_str().unwrap_or_default();
    calico_policy::ResourceKind::ALL
        .iter()
        .map(|(k, _)| *k)
        .find(|c| c.name() == k)
        .unwrap_or_else(|| panic!("kind {k}"))
}

fn upsert(e: &mut PolicyEngine, v: &Value) {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let _ = e.upsert_stored(
        kind(v),
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default(),
        &bytes,
    );
}

#[test]
fn random_update_sequences_match_a_fresh_build() {
    for seed in 1..=12u64 {
        let mut r = Lcg(seed);
        let mut e = PolicyEngine::new("n1", EngineConfig::default());
        // The same updates in lean mode (no copy of the chains, fingerprints only).
        let mut lean = PolicyEngine::new(
            "n1",
            EngineConfig {
                lean: true,
                ..Default::default()
            },
        );
        let mut live: BTreeMap<String, Value> = BTreeMap::new();
        for step in 0..150 {
            let which = r.next(6);
            let i = r.next(8);
            let obj = match which {
                0 | 1 => endpoint(&mut r, i),
                2 => policy(&mut r, i % 6),
                3 => profile(&mut r, i % 2),
                4 => netset(&mut r, i % 3),
                _ => tier(&mut r),
            };
            let k = key(&obj);
            if r.next(4) == 0 && live.contains_key(&k) {
                live.remove(&k);
                lean.remove_stored(
                    kind(&obj),
                    obj["metadata"]["namespace"].as_str().unwrap_or_default(),
                    obj["metadata"]["name"].as_str().unwrap_or_default(),
                );
                e.remove_stored(
                    kind(&obj),
                    obj["metadata"]["namespace"].as_str().unwrap_or_default(),
                    obj["metadata"]["name"].as_str().unwrap_or_default(),
                );
            } else {
                upsert(&mut e, &obj);
                upsert(&mut lean, &obj);
                live.insert(k, obj);
            }
            if r.next(3) == 0 && step % 2 == 0 {
                continue; // let a few updates batch up before the table is read
            }
            let got = e.desired().clone();
            let mut fresh = PolicyEngine::new("n1", EngineConfig::default());
            // A different order: by key, reversed.
            for v in live.values().rev() {
                upsert(&mut fresh, v);
            }
            assert!(
                &got == fresh.desired(),
                "seed {seed} step {step}: incremental and fresh tables differ"
            );
            assert_eq!(
                e.programmed_endpoints(),
                fresh.programmed_endpoints(),
                "seed {seed} step {step}"
            );
            assert!(e.full_table() == got, "seed {seed} step {step}: full_table");
            assert!(lean.full_table() == got, "seed {seed} step {step}: lean");
        }
    }
}
