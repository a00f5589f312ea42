//! This workspace's built binaries, and per-test `CNI_PATH` directories.
//!
//! Our plugins share names with the reference plugins (`portmap`), so a test cannot simply
//! put both directories on `CNI_PATH`: it builds a directory of symlinks naming exactly the
//! binaries it wants.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use tempfile::TempDir;

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The directory cargo puts this workspace's binaries in (`<target>/<profile>`), derived from
/// the running test executable (`<target>/<profile>/deps/<test>-<hash>`), so it follows
/// `CARGO_TARGET_DIR`, the profile and a `--target` triple without being told.
pub fn build_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .context("the test executable has no directory")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The path of our binary `name`; an error says how to build it if it is missing
/// (`cargo test -p X` builds only X's binaries).
pub fn built(name: &str) -> Result<PathBuf> {
    let path = build_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (same profile) first",
        path.display()
    );
    Ok(path)
}

/// The `calico-node` binary to start: `TESTKIT_CALICO_NODE` if set (to measure another build
/// of it in `scripts/bench-bgp` or `scripts/bench-policy`), else [`built`]'s.
pub fn calico_node() -> Result<PathBuf> {
    match std::env::var_os("TESTKIT_CALICO_NODE") {
        Some(p) => {
            let path = PathBuf::from(p);
            ensure!(
                path.is_file(),
                "TESTKIT_CALICO_NODE names {}, which is not a file",
                path.display()
            );
            Ok(path)
        }
        None => built("calico-node"),
    }
}

/// The path of Debian's reference plugin `name`, if installed.
pub fn reference_plugin(name: &str) -> Result<PathBuf> {
    let path = Path::new(REFERENCE_PLUGIN_DIR).join(name);
    ensure!(
        path.is_file(),
        "{} is missing; install containernetworking-plugins",
        path.display()
    );
    Ok(path)
}

/// A temporary directory of symlinks to chosen plugin binaries, for `CNI_PATH`.
pub struct CniPathDir {
    dir: TempDir,
}

impl CniPathDir {
    /// An empty directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-cni-path.")
            .tempdir()?;
        Ok(Self { dir })
    }

    /// The directory, to use as `CNI_PATH`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds our built binary `name` (`calico`, `calico-ipam`, `portmap`, `cni-noop`).
    pub fn add_ours(&self, name: &str) -> Result<&Self> {
        self.add(name, &built(name)?)
    }

    /// Adds Debian's reference plugin `name` from [`REFERENCE_PLUGIN_DIR`].
    pub fn add_reference(&self, name: &str) -> Result<&Self> {
        self.add(name, &reference_plugin(name)?)
    }

    /// Adds `target` under the name `name`.
    pub fn add(&self, name: &str, target: &Path) -> Result<&Self> {
        let link = self.dir.path().join(name);
        symlink(target, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
        Ok(self)
    }
}
