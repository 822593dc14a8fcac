//! An emulated secure processor's roots, as `cvm snp export-roots` writes them: the one
//! way a verifier (the `cvm evidence verify` command and the attestation service alike)
//! comes to trust emulated evidence.
//!
//! An emulator's ARK is trusted only by pin (the SHA-256 of its DER certificate), never
//! because its organizational unit says [`EMULATOR_OU`](crate::chain::EMULATOR_OU):
//! anyone can write that label into a certificate. Evidence verified under a pinned
//! emulator root is labelled [`RootTrust::Emulated`](crate::chain::RootTrust::Emulated).

use crate::cert::{AmdCert, CertError, parse_bundle};
use crate::chain::{ChainError, TrustAnchors};
use crate::crl::{Crl, CrlError};
use crate::lookup::RootCrls;

/// Why an emulator roots file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootsError {
    /// A certificate in the file cannot be read.
    #[error("emulator roots: a certificate cannot be read")]
    Cert(#[source] CertError),
    /// A CRL in the file cannot be read.
    #[error("emulator roots: a CRL cannot be read")]
    Crl(#[source] CrlError),
    /// The file holds no ARK.
    #[error("emulator roots: no ARK-<product> certificate in the file")]
    NoArk,
    /// An ARK in the file is not an emulated secure processor's.
    #[error("emulator roots: a root is refused")]
    NotEmulated(#[source] ChainError),
}

/// One emulated secure processor's roots: its ARKs (each checked to be an emulator's,
/// to be pinned by fingerprint) and the CRLs those ARKs issued.
#[derive(Clone, Debug)]
pub struct EmulatorRoots {
    arks: Vec<AmdCert>,
    crls: Vec<Crl>,
}

impl EmulatorRoots {
    /// Parses a roots file (PEM): certificates (ASK, ASVK, ARK; only the ARKs are kept)
    /// and `X509 CRL` blocks. Every ARK must be an emulator's
    /// ([`TrustAnchors::dangerously_trust_emulator_root`] would accept it).
    pub fn from_pem(data: &[u8]) -> Result<Self, RootsError> {
        let certs = parse_bundle(data).map_err(RootsError::Cert)?;
        let arks: Vec<AmdCert> = certs
            .into_iter()
            .filter(|c| c.subject_cn().starts_with("ARK-"))
            .collect();
        if arks.is_empty() {
            return Err(RootsError::NoArk);
        }
        let crls = Crl::parse_all(data).map_err(RootsError::Crl)?;
        let mut check = TrustAnchors::amd();
        for ark in &arks {
            check
                .dangerously_trust_emulator_root(ark)
                .map_err(RootsError::NotEmulated)?;
        }
        Ok(EmulatorRoots { arks, crls })
    }

    /// The ARKs, each to be trusted by its fingerprint.
    pub fn arks(&self) -> &[AmdCert] {
        &self.arks
    }

    /// The CRLs the file carries.
    pub fn crls(&self) -> &[Crl] {
        &self.crls
    }

    /// Pins these roots in `anchors` (evidence under them is labelled emulated) and
    /// registers, in `crls`, each CRL under the ARK that issued it (by name; the
    /// signature is checked when a chain is verified).
    pub fn install(&self, anchors: &mut TrustAnchors, crls: &mut RootCrls) {
        for ark in &self.arks {
            // `from_pem` checked each ARK already, so this does not fail.
            if anchors.dangerously_trust_emulator_root(ark).is_ok() {
                for crl in self
                    .crls
                    .iter()
                    .filter(|c| c.issuer() == &ark.x509().tbs_certificate.subject)
                {
                    crls.add(ark.sha256(), crl.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(path: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
        std::fs::read(format!("{p}{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn amd_roots_are_not_an_emulators() {
        let e = EmulatorRoots::from_pem(&td("snp/go-sev-guest/ask_ark_milan.pem")).unwrap_err();
        assert!(matches!(e, RootsError::NotEmulated(_)), "{e:?}");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            source
                .as_deref()
                .unwrap_or("")
                .contains("not an emulated ARK"),
            "{source:?}"
        );
    }

    #[test]
    fn a_file_without_an_ark_is_refused() {
        assert!(EmulatorRoots::from_pem(b"").is_err());
        assert!(EmulatorRoots::from_pem(b"not pem").is_err());
    }
}
