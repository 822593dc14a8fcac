//! Public keys that verify quote signatures: RSA (JWK components, PKCS#1, SPKI, PEM)
//! and ECDSA P-256/P-384 (SEC1 points, SPKI, PEM).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::der::{self, SpkiCurve, SpkiKey};
use crate::error::Error;

/// Smallest accepted RSA modulus, in bits (what aws-lc-rs' `*_2048_8192_*` verify).
const RSA_MIN_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits.
const RSA_MAX_BITS: usize = 8192;

/// base64url with or without padding (JWKs omit it; some producers add it).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn strip_leading_zeros(v: &[u8]) -> &[u8] {
    let skip = v.iter().take_while(|&&b| b == 0).count();
    v.get(skip..).unwrap_or_default()
}

/// An RSA public key, 2048 to 8192 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaPublicKey {
    /// Builds a key from the big-endian modulus `n` and exponent `e` (leading zero
    /// bytes are ignored). The key must be 2048–8192 bits and pass aws-lc's
    /// public-key checks.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, Error> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = n.first().map_or(0, |&top| {
            (n.len() - 1) * 8 + (8 - usize::try_from(top.leading_zeros()).unwrap_or(8))
        });
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(Error::InvalidKey {
                reason: "RSA modulus must be 2048 to 8192 bits",
            });
        }
        if e.last().is_none_or(|&low| low & 1 == 0) || e == [1u8] {
            return Err(Error::InvalidKey {
                reason: "RSA exponent must be odd and at least 3",
            });
        }
        aws_lc_rs::rsa::PublicKey::from_der(&der::encode_pkcs1(n, e)).map_err(|_| {
            Error::InvalidKey {
                reason: "RSA key rejected by aws-lc",
            }
        })?;
        Ok(Self {
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }

    /// Builds a key from the base64url `n` and `e` members of a JWK (RFC 7518 §6.3.1),
    /// e.g. the `HCLAkPub` key in Azure's HCL runtime claims. Padding is optional.
    pub fn from_jwk_components(n_b64url: &str, e_b64url: &str) -> Result<Self, Error> {
        let n = BASE64URL.decode(n_b64url).map_err(|source| Error::Base64 {
            what: "JWK n",
            source,
        })?;
        let e = BASE64URL.decode(e_b64url).map_err(|source| Error::Base64 {
            what: "JWK e",
            source,
        })?;
        Self::from_components(&n, &e)
    }

    /// Parses a PKCS#1 `RSAPublicKey` (DER).
    pub fn from_pkcs1_der(der_bytes: &[u8]) -> Result<Self, Error> {
        let (n, e) = der::parse_pkcs1(der_bytes)?;
        Self::from_components(n, e)
    }

    /// Parses an X.509 `SubjectPublicKeyInfo` (DER) holding an RSA key.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self, Error> {
        match der::parse_spki(der_bytes)? {
            SpkiKey::Rsa(pkcs1) => Self::from_pkcs1_der(pkcs1),
            SpkiKey::Ec(..) => Err(Error::InvalidKey {
                reason: "SubjectPublicKeyInfo holds an EC key, not RSA",
            }),
        }
    }

    /// Parses either DER form: `SubjectPublicKeyInfo` or PKCS#1 `RSAPublicKey`.
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, Error> {
        Self::from_spki_der(der_bytes)
            .or_else(|spki_err| Self::from_pkcs1_der(der_bytes).map_err(|_| spki_err))
    }

    /// Parses PEM: `-----BEGIN PUBLIC KEY-----` (SPKI, what `tpm2_readpublic -f pem`
    /// and OpenSSL write) or `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let (label, body) = der::pem_decode(pem)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&body),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&body),
            _ => Err(Error::Pem {
                reason: "expected a PUBLIC KEY or RSA PUBLIC KEY block",
            }),
        }
    }

    /// The modulus, big-endian without leading zeros.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// The public exponent, big-endian without leading zeros.
    pub fn exponent(&self) -> &[u8] {
        &self.e
    }

    /// The modulus length in bytes (= the length of a signature).
    pub fn modulus_len(&self) -> usize {
        self.n.len()
    }
}

/// An elliptic curve supported for quote signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256 (`TPM_ECC_NIST_P256`).
    P256,
    /// NIST P-384 (`TPM_ECC_NIST_P384`).
    P384,
}

impl EcCurve {
    /// Size of a field element / scalar in bytes.
    pub fn field_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::P256 => "ECDSA P-256",
            Self::P384 => "ECDSA P-384",
        }
    }

    pub(crate) fn fixed_alg(self) -> &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            Self::P384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        }
    }
}

impl From<SpkiCurve> for EcCurve {
    fn from(c: SpkiCurve) -> Self {
        match c {
            SpkiCurve::P256 => Self::P256,
            SpkiCurve::P384 => Self::P384,
        }
    }
}

/// An ECDSA public key on P-256 or P-384.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcdsaPublicKey {
    curve: EcCurve,
    point: Vec<u8>,
}

impl EcdsaPublicKey {
    /// Builds a key from a SEC1 point (`04 || x || y`, or compressed `02`/`03 || x`)
    /// on `curve`. The point must be on the curve.
    pub fn from_sec1(curve: EcCurve, point: &[u8]) -> Result<Self, Error> {
        if !matches!(point.first(), Some(0x02..=0x04)) {
            return Err(Error::InvalidKey {
                reason: "not a SEC1 point encoding",
            });
        }
        aws_lc_rs::signature::UnparsedPublicKey::new(curve.fixed_alg(), point)
            .parse()
            .map_err(|_| Error::InvalidKey {
                reason: "EC point rejected by aws-lc (not on the curve?)",
            })?;
        Ok(Self {
            curve,
            point: point.to_vec(),
        })
    }

    /// Builds a key from the affine coordinates of a TPM `TPMS_ECC_POINT`
    /// (big-endian, each left-padded to the field size if shorter).
    pub fn from_affine(curve: EcCurve, x: &[u8], y: &[u8]) -> Result<Self, Error> {
        let len = curve.field_len();
        let x = strip_leading_zeros(x);
        let y = strip_leading_zeros(y);
        if x.len() > len || y.len() > len {
            return Err(Error::InvalidKey {
                reason: "EC coordinate longer than the field",
            });
        }
        let mut point = vec![0x04];
        point.resize(1 + len - x.len(), 0);
        point.extend_from_slice(x);
        point.resize(1 + 2 * len - y.len(), 0);
        point.extend_from_slice(y);
        Self::from_sec1(curve, &point)
    }

    /// Parses an X.509 `SubjectPublicKeyInfo` (DER) holding a P-256 or P-384 key.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self, Error> {
        match der::parse_spki(der_bytes)? {
            SpkiKey::Ec(curve, point) => Self::from_sec1(curve.into(), point),
            SpkiKey::Rsa(_) => Err(Error::InvalidKey {
                reason: "SubjectPublicKeyInfo holds an RSA key, not EC",
            }),
        }
    }

    /// The curve.
    pub fn curve(&self) -> EcCurve {
        self.curve
    }

    /// The SEC1 point as given.
    pub fn point(&self) -> &[u8] {
        &self.point
    }
}

/// A key that can verify quote signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA.
    Rsa(RsaPublicKey),
    /// ECDSA.
    Ecdsa(EcdsaPublicKey),
}

impl PublicKey {
    /// Parses an X.509 `SubjectPublicKeyInfo` (DER) holding an RSA, P-256 or P-384 key.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self, Error> {
        match der::parse_spki(der_bytes)? {
            SpkiKey::Rsa(pkcs1) => RsaPublicKey::from_pkcs1_der(pkcs1).map(Self::Rsa),
            SpkiKey::Ec(curve, point) => {
                EcdsaPublicKey::from_sec1(curve.into(), point).map(Self::Ecdsa)
            }
        }
    }

    /// Parses DER: a `SubjectPublicKeyInfo`, or a PKCS#1 `RSAPublicKey`.
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, Error> {
        Self::from_spki_der(der_bytes).or_else(|spki_err| {
            RsaPublicKey::from_pkcs1_der(der_bytes)
                .map(Self::Rsa)
                .map_err(|_| spki_err)
        })
    }

    /// Parses PEM: `PUBLIC KEY` (SPKI, RSA or EC) or `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let (label, body) = der::pem_decode(pem)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&body),
            "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&body).map(Self::Rsa),
            _ => Err(Error::Pem {
                reason: "expected a PUBLIC KEY or RSA PUBLIC KEY block",
            }),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RSA",
            Self::Ecdsa(k) => k.curve.name(),
        }
    }
}

impl From<RsaPublicKey> for PublicKey {
    fn from(k: RsaPublicKey) -> Self {
        Self::Rsa(k)
    }
}

impl From<EcdsaPublicKey> for PublicKey {
    fn from(k: EcdsaPublicKey) -> Self {
        Self::Ecdsa(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_small_or_bad_rsa() {
        let mut n = vec![0xffu8; 128];
        assert!(RsaPublicKey::from_components(&n, &[1, 0, 1]).is_err()); // 1024 bits
        n = vec![0xffu8; 256];
        n[255] = 0xfb; // odd
        assert!(RsaPublicKey::from_components(&n, &[2]).is_err());
        assert!(RsaPublicKey::from_components(&n, &[1]).is_err());
        assert!(RsaPublicKey::from_components(&n, &[]).is_err());
        assert!(matches!(
            RsaPublicKey::from_jwk_components("!!", "AQAB"),
            Err(Error::Base64 { what: "JWK n", .. })
        ));
    }

    #[test]
    fn rejects_bad_points() {
        assert!(EcdsaPublicKey::from_sec1(EcCurve::P256, &[0x04; 65]).is_err());
        assert!(EcdsaPublicKey::from_sec1(EcCurve::P256, &[]).is_err());
        assert!(EcdsaPublicKey::from_affine(EcCurve::P256, &[1; 33], &[1; 32]).is_err());
    }
}
