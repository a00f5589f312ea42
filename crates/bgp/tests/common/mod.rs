//! Test helpers: every test runs in its own network namespace (created by unsharing the
//! test's thread; it disappears with the thread, on failure too) whose `lo` holds the
//! speakers' addresses — real sockets, nothing leaves the namespace. (127/8 cannot be used:
//! a loopback NEXT_HOP is invalid, RFC 4271 §6.3.) Speakers get short timers; a RIB view is
//! built from the event stream; waits are bounded waits on state, never fixed sleeps.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use calico_bgp::{PeerConfig, PeerStatus, RibEvent, SessionState, Speaker, SpeakerConfig};
use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedReceiver;

/// The BGP port (each speaker has its own address in the test's namespace).
pub const PORT: u16 = 179;
pub const AS: u32 = 64512;
/// Bound of every wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// Speaker `host`'s IPv4 address (10.77.0.<host> on the namespace's `lo`).
pub fn v4(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, host))
}

/// Speaker `host`'s IPv6 address (fd00:77::<host>).
pub fn v6(host: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, u16::from(host)))
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Runs `test` on a current-thread runtime in a new network namespace with `lo` up and
/// addresses v4(1..=9), v6(1..=9).
pub fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): tests need root");
        ip(&["link", "set", "lo", "up"]);
        for h in 1..=9u8 {
            ip(&["addr", "add", &format!("{}/32", v4(h)), "dev", "lo"]);
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/128", v6(h)),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(test());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn config(me: IpAddr) -> SpeakerConfig {
    let id = match me {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => Ipv4Addr::new(10, 77, 1, a.segments()[7] as u8),
    };
    SpeakerConfig {
        router_id: id,
        local_as: AS,
        listen: Some(SocketAddr::new(me, PORT)),
        cluster_id: None,
        graceful_restart: None,
        restarting: false,
    }
}

/// A peer as Calico's mesh configures it: the lower address connects, the higher is passive.
pub fn peer(me: IpAddr, other: IpAddr) -> PeerConfig {
    let mut p = PeerConfig::new(
        format!("Mesh_{}", other.to_string().replace('.', "_")),
        other,
        AS,
    );
    p.port = PORT;
    p.source = Some(me);
    p.passive = other < me;
    p.connect_delay = Duration::from_millis(50);
    p.connect_retry = Duration::from_millis(500);
    p
}

/// The best routes a speaker reported, kept up to date from its events.
pub struct Table {
    pub rx: UnboundedReceiver<RibEvent>,
    pub routes: BTreeMap<IpNet, Vec<IpAddr>>,
    pub synced: bool,
    pub log: Vec<RibEvent>,
}

impl Table {
    pub fn new(rx: UnboundedReceiver<RibEvent>) -> Self {
        Table {
            rx,
            routes: BTreeMap::new(),
            synced: false,
            log: Vec::new(),
        }
    }

    fn apply(&mut self, ev: RibEvent) {
        match &ev {
            RibEvent::Best { prefix, next_hops } => {
                self.routes.insert(*prefix, next_hops.clone());
            }
            RibEvent::Withdrawn { prefix } => {
                self.routes.remove(prefix);
            }
            RibEvent::Synced => self.synced = true,
        }
        self.log.push(ev);
    }

    /// Takes the events that already arrived.
    pub fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.apply(ev);
        }
    }

    /// Waits (bounded) until `cond` holds on the table.
    pub async fn wait(&mut self, what: &str, cond: impl Fn(&Table) -> bool) {
        let end = Instant::now() + WAIT;
        self.drain();
        while !cond(self) {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => self.apply(ev),
                Ok(None) => panic!("event stream closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; table: {:?}", self.routes),
            }
        }
    }

    pub fn has(&self, prefix: &str, hops: &[IpAddr]) -> bool {
        self.routes.get(&net(prefix)).is_some_and(|h| h == hops)
    }
}

/// Waits (bounded, polling) until the speaker's status satisfies `cond`.
pub async fn wait_status(
    s: &Speaker,
    what: &str,
    cond: impl Fn(&[PeerStatus]) -> bool,
) -> Vec<PeerStatus> {
    let end = Instant::now() + WAIT;
    loop {
        let st = s.status().await;
        if cond(&st) {
            return st;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}; status: {st:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn established(st: &[PeerStatus], peer: IpAddr) -> bool {
    st.iter()
        .any(|p| p.address == peer && p.state == SessionState::Established)
}

pub async fn start(cfg: SpeakerConfig) -> (Speaker, Table) {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .is_test(true)
        .try_init();
    let (s, rx) = Speaker::start(cfg).await.expect("speaker starts");
    (s, Table::new(rx))
}
