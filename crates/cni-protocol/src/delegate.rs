//! Running another plugin (an IPAM plugin, usually) the way the spec says a runtime does:
//! found by `type` in `CNI_PATH`, same environment but `CNI_COMMAND`, config on stdin.

use crate::env::{Command, Environment};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::CniVersion;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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

/// As [`exec`], with the plugin's path already known.
pub fn exec_path(
    env: &Environment,
    command: Command,
    plugin: &Path,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let fail = |what: &str, e: std::io::Error| {
        CniError::new(
            ErrorCode::DELEGATION,
            format!("{what} {}: {e}", plugin.display()),
        )
    };
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
        .spawn()
        .map_err(|e| fail("cannot run", e))?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin may exit without reading its config (failing early); its answer is
        // what counts, so a closed pipe is not our error.
        match input.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(fail("cannot write the config to", e));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail("cannot wait for", e))?;
    // The delegate's logs stay visible as ours.
    let _ = std::io::stderr().write_all(&out.stderr);
    if out.status.success() {
        return Ok(out.stdout);
    }
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reported = serde_json::from_slice(&out.stdout)
        .ok()
        .and_then(|v| CniError::from_json(&v));
    Err(match reported {
        Some(e) => e,
        None => CniError::new(
            ErrorCode::DELEGATION,
            format!("plugin {name} failed ({})", out.status),
        )
        .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    })
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
}
