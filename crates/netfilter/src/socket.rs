//! An nfnetlink socket (`NETLINK_NETFILTER`) in the caller's network namespace: single
//! requests, dumps, and nf_tables transactions (one batch, committed atomically or not at
//! all).

use crate::error::NfError;
use crate::nlattr::Attrs;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use std::time::Duration;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// Longest the kernel may take to answer; it answers in microseconds when healthy.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

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
            subsys: NFNL_SUBSYS_NFTABLES,
            cmd,
            flags,
            family,
            attrs,
        }
    }

    fn encode(&self, seq: u32, extra_flags: u16, out: &mut Vec<u8>) {
        let ty = (u16::from(self.subsys) << 8) | u16::from(self.cmd);
        header(
            out,
            ty,
            NLM_F_REQUEST | self.flags | extra_flags,
            seq,
            self.family,
            0,
            &self.attrs.buf,
        );
    }
}

fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
}

/// A message received: its nfnetlink command, family and attributes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub cmd: u8,
    pub family: u8,
    pub attrs: Vec<u8>,
}

enum Parsed {
    Data(u32, Reply),
    /// seq, errno (0 is an acknowledgement).
    Ack(u32, i32),
    Done(u32),
}

fn parse_datagram(buf: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let body = &rest[16..len];
        match ty {
            NLMSG_ERROR if body.len() >= 4 => {
                let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                out.push(Parsed::Ack(seq, -code));
            }
            NLMSG_DONE => out.push(Parsed::Done(seq)),
            _ if body.len() >= 4 => out.push(Parsed::Data(
                seq,
                Reply {
                    cmd: (ty & 0xff) as u8,
                    family: body[0],
                    attrs: body[4..].to_vec(),
                },
            )),
            _ => {}
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

/// The socket. Not shared between threads; cheap to open (one per plugin call).
pub struct NfSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    pub fn open() -> Result<Self, NfError> {
        let io = |e: std::io::Error| NfError::Io("nfnetlink socket".into(), e);
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        let tv = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| io(e.into()))?;
        // Sequence numbers only need to differ between our requests on this socket.
        let seq = std::process::id().wrapping_mul(1000);
        Ok(NfSocket {
            sock,
            seq,
            buf: vec![0; 1 << 17],
        })
    }

    /// The descriptor (see [`crate::linger`]).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }

    /// A second descriptor for the socket (see [`crate::linger`]).
    pub fn duplicate_fd(&self) -> Result<std::os::fd::OwnedFd, NfError> {
        nix::unistd::dup(&self.sock).map_err(|e| NfError::Io("dup".into(), e.into()))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, what: &str, bytes: &[u8]) -> Result<(), NfError> {
        self.sock
            .send(bytes, 0)
            .map(|_| ())
            .map_err(|e| NfError::Io(what.to_string(), e))
    }

    fn recv(&mut self, what: &str) -> Result<Vec<Parsed>, NfError> {
        let n = self
            .sock
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|e| NfError::Io(what.to_string(), e))?;
        Ok(parse_datagram(&self.buf[..n]))
    }

    /// Sends `msg` with `flags` and collects the replies to it until it is answered: an
    /// acknowledgement (requests) or `NLMSG_DONE` (dumps); an error is the kernel's.
    fn exchange(&mut self, what: &str, msg: &Message, flags: u16) -> Result<Vec<Reply>, NfError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        msg.encode(seq, flags, &mut out);
        self.send(what, &out)?;
        let mut replies = Vec::new();
        loop {
            for p in self.recv(what)? {
                match p {
                    Parsed::Data(s, r) if s == seq => replies.push(r),
                    Parsed::Done(s) if s == seq => return Ok(replies),
                    Parsed::Ack(s, 0) if s == seq && flags == NLM_F_ACK => return Ok(replies),
                    Parsed::Ack(s, errno) if s == seq && errno != 0 => {
                        return Err(NfError::Kernel {
                            op: what.to_string(),
                            errno,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// A single request answered by an acknowledgement or one message.
    pub fn request(&mut self, what: &str, msg: &Message) -> Result<Vec<Reply>, NfError> {
        self.exchange(what, msg, NLM_F_ACK)
    }

    /// A dump: every message until `NLMSG_DONE`.
    pub fn dump(&mut self, what: &str, msg: &Message) -> Result<Vec<Reply>, NfError> {
        self.exchange(what, msg, NLM_F_DUMP)
    }

    /// An nf_tables transaction: all of `msgs` are committed atomically, or none is. Returns
    /// the messages the kernel echoed (for those sent with `NLM_F_ECHO`). On failure the error
    /// names the first message the kernel refused (by its index in `what`).
    pub fn batch(&mut self, what: &[String], msgs: &[Message]) -> Result<Vec<Reply>, NfError> {
        let label = what.first().cloned().unwrap_or_else(|| "nftables".into());
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let begin = self.next_seq();
        let mut out = Vec::new();
        header(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            u16::from(NFNL_SUBSYS_NFTABLES),
            &[],
        );
        let first = begin.wrapping_add(1);
        for m in msgs {
            let s = self.next_seq();
            m.encode(s, NLM_F_ACK, &mut out);
        }
        let end = self.next_seq();
        header(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            u16::from(NFNL_SUBSYS_NFTABLES),
            &[],
        );
        self.send(&label, &out)?;
        let mut pending = msgs.len();
        let mut failure: Option<NfError> = None;
        let mut echoed = Vec::new();
        while pending > 0 {
            for p in self.recv(&label)? {
                match p {
                    Parsed::Data(_, r) => echoed.push(r),
                    Parsed::Ack(s, errno) => {
                        let index = s.wrapping_sub(first) as usize;
                        if s == begin && errno != 0 {
                            // The commit itself failed: no per-message acknowledgement follows.
                            return Err(NfError::Kernel { op: label, errno });
                        }
                        if index < msgs.len() {
                            pending -= 1;
                            if errno != 0 && failure.is_none() {
                                failure = Some(NfError::Kernel {
                                    op: what.get(index).cloned().unwrap_or_else(|| label.clone()),
                                    errno,
                                });
                            }
                        }
                    }
                    Parsed::Done(_) => {}
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(echoed),
        }
    }
}
