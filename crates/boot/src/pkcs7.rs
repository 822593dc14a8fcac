//! PKCS#7 SignedData as Authenticode and authenticated UEFI variables use it.
//!
//! Parsed by hand (see [`crate::der`]): Authenticode's content is an
//! `SpcIndirectDataContent` placed directly under `[0] EXPLICIT`, which strict CMS
//! parsers do not accept.

use crate::Error;
use crate::cert::Cert;
use crate::der::{Algorithm, Reader, Tlv, oid, tag};
use crate::pe::HashAlg;

/// Maps a digest AlgorithmIdentifier OID to a hash.
pub(crate) fn hash_of(alg: &[u8]) -> Option<HashAlg> {
    match alg {
        o if o == oid::SHA1 => Some(HashAlg::Sha1),
        o if o == oid::SHA256 => Some(HashAlg::Sha256),
        o if o == oid::SHA384 => Some(HashAlg::Sha384),
        o if o == oid::SHA512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

/// The OID contents of a hash algorithm.
pub(crate) fn oid_of(alg: HashAlg) -> &'static [u8] {
    match alg {
        HashAlg::Sha1 => oid::SHA1,
        HashAlg::Sha256 => oid::SHA256,
        HashAlg::Sha384 => oid::SHA384,
        HashAlg::Sha512 => oid::SHA512,
    }
}

/// One SignerInfo.
#[derive(Debug, Clone)]
pub struct SignerInfo<'a> {
    issuer: &'a [u8],
    serial: &'a [u8],
    digest: Algorithm<'a>,
    signed_attrs: Option<Tlv<'a>>,
    sig_alg: Algorithm<'a>,
    signature: &'a [u8],
}

/// A SignedData structure.
#[derive(Debug, Clone)]
pub struct SignedData<'a> {
    /// The first entry of digestAlgorithms (what edk2 hashes the image with), when it
    /// is a hash this crate knows.
    pub first_digest_algorithm: Option<HashAlg>,
    /// The encapsulated content type's OID.
    pub content_type: &'a [u8],
    /// The encapsulated content element (under `[0] EXPLICIT`), when present.
    pub content: Option<Tlv<'a>>,
    /// The certificates the signer sent along (unordered).
    pub certificates: Vec<Cert<'a>>,
    /// The signers.
    pub signers: Vec<SignerInfo<'a>>,
}

fn bad(why: &'static str) -> Error {
    Error::Der {
        what: "PKCS#7 SignedData",
        why,
    }
}

impl<'a> SignedData<'a> {
    /// Parses a ContentInfo wrapping SignedData, or bare SignedData (authenticated
    /// variables may carry either, as edk2 accepts).
    pub fn parse(blob: &'a [u8]) -> Result<Self, Error> {
        Self::parse_with(blob, true)
    }

    /// [`SignedData::parse`] that ignores whatever follows the structure: only for
    /// looking up certificates that dbx may revoke, where firmware's own lenient parse
    /// would find them.
    pub fn parse_relaxed(blob: &'a [u8]) -> Result<Self, Error> {
        Self::parse_with(blob, false)
    }

    fn parse_with(blob: &'a [u8], strict: bool) -> Result<Self, Error> {
        let mut outer = Reader::new(blob, "PKCS#7 SignedData");
        let mut seq = outer.nested(tag::SEQUENCE)?;
        // Zero padding after the DER (WIN_CERTIFICATE alignment) is allowed, nothing else.
        if strict && outer.rest().iter().any(|&b| b != 0) {
            return Err(bad("bytes other than zero padding after the SignedData"));
        }
        let mut probe = seq.clone();
        if probe.peek_tag() == Some(tag::OID) {
            let content_type = probe.expect(tag::OID)?.value;
            if content_type != oid::SIGNED_DATA {
                return Err(bad("ContentInfo is not signedData"));
            }
            let mut explicit = probe.nested(tag::CONTEXT_0)?;
            let signed = explicit.nested(tag::SEQUENCE)?;
            explicit.finish()?;
            probe.finish()?;
            seq = signed;
        }
        Self::parse_signed_data(seq)
    }

    fn parse_signed_data(mut sd: Reader<'a>) -> Result<Self, Error> {
        sd.expect(tag::INTEGER)?;
        let mut digest_algs = sd.nested(tag::SET)?;
        let mut first_digest_algorithm = None;
        let mut first = true;
        while !digest_algs.is_empty() {
            let alg = digest_algs.algorithm()?;
            if first {
                first_digest_algorithm = hash_of(alg.oid);
                first = false;
            }
        }
        let mut encap = sd.nested(tag::SEQUENCE)?;
        let content_type = encap.expect(tag::OID)?.value;
        let content = match encap.optional(tag::CONTEXT_0)? {
            Some(explicit) => {
                let mut r = Reader::new(explicit.value, "PKCS#7 content");
                let inner = r.any()?;
                r.finish()?;
                Some(inner)
            }
            None => None,
        };
        encap.finish()?;
        let mut certificates = Vec::new();
        if let Some(set) = sd.optional(tag::CONTEXT_0)? {
            let mut r = Reader::new(set.value, "PKCS#7 certificates");
            while !r.is_empty() {
                let c = r.any()?;
                // Only X.509 certificates (SEQUENCE); other choices are skipped.
                if c.tag == tag::SEQUENCE {
                    certificates.push(Cert::parse(c.raw)?);
                }
                if certificates.len() > 64 {
                    return Err(bad("more than 64 certificates"));
                }
            }
        }
        sd.optional(tag::CONTEXT_1)?; // CRLs: not used by firmware
        let mut infos = sd.nested(tag::SET)?;
        sd.finish()?;
        let mut signers = Vec::new();
        while !infos.is_empty() {
            let mut si = infos.nested(tag::SEQUENCE)?;
            si.expect(tag::INTEGER)?;
            let mut sid = si
                .nested(tag::SEQUENCE)
                .map_err(|_| bad("only issuerAndSerialNumber signer identifiers are supported"))?;
            let issuer = sid.expect(tag::SEQUENCE)?.raw;
            let serial = sid.expect(tag::INTEGER)?.value;
            sid.finish()?;
            let digest = si.algorithm()?;
            let signed_attrs = si.optional(tag::CONTEXT_0)?;
            let sig_alg = si.algorithm()?;
            let signature = si.expect(tag::OCTET_STRING)?.value;
            si.optional(tag::CONTEXT_1)?; // unsigned attributes (timestamps): ignored
            si.finish()?;
            signers.push(SignerInfo {
                issuer,
                serial,
                digest,
                signed_attrs,
                sig_alg,
                signature,
            });
            if signers.len() > 8 {
                return Err(bad("more than 8 signers"));
            }
        }
        if signers.is_empty() {
            return Err(bad("no SignerInfo"));
        }
        Ok(Self {
            first_digest_algorithm,
            content_type,
            content,
            certificates,
            signers,
        })
    }

    /// Checks one signer over `content` (the bytes its messageDigest covers) and returns
    /// its certificate. With signed attributes, their contentType must equal this
    /// SignedData's and their messageDigest must equal the hash of `content`.
    pub fn verify_signer(
        &self,
        signer: &SignerInfo<'a>,
        content: &[u8],
    ) -> Result<Cert<'a>, Error> {
        let cert = self
            .certificates
            .iter()
            .find(|c| c.issuer == signer.issuer && c.serial == signer.serial)
            .copied()
            .ok_or(Error::Refused {
                reason: "the signer's certificate is not in the signature".into(),
            })?;
        let hash = hash_of(signer.digest.oid).ok_or_else(|| Error::UnsupportedAlgorithm {
            what: format!(
                "signer digest {}",
                crate::der::oid_to_string(signer.digest.oid)
            ),
        })?;
        if hash == HashAlg::Sha1 {
            return Err(Error::UnsupportedAlgorithm {
                what: "SHA-1 signer digest".into(),
            });
        }
        match signer.signed_attrs {
            Some(attrs) => {
                let mut r = Reader::new(attrs.value, "signed attributes");
                let (mut content_type, mut digest) = (None, None);
                while !r.is_empty() {
                    let mut attr = r.nested(tag::SEQUENCE)?;
                    let kind = attr.expect(tag::OID)?.value;
                    let mut values = attr.nested(tag::SET)?;
                    let value = values.any()?;
                    let slot = if kind == oid::CONTENT_TYPE {
                        &mut content_type
                    } else if kind == oid::MESSAGE_DIGEST {
                        &mut digest
                    } else {
                        continue;
                    };
                    // One value, once: anything else is ambiguous.
                    if slot.is_some() || !values.is_empty() {
                        return Err(bad(
                            "a repeated or multi-valued contentType or messageDigest attribute",
                        ));
                    }
                    *slot = Some(value);
                }
                let content_type = content_type.ok_or(bad("no contentType attribute"))?;
                if content_type.tag != tag::OID || content_type.value != self.content_type {
                    return Err(Error::Refused {
                        reason: "the signed contentType differs from the content's".into(),
                    });
                }
                let digest = digest.ok_or(bad("no messageDigest attribute"))?;
                if digest.tag != tag::OCTET_STRING
                    || digest.value != hash.digest(content).as_slice()
                {
                    return Err(Error::Refused {
                        reason: "the signed messageDigest does not match the content".into(),
                    });
                }
                // The signature covers the attributes as a SET (tag 0x31), not [0].
                let mut message = attrs.raw.to_vec();
                message[0] = tag::SET;
                cert.verify(signer.sig_alg, Some(hash), &message, signer.signature)?;
            }
            None => cert.verify(signer.sig_alg, Some(hash), content, signer.signature)?,
        }
        Ok(cert)
    }
}

/// The `SpcIndirectDataContent` of an Authenticode signature.
#[derive(Debug, Clone, Copy)]
pub struct IndirectData<'a> {
    /// The hash the image digest was computed with.
    pub hash: HashAlg,
    /// The signed image digest.
    pub digest: &'a [u8],
    /// The contents octets that the messageDigest attribute covers.
    pub signed_bytes: &'a [u8],
}

impl<'a> IndirectData<'a> {
    /// Reads the Authenticode content of `sd`.
    pub fn parse(sd: &SignedData<'a>) -> Result<Self, Error> {
        if sd.content_type != oid::SPC_INDIRECT_DATA {
            return Err(bad("content is not SpcIndirectDataContent"));
        }
        let content = sd.content.ok_or(bad("no SpcIndirectDataContent"))?;
        if content.tag != tag::SEQUENCE {
            return Err(bad("SpcIndirectDataContent is not a SEQUENCE"));
        }
        let mut r = Reader::new(content.value, "SpcIndirectDataContent");
        let mut data = r.nested(tag::SEQUENCE)?;
        if data.expect(tag::OID)?.value != oid::SPC_PE_IMAGE_DATA {
            return Err(bad("SpcIndirectDataContent does not describe a PE image"));
        }
        let mut digest_info = r.nested(tag::SEQUENCE)?;
        r.finish()?;
        let alg = digest_info.algorithm()?;
        let digest = digest_info.expect(tag::OCTET_STRING)?.value;
        digest_info.finish()?;
        let hash = hash_of(alg.oid).ok_or_else(|| Error::UnsupportedAlgorithm {
            what: format!("image digest {}", crate::der::oid_to_string(alg.oid)),
        })?;
        if digest.len() != hash.digest_len() {
            return Err(bad("image digest length differs from its algorithm's"));
        }
        Ok(Self {
            hash,
            digest,
            signed_bytes: content.value,
        })
    }
}
