//! Netlink attributes (type-length-value, 4-byte aligned): a builder with nesting and a
//! reader. Netfilter attributes carry numbers big-endian unless noted.

/// `NLA_F_NESTED`: the kernel's strict validation wants it on nested attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attributes to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Attrs {
    pub buf: Vec<u8>,
}

impl Attrs {
    pub fn new() -> Self {
        Attrs::default()
    }

    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
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

    /// A nested attribute whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.bytes(ty | NLA_F_NESTED, &inner.buf)
    }
}

/// Iterates over the attributes in `buf`: (type without flags, payload).
pub fn parse(buf: &[u8]) -> AttrIter<'_> {
    AttrIter { buf }
}

pub struct AttrIter<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            return None;
        }
        let payload = &self.buf[4..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some((ty, payload))
    }
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

    #[test]
    fn truncated_input_stops() {
        let bad = [8u8, 0, 1, 0, 1];
        assert_eq!(parse(&bad).count(), 0);
    }
}
