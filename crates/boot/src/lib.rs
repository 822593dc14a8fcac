//! UEFI Secure Boot as firmware enforces it, for confidential VMs whose firmware
//! variables opencvm owns:
//!
//! - [`pe`]: PE/COFF images and their Authenticode digest;
//! - [`pkcs7`] and [`cert`]: the signatures (PKCS#7 SignedData over
//!   `SpcIndirectDataContent`) and X.509 certificates, verified with aws-lc;
//! - [`esl`]: EFI signature lists (PK, KEK, db, dbx);
//! - [`verify`]: edk2's allow/deny decision against db and dbx, and shim's SBAT check
//!   ([`sbat`]);
//! - [`authvar`]: time-based authenticated variable updates.
//!
//! Facts, byte layouts and where opencvm differs from firmware:
//! `docs/adr/0014-secure-boot.md`.
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]
#![forbid(unsafe_code)]

pub mod authvar;
pub mod cert;
pub mod claims;
pub mod der;
pub mod esl;
pub mod esp;
pub mod fat;
pub mod ovmf;
pub mod pe;
pub mod pkcs7;
pub mod predict;
pub mod sbat;
pub mod shim;
pub mod template;
pub mod varstore;
pub mod verify;

pub use esl::{Entry, Signature, SignatureDb};
pub use pe::{HashAlg, PeImage};
pub use varstore::VariableStore;
pub use verify::{Authority, Refusal, Verdict, verify_image};

/// Why a boot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not a well-formed PE/COFF file.
    #[error("malformed PE/COFF image: {why}")]
    Pe {
        /// What is wrong.
        why: String,
    },
    /// A DER structure is malformed.
    #[error("malformed {what}: {why}")]
    Der {
        /// The structure.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An algorithm this crate does not accept.
    #[error("unsupported algorithm: {what}")]
    UnsupportedAlgorithm {
        /// Which.
        what: String,
    },
    /// A signature does not verify with the key that should have made it.
    #[error("the signature by {signer:?} does not verify")]
    BadSignature {
        /// The certificate's subject.
        signer: String,
    },
    /// A signature is well formed but not acceptable.
    #[error("{reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// A signature list is malformed.
    #[error("malformed EFI_SIGNATURE_LIST at byte {offset}: {why}")]
    SignatureList {
        /// Offset of the list.
        offset: usize,
        /// What is wrong.
        why: String,
    },
    /// An authenticated variable update is malformed or does not verify.
    #[error("authenticated variable: {0}")]
    AuthVariable(String),
    /// An SBAT section or level is malformed.
    #[error("SBAT: {0}")]
    Sbat(String),
    /// An OVMF variable store image is malformed or unsupported.
    #[error("OVMF variable store: {0}")]
    Ovmf(String),
    /// PCR 7 cannot be predicted for this store and boot chain.
    #[error("cannot predict PCR 7: {0}")]
    Predict(String),
    /// A FAT filesystem is malformed.
    #[error("FAT filesystem: {0}")]
    Fat(String),
    /// A variable store document is malformed.
    #[error("variable store: {0}")]
    Store(String),
    /// A caller-supplied value is wrong.
    #[error("{0}")]
    Usage(String),
}

/// Runs this crate's parsers on `data` (as a PE image, a signature list, an
/// authenticated update, a PKCS#7 blob, SBAT text), ignoring results: the entry point of
/// a fuzz target. It must never panic.
pub fn fuzz_parse(data: &[u8]) {
    let empty = SignatureDb::default();
    if let Ok(db) = SignatureDb::parse(data) {
        let _ = SignatureDb::parse(&db.encode());
        let _ = verify_image(data, &db, &db, None);
    }
    let _ = verify_image(data, &empty, &empty, None);
    if let Ok(pe) = PeImage::parse(data) {
        for alg in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            let _ = pe.authenticode_digest(alg);
        }
        let _ = pe.signatures();
        let _ = pe.section_data(".sbat").map(sbat::parse_section);
        let _ = pe.section_data(".sbatlevel").map(sbat::parse_shim_levels);
    }
    if let Ok(sd) = pkcs7::SignedData::parse(data) {
        let _ = pkcs7::IndirectData::parse(&sd);
        for s in &sd.signers {
            let _ = sd.verify_signer(s, data);
        }
    }
    if let Ok(update) = authvar::AuthenticatedUpdate::parse(data) {
        let _ = update.verify("db", esl::CERT_X509, 0x27, &empty, None);
    }
    if let Ok(store) = ovmf::read(data) {
        let _ = ovmf::write(&store, data);
        let _ = VariableStore::from_json(store.to_json().as_bytes());
        let _ = store.signature_db("db");
        let _ = predict::configuration_events(&store);
    }
    let _ = VariableStore::from_json(data);
    let _ = esp::read_from_fat(data);
    if let Ok(log) = tcg_eventlog::EventLog::parse(data) {
        let _ = claims::from_log(&log);
    }
    let _ = shim::ShimTrust::parse(data);
    let _ = cert::Cert::parse(data);
    let _ = cert::read_certificates(data);
    let _ = sbat::parse_section(data);
    let _ = sbat::Level::parse(data);
    let _ = sbat::parse_shim_levels(data);
}
