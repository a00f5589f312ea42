//! Which BGP-learned routes go into the kernel, and how: Calico's `calico_kernel_programming`
//! filter (`bird_ipam.cfg.template`, statements from `bgp_processor.go` `processIPPool`).
//!
//! - service ranges (`/rejectcidrs`) → none;
//! - prefixes in VXLAN pools → none (the VXLAN manager, [`crate::vxlan_plan`], does them);
//! - `programClusterRoutes: Disabled` → no route inside any pool (Felix owns them);
//! - IPIP `Always` → `via <gw> dev tunl0 onlink`; `CrossSubnet` → the same when the gateway is
//!   outside the local subnets, else a plain route; IPv6 pools have no IPIP;
//! - no-encap pools and anything outside the pools → `via <gw>` (ECMP: every best next hop).
//!
//! A learned route for one of this node's own blocks loses to the block's blackhole (BIRD's
//! static routes have a higher preference than BGP), so it is left out.

use crate::IPIP_DEVICE;
use crate::view::{ClusterView, Encap, Indexed, PlanOptions};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A route to program: `dst via next_hops[..] [dev device] [onlink]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelRoute {
    pub dst: IpNet,
    /// Gateways, sorted; more than one is an ECMP route.
    pub next_hops: Vec<IpAddr>,
    /// `Some("tunl0")`/`Some("vxlan.calico")`; `None` = the kernel picks the device by the
    /// gateway.
    pub device: Option<String>,
    pub onlink: bool,
}

/// The kernel routes for `learned` (prefix → best next hops from BGP) on `node`.
/// `local_subnets` are the subnets of the node's interfaces; the node's own BGP address
/// network (`ipv4Address`'s CIDR, what Calico uses) always counts as local.
pub fn kernel_routes(
    view: &ClusterView,
    node: &str,
    opts: &PlanOptions,
    learned: &BTreeMap<IpNet, Vec<IpAddr>>,
    local_subnets: &[IpNet],
) -> Vec<KernelRoute> {
    let ix = Indexed::new(view);
    let me = ix.nodes.get(node);
    let mut local: Vec<IpNet> = local_subnets.to_vec();
    if let Some(me) = me {
        local.extend(me.ipv4.map(|a| a.network));
        local.extend(me.ipv6.map(|a| a.network));
    }
    let own_blocks = ix.blocks_of(node);
    let reject = service_reject_cidrs(&ix, opts);
    let felix_owns_cluster_routes =
        ix.global.and_then(|g| g.program_cluster_routes.as_deref()) == Some("Disabled");

    let mut out = Vec::new();
    for (dst, hops) in learned {
        let dst = dst.trunc();
        let mut next_hops = hops.clone();
        next_hops.sort();
        next_hops.dedup();
        if next_hops.is_empty()
            || reject.iter().any(|r| r.contains(&dst))
            || own_blocks.iter().any(|b| !b_is_single(b) && *b == dst)
        {
            continue;
        }
        let plain = KernelRoute {
            dst,
            next_hops: next_hops.clone(),
            device: None,
            onlink: false,
        };
        let Some(pool) = ix.pool_of(&dst) else {
            out.push(plain);
            continue;
        };
        if pool.vxlan.is_on() || felix_owns_cluster_routes {
            continue;
        }
        let tunnel = match pool.ipip {
            _ if dst.addr().is_ipv6() => false,
            Encap::Always => true,
            // BIRD tests `bgp_next_hop`, the first next hop.
            Encap::CrossSubnet => !local.iter().any(|s| s.contains(&next_hops[0])),
            Encap::Never => false,
        };
        if tunnel {
            out.push(KernelRoute {
                dst,
                next_hops,
                device: Some(IPIP_DEVICE.to_string()),
                onlink: true,
            });
        } else {
            out.push(plain);
        }
    }
    out
}

fn b_is_single(b: &IpNet) -> bool {
    b.prefix_len() == b.max_prefix_len()
}

/// `/rejectcidrs`: the global service ranges as `client.go` `updateGlobalRoutes` records them
/// (cluster IPs; external and load-balancer ranges other than single addresses).
fn service_reject_cidrs(ix: &Indexed<'_>, opts: &PlanOptions) -> Vec<IpNet> {
    let Some(global) = ix.global else {
        return opts.advertise_cluster_ips.clone().unwrap_or_default();
    };
    let parse = |list: &[calico_datastore::model::CidrBlock]| -> Vec<IpNet> {
        list.iter()
            .filter_map(|b| b.cidr.trim().parse::<IpNet>().ok())
            .map(|n| n.trunc())
            .collect()
    };
    let mut out = match &opts.advertise_cluster_ips {
        Some(list) => list.clone(),
        None => parse(&global.service_cluster_ips),
    };
    out.extend(
        parse(&global.service_external_ips)
            .into_iter()
            .filter(|n| !b_is_single(n)),
    );
    if global.service_load_balancer_aggregation.as_deref() != Some("Disabled") {
        out.extend(
            parse(&global.service_load_balancer_ips)
                .into_iter()
                .filter(|n| !b_is_single(n)),
        );
    }
    out
}
