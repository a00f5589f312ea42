//! The input of every calculation: the datastore's resources as calico-node has them cached
//! ([`ClusterView`]), with the lookups confd's v1 key space gave BIRD's templates
//! (`/calico/bgp/v1/host/<node>/ip_addr_v4`, `network_v4`, `as_num`, `rr_cluster_id`, …,
//! produced by libcalico-go's `bgpnodeprocessor.go` and `ippool.go` `IPPoolV3ToV1`).

use calico_datastore::model::bgp::DEFAULT_AS_NUMBER;
use calico_datastore::model::{BgpConfiguration, BgpConfigurationSpec, BgpPeer, IpPool, Node};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The resources the calculation reads. Order does not matter: every function sorts.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub nodes: Vec<Node>,
    pub bgp_configurations: Vec<BgpConfiguration>,
    pub bgp_peers: Vec<BgpPeer>,
    pub pools: Vec<IpPool>,
    /// Confirmed block affinities (`/calico/ipam/v2/host/<node>/ipv4/block/<cidr>` with state
    /// `confirmed` or none; pending ones are left out, as confd does): (node, block).
    pub affinities: Vec<(String, IpNet)>,
}

/// Settings that come from calico-node's environment rather than the datastore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// `CALICO_ROUTER_ID`: an IPv4 address, or `hash` (derived from the node name).
    pub router_id: Option<String>,
    /// `CALICO_ADVERTISE_CLUSTER_IPS` (one CIDR, as Calico reads it): replaces
    /// `serviceClusterIPs` when set.
    pub advertise_cluster_ips: Option<Vec<IpNet>>,
}

/// Encapsulation mode of a pool (`ipipMode`/`vxlanMode`), as libcalico-go's `encap.Mode`:
/// anything but `Always`/`CrossSubnet` is `Never`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Encap {
    Never,
    Always,
    CrossSubnet,
}

impl Encap {
    fn parse(text: &str) -> Encap {
        match text {
            "Always" => Encap::Always,
            "CrossSubnet" => Encap::CrossSubnet,
            _ => Encap::Never,
        }
    }

    pub fn is_on(self) -> bool {
        self != Encap::Never
    }
}

/// An IP pool as confd and Felix see it (the v1 model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub cidr: IpNet,
    pub ipip: Encap,
    pub vxlan: Encap,
    pub disabled: bool,
    pub disable_bgp_export: bool,
}

/// A node's BGP address: the address and the network of its CIDR (`ip_addr_v4`/`network_v4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddr {
    pub addr: IpAddr,
    pub network: IpNet,
}

/// Parses `ipv4Address`/`ipv6Address` as libcalico-go's `ParseCIDROrIP`: `ip/len` or a bare
/// address (a host network). `Err` for text that is neither.
pub(crate) fn parse_cidr_or_ip(text: &str) -> Result<Option<NodeAddr>, ()> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(Some(NodeAddr {
            addr: net.addr(),
            network: net.trunc(),
        }));
    }
    let addr: IpAddr = text.parse().map_err(|_| ())?;
    Ok(Some(NodeAddr {
        addr,
        network: IpNet::from(addr),
    }))
}

/// Everything about one node that the calculation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Option<NodeAddr>,
    pub ipv6: Option<NodeAddr>,
    pub as_number: Option<u32>,
    pub rr_cluster_id: Option<String>,
    pub vxlan_tunnel_addr: Option<Ipv4Addr>,
    pub vxlan_mac: Option<String>,
    pub vxlan_tunnel_addr_v6: Option<Ipv6Addr>,
    pub vxlan_mac_v6: Option<String>,
}

impl NodeInfo {
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 { self.ipv6 } else { self.ipv4 }.map(|a| a.addr)
    }
}

/// The view, indexed: nodes by name, the global and per-node BGPConfigurations, pools.
pub(crate) struct Indexed<'a> {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub global: Option<&'a BgpConfigurationSpec>,
    pub per_node: BTreeMap<String, &'a BgpConfigurationSpec>,
    pub pools: Vec<PoolInfo>,
    /// Confirmed blocks by node, sorted, without duplicates.
    pub blocks: BTreeMap<String, Vec<IpNet>>,
    pub view: &'a ClusterView,
    /// Problems found while indexing (unparsable addresses, pools), for the plan's warnings.
    pub warnings: Vec<String>,
}

impl<'a> Indexed<'a> {
    pub fn new(view: &'a ClusterView) -> Indexed<'a> {
        let mut warnings = Vec::new();
        let mut nodes = BTreeMap::new();
        for node in &view.nodes {
            let name = node.metadata.name.clone();
            let bgp = node.spec.bgp.clone().unwrap_or_default();
            let mut parse = |field: &str, text: &str| match parse_cidr_or_ip(text) {
                Ok(a) => a,
                Err(()) => {
                    warnings.push(format!("node {name}: invalid {field} {text:?}, ignored"));
                    None
                }
            };
            let ipv4 = parse("ipv4Address", &bgp.ipv4_address).filter(|a| a.addr.is_ipv4());
            let ipv6 = parse("ipv6Address", &bgp.ipv6_address).filter(|a| a.addr.is_ipv6());
            let vxlan_tunnel_addr = node
                .spec
                .ipv4_vxlan_tunnel_addr
                .trim()
                .parse::<Ipv4Addr>()
                .ok();
            let vxlan_tunnel_addr_v6 = node
                .spec
                .ipv6_vxlan_tunnel_addr
                .trim()
                .parse::<Ipv6Addr>()
                .ok();
            let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
            nodes.insert(
                name.clone(),
                NodeInfo {
                    name,
                    labels: node.metadata.labels.clone(),
                    ipv4,
                    ipv6,
                    as_number: bgp.as_number.map(|a| a.0),
                    rr_cluster_id: Some(bgp.route_reflector_cluster_id.trim().to_string())
                        .filter(|s| !s.is_empty()),
                    vxlan_tunnel_addr,
                    vxlan_mac: text(&node.spec.vxlan_tunnel_mac_addr),
                    vxlan_tunnel_addr_v6,
                    vxlan_mac_v6: text(&node.spec.vxlan_tunnel_mac_addr_v6),
                },
            );
        }
        let mut global = None;
        let mut per_node = BTreeMap::new();
        for cfg in &view.bgp_configurations {
            let name = cfg.metadata.name.as_str();
            if name == "default" {
                global = Some(&cfg.spec);
            } else if let Some(node) = name.strip_prefix("node.") {
                per_node.insert(node.to_string(), &cfg.spec);
            } else {
                warnings.push(format!(
                    "BGPConfiguration {name:?} is neither \"default\" nor \"node.<name>\", ignored"
                ));
            }
        }
        let mut pools = Vec::new();
        for pool in &view.pools {
            match pool.spec.network() {
                Some(cidr) => pools.push(PoolInfo {
                    name: pool.metadata.name.clone(),
                    cidr,
                    ipip: Encap::parse(&pool.spec.ipip_mode),
                    vxlan: Encap::parse(&pool.spec.vxlan_mode),
                    disabled: pool.spec.disabled,
                    disable_bgp_export: pool.spec.disable_bgp_export,
                }),
                None => warnings.push(format!(
                    "IPPool {}: invalid cidr {:?}, ignored",
                    pool.metadata.name, pool.spec.cidr
                )),
            }
        }
        // confd sorts its pool filter lines; sorting by CIDR keeps the same first match.
        pools.sort_by(|a, b| a.cidr.cmp(&b.cidr).then(a.name.cmp(&b.name)));
        let mut blocks: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for (node, block) in &view.affinities {
            // Looked up before inserting: a node's name is copied once, not once per block
            // (40,000 affinities are indexed for every plan).
            match blocks.get_mut(node.as_str()) {
                Some(list) => list.push(block.trunc()),
                None => {
                    blocks.insert(node.clone(), vec![block.trunc()]);
                }
            }
        }
        for list in blocks.values_mut() {
            list.sort();
            list.dedup();
        }
        Indexed {
            nodes,
            global,
            per_node,
            pools,
            blocks,
            view,
            warnings,
        }
    }

    /// The global AS (`/calico/bgp/v1/global/as_num`, default 64512).
    pub fn global_as(&self) -> u32 {
        self.global
            .and_then(|g| g.as_number)
            .map_or(DEFAULT_AS_NUMBER, |a| a.0)
    }

    /// A node's AS: its own `spec.bgp.asNumber`, else the global one.
    pub fn node_as(&self, node: &NodeInfo) -> u32 {
        node.as_number.unwrap_or_else(|| self.global_as())
    }

    /// A node's listen port: `node.<name>`'s `listenPort`, else the global one.
    pub fn listen_port(&self, node: &str) -> Option<u16> {
        self.per_node
            .get(node)
            .and_then(|c| c.listen_port)
            .filter(|p| *p != 0)
            .or_else(|| self.global.and_then(|g| g.listen_port).filter(|p| *p != 0))
    }

    /// The pool that contains `prefix` (the first by CIDR order).
    pub fn pool_of(&self, prefix: &IpNet) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.cidr.contains(prefix))
    }

    /// A node's confirmed blocks, sorted, without duplicates.
    pub fn blocks_of(&self, node: &str) -> Vec<IpNet> {
        self.blocks.get(node).cloned().unwrap_or_default()
    }
}
