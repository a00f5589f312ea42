//! The node's name (Calico's `DetermineNodeName`) and the node's files under
//! `/var/lib/calico`: the nodename file the plugins read, and the MTU file.
//!
//! Precedence, as Calico: `NODENAME`, else the nodename file of an earlier start-up (so a
//! later change of host name does not rename the node), else `HOSTNAME`, else the kernel's
//! host name, both lower-cased. Ours: the name is checked before anything is written (Calico
//! fails later, at the Node's validation), and the file is read trimmed.

use super::host::Host;
use super::settings::Settings;
use super::{Report, StartupError};
use std::io::Write as _;
use std::path::Path;

/// Where the name came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    Nodename,
    File,
    Hostname,
    Kernel,
}

impl NameSource {
    fn describe(self, settings: &Settings) -> String {
        match self {
            NameSource::Nodename => "NODENAME".into(),
            NameSource::File => settings.nodename_file.display().to_string(),
            NameSource::Hostname => "HOSTNAME".into(),
            NameSource::Kernel => "the host name".into(),
        }
    }
}

/// A DNS-1123 subdomain, as Calico's validator requires of a Node's name.
pub fn valid_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

/// Reads the nodename file, `None` if it does not exist; bounded and without blocking
/// (`calico-fsbound`), so a FIFO or `/dev/zero` there is an error, not a hang.
fn read_optional(path: &Path) -> Result<Option<String>, StartupError> {
    match calico_fsbound::read_config_string(
        path,
        calico_fsbound::SMALL_FILE_LIMIT,
        "the nodename file",
    ) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The node's name.
pub fn determine(
    settings: &Settings,
    host: &dyn Host,
    report: &mut Report,
) -> Result<String, StartupError> {
    let stored = read_optional(&settings.nodename_file)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let (name, source) = if let Some(n) = &settings.nodename {
        (n.clone(), NameSource::Nodename)
    } else if let Some(n) = stored {
        (n, NameSource::File)
    } else if let Some(n) = &settings.hostname {
        (n.clone(), NameSource::Hostname)
    } else {
        report.warn(
            "using the host name as the node name: set NODENAME to name the node explicitly".into(),
        );
        let n = host.hostname()?;
        (n.trim().to_lowercase(), NameSource::Kernel)
    };
    if !valid_name(&name) {
        let from = source.describe(settings);
        let problem = format!(
            "{name:?} (from {from}) is not a valid node name: lower case letters, digits, '-' \
             and '.', at most 253 characters"
        );
        return Err(match source {
            NameSource::Nodename => {
                StartupError::Config(crate::config::ConfigError::new("NODENAME", problem))
            }
            NameSource::Hostname => {
                StartupError::Config(crate::config::ConfigError::new("HOSTNAME", problem))
            }
            _ => StartupError::Node(problem),
        });
    }
    log::info!(
        "determined node name {name} (from {})",
        source.describe(settings)
    );
    Ok(name)
}

/// Writes `contents` to `path` unless it holds them already: to a temporary file in the same
/// directory, then renamed over, so a reader never sees half a file. The directory is made
/// if missing. Whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> Result<bool, StartupError> {
    let io = |source| StartupError::File {
        path: path.to_path_buf(),
        source,
    };
    if read_optional(path)?.as_deref() == Some(contents) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::startup::host::StaticHost;

    use crate::startup::settings::test_settings as settings;

    fn host() -> StaticHost {
        StaticHost {
            hostname: "Worker-7".into(),
            ..StaticHost::default()
        }
    }

    /// Mirrors utils.go `DetermineNodeName`: NODENAME, the stored name, HOSTNAME, the host
    /// name (the last two lower-cased).
    #[test]
    fn precedence_is_calicos() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Report::default();
        let name = |pairs: &[(&str, &str)], r: &mut Report| {
            determine(&settings(dir.path(), pairs), &host(), r)
        };
        assert_eq!(name(&[], &mut r).unwrap(), "worker-7");
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(
            name(&[("HOSTNAME", "Box.Local")], &mut r).unwrap(),
            "box.local"
        );
        std::fs::write(dir.path().join("nodename"), "stored-1\n").unwrap();
        assert_eq!(name(&[("HOSTNAME", "box")], &mut r).unwrap(), "stored-1");
        assert_eq!(name(&[("NODENAME", " node-9 ")], &mut r).unwrap(), "node-9");
    }

    /// Bad-input finding #9 for calico-node: a nodename file that is a FIFO (or /dev/zero)
    /// is an error at once, naming the file, not a hang (or a read without end).
    #[test]
    fn a_nodename_file_that_is_no_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("nodename"))
            .status()
            .unwrap();
        assert!(made.success());
        let started = std::time::Instant::now();
        let e = determine(&settings(dir.path(), &[]), &host(), &mut Report::default())
            .expect_err("a FIFO");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let text = e.to_string();
        assert!(
            text.contains("nodename file") && text.contains("a FIFO"),
            "{text}"
        );
    }

    #[test]
    fn invalid_names_are_refused_naming_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Report::default();
        let e = determine(
            &settings(dir.path(), &[("NODENAME", "Node1")]),
            &host(),
            &mut r,
        )
        .expect_err("upper case");
        assert!(e.to_string().starts_with("NODENAME: "), "{e}");
        let e = determine(
            &settings(dir.path(), &[("HOSTNAME", "a_b")]),
            &host(),
            &mut r,
        )
        .expect_err("underscore");
        assert!(e.to_string().starts_with("HOSTNAME: "), "{e}");
        assert!(valid_name("node-1.example.com"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a..b"));
        assert!(!valid_name(&"a".repeat(254)));
    }

    #[test]
    fn files_are_written_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/nodename");
        assert!(write_if_changed(&path, "node-1").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "node-1");
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!write_if_changed(&path, "node-1").unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        assert!(write_if_changed(&path, "node-2").unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }
}
