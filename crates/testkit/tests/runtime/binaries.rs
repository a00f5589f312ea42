//! Our binaries as a runtime sees them: VERSION directly and through libcni, and the error
//! object for every early failure.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use testkit::bins::built;
use testkit::{CniPathDir, Runtime, require};

use crate::{ALL_VERSIONS, OURS};

/// Runs `binary` with `env` and `stdin`; returns (exit code, stdout parsed as JSON or
/// null when empty, stdout text).
fn invoke(binary: &str, env: &[(&str, &str)], stdin: &str) -> (i32, Value, String) {
    let mut cmd = Command::new(built(binary).unwrap());
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (out.status.code().unwrap_or(-1), json, text)
}

#[test]
fn version_answers_directly_with_every_version() {
    for bin in OURS {
        for v in ALL_VERSIONS {
            let (rc, out, text) = invoke(
                bin,
                &[("CNI_COMMAND", "VERSION")],
                &json!({ "cniVersion": v }).to_string(),
            );
            assert_eq!(rc, 0, "{bin}");
            assert_eq!(
                out,
                json!({"cniVersion": v, "supportedVersions": ALL_VERSIONS}),
                "{bin} {v}"
            );
            assert_eq!(text.lines().count(), 1, "{bin}: one line on stdout");
        }
    }
}

#[test]
fn version_answers_through_libcni() {
    require!("go");
    let dir = tempfile::tempdir().unwrap();
    let path = CniPathDir::new().unwrap();
    for bin in OURS {
        path.add_ours(bin).unwrap();
    }
    let rt = Runtime::local(dir.path(), path.path(), dir.path());
    for bin in OURS {
        let out = rt.version(bin).unwrap().unwrap();
        assert_eq!(out["supportedVersions"], json!(ALL_VERSIONS), "{bin}");
    }
}

const FULL_ADD_ENV: [(&str, &str); 5] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "ctr-1"),
    ("CNI_NETNS", "/run/netns/none"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/nonexistent"),
];

fn env_without(var: &str) -> Vec<(&'static str, &'static str)> {
    FULL_ADD_ENV
        .into_iter()
        .filter(|(k, _)| *k != var)
        .collect()
}

fn env_with(var: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut env = env_without(var);
    env.push((var, value));
    env
}

#[test]
fn every_early_error_is_an_error_object_with_its_code() {
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("cni.log");
    let conf = |extra: Value| {
        let mut c = json!({"cniVersion":"1.0.0","name":"net1","type":"calico",
                           "log_file_path": log_file.to_str().unwrap()});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    };
    let good = conf(json!({}));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing CNI_COMMAND",
            env_without("CNI_COMMAND"),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "unknown CNI_COMMAND",
            env_with("CNI_COMMAND", "FROB"),
            good.clone(),
            4,
            "FROB",
        ),
        (
            "missing CNI_CONTAINERID",
            env_without("CNI_CONTAINERID"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "missing CNI_NETNS",
            env_without("CNI_NETNS"),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "missing CNI_IFNAME",
            env_without("CNI_IFNAME"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "bad CNI_IFNAME",
            env_with("CNI_IFNAME", "way-too-long-ifname"),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "bad CNI_ARGS",
            env_with("CNI_ARGS", "novalue"),
            good.clone(),
            4,
            "CNI_ARGS",
        ),
        (
            "bad container id",
            env_with("CNI_CONTAINERID", "a/b"),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "not JSON",
            FULL_ADD_ENV.to_vec(),
            "{nope".into(),
            6,
            "decode",
        ),
        (
            "unknown version",
            FULL_ADD_ENV.to_vec(),
            conf(json!({"cniVersion":"9.0.0"})),
            1,
            "incompatible",
        ),
        (
            "CHECK on 0.3.1",
            env_with("CNI_COMMAND", "CHECK"),
            conf(json!({"cniVersion":"0.3.1"})),
            1,
            "CHECK",
        ),
        (
            "GC on 1.0.0",
            env_with("CNI_COMMAND", "GC"),
            good.clone(),
            1,
            "GC",
        ),
        (
            "STATUS on 1.0.0",
            env_with("CNI_COMMAND", "STATUS"),
            good.clone(),
            1,
            "STATUS",
        ),
        (
            "no name",
            FULL_ADD_ENV.to_vec(),
            json!({"cniVersion":"1.0.0"}).to_string(),
            7,
            "name",
        ),
        (
            "wrong type",
            FULL_ADD_ENV.to_vec(),
            conf(json!({"mtu":"big"})),
            7,
            "mtu",
        ),
        (
            "nested wrong type",
            FULL_ADD_ENV.to_vec(),
            conf(json!({"ipam":{"assign_ipv6":true}})),
            7,
            "ipam.assign_ipv6",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let (rc, out, text) = invoke("calico", &env, &stdin);
        assert_eq!(rc, 1, "{what}: exit code");
        assert_eq!(out["code"], code, "{what}: {out}");
        let msg = out["msg"].as_str().unwrap_or_default().to_string()
            + out["details"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{what}: {needle:?} not in {out}");
        assert!(out["cniVersion"].is_string(), "{what}: {out}");
        assert_eq!(
            text.lines().count(),
            1,
            "{what}: only the error object on stdout"
        );
    }
}
