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
    s.parse().expect("a prefix")
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
                self.routes.insert(*prefix, next_hops.to_vec());
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

/// The kernel's count of segments it dropped for TCP-MD5 reasons (`TCPMD5NotFound`: unsigned
/// but a key is set; `TCPMD5Unexpected`: signed but no key; `TCPMD5Failure`: wrong
/// signature), in this thread's network namespace (the test's own, see `in_netns`).
pub fn md5_drops(counter: &str) -> u64 {
    let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat");
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == counter)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {counter} in netstat"))
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

/// A hand-driven BGP peer for wire-level checks: it sends what the test gives it (valid or
/// not) and decodes what the speaker sends.
pub struct RawPeer {
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

pub const RAW_ID: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 9);

impl RawPeer {
    /// Connects from `src` to the speaker at `dst` (port 179), retrying until it accepts.
    pub async fn connect(src: IpAddr, dst: IpAddr) -> RawPeer {
        let end = Instant::now() + WAIT;
        loop {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(src, 0)).expect("bind");
            match s.connect(SocketAddr::new(dst, PORT)).await {
                Ok(stream) => {
                    return RawPeer {
                        stream,
                        buf: bytes::BytesMut::new(),
                    };
                }
                Err(e) if Instant::now() > end => panic!("connect to {dst}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub fn open(hold_time: u16, local_as: u32) -> bytes::Bytes {
        calico_bgp::wire::encode(&calico_bgp::wire::build_open(
            &calico_bgp::wire::OpenParams {
                local_as,
                router_id: RAW_ID,
                hold_time,
                gr_time: None,
                restarting: false,
            },
        ))
        .expect("encodes")
    }

    /// Connects and completes OPEN/KEEPALIVE as an iBGP peer.
    pub async fn established(src: IpAddr, dst: IpAddr, hold_time: u16) -> RawPeer {
        RawPeer::established_with(src, dst, &RawPeer::open(hold_time, AS)).await
    }

    /// Connects and completes OPEN/KEEPALIVE with the given OPEN.
    pub async fn established_with(src: IpAddr, dst: IpAddr, open: &[u8]) -> RawPeer {
        let mut p = RawPeer::connect(src, dst).await;
        p.send(open).await;
        assert!(matches!(
            p.recv().await,
            Some(rustbgpd_wire::Message::Open(_))
        ));
        p.send(&keepalive()).await;
        assert!(matches!(
            p.recv().await,
            Some(rustbgpd_wire::Message::Keepalive)
        ));
        p
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next message (bounded wait); `None` when the speaker closed the connection.
    pub async fn recv(&mut self) -> Option<rustbgpd_wire::Message> {
        use tokio::io::AsyncReadExt;
        let end = Instant::now() + WAIT;
        loop {
            if let Ok(Some(len)) = rustbgpd_wire::peek_message_length(&self.buf, 4096)
                && self.buf.len() >= usize::from(len)
            {
                let mut frame = self.buf.split_to(usize::from(len)).freeze();
                return Some(
                    rustbgpd_wire::decode_message(&mut frame, 4096)
                        .expect("the speaker sends valid messages"),
                );
            }
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("timed out waiting for a message"),
            }
        }
    }

    /// Skips KEEPALIVEs and UPDATEs until a NOTIFICATION: returns (code, subcode).
    pub async fn notification(&mut self) -> (u8, u8) {
        loop {
            match self.recv().await {
                Some(rustbgpd_wire::Message::Notification(n)) => {
                    return (n.code.as_u8(), n.subcode);
                }
                Some(_) => {}
                None => panic!("connection closed without NOTIFICATION"),
            }
        }
    }

    /// Reads until the speaker closes the connection (bounded).
    pub async fn closed(&mut self) {
        while self.recv().await.is_some() {}
    }
}

pub fn keepalive() -> bytes::Bytes {
    calico_bgp::wire::encode(&rustbgpd_wire::Message::Keepalive).expect("encodes")
}

/// A BGP message from its type and body (header added).
pub fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// An UPDATE announcing `prefix` (a.b.c.d/len) from an iBGP peer with the given ORIGIN value.
pub fn update_v4(prefix: [u8; 4], len: u8, next_hop: [u8; 4], origin: u8) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, origin, 0x40, 2, 0, 0x40, 3, 4];
    attrs.extend_from_slice(&next_hop);
    attrs.extend_from_slice(&[0x40, 5, 4, 0, 0, 0, 100]);
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.push(len);
    body.extend_from_slice(&prefix[..usize::from(len.div_ceil(8)).min(4)]);
    message(2, &body)
}
