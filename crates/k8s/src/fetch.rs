//! The client on a runtime that lives for one call ([`with_client`], for every read), the
//! GET and the sorting of its errors; the pod and its namespace read together.

use std::error::Error as StdError;
use std::future::Future;
use std::io;

use serde::de::DeserializeOwned;

use crate::convert::{NamespaceObject, PodObject};
use crate::error::chain;
use crate::{K8sConfig, K8sError, Namespace, Pod};

/// Reads the pod `namespace/pod` and the namespace `namespace` (both GETs at once) with the
/// kubeconfig as it is now on disk and the overrides of `cfg`; blocks for at most about
/// `cfg.timeout`.
///
/// If both GETs fail, the namespace's error is returned (a missing namespace explains a
/// missing pod).
pub fn fetch_pod_and_namespace(
    cfg: &K8sConfig,
    namespace: &str,
    pod: &str,
) -> Result<(Pod, Namespace), K8sError> {
    refuse_empty_pod_name(cfg, namespace, pod)?;
    with_client(cfg, |client, url| async move {
        fetch_both(&client, &url, namespace, pod).await
    })
}

/// An empty namespace or pod name fails before any request, naming the server (an unusable
/// configuration is reported first, as for any read).
pub(crate) fn refuse_empty_pod_name(
    cfg: &K8sConfig,
    namespace: &str,
    pod: &str,
) -> Result<(), K8sError> {
    if !namespace.is_empty() && !pod.is_empty() {
        return Ok(());
    }
    Err(K8sError::Other {
        url: server_url(&crate::config::load(cfg)?),
        message: format!("pod {namespace:?}/{pod:?}: an empty name cannot be read"),
    })
}

/// The API server's URL as the errors name it.
fn server_url(config: &kube::Config) -> String {
    config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string()
}

/// Runs `request` with a client for `cfg` (the kubeconfig as it is now on disk, with the
/// overrides) and the server's URL, on a runtime that lives for this call; blocks for at
/// most about `cfg.timeout`, past which the call is [`K8sError::Unreachable`]. Every read of
/// this crate goes through here.
pub(crate) fn with_client<T, F>(
    cfg: &K8sConfig,
    request: impl FnOnce(kube::Client, String) -> F,
) -> Result<T, K8sError>
where
    F: Future<Output = Result<T, K8sError>>,
{
    let config = crate::config::load(cfg)?;
    let url = server_url(&config);
    // kube builds its TLS configuration from rustls' process default; choose ring
    // explicitly so a binary that also links another provider does not make that ambiguous.
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| K8sError::Other {
            url: url.clone(),
            message: format!("cannot start the I/O runtime: {e}"),
        })?;
    let timeout = cfg.timeout;
    let outcome = runtime.block_on(async {
        tokio::time::timeout(timeout, async {
            // Inside the runtime: the client spawns its request buffer's worker on it.
            let client = kube::Client::try_from(config).map_err(|e| classify(e, &url, None))?;
            request(client, url.clone()).await
        })
        .await
    });
    // A name lookup may still be running on the blocking pool; do not wait for it.
    runtime.shutdown_background();
    outcome.unwrap_or_else(|_elapsed| {
        Err(K8sError::Unreachable {
            url,
            message: format!("no answer within {timeout:?}"),
        })
    })
}

async fn fetch_both(
    client: &kube::Client,
    url: &str,
    namespace: &str,
    pod: &str,
) -> Result<(Pod, Namespace), K8sError> {
    let ns_path = format!("/api/v1/namespaces/{}", segment(namespace));
    let pod_path = format!("{ns_path}/pods/{}", segment(pod));
    let pod_name = format!("{namespace}/{pod}");
    let (ns_result, pod_result) = tokio::join!(
        get::<NamespaceObject>(client, url, &ns_path, ("Namespace", namespace)),
        get::<PodObject>(client, url, &pod_path, ("Pod", &pod_name)),
    );
    let ns_object = ns_result?;
    let pod_object = pod_result?;
    Ok((
        pod_object.into_pod(namespace, pod),
        ns_object.into_namespace(namespace),
    ))
}

pub(crate) async fn get<T: DeserializeOwned>(
    client: &kube::Client,
    url: &str,
    path: &str,
    object: (&'static str, &str),
) -> Result<T, K8sError> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| K8sError::Other {
            url: url.to_string(),
            message: format!("GET {path}: {e}"),
        })?;
    client
        .request::<T>(request)
        .await
        .map_err(|e| classify(e, url, Some((path, object))))
}

/// A path segment with everything but RFC 3986's unreserved characters percent-encoded, so
/// a name can only ever name one object.
pub(crate) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sorts kube's error into what the caller acts on. `request` is the path and the object
/// (kind, name) when the error answers a GET.
pub(crate) fn classify(
    e: kube::Error,
    url: &str,
    request: Option<(&str, (&'static str, &str))>,
) -> K8sError {
    let url = url.to_string();
    let what = request.map_or_else(String::new, |(path, _)| format!("GET {path}: "));
    match e {
        kube::Error::Api(status) => {
            // A Status without a code (never from a real API server) still has a reason.
            let code = match (status.code, status.reason.as_str()) {
                (0, "Unauthorized") => 401,
                (0, "Forbidden") => 403,
                (0, "NotFound") => 404,
                (code, _) => code,
            };
            let mut message = format!("{what}{code} {}", status.reason);
            if !status.message.is_empty() && status.message != status.reason {
                message.push_str(": ");
                message.push_str(&status.message);
            }
            match (code, request) {
                (401 | 403, _) => K8sError::Unauthorized { url, code, message },
                (404, Some((_, (kind, name)))) => K8sError::NotFound {
                    kind,
                    name: name.to_string(),
                    url,
                },
                (429 | 503 | 504, _) => K8sError::Unreachable { url, message },
                _ => K8sError::Other { url, message },
            }
        }
        kube::Error::HyperError(ref inner) => transport(&e, inner, url, &what),
        kube::Error::Service(ref inner) => transport(&e, inner.as_ref(), url, &what),
        kube::Error::InferKubeconfig(_)
        | kube::Error::RustlsTls(_)
        | kube::Error::Auth(_)
        | kube::Error::ProxyProtocolDisabled { .. }
        | kube::Error::ProxyProtocolUnsupported { .. }
        | kube::Error::TlsRequired => {
            K8sError::Config(format!("server {url}: {what}{}", chain(&e)))
        }
        kube::Error::SerdeError(_) => K8sError::Other {
            url,
            message: format!("{what}the answer is not the expected object: {}", chain(&e)),
        },
        _ => K8sError::Other {
            url,
            message: format!("{what}{}", chain(&e)),
        },
    }
}

/// A connection-level failure: unreachable unless it is TLS refusing the peer (a
/// configuration problem that retrying will not fix).
fn transport(
    e: &kube::Error,
    inner: &(dyn StdError + 'static),
    url: String,
    what: &str,
) -> K8sError {
    let message = format!("{what}{}", chain(e));
    if is_tls_failure(inner) {
        return K8sError::Other { url, message };
    }
    if is_unreachable(inner) {
        return K8sError::Unreachable { url, message };
    }
    K8sError::Other { url, message }
}

/// Whether `test` holds for `e`, one of its sources, or an error wrapped inside an
/// `io::Error` anywhere among them (`io::Error::source` skips the wrapped error itself, and
/// hyper-rustls wraps the TLS failure twice).
fn any_cause(
    e: &(dyn StdError + 'static),
    test: &mut impl FnMut(&(dyn StdError + 'static)) -> bool,
) -> bool {
    if test(e) {
        return true;
    }
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
        && any_cause(inner, test)
    {
        return true;
    }
    e.source().is_some_and(|s| any_cause(s, test))
}

fn is_tls_failure(e: &(dyn StdError + 'static)) -> bool {
    any_cause(e, &mut |s| s.is::<rustls::Error>())
}

fn is_unreachable(e: &(dyn StdError + 'static)) -> bool {
    any_cause(e, &mut |s| {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::NetworkDown
                    | io::ErrorKind::AddrNotAvailable
            );
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_timeout() || h.is_closed() || h.is_incomplete_message() || h.is_canceled();
        }
        // A failed connect (refused, no route, name lookup) before any TLS.
        s.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("nginx-7d9f.b_c~"), "nginx-7d9f.b_c~");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn empty_names_are_refused_before_any_request() {
        let cfg = K8sConfig {
            api_root: Some("https://192.0.2.1:6443".to_string()),
            ..K8sConfig::new("")
        };
        let err = fetch_pod_and_namespace(&cfg, "", "p").unwrap_err();
        assert!(matches!(err, K8sError::Other { .. }), "{err}");
    }
}
