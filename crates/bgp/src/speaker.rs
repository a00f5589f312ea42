//! The tokio shell: a core task that owns the [`Rib`] and the peer table, one task per
//! peer session that runs its [`Fsm`] over TCP, and one listener that hands accepted
//! connections to the session of the remote address (unknown addresses are closed).
//! All decisions are in `fsm` and `rib`; this file moves bytes and timers.
//!
//! TCP-MD5 (RFC 2385): the core keeps the listener's keys equal to the peers' passwords
//! (the kernel matches incoming SYNs by source address; accepted sockets inherit the key)
//! and a session keys its outgoing socket before `connect`; both through `calico-tcp-md5`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use rustbgpd_wire::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fsm::{Fsm, FsmConfig, Input, Output, collision_keeps_new};
use crate::rib::{Changes, OutUpdate, Rib, RibPeer};
use crate::wire::{self, Family, InboundUpdate, Negotiated, Notification, OpenParams};
use crate::{
    BgpError, ExportFilter, LearnedRoutes, PeerConfig, PeerStatus, RibEvent, Route, SessionState,
    SpeakerConfig,
};

/// Deferral timer of the initial sync when graceful restart is off (RFC 4724 suggests a
/// selection deferral timer; BIRD waits for its restart time).
const DEFAULT_DEFERRAL: Duration = Duration::from_secs(120);
/// How long a shutdown waits for sessions to close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long the RIB must see no change before a compaction it wants ([`Rib::compact`]):
/// a burst of UPDATEs is over by then, and the agent returns freed memory after it.
const COMPACT_QUIET: Duration = Duration::from_millis(100);

/// A running BGP speaker. Dropping it stops the core task (sessions close silently).
pub struct Speaker {
    cmd: mpsc::UnboundedSender<Cmd>,
    core: JoinHandle<()>,
    learned: LearnedRoutes,
}

enum Cmd {
    SetPeers(Vec<PeerConfig>),
    SetLocal(Vec<Route>),
    SetFilter(ExportFilter),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Refresh(String),
    Incoming(TcpStream, SocketAddr),
    Shutdown(bool, oneshot::Sender<()>),
}

impl Speaker {
    /// Starts the speaker (and its listener when `cfg.listen` is set) on the caller's runtime.
    pub async fn start(
        cfg: SpeakerConfig,
    ) -> Result<(Speaker, mpsc::UnboundedReceiver<RibEvent>), BgpError> {
        if cfg.router_id.is_unspecified() {
            return Err(BgpError::Config("router id 0.0.0.0".into()));
        }
        if cfg.local_as == 0 {
            return Err(BgpError::Config("AS number 0".into()));
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let mut listen_socket = None;
        let listener = match cfg.listen {
            Some(addr) => {
                let l = bind_listener(addr).map_err(|source| BgpError::Listen { addr, source })?;
                // Shared with the core, which sets the peers' TCP-MD5 keys on it.
                let l = Arc::new(l);
                listen_socket = Some(l.clone());
                // Weak: dropping the Speaker must close the command channel.
                let tx = cmd_tx.downgrade();
                Some(tokio::spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, remote)) => {
                                let Some(tx) = tx.upgrade() else { return };
                                if tx.send(Cmd::Incoming(s, remote)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                log::warn!("BGP: accept: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }))
            }
            None => None,
        };
        let core = Core::new(cfg, ev_tx, listener, listen_socket);
        let learned = core.rib.learned();
        let core = tokio::spawn(core.run(cmd_rx));
        Ok((
            Speaker {
                cmd: cmd_tx,
                core,
                learned,
            },
            ev_rx,
        ))
    }

    /// The best next hops of every learned prefix, as the [`RibEvent`]s so far report them
    /// (or newer: the table may be ahead of the events not yet read).
    pub fn learned(&self) -> LearnedRoutes {
        self.learned.clone()
    }

    /// Reconciles the peers by (name, address): new ones start, gone ones get a Cease,
    /// changed ones are reset alone.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let _ = self.cmd.send(Cmd::SetPeers(peers));
    }

    /// The routes we originate; only the difference to the previous set is sent.
    pub fn set_local_routes(&self, routes: Vec<Route>) {
        let _ = self.cmd.send(Cmd::SetLocal(routes));
    }

    pub fn set_export_filter(&self, f: ExportFilter) {
        let _ = self.cmd.send(Cmd::SetFilter(f));
    }

    /// Asks the peer named `name` to resend its routes (ROUTE-REFRESH, RFC 2918).
    pub fn request_refresh(&self, name: &str) {
        let _ = self.cmd.send(Cmd::Refresh(name.to_string()));
    }

    pub async fn status(&self) -> Vec<PeerStatus> {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Status(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops every session and the listener. `graceful_restart`: close TCP without a Cease so
    /// that peers keep our routes (RFC 4724); otherwise Cease/Administrative Shutdown.
    pub async fn shutdown(self, graceful_restart: bool) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Shutdown(graceful_restart, tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.core.await;
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(64)
}

#[derive(Debug, Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    updates_in: AtomicU64,
    updates_out: AtomicU64,
}

enum ToSession {
    Incoming(TcpStream),
    Out(OutUpdate),
    EndOfRib(Vec<Family>),
    SendRefresh,
    Stop(Option<Notification>),
}

enum Event {
    State(u64, SessionState),
    Up(u64, Negotiated, SocketAddr),
    Down {
        id: u64,
        error: String,
        was_established: bool,
        graceful: bool,
    },
    Update(u64, InboundUpdate),
    Refresh(u64, Option<Family>),
    /// A failure outside a session (connect errors), for the status.
    Error(u64, String),
}

struct PeerEntry {
    id: u64,
    cfg: PeerConfig,
    tx: Option<mpsc::UnboundedSender<ToSession>>,
    task: Option<JoinHandle<()>>,
    state: SessionState,
    since: SystemTime,
    last_error: Option<String>,
    counters: Arc<Counters>,
    negotiated: Option<Negotiated>,
    /// Families whose End-of-RIB arrived since this entry started (initial sync).
    eor_in: BTreeSet<Family>,
    /// Session established at least once and End-of-RIB received for all its families.
    synced: bool,
}

struct Core {
    cfg: SpeakerConfig,
    rib: Rib,
    peers: BTreeMap<(String, IpAddr), PeerEntry>,
    by_id: HashMap<u64, (String, IpAddr)>,
    events: mpsc::UnboundedSender<RibEvent>,
    ev_tx: mpsc::UnboundedSender<Event>,
    ev_rx: mpsc::UnboundedReceiver<Event>,
    listener: Option<JoinHandle<()>>,
    /// The listening socket, to set TCP-MD5 keys on.
    listen_socket: Option<Arc<TcpListener>>,
    /// The TCP-MD5 keys set on `listen_socket`, by peer address.
    listen_keys: BTreeMap<IpAddr, String>,
    next_id: u64,
    peers_set: bool,
    synced: bool,
    deferral_at: Instant,
    stale_at: HashMap<u64, Instant>,
    restart_pending: Arc<AtomicBool>,
    /// When the RIB is repacked, if it wants to be (put off by every change).
    compact_at: Option<Instant>,
}

impl Core {
    fn new(
        cfg: SpeakerConfig,
        events: mpsc::UnboundedSender<RibEvent>,
        listener: Option<JoinHandle<()>>,
        listen_socket: Option<Arc<TcpListener>>,
    ) -> Self {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let rib = Rib::new(cfg.router_id, cfg.cluster_id, cfg.restarting);
        let cfg_restarting = cfg.restarting;
        let deferral_at = Instant::now() + cfg.graceful_restart.unwrap_or(DEFAULT_DEFERRAL);
        Core {
            cfg,
            rib,
            peers: BTreeMap::new(),
            by_id: HashMap::new(),
            events,
            ev_tx,
            ev_rx,
            listener,
            listen_socket,
            listen_keys: BTreeMap::new(),
            next_id: 1,
            peers_set: false,
            synced: false,
            deferral_at,
            stale_at: HashMap::new(),
            restart_pending: Arc::new(AtomicBool::new(cfg_restarting)),
            compact_at: None,
        }
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let mut deadline = self.stale_at.values().min().copied();
            if !self.synced && self.peers_set {
                deadline = Some(deadline.map_or(self.deferral_at, |d| d.min(self.deferral_at)));
            }
            if let Some(at) = self.compact_at {
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            let sleep = tokio::time::sleep_until(
                deadline.map_or_else(far_future, tokio::time::Instant::from_std),
            );
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => { self.stop_all(None).await; return; }
                    Some(Cmd::Shutdown(gr, done)) => {
                        let n = if gr { None } else { Some(Notification::new(6, 2)) };
                        self.stop_all(n).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_cmd(c),
                },
                Some(ev) = self.ev_rx.recv() => self.on_event(ev),
                _ = sleep => self.on_timers(),
            }
            // Put off by every change, so it comes once the burst is over.
            if self.rib.wants_compaction() {
                self.compact_at = Some(Instant::now() + COMPACT_QUIET);
            }
        }
    }

    async fn stop_all(&mut self, n: Option<Notification>) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        let mut tasks = Vec::new();
        for e in self.peers.values_mut() {
            if let Some(tx) = e.tx.take() {
                let _ = tx.send(ToSession::Stop(n.clone()));
            }
            tasks.extend(e.task.take());
        }
        for t in tasks {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, t).await;
        }
    }

    fn emit(&mut self, ch: Changes) {
        for ev in ch.events {
            let _ = self.events.send(ev);
        }
        for (id, u) in ch.out {
            if u.is_empty() {
                continue;
            }
            if let Some(e) = self.entry(id)
                && let Some(tx) = &e.tx
            {
                let _ = tx.send(ToSession::Out(u));
            }
        }
    }

    fn entry(&mut self, id: u64) -> Option<&mut PeerEntry> {
        let key = self.by_id.get(&id)?;
        self.peers.get_mut(key)
    }

    fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::SetPeers(p) => self.set_peers(p),
            Cmd::SetLocal(r) => {
                let ch = self.rib.set_local(r);
                self.emit(ch);
            }
            Cmd::SetFilter(f) => {
                let ch = self.rib.set_filter(f);
                self.emit(ch);
            }
            Cmd::Status(tx) => {
                let st = self
                    .peers
                    .values()
                    .map(|e| PeerStatus {
                        name: e.cfg.name.clone(),
                        address: e.cfg.address,
                        state: e.state,
                        since: e.since,
                        last_error: e.last_error.clone(),
                        routes_received: self.rib.routes_received(e.id),
                        routes_sent: self.rib.routes_sent(e.id),
                        passive: e.cfg.passive,
                        messages_in: e.counters.messages_in.load(Ordering::Relaxed),
                        messages_out: e.counters.messages_out.load(Ordering::Relaxed),
                        updates_in: e.counters.updates_in.load(Ordering::Relaxed),
                        updates_out: e.counters.updates_out.load(Ordering::Relaxed),
                    })
                    .collect();
                let _ = tx.send(st);
            }
            Cmd::Refresh(name) => {
                for e in self.peers.values() {
                    if e.cfg.name == name
                        && let Some(tx) = &e.tx
                    {
                        let _ = tx.send(ToSession::SendRefresh);
                    }
                }
            }
            Cmd::Incoming(stream, remote) => {
                let ip = canonical(remote.ip());
                match self
                    .peers
                    .values()
                    .find(|e| e.cfg.address == ip && e.tx.is_some())
                {
                    Some(e) => {
                        if let Some(tx) = &e.tx {
                            let _ = tx.send(ToSession::Incoming(stream));
                        }
                    }
                    None => log::info!("BGP: closing connection from unknown peer {remote}"),
                }
            }
            Cmd::Shutdown(..) => {}
        }
    }

    fn set_peers(&mut self, peers: Vec<PeerConfig>) {
        let wanted: BTreeMap<(String, IpAddr), PeerConfig> = peers
            .into_iter()
            .map(|p| ((p.name.clone(), p.address), p))
            .collect();
        let gone: Vec<(String, IpAddr)> = self
            .peers
            .iter()
            .filter(|(k, e)| wanted.get(*k) != Some(&e.cfg))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(mut e) = self.peers.remove(&k) {
                let sub = if wanted.contains_key(&k) { 6 } else { 3 };
                log::info!(
                    "BGP peer {}: {}",
                    e.cfg.name,
                    if sub == 6 { "reconfigured" } else { "removed" }
                );
                if let Some(tx) = e.tx.take() {
                    let _ = tx.send(ToSession::Stop(Some(Notification::new(6, sub))));
                }
                self.by_id.remove(&e.id);
                self.stale_at.remove(&e.id);
                let ch = self.rib.peer_down(e.id, false);
                self.emit(ch);
            }
        }
        for (k, cfg) in wanted {
            if self.peers.contains_key(&k) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let counters = Arc::new(Counters::default());
            let mut entry = PeerEntry {
                id,
                cfg: cfg.clone(),
                tx: None,
                task: None,
                state: SessionState::Idle,
                since: SystemTime::now(),
                last_error: None,
                counters: counters.clone(),
                negotiated: None,
                eor_in: BTreeSet::new(),
                synced: false,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let fsm = self.fsm_config(&cfg);
            let source = cfg.source.or_else(|| {
                self.cfg
                    .listen
                    .map(|l| l.ip())
                    .filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == cfg.address.is_ipv4())
            });
            let session = Session {
                id,
                cfg: cfg.clone(),
                source,
                fsm: Fsm::new(fsm),
                events: self.ev_tx.clone(),
                counters,
                conn: None,
                connecting: None,
                pending: None,
                router_id: self.cfg.router_id,
                restart_pending: self.restart_pending.clone(),
            };
            entry.task = Some(tokio::spawn(session.run(rx)));
            entry.tx = Some(tx);
            self.by_id.insert(id, k.clone());
            self.peers.insert(k, entry);
        }
        self.sync_listen_keys();
        self.peers_set = true;
        self.check_sync();
    }

    /// Makes the listener's TCP-MD5 keys those of the current peers: sets new and changed
    /// passwords, clears those of peers gone or without a password. A key that cannot be set
    /// is reported in the peer's status (its session cannot come up through the listener).
    fn sync_listen_keys(&mut self) {
        let Some(listener) = self.listen_socket.clone() else {
            return;
        };
        let listen_v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
        let mut wanted: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
        for e in self.peers.values() {
            let Some(pw) = e.cfg.password.as_ref().filter(|p| !p.is_empty()) else {
                continue;
            };
            // An IPv4 listener never sees IPv6 peers.
            if e.cfg.address.is_ipv6() && !listen_v6 {
                continue;
            }
            match wanted.get(&e.cfg.address) {
                // The kernel has one key per address.
                Some((other, first)) if first != pw => log::warn!(
                    "BGP peer {}: another peer of address {} ({other}) has a different \
                     password; the listener uses that one",
                    e.cfg.name,
                    e.cfg.address
                ),
                Some(_) => {}
                None => {
                    wanted.insert(e.cfg.address, (e.cfg.name.clone(), pw.clone()));
                }
            }
        }
        let gone: Vec<IpAddr> = self
            .listen_keys
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            self.listen_keys.remove(&addr);
            if let Err(e) = calico_tcp_md5::set_md5_key(listener.as_fd(), addr, b"") {
                log::warn!("BGP: cannot clear the TCP-MD5 key of {addr} on the listener: {e}");
            }
        }
        for (addr, (name, pw)) in wanted {
            if self.listen_keys.get(&addr) == Some(&pw) {
                continue;
            }
            match calico_tcp_md5::set_md5_key(listener.as_fd(), addr, pw.as_bytes()) {
                Ok(()) => {
                    self.listen_keys.insert(addr, pw);
                }
                Err(source) => {
                    // Whatever key was there is stale now.
                    if self.listen_keys.remove(&addr).is_some() {
                        let _ = calico_tcp_md5::set_md5_key(listener.as_fd(), addr, b"");
                    }
                    let err = BgpError::Md5Key { peer: name, source };
                    log::error!("{err}");
                    for e in self.peers.values_mut().filter(|e| e.cfg.address == addr) {
                        e.last_error = Some(err.to_string());
                    }
                }
            }
        }
    }

    fn fsm_config(&self, p: &PeerConfig) -> FsmConfig {
        let local_as = p.local_as.unwrap_or(self.cfg.local_as);
        let gr = p
            .graceful_restart_time
            .or(self.cfg.graceful_restart)
            .filter(|_| self.cfg.graceful_restart.is_some());
        FsmConfig {
            open: OpenParams {
                local_as,
                router_id: self.cfg.router_id,
                // 0 (no keepalives) or at least 3 s (RFC 4271 §4.2).
                hold_time: match p.hold_time.as_secs() {
                    0 => 0,
                    s => u16::try_from(s).unwrap_or(u16::MAX).max(3),
                },
                gr_time: gr.map(|t| u16::try_from(t.as_secs()).unwrap_or(4095).min(4095)),
                restarting: self.cfg.restarting,
            },
            remote_as: p.remote_as,
            ibgp: local_as == p.remote_as,
            passive: p.passive,
            keepalive: p.keepalive,
            connect_delay: p.connect_delay,
            connect_retry: p.connect_retry,
            refused_retry: p.refused_retry,
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::State(id, s) => {
                if let Some(e) = self.entry(id) {
                    e.state = s;
                    e.since = SystemTime::now();
                }
            }
            Event::Up(id, neg, local) => self.peer_up(id, neg, local),
            Event::Down {
                id,
                error,
                was_established,
                graceful,
            } => {
                let gr_on = self.cfg.graceful_restart.is_some();
                let Some(e) = self.entry(id) else { return };
                log::info!("BGP peer {}: down: {error}", e.cfg.name);
                e.last_error = Some(error);
                if !was_established {
                    return;
                }
                let keep = graceful
                    && gr_on
                    && e.negotiated
                        .as_ref()
                        .and_then(|n| n.peer_gr.as_ref())
                        .is_some();
                let restart_time = e
                    .negotiated
                    .as_ref()
                    .and_then(|n| n.peer_gr.as_ref())
                    .map_or(0, |g| g.restart_time);
                let keep = keep && restart_time > 0;
                let ch = self.rib.peer_down(id, keep);
                if keep {
                    self.stale_at.insert(
                        id,
                        Instant::now() + Duration::from_secs(u64::from(restart_time)),
                    );
                }
                self.emit(ch);
            }
            Event::Update(id, u) => {
                if let Some(r) = &u.treated_as_withdraw {
                    let name = self
                        .entry(id)
                        .map(|e| e.cfg.name.clone())
                        .unwrap_or_default();
                    log::warn!("BGP peer {name}: UPDATE treated as withdraw (RFC 7606): {r}");
                }
                let eor = u.end_of_rib;
                let ch = self.rib.update(id, u);
                self.emit(ch);
                if let Some(f) = eor {
                    let ch = self.rib.sweep_stale(id, Some(f));
                    self.emit(ch);
                    if !self.rib.has_stale(id) {
                        self.stale_at.remove(&id);
                    }
                    if let Some(e) = self.entry(id) {
                        e.eor_in.insert(f);
                        if e.negotiated
                            .as_ref()
                            .is_some_and(|n| n.families.iter().all(|f| e.eor_in.contains(f)))
                        {
                            e.synced = true;
                        }
                    }
                    self.check_sync();
                }
            }
            Event::Error(id, error) => {
                if let Some(e) = self.entry(id) {
                    e.last_error = Some(error);
                }
            }
            Event::Refresh(id, fam) => {
                let out = self.rib.adj_rib_out(id, fam);
                if let Some(e) = self.entry(id)
                    && let Some(tx) = &e.tx
                {
                    let fams = e
                        .negotiated
                        .as_ref()
                        .map(|n| n.families.clone())
                        .unwrap_or_default();
                    let _ = tx.send(ToSession::Out(out));
                    let _ = tx.send(ToSession::EndOfRib(fam.map_or(fams, |f| vec![f])));
                }
            }
        }
    }

    fn peer_up(&mut self, id: u64, neg: Negotiated, local: SocketAddr) {
        let local_as = self.cfg.local_as;
        let holding = self.rib.holding();
        let Some(e) = self.entry(id) else { return };
        log::info!("BGP peer {}: established", e.cfg.name);
        e.last_error = None;
        e.negotiated = Some(neg.clone());
        let peer = RibPeer {
            address: e.cfg.address,
            local_addr: canonical(local.ip()),
            local_as: e.cfg.local_as.unwrap_or(local_as),
            remote_as: neg.remote_as,
            remote_id: neg.remote_id,
            rr_client: e.cfg.rr_client,
            next_hop: e.cfg.next_hop,
            families: neg.families.clone(),
        };
        let tx = e.tx.clone();
        // Stale paths survive only for families whose forwarding state the peer kept.
        let preserved: Vec<Family> = neg
            .peer_gr
            .as_ref()
            .map(|g| g.preserved.clone())
            .unwrap_or_default();
        let mut ch = self.rib.peer_up(id, peer);
        for f in [Family::Ipv4, Family::Ipv6] {
            if !preserved.contains(&f) {
                ch.merge(self.rib.sweep_stale(id, Some(f)));
            }
        }
        if self.rib.has_stale(id) {
            let t = neg
                .peer_gr
                .as_ref()
                .map_or(120, |g| g.restart_time.max(120));
            self.stale_at
                .insert(id, Instant::now() + Duration::from_secs(u64::from(t)));
        } else {
            self.stale_at.remove(&id);
        }
        self.emit(ch);
        if !holding && let Some(tx) = tx {
            let _ = tx.send(ToSession::EndOfRib(neg.families.clone()));
        }
        // RFC 4724 §4.1: a peer without graceful restart sends no End-of-RIB to wait for,
        // and one that is restarting itself waits for ours: waiting for either would hold
        // our announcements until the deferral timer (two agents restarted together would
        // each wait for the other).
        if neg.peer_gr.as_ref().is_none_or(|g| g.restarting)
            && let Some(e) = self.entry(id)
        {
            e.synced = true;
            self.check_sync();
        }
    }

    fn check_sync(&mut self) {
        if self.synced || !self.peers_set {
            return;
        }
        if self.peers.values().all(|e| e.synced) {
            self.sync_done();
        }
    }

    fn sync_done(&mut self) {
        self.synced = true;
        self.restart_pending.store(false, Ordering::Relaxed);
        log::info!("BGP: initial sync done");
        let _ = self.events.send(RibEvent::Synced);
        let holding = self.rib.holding();
        let ch = self.rib.release_hold();
        let ids: Vec<u64> = ch.out.keys().copied().collect();
        self.emit(ch);
        if holding {
            for e in self.peers.values() {
                if e.state == SessionState::Established
                    && let (Some(tx), Some(n)) = (&e.tx, &e.negotiated)
                {
                    let _ = ids;
                    let _ = tx.send(ToSession::EndOfRib(n.families.clone()));
                }
            }
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if self.compact_at.is_some_and(|at| at <= now) {
            self.compact_at = None;
            let started = Instant::now();
            self.rib.compact();
            log::debug!("BGP: RIB repacked in {:?}", started.elapsed());
        }
        if !self.synced && self.peers_set && self.deferral_at <= now {
            log::info!("BGP: deferral timer expired before every peer's End-of-RIB");
            self.sync_done();
        }
        let due: Vec<u64> = self
            .stale_at
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.stale_at.remove(&id);
            let name = self
                .entry(id)
                .map(|e| e.cfg.name.clone())
                .unwrap_or_default();
            log::info!("BGP peer {name}: restart time over, dropping stale routes");
            let ch = self.rib.sweep_stale(id, None);
            self.emit(ch);
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

struct Session {
    id: u64,
    cfg: PeerConfig,
    source: Option<IpAddr>,
    fsm: Fsm,
    events: mpsc::UnboundedSender<Event>,
    counters: Arc<Counters>,
    conn: Option<Conn>,
    connecting: Option<JoinHandle<std::io::Result<TcpStream>>>,
    /// An inbound connection that arrived while ours was opening (collision, RFC 4271
    /// §6.8): its OPEN is read aside, then the identifiers decide which connection stays.
    pending: Option<JoinHandle<std::io::Result<(TcpStream, BytesMut)>>>,
    router_id: std::net::Ipv4Addr,
    /// Shared with the core: we are a restarting speaker whose initial sync is not done.
    restart_pending: Arc<AtomicBool>,
}

enum Wake {
    Cmd(Option<ToSession>),
    Read(std::io::Result<usize>),
    Connected(std::io::Result<TcpStream>),
    PendingOpen(std::io::Result<(TcpStream, BytesMut)>),
    Timer,
}

impl Session {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToSession>) {
        self.apply(Input::Start).await;
        loop {
            let deadline = self.fsm.next_deadline();
            let sleep = tokio::time::sleep_until(
                deadline.map_or_else(far_future, tokio::time::Instant::from_std),
            );
            let wake = tokio::select! {
                c = rx.recv() => Wake::Cmd(c),
                r = read_some(&mut self.conn) => Wake::Read(r),
                r = join_connect(&mut self.connecting) => Wake::Connected(r),
                r = join_pending(&mut self.pending) => Wake::PendingOpen(r),
                _ = sleep => Wake::Timer,
            };
            match wake {
                Wake::Cmd(None) => {
                    self.apply(Input::Stop(None)).await;
                    return;
                }
                Wake::Cmd(Some(ToSession::Stop(n))) => {
                    self.apply(Input::Stop(n)).await;
                    return;
                }
                Wake::Cmd(Some(c)) => self.on_cmd(c).await,
                Wake::Read(Ok(0)) => {
                    self.apply(Input::TcpFailed("connection closed by peer".into()))
                        .await
                }
                Wake::Read(Ok(_)) => self.drain_messages().await,
                Wake::Read(Err(e)) => self.apply(Input::TcpFailed(e.to_string())).await,
                Wake::Connected(r) => {
                    self.connecting = None;
                    match r {
                        Ok(s) if self.conn.is_none() => {
                            self.adopt(s, BytesMut::with_capacity(8192));
                            self.apply(Input::TcpUp).await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            log::debug!("BGP peer {}: connect: {e}", self.cfg.name);
                            // As BIRD's status: "Socket: Connection refused".
                            let _ = self
                                .events
                                .send(Event::Error(self.id, format!("Socket: {e}")));
                            self.apply(Input::TcpFailed(format!("connect: {e}"))).await;
                        }
                    }
                }
                Wake::PendingOpen(r) => {
                    self.pending = None;
                    match r {
                        Ok((s, buf)) => self.resolve_collision(s, buf).await,
                        Err(e) => log::debug!("BGP peer {}: second connection: {e}", self.cfg.name),
                    }
                }
                Wake::Timer => self.apply(Input::Tick).await,
            }
        }
    }

    fn adopt(&mut self, s: TcpStream, buf: BytesMut) {
        let _ = s.set_nodelay(true);
        if self.cfg.ttl_security.is_some() {
            let _ = s.set_ttl(255);
        }
        self.conn = Some(Conn { stream: s, buf });
    }

    async fn on_cmd(&mut self, c: ToSession) {
        match c {
            ToSession::Incoming(s) => self.incoming(s).await,
            ToSession::Out(u) => {
                if self.fsm.state() != SessionState::Established {
                    return;
                }
                let four = self.fsm.negotiated().is_some_and(|n| n.four_octet_as);
                let mut msgs = Vec::new();
                let mut groups: Vec<(Arc<wire::PathAttrs>, Family, Vec<ipnet::IpNet>)> = Vec::new();
                for (net, a) in u.announce {
                    let f = Family::of(&net);
                    match groups
                        .iter_mut()
                        .find(|(g, gf, _)| *gf == f && (Arc::ptr_eq(g, &a) || **g == *a))
                    {
                        Some(g) => g.2.push(net),
                        None => groups.push((a, f, vec![net])),
                    }
                }
                for f in [Family::Ipv4, Family::Ipv6] {
                    let w: Vec<ipnet::IpNet> = u
                        .withdraw
                        .iter()
                        .filter(|n| Family::of(n) == f)
                        .copied()
                        .collect();
                    msgs.extend(wire::encode_withdraw(f, &w, four));
                }
                for (a, f, nets) in groups {
                    msgs.extend(wire::encode_announce(f, &nets, &a, four));
                }
                self.counters
                    .updates_out
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                self.write(msgs).await;
            }
            ToSession::EndOfRib(fams) => {
                if self.fsm.state() == SessionState::Established {
                    let msgs: Vec<Bytes> = fams.into_iter().filter_map(wire::end_of_rib).collect();
                    self.write(msgs).await;
                }
            }
            ToSession::SendRefresh => {
                if let Some(n) = self.fsm.negotiated()
                    && n.route_refresh
                    && self.fsm.state() == SessionState::Established
                {
                    let msgs: Vec<Bytes> = n
                        .families
                        .clone()
                        .into_iter()
                        .filter_map(|f| wire::encode(&wire::route_refresh(f)))
                        .collect();
                    self.write(msgs).await;
                }
            }
            ToSession::Stop(_) => {}
        }
    }

    /// An accepted connection from the peer's address.
    async fn incoming(&mut self, s: TcpStream) {
        match self.fsm.state() {
            SessionState::Idle | SessionState::Connect | SessionState::Active => {
                if let Some(c) = self.connecting.take() {
                    c.abort();
                }
                self.adopt(s, BytesMut::with_capacity(8192));
                self.apply(Input::TcpUp).await;
            }
            SessionState::OpenSent | SessionState::OpenConfirm => {
                // Collision: the peer sent its OPEN on its connection; read it aside.
                if let Some(p) = self.pending.take() {
                    p.abort();
                }
                self.pending = Some(tokio::spawn(read_first_message(s)));
            }
            SessionState::Established => {
                // A peer that restarts reconnects before we notice the old connection died
                // (RFC 4724 §4.2): with graceful restart the new one replaces it.
                if self.fsm.negotiated().is_some_and(|n| n.peer_gr.is_some()) {
                    self.conn = None;
                    self.apply(Input::TcpFailed(
                        "peer reconnected (graceful restart)".into(),
                    ))
                    .await;
                    self.adopt(s, BytesMut::with_capacity(8192));
                    self.apply(Input::TcpUp).await;
                } else {
                    reject(s, Notification::new(6, 7)).await;
                }
            }
        }
    }

    /// The peer's second connection delivered its OPEN: RFC 4271 §6.8 decides which stays.
    async fn resolve_collision(&mut self, s: TcpStream, buf: BytesMut) {
        let mut first = buf.clone().freeze();
        let remote_id = match rustbgpd_wire::decode_message(&mut first, wire::MAX_LEN) {
            Ok(Message::Open(o)) => o.bgp_identifier,
            _ => return reject(s, Notification::new(5, 0)).await,
        };
        let state = self.fsm.state();
        let keep_new = match state {
            SessionState::OpenSent | SessionState::OpenConfirm => {
                collision_keeps_new(self.router_id, remote_id, state)
            }
            SessionState::Established => false,
            _ => true,
        };
        if !keep_new {
            log::info!(
                "BGP peer {}: connection collision, keeping ours",
                self.cfg.name
            );
            return reject(s, Notification::new(6, 7)).await;
        }
        if matches!(state, SessionState::OpenSent | SessionState::OpenConfirm) {
            log::info!(
                "BGP peer {}: connection collision, keeping the peer's",
                self.cfg.name
            );
            self.apply(Input::BadMsg(Notification::new(6, 7))).await;
        }
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        self.adopt(s, buf);
        self.apply(Input::TcpUp).await;
        self.drain_messages().await;
    }

    async fn drain_messages(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let len = match rustbgpd_wire::peek_message_length(&conn.buf, wire::MAX_LEN) {
                Ok(Some(l)) if conn.buf.len() >= usize::from(l) => usize::from(l),
                Ok(_) => return,
                Err(e) => {
                    let n = Notification::from_decode_error(&e);
                    self.apply(Input::BadMsg(n)).await;
                    return;
                }
            };
            let mut frame = conn.buf.split_to(len).freeze();
            self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
            match rustbgpd_wire::decode_message(&mut frame, wire::MAX_LEN) {
                Ok(m) => {
                    if matches!(m, Message::Update(_)) {
                        self.counters.updates_in.fetch_add(1, Ordering::Relaxed);
                    }
                    self.apply(Input::Msg(m)).await;
                }
                Err(e) => {
                    let n = Notification::from_decode_error(&e);
                    log::warn!("BGP peer {}: malformed message: {e}", self.cfg.name);
                    self.apply(Input::BadMsg(n)).await;
                }
            }
        }
    }

    /// Sends messages in one write, bounded by the hold time: a peer that stops reading is a
    /// failed connection, not a stuck session task.
    async fn write(&mut self, msgs: Vec<Bytes>) {
        let hold = match self.fsm.negotiated().map(|n| n.hold_time) {
            Some(h) if h > 0 => Duration::from_secs(u64::from(h)),
            _ => crate::fsm::LARGE_HOLD,
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if msgs.is_empty() {
            return;
        }
        let n = msgs.len() as u64;
        let mut all = BytesMut::with_capacity(msgs.iter().map(Bytes::len).sum());
        msgs.iter().for_each(|m| all.extend_from_slice(m));
        let failed = match tokio::time::timeout(hold, conn.stream.write_all(&all)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("peer stopped reading (send blocked for the hold time)".to_string()),
        };
        self.counters.messages_out.fetch_add(n, Ordering::Relaxed);
        if let Some(e) = failed {
            Box::pin(self.apply(Input::TcpFailed(e))).await;
        }
    }

    /// Feeds the FSM and carries out what it asks for.
    async fn apply(&mut self, input: Input) {
        if matches!(input, Input::TcpUp) {
            self.fsm
                .set_restart_bit(self.restart_pending.load(Ordering::Relaxed));
        }
        let outs = self.fsm.handle(input, Instant::now());
        for o in outs {
            match o {
                Output::Connect => self.connect(),
                Output::Send(m) => {
                    if let Some(b) = wire::encode(&m) {
                        self.write(vec![b]).await;
                    }
                }
                Output::Close => {
                    if let Some(mut c) = self.conn.take() {
                        let _ = c.stream.shutdown().await;
                    }
                }
                Output::Established(n) => {
                    let local = self.conn.as_ref().and_then(|c| c.stream.local_addr().ok());
                    if let Some(local) = local {
                        let _ = self.events.send(Event::Up(self.id, n, local));
                    }
                }
                Output::Down {
                    error,
                    was_established,
                    graceful,
                } => {
                    let _ = self.events.send(Event::Down {
                        id: self.id,
                        error,
                        was_established,
                        graceful,
                    });
                }
                Output::Update(u) => {
                    let _ = self.events.send(Event::Update(self.id, u));
                }
                Output::RouteRefresh(f) => {
                    let _ = self.events.send(Event::Refresh(self.id, f));
                }
                Output::State(s) => {
                    let _ = self.events.send(Event::State(self.id, s));
                }
            }
        }
    }

    fn connect(&mut self) {
        if self.conn.is_some() || self.cfg.passive {
            return;
        }
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        let remote = SocketAddr::new(self.cfg.address, self.cfg.port);
        let source = self.source;
        let timeout = self.cfg.connect_retry.max(Duration::from_secs(1));
        let name = self.cfg.name.clone();
        let password = self.cfg.password.clone().filter(|p| !p.is_empty());
        self.connecting = Some(tokio::spawn(async move {
            let s = if remote.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(pw) = password {
                calico_tcp_md5::set_md5_key(s.as_fd(), remote.ip(), pw.as_bytes()).map_err(
                    |source| {
                        let kind = source.kind();
                        let err = BgpError::Md5Key { peer: name, source };
                        std::io::Error::new(kind, err.to_string())
                    },
                )?;
            }
            if let Some(src) = source {
                s.bind(SocketAddr::new(src, 0))?;
            }
            match tokio::time::timeout(timeout, s.connect(remote)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            }
        }));
    }
}

async fn reject(mut s: TcpStream, n: Notification) {
    if let Some(b) = wire::encode(&n.to_message()) {
        let _ = s.write_all(&b).await;
    }
    let _ = s.shutdown().await;
}

/// Reads a second connection until its first message is complete (bounded by the hold time
/// used before OPEN).
async fn read_first_message(mut s: TcpStream) -> std::io::Result<(TcpStream, BytesMut)> {
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        loop {
            if let Ok(Some(l)) = rustbgpd_wire::peek_message_length(&buf, wire::MAX_LEN)
                && buf.len() >= usize::from(l)
            {
                return Ok(());
            }
            if s.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before OPEN",
                ));
            }
        }
    };
    match tokio::time::timeout(crate::fsm::LARGE_HOLD, read).await {
        Ok(Ok(())) => Ok((s, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no OPEN")),
    }
}

async fn join_pending(
    p: &mut Option<JoinHandle<std::io::Result<(TcpStream, BytesMut)>>>,
) -> std::io::Result<(TcpStream, BytesMut)> {
    match p {
        Some(h) => match h.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
        None => std::future::pending().await,
    }
}

async fn read_some(conn: &mut Option<Conn>) -> std::io::Result<usize> {
    match conn {
        Some(c) => c.stream.read_buf(&mut c.buf).await,
        None => std::future::pending().await,
    }
}

async fn join_connect(
    c: &mut Option<JoinHandle<std::io::Result<TcpStream>>>,
) -> std::io::Result<TcpStream> {
    match c {
        Some(h) => match h.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
        None => std::future::pending().await,
    }
}
