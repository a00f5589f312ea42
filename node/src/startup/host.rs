//! What the start-up asks of the kernel, behind [`Host`]: the interfaces with their
//! addresses and MTUs, the source address the routing table picks towards a destination
//! (`can-reach`), and the host name. [`LinuxHost`] asks the kernel of the calling thread's
//! network namespace (rtnetlink through `calico-dataplane`, a UDP socket, `uname`); unit
//! tests use a fixed [`StaticHost`].

use calico_dataplane::netlink::Netlink;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// A failed question to the kernel.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// One network interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Operationally up (`IFF_RUNNING`).
    pub running: bool,
    /// Every address, link-locals included, with its prefix length, in the kernel's order.
    pub addresses: Vec<IpNet>,
}

/// The kernel as the start-up sees it.
pub trait Host {
    /// Every interface, in ifindex order.
    fn interfaces(&self) -> Result<Vec<HostInterface>, HostError>;

    /// The local address the kernel would send from towards `dest` (an address or a host
    /// name) over UDP, as Calico's `can-reach` asks it: a connected UDP socket, no packet
    /// sent.
    fn source_towards(&self, dest: &str, v4: bool) -> Result<IpAddr, HostError>;

    /// The kernel's host name.
    fn hostname(&self) -> Result<String, HostError>;
}

/// The kernel of the calling thread's network namespace.
pub struct LinuxHost;

impl Host for LinuxHost {
    fn interfaces(&self) -> Result<Vec<HostInterface>, HostError> {
        let nl = Netlink::host().map_err(|e| HostError(e.to_string()))?;
        let mut out: Vec<HostInterface> = nl
            .interfaces()
            .map_err(|e| HostError(e.to_string()))?
            .into_iter()
            .map(|i| HostInterface {
                index: i.index,
                name: i.name,
                mtu: i.mtu.unwrap_or(0),
                running: i.running,
                addresses: i.addresses,
            })
            .collect();
        out.sort_by_key(|i| i.index);
        Ok(out)
    }

    fn source_towards(&self, dest: &str, v4: bool) -> Result<IpAddr, HostError> {
        let family = if v4 { "IPv4" } else { "IPv6" };
        // An address literal (IPv6 with or without brackets), else a name to resolve.
        let literal = dest
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let target = match literal {
            Some(ip) => SocketAddr::new(ip, 80),
            None => (dest, 80)
                .to_socket_addrs()
                .map_err(|e| HostError(format!("cannot resolve {dest}: {e}")))?
                .find(|a| a.is_ipv4() == v4)
                .ok_or_else(|| HostError(format!("{dest} has no {family} address")))?,
        };
        if target.is_ipv4() != v4 {
            return Err(HostError(format!("{dest} is not an {family} address")));
        }
        let any: IpAddr = if v4 {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let sock = UdpSocket::bind((any, 0))
            .map_err(|e| HostError(format!("binding a UDP socket: {e}")))?;
        sock.connect(target)
            .map_err(|e| HostError(format!("cannot reach {target}: {e}")))?;
        sock.local_addr()
            .map(|a| a.ip())
            .map_err(|e| HostError(format!("the UDP socket's address: {e}")))
    }

    fn hostname(&self) -> Result<String, HostError> {
        nix::unistd::gethostname()
            .map_err(|e| HostError(format!("cannot read the host name: {e}")))?
            .into_string()
            .map_err(|_| HostError("the host name is not UTF-8".into()))
    }
}

/// A host whose answers are fixed: for unit tests of the logic above.
#[derive(Debug, Clone, Default)]
pub struct StaticHost {
    pub interfaces: Vec<HostInterface>,
    /// `can-reach` answers: destination and family to the source address.
    pub routes: Vec<(String, IpAddr)>,
    pub hostname: String,
}

impl StaticHost {
    /// Adds an interface (running, MTU 1500) with `addresses`; indexes follow the order.
    pub fn with_interface(mut self, name: &str, addresses: &[&str]) -> Self {
        let index = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX) + 1;
        self.interfaces.push(HostInterface {
            index,
            name: name.to_string(),
            mtu: 1500,
            running: true,
            addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        });
        self
    }
}

impl Host for StaticHost {
    fn interfaces(&self) -> Result<Vec<HostInterface>, HostError> {
        Ok(self.interfaces.clone())
    }

    fn source_towards(&self, dest: &str, v4: bool) -> Result<IpAddr, HostError> {
        self.routes
            .iter()
            .find(|(d, ip)| d == dest && ip.is_ipv4() == v4)
            .map(|(_, ip)| *ip)
            .ok_or_else(|| HostError(format!("cannot reach {dest}: Network is unreachable")))
    }

    fn hostname(&self) -> Result<String, HostError> {
        if self.hostname.is_empty() {
            return Err(HostError("no host name".into()));
        }
        Ok(self.hostname.clone())
    }
}
