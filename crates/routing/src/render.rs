//! A stable text form of the plans, for golden files and logs: one fact per line, in the
//! plans' own (sorted) order, `ip route`-like for routes.

use crate::bgp::{BgpPlan, ExportAction, LogLevel, NextHopMode, PeerPlan};
use crate::kernel::KernelRoute;
use crate::vxlan::VxlanPlan;
use std::fmt::Write;

fn community(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

fn communities(std_c: &[u32], large: &[[u32; 3]]) -> String {
    std_c
        .iter()
        .map(|c| community(*c))
        .chain(large.iter().map(|[a, b, c]| format!("{a}:{b}:{c}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn peer_line(p: &PeerPlan) -> String {
    let mut s = format!(
        "peer {} kind={:?} address={} port={} remote_as={} local_as={}",
        p.name, p.kind, p.address, p.port, p.remote_as, p.local_as
    );
    match p.source_address {
        Some(a) => write!(s, " source={a}").ok(),
        None => write!(s, " source=none").ok(),
    };
    if p.passive {
        s.push_str(" passive");
    }
    if p.rr_client {
        s.push_str(" rr-client");
    }
    if let Some(pw) = &p.password {
        write!(s, " password={pw:?}").ok();
    }
    if let Some(k) = p.keepalive_time {
        write!(s, " keepalive={k}").ok();
    }
    if let Some(g) = p.graceful_restart_time {
        write!(s, " restart-time={g}").ok();
    }
    match p.next_hop {
        NextHopMode::Auto => {}
        NextHopMode::SelfAddr => s.push_str(" next-hop-self"),
        NextHopMode::Keep => s.push_str(" next-hop-keep"),
    }
    match p.ttl_security {
        Some(t) => write!(s, " ttl-security={t}").ok(),
        None => None,
    };
    if p.multihop {
        s.push_str(" multihop");
    }
    if let Some(n) = p.allow_local_as {
        write!(s, " allow-local-as={n}").ok();
    }
    if let Some(gw) = p.reachable_by {
        write!(s, " reachable-by={gw}").ok();
    }
    if !p.filters.is_empty() {
        write!(s, " filters={}", p.filters.join(",")).ok();
    }
    if let Some(r) = &p.resource {
        write!(s, " from={r}").ok();
    }
    s
}

/// The BGP plan as text.
pub fn render_bgp(plan: &BgpPlan) -> String {
    let mut out = String::new();
    let opt = |a: Option<std::net::IpAddr>| a.map_or("none".to_string(), |a| a.to_string());
    writeln!(out, "node {}", plan.node).ok();
    writeln!(out, "router-id {}", plan.router_id).ok();
    writeln!(
        out,
        "addresses ipv4={} ipv6={}",
        opt(plan.node_ipv4),
        opt(plan.node_ipv6)
    )
    .ok();
    writeln!(out, "local-as {}", plan.local_as).ok();
    let listen: Vec<String> = plan
        .listen_addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    writeln!(
        out,
        "listen addresses={} port={}",
        if listen.is_empty() {
            "all".to_string()
        } else {
            listen.join(",")
        },
        plan.listen_port
            .map_or("179".to_string(), |p| p.to_string())
    )
    .ok();
    let level = match plan.log_level {
        LogLevel::None => "none",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    writeln!(out, "log-level {level}").ok();
    if let Some(c) = plan.cluster_id {
        writeln!(out, "route-reflector cluster-id={c}").ok();
    }
    writeln!(out, "mesh {}", if plan.mesh_enabled { "on" } else { "off" }).ok();
    for p in &plan.peers {
        writeln!(out, "{}", peer_line(p)).ok();
    }
    for r in &plan.originated {
        write!(out, "originate {} source={:?}", r.prefix, r.source).ok();
        let c = communities(&r.communities, &r.large_communities);
        if !c.is_empty() {
            write!(out, " communities={c}").ok();
        }
        out.push('\n');
    }
    for b in &plan.blackholes {
        writeln!(out, "blackhole {b}").ok();
    }
    for r in &plan.peer_routes {
        writeln!(out, "peer-route {}", render_route(r)).ok();
    }
    for r in &plan.community_rules {
        writeln!(
            out,
            "community-rule {} {}",
            r.cidr,
            communities(&r.communities, &r.large_communities)
        )
        .ok();
    }
    for r in &plan.export.rules {
        writeln!(
            out,
            "export {} {} {} # {}",
            if r.action == ExportAction::Accept {
                "accept"
            } else {
                "reject"
            },
            if r.exact { "=" } else { "~" },
            r.prefix,
            r.why
        )
        .ok();
    }
    out.push_str("export reject # everything else\n");
    for r in &plan.kernel_reject {
        writeln!(out, "kernel-reject {r}").ok();
    }
    for w in &plan.warnings {
        writeln!(out, "warning {w}").ok();
    }
    out
}

/// One route, `ip route` style: `10.0.1.0/26 via 10.0.0.2 dev tunl0 onlink`.
pub fn render_route(r: &KernelRoute) -> String {
    let mut s = r.dst.to_string();
    for h in r.next_hops.iter() {
        write!(s, " via {h}").ok();
    }
    if let Some(d) = &r.device {
        write!(s, " dev {d}").ok();
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// The VXLAN plan as text.
pub fn render_vxlan(plan: &VxlanPlan) -> String {
    let mut out = format!("device {}\n", plan.device);
    match &plan.local {
        Some(l) => writeln!(
            out,
            "local-vtep {} mac={} parent={}",
            l.tunnel_addr, l.mac, l.parent_addr
        ),
        None => writeln!(out, "local-vtep none"),
    }
    .ok();
    for r in &plan.remotes {
        let blocks: Vec<String> = r.blocks.iter().map(|b| b.to_string()).collect();
        writeln!(
            out,
            "remote-vtep {} {} mac={} parent={} blocks={}",
            r.node,
            r.tunnel_addr,
            r.mac,
            r.parent_addr,
            if blocks.is_empty() {
                "none".to_string()
            } else {
                blocks.join(",")
            }
        )
        .ok();
        writeln!(out, "neigh {} lladdr {}", r.tunnel_addr, r.mac).ok();
        writeln!(out, "fdb {} dst {}", r.mac, r.parent_addr).ok();
    }
    for r in &plan.routes {
        writeln!(out, "route {}", render_route(r)).ok();
    }
    for b in &plan.blackholes {
        writeln!(out, "blackhole {b}").ok();
    }
    out
}
