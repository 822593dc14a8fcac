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

/// The kinds of evidence the service attests (the contract's type).
pub use attest_api::AttestationType;
