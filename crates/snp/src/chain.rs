//! Explicit verification of AMD certificate chains: ARK → ASK/ASVK → VCEK/VLEK.
//!
//! Each link is checked by hand rather than by a generic RFC 5280 path validator
//! (AMD's VEKs have serial 0, every signature is RSASSA-PSS, and the hierarchy is fixed):
//! the root is pinned by the SHA-256 of its DER encoding, names chain issuer to
//! subject, every signature is RSASSA-PSS/SHA-384/salt 48 by the issuer's key,
//! every certificate is inside its validity window at the verification time, the ARK
//! and ASK/ASVK are CAs allowed to sign certificates (basicConstraints `cA`, keyUsage
//! `keyCertSign`, and `cRLSign` for the ARK, which signs the CRL) while the VEK is not
//! a CA, and the ASK/ASVK is not revoked by the CRLs given. Every CRL given must be
//! the chain ARK's, verify under it and be current; otherwise the chain cannot be
//! checked ([`ChainError::Crl`], a collateral problem).

use std::fmt;

use aws_lc_rs::signature::ParsedPublicKey;

use crate::cert::{AmdCert, CertError, Vek, VekKind};
use crate::crl::{Crl, CrlError};
use crate::product::Product;

/// The SHA-256 fingerprints of AMD's root keys (ARK certificates, DER), as served
/// by the AMD Key Distribution Service `cert_chain` endpoints.
pub const AMD_ARK_SHA256: [(Product, &str); 3] = [
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

/// Whether `sha256` is the fingerprint of one of AMD's pinned ARKs.
pub fn is_amd_ark(sha256: &[u8; 32]) -> bool {
    AMD_ARK_SHA256.iter().any(|(_, fp)| {
        let mut want = [0u8; 32];
        hex::decode_to_slice(fp, &mut want).is_ok() && &want == sha256
    })
}

/// The organizational unit in every certificate the opencvm emulator issues (instead
/// of AMD's `Engineering`): it labels emulated evidence wherever it goes.
pub const EMULATOR_OU: &str = "opencvm emulated AMD-SP";

/// Where trust in a root comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootTrust {
    /// One of AMD's pinned root keys.
    Amd,
    /// An emulated secure processor's root, pinned by fingerprint with
    /// [`TrustAnchors::dangerously_trust_emulator_root`] (never trusted for its label).
    /// The evidence is not from AMD hardware.
    Emulated,
    /// A root the caller chose to trust with [`TrustAnchors::dangerous_add_root`].
    /// Evidence under it is not from AMD hardware.
    Dangerous {
        /// The caller's label for the root (for example `emulator`).
        label: String,
    },
}

impl RootTrust {
    /// Whether this is one of AMD's roots.
    pub fn is_amd(&self) -> bool {
        matches!(self, RootTrust::Amd)
    }
}

#[derive(Clone, Debug)]
struct Anchor {
    product: Product,
    sha256: [u8; 32],
    trust: RootTrust,
}

/// The set of ARKs a verifier accepts, each pinned by the SHA-256 of its certificate.
/// No root is trusted for what it calls itself: an emulated secure processor's root is
/// trusted only once pinned ([`TrustAnchors::dangerously_trust_emulator_root`]).
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
}

impl Default for TrustAnchors {
    fn default() -> Self {
        Self::amd()
    }
}

impl TrustAnchors {
    /// AMD's roots for Milan, Genoa and Turin, and nothing else.
    pub fn amd() -> Self {
        let anchors = AMD_ARK_SHA256
            .iter()
            .filter_map(|(product, hex_fp)| {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(hex_fp, &mut sha256).ok()?;
                Some(Anchor {
                    product: *product,
                    sha256,
                    trust: RootTrust::Amd,
                })
            })
            .collect();
        TrustAnchors { anchors }
    }

    /// Also trusts one emulated secure processor's root, pinned by the SHA-256 of its
    /// DER certificate (as `cvm snp export-roots` writes it). The certificate must be
    /// an emulator's ARK (organizational unit [`EMULATOR_OU`], subject `ARK-<product>`).
    /// Evidence verified under it is marked [`RootTrust::Emulated`]; any other root
    /// that calls itself an emulator's stays untrusted. Roots files are read with
    /// [`EmulatorRoots`](crate::emulator_roots::EmulatorRoots).
    pub fn dangerously_trust_emulator_root(&mut self, ark: &AmdCert) -> Result<(), ChainError> {
        let product = ark
            .subject_cn()
            .strip_prefix("ARK-")
            .and_then(|p| p.parse::<Product>().ok());
        match product {
            Some(product) if is_emulated(ark) => {
                self.anchors.push(Anchor {
                    product,
                    sha256: ark.sha256(),
                    trust: RootTrust::Emulated,
                });
                Ok(())
            }
            _ => Err(ChainError::Name {
                cert: ark.subject_cn().to_owned(),
                problem: format!(
                    "is not an emulated ARK (subject ARK-<product>, OU {EMULATOR_OU:?})"
                ),
            }),
        }
    }

    /// Also trusts a root that is not AMD's, identified by the SHA-256 of its DER
    /// certificate. Evidence verified under it is marked [`RootTrust::Dangerous`].
    /// Never use this for production evidence: anyone holding that root's key can
    /// produce reports that verify.
    pub fn dangerous_add_root(&mut self, product: Product, ark_sha256: [u8; 32], label: &str) {
        self.anchors.push(Anchor {
            product,
            sha256: ark_sha256,
            trust: RootTrust::Dangerous {
                label: label.to_owned(),
            },
        });
    }

    fn find(&self, ark: &AmdCert) -> Result<Anchor, ChainError> {
        let fp = ark.sha256();
        if let Some(a) = self.anchors.iter().find(|a| a.sha256 == fp) {
            return Ok(a.clone());
        }
        if is_emulated(ark) {
            // Labelled an emulator's but not pinned: the label earns no trust.
            return Err(ChainError::EmulatedRoot {
                sha256: hex::encode(fp),
            });
        }
        Err(ChainError::UntrustedRoot {
            sha256: hex::encode(fp),
        })
    }
}

/// Why a chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain lacks a certificate.
    #[error("certificate chain has no {0}")]
    Missing(&'static str),
    /// A certificate is malformed or of the wrong kind.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The ARK is not a trusted root.
    #[error("root certificate (sha256 {sha256}) is not a trusted AMD root")]
    UntrustedRoot {
        /// Hex SHA-256 of the ARK's DER.
        sha256: String,
    },
    /// The root calls itself an emulated secure processor's and is not pinned.
    #[error(
        "root certificate (sha256 {sha256}) calls itself the opencvm emulator's and is not pinned: the evidence is emulated, not from AMD hardware (an emulator's roots are trusted only by pin: --dangerously-trust-emulator-roots with the file `cvm snp export-roots` writes on that platform)"
    )]
    EmulatedRoot {
        /// Hex SHA-256 of the ARK's DER.
        sha256: String,
    },
    /// A certificate's name does not fit its place in the chain.
    #[error("{cert}: {problem}")]
    Name {
        /// Which certificate.
        cert: String,
        /// What is wrong.
        problem: String,
    },
    /// A signature in the chain does not verify.
    #[error("{cert} is not signed by {issuer}")]
    BadSignature {
        /// The certificate.
        cert: String,
        /// Its purported issuer.
        issuer: String,
    },
    /// A certificate is outside its validity window.
    #[error(
        "{cert} is not valid at {} (valid {} to {})",
        rfc3339(.at),
        rfc3339(.not_before),
        rfc3339(.not_after)
    )]
    Expired {
        /// Which certificate.
        cert: String,
        /// The verification time, Unix seconds.
        at: i64,
        /// Not-before, Unix seconds.
        not_before: i64,
        /// Not-after, Unix seconds.
        not_after: i64,
    },
    /// A certificate is revoked.
    #[error("{cert} (serial {serial}) is revoked by CRL number {crl_number}")]
    Revoked {
        /// Which certificate.
        cert: String,
        /// Its serial number, hex.
        serial: String,
        /// The CRL that revokes it.
        crl_number: String,
    },
    /// A CRL could not be used.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// A certificate's basicConstraints or keyUsage do not fit its place in the chain.
    #[error("{cert}: {problem}")]
    Constraints {
        /// Which certificate.
        cert: String,
        /// What is wrong.
        problem: String,
    },
    /// The VEK is of the wrong kind or product for the chain.
    #[error("{vek} does not belong to a {chain} chain")]
    Mismatch {
        /// What the VEK is.
        vek: String,
        /// What the chain is.
        chain: String,
    },
}

/// Formats Unix seconds as RFC 3339 (UTC), or the number if out of range.
pub fn rfc3339(t: &i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(*t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl ChainError {
    /// Whether the error means "we could not check" (bad collateral such as an
    /// unusable CRL) rather than "the evidence is bad".
    pub fn is_collateral_problem(&self) -> bool {
        matches!(self, ChainError::Crl(_) | ChainError::Missing(_))
    }
}

/// An ARK with the ASK (for VCEKs) or ASVK (for VLEKs) it signed.
#[derive(Clone, Debug)]
pub struct CertChain {
    ark: AmdCert,
    ask: AmdCert,
}

impl CertChain {
    /// Picks the ARK and the ASK/ASVK out of a set of certificates (in any order).
    /// When the set holds both an ASK and an ASVK, the one matching the VEK in the set
    /// is taken; without a VEK that is ambiguous, see [`CertChain::from_certs_for`].
    pub fn from_certs(certs: &[AmdCert]) -> Result<Self, ChainError> {
        let vek_kind = certs.iter().find_map(|c| match c.subject_cn() {
            "SEV-VCEK" => Some(VekKind::Vcek),
            "SEV-VLEK" => Some(VekKind::Vlek),
            _ => None,
        });
        match vek_kind {
            Some(kind) => Self::from_certs_for(certs, kind),
            None => {
                let signers: Vec<_> = certs.iter().filter(|c| is_signing_ca(c, None)).collect();
                match signers.as_slice() {
                    [ask] => Self::with_ark(certs, ask),
                    [] => Err(ChainError::Missing("ASK or ASVK")),
                    _ => Err(ChainError::Name {
                        cert: "certificate set".into(),
                        problem: "holds both an ASK and an ASVK; say which VEK kind it is for"
                            .into(),
                    }),
                }
            }
        }
    }

    /// Picks the ARK and the ASK (for VCEKs) or ASVK (for VLEKs) out of a set of
    /// certificates.
    pub fn from_certs_for(certs: &[AmdCert], kind: VekKind) -> Result<Self, ChainError> {
        let ask =
            certs
                .iter()
                .find(|c| is_signing_ca(c, Some(kind)))
                .ok_or(ChainError::Missing(match kind {
                    VekKind::Vcek => "ASK",
                    VekKind::Vlek => "ASVK",
                }))?;
        Self::with_ark(certs, ask)
    }

    fn with_ark(certs: &[AmdCert], ask: &AmdCert) -> Result<Self, ChainError> {
        let ark = certs
            .iter()
            .find(|c| c.subject_cn().starts_with("ARK-"))
            .ok_or(ChainError::Missing("ARK"))?;
        Ok(CertChain {
            ark: ark.clone(),
            ask: ask.clone(),
        })
    }

    /// The ARK.
    pub fn ark(&self) -> &AmdCert {
        &self.ark
    }
    /// The ASK or ASVK.
    pub fn ask(&self) -> &AmdCert {
        &self.ask
    }
}

/// A chain whose ARK is trusted and whose ASK/ASVK the ARK signed.
#[derive(Clone)]
pub struct VerifiedChain {
    product: Product,
    kind: VekKind,
    trust: RootTrust,
    ask_subject: x509_cert::name::Name,
    ask_key: ParsedPublicKey,
    ask_cn: String,
    ask_sha256: [u8; 32],
}

impl fmt::Debug for VerifiedChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedChain")
            .field("product", &self.product)
            .field("kind", &self.kind)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// Whether a certificate names the emulator's organizational unit.
pub fn is_emulated(cert: &AmdCert) -> bool {
    const OU: &str = "2.5.4.11";
    cert.x509()
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .any(|atv| atv.oid.to_string() == OU && atv.value.value() == EMULATOR_OU.as_bytes())
}

/// Whether `c` is an ASK (`SEV-<product>`) or ASVK (`SEV-VLEK-<product>`) issued by
/// an ARK, optionally of the CA kind for `kind`.
fn is_signing_ca(c: &AmdCert, kind: Option<VekKind>) -> bool {
    let cn = c.subject_cn();
    if !c.issuer_cn().starts_with("ARK-") || !cn.starts_with("SEV-") {
        return false;
    }
    let vlek = cn.starts_with("SEV-VLEK-");
    match kind {
        None => true,
        Some(VekKind::Vlek) => vlek,
        Some(VekKind::Vcek) => !vlek,
    }
}

/// Checks that `cert` may sign certificates (and CRLs, for an ARK).
fn check_ca(cert: &AmdCert, crl_signer: bool) -> Result<(), ChainError> {
    let c = cert.constraints()?;
    let problem = if !c.ca {
        Some("basicConstraints does not say cA: TRUE")
    } else if !c.key_usage_present || !c.key_cert_sign {
        Some("keyUsage does not allow keyCertSign")
    } else if crl_signer && !c.crl_sign {
        Some("keyUsage does not allow cRLSign")
    } else {
        None
    };
    match problem {
        Some(p) => Err(ChainError::Constraints {
            cert: cert.subject_cn().to_owned(),
            problem: p.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Checks that a VEK is an end-entity certificate.
fn check_end_entity(cert: &AmdCert) -> Result<(), ChainError> {
    let c = cert.constraints()?;
    if c.ca || c.key_cert_sign || c.crl_sign {
        return Err(ChainError::Constraints {
            cert: cert.subject_cn().to_owned(),
            problem: "a VEK must not be a CA (basicConstraints cA or keyUsage keyCertSign/cRLSign)"
                .to_owned(),
        });
    }
    Ok(())
}

fn check_validity(cert: &AmdCert, at: i64) -> Result<(), ChainError> {
    if cert.valid_at(at) {
        Ok(())
    } else {
        Err(ChainError::Expired {
            cert: cert.subject_cn().to_owned(),
            at,
            not_before: cert.not_before(),
            not_after: cert.not_after(),
        })
    }
}

/// Verifies every CRL under the ARK (a CRL of another issuer, a bad signature or a CRL
/// that is not current is a [`ChainError::Crl`]: we cannot tell whether the chain is
/// revoked) and checks the ASK/ASVK against each.
fn check_revocation(ask: &AmdCert, ark: &AmdCert, crls: &[Crl], at: i64) -> Result<(), ChainError> {
    for crl in crls {
        crl.verify(ark, at)?;
        if crl.is_revoked(ask.serial()) {
            return Err(ChainError::Revoked {
                cert: ask.subject_cn().to_owned(),
                serial: hex::encode(ask.serial()),
                crl_number: crl.number_hex(),
            });
        }
    }
    Ok(())
}

impl CertChain {
    /// Verifies the chain at time `at` (Unix seconds): a pinned root, names, signatures,
    /// validity windows, CA constraints, and revocation of the ASK/ASVK by `crls`, each
    /// of which must be this ARK's, verify under it and be current.
    pub fn verify(
        &self,
        anchors: &TrustAnchors,
        crls: &[Crl],
        at: i64,
    ) -> Result<VerifiedChain, ChainError> {
        let ark = &self.ark;
        let anchor = anchors.find(ark)?;
        let product = anchor.product;
        let want_ark = format!("ARK-{product}");
        if ark.subject_cn() != want_ark
            || ark.x509().tbs_certificate.subject != ark.x509().tbs_certificate.issuer
        {
            return Err(ChainError::Name {
                cert: ark.subject_cn().to_owned(),
                problem: format!("root must be the self-issued {want_ark}"),
            });
        }
        let ark_key = ark.rsa_pss_key()?;
        if !ark.is_signed_by(&ark_key) {
            return Err(ChainError::BadSignature {
                cert: ark.subject_cn().to_owned(),
                issuer: ark.subject_cn().to_owned(),
            });
        }
        check_validity(ark, at)?;
        check_ca(ark, true)?;

        let ask = &self.ask;
        let kind = if ask.subject_cn() == format!("SEV-{product}") {
            VekKind::Vcek
        } else if ask.subject_cn() == format!("SEV-VLEK-{product}") {
            VekKind::Vlek
        } else {
            return Err(ChainError::Name {
                cert: ask.subject_cn().to_owned(),
                problem: format!("expected SEV-{product} or SEV-VLEK-{product} under {want_ark}"),
            });
        };
        if ask.x509().tbs_certificate.issuer != ark.x509().tbs_certificate.subject {
            return Err(ChainError::Name {
                cert: ask.subject_cn().to_owned(),
                problem: format!("issuer is not {want_ark}"),
            });
        }
        if !ask.is_signed_by(&ark_key) {
            return Err(ChainError::BadSignature {
                cert: ask.subject_cn().to_owned(),
                issuer: want_ark,
            });
        }
        check_validity(ask, at)?;
        check_ca(ask, false)?;
        check_revocation(ask, ark, crls, at)?;
        let ask_key = ask.rsa_pss_key()?;
        Ok(VerifiedChain {
            product,
            kind,
            trust: anchor.trust,
            ask_subject: ask.x509().tbs_certificate.subject.clone(),
            ask_key,
            ask_cn: ask.subject_cn().to_owned(),
            ask_sha256: ask.sha256(),
        })
    }
}

impl VerifiedChain {
    /// The product whose root signed the chain.
    pub fn product(&self) -> Product {
        self.product
    }
    /// Whether the chain signs VCEKs (ASK) or VLEKs (ASVK).
    pub fn kind(&self) -> VekKind {
        self.kind
    }
    /// Where trust in the root comes from.
    pub fn trust(&self) -> &RootTrust {
        &self.trust
    }
    /// SHA-256 of the ASK/ASVK DER.
    pub fn ask_sha256(&self) -> [u8; 32] {
        self.ask_sha256
    }

    /// Verifies that `vek` was issued by this chain's ASK/ASVK, is an end-entity
    /// certificate and is valid at `at`. (AMD revokes ASKs and ASVKs, in the ARK's CRL,
    /// not individual VEKs: a VEK is retired by raising the minimum TCB.)
    pub fn verify_vek(&self, vek: &Vek, at: i64) -> Result<(), ChainError> {
        let cert = vek.cert();
        if vek.kind() != self.kind || vek.product() != self.product {
            return Err(ChainError::Mismatch {
                vek: format!("{} for {}", vek.kind(), vek.product()),
                chain: format!("{} {}", self.product, self.ask_cn),
            });
        }
        if cert.x509().tbs_certificate.issuer != self.ask_subject {
            return Err(ChainError::Name {
                cert: cert.subject_cn().to_owned(),
                problem: format!("issuer is not {}", self.ask_cn),
            });
        }
        if !cert.is_signed_by(&self.ask_key) {
            return Err(ChainError::BadSignature {
                cert: cert.subject_cn().to_owned(),
                issuer: self.ask_cn.clone(),
            });
        }
        check_validity(cert, at)?;
        check_end_entity(cert)?;
        Ok(())
    }
}
