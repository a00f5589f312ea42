//! Links, addresses and routes over rtnetlink: `netlink-packet-route` messages on
//! [`calico_netlink::Socket`], one socket per network namespace, with the few operations the
//! plugins need, the route lookup (`ip route get`) portmap needs, and every interface with
//! all its addresses (calico-node's address detection).

use crate::error::DataplaneError;
use crate::netns;
use calico_netlink::packet::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use calico_netlink::{NetlinkError, Socket};
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use std::cell::RefCell;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The route protocol our routes carry (`ip route ... proto 77`), so anything we created can
/// be told apart from routes made by the system, BIRD or Felix.
pub const ROUTE_PROTOCOL: u8 = 77;

/// A link as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    pub mtu: Option<u32>,
    /// For a veth, the peer's index in the peer's namespace (`IFLA_LINK`).
    pub peer: Option<u32>,
}

/// A route of the main table, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope: u8,
    pub protocol: u8,
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// Link scope (`dev X scope link`) or universe.
    pub link_scope: bool,
}

/// A netlink socket in one namespace.
pub struct Netlink {
    /// Borrowed for one exchange at a time (the socket numbers its requests).
    sock: RefCell<Socket<RouteNetlinkMessage>>,
}

/// The error for `op`, worded as before the socket layer was ours (rtnetlink's words).
pub(crate) fn failed(op: impl Into<String>, e: NetlinkError) -> DataplaneError {
    match e {
        NetlinkError::Kernel { errno, .. } => DataplaneError::netlink(
            op,
            format!(
                "Received a netlink error message {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        ),
        NetlinkError::Io { source, .. } => DataplaneError::netlink(op, source),
        NetlinkError::Decode { reason, .. } => DataplaneError::netlink(op, reason),
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: None,
        peer: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) if link.name.is_empty() => link.name = n.clone(),
            LinkAttribute::Address(b) if link.mac.is_none() => {
                link.mac = <[u8; 6]>::try_from(b.as_slice()).ok();
            }
            LinkAttribute::Mtu(v) if link.mtu.is_none() => link.mtu = Some(*v),
            LinkAttribute::Link(i) if link.peer.is_none() => link.peer = Some(*i),
            _ => {}
        }
    }
    link
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let v4 = m.header.address_family == AddressFamily::Inet;
    let dst_ip = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => ip_of(d),
            _ => None,
        })
        .unwrap_or(if v4 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
    Some(Route {
        dst: IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?,
        gateway: m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => ip_of(g),
            _ => None,
        }),
        oif: m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        scope: u8::from(m.header.scope),
        protocol: u8::from(m.header.protocol),
    })
}

/// A main-table unicast route message of `dst`'s family (the header `ip route` sends).
fn main_table_route(family: AddressFamily, prefix_len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    m.header.destination_prefix_length = prefix_len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m
}

/// An address message for `addr` on link `index` (with `IFA_LOCAL`, and the broadcast
/// address for IPv4 prefixes shorter than /31, as `ip address add` sends).
fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family_of(addr.addr());
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    if let IpNet::V4(net) = addr
        && net.prefix_len() < 31
    {
        m.attributes
            .push(AddressAttribute::Broadcast(net.broadcast()));
    }
    m
}

/// A message naming link `index` only.
fn link_message(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

impl Netlink {
    /// A socket in the calling thread's namespace (the host's).
    pub fn host() -> Result<Self, DataplaneError> {
        let sock =
            Socket::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(|e| failed("socket", e))?;
        Ok(Netlink {
            sock: RefCell::new(sock),
        })
    }

    /// A socket in namespace `ns`.
    pub fn in_netns(ns: &File, path: &Path) -> Result<Self, DataplaneError> {
        netns::within(ns, path, Self::host)?
    }

    fn request(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sock.borrow_mut().request(op, msg, flags)
    }

    /// The socket, for the other modules' messages (routes, VXLAN, neighbours); borrowed
    /// for one exchange at a time.
    pub(crate) fn socket(&self) -> std::cell::RefMut<'_, Socket<RouteNetlinkMessage>> {
        self.sock.borrow_mut()
    }

    /// The link called `name`, if any.
    pub fn link(&self, name: &str) -> Result<Option<Link>, DataplaneError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
            .map_err(|e| failed(format!("get link {name}"), e))
    }

    /// The link with index `index`, if any.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, DataplaneError> {
        self.get_link(link_message(index))
            .map_err(|e| failed(format!("get link {index}"), e))
    }

    fn get_link(&self, m: LinkMessage) -> Result<Option<Link>, NetlinkError> {
        match self.request("get link", RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.is(&[Errno::ENODEV]) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>, DataplaneError> {
        let replies = self
            .request(
                "dump links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| failed("dump links", e))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Deletes a link; one already gone is fine.
    pub fn delete_link(&self, index: u32) -> Result<(), DataplaneError> {
        let msg = RouteNetlinkMessage::DelLink(link_message(index));
        match self.request("delete link", msg, NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(e) if e.is(&[Errno::ENODEV]) => Ok(()),
            Err(e) => Err(failed(format!("delete link {index}"), e)),
        }
    }

    /// Changes a link (`RTM_SETLINK`).
    fn set_link(&self, m: LinkMessage) -> Result<(), NetlinkError> {
        let flags = NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        self.request("set link", RouteNetlinkMessage::SetLink(m), flags)
            .map(|_| ())
    }

    pub fn set_up(&self, index: u32) -> Result<(), DataplaneError> {
        let mut m = link_message(index);
        m.header.flags |= LinkFlags::Up;
        m.header.change_mask |= LinkFlags::Up;
        self.set_link(m)
            .map_err(|e| failed(format!("set link {index} up"), e))
    }

    /// Turns on IPv4 settings of an interface (`ipv4/conf/<if>/forwarding`, `proxy_arp`,
    /// `route_localnet`) in one request. Each write under `/proc/sys` instead costs a path
    /// lookup that grows with the interfaces on the node (0.05-0.4 ms each with 500 pods),
    /// and `forwarding` spins on the rtnl lock while the kernel frees old namespaces.
    pub fn enable_ipv4_conf(
        &self,
        index: u32,
        forwarding: bool,
        proxy_arp: bool,
        route_localnet: bool,
    ) -> Result<(), DataplaneError> {
        // Only the non-zero fields are sent, so nothing else of the interface changes.
        let mut conf = InetDevConf::default();
        conf.forwarding = i32::from(forwarding);
        conf.proxy_arp = i32::from(proxy_arp);
        conf.route_localnet = i32::from(route_localnet);
        let mut m = link_message(index);
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.set_link(m)
            .map_err(|e| failed(format!("set IPv4 settings of link {index}"), e))
    }

    /// Creates a veth pair in one request: `name` here, `peer` directly inside `peer_ns`
    /// (no move between namespaces, which costs the kernel a `synchronize_net`); `name` comes
    /// up at once if `up` (the peer cannot: the kernel opens it before the pair is joined,
    /// and a veth without its peer refuses to open). Both ends get `queues` transmit and
    /// receive queues (`IFLA_NUM_TX_QUEUES`/`IFLA_NUM_RX_QUEUES`; the kernel's default for a
    /// veth is one per possible CPU).
    /// `Ok(false)` if a link of either name already exists.
    #[allow(clippy::too_many_arguments)]
    pub fn add_veth(
        &self,
        name: &str,
        mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_ns: &File,
        mtu: Option<u32>,
        queues: u32,
        up: bool,
    ) -> Result<bool, DataplaneError> {
        let queue_counts = [
            LinkAttribute::NumTxQueues(queues),
            LinkAttribute::NumRxQueues(queues),
        ];
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.extend([
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::Address(peer_mac.to_vec()),
            LinkAttribute::NetNsFd(peer_ns.as_raw_fd()),
        ]);
        peer_msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
        peer_msg.attributes.extend(queue_counts.clone());
        let mut m = LinkMessage::default();
        if up {
            m.header.flags |= LinkFlags::Up;
            m.header.change_mask |= LinkFlags::Up;
        }
        m.attributes.extend([
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Address(mac.to_vec()),
        ]);
        m.attributes.extend(mtu.map(LinkAttribute::Mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        m.attributes.extend(queue_counts);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self.request("create veth", RouteNetlinkMessage::NewLink(m), flags) {
            Ok(_) => Ok(true),
            Err(e) if e.is(&[Errno::EEXIST]) => Ok(false),
            Err(e) => Err(failed(format!("create veth {name} with peer {peer}"), e)),
        }
    }

    /// Adds an address (IPv6 without duplicate address detection).
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let mut m = address_message(index, addr);
        if addr.addr().is_ipv6() {
            m.header.flags |= AddressHeaderFlags::Nodad;
        }
        let flags = NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        match self.request("add address", RouteNetlinkMessage::NewAddress(m), flags) {
            Ok(_) => Ok(()),
            Err(e) if e.is(&[Errno::EEXIST]) => Ok(()),
            Err(e) => Err(failed(format!("add address {addr}"), e)),
        }
    }

    /// Removes an address; one already gone is fine.
    pub fn delete_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let msg = RouteNetlinkMessage::DelAddress(address_message(index, addr));
        match self.request("delete address", msg, NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(e) if e.is(&[Errno::EADDRNOTAVAIL, Errno::ENODEV]) => Ok(()),
            Err(e) => Err(failed(format!("delete address {addr}"), e)),
        }
    }

    /// The addresses on a link (global scope only: no link-locals).
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>, DataplaneError> {
        self.dump_addresses(Some(index))
    }

    /// The addresses on every link of the namespace (global scope only).
    pub fn all_addresses(&self) -> Result<Vec<IpNet>, DataplaneError> {
        self.dump_addresses(None)
    }

    fn dump_addresses(&self, index: Option<u32>) -> Result<Vec<IpNet>, DataplaneError> {
        let replies = self
            .request(
                "dump addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| failed("dump addresses", e))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(m) => Some(m),
                _ => None,
            })
            .filter(|m| index.is_none_or(|i| m.header.index == i))
            .filter(|m| m.header.scope == AddressScope::Universe)
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNet::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Adds a main-table route with our protocol. `Ok(false)` if a route to that
    /// destination exists already.
    pub fn add_route(&self, r: &NewRoute) -> Result<bool, DataplaneError> {
        let mut m = main_table_route(family_of(r.dst.addr()), r.dst.prefix_len());
        m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        if r.link_scope {
            m.header.scope = RouteScope::Link;
        }
        m.attributes
            .push(RouteAttribute::Destination(route_address(r.dst.addr())));
        m.attributes.push(RouteAttribute::Oif(r.oif));
        if let Some(g) = r.gateway.filter(|g| g.is_ipv4() == r.dst.addr().is_ipv4()) {
            m.attributes.push(RouteAttribute::Gateway(route_address(g)));
        }
        let flags = NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        match self.request("add route", RouteNetlinkMessage::NewRoute(m), flags) {
            Ok(_) => Ok(true),
            Err(e) if e.is(&[Errno::EEXIST]) => Ok(false),
            Err(e) => Err(failed(format!("add route {}", r.dst), e)),
        }
    }

    /// Deletes a main-table route to `dst` through `oif`, whatever its protocol and scope;
    /// one already gone is fine.
    pub fn delete_route(&self, dst: IpNet, oif: u32) -> Result<(), DataplaneError> {
        let mut m = main_table_route(family_of(dst.addr()), dst.prefix_len());
        // The kernel matches a deletion's protocol and scope unless they are left open
        // (unspec, "nowhere"): ours are ROUTE_PROTOCOL and link scope, not the message's
        // defaults, which matched nothing and were taken for "already gone".
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        m.attributes
            .push(RouteAttribute::Destination(route_address(dst.addr())));
        m.attributes.push(RouteAttribute::Oif(oif));
        match self.request("delete route", RouteNetlinkMessage::DelRoute(m), NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(e) if e.is(&[Errno::ESRCH, Errno::ENOENT]) => Ok(()),
            Err(e) => Err(failed(format!("delete route {dst}"), e)),
        }
    }

    /// The main table's routes of a family.
    pub fn routes(&self, v4: bool) -> Result<Vec<Route>, DataplaneError> {
        let family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let replies = self
            .request(
                "dump routes",
                RouteNetlinkMessage::GetRoute(main_table_route(family, 0)),
                NLM_F_DUMP,
            )
            .map_err(|e| failed("dump routes", e))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m)
                    if m.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    route_of(m)
                }
                _ => None,
            })
            .collect())
    }

    /// The index of the interface this namespace would send to `ip` through (`ip route
    /// get`), if it has a route there.
    pub fn route_towards(&self, ip: IpAddr) -> Result<Option<u32>, NetlinkError> {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(ip);
        m.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(route_address(ip)));
        match self.request("route lookup", RouteNetlinkMessage::GetRoute(m), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }),
                _ => None,
            })),
            // No route: no interface.
            Err(e) if e.is(&[Errno::ENETUNREACH, Errno::EHOSTUNREACH]) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A link with every address on it, as host address detection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    /// Operationally up (`IFF_RUNNING`), not only set up by the administrator.
    pub running: bool,
    /// Every address of every scope (link-locals included), with its prefix length, in the
    /// kernel's dump order.
    pub addresses: Vec<IpNet>,
}

impl Netlink {
    /// Every link with all its addresses: one dump of links and one of addresses.
    pub fn interfaces(&self) -> Result<Vec<Interface>, DataplaneError> {
        let links = self
            .request(
                "dump links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| failed("dump links", e))?;
        let addresses = self
            .request(
                "dump addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| failed("dump addresses", e))?;
        let mut out: Vec<Interface> = links
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => {
                    let l = link_of(m);
                    Some(Interface {
                        index: l.index,
                        name: l.name,
                        mtu: l.mtu,
                        running: m.header.flags.contains(LinkFlags::Running),
                        addresses: Vec::new(),
                    })
                }
                _ => None,
            })
            .collect();
        for r in &addresses {
            let RouteNetlinkMessage::NewAddress(m) = r else {
                continue;
            };
            // The local address where there is one (a point-to-point link's `IFA_ADDRESS` is
            // the peer's), as Go's netlink reads it.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let Some(ip) = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            }) else {
                continue;
            };
            let (Ok(net), Some(iface)) = (
                IpNet::new(ip, m.header.prefix_len),
                out.iter_mut().find(|i| i.index == m.header.index),
            ) else {
                continue;
            };
            iface.addresses.push(net);
        }
        Ok(out)
    }
}

/// The name of the interface the calling thread's namespace would send to `ip` through, if
/// any (for settings that belong on that interface, as portmap's `route_localnet`).
pub fn interface_towards(ip: IpAddr) -> Result<Option<String>, NetlinkError> {
    let sock = Socket::open(netlink_sys::protocols::NETLINK_ROUTE)?;
    let nl = Netlink {
        sock: RefCell::new(sock),
    };
    let Some(oif) = nl.route_towards(ip)? else {
        return Ok(None);
    };
    // The name by ioctl: no second netlink round trip.
    Ok(nix::net::if_::if_indextoname(oif)
        .ok()
        .and_then(|name| name.into_string().ok()))
}
