//! Frames: `u32` length (little-endian, of what follows), `u16` [`VERSION`], then the
//! message in postcard. Descriptors a request carries are sent with its first bytes
//! (`SCM_RIGHTS`); a peer waits for one reply before it sends again, so the descriptors that
//! arrive while a frame is read are that frame's.

use crate::VERSION;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Bound on one frame (a batched read of a large datastore can be megabytes).
pub const MAX_FRAME: usize = 64 << 20;
/// Bound on the descriptors one frame may carry.
pub const MAX_DESCRIPTORS: usize = 4;
const HEADER: usize = 4;

/// What can be wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("protocol version {0} (this side speaks {VERSION})")]
    Version(u16),
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("short frame")]
    Short,
}

/// A message as one frame's bytes.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER];
    out.extend_from_slice(&VERSION.to_le_bytes());
    let out = postcard::to_extend(message, out)?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    // Within MAX_FRAME, so it fits.
    let len = u32::try_from(len).map_err(|_| FrameError::TooLong(len))?;
    let mut out = out;
    out[..HEADER].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// One frame received, with the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    pub version: u16,
    pub body: Vec<u8>,
    pub descriptors: Vec<OwnedFd>,
}

impl Frame {
    /// The message, if the frame is in our version.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        if self.version != VERSION {
            return Err(FrameError::Version(self.version));
        }
        Ok(postcard::from_bytes(&self.body)?)
    }
}

/// Bytes and descriptors received so far, cut into frames.
#[derive(Debug, Default)]
pub struct Incoming {
    bytes: Vec<u8>,
    descriptors: Vec<OwnedFd>,
}

impl Incoming {
    pub fn push(&mut self, bytes: &[u8], descriptors: Vec<OwnedFd>) {
        self.bytes.extend_from_slice(bytes);
        self.descriptors.extend(descriptors);
    }

    /// The next whole frame, if there is one (it takes every descriptor received so far).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(len) = self.bytes.get(..HEADER) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if len < 2 {
            return Err(FrameError::Short);
        }
        if self.bytes.len() < HEADER + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.bytes.drain(..HEADER + len).collect();
        Ok(Some(Frame {
            version: u16::from_le_bytes([frame[HEADER], frame[HEADER + 1]]),
            body: frame[HEADER + 2..].to_vec(),
            descriptors: std::mem::take(&mut self.descriptors),
        }))
    }

    /// Whether a frame has begun and not ended.
    pub fn is_partial(&self) -> bool {
        !self.bytes.is_empty()
    }
}

/// One `recvmsg` into `buf`: how many bytes came, and the descriptors with them (close-on-
/// exec). Zero bytes is the peer's end.
pub fn receive(socket: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_DESCRIPTORS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut descriptors = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            descriptors.extend(fds);
        }
    }
    Ok((got.bytes, descriptors))
}

/// Sends a whole frame on a blocking socket, `descriptors` with its first bytes.
pub fn send(
    socket: BorrowedFd<'_>,
    frame: &[u8],
    descriptors: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_DESCRIPTORS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !descriptors.is_empty() && !control.push(SendAncillaryMessage::ScmRights(descriptors)) {
        return Err(std::io::Error::other("too many descriptors for one frame"));
    }
    let mut sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < frame.len() {
        let more = rustix::net::send(socket, &frame[sent..], SendFlags::NOSIGNAL)?;
        if more == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        sent += more;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{EtcdCall, KeyRead, Reply, Request};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn frames_round_trip_with_their_descriptors() {
        let (a, b) = UnixStream::pair().expect("pair");
        let file = tempfile::tempfile().expect("tempfile");
        let request = Request::DeleteLink {
            netns: "/run/netns/p".into(),
            index: 7,
            ifname: "eth0".into(),
        };
        let bytes = encode(&request).expect("encode");
        send(a.as_fd(), &bytes, &[file.as_fd()]).expect("send");
        let second = encode(&Request::Etcd {
            identity: crate::message::EtcdIdentity {
                endpoints: vec!["https://e:2379".into()],
                discovery_srv: None,
                ca: Some([1; 32]),
                cert: None,
                key: None,
            },
            call: EtcdCall::Read(vec![KeyRead::Prefix("/calico/".into())]),
        })
        .expect("encode");
        send(a.as_fd(), &second, &[]).expect("send");
        let mut incoming = Incoming::default();
        let mut frames = Vec::new();
        // Read a few bytes at a time: frames are cut whatever the reads.
        let mut buf = [0u8; 7];
        while frames.len() < 2 {
            let (n, fds) = receive(b.as_fd(), &mut buf).expect("receive");
            assert!(n > 0);
            incoming.push(&buf[..n], fds);
            while let Some(f) = incoming.next_frame().expect("frame") {
                frames.push(f);
            }
        }
        assert_eq!(frames[0].decode::<Request>().expect("decode"), request);
        assert_eq!(frames[0].descriptors.len(), 1);
        assert!(frames[1].descriptors.is_empty());
        assert!(matches!(
            frames[1].decode::<Request>().expect("decode"),
            Request::Etcd { .. }
        ));
        assert!(!incoming.is_partial());
    }

    #[test]
    fn another_version_or_a_huge_frame_is_refused() {
        let mut bytes = encode(&Reply::Accepted).expect("encode");
        bytes[4] = 9;
        let mut incoming = Incoming::default();
        incoming.push(&bytes, Vec::new());
        let frame = incoming.next_frame().expect("frame").expect("whole");
        assert!(matches!(
            frame.decode::<Reply>(),
            Err(FrameError::Version(9))
        ));
        let mut incoming = Incoming::default();
        incoming.push(&u32::MAX.to_le_bytes(), Vec::new());
        assert!(matches!(incoming.next_frame(), Err(FrameError::TooLong(_))));
    }
}
