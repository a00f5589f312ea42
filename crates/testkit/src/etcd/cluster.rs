//! A plain etcd cluster on 127.0.0.1 whose members can be stopped and restarted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use tempfile::TempDir;

use super::PORT_ATTEMPTS;
use super::ctl::Etcdctl;
use super::member::{MemberSpec, StartFailure, free_ports, wait_ready};
use crate::process::Daemon;
use crate::unique_name;

/// How long [`EtcdCluster::leader_index`] waits for an election.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `size` members forming one cluster; on drop all are killed and their data removed.
pub struct EtcdCluster {
    // Field order is drop order.
    members: Vec<Member>,
    _dir: TempDir,
}

/// One member of an [`EtcdCluster`], stopped and restarted in place.
pub struct Member {
    spec: MemberSpec,
    daemon: Mutex<Option<Daemon>>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until all are healthy.
    pub fn start(size: usize) -> Result<Self> {
        ensure!(size > 0, "a cluster needs members");
        let dir = tempfile::Builder::new()
            .prefix("testkit-etcd-cluster.")
            .tempdir()?;
        let token = unique_name("etcd");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..PORT_ATTEMPTS {
            let ports = free_ports(ip, 2 * size, None)?;
            let peers: Vec<SocketAddr> = (0..size)
                .map(|i| SocketAddr::new(ip, ports[2 * i + 1]))
                .collect();
            let initial_cluster = peers
                .iter()
                .enumerate()
                .map(|(i, peer)| format!("m{i}=http://{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let specs: Vec<MemberSpec> = (0..size)
                .map(|i| MemberSpec {
                    name: format!("m{i}"),
                    data_dir: dir.path().join(format!("m{i}")),
                    log: dir.path().join(format!("m{i}.log")),
                    client: SocketAddr::new(ip, ports[2 * i]),
                    peer: peers[i],
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                    tls: None,
                    netns: None,
                })
                .collect();
            let mut daemons = specs
                .iter()
                .map(MemberSpec::spawn)
                .collect::<Result<Vec<_>>>()?;
            let mut waiting: Vec<_> = specs
                .iter()
                .zip(daemons.iter_mut())
                .map(|(spec, daemon)| (spec, daemon, Etcdctl::new(spec.client_url())))
                .collect();
            match wait_ready(&mut waiting) {
                Ok(()) => {
                    let members = specs
                        .into_iter()
                        .zip(daemons)
                        .map(|(spec, daemon)| Member {
                            spec,
                            daemon: Mutex::new(Some(daemon)),
                        })
                        .collect();
                    return Ok(Self { members, _dir: dir });
                }
                Err(StartFailure::PortClash(_)) => {
                    drop(daemons);
                    specs.iter().for_each(MemberSpec::discard_files);
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("etcd cluster: every port pick clashed ({PORT_ATTEMPTS} attempts)")
    }

    /// Member `i` (0-based). Panics if out of range.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members, running or not, comma-separated.
    pub fn endpoints(&self) -> String {
        self.join_urls(|_| true)
    }

    /// Client URLs of the members running now, comma-separated.
    pub fn running_endpoints(&self) -> String {
        self.join_urls(Member::is_running)
    }

    /// `etcdctl` over all endpoints (it fails over to a running member).
    pub fn ctl(&self) -> Etcdctl {
        Etcdctl::new(self.endpoints())
    }

    /// The index of the leader among the running members, waiting for an election if
    /// there is none yet (after the leader was stopped, for instance).
    pub fn leader_index(&self) -> Result<usize> {
        #[derive(Deserialize)]
        struct EndpointStatus {
            #[serde(rename = "Endpoint")]
            endpoint: String,
            #[serde(rename = "Status")]
            status: Status,
        }
        #[derive(Deserialize)]
        struct Status {
            header: Header,
            leader: u64,
        }
        #[derive(Deserialize)]
        struct Header {
            member_id: u64,
        }

        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let running = self.running_endpoints();
            ensure!(!running.is_empty(), "no member is running");
            let ctl = Etcdctl::new(running).with_timeout(Duration::from_secs(1));
            if let Ok(out) = ctl.run(&["endpoint", "status", "-w", "json"]) {
                let statuses: Vec<EndpointStatus> =
                    serde_json::from_str(&out).context("parsing etcdctl endpoint status")?;
                let leader = statuses
                    .iter()
                    .find(|s| s.status.leader != 0 && s.status.leader == s.status.header.member_id)
                    .and_then(|s| self.members.iter().position(|m| m.endpoint() == s.endpoint));
                if let Some(i) = leader {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no leader among the running members after {LEADER_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_urls(&self, keep: impl Fn(&Member) -> bool) -> String {
        self.members
            .iter()
            .filter(|m| keep(m))
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for EtcdCluster {
    /// SIGKILL, not SIGTERM: the data is discarded anyway, and a member that is leader when
    /// its peers are going away waits up to 5 s on SIGTERM trying to hand leadership over.
    fn drop(&mut self) {
        for member in &self.members {
            if let Some(mut daemon) = member.daemon().take()
                && let Err(e) = daemon.kill()
            {
                eprintln!("testkit: etcd {}: {e:#}", member.spec.name);
            }
        }
    }
}

impl Member {
    /// This member's client URL.
    pub fn endpoint(&self) -> String {
        self.spec.client_url()
    }

    /// `etcdctl` for this member alone.
    pub fn ctl(&self) -> Etcdctl {
        Etcdctl::new(self.endpoint())
    }

    /// Whether the process is running (it was not stopped and has not exited).
    pub fn is_running(&self) -> bool {
        self.daemon()
            .as_mut()
            .is_some_and(|d| matches!(d.exit_status(), Ok(None)))
    }

    /// The process id, unless stopped.
    pub fn pid(&self) -> Option<u32> {
        self.daemon().as_ref().map(Daemon::pid)
    }

    /// Stops the process (SIGTERM, then SIGKILL); the data directory stays.
    pub fn stop(&self) -> Result<()> {
        match self.daemon().take() {
            Some(mut daemon) => daemon.stop().map(drop),
            None => Ok(()),
        }
    }

    /// Starts the process again with the same name, data and ports (stopping it first if
    /// it runs), and waits until it has rejoined the cluster.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        let mut daemon = self.spec.spawn()?;
        wait_ready(&mut [(&self.spec, &mut daemon, self.ctl())])?;
        *self.daemon() = Some(daemon);
        Ok(())
    }

    fn daemon(&self) -> MutexGuard<'_, Option<Daemon>> {
        // A panic while holding the lock cannot leave the Option inconsistent.
        self.daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
