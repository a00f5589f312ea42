//! `calico`: the main CNI plugin (veth, pod addressing, host routes, workload endpoints).

use calico_netconf::NetConf;
use cni_protocol::logging::LogSettings;
use cni_protocol::{CniError, CniResult, Plugin, Request};
use std::process::ExitCode;

struct Calico;

impl Calico {
    /// Every verb decodes the config first, so a bad value is reported as such (code 7)
    /// before anything else happens.
    fn unbuilt(&self, req: &Request, verb: &str) -> CniError {
        match NetConf::from_request(req) {
            Err(e) => e,
            Ok(_) => CniError::not_implemented(self.name(), verb),
        }
    }
}

impl Plugin for Calico {
    fn name(&self) -> &'static str {
        "calico"
    }

    fn log_settings(&self, req: &Request) -> LogSettings {
        NetConf::from_request(req)
            .map(|c| c.log_settings())
            .unwrap_or_default()
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Err(self.unbuilt(req, "ADD"))
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        Err(self.unbuilt(req, "DEL"))
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        Err(self.unbuilt(req, "CHECK"))
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        Err(self.unbuilt(req, "GC"))
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        Err(self.unbuilt(req, "STATUS"))
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&Calico)
}
