//! The long-lived daemon (to be written: see issue 11).

use crate::config::Env;

/// Runs the daemon until SIGTERM.
pub fn run(_env: &dyn Env) -> anyhow::Result<()> {
    anyhow::bail!("run is not implemented yet")
}
