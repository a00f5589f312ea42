//! `policy_setup_timeout_seconds` and `endpoint_status_dir`: after an ADD has written the
//! pod's WorkloadEndpoint, wait (at most the timeout) for the policy agent's endpoint status
//! file, so that the pod does not start before its policy is in the kernel. Mirrors
//! `CmdAddK8s` in Calico's `cni-plugin/pkg/k8s/k8s.go` and `cni-plugin/pkg/wait/wait.go`:
//!
//! - Kubernetes pods only (Calico's other orchestrators never wait); 0 (the default) means no
//!   wait and no file-system access at all;
//! - the directory is `endpoint_status_dir`, default `/var/run/calico/endpoint-status`;
//! - on timeout a warning is logged and the ADD succeeds: the gate delays a pod, it never
//!   fails one.
//!
//! A negative timeout is refused with code 7 before anything is made, where Calico fails
//! the ADD with the same message after the endpoint is written (README, "Differences from
//! Calico").

use crate::workload::Context;
use calico_epstatus::EndpointKey;
use cni_protocol::{CniError, Request};
use std::path::PathBuf;
use std::time::Duration;

/// What an ADD waits for once its endpoint is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyGate {
    pub dir: PathBuf,
    pub key: EndpointKey,
    pub timeout: Duration,
}

impl PolicyGate {
    /// The gate of this call, `None` when there is nothing to wait for.
    pub fn of(ctx: &Context, req: &Request) -> Result<Option<PolicyGate>, CniError> {
        if ctx.workload.orchestrator != "k8s" {
            return Ok(None);
        }
        let secs = ctx.conf.policy_setup_timeout_seconds;
        if secs < 0 {
            return Err(CniError::invalid_config(format!(
                "invalid pod startup delay of {secs}"
            )));
        }
        if secs == 0 {
            return Ok(None);
        }
        let dir = if ctx.conf.endpoint_status_dir.is_empty() {
            PathBuf::from(calico_epstatus::DEFAULT_DIR)
        } else {
            PathBuf::from(&ctx.conf.endpoint_status_dir)
        };
        // The v1 key Calico derives from the endpoint's v3 name: `<namespace>/<pod>` as
        // the workload, the pod's interface as the endpoint.
        let key = EndpointKey::new(
            ctx.workload.orchestrator,
            &format!("{}/{}", ctx.workload.namespace, ctx.workload.pod),
            &req.env.ifname,
        );
        Ok(Some(PolicyGate {
            dir,
            key,
            timeout: Duration::from_secs(secs.unsigned_abs()),
        }))
    }

    /// Waits for the status file; on timeout warns and returns all the same.
    pub fn wait(&self) {
        match calico_epstatus::wait_for(&self.dir, &self.key, self.timeout) {
            Ok(()) => log::debug!(
                "endpoint status file {:?} seen: policy is programmed",
                self.key.file_name()
            ),
            Err(e) => log::warn!(
                "Error waiting for endpoint to become ready. Unblocking pod creation...: {e}"
            ),
        }
    }
}
