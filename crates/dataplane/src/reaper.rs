//! Deleting a pod's interface without making the caller wait for the kernel.
//!
//! Freeing a veth makes the kernel wait out an RCU grace period (10-20 ms here), the bulk of
//! a DEL otherwise. So DEL hands the deletion to a detached process: [`spawn`] starts the
//! current executable again (own process group, no stdio, so the runtime reading our stdout is
//! not kept waiting) with a [`Reap`] in its environment; the binary's `main` asks
//! [`requested`] first thing and runs it.
//!
//! The interface is named by what cannot be taken over behind the DEL's back: the identity of
//! the pod's namespace (device and inode of its nsfs file, not its path) and the interface's
//! index inside that namespace, never a name. The host end's name is a hash of the pod's
//! name, so a sandbox re-created for the same pod has the same host end name, and the runtime
//! may reuse a namespace path: a deletion by name that runs after the new sandbox's ADD would
//! take the new pod's interface.

use crate::error::DataplaneError;
use crate::netlink::Netlink;
use crate::netns;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const NETNS: &str = "CALICO_DATAPLANE_REAP_NETNS";
const NETNS_ID: &str = "CALICO_DATAPLANE_REAP_NETNS_ID";
const INDEX: &str = "CALICO_DATAPLANE_REAP_INDEX";
const IFNAME: &str = "CALICO_DATAPLANE_REAP_IFNAME";
const LOG_FILE: &str = "CALICO_DATAPLANE_REAP_LOG_FILE";

/// One interface to delete: `ifname` at `index` in the namespace at `netns`, if that path
/// still names the namespace `netns_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reap {
    pub netns: PathBuf,
    pub netns_id: netns::Identity,
    pub index: u32,
    pub ifname: String,
    /// Where the detached process logs what it did (the plugin's log file).
    pub log_file: Option<PathBuf>,
}

/// What a [`Reap`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Deleted,
    /// The interface at that index is gone, or is another interface now.
    InterfaceGone,
    /// The path no longer names that namespace (gone with its interfaces, or replaced).
    NamespaceGone,
}

impl Reap {
    /// Deletes the interface if it is still the one named. Runs in the detached process, or
    /// in the caller when none can be started.
    pub fn run(&self) -> Result<Reaped, DataplaneError> {
        let ns = match netns::open(&self.netns) {
            Ok(ns) => ns,
            Err(DataplaneError::NetnsMissing(_)) => return Ok(Reaped::NamespaceGone),
            Err(e) => return Err(e),
        };
        if netns::identity(&ns, &self.netns)? != self.netns_id {
            return Ok(Reaped::NamespaceGone);
        }
        let pod = Netlink::in_netns(&ns, &self.netns)?;
        match pod.link_by_index(self.index)? {
            Some(link) if link.name == self.ifname => {
                pod.delete_link(self.index)?;
                Ok(Reaped::Deleted)
            }
            _ => Ok(Reaped::InterfaceGone),
        }
    }

    /// Runs it and logs the outcome.
    pub fn run_and_log(&self) {
        match self.run() {
            Ok(outcome) => log::info!(
                "reaper: {} (index {}) in {}: {outcome:?}",
                self.ifname,
                self.index,
                self.netns.display()
            ),
            Err(e) => log::error!(
                "reaper: deleting {} (index {}) in {}: {e}",
                self.ifname,
                self.index,
                self.netns.display()
            ),
        }
    }
}

/// Hands `job` to a detached process.
pub fn spawn(job: &Reap) -> Result<(), DataplaneError> {
    let exe =
        std::env::current_exe().map_err(|e| DataplaneError::netlink("find our executable", e))?;
    let mut cmd = Command::new(exe);
    cmd.env(NETNS, &job.netns)
        .env(NETNS_ID, job.netns_id.to_string())
        .env(INDEX, job.index.to_string())
        .env(IFNAME, &job.ifname)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(f) = &job.log_file {
        cmd.env(LOG_FILE, f);
    }
    cmd.spawn()
        .map(|_| ())
        .map_err(|e| DataplaneError::netlink("start the interface deletion", e))
}

/// The deletion this process was started for by [`spawn`], if any.
pub fn requested() -> Option<Reap> {
    from_env(|k| std::env::var_os(k).map(PathBuf::from))
}

fn from_env(var: impl Fn(&str) -> Option<PathBuf>) -> Option<Reap> {
    let text = |k: &str| var(k).and_then(|p| p.to_str().map(str::to_string));
    Some(Reap {
        netns: var(NETNS)?,
        netns_id: text(NETNS_ID)?.parse().ok()?,
        index: text(INDEX)?.parse().ok()?,
        ifname: text(IFNAME)?,
        log_file: var(LOG_FILE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_job_survives_the_environment() {
        let job = Reap {
            netns: "/run/netns/pod-1".into(),
            netns_id: netns::Identity {
                dev: 4,
                ino: 4026532281,
            },
            index: 7,
            ifname: "eth0".into(),
            log_file: Some("/var/log/calico/cni/cni.log".into()),
        };
        let env: BTreeMap<&str, PathBuf> = [
            (NETNS, job.netns.clone()),
            (NETNS_ID, job.netns_id.to_string().into()),
            (INDEX, "7".into()),
            (IFNAME, "eth0".into()),
            (LOG_FILE, "/var/log/calico/cni/cni.log".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(from_env(|k| env.get(k).cloned()), Some(job));
        // Anything missing or malformed: not a reaper.
        assert_eq!(
            from_env(|k| (k != INDEX).then(|| env.get(k).cloned()).flatten()),
            None
        );
        assert_eq!(
            from_env(|k| if k == NETNS_ID {
                Some("x".into())
            } else {
                env.get(k).cloned()
            }),
            None
        );
    }
}
