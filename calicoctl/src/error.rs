//! How a command fails: one message, and where calicoctl prints it.

use calico_datastore::{EtcdError, StoreError};
use calico_ipam::IpamError;

/// A failed command. The binary prints the message and exits with status 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdError {
    /// Printed on stderr (almost every error).
    #[error("{0}")]
    Failed(String),
    /// Printed on stdout, where calicoctl prints it (`Error reading config file: ...`,
    /// `Error executing command: invalid IP address specified: ...`).
    #[error("{0}")]
    Stdout(String),
}

impl CmdError {
    pub fn failed(msg: impl Into<String>) -> Self {
        CmdError::Failed(msg.into())
    }
}

impl From<EtcdError> for CmdError {
    fn from(e: EtcdError) -> Self {
        CmdError::Failed(e.to_string())
    }
}

impl From<StoreError> for CmdError {
    fn from(e: StoreError) -> Self {
        CmdError::Failed(e.to_string())
    }
}

impl From<IpamError> for CmdError {
    fn from(e: IpamError) -> Self {
        CmdError::Failed(e.to_string())
    }
}

impl From<std::io::Error> for CmdError {
    fn from(e: std::io::Error) -> Self {
        CmdError::Failed(format!("cannot write the output: {e}"))
    }
}

pub type CmdResult<T = ()> = Result<T, CmdError>;
