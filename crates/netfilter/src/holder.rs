//! The holder: a per-node helper that does the work a plugin need not wait for, after the
//! plugin has answered. (One name for it everywhere: the module, [`hand_over`], the
//! environment variable [`HOLDER`] that starts one, its socket's name.)
//!
//! 1. Closing an nfnetlink socket: on the last close, nf_tables first waits for the objects
//!    of recent transactions to be freed, an RCU grace period (5-20 ms here), and it waits
//!    holding the namespace's nf_tables commit lock. A plugin closing its socket would pay
//!    that wait in its `exit`; a helper closing it right after would stall the next plugin's
//!    transaction instead. So sockets go to the holder, which keeps them while calls keep
//!    coming and closes them all at once when the node has been quiet for a while.
//! 2. Deleting UDP conntrack entries of mapped ports: finding them walks the host's whole
//!    conntrack table (262144 buckets, ~3.6 ms here) whenever the namespace tracks anything.
//!
//! The holder is this executable again (the binary's `main` calls [`run_if_requested`] first
//! thing), detached, reachable on an abstract unix socket, which is private to the network
//! namespace. A call hands its socket and work over that socket; if there is no holder yet,
//! it starts one and passes them on the command's stdin and environment instead. If nothing
//! works the work is done in place.

use crate::conntrack;
use crate::socket::NfSocket;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in a holder's environment: this process is the holder.
pub const HOLDER: &str = "CALICO_NETFILTER_HOLDER";
/// The first work of a new holder (UDP ports to flush), in its environment.
const HOLDER_UDP_FLUSH: &str = "CALICO_NETFILTER_HOLDER_UDP_FLUSH";
/// The holder's address (abstract: one per network namespace, gone with the process).
const HOLDER_ADDRESS: &[u8] = b"calico-netfilter-holder";
/// Quiet time after which the holder closes what it holds and exits.
const IDLE: Duration = Duration::from_secs(2);
/// Bound on a holder's life whatever happens.
const MAX_LIFE: Duration = Duration::from_secs(300);
/// Bound on one hand-over, either side.
const HAND_OVER_WAIT: Duration = Duration::from_secs(1);

/// `family:port,port;family:port`.
fn encode(udp: &[(u8, Vec<u16>)]) -> String {
    udp.iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(f, p)| {
            let ports: Vec<String> = p.iter().map(u16::to_string).collect();
            format!("{f}:{}", ports.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

fn decode(s: &str) -> Vec<(u8, Vec<u16>)> {
    s.split(';')
        .filter_map(|part| {
            let (f, ports) = part.split_once(':')?;
            Some((
                f.parse().ok()?,
                ports.split(',').filter_map(|p| p.parse().ok()).collect(),
            ))
        })
        .collect()
}

fn flush(sock: &mut NfSocket, udp: &[(u8, Vec<u16>)]) {
    for (family, ports) in udp {
        if let Err(e) = conntrack::delete_flows(sock, *family, conntrack::IPPROTO_UDP, ports) {
            log::warn!("could not delete UDP conntrack entries for {ports:?}: {e}");
        }
    }
}

fn holder_addr() -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(HOLDER_ADDRESS)
}

/// Hands the socket and the work to a running holder.
fn send_to_holder(sock: &NfSocket, work: &str) -> std::io::Result<()> {
    let stream = UnixStream::connect_addr(&holder_addr()?)?;
    // A wedged holder must not hold up the call: then we start another.
    stream.set_read_timeout(Some(HAND_OVER_WAIT))?;
    stream.set_write_timeout(Some(HAND_OVER_WAIT))?;
    let fds = [sock.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    // At least one byte: a stream socket drops descriptors sent with an empty payload.
    let payload = format!("w{work}");
    let iov = [IoSlice::new(payload.as_bytes())];
    nix::sys::socket::sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    // The holder acknowledges once it holds the socket; a holder that stopped accepting
    // meanwhile closes without a word.
    let mut ack = [0u8; 1];
    match std::io::Read::read(&mut &stream, &mut ack) {
        Ok(1) if ack[0] == b'k' => Ok(()),
        _ => Err(std::io::Error::other("the holder is going away")),
    }
}

/// Starts a holder with this socket and work.
fn start_holder(sock: &NfSocket, work: &str) -> std::io::Result<()> {
    let dup = sock
        .duplicate_fd()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Command::new(std::env::current_exe()?)
        .env(HOLDER, "1")
        .env(HOLDER_UDP_FLUSH, work)
        .stdin(Stdio::from(dup))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
}

/// Leaves the socket's close and the UDP flush of `udp` ports (per family) to the holder.
pub fn hand_over(mut sock: NfSocket, udp: &[(u8, Vec<u16>)]) {
    let work = encode(udp);

    if send_to_holder(&sock, &work).is_ok() {
        return;
    }
    if let Err(e) = start_holder(&sock, &work) {
        log::debug!("finishing in place: {e}");
        flush(&mut sock, udp);
    }
}

/// If this process is a holder: serves until the node is quiet, then returns true (the
/// caller exits, and the kernel closes every socket held, at once).
pub fn run_if_requested() -> bool {
    if std::env::var_os(HOLDER).is_none() {
        return false;
    }
    let started = Instant::now();
    let mut nf = NfSocket::open().ok();
    let first = decode(&std::env::var(HOLDER_UDP_FLUSH).unwrap_or_default());
    if let Some(s) = nf.as_mut() {
        flush(s, &first);
    }
    let Ok(listener) = holder_addr().and_then(|a| UnixListener::bind_addr(&a)) else {
        // Another holder serves this namespace: keep our socket (stdin) until it is quiet
        // here too, so this close does not stall the next call either.
        std::thread::sleep(IDLE);
        return true;
    };
    // accept() honours the receive timeout: it returns when a call comes or the node has
    // been quiet for IDLE.
    let idle = nix::sys::time::TimeVal::new(IDLE.as_secs() as i64, 0);
    if nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::ReceiveTimeout, &idle)
        .is_err()
    {
        std::thread::sleep(IDLE);
        return true;
    }
    // Sockets received stay open (as raw descriptors) until we exit.
    let mut held: Vec<RawFd> = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < IDLE && started.elapsed() < MAX_LIFE {
        match listener.accept() {
            Ok((stream, _)) => {
                last = Instant::now();
                let _ = stream.set_read_timeout(Some(HAND_OVER_WAIT));
                let _ = stream.set_write_timeout(Some(HAND_OVER_WAIT));
                let mut buf = [0u8; 4096];
                let mut space = nix::cmsg_space!([RawFd; 4]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let work = match nix::sys::socket::recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) {
                    Ok(msg) => {
                        for c in msg.cmsgs().into_iter().flatten() {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                held.extend(fds);
                            }
                        }
                        let n = msg.bytes;
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        text.strip_prefix('w').unwrap_or_default().to_string()
                    }
                    Err(_) => String::new(),
                };
                let _ = std::io::Write::write_all(&mut &stream, b"k");
                drop(stream);
                if let Some(s) = nf.as_mut() {
                    flush(s, &decode(&work));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    drop(listener);
    log::debug!("holder done: {} sockets", held.len());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_round_trips_through_the_environment() {
        let w = vec![(2u8, vec![53u16, 8053]), (10, vec![]), (10, vec![1])];
        assert_eq!(encode(&w), "2:53,8053;10:1");
        assert_eq!(
            decode(&encode(&w)),
            vec![(2, vec![53, 8053]), (10, vec![1])]
        );
        assert!(decode("").is_empty());
    }
}
