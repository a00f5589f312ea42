//! What calico-node and calico-bgpd say to each other: one JSON object per line, calico-node
//! to calico-bgpd on the child's stdin, calico-bgpd to calico-node on its stdout (its logs go
//! to stderr, which it shares with calico-node). Both ends are the same release: the two
//! binaries are installed together, and a line either side cannot read ends the child.

use calico_bgp::{ExportFilter, PeerConfig, PeerStatus, Route, SpeakerConfig};
use calico_routing::{ImportRules, KernelRoute};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// calico-node → calico-bgpd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToBgpd {
    /// The first line, once: the speaker's identity. A change of identity is a new child.
    Start(SpeakerConfig),
    /// The sessions (`protocol bgp` of Calico's bird.cfg), reconciled by name and address.
    Peers(Vec<PeerConfig>),
    /// Which learned routes may be passed on (Calico's export filter).
    ExportFilter(ExportFilter),
    /// What this node originates.
    LocalRoutes(Vec<Route>),
    /// What the kernel gets: Calico's import filter for learned routes, and the peers' host
    /// routes (`reachableBy`).
    Kernel {
        import: ImportRules,
        host_routes: Vec<HostRoute>,
    },
}

/// A peer's host route: `dst via <gateways>` (no device, not onlink).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub dst: IpNet,
    pub via: Vec<IpAddr>,
}

impl HostRoute {
    pub fn from_kernel(r: &KernelRoute) -> HostRoute {
        HostRoute {
            dst: r.dst,
            via: r.next_hops.to_vec(),
        }
    }

    pub fn to_kernel(&self) -> KernelRoute {
        KernelRoute {
            dst: self.dst,
            next_hops: self.via.clone().into(),
            device: None,
            onlink: false,
        }
    }
}

/// calico-bgpd → calico-node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromBgpd {
    /// The speaker is listening, or the reason it could not start (the child then exits).
    Started(Result<(), String>),
    /// How many prefixes are learned (after a batch that changed the count).
    Learned(usize),
    /// Initial End-of-RIB from every peer (or the deferral timer): stale routes are swept.
    Synced,
    /// The sessions: sent when a session's state or error changed (checked every 250 ms and
    /// after every batch of events), and when only its counters did, at most once a second.
    Peers(Vec<PeerStatus>),
    /// A kernel convergence's outcome and how long it took (seconds).
    Kernel {
        outcome: Result<String, String>,
        took: Option<f64>,
    },
}

/// `msg` as one line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these types cannot fail (no maps with non-string keys, no custom
    // serialisers); an empty object would make the other side stop, which is the right
    // outcome for a bug.
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// One line back into a message.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every message survives the line format unchanged (both ends decode what the other
    /// encodes), including the durations, addresses and results in them.
    #[test]
    fn messages_round_trip_as_lines() {
        let mut peer = PeerConfig::new("Mesh_10_0_0_2", "10.0.0.2".parse().unwrap(), 64512);
        peer.password = Some("secret".into());
        peer.keepalive = Some(Duration::from_millis(1500));
        let to = [
            ToBgpd::Start(SpeakerConfig {
                router_id: "10.0.0.1".parse().unwrap(),
                local_as: 64512,
                listen: Some("0.0.0.0:179".parse().unwrap()),
                cluster_id: None,
                graceful_restart: Some(Duration::from_secs(120)),
                restarting: false,
            }),
            ToBgpd::Peers(vec![peer]),
            ToBgpd::LocalRoutes(vec![Route {
                prefix: "10.244.0.0/26".parse().unwrap(),
                communities: vec![65000 << 16 | 100],
                large_communities: vec![[1, 2, 3]],
            }]),
            ToBgpd::Kernel {
                import: ImportRules::default(),
                host_routes: vec![HostRoute {
                    dst: "10.0.5.1/32".parse().unwrap(),
                    via: vec!["10.0.0.254".parse().unwrap()],
                }],
            },
        ];
        for msg in to {
            let line = encode(&msg);
            assert_eq!(line.last(), Some(&b'\n'));
            assert!(!line[..line.len() - 1].contains(&b'\n'));
            let back: ToBgpd = decode(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
            assert_eq!(back, msg);
        }
        let from = [
            FromBgpd::Started(Err("BGP: cannot listen".into())),
            FromBgpd::Learned(30_000),
            FromBgpd::Kernel {
                outcome: Ok("bgp routes: +1 -0".into()),
                took: Some(0.002),
            },
        ];
        for msg in from {
            let back: FromBgpd = decode(std::str::from_utf8(&encode(&msg)).unwrap()).unwrap();
            assert_eq!(back, msg);
        }
        assert!(decode::<ToBgpd>("{\"Nonsense\":1}").is_err());
    }
}
