//! calicoctl as a process against Debian's etcd: resources round trip, nothing written on bad
//! input, the ipam commands on data made by the IPAM library, and mutual TLS via calicoctl.cfg.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use calico_datastore::KvStore;
use calico_datastore::model::{AllocationBlock, IpamHandle, keys};
use calico_ipam::{AssignRequest, Ipam};
use ipnet::IpNet;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use testkit::require;

mod common;
use common::{Fixture, run_bin, with_placeholders};

const POOL: &str = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool1
spec:
  cidr: 10.244.0.0/16
  ipipMode: Always
  natOutgoing: true
";

const POOL_KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/pool1";

/// The Node calico-node registers: the IPAM assigns automatically only to registered nodes.
const NODE1: &str = "apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node1
";

#[test]
fn ippool_round_trip_with_calicos_stored_json() {
    require!("etcd");
    let f = Fixture::start();
    let out = f.apply(POOL);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully applied 1 'IPPool' resource(s)\n"),
        "{}",
        out.stderr
    );

    let raw = f.etcd.get(POOL_KEY).unwrap().unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    let (uid, ts) = (
        v["metadata"]["uid"].as_str().unwrap().to_string(),
        v["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    assert_eq!(
        raw,
        format!(
            r#"{{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{{"name":"pool1","uid":"{uid}","creationTimestamp":"{ts}"}},"spec":{{"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}}}"#
        )
    );
    with_placeholders(v);
    let ci = f
        .get_json("/calico/resources/v3/projectcalico.org/clusterinformations/default")
        .unwrap();
    assert_eq!(ci["spec"]["datastoreReady"], true);

    // get: ps, wide, yaml, json.
    assert_eq!(
        f.ok(&["get", "ippool"]),
        "NAME    CIDR            SELECTOR   \npool1   10.244.0.0/16   all()      \n\n"
    );
    assert_eq!(
        f.ok(&["get", "ipp", "-o", "wide"]),
        "NAME    CIDR            NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR   ASSIGNMENTMODE   \n\
         pool1   10.244.0.0/16   true   Always     Never       false      false              all()      Automatic        \n\n"
    );
    let rv = f.store().get(POOL_KEY).unwrap().unwrap().mod_revision;
    assert_eq!(
        f.ok(&["get", "pools", "pool1", "-o", "yaml"]),
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  creationTimestamp: \"{ts}\"\n  \
             name: pool1\n  resourceVersion: \"{rv}\"\n  uid: {uid}\nspec:\n  allowedUses:\n  - Workload\n  \
             - Tunnel\n  assignmentMode: Automatic\n  blockSize: 26\n  cidr: 10.244.0.0/16\n  ipipMode: Always\n  \
             natOutgoing: true\n  nodeSelector: all()\n  vxlanMode: Never\n"
        )
    );
    let list: Value = serde_json::from_str(&f.ok(&["get", "ippools", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "IPPoolList");
    assert_eq!(
        list["items"][0]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    assert!(
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= rv
    );
    let missing = f.run(&["get", "ippool", "pool1", "nope"], None);
    assert_eq!(missing.code, 1);
    assert!(missing.stdout.contains("pool1"));
    assert_eq!(
        missing.stderr,
        "resource does not exist: IPPool(nope) with error: <nil>\n"
    );

    // Apply again with a change: uid and creationTimestamp are kept.
    let changed = POOL.replace("natOutgoing: true", "natOutgoing: false");
    assert_eq!(f.apply(&changed).code, 0);
    let v = f.get_json(POOL_KEY).unwrap();
    assert_eq!(v["metadata"]["uid"], uid.as_str());
    assert_eq!(v["metadata"]["creationTimestamp"], ts.as_str());
    assert!(v["spec"].get("natOutgoing").is_none());

    // create of an existing pool fails; a stale resourceVersion is a conflict.
    let again = f.run(&["create", "-f", "-"], Some(POOL));
    assert_eq!(again.code, 1);
    assert_eq!(
        again.stderr,
        "failed to create 'IPPool' resource: [resource already exists: IPPool(pool1) with error: <nil>]\n"
    );
    let stale = POOL.replace("name: pool1", "name: pool1\n  resourceVersion: \"1\"");
    assert_eq!(
        f.apply(&stale).stderr,
        "failed to apply 'IPPool' resource: [update conflict: IPPool(pool1)]\n"
    );
    // An overlapping pool and a changed CIDR are refused.
    let overlap = POOL
        .replace("pool1", "pool2")
        .replace("10.244.0.0/16", "10.244.128.0/17");
    assert_eq!(
        f.apply(&overlap).stderr,
        "failed to apply 'IPPool' resource: [error with field IPPool.Spec.CIDR = '10.244.128.0/17' (IPPool(pool2) CIDR overlaps with IPPool(pool1) CIDR 10.244.0.0/16)]\n"
    );
    let moved = POOL.replace("10.244.0.0/16", "10.245.0.0/16");
    assert_eq!(
        f.apply(&moved).stderr,
        "failed to apply 'IPPool' resource: [error with field IPPool.Spec.CIDR = '10.245.0.0/16' (IPPool CIDR cannot be modified)]\n"
    );

    // Delete by kind and name; then it is gone.
    assert_eq!(
        f.ok(&["delete", "ippool", "pool1"]),
        "Successfully deleted 1 'IPPool' resource(s)\n"
    );
    assert!(f.etcd.get(POOL_KEY).unwrap().is_none());
    let gone = f.run(&["delete", "ippool", "pool1"], None);
    assert_eq!(gone.code, 1);
    assert_eq!(
        gone.stderr,
        "Failed to delete 'IPPool' resource: resource does not exist: IPPool(pool1) with error: <nil>\n"
    );
    assert_eq!(
        f.ok(&["get", "ippool", "-o", "yaml"]).lines().nth(1),
        Some("items: []")
    );
}

#[test]
fn node_and_ipam_configuration_round_trip() {
    require!("etcd");
    let f = Fixture::start();
    let docs = "apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node1
  labels:
    zone: a
spec:
  bgp:
    ipv4Address: 192.168.0.1/24
    ipv4IPIPTunnelAddr: 10.244.0.1
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
";
    let out = f.apply(docs);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully applied 2 resource(s)\n"),
        "{}",
        out.stderr
    );
    let node = with_placeholders(
        f.get_json("/calico/resources/v3/projectcalico.org/nodes/node1")
            .unwrap(),
    );
    assert_eq!(
        node,
        json!({"kind":"Node","apiVersion":"projectcalico.org/v3",
               "metadata":{"name":"node1","uid":"UID","creationTimestamp":"TS","labels":{"zone":"a"}},
               "spec":{"bgp":{"ipv4Address":"192.168.0.1/24","ipv4IPIPTunnelAddr":"10.244.0.1"}},
               "status":{}})
    );
    assert_eq!(
        with_placeholders(f.get_json(IPAMCONFIGURATION_KEY).unwrap()),
        json!({"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3",
               "metadata":{"name":"default","uid":"UID","creationTimestamp":"TS"},
               "spec":{"strictAffinity":true,"maxBlocksPerHost":4,"autoAllocateBlocks":false}})
    );
    assert!(f.etcd.get(keys::IPAM_CONFIG).unwrap().is_none());
    assert_eq!(
        f.ok(&["get", "nodes", "-o", "wide"]),
        "NAME    ASN       IPV4             IPV6   \nnode1   (64512)   192.168.0.1/24          \n\n"
    );
    assert_eq!(f.ok(&["get", "no"]), "NAME    \nnode1   \n\n");
    assert_eq!(
        f.ok(&["get", "ipamconfig"]),
        "NAME      STRICTAFFINITY   AUTOALLOCATEBLOCKS   \ndefault   true             false                \n\n"
    );
    let cfg: Value =
        serde_json::from_str(&f.ok(&["get", "ipamconfiguration", "default", "-o", "json"]))
            .unwrap();
    assert_eq!(
        cfg["spec"],
        json!({"strictAffinity": true, "maxBlocksPerHost": 4, "autoAllocateBlocks": false})
    );
    assert_eq!(cfg["kind"], "IPAMConfiguration");

    // Update a node from a file, then delete both by file.
    let path = f.file("node.yaml", &docs.replace("zone: a", "zone: b"));
    assert_eq!(
        f.ok(&["apply", "-f", path.to_str().unwrap()]),
        "Successfully applied 2 resource(s)\n"
    );
    let node = f
        .get_json("/calico/resources/v3/projectcalico.org/nodes/node1")
        .unwrap();
    assert_eq!(node["metadata"]["labels"]["zone"], "b");
    assert_eq!(
        f.ok(&["delete", "-f", path.to_str().unwrap()]),
        "Successfully deleted 2 resource(s)\n"
    );
    assert!(
        f.etcd
            .get("/calico/resources/v3/projectcalico.org/nodes/node1")
            .unwrap()
            .is_none()
    );
    assert!(f.etcd.get(IPAMCONFIGURATION_KEY).unwrap().is_none());
    assert_eq!(
        f.ok(&["get", "ipamconfigs"]),
        "NAME   STRICTAFFINITY   AUTOALLOCATEBLOCKS   \n\n"
    );
}

const IPAMCONFIGURATION_KEY: &str =
    "/calico/resources/v3/projectcalico.org/ipamconfigurations/default";

/// In etcd mode the IPAMConfiguration resource and the IPAM's config are two objects: `get`,
/// `apply`, `create` and `delete` use the first (mirrors clientv3/ipamconfig.go over
/// model/resource.go's `ipamconfigurations` key and resourcemgr/ipamconfiguration.go's
/// columns), `ipam configure` and `ipam show --show-configuration` the second (mirrors
/// ipam.go GetIPAMConfig/SetIPAMConfig over model.IPAMConfigKey, `/calico/ipam/v2/config`).
#[test]
fn ipam_configuration_resource_and_ipam_config_are_separate_objects() {
    require!("etcd");
    let f = Fixture::start();
    // `ipam show --show-configuration` creates the IPAM's default config, as GetIPAMConfig.
    assert_eq!(
        f.ok(&["ipam", "show", "--show-configuration"]),
        "+------------------------------+-----------+\n\
         |           PROPERTY           |   VALUE   |\n\
         +------------------------------+-----------+\n\
         | StrictAffinity               | false     |\n\
         | AutoAllocateBlocks           | true      |\n\
         | MaxBlocksPerHost             |         0 |\n\
         | KubeVirtVMAddressPersistence | \"Enabled\" |\n\
         +------------------------------+-----------+\n"
    );
    assert_eq!(
        f.etcd.get(keys::IPAM_CONFIG).unwrap().unwrap(),
        r#"{"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
    );
    // ... which is not an IPAMConfiguration resource.
    assert_eq!(
        f.ok(&["get", "ipamconfigurations"]),
        "NAME   STRICTAFFINITY   AUTOALLOCATEBLOCKS   \n\n"
    );
    let missing = f.run(&["get", "ipamconfig", "default"], None);
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (
            1,
            "resource does not exist: IPAMConfiguration(default) with error: <nil>\n"
        )
    );

    // create: validator.Validate then validateMetadata; no SetIPAMConfig rules.
    let created = f.run(
        &["create", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: default\nspec:\n  strictAffinity: false\n  autoAllocateBlocks: false\n  maxBlocksPerHost: 7\n"),
    );
    assert_eq!(
        (created.code, created.stdout.as_str()),
        (
            0,
            "Successfully created 1 'IPAMConfiguration' resource(s)\n"
        ),
        "{}",
        created.stderr
    );
    assert_eq!(
        with_placeholders(f.get_json(IPAMCONFIGURATION_KEY).unwrap()),
        json!({"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3",
               "metadata":{"name":"default","uid":"UID","creationTimestamp":"TS"},
               "spec":{"strictAffinity":false,"maxBlocksPerHost":7,"autoAllocateBlocks":false}})
    );
    assert_eq!(
        f.ok(&["get", "ipamconfig", "-o", "wide"]),
        "NAME      STRICTAFFINITY   AUTOALLOCATEBLOCKS   MAXBLOCKSPERHOST   \n\
         default   false            false                7                  \n\n"
    );
    let yaml = f.ok(&["get", "ipamconfig", "default", "-o", "yaml"]);
    assert!(
        yaml.starts_with("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  creationTimestamp: ")
            && yaml.ends_with("spec:\n  autoAllocateBlocks: false\n  maxBlocksPerHost: 7\n  strictAffinity: false\n"),
        "{yaml}"
    );
    // The IPAM's config is untouched, and `ipam configure` leaves the resource alone.
    assert_eq!(
        f.etcd.get(keys::IPAM_CONFIG).unwrap().unwrap(),
        r#"{"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
    );
    let before = f.etcd.get(IPAMCONFIGURATION_KEY).unwrap();
    assert_eq!(
        f.ok(&["ipam", "configure", "--strictaffinity=true"]),
        "Successfully set StrictAffinity to: true\n"
    );
    assert_eq!(f.etcd.get(IPAMCONFIGURATION_KEY).unwrap(), before);
    assert!(
        f.ok(&["ipam", "show", "--show-configuration"])
            .contains("| StrictAffinity               | true      |")
    );

    // Only "default", and the CRD schema's limits.
    let other = f.apply("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: other\nspec: {}\n");
    assert_eq!(
        (other.code, other.stderr.as_str()),
        (
            1,
            "failed to apply 'IPAMConfiguration' resource: [Cannot create an IPAMConfiguration resource with a name other than \"default\"]\n"
        )
    );
    let enum_ = f.apply("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata:\n  name: default\nspec:\n  strictAffinity: true\n  autoAllocateBlocks: true\n  kubeVirtVMAddressPersistence: Sometimes\n");
    assert_eq!(
        (enum_.code, enum_.stderr.as_str()),
        (
            1,
            "failed to apply 'IPAMConfiguration' resource: [error with field spec.kubeVirtVMAddressPersistence (supported values: \"Enabled\", \"Disabled\")]\n"
        )
    );
    assert_eq!(f.etcd.get(IPAMCONFIGURATION_KEY).unwrap(), before);

    // delete removes the resource only.
    assert_eq!(
        f.ok(&["delete", "ipamconfig", "default"]),
        "Successfully deleted 1 'IPAMConfiguration' resource(s)\n"
    );
    assert!(f.etcd.get(IPAMCONFIGURATION_KEY).unwrap().is_none());
    assert!(f.etcd.get(keys::IPAM_CONFIG).unwrap().is_some());
}

/// A WorkloadEndpoint as Calico's CNI plugin stores it (k8s orchestrator, §8.3 field order).
fn k8s_wep(ns: &str, pod: &str, ip: &str, profiles: &[&str], nats: Value) -> (String, Value) {
    let name = format!("node1-k8s-{}-eth0", pod.replace('-', "--"));
    let mut spec = json!({"orchestrator":"k8s","node":"node1","containerID":"c0ffee","pod":pod,
        "endpoint":"eth0","ipNetworks":[format!("{ip}/32")],"profiles":profiles,
        "interfaceName":"cali1a2b3c4d5e6","mac":"ee:ee:ee:ee:ee:ee",
        "ports":[{"name":"http","protocol":"TCP","port":80,"hostPort":0,"hostIP":""}]});
    if !nats.is_null() {
        spec["ipNATs"] = nats;
    }
    let v = json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":name,"namespace":ns,"uid":"0b5e1b1a-0000-4000-8000-000000000001",
            "creationTimestamp":"2026-05-01T10:00:00Z",
            "labels":{"projectcalico.org/namespace":ns,"projectcalico.org/orchestrator":"k8s"}},
        "spec":spec});
    (keys::namespaced_resource("workloadendpoints", ns, &name), v)
}

#[test]
fn workload_endpoints_are_read_only_and_profiles_listed() {
    require!("etcd");
    let f = Fixture::start();
    let (nginx_key, nginx) = k8s_wep(
        "default",
        "nginx",
        "10.244.1.5",
        &["kns.default"],
        Value::Null,
    );
    let (dns_key, dns) = k8s_wep(
        "kube-system",
        "coredns-abc",
        "10.244.1.6",
        &["kns.kube-system", "ksa.kube-system.coredns"],
        json!([{"internalIP":"10.244.1.6","externalIP":"172.16.0.6"}]),
    );
    // As the CNI plugin writes it for the `cni` orchestrator: no pod, no workload.
    let cni_key =
        keys::namespaced_resource("workloadendpoints", "default", "node1-cni-abc123-eth0");
    let cni = json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":"node1-cni-abc123-eth0","namespace":"default"},
        "spec":{"orchestrator":"cni","node":"node1","containerID":"abc123","endpoint":"eth0",
            "ipNetworks":["10.244.1.7/32"],"profiles":["mynet"],"interfaceName":"caliabc123","mac":"ee:00:00:00:00:07"}});
    for (k, v) in [(&nginx_key, &nginx), (&dns_key, &dns), (&cni_key, &cni)] {
        f.etcd.put(k, &v.to_string()).unwrap();
    }
    let profile_key = keys::resource("profiles", "mynet");
    f.etcd
        .put(
            &profile_key,
            r#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"mynet","uid":"5b1f0000-0000-4000-8000-000000000002","creationTimestamp":"2026-05-01T10:00:00Z"},"spec":{"ingress":[{"action":"Allow","source":{"selector":"has(mynet)"}}],"egress":[{"action":"Allow"}],"labelsToApply":{"mynet":""}}}"#,
        )
        .unwrap();
    let before = f.dump();

    // The default namespace, in key order; WORKLOAD falls back to the pod.
    assert_eq!(
        f.ok(&["get", "wep", "-o", "wide"]),
        "NAME                    WORKLOAD   NODE    NETWORKS        INTERFACE         PROFILES      NATS   \n\
         node1-cni-abc123-eth0              node1   10.244.1.7/32   caliabc123        mynet                \n\
         node1-k8s-nginx-eth0    nginx      node1   10.244.1.5/32   cali1a2b3c4d5e6   kns.default          \n\n"
    );
    assert_eq!(
        f.ok(&["get", "workloadendpoints"]),
        concat!(
            "WORKLOAD   NODE    NETWORKS        INTERFACE         \n",
            "           node1   10.244.1.7/32   caliabc123        \n",
            "nginx      node1   10.244.1.5/32   cali1a2b3c4d5e6   \n\n",
        )
    );
    // -A: every namespace, NAMESPACE first.
    assert_eq!(
        f.ok(&["get", "wep", "-A"]),
        "NAMESPACE     WORKLOAD      NODE    NETWORKS        INTERFACE         \n\
         default                     node1   10.244.1.7/32   caliabc123        \n\
         default       nginx         node1   10.244.1.5/32   cali1a2b3c4d5e6   \n\
         kube-system   coredns-abc   node1   10.244.1.6/32   cali1a2b3c4d5e6   \n\n"
    );
    // -n: that namespace, also with the NAMESPACE column (as calicoctl).
    assert_eq!(
        f.ok(&["get", "weps", "-n", "kube-system", "-o", "wide"]),
        "NAMESPACE     NAME                          WORKLOAD      NODE    NETWORKS        INTERFACE         PROFILES                                  NATS                      \n\
         kube-system   node1-k8s-coredns--abc-eth0   coredns-abc   node1   10.244.1.6/32   cali1a2b3c4d5e6   kns.kube-system,ksa.kube-system.coredns   {10.244.1.6 172.16.0.6}   \n\n"
    );
    // One by name: the stored object with its resourceVersion.
    let rv = f.store().get(&nginx_key).unwrap().unwrap().mod_revision;
    let mut want = nginx.clone();
    want["metadata"]["resourceVersion"] = json!(rv.to_string());
    let got: Value =
        serde_json::from_str(&f.ok(&["get", "wep", "node1-k8s-nginx-eth0", "-o", "json"])).unwrap();
    assert_eq!(got, want);
    let list: Value = serde_json::from_str(&f.ok(&["get", "wep", "-A", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "WorkloadEndpointList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    let missing = f.run(&["get", "wep", "nope", "-n", "kube-system"], None);
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (
            1,
            "resource does not exist: WorkloadEndpoint(kube-system/nope) with error: <nil>\n"
        )
    );
    let both = f.run(&["get", "wep", "-A", "-n", "default"], None);
    assert_eq!(
        (both.code, both.stderr.as_str()),
        (
            1,
            "cannot use both --namespace and --all-namespaces flags at the same time\n"
        )
    );
    let pools = f.run(&["get", "ippool", "-A"], None);
    assert_eq!(
        (pools.code, pools.stderr.as_str()),
        (1, "IPPool is not namespaced\n")
    );

    // Profiles: the stored one, then the built-in default-allow one.
    let prv = f.store().get(&profile_key).unwrap().unwrap().mod_revision;
    assert_eq!(
        f.ok(&["get", "profile", "-o", "yaml"]),
        format!(
            "apiVersion: projectcalico.org/v3\n\
             items:\n\
             - apiVersion: projectcalico.org/v3\n  \
               kind: Profile\n  \
               metadata:\n    \
                 creationTimestamp: \"2026-05-01T10:00:00Z\"\n    \
                 name: mynet\n    \
                 resourceVersion: \"{prv}\"\n    \
                 uid: 5b1f0000-0000-4000-8000-000000000002\n  \
               spec:\n    \
                 egress:\n    \
                 - action: Allow\n    \
                 ingress:\n    \
                 - action: Allow\n      \
                   source:\n        \
                     selector: has(mynet)\n    \
                 labelsToApply:\n      \
                   mynet: \"\"\n\
             - apiVersion: projectcalico.org/v3\n  \
               kind: Profile\n  \
               metadata:\n    \
                 name: projectcalico-default-allow\n    \
                 resourceVersion: \"1\"\n  \
               spec:\n    \
                 egress:\n    \
                 - action: Allow\n    \
                 ingress:\n    \
                 - action: Allow\n\
             kind: ProfileList\n\
             metadata:\n  \
               resourceVersion: \"{prv}\"\n"
        )
    );
    assert_eq!(
        f.ok(&["get", "pros", "-o", "wide"]),
        "NAME                          LABELS   \n\
         mynet                         mynet=   \n\
         projectcalico-default-allow            \n\n"
    );

    // WorkloadEndpoints are read-only: apply, create and delete refuse them and write
    // nothing (Profiles are writable: see tests/policy.rs).
    let doc = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: default\nspec: {}\n";
    for verb in ["apply", "create", "delete"] {
        let out = f.run(&[verb, "-f", "-"], Some(doc));
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (
                1,
                "failed to execute command: resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported\n"
            ),
            "{verb}"
        );
    }
    let del = f.run(&["delete", "wep", "node1-k8s-nginx-eth0"], None);
    assert_eq!(
        (del.code, del.stderr.as_str()),
        (
            1,
            "resource type 'WorkloadEndpoint' is read-only in this calicoctl: only get is supported\n"
        )
    );
    assert_eq!(f.dump(), before);
}

#[test]
fn bad_documents_write_nothing() {
    require!("etcd");
    let f = Fixture::start();
    assert_eq!(f.apply(POOL).code, 0);
    let before = f.dump();
    let unknown_kind = format!(
        "{POOL}---\napiVersion: projectcalico.org/v3\nkind: Widget\nmetadata:\n  name: w\n"
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad yaml",
            format!("{POOL}---\nkind: IPPool\n  metadata: [\n"),
            "failed to execute command: error converting YAML to JSON: yaml: ",
        ),
        (
            "unknown kind",
            unknown_kind,
            "failed to execute command: unknown resource type (Widget) and/or version (projectcalico.org/v3)",
        ),
        (
            "unknown field",
            POOL.replace("pool1", "pool3")
                .replace("natOutgoing", "natOutgoin"),
            "failed to execute command: field in document is not recognized or is in the wrong location: natOutgoin",
        ),
        (
            "missing cidr",
            format!(
                "{}---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool4\nspec: {{}}\n",
                POOL.replace("pool1", "pool5")
                    .replace("10.244.0.0/16", "10.9.0.0/16")
            ),
            "failed to apply any 'IPPool' resources: [error with field IPPool.Spec.CIDR (IPPool CIDR must be specified)]",
        ),
        (
            "no kind",
            "apiVersion: projectcalico.org/v3\nmetadata:\n  name: x\n".into(),
            "failed to execute command: Object 'Kind' is missing in",
        ),
        (
            "bad block size",
            POOL.replace("pool1", "pool6")
                .replace("10.244.0.0/16", "10.8.0.0/16")
                .replace("natOutgoing: true", "blockSize: 16"),
            "failed to apply 'IPPool' resource: [error with field IPPool.Spec.BlockSize = '16' (IPv4 block size must be between 20 and 32)]",
        ),
    ];
    for (what, text, want) in cases {
        for verb in ["apply", "create"] {
            let out = f.run(&[verb, "-f", "-"], Some(&text));
            assert_eq!(out.code, 1, "{what} ({verb}): {}", out.stdout);
            assert_eq!(out.stdout, "", "{what} ({verb})");
            assert_eq!(
                out.stderr.lines().count(),
                1,
                "{what} ({verb}): one line: {}",
                out.stderr
            );
            let want = want.replace("apply", verb);
            assert!(
                out.stderr.starts_with(&want),
                "{what} ({verb}): {}",
                out.stderr
            );
            assert_eq!(f.dump(), before, "{what} ({verb}) wrote something");
        }
    }
    let empty = f.run(&["apply", "-f", "-"], Some("---\n"));
    assert_eq!(
        (empty.code, empty.stderr.as_str()),
        (1, "no resources specified in file -\n")
    );
    let nofile = f.run(&["apply", "-f", "/nonexistent.yaml"], None);
    assert_eq!(nofile.code, 1);
    assert!(
        nofile
            .stderr
            .starts_with("failed to execute command: open /nonexistent.yaml"),
        "{}",
        nofile.stderr
    );
    assert_eq!(f.dump(), before);
}

/// Issue 12 #2: a pool whose selector is nested 10k deep (by `(` or `!`) is refused with
/// code 1 naming the field and the reason (it used to overflow calicoctl's stack), and
/// nothing is written.
#[test]
fn deeply_nested_selectors_are_refused() {
    require!("etcd");
    let f = Fixture::start();
    let before = f.dump();
    let parens = format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000));
    let bangs = format!("{}has(a)", "!".repeat(10_000));
    let chain = vec!["has(a)"; 20_000].join(" && ");
    for (field, yaml_field, sel) in [
        ("NodeSelector", "nodeSelector", &parens),
        ("NodeSelector", "nodeSelector", &bangs),
        ("NamespaceSelector", "namespaceSelector", &parens),
        ("NodeSelector", "nodeSelector", &chain),
    ] {
        let pool = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: deep\nspec:\n  \
             cidr: 10.41.0.0/24\n  allowedUses: [Workload]\n  {yaml_field}: '{sel}'\n"
        );
        let out = f.apply(&pool);
        assert_eq!(out.code, 1, "{field}: {}", out.stderr);
        assert_eq!(out.stdout, "");
        assert!(!out.stderr.contains("overflow"), "{}", out.stderr);
        let want =
            format!("failed to apply 'IPPool' resource: [error with field IPPool.Spec.{field} (");
        assert!(out.stderr.starts_with(&want), "{}", out.stderr);
        assert!(
            out.stderr.contains("nested too deeply") || out.stderr.contains("terms"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.len() < 1000, "the value is not echoed in full");
        assert_eq!(f.dump(), before, "{field}: wrote something");
    }
}

fn request(handle: &str, pod: &str, n: usize) -> AssignRequest {
    AssignRequest {
        handle: handle.into(),
        attrs: [("node", "node1"), ("pod", pod), ("namespace", "default")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        num_v4: n,
        ..AssignRequest::default()
    }
}

#[test]
fn ipam_show_and_release() {
    require!("etcd");
    let f = Fixture::start();
    assert_eq!(f.apply(POOL).code, 0);
    assert_eq!(f.apply(NODE1).code, 0);
    let store = f.store();
    let ipam = Ipam::new(&store, "node1");
    let a = ipam.auto_assign(&request("net.c1", "p1", 2)).unwrap();
    let (ip1, ip2) = (a.v4[0].addr(), a.v4[1].addr());
    let block = a.v4[0].trunc();

    assert_eq!(
        f.ok(&["ipam", "show"]),
        "+----------+---------------+-----------+------------+--------------+\n\
         | GROUPING |     CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |\n\
         +----------+---------------+-----------+------------+--------------+\n\
         | IP Pool  | 10.244.0.0/16 |     65536 | 2 (0%)     | 65534 (100%) |\n\
         +----------+---------------+-----------+------------+--------------+\n"
    );
    let blocks = f.ok(&["ipam", "show", "--show-blocks"]);
    let block_line = blocks.lines().find(|l| l.starts_with("| Block")).unwrap();
    assert!(block_line.contains(&format!(" {block} ")), "{blocks}");
    assert!(
        block_line.contains("|        64 | 2 (3%) ") && block_line.contains(" 62 (97%) "),
        "{blocks}"
    );

    assert_eq!(
        f.ok(&["ipam", "show", &format!("--ip={ip1}")]),
        format!(
            "IP {ip1} is in use\nHandle ID: net.c1\nActive Owner Attributes:\n  namespace: default\n  node: node1\n  pod: p1\n"
        )
    );
    assert_eq!(
        f.ok(&["ipam", "show", "--ip", "10.244.255.1"]),
        "10.244.255.1 is not assigned\n"
    );
    assert_eq!(
        f.ok(&["ipam", "show", "--ip=192.0.2.1"]),
        "192.0.2.1 is not assigned\n"
    );
    let bad = f.run(&["ipam", "show", "--ip=10.1"], None);
    assert_eq!(
        (bad.code, bad.stdout.as_str()),
        (
            1,
            "Error executing command: invalid IP address specified: 10.1\n"
        )
    );

    assert_eq!(
        f.ok(&["ipam", "release", &format!("--ip={ip1}")]),
        format!("Successfully released IP address {ip1}\n")
    );
    assert_eq!(
        f.ok(&["ipam", "show", "--ip", &ip1.to_string()]),
        format!("{ip1} is not assigned\n")
    );
    let h: IpamHandle =
        serde_json::from_str(&f.etcd.get(&keys::handle("net.c1")).unwrap().unwrap()).unwrap();
    assert_eq!(
        h.block.get(&block.to_string()),
        Some(&1),
        "the handle lost one address"
    );
    let again = f.run(&["ipam", "release", &format!("--ip={ip1}")], None);
    assert_eq!(
        (again.code, again.stderr.clone()),
        (1, format!("IP address {ip1} is not assigned\n"))
    );
    assert!(f.ok(&["ipam", "show"]).contains("| 1 (0%)     |"));
    assert_eq!(
        f.ok(&["ipam", "release", &format!("--ip={ip2}")]),
        format!("Successfully released IP address {ip2}\n")
    );
    assert!(
        f.etcd.get(&keys::handle("net.c1")).unwrap().is_none(),
        "empty handle deleted"
    );
}

#[test]
fn ipam_configure_strict_affinity() {
    require!("etcd");
    let f = Fixture::start();
    assert_eq!(
        f.ok(&["ipam", "configure", "--strictaffinity=true"]),
        "Successfully set StrictAffinity to: true\n"
    );
    assert_eq!(
        f.etcd.get(keys::IPAM_CONFIG).unwrap().unwrap(),
        r#"{"strict_affinity":true,"auto_allocate_blocks":true,"kubeVirtVMAddressPersistence":"Enabled"}"#
    );
    assert_eq!(
        f.ok(&["ipam", "configure", "--max-blocks-per-host=3"]),
        "Successfully set MaxBlocksPerHost to: 3\n"
    );
    assert_eq!(
        f.etcd.get(keys::IPAM_CONFIG).unwrap().unwrap(),
        r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":3,"kubeVirtVMAddressPersistence":"Enabled"}"#
    );
    let off = f.run(&["ipam", "configure", "--strictaffinity=false"], None);
    assert_eq!(
        (off.code, off.stderr.as_str()),
        (
            1,
            "error: MaxBlocksPerHost requires StrictAffinity to be enabled\n"
        )
    );
    let bad = f.run(&["ipam", "configure", "--strictaffinity=maybe"], None);
    assert_eq!(
        (bad.code, bad.stderr.as_str()),
        (
            1,
            "invalid value. Use true or false to set strictaffinity\n"
        )
    );
    let none = f.run(&["ipam", "configure"], None);
    assert_eq!(
        (none.code, none.stderr.as_str()),
        (1, "at least one configuration option must be specified\n")
    );
    assert!(
        f.ok(&["ipam", "show", "--show-configuration"])
            .contains("| MaxBlocksPerHost             |         3 |")
    );
}

fn wep(f: &Fixture, name: &str, ips: &[String]) {
    let nets: Vec<String> = ips.iter().map(|ip| format!("{ip}/32")).collect();
    let v = json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":name,"namespace":"default"},
        "spec":{"orchestrator":"cni","node":"node1","endpoint":"eth0","ipNetworks":nets}});
    f.etcd
        .put(
            &keys::namespaced_resource("workloadendpoints", "default", name),
            &v.to_string(),
        )
        .unwrap();
}

fn problems(out: &str) -> usize {
    let last = out.lines().last().unwrap();
    last.strip_prefix("Check complete; found ")
        .and_then(|r| r.strip_suffix(" problems."))
        .unwrap()
        .parse()
        .unwrap()
}

fn edit_block(f: &Fixture, cidr: &IpNet, edit: impl FnOnce(&mut AllocationBlock)) {
    let key = keys::block(cidr);
    let mut b: AllocationBlock = serde_json::from_str(&f.etcd.get(&key).unwrap().unwrap()).unwrap();
    edit(&mut b);
    f.etcd
        .put(&key, &serde_json::to_string(&b).unwrap())
        .unwrap();
}

#[test]
fn ipam_check_finds_each_problem() {
    require!("etcd");
    let f = Fixture::start();
    assert_eq!(f.apply(POOL).code, 0);
    assert_eq!(f.apply(NODE1).code, 0);
    let store = f.store();
    let ipam = Ipam::new(&store, "node1");
    let a = ipam.auto_assign(&request("net.c1", "p1", 1)).unwrap();
    let b = ipam.auto_assign(&request("net.c2", "p2", 1)).unwrap();
    let (ip1, ip2) = (a.v4[0].addr().to_string(), b.v4[0].addr().to_string());
    let block = a.v4[0].trunc();

    // IPAM-only use: no workload endpoints, nothing counted for unused allocations.
    let report = f.dir.path().join("report.json");
    let out = f.ok(&["ipam", "check", "-o", report.to_str().unwrap()]);
    assert_eq!(problems(&out), 0, "{out}");
    assert!(out.contains("(IPAM-only use)"), "{out}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["workloadCheckSkipped"], true);
    assert_eq!(r["allocations"][&ip1][0]["handle"], "net.c1");
    assert_eq!(r["allocations"][&ip1][0]["inUse"], false);
    let ci = f
        .get_json("/calico/resources/v3/projectcalico.org/clusterinformations/default")
        .unwrap();
    assert_eq!(r["clusterGUID"], ci["spec"]["clusterGUID"]);

    // With the calico plugin's endpoints for both: clean.
    wep(&f, "node1-cni-c1-eth0", std::slice::from_ref(&ip1));
    wep(&f, "node1-cni-c2-eth0", std::slice::from_ref(&ip2));
    let out = f.ok(&["ipam", "check"]);
    assert_eq!(problems(&out), 0, "{out}");
    assert!(
        out.contains("Found 2 workload IPs.\nWorkloads and nodes are using 2 IPs.\n"),
        "{out}"
    );
    assert!(
        out.contains("Found 0 IPs that are allocated in IPAM but not actually in use."),
        "{out}"
    );
    assert!(out.contains("  node1 has 2 allocations\n"), "{out}");

    // (e) an allocation no endpoint uses.
    let leaked = ipam.auto_assign(&request("net.c3", "p3", 1)).unwrap().v4[0]
        .addr()
        .to_string();
    let out = f.ok(&["ipam", "check", "--show-problem-ips"]);
    assert_eq!(problems(&out), 1, "{out}");
    assert!(
        out.contains(&format!(
            "  {leaked} leaked; attrs Main:net.c3 Extra:namespace=default,node=node1,pod=p3\n"
        )),
        "{out}"
    );
    assert!(out.contains("Found 1 IPs that are allocated in IPAM but not actually in use."));
    wep(&f, "node1-cni-c3-eth0", std::slice::from_ref(&leaked));

    // (f) an endpoint address nobody allocated.
    wep(&f, "node1-cni-c4-eth0", &["10.244.250.1".to_string()]);
    let out = f.ok(&["ipam", "check"]);
    assert_eq!(problems(&out), 1, "{out}");
    assert!(out.contains("Found 1 in-use IPs that are in active IP pools but have no corresponding IPAM allocation."), "{out}");
    f.etcd
        .delete_prefix(&keys::namespaced_resource(
            "workloadendpoints",
            "default",
            "node1-cni-c4-eth0",
        ))
        .unwrap();

    // (b) a handle with no addresses.
    f.etcd
        .put(&keys::handle("net.gone"), r#"{"block":{},"deleted":false}"#)
        .unwrap();
    let out = f.ok(&["ipam", "check", "-o", report.to_str().unwrap()]);
    assert_eq!(problems(&out), 1, "{out}");
    assert!(
        out.contains("Found 1 handles with no matching IPs (and 3 handles with matches)."),
        "{out}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["leakedHandles"][0]["ID"], "net.gone");
    assert_eq!(r["leakedHandles"][0]["UID"], Value::Null);
    f.etcd.delete_prefix(&keys::handle("net.gone")).unwrap();

    // (a) a missing handle, and a handle whose count is off.
    let c1 = f.etcd.get(&keys::handle("net.c1")).unwrap().unwrap();
    f.etcd.delete_prefix(&keys::handle("net.c1")).unwrap();
    let mut c2: IpamHandle =
        serde_json::from_str(&f.etcd.get(&keys::handle("net.c2")).unwrap().unwrap()).unwrap();
    c2.block.insert(block.to_string(), 5);
    f.etcd
        .put(
            &keys::handle("net.c2"),
            &serde_json::to_string(&c2).unwrap(),
        )
        .unwrap();
    let out = f.ok(&[
        "ipam",
        "check",
        "--show-problem-ips",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_eq!(problems(&out), 2, "{out}");
    assert!(
        out.contains("  net.c1 is in use in a block but doesn't exist.\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  handle net.c2 records 5 IPs in block {block}, which holds 1 of its IPs.\n"
        )),
        "{out}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        r["missingHandles"],
        json!([{"handle": "net.c1", "ips": [ip1]}])
    );
    assert_eq!(r["handleCountMismatches"][0]["handleCount"], 5);
    f.etcd.put(&keys::handle("net.c1"), &c1).unwrap();
    c2.block.insert(block.to_string(), 1);
    f.etcd
        .put(
            &keys::handle("net.c2"),
            &serde_json::to_string(&c2).unwrap(),
        )
        .unwrap();
    assert_eq!(problems(&f.ok(&["ipam", "check"])), 0);

    // (d) an allocation without a handle (and so not used by anything: also (e)).
    let free_ord = {
        let b: AllocationBlock =
            serde_json::from_str(&f.etcd.get(&keys::block(&block)).unwrap().unwrap()).unwrap();
        b.unallocated[0]
    };
    edit_block(&f, &block, |b| {
        let attrs = b.attributes.get_or_insert_with(Vec::new);
        attrs.push(calico_datastore::model::AllocationAttribute {
            handle_id: None,
            secondary: None,
            alternate_owner_attrs: None,
            extra: serde_json::Map::new(),
        });
        b.allocations[free_ord] = Some(attrs.len() - 1);
        b.unallocated.retain(|o| *o != free_ord);
    });
    let out = f.ok(&["ipam", "check", "-o", report.to_str().unwrap()]);
    assert!(
        out.contains("Found 1 allocations without a handle."),
        "{out}"
    );
    assert_eq!(problems(&out), 2, "{out}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["allocationsWithoutHandle"][0]["block"], block.to_string());
    edit_block(&f, &block, |b| {
        b.allocations[free_ord] = None;
        b.unallocated.push(free_ord);
    });

    // (c) the same address allocated in an overlapping block (with its handle and endpoint).
    let ip1_addr: std::net::IpAddr = ip1.parse().unwrap();
    let small = IpNet::new(ip1_addr, 30).unwrap().trunc();
    let mut dup = calico_ipam::block::new_block(small, "node9", std::time::SystemTime::now());
    let ord = calico_ipam::block::ordinal(&small, ip1_addr).unwrap();
    dup.allocations[ord] = Some(0);
    dup.unallocated.retain(|o| *o != ord);
    dup.attributes = Some(vec![calico_datastore::model::AllocationAttribute::new(
        "net.dup",
        BTreeMap::new(),
    )]);
    dup.affinity = None;
    f.etcd
        .put(&keys::block(&small), &serde_json::to_string(&dup).unwrap())
        .unwrap();
    f.etcd
        .put(
            &keys::handle("net.dup"),
            &format!(r#"{{"block":{{"{small}":1}},"deleted":false}}"#),
        )
        .unwrap();
    let out = f.ok(&["ipam", "check", "--show-problem-ips"]);
    assert_eq!(problems(&out), 1, "{out}");
    assert!(
        out.contains("Found 1 IPs allocated in more than one block."),
        "{out}"
    );
    f.etcd.delete_prefix(&keys::block(&small)).unwrap();
    f.etcd.delete_prefix(&keys::handle("net.dup")).unwrap();

    // (g) a confirmed affinity without a block, and a block without its affinity.
    let aff_key = keys::affinity("node1", &block);
    let aff = f.etcd.get(&aff_key).unwrap().unwrap();
    f.etcd.delete_prefix(&aff_key).unwrap();
    f.etcd
        .put(
            &keys::affinity("node2", &"10.244.77.0/26".parse().unwrap()),
            r#"{"state":"confirmed","deleted":false}"#,
        )
        .unwrap();
    let out = f.ok(&["ipam", "check", "-o", report.to_str().unwrap()]);
    assert_eq!(problems(&out), 2, "{out}");
    assert!(out.contains("Found 2 block affinity problems."), "{out}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let kinds: Vec<&str> = r["affinityProblems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["problem"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["blockMissing", "affinityMissing"]);
    f.etcd.put(&aff_key, &aff).unwrap();
    f.etcd.delete_prefix("/calico/ipam/v2/host/node2/").unwrap();

    // Back to clean; the report has Calico's fields.
    let out = f.ok(&["ipam", "check", "--output", report.to_str().unwrap()]);
    assert_eq!(problems(&out), 0, "{out}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for field in [
        "version",
        "clusterGUID",
        "datastoreLocked",
        "clusterInformationRevision",
        "clusterType",
        "allocations",
    ] {
        assert!(r.get(field).is_some(), "{field}");
    }
    assert_eq!(r["datastoreLocked"], false);
    let alloc = &r["allocations"][&ip2][0];
    assert_eq!(alloc["inUse"], true);
    assert_eq!(
        alloc["owners"],
        json!(["Workload(default/node1-cni-c2-eth0)"])
    );
    assert!(alloc["sequenceNumber"].as_u64().is_some());
}

#[test]
fn tls_via_calicoctl_cfg() {
    require!("etcd");
    let f = Fixture::start_tls();
    let out = f.apply(POOL);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        f.ok(&["get", "ippool"]).lines().nth(1),
        Some("pool1   10.244.0.0/16   all()      ")
    );
    assert!(
        f.ok(&["ipam", "show"])
            .contains("| IP Pool  | 10.244.0.0/16 |")
    );
    assert_eq!(
        f.ok(&["ipam", "configure", "--strictaffinity=true"]),
        "Successfully set StrictAffinity to: true\n"
    );
    assert!(
        f.ok(&["ipam", "check"])
            .ends_with("Check complete; found 0 problems.\n")
    );
}

#[test]
fn config_from_environment_and_errors() {
    require!("etcd");
    let f = Fixture::start();
    let missing = run_bin(
        &["get", "ippool", "-c", "/nonexistent/calicoctl.cfg"],
        None,
        &[],
    );
    assert_eq!(
        (missing.code, missing.stdout.as_str()),
        (1, "Error reading config file: /nonexistent/calicoctl.cfg\n")
    );
    let k8s = f.file(
        "k8s.cfg",
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  datastoreType: kubernetes\n",
    );
    let out = run_bin(&["get", "ippool", "-c", k8s.to_str().unwrap()], None, &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("only the etcdv3 datastore"),
        "{}",
        out.stderr
    );
    let typo = f.file(
        "typo.cfg",
        "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  etcdEndpoint: x\n",
    );
    let out = run_bin(&["get", "ippool", "-c", typo.to_str().unwrap()], None, &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "field in document is not recognized or is in the wrong location: etcdEndpoint"
        ),
        "{}",
        out.stderr
    );

    if Path::new("/etc/calico/calicoctl.cfg").exists() {
        return; // the default file wins over the environment
    }
    let env = f.etcd.endpoints();
    let out = run_bin(
        &["apply", "-f", "-"],
        Some(POOL),
        &[
            ("ETCD_ENDPOINTS", "http://127.0.0.1:1"),
            ("CALICO_ETCD_ENDPOINTS", &env),
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully applied 1 'IPPool' resource(s)\n"),
        "{}",
        out.stderr
    );
    let out = run_bin(
        &["get", "ippool", "--allow-version-mismatch"],
        None,
        &[("DATASTORE_TYPE", "etcdv3"), ("ETCD_ENDPOINTS", &env)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("pool1"));
    let none = run_bin(&["get", "ippool"], None, &[]);
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("ETCD_ENDPOINTS"), "{}", none.stderr);
}

/// Stores `v` at `key` through the client (fixtures written without etcdctl processes).
fn put(store: &dyn KvStore, key: &str, v: &Value) {
    let w = calico_datastore::Write::Put(key.to_string(), v.to_string().into_bytes());
    assert!(store.txn(&[], &[w]).unwrap().applied());
}

fn fixed_clock() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_629_600)
}

fn meta(name: &str) -> Value {
    json!({"name": name, "uid": format!("uid-{name}"), "creationTimestamp": "2026-05-01T10:00:00Z"})
}

fn resource(store: &dyn KvStore, kind: &str, plural: &str, name: &str, spec: Value) {
    let v = json!({"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta(name), "spec": spec});
    put(store, &keys::resource(plural, name), &v);
}

/// A pod of `node`: its allocation (by the IPAM library, with Calico's k8s attributes) and
/// its WorkloadEndpoint, as the calico plugin writes them.
fn pod(store: &dyn KvStore, node: &str, pod: &str, addr: &str) {
    let attrs: BTreeMap<String, String> = [("node", node), ("namespace", "default"), ("pod", pod)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ipam::new(store, node)
        .with_clock(fixed_clock)
        .assign_ip(
            addr.parse().unwrap(),
            &format!("k8s-pod-network.{pod}"),
            &attrs,
        )
        .unwrap();
    let name = calico_datastore::model::names::workload_endpoint(node, "k8s", pod, "eth0");
    let v = json!({"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3",
        "metadata":{"name":name,"namespace":"default","uid":format!("uid-{pod}"),
            "creationTimestamp":"2026-05-01T10:00:00Z"},
        "spec":{"orchestrator":"k8s","node":node,"containerID":pod,"pod":pod,"endpoint":"eth0",
            "ipNetworks":[format!("{addr}/32")],"profiles":["kns.default"],
            "interfaceName":format!("cali{pod}")}});
    put(
        store,
        &keys::namespaced_resource("workloadendpoints", "default", &name),
        &v,
    );
}

/// A Calico Node with its IPIP tunnel address allocated as calico-node allocates it.
fn node_with_tunnel(store: &dyn KvStore, node: &str, tunnel: &str) {
    let attrs: BTreeMap<String, String> = [("node", node), ("type", "ipipTunnelAddress")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ipam::new(store, node)
        .with_clock(fixed_clock)
        .assign_ip(
            tunnel.parse().unwrap(),
            &format!("ipip-tunnel-addr-{node}"),
            &attrs,
        )
        .unwrap();
    let v = json!({"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":meta(node),
        "spec":{"bgp":{"ipv4Address":"192.168.0.1/24","ipv4IPIPTunnelAddr":tunnel}},"status":{}});
    put(store, &keys::resource("nodes", node), &v);
}

/// node1 with four pods (two in one affine block, one in another, one borrowed from node2's
/// block), an IPIP tunnel address in a third affine block, an empty affine block, a BGPPeer,
/// a FelixConfiguration and a BGPConfiguration `node.node1` and a HostEndpoint; node2 and
/// node1-b (whose endpoint names also start with `node1-`) with their own pods and objects.
fn cluster_with_node1(store: &dyn KvStore) {
    put(
        store,
        POOL_KEY,
        &json!({"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":meta("pool1"),
            "spec":{"cidr":"10.244.0.0/16","vxlanMode":"Never","ipipMode":"Always",
                "natOutgoing":true,"blockSize":26,"nodeSelector":"all()",
                "allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}),
    );
    node_with_tunnel(store, "node2", "10.244.9.2");
    pod(store, "node2", "q1", "10.244.9.1");
    node_with_tunnel(store, "node1", "10.244.3.1");
    pod(store, "node1", "p1", "10.244.1.1");
    pod(store, "node1", "p2", "10.244.1.2");
    pod(store, "node1", "p3", "10.244.2.5");
    pod(store, "node1", "p4", "10.244.9.3");
    // An empty block still affine to node1 (its pod is gone).
    let ipam = Ipam::new(store, "node1").with_clock(fixed_clock);
    ipam.assign_ip(
        "10.244.4.1".parse().unwrap(),
        "k8s-pod-network.gone",
        &BTreeMap::new(),
    )
    .unwrap();
    ipam.release_by_handle("k8s-pod-network.gone").unwrap();
    pod(store, "node1-b", "z1", "10.244.20.1");
    for (name, node) in [("peer-node1", "node1"), ("peer-node2", "node2")] {
        resource(
            store,
            "BGPPeer",
            "bgppeers",
            name,
            json!({"node": node, "peerIP": "192.168.0.254", "asNumber": 64513}),
        );
    }
    resource(
        store,
        "BGPPeer",
        "bgppeers",
        "peer-global",
        json!({"peerIP": "192.168.0.253", "asNumber": 64514}),
    );
    for node in ["node1", "node2"] {
        let name = format!("node.{node}");
        resource(
            store,
            "FelixConfiguration",
            "felixconfigurations",
            &name,
            json!({"logSeverityScreen": "Debug"}),
        );
        resource(
            store,
            "HostEndpoint",
            "hostendpoints",
            &format!("{node}-eth0"),
            json!({"node": node, "interfaceName": "eth0", "expectedIPs": ["192.168.0.9"]}),
        );
    }
    resource(
        store,
        "BGPConfiguration",
        "bgpconfigurations",
        "node.node1",
        json!({"listenPort": 1790}),
    );
}

/// What deleting node1 removes (and nothing else but the borrowed address in node2's block).
fn node1_keys() -> Vec<String> {
    let r = |plural: &str, name: &str| keys::resource(plural, name);
    let wep = |pod: &str| {
        keys::namespaced_resource(
            "workloadendpoints",
            "default",
            &format!("node1-k8s-{pod}-eth0"),
        )
    };
    let mut v = vec![
        r("nodes", "node1"),
        r("bgppeers", "peer-node1"),
        r("felixconfigurations", "node.node1"),
        r("bgpconfigurations", "node.node1"),
        r("hostendpoints", "node1-eth0"),
        keys::handle("ipip-tunnel-addr-node1"),
    ];
    for pod in ["p1", "p2", "p3", "p4"] {
        v.push(wep(pod));
        v.push(keys::handle(&format!("k8s-pod-network.{pod}")));
    }
    for block in [
        "10.244.1.0/26",
        "10.244.2.0/26",
        "10.244.3.0/26",
        "10.244.4.0/26",
    ] {
        let cidr: IpNet = block.parse().unwrap();
        v.push(keys::block(&cidr));
        v.push(keys::affinity("node1", &cidr));
    }
    v.sort();
    v
}

/// Checks the state after node1's deletion against the state before it.
fn assert_node1_gone(before: &[(String, String)], after: &[(String, String)]) {
    let removed = node1_keys();
    let borrowed_block = keys::block(&"10.244.9.0/26".parse().unwrap());
    let after_map: BTreeMap<&str, &str> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in before {
        if removed.contains(k) {
            assert!(!after_map.contains_key(k.as_str()), "{k} left behind");
        } else if *k != borrowed_block {
            assert_eq!(after_map.get(k.as_str()), Some(&v.as_str()), "{k} changed");
        }
    }
    assert_eq!(
        after.len(),
        before.len() - removed.len(),
        "nothing new: {after:#?}"
    );
    let b: AllocationBlock = serde_json::from_str(after_map[borrowed_block.as_str()]).unwrap();
    assert_eq!(b.affinity.as_deref(), Some("host:node2"));
    let in_use: Vec<usize> = (0..64).filter(|o| b.allocations[*o].is_some()).collect();
    assert_eq!(
        in_use,
        [1, 2],
        "node2's pod and tunnel stay; node1's borrowed .3 is freed"
    );
}

/// Mirrors clientv3/node.go Delete (WorkloadEndpoints and their addresses, tunnel
/// addresses, ipam.go RemoveIPAMHost, BGPPeers, FelixConfiguration and BGPConfiguration
/// `node.<name>`, HostEndpoints, then the Node).
#[test]
fn delete_node_removes_what_belongs_to_the_node() {
    require!("etcd");
    let f = Fixture::start();
    let store = f.store();
    cluster_with_node1(&store);
    let check = f.ok(&["ipam", "check"]);
    assert_eq!(problems(&check), 0, "{check}");
    assert!(check.contains("Found 6 workload IPs."), "{check}");
    let before = f.dump();
    for k in node1_keys() {
        assert!(before.iter().any(|(key, _)| *key == k), "fixture lacks {k}");
    }

    assert_eq!(
        f.ok(&["delete", "node", "node1"]),
        "Successfully deleted 1 'Node' resource(s)\n"
    );
    assert_node1_gone(&before, &f.dump());
    let check = f.ok(&["ipam", "check"]);
    assert_eq!(problems(&check), 0, "{check}");
    assert!(check.contains("Found 2 workload IPs."), "{check}");

    let again = f.run(&["delete", "node", "node1"], None);
    assert_eq!(
        (again.code, again.stderr.as_str()),
        (
            1,
            "Failed to delete 'Node' resource: resource does not exist: Node(node1) with error: <nil>\n"
        )
    );
    assert_eq!(
        f.ok(&["delete", "node", "node1", "--skip-not-exists"]),
        "Successfully deleted 1 'Node' resource(s)\n"
    );
}

/// Mirrors 3.33's clientv3/node.go Delete over ipam.go ReleaseIPs with ipCooldownSeconds:
/// node1's workload and tunnel addresses go into their cooldown (still taken, handles
/// deleted), so their blocks are still in use and RemoveIPAMHost keeps them, without
/// affinity; only the block that was already empty goes.
#[test]
fn delete_node_keeps_released_addresses_in_their_cooldown() {
    require!("etcd");
    let f = Fixture::start();
    let store = f.store();
    cluster_with_node1(&store);
    put(
        &store,
        keys::IPAM_CONFIG,
        &json!({"strict_affinity":false,"auto_allocate_blocks":true,"ipCooldownSeconds":300}),
    );
    assert_eq!(
        f.ok(&["delete", "node", "node1"]),
        "Successfully deleted 1 'Node' resource(s)\n"
    );
    let block = |cidr: &str| -> Option<AllocationBlock> {
        let key = keys::block(&cidr.parse().unwrap());
        f.etcd
            .get(&key)
            .unwrap()
            .map(|v| serde_json::from_str(&v).unwrap())
    };
    for (cidr, cooling, affinity) in [
        ("10.244.1.0/26", vec![1, 2], None),
        ("10.244.2.0/26", vec![5], None),
        ("10.244.3.0/26", vec![1], None),
        ("10.244.9.0/26", vec![3], Some("host:node2")),
    ] {
        let b = block(cidr).unwrap_or_else(|| panic!("{cidr} kept: still in use"));
        assert_eq!(b.affinity.as_deref(), affinity, "{cidr}");
        let attrs = b.attributes.clone().unwrap_or_default();
        for ord in cooling {
            let idx = b.allocations[ord].unwrap_or_else(|| panic!("{cidr} .{ord} still taken"));
            assert!(attrs[idx].released_at().is_some(), "{cidr} .{ord} cooling");
            assert!(!b.unallocated.contains(&ord), "{cidr} .{ord}");
        }
    }
    assert!(block("10.244.4.0/26").is_none(), "the empty block goes");
    for h in [
        "ipip-tunnel-addr-node1",
        "k8s-pod-network.p1",
        "k8s-pod-network.p3",
        "k8s-pod-network.p4",
    ] {
        assert!(f.etcd.get(&keys::handle(h)).unwrap().is_none(), "{h}");
    }
    assert!(
        f.etcd
            .get(&keys::handle("k8s-pod-network.q1"))
            .unwrap()
            .is_some()
    );
}

/// Whatever transaction a `delete node` dies before, running it again finishes the job with
/// the same end state as an uninterrupted run, and `ipam check` is clean.
#[test]
fn delete_node_resumes_after_a_crash_at_any_step() {
    require!("etcd");
    let f = Fixture::start();
    let store = f.store();
    let node1 = || {
        vec![calicoctl::resources::Object::Node(
            calico_datastore::model::Resource::new("Node", "node1", Default::default()),
        )]
    };
    let delete_via = |s: &dyn KvStore| {
        let ctx = calicoctl::resources::ops::Ctx {
            store: s,
            now: fixed_clock,
        };
        calicoctl::resources::ops::delete(
            &ctx,
            &node1(),
            Some(calicoctl::resources::Kind::Node),
            false,
            &mut Vec::new(),
        )
    };
    let reset = || {
        f.etcd.delete_prefix("/calico/").unwrap();
        cluster_with_node1(&store);
    };

    reset();
    let before = f.dump();
    let counting = calico_datastore::FailNthTxn::new(&store, 0);
    delete_via(&counting).unwrap();
    let reference = f.dump();
    assert_node1_gone(&before, &reference);
    let total = counting.txns();
    assert!(total >= 10, "one transaction per step: {total}");

    for n in 1..=total {
        reset();
        let crashing = calico_datastore::FailNthTxn::new(&store, n);
        let e = delete_via(&crashing).unwrap_err();
        assert!(crashing.failed(), "transaction {n}");
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert!(
            f.etcd
                .get(&keys::resource("nodes", "node1"))
                .unwrap()
                .is_some(),
            "the Node goes last (crash at {n})"
        );
        assert_eq!(
            f.ok(&["delete", "node", "node1"]),
            "Successfully deleted 1 'Node' resource(s)\n"
        );
        assert_eq!(f.dump(), reference, "crash before transaction {n}");
    }
    let check = f.ok(&["ipam", "check"]);
    assert_eq!(problems(&check), 0, "{check}");
}

const BGP_DOCS: &str = "apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: node.node1
spec:
  listenPort: 1790
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  nodeSelector: rack == 'rack-1'
  peerIP: 192.20.30.40:1790
  asNumber: \"1.10\"
  keepaliveTime: 30s
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: global-rr
spec:
  peerIP: '[fd00::1]:179'
  asNumber: 64512
  sourceAddress: None
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: node1-peer
spec:
  node: node1
  peerIP: 10.0.0.9
  asNumber: 64513
  nextHopMode: Self
";

const BGP_PEER_KEY: &str = "/calico/resources/v3/projectcalico.org/bgppeers/rack1-tor";

/// BGPConfiguration and BGPPeer through apply, get, replace and delete, stored as
/// clientv3/bgpconfig.go and bgppeer.go store them (model/resource.go's keys) and printed
/// with resourcemgr/bgpconfig.go's and bgppeer.go's columns; the Node's BGP fields print
/// with the global AS number in parentheses when the node has none.
#[test]
fn bgp_configuration_and_peers_round_trip() {
    require!("etcd");
    let f = Fixture::start();
    let out = f.apply(BGP_DOCS);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully applied 5 resource(s)\n"),
        "{}",
        out.stderr
    );
    assert_eq!(
        with_placeholders(f.get_json(BGP_PEER_KEY).unwrap()),
        json!({"kind":"BGPPeer","apiVersion":"projectcalico.org/v3",
               "metadata":{"name":"rack1-tor","uid":"UID","creationTimestamp":"TS"},
               "spec":{"nodeSelector":"rack == 'rack-1'","peerIP":"192.20.30.40:1790",
                       "asNumber":65546,"keepaliveTime":"30s"}})
    );
    assert_eq!(
        f.ok(&["get", "bgpconfig"]),
        "NAME         LOGSEVERITY   MESHENABLED   ASNUMBER   \n\
         default      Info          false         63400      \n\
         node.node1                 -             -          \n\n"
    );
    assert_eq!(
        f.ok(&["get", "bgpconfigurations", "-o", "wide"]),
        f.ok(&["get", "bgpconfigs"])
    );
    assert_eq!(
        f.ok(&["get", "bgpPeer"]),
        "NAME         PEERIP              NODE               ASN     \n\
         global-rr    [fd00::1]:179       (global)           64512   \n\
         node1-peer   10.0.0.9            node1              64513   \n\
         rack1-tor    192.20.30.40:1790   rack == 'rack-1'   65546   \n\n"
    );
    assert_eq!(
        f.ok(&["get", "bgpp", "global-rr", "-o", "wide"]),
        "NAME        PEERIP          NODE       ASN     \nglobal-rr   [fd00::1]:179   (global)   64512   \n\n"
    );
    let one: Value =
        serde_json::from_str(&f.ok(&["get", "bgppeers", "node1-peer", "-o", "json"])).unwrap();
    assert_eq!(
        one["spec"],
        json!({"node":"node1","peerIP":"10.0.0.9","asNumber":64513,"nextHopMode":"Self"})
    );
    let listed: Value = serde_json::from_str(&f.ok(&["get", "bgpconfig", "-o", "json"])).unwrap();
    assert_eq!(listed["kind"], "BGPConfigurationList");
    assert_eq!(
        listed["items"][0]["spec"]["serviceClusterIPs"][0]["cidr"],
        "10.96.0.0/12"
    );
    let yaml = f.ok(&["get", "bgpconfiguration", "node.node1", "-o", "yaml"]);
    assert!(yaml.contains("kind: BGPConfiguration\n"), "{yaml}");
    assert!(yaml.contains("  listenPort: 1790\n"), "{yaml}");

    // The Node's BGP fields: its own AS number, else the global one in parentheses.
    let node = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node1\nspec:\n  \
                bgp:\n    ipv4Address: 192.168.0.1/24\n    routeReflectorClusterID: 224.0.0.1\n";
    assert_eq!(f.apply(node).code, 0);
    let node2 = node
        .replace("node1", "node2")
        .replace("    ipv4Address", "    asNumber: 65001\n    ipv4Address");
    assert_eq!(f.apply(&node2).code, 0);
    assert_eq!(
        f.ok(&["get", "nodes", "-o", "wide"]),
        "NAME    ASN       IPV4             IPV6   \n\
         node1   (63400)   192.168.0.1/24          \n\
         node2   65001     192.168.0.1/24          \n\n"
    );
    let stored = f
        .get_json("/calico/resources/v3/projectcalico.org/nodes/node1")
        .unwrap();
    assert_eq!(
        stored["spec"]["bgp"]["routeReflectorClusterID"],
        "224.0.0.1"
    );

    // Replace: an existing resource is updated; a missing one is an error, nothing written.
    let replaced = BGP_DOCS
        .split("---\n")
        .nth(2)
        .unwrap()
        .replace("keepaliveTime: 30s", "keepaliveTime: 1m");
    let out = f.run(&["replace", "-f", "-"], Some(&replaced));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Successfully replaced 1 'BGPPeer' resource(s)\n"),
        "{}",
        out.stderr
    );
    assert_eq!(
        f.get_json(BGP_PEER_KEY).unwrap()["spec"]["keepaliveTime"],
        "1m"
    );
    let before = f.dump();
    let missing = replaced.replace("rack1-tor", "rack2-tor");
    let out = f.run(&["replace", "-f", "-"], Some(&missing));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("resource does not exist: BGPPeer(rack2-tor) with error: <nil>"),
        "{}",
        out.stderr
    );
    assert_eq!(f.dump(), before);

    assert_eq!(
        f.ok(&["delete", "bgppeer", "rack1-tor"]),
        "Successfully deleted 1 'BGPPeer' resource(s)\n"
    );
    assert_eq!(
        f.ok(&["delete", "bgpconfig", "node.node1"]),
        "Successfully deleted 1 'BGPConfiguration' resource(s)\n"
    );
    assert!(f.etcd.get(BGP_PEER_KEY).unwrap().is_none());
    assert_eq!(
        f.ok(&["get", "bgpconfigs"]),
        "NAME      LOGSEVERITY   MESHENABLED   ASNUMBER   \ndefault   Info          false         63400      \n\n"
    );
}

/// Calico's validation of the BGP resources refuses bad documents with its messages
/// (validator.go validateBGPPeerSpec, validateIPPort; bgpconfig.go ValidateDefaultOnlyFields),
/// and nothing is written.
#[test]
fn bad_bgp_documents_write_nothing() {
    require!("etcd");
    let f = Fixture::start();
    let before = f.dump();
    let peer = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: p\nspec:\n{spec}"
        )
    };
    let config = |name: &str, spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: {name}\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            peer("  node: node1\n  nodeSelector: all()\n  peerIP: 10.0.0.1\n  asNumber: 64512\n"),
            "failed to apply 'BGPPeer' resource: [error with field Node = 'node1' (Node field must be empty when NodeSelector is specified)]",
        ),
        (
            peer("  peerIP: 10.0.0.1:0\n  asNumber: 64512\n"),
            "failed to apply 'BGPPeer' resource: [error with field PeerIP = '10.0.0.1:0' (Reason: failed to validate Field: PeerIP because of Tag: IP:port )]",
        ),
        (
            peer("  peerIP: 10.0.0.1\n  sourceAddress: Any\n"),
            "failed to apply 'BGPPeer' resource: [error with field SourceAddress = 'Any'",
        ),
        (
            peer("  peerIP: 10.0.0.1\n  nextHopMode: Never\n"),
            "failed to apply 'BGPPeer' resource: [error with field spec.nextHopMode (supported values: \"Auto\", \"Self\", \"Keep\")]",
        ),
        (
            peer("  peerIP: 10.0.0.1\n  asNumber: 70000000000\n"),
            "failed to execute command: cannot decode field spec.asNumber of BGPPeer",
        ),
        (
            peer("  peerSelector: has(\n"),
            "failed to apply 'BGPPeer' resource: [error with field PeerSelector = 'has('",
        ),
        (
            config("node.node1", "  asNumber: 64512\n"),
            "failed to apply 'BGPConfiguration' resource: [error with field BGPConfiguration.Spec.ASNumber (Cannot set ASNumber on a non default BGP Configuration.)]",
        ),
        (
            config("default", "  logSeverityScreen: Verbose\n"),
            "failed to apply 'BGPConfiguration' resource: [error with field LogSeverityScreen = 'Verbose'",
        ),
        (
            config("default", "  nodeMeshMaxRestartTime: soon\n"),
            "failed to apply 'BGPConfiguration' resource: [error with field NodeMeshMaxRestartTime = 'soon' (time: invalid duration \"soon\")]",
        ),
        (
            config("default", "  bindMode: All\n"),
            "failed to apply 'BGPConfiguration' resource: [error with field spec.bindMode",
        ),
    ];
    for (text, want) in cases {
        let out = f.apply(&text);
        assert_eq!(out.code, 1, "{text}: {}", out.stdout);
        assert_eq!(out.stdout, "", "{text}");
        assert!(out.stderr.starts_with(want), "{text}: {}", out.stderr);
        assert_eq!(f.dump(), before, "{text} wrote something");
    }
}

/// `calicoctl patch` (resourcemgr.go Patch): the documented route-reflector step patches a
/// Node's BGP fields; a BGPPeer's; a missing resource, bad JSON and an invalid result write
/// nothing.
#[test]
fn patch_node_bgp_fields_and_peers() {
    require!("etcd");
    let f = Fixture::start();
    let node = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node1\n  \
                labels:\n    rack: a\nspec:\n  bgp:\n    ipv4Address: 192.168.0.1/24\n";
    assert_eq!(f.apply(node).code, 0);
    assert_eq!(f.apply(BGP_DOCS).code, 0);
    let node_key = "/calico/resources/v3/projectcalico.org/nodes/node1";
    let before = f.get_json(node_key).unwrap();
    assert_eq!(
        f.ok(&[
            "patch",
            "node",
            "node1",
            "--patch",
            r#"{"metadata":{"labels":{"route-reflector":"true","rack":null}},"spec":{"bgp":{"routeReflectorClusterID":"224.0.0.1","asNumber":"65001"}}}"#,
        ]),
        "Successfully patched 1 'Node' resource\n"
    );
    let after = f.get_json(node_key).unwrap();
    assert_eq!(
        after["spec"]["bgp"],
        json!({"asNumber":65001,"ipv4Address":"192.168.0.1/24","routeReflectorClusterID":"224.0.0.1"})
    );
    assert_eq!(
        after["metadata"]["labels"],
        json!({"route-reflector":"true"})
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        f.ok(&["get", "nodes", "-o", "wide"]),
        "NAME    ASN     IPV4             IPV6   \nnode1   65001   192.168.0.1/24          \n\n"
    );
    assert_eq!(
        f.ok(&[
            "patch",
            "bgpp",
            "rack1-tor",
            "-p",
            r#"{"spec":{"peerIP":"192.20.30.41"}}"#,
            "--type",
            "merge"
        ]),
        "Successfully patched 1 'BGPPeer' resource\n"
    );
    assert_eq!(
        f.get_json(BGP_PEER_KEY).unwrap()["spec"]["peerIP"],
        "192.20.30.41"
    );

    let dump = f.dump();
    for (args, want) in [
        (
            ["patch", "bgppeer", "absent", "-p", "{}"],
            "Failed to patch 'BGPPeer' resource: resource does not exist: BGPPeer(absent) with error: <nil>\n\n",
        ),
        (
            ["patch", "node", "node1", "-p", "{not json"],
            "Failed to patch 'Node' resource: performing strategic merge patch: key must be a string at line 1 column 2\n\n",
        ),
        (
            [
                "patch",
                "bgppeer",
                "rack1-tor",
                "-p",
                r#"{"spec":{"node":"node1"}}"#,
            ],
            "Failed to patch 'BGPPeer' resource: updating existing resource: error with field Node = 'node1' (Node field must be empty when NodeSelector is specified)\n\n",
        ),
        (
            [
                "patch",
                "node",
                "node1",
                "-p",
                r#"{"spec":{"bgp":{"asn":1}}}"#,
            ],
            "Failed to patch 'Node' resource: creating resource from patched data: field in document is not recognized or is in the wrong location: asn\n\n",
        ),
    ] {
        let out = f.run(&args, None);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (1, "", want),
            "{args:?}"
        );
    }
    assert_eq!(f.dump(), dump);
}
