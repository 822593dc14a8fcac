//! Plain private JWK import (RFC 7517/7518): an RSA key (`n`, `e`, `d`, `p`, `q`,
//! `dp`, `dq`, `qi`) or an EC key (`crv` P-256 or P-384, `x`, `y`, `d`) becomes the
//! PKCS#8 `PrivateKeyInfo` the vault stores, after aws-lc has checked that the members
//! form one key: for RSA `n = p·q`, `d·e ≡ 1`, and the CRT members consistent
//! (`RSA_check_key`); for EC that `d`'s public point is `(x, y)`. The public key aws-lc
//! derives is then compared with the JWK's public members once more.
//!
//! Decoded private members live in [`Zeroizing`] buffers; [`zeroize_private_members`]
//! wipes the base64url text of a JWK's private members once it has been read.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPairComponents, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _, RsaPublicKeyComponents,
};
use base64::Engine as _;
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

/// The members of a JWK that are secret (RSA and EC private members, `oct`'s `k`).
pub const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Why a private JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// `kty` is missing or not `RSA` / `EC`.
    #[error("kty {0:?} is not RSA or EC")]
    UnsupportedKty(String),
    /// `crv` is missing or not P-256 / P-384.
    #[error("crv {0:?} is not P-256 or P-384")]
    UnsupportedCurve(String),
    /// A member is missing, not a base64url string, or of the wrong length.
    #[error("malformed JWK: {0}")]
    Malformed(String),
    /// The members are well-formed but do not make a usable key (size, range, not a
    /// point on the curve).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The public members do not belong to the private key (or the private members do
    /// not belong together).
    #[error("the JWK's public part does not match its private key")]
    Mismatch,
    /// aws-lc failed to encode the key.
    #[error("cryptographic operation failed")]
    Crypto,
}

impl JwkError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            JwkError::UnsupportedKty(_) | JwkError::UnsupportedCurve(_) => "bad_parameter",
            JwkError::Malformed(_) => "malformed_jwk",
            JwkError::InvalidKey(_) => "invalid_private_key",
            JwkError::Mismatch => "jwk_key_mismatch",
            JwkError::Crypto => "crypto_failure",
        }
    }
}

/// A private key taken from a JWK: its type and PKCS#8 encoding (zeroized on drop,
/// redacted in `Debug`).
pub struct PrivateJwk {
    /// `RSA` or `EC`.
    pub kty: &'static str,
    /// The private key as PKCS#8 `PrivateKeyInfo` DER.
    pub pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateJwk")
            .field("kty", &self.kty)
            .finish_non_exhaustive()
    }
}

/// Overwrites the text of `jwk`'s private members ([`PRIVATE_MEMBERS`]) and removes
/// them.
pub fn zeroize_private_members(jwk: &mut Map<String, Value>) {
    for m in PRIVATE_MEMBERS {
        if let Some(Value::String(mut s)) = jwk.remove(m) {
            s.zeroize();
        }
    }
}

fn member(jwk: &Map<String, Value>, name: &str) -> Result<Zeroizing<Vec<u8>>, JwkError> {
    let text = match jwk.get(name) {
        Some(Value::String(s)) => s,
        Some(_) => return Err(JwkError::Malformed(format!("{name} must be a string"))),
        None => return Err(JwkError::Malformed(format!("missing {name}"))),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| JwkError::Malformed(format!("{name} is not base64url")))?;
    if bytes.is_empty() {
        return Err(JwkError::Malformed(format!("{name} is empty")));
    }
    Ok(Zeroizing::new(bytes))
}

/// `b` without leading zero bytes (keeping one byte of an all-zero value).
pub(crate) fn strip(b: &[u8]) -> &[u8] {
    let i = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[i..]
}

/// Reads a private RSA or EC JWK into PKCS#8, checking that its members belong to one
/// key. Members other than the key's own (`kid`, `key_ops`, `alg`, ...) are ignored;
/// multi-prime RSA (`oth`) is refused.
pub fn private_jwk_to_pkcs8(jwk: &Map<String, Value>) -> Result<PrivateJwk, JwkError> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
    match kty.trim_end_matches("-HSM") {
        "RSA" => rsa(jwk),
        "EC" => ec(jwk),
        other => Err(JwkError::UnsupportedKty(other.to_string())),
    }
}

fn rsa(jwk: &Map<String, Value>) -> Result<PrivateJwk, JwkError> {
    if jwk.contains_key("oth") {
        return Err(JwkError::Malformed(
            "multi-prime RSA keys (oth) are not supported".into(),
        ));
    }
    let n = member(jwk, "n")?;
    let e = member(jwk, "e")?;
    let (d, p, q) = (member(jwk, "d")?, member(jwk, "p")?, member(jwk, "q")?);
    let (dp, dq, qi) = (member(jwk, "dp")?, member(jwk, "dq")?, member(jwk, "qi")?);
    let (n, e) = (strip(&n), strip(&e));
    if !matches!(n.len() * 8, 2048 | 3072 | 4096) || n.first().is_none_or(|b| b & 0x80 == 0) {
        return Err(JwkError::InvalidKey(
            "RSA keys are 2048, 3072 or 4096 bits".into(),
        ));
    }
    // No private member is longer than the modulus (which also bounds the work aws-lc
    // does checking them).
    for (name, v) in [
        ("d", &d),
        ("p", &p),
        ("q", &q),
        ("dp", &dp),
        ("dq", &dq),
        ("qi", &qi),
    ] {
        if strip(v).len() > n.len() {
            return Err(JwkError::Malformed(format!("{name} is longer than n")));
        }
    }
    let components = KeyPairComponents {
        public_key: PublicKeyComponents { n, e },
        d: d.as_slice(),
        p: p.as_slice(),
        q: q.as_slice(),
        dP: dp.as_slice(),
        dQ: dq.as_slice(),
        qInv: qi.as_slice(),
    };
    let kp = aws_lc_rs::rsa::KeyPair::from_components(&components).map_err(|e| {
        if e.description_() == "InconsistentComponents" {
            JwkError::Mismatch
        } else {
            JwkError::InvalidKey(format!("not a usable RSA private key ({e})"))
        }
    })?;
    let public: RsaPublicKeyComponents<Vec<u8>> = kp.public_key().into();
    if strip(&public.n) != n || strip(&public.e) != e {
        return Err(JwkError::Mismatch);
    }
    let der: Pkcs8V1Der<'static> = kp.as_der().map_err(|_| JwkError::Crypto)?;
    Ok(PrivateJwk {
        kty: "RSA",
        pkcs8: Zeroizing::new(der.as_ref().to_vec()),
    })
}

fn ec(jwk: &Map<String, Value>) -> Result<PrivateJwk, JwkError> {
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    let (alg, len): (&'static EcdsaSigningAlgorithm, usize) = match crv {
        "P-256" => (&ECDSA_P256_SHA256_FIXED_SIGNING, 32),
        "P-384" => (&ECDSA_P384_SHA384_FIXED_SIGNING, 48),
        other => return Err(JwkError::UnsupportedCurve(other.to_string())),
    };
    let x = member(jwk, "x")?;
    let y = member(jwk, "y")?;
    let d = member(jwk, "d")?;
    for (name, v) in [("x", &x), ("y", &y), ("d", &d)] {
        if v.len() != len {
            return Err(JwkError::Malformed(format!(
                "{name} is {} bytes; {crv} needs {len}",
                v.len()
            )));
        }
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let kp = EcdsaKeyPair::from_private_key_and_public_key(alg, &d, &point).map_err(|e| {
        if e.description_() == "InconsistentComponents" {
            JwkError::Mismatch
        } else {
            JwkError::InvalidKey(format!("x, y or d is not a valid {crv} key ({e})"))
        }
    })?;
    if kp.public_key().as_ref() != point.as_slice() {
        return Err(JwkError::Mismatch);
    }
    let doc = kp.to_pkcs8v1().map_err(|_| JwkError::Crypto)?;
    Ok(PrivateJwk {
        kty: "EC",
        pkcs8: Zeroizing::new(doc.as_ref().to_vec()),
    })
}
