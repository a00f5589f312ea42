//! Where the datastore is: calicoctl's `CalicoAPIConfig` file, or the environment.
//!
//! As Calico (`libcalico-go/lib/apiconfig`, `commands/clientmgr`): the file given with
//! `-c/--config` (default `/etc/calico/calicoctl.cfg`) is read if it exists; if the default
//! does not exist the environment is used; a missing non-default file is an error. The file
//! is strict YAML or JSON. From the environment each setting is read from `CALICO_<NAME>`
//! first, then `<NAME>`. Only the etcdv3 datastore is supported here.

use crate::yaml;
use calico_datastore::EtcdConfig;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/calico/calicoctl.cfg";

/// Why no datastore connection could be configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Calico prints this one on stdout.
    #[error("Error reading config file: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Invalid(String),
}

/// The settings of `CalicoAPIConfigSpec` (JSON names as in the file).
const SPEC_FIELDS: &[&str] = &[
    "datastoreType",
    "etcdEndpoints",
    "etcdDiscoverySrv",
    "etcdUsername",
    "etcdPassword",
    "etcdKeyFile",
    "etcdCertFile",
    "etcdCACertFile",
    "etcdKey",
    "etcdCert",
    "etcdCACert",
    "kubeconfig",
    "k8sAPIEndpoint",
    "k8sKeyFile",
    "k8sCertFile",
    "k8sCAFile",
    "k8sAPIToken",
    "k8sInsecureSkipTLSVerify",
    "k8sDisableNodePoll",
    "usePodCIDR",
    "kubeconfigInline",
    "k8sClientQPS",
    "k8sClientBurst",
    "k8sCurrentContext",
    "calicoAPIGroup",
];

/// Environment variables of the settings (without the `CALICO_` prefix).
const ENV_FIELDS: &[(&str, &str)] = &[
    ("datastoreType", "DATASTORE_TYPE"),
    ("etcdEndpoints", "ETCD_ENDPOINTS"),
    ("etcdDiscoverySrv", "ETCD_DISCOVERY_SRV"),
    ("etcdUsername", "ETCD_USERNAME"),
    ("etcdPassword", "ETCD_PASSWORD"),
    ("etcdKeyFile", "ETCD_KEY_FILE"),
    ("etcdCertFile", "ETCD_CERT_FILE"),
    ("etcdCACertFile", "ETCD_CA_CERT_FILE"),
];

/// The datastore settings as read, before they are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiConfigSpec {
    pub fields: Map<String, Value>,
}

impl ApiConfigSpec {
    fn text(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    /// The etcd connection these settings describe.
    pub fn etcd_config(&self) -> Result<EtcdConfig, ConfigError> {
        let endpoints: Vec<String> = self
            .text("etcdEndpoints")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut ds = self.text("datastoreType");
        if ds.is_empty() {
            ds = if endpoints.is_empty() {
                "kubernetes".into()
            } else {
                "etcdv3".into()
            };
        }
        match ds.as_str() {
            "etcdv3" => {}
            "kubernetes" if endpoints.is_empty() && self.text("datastoreType").is_empty() => {
                return Err(ConfigError::Invalid(
                    "no datastore configured: set etcdEndpoints in the config file or \
                     ETCD_ENDPOINTS (only the etcdv3 datastore is supported)"
                        .into(),
                ));
            }
            "kubernetes" => {
                return Err(ConfigError::Invalid(
                    "datastoreType 'kubernetes' is not supported: this calicoctl supports only \
                     the etcdv3 datastore"
                        .into(),
                ));
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown datastoreType '{other}': only etcdv3 is supported"
                )));
            }
        }
        if !self.text("etcdDiscoverySrv").is_empty() {
            if !endpoints.is_empty() {
                return Err(ConfigError::Invalid(
                    "multiple discovery or bootstrap options specified, use either \
                     \"etcdEndpoints\" or \"etcdDiscoverySrv\""
                        .into(),
                ));
            }
            return Err(ConfigError::Invalid(
                "etcdDiscoverySrv is not supported: list the endpoints in etcdEndpoints".into(),
            ));
        }
        for (field, instead) in [
            ("etcdUsername", "client certificates"),
            ("etcdPassword", "client certificates"),
            ("etcdKey", "etcdKeyFile"),
            ("etcdCert", "etcdCertFile"),
            ("etcdCACert", "etcdCACertFile"),
        ] {
            if !self.text(field).is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{field} is not supported: use {instead}"
                )));
            }
        }
        if endpoints.is_empty() {
            return Err(ConfigError::Invalid("no etcd endpoints specified".into()));
        }
        let path = |name: &str| {
            Some(self.text(name))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let mut cfg = EtcdConfig::new(endpoints);
        cfg.key_file = path("etcdKeyFile");
        cfg.cert_file = path("etcdCertFile");
        cfg.ca_cert_file = path("etcdCACertFile");
        Ok(cfg)
    }
}

/// Parses a `CalicoAPIConfig` file's content.
pub fn parse_file(text: &str) -> Result<ApiConfigSpec, String> {
    let wrap = |e: String| format!("failed to parse config as YAML/JSON: {e}");
    let mut docs = yaml::parse_documents(text).map_err(wrap)?;
    let doc = if docs.is_empty() {
        Value::Object(Map::new())
    } else {
        docs.swap_remove(0)
    };
    let Value::Object(top) = doc else {
        return Err(wrap("the config is not a mapping".into()));
    };
    for k in top.keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            return Err(wrap(unknown_field(k)));
        }
    }
    let api_version = top.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if api_version != "projectcalico.org/v3" {
        return Err(format!(
            "invalid config file: unknown APIVersion '{api_version}'"
        ));
    }
    let kind = top.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "CalicoAPIConfig" {
        return Err(format!(
            "invalid config file: expected kind 'CalicoAPIConfig', got '{kind}'"
        ));
    }
    let spec = match top.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(wrap("spec must be a mapping".into())),
    };
    for k in spec.keys() {
        if !SPEC_FIELDS.contains(&k.as_str()) {
            return Err(wrap(unknown_field(k)));
        }
    }
    Ok(ApiConfigSpec { fields: spec })
}

fn unknown_field(name: &str) -> String {
    format!("field in document is not recognized or is in the wrong location: {name}")
}

/// The settings from the environment: `CALICO_<NAME>` if set, else `<NAME>`.
pub fn from_env(env: impl Fn(&str) -> Option<String>) -> ApiConfigSpec {
    let mut fields = Map::new();
    for (field, var) in ENV_FIELDS {
        if let Some(v) = env(&format!("CALICO_{var}")).or_else(|| env(var)) {
            fields.insert((*field).to_string(), Value::String(v));
        }
    }
    ApiConfigSpec { fields }
}

/// The datastore settings for a command run with `-c <path>` (or the default path).
pub fn load(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ApiConfigSpec, ConfigError> {
    if !path.exists() {
        if path != Path::new(DEFAULT_CONFIG_PATH) {
            return Err(ConfigError::Unreadable(path.display().to_string()));
        }
        return Ok(from_env(env));
    }
    // Bounded and never blocking (calico-fsbound): `--config /dev/zero` or a FIFO is refused.
    let text = calico_fsbound::read_config_string(path, calico_fsbound::DOCUMENT_LIMIT, "--config")
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    parse_file(&text)
        .map_err(|e| ConfigError::Invalid(format!("syntax error in {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn file_with_tls_paths() {
        let spec = parse_file(
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\nspec:\n  \
             datastoreType: etcdv3\n  etcdEndpoints: https://10.0.0.1:2379, https://10.0.0.2:2379\n  \
             etcdKeyFile: /k.pem\n  etcdCertFile: /c.pem\n  etcdCACertFile: /ca.pem\n",
        )
        .expect("parses");
        let cfg = spec.etcd_config().expect("etcd");
        assert_eq!(
            cfg.endpoints,
            ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
        assert_eq!(cfg.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(cfg.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(cfg.ca_cert_file, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn file_errors_are_calicos() {
        let bad_kind = parse_file("apiVersion: projectcalico.org/v3\nkind: Foo\n").unwrap_err();
        assert_eq!(
            bad_kind,
            "invalid config file: expected kind 'CalicoAPIConfig', got 'Foo'"
        );
        let bad_version = parse_file("apiVersion: v1\nkind: CalicoAPIConfig\n").unwrap_err();
        assert_eq!(bad_version, "invalid config file: unknown APIVersion 'v1'");
        let unknown = parse_file(
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  etcdEndpoint: x\n",
        )
        .unwrap_err();
        assert_eq!(
            unknown,
            "failed to parse config as YAML/JSON: field in document is not recognized or is in \
             the wrong location: etcdEndpoint"
        );
        let k8s = parse_file(
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  datastoreType: kubernetes\n",
        )
        .expect("parses");
        let err = k8s.etcd_config().unwrap_err().to_string();
        assert!(err.contains("only") && err.contains("etcdv3"), "{err}");
    }

    #[test]
    fn environment_prefers_calico_prefix() {
        let spec = from_env(env_of(&[
            ("ETCD_ENDPOINTS", "http://plain:2379"),
            ("CALICO_ETCD_ENDPOINTS", "http://prefixed:2379"),
            ("ETCD_CA_CERT_FILE", "/ca.pem"),
        ]));
        let cfg = spec.etcd_config().expect("etcd");
        assert_eq!(cfg.endpoints, ["http://prefixed:2379"]);
        assert_eq!(cfg.ca_cert_file, Some(PathBuf::from("/ca.pem")));
        let none = from_env(env_of(&[])).etcd_config().unwrap_err().to_string();
        assert!(none.contains("ETCD_ENDPOINTS"), "{none}");
        let k8s = from_env(env_of(&[("DATASTORE_TYPE", "kubernetes")]))
            .etcd_config()
            .unwrap_err()
            .to_string();
        assert!(k8s.contains("only the etcdv3"), "{k8s}");
    }

    #[test]
    fn missing_files() {
        let err = load(Path::new("/nonexistent/calicoctl.cfg"), env_of(&[])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Unreadable("/nonexistent/calicoctl.cfg".into())
        );
        assert_eq!(
            err.to_string(),
            "Error reading config file: /nonexistent/calicoctl.cfg"
        );
    }
}
