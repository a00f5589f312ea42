//! `portmap`: the chained hostPort plugin (DNAT, plus SNAT for hairpin and localhost).

use cni_protocol::{CniError, CniResult, Plugin, Request};
use std::process::ExitCode;

/// Until the port forwarding itself lands, a chain without port mappings passes through
/// (as the reference plugin does), and mappings are refused with a clear error.
struct Portmap;

fn mappings(req: &Request) -> usize {
    req.runtime_config()
        .and_then(|r| r.get("portMappings"))
        .and_then(|m| m.as_array())
        .map_or(0, Vec::len)
}

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let prev = req.prev_result()?.ok_or_else(|| {
            CniError::invalid_config("portmap must be called as a chained plugin")
        })?;
        if mappings(req) > 0 {
            return Err(CniError::not_implemented(
                self.name(),
                "ADD with port mappings",
            ));
        }
        Ok(prev)
    }

    fn del(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        if mappings(req) > 0 {
            return Err(CniError::not_implemented(
                self.name(),
                "CHECK with port mappings",
            ));
        }
        Ok(())
    }

    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }

    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&Portmap)
}
