//! Netlink attributes (type-length-value, 4-byte aligned) for messages no `netlink-packet-*`
//! crate types (nf_tables expressions, `RTM_GETNETCONF`): a builder with nesting and a
//! reader, both over `netlink-packet-core`'s `Nla` encoding and `NlasIterator`. Netfilter
//! attributes carry numbers big-endian unless noted.

use netlink_packet_core::{Emitable, NLA_F_NESTED, NLA_HEADER_SIZE, Nla, NlasIterator};

/// One attribute borrowed for encoding.
struct Borrowed<'a> {
    kind: u16,
    value: &'a [u8],
}

impl Nla for Borrowed<'_> {
    fn value_len(&self) -> usize {
        self.value.len()
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(self.value);
    }
}

/// Appends attributes to a buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs {
    pub buf: Vec<u8>,
}

impl Attrs {
    pub fn new() -> Self {
        Attrs::default()
    }

    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let nla = Borrowed {
            kind: ty,
            value: data,
        };
        let start = self.buf.len();
        self.buf.resize(start + nla.buffer_len(), 0);
        nla.emit(&mut self.buf[start..]);
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v)
    }

    pub fn u32_be(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn u64_be(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.bytes(ty, &[v])
    }

    pub fn u16_be(&mut self, ty: u16, v: u16) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A nested attribute (flagged `NLA_F_NESTED`, which the kernel's strict validation
    /// wants) whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.bytes(ty | NLA_F_NESTED, &inner.buf)
    }
}

/// The attributes in `buf`: (type without flags, payload); stops at the first malformed one.
pub fn parse(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(buf).map_while(Result::ok).map(|nla| {
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        // Checked by the iterator: the header fits and the length is within the buffer.
        (kind, &nla.into_inner()[NLA_HEADER_SIZE..len])
    })
}

/// The first attribute of type `ty`.
pub fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    parse(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// A NUL-terminated string payload.
pub fn as_str(p: &[u8]) -> String {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

pub fn as_u64_be(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

pub fn as_u16_be(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

/// A host-order `u32` payload (rtnetlink's numbers).
pub fn as_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut a = Attrs::new();
        a.str(1, "nat").u32_be(2, 7).nest(3, |n| {
            n.u8(1, 17).u16_be(2, 8080);
        });
        assert_eq!(a.buf.len() % 4, 0);
        let got: Vec<_> = parse(&a.buf).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(as_str(got[0].1), "nat");
        assert_eq!(got[1].1, &7u32.to_be_bytes());
        let inner: Vec<_> = parse(got[2].1).collect();
        assert_eq!(inner[0], (1, &[17u8][..]));
        assert_eq!(as_u16_be(inner[1].1), Some(8080));
        assert_eq!(find(&a.buf, 3).map(|p| p.len()), Some(16));
    }

    /// The layout the hand-written encoder wrote (length without padding, type with its
    /// flags, value, zeros to 4 bytes), which the crate's encoding must match.
    #[test]
    fn the_encoding_is_the_hand_written_one() {
        let by_hand = |ty: u16, data: &[u8]| {
            let mut v = Vec::new();
            v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(data);
            v.resize(v.len().next_multiple_of(4), 0);
            v
        };
        for len in 0..9 {
            let data: Vec<u8> = (1..=len).collect();
            let mut a = Attrs::new();
            a.bytes(7, &data);
            assert_eq!(a.buf, by_hand(7, &data), "{len} bytes");
            let mut n = Attrs::new();
            n.nest(3, |i| {
                i.bytes(7, &data);
            });
            assert_eq!(n.buf, by_hand(3 | NLA_F_NESTED, &by_hand(7, &data)));
        }
    }

    #[test]
    fn truncated_input_stops() {
        let bad = [8u8, 0, 1, 0, 1];
        assert_eq!(parse(&bad).count(), 0);
    }
}
