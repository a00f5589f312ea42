//! ADD options of Calico's NetConf that shape the call or the veth: `readiness_gates`
//! (polled with Calico's own 5 s interval and 30 s timeout, against a scripted HTTP server
//! on the node) and `num_queues` (read back from the kernel on both ends).

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use testkit::http::{Answer, ScriptedHttp};
use testkit::{NetNs, require};

const NET: &str = "k8s-pod-network";

fn gates(urls: &[String]) -> Value {
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["readiness_gates"] = json!(urls);
    list
}

/// Mirrors plugin.go `cmdAdd` → `pollEndpointReadiness(endpoint, 5s, 30s)`: the first poll
/// comes one interval after the start, a gate answering 2xx lets the ADD go on, one that
/// answers 503 first is asked again at the next interval.
#[test]
fn readiness_gates_hold_the_add_until_ready() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let http = ScriptedHttp::start(
        Some(c.node(0).netns()),
        "127.0.0.1".parse().unwrap(),
        |n, path| match path {
            "/later" if n < 3 => Answer::Status(503),
            _ => Answer::Status(200),
        },
    )
    .unwrap();
    let rt = c.runtime(0);
    let pod = NetNs::new("gate").unwrap();
    let args = pod_args("default", "gate");

    // Two gates, each ready on its first poll: one interval each.
    c.install(0, &gates(&[http.url("/ready"), http.url("/ready-too")]))
        .unwrap();
    let started = Instant::now();
    rt.add(NET, &pod.path(), &args).unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert_eq!(http.requests(), ["/ready", "/ready-too"]);
    rt.del(NET, &pod.path(), &args).unwrap().unwrap();

    // Not ready at the first poll (the 3rd request overall), ready at the second. A new
    // sandbox, as a runtime makes one (the old interface goes in the background).
    c.install(0, &gates(&[http.url("/later")])).unwrap();
    let pod = NetNs::new("gate2").unwrap();
    let started = Instant::now();
    rt.add(NET, &pod.path(), &args).unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert_eq!(&http.requests()[2..], ["/later", "/later"]);
    rt.del(NET, &pod.path(), &args).unwrap().unwrap();

    // A gate that is not a URL: code 7 at once.
    c.install(0, &gates(&["not a url".to_string()])).unwrap();
    let pod = NetNs::new("gate3").unwrap();
    let e = rt.add(NET, &pod.path(), &args).unwrap().unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("ReadinessGates"), "{e}");
}

/// Mirrors plugin.go `pollEndpointReadiness` timing out (30 s): the ADD fails and nothing
/// was made.
#[test]
fn a_gate_never_ready_fails_the_add_after_30s() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let http = ScriptedHttp::start(
        Some(c.node(0).netns()),
        "127.0.0.1".parse().unwrap(),
        |_, _| Answer::Status(503),
    )
    .unwrap();
    c.install(0, &gates(&[http.url("/never")])).unwrap();
    let before = node_state(&c);
    let pod = NetNs::new("nogate").unwrap();
    let started = Instant::now();
    let e = c
        .runtime(0)
        .add(NET, &pod.path(), &pod_args("default", "nogate"))
        .unwrap()
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("503") && e.msg.contains("/never"), "{e}");
    assert!(took >= Duration::from_secs(30), "{took:?}");
    // Polled every 5 s: at 5, 10, 15, 20, 25 (and maybe 30) s.
    let asked = http.requests().len();
    assert!((5..=6).contains(&asked), "{asked}");
    assert_eq!(node_state(&c), before);
    assert!(pod.sh("ip link show eth0").is_err());
}

/// Mirrors dataplane_linux.go `DoWorkloadNetnsSetUp` (`NumTxQueues`/`NumRxQueues` =
/// `conf.NumQueues`, 1 when unset as plugin.go `cmdAdd` defaults it): both veth ends have
/// exactly that many queues (the kernel's own default here would be one per CPU).
#[test]
fn num_queues_sets_the_veth_queues() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let rt = c.runtime(0);
    for (queues, want) in [(None, 1), (Some(3), 3)] {
        let mut list = conflist("1.0.0", json!({}));
        if let Some(q) = queues {
            list["plugins"][0]["num_queues"] = json!(q);
        }
        c.install(0, &list).unwrap();
        let pod = NetNs::new("queues").unwrap();
        let args = pod_args("default", "queues");
        let r = rt.add(NET, &pod.path(), &args).unwrap().unwrap();
        let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
        let expect = format!("numtxqueues {want} numrxqueues {want} ");
        let host = c.node(0).sh(&format!("ip -d link show {host_if}")).unwrap();
        assert!(host.contains(&expect), "host end: {host}");
        let inside = pod.sh("ip -d link show eth0").unwrap();
        assert!(inside.contains(&expect), "pod end: {inside}");
        rt.del(NET, &pod.path(), &args).unwrap().unwrap();
    }
    // Beyond the kernel's limit: code 7 before anything is made.
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["num_queues"] = json!(5000);
    c.install(0, &list).unwrap();
    let pod = NetNs::new("queues").unwrap();
    let e = rt
        .add(NET, &pod.path(), &pod_args("default", "queues"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(7), "{e}");
    assert!(e.msg.contains("num_queues"), "{e}");
    assert!(pod.sh("ip link show eth0").is_err());
}
