//! `portmap`: the chained hostPort plugin (DNAT, plus SNAT for hairpin and localhost).

use cni_protocol::{CniError, CniResult, Plugin, Request};
use std::process::ExitCode;

struct Portmap;

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }

    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        portmap::verbs::add(req)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        portmap::verbs::del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        portmap::verbs::check(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        portmap::verbs::gc(req)
    }

    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&Portmap)
}
