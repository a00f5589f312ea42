//! GC (CNI 1.1) touches only its own network's attachments and never what the kernel shows
//! alive: other networks on the node, other runtimes on the same network, and pods whose
//! namespace still exists keep everything; a pod whose namespace is gone is reclaimed.

use crate::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use testkit::{CallOpts, Cluster, NetNs, eventually, require};

const WEPS: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";
const HANDLES: &str = "/calico/ipam/v2/handle/";

/// The seed conflist named `name`, offering 1.1.0 for GC.
fn network(name: &str) -> Value {
    let mut list = conflist("1.0.0", json!({}));
    list["name"] = json!(name);
    list["cniVersions"] = json!(["1.0.0", "1.1.0"]);
    list
}

/// One node and one IPv4 pool of the test's own: GC asks the whole host which addresses
/// are in use, and tests running in parallel would otherwise have pods with the same ones.
fn gc_cluster(pool: &str) -> Cluster {
    let c = Cluster::start(1, &[]).unwrap();
    c.add_pool("gc-pool", pool, None).unwrap();
    c
}

fn pods_in_records(c: &Cluster) -> Vec<String> {
    let mut pods: Vec<String> = c
        .values(WEPS)
        .unwrap()
        .iter()
        .map(|(_, w)| w["spec"]["pod"].as_str().unwrap().to_string())
        .collect();
    pods.sort();
    pods
}

fn handles(c: &Cluster) -> Vec<String> {
    c.values(HANDLES)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.trim_start_matches(HANDLES).to_string())
        .collect()
}

fn host_interface_of(c: &Cluster, pod: &str) -> String {
    let w = c
        .values(WEPS)
        .unwrap()
        .into_iter()
        .find(|(_, w)| w["spec"]["pod"] == pod)
        .unwrap()
        .1;
    w["spec"]["interfaceName"].as_str().unwrap().to_string()
}

/// A pod's namespace removed without a DEL, as after a runtime crash; returns once the
/// kernel has taken its veth (and so the host end and routes) away.
fn lose_namespace(c: &Cluster, pod: NetNs, host_if: &str) {
    drop(pod);
    let node = c.node(0);
    assert!(
        eventually(Duration::from_secs(10), || node
            .sh(&format!("ip link show {host_if}"))
            .is_err()),
        "{host_if} gone with its namespace"
    );
}

#[test]
fn gc_of_one_network_leaves_another_networks_pods_working() {
    require!(root; "etcd", "go", "ip", "busybox");
    let c = gc_cluster("10.201.0.0/16");
    c.install(0, &network("net-a")).unwrap();
    c.install(0, &network("net-b")).unwrap();
    let rt = c.runtime(0);
    let (a1, a2, b1) = (
        NetNs::new("a1").unwrap(),
        NetNs::new("a2").unwrap(),
        NetNs::new("b1").unwrap(),
    );
    let ra1 = rt
        .add("net-a", &a1.path(), &pod_args("default", "a1"))
        .unwrap()
        .unwrap();
    rt.add("net-a", &a2.path(), &pod_args("default", "a2"))
        .unwrap()
        .unwrap();
    let rb1 = rt
        .add("net-b", &b1.path(), &pod_args("default", "b1"))
        .unwrap()
        .unwrap();
    let before_b: Vec<String> = handles(&c)
        .into_iter()
        .filter(|h| h.starts_with("net-b."))
        .collect();
    assert_eq!(before_b.len(), 1);

    // a2's sandbox dies without a DEL: GC of net-a (a1 valid) reclaims its record and address.
    let a2_if = host_interface_of(&c, "a2");
    lose_namespace(&c, a2, &a2_if);
    rt.gc("net-a", &[&a1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(pods_in_records(&c), ["a1", "b1"]);
    let after: Vec<String> = handles(&c);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after.iter().filter(|h| h.starts_with("net-a.")).count(),
        1,
        "{after:?}"
    );

    // net-b's pod was never net-a's business: record, address and traffic intact.
    assert!(after.contains(&before_b[0]), "{after:?}");
    rt.check("net-b", &b1.path(), &pod_args("default", "b1"))
        .unwrap()
        .unwrap();
    assert!(ping(&b1, &ip_of(&ra1, 0)), "b1 -> a1");
    assert!(ping(&a1, &ip_of(&rb1, 0)), "a1 -> b1");
    for (net, p, name) in [("net-a", &a1, "a1"), ("net-b", &b1, "b1")] {
        rt.del(net, &p.path(), &pod_args("default", name))
            .unwrap()
            .unwrap();
    }
}

#[test]
fn gc_from_one_runtime_frees_nothing_of_another_runtimes_live_pods() {
    require!(root; "etcd", "go", "ip", "busybox");
    let c = gc_cluster("10.202.0.0/16");
    c.install(0, &network("k8s-pod-network")).unwrap();
    // containerd and Podman side by side: one network, two libcni caches.
    let first = c.runtime(0);
    let second = c
        .runtime(0)
        .with_cache_dir(Path::new("/var/lib/cni/second-runtime"));
    let (p1, p2, p3) = (
        NetNs::new("p1").unwrap(),
        NetNs::new("p2").unwrap(),
        NetNs::new("p3").unwrap(),
    );
    let r1 = first
        .add("k8s-pod-network", &p1.path(), &pod_args("default", "p1"))
        .unwrap()
        .unwrap();
    let r2 = second
        .add("k8s-pod-network", &p2.path(), &pod_args("default", "p2"))
        .unwrap()
        .unwrap();
    second
        .add("k8s-pod-network", &p3.path(), &pod_args("default", "p3"))
        .unwrap()
        .unwrap();

    first
        .gc("k8s-pod-network", &[&p1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(pods_in_records(&c), ["p1", "p2", "p3"]);
    assert_eq!(handles(&c).len(), 3);
    second
        .check("k8s-pod-network", &p2.path(), &pod_args("default", "p2"))
        .unwrap()
        .unwrap();
    assert!(ping(&p1, &ip_of(&r2, 0)), "p1 -> p2");
    assert!(ping(&p2, &ip_of(&r1, 0)), "p2 -> p1");

    // The second runtime's p3 dies without a DEL: the first runtime's GC reclaims it.
    let p3_if = host_interface_of(&c, "p3");
    lose_namespace(&c, p3, &p3_if);
    first
        .gc("k8s-pod-network", &[&p1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(pods_in_records(&c), ["p1", "p2"]);
    assert_eq!(handles(&c).len(), 2);
    first
        .del("k8s-pod-network", &p1.path(), &pod_args("default", "p1"))
        .unwrap()
        .unwrap();
    second
        .del("k8s-pod-network", &p2.path(), &pod_args("default", "p2"))
        .unwrap()
        .unwrap();
}

#[test]
fn calico_ipam_under_another_plugin_keeps_what_the_kernel_shows_in_use() {
    require!(root; "etcd", "go", "ip");
    let c = gc_cluster("10.203.0.0/16");
    // calico-ipam as the whole chain; the test plays the main plugin, putting each address
    // on an interface in its pod's namespace. The IPAM's GC can only ask the kernel.
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
    let list = json!({"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"],
                      "name": "other-net", "plugins": [ipam]});
    c.install(0, &list).unwrap();
    let first = c.runtime(0);
    let second = c
        .runtime(0)
        .with_cache_dir(Path::new("/var/lib/cni/second-runtime"));
    let wire = |pod: &NetNs, r: &Value| {
        pod.sh(&format!(
            "ip link add e0 type veth peer name e1 && ip addr add {}/32 dev e0",
            ip_of(r, 0)
        ))
        .unwrap();
    };
    let (p1, p2) = (NetNs::new("p1").unwrap(), NetNs::new("p2").unwrap());
    let r1 = first
        .add("other-net", &p1.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    wire(&p1, &r1);
    let r2 = second
        .add("other-net", &p2.path(), &CallOpts::default())
        .unwrap()
        .unwrap();

    // New allocations are safe for a while: the main plugin may not have used them yet.
    first
        .gc("other-net", &[&p1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(handles(&c).len(), 2, "p2 is new");
    // Past that grace period, only the kernel vouches for p2.
    wire(&p2, &r2);
    c.etcd
        .backdate_allocations(calico_ipam::gc::DEFAULT_GRACE + Duration::from_secs(5))
        .unwrap();
    first
        .gc("other-net", &[&p1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        handles(&c).len(),
        2,
        "p2's address is in use in its namespace"
    );

    // p2's namespace goes without a DEL: GC frees its address.
    drop(p2);
    first
        .gc("other-net", &[&p1.path()], &CallOpts::default())
        .unwrap()
        .unwrap();
    let left = handles(&c);
    assert_eq!(left.len(), 1, "{left:?}");
    first
        .del("other-net", &p1.path(), &CallOpts::default())
        .unwrap()
        .unwrap();
    assert!(handles(&c).is_empty());
}
