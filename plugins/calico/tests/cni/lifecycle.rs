//! ADD, CHECK and DEL for IPv4, IPv6 and dual stack: interface names, addresses, routes,
//! sysctls, host routes and the endpoint record.

use crate::common::*;
use serde_json::json;
use std::time::Duration;
use testkit::{NetNs, eventually, require};

fn sysctl(ns_sh: impl Fn(&str) -> String, path: &str) -> String {
    ns_sh(&format!("cat /proc/sys/net/{path}"))
        .trim()
        .to_string()
}

#[test]
fn ipv4_add_check_del() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("pod").unwrap();
    let opts = pod_args("default", "nginx");

    let r = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    // The result: host end (name only), pod interface, /32 on interface 1.
    assert_eq!(r["interfaces"][0], json!({"name": "calic440f455693"}));
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], pod.path().to_str().unwrap());
    let mac = r["interfaces"][1]["mac"].as_str().unwrap().to_string();
    let addrs = addresses(&r);
    assert_eq!(addrs.len(), 1);
    let ip = addrs[0].trim_end_matches("/32").to_string();
    assert!(
        addrs[0].starts_with("10.244.") && addrs[0].ends_with("/32"),
        "{r}"
    );
    assert_eq!(r["ips"][0]["interface"], 1);

    // The pod: address, gateway routes, MAC, MTU from the seed (1440).
    let link = sh(&pod, "ip -o link show eth0");
    assert!(link.contains(&mac) && link.contains("mtu 1440"), "{link}");
    assert!(sh(&pod, "ip -o -4 addr show dev eth0").contains(&format!("{ip}/32")));
    let routes = sh(&pod, "ip -4 route show");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    assert_eq!(sysctl(|c| sh(&pod, c), "ipv4/ip_forward"), "0");

    // The node: host end with Calico's MAC, sysctls, the host route with our protocol.
    let node = c.node(0);
    let host = node.sh("ip -o link show calic440f455693").unwrap();
    assert!(
        host.contains("ee:ee:ee:ee:ee:ee") && host.contains("state UP"),
        "{host}"
    );
    let node_sh = |cmd: &str| node.sh(cmd).unwrap();
    assert_eq!(sysctl(node_sh, "ipv4/conf/calic440f455693/proxy_arp"), "1");
    assert_eq!(sysctl(node_sh, "ipv4/conf/calic440f455693/forwarding"), "1");
    assert_eq!(
        sysctl(node_sh, "ipv4/conf/calic440f455693/route_localnet"),
        "1"
    );
    assert_eq!(
        sysctl(node_sh, "ipv4/neigh/calic440f455693/proxy_delay"),
        "0"
    );
    let host_route = node.sh(&format!("ip route show {ip}")).unwrap();
    assert!(
        host_route.contains("dev calic440f455693")
            && host_route.contains("scope link")
            && host_route.contains("proto 77"),
        "{host_route}"
    );

    // The endpoint record, field for field.
    let weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .unwrap();
    assert_eq!(weps.len(), 1);
    let (key, wep) = &weps[0];
    assert_eq!(
        key,
        "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-nginx-eth0"
    );
    assert_eq!(wep["kind"], "WorkloadEndpoint");
    assert_eq!(wep["apiVersion"], "projectcalico.org/v3");
    assert_eq!(wep["metadata"]["name"], "node--1-k8s-nginx-eth0");
    assert_eq!(wep["metadata"]["namespace"], "default");
    assert!(wep["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(
        wep["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        wep["metadata"]["labels"],
        json!({"projectcalico.org/namespace":"default","projectcalico.org/orchestrator":"k8s"})
    );
    let cid = wep["spec"]["containerID"].as_str().unwrap().to_string();
    assert_eq!(
        wep["spec"],
        json!({"orchestrator":"k8s","node":"node-1","containerID":cid,"pod":"nginx","endpoint":"eth0",
            "ipNetworks":[format!("{ip}/32")],"profiles":["k8s-pod-network"],
            "interfaceName":"calic440f455693","mac":mac})
    );
    // Without policy.type, the network's profile is created.
    let profiles = c
        .values("/calico/resources/v3/projectcalico.org/profiles/")
        .unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(
        profiles[0].1["spec"],
        json!({"ingress":[{"action":"Allow"}],"egress":[{"action":"Allow"}],
               "labelsToApply":{"k8s-pod-network":""}})
    );

    rt.check("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    // The host route goes with the DEL; the veth is deleted by a detached helper just after.
    assert!(
        eventually(Duration::from_secs(10), || pod
            .sh("ip link show eth0")
            .is_err()),
        "pod interface removed"
    );
    assert!(
        node.sh("ip link show calic440f455693").is_err(),
        "host end removed with it"
    );
    assert!(
        node.sh(&format!("ip route show {ip}"))
            .unwrap()
            .trim()
            .is_empty()
    );
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
    assert!(c.values("/calico/ipam/v2/handle/").unwrap().is_empty());
    // A second DEL succeeds.
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
}

#[test]
fn ipv6_and_dual_stack_add_check_del() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &{
        let mut l = conflist(
            "1.0.0",
            json!({"assign_ipv4": "false", "assign_ipv6": "true"}),
        );
        l["name"] = json!("v6net");
        l
    })
    .unwrap();
    c.install(0, &{
        let mut l = conflist("1.0.0", json!({"assign_ipv6": "true"}));
        l["name"] = json!("dualnet");
        l
    })
    .unwrap();
    let rt = c.runtime(0);
    let node = c.node(0);

    let p6 = NetNs::new("p6").unwrap();
    let o6 = pod_args("default", "six");
    let r = rt.add("v6net", &p6.path(), &o6).unwrap().unwrap();
    let a = addresses(&r);
    assert_eq!(a.len(), 1);
    assert!(
        a[0].starts_with("fd00:10:244:") && a[0].ends_with("/128"),
        "{r}"
    );
    let routes = sh(&p6, "ip -6 route show");
    assert!(
        routes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes}"
    );
    let ip6 = a[0].trim_end_matches("/128").to_string();
    assert!(sh(&p6, "ip -o -6 addr show dev eth0 scope global").contains(&a[0]));
    assert_eq!(
        sh(&p6, "cat /proc/sys/net/ipv6/conf/eth0/accept_dad").trim(),
        "0"
    );
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(
        node.sh(&format!("cat /proc/sys/net/ipv6/conf/{host_if}/proxy_ndp"))
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(
        node.sh(&format!("cat /proc/sys/net/ipv6/conf/{host_if}/accept_ra"))
            .unwrap()
            .trim(),
        "0"
    );
    assert!(
        node.sh(&format!("ip -6 route show {ip6}"))
            .unwrap()
            .contains(&host_if)
    );
    rt.check("v6net", &p6.path(), &o6).unwrap().unwrap();

    let pd = NetNs::new("pd").unwrap();
    let od = pod_args("default", "dual");
    let r = rt.add("dualnet", &pd.path(), &od).unwrap().unwrap();
    let a = addresses(&r);
    assert_eq!(a.len(), 2, "{r}");
    assert!(a[0].ends_with("/32") && a[1].ends_with("/128"), "{r}");
    assert!(sh(&pd, "ip -4 route").contains("default via 169.254.1.1"));
    assert!(sh(&pd, "ip -6 route").contains("default via fe80::ecee:eeff:feee:eeee"));
    rt.check("dualnet", &pd.path(), &od).unwrap().unwrap();

    rt.del("v6net", &p6.path(), &o6).unwrap().unwrap();
    rt.del("dualnet", &pd.path(), &od).unwrap().unwrap();
    rt.del("dualnet", &pd.path(), &od).unwrap().unwrap();
    assert!(c.values("/calico/ipam/v2/handle/").unwrap().is_empty());
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
    // The veths go with detached helpers just after the DELs.
    assert!(eventually(Duration::from_secs(10), || node
        .sh("ip -o link show | grep cali || true")
        .unwrap()
        .trim()
        .is_empty()));
}

#[test]
fn allow_ip_forwarding_is_applied_whatever_the_pod_had() {
    require!(root; "etcd", "go", "ip", "sysctl");
    let c = cluster(1);
    let rt = c.runtime(0);
    // Wanted on, the namespace has it off (and the reverse): both are written, v4 and v6.
    for (allow, had) in [(true, "0"), (false, "1")] {
        let mut list = conflist("1.0.0", json!({"assign_ipv6": "true"}));
        list["plugins"][0]["container_settings"] = json!({"allow_ip_forwarding": allow});
        c.install(0, &list).unwrap();
        let pod = NetNs::new("fwd").unwrap();
        sh(
            &pod,
            &format!(
                "sysctl -qw net.ipv4.ip_forward={had} net.ipv6.conf.all.forwarding={had} && echo ok"
            ),
        );
        let opts = pod_args("default", &format!("fwd-{allow}"));
        rt.add("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
        let want = if allow { "1" } else { "0" };
        assert_eq!(sysctl(|c| sh(&pod, c), "ipv4/ip_forward"), want);
        assert_eq!(sysctl(|c| sh(&pod, c), "ipv6/conf/all/forwarding"), want);
        rt.del("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
    }
}

/// CPU hogs on both cores for as long as it lives, so the agent's deletion of a DEL runs
/// late, after the next ADD (the race a re-created sandbox meets on a busy node).
struct Load(Vec<std::process::Child>);

impl Load {
    fn start() -> Load {
        Load(
            (0..2)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_sandbox_recreated_right_after_del_keeps_its_interface() {
    // The host end's name is a hash of the pod's name, the same for every sandbox of the pod;
    // the old sandbox's interface must be deleted by what identifies it (its namespace and
    // index there), never by that name.
    require!(root; "etcd", "go", "ip", "busybox");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let node = c.node(0);
    let opts = pod_args("default", "web");
    let host_if = "cali68caf03a5f4"; // sha1("default.web")
    // The node agent deletes the old sandbox's interface after DEL has answered.
    let agent = testkit::Agent::on_node(&c, 0).unwrap();
    let reaped = |ns: &str| {
        agent
            .log()
            .lines()
            .any(|l| l.contains("eth0 (index ") && l.contains(&format!("in {ns}")))
    };
    let _load = Load::start();
    let mut sandbox = NetNs::new("web").unwrap();
    let mut last = rt
        .add("k8s-pod-network", &sandbox.path(), &opts)
        .unwrap()
        .unwrap();
    for round in 0..20 {
        let old = sandbox.path().display().to_string();
        rt.del("k8s-pod-network", &sandbox.path(), &opts)
            .unwrap()
            .unwrap();
        let next = NetNs::new("web").unwrap();
        // Half the rounds the runtime removes the old namespace at once, half only later.
        let previous = std::mem::replace(&mut sandbox, next);
        let early = round % 2 == 0;
        let previous = if early {
            drop(previous);
            None
        } else {
            Some(previous)
        };
        last = rt
            .add("k8s-pod-network", &sandbox.path(), &opts)
            .unwrap()
            .unwrap();
        drop(previous);
        // Once the old sandbox's deletion has run, the new pod still has its interface.
        assert!(
            eventually(Duration::from_secs(20), || reaped(&old)),
            "round {round}: the deletion for {old} did not finish"
        );
        let peer = sandbox.sh("ip -o link show eth0").unwrap();
        assert!(peer.contains("state UP"), "round {round}: {peer}");
        assert!(
            node.sh(&format!("ip -o link show {host_if}"))
                .unwrap()
                .contains("state UP"),
            "round {round}"
        );
        rt.check("k8s-pod-network", &sandbox.path(), &opts)
            .unwrap()
            .unwrap();
    }
    assert!(
        node.sh(&format!("busybox ping -c1 -W2 {}", ip_of(&last, 0)))
            .is_ok(),
        "the node reaches the last sandbox"
    );
    rt.del("k8s-pod-network", &sandbox.path(), &opts)
        .unwrap()
        .unwrap();
}

/// Issue 12 #12 (findings #12): a second ADD with the same container ID used to take a
/// second address under the same handle. Now the endpoint keeps its address (the IPAM
/// returns what the handle holds; Calico 3.32 takes another, a README difference): one
/// allocation, one endpoint, and DEL frees it.
#[test]
fn a_repeated_add_keeps_the_address() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("dup").unwrap();
    let opts = pod_args("default", "dup");
    let first = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    let again = rt
        .add("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&again), addresses(&first));
    let allocations = |c: &testkit::Cluster| -> usize {
        c.values("/calico/ipam/v2/assignment/")
            .unwrap()
            .iter()
            .map(|(_, b)| {
                b["allocations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| !a.is_null())
                    .count()
            })
            .sum()
    };
    assert_eq!(allocations(&c), 1);
    let weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .unwrap();
    assert_eq!(weps.len(), 1);
    assert_eq!(
        weps[0].1["spec"]["ipNetworks"],
        json!([format!("{}/32", ip_of(&first, 0))])
    );
    rt.del("k8s-pod-network", &pod.path(), &opts)
        .unwrap()
        .unwrap();
    assert_eq!(allocations(&c), 0, "the block is empty");
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
    assert!(!c.node(0).sh("ip -o link").unwrap().contains("cali"));
}
