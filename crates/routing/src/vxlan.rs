//! VXLAN routing as Felix computes it: VTEPs from the Node resources
//! (`felix/calc/vxlan_resolver.go`), routes for remote blocks in VXLAN pools
//! (`l3_route_resolver.go`, `dataplane/linux/route_mgr.go`, `vxlan_mgr.go`), for IPv4
//! ([`vxlan_plan`], device `vxlan.calico`) and IPv6 ([`vxlan_plan_v6`], `vxlan-v6.calico`).
//!
//! - A node is a VTEP of a family when it has an address of that family and a VXLAN tunnel
//!   address of it (`ipv4VXLANTunnelAddr` / `ipv6VXLANTunnelAddr`); its MAC is
//!   `vxlanTunnelMACAddr` (`…V6`) or, when missing, derived from its name
//!   ([`vtep_mac_for_node`]).
//! - For each remote block in a VXLAN pool: `<block> via <remote tunnel addr> dev
//!   vxlan.calico onlink`, with ARP `<tunnel addr> lladdr <mac>` and FDB `<mac> dst <node IP>`
//!   per remote VTEP. In a `CrossSubnet` pool a remote node inside this node's subnet gets
//!   `<block> via <node IP>` instead (Felix's same-subnet route, which needs no remote VTEP).
//! - Nothing is routed before this node has its own VTEP (Felix has no device then), and no
//!   tunnel route goes to a node without a VTEP.
//! - Local VXLAN blocks (not /32, /128) get a blackhole, as Felix's route manager adds.

use crate::kernel::KernelRoute;
use crate::view::{ClusterView, Encap, Indexed, NodeInfo};
use ipnet::IpNet;
use sha1::{Digest, Sha1};
use std::net::IpAddr;

/// Felix's IPv4 VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Felix's IPv6 VXLAN device.
pub const VXLAN_DEVICE_V6: &str = "vxlan-v6.calico";

/// This node's VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVtep {
    pub tunnel_addr: IpAddr,
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    /// The node's address (the VXLAN device's parent address).
    pub parent_addr: IpAddr,
}

/// Another node's VTEP and its blocks in VXLAN pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVtep {
    pub node: String,
    pub tunnel_addr: IpAddr,
    pub mac: String,
    pub parent_addr: IpAddr,
    pub blocks: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanPlan {
    /// `vxlan.calico` or `vxlan-v6.calico`.
    pub device: &'static str,
    pub local: Option<LocalVtep>,
    /// Sorted by node name.
    pub remotes: Vec<RemoteVtep>,
    /// Sorted by destination.
    pub routes: Vec<KernelRoute>,
    pub blackholes: Vec<IpNet>,
}

/// The VTEP MAC Felix derives when a node has none (`vxlan_resolver.go` `vtepMACForHost`):
/// `0x66` (`'f'`) followed by the first five bytes of SHA-1 of the node name (of
/// `<name>-v6` for IPv6).
pub fn vtep_mac_for_node(node: &str) -> String {
    let digest = Sha1::digest(node.as_bytes());
    let bytes = [b'f', digest[0], digest[1], digest[2], digest[3], digest[4]];
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC in canonical form, or `None` when it is not six hex bytes.
fn canonical_mac(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = parts
        .iter()
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    Some(
        bytes?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// A node's VTEP of one family: (tunnel address, MAC, parent address).
fn vtep_of(node: &NodeInfo, v6: bool) -> Option<(IpAddr, String, IpAddr)> {
    let (tunnel, mac, hashed) = if v6 {
        (
            node.vxlan_tunnel_addr_v6.map(IpAddr::V6),
            &node.vxlan_mac_v6,
            format!("{}-v6", node.name),
        )
    } else {
        (
            node.vxlan_tunnel_addr.map(IpAddr::V4),
            &node.vxlan_mac,
            node.name.clone(),
        )
    };
    let tunnel = tunnel?;
    let parent = node.addr(v6)?;
    let mac = match mac {
        Some(m) => canonical_mac(m)?,
        None => vtep_mac_for_node(&hashed),
    };
    Some((tunnel, mac, parent))
}

/// The IPv4 VXLAN plan of `node`.
pub fn vxlan_plan(view: &ClusterView, node: &str) -> VxlanPlan {
    plan_family(view, node, false)
}

/// The IPv6 VXLAN plan of `node`.
pub fn vxlan_plan_v6(view: &ClusterView, node: &str) -> VxlanPlan {
    plan_family(view, node, true)
}

fn plan_family(view: &ClusterView, node: &str, v6: bool) -> VxlanPlan {
    let device = if v6 { VXLAN_DEVICE_V6 } else { VXLAN_DEVICE };
    let ix = Indexed::new(view);
    let Some(me) = ix.nodes.get(node) else {
        return VxlanPlan {
            device,
            ..VxlanPlan::default()
        };
    };
    let in_vxlan_pool =
        |b: &IpNet| b.addr().is_ipv6() == v6 && ix.pool_of(b).is_some_and(|p| p.vxlan.is_on());
    let blackholes = ix
        .blocks_of(node)
        .into_iter()
        .filter(|b| in_vxlan_pool(b) && b.prefix_len() < b.max_prefix_len())
        .collect();
    let local = vtep_of(me, v6).map(|(tunnel_addr, mac, parent_addr)| LocalVtep {
        tunnel_addr,
        mac,
        parent_addr,
    });
    let my_net = if v6 { me.ipv6 } else { me.ipv4 }.map(|a| a.network);

    let mut remotes = Vec::new();
    let mut routes = Vec::new();
    for other in ix.nodes.values().filter(|n| n.name != node) {
        let blocks: Vec<IpNet> = ix
            .blocks_of(&other.name)
            .into_iter()
            .filter(|b| in_vxlan_pool(b))
            .collect();
        let vtep = vtep_of(other, v6);
        if let Some((tunnel_addr, mac, parent_addr)) = &vtep {
            remotes.push(RemoteVtep {
                node: other.name.clone(),
                tunnel_addr: *tunnel_addr,
                mac: mac.clone(),
                parent_addr: *parent_addr,
                blocks: blocks.clone(),
            });
        }
        if local.is_none() {
            continue;
        }
        let their_addr = other.addr(v6);
        let same_subnet = match (my_net, their_addr) {
            (Some(net), Some(addr)) => net.contains(&addr),
            _ => false,
        };
        for block in blocks {
            let cross_subnet = ix
                .pool_of(&block)
                .is_some_and(|p| p.vxlan == Encap::CrossSubnet);
            if cross_subnet
                && same_subnet
                && let Some(addr) = their_addr
            {
                routes.push(KernelRoute {
                    dst: block,
                    next_hops: vec![addr].into(),
                    device: None,
                    onlink: false,
                });
            } else if let Some((tunnel_addr, _, _)) = &vtep {
                routes.push(KernelRoute {
                    dst: block,
                    next_hops: vec![*tunnel_addr].into(),
                    device: Some(device),
                    onlink: true,
                });
            }
        }
    }
    routes.sort();
    VxlanPlan {
        device,
        local,
        remotes,
        routes,
        blackholes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_starts_with_f_and_is_stable() {
        let mac = vtep_mac_for_node("kube-node-1");
        assert!(mac.starts_with("66:"), "{mac}");
        assert_eq!(mac.len(), 17);
        assert_eq!(mac, vtep_mac_for_node("kube-node-1"));
        assert_ne!(mac, vtep_mac_for_node("kube-node-2"));
    }

    #[test]
    fn macs_are_canonicalised() {
        assert_eq!(
            canonical_mac("66:DA:C1:8B:0C:E3").as_deref(),
            Some("66:da:c1:8b:0c:e3")
        );
        assert_eq!(canonical_mac("66:da:c1:8b:0c"), None);
        assert_eq!(canonical_mac("zz:da:c1:8b:0c:e3"), None);
    }
}
