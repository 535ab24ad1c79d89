//! Netlink attribute (TLV) building and parsing. Pure byte manipulation: no sockets, no policy.

/// Netlink attributes are padded to 4 bytes.
pub const ALIGN: usize = 4;
/// Flag set on nested attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

pub fn align(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// A growable buffer of netlink attributes, with support for nesting.
#[derive(Debug, Default, Clone)]
pub struct AttrBuf {
    buf: Vec<u8>,
}

impl AttrBuf {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        // Attribute lengths are u16 on the wire; callers never build larger attributes.
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn put_u8(&mut self, kind: u16, v: u8) -> &mut Self {
        self.put(kind, &[v])
    }

    /// Big-endian u16 (netfilter attributes are network byte order).
    pub fn put_be16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    pub fn put_be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    pub fn put_be64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    pub fn put_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }

    pub fn put_i32(&mut self, kind: u16, v: i32) -> &mut Self {
        self.put(kind, &v.to_ne_bytes())
    }

    /// NUL-terminated string.
    pub fn put_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(kind, &v)
    }

    pub fn put_nested(&mut self, kind: u16, inner: AttrBuf) -> &mut Self {
        self.put(kind | NLA_F_NESTED, &inner.buf)
    }

    /// Builds a nested attribute with a closure.
    pub fn nest(&mut self, kind: u16, f: impl FnOnce(&mut AttrBuf)) -> &mut Self {
        let mut inner = AttrBuf::new();
        f(&mut inner);
        self.put_nested(kind, inner)
    }
}

/// One parsed attribute borrowed from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.value.get(..2)?.try_into().ok()?))
    }
    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.get(..4)?.try_into().ok()?))
    }
    pub fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.value.get(..8)?.try_into().ok()?))
    }
    pub fn ne32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.value.get(..4)?.try_into().ok()?))
    }
    pub fn ne_i32(&self) -> Option<i32> {
        Some(i32::from_ne_bytes(self.value.get(..4)?.try_into().ok()?))
    }
    /// String up to the first NUL (or the whole value).
    pub fn string(&self) -> String {
        let end = self
            .value
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.value.len());
        String::from_utf8_lossy(&self.value[..end]).into_owned()
    }
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.value)
    }
}

/// Iterator over attributes in a byte slice. Stops at the first malformed header.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// First attribute of the given type.
    pub fn get(&self, kind: u16) -> Option<Attr<'a>> {
        self.clone().find(|a: &Attr<'a>| a.kind == kind)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;
    fn next(&mut self) -> Option<Attr<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let value = &self.rest[4..len];
        let next = align(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Attr { kind, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_nested_and_padding() {
        let mut b = AttrBuf::new();
        b.put_str(1, "abc").put_be32(2, 7).nest(3, |n| {
            n.put_u8(1, 9);
        });
        let bytes = b.into_bytes();
        assert_eq!(bytes.len() % 4, 0);
        let attrs: Vec<_> = Attrs::new(&bytes).collect();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].string(), "abc");
        assert_eq!(attrs[1].be32(), Some(7));
        assert_eq!(attrs[2].kind, 3);
        let inner: Vec<_> = attrs[2].nested().collect();
        assert_eq!(inner[0].value, &[9]);
    }

    #[test]
    fn truncated_input_stops_cleanly() {
        let bytes = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(Attrs::new(&bytes).count(), 0);
        assert_eq!(Attrs::new(&[1, 2]).count(), 0);
    }
}
