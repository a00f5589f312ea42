//! Addresses and networks read from text as Go's `net.ParseIP` and `net.ParseCIDR` read them,
//! which is how Calico reads every one (libcalico-go's `cnet.ParseCIDR`, `ParseCIDROrIP`):
//! IP pools, an endpoint's `ipNetworks`, a Node's addresses, annotations, host-local routes.
//! One implementation, so every reader here accepts exactly what Calico accepts.
//!
//! Go's rules (Go 1.22 and later parse the address with `netip.ParseAddr`):
//!
//! - IPv4 is four decimal fields of 0-255 without leading zeros (`010.0.0.1` is refused);
//!   IPv6 has at most four hex digits a field, one `::` standing for at least one field, an
//!   embedded IPv4 only as the last 32 bits. No zone (`fe80::1%eth0` is refused), no spaces.
//!   Rust's `IpAddr` parser accepts exactly these forms, so it does the parsing.
//! - A CIDR is the address, `/`, and a prefix length of decimal digits only (no sign, no
//!   space; leading zeros are fine, `/08` is `/8`) of at most 32 for an IPv4 address and 128
//!   for an IPv6 one (an IPv4-mapped address counts as IPv6 here: `::ffff:10.0.0.1/120` is
//!   valid). The network is the address with its host bits cleared.
//! - Go's `net.IP` has no separate IPv4-mapped form: `::ffff:a.b.c.d` *is* the IPv4 address
//!   `a.b.c.d` (Go prints it so, and Calico's `Version()` says 4). Here it is an
//!   [`IpAddr::V4`]. Likewise a network whose cleared address is IPv4-mapped (a mapped
//!   address with a prefix of 96 or more) is the IPv4 network of the prefix minus 96, as Go
//!   prints and matches it: `::ffff:10.1.2.3/120` is `10.1.2.0/24`, `::ffff:10.1.2.3/96` is
//!   `0.0.0.0/0`; with a shorter prefix the mapping is cleared and it stays IPv6
//!   (`::ffff:10.1.2.3/64` is `::/64`, while its address is still `10.1.2.3`).
//!
//! Printed with `Display`, [`Cidr::net`] is Go's `IPNet.String()` and [`Cidr::addr`] Go's
//! `IP.String()`.

use ipnet::{IpNet, Ipv4Net};
use std::net::IpAddr;

/// What Go's `net.ParseCIDR` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address as written, host bits kept (IPv4-mapped addresses as IPv4).
    pub addr: IpAddr,
    /// The network: the address with its host bits cleared.
    pub net: IpNet,
}

/// Go's `net.ParseIP` (IPv4-mapped addresses as IPv4, as Calico's `cnet.ParseIP` keeps them).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(unmapped)
}

/// Go's `net.ParseCIDR`.
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    // Go cuts at the first `/`; a second one fails the prefix length.
    let (addr, len) = s.split_once('/')?;
    let written: IpAddr = addr.parse().ok()?;
    let len = prefix_len(len)?;
    let net = IpNet::new(written, len).ok()?.trunc();
    Some(Cidr {
        addr: unmapped(written),
        net: unmapped_net(net),
    })
}

/// Calico's `ParseCIDROrIP`: a CIDR, else a bare address as its own network (/32 or /128).
pub fn parse_cidr_or_ip(s: &str) -> Option<Cidr> {
    parse_cidr(s).or_else(|| {
        let addr = parse_ip(s)?;
        Some(Cidr {
            addr,
            net: IpNet::from(addr),
        })
    })
}

/// Go's `dtoi` over the whole text: one or more ASCII digits, nothing else. The family's
/// bound is checked by `IpNet::new`.
fn prefix_len(s: &str) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only, so no sign slips through; too many to fit is out of range anyway.
    u8::try_from(s.parse::<u32>().ok()?).ok()
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn unmapped_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirrors Go's `net.ParseCIDR` (`ParseCIDR` in net/ip.go, its `parseCIDRTests`, and what
    /// Go prints: the address with `IP.String()`, the network with `IPNet.String()`). The
    /// expectations were produced by Go's own `net.ParseCIDR`.
    #[test]
    fn cidrs_are_read_and_printed_as_go_does() {
        for (input, want) in [
            ("10.0.0.5/8", Some(("10.0.0.5", "10.0.0.0/8"))),
            ("192.168.1.1/32", Some(("192.168.1.1", "192.168.1.1/32"))),
            ("0.0.0.0/0", Some(("0.0.0.0", "0.0.0.0/0"))),
            ("135.104.0.1/24", Some(("135.104.0.1", "135.104.0.0/24"))),
            // Leading zeros in the prefix length are fine.
            ("10.1.2.3/08", Some(("10.1.2.3", "10.0.0.0/8"))),
            ("10.1.2.3/0008", Some(("10.1.2.3", "10.0.0.0/8"))),
            (
                "10.1.2.3/000000000000000000008",
                Some(("10.1.2.3", "10.0.0.0/8")),
            ),
            ("2001:db8::1/32", Some(("2001:db8::1", "2001:db8::/32"))),
            ("2001:DB8::1/48", Some(("2001:db8::1", "2001:db8::/48"))),
            ("2001:DB8::1/128", Some(("2001:db8::1", "2001:db8::1/128"))),
            ("::1/128", Some(("::1", "::1/128"))),
            ("abcd:2345::/24", Some(("abcd:2345::", "abcd:2300::/24"))),
            (
                "2001:db8:0:0:1:0:0:1/128",
                Some(("2001:db8::1:0:0:1", "2001:db8::1:0:0:1/128")),
            ),
            // IPv4-mapped: the address is IPv4; the network is IPv4 from /96 on.
            ("::ffff:10.1.2.3/120", Some(("10.1.2.3", "10.1.2.0/24"))),
            ("::ffff:a01:203/120", Some(("10.1.2.3", "10.1.2.0/24"))),
            ("::ffff:10.1.2.3/128", Some(("10.1.2.3", "10.1.2.3/32"))),
            ("::ffff:10.1.2.3/96", Some(("10.1.2.3", "0.0.0.0/0"))),
            ("::ffff:10.1.2.3/95", Some(("10.1.2.3", "::fffe:0:0/95"))),
            ("::ffff:10.1.2.3/64", Some(("10.1.2.3", "::/64"))),
            ("::ffff:10.1.2.3/0", Some(("10.1.2.3", "::/0"))),
            // IPv4-compatible (no ffff) is plain IPv6.
            ("::10.1.2.3/120", Some(("::a01:203", "::a01:200/120"))),
            ("10.0.0.0/33", None),
            ("192.168.1.1/35", None),
            ("2001:db8::/129", None),
            ("192.168.1.1/255.255.255.0", None),
            ("10.0.0.0", None),
            ("10.0.0.0/", None),
            ("/8", None),
            ("", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.0/-0", None),
            ("2001:db8::1/-1", None),
            ("10.0.0.0/ 8", None),
            ("10.0.0.0/8 ", None),
            (" 10.0.0.0/8", None),
            ("10.0.0.0/8/8", None),
            ("10.0.0.0/99999999999", None),
            ("-0.0.0.0/32", None),
            // Leading zeros in an IPv4 field are refused, zones too.
            ("010.0.0.0/8", None),
            ("10.0.0.00/8", None),
            ("127.000.000.001/32", None),
            ("fe80::1%eth0/64", None),
            ("nonsense", None),
        ] {
            let got = parse_cidr(input).map(|c| (c.addr.to_string(), c.net.to_string()));
            let want = want.map(|(a, n)| (a.to_string(), n.to_string()));
            assert_eq!(got, want, "{input:?}");
        }
    }

    /// Mirrors Go's `net.ParseIP` (its `parseIPTests`), with IPv4-mapped addresses as IPv4 as
    /// Calico's `cnet.ParseIP` makes them. Expectations produced by Go's `net.ParseIP`.
    #[test]
    fn addresses_are_read_as_go_does() {
        for (input, want) in [
            ("127.0.0.1", Some("127.0.0.1")),
            ("::ffff:127.1.2.3", Some("127.1.2.3")),
            ("::ffff:7f01:0203", Some("127.1.2.3")),
            ("0:0:0:0:0000:ffff:127.1.2.3", Some("127.1.2.3")),
            ("0:0:0:0::ffff:127.1.2.3", Some("127.1.2.3")),
            ("::10.1.2.3", Some("::a01:203")),
            ("1:2:3:4:5:6:7::", Some("1:2:3:4:5:6:7:0")),
            ("::1:2:3:4:5:6:7", Some("0:1:2:3:4:5:6:7")),
            ("1:2:3:4:5:6:1.2.3.4", Some("1:2:3:4:5:6:102:304")),
            ("1:2:3:4:5:1.2.3.4", None),
            // At most four hex digits a field (Go 1.22+'s netip; Calico 3.32 is built with Go 1.25).
            ("00001::", None),
            ("1:2:3:4:5:6:7:8::", None),
            ("a1:a2:a3:a4::b1:b2:b3:b4", None),
            ("127.001.002.003", None),
            ("::ffff:127.001.002.003", None),
            ("0123.0.0.1", None),
            ("1.2..4", None),
            ("127.0.0.256", None),
            ("fe80::1%eth0", None),
            ("10.0.0.0/8", None),
            ("", None),
        ] {
            assert_eq!(
                parse_ip(input).map(|a| a.to_string()).as_deref(),
                want,
                "{input:?}"
            );
        }
    }

    /// Mirrors libcalico-go `ParseCIDROrIP`: a CIDR, else an address as /32 or /128.
    #[test]
    fn a_bare_address_is_its_own_network() {
        let c = parse_cidr_or_ip("10.1.2.3").expect("an address");
        assert_eq!(
            (c.addr.to_string(), c.net.to_string()),
            ("10.1.2.3".into(), "10.1.2.3/32".into())
        );
        let c = parse_cidr_or_ip("::ffff:10.1.2.3").expect("a mapped address");
        assert_eq!(c.net.to_string(), "10.1.2.3/32");
        let c = parse_cidr_or_ip("fd00::5").expect("an address");
        assert_eq!(c.net.to_string(), "fd00::5/128");
        let c = parse_cidr_or_ip("10.1.2.3/26").expect("a CIDR");
        assert_eq!(
            (c.addr.to_string(), c.net.to_string()),
            ("10.1.2.3".into(), "10.1.2.0/26".into())
        );
        for bad in ["10.1.2.3/33", "10.1.2.3/", "010.1.2.3", "fe80::1%eth0", "x"] {
            assert_eq!(parse_cidr_or_ip(bad), None, "{bad}");
        }
    }
}
