//! Golden tests (holo style): each `testdata/routing/<case>/input.yaml` holds Calico resources
//! (Node, BGPConfiguration, BGPPeer, IPPool, as calicoctl applies them) and one `kind:
//! TestCase` document (the node to plan for, its IPAM block affinities, secrets, learned
//! routes); `expected.txt` is the rendered BgpPlan, kernel routes and VxlanPlan.
//! `UPDATE_GOLDEN=1 cargo nextest run -p calico-routing --test golden` rewrites the files.
//!
//! Each case's `mirrors:` names the Calico test it follows (`confd/tests/mock_data/calicoctl/...`
//! input and `confd/tests/compiled_templates/...` expected BIRD config of release-v3.32, or
//! Felix's unit test); the comment at the top of expected.txt repeats it.

use calico_datastore::model::{BgpConfiguration, BgpPeer, IpPool, Node};
use calico_routing::render::{render_bgp, render_route, render_vxlan};
use calico_routing::{
    ClusterView, PlanOptions, bgp_plan, kernel_routes, vxlan_plan, vxlan_plan_v6,
};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestCase {
    #[serde(default)]
    kind: String,
    mirrors: String,
    node: String,
    #[serde(default)]
    router_id: Option<String>,
    #[serde(default)]
    advertise_cluster_ips: Option<Vec<IpNet>>,
    /// Lines of Calico's `confd/tests/mock_data/etcd/block` form:
    /// `/calico/ipam/v2/host/<node>/ipv4/block/<a.b.c.d-len> <json>`.
    #[serde(default)]
    ipam_blocks: Vec<String>,
    #[serde(default)]
    secrets: Vec<Secret>,
    #[serde(default)]
    learned: Vec<Learned>,
    #[serde(default)]
    local_subnets: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secret {
    name: String,
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Learned {
    dst: IpNet,
    via: Vec<IpAddr>,
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/routing")
}

/// Calico's YAML goes through the typed structs, so label values such as `true` are strings
/// and an empty `spec:` is an empty spec.
fn normalise(doc: &mut Value) {
    if let Some(labels) = doc
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for v in labels.values_mut() {
            if !v.is_string() {
                let text = if v.is_null() {
                    String::new()
                } else {
                    v.to_string()
                };
                *v = Value::String(text);
            }
        }
    }
    if let Some(obj) = doc.as_object_mut()
        && obj.get("spec").is_none_or(Value::is_null)
    {
        obj.insert("spec".into(), Value::Object(Default::default()));
    }
}

/// An etcd block-affinity line: (node, block) unless the affinity is pending.
fn affinity(line: &str) -> Option<(String, IpNet)> {
    let (key, value) = line.trim().split_once(' ').unwrap_or((line.trim(), "{}"));
    let rest = key
        .strip_prefix("/calico/ipam/v2/host/")
        .expect("block key");
    let (node, rest) = rest.split_once('/').expect("node");
    let (_family, cidr) = rest.split_once("/block/").expect("block");
    let (addr, len) = cidr.rsplit_once('-').expect("cidr");
    let state: Value = serde_json::from_str(value).expect("affinity json");
    if state.get("state").and_then(Value::as_str) == Some("pending") {
        return None;
    }
    let net: IpNet = format!("{addr}/{len}").parse().expect("block cidr");
    Some((node.to_string(), net))
}

fn load(path: &Path) -> (ClusterView, TestCase) {
    let text = std::fs::read_to_string(path).expect("input.yaml");
    let mut view = ClusterView::default();
    let mut case = None;
    for de in serde_norway::Deserializer::from_str(&text) {
        let mut doc = Value::deserialize(de).expect("yaml document");
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind != "TestCase" {
            normalise(&mut doc);
        }
        match kind.as_str() {
            "Node" => view
                .nodes
                .push(serde_json::from_value::<Node>(doc).expect("Node")),
            "BGPConfiguration" => view
                .bgp_configurations
                .push(serde_json::from_value::<BgpConfiguration>(doc).expect("BGPConfiguration")),
            "BGPPeer" => view
                .bgp_peers
                .push(serde_json::from_value::<BgpPeer>(doc).expect("BGPPeer")),
            "IPPool" => view
                .pools
                .push(serde_json::from_value::<IpPool>(doc).expect("IPPool")),
            "TestCase" => case = Some(serde_json::from_value::<TestCase>(doc).expect("TestCase")),
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
    let case = case.unwrap_or_else(|| panic!("{}: no TestCase document", path.display()));
    assert_eq!(case.kind, "TestCase");
    view.affinities = case
        .ipam_blocks
        .iter()
        .filter_map(|l| affinity(l))
        .collect();
    (view, case)
}

fn run_case(dir: &Path) -> String {
    let (view, case) = load(&dir.join("input.yaml"));
    let secrets: BTreeMap<(String, String), String> = case
        .secrets
        .iter()
        .map(|s| ((s.name.clone(), s.key.clone()), s.value.clone()))
        .collect();
    let opts = PlanOptions {
        router_id: case.router_id.clone(),
        advertise_cluster_ips: case.advertise_cluster_ips.clone(),
    };
    let mut out = format!("# mirrors {}\n== bgp\n", case.mirrors);
    match bgp_plan(&view, &case.node, &opts, &secrets) {
        Ok(plan) => out.push_str(&render_bgp(&plan)),
        Err(e) => out.push_str(&format!("error {e}\n")),
    }
    out.push_str("== kernel\n");
    let learned: BTreeMap<IpNet, calico_routing::NextHops> = case
        .learned
        .iter()
        .map(|l| (l.dst, l.via.clone().into()))
        .collect();
    for r in kernel_routes(&view, &case.node, &opts, &learned, &case.local_subnets) {
        out.push_str(&format!("route {}\n", render_route(&r)));
    }
    out.push_str("== vxlan\n");
    out.push_str(&render_vxlan(&vxlan_plan(&view, &case.node)));
    let v6 = vxlan_plan_v6(&view, &case.node);
    if v6.local.is_some() || !v6.remotes.is_empty() {
        out.push_str("== vxlan-v6\n");
        out.push_str(&render_vxlan(&v6));
    }
    out
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata/routing")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "golden cases missing: {dirs:?}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let got = run_case(dir);
        let expected_path = dir.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n+++ got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ (UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
