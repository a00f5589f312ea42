//! Plugin logging: stderr always, plus a log file when the config names one.
//!
//! stdout belongs to the CNI result, so nothing here ever writes there.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: log::LevelFilter,
    pub file: Option<PathBuf>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: log::LevelFilter::Info,
            file: None,
        }
    }
}

struct State {
    file: Option<File>,
    /// `PLUGIN VERB container`, so interleaved calls in one log file can be told apart.
    context: String,
}

struct Logger {
    state: Mutex<State>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        state: Mutex::new(State {
            file: None,
            context: String::new(),
        }),
    })
}

/// Installs the logger (once per process) at the default level, stderr only.
pub fn install(context: &str) {
    let l = logger();
    if log::set_logger(l).is_ok() {
        log::set_max_level(LogSettings::default().level);
    }
    if let Ok(mut s) = l.state.lock() {
        s.context = context.to_string();
    }
}

/// Applies the config's settings. A log file that cannot be opened is reported on stderr
/// and otherwise ignored: logging must never fail a pod.
pub fn configure(settings: &LogSettings) {
    log::set_max_level(settings.level);
    let file = settings
        .file
        .as_deref()
        .and_then(|p| match open_log_file(p) {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "cannot open log file {}: {e}",
                    p.display()
                );
                None
            }
        });
    if let Ok(mut s) = logger().state.lock() {
        s.file = file;
    }
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Log targets of this suite's crates; everything else (the HTTP/2, TLS and netlink
/// libraries) is kept to warnings even at debug level, where it would drown our lines.
const OUR_TARGETS: [&str; 3] = ["calico", "cni_protocol", "portmap"];

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let ours = OUR_TARGETS.iter().any(|t| metadata.target().starts_with(t));
        metadata.level() <= log::max_level() && (ours || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let line = format!(
            "{} [{}][{}] {}: {}\n",
            utc_timestamp(SystemTime::now()),
            record.level(),
            std::process::id(),
            s.context,
            record.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(f) = s.file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC, without pulling in a date crate.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_698_355_123);
        assert_eq!(utc_timestamp(t), "2026-11-26 13:05:55.123");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
