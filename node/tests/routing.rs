//! Route distribution for real: `calico-node startup` then `calico-node run` on three
//! simulated nodes over the simulated underlay, the seed's mutual-TLS etcd, pods added
//! through libcni on each, and no static route anywhere: the agents' BGP mesh (or, with the
//! `vxlan` backend, their VXLAN routes) must carry pod traffic across nodes. Blocks come and
//! go (an affinity removed in etcd is withdrawn everywhere and its blackhole removed).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use testkit::bgplab::kernel::{KernelRoute, kernel_routes};
use testkit::{Agent, CallOpts, Cluster, NetNs, eventually, require};

const NET: &str = "k8s-pod-network";
const WAIT: Duration = Duration::from_secs(30);

/// The seed chain (calico + portmap), IPv4 only.
fn seed() -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    list
}

fn pod(id: &str) -> CallOpts {
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

/// A cluster of `n` nodes, each started up (`vars`) and running the agent (`run_vars`).
fn cluster(n: usize, vars: &[(&str, &str)], run_vars: &[(&str, &str)]) -> (Cluster, Vec<Agent>) {
    let c = Cluster::start_bare(n, &[]).unwrap();
    for i in 0..n {
        startup(&c, i, vars);
    }
    let mut env = vec![("CALICO_BGP_CONNECT_RETRY_SECONDS", "1")];
    env.extend_from_slice(run_vars);
    let agents = (0..n)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            let mut env = env.clone();
            env.push(("NODENAME", &name));
            Agent::on_node_with(&c, i, &env).unwrap()
        })
        .collect();
    for i in 0..n {
        c.install(i, &seed()).unwrap();
    }
    (c, agents)
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
        .add(NET, &ns.path(), &pod(id))
        .unwrap()
        .unwrap();
    let ip = match testkit::result_ips(&result).first() {
        Some(IpAddr::V4(ip)) => *ip,
        other => panic!("no IPv4 address in {result}: {other:?}"),
    };
    let block = Ipv4Net::new(ip, 26).unwrap().trunc();
    Pod { ns, ip, block }
}

fn routes(c: &Cluster, node: usize) -> Vec<KernelRoute> {
    kernel_routes(c.node(node).netns().name()).unwrap()
}

/// Waits until node `node`'s kernel routes `block` via `gw` with `protocol`.
fn wait_route(
    c: &Cluster,
    agents: &[Agent],
    node: usize,
    block: Ipv4Net,
    gw: Ipv4Addr,
    protocol: &str,
) {
    let ok = eventually(WAIT, || {
        routes(c, node)
            .iter()
            .any(|r| r.dst == block && r.gateways.contains(&gw) && r.protocol == protocol)
    });
    assert!(
        ok,
        "node-{}: no route to {block} via {gw} proto {protocol}: {:?}\nlog: {}",
        node + 1,
        routes(c, node),
        agents[node].log()
    );
}

fn wait_no_route(c: &Cluster, node: usize, block: Ipv4Net) {
    let ok = eventually(WAIT, || !routes(c, node).iter().any(|r| r.dst == block));
    assert!(
        ok,
        "node-{}: {block} still routed: {:?}",
        node + 1,
        routes(c, node)
    );
}

fn has_blackhole(c: &Cluster, node: usize, block: Ipv4Net) -> bool {
    routes(c, node)
        .iter()
        .any(|r| r.dst == block && r.kind == "blackhole" && r.protocol == "79")
}

fn pings(from: &Pod, to: &Pod) -> bool {
    eventually(Duration::from_secs(10), || {
        testkit::bgplab::ping(&from.ns, from.ip, to.ip).unwrap_or(false)
    })
}

#[test]
fn a_bgp_mesh_carries_pods_across_three_nodes_with_no_static_route() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(3, &[("CALICO_IPV4POOL_CIDR", "10.244.0.0/16")], &[]);
    let pods: Vec<Pod> = (0..3)
        .map(|i| add_pod(&c, i, &format!("mesh{i}")))
        .collect();
    for (i, p) in pods.iter().enumerate() {
        let ok = eventually(WAIT, || has_blackhole(&c, i, p.block));
        assert!(
            ok,
            "node-{}: no blackhole for {}: {:?}",
            i + 1,
            p.block,
            routes(&c, i)
        );
        for (j, _) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            wait_route(&c, &agents, j, p.block, c.node(i).underlay_ip(), "78");
        }
    }
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                pings(a, b),
                "pod on node-{} cannot reach node-{}'s",
                i + 1,
                j + 1
            );
        }
    }
    // The agents say so: sessions up, routes learned.
    for a in &agents {
        let ok = eventually(WAIT, || {
            a.metric("calico_node_bgp_peers", &["state=\"Established\""])
                .unwrap()
                == 2.0
        });
        assert!(ok, "sessions not up: {}", a.metrics().unwrap());
        assert!(a.metric("calico_node_bgp_routes_learned", &[]).unwrap() >= 2.0);
    }

    // A block released on node-3 (its affinity gone) is withdrawn everywhere, and node-3's
    // blackhole goes.
    let released = pods[2].block;
    c.runtime(2)
        .del(NET, &pods[2].ns.path(), &pod("mesh2"))
        .unwrap()
        .unwrap();
    let key = format!(
        "/calico/ipam/v2/host/node-3/ipv4/block/{}-{}",
        released.addr(),
        released.prefix_len()
    );
    c.etcd.delete_prefix(&key).unwrap();
    for j in 0..2 {
        wait_no_route(&c, j, released);
    }
    let ok = eventually(WAIT, || !has_blackhole(&c, 2, released));
    assert!(ok, "node-3 kept its blackhole: {:?}", routes(&c, 2));

    // A new block on node-1 reaches the others.
    let more = add_pod(&c, 0, "mesh3");
    if more.block != pods[0].block {
        for j in 1..3 {
            wait_route(&c, &agents, j, more.block, c.node(0).underlay_ip(), "78");
        }
    }
    assert!(pings(&pods[1], &more));
}

#[test]
fn the_vxlan_backend_carries_pods_across_nodes_through_vxlan_calico() {
    require!(root; "etcd", "go", "ip", "busybox");
    let (c, agents) = cluster(
        3,
        &[
            ("CALICO_IPV4POOL_CIDR", "10.245.0.0/16"),
            ("CALICO_IPV4POOL_VXLAN", "Always"),
            ("CALICO_NETWORKING_BACKEND", "vxlan"),
        ],
        &[("CALICO_NETWORKING_BACKEND", "vxlan")],
    );
    let pods: Vec<Pod> = (0..3).map(|i| add_pod(&c, i, &format!("vx{i}"))).collect();
    let nodes = c
        .values("/calico/resources/v3/projectcalico.org/nodes/")
        .unwrap();
    let vtep = |i: usize| -> Ipv4Addr {
        let name = format!("node-{}", i + 1);
        let (_, n) = nodes.iter().find(|(k, _)| k.ends_with(&name)).unwrap();
        n["spec"]["ipv4VXLANTunnelAddr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for (i, p) in pods.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            wait_route(&c, &agents, j, p.block, vtep(i), "80");
            let r = routes(&c, j);
            let route = r.iter().find(|r| r.dst == p.block).unwrap();
            assert_eq!(route.devices, vec!["vxlan.calico".to_string()], "{route:?}");
        }
    }
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                pings(a, b),
                "pod on node-{} cannot reach node-{}'s",
                i + 1,
                j + 1
            );
        }
    }
    // Felix's ARP and FDB entries for each remote VTEP.
    let neigh = c
        .node(0)
        .sh("ip neigh show dev vxlan.calico nud permanent")
        .unwrap();
    let fdb = c.node(0).sh("bridge fdb show dev vxlan.calico").unwrap();
    for j in 1..3 {
        assert!(neigh.contains(&vtep(j).to_string()), "{neigh}");
        assert!(fdb.contains(&c.node(j).underlay_ip().to_string()), "{fdb}");
    }
    // No BGP in this mode.
    assert_eq!(
        agents[0]
            .metric("calico_node_bgp_peers", &["state=\"Established\""])
            .unwrap(),
        0.0
    );
    let _ = IpNet::from(pods[0].block);
}

#[test]
fn an_address_borrowed_from_another_nodes_block_is_announced_and_reached() {
    require!(root; "etcd", "go", "ip", "busybox");
    // One pool of one /30 block: node-1 claims it, node-2's pod borrows from it.
    let (c, agents) = cluster(
        2,
        &[
            ("CALICO_IPV4POOL_CIDR", "10.246.0.0/30"),
            ("CALICO_IPV4POOL_BLOCK_SIZE", "30"),
        ],
        &[],
    );
    let owner = add_pod(&c, 0, "own0");
    let borrower = add_pod(&c, 1, "borrow1");
    let block = Ipv4Net::new(Ipv4Addr::new(10, 246, 0, 0), 30).unwrap();
    assert!(block.contains(&owner.ip) && block.contains(&borrower.ip));
    let host = Ipv4Net::new(borrower.ip, 32).unwrap();
    // node-1 routes the borrowed /32 to node-2, past its own blackhole for the block.
    wait_route(&c, &agents, 0, host, c.node(1).underlay_ip(), "78");
    assert!(pings(&owner, &borrower));
    assert!(pings(&borrower, &owner));
}
