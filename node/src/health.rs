//! `calico-node health --live|--ready` (to be written: see issue 11).

use crate::config::Env;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

/// Asks the daemon; `Ok(())` when the probe passes.
pub fn check(_env: &dyn Env, _probe: Probe) -> anyhow::Result<()> {
    anyhow::bail!("health is not implemented yet")
}
