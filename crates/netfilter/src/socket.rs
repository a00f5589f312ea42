//! An nfnetlink socket (`NETLINK_NETFILTER`) in the caller's network namespace: single
//! requests, dumps, and nf_tables transactions (one batch, committed atomically or not at
//! all). Requests and dumps go through the shared socket layer (`calico-netlink`); the
//! nfnetlink header (`struct nfgenmsg`) is `netlink-packet-netfilter`'s; the attributes are
//! left as bytes for [`crate::nft`] and [`crate::conntrack`] to write and read.
//!
//! Transactions are framed here, as `nft` sends them ([`WireBatch`]): each message is written
//! once, into one buffer, as it is planned (no message objects kept, no copy at send), and
//! the batch goes in one `sendmsg` (the kernel handles a transaction only whole, in one
//! datagram, while `sendmsg` runs). Only the last message asks for an acknowledgement
//! (`NLM_F_ACK`): the kernel reports a refused message without one, and delivers every
//! answer after the whole batch, in order, so the last message's acknowledgement closes the
//! exchange (an acknowledgement per message cost the kernel one socket buffer each, and
//! us a receive each: 24,000 at policy scale). A refusal names the message by its sequence
//! number (its index in the batch); a failed commit answers the batch's begin message.

use crate::error::NfError;
use calico_netlink::attr::Attrs;
use calico_netlink::packet::NLM_F_REQUEST;
use calico_netlink::packet::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable,
};
use calico_netlink::{NetlinkError, Socket};
use netlink_packet_netfilter::NetfilterHeader;
use nix::sys::socket::{MsgFlags, recv, sendmsg};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};

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
    /// Receive buffer of batches' answers (allocated at the first batch).
    rbuf: Vec<u8>,
    /// The send and receive buffer sizes set so far (0: the defaults).
    sndbuf: usize,
    rcvbuf: usize,
}

impl NfSocket {
    pub fn open() -> Result<Self, NfError> {
        let sock = Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?;
        Ok(NfSocket {
            sock,
            rbuf: Vec::new(),
            sndbuf: 0,
            rcvbuf: 0,
        })
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
        let mut batch = WireBatch::default();
        for m in msgs {
            batch.push(m);
        }
        self.send_batch(what, &batch)
    }

    /// An nf_tables transaction of messages already framed: committed atomically, or not at
    /// all. Returns the messages the kernel echoed (for those sent with `NLM_F_ECHO`). On
    /// failure the error names the first message the kernel refused, by its entry in `what`
    /// (the first entry also names the whole batch, for a failed commit). An empty batch is
    /// no system call.
    pub fn send_batch(
        &mut self,
        what: &[String],
        batch: &WireBatch,
    ) -> Result<Vec<Reply>, NfError> {
        let label = what.first().map_or("nf_tables batch", String::as_str);
        let count = batch.len();
        let Some(&last_start) = batch.starts.last() else {
            return Ok(Vec::new());
        };
        let last_start = last_start as usize;
        // Answers an earlier, failed exchange left would be read as this batch's.
        self.drain(label)?;
        let begin = batch_mark(libc::NFNL_MSG_BATCH_BEGIN, BATCH_FIRST_SEQ.wrapping_sub(1));
        let end = batch_mark(
            libc::NFNL_MSG_BATCH_END,
            BATCH_FIRST_SEQ.wrapping_add(count as u32),
        );
        // The last message, with NLM_F_ACK: its acknowledgement is the kernel's last answer.
        let mut last = batch.buf[last_start..].to_vec();
        let flags = u16::from_ne_bytes([last[6], last[7]]) | NLM_F_ACK;
        last[6..8].copy_from_slice(&flags.to_ne_bytes());
        let total = begin.len() + batch.buf.len() + end.len();
        self.fit_buffers(label, total, batch.echoed)?;
        let iov = [
            IoSlice::new(&begin),
            IoSlice::new(&batch.buf[..last_start]),
            IoSlice::new(&last),
            IoSlice::new(&end),
        ];
        let sent = sendmsg::<()>(self.as_raw_fd(), &iov, &[], MsgFlags::empty(), None)
            .map_err(|e| io_error(label, e))?;
        if sent != total {
            return Err(io_error(label, nix::errno::Errno::EMSGSIZE));
        }
        let mut failure: Option<NfError> = None;
        let mut echoed = Vec::new();
        let mut done = false;
        while !done {
            let answers = match self.receive(label) {
                Ok(a) => a,
                // Answers were dropped (the receive buffer overflowed): a refusal already
                // read means the kernel aborted the transaction; else the outcome is unknown.
                Err(e) if failure.is_some() && e.is(&[nix::errno::Errno::ENOBUFS]) => break,
                Err(e) => return Err(e),
            };
            for answer in answers {
                match answer {
                    Answer::Data(reply) => echoed.push(reply),
                    Answer::Ack(seq, errno) => {
                        if seq == BATCH_FIRST_SEQ.wrapping_sub(1) && errno != 0 {
                            // The batch itself (its commit) failed: nothing was applied.
                            failure.get_or_insert(kernel_error(label, errno));
                            done = true;
                            continue;
                        }
                        let index = seq.wrapping_sub(BATCH_FIRST_SEQ) as usize;
                        if index >= count {
                            continue;
                        }
                        if errno != 0 && failure.is_none() {
                            let op = what.get(index).map_or(label, String::as_str);
                            failure = Some(kernel_error(op, errno));
                        }
                        done |= index == count - 1;
                    }
                }
            }
        }
        match failure {
            Some(e) => {
                self.drain(label)?;
                Err(e)
            }
            None => Ok(echoed),
        }
    }

    /// Grows the socket buffers to hold a batch of `len` bytes, and the answers to it: the
    /// kernel queues them all while `sendmsg` runs (echoes, refusals, one acknowledgement).
    /// SO_SNDBUFFORCE/SO_RCVBUFFORCE (past `[rw]mem_max` with CAP_NET_ADMIN), else the capped
    /// SO_SNDBUF/SO_RCVBUF, as nft's `mnl_set_sndbuffer` does; nothing for a batch the
    /// defaults hold. A refusal carries the refused message back: many may overflow the
    /// receive buffer, but the first (the one reported) is queued before any is dropped.
    fn fit_buffers(&mut self, op: &str, len: usize, echoed: usize) -> Result<(), NfError> {
        use nix::sys::socket::{setsockopt, sockopt};
        let fd = self.sock.as_fd();
        let failed = |e: nix::errno::Errno| io_error(op, e);
        let snd = (len + 4096).min(MAX_BUFFER);
        let rcv = echoed.saturating_add(RECEIVE_BUFFER).min(MAX_BUFFER);
        if snd > DEFAULT_BUFFER && snd > self.sndbuf {
            setsockopt(&fd, sockopt::SndBufForce, &snd)
                .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &snd))
                .map_err(failed)?;
            self.sndbuf = snd;
        }
        if rcv > DEFAULT_BUFFER && rcv > self.rcvbuf {
            setsockopt(&fd, sockopt::RcvBufForce, &rcv)
                .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &rcv))
                .map_err(failed)?;
            self.rcvbuf = rcv;
        }
        Ok(())
    }

    /// One datagram's messages (blocking up to the socket's receive timeout).
    fn receive(&mut self, op: &str) -> Result<Vec<Answer>, NfError> {
        let Some(len) = self.receive_raw(op, MsgFlags::empty())? else {
            return Err(io_error(op, nix::errno::Errno::EAGAIN));
        };
        parse_answers(op, &self.rbuf[..len])
    }

    /// One datagram into `rbuf`; `None` when none is waiting (`MSG_DONTWAIT`) or the wait
    /// timed out.
    fn receive_raw(&mut self, op: &str, flags: MsgFlags) -> Result<Option<usize>, NfError> {
        if self.rbuf.len() < RECEIVE_BUFFER {
            self.rbuf.resize(RECEIVE_BUFFER, 0);
        }
        match recv(
            self.sock.as_raw_fd(),
            &mut self.rbuf,
            flags | MsgFlags::MSG_TRUNC,
        ) {
            Ok(len) if len > self.rbuf.len() => Err(NfError::Netlink(NetlinkError::Decode {
                op: op.to_string(),
                reason: format!("an answer of {len} bytes does not fit the receive buffer"),
            })),
            Ok(len) => Ok(Some(len)),
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(io_error(op, e)),
        }
    }

    /// Drops whatever answers are waiting (a datagram at a time, without blocking).
    fn drain(&mut self, op: &str) -> Result<(), NfError> {
        loop {
            match self.receive_raw(op, MsgFlags::MSG_DONTWAIT) {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                // A reported overflow is consumed by reading it.
                Err(e) if e.is(&[nix::errno::Errno::ENOBUFS]) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Sequence number of a batch's first message; the others follow, its begin message has the
/// one before. The same for every batch: each exchange reads its answers to the end, and
/// one that stopped early (a refusal) drops the rest before returning.
const BATCH_FIRST_SEQ: u32 = 0x4000_0000;
/// Room for one datagram: acknowledgements and echoes are one message each.
const RECEIVE_BUFFER: usize = 1 << 17;
/// Below this the default socket buffers (`net.core.[rw]mem_default`, 208 KiB) are left alone.
const DEFAULT_BUFFER: usize = 160 << 10;
/// What a queued answer costs the receive buffer beyond its bytes: the kernel charges a
/// socket buffer's true size (data rounded up, `skb_shared_info`, `sk_buff`).
const ECHO_OVERHEAD: usize = 2 << 10;
/// Bound on the buffers a batch may ask for.
const MAX_BUFFER: usize = 256 << 20;
const NLMSG_HDRLEN: usize = 16;

/// nf_tables messages framed for one transaction, in order: each is written into one buffer
/// as it is pushed (the message itself is not kept). Sequence numbers are the messages'
/// indexes (from [`BATCH_FIRST_SEQ`]), so a refusal names its message.
#[derive(Debug, Clone, Default)]
pub struct WireBatch {
    buf: Vec<u8>,
    /// Where each message starts in `buf`.
    starts: Vec<u32>,
    /// Receive room the echoes of messages sent with `NLM_F_ECHO` take.
    echoed: usize,
}

impl WireBatch {
    /// Appends `msg`, framed.
    pub fn push(&mut self, msg: &Message) {
        let seq = BATCH_FIRST_SEQ.wrapping_add(self.starts.len() as u32);
        let start = self.buf.len();
        self.starts.push(start as u32);
        let ty = (u16::from(msg.subsys) << 8) | u16::from(msg.cmd);
        let flags = NLM_F_REQUEST | msg.flags;
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + msg.attrs.buf.len();
        self.buf.reserve(len.next_multiple_of(4));
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf
            .extend_from_slice(&[msg.family, NFNETLINK_V0, 0, 0]);
        self.buf.extend_from_slice(&msg.attrs.buf);
        self.buf.resize(start + len.next_multiple_of(4), 0);
        if msg.flags & NLM_F_ECHO != 0 {
            // The echo, in a socket buffer of its own (about 1 KiB of overhead each).
            self.echoed += self.buf.len() - start + ECHO_OVERHEAD;
        }
    }

    /// The number of messages.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The bytes of all messages.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Each message as sent (header and attributes).
    pub fn messages(&self) -> impl Iterator<Item = &[u8]> {
        let ends = self.starts.iter().skip(1).map(|&e| e as usize);
        self.starts
            .iter()
            .map(|&s| s as usize)
            .zip(ends.chain([self.buf.len()]))
            .map(|(s, e)| &self.buf[s..e])
    }
}

/// `NFNL_MSG_BATCH_BEGIN` or `_END` of an nf_tables transaction, framed.
fn batch_mark(cmd: i32, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&((libc::NFNL_SUBSYS_NONE as u16) << 8 | cmd as u16).to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, NFNETLINK_V0]);
    out.extend_from_slice(&(NFNL_SUBSYS_NFTABLES as u16).to_be_bytes());
    out
}

/// One message of an answer to a batch.
enum Answer {
    Data(Reply),
    /// Sequence number and errno (0: an acknowledgement).
    Ack(u32, i32),
}

/// The messages of one datagram.
fn parse_answers(op: &str, mut rest: &[u8]) -> Result<Vec<Answer>, NfError> {
    let decode = |reason: &str| {
        NfError::Netlink(NetlinkError::Decode {
            op: op.to_string(),
            reason: reason.to_string(),
        })
    };
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut out = Vec::new();
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(decode("a message's length is out of bounds"));
        }
        let msg = &rest[..len];
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        let seq = u32_at(msg, 8);
        match i32::from(ty) {
            libc::NLMSG_ERROR => {
                if len < NLMSG_HDRLEN + 4 {
                    return Err(decode("an error message without its code"));
                }
                out.push(Answer::Ack(seq, -(u32_at(msg, NLMSG_HDRLEN) as i32)));
            }
            libc::NLMSG_NOOP | libc::NLMSG_DONE | libc::NLMSG_OVERRUN => {}
            _ => {
                if len < NLMSG_HDRLEN + NFGENMSG_LEN {
                    return Err(decode("a message without its nfgenmsg header"));
                }
                out.push(Answer::Data(Reply {
                    cmd: (ty & 0xff) as u8,
                    family: msg[NLMSG_HDRLEN],
                    attrs: msg[NLMSG_HDRLEN + NFGENMSG_LEN..].to_vec(),
                }));
            }
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

fn io_error(op: &str, e: nix::errno::Errno) -> NfError {
    NfError::Netlink(NetlinkError::Io {
        op: op.to_string(),
        source: e.into(),
    })
}

fn kernel_error(op: &str, errno: i32) -> NfError {
    NfError::Netlink(NetlinkError::Kernel {
        op: op.to_string(),
        errno,
    })
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
            batch_mark(libc::NFNL_MSG_BATCH_BEGIN, 8),
            by_hand(16, 1, 8, 0, 10, &[])
        );
        // A batch's messages are framed as the single requests are, numbered from the first.
        let mut batch = WireBatch::default();
        let echo = Message::nft(libc::NFT_MSG_NEWRULE as u8, NLM_F_ECHO, 1, a.clone());
        for m in [
            &Message::nft(libc::NFT_MSG_NEWTABLE as u8, NLM_F_CREATE, 1, a.clone()),
            &echo,
        ] {
            batch.push(m);
        }
        let framed: Vec<&[u8]> = batch.messages().collect();
        assert_eq!(
            framed,
            [
                on_the_wire(wire.clone(), 1 | flags, BATCH_FIRST_SEQ),
                on_the_wire(echo.wire().0, 1 | NLM_F_ECHO, BATCH_FIRST_SEQ + 1),
            ]
        );
        assert_eq!(batch.echoed, framed[1].len() + ECHO_OVERHEAD);
        let back =
            NetlinkMessage::<Wire>::deserialize(&on_the_wire(wire.clone(), 1, 7)).expect("parse");
        assert_eq!(back.payload, NetlinkPayload::InnerMessage(wire));
    }
}
