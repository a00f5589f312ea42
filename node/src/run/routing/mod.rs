//! Route distribution, Calico's BIRD + confd (BGP) and Felix's VXLAN manager, chosen by
//! `CALICO_NETWORKING_BACKEND` as in Calico: `bird` (or `bgp`): the BGP speaker plus VXLAN
//! routes for VXLAN pools; `vxlan`: VXLAN routes from the datastore only; `none`: nothing.
//!
//! The split is Calico's: this task is confd and Felix's route managers, and under BGP it
//! runs `calico-bgpd` beside itself as Calico runs BIRD ([`crate::bgpd`]: the speaker, its
//! RIB, the learned routes and the blackholes in the kernel). The loop: the datastore is
//! listed and watched ([`calico_datastore::watch`]) into a [`cache::Cache`]; after every
//! batch of changes the plan is computed again ([`calico_routing`]: peers, originated
//! blocks, blackholes, the import filter, VXLAN VTEPs); calico-bgpd is told what changed
//! (a line per kind, sent only when it differs from the last), and this process's kernel
//! thread ([`kernel`]) converges on the VXLAN state. A start-up's burst of UPDATEs stays in
//! calico-bgpd: this task hears only counts, the sync and the sessions' states. Only this
//! node's block affinities are read unless a VXLAN pool (or the VXLAN backend) needs every
//! node's, as Calico's BGP syncer reads them. Nothing is written to the kernel before the
//! first full snapshot.
//!
//! On SIGTERM calico-bgpd's stdin is closed: it closes its sessions without a Cease, so
//! peers with graceful restart keep our routes, and our kernel routes stay for the next run
//! (which starts as a restarting speaker and sweeps what its peers no longer send).

pub mod cache;
pub mod kernel;
pub mod status;

use crate::bgpd::{self, protocol::FromBgpd, protocol::ToBgpd};
use crate::config::{ConfigError, Env};
use anyhow::Context as _;
use cache::{AffinityScope, Cache};
use calico_bgp::{ExportFilter, NextHopMode, PeerConfig, Route, SpeakerConfig};
use calico_dataplane::vxlan::{DEFAULT_PORT, DEFAULT_VNI, VXLAN_DEVICE, VxlanDevice};
use calico_datastore::EtcdClient;
use calico_routing::{BgpPlan, ClusterView, PlanOptions, SecretSource};
use ipnet::IpNet;
use kernel::{Desired, Programmer, VxlanDesired, parse_mac};
use status::RoutingState;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Calico's BIRD: graceful restart time (BIRD's default, which Calico keeps).
const GRACEFUL_RESTART: Duration = Duration::from_secs(120);
/// BIRD's default hold time (Calico never sets one).
const HOLD_TIME: Duration = Duration::from_secs(240);
/// Calico's `connect delay time 2` lets BIRD settle after confd's first config; our speaker
/// starts only once the datastore snapshot is planned, so the first attempt goes out almost
/// at once (a deliberate difference: README, "Differences from Calico"), jittered so nodes
/// started together do not connect in lockstep.
const CONNECT_DELAY: Duration = Duration::from_millis(100);
/// A peer not listening yet (started a moment after us) is tried again after this, doubling
/// up to the connect retry: with a short first delay, a refused attempt must not cost the
/// full retry time.
const REFUSED_RETRY: Duration = Duration::from_millis(200);
/// Calico's `connect retry time 5`.
const CONNECT_RETRY: Duration = Duration::from_secs(5);
/// How long events are gathered before the plan is computed again.
const SETTLE: Duration = Duration::from_millis(2);
/// How often everything is computed and converged again without a change (a failed speaker
/// start, a route someone removed by hand).
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// The VXLAN device's MTU when no MTU file says otherwise (1500 less VXLAN's 50).
const DEFAULT_VXLAN_MTU: u32 = 1450;

/// `CALICO_NETWORKING_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Bird,
    Vxlan,
    None,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Bird => "bird",
            Backend::Vxlan => "vxlan",
            Backend::None => "none",
        }
    }
}

/// Route distribution's settings, from the environment.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub backend: Backend,
    /// `NODENAME`, else the nodename file start-up wrote, else the host name.
    pub nodename: Option<String>,
    pub nodename_file: PathBuf,
    pub mtu_file: PathBuf,
    pub options: PlanOptions,
    /// Where `secretKeyRef` passwords are read (`CALICO_BGP_SECRETS_DIR`).
    pub secrets_dir: PathBuf,
    /// Speaker timers (Calico's by default; `CALICO_BGP_CONNECT_RETRY_SECONDS` shortens the
    /// retry for tests and labs).
    pub connect_retry: Duration,
}

impl RoutingSettings {
    pub fn from_env(env: &dyn Env) -> Result<RoutingSettings, ConfigError> {
        let get = |k: &str| {
            env.var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let backend = match get("CALICO_NETWORKING_BACKEND").as_deref() {
            None | Some("bird") | Some("bgp") => Backend::Bird,
            Some("vxlan") => Backend::Vxlan,
            Some("none") => Backend::None,
            Some(other) => {
                return Err(ConfigError::new(
                    "CALICO_NETWORKING_BACKEND",
                    format!("{other:?} is not a networking backend (bird, bgp, vxlan or none)"),
                ));
            }
        };
        let var_lib = get("CALICO_VAR_LIB_DIR").map_or_else(
            || PathBuf::from(crate::startup::settings::DEFAULT_VAR_LIB_DIR),
            PathBuf::from,
        );
        let router_id = get("CALICO_ROUTER_ID");
        if let Some(r) = &router_id
            && r != "hash"
            && r.parse::<Ipv4Addr>().is_err()
        {
            return Err(ConfigError::new(
                "CALICO_ROUTER_ID",
                format!("{r:?} is neither an IPv4 address nor \"hash\""),
            ));
        }
        let advertise_cluster_ips = match get("CALICO_ADVERTISE_CLUSTER_IPS") {
            None => None,
            Some(v) => Some(vec![v.parse::<IpNet>().map_err(|_| {
                ConfigError::new(
                    "CALICO_ADVERTISE_CLUSTER_IPS",
                    format!("{v:?} is not a CIDR"),
                )
            })?]),
        };
        let connect_retry = match get("CALICO_BGP_CONNECT_RETRY_SECONDS") {
            None => CONNECT_RETRY,
            Some(v) => {
                Duration::from_secs(v.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    ConfigError::new(
                        "CALICO_BGP_CONNECT_RETRY_SECONDS",
                        format!("{v:?} is not a positive number of seconds"),
                    )
                })?)
            }
        };
        Ok(RoutingSettings {
            backend,
            nodename: get("NODENAME"),
            nodename_file: get("CALICO_NODENAME_FILE")
                .map_or_else(|| var_lib.join("nodename"), PathBuf::from),
            mtu_file: var_lib.join("mtu"),
            options: PlanOptions {
                router_id,
                advertise_cluster_ips,
            },
            secrets_dir: get("CALICO_BGP_SECRETS_DIR").map_or_else(
                || PathBuf::from(calico_routing::DEFAULT_SECRETS_DIR),
                PathBuf::from,
            ),
            connect_retry,
        })
    }

    /// The node's name: `NODENAME`, else the file start-up wrote, else the host name.
    fn node_name(&self) -> anyhow::Result<String> {
        node_name(self.nodename.as_deref(), &self.nodename_file)
    }
}

/// The node's name as the daemon's tasks find it: `nodename` (`NODENAME`), else the file
/// start-up wrote, else the host name (lower-cased).
pub fn node_name(
    nodename: Option<&str>,
    nodename_file: &std::path::Path,
) -> anyhow::Result<String> {
    if let Some(n) = nodename {
        return Ok(n.to_string());
    }
    match calico_fsbound::read_config_string(nodename_file, 4096, "CALICO_NODENAME_FILE") {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        _ => {}
    }
    let h = nix::unistd::gethostname().context("the host name")?;
    Ok(h.to_string_lossy().trim().to_lowercase())
}

/// Secrets from files (`<dir>/<name>/<key>`), else from the environment.
struct FileSecrets {
    dir: PathBuf,
}

impl SecretSource for FileSecrets {
    fn secret(&self, name: &str, key: &str) -> Option<String> {
        if let Some(path) = calico_routing::secret_file_path(&self.dir, name, key)
            && let Ok(s) = calico_fsbound::read_config_string(&path, 4096, "BGP password")
        {
            return Some(s);
        }
        std::env::var(calico_routing::secret_env_var(name, key)).ok()
    }
}

/// What a running speaker was started with: a change of any of these restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpeakerKey {
    router_id: Ipv4Addr,
    local_as: u32,
    listen: SocketAddr,
    cluster_id: Option<Ipv4Addr>,
}

/// The running calico-bgpd: the child, the pipe to it, what it says.
struct Bgp {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::UnboundedReceiver<FromBgpd>,
    key: SpeakerKey,
    /// Fingerprints of the last lines of each kind sent (see [`Slot`]): a line equal to the
    /// last one is not sent again.
    sent: [Option<u64>; 4],
}

/// The kinds of line sent after the identity, each remembered by its fingerprint.
#[derive(Clone, Copy)]
enum Slot {
    Peers = 0,
    Filter = 1,
    Local = 2,
    Kernel = 3,
}

/// Where calico-bgpd is: `CALICO_BGPD_BINARY`, else beside calico-node's own binary (both
/// are installed together), else on `PATH`.
fn bgpd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CALICO_BGPD_BINARY").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::current_exe() {
        Ok(me) => match me.parent().map(|d| d.join(BGPD)) {
            Some(sibling) if sibling.is_file() => sibling,
            _ => PathBuf::from(BGPD),
        },
        Err(_) => PathBuf::from(BGPD),
    }
}

const BGPD: &str = "calico-bgpd";

impl Bgp {
    /// Starts calico-bgpd with `cfg` as its identity.
    async fn spawn(cfg: &SpeakerConfig, key: SpeakerKey) -> anyhow::Result<Bgp> {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let binary = bgpd_binary();
        let mut child = tokio::process::Command::new(&binary)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("{}: no pipes", binary.display());
        };
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match bgpd::protocol::decode::<FromBgpd>(&line) {
                    Ok(msg) => {
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        log::error!("calico-bgpd said something unreadable ({e}): {line:.200}");
                        return;
                    }
                }
            }
        });
        stdin
            .write_all(&bgpd::protocol::encode(&ToBgpd::Start(cfg.clone())))
            .await
            .context("calico-bgpd's stdin")?;
        Ok(Bgp {
            child,
            stdin,
            events,
            key,
            sent: [None; 4],
        })
    }

    /// Sends `msg` unless it equals the last line of its kind. A child that has gone is
    /// noticed by its closed stdout.
    async fn send(&mut self, slot: Slot, msg: &ToBgpd) {
        use std::hash::{Hash as _, Hasher as _};
        use tokio::io::AsyncWriteExt as _;
        let line = bgpd::protocol::encode(msg);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        line.hash(&mut h);
        let print = h.finish();
        if self.sent[slot as usize] == Some(print) {
            return;
        }
        match tokio::time::timeout(BGPD_WRITE, self.stdin.write_all(&line)).await {
            Ok(Ok(())) => self.sent[slot as usize] = Some(print),
            // Gone: its closed stdout says so too, and that restarts it.
            Ok(Err(e)) => log::debug!("calico-bgpd's stdin: {e}"),
            Err(_) => {
                // Not reading: stuck. Killed, it is started again like any that exits.
                log::warn!("calico-bgpd took no input for {BGPD_WRITE:?}; killing it");
                let _ = self.child.start_kill();
            }
        }
    }

    /// Closes its stdin (it closes its sessions for graceful restart and keeps the kernel's
    /// routes) and waits for it to exit, for a bound.
    async fn stop(self) {
        let Bgp {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        match tokio::time::timeout(BGPD_STOP, child.wait()).await {
            Ok(Ok(status)) if !status.success() => log::warn!("calico-bgpd exited: {status}"),
            Ok(_) => {}
            Err(_) => {
                log::warn!("calico-bgpd did not stop within {BGPD_STOP:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// How long calico-bgpd gets to close its sessions and exit.
const BGPD_STOP: Duration = Duration::from_secs(5);
/// How long a line to calico-bgpd may wait for it to read (it reads between batches of
/// events, a few milliseconds apart even in a burst).
const BGPD_WRITE: Duration = Duration::from_secs(10);
/// After calico-bgpd exited unasked, the first wait before it is started again; doubled
/// after each exit that came before it was up, up to [`RESYNC_EVERY`].
const RESPAWN_AFTER: Duration = Duration::from_secs(1);

/// Runs route distribution until `stop` turns true.
pub async fn run(
    etcd: EtcdClient,
    settings: RoutingSettings,
    state: Arc<RoutingState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if settings.backend == Backend::None {
        return Ok(());
    }
    let node = settings.node_name()?;
    log::info!(
        "route distribution: backend {} for node {node}",
        settings.backend.name()
    );
    let ipip = calico_dataplane::vxlan::ipip_support();
    let ipip_unavailable = (!ipip.available).then(|| {
        format!(
            "IPIP unavailable: {} (IPIP pools' routes still name tunl0)",
            ipip.reason
        )
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    // BGP alone needs only this node's affinities; a VXLAN pool (seen in the first
    // snapshot, or later) widens the watch to every node's.
    let scope = match settings.backend {
        Backend::Vxlan => AffinityScope::All,
        _ => AffinityScope::Own,
    };
    let syncer = spawn_syncer(&etcd, cache::prefixes(&node, scope), &tx);
    let kernel_state = state.clone();
    let programmer = Programmer::start(Box::new(move |outcome, took| {
        kernel_state.kernel_result(outcome, took);
    }))
    .context("starting the routes thread")?;
    let mut r = Routing {
        node,
        syncer,
        scope,
        rescope: None,
        scope_snapshot: 0,
        settings,
        state: state.clone(),
        cache: Cache::new(),
        bgp: None,
        bgp_synced: false,
        learned: 0,
        respawn_at: None,
        respawn_delay: RESPAWN_AFTER,
        ipip_unavailable,
        programmer,
        secrets: FileSecrets {
            dir: PathBuf::new(),
        },
    };
    r.secrets.dir = r.settings.secrets_dir.clone();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        tokio::select! {
            // calico-bgpd is due to be started again.
            _ = until(r.respawn_at) => {
                r.respawn_at = None;
            }
            // Now and then everything is computed and converged again, so nothing waits
            // for an unrelated change to be retried.
            _ = resync.tick() => {}
            ev = rx.recv() => match ev {
                Some(ev) => {
                    r.cache.apply(ev);
                    while let Ok(ev) = rx.try_recv() {
                        r.cache.apply(ev);
                    }
                }
                None => break,
            },
            ev = next_bgpd(&mut r.bgp) => match ev {
                Some(ev) => {
                    r.bgpd(ev);
                    while let Some(ev) = r.bgp.as_mut().and_then(|b| b.events.try_recv().ok()) {
                        r.bgpd(ev);
                    }
                    // Only calico-bgpd's news: nothing to compute.
                    continue;
                }
                None => r.bgpd_gone().await,
            },
            _ = stop.changed() => break,
        }
        // A short pause gathers what arrives together (a transaction's keys) into one
        // computation.
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                ev = rx.recv() => match ev {
                    Some(ev) => r.cache.apply(ev),
                    None => break,
                },
            }
        }
        r.recompute().await;
        if let Some(wanted) = r.rescope.take() {
            log::info!("route distribution: reading {wanted:?} block affinities");
            r.syncer.abort();
            r.syncer = spawn_syncer(&etcd, cache::prefixes(&r.node, wanted), &tx);
        }
    }
    r.syncer.abort();
    if let Some(b) = r.bgp.take() {
        state.set_speaker_running(false);
        b.stop().await;
    }
    r.programmer.stop();
    Ok(())
}

/// The datastore syncer of `prefixes` into `tx`. It retries what it can; if it ever gives
/// up, it is started again (a routing task without a datastore would otherwise stop for
/// good).
fn spawn_syncer(
    etcd: &EtcdClient,
    prefixes: Vec<String>,
    tx: &mpsc::UnboundedSender<calico_datastore::watch::SyncEvent>,
) -> tokio::task::JoinHandle<()> {
    let etcd = etcd.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        loop {
            match calico_datastore::sync_prefixes(&etcd, prefixes.clone(), tx.clone()).await {
                Ok(()) => return,
                Err(e) => log::error!("route distribution: datastore watch: {e}; again in 1 s"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Whose affinities `view` needs: every node's once a VXLAN pool is there (its routes go
/// to other nodes' blocks), else this node's.
fn affinity_scope(backend: Backend, view: &ClusterView) -> AffinityScope {
    let vxlan_pool = view
        .pools
        .iter()
        .any(|p| matches!(p.spec.vxlan_mode.as_str(), "Always" | "CrossSubnet"));
    if backend == Backend::Vxlan || vxlan_pool {
        AffinityScope::All
    } else {
        AffinityScope::Own
    }
}

async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_bgpd(bgp: &mut Option<Bgp>) -> Option<FromBgpd> {
    match bgp {
        Some(b) => b.events.recv().await,
        None => std::future::pending().await,
    }
}

struct Routing {
    node: String,
    /// The datastore syncer's task, and whose affinities it reads.
    syncer: tokio::task::JoinHandle<()>,
    scope: AffinityScope,
    /// A scope the syncer must be restarted with (set by a computation).
    rescope: Option<AffinityScope>,
    /// The cache's snapshot count when the scope last changed: a wider scope waits for the
    /// next snapshot (the VXLAN plan would otherwise see no remote blocks and remove their
    /// routes).
    scope_snapshot: u64,
    settings: RoutingSettings,
    state: Arc<RoutingState>,
    cache: Cache,
    bgp: Option<Bgp>,
    bgp_synced: bool,
    /// calico-bgpd's last count of learned prefixes.
    learned: usize,
    /// Not before this is calico-bgpd started again (it exited unasked).
    respawn_at: Option<tokio::time::Instant>,
    respawn_delay: Duration,
    /// The ipip probe's reason when the kernel cannot make IPIP tunnels.
    ipip_unavailable: Option<String>,
    programmer: Programmer<Desired>,
    secrets: FileSecrets,
}

impl Routing {
    /// calico-bgpd exited unasked (its stdout closed). What it learned stays in the kernel
    /// as stale until the next one has synced (it starts as a restarting speaker); it is
    /// started again after a pause.
    async fn bgpd_gone(&mut self) {
        let Some(b) = self.bgp.take() else { return };
        let Bgp {
            mut child, stdin, ..
        } = b;
        // Its output closed; if it still runs (it wrote something unreadable), the closed
        // input stops it.
        drop(stdin);
        let why = match tokio::time::timeout(BGPD_STOP, child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                let _ = child.kill().await;
                "its output closed; killed".into()
            }
        };
        let up = self.state.speaker_running();
        // Logged as a warning by the state.
        self.state.set_speaker_problem(Some(format!(
            "calico-bgpd stopped ({why}); starting it again in {:?}",
            self.respawn_delay
        )));
        self.respawn_at = Some(tokio::time::Instant::now() + self.respawn_delay);
        self.respawn_delay = if up {
            RESPAWN_AFTER
        } else {
            (self.respawn_delay * 2).min(RESYNC_EVERY)
        };
        self.state.set_speaker_running(false);
        self.bgp_synced = false;
        self.state.set_bgp_synced(false);
    }

    /// What calico-bgpd said.
    fn bgpd(&mut self, ev: FromBgpd) {
        match ev {
            FromBgpd::Started(Ok(())) => {
                self.state.set_speaker_running(true);
                self.state.set_speaker_problem(None);
                self.respawn_delay = RESPAWN_AFTER;
            }
            FromBgpd::Started(Err(e)) => {
                self.state
                    .set_speaker_problem(Some(format!("BGP speaker: {e}")));
            }
            FromBgpd::Learned(n) => {
                self.learned = n;
                self.state
                    .metrics()
                    .bgp_routes_learned
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            FromBgpd::Synced => {
                if !self.bgp_synced {
                    log::info!("BGP synced: {} learned prefixes", self.learned);
                }
                self.bgp_synced = true;
                self.state.set_bgp_synced(true);
            }
            FromBgpd::Peers(peers) => {
                self.state.set_peers(peers);
                status::peer_metrics(&self.state);
            }
            FromBgpd::Kernel { outcome, took } => self.state.bgp_kernel_result(
                outcome,
                took.and_then(|t| Duration::try_from_secs_f64(t).ok()),
            ),
        }
    }

    async fn recompute(&mut self) {
        if !self.cache.synced() {
            return;
        }
        if self.scope == AffinityScope::All && self.cache.snapshots() <= self.scope_snapshot {
            return;
        }
        let view = self.cache.view();
        let wanted = affinity_scope(self.settings.backend, &view);
        if wanted != self.scope {
            self.scope = wanted;
            self.rescope = Some(wanted);
            self.scope_snapshot = self.cache.snapshots();
            if wanted == AffinityScope::All {
                // Computed once every node's blocks are read.
                return;
            }
        }
        self.state.set_datastore_synced();
        let wants_ipip = view.pools.iter().any(|p| {
            !p.spec.disabled && matches!(p.spec.ipip_mode.as_str(), "Always" | "CrossSubnet")
        });
        self.state
            .set_ipip(self.ipip_unavailable.clone().filter(|_| wants_ipip));
        // Without our own Node (not written yet, or deleted and about to be written again)
        // nothing can be planned: the kernel keeps what it has.
        if !view.nodes.iter().any(|n| n.metadata.name == self.node) {
            self.state.set_plan_problem(Some(format!(
                "node {:?} is not in the datastore",
                self.node
            )));
            return;
        }
        let mut blackholes: Vec<IpNet> = Vec::new();
        let mut ipip_address = None;
        if self.settings.backend == Backend::Bird {
            match calico_routing::bgp_plan(&view, &self.node, &self.settings.options, &self.secrets)
            {
                Ok(plan) => {
                    self.state.set_plan_problem(None);
                    for w in &plan.warnings {
                        log::debug!("plan: {w}");
                    }
                    let borrowed = borrowed_addresses(
                        &view,
                        &self.node,
                        &self.cache.workload_addresses(&self.node),
                    );
                    let kernel = ToBgpd::Kernel {
                        import: calico_routing::ImportRules::new(
                            &view,
                            &self.node,
                            &self.settings.options,
                            &local_subnets(),
                        ),
                        host_routes: plan
                            .peer_routes
                            .iter()
                            .map(bgpd::protocol::HostRoute::from_kernel)
                            .collect(),
                    };
                    self.speak(&plan, &borrowed, &kernel).await;
                    blackholes.clone_from(&plan.blackholes);
                    ipip_address = view
                        .nodes
                        .iter()
                        .find(|n| n.metadata.name == self.node)
                        .and_then(|n| n.spec.bgp.as_ref())
                        .and_then(|b| b.ipv4_ipip_tunnel_addr.parse().ok());
                }
                Err(e) => {
                    // A plan that cannot be made (a bad routeReflectorClusterID, say)
                    // changes nothing in the kernel: what worked keeps working.
                    self.state.set_plan_problem(Some(e.to_string()));
                    return;
                }
            }
        }
        let Some((vxlan_blackholes, vxlan)) = self.vxlan(&view) else {
            return;
        };
        let unique: BTreeSet<IpNet> = blackholes.into_iter().chain(vxlan_blackholes).collect();
        self.programmer.set(Desired {
            blackholes: unique.into_iter().collect(),
            ipip_address,
            vxlan,
        });
    }

    /// Starts, restarts or updates calico-bgpd for `plan`.
    async fn speak(&mut self, plan: &BgpPlan, borrowed: &[IpNet], kernel: &ToBgpd) {
        let wants_v6 = plan.node_ipv6.is_some();
        // `bindMode: NodeIP` binds the node's address; a dual-stack node has two, and the
        // speaker has one listener, so it then listens on every address (IPv6 socket that
        // takes IPv4 too) rather than refuse one family's peers.
        let listen_ip = match plan.listen_addresses.as_slice() {
            [one] => *one,
            [] if !wants_v6 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let key = SpeakerKey {
            router_id: plan.router_id,
            local_as: plan.local_as,
            listen: SocketAddr::new(listen_ip, plan.listen_port.unwrap_or(179)),
            cluster_id: plan.cluster_id,
        };
        if self.bgp.as_ref().is_some_and(|b| b.key != key) {
            log::info!("BGP identity changed ({key:?}): restarting calico-bgpd");
            // Stopped before the new one binds its port (graceful: peers keep our routes
            // until the new speaker has told them).
            if let Some(b) = self.bgp.take() {
                b.stop().await;
            }
            self.state.set_speaker_running(false);
            self.bgp_synced = false;
            self.state.set_bgp_synced(false);
        }
        if self.bgp.is_none() {
            if self.respawn_at.is_some() {
                return;
            }
            let cfg = SpeakerConfig {
                router_id: key.router_id,
                local_as: key.local_as,
                listen: Some(key.listen),
                cluster_id: key.cluster_id,
                graceful_restart: Some(GRACEFUL_RESTART),
                // calico-bgpd finds out itself (our learned routes in the kernel).
                restarting: false,
            };
            match Bgp::spawn(&cfg, key).await {
                Ok(b) => self.bgp = Some(b),
                Err(e) => {
                    self.state
                        .set_speaker_problem(Some(format!("BGP speaker: {e:#}")));
                    self.respawn_at = Some(tokio::time::Instant::now() + self.respawn_delay);
                    self.respawn_delay = (self.respawn_delay * 2).min(RESYNC_EVERY);
                    return;
                }
            }
        }
        let peers = ToBgpd::Peers(plan.peers.iter().map(|p| self.peer_config(p)).collect());
        let filter = ToBgpd::ExportFilter(export_filter(plan));
        let mut originated: Vec<Route> = plan
            .originated
            .iter()
            .map(|o| Route {
                prefix: o.prefix,
                communities: o.communities.clone(),
                large_communities: o.large_communities.clone(),
            })
            .collect();
        // Addresses borrowed from another node's block: Calico's BIRD learns their
        // workload routes from the kernel and exports them (they are inside a pool); the
        // other nodes then prefer this /32 (/128) to the block's owner.
        let communities = |p: &IpNet| {
            plan.community_rules
                .iter()
                .filter(|r| r.cidr.contains(p))
                .fold((Vec::new(), Vec::new()), |(mut c, mut l), r| {
                    c.extend(r.communities.iter().copied());
                    l.extend(r.large_communities.iter().copied());
                    (c, l)
                })
        };
        originated.extend(borrowed.iter().map(|p| {
            let (communities, large_communities) = communities(p);
            Route {
                prefix: *p,
                communities,
                large_communities,
            }
        }));
        self.state
            .metrics()
            .bgp_routes_originated
            .set(i64::try_from(originated.len()).unwrap_or(i64::MAX));
        let local = ToBgpd::LocalRoutes(originated);
        let Some(bgp) = &mut self.bgp else { return };
        bgp.send(Slot::Peers, &peers).await;
        bgp.send(Slot::Filter, &filter).await;
        bgp.send(Slot::Local, &local).await;
        bgp.send(Slot::Kernel, kernel).await;
    }

    fn peer_config(&self, p: &calico_routing::PeerPlan) -> PeerConfig {
        let mut c = PeerConfig::new(p.name.clone(), p.address, p.remote_as);
        c.port = p.port;
        c.local_as = Some(p.local_as);
        c.source = p.source_address;
        c.passive = p.passive;
        c.rr_client = p.rr_client;
        c.password = p.password.clone();
        c.hold_time = HOLD_TIME;
        c.keepalive = p.keepalive_time.map(|s| Duration::from_secs(u64::from(s)));
        c.graceful_restart_time = Some(
            p.graceful_restart_time
                .map_or(GRACEFUL_RESTART, |s| Duration::from_secs(u64::from(s))),
        );
        c.next_hop = match p.next_hop {
            calico_routing::NextHopMode::Auto => NextHopMode::Auto,
            calico_routing::NextHopMode::SelfAddr => NextHopMode::SelfAddr,
            calico_routing::NextHopMode::Keep => NextHopMode::Keep,
        };
        c.ttl_security = p.ttl_security;
        c.connect_delay = jittered(CONNECT_DELAY, &self.node, &p.name);
        c.connect_retry = self.settings.connect_retry;
        c.refused_retry = Some(REFUSED_RETRY);
        c
    }

    /// Felix's VXLAN manager: blackholes of local VXLAN blocks and the device state.
    /// `None` when the host's interfaces cannot be read now (try again later rather than
    /// recreate the device without its parent).
    fn vxlan(&self, view: &ClusterView) -> Option<(Vec<IpNet>, Option<VxlanDesired>)> {
        let plan = calico_routing::vxlan_plan(view, &self.node);
        let Some(local) = &plan.local else {
            return Some((plan.blackholes, None));
        };
        let (IpAddr::V4(address), IpAddr::V4(parent)) = (local.tunnel_addr, local.parent_addr)
        else {
            return Some((plan.blackholes, None));
        };
        let Some(mac) = parse_mac(&local.mac) else {
            log::warn!("VXLAN: this node's MAC {:?} is not a MAC", local.mac);
            return Some((plan.blackholes, None));
        };
        let interfaces =
            match calico_dataplane::netlink::Netlink::host().and_then(|nl| nl.interfaces()) {
                Ok(i) => i,
                Err(e) => {
                    log::warn!("VXLAN: reading the host's interfaces: {e}");
                    return None;
                }
            };
        let parent_index = interfaces
            .into_iter()
            .find(|i| i.addresses.iter().any(|a| a.addr() == local.parent_addr))
            .map(|i| i.index);
        let mtu = calico_fsbound::read_config_string(&self.settings.mtu_file, 64, "the MTU file")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|m| *m > 0)
            .unwrap_or(DEFAULT_VXLAN_MTU);
        let mut neighbors = Vec::new();
        let mut fdb = Vec::new();
        for r in &plan.remotes {
            if let Some(m) = parse_mac(&r.mac) {
                neighbors.push((r.tunnel_addr, m));
                fdb.push((m, r.parent_addr));
            }
        }
        let desired = VxlanDesired {
            device: VxlanDevice {
                name: VXLAN_DEVICE.to_string(),
                vni: DEFAULT_VNI,
                port: DEFAULT_PORT,
                local: parent,
                parent_index,
                mac,
                mtu,
                address,
            },
            neighbors,
            fdb,
            routes: plan.routes.clone(),
        };
        Some((plan.blackholes, Some(desired)))
    }
}

/// Calico's export filter for learned routes, as the speaker's accept/reject lists (reject
/// wins, which is what Calico's order gives: `disableBGPExport` pools are rejected first).
/// The rules about this node's own blocks (one or two per block) are left out: they decide
/// what of our own is exported, which the speaker originates anyway, and as lists scanned for
/// every learned prefix they made a node with 10,000 blocks quadratic.
fn export_filter(plan: &BgpPlan) -> ExportFilter {
    let mut f = ExportFilter::default();
    let own: std::collections::HashSet<IpNet> = plan
        .originated
        .iter()
        .filter(|o| o.source == calico_routing::OriginSource::Block)
        .map(|o| o.prefix)
        .collect();
    for rule in plan
        .export
        .rules
        .iter()
        .filter(|r| !own.contains(&r.prefix))
    {
        match rule.action {
            calico_routing::ExportAction::Accept => f.accept.push(rule.prefix),
            calico_routing::ExportAction::Reject => f.reject.push(rule.prefix),
        }
    }
    f
}

/// BIRD's connect delay is jittered down by up to a quarter (RFC 4271 §10), so nodes started
/// together do not all connect at once. Stable per (node, peer): a different value would
/// count as a changed peer and reset its session.
fn jittered(delay: Duration, node: &str, peer: &str) -> Duration {
    // FNV-1a: a fixed, well-spread hash (std's hashers are seeded per process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0]).chain(peer.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let quarter = delay / 4;
    let fraction = f64::from(u32::try_from(h % 1000).unwrap_or(0)) / 1000.0;
    delay - quarter.mul_f64(fraction)
}

/// This node's workload addresses that lie in no block affine to it but inside an IP pool
/// whose routes are exported (borrowed addresses: IPAM found no free block of its own).
fn borrowed_addresses(view: &ClusterView, node: &str, workloads: &[IpNet]) -> Vec<IpNet> {
    let own: Vec<IpNet> = view
        .affinities
        .iter()
        .filter(|(n, _)| n == node)
        .map(|(_, b)| *b)
        .collect();
    let exported: Vec<IpNet> = view
        .pools
        .iter()
        .filter(|p| !p.spec.disabled && !p.spec.disable_bgp_export)
        .filter_map(|p| p.spec.cidr.parse::<IpNet>().ok())
        .collect();
    let mut out: Vec<IpNet> = workloads
        .iter()
        .map(|a| IpNet::from(a.addr()))
        .filter(|a| !own.iter().any(|b| b.contains(a)))
        .filter(|a| exported.iter().any(|p| p.contains(a)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The subnets of this namespace's interfaces (for IPIP/VXLAN `CrossSubnet`).
fn local_subnets() -> Vec<IpNet> {
    calico_dataplane::netlink::Netlink::host()
        .and_then(|nl| nl.all_addresses())
        .map(|a| a.into_iter().map(|n| n.trunc()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(vxlan_mode: &str) -> calico_datastore::model::IpPool {
        serde_json::from_value(serde_json::json!({
            "kind": "IPPool", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.244.0.0/16", "vxlanMode": vxlan_mode}
        }))
        .unwrap()
    }

    /// BGP alone reads this node's affinities; a VXLAN pool or the VXLAN backend needs every
    /// node's blocks (Felix's VXLAN routes go to them).
    #[test]
    fn every_nodes_affinities_only_for_vxlan() {
        let mut view = ClusterView::default();
        assert_eq!(affinity_scope(Backend::Bird, &view), AffinityScope::Own);
        assert_eq!(affinity_scope(Backend::Vxlan, &view), AffinityScope::All);
        view.pools.push(pool("Never"));
        assert_eq!(affinity_scope(Backend::Bird, &view), AffinityScope::Own);
        view.pools.push(pool("CrossSubnet"));
        assert_eq!(affinity_scope(Backend::Bird, &view), AffinityScope::All);
    }
}
