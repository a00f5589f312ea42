//! A netlink socket in the caller's network namespace, speaking one protocol's messages
//! (`P`: `RouteNetlinkMessage`, netfilter's message, or a hand-typed one): single requests,
//! dumps, and runs of requests in one datagram ([`Socket::requests`], for rtnetlink's
//! thousands of routes; nf_tables transactions are framed by `calico_netfilter`'s own
//! batch writer).
//!
//! A run goes in one `send` and the kernel handles it, acknowledgements included, before
//! `send` returns, so both socket buffers must hold the whole exchange: a run larger than
//! the default buffers grows them first (as nft's `mnl_set_sndbuffer`/`mnl_set_rcvbuffer`
//! do), and a small one costs no extra system call.

use crate::error::NetlinkError;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// Longest the kernel may take to answer; it answers in microseconds when healthy.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for one datagram: the kernel fills dump datagrams up to 32 KiB; nf_tables echoes
/// can be larger.
const RECEIVE_BUFFER: usize = 1 << 17;
const HEADER_LEN: usize = std::mem::size_of::<libc::nlmsghdr>();
/// Below this the default socket buffers (`net.core.[rw]mem_default`, 208 KiB) are left alone.
const DEFAULT_BUFFER: usize = 160 << 10;
/// What one queued acknowledgement costs the receive buffer: the kernel charges a socket
/// buffer's true size (data rounded up, `skb_shared_info`, `sk_buff`), about 1 KiB for an
/// empty acknowledgement; a refusal also echoes the refused message.
const ACK_COST: usize = 2 << 10;
/// Bound on the buffers a batch may ask for.
const MAX_BUFFER: usize = 256 << 20;

/// One message of an answer.
enum Answer<P> {
    Data(u32, P),
    /// Sequence number and errno (0: an acknowledgement).
    Ack(u32, i32),
    Done(u32),
}

/// The socket. Not shared between threads; cheap to open (two system calls).
pub struct Socket<P> {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The send and receive buffer sizes set so far (0: the defaults).
    sndbuf: usize,
    rcvbuf: usize,
    _payload: PhantomData<fn() -> P>,
}

impl<P> AsRawFd for Socket<P> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl<P> AsFd for Socket<P> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn io(op: &str) -> impl Fn(std::io::Error) -> NetlinkError + '_ {
    move |source| NetlinkError::Io {
        op: op.to_string(),
        source,
    }
}

/// Appends `payload` as one message, padded to netlink's 4-byte alignment.
fn encode<P: NetlinkSerializable>(out: &mut Vec<u8>, payload: P, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
    out.resize(out.len().next_multiple_of(4), 0);
}

impl<P: NetlinkSerializable + NetlinkDeserializable> Socket<P> {
    /// A socket of `protocol` (`netlink_sys::protocols::NETLINK_*`) in the calling thread's
    /// network namespace.
    pub fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let op = "netlink socket";
        let mut sock = netlink_sys::Socket::new(protocol).map_err(io(op))?;
        sock.bind_auto().map_err(io(op))?;
        let timeout = nix::sys::time::TimeVal::new(
            i64::try_from(REPLY_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            0,
        );
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io(op)(e.into()))?;
        Ok(Socket {
            sock,
            // Sequence numbers only need to differ between our requests on this socket.
            seq: std::process::id().wrapping_mul(1000),
            buf: Vec::with_capacity(RECEIVE_BUFFER),
            sndbuf: 0,
            rcvbuf: 0,
            _payload: PhantomData,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Grows the socket buffers to hold a batch of `len` bytes and the `acks` answers it
    /// brings (the kernel queues them all while `send` runs): SO_SNDBUFFORCE/SO_RCVBUFFORCE
    /// (which go past `[rw]mem_max` with CAP_NET_ADMIN), else the capped SO_SNDBUF/SO_RCVBUF.
    /// Nothing for a batch the defaults hold.
    fn fit_buffers(&mut self, op: &str, len: usize, acks: usize) -> Result<(), NetlinkError> {
        use nix::sys::socket::{setsockopt, sockopt};
        let snd = (len + 4096).min(MAX_BUFFER);
        let rcv = acks
            .saturating_mul(ACK_COST)
            .saturating_add(len)
            .saturating_add(RECEIVE_BUFFER)
            .min(MAX_BUFFER);
        let failed = |e: nix::errno::Errno| io(op)(std::io::Error::from(e));
        if snd > DEFAULT_BUFFER && snd > self.sndbuf {
            setsockopt(&self.sock, sockopt::SndBufForce, &snd)
                .or_else(|_| setsockopt(&self.sock, sockopt::SndBuf, &snd))
                .map_err(failed)?;
            self.sndbuf = snd;
        }
        if rcv > DEFAULT_BUFFER && rcv > self.rcvbuf {
            setsockopt(&self.sock, sockopt::RcvBufForce, &rcv)
                .or_else(|_| setsockopt(&self.sock, sockopt::RcvBuf, &rcv))
                .map_err(failed)?;
            self.rcvbuf = rcv;
        }
        Ok(())
    }

    fn send(&self, op: &str, bytes: &[u8]) -> Result<(), NetlinkError> {
        self.sock.send(bytes, 0).map(|_| ()).map_err(io(op))
    }

    /// One datagram's messages.
    fn receive(&mut self, op: &str) -> Result<Vec<Answer<P>>, NetlinkError> {
        self.buf.clear();
        self.sock.recv(&mut self.buf, 0).map_err(io(op))?;
        let decode = |reason: String| NetlinkError::Decode {
            op: op.to_string(),
            reason,
        };
        let mut out = Vec::new();
        let mut rest = self.buf.as_slice();
        while rest.len() >= HEADER_LEN {
            let len = NetlinkBuffer::new(rest).length() as usize;
            if len < HEADER_LEN || len > rest.len() {
                break;
            }
            let msg = NetlinkMessage::<P>::deserialize(&rest[..len])
                .map_err(|e| decode(e.to_string()))?;
            let seq = msg.header.sequence_number;
            match msg.payload {
                NetlinkPayload::InnerMessage(p) => out.push(Answer::Data(seq, p)),
                NetlinkPayload::Error(e) => out.push(Answer::Ack(seq, -e.raw_code())),
                NetlinkPayload::Done(_) => out.push(Answer::Done(seq)),
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
        Ok(out)
    }

    /// Sends `payload` with `flags` (beyond `NLM_F_REQUEST`) and collects the messages that
    /// answer it, until: the acknowledgement (`NLM_F_ACK`), `NLMSG_DONE` (`NLM_F_DUMP`), or
    /// else the first message. A refusal is [`NetlinkError::Kernel`].
    pub fn request(&mut self, op: &str, payload: P, flags: u16) -> Result<Vec<P>, NetlinkError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        encode(&mut out, payload, flags, seq);
        self.send(op, &out)?;
        let acked = flags & NLM_F_ACK != 0;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            for answer in self.receive(op)? {
                match answer {
                    Answer::Data(s, p) if s == seq => {
                        replies.push(p);
                        if !acked && !dump {
                            return Ok(replies);
                        }
                    }
                    Answer::Done(s) if s == seq => return Ok(replies),
                    Answer::Ack(s, 0) if s == seq && acked => return Ok(replies),
                    Answer::Ack(s, errno) if s == seq && errno != 0 => {
                        return Err(NetlinkError::Kernel {
                            op: op.to_string(),
                            errno,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// A dump: every message until `NLMSG_DONE`.
    pub fn dump(&mut self, op: &str, payload: P) -> Result<Vec<P>, NetlinkError> {
        self.request(op, payload, NLM_F_DUMP)
    }

    /// Several requests in one datagram, without framing messages (rtnetlink has no
    /// transactions: the kernel handles each message in turn, and goes on after a refusal).
    /// Only the last asks for an acknowledgement (`NLM_F_ACK`): the kernel answers every
    /// other message only when it refuses it (an error carries the refused message's
    /// sequence number), and handles the messages in order before `send` returns, so the
    /// last one's answer comes after every refusal. The answer is each message's errno, in
    /// order (0: done), so a caller can report every refusal, not only the first. Thousands
    /// of acknowledgements would cost the kernel a socket buffer each and us a `recv` each.
    /// The socket buffers are grown to hold the batch and its answers; an error of the
    /// socket itself (`ENOBUFS` when answers were dropped) fails the whole call.
    pub fn requests(&mut self, op: &str, msgs: Vec<(P, u16)>) -> Result<Vec<i32>, NetlinkError> {
        let count = msgs.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let first = self.seq.wrapping_add(1);
        for (i, (m, flags)) in msgs.into_iter().enumerate() {
            let s = self.next_seq();
            let ack = if i + 1 == count { NLM_F_ACK } else { 0 };
            encode(&mut out, m, flags | ack, s);
        }
        self.fit_buffers(op, out.len(), count)?;
        self.send(op, &out)?;
        let mut errnos = vec![0; count];
        loop {
            for answer in self.receive(op)? {
                if let Answer::Ack(s, errno) = answer {
                    let index = s.wrapping_sub(first) as usize;
                    if index < count {
                        errnos[index] = errno;
                        if index + 1 == count {
                            return Ok(errnos);
                        }
                    }
                }
            }
        }
    }
}
