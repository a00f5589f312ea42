//! What can go wrong, sorted by what the caller does about it.

/// A failed [`fetch_pod_and_namespace`](crate::fetch_pod_and_namespace). Every message
/// names the API server (or, before one is known, the kubeconfig).
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No connection, or no answer in time, or the server said it is overloaded or not
    /// ready (429, 503, 504). Transient: a CNI plugin reports "try again later".
    #[error("cannot reach the Kubernetes API server at {url}: {message}")]
    Unreachable { url: String, message: String },

    /// 401 or 403: the credentials were refused.
    #[error(
        "the Kubernetes API server at {url} refused the credentials: {message}; \
         the token in the kubeconfig may have expired (calico-node rewrites the file when \
         it rotates the token)"
    )]
    Unauthorized {
        url: String,
        code: u16,
        message: String,
    },

    /// 404 for the object: `kind` is `"Pod"`, `"Namespace"`, `"Node"`,
    /// `"VirtualMachineInstance"` or `"VirtualMachine"`, `name` is `ns/name`, `ns` for a
    /// Namespace, or the node's name.
    #[error("{kind} {name} not found on the Kubernetes API server at {url}")]
    NotFound {
        kind: &'static str,
        name: String,
        url: String,
    },

    /// The kubeconfig or an override is unusable: unreadable or invalid file, no server,
    /// no current context, an unreadable certificate, key or CA.
    #[error("Kubernetes client configuration: {0}")]
    Config(String),

    /// Anything else: a TLS failure, another HTTP status, an answer that is not the object.
    #[error("Kubernetes API server at {url}: {message}")]
    Other { url: String, message: String },
}

/// `e` and its sources, each once (kube's messages often repeat their source).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
