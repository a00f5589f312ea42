//! TCP-MD5 signatures (RFC 2385) for BGP passwords: [`set_md5_key`] installs (or, with an
//! empty key, removes) the key the kernel uses for segments to and from one peer address.
//!
//! Why this crate exists: Linux sets such keys with `setsockopt(IPPROTO_TCP, TCP_MD5SIG,
//! struct tcp_md5sig)`, and no maintained crate wraps that option safely (checked: nix
//! 0.30/0.31, rustix 1, socket2 0.6; libc has the constants but not even the struct). The
//! workspace forbids `unsafe`; this crate only denies it and allows it on the single
//! `setsockopt` call, so the BGP speaker stays free of it.
//!
//! How the kernel uses the keys: a key set on a listening socket applies to incoming SYNs
//! from that address and is inherited by the accepted connection; a key set on a socket
//! before `connect` signs the outgoing connection. A segment without the expected signature
//! (or with one when no key is set) is dropped, so mismatched passwords never connect.
//!
//! Must not import other workspace crates.

use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;

use rustix::net::AddressFamily;

/// The longest key the kernel accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// The kernel's `struct __kernel_sockaddr_storage`: 128 bytes, pointer-aligned.
#[repr(C, align(8))]
struct SockaddrStorage([u8; 128]);

/// The kernel's `struct tcp_md5sig` (uapi/linux/tcp.h). With `TCP_MD5SIG` (not `_EXT`)
/// `flags`, `prefixlen` and `ifindex` are ignored: the key is for exactly `addr`.
#[repr(C)]
struct TcpMd5Sig {
    addr: SockaddrStorage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MAX_KEY_LEN],
}

/// Sets the TCP-MD5 key for segments exchanged with `peer` on `fd` (a TCP socket, listening
/// or not yet connected); an empty `key` removes the key for `peer` (removing a key that is
/// not set succeeds). An IPv4 peer on an IPv6 socket is keyed by its v4-mapped address, as
/// the kernel expects for dual-stack sockets; an IPv6 peer on an IPv4 socket is refused.
///
/// Errors: a key longer than [`MAX_KEY_LEN`] (`InvalidInput`), a socket that is not
/// IPv4/IPv6 TCP, or a kernel without `CONFIG_TCP_MD5SIG` (`ENOPROTOOPT`).
pub fn set_md5_key(fd: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP-MD5 key of {} bytes, at most {MAX_KEY_LEN} allowed",
                key.len()
            ),
        ));
    }
    let socket_family = rustix::net::sockopt::socket_domain(fd)?;
    let addr = if socket_family == AddressFamily::INET6 {
        sockaddr_in6(match peer {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        })
    } else if socket_family == AddressFamily::INET {
        match peer {
            IpAddr::V4(v4) => sockaddr_in(v4.octets()),
            IpAddr::V6(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("TCP-MD5 key for IPv6 peer {peer} on an IPv4 socket"),
                ));
            }
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 keys need an IPv4 or IPv6 TCP socket",
        ));
    };
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefixlen: 0,
        // At most MAX_KEY_LEN (checked above), so it fits.
        keylen: u16::try_from(key.len()).unwrap_or(0),
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    match setsockopt_md5(fd, &sig) {
        // Removing a key the socket does not hold: already the wanted state.
        Err(e) if key.is_empty() && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// `struct sockaddr_in`: family in host order, port 0, address in network order.
fn sockaddr_in(octets: [u8; 4]) -> SockaddrStorage {
    let mut s = [0u8; 128];
    s[..2].copy_from_slice(&address_family(libc::AF_INET).to_ne_bytes());
    s[4..8].copy_from_slice(&octets);
    SockaddrStorage(s)
}

/// `struct sockaddr_in6`: family, port 0, flow info 0, address at offset 8, scope id 0.
fn sockaddr_in6(addr: std::net::Ipv6Addr) -> SockaddrStorage {
    let mut s = [0u8; 128];
    s[..2].copy_from_slice(&address_family(libc::AF_INET6).to_ne_bytes());
    s[8..24].copy_from_slice(&addr.octets());
    SockaddrStorage(s)
}

fn address_family(af: libc::c_int) -> libc::sa_family_t {
    // AF_INET (2) and AF_INET6 (10) fit in sa_family_t.
    libc::sa_family_t::try_from(af).unwrap_or_default()
}

fn setsockopt_md5(fd: BorrowedFd<'_>, sig: &TcpMd5Sig) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(size_of::<TcpMd5Sig>())
        .map_err(|_| io::Error::other("struct tcp_md5sig too large"))?;
    #[allow(unsafe_code)]
    // SAFETY: `fd` is a live descriptor borrowed for the call; `sig` points to an initialised
    // `#[repr(C)]` value laid out as the kernel's `struct tcp_md5sig` and `len` is its exact
    // size; the kernel only reads from it (copy_from_sockptr) during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            std::ptr::from_ref(sig).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
    use std::os::fd::AsFd;

    use super::*;

    /// The kernel's layout: 128-byte address, 8 bytes of flags/lengths, 80-byte key.
    #[test]
    fn struct_matches_the_kernel_layout() {
        assert_eq!(size_of::<TcpMd5Sig>(), 216);
        assert_eq!(std::mem::offset_of!(TcpMd5Sig, keylen), 130);
        assert_eq!(std::mem::offset_of!(TcpMd5Sig, key), 136);
    }

    #[test]
    fn sets_and_clears_a_key_on_an_ipv4_listener() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let peer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        set_md5_key(l.as_fd(), peer, b"secret").expect("set");
        set_md5_key(l.as_fd(), peer, &[0xa5; MAX_KEY_LEN]).expect("replace, longest key");
        set_md5_key(l.as_fd(), peer, b"").expect("clear");
        set_md5_key(l.as_fd(), peer, b"").expect("clearing again is a no-op");
    }

    #[test]
    fn sets_keys_on_an_ipv6_socket_for_both_families() {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind");
        set_md5_key(l.as_fd(), IpAddr::V6(Ipv6Addr::LOCALHOST), b"secret").expect("v6 peer");
        set_md5_key(l.as_fd(), IpAddr::V4(Ipv4Addr::LOCALHOST), b"secret").expect("v4 peer");
        set_md5_key(l.as_fd(), IpAddr::V6(Ipv6Addr::LOCALHOST), b"").expect("clear");
    }

    #[test]
    fn refuses_an_over_long_key() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let e = set_md5_key(
            l.as_fd(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &[b'k'; MAX_KEY_LEN + 1],
        )
        .expect_err("81 bytes");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn refuses_an_ipv6_peer_on_an_ipv4_socket() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let e = set_md5_key(l.as_fd(), IpAddr::V6(Ipv6Addr::LOCALHOST), b"k").expect_err("v6");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// Two sockets with the same key on each side connect and carry data; the kernel
    /// signs every segment (a mismatch would drop the SYN, see the BGP speaker's tests).
    #[test]
    fn keyed_sockets_connect() {
        use std::io::{Read, Write};
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = l.local_addr().expect("addr");
        set_md5_key(l.as_fd(), addr.ip(), b"shared").expect("listener key");
        // Unkeyed client: the keyed listener drops its SYN (bounded by the connect timeout).
        let unsigned =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1));
        assert!(
            unsigned.is_err(),
            "an unsigned connection must not be accepted"
        );
        let mut c = keyed_connect(addr, b"shared").expect("keyed connect");
        let (mut a, _) = l.accept().expect("accept");
        c.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        a.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
    }

    fn keyed_connect(addr: std::net::SocketAddr, key: &[u8]) -> io::Result<std::net::TcpStream> {
        use rustix::net::{SocketType, connect, socket};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
        set_md5_key(fd.as_fd(), addr.ip(), key)?;
        connect(&fd, &addr)?;
        Ok(std::net::TcpStream::from(fd))
    }
}
