//! The OpenAPI document, generated from this crate alone: one stub per operation of
//! the default provider carries its path and bodies ([`utoipa::path`]); [`openapi`]
//! adds each provider operation's copy under `/providers/{provider}`, who may call
//! (from [`crate::OPERATIONS`]) and the bearer scheme.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::types::*;

use api_contract::operation_stub as stub;

stub!(openid_configuration, get "/.well-known/openid-configuration", [] => 200 OpenIdConfiguration);
stub!(certs, get "/certs", [] => 200 Jwks);
stub!(nonce, get "/nonce", [] => 200 NonceResponse);
stub!(attest_sev_snp_vm, post "/attest/SevSnpVm", [], SevSnpVmRequest => 200 AttestResponse);
stub!(attest_azure_guest, post "/attest/AzureGuest", [], AzureGuestRequest => 200 AttestResponse);
stub!(get_policy, get "/policies/{type}", ["type"] => 200 PolicyInfo);
stub!(set_policy, put "/policies/{type}", ["type"], PolicyRequest => 200 PolicySet);
stub!(test_policy, post "/policies/{type}/test", ["type"], PolicyTestRequest => 200 DryRun);
stub!(get_settings, get "/settings", [] => 200 ProviderSettings);
stub!(set_settings, put "/settings", [], ProviderSettings => 200 ProviderSettings);
stub!(rotate_signing_key, post "/signing-keys/rotate", [] => 200 SigningKeyRotated);
stub!(revoke_signing_key, post "/signing-keys/{kid}/revoke", ["kid"] => 200 SigningKeyRevoked);
stub!(rotate_admin_credential, post "/admin-credential/rotate", [] => 200 AdminCredential);
stub!(reset_admin_credential, post "/admin-credential", [] => 200 AdminCredential);
stub!(revoke_admin_credential, delete "/admin-credential", [] => 200 AdminRevoked);
stub!(audit_log, get "/audit", [] => 200 AuditLog);
stub!(create_provider, post "/providers/{provider}", ["provider"], ProviderSettings => 200 ProviderCreated);
stub!(reference_values, get "/reference-values", [] => 200 ReferenceValueList);
stub!(add_reference_value, post "/reference-values/{region}", ["region"], ReferenceValueRequest => 200 ReferenceValue);
stub!(remove_reference_value, delete "/reference-values/{region}/{measurement}", ["region", "measurement"] => 200 ReferenceValueRemoved);

#[utoipa::path(get, path = "/health",
    responses((status = 200, description = "the service runs", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn health() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opencvm attestation service",
        description = "Microsoft Azure Attestation's API for SEV-SNP and Azure guest evidence (paths and bodies as MAA's; `?api-version=` is accepted and ignored), with opencvm's own operations: nonces, providers (tenants) with their policies, settings, signing keys and administrator credentials, reference values and the audit log. The default provider answers at the root, a named provider under `/providers/{provider}`. `x-opencvm-access` says who may call; administrators present `Authorization: Bearer <credential>`.",
        license(name = "Apache-2.0")
    ),
    paths(
        openid_configuration,
        certs,
        nonce,
        attest_sev_snp_vm,
        attest_azure_guest,
        get_policy,
        set_policy,
        test_policy,
        get_settings,
        set_settings,
        rotate_signing_key,
        revoke_signing_key,
        rotate_admin_credential,
        reset_admin_credential,
        revoke_admin_credential,
        audit_log,
        health,
        create_provider,
        reference_values,
        add_reference_value,
        remove_reference_value
    )
)]
struct Doc;

/// The attestation service's OpenAPI document (3.1), as checked in at
/// `openapi/attest.json`.
pub fn openapi() -> Value {
    let mut doc = api_contract::finish_document(
        serde_json::to_value(Doc::openapi()).unwrap_or(Value::Null),
        env!("CARGO_PKG_VERSION"),
    );
    let provider_param = json!({
        "name": "provider", "in": "path", "required": true,
        "description": "a named provider", "schema": { "type": "string" }
    });
    for o in crate::OPERATIONS {
        let method = o.method.to_ascii_lowercase();
        let op = &mut doc["paths"][o.path][&method];
        if !op.is_object() {
            continue;
        }
        op["x-opencvm-access"] = json!(o.access.who());
        if o.access != crate::Access::Anyone {
            op["security"] = json!([{ "bearer": [] }, {}]);
        }
        if !o.per_provider {
            continue;
        }
        let mut named = op.clone();
        named["operationId"] = json!(format!("{}_in_provider", o.id));
        let mut params = vec![provider_param.clone()];
        if let Some(p) = named["parameters"].as_array() {
            params.extend(p.iter().cloned());
        }
        named["parameters"] = Value::Array(params);
        doc["paths"][format!("/providers/{{provider}}{}", o.path)][&method] = named;
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_and_the_operations_table_agree() {
        let doc = openapi();
        let mut seen = 0;
        for (path, method, op) in api_contract::operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default();
            let o = crate::operation(id).unwrap_or_else(|| panic!("{id} not in OPERATIONS"));
            let want = match id.ends_with("_in_provider") {
                true => format!("/providers/{{provider}}{}", o.path),
                false => o.path.to_string(),
            };
            assert_eq!(
                (want, o.method.to_ascii_lowercase()),
                (path.to_string(), method.to_string())
            );
            assert!(op["x-opencvm-access"].is_string());
            seen += 1;
        }
        let per_provider = crate::OPERATIONS.iter().filter(|o| o.per_provider).count();
        assert_eq!(seen, crate::OPERATIONS.len() + per_provider);
    }
}
