//! `calico-node run` (the per-node agent) as a fixture: started on a simulated node with
//! the cluster's etcd settings (the same files the seed conflist names, so the plugins'
//! requests are served), its log in a file, its metrics read over HTTP inside the node.
//! Stopped with SIGTERM on drop (killed after a grace period, as every [`Daemon`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::cluster::{Cluster, ETCD_IP, ETCD_PORT};
use crate::process::Daemon;

/// Where the agent serves metrics inside a node (each node has its own namespace).
pub const METRICS_PORT: u16 = 9099;
/// The socket inside a node.
pub const SOCKET: &str = "/var/run/calico/calico-node.sock";

/// A running agent.
pub struct Agent {
    // Field order is drop order: stop the process before its log goes.
    daemon: Daemon,
    /// The socket, host side.
    socket: PathBuf,
    /// The namespace the metrics are served in.
    netns: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// The agent on node `i` of `cluster`, serving the seed's mutual-TLS etcd with the
    /// node's copies of the client identity, at log level debug; waits until it greets.
    pub fn on_node(cluster: &Cluster, i: usize) -> Result<Agent> {
        Self::on_node_with(cluster, i, &[])
    }

    /// As [`Agent::on_node`], with more (or other) environment.
    pub fn on_node_with(cluster: &Cluster, i: usize, env: &[(&str, &str)]) -> Result<Agent> {
        let node = &cluster.nodes[i];
        let dir = tempfile::Builder::new()
            .prefix("testkit-agent.")
            .tempdir()?;
        let log = dir.path().join("calico-node.log");
        let tls = "/etc/cni/net.d/calico-tls";
        let out = std::fs::File::create(&log)?;
        let mut cmd = node.command(crate::bins::calico_node()?)?;
        cmd.arg("run")
            .env_remove(calico_agent_protocol::SOCKET_ENV)
            .env("ETCD_ENDPOINTS", format!("https://{ETCD_IP}:{ETCD_PORT}"))
            .env("ETCD_CA_CERT_FILE", format!("{tls}/etcd-ca"))
            .env("ETCD_CERT_FILE", format!("{tls}/etcd-cert"))
            .env("ETCD_KEY_FILE", format!("{tls}/etcd-key"))
            .env("CALICO_NODE_METRICS_HOST", "127.0.0.1")
            .env("CALICO_NODE_METRICS_PORT", METRICS_PORT.to_string())
            .env("LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let daemon = Daemon::spawn(cmd, format!("calico-node run on {}", node.name()))?;
        let agent = Agent {
            daemon,
            socket: node.host_path(SOCKET)?,
            netns: node.netns().path(),
            log,
            _dir: dir,
        };
        agent.wait_serving()?;
        Ok(agent)
    }

    /// Waits (10 s at most) until the agent greets on its socket.
    pub fn wait_serving(&self) -> Result<()> {
        let greeted = crate::eventually(Duration::from_secs(10), || {
            calico_agent_protocol::Connection::open(&self.socket, Duration::from_millis(200))
                .is_ok()
        });
        if !greeted {
            bail!("calico-node did not start serving: {}", self.log());
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The pid of the agent's `calico-bgpd` (its routing process under the BGP backend),
    /// if one runs now.
    pub fn bgpd_pid(&self) -> Option<u32> {
        child_named(self.pid(), "calico-bgpd")
    }

    /// The socket, host side.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.daemon.stop()
    }

    /// SIGKILL: the agent crashes.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.daemon.kill()
    }

    /// The metrics page.
    pub fn metrics(&self) -> Result<String> {
        crate::netns::within_path(&self.netns, || -> Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))
                .context("connecting to the metrics port")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default())
        })?
    }

    /// The sum of the samples of `name` (the full sample name, such as
    /// `calico_node_requests_total`) whose labels include every one of `labels`
    /// (`service="etcd"`); 0 if there is none.
    pub fn metric(&self, name: &str, labels: &[&str]) -> Result<f64> {
        Ok(sum(&self.metrics()?, name, labels))
    }
}

/// See [`Agent::metric`].
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A live (not zombie) child of `parent` whose command name is `name`, from `/proc/*/stat`.
pub fn child_named(parent: u32, name: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let comm = &stat[open + 1..close];
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next();
            let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
            comm == name && ppid == Some(parent) && state != Some("Z")
        })
}

/// Whether process `pid` is gone (or a zombie: exited, not yet reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|c| stat[c + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let text = "# HELP x\ncalico_node_requests_total{service=\"etcd\",outcome=\"ok\"} 3\n\
                    calico_node_requests_total{service=\"etcd\",outcome=\"other_etcd\"} 1\n\
                    calico_node_requests_total{service=\"link\",outcome=\"accepted\"} 2\n\
                    calico_node_deferred_work_pending 0\n";
        assert_eq!(
            super::sum(text, "calico_node_requests_total", &["service=\"etcd\""]),
            4.0
        );
        assert_eq!(
            super::sum(text, "calico_node_requests_total", &["outcome=\"ok\""]),
            3.0
        );
        assert_eq!(
            super::sum(text, "calico_node_deferred_work_pending", &[]),
            0.0
        );
        assert_eq!(super::sum(text, "missing", &[]), 0.0);
    }
}
