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

/// An ECMP set of next hops, sorted, shared between the routes that have it (the BGP
/// speaker hands out one allocation per distinct set; 30,000 routes name a handful).
pub type NextHops = std::sync::Arc<[IpAddr]>;

/// A route to program: `dst via next_hops[..] [dev device] [onlink]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub dst: IpNet,
    /// Gateways, sorted; more than one is an ECMP route.
    pub next_hops: NextHops,
    /// `Some("tunl0")`/`Some("vxlan.calico")`; `None` = the kernel picks the device by the
    /// gateway.
    pub device: Option<&'static str>,
    pub onlink: bool,
}

/// The kernel routes for `learned` (prefix → best next hops from BGP) on `node`.
/// `local_subnets` are the subnets of the node's interfaces; the node's own BGP address
/// network (`ipv4Address`'s CIDR, what Calico uses) always counts as local.
pub fn kernel_routes(
    view: &ClusterView,
    node: &str,
    opts: &PlanOptions,
    learned: &BTreeMap<IpNet, NextHops>,
    local_subnets: &[IpNet],
) -> Vec<KernelRoute> {
    ImportRules::new(view, node, opts, local_subnets).routes(learned)
}

/// Calico's import filter reduced to what it needs of the datastore, so that the process
/// holding the learned routes (`calico-bgpd`) can apply it without the datastore: made by
/// calico-node from its view, sent whenever it changes, applied to every batch of learned
/// routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportRules {
    /// Subnets counted as local for `CrossSubnet`.
    pub local: Vec<IpNet>,
    /// This node's blocks other than single addresses, sorted: their blackholes win.
    pub own_blocks: Vec<IpNet>,
    /// Service ranges (`/rejectcidrs`).
    pub reject: Vec<IpNet>,
    /// `programClusterRoutes: Disabled`: Felix owns every route inside a pool.
    pub felix_owns_cluster_routes: bool,
    /// The pools in the view's order (the first containing a prefix decides).
    pub pools: Vec<ImportPool>,
}

/// One pool as the import filter sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportPool {
    pub cidr: IpNet,
    pub ipip: Encap,
    pub vxlan: bool,
}

impl ImportRules {
    /// The rules for `node` in `view` (see [`kernel_routes`]).
    pub fn new(
        view: &ClusterView,
        node: &str,
        opts: &PlanOptions,
        local_subnets: &[IpNet],
    ) -> ImportRules {
        let ix = Indexed::new(view);
        let mut local: Vec<IpNet> = local_subnets.to_vec();
        if let Some(me) = ix.nodes.get(node) {
            local.extend(me.ipv4.map(|a| a.network));
            local.extend(me.ipv6.map(|a| a.network));
        }
        let mut own_blocks: Vec<IpNet> = ix
            .blocks_of(node)
            .into_iter()
            .filter(|b| !b_is_single(b))
            .collect();
        own_blocks.sort();
        own_blocks.dedup();
        ImportRules {
            local,
            own_blocks,
            reject: service_reject_cidrs(&ix, opts),
            felix_owns_cluster_routes: ix.global.and_then(|g| g.program_cluster_routes.as_deref())
                == Some("Disabled"),
            pools: ix
                .pools
                .iter()
                .map(|p| ImportPool {
                    cidr: p.cidr,
                    ipip: p.ipip,
                    vxlan: p.vxlan.is_on(),
                })
                .collect(),
        }
    }

    /// The kernel routes for `learned` (prefix → best next hops from BGP).
    pub fn routes(&self, learned: &BTreeMap<IpNet, NextHops>) -> Vec<KernelRoute> {
        let mut out = Vec::new();
        for (dst, hops) in learned {
            let dst = dst.trunc();
            // Kept shared when already sorted without duplicates (as the speaker gives them).
            let next_hops = if hops.windows(2).all(|w| w[0] < w[1]) {
                hops.clone()
            } else {
                let mut v = hops.to_vec();
                v.sort();
                v.dedup();
                NextHops::from(v)
            };
            if next_hops.is_empty()
                || self.reject.iter().any(|r| r.contains(&dst))
                // Looked up once per learned prefix: a search, not a scan (10,000 blocks).
                || self.own_blocks.binary_search(&dst).is_ok()
            {
                continue;
            }
            let plain = KernelRoute {
                dst,
                next_hops: next_hops.clone(),
                device: None,
                onlink: false,
            };
            let Some(pool) = self.pools.iter().find(|p| p.cidr.contains(&dst)) else {
                out.push(plain);
                continue;
            };
            if pool.vxlan || self.felix_owns_cluster_routes {
                continue;
            }
            let tunnel = match pool.ipip {
                _ if dst.addr().is_ipv6() => false,
                Encap::Always => true,
                // BIRD tests `bgp_next_hop`, the first next hop.
                Encap::CrossSubnet => !self.local.iter().any(|s| s.contains(&next_hops[0])),
                Encap::Never => false,
            };
            if tunnel {
                out.push(KernelRoute {
                    dst,
                    next_hops,
                    device: Some(IPIP_DEVICE),
                    onlink: true,
                });
            } else {
                out.push(plain);
            }
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(global: serde_json::Value) -> ClusterView {
        ClusterView {
            nodes: vec![
                serde_json::from_value(json!({"kind": "Node", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "a"}, "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}}))
                .unwrap(),
            ],
            bgp_configurations: vec![
                serde_json::from_value(json!({"kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "default"}, "spec": global}))
                .unwrap(),
            ],
            pools: vec![
                serde_json::from_value(json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "p"}, "spec": {"cidr": "192.168.0.0/16", "ipipMode": "CrossSubnet"}}))
                .unwrap(),
                serde_json::from_value(json!({"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                    "metadata": {"name": "v6"}, "spec": {"cidr": "fd00:1::/64", "ipipMode": "Always"}}))
                .unwrap(),
            ],
            ..ClusterView::default()
        }
    }

    fn learned(pairs: &[(&str, &[&str])]) -> BTreeMap<IpNet, NextHops> {
        pairs
            .iter()
            .map(|(d, v)| {
                (
                    d.parse().unwrap(),
                    v.iter().map(|h| h.parse::<IpAddr>().unwrap()).collect(),
                )
            })
            .collect()
    }

    /// Mirrors processIPPool (CrossSubnet `bgp_next_hop ~ <local subnet>`, no IPIP in IPv6)
    /// and bird_ipam.cfg's `/rejectcidrs`.
    #[test]
    fn cross_subnet_service_ranges_and_ipv6() {
        let v = view(json!({"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}));
        let routes = kernel_routes(
            &v,
            "a",
            &PlanOptions::default(),
            &learned(&[
                ("192.168.1.0/26", &["10.0.0.2"]),
                ("192.168.2.0/26", &["10.0.9.2"]),
                ("192.168.3.0/26", &["10.0.9.2"]),
                ("10.96.0.0/12", &["10.0.0.2"]),
                ("fd00:1::40/122", &["fd00::2"]),
            ]),
            &["10.0.9.0/24".parse().unwrap()],
        );
        let shown: Vec<String> = routes.iter().map(crate::render::render_route).collect();
        assert_eq!(
            shown,
            [
                "192.168.1.0/26 via 10.0.0.2",
                "192.168.2.0/26 via 10.0.9.2",
                "192.168.3.0/26 via 10.0.9.2",
                "fd00:1::40/122 via fd00::2",
            ]
        );
        let shown: Vec<String> = kernel_routes(
            &v,
            "a",
            &PlanOptions::default(),
            &learned(&[("192.168.2.0/26", &["10.0.9.2"])]),
            &[],
        )
        .iter()
        .map(crate::render::render_route)
        .collect();
        assert_eq!(shown, ["192.168.2.0/26 via 10.0.9.2 dev tunl0 onlink"]);
    }

    /// The rules travel to calico-bgpd as JSON: what arrives decides exactly as the
    /// original (own blocks, service ranges, CrossSubnet's local subnets, pool order).
    #[test]
    fn import_rules_survive_the_trip_to_calico_bgpd() {
        let mut v = view(json!({"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}));
        v.affinities
            .push(("a".into(), "192.168.7.0/26".parse().unwrap()));
        let rules = ImportRules::new(
            &v,
            "a",
            &PlanOptions::default(),
            &["10.0.9.0/24".parse().unwrap()],
        );
        let text = serde_json::to_string(&rules).unwrap();
        let back: ImportRules = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rules);
        let l = learned(&[
            ("192.168.1.0/26", &["10.0.0.2"]),
            ("192.168.2.0/26", &["10.0.8.2"]),
            ("192.168.7.0/26", &["10.0.0.2"]),
            ("10.96.0.0/12", &["10.0.0.2"]),
        ]);
        assert_eq!(back.routes(&l), rules.routes(&l));
        let shown: Vec<String> = back
            .routes(&l)
            .iter()
            .map(crate::render::render_route)
            .collect();
        assert_eq!(
            shown,
            [
                "192.168.1.0/26 via 10.0.0.2",
                "192.168.2.0/26 via 10.0.8.2 dev tunl0 onlink",
            ]
        );
    }

    /// Mirrors processIPPool with `programClusterRoutes: Disabled`: Felix owns pool routes.
    #[test]
    fn felix_owned_cluster_routes_are_left_out() {
        let v = view(json!({"programClusterRoutes": "Disabled"}));
        let routes = kernel_routes(
            &v,
            "a",
            &PlanOptions::default(),
            &learned(&[
                ("192.168.1.0/26", &["10.0.0.2"]),
                ("172.16.0.0/24", &["10.0.0.2"]),
            ]),
            &[],
        );
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst, "172.16.0.0/24".parse::<IpNet>().unwrap());
    }
}
