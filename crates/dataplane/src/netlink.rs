//! A small synchronous face on rtnetlink: one socket in one network namespace, driven by a
//! private single-threaded runtime, with the few operations the plugins need.

use crate::error::DataplaneError;
use crate::netns;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags,
    LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The route protocol our routes carry (`ip route ... proto 77`), so anything we created can
/// be told apart from routes made by the system, BIRD or Felix.
pub const ROUTE_PROTOCOL: u8 = 77;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const ESRCH: i32 = 3;
const ENOENT: i32 = 2;
const EADDRNOTAVAIL: i32 = 99;
const RT_TABLE_MAIN: u8 = 254;

/// The errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

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
    /// Shared by the sockets of one operation (see [`Netlink::in_netns_sharing`]).
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    handle: Handle,
}

fn mac_of(attrs: &[LinkAttribute]) -> Option<[u8; 6]> {
    attrs.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

fn link_of(m: &LinkMessage) -> Link {
    Link {
        index: m.header.index,
        name: m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default(),
        mac: mac_of(&m.attributes),
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        }),
        peer: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        }),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
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

impl Netlink {
    fn with_connection(
        rt: Option<std::sync::Arc<tokio::runtime::Runtime>>,
        make: impl FnOnce() -> std::io::Result<(
            rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
            Handle,
            futures::channel::mpsc::UnboundedReceiver<(
                rtnetlink::packet_core::NetlinkMessage<
                    rtnetlink::packet_route::RouteNetlinkMessage,
                >,
                rtnetlink::sys::SocketAddr,
            )>,
        )>,
    ) -> Result<Self, DataplaneError> {
        let rt = match rt {
            Some(rt) => rt,
            None => std::sync::Arc::new(
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(DataplaneError::Runtime)?,
            ),
        };
        // The socket must be created inside the runtime's context (it registers with its
        // reactor), and in the namespace the caller is in right now.
        let (conn, handle, _) = {
            let _guard = rt.enter();
            make().map_err(|e| DataplaneError::netlink("socket", e))?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// A socket in the calling thread's namespace (the host's).
    pub fn host() -> Result<Self, DataplaneError> {
        Self::with_connection(None, rtnetlink::new_connection)
    }

    /// A socket in namespace `ns`; the calling thread returns to its own at once.
    pub fn in_netns(ns: &File, path: &Path) -> Result<Self, DataplaneError> {
        netns::within(ns, path, || {
            Self::with_connection(None, rtnetlink::new_connection)
        })?
    }

    /// As [`Netlink::in_netns`], driven by this socket's runtime (one runtime less to start
    /// on the ADD path). Use both from the same thread.
    pub fn in_netns_sharing(&self, ns: &File, path: &Path) -> Result<Self, DataplaneError> {
        let rt = self.rt.clone();
        netns::within(ns, path, || {
            Self::with_connection(Some(rt), rtnetlink::new_connection)
        })?
    }

    /// The link called `name`, if any.
    pub fn link(&self, name: &str) -> Result<Option<Link>, DataplaneError> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match self.rt.block_on(req.try_next()) {
            Ok(m) => Ok(m.as_ref().map(link_of)),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
            Err(e) => Err(DataplaneError::netlink(format!("get link {name}"), e)),
        }
    }

    /// The link with index `index`, if any.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, DataplaneError> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match self.rt.block_on(req.try_next()) {
            Ok(m) => Ok(m.as_ref().map(link_of)),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
            Err(e) => Err(DataplaneError::netlink(format!("get link {index}"), e)),
        }
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>, DataplaneError> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| DataplaneError::netlink("dump links", e))?;
        Ok(msgs.iter().map(link_of).collect())
    }

    /// Deletes a link; one already gone is fine.
    pub fn delete_link(&self, index: u32) -> Result<(), DataplaneError> {
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(format!("delete link {index}"), e)),
        }
    }

    pub fn set_up(&self, index: u32) -> Result<(), DataplaneError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| DataplaneError::netlink(format!("set link {index} up"), e))
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
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| DataplaneError::netlink(format!("set IPv4 settings of link {index}"), e))
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
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd());
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .address(mac.to_vec());
        if up {
            msg = msg.up();
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            msg = msg.mtu(mtu);
        }
        let queue_counts = [
            LinkAttribute::NumTxQueues(queues),
            LinkAttribute::NumRxQueues(queues),
        ];
        let mut peer_msg = peer_msg.build();
        peer_msg.attributes.extend(queue_counts.clone());
        let mut msg = msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        msg.attributes.extend(queue_counts);
        match self.rt.block_on(self.handle.link().add(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(EEXIST)) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(
                format!("create veth {name} with peer {peer}"),
                e,
            )),
        }
    }

    /// Adds an address (IPv6 without duplicate address detection).
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
        }
        match self.rt.block_on(req.execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(EEXIST)) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(format!("add address {addr}"), e)),
        }
    }

    /// Removes an address; one already gone is fine.
    pub fn delete_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let mut add = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        let msg = add.message_mut().clone();
        match self.rt.block_on(self.handle.address().del(msg).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL | ENODEV)) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(format!("delete address {addr}"), e)),
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
        let mut get = self.handle.address().get();
        if let Some(i) = index {
            get = get.set_link_index_filter(i);
        }
        let msgs: Vec<_> = self
            .rt
            .block_on(get.execute().try_collect())
            .map_err(|e| DataplaneError::netlink("dump addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| u8::from(m.header.scope) == 0)
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
        let proto = RouteProtocol::from(ROUTE_PROTOCOL);
        let scope = if r.link_scope {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        let msg = match (r.dst, r.gateway) {
            (IpNet::V4(dst), gw) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.addr(), dst.prefix_len())
                    .output_interface(r.oif)
                    .protocol(proto)
                    .scope(scope);
                if let Some(IpAddr::V4(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
            (IpNet::V6(dst), gw) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dst.addr(), dst.prefix_len())
                    .output_interface(r.oif)
                    .protocol(proto)
                    .scope(scope);
                if let Some(IpAddr::V6(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        match self.rt.block_on(self.handle.route().add(msg).execute()) {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(EEXIST)) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(format!("add route {}", r.dst), e)),
        }
    }

    /// Deletes a main-table route; one already gone is fine.
    pub fn delete_route(&self, dst: IpNet, oif: u32) -> Result<(), DataplaneError> {
        let msg = match dst {
            IpNet::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .output_interface(oif)
                .build(),
            IpNet::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .output_interface(oif)
                .build(),
        };
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(format!("delete route {dst}"), e)),
        }
    }

    /// The main table's routes of a family.
    pub fn routes(&self, v4: bool) -> Result<Vec<Route>, DataplaneError> {
        let msg = if v4 {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let req = self.handle.route().get(msg).execute();
        let msgs: Vec<RouteMessage> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| DataplaneError::netlink("dump routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == RT_TABLE_MAIN)
            .filter_map(route_of)
            .collect())
    }
}
