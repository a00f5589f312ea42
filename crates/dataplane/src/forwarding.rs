//! A namespace's `all` forwarding setting, asked over netlink (`RTM_GETNETCONF`).
//!
//! Reading `/proc/sys/net/ipv4/ip_forward` in a pod's namespace costs a sysctl path lookup
//! that grows with the namespaces on the machine (0.5 ms with 500 pods here); the netlink
//! question costs a socket and one round trip, in any namespace. `netlink-packet-route` has
//! no netconf message, so this one is typed here (header and framing are
//! `netlink-packet-core`'s, attributes [`calico_netlink::attr`]'s).

use calico_netlink::Socket;
use calico_netlink::attr::{self, Attrs};
use calico_netlink::packet::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};

// Attribute numbers of `enum netconfa` (linux/netconf.h; libc does not define them).
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
/// `NETCONFA_IFINDEX_ALL`: the namespace's `conf/all`.
const IFINDEX_ALL: i32 = -1;
/// `struct netconfmsg`: the family, padded to 4 bytes.
const NETCONFMSG_LEN: usize = 4;

/// An `RTM_GETNETCONF` request or `RTM_NEWNETCONF` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Netconf {
    message_type: u16,
    family: u8,
    attrs: Attrs,
}

impl NetlinkSerializable for Netconf {
    fn message_type(&self) -> u16 {
        self.message_type
    }
    fn buffer_len(&self) -> usize {
        NETCONFMSG_LEN + self.attrs.buf.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..NETCONFMSG_LEN].copy_from_slice(&[self.family, 0, 0, 0]);
        buffer[NETCONFMSG_LEN..].copy_from_slice(&self.attrs.buf);
    }
}

impl NetlinkDeserializable for Netconf {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let family = *payload
            .first()
            .ok_or_else(|| DecodeError::buffer_too_small(payload.len(), NETCONFMSG_LEN))?;
        Ok(Netconf {
            message_type: header.message_type,
            family,
            attrs: Attrs {
                buf: payload.get(NETCONFMSG_LEN..).unwrap_or_default().to_vec(),
            },
        })
    }
}

/// The request for `family`'s `conf/all` settings.
fn request(family: u8) -> Netconf {
    let mut attrs = Attrs::new();
    attrs.bytes(NETCONFA_IFINDEX, &IFINDEX_ALL.to_ne_bytes());
    Netconf {
        message_type: libc::RTM_GETNETCONF,
        family,
        attrs,
    }
}

/// `NETCONFA_FORWARDING` of an `RTM_NEWNETCONF` answer.
fn forwarding_of(answer: &Netconf) -> Option<bool> {
    if answer.message_type != libc::RTM_NEWNETCONF {
        return None;
    }
    let value = attr::find(&answer.attrs.buf, NETCONFA_FORWARDING)?;
    Some(attr::as_u32(value)? != 0)
}

/// Whether forwarding is on in the current namespace's `conf/all` for IPv4 (`v6` false)
/// or IPv6; None if the kernel would not say.
pub fn forwarding_all(v6: bool) -> Option<bool> {
    let mut sock = Socket::<Netconf>::open(netlink_sys::protocols::NETLINK_ROUTE).ok()?;
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let req = request(u8::try_from(family).ok()?);
    let answers = sock.request("get netconf", req, 0).ok()?;
    forwarding_of(answers.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_netlink::packet::{NetlinkMessage, NetlinkPayload};

    const AF_INET: u8 = libc::AF_INET as u8;

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// The request as it goes on the wire (sequence 1, as the hand-written encoder had it).
    fn wire(r: Netconf) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = calico_netlink::packet::NLM_F_REQUEST;
        header.sequence_number = 1;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn answer(bytes: &[u8]) -> Option<Netconf> {
        match NetlinkMessage::<Netconf>::deserialize(bytes).ok()?.payload {
            NetlinkPayload::InnerMessage(n) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn the_request_is_netlinks_layout() {
        let r = wire(request(AF_INET));
        assert_eq!(r.len(), 28);
        assert_eq!(u32_at(&r, 0), Some(28));
        assert_eq!(u16_at(&r, 4), Some(libc::RTM_GETNETCONF));
        assert_eq!(r[16], AF_INET);
        assert_eq!((u16_at(&r, 20), u16_at(&r, 22)), (Some(8), Some(1)));
        assert_eq!(u32_at(&r, 24), Some(u32::MAX));
    }

    #[test]
    fn the_answer_is_read_past_other_attributes() {
        let mut a = Vec::new();
        a.extend_from_slice(&44u32.to_ne_bytes());
        a.extend_from_slice(&libc::RTM_NEWNETCONF.to_ne_bytes());
        a.extend_from_slice(&[0; 10]);
        a.extend_from_slice(&[AF_INET, 0, 0, 0]);
        // NETCONFA_IFINDEX, then NETCONFA_RP_FILTER, then NETCONFA_FORWARDING.
        for (kind, value) in [(1u16, u32::MAX), (3, 0), (NETCONFA_FORWARDING, 1)] {
            a.extend_from_slice(&8u16.to_ne_bytes());
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(&value.to_ne_bytes());
        }
        assert_eq!(answer(&a).as_ref().and_then(forwarding_of), Some(true));
        assert_eq!(
            answer(&a[..36]).as_ref().and_then(forwarding_of),
            None,
            "cut short"
        );
        let mut off = a.clone();
        off[40] = 0;
        assert_eq!(answer(&off).as_ref().and_then(forwarding_of), Some(false));
    }

    #[test]
    fn this_namespace_answers() {
        // Whatever the setting here, the kernel answers the question.
        assert!(forwarding_all(false).is_some());
    }
}
