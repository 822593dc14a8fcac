//! TPM 2.0 algorithm identifiers (`TPM_ALG_ID`, TPM 2.0 Part 2 §6.3) and curve
//! identifiers (`TPM_ECC_CURVE`, §6.4) used by quotes and public areas.

use std::fmt;

/// `TPM_ALG_SHA1`.
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_SHA384`.
pub const TPM_ALG_SHA384: u16 = 0x000c;
/// `TPM_ALG_SHA512`.
pub const TPM_ALG_SHA512: u16 = 0x000d;
/// `TPM_ALG_RSASSA` (RSASSA-PKCS1-v1_5).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const TPM_ALG_ECDSA: u16 = 0x0018;

/// `TPM_ALG_RSA`: an RSA object (`TPMT_PUBLIC.type`).
pub const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_ECC`: an elliptic-curve object (`TPMT_PUBLIC.type`).
pub const TPM_ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_NULL`: no algorithm (no symmetric cipher, no scheme, no KDF).
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_AES`.
pub const TPM_ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SM4`.
pub const TPM_ALG_SM4: u16 = 0x0013;
/// `TPM_ALG_CAMELLIA`.
pub const TPM_ALG_CAMELLIA: u16 = 0x0026;
/// `TPM_ALG_CTR` block cipher mode.
pub const TPM_ALG_CTR: u16 = 0x0040;
/// `TPM_ALG_OFB` block cipher mode.
pub const TPM_ALG_OFB: u16 = 0x0041;
/// `TPM_ALG_CBC` block cipher mode.
pub const TPM_ALG_CBC: u16 = 0x0042;
/// `TPM_ALG_CFB` block cipher mode (the one storage keys use).
pub const TPM_ALG_CFB: u16 = 0x0043;
/// `TPM_ALG_ECB` block cipher mode.
pub const TPM_ALG_ECB: u16 = 0x0044;
/// `TPM_ALG_RSAES` (RSAES-PKCS1-v1_5 encryption; its scheme details are empty).
pub const TPM_ALG_RSAES: u16 = 0x0015;
/// `TPM_ALG_OAEP` (RSAES-OAEP encryption).
pub const TPM_ALG_OAEP: u16 = 0x0017;
/// `TPM_ALG_ECDH` key exchange.
pub const TPM_ALG_ECDH: u16 = 0x0019;
/// `TPM_ALG_ECDAA` (its scheme details carry a hash and a `count`).
pub const TPM_ALG_ECDAA: u16 = 0x001a;
/// `TPM_ALG_SM2`.
pub const TPM_ALG_SM2: u16 = 0x001b;
/// `TPM_ALG_ECSCHNORR`.
pub const TPM_ALG_ECSCHNORR: u16 = 0x001c;
/// `TPM_ALG_ECMQV` key exchange.
pub const TPM_ALG_ECMQV: u16 = 0x001d;
/// `TPM_ALG_MGF1` key derivation.
pub const TPM_ALG_MGF1: u16 = 0x0007;
/// `TPM_ALG_KDF1_SP800_56A` key derivation.
pub const TPM_ALG_KDF1_SP800_56A: u16 = 0x0020;
/// `TPM_ALG_KDF2` key derivation.
pub const TPM_ALG_KDF2: u16 = 0x0021;
/// `TPM_ALG_KDF1_SP800_108` key derivation.
pub const TPM_ALG_KDF1_SP800_108: u16 = 0x0022;

/// `TPM_ECC_NIST_P256` (`TPM_ECC_CURVE`).
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384` (`TPM_ECC_CURVE`).
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

/// A hash algorithm a TPM uses for PCR banks and signature schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlg {
    /// SHA-1 (`TPM_ALG_SHA1`). Parsed, never accepted for signature verification.
    Sha1,
    /// SHA-256 (`TPM_ALG_SHA256`).
    Sha256,
    /// SHA-384 (`TPM_ALG_SHA384`).
    Sha384,
    /// SHA-512 (`TPM_ALG_SHA512`). Parsed, not accepted for signature verification.
    Sha512,
}

impl HashAlg {
    /// All supported hash algorithms.
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];

    /// Maps a `TPM_ALG_ID` to a hash algorithm, `None` if it is not one this crate knows.
    pub fn from_tpm(id: u16) -> Option<Self> {
        match id {
            TPM_ALG_SHA1 => Some(Self::Sha1),
            TPM_ALG_SHA256 => Some(Self::Sha256),
            TPM_ALG_SHA384 => Some(Self::Sha384),
            TPM_ALG_SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The `TPM_ALG_ID` of this hash.
    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => TPM_ALG_SHA1,
            Self::Sha256 => TPM_ALG_SHA256,
            Self::Sha384 => TPM_ALG_SHA384,
            Self::Sha512 => TPM_ALG_SHA512,
        }
    }

    /// Digest size in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Lower-case name as tpm2-tools spells PCR banks ("sha1", "sha256", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Parses a bank name as written by tpm2-tools ("sha1", "sha256", "sha384", "sha512").
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Hashes `data` with this algorithm.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(self.aws_algorithm(), data)
            .as_ref()
            .to_vec()
    }

    /// The aws-lc digest algorithm (for incremental hashing).
    pub fn aws_algorithm(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha384 => &aws_lc_rs::digest::SHA384,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sha1 => "SHA-1",
            Self::Sha256 => "SHA-256",
            Self::Sha384 => "SHA-384",
            Self::Sha512 => "SHA-512",
        })
    }
}
