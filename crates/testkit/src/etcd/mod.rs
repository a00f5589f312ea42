//! Debian's `etcd` as a fixture: a single member (plain or mutual TLS, optionally inside a
//! network namespace) or a small cluster, each in its own temporary directory.
//!
//! Every process is stopped (SIGTERM, then SIGKILL) and reaped on drop, and dies with the
//! test process; data directories and logs are removed.

mod cluster;
mod ctl;
mod member;

pub use cluster::{EtcdCluster, Member};
pub use ctl::Etcdctl;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Result, bail};
use tempfile::TempDir;

use crate::netns::NetNs;
use crate::process::Daemon;
use crate::tls::Pki;
use crate::unique_name;

use member::{MemberSpec, ServerTls, StartFailure, free_ports, wait_ready};

/// How often to pick new ports when a picked port was taken before etcd bound it.
const PORT_ATTEMPTS: usize = 5;

/// One running etcd member.
pub struct Etcd {
    // Field order is drop order: stop the process before removing its files.
    daemon: Daemon,
    spec: MemberSpec,
    ctl: Etcdctl,
    pki: Option<Pki>,
    _dir: TempDir,
}

impl Etcd {
    /// A plain (HTTP) etcd on 127.0.0.1 and a free port.
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// An etcd on 127.0.0.1 that requires client certificates (see [`Pki`]).
    pub fn start_tls() -> Result<Self> {
        Self::builder().tls().start()
    }

    /// For the other variants.
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder {
            tls: false,
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
        }
    }

    /// The client URL (`http://…` or `https://…`); a single endpoint.
    pub fn endpoints(&self) -> String {
        self.spec.client_url()
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.spec.client
    }

    /// `etcdctl` for this member: endpoint, client certificate and namespace set.
    pub fn ctl(&self) -> Etcdctl {
        self.ctl.clone()
    }

    /// The certificates, for a TLS member.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// CA certificate that signed the server and client certificates. Panics unless TLS.
    pub fn ca_path(&self) -> PathBuf {
        self.tls_pki().ca_path()
    }

    /// Client certificate the server accepts. Panics unless TLS.
    pub fn cert_path(&self) -> PathBuf {
        self.tls_pki().client_cert_path()
    }

    /// Key of [`Etcd::cert_path`]. Panics unless TLS.
    pub fn key_path(&self) -> PathBuf {
        self.tls_pki().client_key_path()
    }

    /// A client certificate from another CA, which the server refuses. Panics unless TLS.
    pub fn wrong_cert_path(&self) -> PathBuf {
        self.tls_pki().wrong_cert_path()
    }

    /// Key of [`Etcd::wrong_cert_path`]. Panics unless TLS.
    pub fn wrong_key_path(&self) -> PathBuf {
        self.tls_pki().wrong_key_path()
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// etcd's log file (info level).
    pub fn log_path(&self) -> PathBuf {
        self.spec.log.clone()
    }

    /// See [`Etcdctl::put`].
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl.put(key, value)
    }

    /// See [`Etcdctl::get`].
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        self.ctl.get(key)
    }

    /// See [`Etcdctl::get_prefix`].
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.ctl.get_prefix(prefix)
    }

    /// See [`Etcdctl::delete_prefix`].
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.ctl.delete_prefix(prefix)
    }

    /// Makes every allocation look `age` old (its `timestamp` attribute, as Calico and we
    /// write it), so a test can pass GC's grace period for new allocations without waiting.
    pub fn backdate_allocations(&self, age: std::time::Duration) -> Result<()> {
        let when = jiff::Timestamp::try_from(std::time::SystemTime::now() - age)?;
        // Go's `time.Time.String()` in UTC.
        let stamp = when.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string();
        for (key, value) in self.get_prefix("/calico/ipam/v2/assignment/")? {
            let mut block: serde_json::Value = serde_json::from_str(&value)?;
            if let Some(attrs) = block["attributes"].as_array_mut() {
                for a in attrs {
                    if a["secondary"]["timestamp"].is_string() {
                        a["secondary"]["timestamp"] = serde_json::json!(stamp);
                    }
                }
            }
            self.put(&key, &block.to_string())?;
        }
        Ok(())
    }

    fn tls_pki(&self) -> &Pki {
        self.pki
            .as_ref()
            .expect("this etcd was started without TLS; use Etcd::start_tls")
    }
}

/// Options for [`Etcd`]; `start` launches it.
pub struct EtcdBuilder {
    tls: bool,
    netns: Option<PathBuf>,
    ip: IpAddr,
    port: Option<u16>,
}

impl EtcdBuilder {
    /// Require client certificates; the listen address goes into the server's SANs.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Run etcd (and every `etcdctl` of [`Etcd::ctl`]) inside `ns`. Drop the etcd first:
    /// dropping the namespace kills it.
    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.path());
        self
    }

    /// Listen for clients on `ip:port` (default 127.0.0.1 and a free port; port 0 also
    /// picks one). The peer port is picked on the same address.
    pub fn listen(mut self, ip: IpAddr, port: u16) -> Self {
        self.ip = ip;
        self.port = (port != 0).then_some(port);
        self
    }

    /// Starts etcd and waits until it is healthy.
    pub fn start(self) -> Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("testkit-etcd.").tempdir()?;
        let pki = if self.tls {
            Some(Pki::generate(&[self.ip])?)
        } else {
            None
        };
        let name = unique_name("etcd");
        let netns = self.netns.as_deref();
        for _ in 0..PORT_ATTEMPTS {
            let ports = free_ports(self.ip, 2, netns)?;
            let client = SocketAddr::new(self.ip, self.port.unwrap_or(ports[0]));
            let peer = SocketAddr::new(self.ip, ports[1]);
            let spec = MemberSpec {
                initial_cluster: format!("{name}=http://{peer}"),
                name: name.clone(),
                data_dir: dir.path().join("data"),
                log: dir.path().join("etcd.log"),
                client,
                peer,
                token: name.clone(),
                tls: pki.as_ref().map(ServerTls::from),
                netns: self.netns.clone(),
            };
            let mut ctl = Etcdctl::new(spec.client_url());
            if let Some(pki) = &pki {
                ctl = ctl
                    .with_ca(pki.ca_path())
                    .with_identity(pki.client_cert_path(), pki.client_key_path());
            }
            if let Some(path) = &self.netns {
                ctl = ctl.in_netns(path);
            }
            let mut daemon = spec.spawn()?;
            match wait_ready(&mut [(&spec, &mut daemon, ctl.clone())]) {
                Ok(()) => {
                    return Ok(Etcd {
                        daemon,
                        spec,
                        ctl,
                        pki,
                        _dir: dir,
                    });
                }
                Err(StartFailure::PortClash(_)) if self.port.is_none() => {
                    drop(daemon);
                    spec.discard_files();
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("etcd: every port pick clashed ({PORT_ATTEMPTS} attempts)")
    }
}
