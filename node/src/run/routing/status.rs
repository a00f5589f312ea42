//! Route distribution's state as the rest of the daemon sees it: health, `calicoctl node
//! status` (the BGP speaker's sessions) and metrics.

use crate::run::metrics::{Metrics, Outcome};
use std::sync::{Arc, Mutex};
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
    kernel: Option<Result<String, String>>,
    speaker: Option<Arc<calico_bgp::Speaker>>,
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

    pub fn set_ipip(&self, reason: Option<String>) {
        self.with(|i| i.ipip = reason);
    }

    /// A kernel convergence's outcome.
    pub fn kernel_result(&self, outcome: Result<String, String>, took: Option<Duration>) {
        if let Some(t) = took {
            self.metrics.route_apply_seconds.observe(t.as_secs_f64());
        }
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .route_applies
            .get_or_create(&Outcome { outcome: label })
            .inc();
        match &outcome {
            Ok(s) if !s.is_empty() => log::info!("routes: {s} (in {took:?})"),
            Ok(_) => {}
            Err(e) => log::warn!("routes: {e}"),
        }
        self.with(|i| i.kernel = Some(outcome));
    }

    pub fn set_speaker(&self, speaker: Option<Arc<calico_bgp::Speaker>>) {
        self.with(|i| i.speaker = speaker);
    }

    pub fn speaker(&self) -> Option<Arc<calico_bgp::Speaker>> {
        self.with(|i| i.speaker.clone())
    }

    /// The BGP sessions (empty without a speaker).
    pub async fn peers(&self) -> Vec<calico_bgp::PeerStatus> {
        match self.speaker() {
            Some(s) => s.status().await,
            None => Vec::new(),
        }
    }

    /// One line for health's detail.
    pub fn summary(&self) -> String {
        self.with(|i| {
            let mut parts = vec![format!("routing {}", self.backend)];
            if !i.datastore_synced {
                parts.push("waiting for the datastore".into());
            } else if self.backend == "bird" && !i.bgp_synced {
                parts.push("waiting for BGP End-of-RIB".into());
            } else {
                parts.push("synced".into());
            }
            if let Some(p) = &i.plan_problem {
                parts.push(p.clone());
            }
            if let Some(Err(e)) = &i.kernel {
                parts.push(format!("kernel: {e}"));
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
