//! The plugin skeleton: reads the call, dispatches the verb, prints the answer. A plugin
//! process is only ever a plugin: it starts no process that outlives it (work it need not
//! wait for goes to the node agent, `calico-node run`, or is done before it answers).
//!
//! Output rules: an ADD result or a VERSION answer on stdout, or an error object with exit
//! status 1; nothing else ever goes to stdout.

use crate::env::{Command, Environment};
use crate::error::{CniError, ErrorCode};
use crate::logging::{self, LogSettings};
use crate::request::Request;
use crate::result::CniResult;
use crate::version::{CniVersion, supported_versions};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;

/// What a plugin implements. Verbs left at their defaults answer "not implemented yet".
pub trait Plugin {
    /// The binary's name, for messages.
    fn name(&self) -> &'static str;

    /// Log level and file from the config. Called once the config has been decoded.
    fn log_settings(&self, _req: &Request) -> LogSettings {
        LogSettings::default()
    }

    fn add(&self, _req: &Request) -> Result<CniResult, CniError> {
        Err(CniError::not_implemented(self.name(), "ADD"))
    }

    fn del(&self, _req: &Request) -> Result<(), CniError> {
        Err(CniError::not_implemented(self.name(), "DEL"))
    }

    fn check(&self, _req: &Request) -> Result<(), CniError> {
        Err(CniError::not_implemented(self.name(), "CHECK"))
    }

    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Err(CniError::not_implemented(self.name(), "GC"))
    }

    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Err(CniError::not_implemented(self.name(), "STATUS"))
    }
}

/// The answer to one call, before it is printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What goes to stdout (nothing for a successful DEL/CHECK/GC/STATUS).
    pub stdout: Option<Value>,
    /// 0 on success, 1 on error.
    pub exit_code: u8,
}

impl Outcome {
    fn ok(stdout: Option<Value>) -> Self {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }

    fn error(e: &CniError, version: &str) -> Self {
        Outcome {
            stdout: Some(e.to_json(version)),
            exit_code: 1,
        }
    }
}

/// Entry point for a plugin binary's `main`.
pub fn run(plugin: &impl Plugin) -> ExitCode {
    let env = Environment::from_process();
    logging::install(&format!(
        "{} {}",
        plugin.name(),
        std::env::var("CNI_COMMAND").unwrap_or_default()
    ));
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, env, stdin),
        Err(e) => Outcome::error(
            &CniError::io(format!("cannot read the config from stdin: {e}")),
            CniVersion::LATEST.as_str(),
        ),
    };
    if let Some(v) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        // If stdout is gone the runtime cannot hear us anyway; the exit code still tells.
        let _ = serde_json::to_writer(&mut out, v);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    ExitCode::from(outcome.exit_code)
}

/// Decides the answer to one call; pure apart from what the plugin does, so every error
/// path is testable in-process.
pub fn dispatch(
    plugin: &impl Plugin,
    env: Result<Environment, CniError>,
    stdin: Vec<u8>,
) -> Outcome {
    let echo = echo_version(&stdin);
    let env = match env {
        Ok(env) => env,
        Err(e) => {
            log::error!("{e}");
            return Outcome::error(&e, echo);
        }
    };
    if env.command == Command::Version {
        return Outcome::ok(Some(
            json!({"cniVersion": echo, "supportedVersions": supported_versions()}),
        ));
    }
    let command = env.command;
    let req = match Request::new(env, stdin) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            return Outcome::error(&e, echo);
        }
    };
    logging::configure(&plugin.log_settings(&req));
    let started = std::time::Instant::now();
    let answer = catch_unwind(AssertUnwindSafe(|| match command {
        Command::Add => plugin.add(&req).map(Some),
        Command::Del => plugin.del(&req).map(|()| None),
        Command::Check => plugin.check(&req).map(|()| None),
        Command::Gc => plugin.gc(&req).map(|()| None),
        Command::Status => plugin.status(&req).map(|()| None),
        Command::Version => Ok(None),
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(CniError::new(
            ErrorCode::INTERNAL,
            format!("{} panicked during {command}: {what}", plugin.name()),
        ))
    });
    let took = started.elapsed();
    match answer {
        Ok(result) => {
            log::info!(
                "{command} of {} done in {:.2} ms",
                req.env.container_id,
                took.as_secs_f64() * 1e3
            );
            Outcome::ok(result.map(|r| r.to_json(req.cni_version)))
        }
        Err(e) => {
            log::error!("{command} of {} failed: {e}", req.env.container_id);
            Outcome::error(&e, req.version_str())
        }
    }
}

/// The version to echo in VERSION answers and early errors: the config's, if we speak it.
fn echo_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<CniVersion>().ok())
        .unwrap_or(CniVersion::LATEST)
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Unbuilt;
    impl Plugin for Unbuilt {
        fn name(&self) -> &'static str {
            "unbuilt"
        }
    }

    struct Working;
    impl Plugin for Working {
        fn name(&self) -> &'static str {
            "working"
        }
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            if req.network_name == "panic" {
                panic!("boom");
            }
            let mut r = req.prev_result()?.unwrap_or_default();
            r.ips.push(crate::IpConfig {
                interface: None,
                address: "10.0.0.9/24".parse().expect("cidr"),
                gateway: None,
            });
            Ok(r)
        }
        fn del(&self, _req: &Request) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn env(cmd: &str) -> Result<Environment, CniError> {
        let m: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .collect();
        Environment::from_lookup(|k| m.get(k).map(|v| v.to_string()))
    }

    fn call(p: &impl Plugin, cmd: &str, conf: Value) -> Outcome {
        dispatch(p, env(cmd), conf.to_string().into_bytes())
    }

    #[test]
    fn version_lists_everything_and_echoes_the_request() {
        let o = call(&Unbuilt, "VERSION", json!({"cniVersion":"0.3.1"}));
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            o.stdout,
            Some(json!({"cniVersion":"0.3.1","supportedVersions":
                ["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}))
        );
        let o = dispatch(&Unbuilt, env("VERSION"), Vec::new());
        assert_eq!(o.stdout.expect("answer")["cniVersion"], "1.1.0");
    }

    #[test]
    fn unbuilt_verbs_say_so() {
        for (cmd, ver) in [
            ("ADD", "1.0.0"),
            ("DEL", "1.0.0"),
            ("CHECK", "1.0.0"),
            ("GC", "1.1.0"),
            ("STATUS", "1.1.0"),
        ] {
            let o = call(
                &Unbuilt,
                cmd,
                json!({"cniVersion":ver,"name":"net","type":"unbuilt"}),
            );
            assert_eq!(o.exit_code, 1);
            let out = o.stdout.expect("error object");
            assert_eq!(out["code"], 101, "{cmd}");
            assert!(
                out["msg"]
                    .as_str()
                    .expect("msg")
                    .contains("not implemented"),
                "{cmd}: {out}"
            );
            assert_eq!(out["cniVersion"], ver);
        }
    }

    #[test]
    fn add_prints_the_result_in_the_config_version() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"interface":0,"address":"10.1.1.1/32"}]});
        for v in CniVersion::ALL {
            let o = call(
                &Working,
                "ADD",
                json!({"cniVersion":v.as_str(),"name":"n","prevResult":prev}),
            );
            assert_eq!(o.exit_code, 0);
            let out = o.stdout.expect("result");
            assert_eq!(out["cniVersion"], v.as_str());
            if v.is_legacy() {
                assert_eq!(out["ip4"]["ip"], "10.1.1.1/32");
            } else {
                assert_eq!(out["ips"][1]["address"], "10.0.0.9/24");
            }
        }
    }

    #[test]
    fn successful_del_prints_nothing() {
        let o = call(&Working, "DEL", json!({"cniVersion":"1.0.0","name":"n"}));
        assert_eq!(
            o,
            Outcome {
                stdout: None,
                exit_code: 0
            }
        );
    }

    #[test]
    fn every_early_error_has_its_code() {
        let bad_env = dispatch(
            &Working,
            Err(CniError::invalid_env("CNI_IFNAME")),
            b"{}".to_vec(),
        );
        assert_eq!(bad_env.stdout.expect("err")["code"], 4);
        let o = dispatch(&Working, env("ADD"), b"{nope".to_vec());
        assert_eq!(o.stdout.expect("err")["code"], 6);
        let o = call(&Working, "ADD", json!({"cniVersion":"7.0.0","name":"n"}));
        assert_eq!(
            (o.exit_code, o.stdout.expect("err")["code"].clone()),
            (1, json!(1))
        );
        let o = call(&Working, "CHECK", json!({"cniVersion":"0.3.1","name":"n"}));
        assert_eq!(o.stdout.expect("err")["code"], 1);
        let o = call(&Working, "GC", json!({"cniVersion":"1.0.0","name":"n"}));
        assert_eq!(o.stdout.expect("err")["code"], 1);
        let o = call(&Working, "ADD", json!({"cniVersion":"1.0.0"}));
        assert_eq!(o.stdout.expect("err")["code"], 7);
        let o = call(
            &Working,
            "ADD",
            json!({"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"x"}]}}),
        );
        assert_eq!(o.stdout.expect("err")["code"], 6);
    }

    #[test]
    fn a_panic_becomes_an_error_object() {
        let o = call(
            &Working,
            "ADD",
            json!({"cniVersion":"1.0.0","name":"panic"}),
        );
        assert_eq!(o.exit_code, 1);
        let out = o.stdout.expect("err");
        assert_eq!(out["code"], 100);
        assert!(out["msg"].as_str().expect("msg").contains("boom"));
    }
}
