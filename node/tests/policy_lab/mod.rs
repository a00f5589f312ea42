//! The policy lab: simulated nodes running `calico-node startup` and `run` against the
//! seed's mutual-TLS etcd, pods added through libcni, resources written to etcd, and
//! connectivity probes (TCP, UDP, ICMP; IPv4 and IPv6) between pods.
//!
//! Pods get their labels, namespace profile and service account the way a Kubernetes
//! cluster in etcd mode gives them: the plugin writes the endpoint, then the endpoint's
//! labels and profiles are set in etcd and the `kns.<ns>`/`ksa.<ns>.<sa>` profiles written.
//! That last step stands in for the Kubernetes API and kube-controllers, which cannot run
//! here (TEST DOUBLE: `label_pod` and `namespace`/`service_account` below).
//!
//! Waiting is deterministic: a write's etcd revision is known, and the agent reports the
//! revision its rules are at (`calico_node_policy_applied_revision`); a probe that must fail
//! runs only once the rules are at least that new.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use testkit::{Agent, CallOpts, Cluster, NetNs, eventually};

pub const NET: &str = "k8s-pod-network";
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a probe that must fail waits for an answer. A refused or dropped packet is
/// decided by the rules already in place (the lab waits for them first), so this only
/// bounds the wait for an answer that will not come.
pub const DENIED_AFTER: Duration = Duration::from_millis(400);
const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";

/// The seed chain (calico + portmap), dual stack when `v6`.
pub fn seed(v6: bool) -> Value {
    let mut list = testkit::cluster::seed_without_kubernetes().expect("the seed conflist");
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!(if v6 { "true" } else { "false" });
    list
}

pub struct Lab {
    pub c: Cluster,
    pub agents: Vec<Agent>,
}

/// `calico-node startup` on node `i` (named `node-<i+1>`) with `vars`.
fn startup(c: &Cluster, i: usize, vars: &[(&str, &str)]) {
    let bin = testkit::bins::built("calico-node").expect("calico-node built");
    let out = c
        .node(i)
        .command(&bin)
        .expect("a command in the node")
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
        .expect("startup runs");
    assert!(
        out.status.success(),
        "startup on node-{}: {}",
        i + 1,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// `n` nodes with the BGP mesh (pods reach each other across nodes), policy on, dual
    /// stack when `v6`. `run_vars` go to every agent.
    pub fn start(n: usize, v6: bool, run_vars: &[(&str, &str)]) -> Lab {
        let c = Cluster::start_bare(n, &[]).expect("a cluster");
        let mut vars = vec![("CALICO_IPV4POOL_CIDR", "10.244.0.0/16")];
        if v6 {
            vars.push(("CALICO_IPV6POOL_CIDR", "fd00:10:244::/48"));
            vars.push(("IP6", "autodetect"));
            vars.push(("IP6_AUTODETECTION_METHOD", "interface=eth0"));
        }
        for i in 0..n {
            startup(&c, i, &vars);
        }
        let mut env = vec![("CALICO_BGP_CONNECT_RETRY_SECONDS", "1")];
        env.extend_from_slice(run_vars);
        let agents = (0..n)
            .map(|i| {
                let name = format!("node-{}", i + 1);
                let mut env = env.clone();
                env.push(("NODENAME", &name));
                Agent::on_node_with(&c, i, &env).expect("an agent")
            })
            .collect();
        for i in 0..n {
            c.install(i, &seed(v6)).expect("the conflist installed");
        }
        Lab { c, agents }
    }

    /// Puts a resource (JSON, as calicoctl stores it) and returns the etcd revision.
    pub fn put(&self, resource: &Value) -> i64 {
        let kind = resource["kind"].as_str().expect("a kind");
        let plural = plural(kind);
        let name = resource["metadata"]["name"].as_str().expect("a name");
        let key = match resource["metadata"]["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => format!("{RESOURCES}{plural}/{ns}/{name}"),
            _ => format!("{RESOURCES}{plural}/{name}"),
        };
        self.put_raw(&key, &resource.to_string())
    }

    pub fn put_raw(&self, key: &str, value: &str) -> i64 {
        let out = self
            .c
            .ctl()
            .run(&["put", key, value, "-w", "json"])
            .expect("etcdctl put");
        revision(&out)
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> i64 {
        let plural = plural(kind);
        let key = if namespace.is_empty() {
            format!("{RESOURCES}{plural}/{name}")
        } else {
            format!("{RESOURCES}{plural}/{namespace}/{name}")
        };
        let out = self
            .c
            .ctl()
            .run(&["del", &key, "-w", "json"])
            .expect("etcdctl del");
        revision(&out)
    }

    /// Waits until every agent's rules are at `rev` or newer.
    pub fn wait_applied(&self, rev: i64) {
        for (i, a) in self.agents.iter().enumerate() {
            let ok = eventually(WAIT, || {
                a.metric("calico_node_policy_applied_revision", &[])
                    .is_ok_and(|r| r >= rev as f64)
            });
            assert!(
                ok,
                "node-{}: rules not at revision {rev}\nlog: {}",
                i + 1,
                a.log()
            );
        }
    }

    /// Puts and waits until every agent enforces it.
    pub fn apply(&self, resource: Value) {
        let rev = self.put(&resource);
        self.wait_applied(rev);
    }

    /// A pod `name` in namespace `ns` on node `node`, added through libcni.
    pub fn pod(&self, node: usize, ns: &str, name: &str) -> Pod {
        self.pod_with_ports(node, ns, name, Value::Null)
    }

    /// As [`Lab::pod`], with the runtime's `portMappings` (hostPorts, through portmap).
    pub fn pod_with_ports(&self, node: usize, ns: &str, name: &str, mappings: Value) -> Pod {
        let netns = NetNs::new(name).expect("a pod namespace");
        let mut opts = pod_opts(ns, name);
        opts.cap_args = (!mappings.is_null()).then(|| json!({ "portMappings": mappings }));
        let result = self
            .c
            .runtime(node)
            .add(NET, &netns.path(), &opts)
            .expect("the runtime runs")
            .expect("ADD succeeds");
        let ips = testkit::result_ips(&result);
        let v4 = ips.iter().copied().find(IpAddr::is_ipv4);
        let v6 = ips.iter().copied().find(IpAddr::is_ipv6);
        let wep_key = self
            .c
            .ctl()
            .get_prefix(&format!("{RESOURCES}workloadendpoints/{ns}/"))
            .expect("endpoints")
            .into_iter()
            .find(|(_, v)| v.contains(&format!("\"pod\":\"{name}\"")))
            .map(|(k, _)| k)
            .expect("the plugin wrote the endpoint");
        Pod {
            netns,
            node,
            namespace: ns.to_string(),
            name: name.to_string(),
            v4,
            v6,
            wep_key,
        }
    }

    /// TEST DOUBLE for the Kubernetes API + kube-controllers: the namespace's profile
    /// `kns.<ns>` (allow both ways, its labels as `pcns.` labels to apply).
    pub fn namespace(&self, ns: &str, labels: &[(&str, &str)]) -> i64 {
        let mut apply = serde_json::Map::new();
        apply.insert("pcns.projectcalico.org/name".into(), json!(ns));
        for (k, v) in labels {
            apply.insert(format!("pcns.{k}"), json!(v));
        }
        self.put(&json!({
            "kind": "Profile", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": format!("kns.{ns}")},
            "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                     "labelsToApply": apply}
        }))
    }

    /// TEST DOUBLE for kube-controllers: the service account's profile `ksa.<ns>.<sa>`.
    pub fn service_account(&self, ns: &str, sa: &str, labels: &[(&str, &str)]) -> i64 {
        let mut apply = serde_json::Map::new();
        apply.insert("pcsa.projectcalico.org/name".into(), json!(sa));
        for (k, v) in labels {
            apply.insert(format!("pcsa.{k}"), json!(v));
        }
        self.put(&json!({
            "kind": "Profile", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": format!("ksa.{ns}.{sa}")},
            "spec": {"labelsToApply": apply}
        }))
    }

    /// TEST DOUBLE for the Kubernetes pod's labels and service account reaching the
    /// endpoint: sets them (and the profiles `kns.<ns>`, `ksa.<ns>.<sa>`) on the endpoint
    /// the plugin wrote. `ports` are the pod's named container ports (name, protocol, port).
    pub fn label_pod(
        &self,
        pod: &Pod,
        labels: &[(&str, &str)],
        sa: &str,
        ports: &[(&str, &str, u16)],
    ) -> i64 {
        let raw = self
            .c
            .ctl()
            .get(&pod.wep_key)
            .expect("etcdctl get")
            .expect("the endpoint exists");
        let mut wep: Value = serde_json::from_str(&raw).expect("endpoint JSON");
        let meta_labels = wep["metadata"]["labels"]
            .as_object_mut()
            .expect("the plugin's labels");
        for (k, v) in labels {
            meta_labels.insert((*k).to_string(), json!(v));
        }
        meta_labels.insert("projectcalico.org/serviceaccount".into(), json!(sa));
        wep["spec"]["serviceAccountName"] = json!(sa);
        wep["spec"]["profiles"] = json!([
            format!("kns.{}", pod.namespace),
            format!("ksa.{}.{sa}", pod.namespace)
        ]);
        if !ports.is_empty() {
            wep["spec"]["ports"] = Value::Array(
                ports
                    .iter()
                    .map(|(n, p, port)| {
                        json!({"name": n, "protocol": p, "port": port, "hostPort": 0, "hostIP": ""})
                    })
                    .collect(),
            );
        }
        self.put_raw(&pod.wep_key, &wep.to_string())
    }

    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("--- node-{} ---\n{}", i + 1, a.log()))
            .collect()
    }
}

fn revision(etcdctl_json: &str) -> i64 {
    let v: Value = serde_json::from_str(etcdctl_json).expect("etcdctl JSON");
    v["header"]["revision"].as_i64().expect("a revision")
}

pub fn plural(kind: &str) -> &'static str {
    match kind {
        "NetworkPolicy" => "networkpolicies",
        "GlobalNetworkPolicy" => "globalnetworkpolicies",
        "Tier" => "tiers",
        "NetworkSet" => "networksets",
        "GlobalNetworkSet" => "globalnetworksets",
        "Profile" => "profiles",
        "FelixConfiguration" => "felixconfigurations",
        "WorkloadEndpoint" => "workloadendpoints",
        other => panic!("no plural for {other}"),
    }
}

fn pod_opts(ns: &str, name: &str) -> CallOpts {
    CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"
        )),
        container_id: Some(format!("{ns}-{name}-{}", std::process::id())),
        ..CallOpts::default()
    }
}

pub struct Pod {
    pub netns: NetNs,
    pub node: usize,
    pub namespace: String,
    pub name: String,
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    pub wep_key: String,
}

impl Pod {
    /// The libcni options this pod was added with (for its DEL).
    pub fn opts(&self) -> CallOpts {
        pod_opts(&self.namespace, &self.name)
    }

    pub fn v4(&self) -> IpAddr {
        self.v4.expect("an IPv4 address")
    }

    pub fn v6(&self) -> IpAddr {
        self.v6.expect("an IPv6 address")
    }
}

/// Listeners in a pod: TCP ports accept and close; UDP ports echo. Closed on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    /// Duplicates of the sockets' descriptors: shutting one down wakes its thread.
    fds: Vec<OwnedFd>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    /// Listens on `tcp` and `udp` ports on every address of the pod (both families).
    pub fn start(pod: &Pod, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut fds = Vec::new();
        let mut threads = Vec::new();
        let addrs: Vec<IpAddr> = [pod.v4, pod.v6].into_iter().flatten().collect();
        for addr in &addrs {
            for port in tcp {
                let sa = SocketAddr::new(*addr, *port);
                let l = pod
                    .netns
                    .within(|| TcpListener::bind(sa))
                    .expect("into the pod")
                    .expect("a TCP listener");
                fds.push(OwnedFd::from(l.try_clone().expect("a duplicate")));
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match l.accept() {
                            Ok((mut s, _)) => {
                                let _ = s.write_all(b"hi");
                            }
                            Err(_) => break,
                        }
                    }
                }));
            }
            for port in udp {
                let sa = SocketAddr::new(*addr, *port);
                let s = pod
                    .netns
                    .within(|| UdpSocket::bind(sa))
                    .expect("into the pod")
                    .expect("a UDP socket");
                fds.push(OwnedFd::from(s.try_clone().expect("a duplicate")));
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::SeqCst) {
                        match s.recv_from(&mut buf) {
                            Ok((n, from)) if n > 0 => {
                                let _ = s.send_to(&buf[..n], from);
                            }
                            _ => break,
                        }
                    }
                }));
            }
        }
        Servers { stop, fds, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for fd in &self.fds {
            // Wakes the blocked accept/recv: the duplicate shares the socket.
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` in `netns` and records the peer address of every connection (to see
/// what source address traffic arrives with).
pub struct PeerRecorder {
    pub peers: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    _servers: Servers,
}

impl PeerRecorder {
    pub fn start(netns: &NetNs, addr: SocketAddr) -> PeerRecorder {
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let l = netns
            .within(|| TcpListener::bind(addr))
            .expect("into the namespace")
            .expect("a TCP listener");
        let fds = vec![OwnedFd::from(l.try_clone().expect("a duplicate"))];
        let (p, st) = (peers.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        p.lock().expect("peers").push(peer);
                        let _ = s.write_all(b"hi");
                    }
                    Err(_) => break,
                }
            }
        });
        PeerRecorder {
            peers,
            _servers: Servers {
                stop,
                fds,
                threads: vec![t],
            },
        }
    }
}

/// Whether a TCP connection from `from` to `to:port` is accepted (and says hi).
pub fn tcp(from: &Pod, to: IpAddr, port: u16, within: Duration) -> bool {
    from.netns
        .within(|| {
            let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(to, port), within) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(within));
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).is_ok() && &buf == b"hi"
        })
        .expect("into the pod")
}

/// Whether a UDP datagram from `from` to `to:port` is echoed back.
pub fn udp(from: &Pod, to: IpAddr, port: u16, within: Duration) -> bool {
    from.netns
        .within(|| {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("an address")
            } else {
                "[::]:0".parse().expect("an address")
            };
            let Ok(s) = UdpSocket::bind(any) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(within));
            if s.send_to(b"ping", SocketAddr::new(to, port)).is_err() {
                return false;
            }
            let mut buf = [0u8; 8];
            matches!(s.recv_from(&mut buf), Ok((4, _)))
        })
        .expect("into the pod")
}

/// Whether one ICMP echo from `from` to `to` is answered.
pub fn ping(from: &Pod, to: IpAddr) -> bool {
    let out = from
        .netns
        .run("busybox", ["ping", "-c1", "-W1", &to.to_string()])
        .expect("busybox ping runs");
    out.status.success()
}

/// What a probe should find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

/// Probes `from → to` and returns whether it got through. An expected success is retried
/// for a while (the first packet of a new flow may race a neighbour entry); an expected
/// failure is probed once, after the rules are known to be in place.
pub fn probe(from: &Pod, to: IpAddr, what: Proto, expect: bool) -> bool {
    let once = |t: Duration| match what {
        Proto::Tcp(p) => tcp(from, to, p, t),
        Proto::Udp(p) => udp(from, to, p, t),
        Proto::Icmp => ping(from, to),
    };
    if expect {
        eventually(Duration::from_secs(5), || once(Duration::from_millis(500)))
    } else {
        once(DENIED_AFTER)
    }
}

/// Asserts a whole matrix of (from, to address, what, expected), reporting every mismatch.
pub fn assert_matrix(lab: &Lab, cases: &[(&Pod, IpAddr, Proto, bool)]) {
    let mut wrong = Vec::new();
    for (from, to, what, expect) in cases {
        let got = probe(from, *to, *what, *expect);
        if got != *expect {
            wrong.push(format!(
                "{} -> {to} {what:?}: expected {}, got {}",
                from.name,
                if *expect { "through" } else { "blocked" },
                if got { "through" } else { "blocked" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "connectivity differs:\n{}\n{}",
        wrong.join("\n"),
        lab.logs()
    );
}

impl Servers {
    /// A TCP listener on `addr` in a node's own namespace (the host of its pods).
    pub fn on_node(netns: &NetNs, addr: IpAddr, tcp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut fds = Vec::new();
        let mut threads = Vec::new();
        for port in tcp {
            let sa = SocketAddr::new(addr, *port);
            let l = netns
                .within(|| TcpListener::bind(sa))
                .expect("into the node")
                .expect("a TCP listener");
            fds.push(OwnedFd::from(l.try_clone().expect("a duplicate")));
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(b"hi");
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        Servers { stop, fds, threads }
    }
}
