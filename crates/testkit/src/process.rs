//! Child processes: long-running daemons that die with the test, commands that run inside
//! namespaces, and a checked `output()`.
//!
//! All `pre_exec` hooks live here, the only module allowed `unsafe`: they run in the forked
//! child between `fork` and `exec`, where only async-signal-safe calls are allowed and
//! nothing may allocate (another thread of the parent may have held the allocator's lock at
//! the fork). Every hook below only calls raw syscalls through `nix`/`libc` with data
//! prepared before the fork.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::unistd::{Pid, getpid, getppid};

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A background child process that is stopped (SIGTERM, then SIGKILL) and reaped on drop,
/// and that the kernel kills if the test process dies first.
pub struct Daemon {
    child: Child,
    what: String,
}

impl Daemon {
    /// Spawns `cmd`; `what` names it in errors.
    ///
    /// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
    /// process. Test threads end while fixtures may still be alive elsewhere (for example in
    /// a shared static), so the fork happens on one spawner thread that lives as long as the
    /// process.
    pub fn spawn(mut cmd: Command, what: impl Into<String>) -> Result<Self> {
        let what = what.into();
        die_with_parent(&mut cmd);
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        spawner()
            .send((cmd, reply_tx))
            .map_err(|_| anyhow!("the testkit spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .context("the testkit spawner thread dropped the request")?
            .with_context(|| format!("spawning {what}"))?;
        Ok(Self { child, what })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (it is reaped then), `None` while it runs.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("checking on {}", self.what))
    }

    /// Stops the child: SIGTERM, then SIGKILL after a grace period; always reaps it.
    /// Calling it again after the child exited does nothing.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("pid out of range")?);
        // The child cannot have been reaped yet (we own it), so the pid is still ours.
        kill(pid, Signal::SIGTERM).with_context(|| format!("SIGTERM to {}", self.what))?;
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "testkit: {} ignored SIGTERM for {STOP_GRACE:?}, killing it",
            self.what
        );
        self.kill()
    }

    /// Kills the child with SIGKILL at once and reaps it, for when a clean exit is of no use.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        self.child
            .kill()
            .with_context(|| format!("SIGKILL to {}", self.what))?;
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.what))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("testkit: stopping {}: {e:#}", self.what);
        }
    }
}

/// Runs `cmd` with stdin closed; returns its stdout, or an error carrying its status,
/// stderr and stdout if it did not succeed.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes `cmd` join the network namespace `netns` and, if given, the mount namespace `mntns`
/// before it execs. The program is then looked up inside those namespaces.
///
/// Joining a mount namespace resets the working directory to its root, so the hook re-enters
/// the directory it started in (which the namespaces share unless it is under a bind mount).
pub(crate) fn enter_namespaces(cmd: &mut Command, netns: OwnedFd, mntns: Option<OwnedFd>) {
    let hook = move || -> io::Result<()> {
        setns(&netns, CloneFlags::CLONE_NEWNET)?;
        let Some(mntns) = &mntns else { return Ok(()) };
        let mut cwd = [0u8; libc::PATH_MAX as usize];
        // SAFETY: getcwd writes at most `cwd.len()` bytes, NUL included, into the buffer.
        let have_cwd = !unsafe { libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()) }.is_null();
        // A forked child is single-threaded, which setns(CLONE_NEWNS) requires.
        setns(mntns, CloneFlags::CLONE_NEWNS)?;
        if have_cwd {
            let cwd = CStr::from_bytes_until_nul(&cwd).map_err(|_| io::ErrorKind::InvalidData)?;
            nix::unistd::chdir(cwd)?;
        }
        Ok(())
    };
    // SAFETY: the hook only makes syscalls on data moved in before the fork, and allocates
    // nothing (nix passes `&CStr` paths through without copying).
    unsafe { cmd.pre_exec(hook) };
}

/// `sleep infinity` holding a new mount namespace for a simulated node.
///
/// Before exec the child joins `netns`, unshares its mount namespace, turns every mount into
/// a slave (so the host's later mounts such as `/run/netns/<pod>` still show up, while
/// nothing done here leaks back), mounts a fresh sysfs (sysfs shows the network namespace of
/// whoever mounted it, as `ip netns exec` does), and bind-mounts each `(source, target)`.
pub(crate) fn mount_ns_holder(netns: OwnedFd, binds: Vec<(CString, CString)>) -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let hook = move || -> io::Result<()> {
        setns(&netns, CloneFlags::CLONE_NEWNET)?;
        unshare(CloneFlags::CLONE_NEWNS)?;
        let none: Option<&CStr> = None;
        mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
        // Failing here only means no sysfs was mounted at /sys.
        let _ = umount2(c"/sys", MntFlags::MNT_DETACH);
        mount(
            Some(c"sysfs"),
            c"/sys",
            Some(c"sysfs"),
            MsFlags::empty(),
            none,
        )?;
        for (source, target) in &binds {
            mount(
                Some(source.as_c_str()),
                target.as_c_str(),
                none,
                MsFlags::MS_BIND,
                none,
            )?;
        }
        Ok(())
    };
    // SAFETY: as in `enter_namespaces`: syscalls only, on data prepared before the fork.
    unsafe { cmd.pre_exec(hook) };
    cmd
}

/// Confines the child of a [`crate::limits::Jail`]: before exec it joins each cgroup whose
/// `cgroup.procs` is open in `procs` (writing `0` moves the writer), caps its address space
/// at `address_space` bytes (`RLIMIT_AS`), starts its own session and process group (so the
/// jail can kill the group), and asks for SIGKILL when the spawning thread dies (failing if
/// the parent is already gone, as [`die_with_parent`] does).
pub(crate) fn jail_hook(cmd: &mut Command, procs: Vec<OwnedFd>, address_space: u64) {
    let parent = getpid();
    let hook = move || -> io::Result<()> {
        for fd in &procs {
            // One byte, "0": the writing process itself.
            nix::unistd::write(fd, b"0")?;
        }
        setrlimit(Resource::RLIMIT_AS, address_space, address_space)?;
        nix::unistd::setsid()?;
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        if getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: syscalls only (write, setrlimit, setsid, prctl, getppid), on descriptors
    // opened before the fork; nothing allocates.
    unsafe { cmd.pre_exec(hook) };
}

/// Turns SIGTERM (how nextest ends a test past its time, SIGKILL following after a grace
/// period) into a flag the caller polls, so that a long test can stop between steps and let
/// its guards remove what it made (namespaces, cgroups, etcd) instead of dying at once.
/// Installed once per process; returns the flag.
pub fn sigterm_flag() -> &'static AtomicBool {
    static TERMINATED: AtomicBool = AtomicBool::new(false);
    static INSTALLED: OnceLock<()> = OnceLock::new();
    extern "C" fn on_sigterm(_: libc::c_int) {
        TERMINATED.store(true, Ordering::SeqCst);
    }
    INSTALLED.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::Handler(on_sigterm),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(Signal::SIGTERM, &action) } {
            eprintln!("testkit: cannot catch SIGTERM: {e}");
        }
    });
    &TERMINATED
}

/// Runs `cmd` (stdin closed) to its end or to `deadline`, when it is killed; returns its
/// output and whether it was killed. The child dies with the test, too: SIGKILL when the
/// calling thread dies, and no start at all if the parent is already gone.
pub fn output_within(mut cmd: Command, deadline: Duration) -> Result<(Output, bool)> {
    die_with_parent(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let read = |pipe: Option<Box<dyn io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut kept);
            }
            kept
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                killed = true;
                let _ = child.kill();
                break child.wait().with_context(|| format!("reaping {cmd:?}"))?;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((
        Output {
            status,
            stdout,
            stderr,
        },
        killed,
    ))
}

/// Asks the kernel to SIGKILL the child when its parent (thread) dies, closing the race
/// where the parent died before the request.
fn die_with_parent(cmd: &mut Command) {
    let parent = getpid();
    let hook = move || -> io::Result<()> {
        // A daemon must not inherit signals its parent blocked (the demo blocks SIGINT and
        // SIGTERM to clean up on Ctrl-C): it would then ignore the SIGTERM that stops it.
        nix::sys::signal::SigSet::all().thread_unblock()?;
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        if getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: prctl and getppid are async-signal-safe; the hook allocates nothing.
    unsafe { cmd.pre_exec(hook) };
}

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// The process-lifetime thread that forks every [`Daemon`].
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The requester blocks on this reply, so it cannot be gone.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the testkit spawner thread");
        tx
    })
}
