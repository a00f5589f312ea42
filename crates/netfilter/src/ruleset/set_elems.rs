//! [`SetElems`]: a set's elements, sorted and packed.
//!
//! A policy table's sets hold hundreds of thousands of addresses (every endpoint's address
//! in every selector set that matches it), and the programmed record keeps them all, as
//! does the policy engine's count of them. A `BTreeSet<SetElem>` spends about 35 bytes on
//! each (a 24-byte element in half-full nodes) and one allocation per node; IPv4 elements,
//! port ranges and IPv4 named-port elements fit in 8 bytes, kept here in one sorted
//! vector per set: a quarter of the room, and one allocation per set. A set that holds any
//! other element (IPv6) keeps [`SetElem`]s, still in one sorted vector.
//!
//! Written here rather than taken from a crate: a sorted-vector set (`sorted-vec`,
//! `vec-collections`) would still hold 24-byte elements; the saving is the packing, which
//! is specific to these elements and must keep their order (plans walk sets in order).
//! Inserting in the middle moves the tail (`O(n)`), which at the sizes sets have (hundreds,
//! ten thousand for a selector of every endpoint: tens of kilobytes moved) costs less than
//! the tree's allocation; building from many elements sorts once.

use super::SetElem;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};

/// Where a packed element's kind sits (the top two bits: [`SetElem`]'s variant order, so
/// packed elements sort as the elements do).
const KIND_SHIFT: u32 = 62;
const KIND_APP: u64 = 1 << KIND_SHIFT;
const KIND_PORTS: u64 = 2 << KIND_SHIFT;

/// `e` in 8 bytes, if it fits: an IPv4 prefix (address, length), an IPv4 address with a
/// protocol and port, or a port range. Order-preserving: `pack(a) < pack(b)` exactly when
/// `a < b`.
fn pack(e: &SetElem) -> Option<u64> {
    match *e {
        SetElem::Net(IpNet::V4(n)) => {
            Some(u64::from(u32::from(n.addr())) << 8 | u64::from(n.prefix_len()))
        }
        SetElem::AddrProtoPort(IpAddr::V4(a), proto, port) => Some(
            KIND_APP | u64::from(u32::from(a)) << 24 | u64::from(proto) << 16 | u64::from(port),
        ),
        SetElem::Ports(first, last) => Some(KIND_PORTS | u64::from(first) << 16 | u64::from(last)),
        _ => None,
    }
}

/// The element `pack` made `v` from.
fn unpack(v: u64) -> SetElem {
    // Truncations below take back the fields `pack` put there.
    match v >> KIND_SHIFT {
        0 => {
            let addr = Ipv4Addr::from((v >> 8) as u32);
            let len = (v & 0xff) as u8;
            // `pack` took the length from a valid prefix (≤ 32).
            SetElem::Net(IpNet::V4(
                Ipv4Net::new(addr, len).unwrap_or_else(|_| Ipv4Net::from(addr)),
            ))
        }
        1 => SetElem::AddrProtoPort(
            IpAddr::V4(Ipv4Addr::from((v >> 24) as u32)),
            (v >> 16) as u8,
            v as u16,
        ),
        _ => SetElem::Ports((v >> 16) as u16, v as u16),
    }
}

#[derive(Clone)]
enum Repr {
    /// Every element packs: packed, sorted, distinct.
    Packed(Vec<u64>),
    /// Sorted, distinct.
    Full(Vec<SetElem>),
}

/// A set's elements, sorted and distinct (see the module doc): the API of the
/// `BTreeSet<SetElem>` it replaces, with elements handed out by value.
#[derive(Clone)]
pub struct SetElems(Repr);

impl Default for SetElems {
    fn default() -> Self {
        SetElems(Repr::Packed(Vec::new()))
    }
}

impl SetElems {
    pub fn new() -> Self {
        Self::default()
    }

    /// From sorted, distinct elements.
    fn from_sorted(all: Vec<SetElem>) -> Self {
        let packed: Option<Vec<u64>> = all.iter().map(pack).collect();
        SetElems(match packed {
            Some(p) => Repr::Packed(p),
            None => Repr::Full(all),
        })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Packed(v) => v.len(),
            Repr::Full(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.0 = Repr::Packed(Vec::new());
    }

    pub fn contains(&self, e: &SetElem) -> bool {
        match &self.0 {
            Repr::Packed(v) => pack(e).is_some_and(|p| v.binary_search(&p).is_ok()),
            Repr::Full(v) => v.binary_search(e).is_ok(),
        }
    }

    /// Adds `e`; whether it was not there.
    pub fn insert(&mut self, e: SetElem) -> bool {
        if let Repr::Packed(v) = &mut self.0 {
            match pack(&e) {
                Some(p) => {
                    // Appending in order (a set built from sorted members) is the usual case.
                    if v.last().is_none_or(|&l| l < p) {
                        v.push(p);
                        return true;
                    }
                    return match v.binary_search(&p) {
                        Ok(_) => false,
                        Err(i) => {
                            v.insert(i, p);
                            true
                        }
                    };
                }
                None => {
                    let full: Vec<SetElem> = v.iter().map(|&p| unpack(p)).collect();
                    self.0 = Repr::Full(full);
                }
            }
        }
        match &mut self.0 {
            Repr::Full(v) => match v.binary_search(&e) {
                Ok(_) => false,
                Err(i) => {
                    v.insert(i, e);
                    true
                }
            },
            Repr::Packed(_) => false,
        }
    }

    /// Removes `e`; whether it was there.
    pub fn remove(&mut self, e: &SetElem) -> bool {
        match &mut self.0 {
            Repr::Packed(v) => match pack(e).map(|p| v.binary_search(&p)) {
                Some(Ok(i)) => {
                    v.remove(i);
                    true
                }
                _ => false,
            },
            Repr::Full(v) => match v.binary_search(e) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// The elements in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(match &self.0 {
            Repr::Packed(v) => IterRepr::Packed(v.iter()),
            Repr::Full(v) => IterRepr::Full(v.iter()),
        })
    }

    /// The elements of `self` not in `other`, in order.
    pub fn difference<'a>(&'a self, other: &'a SetElems) -> impl Iterator<Item = SetElem> + 'a {
        let mut theirs = other.iter().peekable();
        self.iter().filter(move |e| {
            while theirs.next_if(|t| t < e).is_some() {}
            theirs.peek() != Some(e)
        })
    }

    /// Gives back the room growth left unused.
    pub fn shrink_to_fit(&mut self) {
        match &mut self.0 {
            Repr::Packed(v) => v.shrink_to_fit(),
            Repr::Full(v) => v.shrink_to_fit(),
        }
    }
}

/// [`SetElems::iter`]'s iterator.
#[derive(Clone)]
pub struct Iter<'a>(IterRepr<'a>);

#[derive(Clone)]
enum IterRepr<'a> {
    Packed(std::slice::Iter<'a, u64>),
    Full(std::slice::Iter<'a, SetElem>),
}

impl Iterator for Iter<'_> {
    type Item = SetElem;

    fn next(&mut self) -> Option<SetElem> {
        match &mut self.0 {
            IterRepr::Packed(i) => i.next().map(|&p| unpack(p)),
            IterRepr::Full(i) => i.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            IterRepr::Packed(i) => i.len(),
            IterRepr::Full(i) => i.len(),
        };
        (n, Some(n))
    }

    fn nth(&mut self, n: usize) -> Option<SetElem> {
        match &mut self.0 {
            IterRepr::Packed(i) => i.nth(n).map(|&p| unpack(p)),
            IterRepr::Full(i) => i.nth(n).copied(),
        }
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<SetElem> {
        match &mut self.0 {
            IterRepr::Packed(i) => i.next_back().map(|&p| unpack(p)),
            IterRepr::Full(i) => i.next_back().copied(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a SetElems {
    type Item = SetElem;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<SetElem> for SetElems {
    fn from_iter<I: IntoIterator<Item = SetElem>>(iter: I) -> Self {
        let mut all: Vec<SetElem> = iter.into_iter().collect();
        if !all.is_sorted() {
            all.sort_unstable();
        }
        all.dedup();
        SetElems::from_sorted(all)
    }
}

impl<const N: usize> From<[SetElem; N]> for SetElems {
    fn from(elems: [SetElem; N]) -> Self {
        elems.into_iter().collect()
    }
}

impl Extend<SetElem> for SetElems {
    fn extend<I: IntoIterator<Item = SetElem>>(&mut self, iter: I) {
        let mut more = iter.into_iter().peekable();
        // One: in place. More: merged in one sort.
        let Some(first) = more.next() else {
            return;
        };
        if more.peek().is_none() {
            self.insert(first);
            return;
        }
        let all: Vec<SetElem> = self.iter().chain([first]).chain(more).collect();
        *self = all.into_iter().collect();
    }
}

impl PartialEq for SetElems {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Packed(a), Repr::Packed(b)) => a == b,
            (Repr::Full(a), Repr::Full(b)) => a == b,
            _ => self.len() == other.len() && self.iter().eq(other.iter()),
        }
    }
}

impl Eq for SetElems {}

impl std::fmt::Debug for SetElems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn net(s: &str) -> SetElem {
        SetElem::Net(s.parse().expect("net"))
    }

    fn app(a: &str, proto: u8, port: u16) -> SetElem {
        SetElem::AddrProtoPort(a.parse().expect("addr"), proto, port)
    }

    fn sample() -> Vec<SetElem> {
        vec![
            net("10.0.0.5/32"),
            net("10.0.0.0/8"),
            net("10.0.0.0/24"),
            net("0.0.0.0/0"),
            net("255.255.255.255/32"),
            net("192.168.1.7/32"),
            app("10.0.0.1", 6, 80),
            app("10.0.0.1", 17, 80),
            app("10.0.0.1", 6, 65535),
            app("9.255.255.255", 132, 0),
            app("255.255.255.255", 255, 65535),
            SetElem::Ports(0, 0),
            SetElem::Ports(80, 90),
            SetElem::Ports(80, 80),
            SetElem::Ports(65535, 65535),
        ]
    }

    #[test]
    fn packing_round_trips_and_keeps_the_elements_order() {
        let all = sample();
        for e in &all {
            let p = pack(e).expect("packs");
            assert_eq!(unpack(p), *e);
        }
        for a in &all {
            for b in &all {
                let (pa, pb) = (pack(a).expect("a"), pack(b).expect("b"));
                assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(pack(&net("2001:db8::1/128")), None);
        assert_eq!(pack(&app("2001:db8::1", 6, 80)), None);
    }

    #[test]
    fn it_behaves_as_the_btree_set_it_replaces() {
        let mut all = sample();
        all.extend([net("2001:db8::/64"), app("2001:db8::9", 6, 443)]);
        // A fixed pseudo-random walk of inserts and removals, checked step by step.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for only_v4 in [true, false] {
            let pool: Vec<SetElem> = all
                .iter()
                .filter(|e| !only_v4 || pack(e).is_some())
                .copied()
                .collect();
            let mut want: BTreeSet<SetElem> = BTreeSet::new();
            let mut got = SetElems::new();
            for _ in 0..2_000 {
                let e = pool[(next() % pool.len() as u64) as usize];
                if next() % 3 == 0 {
                    assert_eq!(got.remove(&e), want.remove(&e));
                } else {
                    assert_eq!(got.insert(e), want.insert(e));
                }
                assert_eq!(got.len(), want.len());
                assert_eq!(got.contains(&e), want.contains(&e));
                assert!(got.iter().eq(want.iter().copied()));
            }
            assert!(got.iter().rev().eq(want.iter().rev().copied()));
            let other: SetElems = pool.iter().step_by(2).copied().collect();
            let other_want: BTreeSet<SetElem> = pool.iter().step_by(2).copied().collect();
            assert!(
                got.difference(&other)
                    .eq(want.difference(&other_want).copied())
            );
            assert!(
                other
                    .difference(&got)
                    .eq(other_want.difference(&want).copied())
            );
            let mut extended = got.clone();
            extended.extend(pool.iter().copied());
            let mut extended_want = want.clone();
            extended_want.extend(pool.iter().copied());
            assert!(extended.iter().eq(extended_want.iter().copied()));
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    #[test]
    fn equality_is_of_the_elements_whatever_the_storage() {
        let v4 = [net("10.0.0.1/32"), net("10.0.0.2/32")];
        let packed: SetElems = v4.into();
        let mut full: SetElems = [net("2001:db8::1/128")].into();
        full.remove(&net("2001:db8::1/128"));
        for e in v4 {
            full.insert(e);
        }
        assert!(matches!(full.0, Repr::Full(_)));
        assert!(matches!(packed.0, Repr::Packed(_)));
        assert_eq!(packed, full);
        full.insert(net("10.0.0.3/32"));
        assert_ne!(packed, full);
    }
}
