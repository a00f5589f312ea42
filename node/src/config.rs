//! Settings from the environment, under Calico's names. A malformed or unknown value is a
//! [`ConfigError`] naming the variable, which `main` prints on one line before exiting 1.

use calico_datastore::EtcdConfig;
use std::path::PathBuf;

/// A variable with a value we cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }
}

/// Where the environment comes from: the process's, or a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// An environment of `pairs`, for tests.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The datastore settings: `DATASTORE_TYPE` (only `etcdv3` here), `ETCD_ENDPOINTS` and the
/// three `ETCD_*_FILE`s.
pub fn etcd_from_env(env: &dyn Env) -> Result<EtcdConfig, ConfigError> {
    match env.var("DATASTORE_TYPE").as_deref() {
        None | Some("etcdv3") => {}
        Some("kubernetes") => {
            return Err(ConfigError::new(
                "DATASTORE_TYPE",
                "kubernetes is not supported by this calico-node (etcdv3 only)",
            ));
        }
        Some(other) => {
            return Err(ConfigError::new(
                "DATASTORE_TYPE",
                format!("{other:?} is not a datastore type (etcdv3)"),
            ));
        }
    }
    let endpoints: Vec<String> = env
        .var("ETCD_ENDPOINTS")
        .unwrap_or_else(|| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ConfigError::new(
                "ETCD_ENDPOINTS",
                format!("{e:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let mut config = EtcdConfig::new(endpoints);
    config.ca_cert_file = env.var("ETCD_CA_CERT_FILE").map(PathBuf::from);
    config.cert_file = env.var("ETCD_CERT_FILE").map(PathBuf::from);
    config.key_file = env.var("ETCD_KEY_FILE").map(PathBuf::from);
    if config.cert_file.is_some() != config.key_file.is_some() {
        return Err(ConfigError::new(
            if config.cert_file.is_some() {
                "ETCD_KEY_FILE"
            } else {
                "ETCD_CERT_FILE"
            },
            "ETCD_CERT_FILE and ETCD_KEY_FILE go together",
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_env as env;

    #[test]
    fn etcd_defaults_to_local_plain() {
        let c = etcd_from_env(&env(&[])).expect("config");
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert!(c.cert_file.is_none());
    }

    #[test]
    fn a_bad_endpoint_names_the_variable() {
        let e = etcd_from_env(&env(&[("ETCD_ENDPOINTS", "127.0.0.1:2379")])).expect_err("bad");
        assert_eq!(e.variable, "ETCD_ENDPOINTS");
    }

    #[test]
    fn kubernetes_datastore_is_refused() {
        let e = etcd_from_env(&env(&[("DATASTORE_TYPE", "kubernetes")])).expect_err("bad");
        assert_eq!(e.variable, "DATASTORE_TYPE");
    }
}
