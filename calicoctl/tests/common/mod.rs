//! What calicoctl's integration tests share: an etcd with a calicoctl.cfg pointing at it
//! (plain or mutual TLS), calicoctl run as a process, and stored-value helpers.

// Test code: a failed unwrap is a failed test. Each test binary uses a part of this.
#![allow(clippy::unwrap_used, dead_code)]

use calico_datastore::EtcdConfig;
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_calicoctl");

pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// An etcd, a calicoctl.cfg pointing at it, and a scratch directory.
pub struct Fixture {
    pub etcd: testkit::Etcd,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
}

impl Fixture {
    pub fn start() -> Self {
        Self::with(testkit::Etcd::start().unwrap(), false)
    }

    pub fn start_tls() -> Self {
        Self::with(testkit::Etcd::start_tls().unwrap(), true)
    }

    pub fn with(etcd: testkit::Etcd, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("calicoctl.cfg");
        let mut text = format!(
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {{}}\nspec:\n  \
             datastoreType: etcdv3\n  etcdEndpoints: {}\n",
            etcd.endpoints()
        );
        if tls {
            text.push_str(&format!(
                "  etcdKeyFile: {}\n  etcdCertFile: {}\n  etcdCACertFile: {}\n",
                etcd.key_path().display(),
                etcd.cert_path().display(),
                etcd.ca_path().display()
            ));
        }
        std::fs::write(&cfg, text).unwrap();
        Fixture { etcd, dir, cfg }
    }

    /// Runs `calicoctl <args> -c <cfg>` with `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut all: Vec<&str> = args.to_vec();
        let cfg = self.cfg.to_str().unwrap();
        all.extend(["-c", cfg]);
        run_bin(&all, stdin, &[])
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert_eq!(
            out.code, 0,
            "calicoctl {args:?}: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    pub fn apply(&self, yaml: &str) -> Out {
        self.run(&["apply", "-f", "-"], Some(yaml))
    }

    pub fn store(&self) -> calico_datastore::Etcd {
        let mut cfg = EtcdConfig::new(vec![self.etcd.endpoints()]);
        if self.etcd.pki().is_some() {
            cfg.ca_cert_file = Some(self.etcd.ca_path());
            cfg.cert_file = Some(self.etcd.cert_path());
            cfg.key_file = Some(self.etcd.key_path());
        }
        calico_datastore::Etcd::connect(&cfg).unwrap()
    }

    pub fn dump(&self) -> Vec<(String, String)> {
        self.etcd.get_prefix("/calico/").unwrap()
    }

    pub fn get_json(&self, key: &str) -> Option<Value> {
        self.etcd
            .get(key)
            .unwrap()
            .map(|v| serde_json::from_str(&v).unwrap())
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn run_bin(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCD_") || k.starts_with("CALICO_") || k == "DATASTORE_TYPE" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    Out {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// A stored value with its uid and creationTimestamp checked and replaced by placeholders.
pub fn with_placeholders(mut v: Value) -> Value {
    let uid = v["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(uid.len(), 36, "{uid}");
    assert_eq!(&uid[14..15], "4", "UUID v4: {uid}");
    let ts = v["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
    v["metadata"]["uid"] = json!("UID");
    v["metadata"]["creationTimestamp"] = json!("TS");
    v
}
