//! Certificate revocation lists published by AMD's KDS (`/vcek/v1/{product}/crl`).
//!
//! AMD's CRLs are issued and signed by the ARK (RSASSA-PSS/SHA-384/salt 48) and list
//! revoked ASKs and ASVKs. A CRL is only used after its signature and validity window
//! are checked against the issuing certificate at the verification time.

use std::fmt;

use der::{Decode, Encode};
use x509_cert::crl::CertificateList;

use crate::cert::{AmdCert, is_amd_pss, signed_part_range, unix_seconds};

/// Why a CRL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// Not a DER or PEM X.509 CRL.
    #[error("malformed CRL: {0}")]
    Malformed(String),
    /// The CRL's issuer is not the certificate it was checked against.
    #[error(
        "CRL issued by {crl_issuer:?} does not belong to {expected} (a CRL given or cached for a product must be its ARK's)"
    )]
    Issuer {
        /// The CRL's issuer common name.
        crl_issuer: String,
        /// The certificate it was checked against.
        expected: String,
    },
    /// The signature does not verify under the issuer's key.
    #[error("CRL signature does not verify under {0}")]
    BadSignature(String),
    /// The verification time is outside `thisUpdate..nextUpdate`.
    #[error(
        "CRL is not current at {} (thisUpdate {}, nextUpdate {})",
        crate::chain::rfc3339(.at),
        crate::chain::rfc3339(.this_update),
        .next_update.as_ref().map_or_else(|| "none".to_owned(), crate::chain::rfc3339)
    )]
    NotCurrent {
        /// The verification time, Unix seconds.
        at: i64,
        /// thisUpdate, Unix seconds.
        this_update: i64,
        /// nextUpdate, Unix seconds.
        next_update: Option<i64>,
    },
}

/// A parsed CRL that keeps its received bytes. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Crl(std::sync::Arc<CrlInner>);

struct CrlInner {
    der: Vec<u8>,
    sha256: [u8; 32],
    tbs_range: (usize, usize),
    list: CertificateList,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("number", &self.number_hex())
            .field("revoked", &self.revoked_serials().len())
            .finish_non_exhaustive()
    }
}

const CRL_NUMBER: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.20");

impl Crl {
    /// Parses a DER CRL or a PEM `X509 CRL` block.
    pub fn parse(data: &[u8]) -> Result<Self, CrlError> {
        let der_bytes = match std::str::from_utf8(data) {
            Ok(t) if t.contains("-----BEGIN X509 CRL-----") => pem_body(t)?,
            _ => data.to_vec(),
        };
        let list = CertificateList::from_der(&der_bytes)
            .map_err(|e| CrlError::Malformed(e.to_string()))?;
        let tbs_range =
            signed_part_range(&der_bytes).map_err(|e| CrlError::Malformed(e.to_string()))?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der_bytes).as_ref(),
        );
        Ok(Crl(std::sync::Arc::new(CrlInner {
            sha256,
            der: der_bytes,
            tbs_range,
            list,
        })))
    }

    /// Every CRL in `data`: the `X509 CRL` blocks of a PEM text (other blocks, such as
    /// certificates, are skipped), or one DER CRL.
    pub fn parse_all(data: &[u8]) -> Result<Vec<Self>, CrlError> {
        match std::str::from_utf8(data) {
            Ok(t) if t.contains("-----BEGIN") => {
                crate::pem::decode_blocks(t, "X509 CRL", crate::pem::Outside::Ignore)
                    .map_err(CrlError::Malformed)?
                    .iter()
                    .map(|der| Self::parse(der))
                    .collect()
            }
            _ => Self::parse(data).map(|c| vec![c]),
        }
    }

    /// The CRL as received (DER).
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
    /// SHA-256 of the DER encoding.
    pub fn sha256(&self) -> [u8; 32] {
        self.0.sha256
    }
    /// The issuer's common name (empty if it has none).
    pub fn issuer_cn(&self) -> String {
        crate::cert::common_name(self.issuer())
    }
    /// The issuer's name.
    pub fn issuer(&self) -> &x509_cert::name::Name {
        &self.0.list.tbs_cert_list.issuer
    }
    /// thisUpdate, Unix seconds.
    pub fn this_update(&self) -> i64 {
        unix_seconds(self.0.list.tbs_cert_list.this_update)
    }
    /// nextUpdate, Unix seconds.
    pub fn next_update(&self) -> Option<i64> {
        self.0.list.tbs_cert_list.next_update.map(unix_seconds)
    }
    /// The cRLNumber extension as hex, or `unknown`.
    pub fn number_hex(&self) -> String {
        self.0
            .list
            .tbs_cert_list
            .crl_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == CRL_NUMBER)
            .and_then(|e| der::asn1::UintRef::from_der(e.extn_value.as_bytes()).ok())
            .map_or_else(|| "unknown".to_owned(), |n| hex::encode(n.as_bytes()))
    }
    /// Serial numbers of revoked certificates.
    pub fn revoked_serials(&self) -> Vec<&[u8]> {
        self.0
            .list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|r| r.serial_number.as_bytes())
            .collect()
    }
    /// Whether a certificate with this serial is listed.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked_serials().contains(&serial)
    }

    /// Checks that `issuer` issued and signed this CRL and that `at` (Unix seconds)
    /// is inside its validity window.
    pub fn verify(&self, issuer: &AmdCert, at: i64) -> Result<(), CrlError> {
        let name = issuer.subject_cn().to_owned();
        if self.issuer() != &issuer.x509().tbs_certificate.subject {
            return Err(CrlError::Issuer {
                crl_issuer: self.issuer_cn(),
                expected: name,
            });
        }
        let alg_ok = is_amd_pss(&self.0.list.signature_algorithm)
            && is_amd_pss(&self.0.list.tbs_cert_list.signature);
        let key = issuer
            .rsa_pss_key()
            .map_err(|_| CrlError::BadSignature(name.clone()))?;
        let tbs = &self.0.der[self.0.tbs_range.0..self.0.tbs_range.1];
        if !alg_ok
            || key
                .verify_sig(tbs, self.0.list.signature.raw_bytes())
                .is_err()
        {
            return Err(CrlError::BadSignature(name));
        }
        let (this_update, next_update) = (self.this_update(), self.next_update());
        if at < this_update || next_update.is_none_or(|n| at > n) {
            return Err(CrlError::NotCurrent {
                at,
                this_update,
                next_update,
            });
        }
        Ok(())
    }

    /// Re-encodes the parsed CRL (used by tests to check the parser is lossless).
    pub fn reencode(&self) -> Result<Vec<u8>, CrlError> {
        self.0
            .list
            .to_der()
            .map_err(|e| CrlError::Malformed(e.to_string()))
    }
}

fn pem_body(text: &str) -> Result<Vec<u8>, CrlError> {
    crate::pem::decode_blocks(text, "X509 CRL", crate::pem::Outside::Ignore)
        .map_err(CrlError::Malformed)?
        .into_iter()
        .next()
        .ok_or_else(|| CrlError::Malformed("no X509 CRL block".into()))
}

/// Parses `data` as a CRL and reads every field: the body of the `crl` fuzz target.
pub fn fuzz_crl(data: &[u8]) {
    let _ = Crl::parse_all(data).map(|all| all.len());
    if let Ok(c) = Crl::parse(data) {
        let _ = (
            c.this_update(),
            c.next_update(),
            c.number_hex(),
            c.revoked_serials().len(),
        );
    }
}
