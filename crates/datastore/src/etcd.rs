//! A blocking etcd v3 client for short-lived plugin processes: one connection per
//! invocation, reused for every request, with compare-and-swap writes.

use crate::keeper::{Claim, Keeper};
use crate::store::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use crate::transport::{Target, dial, wrap};
use calico_netconf::EtcdSettings;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How to reach etcd and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// `etcd_discovery_srv`: find the endpoints in this domain's DNS SRV records
    /// ([`crate::discovery`]); exclusive with `endpoints`.
    pub discovery_srv: Option<String>,
    pub ca_cert_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Bound on establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Bound on any single request, connection included.
    pub request_timeout: Duration,
    /// Take the connection from (and start if need be) the node's keeper of warm TLS
    /// connections ([`crate::keeper`]); for short-lived plugin calls.
    pub keeper: bool,
}

impl EtcdConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            discovery_srv: None,
            ca_cert_file: None,
            cert_file: None,
            key_file: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            keeper: false,
        }
    }

    pub fn from_settings(s: &EtcdSettings) -> Self {
        EtcdConfig {
            ca_cert_file: s.ca_cert_file.clone(),
            cert_file: s.cert_file.clone(),
            key_file: s.key_file.clone(),
            keeper: s.keeper,
            discovery_srv: s.discovery_srv.clone(),
            ..EtcdConfig::new(s.endpoints.clone())
        }
    }

    fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
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

/// The connection. Requests run on a single-threaded runtime owned by this value, so
/// callers stay synchronous (and on their thread, which matters for network namespaces).
pub struct Etcd {
    runtime: tokio::runtime::Runtime,
    kv: KvClient,
    config: EtcdConfig,
    endpoints: String,
    /// Set after the first answered request: from then on a closed connection means etcd
    /// went away, not that it rejected our TLS identity.
    answered: std::cell::Cell<bool>,
    /// How connections are made, and how the last one was.
    dialing: Arc<Dialing>,
}

/// What the connector (called by the first request, and on reconnects) works from.
struct Dialing {
    targets: Vec<Target>,
    config: EtcdConfig,
    keeper: Option<Keeper>,
    /// The TLS settings (None for plain endpoints), or why they could not be read.
    tls: std::sync::OnceLock<Result<Option<Arc<rustls::ClientConfig>>, EtcdError>>,
    /// Only the first connection may come from the keeper: a reconnect after a failure
    /// goes straight to etcd.
    first: AtomicBool,
    via_keeper: AtomicBool,
}

impl Dialing {
    fn tls_for(
        targets: &[Target],
        config: &EtcdConfig,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, EtcdError> {
        if targets.iter().any(|t| t.tls) {
            crate::transport::tls_config(config).map(Some)
        } else {
            Ok(None)
        }
    }

    async fn connect(&self) -> Result<crate::transport::Io, std::io::Error> {
        let asked = std::time::Instant::now();
        let first = self.first.swap(false, Ordering::Relaxed);
        if let Some(keeper) = self.keeper.as_ref().filter(|_| first) {
            match keeper.claim().await {
                Claim::Served(stream) => {
                    log::debug!("etcd connection from the keeper in {:?}", asked.elapsed());
                    self.via_keeper.store(true, Ordering::Relaxed);
                    return Ok(wrap(crate::transport::Stream::Keeper(stream)));
                }
                Claim::Absent => {
                    if let Err(e) = keeper.start() {
                        log::debug!("could not start the etcd keeper: {e}");
                    }
                }
                Claim::Declined => {}
            }
        }
        self.via_keeper.store(false, Ordering::Relaxed);
        let tls = match self
            .tls
            .get_or_init(|| Self::tls_for(&self.targets, &self.config))
        {
            Ok(tls) => tls.clone(),
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let stream = dial(&self.targets, tls.as_ref(), self.config.connect_timeout).await;
        log::debug!("etcd connection made in {:?}", asked.elapsed());
        stream.map(wrap)
    }

    /// The TLS settings' error, if reading them failed.
    fn config_error(&self) -> Option<EtcdError> {
        match self.tls.get() {
            Some(Err(EtcdError::Config(e))) => Some(EtcdError::Config(e.clone())),
            _ => None,
        }
    }
}

impl Etcd {
    /// Prepares the connection; it is established by the first request, to the first
    /// endpoint that accepts (see [`crate::transport`]).
    pub fn connect(config: &EtcdConfig) -> Result<Self, EtcdError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EtcdError::Config(format!("cannot start the I/O runtime: {e}")))?;
        let discovered;
        let config = match &config.discovery_srv {
            // As libcalico-go's NewEtcdV3Client: one way or the other, never both.
            Some(_) if !config.endpoints.is_empty() => {
                return Err(EtcdError::Config(
                    "multiple discovery or bootstrap options specified, use either \
                     etcd_endpoints or etcd_discovery_srv"
                        .into(),
                ));
            }
            Some(domain) => {
                discovered = EtcdConfig {
                    endpoints: crate::discovery::discover(&runtime, domain)?,
                    discovery_srv: None,
                    ..config.clone()
                };
                &discovered
            }
            None => config,
        };
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoints configured".into()));
        }
        let endpoints = config.endpoints.join(",");
        let targets = config
            .endpoints
            .iter()
            .map(|e| Target::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let keeper = if config.keeper {
            Keeper::for_config(config)
        } else {
            None
        };
        // Without a keeper the TLS settings are needed at once, so a bad file is reported
        // here; with one they are read only if the keeper cannot serve (it could, with
        // the same files).
        let tls = std::sync::OnceLock::new();
        if keeper.is_none() {
            let _ = tls.set(Ok(Dialing::tls_for(&targets, config)?));
        }
        let uri = format!("http://{}", targets[0].authority);
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| EtcdError::Config(format!("invalid etcd endpoint: {e}")))?;
        let dialing = Arc::new(Dialing {
            targets,
            config: config.clone(),
            keeper,
            tls,
            first: AtomicBool::new(true),
            via_keeper: AtomicBool::new(false),
        });
        let shared = dialing.clone();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let dialing = shared.clone();
            async move { dialing.connect().await }
        });
        let client = runtime
            .block_on(async {
                let channel = endpoint.connect_with_connector_lazy(connector);
                Client::from_channel(etcd_client::Channel::Tonic(channel), None).await
            })
            .map_err(|e| classify(&endpoints, e, false))?;
        Ok(Etcd {
            runtime,
            kv: client.kv_client(),
            config: config.clone(),
            endpoints,
            answered: std::cell::Cell::new(false),
            dialing,
        })
    }

    /// Whether the connection (made by the first request) came from the node's keeper.
    pub fn via_keeper(&self) -> bool {
        self.dialing.via_keeper.load(Ordering::Relaxed)
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request, bounded by the request timeout whatever the transport does.
    fn run<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        let limit = self.config.request_timeout;
        let out = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, f).await })
            .map_err(|_| EtcdError::Unreachable {
                endpoints: self.endpoints.clone(),
                reason: format!("no answer within {limit:?}"),
            })?;
        // A keeper's connection that closes was closed by etcd going away, not by a rejected
        // certificate: the keeper's own handshake went through.
        let rejected_tls = self.config.uses_tls() && !self.answered.get() && !self.via_keeper();
        let out = out.map_err(|e| {
            self.dialing
                .config_error()
                .unwrap_or_else(|| classify(&self.endpoints, e, rejected_tls))
        })?;
        self.answered.set(true);
        Ok(out)
    }

    /// Unconditional put, for tools and tests.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        self.run(kv.put(key, value, None)).map(|_| ())
    }

    /// Unconditional delete of every key under `prefix`; returns how many went.
    pub fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let mut kv = self.kv.clone();
        let resp = self.run(kv.delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ))?;
        Ok(resp.deleted())
    }

    /// Creates `key`; false if it already exists.
    pub fn create(&self, key: &str, value: Vec<u8>) -> Result<bool, EtcdError> {
        Ok(self
            .txn(
                &[Guard::Absent(key.into())],
                &[Write::Put(key.into(), value)],
            )?
            .applied())
    }

    /// Replaces `key` if unchanged since `revision`; false on conflict.
    pub fn update(&self, key: &str, value: Vec<u8>, revision: i64) -> Result<bool, EtcdError> {
        Ok(self
            .txn(
                &[Guard::Revision(key.into(), revision)],
                &[Write::Put(key.into(), value)],
            )?
            .applied())
    }

    /// Deletes `key` if unchanged since `revision`; false on conflict or if already gone.
    pub fn delete(&self, key: &str, revision: i64) -> Result<bool, EtcdError> {
        Ok(self
            .txn(
                &[Guard::Revision(key.into(), revision)],
                &[Write::Delete(key.into())],
            )?
            .applied())
    }
}

fn get_op(r: &Read) -> TxnOp {
    match r {
        Read::Key(k) => TxnOp::get(k.as_str(), None),
        Read::Prefix(p) => TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix())),
        Read::PrefixKeys(p) => TxnOp::get(
            p.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    }
}

fn gets(responses: Vec<TxnOpResponse>) -> Vec<Vec<Kv>> {
    responses
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().iter().map(to_kv).collect(),
            _ => Vec::new(),
        })
        .collect()
}

impl KvStore for Etcd {
    /// One etcd transaction of range requests: a consistent snapshot in one round trip.
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, EtcdError> {
        let mut kv = self.kv.clone();
        let ops: Vec<TxnOp> = reads.iter().map(get_op).collect();
        let resp = self.run(kv.txn(Txn::new().and_then(ops)))?;
        Ok(gets(resp.op_responses()))
    }

    /// On conflict the same round trip returns the guarded keys' current state.
    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, EtcdError> {
        let compares: Vec<Compare> = guards
            .iter()
            .map(|g| match g {
                Guard::Absent(k) => Compare::version(k.as_str(), CompareOp::Equal, 0),
                Guard::Revision(k, rev) => {
                    Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
                Write::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let current: Vec<TxnOp> = guards
            .iter()
            .map(|g| get_op(&Read::Key(g.key().to_string())))
            .collect();
        let mut kv = self.kv.clone();
        let resp = self.run(kv.txn(Txn::new().when(compares).and_then(ops).or_else(current)))?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(TxnOutcome::Applied(revision));
        }
        Ok(TxnOutcome::Conflict(
            gets(resp.op_responses())
                .into_iter()
                .map(|mut v| v.pop())
                .collect(),
        ))
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints)
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// Sorts etcd-client's errors into what a caller acts on: unreachable (retry later),
/// TLS (fix the certificates), or a plain failure. `first_tls_request` says the connection
/// is TLS and has never been answered: with TLS 1.3 a server that rejects our client
/// certificate simply closes the connection after the handshake.
fn classify(endpoints: &str, e: etcd_client::Error, first_tls_request: bool) -> EtcdError {
    let text = error_chain(&e);
    let lower = text.to_ascii_lowercase();
    let tls_words = ["certificate", "tls", "handshake", "alert", "unknownissuer"];
    let endpoints = endpoints.to_string();
    // What a client sees when the server drops it right after the handshake.
    let closed = [
        "connection closed",
        "canceled",
        "broken pipe",
        "connection reset",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if first_tls_request && closed {
        return EtcdError::Tls {
            endpoints,
            reason: format!(
                "{text} (etcd closed the connection after the TLS handshake: is the client \
                 certificate signed by a CA etcd trusts?)"
            ),
        };
    }
    match e {
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::IoError(_) => EtcdError::Config(text),
        _ if tls_words.iter().any(|w| lower.contains(w)) => EtcdError::Tls {
            endpoints,
            reason: text,
        },
        etcd_client::Error::TransportError(_) => EtcdError::Unreachable {
            endpoints,
            reason: text,
        },
        etcd_client::Error::GRpcStatus(ref s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) =>
        {
            EtcdError::Unreachable {
                endpoints,
                reason: text,
            }
        }
        _ => EtcdError::Request(text),
    }
}

/// The error and its sources on one line: tonic hides the useful part (refused, bad
/// certificate) a few levels down.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}
