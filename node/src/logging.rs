//! Logs on stderr, with levels: `CALICO_LOG_LEVEL`, else `LOG_LEVEL` (`trace`, `debug`,
//! `info`, `warning`/`warn`, `error`, `fatal`/`panic` as `error`, `none`/`off`; any case),
//! `info` by default, as Calico's node logs to its container's output. `startup` reads its
//! own variable, `CALICO_STARTUP_LOGLEVEL`, with the same names ([`parse`]).

use crate::config::{ConfigError, Env};

/// The level the environment asks for.
pub fn level(env: &dyn Env) -> Result<log::LevelFilter, ConfigError> {
    let (variable, value) = match (env.var("CALICO_LOG_LEVEL"), env.var("LOG_LEVEL")) {
        (Some(v), _) => ("CALICO_LOG_LEVEL", v),
        (None, Some(v)) => ("LOG_LEVEL", v),
        (None, None) => return Ok(log::LevelFilter::Info),
    };
    parse(variable, &value)
}

/// A level named by `variable`'s `value` (logrus's names and `none`/`off`; any case).
pub fn parse(variable: &'static str, value: &str) -> Result<log::LevelFilter, ConfigError> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "info" => log::LevelFilter::Info,
        "warn" | "warning" => log::LevelFilter::Warn,
        "error" | "fatal" | "panic" => log::LevelFilter::Error,
        "none" | "off" => log::LevelFilter::Off,
        _ => {
            return Err(ConfigError::new(
                variable,
                format!("{value:?} is not a log level (debug, info, warning, error)"),
            ));
        }
    })
}

/// Installs the logger (stderr, millisecond timestamps) at `level`.
pub fn init(level: log::LevelFilter) {
    // A second call keeps the first logger (only tests would make one).
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn levels_come_from_either_variable() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(level(&env(&[])).expect("default"), log::LevelFilter::Info);
        assert_eq!(
            level(&env(&[("LOG_LEVEL", "Debug")])).expect("valid"),
            log::LevelFilter::Debug
        );
        assert_eq!(
            level(&env(&[
                ("CALICO_LOG_LEVEL", "warning"),
                ("LOG_LEVEL", "debug")
            ]))
            .expect("valid"),
            log::LevelFilter::Warn
        );
        let e = level(&env(&[("CALICO_LOG_LEVEL", "loud")])).expect_err("bad");
        assert_eq!(e.variable, "CALICO_LOG_LEVEL");
    }
}
