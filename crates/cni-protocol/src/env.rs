//! The `CNI_*` environment a runtime sets for each call.

use crate::args::CniArgs;
use crate::error::CniError;
use std::fmt;
use std::path::PathBuf;

/// The verb of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// ADD, DEL and CHECK act on one attachment, so they need its identity.
    fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed environment of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    /// Required for ADD and CHECK, optional for DEL, absent otherwise.
    pub netns: Option<PathBuf>,
    /// Empty for VERSION, STATUS and GC.
    pub ifname: String,
    pub args: CniArgs,
    /// `CNI_PATH` split on `:`; required for GC (and for delegation).
    pub path: Vec<PathBuf>,
}

const IFNAMSIZ_MAX: usize = 15;

impl Environment {
    /// Reads the process environment.
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads through `lookup`, so tests need not touch the process environment.
    /// Every missing required variable is named in one code-4 error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            None => return Err(CniError::invalid_env("CNI_COMMAND is missing")),
            Some(c) => Command::parse(&c)
                .ok_or_else(|| CniError::invalid_env(format!("unknown CNI_COMMAND: {c}")))?,
        };

        let mut missing = Vec::new();
        let mut require = |name: &'static str, needed: bool| {
            let v = get(name);
            if needed && v.is_none() {
                missing.push(name);
            }
            v
        };
        let attachment = command.is_per_attachment();
        let container_id = require("CNI_CONTAINERID", attachment);
        let netns = require(
            "CNI_NETNS",
            matches!(command, Command::Add | Command::Check),
        );
        let ifname = require("CNI_IFNAME", attachment);
        let path = require("CNI_PATH", command == Command::Gc);
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }

        let container_id = if attachment {
            container_id.unwrap_or_default()
        } else {
            String::new()
        };
        if attachment {
            validate_container_id(&container_id)?;
        }
        let ifname = if attachment {
            ifname.unwrap_or_default()
        } else {
            String::new()
        };
        if attachment {
            validate_ifname(&ifname)?;
        }
        let args = CniArgs::parse(&lookup("CNI_ARGS").unwrap_or_default())?;
        let path = path
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        Ok(Environment {
            command,
            container_id,
            netns: if attachment {
                netns.map(PathBuf::from)
            } else {
                None
            },
            ifname,
            args,
            path,
        })
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, as the spec requires of container IDs.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID has invalid characters: {id:?}"
        )))
    }
}

/// A Linux interface name: 1-15 bytes, not `.`/`..`, no `/`, `:`, whitespace or `%`.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.len() > IFNAMSIZ_MAX {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("may not be . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else if name.contains('%') {
        // The kernel reads a name with '%' as a template ("eth%d": the next free number).
        Some("contains '%'")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::invalid_env(format!("CNI_IFNAME {name:?} {p}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Environment, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "K8S_POD_NAME=a"),
    ];

    fn without(
        base: &[(&'static str, &'static str)],
        key: &str,
    ) -> Vec<(&'static str, &'static str)> {
        base.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    fn with(
        base: &[(&'static str, &'static str)],
        key: &'static str,
        v: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out = without(base, key);
        out.push((key, v));
        out
    }

    #[test]
    fn full_add_environment() {
        let e = env(ADD).expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc123");
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/p1")));
        assert_eq!(e.ifname, "eth0");
        assert_eq!(
            e.path,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.args.get("K8S_POD_NAME"), Some("a"));
    }

    #[test]
    fn each_required_variable_is_named_when_missing() {
        for (cmd, var) in [
            ("ADD", "CNI_CONTAINERID"),
            ("ADD", "CNI_NETNS"),
            ("ADD", "CNI_IFNAME"),
            ("CHECK", "CNI_NETNS"),
            ("DEL", "CNI_CONTAINERID"),
            ("DEL", "CNI_IFNAME"),
        ] {
            let vars = without(&with(ADD, "CNI_COMMAND", cmd), var);
            let e = env(&vars).expect_err(var);
            assert_eq!(e.code, ErrorCode::INVALID_ENVIRONMENT, "{cmd} {var}");
            assert!(e.msg.contains(var), "{cmd} {var}: {}", e.msg);
        }
        let e = env(&[("CNI_COMMAND", "GC")]).expect_err("GC needs CNI_PATH");
        assert!(e.msg.contains("CNI_PATH"));
        let e = env(&[]).expect_err("no command");
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = env(&[("CNI_COMMAND", "FROB")]).expect_err("bad command");
        assert_eq!(e.code, ErrorCode::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("FROB"));
    }

    #[test]
    fn del_without_netns_is_fine_and_path_is_optional_for_add() {
        let e = env(&without(&with(ADD, "CNI_COMMAND", "DEL"), "CNI_NETNS")).expect("valid");
        assert_eq!(e.netns, None);
        let e = env(&without(ADD, "CNI_PATH")).expect("valid");
        assert!(e.path.is_empty());
    }

    #[test]
    fn version_status_and_gc_need_little() {
        let e = env(&[("CNI_COMMAND", "VERSION")]).expect("valid");
        assert_eq!(e.command, Command::Version);
        env(&[("CNI_COMMAND", "STATUS")]).expect("valid");
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).expect("valid");
        assert_eq!(e.path, [PathBuf::from("/x")]);
    }

    #[test]
    fn malformed_values_are_code_4() {
        for (var, bad) in [
            ("CNI_CONTAINERID", "-starts-with-dash"),
            ("CNI_CONTAINERID", "has space"),
            ("CNI_CONTAINERID", "slash/no"),
            ("CNI_IFNAME", "a-very-long-interface-name"),
            ("CNI_IFNAME", "eth:0"),
            ("CNI_IFNAME", ".."),
            // Bad-input finding #15: the kernel would expand the template (103 ENODEV).
            ("CNI_IFNAME", "eth%d"),
            ("CNI_ARGS", "garbage"),
        ] {
            let e = env(&with(ADD, var, bad)).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_ENVIRONMENT, "{var}={bad}");
            assert!(e.msg.contains(var), "{var}: {}", e.msg);
        }
    }
}
