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
//!   sealed at rest, soft delete, release, the audit log, and the HTTP API. Tenant
//!   (customer-managed) keys are sealed under the master key; platform-managed keys,
//!   kept in one platform vault per region, under that region's root key, itself
//!   sealed under the master key (a two-level hierarchy; the root rotates).
//! - [`jwk`]: plain private JWK import (RSA, EC) with a consistency check.
//! - [`wrap`]: the key transfer (`CKM_RSA_AES_KEY_WRAP`, `RSA_AES_KEY_WRAP_256`,
//!   `RSA_AES_KEY_WRAP_384`) and the `key_hsm` blob that carries it.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod authority;
pub mod jwk;
pub mod release_policy;
pub mod server;
pub mod service;
pub mod store;
pub mod wrap;

/// Runs the vault's parsers on `data` (a fuzz target's entry point): release policies
/// and their envelopes, `key_hsm` blobs, wrapping-key JWKs, private JWKs for import,
/// policy evaluation on a fixed claim set, and the API contract's bodies. Must never
/// panic.
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
        if let Some(obj) = v.as_object() {
            let _ = jwk::private_jwk_to_pkcs8(obj);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wrap::KeyHsm::parse(text);
    }
    // The contract's request bodies, and its answers as a client reads them.
    let _ = serde_json::from_slice::<keyvault_api::CreateKeyRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::ImportKeyRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::UpdateKeyRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::ReleaseRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::WrapKeyRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::AttestedUnwrapRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::CreateCredentialRequest>(data);
    let _ = serde_json::from_slice::<keyvault_api::KeyBundle>(data);
    let _ = serde_json::from_slice::<keyvault_api::KeyList>(data);
    let _ = serde_json::from_slice::<keyvault_api::ErrorResponse>(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_parse_survives_odd_private_jwks() {
        let long = "_".repeat(5000);
        for jwk in [
            r#"{"kty":"RSA"}"#.to_string(),
            r#"{"kty":"RSA","n":"","e":"AQAB","d":"","p":"","q":"","dp":"","dq":"","qi":""}"#
                .to_string(),
            format!(
                r#"{{"kty":"RSA","n":"{long}","e":"AQAB","d":"AQ","p":"AQ","q":"AQ","dp":"AQ","dq":"AQ","qi":"AQ"}}"#
            ),
            r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA","d":"AA"}"#.to_string(),
            r#"{"kty":"EC","crv":"P-384","x":1,"y":null,"d":[]}"#.to_string(),
            r#"{"kty":"RSA","oth":[],"n":"AQ"}"#.to_string(),
        ] {
            super::fuzz_parse(jwk.as_bytes());
            let v: serde_json::Value = serde_json::from_str(&jwk).unwrap_or_default();
            if let Some(o) = v.as_object() {
                assert!(super::jwk::private_jwk_to_pkcs8(o).is_err(), "{jwk}");
            }
        }
    }
}
