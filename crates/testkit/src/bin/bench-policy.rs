//! The driver of `scripts/bench-policy` (issue 14 §6): the policy agent (`calico-node run`,
//! after `calico-node startup`, on a simulated node of a [`Cluster`]) at the scale,
//! measured in one run:
//!
//! - the scale: `--local` real pods on the node under test, added through libcni (the seed
//!   conflist), and the rest of `--endpoints` written to etcd as other nodes'
//!   WorkloadEndpoints; `--policies` NetworkPolicies, each selecting the local endpoints of
//!   one `app` label (so every local endpoint is selected by `--per-endpoint` policies and
//!   every policy is active on the node) and allowing, in and out, a selector of its own that
//!   matches about `--set-members` remote endpoints (`peer == 'p<i>' || band == 'b<j>'`: as
//!   many distinct selector sets as policies). The agent's own counts are printed to prove
//!   the active set.
//! - `flip`: a probe policy (ordered after the load policies, so a probe packet walks the
//!   load policies' chains first) turned Allow → Deny → Allow ... on a probe pod pair, until
//!   enforced: from the write's commit (as an `etcdctl watch` sees it; the agent sees the
//!   same event) to the first fresh probe flow with the new verdict. The prober sends a UDP
//!   echo from a new source port every 0.5 ms (a fresh conntrack flow each; ports cycle
//!   sequentially over 40,000 and the node's UDP conntrack timeouts are shortened so that a
//!   port's old entry is gone before it is used again); a probe with no echo within 5 ms is
//!   denied. The flip time is the first probe of the run of new verdicts that follows the
//!   last old one (a late echo counts against us).
//! - `newpod`: a WorkloadEndpoint written for a pre-made `cali*` veth (the CNI ADD itself is
//!   not timed) until its status file exists (the agent writes it after the rules are in).
//! - `cold`: the agent started with everything in etcd until programmed (first apply done
//!   and every local endpoint's status file written): once on a node without the table,
//!   then `--restarts` times over the table of the previous run.
//! - `path`: fresh TCP connects (connect() time, the first packet's round trip) and iperf3
//!   throughput between the probe pair, in five variants: everything loaded (the agent
//!   running); the same node with no policy (`profiles`: the agent's own table for this
//!   node, dumped before any policy was written and restored with `nft -f`: every endpoint
//!   falls to its namespace profile); no table at all (the agent stopped and the table
//!   `inet calico` deleted); conntrack only; and conntrack with a natOutgoing chain like
//!   the agent's (so the policies' own share shows apart from what connection tracking and
//!   NAT cost any node). Every round measures each variant once, in an order that rotates
//!   (each variant first in turn, then reversed); the ratios are paired within a round and
//!   the figure is their median over rounds, so load drifting on a shared machine moves
//!   both sides of a ratio and one disturbed round does not decide. After the agent's
//!   restart the path is measured once the agent is idle (the kernel frees the replaced
//!   table after the commit). iperf3 omits its first second (slow start).
//! - `path`, interleaved: under the loaded, no-policy and no tables, the probe pair beside a
//!   second pair on the same node that no policy selects (`npod0`, `npod1`: two local pods
//!   beyond `--local`), their connects interleaved one by one. The connect target
//!   is read here: the pooled p99 of the probe pair over the other pair's with everything
//!   loaded, a Calico node's pods with policies against its pods without, measured at the
//!   same moments (the rounds above, minutes apart, differ at a p99 by more than the
//!   policies cost; against no table they show what connection tracking costs any node).
//!   Under the two other tables the pairs differ by nothing: the control.
//! - RSS of the agent at that scale, its CPU over an idle period, its CPU per policy change
//!   and the kernel time per apply (`calico_node_policy_apply_duration_seconds`).
//!
//! Everything made is removed when the fixtures drop, on failure and on SIGTERM too.
//! Usage: see `scripts/bench-policy --help`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use testkit::{Agent, CallOpts, Cluster, NetNs};

const NET: &str = "k8s-pod-network";
const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";
const NS: &str = "bench";
const NODE: &str = "node-1";
const POOL: &str = "10.244.0.0/16";
/// Remote endpoints' addresses (not in any pool: only selector sets hold them).
const REMOTE_BASE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The new-pod benchmark's endpoints.
const NEWPOD_BASE: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const REMOTE_NODES: usize = 50;
const PROBE_POLICY: &str = "default.probe";
/// Two local pods beyond `--local` that no policy selects: the server and the client of
/// the no-policy pair.
const PLAIN_PAIR: [&str; 2] = ["npod0", "npod1"];
const TCP_PORT: u16 = 7777;
const UDP_PORT: u16 = 7778;
const IPERF_PORT: u16 = 5201;
/// Linux's USER_HZ (the unit of /proc/<pid>/stat times).
const CLOCK_TICKS: f64 = 100.0;
const PROBE_EVERY: Duration = Duration::from_micros(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
struct Args {
    local: usize,
    endpoints: usize,
    policies: usize,
    per_endpoint: usize,
    set_members: usize,
    flips: usize,
    new_pods: usize,
    restarts: usize,
    rounds: usize,
    connects: usize,
    iperf_seconds: u64,
    idle_seconds: u64,
    json: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            local: 200,
            endpoints: 10_000,
            policies: 2000,
            per_endpoint: 10,
            set_members: 100,
            flips: 200,
            new_pods: 100,
            restarts: 2,
            rounds: 6,
            connects: 1000,
            iperf_seconds: 5,
            idle_seconds: 10,
            json: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--local" => a.local = value()?.parse()?,
                "--endpoints" => a.endpoints = value()?.parse()?,
                "--policies" => a.policies = value()?.parse()?,
                "--per-endpoint" => a.per_endpoint = value()?.parse()?,
                "--set-members" => a.set_members = value()?.parse()?,
                "--flips" => a.flips = value()?.parse()?,
                "--new-pods" => a.new_pods = value()?.parse()?,
                "--restarts" => a.restarts = value()?.parse()?,
                "--rounds" => a.rounds = value()?.parse()?,
                "--connects" => a.connects = value()?.parse()?,
                "--iperf-seconds" => a.iperf_seconds = value()?.parse()?,
                "--idle-seconds" => a.idle_seconds = value()?.parse()?,
                "--json" => a.json = Some(value()?),
                other => bail!("unknown argument {other:?} (see scripts/bench-policy --help)"),
            }
        }
        if a.local < 2 || a.endpoints < a.local || a.policies < 1 || a.per_endpoint < 1 {
            bail!("need --local >= 2, --endpoints >= --local, --policies and --per-endpoint >= 1");
        }
        Ok(a)
    }

    /// Distinct `app` labels: each is selected by `per_endpoint` policies.
    fn apps(&self) -> usize {
        (self.policies / self.per_endpoint).max(1)
    }

    fn remote(&self) -> usize {
        self.endpoints - self.local
    }

    /// Distinct `band` labels among remote endpoints (`set_members` endpoints each).
    fn bands(&self) -> usize {
        (self.remote() / self.set_members.max(1)).max(1)
    }
}

// ---------------------------------------------------------------------------------------
// Interruption, statistics, processes.

fn interrupted() -> bool {
    testkit::process::sigterm_flag().load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Nearest-rank percentile of `v`.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s.get(rank.min(s.len()) - 1).copied()
}

fn stats_ms(v: &[f64]) -> Value {
    let p = |q: f64| percentile(v, q).map(|x| (x * 1e4).round() / 1e4);
    json!({
        "n": v.len(),
        "p50_ms": p(50.0),
        "p99_ms": p(99.0),
        "max_ms": p(100.0),
        "min_ms": p(0.0),
    })
}

fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("a value")?.parse()?)
}

/// The whole machine's non-idle CPU time (`/proc/stat`: everything but idle and iowait), in
/// clock ticks.
fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat's cpu line")?;
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok(fields.iter().sum::<u64>().saturating_sub(idle))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').context("stat without comm")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn sleep_checked(d: Duration) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        check_interrupted()?;
        std::thread::sleep((d - t0.elapsed()).min(Duration::from_millis(100)));
    }
    Ok(())
}

/// `perf record` of `pid` into `$BENCH_POLICY_PERF/<name>.data` while it lives (when that
/// variable names a directory): where the agent's time goes. Stopped (SIGINT) on drop.
struct Profile(Option<Child>);

impl Profile {
    fn start(pid: u32, name: &str) -> Profile {
        let Some(dir) = std::env::var_os("BENCH_POLICY_PERF") else {
            return Profile(None);
        };
        let out = PathBuf::from(dir).join(format!("{name}.data"));
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Profile(child)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let Some(c) = &mut self.0 else {
            return;
        };
        // A SIGINT that arrives while perf is still starting is lost (seen with --flips 0:
        // perf kept recording and the driver waited for it forever), so it is repeated
        // until perf exits; after 10 s it is killed.
        let t0 = Instant::now();
        while let Ok(None) = c.try_wait() {
            let signal = if t0.elapsed() < Duration::from_secs(10) {
                nix::sys::signal::Signal::SIGINT
            } else {
                nix::sys::signal::Signal::SIGKILL
            };
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------
// etcd.

fn revision(etcdctl_json: &str) -> Result<i64> {
    let v: Value = serde_json::from_str(etcdctl_json).context("etcdctl JSON")?;
    v["header"]["revision"].as_i64().context("a revision")
}

fn put(c: &Cluster, key: &str, value: &str) -> Result<i64> {
    revision(&c.ctl().run(&["put", key, value, "-w", "json"])?)
}

fn del(c: &Cluster, key: &str) -> Result<i64> {
    revision(&c.ctl().run(&["del", key, "-w", "json"])?)
}

/// Writes `(key, value)` pairs in etcd transactions of 1000 (`etcdctl txn`).
fn txn_put(c: &Cluster, kvs: &[(String, String)]) -> Result<()> {
    for chunk in kvs.chunks(1000) {
        check_interrupted()?;
        let mut script = String::from("\n");
        for (k, v) in chunk {
            // Go's %q reads what Rust's Debug writes for these ASCII strings.
            script.push_str(&format!("put {k:?} {v:?}\n"));
        }
        script.push_str("\n\n");
        let mut child = c
            .ctl()
            .command()?
            .arg("txn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("etcdctl txn")?;
        child
            .stdin
            .take()
            .context("etcdctl stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.starts_with("SUCCESS") {
            bail!(
                "etcdctl txn: {} {}",
                stdout.lines().next().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// `etcdctl watch --prefix` on the resources: when each write was seen, as a client of etcd
/// sees it (the agent's watch sees the same events at the same time).
struct CommitWatch {
    child: Child,
    seen: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    reader: Option<JoinHandle<()>>,
}

impl CommitWatch {
    fn start(c: &Cluster) -> Result<CommitWatch> {
        let mut child = c
            .ctl()
            .command()?
            .args(["watch", "--prefix", RESOURCES])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("etcdctl watch")?;
        let stdout = child.stdout.take().context("etcdctl watch stdout")?;
        let seen: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let record = seen.clone();
        let reader = std::thread::spawn(move || {
            // Events come as `PUT` key value, or `DELETE` key (and an empty value line).
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(op)) = lines.next() {
                let at = Instant::now();
                if op != "PUT" && op != "DELETE" {
                    continue;
                }
                let (Some(Ok(key)), Some(Ok(_))) = (lines.next(), lines.next()) else {
                    break;
                };
                if let Ok(mut m) = record.lock() {
                    m.entry(key).or_default().push(at);
                }
            }
        });
        let w = CommitWatch {
            child,
            seen,
            reader: Some(reader),
        };
        // Established once a sentinel write comes back.
        let sentinel = format!("{RESOURCES}bench-sentinel");
        let t0 = Instant::now();
        loop {
            check_interrupted()?;
            c.etcd.put(&sentinel, "x")?;
            if w.count(&sentinel) > 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("etcdctl watch saw nothing");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c.etcd.delete_prefix(&sentinel)?;
        Ok(w)
    }

    fn count(&self, key: &str) -> usize {
        self.seen
            .lock()
            .map(|m| m.get(key).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Waits until `key` has been seen written more than `before` times; when it was.
    fn wait(&self, key: &str, before: usize) -> Result<Instant> {
        let t0 = Instant::now();
        loop {
            if let Some(t) = self
                .seen
                .lock()
                .ok()
                .and_then(|m| m.get(key).and_then(|v| v.get(before).copied()))
            {
                return Ok(t);
            }
            check_interrupted()?;
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the watch never saw {key} written");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for CommitWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The node, its pods and its agent.

fn startup(c: &Cluster) -> Result<()> {
    let bin = testkit::bins::calico_node()?;
    let out = c
        .node(0)
        .command(&bin)?
        .arg("startup")
        .env("NODENAME", NODE)
        .env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
        .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
        .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
        .env("IP", "autodetect")
        .env("IP_AUTODETECTION_METHOD", "interface=eth0")
        .env("CALICO_IPV4POOL_CIDR", POOL)
        .env("CALICO_IPV4POOL_IPIP", "Never")
        .env("CALICO_IPV4POOL_VXLAN", "Never")
        .output()?;
    if !out.status.success() {
        bail!(
            "calico-node startup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The agent on the node: policy on (or off for the setup phase), no route distribution
/// (one node: nothing to distribute; keeps the measurement to policy).
fn start_agent(c: &Cluster, policy: bool) -> Result<Agent> {
    let level = std::env::var("BENCH_POLICY_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let mut env = vec![
        ("NODENAME", NODE),
        ("CALICO_NETWORKING_BACKEND", "none"),
        ("LOG_LEVEL", level.as_str()),
    ];
    if !policy {
        env.push(("CALICO_DISABLE_POLICY", "true"));
    }
    Agent::on_node_with(c, 0, &env)
}

fn metric(text: &str, name: &str) -> f64 {
    testkit::agent::sum(text, name, &[])
}

struct LocalPod {
    netns: Arc<NetNs>,
    ip: Ipv4Addr,
}

fn add_pod(c: &Cluster, name: &str) -> Result<LocalPod> {
    let netns = NetNs::new(name)?;
    let opts = CallOpts {
        cni_args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name}"
        )),
        container_id: Some(format!("{NS}-{name}-{}", std::process::id())),
        ..CallOpts::default()
    };
    let result = c
        .runtime(0)
        .add(NET, &netns.path(), &opts)?
        .map_err(|e| anyhow::anyhow!("ADD {name}: {e:?}"))?;
    let ip = testkit::result_ips(&result)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .context("an IPv4 address")?;
    Ok(LocalPod {
        netns: Arc::new(netns),
        ip,
    })
}

fn wep_name(node: &str, pod: &str) -> String {
    format!("{node}-k8s-{pod}-eth0")
}

fn wep_key(name: &str) -> String {
    format!("{RESOURCES}workloadendpoints/{NS}/{name}")
}

fn policy_key(name: &str) -> String {
    format!("{RESOURCES}networkpolicies/{NS}/{name}")
}

/// A WorkloadEndpoint like `template` (one the plugin wrote) for another pod.
#[allow(clippy::too_many_arguments)]
fn wep_from(
    template: &Value,
    node: &str,
    pod: &str,
    iface: &str,
    ip: Ipv4Addr,
    labels: &[(String, String)],
) -> Value {
    let mut w = template.clone();
    w["metadata"]["name"] = json!(wep_name(node, pod));
    if let Some(m) = w["metadata"].as_object_mut() {
        m.remove("uid");
        m.remove("resourceVersion");
    }
    let meta_labels = &mut w["metadata"]["labels"];
    if !meta_labels.is_object() {
        *meta_labels = json!({});
    }
    for (k, v) in labels {
        meta_labels[k] = json!(v);
    }
    w["spec"]["node"] = json!(node);
    w["spec"]["pod"] = json!(pod);
    w["spec"]["containerID"] = json!(format!("bench-{node}-{pod}"));
    w["spec"]["interfaceName"] = json!(iface);
    w["spec"]["ipNetworks"] = json!([format!("{ip}/32")]);
    w["spec"]["profiles"] = json!([format!("kns.{NS}")]);
    w
}

fn add_ip(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n as u32)
}

fn load_policy(i: usize, args: &Args) -> Value {
    let peers = format!("peer == 'p{i}' || band == 'b{}'", i % args.bands());
    let port = 10_000 + (i % 1000) as u16;
    json!({
        "kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": format!("default.load-{i}"), "namespace": NS},
        "spec": {
            "order": 100,
            "selector": format!("app == 'a{}'", i % args.apps()),
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "protocol": "TCP",
                         "source": {"selector": peers.clone()},
                         "destination": {"ports": [port]}}],
            "egress": [{"action": "Allow", "protocol": "TCP",
                        "destination": {"selector": peers, "ports": [port]}}],
        }
    })
}

/// The packet-path variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The agent running with everything loaded.
    Loaded,
    /// The agent's own table for the same node with no policy in the datastore (every
    /// endpoint falls to its namespace profile), restored with `nft -f`, no agent running:
    /// the pair as a Calico node carries it with no policy.
    Profiles,
    /// No agent, no table.
    NoPolicy,
    /// No agent; a table tracking connections only.
    ConntrackOnly,
    /// No agent; connection tracking and a natOutgoing masquerade chain shaped like the
    /// agent's (what a node pays for NAT whatever enforces policy: kube-proxy's nat chains
    /// cost every new connection the same null binding).
    ConntrackNat,
}

impl Variant {
    fn key(self) -> &'static str {
        match self {
            Variant::Loaded => "loaded",
            Variant::Profiles => "profiles",
            Variant::NoPolicy => "none",
            Variant::ConntrackOnly => "ct_only",
            Variant::ConntrackNat => "ct_nat",
        }
    }
}

/// The probe pair's policy: after the load policies (order 1000), ingress `action` from the
/// pair, egress allowed.
fn probe_policy(action: &str) -> Value {
    json!({
        "kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": PROBE_POLICY, "namespace": NS},
        "spec": {
            "order": 1000,
            "selector": "probe == 'pair'",
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": action, "source": {"selector": "probe == 'pair'"}}],
            "egress": [{"action": "Allow"}],
        }
    })
}

/// Listeners in the server pod: TCP accepts and closes, UDP echoes. Closed on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    fds: Vec<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(pod: &LocalPod) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = pod
            .netns
            .within(|| TcpListener::bind(SocketAddr::new(pod.ip.into(), TCP_PORT)))??;
        let udp = pod
            .netns
            .within(|| UdpSocket::bind(SocketAddr::new(pod.ip.into(), UDP_PORT)))??;
        // The TCP listener is woken by a shutdown of its duplicate; the UDP socket polls the
        // stop flag (a shutdown makes std's recv_from panic on the empty address).
        let fds = vec![OwnedFd::from(tcp.try_clone()?)];
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::SeqCst) {
                if tcp.accept().is_err() {
                    break;
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::SeqCst) {
                match udp.recv_from(&mut buf) {
                    Ok((n, from)) if n > 0 => {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Servers {
            stop,
            fds,
            threads: vec![t1, t2],
        })
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

/// Fresh UDP flows from the client to the server's echo, one every [`PROBE_EVERY`]: each
/// probe's send time and whether its echo came within [`PROBE_TIMEOUT`].
struct Prober {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(client: &LocalPod, server: Ipv4Addr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
        let (stop2, log2, ns, from) = (stop.clone(), log.clone(), client.netns.clone(), client.ip);
        let thread = std::thread::spawn(move || {
            let run = || {
                let to = SocketAddr::new(server.into(), UDP_PORT);
                let mut pending: VecDeque<(Instant, UdpSocket)> = VecDeque::new();
                let mut next = Instant::now();
                let mut port: u16 = 0;
                let mut done: Vec<(Instant, bool)> = Vec::new();
                let mut buf = [0u8; 16];
                while !stop2.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= next {
                        next = (next + PROBE_EVERY).max(now);
                        // Sequential source ports: a port comes back only after 40,000
                        // probes, long after its conntrack entry expired.
                        port = (port + 1) % 40_000;
                        if let Ok(s) = UdpSocket::bind(SocketAddr::new(from.into(), 20_000 + port))
                            && s.set_nonblocking(true).is_ok()
                        {
                            let sent = Instant::now();
                            if s.send_to(b"probe", to).is_ok() {
                                pending.push_back((sent, s));
                            }
                        }
                    }
                    let now = Instant::now();
                    pending.retain(|(sent, s)| match s.recv_from(&mut buf) {
                        Ok(_) => {
                            done.push((*sent, true));
                            false
                        }
                        Err(_) if now.duration_since(*sent) > PROBE_TIMEOUT => {
                            done.push((*sent, false));
                            false
                        }
                        Err(_) => true,
                    });
                    if !done.is_empty()
                        && let Ok(mut l) = log2.lock()
                    {
                        l.append(&mut done);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            };
            let _ = ns.within(run);
        });
        Prober {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<(Instant, bool)> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until the probes settle on `want` after `commit`: the send time of the first probe
/// of the run of `want` verdicts that follows the last other one (settled once that run
/// holds 20 probes and 20 ms).
fn wait_verdict(prober: &Prober, want: bool, commit: Instant) -> Result<Duration> {
    let mut seen: Vec<(Instant, bool)> = Vec::new();
    let t0 = Instant::now();
    loop {
        check_interrupted()?;
        seen.extend(prober.take());
        seen.sort_by_key(|(t, _)| *t);
        let last_other = seen.iter().rposition(|(_, v)| *v != want);
        let run = &seen[last_other.map_or(0, |i| i + 1)..];
        if let (Some(first), Some(last)) = (run.first(), run.last())
            && run.len() >= 20
            && last.0.duration_since(first.0) >= Duration::from_millis(20)
        {
            return Ok(first.0.saturating_duration_since(commit));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!(
                "the probes never settled on {}",
                if want { "allowed" } else { "denied" }
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark.

struct Bench<'a> {
    args: &'a Args,
    c: Cluster,
    pods: Vec<LocalPod>,
    status_dir: PathBuf,
    /// The status file name of local pod `lpod0`, to derive others' from.
    status_name_lpod0: Option<String>,
    /// lpod0's endpoint as the plugin wrote it (relabelled): the new pods' template.
    template: Value,
    /// RSS (KiB) of `calico-node run` with policy off, after the pods were added.
    rss_policy_off: u64,
    /// The agent's table (`nft list table inet calico`) with no policy in the datastore:
    /// [`Variant::Profiles`].
    profiles_table: String,
}

impl Bench<'_> {
    fn server(&self) -> &LocalPod {
        &self.pods[0]
    }

    fn client(&self) -> &LocalPod {
        &self.pods[1]
    }

    /// The no-policy pair's server and client (added after the `--local` pods).
    fn plain_server(&self) -> &LocalPod {
        &self.pods[self.args.local]
    }

    fn plain_client(&self) -> &LocalPod {
        &self.pods[self.args.local + 1]
    }

    fn status_files(&self) -> usize {
        std::fs::read_dir(&self.status_dir).map_or(0, |d| d.count())
    }

    /// Starts the agent and waits until it is programmed: synced, the rules at etcd's
    /// current revision and every local endpoint's status file written.
    fn cold_start(&self) -> Result<(Agent, Duration)> {
        let rev = revision(&self.c.ctl().run(&["get", "x", "-w", "json"])?)?;
        let t0 = Instant::now();
        let agent = start_agent(&self.c, true)?;
        let _profile = Profile::start(agent.pid(), "cold");
        loop {
            check_interrupted()?;
            if let Ok(m) = agent.metrics()
                && metric(&m, "calico_node_policy_synced") >= 1.0
                && metric(&m, "calico_node_policy_applied_revision") >= rev as f64
                && metric(&m, "calico_node_policy_endpoint_status_files") >= self.pods.len() as f64
            {
                let took = t0.elapsed();
                let log = agent.log();
                if let Some(line) = log.lines().find(|l| l.contains("first apply done in")) {
                    eprintln!("bench-policy: cold start {took:?}; the agent: {line}");
                }
                // The agent's own account of the phases (listed, read, rendered, in the
                // kernel, status files), with its RSS after each.
                for line in log.lines().filter(|l| l.contains("MiB")) {
                    eprintln!("bench-policy:   {line}");
                }
                let files = self.status_files();
                if files < self.pods.len() {
                    bail!("the agent says programmed but only {files} status files exist");
                }
                return Ok((agent, took));
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("not programmed after 120 s: {}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The comparison tables: conntrack only (the cost of tracking every flow, without
    /// policy), or (`nat`) with the agent's natOutgoing chain (its priority, its rule, the
    /// pool in both sets) beside it.
    fn add_ct_table(&self, nat: bool) -> Result<()> {
        self.c.node(0).sh(
            "nft add table inet benchct && \
             nft add chain inet benchct forward '{ type filter hook forward priority 0; policy accept; }' && \
             nft add rule inet benchct forward ct state established,related accept",
        )?;
        if nat {
            self.c.node(0).sh(&format!(
                "nft add set inet benchct masq '{{ type ipv4_addr; flags interval; elements = {{ {POOL} }}; }}' && \
                 nft add set inet benchct pools '{{ type ipv4_addr; flags interval; elements = {{ {POOL} }}; }}' && \
                 nft add chain inet benchct postrouting '{{ type nat hook postrouting priority 110; policy accept; }}' && \
                 nft add rule inet benchct postrouting meta nfproto ipv4 ip saddr @masq ip daddr != @pools masquerade"
            ))?;
        }
        Ok(())
    }

    fn delete_ct_table(&self) -> Result<()> {
        self.c.node(0).sh(
            "nft list tables | grep -q 'inet benchct' && nft delete table inet benchct || true",
        )?;
        Ok(())
    }

    /// [`Variant::Profiles`]: the agent's no-policy table, restored.
    fn add_profiles_table(&self) -> Result<()> {
        const FILE: &str = "/var/lib/calico/bench-profiles.nft";
        let node = self.c.node(0);
        std::fs::write(node.host_path(FILE)?, &self.profiles_table)?;
        node.sh(&format!("nft -f {FILE}"))?;
        Ok(())
    }

    fn delete_table(&self) -> Result<()> {
        self.c.node(0).sh("nft delete table inet calico")?;
        let left = self.c.node(0).sh("nft list tables")?;
        if left.contains("inet calico") {
            bail!("the table inet calico is still there");
        }
        Ok(())
    }
}

fn setup(args: &Args) -> Result<Bench<'_>> {
    let c = Cluster::start_bare(1, &[])?;
    startup(&c)?;
    let t0 = Instant::now();
    // The plugin's requests are served by the agent (policy off while pods are added).
    let setup_agent = start_agent(&c, false)?;
    let mut conf = testkit::cluster::seed_without_kubernetes()?;
    conf["cniVersion"] = json!("1.0.0");
    conf["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    c.install(0, &conf)?;
    let mut pods = Vec::new();
    for j in 0..args.local {
        check_interrupted()?;
        pods.push(add_pod(&c, &format!("lpod{j}"))?);
        if (j + 1) % 50 == 0 {
            eprintln!(
                "bench-policy: {} local pods added ({:.0} s)",
                j + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    // Beside the probe pair, a pair no policy selects (see `interleaved_times`).
    for name in PLAIN_PAIR {
        pods.push(add_pod(&c, name)?);
    }
    // The same daemon with policy off: what the policy agent's memory adds to.
    let rss_policy_off = rss_kib(setup_agent.pid(), "VmRSS:")?;
    drop(setup_agent);
    // Labels on the local endpoints (as Kubernetes pod labels reach them) and the remote
    // endpoints, the namespace profile and the policies.
    let local_weps = c
        .ctl()
        .get_prefix(&format!("{RESOURCES}workloadendpoints/{NS}/"))?;
    let template: Value = serde_json::from_str(
        &local_weps
            .iter()
            .find(|(_, v)| v.contains("\"pod\":\"lpod0\""))
            .context("the plugin wrote no endpoint for lpod0")?
            .1,
    )?;
    let mut kvs = Vec::new();
    for (key, raw) in &local_weps {
        let mut w: Value = serde_json::from_str(raw)?;
        let pod = w["spec"]["pod"].as_str().context("a pod name")?.to_string();
        match pod.strip_prefix("lpod") {
            Some(j) => {
                let j: usize = j.parse()?;
                w["metadata"]["labels"]["app"] = json!(format!("a{}", j % args.apps()));
                if j < 2 {
                    w["metadata"]["labels"]["probe"] = json!("pair");
                }
            }
            // The no-policy pair: no policy selects it; its namespace profile allows.
            None => w["metadata"]["labels"]["app"] = json!("unselected"),
        }
        w["spec"]["profiles"] = json!([format!("kns.{NS}")]);
        kvs.push((key.clone(), w.to_string()));
    }
    kvs.push((
        format!("{RESOURCES}profiles/kns.{NS}"),
        json!({"kind": "Profile", "apiVersion": "projectcalico.org/v3",
               "metadata": {"name": format!("kns.{NS}")},
               "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                        "labelsToApply": {"pcns.projectcalico.org/name": NS}}})
        .to_string(),
    ));
    for r in 0..args.remote() {
        let node = format!("node-r{}", r % REMOTE_NODES);
        let pod = format!("rpod{r}");
        let labels = [
            ("app".to_string(), format!("a{}", r % args.apps())),
            ("peer".to_string(), format!("p{}", r % args.policies)),
            ("band".to_string(), format!("b{}", r % args.bands())),
        ];
        let w = wep_from(
            &template,
            &node,
            &pod,
            &format!("cali{r:011}"),
            add_ip(REMOTE_BASE, r),
            &labels,
        );
        kvs.push((wep_key(&wep_name(&node, &pod)), w.to_string()));
    }
    txn_put(&c, &kvs)?;
    let mut policies = Vec::new();
    for i in 0..args.policies {
        policies.push((
            policy_key(&format!("default.load-{i}")),
            load_policy(i, args).to_string(),
        ));
    }
    policies.push((policy_key(PROBE_POLICY), probe_policy("Allow").to_string()));
    // Fresh probe flows must never meet an old flow's conntrack entry (see the module doc).
    c.node(0)
        .sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout=2 \
         net.netfilter.nf_conntrack_udp_timeout_stream=2 2>/dev/null || true")?;
    let status_dir = c.node(0).host_path("/var/run/calico/endpoint-status")?;
    let mut b = Bench {
        args,
        c,
        pods,
        status_dir,
        status_name_lpod0: None,
        template,
        rss_policy_off,
        profiles_table: String::new(),
    };
    // The node as the agent programs it before any policy exists (the baseline "no
    // policy" of a Calico node); the table goes again, so the cold start below starts on a
    // node without one.
    let (agent, _) = b.cold_start()?;
    b.profiles_table = b.c.node(0).sh("nft list table inet calico")?;
    drop(agent);
    b.delete_table()?;
    txn_put(&b.c, &policies)?;
    eprintln!(
        "bench-policy: {} objects written ({:.0} s since start)",
        kvs.len() + policies.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(b)
}

/// The agent's counts and what the kernel's table holds (`nft -j`), to prove the scale.
fn scale_proof(b: &Bench, agent: &Agent) -> Result<Value> {
    let m = agent.metrics()?;
    let out = b.c.node(0).sh("nft -j list table inet calico")?;
    let v: Value = serde_json::from_str(&out).context("nft -j")?;
    let (mut sets, mut elems, mut chains, mut rules, mut maps) = (0, 0, 0, 0, 0);
    for o in v["nftables"].as_array().into_iter().flatten() {
        if let Some(s) = o.get("set") {
            sets += 1;
            elems += s["elem"].as_array().map_or(0, Vec::len);
        } else if let Some(m) = o.get("map") {
            maps += 1;
            elems += m["elem"].as_array().map_or(0, Vec::len);
        } else if o.get("chain").is_some() {
            chains += 1;
        } else if o.get("rule").is_some() {
            rules += 1;
        }
    }
    Ok(json!({
        "agent": {
            "local_endpoints": metric(&m, "calico_node_policy_local_endpoints"),
            "endpoints": metric(&m, "calico_node_policy_endpoints"),
            "active_policies_and_profiles": metric(&m, "calico_node_policy_active_policies"),
            "sets": metric(&m, "calico_node_policy_sets"),
            "rules": metric(&m, "calico_node_policy_rules"),
            "skipped_objects": metric(&m, "calico_node_policy_skipped_objects"),
            "status_files": metric(&m, "calico_node_policy_endpoint_status_files"),
        },
        "kernel": {"sets": sets, "maps": maps, "elements": elems, "chains": chains, "rules": rules},
        "status_files_on_disk": b.status_files(),
    }))
}

fn flips(b: &Bench, agent: &Agent) -> Result<Value> {
    let watch = CommitWatch::start(&b.c)?;
    let _servers = Servers::start(b.server())?;
    let prober = Prober::start(b.client(), b.server().ip);
    let key = policy_key(PROBE_POLICY);
    // The pair is allowed to start with.
    wait_verdict(&prober, true, Instant::now())?;
    let m0 = agent.metrics()?;
    let cpu0 = cpu_ticks(agent.pid())?;
    let profile = Profile::start(agent.pid(), "flip");
    let (mut to_deny, mut to_allow) = (Vec::new(), Vec::new());
    for n in 0..b.args.flips {
        check_interrupted()?;
        let allow = n % 2 == 1;
        let before = watch.count(&key);
        put(
            &b.c,
            &key,
            &probe_policy(if allow { "Allow" } else { "Deny" }).to_string(),
        )?;
        let commit = watch.wait(&key, before)?;
        let took = wait_verdict(&prober, allow, commit)?;
        if allow {
            to_allow.push(ms(took));
        } else {
            to_deny.push(ms(took));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(profile);
    let cpu1 = cpu_ticks(agent.pid())?;
    let m1 = agent.metrics()?;
    // With BENCH_POLICY_LOG_LEVEL=debug: how the last applies split (render, kernel).
    let log = agent.log();
    let splits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("changes rendered in"))
        .collect();
    for line in splits.iter().rev().take(5) {
        eprintln!("bench-policy:   {line}");
    }
    // Leave the pair allowed.
    if b.args.flips % 2 == 1 {
        let before = watch.count(&key);
        put(&b.c, &key, &probe_policy("Allow").to_string())?;
        let commit = watch.wait(&key, before)?;
        wait_verdict(&prober, true, commit)?;
    }
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    let applies = d("calico_node_policy_apply_duration_seconds_count");
    let apply_s = d("calico_node_policy_apply_duration_seconds_sum");
    let lag_n = d("calico_node_policy_sync_lag_seconds_count");
    let lag_s = d("calico_node_policy_sync_lag_seconds_sum");
    let all: Vec<f64> = to_deny.iter().chain(&to_allow).copied().collect();
    Ok(json!({
        "part": "flip",
        "all": stats_ms(&all),
        "allow_to_deny": stats_ms(&to_deny),
        "deny_to_allow": stats_ms(&to_allow),
        "applies": applies,
        "apply_mean_ms": (applies > 0.0).then(|| round3(apply_s / applies * 1e3)),
        "sync_lag_mean_ms": (lag_n > 0.0).then(|| round3(lag_s / lag_n * 1e3)),
        "agent_cpu_ms_per_change": round3((cpu1 - cpu0) as f64 / CLOCK_TICKS * 1e3 / b.args.flips.max(1) as f64),
    }))
}

fn new_pods(b: &mut Bench, agent: &Agent) -> Result<Value> {
    let n = b.args.new_pods;
    if n == 0 {
        return Ok(json!({"part": "newpod", "skipped": true}));
    }
    let watch = CommitWatch::start(&b.c)?;
    let lpod0 = match &b.status_name_lpod0 {
        Some(s) => s.clone(),
        None => bail!("no status file for lpod0"),
    };
    let template = b.template.clone();
    // Pre-made `cali*` veths (what the plugin would have made); the WEP is what is timed.
    let mut script = String::new();
    for k in 0..n {
        script.push_str(&format!(
            "link add calibn{k:05} type veth peer name bnp{k:05}\nlink set calibn{k:05} up\nlink set bnp{k:05} up\n"
        ));
    }
    ip_batch(&b.c, &script)?;
    let m0 = agent.metrics()?;
    let mut took = Vec::new();
    let mut rules_checked = false;
    for k in 0..n {
        check_interrupted()?;
        let pod = format!("newpod{k}");
        let file = b.status_dir.join(lpod0.replacen("lpod0", &pod, 1));
        let w = wep_from(
            &template,
            NODE,
            &pod,
            &format!("calibn{k:05}"),
            add_ip(NEWPOD_BASE, k),
            &[
                ("app".into(), format!("a{}", k % b.args.apps())),
                ("probe".into(), "none".into()),
            ],
        );
        let key = wep_key(&wep_name(NODE, &pod));
        let before = watch.count(&key);
        put(&b.c, &key, &w.to_string())?;
        let commit = watch.wait(&key, before)?;
        let t0 = Instant::now();
        while !file.exists() {
            check_interrupted()?;
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("no status file {} for {pod}", file.display());
            }
            std::thread::sleep(Duration::from_micros(250));
        }
        took.push(ms(Instant::now().saturating_duration_since(commit)));
        if !rules_checked {
            // Once: the interface is in the kernel's table when its file is there.
            let table = b.c.node(0).sh("nft list table inet calico")?;
            if !table.contains(&format!("calibn{k:05}")) {
                bail!("status file written but calibn{k:05} is not in the table");
            }
            rules_checked = true;
        }
        let before = watch.count(&key);
        del(&b.c, &key)?;
        watch.wait(&key, before)?;
        let t0 = Instant::now();
        while file.exists() {
            check_interrupted()?;
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("the status file of {pod} stays after its endpoint went");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let m1 = agent.metrics()?;
    let d = |name: &str| metric(&m1, name) - metric(&m0, name);
    let applies = d("calico_node_policy_apply_duration_seconds_count");
    let apply_s = d("calico_node_policy_apply_duration_seconds_sum");
    let _ = ip_batch(
        &b.c,
        &(0..n)
            .map(|k| format!("link del calibn{k:05}\n"))
            .collect::<String>(),
    );
    Ok(json!({
        "part": "newpod",
        "how": "WorkloadEndpoint written for a pre-made cali* veth → status file exists",
        "took": stats_ms(&took),
        "applies": applies,
        "apply_mean_ms": (applies > 0.0).then(|| round3(apply_s / applies * 1e3)),
    }))
}

/// `ip -batch -` on the node.
fn ip_batch(c: &Cluster, script: &str) -> Result<()> {
    let mut child = c
        .node(0)
        .command("ip")?
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("ip -batch")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Paced connects, one every 0.5-1.5 ms (pseudo-random, xorshift64, so that no periodic
/// disturbance locks onto them): back to back, 1,000 connects last ~30 ms, and one burst
/// of another process's work on this shared machine would fill a round's whole tail, so
/// its p99 would measure that burst. Spread over ~1 s, each round samples the machine's
/// noise as the other variants' rounds do.
struct Pacer {
    state: u64,
    next: Instant,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            state: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
            next: Instant::now(),
        }
    }

    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.next = Instant::now() + Duration::from_micros(500 + self.state % 1000);
    }
}

/// One fresh TCP connect from the calling thread's namespace to `to`: connect() time in ms.
fn connect_once(to: SocketAddr) -> Result<f64> {
    let t0 = Instant::now();
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("a connect to {to}"))?;
    let took = t0.elapsed().as_secs_f64() * 1e3;
    // Closed with a reset, not a FIN: thousands of client sockets in TIME_WAIT make each
    // later connect() search longer for a free local port (seen in a lab as connects of
    // 0.8-1.6 ms after ~16,000 in a minute), which would load whichever variant comes
    // later in a round.
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .context("SO_LINGER on the probe connection")?;
    Ok(took)
}

/// `connects` fresh TCP connections client → server, paced ([`Pacer`]): each connect()'s
/// time in ms (to the nanosecond: a connect takes 10-30 µs, so microseconds would be a 5 %
/// step).
fn connect_times(b: &Bench, connects: usize) -> Result<Vec<f64>> {
    let to = SocketAddr::new(b.server().ip.into(), TCP_PORT);
    let out = b.client().netns.within(|| -> Result<Vec<f64>> {
        let mut v = Vec::with_capacity(connects);
        let mut pacer = Pacer::new();
        for _ in 0..connects {
            check_interrupted()?;
            pacer.wait();
            v.push(connect_once(to)?);
        }
        Ok(v)
    })??;
    Ok(out)
}

/// The probe pair (selected by its policies) and the no-policy pair on the same node, under
/// the same table, their connects interleaved one by one (A B B A A B B A ...: neither
/// always first): `connects` each, (probe pair's, no-policy pair's). Each client runs in a
/// thread of its own that stays in its namespace; the connects are paced
/// ([`Pacer`]). What a disturbance of the machine costs lands on both alike, which
/// rounds minutes apart cannot promise at a p99.
fn interleaved_times(b: &Bench, connects: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    use std::sync::mpsc;
    let pairs = [
        (b.client(), b.server()),
        (b.plain_client(), b.plain_server()),
    ];
    std::thread::scope(|scope| -> Result<(Vec<f64>, Vec<f64>)> {
        let (done_tx, done_rx) = mpsc::channel::<Result<f64>>();
        let mut go = Vec::new();
        for (client, server) in pairs {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let done_tx = done_tx.clone();
            let to = SocketAddr::new(server.ip.into(), TCP_PORT);
            scope.spawn(move || {
                let ran = client.netns.within(|| {
                    for () in go_rx {
                        if done_tx.send(connect_once(to)).is_err() {
                            break;
                        }
                    }
                });
                if let Err(e) = ran {
                    let _ = done_tx.send(Err(e));
                }
            });
            go.push(go_tx);
        }
        drop(done_tx);
        let (mut probe, mut plain) = (Vec::with_capacity(connects), Vec::with_capacity(connects));
        let mut pacer = Pacer::new();
        for k in 0..2 * connects {
            check_interrupted()?;
            pacer.wait();
            // 0 1 1 0 0 1 1 0 ...
            let which = (k ^ (k >> 1)) & 1;
            go[which]
                .send(())
                .map_err(|_| anyhow::anyhow!("a connect thread is gone"))?;
            let took = done_rx.recv().context("a connect thread is gone")??;
            if which == 0 {
                probe.push(took)
            } else {
                plain.push(took)
            }
        }
        drop(go);
        Ok((probe, plain))
    })
}

/// iperf3 client → server for `seconds`; bits per second received.
fn iperf(b: &Bench, seconds: u64) -> Result<f64> {
    let ip = b.server().ip.to_string();
    let mut server = b
        .server()
        .netns
        .command("iperf3")?
        .args(["-s", "-1", "-B", &ip, "-p", &IPERF_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 -s")?;
    let result = (|| -> Result<f64> {
        let t0 = Instant::now();
        loop {
            check_interrupted()?;
            let out = b
                .client()
                .netns
                .command("iperf3")?
                .args([
                    "-c",
                    &ip,
                    "-p",
                    &IPERF_PORT.to_string(),
                    "-t",
                    &seconds.to_string(),
                    // TCP's slow start is not the path's cost: the first second is omitted.
                    "-O",
                    "1",
                    "-J",
                ])
                .stdin(Stdio::null())
                .output()?;
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("iperf3: {}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    testkit::process::sigterm_flag();
    if which("iperf3").is_none() {
        bail!("iperf3 is missing: install the Debian package iperf3 (scripts/setup does)");
    }
    let started = Instant::now();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let outcome = run(&args, &mut results);
    if let Err(e) = &outcome {
        eprintln!("bench-policy: {e:#}");
        errors.push(json!({"error": format!("{e:#}")}));
    }
    let rows = summary(&results);
    let doc = json!({
        "benchmark": "bench-policy",
        "args": format!("{args:?}"),
        "elapsed_s": round3(started.elapsed().as_secs_f64()),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "results": results,
        "summary": rows,
        "errors": errors,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?).with_context(|| path.clone())?;
    }
    println!();
    print_table(&rows);
    outcome
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file())
}

fn run(args: &Args, results: &mut Vec<Value>) -> Result<()> {
    let mut b = setup(args)?;
    let mut push = |v: Value| {
        eprintln!("{}", serde_json::to_string(&v).unwrap_or_default());
        results.push(v);
    };
    // Cold start on a node without the table, then restarts over the previous run's table.
    let (mut agent, first) = b.cold_start()?;
    // The programmed table, for scripts/lab-policy-path (which takes the packet path apart).
    if let Some(file) = std::env::var_os("BENCH_POLICY_DUMP_TABLE") {
        let file = PathBuf::from(file);
        let table = b.c.node(0).sh("nft list table inet calico")?;
        std::fs::write(&file, table)
            .with_context(|| format!("writing the table to {}", file.display()))?;
        eprintln!("bench-policy: the table written to {}", file.display());
    }
    let mut restarts = Vec::new();
    for _ in 0..args.restarts {
        drop(agent);
        let (a, took) = b.cold_start()?;
        agent = a;
        restarts.push(ms(took));
    }
    let mut proof = scale_proof(&b, &agent)?;
    proof["part"] = json!("scale");
    proof["designed"] = json!({
        "local_endpoints": args.local, "endpoints": args.endpoints, "policies": args.policies,
        "policies_per_local_endpoint": args.per_endpoint, "apps": args.apps(),
        "bands": args.bands(), "remote_per_set_about": args.remote() / args.policies + args.remote() / args.bands(),
    });
    push(proof);
    push(json!({
        "part": "cold",
        "fresh_node_ms": ms(first),
        "restart_over_table": stats_ms(&restarts),
    }));
    b.status_name_lpod0 = std::fs::read_dir(&b.status_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.contains("lpod0 ") || n.ends_with("lpod0"));
    // Idle: settled after the start, nothing changes.
    sleep_checked(Duration::from_secs(1))?;
    let c0 = cpu_ticks(agent.pid())?;
    let t0 = Instant::now();
    sleep_checked(Duration::from_secs(args.idle_seconds))?;
    let idle =
        (cpu_ticks(agent.pid())? - c0) as f64 / CLOCK_TICKS / t0.elapsed().as_secs_f64() * 100.0;
    let rss_idle = rss_kib(agent.pid(), "VmRSS:")?;
    // The cold start's last phase (after the status files, so not always in the lines
    // printed when it was programmed): freed memory returned, and the heap in use.
    for line in agent
        .log()
        .lines()
        .filter(|l| l.contains("freed memory returned"))
    {
        eprintln!("bench-policy:   {line}");
    }
    push(flips(&b, &agent)?);
    push(new_pods(&mut b, &agent)?);
    push(json!({
        "part": "resources",
        "idle_cpu_percent": round3(idle),
        "idle_seconds": args.idle_seconds,
        "rss_mib_idle": round3(rss_idle as f64 / 1024.0),
        "rss_mib_after_changes": round3(rss_kib(agent.pid(), "VmRSS:")? as f64 / 1024.0),
        "peak_rss_mib": round3(rss_kib(agent.pid(), "VmHWM:")? as f64 / 1024.0),
        "rss_mib_policy_off": round3(b.rss_policy_off as f64 / 1024.0),
    }));
    push(packet_path(&b, agent)?);
    Ok(())
}

/// The agent's CPU has not moved for `quiet` (the first apply's aftermath is over: status
/// files, the old table freed by the kernel's workers after the commit); at most 10 s.
fn wait_idle(agent: &Agent, quiet: Duration) -> Result<()> {
    let t0 = Instant::now();
    let mut last = cpu_ticks(agent.pid())?;
    let mut since = Instant::now();
    while since.elapsed() < quiet && t0.elapsed() < Duration::from_secs(10) {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(agent.pid())?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(())
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// Packet path: the probe pair (the same two pods throughout) with everything loaded, with
/// the node's no-policy table, with no table (agent stopped, table deleted), and with
/// conntrack only (with and without NAT), in `--rounds` rounds.
/// Each round measures every variant once, in an order that changes from round to round
/// (so no variant always comes first, or always right after an agent start), and its
/// ratios are paired within the round: machine load that drifts over minutes moves both
/// sides of a ratio. The figures: the median over rounds of the per-round ratios (one
/// disturbed round does not decide), and the p99 of all samples pooled.
fn packet_path(b: &Bench, agent: Agent) -> Result<Value> {
    let args = b.args;
    let _servers = Servers::start(b.server())?;
    let _plain_servers = Servers::start(b.plain_server())?;
    let mut agent = Some(agent);
    // Per variant with a table of the agent's (and with none, as a control): the probe
    // pair's and the no-policy pair's interleaved connects, pooled, and per round their p50
    // and p99 ratios (probe / no-policy).
    let mut pairs: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let mut pair_rounds: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    let variants = [
        Variant::Loaded,
        Variant::Profiles,
        Variant::NoPolicy,
        Variant::ConntrackOnly,
        Variant::ConntrackNat,
    ];
    // Per variant: every connect time, and per round its p50, p99 and iperf3 rate.
    let mut lat: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut per_round: HashMap<&str, Vec<(f64, f64, f64)>> = HashMap::new();
    let mut path_restarts = Vec::new();
    let mut profiles_in = false;
    for round in 0..args.rounds {
        let mut order = variants;
        order.rotate_left(round % variants.len());
        if (round / variants.len()) % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            check_interrupted()?;
            // The restored no-policy table goes before any other variant's.
            if std::mem::take(&mut profiles_in) {
                b.delete_table()?;
            }
            if variant == Variant::Loaded && agent.is_none() {
                b.delete_ct_table()?;
                let (a, took) = b.cold_start()?;
                path_restarts.push(ms(took));
                // The replaced table is freed by the kernel after the commit and the agent
                // writes its status files: the path is measured once all that is done.
                sleep_checked(Duration::from_millis(500))?;
                wait_idle(&a, Duration::from_millis(300))?;
                agent = Some(a);
            } else if variant != Variant::Loaded {
                if let Some(a) = agent.take() {
                    drop(a);
                    b.delete_table()?;
                }
                b.delete_ct_table()?;
                match variant {
                    Variant::Profiles => {
                        b.add_profiles_table()?;
                        profiles_in = true;
                    }
                    Variant::ConntrackOnly | Variant::ConntrackNat => {
                        b.add_ct_table(variant == Variant::ConntrackNat)?
                    }
                    Variant::NoPolicy | Variant::Loaded => {}
                }
            }
            // Warm the path (neighbours, caches, the socket layer) before timing.
            connect_times(b, 20)?;
            // The agent's own CPU while the connects run (it should be idle: anything it does
            // then shares the two cores with the path being timed).
            let agent_ticks = agent.as_ref().map(|a| cpu_ticks(a.pid())).transpose()?;
            let busy_before = machine_busy_ticks()?;
            let l = connect_times(b, args.connects)?;
            let busy = machine_busy_ticks()?.saturating_sub(busy_before);
            let agent_used = match (agent.as_ref(), agent_ticks) {
                (Some(a), Some(before)) => cpu_ticks(a.pid())?.saturating_sub(before),
                _ => 0,
            };
            eprintln!(
                "bench-policy: round {round} {variant:?}: during the connects the machine was \
                 busy {busy} ticks, the agent {agent_used}"
            );
            let bps = iperf(b, args.iperf_seconds)?;
            let (p50, p99) = (
                percentile(&l, 50.0).unwrap_or(0.0),
                percentile(&l, 99.0).unwrap_or(0.0),
            );
            let (p50, p99) = ((p50 * 1e4).round() / 1e4, (p99 * 1e4).round() / 1e4);
            eprintln!(
                "bench-policy: round {round} {variant:?}: connect p50 {p50} ms p99 {p99} ms, \
                 {:.2} Gbit/s",
                bps / 1e9
            );
            let key = variant.key();
            lat.entry(key).or_default().extend(l);
            per_round.entry(key).or_default().push((p50, p99, bps));
            if matches!(
                variant,
                Variant::Loaded | Variant::Profiles | Variant::NoPolicy
            ) {
                interleaved_times(b, 20)?;
                let (probe, plain) = interleaved_times(b, args.connects)?;
                let ratio = |p: f64| {
                    let (x, y) = (percentile(&probe, p), percentile(&plain, p));
                    match (x, y) {
                        (Some(x), Some(y)) if y > 0.0 => round3(x / y),
                        _ => f64::NAN,
                    }
                };
                let (r50, r99) = (ratio(50.0), ratio(99.0));
                eprintln!(
                    "bench-policy: round {round} {variant:?}: interleaved, probe pair / \
                     no-policy pair: p50 {r50}, p99 {r99}"
                );
                pair_rounds.entry(key).or_default().push((r50, r99));
                let e = pairs.entry(key).or_default();
                e.0.extend(probe);
                e.1.extend(plain);
            }
        }
    }
    drop(agent);
    if profiles_in {
        b.delete_table()?;
    }
    b.delete_ct_table()?;
    // Per-round ratios of `a` to `b` on one field (0: p50, 1: p99, 2: throughput).
    let ratios = |a: &str, b: &str, f: usize| -> Vec<f64> {
        let (Some(x), Some(y)) = (per_round.get(a), per_round.get(b)) else {
            return Vec::new();
        };
        x.iter()
            .zip(y)
            .map(|(x, y)| {
                let (x, y) = ([x.0, x.1, x.2][f], [y.0, y.1, y.2][f]);
                if y > 0.0 { round3(x / y) } else { f64::NAN }
            })
            .collect()
    };
    let pooled = |a: &str, b: &str| {
        let (x, y) = (lat.get(a)?, lat.get(b)?);
        Some(round3(percentile(x, 99.0)? / percentile(y, 99.0)?))
    };
    let stats = |k: &str| stats_ms(lat.get(k).map_or(&[][..], Vec::as_slice));
    let gbps = |k: &str| -> Vec<f64> {
        per_round
            .get(k)
            .map(|v| v.iter().map(|r| round3(r.2 / 1e9)).collect())
            .unwrap_or_default()
    };
    let (l, n, c, cn, pr) = ("loaded", "none", "ct_only", "ct_nat", "profiles");
    let med = |v: Vec<f64>| median(&v).map(round3);
    let pair = |k: &str| {
        let (probe, plain) = pairs.get(k).map_or((&[][..], &[][..]), |(a, b)| (a, b));
        let pooled = |p: f64| Some(round3(percentile(probe, p)? / percentile(plain, p)?));
        let rounds = pair_rounds.get(k).cloned().unwrap_or_default();
        json!({
            "probe_pair": stats_ms(probe),
            "no_policy_pair": stats_ms(plain),
            "p99_ratio": med(rounds.iter().map(|r| r.1).collect()),
            "p50_ratio": med(rounds.iter().map(|r| r.0).collect()),
            "p99_ratio_rounds": rounds.iter().map(|r| r.1).collect::<Vec<_>>(),
            "p99_ratio_pooled": pooled(99.0),
            "p50_ratio_pooled": pooled(50.0),
        })
    };
    let mut out = json!({
        "part": "path",
        "no_policy": "agent stopped and table inet calico deleted",
        "profiles": "no agent; the agent's own table for this node before any policy was written (endpoints fall to their profile), restored with nft -f",
        "conntrack_only": "no agent; a table with only `ct state established,related accept` in forward",
        "conntrack_nat": "conntrack only plus the agent's natOutgoing chain (nat postrouting 110, masquerade from the pool unless to a pool)",
        "method": "the same pod pair; every round measures each variant once, the order rotating; ratios paired within a round, their median over rounds",
        "rounds": args.rounds,
        "connects_per_round": args.connects,
        "connect_loaded": stats(l),
        "connect_none": stats(n),
        "connect_ct_only": stats(c),
        "connect_ct_nat": stats(cn),
        "connect_profiles": stats(pr),
        "connect_p99_ratio": med(ratios(l, n, 1)),
        "connect_p99_ratio_rounds": ratios(l, n, 1),
        "connect_p99_ratio_pooled": pooled(l, n),
        "connect_p50_ratio": med(ratios(l, n, 0)),
        "connect_p99_ratio_loaded_vs_ct_only": med(ratios(l, c, 1)),
        "connect_p99_ratio_ct_only_vs_none": med(ratios(c, n, 1)),
        "connect_p99_ratio_loaded_vs_ct_nat": med(ratios(l, cn, 1)),
        "connect_p50_ratio_loaded_vs_ct_nat": med(ratios(l, cn, 0)),
        "connect_p99_ratio_ct_nat_vs_none": med(ratios(cn, n, 1)),
        "connect_p99_ratio_loaded_vs_profiles": med(ratios(l, pr, 1)),
        "connect_p99_ratio_loaded_vs_profiles_rounds": ratios(l, pr, 1),
        "connect_p99_ratio_loaded_vs_profiles_pooled": pooled(l, pr),
        "connect_p50_ratio_loaded_vs_profiles": med(ratios(l, pr, 0)),
        "connect_p99_ratio_profiles_vs_none": med(ratios(pr, n, 1)),
        "iperf_gbps_loaded": gbps(l),
        "iperf_gbps_none": gbps(n),
        "iperf_gbps_ct_only": gbps(c),
        "iperf_gbps_ct_nat": gbps(cn),
        "iperf_ratio": med(ratios(l, n, 2)),
        "iperf_ratio_rounds": ratios(l, n, 2),
        "iperf_ratio_loaded_vs_ct_only": med(ratios(l, c, 2)),
        "iperf_ratio_ct_only_vs_none": med(ratios(c, n, 2)),
        "iperf_ratio_loaded_vs_ct_nat": med(ratios(l, cn, 2)),
        "iperf_gbps_profiles": gbps(pr),
        "iperf_ratio_loaded_vs_profiles": med(ratios(l, pr, 2)),
        "restarts_ms": path_restarts,
    });
    // (Apart: one json! this long passes the macro's recursion limit.)
    out["interleaved"] = json!(
        "the probe pair (its 11 policies) and a pair on the same node that no policy selects, connects alternating one by one under the same table"
    );
    out["interleaved_loaded"] = pair(l);
    out["interleaved_profiles"] = pair(pr);
    out["interleaved_none"] = pair(n);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The summary.

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_f64()
}

/// A row: ours, the reference's figure and the target; `higher_is_better` for ratios of
/// throughput.
fn row(
    rows: &mut Vec<Value>,
    what: &str,
    unit: &str,
    ours: Option<f64>,
    reference: Option<f64>,
    target: Option<(f64, bool)>,
) {
    let meets = match (ours, target) {
        (Some(o), Some((t, higher))) => Some(if higher { o >= t } else { o <= t }),
        _ => None,
    };
    rows.push(
        json!({"what": what, "unit": unit, "ours": ours, "reference": reference,
                     "target": target.map(|t| t.0), "meets": meets}),
    );
}

fn summary(results: &[Value]) -> Vec<Value> {
    let mut rows = Vec::new();
    for r in results {
        match r["part"].as_str() {
            Some("flip") => {
                row(
                    &mut rows,
                    "policy change → enforced p50",
                    "ms",
                    num(r, &["all", "p50_ms"]),
                    Some(100.0),
                    Some((10.0, false)),
                );
                row(
                    &mut rows,
                    "policy change → enforced p99",
                    "ms",
                    num(r, &["all", "p99_ms"]),
                    None,
                    Some((50.0, false)),
                );
                row(
                    &mut rows,
                    "  allow→deny p50",
                    "ms",
                    num(r, &["allow_to_deny", "p50_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  allow→deny p99",
                    "ms",
                    num(r, &["allow_to_deny", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  deny→allow p50",
                    "ms",
                    num(r, &["deny_to_allow", "p50_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  deny→allow p99",
                    "ms",
                    num(r, &["deny_to_allow", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "per-apply time (metric, mean)",
                    "ms",
                    num(r, &["apply_mean_ms"]),
                    Some(17.0),
                    None,
                );
                row(
                    &mut rows,
                    "agent CPU per policy change",
                    "ms",
                    num(r, &["agent_cpu_ms_per_change"]),
                    None,
                    None,
                );
            }
            Some("newpod") => {
                row(
                    &mut rows,
                    "new pod WEP → rules + status file p50",
                    "ms",
                    num(r, &["took", "p50_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "new pod WEP → rules + status file p99",
                    "ms",
                    num(r, &["took", "p99_ms"]),
                    None,
                    Some((100.0, false)),
                );
            }
            Some("cold") => {
                row(
                    &mut rows,
                    "cold start → programmed (fresh node)",
                    "ms",
                    num(r, &["fresh_node_ms"]),
                    None,
                    Some((2000.0, false)),
                );
                row(
                    &mut rows,
                    "cold start → programmed (restart, max)",
                    "ms",
                    num(r, &["restart_over_table", "max_ms"]),
                    None,
                    Some((2000.0, false)),
                );
            }
            Some("resources") => {
                row(
                    &mut rows,
                    "RSS at scale (after changes)",
                    "MiB",
                    num(r, &["rss_mib_after_changes"]),
                    Some(240.0),
                    Some((50.0, false)),
                );
                row(
                    &mut rows,
                    "peak RSS",
                    "MiB",
                    num(r, &["peak_rss_mib"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "RSS of calico-node run, policy off",
                    "MiB",
                    num(r, &["rss_mib_policy_off"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "idle CPU",
                    "%",
                    num(r, &["idle_cpu_percent"]),
                    None,
                    Some((1.0, false)),
                );
            }
            Some("path") => {
                row(
                    &mut rows,
                    "TCP connect p99 loaded",
                    "ms",
                    num(r, &["connect_loaded", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 no policy",
                    "ms",
                    num(r, &["connect_none", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (loaded / no table)",
                    "x",
                    num(r, &["connect_p99_ratio"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  connect p99 ratio, all samples pooled",
                    "x",
                    num(r, &["connect_p99_ratio_pooled"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  connect p50 ratio (loaded / none)",
                    "x",
                    num(r, &["connect_p50_ratio"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "iperf3 throughput ratio (loaded / no table)",
                    "x",
                    num(r, &["iperf_ratio"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 node with no policy (profiles)",
                    "ms",
                    num(r, &["connect_profiles", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (loaded / profiles)",
                    "x",
                    num(r, &["connect_p99_ratio_loaded_vs_profiles"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  connect p99 ratio, all samples pooled",
                    "x",
                    num(r, &["connect_p99_ratio_loaded_vs_profiles_pooled"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  connect p50 ratio (loaded / profiles)",
                    "x",
                    num(r, &["connect_p50_ratio_loaded_vs_profiles"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "iperf3 ratio (loaded / profiles)",
                    "x",
                    num(r, &["iperf_ratio_loaded_vs_profiles"]),
                    None,
                    Some((0.95, true)),
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio, pairs interleaved (policies / none)",
                    "x",
                    num(r, &["interleaved_loaded", "p99_ratio_pooled"]),
                    None,
                    Some((1.10, false)),
                );
                row(
                    &mut rows,
                    "  median of the rounds' p99 ratios",
                    "x",
                    num(r, &["interleaved_loaded", "p99_ratio"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  interleaved p50 ratio, pooled",
                    "x",
                    num(r, &["interleaved_loaded", "p50_ratio_pooled"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  the same pairs under the no-policy table (control)",
                    "x",
                    num(r, &["interleaved_profiles", "p99_ratio_pooled"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  the same pairs with no table (control)",
                    "x",
                    num(r, &["interleaved_none", "p99_ratio_pooled"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (profiles / none)",
                    "x",
                    num(r, &["connect_p99_ratio_profiles_vs_none"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 conntrack only",
                    "ms",
                    num(r, &["connect_ct_only", "p99_ms"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (loaded / ct only)",
                    "x",
                    num(r, &["connect_p99_ratio_loaded_vs_ct_only"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "iperf3 ratio (loaded / ct only)",
                    "x",
                    num(r, &["iperf_ratio_loaded_vs_ct_only"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (ct only / none)",
                    "x",
                    num(r, &["connect_p99_ratio_ct_only_vs_none"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "iperf3 ratio (ct only / none)",
                    "x",
                    num(r, &["iperf_ratio_ct_only_vs_none"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (loaded / ct + nat)",
                    "x",
                    num(r, &["connect_p99_ratio_loaded_vs_ct_nat"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "  connect p50 ratio (loaded / ct + nat)",
                    "x",
                    num(r, &["connect_p50_ratio_loaded_vs_ct_nat"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "TCP connect p99 ratio (ct + nat / none)",
                    "x",
                    num(r, &["connect_p99_ratio_ct_nat_vs_none"]),
                    None,
                    None,
                );
                row(
                    &mut rows,
                    "iperf3 ratio (loaded / ct + nat)",
                    "x",
                    num(r, &["iperf_ratio_loaded_vs_ct_nat"]),
                    None,
                    None,
                );
            }
            _ => {}
        }
    }
    rows
}

fn print_table(rows: &[Value]) {
    let f = |v: &Value| match v.as_f64() {
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    };
    println!(
        "{:<44} {:>5} {:>10} {:>10} {:>8} {:>5}",
        "measurement", "unit", "ours", "reference", "target", "meets"
    );
    for r in rows {
        println!(
            "{:<44} {:>5} {:>10} {:>10} {:>8} {:>5}",
            r["what"].as_str().unwrap_or_default(),
            r["unit"].as_str().unwrap_or_default(),
            f(&r["ours"]),
            f(&r["reference"]),
            f(&r["target"]),
            match r["meets"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
}
