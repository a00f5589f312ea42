//! The nftables backend: our own table `inet calico_portmap`, programmed over netlink.
//! Every container is a handful of set elements tagged with its container ID, so adding or
//! removing one is one small nf_tables transaction whatever the number of containers (no
//! rule is added per container, hence no revalidation of the table), and a packet finds its
//! mapping by hash lookup instead of walking a rule per container.
//!
//! Elements go per set in element-list messages of at most [`nft::ELEM_LIST_MAX`] bytes (one
//! message per set for a usual pod, a few dozen for 20k mappings). An ADD is one transaction
//! whatever its size (all or nothing; the socket layer sizes its buffers); a removal need not
//! be atomic, so it goes in transactions of at most [`DELETE_TXN_MAX`] bytes, and elements
//! already gone never stop it. A removal deletes only elements tagged with the container's
//! ID ([`tag`]): a record names keys, and a key may be another container's by then (an ADD
//! killed before installing, whose stale claims another container took).
//!
//! ```text
//! table inet calico_portmap {
//!   map hostports4    { type inet_proto . inet_service : ipv4_addr . inet_service }        # any host address
//!   map hostipports4  { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }  # hostIP given
//!   set hairpin4      { type ipv4_addr . ipv4_addr; flags interval }   # pod network . pod
//!   set localhost4    { type ipv4_addr }                               # pods reachable via 127.0.0.1
//!   set masqall4      { type ipv4_addr }                               # pods with masqAll
//!   (and the same for IPv6, without localhost)
//!   chain prerouting  { type nat hook prerouting priority dstnat
//!     fib daddr type local meta nfproto ipv4 ip daddr . meta l4proto . th dport lookup @hostipports4:
//!         meta mark set mark | 0x2000, dnat ip to (the value)
//!     fib daddr type local meta nfproto ipv4 meta l4proto . th dport lookup @hostports4: ... }
//!   chain output      { the same for the node's own traffic }
//!   chain postrouting { type nat hook postrouting priority srcnat
//!     mark 0x2000 ip saddr . ip daddr @hairpin4 masquerade
//!     mark 0x2000 ip saddr 127.0.0.0/8 ip daddr @localhost4 masquerade
//!     mark 0x2000 ip daddr @masqall4 masquerade ... }
//! }
//! ```
//! The mark bit is `markMasqBit` of the call that creates the table.

use crate::backend::{AddError, Backend, Target};
use crate::config::{Conf, Mapping};
use crate::state::{self, Record};
use calico_netfilter::nft::{self, Elem, Expr, Hook, NFPROTO_INET, REG32_00, SetSpec, types};
use calico_netfilter::socket::{Message, Reply};
use calico_netfilter::{NfError, NfSocket};
use ipnet::IpNet;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

pub const TABLE: &str = "calico_portmap";
/// `NFT_REG_1`, where map values land; `NFT_REG_3`, scratch for the mark.
const REG_VALUE: u32 = libc::NFT_REG_1 as u32;
const REG_MARK: u32 = libc::NFT_REG_3 as u32;
/// Bound on one removal transaction's messages (bytes of attributes).
pub const DELETE_TXN_MAX: usize = 256 << 10;
/// Up to this many recorded elements, [`owned`] asks for each; beyond, it lists the sets once.
const GET_EACH_MAX: usize = 64;

/// The tag a container's elements carry: its ID as nf_tables stores a comment (cut to
/// [`nft::COMMENT_MAX`] bytes). Every comparison with a listed comment goes through this.
pub fn tag(container_id: &str) -> &str {
    nft::comment_text(container_id)
}

fn tagged(e: &Elem, container_id: &str) -> bool {
    e.comment.as_deref() == Some(tag(container_id))
}

/// A set element as recorded (hex bytes), enough to delete or find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedElem {
    pub set: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_end: Option<String>,
}

impl RecordedElem {
    fn new(set: String, e: &Elem) -> RecordedElem {
        RecordedElem {
            set,
            key: hex::encode(&e.key),
            key_end: e.key_end.as_deref().map(hex::encode),
        }
    }

    /// The element to name in a delete or get (a damaged record names nothing that exists).
    fn elem(&self) -> Elem {
        let bytes = |s: &str| hex::decode(s).unwrap_or_default();
        Elem {
            key: bytes(&self.key),
            key_end: self.key_end.as_deref().map(bytes),
            data: None,
            comment: None,
        }
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_bytes(p: u8) -> Vec<u8> {
    vec![p, 0, 0, 0]
}

fn port_bytes(p: u16) -> Vec<u8> {
    let b = p.to_be_bytes();
    vec![b[0], b[1], 0, 0]
}

fn sets() -> Vec<SetSpec> {
    use types::*;
    let map = |name: &str, key: &[u32], fields: &[u32], data: (u32, u32)| SetSpec {
        name: name.into(),
        key_type: concat(key),
        key_fields: fields.to_vec(),
        data: Some(data),
        interval: false,
    };
    let set = |name: &str, key: &[u32], fields: &[u32], interval: bool| SetSpec {
        name: name.into(),
        key_type: concat(key),
        key_fields: fields.to_vec(),
        data: None,
        interval,
    };
    vec![
        map(
            "hostports4",
            &[INET_PROTO, INET_SERVICE],
            &[1, 2],
            (concat(&[IPV4_ADDR, INET_SERVICE]), 8),
        ),
        map(
            "hostports6",
            &[INET_PROTO, INET_SERVICE],
            &[1, 2],
            (concat(&[IPV6_ADDR, INET_SERVICE]), 20),
        ),
        map(
            "hostipports4",
            &[IPV4_ADDR, INET_PROTO, INET_SERVICE],
            &[4, 1, 2],
            (concat(&[IPV4_ADDR, INET_SERVICE]), 8),
        ),
        map(
            "hostipports6",
            &[IPV6_ADDR, INET_PROTO, INET_SERVICE],
            &[16, 1, 2],
            (concat(&[IPV6_ADDR, INET_SERVICE]), 20),
        ),
        set("hairpin4", &[IPV4_ADDR, IPV4_ADDR], &[4, 4], true),
        set("hairpin6", &[IPV6_ADDR, IPV6_ADDR], &[16, 16], true),
        set("localhost4", &[IPV4_ADDR], &[4], false),
        set("masqall4", &[IPV4_ADDR], &[4], false),
        set("masqall6", &[IPV6_ADDR], &[16], false),
    ]
}

/// The DNAT rule of one map: key loaded from REG32_00 on, value into NFT_REG_1.
fn dnat_rule(v4: bool, by_host_ip: bool, bit: u32) -> Vec<Expr> {
    let mut e = nft::match_local_daddr();
    e.extend(nft::match_family(v4));
    let mut reg = REG32_00;
    if by_host_ip {
        let (offset, len) = if v4 { (16, 4) } else { (24, 16) };
        e.push(Expr::PayloadTo(nft::BASE_NETWORK, offset, len, reg));
        reg += len / 4;
    }
    e.push(Expr::MetaTo(nft::META_L4PROTO, reg));
    e.push(Expr::PayloadTo(nft::BASE_TRANSPORT, 2, 2, reg + 1));
    let set = match (v4, by_host_ip) {
        (true, false) => "hostports4",
        (false, false) => "hostports6",
        (true, true) => "hostipports4",
        (false, true) => "hostipports6",
    };
    e.push(Expr::Lookup {
        set: set.into(),
        sreg: REG32_00,
        dreg: Some(REG_VALUE),
    });
    e.extend(nft::set_mark_bit_in(bit, REG_MARK));
    // The value is address . port: the port follows the address's 32-bit words.
    e.push(Expr::DnatRegs {
        v4,
        addr_reg: REG_VALUE,
        proto_reg: REG32_00 + if v4 { 1 } else { 4 },
    });
    e
}

/// `mark ... <match> masquerade` rules of postrouting.
fn masq_rules(bit: u32) -> Vec<Vec<Expr>> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        let (saddr, daddr, len) = if v4 { (12, 16, 4) } else { (8, 24, 16) };
        let head = || {
            let mut e = nft::match_mark_bit(bit);
            e.extend(nft::match_family(v4));
            e
        };
        // Hairpin: from the pod's network to the pod.
        let mut e = head();
        e.push(Expr::PayloadTo(nft::BASE_NETWORK, saddr, len, REG32_00));
        e.push(Expr::PayloadTo(
            nft::BASE_NETWORK,
            daddr,
            len,
            REG32_00 + len / 4,
        ));
        e.push(Expr::Lookup {
            set: if v4 { "hairpin4" } else { "hairpin6" }.into(),
            sreg: REG32_00,
            dreg: None,
        });
        e.push(Expr::Masquerade);
        out.push(e);
        if v4 {
            let mut e = head();
            e.extend(nft::match_addr(true, IpAddr::V4([127, 0, 0, 0].into()), 8));
            e.push(Expr::PayloadTo(nft::BASE_NETWORK, daddr, len, REG32_00));
            e.push(Expr::Lookup {
                set: "localhost4".into(),
                sreg: REG32_00,
                dreg: None,
            });
            e.push(Expr::Masquerade);
            out.push(e);
        }
        let mut e = head();
        e.push(Expr::PayloadTo(nft::BASE_NETWORK, daddr, len, REG32_00));
        e.push(Expr::Lookup {
            set: if v4 { "masqall4" } else { "masqall6" }.into(),
            sreg: REG32_00,
            dreg: None,
        });
        e.push(Expr::Masquerade);
        out.push(e);
    }
    out
}

/// The whole table, recreated from nothing (only when it is missing or incomplete).
fn base(bit: u32, msgs: &mut Vec<(String, Message)>) {
    let f = NFPROTO_INET;
    let comment = "calico portmap: hostPorts";
    msgs.push(("create table".into(), nft::new_table(f, TABLE, comment)));
    msgs.push(("reset table".into(), nft::del_table(f, TABLE)));
    msgs.push(("create table".into(), nft::new_table(f, TABLE, comment)));
    for s in sets() {
        msgs.push((format!("create set {}", s.name), nft::new_set(f, TABLE, &s)));
    }
    for (name, hook, prio) in [
        ("prerouting", Hook::Prerouting, nft::PRIORITY_DSTNAT),
        ("output", Hook::Output, nft::PRIORITY_DSTNAT),
        ("postrouting", Hook::Postrouting, nft::PRIORITY_SRCNAT),
    ] {
        msgs.push((
            format!("create chain {name}"),
            nft::new_chain(f, TABLE, name, Some((hook, prio)), None),
        ));
    }
    for chain in ["prerouting", "output"] {
        for v4 in [true, false] {
            for by_host_ip in [true, false] {
                msgs.push((
                    format!("add rule to {chain}"),
                    nft::new_rule(
                        f,
                        TABLE,
                        chain,
                        &dnat_rule(v4, by_host_ip, bit),
                        None,
                        false,
                    ),
                ));
            }
        }
    }
    for e in masq_rules(bit) {
        msgs.push((
            "add rule to postrouting".into(),
            nft::new_rule(f, TABLE, "postrouting", &e, None, false),
        ));
    }
}

/// The elements a container needs: per family, its mappings and masquerade entries.
pub fn elements(
    conf: &Conf,
    container_id: &str,
    v4: Option<IpNet>,
    v6: Option<IpNet>,
    mappings: &[Mapping],
) -> Vec<(String, Elem)> {
    let tag = Some(tag(container_id).to_string());
    let mut out: Vec<(String, Elem)> = Vec::new();
    let mut seen: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut push = |set: String, e: Elem| {
        if seen.insert((set.clone(), e.key.clone())) {
            out.push((set, e));
        }
    };
    for (fam, ip) in [("4", v4), ("6", v6)] {
        let Some(ip) = ip else { continue };
        let is_v4 = fam == "4";
        let value = |port: u16| {
            let mut v = ip_bytes(ip.addr());
            v.extend(port_bytes(port));
            v
        };
        let mut any = false;
        for m in mappings.iter().filter(|m| m.applies_to(is_v4)) {
            any = true;
            let mut key = Vec::new();
            let set = match m.host_ip {
                Some(h) => {
                    key.extend(ip_bytes(h));
                    format!("hostipports{fam}")
                }
                None => format!("hostports{fam}"),
            };
            key.extend(proto_bytes(m.protocol.number()));
            key.extend(port_bytes(m.host_port));
            push(
                set,
                Elem {
                    key,
                    key_end: None,
                    data: Some(value(m.container_port)),
                    comment: tag.clone(),
                },
            );
        }
        if !any || !conf.snat {
            continue;
        }
        let pod = ip_bytes(ip.addr());
        let plain = |set: &str| {
            (
                format!("{set}{fam}"),
                Elem {
                    key: pod.clone(),
                    key_end: None,
                    data: None,
                    comment: tag.clone(),
                },
            )
        };
        if conf.masq_all {
            let (s, e) = plain("masqall");
            push(s, e);
            continue;
        }
        let net = ip.trunc();
        let mut key = ip_bytes(net.network());
        key.extend(&pod);
        let mut end = ip_bytes(net.broadcast());
        end.extend(&pod);
        push(
            format!("hairpin{fam}"),
            Elem {
                key,
                key_end: Some(end),
                data: None,
                comment: tag.clone(),
            },
        );
        if is_v4 {
            let (s, e) = plain("localhost");
            push(s, e);
        }
    }
    out
}

fn run(sock: &mut NfSocket, msgs: Vec<(String, Message)>) -> Result<Vec<Reply>, NfError> {
    let (what, msgs): (Vec<String>, Vec<Message>) = msgs.into_iter().unzip();
    sock.batch(&what, &msgs)
}

fn table_ready(sock: &mut NfSocket) -> Result<bool, NfError> {
    // The last set created is there only if the whole table was made.
    match sock.request("get set", &nft::get_set(NFPROTO_INET, TABLE, "masqall6")) {
        Ok(_) => Ok(true),
        Err(e) if e.is(&[Errno::ENOENT]) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Elements grouped by set, sets in the order they first appear.
fn by_set<'a>(elems: impl IntoIterator<Item = (&'a str, Elem)>) -> Vec<(&'a str, Vec<Elem>)> {
    let mut out: Vec<(&str, Vec<Elem>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (set, e) in elems {
        let i = *index.entry(set).or_insert_with(|| {
            out.push((set, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(e);
    }
    out
}

/// Element-list messages deleting `recorded`.
fn deletions(recorded: &[RecordedElem], msgs: &mut Vec<(String, Message)>) {
    for (set, elems) in by_set(recorded.iter().map(|r| (r.set.as_str(), r.elem()))) {
        for m in nft::del_elems_chunked(NFPROTO_INET, TABLE, set, &elems) {
            msgs.push((format!("delete element of {set}"), m));
        }
    }
}

/// Element-list messages adding `elems`; `what` labels them (with the set's name).
fn additions(elems: &[(String, Elem)], what: &str, msgs: &mut Vec<(String, Message)>) {
    for (set, list) in by_set(elems.iter().map(|(s, e)| (s.as_str(), e.clone()))) {
        for m in nft::add_elems_chunked(NFPROTO_INET, TABLE, set, &list) {
            msgs.push((format!("add element to {set}{what}"), m));
        }
    }
}

/// Deletes `recorded` in transactions of at most [`DELETE_TXN_MAX`] bytes. `Err` with
/// `ENOENT` if one of them named an element that is gone (that transaction did nothing).
fn delete_chunked(sock: &mut NfSocket, recorded: &[RecordedElem]) -> Result<(), NfError> {
    let mut msgs = Vec::new();
    deletions(recorded, &mut msgs);
    let mut txn = Vec::new();
    let mut len = 0;
    for (what, m) in msgs {
        let l = m.attrs.buf.len();
        if !txn.is_empty() && len + l > DELETE_TXN_MAX {
            run(sock, std::mem::take(&mut txn))?;
            len = 0;
        }
        len += l;
        txn.push((what, m));
    }
    if !txn.is_empty() {
        run(sock, txn)?;
    }
    Ok(())
}

/// Every element of our sets, with its set's name.
fn all_elements(sock: &mut NfSocket) -> Result<Vec<(String, Elem)>, NfError> {
    let mut out = Vec::new();
    for s in sets() {
        let replies = match sock.dump(
            "list elements",
            &nft::get_elems(NFPROTO_INET, TABLE, &s.name),
        ) {
            Ok(r) => r,
            Err(e) if e.is(&[Errno::ENOENT]) => continue,
            Err(e) => return Err(e),
        };
        for r in replies {
            out.extend(
                nft::elems_of(&r.attrs)
                    .into_iter()
                    .map(|e| (s.name.clone(), e)),
            );
        }
    }
    Ok(out)
}

/// Every element tagged with the container ID, found by listing the sets.
fn listed(sock: &mut NfSocket, container_id: &str) -> Result<Vec<RecordedElem>, NfError> {
    Ok(all_elements(sock)?
        .into_iter()
        .filter(|(_, e)| tagged(e, container_id))
        .map(|(set, e)| RecordedElem::new(set, &e))
        .collect())
}

/// The recorded element as the kernel has it now (`None`: no such key, or no table).
fn get(sock: &mut NfSocket, r: &RecordedElem) -> Result<Option<Elem>, NfError> {
    match sock.request(
        "get element",
        &nft::get_elem(NFPROTO_INET, TABLE, &r.set, &r.elem()),
    ) {
        Ok(replies) => Ok(replies.iter().flat_map(|x| nft::elems_of(&x.attrs)).next()),
        Err(e) if e.is(&[Errno::ENOENT]) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What of the container's elements is in the kernel, going by `recorded` but keeping only
/// elements tagged with the container's ID: a key in a record is not proof of whose the
/// element is (an ADD killed before installing records keys it never added, and once its
/// claims are stale another container may hold them). A handful are asked for one by one;
/// for many, the sets are listed once and every element with the tag is returned.
fn owned(
    sock: &mut NfSocket,
    container_id: &str,
    recorded: &[RecordedElem],
) -> Result<Vec<RecordedElem>, NfError> {
    if recorded.len() > GET_EACH_MAX {
        return listed(sock, container_id);
    }
    let mut out = Vec::new();
    for r in recorded {
        if get(sock, r)?.is_some_and(|e| tagged(&e, container_id)) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// The elements as they will be recorded.
pub fn to_record(elems: &[(String, Elem)]) -> Vec<RecordedElem> {
    elems
        .iter()
        .map(|(set, e)| RecordedElem::new(set.clone(), e))
        .collect()
}

/// Installs the container's elements in one transaction, replacing what of `recorded` (what
/// an earlier ADD of the same container made) is still the container's.
pub fn add(
    sock: &mut NfSocket,
    conf: &Conf,
    elems: &[(String, Elem)],
    container_id: &str,
    recorded: Option<&[RecordedElem]>,
) -> Result<(), NfError> {
    let mut msgs = Vec::new();
    let ready = table_ready(sock)?;
    if !ready {
        base(conf.mark_masq_bit, &mut msgs);
    } else if let Some(r) = recorded {
        deletions(&owned(sock, container_id, r)?, &mut msgs);
    }
    additions(elems, "", &mut msgs);
    match run(sock, msgs) {
        Ok(_) => Ok(()),
        // Elements of ours that no record names (a crash between the two): sweep and retry.
        Err(e) if ready && e.is(&[Errno::EEXIST, Errno::EBUSY, Errno::ENOENT]) => {
            let mut msgs = Vec::new();
            deletions(&listed(sock, container_id)?, &mut msgs);
            additions(elems, " (a host port another container holds?)", &mut msgs);
            run(sock, msgs).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Removes the container's elements, in transactions of at most [`DELETE_TXN_MAX`] bytes:
/// those `recorded` names that carry its tag ([`owned`]), never another container's element
/// of the same key; what is already gone is fine (then the rest is found by tag).
pub fn del(
    sock: &mut NfSocket,
    container_id: &str,
    recorded: &[RecordedElem],
) -> Result<(), NfError> {
    if recorded.is_empty() {
        return Ok(());
    }
    let mine = owned(sock, container_id, recorded)?;
    match delete_chunked(sock, &mine) {
        // Some were gone already (or the table is): delete what remains of ours, found by tag.
        Err(e) if e.is(&[Errno::ENOENT]) => sweep(sock, container_id),
        other => other,
    }
}

/// Whether the first recorded element is in place and still the container's (tagged with
/// its ID: once the container's claim is stale, another container may hold the same key).
pub fn present(
    sock: &mut NfSocket,
    container_id: &str,
    recorded: &[RecordedElem],
) -> Result<bool, NfError> {
    let Some(r) = recorded.first() else {
        return Ok(false);
    };
    Ok(get(sock, r)?.is_some_and(|e| tagged(&e, container_id)))
}

fn proto_name(p: u8) -> String {
    match i32::from(p) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

fn ip_of(b: &[u8]) -> String {
    match b.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()).to_string(),
        _ => hex::encode(b),
    }
}

/// An element in words: `hostports4 tcp/8080`, `hairpin4 10.0.0.5`.
fn describe(set: &str, e: &Elem) -> String {
    let k = &e.key;
    let port = |at: usize| k.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let what = if set.starts_with("hostports") {
        format!("{}/{}", proto_name(k[0]), port(4).unwrap_or_default())
    } else if set.starts_with("hostipports") {
        let a = if set.ends_with('4') { 4 } else { 16 };
        format!(
            "{}/{} on {}",
            proto_name(k[a]),
            port(a + 4).unwrap_or_default(),
            ip_of(&k[..a])
        )
    } else {
        let half = if set.starts_with("hairpin") {
            k.len() / 2
        } else {
            0
        };
        ip_of(&k[half..])
    };
    format!("{set} {what}")
}

/// What is missing or different of the container's elements (an element of the same key
/// tagged with another container's ID is not the container's).
pub fn missing(sock: &mut NfSocket, elems: &[(String, Elem)]) -> Result<Vec<String>, NfError> {
    let mut out = Vec::new();
    for (set, want) in elems {
        match sock.request(
            "get element",
            &nft::get_elem(NFPROTO_INET, TABLE, set, want),
        ) {
            Ok(replies) => {
                let got = replies.iter().flat_map(|r| nft::elems_of(&r.attrs)).next();
                if want.data.is_some() && got.as_ref().and_then(|g| g.data.clone()) != want.data {
                    out.push(format!("{} maps elsewhere", describe(set, want)));
                } else if got.as_ref().is_some_and(|g| g.comment != want.comment) {
                    out.push(format!("{} is another container's", describe(set, want)));
                }
            }
            Err(e) if e.is(&[Errno::ENOENT]) => {
                out.push(format!("{} (table inet {TABLE})", describe(set, want)));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The tags on any element (for GC): container IDs as [`tag`] cuts them.
pub fn containers(sock: &mut NfSocket) -> Result<Vec<String>, NfError> {
    let mut out: Vec<String> = Vec::new();
    for (_, e) in all_elements(sock)? {
        if let Some(c) = e.comment
            && !out.contains(&c)
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// Removes every element tagged with the container ID (GC, or cleanup without a record).
pub fn sweep(sock: &mut NfSocket, container_id: &str) -> Result<(), NfError> {
    let found = match listed(sock, container_id) {
        Ok(found) => found,
        Err(e) if e.is(&[Errno::ENOENT]) => return Ok(()),
        Err(e) => return Err(e),
    };
    delete_chunked(sock, &found)
}

/// The nftables backend: the container's elements in our table's sets.
pub struct Nftables;

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn plan(&self, t: &Target, rec: &mut Record) {
        let elems = elements(t.conf, t.container_id, t.v4, t.v6, &t.conf.mappings);
        rec.nft_elements = to_record(&elems);
    }

    fn add(
        &self,
        sock: &mut NfSocket,
        t: &Target,
        old: Option<&Record>,
        rec: &mut Record,
    ) -> Result<(), AddError> {
        let elems = elements(t.conf, t.container_id, t.v4, t.v6, &t.conf.mappings);
        rec.nft_elements = to_record(&elems);
        // Recorded first: whatever happens next, DEL knows what to look for (the earlier
        // elements too, until they are replaced).
        match old {
            Some(o) => {
                let mut intent = rec.clone();
                intent.nft_elements.extend(o.nft_elements.iter().cloned());
                state::save(&t.conf.state_dir, t.dn, &intent)?;
            }
            None if t.recorded => {}
            None => state::save(&t.conf.state_dir, t.dn, rec)?,
        }
        let recorded = old.map(|o| o.nft_elements.as_slice());
        add(sock, t.conf, &elems, t.container_id, recorded)?;
        if old.is_some() {
            state::save(&t.conf.state_dir, t.dn, rec)?;
        }
        Ok(())
    }

    fn missing(&self, sock: &mut NfSocket, t: &Target) -> Result<Vec<String>, NfError> {
        let elems = elements(t.conf, t.container_id, t.v4, t.v6, &t.conf.mappings);
        missing(sock, &elems)
    }

    fn remove(
        &self,
        sock: &mut NfSocket,
        _dn: &str,
        container_id: &str,
        rec: Option<&Record>,
        _probe: bool,
    ) -> Result<(), NfError> {
        // Without a record there is nothing to go by here: GC sweeps by tag.
        match rec {
            Some(r) => del(sock, container_id, &r.nft_elements),
            None => Ok(()),
        }
    }

    fn has_rules(&self, sock: &mut NfSocket, _dn: &str, rec: &Record) -> bool {
        present(sock, &rec.container_id, &rec.nft_elements).unwrap_or(true)
    }

    fn remains(&self, sock: &mut NfSocket, _dn: &str, container_id: &str) -> bool {
        // A removal in several transactions may have stopped half way: look for any element.
        listed(sock, container_id).map_or(true, |found| !found.is_empty())
    }

    fn containers(&self, sock: &mut NfSocket, _network: &str) -> Result<Vec<String>, NfError> {
        containers(sock)
    }

    fn tag(&self, container_id: &str) -> String {
        tag(container_id).to_string()
    }

    fn sweep(&self, sock: &mut NfSocket, _conf: &Conf, container_id: &str) -> Result<(), NfError> {
        sweep(sock, container_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendKind, Proto};

    #[test]
    fn a_dual_stack_pod_is_a_few_elements() {
        let conf = crate::config::test_conf(BackendKind::Nftables);
        let m = vec![
            Mapping {
                host_port: 8080,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: None,
            },
            Mapping {
                host_port: 8443,
                container_port: 443,
                protocol: Proto::Tcp,
                host_ip: Some("10.0.0.1".parse().expect("ip")),
            },
        ];
        let e = elements(
            &conf,
            "c1",
            Some("10.244.1.5/32".parse().expect("net")),
            Some("fd00::5/128".parse().expect("net")),
            &m,
        );
        let sets: Vec<&str> = e.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            sets,
            [
                "hostports4",
                "hostipports4",
                "hairpin4",
                "localhost4",
                "hostports6",
                "hairpin6"
            ]
        );
        assert_eq!(e[0].1.key, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(e[0].1.data, Some(vec![10, 244, 1, 5, 0, 80, 0, 0]));
        assert_eq!(e[1].1.key[..4], [10, 0, 0, 1]);
        assert_eq!(e[2].1.key, vec![10, 244, 1, 5, 10, 244, 1, 5]);
        assert_eq!(e[2].1.key_end, Some(vec![10, 244, 1, 5, 10, 244, 1, 5]));
        assert!(e.iter().all(|(_, x)| x.comment.as_deref() == Some("c1")));
        let rec = to_record(&e);
        assert_eq!(rec[0].elem().key, e[0].1.key);
        assert_eq!(describe(&e[0].0, &e[0].1), "hostports4 tcp/8080");
        assert_eq!(
            describe(&e[1].0, &e[1].1),
            "hostipports4 tcp/8443 on 10.0.0.1"
        );
        assert_eq!(describe(&e[2].0, &e[2].1), "hairpin4 10.244.1.5");
    }
}
