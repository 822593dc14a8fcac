//! TPM 2.0 quotes: strict parsing of `TPMS_ATTEST` / `TPMT_SIGNATURE` and verification
//! with aws-lc-rs.
//!
//! - [`Quote`]: a `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE` (what `tpm2_quote -m`
//!   writes), with its raw bytes kept for signature checks.
//! - [`Signature`]: `TPMT_SIGNATURE` (`tpm2_quote -s`, TSS format) or a plain RSA /
//!   DER ECDSA signature (`tpm2_quote -f plain`).
//! - [`PublicKey`]: RSA (JWK `n`/`e`, PKCS#1, SPKI, PEM) or ECDSA P-256/P-384.
//! - [`PcrValues`]: PCR values from JSON or tpm2-tools files, and the PCR composite
//!   digest.
//! - [`verify_quote`]: signature, then nonce, then PCR digest → [`VerifiedQuote`].
//! - [`TpmPublic`]: `TPMT_PUBLIC` / `TPM2B_PUBLIC` of an RSA or ECC object
//!   (`tpm2_readpublic -o`), with its typed [`ObjectAttributes`], its Name and its
//!   [`PublicKey`].
//! - [`Certify`]: a `TPMS_ATTEST` of type `TPM_ST_ATTEST_CERTIFY` (`TPM2_Certify`).
//! - [`verify_certify`]: signature, then certified Name, then `extraData` →
//!   [`VerifiedCertify`]: a key (e.g. the vTPM attestation key) vouches that the TPM
//!   holds the object of a given public area.
//! - Encoders for tests and TPM emulators: [`Quote::encode`], [`Certify::encode`]
//!   (from an [`AttestHeader`]) and [`TpmPublic::encode_rsa`] (from an
//!   [`RsaTemplate`]).
//! - [`azure`]: the bincode quote blob of Microsoft's vTPM crates.
//!
//! All multi-byte TPM fields are big-endian. Parsers never panic on untrusted input;
//! they reject truncation, trailing bytes and out-of-spec sizes with a typed [`Error`].
//!
//! Quotes:
//!
//! ```no_run
//! # fn main() -> Result<(), tpm_quote::Error> {
//! use tpm_quote::{PcrValues, PublicKey, Signature, verify_quote};
//! # let (msg, sig, pem, pcr_json) = (vec![0u8], vec![0u8], String::new(), String::new());
//! let key = PublicKey::from_pem(&pem)?;
//! let signature = Signature::parse_auto(&sig)?;
//! let pcrs = PcrValues::from_json_str(&pcr_json)?;
//! let verified = verify_quote(&msg, &signature, &key, Some(b"challenge"), Some(&pcrs))?;
//! assert!(verified.nonce_checked());
//! # Ok(()) }
//! ```
//!
//! Certifications (e.g. the vTPM attestation key certifying a TPM-bound key):
//!
//! ```no_run
//! # fn main() -> Result<(), tpm_quote::Error> {
//! use tpm_quote::{Signature, TpmPublic, verify_certify};
//! # let (ak_pub, key_pub, attest, sig) = (vec![0u8], vec![0u8], vec![0u8], vec![0u8]);
//! let ak = TpmPublic::parse_auto(&ak_pub)?;
//! assert!(ak.is_restricted_signing_key());
//! let key = TpmPublic::parse_auto(&key_pub)?;
//! let signature = Signature::parse_auto(&sig)?;
//! let verified = verify_certify(&attest, &signature, &ak.public_key()?, &key, Some(b"nonce"))?;
//! assert!(verified.certified().is_decryption_key());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod alg;
mod attest;
pub mod azure;
mod der;
mod error;
mod key;
mod pcr;
mod public;
mod reader;
mod signature;
mod verify;
mod writer;

pub use alg::HashAlg;
pub use attest::{
    AttestHeader, Certify, ClockInfo, PcrSelection, Quote, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE,
};
pub use error::Error;
pub use key::{EcCurve, EcdsaPublicKey, PublicKey, RsaPublicKey};
pub use pcr::{MAX_PCR_INDEX, PcrValues};
pub use public::{
    EccDetails, KeyScheme, ObjectAttributes, ObjectType, PublicDetails, RSA_DEFAULT_EXPONENT,
    RsaDetails, RsaTemplate, SymDefObject, TPM_RH_ENDORSEMENT, TPM_RH_NULL, TPM_RH_OWNER,
    TPM_RH_PLATFORM, TpmPublic,
};
pub use signature::{RsaScheme, Signature};
pub use verify::{VerifiedCertify, VerifiedQuote, verify_certify, verify_quote, verify_signature};

/// Runs every parser of this crate on `data`, ignoring the results: the entry point
/// of a fuzz target. It must never panic.
pub fn fuzz_parse(data: &[u8]) {
    let _ = Quote::parse(data);
    let _ = Certify::parse(data);
    let _ = TpmPublic::parse(data);
    let _ = TpmPublic::parse_tpm2b(data);
    if let Ok(public) = TpmPublic::parse_auto(data) {
        let _ = public.name();
        let _ = public.public_key();
        let _ = TpmPublic::parse(public.raw());
        let _ = TpmPublic::parse_tpm2b(&public.to_tpm2b());
    }
    let _ = Signature::parse_tss(data);
    let _ = Signature::parse_auto(data);
    let _ = Signature::from_ecdsa_der(HashAlg::Sha256, data);
    let _ = PublicKey::from_der(data);
    let _ = PcrValues::from_tpm2_pcrread_marshaled(data);
    let _ = azure::AzureVtpmQuote::parse_bincode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PublicKey::from_pem(text);
        let _ = PcrValues::from_json_str(text);
    }
}
