//! The plugin with the node agent (`calico-node run`) on the node: its etcd requests go
//! through the agent's connection, with the same results and records as its own
//! connection gives; the agent's etcd gone, calls fail as clearly as without it. (The
//! agent's own behaviour is tested in calico-node's tests.)

use crate::common::{addresses, cluster, conflist, pod_args};
use serde_json::json;
use std::time::Duration;
use testkit::{Agent, NetNs, eventually, require};

fn served(agent: &Agent) -> f64 {
    agent
        .metric(
            "calico_node_requests_total",
            &["service=\"etcd\"", "outcome=\"ok\""],
        )
        .unwrap()
}

#[test]
fn calls_through_the_agent_get_what_their_own_connection_gives() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    let mut list = conflist("1.0.0", json!({}));
    list["plugins"][0]["log_level"] = json!("debug");
    c.install(0, &list).unwrap();
    let rt = c.runtime(0);
    // Without the agent first, then with it: the same kind of result and records.
    let alone = NetNs::new("alone").unwrap();
    let r = rt
        .add(
            "k8s-pod-network",
            &alone.path(),
            &pod_args("default", "alone"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&r).len(), 1, "{r}");
    let log = std::fs::read_to_string(c.log_of(0)).unwrap();
    assert_eq!(
        log.matches("no calico-node agent").count(),
        1,
        "said once: {log}"
    );
    let agent = Agent::on_node(&c, 0).unwrap();
    let pods: Vec<NetNs> = (0..3)
        .map(|i| NetNs::new(&format!("agent-{i}")).unwrap())
        .collect();
    for (i, pod) in pods.iter().enumerate() {
        let opts = pod_args("default", &format!("p{i}"));
        let r = rt
            .add("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
        assert!(addresses(&r)[0].starts_with("10.244."), "{r}");
        rt.check("k8s-pod-network", &pod.path(), &opts)
            .unwrap()
            .unwrap();
    }
    let after_adds = served(&agent);
    assert!(after_adds >= 3.0, "every ADD went through the agent");
    let weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/default/")
        .unwrap();
    assert_eq!(weps.len(), 4);
    for (i, pod) in pods.iter().enumerate() {
        rt.del(
            "k8s-pod-network",
            &pod.path(),
            &pod_args("default", &format!("p{i}")),
        )
        .unwrap()
        .unwrap();
    }
    rt.del(
        "k8s-pod-network",
        &alone.path(),
        &pod_args("default", "alone"),
    )
    .unwrap()
    .unwrap();
    assert!(served(&agent) > after_adds);
    assert!(
        c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")
            .unwrap()
            .is_empty()
    );
    // The pods' interfaces, handed to the agent, are gone.
    assert!(eventually(Duration::from_secs(10), || c
        .node(0)
        .sh("ip -o link show | grep cali || true")
        .unwrap()
        .trim()
        .is_empty()));
}

#[test]
fn with_etcd_gone_calls_through_the_agent_fail_clearly() {
    require!(root; "etcd", "go", "ip");
    let c = cluster(1);
    c.install(0, &conflist("1.0.0", json!({}))).unwrap();
    let rt = c.runtime(0);
    let _agent = Agent::on_node(&c, 0).unwrap();
    let pod = NetNs::new("agent-gone").unwrap();
    rt.add("k8s-pod-network", &pod.path(), &pod_args("default", "g"))
        .unwrap()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.etcd.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let e = rt
        .del("k8s-pod-network", &pod.path(), &pod_args("default", "g"))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, Some(11), "{e}");
    assert!(e.msg.contains("10.10.0.174:2379"), "{e}");
}
