//! Just enough DER and PEM for public keys and ECDSA signatures. Strict: definite,
//! minimal lengths; positive, minimally encoded integers; no trailing data.

use base64::Engine as _;

use crate::error::Error;

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 / secp256r1, 1.2.840.10045.3.1.7.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1, 1.3.132.0.34.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

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

struct Der<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Der<'a> {
    fn new(input: &'a [u8], what: &'static str) -> Self {
        Self { rest: input, what }
    }

    fn err(&self) -> Error {
        Error::Der { what: self.what }
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(Error::Der { what: self.what })?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.rest.len() {
            return Err(self.err());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn tlv(&mut self) -> Result<(u8, &'a [u8]), Error> {
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(self.err()); // high tag numbers never occur here
        }
        let first = self.byte()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(self.err()); // indefinite or absurd
            }
            let bytes = self.take(n)?;
            if bytes.first() == Some(&0) {
                return Err(self.err()); // non-minimal
            }
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if len < 0x80 {
                return Err(self.err()); // should have used the short form
            }
            len
        };
        Ok((tag, self.take(len)?))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], Error> {
        match self.tlv()? {
            (t, value) if t == tag => Ok(value),
            _ => Err(self.err()),
        }
    }

    /// A positive INTEGER, returned without leading zero bytes.
    fn positive_integer(&mut self) -> Result<&'a [u8], Error> {
        let value = self.expect(TAG_INTEGER)?;
        match value {
            [] => Err(self.err()),
            [first, ..] if first & 0x80 != 0 => Err(self.err()), // negative
            [0, second, ..] if second & 0x80 == 0 => Err(self.err()), // non-minimal
            [0, rest @ ..] => Ok(rest),
            _ => Ok(value),
        }
    }

    fn finish(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

/// Parses a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`,
/// returning `(n, e)` without leading zeros.
pub(crate) fn parse_pkcs1(input: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let mut outer = Der::new(input, "RSAPublicKey");
    let seq = outer.expect(TAG_SEQUENCE)?;
    outer.finish()?;
    let mut inner = Der::new(seq, "RSAPublicKey");
    let n = inner.positive_integer()?;
    let e = inner.positive_integer()?;
    inner.finish()?;
    Ok((n, e))
}

/// Parses a SubjectPublicKeyInfo holding an RSA or a P-256/P-384 EC key.
pub(crate) fn parse_spki(input: &[u8]) -> Result<SpkiKey<'_>, Error> {
    let mut outer = Der::new(input, "SubjectPublicKeyInfo");
    let seq = outer.expect(TAG_SEQUENCE)?;
    outer.finish()?;
    let mut spki = Der::new(seq, "SubjectPublicKeyInfo");
    let alg_id = spki.expect(TAG_SEQUENCE)?;
    let bits = spki.expect(TAG_BIT_STRING)?;
    spki.finish()?;
    let key = match bits {
        [0, key @ ..] => key,
        _ => {
            return Err(Error::Der {
                what: "SubjectPublicKeyInfo.subjectPublicKey",
            });
        }
    };

    let mut alg = Der::new(alg_id, "AlgorithmIdentifier");
    let oid = alg.expect(TAG_OID)?;
    if oid == OID_RSA_ENCRYPTION {
        if !alg.rest.is_empty() {
            let null = alg.expect(TAG_NULL)?;
            if !null.is_empty() {
                return Err(alg.err());
            }
        }
        alg.finish()?;
        Ok(SpkiKey::Rsa(key))
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = alg.expect(TAG_OID)?;
        alg.finish()?;
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
    let mut outer = Der::new(input, "ECDSA-Sig-Value");
    let seq = outer.expect(TAG_SEQUENCE)?;
    outer.finish()?;
    let mut inner = Der::new(seq, "ECDSA-Sig-Value");
    let r = inner.positive_integer()?.to_vec();
    let s = inner.positive_integer()?.to_vec();
    inner.finish()?;
    Ok((r, s))
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // Short form; the cast cannot truncate.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn push_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let m = magnitude.get(skip..).unwrap_or_default();
    let pad = m.first().is_none_or(|&b| b & 0x80 != 0);
    out.push(TAG_INTEGER);
    push_len(out, m.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(m);
}

fn push_sequence(out: &mut Vec<u8>, body: &[u8]) {
    out.push(TAG_SEQUENCE);
    push_len(out, body.len());
    out.extend_from_slice(body);
}

/// Encodes `ECDSA-Sig-Value` from big-endian unsigned `r` and `s`.
pub(crate) fn encode_ecdsa_sig(r: &[u8], s: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    push_integer(&mut body, r);
    push_integer(&mut body, s);
    let mut out = Vec::new();
    push_sequence(&mut out, &body);
    out
}

/// Encodes a PKCS#1 `RSAPublicKey` from big-endian unsigned `n` and `e`.
pub(crate) fn encode_pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    push_integer(&mut body, n);
    push_integer(&mut body, e);
    let mut out = Vec::new();
    push_sequence(&mut out, &body);
    out
}

/// Decodes the first PEM block of `text`, returning its label and contents.
/// Headers (RFC 1421 `Proc-Type:` etc.) are refused.
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
}
