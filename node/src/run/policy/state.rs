//! The policy agent's state as the rest of the daemon sees it: readiness and health detail
//! (Felix's readiness: in sync with the datastore and the first apply done) and the
//! `calico_node_policy_*` metrics.

use crate::run::metrics::{Metrics, Outcome};
use std::sync::Mutex;
use std::time::Duration;

/// Counts of what is enforced, for metrics and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub local_endpoints: usize,
    pub endpoints: usize,
    pub policies: usize,
    pub sets: usize,
    pub rules: usize,
}

/// Shared between the policy thread and the socket's health answers.
pub struct PolicyState {
    pub enabled: bool,
    metrics: Metrics,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    datastore_synced: bool,
    /// The first apply after the snapshot went in.
    programmed: bool,
    last_error: Option<String>,
    skipped: usize,
}

impl PolicyState {
    pub fn new(enabled: bool, metrics: Metrics) -> Self {
        PolicyState {
            enabled,
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
    }

    /// An apply's outcome; `took` is the kernel transaction's time, `lag` the time from the
    /// oldest datastore change it carried arriving to the rules being in.
    pub fn applied(&self, outcome: Result<(), String>, took: Duration, lag: Option<Duration>) {
        self.metrics
            .policy_apply_seconds
            .observe(took.as_secs_f64());
        if let Some(l) = lag {
            self.metrics
                .policy_sync_lag_seconds
                .observe(l.as_secs_f64());
        }
        let label = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .policy_applies
            .get_or_create(&Outcome { outcome: label })
            .inc();
        self.with(|i| match outcome {
            Ok(()) => {
                if !i.programmed {
                    log::info!("policy: first apply done in {took:?}");
                }
                if i.last_error.take().is_some() {
                    log::info!("policy: applies succeed again");
                }
                i.programmed = true;
            }
            Err(e) => {
                if i.last_error.as_ref() != Some(&e) {
                    log::error!("policy: apply failed: {e}");
                }
                i.last_error = Some(e);
            }
        });
        self.metrics
            .policy_synced
            .set(i64::from(self.with(|i| i.programmed)));
    }

    /// The datastore revision the kernel's rules now reflect.
    pub fn set_revision(&self, revision: i64) {
        self.metrics.policy_applied_revision.set(revision);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn set_counts(&self, c: Counts, skipped: usize) {
        let g = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let m = &self.metrics;
        m.policy_local_endpoints.set(g(c.local_endpoints));
        m.policy_endpoints.set(g(c.endpoints));
        m.policy_active_policies.set(g(c.policies));
        m.policy_sets.set(g(c.sets));
        m.policy_rules.set(g(c.rules));
        m.policy_skipped_objects.set(g(skipped));
        self.with(|i| i.skipped = skipped);
    }

    /// Whether readiness may be claimed: policy off, or programmed once.
    pub fn ready(&self) -> bool {
        !self.enabled || self.with(|i| i.programmed)
    }

    /// One line for health's detail.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "policy disabled".into();
        }
        self.with(|i| {
            let mut parts = vec![if !i.datastore_synced {
                "policy waiting for the datastore".to_string()
            } else if !i.programmed {
                "policy not programmed yet".to_string()
            } else {
                "policy in sync".to_string()
            }];
            if i.skipped > 0 {
                parts.push(format!("{} invalid objects skipped", i.skipped));
            }
            if let Some(e) = &i.last_error {
                parts.push(format!("policy apply: {e}"));
            }
            parts.join("; ")
        })
    }
}
