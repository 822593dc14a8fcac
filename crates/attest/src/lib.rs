//! The opencvm attestation service.
//!
//! Modelled on Microsoft Azure Attestation (MAA) so its clients and habits carry over:
//! `POST /attest/SevSnpVm` and `POST /attest/AzureGuest` take evidence, a provider's
//! Rego policy judges the claims drawn from it, and a signed JWT says what was
//! verified. Relying parties check tokens with the provider's OpenID Connect
//! discovery document and JWKS.
//!
//! - [`jwt`] (the `jose` crate): token signing (RS256, ES384) and verification.
//! - [`policy`]: Rego policies (compiled once per version), default policies, dry runs.
//! - [`sandbox`]: tenant policies in worker processes with bounded memory and time.
//! - [`evidence`], [`azure`]: requests → verified claims.
//! - [`service`]: providers, keys, policies, nonces, tokens.
//! - [`server`]: the HTTP API.
//! - [`store`]: SQLite state; secrets sealed under a master key (the `seal` crate).

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod azure;
pub mod claims;
pub mod collateral;
pub mod error;
pub mod evidence;
pub mod nonce;
pub mod policy;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod store;

/// Tokens: the `jose` crate, re-exported.
pub use jose as jwt;

pub use collateral::EmulatorRoots;
pub use error::ApiError;
pub use evidence::fuzz_parse;
pub use service::{Service, ServiceConfig};

/// The kinds of evidence the service attests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestationType {
    /// A raw SEV-SNP report (`/attest/SevSnpVm`).
    SevSnpVm,
    /// vTPM evidence with an SNP isolation report (`/attest/AzureGuest`).
    AzureGuest,
}

impl AttestationType {
    /// Every type.
    pub const ALL: [AttestationType; 2] = [AttestationType::SevSnpVm, AttestationType::AzureGuest];

    /// The name in API paths.
    pub fn path_name(self) -> &'static str {
        match self {
            AttestationType::SevSnpVm => "SevSnpVm",
            AttestationType::AzureGuest => "AzureGuest",
        }
    }

    /// The `x-ms-attestation-type` claim value.
    pub fn claim_name(self) -> &'static str {
        match self {
            AttestationType::SevSnpVm => "sevsnpvm",
            AttestationType::AzureGuest => "azurevm",
        }
    }

    /// Parses a path name (case-insensitive).
    pub fn from_path(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.path_name().eq_ignore_ascii_case(name))
    }
}
