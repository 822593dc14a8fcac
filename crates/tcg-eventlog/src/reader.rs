//! A bounds-checked little-endian cursor that knows its offset in the input.

use crate::error::Error;

/// Reads little-endian values from untrusted bytes; every read is checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// A reader of `buf` whose next read starts at `pos` (offsets stay those of `buf`).
    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// Offset of the next byte to be read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let rest = self.rest();
        match rest.get(..n) {
            Some(head) => {
                self.pos += n;
                Ok(head)
            }
            None => Err(Error::Truncated {
                offset: self.pos,
                what,
                need: n,
                got: rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let offset = self.pos;
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Error::Truncated {
            offset,
            what,
            need: N,
            got: bytes.len(),
        })
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(u8::from_le_bytes(self.array::<1>(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array::<2>(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array::<4>(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    pub(crate) fn bytes16(&mut self, what: &'static str) -> Result<[u8; 16], Error> {
        self.array::<16>(what)
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                offset: self.pos,
                what,
                count: self.rest().len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_bounds() {
        let mut r = Reader::new(&[0x34, 0x12, 0x01, 0, 0, 0, 0xaa]);
        assert_eq!(r.u16("a").unwrap(), 0x1234);
        assert_eq!(r.offset(), 2);
        assert_eq!(r.u32("b").unwrap(), 1);
        assert_eq!(
            r.finish("x"),
            Err(Error::TrailingBytes {
                offset: 6,
                what: "x",
                count: 1
            })
        );
        assert_eq!(
            r.u64("c"),
            Err(Error::Truncated {
                offset: 6,
                what: "c",
                need: 8,
                got: 1
            })
        );
        assert_eq!(r.u8("d").unwrap(), 0xaa);
        assert!(r.is_empty());
        assert!(r.finish("y").is_ok());
        assert!(r.take(usize::MAX, "e").is_err());
    }
}
