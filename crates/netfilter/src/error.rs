//! What netfilter work can fail with.

use calico_netlink::NetlinkError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NfError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// An nfnetlink exchange failed (the kernel's refusal keeps its errno).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{tool}: {msg}")]
    Tool { tool: String, msg: String },
    /// Input refused before it reached the kernel or a tool (a line that would inject
    /// another into an `iptables-restore` document).
    #[error("{0}")]
    Input(String),
}

impl NfError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NfError::Netlink(e) => e.errno(),
            _ => None,
        }
    }

    /// Whether the kernel refused with one of `errnos`.
    pub fn is(&self, errnos: &[nix::errno::Errno]) -> bool {
        matches!(self, NfError::Netlink(e) if e.is(errnos))
    }
}
