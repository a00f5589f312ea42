//! Every failure is a clear CNI error and leaves the node and the datastore exactly as they
//! were.

use crate::common::*;
use serde_json::json;
use testkit::{Cluster, NetNs, require};

fn state(c: &Cluster) -> (String, String, Vec<(String, String)>) {
    node_state(c)
}

#[test]
fn ipam_failure_leaves_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = Cluster::start(1, &[]).unwrap();
    c.add_pool("tiny", "10.9.9.0/30", Some(30)).unwrap();
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let pods: Vec<NetNs> = (0..4)
        .map(|i| NetNs::new(&format!("t{i}")).unwrap())
        .collect();
    for (i, p) in pods.iter().enumerate() {
        rt.add(
            "k8s-pod-network",
            &p.path(),
            &pod_args("default", &format!("t{i}")),
        )
        .unwrap()
        .unwrap();
    }
    let before = state(&c);
    let extra = NetNs::new("t4").unwrap();
    let e = rt
        .add("k8s-pod-network", &extra.path(), &pod_args("default", "t4"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(104), "{e}");
    assert!(e.msg.contains("10.9.9.0/30"), "names the pool: {e}");
    assert_eq!(state(&c), before);
    assert!(
        extra.sh("ip link show eth0").is_err(),
        "no interface in the pod"
    );
}

#[test]
fn a_missing_netns_is_unknown_container_and_leaves_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let before = state(&c);
    let gone = std::path::Path::new("/run/netns/ct-vanished-pod");
    let e = c
        .runtime(0)
        .add("k8s-pod-network", gone, &pod_args("default", "gone"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(3), "{e}");
    assert!(e.msg.contains("does not exist"), "{e}");
    assert_eq!(state(&c), before);
}

#[test]
fn etcd_down_is_try_again_later_and_leaves_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let (links, routes, _) = state(&c);
    let pod = NetNs::new("down").unwrap();
    // Freeze etcd: connections are accepted but never answered.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.etcd.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let e = c
        .runtime(0)
        .add("k8s-pod-network", &pod.path(), &pod_args("default", "down"))
        .unwrap()
        .unwrap_err();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.etcd.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(
        e.msg.contains("10.10.0.174:2379"),
        "names the endpoint: {e}"
    );
    let (links2, routes2, keys) = state(&c);
    assert_eq!(
        (links2, routes2),
        (links, routes),
        "nothing left on the node"
    );
    assert!(
        !keys
            .iter()
            .any(|(k, _)| k.contains("handle") || k.contains("workloadendpoints"))
    );
    assert!(pod.sh("ip link show eth0").is_err());
}

#[test]
fn bad_config_values_are_code_7_and_touch_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["mtu"] = json!("big");
    c.install(0, &list).unwrap();
    let before = state(&c);
    let pod = NetNs::new("bad").unwrap();
    let e = c
        .runtime(0)
        .add("k8s-pod-network", &pod.path(), &pod_args("default", "bad"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("mtu"), "{e}");
    assert_eq!(state(&c), before);
}

#[test]
fn a_cluster_not_ready_is_try_again_later() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    c.etcd
        .put(
            "/calico/resources/v3/projectcalico.org/clusterinformations/default",
            &json!({"kind":"ClusterInformation","apiVersion":"projectcalico.org/v3",
                "metadata":{"name":"default"},"spec":{"datastoreReady":false}})
            .to_string(),
        )
        .unwrap();
    let before = state(&c);
    let pod = NetNs::new("nr").unwrap();
    let e = c
        .runtime(0)
        .add("k8s-pod-network", &pod.path(), &pod_args("default", "nr"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("not ready"), "{e}");
    assert_eq!(state(&c), before);
}

#[test]
fn without_the_nodename_file_add_and_del_wait_for_calico_node() {
    // Mirrors cmdAdd/cmdDel in cni-plugin/pkg/plugin/plugin.go: the file calico-node writes
    // must exist, even with `nodename` set, unless nodename_file_optional is true.
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["nodename"] = json!("node-1");
    c.install(0, &list).unwrap();
    let rt = c.runtime(0);
    std::fs::remove_file(c.node(0).calico_lib_dir().join("nodename")).unwrap();
    let before = state(&c);
    let pod = NetNs::new("nf").unwrap();
    let opts = pod_args("default", "nf");
    let e = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("/var/lib/calico/nodename"), "{e}");
    assert_eq!(state(&c), before);
    assert!(pod.sh("ip link show eth0").is_err());
    let e = rt
        .del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");

    list["plugins"][0]["nodename_file_optional"] = json!(true);
    c.install(0, &list).unwrap();
    rt.add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
}

/// Issue 12 #4 (findings #4), the findings' command: `nodename_file` naming a file that does
/// not exist, no `nodename`, `nodename_file_optional` left false. The ADD used to succeed
/// under the machine's host name, claiming a block; it is code 11, one error object, and no
/// etcd key, link or route is written.
#[test]
fn a_missing_nodename_file_is_try_again_later_and_writes_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    let calico = list["plugins"][0].as_object_mut().unwrap();
    calico.remove("nodename");
    calico.insert("nodename_file".into(), json!("/nonexistent/nodename"));
    c.install(0, &list).unwrap();
    let before = state(&c);
    let pod = NetNs::new("nfm").unwrap();
    let e = c
        .runtime(0)
        .add("k8s-pod-network", &pod.path(), &pod_args("default", "nfm"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("/nonexistent/nodename"), "{e}");
    assert_eq!(state(&c), before, "no etcd key, link or route");
    assert!(pod.sh("ip link show eth0").is_err());
}

/// Issue 12 #11 (findings #11), the findings' command: `nodename` `a/b` (or `../../x`)
/// wrote affinity keys outside `/calico/ipam/v2/host/`, and `K8S_POD_NAMESPACE=a/b` an
/// endpoint outside its prefix. Both are refused before anything is made: code 7 for the
/// node name, code 4 naming the `CNI_ARGS` field.
#[test]
fn names_that_would_escape_their_keys_write_nothing() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let rt = c.runtime(0);
    let pod = NetNs::new("names").unwrap();
    for node in ["a/b", "../../x"] {
        let mut list = conflist("1.0.0", json!({}));
        list["plugins"][0]["nodename"] = json!(node);
        c.install(0, &list).unwrap();
        let before = state(&c);
        let e = rt
            .add("k8s-pod-network", &pod.path(), &pod_args("default", "p"))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, Some(7), "{node}: {e}");
        assert!(e.msg.contains("invalid node name"), "{e}");
        assert_eq!(state(&c), before, "{node}");
    }
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let before = state(&c);
    for (ns, name, field) in [
        ("a/b", "p", "K8S_POD_NAMESPACE"),
        ("..", "p", "K8S_POD_NAMESPACE"),
        ("default", "../p", "K8S_POD_NAME"),
    ] {
        let e = rt
            .add("k8s-pod-network", &pod.path(), &pod_args(ns, name))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, Some(4), "{ns}/{name}: {e}");
        assert!(e.msg.contains(field), "{e}");
        assert_eq!(state(&c), before, "{ns}/{name}");
        assert!(pod.sh("ip link show eth0").is_err());
    }
}
