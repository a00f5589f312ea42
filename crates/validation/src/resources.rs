//! The policy resources as wholes: metadata (`validateObjectMeta` and each kind's name
//! rule), spec field tags, the struct validators of validator.go, the CRD's checks, and
//! the defaults Calico writes.

use crate::error::{ErroredField, go_list, go_map};
use crate::k8s;
use crate::rules::{self, GLOBAL_SELECTOR_ENT_RULE, supported_values};
use crate::{Errors, check_selector};
use calico_datastore::model::policy::{
    FelixConfiguration, GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, Rule,
    Tier,
};
use calico_datastore::model::{DEFAULT_TIERS, ObjectMeta, Profile, cidr};
use std::collections::BTreeMap;

/// The tier a policy without one is in (`names.DefaultTierName`).
pub const DEFAULT_TIER: &str = "default";

/// The label Calico sets on a policy to its tier (`apiv3.LabelTier`).
pub const LABEL_TIER: &str = "projectcalico.org/tier";

/// `names.TierOrDefault`.
pub fn tier_of(tier: &str) -> &str {
    if tier.is_empty() { DEFAULT_TIER } else { tier }
}

const NAME_SUBDOMAIN_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const NAME_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// Go's `%v` of a float64 (`strconv.FormatFloat(v, 'g', -1, 64)`): the shortest digits,
/// exponent form below 1e-4 and from 1e+06 up (`100`, `1.5`, `1e+06`, `1.2345678e+07`).
pub fn go_float(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if v != 0.0 && !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{v}")
    }
}

/// `validateObjectMetaAnnotations` and `validateObjectMetaLabels`.
fn labels_and_annotations(meta: &ObjectMeta, errs: &mut Errors) {
    let mut total = 0;
    for (k, v) in &meta.annotations {
        for e in k8s::qualified_name_errors(&k.to_lowercase()) {
            errs.field(ErroredField::new(
                "Metadata.Annotations (key)",
                Some(k.clone()),
                e,
            ));
        }
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_LIMIT {
        errs.field(ErroredField::new(
            "Metadata.Annotations (key)",
            Some(go_map(meta.annotations.iter())),
            format!(
                "total size of annotations is too large by {} bytes",
                total - ANNOTATIONS_LIMIT
            ),
        ));
    }
    for (k, v) in &meta.labels {
        for e in k8s::qualified_name_errors(k) {
            errs.field(ErroredField::new(
                "Metadata.Labels (label)",
                Some(k.clone()),
                e,
            ));
        }
        for e in k8s::label_value_errors(v) {
            errs.field(ErroredField::new(
                "Metadata.Labels (value)",
                Some(v.clone()),
                e,
            ));
        }
    }
}

fn too_long(name: &str, max: usize, errs: &mut Errors) {
    if name.len() > max {
        errs.field(ErroredField::new(
            "Metadata.Name",
            Some(name.to_string()),
            format!("name is too long by {} bytes", name.len() - max),
        ));
    }
}

/// `validateObjectMeta`: every resource's name is a DNS-1123 subdomain of at most 253
/// characters; labels and annotations are Kubernetes'.
fn object_meta(meta: &ObjectMeta, errs: &mut Errors) {
    too_long(&meta.name, 253, errs);
    if !k8s::is_subdomain(&meta.name) {
        errs.field(ErroredField::new(
            "Metadata.Name",
            Some(meta.name.clone()),
            format!(
                "name must consist of lower case alphanumeric characters, '-' or '.' (regex: {NAME_SUBDOMAIN_FMT})"
            ),
        ));
    }
    labels_and_annotations(meta, errs);
}

fn label_name_error(name: &str, errs: &mut Errors) {
    errs.field(ErroredField::new(
        "Metadata.Name",
        Some(name.to_string()),
        format!(
            "name must consist of lower case alphanumeric characters or '-' (regex: {NAME_LABEL_FMT})"
        ),
    ));
}

/// `networkPolicyNameRegex`: a label, two labels joined by a dot, or `knp.default.` /
/// `ossg.default.` and a subdomain.
fn is_network_policy_name(name: &str) -> bool {
    if let Some(rest) = name
        .strip_prefix("knp.default.")
        .or_else(|| name.strip_prefix("ossg.default."))
        && k8s::is_subdomain(rest)
    {
        return true;
    }
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| k8s::is_label(p))
}

/// `globalNetworkPolicyNameRegex`: a label, or two labels joined by a dot.
fn is_global_network_policy_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| k8s::is_label(p))
}

/// The rules of a spec (`dive` into each `Rule`).
fn rule_list(rules: &[Rule], json: &str, errs: &mut Errors) {
    for (i, r) in rules.iter().enumerate() {
        rules::rule(r, &format!("spec.{json}[{i}]"), errs);
    }
}

/// The fields NetworkPolicySpec and GlobalNetworkPolicySpec share, in Go's field order up
/// to `types` (`tier`, rules, `selector`, `types`).
fn policy_fields(
    tier: &str,
    ingress: &[Rule],
    egress: &[Rule],
    selector: &str,
    types: &[String],
    errs: &mut Errors,
) {
    if !tier.is_empty() && !k8s::is_subdomain(tier) {
        errs.field(ErroredField::tag("Tier", tier, "name"));
    }
    rule_list(ingress, "ingress", errs);
    rule_list(egress, "egress", errs);
    check_selector(errs, "Selector", selector);
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            errs.field(ErroredField::tag(
                &format!("Types[{i}]"),
                t.clone(),
                "policyType",
            ));
            errs.crd(ErroredField::crd(
                &format!("spec.types[{i}]"),
                supported_values(&["Ingress", "Egress"]),
            ));
        }
    }
    if types.len() > 2 {
        errs.crd(ErroredField::crd("spec.types", "must have at most 2 items"));
    }
}

fn performance_hints(hints: &[String], errs: &mut Errors) {
    let mut seen = std::collections::BTreeSet::new();
    if !hints.iter().all(|h| seen.insert(h)) {
        errs.field(ErroredField::tag(
            "PerformanceHints",
            go_list(hints),
            "unique",
        ));
    }
    for (i, h) in hints.iter().enumerate() {
        if h != "AssumeNeededOnEveryNode" {
            errs.field(ErroredField::tag(
                &format!("PerformanceHints[{i}]"),
                h.clone(),
                "oneof",
            ));
            errs.crd(ErroredField::crd(
                &format!("spec.performanceHints[{i}]"),
                supported_values(&["AssumeNeededOnEveryNode"]),
            ));
        }
    }
}

/// The checks `validateNetworkPolicySpec` and `validateGlobalNetworkPolicySpec` share:
/// repeated types, services on the wrong side, HTTP on egress.
fn policy_spec_common(
    spec_name: &str,
    types: &[String],
    ingress: &[Rule],
    egress: &[Rule],
    alp_reason: &str,
    errs: &mut Errors,
) {
    let mut seen = std::collections::BTreeSet::new();
    for t in types {
        if !seen.insert(t) {
            errs.field(ErroredField::new(
                &format!("{spec_name}.Types"),
                Some(go_list(types)),
                format!("'{t}' type specified more than once"),
            ));
        }
    }
    for r in egress {
        if let Some(s) = r.source().services {
            errs.field(ErroredField::new(
                "Services",
                Some(format!("&{{{} {}}}", s.name, s.namespace)),
                "not allowed in egress rule source",
            ));
        }
        if r.http.is_some() {
            errs.field(ErroredField::new("HTTP", Some("<http>".into()), alp_reason));
        }
    }
    for r in ingress {
        if let Some(s) = r.destination().services {
            errs.field(ErroredField::new(
                "Services",
                Some(format!("&{{{} {}}}", s.name, s.namespace)),
                "not allowed in ingress rule destination",
            ));
        }
    }
}

fn no_global(field: &str, value: &str, errs: &mut Errors) {
    if value.contains("global()") {
        errs.field(ErroredField::new(
            field,
            Some(value.to_string()),
            GLOBAL_SELECTOR_ENT_RULE,
        ));
    }
}

/// A NetworkPolicy (`validateNetworkPolicy`, the field tags of `NetworkPolicySpec`).
pub fn network_policy(p: &NetworkPolicy) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    let s = &p.spec;
    object_meta(&p.metadata, &mut errs);
    policy_fields(
        &s.tier,
        &s.ingress,
        &s.egress,
        &s.selector,
        &s.types,
        &mut errs,
    );
    check_selector(
        &mut errs,
        "ServiceAccountSelector",
        &s.service_account_selector,
    );
    performance_hints(&s.performance_hints, &mut errs);

    let name = &p.metadata.name;
    too_long(name, 253, &mut errs);
    if !is_network_policy_name(name) {
        label_name_error(name, &mut errs);
    }
    labels_and_annotations(&p.metadata, &mut errs);
    policy_spec_common(
        "NetworkPolicySpec",
        &s.types,
        &s.ingress,
        &s.egress,
        "not allowed in egress rule",
        &mut errs,
    );
    no_global("NetworkPolicySpec.Selector", &s.selector, &mut errs);
    no_global(
        "NetworkPolicySpec.ServiceAccountSelector",
        &s.service_account_selector,
        &mut errs,
    );
    errs.finish()
}

/// A GlobalNetworkPolicy (`validateGlobalNetworkPolicy`, the field tags of
/// `GlobalNetworkPolicySpec`, and the CRD's preDNAT/doNotTrack rules).
pub fn global_network_policy(p: &GlobalNetworkPolicy) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    let s = &p.spec;
    object_meta(&p.metadata, &mut errs);
    policy_fields(
        &s.tier,
        &s.ingress,
        &s.egress,
        &s.selector,
        &s.types,
        &mut errs,
    );
    check_selector(
        &mut errs,
        "ServiceAccountSelector",
        &s.service_account_selector,
    );
    check_selector(&mut errs, "NamespaceSelector", &s.namespace_selector);
    performance_hints(&s.performance_hints, &mut errs);

    let name = &p.metadata.name;
    too_long(name, 253, &mut errs);
    if !is_global_network_policy_name(name) {
        label_name_error(name, &mut errs);
    }
    labels_and_annotations(&p.metadata, &mut errs);

    // validateGlobalNetworkPolicySpec.
    let egress_type = s.types.iter().any(|t| t == "Egress");
    if s.do_not_track && s.pre_dnat {
        errs.field(ErroredField::new(
            "PolicySpec.PreDNAT",
            Some("true".into()),
            "PreDNAT and DoNotTrack cannot both be true, for a given PolicySpec",
        ));
        errs.crd(ErroredField::crd(
            "spec",
            "preDNAT and doNotTrack cannot both be true",
        ));
    }
    if s.pre_dnat && !s.egress.is_empty() {
        errs.field(ErroredField::new(
            "PolicySpec.Egress",
            Some(format!("[{} rules]", s.egress.len())),
            "PreDNAT PolicySpec cannot have any Egress rules",
        ));
        errs.crd(ErroredField::crd(
            "spec",
            "preDNAT policy cannot have any egress rules",
        ));
    }
    if s.pre_dnat && egress_type {
        errs.field(ErroredField::new(
            "PolicySpec.Types",
            Some(go_list(&s.types)),
            "PreDNAT PolicySpec cannot have 'egress' Type",
        ));
        errs.crd(ErroredField::crd(
            "spec",
            "preDNAT policy cannot have 'Egress' type",
        ));
    }
    if !s.apply_on_forward && (s.do_not_track || s.pre_dnat) {
        errs.field(ErroredField::new(
            "PolicySpec.ApplyOnForward",
            Some("false".into()),
            "ApplyOnForward must be true if either PreDNAT or DoNotTrack is true, for a given PolicySpec",
        ));
        errs.crd(ErroredField::crd(
            "spec",
            "applyOnForward must be true if either preDNAT or doNotTrack is true",
        ));
    }
    policy_spec_common(
        "GlobalNetworkPolicySpec",
        &s.types,
        &s.ingress,
        &s.egress,
        "not allowed in egress rules",
        &mut errs,
    );
    for r in &s.egress {
        if r.destination()
            .services
            .is_some_and(|sv| sv.namespace.is_empty())
        {
            errs.field(ErroredField::new(
                "Namespace",
                Some(String::new()),
                "must specify a namespace",
            ));
        }
    }
    for r in &s.ingress {
        if r.source()
            .services
            .is_some_and(|sv| sv.namespace.is_empty())
        {
            errs.field(ErroredField::new(
                "Namespace",
                Some(String::new()),
                "must specify a namespace",
            ));
        }
    }
    no_global("GlobalNetworkPolicySpec.Selector", &s.selector, &mut errs);
    // Go shows the policy's selector as the value of the next two.
    if s.service_account_selector.contains("global()") {
        errs.field(ErroredField::new(
            "GlobalNetworkPolicySpec.ServiceAccountSelector",
            Some(s.selector.clone()),
            GLOBAL_SELECTOR_ENT_RULE,
        ));
    }
    if s.namespace_selector.contains("global()") {
        errs.field(ErroredField::new(
            "GlobalNetworkPolicySpec.NamespaceSelector",
            Some(s.selector.clone()),
            GLOBAL_SELECTOR_ENT_RULE,
        ));
    }
    errs.finish()
}

/// A Tier (`validateTier`, the `oneof=Deny Pass` tag, the CRD's default-action rules for
/// the built-in tiers).
pub fn tier(t: &Tier) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    object_meta(&t.metadata, &mut errs);
    if let Some(a) = &t.spec.default_action
        && a != "Deny"
        && a != "Pass"
    {
        errs.field(ErroredField::tag("DefaultAction", a.clone(), "oneof"));
        errs.crd(ErroredField::crd(
            "spec.defaultAction",
            supported_values(&["Pass", "Deny"]),
        ));
    }
    let name = &t.metadata.name;
    too_long(name, 63, &mut errs);
    if !k8s::is_label(name) {
        label_name_error(name, &mut errs);
    }
    for (tier_name, action, order) in DEFAULT_TIERS {
        if name != tier_name {
            continue;
        }
        let want = order as f64;
        if t.spec.order != Some(want) {
            errs.field(ErroredField::new(
                "TierSpec.Order",
                Some(t.spec.order.map_or("<nil>".into(), go_float)),
                format!("{tier_name} tier order must be {}", go_float(want)),
            ));
        }
        if t.spec.default_action.as_deref() != Some(action) {
            errs.crd(ErroredField::crd(
                "Tier",
                format!("The '{tier_name}' tier must have default action '{action}'"),
            ));
        }
    }
    labels_and_annotations(&t.metadata, &mut errs);
    errs.finish()
}

fn set_nets(nets: &[String], errs: &mut Errors) {
    for (i, n) in nets.iter().enumerate() {
        if cidr::parse_cidr_or_ip(n).is_none() {
            errs.field(ErroredField::tag(&format!("Nets[{i}]"), n.clone(), "cidr"));
        }
    }
}

fn no_namespace_label(labels: &BTreeMap<String, String>, errs: &mut Errors) {
    if labels.contains_key("projectcalico.org/namespace") {
        errs.field(ErroredField::new(
            "Metadata.Labels (label)",
            Some("projectcalico.org/namespace".into()),
            "projectcalico.org/namespace is not a valid label name",
        ));
    }
}

/// A NetworkSet (`nets` are CIDRs or addresses; `validateNetworkSet`).
pub fn network_set(s: &NetworkSet) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    object_meta(&s.metadata, &mut errs);
    set_nets(&s.spec.nets, &mut errs);
    no_namespace_label(&s.metadata.labels, &mut errs);
    errs.finish()
}

/// A GlobalNetworkSet (as a NetworkSet; `validateGlobalNetworkSet`).
pub fn global_network_set(s: &GlobalNetworkSet) -> Result<(), crate::ValidationError> {
    network_set(s)
}

/// A Profile: its rules and `labelsToApply` (the `labels` tag).
pub fn profile(p: &Profile) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    object_meta(&p.metadata, &mut errs);
    rule_list(&p.spec.ingress, "ingress", &mut errs);
    rule_list(&p.spec.egress, "egress", &mut errs);
    let labels = &p.spec.labels_to_apply;
    let bad = labels.iter().any(|(k, v)| {
        !k8s::qualified_name_errors(k).is_empty() || !k8s::label_value_errors(v).is_empty()
    });
    if bad {
        errs.field(ErroredField::tag(
            "LabelsToApply",
            go_map(labels.iter()),
            "labels",
        ));
    }
    errs.finish()
}

/// A FelixConfiguration: its name and the typed fields' tags and CRD patterns.
pub fn felix_configuration(c: &FelixConfiguration) -> Result<(), crate::ValidationError> {
    let mut errs = Errors::default();
    object_meta(&c.metadata, &mut errs);
    let s = &c.spec;
    let one_of = |errs: &mut Errors,
                  field: &str,
                  json: &str,
                  v: Option<&String>,
                  allowed: &[&str],
                  tag: &str| {
        let Some(v) = v else { return };
        if v.is_empty() {
            return;
        }
        if !allowed.contains(&v.as_str()) {
            errs.field(ErroredField::tag(field, v.clone(), tag));
        }
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) {
            let path = format!("spec.{json}");
            errs.crd(ErroredField::crd(
                &path,
                format!(
                    "{path} in body should match '^(?i)({})?$'",
                    allowed.join("|")
                ),
            ));
        }
    };
    one_of(
        &mut errs,
        "DefaultEndpointToHostAction",
        "defaultEndpointToHostAction",
        s.default_endpoint_to_host_action.as_ref(),
        &["Drop", "Accept", "Return"],
        "dropAcceptReturn",
    );
    one_of(
        &mut errs,
        "LogSeverityScreen",
        "logSeverityScreen",
        s.log_severity_screen.as_ref(),
        &["Trace", "Debug", "Info", "Warning", "Error", "Fatal"],
        "logLevel",
    );
    if let Some(prefix) = &s.log_prefix
        && !prefix
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "%: /_-".contains(ch))
    {
        errs.crd(ErroredField::crd(
            "spec.logPrefix",
            "spec.logPrefix in body should match '^([a-zA-Z0-9%: /_-])*$'",
        ));
    }
    errs.finish()
}

/// `defaultPolicyTypesField`: no types means Ingress, plus Egress when there are egress
/// rules (Egress alone when there are only egress rules).
fn default_types(ingress: &[Rule], egress: &[Rule], types: &mut Vec<String>) {
    if !types.is_empty() {
        return;
    }
    *types = if egress.is_empty() {
        vec!["Ingress".into()]
    } else if ingress.is_empty() {
        vec!["Egress".into()]
    } else {
        vec!["Ingress".into(), "Egress".into()]
    };
}

fn default_policy(meta: &mut ObjectMeta, tier: &mut String) {
    if tier.is_empty() {
        // The CRD's `default=default`, applied by `Validate` in etcd mode.
        *tier = DEFAULT_TIER.into();
    }
    meta.labels.insert(LABEL_TIER.into(), tier.clone());
}

/// What Calico fills in on a NetworkPolicy before storing it: `types`, the `default` tier
/// and the tier label.
pub fn default_network_policy(p: &mut NetworkPolicy) {
    default_types(&p.spec.ingress, &p.spec.egress, &mut p.spec.types);
    default_policy(&mut p.metadata, &mut p.spec.tier);
}

/// As [`default_network_policy`], for a GlobalNetworkPolicy.
pub fn default_global_network_policy(p: &mut GlobalNetworkPolicy) {
    default_types(&p.spec.ingress, &p.spec.egress, &mut p.spec.types);
    default_policy(&mut p.metadata, &mut p.spec.tier);
}

/// `DefaultTierFields`: order 1,000,000 and action Deny when not given.
pub fn default_tier(t: &mut Tier) {
    t.spec.order.get_or_insert(1_000_000.0);
    t.spec.default_action.get_or_insert_with(|| "Deny".into());
}
