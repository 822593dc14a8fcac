//! Signature, nonce and PCR checks producing a [`VerifiedQuote`]; signature, Name and
//! qualifying-data checks producing a [`VerifiedCertify`].

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::alg::HashAlg;
use crate::attest::{Certify, Quote};
use crate::der;
use crate::error::Error;
use crate::key::{EcCurve, EcdsaPublicKey, PublicKey, RsaPublicKey};
use crate::pcr::PcrValues;
use crate::public::TpmPublic;
use crate::signature::{RsaScheme, Signature};

/// Checks that `signature` is a valid signature over `message` (the raw bytes, exactly
/// as received) by `key`.
///
/// Only SHA-256 and SHA-384 schemes are accepted ([`Error::HashNotAccepted`]
/// otherwise). RSASSA-PKCS1-v1_5 and RSA-PSS need a 2048–8192-bit key; PSS uses a
/// salt as long as the digest, as the TPM reference implementation does. ECDSA takes
/// `r` and `s` as big-endian integers and left-pads them to the curve size.
pub fn verify_signature(
    message: &[u8],
    signature: &Signature,
    key: &PublicKey,
) -> Result<(), Error> {
    let hash = signature.hash();
    if !matches!(hash, HashAlg::Sha256 | HashAlg::Sha384) {
        return Err(Error::HashNotAccepted { alg: hash });
    }
    match (key, signature) {
        (PublicKey::Rsa(k), Signature::Rsa { scheme, sig, .. }) => {
            verify_rsa(k, *scheme, hash, message, sig)
        }
        (PublicKey::Ecdsa(k), Signature::Ecdsa { r, s, .. }) => {
            verify_ecdsa(k, hash, message, r, s)
        }
        _ => Err(Error::KeySignatureMismatch {
            key: key.kind(),
            signature: signature.kind(),
        }),
    }
}

fn verify_rsa(
    key: &RsaPublicKey,
    scheme: RsaScheme,
    hash: HashAlg,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    let params: &'static sig::RsaParameters = match (scheme, hash) {
        (RsaScheme::Pkcs1v15, HashAlg::Sha256) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (RsaScheme::Pkcs1v15, HashAlg::Sha384) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (RsaScheme::Pss, HashAlg::Sha256) => &sig::RSA_PSS_2048_8192_SHA256,
        (RsaScheme::Pss, HashAlg::Sha384) => &sig::RSA_PSS_2048_8192_SHA384,
        (_, other) => return Err(Error::HashNotAccepted { alg: other }),
    };
    if signature.len() != key.modulus_len() {
        return Err(Error::BadSignature);
    }
    RsaPublicKeyComponents {
        n: key.modulus(),
        e: key.exponent(),
    }
    .verify(params, message, signature)
    .map_err(|_| Error::BadSignature)
}

fn verify_ecdsa(
    key: &EcdsaPublicKey,
    hash: HashAlg,
    message: &[u8],
    r: &[u8],
    s: &[u8],
) -> Result<(), Error> {
    let strip = |v: &[u8]| -> Vec<u8> { v.iter().copied().skip_while(|&b| b == 0).collect() };
    let (r, s) = (strip(r), strip(s));
    let len = key.curve().field_len();
    if r.is_empty() || s.is_empty() || r.len() > len || s.len() > len {
        return Err(Error::BadSignature);
    }
    let result = match (key.curve(), hash) {
        (EcCurve::P256, HashAlg::Sha256) | (EcCurve::P384, HashAlg::Sha384) => {
            let mut fixed = vec![0u8; len - r.len()];
            fixed.extend_from_slice(&r);
            fixed.resize(2 * len - s.len(), 0);
            fixed.extend_from_slice(&s);
            UnparsedPublicKey::new(key.curve().fixed_alg(), key.point()).verify(message, &fixed)
        }
        (EcCurve::P256, HashAlg::Sha384) => {
            UnparsedPublicKey::new(&sig::ECDSA_P256_SHA384_ASN1, key.point())
                .verify(message, &der::encode_ecdsa_sig(&r, &s))
        }
        (EcCurve::P384, HashAlg::Sha256) => {
            UnparsedPublicKey::new(&sig::ECDSA_P384_SHA256_ASN1, key.point())
                .verify(message, &der::encode_ecdsa_sig(&r, &s))
        }
        (_, other) => return Err(Error::HashNotAccepted { alg: other }),
    };
    result.map_err(|_| Error::BadSignature)
}

/// A quote whose signature has been verified, and whose nonce and PCR digest were
/// checked if the caller supplied them. Only [`verify_quote`] constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    quote: Quote,
    hash: HashAlg,
    nonce_checked: bool,
    pcrs: Option<PcrValues>,
}

impl VerifiedQuote {
    /// The verified quote.
    pub fn quote(&self) -> &Quote {
        &self.quote
    }

    /// Consumes `self`, returning the quote.
    pub fn into_quote(self) -> Quote {
        self.quote
    }

    /// The nonce (`extraData`) — signed; equal to the expected nonce if
    /// [`VerifiedQuote::nonce_checked`].
    pub fn nonce(&self) -> &[u8] {
        self.quote.extra_data()
    }

    /// Whether an expected nonce was given and matched. If not, the caller must
    /// check [`VerifiedQuote::nonce`] for freshness itself.
    pub fn nonce_checked(&self) -> bool {
        self.nonce_checked
    }

    /// The hash of the signature scheme (also the hash of the PCR composite digest).
    pub fn hash_alg(&self) -> HashAlg {
        self.hash
    }

    /// The PCR values bound by the quote's `pcrDigest` (only the selected ones), if
    /// PCR values were supplied to [`verify_quote`].
    pub fn pcrs(&self) -> Option<&PcrValues> {
        self.pcrs.as_ref()
    }

    /// A verified PCR value: `Some` only if PCR values were checked and the quote
    /// selects this PCR.
    pub fn pcr(&self, alg: HashAlg, index: u32) -> Option<&[u8]> {
        self.pcrs.as_ref()?.get(alg, index)
    }
}

/// Verifies a TPM quote.
///
/// In order:
/// 1. `signature` over `message` (the raw `TPMS_ATTEST` bytes) with `key`
///    ([`verify_signature`]);
/// 2. `message` parses as a quote ([`Quote::parse`]);
/// 3. if `expected_nonce` is given, `extraData` equals it ([`Error::NonceMismatch`]);
/// 4. if `pcrs` is given, every value in it is selected by the quote in the same bank
///    ([`Error::PcrNotQuoted`]; at least one value, [`Error::NoPcrsAppraised`]), and
///    `pcrDigest` equals the hash of the selected PCR values concatenated — selection
///    entries in order, PCR indices ascending — where the hash is the **signature
///    scheme's** hash, as `TPM2_Quote` computes it ([`Error::PcrDigestMismatch`],
///    [`Error::MissingPcr`]). A value the quote does not cover is never reported as
///    checked.
///
/// Without `expected_nonce` / `pcrs` those checks are skipped, and
/// [`VerifiedQuote::nonce_checked`] / [`VerifiedQuote::pcrs`] say so.
pub fn verify_quote(
    message: &[u8],
    signature: &Signature,
    key: &PublicKey,
    expected_nonce: Option<&[u8]>,
    pcrs: Option<&PcrValues>,
) -> Result<VerifiedQuote, Error> {
    verify_signature(message, signature, key)?;
    let quote = Quote::parse(message)?;
    let hash = signature.hash();

    if let Some(expected) = expected_nonce.filter(|e| quote.extra_data() != *e) {
        return Err(Error::NonceMismatch {
            expected: expected.to_vec(),
            got: quote.extra_data().to_vec(),
        });
    }

    let bound = match pcrs {
        Some(values) => {
            if values.is_empty() {
                return Err(Error::NoPcrsAppraised);
            }
            let computed = values.composite_digest(quote.pcr_selections(), hash)?;
            for (alg, index, _) in values.iter() {
                let covered = quote
                    .pcr_selections()
                    .iter()
                    .any(|s| s.hash_alg() == Some(alg) && s.pcrs().contains(&index));
                if !covered {
                    return Err(Error::PcrNotQuoted { alg, index });
                }
            }
            if computed != quote.pcr_digest() {
                return Err(Error::PcrDigestMismatch {
                    quoted: quote.pcr_digest().to_vec(),
                    computed,
                });
            }
            Some(values.subset(quote.pcr_selections())?)
        }
        None => None,
    };

    Ok(VerifiedQuote {
        quote,
        hash,
        nonce_checked: expected_nonce.is_some(),
        pcrs: bound,
    })
}

/// A certify attestation whose signature has been verified and whose certified Name
/// equals the Name of the expected public area; its `extraData` was checked if the
/// caller supplied the expected value. Only [`verify_certify`] constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertify {
    certify: Certify,
    certified: TpmPublic,
    hash: HashAlg,
    extra_data_checked: bool,
}

impl VerifiedCertify {
    /// The verified attestation.
    pub fn certify(&self) -> &Certify {
        &self.certify
    }

    /// Consumes `self`, returning the attestation.
    pub fn into_certify(self) -> Certify {
        self.certify
    }

    /// The certified public area (its Name is the one the attestation names).
    pub fn certified(&self) -> &TpmPublic {
        &self.certified
    }

    /// `extraData` — signed; equal to the expected value if
    /// [`VerifiedCertify::extra_data_checked`].
    pub fn extra_data(&self) -> &[u8] {
        self.certify.extra_data()
    }

    /// Whether expected qualifying data was given and matched. If not, the caller
    /// must check [`VerifiedCertify::extra_data`] for freshness itself.
    pub fn extra_data_checked(&self) -> bool {
        self.extra_data_checked
    }

    /// The hash of the signature scheme.
    pub fn hash_alg(&self) -> HashAlg {
        self.hash
    }
}

/// Verifies a `TPM2_Certify` attestation: that the key `signer` (normally a
/// restricted signing key such as the vTPM attestation key) attests that the TPM holds
/// the object whose public area is `certified`.
///
/// In order:
/// 1. `signature` over `attest` (the raw `TPMS_ATTEST` bytes) with `signer`
///    ([`verify_signature`]);
/// 2. `attest` parses as a certification ([`Certify::parse`];
///    [`Error::WrongAttestType`] for another attestation type);
/// 3. its `TPMS_CERTIFY_INFO.name` equals [`TpmPublic::name`] of `certified`
///    ([`Error::CertifiedNameMismatch`]);
/// 4. if `expected_extra_data` is given, `extraData` equals it
///    ([`Error::ExtraDataMismatch`]).
///
/// Not checked here: that `signer` is a restricted signing key of a genuine TPM (the
/// caller establishes trust in it, e.g. from a quote-verified platform report or
/// [`TpmPublic::is_restricted_signing_key`] of its public area),
/// `qualifiedSigner`/`qualifiedName` (they depend on hierarchy data a verifier does
/// not have), and what the certified key's attributes allow — inspect
/// [`TpmPublic::attributes`] of [`VerifiedCertify::certified`] (e.g. `fixedTPM`,
/// `sensitiveDataOrigin`, `decrypt`) for the policy at hand.
pub fn verify_certify(
    attest: &[u8],
    signature: &Signature,
    signer: &PublicKey,
    certified: &TpmPublic,
    expected_extra_data: Option<&[u8]>,
) -> Result<VerifiedCertify, Error> {
    verify_signature(attest, signature, signer)?;
    let certify = Certify::parse(attest)?;
    let expected_name = certified.name();
    if certify.name() != expected_name.as_slice() {
        return Err(Error::CertifiedNameMismatch {
            expected: expected_name,
            got: certify.name().to_vec(),
        });
    }
    if let Some(expected) = expected_extra_data.filter(|e| certify.extra_data() != *e) {
        return Err(Error::ExtraDataMismatch {
            expected: expected.to_vec(),
            got: certify.extra_data().to_vec(),
        });
    }
    Ok(VerifiedCertify {
        certify,
        certified: certified.clone(),
        hash: signature.hash(),
        extra_data_checked: expected_extra_data.is_some(),
    })
}
