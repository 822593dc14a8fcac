//! A bounds-checked big-endian cursor over untrusted bytes.

use crate::error::Error;

/// Reads TPM-marshalled (big-endian) values; every read is checked.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if n > self.rest.len() {
            return Err(Error::Truncated {
                what,
                need: n,
                got: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Error::Truncated {
            what,
            need: N,
            got: bytes.len(),
        })
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array::<1>(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array::<2>(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array::<4>(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array::<8>(what)?))
    }

    /// Little-endian u64 (bincode length prefixes).
    pub(crate) fn u64_le(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array::<8>(what)?))
    }

    /// A `TPM2B_*`: a u16 size then that many bytes, the size at most `max`.
    pub(crate) fn tpm2b(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], Error> {
        let size = usize::from(self.u16(what)?);
        if size > max {
            return Err(Error::TooLarge {
                what,
                max,
                got: size,
            });
        }
        self.take(size, what)
    }

    /// Fails unless every byte has been consumed.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                what,
                count: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_bounds() {
        let mut r = Reader::new(&[0x12, 0x34, 0x00, 0x01, 0xaa, 0xbb]);
        assert_eq!(r.u16("a").unwrap(), 0x1234);
        assert_eq!(r.tpm2b("b", 4).unwrap(), &[0xaa]);
        assert!(matches!(
            r.finish("x"),
            Err(Error::TrailingBytes { count: 1, .. })
        ));
        assert_eq!(
            r.u32("c"),
            Err(Error::Truncated {
                what: "c",
                need: 4,
                got: 1
            })
        );
        let mut r = Reader::new(&[0x00, 0x05]);
        assert!(matches!(
            r.tpm2b("d", 4),
            Err(Error::TooLarge { max: 4, got: 5, .. })
        ));
    }
}
