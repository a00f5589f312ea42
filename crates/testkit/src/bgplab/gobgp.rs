//! GoBGP as a lab speaker: `gobgpd -f <toml> --api-hosts 127.0.0.1:<port>` in a namespace
//! (the API on that namespace's loopback), driven with the `gobgp` CLI run in the namespace.
//!
//! Debian 12's gobgpd (3.10) cannot install routes through FRR 8.4's zebra (a ZAPI mismatch
//! panics it; reference §5.3), so learned routes reach the kernel through a bridge, the model
//! kube-router uses: `gobgp monitor global rib --current -j` followed by a thread of the test
//! process, which feeds `ip route replace <p> via <nh> proto bgp` / `ip route del <p> proto
//! bgp` to one `ip -force -batch -` running in the namespace. Paths whose next hop is the
//! speaker itself (its own originations) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde_json::Value;
use tempfile::TempDir;

use super::{
    SessionState, Speaker, SpeakerConfig, SpeakerKind, daemon_dir, ensure_binary, log_path,
    ns_command, read_log, wait_for,
};
use crate::netns::NetNs;
use crate::process::{Daemon, run_checked};

const GOBGPD: &str = "/usr/bin/gobgpd";
const GOBGP: &str = "/usr/bin/gobgp";
/// The gRPC port on the namespace's loopback (each namespace has its own loopback).
pub const API_PORT: u16 = 50051;

/// The kernel bridge: the monitor, the `ip -batch` it feeds, and the thread between them.
struct KernelBridge {
    monitor: Daemon,
    thread: Option<JoinHandle<()>>,
    ip: Daemon,
}

impl Drop for KernelBridge {
    fn drop(&mut self) {
        // The monitor's end closes its output, which ends the thread, which closes ip's input.
        if let Err(e) = self.monitor.kill() {
            eprintln!("testkit: stopping gobgp monitor: {e:#}");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.ip.stop() {
            eprintln!("testkit: stopping ip -batch: {e:#}");
        }
    }
}

/// A running gobgpd (and its kernel bridge when routes are installed); stopped by PID on drop.
pub struct GoBgp {
    // Field order is drop order: the bridge, then the daemon, then its directory.
    bridge: Option<KernelBridge>,
    daemon: Daemon,
    config: SpeakerConfig,
    netns: String,
    netns_path: PathBuf,
    log: PathBuf,
    bridge_log: PathBuf,
    /// Prefixes added by MRT injection (see [`Speaker::withdraw_many`] of this type).
    injected: BTreeSet<Ipv4Net>,
    _dir: TempDir,
}

impl GoBgp {
    /// Starts gobgpd in `netns` with [`gobgpd_config`] of `config`; waits until its API
    /// answers, then starts the kernel bridge (if `install_routes`) and adds the originated
    /// prefixes.
    pub fn start(netns: &NetNs, config: SpeakerConfig) -> Result<GoBgp> {
        ensure_binary(GOBGPD)?;
        ensure_binary(GOBGP)?;
        let dir = daemon_dir("gobgp")?;
        let toml = dir.path().join("gobgpd.toml");
        std::fs::write(&toml, gobgpd_config(&config))?;
        let log = log_path(dir.path(), "gobgpd");
        let bridge_log = log_path(dir.path(), "bridge");
        let out = std::fs::File::create(&log)?;
        let mut cmd = ns_command(&netns.path(), GOBGPD)?;
        cmd.arg("-f")
            .arg(&toml)
            .args(["-t", "toml", "-p", "--pprof-disable"])
            .arg(format!("--api-hosts=127.0.0.1:{API_PORT}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Not `-r`, which flags a *restart* (asking peers to keep our routes): the
        // configuration's graceful-restart section enables the capability.
        let daemon = Daemon::spawn(cmd, format!("gobgpd in {}", netns.name()))?;
        let mut gobgp = GoBgp {
            bridge: None,
            daemon,
            config,
            netns: netns.name().to_string(),
            netns_path: netns.path(),
            log,
            bridge_log,
            injected: BTreeSet::new(),
            _dir: dir,
        };
        gobgp.wait_ready()?;
        if gobgp.config.install_routes {
            gobgp.bridge = Some(gobgp.start_bridge()?);
        }
        let originate = gobgp.config.originate.clone();
        gobgp.add_paths(&originate)?;
        Ok(gobgp)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let ready = wait_for(Duration::from_secs(10), "gobgpd's API", || {
            if let Some(status) = self.daemon.exit_status()? {
                bail!("gobgpd exited ({status})");
            }
            Ok((self.gobgp(&["global"]).is_ok(), String::new()))
        });
        ready.with_context(|| self.log_tail())
    }

    /// A `gobgp` CLI command against this daemon, run in its namespace.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = ns_command(&self.netns_path, GOBGP)?;
        cmd.args(["-u", "127.0.0.1", "-p", &API_PORT.to_string()]);
        Ok(cmd)
    }

    /// Runs `gobgp args...`; its output, or an error if it failed.
    pub fn gobgp(&self, args: &[&str]) -> Result<String> {
        run_checked(self.command()?.args(args))
    }

    fn rib_add(&self, p: Ipv4Net) -> Result<()> {
        let nh = self.config.router_id.to_string();
        self.gobgp(&[
            "global",
            "rib",
            "add",
            "-a",
            "ipv4",
            &p.to_string(),
            "nexthop",
            &nh,
        ])
        .map(|_| ())
    }

    /// Adds paths for `prefixes` with this speaker as next hop: a few with `global rib add`,
    /// more with `gobgp mrt inject global` of a TABLE_DUMP_V2 file ([`table_dump_v2`]).
    ///
    /// gobgp 3.10's `mrt inject` returns before its stream is drained and loses the tail of
    /// the file (reference §5.3), so the file is padded with copies of its last entry (re-adding
    /// a path changes nothing), and prefixes still missing from the RIB afterwards are
    /// injected again (at most 5 rounds).
    fn add_paths(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        if prefixes.len() <= MAX_SINGLE_ADDS {
            return prefixes.iter().try_for_each(|p| self.rib_add(*p));
        }
        let file = self._dir.path().join("inject.mrt");
        let mut missing: Vec<Ipv4Net> = prefixes.to_vec();
        for _round in 0..5 {
            let padding = missing.len().max(64);
            std::fs::write(
                &file,
                table_dump_v2(&missing, padding, self.config.router_id, self.config.asn),
            )?;
            let nh = self.config.router_id.to_string();
            run_checked(
                self.command()?
                    .args(["mrt", "inject", "global", "--no-ipv6", "--nexthop", &nh])
                    .arg(&file),
            )?;
            // Paths the CLI handed over may still be on their way into the RIB.
            let mut rib = BTreeSet::new();
            let _ = wait_for(Duration::from_secs(2), "injected paths", || {
                rib = self.rib()?;
                Ok((missing.iter().all(|p| rib.contains(p)), String::new()))
            });
            missing.retain(|p| !rib.contains(p));
            if missing.is_empty() {
                self.injected.extend(prefixes);
                return Ok(());
            }
        }
        bail!(
            "gobgp mrt inject: {} of {} prefixes never reached the RIB (first: {})",
            missing.len(),
            prefixes.len(),
            missing[0]
        )
    }

    fn start_bridge(&self) -> Result<KernelBridge> {
        let out = std::fs::File::create(&self.bridge_log)?;
        let (ip_in, mut ip_feed) = std::io::pipe()?;
        let mut ip_cmd = Command::new("ip");
        ip_cmd
            .args(["-n", &self.netns, "-force", "-batch", "-"])
            .stdin(ip_in)
            .stdout(Stdio::null())
            .stderr(out.try_clone()?);
        let ip = Daemon::spawn(ip_cmd, format!("ip -batch for gobgp in {}", self.netns))?;
        let (monitor_out, monitor_in) = std::io::pipe()?;
        let mut mon_cmd = self.command()?;
        mon_cmd
            .args(["monitor", "global", "rib", "--current", "-a", "ipv4", "-j"])
            .stdin(Stdio::null())
            .stdout(monitor_in)
            .stderr(out);
        let monitor = Daemon::spawn(mon_cmd, format!("gobgp monitor in {}", self.netns))?;
        // The parent's copies of the pipes' other ends are closed by now (moved into the
        // commands, dropped with them), so EOF arrives when the monitor ends.
        let own = self.config.router_id;
        let thread = std::thread::Builder::new()
            .name(format!("gobgp-bridge-{}", self.netns))
            .spawn(move || {
                for line in BufReader::new(monitor_out).lines() {
                    let Ok(line) = line else { break };
                    let commands = monitor_line_to_ip_batch(&line, own);
                    if !commands.is_empty()
                        && (ip_feed.write_all(commands.as_bytes()).is_err()
                            || ip_feed.flush().is_err())
                    {
                        break;
                    }
                }
            })
            .context("starting the gobgp kernel bridge thread")?;
        Ok(KernelBridge {
            monitor,
            thread: Some(thread),
            ip,
        })
    }
}

impl Speaker for GoBgp {
    fn kind(&self) -> SpeakerKind {
        SpeakerKind::GoBgp
    }

    fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    fn netns_name(&self) -> &str {
        &self.netns
    }

    fn rib(&self) -> Result<BTreeSet<Ipv4Net>> {
        parse_global_rib(&self.gobgp(&["global", "rib", "-a", "ipv4", "-j"])?)
    }

    fn sessions(&self) -> Result<BTreeMap<Ipv4Addr, SessionState>> {
        parse_neighbors(&self.gobgp(&["neighbor", "-j"])?)
    }

    fn announce(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.announce_many(&[prefix])
    }

    fn announce_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        self.add_paths(prefixes)?;
        let known: BTreeSet<Ipv4Net> = self.config.originate.iter().copied().collect();
        let new: Vec<Ipv4Net> = prefixes
            .iter()
            .filter(|p| !known.contains(p))
            .copied()
            .collect();
        self.config.originate.extend(new);
        Ok(())
    }

    fn withdraw_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        let gone: BTreeSet<&Ipv4Net> = prefixes.iter().collect();
        let remaining: Vec<Ipv4Net> = self
            .config
            .originate
            .iter()
            .filter(|p| !gone.contains(p))
            .copied()
            .collect();
        if prefixes.iter().any(|p| self.injected.contains(p)) {
            // Injected paths carry the MRT file's peer as their source, and `global rib del
            // <prefix>` (local paths only) silently leaves them: delete everything, then
            // add back what stays (it is withdrawn and announced again).
            self.gobgp(&["global", "rib", "-a", "ipv4", "del", "all"])?;
            self.injected.clear();
            self.config.originate.clear();
            self.add_paths(&remaining)?;
        } else {
            for p in prefixes {
                self.gobgp(&["global", "rib", "del", "-a", "ipv4", &p.to_string()])?;
            }
        }
        self.config.originate = remaining;
        Ok(())
    }

    fn withdraw(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.gobgp(&["global", "rib", "del", "-a", "ipv4", &prefix.to_string()])?;
        self.config.originate.retain(|p| *p != prefix);
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        self.daemon.kill()?;
        // The bridge would only see the monitor fail now; its routes stay in the kernel,
        // as they would after a crash of a real GoBGP-based speaker.
        self.bridge = None;
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.daemon.pid()];
        if let Some(b) = &self.bridge {
            pids.extend([b.monitor.pid(), b.ip.pid()]);
        }
        pids
    }

    fn log(&self) -> String {
        format!("{}{}", read_log(&self.log), read_log(&self.bridge_log))
    }
}

/// Up to this many prefixes are added one `gobgp global rib add` each (~5 ms apiece).
const MAX_SINGLE_ADDS: usize = 16;

/// An MRT file (RFC 6396 TABLE_DUMP_V2) holding one path per prefix, originated by
/// `router_id` in AS `asn` (ORIGIN IGP, empty AS_PATH, NEXT_HOP `router_id`), then `padding`
/// copies of the last prefix's entry.
pub fn table_dump_v2(
    prefixes: &[Ipv4Net],
    padding: usize,
    router_id: Ipv4Addr,
    asn: u32,
) -> Vec<u8> {
    const TABLE_DUMP_V2: u16 = 13;
    const PEER_INDEX_TABLE: u16 = 1;
    const RIB_IPV4_UNICAST: u16 = 2;
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes()); // timestamp
        out.extend_from_slice(&TABLE_DUMP_V2.to_be_bytes());
        out.extend_from_slice(&subtype.to_be_bytes());
        let len = u32::try_from(body.len()).expect("an MRT record is small");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    // One peer: this speaker (type 0x02 = IPv4 address, 4-byte AS).
    let mut peers = Vec::new();
    peers.extend_from_slice(&router_id.octets()); // collector id
    peers.extend_from_slice(&0u16.to_be_bytes()); // no view name
    peers.extend_from_slice(&1u16.to_be_bytes());
    peers.push(0x02);
    peers.extend_from_slice(&router_id.octets());
    peers.extend_from_slice(&router_id.octets());
    peers.extend_from_slice(&asn.to_be_bytes());
    record(&mut out, PEER_INDEX_TABLE, &peers);
    // ORIGIN IGP, AS_PATH empty, NEXT_HOP.
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4];
    attrs.extend_from_slice(&router_id.octets());
    let last = prefixes.last().copied();
    let all = prefixes
        .iter()
        .copied()
        .chain(std::iter::repeat_n(last, padding).flatten());
    for (seq, p) in all.enumerate() {
        let mut body = Vec::with_capacity(32);
        body.extend_from_slice(&u32::try_from(seq).unwrap_or(u32::MAX).to_be_bytes());
        body.push(p.prefix_len());
        let bytes = usize::from(p.prefix_len()).div_ceil(8);
        body.extend_from_slice(&p.network().octets()[..bytes]);
        body.extend_from_slice(&1u16.to_be_bytes()); // one entry
        body.extend_from_slice(&0u16.to_be_bytes()); // peer index
        body.extend_from_slice(&0u32.to_be_bytes()); // originated time
        let len = u16::try_from(attrs.len()).expect("attributes are small");
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&attrs);
        record(&mut out, RIB_IPV4_UNICAST, &body);
    }
    out
}

/// gobgpd's TOML for a lab speaker: the router id as local address of every session;
/// `idle-hold-time-after-reset` = the error-wait minimum (GoBGP's default 30 s would stall a
/// reset session); graceful restart (helper and restarter) for IPv4 unicast when asked.
pub fn gobgpd_config(c: &SpeakerConfig) -> String {
    let mut s = String::new();
    let id = c.router_id;
    let _ = writeln!(
        s,
        "[global.config]\n  as = {}\n  router-id = \"{id}\"\n  local-address-list = [\"{id}\"]",
        c.asn
    );
    for n in &c.neighbors {
        let _ = writeln!(
            s,
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}",
            n.address, n.asn
        );
        let _ = writeln!(
            s,
            "  [neighbors.transport.config]\n    local-address = \"{id}\"{}",
            if n.passive {
                "\n    passive-mode = true"
            } else {
                ""
            }
        );
        let t = &c.timers;
        let _ = write!(
            s,
            "  [neighbors.timers.config]\n    connect-retry = {}\n    idle-hold-time-after-reset = {}\n",
            t.connect_retry, t.error_wait.0
        );
        if let Some(hold) = t.hold {
            let _ = writeln!(
                s,
                "    hold-time = {hold}\n    keepalive-interval = {}",
                (hold / 3).max(1)
            );
        }
        if n.rr_client {
            let _ = writeln!(
                s,
                "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{}\"",
                n.cluster_id.unwrap_or(id)
            );
        }
        if c.graceful_restart {
            let _ = writeln!(
                s,
                "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120"
            );
        }
        let _ = writeln!(
            s,
            "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\""
        );
        if c.graceful_restart {
            let _ = writeln!(
                s,
                "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true"
            );
        }
    }
    s
}

/// The prefixes of `gobgp global rib -j` (an object keyed by prefix).
pub fn parse_global_rib(out: &str) -> Result<BTreeSet<Ipv4Net>> {
    let v: Value = serde_json::from_str(out).context("parsing gobgp global rib -j")?;
    let Some(obj) = v.as_object() else {
        // An empty RIB prints `null` or nothing useful.
        return Ok(BTreeSet::new());
    };
    obj.keys()
        .map(|k| k.parse().with_context(|| format!("prefix {k:?}")))
        .collect()
}

/// Each neighbour's state from `gobgp neighbor -j` (`session_state` is the gRPC enum:
/// 1 idle, 2 connect, 3 active, 4 opensent, 5 openconfirm, 6 established).
pub fn parse_neighbors(out: &str) -> Result<BTreeMap<Ipv4Addr, SessionState>> {
    let v: Value = serde_json::from_str(out).context("parsing gobgp neighbor -j")?;
    let mut sessions = BTreeMap::new();
    for n in v.as_array().into_iter().flatten() {
        let addr = n["state"]["neighbor_address"]
            .as_str()
            .or_else(|| n["conf"]["neighbor_address"].as_str())
            .context("neighbor without an address")?;
        let state = match &n["state"]["session_state"] {
            Value::Number(x) => match x.as_u64() {
                Some(1) => SessionState::Idle,
                Some(2) => SessionState::Connect,
                Some(3) => SessionState::Active,
                Some(4) => SessionState::OpenSent,
                Some(5) => SessionState::OpenConfirm,
                Some(6) => SessionState::Established,
                _ => SessionState::Other(x.to_string()),
            },
            Value::String(x) => SessionState::parse(x),
            _ => SessionState::Idle,
        };
        sessions.insert(
            addr.parse().with_context(|| format!("address {addr:?}"))?,
            state,
        );
    }
    Ok(sessions)
}

/// The `ip -batch` lines for one line of `gobgp monitor global rib -j` (a JSON array of
/// paths): `route replace` for a path, `route del` for a withdrawal; paths with no next hop,
/// next hop 0.0.0.0 or next hop `own` (this speaker's own) are skipped.
pub fn monitor_line_to_ip_batch(line: &str, own: Ipv4Addr) -> String {
    let Ok(Value::Array(paths)) = serde_json::from_str::<Value>(line) else {
        return String::new();
    };
    let mut out = String::new();
    for p in &paths {
        let Some(prefix) = p["nlri"]["prefix"].as_str() else {
            continue;
        };
        if prefix.parse::<Ipv4Net>().is_err() {
            continue;
        }
        let nexthop = p["attrs"].as_array().and_then(|attrs| {
            attrs.iter().find_map(|a| {
                a["nexthop"]
                    .as_str()
                    .or_else(|| a["nexthops"].as_array()?.first()?.as_str())
                    .and_then(|n| n.parse::<Ipv4Addr>().ok())
            })
        });
        let Some(nh) = nexthop else { continue };
        if nh == own || nh.is_unspecified() {
            continue;
        }
        if p["withdrawal"].as_bool() == Some(true) {
            // Without `via`: the route may have moved to another path's next hop meanwhile.
            let _ = writeln!(out, "route del {prefix} proto bgp");
        } else {
            let _ = writeln!(out, "route replace {prefix} via {nh} proto bgp");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgplab::Neighbor;

    #[test]
    fn monitor_lines_become_route_commands() {
        let own = Ipv4Addr::new(198, 18, 0, 2);
        let add = r#"[{"nlri":{"prefix":"198.19.1.0/26"},"age":1,"best":false,"attrs":[{"type":1,"value":0},{"type":3,"nexthop":"198.18.0.1"}],"stale":false}]"#;
        assert_eq!(
            monitor_line_to_ip_batch(add, own),
            "route replace 198.19.1.0/26 via 198.18.0.1 proto bgp\n"
        );
        let del = r#"[{"nlri":{"prefix":"198.19.1.0/26"},"attrs":[{"type":3,"nexthop":"198.18.0.1"}],"withdrawal":true}]"#;
        assert_eq!(
            monitor_line_to_ip_batch(del, own),
            "route del 198.19.1.0/26 proto bgp\n"
        );
        let mine =
            r#"[{"nlri":{"prefix":"198.19.2.0/26"},"attrs":[{"type":3,"nexthop":"198.18.0.2"}]}]"#;
        assert_eq!(monitor_line_to_ip_batch(mine, own), "");
        assert_eq!(monitor_line_to_ip_batch("[]", own), "");
        assert_eq!(monitor_line_to_ip_batch("garbage", own), "");
    }

    #[test]
    fn mrt_file_layout() {
        let id = Ipv4Addr::new(198, 18, 0, 2);
        let f = table_dump_v2(&["198.19.2.0/26".parse().unwrap()], 2, id, 64512);
        // Peer index record: 12-byte header + 4 + 2 + 2 + (1 + 4 + 4 + 4).
        assert_eq!(&f[4..8], &[0, 13, 0, 1]);
        let first_rib = 12 + 21;
        assert_eq!(&f[first_rib + 4..first_rib + 8], &[0, 13, 0, 2]);
        // seq 0, /26, 4 prefix bytes.
        assert_eq!(
            &f[first_rib + 12..first_rib + 21],
            &[0, 0, 0, 0, 26, 198, 19, 2, 0]
        );
        // Three RIB records of equal size.
        let rib_len = f.len() - first_rib;
        assert_eq!(rib_len % 3, 0);
    }

    #[test]
    fn rib_and_neighbor_json() {
        let rib = r#"{"198.19.8.0/26":[{"nlri":{"prefix":"198.19.8.0/26"},"best":true}]}"#;
        assert_eq!(parse_global_rib(rib).unwrap().len(), 1);
        assert!(parse_global_rib("null").unwrap().is_empty());
        let n = r#"[{"conf":{"neighbor_address":"198.18.9.2"},"state":{"neighbor_address":"198.18.9.2","session_state":6}}]"#;
        assert_eq!(
            parse_neighbors(n).unwrap()[&Ipv4Addr::new(198, 18, 9, 2)],
            SessionState::Established
        );
    }

    #[test]
    fn config_has_rr_passive_and_short_idle_hold() {
        let c = SpeakerConfig::new(Ipv4Addr::new(198, 18, 0, 2), 64512).neighbor(
            Neighbor::new(Ipv4Addr::new(198, 18, 0, 1), 64512)
                .rr_client(None)
                .passive(),
        );
        let t = gobgpd_config(&c);
        assert!(t.contains("route-reflector-cluster-id = \"198.18.0.2\""));
        assert!(t.contains("passive-mode = true"));
        assert!(t.contains("idle-hold-time-after-reset = 1"));
        assert!(t.contains("afi-safi-name = \"ipv4-unicast\""));
    }
}
