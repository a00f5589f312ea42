//! `calico-node`: a thin entry over the `calico_node` library. Subcommands after Calico's
//! flags: `startup`, `run`, `health --live|--ready`, `version`.

use calico_node::config::ProcessEnv;
use calico_node::health::Probe;
use std::process::ExitCode;

const USAGE: &str = "usage: calico-node startup | run | health --live|--ready | version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // `startup` logs at its own variable's level (it installs the logger itself).
    if !matches!(args.as_slice(), ["startup"] | ["-startup"]) {
        match calico_node::logging::level(&ProcessEnv) {
            Ok(level) => calico_node::logging::init(level),
            Err(e) => {
                eprintln!("calico-node: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let outcome = match args.as_slice() {
        ["startup"] | ["-startup"] => calico_node::startup::run(&ProcessEnv).map_err(Into::into),
        ["run"] | ["-run"] => calico_node::run::run(&ProcessEnv),
        ["health", probe] | ["-health", probe] => match *probe {
            "--live" | "-live" | "-felix-live" => {
                calico_node::health::check(&ProcessEnv, Probe::Live)
            }
            "--ready" | "-ready" | "-felix-ready" => {
                calico_node::health::check(&ProcessEnv, Probe::Ready)
            }
            _ => Err(anyhow::anyhow!("{USAGE}")),
        },
        ["version"] | ["-v"] | ["--version"] => {
            println!("{}", calico_node::VERSION);
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calico-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
