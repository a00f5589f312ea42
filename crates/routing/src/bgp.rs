//! The BGP plan of one node: what confd writes into `bird.cfg`/`bird6.cfg` (release-v3.32
//! `bgp_processor.go` `GetBirdBGPConfig`, with the peerings of `client.go` `updatePeersV1`)
//! and what `bird_aggr.cfg`/`bird_ipam.cfg` originate, blackhole and export.
//!
//! Calico's rules, as read in its source:
//! - A `node.<name>` BGPConfiguration is honoured for `listenPort`, `logSeverityScreen` and
//!   `prefixAdvertisements` (with its own `communities`) only (`updateBGPConfigCache`); the
//!   AS is the Node's `spec.bgp.asNumber`, else `default`'s `asNumber`, else 64512.
//!   `bindMode`, the mesh settings and the service ranges are global only.
//! - Originated: every confirmed affine block of the node, whatever pool it is in (pool
//!   `disabled` does not matter), except blocks inside a `disableBGPExport` pool (the export
//!   filter rejects those first); plus the service ranges: every `serviceClusterIPs` CIDR,
//!   `serviceExternalIPs` and (with `serviceLoadBalancerAggregation` not `Disabled`)
//!   `serviceLoadBalancerIPs` CIDRs other than single addresses, from every node not
//!   labelled `node.kubernetes.io/exclude-from-external-load-balancers=true`. A route
//!   reflector also re-exports anything inside the load-balancer ranges.
//! - Those service ranges are never programmed into the kernel from BGP (`/rejectcidrs`),
//!   on excluded nodes too.
//! - Blackholes: every affine block but /32 (/128) blocks; service ranges get none in the
//!   kernel (BIRD's static blackholes for them are rejected by the kernel filter).
use crate::view::{ClusterView, Indexed, NodeInfo, PlanOptions};
use crate::{PlanError, SecretSource};
use calico_datastore::model::BgpPeer;
use calico_datastore::model::bgp::{BgpConfigurationSpec, BgpPassword, parse_go_duration};
use calico_selector::Selector;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The BGP port when neither the peer nor `listenPort` names one.
pub const BGP_PORT: u16 = 179;

/// Calico's label that keeps a node from advertising the global service ranges
/// (`client.go` `ExcludeServiceAdvertisement`).
pub const EXCLUDE_SERVICE_ADVERTISEMENT_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// Where a peer comes from; also the prefix of its protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerKind {
    /// The node-to-node mesh (`Mesh_<ip>`).
    Mesh,
    /// A BGPPeer without `node`/`nodeSelector` (`Global_<ip>`).
    Global,
    /// A BGPPeer for this node (`node`, `nodeSelector`, or a reverse peering) (`Node_<ip>`).
    NodeSpecific,
}

impl PeerKind {
    /// The protocol-name prefix (`Mesh`, `Global`, `Node`).
    pub fn name_prefix(self) -> &'static str {
        match self {
            PeerKind::Mesh => "Mesh",
            PeerKind::Global => "Global",
            PeerKind::NodeSpecific => "Node",
        }
    }

    /// `calicoctl node status`'s PEER TYPE (calicoctl `status.go` `bgpTypeMap`).
    pub fn status_label(self) -> &'static str {
        match self {
            PeerKind::Mesh => "node-to-node mesh",
            PeerKind::Global => "global",
            PeerKind::NodeSpecific => "node specific",
        }
    }
}

/// The kind of a peer from its protocol name, as calicoctl's `^(Global|Node|Mesh)_(.+)$`
/// reads BIRD's protocol list.
pub fn peer_kind_from_name(name: &str) -> Option<PeerKind> {
    let (prefix, rest) = name.split_once('_')?;
    if rest.is_empty() {
        return None;
    }
    match prefix {
        "Mesh" => Some(PeerKind::Mesh),
        "Global" => Some(PeerKind::Global),
        "Node" => Some(PeerKind::NodeSpecific),
        _ => None,
    }
}

/// `nextHopMode` (and the legacy `keepOriginalNextHop`, for eBGP peers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NextHopMode {
    /// BGP's rules: self on eBGP, unchanged on iBGP.
    #[default]
    Auto,
    /// `next hop self`.
    SelfAddr,
    /// `next hop keep`.
    Keep,
}

/// One BGP session (one BIRD `protocol bgp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    /// BIRD's protocol name, as Calico spells it: `Mesh_10_0_0_2`, `Global_10_0_0_9_port_1790`,
    /// `Node_fd00__2`.
    pub name: String,
    pub kind: PeerKind,
    pub address: IpAddr,
    /// 179 unless the BGPPeer's `peerIP` or the peer node's `listenPort` says otherwise.
    pub port: u16,
    pub remote_as: u32,
    /// `localASNumber`, else this node's AS.
    pub local_as: u32,
    /// The node's address of the peer's family (`sourceAddress: UseNodeIP`, the default);
    /// `None` for `sourceAddress: None`.
    pub source_address: Option<IpAddr>,
    /// Wait for the peer to connect (mesh and Calico-node global peers with the larger
    /// address, by Calico's string comparison).
    pub passive: bool,
    /// This node is a route reflector and the peer is an iBGP client of it.
    pub rr_client: bool,
    pub password: Option<String>,
    /// `keepaliveTime`, seconds.
    pub keepalive_time: Option<u32>,
    /// `maxRestartTime` / `nodeMeshMaxRestartTime`, seconds.
    pub graceful_restart_time: Option<u32>,
    pub next_hop: NextHopMode,
    /// `ttlSecurity` hops (`ttl security on; multihop <n>`); `None` = `ttl security off`.
    pub ttl_security: Option<u8>,
    /// BIRD `multihop` (every BGPPeer; the mesh leaves BIRD's iBGP default).
    pub multihop: bool,
    /// `numAllowedLocalASNumbers`.
    pub allow_local_as: Option<u32>,
    /// `reachableBy`: a static `/32` (`/128`) route to the peer via this gateway.
    pub reachable_by: Option<IpAddr>,
    /// BGPFilter names (not evaluated by this crate).
    pub filters: Vec<String>,
    /// The BGPPeer resource it comes from (`None` for the mesh).
    pub resource: Option<String>,
}

impl PeerPlan {
    /// iBGP: the same AS on both sides (Calico's `internal_peer` of the export filter).
    pub fn is_internal(&self) -> bool {
        self.remote_as == self.local_as
    }

    /// An IPv6 session (Calico's `bird6.cfg`).
    pub fn is_ipv6(&self) -> bool {
        self.address.is_ipv6()
    }
}

/// BIRD's debug level from `logSeverityScreen` (`client.go` `getLogSeverityKVPair`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    None,
    #[default]
    Info,
    Debug,
}

/// Why a route is originated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OriginSource {
    /// An affine IPAM block of this node.
    Block,
    ServiceClusterIps,
    ServiceExternalIps,
    ServiceLoadBalancerIps,
}

/// A route this node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginatedRoute {
    pub prefix: IpNet,
    pub source: OriginSource,
    /// Standard communities (`aa:nn` as `aa << 16 | nn`).
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
}

/// `prefixAdvertisements[]` resolved: communities added to every exported route inside `cidr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityRule {
    pub cidr: IpNet,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportAction {
    Accept,
    Reject,
}

/// One line of the export filter: `net = prefix` (exact) or `net ~ prefix` (or longer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRule {
    pub prefix: IpNet,
    pub exact: bool,
    pub action: ExportAction,
    pub why: &'static str,
}

/// Calico's `calico_export_to_bgp_peers`: ordered rules, first match wins, reject at the end.
/// iBGP split horizon (a route learned from an iBGP peer goes to another iBGP peer only when
/// reflecting) is the speaker's rule, not part of this filter, as in BIRD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportPolicy {
    pub rules: Vec<ExportRule>,
}

impl ExportPolicy {
    /// Whether `prefix` may be exported to a peer.
    pub fn decide(&self, prefix: &IpNet) -> ExportAction {
        self.rules
            .iter()
            .find(|r| {
                if r.exact {
                    r.prefix == *prefix
                } else {
                    r.prefix.contains(prefix)
                }
            })
            .map_or(ExportAction::Reject, |r| r.action)
    }
}

/// Everything the speaker needs for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPlan {
    pub node: String,
    pub router_id: Ipv4Addr,
    pub node_ipv4: Option<IpAddr>,
    pub node_ipv6: Option<IpAddr>,
    pub local_as: u32,
    /// `bindMode: NodeIP`: listen on the node's addresses only; empty = all addresses.
    pub listen_addresses: Vec<IpAddr>,
    /// `listenPort` (this node's, else global); `None` = 179.
    pub listen_port: Option<u16>,
    pub log_level: LogLevel,
    /// `routeReflectorClusterID`: this node is a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    pub mesh_enabled: bool,
    /// IPv4 peers sorted by name, then IPv6 peers sorted by name (confd's order).
    pub peers: Vec<PeerPlan>,
    /// Routes this node announces (its blocks, the service ranges), sorted by prefix.
    pub originated: Vec<OriginatedRoute>,
    /// Blackhole routes for this node's blocks, except /32 and /128 blocks.
    pub blackholes: Vec<IpNet>,
    /// `reachableBy`: `<peer>/32 via <gateway>` for the kernel, so the session does not
    /// follow BGP-learned routes (`bird_aggr.cfg`'s static routes for peers). Sorted.
    pub peer_routes: Vec<crate::KernelRoute>,
    pub community_rules: Vec<CommunityRule>,
    pub export: ExportPolicy,
    /// Prefixes never programmed into the kernel from BGP (`/rejectcidrs`: the service ranges).
    pub kernel_reject: Vec<IpNet>,
    /// What was skipped and why (bad resources, unresolved passwords).
    pub warnings: Vec<String>,
}

/// Calico's router id from the node name (`confd/pkg/resource/template/util.go` `HashToIPv4`):
/// the first four bytes of SHA-256, the first lowered by 32 when above 223.
pub fn hash_router_id(node: &str) -> Ipv4Addr {
    let digest = Sha256::digest(node.as_bytes());
    let first = if digest[0] > 223 {
        digest[0] - 32
    } else {
        digest[0]
    };
    Ipv4Addr::new(first, digest[1], digest[2], digest[3])
}

/// The protocol name of a peer: `<prefix>_<ip with . or : as _>[_port_<n>]`.
pub fn peer_name(kind: PeerKind, address: IpAddr, port: Option<u16>) -> String {
    let ip = address.to_string().replace(['.', ':'], "_");
    match port {
        Some(p) if p > 0 && kind != PeerKind::Mesh => {
            format!("{}_{ip}_port_{p}", kind.name_prefix())
        }
        _ => format!("{}_{ip}", kind.name_prefix()),
    }
}

/// Calico makes sessions between Calico nodes unidirectional: the side whose address is
/// larger *as text* is passive (`ip > currentNodeIP` on Go strings), so exactly one side
/// connects.
pub fn is_passive(peer: IpAddr, own: IpAddr) -> bool {
    peer.to_string() > own.to_string()
}

/// The peering of confd's v1 model (`client.go` `bgpPeer`) before it is built into a
/// [`PeerPlan`] for this node.
#[derive(Debug, Clone)]
struct V1Peer {
    ip: IpAddr,
    port: u16,
    as_num: u32,
    local_as: Option<u32>,
    rr_cluster_id: Option<String>,
    password: Option<String>,
    source_addr_none: bool,
    keep_next_hop: bool,
    next_hop_mode: Option<String>,
    restart_time: Option<u32>,
    keepalive_time: Option<u32>,
    calico_node: bool,
    allow_local_as: Option<u32>,
    ttl_security: u8,
    reachable_by: Option<IpAddr>,
    filters: Vec<String>,
    resource: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PeeringKey {
    Global { ip: IpAddr, port: u16 },
    Node { ip: IpAddr, port: u16 },
}

/// `host[:port]` / `[v6]:port` of `peerIP` (Go's `net.SplitHostPort`, else the whole text).
fn parse_peer_ip(text: &str) -> (String, u16) {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
        && let Ok(p) = port.parse::<u16>()
    {
        return (host.to_string(), p);
    }
    if text.matches(':').count() == 1
        && let Some((host, port)) = text.split_once(':')
        && let Ok(p) = port.parse::<u16>()
    {
        return (host.to_string(), p);
    }
    (text.to_string(), 0)
}

fn round_secs(text: &Option<String>) -> Option<u32> {
    text.as_deref()
        .and_then(parse_go_duration)
        .map(|d| d.as_secs_f64().round().min(f64::from(u32::MAX)) as u32)
}

struct Planner<'a, 's> {
    ix: Indexed<'a>,
    me: NodeInfo,
    secrets: &'s dyn SecretSource,
    warnings: Vec<String>,
}

impl Planner<'_, '_> {
    fn nodes_matching(&mut self, selector: &str, what: &str) -> Vec<String> {
        match Selector::parse(selector) {
            Ok(sel) => self
                .ix
                .nodes
                .values()
                .filter(|n| sel.matches(&n.labels))
                .map(|n| n.name.clone())
                .collect(),
            Err(e) => {
                self.warnings.push(format!("{what}: {e}, no node matches"));
                Vec::new()
            }
        }
    }

    fn password(&mut self, pw: &Option<BgpPassword>, what: &str) -> Option<String> {
        let r = pw.as_ref()?.secret_key_ref.as_ref()?;
        let found = self.secrets.secret(&r.name, &r.key);
        if found.is_none() {
            self.warnings.push(format!(
                "{what}: password secret {:?} key {:?} not found, no password",
                r.name, r.key
            ));
        }
        found
    }

    /// `client.go` `nodesWithIPPortAndAS`: the Calico nodes with this address, AS and port.
    fn nodes_with_ip_port_as(&self, ip: &str, as_num: Option<u32>, port: u16) -> Vec<String> {
        let want_as = as_num.unwrap_or_else(|| self.ix.global_as());
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return Vec::new();
        };
        self.ix
            .nodes
            .values()
            .filter(|n| n.addr(false) == Some(ip) || n.addr(true) == Some(ip))
            .filter(|n| self.ix.node_as(n) == want_as)
            .filter(|n| port == 0 || self.ix.listen_port(&n.name).is_none_or(|p| p == port))
            .map(|n| n.name.clone())
            .collect()
    }

    /// `client.go` `nodeAsBGPPeers` + `setPeerConfigFieldsFromV3Resource`.
    fn node_as_peers(&mut self, node: &str, v4: bool, v6: bool, res: &BgpPeer) -> Vec<V1Peer> {
        let Some(info) = self.ix.nodes.get(node).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (want, v6fam) in [(v4, false), (v6, true)] {
            if !want {
                continue;
            }
            let Some(ip) = info.addr(v6fam) else { continue };
            let (keep, mode) = next_hop_fields(res);
            out.push(V1Peer {
                ip,
                port: self.ix.listen_port(node).unwrap_or(0),
                as_num: self.ix.node_as(&info),
                local_as: None,
                rr_cluster_id: info.rr_cluster_id.clone(),
                password: None,
                source_addr_none: false,
                keep_next_hop: keep,
                next_hop_mode: mode,
                restart_time: None,
                keepalive_time: None,
                calico_node: false,
                allow_local_as: None,
                ttl_security: res.spec.ttl_security.unwrap_or(0),
                reachable_by: res.spec.reachable_by.trim().parse().ok(),
                filters: res.spec.filters.clone(),
                resource: res.metadata.name.clone(),
            });
        }
        self.set_config_fields(&mut out, res);
        out
    }

    fn set_config_fields(&mut self, peers: &mut [V1Peer], res: &BgpPeer) {
        if peers.is_empty() {
            return;
        }
        let what = format!("BGPPeer {}", res.metadata.name);
        let password = self.password(&res.spec.password, &what);
        for p in peers {
            p.password = password.clone();
            p.source_addr_none = res.spec.source_address == "None";
            p.restart_time = round_secs(&res.spec.max_restart_time);
            p.keepalive_time = round_secs(&res.spec.keepalive_time);
        }
    }

    /// The peerings of this node (`client.go` `updatePeersV1`, keys of this node only).
    fn peerings(&mut self) -> BTreeMap<PeeringKey, V1Peer> {
        let me = self.me.name.clone();
        let mut peers: Vec<&BgpPeer> = self.ix.view.bgp_peers.iter().collect();
        // Go iterates a map here; a fixed order makes "the first peering wins" reproducible.
        peers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut emitted: BTreeMap<PeeringKey, V1Peer> = BTreeMap::new();
        let emit = |emitted: &mut BTreeMap<PeeringKey, V1Peer>, key: PeeringKey, peer: V1Peer| {
            if emitted.contains_key(&key) {
                return;
            }
            if let PeeringKey::Node { ip, port } = key
                && emitted.contains_key(&PeeringKey::Global { ip, port })
            {
                return;
            }
            emitted.insert(key, peer);
        };

        for global_pass in [true, false] {
            for res in &peers {
                let spec = &res.spec;
                let is_global = spec.node_selector.is_empty() && spec.node.is_empty();
                if global_pass != is_global {
                    continue;
                }
                let what = format!("BGPPeer {}", res.metadata.name);
                let local_nodes = if !spec.node_selector.is_empty() {
                    self.nodes_matching(&spec.node_selector, &what)
                } else if !spec.node.is_empty() {
                    vec![spec.node.clone()]
                } else {
                    Vec::new()
                };
                if !global_pass && !local_nodes.contains(&me) {
                    continue;
                }
                let mut v1 = Vec::new();
                if !spec.local_workload_selector.is_empty() {
                    self.warnings.push(format!(
                        "{what}: localWorkloadSelector is not supported, skipped"
                    ));
                    continue;
                } else if !spec.peer_selector.is_empty() {
                    for peer_node in self.nodes_matching(&spec.peer_selector, &what) {
                        v1.extend(self.node_as_peers(&peer_node, true, true, res));
                    }
                } else {
                    let (host, mut port) = parse_peer_ip(&spec.peer_ip);
                    let Ok(ip) = host.parse::<IpAddr>() else {
                        self.warnings.push(format!(
                            "{what}: invalid peerIP {:?}, skipped",
                            spec.peer_ip
                        ));
                        continue;
                    };
                    // Without asNumber Calico writes `as 0`; a Calico node's own AS is
                    // what such a peering can only mean.
                    let node_as = self
                        .ix
                        .nodes
                        .values()
                        .find(|n| n.addr(false) == Some(ip) || n.addr(true) == Some(ip))
                        .map(|n| self.ix.node_as(n));
                    let Some(as_num) = spec.as_number.map(|a| a.0).or(node_as) else {
                        self.warnings.push(format!(
                            "{what}: peerIP {ip} without asNumber is not a Calico node, skipped"
                        ));
                        continue;
                    };
                    if port == 0
                        && let Some(node) =
                            self.nodes_with_ip_port_as(&host, Some(as_num), 0).first()
                    {
                        port = self.ix.listen_port(node).unwrap_or(0);
                    }
                    let calico_node = self
                        .ix
                        .nodes
                        .values()
                        .any(|n| n.addr(false) == Some(ip) || n.addr(true) == Some(ip));
                    let reachable_by = match spec.reachable_by.trim() {
                        "" => None,
                        text => match text.parse::<IpAddr>() {
                            Ok(gw) if gw.is_ipv4() == ip.is_ipv4() => Some(gw),
                            _ => {
                                self.warnings.push(format!(
                                    "{what}: reachableBy {text:?} is not an address of the peer's family, skipped"
                                ));
                                continue;
                            }
                        },
                    };
                    let (keep, mode) = next_hop_fields(res);
                    let mut one = vec![V1Peer {
                        ip,
                        port,
                        as_num,
                        local_as: spec.local_as_number.map(|a| a.0).filter(|a| *a != 0),
                        rr_cluster_id: None,
                        password: None,
                        source_addr_none: false,
                        keep_next_hop: keep,
                        next_hop_mode: mode,
                        restart_time: None,
                        keepalive_time: None,
                        calico_node,
                        allow_local_as: spec
                            .num_allowed_local_as_numbers
                            .filter(|n| *n > 0)
                            .map(|n| n as u32),
                        ttl_security: spec.ttl_security.unwrap_or(0),
                        reachable_by,
                        filters: spec.filters.clone(),
                        resource: res.metadata.name.clone(),
                    }];
                    self.set_config_fields(&mut one, res);
                    v1 = one;
                }
                for peer in v1 {
                    let key = if global_pass {
                        PeeringKey::Global {
                            ip: peer.ip,
                            port: peer.port,
                        }
                    } else {
                        PeeringKey::Node {
                            ip: peer.ip,
                            port: peer.port,
                        }
                    };
                    emit(&mut emitted, key, peer);
                }
            }
        }

        // Reverse peerings: the nodes a BGPPeer points at peer back with the nodes it is for.
        for res in &peers {
            let spec = &res.spec;
            if spec.reverse_peering.as_deref() == Some("Manual")
                || !spec.local_workload_selector.is_empty()
            {
                continue;
            }
            let what = format!("BGPPeer {}", res.metadata.name);
            let (local_nodes, v4, v6) = if !spec.peer_selector.is_empty() {
                (self.nodes_matching(&spec.peer_selector, &what), true, true)
            } else {
                let (host, port) = parse_peer_ip(&spec.peer_ip);
                let v6 = host.contains(':');
                let nodes = self.nodes_with_ip_port_as(&host, spec.as_number.map(|a| a.0), port);
                (nodes, !v6, v6)
            };
            if !local_nodes.contains(&me) {
                continue;
            }
            let peer_nodes = if !spec.node_selector.is_empty() {
                self.nodes_matching(&spec.node_selector, &what)
            } else if !spec.node.is_empty() {
                vec![spec.node.clone()]
            } else {
                self.ix.nodes.keys().cloned().collect()
            };
            for peer_node in peer_nodes {
                for peer in self.node_as_peers(&peer_node, v4, v6, res) {
                    let key = PeeringKey::Node {
                        ip: peer.ip,
                        port: peer.port,
                    };
                    emit(&mut emitted, key, peer);
                }
            }
        }
        emitted
    }

    /// `bgp_processor.go` `buildPeerFromData` for this node.
    fn build_peer(
        &self,
        kind: PeerKind,
        p: &V1Peer,
        node_as: u32,
        cluster_id: &Option<String>,
    ) -> PeerPlan {
        let own = self.me.addr(p.ip.is_ipv6());
        let local_as = p.local_as.unwrap_or(node_as);
        let next_hop = match p.next_hop_mode.as_deref() {
            Some("Self") => NextHopMode::SelfAddr,
            Some("Keep") => NextHopMode::Keep,
            _ if p.keep_next_hop && p.as_num != local_as => NextHopMode::Keep,
            _ => NextHopMode::Auto,
        };
        let rr_client = p.as_num == local_as
            && cluster_id
                .as_ref()
                .is_some_and(|c| p.rr_cluster_id.as_ref() != Some(c));
        let passive = kind == PeerKind::Global
            && p.calico_node
            && own.is_some_and(|own| is_passive(p.ip, own));
        PeerPlan {
            name: peer_name(kind, p.ip, Some(p.port)),
            kind,
            address: p.ip,
            port: if p.port > 0 { p.port } else { BGP_PORT },
            remote_as: p.as_num,
            local_as,
            source_address: if p.source_addr_none { None } else { own },
            passive,
            rr_client,
            password: p.password.clone(),
            keepalive_time: p.keepalive_time,
            graceful_restart_time: p.restart_time,
            next_hop,
            ttl_security: Some(p.ttl_security).filter(|t| *t > 0),
            multihop: true,
            allow_local_as: p.allow_local_as,
            reachable_by: p.reachable_by,
            filters: p.filters.clone(),
            resource: Some(p.resource.clone()),
        }
    }

    /// `bgp_processor.go` `processMeshPeers`.
    fn mesh_peers(&mut self, v6: bool, node_as: u32) -> Vec<PeerPlan> {
        let Some(own) = self.me.addr(v6) else {
            return Vec::new();
        };
        let global = self.ix.global.cloned().unwrap_or_default();
        let password = self.password(&global.node_mesh_password, "BGPConfiguration default");
        let restart = round_secs(&global.node_mesh_max_restart_time);
        let mut out = Vec::new();
        for node in self.ix.nodes.values() {
            let Some(ip) = node.addr(v6) else { continue };
            if ip == own || node.rr_cluster_id.is_some() {
                continue;
            }
            let port = self.ix.listen_port(&node.name);
            out.push(PeerPlan {
                name: peer_name(PeerKind::Mesh, ip, None),
                kind: PeerKind::Mesh,
                address: ip,
                port: port.unwrap_or(BGP_PORT),
                remote_as: self.ix.node_as(node),
                local_as: node_as,
                source_address: Some(own),
                passive: is_passive(ip, own),
                rr_client: false,
                password: password.clone(),
                keepalive_time: None,
                graceful_restart_time: restart,
                next_hop: NextHopMode::Auto,
                ttl_security: None,
                multihop: false,
                allow_local_as: None,
                reachable_by: None,
                filters: Vec::new(),
                resource: None,
            });
        }
        out
    }
}

fn next_hop_fields(res: &BgpPeer) -> (bool, Option<String>) {
    match &res.spec.next_hop_mode {
        Some(mode) => (false, Some(mode.clone())),
        None => (res.spec.keep_original_next_hop, None),
    }
}

/// `^\d+:\d+$` or `^\d+:\d+:\d+$` (`client.go` `isValidCommunity`).
fn is_literal_community(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `getPrefixAdvertisementsKVPair` + `processCommunityRules`: the node's own
/// `prefixAdvertisements` replace the global ones.
fn community_rules(ix: &Indexed<'_>, node: &str, warnings: &mut Vec<String>) -> Vec<CommunityRule> {
    let node_cfg = ix
        .per_node
        .get(node)
        .copied()
        .filter(|c| !c.prefix_advertisements.is_empty());
    let Some(cfg): Option<&BgpConfigurationSpec> = node_cfg.or(ix.global) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for adv in &cfg.prefix_advertisements {
        if adv.cidr.is_empty() {
            continue;
        }
        let Ok(cidr) = adv.cidr.trim().parse::<IpNet>() else {
            warnings.push(format!(
                "prefixAdvertisements: invalid cidr {:?}, skipped",
                adv.cidr
            ));
            continue;
        };
        let mut values = BTreeSet::new();
        for c in &adv.communities {
            if is_literal_community(c) {
                values.insert(c.clone());
            } else if let Some(def) = cfg.communities.iter().find(|d| d.name == *c) {
                values.insert(def.value.clone());
            } else {
                warnings.push(format!(
                    "prefixAdvertisements {cidr}: community {c:?} is not defined, skipped"
                ));
            }
        }
        let mut rule = CommunityRule {
            cidr: cidr.trunc(),
            communities: Vec::new(),
            large_communities: Vec::new(),
        };
        for v in values {
            let parts: Vec<&str> = v.split(':').collect();
            match parts.as_slice() {
                [a, b] => match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => rule.communities.push((u32::from(a) << 16) | u32::from(b)),
                    _ => warnings.push(format!("community {v:?} out of range, skipped")),
                },
                [a, b, c] => match (a.parse::<u32>(), b.parse::<u32>(), c.parse::<u32>()) {
                    (Ok(a), Ok(b), Ok(c)) => rule.large_communities.push([a, b, c]),
                    _ => warnings.push(format!("large community {v:?} out of range, skipped")),
                },
                _ => warnings.push(format!("community {v:?} is malformed, skipped")),
            }
        }
        if !rule.communities.is_empty() || !rule.large_communities.is_empty() {
            rules.push(rule);
        }
    }
    rules
}

fn cidrs(
    blocks: &[calico_datastore::model::CidrBlock],
    warnings: &mut Vec<String>,
    what: &str,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for b in blocks {
        if b.cidr.trim().is_empty() {
            continue;
        }
        match b.cidr.trim().parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => warnings.push(format!("{what}: invalid cidr {:?}, skipped", b.cidr)),
        }
    }
    out
}

fn is_single_address(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// The plan of BGP for `node` (see the module doc). `Err` only when the node is unknown or
/// the router id cannot be formed; bad resources become [`BgpPlan::warnings`].
pub fn bgp_plan(
    view: &ClusterView,
    node: &str,
    opts: &PlanOptions,
    secrets: &dyn SecretSource,
) -> Result<BgpPlan, PlanError> {
    let mut ix = Indexed::new(view);
    let me = ix
        .nodes
        .get(node)
        .cloned()
        .ok_or_else(|| PlanError::UnknownNode(node.to_string()))?;
    let warnings = std::mem::take(&mut ix.warnings);
    let mut planner = Planner {
        ix,
        me: me.clone(),
        secrets,
        warnings,
    };

    let node_ipv4 = me.addr(false);
    let node_ipv6 = me.addr(true);
    let router_id = match opts.router_id.as_deref().map(str::trim) {
        Some("hash") => hash_router_id(node),
        Some(text) if !text.is_empty() => text
            .parse::<Ipv4Addr>()
            .map_err(|_| PlanError::InvalidRouterId(text.to_string()))?,
        _ => match node_ipv4 {
            Some(IpAddr::V4(v4)) => v4,
            // Calico writes an empty router id here; a hash is what its docs advise.
            _ => hash_router_id(node),
        },
    };
    let local_as = planner.ix.node_as(&me);
    let global = planner.ix.global.cloned().unwrap_or_default();
    let node_cfg = planner.ix.per_node.get(node).copied();

    let cluster_id = match &me.rr_cluster_id {
        None => None,
        Some(text) => Some(
            text.parse::<Ipv4Addr>()
                .map_err(|_| PlanError::InvalidNodeField {
                    node: node.to_string(),
                    field: "routeReflectorClusterID",
                    value: text.clone(),
                })?,
        ),
    };
    let cluster_id_text = me.rr_cluster_id.clone();

    let listen_addresses = if global.bind_mode.as_deref() == Some("NodeIP") {
        [node_ipv4, node_ipv6].into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    let listen_port = planner.ix.listen_port(node);
    let severity = node_cfg
        .map(|c| c.log_severity_screen.as_str())
        .filter(|s| !s.is_empty())
        .or(Some(global.log_severity_screen.as_str()).filter(|s| !s.is_empty()));
    let log_level = match severity.map(str::to_ascii_lowercase).as_deref() {
        None | Some("info") => LogLevel::Info,
        Some("debug") => LogLevel::Debug,
        Some(_) => LogLevel::None,
    };
    let mesh_enabled = global.node_to_node_mesh_enabled.unwrap_or(true);

    // Peers, per family, only when the node has an address of that family.
    let peerings = planner.peerings();
    let mut peers = Vec::new();
    for v6 in [false, true] {
        let Some(own) = me.addr(v6) else { continue };
        let mut fam = Vec::new();
        if mesh_enabled && cluster_id.is_none() {
            fam.extend(planner.mesh_peers(v6, local_as));
        }
        for (key, p) in &peerings {
            if p.ip.is_ipv6() != v6 || p.ip == own {
                continue;
            }
            let kind = match key {
                PeeringKey::Global { .. } => PeerKind::Global,
                PeeringKey::Node { .. } => PeerKind::NodeSpecific,
            };
            fam.push(planner.build_peer(kind, p, local_as, &cluster_id_text));
        }
        fam.sort_by(|a, b| a.name.cmp(&b.name));
        peers.extend(fam);
    }

    let mut warnings = std::mem::take(&mut planner.warnings);
    let ix = &planner.ix;

    // Service ranges (`/staticroutes`, `/rejectcidrs`).
    let cluster_ips = match &opts.advertise_cluster_ips {
        Some(list) => list.iter().map(IpNet::trunc).collect(),
        None => cidrs(
            &global.service_cluster_ips,
            &mut warnings,
            "serviceClusterIPs",
        ),
    };
    let external_ips: Vec<IpNet> = cidrs(
        &global.service_external_ips,
        &mut warnings,
        "serviceExternalIPs",
    )
    .into_iter()
    .filter(|n| !is_single_address(n))
    .collect();
    let lb_all = cidrs(
        &global.service_load_balancer_ips,
        &mut warnings,
        "serviceLoadBalancerIPs",
    );
    let aggregate_lb = global.service_load_balancer_aggregation.as_deref() != Some("Disabled");
    let lb_ips: Vec<IpNet> = if aggregate_lb {
        lb_all
            .iter()
            .copied()
            .filter(|n| !is_single_address(n))
            .collect()
    } else {
        Vec::new()
    };
    let mut kernel_reject: Vec<IpNet> = cluster_ips
        .iter()
        .chain(&external_ips)
        .chain(&lb_ips)
        .copied()
        .collect();
    kernel_reject.sort();
    kernel_reject.dedup();
    let excluded = me
        .labels
        .get(EXCLUDE_SERVICE_ADVERTISEMENT_LABEL)
        .is_some_and(|v| v == "true");
    let mut statics: Vec<(IpNet, OriginSource)> = Vec::new();
    if !excluded {
        for (list, src) in [
            (&cluster_ips, OriginSource::ServiceClusterIps),
            (&external_ips, OriginSource::ServiceExternalIps),
            (&lb_ips, OriginSource::ServiceLoadBalancerIps),
        ] {
            for n in list {
                if !statics.iter().any(|(s, _)| s == n) {
                    statics.push((*n, src));
                }
            }
        }
    }

    let community_rules = community_rules(ix, node, &mut warnings);
    let blocks = ix.blocks_of(node);
    let no_export: Vec<IpNet> = ix
        .pools
        .iter()
        .filter(|p| p.disable_bgp_export)
        .map(|p| p.cidr)
        .collect();

    // The export filter, in calico_export_to_bgp_peers' order.
    let mut rules = Vec::new();
    for p in &no_export {
        rules.push(ExportRule {
            prefix: *p,
            exact: false,
            action: ExportAction::Reject,
            why: "pool with disableBGPExport",
        });
    }
    for b in &blocks {
        rules.push(ExportRule {
            prefix: *b,
            exact: true,
            action: ExportAction::Accept,
            why: "this node's block",
        });
        rules.push(ExportRule {
            prefix: *b,
            exact: false,
            action: ExportAction::Reject,
            why: "inside this node's block",
        });
    }
    let mut static_sorted: Vec<IpNet> = statics.iter().map(|(n, _)| *n).collect();
    static_sorted.sort();
    for n in &static_sorted {
        rules.push(ExportRule {
            prefix: *n,
            exact: false,
            action: ExportAction::Accept,
            why: "service range",
        });
    }
    if cluster_id.is_some() {
        let mut lb = lb_all.clone();
        lb.sort();
        lb.dedup();
        for n in lb {
            rules.push(ExportRule {
                prefix: n,
                exact: false,
                action: ExportAction::Accept,
                why: "load balancer range (route reflector)",
            });
        }
    }
    for p in ix.pools.iter().filter(|p| !p.disable_bgp_export) {
        rules.push(ExportRule {
            prefix: p.cidr,
            exact: false,
            action: ExportAction::Accept,
            why: "IP pool",
        });
    }
    let export = ExportPolicy { rules };

    let communities_for = |prefix: &IpNet| {
        let mut std_c = Vec::new();
        let mut large = Vec::new();
        for r in community_rules.iter().filter(|r| r.cidr.contains(prefix)) {
            std_c.extend(&r.communities);
            large.extend(&r.large_communities);
        }
        (std_c, large)
    };
    let mut originated = Vec::new();
    let in_no_export = |n: &IpNet| no_export.iter().any(|p| p.contains(n));
    for b in &blocks {
        if in_no_export(b) {
            continue;
        }
        let (communities, large_communities) = communities_for(b);
        originated.push(OriginatedRoute {
            prefix: *b,
            source: OriginSource::Block,
            communities,
            large_communities,
        });
    }
    for (n, src) in &statics {
        if in_no_export(n) || blocks.contains(n) {
            continue;
        }
        let (communities, large_communities) = communities_for(n);
        originated.push(OriginatedRoute {
            prefix: *n,
            source: *src,
            communities,
            large_communities,
        });
    }
    originated.sort_by_key(|r| r.prefix);

    let blackholes = blocks
        .iter()
        .copied()
        .filter(|b| !is_single_address(b))
        .collect();

    let mut peer_routes: Vec<crate::KernelRoute> = peers
        .iter()
        .filter_map(|p| {
            p.reachable_by.map(|gw| crate::KernelRoute {
                dst: IpNet::from(p.address),
                next_hops: vec![gw].into(),
                device: None,
                onlink: false,
            })
        })
        .collect();
    peer_routes.sort();
    peer_routes.dedup();

    Ok(BgpPlan {
        node: node.to_string(),
        router_id,
        node_ipv4,
        node_ipv6,
        local_as,
        listen_addresses,
        listen_port,
        log_level,
        cluster_id,
        mesh_enabled,
        peers,
        originated,
        blackholes,
        peer_routes,
        community_rules,
        export,
        kernel_reject,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoSecrets;
    use serde_json::json;

    fn node(
        name: &str,
        labels: serde_json::Value,
        bgp: serde_json::Value,
    ) -> calico_datastore::model::Node {
        serde_json::from_value(json!({
            "kind": "Node", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "labels": labels},
            "spec": {"bgp": bgp}
        }))
        .unwrap()
    }

    fn peer(name: &str, spec: serde_json::Value) -> BgpPeer {
        serde_json::from_value(json!({
            "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    }

    fn config(name: &str, spec: serde_json::Value) -> calico_datastore::model::BgpConfiguration {
        serde_json::from_value(json!({
            "kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    }

    fn plan(view: &ClusterView, node: &str) -> BgpPlan {
        bgp_plan(view, node, &PlanOptions::default(), &NoSecrets).unwrap()
    }

    fn names(plan: &BgpPlan) -> Vec<&str> {
        plan.peers.iter().map(|p| p.name.as_str()).collect()
    }

    /// Mirrors bgp_processor.go processMeshPeers: `peerIP > currentNodeIP` on strings.
    #[test]
    fn passive_side_is_the_larger_address_as_text() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // As numbers 9 < 10, as text "10.0.0.9" > "10.0.0.10".
        assert!(is_passive(ip("10.0.0.9"), ip("10.0.0.10")));
        assert!(!is_passive(ip("10.0.0.10"), ip("10.0.0.9")));
        assert!(is_passive(ip("2001::104"), ip("2001::103")));
        assert!(!is_passive(ip("2001::102"), ip("2001::103")));
        // Exactly one side of every pair is passive.
        for (a, b) in [("10.0.0.9", "10.0.0.10"), ("192.0.2.100", "192.0.2.99")] {
            assert_ne!(is_passive(ip(a), ip(b)), is_passive(ip(b), ip(a)));
        }
    }

    /// Mirrors buildPeerFromData's names and calicoctl status.go's bgpPeerRegex/bgpTypeMap.
    #[test]
    fn peer_names_and_status_labels_follow_calico() {
        let v4: IpAddr = "10.192.0.3".parse().unwrap();
        let v6: IpAddr = "fd5f::3".parse().unwrap();
        assert_eq!(peer_name(PeerKind::Mesh, v4, None), "Mesh_10_192_0_3");
        assert_eq!(
            peer_name(PeerKind::Global, v4, Some(150)),
            "Global_10_192_0_3_port_150"
        );
        assert_eq!(
            peer_name(PeerKind::Global, v4, Some(0)),
            "Global_10_192_0_3"
        );
        assert_eq!(
            peer_name(PeerKind::NodeSpecific, v6, Some(500)),
            "Node_fd5f__3_port_500"
        );
        for kind in [PeerKind::Mesh, PeerKind::Global, PeerKind::NodeSpecific] {
            assert_eq!(peer_kind_from_name(&peer_name(kind, v6, None)), Some(kind));
        }
        assert_eq!(PeerKind::Mesh.status_label(), "node-to-node mesh");
        assert_eq!(PeerKind::Global.status_label(), "global");
        assert_eq!(PeerKind::NodeSpecific.status_label(), "node specific");
        assert_eq!(peer_kind_from_name("Local_Workload_10_0_0_1"), None);
        assert_eq!(peer_kind_from_name("Mesh_"), None);
        assert_eq!(peer_kind_from_name("kernel1"), None);
    }

    /// Mirrors template util.go HashToIPv4 (confd's mesh/hash golden file: 25.79.212.8).
    #[test]
    fn hashed_router_id_matches_calico() {
        assert_eq!(hash_router_id("kube-master"), Ipv4Addr::new(25, 79, 212, 8));
        assert!(hash_router_id("any-node").octets()[0] <= 223);
    }

    /// Mirrors client.go parseIPPort (Go's net.SplitHostPort).
    #[test]
    fn peer_ip_with_and_without_port() {
        assert_eq!(parse_peer_ip("10.0.0.1"), ("10.0.0.1".into(), 0));
        assert_eq!(parse_peer_ip("10.0.0.1:1790"), ("10.0.0.1".into(), 1790));
        assert_eq!(parse_peer_ip("[ac13::57]:50"), ("ac13::57".into(), 50));
        assert_eq!(parse_peer_ip("ac13::57"), ("ac13::57".into(), 0));
        assert_eq!(parse_peer_ip("10.0.0.1:x"), ("10.0.0.1:x".into(), 0));
    }

    /// AS precedence: the node's asNumber, else default's, else 64512 (getNodeOrGlobalValue
    /// "as_num" over the globalDefaults); node.<name> has no asNumber in Calico's v1 keys.
    #[test]
    fn local_as_precedence() {
        let mut view = ClusterView {
            nodes: vec![
                node("a", json!({}), json!({"ipv4Address": "10.0.0.1/24"})),
                node(
                    "b",
                    json!({}),
                    json!({"ipv4Address": "10.0.0.2/24", "asNumber": 65002}),
                ),
            ],
            ..ClusterView::default()
        };
        assert_eq!(plan(&view, "a").local_as, 64512);
        view.bgp_configurations
            .push(config("default", json!({"asNumber": 64600})));
        view.bgp_configurations
            .push(config("node.a", json!({"asNumber": 65099})));
        let a = plan(&view, "a");
        assert_eq!(a.local_as, 64600);
        // The mesh peer's AS is that node's own.
        assert_eq!(a.peers[0].remote_as, 65002);
        let b = plan(&view, "b");
        assert_eq!(b.local_as, 65002);
        assert_eq!(b.peers[0].remote_as, 64600);
        assert!(!b.peers[0].is_internal());
    }

    /// Mirrors updatePeersV1's emit: the first peering for a key wins, and a node-specific
    /// peering is dropped when a global one has the same address and port.
    #[test]
    fn duplicate_peerings_are_dropped_as_calico_does() {
        let view = ClusterView {
            nodes: vec![
                node(
                    "a",
                    json!({"rack": "1"}),
                    json!({"ipv4Address": "10.0.0.1/24"}),
                ),
                node(
                    "b",
                    json!({"rack": "1"}),
                    json!({"ipv4Address": "10.0.0.2/24"}),
                ),
            ],
            bgp_configurations: vec![config("default", json!({"nodeToNodeMeshEnabled": false}))],
            bgp_peers: vec![
                peer(
                    "1-global",
                    json!({"peerIP": "192.0.2.1", "asNumber": 65000}),
                ),
                peer(
                    "2-node",
                    json!({"node": "a", "peerIP": "192.0.2.1", "asNumber": 65001}),
                ),
                peer(
                    "3-rack",
                    json!({"nodeSelector": "rack == '1'", "peerIP": "192.0.2.2", "asNumber": 65002, "keepaliveTime": "10s"}),
                ),
                peer(
                    "4-node",
                    json!({"node": "a", "peerIP": "192.0.2.2", "asNumber": 65003}),
                ),
                peer(
                    "5-port",
                    json!({"node": "a", "peerIP": "192.0.2.2:1790", "asNumber": 65004}),
                ),
            ],
            ..ClusterView::default()
        };
        let a = plan(&view, "a");
        assert_eq!(
            names(&a),
            [
                "Global_192_0_2_1",
                "Node_192_0_2_2",
                "Node_192_0_2_2_port_1790"
            ]
        );
        assert_eq!(a.peers[0].remote_as, 65000);
        assert_eq!(a.peers[1].resource.as_deref(), Some("3-rack"));
        assert_eq!(a.peers[1].keepalive_time, Some(10));
        assert_eq!(a.peers[2].port, 1790);
        assert_eq!(
            names(&plan(&view, "b")),
            ["Global_192_0_2_1", "Node_192_0_2_2"]
        );
    }

    /// Mirrors processMeshPeers and the route-reflector rules of buildPeerFromData.
    #[test]
    fn route_reflectors_leave_the_mesh_and_take_clients() {
        let view = ClusterView {
            nodes: vec![
                node(
                    "rr1",
                    json!({"rr": "true"}),
                    json!({"ipv4Address": "10.0.0.1/24", "routeReflectorClusterID": "224.0.0.1"}),
                ),
                node(
                    "rr2",
                    json!({"rr": "true"}),
                    json!({"ipv4Address": "10.0.0.2/24", "routeReflectorClusterID": "224.0.0.1"}),
                ),
                node("c1", json!({}), json!({"ipv4Address": "10.0.0.3/24"})),
                node("c2", json!({}), json!({"ipv4Address": "10.0.0.4/24"})),
            ],
            bgp_peers: vec![peer(
                "to-rr",
                json!({"nodeSelector": "all()", "peerSelector": "rr == 'true'"}),
            )],
            ..ClusterView::default()
        };
        let rr1 = plan(&view, "rr1");
        assert_eq!(rr1.cluster_id, Some(Ipv4Addr::new(224, 0, 0, 1)));
        assert_eq!(
            names(&rr1),
            ["Node_10_0_0_2", "Node_10_0_0_3", "Node_10_0_0_4"]
        );
        // The other reflector of the same cluster is not a client.
        assert_eq!(
            rr1.peers.iter().map(|p| p.rr_client).collect::<Vec<_>>(),
            [false, true, true]
        );
        // Clients mesh among themselves (mesh is on) and skip the reflectors' mesh.
        let c1 = plan(&view, "c1");
        assert_eq!(
            names(&c1),
            ["Mesh_10_0_0_4", "Node_10_0_0_1", "Node_10_0_0_2"]
        );
        assert!(c1.peers.iter().all(|p| !p.rr_client));
        // Node-specific sessions between Calico nodes are active on both sides.
        assert!(c1.peers[1..].iter().all(|p| !p.passive));
    }

    #[test]
    fn export_policy_first_match_wins() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let view = ClusterView {
            nodes: vec![node("a", json!({}), json!({"ipv4Address": "10.0.0.1/24"}))],
            pools: vec![
                serde_json::from_value(json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "p"}, "spec": {"cidr": "192.168.0.0/16"}})).unwrap(),
                serde_json::from_value(json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "q"}, "spec": {"cidr": "172.16.0.0/16", "disableBGPExport": true}})).unwrap(),
            ],
            affinities: vec![("a".into(), net("192.168.5.0/26")), ("a".into(), net("172.16.1.0/26"))],
            ..ClusterView::default()
        };
        let a = plan(&view, "a");
        let d = |s: &str| a.export.decide(&net(s));
        assert_eq!(d("192.168.5.0/26"), ExportAction::Accept);
        assert_eq!(d("192.168.5.7/32"), ExportAction::Reject);
        assert_eq!(d("192.168.9.0/26"), ExportAction::Accept);
        assert_eq!(d("172.16.1.0/26"), ExportAction::Reject);
        assert_eq!(d("10.9.0.0/24"), ExportAction::Reject);
        // A block in a disableBGPExport pool is neither originated nor exported, but blackholed.
        assert_eq!(
            a.originated.iter().map(|r| r.prefix).collect::<Vec<_>>(),
            [net("192.168.5.0/26")]
        );
        assert_eq!(a.blackholes, [net("172.16.1.0/26"), net("192.168.5.0/26")]);
    }

    #[test]
    fn router_id_options() {
        let view = ClusterView {
            nodes: vec![node(
                "v6only",
                json!({}),
                json!({"ipv6Address": "fd00::1/64"}),
            )],
            ..ClusterView::default()
        };
        let opts = |r: Option<&str>| PlanOptions {
            router_id: r.map(String::from),
            ..PlanOptions::default()
        };
        let id = |r| bgp_plan(&view, "v6only", &opts(r), &NoSecrets).map(|p| p.router_id);
        assert_eq!(id(None), Ok(hash_router_id("v6only")));
        assert_eq!(id(Some("hash")), Ok(hash_router_id("v6only")));
        assert_eq!(id(Some("10.10.10.10")), Ok(Ipv4Addr::new(10, 10, 10, 10)));
        assert_eq!(
            id(Some("fd00::1")),
            Err(PlanError::InvalidRouterId("fd00::1".into()))
        );
        assert_eq!(
            bgp_plan(&view, "missing", &opts(None), &NoSecrets),
            Err(PlanError::UnknownNode("missing".into()))
        );
    }

    #[test]
    fn a_thousand_node_mesh_plans_every_other_node() {
        let nodes = (0..1000u32)
            .map(|i| {
                let n = i + 1;
                let ip = format!("10.{}.{}.{}/8", n / 65536, (n / 256) % 256, n % 256);
                node(&format!("n{i}"), json!({}), json!({"ipv4Address": ip}))
            })
            .collect();
        let affinities = (0..1000u32)
            .map(|i| {
                let block = format!("172.{}.{}.0/26", 16 + i / 256, i % 256);
                (format!("n{i}"), block.parse().unwrap())
            })
            .collect();
        let view = ClusterView {
            nodes,
            affinities,
            ..ClusterView::default()
        };
        let p = plan(&view, "n500");
        assert_eq!(p.peers.len(), 999);
        assert_eq!(p.originated.len(), 1);
        // Exactly one side of each session connects.
        let passive = p.peers.iter().filter(|p| p.passive).count();
        let other = plan(&view, "n7");
        assert!(passive > 0 && passive < 999);
        let a = p
            .peers
            .iter()
            .find(|x| x.address == other.node_ipv4.unwrap())
            .unwrap();
        let b = other
            .peers
            .iter()
            .find(|x| x.address == p.node_ipv4.unwrap())
            .unwrap();
        assert_ne!(a.passive, b.passive);
    }
}
