//! Which host interface routes to an address (`ip route get`), for settings that belong on
//! that interface (portmap's `route_localnet`). A raw `NETLINK_ROUTE` request: no runtime.

use crate::error::NfError;
use crate::nlattr::{self, Attrs};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use std::net::IpAddr;

const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

fn request(sock: &Socket, ty: u16, header: &[u8], attrs: &Attrs) -> Result<Vec<u8>, NfError> {
    let io = |e| NfError::Io("route lookup".into(), e);
    let len = 16 + header.len() + attrs.buf.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(header);
    msg.extend_from_slice(&attrs.buf);
    sock.send(&msg, 0).map_err(io)?;
    let mut buf = vec![0u8; 1 << 15];
    let n = sock.recv(&mut &mut buf[..], 0).map_err(io)?;
    let reply = &buf[..n];
    if reply.len() < 16 {
        return Err(NfError::Tool {
            tool: "route lookup".into(),
            msg: "short reply".into(),
        });
    }
    let rty = u16::from_ne_bytes([reply[4], reply[5]]);
    if rty == NLMSG_ERROR && reply.len() >= 20 {
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        return Err(NfError::Kernel {
            op: "route lookup".into(),
            errno: -code,
        });
    }
    Ok(reply[16 + header.len().min(reply.len() - 16)..].to_vec())
}

/// The name of the interface the host would send to `ip` through, if any.
pub fn interface_towards(ip: IpAddr) -> Result<Option<String>, NfError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| NfError::Io("route socket".into(), e))?;
    sock.bind_auto()
        .map_err(|e| NfError::Io("route socket".into(), e))?;
    let (family, addr, bits) = match ip {
        IpAddr::V4(a) => (2u8, a.octets().to_vec(), 32u8),
        IpAddr::V6(a) => (10u8, a.octets().to_vec(), 128u8),
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let rtmsg = [family, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut a = Attrs::new();
    a.bytes(RTA_DST, &addr);
    let attrs = match request(&sock, RTM_GETROUTE, &rtmsg, &a) {
        Ok(r) => r,
        // No route (ENETUNREACH, EHOSTUNREACH): no interface.
        Err(NfError::Kernel { errno, .. }) if errno == 101 || errno == 113 => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(oif) = nlattr::find(&attrs, RTA_OIF)
        .and_then(|p| p.get(..4))
        .map(|p| u32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
    else {
        return Ok(None);
    };
    // The name by ioctl: no second netlink round trip.
    Ok(nix::net::if_::if_indextoname(oif)
        .ok()
        .and_then(|name| name.into_string().ok()))
}
