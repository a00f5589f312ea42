//! `calico-bgpd`: the routing process calico-node runs beside itself under the BGP backend,
//! as Calico's calico-node runs BIRD beside confd and Felix. It holds the BGP speaker
//! ([`calico_bgp`]: sessions, RIB), applies Calico's import filter to what it learns
//! ([`calico_routing::ImportRules`]) and programs the learned routes into the kernel (BIRD's
//! kernel protocol). calico-node keeps the datastore, the plan, the blackholes and
//! everything else, and tells it over its stdin what to be ([`protocol`]); it answers on its
//! stdout.
//!
//! Why a process of its own: the routes and the sessions are what a node holds the most of
//! at scale, and in a process that links only the speaker, the route code and the runtime
//! they cost little beside them (no etcd client, TLS, policy engine or HTTP server resident;
//! README, "Route distribution"). It is started by calico-node only (it reads its identity
//! from its stdin), never by hand.
//!
//! Lifetime: it ends when its stdin closes (calico-node stopped it, or died: the pipe closes
//! with it). The sessions are then closed without a Cease and the kernel routes stay, so
//! peers with graceful restart keep our routes and the next run starts as a restarting
//! speaker (RFC 4724). SIGTERM is logged and otherwise ignored: systemd sends it to the
//! whole unit on stop, and calico-node, which stops it in its turn, would take an early exit
//! for a crash and start it again.

pub mod protocol;

use crate::run::routing::kernel::{BgpDesired, Programmer};
use anyhow::Context as _;
use calico_bgp::{BgpError, PeerStatus, RibEvent, Speaker};
use calico_routing::{ImportRules, KernelRoute};
use protocol::{FromBgpd, ToBgpd};
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

/// How events are gathered before the kernel's routes are computed again (as calico-node's
/// routing loop: a short pause, as long as the last computation up to a bound, so the
/// sessions sharing this thread get to read a burst).
const SETTLE: Duration = Duration::from_millis(2);
const MAX_SETTLE: Duration = Duration::from_millis(100);
/// How often the sessions' states are compared with what calico-node was last told (also
/// after every batch of events: a session that comes up or goes down mostly brings routes).
const PEERS_EVERY: Duration = Duration::from_millis(250);
/// Counters alone (messages, routes in and out) are sent at most this often.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// How often the kernel's state is handed to the routes thread again without a change: it
/// converges again on a state older than its recheck time (a route removed by hand comes
/// back), as calico-node's resync does for its own routes.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Free memory is given back this long after the last computation of a burst.
const RELEASE_AFTER: Duration = Duration::from_millis(250);
/// A listening port still held by the previous run (shutting down as this one starts) is
/// tried again for this long.
const LISTEN_RETRY_FOR: Duration = Duration::from_secs(5);
const LISTEN_RETRY_EVERY: Duration = Duration::from_millis(100);

/// The process: one thread for the sessions and this loop, one for the kernel.
pub fn main() -> anyhow::Result<()> {
    // One arena: the speaker's loop and the routes thread (glibc would give each its own).
    calico_malloc::limit_arenas(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve())
}

/// A line to calico-node (a closed pipe means it is gone; the stdin side ends us then).
fn send(msg: &FromBgpd) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&protocol::encode(msg));
    let _ = out.flush();
}

async fn serve() -> anyhow::Result<()> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("stdin")?;
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)
        .context("stdin is not calico-node's pipe (calico-bgpd is started by calico-node)")?;
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut cfg = match lines.next_line().await.context("reading calico-node")? {
        Some(line) => match protocol::decode::<ToBgpd>(&line) {
            Ok(ToBgpd::Start(cfg)) => cfg,
            Ok(other) => anyhow::bail!("expected the speaker's identity first, got {other:?}"),
            Err(e) => anyhow::bail!("calico-node's first line: {e}"),
        },
        None => return Ok(()),
    };
    // Learned routes of a previous run still in the kernel: we are restarting (RFC 4724).
    cfg.restarting |= calico_dataplane::routes::RouteTable::host()
        .and_then(|t| t.list(calico_dataplane::routes::PROTO_BGP))
        .map(|r| !r.is_empty())
        .unwrap_or(false);
    let restarting = cfg.restarting;
    let (speaker, mut events) = match start_speaker(cfg).await {
        Ok(s) => s,
        Err(e) => {
            send(&FromBgpd::Started(Err(e.to_string())));
            return Err(e.into());
        }
    };
    send(&FromBgpd::Started(Ok(())));
    let programmer = Programmer::<BgpDesired>::start(Box::new(|outcome, took| {
        send(&FromBgpd::Kernel {
            outcome,
            took: took.map(|t| t.as_secs_f64()),
        });
    }))
    .context("starting the routes thread")?;
    let mut d = Bgpd {
        speaker,
        programmer,
        kernel: None,
        restarting,
        synced: false,
        synced_sent: false,
        dirty: false,
        learned_sent: None,
        peers_sent: Vec::new(),
        peers_sent_at: Instant::now(),
    };
    let mut peers = tokio::time::interval(PEERS_EVERY);
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    let mut release_at: Option<Instant> = None;
    let mut logged: Option<usize> = None;
    let mut last_compute = Duration::ZERO;
    'run: loop {
        tokio::select! {
            _ = peers.tick() => {
                d.report_peers().await;
                continue;
            }
            _ = until(release_at) => {
                release_at = None;
                calico_malloc::release_free_memory();
                // At info once per new count (after a burst), not after every resync.
                let level = if d.learned_sent == logged {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                logged = d.learned_sent;
                log::log!(
                    level,
                    "calico-bgpd: {} learned prefixes; freed memory returned (RSS {} MiB, heap in use {} KiB, free in the heap {} KiB)",
                    d.learned_sent.unwrap_or(0),
                    crate::run::policy::engine::rss_mib(),
                    calico_malloc::heap_in_use().unwrap_or(0) / 1024,
                    calico_malloc::heap_free().unwrap_or(0) / 1024,
                );
                continue;
            }
            _ = resync.tick() => d.dirty = true,
            line = lines.next_line() => match line {
                Ok(Some(line)) => d.command(&line)?,
                Ok(None) => break 'run,
                Err(e) => return Err(e).context("reading calico-node"),
            },
            ev = events.recv() => match ev {
                Some(ev) => d.rib(ev),
                None => anyhow::bail!("the BGP speaker stopped"),
            },
            _ = sigterm.recv() => {
                log::info!("calico-bgpd: SIGTERM ignored (it stops when calico-node closes its pipe)");
                continue;
            }
        }
        let settle = tokio::time::sleep(SETTLE.max(last_compute.min(MAX_SETTLE)));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                line = lines.next_line() => match line {
                    Ok(Some(line)) => d.command(&line)?,
                    Ok(None) => break 'run,
                    Err(e) => return Err(e).context("reading calico-node"),
                },
                ev = events.recv() => match ev {
                    Some(ev) => d.rib(ev),
                    None => anyhow::bail!("the BGP speaker stopped"),
                },
            }
        }
        if d.dirty {
            let started = Instant::now();
            d.program();
            last_compute = started.elapsed();
            release_at = Some(Instant::now() + RELEASE_AFTER);
        }
        d.report_peers().await;
    }
    // Closed without a Cease: peers with graceful restart keep our routes; the kernel's stay
    // for the next run.
    log::info!("calico-bgpd: stopping (sessions closed for graceful restart)");
    let Bgpd {
        speaker,
        programmer,
        ..
    } = d;
    speaker.shutdown(true).await;
    programmer.stop();
    Ok(())
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Starts the speaker; a port still held by the previous run is waited for.
async fn start_speaker(
    cfg: calico_bgp::SpeakerConfig,
) -> Result<(Speaker, tokio::sync::mpsc::UnboundedReceiver<RibEvent>), BgpError> {
    let deadline = Instant::now() + LISTEN_RETRY_FOR;
    loop {
        match Speaker::start(cfg.clone()).await {
            Ok(s) => {
                log::info!(
                    "BGP speaker: router id {}, AS {}, listening on {}{}",
                    cfg.router_id,
                    cfg.local_as,
                    cfg.listen
                        .map_or_else(|| "nothing".into(), |l| l.to_string()),
                    cfg.cluster_id
                        .map(|c| format!(", route reflector cluster {c}"))
                        .unwrap_or_default()
                );
                return Ok(s);
            }
            Err(BgpError::Listen { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(LISTEN_RETRY_EVERY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the kernel's part is made from (calico-node's last [`ToBgpd::Kernel`]).
struct KernelInputs {
    import: ImportRules,
    host_routes: Vec<KernelRoute>,
}

struct Bgpd {
    speaker: Speaker,
    programmer: Programmer<BgpDesired>,
    /// `None` until calico-node has sent it: nothing is programmed before.
    kernel: Option<KernelInputs>,
    restarting: bool,
    synced: bool,
    synced_sent: bool,
    /// Something changed since the kernel's routes were last computed.
    dirty: bool,
    learned_sent: Option<usize>,
    peers_sent: Vec<PeerStatus>,
    peers_sent_at: Instant,
}

impl Bgpd {
    fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let msg: ToBgpd = protocol::decode(line).context("a line from calico-node")?;
        match msg {
            ToBgpd::Start(_) => anyhow::bail!("the speaker's identity sent twice"),
            ToBgpd::Peers(p) => self.speaker.set_peers(p),
            ToBgpd::ExportFilter(f) => self.speaker.set_export_filter(f),
            ToBgpd::LocalRoutes(r) => self.speaker.set_local_routes(r),
            ToBgpd::Kernel {
                import,
                host_routes,
            } => {
                self.kernel = Some(KernelInputs {
                    import,
                    host_routes: host_routes.iter().map(|h| h.to_kernel()).collect(),
                });
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// The learned routes themselves are read from the speaker's table when the kernel's
    /// routes are computed; here only the sync.
    fn rib(&mut self, ev: RibEvent) {
        if ev == RibEvent::Synced {
            self.synced = true;
        }
        self.dirty = true;
    }

    /// The kernel's state from the learned routes and calico-node's inputs; the count and
    /// the sync reported.
    fn program(&mut self) {
        self.dirty = false;
        let learned = self.speaker.learned();
        let count = learned.len();
        if self.learned_sent != Some(count) {
            self.learned_sent = Some(count);
            send(&FromBgpd::Learned(count));
        }
        if self.synced && !self.synced_sent {
            self.synced_sent = true;
            send(&FromBgpd::Synced);
        }
        let Some(k) = &self.kernel else { return };
        let mut routes = learned.with(|l| k.import.routes(l));
        routes.extend(k.host_routes.iter().cloned());
        self.programmer.set(BgpDesired {
            routes,
            keep_stale: self.restarting && !self.synced,
        });
    }

    /// The sessions to calico-node when a state changed, or only counters and a second has
    /// passed (every keepalive changes a counter: sent at once they would make a line per
    /// session per keepalive, a large one on a route reflector).
    async fn report_peers(&mut self) {
        let peers = self.speaker.status().await;
        if peers == self.peers_sent {
            return;
        }
        let shape = |p: &[PeerStatus]| -> Vec<(
            String,
            std::net::IpAddr,
            calico_bgp::SessionState,
            std::time::SystemTime,
            Option<String>,
        )> {
            p.iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.address,
                        s.state,
                        s.since,
                        s.last_error.clone(),
                    )
                })
                .collect()
        };
        if shape(&peers) == shape(&self.peers_sent) && self.peers_sent_at.elapsed() < COUNTERS_EVERY
        {
            return;
        }
        send(&FromBgpd::Peers(peers.clone()));
        self.peers_sent = peers;
        self.peers_sent_at = Instant::now();
    }
}
