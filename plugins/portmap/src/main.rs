//! `portmap`: the chained hostPort plugin (DNAT, plus SNAT for hairpin and localhost).

use cni_protocol::Plugin;
use std::process::ExitCode;

/// Every verb answers "not implemented yet" until the portmap issue lands.
struct Portmap;

impl Plugin for Portmap {
    fn name(&self) -> &'static str {
        "portmap"
    }
}

fn main() -> ExitCode {
    cni_protocol::run(&Portmap)
}
