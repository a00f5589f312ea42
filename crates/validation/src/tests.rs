//! The validator against the cases of Calico's `validator_test.go` (release-v3.32) that
//! concern the policy resources, with the messages calicoctl prints.

#![allow(clippy::unwrap_used)]

use crate::*;
use calico_datastore::model::Profile;
use calico_datastore::model::policy::{
    FelixConfiguration, GlobalNetworkPolicy, NetworkPolicy, NetworkSet, Tier,
};
use serde_json::{Value, json};

fn np(spec: Value) -> NetworkPolicy {
    serde_json::from_value(
        json!({"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":"p1","namespace":"default"},"spec":spec}),
    )
    .unwrap()
}

fn named_np(name: &str) -> NetworkPolicy {
    let mut p = np(json!({}));
    p.metadata.name = name.into();
    p
}

fn gnp(name: &str, spec: Value) -> GlobalNetworkPolicy {
    serde_json::from_value(
        json!({"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":name},"spec":spec}),
    )
    .unwrap()
}

/// The message of a policy with one ingress rule.
fn rule_err(rule: Value) -> String {
    match network_policy(&np(json!({"ingress": [rule]}))) {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn ok_rule(rule: Value) {
    assert_eq!(rule_err(rule.clone()), "", "{rule}");
}

#[test]
fn a_full_valid_policy_passes() {
    let p = np(json!({
        "tier": "default", "order": 100, "selector": "app == 'web'",
        "types": ["Ingress", "Egress"], "serviceAccountSelector": "role == 'x'",
        "ingress": [
            {"action": "Allow", "protocol": "TCP",
             "source": {"selector": "role == 'fe'", "namespaceSelector": "global()",
                        "nets": ["10.0.0.0/8", "10.1.2.3/32"], "notNets": ["10.9.0.0/16"]},
             "destination": {"ports": [80, "8000:8080", "http"], "notPorts": ["9000"]}},
            {"action": "Deny", "ipVersion": 4, "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
            {"action": "Pass", "protocol": 17, "destination": {"ports": [53]}},
            {"action": "Log", "notProtocol": "ICMPv6", "ipVersion": 6,
             "notICMP": {"type": 128}, "source": {"nets": ["fd00::/64"]}},
            {"action": "Allow", "destination": {"ports": ["named-only"]}},
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["a"], "selector": "x == 'y'"}}}
        ],
        "egress": [{"action": "Allow", "protocol": "SCTP", "destination": {"ports": [1, 65535]}}]
    }));
    assert_eq!(network_policy(&p), Ok(()));
}

#[test]
fn actions_are_allow_deny_log_pass() {
    assert_eq!(
        rule_err(json!({"action": "allow"})),
        "error with the following fields:\n\
         -  Action = 'allow' (Reason: failed to validate Field: Action because of Tag: action )\n\
         -  spec.ingress[0].action (supported values: \"Allow\", \"Deny\", \"Log\", \"Pass\")\n"
    );
    for a in ACTIONS_OK {
        ok_rule(json!({ "action": a }));
    }
}

const ACTIONS_OK: [&str; 4] = ["Allow", "Deny", "Log", "Pass"];

#[test]
fn protocols_are_names_or_numbers_1_to_255() {
    for p in [
        json!("TCP"),
        json!("UDPLite"),
        json!("ICMPv6"),
        json!(132),
        json!(255),
    ] {
        ok_rule(json!({"action": "Allow", "protocol": p}));
    }
    assert_eq!(
        rule_err(json!({"action": "Allow", "protocol": "tcp"})),
        "error with field Protocol = 'tcp' (protocol name invalid)"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "notProtocol": 0})),
        "error with field Protocol = '0' (protocol number invalid)"
    );
}

#[test]
fn icmp_type_and_code_ranges_and_protocol() {
    ok_rule(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 254, "code": 255}}));
    assert_eq!(
        rule_err(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}})),
        "error with the following fields:\n\
         -  Type = '255' (Reason: failed to validate Field: Type because of Tag: lte )\n\
         -  spec.ingress[0].icmp.type (spec.ingress[0].icmp.type in body should be less than or equal to 254)\n"
    );
    assert!(
        rule_err(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 1, "code": 256}}))
            .contains("Code = '256' (Reason: failed to validate Field: Code because of Tag: lte )")
    );
    assert!(
        rule_err(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"type": -1}}))
            .contains("Tag: gte ")
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 3}})),
        "error with the following fields:\n\
         -  Code = '3' (ICMP code specified without an ICMP type)\n\
         -  spec.ingress[0].icmp (ICMP code specified without an ICMP type)\n"
    );
    // ICMP fields need the ICMP or ICMPv6 protocol by name (Go compares the names).
    for proto in [json!("TCP"), json!(1)] {
        assert_eq!(
            rule_err(json!({"action": "Allow", "protocol": proto, "icmp": {"type": 8}})),
            "error with field ICMP = '&{8 <nil>}' (rules that specify ICMP fields must set protocol to ICMP)"
        );
    }
    assert!(
        rule_err(json!({"action": "Allow", "icmp": {"type": 8}}))
            .contains("must set protocol to ICMP")
    );
    ok_rule(json!({"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}}));
}

#[test]
fn ip_version_matches_icmp_and_nets() {
    assert_eq!(
        rule_err(json!({"action": "Allow", "ipVersion": 5})),
        "error with the following fields:\n\
         -  IPVersion = '5' (Reason: failed to validate Field: IPVersion because of Tag: ipVersion )\n\
         -  spec.ingress[0].ipVersion (supported values: \"4\", \"6\")\n"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "ipVersion": 6, "protocol": "ICMP"})),
        "error with field IPVersion = '<nil>' (must set ipversion to '4' with protocol icmp)"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "ipVersion": 4, "notProtocol": "ICMPv6"})),
        "error with field IPVersion = '<nil>' (must set ipversion to '6' with protocol icmpv6)"
    );
    assert_eq!(
        rule_err(
            json!({"action": "Allow", "ipVersion": 4, "destination": {"nets": ["fd00::/64"]}})
        ),
        "error with field Destination.Nets = '[]' (rule IP version doesn't match CIDR version)"
    );
    assert_eq!(
        rule_err(
            json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"nets": ["fd00::/64"]}})
        ),
        "error with field Destination.Nets = '[fd00::/64]' (rule contains both IPv4 and IPv6 CIDRs)"
    );
}

#[test]
fn ports_need_a_protocol_that_has_them() {
    assert_eq!(
        rule_err(json!({"action": "Allow", "destination": {"ports": [80, "http"]}})),
        "error with field Destination.Ports = '[80 http]' (rules with numeric port or port range must set protocol to TCP or UDP or SCTP)"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "protocol": "ICMP", "source": {"notPorts": ["http"]}})),
        "error with field Source.NotPorts = '[http]' (rules that specify ports must set protocol to TCP or UDP or SCTP)"
    );
    // UDPLite is a protocol, but not one with ports for Calico.
    assert!(
        rule_err(json!({"action": "Allow", "protocol": "UDPLite", "destination": {"ports": [5]}}))
            .contains("must set protocol to TCP or UDP or SCTP")
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [0]}})),
        "error with field Port = '0' (port range invalid, port number must be between 1 and 65535)"
    );
    ok_rule(json!({"action": "Allow", "protocol": "UDP", "source": {"ports": ["1:65535"]}}));
}

#[test]
fn nets_are_strict_cidrs() {
    assert_eq!(
        rule_err(json!({"action": "Allow", "source": {"nets": ["10.0.0.1/24"]}})),
        "error with field Nets[0] = '10.0.0.1/24' (Reason: failed to validate Field: Nets[0] because of Tag: net )"
    );
    assert!(
        rule_err(json!({"action": "Allow", "source": {"nets": ["nonsense"]}}))
            .contains("Source.Nets = 'nonsense' (invalid CIDR)")
    );
    // A bare address passes the `net` tag but is not a CIDR for validateRule.
    assert_eq!(
        rule_err(json!({"action": "Allow", "source": {"nets": ["10.1.2.3"]}})),
        "error with field Source.Nets = '10.1.2.3' (invalid CIDR)"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "destination": {"notNets": ["0.0.0.0/0"]}})),
        "error with field Destination.NotNets = '0.0.0.0/0' (catch-all CIDR in negation creates logical contradiction (matches no traffic))"
    );
    assert!(
        rule_err(json!({"action": "Allow", "source": {"notNets": ["::/0"]}})).contains("catch-all")
    );
}

#[test]
fn selectors_parse_and_global_is_only_a_namespace_selector() {
    assert_eq!(
        rule_err(json!({"action": "Allow", "source": {"selector": "app == "}})),
        "error with field Selector = 'app == ' (Reason: failed to validate Field: Selector because of Tag: selector )"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "source": {"selector": "global()"}})),
        "error with field Selector field = 'global()' (global() can only be used in an EntityRule namespaceSelector)"
    );
    assert_eq!(
        rule_err(
            json!({"action": "Allow", "source": {"namespaceSelector": "global() && a == 'b'"}})
        ),
        "error with field NamespaceSelector field = 'global() && a == 'b'' (global() cannot be combined with other selectors)"
    );
    let p = np(json!({"selector": "global()"}));
    assert_eq!(
        network_policy(&p).unwrap_err().to_string(),
        "error with field NetworkPolicySpec.Selector = 'global()' (global() can only be used in an EntityRule namespaceSelector)"
    );
    let p = np(json!({"selector": "has("}));
    assert!(
        network_policy(&p)
            .unwrap_err()
            .to_string()
            .contains("Tag: selector")
    );
}

#[test]
fn services_rules() {
    assert_eq!(
        rule_err(
            json!({"action": "Allow", "source": {"services": {"name": "svc"}, "selector": "a == 'b'"}})
        ),
        "error with field Services field = '&{svc }' (cannot specify Selector/NotSelector and Services on the same rule)"
    );
    assert!(
        rule_err(json!({"action": "Allow", "protocol": "TCP", "destination": {"services": {"name": "svc"}, "ports": [80]}}))
            .contains("cannot specify ports with a service selector")
    );
}

#[test]
fn types_are_ingress_or_egress_once() {
    let e = network_policy(&np(json!({"types": ["ingress"]}))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "error with the following fields:\n\
         -  Types[0] = 'ingress' (Reason: failed to validate Field: Types[0] because of Tag: policyType )\n\
         -  spec.types[0] (supported values: \"Ingress\", \"Egress\")\n"
    );
    let e = network_policy(&np(json!({"types": ["Ingress", "Ingress"]}))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "error with field NetworkPolicySpec.Types = '[Ingress Ingress]' ('Ingress' type specified more than once)"
    );
}

#[test]
fn policy_names_per_kind() {
    for ok in ["p", "tier1.p", "knp.default.allow.web", "ossg.default.x"] {
        assert_eq!(network_policy(&named_np(ok)), Ok(()), "{ok}");
    }
    assert_eq!(
        network_policy(&named_np("a.b.c")).unwrap_err().to_string(),
        "error with field Metadata.Name = 'a.b.c' (name must consist of lower case alphanumeric characters or '-' (regex: [a-z0-9]([-a-z0-9]*[a-z0-9])?))"
    );
    // Both the ObjectMeta check and the policy's own name rule fail on capitals.
    let e = network_policy(&named_np("Web")).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(e.0[0].reason.contains("'-' or '.'"), "{e}");
    let long = "a".repeat(254);
    assert!(
        network_policy(&named_np(&long))
            .unwrap_err()
            .to_string()
            .contains("name is too long by 1 bytes")
    );
    assert_eq!(global_network_policy(&gnp("t.p", json!({}))), Ok(()));
    assert!(global_network_policy(&gnp("a.b.c", json!({}))).is_err());
    assert!(global_network_policy(&gnp("knp.default.x", json!({}))).is_err());
}

#[test]
fn labels_and_annotations_are_kubernetes_ones() {
    let mut p = named_np("p");
    p.metadata.labels.insert("bad key!".into(), "v".into());
    let e = network_policy(&p).unwrap_err();
    // Reported by validateObjectMeta and again by validateNetworkPolicy, as Calico does.
    assert_eq!(e.0.len(), 2, "{e}");
    assert_eq!(e.0[0].name, "Metadata.Labels (label)");
    let mut p = named_np("p");
    p.metadata.labels.insert("k".into(), "a b".into());
    assert_eq!(
        network_policy(&p).unwrap_err().0[0].name,
        "Metadata.Labels (value)"
    );
}

#[test]
fn global_policy_pre_dnat_and_do_not_track() {
    let e = global_network_policy(&gnp(
        "g",
        json!({"preDNAT": true, "egress": [{"action": "Allow"}], "types": ["Egress"]}),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("PolicySpec.Egress"), "{e}");
    assert!(
        e.contains("PreDNAT PolicySpec cannot have 'egress' Type"),
        "{e}"
    );
    assert!(e.contains("ApplyOnForward must be true"), "{e}");
    assert!(
        e.contains("spec (preDNAT policy cannot have any egress rules)"),
        "{e}"
    );
    assert_eq!(
        global_network_policy(&gnp(
            "g",
            json!({"doNotTrack": true, "applyOnForward": true})
        )),
        Ok(())
    );
    let e = global_network_policy(&gnp(
        "g",
        json!({"ingress": [{"action": "Allow", "source": {"services": {"name": "s"}}}]}),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "error with field Namespace = '' (must specify a namespace)"
    );
}

fn tier_of_json(name: &str, spec: Value) -> Tier {
    serde_json::from_value(json!({"kind":"Tier","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":name},"spec":spec}))
    .unwrap()
}

#[test]
fn tiers() {
    let mut t = tier_of_json("security", json!({}));
    default_tier(&mut t);
    assert_eq!(t.spec.order, Some(1_000_000.0));
    assert_eq!(t.spec.default_action.as_deref(), Some("Deny"));
    assert_eq!(tier(&t), Ok(()));
    assert_eq!(
        tier(&tier_of_json(
            "sec",
            json!({"order": 10, "defaultAction": "Pass"})
        )),
        Ok(())
    );
    assert_eq!(
        tier(&tier_of_json("sec", json!({"defaultAction": "Allow"})))
            .unwrap_err()
            .to_string(),
        "error with the following fields:\n\
         -  DefaultAction = 'Allow' (Reason: failed to validate Field: DefaultAction because of Tag: oneof )\n\
         -  spec.defaultAction (supported values: \"Pass\", \"Deny\")\n"
    );
    assert_eq!(
        tier(&tier_of_json("a.b", json!({})))
            .unwrap_err()
            .to_string(),
        "error with field Metadata.Name = 'a.b' (name must consist of lower case alphanumeric characters or '-' (regex: [a-z0-9]([-a-z0-9]*[a-z0-9])?))"
    );
    assert!(
        tier(&tier_of_json(&"t".repeat(64), json!({})))
            .unwrap_err()
            .to_string()
            .contains("too long by 1 bytes")
    );
    assert_eq!(
        tier(&tier_of_json(
            "default",
            json!({"order": 5, "defaultAction": "Deny"})
        ))
        .unwrap_err()
        .to_string(),
        "error with field TierSpec.Order = '5' (default tier order must be 1e+06)"
    );
    assert_eq!(
        tier(&tier_of_json(
            "kube-admin",
            json!({"order": 1000, "defaultAction": "Deny"})
        ))
        .unwrap_err()
        .to_string(),
        "error with field Tier (The 'kube-admin' tier must have default action 'Pass')"
    );
    assert_eq!(
        tier(&tier_of_json(
            "kube-baseline",
            json!({"order": 10000000, "defaultAction": "Pass"})
        )),
        Ok(())
    );
}

#[test]
fn network_sets() {
    let set = |nets: Value, labels: Value| -> NetworkSet {
        serde_json::from_value(
            json!({"kind":"NetworkSet","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"s","namespace":"ns","labels":labels},"spec":{"nets":nets}}),
        )
        .unwrap()
    };
    // Not strictly masked and bare addresses are fine in a set (`cidr`, not `net`).
    assert_eq!(
        network_set(&set(
            json!(["10.0.0.1/24", "fd00::1", "10.0.0.0/8"]),
            json!({})
        )),
        Ok(())
    );
    assert_eq!(
        network_set(&set(json!(["10.0.0.0/8", "300.0.0.0/8"]), json!({})))
            .unwrap_err()
            .to_string(),
        "error with field Nets[1] = '300.0.0.0/8' (Reason: failed to validate Field: Nets[1] because of Tag: cidr )"
    );
    assert_eq!(
        global_network_set(&set(json!([]), json!({"projectcalico.org/namespace": "x"})))
            .unwrap_err()
            .to_string(),
        "error with field Metadata.Labels (label) = 'projectcalico.org/namespace' (projectcalico.org/namespace is not a valid label name)"
    );
}

#[test]
fn profiles() {
    let p: Profile =
        serde_json::from_value(json!({"kind":"Profile","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":"kns.default"},
        "spec":{"ingress":[{"action":"Allow"}],"egress":[{"action":"Bogus"}],
                "labelsToApply":{"pcns.projectcalico.org/name":"default","bad key":"x"}}}))
        .unwrap();
    let e = profile(&p).unwrap_err().to_string();
    assert!(e.contains("Action = 'Bogus'"), "{e}");
    assert!(e.contains("spec.egress[0].action"), "{e}");
    assert!(
        e.contains("LabelsToApply = 'map[bad key:x pcns.projectcalico.org/name:default]' (Reason: failed to validate Field: LabelsToApply because of Tag: labels )"),
        "{e}"
    );
}

#[test]
fn felix_configuration_typed_fields() {
    let fc = |spec: Value| -> FelixConfiguration {
        serde_json::from_value(
            json!({"kind":"FelixConfiguration","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"default"},"spec":spec}),
        )
        .unwrap()
    };
    assert_eq!(
        felix_configuration(&fc(
            json!({"defaultEndpointToHostAction": "Accept", "logSeverityScreen": "Info",
            "bpfEnabled": false, "logPrefix": "calico-packet"})
        )),
        Ok(())
    );
    // Case matters to the field tag, not to the CRD's pattern.
    assert_eq!(
        felix_configuration(&fc(json!({"defaultEndpointToHostAction": "accept"})))
            .unwrap_err()
            .to_string(),
        "error with field DefaultEndpointToHostAction = 'accept' (Reason: failed to validate Field: DefaultEndpointToHostAction because of Tag: dropAcceptReturn )"
    );
    let e = felix_configuration(&fc(
        json!({"logSeverityScreen": "Loud", "logPrefix": "a;b"}),
    ))
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    assert_eq!(e.0[1].name, "spec.logSeverityScreen");
    let mut bad = fc(json!({}));
    bad.metadata.name = "Node.X".into();
    assert!(felix_configuration(&bad).is_err());
}

#[test]
fn defaults_as_calico_writes_them() {
    let mut p = np(json!({"egress": [{"action": "Allow"}]}));
    default_network_policy(&mut p);
    assert_eq!(p.spec.types, ["Egress"]);
    assert_eq!(p.spec.tier, "default");
    assert_eq!(p.metadata.labels[LABEL_TIER], "default");
    let mut p = np(
        json!({"tier": "sec", "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}),
    );
    default_network_policy(&mut p);
    assert_eq!(p.spec.types, ["Ingress", "Egress"]);
    assert_eq!(p.metadata.labels[LABEL_TIER], "sec");
    let mut g = gnp("g", json!({"types": ["Egress"]}));
    default_global_network_policy(&mut g);
    assert_eq!(g.spec.types, ["Egress"], "given types stay");
    let mut g = gnp("g", json!({}));
    default_global_network_policy(&mut g);
    assert_eq!(g.spec.types, ["Ingress"]);
    assert_eq!(tier_of(""), "default");
}

#[test]
fn go_floats() {
    for (v, s) in [
        (100.0, "100"),
        (1.5, "1.5"),
        (1_000_000.0, "1e+06"),
        (999_999.0, "999999"),
        (10_000_000.0, "1e+07"),
        (12_345_678.0, "1.2345678e+07"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (0.0, "0"),
        (-3.0, "-3"),
    ] {
        assert_eq!(go_float(v), s, "{v}");
    }
}

#[test]
fn http_matches_and_rule_metadata() {
    ok_rule(json!({"action": "Allow", "protocol": "TCP",
        "http": {"methods": ["GET", "PUT"], "paths": [{"exact": "/a"}, {"prefix": "/b"}]},
        "metadata": {"annotations": {"team": "a"}}}));
    assert_eq!(
        rule_err(json!({"action": "Allow", "http": {"methods": ["GET", "GET"]}})),
        "error with field Methods = '[GET GET]' (Invalid methods (duplicates): [GET GET])"
    );
    assert_eq!(
        rule_err(json!({"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}})),
        "error with field Paths = '[{/a /b}]' (Invalid path match. Both 'exact' and 'prefix' are set)"
    );
    assert!(
        rule_err(json!({"action": "Allow", "http": {"paths": [{"exact": "a?b"}]}}))
            .contains("must start with `/`")
    );
    let e = rule_err(json!({"action": "Deny", "protocol": "UDP", "http": {"methods": ["GET"]}}));
    assert!(
        e.contains(
            "Protocol = 'UDP' (rules that specify HTTP fields must set protocol to TCP or empty)"
        ),
        "{e}"
    );
    assert!(
        e.contains("HTTP = '<http>' (only valid for Allow rules)"),
        "{e}"
    );
    assert!(!e.contains("not allowed in egress rule"), "{e}");
    assert!(
        e.contains("spec.ingress[0] (rules with HTTP match must have protocol TCP or unset)"),
        "{e}"
    );
    let p = np(json!({"egress": [{"action": "Allow", "http": {"methods": ["GET"]}}]}));
    assert!(
        network_policy(&p)
            .unwrap_err()
            .to_string()
            .contains("HTTP = '<http>' (not allowed in egress rule)")
    );
    assert!(
        rule_err(json!({"action": "Allow", "metadata": {"annotations": {"bad key": "x"}}}))
            .starts_with("error with field Metadata.Annotations (key) = 'bad key'")
    );
}
