//! Big-endian TPM marshalling for the encoders (the inverse of [`crate::reader`]).

use crate::error::Error;

/// Appends TPM-marshalled (big-endian) values to a buffer; sized fields are checked
/// against the specification's maxima.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }

    /// A `TPM2B_*`: a u16 size then `v`, which must be at most `max` bytes.
    pub(crate) fn tpm2b(&mut self, what: &'static str, max: usize, v: &[u8]) -> Result<(), Error> {
        let len = u16::try_from(v.len())
            .ok()
            .filter(|&l| usize::from(l) <= max)
            .ok_or(Error::TooLarge {
                what,
                max,
                got: v.len(),
            })?;
        self.u16(len);
        self.bytes(v);
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marshals_big_endian_and_bounds_tpm2b() {
        let mut w = Writer::new();
        w.u8(1);
        w.u16(0x0203);
        w.u32(0x0405_0607);
        w.u64(0x0809_0a0b_0c0d_0e0f);
        w.tpm2b("x", 2, &[0xaa, 0xbb]).unwrap();
        assert_eq!(
            w.tpm2b("x", 2, &[0; 3]),
            Err(Error::TooLarge {
                what: "x",
                max: 2,
                got: 3
            })
        );
        assert_eq!(
            w.finish(),
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 2, 0xaa, 0xbb
            ]
        );
    }
}
