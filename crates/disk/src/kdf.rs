//! Keyslot key derivation (PBKDF2, Argon2i, Argon2id) and the volume-key digest.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, pbkdf2, rand};
use zeroize::Zeroizing;

use crate::Error;
use crate::metadata::{Digest, Hash, Kdf};

fn pbkdf2_alg(hash: Hash) -> Result<pbkdf2::Algorithm, Error> {
    Ok(match hash {
        Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Hash::Sha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
    })
}

fn pbkdf2_into(
    hash: Hash,
    iterations: u32,
    salt: &[u8],
    secret: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    let iterations =
        NonZeroU32::new(iterations).ok_or(Error::Kdf("PBKDF2 with no iterations".into()))?;
    pbkdf2::derive(pbkdf2_alg(hash)?, iterations, salt, secret, out);
    Ok(())
}

/// Derives `len` bytes from `passphrase` as `kdf` says.
pub fn derive(kdf: &Kdf, passphrase: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    match kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => pbkdf2_into(*hash, *iterations, salt, passphrase, &mut out)?,
        Kdf::Argon2i {
            time,
            memory,
            cpus,
            salt,
        }
        | Kdf::Argon2id {
            time,
            memory,
            cpus,
            salt,
        } => {
            let alg = if matches!(kdf, Kdf::Argon2i { .. }) {
                argon2::Algorithm::Argon2i
            } else {
                argon2::Algorithm::Argon2id
            };
            let params = argon2::Params::new(*memory, *time, *cpus, Some(len))
                .map_err(|e| Error::Kdf(format!("Argon2 parameters: {e}")))?;
            argon2::Argon2::new(alg, argon2::Version::V0x13, params)
                .hash_password_into(passphrase, salt, &mut out)
                .map_err(|e| Error::Kdf(format!("Argon2: {e}")))?;
        }
    }
    Ok(out)
}

/// Which KDF a new keyslot uses, and its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfChoice {
    /// Argon2id with these passes, KiB of memory and lanes.
    Argon2id {
        /// Passes (at least 4, as cryptsetup).
        time: u32,
        /// Memory in KiB.
        memory: u32,
        /// Lanes.
        cpus: u32,
    },
    /// PBKDF2-HMAC-SHA256 with these iterations.
    Pbkdf2 {
        /// Iterations (at least 1000).
        iterations: u32,
    },
    /// PBKDF2-HMAC-SHA512, 1000 iterations: what systemd uses for a secret with full
    /// entropy (a TPM-sealed key), where stretching adds nothing.
    Minimal,
}

impl KdfChoice {
    /// Argon2id with a cost suited to a small guest: 4 passes, 256 MiB, 2 lanes
    /// (cryptsetup would take up to half of the formatting host's memory, which can
    /// leave a small guest's initramfs unable to open its disk).
    pub const DEFAULT_ARGON2ID: Self = Self::Argon2id {
        time: 4,
        memory: 256 << 10,
        cpus: 2,
    };

    /// PBKDF2-HMAC-SHA256 with iterations measured to take about two seconds here,
    /// as cryptsetup does.
    pub fn pbkdf2_calibrated() -> Self {
        Self::Pbkdf2 {
            iterations: calibrate(Hash::Sha256, Duration::from_secs(2)),
        }
    }

    /// A fresh [`Kdf`] with a random salt.
    pub fn instantiate(self) -> Result<Kdf, Error> {
        let mut salt = vec![0u8; 32];
        rand::fill(&mut salt).map_err(|_| Error::Random)?;
        Ok(match self {
            Self::Argon2id { time, memory, cpus } => Kdf::Argon2id {
                time,
                memory,
                cpus,
                salt,
            },
            Self::Pbkdf2 { iterations } => Kdf::Pbkdf2 {
                hash: Hash::Sha256,
                iterations: iterations.max(1000),
                salt,
            },
            Self::Minimal => Kdf::Pbkdf2 {
                hash: Hash::Sha512,
                iterations: 1000,
                salt,
            },
        })
    }
}

/// PBKDF2 iterations of `hash` that take about `target` on this machine (at least
/// 1000).
pub fn calibrate(hash: Hash, target: Duration) -> u32 {
    let probe = 20_000u32;
    let mut out = [0u8; 32];
    let start = Instant::now();
    if pbkdf2_into(hash, probe, b"calibration salt", b"calibration", &mut out).is_err() {
        return 1000;
    }
    let took = start.elapsed().as_secs_f64().max(1e-6);
    let n = f64::from(probe) * target.as_secs_f64() / took;
    (n.min(f64::from(u32::MAX)) as u32).max(1000)
}

/// A new digest of `key` with `iterations` (PBKDF2-HMAC-SHA256, 32-byte salt).
pub fn make_digest(
    key: &[u8],
    iterations: u32,
    keyslot: u32,
    segment: u32,
) -> Result<Digest, Error> {
    let mut salt = vec![0u8; 32];
    rand::fill(&mut salt).map_err(|_| Error::Random)?;
    let mut digest = vec![0u8; 32];
    pbkdf2_into(Hash::Sha256, iterations, &salt, key, &mut digest)?;
    Ok(Digest {
        kind: "pbkdf2".into(),
        keyslots: vec![keyslot.to_string()],
        segments: vec![segment.to_string()],
        hash: Hash::Sha256,
        iterations,
        salt,
        digest,
        other: Default::default(),
    })
}

/// Whether `key` is the key `digest` was made of (constant time).
pub fn check_digest(digest: &Digest, key: &[u8]) -> Result<bool, Error> {
    let mut out = Zeroizing::new(vec![0u8; digest.digest.len()]);
    pbkdf2_into(digest.hash, digest.iterations, &digest.salt, key, &mut out)?;
    Ok(constant_time::verify_slices_are_equal(&out, &digest.digest).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc_6070_and_the_argon2_variants_differ() {
        // RFC 6070 test 2: PBKDF2-HMAC-SHA1("password", "salt", 2, 20).
        let kdf = Kdf::Pbkdf2 {
            hash: Hash::Sha1,
            iterations: 2,
            salt: b"salt".to_vec(),
        };
        assert_eq!(
            hex::encode(&*derive(&kdf, b"password", 20).unwrap()),
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
        );
        // Argon2id differs from Argon2i on the same input, and is deterministic.
        let a = Kdf::Argon2id {
            time: 1,
            memory: 64,
            cpus: 1,
            salt: vec![1; 16],
        };
        let i = Kdf::Argon2i {
            time: 1,
            memory: 64,
            cpus: 1,
            salt: vec![1; 16],
        };
        assert_eq!(derive(&a, b"p", 32).unwrap(), derive(&a, b"p", 32).unwrap());
        assert_ne!(derive(&a, b"p", 32).unwrap(), derive(&i, b"p", 32).unwrap());
    }

    #[test]
    fn a_digest_accepts_its_key_only() {
        let d = make_digest(&[5; 64], 1000, 0, 0).unwrap();
        assert!(check_digest(&d, &[5; 64]).unwrap());
        assert!(!check_digest(&d, &[6; 64]).unwrap());
    }
}
