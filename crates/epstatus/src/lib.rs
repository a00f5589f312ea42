//! Calico's endpoint status files (Calico 3.28+, `libcalico-go/lib/epstatusfile` and
//! `libcalico-go/lib/names/workloadendpointstatus.go` of release-v3.32): the policy agent
//! writes one file per local workload endpoint under `<EndpointStatusPathPrefix>/endpoint-status/`
//! once the endpoint's rules are in the kernel, and removes it when the endpoint goes; the
//! `calico` CNI plugin, with `policy_setup_timeout_seconds` > 0, waits for the file before
//! letting the pod start (`cni-plugin/pkg/wait/wait.go`).
//!
//! - The name ([`EndpointKey::file_name`]) is the endpoint key's orchestrator, workload and
//!   endpoint IDs, each escaped as Go's `url.PathEscape` does and joined by a space (which
//!   the escaping never leaves bare), e.g. `k8s default%2Fnginx eth0`.
//! - The content ([`EndpointStatus`]) is Calico's JSON: `ifaceName`, `mac`, `ipv4Nets`,
//!   `ipv6Nets`, `bgpPeerName`, each left out when empty. Calico's readers only check that the
//!   file exists (the plugin) or read these fields (confd's local BGP peers).
//! - [`write`] is atomic (a hidden temporary file in the same directory, renamed over the
//!   name): a reader never sees half a file. Calico writes in place; its readers cope with
//!   either, and a rename is seen by inotify as `IN_MOVED_TO`, which Go's fsnotify reports as
//!   a Create, so Calico's own plugin sees our files too. [`remove`] is idempotent.
//! - [`wait_for`] watches the directory with inotify (rustix's safe wrapper, already in the
//!   tree; the workspace forbids `unsafe`) and checks for the file after the watch is set, so
//!   a file made at any moment is seen at once rather than at the next tick of a poll. When
//!   the directory does not exist yet (the agent makes it) or inotify is unavailable, it
//!   falls back to checking every [`POLL_INTERVAL`] (Calico retries every 500 ms). It is
//!   bounded by its timeout; with a zero timeout it checks once and returns, and the plugin
//!   does not call it at all then.
//!
//! A leaf crate for the agent and the plugin: it imports only `calico-fsbound` of the
//! workspace, and must not import the datastore, the dataplane or `cni-protocol`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Felix's default `EndpointStatusPathPrefix`.
pub const DEFAULT_PATH_PREFIX: &str = "/var/run/calico";
/// The directory under the prefix (`epstatusfile.GetDirStatus()`).
pub const DIR_NAME: &str = "endpoint-status";
/// The plugin's default `endpoint_status_dir` (`cni-plugin/pkg/k8s/k8s.go`).
pub const DEFAULT_DIR: &str = "/var/run/calico/endpoint-status";
/// How often [`wait_for`] looks when it cannot watch the directory.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Temporary files of [`write`] start with this, so [`list`] (and anyone skipping dot files)
/// never takes one for a status file; an escaped ID never starts with a dot in practice.
const TEMP_PREFIX: &str = ".epstatus-";
/// Far above any real status file.
const READ_LIMIT: u64 = 1 << 20;

/// What Go's `url.PathEscape` escapes: everything but letters, digits and
/// `-_.~$&+:=@` (the unreserved characters and the reserved ones allowed in a path segment).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b':')
    .remove(b'=')
    .remove(b'@');

/// `<prefix>/endpoint-status`.
pub fn status_dir(prefix: &Path) -> PathBuf {
    prefix.join(DIR_NAME)
}

/// A workload endpoint's key (`model.WorkloadEndpointKey` without the host): for a
/// Kubernetes pod `k8s`, `<namespace>/<pod>`, the interface (`eth0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub orchestrator: String,
    /// `<namespace>/<workload>`: the pod for `k8s`, the container ID for `cni`.
    pub workload: String,
    pub endpoint: String,
}

impl EndpointKey {
    pub fn new(orchestrator: &str, workload: &str, endpoint: &str) -> Self {
        EndpointKey {
            orchestrator: orchestrator.to_string(),
            workload: workload.to_string(),
            endpoint: endpoint.to_string(),
        }
    }

    /// `names.WorkloadEndpointKeyToStatusFilename`.
    pub fn file_name(&self) -> String {
        file_name(&self.orchestrator, &self.workload, &self.endpoint)
    }

    /// The key a status file's name stands for; `None` for a name Calico would not have
    /// made (not three space-separated fields, or a bad `%` escape).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let mut parts = name.split(' ');
        let (o, w, e) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(EndpointKey {
            orchestrator: path_unescape(o)?,
            workload: path_unescape(w)?,
            endpoint: path_unescape(e)?,
        })
    }
}

/// `names.WorkloadEndpointKeyToStatusFilename`: the three IDs path-escaped, space-separated.
pub fn file_name(orchestrator: &str, workload: &str, endpoint: &str) -> String {
    format!(
        "{} {} {}",
        utf8_percent_encode(orchestrator, PATH_SEGMENT),
        utf8_percent_encode(workload, PATH_SEGMENT),
        utf8_percent_encode(endpoint, PATH_SEGMENT)
    )
}

/// Go's `url.PathUnescape`: `%XX` decoded, a malformed escape or non-UTF-8 result refused.
fn path_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `epstatusfile.WorkloadEndpointStatus`, in Calico's field order, empty fields left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The host-side interface (`cali...`).
    #[serde(
        rename = "ifaceName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub iface_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(rename = "ipv4Nets", default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4_nets: Vec<String>,
    #[serde(rename = "ipv6Nets", default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_nets: Vec<String>,
    /// Non-empty when the workload is selected for local BGP peering.
    #[serde(
        rename = "bgpPeerName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub bgp_peer_name: String,
}

/// Why a status file could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum EpStatusError {
    #[error("endpoint status file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("endpoint status file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: calico_fsbound::FileError,
    },
    #[error("endpoint status file {path}: not Calico's JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> EpStatusError + '_ {
    move |source| EpStatusError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and its parents) if missing, mode 0755 as Felix's `EnsureStatusDir`.
pub fn ensure_dir(dir: &Path) -> Result<(), EpStatusError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_error(dir))
}

/// Writes `key`'s status file in `dir` (which must exist, see [`ensure_dir`]): Calico's JSON,
/// mode 0644, through a temporary file in `dir` renamed over the name, so the file appears
/// whole or not at all.
pub fn write(dir: &Path, key: &EndpointKey, status: &EndpointStatus) -> Result<(), EpStatusError> {
    let path = dir.join(key.file_name());
    let json = serde_json::to_vec(status).map_err(|source| EpStatusError::Json {
        path: path.clone(),
        source,
    })?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    tmp.write_all(&json).map_err(io_error(&path))?;
    tmp.persist(&path).map_err(|e| EpStatusError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(())
}

/// Removes `key`'s status file; `Ok(false)` if there was none.
pub fn remove(dir: &Path, key: &EndpointKey) -> Result<bool, EpStatusError> {
    let path = dir.join(key.file_name());
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// `key`'s status, `None` if there is no file.
pub fn read(dir: &Path, key: &EndpointKey) -> Result<Option<EndpointStatus>, EpStatusError> {
    read_path(&dir.join(key.file_name()))
}

fn read_path(path: &Path) -> Result<Option<EndpointStatus>, EpStatusError> {
    let bytes = match calico_fsbound::read_config_file(path, READ_LIMIT, DIR_NAME) {
        Ok(b) => b,
        Err(e) if e.is_missing() => return Ok(None),
        Err(source) => {
            return Err(EpStatusError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| EpStatusError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// One file found by [`list`].
#[derive(Debug)]
pub struct Listed {
    pub file_name: String,
    /// The key the name stands for, `None` if it is no name Calico makes.
    pub key: Option<EndpointKey>,
    /// The content, or why it could not be read (Felix keeps such files as empty statuses).
    pub status: Result<EndpointStatus, EpStatusError>,
}

/// Every status file in `dir` (what Felix's `EnsureStatusDir` reads at start, so that it can
/// remove the files of endpoints that are gone): regular files only, this crate's
/// temporary files skipped. A missing `dir` lists as empty.
pub fn list(dir: &Path) -> Result<Vec<Listed>, EpStatusError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_file || name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let status = read_path(&entry.path()).and_then(|s| {
            s.ok_or_else(|| io_error(&entry.path())(io::Error::from(io::ErrorKind::NotFound)))
        });
        out.push(Listed {
            key: EndpointKey::from_file_name(&name),
            file_name: name,
            status,
        });
    }
    out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(out)
}

/// [`wait_for`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("timed out waiting for endpoint status file '{}': file not found", .path.display())]
pub struct WaitTimedOut {
    pub path: PathBuf,
    pub waited: Duration,
}

/// Waits until `key`'s status file exists in `dir`, at most `timeout` (then
/// [`WaitTimedOut`], whose message is Calico's). Mirrors `wait.ForEndpointReadyWithTimeout`:
/// any file of that name counts, whatever its content.
pub fn wait_for(dir: &Path, key: &EndpointKey, timeout: Duration) -> Result<(), WaitTimedOut> {
    let started = Instant::now();
    let deadline = started + timeout;
    let name = key.file_name();
    let path = dir.join(&name);
    loop {
        // Watch first, then look: a file made in between is seen by the look, one made
        // after by the watch.
        let watch = DirWatch::new(dir);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimedOut {
                path,
                waited: started.elapsed(),
            });
        }
        let outcome = match &watch {
            Some(w) => w.wait_for_name(name.as_bytes(), deadline),
            None => WatchOutcome::Unwatched,
        };
        match outcome {
            WatchOutcome::Named | WatchOutcome::Deadline => {}
            // Gone, overflowed or failing: look again after a pause, so that a broken
            // watch degrades into a poll rather than a busy loop.
            WatchOutcome::Ended | WatchOutcome::Unwatched => {
                std::thread::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(now)));
            }
        }
    }
}

enum WatchOutcome {
    /// An entry of the wanted name appeared (look again: it may have gone already).
    Named,
    Deadline,
    /// The watch cannot go on (directory removed or moved, events lost, an error).
    Ended,
    /// There was no watch.
    Unwatched,
}

/// An inotify watch on a directory for entries created or renamed into it.
struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    fn new(dir: &Path) -> Option<Self> {
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
        let flags = inotify::WatchFlags::CREATE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR;
        inotify::add_watch(&fd, dir, flags).ok()?;
        Some(DirWatch { fd })
    }

    fn wait_for_name(&self, name: &[u8], deadline: Instant) -> WatchOutcome {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WatchOutcome::Deadline;
            }
            let ts = Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => return WatchOutcome::Deadline,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return WatchOutcome::Ended,
            }
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let flags = ev.events();
                        if flags.intersects(
                            inotify::ReadFlags::IGNORED
                                | inotify::ReadFlags::DELETE_SELF
                                | inotify::ReadFlags::MOVE_SELF
                                | inotify::ReadFlags::QUEUE_OVERFLOW,
                        ) {
                            return WatchOutcome::Ended;
                        }
                        if ev.file_name().is_some_and(|n| n.to_bytes() == name) {
                            return WatchOutcome::Named;
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return WatchOutcome::Ended,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
