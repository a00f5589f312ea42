//! `calico-node health --live|--ready`: asks the running daemon over its socket and passes
//! when it says so (exit 0), as Calico's `calico-node -felix-live` / `-felix-ready` probes
//! do. No answer within [`WAIT`] fails the probe.

use crate::config::Env;
use calico_agent_protocol::message::Probe as WireProbe;
use calico_agent_protocol::{Connection, Reply, Request};
use std::path::PathBuf;
use std::time::Duration;

/// Bound on the whole probe (a probe's own timeout is usually a second or more).
pub const WAIT: Duration = Duration::from_millis(900);

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

/// Asks the daemon; `Ok(())` when the probe passes.
pub fn check(env: &dyn Env, probe: Probe) -> anyhow::Result<()> {
    let path = env.var(calico_agent_protocol::SOCKET_ENV).map_or_else(
        || calico_agent_protocol::DEFAULT_SOCKET.into(),
        PathBuf::from,
    );
    let mut agent = Connection::open(&path, WAIT)
        .map_err(|e| anyhow::anyhow!("calico-node is not answering on {}: {e}", path.display()))?;
    let wire = match probe {
        Probe::Live => WireProbe::Live,
        Probe::Ready => WireProbe::Ready,
    };
    match agent.call(&Request::Health(wire), &[], WAIT)? {
        Reply::Health(report) => {
            let passed = match probe {
                Probe::Live => report.live,
                Probe::Ready => report.ready,
            };
            if passed {
                println!("{}", report.detail);
                Ok(())
            } else {
                anyhow::bail!(
                    "not {}: {}",
                    if probe == Probe::Live {
                        "live"
                    } else {
                        "ready"
                    },
                    report.detail
                )
            }
        }
        other => anyhow::bail!("calico-node answered {other:?}"),
    }
}
