//! How the plugin finds its datastore: the environment (`DATASTORE_TYPE`, `ETCD_ENDPOINTS`)
//! as libcalico-go's `apiconfig` reads it, and `etcd_discovery_srv` (DNS SRV records) as
//! its etcdv3 backend resolves them.

use crate::common::*;
use serde_json::{Value, json};
use testkit::{Cluster, DnsStandIn, NetNs, require};

/// The test conflist with every etcd location removed from it.
fn without_endpoints() -> Value {
    let mut list = conflist("1.0.0", json!({}));
    let calico = list["plugins"][0].as_object_mut().unwrap();
    calico.remove("etcd_endpoints");
    list
}

fn endpoint_count(c: &Cluster) -> usize {
    c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .unwrap()
        .len()
}

/// Mirrors libcalico-go `apiconfig/load.go` `applyConfigDefaults` (after cni-plugin
/// `utils.CreateClient` exported the config): etcd endpoints in the environment alone
/// choose etcdv3, and `DATASTORE_TYPE` in the environment is the datastore type.
#[test]
fn the_environment_chooses_etcd() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &without_endpoints()).unwrap();
    let pod = NetNs::new("envds").unwrap();
    let args = pod_args("default", "envds");

    // Nothing anywhere: the Kubernetes datastore, which is not supported (code 2).
    let e = c
        .runtime(0)
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(2), "{e}");
    assert!(e.msg.contains("kubernetes"), "{e}");
    assert!(pod.sh("ip link show eth0").is_err(), "nothing made");

    // ETCD_ENDPOINTS in the runtime's environment: etcdv3 at that address.
    let rt = c
        .runtime(0)
        .with_env("ETCD_ENDPOINTS", "https://10.10.0.174:2379");
    let r = rt
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap();
    assert_eq!(testkit::result_ips(&r).len(), 1, "{r}");
    assert_eq!(endpoint_count(&c), 1);
    rt.del("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap();
    assert_eq!(endpoint_count(&c), 0);

    // DATASTORE_TYPE=kubernetes in the environment beats the endpoints (a new sandbox: the
    // old one's interface goes in the background).
    let pod = NetNs::new("envds2").unwrap();
    let e = c
        .runtime(0)
        .with_env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .with_env("DATASTORE_TYPE", "kubernetes")
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(2), "{e}");
    assert!(pod.sh("ip link show eth0").is_err(), "nothing made");
}

/// The node resolves names with a DNS stand-in on its loopback that knows `calico.test`.
fn with_dns(c: &Cluster) -> DnsStandIn {
    let node = c.node(0);
    let dns = DnsStandIn::start(Some(node.netns()), "127.0.0.1".parse().unwrap()).unwrap();
    node.set_resolv_conf("nameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n")
        .unwrap();
    dns.add_srv(
        "_etcd-client-ssl._tcp.calico.test",
        0,
        0,
        testkit::cluster::ETCD_PORT,
        testkit::tls::SERVER_DNS_NAME,
    )
    .unwrap();
    dns.add_a(testkit::tls::SERVER_DNS_NAME, testkit::cluster::ETCD_IP)
        .unwrap();
    dns
}

/// Mirrors libcalico-go `backend/etcdv3/etcdv3.go` `NewEtcdV3Client` with
/// `etcdDiscoverySrv` (etcd `srv.GetClient("etcd-client", domain, "")`): the endpoints come
/// from `_etcd-client-ssl._tcp.<domain>` (https) and `_etcd-client._tcp.<domain>` (http).
#[test]
fn etcd_endpoints_from_dns_srv_records() {
    require!(root; "etcd", "go", "ip", "mount");
    let c = cluster(1);
    let dns = with_dns(&c);
    let mut list = without_endpoints();
    list["plugins"][0]["datastore_type"] = json!("etcdv3");
    list["plugins"][0]["etcd_discovery_srv"] = json!("calico.test");
    // No agent on the node: the connection is this call's own, through the discovered
    // name (and a plugin with discovery never uses the agent's).
    c.install(0, &list).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("srv").unwrap();
    let args = pod_args("default", "srv");
    let r = rt
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap();
    assert_eq!(testkit::result_ips(&r).len(), 1, "{r}");
    assert_eq!(
        endpoint_count(&c),
        1,
        "the endpoint is in the discovered etcd"
    );
    let asked = dns.questions();
    for q in [
        "SRV _etcd-client-ssl._tcp.calico.test.",
        "SRV _etcd-client._tcp.calico.test.",
    ] {
        assert!(asked.iter().any(|a| a == q), "{q} in {asked:?}");
    }
    rt.del("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap();
    assert_eq!(endpoint_count(&c), 0);
    // DEL leaves the host end to a detached helper: wait until it is gone.
    let no_cali = || {
        c.node(0)
            .sh("ip -o link show")
            .is_ok_and(|links| !links.contains("cali"))
    };
    assert!(testkit::eventually(
        std::time::Duration::from_secs(10),
        no_cali
    ));

    // A domain without records: both lookups fail, "try again later", nothing made.
    list["plugins"][0]["etcd_discovery_srv"] = json!("nothing.test");
    c.install(0, &list).unwrap();
    let e = rt
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("dns lookup errors"), "{e}");
    assert!(pod.sh("ip link show eth0").is_err(), "nothing made");
    assert!(no_cali(), "no host end made");

    // Endpoints and discovery at once: a configuration error, as in libcalico-go.
    list["plugins"][0]["etcd_discovery_srv"] = json!("calico.test");
    list["plugins"][0]["etcd_endpoints"] = json!("https://10.10.0.174:2379");
    c.install(0, &list).unwrap();
    let e = rt
        .add("k8s-pod-network", &pod.path(), &args)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("multiple discovery"), "{e}");
    assert_eq!(endpoint_count(&c), 0);
}

/// A calico-ipam-only chain with the seed's etcd settings (the test plays the main plugin).
fn calico_ipam_chain(name: &str, ipam_extra: Value) -> Value {
    let seed = testkit::cluster::seed_without_kubernetes().unwrap();
    let calico = &seed["plugins"][0];
    let mut ipam = json!({"type": "calico-ipam", "ipam": {"type": "calico-ipam"}});
    for k in [
        "etcd_endpoints",
        "etcd_key_file",
        "etcd_cert_file",
        "etcd_ca_cert_file",
        "log_file_path",
    ] {
        ipam[k] = calico[k].clone();
    }
    for (k, v) in ipam_extra.as_object().unwrap() {
        ipam["ipam"][k] = v.clone();
    }
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [ipam]})
}

/// Issue 12 #2 (findings #2): an IPPool whose `nodeSelector` is nested 10k deep, written
/// past calicoctl (by another client or straight into etcd), used to abort every ADD and DEL
/// with a stack overflow. Now the pool is skipped with a log line naming it: calico ADD and
/// DEL and calico-ipam ADD succeed from the other pools, and a request naming the pool gets
/// code 7 with the reason.
#[test]
fn a_pool_with_a_deeply_nested_selector_is_skipped() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let deep = json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                      "metadata": {"name": "deep"},
                      "spec": {"cidr": "198.41.0.0/24",
                               "nodeSelector": format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000))}});
    c.ctl()
        .put(
            "/calico/resources/v3/projectcalico.org/ippools/deep",
            &deep.to_string(),
        )
        .unwrap();
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("deep").unwrap();
    let opts = pod_args("default", "deep");
    let r = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    let ip = ip_of(&r, 0);
    assert!(ip.starts_with("10.244."), "{r}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert!(
        log.contains("IP pool deep skipped") && log.contains("nested too deeply"),
        "the log names the pool and why"
    );
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    assert_eq!(endpoint_count(&c), 0);
    let handles = "/calico/ipam/v2/handle/";
    assert!(
        c.values(handles).unwrap().is_empty(),
        "the address is freed"
    );
    assert!(!c.node(0).sh("ip -o link").unwrap().contains("cali"));

    // calico-ipam on its own, automatic choice: an address from the good pool.
    c.install(0, &calico_ipam_chain("ipam-net", json!({})))
        .unwrap();
    let r = rt
        .add("ipam-net", &pod.path(), &testkit::CallOpts::default())
        .unwrap()
        .unwrap();
    assert!(ip_of(&r, 0).starts_with("10.244."), "{r}");
    rt.del("ipam-net", &pod.path(), &testkit::CallOpts::default())
        .unwrap()
        .unwrap();

    // Naming the pool, by name or CIDR: code 7 with the reason, nothing allocated.
    for want in ["deep", "198.41.0.0/24"] {
        c.install(
            0,
            &calico_ipam_chain("named-net", json!({"ipv4_pools": [want]})),
        )
        .unwrap();
        let e = rt
            .add("named-net", &pod.path(), &testkit::CallOpts::default())
            .unwrap()
            .expect_err("a malformed pool");
        assert_eq!(e.code, Some(7), "{e}");
        assert!(e.msg.contains("nodeSelector"), "{e}");
        assert!(e.msg.len() < 1000, "the selector is not echoed in full");
    }
    assert!(c.values(handles).unwrap().is_empty(), "nothing left behind");
}

/// Issue 12 #13 (findings #13), on etcd: a block of this node whose free list starts with
/// ordinal 9999 used to give an address outside the block and the pool. It is skipped, and
/// logged: the address comes from another block of the pool, and the corrupt block is left
/// as it was. A corrupt handle, IPAM config or endpoint record used to make every DEL fail;
/// DEL now succeeds, frees the address and deletes the record.
#[test]
fn corrupt_datastore_content_is_skipped_and_never_blocks_a_del() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let ctl = c.ctl();

    // The findings' block: this node's, with an out-of-range free ordinal first.
    let mut unallocated: Vec<usize> = (0..64).collect();
    unallocated.insert(0, 9999);
    let block = json!({"cidr": "10.244.7.0/26", "affinity": "host:node-1",
                       "allocations": vec![Value::Null; 64], "unallocated": unallocated,
                       "attributes": [], "deleted": false});
    ctl.put(
        "/calico/ipam/v2/assignment/ipv4/block/10.244.7.0-26",
        &block.to_string(),
    )
    .unwrap();
    ctl.put(
        "/calico/ipam/v2/host/node-1/ipv4/block/10.244.7.0-26",
        r#"{"state":"confirmed","deleted":false}"#,
    )
    .unwrap();
    let pod = NetNs::new("corrupt").unwrap();
    let opts = pod_args("default", "corrupt");
    let r = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    let ip: std::net::IpAddr = ip_of(&r, 0).parse().unwrap();
    let pool: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
    let corrupt: ipnet::IpNet = "10.244.7.0/26".parse().unwrap();
    assert!(pool.contains(&ip) && !corrupt.contains(&ip), "{r}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert!(
        log.contains("block /calico/ipam/v2/assignment/ipv4/block/10.244.7.0-26 skipped"),
        "the log names the block"
    );
    let kept = ctl
        .get("/calico/ipam/v2/assignment/ipv4/block/10.244.7.0-26")
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), block);
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    assert_eq!(endpoint_count(&c), 0);
    assert!(!c.node(0).sh("ip -o link").unwrap().contains("cali"));
    ctl.run(&["del", "--prefix", "/calico/ipam/v2/"]).unwrap();

    for (what, key) in [
        ("handle", "/calico/ipam/v2/handle/"),
        ("ipam config", "/calico/ipam/v2/config"),
        (
            "endpoint",
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/",
        ),
    ] {
        let r = rt
            .add("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
        assert!(ip_of(&r, 0).starts_with("10.244."), "{what}: {r}");
        // Corrupt every key under (or at) `key`.
        let keys: Vec<String> = if key.ends_with('/') {
            c.values(key).unwrap().into_iter().map(|(k, _)| k).collect()
        } else {
            vec![key.to_string()]
        };
        assert!(!keys.is_empty(), "{what}");
        for k in &keys {
            ctl.put(k, "{not json").unwrap();
        }
        rt.del("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(endpoint_count(&c), 0, "{what}");
        assert!(
            c.values("/calico/ipam/v2/handle/").unwrap().is_empty(),
            "{what}: the handle is gone"
        );
        let blocks = c.values("/calico/ipam/v2/assignment/").unwrap();
        assert!(
            blocks.iter().all(|(_, b)| b["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_null)),
            "{what}: the address is freed"
        );
        assert!(!c.node(0).sh("ip -o link").unwrap().contains("cali"));
        rt.del("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}, again: {e}"));
        ctl.run(&["del", "/calico/ipam/v2/config"]).unwrap();
    }
}
