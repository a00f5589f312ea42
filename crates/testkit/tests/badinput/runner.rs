//! The table's rows ([`Row`]), the test bed they share ([`Bed`]) and how one row runs.
//!
//! A row's config is a JSON merge patch (RFC 7386: `null` removes a key) on its plugin's base
//! config, or raw bytes. Strings in configs, environment values, seeds and files may name the
//! row's things: `{NETNS}` (a fresh pod namespace), `{CID}` (a container ID unique to the
//! row), `{TMP}` (a directory of its own, holding `fifo` (a FIFO), `dir/` and `plug/`, a
//! `CNI_PATH` for fake delegates), `{BIN}` (our plugins, for `CNI_PATH`), `{TLS}` (the
//! node's etcd client identity) and `{WRONGCERT}`/`{WRONGKEY}` (one from another CA).
//!
//! A row runs as: reset etcd if the last row changed it, seed, files, `setup`, snapshot, an
//! optional first ADD, `between`, the call (in its own [`Jail`]), `check`, a DEL if something
//! was added (or, for a `del_after_failure` row, after its failed call; a follow-up DEL never
//! takes a row's host `CNI_NETNS`), snapshot and comparison ([`leftovers`]), `teardown`. A
//! failing row is followed by [`leftovers::clean_node`].
//!
//! A row of a defect in [`PENDING`] that passes fails the table: the fix merged and the
//! list must lose it, or the row would guard nothing.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::limits::{Limits, Outcome};
use testkit::{Cluster, Jail, NetNs};

use crate::PENDING;
use crate::leftovers::{self, Snapshot};

/// Which binary a row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Calico,
    Ipam,
    Portmap,
    Calicoctl,
}

impl Plugin {
    fn binary(self) -> &'static str {
        match self {
            Plugin::Calico => "calico",
            Plugin::Ipam => "calico-ipam",
            Plugin::Portmap => "portmap",
            Plugin::Calicoctl => "calicoctl",
        }
    }

    /// The config a row's patch applies to.
    fn base(self) -> Value {
        match self {
            Plugin::Calico | Plugin::Ipam => json!({
                "cniVersion": "1.0.0", "name": "badnet", "type": "calico",
                "etcd_endpoints": format!("https://{}:{}", testkit::cluster::ETCD_IP, testkit::cluster::ETCD_PORT),
                "etcd_key_file": "{TLS}/etcd-key", "etcd_cert_file": "{TLS}/etcd-cert",
                "etcd_ca_cert_file": "{TLS}/etcd-ca",
                "mtu": 1440, "log_level": "debug", "ipam": {"type": "calico-ipam"}
            }),
            Plugin::Portmap => json!({
                "cniVersion": "1.0.0", "name": "badnet", "type": "portmap", "snat": true,
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
                "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "sandbox": "{NETNS}"}],
                    "ips": [{"address": "10.244.200.5/32", "interface": 0}]}
            }),
            Plugin::Calicoctl => Value::Null,
        }
    }
}

/// The CNI verb, or calicoctl's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Ctl(Vec<String>),
}

impl Verb {
    fn cni(&self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Status => "STATUS",
            Verb::Ctl(_) => "",
        }
    }
}

/// What a row must end with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exit 0: an ADD prints one result (and is then deleted), other verbs print nothing.
    Ok,
    /// Exit 1 with one error object carrying one of these codes.
    Code(Vec<u64>),
    /// calicoctl: this exit status.
    Exit(i32),
}

/// A row's stdin.
#[derive(Clone)]
pub enum Input {
    /// A merge patch on the plugin's base config.
    Patch(Value),
    /// The base config changed by a function.
    Edit(fn(Value) -> Value),
    /// These bytes, as they are.
    Raw(Vec<u8>),
}

/// A step of a row that runs on the bed: before the first snapshot (`setup`), after the last
/// one (`teardown`, run also when the row failed), or between a preceding ADD and the call
/// (`between`).
pub type Step = fn(&Bed, &Ctx) -> anyhow::Result<()>;

/// An extra check on the outcome of the row's call.
pub type Check = fn(&Bed, &Ctx, &Outcome) -> Result<(), String>;

/// One case of the table.
#[derive(Clone)]
pub struct Row {
    pub name: String,
    /// The defect (`#7`) the row reproduces, for [`PENDING`].
    pub defect: Option<&'static str>,
    pub plugin: Plugin,
    pub verb: Verb,
    pub input: Input,
    /// Environment overrides; `None` removes the variable.
    pub env: Vec<(String, Option<String>)>,
    /// etcd puts after the reset.
    pub seed: Vec<(String, String)>,
    /// Files written in `{TMP}`: relative name, content, executable.
    pub files: Vec<(String, Vec<u8>, bool)>,
    pub expect: Expect,
    /// A word the error message (calicoctl: stderr) must contain (case-insensitive).
    pub msg_has: Option<String>,
    pub max: Duration,
    pub limits: Limits,
    /// Most tasks the run may have had at once.
    pub max_pids: u64,
    /// Most memory the run may have been charged, in bytes (below the jail's limit, so a
    /// run that the limit stopped also fails here).
    pub max_memory: u64,
    /// Run the same ADD (expecting success) before the row's call.
    pub add_first: bool,
    pub setup: Option<Step>,
    pub between: Option<Step>,
    pub teardown: Option<Step>,
    pub check: Option<Check>,
    /// etcd key prefixes the row may leave changed (what it put there itself).
    pub allowed_keys: Vec<String>,
    /// After the row's (failing) call, the runtime's DEL must give 0, and the leftover check
    /// then covers what the failed call and its DEL left together.
    pub del_after_failure: bool,
}

/// A row with the defaults: base config, no overrides, expects success within 2 s.
pub fn row(name: impl Into<String>, plugin: Plugin, verb: Verb) -> Row {
    Row {
        name: name.into(),
        defect: None,
        plugin,
        verb,
        input: Input::Patch(json!({})),
        env: Vec::new(),
        seed: Vec::new(),
        files: Vec::new(),
        expect: Expect::Ok,
        msg_has: None,
        max: Duration::from_secs(2),
        limits: Limits {
            pids: 64,
            memory: 512 << 20,
            address_space: 2 << 30,
            deadline: Duration::from_secs(5),
        },
        max_pids: 32,
        max_memory: 256 << 20,
        add_first: false,
        setup: None,
        between: None,
        teardown: None,
        check: None,
        allowed_keys: Vec::new(),
        del_after_failure: false,
    }
}

impl Row {
    pub fn defect(mut self, n: &'static str) -> Self {
        self.defect = Some(n);
        self
    }
    pub fn patch(mut self, p: Value) -> Self {
        self.input = Input::Patch(p);
        self
    }
    pub fn edit(mut self, f: fn(Value) -> Value) -> Self {
        self.input = Input::Edit(f);
        self
    }
    pub fn raw(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.input = Input::Raw(bytes.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), Some(v.into())));
        self
    }
    pub fn unset(mut self, k: &str) -> Self {
        self.env.push((k.into(), None));
        self
    }
    pub fn seed(mut self, key: &str, value: impl Into<String>) -> Self {
        self.seed.push((key.into(), value.into()));
        self
    }
    pub fn file(mut self, name: &str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), content.into(), false));
        self
    }
    pub fn script(mut self, name: &str, content: &str) -> Self {
        self.files.push((name.into(), content.into(), true));
        self
    }
    pub fn code(mut self, c: u64) -> Self {
        self.expect = Expect::Code(vec![c]);
        self
    }
    pub fn codes(mut self, c: &[u64]) -> Self {
        self.expect = Expect::Code(c.to_vec());
        self
    }
    pub fn exit(mut self, c: i32) -> Self {
        self.expect = Expect::Exit(c);
        self
    }
    pub fn msg(mut self, word: &str) -> Self {
        self.msg_has = Some(word.into());
        self
    }
    pub fn within_ms(mut self, ms: u64) -> Self {
        self.max = Duration::from_millis(ms);
        // Long enough to tell slow from hung, short enough that a hang costs little.
        self.limits.deadline = self.max + Duration::from_secs(1);
        self
    }
    pub fn pids(mut self, max_pids: u64, pids_max: u64) -> Self {
        self.max_pids = max_pids;
        self.limits.pids = pids_max;
        self
    }
    pub fn add_first(mut self) -> Self {
        self.add_first = true;
        self
    }
    pub fn setup(mut self, s: Step) -> Self {
        self.setup = Some(s);
        self
    }
    pub fn between(mut self, s: Step) -> Self {
        self.between = Some(s);
        self
    }
    pub fn teardown(mut self, s: Step) -> Self {
        self.teardown = Some(s);
        self
    }
    pub fn allow_key(mut self, prefix: &str) -> Self {
        self.allowed_keys.push(prefix.into());
        self
    }
    pub fn check(mut self, c: Check) -> Self {
        self.check = Some(c);
        self
    }
    pub fn del_after_failure(mut self) -> Self {
        self.del_after_failure = true;
        self
    }
}

/// The row's own names and paths (see the module docs).
pub struct Ctx {
    pub pod: NetNs,
    pub cid: String,
    pub tmp: tempfile::TempDir,
}

impl Ctx {
    pub fn fill(&self, bed: &Bed, s: &str) -> String {
        s.replace("{NETNS}", &self.pod.path().to_string_lossy())
            .replace("{CID}", &self.cid)
            .replace("{TMP}", &self.tmp.path().to_string_lossy())
            .replace("{BIN}", &bed.cluster.cni_path.path().to_string_lossy())
            .replace("{TLS}", "/etc/cni/net.d/calico-tls")
            .replace(
                "{WRONGCERT}",
                &bed.cluster.etcd.wrong_cert_path().to_string_lossy(),
            )
            .replace(
                "{WRONGKEY}",
                &bed.cluster.etcd.wrong_key_path().to_string_lossy(),
            )
    }
}

/// The node, etcd and the baseline keys every row starts from.
pub struct Bed {
    pub cluster: Cluster,
    pub baseline: Vec<(String, String)>,
    /// The node's IPv4 and IPv6 nat tables after the warm-up.
    pub nat: (String, String),
}

/// The node's name (its `/var/lib/calico/nodename`).
pub const NODE: &str = "node-1";

/// The IPv4 pool every row has unless it replaces it.
pub const POOL: &str = "10.244.0.0/16";

impl Bed {
    fn start() -> anyhow::Result<Self> {
        let cluster = Cluster::start(1, &[])?;
        cluster.add_pool("bad-pool", POOL, None)?;
        let baseline = cluster.etcd.get_prefix("/calico")?;
        Ok(Self {
            cluster,
            baseline,
            nat: (String::new(), String::new()),
        })
    }

    pub fn node(&self) -> &testkit::SimNode {
        self.cluster.node(0)
    }

    /// etcd back to the baseline.
    /// Only what differs is written: most rows change a key or two, and every etcdctl call
    /// costs a process.
    pub fn reset(&self) -> anyhow::Result<()> {
        let etcd = &self.cluster.etcd;
        let now = etcd.get_prefix("/calico")?;
        for (k, _) in now
            .iter()
            .filter(|(k, _)| !self.baseline.iter().any(|(b, _)| b == k))
        {
            etcd.ctl().run(&["del", "--", k])?;
        }
        for (k, v) in self.baseline.iter().filter(|kv| !now.contains(kv)) {
            etcd.put(k, v)?;
        }
        Ok(())
    }

    /// The binary a row runs, as the node sees it (the build directory is not bind-mounted
    /// over, so host paths work).
    fn binary(plugin: Plugin) -> PathBuf {
        testkit::bins::built(plugin.binary()).unwrap()
    }
}

/// One row's verdict.
struct Verdict {
    name: String,
    defect: Option<&'static str>,
    problems: Vec<String>,
    /// What the call ended with: `exit N`, or `code N` for an error object.
    ended: String,
    elapsed: Duration,
    peak_pids: u64,
    peak_memory: u64,
    /// The whole row: set-up, calls, snapshots.
    wall: Duration,
}

/// Runs every row (or those whose name contains `BADINPUT_ROWS`, or whose defect it is) and fails on any failing row that is not
/// pending.
pub fn run_table(rows: &[Row]) {
    let filter = std::env::var("BADINPUT_ROWS").ok();
    let mut bed = Bed::start().unwrap();
    warm_up(&bed).unwrap();
    // What the warm-up left by design (the network's profile, the node's block) is the
    // baseline every row starts from.
    bed.baseline = bed.cluster.etcd.get_prefix("/calico").unwrap();
    bed.nat = leftovers::save_nat(&bed).unwrap();
    let started = Instant::now();
    let mut verdicts = Vec::new();
    let mut dirty = false;
    // nextest's SIGTERM (the table ran past its bound) ends the table after the current row,
    // so that the bed's guards still remove the node, its namespaces and etcd.
    let terminated = testkit::process::sigterm_flag();
    for row in rows {
        if terminated.load(std::sync::atomic::Ordering::SeqCst) {
            drop(bed);
            panic!("terminated (SIGTERM) after {} rows", verdicts.len());
        }
        if filter
            .as_deref()
            .is_some_and(|f| !row.name.contains(f) && row.defect != Some(f))
        {
            continue;
        }
        if dirty || !row.seed.is_empty() {
            bed.reset().unwrap();
        }
        let (verdict, left_dirty) = run_row(&bed, row);
        dirty = left_dirty;
        verdicts.push(verdict);
    }
    let total = started.elapsed();
    let mut report = String::new();
    let mut failed = Vec::new();
    for v in &verdicts {
        let pending = v.defect.filter(|d| PENDING.contains(d));
        let state = match (v.problems.is_empty(), pending) {
            (true, None) => "ok",
            (true, Some(_)) => "HOLDS",
            (false, Some(_)) => "PENDING-FAIL",
            (false, None) => "FAIL",
        };
        let _ = writeln!(
            report,
            "{state:>12} {:>8} {:>6}ms ({:>5}ms) {:>3}pids {:>4}MiB  {}{}",
            v.ended,
            v.elapsed.as_millis(),
            v.wall.as_millis(),
            v.peak_pids,
            v.peak_memory >> 20,
            v.defect.map(|d| format!("[{d}] ")).unwrap_or_default(),
            v.name
        );
        for p in &v.problems {
            let _ = writeln!(report, "{:>35}- {p}", "");
        }
        match (v.problems.is_empty(), pending) {
            // A pending row that passes means the fix merged: the list must say so, or a
            // later regression of it would only be reported.
            (true, Some(d)) => failed.push(format!(
                "{}: defect {d} now holds: drop it from PENDING",
                v.name
            )),
            (false, None) => failed.push(v.name.clone()),
            _ => {}
        }
    }
    let _ = writeln!(
        report,
        "{} rows in {:.1}s, {} failed, {} pending rows failing",
        verdicts.len(),
        total.as_secs_f64(),
        failed.len(),
        verdicts
            .iter()
            .filter(|v| !v.problems.is_empty() && v.defect.is_some_and(|d| PENDING.contains(&d)))
            .count()
    );
    // Straight to stderr: the report is wanted also when the table passes.
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(report.as_bytes());
    assert!(failed.is_empty(), "failing rows: {failed:#?}");
}

/// One calico ADD and DEL and one portmap ADD and DEL, so that what stays by design (the
/// portmap table and chains, the network's Profile, the node's block) exists before the
/// first snapshot. The node must be as before; etcd keeps what stays.
fn warm_up(bed: &Bed) -> anyhow::Result<()> {
    for plugin in [Plugin::Calico, Plugin::Portmap] {
        let r = row("warm-up", plugin, Verb::Add);
        let (v, _) = run_row(bed, &r);
        let problems: Vec<&String> = v
            .problems
            .iter()
            .filter(|p| !p.starts_with("etcd changed") && !p.starts_with("the node changed"))
            .collect();
        anyhow::ensure!(problems.is_empty(), "warm-up {plugin:?}: {problems:?}");
    }
    Ok(())
}

/// The stdin of a row.
fn stdin_of(bed: &Bed, ctx: &Ctx, row: &Row) -> Vec<u8> {
    let base = row.plugin.base();
    match &row.input {
        Input::Raw(bytes) => bytes.clone(),
        Input::Patch(p) => {
            let mut v = base;
            merge(&mut v, p);
            ctx.fill(bed, &v.to_string()).into_bytes()
        }
        Input::Edit(f) => ctx.fill(bed, &f(base).to_string()).into_bytes(),
    }
}

/// RFC 7386 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The command for a call of `row`'s plugin with `verb` on the node, env cleared and set
/// (with the row's overrides; a `follow_up` call around the row's own keeps its verb).
fn command(bed: &Bed, ctx: &Ctx, row: &Row, verb: &Verb, follow_up: bool) -> Command {
    let mut cmd = bed.node().command(Bed::binary(row.plugin)).unwrap();
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if let Verb::Ctl(args) = verb {
        cmd.args(args.iter().map(|a| ctx.fill(bed, a)));
        cmd.env("DATASTORE_TYPE", "etcdv3")
            .env(
                "ETCD_ENDPOINTS",
                format!(
                    "https://{}:{}",
                    testkit::cluster::ETCD_IP,
                    testkit::cluster::ETCD_PORT
                ),
            )
            .env("ETCD_CA_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-ca")
            .env("ETCD_CERT_FILE", "/etc/cni/net.d/calico-tls/etcd-cert")
            .env("ETCD_KEY_FILE", "/etc/cni/net.d/calico-tls/etcd-key");
    } else {
        cmd.env("CNI_COMMAND", verb.cni())
            .env("CNI_CONTAINERID", &ctx.cid)
            .env("CNI_NETNS", ctx.pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bed.cluster.cni_path.path());
    }
    for (k, v) in &row.env {
        // A follow-up call (the DEL afterwards) keeps the row's environment but its verb,
        // and never runs in the host's namespace: a row's CNI_NETNS naming it (defect #7)
        // gives way to the row's pod namespace, so a DEL cannot remove a node link.
        if follow_up
            && (k == "CNI_COMMAND" || k == "CNI_NETNS" && v.as_deref().is_some_and(is_host_netns))
        {
            continue;
        }
        {
            match v {
                Some(v) => cmd.env(k, ctx.fill(bed, v)),
                None => cmd.env_remove(k),
            };
        }
    }
    cmd
}

/// Whether `path` names a namespace of a running process (`/proc/<pid>/ns/…`, the caller's
/// own among them) rather than a pod's bind mount.
fn is_host_netns(path: &str) -> bool {
    path.starts_with("/proc/")
}

/// Runs one call in a jail of its own.
fn call(bed: &Bed, ctx: &Ctx, row: &Row, verb: &Verb, follow_up: bool) -> anyhow::Result<Outcome> {
    let jail = Jail::new("bad", row.limits)?;
    jail.run(
        command(bed, ctx, row, verb, follow_up),
        &stdin_of(bed, ctx, row),
    )
}

/// The one JSON value on stdout, or why there is not exactly one object.
pub fn one_object(stdout: &[u8]) -> Result<Value, String> {
    let mut values = serde_json::Deserializer::from_slice(stdout).into_iter::<Value>();
    let first = match values.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(format!("stdout is not JSON ({e}): {}", excerpt(stdout))),
        None => return Err("stdout is empty".into()),
    };
    if values.next().is_some() {
        return Err(format!(
            "more than one value on stdout: {}",
            excerpt(stdout)
        ));
    }
    if !first.is_object() {
        return Err(format!("stdout is not an object: {}", excerpt(stdout)));
    }
    Ok(first)
}

fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
    if b.len() > 300 {
        format!("{s}… ({} bytes)", b.len())
    } else {
        s
    }
}

/// What is wrong with the outcome of a row's call.
fn judge(row: &Row, out: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for bad in [
        "panicked",
        "overflowed its stack",
        "stack backtrace",
        "RUST_BACKTRACE",
    ] {
        if let Some(line) = stderr.lines().find(|l| l.contains(bad)) {
            problems.push(format!("stderr has {bad:?}: {}", excerpt(line.as_bytes())));
        }
    }
    if out.timed_out {
        problems.push(format!(
            "killed at the deadline ({:?})",
            row.limits.deadline
        ));
    } else if out.elapsed > row.max {
        problems.push(format!("took {:?} (bound {:?})", out.elapsed, row.max));
    }
    if !out.leftovers.is_empty() {
        problems.push(format!("processes left running: {:?}", out.leftovers));
    }
    if out.peak_memory > row.max_memory {
        problems.push(format!(
            "{} MiB charged (bound {} MiB)",
            out.peak_memory >> 20,
            row.max_memory >> 20
        ));
    }
    if out.peak_pids > row.max_pids {
        problems.push(format!(
            "{} tasks at once (bound {})",
            out.peak_pids, row.max_pids
        ));
    }
    let Some(code) = out.code() else {
        problems.push(format!("ended by a signal: {:?}", out.status));
        return problems;
    };
    match (&row.expect, &row.verb) {
        (Expect::Exit(want), _) => {
            if code != *want {
                problems.push(format!(
                    "exit {code}, want {want}; stderr: {}",
                    excerpt(&out.stderr)
                ));
            }
            // calicoctl's refusal says why on stderr.
            if let Some(word) = &row.msg_has
                && !stderr.to_lowercase().contains(&word.to_lowercase())
            {
                problems.push(format!(
                    "stderr does not name {word:?}: {}",
                    excerpt(&out.stderr)
                ));
            }
        }
        (Expect::Ok, Verb::Add) => match one_object(&out.stdout) {
            Ok(v) if code == 0 && v.get("code").is_none() => {}
            Ok(v) => problems.push(format!("exit {code}, want a result: {v}")),
            Err(e) => problems.push(format!("exit {code}: {e}")),
        },
        (Expect::Ok, _) => {
            if code != 0 || !out.stdout.iter().all(u8::is_ascii_whitespace) {
                problems.push(format!("exit {code}, stdout {}", excerpt(&out.stdout)));
            }
        }
        (Expect::Code(want), _) => match one_object(&out.stdout) {
            Err(e) => problems.push(format!("exit {code}: {e}")),
            Ok(v) => {
                let got = v["code"].as_u64();
                if code != 1 || !got.is_some_and(|g| want.contains(&g)) {
                    problems.push(format!("exit {code} code {got:?}, want {want:?}: {v}"));
                }
                let msg = v["msg"].as_str().unwrap_or_default();
                if msg.is_empty() || v.get("cniVersion").is_none() {
                    problems.push(format!("an error object needs cniVersion and msg: {v}"));
                }
                if let Some(word) = &row.msg_has {
                    let text = format!("{msg} {}", v["details"].as_str().unwrap_or_default());
                    if !text.to_lowercase().contains(&word.to_lowercase()) {
                        problems.push(format!("message does not name {word:?}: {v}"));
                    }
                }
            }
        },
    }
    problems
}

/// Runs a row; returns its verdict and whether it may have changed etcd.
fn run_row(bed: &Bed, row: &Row) -> (Verdict, bool) {
    let mut verdict = Verdict {
        name: row.name.clone(),
        defect: row.defect,
        problems: Vec::new(),
        ended: String::new(),
        elapsed: Duration::ZERO,
        peak_pids: 0,
        peak_memory: 0,
        wall: Duration::ZERO,
    };
    let started = Instant::now();
    let ctx = match prepare(bed, row) {
        Ok(ctx) => ctx,
        Err(e) => {
            verdict.problems.push(format!("preparing the row: {e:#}"));
            return (verdict, true);
        }
    };
    let mut dirty = !row.seed.is_empty();
    let result = (|| -> anyhow::Result<()> {
        let before = Snapshot::take(bed)?;
        if row.add_first {
            dirty = true;
            let first = call(bed, &ctx, row, &Verb::Add, true)?;
            let p = judge(&with_verb(&row_expecting_ok(row), Verb::Add), &first);
            if !p.is_empty() {
                verdict
                    .problems
                    .push(format!("the first ADD: {}", p.join("; ")));
            }
        }
        if let Some(between) = row.between {
            dirty = true;
            between(bed, &ctx)?;
        }
        let out = call(bed, &ctx, row, &row.verb, false)?;
        verdict.elapsed = out.elapsed;
        verdict.ended = match (out.code(), one_object(&out.stdout)) {
            (Some(1), Ok(v)) if v.get("code").is_some() => format!("code {}", v["code"]),
            (Some(c), _) => format!("exit {c}"),
            (None, _) => "signal".into(),
        };
        verdict.peak_pids = out.peak_pids;
        verdict.peak_memory = out.peak_memory;
        verdict.problems.extend(judge(row, &out));
        if let Some(check) = row.check
            && let Err(e) = check(bed, &ctx, &out)
        {
            verdict.problems.push(e);
        }
        if row.del_after_failure && !out.timed_out {
            dirty = true;
            let del = call(bed, &ctx, row, &Verb::Del, true)?;
            let p = judge(&row_expecting_ok(&with_verb(row, Verb::Del)), &del);
            if !p.is_empty() {
                verdict
                    .problems
                    .push(format!("the DEL after the failure: {}", p.join("; ")));
            }
        }
        let added = (row.expect == Expect::Ok && row.verb == Verb::Add) || row.add_first;
        // After a hang the DEL would hang the same way; the reset and `clean_node` clean up.
        if !out.timed_out
            && !row.del_after_failure
            && (added || out.code() == Some(0) && row.verb == Verb::Add)
        {
            dirty = true;
            // The runtime's DEL of what the row added (the row's environment, verb DEL).
            let del = call(bed, &ctx, row, &Verb::Del, true)?;
            let p = judge(&row_expecting_ok(&with_verb(row, Verb::Del)), &del);
            if !p.is_empty() {
                verdict
                    .problems
                    .push(format!("the DEL afterwards: {}", p.join("; ")));
            }
        }
        let after = Snapshot::take(bed)?;
        verdict
            .problems
            .extend(leftovers::compare(&before, &after, &row.allowed_keys));
        Ok(())
    })();
    if let Err(e) = result {
        verdict.problems.push(format!("running the row: {e:#}"));
    }
    if let Some(teardown) = row.teardown
        && let Err(e) = teardown(bed, &ctx)
    {
        verdict
            .problems
            .push(format!("tearing the row down: {e:#}"));
    }
    // A failing row may have left links and rules: put the node back for the next row.
    if !verdict.problems.is_empty() {
        dirty = true;
        let _ = leftovers::clean_node(bed);
    }
    verdict.wall = started.elapsed();
    (verdict, dirty)
}

fn row_expecting_ok(row: &Row) -> Row {
    let mut r = row.clone();
    r.expect = Expect::Ok;
    r.max = r.max.max(Duration::from_secs(2));
    // A row's tight deadline is for its own call; an ADD before it or a DEL after it gets
    // the default, so that a slow moment kills no clean-up half-way.
    r.limits.deadline = r.limits.deadline.max(Duration::from_secs(5));
    r.check = None;
    r
}

fn with_verb(row: &Row, verb: Verb) -> Row {
    let mut r = row.clone();
    r.verb = verb;
    r
}

/// The row's pod namespace, directory and files, and its seed in etcd.
fn prepare(bed: &Bed, row: &Row) -> anyhow::Result<Ctx> {
    let tmp = tempfile::Builder::new().prefix("badinput.").tempdir()?;
    nix::unistd::mkfifo(
        &tmp.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    std::fs::create_dir(tmp.path().join("dir"))?;
    std::fs::create_dir(tmp.path().join("plug"))?;
    let ctx = Ctx {
        pod: NetNs::new("bad")?,
        cid: testkit::unique_name("cid"),
        tmp,
    };
    for (name, content, exec) in &row.files {
        let path = ctx.tmp.path().join(name);
        let content = match std::str::from_utf8(content) {
            Ok(text) => ctx.fill(bed, text).into_bytes(),
            Err(_) => content.clone(),
        };
        std::fs::write(&path, content)?;
        if *exec {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    for (k, v) in &row.seed {
        bed.cluster.etcd.put(&ctx.fill(bed, k), &ctx.fill(bed, v))?;
    }
    if let Some(setup) = row.setup {
        setup(bed, &ctx)?;
    }
    Ok(ctx)
}

/// The etcd key of the IPv4 block `cidr` (`10.244.0.0/26` → `…/10.244.0.0-26`).
pub fn block_key(cidr: &str) -> String {
    format!(
        "/calico/ipam/v2/assignment/ipv4/block/{}",
        cidr.replace('/', "-")
    )
}

/// The etcd key of the node's affinity for the IPv4 block `cidr`.
pub fn affinity_key(cidr: &str) -> String {
    format!(
        "/calico/ipam/v2/host/{NODE}/ipv4/block/{}",
        cidr.replace('/', "-")
    )
}
