//! The VXLAN tunnel device (`vxlan.calico`) and the question whether IPIP (`tunl0`) can be
//! had at all.
//!
//! [`ensure_vxlan`] mirrors Felix's VXLAN device handling (felix/dataplane/linux/
//! vxlan_mgr.go `vxlanManager.device` and `vxlanLinksIncompat`, run by the route manager's
//! `keepDeviceInSync`): a device whose kind, VNI, UDP port, local address or parent differ
//! is deleted and made again (the kernel cannot change them in place); the MTU is set in
//! place. Felix also recreates the device for another MAC; we set the MAC in place, which
//! the kernel allows and which keeps the device (and its routes) alive. Learning is off
//! (the FDB is programmed, see [`crate::neigh`]); the tunnel address is the device's only
//! IPv4 address, as a /32; the device is up. What to do is decided by the pure
//! [`reconcile`], tested without root.
//!
//! [`ipip_available`] asks the kernel whether an `ipip` link can be made, in a throwaway
//! network namespace so nothing of the caller's changes.

use crate::error::DataplaneError;
use crate::netlink::{Netlink, failed};
use calico_netlink::packet::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use nix::errno::Errno;
use std::net::Ipv4Addr;

/// Calico's VXLAN device name.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Calico's default VNI and UDP port.
pub const DEFAULT_VNI: u32 = 4096;
pub const DEFAULT_PORT: u16 = 4789;
/// The IPIP device every namespace gets once the `ipip` module is loaded.
pub const IPIP_DEVICE: &str = "tunl0";

/// The device as wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The node's underlay IPv4 address (the tunnel's source).
    pub local: Ipv4Addr,
    /// The underlay interface, if the tunnel is bound to one.
    pub parent_index: Option<u32>,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The node's VXLAN tunnel address, installed as a /32.
    pub address: Ipv4Addr,
}

/// A VXLAN link as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub index: u32,
    /// The link's kind (`vxlan`, or another when a link of another kind has the name).
    pub kind: Option<String>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub parent_index: Option<u32>,
    pub learning: Option<bool>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// What [`ensure_vxlan`] has to do to an existing device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Delete and create again (VNI, port, local address, parent, learning or kind differ).
    pub recreate: bool,
    pub set_mac: bool,
    pub set_mtu: bool,
    pub set_up: bool,
}

/// What turns `have` (none: create) into `want`.
pub fn reconcile(want: &VxlanDevice, have: Option<&ObservedVxlan>) -> Reconcile {
    let Some(have) = have else {
        return Reconcile {
            recreate: true,
            ..Default::default()
        };
    };
    let recreate = have.kind.as_deref() != Some("vxlan")
        || have.vni != Some(want.vni)
        || have.port != Some(want.port)
        || have.local != Some(want.local)
        || have.parent_index.filter(|i| *i != 0) != want.parent_index
        || have.learning == Some(true);
    if recreate {
        return Reconcile {
            recreate,
            ..Default::default()
        };
    }
    Reconcile {
        recreate: false,
        set_mac: have.mac != Some(want.mac),
        set_mtu: have.mtu != Some(want.mtu),
        set_up: !have.up,
    }
}

fn observe(m: &LinkMessage) -> ObservedVxlan {
    let mut o = ObservedVxlan {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) => o.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(v) => o.mtu = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => o.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for v in attrs {
                                match v {
                                    InfoVxlan::Id(id) => o.vni = Some(*id),
                                    InfoVxlan::Port(p) => o.port = Some(*p),
                                    InfoVxlan::Local(l) => o.local = Some(*l),
                                    InfoVxlan::Link(l) => o.parent_index = Some(*l),
                                    InfoVxlan::Learning(l) => o.learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    o
}

/// The link called `name`, fully read (kind and VXLAN settings), if any.
pub fn observe_vxlan(nl: &Netlink, name: &str) -> Result<Option<ObservedVxlan>, DataplaneError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    let op = format!("get link {name}");
    match nl.socket().request(&op, RouteNetlinkMessage::GetLink(m), 0) {
        Ok(replies) => Ok(replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(observe(l)),
            _ => None,
        })),
        Err(e) if e.is(&[Errno::ENODEV]) => Ok(None),
        Err(e) => Err(failed(op, e)),
    }
}

fn create(nl: &Netlink, want: &VxlanDevice) -> Result<(), DataplaneError> {
    let mut data = vec![
        InfoVxlan::Id(want.vni),
        InfoVxlan::Local(want.local),
        InfoVxlan::Port(want.port),
        InfoVxlan::Learning(false),
    ];
    data.extend(want.parent_index.map(InfoVxlan::Link));
    let mut m = LinkMessage::default();
    m.header.flags |= LinkFlags::Up;
    m.header.change_mask |= LinkFlags::Up;
    m.attributes.extend([
        LinkAttribute::IfName(want.name.clone()),
        LinkAttribute::Address(want.mac.to_vec()),
        LinkAttribute::Mtu(want.mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]),
    ]);
    let op = format!("create vxlan device {}", want.name);
    nl.socket()
        .request(
            &op,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
        .map_err(|e| failed(op, e))
}

fn set(nl: &Netlink, index: u32, what: &str, m: LinkMessage) -> Result<(), DataplaneError> {
    let op = format!("set {what} of link {index}");
    nl.socket()
        .request(&op, RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
        .map(|_| ())
        .map_err(|e| failed(op, e))
}

/// Creates the device if missing and fixes what differs (see the module doc); returns its
/// index. Calling it again with the same `want` changes nothing.
pub fn ensure_vxlan(nl: &Netlink, want: &VxlanDevice) -> Result<u32, DataplaneError> {
    let have = observe_vxlan(nl, &want.name)?;
    let plan = reconcile(want, have.as_ref());
    let index = if plan.recreate {
        if let Some(old) = &have {
            log::info!(
                "recreating {} (its VNI, port, local address or parent differ)",
                want.name
            );
            nl.delete_link(old.index)?;
        }
        create(nl, want)?;
        observe_vxlan(nl, &want.name)?
            .ok_or_else(|| DataplaneError::netlink("create vxlan device", "gone after creation"))?
            .index
    } else {
        let index = have.map(|h| h.index).unwrap_or_default();
        if plan.set_mac {
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.attributes.push(LinkAttribute::Address(want.mac.to_vec()));
            set(nl, index, "MAC", m)?;
        }
        if plan.set_mtu {
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.attributes.push(LinkAttribute::Mtu(want.mtu));
            set(nl, index, "MTU", m)?;
        }
        if plan.set_up {
            nl.set_up(index)?;
        }
        index
    };
    // The tunnel address alone, as a /32.
    let address = IpNet::V4(Ipv4Net::from(want.address));
    for a in nl.addresses(index)? {
        if a.addr().is_ipv4() && a != address {
            nl.delete_address(index, a)?;
        }
    }
    nl.add_address(index, address)?;
    Ok(index)
}

/// Deletes the device called `name`; one that is not there is fine.
pub fn remove_vxlan(nl: &Netlink, name: &str) -> Result<(), DataplaneError> {
    match nl.link(name)? {
        Some(l) => nl.delete_link(l.index),
        None => Ok(()),
    }
}

/// Whether IPIP can be used, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipSupport {
    pub available: bool,
    /// How it was decided (for the agent's status and a test's skip reason).
    pub reason: String,
}

/// Whether this kernel can make an `ipip` link ([`ipip_support`]).
pub fn ipip_available() -> bool {
    ipip_support().available
}

/// Tries to make an `ipip` link in a throwaway network namespace (a thread that unshares
/// its own and ends at once), so nothing of the caller's namespace changes. The kernel
/// loads the module for it where it can; without the module the kind is unknown
/// (`EOPNOTSUPP`).
pub fn ipip_support() -> IpipSupport {
    let loaded = std::path::Path::new("/sys/module/ipip").exists();
    let attempt = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot make a throwaway network namespace to try: {e}"))?;
            let nl = Netlink::host().map_err(|e| e.to_string())?;
            let mut m = LinkMessage::default();
            m.attributes.extend([
                LinkAttribute::IfName("ipipprobe".into()),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::IpIp)]),
            ]);
            nl.socket()
                .request(
                    "create ipip link",
                    RouteNetlinkMessage::NewLink(m),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
                .map(|_| ())
                .map_err(|e| {
                    if e.is(&[Errno::EOPNOTSUPP]) {
                        "the kernel has no ipip module (creating an ipip link: kind not \
                         supported)"
                            .to_string()
                    } else {
                        e.to_string()
                    }
                })
        })
        .join()
    });
    match attempt {
        Ok(Ok(())) => IpipSupport {
            available: true,
            reason: "an ipip link can be created".into(),
        },
        Ok(Err(why)) if loaded => IpipSupport {
            available: false,
            reason: format!("ipip module loaded, but {why}"),
        },
        Ok(Err(why)) => IpipSupport {
            available: false,
            reason: why,
        },
        Err(_) => IpipSupport {
            available: false,
            reason: "the probe for ipip panicked".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> VxlanDevice {
        VxlanDevice {
            name: VXLAN_DEVICE.into(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            local: Ipv4Addr::new(192, 168, 0, 1),
            parent_index: None,
            mac: [0x66, 1, 2, 3, 4, 5],
            mtu: 1450,
            address: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    fn as_wanted() -> ObservedVxlan {
        let w = want();
        ObservedVxlan {
            index: 5,
            kind: Some("vxlan".into()),
            vni: Some(w.vni),
            port: Some(w.port),
            local: Some(w.local),
            parent_index: None,
            learning: Some(false),
            mac: Some(w.mac),
            mtu: Some(w.mtu),
            up: true,
        }
    }

    #[test]
    fn nothing_to_do_when_as_wanted() {
        assert_eq!(reconcile(&want(), Some(&as_wanted())), Reconcile::default());
    }

    #[test]
    fn missing_or_incompatible_is_recreated() {
        assert!(reconcile(&want(), None).recreate);
        for change in [
            |o: &mut ObservedVxlan| o.vni = Some(1),
            |o: &mut ObservedVxlan| o.port = Some(8472),
            |o: &mut ObservedVxlan| o.local = Some(Ipv4Addr::new(1, 1, 1, 1)),
            |o: &mut ObservedVxlan| o.parent_index = Some(3),
            |o: &mut ObservedVxlan| o.learning = Some(true),
            |o: &mut ObservedVxlan| o.kind = Some("dummy".into()),
        ] {
            let mut o = as_wanted();
            change(&mut o);
            assert!(reconcile(&want(), Some(&o)).recreate, "{o:?}");
        }
    }

    #[test]
    fn mac_mtu_and_state_are_fixed_in_place() {
        let mut o = as_wanted();
        o.mac = Some([0x66, 0, 0, 0, 0, 0]);
        o.mtu = Some(1500);
        o.up = false;
        let r = reconcile(&want(), Some(&o));
        assert_eq!(
            r,
            Reconcile {
                recreate: false,
                set_mac: true,
                set_mtu: true,
                set_up: true
            }
        );
    }
}
