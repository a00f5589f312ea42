//! The main job's demo: a three-node Calico cluster in network namespaces, `calico-node
//! startup` on each node (Node, default pools, nodename and MTU files), then `calico-node
//! run` (the plugins' etcd and deferred kernel work, and the BGP mesh that distributes the
//! pod blocks: no static route anywhere), pods made by the seed conflist through libcni,
//! `calicoctl node status` and the learned routes, traffic between them, and a summary. Everything it creates
//! is removed when it ends (fixtures drop), also on failure.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use testkit::{CallOpts, Cluster, NetNs};

/// Nodes in the demo cluster.
const NODES: usize = 3;

struct Pod {
    name: &'static str,
    node: usize,
    ns: NetNs,
    ipv4: String,
    ipv6: String,
    host_if: String,
    add_ms: f64,
}

fn heading(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// calicoctl run on a node (it reads the node's TLS files), against the cluster's etcd.
fn calicoctl(c: &Cluster, args: &[&str]) -> Result<String> {
    let bin = testkit::bins::built("calicoctl")?;
    let out = c
        .node(0)
        .command(&bin)?
        .args(args)
        .env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
        .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
        .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
        .output()?;
    if !out.status.success() {
        bail!(
            "calicoctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `calico-node startup` on node `i` (named `node-<i+1>`), against the cluster's etcd with
/// the node's TLS files; its log.
fn calico_node_startup(c: &Cluster, i: usize, vars: &[(&str, &str)]) -> Result<String> {
    let bin = testkit::bins::built("calico-node")?;
    let out = c
        .node(i)
        .command(&bin)?
        .arg("startup")
        .env("NODENAME", format!("node-{}", i + 1))
        .env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
        .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
        .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
        .envs(vars.iter().copied())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("calico-node startup on node-{}: {log}", i + 1);
    }
    Ok(log)
}

fn ping(from: &NetNs, to: &str) -> bool {
    (0..3).any(|_| {
        from.run("busybox", ["ping", "-c1", "-W2", to])
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// CNI_ARGS of a pod; the frontend also maps host port 8080 to its port 80 (CAP_ARGS, as a
/// runtime passes a pod's hostPort).
fn pod_args(name: &str) -> CallOpts {
    // db lives in its own namespace, which the policy part of the demo closes.
    let namespace = if name == "db" { "data" } else { "default" };
    let mut o = CallOpts::args(&format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
    ));
    if name == "frontend" {
        o.cap_args = Some(json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
        ]}));
    }
    o
}

/// A TCP server in `ns` on `port` answering each connection with the peer's address; it
/// serves until the process ends.
fn serve_peer_address(ns: &NetNs, port: u16) -> Result<()> {
    let listener = ns.within(move || std::net::TcpListener::bind(("::", port)))??;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            if let Ok(peer) = conn.peer_addr() {
                let _ = std::io::Write::write_all(
                    &mut conn,
                    peer.ip().to_canonical().to_string().as_bytes(),
                );
            }
        }
    });
    Ok(())
}

/// What a TCP server at `to` answers a client in `from` (empty if nothing).
fn tcp_answer(from: &NetNs, to: std::net::SocketAddr) -> String {
    from.within(move || {
        for _ in 0..3 {
            if let Ok(mut c) =
                std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2))
            {
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut out = String::new();
                if std::io::Read::read_to_string(&mut c, &mut out).is_ok() && !out.is_empty() {
                    return out;
                }
            }
        }
        String::new()
    })
    .unwrap_or_default()
}

fn block_of(addr: &str, len: u8) -> Result<String> {
    let ip: IpAddr = addr.split('/').next().unwrap_or(addr).parse()?;
    Ok(ipnet::IpNet::new(ip, len)?.trunc().to_string())
}

/// Ctrl-C (or SIGTERM) stops the demo at the next step, so the fixtures are dropped and
/// everything made is removed: the signals are blocked and waited for on a thread.
fn interruptible() -> Result<Arc<AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            eprintln!("\ncalico-demo: interrupted; cleaning up");
            seen.store(true, Ordering::SeqCst);
        }
    });
    Ok(flag)
}

fn step(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(interrupted: &AtomicBool) -> Result<()> {
    let started = Instant::now();
    heading(
        "A three-node cluster: underlay 10.10.0.0/24, etcd with mutual TLS at https://10.10.0.174:2379",
    );
    let c = Cluster::start_bare(NODES, &[])?;
    for (i, n) in c.nodes.iter().enumerate() {
        println!(
            "   node-{} : namespace {}, underlay {}",
            i + 1,
            n.name(),
            n.underlay_ip()
        );
    }

    step(interrupted)?;
    heading(
        "calico-node startup on each node (Node, default pools, cluster information, nodename and MTU files)",
    );
    let startup_vars = [
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
        ("CALICO_IPV6POOL_CIDR", "fd00:10:244::/48"),
        ("IP6", "autodetect"),
    ];
    for i in 0..NODES {
        println!("   node-{}: calico-node startup", i + 1);
        indent(&calico_node_startup(&c, i, &startup_vars)?);
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let read = |f: &str| std::fs::read_to_string(n.calico_lib_dir().join(f));
        println!(
            "   node-{}: /var/lib/calico/nodename = {:?}, /var/lib/calico/mtu = {:?}",
            i + 1,
            read("nodename")?,
            read("mtu")?
        );
    }
    println!("   node-1 again (a rerun changes nothing):");
    indent(
        calico_node_startup(&c, 0, &startup_vars)?
            .lines()
            .last()
            .unwrap_or_default(),
    );
    indent(&calicoctl(&c, &["get", "nodes", "-o", "wide"])?);
    indent(&calicoctl(&c, &["get", "ippool", "-o", "wide"])?);

    step(interrupted)?;
    heading(
        "The seed conflist on every node (policy and kubernetes sections left out: no API server here), dual stack",
    );
    let mut list = testkit::cluster::seed_without_kubernetes()?;
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("true");
    for i in 0..NODES {
        c.install(i, &list)?;
    }
    indent(&serde_json::to_string_pretty(&list)?);

    step(interrupted)?;
    heading(
        "calico-node run on each node: the plugins' etcd connection, their deferred kernel work, and the BGP mesh (CALICO_NETWORKING_BACKEND=bird)",
    );
    let mut agents = Vec::new();
    for i in 0..NODES {
        let agent = testkit::Agent::on_node(&c, i)?;
        println!(
            "   node-{}: calico-node run, pid {}, socket {} (0600)",
            i + 1,
            agent.pid(),
            testkit::agent::SOCKET
        );
        agents.push(agent);
    }

    step(interrupted)?;
    heading("Pods, added through libcni (cni-driver add k8s-pod-network <netns>)");
    let mut pods = Vec::new();
    for (name, node) in [("frontend", 0), ("backend", 0), ("db", 1), ("cache", 2)] {
        let ns = NetNs::new(name)?;
        let t = Instant::now();
        let r: Value = c
            .runtime(node)
            .add("k8s-pod-network", &ns.path(), &pod_args(name))?
            .map_err(|e| anyhow::anyhow!("ADD {name}: {e}"))?;
        let add_ms = t.elapsed().as_secs_f64() * 1e3;
        let ips: Vec<String> = r["ips"]
            .as_array()
            .context("ips")?
            .iter()
            .filter_map(|i| i["address"].as_str().map(str::to_string))
            .collect();
        pods.push(Pod {
            name,
            node,
            ipv4: ips.first().cloned().unwrap_or_default(),
            ipv6: ips.get(1).cloned().unwrap_or_default(),
            host_if: r["interfaces"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ns,
            add_ms,
        });
    }
    for p in &pods {
        println!("   {} on node-{} ({}):", p.name, p.node + 1, p.host_if);
        indent(
            &p.ns
                .sh("ip -br addr show dev eth0; ip route; ip -6 route show default")?,
        );
    }

    heading("frontend's hostPort 8080 (portmap, nftables backend): node-1's map");
    indent(
        &c.node(0)
            .sh("nft list map inet calico_portmap hostports4")?,
    );

    step(interrupted)?;
    heading("Endpoint records (calicoctl get workloadendpoints -o wide)");
    match calicoctl(&c, &["get", "workloadendpoints", "-o", "wide"]) {
        Ok(out) => indent(&out),
        Err(_) => {
            for (k, v) in c.values("/calico/resources/v3/projectcalico.org/workloadendpoints/")? {
                println!("   {k}\n      {}", v["spec"]);
            }
        }
    }
    heading("IPAM blocks (calicoctl ipam show --show-blocks)");
    indent(&calicoctl(&c, &["ipam", "show", "--show-blocks"])?);

    step(interrupted)?;
    heading(
        "Route distribution: calicoctl node status on node-1, and what each node's kernel learned",
    );
    let blocks: Vec<(usize, String, String)> = pods
        .iter()
        .map(|p| Ok((p.node, block_of(&p.ipv4, 26)?, block_of(&p.ipv6, 122)?)))
        .collect::<Result<_>>()?;
    let t = Instant::now();
    let learned = testkit::eventually(std::time::Duration::from_secs(30), || {
        (0..NODES).all(|n| {
            let v4 = c.node(n).sh("ip route show proto 78").unwrap_or_default();
            let v6 = c
                .node(n)
                .sh("ip -6 route show proto 78")
                .unwrap_or_default();
            blocks
                .iter()
                .filter(|(owner, _, _)| *owner != n)
                .all(|(_, b4, b6)| v4.contains(b4.as_str()) && v6.contains(b6.as_str()))
        })
    });
    println!(
        "   every node has every other node's blocks: {} (after {:.1} s)",
        ok(learned),
        t.elapsed().as_secs_f64()
    );
    indent(&calicoctl(&c, &["node", "status"])?);
    // The BGP side runs in calico-bgpd, a process calico-node starts beside itself (as
    // Calico's calico-node runs BIRD).
    for (n, agent) in agents.iter().enumerate() {
        let rss = |pid: u32| -> String {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
                })
                .unwrap_or_else(|| "?".into())
        };
        match agent.bgpd_pid() {
            Some(pid) => println!(
                "   node-{}: calico-bgpd pid {pid} ({} resident) beside calico-node pid {} ({})",
                n + 1,
                rss(pid),
                agent.pid(),
                rss(agent.pid())
            ),
            None => println!("   node-{}: no calico-bgpd running", n + 1),
        }
    }
    for n in 0..NODES {
        println!(
            "   node-{}: ip route show proto 78 (learned by BGP) / proto 79 (blackholes of its own blocks):",
            n + 1
        );
        indent(&c.node(n).sh("ip route show proto 78; ip -6 route show proto 78; ip route show proto 79; ip -6 route show proto 79")?);
    }

    step(interrupted)?;
    heading("Traffic");
    let addr = |s: &str| s.split('/').next().unwrap_or(s).to_string();
    let same_v4 = ping(&pods[0].ns, &addr(&pods[1].ipv4));
    let same_v6 = ping(&pods[0].ns, &addr(&pods[1].ipv6));
    println!(
        "   frontend -> backend, same node:  IPv4 {}  IPv6 {}",
        ok(same_v4),
        ok(same_v6)
    );
    // No static route: the agents' BGP mesh has told every node where the others' blocks are.
    let (n1, n2) = (c.node(0), c.node(1));
    let mut cross_v4 = true;
    let mut cross_v6 = true;
    for (from, to) in [(0, 2), (0, 3), (2, 3), (3, 1)] {
        let v4 = ping(&pods[from].ns, &addr(&pods[to].ipv4));
        let v6 = ping(&pods[from].ns, &addr(&pods[to].ipv6));
        println!(
            "   {} (node-{}) -> {} (node-{}), across nodes:  IPv4 {}  IPv6 {}",
            pods[from].name,
            pods[from].node + 1,
            pods[to].name,
            pods[to].node + 1,
            ok(v4),
            ok(v6)
        );
        cross_v4 &= v4;
        cross_v6 &= v6;
    }
    serve_peer_address(&pods[0].ns, 80)?;
    let host_port = std::net::SocketAddr::new(IpAddr::V4(n1.underlay_ip()), 8080);
    let seen = tcp_answer(&pods[2].ns, host_port);
    // node-1's address is outside every pool: db's node masquerades (the pool's natOutgoing,
    // programmed by calico-node's policy agent as Felix does), so frontend sees node-2.
    let host_port_ok = seen == n2.underlay_ip().to_string();
    println!(
        "   db -> node-1 {host_port} (hostPort) -> frontend:80: {}  (frontend saw {}: node-2, natOutgoing)",
        ok(host_port_ok),
        if seen.is_empty() { "nothing" } else { &seen }
    );

    step(interrupted)?;
    heading("Network policy (calico-node's policy agent, nftables table inet calico)");
    let policy_file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        policy_file.path(),
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: data-only-postgres\n  namespace: data\nspec:\n  selector: all()\n  types: [Ingress]\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [5432]\n",
    )?;
    let in_node = c.node(0).calico_lib_dir().join("demo-policy.yaml");
    std::fs::copy(policy_file.path(), &in_node)?;
    println!("   calicoctl apply -f (namespace data: only TCP 5432 in):");
    indent(&std::fs::read_to_string(policy_file.path())?);
    let t = Instant::now();
    indent(&calicoctl(
        &c,
        &["apply", "-f", "/var/lib/calico/demo-policy.yaml"],
    )?);
    let db_v4 = addr(&pods[2].ipv4);
    let closed = testkit::eventually(std::time::Duration::from_secs(10), || {
        !pods[0]
            .ns
            .run("busybox", ["ping", "-c1", "-W1", &db_v4])
            .map(|o| o.status.success())
            .unwrap_or(true)
    });
    println!(
        "   frontend -> db ping now dropped: {} (after {:.0} ms, measured by ping: an upper bound)",
        ok(closed),
        t.elapsed().as_secs_f64() * 1e3
    );
    let others_ok = ping(&pods[0].ns, &addr(&pods[3].ipv4));
    println!(
        "   frontend -> cache (default namespace) still answers: {}",
        ok(others_ok)
    );
    indent(&calicoctl(
        &c,
        &["get", "networkpolicy", "-n", "data", "-o", "wide"],
    )?);
    println!("   node-2's chain for db ({}):", pods[2].host_if);
    indent(&c.node(1).sh(&format!(
        "nft list chain inet calico filter-cali-tw-{}",
        pods[2].host_if
    ))?);
    println!(
        "   node-2's endpoint status files (what the plugin's policy_setup_timeout_seconds waits for):"
    );
    indent(&c.node(1).sh("ls /var/run/calico/endpoint-status/")?);
    indent(&calicoctl(
        &c,
        &[
            "delete",
            "networkpolicy",
            "data-only-postgres",
            "-n",
            "data",
        ],
    )?);
    let reopened = ping(&pods[0].ns, &db_v4);
    println!("   deleted: frontend -> db answers again: {}", ok(reopened));
    let _ = std::fs::remove_file(&in_node);
    let policy_ok = closed && others_ok && reopened;

    step(interrupted)?;
    heading("Removing the pods (cni-driver del)");
    let mut del_ms = Vec::new();
    for p in &pods {
        let t = Instant::now();
        c.runtime(p.node)
            .del("k8s-pod-network", &p.ns.path(), &pod_args(p.name))?
            .map_err(|e| anyhow::anyhow!("DEL {}: {e}", p.name))?;
        del_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let left_weps = c
        .values("/calico/resources/v3/projectcalico.org/workloadendpoints/")?
        .len();
    let left_handles = c.values("/calico/ipam/v2/handle/")?.len();
    let left_mappings = c
        .node(0)
        .sh("nft list map inet calico_portmap hostports4 | grep -c comment || true")?
        .trim()
        .parse::<usize>()
        .unwrap_or(0);
    // DEL hands the interface deletion to a detached helper (the kernel takes ~15 ms per
    // veth); give it a moment before counting.
    let no_cali = || {
        c.nodes.iter().all(|n| {
            n.sh("ip -o link show | grep -c cali || true")
                .map(|s| s.trim() == "0")
                .unwrap_or(false)
        })
    };
    testkit::eventually(std::time::Duration::from_secs(5), no_cali);
    let left_links: usize = c
        .nodes
        .iter()
        .map(|n| {
            n.sh("ip -o link show | grep -c cali || true")
                .map(|s| s.trim().parse().unwrap_or(0))
        })
        .sum::<Result<usize>>()?;

    heading("Summary");
    println!(
        "   {:<9} {:<7} {:<18} {:<26} {:<16} {:>8}",
        "pod", "node", "IPv4", "IPv6", "host veth", "ADD ms"
    );
    for p in &pods {
        println!(
            "   {:<9} {:<7} {:<18} {:<26} {:<16} {:>8.1}",
            p.name,
            format!("node-{}", p.node + 1),
            p.ipv4,
            p.ipv6,
            p.host_if,
            p.add_ms
        );
    }
    println!("   (ADD/DEL times are whole cni-driver runs: libcni start-up included)");
    println!(
        "   DEL ms: {}",
        del_ms
            .iter()
            .map(|d| format!("{d:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "   traffic: same node {}/{}, across nodes {}/{} (no static route: BGP), hostPort from another node {}, policy {}",
        ok(same_v4),
        ok(same_v6),
        ok(cross_v4),
        ok(cross_v6),
        ok(host_port_ok),
        ok(policy_ok)
    );
    println!(
        "   after DEL: {left_weps} endpoint records, {left_handles} IPAM handles, {left_links} cali interfaces, {left_mappings} hostPort mappings"
    );
    for (i, agent) in agents.iter_mut().enumerate() {
        let served = agent.metric("calico_node_requests_total", &["service=\"etcd\""])?;
        let deferred = agent.metric("calico_node_deferred_work_total", &[])?;
        let cpu = agent.metric("calico_node_cpu_seconds_total", &[])?;
        let status = agent.stop()?;
        println!(
            "   node-{}: calico-node served {served} etcd requests, did {deferred} pieces of deferred kernel work, used {:.0} ms of CPU; SIGTERM: {status}",
            i + 1,
            cpu * 1e3
        );
    }
    println!(
        "   total {:.1} s; namespaces, etcd and temporary files are removed now",
        started.elapsed().as_secs_f64()
    );
    if !(learned && same_v4 && same_v6 && cross_v4 && cross_v6 && host_port_ok && policy_ok)
        || left_weps + left_handles + left_links + left_mappings > 0
    {
        bail!("the demo did not end as expected");
    }
    Ok(())
}

fn ok(b: bool) -> &'static str {
    if b { "ok" } else { "FAILED" }
}

fn main() -> std::process::ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("calico-demo: run as root (it makes network namespaces)");
        return std::process::ExitCode::from(2);
    }
    let interrupted = match interruptible() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("calico-demo: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(&interrupted) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
