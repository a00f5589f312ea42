//! The socket's connections: each greeted (or refused: only root is served, checked with
//! `SO_PEERCRED`, whatever the file's mode), then one reply per request, in order.

use super::kernel::{Queue, Work};
use super::metrics::{Metrics, Outcome, Service, ServiceOutcome};
use calico_agent_protocol::frame::{self, Incoming};
use calico_agent_protocol::message::{EtcdIdentity, HealthReport, Probe};
use calico_agent_protocol::{Hello, Reply, Request};
use calico_dataplane::link_removal::LinkRemoval;
use calico_datastore::EtcdClient;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// What every connection shares: the node's etcd client, the kernel work queue, the
/// metrics and the daemon's state.
pub struct Shared {
    pub etcd: EtcdClient,
    /// What a plugin's etcd settings must be for us to serve them.
    pub identity: EtcdIdentity,
    pub kernel: Queue,
    pub metrics: Metrics,
    /// Route distribution's state (health detail, `calicoctl node status`).
    pub routing: Arc<super::routing::status::RoutingState>,
    pub policy: Arc<super::policy::state::PolicyState>,
    /// Set at SIGTERM: new work is refused (the plugins then do it themselves).
    pub draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    etcd_state: Mutex<Result<(), String>>,
}

impl Shared {
    pub fn new(
        etcd: EtcdClient,
        identity: EtcdIdentity,
        kernel: Queue,
        metrics: Metrics,
        routing: Arc<super::routing::status::RoutingState>,
        policy: Arc<super::policy::state::PolicyState>,
    ) -> Self {
        Shared {
            etcd,
            identity,
            kernel,
            metrics,
            routing,
            policy,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            etcd_state: Mutex::new(Err("etcd not contacted yet".into())),
        }
    }

    /// Records the outcome of a contact with etcd (a plugin's request or the probe).
    pub fn etcd_contact(&self, outcome: Result<(), String>) {
        self.metrics.etcd_ready.set(i64::from(outcome.is_ok()));
        if let Ok(mut s) = self.etcd_state.lock() {
            if s.is_ok() && outcome.is_err() {
                log::warn!(
                    "etcd: {}",
                    outcome.as_ref().err().map_or("", String::as_str)
                );
            } else if s.is_err() && outcome.is_ok() {
                log::info!("etcd at {} answers", self.etcd.endpoints());
            }
            *s = outcome;
        }
    }

    /// What the probes see: live while the daemon answers; ready when etcd answered last
    /// and the daemon is not stopping.
    pub fn health(&self) -> HealthReport {
        let etcd = self
            .etcd_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Err("state poisoned".into()));
        let draining = self.draining.load(Ordering::Relaxed);
        let detail = match (&etcd, draining) {
            (_, true) => "stopping".to_string(),
            (Ok(()), false) => format!("etcd at {} answers", self.etcd.endpoints()),
            (Err(e), false) => e.clone(),
        };
        // Route distribution's state rides along (IPIP unavailable, waiting for BGP, ...);
        // it does not decide readiness, as BIRD's state does not decide Felix's.
        let detail = format!(
            "{detail}; {}; {}",
            self.routing.summary(),
            self.policy.summary()
        );
        // Felix is ready once its first apply after the datastore snapshot is in.
        HealthReport {
            live: true,
            ready: etcd.is_ok() && !draining && self.policy.ready(),
            detail,
        }
    }

    /// Requests being served.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is being served.
    pub async fn quiesced(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A request being served, counted until dropped.
struct Serving<'a> {
    shared: &'a Shared,
    service: &'static str,
}

impl<'a> Serving<'a> {
    fn start(shared: &'a Shared, service: &'static str) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared
            .metrics
            .in_flight
            .get_or_create(&Service { service })
            .inc();
        Serving { shared, service }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .in_flight
            .get_or_create(&Service {
                service: self.service,
            })
            .dec();
        if self.shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

async fn write(stream: &mut UnixStream, message: &impl serde::Serialize) -> std::io::Result<()> {
    let bytes = frame::encode(message).map_err(std::io::Error::other)?;
    stream.write_all(&bytes).await
}

/// Serves one connection until the peer closes it (or breaks the protocol).
pub async fn connection(mut stream: UnixStream, shared: std::sync::Arc<Shared>) {
    let uid = stream.peer_cred().map(|c| c.uid());
    if uid.as_ref().ok() != Some(&0) {
        shared
            .metrics
            .connections
            .get_or_create(&Outcome { outcome: "refused" })
            .inc();
        log::warn!("refused a connection from uid {uid:?}: only root is served");
        let _ = write(
            &mut stream,
            &Hello::Refused("only root may use calico-node's socket".into()),
        )
        .await;
        return;
    }
    shared
        .metrics
        .connections
        .get_or_create(&Outcome {
            outcome: "accepted",
        })
        .inc();
    let hello = Hello::Welcome {
        agent: crate::VERSION.to_string(),
    };
    if write(&mut stream, &hello).await.is_err() {
        return;
    }
    let mut incoming = Incoming::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let frame = loop {
            match incoming.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    log::debug!("closing a connection: {e}");
                    return;
                }
            }
            let got = stream
                .async_io(Interest::READABLE, || {
                    frame::receive(stream.as_fd(), &mut buf)
                })
                .await;
            match got {
                Ok((0, _)) => return,
                Ok((n, fds)) => incoming.push(&buf[..n], fds),
                Err(e) => {
                    log::debug!("closing a connection: {e}");
                    return;
                }
            }
        };
        let request: Request = match frame.decode() {
            Ok(r) => r,
            Err(e) => {
                // Another version: the plugin does its work itself when we close.
                log::debug!("closing a connection: {e}");
                return;
            }
        };
        let service = request.service();
        let started = Instant::now();
        let serving = Serving::start(&shared, service);
        let (reply, outcome) = handle(&shared, request, frame.descriptors).await;
        let written = write(&mut stream, &reply).await;
        drop(serving);
        let m = &shared.metrics;
        m.requests
            .get_or_create(&ServiceOutcome { service, outcome })
            .inc();
        m.request_seconds
            .get_or_create(&Service { service })
            .observe(started.elapsed().as_secs_f64());
        if written.is_err() {
            return;
        }
    }
}

/// The reply to one request, and its outcome for the metrics.
async fn handle(shared: &Shared, request: Request, mut fds: Vec<OwnedFd>) -> (Reply, &'static str) {
    if fds.len() != request.descriptors() {
        return (
            Reply::Rejected(format!(
                "{} descriptors where {} belong",
                fds.len(),
                request.descriptors()
            )),
            "rejected",
        );
    }
    if let Request::Health(probe) = request {
        let report = shared.health();
        let passed = match probe {
            Probe::Live => report.live,
            Probe::Ready => report.ready,
        };
        return (Reply::Health(report), if passed { "ok" } else { "failed" });
    }
    if shared.draining.load(Ordering::Relaxed) {
        return (Reply::ShuttingDown, "shutting_down");
    }
    match request {
        Request::Etcd { identity, call } => {
            let reply =
                calico_datastore::agent::serve(&shared.etcd, &shared.identity, &identity, call)
                    .await;
            let outcome = match &reply {
                Reply::OtherEtcd => "other_etcd",
                Reply::EtcdFailed {
                    unreachable: true,
                    message,
                } => {
                    shared.etcd_contact(Err(message.clone()));
                    "unreachable"
                }
                Reply::EtcdFailed { .. } => "error",
                _ => {
                    shared.etcd_contact(Ok(()));
                    "ok"
                }
            };
            (reply, outcome)
        }
        Request::DeleteLink {
            netns,
            index,
            ifname,
        } => {
            let Some(ns) = fds.pop() else {
                return (Reply::Rejected("no namespace".into()), "rejected");
            };
            let ns = std::fs::File::from(ns);
            let netns_path = std::path::PathBuf::from(netns);
            // The descriptor is the caller's word for the pod's namespace: never ours or the
            // host's, where the index would name one of the node's own interfaces.
            if let Err(e) = calico_dataplane::netns::check_pod(&ns, &netns_path) {
                log::warn!("refused a link deletion: {e}");
                return (Reply::Rejected(e.to_string()), "rejected");
            }
            let removal = LinkRemoval {
                netns: ns,
                netns_path,
                index,
                ifname,
            };
            taken(shared.kernel.accept(Work::Link(removal)))
        }
        Request::ReleaseNetfilter { udp } => {
            let (Some(netns), Some(socket)) = (fds.pop(), fds.pop()) else {
                return (Reply::Rejected("no socket or namespace".into()), "rejected");
            };
            let udp = udp.into_iter().map(|u| (u.family, u.ports)).collect();
            taken(shared.kernel.accept(Work::Netfilter {
                socket,
                netns: std::fs::File::from(netns),
                udp,
            }))
        }
        Request::Health(_) => (Reply::Rejected("unreachable".into()), "rejected"),
        Request::BgpStatus => (
            Reply::BgpStatus(super::routing::status::report(&shared.routing)),
            "ok",
        ),
    }
}

fn taken(accepted: bool) -> (Reply, &'static str) {
    if accepted {
        (Reply::Accepted, "accepted")
    } else {
        (Reply::ShuttingDown, "shutting_down")
    }
}
