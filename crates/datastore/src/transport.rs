//! How the etcd client reaches etcd: our own connector under tonic.
//!
//! - One connection per client, to the first endpoint that answers (in order), so a
//!   stopped member costs one refused connect, not a failed request.
//! - TLS with rustls from the configured PEM files (read with `calico-fsbound`: regular
//!   files only, bounded, never blocking), and every TLS write buffered until hyper
//!   flushes, so a gRPC request leaves in one TLS record and one syscall instead of one per
//!   HTTP/2 frame (which measurably slows each request on a busy node).

use crate::config::EtcdConfig;
use crate::error::EtcdError;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;

/// A parsed endpoint: where to connect and which name the server certificate must carry.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub authority: String,
    pub host: String,
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, EtcdError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(EtcdError::Config(format!(
                "etcd endpoint {url:?} must start with http:// or https://"
            )));
        };
        let authority = rest.trim_end_matches('/').to_string();
        // Go's etcd client takes no credentials in the URL either (they are separate
        // settings); quoting such an endpoint back would print the password.
        if let Some((_, host)) = authority.rsplit_once('@') {
            let scheme = if tls { "https" } else { "http" };
            return Err(EtcdError::Config(format!(
                "etcd endpoint {scheme}://…@{host} holds credentials (user:password@): \
                 not supported, name the host alone"
            )));
        }
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority.as_str(),
        }
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(Target {
            url: url.to_string(),
            authority,
            host,
            tls,
        })
    }
}

/// The bytes moved by the connection: plain TCP or TLS, both buffered until flush, and each
/// flush held back once ([`Corked`]).
pub type Io = TokioIo<Corked<BufStream<Stream>>>;

/// Holds a flush back while other tasks still add to it (one turn of the runtime at a time,
/// [`MAX_HOLDS`] at most), so that a request leaves whole: hyper flushes a request's HEADERS
/// frame, its DATA frame and its closing empty DATA frame each on its own, from two tasks
/// (the connection and the body's pipe), which made every etcd request three TLS records,
/// three `sendto`s and as many wake-ups of etcd's reader (strace of calico-node serving
/// the plugins).
///
/// Written by hand: no crate coalesces flushes across tasks; tokio's `BufStream` coalesces
/// only the writes between two flushes.
pub struct Corked<S> {
    inner: S,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// Bytes were written since the flush was last held back.
    grew: bool,
    /// How often the pending flush has been held back.
    holds: u8,
}

/// A flush is held back at most this often (a turn each), then made whatever follows.
const MAX_HOLDS: u8 = 4;

impl<S> Corked<S> {
    pub fn new(inner: S) -> Self {
        Corked {
            inner,
            unflushed: false,
            grew: false,
            holds: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.unflushed = true;
            this.grew = true;
        }
        written
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.unflushed && this.grew && this.holds < MAX_HOLDS {
            // Polled again as soon as the tasks already woken have run.
            this.grew = false;
            this.holds += 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let flushed = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            this.unflushed = false;
            this.grew = false;
            this.holds = 0;
        }
        flushed
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP or TLS stream.
pub enum Stream {
    Plain(TcpStream),
    /// TLS over [`Stream::Plain`].
    Tls(Box<tokio_rustls::client::TlsStream<Stream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A PEM file that a setting names, read bounded and without blocking (a FIFO or
/// `/dev/zero` there must not hang or exhaust the plugin).
fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, EtcdError> {
    calico_fsbound::read_config_file(path, calico_fsbound::SMALL_FILE_LIMIT, setting)
        .map_err(|e| EtcdError::Config(e.to_string()))
}

/// Reads the TLS files that are set, as [`tls_config`] does, when no endpoint uses TLS: Go's
/// client reads them whatever the scheme (`transport.TLSInfo.ClientConfig` in libcalico-go's
/// `NewEtcdV3Client`), so a missing or unreadable one is an error there too.
pub fn check_tls_files(config: &EtcdConfig) -> Result<(), EtcdError> {
    for (setting, file) in tls_settings(config) {
        if let Some(path) = file {
            read_pem(setting, path)?;
        }
    }
    Ok(())
}

/// The TLS file settings, by the name the CNI config gives them.
pub fn tls_settings(config: &EtcdConfig) -> [(&'static str, Option<&std::path::PathBuf>); 3] {
    [
        ("etcd_ca_cert_file", config.ca_cert_file.as_ref()),
        ("etcd_cert_file", config.cert_file.as_ref()),
        ("etcd_key_file", config.key_file.as_ref()),
    ]
}

/// The rustls client config: the configured CA (else no trust at all, which fails clearly),
/// the client identity if given, HTTP/2 by ALPN.
pub fn tls_config(config: &EtcdConfig) -> Result<Arc<rustls::ClientConfig>, EtcdError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| EtcdError::Config(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &config.ca_cert_file {
        let pem = read_pem("etcd_ca_cert_file", ca)?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(&format!("etcd CA {}", ca.display()), &e))?;
            roots
                .add(cert)
                .map_err(|e| bad(&format!("etcd CA {}", ca.display()), &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("TLS setup", &e))?
    .with_root_certificates(roots);
    let mut tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_pem("etcd_cert_file", cert)?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&format!("etcd client certificate {}", cert.display()), &e))?;
            let key = PrivateKeyDer::from_pem_slice(&read_pem("etcd_key_file", key)?)
                .map_err(|e| bad(&format!("etcd client key {}", key.display()), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("etcd client certificate and key", &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(EtcdError::Config(
                "etcd_cert_file and etcd_key_file must be given together".into(),
            ));
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(tls))
}

/// Connects to the first target that accepts (TCP, then TLS), each bounded by `timeout`.
/// If none does, the error names every attempt; its kind is `InvalidData` if a TLS
/// handshake failed (a certificate problem, which no retry mends: see `etcd`'s
/// classification), else `ConnectionRefused`.
pub async fn dial(
    targets: &[Target],
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Stream, std::io::Error> {
    let mut errors = Vec::new();
    let mut kind = std::io::ErrorKind::ConnectionRefused;
    for t in targets {
        let attempt = async {
            let tcp = TcpStream::connect(&t.authority).await?;
            tcp.set_nodelay(true)?;
            match (tls, t.tls) {
                (Some(cfg), true) => {
                    let name = ServerName::try_from(t.host.clone())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let s = tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, Stream::Plain(tcp))
                        .await?;
                    Ok::<_, std::io::Error>(Stream::Tls(Box::new(s)))
                }
                _ => Ok(Stream::Plain(tcp)),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    kind = e.kind();
                }
                errors.push(format!("{}: {e}", t.url));
            }
            Err(_) => errors.push(format!("{}: no connection within {timeout:?}", t.url)),
        }
    }
    Err(std::io::Error::new(kind, errors.join("; ")))
}

/// What is buffered each way: a whole request (a transaction writing a full /26 block is
/// ~20 KB; with tokio's 8 KiB default a larger one went out in two writes) and a whole TLS
/// record (16 KiB) at a time.
const BUFFER: usize = 64 * 1024;

/// The connection for the HTTP/2 client: buffered until flush, flushes held back while
/// other tasks add to them.
pub fn wrap(stream: Stream) -> Io {
    TokioIo::new(Corked::new(BufStream::with_capacity(
        BUFFER, BUFFER, stream,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let t = Target::parse("https://10.10.0.174:2379").expect("valid");
        assert!(t.tls);
        assert_eq!(
            (t.authority.as_str(), t.host.as_str()),
            ("10.10.0.174:2379", "10.10.0.174")
        );
        let t = Target::parse("http://etcd.local/").expect("valid");
        assert_eq!(t.authority, "etcd.local:80");
        let t = Target::parse("https://[fd00::1]:2379").expect("valid");
        assert_eq!(t.host, "fd00::1");
        assert!(Target::parse("etcd:2379").is_err());
    }

    /// What reaches the socket: the bytes, and how many had arrived at each flush.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        flushed_at: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.get_mut().bytes.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = self.get_mut();
            this.flushed_at.push(this.bytes.len());
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A flush waits while more is written between its tries (as hyper's frames of one
    /// request come from two tasks), so they leave in one flush; it is made once nothing
    /// more came, or after MAX_HOLDS tries whatever comes; with nothing written it is made
    /// at once.
    #[test]
    fn flushes_are_held_while_more_is_written() {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        let mut corked = Corked::new(Recorder::default());
        let mut pin = std::pin::Pin::new(&mut corked);
        let mut write = |pin: &mut std::pin::Pin<&mut Corked<Recorder>>, b: &[u8]| {
            assert!(matches!(
                pin.as_mut().poll_write(&mut cx, b),
                Poll::Ready(Ok(_))
            ));
        };
        write(&mut pin, b"headers");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(pin.as_mut().poll_flush(&mut cx).is_pending(), "held");
        write(&mut pin, b"data");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            pin.as_mut().poll_flush(&mut cx).is_pending(),
            "held: more came"
        );
        assert!(matches!(
            pin.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(pin.inner.flushed_at, vec![11], "one flush of both");
        // Nothing written: at once.
        assert!(pin.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(pin.inner.flushed_at, vec![11, 11]);
        // Written to at every try: made after MAX_HOLDS holds.
        let mut tries = 0;
        loop {
            write(&mut pin, b"x");
            let mut cx = Context::from_waker(Waker::noop());
            tries += 1;
            if pin.as_mut().poll_flush(&mut cx).is_ready() {
                break;
            }
        }
        assert_eq!(tries, usize::from(MAX_HOLDS) + 1);
    }

    /// Bad-input finding #15: an endpoint with `user:password@` is refused without quoting
    /// the password.
    #[test]
    fn credentials_in_an_endpoint_are_refused() {
        let e = Target::parse("http://root:hunter2@127.0.0.1:2379").expect_err("credentials");
        let text = e.to_string();
        assert!(
            text.contains("holds credentials") && text.contains("127.0.0.1:2379"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// Bad-input findings #9 and #16: a TLS file setting naming /dev/zero, a FIFO or nothing
    /// is refused at once, naming the setting, with https endpoints and (as Go's client,
    /// which reads the files whatever the scheme) with http ones.
    #[test]
    fn tls_files_are_read_bounded_and_must_exist_whatever_the_scheme() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for scheme in ["https", "http"] {
            for (setting, path) in [
                ("etcd_ca_cert_file", Path::new("/dev/zero")),
                ("etcd_cert_file", fifo.as_path()),
                ("etcd_key_file", dir.path().join("missing").as_path()),
            ] {
                let mut config = EtcdConfig::new(vec![format!("{scheme}://127.0.0.1:1")]);
                match setting {
                    "etcd_ca_cert_file" => config.ca_cert_file = Some(path.into()),
                    _ => {
                        // Both or neither: the other one is a real (empty) file.
                        let other = dir.path().join("other");
                        std::fs::write(&other, "").expect("write");
                        config.cert_file = Some(other.clone());
                        config.key_file = Some(other);
                        if setting == "etcd_cert_file" {
                            config.cert_file = Some(path.into());
                        } else {
                            config.key_file = Some(path.into());
                        }
                    }
                }
                let started = std::time::Instant::now();
                let e = runtime
                    .block_on(crate::etcd::EtcdClient::connect(&config))
                    .err()
                    .unwrap_or_else(|| panic!("{scheme} {setting} accepted"));
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{scheme} {setting}"
                );
                assert!(matches!(e, EtcdError::Config(_)), "{scheme} {setting}: {e}");
                assert!(e.to_string().contains(setting), "{scheme} {setting}: {e}");
                // The agent's identity reads them the same way.
                let e = crate::agent::identity(&config).expect_err(setting);
                assert_eq!(e.setting, setting);
            }
        }
    }
}
