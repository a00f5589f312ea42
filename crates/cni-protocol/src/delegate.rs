//! Running another plugin (an IPAM plugin, usually) the way the spec says a runtime does:
//! found by `type` in `CNI_PATH`, same environment but `CNI_COMMAND`, config on stdin.
//!
//! A delegate is not ours, so every call is bounded ([`Limits`]): the config is written
//! while the output is drained (no pipe deadlock), the answer must come within a deadline
//! (then the delegate's process group is killed) and within a size. An error object on
//! stdout is an error whatever the exit status, and the plugin never delegates to itself.

use crate::env::{Command, Environment};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::CniVersion;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// Finds `plugin_type` in the search path: the first regular file of that name wins.
pub fn find_in_path(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type {plugin_type:?}"
        )));
    }
    if path.is_empty() {
        return Err(CniError::invalid_env(format!(
            "CNI_PATH is empty, so plugin {plugin_type:?} cannot be found"
        )));
    }
    path.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::DELEGATION,
                format!("failed to find plugin {plugin_type:?} in CNI_PATH {path:?}"),
            )
        })
}

/// Runs `plugin_type` with `command` and `stdin`, with the call's `CNI_*` variables as
/// `env` holds them (so a caller may adjust `CNI_ARGS`, e.g. to ask for `IP=`). Returns the
/// plugin's stdout on success, its error object on failure.
pub fn exec(
    env: &Environment,
    command: Command,
    plugin_type: &str,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let plugin = find_in_path(plugin_type, &env.path)?;
    exec_path(env, command, &plugin, stdin)
}

/// Bounds on one delegate call: the plugin must answer within `timeout` (then its process
/// group is killed), print at most `stdout_max` bytes of result, and only the last
/// `stderr_tail` bytes of its logs are kept (relayed to our stderr, and quoted in the error
/// when it fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub stdout_max: usize,
    pub stderr_tail: usize,
}

impl Limits {
    /// 60 s, 16 MiB of result, 64 KiB of logs: a delegate (IPAM) answers in milliseconds,
    /// and a result is a few hundred bytes. Go's `invoke.ExecPlugin` has no bound at all; a
    /// runtime's own timeout (kubelet's) would then leave us, and the delegate, running.
    pub const DEFAULT: Limits = Limits {
        timeout: Duration::from_secs(60),
        stdout_max: 16 << 20,
        stderr_tail: 64 << 10,
    };
}

/// As [`exec`], with the plugin's path already known.
pub fn exec_path(
    env: &Environment,
    command: Command,
    plugin: &Path,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    exec_path_with(env, command, plugin, stdin, Limits::DEFAULT)
}

/// What the threads around a running delegate report.
enum Event {
    Stdout(std::io::Result<Vec<u8>>),
    /// Past [`Limits::stdout_max`]: reading stopped.
    StdoutTooLarge,
    /// Stderr reached its end; what it said is in the shared tail.
    StderrDone,
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// As [`exec_path`], within `limits`. The config is written on a thread of its own while
/// stdout and stderr are drained on two others (a delegate may write before it reads, as
/// Go's exec allows, and neither side may wait on the other); the delegate runs in a process
/// group of its own, killed whole when the time is up or it prints too much.
pub fn exec_path_with(
    env: &Environment,
    command: Command,
    plugin: &Path,
    stdin: &[u8],
    limits: Limits,
) -> Result<Vec<u8>, CniError> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail = |what: &str, e: std::io::Error| {
        CniError::new(
            ErrorCode::DELEGATION,
            format!("{what} {}: {e}", plugin.display()),
        )
    };
    refuse_self(plugin)?;
    let joined_path = env
        .path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let mut child = std::process::Command::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env(
            "CNI_NETNS",
            env.netns
                .as_deref()
                .map(|p| p.as_os_str())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", env.args.render())
        .env("CNI_PATH", joined_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail("cannot run", e))?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let kill_group = || {
        // The delegate and whatever it started; ESRCH (all gone) is fine.
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    let (events, received) = mpsc::channel();
    // The threads own what they use and are not joined: one blocked on a pipe that a
    // grandchild keeps open must not hold up our answer past the deadline.
    if let Some(mut input) = child.stdin.take() {
        let config = stdin.to_vec();
        std::thread::spawn(move || {
            // A plugin may exit without reading its config (failing early); its answer is
            // what counts, so a closed pipe is not our error.
            if let Err(e) = input.write_all(&config)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                log::warn!("writing the config to the delegate: {e}");
            }
        });
    }
    let mut pending = 1;
    if let Some(out) = child.stdout.take() {
        pending += 1;
        let tx = events.clone();
        let max = limits.stdout_max;
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let got = out.take(max as u64 + 1).read_to_end(&mut kept);
            let _ = tx.send(match got {
                Ok(_) if kept.len() > max => Event::StdoutTooLarge,
                Ok(_) => Event::Stdout(Ok(kept)),
                Err(e) => Event::Stdout(Err(e)),
            });
        });
    }
    // Shared rather than sent at the end, so that a delegate killed at the deadline still
    // has its last words quoted.
    let stderr_tail = std::sync::Arc::new(Mutex::new(std::collections::VecDeque::new()));
    if let Some(mut err) = child.stderr.take() {
        pending += 1;
        let tx = events.clone();
        let tail = limits.stderr_tail;
        let kept = std::sync::Arc::clone(&stderr_tail);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                        kept.extend(&buf[..n]);
                        let over = kept.len().saturating_sub(tail);
                        kept.drain(..over);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Event::StderrDone);
        });
    }
    std::thread::spawn(move || {
        let _ = events.send(Event::Exited(child.wait()));
    });
    let deadline = Instant::now() + limits.timeout;
    let (mut stdout, mut status) = (None, None);
    let stderr = || -> Vec<u8> {
        let kept = stderr_tail.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter().copied().collect()
    };
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(Event::Stdout(out)) => stdout = Some(out),
            Ok(Event::StdoutTooLarge) => {
                kill_group();
                return Err(CniError::new(
                    ErrorCode::DELEGATION,
                    format!(
                        "plugin {name} printed more than {} bytes: killed",
                        limits.stdout_max
                    ),
                ));
            }
            Ok(Event::StderrDone) => {}
            Ok(Event::Exited(s)) => status = Some(s.map_err(|e| fail("cannot wait for", e))?),
            Err(_) => {
                kill_group();
                return Err(CniError::new(
                    ErrorCode::DELEGATION,
                    format!(
                        "plugin {name} timed out after {}s: killed",
                        limits.timeout.as_secs_f64()
                    ),
                )
                .with_details(String::from_utf8_lossy(&stderr()).trim().to_string()));
            }
        }
        pending -= 1;
    }
    // The delegate's logs stay visible as ours.
    let stderr = stderr();
    let _ = std::io::stderr().write_all(&stderr);
    let stdout = stdout
        .unwrap_or_else(|| Ok(Vec::new()))
        .map_err(|e| fail("cannot read the answer of", e))?;
    let Some(status) = status else {
        return Err(CniError::internal(format!("plugin {name}: no exit status")));
    };
    // An error object is the delegate's error whatever its exit status (a result never has
    // a `code`); Go's skel would never print one with status 0, but a delegate is not ours.
    let reported = serde_json::from_slice::<serde_json::Value>(&stdout)
        .ok()
        .filter(|v| v.get("code").is_some())
        .map(|v| {
            CniError::from_json(&v).unwrap_or_else(|| {
                CniError::new(
                    ErrorCode::DELEGATION,
                    format!("plugin {name} printed an unreadable error: {v}"),
                )
            })
        });
    if let Some(e) = reported {
        return Err(e);
    }
    if status.success() {
        return Ok(stdout);
    }
    Err(CniError::new(
        ErrorCode::DELEGATION,
        format!("plugin {name} failed ({status})"),
    )
    .with_details(String::from_utf8_lossy(&stderr).trim().to_string()))
}

/// Refuses to run this very binary as a delegate (`ipam.type` naming the plugin itself):
/// each copy would run the next, without end (bad-input finding #10). Compared by device
/// and inode, so a symlink or a hard link under another name is caught too.
fn refuse_self(plugin: &Path) -> Result<(), CniError> {
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(plugin),
        std::fs::metadata("/proc/self/exe"),
    ) else {
        return Ok(());
    };
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(CniError::invalid_config(format!(
            "plugin {} is this plugin itself: it delegates to itself",
            plugin.display()
        )));
    }
    Ok(())
}

/// Delegated ADD: the delegate's result, read in whatever version it printed.
pub fn add(
    env: &Environment,
    plugin_type: &str,
    stdin: &[u8],
    version: CniVersion,
) -> Result<CniResult, CniError> {
    let mut add_env = env.clone();
    add_env.command = Command::Add;
    let out = exec(&add_env, Command::Add, plugin_type, stdin)?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::decoding(format!(
            "plugin {plugin_type} printed an unreadable result: {e}"
        ))
    })?;
    CniResult::from_json(&v, version).map_err(|e| e.context(format!("plugin {plugin_type}")))
}

/// Delegated IPAM ADD: as [`add`], and a result without any address is a failure (mirrors
/// Calico's utils.go `AddIPAM`: "IPAM plugin returned missing IP config"), so a pod never
/// comes up without an address.
pub fn add_ipam(
    env: &Environment,
    plugin_type: &str,
    stdin: &[u8],
    version: CniVersion,
) -> Result<CniResult, CniError> {
    let result = add(env, plugin_type, stdin, version)?;
    if result.ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::DELEGATION,
            "IPAM plugin returned missing IP config",
        )
        .with_details(format!(
            "plugin {plugin_type} answered ADD without any address"
        )));
    }
    Ok(result)
}

/// Delegated DEL, CHECK, GC or STATUS: success or the delegate's error.
pub fn run(
    env: &Environment,
    command: Command,
    plugin_type: &str,
    stdin: &[u8],
) -> Result<(), CniError> {
    exec(env, command, plugin_type, stdin).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn env_with_path(dirs: &[&Path]) -> Environment {
        let path = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        Environment::from_lookup(|k| {
            Some(match k {
                "CNI_COMMAND" => "ADD".to_string(),
                "CNI_CONTAINERID" => "ctr1".to_string(),
                "CNI_NETNS" => "/run/netns/x".to_string(),
                "CNI_IFNAME" => "eth0".to_string(),
                "CNI_ARGS" => "A=1".to_string(),
                "CNI_PATH" => path.clone(),
                _ => return None,
            })
        })
        .expect("env")
    }

    /// Removed on drop, also when an assertion fails.
    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn finds_the_first_match_in_path_order() {
        let (da, db) = (tempdir(), tempdir());
        let (a, b) = (da.path().to_path_buf(), db.path().to_path_buf());
        script(&b, "ipam", "exit 0");
        script(&a, "ipam", "exit 0");
        assert_eq!(
            find_in_path("ipam", &[a.clone(), b.clone()]).expect("found"),
            a.join("ipam")
        );
        let e = find_in_path("missing", &[a.clone(), b.clone()]).expect_err("missing");
        assert_eq!(e.code, ErrorCode::DELEGATION);
        assert!(e.msg.contains("missing"));
        assert!(find_in_path("../ipam", std::slice::from_ref(&a)).is_err());
    }

    #[test]
    fn passes_env_and_stdin_and_relays_result_and_errors() {
        let dir = tempdir();
        let d = dir.path();
        // Echoes what it was given, so the test sees the env and stdin the delegate got.
        script(
            d,
            "echoer",
            r#"in=$(cat); printf '{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/26"}],"dns":{"domain":"%s|%s|%s|%s|%s"}}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_IFNAME" "$CNI_ARGS" "$in""#,
        );
        script(
            d,
            "failer",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"datastore down","details":"try later"}'; exit 1"#,
        );
        script(d, "crasher", "echo boom >&2; exit 3");
        let env = env_with_path(&[d]);
        let r = add(&env, "echoer", b"cfg", CniVersion::V1_0_0).expect("result");
        assert_eq!(r.ips[0].address.to_string(), "10.1.2.3/26");
        assert_eq!(r.dns.domain.as_deref(), Some("ADD|ctr1|eth0|A=1|cfg"));
        let e = run(&env, Command::Del, "failer", b"{}").expect_err("fails");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (ErrorCode::TRY_AGAIN_LATER, "datastore down")
        );
        let e = run(&env, Command::Del, "crasher", b"{}").expect_err("crashes");
        assert_eq!(e.code, ErrorCode::DELEGATION);
        assert!(e.details.contains("boom"));
    }

    /// Bad-input finding #5: a delegate that prints an error object with exit status 0 has
    /// failed, and an IPAM result without any address is Calico's "IPAM plugin returned
    /// missing IP config" (mirrors utils.go `AddIPAM`).
    #[test]
    fn an_error_object_or_no_address_is_a_failure_whatever_the_exit_status() {
        let dir = tempdir();
        let d = dir.path();
        script(
            d,
            "quiet-failer",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"pool busy"}'; exit 0"#,
        );
        script(
            d,
            "no-ips",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","ips":[]}'"#,
        );
        let env = env_with_path(&[d]);
        let e = add(&env, "quiet-failer", b"{}", CniVersion::V1_0_0).expect_err("error object");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (ErrorCode::TRY_AGAIN_LATER, "pool busy")
        );
        let e = run(&env, Command::Del, "quiet-failer", b"{}").expect_err("error object");
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        let e = add_ipam(&env, "no-ips", b"{}", CniVersion::V1_0_0).expect_err("no address");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                ErrorCode::DELEGATION,
                "IPAM plugin returned missing IP config"
            )
        );
        // Plain `add` (not IPAM) takes an empty result as it is.
        add(&env, "no-ips", b"{}", CniVersion::V1_0_0).expect("empty result");
    }

    /// Bad-input finding #6: a delegate that writes 200 KB to stderr before it reads a 300 KB
    /// config (both past a pipe's 64 KiB) completes: the config is written while the output
    /// is drained. Go's exec copies both ways at once too.
    #[test]
    fn a_delegate_that_writes_before_it_reads_does_not_deadlock() {
        let dir = tempdir();
        let d = dir.path();
        script(
            d,
            "chatty",
            r#"head -c 200000 /dev/zero | tr '\0' x >&2; cat >/dev/null; echo '{"cniVersion":"1.0.0","ips":[{"address":"203.0.113.9/32"}]}'"#,
        );
        let env = env_with_path(&[d]);
        let config = vec![b' '; 300_000];
        let started = Instant::now();
        let r = add_ipam(&env, "chatty", &config, CniVersion::V1_0_0).expect("result");
        assert_eq!(r.ips[0].address.to_string(), "203.0.113.9/32");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Bad-input finding #6: a delegate that never answers is killed with everything it
    /// started (its process group) when the time is up; one that prints without end is
    /// stopped at the bound; of a failing one's logs only the tail is kept.
    #[test]
    fn a_delegate_is_bounded_in_time_and_output() {
        let dir = tempdir();
        let d = dir.path();
        // A copy of sleep under the test's unique directory, so that what is left running
        // can be found by its path.
        let sleeper = d.join("sleeper");
        std::fs::copy("/bin/sleep", &sleeper).expect("copy sleep");
        script(
            d,
            "hangs",
            r#"echo "still thinking" >&2; "$(dirname "$0")/sleeper" 1000 & "$(dirname "$0")/sleeper" 1000"#,
        );
        script(d, "floods", "cat /dev/zero");
        script(
            d,
            "loud",
            "head -c 100000 /dev/zero | tr '\\0' y >&2; exit 2",
        );
        let env = env_with_path(&[d]);
        let limits = Limits {
            timeout: Duration::from_secs(1),
            stdout_max: 1 << 20,
            stderr_tail: 1000,
        };
        let exec = |name: &str| exec_path_with(&env, Command::Add, &d.join(name), b"{}", limits);
        let started = Instant::now();
        let e = exec("hangs").expect_err("timed out");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e.code, ErrorCode::DELEGATION);
        assert!(e.msg.contains("timed out after 1s"), "{e}");
        // Its last words are quoted although it never closed stderr.
        assert!(e.details.contains("still thinking"), "{e:?}");
        let left = || {
            std::process::Command::new("pgrep")
                .arg("-f")
                .arg(&sleeper)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        // SIGKILL is delivered at once, but the processes leave the table when reaped.
        let gone_by = Instant::now() + Duration::from_secs(5);
        while !left().is_empty() && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(left(), "", "the delegate's processes are gone");

        let e = exec("floods").expect_err("too large");
        assert!(e.msg.contains("printed more than 1048576 bytes"), "{e}");
        let e = exec("loud").expect_err("fails");
        assert!(e.msg.contains("failed"), "{e}");
        assert_eq!(e.details.len(), 1000);
    }

    /// Bad-input finding #10: `ipam.type` naming the plugin itself, here under another name
    /// (a symlink), is refused before anything runs (code 7), instead of a chain of copies
    /// each waiting on the next.
    #[test]
    fn a_delegation_to_oneself_is_refused() {
        let dir = tempdir();
        let d = dir.path();
        let me = std::env::current_exe().expect("own path");
        std::os::unix::fs::symlink(&me, d.join("calico-again")).expect("symlink");
        let env = env_with_path(&[d]);
        let e = add(&env, "calico-again", b"{}", CniVersion::V1_0_0).expect_err("itself");
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("delegates to itself"), "{e}");
    }
}
