//! Route distribution's state as the rest of the daemon sees it: health, `calicoctl node
//! status` (the BGP speaker's sessions) and metrics.

use crate::run::metrics::{Metrics, Outcome};
use std::sync::Mutex;
use std::time::Duration;

/// Shared between the routing task, its kernel thread and the socket's connections.
pub struct RoutingState {
    pub backend: &'static str,
    metrics: Metrics,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    datastore_synced: bool,
    bgp_synced: bool,
    plan_problem: Option<String>,
    /// Why calico-bgpd is not running (it could not start, or exited), until it runs.
    speaker_problem: Option<String>,
    kernel: Option<Result<String, String>>,
    /// calico-bgpd's kernel outcome.
    bgp_kernel: Option<Result<String, String>>,
    speaker_running: bool,
    peers: Vec<calico_bgp::PeerStatus>,
    ipip: Option<String>,
}

impl RoutingState {
    pub fn new(backend: &'static str, metrics: Metrics) -> Self {
        RoutingState {
            backend,
            metrics,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update; the data is still usable.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    pub fn set_datastore_synced(&self) {
        self.with(|i| i.datastore_synced = true);
        self.update_synced_metric();
    }

    pub fn set_bgp_synced(&self, synced: bool) {
        self.with(|i| i.bgp_synced = synced);
        self.update_synced_metric();
    }

    fn update_synced_metric(&self) {
        let bgp = self.backend != "bird";
        let synced = self.with(|i| i.datastore_synced && (i.bgp_synced || bgp));
        self.metrics.routing_synced.set(i64::from(synced));
    }

    /// Why no plan could be made (no Node yet, say), or `None` once one was.
    pub fn set_plan_problem(&self, problem: Option<String>) {
        self.with(|i| {
            if i.plan_problem != problem {
                match &problem {
                    Some(p) => log::warn!("route distribution: {p}"),
                    None => log::info!("route distribution: plan made"),
                }
            }
            i.plan_problem = problem;
        });
    }

    /// Why calico-bgpd's speaker is not running, or `None` once it is.
    pub fn set_speaker_problem(&self, problem: Option<String>) {
        self.with(|i| {
            if i.speaker_problem != problem
                && let Some(p) = &problem
            {
                log::warn!("route distribution: {p}");
            }
            i.speaker_problem = problem;
        });
    }

    /// Why IPIP routes cannot carry traffic here (the kernel's ipip probe), set while a pool
    /// asks for IPIP; logged when it starts to matter.
    pub fn set_ipip(&self, reason: Option<String>) {
        self.with(|i| {
            if i.ipip != reason
                && let Some(r) = &reason
            {
                log::warn!("route distribution: {r}");
            }
            i.ipip = reason;
        });
    }

    /// A kernel convergence's outcome (calico-node's routes thread).
    pub fn kernel_result(&self, outcome: Result<String, String>, took: Option<Duration>) {
        self.record_kernel(&outcome, took, "");
        self.with(|i| i.kernel = Some(outcome));
    }

    /// A kernel convergence's outcome in calico-bgpd (blackholes and learned routes).
    pub fn bgp_kernel_result(&self, outcome: Result<String, String>, took: Option<Duration>) {
        self.record_kernel(&outcome, took, "calico-bgpd ");
        self.with(|i| i.bgp_kernel = Some(outcome));
    }

    fn record_kernel(&self, outcome: &Result<String, String>, took: Option<Duration>, by: &str) {
        if let Some(t) = took {
            self.metrics.route_apply_seconds.observe(t.as_secs_f64());
        }
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .route_applies
            .get_or_create(&Outcome { outcome: label })
            .inc();
        match outcome {
            Ok(s) if !s.is_empty() => log::info!("{by}routes: {s} (in {took:?})"),
            Ok(_) => {}
            Err(e) => log::warn!("{by}routes: {e}"),
        }
    }

    /// Whether calico-bgpd's speaker is up; its sessions go with it.
    pub fn set_speaker_running(&self, running: bool) {
        self.with(|i| {
            i.speaker_running = running;
            if !running {
                i.peers.clear();
                // The next calico-bgpd reports its own.
                i.bgp_kernel = None;
            }
        });
        if !running {
            peer_metrics(self);
        }
    }

    pub fn speaker_running(&self) -> bool {
        self.with(|i| i.speaker_running)
    }

    /// The BGP sessions as calico-bgpd last reported them.
    pub fn set_peers(&self, peers: Vec<calico_bgp::PeerStatus>) {
        self.with(|i| i.peers = peers);
    }

    /// The BGP sessions (empty without a speaker).
    pub fn peers(&self) -> Vec<calico_bgp::PeerStatus> {
        self.with(|i| i.peers.clone())
    }

    /// One line for health's detail.
    pub fn summary(&self) -> String {
        self.with(|i| {
            let mut parts = vec![format!("routing {}", self.backend)];
            if self.backend == "none" {
                // Nothing to wait for: route distribution is off.
            } else if !i.datastore_synced {
                parts.push("waiting for the datastore".into());
            } else if self.backend == "bird" && !i.bgp_synced {
                parts.push("waiting for BGP End-of-RIB".into());
            } else {
                parts.push("synced".into());
            }
            if let Some(p) = &i.plan_problem {
                parts.push(p.clone());
            }
            if let Some(p) = &i.speaker_problem {
                parts.push(p.clone());
            }
            if let Some(Err(e)) = &i.kernel {
                parts.push(format!("kernel: {e}"));
            }
            if let Some(Err(e)) = &i.bgp_kernel {
                parts.push(format!("kernel (calico-bgpd): {e}"));
            }
            if let Some(r) = &i.ipip {
                parts.push(r.clone());
            }
            parts.join("; ")
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Brings `calico_node_bgp_peers{state}` up to the speaker's sessions.
pub fn peer_metrics(state: &RoutingState) {
    use calico_bgp::SessionState::*;
    let peers = state.peers();
    // Peers that went away leave no series behind.
    state.metrics.bgp_peer_routes.clear();
    for p in &peers {
        for (direction, n) in [("received", p.routes_received), ("sent", p.routes_sent)] {
            state
                .metrics
                .bgp_peer_routes
                .get_or_create(&crate::run::metrics::PeerDirection {
                    peer: p.name.clone(),
                    direction,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    for s in [Idle, Connect, Active, OpenSent, OpenConfirm, Established] {
        let n = peers.iter().filter(|p| p.state == s).count();
        let label = crate::run::metrics::State {
            state: match s {
                Idle => "Idle",
                Connect => "Connect",
                Active => "Active",
                OpenSent => "OpenSent",
                OpenConfirm => "OpenConfirm",
                Established => "Established",
            },
        };
        state
            .metrics
            .bgp_peers
            .get_or_create(&label)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// `calicoctl node status`'s report: BIRD's columns made from the speaker's sessions.
pub fn report(state: &RoutingState) -> calico_agent_protocol::message::BgpStatusReport {
    let running = state.speaker_running();
    let now = std::time::SystemTime::now();
    let mut peers: Vec<_> = state
        .peers()
        .into_iter()
        .map(|p| peer_row(&p, now))
        .collect();
    sort_rows(&mut peers);
    calico_agent_protocol::message::BgpStatusReport {
        ipv4_running: running,
        ipv6_running: running,
        speaker: if running {
            format!("calico-node {}", crate::VERSION)
        } else {
            String::new()
        },
        peers,
    }
}

/// Rows in the order of Calico's bird.cfg, which `show protocols` (and so calicoctl)
/// follows: mesh peers, then global, then node-specific (`bgp_processor.go` `processPeers`);
/// by protocol name within a kind (Calico's order there comes from a Go map).
pub fn sort_rows(rows: &mut [calico_agent_protocol::message::BgpPeerStatus]) {
    rows.sort_by(|a, b| {
        let kind = |r: &calico_agent_protocol::message::BgpPeerStatus| {
            calico_routing::peer_kind_from_name(&r.name)
        };
        // `None` (a name of no known kind) sorts first; there is none in practice.
        (kind(a), &a.name).cmp(&(kind(b), &b.name))
    });
}

/// One session as BIRD's `show protocols` row reads in Calico's table: state `up` when
/// established, else `start`; info the BGP state (`Passive` for a passive session waiting)
/// and the last error.
pub fn peer_row(
    p: &calico_bgp::PeerStatus,
    now: std::time::SystemTime,
) -> calico_agent_protocol::message::BgpPeerStatus {
    use calico_bgp::SessionState;
    let established = p.state == SessionState::Established;
    let bgp_state = match p.state {
        SessionState::Idle | SessionState::Active if p.passive => "Passive".to_string(),
        s => s.to_string(),
    };
    let info = match (&p.last_error, established) {
        (Some(e), false) if !e.is_empty() => format!("{bgp_state} {}", bird_error(e)),
        _ => bgp_state,
    };
    calico_agent_protocol::message::BgpPeerStatus {
        name: p.name.clone(),
        address: p.address,
        peer_type: calico_routing::peer_kind_from_name(&p.name)
            .map_or("unknown", |k| k.status_label())
            .to_string(),
        state: if established { "up" } else { "start" }.to_string(),
        since: since(p.since, now),
        info,
    }
}

/// A session's last error in BIRD's words where they differ (`bgp_last_errmsg`): socket
/// errors read `Socket: <strerror>`, a connection the peer closed `Socket: Connection
/// closed` (what operators grep calicoctl's INFO for, e.g. `Active Socket: Connection
/// refused`); anything else as the speaker said it.
pub fn bird_error(e: &str) -> String {
    let strerror = |s: &str| {
        let s = s.split(" (os error").next().unwrap_or(s);
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    if e == "connection closed by peer" {
        "Socket: Connection closed".to_string()
    } else if let Some(io) = e.strip_prefix("connect: ") {
        format!("Socket: {}", strerror(io))
    } else if e.contains("(os error ") {
        format!("Socket: {}", strerror(e))
    } else {
        e.to_string()
    }
}

/// BIRD's `since` column: the time of day for a change today, else the date (UTC).
fn since(at: std::time::SystemTime, now: std::time::SystemTime) -> String {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let (at, now) = (secs(at), secs(now));
    if at / 86_400 == now / 86_400 {
        let s = at % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        let (y, m, d) = civil_from_days(i64::try_from(at / 86_400).unwrap_or(0));
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_summary_says_why_routing_waits_and_that_ipip_is_unavailable() {
        let off = RoutingState::new("none", Metrics::new());
        assert_eq!(off.summary(), "routing none");
        let bird = RoutingState::new("bird", Metrics::new());
        assert_eq!(bird.summary(), "routing bird; waiting for the datastore");
        bird.set_datastore_synced();
        assert_eq!(bird.summary(), "routing bird; waiting for BGP End-of-RIB");
        bird.set_bgp_synced(true);
        bird.set_ipip(Some("IPIP unavailable: no ipip module".into()));
        assert_eq!(
            bird.summary(),
            "routing bird; synced; IPIP unavailable: no ipip module"
        );
        bird.set_ipip(None);
        assert_eq!(bird.summary(), "routing bird; synced");
    }

    fn status(
        state: calico_bgp::SessionState,
        passive: bool,
        err: Option<&str>,
    ) -> calico_bgp::PeerStatus {
        calico_bgp::PeerStatus {
            name: "Mesh_10_10_0_12".into(),
            address: "10.10.0.12".parse().unwrap(),
            state,
            since: UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            last_error: err.map(str::to_string),
            routes_received: 0,
            routes_sent: 0,
            passive,
            messages_in: 0,
            messages_out: 0,
            updates_in: 0,
            updates_out: 0,
        }
    }

    #[test]
    fn socket_errors_read_as_birds() {
        assert_eq!(
            bird_error("connection closed by peer"),
            "Socket: Connection closed"
        );
        assert_eq!(
            bird_error("connect: Connection refused (os error 111)"),
            "Socket: Connection refused"
        );
        assert_eq!(
            bird_error("Connection reset by peer (os error 104)"),
            "Socket: Connection reset by peer"
        );
        assert_eq!(
            bird_error("connect: connect timed out"),
            "Socket: Connect timed out"
        );
        assert_eq!(bird_error("hold timer expired"), "hold timer expired");
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_100);
        let closed = peer_row(
            &status(
                calico_bgp::SessionState::Connect,
                false,
                Some("connection closed by peer"),
            ),
            now,
        );
        assert_eq!(closed.info, "Connect Socket: Connection closed");
    }

    #[test]
    fn rows_follow_birds_protocol_order_mesh_global_node() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_100);
        let mut rows: Vec<_> = [
            "Node_10_10_0_20",
            "Global_10_10_0_13",
            "Mesh_10_10_0_14",
            "Mesh_10_10_0_12",
        ]
        .into_iter()
        .map(|name| {
            let mut s = status(calico_bgp::SessionState::Established, false, None);
            s.name = name.into();
            peer_row(&s, now)
        })
        .collect();
        sort_rows(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Mesh_10_10_0_12",
                "Mesh_10_10_0_14",
                "Global_10_10_0_13",
                "Node_10_10_0_20"
            ]
        );
    }

    #[test]
    fn rows_read_as_birds_show_protocols_in_calicos_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_100);
        let up = peer_row(
            &status(calico_bgp::SessionState::Established, false, None),
            now,
        );
        assert_eq!(up.peer_type, "node-to-node mesh");
        assert_eq!((up.state.as_str(), up.info.as_str()), ("up", "Established"));
        assert_eq!(up.since, "00:53:20");
        let refused = peer_row(
            &status(
                calico_bgp::SessionState::Active,
                false,
                Some("Socket: Connection refused"),
            ),
            now + Duration::from_secs(86_400 * 3),
        );
        assert_eq!(refused.state, "start");
        assert_eq!(refused.info, "Active Socket: Connection refused");
        assert_eq!(refused.since, "2026-11-30");
        let passive = peer_row(&status(calico_bgp::SessionState::Idle, true, None), now);
        assert_eq!(passive.info, "Passive");
    }
}
