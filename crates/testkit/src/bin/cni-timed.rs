//! `cni-timed`: a benchmark's stand-in for a plugin inside an unmodified runtime (cnitool).
//! Placed in `CNI_PATH` under a plugin's name (a copy or a link), it runs the real plugin of
//! that name from `CNI_TIMED_REAL_PATH` with the same stdin, stdout, stderr and environment,
//! and appends `<name> <CNI_COMMAND> <CNI_CONTAINERID> <microseconds>` to `CNI_TIMED_LOG`:
//! how long each plugin of a chain lived, to set beside the chain's total. Its own exec is
//! paid by every plugin alike, so differences between chains keep their meaning.
//!
//! Only std: it must cost as little as the no-op plugin does.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let Some(name) = std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_owned()))
    else {
        eprintln!("cni-timed: no program name");
        return ExitCode::FAILURE;
    };
    let Some(real_dir) = std::env::var_os("CNI_TIMED_REAL_PATH") else {
        eprintln!("cni-timed: CNI_TIMED_REAL_PATH is not set");
        return ExitCode::FAILURE;
    };
    let real = PathBuf::from(real_dir).join(&name);
    let started = Instant::now();
    let status = match Command::new(&real).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cni-timed: {}: {e}", real.display());
            return ExitCode::FAILURE;
        }
    };
    let took = started.elapsed();
    if let Some(log) = std::env::var_os("CNI_TIMED_LOG") {
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
        let line = format!(
            "{} {} {} {}\n",
            name.to_string_lossy(),
            var("CNI_COMMAND"),
            var("CNI_CONTAINERID"),
            took.as_micros()
        );
        // One write per line with O_APPEND: lines of concurrent plugins do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cni-timed: {}: {e}", Path::new(&log).display());
        }
    }
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}
