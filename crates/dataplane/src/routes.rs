//! Routes the node agent distributes (learned by BGP, blackholes of local blocks, VXLAN
//! routes), each set marked by its own route protocol so one owner's routes are never
//! mistaken for another's, nor for the system's.
//!
//! [`RouteTable`] reads and writes them over rtnetlink on the namespace's [`Netlink`]
//! socket: single changes ([`RouteTable::replace`], [`RouteTable::delete`]), a read of one
//! protocol's routes ([`RouteTable::list`]), and convergence to a desired set
//! ([`RouteTable::apply`]: one dump, then only the differences, in one datagram per few
//! thousand routes; [`RouteTable::apply_reusing`] shares one dump between protocols) or a sweep of stale ones ([`RouteTable::sweep`]). What to send is
//! decided by the pure [`plan`], tested without root.
//!
//! Ownership is by protocol: a delete names the protocol, so the kernel only removes a
//! route of that protocol, and `apply` never overwrites a route another protocol owns (it
//! reports it as a conflict; new routes are created with `NLM_F_EXCL`). Mirrors Felix's
//! `routetable.RouteTable` (felix/routetable/) in spirit: a full resync by dump, then deltas.

use crate::error::DataplaneError;
use crate::netlink::{Netlink, failed};
use calico_netlink::NetlinkError;
use calico_netlink::packet::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// Routes learned from BGP peers.
pub const PROTO_BGP: u8 = 78;
/// Blackhole routes of this node's affine blocks.
pub const PROTO_BLACKHOLE: u8 = 79;
/// Routes to remote blocks over `vxlan.calico` (Felix's number).
pub const PROTO_VXLAN: u8 = 80;
/// Workload routes (the `calico` plugin's), named here so the numbers are in one place.
pub const PROTO_WORKLOAD: u8 = crate::netlink::ROUTE_PROTOCOL;
/// The main table (`RT_TABLE_MAIN`).
pub const TABLE_MAIN: u32 = 254;

/// The metric the kernel gives a route added without one: 0 for IPv4, 1024 for IPv6.
pub fn default_metric(v4: bool) -> u32 {
    if v4 { 0 } else { 1024 }
}

/// Routes sent per datagram by [`RouteTable::apply`]: bounds the socket buffers the
/// answers may need (only refusals and the last message are answered, about 2 KiB each).
const CHUNK: usize = 4096;

/// One next hop of a unicast route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    pub gateway: IpAddr,
    /// The outgoing interface; `None` lets the kernel choose (and is not compared by
    /// `apply`, which sees the kernel's choice).
    pub oif: Option<u32>,
    /// `onlink`: the gateway is taken as directly reachable on `oif` (tunnel devices).
    pub onlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Via these next hops; more than one is an ECMP route (`RTA_MULTIPATH`). Read back, an
    /// empty list is a route without a gateway (`dev X` only), which this module never
    /// writes but may have to remove.
    Unicast(Vec<NextHop>),
    Blackhole,
}

/// A route as this module writes and reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub kind: RouteKind,
    pub protocol: u8,
    /// Routing table ([`TABLE_MAIN`] normally).
    pub table: u32,
    /// `None`: the kernel's default ([`default_metric`]); read back as `None` too.
    pub metric: Option<u32>,
}

impl RouteSpec {
    /// `dst via gateway` in the main table (as BIRD installs a no-encap pool's block).
    pub fn via(dst: IpNet, gateway: IpAddr, protocol: u8) -> Self {
        RouteSpec {
            dst,
            kind: RouteKind::Unicast(vec![NextHop {
                gateway,
                oif: None,
                onlink: false,
            }]),
            protocol,
            table: TABLE_MAIN,
            metric: None,
        }
    }

    /// `dst via gateway dev oif onlink` in the main table: a block behind a tunnel
    /// (`vxlan.calico` with [`PROTO_VXLAN`], `tunl0` with [`PROTO_BGP`]).
    pub fn onlink(dst: IpNet, gateway: IpAddr, oif: u32, protocol: u8) -> Self {
        RouteSpec {
            dst,
            kind: RouteKind::Unicast(vec![NextHop {
                gateway,
                oif: Some(oif),
                onlink: true,
            }]),
            protocol,
            table: TABLE_MAIN,
            metric: None,
        }
    }

    /// `blackhole dst proto 79` in the main table: a local block.
    pub fn blackhole(dst: IpNet) -> Self {
        RouteSpec {
            dst,
            kind: RouteKind::Blackhole,
            protocol: PROTO_BLACKHOLE,
            table: TABLE_MAIN,
            metric: None,
        }
    }

    /// What the kernel tells routes apart by (table, destination, metric): a replace
    /// overwrites the route with the same key, whoever owns it.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            table: self.table,
            dst: self.dst.trunc(),
            metric: self
                .metric
                .unwrap_or_else(|| default_metric(self.dst.addr().is_ipv4())),
        }
    }

    /// Whether `current` (as read back) is this route: same kind and next hops (as sets;
    /// an `oif` left to the kernel matches any), same protocol.
    pub fn satisfied_by(&self, current: &RouteSpec) -> bool {
        if self.protocol != current.protocol || self.key() != current.key() {
            return false;
        }
        match (&self.kind, &current.kind) {
            (RouteKind::Blackhole, RouteKind::Blackhole) => true,
            (RouteKind::Unicast(want), RouteKind::Unicast(have)) => {
                want.len() == have.len()
                    && want.iter().all(|w| {
                        have.iter().any(|h| {
                            h.gateway == w.gateway
                                && h.onlink == w.onlink
                                && w.oif.is_none_or(|o| h.oif == Some(o))
                        })
                    })
            }
            _ => false,
        }
    }
}

/// See [`RouteSpec::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub table: u32,
    pub dst: IpNet,
    pub metric: u32,
}

/// What converging to a desired set takes ([`plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ours but different: sent with `NLM_F_REPLACE`.
    pub replace: Vec<RouteSpec>,
    /// Missing, the key free as far as `current` knows: sent with `NLM_F_CREATE |
    /// NLM_F_EXCL`, so a route another program added since `current` was read is refused
    /// (`EEXIST`), never overwritten.
    pub add: Vec<RouteSpec>,
    /// Ours and no longer wanted.
    pub delete: Vec<RouteSpec>,
    /// Already as wanted.
    pub unchanged: usize,
    /// Wanted, but the key is held by a route of another protocol: left alone.
    pub conflicts: Vec<(RouteSpec, u8)>,
}

/// The changes that turn `current` (every route of every protocol, as dumped) into one where
/// the routes of `protocol` are exactly `desired` (whose protocol fields are taken to be
/// `protocol`). A later duplicate key in `desired` wins.
pub fn plan(desired: &[RouteSpec], current: &[RouteSpec], protocol: u8) -> Plan {
    let mut wanted: HashMap<RouteKey, RouteSpec> = HashMap::with_capacity(desired.len());
    for d in desired {
        let mut d = d.clone();
        d.protocol = protocol;
        d.dst = d.dst.trunc();
        wanted.insert(d.key(), d);
    }
    let mut ours: HashMap<RouteKey, &RouteSpec> = HashMap::new();
    let mut others: HashMap<RouteKey, u8> = HashMap::new();
    let mut out = Plan::default();
    for c in current {
        if c.protocol == protocol {
            if wanted.contains_key(&c.key()) {
                ours.insert(c.key(), c);
            } else {
                out.delete.push(c.clone());
            }
        } else {
            others.insert(c.key(), c.protocol);
        }
    }
    let mut wanted: Vec<(RouteKey, RouteSpec)> = wanted.into_iter().collect();
    wanted.sort_by_key(|(k, _)| *k);
    for (key, w) in wanted {
        match (ours.get(&key), others.get(&key)) {
            (Some(have), _) if w.satisfied_by(have) => out.unchanged += 1,
            (Some(_), _) => out.replace.push(w),
            (None, None) => out.add.push(w),
            (None, Some(owner)) => out.conflicts.push((w, *owner)),
        }
    }
    out
}

/// `current` once `p` (planned on it for `protocol`) has been carried out in full.
fn after(current: Vec<RouteSpec>, p: &Plan, protocol: u8) -> Vec<RouteSpec> {
    let changed: HashSet<RouteKey> = p
        .delete
        .iter()
        .chain(&p.replace)
        .chain(&p.add)
        .map(RouteSpec::key)
        .collect();
    let mut out: Vec<RouteSpec> = current
        .into_iter()
        .filter(|c| c.protocol != protocol || !changed.contains(&c.key()))
        .collect();
    out.extend(p.replace.iter().chain(&p.add).cloned());
    out
}

/// One change the kernel refused (or that could not be made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    pub dst: IpNet,
    /// "replace", "delete", or "conflict" (held by another protocol).
    pub action: &'static str,
    pub reason: String,
}

impl std::fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.action, self.dst, self.reason)
    }
}

/// What [`RouteTable::apply`] or [`RouteTable::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Routes added or changed (accepted by the kernel).
    pub replaced: usize,
    /// Routes removed (accepted by the kernel, or already gone).
    pub deleted: usize,
    pub unchanged: usize,
    /// Messages sent to the kernel, retries included: only the differences.
    pub messages: usize,
    /// Whether a failure made it dump again and retry once.
    pub retried: bool,
    /// Every change that did not happen, after the retry.
    pub failures: Vec<RouteFailure>,
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The header and key attributes every message about `r` carries.
fn keyed_message(r: &RouteSpec) -> RouteMessage {
    let v4 = r.dst.addr().is_ipv4();
    let mut m = RouteMessage::default();
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = r.dst.prefix_len();
    // Tables above 255 only fit the attribute; the header then says RT_TABLE_COMPAT.
    m.header.table = u8::try_from(r.table).unwrap_or(252);
    m.header.protocol = RouteProtocol::from(r.protocol);
    m.attributes.push(RouteAttribute::Destination(route_address(
        r.dst.trunc().addr(),
    )));
    m.attributes.push(RouteAttribute::Table(r.table));
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

/// The `RTM_NEWROUTE` for `r` (sent with `NLM_F_REPLACE | NLM_F_CREATE`).
pub fn new_route_message(r: &RouteSpec) -> RouteMessage {
    let mut m = keyed_message(r);
    m.header.scope = RouteScope::Universe;
    match &r.kind {
        RouteKind::Blackhole => m.header.kind = RouteType::BlackHole,
        RouteKind::Unicast(hops) => {
            m.header.kind = RouteType::Unicast;
            if let [hop] = hops.as_slice() {
                m.attributes
                    .push(RouteAttribute::Gateway(route_address(hop.gateway)));
                if let Some(oif) = hop.oif {
                    m.attributes.push(RouteAttribute::Oif(oif));
                }
                if hop.onlink {
                    m.header.flags |= RouteFlags::Onlink;
                }
            } else {
                let hops = hops
                    .iter()
                    .map(|h| {
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = h.oif.unwrap_or(0);
                        if h.onlink {
                            nh.flags |= RouteNextHopFlags::Onlink;
                        }
                        nh.attributes
                            .push(RouteAttribute::Gateway(route_address(h.gateway)));
                        nh
                    })
                    .collect();
                m.attributes.push(RouteAttribute::MultiPath(hops));
            }
        }
    }
    m
}

/// The `RTM_DELROUTE` for `r`: destination, table, protocol and metric only, so the kernel
/// removes a route of that protocol and key (all its next hops), never another owner's.
pub fn delete_route_message(r: &RouteSpec) -> RouteMessage {
    let mut m = keyed_message(r);
    // As `ip route del`: any scope, any type.
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = RouteType::Unspec;
    m
}

/// A dumped route as a [`RouteSpec`]; `None` for what is not a unicast or blackhole route
/// of a known family (local, broadcast, multicast, cached clones).
pub fn parse_route(m: &RouteMessage) -> Option<RouteSpec> {
    let v4 = match m.header.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return None,
    };
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut dst = None;
    let mut table = u32::from(m.header.table);
    let mut metric = None;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            _ => {}
        }
    }
    let dst_ip = dst.unwrap_or(if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let kind = match m.header.kind {
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unicast => {
            let mut hops: Vec<NextHop> = match multipath {
                Some(hops) => hops
                    .iter()
                    .filter_map(|h| {
                        let gateway = h.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => ip_of(g),
                            _ => None,
                        })?;
                        Some(NextHop {
                            gateway,
                            oif: (h.interface_index != 0).then_some(h.interface_index),
                            onlink: h.flags.contains(RouteNextHopFlags::Onlink),
                        })
                    })
                    .collect(),
                None => gateway
                    .map(|gateway| NextHop {
                        gateway,
                        oif,
                        onlink: m.header.flags.contains(RouteFlags::Onlink),
                    })
                    .into_iter()
                    .collect(),
            };
            hops.sort();
            RouteKind::Unicast(hops)
        }
        _ => return None,
    };
    Some(RouteSpec {
        dst: IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?,
        kind,
        protocol: u8::from(m.header.protocol),
        table,
        metric: metric.filter(|p| *p != default_metric(v4)),
    })
}

/// The routes of one network namespace that the agent owns, by protocol.
pub struct RouteTable {
    nl: Netlink,
}

impl RouteTable {
    pub fn new(nl: Netlink) -> Self {
        RouteTable { nl }
    }

    /// On a socket in the calling thread's namespace.
    pub fn host() -> Result<Self, DataplaneError> {
        Netlink::host().map(Self::new)
    }

    /// On a socket in namespace `ns` (opened from `path`).
    pub fn in_netns(ns: &File, path: &Path) -> Result<Self, DataplaneError> {
        Netlink::in_netns(ns, path).map(Self::new)
    }

    /// The socket, for the namespace's other changes (VXLAN device, neighbours).
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Adds `r`, or overwrites the route with its key ([`RouteSpec::key`]), as `ip route
    /// replace` does: whoever owns that key. [`RouteTable::apply`] checks ownership first.
    pub fn replace(&self, r: &RouteSpec) -> Result<(), DataplaneError> {
        let msg = RouteNetlinkMessage::NewRoute(new_route_message(r));
        let op = format!("replace route {}", r.dst);
        self.nl
            .socket()
            .request(
                &op,
                msg,
                calico_netlink::packet::NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
            )
            .map(|_| ())
            .map_err(|e| failed(op, e))
    }

    /// Removes the route of `r`'s protocol, table, destination (and metric, if given);
    /// one already gone, or held by another protocol, is left as it is and is no error.
    pub fn delete(&self, r: &RouteSpec) -> Result<(), DataplaneError> {
        let msg = RouteNetlinkMessage::DelRoute(delete_route_message(r));
        let op = format!("delete route {}", r.dst);
        match self
            .nl
            .socket()
            .request(&op, msg, calico_netlink::packet::NLM_F_ACK)
        {
            Ok(_) => Ok(()),
            Err(e) if e.is(&[Errno::ESRCH, Errno::ENOENT]) => Ok(()),
            Err(e) => Err(failed(op, e)),
        }
    }

    /// Every unicast and blackhole route of both families, every table.
    pub fn dump_all(&self) -> Result<Vec<RouteSpec>, DataplaneError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            m.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let replies = self
                .nl
                .socket()
                .request("dump routes", RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)
                .map_err(|e| failed("dump routes", e))?;
            out.extend(replies.iter().filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => parse_route(m),
                _ => None,
            }));
        }
        Ok(out)
    }

    /// The routes of `protocol`, every table, both families (ECMP routes as one
    /// [`RouteKind::Unicast`] with their next hops sorted).
    pub fn list(&self, protocol: u8) -> Result<Vec<RouteSpec>, DataplaneError> {
        let mut all = self.dump_all()?;
        all.retain(|r| r.protocol == protocol);
        Ok(all)
    }

    /// Makes the routes of `protocol` (in every table) exactly `desired`: one dump, then
    /// only the differences, a few thousand per datagram. A route another protocol holds
    /// is left alone and reported. After a failure (a refused change, or `ENOBUFS` when
    /// acknowledgements were lost) it dumps again and retries what is still different,
    /// once; what still fails is in [`ApplyStats::failures`]. An error is returned only
    /// when the kernel cannot be asked at all (the dump fails).
    pub fn apply(&self, desired: &[RouteSpec], protocol: u8) -> Result<ApplyStats, DataplaneError> {
        self.apply_reusing(desired, protocol, &mut None)
    }

    /// [`RouteTable::apply`] for one of several protocols converged one after the other:
    /// `dump` is the table as a previous call left it (`None`: dumped here). After a clean
    /// pass it holds the table with this pass's changes, so the next protocol's pass needs
    /// no dump of its own (tens of thousands of routes each); after any failure it is
    /// cleared, and the next pass reads the kernel again. The record may be older than the
    /// table (the agent keeps it between convergences that follow each other closely): new
    /// routes go in with `NLM_F_EXCL`, so a route another program added meanwhile is
    /// refused and, after the retry's fresh dump, reported as a conflict, never overwritten;
    /// a route of ours removed behind the record's back comes back at the next dump.
    pub fn apply_reusing(
        &self,
        desired: &[RouteSpec],
        protocol: u8,
        dump: &mut Option<Vec<RouteSpec>>,
    ) -> Result<ApplyStats, DataplaneError> {
        let mut stats = ApplyStats::default();
        for attempt in 0..2 {
            let current = match dump.take() {
                Some(d) if attempt == 0 => d,
                _ => self.dump_all()?,
            };
            let p = plan(desired, &current, protocol);
            if attempt == 0 {
                stats.unchanged = p.unchanged;
            }
            let mut failures: Vec<RouteFailure> = p
                .conflicts
                .iter()
                .map(|(r, owner)| RouteFailure {
                    dst: r.dst,
                    action: "conflict",
                    reason: format!("the route is held by protocol {owner}"),
                })
                .collect();
            let sent = self.send(&p.delete, &p.replace, &p.add, &mut stats, &mut failures);
            // Conflicts stay conflicts; anything else may be a race with another writer or
            // lost acknowledgements, which a fresh dump settles.
            let worth_retrying = sent.is_err() || failures.len() > p.conflicts.len();
            if let Err(e) = sent {
                failures.push(RouteFailure {
                    dst: IpNet::default(),
                    action: "batch",
                    reason: e.to_string(),
                });
            }
            stats.failures = failures;
            if !worth_retrying {
                *dump = Some(after(current, &p, protocol));
            }
            if !worth_retrying || attempt == 1 {
                break;
            }
            stats.retried = true;
        }
        Ok(stats)
    }

    /// Sends `delete`, `replace` then `add` in chunks; counts what the kernel accepted and
    /// adds what it refused to `failures`. `Err` when the socket failed (the rest unsent or
    /// unconfirmed).
    fn send(
        &self,
        delete: &[RouteSpec],
        replace: &[RouteSpec],
        add: &[RouteSpec],
        stats: &mut ApplyStats,
        failures: &mut Vec<RouteFailure>,
    ) -> Result<(), NetlinkError> {
        // The flags of a new route: overwrite ours, or create where the key is free.
        const REPLACE: Option<u16> = Some(NLM_F_REPLACE | NLM_F_CREATE);
        const ADD: Option<u16> = Some(NLM_F_CREATE | NLM_F_EXCL);
        let work: Vec<(&RouteSpec, Option<u16>)> = delete
            .iter()
            .map(|r| (r, None))
            .chain(replace.iter().map(|r| (r, REPLACE)))
            .chain(add.iter().map(|r| (r, ADD)))
            .collect();
        for chunk in work.chunks(CHUNK) {
            let msgs = chunk
                .iter()
                .map(|(r, new)| match new {
                    None => (RouteNetlinkMessage::DelRoute(delete_route_message(r)), 0),
                    Some(flags) => (RouteNetlinkMessage::NewRoute(new_route_message(r)), *flags),
                })
                .collect();
            stats.messages += chunk.len();
            let errnos = self.nl.socket().requests("route changes", msgs)?;
            for ((r, new), errno) in chunk.iter().zip(errnos) {
                let del = &new.is_none();
                let gone = *del && (errno == Errno::ESRCH as i32 || errno == Errno::ENOENT as i32);
                match (errno == 0 || gone, del) {
                    (true, true) => stats.deleted += 1,
                    (true, false) => stats.replaced += 1,
                    (false, _) => failures.push(RouteFailure {
                        dst: r.dst,
                        action: if *del { "delete" } else { "replace" },
                        reason: std::io::Error::from_raw_os_error(errno).to_string(),
                    }),
                }
            }
        }
        Ok(())
    }

    /// Removes every route of `protocol` whose destination is not in `keep` (a start-up
    /// sweep of what a previous run left, after graceful restart).
    pub fn sweep(&self, protocol: u8, keep: &HashSet<IpNet>) -> Result<ApplyStats, DataplaneError> {
        let stale: Vec<RouteSpec> = self
            .list(protocol)?
            .into_iter()
            .filter(|r| !keep.contains(&r.dst.trunc()))
            .collect();
        let mut stats = ApplyStats::default();
        let mut failures = Vec::new();
        if let Err(e) = self.send(&stale, &[], &[], &mut stats, &mut failures) {
            failures.push(RouteFailure {
                dst: IpNet::default(),
                action: "batch",
                reason: e.to_string(),
            });
        }
        stats.failures = failures;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn via(dst: &str, gws: &[&str]) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            kind: RouteKind::Unicast(
                gws.iter()
                    .map(|g| NextHop {
                        gateway: g.parse().unwrap(),
                        oif: None,
                        onlink: false,
                    })
                    .collect(),
            ),
            protocol: PROTO_BGP,
            table: TABLE_MAIN,
            metric: None,
        }
    }

    /// The agent runs the table on a thread of its own.
    #[test]
    fn the_table_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<RouteTable>();
    }

    #[test]
    fn plan_sends_only_the_differences() {
        let current = vec![
            via("10.1.0.0/26", &["192.168.0.2"]),
            via("10.1.0.64/26", &["192.168.0.3"]),
            via("10.1.0.128/26", &["192.168.0.4"]),
        ];
        let desired = vec![
            via("10.1.0.0/26", &["192.168.0.2"]),
            via("10.1.0.64/26", &["192.168.0.9"]),
            via("10.1.1.0/26", &["192.168.0.5"]),
        ];
        let p = plan(&desired, &current, PROTO_BGP);
        assert_eq!(p.unchanged, 1);
        let replaced: Vec<String> = p.replace.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(replaced, ["10.1.0.64/26"]);
        let added: Vec<String> = p.add.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(added, ["10.1.1.0/26"]);
        let deleted: Vec<String> = p.delete.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(deleted, ["10.1.0.128/26"]);
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn the_table_after_a_clean_pass_is_planned_as_unchanged() {
        let current = vec![
            via("10.65.0.0/26", &["10.0.0.2"]),
            via("10.65.1.0/26", &["10.0.0.2"]),
            RouteSpec::blackhole(net("10.65.9.0/26")),
        ];
        let mut current: Vec<RouteSpec> = current
            .into_iter()
            .map(|mut r| {
                r.protocol = if r.kind == RouteKind::Blackhole {
                    79
                } else {
                    78
                };
                r
            })
            .collect();
        current.push(RouteSpec {
            protocol: 2,
            ..via("10.65.2.0/26", &["10.0.0.9"])
        });
        let desired = vec![
            via("10.65.1.0/26", &["10.0.0.3"]),
            via("10.65.2.0/26", &["10.0.0.3"]),
            via("10.65.3.0/26", &["10.0.0.4"]),
        ];
        let p = plan(&desired, &current, 78);
        let next = after(current, &p, 78);
        let again = plan(&desired, &next, 78);
        assert!(again.replace.is_empty() && again.add.is_empty() && again.delete.is_empty());
        assert_eq!(again.unchanged, 2);
        assert_eq!(
            again.conflicts.len(),
            1,
            "another protocol's route stays its"
        );
        assert!(
            next.iter().any(|r| r.protocol == 79),
            "other protocols are kept"
        );
    }

    #[test]
    fn plan_never_touches_another_protocols_route() {
        let mut theirs = via("10.1.0.0/26", &["192.168.0.2"]);
        theirs.protocol = 12;
        let mut other_dst = via("10.9.0.0/26", &["192.168.0.2"]);
        other_dst.protocol = 77;
        let p = plan(
            &[via("10.1.0.0/26", &["192.168.0.7"])],
            &[theirs, other_dst],
            PROTO_BGP,
        );
        assert!(p.replace.is_empty() && p.add.is_empty() && p.delete.is_empty());
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].1, 12);
    }

    #[test]
    fn ecmp_next_hops_compare_as_sets_and_oif_left_to_the_kernel_matches() {
        let want = via("10.1.0.0/26", &["192.168.0.2", "192.168.0.3"]);
        let mut have = via("10.1.0.0/26", &["192.168.0.3", "192.168.0.2"]);
        if let RouteKind::Unicast(h) = &mut have.kind {
            for hop in h {
                hop.oif = Some(2);
            }
        }
        assert!(want.satisfied_by(&have));
        assert!(!want.satisfied_by(&via("10.1.0.0/26", &["192.168.0.2"])));
        let mut onlink = want.clone();
        if let RouteKind::Unicast(h) = &mut onlink.kind {
            h[0].onlink = true;
        }
        assert!(!onlink.satisfied_by(&have));
    }

    #[test]
    fn the_default_metric_is_the_kernels() {
        let mut v6 = via("fd00:1::/122", &["fd00::2"]);
        let mut read_back = v6.clone();
        read_back.metric = None;
        v6.metric = Some(1024);
        assert!(v6.satisfied_by(&read_back));
        let p = plan(&[v6], &[read_back], PROTO_BGP);
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn blackhole_and_unicast_differ_and_host_bits_are_ignored() {
        let mut bh = via("10.1.0.0/26", &[]);
        bh.kind = RouteKind::Blackhole;
        let uni = via("10.1.0.0/26", &["192.168.0.2"]);
        assert!(!bh.satisfied_by(&uni));
        let sloppy = via("10.1.0.5/26", &["192.168.0.2"]);
        assert_eq!(sloppy.key(), uni.key());
    }

    #[test]
    fn messages_round_trip() {
        let mut specs = vec![
            via("10.1.0.0/26", &["192.168.0.2"]),
            via("10.1.0.64/26", &["192.168.0.2", "192.168.0.3"]),
            via("fd00:1::/122", &["fd00::2", "fd00::3"]),
        ];
        let mut bh = via("10.2.0.0/26", &[]);
        bh.kind = RouteKind::Blackhole;
        bh.protocol = PROTO_BLACKHOLE;
        specs.push(bh);
        let mut onlink = via("10.3.0.0/26", &["10.0.0.1"]);
        if let RouteKind::Unicast(h) = &mut onlink.kind {
            h[0].onlink = true;
            h[0].oif = Some(7);
        }
        onlink.metric = Some(5);
        onlink.table = 1000;
        specs.push(onlink);
        for s in specs {
            let back = parse_route(&new_route_message(&s)).unwrap();
            assert_eq!(back, s);
        }
    }
}
