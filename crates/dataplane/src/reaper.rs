//! Deleting an interface without making the caller wait for the kernel.
//!
//! [`spawn`] starts the current executable again, detached (own process group, no stdio, so
//! the runtime reading our stdout is not kept waiting), with the deletion to do in its
//! environment; the binary's `main` calls [`run_if_requested`] first thing.

use crate::error::DataplaneError;
use crate::workload::{Dataplane, LinuxDataplane};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NETNS: &str = "CALICO_DATAPLANE_REAP_NETNS";
const IFNAME: &str = "CALICO_DATAPLANE_REAP_IFNAME";
const HOST_IFNAME: &str = "CALICO_DATAPLANE_REAP_HOST_IFNAME";

/// Hands the deletion of `ifname` in `netns` (and of `host_ifname`) to a detached process.
pub fn spawn(netns: Option<&Path>, ifname: &str, host_ifname: &str) -> Result<(), DataplaneError> {
    let exe =
        std::env::current_exe().map_err(|e| DataplaneError::netlink("find our executable", e))?;
    let mut cmd = Command::new(exe);
    cmd.env(IFNAME, ifname)
        .env(HOST_IFNAME, host_ifname)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(ns) = netns {
        cmd.env(NETNS, ns);
    }
    cmd.spawn()
        .map(|_| ())
        .map_err(|e| DataplaneError::netlink("start the interface deletion", e))
}

/// If this process was started by [`spawn`], does the deletion and returns true.
pub fn run_if_requested() -> bool {
    let (Ok(ifname), Ok(host_ifname)) = (std::env::var(IFNAME), std::env::var(HOST_IFNAME)) else {
        return false;
    };
    let netns = std::env::var_os(NETNS).map(PathBuf::from);
    if let Err(e) = LinuxDataplane.remove(netns.as_deref(), &ifname, &host_ifname) {
        log::error!("deleting {ifname}/{host_ifname}: {e}");
    }
    true
}
