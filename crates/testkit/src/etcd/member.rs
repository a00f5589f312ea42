//! One etcd process: its command line, ports, and the wait until it serves.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::ctl::Etcdctl;
use crate::netns::within_path;
use crate::process::{Daemon, enter_namespaces};
use crate::tls::Pki;

/// How long a starting member may take to serve (generous: CI machines are busy).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The server side of mutual TLS.
#[derive(Clone)]
pub(super) struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl From<&Pki> for ServerTls {
    fn from(pki: &Pki) -> Self {
        Self {
            cert: pki.server_cert_path(),
            key: pki.server_key_path(),
            ca: pki.ca_path(),
        }
    }
}

/// Everything needed to (re)start one member with the same identity, data and ports.
pub(super) struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// `name=peer-url,...` of all members.
    pub initial_cluster: String,
    pub token: String,
    pub tls: Option<ServerTls>,
    pub netns: Option<PathBuf>,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }

    /// Starts etcd with fast raft timing (a single member is ready in about 50 ms instead of
    /// waiting out a default election timeout), logging to `log`.
    pub fn spawn(&self) -> Result<Daemon> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new("etcd");
        if let Some(path) = &self.netns {
            let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            enter_namespaces(&mut cmd, ns.into(), None);
        }
        let client = self.client_url();
        let peer = self.peer_url();
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            // Room for benchmarks that write thousands of keys in one transaction (the
            // default allows 128 operations and 1.5 MiB per request); no test relies on the
            // default limits.
            .args(["--max-txn-ops", "20000", "--max-request-bytes", "8388608"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        Daemon::spawn(cmd, format!("etcd {} ({client})", self.name))
    }

    /// Is this member serving (it has a leader)? Plain members answer `GET /health`;
    /// TLS members are asked through `ctl`, which carries the client certificate.
    fn is_healthy(&self, ctl: &Etcdctl) -> bool {
        let (client, tls) = (self.client, self.tls.is_some());
        let local_probe = move || {
            if tls {
                // etcdctl would wait out its whole dial timeout while nobody listens yet.
                TcpStream::connect_timeout(&client, Duration::from_millis(100)).is_ok()
            } else {
                http_health(client).unwrap_or(false)
            }
        };
        let local = match &self.netns {
            Some(path) => within_path(path, local_probe).unwrap_or(false),
            None => local_probe(),
        };
        local && (!tls || ctl.is_healthy())
    }

    /// Removes what a failed start left, before trying again with other ports.
    pub fn discard_files(&self) {
        let _ = fs::remove_dir_all(&self.data_dir);
        let _ = fs::remove_file(&self.log);
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Why members did not come up.
pub(super) enum StartFailure {
    /// A port picked as free was taken meanwhile: try again with other ports.
    PortClash(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartFailure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl From<StartFailure> for anyhow::Error {
    fn from(failure: StartFailure) -> Self {
        match failure {
            StartFailure::PortClash(e) | StartFailure::Other(e) => e,
        }
    }
}

/// Waits until every member is healthy, failing early if one exits.
pub(super) fn wait_ready(
    members: &mut [(&MemberSpec, &mut Daemon, Etcdctl)],
) -> Result<(), StartFailure> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; members.len()];
    loop {
        for ((spec, daemon, ctl), ready) in members.iter_mut().zip(&mut ready) {
            if *ready {
                continue;
            }
            if let Some(status) = daemon.exit_status()? {
                let tail = spec.log_tail();
                let err = anyhow!("etcd {} exited early ({status}); log:\n{tail}", spec.name);
                return Err(if tail.contains("address already in use") {
                    StartFailure::PortClash(err)
                } else {
                    StartFailure::Other(err)
                });
            }
            *ready = spec.is_healthy(ctl);
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = members.iter().map(|(s, ..)| s.name.as_str()).collect();
            let tails: Vec<String> = members.iter().map(|(s, ..)| s.log_tail()).collect();
            return Err(StartFailure::Other(anyhow!(
                "etcd {names:?} not healthy after {READY_TIMEOUT:?}; logs:\n{}",
                tails.join("\n---\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `n` distinct ports that were free on `ip` (inside `netns` if given) a moment ago.
/// All are held at once so that they differ; the caller retries on a clash.
pub(super) fn free_ports(ip: IpAddr, n: usize, netns: Option<&Path>) -> Result<Vec<u16>> {
    let pick = move || -> Result<Vec<u16>> {
        let listeners = (0..n)
            .map(|_| TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0")))
            .collect::<Result<Vec<_>>>()?;
        listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect()
    };
    match netns {
        Some(path) => within_path(path, pick)?,
        None => pick(),
    }
}

/// `GET /health` over plain HTTP: `{"health":"true"}` once the member has a leader.
fn http_health(addr: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(100))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.contains(r#""health":"true""#))
}
