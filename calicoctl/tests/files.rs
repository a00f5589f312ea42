//! calicoctl's file arguments (`-f`, `--config`) against what a path may name besides a
//! file of resources: bad-input finding #9 (`/dev/zero` read until memory ran out, a FIFO
//! blocked for ever). Each is refused at once, exit 1, naming the argument; nothing is
//! contacted (the config's etcd is a closed port, so a refusal cannot be a connection error).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_calicoctl");

/// A scratch directory with a FIFO (no writer), a directory, a sparse 20 MiB file and a
/// calicoctl.cfg naming an etcd nobody serves.
struct Paths {
    dir: tempfile::TempDir,
}

impl Paths {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let made = Command::new("mkfifo")
            .arg(dir.path().join("fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        std::fs::File::create(dir.path().join("huge"))
            .unwrap()
            .set_len(20 << 20)
            .unwrap();
        std::fs::write(
            dir.path().join("calicoctl.cfg"),
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\nspec:\n  \
             datastoreType: etcdv3\n  etcdEndpoints: http://127.0.0.1:1\n",
        )
        .unwrap();
        Paths { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The bad paths, and what the refusal says of each.
    fn bad(&self) -> Vec<(PathBuf, &'static str)> {
        vec![
            (PathBuf::from("/dev/zero"), "a character device"),
            (self.path("fifo"), "a FIFO"),
            (self.path("dir"), "a directory"),
            (self.path("huge"), "larger than"),
        ]
    }
}

/// Runs calicoctl, killed if it outlives 10 s (the assertion is far below that).
fn run(args: &[&str]) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("ETCD_ENDPOINTS")
        .env_remove("CALICO_ETCD_ENDPOINTS")
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, started.elapsed())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_resource_file_that_is_no_small_regular_file_is_refused_at_once() {
    let paths = Paths::new();
    let cfg = paths.path("calicoctl.cfg");
    for verb in ["apply", "create", "delete"] {
        for (bad, why) in paths.bad() {
            let (code, text, took) = run(&[verb, "-f", s(&bad), "-c", s(&cfg)]);
            assert_eq!(code, 1, "{verb} -f {}: {text}", bad.display());
            assert!(
                text.contains(&format!("-f {}", bad.display())) && text.contains(why),
                "{verb} -f {}: {text}",
                bad.display()
            );
            assert!(
                took < Duration::from_secs(2),
                "{verb} -f {}: {took:?}",
                bad.display()
            );
        }
    }
    // A missing file keeps Go's words.
    let (code, text, _) = run(&["apply", "-f", "/nonexistent.yaml", "-c", s(&cfg)]);
    assert_eq!(code, 1);
    assert!(
        text.contains("failed to execute command: open /nonexistent.yaml: no such file"),
        "{text}"
    );
}

#[test]
fn a_config_file_that_is_no_small_regular_file_is_refused_at_once() {
    let paths = Paths::new();
    for (bad, why) in paths.bad() {
        let (code, text, took) = run(&["get", "ippools", "-c", s(&bad)]);
        assert_eq!(code, 1, "--config {}: {text}", bad.display());
        assert!(
            text.contains(&format!("--config {}", bad.display())) && text.contains(why),
            "--config {}: {text}",
            bad.display()
        );
        assert!(
            took < Duration::from_secs(2),
            "--config {}: {took:?}",
            bad.display()
        );
    }
}
