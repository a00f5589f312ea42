//! What a netlink exchange can fail with.

/// A failed exchange, named by what it was for (`op`).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket itself failed (open, send, receive, timeout).
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused, with this errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel { op: String, errno: i32 },
    /// The kernel's answer could not be read as the expected message.
    #[error("{op}: cannot decode the kernel's answer: {reason}")]
    Decode { op: String, reason: String },
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the kernel refused with one of `errnos`.
    pub fn is(&self, errnos: &[nix::errno::Errno]) -> bool {
        self.errno()
            .is_some_and(|e| errnos.iter().any(|x| *x as i32 == e))
    }
}
