//! Reading a file that a setting names (a CA, a certificate or key, a kubeconfig, the
//! nodename file, calicoctl's `-f` and `--config`), safely whatever the setting holds.
//!
//! A path in a config may name anything: `/dev/zero` (a read without end), a FIFO (an open
//! or a read that blocks for ever), a directory, a huge file. [`read_config_file`] opens
//! without blocking (`O_NONBLOCK`, `O_NOCTTY`), refuses what `fstat` does not call a regular
//! file, refuses a file larger than the caller's limit, and never reads more than the limit
//! plus one byte (a file that grows meanwhile is refused too). Its errors name the setting.
//!
//! A leaf crate: it imports nothing of the workspace, so every crate may use it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The limit for PEM files (CA, certificate, key) and one-line files (the node's name): far
/// above any real one.
pub const SMALL_FILE_LIMIT: u64 = 1 << 20;
/// The limit for documents (a kubeconfig, calicoctl's resources and config).
pub const DOCUMENT_LIMIT: u64 = 16 << 20;

/// Why a setting's file cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {path}: {problem}")]
pub struct FileError {
    /// The setting that named the file, as the user wrote it (`etcd_ca_cert_file`, `-f`).
    pub setting: String,
    pub path: PathBuf,
    pub problem: Problem,
}

/// What is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("does not exist")]
    Missing,
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    /// A directory, FIFO, socket or device.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("is not UTF-8 text")]
    NotText,
}

impl FileError {
    /// Whether the file is simply not there (callers for which that is a default, not an
    /// error).
    pub fn is_missing(&self) -> bool {
        matches!(self.problem, Problem::Missing)
    }
}

/// Opens `path` (named by `setting`) as [`read_config_file`] does, without reading it: for
/// files that another library reads afterwards, so that it meets only a regular file of
/// reasonable size.
pub fn check_config_file(path: &Path, limit: u64, setting: &str) -> Result<(), FileError> {
    open(path, limit, setting).map(|_| ())
}

/// The contents of `path`, a regular file of at most `limit` bytes, named by `setting`.
pub fn read_config_file(path: &Path, limit: u64, setting: &str) -> Result<Vec<u8>, FileError> {
    let (file, size) = open(path, limit, setting)?;
    let err = |problem| FileError {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| err(Problem::Unreadable(e)))?;
    if bytes.len() as u64 > limit {
        return Err(err(Problem::TooLarge { limit }));
    }
    Ok(bytes)
}

/// As [`read_config_file`], as UTF-8 text.
pub fn read_config_string(path: &Path, limit: u64, setting: &str) -> Result<String, FileError> {
    let bytes = read_config_file(path, limit, setting)?;
    String::from_utf8(bytes).map_err(|_| FileError {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem: Problem::NotText,
    })
}

/// The open file and its size, once it is known to be a regular file within `limit`.
fn open(path: &Path, limit: u64, setting: &str) -> Result<(File, u64), FileError> {
    let err = |problem| FileError {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    // What the path names is looked at before it is opened: opening a device can have side
    // effects of its own (a watchdog starts counting), and a socket's open fails with ENXIO
    // rather than saying what it is. The check after the open stays, for a file swapped in
    // between.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(err(Problem::NotRegular(kind_of(meta.file_type()))));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(err(Problem::Missing)),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer; a terminal does not become
        // ours. (std opens with O_CLOEXEC already.)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err(Problem::Missing),
            _ => err(Problem::Unreadable(e)),
        })?;
    let meta = file.metadata().map_err(|e| err(Problem::Unreadable(e)))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(err(Problem::NotRegular(kind_of(kind))));
    }
    if meta.len() > limit {
        return Err(err(Problem::TooLarge { limit }));
    }
    Ok((file, meta.len()))
}

/// What a file that is not a regular file is, for the error.
fn kind_of(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn refused(path: &Path, limit: u64) -> FileError {
        let started = Instant::now();
        let e = read_config_file(path, limit, "etcd_ca_cert_file").expect_err("refused");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{}: {:?}",
            path.display(),
            started.elapsed()
        );
        let text = e.to_string();
        assert!(
            text.starts_with("etcd_ca_cert_file ") && text.contains(&path.display().to_string()),
            "{text}"
        );
        e
    }

    /// Bad-input finding #9: /dev/zero, a FIFO without a writer, a directory and a sparse
    /// file past the limit are refused at once (each read without end, blocked for ever, or
    /// failed late before).
    #[test]
    fn what_is_not_a_small_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let sparse = dir.path().join("sparse");
        File::create(&sparse)
            .and_then(|f| f.set_len(1 << 40))
            .expect("sparse file");
        let e = refused(Path::new("/dev/zero"), SMALL_FILE_LIMIT);
        assert!(
            matches!(e.problem, Problem::NotRegular("a character device")),
            "{e}"
        );
        let e = refused(&fifo, SMALL_FILE_LIMIT);
        assert!(matches!(e.problem, Problem::NotRegular("a FIFO")), "{e}");
        let e = refused(dir.path(), SMALL_FILE_LIMIT);
        assert!(
            matches!(e.problem, Problem::NotRegular("a directory")),
            "{e}"
        );
        let e = refused(&sparse, SMALL_FILE_LIMIT);
        assert!(matches!(e.problem, Problem::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        let e = refused(&dir.path().join("none"), SMALL_FILE_LIMIT);
        assert!(e.is_missing(), "{e}");
        assert!(check_config_file(&fifo, SMALL_FILE_LIMIT, "kubeconfig").is_err());
    }

    #[test]
    fn a_regular_file_within_the_limit_is_read_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "0123456789").expect("write");
        assert_eq!(
            read_config_file(&path, 10, "x").expect("read"),
            b"0123456789"
        );
        assert_eq!(
            read_config_string(&path, 10, "x").expect("read"),
            "0123456789"
        );
        assert!(matches!(
            read_config_file(&path, 9, "x")
                .expect_err("too large")
                .problem,
            Problem::TooLarge { limit: 9 }
        ));
        // Through a symlink, as a mounted secret's files are.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        check_config_file(&link, 10, "x").expect("regular file behind a link");
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        assert!(matches!(
            read_config_string(&path, 10, "x")
                .expect_err("not text")
                .problem,
            Problem::NotText
        ));
    }
}
