//! AES-256-XTS (IEEE 1619, "aes-xts-plain64" in dm-crypt's words) over whole data
//! units, at the speed of aws-lc's AES-NI/VAES code.
//!
//! aws-lc is the workspace's one crypto backend, but its Rust binding (`aws-lc-rs`)
//! has no XTS mode; this crate binds aws-lc's `EVP_aes_256_xts` directly. All its
//! `unsafe` code is in the private `ffi` module (ADR 0013).
//!
//! A disk is encrypted in data units (sectors) of 512 to 4096 bytes, each one XTS
//! message whose tweak is a sector number. [`Xts::encrypt_units`] takes a buffer of
//! whole units and the tweak of the first; the tweak steps by `tweak_step` per unit
//! (dm-crypt counts 512-byte sectors, so a 4096-byte unit steps by 8).
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use zeroize::Zeroizing;

mod ffi;

/// The length of an AES-256-XTS key: two AES-256 keys, data key then tweak key.
pub const KEY_LEN: usize = 64;

/// Why a key was refused or a buffer could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is not 64 bytes (AES-128-XTS, a 32-byte key, is not supported).
    #[error("an AES-XTS key of {0} bytes is not supported (only AES-256-XTS, 64 bytes)")]
    KeyLength(usize),
    /// The two halves of the key are equal, which IEEE 1619 and FIPS forbid.
    #[error("the two halves of the AES-XTS key are equal")]
    DuplicatedKeyHalves,
    /// The data unit size is not a multiple of 16 between 16 and 16 MiB.
    #[error("an XTS data unit of {0} bytes is not supported")]
    UnitSize(usize),
    /// The buffer is not a whole number of data units.
    #[error("a buffer of {len} bytes is not a whole number of {unit}-byte data units")]
    Partial {
        /// The buffer's length.
        len: usize,
        /// The data unit size.
        unit: usize,
    },
    /// aws-lc refused an operation it should have accepted.
    #[error("aws-lc refused {0}")]
    Backend(&'static str),
}

/// One AES-256-XTS key, ready to encrypt and decrypt data units.
///
/// It holds aws-lc contexts and is not `Sync`; a thread makes its own with
/// [`Xts::try_clone`]. The expanded keys are wiped when it is dropped.
pub struct Xts {
    key: Zeroizing<[u8; KEY_LEN]>,
    enc: ffi::CipherCtx,
    dec: ffi::CipherCtx,
}

impl std::fmt::Debug for Xts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Xts(<redacted>)")
    }
}

impl Xts {
    /// Expands `key` (64 bytes: data key, then tweak key).
    pub fn new(key: &[u8]) -> Result<Self, Error> {
        let key: [u8; KEY_LEN] = key.try_into().map_err(|_| Error::KeyLength(key.len()))?;
        let key = Zeroizing::new(key);
        if key[..32] == key[32..] {
            return Err(Error::DuplicatedKeyHalves);
        }
        let enc = ffi::CipherCtx::new(&key, true)?;
        let dec = ffi::CipherCtx::new(&key, false)?;
        Ok(Self { key, enc, dec })
    }

    /// Another handle on the same key, for another thread.
    pub fn try_clone(&self) -> Result<Self, Error> {
        Self::new(&self.key[..])
    }

    /// Encrypts `data`, whole units of `unit` bytes, in place; the first unit's
    /// tweak is `first`, each next one adds `step`.
    pub fn encrypt_units(
        &mut self,
        data: &mut [u8],
        unit: usize,
        first: u64,
        step: u64,
    ) -> Result<(), Error> {
        units(&mut self.enc, data, unit, first, step)
    }

    /// Decrypts `data` in place; the inverse of [`Xts::encrypt_units`].
    pub fn decrypt_units(
        &mut self,
        data: &mut [u8],
        unit: usize,
        first: u64,
        step: u64,
    ) -> Result<(), Error> {
        units(&mut self.dec, data, unit, first, step)
    }
}

/// The largest data unit IEEE 1619-2018 allows: 2^20 blocks.
const MAX_UNIT: usize = 16 << 20;

fn units(
    ctx: &mut ffi::CipherCtx,
    data: &mut [u8],
    unit: usize,
    first: u64,
    step: u64,
) -> Result<(), Error> {
    if unit < 16 || !unit.is_multiple_of(16) || unit > MAX_UNIT {
        return Err(Error::UnitSize(unit));
    }
    if !data.len().is_multiple_of(unit) {
        return Err(Error::Partial {
            len: data.len(),
            unit,
        });
    }
    let mut tweak = first;
    for chunk in data.chunks_exact_mut(unit) {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&tweak.to_le_bytes());
        ctx.unit(&iv, chunk)?;
        tweak = tweak.wrapping_add(step);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex_key: &str) -> Xts {
        Xts::new(&hex::decode(hex_key).unwrap()).unwrap()
    }

    // IEEE 1619-2007 Annex B, vector 10: AES-256, data unit sequence number 0xff,
    // 512 bytes of 00..ff 00..ff. The first 32 bytes are the standard's; the last 32
    // were computed with Python `cryptography` (OpenSSL), an independent XTS.
    const V10_KEY: &str = concat!(
        "2718281828459045235360287471352662497757247093699959574966967627",
        "3141592653589793238462643383279502884197169399375105820974944592"
    );
    const V10_CT_HEAD: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b";
    const V10_CT_TAIL: &str = "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

    fn v10_plain() -> Vec<u8> {
        (0..512).map(|i| i as u8).collect()
    }

    #[test]
    fn ieee_1619_vector_10() {
        let mut xts = key(V10_KEY);
        let mut data = v10_plain();
        xts.encrypt_units(&mut data, 512, 0xff, 1).unwrap();
        assert_eq!(hex::encode(&data[..32]), V10_CT_HEAD);
        assert_eq!(hex::encode(&data[480..]), V10_CT_TAIL);
        xts.decrypt_units(&mut data, 512, 0xff, 1).unwrap();
        assert_eq!(data, v10_plain());
    }

    #[test]
    fn units_step_their_tweak() {
        let mut xts = key(V10_KEY);
        let mut batch = vec![7u8; 4096 * 3];
        xts.encrypt_units(&mut batch, 4096, 16, 8).unwrap();
        for (i, unit) in batch.chunks(4096).enumerate() {
            let mut one = vec![7u8; 4096];
            xts.encrypt_units(&mut one, 4096, 16 + 8 * i as u64, 1)
                .unwrap();
            assert_eq!(one, unit, "unit {i}");
        }
        // A clone encrypts alike.
        let mut clone = xts.try_clone().unwrap();
        let mut again = vec![7u8; 4096 * 3];
        clone.encrypt_units(&mut again, 4096, 16, 8).unwrap();
        assert_eq!(again, batch);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        assert!(matches!(Xts::new(&[1; 32]), Err(Error::KeyLength(32))));
        assert!(matches!(
            Xts::new(&[1; 64]),
            Err(Error::DuplicatedKeyHalves)
        ));
        let mut xts = key(V10_KEY);
        assert!(matches!(
            xts.encrypt_units(&mut [0; 100], 512, 0, 1),
            Err(Error::UnitSize(512)) | Err(Error::Partial { .. })
        ));
        assert!(matches!(
            xts.encrypt_units(&mut [0; 24], 24, 0, 1),
            Err(Error::UnitSize(24))
        ));
        assert_eq!(format!("{xts:?}"), "Xts(<redacted>)");
    }
}
