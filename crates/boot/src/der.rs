//! A minimal reader of DER (and the definite-length BER that Authenticode signers
//! emit): tag, length, contents, and the raw bytes of each element. Every length is
//! checked against the input; indefinite lengths and tags above 30 are refused.

use crate::Error;

/// One element: its tag byte, its contents, and its whole encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet (class, constructed bit and tag number below 31).
    pub tag: u8,
    /// The contents octets.
    pub value: &'a [u8],
    /// Identifier, length and contents octets together.
    pub raw: &'a [u8],
}

/// ASN.1 tags used here.
pub mod tag {
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// SEQUENCE (constructed).
    pub const SEQUENCE: u8 = 0x30;
    /// SET (constructed).
    pub const SET: u8 = 0x31;
    /// `[0]` constructed, context-specific.
    pub const CONTEXT_0: u8 = 0xA0;
    /// `[1]` constructed, context-specific.
    pub const CONTEXT_1: u8 = 0xA1;
    /// `[3]` constructed, context-specific.
    pub const CONTEXT_3: u8 = 0xA3;
}

/// Reads consecutive elements from a byte string.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`; `what` names the structure in errors.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// The tag of the next element, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bad(&self, why: &'static str) -> Error {
        Error::Der {
            what: self.what,
            why,
        }
    }

    /// The next element, whatever its tag.
    pub fn any(&mut self) -> Result<Tlv<'a>, Error> {
        let bytes = self.rest;
        let (&tag, after_tag) = bytes.split_first().ok_or(self.bad("truncated"))?;
        if tag & 0x1F == 0x1F {
            return Err(self.bad("multi-byte tags are not used here"));
        }
        let (&first, after_len) = after_tag
            .split_first()
            .ok_or(self.bad("truncated length"))?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else if first == 0x80 {
            return Err(self.bad("indefinite lengths are refused"));
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 {
                return Err(self.bad("length over 4 GiB"));
            }
            let len_bytes = after_len.get(..n).ok_or(self.bad("truncated length"))?;
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + n)
        };
        let end = header
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .ok_or(self.bad("element runs past its container"))?;
        self.rest = &bytes[end..];
        Ok(Tlv {
            tag,
            value: &bytes[header..end],
            raw: &bytes[..end],
        })
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>, Error> {
        let tlv = self.any()?;
        if tlv.tag != tag {
            return Err(self.bad("unexpected element"));
        }
        Ok(tlv)
    }

    /// The next element if it carries `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, Error> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A reader over the contents of the next element, which must carry `tag`.
    pub fn nested(&mut self, tag: u8) -> Result<Reader<'a>, Error> {
        let tlv = self.expect(tag)?;
        Ok(Reader::new(tlv.value, self.what))
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

/// An AlgorithmIdentifier: its OID and its raw parameters (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Algorithm<'a> {
    /// The algorithm's OID contents.
    pub oid: &'a [u8],
    /// The parameters element, if present.
    pub params: Option<Tlv<'a>>,
}

impl<'a> Reader<'a> {
    /// Reads an AlgorithmIdentifier SEQUENCE.
    pub fn algorithm(&mut self) -> Result<Algorithm<'a>, Error> {
        let mut seq = self.nested(tag::SEQUENCE)?;
        let oid = seq.expect(tag::OID)?.value;
        let params = if seq.is_empty() {
            None
        } else {
            Some(seq.any()?)
        };
        seq.finish()?;
        Ok(Algorithm { oid, params })
    }
}

/// Encodes the contents octets of an OID written in dotted form (for constants and
/// messages).
pub fn oid_to_string(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = value.saturating_mul(128) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < oid.len() {
                let first = value.min(80) / 40;
                parts.push(first);
                parts.push(value - first * 40);
            } else {
                parts.push(value);
            }
            value = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// OIDs (contents octets) used by Authenticode and X.509.
pub mod oid {
    /// 1.2.840.113549.1.7.2 signedData.
    pub const SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
    /// 1.3.6.1.4.1.311.2.1.4 SPC_INDIRECT_DATA_OBJID.
    pub const SPC_INDIRECT_DATA: &[u8] =
        &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x04];
    /// 1.3.6.1.4.1.311.2.1.15 SPC_PE_IMAGE_DATAOBJ.
    pub const SPC_PE_IMAGE_DATA: &[u8] =
        &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0F];
    /// 1.2.840.113549.1.9.3 contentType attribute.
    pub const CONTENT_TYPE: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x03];
    /// 1.2.840.113549.1.9.4 messageDigest attribute.
    pub const MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];
    /// 1.2.840.113549.1.7.1 data.
    pub const DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01];
    /// 1.3.14.3.2.26 SHA-1.
    pub const SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A];
    /// 2.16.840.1.101.3.4.2.1 SHA-256.
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// 2.16.840.1.101.3.4.2.2 SHA-384.
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    /// 2.16.840.1.101.3.4.2.3 SHA-512.
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    /// 1.2.840.113549.1.1.1 rsaEncryption.
    pub const RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
    /// 1.2.840.113549.1.1.5 sha1WithRSAEncryption.
    pub const SHA1_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05];
    /// 1.2.840.113549.1.1.11 sha256WithRSAEncryption.
    pub const SHA256_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
    /// 1.2.840.113549.1.1.12 sha384WithRSAEncryption.
    pub const SHA384_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C];
    /// 1.2.840.113549.1.1.13 sha512WithRSAEncryption.
    pub const SHA512_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D];
    /// 1.2.840.10045.2.1 id-ecPublicKey.
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
    /// 1.2.840.10045.3.1.7 prime256v1.
    pub const P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    /// 1.3.132.0.34 secp384r1.
    pub const P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
    /// 1.2.840.10045.4.3.2 ecdsa-with-SHA256.
    pub const ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
    /// 1.2.840.10045.4.3.3 ecdsa-with-SHA384.
    pub const ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
    /// 2.5.4.3 commonName.
    pub const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_print_dotted() {
        assert_eq!(
            oid_to_string(oid::SPC_INDIRECT_DATA),
            "1.3.6.1.4.1.311.2.1.4"
        );
        assert_eq!(oid_to_string(oid::SHA256), "2.16.840.1.101.3.4.2.1");
        assert_eq!(oid_to_string(oid::P384), "1.3.132.0.34");
    }

    #[test]
    fn lengths_are_checked() {
        assert!(Reader::new(&[0x30, 0x05, 0x01], "t").any().is_err());
        assert!(Reader::new(&[0x30, 0x80, 0x00, 0x00], "t").any().is_err());
        assert!(
            Reader::new(&[0x30, 0x85, 1, 1, 1, 1, 1], "t")
                .any()
                .is_err()
        );
        let mut r = Reader::new(&[0x30, 0x81, 0x01, 0x05, 0x02, 0x00], "t");
        let tlv = r.any().unwrap();
        assert_eq!(tlv.value, &[0x05]);
        assert_eq!(r.peek_tag(), Some(0x02));
    }
}
