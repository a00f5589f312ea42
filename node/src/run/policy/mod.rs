//! Network policy, Felix's job, in one thread of `calico-node run`.
//!
//! The loop: the datastore's policy resources are listed and watched
//! ([`calico_datastore::watch`], Felix's syncer list in [`objects`]) and kept as
//! [`SyncedKeys`], which turns a re-list after compaction into the changes it carries (no
//! gap, no full rebuild); every change goes to the calculation ([`calico_policy`]), whose
//! desired nftables table (one table `calico`, family `inet`) is converged on in one
//! transaction per batch of changes ([`calico_netfilter::ruleset`]), touching only what
//! changed. Then the endpoint status files are written for the endpoints now programmed
//! (the plugin waits on them with `policy_setup_timeout_seconds`) and removed for those
//! gone.
//!
//! Nothing is written to the kernel before the first complete snapshot. The first apply
//! replaces whatever table a previous run left in one transaction ("nothing left is
//! trusted"); the table is never removed on exit, so endpoints stay enforced (and unknown
//! `cali*` interfaces blocked) while the agent is down or restarting: fail closed.
//!
//! Settings follow Felix: `FELIX_<NAME>` variables override the datastore's
//! FelixConfiguration (`node.<name>` over `default`); `CALICO_DISABLE_FELIX=true` (Calico's
//! switch) or `CALICO_DISABLE_POLICY=true` turns the agent's policy off.

pub mod engine;
pub mod objects;
pub mod state;

use crate::config::{ConfigError, Env};
use calico_datastore::EtcdClient;
use calico_datastore::model::FelixConfigurationSpec;
use calico_datastore::watch::{KeyChange, SyncEvent, SyncedKeys};
use state::PolicyState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Felix's default `EndpointStatusPathPrefix`.
pub const DEFAULT_STATUS_PREFIX: &str = "/var/run/calico";
/// The table the agent owns (one per node, family `inet`).
pub const TABLE: &str = "calico";
/// After a failed apply, how long until the next attempt (a full replace).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The policy agent's settings, from the environment.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub enabled: bool,
    /// `NODENAME`, else the nodename file, else the host name (as route distribution).
    pub nodename: Option<String>,
    pub nodename_file: PathBuf,
    /// `FELIX_*` variables, which win over the datastore (Felix's precedence).
    pub env_overrides: FelixConfigurationSpec,
}

impl PolicySettings {
    pub fn from_env(env: &dyn Env) -> Result<PolicySettings, ConfigError> {
        let get = |k: &str| {
            env.var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut disabled = false;
        for k in ["CALICO_DISABLE_FELIX", "CALICO_DISABLE_POLICY"] {
            if let Some(v) = get(k) {
                disabled |= crate::startup::settings::parse_bool(k, &v)?;
            }
        }
        let mut o = FelixConfigurationSpec::default();
        if let Some(v) = get("FELIX_DEFAULTENDPOINTTOHOSTACTION") {
            let norm = match v.to_ascii_lowercase().as_str() {
                "drop" => "Drop",
                "accept" => "Accept",
                "return" => "Return",
                _ => {
                    return Err(ConfigError::new(
                        "FELIX_DEFAULTENDPOINTTOHOSTACTION",
                        format!("{v:?} is not Drop, Accept or Return"),
                    ));
                }
            };
            o.default_endpoint_to_host_action = Some(norm.into());
        }
        o.endpoint_status_path_prefix = get("FELIX_ENDPOINTSTATUSPATHPREFIX");
        o.log_prefix = get("FELIX_LOGPREFIX");
        if let Some(v) = get("FELIX_NFTABLESMARKMASK") {
            let parsed = v.strip_prefix("0x").map_or_else(
                || v.parse::<u32>().ok(),
                |h| u32::from_str_radix(h, 16).ok(),
            );
            o.nftables_mark_mask = Some(parsed.ok_or_else(|| {
                ConfigError::new("FELIX_NFTABLESMARKMASK", format!("{v:?} is not a mask"))
            })?);
        }
        let var_lib = get("CALICO_VAR_LIB_DIR").map_or_else(
            || PathBuf::from(crate::startup::settings::DEFAULT_VAR_LIB_DIR),
            PathBuf::from,
        );
        Ok(PolicySettings {
            enabled: !disabled,
            nodename: get("NODENAME"),
            nodename_file: get("CALICO_NODENAME_FILE")
                .map_or_else(|| var_lib.join("nodename"), PathBuf::from),
            env_overrides: o,
        })
    }

    fn node_name(&self) -> anyhow::Result<String> {
        super::routing::node_name(self.nodename.as_deref(), &self.nodename_file)
    }
}

/// A datastore event and when it arrived (for the sync-lag metric).
struct Arrived {
    event: SyncEvent,
    at: Instant,
}

/// What the policy thread is told.
enum Msg {
    Event(Arrived),
    /// Finish what is under way and return (SIGTERM).
    Stop,
}

/// The running policy agent: its syncer task and its thread.
pub struct PolicyAgent {
    syncer: tokio::task::JoinHandle<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: mpsc::Sender<Msg>,
}

impl PolicyAgent {
    /// Starts the agent (nothing at all when policy is off). Must be called inside the
    /// runtime (the syncer is a task; the calculation and the kernel have their thread).
    pub fn start(
        etcd: EtcdClient,
        settings: PolicySettings,
        state: Arc<PolicyState>,
    ) -> anyhow::Result<Option<PolicyAgent>> {
        if !settings.enabled {
            log::info!("policy: disabled (CALICO_DISABLE_FELIX / CALICO_DISABLE_POLICY)");
            return Ok(None);
        }
        let node = settings.node_name()?;
        log::info!("policy: enforcing for node {node} with nftables table inet {TABLE}");
        let (tx, rx) = mpsc::channel::<Msg>();
        let stop = tx.clone();
        let syncer = tokio::spawn(async move {
            let (atx, mut arx) = tokio::sync::mpsc::unbounded_channel();
            let forward = async {
                while let Some(event) = arx.recv().await {
                    if tx
                        .send(Msg::Event(Arrived {
                            event,
                            at: Instant::now(),
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
            };
            let sync = async {
                loop {
                    match calico_datastore::sync_prefixes(&etcd, objects::prefixes(), atx.clone())
                        .await
                    {
                        Ok(()) => return,
                        Err(e) => log::error!("policy: datastore watch: {e}; again in 1 s"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            tokio::join!(forward, sync);
        });
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("policy".into())
            .spawn(move || run_loop(node, settings, state, rx, started))?;
        Ok(Some(PolicyAgent {
            syncer,
            thread: Some(thread),
            stop,
        }))
    }

    /// Stops the syncer and waits for the thread to finish what it was applying. The table
    /// stays in the kernel.
    pub fn stop(mut self) {
        self.syncer.abort();
        // Told directly: the aborted task's sender is dropped only when the runtime next
        // polls it, and this call holds the runtime's thread.
        let _ = self.stop.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_loop(
    node: String,
    settings: PolicySettings,
    state: Arc<PolicyState>,
    rx: mpsc::Receiver<Msg>,
    started: Instant,
) {
    let mut keys = SyncedKeys::new();
    let mut agent =
        match engine::Dataplane::new(&node, settings.env_overrides.clone(), state.clone()) {
            Ok(a) => a,
            Err(e) => {
                log::error!("policy: cannot start: {e:#}");
                return;
            }
        };
    let mut retry_at: Option<Instant> = None;
    loop {
        let first = match retry_at {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            },
        };
        let mut oldest: Option<Instant> = None;
        let mut pending: Vec<Arrived> = Vec::new();
        // Everything that came together goes into one transaction.
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                Msg::Event(a) => pending.push(a),
                Msg::Stop => return,
            }
        }
        for a in pending {
            oldest = Some(oldest.map_or(a.at, |o| o.min(a.at)));
            let (revision, listed) = match &a.event {
                SyncEvent::Snapshot { revision, kvs } => (*revision, Some(kvs.len())),
                SyncEvent::Put(kv) => (kv.mod_revision, None),
                SyncEvent::Delete { revision, .. } => (*revision, None),
            };
            let read_from = Instant::now();
            for change in keys.apply(a.event) {
                match change {
                    KeyChange::Put(kv) => agent.put(&kv),
                    KeyChange::Deleted(key) => agent.delete(&key),
                }
            }
            if let Some(n) = listed {
                // The cold start's phases (the first apply logs its own).
                log::info!(
                    "policy: {n} keys listed at revision {revision}, {:?} after start; \
                     read into the calculation in {:?} (RSS {} MiB)",
                    a.at.saturating_duration_since(started),
                    read_from.elapsed(),
                    engine::rss_mib()
                );
            }
            agent.seen_revision(revision);
        }
        if !keys.in_sync {
            continue;
        }
        state.set_datastore_synced();
        match agent.converge(oldest) {
            Ok(()) => retry_at = None,
            Err(e) => {
                log::warn!("policy: {e:#}; a full replace in {RETRY_AFTER:?}");
                retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn felix_variables_and_the_switch_are_read_as_calico_names_them() {
        let s = PolicySettings::from_env(&env(&[])).expect("defaults");
        assert!(s.enabled);
        let s = PolicySettings::from_env(&env(&[
            ("CALICO_DISABLE_FELIX", "True"),
            ("FELIX_DEFAULTENDPOINTTOHOSTACTION", "ACCEPT"),
            ("FELIX_NFTABLESMARKMASK", "0xff000000"),
            ("FELIX_ENDPOINTSTATUSPATHPREFIX", "/run/x"),
        ]))
        .expect("valid");
        assert!(!s.enabled);
        let o = &s.env_overrides;
        assert_eq!(o.default_endpoint_to_host_action.as_deref(), Some("Accept"));
        assert_eq!(o.nftables_mark_mask, Some(0xff00_0000));
        assert_eq!(o.endpoint_status_path_prefix.as_deref(), Some("/run/x"));
    }

    #[test]
    fn a_malformed_setting_names_its_variable() {
        for (k, v) in [
            ("CALICO_DISABLE_POLICY", "maybe"),
            ("FELIX_DEFAULTENDPOINTTOHOSTACTION", "Reject"),
            ("FELIX_NFTABLESMARKMASK", "lots"),
        ] {
            let e = PolicySettings::from_env(&env(&[(k, v)])).expect_err("refused");
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
