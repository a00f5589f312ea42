//! Network namespaces by path (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
//!
//! `setns` is per thread, and sockets and `/proc/sys/net` files belong to the namespace of
//! the thread that opened them. So code enters a namespace only for the synchronous moment
//! it needs (opening a netlink socket, writing a sysctl) and always comes back, even on error.

use crate::error::DataplaneError;
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::path::Path;

/// Opens a namespace file; a missing one is [`DataplaneError::NetnsMissing`].
pub fn open(path: &Path) -> Result<File, DataplaneError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataplaneError::NetnsMissing(path.to_path_buf())
        } else {
            DataplaneError::Netns {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Runs `f` with the current thread in namespace `ns`, then returns the thread to the
/// namespace it was in.
pub fn within<T>(ns: &File, path: &Path, f: impl FnOnce() -> T) -> Result<T, DataplaneError> {
    let err = |e: std::io::Error| DataplaneError::Netns {
        path: path.to_path_buf(),
        source: e,
    };
    let home = File::open("/proc/thread-self/ns/net").map_err(err)?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))?;
    let out = f();
    // Failing to return would leave this thread in the pod: nothing sane can continue.
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        log::error!("cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    Ok(out)
}
