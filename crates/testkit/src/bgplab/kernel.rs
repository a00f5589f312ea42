//! The kernel routes of a namespace, from `ip -j route` (main table, IPv4).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde_json::Value;

use super::wait_for;
use crate::process::run_checked;

/// One route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination (`default` is 0.0.0.0/0, a bare address a /32).
    pub dst: Ipv4Net,
    /// `unicast`, `blackhole`, `local`, ...
    pub kind: String,
    /// Next-hop gateways (several for ECMP, none for a device or blackhole route).
    pub gateways: Vec<Ipv4Addr>,
    /// Output devices, one per next hop.
    pub devices: Vec<String>,
    /// The protocol as `ip` names it: `bird`, `bgp`, `kernel`, or a number such as `78`.
    pub protocol: String,
}

/// The IPv4 routes of the main table of namespace `netns` (by name).
pub fn kernel_routes(netns: &str) -> Result<Vec<KernelRoute>> {
    let out = run_checked(Command::new("ip").args(["-n", netns, "-4", "-j", "route", "show"]))?;
    parse_ip_route_json(&out)
}

/// The IPv4 routes of the main table of `netns` inside `within` (`ip route show root`).
pub fn kernel_routes_within(netns: &str, within: Ipv4Net) -> Result<Vec<KernelRoute>> {
    let out = run_checked(Command::new("ip").args([
        "-n",
        netns,
        "-4",
        "-j",
        "route",
        "show",
        "root",
        &within.to_string(),
    ]))?;
    parse_ip_route_json(&out)
}

/// Waits (up to `timeout`) until the main table of `netns` has exactly `count` routes with a
/// gateway inside `within` (learned routes; blackholes and device routes do not count).
pub fn wait_kernel_gateway_routes(
    netns: &str,
    within: Ipv4Net,
    count: usize,
    timeout: Duration,
) -> Result<()> {
    wait_for(
        timeout,
        &format!("{count} routes via a gateway inside {within} in the kernel of {netns}"),
        || {
            let n = kernel_routes_within(netns, within)?
                .iter()
                .filter(|r| !r.gateways.is_empty())
                .count();
            Ok((n == count, format!("{n} routes")))
        },
    )
}

/// Waits (up to `timeout`) until the main table of `netns` routes every prefix of `want`
/// via its next hop (among the route's gateways).
pub fn wait_kernel_routes(
    netns: &str,
    want: &[(Ipv4Net, Ipv4Addr)],
    timeout: Duration,
) -> Result<()> {
    wait_for(
        timeout,
        &format!("routes {want:?} in the kernel of {netns}"),
        || {
            let routes = kernel_routes(netns)?;
            let ok = want.iter().all(|(p, nh)| {
                routes
                    .iter()
                    .any(|r| r.dst == *p && r.gateways.contains(nh))
            });
            Ok((ok, format!("{routes:?}")))
        },
    )
}

/// Waits (up to `timeout`) until the main table of `netns` has no route to any of `gone`.
pub fn wait_kernel_lacks(netns: &str, gone: &[Ipv4Net], timeout: Duration) -> Result<()> {
    wait_for(
        timeout,
        &format!("no routes to {gone:?} in the kernel of {netns}"),
        || {
            let routes = kernel_routes(netns)?;
            let ok = !routes.iter().any(|r| gone.contains(&r.dst));
            Ok((ok, format!("{routes:?}")))
        },
    )
}

/// Parses `ip -j route show` output.
pub fn parse_ip_route_json(text: &str) -> Result<Vec<KernelRoute>> {
    let routes: Vec<Value> = serde_json::from_str(text).context("parsing ip -j route")?;
    routes.iter().map(route_from_json).collect()
}

fn route_from_json(r: &Value) -> Result<KernelRoute> {
    let dst = r["dst"].as_str().context("route without dst")?;
    let dst: Ipv4Net = match dst {
        "default" => Ipv4Net::default(),
        d if d.contains('/') => d.parse().with_context(|| format!("dst {d:?}"))?,
        d => Ipv4Net::from(
            d.parse::<Ipv4Addr>()
                .with_context(|| format!("dst {d:?}"))?,
        ),
    };
    let mut gateways = Vec::new();
    let mut devices = Vec::new();
    let mut hop = |h: &Value| {
        if let Some(gw) = h["gateway"].as_str().and_then(|g| g.parse().ok()) {
            gateways.push(gw);
        }
        if let Some(dev) = h["dev"].as_str() {
            devices.push(dev.to_string());
        }
    };
    match r["nexthops"].as_array() {
        Some(hops) => hops.iter().for_each(&mut hop),
        None => hop(r),
    }
    let protocol = match &r["protocol"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "boot".to_string(),
    };
    Ok(KernelRoute {
        dst,
        kind: r["type"].as_str().unwrap_or("unicast").to_string(),
        gateways,
        devices,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_ecmp_blackhole_and_default_routes() {
        let text = r#"[
          {"dst":"default","gateway":"198.18.0.254","dev":"eth0","flags":[]},
          {"dst":"198.19.2.0/26","nhid":10,"gateway":"198.18.0.2","dev":"eth0","protocol":"bgp","metric":20,"flags":[]},
          {"dst":"198.19.3.0/26","protocol":"bird","metric":32,"flags":[],
           "nexthops":[{"gateway":"198.18.0.3","dev":"eth0","weight":1,"flags":[]},
                       {"gateway":"198.18.0.4","dev":"eth0","weight":1,"flags":[]}]},
          {"type":"blackhole","dst":"198.19.1.0/26","protocol":"79","flags":[]},
          {"dst":"198.18.0.7","dev":"eth0","protocol":"kernel","scope":"link","flags":[]}
        ]"#;
        let r = parse_ip_route_json(text).unwrap();
        assert_eq!(r[0].dst, Ipv4Net::default());
        assert_eq!(r[0].protocol, "boot");
        assert_eq!(r[1].gateways, vec![Ipv4Addr::new(198, 18, 0, 2)]);
        assert_eq!(r[1].protocol, "bgp");
        assert_eq!(r[2].gateways.len(), 2);
        assert_eq!(r[2].devices, vec!["eth0", "eth0"]);
        assert_eq!(r[3].kind, "blackhole");
        assert_eq!(r[3].protocol, "79");
        assert_eq!(r[4].dst.to_string(), "198.18.0.7/32");
    }
}
