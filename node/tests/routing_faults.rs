//! Route distribution under faults (issue 13 §4 "Faults", §3 IPIP), on three simulated nodes
//! running `calico-node startup` + `calico-node run` over the simulated underlay, the seed's
//! mutual-TLS etcd, pods added through libcni and real traffic, as in `routing.rs`.
//!
//! The behaviour chosen for each fault is BIRD's under Calico (graceful restart on, restart
//! time 120 s unless `nodeMeshMaxRestartTime`/`maxRestartTime` says otherwise; hold 240 s):
//! - A peer killed (SIGKILL; its kernel closes the socket, so no NOTIFICATION is sent): the
//!   others keep its routes as stale for the restart time it advertised (RFC 4724 helper,
//!   BIRD's `bgp_handle_graceful_restart`), then drop them — or drop them at the peer's
//!   End-of-RIB when it comes back without them. With a restart time of 0
//!   (`nodeMeshMaxRestartTime: 0s`, which confd renders as `graceful restart time 0`) the
//!   routes leave at once when the socket closes: the issue's "at once on a closed socket".
//!   Either way they leave within the hold time (restart time ≤ hold time). A peer that goes
//!   silent with its socket open loses its routes when the hold timer expires (NOTIFICATION
//!   4/0; not kept as stale, as BIRD without RFC 8538).
//! - Our agent restarted (SIGTERM or SIGKILL): peers keep its routes (a SIGTERM closes the
//!   sessions without a Cease, as calico-node's BIRD is in effect killed when its container
//!   stops), the node keeps its learned routes (proto 78), traffic continues; routes that
//!   went away meanwhile are swept after End-of-RIB, locally and at the peers.
//! - calico-bgpd (the routing process, BIRD's place) killed: calico-node starts it again, as a
//!   restarting speaker; routes, blackholes and traffic stay; it never outlives calico-node.
//! - Routes removed by hand come back at the next resync, as BIRD's kernel scan puts back
//!   what it exported.
//! - etcd unreachable: BGP sessions and kernel routes stay (BIRD keeps its last config);
//!   changes flow again when etcd is back.
//! - A malformed message: NOTIFICATION with RFC 4271's code/subcode, the session resets,
//!   the process and its other sessions carry on.
//! - IPIP: the kernel here has no `ipip` module, so the route-shape tests give each node a
//!   device named `tunl0` (a veth end: the kernel accepts `via <node> dev tunl0 onlink` on it;
//!   the real `tunl0` where the module exists) and check the routes, not IPIP traffic.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::bgplab::kernel::{KernelRoute, kernel_routes};
use testkit::{Agent, CallOpts, Cluster, NetNs, eventually, require};

const NET: &str = "k8s-pod-network";
const WAIT: Duration = Duration::from_secs(30);
const POOL: &str = "10.244.0.0/16";

// ---- cluster, pods and routes (as in routing.rs) ----

/// The seed chain (calico + portmap), IPv4 only.
fn seed() -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    list
}

fn pod_opts(id: &str) -> CallOpts {
    CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"
        )),
        container_id: Some(id.to_string()),
        ..CallOpts::default()
    }
}

/// `calico-node startup` on node `i` (named `node-<i+1>`) with `vars`.
fn startup(c: &Cluster, i: usize, vars: &[(&str, &str)]) {
    let bin = testkit::bins::built("calico-node").unwrap();
    let out = c
        .node(i)
        .command(&bin)
        .unwrap()
        .arg("startup")
        .env("NODENAME", format!("node-{}", i + 1))
        .env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
        .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
        .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
        .env("IP", "autodetect")
        .env("IP_AUTODETECTION_METHOD", "interface=eth0")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "startup on node-{}: {}",
        i + 1,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `calico-node run` on node `i` with the test timers.
fn start_agent(c: &Cluster, i: usize) -> Agent {
    let name = format!("node-{}", i + 1);
    let env = [
        ("CALICO_BGP_CONNECT_RETRY_SECONDS", "1"),
        ("NODENAME", name.as_str()),
    ];
    Agent::on_node_with(c, i, &env).unwrap()
}

/// A cluster of `n` nodes started up with `vars`; `before_agents` runs before the agents
/// start (BGPConfiguration, devices); then each runs the agent.
fn cluster(
    n: usize,
    vars: &[(&str, &str)],
    before_agents: impl FnOnce(&Cluster),
) -> (Cluster, Vec<Agent>) {
    let c = Cluster::start_bare(n, &[]).unwrap();
    for i in 0..n {
        startup(&c, i, vars);
    }
    before_agents(&c);
    let agents = (0..n).map(|i| start_agent(&c, i)).collect();
    for i in 0..n {
        c.install(i, &seed()).unwrap();
    }
    (c, agents)
}

/// The `default` BGPConfiguration with `spec`.
fn bgp_configuration(c: &Cluster, spec: Value) {
    let v = json!({"kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3",
                   "metadata": {"name": "default"}, "spec": spec});
    c.etcd
        .put(
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            &v.to_string(),
        )
        .unwrap();
}

struct Pod {
    ns: NetNs,
    ip: Ipv4Addr,
    block: Ipv4Net,
}

fn add_pod(c: &Cluster, node: usize, id: &str) -> Pod {
    let ns = NetNs::new(id).unwrap();
    let result = c
        .runtime(node)
        .add(NET, &ns.path(), &pod_opts(id))
        .unwrap()
        .unwrap();
    let ip = match testkit::result_ips(&result).first() {
        Some(IpAddr::V4(ip)) => *ip,
        other => panic!("no IPv4 address in {result}: {other:?}"),
    };
    let block = Ipv4Net::new(ip, 26).unwrap().trunc();
    Pod { ns, ip, block }
}

/// An affinity of `block` to `node` written as Calico's IPAM confirms it (what route
/// distribution reads), without a pod: a block to announce or release at will.
fn affine(c: &Cluster, node: &str, block: Ipv4Net) {
    c.etcd
        .put(
            &affinity_key(node, block),
            r#"{"state":"confirmed","deleted":false}"#,
        )
        .unwrap();
}

fn release(c: &Cluster, node: &str, block: Ipv4Net) {
    c.etcd.delete_prefix(&affinity_key(node, block)).unwrap();
}

fn affinity_key(node: &str, block: Ipv4Net) -> String {
    format!(
        "/calico/ipam/v2/host/{node}/ipv4/block/{}-{}",
        block.addr(),
        block.prefix_len()
    )
}

fn routes(c: &Cluster, node: usize) -> Vec<KernelRoute> {
    kernel_routes(c.node(node).netns().name()).unwrap()
}

fn has_route(c: &Cluster, node: usize, block: Ipv4Net, gw: Ipv4Addr) -> bool {
    routes(c, node)
        .iter()
        .any(|r| r.dst == block && r.gateways.contains(&gw) && r.protocol == "78")
}

fn routed(c: &Cluster, node: usize, block: Ipv4Net) -> bool {
    routes(c, node).iter().any(|r| r.dst == block)
}

fn has_blackhole(c: &Cluster, node: usize, block: Ipv4Net) -> bool {
    routes(c, node)
        .iter()
        .any(|r| r.dst == block && r.kind == "blackhole" && r.protocol == "79")
}

/// Waits until node `node`'s kernel routes `block` via node `via` with proto 78.
fn wait_route(c: &Cluster, agents: &[Agent], node: usize, block: Ipv4Net, via: usize) {
    let gw = c.node(via).underlay_ip();
    let ok = eventually(WAIT, || has_route(c, node, block, gw));
    assert!(
        ok,
        "node-{}: no route to {block} via {gw} proto 78: {:?}\nlog: {}",
        node + 1,
        routes(c, node),
        agents[node].log()
    );
}

fn wait_no_route(c: &Cluster, agents: &[Agent], node: usize, block: Ipv4Net, within: Duration) {
    let ok = eventually(within, || !routed(c, node, block));
    assert!(
        ok,
        "node-{}: {block} still routed after {within:?}: {:?}\nlog: {}",
        node + 1,
        routes(c, node),
        agents[node].log()
    );
}

fn established(a: &Agent) -> f64 {
    a.metric("calico_node_bgp_peers", &["state=\"Established\""])
        .unwrap_or(-1.0)
}

fn wait_established(a: &Agent, n: f64) {
    let ok = eventually(WAIT, || established(a) == n);
    assert!(
        ok,
        "{n} sessions not Established: {}\nlog: {}",
        a.metrics().unwrap_or_default(),
        a.log()
    );
}

fn pings(from: &Pod, to: &Pod) -> bool {
    eventually(Duration::from_secs(10), || {
        testkit::bgplab::ping(&from.ns, from.ip, to.ip).unwrap_or(false)
    })
}

/// A mesh of three with a pod on each, every block routed everywhere.
fn mesh_with_pods(c: &Cluster, agents: &[Agent], tag: &str) -> Vec<Pod> {
    let pods: Vec<Pod> = (0..3)
        .map(|i| add_pod(c, i, &format!("{tag}{i}")))
        .collect();
    for (i, p) in pods.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            wait_route(c, agents, j, p.block, i);
        }
    }
    for a in agents {
        wait_established(a, 2.0);
    }
    pods
}

/// `calico-node health --live` on node `i`: the health detail.
fn health_detail(c: &Cluster, i: usize) -> String {
    let bin = testkit::bins::built("calico-node").unwrap();
    let out = c
        .node(i)
        .command(&bin)
        .unwrap()
        .args(["health", "--live"])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ready(c: &Cluster, i: usize) -> bool {
    let bin = testkit::bins::built("calico-node").unwrap();
    c.node(i)
        .command(&bin)
        .unwrap()
        .args(["health", "--ready"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

// ---- 1. a peer killed ----

/// Mirrors BIRD's GR helper (proto/bgp/bgp.c `bgp_handle_graceful_restart`, timer from the
/// peer's restart time): node-3's agent is SIGKILLed, its sockets close without a
/// NOTIFICATION; the others keep its block as stale for the restart time node-3 advertised
/// (`nodeMeshMaxRestartTime: 5s`), then drop it; node-3 coming back announces it again.
#[test]
fn a_killed_peers_routes_stay_for_its_restart_time_then_leave() {
    require!(root; "etcd", "go", "ip", "busybox");
    let restart = Duration::from_secs(5);
    let (c, mut agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |c| {
        bgp_configuration(c, json!({"nodeMeshMaxRestartTime": "5s"}))
    });
    let pods = mesh_with_pods(&c, &agents, "kill");
    let killed_at = Instant::now();
    agents[2].kill().unwrap();
    // The others notice at once (the kernel closed node-3's sockets)...
    for a in &agents[..2] {
        let ok = eventually(Duration::from_secs(3), || established(a) == 1.0);
        assert!(ok, "session to the killed node still up: {}", a.log());
    }
    // ...and keep node-3's block while its restart time runs: traffic to node-3's pod
    // still has its route.
    let noticed = killed_at.elapsed();
    assert!(noticed < restart, "noticed only after {noticed:?}");
    for j in 0..2 {
        assert!(
            has_route(&c, j, pods[2].block, c.node(2).underlay_ip()),
            "node-{}: the killed peer's route left before its restart time ({:?} after the \
             kill): {:?}",
            j + 1,
            killed_at.elapsed(),
            routes(&c, j)
        );
    }
    // Then they go, at the restart time.
    for j in 0..2 {
        wait_no_route(
            &c,
            &agents,
            j,
            pods[2].block,
            restart + Duration::from_secs(5),
        );
    }
    let gone = killed_at.elapsed();
    assert!(
        gone >= restart - Duration::from_millis(500),
        "stale routes dropped after {gone:?}, before the restart time {restart:?}"
    );
    assert!(
        agents[0].log().contains("restart time over"),
        "{}",
        agents[0].log()
    );

    eprintln!("killed peer: sessions down after {noticed:?}, stale routes gone after {gone:?}");
    // node-3 back: its block returns and traffic flows.
    agents[2] = start_agent(&c, 2);
    for j in 0..2 {
        wait_route(&c, &agents, j, pods[2].block, 2);
    }
    assert!(pings(&pods[0], &pods[2]));
}

/// With a restart time of 0 (`nodeMeshMaxRestartTime: 0s`) a killed peer's routes leave as
/// soon as its socket closes: the issue's "at once on a closed socket".
#[test]
fn with_restart_time_zero_a_killed_peers_routes_leave_at_once() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, mut agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |c| {
        bgp_configuration(c, json!({"nodeMeshMaxRestartTime": "0s"}))
    });
    let pods = mesh_with_pods(&c, &agents, "kill0");
    let killed_at = Instant::now();
    agents[2].kill().unwrap();
    for j in 0..2 {
        wait_no_route(&c, &agents, j, pods[2].block, Duration::from_secs(3));
    }
    let gone = killed_at.elapsed();
    assert!(gone < Duration::from_secs(3), "{gone:?}");
    eprintln!("killed peer, restart time 0: routes gone after {gone:?}");
    // The other routes are untouched.
    wait_route(&c, &agents, 0, pods[1].block, 1);
    assert!(pings(&pods[0], &pods[1]));
}

// ---- 2. our agent restarted ----

/// A busybox `ping -i 0.2` running until it is interrupted; counts the replies lost.
struct PingLoop {
    child: std::process::Child,
}

impl PingLoop {
    fn start(from: &Pod, to: &Pod) -> PingLoop {
        let child = from
            .ns
            .command("busybox")
            .unwrap()
            .args([
                "ping",
                "-i",
                "0.2",
                "-I",
                &from.ip.to_string(),
                &to.ip.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        PingLoop { child }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Interrupts the run (SIGINT: ping prints its statistics); (sent, lost, output).
    fn stop(mut self) -> (u32, u32, String) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT {pid}");
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.child.wait();
        let (sent, received) = out
            .lines()
            .find_map(|l| {
                let (sent, rest) = l.split_once(" packets transmitted, ")?;
                let sent = sent.trim().parse::<u32>().ok()?;
                let received = rest.split_whitespace().next()?.parse::<u32>().ok()?;
                Some((sent, received))
            })
            .unwrap_or_else(|| panic!("no ping statistics in {out}"));
        (sent, sent.saturating_sub(received), out)
    }
}

impl Drop for PingLoop {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Mirrors Calico's BIRD with `graceful restart` in its kernel and BGP protocols (bird.cfg
/// template, `bird -R`): node-1's agent stops and starts again; the other nodes keep its
/// routes (stale), node-1 keeps its learned routes, a ping across nodes through the restart
/// loses at most a second; what went away meanwhile is swept after End-of-RIB.
fn agent_restart_keeps_routes_and_traffic(kill: bool) {
    let tag = if kill { "rsk" } else { "rst" };
    let (c, mut agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    let pods = mesh_with_pods(&c, &agents, tag);
    // Two blocks without pods: one of node-1's and one of node-3's, released while node-1's
    // agent is down.
    let ours: Ipv4Net = "10.244.250.0/26".parse().unwrap();
    let theirs: Ipv4Net = "10.244.251.0/26".parse().unwrap();
    assert!(pods.iter().all(|p| p.block != ours && p.block != theirs));
    affine(&c, "node-1", ours);
    affine(&c, "node-3", theirs);
    for j in 1..3 {
        wait_route(&c, &agents, j, ours, 0);
    }
    wait_route(&c, &agents, 0, theirs, 2);
    assert!(pings(&pods[1], &pods[0]));

    // Pings 0.2 s apart from node-2's pod to node-1's, from before the stop until node-1
    // has synced again.
    let mut ping = PingLoop::start(&pods[1], &pods[0]);
    let bgpd = agents[0].bgpd_pid();
    assert!(bgpd.is_some(), "no calico-bgpd under node-1's calico-node");
    if kill {
        agents[0].kill().unwrap();
    } else {
        agents[0].stop().unwrap();
    }
    // Its routing process goes with it: stopped by it, or ending when its pipe closes.
    let ok = eventually(Duration::from_secs(5), || {
        bgpd.is_some_and(testkit::agent::process_gone)
    });
    assert!(ok, "calico-bgpd outlived calico-node ({tag})");
    // The others saw the sessions go...
    for a in &agents[1..] {
        let ok = eventually(Duration::from_secs(5), || established(a) == 1.0);
        assert!(ok, "session to node-1 still up: {}", a.log());
    }
    // ...and the routes stay on both sides.
    for j in 1..3 {
        assert!(
            has_route(&c, j, pods[0].block, c.node(0).underlay_ip()),
            "node-{} dropped node-1's block: {:?}",
            j + 1,
            routes(&c, j)
        );
    }
    for (j, p) in pods.iter().enumerate().skip(1) {
        assert!(
            has_route(&c, 0, p.block, c.node(j).underlay_ip()),
            "node-1 lost its learned route to node-{}: {:?}",
            j + 1,
            routes(&c, 0)
        );
    }
    // While node-1 is down both blocks are released; node-3 withdraws its own from node-2.
    release(&c, "node-1", ours);
    release(&c, "node-3", theirs);
    wait_no_route(&c, &agents, 1, theirs, WAIT);
    assert!(
        has_route(&c, 0, theirs, c.node(2).underlay_ip()),
        "node-1's kernel changed while its agent was down: {:?}",
        routes(&c, 0)
    );
    assert!(has_route(&c, 1, ours, c.node(0).underlay_ip()));

    agents[0] = start_agent(&c, 0);
    wait_established(&agents[0], 2.0);
    // After End-of-RIB: node-1 sweeps the route that no longer exists and its blackhole,
    // the others drop node-1's released block; the live routes stay.
    wait_no_route(&c, &agents, 0, theirs, WAIT);
    for j in 1..3 {
        wait_no_route(&c, &agents, j, ours, WAIT);
    }
    let ok = eventually(WAIT, || !has_blackhole(&c, 0, ours));
    assert!(
        ok,
        "node-1 kept the blackhole of {ours}: {:?}",
        routes(&c, 0)
    );
    for j in 1..3 {
        assert!(has_route(&c, 0, pods[j].block, c.node(j).underlay_ip()));
        assert!(has_route(&c, j, pods[0].block, c.node(0).underlay_ip()));
    }
    assert!(ping.running(), "the ping loop ended early");
    let (sent, lost, out) = ping.stop();
    eprintln!("agent restart (kill: {kill}): {lost} of {sent} pings lost");
    assert!(
        lost <= 5,
        "{lost} of {sent} pings (0.2 s apart) lost through the restart:\n{out}"
    );
    // The learned routes were left alone until End-of-RIB: the first convergence that
    // touched them comes after "BGP synced".
    let log = agents[0].log();
    let synced = log
        .find("BGP synced")
        .unwrap_or_else(|| panic!("never synced: {log}"));
    let first_bgp_change = log
        .find("bgp routes: +")
        .unwrap_or_else(|| panic!("the sweep was not logged: {log}"));
    assert!(
        first_bgp_change > synced,
        "learned routes changed before End-of-RIB:\n{log}"
    );
}

#[test]
fn an_agent_stopped_with_sigterm_keeps_routes_and_traffic_through_its_restart() {
    require!(root; "etcd", "go", "ip", "busybox");
    agent_restart_keeps_routes_and_traffic(false);
}

#[test]
fn an_agent_killed_with_sigkill_keeps_routes_and_traffic_through_its_restart() {
    require!(root; "etcd", "go", "ip", "busybox");
    agent_restart_keeps_routes_and_traffic(true);
}

/// calico-bgpd (the routing process calico-node runs, as Calico's BIRD beside confd) killed
/// on node-1: the kernel keeps its learned routes and blackholes, the peers keep node-1's
/// routes (graceful restart), calico-node starts a new calico-bgpd, which comes back as a
/// restarting speaker and re-establishes both sessions; traffic continues throughout.
#[test]
fn a_killed_calico_bgpd_is_started_again_and_routes_and_traffic_stay() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    let pods = mesh_with_pods(&c, &agents, "bgk");
    assert!(pings(&pods[1], &pods[0]));
    let old = agents[0]
        .bgpd_pid()
        .expect("no calico-bgpd under node-1's calico-node");
    let mut ping = PingLoop::start(&pods[1], &pods[0]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(old).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let ok = eventually(Duration::from_secs(10), || {
        agents[0].bgpd_pid().is_some_and(|p| p != old)
    });
    assert!(ok, "calico-bgpd not started again: {}", agents[0].log());
    wait_established(&agents[0], 2.0);
    for (j, p) in pods.iter().enumerate() {
        for i in (0..3).filter(|i| *i != j) {
            assert!(
                has_route(&c, i, p.block, c.node(j).underlay_ip()),
                "node-{} lost node-{}'s block: {:?}",
                i + 1,
                j + 1,
                routes(&c, i)
            );
        }
    }
    assert!(has_blackhole(&c, 0, pods[0].block), "{:?}", routes(&c, 0));
    assert!(ping.running(), "the ping loop ended early");
    let (sent, lost, out) = ping.stop();
    assert!(
        lost <= 5,
        "{lost} of {sent} pings (0.2 s apart) lost through calico-bgpd's restart:\n{out}"
    );
    let log = agents[0].log();
    assert!(log.contains("calico-bgpd stopped"), "{log}");
}

/// A learned route and a blackhole removed by hand come back without any change in the
/// datastore or from the peers: calico-bgpd hands its state to its routes thread again every
/// 10 s, which converges again on a state older than 5 s (BIRD's kernel protocol scans the
/// table every `scan time`, and puts back what it exported).
#[test]
fn routes_removed_by_hand_come_back() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    let pods = mesh_with_pods(&c, &agents, "hnd");
    c.node(0)
        .sh(&format!("ip route del {} proto 78", pods[1].block))
        .unwrap();
    c.node(0)
        .sh(&format!(
            "ip route del blackhole {} proto 79",
            pods[0].block
        ))
        .unwrap();
    assert!(!has_route(&c, 0, pods[1].block, c.node(1).underlay_ip()));
    let ok = eventually(WAIT, || {
        has_route(&c, 0, pods[1].block, c.node(1).underlay_ip())
            && has_blackhole(&c, 0, pods[0].block)
    });
    assert!(ok, "not put back: {:?}\n{}", routes(&c, 0), agents[0].log());
    assert!(pings(&pods[0], &pods[1]));
}

// ---- 3. etcd unreachable ----

/// Sets a namespace's link down for the guard's life (etcd unreachable).
struct LinkDown<'a> {
    ns: &'a NetNs,
    up: bool,
}

impl<'a> LinkDown<'a> {
    fn new(ns: &'a NetNs) -> Self {
        ns.sh("ip link set eth0 down").unwrap();
        LinkDown { ns, up: false }
    }

    fn restore(&mut self) {
        if !self.up {
            self.ns.sh("ip link set eth0 up").unwrap();
            self.up = true;
        }
    }
}

impl Drop for LinkDown<'_> {
    fn drop(&mut self) {
        if !self.up {
            let _ = self.ns.sh("ip link set eth0 up");
        }
    }
}

/// BIRD keeps its last configuration while confd cannot reach the datastore: etcd cut off
/// (its namespace's link down), every agent notices (not ready), yet sessions and routes
/// stay and traffic flows; once etcd is back a new block reaches the others.
#[test]
fn with_etcd_unreachable_sessions_and_routes_stay() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    let pods = mesh_with_pods(&c, &agents, "etcd");
    let mut cut = LinkDown::new(&c.etcd_ns);
    for i in 0..3 {
        let ok = eventually(Duration::from_secs(40), || !ready(&c, i));
        assert!(
            ok,
            "node-{} still ready with etcd cut off: {}",
            i + 1,
            health_detail(&c, i)
        );
    }
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(established(a), 2.0, "node-{}: {}", i + 1, a.log());
        for (j, p) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                has_route(&c, i, p.block, c.node(j).underlay_ip()),
                "node-{} lost {}: {:?}",
                i + 1,
                p.block,
                routes(&c, i)
            );
        }
    }
    assert!(pings(&pods[0], &pods[2]));

    cut.restore();
    for i in 0..3 {
        let ok = eventually(Duration::from_secs(40), || ready(&c, i));
        assert!(
            ok,
            "node-{} not ready again: {}",
            i + 1,
            health_detail(&c, i)
        );
    }
    let more: Ipv4Net = "10.244.252.0/26".parse().unwrap();
    affine(&c, "node-2", more);
    for j in [0, 2] {
        wait_no_route_then_route(&c, &agents, j, more, 1);
    }
}

/// The route to `block` via node `via` appears on `node` (bounded by the syncer's back-off
/// after an outage as well as the propagation).
fn wait_no_route_then_route(
    c: &Cluster,
    agents: &[Agent],
    node: usize,
    block: Ipv4Net,
    via: usize,
) {
    let gw = c.node(via).underlay_ip();
    let ok = eventually(Duration::from_secs(60), || has_route(c, node, block, gw));
    assert!(
        ok,
        "node-{}: the new block {block} never arrived: {:?}\nlog: {}",
        node + 1,
        routes(c, node),
        agents[node].log()
    );
}

// ---- 4. a malformed BGP message ----

const MARKER: [u8; 16] = [0xff; 16];
const RAW_PEER: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 50);

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = MARKER.to_vec();
    m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN: AS 64512, `hold` seconds, our id, IPv4 unicast and 4-octet AS capabilities.
fn open(hold: u16) -> Vec<u8> {
    let caps: Vec<u8> = [
        vec![1, 4, 0, 1, 0, 1],
        [vec![65, 4], 64512u32.to_be_bytes().to_vec()].concat(),
    ]
    .concat();
    let mut body = vec![4];
    body.extend_from_slice(&64512u16.to_be_bytes());
    body.extend_from_slice(&hold.to_be_bytes());
    body.extend_from_slice(&RAW_PEER.octets());
    body.push(u8::try_from(caps.len() + 2).unwrap());
    body.push(2);
    body.push(u8::try_from(caps.len()).unwrap());
    body.extend_from_slice(&caps);
    message(1, &body)
}

/// Reads one message: (type, body). `None` when the agent closed the connection.
fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 19];
    s.read_exact(&mut header).ok()?;
    assert_eq!(header[..16], MARKER, "bad marker from the agent");
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    let mut body = vec![0u8; len - 19];
    s.read_exact(&mut body).ok()?;
    Some((header[18], body))
}

/// A session with the agent on node-1 from the raw peer's namespace, up to Established.
fn raw_session(ns: &NetNs, to: Ipv4Addr) -> TcpStream {
    raw_session_with_hold(ns, to, 90)
}

fn raw_session_with_hold(ns: &NetNs, to: Ipv4Addr, hold: u16) -> TcpStream {
    let mut s = ns
        .within(move || TcpStream::connect_timeout(&(to, 179).into(), Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&open(hold)).unwrap();
    let (kind, body) = read_message(&mut s).expect("the agent closed instead of an OPEN");
    assert_eq!(
        kind, 1,
        "expected the agent's OPEN, got type {kind}: {body:?}"
    );
    s.write_all(&message(4, &[])).unwrap();
    loop {
        let (kind, body) = read_message(&mut s).expect("closed before its KEEPALIVE");
        assert_ne!(kind, 3, "NOTIFICATION during the handshake: {body:?}");
        if kind == 4 {
            return s;
        }
    }
}

/// A BGPPeer of node-1 at [`RAW_PEER`] (iBGP).
fn raw_peer_of_node1(c: &Cluster) {
    let peer = json!({"kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
                      "metadata": {"name": "raw"},
                      "spec": {"node": "node-1", "peerIP": RAW_PEER.to_string(),
                               "asNumber": 64512}});
    c.etcd
        .put(
            "/calico/resources/v3/projectcalico.org/bgppeers/raw",
            &peer.to_string(),
        )
        .unwrap();
}

/// Sends `bad` and returns the NOTIFICATION's (code, subcode); asserts the agent then
/// closes the connection.
fn notification_for(s: &mut TcpStream, bad: &[u8]) -> (u8, u8) {
    s.write_all(bad).unwrap();
    loop {
        match read_message(s) {
            Some((3, body)) => {
                let n = (body[0], body[1]);
                let mut rest = Vec::new();
                let closed = s.read_to_end(&mut rest).is_ok();
                assert!(
                    closed,
                    "the agent kept the connection after its NOTIFICATION"
                );
                return n;
            }
            Some(_) => continue,
            None => panic!("connection closed without a NOTIFICATION"),
        }
    }
}

/// A broken message on an Established session: the agent answers with RFC 4271's
/// NOTIFICATION (bad marker → 1/1 Connection Not Synchronized; an UPDATE whose Total Path
/// Attribute Length runs past the message → 3/1 Malformed Attribute List, a session reset
/// under RFC 7606 §4 too, as the NLRI cannot be located), resets the session (a new one
/// comes up), keeps running, and its mesh sessions stay Established.
#[test]
fn a_malformed_message_gets_a_notification_and_resets_only_its_session() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    let pods = mesh_with_pods(&c, &agents, "bad");
    // The raw peer is configured once the mesh has synced: a peer that never sends its
    // End-of-RIB would hold back node-1's first kernel programming for the deferral time,
    // as BIRD's `-R` recovery does (projectcalico/node#355).
    raw_peer_of_node1(&c);
    let raw = c.underlay.attach("bgpraw", RAW_PEER).unwrap();
    let node1 = c.node(0).underlay_ip();

    // Bad marker.
    let mut s = raw_session(&raw, node1);
    wait_established(&agents[0], 3.0);
    let mut bad = message(4, &[]);
    bad[3] = 0;
    assert_eq!(notification_for(&mut s, &bad), (1, 1));

    // The session reset and comes up again; an UPDATE with a Total Path Attribute Length
    // past the end of the message.
    let mut s = raw_session(&raw, node1);
    let mut body = vec![0, 0];
    body.extend_from_slice(&200u16.to_be_bytes());
    body.extend_from_slice(&[0x40, 1, 1, 0]);
    assert_eq!(notification_for(&mut s, &message(2, &body)), (3, 1));

    // The process runs on, its mesh sessions never dropped, traffic flows.
    let pid = agents[0].pid();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent died: {}",
        agents[0].log()
    );
    let ok = eventually(WAIT, || established(&agents[0]) == 2.0);
    assert!(ok, "{}", agents[0].log());
    for a in &agents[1..] {
        assert_eq!(established(a), 2.0, "{}", a.log());
    }
    assert!(agents[0].log().contains("malformed"), "{}", agents[0].log());
    assert!(pings(&pods[1], &pods[0]));
    // And the peer may come back. An UPDATE whose ORIGIN is out of range is an attribute
    // error RFC 7606 §7.1 treats as a withdrawal: no NOTIFICATION, the session stays.
    let mut s = raw_session(&raw, node1);
    wait_established(&agents[0], 3.0);
    let mut body = vec![0, 0];
    let attrs: Vec<u8> = [
        vec![0x40, 1, 1, 7],
        vec![0x40, 2, 0],
        [vec![0x40, 3, 4], RAW_PEER.octets().to_vec()].concat(),
        vec![0x40, 5, 4, 0, 0, 0, 100],
    ]
    .concat();
    body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[24, 10, 99, 0]);
    s.write_all(&message(2, &body)).unwrap();
    s.write_all(&message(4, &[])).unwrap();
    let ok = eventually(WAIT, || agents[0].log().contains("treated as withdraw"));
    assert!(ok, "{}", agents[0].log());
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => panic!("the agent closed the session over a treat-as-withdraw error"),
        Ok(n) => assert!(
            !(n >= 19 && buf[18] == 3),
            "NOTIFICATION over a treat-as-withdraw error: {:?}",
            &buf[..n]
        ),
        Err(_) => {}
    }
    assert_eq!(established(&agents[0]), 3.0, "{}", agents[0].log());
    assert!(!routed(&c, 0, "10.99.0.0/24".parse().unwrap()));
}

// ---- 5. IPIP route shape ----

/// Gives node `i` a device named `tunl0`: the ipip module's own where it exists, else a veth
/// end of that name (enough for the kernel to take `via <node> dev tunl0 onlink`).
fn tunl0(c: &Cluster, i: usize) {
    let node = c.node(i);
    let has = node
        .sh("ip -o link show tunl0 2>/dev/null || true")
        .unwrap();
    if has.trim().is_empty() {
        node.sh("ip link add tunl0 type veth peer name tunl0-peer && ip link set tunl0-peer up")
            .unwrap();
    }
    node.sh("ip link set tunl0 up").unwrap();
}

fn route_line(c: &Cluster, i: usize, block: Ipv4Net) -> String {
    c.node(i)
        .sh(&format!("ip route show {block}"))
        .unwrap()
        .trim()
        .to_string()
}

fn ipip_cluster(mode: &str, tag: &str) -> (Cluster, Vec<Agent>, Vec<Pod>) {
    let (c, agents) = cluster(
        3,
        &[
            ("CALICO_IPV4POOL_CIDR", POOL),
            ("CALICO_IPV4POOL_IPIP", mode),
        ],
        |c| (0..3).for_each(|i| tunl0(c, i)),
    );
    let pods = mesh_with_pods(&c, &agents, tag);
    (c, agents, pods)
}

/// Mirrors confd's bird_ipam.cfg `calico_kernel_programming` for an `ipipMode: Always`
/// pool: learned blocks go `via <node> dev tunl0 onlink`; and the agent says IPIP is
/// unavailable on a kernel without the module (health detail and log).
#[test]
fn ipip_always_routes_blocks_via_tunl0_onlink() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents, pods) = ipip_cluster("Always", "ipa");
    for (i, p) in pods.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let line = route_line(&c, j, p.block);
            let want = format!(
                "{} via {} dev tunl0 proto 78 onlink",
                p.block,
                c.node(i).underlay_ip()
            );
            assert_eq!(line, want, "node-{}", j + 1);
        }
    }
    let ipip = calico_dataplane::vxlan::ipip_support();
    eprintln!("ipip probe: available {}, {}", ipip.available, ipip.reason);
    if !ipip.available {
        for (i, a) in agents.iter().enumerate() {
            let detail = health_detail(&c, i);
            assert!(
                detail.contains("IPIP unavailable") && detail.contains(&ipip.reason),
                "node-{}: health detail says nothing of IPIP: {detail}",
                i + 1
            );
            assert!(a.log().contains("IPIP unavailable"), "{}", a.log());
        }
    }
}

/// `CrossSubnet` with every node on one subnet: plain routes via the node, no tunl0; and
/// nothing said about IPIP being needed elsewhere than in the status line.
#[test]
fn ipip_cross_subnet_on_one_subnet_routes_blocks_directly() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, _agents, pods) = ipip_cluster("CrossSubnet", "ipx");
    for (i, p) in pods.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let line = route_line(&c, j, p.block);
            let want = format!(
                "{} via {} dev eth0 proto 78",
                p.block,
                c.node(i).underlay_ip()
            );
            assert_eq!(line, want, "node-{}", j + 1);
        }
    }
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(pings(a, b), "node-{} → node-{}", i + 1, j + 1);
        }
    }
}

/// A peer that goes silent without closing its socket (a host cut off): its routes leave
/// when the hold time expires, with a NOTIFICATION Hold Timer Expired (4/0), and are not
/// kept as stale (RFC 4724 covers TCP loss, not an expired hold timer; BIRD does the same).
/// The raw peer proposes a 3 s hold time (Calico sets none: BIRD's 240 s would bound this
/// test by minutes).
#[test]
fn a_silent_peers_routes_leave_when_its_hold_time_expires() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", POOL)], |_| {});
    mesh_with_pods(&c, &agents, "hold");
    raw_peer_of_node1(&c);
    let raw = c.underlay.attach("bgphold", RAW_PEER).unwrap();
    let mut s = raw_session_with_hold(&raw, c.node(0).underlay_ip(), 3);
    // 10.99.0.0/24 via the raw peer, then End-of-RIB.
    let attrs: Vec<u8> = [
        vec![0x40, 1, 1, 0],
        vec![0x40, 2, 0],
        [vec![0x40, 3, 4], RAW_PEER.octets().to_vec()].concat(),
        vec![0x40, 5, 4, 0, 0, 0, 100],
    ]
    .concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[24, 10, 99, 0]);
    s.write_all(&message(2, &body)).unwrap();
    s.write_all(&message(2, &[0, 0, 0, 0])).unwrap();
    let learned: Ipv4Net = "10.99.0.0/24".parse().unwrap();
    let ok = eventually(WAIT, || has_route(&c, 0, learned, RAW_PEER));
    assert!(ok, "node-1 never routed {learned}: {:?}", routes(&c, 0));
    // Silence: nothing more is sent, the socket stays open.
    let silent_from = Instant::now();
    let notification = loop {
        match read_message(&mut s) {
            Some((3, body)) => break (body[0], body[1]),
            Some(_) => continue,
            None => panic!("closed without a NOTIFICATION: {}", agents[0].log()),
        }
    };
    let expired = silent_from.elapsed();
    assert_eq!(notification, (4, 0), "{}", agents[0].log());
    assert!(
        expired >= Duration::from_secs(2) && expired < Duration::from_secs(6),
        "hold timer of 3 s expired after {expired:?}"
    );
    wait_no_route(&c, &agents, 0, learned, Duration::from_secs(2));
    eprintln!(
        "silent peer: hold expired after {expired:?}, route gone after {:?}",
        silent_from.elapsed()
    );
    // The mesh is untouched (the metric counts the raw session until its next refresh).
    wait_established(&agents[0], 2.0);
    for a in &agents[1..] {
        assert_eq!(established(a), 2.0, "{}", a.log());
    }
}
