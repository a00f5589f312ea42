//! Network namespaces by path (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
//!
//! `setns` is per thread, and sockets and `/proc/sys/net` files belong to the namespace of
//! the thread that opened them. So code enters a namespace only for the synchronous moment
//! it needs (opening a netlink socket, writing a sysctl), on a thread of its own
//! ([`within`]): the calling thread stays where it is whatever happens.
//!
//! A pod's namespace comes from the caller (`CNI_NETNS`, or a descriptor a plugin passes to
//! the node agent), so it is opened with [`open_pod`] (or [`open_pod_to_enter`] when it is
//! entered at once), which refuses what is not a network namespace and the caller's own: wiring a "pod" into the node's own namespace would turn off its
//! forwarding, and a DEL there would delete the node's interface of that name. [`within`]
//! reports a namespace of another type the same way.

use crate::error::DataplaneError;
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What makes a namespace itself, whatever path it is mounted at: the device and inode of
/// its nsfs file. A path can come to name another namespace; this cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

impl std::str::FromStr for Identity {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (dev, ino) = s.split_once(':').unwrap_or((s, ""));
        Ok(Identity {
            dev: dev.parse()?,
            ino: ino.parse()?,
        })
    }
}

/// The identity of an open namespace file.
pub fn identity(ns: &File, path: &Path) -> Result<Identity, DataplaneError> {
    let m = ns.metadata().map_err(|e| DataplaneError::Netns {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(Identity {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Opens a namespace file; a missing one is [`DataplaneError::NetnsMissing`]. A namespace
/// file (nsfs, followed through `/proc/<pid>/ns/net` or a bind mount) is a regular file: a
/// FIFO, device, socket or directory is refused before it is opened, so that opening never
/// blocks (a FIFO without a writer) nor has a device's side effects; the checks after the
/// open ([`check_not_own`]) see the file itself.
pub fn open(path: &Path) -> Result<File, DataplaneError> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.file_type().is_file()
    {
        return Err(DataplaneError::NotPodNetns {
            path: path.to_path_buf(),
            reason: NOT_A_NETNS,
        });
    }
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

/// Opens a pod's network namespace ([`open`]) and refuses it unless [`check_pod`] passes.
pub fn open_pod(path: &Path) -> Result<File, DataplaneError> {
    let ns = open(path)?;
    check_pod(&ns, path)?;
    Ok(ns)
}

/// As [`open_pod`], without asking the kernel for the namespace's type: for a caller whose
/// first use of it is [`within`], which refuses any other type the same way (one thread and
/// one `setns` less per call).
pub fn open_pod_to_enter(path: &Path) -> Result<File, DataplaneError> {
    let ns = open(path)?;
    check_not_own(&ns, path)?;
    Ok(ns)
}

/// Why a namespace given as a pod's is not one ([`DataplaneError::NotPodNetns`]).
pub const NOT_A_NETNS: &str = "is not a network namespace";
/// See [`NOT_A_NETNS`].
pub const HOST_NETNS: &str = "is the caller's own network namespace, not a pod's";

/// Checks that `ns` (opened from `path`) is a network namespace other than the caller's:
/// [`check_not_own`], and of the network type (not a mount or
/// PID namespace).
pub fn check_pod(ns: &File, path: &Path) -> Result<(), DataplaneError> {
    check_not_own(ns, path)?;
    // The namespace's type, as the kernel names a descriptor opened through `/proc/<pid>/ns`
    // (`net:[<inode>]`; a mount namespace is `mnt:[…]`). The NS_GET_NSTYPE ioctl would say
    // the same, but only through `unsafe`, which the workspace forbids.
    match fd_link_type(ns) {
        Some(true) => Ok(()),
        Some(false) => Err(DataplaneError::NotPodNetns {
            path: path.to_path_buf(),
            reason: NOT_A_NETNS,
        }),
        // A descriptor opened through a bind mount (how runtimes pin a pod's namespace)
        // links to that path instead, and without /proc there is no link: `setns` with
        // CLONE_NEWNET refuses any other type ([`within`] reports that as not a network
        // namespace), on a thread that ends at once so the caller never changes namespace
        // (a thread and a `setns` more: ~0.3 ms; see `LinuxDataplane::create_then` for
        // why ADD still asks).
        None => within(ns, path, || ()),
    }
}

/// Whether an open nsfs file is a network namespace, from its descriptor's link text in
/// `/proc/self/fd`; `None` when that cannot be read or names a path (a bind mount's).
fn fd_link_type(ns: &File) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", ns.as_raw_fd())).ok()?;
    let text = link.to_str()?;
    // Any nsfs descriptor reads `<type>:[<inode>]`.
    let kind = text.strip_suffix(']')?.split_once(":[")?.0;
    Some(kind == "net")
}

/// The cheap part of [`check_pod`]: a file of nsfs (not a regular file, a directory, a
/// device), and not the namespace of `/proc/self/ns/net` or `/proc/thread-self/ns/net` (a
/// thread may be elsewhere than the process). PID 1's is not compared: reading it is
/// refused in some environments (this one), and every `/proc/<pid>/ns` lookup costs the
/// concurrent calls of a busy node (see below).
pub fn check_not_own(ns: &File, path: &Path) -> Result<(), DataplaneError> {
    let refuse = |reason: &'static str| DataplaneError::NotPodNetns {
        path: path.to_path_buf(),
        reason,
    };
    let fs = nix::sys::statfs::fstatfs(ns).map_err(|e| DataplaneError::Netns {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(refuse(NOT_A_NETNS));
    }
    let id = identity(ns, path)?;
    // The link's text (`net:[<inode>]`) rather than a stat of it: a stat makes the kernel
    // build (and free) a dentry for the namespace, which a hundred concurrent calls were
    // seen to contend on (portmap's scale test of a hundred pods then timed out on etcd);
    // the text is only formatted. nsfs is one filesystem, so the inode names the namespace.
    for own in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        let Ok(link) = std::fs::read_link(own) else {
            continue;
        };
        let ino = link
            .to_str()
            .and_then(|l| l.strip_prefix("net:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok());
        if ino == Some(id.ino) {
            return Err(refuse(HOST_NETNS));
        }
    }
    Ok(())
}

/// Runs `f` in namespace `ns`, on a thread of its own that enters the namespace and ends
/// with `f`: the caller's thread never changes namespace, so nothing (an error, a panic in
/// `f`) can leave it in the pod's. A panic in `f` reaches the caller as a panic.
pub fn within<T: Send>(
    ns: &File,
    path: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, DataplaneError> {
    let err = |e: std::io::Error| DataplaneError::Netns {
        path: path.to_path_buf(),
        source: e,
    };
    let joined = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .spawn_scoped(scope, move || -> Result<T, DataplaneError> {
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                    // The kernel's word that the file is a namespace of another type (or
                    // no namespace at all).
                    nix::errno::Errno::EINVAL => DataplaneError::NotPodNetns {
                        path: path.to_path_buf(),
                        reason: NOT_A_NETNS,
                    },
                    e => err(e.into()),
                })?;
                Ok(f())
            })
            .map_err(err)?;
        Ok::<_, DataplaneError>(thread.join())
    })?;
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Directories where runtimes pin namespaces with a bind mount (`ip netns`, CNI runtimes,
/// Docker, rootless Podman under each user's runtime directory).
const PINNED: &[&str] = &["/run/netns", "/var/run/netns", "/run/docker/netns"];

/// Where every network namespace this host can see is found: those of its processes
/// (`/proc/<pid>/ns/net`, one path per namespace) and those pinned in the usual directories.
/// Two paths may still name one namespace (compare [`identity`]).
pub fn visible_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = PINNED.iter().map(PathBuf::from).collect();
    if let Ok(users) = std::fs::read_dir("/run/user") {
        dirs.extend(users.flatten().map(|u| u.path().join("netns")));
    }
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(&d) {
            paths.extend(entries.flatten().map(|e| e.path()));
        }
    }
    // Processes: the link text (`net:[inode]`) tells duplicates apart without opening them.
    let mut seen_links = std::collections::BTreeSet::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let is_pid = p
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if !is_pid {
                continue;
            }
            let path = p.path().join("ns/net");
            if let Ok(link) = std::fs::read_link(&path)
                && seen_links.insert(link)
            {
                paths.push(path);
            }
        }
    }
    paths
}

/// Opens a namespace found by [`visible_paths`]; `Ok(None)` if it went away meanwhile (the
/// process exited, the pin was removed). Any other failure is an error: a caller deciding
/// what is in use must not take an unreadable namespace for an empty one.
pub fn open_visible(path: &Path) -> Result<Option<File>, DataplaneError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) => Ok(None),
        Err(e) => Err(DataplaneError::Netns {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
