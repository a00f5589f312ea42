//! Closing an nfnetlink socket without waiting for nf_tables.
//!
//! When the last reference to an nfnetlink socket goes, nf_tables first waits for the
//! objects recent transactions removed to be freed: an RCU grace period, 5-20 ms here. A
//! plugin that just deleted rules would spend most of its time in its own `exit`.
//! [`close_detached`] hands a duplicate of the socket to a helper (this executable again,
//! detached, see [`run_if_requested`]) that keeps it until we have exited; the helper then
//! pays the wait, which nobody is waiting for.

use crate::socket::NfSocket;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LINGER: &str = "CALICO_NETFILTER_LINGER";
/// The helper never outlives its parent by more than this.
const MAX_LINGER: Duration = Duration::from_secs(5);

/// Closes `sock`, leaving its last close to a helper process.
pub fn close_detached(sock: NfSocket) {
    let Ok(dup) = sock.duplicate_fd() else {
        return;
    };
    drop(sock);
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = Command::new(exe)
        .env(LINGER, "1")
        .stdin(Stdio::from(dup))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        log::debug!("closing the nfnetlink socket in place: {e}");
    }
}

/// If this process is such a helper: waits for the parent to exit, then returns true (the
/// caller exits, closing the socket it holds as stdin).
pub fn run_if_requested() -> bool {
    if std::env::var_os(LINGER).is_none() {
        return false;
    }
    let parent = nix::unistd::getppid();
    let started = Instant::now();
    while nix::unistd::getppid() == parent && started.elapsed() < MAX_LINGER {
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
