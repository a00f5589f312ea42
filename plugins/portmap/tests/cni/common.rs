//! Shared helpers: a cluster with the seed chain, echo servers that answer with the
//! client's address, clients in any namespace, and rule listings.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use testkit::{CallOpts, Cluster, NetNs, SimNode};

pub const NET: &str = "k8s-pod-network";

/// A cluster with the default pools (10.244.0.0/16, fd00:10:244::/48).
pub fn cluster(n: usize) -> Cluster {
    let c = Cluster::start(n, &[]).unwrap();
    c.add_pool("default-ipv4-ippool", "10.244.0.0/16", None)
        .unwrap();
    c.add_pool("default-ipv6-ippool", "fd00:10:244::/48", None)
        .unwrap();
    c
}

/// The seed chain (calico + portmap) at 1.0.0, dual stack, with extra portmap settings.
pub fn conflist(portmap: Value) -> Value {
    conflist_named(NET, true, true, portmap)
}

/// The seed chain under another network name, with the families chosen.
pub fn conflist_named(name: &str, v4: bool, v6: bool, portmap: Value) -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().unwrap();
    list["name"] = json!(name);
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv4"] = json!(v4.to_string());
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!(v6.to_string());
    for (k, v) in portmap.as_object().unwrap() {
        list["plugins"][1][k] = v.clone();
    }
    list
}

/// The rules without iptables-save's timestamp lines (for before/after comparisons).
pub fn stable_rules(node: &SimNode) -> String {
    rules(node)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// CNI_ARGS, CAP_ARGS and the container ID (also the pod's name) for a pod with the given
/// mappings (`null`: no CAP_ARGS at all).
pub fn opts(id: &str, mappings: Value) -> CallOpts {
    CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"
        )),
        cap_args: (!mappings.is_null()).then(|| json!({ "portMappings": mappings })),
        container_id: Some(id.to_string()),
        ..CallOpts::default()
    }
}

/// A container ID unique to this run.
pub fn new_id(hint: &str) -> String {
    testkit::unique_name(hint)
}

/// TCP 8080 -> 80 and UDP 8053 -> 53.
pub fn two_mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"}
    ])
}

/// The pod's address of a family from an ADD result.
pub fn pod_ip(result: &Value, v4: bool) -> IpAddr {
    testkit::result_ips(result)
        .into_iter()
        .find(|ip| ip.is_ipv4() == v4)
        .unwrap()
}

/// Echo servers in a pod: TCP and UDP on the given ports (both families), each answering
/// with the client's address as the server saw it. Stopped on drop.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(pod: &NetNs, tcp: &[u16], udp: &[u16]) -> Echo {
        let (listeners, sockets) = pod
            .within(|| {
                let l: Vec<TcpListener> = tcp
                    .iter()
                    .map(|p| TcpListener::bind(("::", *p)).unwrap())
                    .collect();
                let u: Vec<UdpSocket> = udp
                    .iter()
                    .map(|p| UdpSocket::bind(("::", *p)).unwrap())
                    .collect();
                (l, u)
            })
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in listeners {
            l.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(peer.ip().to_canonical().to_string().as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        for u in sockets {
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(peer.ip().to_canonical().to_string().as_bytes(), peer);
                    }
                }
            }));
        }
        Echo { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The source address the server saw for a TCP connection from `from` to `to`.
pub fn tcp_source(from: &NetNs, to: SocketAddr) -> Option<String> {
    from.within(move || {
        for _ in 0..3 {
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut out = String::new();
                if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                    return Some(out);
                }
            }
        }
        None
    })
    .unwrap()
}

/// The source address the server saw for a UDP datagram from `from` to `to`.
pub fn udp_source(from: &NetNs, to: SocketAddr) -> Option<String> {
    from.within(move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let s = UdpSocket::bind(bind).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            s.send_to(b"x", to).ok()?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
    .unwrap()
}

/// Everything NAT-related the node has: iptables (both families) and nftables.
pub fn rules(node: &SimNode) -> String {
    node.sh("iptables-save -t nat 2>/dev/null; ip6tables-save -t nat 2>/dev/null; nft list ruleset 2>/dev/null")
        .unwrap()
}

/// The per-container chain name of a pod of network NET.
pub fn chain_of(container_id: &str) -> String {
    portmap::layout::chain_name(NET, container_id)
}

/// The container ID the driver derives from a netns path when none is given (cnitool's
/// rule), as GC's valid attachments carry it.
pub fn derived_id(netns: &std::path::Path) -> String {
    use sha2::{Digest, Sha512};
    let sum = Sha512::digest(netns.to_string_lossy().as_bytes());
    let hex: String = sum[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

/// What one plugin call printed and returned.
pub struct Called {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Called {
    /// Stdout as exactly one JSON object (a result or an error object), after checking
    /// that nothing panicked.
    pub fn json(&self) -> Value {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("overflowed"),
            "{}",
            self.stderr
        );
        let mut objects = serde_json::Deserializer::from_str(&self.stdout).into_iter::<Value>();
        let first = objects
            .next()
            .unwrap_or_else(|| panic!("no JSON on stdout: {}", self.stderr));
        let first = first.unwrap();
        assert!(first.is_object(), "{first}");
        assert!(
            objects.next().is_none(),
            "more than one JSON value: {}",
            self.stdout
        );
        first
    }

    /// Asserts success and returns the output object.
    pub fn ok(&self) -> Value {
        let v = self.json();
        assert!(self.status.success(), "{v}\n{}", self.stderr);
        v
    }

    /// Asserts success with nothing on stdout (DEL and GC print nothing).
    pub fn done(&self) {
        assert!(
            self.status.success() && self.stdout.is_empty(),
            "{}{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts failure with exit status 1 and returns the error's code and message.
    pub fn err(&self) -> (u64, String) {
        let v = self.json();
        assert_eq!(self.status.code(), Some(1), "{v}");
        (
            v["code"].as_u64().unwrap(),
            v["msg"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// A portmap command on `node`, as a runtime runs it: our binary, the CNI variables.
pub fn portmap_command(
    node: &SimNode,
    verb: &str,
    id: &str,
    netns: &std::path::Path,
) -> std::process::Command {
    let bin = testkit::bins::built("portmap").unwrap();
    let mut cmd = node.command(bin).unwrap();
    cmd.env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs our portmap directly on `node` (not through libcni: a runtime's `CAP_ARGS` cannot
/// hold 20k mappings, an environment string being at most 128 KiB), config on stdin.
pub fn portmap_direct(
    node: &SimNode,
    verb: &str,
    id: &str,
    netns: &std::path::Path,
    conf: &Value,
) -> Called {
    let mut child = portmap_command(node, verb, id, netns).spawn().unwrap();
    let input = conf.to_string();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Called {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A portmap config of network `net` for a direct call: the mappings and the prevResult.
pub fn portmap_conf(net: &str, extra: Value, mappings: Value, prev: &Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": net, "type": "portmap",
                       "runtimeConfig": {"portMappings": mappings}, "prevResult": prev});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// `n` TCP mappings, host ports 1024.., all to container port 80.
pub fn many_mappings(n: u16) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"hostPort": 1024 + i, "containerPort": 80}))
            .collect(),
    )
}

/// What portmap's default state directory on the node holds besides its lock: records (and
/// temporary files) and port claims, as relative paths.
pub fn portmap_state(node: &SimNode) -> Vec<String> {
    state_in(&node.host_path("/run/calico/portmap").unwrap())
}

/// What a portmap state directory holds besides its lock (see [`portmap_state`]).
pub fn state_in(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lock" {
            continue;
        }
        if name == "ports" {
            for p in std::fs::read_dir(e.path()).unwrap().flatten() {
                let port = p.file_name().to_string_lossy().into_owned();
                let held: Vec<String> = std::fs::read_dir(p.path())
                    .map(|d| {
                        d.flatten()
                            .map(|x| format!("ports/{port}/{}", x.file_name().to_string_lossy()))
                            .collect()
                    })
                    .unwrap_or_default();
                if held.is_empty() {
                    out.push(format!("ports/{port}/"));
                }
                out.extend(held);
            }
            continue;
        }
        out.push(name);
    }
    out.sort();
    out
}

/// The elements of one of our nftables sets or maps, as `nft` lists them (empty if none or
/// no table). (`nft list set` does not list a map.)
pub fn nft_set(node: &SimNode, set: &str) -> String {
    let kind = if set.contains("ports") { "map" } else { "set" };
    node.sh(&format!(
        "nft list {kind} inet calico_portmap {set} 2>/dev/null | sed -n '/elements/,$p'"
    ))
    .unwrap()
}
