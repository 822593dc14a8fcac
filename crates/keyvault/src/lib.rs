//! The opencvm key vault.
//!
//! Modelled on Azure Key Vault / Managed HSM *Secure Key Release* (SKR): a key carries a
//! release policy naming the attestation authorities and token claims under which it
//! may leave the vault, and a released key is wrapped to an RSA key the attested
//! environment holds.
//!
//! - [`authority`]: attestation tokens from configured authorities, their keys found
//!   by OIDC discovery + JWKS (cached, refreshed on rotation), algorithms allow-listed.
//! - [`release_policy`]: the release policy grammar (`anyOf`/`allOf` of claim
//!   conditions per authority), its storage envelope and a dry-run evaluator that says
//!   which condition failed.
//! - [`service`], [`server`], [`store`]: vaults, credentials and roles, versioned keys
//!   sealed at rest, soft delete, release, the audit log, and the HTTP API.
//! - [`wrap`]: the key transfer (`CKM_RSA_AES_KEY_WRAP`, `RSA_AES_KEY_WRAP_256`,
//!   `RSA_AES_KEY_WRAP_384`) and the `key_hsm` blob that carries it.

#![forbid(unsafe_code)]

pub mod authority;
pub mod release_policy;
pub mod server;
pub mod service;
pub mod store;
pub mod wrap;
