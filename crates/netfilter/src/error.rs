use thiserror::Error;

#[derive(Debug, Error)]
pub enum NfError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel { op: String, errno: i32 },
    #[error("{tool}: {msg}")]
    Tool { tool: String, msg: String },
}

impl NfError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NfError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}
