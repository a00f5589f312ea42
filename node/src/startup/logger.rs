//! The start-up's log: one line per record on stderr (`calico-node startup: LEVEL message`),
//! at `CALICO_STARTUP_LOGLEVEL`. Installed once by [`super::run`]; if the process already
//! has a logger (the daemon's), that one is kept.

use std::io::Write as _;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // A closed stderr must not stop the start-up.
            let _ = writeln!(
                std::io::stderr(),
                "calico-node startup: {:<5} {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger at `level` (keeps a logger already installed).
pub fn init(level: log::LevelFilter) {
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(level);
    }
}
