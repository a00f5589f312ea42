//! The host-wide IPAM lock: an exclusive `flock` on Calico's `/var/run/calico/ipam.lock`, so
//! allocations on one node are serialised (with Calico's own plugin too, during a rollout).
//! The wait is bounded: past it the caller answers "try again later" instead of queueing
//! forever (Calico's thundering-herd handle leak came from unbounded queues).

use crate::error::IpamError;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a call waits for the lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Held until dropped (closing the file releases the lock).
#[derive(Debug)]
pub struct HostLock {
    _file: File,
    pub waited: Duration,
}

impl HostLock {
    /// Takes the lock at `path` (creating it and its directory), waiting at most `max_wait`.
    pub fn acquire(path: &Path, max_wait: Duration) -> Result<HostLock, IpamError> {
        let started = Instant::now();
        let setting = |why: String| IpamError::LockFile {
            path: path.display().to_string(),
            reason: why,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| setting(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Non-blocking, so a FIFO there fails at once instead of waiting for a reader.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => setting("is a directory".into()),
                Ok(m) if !m.is_file() => setting("is not a regular file".into()),
                _ => setting(format!("cannot be opened: {e}")),
            })?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(setting("is not a regular file".into()));
        }
        // Poll with a short, growing sleep: a blocking flock cannot be bounded in time.
        let mut pause = Duration::from_micros(100);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(HostLock {
                        _file: file,
                        waited: started.elapsed(),
                    });
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(IpamError::Other(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )));
                }
            }
            if started.elapsed() >= max_wait {
                return Err(IpamError::LockTimeout {
                    path: path.display().to_string(),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_times_out_then_gets_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/ipam.lock");
        let first = HostLock::acquire(&path, Duration::from_secs(1)).expect("first");
        let e = HostLock::acquire(&path, Duration::from_millis(30)).expect_err("held");
        assert!(matches!(e, IpamError::LockTimeout { .. }), "{e}");
        assert!(e.is_transient());
        drop(first);
        HostLock::acquire(&path, Duration::from_millis(30)).expect("free again");
    }

    /// Issue 12 #15 (findings #15): an `ipam_lock_file` that is a directory gave code 100;
    /// it (and a FIFO, which must not block) is code 7 naming the setting.
    #[test]
    fn a_lock_path_that_is_no_regular_file_is_a_config_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        for (path, why) in [
            (dir.path().to_path_buf(), "is a directory"),
            (fifo, "is not a regular file"),
            (dir.path().join("fifo/x"), "cannot create"),
        ] {
            let started = Instant::now();
            let e = HostLock::acquire(&path, Duration::from_secs(5)).expect_err("refused");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{path:?} did not block"
            );
            let msg = e.to_string();
            assert!(msg.contains("ipam_lock_file") && msg.contains(why), "{msg}");
            let cni = cni_protocol::CniError::from(e);
            assert_eq!(cni.code, cni_protocol::ErrorCode::INVALID_NETWORK_CONFIG);
        }
    }
}
