//! Rules and their source/destination (`validateRule`, `validateEntityRule`,
//! `validateProtocol`, `validatePort`, `validateICMPFields` and the field tags of
//! `policy_common.go`), plus the CRD schema's checks on a rule (enums, ICMP ranges, CEL).

use crate::error::{ErroredField, go_list};
use crate::{Errors, check_selector};
use calico_datastore::model::cidr;
use calico_datastore::model::policy::{EntityRule, IcmpFields, Port, Protocol, Rule};
use serde_json::Value;
use std::net::IpAddr;

const PROTOCOL_PORTS_MSG: &str = "rules that specify ports must set protocol to TCP or UDP or SCTP";
const PROTOCOL_SINGLE_OR_RANGE_PORTS_MSG: &str =
    "rules with numeric port or port range must set protocol to TCP or UDP or SCTP";
const PROTOCOL_ICMP_MSG: &str = "rules that specify ICMP fields must set protocol to ICMP";
const PROTOCOL_AND_HTTP_MSG: &str =
    "rules that specify HTTP fields must set protocol to TCP or empty";
const GLOBAL_SELECTOR: &str = "global()";
/// `globalSelectorEntRule`.
pub const GLOBAL_SELECTOR_ENT_RULE: &str =
    "global() can only be used in an EntityRule namespaceSelector";
const GLOBAL_SELECTOR_ONLY: &str = "global() cannot be combined with other selectors";

/// The rule actions (`actionRegex`).
pub const ACTIONS: [&str; 4] = ["Allow", "Deny", "Log", "Pass"];

/// The protocol names `protocolRegex` accepts (case-sensitive).
pub const PROTOCOL_NAMES: [&str; 6] = ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite"];

/// `numorstring.Protocol.SupportsPorts`: 6, 17 and 132, or their names (upper case, or the
/// v1 lower case). UDPLite does not count.
pub fn supports_ports(p: &Protocol) -> bool {
    match p {
        Protocol::Number(n) => matches!(n, 6 | 17 | 132),
        Protocol::Name(s) => matches!(s.as_str(), "TCP" | "UDP" | "SCTP" | "tcp" | "udp" | "sctp"),
    }
}

fn is_name(p: Option<&Protocol>, name: &str) -> bool {
    matches!(p, Some(Protocol::Name(s)) if s == name)
}

/// Go's `%v` of a `*ICMPFields`, shown without the pointers Go prints.
fn icmp_value(icmp: Option<&IcmpFields>) -> String {
    match icmp {
        None => "<nil>".into(),
        Some(i) => {
            let show = |v: Option<i64>| v.map_or("<nil>".to_string(), |n| n.to_string());
            format!("&{{{} {}}}", show(i.icmp_type), show(i.code))
        }
    }
}

/// The CRD's enum message (`field.NotSupported`'s detail).
pub fn supported_values(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!("supported values: {}", quoted.join(", "))
}

/// `validateProtocol`: a number 1-255, or one of the names.
fn protocol(p: &Protocol, errs: &mut Errors) {
    match p {
        Protocol::Number(0) => errs.field(ErroredField::new(
            "Protocol",
            Some("0".into()),
            "protocol number invalid",
        )),
        Protocol::Number(_) => {}
        Protocol::Name(s) if PROTOCOL_NAMES.contains(&s.as_str()) => {}
        Protocol::Name(s) => errs.field(ErroredField::new(
            "Protocol",
            Some(s.clone()),
            "protocol name invalid",
        )),
    }
}

/// `ICMPFields`: `type` 0-254 and `code` 0-255 (field tags and the CRD's bounds), and no
/// code without a type (`validateICMPFields` and the CEL rule).
fn icmp_fields(icmp: &IcmpFields, crd_path: &str, errs: &mut Errors) {
    let bound = |errs: &mut Errors, field: &str, json: &str, v: Option<i64>, max: i64| {
        let Some(v) = v else { return };
        let path = format!("{crd_path}.{json}");
        if v < 0 {
            errs.field(ErroredField::tag(field, v.to_string(), "gte"));
            errs.crd(ErroredField::crd(
                &path,
                format!("{path} in body should be greater than or equal to 0"),
            ));
        } else if v > max {
            errs.field(ErroredField::tag(field, v.to_string(), "lte"));
            errs.crd(ErroredField::crd(
                &path,
                format!("{path} in body should be less than or equal to {max}"),
            ));
        }
    };
    bound(errs, "Type", "type", icmp.icmp_type, 254);
    bound(errs, "Code", "code", icmp.code, 255);
    if let (Some(code), None) = (icmp.code, icmp.icmp_type) {
        errs.field(ErroredField::new(
            "Code",
            Some(code.to_string()),
            "ICMP code specified without an ICMP type",
        ));
        errs.crd(ErroredField::crd(
            crd_path,
            "ICMP code specified without an ICMP type",
        ));
    }
}

/// The `net` tag: a CIDR or an address, strictly masked (`validateIPNetwork`).
fn is_strict_net(n: &str) -> bool {
    cidr::parse_cidr_or_ip(n).is_some_and(|c| c.net.addr() == c.addr)
}

/// `validatePort`: numbers from 1 (a range's order is checked when it is read).
fn port(p: &Port, errs: &mut Errors) {
    if let Port::Range { min, max } = p {
        if *min > *max {
            errs.field(ErroredField::new(
                "Port",
                Some(max.to_string()),
                "port range invalid",
            ));
        }
        if *min < 1 {
            errs.field(ErroredField::new(
                "Port",
                Some(min.to_string()),
                "port range invalid, port number must be between 1 and 65535",
            ));
        } else if *max < 1 {
            errs.field(ErroredField::new(
                "Port",
                Some(max.to_string()),
                "port range invalid, port number must be between 1 and 65535",
            ));
        }
    }
}

/// An `EntityRule`'s field tags, then `validateEntityRule`.
fn entity_rule(e: &EntityRule, errs: &mut Errors) {
    for (i, n) in e.nets.iter().enumerate() {
        if !is_strict_net(n) {
            errs.field(ErroredField::tag(&format!("Nets[{i}]"), n.clone(), "net"));
        }
    }
    check_selector(errs, "Selector", &e.selector);
    check_selector(errs, "NamespaceSelector", &e.namespace_selector);
    if let Some(s) = &e.services {
        for (field, v) in [("Name", &s.name), ("Namespace", &s.namespace)] {
            if !v.is_empty() && !crate::k8s::is_subdomain(v) {
                errs.field(ErroredField::tag(field, v.clone(), "name"));
            }
        }
    }
    for p in &e.ports {
        port(p, errs);
    }
    for (i, n) in e.not_nets.iter().enumerate() {
        if !is_strict_net(n) {
            errs.field(ErroredField::tag(
                &format!("NotNets[{i}]"),
                n.clone(),
                "net",
            ));
        }
    }
    check_selector(errs, "NotSelector", &e.not_selector);
    for p in &e.not_ports {
        port(p, errs);
    }
    if let Some(sa) = &e.service_accounts {
        check_selector(errs, "Selector", &sa.selector);
    }

    // validateEntityRule.
    if e.selector.contains(GLOBAL_SELECTOR) {
        errs.field(ErroredField::new(
            "Selector field",
            Some(e.selector.clone()),
            GLOBAL_SELECTOR_ENT_RULE,
        ));
    }
    let ns = &e.namespace_selector;
    if ns.contains("global(") && ns != GLOBAL_SELECTOR {
        // Only `global()` itself (maybe with spaces around it) is allowed.
        let compact: String = ns.chars().filter(|c| !c.is_whitespace()).collect();
        if compact != GLOBAL_SELECTOR {
            errs.field(ErroredField::new(
                "NamespaceSelector field",
                Some(ns.clone()),
                GLOBAL_SELECTOR_ONLY,
            ));
        }
    }
    if let Some(s) = &e.services {
        let value = Some(format!("&{{{} {}}}", s.name, s.namespace));
        let mut fail = |reason: &str| {
            errs.field(ErroredField::new("Services field", value.clone(), reason));
        };
        if s.name.is_empty() {
            fail("must specify a service name");
        }
        if !e.namespace_selector.is_empty() {
            fail("cannot specify NamespaceSelector and Services on the same rule");
        }
        if !e.selector.is_empty() || !e.not_selector.is_empty() {
            fail("cannot specify Selector/NotSelector and Services on the same rule");
        }
        if e.service_accounts.is_some() {
            fail("cannot specify ServiceAccounts and Services on the same rule");
        }
        if !e.nets.is_empty() || !e.not_nets.is_empty() {
            fail("cannot specify Nets/NotNets and Services on the same rule");
        }
    }
}

/// `validateHTTPRule`: no repeated method; each path exactly one of `exact`/`prefix`,
/// starting with `/`, without `?`, `#` or spaces.
fn http_match(h: &Value, errs: &mut Errors) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let methods = strings(&h["methods"]);
    let unique: std::collections::BTreeSet<&String> = methods.iter().collect();
    if unique.len() != methods.len() {
        let shown = go_list(&methods);
        errs.field(ErroredField::new(
            "Methods",
            Some(shown.clone()),
            format!("Invalid methods (duplicates): {shown}"),
        ));
    }
    let paths: Vec<(String, String)> = h["paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (field("exact"), field("prefix"))
                })
                .collect()
        })
        .unwrap_or_default();
    let problem = paths.iter().find_map(|(exact, prefix)| {
        if !exact.is_empty() && !prefix.is_empty() {
            return Some("Invalid path match. Both 'exact' and 'prefix' are set".to_string());
        }
        let v = if exact.is_empty() { prefix } else { exact };
        if v.is_empty() {
            return Some("Invalid path match. Either 'exact' or 'prefix' must be set".to_string());
        }
        (!v.starts_with('/') || v.contains(['?', ' ', '#']))
            .then(|| format!("Invalid path {v}. (must start with `/` and not contain `?` or `#`"))
    });
    if let Some(reason) = problem {
        let shown: Vec<String> = paths.iter().map(|(e, p)| format!("{{{e} {p}}}")).collect();
        errs.field(ErroredField::new("Paths", Some(go_list(&shown)), reason));
    }
}

/// `validateRuleMetadata`: the annotation keys are qualified names.
fn rule_metadata(m: &Value, errs: &mut Errors) {
    let Some(annotations) = m["annotations"].as_object() else {
        return;
    };
    for k in annotations.keys() {
        for e in crate::k8s::qualified_name_errors(&k.to_lowercase()) {
            errs.field(ErroredField::new(
                "Metadata.Annotations (key)",
                Some(k.clone()),
                e,
            ));
        }
    }
}

fn all_named(ports: &[Port]) -> bool {
    ports.iter().all(Port::is_named)
}

/// One rule of a policy or profile: its fields' checks in Go's field order, then
/// `validateRule`. `crd_path` is the rule's JSON path (`spec.ingress[0]`) for the CRD's
/// messages.
pub fn rule(r: &Rule, crd_path: &str, errs: &mut Errors) {
    if !ACTIONS.contains(&r.action.as_str()) {
        errs.field(ErroredField::tag("Action", r.action.clone(), "action"));
        errs.crd(ErroredField::crd(
            &format!("{crd_path}.action"),
            supported_values(&ACTIONS),
        ));
    }
    if let Some(v) = r.ip_version
        && v != 4
        && v != 6
    {
        errs.field(ErroredField::tag("IPVersion", v.to_string(), "ipVersion"));
        errs.crd(ErroredField::crd(
            &format!("{crd_path}.ipVersion"),
            supported_values(&["4", "6"]),
        ));
    }
    if let Some(p) = &r.protocol {
        protocol(p, errs);
    }
    if let Some(i) = &r.icmp {
        icmp_fields(i, &format!("{crd_path}.icmp"), errs);
    }
    if let Some(p) = &r.not_protocol {
        protocol(p, errs);
    }
    if let Some(i) = &r.not_icmp {
        icmp_fields(i, &format!("{crd_path}.notICMP"), errs);
    }
    let src = r.source();
    let dst = r.destination();
    entity_rule(&src, errs);
    entity_rule(&dst, errs);
    if let Some(h) = &r.http {
        http_match(h, errs);
    }
    if let Some(m) = &r.metadata {
        rule_metadata(m, errs);
    }

    // validateRule.
    let port_fields: [(&str, &[Port]); 4] = [
        ("Source.Ports", &src.ports),
        ("Source.NotPorts", &src.not_ports),
        ("Destination.Ports", &dst.ports),
        ("Destination.NotPorts", &dst.not_ports),
    ];
    match &r.protocol {
        None => {
            for (field, ports) in port_fields {
                if !all_named(ports) {
                    errs.field(ErroredField::new(
                        field,
                        Some(go_list(ports)),
                        PROTOCOL_SINGLE_OR_RANGE_PORTS_MSG,
                    ));
                }
            }
        }
        Some(p) if !supports_ports(p) => {
            for (field, ports) in port_fields {
                if !ports.is_empty() {
                    errs.field(ErroredField::new(
                        field,
                        Some(go_list(ports)),
                        PROTOCOL_PORTS_MSG,
                    ));
                }
            }
        }
        Some(_) => {}
    }
    if r.http.is_some()
        && let Some(p) = &r.protocol
        && !is_name(Some(p), "TCP")
    {
        errs.field(ErroredField::new(
            "Protocol",
            Some(p.to_string()),
            PROTOCOL_AND_HTTP_MSG,
        ));
        if !matches!(p, Protocol::Number(6)) {
            errs.crd(ErroredField::crd(
                crd_path,
                "rules with HTTP match must have protocol TCP or unset",
            ));
        }
    }
    let proto = r.protocol.as_ref();
    let not_proto = r.not_protocol.as_ref();
    if r.icmp.is_some() && !(is_name(proto, "ICMP") || is_name(proto, "ICMPv6")) {
        errs.field(ErroredField::new(
            "ICMP",
            Some(icmp_value(r.icmp.as_ref())),
            PROTOCOL_ICMP_MSG,
        ));
    }
    if (is_name(proto, "ICMP") || is_name(not_proto, "ICMP"))
        && r.ip_version.is_some_and(|v| v != 4)
    {
        errs.field(ErroredField::new(
            "IPVersion",
            Some(icmp_value(r.icmp.as_ref())),
            "must set ipversion to '4' with protocol icmp",
        ));
    }
    if (is_name(proto, "ICMPv6") || is_name(not_proto, "ICMPv6"))
        && r.ip_version.is_some_and(|v| v != 6)
    {
        errs.field(ErroredField::new(
            "IPVersion",
            Some(icmp_value(r.icmp.as_ref())),
            "must set ipversion to '6' with protocol icmpv6",
        ));
    }

    let (mut seen_v4, mut seen_v6) = (false, false);
    let mut scan = |nets: &[String], field: &str, errs: &mut Errors| {
        let (mut v4, mut v6) = (false, false);
        let negated = field.ends_with("NotNets");
        for n in nets {
            // cnet.ParseCIDR: a bare address is not a CIDR here.
            let Some(c) = cidr::parse_cidr(n) else {
                errs.field(ErroredField::new(field, Some(n.clone()), "invalid CIDR"));
                continue;
            };
            let is_v4 = matches!(c.net.addr(), IpAddr::V4(_));
            v4 |= is_v4;
            v6 |= !is_v4;
            let catch_all = if is_v4 {
                n == "0.0.0.0/0"
            } else {
                c.net.prefix_len() == 0
            };
            if negated && catch_all {
                errs.field(ErroredField::new(
                    field,
                    Some(n.clone()),
                    "catch-all CIDR in negation creates logical contradiction (matches no traffic)",
                ));
            }
        }
        if let Some(v) = r.ip_version
            && ((v4 && v != 4) || (v6 && v != 6))
        {
            // Go reports the source nets here, whatever the field.
            errs.field(ErroredField::new(
                field,
                Some(go_list(&src.nets)),
                "rule IP version doesn't match CIDR version",
            ));
        }
        if (v4 && seen_v6) || (v6 && seen_v4) || (v4 && v6) {
            errs.field(ErroredField::new(
                field,
                Some(go_list(nets)),
                "rule contains both IPv4 and IPv6 CIDRs",
            ));
        }
        seen_v4 |= v4;
        seen_v6 |= v6;
    };
    scan(&src.nets, "Source.Nets", errs);
    scan(&src.not_nets, "Source.NotNets", errs);
    scan(&dst.nets, "Destination.Nets", errs);
    scan(&dst.not_nets, "Destination.NotNets", errs);

    if r.http.is_some() && r.action != "Allow" {
        errs.field(ErroredField::new(
            "HTTP",
            Some("<http>".into()),
            "only valid for Allow rules",
        ));
        errs.crd(ErroredField::crd(
            crd_path,
            "HTTP match is only valid on Allow rules",
        ));
    }
    if dst.services.is_some() {
        if !dst.ports.is_empty() {
            errs.field(ErroredField::new(
                "Destination.Ports",
                Some(go_list(&dst.ports)),
                "cannot specify ports with a service selector",
            ));
        }
        if !dst.not_ports.is_empty() {
            errs.field(ErroredField::new(
                "Destination.NotPorts",
                Some(go_list(&dst.not_ports)),
                "cannot specify notports with a service selector",
            ));
        }
        if !dst.ports.is_empty() || !dst.not_ports.is_empty() {
            errs.crd(ErroredField::crd(
                crd_path,
                "ports and notPorts cannot be specified with services",
            ));
        }
    }
}
