//! `calico-bgpd`: the BGP speaker and learned-route programmer calico-node starts beside
//! itself under the BGP backend (Calico's BIRD); a thin entry over `calico_node::bgpd`.
//! Started by calico-node only: it reads its identity from its stdin.

use std::process::ExitCode;

fn main() -> ExitCode {
    match calico_node::logging::level(&calico_node::config::ProcessEnv) {
        Ok(level) => calico_node::logging::init(level),
        Err(e) => {
            eprintln!("calico-bgpd: {e}");
            return ExitCode::FAILURE;
        }
    }
    match calico_node::bgpd::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-bgpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
