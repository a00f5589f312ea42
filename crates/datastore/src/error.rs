//! What can go wrong, at two levels. A leaf: it imports nothing of this crate.
//!
//! - [`StoreError`]: the error of the abstract [`KvStore`](crate::KvStore), what the logic
//!   above acts on (retry later, or fail);
//! - [`EtcdError`]: the etcd client's own, finer (TLS, configuration); it converts into
//!   [`StoreError`] with the same message.

/// What the logic sees of a failed store call. Callers map [`StoreError::Unreachable`] to
/// "try again later" and the rest to plain errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (not reachable, or not within the time allowed): transient.
    #[error("{store} is unreachable: {reason}")]
    Unreachable { store: String, reason: String },
    /// The store answered with a failure, or cannot be used as configured.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }

    /// A failure described by `message` alone (stand-in stores).
    pub fn failed(message: impl Into<String>) -> Self {
        StoreError::Failed(message.into().into())
    }
}

/// What can go wrong talking to etcd. Callers map [`EtcdError::Unreachable`] to "try again
/// later" and the rest to plain errors.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints} is unreachable: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoints} rejected the TLS connection: {reason}")]
    Tls { endpoints: String, reason: String },
    #[error("invalid etcd configuration: {0}")]
    Config(String),
    #[error("etcd request failed: {0}")]
    Request(String),
}

impl EtcdError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. })
    }
}

impl From<EtcdError> for StoreError {
    /// Unreachable stays unreachable, with the same message; the rest is a failure.
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unreachable { endpoints, reason } => StoreError::Unreachable {
                store: format!("etcd at {endpoints}"),
                reason,
            },
            other => StoreError::Failed(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_keep_their_message_as_store_errors() {
        let unreachable = EtcdError::Unreachable {
            endpoints: "http://127.0.0.1:2379".into(),
            reason: "connection refused".into(),
        };
        let text = unreachable.to_string();
        let store = StoreError::from(unreachable);
        assert!(store.is_unreachable());
        assert_eq!(store.to_string(), text);
        let tls = EtcdError::Tls {
            endpoints: "https://e:2379".into(),
            reason: "bad certificate".into(),
        };
        let text = tls.to_string();
        let store = StoreError::from(tls);
        assert!(!store.is_unreachable());
        assert_eq!(store.to_string(), text);
    }
}
