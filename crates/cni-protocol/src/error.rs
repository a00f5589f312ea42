//! The CNI error object and its codes.
//!
//! Every failure a plugin reports ends up as one [`CniError`]: printed as JSON on stdout,
//! exit status 1. Codes 1-99 are the spec's; 100 and up are ours.

use serde_json::{Map, Value, json};
use std::fmt;

/// A CNI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// 1: the config's version is not one we speak, or the verb needs a newer one.
    pub const INCOMPATIBLE_VERSION: ErrorCode = ErrorCode(1);
    /// 2: a config field we do not support (the message names the key and value).
    pub const UNSUPPORTED_FIELD: ErrorCode = ErrorCode(2);
    /// 3: the container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: ErrorCode = ErrorCode(3);
    /// 4: a missing or malformed `CNI_*` environment variable (named in the message).
    pub const INVALID_ENVIRONMENT: ErrorCode = ErrorCode(4);
    /// 5: I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: ErrorCode = ErrorCode(5);
    /// 6: the input could not be decoded (not JSON, wrong shape).
    pub const DECODING_FAILURE: ErrorCode = ErrorCode(6);
    /// 7: the network config is invalid.
    pub const INVALID_NETWORK_CONFIG: ErrorCode = ErrorCode(7);
    /// 11: transient; the runtime should retry later.
    pub const TRY_AGAIN_LATER: ErrorCode = ErrorCode(11);
    /// 50 (STATUS): the plugin cannot service ADD.
    pub const PLUGIN_NOT_AVAILABLE: ErrorCode = ErrorCode(50);
    /// 51 (STATUS): not available, and existing containers may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: ErrorCode = ErrorCode(51);

    /// 100: an internal failure with no more specific code.
    pub const INTERNAL: ErrorCode = ErrorCode(100);
    /// 101: the verb is not built yet in this binary.
    pub const NOT_IMPLEMENTED: ErrorCode = ErrorCode(101);
    /// 102: the datastore refused or failed a request (not a connectivity problem: that is 11).
    pub const DATASTORE: ErrorCode = ErrorCode(102);
    /// 103: the kernel refused a change (netlink, sysctl, firewall).
    pub const DATAPLANE: ErrorCode = ErrorCode(103);
    /// 104: no address could be assigned (pools exhausted, block limit, address taken).
    pub const ADDRESS_UNAVAILABLE: ErrorCode = ErrorCode(104);
    /// 105: a delegated plugin (e.g. IPAM) could not be found or run.
    pub const DELEGATION: ErrorCode = ErrorCode(105);
    /// 106: the state found does not match the state expected (CHECK).
    pub const CHECK_FAILED: ErrorCode = ErrorCode(106);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The most bytes of any one text field of a printed error object. Messages quote their
/// input (a bad `cniVersion`, a delegate's stderr), and input can be megabytes: a runtime
/// logs the whole object.
pub const MAX_FIELD_BYTES: usize = 4096;

/// `text` cut to [`MAX_FIELD_BYTES`] (at a character boundary), saying how much was cut.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_FIELD_BYTES {
        return text.into();
    }
    const MARK: usize = 40;
    let mut end = MAX_FIELD_BYTES - MARK;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end).into()
}

/// A CNI error: what the runtime receives on stdout when a plugin fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    /// Short, one line.
    pub msg: String,
    /// Longer explanation; may be empty.
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::INCOMPATIBLE_VERSION, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ENVIRONMENT, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_NETWORK_CONFIG, msg)
    }

    pub fn decoding(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::DECODING_FAILURE, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::IO_FAILURE, msg)
    }

    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::TRY_AGAIN_LATER, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, msg)
    }

    /// The answer of a binary whose verb is not built yet.
    pub fn not_implemented(plugin: &str, verb: &str) -> Self {
        Self::new(
            ErrorCode::NOT_IMPLEMENTED,
            format!("{plugin}: {verb} is not implemented yet"),
        )
    }

    /// The error object as the spec prints it. `cni_version` is the config's version string
    /// when it was readable.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), json!(bounded(cni_version)));
        obj.insert("code".into(), json!(self.code.0));
        obj.insert("msg".into(), json!(bounded(&self.msg)));
        if !self.details.is_empty() {
            obj.insert("details".into(), json!(bounded(&self.details)));
        }
        Value::Object(obj)
    }

    /// Reads an error object printed by another plugin (delegation).
    pub fn from_json(v: &Value) -> Option<Self> {
        let code = v.get("code")?.as_u64()?;
        Some(CniError {
            code: ErrorCode(u32::try_from(code).ok()?),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
    }

    /// Prefixes the message with context, keeping the code.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Shorthand for results whose error is a [`CniError`].
pub type CniResultOf<T> = Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_has_every_field_and_omits_empty_details() {
        let e = CniError::invalid_env("CNI_IFNAME is missing");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":4,"msg":"CNI_IFNAME is missing"})
        );
        let e = e.with_details("set it to the interface name");
        assert_eq!(
            e.to_json("0.3.1")["details"],
            json!("set it to the interface name")
        );
    }

    #[test]
    fn reads_a_delegate_error() {
        let v = json!({"cniVersion":"0.4.0","code":11,"msg":"etcd down","details":"x"});
        let e = CniError::from_json(&v).expect("error object");
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        assert_eq!(e.msg, "etcd down");
        assert_eq!(e.details, "x");
        assert!(CniError::from_json(&json!({"msg":"no code"})).is_none());
    }

    /// Bad-input finding #15: a 100k-character `cniVersion` was echoed whole (200 KB on
    /// stdout); every text field of the object is bounded.
    #[test]
    fn printed_fields_are_bounded() {
        let huge = "9".repeat(100_000);
        let e = CniError::incompatible_version(format!("unsupported version {huge:?}"))
            .with_details(format!("é{huge}"));
        let j = e.to_json(&huge);
        for field in ["cniVersion", "msg", "details"] {
            let text = j[field].as_str().expect("string");
            assert!(text.len() <= MAX_FIELD_BYTES, "{field}: {}", text.len());
            assert!(text.ends_with("bytes cut)"), "{field}");
        }
        assert!(
            j["msg"]
                .as_str()
                .expect("msg")
                .starts_with("unsupported version")
        );
        // Short fields are untouched.
        let j = CniError::io("short").to_json("1.0.0");
        assert_eq!(
            (j["msg"].as_str(), j["cniVersion"].as_str()),
            (Some("short"), Some("1.0.0"))
        );
    }
}
