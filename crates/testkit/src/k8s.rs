//! A stand-in for the Kubernetes API server: there is none on these machines, so tests of the
//! `policy.type: k8s` path talk HTTPS to this instead.
//!
//! It is not an API server. It serves only what Calico's CNI plugin reads, from recorded
//! objects (the JSON `kubectl get -o json` prints, see `testdata/k8s/`):
//! - `GET /api/v1/namespaces/{ns}/pods/{name}`, `GET /api/v1/namespaces/{ns}` and
//!   `GET /api/v1/nodes/{name}`: the recorded object, or a 404 `Status` naming it;
//! - KubeVirt's `GET /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}` and
//!   `.../virtualmachines/{name}` (what Calico's IPAM reads for a virt-launcher pod), the same
//!   way;
//! - a request without `Authorization: Bearer <current token>`: 401 `Status`, whatever the
//!   path (the API server authenticates first);
//! - anything else: 404 `Status`.
//!
//! TLS uses certificates generated for the run ([`Pki`], server SANs include the listen IP).
//! The server runs on its own thread with its own single-threaded runtime, inside a network
//! namespace if one is given, and stops (closing its listener and every connection) on drop.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sched::{CloneFlags, setns};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::{NetNs, Pki, unique_name};

/// The stand-in; see the module docs. Stopped on drop.
pub struct K8sApiStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    pki: Pki,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// Request path → recorded object.
    objects: BTreeMap<String, Value>,
    token: String,
    requests: Vec<String>,
    /// How long every answer is held back.
    delay: Duration,
}

impl K8sApiStandIn {
    /// Listens with HTTPS on `ip`, on a free port, inside `netns` if given (the listener is
    /// bound by a thread that joined the namespace, so the socket belongs to it). Starts with
    /// no objects and a token unique to the run ([`K8sApiStandIn::token`]).
    pub fn start(netns: Option<&NetNs>, ip: IpAddr) -> Result<Self> {
        let pki = Pki::generate(&[ip])?;
        let acceptor = TlsAcceptor::from(Arc::new(server_tls(&pki)?));
        let netns_fd = netns.map(NetNs::fd).transpose()?;
        let state = Arc::new(Mutex::new(State {
            token: format!("stand-in-{}", unique_name("tok")),
            ..State::default()
        }));

        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let served = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("k8s-api-stand-in".into())
            .spawn(move || {
                let bound = (|| -> Result<_> {
                    if let Some(fd) = netns_fd {
                        setns(&fd, CloneFlags::CLONE_NEWNET).context("setns into the netns")?;
                    }
                    let listener = std::net::TcpListener::bind((ip, 0))
                        .with_context(|| format!("binding {ip}:0"))?;
                    listener.set_nonblocking(true)?;
                    let addr = listener.local_addr()?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()?;
                    let listener = {
                        let _entered = runtime.enter();
                        tokio::net::TcpListener::from_std(listener)?
                    };
                    Ok((runtime, listener, addr))
                })();
                match bound {
                    Ok((runtime, listener, addr)) => {
                        let _ = ready_tx.send(Ok(addr));
                        runtime.block_on(serve(listener, acceptor, served, stop_rx));
                        // Dropping the runtime here drops every connection task.
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the stand-in's thread")?;
        let addr = ready_rx
            .recv()
            .map_err(|_| anyhow!("the stand-in's thread ended before listening"))??;
        Ok(Self {
            addr,
            state,
            pki,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Records an object: a Pod (served at `/api/v1/namespaces/{ns}/pods/{name}`), a
    /// Namespace (`/api/v1/namespaces/{name}`), a Node (`/api/v1/nodes/{name}`), or a
    /// KubeVirt VirtualMachineInstance or VirtualMachine, decided by its `kind`. Replaces an
    /// object at the same path.
    ///
    /// Panics if the object is neither or lacks a name (a Pod also needs a namespace): a
    /// fixture that silently serves nothing would fail tests far from the cause.
    pub fn add_object(&self, json: Value) {
        match object_path(&json) {
            Ok(path) => {
                self.state().objects.insert(path, json);
            }
            Err(e) => panic!("K8sApiStandIn::add_object: {e:#}"),
        }
    }

    /// Forgets the object recorded at the path `json` (the object, or just its `kind` and
    /// `metadata`) would be served at: from now on that path answers 404, as after a
    /// deletion. Panics if `json` names no servable path.
    pub fn remove_object(&self, json: &Value) {
        match object_path(json) {
            Ok(path) => {
                self.state().objects.remove(&path);
            }
            Err(e) => panic!("K8sApiStandIn::remove_object: {e:#}"),
        }
    }

    /// Records every `*.json` file of `dir` (such as `testdata/k8s/`), in name order.
    pub fn load_dir(&self, dir: &Path) -> Result<()> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            let path = object_path(&json).with_context(|| format!("{}", file.display()))?;
            self.state().objects.insert(path, json);
        }
        Ok(())
    }

    /// Rotates the token: from now on only `token` is accepted, the old one gets 401.
    pub fn set_token(&self, token: &str) {
        self.state().token = token.to_string();
    }

    /// Holds every answer back by `delay` from now on (a slow or distant API server).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// The token accepted now.
    pub fn token(&self) -> String {
        self.state().token.clone()
    }

    /// Writes a kubeconfig for the stand-in: its URL, its CA inline
    /// (`certificate-authority-data`) and the current token. The file is replaced by a
    /// rename, as calico-node does, so a reader never sees half of it.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let ca = std::fs::read(self.pki.ca_path()).context("reading the stand-in's CA")?;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        // A JSON string is a valid YAML double-quoted scalar.
        let token = serde_json::to_string(&self.token())?;
        let server = serde_json::to_string(&self.url())?;
        let text = [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: k8s-api-stand-in",
            "  cluster:",
            &format!("    server: {server}"),
            &format!("    certificate-authority-data: {ca}"),
            "users:",
            "- name: calico-cni",
            "  user:",
            &format!("    token: {token}"),
            "contexts:",
            "- name: calico-cni@k8s-api-stand-in",
            "  context:",
            "    cluster: k8s-api-stand-in",
            "    user: calico-cni",
            "current-context: calico-cni@k8s-api-stand-in",
            "",
        ]
        .join("\n");
        let file_name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// `https://<ip>:<port>` (IPv6 in brackets).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA that signed the stand-in's certificate, as a PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.pki.ca_path()
    }

    /// Every request so far, as `"GET /api/v1/namespaces/default"`, in arrival order,
    /// refused ones included.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for K8sApiStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("testkit: the Kubernetes API stand-in's thread panicked");
        }
    }
}

/// A panic while holding the lock leaves consistent data here, so a poisoned lock is used.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server_tls(pki: &Pki) -> Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(pki.server_cert_path())
        .context("reading the server certificate")?
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the server certificate")?;
    let key =
        PrivateKeyDer::from_pem_file(pki.server_key_path()).context("reading the server key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(config)
}

/// Where a recorded object is served.
fn object_path(json: &Value) -> Result<String> {
    let field = |name: &str| {
        json.pointer(&format!("/metadata/{name}"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = field("name").ok_or_else(|| anyhow!("the object has no metadata.name"))?;
    let namespace =
        || field("namespace").ok_or_else(|| anyhow!("{name} has no metadata.namespace"));
    match json.get("kind").and_then(Value::as_str) {
        Some("Namespace") => Ok(format!("/api/v1/namespaces/{name}")),
        Some("Node") => Ok(format!("/api/v1/nodes/{name}")),
        Some("Pod") => Ok(format!("/api/v1/namespaces/{}/pods/{name}", namespace()?)),
        Some(kind @ ("VirtualMachineInstance" | "VirtualMachine")) => Ok(format!(
            "/apis/kubevirt.io/v1/namespaces/{}/{}s/{name}",
            namespace()?,
            kind.to_ascii_lowercase()
        )),
        other => bail!(
            "{name}: kind {other:?} is not served (only Pod, Namespace, Node and KubeVirt's \
             VirtualMachineInstance and VirtualMachine)"
        ),
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("testkit: k8s API stand-in: accept: {e}");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            // A client that gives up mid-handshake is not the stand-in's problem.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let (answer, delay) = answer(&state, &request);
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(answer)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The answer to `request` and how long to hold it back.
fn answer(state: &Mutex<State>, request: &Request<Incoming>) -> (Response<Full<Bytes>>, Duration) {
    let mut state = lock(state);
    (route(&mut state, request), state.delay)
}

fn route(state: &mut State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_string());
    state
        .requests
        .push(format!("{} {target}", request.method()));

    let expected = format!("Bearer {}", state.token);
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
    }
    if request.method() == hyper::Method::GET
        && let Some(object) = state.objects.get(&path)
    {
        return respond(StatusCode::OK, object);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "namespaces", _ns, "pods", name] => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
            Some(("pods", name)),
        ),
        ["api", "v1", "nodes", name] => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
            Some(("nodes", name)),
        ),
        ["api", "v1", "namespaces", name] => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{name}\" not found"),
            Some(("namespaces", name)),
        ),
        [
            "apis",
            "kubevirt.io",
            "v1",
            "namespaces",
            _ns,
            kind @ ("virtualmachineinstances" | "virtualmachines"),
            name,
        ] => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{kind}.kubevirt.io \"{name}\" not found"),
            Some((kind, name)),
        ),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

/// A `Status` object, as the API server sends with every error.
fn status(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<(&str, &str)>,
) -> Response<Full<Bytes>> {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let (Some((kind, name)), Some(map)) = (details, body.as_object_mut()) {
        map.insert("details".into(), json!({"name": name, "kind": kind}));
    }
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_served_where_their_kind_says() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "team-a"}});
        assert_eq!(
            object_path(&pod).unwrap(),
            "/api/v1/namespaces/team-a/pods/web"
        );
        let ns = json!({"kind": "Namespace", "metadata": {"name": "team-a"}});
        assert_eq!(object_path(&ns).unwrap(), "/api/v1/namespaces/team-a");
        let node = json!({"kind": "Node", "metadata": {"name": "node-1"}});
        assert_eq!(object_path(&node).unwrap(), "/api/v1/nodes/node-1");
        let service = json!({"kind": "Service", "metadata": {"name": "kubernetes"}});
        assert!(object_path(&service).is_err());
        let vmi = json!({"kind": "VirtualMachineInstance",
                         "metadata": {"name": "vm1", "namespace": "vms"}});
        assert_eq!(
            object_path(&vmi).unwrap(),
            "/apis/kubevirt.io/v1/namespaces/vms/virtualmachineinstances/vm1"
        );
        let vm = json!({"kind": "VirtualMachine", "metadata": {"name": "vm1", "namespace": "vms"}});
        assert_eq!(
            object_path(&vm).unwrap(),
            "/apis/kubevirt.io/v1/namespaces/vms/virtualmachines/vm1"
        );
        let nameless = json!({"kind": "Pod", "metadata": {"namespace": "default"}});
        assert!(object_path(&nameless).is_err());
    }

    #[test]
    fn the_recorded_fixtures_load() {
        let api = K8sApiStandIn::start(None, IpAddr::from([127, 0, 0, 1])).unwrap();
        api.load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/k8s"))
            .unwrap();
        let paths: Vec<String> = api.state().objects.keys().cloned().collect();
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/default",
                "/api/v1/namespaces/default/pods/fixed",
                "/api/v1/namespaces/default/pods/nginx",
                "/api/v1/namespaces/default/pods/noipam",
                "/api/v1/namespaces/team-a",
                "/api/v1/namespaces/team-a/pods/web",
                "/api/v1/nodes/node-1",
            ]
        );
        assert!(api.url().starts_with("https://127.0.0.1:"));
    }
}
