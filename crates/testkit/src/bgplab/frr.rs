//! FRR as a lab speaker: `/usr/lib/frr/zebra`, then `bgpd` once zebra's `zserv.api` exists
//! (started together, bgpd floods zebra with failed sends and installs routes seconds late;
//! reference §5.3), both as user `frr` (FRR refuses root without the vty group) with every
//! path (configuration, zserv socket, vty sockets, pid files) in a directory chowned to
//! `frr`, and `-P 0` (no TCP vty). Driven with `vtysh --vty_socket <dir>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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

const ZEBRA: &str = "/usr/lib/frr/zebra";
const BGPD: &str = "/usr/lib/frr/bgpd";
const VTYSH: &str = "/usr/bin/vtysh";
/// Update-group coalesce time (ms): FRR's default 1000 delays the first UPDATEs by a second.
pub const COALESCE_MS: u32 = 50;

/// A running zebra + bgpd pair; stopped by PID on drop (bgpd first).
pub struct Frr {
    // Field order is drop order: bgpd, zebra, then their directory.
    bgpd: Daemon,
    zebra: Daemon,
    config: SpeakerConfig,
    netns: String,
    dir: TempDir,
}

impl Frr {
    /// Starts zebra and bgpd in `netns` with [`bgpd_config`] of `config`; returns when vtysh
    /// reaches bgpd.
    pub fn start(netns: &NetNs, config: SpeakerConfig) -> Result<Frr> {
        for b in [ZEBRA, BGPD, VTYSH] {
            ensure_binary(b)?;
        }
        let dir = daemon_dir("frr")?;
        let p = dir.path();
        std::fs::write(p.join("zebra.conf"), format!("hostname {}\n", netns.name()))?;
        std::fs::write(p.join("bgpd.conf"), bgpd_config(&config, netns.name()))?;
        run_checked(Command::new("chown").arg("-R").arg("frr:frr").arg(p))
            .context("chown of the FRR directory to frr:frr (is the frr package installed?)")?;
        let zserv = p.join("zserv.api");
        let spawn = |program: &str, name: &str, extra: &[&str]| -> Result<Daemon> {
            let out = std::fs::File::create(log_path(p, name))?;
            let mut cmd = ns_command(&netns.path(), program)?;
            cmd.arg("-f")
                .arg(p.join(format!("{name}.conf")))
                .arg("-z")
                .arg(&zserv)
                .arg("--vty_socket")
                .arg(p)
                .arg("-i")
                .arg(p.join(format!("{name}.pid")))
                .args(["-P", "0"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            Daemon::spawn(cmd, format!("{name} in {}", netns.name()))
        };
        let mut zebra = spawn(ZEBRA, "zebra", &[])?;
        wait_for(Duration::from_secs(10), "zebra's zserv.api", || {
            if let Some(status) = zebra.exit_status()? {
                bail!("zebra exited ({status})");
            }
            Ok((zserv.exists(), String::new()))
        })
        .with_context(|| read_log(&log_path(p, "zebra")))?;
        let extra: &[&str] = if config.install_routes { &[] } else { &["-n"] };
        let bgpd = spawn(BGPD, "bgpd", extra)?;
        let mut frr = Frr {
            bgpd,
            zebra,
            config,
            netns: netns.name().to_string(),
            dir,
        };
        frr.wait_ready()?;
        Ok(frr)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let ready = wait_for(Duration::from_secs(10), "bgpd's vty", || {
            if let Some(status) = self.bgpd.exit_status()? {
                bail!("bgpd exited ({status})");
            }
            Ok((
                self.vtysh(&["show bgp summary json"]).is_ok(),
                String::new(),
            ))
        });
        ready.with_context(|| self.log_tail())
    }

    /// Runs `vtysh --vty_socket <dir> -c <command>...`; its output, or an error.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        let mut cmd = Command::new(VTYSH);
        cmd.arg("--vty_socket").arg(self.dir.path());
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let out = run_checked(&mut cmd)?;
        // vtysh exits 0 on some command errors; its messages start with "%".
        if let Some(err) = out.lines().find(|l| l.starts_with('%')) {
            bail!("vtysh {commands:?}: {err}");
        }
        Ok(out)
    }

    /// The directory of the configuration, sockets and logs.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// `[no] network <p>` for every prefix, applied with one `vtysh -f` (one process, one
    /// configuration transaction, however many prefixes).
    fn networks(&self, prefixes: &[Ipv4Net], no: bool) -> Result<()> {
        let mut text = format!(
            "router bgp {}\n address-family ipv4 unicast\n",
            self.config.asn
        );
        for p in prefixes {
            let _ = writeln!(text, "  {}network {p}", if no { "no " } else { "" });
        }
        let file = self.dir.path().join("change.conf");
        std::fs::write(&file, text).with_context(|| format!("{}", file.display()))?;
        let out = run_checked(
            Command::new(VTYSH)
                .arg("--vty_socket")
                .arg(self.dir.path())
                .arg("-f")
                .arg(&file),
        )?;
        if let Some(err) = out.lines().find(|l| l.starts_with('%')) {
            bail!("vtysh -f: {err}");
        }
        Ok(())
    }
}

impl Speaker for Frr {
    fn kind(&self) -> SpeakerKind {
        SpeakerKind::Frr
    }

    fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    fn netns_name(&self) -> &str {
        &self.netns
    }

    fn rib(&self) -> Result<BTreeSet<Ipv4Net>> {
        parse_show_ip_bgp(&self.vtysh(&["show ip bgp json"])?)
    }

    fn sessions(&self) -> Result<BTreeMap<Ipv4Addr, SessionState>> {
        parse_bgp_neighbors(&self.vtysh(&["show bgp neighbors json"])?)
    }

    fn announce(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.announce_many(&[prefix])
    }

    fn withdraw(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.withdraw_many(&[prefix])
    }

    fn announce_many(&mut self, prefixes: &[Ipv4Net]) -> Result<()> {
        self.networks(prefixes, false)?;
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
        self.networks(prefixes, true)?;
        let gone: BTreeSet<&Ipv4Net> = prefixes.iter().collect();
        self.config.originate.retain(|p| !gone.contains(p));
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        self.bgpd.kill()?;
        self.zebra.kill().map(|_| ())
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.zebra.pid(), self.bgpd.pid()]
    }

    fn log(&self) -> String {
        let p = self.dir.path();
        format!(
            "{}{}",
            read_log(&log_path(p, "zebra")),
            read_log(&log_path(p, "bgpd"))
        )
    }
}

/// bgpd's configuration for a lab speaker: traditional defaults, `no bgp network
/// import-check` (originate without a matching route), `no bgp ebgp-requires-policy`, a
/// short `coalesce-time` ([`COALESCE_MS`]), graceful restart on (restarter) or disabled,
/// `bgp cluster-id` from the first route-reflector client's cluster id (FRR has one per
/// router), `network` per originated prefix.
pub fn bgpd_config(c: &SpeakerConfig, hostname: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frr defaults traditional\nhostname {hostname}\nlog stdout informational\n!\nrouter bgp {}",
        c.asn
    );
    let _ = writeln!(
        s,
        " bgp router-id {}\n no bgp network import-check\n no bgp ebgp-requires-policy\n coalesce-time {COALESCE_MS}",
        c.router_id
    );
    let _ = writeln!(
        s,
        " {}",
        if c.graceful_restart {
            "bgp graceful-restart"
        } else {
            "bgp graceful-restart-disable"
        }
    );
    if let Some(n) = c.neighbors.iter().find(|n| n.rr_client) {
        let _ = writeln!(s, " bgp cluster-id {}", n.cluster_id.unwrap_or(c.router_id));
    }
    if let Some(hold) = c.timers.hold {
        let _ = writeln!(s, " timers bgp {} {hold}", (hold / 3).max(1));
    }
    for n in &c.neighbors {
        let a = n.address;
        let _ = writeln!(
            s,
            " neighbor {a} remote-as {}\n neighbor {a} update-source {}\n neighbor {a} timers connect {}",
            n.asn, c.router_id, c.timers.connect_retry
        );
        if n.passive {
            let _ = writeln!(s, " neighbor {a} passive");
        }
    }
    let _ = writeln!(s, " address-family ipv4 unicast");
    for p in &c.originate {
        let _ = writeln!(s, "  network {p}");
    }
    for n in c.neighbors.iter().filter(|n| n.rr_client) {
        let _ = writeln!(s, "  neighbor {} route-reflector-client", n.address);
    }
    let _ = writeln!(s, " exit-address-family\n!");
    s
}

/// The prefixes of `show ip bgp json` (`routes` keyed by prefix).
pub fn parse_show_ip_bgp(out: &str) -> Result<BTreeSet<Ipv4Net>> {
    let v: Value = serde_json::from_str(out).context("parsing show ip bgp json")?;
    v["routes"]
        .as_object()
        .into_iter()
        .flat_map(|r| r.keys())
        .map(|k| k.parse().with_context(|| format!("prefix {k:?}")))
        .collect()
}

/// Each neighbour's `bgpState` from `show bgp neighbors json` (keyed by address; keys that
/// are not addresses, such as interface names, are skipped).
pub fn parse_bgp_neighbors(out: &str) -> Result<BTreeMap<Ipv4Addr, SessionState>> {
    let v: Value = serde_json::from_str(out).context("parsing show bgp neighbors json")?;
    Ok(v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| {
            Some((
                k.parse().ok()?,
                SessionState::parse(n["bgpState"].as_str().unwrap_or("Idle")),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgplab::Neighbor;

    #[test]
    fn parses_rib_and_neighbors() {
        let rib = r#"{"vrfId":0,"routerId":"198.18.0.3","routes":{"198.19.1.0/26":[{"valid":true}],"198.19.3.0/26":[{"valid":true}]}}"#;
        assert_eq!(parse_show_ip_bgp(rib).unwrap().len(), 2);
        let n = r#"{"198.18.0.1":{"remoteAs":64512,"bgpState":"Established"},"198.18.0.2":{"bgpState":"Active"}}"#;
        let s = parse_bgp_neighbors(n).unwrap();
        assert_eq!(s[&Ipv4Addr::new(198, 18, 0, 1)], SessionState::Established);
        assert_eq!(s[&Ipv4Addr::new(198, 18, 0, 2)], SessionState::Active);
    }

    #[test]
    fn config_as_reflector() {
        let c = SpeakerConfig::new(Ipv4Addr::new(198, 18, 0, 3), 64512)
            .neighbor(Neighbor::new(Ipv4Addr::new(198, 18, 0, 1), 64512).rr_client(None))
            .originate("198.19.3.0/26".parse().unwrap());
        let t = bgpd_config(&c, "x");
        assert!(t.starts_with("frr defaults traditional\n"));
        assert!(t.contains(" bgp cluster-id 198.18.0.3\n"));
        assert!(t.contains("  neighbor 198.18.0.1 route-reflector-client\n"));
        assert!(t.contains("  network 198.19.3.0/26\n"));
        assert!(t.contains(" coalesce-time 50\n"));
    }
}
