//! `TPMT_PUBLIC` / `TPM2B_PUBLIC` (TPM 2.0 Part 2 §12.2): the public area of an RSA
//! or ECC object, its Name, its public key, and an encoder for RSA public areas.
//!
//! The public area is what `tpm2_readpublic -o` writes (a `TPM2B_PUBLIC`) and what a
//! `TPM2_Certify` attestation names: the Name of an object is its `nameAlg` followed
//! by the `nameAlg` digest of the marshalled `TPMT_PUBLIC`.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::alg::{
    HashAlg, TPM_ALG_AES, TPM_ALG_CAMELLIA, TPM_ALG_CBC, TPM_ALG_CFB, TPM_ALG_CTR, TPM_ALG_ECB,
    TPM_ALG_ECC, TPM_ALG_ECDAA, TPM_ALG_ECDH, TPM_ALG_ECDSA, TPM_ALG_ECMQV, TPM_ALG_ECSCHNORR,
    TPM_ALG_KDF1_SP800_56A, TPM_ALG_KDF1_SP800_108, TPM_ALG_KDF2, TPM_ALG_MGF1, TPM_ALG_NULL,
    TPM_ALG_OAEP, TPM_ALG_OFB, TPM_ALG_RSA, TPM_ALG_RSAES, TPM_ALG_RSAPSS, TPM_ALG_RSASSA,
    TPM_ALG_SM2, TPM_ALG_SM4, TPM_ECC_NIST_P256, TPM_ECC_NIST_P384,
};
use crate::attest::MAX_DIGEST;
use crate::error::Error;
use crate::key::{EcCurve, EcdsaPublicKey, PublicKey, RsaPublicKey};
use crate::reader::Reader;
use crate::signature::{MAX_ECC_PARAM, MAX_RSA_SIG};
use crate::writer::Writer;

/// Largest RSA modulus (`MAX_RSA_KEY_BYTES`, as in `TPM2B_PUBLIC_KEY_RSA`).
const MAX_RSA_KEY_BYTES: usize = MAX_RSA_SIG;
/// Largest ECC coordinate (`MAX_ECC_KEY_BYTES`, as in `TPM2B_ECC_PARAMETER`).
const MAX_ECC_KEY_BYTES: usize = MAX_ECC_PARAM;
/// `TPM_RH_OWNER`: the storage (owner) hierarchy's handle, its Qualified Name.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_NULL`: the null hierarchy's handle, its Qualified Name.
pub const TPM_RH_NULL: u32 = 0x4000_0007;
/// `TPM_RH_ENDORSEMENT`: the endorsement hierarchy's handle, its Qualified Name (the
/// parent of Azure's vTPM attestation key).
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
/// `TPM_RH_PLATFORM`: the platform hierarchy's handle, its Qualified Name.
pub const TPM_RH_PLATFORM: u32 = 0x4000_000c;
/// The RSA exponent a `TPMS_RSA_PARMS.exponent` of 0 stands for.
pub const RSA_DEFAULT_EXPONENT: u32 = 65537;
/// `TPM_ALG_CMAC`, a `TPMI_ALG_SYM_MODE` value.
const TPM_ALG_CMAC: u16 = 0x003f;
/// `TPM_ALG_SM3_256`, `TPM_ALG_SHA3_256`, `TPM_ALG_SHA3_384`, `TPM_ALG_SHA3_512`:
/// `TPMI_ALG_HASH` values this crate cannot compute but must accept inside schemes.
const OTHER_TPM_HASHES: [u16; 4] = [0x0012, 0x0027, 0x0028, 0x0029];

/// `TPMA_OBJECT`: the attributes of a TPM object (TPM 2.0 Part 2 §8.3), a set of flags.
///
/// Combine flags with `|`; test them with [`ObjectAttributes::contains`]. Bits the
/// specification (revision 1.59) reserves cannot be represented:
/// [`ObjectAttributes::from_bits`] rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ObjectAttributes(u32);

impl ObjectAttributes {
    /// `fixedTPM` (bit 1): the object cannot be duplicated (its hierarchy cannot change).
    pub const FIXED_TPM: Self = Self(1 << 1);
    /// `stClear` (bit 2): the object is lost on TPM Reset/Restart.
    pub const ST_CLEAR: Self = Self(1 << 2);
    /// `fixedParent` (bit 4): the parent cannot change.
    pub const FIXED_PARENT: Self = Self(1 << 4);
    /// `sensitiveDataOrigin` (bit 5): the TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: Self = Self(1 << 5);
    /// `userWithAuth` (bit 6): USER role actions may use the authValue.
    pub const USER_WITH_AUTH: Self = Self(1 << 6);
    /// `adminWithPolicy` (bit 7): ADMIN role actions need a policy session.
    pub const ADMIN_WITH_POLICY: Self = Self(1 << 7);
    /// `noDA` (bit 10): not subject to dictionary-attack protection.
    pub const NO_DA: Self = Self(1 << 10);
    /// `encryptedDuplication` (bit 11): duplication needs an inner wrapper.
    pub const ENCRYPTED_DUPLICATION: Self = Self(1 << 11);
    /// `restricted` (bit 16): the key only operates on TPM-formatted data (a
    /// restricted signing key only signs digests the TPM computed itself).
    pub const RESTRICTED: Self = Self(1 << 16);
    /// `decrypt` (bit 17): the private part may decrypt.
    pub const DECRYPT: Self = Self(1 << 17);
    /// `sign` / `encrypt` (bit 18): the private part may sign (asymmetric keys).
    pub const SIGN_ENCRYPT: Self = Self(1 << 18);
    /// `x509sign` (bit 19, TPM 2.0 revision 1.59): the key signs only via
    /// `TPM2_CertifyX509`, never with `TPM2_Sign`.
    pub const X509_SIGN: Self = Self(1 << 19);
    /// The reserved bits: 0, 3, 8, 9, 12–15 and 20–31. They shall be zero.
    pub const RESERVED_MASK: u32 = 0xfff0_f309;

    /// The flags with their specification names, in bit order.
    const NAMED: [(Self, &'static str); 12] = [
        (Self::FIXED_TPM, "fixedTPM"),
        (Self::ST_CLEAR, "stClear"),
        (Self::FIXED_PARENT, "fixedParent"),
        (Self::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (Self::USER_WITH_AUTH, "userWithAuth"),
        (Self::ADMIN_WITH_POLICY, "adminWithPolicy"),
        (Self::NO_DA, "noDA"),
        (Self::ENCRYPTED_DUPLICATION, "encryptedDuplication"),
        (Self::RESTRICTED, "restricted"),
        (Self::DECRYPT, "decrypt"),
        (Self::SIGN_ENCRYPT, "sign"),
        (Self::X509_SIGN, "x509sign"),
    ];

    /// No flag set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The attributes of a raw `TPMA_OBJECT`; fails with [`Error::ReservedBits`] if a
    /// reserved bit is set.
    pub fn from_bits(bits: u32) -> Result<Self, Error> {
        let reserved = bits & Self::RESERVED_MASK;
        if reserved != 0 {
            return Err(Error::ReservedBits {
                what: "TPMA_OBJECT",
                bits: reserved,
            });
        }
        Ok(Self(bits))
    }

    /// The raw `TPMA_OBJECT` value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags of both (usable in `const` context, unlike `|`).
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for ObjectAttributes {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for ObjectAttributes {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl fmt::Display for ObjectAttributes {
    /// The set flags' specification names joined by `|` (e.g.
    /// `fixedTPM|fixedParent|restricted|sign`), or `(none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMED {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

/// `TPMT_SYM_DEF_OBJECT`: the symmetric cipher a storage key protects its children with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymDefObject {
    /// `TPM_ALG_NULL`: none (what signing and non-storage keys have).
    Null,
    /// A block cipher.
    Cipher {
        /// `TPM_ALG_AES`, `TPM_ALG_SM4` or `TPM_ALG_CAMELLIA`.
        algorithm: u16,
        /// Key size in bits (128, 192 or 256; 128 for SM4).
        key_bits: u16,
        /// The `TPMI_ALG_SYM_MODE` (e.g. `TPM_ALG_CFB`), possibly `TPM_ALG_NULL`.
        mode: u16,
    },
}

impl SymDefObject {
    /// AES-`key_bits` in CFB mode, the cipher of the usual storage keys.
    pub fn aes_cfb(key_bits: u16) -> Self {
        Self::Cipher {
            algorithm: TPM_ALG_AES,
            key_bits,
            mode: TPM_ALG_CFB,
        }
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        let algorithm = r.u16("TPMT_SYM_DEF_OBJECT.algorithm")?;
        if algorithm == TPM_ALG_NULL {
            return Ok(Self::Null);
        }
        let allowed_bits: &[u16] = match algorithm {
            TPM_ALG_AES | TPM_ALG_CAMELLIA => &[128, 192, 256],
            TPM_ALG_SM4 => &[128],
            other => {
                return Err(Error::UnsupportedAlgorithm {
                    what: "TPMT_SYM_DEF_OBJECT.algorithm",
                    id: other,
                });
            }
        };
        let key_bits = r.u16("TPMT_SYM_DEF_OBJECT.keyBits")?;
        if !allowed_bits.contains(&key_bits) {
            return Err(Error::InvalidValue {
                what: "TPMT_SYM_DEF_OBJECT.keyBits",
                got: u64::from(key_bits),
            });
        }
        let mode = r.u16("TPMT_SYM_DEF_OBJECT.mode")?;
        if !matches!(
            mode,
            TPM_ALG_CTR
                | TPM_ALG_OFB
                | TPM_ALG_CBC
                | TPM_ALG_CFB
                | TPM_ALG_ECB
                | TPM_ALG_CMAC
                | TPM_ALG_NULL
        ) {
            return Err(Error::UnsupportedAlgorithm {
                what: "TPMT_SYM_DEF_OBJECT.mode",
                id: mode,
            });
        }
        Ok(Self::Cipher {
            algorithm,
            key_bits,
            mode,
        })
    }

    fn encode(&self, w: &mut Writer) {
        match *self {
            Self::Null => w.u16(TPM_ALG_NULL),
            Self::Cipher {
                algorithm,
                key_bits,
                mode,
            } => {
                w.u16(algorithm);
                w.u16(key_bits);
                w.u16(mode);
            }
        }
    }
}

/// A `TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME` or `TPMT_KDF_SCHEME`: an algorithm and its
/// details (a hash for most schemes, nothing for `TPM_ALG_RSAES` and `TPM_ALG_NULL`,
/// a hash and a `count` for `TPM_ALG_ECDAA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyScheme {
    scheme: u16,
    hash: Option<u16>,
    count: Option<u16>,
}

/// Which union a scheme is read from, i.e. which algorithms are allowed.
#[derive(Clone, Copy)]
enum SchemeKind {
    Rsa,
    Ecc,
    Kdf,
}

impl KeyScheme {
    /// `TPM_ALG_NULL`: no scheme (the key may be used with any allowed scheme).
    pub const NULL: Self = Self {
        scheme: TPM_ALG_NULL,
        hash: None,
        count: None,
    };

    /// A scheme whose details are one hash (every RSA, ECC and KDF scheme except
    /// `TPM_ALG_NULL`, `TPM_ALG_RSAES` and `TPM_ALG_ECDAA`). The pairing is checked when
    /// the scheme is marshalled ([`TpmPublic::encode_rsa`]).
    pub fn with_hash(scheme: u16, hash: HashAlg) -> Self {
        Self {
            scheme,
            hash: Some(hash.tpm_id()),
            count: None,
        }
    }

    /// `TPM_ALG_RSASSA` (RSASSA-PKCS1-v1_5) with `hash`.
    pub fn rsassa(hash: HashAlg) -> Self {
        Self::with_hash(TPM_ALG_RSASSA, hash)
    }

    /// `TPM_ALG_RSAPSS` with `hash`.
    pub fn rsapss(hash: HashAlg) -> Self {
        Self::with_hash(TPM_ALG_RSAPSS, hash)
    }

    /// `TPM_ALG_OAEP` with `hash`.
    pub fn oaep(hash: HashAlg) -> Self {
        Self::with_hash(TPM_ALG_OAEP, hash)
    }

    /// `TPM_ALG_RSAES` (no details).
    pub fn rsaes() -> Self {
        Self {
            scheme: TPM_ALG_RSAES,
            hash: None,
            count: None,
        }
    }

    /// The scheme's `TPM_ALG_ID`.
    pub fn scheme_id(&self) -> u16 {
        self.scheme
    }

    /// Whether this is `TPM_ALG_NULL`.
    pub fn is_null(&self) -> bool {
        self.scheme == TPM_ALG_NULL
    }

    /// The raw `hashAlg` of the details, if the scheme has one (it may be a TPM hash
    /// this crate cannot compute, e.g. SM3).
    pub fn hash_alg_id(&self) -> Option<u16> {
        self.hash
    }

    /// The hash of the details, `None` if there is none or this crate does not know it.
    pub fn hash_alg(&self) -> Option<HashAlg> {
        self.hash.and_then(HashAlg::from_tpm)
    }

    /// The `count` of a `TPM_ALG_ECDAA` scheme.
    pub fn ecdaa_count(&self) -> Option<u16> {
        self.count
    }

    fn parse(r: &mut Reader<'_>, kind: SchemeKind) -> Result<Self, Error> {
        let (what, what_hash) = match kind {
            SchemeKind::Rsa => ("TPMT_RSA_SCHEME.scheme", "TPMT_RSA_SCHEME.details.hashAlg"),
            SchemeKind::Ecc => ("TPMT_ECC_SCHEME.scheme", "TPMT_ECC_SCHEME.details.hashAlg"),
            SchemeKind::Kdf => ("TPMT_KDF_SCHEME.scheme", "TPMT_KDF_SCHEME.details.hashAlg"),
        };
        let scheme = r.u16(what)?;
        // (has a hash, has a count)
        let layout = match (kind, scheme) {
            (_, TPM_ALG_NULL) | (SchemeKind::Rsa, TPM_ALG_RSAES) => (false, false),
            (SchemeKind::Rsa, TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP)
            | (
                SchemeKind::Ecc,
                TPM_ALG_ECDSA | TPM_ALG_ECDH | TPM_ALG_SM2 | TPM_ALG_ECSCHNORR | TPM_ALG_ECMQV,
            )
            | (
                SchemeKind::Kdf,
                TPM_ALG_MGF1 | TPM_ALG_KDF1_SP800_56A | TPM_ALG_KDF2 | TPM_ALG_KDF1_SP800_108,
            ) => (true, false),
            (SchemeKind::Ecc, TPM_ALG_ECDAA) => (true, true),
            (_, other) => return Err(Error::UnsupportedAlgorithm { what, id: other }),
        };
        let (has_hash, has_count) = layout;
        let hash = if has_hash {
            let id = r.u16(what_hash)?;
            if HashAlg::from_tpm(id).is_none() && !OTHER_TPM_HASHES.contains(&id) {
                return Err(Error::UnsupportedAlgorithm {
                    what: what_hash,
                    id,
                });
            }
            Some(id)
        } else {
            None
        };
        let count = if has_count {
            Some(r.u16("TPMS_SCHEME_ECDAA.count")?)
        } else {
            None
        };
        Ok(Self {
            scheme,
            hash,
            count,
        })
    }

    fn encode(&self, w: &mut Writer) {
        w.u16(self.scheme);
        if let Some(hash) = self.hash {
            w.u16(hash);
        }
        if let Some(count) = self.count {
            w.u16(count);
        }
    }
}

/// The type of a public area (`TPMT_PUBLIC.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectType {
    /// `TPM_ALG_RSA`.
    Rsa,
    /// `TPM_ALG_ECC`.
    Ecc,
}

impl ObjectType {
    /// The `TPM_ALG_ID`.
    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Rsa => TPM_ALG_RSA,
            Self::Ecc => TPM_ALG_ECC,
        }
    }
}

/// `TPMS_RSA_PARMS` and the `TPM2B_PUBLIC_KEY_RSA` of an RSA public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaDetails {
    /// `symmetric`.
    pub symmetric: SymDefObject,
    /// `scheme` (`TPMT_RSA_SCHEME`).
    pub scheme: KeyScheme,
    /// `keyBits`: the modulus size in bits.
    pub key_bits: u16,
    /// `exponent` as marshalled; 0 stands for 65537 (see
    /// [`RsaDetails::effective_exponent`]).
    pub exponent: u32,
    /// `unique.rsa`: the modulus, big-endian, exactly `key_bits / 8` bytes.
    pub modulus: Vec<u8>,
}

impl RsaDetails {
    /// The public exponent: `exponent`, or 65537 if it is 0.
    pub fn effective_exponent(&self) -> u32 {
        match self.exponent {
            0 => RSA_DEFAULT_EXPONENT,
            e => e,
        }
    }
}

/// `TPMS_ECC_PARMS` and the `TPMS_ECC_POINT` of an ECC public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccDetails {
    /// `symmetric`.
    pub symmetric: SymDefObject,
    /// `scheme` (`TPMT_ECC_SCHEME`).
    pub scheme: KeyScheme,
    /// `curveID` (`TPM_ECC_CURVE`, e.g. [`crate::alg::TPM_ECC_NIST_P256`]).
    pub curve_id: u16,
    /// `kdf` (`TPMT_KDF_SCHEME`).
    pub kdf: KeyScheme,
    /// `unique.ecc.x`, big-endian.
    pub x: Vec<u8>,
    /// `unique.ecc.y`, big-endian.
    pub y: Vec<u8>,
}

/// The type-specific part of a public area: `parameters` and `unique`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicDetails {
    /// An RSA key.
    Rsa(RsaDetails),
    /// An ECC key.
    Ecc(EccDetails),
}

/// What [`TpmPublic::encode_rsa`] marshals into an RSA `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaTemplate {
    /// `nameAlg`.
    pub name_alg: HashAlg,
    /// `objectAttributes`.
    pub attributes: ObjectAttributes,
    /// `authPolicy`: empty or a `name_alg` digest.
    pub auth_policy: Vec<u8>,
    /// `parameters.rsaDetail.symmetric`.
    pub symmetric: SymDefObject,
    /// `parameters.rsaDetail.scheme`.
    pub scheme: KeyScheme,
    /// The modulus, big-endian (leading zero bytes are dropped); `keyBits` is its
    /// length in bits.
    pub modulus: Vec<u8>,
    /// `parameters.rsaDetail.exponent`; 0 stands for 65537 (and is what TPMs write
    /// for 65537).
    pub exponent: u32,
}

impl RsaTemplate {
    /// A template for `modulus` with `attributes`, `nameAlg` SHA-256, no policy, no
    /// symmetric cipher, no scheme and the default exponent.
    pub fn new(attributes: ObjectAttributes, modulus: &[u8]) -> Self {
        Self {
            name_alg: HashAlg::Sha256,
            attributes,
            auth_policy: Vec::new(),
            symmetric: SymDefObject::Null,
            scheme: KeyScheme::NULL,
            modulus: modulus.to_vec(),
            exponent: 0,
        }
    }
}

/// A parsed `TPMT_PUBLIC` of an RSA or ECC object, with its marshalled bytes kept
/// (the Name is computed over them exactly as received).
///
/// A public area is a claim: that it belongs to a TPM-resident key follows only from a
/// verified [`crate::verify_certify`] (or from a trusted source), and its attributes
/// say what the TPM lets the key do only if the TPM is genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    raw: Vec<u8>,
    name_alg: HashAlg,
    attributes: ObjectAttributes,
    auth_policy: Vec<u8>,
    details: PublicDetails,
}

impl TpmPublic {
    /// Parses a marshalled `TPMT_PUBLIC` (no size prefix), consuming all of `bytes`.
    ///
    /// Accepts `type` RSA and ECC only (others are [`Error::UnsupportedAlgorithm`]) and
    /// a `nameAlg` of SHA-1, SHA-256, SHA-384 or SHA-512 (a Name must be computable).
    /// Rejects reserved attribute bits ([`Error::ReservedBits`]), an `authPolicy` that
    /// is neither empty nor a `nameAlg` digest, symmetric/scheme/KDF algorithms not
    /// allowed in their field, an RSA `keyBits` that is not a multiple of 8 up to 4096
    /// or does not match the modulus size, an empty ECC coordinate (so templates with
    /// an empty `unique` are refused), sizes beyond the specification's maxima, truncation and trailing
    /// bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let parsed = Self::parse_from(&mut r, bytes)?;
        r.finish("TPMT_PUBLIC")?;
        Ok(parsed)
    }

    /// Parses a marshalled `TPM2B_PUBLIC` (a u16 size, then a `TPMT_PUBLIC` of exactly
    /// that size), as `tpm2_readpublic -o` writes it, consuming all of `bytes`.
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let inner = r.tpm2b("TPM2B_PUBLIC.size", usize::from(u16::MAX))?;
        r.finish("TPM2B_PUBLIC")?;
        Self::parse(inner)
    }

    /// Parses either form: a `TPM2B_PUBLIC` when the first u16 equals the number of
    /// bytes after it, otherwise a `TPMT_PUBLIC`.
    ///
    /// If the bytes look like a `TPM2B_PUBLIC` but do not parse as one, they are tried
    /// as a `TPMT_PUBLIC` (no valid input parses both ways: the second u16 would have
    /// to be both a `nameAlg` and an object type); the `TPM2B_PUBLIC` error is
    /// returned if that fails too.
    pub fn parse_auto(bytes: &[u8]) -> Result<Self, Error> {
        let prefixed = match bytes {
            [hi, lo, rest @ ..] => usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len(),
            _ => false,
        };
        if prefixed {
            Self::parse_tpm2b(bytes).or_else(|err| Self::parse(bytes).map_err(|_| err))
        } else {
            Self::parse(bytes)
        }
    }

    fn parse_from(r: &mut Reader<'_>, bytes: &[u8]) -> Result<Self, Error> {
        let ty = r.u16("TPMT_PUBLIC.type")?;
        let object_type = match ty {
            TPM_ALG_RSA => ObjectType::Rsa,
            TPM_ALG_ECC => ObjectType::Ecc,
            other => {
                return Err(Error::UnsupportedAlgorithm {
                    what: "TPMT_PUBLIC.type",
                    id: other,
                });
            }
        };
        let name_alg_id = r.u16("TPMT_PUBLIC.nameAlg")?;
        let name_alg = HashAlg::from_tpm(name_alg_id).ok_or(Error::UnsupportedAlgorithm {
            what: "TPMT_PUBLIC.nameAlg",
            id: name_alg_id,
        })?;
        let attributes = ObjectAttributes::from_bits(r.u32("TPMT_PUBLIC.objectAttributes")?)?;
        let auth_policy = r.tpm2b("TPMT_PUBLIC.authPolicy", MAX_DIGEST)?.to_vec();
        if !auth_policy.is_empty() && auth_policy.len() != name_alg.digest_len() {
            return Err(Error::InvalidValue {
                what: "TPMT_PUBLIC.authPolicy size (must be 0 or the nameAlg digest size)",
                got: u64::try_from(auth_policy.len()).unwrap_or(u64::MAX),
            });
        }
        let details = match object_type {
            ObjectType::Rsa => PublicDetails::Rsa(parse_rsa(r)?),
            ObjectType::Ecc => PublicDetails::Ecc(parse_ecc(r)?),
        };
        Ok(Self {
            raw: bytes.to_vec(),
            name_alg,
            attributes,
            auth_policy,
            details,
        })
    }

    /// Marshals an RSA `TPMT_PUBLIC` (no size prefix) from `template`.
    ///
    /// Meant for tests and for TPM emulators / vTPM code that must produce public
    /// areas; verifiers parse the bytes they receive instead. The result always parses
    /// with [`TpmPublic::parse`] (it is checked), so a template the parser would
    /// refuse (e.g. a bad `auth_policy` size, an empty or over-4096-bit modulus, a
    /// scheme not allowed for RSA) is an error. Wrap it with
    /// [`TpmPublic::to_tpm2b`] for the `TPM2B_PUBLIC` form.
    pub fn encode_rsa(template: &RsaTemplate) -> Result<Vec<u8>, Error> {
        let skip = template.modulus.iter().take_while(|&&b| b == 0).count();
        let modulus = template.modulus.get(skip..).unwrap_or_default();
        let key_bits = modulus
            .len()
            .checked_mul(8)
            .and_then(|bits| u16::try_from(bits).ok())
            .filter(|_| modulus.len() <= MAX_RSA_KEY_BYTES)
            .ok_or(Error::TooLarge {
                what: "TPM2B_PUBLIC_KEY_RSA",
                max: MAX_RSA_KEY_BYTES,
                got: modulus.len(),
            })?;
        let mut w = Writer::new();
        w.u16(TPM_ALG_RSA);
        w.u16(template.name_alg.tpm_id());
        w.u32(template.attributes.bits());
        w.tpm2b("TPMT_PUBLIC.authPolicy", MAX_DIGEST, &template.auth_policy)?;
        template.symmetric.encode(&mut w);
        template.scheme.encode(&mut w);
        w.u16(key_bits);
        w.u32(template.exponent);
        w.tpm2b("TPM2B_PUBLIC_KEY_RSA", MAX_RSA_KEY_BYTES, modulus)?;
        let bytes = w.finish();
        Self::parse(&bytes)?;
        Ok(bytes)
    }

    /// The marshalled `TPMT_PUBLIC` exactly as received (what the Name is computed over).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The `TPM2B_PUBLIC` form: the size as a big-endian u16, then [`TpmPublic::raw`].
    pub fn to_tpm2b(&self) -> Vec<u8> {
        // A parsed TPMT_PUBLIC of an RSA or ECC key is at most ~600 bytes.
        let size = u16::try_from(self.raw.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(self.raw.len() + 2);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.raw);
        out
    }

    /// `type`.
    pub fn object_type(&self) -> ObjectType {
        match self.details {
            PublicDetails::Rsa(_) => ObjectType::Rsa,
            PublicDetails::Ecc(_) => ObjectType::Ecc,
        }
    }

    /// `nameAlg`: the hash of the object's Name.
    pub fn name_alg(&self) -> HashAlg {
        self.name_alg
    }

    /// `objectAttributes`.
    pub fn attributes(&self) -> ObjectAttributes {
        self.attributes
    }

    /// `authPolicy` (empty, or a `nameAlg` digest).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// `parameters` and `unique`.
    pub fn details(&self) -> &PublicDetails {
        &self.details
    }

    /// `parameters.*Detail.symmetric`.
    pub fn symmetric(&self) -> SymDefObject {
        match &self.details {
            PublicDetails::Rsa(d) => d.symmetric,
            PublicDetails::Ecc(d) => d.symmetric,
        }
    }

    /// `parameters.*Detail.scheme`.
    pub fn scheme(&self) -> KeyScheme {
        match &self.details {
            PublicDetails::Rsa(d) => d.scheme,
            PublicDetails::Ecc(d) => d.scheme,
        }
    }

    /// The object's Name: `nameAlg` as a big-endian u16, then the `nameAlg` digest of
    /// the marshalled `TPMT_PUBLIC` (TPM 2.0 Part 1 §16). This is what
    /// `TPMS_CERTIFY_INFO.name` holds for a certified object.
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.tpm_id().to_be_bytes().to_vec();
        name.extend_from_slice(&self.name_alg.digest(&self.raw));
        name
    }

    /// The object's Qualified Name given its parent's: `nameAlg` as a big-endian u16,
    /// then `H_nameAlg(parent_qualified_name || name)` (TPM 2.0 Part 1 §16).
    ///
    /// A primary object's parent is a hierarchy, whose Qualified Name is its handle:
    /// pass e.g. `&TPM_RH_ENDORSEMENT.to_be_bytes()`. For a signing key this is what
    /// its attestations carry in `qualifiedSigner`, so comparing the two binds a
    /// verified quote or certification to this public area.
    pub fn qualified_name(&self, parent_qualified_name: &[u8]) -> Vec<u8> {
        let mut ctx = aws_lc_rs::digest::Context::new(self.name_alg.aws_algorithm());
        ctx.update(parent_qualified_name);
        ctx.update(&self.name());
        let mut qn = self.name_alg.tpm_id().to_be_bytes().to_vec();
        qn.extend_from_slice(ctx.finish().as_ref());
        qn
    }

    /// The public key, usable with [`crate::verify_signature`] and friends.
    ///
    /// RSA keys must be 2048–8192 bits ([`RsaPublicKey::from_components`]); ECC keys
    /// must be on NIST P-256 or P-384 (other curves are
    /// [`Error::UnsupportedAlgorithm`]) and the point must be on the curve.
    pub fn public_key(&self) -> Result<PublicKey, Error> {
        match &self.details {
            PublicDetails::Rsa(d) => {
                RsaPublicKey::from_components(&d.modulus, &d.effective_exponent().to_be_bytes())
                    .map(PublicKey::Rsa)
            }
            PublicDetails::Ecc(d) => {
                let curve = match d.curve_id {
                    TPM_ECC_NIST_P256 => EcCurve::P256,
                    TPM_ECC_NIST_P384 => EcCurve::P384,
                    other => {
                        return Err(Error::UnsupportedAlgorithm {
                            what: "ECC curve",
                            id: other,
                        });
                    }
                };
                EcdsaPublicKey::from_affine(curve, &d.x, &d.y).map(PublicKey::Ecdsa)
            }
        }
    }

    /// Whether this is a restricted signing key (`restricted` and `sign` set, `decrypt`
    /// clear): the kind of key (an attestation key) that only signs data the TPM
    /// produced itself, such as quotes and certifications.
    pub fn is_restricted_signing_key(&self) -> bool {
        self.attributes
            .contains(ObjectAttributes::RESTRICTED | ObjectAttributes::SIGN_ENCRYPT)
            && !self.attributes.contains(ObjectAttributes::DECRYPT)
    }

    /// Whether this is a decryption-only key (`decrypt` set, `sign` clear). It may be
    /// `restricted` (a storage parent) or not (a key that decrypts caller data);
    /// check [`TpmPublic::attributes`] to tell.
    pub fn is_decryption_key(&self) -> bool {
        self.attributes.contains(ObjectAttributes::DECRYPT)
            && !self.attributes.contains(ObjectAttributes::SIGN_ENCRYPT)
    }
}

fn parse_rsa(r: &mut Reader<'_>) -> Result<RsaDetails, Error> {
    let symmetric = SymDefObject::parse(r)?;
    let scheme = KeyScheme::parse(r, SchemeKind::Rsa)?;
    let key_bits = r.u16("TPMS_RSA_PARMS.keyBits")?;
    let max_bits = MAX_RSA_KEY_BYTES * 8;
    if key_bits == 0 || key_bits % 8 != 0 || usize::from(key_bits) > max_bits {
        return Err(Error::InvalidValue {
            what: "TPMS_RSA_PARMS.keyBits",
            got: u64::from(key_bits),
        });
    }
    let exponent = r.u32("TPMS_RSA_PARMS.exponent")?;
    let modulus = r.tpm2b("TPM2B_PUBLIC_KEY_RSA", MAX_RSA_KEY_BYTES)?.to_vec();
    if modulus.len() * 8 != usize::from(key_bits) {
        return Err(Error::InvalidValue {
            what: "TPM2B_PUBLIC_KEY_RSA size (must be keyBits / 8)",
            got: u64::try_from(modulus.len()).unwrap_or(u64::MAX),
        });
    }
    Ok(RsaDetails {
        symmetric,
        scheme,
        key_bits,
        exponent,
        modulus,
    })
}

fn parse_ecc(r: &mut Reader<'_>) -> Result<EccDetails, Error> {
    let symmetric = SymDefObject::parse(r)?;
    let scheme = KeyScheme::parse(r, SchemeKind::Ecc)?;
    let curve_id = r.u16("TPMS_ECC_PARMS.curveID")?;
    let kdf = KeyScheme::parse(r, SchemeKind::Kdf)?;
    let x = r.tpm2b("TPMS_ECC_POINT.x", MAX_ECC_KEY_BYTES)?.to_vec();
    let y = r.tpm2b("TPMS_ECC_POINT.y", MAX_ECC_KEY_BYTES)?.to_vec();
    if x.is_empty() || y.is_empty() {
        return Err(Error::InvalidValue {
            what: "TPMS_ECC_POINT coordinate size (empty: a template, not a key)",
            got: 0,
        });
    }
    Ok(EccDetails {
        symmetric,
        scheme,
        curve_id,
        kdf,
        x,
        y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    const AK_ATTRS: ObjectAttributes = ObjectAttributes::FIXED_TPM
        .union(ObjectAttributes::FIXED_PARENT)
        .union(ObjectAttributes::SENSITIVE_DATA_ORIGIN)
        .union(ObjectAttributes::USER_WITH_AUTH)
        .union(ObjectAttributes::RESTRICTED)
        .union(ObjectAttributes::SIGN_ENCRYPT);

    /// Offsets in an RSA TPMT_PUBLIC with an empty authPolicy, NULL symmetric and an
    /// RSASSA scheme.
    const AT_TYPE: usize = 0;
    const AT_NAME_ALG: usize = 2;
    const AT_ATTRS: usize = 4;
    const AT_POLICY: usize = 8;
    const AT_SYM: usize = 10;
    const AT_SCHEME: usize = 12;
    const AT_KEY_BITS: usize = 16;
    const AT_EXPONENT: usize = 18;
    const AT_MODULUS: usize = 22;

    fn modulus() -> Vec<u8> {
        let mut n = vec![0xc5; 256];
        n[255] = 0x0b;
        n
    }

    fn rsa_ak() -> Vec<u8> {
        let mut t = RsaTemplate::new(AK_ATTRS, &modulus());
        t.scheme = KeyScheme::rsassa(HashAlg::Sha256);
        TpmPublic::encode_rsa(&t).unwrap()
    }

    fn set_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// An ECC TPMT_PUBLIC, marshalled by hand.
    fn ecc(scheme: &[u16], curve: u16, kdf: &[u16], x: &[u8], y: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(TPM_ALG_ECC);
        w.u16(0x000b);
        w.u32(AK_ATTRS.bits());
        w.u16(0);
        w.u16(TPM_ALG_NULL);
        scheme.iter().for_each(|&v| w.u16(v));
        w.u16(curve);
        kdf.iter().for_each(|&v| w.u16(v));
        w.tpm2b("x", 200, x).unwrap();
        w.tpm2b("y", 200, y).unwrap();
        w.finish()
    }

    #[test]
    fn rsa_roundtrip_fields_and_name() {
        let raw = rsa_ak();
        assert_eq!(raw.len(), AT_MODULUS + 2 + 256);
        assert_eq!(&raw[AT_TYPE..AT_NAME_ALG], &[0x00, 0x01]);
        assert_eq!(&raw[AT_ATTRS..AT_POLICY], &[0x00, 0x05, 0x00, 0x72]);
        let p = TpmPublic::parse(&raw).unwrap();
        assert_eq!(p.raw(), raw.as_slice());
        assert_eq!(p.object_type(), ObjectType::Rsa);
        assert_eq!(p.object_type().tpm_id(), TPM_ALG_RSA);
        assert_eq!(p.name_alg(), HashAlg::Sha256);
        assert_eq!(p.attributes(), AK_ATTRS);
        assert!(p.auth_policy().is_empty());
        assert_eq!(p.symmetric(), SymDefObject::Null);
        assert_eq!(p.scheme(), KeyScheme::rsassa(HashAlg::Sha256));
        assert_eq!(p.scheme().hash_alg(), Some(HashAlg::Sha256));
        let PublicDetails::Rsa(d) = p.details() else {
            panic!("not RSA")
        };
        assert_eq!(d.key_bits, 2048);
        assert_eq!(d.exponent, 0);
        assert_eq!(d.effective_exponent(), 65537);
        assert_eq!(d.modulus, modulus());
        assert!(p.is_restricted_signing_key());
        assert!(!p.is_decryption_key());

        let name = p.name();
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(&name[2..], HashAlg::Sha256.digest(&raw).as_slice());

        let tpm2b = p.to_tpm2b();
        assert_eq!(&tpm2b[..2], &(raw.len() as u16).to_be_bytes());
        assert_eq!(TpmPublic::parse_tpm2b(&tpm2b).unwrap(), p);
        assert_eq!(TpmPublic::parse_auto(&tpm2b).unwrap(), p);
        assert_eq!(TpmPublic::parse_auto(&raw).unwrap(), p);
    }

    #[test]
    fn every_truncation_and_trailing_bytes_are_rejected() {
        let raw = rsa_ak();
        for cut in 0..raw.len() {
            assert!(
                matches!(TpmPublic::parse(&raw[..cut]), Err(Error::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(
            TpmPublic::parse(&long),
            Err(Error::TrailingBytes {
                what: "TPMT_PUBLIC",
                count: 1
            })
        );
        // TPM2B size disagreeing with the data.
        let p = TpmPublic::parse(&raw).unwrap();
        let mut t = p.to_tpm2b();
        t.push(0);
        assert_eq!(
            TpmPublic::parse_tpm2b(&t),
            Err(Error::TrailingBytes {
                what: "TPM2B_PUBLIC",
                count: 1
            })
        );
        t.truncate(t.len() - 2);
        assert!(matches!(
            TpmPublic::parse_tpm2b(&t),
            Err(Error::Truncated {
                what: "TPM2B_PUBLIC.size",
                ..
            })
        ));
        // A TPM2B whose size covers one byte too few: the inner TPMT is truncated.
        let mut t = p.to_tpm2b();
        set_u16(&mut t, 0, raw.len() as u16 - 1);
        t.pop();
        assert!(matches!(
            TpmPublic::parse_tpm2b(&t),
            Err(Error::Truncated { .. })
        ));
        assert!(TpmPublic::parse_tpm2b(&[]).is_err());
        assert!(TpmPublic::parse_tpm2b(&[0, 0]).is_err());
        assert!(TpmPublic::parse_auto(&[]).is_err());
    }

    #[test]
    fn header_field_errors() {
        let raw = rsa_ak();
        let mut b = raw.clone();
        set_u16(&mut b, AT_TYPE, 0x0008); // KEYEDHASH
        assert_eq!(
            TpmPublic::parse(&b),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_PUBLIC.type",
                id: 0x0008
            })
        );
        for bad_name_alg in [TPM_ALG_NULL, 0x0012, 0x0099] {
            let mut b = raw.clone();
            set_u16(&mut b, AT_NAME_ALG, bad_name_alg);
            assert_eq!(
                TpmPublic::parse(&b),
                Err(Error::UnsupportedAlgorithm {
                    what: "TPMT_PUBLIC.nameAlg",
                    id: bad_name_alg
                })
            );
        }
        for bit in [0u32, 3, 8, 9, 12, 15, 20, 31] {
            let mut b = raw.clone();
            let attrs = AK_ATTRS.bits() | (1 << bit);
            b[AT_ATTRS..AT_POLICY].copy_from_slice(&attrs.to_be_bytes());
            assert_eq!(
                TpmPublic::parse(&b),
                Err(Error::ReservedBits {
                    what: "TPMA_OBJECT",
                    bits: 1 << bit
                }),
                "bit {bit}"
            );
        }
        // authPolicy: at most 64 bytes, and 0 or the nameAlg digest size.
        let mut b = raw[..AT_POLICY].to_vec();
        b.extend([0x00, 65]);
        b.extend([0; 65]);
        assert!(matches!(
            TpmPublic::parse(&b),
            Err(Error::TooLarge {
                what: "TPMT_PUBLIC.authPolicy",
                max: 64,
                got: 65
            })
        ));
        let mut t = RsaTemplate::new(AK_ATTRS, &modulus());
        t.auth_policy = vec![0xaa; 20];
        assert!(matches!(
            TpmPublic::encode_rsa(&t),
            Err(Error::InvalidValue { got: 20, .. })
        ));
        t.auth_policy = vec![0xaa; 32];
        let p = TpmPublic::parse(&TpmPublic::encode_rsa(&t).unwrap()).unwrap();
        assert_eq!(p.auth_policy(), &[0xaa; 32]);
        t.name_alg = HashAlg::Sha384;
        assert!(TpmPublic::encode_rsa(&t).is_err());
        t.auth_policy = vec![0xaa; 48];
        let p = TpmPublic::parse(&TpmPublic::encode_rsa(&t).unwrap()).unwrap();
        assert_eq!(&p.name()[..2], &[0x00, 0x0c]);
        assert_eq!(p.name().len(), 50);
    }

    #[test]
    fn symmetric_and_scheme_errors() {
        let raw = rsa_ak();
        // Symmetric: a storage key's AES-128-CFB parses...
        let mut t = RsaTemplate::new(
            ObjectAttributes::RESTRICTED | ObjectAttributes::DECRYPT,
            &modulus(),
        );
        t.symmetric = SymDefObject::aes_cfb(128);
        let storage = TpmPublic::parse(&TpmPublic::encode_rsa(&t).unwrap()).unwrap();
        assert_eq!(storage.symmetric(), SymDefObject::aes_cfb(128));
        assert!(storage.is_decryption_key());
        assert!(!storage.is_restricted_signing_key());
        // ...others do not.
        for (sym, err) in [
            (
                SymDefObject::Cipher {
                    algorithm: 0x000a, // XOR: not a TPMI_ALG_SYM_OBJECT
                    key_bits: 128,
                    mode: TPM_ALG_CFB,
                },
                Error::UnsupportedAlgorithm {
                    what: "TPMT_SYM_DEF_OBJECT.algorithm",
                    id: 0x000a,
                },
            ),
            (
                SymDefObject::aes_cfb(100),
                Error::InvalidValue {
                    what: "TPMT_SYM_DEF_OBJECT.keyBits",
                    got: 100,
                },
            ),
            (
                SymDefObject::Cipher {
                    algorithm: TPM_ALG_SM4,
                    key_bits: 256,
                    mode: TPM_ALG_CFB,
                },
                Error::InvalidValue {
                    what: "TPMT_SYM_DEF_OBJECT.keyBits",
                    got: 256,
                },
            ),
            (
                SymDefObject::Cipher {
                    algorithm: TPM_ALG_AES,
                    key_bits: 128,
                    mode: 0x0014,
                },
                Error::UnsupportedAlgorithm {
                    what: "TPMT_SYM_DEF_OBJECT.mode",
                    id: 0x0014,
                },
            ),
        ] {
            t.symmetric = sym;
            assert_eq!(TpmPublic::encode_rsa(&t), Err(err));
        }

        // RSA schemes: RSAES has no details, the others one hash.
        t.symmetric = SymDefObject::Null;
        for scheme in [
            KeyScheme::NULL,
            KeyScheme::rsaes(),
            KeyScheme::oaep(HashAlg::Sha1),
            KeyScheme::rsapss(HashAlg::Sha384),
        ] {
            t.scheme = scheme;
            let bytes = TpmPublic::encode_rsa(&t).unwrap();
            let p = TpmPublic::parse(&bytes).unwrap();
            assert_eq!(p.scheme(), scheme);
            assert_eq!(p.scheme().is_null(), scheme == KeyScheme::NULL);
        }
        assert_eq!(KeyScheme::rsaes().hash_alg_id(), None);
        // An ECC scheme, an unknown hash.
        t.scheme = KeyScheme::with_hash(TPM_ALG_ECDSA, HashAlg::Sha256);
        assert_eq!(
            TpmPublic::encode_rsa(&t),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_RSA_SCHEME.scheme",
                id: TPM_ALG_ECDSA
            })
        );
        let mut b = raw.clone();
        set_u16(&mut b, AT_SCHEME + 2, 0x0099);
        assert_eq!(
            TpmPublic::parse(&b),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_RSA_SCHEME.details.hashAlg",
                id: 0x0099
            })
        );
        // SM3 is a TPM hash: accepted in a scheme, unknown to HashAlg.
        let mut b = raw.clone();
        set_u16(&mut b, AT_SCHEME + 2, 0x0012);
        let p = TpmPublic::parse(&b).unwrap();
        assert_eq!(p.scheme().hash_alg_id(), Some(0x0012));
        assert_eq!(p.scheme().hash_alg(), None);
        // The symmetric field of the AK is NULL: anything else is read as a cipher.
        let mut b = raw.clone();
        set_u16(&mut b, AT_SYM, 0x0001);
        assert!(matches!(
            TpmPublic::parse(&b),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_SYM_DEF_OBJECT.algorithm",
                id: 0x0001
            })
        ));
    }

    #[test]
    fn rsa_sizes() {
        let raw = rsa_ak();
        for bits in [0u16, 2047, 4104] {
            let mut b = raw.clone();
            set_u16(&mut b, AT_KEY_BITS, bits);
            assert_eq!(
                TpmPublic::parse(&b),
                Err(Error::InvalidValue {
                    what: "TPMS_RSA_PARMS.keyBits",
                    got: u64::from(bits)
                })
            );
        }
        let mut b = raw.clone();
        set_u16(&mut b, AT_KEY_BITS, 3072);
        assert_eq!(
            TpmPublic::parse(&b),
            Err(Error::InvalidValue {
                what: "TPM2B_PUBLIC_KEY_RSA size (must be keyBits / 8)",
                got: 256
            })
        );
        let mut b = raw[..AT_MODULUS].to_vec();
        b.extend(513u16.to_be_bytes());
        b.extend([0xff; 513]);
        assert!(matches!(
            TpmPublic::parse(&b),
            Err(Error::TooLarge {
                what: "TPM2B_PUBLIC_KEY_RSA",
                max: 512,
                got: 513
            })
        ));
        // A template's empty unique is refused.
        let mut b = raw[..AT_MODULUS].to_vec();
        b.extend([0, 0]);
        assert!(matches!(
            TpmPublic::parse(&b),
            Err(Error::InvalidValue { got: 0, .. })
        ));
        // Encoder: leading zeros are dropped, empty and oversized moduli refused.
        let padded = [&[0u8, 0][..], &modulus()].concat();
        let t = RsaTemplate::new(AK_ATTRS, &padded);
        let p = TpmPublic::parse(&TpmPublic::encode_rsa(&t).unwrap()).unwrap();
        assert!(matches!(p.details(), PublicDetails::Rsa(d) if d.key_bits == 2048));
        assert!(TpmPublic::encode_rsa(&RsaTemplate::new(AK_ATTRS, &[0, 0])).is_err());
        assert!(matches!(
            TpmPublic::encode_rsa(&RsaTemplate::new(AK_ATTRS, &[1; 513])),
            Err(Error::TooLarge { got: 513, .. })
        ));
        // An explicit exponent; public_key() then runs aws-lc's checks on the made-up
        // modulus.
        let mut t = RsaTemplate::new(AK_ATTRS, &modulus());
        t.exponent = 3;
        t.scheme = KeyScheme::rsassa(HashAlg::Sha256);
        let bytes = TpmPublic::encode_rsa(&t).unwrap();
        assert_eq!(&bytes[AT_EXPONENT..AT_MODULUS], &[0, 0, 0, 3]);
        let p = TpmPublic::parse(&bytes).unwrap();
        assert!(matches!(p.details(), PublicDetails::Rsa(d) if d.effective_exponent() == 3));
        let mut t = RsaTemplate::new(AK_ATTRS, &[0xff; 128]);
        t.exponent = 0;
        let small = TpmPublic::parse(&TpmPublic::encode_rsa(&t).unwrap()).unwrap();
        assert!(matches!(small.public_key(), Err(Error::InvalidKey { .. })));
    }

    #[test]
    fn ecc_public_areas() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let (x, y) = (&point[1..33], &point[33..]);
        let raw = ecc(
            &[TPM_ALG_ECDSA, 0x000b],
            TPM_ECC_NIST_P256,
            &[TPM_ALG_NULL],
            x,
            y,
        );
        let p = TpmPublic::parse(&raw).unwrap();
        assert_eq!(p.object_type(), ObjectType::Ecc);
        let PublicDetails::Ecc(d) = p.details() else {
            panic!("not ECC")
        };
        assert_eq!(d.curve_id, TPM_ECC_NIST_P256);
        assert!(d.kdf.is_null());
        assert_eq!((d.x.as_slice(), d.y.as_slice()), (x, y));
        let PublicKey::Ecdsa(key) = p.public_key().unwrap() else {
            panic!("not ECDSA")
        };
        assert_eq!(key.point(), point.as_slice());
        assert_eq!(TpmPublic::parse_auto(&p.to_tpm2b()).unwrap(), p);
        assert_eq!(TpmPublic::parse_auto(&raw).unwrap(), p);

        // ECDAA carries a count, KDFs a hash.
        let daa = ecc(
            &[TPM_ALG_ECDAA, 0x000b, 7],
            TPM_ECC_NIST_P256,
            &[TPM_ALG_KDF2, 0x000c],
            x,
            y,
        );
        let p = TpmPublic::parse(&daa).unwrap();
        assert_eq!(p.scheme().ecdaa_count(), Some(7));
        let PublicDetails::Ecc(d) = p.details() else {
            panic!("not ECC")
        };
        assert_eq!(d.kdf.hash_alg(), Some(HashAlg::Sha384));
        for cut in 0..daa.len() {
            assert!(TpmPublic::parse(&daa[..cut]).is_err());
        }

        // Errors.
        let bad_scheme = ecc(&[TPM_ALG_RSASSA, 0x000b], 3, &[TPM_ALG_NULL], x, y);
        assert_eq!(
            TpmPublic::parse(&bad_scheme),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_ECC_SCHEME.scheme",
                id: TPM_ALG_RSASSA
            })
        );
        let bad_kdf = ecc(&[TPM_ALG_NULL], 3, &[TPM_ALG_OAEP, 0x000b], x, y);
        assert_eq!(
            TpmPublic::parse(&bad_kdf),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_KDF_SCHEME.scheme",
                id: TPM_ALG_OAEP
            })
        );
        let big = ecc(&[TPM_ALG_NULL], 3, &[TPM_ALG_NULL], &[1; 129], y);
        assert!(matches!(
            TpmPublic::parse(&big),
            Err(Error::TooLarge {
                what: "TPMS_ECC_POINT.x",
                max: 128,
                got: 129
            })
        ));
        let empty = ecc(&[TPM_ALG_NULL], 3, &[TPM_ALG_NULL], x, &[]);
        assert!(matches!(
            TpmPublic::parse(&empty),
            Err(Error::InvalidValue { got: 0, .. })
        ));
        // Curves other than P-256/P-384 parse but give no key; points must be on the
        // curve and fit it.
        let bn = TpmPublic::parse(&ecc(&[TPM_ALG_NULL], 0x0010, &[TPM_ALG_NULL], x, y)).unwrap();
        assert_eq!(
            bn.public_key(),
            Err(Error::UnsupportedAlgorithm {
                what: "ECC curve",
                id: 0x0010
            })
        );
        let mut off = y.to_vec();
        off[31] ^= 1;
        let off_curve = TpmPublic::parse(&ecc(&[TPM_ALG_NULL], 3, &[TPM_ALG_NULL], x, &off));
        assert!(matches!(
            off_curve.unwrap().public_key(),
            Err(Error::InvalidKey { .. })
        ));
        let wrong_curve = TpmPublic::parse(&ecc(&[TPM_ALG_NULL], 4, &[TPM_ALG_NULL], x, y));
        assert!(matches!(
            wrong_curve.unwrap().public_key(),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn parse_auto_prefers_tpm2b_and_falls_back() {
        let raw = rsa_ak();
        let p = TpmPublic::parse(&raw).unwrap();
        // A TPMT_PUBLIC whose first u16 (type ECC = 0x23 = 35) happens to equal the
        // number of bytes after it: taken as TPM2B first, then parsed as TPMT.
        let odd = ecc(&[TPM_ALG_NULL], 0x0020, &[TPM_ALG_NULL], &[1; 8], &[2; 7]);
        assert_eq!(odd.len(), 37);
        let q = TpmPublic::parse(&odd).unwrap();
        assert_eq!(TpmPublic::parse_auto(&odd).unwrap(), q);
        // Broken TPM2B: its own error is reported.
        let mut t = p.to_tpm2b();
        set_u16(&mut t, 2 + AT_NAME_ALG, 0x0099);
        assert_eq!(
            TpmPublic::parse_auto(&t),
            Err(Error::UnsupportedAlgorithm {
                what: "TPMT_PUBLIC.nameAlg",
                id: 0x0099
            })
        );
    }

    #[test]
    fn attributes_flag_set() {
        assert_eq!(ObjectAttributes::from_bits(0x0005_0072).unwrap(), AK_ATTRS);
        assert_eq!(
            ObjectAttributes::from_bits(0x0000_0001),
            Err(Error::ReservedBits {
                what: "TPMA_OBJECT",
                bits: 1
            })
        );
        let all = ObjectAttributes::NAMED
            .iter()
            .fold(ObjectAttributes::empty(), |acc, (f, _)| acc | *f);
        assert_eq!(all.bits(), !ObjectAttributes::RESERVED_MASK);
        assert_eq!(ObjectAttributes::from_bits(all.bits()), Ok(all));
        assert_eq!(
            AK_ATTRS.to_string(),
            "fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign"
        );
        assert_eq!(ObjectAttributes::empty().to_string(), "(none)");
        assert!(ObjectAttributes::empty().is_empty());
        let mut a = ObjectAttributes::DECRYPT;
        a |= ObjectAttributes::NO_DA;
        assert!(a.contains(ObjectAttributes::NO_DA));
        assert!(!a.contains(ObjectAttributes::NO_DA | ObjectAttributes::ST_CLEAR));
        assert!(AK_ATTRS.contains(ObjectAttributes::empty()));
    }
}
