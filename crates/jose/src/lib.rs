//! JSON Web Tokens: signing (RS256, ES384) for services that issue tokens (the
//! attestation service), and verification against a JWKS for those that rely on them
//! (relying parties, the key vault).
//!
//! Verification never trusts the token's header for the choice of algorithm family: the
//! algorithm must be on the caller's allow-list, `none` and HMAC algorithms are never
//! accepted, and the key named by `kid` must be of the algorithm's key type.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

mod x509;

/// The largest token [`verify`] looks at.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The largest JWS [`verify_pinned`] looks at: a release response carries the key's
/// release policy (up to 64 KiB, encoded twice) besides the key.
pub const MAX_PINNED_LEN: usize = 1024 * 1024;

/// A JWS algorithm this crate signs or verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
        }
    }

    /// Parses a JOSE name; `none`, HMAC and unknown names give `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            _ => return None,
        })
    }

    /// Every algorithm [`verify`] supports.
    pub const ALL: [Alg; 7] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::ES256,
        Alg::ES384,
    ];

    fn is_rsa(self) -> bool {
        !matches!(self, Alg::ES256 | Alg::ES384)
    }
}

/// Why a token could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or too large.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg: none`: an unsigned token, never accepted.
    #[error("the token is unsigned (alg \"none\")")]
    Unsigned,
    /// An HMAC algorithm (`HS256`, ...): a shared-secret signature, never accepted from
    /// an authority that publishes public keys (the classic key-confusion attack).
    #[error("symmetric algorithm {0:?} is not allowed")]
    SymmetricAlg(String),
    /// The header names another algorithm not on the allow-list.
    #[error("algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// No key in the JWKS has the token's `kid`.
    #[error("no key with kid {0:?} in the key set")]
    UnknownKid(String),
    /// The key named by `kid` is not of the algorithm's type.
    #[error("key {kid:?} cannot verify {alg}")]
    KeyAlgMismatch {
        /// The key.
        kid: String,
        /// The token's algorithm.
        alg: &'static str,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired at {0}")]
    Expired(i64),
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid before {0}")]
    NotYetValid(i64),
    /// A required claim is missing or has the wrong type.
    #[error("claim {0:?} is missing or not of the expected type")]
    MissingClaim(&'static str),
    /// `iss` is not the expected issuer.
    #[error("issuer {0:?} is not the expected one")]
    IssuerMismatch(String),
    /// The header names extensions the recipient must understand (`crit`); none is
    /// understood here, so such a token is refused (RFC 7515 §4.1.11).
    #[error("the token names critical header extensions {0:?}, which are not supported")]
    CriticalHeader(String),
    /// The key named by `kid` is not for signatures (`use` other than `sig`).
    #[error("key {kid:?} is for {key_use:?}, not signatures")]
    KeyUse {
        /// The key.
        kid: String,
        /// Its `use`.
        key_use: String,
    },
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future ({0})")]
    IssuedInFuture(i64),
    /// A JWK could not be used.
    #[error("unusable key: {0}")]
    BadKey(String),
    /// Key generation or signing failed.
    #[error("signing failed")]
    Signing,
    /// The header's `x5c` names another certificate than the pinned signer's.
    #[error("signed by another certificate than the pinned signer")]
    SignerMismatch,
}

impl JwtError {
    /// A stable code for APIs and tests.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed_token",
            JwtError::Unsigned => "alg_none",
            JwtError::SymmetricAlg(_) => "alg_symmetric",
            JwtError::AlgNotAllowed(_) => "alg_not_allowed",
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::KeyAlgMismatch { .. } => "key_alg_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired(_) => "token_expired",
            JwtError::NotYetValid(_) => "token_not_yet_valid",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::IssuerMismatch(_) => "issuer_mismatch",
            JwtError::CriticalHeader(_) => "crit_unsupported",
            JwtError::KeyUse { .. } => "key_use",
            JwtError::IssuedInFuture(_) => "token_issued_in_future",
            JwtError::BadKey(_) => "bad_key",
            JwtError::Signing => "signing_failed",
            JwtError::SignerMismatch => "signer_mismatch",
        }
    }
}

enum KeyMaterial {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A token-signing key with its self-signed certificate (for `x5c`).
pub struct TokenSigner {
    kid: String,
    alg: Alg,
    key: KeyMaterial,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Generates a key for `alg` (RS256: RSA-2048; ES384: P-384) and a self-signed
    /// certificate naming `subject_cn`, valid from `now` for `validity_days`.
    pub fn generate(
        alg: Alg,
        subject_cn: &str,
        now: i64,
        validity_days: i64,
    ) -> Result<Self, JwtError> {
        let pkcs8: Zeroizing<Vec<u8>> = match alg {
            Alg::RS256 => {
                let kp = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| JwtError::Signing)?;
                let der: Pkcs8V1Der<'static> = kp.as_der().map_err(|_| JwtError::Signing)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            Alg::ES384 => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| JwtError::Signing)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            other => {
                return Err(JwtError::BadKey(format!(
                    "tokens are signed with RS256 or ES384, not {}",
                    other.name()
                )));
            }
        };
        let mut signer = Self::from_pkcs8(alg, &pkcs8, Vec::new())?;
        signer.cert_der = x509::self_signed(&signer, subject_cn, now, validity_days)?;
        Ok(signer)
    }

    /// Loads a key from its PKCS#8 document and certificate.
    pub fn from_pkcs8(alg: Alg, pkcs8: &[u8], cert_der: Vec<u8>) -> Result<Self, JwtError> {
        let key = match alg {
            Alg::RS256 => KeyMaterial::Rsa(
                RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| JwtError::BadKey(e.to_string()))?,
            ),
            Alg::ES384 => KeyMaterial::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8)
                    .map_err(|e| JwtError::BadKey(e.to_string()))?,
            ),
            other => {
                return Err(JwtError::BadKey(format!(
                    "cannot sign with {}",
                    other.name()
                )));
            }
        };
        let spki = match &key {
            KeyMaterial::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            KeyMaterial::Ec(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| JwtError::Signing)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
        let kid = B64URL.encode(&digest.as_ref()[..16]);
        Ok(TokenSigner {
            kid,
            alg,
            key,
            cert_der,
        })
    }

    /// The PKCS#8 document of the private key (to seal and store).
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, JwtError> {
        match &self.key {
            KeyMaterial::Rsa(k) => {
                let der: Pkcs8V1Der<'static> = k.as_der().map_err(|_| JwtError::Signing)?;
                Ok(Zeroizing::new(der.as_ref().to_vec()))
            }
            KeyMaterial::Ec(k) => Ok(Zeroizing::new(
                k.to_pkcs8v1()
                    .map_err(|_| JwtError::Signing)?
                    .as_ref()
                    .to_vec(),
            )),
        }
    }

    /// The key ID: base64url of the first 16 bytes of SHA-256 of the SPKI.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The self-signed certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Result<Vec<u8>, JwtError> {
        match &self.key {
            KeyMaterial::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
            KeyMaterial::Ec(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| JwtError::Signing)
    }

    /// Signs `msg` with the JWS algorithm (RS256 or raw r||s ES384).
    pub fn sign_raw(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        let rng = SystemRandom::new();
        match &self.key {
            KeyMaterial::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| JwtError::Signing)?;
                Ok(sig)
            }
            KeyMaterial::Ec(k) => Ok(k
                .sign(&rng, msg)
                .map_err(|_| JwtError::Signing)?
                .as_ref()
                .to_vec()),
        }
    }

    /// Signs `msg` for an X.509 signature (RSA PKCS#1 SHA-256, or DER ECDSA SHA-384).
    pub(crate) fn sign_x509(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        match &self.key {
            KeyMaterial::Rsa(_) => self.sign_raw(msg),
            KeyMaterial::Ec(_) => {
                let pkcs8 = self.to_pkcs8()?;
                let k =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, &pkcs8)
                        .map_err(|_| JwtError::Signing)?;
                Ok(k.sign(&SystemRandom::new(), msg)
                    .map_err(|_| JwtError::Signing)?
                    .as_ref()
                    .to_vec())
            }
        }
    }

    /// Signs `claims` as a compact JWS with `kid`, `jku` and `typ: JWT`.
    pub fn sign(&self, claims: &Map<String, Value>, jku: &str) -> Result<String, JwtError> {
        let header = serde_json::json!({
            "alg": self.alg.name(),
            "jku": jku,
            "kid": self.kid,
            "typ": "JWT",
        });
        self.sign_parts(&header, claims)
    }

    /// Signs `payload` as a compact JWS whose header carries `kid` and the signing
    /// certificate (`x5c`), as Key Vault signs key release responses.
    pub fn sign_with_x5c(&self, payload: &Map<String, Value>) -> Result<String, JwtError> {
        let header = serde_json::json!({
            "alg": self.alg.name(),
            "kid": self.kid,
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        self.sign_parts(&header, payload)
    }

    fn sign_parts(&self, header: &Value, payload: &Map<String, Value>) -> Result<String, JwtError> {
        let header = serde_json::to_vec(header).map_err(|_| JwtError::Signing)?;
        let payload = serde_json::to_vec(payload).map_err(|_| JwtError::Signing)?;
        let mut out = B64URL.encode(header);
        out.push('.');
        out.push_str(&B64URL.encode(payload));
        let sig = self.sign_raw(out.as_bytes())?;
        out.push('.');
        out.push_str(&B64URL.encode(sig));
        Ok(out)
    }

    /// The public key as a JWK with `kid`, `alg`, `use: sig` and `x5c`.
    pub fn jwk(&self) -> Jwk {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (kty, n, e, crv, x, y) = match &self.key {
            KeyMaterial::Rsa(k) => {
                let c = k.public_key();
                let comps: RsaPublicKeyComponents<Vec<u8>> = c.into();
                (
                    "RSA",
                    Some(B64URL.encode(strip_zeros(&comps.n))),
                    Some(B64URL.encode(strip_zeros(&comps.e))),
                    None,
                    None,
                    None,
                )
            }
            KeyMaterial::Ec(k) => {
                let point = k.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(48.min(point.len().saturating_sub(1)));
                (
                    "EC",
                    None,
                    None,
                    Some("P-384".to_string()),
                    Some(B64URL.encode(x)),
                    Some(B64URL.encode(y)),
                )
            }
        };
        Jwk {
            kty: kty.to_string(),
            kid: Some(self.kid.clone()),
            alg: Some(self.alg.name().to_string()),
            use_: Some("sig".to_string()),
            n,
            e,
            crv,
            x,
            y,
            x5c: vec![b64.encode(&self.cert_der)],
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}

/// A JSON Web Key (public), as served in a JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Jwk {
    /// Key type: `RSA` or `EC`.
    pub kty: String,
    /// Key ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Intended algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// RSA modulus (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Certificate chain (base64 DER), first the key's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x5c: Vec<String>,
}

/// A JSON Web Key Set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWKS document.
    pub fn from_json(data: &[u8]) -> Result<Self, JwtError> {
        serde_json::from_slice(data).map_err(|e| JwtError::BadKey(format!("JWKS: {e}")))
    }
}

/// What [`verify`] checks besides the signature.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Algorithms accepted.
    pub algs: Vec<Alg>,
    /// The issuer `iss` must equal, if set.
    pub issuer: Option<String>,
    /// The time to check `exp`/`nbf` at (Unix seconds).
    pub now: i64,
    /// Allowed clock skew in seconds.
    pub leeway: i64,
}

impl VerifyOptions {
    /// All supported algorithms, no issuer check, 60 s leeway, at `now`.
    pub fn at(now: i64) -> Self {
        VerifyOptions {
            algs: Alg::ALL.to_vec(),
            issuer: None,
            now,
            leeway: 60,
        }
    }
}

/// A verified token.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The protected header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
    /// The algorithm it was signed with.
    pub alg: Alg,
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    B64URL
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = decode_part(part, what)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
    }
}

/// A JSON object.
pub type JsonObject = Map<String, Value>;

/// The header and claims of a token, unverified (to find its issuer or key).
pub fn peek(token: &str) -> Result<(JsonObject, JsonObject), JwtError> {
    let (h, p, _) = split(token)?;
    Ok((decode_json(h, "header")?, decode_json(p, "payload")?))
}

fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    split_within(token, MAX_TOKEN_LEN)
}

fn split_within(token: &str, limit: usize) -> Result<(&str, &str, &str), JwtError> {
    if token.len() > limit {
        return Err(JwtError::Malformed(format!("longer than {limit} bytes")));
    }
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Ok((h, p, s)),
        _ => Err(JwtError::Malformed("not three dot-separated parts".into())),
    }
}

fn verify_sig(alg: Alg, jwk: &Jwk, msg: &[u8], sig: &[u8]) -> Result<(), JwtError> {
    let kid = jwk.kid.clone().unwrap_or_default();
    let mismatch = || JwtError::KeyAlgMismatch {
        kid: kid.clone(),
        alg: alg.name(),
    };
    let b = |v: &Option<String>, what: &str| -> Result<Vec<u8>, JwtError> {
        let s = v
            .as_deref()
            .ok_or_else(|| JwtError::BadKey(format!("JWK without {what}")))?;
        B64URL
            .decode(s.trim_end_matches('='))
            .map_err(|_| JwtError::BadKey(format!("JWK {what} is not base64url")))
    };
    if alg.is_rsa() {
        if jwk.kty != "RSA" {
            return Err(mismatch());
        }
        let n = b(&jwk.n, "n")?;
        let e = b(&jwk.e, "e")?;
        let params: &signature::RsaParameters = match alg {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            _ => &signature::RSA_PSS_2048_8192_SHA384,
        };
        RsaPublicKeyComponents { n: &n, e: &e }
            .verify(params, msg, sig)
            .map_err(|_| JwtError::BadSignature)
    } else {
        let (crv, valg): (&str, &'static signature::EcdsaVerificationAlgorithm) = match alg {
            Alg::ES256 => ("P-256", &signature::ECDSA_P256_SHA256_FIXED),
            _ => ("P-384", &signature::ECDSA_P384_SHA384_FIXED),
        };
        if jwk.kty != "EC" || jwk.crv.as_deref() != Some(crv) {
            return Err(mismatch());
        }
        let mut point = vec![4u8];
        point.extend(b(&jwk.x, "x")?);
        point.extend(b(&jwk.y, "y")?);
        signature::UnparsedPublicKey::new(valg, &point)
            .verify(msg, sig)
            .map_err(|_| JwtError::BadSignature)
    }
}

/// A token's parts split at the dots, its decoded header (no `crit`), its algorithm (on
/// `algs`; `none` and HMAC named as such), and the bytes its signature covers.
struct Parts<'t> {
    header: Map<String, Value>,
    alg: Alg,
    signed: &'t [u8],
    payload: &'t str,
    signature: Vec<u8>,
}

fn parts<'t>(token: &'t str, limit: usize, algs: &[Alg]) -> Result<Parts<'t>, JwtError> {
    let (h, p, s) = split_within(token, limit)?;
    let header = decode_json(h, "header")?;
    if let Some(crit) = header.get("crit") {
        return Err(JwtError::CriticalHeader(crit.to_string()));
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::MissingClaim("alg"))?;
    let alg = Alg::from_name(alg_name)
        .filter(|a| algs.contains(a))
        .ok_or_else(|| {
            if alg_name.eq_ignore_ascii_case("none") {
                JwtError::Unsigned
            } else if alg_name.to_ascii_uppercase().starts_with("HS") {
                JwtError::SymmetricAlg(alg_name.to_string())
            } else {
                JwtError::AlgNotAllowed(alg_name.to_string())
            }
        })?;
    let signed_len = h.len() + 1 + p.len();
    Ok(Parts {
        header,
        alg,
        signed: token
            .trim()
            .as_bytes()
            .get(..signed_len)
            .unwrap_or_default(),
        payload: p,
        signature: decode_part(s, "signature")?,
    })
}

/// Verifies a compact JWS signed by one pinned certificate's key (`cert_der`, DER),
/// as the party a key vault released a key to checks the release response: no `crit`
/// header, the algorithm on `algs` and of the certificate key's type, the header's
/// `x5c[0]` (when present) that very certificate, and the signature. A release
/// response carries no time claims, so none is checked; the certificate's own
/// validity is not either (the pin is the trust decision).
pub fn verify_pinned(token: &str, cert_der: &[u8], algs: &[Alg]) -> Result<Verified, JwtError> {
    use base64::engine::general_purpose::STANDARD;
    let Parts {
        header,
        alg,
        signed,
        payload,
        signature: sig,
    } = parts(token, MAX_PINNED_LEN, algs)?;
    if let Some(x5c) = header.get("x5c") {
        let first = x5c
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .and_then(|c| STANDARD.decode(c).ok())
            .ok_or_else(|| JwtError::Malformed("x5c is not an array of base64 DER".into()))?;
        if first != cert_der {
            return Err(JwtError::SignerMismatch);
        }
    }
    let key = x509::public_key_bits(cert_der)?;
    let params: &dyn signature::VerificationAlgorithm = match alg {
        Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
    };
    signature::UnparsedPublicKey::new(params, &key)
        .verify(signed, &sig)
        .map_err(|_| JwtError::BadSignature)?;
    Ok(Verified {
        header,
        claims: decode_json(payload, "payload")?,
        alg,
    })
}

/// Verifies a compact JWS token against `jwks`: no `crit` header, algorithm
/// allow-list, key by `kid` (its `alg`, when it names one, must be the token's, and its
/// `use`, when given, `sig`), signature, `exp` (required), `nbf` and `iat` (not in the
/// future) with leeway, and the issuer if asked.
pub fn verify(token: &str, jwks: &Jwks, opts: &VerifyOptions) -> Result<Verified, JwtError> {
    let Parts {
        header,
        alg,
        signed,
        payload,
        signature: sig,
    } = parts(token, MAX_TOKEN_LEN, &opts.algs)?;
    let jwk = match header.get("kid").and_then(Value::as_str) {
        Some(kid) => jwks
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .ok_or_else(|| JwtError::UnknownKid(kid.to_string()))?,
        None if jwks.keys.len() == 1 => &jwks.keys[0],
        None => return Err(JwtError::UnknownKid(String::new())),
    };
    let kid = || jwk.kid.clone().unwrap_or_default();
    if jwk.alg.as_deref().is_some_and(|a| a != alg.name()) {
        return Err(JwtError::KeyAlgMismatch {
            kid: kid(),
            alg: alg.name(),
        });
    }
    if let Some(u) = jwk.use_.as_deref().filter(|u| *u != "sig") {
        return Err(JwtError::KeyUse {
            kid: kid(),
            key_use: u.to_string(),
        });
    }
    verify_sig(alg, jwk, signed, &sig)?;
    let claims = decode_json(payload, "payload")?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::MissingClaim("exp"))?;
    if opts.now > exp.saturating_add(opts.leeway) {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(JwtError::MissingClaim("nbf"))?;
        if opts.now.saturating_add(opts.leeway) < nbf {
            return Err(JwtError::NotYetValid(nbf));
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_i64().ok_or(JwtError::MissingClaim("iat"))?;
        if opts.now.saturating_add(opts.leeway) < iat {
            return Err(JwtError::IssuedInFuture(iat));
        }
    }
    if let Some(want) = &opts.issuer {
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(JwtError::MissingClaim("iss"))?;
        if iss != want {
            return Err(JwtError::IssuerMismatch(iss.to_string()));
        }
    }
    Ok(Verified {
        header,
        claims,
        alg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("iss".into(), "http://issuer".into());
        m.insert("exp".into(), exp.into());
        m.insert("nbf".into(), 1000.into());
        m
    }

    #[test]
    fn round_trip_and_refusals() {
        for alg in [Alg::RS256, Alg::ES384] {
            let s = TokenSigner::generate(alg, "test", 1000, 1).unwrap();
            let jwks = Jwks {
                keys: vec![s.jwk()],
            };
            let t = s.sign(&claims(5000), "http://issuer/certs").unwrap();
            let mut o = VerifyOptions::at(2000);
            o.issuer = Some("http://issuer".into());
            let v = verify(&t, &jwks, &o).unwrap();
            assert_eq!(v.alg, alg);
            assert_eq!(v.header["kid"], s.kid());
            // Expired, not yet valid, wrong issuer.
            assert_eq!(
                verify(&t, &jwks, &VerifyOptions::at(6000))
                    .unwrap_err()
                    .code(),
                "token_expired"
            );
            assert_eq!(
                verify(&t, &jwks, &VerifyOptions::at(100))
                    .unwrap_err()
                    .code(),
                "token_not_yet_valid"
            );
            o.issuer = Some("http://other".into());
            assert_eq!(verify(&t, &jwks, &o).unwrap_err().code(), "issuer_mismatch");
            // A flipped payload byte breaks the signature.
            let mut parts: Vec<String> = t.split('.').map(String::from).collect();
            let mut c = claims(9999);
            c.insert("x".into(), 1.into());
            parts[1] = B64URL.encode(serde_json::to_vec(&c).unwrap());
            let forged = parts.join(".");
            assert_eq!(
                verify(&forged, &jwks, &VerifyOptions::at(2000))
                    .unwrap_err()
                    .code(),
                "bad_signature"
            );
            // Re-parse the key from PKCS#8: same kid.
            let again = TokenSigner::from_pkcs8(alg, &s.to_pkcs8().unwrap(), vec![]).unwrap();
            assert_eq!(again.kid(), s.kid());
        }
    }

    #[test]
    fn pinned_signer_accepts_its_own_signature_only() {
        use serde_json::json;
        let s = TokenSigner::generate(Alg::RS256, "vault", 1000, 1).unwrap();
        let other = TokenSigner::generate(Alg::RS256, "vault", 1000, 1).unwrap();
        let mut payload = Map::new();
        payload.insert("response".into(), "x".into());
        // Verification pinned to `cert` (RS256 only), and its error code.
        let pinned = |token: &str, cert: &[u8]| verify_pinned(token, cert, &[Alg::RS256]);
        let code = |r: Result<Verified, JwtError>| r.unwrap_err().code();
        // `payload` signed by `by` under the header `h`.
        let signed = |by: &TokenSigner, h: Value| by.sign_parts(&h, &payload).unwrap();
        let t = s.sign_with_x5c(&payload).unwrap();
        assert_eq!(pinned(&t, s.cert_der()).unwrap().claims["response"], "x");
        // Another signer's certificate pinned: its x5c does not match.
        assert_eq!(code(pinned(&t, other.cert_der())), "signer_mismatch");
        // The other signer signs a header that claims the pinned certificate: the
        // signature is checked with the pinned key and fails.
        let x5c = base64::engine::general_purpose::STANDARD.encode(s.cert_der());
        let forged = signed(&other, json!({"alg": "RS256", "x5c": [x5c]}));
        assert_eq!(code(pinned(&forged, s.cert_der())), "bad_signature");
        // A crit header and an x5c that is not base64 DER are refused.
        let crit = signed(&s, json!({"alg": "RS256", "crit": ["b64"]}));
        assert_eq!(code(pinned(&crit, s.cert_der())), "crit_unsupported");
        let bad_x5c = signed(&s, json!({"alg": "RS256", "x5c": "zz"}));
        assert_eq!(code(pinned(&bad_x5c, s.cert_der())), "malformed_token");
        // Longer than a token, within the limit for pinned responses.
        let mut big = payload.clone();
        big.insert("policy".into(), "p".repeat(100_000).into());
        let t_big = s.sign_with_x5c(&big).unwrap();
        assert!(pinned(&t_big, s.cert_der()).is_ok());
        // A changed payload, an algorithm not allowed, no x5c at all (still checked).
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = B64URL.encode(b"{\"response\":\"y\"}");
        assert_eq!(
            code(pinned(&parts.join("."), s.cert_der())),
            "bad_signature"
        );
        assert_eq!(
            code(verify_pinned(&t, s.cert_der(), &[Alg::ES384])),
            "alg_not_allowed"
        );
        let bare = signed(&s, json!({"alg": "RS256"}));
        assert!(pinned(&bare, s.cert_der()).is_ok());
        assert_eq!(code(pinned(&bare, other.cert_der())), "bad_signature");
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let s = TokenSigner::generate(Alg::RS256, "test", 1000, 1).unwrap();
        let jwks = Jwks {
            keys: vec![s.jwk()],
        };
        let payload = B64URL.encode(serde_json::to_vec(&claims(5000)).unwrap());
        for (alg, code) in [
            ("none", "alg_none"),
            ("None", "alg_none"),
            ("HS256", "alg_symmetric"),
            ("HS512", "alg_symmetric"),
            ("rs256", "alg_not_allowed"),
            ("RS1", "alg_not_allowed"),
        ] {
            let header = B64URL.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, s.kid()));
            let t = format!("{header}.{payload}.");
            assert_eq!(
                verify(&t, &jwks, &VerifyOptions::at(2000))
                    .unwrap_err()
                    .code(),
                code,
                "{alg}"
            );
        }
    }

    /// Validly signed tokens that are still refused: a `crit` header, a key whose
    /// `alg` or `use` says it is not for this, an `iat` in the future.
    #[test]
    fn crit_key_alg_and_use_and_iat() {
        let s = TokenSigner::generate(Alg::RS256, "test", 1000, 1).unwrap();
        let jwks = Jwks {
            keys: vec![s.jwk()],
        };
        let crit = s
            .sign_parts(
                &serde_json::json!({"alg": "RS256", "kid": s.kid(), "crit": ["exp"], "exp": 1}),
                &claims(5000),
            )
            .unwrap();
        assert_eq!(
            verify(&crit, &jwks, &VerifyOptions::at(2000))
                .unwrap_err()
                .code(),
            "crit_unsupported"
        );
        let t = s.sign(&claims(5000), "http://issuer/certs").unwrap();
        verify(&t, &jwks, &VerifyOptions::at(2000)).unwrap();
        let mut other_alg = jwks.clone();
        other_alg.keys[0].alg = Some("PS256".into());
        assert_eq!(
            verify(&t, &other_alg, &VerifyOptions::at(2000))
                .unwrap_err()
                .code(),
            "key_alg_mismatch"
        );
        let mut enc = jwks.clone();
        enc.keys[0].use_ = Some("enc".into());
        assert_eq!(
            verify(&t, &enc, &VerifyOptions::at(2000))
                .unwrap_err()
                .code(),
            "key_use"
        );
        let mut no_hints = jwks.clone();
        no_hints.keys[0].alg = None;
        no_hints.keys[0].use_ = None;
        verify(&t, &no_hints, &VerifyOptions::at(2000)).unwrap();
        let mut future = claims(9000);
        future.insert("iat".into(), 3000.into());
        let t = s.sign(&future, "http://issuer/certs").unwrap();
        let e = verify(&t, &jwks, &VerifyOptions::at(2000)).unwrap_err();
        assert_eq!(e.code(), "token_issued_in_future");
        // Within the leeway, or in the past, it is fine.
        verify(&t, &jwks, &VerifyOptions::at(2950)).unwrap();
        let mut bad = claims(9000);
        bad.insert("iat".into(), "yesterday".into());
        let t = s.sign(&bad, "http://issuer/certs").unwrap();
        assert_eq!(
            verify(&t, &jwks, &VerifyOptions::at(2000))
                .unwrap_err()
                .code(),
            "missing_claim"
        );
    }

    #[test]
    fn malformed_tokens() {
        let jwks = Jwks::default();
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                verify(t, &jwks, &VerifyOptions::at(0)).unwrap_err().code(),
                "malformed_token"
            );
        }
    }
}
