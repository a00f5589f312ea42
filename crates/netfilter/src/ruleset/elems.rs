//! Set and map elements as the kernel holds them: typed [`SetElem`]s checked against their
//! set's key, interval sets normalised (the kernel refuses overlapping interval elements, so
//! overlapping and adjacent prefixes or port ranges are merged here), element differences,
//! and the element-list messages, chunked under the netlink attribute bound.
//!
//! An interval is two kernel elements, as `nft` sends them: its first key, and the key after
//! its last flagged `NFT_SET_ELEM_INTERVAL_END`; an interval reaching the top of the key
//! space has no end element and is marked open in its user data (so `nft list` shows it as a
//! prefix).

use super::{Set, SetElem, SetKey};
use crate::error::NfError;
use crate::nft::{self, Verdict};
use crate::socket::Message;
use calico_netlink::attr::Attrs;
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Keys `first..=last` of an interval set, as numbers (32 bits for IPv4, 128 for IPv6, 16
/// for ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub first: u128,
    pub last: u128,
}

/// Bytes of a key of `key` (each field padded to 4 bytes, as registers hold them).
pub(crate) fn key_width(key: SetKey) -> usize {
    match key {
        SetKey::Ipv4Addr => 4,
        SetKey::Ipv6Addr => 16,
        SetKey::Ipv4AddrProtoPort => 12,
        SetKey::Ipv6AddrProtoPort => 24,
        SetKey::Port => 2,
    }
}

fn bad(set: &str, what: String) -> NfError {
    NfError::Input(format!("set {set}: {what}"))
}

/// The interval an element covers, for an interval set of `key`.
pub(crate) fn interval_of(set: &str, key: SetKey, e: &SetElem) -> Result<Interval, NfError> {
    match (key, e) {
        (SetKey::Ipv4Addr, SetElem::Net(ipnet::IpNet::V4(n))) => Ok(Interval {
            first: u128::from(u32::from(n.network())),
            last: u128::from(u32::from(n.broadcast())),
        }),
        (SetKey::Ipv6Addr, SetElem::Net(ipnet::IpNet::V6(n))) => Ok(Interval {
            first: u128::from(n.network()),
            last: u128::from(n.broadcast()),
        }),
        (SetKey::Port, SetElem::Ports(first, last)) if first <= last => Ok(Interval {
            first: u128::from(*first),
            last: u128::from(*last),
        }),
        _ => Err(bad(set, format!("{e:?} is not an interval of {key:?}"))),
    }
}

/// The elements of an interval set of `key` as the kernel must hold them: sorted, merged
/// where they overlap or touch (`10.0.0.0/25` and `10.0.0.128/25` are `10.0.0.0/24`).
pub fn normalise<E: Borrow<SetElem>>(
    set: &str,
    key: SetKey,
    elems: impl IntoIterator<Item = E>,
) -> Result<Vec<Interval>, NfError> {
    let mut all = elems
        .into_iter()
        .map(|e| interval_of(set, key, e.borrow()))
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_unstable();
    let mut out: Vec<Interval> = Vec::with_capacity(all.len());
    for i in all {
        match out.last_mut() {
            // Overlapping or adjacent (`last + 1 == first`; no overflow: `last < first`).
            Some(prev) if i.first <= prev.last || i.first - prev.last == 1 => {
                prev.last = prev.last.max(i.last);
            }
            _ => out.push(i),
        }
    }
    Ok(out)
}

/// The exact key of an element of a non-interval set of `key`.
pub(crate) fn exact_key(set: &str, key: SetKey, e: &SetElem) -> Result<Vec<u8>, NfError> {
    let host = |n: &ipnet::IpNet| n.prefix_len() == n.max_prefix_len();
    match (key, e) {
        (SetKey::Ipv4Addr, SetElem::Net(n @ ipnet::IpNet::V4(v4))) if host(n) => {
            Ok(v4.addr().octets().to_vec())
        }
        (SetKey::Ipv6Addr, SetElem::Net(n @ ipnet::IpNet::V6(v6))) if host(n) => {
            Ok(v6.addr().octets().to_vec())
        }
        (SetKey::Port, SetElem::Ports(first, last)) if first == last => {
            Ok(first.to_be_bytes().to_vec())
        }
        (SetKey::Ipv4AddrProtoPort, SetElem::AddrProtoPort(IpAddr::V4(a), proto, port)) => {
            Ok(concat_key(&a.octets(), *proto, *port))
        }
        (SetKey::Ipv6AddrProtoPort, SetElem::AddrProtoPort(IpAddr::V6(a), proto, port)) => {
            Ok(concat_key(&a.octets(), *proto, *port))
        }
        _ => Err(bad(
            set,
            format!(
                "{e:?} is not a single key of {key:?} (prefixes and ranges need an interval set)"
            ),
        )),
    }
}

/// `addr . proto . port`, each field padded to 4 bytes.
fn concat_key(addr: &[u8], proto: u8, port: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(addr.len() + 8);
    k.extend_from_slice(addr);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// One element as sent to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelElem {
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`: the key after an interval.
    pub interval_end: bool,
    /// An interval without end element (it reaches the top of the key space).
    pub open: bool,
    /// A verdict map's value.
    pub verdict: Option<Verdict>,
}

impl KernelElem {
    pub(crate) fn key(key: Vec<u8>) -> Self {
        KernelElem {
            key,
            interval_end: false,
            open: false,
            verdict: None,
        }
    }
}

fn key_bytes(v: u128, width: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - width..].to_vec()
}

/// The kernel elements of intervals: first keys, and the keys after their ends.
pub(crate) fn interval_elems(intervals: &[Interval], width: usize, out: &mut Vec<KernelElem>) {
    let max = if width >= 16 {
        u128::MAX
    } else {
        (1u128 << (width * 8)) - 1
    };
    for i in intervals {
        let open = i.last == max;
        out.push(KernelElem {
            open,
            ..KernelElem::key(key_bytes(i.first, width))
        });
        if !open {
            out.push(KernelElem {
                interval_end: true,
                ..KernelElem::key(key_bytes(i.last + 1, width))
            });
        }
    }
}

/// Every kernel element of `set` (named `name`).
pub(crate) fn all_elems(name: &str, set: &Set) -> Result<Vec<KernelElem>, NfError> {
    let mut out = Vec::with_capacity(set.elems.len() * if set.interval { 2 } else { 1 });
    if set.interval {
        check_interval_key(name, set.key)?;
        let intervals = normalise(name, set.key, &set.elems)?;
        interval_elems(&intervals, key_width(set.key), &mut out);
    } else {
        for e in &set.elems {
            out.push(KernelElem::key(exact_key(name, set.key, &e)?));
        }
    }
    Ok(out)
}

pub(crate) fn check_interval_key(name: &str, key: SetKey) -> Result<(), NfError> {
    match key {
        SetKey::Ipv4AddrProtoPort | SetKey::Ipv6AddrProtoPort => {
            Err(bad(name, format!("{key:?} sets cannot be interval sets")))
        }
        _ => Ok(()),
    }
}

/// The kernel elements to delete and to add to go from `old` to `new` (same key and kind):
/// deletions first in the batch, so a key that moves (an interval's end becoming another's
/// start) is free before it is taken again.
pub(crate) fn diff_elems(
    name: &str,
    old: &Set,
    new: &Set,
) -> Result<(Vec<KernelElem>, Vec<KernelElem>), NfError> {
    let (mut del, mut add) = (Vec::new(), Vec::new());
    if new.interval {
        check_interval_key(name, new.key)?;
        let width = key_width(new.key);
        let before = normalise(name, old.key, &old.elems)?;
        let after = normalise(name, new.key, &new.elems)?;
        let (gone, came) = sorted_difference(&before, &after);
        interval_elems(&gone, width, &mut del);
        interval_elems(&came, width, &mut add);
        // Deleting needs only keys and flags.
        for e in &mut del {
            e.open = false;
        }
    } else {
        for e in old.elems.difference(&new.elems) {
            del.push(KernelElem::key(exact_key(name, old.key, &e)?));
        }
        for e in new.elems.difference(&old.elems) {
            add.push(KernelElem::key(exact_key(name, new.key, &e)?));
        }
    }
    Ok((del, add))
}

/// `(a - b, b - a)` of two sorted, duplicate-free lists (also the policy crate's label
/// index's, for its id lists).
pub fn sorted_difference<T: Ord + Clone>(a: &[T], b: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                only_a.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_b.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    only_a.extend_from_slice(&a[i..]);
    only_b.extend_from_slice(&b[j..]);
    (only_a, only_b)
}

/// Merges sorted intervals where they overlap or touch.
fn merge_sorted(sorted: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for i in sorted {
        match out.last_mut() {
            Some(prev) if i.first <= prev.last || i.first - prev.last == 1 => {
                prev.last = prev.last.max(i.last);
            }
            _ => out.push(i),
        }
    }
    out
}

/// One interval set's element intervals (a multiset: two elements may cover the same
/// interval) and the merged intervals the kernel holds, kept in step with element edits so
/// that an element's change is planned around it (`O(log n)`), not over the whole set.
#[derive(Debug, Clone, Default)]
pub(crate) struct IntervalIndex {
    elems: BTreeMap<(u128, u128), u32>,
    /// What the kernel holds: first → last.
    kernel: BTreeMap<u128, u128>,
}

impl IntervalIndex {
    /// The index of `set` as the kernel holds it.
    pub fn build(name: &str, set: &Set) -> Result<Self, NfError> {
        let mut idx = IntervalIndex::default();
        for e in &set.elems {
            idx.insert(interval_of(name, set.key, &e)?);
        }
        let sorted = idx
            .elems
            .keys()
            .map(|&(first, last)| Interval { first, last });
        idx.kernel = merge_sorted(sorted)
            .into_iter()
            .map(|i| (i.first, i.last))
            .collect();
        Ok(idx)
    }

    /// Entries held (elements and kernel intervals), for the table's bound on indexes.
    pub fn len(&self) -> usize {
        self.elems.len() + self.kernel.len()
    }

    pub fn insert(&mut self, i: Interval) {
        *self.elems.entry((i.first, i.last)).or_insert(0) += 1;
    }

    pub fn remove(&mut self, i: Interval) {
        if let std::collections::btree_map::Entry::Occupied(mut o) =
            self.elems.entry((i.first, i.last))
        {
            if *o.get() > 1 {
                *o.get_mut() -= 1;
            } else {
                o.remove();
            }
        }
    }

    /// The kernel intervals that go and come once the elements of `changed` intervals were
    /// added or removed (the index already holds the new elements). Only the windows around
    /// the changes are looked at: a change and the kernel intervals it touches or borders.
    pub fn diff(&self, changed: &[Interval]) -> (Vec<Interval>, Vec<Interval>) {
        let mut windows: Vec<Interval> = changed
            .iter()
            .map(|c| {
                let (lo, hi) = (c.first.saturating_sub(1), c.last.saturating_add(1));
                let mut w = *c;
                // Kernel intervals are disjoint and sorted: those meeting [lo, hi] are a run.
                for (&f, &l) in self.kernel.range(..=hi).rev() {
                    if l < lo {
                        break;
                    }
                    w.first = w.first.min(f);
                    w.last = w.last.max(l);
                }
                w
            })
            .collect();
        windows.sort_unstable();
        let windows = merge_sorted(windows);
        let (mut gone, mut came) = (Vec::new(), Vec::new());
        for w in windows {
            let before: Vec<Interval> = self
                .kernel
                .range(w.first..=w.last)
                .map(|(&first, &last)| Interval { first, last })
                .collect();
            let after = merge_sorted(
                self.elems
                    .range((w.first, 0)..=(w.last, u128::MAX))
                    .map(|(&(first, last), _)| Interval { first, last }),
            );
            let (g, c) = sorted_difference(&before, &after);
            gone.extend(g);
            came.extend(c);
        }
        (gone, came)
    }

    /// The kernel took the difference.
    pub fn committed(&mut self, gone: &[Interval], came: &[Interval]) {
        for g in gone {
            self.kernel.remove(&g.first);
        }
        for c in came {
            self.kernel.insert(c.first, c.last);
        }
    }
}

/// A verdict map's key alone (to delete its element).
pub(crate) fn map_key(ifname: &str) -> KernelElem {
    KernelElem::key(nft::ifname_key(ifname))
}

/// A verdict map's element.
pub(crate) fn map_elem(ifname: &str, verdict: &Verdict) -> KernelElem {
    KernelElem {
        verdict: Some(verdict.clone()),
        ..KernelElem::key(nft::ifname_key(ifname))
    }
}

const NFT_MSG_NEWSETELEM: u8 = libc::NFT_MSG_NEWSETELEM as u8;
const NFT_MSG_DELSETELEM: u8 = libc::NFT_MSG_DELSETELEM as u8;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = libc::NFT_SET_ELEM_INTERVAL_END as u32;
/// `NFTNL_UDATA_SET_ELEM_FLAGS` holding `NFTNL_SET_ELEM_F_INTERVAL_OPEN` (host order), as
/// nft writes it for an interval without end element.
const UDATA_INTERVAL_OPEN: [u8; 6] = {
    let f = 1u32.to_ne_bytes();
    [1, 4, f[0], f[1], f[2], f[3]]
};

fn encode_elem(list: &mut Attrs, e: &KernelElem) {
    list.nest(NFTA_LIST_ELEM, |a| {
        a.nest(NFTA_SET_ELEM_KEY, |k| {
            k.bytes(NFTA_DATA_VALUE, &e.key);
        });
        if e.interval_end {
            a.u32_be(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        if let Some(v) = &e.verdict {
            a.nest(NFTA_SET_ELEM_DATA, |d| v.encode_data(d));
        }
        if e.open {
            a.bytes(NFTA_SET_ELEM_USERDATA, &UDATA_INTERVAL_OPEN);
        }
    });
}

/// Element-list messages adding (`add`) or deleting `elems` of `set`, each list under
/// [`nft::ELEM_LIST_MAX`] bytes; calls `push` with each message and the element count.
pub(crate) fn elem_messages(
    add: bool,
    family: u8,
    table: &str,
    set: &str,
    elems: &[KernelElem],
    mut push: impl FnMut(Message, usize),
) {
    let (cmd, flags) = if add {
        (
            NFT_MSG_NEWSETELEM,
            crate::socket::NLM_F_CREATE | crate::socket::NLM_F_EXCL,
        )
    } else {
        (NFT_MSG_DELSETELEM, 0)
    };
    let mut start = 0;
    while start < elems.len() {
        let mut list = Attrs::new();
        let mut end = start;
        while end < elems.len() {
            let before = list.buf.len();
            encode_elem(&mut list, &elems[end]);
            if list.buf.len() > nft::ELEM_LIST_MAX && end > start {
                list.buf.truncate(before);
                break;
            }
            end += 1;
        }
        let mut a = Attrs::new();
        a.str(NFTA_SET_ELEM_LIST_TABLE, table)
            .str(NFTA_SET_ELEM_LIST_SET, set);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
            l.buf.extend_from_slice(&list.buf);
        });
        push(Message::nft(cmd, flags, family, a), end - start);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> SetElem {
        SetElem::Net(s.parse().expect("net"))
    }

    fn iv(first: u128, last: u128) -> Interval {
        Interval { first, last }
    }

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().expect("ip")))
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge() {
        let elems = [
            net("10.0.0.0/25"),
            net("10.0.0.128/25"),  // adjacent: together 10.0.0.0/24
            net("10.0.0.7/32"),    // inside
            net("10.0.2.0/24"),    // a gap before it
            net("10.0.1.255/32"),  // ends right before 10.0.2.0: adjacent
            net("192.168.9.9/16"), // host bits ignored
        ];
        let got = normalise("s", SetKey::Ipv4Addr, elems).expect("normalise");
        assert_eq!(
            got,
            [
                iv(v4("10.0.0.0"), v4("10.0.0.255")),
                iv(v4("10.0.1.255"), v4("10.0.2.255")),
                iv(v4("192.168.0.0"), v4("192.168.255.255")),
            ]
        );
        let all = normalise("s", SetKey::Ipv4Addr, [net("0.0.0.0/0"), net("10.0.0.0/8")]);
        assert_eq!(all.expect("all"), [iv(0, u128::from(u32::MAX))]);
        let v6 = normalise(
            "s",
            SetKey::Ipv6Addr,
            [net("fd00::/64"), net("fd00::1/128"), net("fd00:0:0:1::/64")],
        )
        .expect("v6");
        assert_eq!(v6.len(), 1);
        assert_eq!(
            v6[0].last,
            u128::from(
                "fd00::1:ffff:ffff:ffff:ffff"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("ip")
            )
        );
        let ports = normalise(
            "p",
            SetKey::Port,
            [
                SetElem::Ports(80, 90),
                SetElem::Ports(91, 91),
                SetElem::Ports(85, 100),
                SetElem::Ports(200, 200),
            ],
        )
        .expect("ports");
        assert_eq!(ports, [iv(80, 100), iv(200, 200)]);
    }

    #[test]
    fn elements_of_the_wrong_kind_are_refused_by_name() {
        let e = normalise("cali40s-x", SetKey::Ipv4Addr, [net("fd00::/64")]).unwrap_err();
        assert!(e.to_string().contains("cali40s-x"), "{e}");
        let mut exact = Set::new(SetKey::Ipv4Addr, false);
        exact.elems.insert(net("10.0.0.0/24"));
        assert!(all_elems("s", &exact).is_err());
        let bad_range = normalise("p", SetKey::Port, [SetElem::Ports(9, 8)]);
        assert!(bad_range.is_err());
        let concat = Set::new(SetKey::Ipv4AddrProtoPort, true);
        assert!(all_elems("c", &concat).is_err());
    }

    #[test]
    fn intervals_become_start_and_end_elements() {
        let set = Set::nets(
            true,
            [
                "10.0.0.0/24".parse().expect("net"),
                "255.255.255.0/24".parse().expect("net"),
            ],
        );
        let got = all_elems("s", &set).expect("elems");
        let keys: Vec<(Vec<u8>, bool, bool)> = got
            .iter()
            .map(|e| (e.key.clone(), e.interval_end, e.open))
            .collect();
        assert_eq!(
            keys,
            [
                (vec![10, 0, 0, 0], false, false),
                (vec![10, 0, 1, 0], true, false),
                (vec![255, 255, 255, 0], false, true),
            ]
        );
        let mut named = Set::new(SetKey::Ipv6AddrProtoPort, false);
        named.elems.insert(SetElem::AddrProtoPort(
            "fd00::1".parse().expect("ip"),
            6,
            8080,
        ));
        let k = &all_elems("n", &named).expect("elems")[0].key;
        assert_eq!(k.len(), key_width(SetKey::Ipv6AddrProtoPort));
        assert_eq!(&k[16..], &[6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
    }

    #[test]
    fn differences_are_per_interval_and_per_key() {
        let a = Set::nets(
            true,
            [
                "10.0.0.0/24".parse().expect("n"),
                "10.2.0.0/16".parse().expect("n"),
            ],
        );
        let b = Set::nets(
            true,
            [
                "10.0.0.0/24".parse().expect("n"),
                "10.0.1.0/24".parse().expect("n"),
                "10.2.0.0/16".parse().expect("n"),
            ],
        );
        let (del, add) = diff_elems("s", &a, &b).expect("diff");
        // 10.0.0.0/24 grew to 10.0.0.0/23: its two elements go, two come; 10.2/16 stays.
        assert_eq!(
            del.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            [vec![10, 0, 0, 0], vec![10, 0, 1, 0]]
        );
        assert_eq!(
            add.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            [vec![10, 0, 0, 0], vec![10, 0, 2, 0]]
        );
        let hosts = |ips: &[&str]| Set {
            key: SetKey::Ipv4Addr,
            interval: false,
            elems: ips.iter().map(|i| net(&format!("{i}/32"))).collect(),
        };
        let (del, add) = diff_elems(
            "h",
            &hosts(&["10.0.0.1", "10.0.0.2"]),
            &hosts(&["10.0.0.2", "10.0.0.3"]),
        )
        .expect("diff");
        assert_eq!((del.len(), add.len()), (1, 1));
        assert_eq!(
            (del[0].key.clone(), add[0].key.clone()),
            (vec![10, 0, 0, 1], vec![10, 0, 0, 3])
        );
    }

    /// The index's windowed difference equals the difference of whole normalisations,
    /// through random element changes (a deterministic xorshift sequence).
    #[test]
    fn the_interval_index_diffs_as_whole_normalisation_does() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut set = Set::new(SetKey::Ipv4Addr, true);
        let mut idx = IntervalIndex::build("s", &set).expect("index");
        for round in 0..400 {
            let before = set.clone();
            let mut changed = Vec::new();
            for _ in 0..=next(3) {
                let top = next(8) == 0;
                let addr = if top {
                    u32::MAX - next(300) as u32
                } else {
                    next(600) as u32
                };
                let len = 22 + next(11) as u8;
                let e = SetElem::Net(ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(addr.into(), len).expect("net").trunc(),
                ));
                let i = interval_of("s", SetKey::Ipv4Addr, &e).expect("interval");
                if set.elems.contains(&e) && next(2) == 0 {
                    set.elems.remove(&e);
                    idx.remove(i);
                } else if set.elems.insert(e) {
                    idx.insert(i);
                } else {
                    continue;
                }
                changed.push(i);
            }
            let (gone, came) = idx.diff(&changed);
            let old = normalise("s", SetKey::Ipv4Addr, &before.elems).expect("old");
            let new = normalise("s", SetKey::Ipv4Addr, &set.elems).expect("new");
            let (want_gone, want_came) = sorted_difference(&old, &new);
            let mut g = gone.clone();
            g.sort_unstable();
            let mut c = came.clone();
            c.sort_unstable();
            assert_eq!((g, c), (want_gone, want_came), "round {round}");
            idx.committed(&gone, &came);
        }
    }

    #[test]
    fn element_lists_stay_under_the_attribute_bound() {
        let elems: Vec<KernelElem> = (0..20_000u32)
            .map(|i| {
                map_elem(
                    &format!("cali{i:011}"),
                    &Verdict::Jump(format!("filter-cali-tw-cali{i:011}")),
                )
            })
            .collect();
        let mut counts = Vec::new();
        elem_messages(true, nft::NFPROTO_INET, "calico", "m", &elems, |m, n| {
            assert!(
                m.attrs.buf.len() < nft::ELEM_LIST_MAX + 100,
                "{}",
                m.attrs.buf.len()
            );
            counts.push(n);
        });
        assert!(counts.len() > 1);
        assert_eq!(counts.iter().sum::<usize>(), elems.len());
    }
}
