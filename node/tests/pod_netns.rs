//! Bad-input finding #7 through the real plugins, driven by libcni on a simulated node, with
//! and without calico-node: a `CNI_NETNS` that is the node's own network namespace (the
//! plugin's `/proc/self/ns/net`) is refused with code 4 by ADD and DEL before anything is
//! touched; no network namespace at all is code 4 for ADD, and nothing to remove for DEL.
//! Before, ADD configured the node itself as the pod (turning its `ip_forward`
//! off) and DEL deleted the node's own `eth0`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use testkit::{Agent, CallOpts, Cluster, require};

const NET: &str = "k8s-pod-network";

/// The seed chain (calico + portmap), IPv4 only.
fn seed() -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    list
}

fn call(id: &str) -> CallOpts {
    CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"
        )),
        container_id: Some(id.to_string()),
        ..CallOpts::default()
    }
}

/// What the calls must leave as it was: the node's links, its forwarding, and the store.
fn state(c: &Cluster) -> (String, String, Vec<String>) {
    let node = c.node(0).netns();
    let mut links: Vec<String> = node
        .sh("ip -o link show")
        .unwrap()
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    links.sort();
    let forwarding = node.sh("cat /proc/sys/net/ipv4/ip_forward").unwrap();
    let keys = c
        .values("/calico/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/workloadendpoints/") || k.contains("/ipam/v2/handle/"))
        .collect();
    (links.join(" "), forwarding.trim().to_string(), keys)
}

fn refused_everywhere(c: &Cluster, tag: &str) {
    let rt = c.runtime(0);
    let before = state(c);
    assert_eq!(before.1, "1", "a node forwards");
    assert!(
        before.0.contains("eth0"),
        "the node has an eth0: {}",
        before.0
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        ("/proc/self/ns/net".into(), "own network namespace"),
        (file.path().into(), "not a network namespace"),
        ("/dev/null".into(), "not a network namespace"),
        ("/proc/self/ns/mnt".into(), "not a network namespace"),
    ];
    for (i, (netns, why)) in cases.iter().enumerate() {
        let id = format!("{tag}{i}");
        let what = format!("{tag}: CNI_NETNS={}", netns.display());
        let e = rt
            .add(NET, Path::new(netns), &call(&id))
            .unwrap()
            .expect_err(&what);
        assert_eq!(e.code, Some(4), "{what}: {e}");
        assert!(e.msg.contains(why), "{what}: {e}");
        // DEL of a container that never existed, with eth0 (the node's own) as CNI_IFNAME:
        // refused in the node's namespace; elsewhere there is nothing to remove (a pin file
        // may outlive its namespace), so DEL succeeds, idempotent.
        let deleted = rt.del(NET, Path::new(netns), &call(&id)).unwrap();
        if why.contains("own") {
            let e = deleted.expect_err(&what);
            assert_eq!(e.code, Some(4), "{what}: {e}");
        } else {
            deleted.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        assert_eq!(state(c), before, "{what}: something changed");
    }
}

#[test]
fn a_cni_netns_that_is_no_pods_namespace_is_refused_and_nothing_changes() {
    require!(root; "etcd", "go", "ip");
    let c = Cluster::start(1, &[]).unwrap();
    c.add_pool("default-ipv4-ippool", "10.244.0.0/16", Some(26))
        .unwrap();
    c.install(0, &seed()).unwrap();
    refused_everywhere(&c, "alone");
    let agent = Agent::on_node(&c, 0).unwrap();
    refused_everywhere(&c, "agent");
    assert!(
        agent.log().lines().all(|l| !l.contains("deleted")),
        "{}",
        agent.log()
    );
}
