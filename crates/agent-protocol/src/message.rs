//! The messages. The agent greets every connection ([`Hello`]); then each [`Request`] gets
//! one [`Reply`]. The etcd requests carry their own copies of the store's types (`Key*`):
//! the wire must not change when the datastore crate's types do.
//!
//! Growing the protocol: postcard numbers an enum's variants by position, so a new request
//! or reply goes at the end of [`Request`] / [`Reply`] and the old ones keep their bytes
//! (and [`crate::VERSION`] stays). An agent that predates a request cannot decode it and
//! closes the connection, which the caller sees as [`crate::CallError::NoReply`]; changing
//! an existing message is a new [`crate::VERSION`].

use serde::{Deserialize, Serialize};

/// Sent by the agent as soon as it accepts a connection: a plugin that does not get it
/// within [`crate::client::GREETING_WAIT`] treats the agent as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// Served; the agent's version (`calico-node version`), for logs.
    Welcome { agent: String },
    /// Not served (a caller that is not root); the agent closes the connection.
    Refused(String),
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// What an etcd connection depends on: the endpoints (or the DNS domain they are found in)
/// and the contents of the three TLS files. The agent serves a plugin's etcd requests only
/// when its own are equal: by content, since the plugin's config and the agent's
/// environment may name the same files by different paths (a container's mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdIdentity {
    /// In the order given (the first endpoint that answers is used).
    pub endpoints: Vec<String>,
    pub discovery_srv: Option<String>,
    pub ca: Option<Digest>,
    pub cert: Option<Digest>,
    pub key: Option<Digest>,
}

/// One read of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRead {
    Key(String),
    Prefix(String),
    PrefixKeys(String),
}

/// A condition a transaction's writes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyGuard {
    Absent(String),
    Revision(String, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyWrite {
    Put(String, Vec<u8>),
    Delete(String),
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A transaction's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    Applied(i64),
    Conflict(Vec<Option<KeyValue>>),
}

/// One etcd request of a plugin, exactly as its store would send it: the agent runs it as
/// one etcd transaction and never merges, splits or retries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtcdCall {
    Read(Vec<KeyRead>),
    Txn {
        guards: Vec<KeyGuard>,
        writes: Vec<KeyWrite>,
    },
}

/// UDP ports of one address family (`AF_INET`, `AF_INET6`) whose conntrack entries go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpFlush {
    pub family: u8,
    pub ports: Vec<u16>,
}

/// Which health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    Live,
    Ready,
}

/// What a plugin (or the `health` probe) asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An etcd request through the agent's connection, if `identity` is the agent's.
    Etcd {
        identity: EtcdIdentity,
        call: EtcdCall,
    },
    /// Delete the interface at `index` in the network namespace passed as the frame's one
    /// descriptor, if it is still called `ifname` (an index is reused only after the
    /// interface is gone, so a new pod's interface is never taken). `netns` is the path the
    /// plugin opened, for logs only.
    DeleteLink {
        netns: String,
        index: u32,
        ifname: String,
    },
    /// Keep the nfnetlink socket passed as the frame's first descriptor and close it later;
    /// flush `udp`'s conntrack entries in the network namespace passed as the second.
    ReleaseNetfilter {
        udp: Vec<UdpFlush>,
    },
    Health(Probe),
    /// The state of the node's BGP sessions (`calicoctl node status`).
    BgpStatus,
}

impl Request {
    /// The service a request is for (metrics' `service` label, logs).
    pub fn service(&self) -> &'static str {
        match self {
            Request::Etcd { .. } => "etcd",
            Request::DeleteLink { .. } => "link",
            Request::ReleaseNetfilter { .. } => "netfilter",
            Request::Health(_) => "health",
            Request::BgpStatus => "bgp",
        }
    }

    /// How many descriptors the frame must carry.
    pub fn descriptors(&self) -> usize {
        match self {
            Request::DeleteLink { .. } => 1,
            Request::ReleaseNetfilter { .. } => 2,
            Request::Etcd { .. } | Request::Health(_) | Request::BgpStatus => 0,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Read(Vec<Vec<KeyValue>>),
    Txn(TxnResult),
    /// etcd failed the request; `unreachable` failures are transient (try again later).
    EtcdFailed {
        unreachable: bool,
        message: String,
    },
    /// The agent's etcd settings are not the plugin's: the plugin dials etcd itself.
    OtherEtcd,
    /// Kernel work taken: the agent does it even if the caller goes, and before it exits.
    Accepted,
    /// The request is malformed (a descriptor missing, say); nothing was done.
    Rejected(String),
    /// The agent is stopping and takes no new work: do it yourself.
    ShuttingDown,
    Health(HealthReport),
    BgpStatus(BgpStatusReport),
}

/// The daemon's state, as its probes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub live: bool,
    pub ready: bool,
    /// Why not ready (or what is fine), one line.
    pub detail: String,
}

/// What `calicoctl node status` shows: whether the node's BGP speakers run (Calico's `bird`
/// and `bird6` processes), and each peer's session as BIRD's `show protocols` tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatusReport {
    /// The IPv4 speaker runs. Both false: BGP is off on this node (no BGP backend).
    pub ipv4_running: bool,
    /// The IPv6 speaker runs.
    pub ipv6_running: bool,
    /// Which program speaks BGP for the node and its version (`BIRD 2.0.12`), for logs and
    /// diagnostics; empty when BGP is off.
    pub speaker: String,
    /// One per configured peer of either family, in the speaker's order.
    pub peers: Vec<BgpPeerStatus>,
}

/// One BGP session, as Calico's `calicoctl node status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeerStatus {
    /// The speaker's name for the session (BIRD's protocol name, `Mesh_10_0_0_2`).
    pub name: String,
    pub address: std::net::IpAddr,
    /// `node-to-node mesh`, `global` or `node specific`.
    pub peer_type: String,
    /// BIRD's protocol state: `up`, `start`, `down`.
    pub state: String,
    /// When the state last changed, as the speaker prints it (`23:30:04`, `2026-12-06`).
    pub since: String,
    /// The BGP state and the last error: `Established`, `Active Socket: Connection
    /// refused`, `Connect`, `Passive`.
    pub info: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New messages go at the end: the old ones keep their bytes, so VERSION stays.
    #[test]
    fn bgp_status_is_appended_without_moving_the_old_messages() {
        assert_eq!(
            postcard::to_allocvec(&Request::Health(Probe::Ready)).unwrap(),
            [3, 1]
        );
        assert_eq!(postcard::to_allocvec(&Request::BgpStatus).unwrap(), [4]);
        let report = Reply::BgpStatus(BgpStatusReport {
            ipv4_running: true,
            ipv6_running: false,
            speaker: "BIRD 2.0.12".into(),
            peers: vec![BgpPeerStatus {
                name: "Mesh_10_0_0_2".into(),
                address: "10.0.0.2".parse().unwrap(),
                peer_type: "node-to-node mesh".into(),
                state: "up".into(),
                since: "23:30:04".into(),
                info: "Established".into(),
            }],
        });
        let bytes = postcard::to_allocvec(&report).unwrap();
        assert_eq!(bytes[0], 8, "after the eight replies before it");
        assert_eq!(postcard::from_bytes::<Reply>(&bytes).unwrap(), report);
    }
}
