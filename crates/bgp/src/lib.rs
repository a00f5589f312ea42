//! The BGP speaker calico-node runs in place of BIRD (issue 13): BGP-4 sessions (RFC 4271)
//! with Calico's timers, 4-byte AS (RFC 6793), IPv4 and IPv6 unicast (RFC 4760), route
//! refresh (RFC 2918), graceful restart as helper and as restarting speaker (RFC 4724),
//! route reflection as server (RFC 4456), RFC 7606 error handling, ECMP ("merge paths").
//!
//! It owns the FSM ([`fsm`], pure), the RIB and decision process ([`rib`], pure) and the
//! tokio shell ([`speaker`]: one task per session, one core task, one listener). Callers get
//! the best learned routes as [`RibEvent`]s; programming the kernel is theirs.
//!
//! The codec is `rustbgpd-wire` (0.27): chosen over `netgauze-bgp-pkt` and `zettabgp`
//! because it has no dependencies beyond `bytes`/`thiserror`, no `unsafe`, decodes and
//! encodes every message we need (OPEN with typed capabilities incl. graceful restart and
//! 4-octet AS, UPDATE with `MP_REACH`/`MP_UNREACH`, `ORIGINATOR_ID`, `CLUSTER_LIST`,
//! communities and large communities, NOTIFICATION, ROUTE-REFRESH), maps decode errors to
//! NOTIFICATION code/subcode, and implements RFC 7606 dispositions (treat-as-withdraw) —
//! netgauze pulls a larger dependency tree and leaves RFC 7606 to the caller; zettabgp has
//! no error-to-NOTIFICATION mapping. `wire` adapts it to our types.
//!
//! TCP-MD5 (RFC 2385) for [`PeerConfig::password`], as BIRD's `password`: the key is set on
//! the listening socket for the peer's address and on our outgoing socket before `connect`
//! (through `calico-tcp-md5`, the one crate allowed the `setsockopt` no safe crate offers).
//! A key that cannot be set is reported in the peer's status ([`BgpError::Md5Key`]).
//!
//! How calico-node uses it: one [`Speaker`] per node; one [`PeerConfig`] per BIRD `protocol
//! bgp` (mesh peers with the higher address `passive`, RR clients with `rr_client`); the
//! node's affine blocks as [`Route`]s; the IP pools as [`ExportFilter::accept`] (learned
//! routes pass on only by reflection or to eBGP peers, and only inside the filter; the
//! default filter passes nothing on). [`RibEvent`]s carry the best LEARNED routes (a prefix
//! we originate ourselves is never reported) for the kernel, and [`Speaker::learned`] is the
//! RIB's own table of them (read in place: no second copy); [`RibEvent::Synced`] says when
//! stale kernel routes may be flushed. IPv6 routes travel on IPv6 sessions (as Calico's
//! separate bird6): a route goes only to sessions whose local address has its family.
//!
//! Known gaps: GTSM only sets TTL 255 on our packets (no `IP_MINTTL` check of
//! the peer's: no safe setter either); no IPv6 link-local next hop, no extended next hop
//! (RFC 8950), no add-path, no enhanced route refresh, no confederations; an `AS_SET`
//! received from a peer cannot be passed on (the codec follows RFC 9774).
//!
//! Must not import other workspace crates (except `calico-tcp-md5`, a socket option):
//! calico-node wires it to the datastore and the dataplane.

pub mod fsm;
pub mod rib;
pub mod speaker;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

pub use speaker::Speaker;

/// The speaker's own settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpeakerConfig {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// Where to accept sessions; `None`: no listener (only active sessions).
    pub listen: Option<SocketAddr>,
    /// `Some`: we are a route reflector with this cluster id.
    pub cluster_id: Option<Ipv4Addr>,
    /// The restart time we advertise; `None` = graceful restart off (neither helper nor
    /// restarting speaker).
    pub graceful_restart: Option<Duration>,
    /// We are a restarting speaker (R bit): our announcements are held until every peer's
    /// End-of-RIB or the deferral timer (the restart time, or 120 s).
    pub restarting: bool,
}

/// How the next hop of routes sent to a peer is chosen (Calico's `nextHopMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NextHopMode {
    /// eBGP: our address; iBGP: learned routes keep theirs (BIRD's default).
    #[default]
    Auto,
    /// Always our session address.
    SelfAddr,
    /// Learned routes always keep their next hop (originated routes carry ours).
    Keep,
}

/// One peer (one `protocol bgp` of Calico's bird.cfg).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerConfig {
    /// Calico's protocol name, e.g. `Mesh_10_0_0_2`.
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub remote_as: u32,
    /// Our AS on this session (`localASNumber`); default the speaker's.
    pub local_as: Option<u32>,
    /// Source address of our connection.
    pub source: Option<IpAddr>,
    /// Only accept, never connect.
    pub passive: bool,
    /// The peer is a route-reflector client of ours.
    pub rr_client: bool,
    /// TCP-MD5 (RFC 2385) password, at most 80 bytes; `None` or empty: no signature.
    pub password: Option<String>,
    /// Hold time we propose (BIRD's default 240 s).
    pub hold_time: Duration,
    /// Keepalive interval; default a third of the negotiated hold time.
    pub keepalive: Option<Duration>,
    /// Restart time advertised to this peer, overriding the speaker's.
    pub graceful_restart_time: Option<Duration>,
    pub next_hop: NextHopMode,
    /// GTSM (RFC 5082): we send with TTL 255; the value is the hop count allowed.
    pub ttl_security: Option<u8>,
    /// Delay before the first connection attempt (Calico: 2 s).
    pub connect_delay: Duration,
    /// Interval between connection attempts (Calico: 5 s).
    pub connect_retry: Duration,
    /// A refused attempt (no session yet) is retried after this, doubling up to
    /// `connect_retry`; `None` (the default, as BIRD): always `connect_retry`.
    pub refused_retry: Option<Duration>,
}

impl PeerConfig {
    /// A peer with Calico's defaults (port 179, hold 240 s, connect delay 2 s, retry 5 s).
    pub fn new(name: impl Into<String>, address: IpAddr, remote_as: u32) -> Self {
        PeerConfig {
            name: name.into(),
            address,
            port: 179,
            remote_as,
            local_as: None,
            source: None,
            passive: false,
            rr_client: false,
            password: None,
            hold_time: Duration::from_secs(240),
            keepalive: None,
            graceful_restart_time: None,
            next_hop: NextHopMode::Auto,
            ttl_security: None,
            connect_delay: Duration::from_secs(2),
            connect_retry: Duration::from_secs(5),
            refused_retry: None,
        }
    }
}

/// A route we originate; its next hop is our session address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Route {
    pub prefix: IpNet,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
}

impl Route {
    pub fn new(prefix: IpNet) -> Self {
        Route {
            prefix,
            communities: Vec::new(),
            large_communities: Vec::new(),
        }
    }
}

/// Which LEARNED routes may be passed on (reflection, eBGP). Originated routes always go
/// out. A route passes when it lies inside an `accept` prefix and inside no `reject` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ExportFilter {
    pub accept: Vec<IpNet>,
    pub reject: Vec<IpNet>,
}

impl ExportFilter {
    /// Whether a learned route for `prefix` may be passed on.
    pub fn allows(&self, prefix: &IpNet) -> bool {
        !self.reject.iter().any(|r| r.contains(prefix))
            && self.accept.iter().any(|a| a.contains(prefix))
    }
}

/// An ECMP set of next hops, sorted. Shared: the RIB hands out one allocation per distinct
/// set (a peer's 10,000 routes all name the same one), and its readers keep it as it is.
pub type NextHops = std::sync::Arc<[IpAddr]>;

/// The best next hops of every learned prefix as last reported in [`RibEvent`]s: the RIB's
/// own table, shared read-only with the speaker's user so that it needs no copy of its own
/// (30,000 prefixes held twice were a megabyte and a half). Locked only briefly, by one
/// thread at a time in practice (the speaker's core task and its user share a runtime).
#[derive(Debug, Clone, Default)]
pub struct LearnedRoutes(
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<IpNet, NextHops>>>,
);

impl LearnedRoutes {
    /// Runs `f` on the table as it is now.
    pub fn with<R>(&self, f: impl FnOnce(&std::collections::BTreeMap<IpNet, NextHops>) -> R) -> R {
        f(&self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The table for a change (a panic elsewhere while it was held leaves it usable: every
    /// change to it is a single insert or remove).
    pub(crate) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<IpNet, NextHops>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A change of the best learned routes (what the kernel should hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibEvent {
    /// The best paths for `prefix`; `next_hops` is the ECMP set, sorted.
    Best {
        prefix: IpNet,
        next_hops: NextHops,
    },
    Withdrawn {
        prefix: IpNet,
    },
    /// Initial End-of-RIB received from every peer, or the deferral timer ran out.
    Synced,
}

/// The RFC 4271 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SessionState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One peer's state, for `calicoctl node status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: IpAddr,
    pub state: SessionState,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub routes_received: usize,
    pub routes_sent: usize,
    pub passive: bool,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("BGP: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("BGP peer {peer}: cannot set its TCP-MD5 key: {source}")]
    Md5Key {
        peer: String,
        source: std::io::Error,
    },
    #[error("BGP: invalid configuration: {0}")]
    Config(String),
}
