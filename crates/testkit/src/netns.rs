//! Named network namespaces (`/run/netns/<name>`), for pods and simulated hosts alike.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{enter_namespaces, run_checked};
use crate::unique_name;

/// A uniquely named network namespace made with `ip netns add`.
///
/// On drop, every process still inside it is SIGKILLed (a process would keep the namespace,
/// and its interfaces, alive after the name is gone) and the namespace is deleted, which also
/// destroys its interfaces, veth peers included. `lo` starts down, as in a fresh pod.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ct<pid><hint><n>` (see [`unique_name`]).
    pub fn new(hint: &str) -> Result<Self> {
        // A name can only clash with a leftover of a killed run that had the same pid.
        for _ in 0..5 {
            let name = unique_name(hint);
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .stdin(Stdio::null())
                .output()
                .context("running ip netns add")?;
            if out.status.success() {
                return Ok(Self { name });
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("File exists") {
                bail!("ip netns add {name} failed: {stderr}");
            }
        }
        bail!("ip netns add: every name tried for {hint:?} already exists")
    }

    /// The name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what CNI calls `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// An open handle on the namespace, for `setns`.
    pub fn fd(&self) -> Result<OwnedFd> {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(file.into())
    }

    /// A command that runs `program` inside this namespace (joined between fork and exec,
    /// so nothing else of the caller changes).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        enter_namespaces(&mut cmd, self.fd()?, None);
        Ok(cmd)
    }

    /// Runs `program args...` inside the namespace and returns its output, whatever its
    /// exit status.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in netns {}", self.name))
    }

    /// Runs `sh -c script` inside the namespace; returns stdout, or an error if it failed.
    pub fn sh(&self, script: &str) -> Result<String> {
        run_checked(self.command("sh")?.arg("-c").arg(script))
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result
    /// (a panic in `f` is passed on). The thread ends with `f`, so no thread is ever left in
    /// the wrong namespace. Sockets and `/proc/sys/net` files opened by `f` belong to this
    /// namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        within_path(&self.path(), f)
    }

    fn kill_remaining_processes(&self) -> Result<()> {
        let pids = run_checked(Command::new("ip").args(["netns", "pids", &self.name]))?;
        for pid in pids.split_whitespace() {
            let pid: i32 = pid.parse().with_context(|| format!("pid {pid:?}"))?;
            // It may have exited meanwhile.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = self.kill_remaining_processes() {
            eprintln!("testkit: netns {}: {e:#}", self.name);
        }
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("testkit: {e:#}");
        }
    }
}

/// [`NetNs::within`] for a namespace given by its path.
pub(crate) fn within_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
    });
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
