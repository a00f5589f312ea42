//! `policy_setup_timeout_seconds`: the ADD of a pod waits for the policy agent's endpoint
//! status file (Calico 3.28+), in the node's default `/var/run/calico/endpoint-status`.
//! Mirrors k8s.go `CmdAddK8s` → wait.go `ForEndpointReadyWithTimeout`. The test itself
//! stands in for calico-node's policy agent (which is tested in calico-node's tests): it
//! writes the file once the pod's WorkloadEndpoint is in etcd, as the agent does once the
//! endpoint's rules are in.

use crate::common::*;
use calico_epstatus::{EndpointKey, EndpointStatus};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use testkit::{NetNs, eventually, require};

const NET: &str = "k8s-pod-network";

fn gated(timeout: i64) -> Value {
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["policy_setup_timeout_seconds"] = json!(timeout);
    list["plugins"][0]["log_level"] = json!("debug");
    list
}

/// The file appears while the ADD waits: the ADD returns at once after, well before the
/// timeout.
#[test]
fn the_add_returns_when_the_status_file_appears() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &gated(30)).unwrap();
    // calico-node makes the directory at start (Felix's EnsureStatusDir).
    let dir = c.node(0).run_dir().join("endpoint-status");
    calico_epstatus::ensure_dir(&dir).unwrap();
    let pod = NetNs::new("gated").unwrap();
    let args = pod_args("default", "gated");
    let wep =
        "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-gated-eth0";
    let started = Instant::now();
    let (result, written_at) = std::thread::scope(|s| {
        // The stand-in for the policy agent: waits for the endpoint, then reports it.
        let agent = s.spawn(|| {
            assert!(
                eventually(Duration::from_secs(20), || !c
                    .values(wep)
                    .unwrap()
                    .is_empty()),
                "the endpoint was never written"
            );
            let status = EndpointStatus {
                iface_name: "cali-standin".into(),
                ..Default::default()
            };
            let key = EndpointKey::new("k8s", "default/gated", "eth0");
            calico_epstatus::write(&dir, &key, &status).unwrap();
            started.elapsed()
        });
        let r = c.runtime(0).add(NET, &pod.path(), &args).unwrap();
        (r, agent.join().unwrap())
    });
    let took = started.elapsed();
    result.unwrap();
    assert!(took >= written_at, "{took:?} < {written_at:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert!(log.contains("policy is programmed"), "{log}");
    assert!(!log.contains("Unblocking pod creation"), "{log}");
    c.runtime(0).del(NET, &pod.path(), &args).unwrap().unwrap();
}

/// No agent reports the endpoint: the ADD succeeds after the timeout, with Calico's warning.
#[test]
fn the_add_goes_on_with_a_warning_after_the_timeout() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &gated(2)).unwrap();
    let pod = NetNs::new("late").unwrap();
    let args = pod_args("default", "late");
    let started = Instant::now();
    let r = c.runtime(0).add(NET, &pod.path(), &args).unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(addresses(&r).len(), 1, "{r}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert!(
        log.contains("Unblocking pod creation")
            && log.contains("timed out waiting for endpoint status file")
            && log.contains("/var/run/calico/endpoint-status/k8s default%2Flate eth0"),
        "{log}"
    );
    // The pod is wired all the same.
    assert!(sh(&pod, "ip -o addr show eth0").contains("10.244."));
    c.runtime(0).del(NET, &pod.path(), &args).unwrap().unwrap();
}

/// 0 (the default): no wait at all, the status directory not even looked at.
#[test]
fn a_zero_timeout_does_not_wait() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &gated(0)).unwrap();
    let pod = NetNs::new("nowait").unwrap();
    let args = pod_args("default", "nowait");
    let started = Instant::now();
    c.runtime(0).add(NET, &pod.path(), &args).unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert!(
        !log.contains("endpoint status") && !log.contains("policy gate"),
        "{log}"
    );
    c.runtime(0).del(NET, &pod.path(), &args).unwrap().unwrap();
}
