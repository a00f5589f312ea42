//! Permanent neighbour entries (ARP for IPv4, NDP for IPv6) and a VXLAN device's
//! forwarding database (FDB), as Felix's VXLAN manager programs them for each remote VTEP
//! (felix/vxlanfdb/vxlan_fdb.go `VXLANFDB.Apply` and `resync`): `ip neigh replace <vtep ip> lladdr <vtep mac> dev
//! vxlan.calico nud permanent` and `bridge fdb replace <vtep mac> dev vxlan.calico dst
//! <node ip> self permanent`.
//!
//! Each has replace, delete, list, and an apply that converges a device to a desired set
//! (adds what is missing, removes permanent entries not wanted); what to change is decided
//! by the pure [`diff`], tested without root. As in Felix's resync, only permanent entries
//! count as ours: entries the kernel made itself (learned, multicast) are never removed.

use crate::error::DataplaneError;
use crate::netlink::{Netlink, failed};
use calico_netlink::packet::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

/// A neighbour entry as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbor {
    pub ip: IpAddr,
    pub mac: Mac,
    /// `nud permanent`: made by a program (us), not learned.
    pub permanent: bool,
}

/// An FDB entry of a VXLAN device: frames to `mac` go in UDP to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: IpAddr,
    pub permanent: bool,
}

/// What converging took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeighApplyStats {
    pub added: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// The entries to add and to remove so that `current` becomes `desired` (both as sets of
/// comparable entries): `(add, remove)`, each sorted.
pub fn diff<T: Ord + Clone>(desired: &[T], current: &[T]) -> (Vec<T>, Vec<T>) {
    let want: BTreeSet<&T> = desired.iter().collect();
    let have: BTreeSet<&T> = current.iter().collect();
    let add = want.difference(&have).map(|t| (*t).clone()).collect();
    let remove = have.difference(&want).map(|t| (*t).clone()).collect();
    (add, remove)
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// An address read back: typed for IP families, raw bytes for the bridge family.
fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        },
        _ => None,
    }
}

fn mac_of(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => Mac::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

fn dst_of(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => ip_of(d),
        _ => None,
    })
}

fn neighbor_message(ifindex: u32, ip: IpAddr, mac: Option<Mac>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(ip)));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn fdb_message(ifindex: u32, mac: Mac, dst: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    // `self`: the device's own FDB (the VXLAN driver's), not a bridge master's.
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(neighbour_address(dst)));
    m
}

fn change(
    nl: &Netlink,
    op: &str,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), DataplaneError> {
    nl.socket()
        .request(op, msg, NLM_F_ACK | flags)
        .map(|_| ())
        .map_err(|e| failed(op, e))
}

fn remove(nl: &Netlink, op: &str, msg: RouteNetlinkMessage) -> Result<(), DataplaneError> {
    match nl.socket().request(op, msg, NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e) if e.is(&[Errno::ENOENT, Errno::ESRCH, Errno::ENODEV]) => Ok(()),
        Err(e) => Err(failed(op, e)),
    }
}

fn dump(
    nl: &Netlink,
    family: AddressFamily,
    ifindex: u32,
) -> Result<Vec<NeighbourMessage>, DataplaneError> {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    let replies = nl
        .socket()
        .request(
            "dump neighbours",
            RouteNetlinkMessage::GetNeighbour(m),
            NLM_F_DUMP,
        )
        .map_err(|e| failed("dump neighbours", e))?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(m) if m.header.ifindex == ifindex => Some(m),
            _ => None,
        })
        .collect())
}

/// `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
pub fn replace_neighbor(
    nl: &Netlink,
    ifindex: u32,
    ip: IpAddr,
    mac: Mac,
) -> Result<(), DataplaneError> {
    let msg = RouteNetlinkMessage::NewNeighbour(neighbor_message(ifindex, ip, Some(mac)));
    change(
        nl,
        &format!("replace neighbour {ip}"),
        msg,
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Removes the entry for `ip` on the device; one already gone is fine.
pub fn delete_neighbor(nl: &Netlink, ifindex: u32, ip: IpAddr) -> Result<(), DataplaneError> {
    let msg = RouteNetlinkMessage::DelNeighbour(neighbor_message(ifindex, ip, None));
    remove(nl, &format!("delete neighbour {ip}"), msg)
}

/// The device's neighbour entries with a link-layer address, IPv4 and IPv6.
pub fn list_neighbors(nl: &Netlink, ifindex: u32) -> Result<Vec<Neighbor>, DataplaneError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for m in dump(nl, family, ifindex)? {
            if let (Some(ip), Some(mac)) = (dst_of(&m), mac_of(&m)) {
                out.push(Neighbor {
                    ip,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the device's permanent neighbour entries exactly `desired` (ip → mac).
pub fn apply_neighbors(
    nl: &Netlink,
    ifindex: u32,
    desired: &[(IpAddr, Mac)],
) -> Result<NeighApplyStats, DataplaneError> {
    let current: Vec<(IpAddr, Mac)> = list_neighbors(nl, ifindex)?
        .into_iter()
        .filter(|n| n.permanent)
        .map(|n| (n.ip, n.mac))
        .collect();
    let (add, extra) = diff(desired, &current);
    // An entry whose IP stays wanted is overwritten by the replace, not removed.
    let wanted_ips: BTreeSet<IpAddr> = desired.iter().map(|(ip, _)| *ip).collect();
    let mut stats = NeighApplyStats {
        unchanged: current.len() - extra.len(),
        ..Default::default()
    };
    for (ip, _) in extra.iter().filter(|(ip, _)| !wanted_ips.contains(ip)) {
        delete_neighbor(nl, ifindex, *ip)?;
        stats.removed += 1;
    }
    for (ip, mac) in &add {
        replace_neighbor(nl, ifindex, *ip, *mac)?;
        stats.added += 1;
    }
    Ok(stats)
}

/// `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`.
pub fn replace_fdb(
    nl: &Netlink,
    ifindex: u32,
    mac: Mac,
    dst: IpAddr,
) -> Result<(), DataplaneError> {
    let msg = RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, mac, dst));
    change(
        nl,
        &format!("replace fdb entry to {dst}"),
        msg,
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// `bridge fdb del <mac> dev <ifindex> dst <dst> self`; one already gone is fine.
pub fn delete_fdb(nl: &Netlink, ifindex: u32, mac: Mac, dst: IpAddr) -> Result<(), DataplaneError> {
    let msg = RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, mac, dst));
    remove(nl, &format!("delete fdb entry to {dst}"), msg)
}

/// The device's FDB entries that have a remote (`dst`).
pub fn list_fdb(nl: &Netlink, ifindex: u32) -> Result<Vec<FdbEntry>, DataplaneError> {
    let mut out: Vec<FdbEntry> = dump(nl, AddressFamily::Bridge, ifindex)?
        .iter()
        .filter_map(|m| {
            Some(FdbEntry {
                mac: mac_of(m)?,
                dst: dst_of(m)?,
                permanent: m.header.state == NeighbourState::Permanent,
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Makes the device's permanent FDB entries exactly `desired` (mac → remote): removes the
/// others first (a MAC whose remote changed loses its old one), then adds.
pub fn apply_fdb(
    nl: &Netlink,
    ifindex: u32,
    desired: &[(Mac, IpAddr)],
) -> Result<NeighApplyStats, DataplaneError> {
    let current: Vec<(Mac, IpAddr)> = list_fdb(nl, ifindex)?
        .into_iter()
        .filter(|e| e.permanent)
        .map(|e| (e.mac, e.dst))
        .collect();
    let (add, extra) = diff(desired, &current);
    let mut stats = NeighApplyStats {
        unchanged: current.len() - extra.len(),
        ..Default::default()
    };
    for (mac, dst) in &extra {
        delete_fdb(nl, ifindex, *mac, *dst)?;
        stats.removed += 1;
    }
    for (mac, dst) in &add {
        replace_fdb(nl, ifindex, *mac, *dst)?;
        stats.added += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_missing_and_removes_extras() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = (ip("10.0.0.1"), [2, 0, 0, 0, 0, 1]);
        let b = (ip("10.0.0.2"), [2, 0, 0, 0, 0, 2]);
        let b_moved = (ip("10.0.0.2"), [2, 0, 0, 0, 0, 9]);
        let c = (ip("10.0.0.3"), [2, 0, 0, 0, 0, 3]);
        let (add, remove) = diff(&[a, b_moved, c], &[a, b]);
        assert_eq!(add, vec![b_moved, c]);
        assert_eq!(remove, vec![b]);
        let (add, remove) = diff(&[a], &[a]);
        assert!(add.is_empty() && remove.is_empty());
    }

    #[test]
    fn bridge_family_addresses_are_read_from_raw_bytes() {
        let v4 = NeighbourAddress::Other(vec![192, 168, 0, 2]);
        assert_eq!(ip_of(&v4), Some("192.168.0.2".parse().unwrap()));
        let v6 = NeighbourAddress::Other(Ipv6Addr::LOCALHOST.octets().to_vec());
        assert_eq!(ip_of(&v6), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_of(&NeighbourAddress::Other(vec![1, 2])), None);
    }
}
