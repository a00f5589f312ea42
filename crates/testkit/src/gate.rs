//! Decide whether a test that needs root or system tools may run here.
//!
//! Outside CI a missing requirement skips the test with a `SKIP <test>: <reason>` line on
//! stderr, so that `cargo test` works on a developer machine without etcd. In CI
//! (`CI=true`) a test must never skip silently, so a missing requirement panics instead.

use std::env;
use std::io::Write as _;
use std::path::Path;

/// True when the test may run as root; otherwise skips or panics (see the module docs).
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    missing("needs root (network namespaces, mounts)")
}

/// True when every tool is an executable on `PATH`; otherwise skips or panics.
pub fn require_tools(tools: &[&str]) -> bool {
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| !on_path(tool))
        .collect();
    if absent.is_empty() {
        return true;
    }
    missing(&format!("missing tools on PATH: {}", absent.join(", ")))
}

/// The value a test function returns when it is skipped: `()` or `Ok(())`.
pub trait Skipped {
    /// The "nothing happened" value.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Returns early from the test unless its requirements hold.
///
/// ```
/// fn talks_to_etcd() -> anyhow::Result<()> {
///     testkit::require!(root; "etcd", "etcdctl");
///     // ...
///     Ok(())
/// }
/// ```
/// Forms: `require!(root)`, `require!(root; "tool", ...)`, `require!("tool", ...)`.
/// The test may return `()` or `Result<(), E>`.
#[macro_export]
macro_rules! require {
    (root) => {
        if !$crate::gate::require_root() {
            return $crate::gate::Skipped::skipped();
        }
    };
    (root; $($tool:expr),+ $(,)?) => {
        $crate::require!(root);
        $crate::require!($($tool),+);
    };
    ($($tool:expr),+ $(,)?) => {
        if !$crate::gate::require_tools(&[$($tool),+]) {
            return $crate::gate::Skipped::skipped();
        }
    };
}

/// Skips (or in CI fails) the running test for `reason`; always false.
pub(crate) fn missing(reason: &str) -> bool {
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason} (CI=true, so this test may not be skipped)");
    }
    // Written to the stderr handle rather than with `eprintln!`, which libtest captures and
    // hides for passing tests: a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
    false
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        return is_exec(Path::new(tool));
    }
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| is_exec(&dir.join(tool))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_but_not_nonsense() {
        assert!(on_path("sh"));
        assert!(on_path("/bin/sh"));
        assert!(!on_path("ct-no-such-tool"));
    }
}
