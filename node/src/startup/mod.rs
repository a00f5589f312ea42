//! `calico-node startup`: the one-shot start-up of a node, after Calico's
//! `node/pkg/lifecycle/startup` (with its `allocateip` tunnel addresses, and the MTU file
//! Felix writes). In order:
//!
//! 1. [`settings`]: every variable read and checked before anything is touched;
//! 2. [`nodename`]: the node's name (`NODENAME`, the stored name, the host name);
//! 3. [`node`]: the Calico Node resource, with addresses from `IP`/`IP6` or [`autodetect`];
//! 4. [`pools`]: the default IP pools, when the datastore has none;
//! 5. [`clusterinfo`]: `clusterinformations/default` and the default tiers;
//! 6. [`tunnel`]: the node's IPIP/VXLAN tunnel addresses (IPAM, `calico-ipam`'s allocator);
//! 7. [`mtu`]: the MTU file for the `calico` plugin;
//! 8. the nodename file, last (as Calico), so a failed start-up leaves none on a new host.
//!
//! Every datastore write goes through [`guarded`] or a create-if-absent transaction; files
//! are written only when their content changes, so a second run changes nothing. The kernel
//! is reached only through [`host::Host`] and the datastore only through `KvStore`, so all
//! of it runs in unit tests on a [`host::StaticHost`] and a `MemKv`.

pub mod autodetect;
pub mod clusterinfo;
pub mod guarded;
pub mod host;
pub mod mtu;
pub mod node;
pub mod nodename;
pub mod pools;
pub mod settings;
pub mod tunnel;

use crate::config::{ConfigError, Env};
use calico_datastore::{Etcd, EtcdError, KvStore, StoreError};
use calico_ipam::IpamError;
use host::{Host, HostError, LinuxHost};
use settings::Settings;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Why the start-up failed. Each is one line; `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use the datastore: {0}")]
    Connect(#[from] EtcdError),
    #[error("datastore: {0}")]
    Store(#[from] StoreError),
    #[error("IPAM: {0}")]
    Ipam(#[from] IpamError),
    #[error("the host's interfaces: {0}")]
    Host(#[from] HostError),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file read through `calico-fsbound` (its message names the setting and the path).
    #[error(transparent)]
    Setting(#[from] calico_fsbound::FileError),
    #[error("cannot decode {key}: {reason} (left as it is)")]
    Corrupt { key: String, reason: String },
    #[error("{key} kept changing while we wrote it ({attempts} attempts); try again")]
    Contended { key: String, attempts: usize },
    #[error("{0}")]
    Node(String),
}

/// What a start-up did: its warnings and its changes, also logged as they happen.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub node_name: String,
    pub warnings: Vec<String>,
    pub changes: Vec<String>,
}

impl Report {
    /// Logs a warning (once per start-up).
    pub fn warn(&mut self, message: String) {
        if !self.warnings.contains(&message) {
            log::warn!("{message}");
            self.warnings.push(message);
        }
    }

    /// Logs a change made.
    pub fn changed(&mut self, message: String) {
        log::info!("{message}");
        self.changes.push(message);
    }
}

/// Runs the start-up against `store` and `host`.
pub fn start(
    settings: &Settings,
    store: &dyn KvStore,
    host: &dyn Host,
    now: SystemTime,
) -> Result<Report, StartupError> {
    let mut report = Report::default();
    let name = nodename::determine(settings, host, &mut report)?;
    node::ensure(settings, &name, store, host, now, &mut report)?;
    let interfaces = host.interfaces()?;
    pools::ensure_defaults(settings, store, &interfaces, now, &mut report)?;
    clusterinfo::ensure(store, &settings.cluster_type, now, &mut report)?;
    tunnel::reconcile(store, &name, &mut report)?;
    mtu::ensure_file(settings, &name, store, &interfaces, &mut report)?;
    if nodename::write_if_changed(&settings.nodename_file, &name)? {
        report.changed(format!(
            "wrote {} = {name}",
            settings.nodename_file.display()
        ));
    }
    report.node_name = name;
    Ok(report)
}

/// The datastore; with `WAIT_FOR_DATASTORE=true` an unreachable one is asked again every
/// second until it answers (Calico's `waitForConnection`).
fn datastore(settings: &Settings) -> Result<Etcd, StartupError> {
    let store = Etcd::connect(&settings.etcd)?;
    if !settings.wait_for_datastore {
        return Ok(store);
    }
    let probe = node::key("ct-datastore-probe");
    loop {
        match KvStore::get(&store, &probe) {
            Ok(_) => {
                log::info!("datastore is ready");
                return Ok(store);
            }
            Err(e) if e.is_unreachable() => {
                log::warn!("cannot reach the datastore, retrying in 1s: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `calico-node startup`: settings from `env`, the etcd they name, this host's kernel.
pub fn run(env: &dyn Env) -> Result<(), StartupError> {
    let settings = Settings::from_env(env)?;
    crate::logging::init(settings.log_level);
    let store = datastore(&settings)?;
    let report = start(&settings, &store, &LinuxHost, SystemTime::now())?;
    log::info!(
        "start-up of node {} done: {} change(s), {} warning(s)",
        report.node_name,
        report.changes.len(),
        report.warnings.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::StaticHost;
    use calico_datastore::MemKv;

    use crate::startup::settings::test_settings as settings;

    /// The whole start-up on an empty store, then again: the second run changes nothing.
    #[test]
    fn an_empty_datastore_then_a_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemKv::new();
        let host = StaticHost::default()
            .with_interface("lo", &["127.0.0.1/8"])
            .with_interface("eth0", &["10.0.0.5/24"]);
        let s = settings(
            dir.path(),
            &[("NODENAME", "node-1"), ("CALICO_IPV4POOL_IPIP", "Always")],
        );
        let r = start(&s, &m, &host, SystemTime::now()).unwrap();
        let keys: Vec<String> = m.dump().into_iter().map(|(k, _)| k).collect();
        for want in [
            "/calico/resources/v3/projectcalico.org/nodes/node-1",
            "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool",
            "/calico/resources/v3/projectcalico.org/clusterinformations/default",
            "/calico/ipam/v2/handle/ipip-tunnel-addr-node-1",
        ] {
            assert!(keys.iter().any(|k| k == want), "{want} in {keys:?}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("nodename")).unwrap(),
            "node-1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mtu")).unwrap(),
            "1480"
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let before = m.dump();
        let again = start(&s, &m, &host, SystemTime::now()).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(m.dump(), before);
    }

    #[test]
    fn a_failed_start_up_writes_no_nodename_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemKv::new();
        let host = StaticHost::default().with_interface("lo", &["127.0.0.1/8"]);
        let s = settings(dir.path(), &[("NODENAME", "node-1")]);
        let e = start(&s, &m, &host, SystemTime::now()).expect_err("no address");
        assert!(e.to_string().contains("autodetect"), "{e}");
        assert!(!dir.path().join("nodename").exists());
        assert!(m.dump().is_empty());
    }
}
