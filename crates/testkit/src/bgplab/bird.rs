//! BIRD 2 as a lab speaker: `bird -f -c <conf> -s <ctl> -P <pid>` in a namespace, driven with
//! `birdc -s <ctl>`.
//!
//! The configuration is either generated from a [`SpeakerConfig`] (see [`bird_config`]) or
//! Calico's, from a [`CalicoMeshNode`]. Originated prefixes change by rewriting it and
//! `birdc configure` (what Calico's confd does with SIGHUP).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use tempfile::TempDir;

use super::calico::CalicoMeshNode;
use super::{
    SessionState, Speaker, SpeakerConfig, SpeakerKind, Timers, daemon_dir, ensure_binary, log_path,
    ns_command, read_log, wait_for,
};
use crate::netns::NetNs;
use crate::process::{Daemon, run_checked};

const BIRD: &str = "/usr/sbin/bird";
const BIRDC: &str = "/usr/sbin/birdc";

/// Where a BIRD's configuration comes from.
#[derive(Clone, Debug)]
enum Source {
    Lab,
    Calico(CalicoMeshNode),
}

/// A running BIRD 2; stopped by PID on drop.
pub struct Bird {
    // Field order is drop order: the process before its directory.
    daemon: Daemon,
    source: Source,
    config: SpeakerConfig,
    netns: String,
    ctl: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Bird {
    /// Starts BIRD in `netns` with the configuration [`bird_config`] makes of `config`;
    /// returns when its control socket answers.
    pub fn start(netns: &NetNs, config: SpeakerConfig) -> Result<Bird> {
        let text = bird_config(&config);
        Self::start_text(netns, config, Source::Lab, &text)
    }

    /// Starts BIRD in `netns` configured as Calico configures it for `node` (see
    /// [`CalicoMeshNode::bird_config`]).
    pub fn start_calico(netns: &NetNs, node: CalicoMeshNode) -> Result<Bird> {
        let text = node.bird_config();
        let config = node.speaker_config();
        Self::start_text(netns, config, Source::Calico(node), &text)
    }

    fn start_text(
        netns: &NetNs,
        config: SpeakerConfig,
        source: Source,
        text: &str,
    ) -> Result<Bird> {
        ensure_binary(BIRD)?;
        ensure_binary(BIRDC)?;
        let dir = daemon_dir("bird")?;
        let conf = dir.path().join("bird.conf");
        let ctl = dir.path().join("bird.ctl");
        let log = log_path(dir.path(), "bird");
        write_checked_config(&conf, text)?;
        let out = std::fs::File::create(&log)?;
        let mut cmd = ns_command(&netns.path(), BIRD)?;
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let daemon = Daemon::spawn(cmd, format!("bird in {}", netns.name()))?;
        let mut bird = Bird {
            daemon,
            source,
            config,
            netns: netns.name().to_string(),
            ctl,
            conf,
            log,
            _dir: dir,
        };
        bird.wait_ready()?;
        Ok(bird)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let ready = wait_for(Duration::from_secs(10), "bird's control socket", || {
            if let Some(status) = self.daemon.exit_status()? {
                bail!("bird exited ({status})");
            }
            Ok((self.birdc(&["show", "status"]).is_ok(), String::new()))
        });
        ready.with_context(|| self.log_tail())
    }

    /// Runs `birdc -s <ctl> args...`; its output, or an error if birdc failed.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new(BIRDC).arg("-s").arg(&self.ctl).args(args))
    }

    /// The control socket (what `birdc -s` takes).
    pub fn ctl(&self) -> &std::path::Path {
        &self.ctl
    }

    /// The configuration BIRD runs with now.
    pub fn config_text(&self) -> Result<String> {
        std::fs::read_to_string(&self.conf).with_context(|| format!("{}", self.conf.display()))
    }

    /// Replaces the configuration with `text` (checked with `bird -p` first) and applies it
    /// with `birdc configure`.
    pub fn reconfigure(&self, text: &str) -> Result<()> {
        write_checked_config(&self.conf, text)?;
        let out = self.birdc(&["configure"])?;
        if !(out.contains("Reconfigured") || out.contains("Reconfiguration in progress")) {
            bail!("birdc configure: {out}");
        }
        Ok(())
    }

    /// The Calico node description, for a BIRD started with [`Bird::start_calico`].
    pub fn calico_node(&self) -> Option<&CalicoMeshNode> {
        match &self.source {
            Source::Calico(node) => Some(node),
            Source::Lab => None,
        }
    }

    /// Regenerates and applies the configuration after the originated prefixes changed.
    fn apply(&mut self) -> Result<()> {
        let text = match &mut self.source {
            Source::Lab => bird_config(&self.config),
            Source::Calico(node) => {
                node.local_blocks = self.config.originate.clone();
                node.bird_config()
            }
        };
        self.reconfigure(&text)
    }
}

impl Speaker for Bird {
    fn kind(&self) -> SpeakerKind {
        SpeakerKind::Bird
    }

    fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    fn netns_name(&self) -> &str {
        &self.netns
    }

    fn rib(&self) -> Result<BTreeSet<Ipv4Net>> {
        let out = self.birdc(&[
            "show",
            "route",
            "where",
            "source",
            "~",
            "[RTS_BGP,",
            "RTS_STATIC]",
        ])?;
        Ok(parse_show_route(&out))
    }

    fn sessions(&self) -> Result<BTreeMap<Ipv4Addr, SessionState>> {
        Ok(parse_show_protocols_all(&self.birdc(&[
            "show",
            "protocols",
            "all",
        ])?))
    }

    fn announce(&mut self, prefix: Ipv4Net) -> Result<()> {
        if !self.config.originate.contains(&prefix) {
            self.config.originate.push(prefix);
        }
        self.apply()
    }

    fn withdraw(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.config.originate.retain(|p| *p != prefix);
        self.apply()
    }

    fn announce_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        let known: BTreeSet<Ipv4Net> = self.config.originate.iter().copied().collect();
        let new: Vec<Ipv4Net> = prefixes
            .iter()
            .filter(|p| !known.contains(p))
            .copied()
            .collect();
        self.config.originate.extend(new);
        self.apply()
    }

    fn withdraw_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        let gone: BTreeSet<&Ipv4Net> = prefixes.iter().collect();
        self.config.originate.retain(|p| !gone.contains(p));
        self.apply()
    }

    fn kill(&mut self) -> Result<()> {
        self.daemon.kill().map(|_| ())
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.daemon.pid()]
    }

    fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// Writes `text` to `path` after `bird -p` accepted it (written next to it first), so a bad
/// configuration fails with BIRD's message instead of a silent reconfigure failure.
fn write_checked_config(path: &std::path::Path, text: &str) -> Result<()> {
    let candidate = path.with_extension("new");
    std::fs::write(&candidate, text).with_context(|| format!("{}", candidate.display()))?;
    run_checked(Command::new(BIRD).arg("-p").arg("-c").arg(&candidate))
        .with_context(|| format!("bird rejects the configuration:\n{text}"))?;
    std::fs::rename(&candidate, path).with_context(|| format!("{}", path.display()))
}

/// BIRD 2 configuration for a lab speaker: `protocol direct` on the LAN (iBGP resolves next
/// hops recursively through it), `protocol kernel` exporting BGP routes (or nothing),
/// static blackholes for the originated prefixes, one `protocol bgp` per neighbour exporting
/// static and BGP routes (BIRD only re-advertises iBGP routes to `rr client`s).
pub fn bird_config(c: &SpeakerConfig) -> String {
    let mut s = String::new();
    let id = c.router_id;
    let _ = writeln!(s, "log stderr all;\nrouter id {id};");
    let _ = writeln!(s, "protocol device {{ scan time 2; }}");
    let _ = writeln!(
        s,
        "protocol direct {{ ipv4; interface \"{}\"; }}",
        c.interface
    );
    let export = if c.install_routes {
        "export where source = RTS_BGP;"
    } else {
        "export none;"
    };
    let _ = writeln!(
        s,
        "protocol kernel {{ ipv4 {{ import none; {export} }}; merge paths on;{} }}",
        if c.graceful_restart {
            " graceful restart;"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "protocol static originated {{\n  ipv4;");
    for p in &c.originate {
        let _ = writeln!(s, "  route {p} blackhole;");
    }
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "template bgp peer {{\n  local {id} as {};", c.asn);
    write_timers(&mut s, &c.timers, c.graceful_restart);
    let _ = writeln!(s, "}}");
    for n in &c.neighbors {
        let _ = writeln!(
            s,
            "protocol bgp {} from peer {{\n  neighbor {} as {};",
            protocol_name("n", n.address),
            n.address,
            n.asn
        );
        if n.passive {
            let _ = writeln!(s, "  passive on;");
        }
        if n.rr_client {
            let _ = writeln!(
                s,
                "  rr client;\n  rr cluster id {};",
                n.cluster_id.unwrap_or(id)
            );
        }
        let _ = writeln!(
            s,
            "  ipv4 {{ import all; export where source ~ [RTS_STATIC, RTS_BGP]; }};\n}}"
        );
    }
    s
}

/// The timer and graceful-restart lines of a `bgp` template.
pub(crate) fn write_timers(s: &mut String, t: &Timers, graceful_restart: bool) {
    let _ = writeln!(
        s,
        "  graceful restart {};\n  connect delay time {};\n  connect retry time {};\n  error wait time {},{};",
        if graceful_restart { "on" } else { "off" },
        t.connect_delay,
        t.connect_retry,
        t.error_wait.0,
        t.error_wait.1
    );
    if let Some(hold) = t.hold {
        let _ = writeln!(s, "  hold time {hold};");
    }
}

/// `<prefix>_198_18_0_2`: a BIRD protocol name for a peer.
pub(crate) fn protocol_name(prefix: &str, ip: Ipv4Addr) -> String {
    format!("{prefix}_{}", ip.to_string().replace('.', "_"))
}

/// The prefixes of `birdc show route` output (lines that start with a prefix; alternative
/// paths and next-hop lines are indented).
pub fn parse_show_route(out: &str) -> BTreeSet<Ipv4Net> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The BGP state of each neighbour in `birdc show protocols all` output.
pub fn parse_show_protocols_all(out: &str) -> BTreeMap<Ipv4Addr, SessionState> {
    let mut sessions = BTreeMap::new();
    let (mut state, mut neighbor): (Option<SessionState>, Option<Ipv4Addr>) = (None, None);
    let mut flush = |state: &mut Option<SessionState>, neighbor: &mut Option<Ipv4Addr>| {
        if let Some(n) = neighbor.take() {
            sessions.insert(n, state.take().unwrap_or(SessionState::Idle));
        }
        *state = None;
    };
    for line in out.lines() {
        // A protocol's block starts with its unindented summary line.
        if !line.starts_with(char::is_whitespace) {
            flush(&mut state, &mut neighbor);
            continue;
        }
        let line = line.trim();
        if let Some(v) = line.strip_prefix("BGP state:") {
            state = Some(SessionState::parse(v));
        } else if let Some(v) = line.strip_prefix("Neighbor address:") {
            neighbor = v.trim().parse().ok();
        }
    }
    flush(&mut state, &mut neighbor);
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgplab::Neighbor;

    #[test]
    fn show_protocols_all_yields_states_by_neighbor() {
        let out = [
            "BIRD 2.0.12 ready.",
            "Name       Proto      Table      State  Since         Info",
            "device1    Device     ---        up     15:30:52.123  ",
            "n_198_18_0_2 BGP        ---        up     15:30:53.456  Established   ",
            "  BGP state:          Established",
            "    Neighbor address: 198.18.0.2",
            "    Neighbor AS:      64512",
            "n_198_18_0_3 BGP        ---        start  15:30:52.123  Active        Socket: Connection refused",
            "  BGP state:          Active",
            "    Neighbor address: 198.18.0.3",
            "    Neighbor AS:      64512",
        ]
        .join("\n");
        let out = out.as_str();
        let s = parse_show_protocols_all(out);
        assert_eq!(s[&Ipv4Addr::new(198, 18, 0, 2)], SessionState::Established);
        assert_eq!(s[&Ipv4Addr::new(198, 18, 0, 3)], SessionState::Active);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn show_route_yields_prefixes() {
        let out = [
            "BIRD 2.0.12 ready.",
            "Table master4:",
            "198.19.1.0/26        blackhole [originated 15:30:52.123] * (200)",
            "198.19.2.0/26        unicast [n_198_18_0_2 15:30:53.456] * (100) [i]",
            "\tvia 198.18.0.2 on eth0",
            "                     unicast [n_198_18_0_3 15:30:53.456] (100) [i]",
        ]
        .join("\n");
        let out = out.as_str();
        let p = parse_show_route(out);
        assert_eq!(
            p.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["198.19.1.0/26", "198.19.2.0/26"]
        );
    }

    #[test]
    fn config_has_direct_kernel_static_and_rr_clients() {
        let c = SpeakerConfig::new(Ipv4Addr::new(198, 18, 0, 1), 64512)
            .neighbor(Neighbor::new(Ipv4Addr::new(198, 18, 0, 2), 64512).rr_client(None))
            .neighbor(Neighbor::new(Ipv4Addr::new(198, 18, 0, 3), 64512).passive())
            .originate("198.19.1.0/26".parse().unwrap());
        let text = bird_config(&c);
        assert!(text.contains("protocol direct { ipv4; interface \"eth0\"; }"));
        assert!(text.contains("export where source = RTS_BGP;"));
        assert!(text.contains("route 198.19.1.0/26 blackhole;"));
        assert!(text.contains("rr client;\n  rr cluster id 198.18.0.1;"));
        assert!(text.contains(
            "protocol bgp n_198_18_0_3 from peer {\n  neighbor 198.18.0.3 as 64512;\n  passive on;"
        ));
        assert!(!bird_config(&c.install_routes(false)).contains("RTS_BGP;"));
    }
}
