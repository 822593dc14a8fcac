//! Verification of a report against its VEK and AMD chain: the cryptographic half of
//! attestation. Appraisal (is this the guest we want?) is [`crate::policy`]'s job.
//!
//! The checks, in order:
//! 1. the VEK names the report's product (a version 3+ report's CPUID must agree);
//! 2. the chain's root is pinned, each link is signed, valid at the given time and
//!    fit for its place (CA constraints), every CRL given is the ARK's, verifies and is
//!    current, and the ASK/ASVK is not revoked by any of them;
//! 3. the VEK is the kind the report names (VCEK or VLEK), its SPLs equal
//!    `REPORTED_TCB` and, for a VCEK, its hwID equals `CHIP_ID` (unless the guest
//!    masked CHIP_ID, which then is all zero);
//! 4. the ECDSA P-384/SHA-384 signature verifies over report bytes `0x000..0x2A0`
//!    exactly as received.
//!
//! A [`Verifier`] remembers chain and VEK signatures it has checked, so a stream of
//! reports from known chips costs one ECDSA verification each.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::cert::{Vek, VekKind};
use crate::chain::{CertChain, ChainError, RootTrust, TrustAnchors, VerifiedChain};
use crate::crl::Crl;
use crate::product::Product;
use crate::report::{AttestationReport, ReportError, SigningKey};
use crate::tcb::TcbVersion;

/// Why a report did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The report contradicts its VEK's product.
    #[error("report does not fit its VEK: {0}")]
    Report(#[from] ReportError),
    /// The certificate chain did not verify.
    #[error("certificate chain: {0}")]
    Chain(#[from] ChainError),
    /// The report says it is not signed.
    #[error("report is not signed (SIGNING_KEY = none)")]
    Unsigned,
    /// The report was signed by another kind of key than the VEK given.
    #[error("report says it is signed by the {report}, but the certificate is a {vek}")]
    SignerMismatch {
        /// What the report says.
        report: SigningKey,
        /// What the certificate is.
        vek: VekKind,
    },
    /// The VEK was issued for another TCB than the report's REPORTED_TCB.
    #[error("VEK was issued for TCB {vek}, report has REPORTED_TCB {report}")]
    TcbMismatch {
        /// The report's REPORTED_TCB.
        report: TcbVersion,
        /// The VEK's SPLs.
        vek: TcbVersion,
    },
    /// The VCEK belongs to another chip.
    #[error("VCEK hwID {vek} does not match the report's CHIP_ID {report}")]
    ChipIdMismatch {
        /// The report's CHIP_ID (hex).
        report: String,
        /// The VCEK's hwID (hex).
        vek: String,
    },
    /// The report's signature does not verify under the VEK.
    #[error("report signature does not verify under the {0}")]
    BadSignature(VekKind),
}

impl VerifyError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Report(_) => "product_mismatch",
            VerifyError::Chain(c) => match c {
                ChainError::Missing(_) => "missing_collateral",
                ChainError::Cert(_) => "bad_certificate",
                ChainError::UntrustedRoot { .. } => "untrusted_root",
                ChainError::EmulatedRoot { .. } => "emulated_root",
                ChainError::Name { .. } | ChainError::Mismatch { .. } => "chain_mismatch",
                ChainError::BadSignature { .. } => "chain_signature",
                ChainError::Expired { .. } => "certificate_expired",
                ChainError::Constraints { .. } => "certificate_constraints",
                ChainError::Revoked { .. } => "revoked",
                ChainError::Crl(_) => "crl_unusable",
            },
            VerifyError::Unsigned => "unsigned_report",
            VerifyError::SignerMismatch { .. } => "signer_mismatch",
            VerifyError::TcbMismatch { .. } => "tcb_mismatch",
            VerifyError::ChipIdMismatch { .. } => "chip_id_mismatch",
            VerifyError::BadSignature(_) => "bad_signature",
        }
    }

    /// Whether this means "could not verify" (collateral missing or unusable) rather
    /// than "the evidence is bad".
    pub fn is_collateral_problem(&self) -> bool {
        matches!(self, VerifyError::Chain(c) if c.is_collateral_problem())
    }
}

/// Whether the chain was checked against a revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// At least one CRL of the chain's ARK verified, was current, and does not list the
    /// ASK/ASVK.
    Checked {
        /// The cRLNumber of each CRL applied (hex).
        crl_numbers: Vec<String>,
    },
    /// No CRL was applied, for this reason.
    NotChecked {
        /// Why (no CRL cached and offline, the fetch failed, ...).
        reason: String,
    },
}

impl Revocation {
    /// `checked` or `not_checked`, as JSON and claims name it.
    pub fn name(&self) -> &'static str {
        match self {
            Revocation::Checked { .. } => "checked",
            Revocation::NotChecked { .. } => "not_checked",
        }
    }
    /// Whether a CRL was applied.
    pub fn is_checked(&self) -> bool {
        matches!(self, Revocation::Checked { .. })
    }
}

/// A VEK, its chain and the CRLs to apply: what [`crate::lookup`] finds for a report.
#[derive(Clone, Debug)]
pub struct Collateral {
    /// The VCEK or VLEK.
    pub vek: Vek,
    /// The ASK/ASVK and ARK.
    pub chain: CertChain,
    /// The ARK's CRLs to apply (each must verify and be current).
    pub crls: Vec<Crl>,
    /// Why no CRL is given, when `crls` is empty.
    pub no_crl_reason: Option<String>,
}

/// A report whose signature, chain and VEK binding verified. Only [`Verifier`] makes
/// these.
#[derive(Clone, Debug)]
pub struct VerifiedReport {
    report: AttestationReport,
    product: Product,
    signer: VekKind,
    trust: RootTrust,
    revocation: Revocation,
}

impl VerifiedReport {
    /// The report, with its product known.
    pub fn report(&self) -> &AttestationReport {
        &self.report
    }
    /// The product.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The kind of key that signed it.
    pub fn signer(&self) -> VekKind {
        self.signer
    }
    /// Where trust in the root comes from; anything but [`RootTrust::Amd`] means the
    /// evidence is not from AMD hardware.
    pub fn trust(&self) -> &RootTrust {
        &self.trust
    }
    /// Whether, and against which CRLs, the chain's revocation was checked.
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }
}

/// How many verified VEKs a [`Verifier`] remembers.
pub const MAX_CACHED_VEKS: usize = 4096;

/// SHA-256 of the ARK, the ASK/ASVK, the VEK and the CRLs applied.
type ChainKey = ([u8; 32], [u8; 32], [u8; 32], [u8; 32]);

#[derive(Clone)]
struct CachedVek {
    chain: VerifiedChain,
    from: i64,
    until: i64,
}

/// Verifies reports, caching verified chains and VEKs.
pub struct Verifier {
    anchors: TrustAnchors,
    crls: Vec<Crl>,
    cache: RwLock<HashMap<ChainKey, CachedVek>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("anchors", &self.anchors)
            .field("crls", &self.crls)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier that trusts `anchors` and has no CRLs.
    pub fn new(anchors: TrustAnchors) -> Self {
        Verifier {
            anchors,
            crls: Vec::new(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Adds CRLs to check on every verification; each must be the chain ARK's, verify
    /// and be current.
    pub fn with_crls(mut self, crls: Vec<Crl>) -> Self {
        self.crls = crls;
        self
    }

    fn verified_vek(
        &self,
        vek: &Vek,
        chain: &CertChain,
        crls: &[&Crl],
        at: i64,
    ) -> Result<VerifiedChain, ChainError> {
        let mut crl_digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for crl in crls {
            crl_digest.update(&crl.sha256());
        }
        let mut crl_key = [0u8; 32];
        crl_key.copy_from_slice(crl_digest.finish().as_ref());
        let key = (
            chain.ark().sha256(),
            chain.ask().sha256(),
            vek.cert().sha256(),
            crl_key,
        );
        if let Ok(cache) = self.cache.read()
            && let Some(c) = cache.get(&key)
            && c.from <= at
            && at <= c.until
        {
            return Ok(c.chain.clone());
        }
        let owned: Vec<Crl> = crls.iter().map(|c| (*c).clone()).collect();
        let verified = chain.verify(&self.anchors, &owned, at)?;
        verified.verify_vek(vek, at)?;
        // Cache only while every certificate and CRL involved stays current.
        let certs = [chain.ark(), chain.ask(), vek.cert()];
        let mut from = certs
            .iter()
            .map(|c| c.not_before())
            .max()
            .unwrap_or(i64::MAX);
        let mut until = certs
            .iter()
            .map(|c| c.not_after())
            .min()
            .unwrap_or(i64::MIN);
        for crl in crls {
            from = from.max(crl.this_update());
            until = until.min(crl.next_update().unwrap_or(i64::MIN));
        }
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= MAX_CACHED_VEKS {
                // Bounded memory for a long-running service: start over rather than grow.
                cache.clear();
            }
            cache.insert(
                key,
                CachedVek {
                    chain: verified.clone(),
                    from,
                    until,
                },
            );
        }
        Ok(verified)
    }

    /// Verifies only that `vek` is issued under `chain` and valid at `at` (Unix
    /// seconds), returning where trust in its root comes from.
    pub fn verify_chain_only(
        &self,
        vek: &Vek,
        chain: &CertChain,
        at: i64,
    ) -> Result<RootTrust, VerifyError> {
        let crls: Vec<&Crl> = self.crls.iter().collect();
        Ok(self.verified_vek(vek, chain, &crls, at)?.trust().clone())
    }

    /// Verifies `report` against the collateral [`crate::lookup`] found (its CRLs and
    /// this verifier's) at time `at` (Unix seconds).
    pub fn verify_collateral(
        &self,
        report: &AttestationReport,
        collateral: &Collateral,
        at: i64,
    ) -> Result<VerifiedReport, VerifyError> {
        let crls: Vec<&Crl> = self.crls.iter().chain(collateral.crls.iter()).collect();
        let reason = collateral
            .no_crl_reason
            .clone()
            .unwrap_or_else(|| "no CRL was given".to_owned());
        self.verify_inner(
            report,
            &collateral.vek,
            &collateral.chain,
            &crls,
            reason,
            at,
        )
    }

    /// Verifies `report` against `vek` and `chain` at time `at` (Unix seconds), with
    /// this verifier's CRLs.
    pub fn verify(
        &self,
        report: &AttestationReport,
        vek: &Vek,
        chain: &CertChain,
        at: i64,
    ) -> Result<VerifiedReport, VerifyError> {
        let crls: Vec<&Crl> = self.crls.iter().collect();
        let reason = "no CRL was given".to_owned();
        self.verify_inner(report, vek, chain, &crls, reason, at)
    }

    /// Verifies `report` against `vek` and `chain` with `crls` (and this verifier's
    /// own) at time `at`; `no_crl_reason` says why there are none, when there are none.
    pub fn verify_with_crls(
        &self,
        report: &AttestationReport,
        vek: &Vek,
        chain: &CertChain,
        crls: &[Crl],
        no_crl_reason: Option<String>,
        at: i64,
    ) -> Result<VerifiedReport, VerifyError> {
        let all: Vec<&Crl> = self.crls.iter().chain(crls.iter()).collect();
        let reason = no_crl_reason.unwrap_or_else(|| "no CRL was given".to_owned());
        self.verify_inner(report, vek, chain, &all, reason, at)
    }

    fn verify_inner(
        &self,
        report: &AttestationReport,
        vek: &Vek,
        chain: &CertChain,
        crls: &[&Crl],
        no_crl_reason: String,
        at: i64,
    ) -> Result<VerifiedReport, VerifyError> {
        let report = report.with_product(vek.product())?;
        let verified = self.verified_vek(vek, chain, crls, at)?;
        let signer = match report.signing_key() {
            SigningKey::None => return Err(VerifyError::Unsigned),
            SigningKey::Vcek => VekKind::Vcek,
            SigningKey::Vlek => VekKind::Vlek,
        };
        if signer != vek.kind() {
            return Err(VerifyError::SignerMismatch {
                report: report.signing_key(),
                vek: vek.kind(),
            });
        }
        if vek.tcb() != report.reported_tcb() {
            return Err(VerifyError::TcbMismatch {
                report: report.reported_tcb(),
                vek: vek.tcb(),
            });
        }
        // A guest launched with MASK_CHIP_ID has an all-zero CHIP_ID: nothing to
        // compare, and the VCEK's signature still binds the report to that chip.
        let chip_id_masked = report.chip_id().iter().all(|&b| b == 0);
        if signer == VekKind::Vcek && !chip_id_masked {
            let hw_id = vek.extensions().hw_id.as_deref().unwrap_or_default();
            let chip = report.chip_id();
            if hw_id.is_empty() || chip.get(..hw_id.len()) != Some(hw_id) {
                return Err(VerifyError::ChipIdMismatch {
                    report: hex::encode(chip),
                    vek: hex::encode(hw_id),
                });
            }
        }
        if vek
            .public_key()
            .verify_sig(report.signed_bytes(), &report.signature_fixed())
            .is_err()
        {
            return Err(VerifyError::BadSignature(vek.kind()));
        }
        let revocation = if crls.is_empty() {
            Revocation::NotChecked {
                reason: no_crl_reason,
            }
        } else {
            Revocation::Checked {
                crl_numbers: crls.iter().map(|c| c.number_hex()).collect(),
            }
        };
        Ok(VerifiedReport {
            report,
            product: vek.product(),
            signer,
            trust: verified.trust().clone(),
            revocation,
        })
    }
}
