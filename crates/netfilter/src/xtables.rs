//! The iptables tools, for rule layouts that must stay readable and removable by other
//! iptables users (the reference portmap plugin). A whole change goes through one
//! `iptables-restore --noflush`, which the kernel applies atomically per table.
//!
//! Every document for restore is written by [`document`], which refuses a line that could
//! end early or start another ([`check_line`]: no line break, carriage return or NUL, and
//! short enough for restore's line buffer): no value, however it was validated upstream,
//! can add a rule of its own.

use crate::error::NfError;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Which kernel interface the host's `iptables` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-nft`: iptables rules stored as nf_tables rules (tables `ip nat`, `ip6 nat`).
    Nft,
    /// `iptables-legacy`: the x_tables interface.
    Legacy,
}

impl Flavour {
    /// What `iptables` on `PATH` (or `/usr/sbin`) resolves to; `None` if there is none.
    /// Reads the alternatives symlinks instead of running `iptables -V` (a process costs ~1 ms).
    pub fn detect() -> Option<Flavour> {
        // Once per process: a call asks several times, and each look walks PATH (and may
        // start `iptables -V`).
        static FLAVOUR: std::sync::OnceLock<Option<Flavour>> = std::sync::OnceLock::new();
        *FLAVOUR.get_or_init(Self::look)
    }

    fn look() -> Option<Flavour> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let candidates = std::env::split_paths(&path)
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .map(|d| d.join("iptables"));
        for c in candidates {
            let Ok(real) = std::fs::canonicalize(&c) else {
                continue;
            };
            let name = real.to_string_lossy().to_string();
            if name.contains("legacy") {
                return Some(Flavour::Legacy);
            }
            if name.contains("nft") {
                return Some(Flavour::Nft);
            }
            // A plain binary: ask it.
            let out = Command::new(&c).arg("-V").output().ok()?;
            let v = String::from_utf8_lossy(&out.stdout);
            return Some(if v.contains("nf_tables") {
                Flavour::Nft
            } else {
                Flavour::Legacy
            });
        }
        None
    }

    fn tool(self, v6: bool, what: &str) -> String {
        let family = if v6 { "ip6tables" } else { "iptables" };
        let flavour = match self {
            Flavour::Nft => "nft",
            Flavour::Legacy => "legacy",
        };
        if what.is_empty() {
            format!("{family}-{flavour}")
        } else {
            format!("{family}-{flavour}-{what}")
        }
    }
}

/// One family's iptables tools.
#[derive(Debug, Clone, Copy)]
pub struct Xtables {
    pub flavour: Flavour,
    pub v6: bool,
}

/// Seconds to wait for the xtables lock (legacy) before giving up.
const LOCK_WAIT_SECONDS: &str = "10";

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<(i32, String, String), NfError> {
    let io = |e: std::io::Error| NfError::Io(format!("run {tool}"), e);
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// stderr without iptables-nft's notice about legacy tables (harmless, printed always).
fn meaningful(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("iptables-legacy tables present"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Xtables {
    pub fn name(&self) -> String {
        self.flavour.tool(self.v6, "")
    }

    /// Whether the tools are installed.
    pub fn available(&self) -> bool {
        let tool = self.flavour.tool(self.v6, "restore");
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .any(|d| Path::new(&d.join(&tool)).exists())
    }

    /// Applies `input` (an `iptables-save` document) without flushing anything else.
    pub fn restore(&self, input: &str) -> Result<(), NfError> {
        let tool = self.flavour.tool(self.v6, "restore");
        let (code, _, err) = run(
            &tool,
            &["--noflush", "--wait", LOCK_WAIT_SECONDS],
            Some(input),
        )?;
        if code == 0 {
            return Ok(());
        }
        Err(NfError::Tool {
            tool,
            msg: format!("exit {code}: {}", meaningful(&err)),
        })
    }

    /// `iptables-save -t <table>`.
    pub fn save(&self, table: &str) -> Result<String, NfError> {
        let tool = self.flavour.tool(self.v6, "save");
        let (code, out, err) = run(&tool, &["-t", table], None)?;
        if code == 0 {
            return Ok(out);
        }
        Err(NfError::Tool {
            tool,
            msg: format!("exit {code}: {}", meaningful(&err)),
        })
    }

    /// The rules of one chain in `-S` form (`-N`/`-A` lines), `None` if the chain is missing.
    pub fn list_chain(&self, table: &str, chain: &str) -> Result<Option<Vec<String>>, NfError> {
        let tool = self.flavour.tool(self.v6, "");
        let (code, out, err) = run(
            &tool,
            &["--wait", LOCK_WAIT_SECONDS, "-t", table, "-S", chain],
            None,
        )?;
        if code == 0 {
            return Ok(Some(out.lines().map(str::to_string).collect()));
        }
        let err = meaningful(&err);
        if err.contains("No chain") || err.contains("does not exist") {
            return Ok(None);
        }
        Err(NfError::Tool {
            tool,
            msg: format!("exit {code}: {err}"),
        })
    }
}

/// Longest line written for restore: well under the line buffer of `iptables-restore`
/// (10 KiB in iptables 1.8), which would cut a longer line in two.
pub const MAX_LINE: usize = 4096;

/// Refuses a line that cannot stand as one line of an `iptables-restore` document: a line
/// break or carriage return (restore reads what follows as a line of its own), a NUL (which
/// ends the string there), or more than [`MAX_LINE`] bytes.
pub fn check_line(line: &str) -> Result<(), NfError> {
    if let Some(c) = line.chars().find(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err(NfError::Input(format!(
            "refusing an iptables-restore line with {c:?} in it: {:?}",
            line.chars().take(120).collect::<String>()
        )));
    }
    if line.len() > MAX_LINE {
        return Err(NfError::Input(format!(
            "refusing an iptables-restore line of {} bytes (at most {MAX_LINE})",
            line.len()
        )));
    }
    Ok(())
}

/// An `iptables-restore` document for `table`: `*table`, the lines, `COMMIT`. Every line is
/// checked ([`check_line`]) first.
pub fn document(table: &str, lines: &[String]) -> Result<String, NfError> {
    check_line(table)?;
    let mut s = format!("*{table}\n");
    for l in lines {
        check_line(l)?;
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    Ok(s)
}

/// Quotes an argument the way `iptables-save` does, so restore reads it back unchanged.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+[]!@%^*~".contains(c))
    {
        return arg.to_string();
    }
    let escaped = arg.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_iptables_save() {
        assert_eq!(quote("CNI-DN-abc"), "CNI-DN-abc");
        assert_eq!(
            quote(r#"dnat name: "net" id: "c1""#),
            r#""dnat name: \"net\" id: \"c1\"""#
        );
    }

    /// Findings #3: a value with a line break added a rule of its own to the document.
    #[test]
    fn no_line_can_carry_another() {
        let ok = document("nat", &["-A X -j ACCEPT".to_string()]).expect("plain");
        assert_eq!(ok, "*nat\n-A X -j ACCEPT\nCOMMIT\n");
        for bad in [
            "-A X -j ACCEPT\n-I OUTPUT 1 -j DNAT --to-destination 127.0.0.1:1",
            "-A X -j ACCEPT\r-A Y",
            "-A X -j ACC\0EPT",
            &"x".repeat(MAX_LINE + 1),
        ] {
            let e = document("nat", &[bad.to_string()]).expect_err(bad);
            assert!(matches!(e, NfError::Input(_)), "{e}");
        }
        assert!(document("nat\n*filter", &[]).is_err());
        // Quoting keeps a line break inside the quotes, so the line check still refuses it.
        assert!(check_line(&quote("a\nb")).is_err());
    }

    #[test]
    fn tool_names() {
        assert_eq!(Flavour::Nft.tool(false, "restore"), "iptables-nft-restore");
        assert_eq!(Flavour::Legacy.tool(true, "save"), "ip6tables-legacy-save");
        assert_eq!(Flavour::Nft.tool(true, ""), "ip6tables-nft");
    }
}
