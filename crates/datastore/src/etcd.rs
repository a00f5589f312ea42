//! The etcd v3 client: [`EtcdClient`], asynchronous and shareable (the node agent serves
//! every plugin call of the node over one), and [`Etcd`], the same behind a runtime of its
//! own for synchronous callers (a plugin process, calicoctl): one connection per client,
//! reused for every request, with compare-and-swap writes.
//!
//! Its own calls fail with [`EtcdError`] (TLS and configuration told apart, sorted by the
//! errors' types); through [`KvStore`] the same failures are [`StoreError`]s. The top layer
//! of the crate with [`crate::plugin`]: it uses the settings, errors, store types, transport
//! and discovery.

use crate::config::EtcdConfig;
use crate::error::{EtcdError, StoreError};
use crate::store::{Guard, Kv, KvStore, Read, TxnOutcome, Write};
use crate::transport::{Target, dial, wrap};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest response accepted from etcd: Go clientv3's `defaultMaxCallRecvMsgSize`
/// (math.MaxInt32).
const MAX_RECV_BYTES: usize = i32::MAX as usize;

/// The connection for asynchronous callers. Cheap to clone: clones share the connection
/// (HTTP/2, so concurrent requests are multiplexed on it). Made and used within one tokio
/// runtime.
#[derive(Clone)]
pub struct EtcdClient {
    kv: KvClient,
    /// Watches ([`crate::watch`]) ride the same connection as the requests.
    watch: WatchClient,
    config: Arc<EtcdConfig>,
    endpoints: Arc<str>,
    /// Set after the first answered request: from then on a closed connection means etcd
    /// went away, not that it rejected our TLS identity.
    answered: Arc<AtomicBool>,
}

/// What the connector (called by the first request, and on reconnects) works from.
struct Dialing {
    targets: Vec<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: std::time::Duration,
}

impl Dialing {
    async fn connect(&self) -> Result<crate::transport::Io, std::io::Error> {
        let asked = std::time::Instant::now();
        let stream = dial(&self.targets, self.tls.as_ref(), self.connect_timeout).await;
        log::debug!("etcd connection made in {:?}", asked.elapsed());
        stream.map(wrap)
    }
}

impl EtcdClient {
    /// Prepares the connection (the TLS files are read now, so a bad one is reported
    /// here); it is established by the first request, to the first endpoint that accepts
    /// (see [`crate::transport`]). `config` must name its endpoints (DNS discovery is
    /// [`Etcd::connect`]'s).
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdClient, EtcdError> {
        if config.discovery_srv.is_some() {
            return Err(EtcdError::Config(
                "etcd_discovery_srv must be resolved before connecting".into(),
            ));
        }
        if config.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoints configured".into()));
        }
        let endpoints = config.endpoints.join(",");
        let targets = config
            .endpoints
            .iter()
            .map(|e| Target::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if targets.iter().any(|t| t.tls) {
            Some(crate::transport::tls_config(config)?)
        } else {
            crate::transport::check_tls_files(config)?;
            None
        };
        let uri = format!("http://{}", targets[0].authority);
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| EtcdError::Config(format!("invalid etcd endpoint: {e}")))?;
        let dialing = Arc::new(Dialing {
            targets,
            tls,
            connect_timeout: config.connect_timeout,
        });
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let dialing = dialing.clone();
            async move { dialing.connect().await }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        let client = Client::from_channel(etcd_client::Channel::Tonic(channel), None)
            .await
            .map_err(|e| classify(&endpoints, e, config.uses_tls(), false))?;
        // tonic refuses messages over 4 MiB by default; one list of 10,000 endpoints is
        // ~7.5 MB. Go's clientv3 (Felix, calicoctl) accepts up to math.MaxInt32
        // (defaultMaxCallRecvMsgSize): so do we, for lists and for watch batches alike.
        Ok(EtcdClient {
            kv: client.kv_client().max_decoding_message_size(MAX_RECV_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RECV_BYTES),
            config: Arc::new(config.clone()),
            endpoints: endpoints.into(),
            answered: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// How long one request may take.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.config.request_timeout
    }

    /// Runs one request, bounded by the request timeout whatever the transport does.
    async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        let limit = self.config.request_timeout;
        let out = tokio::time::timeout(limit, f)
            .await
            .map_err(|_| EtcdError::Unreachable {
                endpoints: self.endpoints.to_string(),
                reason: format!("no answer within {limit:?}"),
            })?;
        let tls = self.config.uses_tls();
        let rejected_tls = tls && !self.answered.load(Ordering::Relaxed);
        let out = out.map_err(|e| classify(&self.endpoints, e, tls, rejected_tls))?;
        self.answered.store(true, Ordering::Relaxed);
        Ok(out)
    }

    /// Unconditional put, for tools and tests.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        self.run(kv.put(key, value, None)).await.map(|_| ())
    }

    /// Unconditional delete of every key under `prefix`; returns how many went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let mut kv = self.kv.clone();
        let resp = self
            .run(kv.delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ))
            .await?;
        Ok(resp.deleted())
    }

    /// One etcd transaction of range requests: a consistent snapshot in one round trip.
    pub async fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, EtcdError> {
        let mut kv = self.kv.clone();
        let ops: Vec<TxnOp> = reads.iter().map(get_op).collect();
        let resp = self.run(kv.txn(Txn::new().and_then(ops))).await?;
        Ok(gets(resp.op_responses()))
    }

    /// Every key under each prefix, in one transaction, with the store's revision at that
    /// moment: the starting point of a watch ([`crate::watch`]) that misses nothing.
    pub async fn read_at_revision(&self, reads: &[Read]) -> Result<(Vec<Vec<Kv>>, i64), EtcdError> {
        let mut kv = self.kv.clone();
        let ops: Vec<TxnOp> = reads.iter().map(get_op).collect();
        let resp = self.run(kv.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((gets(resp.op_responses()), revision))
    }

    /// Discards the history before `revision` (etcd's compaction), for tools and tests: a
    /// watch from an older revision is then refused.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        let mut kv = self.kv.clone();
        self.run(kv.compact(revision, None)).await.map(|_| ())
    }

    /// Opens one watch stream over every prefix, from `start_revision` on (see
    /// [`crate::watch`]). The opening is bounded by the request timeout; the stream is not.
    pub(crate) async fn open_watch(
        &self,
        prefixes: &[String],
        start_revision: i64,
    ) -> Result<etcd_client::WatchStream, EtcdError> {
        let options = || {
            etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(start_revision)
        };
        let mut watch = self.watch.clone();
        let Some((first, rest)) = prefixes.split_first() else {
            return Err(EtcdError::Config(
                "a watch needs at least one prefix".into(),
            ));
        };
        let mut stream = self
            .run(watch.watch(first.as_str(), Some(options())))
            .await?;
        for prefix in rest {
            self.run(stream.watch(prefix.as_str(), Some(options())))
                .await?;
        }
        Ok(stream)
    }

    /// Sorts a failed watch stream's error like a request's.
    pub(crate) fn classify_stream_error(&self, e: etcd_client::Error) -> EtcdError {
        classify(&self.endpoints, e, self.config.uses_tls(), false)
    }

    /// On conflict the same round trip returns the guarded keys' current state.
    pub async fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, EtcdError> {
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
        let resp = self
            .run(kv.txn(Txn::new().when(compares).and_then(ops).or_else(current)))
            .await?;
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
}

/// The connection for synchronous callers: an [`EtcdClient`] on a single-threaded runtime
/// owned by this value, so callers stay on their thread (which matters for network
/// namespaces).
pub struct Etcd {
    runtime: tokio::runtime::Runtime,
    client: EtcdClient,
}

impl Etcd {
    /// Prepares the connection, resolving `etcd_discovery_srv` first if set (see
    /// [`EtcdClient::connect`]).
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
        let client = runtime.block_on(EtcdClient::connect(config))?;
        Ok(Etcd { runtime, client })
    }

    pub fn endpoints(&self) -> &str {
        self.client.endpoints()
    }

    /// Unconditional put, for tools and tests.
    pub fn put(&self, key: &str, value: Vec<u8>) -> Result<(), EtcdError> {
        self.runtime.block_on(self.client.put(key, value))
    }

    /// Unconditional delete of every key under `prefix`; returns how many went.
    pub fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        self.runtime.block_on(self.client.delete_prefix(prefix))
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

    /// See [`EtcdClient::read`].
    pub fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, EtcdError> {
        self.runtime.block_on(self.client.read(reads))
    }

    /// See [`EtcdClient::txn`].
    pub fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, EtcdError> {
        self.runtime.block_on(self.client.txn(guards, writes))
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        Read::key(key).one(|r| self.read(r))
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        Read::Prefix(prefix.into()).all(|r| self.read(r))
    }

    pub fn list_keys(&self, prefix: &str) -> Result<Vec<String>, EtcdError> {
        Read::PrefixKeys(prefix.into()).keys(|r| self.read(r))
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
    fn read(&self, reads: &[Read]) -> Result<Vec<Vec<Kv>>, StoreError> {
        Ok(Etcd::read(self, reads)?)
    }

    fn txn(&self, guards: &[Guard], writes: &[Write]) -> Result<TxnOutcome, StoreError> {
        Ok(Etcd::txn(self, guards, writes)?)
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints())
    }
}

pub(crate) fn to_kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// Sorts etcd-client's errors into what a caller acts on: unreachable (retry later),
/// TLS (fix the certificates), or a plain failure, by their types (gRPC status codes, the
/// transport's I/O errors), never by their text. `tls` says the endpoints use TLS;
/// `first_tls_request` that the connection is TLS and has never been answered: with TLS 1.3
/// a server that rejects our client certificate simply closes the connection after the
/// handshake.
fn classify(
    endpoints: &str,
    e: etcd_client::Error,
    tls: bool,
    first_tls_request: bool,
) -> EtcdError {
    let text = e.to_string();
    let cause = Cause::of(&e);
    let endpoints = endpoints.to_string();
    if first_tls_request && cause == Some(Cause::Closed) {
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
        _ if tls && cause == Some(Cause::Tls) => EtcdError::Tls {
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

/// What the transport says went wrong under a failed request, found by type in the error's
/// causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The TLS layer failed: a handshake refused, an alert received, a certificate not
    /// trusted. rustls reports these as `InvalidData` I/O errors, and that kind is all that
    /// survives h2's copy of the error (its rustls value does not).
    Tls,
    /// The connection was closed, reset or cancelled under the request.
    Closed,
}

impl Cause {
    fn of(e: &etcd_client::Error) -> Option<Cause> {
        let top: &(dyn std::error::Error + 'static) = match e {
            etcd_client::Error::GRpcStatus(s) => s,
            etcd_client::Error::TransportError(t) => t,
            _ => return None,
        };
        let mut pending = vec![top];
        let mut found = None;
        while let Some(err) = pending.pop() {
            match Cause::at(err) {
                Some(Cause::Tls) => return Some(Cause::Tls),
                Some(Cause::Closed) => found = Some(Cause::Closed),
                None => {}
            }
            // An I/O error's own source skips the error it wraps: look at that too.
            if let Some(inner) = err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                pending.push(inner);
            }
            pending.extend(err.source());
        }
        found
    }

    /// What this one error says by itself.
    fn at(err: &(dyn std::error::Error + 'static)) -> Option<Cause> {
        use std::io::ErrorKind;
        if err.downcast_ref::<rustls::Error>().is_some() {
            return Some(Cause::Tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::InvalidData => Some(Cause::Tls),
                ErrorKind::BrokenPipe
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof => Some(Cause::Closed),
                _ => None,
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return (h.is_closed() || h.is_canceled() || h.is_incomplete_message())
                .then_some(Cause::Closed);
        }
        None
    }
}
