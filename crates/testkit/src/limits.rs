//! A [`Jail`] for running a plugin (or any command) that may run away: a pids and memory
//! cgroup, `RLIMIT_AS`, its own session and process group, and a wall-clock deadline.
//!
//! This is what lets the bad-input suite feed hostile input to our binaries on a shared
//! machine: a fork bomb (a plugin delegating to itself) stops at `pids.max`, a read of
//! `/dev/zero` at the memory limit or the address-space limit, and a hang at the deadline,
//! when the whole process group *and* everything else in the cgroup (a process that started
//! its own session) is killed.
//!
//! Cgroups: v2 when the unified hierarchy's root `cgroup.controllers` lists `pids` and
//! `memory`, otherwise the v1 `pids` and `memory` hierarchies (this machine: PID 1 is not
//! systemd, and the hybrid layout's v2 part offers only `hugetlb`). On v2 a jail's cgroup is
//! made under [`V2_PARENT`], a cgroup of its own directly under the root (the test's own
//! cgroup holds processes, so it cannot delegate controllers without moving them; it is left
//! as it is), and that parent is removed with the last jail. On v1 the jails are made under
//! the test process's own cgroup in each hierarchy. Every jail cgroup is named
//! `testkit-jail-…` (so a leftover check finds them at any depth) and removed on drop.
//! Without them [`Jail::new`] fails; [`require_cgroups`] turns that into a skip, or a
//! failure in CI.
//!
//! One jail is meant for one run: its peaks ([`Outcome::peak_pids`],
//! [`Outcome::peak_memory`]) are those of the cgroup's lifetime.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::process::jail_hook;
use crate::unique_name;

/// What a jail allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `pids.max`: tasks (threads count) in the cgroup at once.
    pub pids: u64,
    /// The cgroup's memory limit in bytes (`memory.max` / `memory.limit_in_bytes`).
    pub memory: u64,
    /// `RLIMIT_AS` of the child in bytes: a second guard, per process.
    pub address_space: u64,
    /// Wall time from spawn after which the group and the cgroup are killed.
    pub deadline: Duration,
}

impl Default for Limits {
    /// 64 tasks, 512 MiB, 2 GiB of address space, 30 s.
    fn default() -> Self {
        Self {
            pids: 64,
            memory: 512 << 20,
            address_space: 2 << 30,
            deadline: Duration::from_secs(30),
        }
    }
}

/// How a jailed run ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// Everything written to stdout, up to [`OUTPUT_CAP`] bytes.
    pub stdout: Vec<u8>,
    /// Everything written to stderr, up to [`OUTPUT_CAP`] bytes.
    pub stderr: Vec<u8>,
    /// From spawn to the child's exit (or its kill at the deadline).
    pub elapsed: Duration,
    /// The deadline passed and the jail killed the run.
    pub timed_out: bool,
    /// Processes still in the cgroup after the child exited (then killed): a plugin that
    /// left something running behind it.
    pub leftovers: Vec<u32>,
    /// The most tasks the cgroup held at once.
    pub peak_pids: u64,
    /// The most memory the cgroup was charged at once, in bytes.
    pub peak_memory: u64,
    /// A fork or clone failed because of `pids.max`.
    pub hit_pids_limit: bool,
}

impl Outcome {
    /// The exit code, or `None` when a signal ended the child.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// How much of stdout and stderr a run keeps (more is read and dropped).
pub const OUTPUT_CAP: usize = 16 << 20;

/// How long the leftovers of a run get to vanish on their own after the child exited (a
/// grandchild between its parent's exit and its own).
const LEFTOVER_GRACE: Duration = Duration::from_millis(200);

/// The v2 cgroup (under the unified mount) that holds every jail; it holds no process.
pub const V2_PARENT: &str = "testkit-jails";

/// The prefix of every jail cgroup's name.
pub const JAIL_PREFIX: &str = "testkit-jail-";

/// The cgroup layout of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy's mount point (its root as we see it), which offers `pids` and
    /// `memory`.
    V2(PathBuf),
    /// Our own cgroup directory in the v1 `pids` and `memory` hierarchies.
    V1 { pids: PathBuf, memory: PathBuf },
}

impl Hierarchy {
    /// Finds our cgroups from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let own = fs::read_to_string("/proc/self/cgroup")?;
        Self::from_tables(&mountinfo, &own, |dir| {
            fs::read_to_string(dir.join("cgroup.controllers")).ok()
        })
    }

    /// [`Hierarchy::detect`] on given tables; `controllers` reads a v2 directory's
    /// `cgroup.controllers`.
    pub fn from_tables(
        mountinfo: &str,
        own: &str,
        controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<Self> {
        let mounts = cgroup_mounts(mountinfo);
        let own_path = |hierarchy: &str| -> Option<String> {
            own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                let wanted = if hierarchy.is_empty() {
                    names.is_empty()
                } else {
                    names.split(',').any(|n| n == hierarchy)
                };
                wanted.then(|| path.to_string())
            })
        };
        if let Some(mount) = mounts.iter().find(|m| m.kind == "cgroup2") {
            let listed = controllers(&mount.point).unwrap_or_default();
            let has = |c: &str| listed.split_whitespace().any(|l| l == c);
            if has("pids") && has("memory") {
                return Ok(Self::V2(mount.point.clone()));
            }
        }
        let v1 = |controller: &str| -> Result<PathBuf> {
            let mount = mounts
                .iter()
                .find(|m| m.kind.split(',').any(|k| k == controller))
                .with_context(|| {
                    format!("no cgroup v2 with pids+memory and no v1 {controller} hierarchy")
                })?;
            let path = own_path(controller)
                .with_context(|| format!("/proc/self/cgroup has no {controller} line"))?;
            mount.dir_of(&path)
        };
        Ok(Self::V1 {
            pids: v1("pids")?,
            memory: v1("memory")?,
        })
    }
}

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug)]
struct CgroupMount {
    /// Where it is mounted.
    point: PathBuf,
    /// The cgroup the mount shows at `point` (mountinfo's root field): `/` unless only a
    /// subtree is mounted (a container's view).
    root: String,
    /// `cgroup2`, or the v1 controller list from the super options (`rw,memory`).
    kind: String,
}

impl CgroupMount {
    /// The directory of the cgroup `path` (as `/proc/self/cgroup` names it) under this mount.
    fn dir_of(&self, path: &str) -> Result<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rest = path.strip_prefix(root).with_context(|| {
            format!(
                "cgroup {path} is outside {} (which shows {})",
                self.point.display(),
                self.root
            )
        })?;
        anyhow::ensure!(
            rest.is_empty() || rest.starts_with('/'),
            "cgroup {path} is outside {} (which shows {})",
            self.point.display(),
            self.root
        );
        Ok(self.point.join(rest.trim_start_matches('/')))
    }
}

/// Every cgroup mount of `mountinfo`.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut pre = pre.split(' ');
            let root = pre.nth(3)?;
            let point = pre.next()?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let options = post.nth(1)?;
            let kind = match fstype {
                "cgroup2" => "cgroup2".to_string(),
                "cgroup" => options.to_string(),
                _ => return None,
            };
            Some(CgroupMount {
                point: PathBuf::from(point),
                root: root.to_string(),
                kind,
            })
        })
        .collect()
}

/// True when a [`Jail`] can be made here; otherwise skips the test (or panics in CI), as
/// [`crate::require!`] does.
pub fn require_cgroups() -> bool {
    if !crate::gate::require_root() {
        return false;
    }
    match Jail::new("probe", Limits::default()) {
        Ok(_) => true,
        Err(e) => crate::gate::missing(&format!("no pids+memory cgroup for a jail: {e:#}")),
    }
}

/// A pids and memory cgroup (v2, or one in each v1 hierarchy) for one confined run.
/// Dropping it kills whatever is still in it and removes the cgroup directories.
pub struct Jail {
    hierarchy: Hierarchy,
    /// On v2, [`V2_PARENT`], to remove once its last jail is gone.
    parent: Option<PathBuf>,
    /// The cgroup directories made for this jail (one for v2, two for v1).
    dirs: Vec<PathBuf>,
    limits: Limits,
}

impl Jail {
    /// Makes the cgroup(s) `testkit-jail-<unique name>` (v2: under [`V2_PARENT`]; v1: under
    /// our own cgroup in each hierarchy) and sets the limits.
    pub fn new(hint: &str, limits: Limits) -> Result<Self> {
        let hierarchy = Hierarchy::detect()?;
        let name = format!("{JAIL_PREFIX}{}", unique_name(hint));
        let mut jail = Self {
            hierarchy: hierarchy.clone(),
            parent: None,
            dirs: Vec::new(),
            limits,
        };
        match hierarchy {
            Hierarchy::V2(root) => {
                let parent = root.join(V2_PARENT);
                jail.parent = Some(parent.clone());
                let dir = jail.make_v2_dir(&root, &parent, &name)?;
                let listed = fs::read_to_string(dir.join("cgroup.controllers"))?;
                ensure!(
                    listed.contains("pids") && listed.contains("memory"),
                    "{} does not delegate pids and memory to its children ({listed:?})",
                    parent.display()
                );
                write(&dir, "pids.max", limits.pids)?;
                write(&dir, "memory.max", limits.memory)?;
                // Swap would let a run exceed its memory limit unseen.
                let _ = write(&dir, "memory.swap.max", 0);
            }
            Hierarchy::V1 { pids, memory } => {
                let dir = jail.make_dir(&pids, &name)?;
                write(&dir, "pids.max", limits.pids)?;
                let dir = jail.make_dir(&memory, &name)?;
                write(&dir, "memory.limit_in_bytes", limits.memory)?;
            }
        }
        Ok(jail)
    }

    /// Makes `<root>/testkit-jails/<name>`, with the root and the parent delegating `pids`
    /// and `memory`. Another jail's drop may remove the parent between our steps (it removes
    /// it when empty): then it is made again.
    fn make_v2_dir(&mut self, root: &Path, parent: &Path, name: &str) -> Result<PathBuf> {
        let delegate = |dir: &Path| -> Result<()> {
            let path = dir.join("cgroup.subtree_control");
            fs::write(&path, "+pids +memory")
                .with_context(|| format!("delegating pids and memory in {}", path.display()))
        };
        delegate(root)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let made = match fs::create_dir(parent) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    Err(e).with_context(|| format!("creating cgroup {}", parent.display()))
                }
                _ => delegate(parent).and_then(|()| self.make_dir(parent, name)),
            };
            match made {
                Ok(dir) => return Ok(dir),
                Err(_) if attempts < 5 && !parent.exists() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn make_dir(&mut self, parent: &Path, name: &str) -> Result<PathBuf> {
        sweep_stale(parent);
        let dir = parent.join(name);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// The layout in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The cgroup directories of this jail.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs `cmd` in the jail with `stdin` as its input (written while its output is read,
    /// so no pipe can deadlock), until it exits or the deadline passes. Pre-exec hooks the
    /// caller put on `cmd` (joining a namespace) run before the jail's own.
    pub fn run(&self, mut cmd: Command, stdin: &[u8]) -> Result<Outcome> {
        let procs = self
            .dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .with_context(|| format!("opening {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        jail_hook(&mut cmd, procs, self.limits.address_space);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        // From here on, every way out kills what is in the jail first: the pipe readers
        // below (and the scope joining them) end only once nothing holds the pipes.
        let result = self.supervise(&mut child, start, stdin);
        if result.is_err() {
            let _ = child.kill();
            self.kill_all();
            let _ = child.wait();
        }
        result
    }

    /// [`Jail::run`] after the spawn.
    fn supervise(&self, child: &mut Child, start: Instant, stdin: &[u8]) -> Result<Outcome> {
        let (input, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => anyhow::bail!("the child's stdio is not piped"),
            };
        let pgid = Pid::from_raw(i32::try_from(child.id())?);
        std::thread::scope(|scope| -> Result<Outcome> {
            // A child that never reads makes this fail with EPIPE once it is gone: fine.
            scope.spawn(move || {
                let mut input = input;
                let _ = input.write_all(stdin);
            });
            let out = scope.spawn(move || read_capped(stdout));
            let err = scope.spawn(move || read_capped(stderr));
            let waited = (|| -> Result<(ExitStatus, bool)> {
                loop {
                    if let Some(status) = child.try_wait()? {
                        return Ok((status, false));
                    }
                    if start.elapsed() >= self.limits.deadline {
                        let _ = killpg(pgid, Signal::SIGKILL);
                        self.signal_all();
                        return Ok((child.wait()?, true));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })();
            let (status, timed_out) = match waited {
                Ok(w) => w,
                Err(e) => {
                    // Before the scope joins the readers.
                    let _ = child.kill();
                    self.kill_all();
                    return Err(e);
                }
            };
            let elapsed = start.elapsed();
            // What is still in the cgroup once the child is gone was left behind by it.
            let mut leftovers = self.pids();
            let grace = Instant::now() + LEFTOVER_GRACE;
            while !leftovers.is_empty() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(5));
                leftovers = self.pids();
            }
            // Also closes the pipes a leftover still holds, which ends the readers.
            self.kill_all();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            let (peak_pids, peak_memory, hit_pids_limit) = self.peaks();
            Ok(Outcome {
                status,
                stdout,
                stderr,
                elapsed,
                timed_out,
                leftovers,
                peak_pids,
                peak_memory,
                hit_pids_limit,
            })
        })
    }

    /// The processes in the jail now.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Peak tasks, peak memory, and whether `pids.max` refused a fork.
    fn peaks(&self) -> (u64, u64, bool) {
        let mut pids = 0;
        let mut memory = 0;
        let mut hit = false;
        for dir in &self.dirs {
            pids = pids.max(read_u64(dir, "pids.peak"));
            memory = memory
                .max(read_u64(dir, "memory.peak"))
                .max(read_u64(dir, "memory.max_usage_in_bytes"));
            hit |= fs::read_to_string(dir.join("pids.events")).is_ok_and(|events| {
                events.lines().any(|l| {
                    l.strip_prefix("max ")
                        .is_some_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
                })
            });
        }
        (pids, memory, hit)
    }

    /// SIGKILLs everything in the jail once.
    fn signal_all(&self) {
        for pid in self.pids() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// SIGKILLs everything in the jail until it is empty (bounded: a process in
    /// uninterruptible sleep may take a moment).
    fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= deadline {
                return;
            }
            self.signal_all();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.kill_all();
        for dir in self.dirs.iter().rev() {
            // A killed task leaves the cgroup only once reaped by its parent: retry briefly.
            let removed = crate::eventually(Duration::from_secs(5), || {
                fs::remove_dir(dir).is_ok() || !dir.exists()
            });
            if !removed {
                eprintln!("testkit: cannot remove cgroup {}", dir.display());
            }
        }
        // Removed with its last jail; while another jail lives in it this fails (EBUSY).
        if let Some(parent) = &self.parent {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Removes the empty jail cgroups in `parent` of test processes that are gone (killed before
/// their jails' drop ran: the jailed processes died with them, by `PR_SET_PDEATHSIG`, but
/// the directories stay). The pid is the one [`unique_name`] put in the name.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(JAIL_PREFIX)?.strip_prefix("ct")?.get(..5))
            .and_then(|digits| u32::from_str_radix(digits, 36).ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Fails (EBUSY) if something still runs in it: then it is left alone.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn write(dir: &Path, file: &str, value: u64) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value.to_string()).with_context(|| format!("writing {}", path.display()))
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads `from` to its end, keeping the first [`OUTPUT_CAP`] bytes.
fn read_capped(mut from: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN_V1: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n0::/\n";

    #[test]
    fn hybrid_without_v2_controllers_uses_v1() {
        let h = Hierarchy::from_tables(MOUNTINFO_V1, OWN_V1, |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                pids: "/sys/fs/cgroup/pids".into(),
                memory: "/sys/fs/cgroup/memory/process_api/abc".into()
            }
        );
    }

    #[test]
    fn v2_with_pids_and_memory_is_preferred() {
        let mountinfo = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_tables(mountinfo, "0::/user.slice/x.scope\n", |dir| {
            // The root's controllers: jails go under a cgroup of their own there.
            assert_eq!(dir, Path::new("/sys/fs/cgroup"));
            Some("cpu io memory pids\n".into())
        })
        .unwrap();
        assert_eq!(h, Hierarchy::V2("/sys/fs/cgroup".into()));
    }

    #[test]
    fn a_mount_of_a_subtree_is_joined_below_its_root() {
        // A container's view: the memory mount shows /docker/abc at its mount point.
        let mountinfo = "\
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let own = "8:pids:/\n4:memory:/docker/abc/inner\n";
        let h = Hierarchy::from_tables(mountinfo, own, |_| None).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                pids: "/sys/fs/cgroup/pids".into(),
                memory: "/sys/fs/cgroup/memory/inner".into()
            }
        );
        // A cgroup outside what the mount shows is an error, not a wrong directory.
        let e = Hierarchy::from_tables(mountinfo, "8:pids:/\n4:memory:/docker/abcd\n", |_| None)
            .unwrap_err();
        assert!(format!("{e:#}").contains("outside"), "{e:#}");
    }

    #[test]
    fn neither_is_an_error_naming_what_is_missing() {
        let mountinfo = "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let e =
            Hierarchy::from_tables(mountinfo, "0::/\n", |_| Some("cpu io\n".into())).unwrap_err();
        assert!(format!("{e:#}").contains("pids"), "{e:#}");
    }
}
