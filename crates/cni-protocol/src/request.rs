//! One plugin call: its environment and its network configuration.

use crate::env::{Command, Environment};
use crate::error::CniError;
use crate::result::CniResult;
use crate::version::{CniVersion, supported_versions};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A validated call: environment, raw stdin and the decoded config.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: Environment,
    /// The config bytes exactly as received (delegates get these unless the plugin edits them).
    pub stdin: Vec<u8>,
    /// The config as a JSON object.
    pub config: Map<String, Value>,
    pub cni_version: CniVersion,
    /// The network name (`name`), validated.
    pub network_name: String,
    /// The plugin `type`, as the runtime found us (may be empty for direct calls).
    pub plugin_type: String,
}

/// One attachment named in GC's valid list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Request {
    /// Decodes and validates the config for `env.command` (not VERSION, which the skeleton
    /// answers itself).
    pub fn new(env: Environment, stdin: Vec<u8>) -> Result<Self, CniError> {
        let config = decode_object(&stdin)?;
        let cni_version = config_version(&config)?;
        let needs = match env.command {
            Command::Check if !cni_version.supports_check() => Some("0.4.0"),
            Command::Gc | Command::Status if !cni_version.supports_gc_and_status() => Some("1.1.0"),
            _ => None,
        };
        if let Some(min) = needs {
            return Err(CniError::incompatible_version(format!(
                "{} needs cniVersion {min} or later, the config has {cni_version}",
                env.command
            )));
        }
        let network_name = match config.get("name") {
            Some(Value::String(n)) => n.clone(),
            None => return Err(CniError::invalid_config("missing network name")),
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "field \"name\" must be a string, got {other}"
                )));
            }
        };
        validate_network_name(&network_name)?;
        let plugin_type = config
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Request {
            env,
            stdin,
            config,
            cni_version,
            network_name,
            plugin_type,
        })
    }

    /// Decodes the whole config into a plugin's own type; a mismatch is code 7 naming the
    /// field serde complains about.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(Value::Object(self.config.clone()))
            .map_err(|e| CniError::invalid_config(format!("invalid network config: {e}")))
    }

    /// `prevResult`, in whatever version it was written.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        match self.config.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_json(v, self.cni_version)
                .map(Some)
                .map_err(|e| e.context("prevResult")),
        }
    }

    /// `runtimeConfig` (capability arguments) if the runtime sent any.
    pub fn runtime_config(&self) -> Option<&Map<String, Value>> {
        self.config.get("runtimeConfig").and_then(Value::as_object)
    }

    /// GC's list of attachments that are still valid. Reads `cni.dev/valid-attachments`, or
    /// the 1.1.0 tag's `cni.dev/attachments`. Missing both is an error: treating it as "none
    /// valid" would delete everything.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        let raw = self
            .config
            .get("cni.dev/valid-attachments")
            .or_else(|| self.config.get("cni.dev/attachments"))
            .ok_or_else(|| {
                CniError::invalid_config("GC needs cni.dev/valid-attachments in the config")
            })?;
        serde_json::from_value(raw.clone())
            .map_err(|e| CniError::decoding(format!("cni.dev/valid-attachments: {e}")))
    }

    /// The version string to echo in errors and results.
    pub fn version_str(&self) -> &'static str {
        self.cni_version.as_str()
    }
}

/// Parses stdin as a JSON object (code 6 otherwise).
pub fn decode_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CniError::decoding("network config is not a JSON object")),
        Err(e) => Err(CniError::decoding(format!(
            "cannot decode network config: {e}"
        ))),
    }
}

/// The config's `cniVersion` (code 1 when outside our set; absent means 0.2.0, as in Calico).
pub fn config_version(config: &Map<String, Value>) -> Result<CniVersion, CniError> {
    match config.get("cniVersion") {
        None | Some(Value::Null) => Ok(CniVersion::IMPLIED),
        Some(Value::String(s)) if s.is_empty() => Ok(CniVersion::IMPLIED),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            CniError::incompatible_version("incompatible CNI versions").with_details(format!(
                "config is {s:?}, plugin supports {:?}",
                supported_versions()
            ))
        }),
        Some(other) => Err(CniError::invalid_config(format!(
            "field \"cniVersion\" must be a string, got {other}"
        ))),
    }
}

/// Network names: alphanumeric first, then `[A-Za-z0-9_.-]`.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err(CniError::invalid_config("missing network name"))
    } else {
        Err(CniError::invalid_config(format!(
            "invalid characters in network name {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    fn env(cmd: &str) -> Environment {
        Environment::from_lookup(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => cmd,
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/run/netns/p",
                    "CNI_IFNAME" => "eth0",
                    "CNI_PATH" => "/opt/cni/bin",
                    _ => return None,
                }
                .to_string(),
            )
        })
        .expect("valid env")
    }

    fn req(cmd: &str, conf: Value) -> Result<Request, CniError> {
        Request::new(env(cmd), conf.to_string().into_bytes())
    }

    #[test]
    fn version_gate_per_verb() {
        for (cmd, ver, ok) in [
            ("ADD", "0.1.0", true),
            ("ADD", "1.1.0", true),
            ("CHECK", "0.3.1", false),
            ("CHECK", "0.4.0", true),
            ("GC", "1.0.0", false),
            ("GC", "1.1.0", true),
            ("STATUS", "1.0.0", false),
            ("STATUS", "1.1.0", true),
        ] {
            let r = req(cmd, json!({"cniVersion": ver, "name": "n", "type": "t"}));
            assert_eq!(r.is_ok(), ok, "{cmd} {ver}");
            if let Err(e) = r {
                assert_eq!(e.code, ErrorCode::INCOMPATIBLE_VERSION);
            }
        }
    }

    #[test]
    fn unsupported_version_is_code_1_and_absent_means_0_2_0() {
        let e = req("ADD", json!({"cniVersion":"1.2.0","name":"n"})).expect_err("1.2.0");
        assert_eq!(e.code, ErrorCode::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("1.2.0"));
        let r = req("ADD", json!({"name":"n"})).expect("implied");
        assert_eq!(r.cni_version, CniVersion::V0_2_0);
    }

    #[test]
    fn bad_json_is_code_6_and_bad_name_code_7() {
        let e = Request::new(env("ADD"), b"{not json".to_vec()).expect_err("json");
        assert_eq!(e.code, ErrorCode::DECODING_FAILURE);
        let e = Request::new(env("ADD"), b"[1]".to_vec()).expect_err("array");
        assert_eq!(e.code, ErrorCode::DECODING_FAILURE);
        for conf in [
            json!({"cniVersion":"1.0.0"}),
            json!({"cniVersion":"1.0.0","name":""}),
            json!({"cniVersion":"1.0.0","name":"has space"}),
            json!({"cniVersion":"1.0.0","name":7}),
        ] {
            let e = req("ADD", conf.clone()).expect_err("name");
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG, "{conf}");
        }
        let e = req("ADD", json!({"cniVersion":1,"name":"n"})).expect_err("version type");
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn prev_result_of_any_version() {
        let r = req(
            "ADD",
            json!({"cniVersion":"1.0.0","name":"n","prevResult":
                {"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}}),
        )
        .expect("valid");
        let prev = r.prev_result().expect("decodes").expect("present");
        assert_eq!(prev.ips[0].address.to_string(), "10.0.0.2/24");
        let r = req(
            "ADD",
            json!({"cniVersion":"0.3.1","name":"n","prevResult":
                {"ips":[{"version":"4","address":"10.0.0.3/24"}]}}),
        )
        .expect("valid");
        assert_eq!(r.prev_result().expect("ok").expect("some").ips.len(), 1);
    }

    #[test]
    fn gc_attachments_from_either_key() {
        let list = json!([{"containerID":"a","ifname":"eth0"}]);
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let r = req("GC", json!({"cniVersion":"1.1.0","name":"n", key: list})).expect("valid");
            assert_eq!(
                r.valid_attachments().expect("list"),
                [Attachment {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                }]
            );
        }
        let r = req("GC", json!({"cniVersion":"1.1.0","name":"n"})).expect("valid");
        assert_eq!(
            r.valid_attachments().expect_err("missing").code,
            ErrorCode::INVALID_NETWORK_CONFIG
        );
    }
}
