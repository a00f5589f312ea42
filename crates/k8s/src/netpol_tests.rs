//! The conversion against Calico's own tests (conversion_test.go, release-v3.32) and the
//! golden files of `testdata/knp` (the Kubernetes documentation's examples and the
//! conversion_test.go policies, each expected file written by hand from the Go code; see
//! testdata/knp/README.md). `UPDATE_GOLDEN=1` rewrites the expected files from the
//! conversion: only to start a new case, whose output must then be checked by hand.

#![allow(clippy::unwrap_used)]

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

fn selector(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
    LabelSelector {
        match_labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        match_expressions: (!exprs.is_empty()).then(|| {
            exprs
                .iter()
                .map(|(k, op, vals)| LabelSelectorRequirement {
                    key: k.to_string(),
                    operator: op.to_string(),
                    values: (!vals.is_empty())
                        .then(|| vals.iter().map(|v| v.to_string()).collect()),
                })
                .collect()
        }),
    }
}

/// Mirrors conversion_test.go "Test selector conversion" (every entry), plus sorting of
/// matchLabels and several terms.
#[test]
fn selectors_convert_as_calicos() {
    use SelectorKind::{Namespace, Pod};
    let cases: Vec<(Option<LabelSelector>, SelectorKind, &str)> = vec![
        (
            Some(LabelSelector::default()),
            Pod,
            "projectcalico.org/orchestrator == 'k8s'",
        ),
        (Some(LabelSelector::default()), Namespace, "all()"),
        (
            Some(selector(&[], &[("toast", "DoesNotExist", &[])])),
            Namespace,
            "! has(toast)",
        ),
        (
            Some(selector(&[], &[("toast", "Exists", &[])])),
            Namespace,
            "has(toast)",
        ),
        (
            Some(selector(&[], &[("toast", "In", &["butter", "jam"])])),
            Namespace,
            "toast in { 'butter', 'jam' }",
        ),
        (
            Some(selector(&[], &[("toast", "NotIn", &["marmite", "milk"])])),
            Namespace,
            "toast not in { 'marmite', 'milk' }",
        ),
        (
            Some(selector(&[], &[("toast", "DoesNotExist", &[])])),
            Pod,
            "projectcalico.org/orchestrator == 'k8s' && ! has(toast)",
        ),
        (None, Pod, "projectcalico.org/orchestrator == 'k8s'"),
        (None, Namespace, ""),
        (
            Some(selector(
                &[("label2", "value2"), ("label", "value")],
                &[("k", "In", &["v1", "v2"]), ("z", "Exists", &[])],
            )),
            Pod,
            "projectcalico.org/orchestrator == 'k8s' && label == 'value' && label2 == 'value2' \
             && k in { 'v1', 'v2' } && has(z)",
        ),
        // An operator Calico does not know is skipped; an In without values is kept.
        (
            Some(selector(&[], &[("a", "Bogus", &["x"]), ("b", "In", &[])])),
            Namespace,
            "b in { '' }",
        ),
        (
            Some(selector(&[], &[("a", "Bogus", &["x"])])),
            Namespace,
            "",
        ),
    ];
    for (s, kind, want) in cases {
        assert_eq!(
            k8s_selector_to_calico(s.as_ref(), kind),
            want,
            "{s:?} {kind:?}"
        );
    }
}

fn ports(text: &str) -> Vec<Port> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .map(|p| port_from_string(p).unwrap())
        .collect()
}

fn ports_text(p: &[Port]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Mirrors conversion_test.go's SimplifyPorts table (every `simpleEntry`), plus named ports
/// kept in place when there is nothing to merge.
#[test]
fn ports_simplify_as_calicos() {
    for (input, want) in [
        ("", ""),
        ("0", "0"),
        ("1", "1"),
        ("65535", "65535"),
        ("0:65535", "0:65535"),
        ("1,2", "1:2"),
        ("2,1", "1:2"),
        ("1,2,4", "1:2,4"),
        ("1,2,3,4,80:81,81:90,9090", "1:4,80:90,9090"),
        ("81:90,4,2,80:81,3,1,9090", "1:4,80:90,9090"),
        (
            "81:90,4,2,foo,80:81,3,1,9090,http",
            "foo,http,1:4,80:90,9090",
        ),
        ("foo", "foo"),
        // One numeric port in all: returned as given, names not moved first.
        ("80,foo", "80,foo"),
        ("80,foo,80", "foo,80"),
        ("65534,65535,0:1", "0:1,65534:65535"),
    ] {
        assert_eq!(ports_text(&simplify_ports(ports(input))), want, "{input}");
    }
}

/// `numorstring.PortFromString`'s results and messages.
#[test]
fn ports_parse_as_numorstrings() {
    assert_eq!(port_from_string("80"), Ok(Port::single(80)));
    assert_eq!(
        port_from_string("32000:32768"),
        Ok(Port::Range {
            min: 32000,
            max: 32768
        })
    );
    assert_eq!(port_from_string("-1"), Ok(Port::Named("-1".into())));
    assert_eq!(
        port_from_string("-50:-1"),
        Err("invalid name for named port (-50:-1)".into())
    );
    assert_eq!(
        port_from_string("70000"),
        Err("invalid port format (70000)".into())
    );
    assert_eq!(
        port_from_string("80:70000"),
        Err("invalid maximum port number in range (80:70000)".into())
    );
    assert_eq!(
        port_from_string("90:80"),
        Err(
            "minimum port number (90) is greater than maximum port number (80) in port range"
                .into()
        )
    );
}

/// Go's ParseCIDR + IPNet.String, and conversion_test.go "should have empty and Nil
/// NetworkPolicyPeerfields when an IPBlock is invalid" (192.168.0.0/55).
#[test]
fn cidrs_print_as_gos() {
    for (input, want) in [
        ("192.168.0.0/16", Some("192.168.0.0/16")),
        ("172.17.1.5/16", Some("172.17.0.0/16")),
        ("10.0.0.1/032", Some("10.0.0.1/32")),
        ("0.0.0.0/0", Some("0.0.0.0/0")),
        ("2001:DB8::1/32", Some("2001:db8::/32")),
        ("::ffff:10.1.2.3/120", Some("10.1.2.0/24")),
        ("::ffff:10.1.2.3/80", Some("::/80")),
        ("192.168.0.0/55", None),
        ("192.168.0.0", None),
        ("192.168.0.0/+8", None),
        ("010.0.0.0/8", None),
        ("fe80::1%eth0/64", None),
    ] {
        assert_eq!(go_parse_cidr(input).as_deref(), want, "{input}");
    }
    let mut bad = Vec::new();
    let peer = k8s::NetworkPolicyPeer {
        ip_block: Some(k8s::IPBlock {
            cidr: "192.168.0.0/55".into(),
            except: None,
        }),
        ..Default::default()
    };
    let f = peer_to_calico(&peer, &mut bad);
    assert!(f.nets.is_empty() && f.not_nets.is_empty());
    assert!(f.selector.is_empty() && f.namespace_selector.is_empty());
    assert_eq!(bad, ["192.168.0.0/55"]);
}

fn policy_from_yaml(text: &str) -> k8s::NetworkPolicy {
    serde_norway::from_str(text).unwrap()
}

/// Mirrors conversion_test.go "should drop rules with invalid ports in a k8s NetworkPolicy"
/// (both policies): the rule with a bad port goes, the others stay, Calico's reasons.
#[test]
fn rules_with_bad_ports_are_dropped_with_calicos_reason() {
    let np = policy_from_yaml(
        r#"
metadata: {name: test.policy, namespace: default}
spec:
  podSelector: {matchLabels: {label: value, label2: value2}}
  policyTypes: [Ingress]
  egress:
  - ports: [{port: 80}, {port: foo}]
    to: [{podSelector: {matchLabels: {k: v, k2: v2}}}]
  - ports: [{port: 80}, {port: "-50:-1"}]
    to: [{podSelector: {matchLabels: {k: v, k2: v2}}}]
  - ports: [{port: 80}, {port: "-22:-3"}]
    to: [{podSelector: {matchLabels: {k: v, k2: v2}}}]
"#,
    );
    let c = k8s_network_policy_to_calico(&np);
    assert_eq!(
        c.dropped,
        [
            DroppedRule {
                direction: Direction::Egress,
                index: 1,
                reason: "k8s rule couldn't be converted: failed to parse k8s port: invalid port \
                         -50:-1: invalid name for named port (-50:-1)"
                    .into()
            },
            DroppedRule {
                direction: Direction::Egress,
                index: 2,
                reason: "k8s rule couldn't be converted: failed to parse k8s port: invalid port \
                         -22:-3: invalid name for named port (-22:-3)"
                    .into()
            }
        ]
    );
    assert_eq!(c.policy.spec.egress.len(), 1);
    let d = c.policy.spec.egress[0].destination();
    assert_eq!(d.ports, [Port::single(80), Port::Named("foo".into())]);
    assert_eq!(
        d.selector,
        "projectcalico.org/orchestrator == 'k8s' && k == 'v' && k2 == 'v2'"
    );
    assert_eq!(c.policy.spec.types, ["Ingress"]);
    assert!(c.egress_rules_without_egress_type);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// JSON with every number as a float (Go prints `order: 1000`, serde an f64) and keys
/// sorted, so that two documents compare by content.
fn normalized(v: Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(normalized).collect()),
        Value::Object(m) => {
            let mut sorted: Vec<(String, Value)> = m.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k, normalized(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        other => other,
    }
}

/// For writing: keys sorted (as calicoctl prints), whole floats as integers.
fn printable(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 =>
            {
                #[allow(clippy::cast_possible_truncation)]
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(printable).collect()),
        Value::Object(m) => {
            let mut sorted: Vec<(String, Value)> = m.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k, printable(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        other => other,
    }
}

/// Every `testdata/knp/<case>/input.yaml` converts to its `expected.yaml`.
#[test]
fn golden_cases() {
    let dir = repo_root().join("testdata/knp");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let input = std::fs::read_to_string(case.join("input.yaml")).unwrap();
        let np: k8s::NetworkPolicy =
            serde_norway::from_str(&input).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let got = k8s_network_policy_to_calico(&np);
        let got = serde_json::to_value(&got.policy).unwrap();
        let expected_path = case.join("expected.yaml");
        if update {
            let text = serde_norway::to_string(&printable(got.clone())).unwrap();
            std::fs::write(&expected_path, text).unwrap();
        }
        let expected_text = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let expected: Value = serde_norway::from_str(&expected_text)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        // The expected file must also read as Calico's model, nothing left unknown.
        let typed: NetworkPolicy = serde_json::from_value(expected.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert!(typed.spec.extra.is_empty(), "{}", expected_path.display());
        if normalized(got.clone()) != normalized(expected) {
            failures.push(format!(
                "{}:\n--- got\n{}",
                case.display(),
                serde_norway::to_string(&printable(got)).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
