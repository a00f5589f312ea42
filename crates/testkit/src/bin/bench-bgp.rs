//! The driver of `scripts/bench-bgp` (issue 13 §5): route distribution by our agent
//! (`calico-node run`, CALICO_NETWORKING_BACKEND=bird, after `calico-node startup`, on the
//! simulated nodes of a [`Cluster`]) side by side with BIRD 2 in the same topology
//! ([`testkit::bgplab`]), in one run:
//!
//! - `reach`: a block claimed by a real CNI ADD (libcni, the seed conflist, a /32-block pool
//!   so that every ADD claims a new block) until its route is in every other node's kernel,
//!   timed from the affinity's commit as an `etcdctl watch` on the affinities sees it; BIRD:
//!   Calico's configuration rewritten and `birdc configure` (confd's render time excluded),
//!   timed from the rewrite.
//! - `rr`: 1000 affinities of one node in one etcd transaction, reflected by an agent with a
//!   `routeReflectorClusterID` to its clients; BIRD: the origin's configuration rewritten
//!   with 1000 more static routes, a BIRD route reflector.
//! - `cold`: every node's affinities written before any agent starts, all agents started at
//!   once, until every kernel has every other node's blocks (with each process's CPU time
//!   then, ours calico-node and its calico-bgpd together); then `memory`: the resident size
//!   of the process holding those routes 0.5 s later (ours calico-bgpd, BIRD's counterpart:
//!   the issue's figure; calico-node's beside it), and again 12 s later (what an idle
//!   process keeps, after the agent's 10 s resync and recheck); beside it each process's
//!   PSS (the four nodes' processes run one binary here, so its pages count a quarter in
//!   each; a real node runs one).
//! - `scale`: a full mesh of many agents, one block each, until every kernel has every block;
//!   then each node's CPU time over an idle period (ours: calico-node and calico-bgpd).
//!
//! What each side runs: ours always `calico-node startup` + `calico-node run` with Calico's
//! timers (connect delay 2 s, retry 5 s; `--connect-retry` shortens the retry on both
//! sides). BIRD runs Calico's generated configuration ([`CalicoMeshNode`]) for `reach` and
//! `scale`; the lab configuration ([`testkit::bgplab::bird::bird_config`]) for `rr` (Calico
//! has no RR template of its own here) and for `cold`/`memory`, with Calico's session
//! structure and timers: Calico's per-block filter functions make BIRD quadratic in the
//! number of local blocks, which no real node has 10,000 of. On our side only affinities are
//! written for `rr`, `cold`, `memory` and `scale` (no block documents: the agent reads only
//! affinities). The 50-node mesh gets permanent neighbour entries on both sides (see
//! [`static_neighbours`]).
//!
//! Kernels are read from `/proc/<pid>/net/route` of a process inside each node (cheap; routes
//! with a gateway inside the benchmark's pool count). Everything made is removed when the
//! fixtures drop, on failure and on SIGTERM too (the loops stop at the next poll).
//!
//! Usage: see `scripts/bench-bgp --help`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use testkit::bgplab::calico::CalicoMeshNode;
use testkit::bgplab::{Bird, DEFAULT_ASN, Lab, Neighbor, Speaker, SpeakerConfig, Timers};
use testkit::{Agent, CallOpts, Cluster, NetNs};

const NET: &str = "k8s-pod-network";
const AFFINITIES: &str = "/calico/ipam/v2/host/";
const AFFINITY_VALUE: &str = r#"{"state":"confirmed","deleted":false}"#;
/// Where every benchmark block lives (a no-encap pool on both sides).
const POOL: &str = "10.128.0.0/9";
/// The reach benchmark's pool on our side: /32 blocks, so each CNI ADD claims one.
const REACH_POOL: &str = "10.128.0.0/16";
const RR_CLUSTER_ID: &str = "224.0.0.1";
/// Linux's USER_HZ (the unit of /proc/<pid>/stat times) on every architecture we run on.
const CLOCK_TICKS: f64 = 100.0;

#[derive(Debug, Clone)]
struct Args {
    parts: Vec<String>,
    reach_nodes: usize,
    claims: usize,
    rr_nodes: usize,
    rr_prefixes: usize,
    cold_nodes: usize,
    cold_prefixes: usize,
    memory_routes: usize,
    scale_nodes: usize,
    idle_seconds: u64,
    connect_retry: Option<u32>,
    json: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            parts: Vec::new(),
            reach_nodes: 10,
            claims: 100,
            rr_nodes: 4,
            rr_prefixes: 1000,
            cold_nodes: 4,
            cold_prefixes: 10_000,
            memory_routes: 30_000,
            scale_nodes: 50,
            idle_seconds: 10,
            connect_retry: None,
            json: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--only" => a
                    .parts
                    .extend(value()?.split(',').map(|s| s.trim().to_string())),
                "--reach-nodes" => a.reach_nodes = value()?.parse()?,
                "--claims" => a.claims = value()?.parse()?,
                "--rr-nodes" => a.rr_nodes = value()?.parse()?,
                "--rr-prefixes" => a.rr_prefixes = value()?.parse()?,
                "--cold-nodes" => a.cold_nodes = value()?.parse()?,
                "--cold-prefixes" => a.cold_prefixes = value()?.parse()?,
                "--memory-routes" => a.memory_routes = value()?.parse()?,
                "--scale-nodes" => a.scale_nodes = value()?.parse()?,
                "--idle-seconds" => a.idle_seconds = value()?.parse()?,
                "--connect-retry" => a.connect_retry = Some(value()?.parse()?),
                "--json" => a.json = Some(value()?),
                other => bail!("unknown argument {other:?} (see scripts/bench-bgp --help)"),
            }
        }
        const ALL: [&str; 5] = ["reach", "rr", "cold", "memory", "scale"];
        if a.parts.is_empty() {
            a.parts = ALL.iter().map(|s| s.to_string()).collect();
        }
        for p in &a.parts {
            if !ALL.contains(&p.as_str()) {
                bail!("--only {p}: not one of {}", ALL.join(", "));
            }
        }
        if a.reach_nodes < 2 || a.rr_nodes < 3 || a.cold_nodes < 2 || a.scale_nodes < 2 {
            bail!("the meshes need at least 2 nodes (3 for rr)");
        }
        Ok(a)
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }

    /// Calico's timers, with the connect retry shortened on both sides if asked.
    fn bird_timers(&self) -> Timers {
        let mut t = Timers::CALICO;
        if let Some(r) = self.connect_retry {
            t.connect_retry = r;
        }
        t
    }
}

// ---------------------------------------------------------------------------------------
// Interruption, time, statistics.

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

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

/// Nearest-rank percentile of `v` (sorted here).
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
    json!({
        "n": v.len(),
        "median_ms": percentile(v, 50.0),
        "p99_ms": percentile(v, 99.0),
        "max_ms": percentile(v, 100.0),
        "min_ms": percentile(v, 0.0),
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Kernels, processes, etcd.

/// The gateway routes inside `within` of the namespace `pid` lives in
/// (`/proc/<pid>/net/route`: hex addresses in the kernel's byte order).
fn gateway_routes(pid: u32, within: Ipv4Net) -> Result<Vec<Ipv4Net>> {
    let path = format!("/proc/{pid}/net/route");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let hex = |s: &str| -> Option<Ipv4Addr> {
        let v = u32::from_str_radix(s, 16).ok()?;
        Some(Ipv4Addr::from(v.to_le_bytes()))
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[2] == "00000000" {
            continue;
        }
        let (Some(dst), Some(mask)) = (hex(f[1]), hex(f[7])) else {
            continue;
        };
        let len = u32::from(mask).count_ones() as u8;
        if let Ok(net) = Ipv4Net::new(dst, len)
            && within.contains(&net)
        {
            out.push(net);
        }
    }
    Ok(out)
}

fn count_gateway_routes(pid: u32, within: Ipv4Net) -> Result<usize> {
    Ok(gateway_routes(pid, within)?.len())
}

/// The IPv4 main table's prefix count of the namespace `pid` lives in
/// (`/proc/<pid>/net/fib_triestat`, the kernel's own counter): an upper bound of its
/// gateway routes that costs a few lines, where `/proc/<pid>/net/route` formats every route
/// (40,000 lines per namespace per poll took an eighth of both CPUs from the speakers
/// being measured).
fn main_prefixes(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/net/fib_triestat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let main = text
        .split("Main:")
        .nth(1)
        .with_context(|| format!("{path}: no Main table"))?;
    let line = main
        .lines()
        .find_map(|l| l.trim().strip_prefix("Prefixes:"))
        .with_context(|| format!("{path}: no prefix count"))?;
    Ok(line.trim().parse()?)
}

/// Whether the namespace of `pid` has `want` gateway routes inside `within`; the full
/// listing is read only once the kernel's prefix count allows it.
fn has_gateway_routes(pid: u32, within: Ipv4Net, want: usize) -> Result<bool> {
    if main_prefixes(pid).is_ok_and(|n| n < want) {
        return Ok(false);
    }
    Ok(count_gateway_routes(pid, within)? >= want)
}

/// Waits until the kernel of each of `pids` has `want` gateway routes inside `within`;
/// returns when each got there (time since `t0`), polling every `every`.
fn wait_counts(
    pids: &[u32],
    within: Ipv4Net,
    want: usize,
    t0: Instant,
    every: Duration,
    timeout: Duration,
) -> Result<Vec<Duration>> {
    let mut done: Vec<Option<Duration>> = vec![None; pids.len()];
    loop {
        check_interrupted()?;
        for (i, pid) in pids.iter().enumerate() {
            if done[i].is_none() && has_gateway_routes(*pid, within, want)? {
                done[i] = Some(t0.elapsed());
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        if t0.elapsed() > timeout {
            let counts: Vec<usize> = pids
                .iter()
                .map(|p| count_gateway_routes(*p, within).unwrap_or(0))
                .collect();
            bail!("kernels not full after {timeout:?}: want {want}, have {counts:?}");
        }
        std::thread::sleep(every);
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// One `kB` field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`, ...).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    proc_kib(pid, "status", field)
}

/// One `kB` field (`Name:   123 kB`) of `/proc/<pid>/<file>`.
fn proc_kib(pid: u32, file: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("no {field} in /proc/{pid}/{file}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

/// Where the resident pages are: anonymous (heap, stacks) and file-backed (the binary's
/// text and read-only data, shared libraries), per process; and each one's proportional
/// set size (`Pss`: a page shared by n processes counts 1/n in each), what the node pays
/// per process when several run the same binary.
fn rss_parts(pids: &[u32]) -> Result<Value> {
    let part =
        |field: &str| -> Result<Vec<u64>> { pids.iter().map(|p| status_kib(*p, field)).collect() };
    let pss: Vec<u64> = pids
        .iter()
        .map(|p| proc_kib(*p, "smaps_rollup", "Pss"))
        .collect::<Result<_>>()?;
    Ok(json!({"anon_kib": part("RssAnon")?, "file_kib": part("RssFile")?, "pss_kib": pss}))
}

/// Each agent's calico-bgpd (its routing process under the BGP backend).
fn bgpd_pids(agents: &[Agent]) -> Result<Vec<u32>> {
    agents
        .iter()
        .map(|a| {
            a.bgpd_pid()
                .with_context(|| format!("no calico-bgpd under calico-node {}", a.pid()))
        })
        .collect()
}

/// Per node, the sum of its two processes' figures: `v` lists the `n` agents, then their
/// `n` calico-bgpd in the same order.
fn per_node(v: &[f64], n: usize) -> Vec<f64> {
    (0..n).map(|i| v[i] + v[n + i]).collect()
}

/// Each process's CPU time so far (user + system), in seconds.
fn cpu_seconds(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter()
        .map(|p| cpu_ticks(*p).map(|t| t as f64 / CLOCK_TICKS))
        .collect()
}

/// How long after the first reading the resident sizes are read again: what an idle
/// process keeps (the first reading, 0.5 s after, is the issue's figure).
const RSS_LATER: Duration = Duration::from_secs(12);

/// The resident sizes [`RSS_LATER`] after the first reading (the processes idle meanwhile).
fn rss_later(pids: &[u32]) -> Result<Value> {
    std::thread::sleep(RSS_LATER);
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    Ok(
        json!({"after_s": RSS_LATER.as_secs() as f64 + 0.5, "rss_kib": rss,
              "parts": rss_parts(pids)?}),
    )
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').context("stat without comm")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// The CPU share (percent of one core) of each of `pids` over `period`.
fn idle_cpu(pids: &[u32], period: Duration) -> Result<Vec<f64>> {
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    let t0 = Instant::now();
    while t0.elapsed() < period {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = t0.elapsed().as_secs_f64();
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect::<Result<_>>()?;
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| ((a - b) as f64 / CLOCK_TICKS) / wall * 100.0)
        .collect())
}

/// Block `index` of [`POOL`] at length `len` (consecutive blocks).
fn block(index: usize, len: u8) -> Result<Ipv4Net> {
    let pool: Ipv4Net = POOL.parse()?;
    let size = 1u64 << (32 - u32::from(len));
    let addr = u64::from(u32::from(pool.network())) + index as u64 * size;
    let net = Ipv4Net::new(Ipv4Addr::from(u32::try_from(addr)?), len)?;
    if !pool.contains(&net) {
        bail!("block {index} /{len} is outside {POOL}");
    }
    Ok(net)
}

fn affinity_key(node: &str, b: Ipv4Net) -> String {
    format!(
        "{AFFINITIES}{node}/ipv4/block/{}-{}",
        b.network(),
        b.prefix_len()
    )
}

/// Writes `(key, value)` pairs in one etcd transaction (`etcdctl txn`; the fixture's etcd
/// allows 20,000 operations per transaction).
fn txn_put(c: &Cluster, kvs: &[(String, String)]) -> Result<()> {
    let mut script = String::from("\n");
    for (k, v) in kvs {
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
    Ok(())
}

fn put_affinities(c: &Cluster, node: &str, blocks: &[Ipv4Net]) -> Result<()> {
    for chunk in blocks.chunks(5000) {
        let kvs: Vec<(String, String)> = chunk
            .iter()
            .map(|b| (affinity_key(node, *b), AFFINITY_VALUE.to_string()))
            .collect();
        txn_put(c, &kvs)?;
    }
    Ok(())
}

/// `etcdctl watch --prefix` on the affinities: when each key was last written as a confirmed
/// affinity, as a client of etcd sees it (the agents see the same events at the same time).
struct CommitWatch {
    child: Child,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    reader: Option<JoinHandle<()>>,
}

impl CommitWatch {
    fn start(c: &Cluster) -> Result<CommitWatch> {
        let mut child = c
            .ctl()
            .command()?
            .args(["watch", "--prefix", AFFINITIES])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("etcdctl watch")?;
        let stdout = child.stdout.take().context("etcdctl watch stdout")?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let record = seen.clone();
        let reader = std::thread::spawn(move || {
            // Events come as `PUT`, key, value lines.
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(op)) = lines.next() {
                let at = Instant::now();
                if op != "PUT" {
                    continue;
                }
                let (Some(Ok(key)), Some(Ok(value))) = (lines.next(), lines.next()) else {
                    break;
                };
                if (value.contains("confirmed") || key.ends_with("bench-sentinel"))
                    && let Ok(mut m) = record.lock()
                {
                    m.insert(key, at);
                }
            }
        });
        let w = CommitWatch {
            child,
            seen,
            reader: Some(reader),
        };
        // Wait until the watch is established: a sentinel key (not an affinity) comes back.
        let sentinel = format!("{AFFINITIES}bench-sentinel");
        let t0 = Instant::now();
        loop {
            check_interrupted()?;
            c.etcd.put(&sentinel, "x")?;
            if w.get(&sentinel).is_some() {
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

    fn get(&self, key: &str) -> Option<Instant> {
        self.seen.lock().ok()?.get(key).copied()
    }

    fn wait(&self, key: &str, timeout: Duration) -> Result<Instant> {
        let t0 = Instant::now();
        loop {
            if let Some(t) = self.get(key) {
                return Ok(t);
            }
            check_interrupted()?;
            if t0.elapsed() > timeout {
                bail!("the watch never saw {key} confirmed");
            }
            std::thread::sleep(Duration::from_millis(1));
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

/// A thread reading the kernels of some nodes every `every`, noting when each gateway route
/// inside `within` first appeared in each.
struct Observer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<HashMap<Ipv4Net, Instant>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    fn start(pids: Vec<u32>, within: Ipv4Net, every: Duration) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![HashMap::new(); pids.len()]));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                for (i, pid) in pids.iter().enumerate() {
                    let Ok(routes) = gateway_routes(*pid, within) else {
                        continue;
                    };
                    let at = Instant::now();
                    if let Ok(mut m) = seen2.lock() {
                        for r in routes {
                            m[i].entry(r).or_insert(at);
                        }
                    }
                }
                std::thread::sleep(every);
            }
        });
        Observer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Waits until `prefix` is in the kernel of every node but `except`; the last first
    /// sighting.
    fn wait_everywhere(
        &self,
        prefix: Ipv4Net,
        except: usize,
        timeout: Duration,
    ) -> Result<Instant> {
        let t0 = Instant::now();
        loop {
            check_interrupted()?;
            if let Ok(m) = self.seen.lock() {
                let times: Vec<Option<Instant>> = m
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != except)
                    .map(|(_, s)| s.get(&prefix).copied())
                    .collect();
                if times.iter().all(Option::is_some) {
                    return Ok(times.into_iter().flatten().max().unwrap_or(t0));
                }
            }
            if t0.elapsed() > timeout {
                bail!("{prefix} did not reach every kernel within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Our agents.

fn startup(c: &Cluster, i: usize, vars: &[(&str, &str)]) -> Result<()> {
    let bin = testkit::bins::calico_node()?;
    let out = c
        .node(i)
        .command(&bin)?
        .arg("startup")
        .env("NODENAME", format!("node-{}", i + 1))
        .env("ETCD_ENDPOINTS", "https://10.10.0.174:2379")
        .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
        .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
        .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key")
        .env("IP", "autodetect")
        .env("IP_AUTODETECTION_METHOD", "interface=eth0")
        .env("CALICO_IPV4POOL_IPIP", "Never")
        .env("CALICO_IPV4POOL_VXLAN", "Never")
        .env("CALICO_IPV4POOL_NAT_OUTGOING", "false")
        .envs(vars.iter().copied())
        .output()?;
    if !out.status.success() {
        bail!(
            "calico-node startup on node-{}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A cluster of `n` nodes, each started up with a pool of `cidr`/`block_size`.
fn our_cluster(n: usize, cidr: &str, block_size: u8) -> Result<Cluster> {
    let c = Cluster::start_bare(n, &[])?;
    let bs = block_size.to_string();
    for i in 0..n {
        check_interrupted()?;
        startup(
            &c,
            i,
            &[
                ("CALICO_IPV4POOL_CIDR", cidr),
                ("CALICO_IPV4POOL_BLOCK_SIZE", &bs),
            ],
        )?;
    }
    Ok(c)
}

fn agent_env(args: &Args) -> Vec<(String, String)> {
    let mut env = vec![
        ("CALICO_NETWORKING_BACKEND".to_string(), "bird".to_string()),
        (
            "LOG_LEVEL".to_string(),
            std::env::var("BENCH_BGP_LOG_LEVEL").unwrap_or_else(|_| "info".to_string()),
        ),
    ];
    if let Some(r) = args.connect_retry {
        env.push(("CALICO_BGP_CONNECT_RETRY_SECONDS".into(), r.to_string()));
    }
    env
}

fn start_agent(c: &Cluster, i: usize, args: &Args) -> Result<Agent> {
    let name = format!("node-{}", i + 1);
    let mut env = agent_env(args);
    env.push(("NODENAME".into(), name));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Agent::on_node_with(c, i, &env)
}

/// Starts every agent at once (one thread each); agents in node order.
fn start_agents_at_once(c: &Cluster, args: &Args) -> Result<Vec<Agent>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..c.nodes.len())
            .map(|i| s.spawn(move || start_agent(c, i, args)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("agent start panicked"))?
            })
            .collect()
    })
}

fn wait_established(agents: &[Agent], want: &[f64], timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        check_interrupted()?;
        let have: Vec<f64> = agents
            .iter()
            .map(|a| {
                a.metric("calico_node_bgp_peers", &["state=\"Established\""])
                    .unwrap_or(-1.0)
            })
            .collect();
        if have.iter().zip(want).all(|(h, w)| h >= w) {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            let log = agents.first().map(Agent::log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("sessions not up after {timeout:?}: {have:?} (want {want:?})\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With `BENCH_BGP_LOGS=<dir>`, copies each agent's log there (`<part>-node-<i>.log`) before
/// the fixtures go, for a look at what took the time.
fn keep_logs(part: &str, agents: &[Agent]) {
    let Ok(dir) = std::env::var("BENCH_BGP_LOGS") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    for (i, a) in agents.iter().enumerate() {
        let path = format!("{dir}/{part}-node-{}.log", i + 1);
        if let Err(e) = std::fs::write(&path, a.log()) {
            eprintln!("bench-bgp: {path}: {e}");
        }
    }
}

/// Established sessions per agent (for a failure's message).
fn established(agents: &[Agent]) -> Vec<f64> {
    agents
        .iter()
        .map(|a| {
            a.metric("calico_node_bgp_peers", &["state=\"Established\""])
                .unwrap_or(-1.0)
        })
        .collect()
}

fn seed() -> Result<Value> {
    let mut list = testkit::cluster::seed_without_kubernetes()?;
    list["cniVersion"] = json!("1.0.0");
    list["plugins"][0]["ipam"]["assign_ipv6"] = json!("false");
    Ok(list)
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

// ---------------------------------------------------------------------------------------
// BIRD.

/// BIRDs with Calico's generated configuration in a full mesh of `n`, `blocks[i]` on node i.
fn calico_birds(lab: &Lab, blocks: &[Vec<Ipv4Net>], args: &Args) -> Result<Vec<Bird>> {
    let mesh: Vec<Ipv4Addr> = (0..lab.nodes.len()).map(Lab::ip).collect();
    let mut birds = Vec::new();
    for i in 0..lab.nodes.len() {
        check_interrupted()?;
        let mut node = CalicoMeshNode::new(Lab::ip(i), mesh.clone());
        node.pools = vec![POOL.parse()?];
        node.local_blocks = blocks.get(i).cloned().unwrap_or_default();
        node.timers = args.bird_timers();
        birds.push(Bird::start_calico(lab.netns(i), node)?);
    }
    Ok(birds)
}

fn bird_pid(b: &Bird) -> Result<u32> {
    b.pids().first().copied().context("bird without a pid")
}

// ---------------------------------------------------------------------------------------
// The parts.

fn reach(args: &Args) -> Result<Value> {
    let n = args.reach_nodes;
    eprintln!("== reach: {n} nodes, {} claims", args.claims);
    let load_before = loadavg();
    // Ours.
    let ours = {
        let c = our_cluster(n, REACH_POOL, 32)?;
        let agents: Vec<Agent> = (0..n)
            .map(|i| start_agent(&c, i, args))
            .collect::<Result<_>>()?;
        let seed = seed()?;
        for i in 0..n {
            c.install(i, &seed)?;
        }
        wait_established(&agents, &vec![(n - 1) as f64; n], Duration::from_secs(60))?;
        let watch = CommitWatch::start(&c)?;
        let pids: Vec<u32> = agents.iter().map(Agent::pid).collect();
        let observer = Observer::start(pids, REACH_POOL.parse()?, Duration::from_millis(1));
        let mut pods: Vec<NetNs> = Vec::new();
        let (mut from_commit, mut from_return, mut add_ms) = (Vec::new(), Vec::new(), Vec::new());
        let mut failures = Vec::new();
        for k in 0..args.claims {
            check_interrupted()?;
            let i = k % n;
            let id = format!("bench{k}");
            let ns = NetNs::new(&id)?;
            let started = Instant::now();
            let result = c.runtime(i).add(NET, &ns.path(), &pod(&id))?;
            let returned = Instant::now();
            pods.push(ns);
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("ADD {id}: {e:?}"));
                    continue;
                }
            };
            let Some(IpAddr::V4(ip)) = testkit::result_ips(&result).first().copied() else {
                failures.push(format!("ADD {id}: no IPv4 in {result}"));
                continue;
            };
            let prefix = Ipv4Net::new(ip, 32)?;
            let key = affinity_key(&format!("node-{}", i + 1), prefix);
            let everywhere = observer.wait_everywhere(prefix, i, Duration::from_secs(10));
            let committed = watch.wait(&key, Duration::from_secs(5));
            match (everywhere, committed) {
                (Ok(all), Ok(commit)) => {
                    from_commit.push(ms(all.saturating_duration_since(commit)));
                    // Negative when the route was everywhere before the ADD returned.
                    from_return.push(if all >= returned {
                        ms(all - returned)
                    } else {
                        -ms(returned - all)
                    });
                    add_ms.push(ms(returned - started));
                }
                (a, b) => failures.push(format!("claim {k} ({prefix}): {a:?} {b:?}")),
            }
        }
        drop(observer);
        json!({
            "from_commit": stats_ms(&from_commit),
            "from_add_return": stats_ms(&from_return),
            "cni_add": stats_ms(&add_ms),
            "failures": failures,
            "samples_ms": from_commit,
        })
    };
    // BIRD.
    let bird = {
        let lab = Lab::new(n)?;
        let mut birds = calico_birds(&lab, &[], args)?;
        for b in &birds {
            b.wait_established(Duration::from_secs(60))?;
        }
        let pids: Vec<u32> = birds.iter().map(bird_pid).collect::<Result<_>>()?;
        let observer = Observer::start(pids, POOL.parse()?, Duration::from_millis(1));
        let (mut lat, mut configure_ms, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..args.claims {
            check_interrupted()?;
            let i = k % n;
            let prefix = block(k, 26)?;
            let t0 = Instant::now();
            birds[i].announce(prefix)?;
            configure_ms.push(ms(t0.elapsed()));
            match observer.wait_everywhere(prefix, i, Duration::from_secs(10)) {
                Ok(all) => lat.push(ms(all.saturating_duration_since(t0))),
                Err(e) => failures.push(format!("claim {k}: {e}")),
            }
        }
        drop(observer);
        json!({
            "from_config_write": stats_ms(&lat),
            "bird_p_and_configure": stats_ms(&configure_ms),
            "failures": failures,
            "samples_ms": lat,
        })
    };
    Ok(json!({"part": "reach", "nodes": n, "claims": args.claims,
              "load_before": load_before, "load_after": loadavg(),
              "ours": ours, "bird": bird}))
}

fn rr(args: &Args) -> Result<Value> {
    let n = args.rr_nodes;
    let k = args.rr_prefixes;
    eprintln!("== rr: RR + origin + {} clients, {k} prefixes", n - 2);
    let load_before = loadavg();
    let pool: Ipv4Net = POOL.parse()?;
    let blocks: Vec<Ipv4Net> = (0..k).map(|j| block(j, 26)).collect::<Result<_>>()?;
    let ours = {
        let c = our_cluster(n, POOL, 26)?;
        // Calico's route-reflector recipe: no mesh, node-1 labelled and given a cluster id,
        // every node peering with the labelled ones.
        c.etcd.put(
            "/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            &json!({"kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "default"},
                    "spec": {"nodeToNodeMeshEnabled": false, "asNumber": DEFAULT_ASN}})
            .to_string(),
        )?;
        let key = "/calico/resources/v3/projectcalico.org/nodes/node-1";
        let mut rr_node: Value =
            serde_json::from_str(&c.etcd.get(key)?.context("node-1 is not registered")?)?;
        rr_node["metadata"]["labels"]["route-reflector"] = json!("true");
        rr_node["spec"]["bgp"]["routeReflectorClusterID"] = json!(RR_CLUSTER_ID);
        c.etcd.put(key, &rr_node.to_string())?;
        c.etcd.put(
            "/calico/resources/v3/projectcalico.org/bgppeers/peer-with-rr",
            &json!({"kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "peer-with-rr"},
                    "spec": {"nodeSelector": "all()",
                             "peerSelector": "route-reflector == 'true'"}})
            .to_string(),
        )?;
        let agents: Vec<Agent> = (0..n)
            .map(|i| start_agent(&c, i, args))
            .collect::<Result<_>>()?;
        let mut want = vec![1.0; n];
        want[0] = (n - 1) as f64;
        wait_established(&agents, &want, Duration::from_secs(60))?;
        let watch = CommitWatch::start(&c)?;
        let pids: Vec<u32> = (0..n)
            .filter(|i| *i != 1)
            .map(|i| agents[i].pid())
            .collect();
        let kvs: Vec<(String, String)> = blocks
            .iter()
            .map(|b| (affinity_key("node-2", *b), AFFINITY_VALUE.to_string()))
            .collect();
        let t_write = Instant::now();
        txn_put(&c, &kvs)?;
        let txn_ms = ms(t_write.elapsed());
        let times = wait_counts(
            &pids,
            pool,
            k,
            t_write,
            Duration::from_millis(2),
            Duration::from_secs(60),
        )?;
        let commit = watch.wait(&kvs[0].0, Duration::from_secs(5))?;
        let last = times.iter().max().copied().unwrap_or_default();
        let from_commit = last.saturating_sub(commit.saturating_duration_since(t_write));
        // The reflector's routing process (BIRD's counterpart), and calico-node beside it.
        let rr_rss = rss_kib(bgpd_pids(&agents[..1])?[0])?;
        let rr_agent_rss = rss_kib(agents[0].pid())?;
        json!({"from_commit_s": secs(from_commit), "from_txn_start_s": secs(last),
               "etcdctl_txn_ms": txn_ms,
               "per_kernel_s": times.iter().map(|t| secs(*t)).collect::<Vec<_>>(),
               "rr_rss_kib": rr_rss, "rr_calico_node_rss_kib": rr_agent_rss})
    };
    let bird = {
        let lab = Lab::new(n)?;
        let cluster_id: Ipv4Addr = RR_CLUSTER_ID.parse()?;
        let mut rr_cfg = SpeakerConfig::new(Lab::ip(0), DEFAULT_ASN).timers(args.bird_timers());
        for i in 1..n {
            rr_cfg =
                rr_cfg.neighbor(Neighbor::new(Lab::ip(i), DEFAULT_ASN).rr_client(Some(cluster_id)));
        }
        let mut birds = vec![Bird::start(lab.netns(0), rr_cfg)?];
        for i in 1..n {
            let cfg = SpeakerConfig::new(Lab::ip(i), DEFAULT_ASN)
                .timers(args.bird_timers())
                .neighbor(Neighbor::new(Lab::ip(0), DEFAULT_ASN));
            birds.push(Bird::start(lab.netns(i), cfg)?);
        }
        for b in &birds {
            b.wait_established(Duration::from_secs(60))?;
        }
        let pids: Vec<u32> = (0..n)
            .filter(|i| *i != 1)
            .map(|i| bird_pid(&birds[i]))
            .collect::<Result<_>>()?;
        let t0 = Instant::now();
        birds[1].announce_many(&blocks)?;
        let configure_ms = ms(t0.elapsed());
        let times = wait_counts(
            &pids,
            pool,
            k,
            t0,
            Duration::from_millis(2),
            Duration::from_secs(60),
        )?;
        let last = times.iter().max().copied().unwrap_or_default();
        let rr_rss = rss_kib(bird_pid(&birds[0])?)?;
        json!({"from_config_write_s": secs(last), "bird_p_and_configure_ms": configure_ms,
               "per_kernel_s": times.iter().map(|t| secs(*t)).collect::<Vec<_>>(),
               "rr_rss_kib": rr_rss})
    };
    Ok(json!({"part": "rr", "nodes": n, "prefixes": k,
              "load_before": load_before, "load_after": loadavg(),
              "ours": ours, "bird": bird}))
}

/// Cold start of `n` nodes with `per` blocks each; also the resident sizes afterwards.
fn cold(args: &Args, n: usize, per: usize, label: &str) -> Result<Value> {
    eprintln!(
        "== {label}: {n} nodes x {per} blocks ({} routes per kernel)",
        (n - 1) * per
    );
    let load_before = loadavg();
    let pool: Ipv4Net = POOL.parse()?;
    let blocks: Vec<Vec<Ipv4Net>> = (0..n)
        .map(|i| (0..per).map(|j| block(i * per + j, 26)).collect())
        .collect::<Result<_>>()?;
    let want = (n - 1) * per;
    let poll = Duration::from_millis(if want > 5000 { 20 } else { 5 });
    let ours = {
        let c = our_cluster(n, POOL, 26)?;
        for (i, b) in blocks.iter().enumerate() {
            put_affinities(&c, &format!("node-{}", i + 1), b)?;
        }
        let t0 = Instant::now();
        let agents = start_agents_at_once(&c, args)?;
        let started = t0.elapsed();
        let pids: Vec<u32> = agents.iter().map(Agent::pid).collect();
        let times =
            wait_counts(&pids, pool, want, t0, poll, Duration::from_secs(120)).map_err(|e| {
                keep_logs(label, &agents);
                e.context(format!("established per agent: {:?}", established(&agents)))
            })?;
        // The routing process (calico-bgpd, BIRD's counterpart) is the issue's figure;
        // calico-node beside it is reported too, and CPU is both processes' per node.
        let bgpd = bgpd_pids(&agents)?;
        let both: Vec<u32> = pids.iter().chain(&bgpd).copied().collect();
        let cpu_each = cpu_seconds(&both)?;
        let cpu = per_node(&cpu_each, n);
        std::thread::sleep(Duration::from_millis(500));
        let rss: Vec<u64> = bgpd.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
        let agent_rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
        let parts = rss_parts(&bgpd)?;
        let agent_parts = rss_parts(&pids)?;
        let later = rss_later(&bgpd)?;
        keep_logs(label, &agents);
        json!({"all_kernels_full_s": secs(times.iter().max().copied().unwrap_or_default()),
               "first_kernel_full_s": secs(times.iter().min().copied().unwrap_or_default()),
               "all_started_s": secs(started), "rss_kib": rss, "rss_parts": parts,
               "calico_node_rss_kib": agent_rss, "calico_node_rss_parts": agent_parts,
               "rss_later": later, "cpu_s_at_full": cpu,
               "cpu_s_at_full_parts": {"calico_node": &cpu_each[..n], "calico_bgpd": &cpu_each[n..]},
               "kernel_full_s": times.iter().map(|t| secs(*t)).collect::<Vec<_>>()})
    };
    let bird = {
        let lab = Lab::new(n)?;
        // The lab's BIRD configuration (static blackholes, export of static and BGP routes)
        // with Calico's session structure and timers: Calico's generated filter functions
        // (one `if` per local block, run for every exported route) make BIRD quadratic in
        // the number of local blocks, which no real Calico node has 10,000 of.
        let cfgs: Vec<SpeakerConfig> = (0..n)
            .map(|i| {
                let me = CalicoMeshNode::new(Lab::ip(i), (0..n).map(Lab::ip).collect());
                let mut cfg = me.speaker_config().timers(args.bird_timers());
                cfg.originate = blocks[i].clone();
                cfg
            })
            .collect();
        let t0 = Instant::now();
        let birds: Vec<Bird> = std::thread::scope(|s| {
            let handles: Vec<_> = cfgs
                .into_iter()
                .enumerate()
                .map(|(i, cfg)| {
                    let ns = lab.netns(i);
                    s.spawn(move || Bird::start(ns, cfg))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("bird start panicked"))?
                })
                .collect::<Result<Vec<Bird>>>()
        })?;
        let started = t0.elapsed();
        let pids: Vec<u32> = birds.iter().map(bird_pid).collect::<Result<_>>()?;
        let times = wait_counts(&pids, pool, want, t0, poll, Duration::from_secs(120))?;
        let cpu = cpu_seconds(&pids)?;
        std::thread::sleep(Duration::from_millis(500));
        let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
        let parts = rss_parts(&pids)?;
        let later = rss_later(&pids)?;
        json!({"all_kernels_full_s": secs(times.iter().max().copied().unwrap_or_default()),
               "first_kernel_full_s": secs(times.iter().min().copied().unwrap_or_default()),
               "all_started_s": secs(started), "rss_kib": rss, "rss_parts": parts,
               "rss_later": later, "cpu_s_at_full": cpu,
               "kernel_full_s": times.iter().map(|t| secs(*t)).collect::<Vec<_>>()})
    };
    Ok(
        json!({"part": label, "nodes": n, "prefixes_per_node": per, "routes_per_kernel": want,
              "load_before": load_before, "load_after": loadavg(),
              "ours": ours, "bird": bird}),
    )
}

/// Permanent neighbour entries between every pair of `members` (namespace, address on the
/// shared underlay's `eth0`). The kernel's ARP table is shared by all namespaces here
/// (gc_thresh3 = 1024 entries in all): a 50-node full mesh needs 2450 dynamic entries and
/// the kernel refuses new ones ("arp_cache: neighbor table overflow", connects fail with
/// EHOSTUNREACH). Permanent entries do not count against that limit; both sides of the
/// benchmark get the same.
fn static_neighbours(members: &[(&NetNs, Ipv4Addr)]) -> Result<()> {
    let mut macs = Vec::new();
    for (ns, _) in members {
        let out = testkit::process::run_checked(Command::new("ip").args([
            "-n",
            ns.name(),
            "-j",
            "link",
            "show",
            "eth0",
        ]))?;
        let v: Value = serde_json::from_str(&out)?;
        macs.push(
            v[0]["address"]
                .as_str()
                .context("eth0 without a MAC")?
                .to_string(),
        );
    }
    for (i, (ns, _)) in members.iter().enumerate() {
        let mut batch = String::new();
        for (j, (_, ip)) in members.iter().enumerate().filter(|(j, _)| *j != i) {
            batch.push_str(&format!(
                "neigh replace {ip} lladdr {} dev eth0 nud permanent\n",
                macs[j]
            ));
        }
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("ip stdin")?
            .write_all(batch.as_bytes())?;
        if !child.wait()?.success() {
            bail!("ip -batch neigh in {}", ns.name());
        }
    }
    Ok(())
}

fn scale(args: &Args) -> Result<Value> {
    let n = args.scale_nodes;
    eprintln!("== scale: {n} nodes, one block each");
    let load_before = loadavg();
    let pool: Ipv4Net = POOL.parse()?;
    let idle = Duration::from_secs(args.idle_seconds);
    let ours = (|| -> Result<Value> {
        let c = our_cluster(n, POOL, 26)?;
        let mut members: Vec<(&NetNs, Ipv4Addr)> = c
            .nodes
            .iter()
            .map(|node| (node.netns(), node.underlay_ip()))
            .collect();
        members.push((&c.etcd_ns, testkit::cluster::ETCD_IP));
        static_neighbours(&members)?;
        for i in 0..n {
            put_affinities(&c, &format!("node-{}", i + 1), &[block(i, 26)?])?;
        }
        let t_first = Instant::now();
        let mut agents = Vec::new();
        let mut t_last = t_first;
        for i in 0..n {
            check_interrupted()?;
            t_last = Instant::now();
            agents.push(start_agent(&c, i, args)?);
        }
        let pids: Vec<u32> = agents.iter().map(Agent::pid).collect();
        let times = wait_counts(
            &pids,
            pool,
            n - 1,
            t_last,
            Duration::from_millis(20),
            Duration::from_secs(60),
        )
        .map_err(|e| {
            keep_logs("scale", &agents);
            e.context(format!("established per agent: {:?}", established(&agents)))
        })?;
        keep_logs("scale", &agents);
        // Per node: calico-node and its calico-bgpd together.
        let bgpd = bgpd_pids(&agents)?;
        let both: Vec<u32> = pids.iter().chain(&bgpd).copied().collect();
        let cpu = per_node(&idle_cpu(&both, idle)?, n);
        let rss: Vec<f64> = per_node(
            &both
                .iter()
                .map(|p| rss_kib(*p).map(|r| r as f64))
                .collect::<Result<Vec<f64>>>()?,
            n,
        );
        Ok(json!({"converged_after_last_start_s": secs(times.iter().max().copied().unwrap_or_default()),
               "start_span_s": secs(t_last - t_first),
               "idle_cpu_percent": {"mean": cpu.iter().sum::<f64>() / cpu.len() as f64,
                                    "max": percentile(&cpu, 100.0)},
               "rss_kib_median": percentile(&rss, 50.0)}))
    })()
    .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    let bird = {
        let lab = Lab::new(n)?;
        let members: Vec<(&NetNs, Ipv4Addr)> = (0..n).map(|i| (lab.netns(i), Lab::ip(i))).collect();
        static_neighbours(&members)?;
        let mesh: Vec<Ipv4Addr> = (0..n).map(Lab::ip).collect();
        let t_first = Instant::now();
        let mut birds = Vec::new();
        let mut t_last = t_first;
        for i in 0..n {
            check_interrupted()?;
            let mut node = CalicoMeshNode::new(Lab::ip(i), mesh.clone());
            node.pools = vec![pool];
            node.local_blocks = vec![block(i, 26)?];
            node.timers = args.bird_timers();
            t_last = Instant::now();
            birds.push(Bird::start_calico(lab.netns(i), node)?);
        }
        let pids: Vec<u32> = birds.iter().map(bird_pid).collect::<Result<_>>()?;
        let times = wait_counts(
            &pids,
            pool,
            n - 1,
            t_last,
            Duration::from_millis(20),
            Duration::from_secs(120),
        )?;
        let cpu = idle_cpu(&pids, idle)?;
        let rss: Vec<f64> = pids
            .iter()
            .map(|p| rss_kib(*p).map(|r| r as f64))
            .collect::<Result<_>>()?;
        json!({"converged_after_last_start_s": secs(times.iter().max().copied().unwrap_or_default()),
               "start_span_s": secs(t_last - t_first),
               "idle_cpu_percent": {"mean": cpu.iter().sum::<f64>() / cpu.len() as f64,
                                    "max": percentile(&cpu, 100.0)},
               "rss_kib_median": percentile(&rss, 50.0)})
    };
    Ok(
        json!({"part": "scale", "nodes": n, "idle_seconds": args.idle_seconds,
              "load_before": load_before, "load_after": loadavg(),
              "ours": ours, "bird": bird}),
    )
}

// ---------------------------------------------------------------------------------------
// Summary.

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn median_u64(v: &Value) -> Option<f64> {
    let xs: Vec<f64> = v.as_array()?.iter().filter_map(Value::as_f64).collect();
    percentile(&xs, 50.0)
}

/// One summary row: what, ours, BIRD's, ratio (ours / BIRD's), target and whether ours
/// meets it.
fn row(
    rows: &mut Vec<Value>,
    what: &str,
    unit: &str,
    ours: Option<f64>,
    bird: Option<f64>,
    target: Option<f64>,
) {
    let ratio = match (ours, bird) {
        (Some(o), Some(b)) if b > 0.0 => Some((o / b * 100.0).round() / 100.0),
        _ => None,
    };
    let meets = match (ours, target) {
        (Some(o), Some(t)) => Some(o <= t),
        _ => None,
    };
    rows.push(
        json!({"what": what, "unit": unit, "ours": ours, "bird": bird,
                     "ratio": ratio, "target": target, "meets": meets}),
    );
}

fn summary(results: &[Value]) -> Vec<Value> {
    let mut rows = Vec::new();
    for r in results {
        match r["part"].as_str() {
            Some("reach") => {
                row(
                    &mut rows,
                    "reach median (commit → all kernels)",
                    "ms",
                    num(r, &["ours", "from_commit", "median_ms"]),
                    num(r, &["bird", "from_config_write", "median_ms"]),
                    None,
                );
                row(
                    &mut rows,
                    "reach p99 (commit → all kernels)",
                    "ms",
                    num(r, &["ours", "from_commit", "p99_ms"]),
                    num(r, &["bird", "from_config_write", "p99_ms"]),
                    Some(50.0),
                );
            }
            Some("rr") => row(
                &mut rows,
                "rr hot update (commit → all client kernels)",
                "s",
                num(r, &["ours", "from_commit_s"]),
                num(r, &["bird", "from_config_write_s"]),
                Some(0.1),
            ),
            Some(label @ ("cold" | "memory")) => {
                if label == "cold" {
                    row(
                        &mut rows,
                        "cold start (start → all kernels full)",
                        "s",
                        num(r, &["ours", "all_kernels_full_s"]),
                        num(r, &["bird", "all_kernels_full_s"]),
                        Some(1.5),
                    );
                }
                if label == "cold" && r["also"] == "memory" {
                    // The memory row comes from the same run, under "memory".
                    continue;
                }
                let routes = num(r, &["routes_per_kernel"]).unwrap_or(0.0);
                row(
                    &mut rows,
                    &format!("RSS with {routes} learned routes (median; ours: calico-bgpd)"),
                    "MiB",
                    median_u64(&r["ours"]["rss_kib"]).map(|k| (k / 1024.0 * 10.0).round() / 10.0),
                    median_u64(&r["bird"]["rss_kib"]).map(|k| (k / 1024.0 * 10.0).round() / 10.0),
                    (label == "memory").then_some(10.0),
                );
                row(
                    &mut rows,
                    "  calico-node beside calico-bgpd (median; BIRD's confd not run)",
                    "MiB",
                    median_u64(&r["ours"]["calico_node_rss_kib"])
                        .map(|k| (k / 1024.0 * 10.0).round() / 10.0),
                    None,
                    None,
                );
                let pss = |who: &str| {
                    median_u64(&r[who]["rss_parts"]["pss_kib"])
                        .map(|k| (k / 1024.0 * 10.0).round() / 10.0)
                };
                row(
                    &mut rows,
                    "  PSS (pages shared by the nodes' processes split), median",
                    "MiB",
                    pss("ours"),
                    pss("bird"),
                    None,
                );
            }
            Some("scale") => {
                row(
                    &mut rows,
                    "scale convergence (after last start)",
                    "s",
                    num(r, &["ours", "converged_after_last_start_s"]),
                    num(r, &["bird", "converged_after_last_start_s"]),
                    Some(5.0),
                );
                row(
                    &mut rows,
                    "scale idle CPU per agent (max)",
                    "%",
                    num(r, &["ours", "idle_cpu_percent", "max"]),
                    num(r, &["bird", "idle_cpu_percent", "max"]),
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
        "{:<48} {:>6} {:>10} {:>10} {:>7} {:>8} {:>5}",
        "measurement", "unit", "ours", "BIRD", "ratio", "target", "meets"
    );
    for r in rows {
        println!(
            "{:<48} {:>6} {:>10} {:>10} {:>7} {:>8} {:>5}",
            r["what"].as_str().unwrap_or_default(),
            r["unit"].as_str().unwrap_or_default(),
            f(&r["ours"]),
            f(&r["bird"]),
            f(&r["ratio"]),
            f(&r["target"]),
            match r["meets"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    testkit::process::sigterm_flag();
    for tool in ["/usr/sbin/bird", "/usr/sbin/birdc"] {
        if !std::path::Path::new(tool).is_file() {
            bail!("{tool} is missing: install the Debian package bird2 (scripts/setup does)");
        }
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let started = Instant::now();
    let mut run = |name: &str, f: &dyn Fn() -> Result<Value>| {
        if interrupted() {
            return;
        }
        match f() {
            Ok(v) => {
                eprintln!("{}", serde_json::to_string(&v).unwrap_or_default());
                results.push(v);
            }
            Err(e) => {
                eprintln!("bench-bgp: {name} failed: {e:#}");
                errors.push(json!({"part": name, "error": format!("{e:#}")}));
            }
        }
    };
    if args.wants("reach") {
        run("reach", &|| reach(&args));
    }
    if args.wants("rr") {
        run("rr", &|| rr(&args));
    }
    // Cold start with the issue's sizes has the memory benchmark's 30,000 routes per kernel;
    // then one run serves both.
    let memory_per = args.memory_routes.div_ceil(args.cold_nodes - 1);
    let shared = args.wants("cold") && args.wants("memory") && memory_per == args.cold_prefixes;
    if args.wants("cold") {
        let label = if shared { "memory" } else { "cold" };
        run("cold", &|| {
            let mut v = cold(&args, args.cold_nodes, args.cold_prefixes, label)?;
            if shared {
                v["part"] = json!("cold");
                v["also"] = json!("memory");
            }
            Ok(v)
        });
    }
    if args.wants("memory") && !shared {
        run("memory", &|| {
            cold(&args, args.cold_nodes, memory_per, "memory")
        });
    }
    if args.wants("scale") {
        run("scale", &|| scale(&args));
    }
    // A shared cold/memory run gives both rows.
    let mut for_summary = results.clone();
    for r in &results {
        if r.get("also").and_then(Value::as_str) == Some("memory") {
            let mut m = r.clone();
            m["part"] = json!("memory");
            for_summary.push(m);
        }
    }
    let rows = summary(&for_summary);
    let doc = json!({
        "benchmark": "bench-bgp",
        "args": format!("{args:?}"),
        "elapsed_s": secs(started.elapsed()),
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
    if !errors.is_empty() {
        bail!("{} part(s) failed", errors.len());
    }
    Ok(())
}
