//! The engine's contract with the agent: skipped objects, endpoint status, re-labelling,
//! configuration.

use calico_datastore::model::policy::{
    EntityRule, FelixConfiguration, FelixConfigurationSpec, GlobalNetworkPolicy,
    GlobalNetworkPolicySpec, GlobalNetworkSet, NetworkPolicy, NetworkPolicySpec, NetworkSetSpec,
    Rule,
};
use calico_datastore::model::resources::{
    Profile, ProfileSpec, WorkloadEndpoint, WorkloadEndpointSpec,
};
use calico_netfilter::ruleset::SetElem;
use calico_policy::{EngineConfig, PolicyEngine};
use std::collections::BTreeMap;

fn wep(node: &str, ns: &str, pod: &str, ip: &str, labels: &[(&str, &str)]) -> WorkloadEndpoint {
    let mut w = WorkloadEndpoint::new(
        "WorkloadEndpoint",
        &format!("{node}-k8s-{pod}-eth0"),
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            node: node.into(),
            pod: pod.into(),
            endpoint: "eth0".into(),
            ip_networks: vec![ip.into()],
            profiles: vec![format!("kns.{ns}")],
            interface_name: format!("cali{pod}"),
            mac: "ee:ee:ee:ee:ee:ee".into(),
            ..Default::default()
        },
    );
    w.metadata.namespace = ns.into();
    w.metadata.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    w
}

/// The engine of node `n1`, keeping the chains' text.
fn engine_n1() -> PolicyEngine {
    PolicyEngine::new(
        "n1",
        EngineConfig {
            keep_text: true,
            ..Default::default()
        },
    )
}

fn kns(ns: &str, labels: &[(&str, &str)]) -> Profile {
    Profile::new(
        "Profile",
        &format!("kns.{ns}"),
        ProfileSpec {
            ingress: vec![Rule::allow()],
            egress: vec![Rule::allow()],
            labels_to_apply: labels
                .iter()
                .map(|(k, v)| (format!("pcns.{k}"), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        },
    )
}

fn np(ns: &str, name: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    let mut p = NetworkPolicy::new("NetworkPolicy", name, spec);
    p.metadata.namespace = ns.into();
    p
}

fn from_namespace(sel: &str) -> NetworkPolicySpec {
    let mut rule = Rule::allow();
    rule.source = Some(EntityRule {
        namespace_selector: sel.into(),
        ..Default::default()
    });
    NetworkPolicySpec {
        selector: "all()".into(),
        ingress: vec![rule],
        ..Default::default()
    }
}

fn members(e: &mut PolicyEngine) -> Vec<String> {
    let r = e.desired();
    let mut out: Vec<String> = r
        .sets
        .iter()
        .filter(|(n, _)| n.starts_with("cali40s-"))
        .flat_map(|(_, s)| s.elems.iter())
        .map(|e| match e {
            SetElem::Net(n) => n.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

/// Mirrors felix/calc/validation_filter.go: an update that does not validate acts as a
/// deletion of the object, the rest stays.
#[test]
fn an_invalid_update_removes_the_object_and_keeps_the_rest() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[]))
        .expect("wep");
    e.upsert_network_policy(&np("a", "good", from_namespace("all()")))
        .expect("valid");
    e.upsert_network_policy(&np("a", "other", from_namespace("all()")))
        .expect("valid");
    let chains = |e: &mut PolicyEngine| -> Vec<String> {
        e.desired()
            .chains
            .keys()
            .filter(|c| c.starts_with("filter-cali-pi-"))
            .cloned()
            .collect()
    };
    assert_eq!(chains(&mut e).len(), 2);
    let err = e
        .upsert_network_policy(&np("a", "good", from_namespace("a ==")))
        .expect_err("invalid");
    assert_eq!(err.object.name, "good");
    assert!(err.reason.contains("namespaceSelector"), "{err}");
    assert_eq!(chains(&mut e), ["filter-cali-pi-np/a/other"]);
    assert_eq!(e.skipped().count(), 1);
    // Fixed: enforced again, no longer skipped.
    e.upsert_network_policy(&np("a", "good", from_namespace("all()")))
        .expect("valid");
    assert_eq!(chains(&mut e).len(), 2);
    assert_eq!(e.skipped().count(), 0);
}

#[test]
fn status_lists_local_endpoints_once_their_rules_are_rendered() {
    let mut e = engine_n1();
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[]))
        .expect("wep");
    e.upsert_workload_endpoint(&wep("n2", "a", "p2", "10.0.0.2/32", &[]))
        .expect("wep");
    assert!(e.programmed_endpoints().is_empty(), "not before desired()");
    e.desired();
    let st = e.programmed_endpoints();
    assert_eq!(st.len(), 1, "remote endpoints have no status here");
    assert_eq!(st[0].workload_id, "a/p1");
    assert_eq!(st[0].orchestrator_id, "k8s");
    assert_eq!(st[0].endpoint_id, "eth0");
    assert_eq!(st[0].iface_name, "calip1");
    assert_eq!(st[0].ipv4_nets, ["10.0.0.1/32"]);
    e.remove_workload_endpoint("a", "n1-k8s-p1-eth0");
    e.desired();
    assert!(e.programmed_endpoints().is_empty());
    assert!(!e.desired().chains.contains_key("filter-cali-tw-calip1"));
    let map = &e.desired().maps["filter-cali-to-wl-dispatch"];
    assert!(
        map.elems.is_empty(),
        "fail closed: the interface is unknown again"
    );
}

/// Mirrors Felix's label inheritance (felix/labelindex): a namespace's labels reach its
/// endpoints through the kns. profile, and a change of them re-evaluates the sets.
#[test]
fn profile_label_changes_reach_namespace_selector_sets() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    e.upsert_profile(&kns("b", &[("team", "x")]))
        .expect("profile");
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[]))
        .expect("wep");
    e.upsert_workload_endpoint(&wep("n2", "b", "p2", "10.0.0.2/32", &[]))
        .expect("wep");
    e.upsert_network_policy(&np("a", "from-x", from_namespace("team == 'x'")))
        .expect("policy");
    assert_eq!(members(&mut e), ["10.0.0.2/32"]);
    e.upsert_profile(&kns("b", &[("team", "y")]))
        .expect("profile");
    assert!(members(&mut e).is_empty());
    e.upsert_profile(&kns("a", &[("team", "x")]))
        .expect("profile");
    assert_eq!(members(&mut e), ["10.0.0.1/32"]);
    // An endpoint's own pcns. label is ignored (it must not pretend to be elsewhere).
    e.upsert_workload_endpoint(&wep("n2", "b", "p2", "10.0.0.2/32", &[("pcns.team", "x")]))
        .expect("wep");
    assert_eq!(members(&mut e), ["10.0.0.1/32"]);
}

#[test]
fn the_mark_mask_moves_every_mark_bit() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[]))
        .expect("wep");
    e.desired();
    assert!(e.text().contains("0x10000"));
    let cfg = FelixConfiguration::new(
        "FelixConfiguration",
        "node.n1",
        FelixConfigurationSpec {
            nftables_mark_mask: Some(0x0ff0_0000),
            ..Default::default()
        },
    );
    e.upsert_felix_configuration(&cfg).expect("config");
    e.desired();
    let text = e.text();
    assert!(!text.contains("0x10000 "), "{text}");
    assert!(
        text.contains("meta mark & 0x100000 == 0x100000 return"),
        "{text}"
    );
    let bad = FelixConfiguration::new(
        "FelixConfiguration",
        "default",
        FelixConfigurationSpec {
            nftables_mark_mask: Some(0x3),
            ..Default::default()
        },
    );
    // The node's mask still wins over the cluster's bad one.
    e.upsert_felix_configuration(&bad).expect("node value wins");
    assert_eq!(
        e.felix_configuration().nftables_mark_mask,
        Some(0x0ff0_0000)
    );
}

#[test]
fn a_change_touches_only_what_it_changes() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[]))
        .expect("wep");
    e.upsert_network_policy(&np("a", "pol", from_namespace("all()")))
        .expect("policy");
    e.desired();
    let first = e.take_touched();
    assert!(
        first.chains.contains("filter-FORWARD"),
        "the first call names everything"
    );
    // A rule change: the policy's chain and the sets it now uses, nothing else. The old
    // selector's IPv4 set goes; the new one matches nothing yet, so it has no set (and the
    // chain no rule testing one).
    e.upsert_network_policy(&np("a", "pol", from_namespace("team == 'x'")))
        .expect("policy");
    e.desired();
    let t = e.take_touched();
    assert_eq!(
        t.chains.iter().collect::<Vec<_>>(),
        ["filter-cali-pi-np/a/pol"]
    );
    assert_eq!(t.sets.len(), 1, "old v4 set gone, no new one: {t:?}");
    assert!(t.maps.is_empty());
    // A remote endpoint in no set: nothing.
    e.upsert_workload_endpoint(&wep("n2", "a", "p2", "10.0.0.2/32", &[]))
        .expect("wep");
    e.desired();
    assert_eq!(e.take_touched(), Default::default());
    // Its namespace joins team x: the selector's IPv4 set appears whole, with p1's and p2's
    // addresses, and the policy's chain gains the rule testing it.
    e.upsert_profile(&kns("a", &[("team", "x")]))
        .expect("profile");
    e.desired();
    let t = e.take_touched();
    assert_eq!(
        t.chains.iter().collect::<Vec<_>>(),
        ["filter-cali-pi-np/a/pol"]
    );
    assert_eq!(t.sets.len(), 1, "{t:?}");
    assert!(t.maps.is_empty() && t.elems.is_empty(), "{t:?}");
    let set = t.sets.iter().next().expect("set");
    assert!(set.starts_with("cali40"), "{set}");
    assert_eq!(e.desired().sets[set].elems.len(), 2);
    assert!(e.text().contains(&format!("@{set}")));
    // One more remote endpoint of the namespace: one member more, nothing else.
    e.upsert_workload_endpoint(&wep("n2", "a", "p4", "10.0.0.4/32", &[]))
        .expect("wep");
    e.desired();
    let t = e.take_touched();
    assert!(
        t.chains.is_empty() && t.sets.is_empty() && t.maps.is_empty(),
        "{t:?}"
    );
    assert_eq!(t.elems.len(), 1, "{t:?}");
    let d = t.elems.values().next().expect("delta");
    assert_eq!(d.added.len(), 1, "p4's address: {d:?}");
    assert!(d.removed.is_empty());
    // It goes again, and so does p2: still members left, so still only members.
    e.remove_workload_endpoint("a", "n2-k8s-p4-eth0");
    e.remove_workload_endpoint("a", "n2-k8s-p2-eth0");
    e.desired();
    let t = e.take_touched();
    assert!(t.chains.is_empty() && t.sets.is_empty(), "{t:?}");
    assert_eq!(t.elems.values().next().map(|d| d.removed.len()), Some(2));
    // A new local endpoint: its two chains and the two dispatch maps.
    e.upsert_workload_endpoint(&wep("n1", "a", "p3", "10.0.0.3/32", &[]))
        .expect("wep");
    e.desired();
    let t = e.take_touched();
    assert_eq!(
        t.chains.iter().collect::<Vec<_>>(),
        ["filter-cali-fw-calip3", "filter-cali-tw-calip3"]
    );
    assert_eq!(t.maps.len(), 2);
}

#[test]
fn a_new_endpoint_may_take_over_an_interface_name() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    for round in 0..20 {
        let (old, new) = if round % 2 == 0 {
            ("x", "y")
        } else {
            ("y", "x")
        };
        let mut w = wep("n1", "a", new, "10.0.0.1/32", &[]);
        w.spec.interface_name = "calishared".into();
        e.remove_workload_endpoint("a", &format!("n1-k8s-{old}-eth0"));
        e.upsert_workload_endpoint(&w).expect("wep");
        let r = e.desired();
        assert!(
            r.chains.contains_key("filter-cali-tw-calishared"),
            "round {round}"
        );
        assert!(
            r.maps["filter-cali-to-wl-dispatch"]
                .elems
                .contains_key("calishared")
        );
        assert_eq!(e.programmed_endpoints().len(), 1);
    }
}

/// The lines of the policy chain `filter-cali-pi-gnp/pol` in the wanted table.
fn policy_rules(e: &mut PolicyEngine) -> Vec<String> {
    e.desired();
    let text = e.text();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.contains("chain filter-cali-pi-gnp/pol "))
        .skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.trim() == "}" {
            break;
        }
        out.push(l.trim().split(" comment ").next().unwrap_or("").to_string());
    }
    out
}

/// Allow from `role == 'web'`, deny from anything not `role == 'db'` (global: a namespaced
/// policy's notSelector narrows its namespace's set instead).
fn web_in_not_db_out() -> GlobalNetworkPolicy {
    let mut allow = Rule::allow();
    allow.source = Some(EntityRule {
        selector: "role == 'web'".into(),
        ..Default::default()
    });
    let mut deny = Rule::action("Deny");
    deny.source = Some(EntityRule {
        not_selector: "role == 'db'".into(),
        ..Default::default()
    });
    let spec = GlobalNetworkPolicySpec {
        selector: "all()".into(),
        ingress: vec![allow, deny],
        ..Default::default()
    };
    GlobalNetworkPolicy::new("GlobalNetworkPolicy", "pol", spec)
}

#[test]
fn a_family_set_exists_while_it_has_members_and_its_rules_with_it() {
    let mut e = engine_n1();
    e.upsert_profile(&kns("a", &[])).expect("profile");
    e.upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[("role", "db")]))
        .expect("wep");
    e.upsert_global_network_policy(&web_in_not_db_out())
        .expect("policy");
    // No web endpoint: the allow can never match, in either family; the db set has an IPv4
    // member only, so in IPv6 the deny holds for every source.
    let sets = |e: &mut PolicyEngine| -> Vec<String> {
        let mut s: Vec<String> = (e.desired().sets.keys())
            .filter(|n| n.get(6..).is_some_and(|t| t.starts_with("s-")))
            .map(|n| n[..6].to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(sets(&mut e), ["cali40"]);
    let rules = policy_rules(&mut e);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules[0].starts_with("meta nfproto ipv4 ip saddr != @cali40s-"));
    assert!(
        rules[1].starts_with("meta nfproto ipv6 meta mark set"),
        "{rules:?}"
    );
    e.take_touched();
    // A dual-stack web endpoint elsewhere: both families of its set appear, and the allow
    // rules with them.
    let mut web = wep("n2", "a", "w1", "10.0.0.2/32", &[("role", "web")]);
    web.spec.ip_networks.push("fd00::2/128".into());
    e.upsert_workload_endpoint(&web).expect("wep");
    let touched = {
        e.desired();
        e.take_touched()
    };
    assert_eq!(
        touched.chains.iter().collect::<Vec<_>>(),
        ["filter-cali-pi-gnp/pol"]
    );
    assert_eq!(touched.sets.len(), 2, "{touched:?}");
    assert_eq!(sets(&mut e), ["cali40", "cali40", "cali60"]);
    let rules = policy_rules(&mut e);
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(rules[0].starts_with("meta nfproto ipv4 ip saddr @cali40s-"));
    assert!(rules[1].starts_with("meta nfproto ipv6 ip6 saddr @cali60s-"));
    // A network set of web addresses brings a prefix: the IPv4 set becomes an interval set
    // under its own name, and the rule names it; when the prefix goes, back again.
    let mut web_net = GlobalNetworkSet::new(
        "GlobalNetworkSet",
        "web-net",
        NetworkSetSpec {
            nets: vec!["192.0.2.0/24".into()],
            ..Default::default()
        },
    );
    web_net.metadata.labels = [("role".to_string(), "web".to_string())].into();
    e.upsert_global_network_set(&web_net).expect("netset");
    let rules = policy_rules(&mut e);
    assert!(
        rules[0].starts_with("meta nfproto ipv4 ip saddr @cali40p-"),
        "{rules:?}"
    );
    assert!(rules[1].starts_with("meta nfproto ipv6 ip6 saddr @cali60s-"));
    let prefixes = (rules[0].split('@').nth(1))
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("")
        .to_string();
    let set = &e.desired().sets[&prefixes];
    assert!(set.interval && set.elems.len() == 2, "{set:?}");
    assert!(!(e.desired().sets.keys()).any(|n| n == &prefixes.replacen("0p-", "0s-", 1)));
    e.remove_global_network_set("web-net");
    let rules = policy_rules(&mut e);
    assert!(rules[0].starts_with("meta nfproto ipv4 ip saddr @cali40s-"));
    assert!(!e.desired().sets.contains_key(&prefixes));
    // A dual-stack db endpoint: the not-db test returns to IPv6.
    let mut db = wep("n2", "a", "d2", "10.0.0.3/32", &[("role", "db")]);
    db.spec.ip_networks.push("fd00::3/128".into());
    e.upsert_workload_endpoint(&db).expect("wep");
    let rules = policy_rules(&mut e);
    assert!(
        rules[3].starts_with("meta nfproto ipv6 ip6 saddr != @cali60s-"),
        "{rules:?}"
    );
    assert_eq!(sets(&mut e).len(), 4);
    // The web endpoint goes: its set goes with the allow rules; nothing else changes.
    e.take_touched();
    e.remove_workload_endpoint("a", "n2-k8s-w1-eth0");
    let rules = policy_rules(&mut e);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules.iter().all(|r| r.contains("saddr != @")), "{rules:?}");
    let touched = e.take_touched();
    assert_eq!(touched.sets.len(), 2, "{touched:?}");
    assert!(touched.elems.is_empty(), "{touched:?}");
    // What the engine reached step by step is what a fresh one renders.
    let mut fresh = engine_n1();
    fresh.upsert_profile(&kns("a", &[])).expect("profile");
    fresh
        .upsert_workload_endpoint(&wep("n1", "a", "p1", "10.0.0.1/32", &[("role", "db")]))
        .expect("wep");
    fresh.upsert_workload_endpoint(&db).expect("wep");
    fresh
        .upsert_global_network_policy(&web_in_not_db_out())
        .expect("policy");
    fresh.desired();
    e.desired();
    assert_eq!(fresh.text(), e.text());
}
