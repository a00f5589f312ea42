//! The policy agent's state between the datastore and the kernel: the calculation
//! ([`calico_policy::PolicyEngine`]), the table last applied (what [`ruleset::plan`] diffs
//! against), and the endpoint status files written.
//!
//! - Each datastore key is parsed ([`super::objects`]) and handed to the engine; an object
//!   that does not parse or that the engine refuses is logged once per revision and counted
//!   as skipped (everything else stays enforced, as Felix's validation filter does).
//! - `FELIX_*` variables win over the datastore: they are layered over this node's
//!   FelixConfiguration before the engine sees it (the engine layers that over `default`).
//! - [`Dataplane::converge`] applies what changed in one transaction: the engine writes only
//!   the chains, sets and set members it touched into an edit of the table the kernel holds
//!   ([`ProgrammedTable`]; the engine keeps no copy of the chains: lean mode). First, and
//!   after any refused edit, the whole table is rendered afresh and replaces whatever the
//!   kernel holds, atomically. Then the status files follow the programmed endpoints.

use super::objects::{Kind, Object, ObjectId, parse};
use super::state::{Counts, PolicyState};
use anyhow::Context as _;
use calico_datastore::Kv;
use calico_datastore::model::{FelixConfiguration, FelixConfigurationSpec};
use calico_epstatus as epstatus;
use calico_netfilter::NfSocket;
use calico_netfilter::ruleset::ProgrammedTable;
use calico_policy::{EngineConfig, PolicyEngine, Skipped};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Dataplane {
    node: String,
    engine: PolicyEngine,
    env_overrides: FelixConfigurationSpec,
    /// This node's FelixConfiguration as etcd has it (before the environment's overrides).
    node_config: FelixConfigurationSpec,
    cluster_config: FelixConfigurationSpec,
    /// Skipped objects and why, by key (logged when the reason changes).
    skipped: BTreeMap<String, String>,
    /// What the kernel holds, as far as we know: nothing until the first apply and after a
    /// failed one (the next apply then replaces the table whole).
    table: ProgrammedTable,
    socket: Option<NfSocket>,
    /// Status files written (by file key).
    statuses: BTreeMap<epstatus::EndpointKey, epstatus::EndpointStatus>,
    /// The status directory last used; stale files there are removed at the first apply.
    status_dir: Option<PathBuf>,
    /// The engine's endpoint generation the status files were last brought up to date
    /// with (nothing to look at while it stays: most applies change no endpoint).
    status_generation: Option<u64>,
    revision: i64,
    state: Arc<PolicyState>,
}

impl Dataplane {
    pub fn new(
        node: &str,
        env_overrides: FelixConfigurationSpec,
        state: Arc<PolicyState>,
    ) -> anyhow::Result<Dataplane> {
        let mut config = EngineConfig {
            lean: true,
            ..EngineConfig::default()
        };
        if let Some(p) = &env_overrides.log_prefix {
            config.log_prefix = p.clone();
        }
        let mut d = Dataplane {
            node: node.to_string(),
            engine: PolicyEngine::new(node, config),
            env_overrides,
            node_config: FelixConfigurationSpec::default(),
            cluster_config: FelixConfigurationSpec::default(),
            skipped: BTreeMap::new(),
            table: ProgrammedTable::new(),
            socket: None,
            statuses: BTreeMap::new(),
            status_dir: None,
            status_generation: None,
            revision: 0,
            state,
        };
        // The environment applies even with no FelixConfiguration in the datastore.
        d.feed_node_config();
        Ok(d)
    }

    fn node_config_name(&self) -> String {
        format!("node.{}", self.node)
    }

    fn feed_node_config(&mut self) {
        let spec = FelixConfigurationSpec::layered(&self.node_config, &self.env_overrides);
        let c = FelixConfiguration::new("FelixConfiguration", &self.node_config_name(), spec);
        if let Err(s) = self.engine.upsert_felix_configuration(&c) {
            log::warn!("policy: {s}");
        }
    }

    /// The effective `EndpointStatusPathPrefix`.
    fn status_prefix(&self) -> PathBuf {
        let layered = FelixConfigurationSpec::layered(
            &FelixConfigurationSpec::layered(&self.cluster_config, &self.node_config),
            &self.env_overrides,
        );
        PathBuf::from(
            layered
                .endpoint_status_path_prefix
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| super::DEFAULT_STATUS_PREFIX.to_string()),
        )
    }

    fn skip(&mut self, key: &str, revision: i64, reason: String) {
        if self.skipped.get(key) != Some(&reason) {
            log::warn!("policy: skipping {key} (revision {revision}): {reason}");
        }
        self.skipped.insert(key.to_string(), reason);
    }

    /// A key created or changed.
    pub fn put(&mut self, kv: &Kv) {
        let Some(id) = ObjectId::from_key(&kv.key) else {
            return;
        };
        let object = match parse(&id, kv) {
            Ok(o) => o,
            Err(e) => {
                // An object that no longer reads is enforced no more: as if deleted.
                self.remove(&id);
                self.skip(&kv.key, kv.mod_revision, e);
                return;
            }
        };
        // Calico's validator, as Felix's validation filter runs it on what the syncer reads:
        // an object calicoctl would refuse is not enforced.
        let valid = match &object {
            Object::Profile(p) => calico_validation::profile(p),
            Object::NetworkPolicy(p) => calico_validation::network_policy(p),
            Object::GlobalNetworkPolicy(p) => calico_validation::global_network_policy(p),
            Object::Tier(t) => calico_validation::tier(t),
            Object::NetworkSet(s) => calico_validation::network_set(s),
            Object::GlobalNetworkSet(s) => calico_validation::global_network_set(s),
            _ => Ok(()),
        };
        if let Err(e) = valid {
            self.remove(&id);
            self.skip(&kv.key, kv.mod_revision, e.to_string());
            return;
        }
        let outcome: Result<(), Skipped> = match &object {
            Object::WorkloadEndpoint(w) => self.engine.upsert_workload_endpoint(w),
            Object::Profile(p) => self.engine.upsert_profile(p),
            Object::NetworkPolicy(p) => self.engine.upsert_network_policy(p),
            Object::GlobalNetworkPolicy(p) => self.engine.upsert_global_network_policy(p),
            Object::Tier(t) => self.engine.upsert_tier(t),
            Object::NetworkSet(s) => self.engine.upsert_network_set(s),
            Object::GlobalNetworkSet(s) => self.engine.upsert_global_network_set(s),
            Object::IpPool(p) => self.engine.upsert_ip_pool(p),
            Object::Node(n) => {
                self.engine.upsert_node(n);
                Ok(())
            }
            Object::FelixConfiguration(c) => {
                if c.metadata.name == "default" {
                    self.cluster_config = c.spec.clone();
                    self.engine.upsert_felix_configuration(c)
                } else if c.metadata.name == self.node_config_name() {
                    self.node_config = c.spec.clone();
                    self.feed_node_config();
                    Ok(())
                } else {
                    Ok(())
                }
            }
            // Read for completeness (Felix watches it); nothing in it changes the rules.
            Object::ClusterInformation(_) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                if self.skipped.remove(&kv.key).is_some() {
                    log::info!("policy: {} is valid again", kv.key);
                }
            }
            Err(s) => self.skip(&kv.key, kv.mod_revision, s.reason),
        }
    }

    /// A key deleted.
    pub fn delete(&mut self, key: &str) {
        self.skipped.remove(key);
        if let Some(id) = ObjectId::from_key(key) {
            self.remove(&id);
        }
    }

    fn remove(&mut self, id: &ObjectId) {
        let (ns, name) = (id.namespace.as_str(), id.name.as_str());
        match id.kind {
            Kind::WorkloadEndpoint => self.engine.remove_workload_endpoint(ns, name),
            Kind::Profile => self.engine.remove_profile(name),
            Kind::NetworkPolicy => self.engine.remove_network_policy(ns, name),
            Kind::GlobalNetworkPolicy => self.engine.remove_global_network_policy(name),
            Kind::Tier => self.engine.remove_tier(name),
            Kind::NetworkSet => self.engine.remove_network_set(ns, name),
            Kind::GlobalNetworkSet => self.engine.remove_global_network_set(name),
            Kind::IpPool => self.engine.remove_ip_pool(name),
            Kind::Node => self.engine.remove_node(name),
            Kind::FelixConfiguration => {
                if name == "default" {
                    self.cluster_config = FelixConfigurationSpec::default();
                    self.engine.remove_felix_configuration(name);
                } else if name == self.node_config_name() {
                    self.node_config = FelixConfigurationSpec::default();
                    self.feed_node_config();
                }
            }
            Kind::ClusterInformation => {}
        }
    }

    pub fn seen_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Brings the kernel to the engine's wanted table (one transaction), then the status
    /// files to the programmed endpoints. `oldest`: when the oldest change applied now
    /// arrived (the sync lag is measured from it to the rules being in).
    pub fn converge(&mut self, oldest: Option<Instant>) -> anyhow::Result<()> {
        let first = !self.table.is_programmed();
        let wanted_changes = self.engine.has_changes() || first;
        let started = Instant::now();
        if wanted_changes {
            let socket = match &mut self.socket {
                Some(s) => s,
                None => self
                    .socket
                    .insert(NfSocket::open().context("nfnetlink socket")?),
            };
            let outcome = if first {
                let whole = self.engine.full_table();
                log::info!(
                    "policy: whole table rendered in {:?} (RSS {} MiB)",
                    started.elapsed(),
                    rss_mib()
                );
                let r = self.table.sync(socket, whole).map(|_| ());
                // The whole table carries every change recorded so far.
                self.engine.take_touched();
                r
            } else {
                match self.table.edit() {
                    Some(mut edit) => match self.engine.write_changes(&mut edit) {
                        Ok(_) => {
                            let rendered = started.elapsed();
                            // A refused difference (the kernel's table drifted) or one
                            // the compact record cannot plan: the whole table, now.
                            let engine = &mut self.engine;
                            let r = edit
                                .commit_or_replace(socket, || engine.full_table())
                                .map(|_| ());
                            log::debug!(
                                "policy: changes rendered in {rendered:?}, planned and \
                                 committed in {:?}",
                                started.elapsed() - rendered
                            );
                            r
                        }
                        // The edit is dropped uncommitted (undone); a whole replace follows.
                        Err(e) => Err(e),
                    },
                    None => Ok(()),
                }
            };
            if let Err(e) = outcome {
                // What the kernel holds is unknown now: the next apply replaces it.
                self.table.forget();
                self.socket = None;
                self.state
                    .applied(Err(e.to_string()), started.elapsed(), None);
                return Err(e).context("applying the policy table");
            }
            if first {
                log::info!(
                    "policy: first table in the kernel after {:?} (RSS {} MiB)",
                    started.elapsed(),
                    rss_mib()
                );
            }
        }
        let took = started.elapsed();
        self.state
            .applied(Ok(()), took, oldest.map(|o| o.elapsed()));
        if wanted_changes && took > Duration::from_millis(100) {
            log::info!("policy: applied in {took:?}");
        }
        let files_from = Instant::now();
        self.sync_status_files();
        if first {
            log::info!(
                "policy: status files written in {:?} (RSS {} MiB)",
                files_from.elapsed(),
                rss_mib()
            );
        }
        let stats = self.engine.stats();
        self.state.set_counts(
            Counts {
                local_endpoints: stats.local_endpoints,
                endpoints: stats.endpoints,
                policies: stats.active_policies + stats.active_profiles,
                sets: stats.sets,
                rules: stats.rules,
            },
            self.skipped.len(),
        );
        self.state.set_revision(self.revision);
        if first && wanted_changes {
            // The first build's temporaries (the list, the whole table, its messages) are
            // gone: their pages go back to the kernel, once the endpoints are programmed
            // (the walk over the heap is not on their way).
            let trim_from = Instant::now();
            self.engine.shrink_to_fit();
            calico_malloc::release_free_memory();
            log::info!(
                "policy: spare room and freed memory returned in {:?} (RSS {} MiB, heap in use \
                 {} MiB, free in the heap {} MiB)",
                trim_from.elapsed(),
                rss_mib(),
                calico_malloc::heap_in_use().map_or(0, |b| b >> 20),
                calico_malloc::heap_free().map_or(0, |b| b >> 20)
            );
        }
        Ok(())
    }

    /// Writes the status file of every programmed endpoint whose status changed, removes
    /// those of endpoints gone; at the first pass, also any file no endpoint accounts for
    /// (a previous run's).
    fn sync_status_files(&mut self) {
        let dir = epstatus::status_dir(&self.status_prefix());
        let first = self.status_dir.as_ref() != Some(&dir);
        let generation = self.engine.endpoint_generation();
        if !first && self.status_generation == Some(generation) {
            return;
        }
        // Set again below only if every file is as wanted (a failed write is retried).
        self.status_generation = None;
        let mut all_written = true;
        if first {
            if let Err(e) = epstatus::ensure_dir(&dir) {
                log::warn!("policy: {e}");
                return;
            }
            // Files there that we did not write (a previous run's, or another directory's
            // before a settings change) are reconsidered from scratch.
            self.statuses.clear();
            self.status_dir = Some(dir.clone());
        }
        let wanted: BTreeMap<epstatus::EndpointKey, epstatus::EndpointStatus> = self
            .engine
            .programmed_endpoints()
            .into_iter()
            .map(|s| {
                (
                    epstatus::EndpointKey::new(&s.orchestrator_id, &s.workload_id, &s.endpoint_id),
                    epstatus::EndpointStatus {
                        iface_name: s.iface_name,
                        mac: s.mac,
                        ipv4_nets: s.ipv4_nets,
                        ipv6_nets: s.ipv6_nets,
                        bgp_peer_name: String::new(),
                    },
                )
            })
            .collect();
        if first && let Ok(listed) = epstatus::list(&dir) {
            let keep: BTreeSet<&epstatus::EndpointKey> = wanted.keys().collect();
            for l in listed {
                let stale = l.key.as_ref().is_none_or(|k| !keep.contains(k));
                if stale {
                    // A name Calico would not make is left alone (not ours to judge).
                    if let Some(k) = &l.key
                        && let Err(e) = epstatus::remove(&dir, k)
                    {
                        log::warn!("policy: {e}");
                    }
                }
            }
        }
        for (key, status) in &wanted {
            if self.statuses.get(key) != Some(status) {
                match epstatus::write(&dir, key, status) {
                    Ok(()) => {
                        self.statuses.insert(key.clone(), status.clone());
                    }
                    Err(e) => {
                        all_written = false;
                        log::warn!("policy: {e}");
                    }
                }
            }
        }
        let gone: Vec<epstatus::EndpointKey> = self
            .statuses
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match epstatus::remove(&dir, &key) {
                Ok(_) => {
                    self.statuses.remove(&key);
                }
                Err(e) => {
                    all_written = false;
                    log::warn!("policy: {e}");
                }
            }
        }
        if all_written {
            self.status_generation = Some(generation);
        }
        self.state
            .metrics()
            .policy_status_files
            .set(i64::try_from(self.statuses.len()).unwrap_or(i64::MAX));
    }
}

/// The process's resident size in MiB (0 if unknown), for the cold start's log lines.
pub fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
