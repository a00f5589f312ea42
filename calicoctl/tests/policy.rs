//! calicoctl's policy kinds as a process against Debian's etcd (plain and mutual TLS):
//! what is stored, what `get` prints (golden tables and YAML), aliases, a resource with
//! fields the model does not type surviving a round trip, and refusals leaving etcd as it was.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use testkit::require;

mod common;
use common::{Fixture, with_placeholders};

const RES: &str = "/calico/resources/v3/projectcalico.org";

const FILE: &str = "apiVersion: projectcalico.org/v3
kind: Tier
metadata:
  name: security
spec:
  order: 100
  defaultAction: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: security.block-metadata
spec:
  tier: security
  order: 10
  selector: all()
  types: [Egress]
  egress:
  - action: Deny
    protocol: TCP
    destination:
      nets: [169.254.169.254/32]
      ports: [80]
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: prod
spec:
  order: 100
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
      namespaceSelector: kubernetes.io/metadata.name == 'prod'
    destination:
      ports: [80, \"8000:8080\", http]
  - action: Allow
    protocol: ICMP
    icmp:
      type: 8
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata:
  name: partners
  namespace: prod
  labels:
    role: partner
spec:
  nets: [198.51.100.0/24, 203.0.113.7]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata:
  name: dns
spec:
  nets: [8.8.8.8/32]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.prod
spec:
  ingress:
  - action: Allow
  egress:
  - action: Allow
  labelsToApply:
    pcns.projectcalico.org/name: prod
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  defaultEndpointToHostAction: Accept
  bpfEnabled: false
";

fn stored(f: &Fixture, key: &str) -> Value {
    f.get_json(&format!("{RES}/{key}")).unwrap()
}

#[test]
fn policy_resources_round_trip_with_calicos_tables() {
    require!("etcd");
    let f = Fixture::start();
    let out = f.apply(FILE);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully applied 7 resource(s)\n"),
        "{}",
        out.stderr
    );
    assert_eq!(
        with_placeholders(stored(&f, "networkpolicies/prod/allow-web")),
        json!({"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3",
            "metadata":{"name":"allow-web","namespace":"prod","uid":"UID","creationTimestamp":"TS",
                "labels":{"projectcalico.org/tier":"default"}},
            "spec":{"tier":"default","order":100,
                "ingress":[
                    {"action":"Allow","protocol":"TCP",
                     "source":{"selector":"role == 'frontend'","namespaceSelector":"kubernetes.io/metadata.name == 'prod'"},
                     "destination":{"ports":[80,"8000:8080","http"]}},
                    {"action":"Allow","protocol":"ICMP","icmp":{"type":8}}],
                "selector":"app == 'web'","types":["Ingress"]}})
    );
    assert_eq!(
        with_placeholders(stored(&f, "tiers/security"))["spec"],
        json!({"order":100,"defaultAction":"Pass"})
    );
    assert_eq!(
        stored(&f, "globalnetworkpolicies/security.block-metadata")["metadata"]["labels"],
        json!({"projectcalico.org/tier":"security"})
    );
    assert_eq!(
        stored(&f, "felixconfigurations/default")["spec"],
        json!({"defaultEndpointToHostAction":"Accept","bpfEnabled":false})
    );
    for key in [
        "tiers/default",
        "tiers/kube-admin",
        "tiers/kube-baseline",
        "clusterinformations/default",
    ] {
        assert!(f.get_json(&format!("{RES}/{key}")).is_some(), "{key}");
    }

    // Golden tables, as resourcemgr/*.go lay them out (text/tabwriter).
    let tables: [(&[&str], &str); 9] = [
        (
            &["get", "np", "-A", "-o", "wide"],
            "NAMESPACE   NAME        TIER      ORDER   SELECTOR       \nprod        allow-web   default   100     app == 'web'   \n\n",
        ),
        (
            &["get", "policies", "-n", "prod"],
            "NAMESPACE   NAME        TIER      \nprod        allow-web   default   \n\n",
        ),
        (&["get", "networkpolicy"], "NAME   TIER   \n\n"),
        (
            &["get", "gnp", "-o", "wide"],
            "NAME                      TIER       ORDER   SELECTOR   \nsecurity.block-metadata   security   10      all()      \n\n",
        ),
        (
            &["get", "tiers"],
            "NAME            ORDER   \nsecurity        100     \nkube-admin      1000    \ndefault         1e+06   \nkube-baseline   1e+07   \n\n",
        ),
        (
            &["get", "netsets", "-n", "prod", "-o", "wide"],
            "NAMESPACE   NAME       NETS                          \nprod        partners   198.51.100.0/24,203.0.113.7   \n\n",
        ),
        (
            &["get", "globalnetworksets", "-o", "wide"],
            "NAME   NETS         \ndns    8.8.8.8/32   \n\n",
        ),
        (
            &["get", "pro", "-o", "wide"],
            "NAME                          LABELS                             \nkns.prod                      pcns.projectcalico.org/name=prod   \nprojectcalico-default-allow                                      \n\n",
        ),
        (&["get", "felixconfig"], "NAME      \ndefault   \n\n"),
    ];
    for (args, want) in tables {
        assert_eq!(f.ok(args), want, "{args:?}");
    }

    // Golden YAML of one policy.
    let yaml = f.ok(&[
        "get",
        "networkpolicy",
        "allow-web",
        "-n",
        "prod",
        "-o",
        "yaml",
    ]);
    let v: Value =
        serde_json::from_str(&f.ok(&["get", "np", "allow-web", "-n", "prod", "-o", "json"]))
            .unwrap();
    let (uid, ts, rv) = (
        v["metadata"]["uid"].as_str().unwrap(),
        v["metadata"]["creationTimestamp"].as_str().unwrap(),
        v["metadata"]["resourceVersion"].as_str().unwrap(),
    );
    assert_eq!(
        yaml,
        format!(
            "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  creationTimestamp: \"{ts}\"
  labels:
    projectcalico.org/tier: default
  name: allow-web
  namespace: prod
  resourceVersion: \"{rv}\"
  uid: {uid}
spec:
  ingress:
  - action: Allow
    destination:
      ports:
      - 80
      - 8000:8080
      - http
    protocol: TCP
    source:
      namespaceSelector: kubernetes.io/metadata.name == 'prod'
      selector: role == 'frontend'
  - action: Allow
    icmp:
      type: 8
    protocol: ICMP
  order: 100
  selector: app == 'web'
  tier: default
  types:
  - Ingress
"
        )
    );

    // Delete by name, in the namespace given; the now-empty tier can go.
    assert_eq!(
        f.ok(&["delete", "policy", "allow-web", "-n", "prod"]),
        "Successfully deleted 1 'NetworkPolicy' resource(s)\n"
    );
    assert!(
        f.get_json(&format!("{RES}/networkpolicies/prod/allow-web"))
            .is_none()
    );
    f.ok(&["delete", "gnp", "security.block-metadata"]);
    assert_eq!(
        f.ok(&["delete", "tier", "security"]),
        "Successfully deleted 1 'Tier' resource(s)\n"
    );
}

/// Fields the model keeps untyped (Felix's many settings, a rule's `http` and `metadata`)
/// survive get -o yaml | apply -f - unchanged.
#[test]
fn a_resource_with_untyped_fields_round_trips() {
    require!("etcd");
    let f = Fixture::start();
    let felix = "apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: node.n1
spec:
  routeTableRanges:
  - max: 250
    min: 1
  healthTimeoutOverrides:
  - name: InternalDataplaneMainLoop
    timeout: 30s
  nftablesMode: Enabled
  logSeverityScreen: Debug
";
    let out = f.apply(felix);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let gnp = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: web
  annotations:
    owner: team-a
spec:
  selector: app == 'web'
  performanceHints: [AssumeNeededOnEveryNode]
  ingress:
  - action: Allow
    protocol: TCP
    http:
      methods: [GET]
      paths:
      - prefix: /api
    metadata:
      annotations:
        rule: one
";
    let out = f.apply(gnp);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (kind, name, key) in [
        ("felixconfig", "node.n1", "felixconfigurations/node.n1"),
        ("gnp", "web", "globalnetworkpolicies/web"),
    ] {
        // Compared as JSON: untyped fields keep the order they were last written in.
        let before = stored(&f, key);
        let yaml = f.ok(&["get", kind, name, "-o", "yaml"]);
        let out = f.apply(&yaml);
        assert_eq!(out.code, 0, "{kind}: {}{}", out.stdout, out.stderr);
        assert_eq!(
            stored(&f, key),
            before,
            "{kind} unchanged by the round trip"
        );
    }
    let v = stored(&f, "globalnetworkpolicies/web");
    assert_eq!(
        v["spec"]["ingress"][0]["http"],
        json!({"methods":["GET"],"paths":[{"prefix":"/api"}]})
    );
    assert_eq!(
        v["spec"]["performanceHints"],
        json!(["AssumeNeededOnEveryNode"])
    );
    assert_eq!(
        stored(&f, "felixconfigurations/node.n1")["spec"]["nftablesMode"],
        "Enabled"
    );
}

/// Every refusal leaves etcd exactly as it was.
#[test]
fn refusals_leave_etcd_unchanged() {
    require!("etcd");
    let f = Fixture::start();
    let out = f.apply(FILE);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = f.dump();
    let refusals: [(&[&str], Option<&str>, &str); 10] = [
        // One invalid document among good ones: the whole file is refused.
        (
            &["apply", "-f", "-"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: ok\nspec:\n  nets: [10.0.0.0/8]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: bad\nspec:\n  ingress:\n  - action: Allow\n    destination:\n      ports: [80]\n",
            ),
            "failed to apply any resources: [error with field Destination.Ports = '[80]' (rules with numeric port or port range must set protocol to TCP or UDP or SCTP)]\n",
        ),
        (
            &["create", "-f", "-"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  tier: nope\n",
            ),
            "failed to create 'NetworkPolicy' resource: [resource does not exist: Tier(nope) with error: <nil>]\n",
        ),
        (
            &["apply", "-f", "-"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\nspec:\n  selector: has(\n",
            ),
            "failed to apply 'GlobalNetworkPolicy' resource: [error with field Selector = 'has(' (Reason: failed to validate Field: Selector because of Tag: selector )]\n",
        ),
        (
            &["apply", "-f", "-"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: prod\nspec:\n  egress:\n  - action: Allow\n    protocol: ICMP\n    icmp:\n      type: 300\n",
            ),
            "failed to apply 'NetworkPolicy' resource: [error with the following fields:\n-  Type = '300' (Reason: failed to validate Field: Type because of Tag: lte )\n-  spec.egress[0].icmp.type (spec.egress[0].icmp.type in body should be less than or equal to 254)\n]\n",
        ),
        (
            &["apply", "-f", "-", "-n", "dev"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: s\n  namespace: prod\n",
            ),
            "failed to apply 'NetworkSet' resource: [resource namespace does not match client namespace. prod != dev]\n",
        ),
        (
            &["delete", "-f", "-", "-n", "dev"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: partners\n  namespace: prod\n",
            ),
            "Failed to delete 'NetworkSet' resource: resource namespace does not match client namespace. prod != dev\n",
        ),
        (
            &["delete", "tier", "security"],
            None,
            "Failed to delete 'Tier' resource: operation delete is not supported on security: Cannot delete a non-empty tier\n",
        ),
        (
            &["delete", "tier", "default"],
            None,
            "Failed to delete 'Tier' resource: operation Delete is not supported on default: Cannot delete default tier\n",
        ),
        (
            &["delete", "profile", "projectcalico-default-allow"],
            None,
            "Failed to delete 'Profile' resource: operation Delete is not supported on projectcalico-default-allow: The profile \"projectcalico-default-allow\" is a default provided by Calico and cannot be deleted\n",
        ),
        (
            &["apply", "-f", "-"],
            Some(
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: knp.default.x\nspec: {}\n",
            ),
            "failed to apply 'NetworkPolicy' resource: [operation create or apply is not supported on NetworkPolicy(default/knp.default.x): kubernetes network policies must be managed through the kubernetes API]\n",
        ),
    ];
    for (args, stdin, want) in refusals {
        let out = f.run(args, stdin);
        assert_eq!(
            (out.code, out.stderr.as_str(), out.stdout.as_str()),
            (1, want, ""),
            "{args:?}"
        );
        assert_eq!(f.dump(), before, "{args:?} changed etcd");
    }
}

#[test]
fn policies_over_mutual_tls() {
    require!("etcd");
    let f = Fixture::start_tls();
    let out = f.apply(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-egress\nspec:\n  selector: all()\n  egress:\n  - action: Deny\n",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        f.ok(&["get", "gnps", "-o", "wide"]),
        "NAME          TIER      ORDER   SELECTOR   \ndeny-egress   default   <nil>   all()      \n\n"
    );
    assert_eq!(
        stored(&f, "globalnetworkpolicies/deny-egress")["spec"]["types"],
        json!(["Egress"])
    );
    f.ok(&["delete", "globalnetworkpolicy", "deny-egress"]);
    assert!(
        f.get_json(&format!("{RES}/globalnetworkpolicies/deny-egress"))
            .is_none()
    );
}
