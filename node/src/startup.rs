//! The one-shot start-up, after Calico's `node/pkg/lifecycle/startup` (to be written: see
//! issue 11).

use crate::config::Env;

/// Runs the start-up.
pub fn run(_env: &dyn Env) -> anyhow::Result<()> {
    anyhow::bail!("startup is not implemented yet")
}
