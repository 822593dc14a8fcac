//! X.509 certificates, read as far as a firmware verifier needs: names, the public
//! key, the signed part, and signature checks with aws-lc.
//!
//! Like edk2 (which sets `X509_V_FLAG_NO_CHECK_TIME` and `X509_PURPOSE_ANY`), validity
//! dates, key usages and extended key usages are not checked: firmware has no trusted
//! time, and the trust store (db) alone says what may sign boot code.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use crate::Error;
use crate::der::{Algorithm, Reader, oid, oid_to_string, tag};
use crate::pe::HashAlg;

/// A DER certificate, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cert<'a> {
    /// The whole certificate.
    pub der: &'a [u8],
    /// The TBSCertificate element (what the issuer signed).
    pub tbs: &'a [u8],
    /// The serial number's contents octets.
    pub serial: &'a [u8],
    /// The issuer Name element.
    pub issuer: &'a [u8],
    /// The subject Name element.
    pub subject: &'a [u8],
    key_alg: Algorithm<'a>,
    key: &'a [u8],
    sig_alg: Algorithm<'a>,
    signature: &'a [u8],
}

fn bit_string(bits: &[u8]) -> Result<&[u8], Error> {
    match bits.split_first() {
        Some((0, rest)) => Ok(rest),
        _ => Err(Error::Der {
            what: "certificate",
            why: "BIT STRING with unused bits",
        }),
    }
}

impl<'a> Cert<'a> {
    /// Parses one DER certificate; trailing bytes are refused.
    pub fn parse(der: &'a [u8]) -> Result<Self, Error> {
        let mut outer = Reader::new(der, "certificate");
        let cert = outer.expect(tag::SEQUENCE)?;
        outer.finish()?;
        let mut c = Reader::new(cert.value, "certificate");
        let tbs_tlv = c.expect(tag::SEQUENCE)?;
        let sig_alg = c.algorithm()?;
        let signature = bit_string(c.expect(tag::BIT_STRING)?.value)?;
        c.finish()?;
        let mut t = Reader::new(tbs_tlv.value, "TBSCertificate");
        t.optional(tag::CONTEXT_0)?;
        let serial = t.expect(tag::INTEGER)?.value;
        t.algorithm()?;
        let issuer = t.expect(tag::SEQUENCE)?.raw;
        t.expect(tag::SEQUENCE)?; // validity: not enforced (see the module docs)
        let subject = t.expect(tag::SEQUENCE)?.raw;
        let mut spki = t.nested(tag::SEQUENCE)?;
        let key_alg = spki.algorithm()?;
        let key = bit_string(spki.expect(tag::BIT_STRING)?.value)?;
        spki.finish()?;
        Ok(Self {
            der: cert.raw,
            tbs: tbs_tlv.raw,
            serial,
            issuer,
            subject,
            key_alg,
            key,
            sig_alg,
            signature,
        })
    }

    /// The subjectPublicKey bits (for RSA, the RSAPublicKey DER).
    pub fn public_key(&self) -> &'a [u8] {
        self.key
    }

    /// The subject's common name, or the whole subject in hex when it has none.
    pub fn subject_name(&self) -> String {
        common_name(self.subject).unwrap_or_else(|| hex::encode(self.subject))
    }

    /// The issuer's common name, or the whole issuer in hex when it has none.
    pub fn issuer_name(&self) -> String {
        common_name(self.issuer).unwrap_or_else(|| hex::encode(self.issuer))
    }

    /// Whether `self` names `issuer` as its issuer and `issuer`'s key verifies its
    /// signature.
    pub fn is_signed_by(&self, issuer: &Cert<'_>) -> bool {
        self.issuer == issuer.subject
            && issuer
                .verify(self.sig_alg, None, self.tbs, self.signature)
                .is_ok()
    }

    /// Verifies `signature` over `message` with this certificate's key. `sig_alg` is
    /// the signature AlgorithmIdentifier; when it is plain `rsaEncryption` (as in
    /// PKCS#7 SignerInfos) `digest` names the hash.
    pub fn verify(
        &self,
        sig_alg: Algorithm<'_>,
        digest: Option<HashAlg>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Error> {
        let alg = self.verification_algorithm(sig_alg.oid, digest)?;
        UnparsedPublicKey::new(alg, self.key)
            .verify(message, signature)
            .map_err(|_| Error::BadSignature {
                signer: self.subject_name(),
            })
    }

    fn verification_algorithm(
        &self,
        sig_oid: &[u8],
        digest: Option<HashAlg>,
    ) -> Result<&'static dyn VerificationAlgorithm, Error> {
        let unsupported = || Error::UnsupportedAlgorithm {
            what: format!(
                "signature {} with a {} key",
                oid_to_string(sig_oid),
                oid_to_string(self.key_alg.oid)
            ),
        };
        if self.key_alg.oid == oid::RSA_ENCRYPTION {
            let hash = match sig_oid {
                o if o == oid::SHA256_WITH_RSA => HashAlg::Sha256,
                o if o == oid::SHA384_WITH_RSA => HashAlg::Sha384,
                o if o == oid::SHA512_WITH_RSA => HashAlg::Sha512,
                o if o == oid::RSA_ENCRYPTION => digest.ok_or_else(unsupported)?,
                _ => return Err(unsupported()),
            };
            return Ok(match hash {
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                HashAlg::Sha1 => return Err(unsupported()),
            });
        }
        if self.key_alg.oid == oid::EC_PUBLIC_KEY {
            let curve = self.key_alg.params.map(|p| p.value);
            let hash = match sig_oid {
                o if o == oid::ECDSA_SHA256 => HashAlg::Sha256,
                o if o == oid::ECDSA_SHA384 => HashAlg::Sha384,
                _ => return Err(unsupported()),
            };
            return Ok(match (curve, hash) {
                (Some(c), HashAlg::Sha256) if c == oid::P256 => &signature::ECDSA_P256_SHA256_ASN1,
                (Some(c), HashAlg::Sha384) if c == oid::P256 => &signature::ECDSA_P256_SHA384_ASN1,
                (Some(c), HashAlg::Sha256) if c == oid::P384 => &signature::ECDSA_P384_SHA256_ASN1,
                (Some(c), HashAlg::Sha384) if c == oid::P384 => &signature::ECDSA_P384_SHA384_ASN1,
                _ => return Err(unsupported()),
            });
        }
        Err(unsupported())
    }

    /// The SHA-1 thumbprint of the whole certificate, hex (for output only).
    pub fn thumbprint_sha1(&self) -> String {
        hex::encode(HashAlg::Sha1.digest(self.der))
    }

    /// The hash of the TBSCertificate, as `EFI_CERT_X509_SHA*` dbx entries hold it.
    pub fn tbs_hash(&self, alg: HashAlg) -> Vec<u8> {
        alg.digest(self.tbs)
    }
}

/// The first commonName in a Name element.
fn common_name(name: &[u8]) -> Option<String> {
    let mut outer = Reader::new(name, "Name");
    let mut rdns = outer.nested(tag::SEQUENCE).ok()?;
    while !rdns.is_empty() {
        let mut set = rdns.nested(tag::SET).ok()?;
        while !set.is_empty() {
            let mut atv = set.nested(tag::SEQUENCE).ok()?;
            let oid = atv.expect(tag::OID).ok()?.value;
            let value = atv.any().ok()?;
            if oid == oid::COMMON_NAME {
                return Some(String::from_utf8_lossy(value.value).into_owned());
            }
        }
    }
    None
}

/// Reads certificates from PEM text (every `CERTIFICATE` block) or one DER certificate.
pub fn read_certificates(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    use base64::Engine as _;
    let Ok(text) = std::str::from_utf8(bytes) else {
        Cert::parse(bytes)?;
        return Ok(vec![bytes.to_vec()]);
    };
    if !text.contains("-----BEGIN") {
        Cert::parse(bytes)?;
        return Ok(vec![bytes.to_vec()]);
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body_start = start + "-----BEGIN CERTIFICATE-----".len();
        let end = rest[body_start..]
            .find("-----END CERTIFICATE-----")
            .ok_or(Error::Der {
                what: "PEM",
                why: "BEGIN CERTIFICATE without END",
            })?;
        let body: String = rest[body_start..body_start + end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| Error::Der {
                what: "PEM",
                why: "invalid base64",
            })?;
        Cert::parse(&der)?;
        out.push(der);
        rest = &rest[body_start + end..];
    }
    if out.is_empty() {
        return Err(Error::Der {
            what: "PEM",
            why: "no CERTIFICATE block",
        });
    }
    Ok(out)
}
