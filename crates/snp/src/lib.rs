//! AMD SEV-SNP attestation evidence: parse it exactly, verify it against AMD's roots,
//! and appraise it against a policy.
//!
//! - [`report`]: the `ATTESTATION_REPORT` structure (versions 2, 3, 5).
//! - [`tcb`] and [`product`]: TCB versions and the products whose layouts they follow.
//! - [`cert`]: AMD certificates (ARK, ASK/ASVK, VCEK/VLEK) and their extensions.
//! - [`chain`]: explicit chain verification with pinned AMD roots.
//! - [`crl`]: AMD certificate revocation lists.
//! - [`emulator_roots`]: an emulated secure processor's roots file, trusted by pin.
//! - [`verify`]: signature and binding checks producing a [`verify::VerifiedReport`].
//! - [`policy`]: appraisal policy, separate from the cryptographic checks.
//! - [`hcl`]: Azure's HCL report (vTPM NV index 0x01400001) around an SNP report.
//! - [`input`]: detection of the input formats the CLI accepts.
//! - [`kds`], [`collateral`], [`certtable`]: fetching and caching AMD collateral.
//! - [`lookup`]: finding a report's VEK, chain and CRLs (given, cert table, cache, KDS),
//!   the one collateral path of the CLI and the attestation service.
//! - [`view`]: the JSON shape of a report.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod cert;
pub mod certtable;
pub mod chain;
pub mod collateral;
pub mod crl;
pub mod emulator_roots;
pub mod hcl;
pub mod input;
pub mod kds;
pub mod lookup;
mod pem;
pub mod policy;
pub mod product;
pub mod report;
pub mod tcb;
pub mod verify;
pub mod view;

pub use product::Product;
pub use report::AttestationReport;
pub use tcb::{TcbLayout, TcbVersion};
