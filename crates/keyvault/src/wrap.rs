//! Secure Key Release key transfer: wrapping key material to an RSA key held by an
//! attested environment, and the `key_hsm` blob that carries the result.
//!
//! The scheme is PKCS#11 `CKM_RSA_AES_KEY_WRAP`, as Key Vault / Managed HSM use it for
//! key release and BYOK:
//!
//! 1. generate a fresh AES-256 key `A`;
//! 2. `c1 = RSA-OAEP(wrapping key, A)`, with OAEP's hash and MGF1's hash both SHA-1
//!    (`CKM_RSA_AES_KEY_WRAP`), SHA-256 (`RSA_AES_KEY_WRAP_256`) or SHA-384
//!    (`RSA_AES_KEY_WRAP_384`), and no label;
//! 3. `c2 = AES-KWP(A, K)`, the AES key wrap with padding of RFC 5649 / NIST SP 800-38F;
//! 4. the ciphertext is `c1 || c2`, `c1` being exactly as long as the RSA modulus.
//!
//! The target key material `K` is, for symmetric (`oct`) keys, the raw AES key bytes and,
//! for RSA and EC keys, the private key as PKCS#8 `PrivateKeyInfo` DER. This module wraps
//! whatever bytes it is given (1 to [`MAX_MATERIAL_LEN`] of them); the caller chooses the
//! encoding.
//!
//! The wrapping key must be RSA of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits.
//!
//! Secrets (the AES key `A`, unwrapped material, private keys) live in
//! [`zeroize::Zeroizing`] buffers ([`SecretBytes`] when returned) and appear in no
//! `Debug` output. (The AES key schedule
//! that aws-lc builds on its own stack during a wrap is outside this crate's reach.)

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384,
    OaepAlgorithm, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, PublicKeyComponents,
};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

/// Smallest accepted RSA wrapping key, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA wrapping key, in bits.
pub const MAX_RSA_BITS: usize = 8192;
/// Largest key material that is wrapped or unwrapped, in bytes (a PKCS#8 RSA-8192
/// private key is about 4.8 KiB).
pub const MAX_MATERIAL_LEN: usize = 16 * 1024;
/// Largest encoded `key_hsm` accepted by [`KeyHsm::parse`], in bytes.
pub const MAX_KEY_HSM_LEN: usize = 64 * 1024;
/// Length of the transient AES key, in bytes (AES-256).
const AES_KEY_LEN: usize = 32;
/// Smallest RFC 5649 ciphertext: one 64-bit integrity block plus one 64-bit block.
const MIN_KWP_LEN: usize = 16;

/// Why a wrap, unwrap or `key_hsm` operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The mechanism name is not one of the three supported.
    #[error(
        "unknown key wrap mechanism {0:?} (expected CKM_RSA_AES_KEY_WRAP, RSA_AES_KEY_WRAP_256 or RSA_AES_KEY_WRAP_384)"
    )]
    UnknownMechanism(String),
    /// The wrapping key (JWK or components) is malformed or not usable for encryption.
    #[error("invalid wrapping key: {0}")]
    InvalidKey(String),
    /// The RSA wrapping key is smaller than [`MIN_RSA_BITS`].
    #[error("wrapping key is RSA-{bits}; at least {MIN_RSA_BITS} bits are required")]
    KeyTooSmall {
        /// Its modulus size.
        bits: usize,
    },
    /// The RSA wrapping key is larger than [`MAX_RSA_BITS`].
    #[error("wrapping key is RSA-{bits}; at most {MAX_RSA_BITS} bits are supported")]
    KeyTooLarge {
        /// Its modulus size.
        bits: usize,
    },
    /// The RSA private key is not an acceptable PKCS#8 RSA key.
    #[error("invalid RSA private key: {0}")]
    InvalidPrivateKey(String),
    /// The material to wrap is empty or over [`MAX_MATERIAL_LEN`].
    #[error("key material is {len} bytes; 1 to {MAX_MATERIAL_LEN} are accepted")]
    MaterialLength {
        /// Its length.
        len: usize,
    },
    /// The ciphertext cannot be `c1 || c2` for this unwrapping key.
    #[error(
        "ciphertext is {len} bytes, which is not RSA-{bits} output followed by an AES-KWP ciphertext"
    )]
    CiphertextLength {
        /// Its length.
        len: usize,
        /// The unwrapping key's modulus size.
        bits: usize,
    },
    /// RSA-OAEP decryption or the AES-KWP integrity check failed (wrong key, wrong
    /// mechanism or tampered ciphertext; deliberately not told apart).
    #[error("unwrap failed: wrong key or mechanism, or the ciphertext was altered")]
    UnwrapFailed,
    /// A `key_hsm` needs the wrapping key's `kid` and none is known.
    #[error("the wrapping key has no kid")]
    MissingKid,
    /// The `key_hsm` was made for another key.
    #[error("key_hsm is wrapped to kid {found:?}, not {expected:?}")]
    KidMismatch {
        /// The unwrapping key's kid.
        expected: String,
        /// The kid in the `key_hsm` header.
        found: String,
    },
    /// The `key_hsm` value is not the expected base64url JSON.
    #[error("malformed key_hsm: {0}")]
    MalformedKeyHsm(String),
    /// The cryptographic library failed (random generation, encryption, key generation).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

impl WrapError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            WrapError::UnknownMechanism(_) => "unknown_wrap_mechanism",
            WrapError::InvalidKey(_) => "invalid_wrapping_key",
            WrapError::KeyTooSmall { .. } => "wrapping_key_too_small",
            WrapError::KeyTooLarge { .. } => "wrapping_key_too_large",
            WrapError::InvalidPrivateKey(_) => "invalid_private_key",
            WrapError::MaterialLength { .. } => "invalid_key_material_length",
            WrapError::CiphertextLength { .. } => "invalid_ciphertext_length",
            WrapError::UnwrapFailed => "unwrap_failed",
            WrapError::MissingKid => "missing_kid",
            WrapError::KidMismatch { .. } => "kid_mismatch",
            WrapError::MalformedKeyHsm(_) => "malformed_key_hsm",
            WrapError::Crypto(_) => "crypto_failure",
        }
    }
}

/// Secret bytes (unwrapped key material, a private key's PKCS#8): zeroized on drop and
/// redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Their number.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes in their zeroizing buffer.
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

/// The key transfer mechanisms of Secure Key Release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrapMechanism {
    /// `CKM_RSA_AES_KEY_WRAP`: RSA-OAEP with SHA-1 (and MGF1-SHA-1), then AES-KWP.
    CkmRsaAesKeyWrap,
    /// `RSA_AES_KEY_WRAP_256`: RSA-OAEP with SHA-256 (and MGF1-SHA-256), then AES-KWP.
    RsaAesKeyWrap256,
    /// `RSA_AES_KEY_WRAP_384`: RSA-OAEP with SHA-384 (and MGF1-SHA-384), then AES-KWP.
    RsaAesKeyWrap384,
}

impl WrapMechanism {
    /// Every mechanism.
    pub const ALL: [WrapMechanism; 3] = [
        WrapMechanism::CkmRsaAesKeyWrap,
        WrapMechanism::RsaAesKeyWrap256,
        WrapMechanism::RsaAesKeyWrap384,
    ];

    /// The name used in APIs and in the `key_hsm` header's `enc`.
    pub fn name(self) -> &'static str {
        match self {
            WrapMechanism::CkmRsaAesKeyWrap => "CKM_RSA_AES_KEY_WRAP",
            WrapMechanism::RsaAesKeyWrap256 => "RSA_AES_KEY_WRAP_256",
            WrapMechanism::RsaAesKeyWrap384 => "RSA_AES_KEY_WRAP_384",
        }
    }

    /// Parses a name (exact spelling).
    pub fn from_name(name: &str) -> Result<Self, WrapError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| WrapError::UnknownMechanism(name.to_owned()))
    }

    /// The OAEP (and MGF1) hash: `SHA-1`, `SHA-256` or `SHA-384`.
    pub fn oaep_hash(self) -> &'static str {
        match self {
            WrapMechanism::CkmRsaAesKeyWrap => "SHA-1",
            WrapMechanism::RsaAesKeyWrap256 => "SHA-256",
            WrapMechanism::RsaAesKeyWrap384 => "SHA-384",
        }
    }

    fn oaep(self) -> &'static OaepAlgorithm {
        match self {
            WrapMechanism::CkmRsaAesKeyWrap => &OAEP_SHA1_MGF1SHA1,
            WrapMechanism::RsaAesKeyWrap256 => &OAEP_SHA256_MGF1SHA256,
            WrapMechanism::RsaAesKeyWrap384 => &OAEP_SHA384_MGF1SHA384,
        }
    }
}

impl fmt::Display for WrapMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WrapMechanism {
    type Err = WrapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s)
    }
}

fn b64url_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(s)
}

fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&b) => (be.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// An RSA public key that key material is wrapped to (the attested environment's
/// encryption key), with the `kid` that names it.
#[derive(Clone)]
pub struct WrappingPublicKey {
    kid: Option<String>,
    n: Vec<u8>,
    e: Vec<u8>,
    key: PublicEncryptingKey,
}

impl fmt::Debug for WrappingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappingPublicKey")
            .field("kid", &self.kid)
            .field("bits", &self.bits())
            .finish()
    }
}

impl PartialEq for WrappingPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.n == other.n && self.e == other.e
    }
}

impl Eq for WrappingPublicKey {}

impl WrappingPublicKey {
    /// From the big-endian modulus and public exponent (leading zero bytes allowed).
    ///
    /// The modulus must be odd and of [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits; the
    /// exponent odd, at least 3 and below 2^32.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, WrapError> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        let bits = bit_len(n);
        if bits < MIN_RSA_BITS {
            return Err(WrapError::KeyTooSmall { bits });
        }
        if bits > MAX_RSA_BITS {
            return Err(WrapError::KeyTooLarge { bits });
        }
        if n.last().is_none_or(|b| b & 1 == 0) {
            return Err(WrapError::InvalidKey("the modulus is even".into()));
        }
        if e.len() > 4 {
            return Err(WrapError::InvalidKey(
                "the public exponent is 2^32 or more".into(),
            ));
        }
        let e_val = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if e_val < 3 || e_val & 1 == 0 {
            return Err(WrapError::InvalidKey(format!(
                "the public exponent {e_val} is not an odd number >= 3"
            )));
        }
        let key: PublicEncryptingKey = PublicKeyComponents { n, e }
            .try_into()
            .map_err(|_| WrapError::InvalidKey("aws-lc refused the RSA public key".into()))?;
        Ok(WrappingPublicKey {
            kid: None,
            n: n.to_vec(),
            e: e.to_vec(),
            key,
        })
    }

    /// From an RSA JWK (RFC 7517/7518): `kty` must be `RSA`, `n` and `e` base64url; `kid`
    /// is kept if present; `use`, if present, must be `enc`; `key_ops`, if present, must
    /// include `wrapKey` or `encrypt`. Other members (`alg`, `x5c`, ...) are ignored.
    pub fn from_jwk(jwk: &Value) -> Result<Self, WrapError> {
        let obj = jwk
            .as_object()
            .ok_or_else(|| WrapError::InvalidKey("a JWK is a JSON object".into()))?;
        match obj.get("kty") {
            Some(Value::String(k)) if k == "RSA" => {}
            Some(Value::String(k)) => {
                return Err(WrapError::InvalidKey(format!(
                    "kty is {k:?}; an RSA key is required"
                )));
            }
            _ => return Err(WrapError::InvalidKey("missing kty".into())),
        }
        let member = |name: &str| -> Result<Vec<u8>, WrapError> {
            match obj.get(name) {
                Some(Value::String(s)) => b64url_decode(s)
                    .map_err(|e| WrapError::InvalidKey(format!("{name} is not base64url: {e}"))),
                Some(_) => Err(WrapError::InvalidKey(format!("{name} must be a string"))),
                None => Err(WrapError::InvalidKey(format!("missing {name}"))),
            }
        };
        let kid = match obj.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(WrapError::InvalidKey("kid must be a string".into())),
        };
        match obj.get("use") {
            None | Some(Value::Null) => {}
            Some(Value::String(u)) if u == "enc" => {}
            Some(u) => {
                return Err(WrapError::InvalidKey(format!(
                    "use is {u}; an encryption key (\"enc\") is required"
                )));
            }
        }
        match obj.get("key_ops") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ops)) => {
                if !ops
                    .iter()
                    .any(|o| matches!(o.as_str(), Some("wrapKey" | "encrypt")))
                {
                    return Err(WrapError::InvalidKey(
                        "key_ops allows neither wrapKey nor encrypt".into(),
                    ));
                }
            }
            Some(_) => return Err(WrapError::InvalidKey("key_ops must be an array".into())),
        }
        let n = member("n")?;
        let e = member("e")?;
        let mut key = Self::from_components(&n, &e)?;
        key.kid = kid;
        Ok(key)
    }

    /// The same key named `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key's `kid`, if known.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        bit_len(&self.n)
    }

    /// The modulus size in bytes (the length of `c1`).
    pub fn modulus_len(&self) -> usize {
        self.n.len()
    }

    /// The key as a JWK: `kty`, `n`, `e` and, if known, `kid`.
    pub fn to_jwk(&self) -> Value {
        let mut m = Map::new();
        m.insert("kty".into(), Value::String("RSA".into()));
        if let Some(kid) = &self.kid {
            m.insert("kid".into(), Value::String(kid.clone()));
        }
        m.insert("n".into(), Value::String(URL_SAFE_NO_PAD.encode(&self.n)));
        m.insert("e".into(), Value::String(URL_SAFE_NO_PAD.encode(&self.e)));
        Value::Object(m)
    }
}

/// An RSA private key that unwraps what was wrapped to its public half.
pub struct UnwrappingKey {
    key: PrivateDecryptingKey,
    public: WrappingPublicKey,
}

impl fmt::Debug for UnwrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnwrappingKey")
            .field("kid", &self.public.kid)
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

impl UnwrappingKey {
    /// Generates a key of 2048, 3072, 4096 or 8192 bits.
    pub fn generate(bits: usize) -> Result<Self, WrapError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ if bits < MIN_RSA_BITS => return Err(WrapError::KeyTooSmall { bits }),
            _ if bits > MAX_RSA_BITS => return Err(WrapError::KeyTooLarge { bits }),
            _ => {
                return Err(WrapError::InvalidKey(format!(
                    "cannot generate RSA-{bits}; choose 2048, 3072, 4096 or 8192"
                )));
            }
        };
        let key = PrivateDecryptingKey::generate(size)
            .map_err(|_| WrapError::Crypto("RSA key generation"))?;
        Self::from_private(key)
    }

    /// From an RSA private key in PKCS#8 `PrivateKeyInfo` DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, WrapError> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| WrapError::InvalidPrivateKey(e.to_string()))?;
        Self::from_private(key)
    }

    fn from_private(key: PrivateDecryptingKey) -> Result<Self, WrapError> {
        let pkcs8 = key
            .as_der()
            .map_err(|_| WrapError::Crypto("RSA private key encoding"))?;
        let pair = KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| WrapError::InvalidPrivateKey(e.to_string()))?;
        let pk = pair.public_key();
        let public = WrappingPublicKey::from_components(
            pk.modulus().big_endian_without_leading_zero(),
            pk.exponent().big_endian_without_leading_zero(),
        )?;
        Ok(UnwrappingKey { key, public })
    }

    /// The same key with its public half named `kid` (then [`KeyHsm::unwrap_key`] checks
    /// the `key_hsm` was made for it).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.public.kid = Some(kid.into());
        self
    }

    /// The private key as PKCS#8 `PrivateKeyInfo` DER.
    pub fn to_pkcs8(&self) -> Result<SecretBytes, WrapError> {
        let der = self
            .key
            .as_der()
            .map_err(|_| WrapError::Crypto("RSA private key encoding"))?;
        Ok(SecretBytes::new(der.as_ref().to_vec()))
    }

    /// The public half, to wrap to.
    pub fn public_key(&self) -> &WrappingPublicKey {
        &self.public
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.public.bits()
    }
}

/// Wraps `material` to `to` with `mechanism`: returns `c1 || c2` (see the module
/// documentation). A fresh AES-256 key is generated for every call.
pub fn wrap_key(
    mechanism: WrapMechanism,
    to: &WrappingPublicKey,
    material: &[u8],
) -> Result<Vec<u8>, WrapError> {
    if material.is_empty() || material.len() > MAX_MATERIAL_LEN {
        return Err(WrapError::MaterialLength {
            len: material.len(),
        });
    }
    let mut aes = Zeroizing::new([0u8; AES_KEY_LEN]);
    aws_lc_rs::rand::fill(&mut aes[..]).map_err(|_| WrapError::Crypto("random generation"))?;

    let oaep = OaepPublicEncryptingKey::new(to.key.clone())
        .map_err(|_| WrapError::Crypto("RSA-OAEP key setup"))?;
    let c1_len = oaep.ciphertext_size();
    // KWP output: 8-byte integrity block + material padded to a multiple of 8.
    let c2_len = 8 + material.len().div_ceil(8) * 8;
    let mut out = vec![0u8; c1_len + c2_len + 8];
    let c1 = oaep
        .encrypt(mechanism.oaep(), &aes[..], &mut out[..c1_len], None)
        .map_err(|_| WrapError::Crypto("RSA-OAEP encryption"))?
        .len();
    if c1 != c1_len {
        return Err(WrapError::Crypto("RSA-OAEP output length"));
    }
    let kek = AesKek::new(&AES_256, &aes[..]).map_err(|_| WrapError::Crypto("AES key setup"))?;
    let c2 = kek
        .wrap_with_padding(material, &mut out[c1_len..])
        .map_err(|_| WrapError::Crypto("AES key wrap"))?
        .len();
    if c2 != c2_len {
        return Err(WrapError::Crypto("AES key wrap output length"));
    }
    out.truncate(c1_len + c2_len);
    Ok(out)
}

/// Unwraps `c1 || c2` made by [`wrap_key`] (or any implementation of the mechanism) with
/// the private key. The transient AES key may be AES-256 (what [`wrap_key`] makes) or
/// AES-128.
pub fn unwrap_key(
    mechanism: WrapMechanism,
    with: &UnwrappingKey,
    ciphertext: &[u8],
) -> Result<SecretBytes, WrapError> {
    let oaep = OaepPrivateDecryptingKey::new(with.key.clone())
        .map_err(|_| WrapError::Crypto("RSA-OAEP key setup"))?;
    unwrap_key_by(oaep.key_size_bytes(), ciphertext, |c1| {
        let mut aes_buf = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
        let aes_len = oaep
            .decrypt(mechanism.oaep(), c1, &mut aes_buf[..], None)
            .map_err(|_| WrapError::UnwrapFailed)?
            .len();
        aes_buf.truncate(aes_len);
        Ok(aes_buf)
    })
}

/// Unwraps `c1 || c2` whose RSA-OAEP half `c1` is opened by `decrypt` with a private
/// key held elsewhere (a TPM's, whose key's scheme fixes the OAEP hash):
/// `modulus_len` is that key's size in bytes, and `decrypt` answers the transient
/// AES key.
pub fn unwrap_key_by(
    modulus_len: usize,
    ciphertext: &[u8],
    decrypt: impl FnOnce(&[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError>,
) -> Result<SecretBytes, WrapError> {
    let k = modulus_len;
    let bad_len = || WrapError::CiphertextLength {
        len: ciphertext.len(),
        bits: k * 8,
    };
    if ciphertext.len() < k + MIN_KWP_LEN {
        return Err(bad_len());
    }
    let (c1, c2) = ciphertext.split_at(k);
    if c2.len() % 8 != 0 || c2.len() > MAX_MATERIAL_LEN + 16 {
        return Err(bad_len());
    }
    let aes_buf = decrypt(c1)?;
    let cipher = match aes_buf.len() {
        32 => &AES_256,
        16 => &AES_128,
        _ => return Err(WrapError::UnwrapFailed),
    };
    let kek = AesKek::new(cipher, &aes_buf[..]).map_err(|_| WrapError::UnwrapFailed)?;
    let mut buf = Zeroizing::new(vec![0u8; c2.len()]);
    let n = kek
        .unwrap_with_padding(c2, &mut buf[..])
        .map_err(|_| WrapError::UnwrapFailed)?
        .len();
    Ok(SecretBytes::new(buf[..n].to_vec()))
}

/// The `key_hsm` value of a released key: base64url of
/// `{"schema_version": "1.0", "header": {"kid", "alg": "dir", "enc": <mechanism>},
/// "ciphertext": base64url(c1 || c2)}`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHsm {
    kid: String,
    mechanism: WrapMechanism,
    ciphertext: Vec<u8>,
}

impl fmt::Debug for KeyHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHsm")
            .field("kid", &self.kid)
            .field("mechanism", &self.mechanism)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl KeyHsm {
    /// The `schema_version` written.
    pub const SCHEMA_VERSION: &'static str = "1.0";

    /// Wraps `material` to `to`, whose `kid` goes in the header ([`WrapError::MissingKid`]
    /// if it has none).
    pub fn wrap(
        mechanism: WrapMechanism,
        to: &WrappingPublicKey,
        material: &[u8],
    ) -> Result<Self, WrapError> {
        let kid = to.kid().ok_or(WrapError::MissingKid)?.to_owned();
        let ciphertext = wrap_key(mechanism, to, material)?;
        Ok(KeyHsm {
            kid,
            mechanism,
            ciphertext,
        })
    }

    /// From parts (for a ciphertext made elsewhere).
    pub fn new(kid: impl Into<String>, mechanism: WrapMechanism, ciphertext: Vec<u8>) -> Self {
        KeyHsm {
            kid: kid.into(),
            mechanism,
            ciphertext,
        }
    }

    /// The `kid` of the key it is wrapped to.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The mechanism (`header.enc`).
    pub fn mechanism(&self) -> WrapMechanism {
        self.mechanism
    }

    /// `c1 || c2`.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// The JSON document (before base64url).
    pub fn to_json(&self) -> Value {
        json!({
            "schema_version": Self::SCHEMA_VERSION,
            "header": {
                "kid": self.kid,
                "alg": "dir",
                "enc": self.mechanism.name(),
            },
            "ciphertext": URL_SAFE_NO_PAD.encode(&self.ciphertext),
        })
    }

    /// The `key_hsm` string: unpadded base64url of the JSON document.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_json().to_string())
    }

    /// Parses a `key_hsm` string (base64url, padded or not).
    pub fn parse(encoded: &str) -> Result<Self, WrapError> {
        if encoded.len() > MAX_KEY_HSM_LEN {
            return Err(WrapError::MalformedKeyHsm(format!(
                "{} bytes; the limit is {MAX_KEY_HSM_LEN}",
                encoded.len()
            )));
        }
        let bytes = b64url_decode(encoded.trim())
            .map_err(|e| WrapError::MalformedKeyHsm(format!("not base64url: {e}")))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| WrapError::MalformedKeyHsm(format!("not JSON: {e}")))?;
        Self::from_json(&v)
    }

    /// Parses the JSON document. `schema_version` may be `"1.0"` or `"1.0.0"` (the BYOK
    /// spelling); `header.alg` must be `dir`; members not named here are ignored.
    pub fn from_json(v: &Value) -> Result<Self, WrapError> {
        let bad = |m: &str| WrapError::MalformedKeyHsm(m.to_owned());
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        match obj.get("schema_version").and_then(Value::as_str) {
            Some("1.0" | "1.0.0") => {}
            Some(s) => {
                return Err(WrapError::MalformedKeyHsm(format!(
                    "unsupported schema_version {s:?}"
                )));
            }
            None => return Err(bad("missing schema_version")),
        }
        let header = obj
            .get("header")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("missing header object"))?;
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("missing header.kid"))?;
        match header.get("alg").and_then(Value::as_str) {
            Some("dir") => {}
            Some(a) => {
                return Err(WrapError::MalformedKeyHsm(format!(
                    "header.alg is {a:?}, expected \"dir\""
                )));
            }
            None => return Err(bad("missing header.alg")),
        }
        let mechanism = WrapMechanism::from_name(
            header
                .get("enc")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing header.enc"))?,
        )?;
        let ciphertext = b64url_decode(
            obj.get("ciphertext")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing ciphertext"))?,
        )
        .map_err(|e| WrapError::MalformedKeyHsm(format!("ciphertext is not base64url: {e}")))?;
        Ok(KeyHsm {
            kid: kid.to_owned(),
            mechanism,
            ciphertext,
        })
    }

    /// Unwraps with the private key. If `with` has a kid, it must equal the header's.
    pub fn unwrap_key(&self, with: &UnwrappingKey) -> Result<SecretBytes, WrapError> {
        if let Some(expected) = with.public_key().kid()
            && expected != self.kid
        {
            return Err(WrapError::KidMismatch {
                expected: expected.to_owned(),
                found: self.kid.clone(),
            });
        }
        unwrap_key(self.mechanism, with, &self.ciphertext)
    }
}
