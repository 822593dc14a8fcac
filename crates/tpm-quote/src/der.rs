//! DER and PEM for public keys and ECDSA signatures.
//!
//! DER goes through RustCrypto's `der`/`spki`, which are strict: definite, minimal
//! lengths; minimally encoded, non-negative integers; exact tags; no trailing data.
//! PEM armour is read leniently (see [`pem_decode`]).

use ::der::asn1::{ObjectIdentifier, UintRef};
use ::der::{Decode, Encode, Sequence};
use base64::Engine as _;
use spki::SubjectPublicKeyInfoRef;

use crate::error::Error;

/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1, 1.2.840.10045.3.1.7.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1, 1.3.132.0.34.
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A named curve found in a SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpkiCurve {
    P256,
    P384,
}

/// The key inside a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpkiKey<'a> {
    /// The `RSAPublicKey` (PKCS#1) DER.
    Rsa(&'a [u8]),
    /// The SEC1 point of an EC key.
    Ec(SpkiCurve, &'a [u8]),
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
#[derive(Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279).
#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// The magnitude of a decoded unsigned INTEGER without leading zeros (zero is empty).
fn magnitude(u: UintRef<'_>) -> &[u8] {
    match u.as_bytes() {
        [0] => &[],
        bytes => bytes,
    }
}

/// A big-endian unsigned magnitude as an INTEGER: leading zeros are dropped and a
/// `0x00` is prepended on encoding when the top bit is set; zero (or empty) is `0`.
fn uint(magnitude: &[u8]) -> Result<UintRef<'_>, ::der::Error> {
    if magnitude.iter().all(|&b| b == 0) {
        UintRef::new(&[0])
    } else {
        UintRef::new(magnitude)
    }
}

/// Parses a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`,
/// returning `(n, e)` without leading zeros.
pub(crate) fn parse_pkcs1(input: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let key = RsaPublicKey::from_der(input).map_err(|_| Error::Der {
        what: "RSAPublicKey",
    })?;
    Ok((magnitude(key.modulus), magnitude(key.public_exponent)))
}

/// Parses a SubjectPublicKeyInfo holding an RSA or a P-256/P-384 EC key.
pub(crate) fn parse_spki(input: &[u8]) -> Result<SpkiKey<'_>, Error> {
    let spki = SubjectPublicKeyInfoRef::from_der(input).map_err(|_| Error::Der {
        what: "SubjectPublicKeyInfo",
    })?;
    // Keys are whole octets: no unused bits in the BIT STRING.
    let key = spki.subject_public_key.as_bytes().ok_or(Error::Der {
        what: "SubjectPublicKeyInfo.subjectPublicKey",
    })?;
    let bad_alg = Error::Der {
        what: "AlgorithmIdentifier",
    };

    let alg = spki.algorithm;
    if alg.oid == OID_RSA_ENCRYPTION {
        // Parameters must be NULL (RFC 3279), tolerated absent.
        match alg.parameters {
            None => {}
            Some(params) if params.is_null() => {}
            Some(_) => return Err(bad_alg),
        }
        Ok(SpkiKey::Rsa(key))
    } else if alg.oid == OID_EC_PUBLIC_KEY {
        // namedCurve only: no implicitCurve, no specifiedCurve.
        let curve = alg.parameters_oid().map_err(|_| bad_alg)?;
        let curve = if curve == OID_P256 {
            SpkiCurve::P256
        } else if curve == OID_P384 {
            SpkiCurve::P384
        } else {
            return Err(Error::InvalidKey {
                reason: "EC curve is neither P-256 nor P-384",
            });
        };
        Ok(SpkiKey::Ec(curve, key))
    } else {
        Err(Error::InvalidKey {
            reason: "SubjectPublicKeyInfo algorithm is neither rsaEncryption nor id-ecPublicKey",
        })
    }
}

/// Parses `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`.
pub(crate) fn parse_ecdsa_sig(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let sig = EcdsaSigValue::from_der(input).map_err(|_| Error::Der {
        what: "ECDSA-Sig-Value",
    })?;
    Ok((magnitude(sig.r).to_vec(), magnitude(sig.s).to_vec()))
}

/// Encodes `ECDSA-Sig-Value` from big-endian unsigned `r` and `s`.
///
/// Encoding fails only past DER's 256 MiB length limit; the result is then empty,
/// which every consumer (aws-lc) rejects.
pub(crate) fn encode_ecdsa_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
    let encode = || {
        EcdsaSigValue {
            r: uint(r)?,
            s: uint(s)?,
        }
        .to_der()
    };
    encode().unwrap_or_default()
}

/// Encodes a PKCS#1 `RSAPublicKey` from big-endian unsigned `n` and `e`.
///
/// Encoding fails only past DER's 256 MiB length limit; the result is then empty,
/// which every consumer (aws-lc) rejects.
pub(crate) fn encode_pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    let encode = || {
        RsaPublicKey {
            modulus: uint(n)?,
            public_exponent: uint(e)?,
        }
        .to_der()
    };
    encode().unwrap_or_default()
}

/// Decodes the first PEM block of `text`, returning its label and contents.
/// Headers (RFC 1421 `Proc-Type:` etc.) are refused.
///
/// Lax on purpose (RFC 7468 §3 "lax" parsers): text before `BEGIN` and after `END`,
/// surrounding whitespace and any line width are accepted. `der::pem` is not used
/// because it requires exact 64-column lines and at most one line break after `END`,
/// which would refuse one-line or 76-column PEMs (or a trailing blank line) accepted so far.
pub(crate) fn pem_decode(text: &str) -> Result<(String, Vec<u8>), Error> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
        })
        .ok_or(Error::Pem {
            reason: "no -----BEGIN line",
        })?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        if line.starts_with("-----") {
            return Err(Error::Pem {
                reason: "END line does not match BEGIN",
            });
        }
        body.push_str(line);
    }
    if !ended {
        return Err(Error::Pem {
            reason: "no matching -----END line",
        });
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|source| Error::Base64 {
            what: "PEM body",
            source,
        })?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_rules() {
        assert_eq!(
            parse_ecdsa_sig(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f]).unwrap(),
            (vec![1], vec![0x7f])
        );
        // Negative, non-minimal, trailing, long-form-for-short.
        for bad in [
            &[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01][..],
            &[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01],
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00],
            &[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
        ] {
            assert!(parse_ecdsa_sig(bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn encode_roundtrip() {
        let r = [0x80u8; 48];
        let s = [0x00, 0x00, 0x01];
        let der = encode_ecdsa_sig(&r, &s);
        assert_eq!(parse_ecdsa_sig(&der).unwrap(), (r.to_vec(), vec![1]));
        let n = [0xc5u8; 256];
        let der = encode_pkcs1(&n, &[1, 0, 1]);
        assert_eq!(parse_pkcs1(&der).unwrap(), (&n[..], &[1u8, 0, 1][..]));
    }

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, u8::try_from(body.len()).unwrap()];
        out.extend_from_slice(body);
        out
    }

    fn spki(alg: &[&[u8]], unused_bits: u8, key: &[u8]) -> Vec<u8> {
        let alg = tlv(0x30, &alg.concat());
        let bits = tlv(0x03, &[&[unused_bits][..], key].concat());
        tlv(0x30, &[alg, bits].concat())
    }

    #[test]
    fn spki_rules() {
        let rsa = tlv(0x06, OID_RSA_ENCRYPTION.as_bytes());
        let ec = tlv(0x06, OID_EC_PUBLIC_KEY.as_bytes());
        let p256 = tlv(0x06, OID_P256.as_bytes());
        let p384 = tlv(0x06, OID_P384.as_bytes());
        let null = [0x05, 0x00];
        let key = [0x04, 0x01, 0x02];
        let parse = |alg: &[&[u8]], unused: u8| {
            parse_spki(&spki(alg, unused, &key)).map(|k| format!("{k:?}"))
        };
        let ok = |k: SpkiKey<'_>| Ok(format!("{k:?}"));
        let der = |what| Err(Error::Der { what });
        let invalid = |reason| Err(Error::InvalidKey { reason });

        assert_eq!(parse(&[&rsa, &null], 0), ok(SpkiKey::Rsa(&key)));
        assert_eq!(parse(&[&rsa], 0), ok(SpkiKey::Rsa(&key)));
        assert_eq!(parse(&[&rsa, &p256], 0), der("AlgorithmIdentifier"));
        assert_eq!(
            parse(&[&ec, &p256], 0),
            ok(SpkiKey::Ec(SpkiCurve::P256, &key))
        );
        assert_eq!(
            parse(&[&ec, &p384], 0),
            ok(SpkiKey::Ec(SpkiCurve::P384, &key))
        );
        assert_eq!(parse(&[&ec], 0), der("AlgorithmIdentifier"));
        assert_eq!(parse(&[&ec, &null], 0), der("AlgorithmIdentifier"));
        assert_eq!(
            parse(&[&ec, &p256], 1),
            der("SubjectPublicKeyInfo.subjectPublicKey")
        );
        // secp256k1 and Ed25519.
        assert_eq!(
            parse(&[&ec, &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]], 0),
            invalid("EC curve is neither P-256 nor P-384")
        );
        assert!(matches!(
            parse(&[&[0x06, 0x03, 0x2b, 0x65, 0x70]], 0),
            Err(Error::InvalidKey { .. })
        ));
        // Trailing data, wrong outer tag, indefinite length.
        let mut good = spki(&[&ec, &p256], 0, &key);
        good.push(0);
        assert_eq!(
            parse_spki(&good),
            Err(Error::Der {
                what: "SubjectPublicKeyInfo"
            })
        );
        good.pop();
        good[0] = 0x31;
        assert!(parse_spki(&good).is_err());
        good[0] = 0x30;
        good[1] = 0x80;
        assert!(parse_spki(&good).is_err());
    }

    #[test]
    fn zero_integers() {
        let zero_one = [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01];
        assert_eq!(parse_ecdsa_sig(&zero_one).unwrap(), (vec![], vec![1]));
        assert_eq!(encode_ecdsa_sig(&[], &[0, 0, 1]), zero_one);
        assert_eq!(encode_pkcs1(&[0, 0], &[1]), zero_one);
        // An empty INTEGER is not zero.
        assert!(parse_pkcs1(&[0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01]).is_err());
    }
}
