//! The libcni runtime driver (`testdata/cni-driver`, Go, Debian's libcni), run the way a
//! container runtime runs plugins: configs loaded from a directory, chained, cached and
//! version-converted by libcni itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::node::SimNode;

/// The repository root (testkit lives at `crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the driver once per process (`scripts/build-cni-driver` does nothing when it is
/// up to date) and returns its path.
pub fn driver_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo_root();
            let out = root.join("target/testbin/cni-driver");
            let status = Command::new(root.join("scripts/build-cni-driver"))
                .arg(&out)
                .status()
                .map_err(|e| format!("running scripts/build-cni-driver: {e}"))?;
            if status.success() {
                Ok(out)
            } else {
                Err(format!("scripts/build-cni-driver failed ({status})"))
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A failed driver call: the plugin's error object when there was one, and the driver's
/// stderr.
#[derive(Debug, Clone)]
pub struct DriverError {
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
    pub stderr: String,
    pub exit: Option<i32>,
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "driver failed (exit {:?}, code {:?}): {} {}; stderr: {}",
            self.exit, self.code, self.msg, self.details, self.stderr
        )
    }
}

impl std::error::Error for DriverError {}

/// Per-call options: what a runtime passes besides the network and the netns.
#[derive(Debug, Clone, Default)]
pub struct CallOpts {
    /// `CNI_ARGS` (`K=V;K=V`).
    pub cni_args: Option<String>,
    /// `CAP_ARGS`: capability arguments such as `{"portMappings": [...]}`.
    pub cap_args: Option<Value>,
    /// `CNI_IFNAME` (default `eth0`).
    pub ifname: Option<String>,
    /// Overrides the container ID the driver derives from the netns path.
    pub container_id: Option<String>,
}

impl CallOpts {
    pub fn args(cni_args: &str) -> Self {
        CallOpts {
            cni_args: Some(cni_args.to_string()),
            ..CallOpts::default()
        }
    }
}

/// A container runtime: where its configs live, where it finds plugins, where it caches
/// results, and which namespaces it runs in.
pub struct Runtime<'a> {
    node: Option<&'a SimNode>,
    conf_dir: PathBuf,
    cni_path: PathBuf,
    cache_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl<'a> Runtime<'a> {
    /// A runtime on `node`: configs in the node's `/etc/cni/net.d`, cache in its
    /// `/var/lib/cni`, plugins from `cni_path` (a host path, visible inside the node).
    pub fn on_node(node: &'a SimNode, cni_path: &Path) -> Self {
        Runtime {
            node: Some(node),
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_path: cni_path.to_path_buf(),
            cache_dir: PathBuf::from("/var/lib/cni"),
            env: Vec::new(),
        }
    }

    /// A runtime in the test's own namespaces, with explicit directories.
    pub fn local(conf_dir: &Path, cni_path: &Path, cache_dir: &Path) -> Self {
        Runtime {
            node: None,
            conf_dir: conf_dir.to_path_buf(),
            cni_path: cni_path.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// Another libcni cache directory: a second runtime on the same node (containerd and
    /// Podman side by side), which knows nothing of the first one's attachments.
    pub fn with_cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = dir.to_path_buf();
        self
    }

    /// Extra environment for every call (seen by the plugins too).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The config directory as seen from the test (host side for a node).
    pub fn host_conf_dir(&self) -> Result<PathBuf> {
        match self.node {
            Some(node) => node.host_path(&self.conf_dir),
            None => Ok(self.conf_dir.clone()),
        }
    }

    /// Writes a config list into the config directory.
    pub fn install_conflist(&self, file_name: &str, conflist: &Value) -> Result<()> {
        let path = self.host_conf_dir()?.join(file_name);
        std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn command(&self) -> Result<Command> {
        let driver = driver_binary()?;
        let mut cmd = match self.node {
            Some(node) => node.command(&driver)?,
            None => Command::new(&driver),
        };
        for var in ["CNI_ARGS", "CAP_ARGS", "CNI_IFNAME", "CNI_CONTAINERID"] {
            cmd.env_remove(var);
        }
        cmd.env("NETCONFPATH", &self.conf_dir)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_CACHE_DIR", &self.cache_dir);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    fn run(&self, args: &[&str], opts: &CallOpts) -> Result<Output> {
        let mut cmd = self.command()?;
        cmd.args(args);
        if let Some(a) = &opts.cni_args {
            cmd.env("CNI_ARGS", a);
        }
        if let Some(c) = &opts.cap_args {
            cmd.env("CAP_ARGS", c.to_string());
        }
        if let Some(i) = &opts.ifname {
            cmd.env("CNI_IFNAME", i);
        }
        if let Some(id) = &opts.container_id {
            cmd.env("CNI_CONTAINERID", id);
        }
        cmd.output()
            .with_context(|| format!("running the cni driver {args:?}"))
    }

    /// Runs the driver; `Ok(stdout)` on success, the error object otherwise. The outer
    /// `Result` fails only when the driver could not be run at all.
    pub fn call(
        &self,
        args: &[&str],
        opts: &CallOpts,
    ) -> Result<std::result::Result<String, DriverError>> {
        let out = self.run(args, opts)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Ok(Ok(stdout));
        }
        let obj: Option<Value> = stdout
            .lines()
            .find_map(|l| serde_json::from_str(l.trim()).ok());
        let field = |k: &str| {
            obj.as_ref()
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(Err(DriverError {
            code: obj
                .as_ref()
                .and_then(|o| o.get("code"))
                .and_then(Value::as_u64),
            msg: field("msg"),
            details: field("details"),
            stderr,
            exit: out.status.code(),
        }))
    }

    /// `add <net> <netns>`: the result JSON.
    pub fn add(
        &self,
        net: &str,
        netns: &Path,
        opts: &CallOpts,
    ) -> Result<std::result::Result<Value, DriverError>> {
        Ok(self
            .call(&["add", net, &netns.to_string_lossy()], opts)?
            .map(|out| serde_json::from_str(&out).unwrap_or(Value::String(out))))
    }

    pub fn check(
        &self,
        net: &str,
        netns: &Path,
        opts: &CallOpts,
    ) -> Result<std::result::Result<(), DriverError>> {
        Ok(self
            .call(&["check", net, &netns.to_string_lossy()], opts)?
            .map(|_| ()))
    }

    pub fn del(
        &self,
        net: &str,
        netns: &Path,
        opts: &CallOpts,
    ) -> Result<std::result::Result<(), DriverError>> {
        Ok(self
            .call(&["del", net, &netns.to_string_lossy()], opts)?
            .map(|_| ()))
    }

    /// `gc <net> <valid netns>...`: everything not attached to one of `valid` is stale.
    pub fn gc(
        &self,
        net: &str,
        valid: &[&Path],
        opts: &CallOpts,
    ) -> Result<std::result::Result<(), DriverError>> {
        let valid: Vec<String> = valid.iter().map(|p| p.to_string_lossy().into()).collect();
        let mut args = vec!["gc", net];
        args.extend(valid.iter().map(String::as_str));
        Ok(self.call(&args, opts)?.map(|_| ()))
    }

    pub fn status(&self, net: &str) -> Result<std::result::Result<(), DriverError>> {
        Ok(self
            .call(&["status", net], &CallOpts::default())?
            .map(|_| ()))
    }

    /// libcni's VERSION query of a plugin type.
    pub fn version(&self, plugin_type: &str) -> Result<std::result::Result<Value, DriverError>> {
        Ok(self
            .call(&["version", plugin_type], &CallOpts::default())?
            .map(|out| serde_json::from_str(&out).unwrap_or(Value::String(out))))
    }
}
