//! The policy kinds against the in-memory store: what is written (Calico's defaults, tier
//! rules, refusals), what `get` prints, and that a refused file writes nothing.

#![allow(clippy::unwrap_used)]

use super::ops::{Action, Ctx, Namespaces, apply, delete, get, handle_namespaces, patch};
use super::print::Format;
use super::{Kind, parse_documents};
use crate::error::{CmdError, CmdResult};
use calico_datastore::{KvStore, MemKv};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RES: &str = "/calico/resources/v3/projectcalico.org";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_777_629_600)
}

fn ctx(store: &MemKv) -> Ctx<'_> {
    Ctx { store, now: t0 }
}

fn run(store: &MemKv, text: &str, action: Action) -> (String, CmdResult) {
    let mut objs = parse_documents(text).unwrap();
    let errs = handle_namespaces(&mut objs, None);
    assert!(errs.is_empty(), "{errs:?}");
    let mut out = Vec::new();
    let r = apply(&ctx(store), &objs, action, false, &mut out);
    (String::from_utf8_lossy(&out).into_owned(), r)
}

fn show(
    store: &MemKv,
    kind: Kind,
    names: &[&str],
    ns: Namespaces,
    f: Format,
) -> (String, CmdResult) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut out = Vec::new();
    let r = get(&ctx(store), kind, &names, &ns, f, &mut out);
    (String::from_utf8_lossy(&out).into_owned(), r)
}

fn stored(store: &MemKv, key: &str) -> Option<Value> {
    store
        .get(&format!("{RES}/{key}"))
        .unwrap()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
}

fn del(store: &MemKv, kind: Kind, ns: &str, name: &str) -> CmdResult {
    let text = format!(
        "apiVersion: projectcalico.org/v3\nkind: {}\nmetadata:\n  name: {name}\n{}",
        kind.name(),
        if ns.is_empty() {
            String::new()
        } else {
            format!("  namespace: {ns}\n")
        }
    );
    let objs = parse_documents(&text).unwrap();
    let mut out = Vec::new();
    delete(&ctx(store), &objs, Some(kind), false, &mut out)
}

fn all_ns() -> Namespaces {
    Namespaces {
        namespace: None,
        all: true,
    }
}

const POLICY: &str = "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: prod
  labels:
    team: web
spec:
  order: 100
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports: [80, \"8000:8080\", http]
";

/// Mirrors clientv3/networkpolicy.go Create: defaults (`types`, tier label, `default`
/// tier), uid and creation time from the backend, the default tiers made first.
#[test]
fn a_network_policy_is_stored_with_calicos_defaults() {
    let store = MemKv::new();
    let (out, r) = run(&store, POLICY, Action::Apply);
    assert_eq!(r, Ok(()));
    assert_eq!(out, "Successfully applied 1 'NetworkPolicy' resource(s)\n");
    let mut v = stored(&store, "networkpolicies/prod/allow-web").unwrap();
    assert_eq!(v["metadata"]["uid"].as_str().unwrap().len(), 36);
    v["metadata"]["uid"] = json!("<uid>");
    assert_eq!(
        v,
        json!({"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"allow-web","namespace":"prod","uid":"<uid>",
                "creationTimestamp":"2026-05-01T10:00:00Z",
                "labels":{"projectcalico.org/tier":"default","team":"web"}},
            "spec":{"tier":"default","order":100,
                "ingress":[{"action":"Allow","protocol":"TCP","source":{"selector":"role == 'frontend'"},
                    "destination":{"ports":[80,"8000:8080","http"]}}],
                "selector":"app == 'web'","types":["Ingress"]}})
    );
    for t in ["default", "kube-admin", "kube-baseline"] {
        assert!(stored(&store, &format!("tiers/{t}")).is_some(), "{t}");
    }
    // Again: an update keeps uid and creation time.
    let uid = stored(&store, "networkpolicies/prod/allow-web").unwrap()["metadata"]["uid"].clone();
    run(
        &store,
        &POLICY.replace("order: 100", "order: 200.5"),
        Action::Apply,
    )
    .1
    .unwrap();
    let v = stored(&store, "networkpolicies/prod/allow-web").unwrap();
    assert_eq!(v["metadata"]["uid"], uid);
    assert_eq!(v["spec"]["order"], json!(200.5));
}

/// The table layouts of resourcemgr/networkpolicy.go: NAME, TIER; wide adds ORDER and
/// SELECTOR; NAMESPACE first with `-n`/`-A`.
#[test]
fn policy_tables() {
    let store = MemKv::new();
    run(&store, POLICY, Action::Create).1.unwrap();
    run(
        &store,
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\nspec: {}\n",
        Action::Create,
    )
    .1
    .unwrap();
    let (out, r) = show(
        &store,
        Kind::NetworkPolicy,
        &[],
        Namespaces::default(),
        Format::Ps,
    );
    assert_eq!(r, Ok(()));
    assert_eq!(out, "NAME       TIER      \ndeny-all   default   \n\n");
    let (out, _) = show(&store, Kind::NetworkPolicy, &[], all_ns(), Format::Wide);
    assert_eq!(
        out,
        "NAMESPACE   NAME        TIER      ORDER   SELECTOR       \n\
         default     deny-all    default   <nil>                  \n\
         prod        allow-web   default   100     app == 'web'   \n\n"
    );
    let ns = Namespaces {
        namespace: Some("prod".into()),
        all: false,
    };
    let (out, r) = show(
        &store,
        Kind::NetworkPolicy,
        &["allow-web"],
        ns,
        Format::Yaml,
    );
    assert_eq!(r, Ok(()));
    assert!(
        out.contains("  namespace: prod\n") && out.contains("  order: 100\n"),
        "{out}"
    );
    assert!(
        out.contains("    projectcalico.org/tier: default\n"),
        "{out}"
    );
}

#[test]
fn policies_in_a_missing_tier_are_refused_and_tiers_come_first_in_a_file() {
    let store = MemKv::new();
    let gnp = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: sec.block\nspec:\n  tier: sec\n  order: 10\n  selector: all()\n  egress:\n  - action: Deny\n";
    let (_, r) = run(&store, gnp, Action::Apply);
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to apply 'GlobalNetworkPolicy' resource: [resource does not exist: Tier(sec) with error: <nil>]".into()
        ))
    );
    assert!(
        store.dump().is_empty(),
        "nothing written, not even the default tiers"
    );
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: sec\nspec:\n  order: 50\n";
    let (out, r) = run(&store, &format!("{tier}---\n{gnp}"), Action::Apply);
    assert_eq!(r, Ok(()));
    assert_eq!(out, "Successfully applied 2 resource(s)\n");
    let t = stored(&store, "tiers/sec").unwrap();
    assert_eq!(t["spec"], json!({"order": 50, "defaultAction": "Deny"}));
    assert_eq!(t["status"], json!({}), "a Go struct, never omitted");
    let g = stored(&store, "globalnetworkpolicies/sec.block").unwrap();
    assert_eq!(g["spec"]["types"], json!(["Egress"]));
    assert_eq!(
        g["metadata"]["labels"],
        json!({"projectcalico.org/tier": "sec"})
    );

    // Tiers by order; GNP tables as policies'.
    let (out, _) = show(&store, Kind::Tier, &[], Namespaces::default(), Format::Ps);
    assert_eq!(
        out,
        "NAME            ORDER   \nsec             50      \nkube-admin      1000    \ndefault         1e+06   \nkube-baseline   1e+07   \n\n"
    );
    let (out, _) = show(
        &store,
        Kind::GlobalNetworkPolicy,
        &[],
        Namespaces::default(),
        Format::Wide,
    );
    assert_eq!(
        out,
        "NAME        TIER   ORDER   SELECTOR   \nsec.block   sec    10      all()      \n\n"
    );

    // A tier with a policy stays; built-in tiers always do.
    assert_eq!(
        del(&store, Kind::Tier, "", "sec"),
        Err(CmdError::Failed(
            "Failed to delete 'Tier' resource: operation delete is not supported on sec: Cannot delete a non-empty tier".into()
        ))
    );
    for t in ["default", "kube-admin", "kube-baseline"] {
        assert_eq!(
            del(&store, Kind::Tier, "", t),
            Err(CmdError::Failed(format!(
                "Failed to delete 'Tier' resource: operation Delete is not supported on {t}: Cannot delete {t} tier"
            )))
        );
    }
    del(&store, Kind::GlobalNetworkPolicy, "", "sec.block").unwrap();
    del(&store, Kind::Tier, "", "sec").unwrap();
    assert!(stored(&store, "tiers/sec").is_none());
}

#[test]
fn built_in_tiers_keep_their_order_and_action() {
    let store = MemKv::new();
    let (_, r) = run(
        &store,
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: default\nspec:\n  order: 5\n",
        Action::Apply,
    );
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to apply 'Tier' resource: [error with field TierSpec.Order = '5' (default tier order must be 1e+06)]".into()
        ))
    );
    let (_, r) = run(
        &store,
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: kube-admin\nspec:\n  order: 1000\n",
        Action::Apply,
    );
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to apply 'Tier' resource: [error with field Tier (The 'kube-admin' tier must have default action 'Pass')]".into()
        ))
    );
}

/// resourcemgr/networkpolicy.go: `knp.default.*` belongs to the Kubernetes controllers.
#[test]
fn kubernetes_policies_are_not_managed_here() {
    let store = MemKv::new();
    let doc = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: knp.default.allow\n  namespace: ns1\nspec: {}\n";
    let (_, r) = run(&store, doc, Action::Create);
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to create 'NetworkPolicy' resource: [operation create or apply is not supported on NetworkPolicy(ns1/knp.default.allow): kubernetes network policies must be managed through the kubernetes API]".into()
        ))
    );
    let (_, r) = run(&store, doc, Action::Replace);
    assert!(format!("{r:?}").contains("operation apply or replace is not supported"));
    // One written by the controller can be read but not deleted.
    store.put(
        &format!("{RES}/networkpolicies/ns1/knp.default.allow"),
        br#"{"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"knp.default.allow","namespace":"ns1"},"spec":{"tier":"default","selector":"all()","types":["Ingress"]}}"#,
    );
    assert_eq!(
        del(&store, Kind::NetworkPolicy, "ns1", "knp.default.allow"),
        Err(CmdError::Failed(
            "Failed to delete 'NetworkPolicy' resource: operation delete is not supported on NetworkPolicy(ns1/knp.default.allow): kubernetes network policies must be managed through the kubernetes API".into()
        ))
    );
    let ns = Namespaces {
        namespace: Some("ns1".into()),
        all: false,
    };
    let (out, r) = show(&store, Kind::NetworkPolicy, &[], ns, Format::Ps);
    assert_eq!(r, Ok(()));
    assert!(out.contains("knp.default.allow"), "{out}");
}

#[test]
fn profiles_are_writable_but_not_the_default_allow_one() {
    let store = MemKv::new();
    let doc = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: kns.prod\nspec:\n  ingress:\n  - action: Allow\n  egress:\n  - action: Allow\n  labelsToApply:\n    pcns.projectcalico.org/name: prod\n";
    run(&store, doc, Action::Create).1.unwrap();
    let (out, _) = show(
        &store,
        Kind::Profile,
        &[],
        Namespaces::default(),
        Format::Wide,
    );
    assert_eq!(
        out,
        "NAME                          LABELS                             \n\
         kns.prod                      pcns.projectcalico.org/name=prod   \n\
         projectcalico-default-allow                                      \n\n"
    );
    let allow = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: projectcalico-default-allow\nspec: {}\n";
    let (_, r) = run(&store, allow, Action::Apply);
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to apply 'Profile' resource: [operation Update is not supported on projectcalico-default-allow: The profile \"projectcalico-default-allow\" is a default provided by Calico and cannot be updated]".into()
        ))
    );
    let (_, r) = run(&store, allow, Action::Create);
    assert!(format!("{r:?}").contains("resource already exists: projectcalico-default-allow with error: projectcalico-default-allow already exists."));
    assert!(
        format!(
            "{:?}",
            del(&store, Kind::Profile, "", "projectcalico-default-allow")
        )
        .contains("cannot be deleted")
    );
    del(&store, Kind::Profile, "", "kns.prod").unwrap();
    assert!(stored(&store, "profiles/kns.prod").is_none());
}

#[test]
fn network_sets_and_their_wide_table() {
    let store = MemKv::new();
    let nets: Vec<String> = (0..12).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    let doc = format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: many\n  namespace: ns1\nspec:\n  nets: [{}]\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: dns\n  labels:\n    role: dns\nspec:\n  nets: [8.8.8.8, 2001:4860:4860::8888/128]\n",
        nets.join(", ")
    );
    let (out, r) = run(&store, &doc, Action::Create);
    assert_eq!(r, Ok(()));
    assert_eq!(out, "Successfully created 2 resource(s)\n");
    let ns = Namespaces {
        namespace: Some("ns1".into()),
        all: false,
    };
    let (out, _) = show(&store, Kind::NetworkSet, &[], ns, Format::Wide);
    // joinAndTruncate(nets, ",", 80).
    assert_eq!(
        out,
        "NAMESPACE   NAME   NETS                                                                               \n\
         ns1         many   10.0.0.0/16,10.1.0.0/16,10.2.0.0/16,10.3.0.0/16,10.4.0.0/16,10.5.0.0/16,10.6....   \n\n"
    );
    let (out, _) = show(
        &store,
        Kind::GlobalNetworkSet,
        &[],
        Namespaces::default(),
        Format::Ps,
    );
    assert_eq!(out, "NAME   \ndns    \n\n");
    let (_, r) = run(
        &store,
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: bad\nspec:\n  nets: [10.0.0.0/33]\n",
        Action::Create,
    );
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to create 'GlobalNetworkSet' resource: [error with field Nets[0] = '10.0.0.0/33' (Reason: failed to validate Field: Nets[0] because of Tag: cidr )]".into()
        ))
    );
}

/// Fields the model does not type (Felix has well over a hundred) are kept as written.
#[test]
fn felix_configuration_round_trips_every_field() {
    let store = MemKv::new();
    let doc = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  defaultEndpointToHostAction: Accept\n  bpfEnabled: false\n  routeTableRanges:\n  - min: 1\n    max: 250\n  healthTimeoutOverrides:\n  - name: InternalDataplaneMainLoop\n    timeout: 30s\n  logSeverityScreen: Info\n";
    run(&store, doc, Action::Apply).1.unwrap();
    let v = stored(&store, "felixconfigurations/default").unwrap();
    assert_eq!(
        v["spec"],
        json!({"defaultEndpointToHostAction":"Accept","logSeverityScreen":"Info","bpfEnabled":false,
            "routeTableRanges":[{"min":1,"max":250}],
            "healthTimeoutOverrides":[{"name":"InternalDataplaneMainLoop","timeout":"30s"}]})
    );
    let (out, _) = show(
        &store,
        Kind::FelixConfiguration,
        &["default"],
        Namespaces::default(),
        Format::Yaml,
    );
    assert!(
        out.contains("  bpfEnabled: false\n") && out.contains("  - max: 250\n    min: 1\n"),
        "{out}"
    );
    let mut out = Vec::new();
    patch(
        &ctx(&store),
        Kind::FelixConfiguration,
        None,
        "default",
        r#"{"spec":{"bpfEnabled":true}}"#,
        &mut out,
    )
    .unwrap();
    let v = stored(&store, "felixconfigurations/default").unwrap();
    assert_eq!(v["spec"]["bpfEnabled"], json!(true));
    assert_eq!(v["spec"]["routeTableRanges"], json!([{"min":1,"max":250}]));
    // A field Calico does not have is refused, as its strict decoding does.
    let e = parse_documents("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: x\nspec:\n  bpfEnabledd: true\n").unwrap_err();
    assert_eq!(
        e,
        "field in document is not recognized or is in the wrong location: bpfEnabledd"
    );
    let e = parse_documents(&POLICY.replace("protocol: TCP", "protocol: TCP\n    prot: 1"))
        .unwrap_err();
    assert!(e.ends_with(": prot"), "{e}");
    let (_, r) = run(
        &store,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  defaultEndpointToHostAction: Reject\n",
        Action::Apply,
    );
    assert!(format!("{r:?}").contains("Tag: dropAcceptReturn"), "{r:?}");
}

/// One invalid document refuses the whole file (this calicoctl's documented difference).
#[test]
fn one_invalid_document_writes_nothing() {
    let store = MemKv::new();
    let bad = POLICY.replace("action: Allow", "action: Accept");
    let (out, r) = run(
        &store,
        &format!("{POLICY}---\n{}", bad.replace("allow-web", "second")),
        Action::Apply,
    );
    assert_eq!(out, "");
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to apply any 'NetworkPolicy' resources: [error with the following fields:\n\
             -  Action = 'Accept' (Reason: failed to validate Field: Action because of Tag: action )\n\
             -  spec.ingress[0].action (supported values: \"Allow\", \"Deny\", \"Log\", \"Pass\")\n]".into()
        ))
    );
    assert!(store.dump().is_empty());
}

#[test]
fn namespaces_of_documents_and_flags() {
    let mut objs = parse_documents(POLICY).unwrap();
    assert_eq!(
        handle_namespaces(&mut objs, Some("other")),
        ["resource namespace does not match client namespace. prod != other"]
    );
    let mut objs = parse_documents(&POLICY.replace("  namespace: prod\n", "")).unwrap();
    assert!(handle_namespaces(&mut objs, Some("dev")).is_empty());
    assert_eq!(objs[0].metadata().namespace, "dev");
    let mut objs =
        parse_documents("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\n")
            .unwrap();
    assert_eq!(
        handle_namespaces(&mut objs, Some("dev")),
        ["Tier is not namespaced"]
    );
    let mut objs = parse_documents(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\n  namespace: x\n",
    )
    .unwrap();
    assert_eq!(
        handle_namespaces(&mut objs, None),
        [
            "namespace should not be specified for a non-namespaced resource. Tier is not a namespaced resource"
        ]
    );
}

#[test]
fn patch_a_policy_in_its_namespace() {
    let store = MemKv::new();
    run(&store, POLICY, Action::Create).1.unwrap();
    let mut out = Vec::new();
    let r = patch(
        &ctx(&store),
        Kind::NetworkPolicy,
        None,
        "allow-web",
        r#"{"spec":{"order":5}}"#,
        &mut out,
    );
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "Failed to patch 'NetworkPolicy' resource: resource does not exist: NetworkPolicy(default/allow-web) with error: <nil>\n".into()
        ))
    );
    patch(
        &ctx(&store),
        Kind::NetworkPolicy,
        Some("prod"),
        "allow-web",
        r#"{"spec":{"order":5}}"#,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "Successfully patched 1 'NetworkPolicy' resource\n"
    );
    assert_eq!(
        stored(&store, "networkpolicies/prod/allow-web").unwrap()["spec"]["order"],
        json!(5)
    );
    let r = patch(
        &ctx(&store),
        Kind::NetworkPolicy,
        Some("prod"),
        "allow-web",
        r#"{"spec":{"types":["Sideways"]}}"#,
        &mut out,
    );
    assert!(format!("{r:?}").contains("Tag: policyType"), "{r:?}");
    let r = patch(
        &ctx(&store),
        Kind::Tier,
        Some("prod"),
        "default",
        "{}",
        &mut out,
    );
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "Failed to patch 'Tier' resource: Tier is not namespaced\n".into()
        ))
    );
}

/// Calico's apply makes the built-in tiers first (EnsureInitialized), so applying one on an
/// empty datastore is an update of it, and creating one fails as it then exists.
#[test]
fn a_built_in_tier_applied_on_an_empty_datastore() {
    let store = MemKv::new();
    let doc = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: kube-admin\n  labels:\n    a: b\nspec:\n  order: 1000\n  defaultAction: Pass\n";
    let (_, r) = run(&store, doc, Action::Create);
    assert_eq!(
        r,
        Err(CmdError::Failed(
            "failed to create 'Tier' resource: [resource already exists: Tier(kube-admin) with error: <nil>]".into()
        ))
    );
    let store = MemKv::new();
    let (out, r) = run(&store, doc, Action::Apply);
    assert_eq!(r, Ok(()), "{out}");
    let t = stored(&store, "tiers/kube-admin").unwrap();
    assert_eq!(t["metadata"]["labels"], json!({"a": "b"}));
    assert_eq!(t["spec"], json!({"order": 1000, "defaultAction": "Pass"}));
    let store = MemKv::new();
    let (_, r) = run(&store, doc, Action::Replace);
    assert_eq!(r, Ok(()));
}
