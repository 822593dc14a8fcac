//! The one error type of this crate.

use crate::alg::HashAlg;

/// Everything that can go wrong while parsing or verifying a TPM quote, a certify
/// attestation or a public area.
///
/// Parsing errors name the structure or field (`what`) that was being read, so a
/// caller can report exactly where untrusted input was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before a field could be read completely.
    #[error("truncated input reading {what}: need {need} bytes, got {got}")]
    Truncated {
        /// Field or structure being read.
        what: &'static str,
        /// Bytes the field needs from the current position.
        need: usize,
        /// Bytes that were left.
        got: usize,
    },

    /// `TPMS_ATTEST.magic` is not `TPM_GENERATED_VALUE` (0xff544347).
    #[error("bad magic 0x{got:08x}, expected TPM_GENERATED_VALUE 0xff544347")]
    BadMagic {
        /// The magic value found.
        got: u32,
    },

    /// `TPMS_ATTEST.type` is not `TPM_ST_ATTEST_QUOTE` (0x8018).
    #[error("attestation type 0x{got:04x} is not TPM_ST_ATTEST_QUOTE (0x8018)")]
    NotAQuote {
        /// The `TPMI_ST_ATTEST` value found.
        got: u16,
    },

    /// `TPMS_ATTEST.type` is not the attestation type that was asked for (used by
    /// every parser except [`crate::Quote::parse`], which keeps [`Error::NotAQuote`]).
    #[error("attestation type 0x{got:04x} is not the expected 0x{expected:04x}")]
    WrongAttestType {
        /// The `TPMI_ST_ATTEST` value that was asked for.
        expected: u16,
        /// The `TPMI_ST_ATTEST` value found.
        got: u16,
    },

    /// Bits the specification reserves (they shall be zero) are set.
    #[error("reserved bits 0x{bits:08x} set in {what}")]
    ReservedBits {
        /// Field being read.
        what: &'static str,
        /// The reserved bits that were set.
        bits: u32,
    },

    /// Bytes were left over after a complete structure.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes {
        /// Structure that was complete.
        what: &'static str,
        /// Number of bytes that followed it.
        count: usize,
    },

    /// A sized field declares more bytes than the TPM specification allows.
    #[error("{what} is {got} bytes, at most {max} allowed")]
    TooLarge {
        /// Field being read.
        what: &'static str,
        /// Largest allowed size or count.
        max: usize,
        /// Declared size or count.
        got: usize,
    },

    /// A field holds a value the specification does not allow.
    #[error("invalid value {got} for {what}")]
    InvalidValue {
        /// Field being read.
        what: &'static str,
        /// Value found.
        got: u64,
    },

    /// A `TPM_ALG_ID` (hash, signature scheme, PCR bank) this crate does not support.
    #[error("unsupported {what} algorithm 0x{id:04x}")]
    UnsupportedAlgorithm {
        /// Role of the algorithm (e.g. "signature scheme", "hash").
        what: &'static str,
        /// The `TPM_ALG_ID` value.
        id: u16,
    },

    /// The signature uses a hash that is refused for verification (SHA-1, SHA-512).
    #[error("signature hash {alg} is not accepted for verification (only SHA-256 and SHA-384 are)")]
    HashNotAccepted {
        /// The refused hash.
        alg: HashAlg,
    },

    /// The key and the signature are of different kinds (RSA vs ECDSA) or curves.
    #[error("a {key} key cannot verify a {signature} signature")]
    KeySignatureMismatch {
        /// Kind of key given.
        key: &'static str,
        /// Kind of signature given.
        signature: &'static str,
    },

    /// A public key could not be decoded or is not acceptable.
    #[error("invalid public key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },

    /// Malformed DER (SubjectPublicKeyInfo, PKCS#1 or ECDSA-Sig-Value).
    #[error("malformed DER in {what}")]
    Der {
        /// Structure being decoded.
        what: &'static str,
    },

    /// Malformed PEM armour.
    #[error("malformed PEM: {reason}")]
    Pem {
        /// What was wrong.
        reason: &'static str,
    },

    /// Invalid base64 / base64url.
    #[error("invalid base64 in {what}: {source}")]
    Base64 {
        /// Field being decoded.
        what: &'static str,
        /// Decoder error.
        #[source]
        source: base64::DecodeError,
    },

    /// Invalid hex text.
    #[error("invalid hex in {what}")]
    Hex {
        /// Field being decoded.
        what: String,
    },

    /// Invalid or unexpected JSON.
    #[error("invalid PCR JSON: {reason}")]
    Json {
        /// What was wrong.
        reason: String,
    },

    /// A PCR digest has the wrong length for its bank.
    #[error("PCR {index} in bank {alg} is {got} bytes, expected {expected}")]
    PcrValueSize {
        /// Bank.
        alg: HashAlg,
        /// PCR index.
        index: u32,
        /// Digest size of the bank.
        expected: usize,
        /// Size given.
        got: usize,
    },

    /// The quote selects a PCR for which no value was supplied.
    #[error("no value supplied for PCR {index} of bank {alg}")]
    MissingPcr {
        /// Bank.
        alg: HashAlg,
        /// PCR index.
        index: u32,
    },

    /// A PCR value to appraise is not covered by the quote's selection (in its bank).
    #[error("PCR {index} of bank {alg} is to be checked but the quote does not select it")]
    PcrNotQuoted {
        /// Bank.
        alg: HashAlg,
        /// PCR index.
        index: u32,
    },

    /// PCR values were to be checked, but none were given (or the quote selects none).
    #[error(
        "no PCR values to check: the quote's selection and the values given must name at least one PCR"
    )]
    NoPcrsAppraised,

    /// The signature does not verify over the message with the given key.
    #[error("signature verification failed")]
    BadSignature,

    /// `extraData` of the quote is not the expected nonce.
    #[error("quote nonce (extraData) does not match the expected nonce")]
    NonceMismatch {
        /// The nonce the caller expected.
        expected: Vec<u8>,
        /// The `extraData` found in the quote.
        got: Vec<u8>,
    },

    /// The Name in a certify attestation (`TPMS_CERTIFY_INFO.name`) is not the Name of
    /// the public area the caller expects to be certified.
    #[error("certified Name does not match the Name of the given public area")]
    CertifiedNameMismatch {
        /// Name of the given public area (`nameAlg || H(TPMT_PUBLIC)`).
        expected: Vec<u8>,
        /// Name found in the attestation.
        got: Vec<u8>,
    },

    /// `extraData` of a certify attestation is not the expected qualifying data.
    #[error("attestation extraData does not match the expected value")]
    ExtraDataMismatch {
        /// The qualifying data the caller expected.
        expected: Vec<u8>,
        /// The `extraData` found in the attestation.
        got: Vec<u8>,
    },

    /// `pcrDigest` of the quote is not the digest of the supplied PCR values.
    #[error("quote pcrDigest does not match the supplied PCR values")]
    PcrDigestMismatch {
        /// `pcrDigest` found in the quote.
        quoted: Vec<u8>,
        /// Digest computed from the supplied PCR values.
        computed: Vec<u8>,
    },
}

impl Error {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadSignature => "bad_signature",
            Error::NonceMismatch { .. } => "nonce_mismatch",
            Error::PcrDigestMismatch { .. } => "pcr_digest_mismatch",
            Error::MissingPcr { .. } => "missing_pcr",
            Error::PcrNotQuoted { .. } => "pcr_not_quoted",
            Error::NoPcrsAppraised => "no_pcrs_appraised",
            Error::CertifiedNameMismatch { .. } => "certified_name_mismatch",
            Error::ExtraDataMismatch { .. } => "extra_data_mismatch",
            Error::WrongAttestType { .. } => "wrong_attest_type",
            Error::ReservedBits { .. } => "malformed",
            Error::HashNotAccepted { .. }
            | Error::UnsupportedAlgorithm { .. }
            | Error::KeySignatureMismatch { .. } => "unsupported_algorithm",
            Error::InvalidKey { .. } => "invalid_key",
            _ => "malformed",
        }
    }

    /// Whether the error says the quote or certification is bad (rather than an input
    /// being unreadable).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Error::BadSignature
                | Error::NonceMismatch { .. }
                | Error::PcrDigestMismatch { .. }
                | Error::MissingPcr { .. }
                | Error::PcrNotQuoted { .. }
                | Error::NoPcrsAppraised
                | Error::CertifiedNameMismatch { .. }
                | Error::ExtraDataMismatch { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_certify_and_public_area_errors() {
        let cases = [
            (
                Error::WrongAttestType {
                    expected: 0x8017,
                    got: 0x8018,
                },
                "wrong_attest_type",
                false,
            ),
            (
                Error::ReservedBits {
                    what: "TPMA_OBJECT",
                    bits: 1,
                },
                "malformed",
                false,
            ),
            (
                Error::CertifiedNameMismatch {
                    expected: vec![1],
                    got: vec![2],
                },
                "certified_name_mismatch",
                true,
            ),
            (
                Error::ExtraDataMismatch {
                    expected: vec![1],
                    got: vec![2],
                },
                "extra_data_mismatch",
                true,
            ),
            // Unchanged.
            (Error::NotAQuote { got: 0x8017 }, "malformed", false),
            (
                Error::NonceMismatch {
                    expected: vec![],
                    got: vec![],
                },
                "nonce_mismatch",
                true,
            ),
        ];
        for (err, code, rejection) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(err.is_rejection(), rejection, "{err}");
        }
        assert_eq!(
            Error::WrongAttestType {
                expected: 0x8017,
                got: 0x8018
            }
            .to_string(),
            "attestation type 0x8018 is not the expected 0x8017"
        );
        assert_eq!(
            Error::ReservedBits {
                what: "TPMA_OBJECT",
                bits: 0x8000_0000
            }
            .to_string(),
            "reserved bits 0x80000000 set in TPMA_OBJECT"
        );
    }
}
