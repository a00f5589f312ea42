//! An nfnetlink socket (`NETLINK_NETFILTER`) in the caller's network namespace: single
//! requests, dumps, and nf_tables transactions (one batch, committed atomically or not at
//! all), on the shared socket layer (`calico-netlink`). The nfnetlink header (`struct
//! nfgenmsg`) is `netlink-packet-netfilter`'s; the attributes are left as bytes for
//! [`crate::nft`] and [`crate::conntrack`] to write and read.

use crate::error::NfError;
use calico_netlink::attr::Attrs;
use calico_netlink::packet::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};
use calico_netlink::{NetlinkError, Socket};
use netlink_packet_netfilter::NetfilterHeader;

pub use calico_netlink::packet::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL,
};
pub use libc::{NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_NFTABLES};

/// The only version of the nfnetlink header.
const NFNETLINK_V0: u8 = libc::NFNETLINK_V0 as u8;
/// `struct nfgenmsg` (family, version, resource id), which libc does not define.
const NFGENMSG_LEN: usize = 4;

/// One nfnetlink message to send.
#[derive(Debug, Clone)]
pub struct Message {
    pub subsys: u8,
    pub cmd: u8,
    /// `NLM_F_*` beyond `NLM_F_REQUEST` (added always).
    pub flags: u16,
    /// `NFPROTO_*` / `AF_*` of the nfgenmsg header.
    pub family: u8,
    pub attrs: Attrs,
}

impl Message {
    pub fn nft(cmd: u8, flags: u16, family: u8, attrs: Attrs) -> Self {
        Message {
            subsys: NFNL_SUBSYS_NFTABLES as u8,
            cmd,
            flags,
            family,
            attrs,
        }
    }

    fn wire(self) -> (Wire, u16) {
        let wire = Wire {
            subsys: self.subsys,
            cmd: self.cmd,
            family: self.family,
            res_id: 0,
            attrs: self.attrs.buf,
        };
        (wire, self.flags)
    }
}

/// A message received: its nfnetlink command, family and attributes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub cmd: u8,
    pub family: u8,
    pub attrs: Vec<u8>,
}

/// An nfnetlink message as it goes on the wire: type, nfgenmsg and attribute bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    subsys: u8,
    cmd: u8,
    family: u8,
    /// nfgenmsg's `res_id`: the subsystem a batch is for.
    res_id: u16,
    attrs: Vec<u8>,
}

impl Wire {
    /// `NFNL_MSG_BATCH_BEGIN` or `_END` of an nf_tables transaction.
    fn batch_mark(cmd: i32) -> Self {
        Wire {
            subsys: libc::NFNL_SUBSYS_NONE as u8,
            cmd: cmd as u8,
            family: libc::AF_UNSPEC as u8,
            res_id: NFNL_SUBSYS_NFTABLES as u16,
            attrs: Vec::new(),
        }
    }

    fn header(&self) -> NetfilterHeader {
        NetfilterHeader::new(self.family.into(), NFNETLINK_V0, self.res_id)
    }
}

impl NetlinkSerializable for Wire {
    fn message_type(&self) -> u16 {
        (u16::from(self.subsys) << 8) | u16::from(self.cmd)
    }
    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attrs.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        self.header().emit(&mut buffer[..NFGENMSG_LEN]);
        buffer[NFGENMSG_LEN..].copy_from_slice(&self.attrs);
    }
}

impl NetlinkDeserializable for Wire {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let nfgen = NetfilterHeader::parse(payload)?;
        Ok(Wire {
            subsys: (header.message_type >> 8) as u8,
            cmd: (header.message_type & 0xff) as u8,
            family: nfgen.family.into(),
            res_id: nfgen.res_id,
            attrs: payload[NFGENMSG_LEN..].to_vec(),
        })
    }
}

impl From<Wire> for Reply {
    fn from(w: Wire) -> Self {
        Reply {
            cmd: w.cmd,
            family: w.family,
            attrs: w.attrs,
        }
    }
}

fn replies(r: Result<Vec<Wire>, NetlinkError>) -> Result<Vec<Reply>, NfError> {
    Ok(r?.into_iter().map(Reply::from).collect())
}

/// The socket. Not shared between threads; cheap to open (one per plugin call).
pub struct NfSocket {
    sock: Socket<Wire>,
}

impl NfSocket {
    pub fn open() -> Result<Self, NfError> {
        let sock = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?;
        Ok(NfSocket { sock })
    }

    /// A single request answered by an acknowledgement or one message.
    pub fn request(&mut self, what: &str, msg: &Message) -> Result<Vec<Reply>, NfError> {
        let (wire, flags) = msg.clone().wire();
        replies(self.sock.request(what, wire, flags | NLM_F_ACK))
    }

    /// A dump: every message until `NLMSG_DONE`.
    pub fn dump(&mut self, what: &str, msg: &Message) -> Result<Vec<Reply>, NfError> {
        let (wire, flags) = msg.clone().wire();
        replies(self.sock.request(what, wire, flags | NLM_F_DUMP))
    }

    /// An nf_tables transaction: all of `msgs` are committed atomically, or none is. Returns
    /// the messages the kernel echoed (for those sent with `NLM_F_ECHO`). On failure the error
    /// names the first message the kernel refused (by its index in `what`).
    pub fn batch(&mut self, what: &[String], msgs: &[Message]) -> Result<Vec<Reply>, NfError> {
        let msgs = msgs.iter().map(|m| m.clone().wire()).collect();
        replies(self.sock.batch(
            what,
            Wire::batch_mark(libc::NFNL_MSG_BATCH_BEGIN),
            msgs,
            Wire::batch_mark(libc::NFNL_MSG_BATCH_END),
        ))
    }
}

impl std::os::fd::AsRawFd for NfSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

/// The descriptor, to hand the socket to the node agent (see [`crate::release`]).
impl std::os::fd::AsFd for NfSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_netlink::packet::{NetlinkMessage, NetlinkPayload};

    /// The bytes the hand-written encoder sent for a message (kept as the reference).
    fn by_hand(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + 4 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.push(family);
        out.push(0);
        out.extend_from_slice(&res_id.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn on_the_wire(w: Wire, flags: u16, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(w));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    #[test]
    fn framing_is_what_nft_sends() {
        let mut a = Attrs::new();
        a.str(1, "nat");
        let (wire, flags) =
            Message::nft(libc::NFT_MSG_NEWTABLE as u8, NLM_F_CREATE, 1, a.clone()).wire();
        assert_eq!(
            on_the_wire(wire.clone(), 1 | flags, 7),
            by_hand(10 << 8, 1 | NLM_F_CREATE, 7, 1, 0, &a.buf)
        );
        assert_eq!(
            on_the_wire(Wire::batch_mark(libc::NFNL_MSG_BATCH_BEGIN), 1, 8),
            by_hand(16, 1, 8, 0, 10, &[])
        );
        let back =
            NetlinkMessage::<Wire>::deserialize(&on_the_wire(wire.clone(), 1, 7)).expect("parse");
        assert_eq!(back.payload, NetlinkPayload::InnerMessage(wire));
    }
}
