//! A BGP interop lab: simulated nodes on one underlay (see [`Lab`]) running real BGP speakers —
//! BIRD 2 ([`Bird`]), GoBGP ([`GoBgp`]) and FRR ([`Frr`]) — each configured from one small
//! struct ([`SpeakerConfig`]), plus queries of their RIBs, their sessions and the kernel
//! routes of a namespace, and a generator of Calico-style BIRD configuration for a node in a
//! full mesh ([`calico::CalicoMeshNode`]).
//!
//! Every daemon runs inside a namespace the test made, with its configuration, control
//! sockets, pid files and log under its own temporary directory; none of the packages'
//! services or default paths is used. A speaker is stopped by PID when dropped (before the
//! namespaces go, as long as it is declared after the lab; a namespace's drop kills whatever
//! is left in it anyway). The lab recipe and the gotchas these types avoid are in
//! `/work/shared/reference/bgp.md` §5 (FRR start order and user, GoBGP's kernel bridge, BIRD's
//! `protocol direct`, FRR's coalesce time).
//!
//! Speakers share an underlay with calico-node agents when they are started on a
//! [`SimNode`] of a [`crate::Cluster`] (`Bird::start(cluster.node(i).netns(), cfg)`), or on
//! extra nodes attached to its underlay with [`SimNode::new`].
//!
//! ```no_run
//! use std::time::Duration;
//! use testkit::bgplab::{Bird, Frr, Lab, Neighbor, Speaker, SpeakerConfig, DEFAULT_ASN};
//!
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::new(2)?; // 198.18.0.1 and .2; declared first, so dropped last
//! let bird = Bird::start(
//!     lab.netns(0),
//!     SpeakerConfig::new(Lab::ip(0), DEFAULT_ASN)
//!         .neighbor(Neighbor::new(Lab::ip(1), DEFAULT_ASN))
//!         .originate(Lab::pod_block(0)),
//! )?;
//! let mut frr = Frr::start(
//!     lab.netns(1),
//!     SpeakerConfig::new(Lab::ip(1), DEFAULT_ASN).neighbor(Neighbor::new(Lab::ip(0), DEFAULT_ASN)),
//! )?;
//! frr.wait_established(Duration::from_secs(10))?;
//! frr.announce(Lab::pod_block(1))?;
//! bird.wait_rib_has(&[Lab::pod_block(1)], Duration::from_secs(10))?;
//! testkit::bgplab::wait_kernel_routes(
//!     bird.netns_name(),
//!     &[(Lab::pod_block(1), Lab::ip(1))],
//!     Duration::from_secs(10),
//! )?;
//! # Ok(())
//! # }
//! ```

pub mod bird;
pub mod calico;
pub mod frr;
pub mod gobgp;
pub mod kernel;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

pub use bird::Bird;
pub use frr::Frr;
pub use gobgp::GoBgp;
pub use kernel::{
    KernelRoute, kernel_routes, kernel_routes_within, wait_kernel_gateway_routes,
    wait_kernel_lacks, wait_kernel_routes,
};

use crate::netns::NetNs;
use crate::node::SimNode;
use crate::process::enter_namespaces;
use crate::underlay::Underlay;

/// The lab underlay's switch (bridge, default gateway) address; nodes are 198.18.0.1, .2, ...
/// (RFC 2544's benchmarking range, so nothing here can collide with a real network).
pub const LAB_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The LAN device of every node (what [`Underlay::attach`] names it).
pub const LAN_DEVICE: &str = "eth0";
/// The AS every lab speaker uses unless told otherwise: Calico's default.
pub const DEFAULT_ASN: u32 = 64512;

/// An underlay (a bridge namespace, 198.18.0.0/24, switch at [`LAB_GATEWAY`]) and `n`
/// simulated nodes on it at 198.18.0.1..=n. Dropping it removes the nodes, then the underlay.
///
/// Node `i` (0-based) has the pod block [`Lab::pod_block`]`(i)` = 198.19.(i+1).0/26 by
/// convention; [`Lab::add_pod_address`] puts its first address on `lo` as a stand-in pod
/// (the kernel here has no `dummy` module).
pub struct Lab {
    // Field order is drop order: nodes before the switch.
    pub nodes: Vec<SimNode>,
    pub underlay: Underlay,
}

impl Lab {
    /// `n` nodes (at most 253), named after `bgp<k>` plus the unique-name scheme.
    pub fn new(n: usize) -> Result<Lab> {
        if n > 253 {
            bail!("a lab has at most 253 nodes, not {n}");
        }
        let underlay = Underlay::with_gateway(LAB_GATEWAY, 24)?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(SimNode::new(
                &underlay,
                &format!("bgp{}", i + 1),
                Self::ip(i),
            )?);
        }
        Ok(Lab { nodes, underlay })
    }

    /// The underlay address of node `i`: 198.18.0.(i+1).
    pub fn ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, octet(i + 1))
    }

    /// The pod block of node `i` by convention: 198.19.(i+1).0/26.
    pub fn pod_block(i: usize) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(198, 19, octet(i + 1), 0), 26).expect("26 is a valid length")
    }

    /// The stand-in pod address of node `i`: the first address of its pod block.
    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, octet(i + 1), 1)
    }

    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// The network namespace of node `i`.
    pub fn netns(&self, i: usize) -> &NetNs {
        self.nodes[i].netns()
    }

    /// Puts [`Lab::pod_ip`]`(i)/32` on node `i`'s `lo`; returns it.
    pub fn add_pod_address(&self, i: usize) -> Result<Ipv4Addr> {
        let ip = Self::pod_ip(i);
        crate::process::run_checked(Command::new("ip").args([
            "-n",
            self.netns(i).name(),
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "lo",
        ]))?;
        Ok(ip)
    }

    /// Whether one ping from node `from`, sourced from `source`, to `to` is answered (1 s).
    pub fn ping(&self, from: usize, source: Ipv4Addr, to: Ipv4Addr) -> Result<bool> {
        ping(self.netns(from), source, to)
    }
}

/// Whether one busybox ping from `ns`, sourced from `source`, to `to` is answered (1 s).
pub fn ping(ns: &NetNs, source: Ipv4Addr, to: Ipv4Addr) -> Result<bool> {
    let out = ns.run(
        "busybox",
        [
            "ping",
            "-c1",
            "-W1",
            "-I",
            &source.to_string(),
            &to.to_string(),
        ],
    )?;
    Ok(out.status.success())
}

/// Node index → octet, for the lab's address plan.
fn octet(k: usize) -> u8 {
    u8::try_from(k).expect("lab nodes are numbered below 254")
}

/// Which implementation a speaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpeakerKind {
    Bird,
    GoBgp,
    Frr,
}

impl fmt::Display for SpeakerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpeakerKind::Bird => "BIRD",
            SpeakerKind::GoBgp => "GoBGP",
            SpeakerKind::Frr => "FRR",
        })
    }
}

/// Session timers, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Delay before the first connect attempt (BIRD's `connect delay time`; GoBGP and FRR
    /// have no such knob and connect at once).
    pub connect_delay: u32,
    /// Between connect attempts (BIRD `connect retry time`, GoBGP `connect-retry`, FRR
    /// `timers connect`).
    pub connect_retry: u32,
    /// BIRD's `error wait time min,max`; GoBGP's `idle-hold-time-after-reset` gets the min.
    pub error_wait: (u32, u32),
    /// Hold time; `None` leaves each daemon's default (BIRD 240, GoBGP 90, FRR 180).
    pub hold: Option<u32>,
}

impl Timers {
    /// Calico's `bgp_template`: connect delay 2, connect retry 5, error wait 5,30, default hold.
    pub const CALICO: Timers = Timers {
        connect_delay: 2,
        connect_retry: 5,
        error_wait: (5, 30),
        hold: None,
    };
    /// Shorter than Calico's, for tests (the reference lab's "fast" timers).
    pub const FAST: Timers = Timers {
        connect_delay: 1,
        connect_retry: 2,
        error_wait: (1, 5),
        hold: None,
    };
}

/// One BGP neighbour of a speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub address: Ipv4Addr,
    pub asn: u32,
    /// This speaker reflects routes to the neighbour (`rr client`).
    pub rr_client: bool,
    /// The cluster id this speaker uses as a reflector for this neighbour; `None` = its
    /// router id. Only meaningful with `rr_client`.
    pub cluster_id: Option<Ipv4Addr>,
    /// Wait for the neighbour to connect, never connect out (Calico's `passive on` for the
    /// higher address of a mesh pair).
    pub passive: bool,
}

impl Neighbor {
    /// An active, plain neighbour.
    pub fn new(address: Ipv4Addr, asn: u32) -> Neighbor {
        Neighbor {
            address,
            asn,
            rr_client: false,
            cluster_id: None,
            passive: false,
        }
    }

    /// Makes the neighbour a route-reflector client of this speaker.
    pub fn rr_client(mut self, cluster_id: Option<Ipv4Addr>) -> Neighbor {
        self.rr_client = true;
        self.cluster_id = cluster_id;
        self
    }

    /// Makes the session passive on this side.
    pub fn passive(mut self) -> Neighbor {
        self.passive = true;
        self
    }
}

/// What a speaker is told: identity, neighbours, timers, what to originate and whether to
/// install learned routes in its namespace's kernel table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Router id and the local (source, next-hop) address of every session.
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// The LAN device (BIRD's `protocol direct` needs it for iBGP next hops).
    pub interface: String,
    pub neighbors: Vec<Neighbor>,
    pub timers: Timers,
    pub graceful_restart: bool,
    /// Prefixes originated at start (BIRD: static blackholes; GoBGP: `global rib add`;
    /// FRR: `network`).
    pub originate: Vec<Ipv4Net>,
    /// Install learned routes in the kernel (BIRD `protocol kernel` export, GoBGP's bridge,
    /// FRR's zebra).
    pub install_routes: bool,
}

impl SpeakerConfig {
    /// Router id `router_id`, AS `asn`, no neighbours, [`Timers::FAST`], graceful restart
    /// on, nothing originated, learned routes installed, LAN device [`LAN_DEVICE`].
    pub fn new(router_id: Ipv4Addr, asn: u32) -> SpeakerConfig {
        SpeakerConfig {
            router_id,
            asn,
            interface: LAN_DEVICE.to_string(),
            neighbors: Vec::new(),
            timers: Timers::FAST,
            graceful_restart: true,
            originate: Vec::new(),
            install_routes: true,
        }
    }

    pub fn neighbor(mut self, neighbor: Neighbor) -> SpeakerConfig {
        self.neighbors.push(neighbor);
        self
    }

    pub fn originate(mut self, prefix: Ipv4Net) -> SpeakerConfig {
        self.originate.push(prefix);
        self
    }

    pub fn timers(mut self, timers: Timers) -> SpeakerConfig {
        self.timers = timers;
        self
    }

    pub fn graceful_restart(mut self, on: bool) -> SpeakerConfig {
        self.graceful_restart = on;
        self
    }

    pub fn install_routes(mut self, on: bool) -> SpeakerConfig {
        self.install_routes = on;
        self
    }

    pub fn interface(mut self, device: &str) -> SpeakerConfig {
        self.interface = device.to_string();
        self
    }
}

/// A BGP session's state, as the daemons name it (BIRD's `Passive` reads as `Active`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
    /// Anything else the daemon reported (e.g. BIRD's `Close`, a down protocol).
    Other(String),
}

impl SessionState {
    /// Parses a daemon's name for the state, case-insensitively.
    pub fn parse(s: &str) -> SessionState {
        match s.trim().to_ascii_lowercase().as_str() {
            "idle" => SessionState::Idle,
            "connect" => SessionState::Connect,
            "active" | "passive" => SessionState::Active,
            "opensent" => SessionState::OpenSent,
            "openconfirm" => SessionState::OpenConfirm,
            "established" => SessionState::Established,
            _ => SessionState::Other(s.trim().to_string()),
        }
    }
}

/// What every lab speaker offers the tests.
pub trait Speaker {
    fn kind(&self) -> SpeakerKind;
    /// The configuration it was started with, originated prefixes kept current.
    fn config(&self) -> &SpeakerConfig;
    /// The name of the network namespace it runs in.
    fn netns_name(&self) -> &str;
    /// The IPv4 unicast prefixes in its BGP RIB (originated and learned).
    fn rib(&self) -> Result<BTreeSet<Ipv4Net>>;
    /// The state of its session with each configured neighbour.
    fn sessions(&self) -> Result<BTreeMap<Ipv4Addr, SessionState>>;
    /// The state of its session with `peer` (`Other("not configured")` for a stranger).
    fn session(&self, peer: Ipv4Addr) -> Result<SessionState> {
        Ok(self
            .sessions()?
            .remove(&peer)
            .unwrap_or_else(|| SessionState::Other("not configured".into())))
    }

    /// Starts originating `prefix`.
    fn announce(&mut self, prefix: Ipv4Net) -> Result<()>;
    /// Stops originating `prefix`.
    fn withdraw(&mut self, prefix: Ipv4Net) -> Result<()>;
    /// Starts originating every prefix of `prefixes`, in as few daemon commands as the
    /// daemon allows (one reconfigure, one vtysh file, one MRT injection).
    fn announce_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        prefixes.iter().try_for_each(|p| self.announce(*p))
    }
    /// Stops originating every prefix of `prefixes`.
    fn withdraw_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        prefixes.iter().try_for_each(|p| self.withdraw(*p))
    }
    /// SIGKILLs its processes at once (a crash, for fault tests); the value is dropped as
    /// usual afterwards.
    fn kill(&mut self) -> Result<()>;
    /// The pids of its processes (daemons and helpers).
    fn pids(&self) -> Vec<u32>;
    /// What it logged so far (all its processes).
    fn log(&self) -> String;

    /// The kernel routes of its namespace's main table.
    fn kernel_routes(&self) -> Result<Vec<KernelRoute>> {
        kernel_routes(self.netns_name())
    }

    /// Waits (up to `timeout`) until the session with every neighbour is Established.
    fn wait_established(&self, timeout: Duration) -> Result<()> {
        let want: BTreeSet<Ipv4Addr> = self.config().neighbors.iter().map(|n| n.address).collect();
        wait_for(
            timeout,
            &format!(
                "{} {} sessions Established",
                self.kind(),
                self.config().router_id
            ),
            || {
                let s = self.sessions()?;
                let up = want
                    .iter()
                    .all(|a| s.get(a) == Some(&SessionState::Established));
                Ok((up, format!("{s:?}")))
            },
        )
        .with_context(|| self.log_tail())
    }

    /// Waits (up to `timeout`) until its RIB holds every prefix of `prefixes`.
    fn wait_rib_has(&self, prefixes: &[Ipv4Net], timeout: Duration) -> Result<()> {
        wait_for(
            timeout,
            &format!(
                "{} {} RIB holding {prefixes:?}",
                self.kind(),
                self.config().router_id
            ),
            || {
                let rib = self.rib()?;
                Ok((prefixes.iter().all(|p| rib.contains(p)), format!("{rib:?}")))
            },
        )
        .with_context(|| self.log_tail())
    }

    /// The last lines of [`Speaker::log`], for error messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("{} log (tail):\n{tail}", self.kind())
    }
}

/// Polls `check` every 20 ms until it reports true or `timeout` passes; on timeout the error
/// names `what` and the last state `check` described (or its last error).
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(bool, String)>,
) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let last = match check() {
            Ok((true, _)) => return Ok(()),
            Ok((false, state)) => state,
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Debian package and path of each binary a lab speaker runs.
pub const DAEMON_BINARIES: [(&str, &str); 7] = [
    ("bird2", "/usr/sbin/bird"),
    ("bird2", "/usr/sbin/birdc"),
    ("gobgpd", "/usr/bin/gobgpd"),
    ("gobgpd", "/usr/bin/gobgp"),
    ("frr", "/usr/lib/frr/zebra"),
    ("frr", "/usr/lib/frr/bgpd"),
    ("frr", "/usr/bin/vtysh"),
];

/// An error naming the Debian package to install unless `binary` (one of
/// [`DAEMON_BINARIES`]) exists.
pub(crate) fn ensure_binary(binary: &str) -> Result<()> {
    if Path::new(binary).is_file() {
        return Ok(());
    }
    let package = DAEMON_BINARIES
        .iter()
        .find(|(_, b)| *b == binary)
        .map_or("?", |(p, _)| p);
    bail!("{binary} is missing: install the Debian package `{package}` (scripts/setup does)")
}

/// For a test's start: true when every daemon of the lab is installed. Otherwise it skips
/// the test or, with `CI=true`, fails it, naming the packages to install (as
/// [`crate::require!`] does for tools).
pub fn require_daemons() -> bool {
    let mut absent: Vec<String> = DAEMON_BINARIES
        .iter()
        .filter(|(_, b)| !Path::new(b).is_file())
        .map(|(p, b)| format!("{b} (Debian package {p})"))
        .collect();
    absent.dedup();
    absent.is_empty()
        || crate::gate::missing(&format!("missing BGP daemons: {}", absent.join(", ")))
}

/// A command that runs `program` in the network namespace at `netns` (joined between fork
/// and exec).
pub(crate) fn ns_command(netns: &Path, program: impl AsRef<OsStr>) -> Result<Command> {
    let fd = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let mut cmd = Command::new(program);
    enter_namespaces(&mut cmd, fd.into(), None);
    Ok(cmd)
}

/// A fresh private directory for one daemon's files, readable by others (FRR drops to user
/// `frr` and must reach its sockets and configuration).
pub(crate) fn daemon_dir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(&format!("testkit-{prefix}."))
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.path().display()))?;
    Ok(dir)
}

/// Reads a log file, empty if there is none.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Log files of a daemon's directory: `<dir>/<name>.log`.
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_states_parse_from_every_daemon_spelling() {
        assert_eq!(
            SessionState::parse("Established"),
            SessionState::Established
        );
        assert_eq!(
            SessionState::parse("ESTABLISHED"),
            SessionState::Established
        );
        assert_eq!(SessionState::parse("Passive"), SessionState::Active);
        assert_eq!(SessionState::parse("OpenSent"), SessionState::OpenSent);
        assert_eq!(
            SessionState::parse("Close"),
            SessionState::Other("Close".into())
        );
    }

    #[test]
    fn address_plan() {
        assert_eq!(Lab::ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(Lab::pod_block(2).to_string(), "198.19.3.0/26");
        assert_eq!(Lab::pod_ip(1), Ipv4Addr::new(198, 19, 2, 1));
    }
}
