//! `readiness_gates`: URLs that must answer before an ADD does anything, as Calico's
//! `cmdAdd` polls them (`cni-plugin/pkg/plugin/plugin.go`, `pollEndpointReadiness` and
//! `isEndpointReady`):
//!
//! - a gate is ready when `GET <url>` answers with a status from 200 to 399 (redirects are
//!   followed first, at most 10, as Go's `http.Client` does);
//! - each gate is polled every [`INTERVAL`], the first time one interval after the start
//!   (`wait.PollUntilContextTimeout(.., immediate=false, ..)`), each request bounded by the
//!   interval; a refused connection or an error status only means "not ready yet";
//! - a gate not ready within [`TIMEOUT`] fails the ADD ("try again later": nothing was
//!   made yet); the gates are waited for one after the other.
//!
//! A URL that is not `http://` or `https://` with a host is code 7 at once (Go accepts any
//! URI there and then polls it for 30 s without a chance of success).

use cni_protocol::CniError;
use http::Uri;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

/// Calico's polling interval, also the bound on each request.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Calico's bound on waiting for one gate.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Go's `http.Client` gives up after 10 redirects.
const MAX_REDIRECTS: usize = 10;

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A gate's URL, or code 7 if it cannot be polled.
pub fn parse_gate(url: &str) -> Result<Uri, CniError> {
    let invalid = |why: &str| {
        CniError::invalid_config(format!("invalid URL set for ReadinessGates: {url}: {why}"))
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(uri)
}

/// Waits for every gate in turn with Calico's interval and timeout.
pub fn wait_for_gates(urls: &[String]) -> Result<(), CniError> {
    wait_for_gates_with(urls, INTERVAL, TIMEOUT)
}

/// [`wait_for_gates`] with another interval and timeout (tests).
pub fn wait_for_gates_with(
    urls: &[String],
    interval: Duration,
    timeout: Duration,
) -> Result<(), CniError> {
    if urls.is_empty() {
        return Ok(());
    }
    let gates = urls
        .iter()
        .map(|u| parse_gate(u))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::internal(format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(async {
        let client = client()?;
        for (url, uri) in urls.iter().zip(gates) {
            poll(&client, url, uri, interval, timeout).await?;
        }
        Ok(())
    })
}

fn client() -> Result<HttpClient, CniError> {
    let provider = rustls::crypto::ring::default_provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // Without system roots an https gate can only fail; an http one still works.
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("readiness gates: no system CA certificates ({e})");
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .map_err(|e| CniError::internal(format!("TLS settings: {e}")))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Polls one gate until it is ready or `timeout` has passed.
async fn poll(
    client: &HttpClient,
    url: &str,
    uri: Uri,
    interval: Duration,
    timeout: Duration,
) -> Result<(), CniError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut tick = start + interval;
    let mut last = String::from("never asked");
    while tick < deadline {
        tokio::time::sleep_until(tick.into()).await;
        match tokio::time::timeout(interval, ready(client, uri.clone())).await {
            Ok(Ok(())) => {
                log::debug!("readiness gate {url} ready after {:?}", start.elapsed());
                return Ok(());
            }
            Ok(Err(why)) => last = why,
            Err(_) => last = format!("no answer within {interval:?}"),
        }
        log::info!("readiness gate {url} not ready: {last}");
        // Like Go's ticker: the next tick, or at once if this request overran it.
        tick = (tick + interval).max(Instant::now());
    }
    // Go's poll returns when its deadline expires, not at the last tick before it.
    tokio::time::sleep_until(deadline.into()).await;
    Err(CniError::try_again_later(format!(
        "readiness gate {url} was not ready within {timeout:?}: {last}"
    )))
}

/// One `isEndpointReady`: GET, following redirects; ready on 200..=399.
async fn ready(client: &HttpClient, mut uri: Uri) -> Result<(), String> {
    for _ in 0..=MAX_REDIRECTS {
        let request = http::Request::get(uri.clone())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        let status = response.status();
        if status.is_redirection()
            && let Some(next) = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| redirect_target(&uri, l))
        {
            uri = next;
            continue;
        }
        return if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!(
                "endpoint is not ready, response code returned: {}",
                status.as_u16()
            ))
        };
    }
    Err(format!("stopped after {MAX_REDIRECTS} redirects"))
}

/// Where a `Location` points: an absolute URL, or a path on the same server.
fn redirect_target(from: &Uri, location: &str) -> Option<Uri> {
    let to: Uri = location.parse().ok()?;
    if to.scheme().is_some() {
        return Some(to);
    }
    let path = to.path_and_query()?.as_str();
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = from.clone().into_parts();
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_protocol::ErrorCode;
    use testkit::http::{Answer, ScriptedHttp};

    const FAST: Duration = Duration::from_millis(100);

    fn server(script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static) -> ScriptedHttp {
        ScriptedHttp::start(None, "127.0.0.1".parse().unwrap(), script).unwrap()
    }

    #[test]
    fn gate_urls_must_be_http_with_a_host() {
        assert!(parse_gate("http://127.0.0.1:9099/readiness").is_ok());
        assert!(parse_gate("https://calico-node.example:9099/").is_ok());
        for bad in [
            "",
            "/readiness",
            "ftp://host/",
            "localhost:9099",
            "http://",
            "http:// x",
        ] {
            let e = parse_gate(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{bad}");
            assert!(e.msg.contains("ReadinessGates"), "{bad}: {}", e.msg);
        }
        let e = wait_for_gates_with(&["nope".into()], FAST, FAST * 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
    }

    /// Mirrors plugin.go `pollEndpointReadiness`: not immediate, ready on the first poll.
    #[test]
    fn a_ready_gate_is_asked_once_after_one_interval() {
        let s = server(|_, _| Answer::Status(200));
        let started = Instant::now();
        wait_for_gates_with(&[s.url("/ready")], FAST, FAST * 10).unwrap();
        assert!(started.elapsed() >= FAST, "{:?}", started.elapsed());
        assert_eq!(s.requests(), ["/ready"]);
        // 3xx counts as ready (isEndpointReady: 200 <= code < 400), once redirects end.
        let s = server(|_, _| Answer::Status(304));
        wait_for_gates_with(&[s.url("/")], FAST, FAST * 10).unwrap();
    }

    /// Mirrors plugin.go `pollEndpointReadiness`: errors only mean "not ready yet".
    #[test]
    fn a_gate_that_becomes_ready_is_polled_until_it_is() {
        let s = server(|n, _| Answer::Status(if n < 2 { 503 } else { 204 }));
        wait_for_gates_with(&[s.url("/r")], FAST, FAST * 20).unwrap();
        assert_eq!(s.requests().len(), 3);
    }

    /// Mirrors plugin.go `pollEndpointReadiness` with `wait.PollUntilContextTimeout`: a gate
    /// that never gets ready fails after the timeout, having been asked once per interval.
    #[test]
    fn a_gate_never_ready_times_out() {
        let s = server(|_, _| Answer::Status(500));
        let started = Instant::now();
        let e = wait_for_gates_with(&[s.url("/never")], FAST, FAST * 5).unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        assert!(e.msg.contains("response code returned: 500"), "{}", e.msg);
        // Bounded by the timeout (generously: the machine may be busy).
        assert!(took >= FAST * 5 && took < FAST * 30, "{took:?}");
        let asked = s.requests().len();
        assert!((3..=5).contains(&asked), "{asked}");
    }

    /// A request that gets no answer is bounded by the interval (isEndpointReady's context).
    #[test]
    fn a_silent_gate_is_not_ready_and_requests_are_bounded() {
        let s = server(|_, _| Answer::Silence);
        let started = Instant::now();
        let e = wait_for_gates_with(&[s.url("/silent")], FAST, FAST * 4).unwrap_err();
        assert!(e.msg.contains("no answer within"), "{}", e.msg);
        assert!(started.elapsed() < FAST * 30, "{:?}", started.elapsed());
    }

    /// A refused connection only means "not ready"; several gates are waited for in turn.
    #[test]
    fn a_refused_connection_is_not_ready() {
        let s = server(|_, _| Answer::Status(200));
        let closed = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let e = wait_for_gates_with(&[format!("http://{closed}/")], FAST, FAST * 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER, "{}", e.msg);
        // Several gates: each in turn.
        wait_for_gates_with(&[s.url("/a"), s.url("/b")], FAST, FAST * 10).unwrap();
        assert_eq!(s.requests(), ["/a", "/b"]);
    }

    /// Redirects are followed (Go's http.Client), up to 10.
    #[test]
    fn redirects_are_followed() {
        let s = server(|_, path| match path {
            "/start" => Answer::Redirect("/ok".into()),
            "/ok" => Answer::Status(200),
            _ => Answer::Redirect("/loop".into()),
        });
        wait_for_gates_with(&[s.url("/start")], FAST, FAST * 10).unwrap();
        assert_eq!(s.requests(), ["/start", "/ok"]);
        let e = wait_for_gates_with(&[s.url("/loop")], FAST, FAST * 2).unwrap_err();
        assert!(e.msg.contains("stopped after 10 redirects"), "{}", e.msg);
    }
}
