//! What the kernel side can fail with.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("network namespace {0} does not exist")]
    NetnsMissing(PathBuf),
    /// A namespace given as a pod's that is none, or is the caller's own (see
    /// [`crate::netns::check_pod`]): the caller's environment is wrong (CNI code 4).
    #[error("CNI_NETNS {path} {reason}")]
    NotPodNetns { path: PathBuf, reason: &'static str },
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op} failed: {reason}")]
    Netlink { op: String, reason: String },
    #[error("cannot write sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interface {ifname} already exists in the pod's namespace, or {host_ifname} on the host"
    )]
    Exists { ifname: String, host_ifname: String },
    #[error(
        "route to {dst} already exists for an interface other than '{wanted}': it goes through \
         '{existing}'"
    )]
    RouteConflict {
        dst: String,
        wanted: String,
        existing: String,
    },
}

impl DataplaneError {
    pub fn netlink(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        DataplaneError::Netlink {
            op: op.into(),
            reason: e.to_string(),
        }
    }
}
