//! The agent's unix socket: made mode 0600 (only root, the plugins' user, may connect), a
//! stale file of a crashed agent replaced, a live agent's never taken over; removed at exit
//! only if it is still ours.
//!
//! Who owns the socket is decided by a lock, not by probing it: an exclusive `flock` on
//! `<socket>.lock`, taken before the socket is looked at and held for the daemon's life (the
//! kernel drops it when the process dies, however it dies). With the lock held any file at
//! the path is a dead agent's, so two agents starting at once can never unlink each other's
//! socket, and a live agent with a full backlog is never mistaken for a dead one. The lock
//! file itself stays.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Why the socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("another calico-node is serving {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound socket, and what identifies its file.
pub struct Socket {
    pub listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
    /// Held while the socket is ours (see the module doc).
    _lock: Flock<File>,
}

/// `<socket>.lock`.
fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ListenError + '_ {
    move |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Socket {
    /// Binds `path` (its directory made if missing).
    pub fn bind(path: &Path) -> Result<Socket, ListenError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock_file = lock_path(path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_file)
            .map_err(io(&lock_file))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Err(ListenError::InUse(path.to_path_buf())),
            Err((_, e)) => return Err(io(&lock_file)(e.into())),
        };
        match std::fs::symlink_metadata(path) {
            // The lock is ours: a socket file here is a dead agent's.
            Ok(m) if m.file_type().is_socket() => {
                log::warn!("replacing the stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io(path))?;
            }
            Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        // Made 0600 from the start (the umask applies to bind), so it is never open wider.
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(before);
        let listener = bound.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                ListenError::InUse(path.to_path_buf())
            } else {
                io(path)(e)
            }
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        let m = std::fs::symlink_metadata(path).map_err(io(path))?;
        if m.uid() != 0 {
            log::warn!(
                "{} is owned by uid {}, not root: the plugins run as root and will not be \
                 served (only root may connect)",
                path.display(),
                m.uid()
            );
        }
        Ok(Socket {
            listener,
            path: path.to_path_buf(),
            inode: (m.dev(), m.ino()),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops listening: removes the file (if still ours), closes the listening descriptor
    /// and gives up the lock.
    pub fn close(self) {
        self.remove();
    }

    /// Removes the file if it is still the one we bound (a newer agent's is left alone).
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.inode => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/agent.sock");
        let first = Socket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(Socket::bind(&path), Err(ListenError::InUse(_))));
        // A crash: the file stays, nobody listens.
        drop(first);
        let second = Socket::bind(&path).expect("stale file replaced");
        second.remove();
        assert!(!path.exists());
        drop(second);
        std::fs::write(&path, "x").expect("write");
        assert!(matches!(
            Socket::bind(&path),
            Err(ListenError::NotASocket(_))
        ));
    }
}
