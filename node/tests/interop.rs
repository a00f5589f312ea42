//! Interop of calico-node's BGP with the daemons users run beside Calico (issue 13 §4):
//! Debian's BIRD 2, GoBGP and FRR, each started in a simulated node of the cluster that runs
//! no agent (`testkit::bgplab`), against `calico-node run` on the other nodes (after
//! `calico-node startup`, pods added through libcni). Peerings are configured as an operator
//! would: `calicoctl apply` of BGPConfiguration and BGPPeer resources, a Node's
//! `spec.bgp.routeReflectorClusterID`.
//!
//! - the daemon as a plain iBGP peer of every agent (a global BGPPeer, "a ToR");
//! - the daemon as route reflector with our agents as its clients (mesh off);
//! - our agent as the route reflector of BIRD and FRR clients;
//! - `calicoctl node status` with a mesh and a global peer, the peer up and killed.
//!
//! Every test checks the daemon's RIB, the kernels on both sides (ours: protocol 78), and
//! real traffic (pods, and the daemons' stand-in pod addresses on `lo`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::bgplab::kernel::{KernelRoute, kernel_routes};
use testkit::bgplab::{
    Bird, DEFAULT_ASN, Frr, GoBgp, Neighbor, Speaker, SpeakerConfig, SpeakerKind,
    wait_kernel_routes,
};
use testkit::{Agent, CallOpts, Cluster, NetNs, eventually};

const NET: &str = "k8s-pod-network";
/// Bound of every wait for BGP state: Calico's connect delay (2 s) plus a retry or two.
const WAIT: Duration = Duration::from_secs(10);
/// The AS of every node and daemon (Calico's default).
const ASN: u32 = DEFAULT_ASN;

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

/// The etcd settings of the seed's mutual-TLS etcd, as every node has them.
const ETCD_ENV: [(&str, &str); 4] = [
    ("ETCD_ENDPOINTS", "https://10.10.0.174:2379"),
    ("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca"),
    ("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert"),
    ("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key"),
];

/// `calico-node startup` on node `i` (named `node-<i+1>`), creating the pool `pool`.
fn startup(c: &Cluster, i: usize, pool: &str) {
    let bin = testkit::bins::built("calico-node").unwrap();
    let out = c
        .node(i)
        .command(&bin)
        .unwrap()
        .arg("startup")
        .env("NODENAME", node_name(i))
        .envs(ETCD_ENV)
        .env("IP", "autodetect")
        .env("IP_AUTODETECTION_METHOD", "interface=eth0")
        .env("CALICO_IPV4POOL_CIDR", pool)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "startup on {}: {}",
        node_name(i),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// calicoctl (the built binary) on node `on`, with `stdin`; its stdout, or a failed test.
fn calicoctl(c: &Cluster, on: usize, args: &[&str], stdin: &str) -> String {
    let bin = testkit::bins::built("calicoctl").unwrap();
    let mut child = c
        .node(on)
        .command(&bin)
        .unwrap()
        .args(args)
        .envs(ETCD_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "calicoctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `calicoctl apply -f -` of `doc` (YAML or JSON).
fn apply(c: &Cluster, doc: &str) {
    calicoctl(c, 0, &["apply", "-f", "-"], doc);
}

/// BGPConfiguration `default` with the node-to-node mesh off.
fn mesh_off(c: &Cluster) {
    apply(
        c,
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\n\
         spec:\n  nodeToNodeMeshEnabled: false\n  asNumber: 64512\n",
    );
}

/// A BGPPeer `name` to `peer_ip` in our AS, global or for node `node` only.
fn bgp_peer(c: &Cluster, name: &str, peer_ip: Ipv4Addr, node: Option<&str>) {
    let node = node.map_or(String::new(), |n| format!("  node: {n}\n"));
    apply(
        c,
        &format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\n\
             spec:\n{node}  peerIP: {peer_ip}\n  asNumber: {ASN}\n"
        ),
    );
}

/// Makes node `i` a route reflector (`spec.bgp.routeReflectorClusterID`) with `calicoctl
/// patch node`, the step of Calico's route-reflector guide.
fn make_route_reflector(c: &Cluster, i: usize, cluster_id: Ipv4Addr) {
    let patch = json!({"spec": {"bgp": {"routeReflectorClusterID": cluster_id.to_string()}}});
    calicoctl(
        c,
        0,
        &["patch", "node", &node_name(i), "-p", &patch.to_string()],
        "",
    );
    let node = calicoctl(c, 0, &["get", "node", &node_name(i), "-o", "json"], "");
    let node: Value = serde_json::from_str(&node).unwrap();
    assert_eq!(
        node["spec"]["bgp"]["routeReflectorClusterID"],
        json!(cluster_id.to_string()),
        "{node}"
    );
}

/// The agent on node `i`, with a 1 s connect retry (Calico's 5 s would make a lost first
/// connect race cost a test 5 s).
fn agent(c: &Cluster, i: usize) -> Agent {
    let name = node_name(i);
    Agent::on_node_with(
        c,
        i,
        &[
            ("NODENAME", name.as_str()),
            ("CALICO_BGP_CONNECT_RETRY_SECONDS", "1"),
        ],
    )
    .unwrap()
}

/// A cluster of `nodes` nodes; `calico-node startup` (pool `pool`) on the first `agents`;
/// `configure` runs before any agent starts (resources as an operator applies them); then
/// the agents and the seed conflist on their nodes. The other nodes are the daemons'.
fn cluster(
    nodes: usize,
    agents: usize,
    pool: &str,
    configure: impl FnOnce(&Cluster),
) -> (Cluster, Vec<Agent>) {
    let c = Cluster::start_bare(nodes, &[]).unwrap();
    for i in 0..agents {
        startup(&c, i, pool);
    }
    configure(&c);
    let running = (0..agents).map(|i| agent(&c, i)).collect();
    for i in 0..agents {
        c.install(i, &seed()).unwrap();
    }
    (c, running)
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

/// A daemon's originated prefix and its stand-in pod address (on the daemon node's `lo`):
/// 198.19.<node>.0/26 and .1.
fn daemon_prefix(node: usize) -> (Ipv4Net, Ipv4Addr) {
    let octet = u8::try_from(node + 1).unwrap();
    let ip = Ipv4Addr::new(198, 19, octet, 1);
    (Ipv4Net::new(ip, 26).unwrap().trunc(), ip)
}

/// Starts `kind` on node `node` (its `lo` gets the stand-in pod address) with `cfg`.
fn start_daemon(
    c: &Cluster,
    node: usize,
    kind: SpeakerKind,
    cfg: SpeakerConfig,
) -> Box<dyn Speaker> {
    let (_, lo) = daemon_prefix(node);
    c.node(node)
        .sh(&format!("ip addr add {lo}/32 dev lo"))
        .unwrap();
    let ns = c.node(node).netns();
    match kind {
        SpeakerKind::Bird => Box::new(Bird::start(ns, cfg).unwrap()),
        SpeakerKind::GoBgp => Box::new(GoBgp::start(ns, cfg).unwrap()),
        SpeakerKind::Frr => Box::new(Frr::start(ns, cfg).unwrap()),
    }
}

/// A daemon on node `node` peering with `peers` (route-reflector clients when `reflect`),
/// originating [`daemon_prefix`]`(node)`.
fn daemon_config(c: &Cluster, node: usize, peers: &[usize], reflect: bool) -> SpeakerConfig {
    let mut cfg =
        SpeakerConfig::new(c.node(node).underlay_ip(), ASN).originate(daemon_prefix(node).0);
    for p in peers {
        let n = Neighbor::new(c.node(*p).underlay_ip(), ASN);
        cfg = cfg.neighbor(if reflect { n.rr_client(None) } else { n });
    }
    cfg
}

fn routes(c: &Cluster, node: usize) -> Vec<KernelRoute> {
    kernel_routes(c.node(node).netns().name()).unwrap()
}

/// Waits until agent node `node`'s kernel routes `dst` via `gw` with protocol 78.
fn wait_learned(c: &Cluster, agents: &[Agent], node: usize, dst: Ipv4Net, gw: Ipv4Addr) {
    let ok = eventually(WAIT, || {
        routes(c, node)
            .iter()
            .any(|r| r.dst == dst && r.gateways.contains(&gw) && r.protocol == "78")
    });
    assert!(
        ok,
        "{}: no route to {dst} via {gw} proto 78: {:?}\nagent log:\n{}",
        node_name(node),
        routes(c, node),
        agent_log(agents, node)
    );
}

fn agent_log(agents: &[Agent], node: usize) -> String {
    agents.get(node).map_or_else(String::new, |a| {
        let log = a.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    })
}

/// Waits for the daemon's sessions, for `want` in its RIB and (with their next hops) in its
/// kernel; the failure names the daemon's log and our agents' logs.
fn wait_daemon(d: &dyn Speaker, want: &[(Ipv4Net, Ipv4Addr)], agents: &[Agent]) {
    let logs = || {
        (0..agents.len())
            .map(|i| format!("{}:\n{}", node_name(i), agent_log(agents, i)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Err(e) = d.wait_established(WAIT) {
        panic!("{e:#}\n{logs}", logs = logs());
    }
    let prefixes: Vec<Ipv4Net> = want.iter().map(|(p, _)| *p).collect();
    if let Err(e) = d.wait_rib_has(&prefixes, WAIT) {
        panic!("{e:#}\n{logs}", logs = logs());
    }
    if let Err(e) = wait_kernel_routes(d.netns_name(), want, WAIT) {
        panic!("{} kernel: {e:#}\n{}", d.kind(), d.log_tail());
    }
}

/// One ping from `from` (sourced from `source`) to `to` is answered, within a few tries.
fn pings(from: &NetNs, source: Ipv4Addr, to: Ipv4Addr) -> bool {
    eventually(Duration::from_secs(5), || {
        testkit::bgplab::ping(from, source, to).unwrap_or(false)
    })
}

/// Root, the tools and the three daemons are here; otherwise the test is skipped, or under
/// `CI=true` fails (`testkit::gate`).
fn gate() -> bool {
    testkit::gate::require_root()
        && testkit::gate::require_tools(&["etcd", "go", "ip", "busybox"])
        && testkit::bgplab::require_daemons()
}

/// Test 1: `kind` as a plain iBGP peer of two agents (node-to-node mesh on, a global
/// BGPPeer to the daemon, the daemon configured with both agents as neighbours). The daemon
/// learns each agent's block and installs it; its prefix reaches both agents' kernels via its
/// node address (protocol 78); pods and the daemon's `lo` address ping each other.
fn plain_peer(kind: SpeakerKind, pool: &str) {
    let started = Instant::now();
    let daemon_node = 2;
    let (c, agents) = cluster(3, 2, pool, |c| {
        bgp_peer(c, "tor", c.node(daemon_node).underlay_ip(), None);
    });
    let pods: Vec<Pod> = (0..2)
        .map(|i| add_pod(&c, i, &format!("{}-plain{i}", kind_tag(kind))))
        .collect();
    let daemon = start_daemon(
        &c,
        daemon_node,
        kind,
        daemon_config(&c, daemon_node, &[0, 1], false),
    );
    let want: Vec<(Ipv4Net, Ipv4Addr)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.block, c.node(i).underlay_ip()))
        .collect();
    wait_daemon(daemon.as_ref(), &want, &agents);
    let (prefix, lo) = daemon_prefix(daemon_node);
    let via = c.node(daemon_node).underlay_ip();
    for i in 0..2 {
        wait_learned(&c, &agents, i, prefix, via);
    }
    for p in &pods {
        assert!(
            pings(&p.ns, p.ip, lo),
            "{kind}: pod {} cannot reach {lo}",
            p.ip
        );
        assert!(
            pings(c.node(daemon_node).netns(), lo, p.ip),
            "{kind}: {lo} cannot reach pod {}",
            p.ip
        );
    }
    eprintln!("{kind} as a plain peer: {:?}", started.elapsed());
}

fn kind_tag(kind: SpeakerKind) -> &'static str {
    match kind {
        SpeakerKind::Bird => "bird",
        SpeakerKind::GoBgp => "gobgp",
        SpeakerKind::Frr => "frr",
    }
}

#[test]
fn bird_is_a_plain_ibgp_peer_of_the_agents() {
    if gate() {
        plain_peer(SpeakerKind::Bird, "10.246.0.0/16");
    }
}

#[test]
fn gobgp_is_a_plain_ibgp_peer_of_the_agents() {
    if gate() {
        plain_peer(SpeakerKind::GoBgp, "10.247.0.0/16");
    }
}

#[test]
fn frr_is_a_plain_ibgp_peer_of_the_agents() {
    if gate() {
        plain_peer(SpeakerKind::Frr, "10.248.0.0/16");
    }
}

/// Test 2: `kind` as the route reflector of two agents (mesh off, a global BGPPeer to the
/// RR, `rr client` for both agents in the daemon). Agent A's block reaches agent B's kernel
/// via A's address (reflected, next hop unchanged), and pods on A and B ping each other.
fn daemon_reflects(kind: SpeakerKind, pool: &str) {
    let started = Instant::now();
    let rr = 2;
    let (c, agents) = cluster(3, 2, pool, |c| {
        mesh_off(c);
        bgp_peer(c, "rr", c.node(rr).underlay_ip(), None);
    });
    let pods: Vec<Pod> = (0..2)
        .map(|i| add_pod(&c, i, &format!("{}-rr{i}", kind_tag(kind))))
        .collect();
    let daemon = start_daemon(&c, rr, kind, daemon_config(&c, rr, &[0, 1], true));
    let want: Vec<(Ipv4Net, Ipv4Addr)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.block, c.node(i).underlay_ip()))
        .collect();
    wait_daemon(daemon.as_ref(), &want, &agents);
    // Reflected between the clients, next hop unchanged.
    wait_learned(&c, &agents, 1, pods[0].block, c.node(0).underlay_ip());
    wait_learned(&c, &agents, 0, pods[1].block, c.node(1).underlay_ip());
    // The RR's own prefix, too.
    let (prefix, lo) = daemon_prefix(rr);
    wait_learned(&c, &agents, 0, prefix, c.node(rr).underlay_ip());
    // Without the mesh, the agents have no session with each other: only the RR's.
    for a in &agents {
        let one = eventually(WAIT, || {
            a.metric("calico_node_bgp_peers", &["state=\"Established\""])
                .unwrap()
                == 1.0
        });
        assert!(one, "{}", a.metrics().unwrap());
    }
    assert!(
        pings(&pods[0].ns, pods[0].ip, pods[1].ip),
        "{kind} RR: pod on node-1 cannot reach node-2's"
    );
    assert!(
        pings(&pods[1].ns, pods[1].ip, pods[0].ip),
        "{kind} RR: pod on node-2 cannot reach node-1's"
    );
    assert!(
        pings(&pods[0].ns, pods[0].ip, lo),
        "{kind} RR: pod cannot reach {lo}"
    );
    eprintln!("{kind} as route reflector: {:?}", started.elapsed());
}

#[test]
fn bird_reflects_routes_between_agents() {
    if gate() {
        daemon_reflects(SpeakerKind::Bird, "10.249.0.0/16");
    }
}

#[test]
fn gobgp_reflects_routes_between_agents() {
    if gate() {
        daemon_reflects(SpeakerKind::GoBgp, "10.250.0.0/16");
    }
}

#[test]
fn frr_reflects_routes_between_agents() {
    if gate() {
        daemon_reflects(SpeakerKind::Frr, "10.251.0.0/16");
    }
}

/// Test 3: our agent (node-1, `routeReflectorClusterID` set, mesh off, node-specific
/// BGPPeers from it to the daemons) reflects between a BIRD client (node-2) and an FRR client
/// (node-3), both plain iBGP peers of the agent: each daemon's prefix reaches the other's RIB
/// and kernel via its originator's address, the agent's block reaches both, and everything
/// pings everything.
///
/// Calico's RR re-advertises only what its export filter accepts (`calico_export_to_bgp_peers`
/// in `bird_ipam.cfg.template`: the node's blocks, static routes, then prefixes inside enabled
/// IP pools), so the daemons' prefixes sit in an IP pool of their own (`nodeSelector:
/// !all()`: IPAM never allocates from it), as an operator would declare the ranges of
/// non-Calico hosts; a prefix outside every pool is learned but not reflected.
#[test]
fn our_agent_reflects_routes_between_bird_and_frr() {
    if !gate() {
        return;
    }
    let started = Instant::now();
    let (bird_node, frr_node) = (1, 2);
    let (c, agents) = cluster(3, 1, "10.252.0.0/16", |c| {
        mesh_off(c);
        make_route_reflector(c, 0, Ipv4Addr::new(244, 0, 0, 1));
        for (name, n) in [("to-bird", bird_node), ("to-frr", frr_node)] {
            bgp_peer(c, name, c.node(n).underlay_ip(), Some("node-1"));
        }
        apply(
            c,
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: lab-hosts\n\
             spec:\n  cidr: 198.19.0.0/16\n  nodeSelector: '!all()'\n",
        );
    });
    let pod = add_pod(&c, 0, "ourrr0");
    // TEST-NET-1: in no pool.
    let outside: Ipv4Net = "192.0.2.0/24".parse().unwrap();
    let bird = start_daemon(
        &c,
        bird_node,
        SpeakerKind::Bird,
        daemon_config(&c, bird_node, &[0], false).originate(outside),
    );
    let frr = start_daemon(
        &c,
        frr_node,
        SpeakerKind::Frr,
        daemon_config(&c, frr_node, &[0], false),
    );
    let agent_ip = c.node(0).underlay_ip();
    let (bird_prefix, bird_lo) = daemon_prefix(bird_node);
    let (frr_prefix, frr_lo) = daemon_prefix(frr_node);
    let bird_ip = c.node(bird_node).underlay_ip();
    let frr_ip = c.node(frr_node).underlay_ip();
    wait_daemon(
        bird.as_ref(),
        &[(pod.block, agent_ip), (frr_prefix, frr_ip)],
        &agents,
    );
    wait_daemon(
        frr.as_ref(),
        &[(pod.block, agent_ip), (bird_prefix, bird_ip)],
        &agents,
    );
    wait_learned(&c, &agents, 0, bird_prefix, bird_ip);
    wait_learned(&c, &agents, 0, frr_prefix, frr_ip);
    // Learned (and installed) from BIRD, with the in-pool prefix of the same UPDATE, but not
    // reflected to FRR.
    wait_learned(&c, &agents, 0, outside, bird_ip);
    let frr_rib = frr.rib().unwrap();
    assert!(
        !frr_rib.contains(&outside),
        "reflected outside the pools: {frr_rib:?}"
    );
    assert!(
        pings(c.node(bird_node).netns(), bird_lo, frr_lo),
        "BIRD → FRR"
    );
    assert!(
        pings(c.node(frr_node).netns(), frr_lo, bird_lo),
        "FRR → BIRD"
    );
    assert!(pings(&pod.ns, pod.ip, bird_lo), "pod → BIRD");
    assert!(pings(&pod.ns, pod.ip, frr_lo), "pod → FRR");
    eprintln!("our agent as route reflector: {:?}", started.elapsed());
}

/// The rows of Calico's `IPv4 BGP status` table: (peer address, type, state, since, info),
/// cells that tablewriter wrapped over several lines joined again.
fn status_rows(out: &str) -> Vec<[String; 5]> {
    let section = out
        .split("IPv4 BGP status")
        .nth(1)
        .and_then(|s| s.split("IPv6 BGP status").next())
        .unwrap_or("");
    let mut rows: Vec<[String; 5]> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let cell = |i: usize| cells.get(i).copied().unwrap_or("").to_string();
        match rows.last_mut() {
            // A continuation line: no address, the rest of wrapped cells.
            Some(last) if cell(0).is_empty() => {
                for (i, c) in last.iter_mut().enumerate() {
                    if !cell(i).is_empty() {
                        c.push(' ');
                        c.push_str(&cell(i));
                    }
                }
            }
            _ => rows.push([0, 1, 2, 3, 4].map(cell)),
        }
    }
    rows.retain(|r| r[0] != "PEER ADDRESS");
    rows
}

/// Test 4: `calicoctl node status` on node-1 with the mesh (node-2) and a global peer (BIRD
/// on node-3): Calico's table with both rows up/Established; BIRD killed, its row reads
/// `start` with a non-Established INFO while the mesh row stays up.
#[test]
fn calicoctl_node_status_shows_mesh_and_global_peers() {
    if !gate() {
        return;
    }
    let started = Instant::now();
    let daemon_node = 2;
    let (c, agents) = cluster(3, 2, "10.253.0.0/16", |c| {
        bgp_peer(c, "tor", c.node(daemon_node).underlay_ip(), None);
    });
    let mut bird = start_daemon(
        &c,
        daemon_node,
        SpeakerKind::Bird,
        daemon_config(&c, daemon_node, &[0, 1], false),
    );
    wait_daemon(bird.as_ref(), &[], &agents);
    let mesh = c.node(1).underlay_ip().to_string();
    let global = c.node(daemon_node).underlay_ip().to_string();
    let status = || calicoctl(&c, 0, &["node", "status"], "");
    let mut out = String::new();
    let both_up = eventually(WAIT, || {
        out = status();
        let rows = status_rows(&out);
        rows.len() == 2 && rows.iter().all(|r| r[2] == "up" && r[4] == "Established")
    });
    assert!(both_up, "{out}\n{}", agent_log(&agents, 0));
    assert!(
        out.starts_with("Calico process is running.\n\nIPv4 BGP status\n"),
        "{out}"
    );
    assert!(
        out.contains("+--------------+-------------------+-------+----------+-------------+"),
        "{out}"
    );
    assert!(
        out.contains("| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |"),
        "{out}"
    );
    assert!(
        out.contains("IPv6 BGP status\nNo IPv6 peers found.\n"),
        "{out}"
    );
    // In bird.cfg's order, as BIRD lists them: the mesh, then global peers.
    let rows = status_rows(&out);
    assert_eq!(
        (rows[0][0].as_str(), rows[0][1].as_str()),
        (mesh.as_str(), "node-to-node mesh"),
        "{out}"
    );
    assert_eq!(
        (rows[1][0].as_str(), rows[1][1].as_str()),
        (global.as_str(), "global"),
        "{out}"
    );
    // SINCE is BIRD's time of day (HH:MM:SS) for a change today.
    for r in &rows {
        assert!(
            r[3].len() == 8 && r[3].as_bytes()[2] == b':' && r[3].as_bytes()[5] == b':',
            "{out}"
        );
    }

    bird.kill().unwrap();
    let down = eventually(WAIT, || {
        out = status();
        let rows = status_rows(&out);
        rows.iter()
            .any(|r| r[0] == global && r[2] == "start" && !r[4].contains("Established"))
            && rows
                .iter()
                .any(|r| r[0] == mesh && r[2] == "up" && r[4] == "Established")
    });
    assert!(down, "{out}\n{}", agent_log(&agents, 0));
    // INFO as BIRD words it: the BGP state, then the last error (`Socket: Connection closed`
    // for a peer that went away).
    let rows = status_rows(&out);
    let info = &rows.iter().find(|r| r[0] == global).unwrap()[4];
    let (state, error) = info.split_once(' ').unwrap_or((info, ""));
    assert!(
        ["Idle", "Connect", "Active"].contains(&state) && error.starts_with("Socket: "),
        "{out}"
    );
    eprintln!("calicoctl node status: {:?}\n{out}", started.elapsed());
}
