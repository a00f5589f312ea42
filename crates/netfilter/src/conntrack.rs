//! Deleting conntrack entries (ctnetlink): the UDP flows to given ports, so that a flow
//! that began before a port mapping changed does not keep going to the old destination.
//! Entries are read and named with `netlink-packet-netfilter`'s conntrack attributes.

use crate::error::NfError;
use crate::socket::{Message, NFNL_SUBSYS_CTNETLINK, NfSocket};
use calico_netlink::attr::Attrs;
use calico_netlink::packet::{Emitable, NlaBuffer, NlasIterator, Parseable};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ProtoTuple, Tuple};
use nix::errno::Errno;

// `enum cntl_msg_types` (linux/netfilter/nfnetlink_conntrack.h; libc does not define them).
const IPCTNL_MSG_CT_GET: u8 = 1;
const IPCTNL_MSG_CT_DELETE: u8 = 2;
/// `CTA_ZONE`, which the crate has no variant for: passed back as found.
const CTA_ZONE: u16 = 18;
pub const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// The original tuple's protocol and destination port of a dumped entry.
fn proto_and_dport(tuple: &[Tuple]) -> Option<(u8, u16)> {
    let proto = tuple.iter().find_map(|t| match t {
        Tuple::Proto(p) => Some(p),
        _ => None,
    })?;
    let num = proto.iter().find_map(|p| match p {
        ProtoTuple::Protocol(n) => Some(u8::from(*n)),
        _ => None,
    })?;
    let port = proto.iter().find_map(|p| match p {
        ProtoTuple::DestinationPort(port) => Some(*port),
        _ => None,
    })?;
    Some((num, port))
}

/// The attributes of a dumped entry (those the crate cannot read are left out).
fn attributes(buf: &[u8]) -> Vec<ConntrackAttribute> {
    NlasIterator::new(buf)
        .map_while(Result::ok)
        .filter_map(|nla: NlaBuffer<&[u8]>| ConntrackAttribute::parse(&nla).ok())
        .collect()
}

/// Whether this namespace has any conntrack entry. A dump walks the whole (host-wide) hash
/// table, 262144 buckets and ~3.6 ms here, even when this namespace has nothing in it; the
/// per-namespace count is free.
fn tracks_anything() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .map(|c| c.trim() != "0")
        .unwrap_or(false)
}

fn ctnetlink(cmd: u8, family: u8, attrs: Attrs) -> Message {
    Message {
        subsys: NFNL_SUBSYS_CTNETLINK as u8,
        cmd,
        flags: 0,
        family,
        attrs,
    }
}

/// Deletes the entries of `family` (`AF_INET` / `AF_INET6`) whose original direction
/// is `proto` to one of `ports`. Returns how many went. Entries that vanish meanwhile are
/// fine.
pub fn delete_flows(
    sock: &mut NfSocket,
    family: u8,
    proto: u8,
    ports: &[u16],
) -> Result<usize, NfError> {
    if ports.is_empty() || !tracks_anything() {
        return Ok(0);
    }
    let dump = ctnetlink(IPCTNL_MSG_CT_GET, family, Attrs::new());
    let entries = sock.dump("dump conntrack", &dump)?;
    let ports: std::collections::HashSet<u16> = ports.iter().copied().collect();
    let mut deleted = 0;
    for e in entries {
        let attrs = attributes(&e.attrs);
        let Some(tuple) = attrs.iter().find_map(|a| match a {
            ConntrackAttribute::CtaTupleOrig(t) => Some(t),
            _ => None,
        }) else {
            continue;
        };
        match proto_and_dport(tuple) {
            Some((p, port)) if p == proto && ports.contains(&port) => {}
            _ => continue,
        }
        // The entry is named by its original tuple (and zone), as the dump gave them.
        let zone = attrs.iter().find(
            |a| matches!(a, ConntrackAttribute::Other(nla) if calico_netlink::packet::Nla::kind(nla) == CTA_ZONE),
        );
        let mut named = vec![ConntrackAttribute::CtaTupleOrig(tuple.clone())];
        named.extend(zone.cloned());
        let mut a = Attrs::new();
        a.buf.resize(named.as_slice().buffer_len(), 0);
        named.as_slice().emit(&mut a.buf);
        let del = ctnetlink(IPCTNL_MSG_CT_DELETE, family, a);
        match sock.request("delete conntrack entry", &del) {
            Ok(_) => deleted += 1,
            Err(err) if err.is(&[Errno::ENOENT]) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_named_by_its_original_tuple() {
        // CTA_TUPLE_ORIG { CTA_TUPLE_PROTO { NUM 17, SRC_PORT 5000, DST_PORT 53 } }, CTA_ZONE 0
        let mut a = Attrs::new();
        a.nest(1, |t| {
            t.nest(2, |p| {
                p.u8(1, 17).u16_be(2, 5000).u16_be(3, 53);
            });
        });
        a.u16_be(CTA_ZONE, 0);
        let attrs = attributes(&a.buf);
        let tuple = attrs.iter().find_map(|a| match a {
            ConntrackAttribute::CtaTupleOrig(t) => Some(t),
            _ => None,
        });
        assert_eq!(tuple.and_then(|t| proto_and_dport(t)), Some((17, 53)));
        assert!(matches!(
            attrs.get(1),
            Some(ConntrackAttribute::Other(nla)) if calico_netlink::packet::Nla::kind(nla) == CTA_ZONE
        ));
    }
}
