//! A simulated Kubernetes node: a host namespace on an [`Underlay`] plus a private view of
//! the directories Calico and CNI use on a node.

use std::ffi::{CString, OsStr};
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow};
use tempfile::TempDir;

use crate::netns::NetNs;
use crate::process::{Daemon, enter_namespaces, mount_ns_holder, run_checked};
use crate::underlay::{Underlay, set_forwarding};

/// The node paths that get a per-node directory, and that directory's name on the host side.
/// (`/var/run` is a symlink to `/run` on Debian, so `/run/calico` is also `/var/run/calico`.)
const NODE_DIRS: [(&str, &str); 6] = [
    ("/etc/cni/net.d", "etc-cni-net.d"),
    ("/opt/cni/bin", "opt-cni-bin"),
    ("/var/lib/calico", "var-lib-calico"),
    ("/var/log/calico", "var-log-calico"),
    ("/run/calico", "run-calico"),
    ("/var/lib/cni", "var-lib-cni"),
];

/// A node: a network namespace attached to an underlay (`eth0`, default routes via the
/// switch, IPv4 and IPv6 forwarding on inside it only), and a mount namespace in which a
/// per-node temporary directory is bind-mounted over each of `/etc/cni/net.d`,
/// `/opt/cni/bin`, `/var/lib/calico`, `/var/log/calico`, `/run/calico` and `/var/lib/cni`.
///
/// So a program run with [`SimNode::command`] reads `/var/lib/calico/nodename` or
/// `/etc/cni/net.d/calico-tls/etcd-key` of this node, and the host's real files are never
/// touched. Bind mounts need their targets to exist on the host: missing ones are created
/// there as empty directories and left in place (removing a directory that is a mount point
/// in another node's namespace would detach that mount). Nothing is ever written into them.
///
/// The mount namespace is held by a `sleep infinity` process; dropping the node stops it,
/// then deletes the network namespace, then the temporary directories.
pub struct SimNode {
    // Field order is drop order.
    holder: Daemon,
    netns: NetNs,
    dirs: TempDir,
    ip: Ipv4Addr,
}

impl SimNode {
    /// Attaches a new node with underlay address `ip`.
    pub fn new(underlay: &Underlay, name_hint: &str, ip: Ipv4Addr) -> Result<Self> {
        let netns = underlay.attach(name_hint, ip)?;
        netns.within(set_forwarding)??;
        let dirs = tempfile::Builder::new()
            .prefix(&format!("testkit-{}.", netns.name()))
            .tempdir()?;
        let mut binds = Vec::new();
        for (target, dir) in NODE_DIRS {
            let source = dirs.path().join(dir);
            fs::create_dir(&source).with_context(|| format!("creating {}", source.display()))?;
            fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
            binds.push((
                CString::new(source.as_os_str().as_bytes())?,
                CString::new(target)?,
            ));
        }
        let holder = Daemon::spawn(
            mount_ns_holder(netns.fd()?, binds),
            format!("mount namespace holder of node {}", netns.name()),
        )?;
        Ok(Self {
            holder,
            netns,
            dirs,
            ip,
        })
    }

    /// The node's name: the unique name of its network namespace.
    pub fn name(&self) -> &str {
        self.netns.name()
    }

    /// The node's (host) network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// `/proc/<holder>/ns/mnt`: the node's mount namespace.
    pub fn mount_ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.pid()))
    }

    /// The node's address on the underlay (`eth0`).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The node's IPv6 address on the underlay.
    pub fn underlay_ip6(&self) -> Ipv6Addr {
        Underlay::ipv6_for(self.ip)
    }

    /// Where a path inside the node (under one of the per-node directories) is on the host.
    pub fn host_path(&self, node_path: impl AsRef<Path>) -> Result<PathBuf> {
        let node_path = node_path.as_ref();
        let node_path = node_path.strip_prefix("/var/run").map_or_else(
            |_| node_path.to_path_buf(),
            |rest| Path::new("/run").join(rest),
        );
        NODE_DIRS
            .iter()
            .find_map(|(target, dir)| {
                let rest = node_path.strip_prefix(target).ok()?;
                Some(self.dirs.path().join(dir).join(rest))
            })
            .ok_or_else(|| anyhow!("{} is not in a per-node directory", node_path.display()))
    }

    /// Host side of the node's `/etc/cni/net.d`.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir("/etc/cni/net.d")
    }

    /// Host side of the node's `/opt/cni/bin`.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir("/opt/cni/bin")
    }

    /// Host side of the node's `/var/lib/calico`.
    pub fn calico_lib_dir(&self) -> PathBuf {
        self.dir("/var/lib/calico")
    }

    /// Host side of the node's `/var/log/calico`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir("/var/log/calico")
    }

    /// Host side of the node's `/run/calico` (`/var/run/calico`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir("/run/calico")
    }

    /// Host side of the node's `/var/lib/cni`.
    pub fn cni_lib_dir(&self) -> PathBuf {
        self.dir("/var/lib/cni")
    }

    /// Writes `/var/lib/calico/nodename` as calico/node does (no trailing newline).
    pub fn write_nodename(&self, name: &str) -> Result<()> {
        let path = self.calico_lib_dir().join("nodename");
        fs::write(&path, name).with_context(|| format!("writing {}", path.display()))
    }

    /// Gives the node its own `/etc/resolv.conf` with `contents` (bind-mounted over the
    /// host's in the node's mount namespace only, so programs on the node resolve names
    /// with it; the mount goes with the namespace).
    pub fn set_resolv_conf(&self, contents: &str) -> Result<()> {
        let file = self.dirs.path().join("resolv.conf");
        fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
        run_checked(
            self.command("mount")?
                .arg("--bind")
                .arg(&file)
                .arg("/etc/resolv.conf"),
        )
        .map(|_| ())
    }

    /// A command that runs `program` on the node: in its network and mount namespaces, both
    /// joined between fork and exec. `program` is looked up in the node's view of the files.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mntns =
            fs::File::open(self.mount_ns_path()).context("opening the node's mount namespace")?;
        let mut cmd = Command::new(program);
        enter_namespaces(&mut cmd, self.netns.fd()?, Some(mntns.into()));
        Ok(cmd)
    }

    /// Runs `sh -c script` on the node; returns stdout, or an error if it failed.
    pub fn sh(&self, script: &str) -> Result<String> {
        run_checked(self.command("sh")?.arg("-c").arg(script))
    }

    fn dir(&self, node_path: &str) -> PathBuf {
        self.host_path(node_path)
            .expect("NODE_DIRS lists every per-node directory")
    }
}
