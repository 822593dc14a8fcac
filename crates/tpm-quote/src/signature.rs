//! `TPMT_SIGNATURE` (TPM 2.0 Part 2 §11.3.4) and the "plain" signature files of tpm2-tools.

use crate::alg::{HashAlg, TPM_ALG_ECDSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA};
use crate::der;
use crate::error::Error;
use crate::reader::Reader;
use crate::writer::Writer;

/// Largest `TPM2B_PUBLIC_KEY_RSA` (`TPM2_MAX_RSA_KEY_BYTES`).
pub(crate) const MAX_RSA_SIG: usize = 512;
/// Largest `TPM2B_ECC_PARAMETER` (`TPM2_MAX_ECC_KEY_BYTES`).
pub(crate) const MAX_ECC_PARAM: usize = 128;

/// RSA signature padding scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RsaScheme {
    /// RSASSA-PKCS1-v1_5 (`TPM_ALG_RSASSA`).
    Pkcs1v15,
    /// RSASSA-PSS (`TPM_ALG_RSAPSS`); the TPM uses a salt as long as the digest.
    Pss,
}

/// A quote signature: scheme, hash and signature value.
///
/// A signature is untrusted input like the message; nothing here is verified until
/// [`crate::verify_quote`] or [`crate::verify_signature`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// An RSA signature.
    Rsa {
        /// Padding scheme.
        scheme: RsaScheme,
        /// Hash the scheme signs with.
        hash: HashAlg,
        /// The signature value, big-endian, as long as the modulus.
        sig: Vec<u8>,
    },
    /// An ECDSA signature.
    Ecdsa {
        /// Hash the scheme signs with.
        hash: HashAlg,
        /// `r` as a big-endian unsigned integer (possibly shorter than the field size).
        r: Vec<u8>,
        /// `s` as a big-endian unsigned integer (possibly shorter than the field size).
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses a marshalled `TPMT_SIGNATURE` as `tpm2_quote -s` writes it by default
    /// (`-f tss`): `sigAlg` u16, `hash` u16, then one `TPM2B` (RSASSA, RSAPSS) or two
    /// (ECDSA `r`, `s`). All of `bytes` must be consumed.
    ///
    /// SHA-1 and SHA-512 are parsed (so callers can report them) but refused by
    /// verification; other schemes and hashes are [`Error::UnsupportedAlgorithm`].
    pub fn parse_tss(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let sig_alg = r.u16("TPMT_SIGNATURE.sigAlg")?;
        let hash_id = r.u16("TPMS_SIGNATURE.hash")?;
        let rsa_scheme = match sig_alg {
            TPM_ALG_RSASSA => Some(RsaScheme::Pkcs1v15),
            TPM_ALG_RSAPSS => Some(RsaScheme::Pss),
            TPM_ALG_ECDSA => None,
            other => {
                return Err(Error::UnsupportedAlgorithm {
                    what: "signature scheme",
                    id: other,
                });
            }
        };
        let hash = HashAlg::from_tpm(hash_id).ok_or(Error::UnsupportedAlgorithm {
            what: "signature hash",
            id: hash_id,
        })?;
        let sig = match rsa_scheme {
            Some(scheme) => Self::Rsa {
                scheme,
                hash,
                sig: r.tpm2b("TPMS_SIGNATURE_RSA.sig", MAX_RSA_SIG)?.to_vec(),
            },
            None => Self::Ecdsa {
                hash,
                r: r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureR", MAX_ECC_PARAM)?
                    .to_vec(),
                s: r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureS", MAX_ECC_PARAM)?
                    .to_vec(),
            },
        };
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    /// A "plain" RSA signature (`tpm2_quote -f plain`, or Azure's vTPM quote blob):
    /// the raw signature value, taken to be RSASSA-PKCS1-v1_5 with SHA-256 — the
    /// scheme of the Azure attestation key and of `tpm2_quote`'s RSA default.
    pub fn from_plain_rsa(sig: &[u8]) -> Self {
        Self::from_plain_rsa_with(RsaScheme::Pkcs1v15, HashAlg::Sha256, sig)
    }

    /// A "plain" RSA signature whose scheme and hash the caller states.
    pub fn from_plain_rsa_with(scheme: RsaScheme, hash: HashAlg, sig: &[u8]) -> Self {
        Self::Rsa {
            scheme,
            hash,
            sig: sig.to_vec(),
        }
    }

    /// A "plain" ECDSA signature (`tpm2_quote -f plain` on an ECC key): a DER
    /// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`, with the hash the
    /// caller states.
    pub fn from_ecdsa_der(hash: HashAlg, der_sig: &[u8]) -> Result<Self, Error> {
        let (r, s) = der::parse_ecdsa_sig(der_sig)?;
        Ok(Self::Ecdsa { hash, r, s })
    }

    /// Guesses the format of a signature file.
    ///
    /// The bytes are taken as a TSS `TPMT_SIGNATURE` when they start with a supported
    /// `sigAlg` (RSASSA, RSAPSS, ECDSA) and a known `hash`, and the sizes that follow
    /// fill the buffer exactly ([`Signature::parse_tss`] succeeds). Anything else is
    /// taken as a plain RSASSA-PKCS1-v1_5/SHA-256 signature
    /// ([`Signature::from_plain_rsa`]). A random RSA signature value passes the TSS
    /// test with probability below 2^-48. Prefer the explicit constructors when the
    /// format is known. Fails only on empty input.
    pub fn parse_auto(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::Truncated {
                what: "signature",
                need: 1,
                got: 0,
            });
        }
        match Self::parse_tss(bytes) {
            Ok(sig) => Ok(sig),
            Err(_) => Ok(Self::from_plain_rsa(bytes)),
        }
    }

    /// Marshals this signature as a TSS `TPMT_SIGNATURE` (the inverse of
    /// [`Signature::parse_tss`]). Fails if a component exceeds the TPM maxima.
    pub fn to_tss(&self) -> Result<Vec<u8>, Error> {
        let mut w = Writer::new();
        w.u16(self.scheme_id());
        w.u16(self.hash().tpm_id());
        match self {
            Self::Rsa { sig, .. } => w.tpm2b("TPMS_SIGNATURE_RSA.sig", MAX_RSA_SIG, sig)?,
            Self::Ecdsa { r, s, .. } => {
                w.tpm2b("TPMS_SIGNATURE_ECDSA.signatureR", MAX_ECC_PARAM, r)?;
                w.tpm2b("TPMS_SIGNATURE_ECDSA.signatureS", MAX_ECC_PARAM, s)?;
            }
        }
        Ok(w.finish())
    }

    /// The hash algorithm of the signature scheme.
    pub fn hash(&self) -> HashAlg {
        match self {
            Self::Rsa { hash, .. } | Self::Ecdsa { hash, .. } => *hash,
        }
    }

    /// The `TPM_ALG_ID` of the signature scheme.
    pub fn scheme_id(&self) -> u16 {
        match self {
            Self::Rsa {
                scheme: RsaScheme::Pkcs1v15,
                ..
            } => TPM_ALG_RSASSA,
            Self::Rsa {
                scheme: RsaScheme::Pss,
                ..
            } => TPM_ALG_RSAPSS,
            Self::Ecdsa { .. } => TPM_ALG_ECDSA,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RSA",
            Self::Ecdsa { .. } => "ECDSA",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_rsa_roundtrip_and_auto() {
        let mut raw = vec![0x00, 0x14, 0x00, 0x0b, 0x01, 0x00];
        raw.extend(std::iter::repeat_n(0x5a, 256));
        let sig = Signature::parse_tss(&raw).unwrap();
        assert_eq!(sig.hash(), HashAlg::Sha256);
        assert_eq!(sig.to_tss().unwrap(), raw);
        assert_eq!(Signature::parse_auto(&raw).unwrap(), sig);
        // One byte short of what the size says: plain.
        let short = &raw[..raw.len() - 1];
        assert!(matches!(
            Signature::parse_tss(short),
            Err(Error::Truncated { .. })
        ));
        assert_eq!(
            Signature::parse_auto(short).unwrap(),
            Signature::from_plain_rsa(short)
        );
        assert!(Signature::parse_auto(&[]).is_err());
    }

    #[test]
    fn tss_ecdsa_and_errors() {
        let raw = [
            0x00, 0x18, 0x00, 0x0c, 0x00, 0x01, 0x07, 0x00, 0x02, 0x01, 0x02,
        ];
        assert_eq!(
            Signature::parse_tss(&raw).unwrap(),
            Signature::Ecdsa {
                hash: HashAlg::Sha384,
                r: vec![7],
                s: vec![1, 2]
            }
        );
        let mut trailing = raw.to_vec();
        trailing.push(0);
        assert!(matches!(
            Signature::parse_tss(&trailing),
            Err(Error::TrailingBytes { count: 1, .. })
        ));
        assert_eq!(
            Signature::parse_tss(&[0x00, 0x10, 0x00, 0x0b]),
            Err(Error::UnsupportedAlgorithm {
                what: "signature scheme",
                id: 0x0010
            })
        );
        assert_eq!(
            Signature::parse_tss(&[0x00, 0x14, 0x00, 0x12, 0x00, 0x00]),
            Err(Error::UnsupportedAlgorithm {
                what: "signature hash",
                id: 0x0012
            })
        );
        assert!(matches!(
            Signature::parse_tss(&[0x00, 0x18, 0x00, 0x0b, 0x00, 0x81]),
            Err(Error::TooLarge { max: 128, .. })
        ));
        // SHA-1 parses (and is refused later, at verification).
        let sha1 = Signature::parse_tss(&[0x00, 0x14, 0x00, 0x04, 0x00, 0x01, 0x00]).unwrap();
        assert_eq!(sha1.hash(), HashAlg::Sha1);
    }
}
