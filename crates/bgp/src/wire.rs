//! The adapter between `rustbgpd-wire` (the codec) and our own types: OPEN building and
//! checking, UPDATE decoding into [`InboundUpdate`] with RFC 7606 dispositions, UPDATE
//! encoding from [`PathAttrs`] (IPv4 in the body, IPv6 in `MP_REACH`/`MP_UNREACH`), End-of-RIB
//! markers and NOTIFICATIONs. Pure: no sockets, no clocks.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustbgpd_wire::attribute::{AsPath, AsPathSegment, LargeCommunity, MpReachNlri, MpUnreachNlri};
use rustbgpd_wire::nlri::{Ipv4NlriEntry, Ipv4Prefix, Ipv6Prefix, NlriEntry, Prefix};
use rustbgpd_wire::notification::NotificationCode;
use rustbgpd_wire::update::Ipv4UnicastMode;
use rustbgpd_wire::validate::{ErrorDisposition, UpdateValidationOptions};
use rustbgpd_wire::{
    Afi, Capability, GracefulRestartFamily, Message, NotificationMessage, OpenMessage,
    PathAttribute, RouteRefreshMessage, Safi, UpdateMessage,
};

/// AS_TRANS (RFC 6793): the 2-octet AS sent in OPEN when ours does not fit.
pub const AS_TRANS: u16 = 23456;
/// The largest message without RFC 8654 extended messages.
pub const MAX_LEN: u16 = 4096;

/// An address family we carry: unicast only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }
    pub fn of_addr(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
    fn afi(self) -> Afi {
        match self {
            Family::Ipv4 => Afi::Ipv4,
            Family::Ipv6 => Afi::Ipv6,
        }
    }
    fn from_afi(afi: Afi) -> Option<Family> {
        match afi {
            Afi::Ipv4 => Some(Family::Ipv4),
            Afi::Ipv6 => Some(Family::Ipv6),
            _ => None,
        }
    }
    pub fn from_raw(afi: u16, safi: u8) -> Option<Family> {
        if safi != Safi::Unicast as u8 {
            return None;
        }
        Afi::from_u16(afi).and_then(Family::from_afi)
    }
}

/// A NOTIFICATION to send or that was received (code, subcode, data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Bytes,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: Bytes::new(),
        }
    }
    pub fn with_data(code: u8, subcode: u8, data: impl Into<Bytes>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }
    pub fn to_message(&self) -> Message {
        Message::Notification(NotificationMessage::new(
            NotificationCode::from_u8(self.code),
            self.subcode,
            self.data.clone(),
        ))
    }
    pub fn from_message(n: &NotificationMessage) -> Self {
        Notification {
            code: n.code.as_u8(),
            subcode: n.subcode,
            data: n.data.clone(),
        }
    }
    pub fn from_decode_error(e: &rustbgpd_wire::DecodeError) -> Self {
        let (code, subcode, data) = e.to_notification();
        Notification {
            code: code.as_u8(),
            subcode,
            data,
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NOTIFICATION {}/{} ({})",
            self.code,
            self.subcode,
            rustbgpd_wire::notification::description(
                NotificationCode::from_u8(self.code),
                self.subcode
            )
        )
    }
}

/// The path attributes of one route as our RIB keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    pub origin: u8,
    pub as_path: Vec<AsPathSegment>,
    pub next_hop: IpAddr,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Attributes we do not interpret but pass on (aggregator, extended communities, unknown
    /// optional transitive ones).
    pub other: Vec<PathAttribute>,
}

impl PathAttrs {
    /// AS_PATH length for the decision process (an AS_SET counts 1, RFC 4271 §9.1.2.2).
    pub fn as_path_len(&self) -> usize {
        AsPath {
            segments: self.as_path.clone(),
        }
        .len()
    }
    /// The neighbouring AS (first AS of the path), for MED comparison.
    pub fn neighbor_as(&self) -> Option<u32> {
        match self.as_path.first() {
            Some(AsPathSegment::AsSequence(v)) => v.first().copied(),
            _ => None,
        }
    }
    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| match s {
            AsPathSegment::AsSequence(v) | AsPathSegment::AsSet(v) => v.contains(&asn),
        })
    }
    /// Prepends `asn` to the AS_PATH (eBGP export).
    pub fn prepend(&mut self, asn: u32) {
        match self.as_path.first_mut() {
            Some(AsPathSegment::AsSequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => self.as_path.insert(0, AsPathSegment::AsSequence(vec![asn])),
        }
    }

    fn from_wire(attrs: &[PathAttribute]) -> (Self, Option<IpAddr>) {
        let mut p = PathAttrs {
            origin: 2,
            as_path: Vec::new(),
            next_hop: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            other: Vec::new(),
        };
        let mut body_next_hop = None;
        for a in attrs {
            match a {
                PathAttribute::Origin(o) => p.origin = *o as u8,
                PathAttribute::AsPath(path) => p.as_path = path.segments.clone(),
                PathAttribute::NextHop(nh) => body_next_hop = Some(IpAddr::V4(*nh)),
                PathAttribute::Med(m) => p.med = Some(*m),
                PathAttribute::LocalPref(l) => p.local_pref = Some(*l),
                PathAttribute::Communities(c) | PathAttribute::CommunitiesPartial(c) => {
                    p.communities = c.clone()
                }
                PathAttribute::LargeCommunities(c) | PathAttribute::LargeCommunitiesPartial(c) => {
                    p.large_communities = c
                        .iter()
                        .map(|l| [l.global_admin, l.local_data1, l.local_data2])
                        .collect()
                }
                PathAttribute::OriginatorId(o) => p.originator_id = Some(*o),
                PathAttribute::ClusterList(c) => p.cluster_list = c.clone(),
                PathAttribute::MpReachNlri(_) | PathAttribute::MpUnreachNlri(_) => {}
                other => {
                    // Pass on only what is transitive (flag 0x40); drop non-transitive ones.
                    if other.flags() & 0x40 != 0 {
                        p.other.push(other.clone())
                    }
                }
            }
        }
        if let Some(nh) = body_next_hop {
            p.next_hop = nh;
        }
        (p, body_next_hop)
    }

    /// The wire attributes, without MP_REACH (and without NEXT_HOP for IPv6).
    fn to_wire(&self, with_body_next_hop: bool) -> Vec<PathAttribute> {
        let mut out = Vec::with_capacity(8 + self.other.len());
        out.push(PathAttribute::Origin(
            rustbgpd_wire::attribute::Origin::from_u8(self.origin)
                .unwrap_or(rustbgpd_wire::attribute::Origin::Incomplete),
        ));
        out.push(PathAttribute::AsPath(AsPath {
            segments: self.as_path.clone(),
        }));
        if with_body_next_hop && let IpAddr::V4(nh) = self.next_hop {
            out.push(PathAttribute::NextHop(nh));
        }
        if let Some(m) = self.med {
            out.push(PathAttribute::Med(m));
        }
        if let Some(l) = self.local_pref {
            out.push(PathAttribute::LocalPref(l));
        }
        if !self.communities.is_empty() {
            out.push(PathAttribute::Communities(self.communities.clone()));
        }
        if !self.large_communities.is_empty() {
            out.push(PathAttribute::LargeCommunities(
                self.large_communities
                    .iter()
                    .map(|l| LargeCommunity::new(l[0], l[1], l[2]))
                    .collect(),
            ));
        }
        if let Some(o) = self.originator_id {
            out.push(PathAttribute::OriginatorId(o));
        }
        if !self.cluster_list.is_empty() {
            out.push(PathAttribute::ClusterList(self.cluster_list.clone()));
        }
        out.extend(self.other.iter().cloned());
        out
    }
}

/// What one received UPDATE means for the RIB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundUpdate {
    pub withdrawn: Vec<IpNet>,
    pub announced: Vec<(IpNet, Arc<PathAttrs>)>,
    /// End-of-RIB marker (RFC 4724 §2) for this family.
    pub end_of_rib: Option<Family>,
    /// Set when RFC 7606 turned announcements into withdrawals (logged by the caller).
    pub treated_as_withdraw: Option<String>,
}

fn v4net(p: Ipv4Prefix) -> IpNet {
    IpNet::V4(Ipv4Net::new(p.addr, p.len).unwrap_or_default())
}
fn v6net(p: Ipv6Prefix) -> IpNet {
    IpNet::V6(Ipv6Net::new(p.addr, p.len).unwrap_or_default())
}
fn prefix_net(p: &Prefix) -> IpNet {
    match p {
        Prefix::V4(p) => v4net(*p),
        Prefix::V6(p) => v6net(*p),
    }
}

/// Decodes an UPDATE: `Err` is the NOTIFICATION that resets the session; RFC 7606
/// treat-as-withdraw and attribute-discard are applied here.
pub fn decode_update(
    msg: &UpdateMessage,
    four_octet_as: bool,
    ibgp: bool,
) -> Result<InboundUpdate, Notification> {
    if msg.withdrawn_routes.is_empty() && msg.path_attributes.is_empty() && msg.nlri.is_empty() {
        return Ok(InboundUpdate {
            end_of_rib: Some(Family::Ipv4),
            ..Default::default()
        });
    }
    let revised = msg
        .parse_revised(four_octet_as, ibgp, false, &[])
        .map_err(|e| Notification::from_decode_error(&e))?;
    let parsed = revised.update;
    let mut worst = revised.malformed.iter().map(|m| m.disposition).max();
    let mut reason = revised.malformed.first().map(|m| m.error.to_string());
    if worst == Some(ErrorDisposition::SessionReset)
        && let Some(m) = revised
            .malformed
            .iter()
            .find(|m| m.disposition == ErrorDisposition::SessionReset)
    {
        return Err(Notification::from_decode_error(&m.error));
    }

    let mut out = InboundUpdate::default();
    out.withdrawn
        .extend(parsed.withdrawn.iter().map(|e| v4net(e.prefix)));
    let mut announced: Vec<(IpNet, Option<IpAddr>)> = parsed
        .announced
        .iter()
        .map(|e| (v4net(e.prefix), None))
        .collect();
    let has_body_nlri = !announced.is_empty();
    let mut mp_unreach_only = None;
    for a in &parsed.attributes {
        match a {
            PathAttribute::MpReachNlri(mp) if mp.safi == Safi::Unicast => {
                announced.extend(
                    mp.announced
                        .iter()
                        .map(|e| (prefix_net(&e.prefix), Some(mp.next_hop))),
                );
            }
            PathAttribute::MpUnreachNlri(mp) if mp.safi == Safi::Unicast => {
                out.withdrawn
                    .extend(mp.withdrawn.iter().map(|e| prefix_net(&e.prefix)));
                if mp.withdrawn.is_empty() {
                    mp_unreach_only = Family::from_afi(mp.afi);
                }
            }
            _ => {}
        }
    }
    if parsed.attributes.len() == 1 && parsed.withdrawn.is_empty() && parsed.announced.is_empty() {
        out.end_of_rib = mp_unreach_only;
    }
    let invalid = if announced.is_empty() {
        Ok(())
    } else {
        rustbgpd_wire::validate::validate_update_attributes_with_context(
            &parsed.attributes,
            true,
            has_body_nlri,
            !ibgp,
            UpdateValidationOptions::default(),
        )
    };
    if let Err(v) = invalid {
        match v.error.disposition {
            ErrorDisposition::SessionReset => {
                return Err(Notification::with_data(3, v.error.subcode, v.error.data));
            }
            d => {
                worst = worst.max(Some(d));
                reason.get_or_insert_with(|| {
                    format!(
                        "attribute {} invalid (subcode {})",
                        v.type_code, v.error.subcode
                    )
                });
            }
        }
    }
    if worst == Some(ErrorDisposition::TreatAsWithdraw) {
        out.withdrawn.extend(announced.into_iter().map(|(n, _)| n));
        out.treated_as_withdraw = Some(reason.unwrap_or_else(|| "malformed attribute".into()));
        return Ok(out);
    }
    if !announced.is_empty() {
        let (base, _) = PathAttrs::from_wire(&parsed.attributes);
        let base = Arc::new(base);
        let mut mp_attrs: Option<(IpAddr, Arc<PathAttrs>)> = None;
        for (net, mp_nh) in announced {
            let attrs = match mp_nh {
                None => base.clone(),
                Some(nh) => match &mp_attrs {
                    Some((n, a)) if *n == nh => a.clone(),
                    _ => {
                        let mut a = (*base).clone();
                        a.next_hop = nh;
                        let a = Arc::new(a);
                        mp_attrs = Some((nh, a.clone()));
                        a
                    }
                },
            };
            out.announced.push((net, attrs));
        }
    }
    Ok(out)
}

fn mp_reach(family: Family, next_hop: IpAddr, nets: &[IpNet]) -> PathAttribute {
    PathAttribute::MpReachNlri(Box::new(MpReachNlri {
        afi: family.afi(),
        safi: Safi::Unicast,
        next_hop,
        link_local_next_hop: None,
        announced: nets.iter().filter_map(to_entry).collect(),
        flowspec_announced: vec![],
        evpn_announced: vec![],
        bgpls_announced: vec![],
        vpn_announced: vec![],
        labeled_announced: vec![],
        rtc_announced: vec![],
    }))
}

fn mp_unreach(family: Family, nets: &[IpNet]) -> PathAttribute {
    PathAttribute::MpUnreachNlri(Box::new(MpUnreachNlri {
        afi: family.afi(),
        safi: Safi::Unicast,
        withdrawn: nets.iter().filter_map(to_entry).collect(),
        flowspec_withdrawn: vec![],
        evpn_withdrawn: vec![],
        bgpls_withdrawn: vec![],
        vpn_withdrawn: vec![],
        labeled_withdrawn: vec![],
        rtc_withdrawn: vec![],
    }))
}

fn to_entry(net: &IpNet) -> Option<NlriEntry> {
    let prefix = match net {
        IpNet::V4(n) => Prefix::V4(Ipv4Prefix::new(n.network(), n.prefix_len())),
        IpNet::V6(n) => Prefix::V6(Ipv6Prefix::new(n.network(), n.prefix_len())),
    };
    Some(NlriEntry { path_id: 0, prefix })
}

fn v4_entries(nets: &[IpNet]) -> Vec<Ipv4NlriEntry> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(Ipv4NlriEntry {
                path_id: 0,
                prefix: Ipv4Prefix::new(n.network(), n.prefix_len()),
            }),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Encodes UPDATEs that announce `nets` (all of one family) with `attrs`, split so that each
/// message fits 4096 bytes.
pub fn encode_announce(
    family: Family,
    nets: &[IpNet],
    attrs: &PathAttrs,
    four_octet_as: bool,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    encode_split(nets, &mut out, &|chunk: &[IpNet]| {
        let msg = match family {
            Family::Ipv4 => UpdateMessage::try_build(
                &v4_entries(chunk),
                &[],
                &attrs.to_wire(true),
                four_octet_as,
                false,
                Ipv4UnicastMode::Body,
            ),
            Family::Ipv6 => {
                let mut wire = attrs.to_wire(false);
                wire.insert(0, mp_reach(family, attrs.next_hop, chunk));
                UpdateMessage::try_build(
                    &[],
                    &[],
                    &wire,
                    four_octet_as,
                    false,
                    Ipv4UnicastMode::Body,
                )
            }
        };
        msg.ok().and_then(|m| encode(&Message::Update(m)))
    });
    out
}

/// Encodes UPDATEs that withdraw `nets` (all of one family).
pub fn encode_withdraw(family: Family, nets: &[IpNet], four_octet_as: bool) -> Vec<Bytes> {
    let mut out = Vec::new();
    encode_split(nets, &mut out, &|chunk: &[IpNet]| {
        let msg = match family {
            Family::Ipv4 => UpdateMessage::try_build(
                &[],
                &v4_entries(chunk),
                &[],
                four_octet_as,
                false,
                Ipv4UnicastMode::Body,
            ),
            Family::Ipv6 => UpdateMessage::try_build(
                &[],
                &[],
                &[mp_unreach(family, chunk)],
                four_octet_as,
                false,
                Ipv4UnicastMode::Body,
            ),
        };
        msg.ok().and_then(|m| encode(&Message::Update(m)))
    });
    out
}

/// Halves the prefix list until each part encodes within the size limit.
fn encode_split(nets: &[IpNet], out: &mut Vec<Bytes>, build: &dyn Fn(&[IpNet]) -> Option<Bytes>) {
    if nets.is_empty() {
        return;
    }
    const FIRST_CHUNK: usize = 256;
    if nets.len() > FIRST_CHUNK {
        for c in nets.chunks(FIRST_CHUNK) {
            encode_split(c, out, build);
        }
        return;
    }
    match build(nets) {
        Some(b) => out.push(b),
        None if nets.len() > 1 => {
            let (a, b) = nets.split_at(nets.len() / 2);
            encode_split(a, out, build);
            encode_split(b, out, build);
        }
        None => log::warn!("BGP: cannot encode an UPDATE for {}", nets[0]),
    }
}

/// The End-of-RIB marker of a family (RFC 4724 §2).
pub fn end_of_rib(family: Family) -> Option<Bytes> {
    let msg = match family {
        Family::Ipv4 => UpdateMessage {
            withdrawn_routes: Bytes::new(),
            path_attributes: Bytes::new(),
            nlri: Bytes::new(),
        },
        Family::Ipv6 => UpdateMessage::try_build(
            &[],
            &[],
            &[mp_unreach(family, &[])],
            true,
            false,
            Ipv4UnicastMode::Body,
        )
        .ok()?,
    };
    encode(&Message::Update(msg))
}

pub fn encode(msg: &Message) -> Option<Bytes> {
    match rustbgpd_wire::encode_message_with_limit(msg, MAX_LEN) {
        Ok(b) => Some(b.freeze()),
        Err(e) => {
            log::warn!("BGP: cannot encode {:?}: {e}", msg.message_type());
            None
        }
    }
}

pub fn route_refresh(family: Family) -> Message {
    Message::RouteRefresh(RouteRefreshMessage::new(family.afi(), Safi::Unicast))
}

/// What we advertise in our OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenParams {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    /// Restart time (s) when graceful restart is on.
    pub gr_time: Option<u16>,
    /// The R bit: we restarted and have not finished the initial sync yet. (The F bits are
    /// always set with graceful restart on: calico-node keeps its kernel routes.)
    pub restarting: bool,
}

pub fn build_open(p: &OpenParams) -> Message {
    let mut caps = vec![
        Capability::MultiProtocol {
            afi: Afi::Ipv4,
            safi: Safi::Unicast,
        },
        Capability::MultiProtocol {
            afi: Afi::Ipv6,
            safi: Safi::Unicast,
        },
        Capability::RouteRefresh,
        Capability::FourOctetAs { asn: p.local_as },
    ];
    if let Some(t) = p.gr_time {
        caps.push(Capability::GracefulRestart {
            restart_state: p.restarting,
            notification: false,
            restart_time: t.min(4095),
            families: [Afi::Ipv4, Afi::Ipv6]
                .into_iter()
                .map(|afi| GracefulRestartFamily {
                    afi,
                    safi: Safi::Unicast,
                    forwarding_preserved: true,
                })
                .collect(),
        });
    }
    Message::Open(OpenMessage {
        version: 4,
        my_as: u16::try_from(p.local_as).unwrap_or(AS_TRANS),
        hold_time: p.hold_time,
        bgp_identifier: p.router_id,
        capabilities: caps,
    })
}

/// The peer's graceful-restart capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGr {
    pub restart_time: u16,
    pub restarting: bool,
    /// Families whose forwarding state the peer preserved (F bit).
    pub preserved: Vec<Family>,
}

/// What an accepted OPEN negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    pub hold_time: u16,
    pub four_octet_as: bool,
    pub families: Vec<Family>,
    pub route_refresh: bool,
    pub peer_gr: Option<PeerGr>,
}

/// Checks a received OPEN against the peer's configuration (RFC 4271 §6.2, RFC 6793).
pub fn check_open(
    open: &OpenMessage,
    expected_as: u32,
    local_id: Ipv4Addr,
    ibgp: bool,
    our_hold: u16,
) -> Result<Negotiated, Notification> {
    let remote_as = open.four_byte_as();
    if remote_as != expected_as {
        return Err(Notification::with_data(
            2,
            2,
            Bytes::copy_from_slice(&open.my_as.to_be_bytes()),
        ));
    }
    let id = open.bgp_identifier;
    if id.is_unspecified() || id.is_broadcast() || (ibgp && id == local_id) {
        return Err(Notification::new(2, 3));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notification::new(2, 6));
    }
    let mut families = Vec::new();
    let mut any_mp = false;
    let mut four_octet_as = false;
    let mut route_refresh = false;
    let mut peer_gr = None;
    for c in &open.capabilities {
        match c {
            Capability::MultiProtocol { afi, safi } => {
                any_mp = true;
                if *safi == Safi::Unicast
                    && let Some(f) = Family::from_afi(*afi)
                    && !families.contains(&f)
                {
                    families.push(f);
                }
            }
            Capability::FourOctetAs { .. } => four_octet_as = true,
            Capability::RouteRefresh | Capability::EnhancedRouteRefresh => route_refresh = true,
            Capability::GracefulRestart {
                restart_state,
                restart_time,
                families: fams,
                ..
            } => {
                peer_gr = Some(PeerGr {
                    restart_time: *restart_time,
                    restarting: *restart_state,
                    preserved: fams
                        .iter()
                        .filter(|f| f.forwarding_preserved && f.safi == Safi::Unicast)
                        .filter_map(|f| Family::from_afi(f.afi))
                        .collect(),
                })
            }
            _ => {}
        }
    }
    // A speaker without multiprotocol capabilities carries IPv4 unicast only (RFC 4760 §8).
    if !any_mp {
        families.push(Family::Ipv4);
    }
    families.sort();
    let hold_time = if open.hold_time == 0 || our_hold == 0 {
        0
    } else {
        open.hold_time.min(our_hold)
    };
    Ok(Negotiated {
        remote_as,
        remote_id: id,
        hold_time,
        four_octet_as,
        families,
        route_refresh,
        peer_gr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(nh: IpAddr) -> PathAttrs {
        PathAttrs {
            origin: 0,
            as_path: vec![AsPathSegment::AsSequence(vec![65001, 4_200_000_000])],
            next_hop: nh,
            med: Some(5),
            local_pref: Some(100),
            communities: vec![0xFDE8_0001],
            large_communities: vec![[64512, 1, 2]],
            originator_id: Some(Ipv4Addr::new(1, 1, 1, 1)),
            cluster_list: vec![Ipv4Addr::new(2, 2, 2, 2)],
            other: vec![],
        }
    }

    fn roundtrip(b: &Bytes, ibgp: bool) -> InboundUpdate {
        let mut b = b.clone();
        match rustbgpd_wire::decode_message(&mut b, MAX_LEN) {
            Ok(Message::Update(u)) => decode_update(&u, true, ibgp).expect("decodes"),
            other => panic!("not an update: {other:?}"),
        }
    }

    #[test]
    fn ipv4_update_roundtrips_with_all_attributes() {
        let a = attrs("10.0.0.1".parse().unwrap());
        let nets: Vec<IpNet> = vec![
            "10.65.0.0/26".parse().unwrap(),
            "10.65.1.0/26".parse().unwrap(),
        ];
        let msgs = encode_announce(Family::Ipv4, &nets, &a, true);
        assert_eq!(msgs.len(), 1);
        let u = roundtrip(&msgs[0], true);
        assert_eq!(u.announced.len(), 2);
        assert_eq!(*u.announced[0].1, a);
        assert_eq!(u.announced[1].0, nets[1]);
    }

    #[test]
    fn ipv6_update_uses_mp_reach_and_roundtrips() {
        let a = attrs("fd00::1".parse().unwrap());
        let nets: Vec<IpNet> = vec!["fd00:10::/122".parse().unwrap()];
        let u = roundtrip(&encode_announce(Family::Ipv6, &nets, &a, true)[0], true);
        assert_eq!(u.announced, vec![(nets[0], Arc::new(a))]);
        let w = roundtrip(&encode_withdraw(Family::Ipv6, &nets, true)[0], true);
        assert_eq!(w.withdrawn, nets);
    }

    #[test]
    fn many_prefixes_are_split_into_messages_that_fit() {
        let a = attrs("10.0.0.1".parse().unwrap());
        let nets: Vec<IpNet> = (0..3000u32)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 + (i << 8)), 24).unwrap()))
            .collect();
        let msgs = encode_announce(Family::Ipv4, &nets, &a, true);
        assert!(msgs.len() > 1);
        let total: usize = msgs
            .iter()
            .map(|m| roundtrip(m, true).announced.len())
            .sum();
        assert_eq!(total, 3000);
        assert!(msgs.iter().all(|m| m.len() <= 4096));
    }

    #[test]
    fn end_of_rib_markers_are_recognised() {
        for f in [Family::Ipv4, Family::Ipv6] {
            let u = roundtrip(&end_of_rib(f).unwrap(), true);
            assert_eq!(u.end_of_rib, Some(f));
        }
    }

    #[test]
    fn open_with_large_as_uses_as_trans_and_checks() {
        let p = OpenParams {
            local_as: 4_200_000_001,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            hold_time: 240,
            gr_time: Some(120),
            restarting: true,
        };
        let Message::Open(o) = build_open(&p) else {
            panic!()
        };
        assert_eq!(o.my_as, AS_TRANS);
        let n = check_open(&o, 4_200_000_001, Ipv4Addr::new(10, 0, 0, 2), true, 90).unwrap();
        assert_eq!(n.hold_time, 90);
        assert!(n.four_octet_as && n.route_refresh);
        assert_eq!(n.families, vec![Family::Ipv4, Family::Ipv6]);
        let gr = n.peer_gr.unwrap();
        assert!(gr.restarting);
        assert_eq!(gr.preserved, vec![Family::Ipv4, Family::Ipv6]);
        assert_eq!(
            check_open(&o, 65000, Ipv4Addr::new(10, 0, 0, 2), true, 90)
                .unwrap_err()
                .subcode,
            2
        );
        assert_eq!(
            check_open(&o, 4_200_000_001, Ipv4Addr::new(10, 0, 0, 1), true, 90)
                .unwrap_err()
                .subcode,
            3
        );
    }
}
