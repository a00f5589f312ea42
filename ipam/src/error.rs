//! What can go wrong in IPAM, and the CNI code each failure maps to.

use calico_datastore::{EtcdError, StoreError};
use cni_protocol::{CniError, ErrorCode};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the Calico Node resource for node {node} does not exist \
         (/calico/resources/v3/projectcalico.org/nodes/{node}): calico-node must register the \
         node before its pods can be given addresses"
    )]
    NodeNotFound { node: String },
    #[error("no configured Calico {family} pools for node {node}")]
    NoPools { family: &'static str, node: String },
    #[error("the given pool ({pool}) {reason}")]
    PoolNotUsable { pool: String, reason: String },
    /// The configured `ipam_lock_file` cannot be the lock (a directory, not a regular file,
    /// cannot be created).
    #[error("ipam_lock_file {path} {reason}")]
    LockFile { path: String, reason: String },
    /// A requested pool is stored but malformed (its selector or CIDR does not parse).
    #[error("the given pool ({pool}) cannot be used: {reason}")]
    PoolInvalid { pool: String, reason: String },
    #[error("no {family} addresses available in pools {pools:?}")]
    Exhausted {
        family: &'static str,
        pools: Vec<String>,
    },
    #[error(
        "cannot allocate a new {family} block due to the per-host block limit ({limit}) and no \
         address is free in the node's blocks"
    )]
    BlockLimit { family: &'static str, limit: usize },
    #[error(
        "failed to find or claim a block: auto_allocate_blocks is off and no {family} address \
         is free in the node's blocks"
    )]
    NoBlockToClaim { family: &'static str },
    #[error(
        "live migration target pod is not allowed when KubeVirtVMAddressPersistence is disabled"
    )]
    MigrationTargetRejected,
    #[error("migration target pod but no IP allocated to VM handle {handle}")]
    NoVmAddress { handle: String },
    #[error("address {ip} is already assigned in block {block}")]
    AlreadyAssigned { ip: IpAddr, block: String },
    #[error("address {ip} is not in any enabled IP pool")]
    NotInPool { ip: IpAddr },
    #[error("address {ip} is reserved by an IPReservation")]
    Reserved { ip: IpAddr },
    #[error("address {ip} is in block {block}, which is affine to another node (strict affinity)")]
    ForeignBlock { ip: IpAddr, block: String },
    #[error("address {ip} is not assigned")]
    NotAssigned { ip: IpAddr },
    #[error("max retries hit - excessive concurrent IPAM requests on {key}")]
    TooManyRetries { key: String },
    #[error("IPAM did not finish within {0:?}")]
    Timeout(std::time::Duration),
    #[error("timed out after {waited:?} waiting for the IPAM lock {path}")]
    LockTimeout {
        path: String,
        waited: std::time::Duration,
    },
    #[error("cannot decode {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Other(String),
    /// A caller's own check failed inside an IPAM transaction (its error passes through).
    #[error("{0}")]
    Caller(CniError),
}

impl From<EtcdError> for IpamError {
    fn from(e: EtcdError) -> Self {
        IpamError::Store(e.into())
    }
}

impl IpamError {
    /// Transient failures a runtime should retry.
    pub fn is_transient(&self) -> bool {
        match self {
            IpamError::Store(e) => e.is_unreachable(),
            // calico-node registers the node soon after it starts.
            IpamError::NodeNotFound { .. }
            | IpamError::TooManyRetries { .. }
            | IpamError::Timeout(_)
            | IpamError::LockTimeout { .. } => true,
            _ => false,
        }
    }

    pub fn corrupt(key: &str, e: impl std::fmt::Display) -> Self {
        IpamError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        if let IpamError::Caller(inner) = e {
            return inner;
        }
        let code = if e.is_transient() {
            ErrorCode::TRY_AGAIN_LATER
        } else {
            match &e {
                IpamError::Store(_) | IpamError::Corrupt { .. } => ErrorCode::DATASTORE,
                IpamError::Other(_) => ErrorCode::INTERNAL,
                IpamError::PoolInvalid { .. } | IpamError::LockFile { .. } => {
                    ErrorCode::INVALID_NETWORK_CONFIG
                }
                _ => ErrorCode::ADDRESS_UNAVAILABLE,
            }
        };
        CniError::new(code, e.to_string())
    }
}
