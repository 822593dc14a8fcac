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

/// Runs the vault's parsers on `data` (a fuzz target's entry point): release policies
/// and their envelopes, `key_hsm` blobs, wrapping-key JWKs, and policy evaluation on a
/// fixed claim set. Must never panic.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(p) = release_policy::ReleasePolicy::parse(data) {
        let claims = serde_json::json!({
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-isolation-tee": {"x-ms-compliance-status": "azure-compliant-cvm", "svn": 3},
        });
        let d = p.evaluate("https://issuer", &claims);
        let _ = d.to_json();
        let _ = p.to_value();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = release_policy::ReleasePolicyEnvelope::parse(&v);
        let _ = wrap::WrappingPublicKey::from_jwk(&v);
        let _ = wrap::KeyHsm::from_json(&v);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wrap::KeyHsm::parse(text);
    }
}
