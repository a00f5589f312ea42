//! `etcdctl` with the right endpoints, TLS flags and network namespace.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::process::{enter_namespaces, run_checked};

/// How to reach an etcd with `etcdctl` (v3 API). Cheap to clone; every call runs one
/// `etcdctl` process and fails if it exits non-zero.
#[derive(Clone, Debug)]
pub struct Etcdctl {
    endpoints: String,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    netns: Option<PathBuf>,
    timeout: Option<Duration>,
}

impl Etcdctl {
    /// Talks to `endpoints` (comma-separated URLs) without TLS material.
    pub fn new(endpoints: impl Into<String>) -> Self {
        Self {
            endpoints: endpoints.into(),
            ca: None,
            identity: None,
            netns: None,
            timeout: None,
        }
    }

    /// Verifies the server against this CA (`--cacert`).
    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// Presents this client certificate (`--cert`, `--key`).
    pub fn with_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Runs `etcdctl` inside the network namespace at `path` (`/run/netns/<name>`).
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Bounds both connecting and each request (default 2 s and 5 s). A refused TLS
    /// handshake is only reported when the request times out, so tests expecting a refusal
    /// shorten this.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// An `etcdctl` command with the global flags set; append the subcommand.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new("etcdctl");
        if let Some(path) = &self.netns {
            let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            enter_namespaces(&mut cmd, ns.into(), None);
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg(format!("--dial-timeout={}ms", self.dial_ms()))
            .arg(format!("--command-timeout={}ms", self.command_ms()));
        if let Some(ca) = &self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some((cert, key)) = &self.identity {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        Ok(cmd)
    }

    /// Runs `etcdctl <args>` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run_checked(self.command()?.args(args))
    }

    /// Puts `key` = `value`.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["put", "--", key, value]).map(drop)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .range(&["get", "-w", "json", "--", key])?
            .into_iter()
            .next()
            .map(|(_, v)| v))
    }

    /// Every key starting with `prefix`, with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.range(&["get", "--prefix", "-w", "json", "--", prefix])
    }

    /// Deletes every key starting with `prefix`; returns how many were deleted.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        #[derive(Deserialize)]
        struct Deleted {
            #[serde(default)]
            deleted: u64,
        }
        let out = self.run(&["del", "--prefix", "-w", "json", "--", prefix])?;
        let parsed: Deleted = serde_json::from_str(&out).context("parsing etcdctl del")?;
        Ok(parsed.deleted)
    }

    /// True when `etcdctl endpoint health` succeeds for every endpoint.
    pub fn is_healthy(&self) -> bool {
        self.run(&["endpoint", "health"]).is_ok()
    }

    fn dial_ms(&self) -> u128 {
        self.timeout.map_or(2000, |t| t.as_millis())
    }

    fn command_ms(&self) -> u128 {
        self.timeout.map_or(5000, |t| t.as_millis())
    }

    fn range(&self, args: &[&str]) -> Result<Vec<(String, String)>> {
        #[derive(Deserialize)]
        struct Range {
            #[serde(default)]
            kvs: Vec<Kv>,
        }
        #[derive(Deserialize)]
        struct Kv {
            key: String,
            // etcd omits empty values.
            #[serde(default)]
            value: String,
        }
        let out = self.run(args)?;
        let range: Range = serde_json::from_str(&out).context("parsing etcdctl get")?;
        range
            .kvs
            .into_iter()
            .map(|kv| Ok((decode(&kv.key)?, decode(&kv.value)?)))
            .collect()
    }
}

/// etcdctl's JSON output carries keys and values in base64.
fn decode(b64: &str) -> Result<String> {
    let bytes = BASE64
        .decode(b64)
        .context("etcdctl returned invalid base64")?;
    String::from_utf8(bytes).context("etcd value is not UTF-8")
}
