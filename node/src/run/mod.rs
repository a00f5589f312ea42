//! `calico-node run`: the long-lived per-node daemon and the services it gives the plugins
//! over its unix socket (protocol: `calico-agent-protocol`).
//!
//! - [`listener`]: the socket (`/var/run/calico/calico-node.sock`, or `CALICO_NODE_SOCKET`),
//!   mode 0600, a stale one replaced;
//! - [`server`]: the connections: only root served (`SO_PEERCRED`), etcd requests run on
//!   the node's one etcd client ([`calico_datastore::EtcdClient`], mutual TLS from the
//!   `ETCD_*` variables), kernel work queued, health answered from the daemon's state;
//! - [`kernel`]: the deferred kernel work (veth deletions by index, UDP conntrack flushes,
//!   nfnetlink sockets closed when the node is quiet), on one thread;
//! - [`metrics`]: `calico_node_*` in the Prometheus text format, on
//!   `CALICO_NODE_METRICS_PORT` if set.
//!
//! SIGTERM (or SIGINT): no new work is taken (requests get `ShuttingDown`, and the plugins
//! do the work themselves), the socket is removed, requests under way finish, the kernel
//! work accepted is done, then the process exits 0.

pub mod kernel;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod routing;
pub mod server;

use crate::config::{ConfigError, Env, etcd_from_env};
use anyhow::Context as _;
use calico_datastore::EtcdClient;
use calico_datastore::store::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the daemon checks etcd by itself (plugins' requests count as checks too).
const ETCD_PROBE_EVERY: Duration = Duration::from_secs(10);
/// A key every Calico datastore has once calico-node has started, read as the probe.
const PROBE_KEY: &str = "/calico/resources/v3/projectcalico.org/clusterinformations/default";

/// The daemon's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub etcd: calico_datastore::EtcdConfig,
    pub socket: PathBuf,
    /// Where metrics are served (`CALICO_NODE_METRICS_PORT`, on
    /// `CALICO_NODE_METRICS_HOST`, default all addresses); none if unset.
    pub metrics: Option<SocketAddr>,
    /// Route distribution (`CALICO_NETWORKING_BACKEND` and friends).
    pub routing: routing::RoutingSettings,
    /// Network policy (`CALICO_DISABLE_FELIX`, `FELIX_*`).
    pub policy: policy::PolicySettings,
}

impl Settings {
    pub fn from_env(env: &dyn Env) -> Result<Settings, ConfigError> {
        let etcd = etcd_from_env(env)?;
        let socket = env.var(calico_agent_protocol::SOCKET_ENV).map_or_else(
            || calico_agent_protocol::DEFAULT_SOCKET.into(),
            PathBuf::from,
        );
        let host: IpAddr = match env.var("CALICO_NODE_METRICS_HOST") {
            Some(h) => h.parse().map_err(|_| {
                ConfigError::new(
                    "CALICO_NODE_METRICS_HOST",
                    format!("{h:?} is not an address"),
                )
            })?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let metrics = match env.var("CALICO_NODE_METRICS_PORT") {
            Some(p) => Some(SocketAddr::new(
                host,
                p.parse().map_err(|_| {
                    ConfigError::new("CALICO_NODE_METRICS_PORT", format!("{p:?} is not a port"))
                })?,
            )),
            None => None,
        };
        Ok(Settings {
            etcd,
            socket,
            metrics,
            routing: routing::RoutingSettings::from_env(env)?,
            policy: policy::PolicySettings::from_env(env)?,
        })
    }
}

/// glibc malloc arenas: one, shared by every thread. The policy thread reads the etcd
/// snapshot the runtime thread decoded, freeing it key by key as the calculation grows: in
/// one arena the calculation takes the room the snapshot leaves (41 MiB after the read at
/// the bench's scale), in two it grew beside it (66 MiB, 61 after the first apply against
/// 45-57), and which threads shared an arena depended on which allocated first. The
/// threads rarely allocate at the same time.
const MALLOC_ARENAS: u16 = 1;

/// Runs the daemon until SIGTERM.
pub fn run(env: &dyn Env) -> anyhow::Result<()> {
    let settings = Settings::from_env(env)?;
    serve(&settings)
}

/// Serves with `settings` until SIGTERM or SIGINT.
pub fn serve(settings: &Settings) -> anyhow::Result<()> {
    // Before any other thread: one arena per allocating thread (glibc's default) kept each
    // thread's peak (see MALLOC_ARENAS).
    calico_malloc::limit_arenas(MALLOC_ARENAS);
    let identity = calico_datastore::agent::identity(&settings.etcd)
        .context("reading the etcd TLS files (ETCD_*_FILE)")?;
    let metrics = metrics::Metrics::new();
    let (queue, mut worker) =
        kernel::Worker::start(metrics.clone()).context("starting the kernel work thread")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let outcome = runtime.block_on(async {
        let etcd = EtcdClient::connect(&settings.etcd)
            .await
            .context("etcd settings")?;
        let routing_state = Arc::new(routing::status::RoutingState::new(
            settings.routing.backend.name(),
            metrics.clone(),
        ));
        let (stop_routing, routing_stopped) = tokio::sync::watch::channel(false);
        let routing_task = tokio::spawn(routing::run(
            etcd.clone(),
            settings.routing.clone(),
            routing_state.clone(),
            routing_stopped,
        ));
        let policy_state = Arc::new(policy::state::PolicyState::new(
            settings.policy.enabled,
            metrics.clone(),
        ));
        let policy_agent =
            policy::PolicyAgent::start(etcd.clone(), settings.policy.clone(), policy_state.clone())
                .context("starting the policy agent")?;
        let shared = Arc::new(server::Shared::new(
            etcd,
            identity,
            queue,
            metrics.clone(),
            routing_state,
            policy_state,
        ));
        if let Some(addr) = settings.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics on {addr}"))?;
            log::info!("metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(listener, metrics.clone()));
        }
        tokio::spawn(probe_etcd(shared.clone()));
        // Handlers first: a SIGTERM that comes once the socket exists is never missed.
        let signals = Signals::new()?;
        let socket = listener::Socket::bind(&settings.socket)?;
        let result = accept_until_signalled(&socket, &shared, signals).await;
        // Stop taking work (the socket goes, and with it the listening descriptor: a plugin
        // now finds no agent at once), then let what is under way finish (each etcd request
        // is bounded by the request timeout).
        shared
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        socket.close();
        let under_way = shared.in_flight();
        if under_way > 0 {
            log::info!("finishing {under_way} requests");
        }
        let bound = settings.etcd.request_timeout + Duration::from_secs(5);
        if tokio::time::timeout(bound, shared.quiesced())
            .await
            .is_err()
        {
            log::warn!("requests still under way after {bound:?}; leaving them");
        }
        // Route distribution stops last: sessions close without a Cease (graceful
        // restart), kernel routes stay for the next run.
        let _ = stop_routing.send(true);
        match tokio::time::timeout(Duration::from_secs(10), routing_task).await {
            Ok(Ok(Err(e))) => log::error!("route distribution: {e:#}"),
            Ok(Err(e)) => log::error!("route distribution: {e}"),
            Err(_) => log::warn!("route distribution did not stop within 10 s"),
            Ok(Ok(Ok(()))) => {}
        }
        // Policy stops with its table in place: endpoints stay enforced (fail closed).
        if let Some(p) = policy_agent {
            p.stop();
        }
        result
    });
    // Dropping the runtime ends every connection and task, and with them the last work
    // queues: the worker then does what is queued and stops.
    drop(runtime);
    worker.finish();
    log::info!("stopped");
    outcome
}

/// SIGTERM and SIGINT, the signals that stop the daemon.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }
}

async fn accept_until_signalled(
    socket: &listener::Socket,
    shared: &Arc<server::Shared>,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let std_listener = socket
        .listener
        .try_clone()
        .context("the socket's descriptor")?;
    std_listener
        .set_nonblocking(true)
        .context("the socket's mode")?;
    let listener = tokio::net::UnixListener::from_std(std_listener).context("the socket")?;
    log::info!(
        "calico-node {} serving {} (etcd at {})",
        crate::VERSION,
        socket.path().display(),
        shared.etcd.endpoints()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(server::connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin on it.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    log::info!("SIGTERM: taking no new work");
    Ok(())
}

/// Reads one key now and then, so readiness follows etcd even when no plugin calls.
async fn probe_etcd(shared: Arc<server::Shared>) {
    let mut every = tokio::time::interval(ETCD_PROBE_EVERY);
    loop {
        every.tick().await;
        let outcome = shared
            .etcd
            .read(&[Read::Key(PROBE_KEY.into())])
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        shared.etcd_contact(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn settings_default_and_name_the_bad_variable() {
        let s = Settings::from_env(&env(&[])).expect("defaults");
        assert_eq!(s.socket, PathBuf::from("/var/run/calico/calico-node.sock"));
        assert!(s.metrics.is_none());
        let s = Settings::from_env(&env(&[
            ("CALICO_NODE_METRICS_PORT", "9099"),
            ("CALICO_NODE_SOCKET", "/tmp/x.sock"),
        ]))
        .expect("valid");
        assert_eq!(s.metrics, Some("0.0.0.0:9099".parse().expect("addr")));
        assert_eq!(s.socket, PathBuf::from("/tmp/x.sock"));
        let e = Settings::from_env(&env(&[("CALICO_NODE_METRICS_PORT", "http")]))
            .expect_err("bad port");
        assert_eq!(e.variable, "CALICO_NODE_METRICS_PORT");
        let e = Settings::from_env(&env(&[("CALICO_NODE_METRICS_HOST", "localhost")]))
            .expect_err("bad host");
        assert_eq!(e.variable, "CALICO_NODE_METRICS_HOST");
    }
}
