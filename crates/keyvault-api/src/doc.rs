//! The OpenAPI document, generated from this crate alone: one stub per operation
//! carries its path, parameters and bodies ([`utoipa::path`]); [`openapi`] adds what
//! the [`crate::OPERATIONS`] table says (the roles each operation needs) and the
//! bearer scheme.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::types::*;

use api_contract::operation_stub as stub;

stub!(list_keys, get "/keys", [] => 200 KeyList);
stub!(create_key, post "/keys/{name}/create", ["name"], CreateKeyRequest => 200 KeyBundle);
stub!(import_key, put "/keys/{name}", ["name"], ImportKeyRequest => 200 KeyBundle);
stub!(get_key, get "/keys/{name}", ["name"] => 200 KeyBundle);
stub!(delete_key, delete "/keys/{name}", ["name"] => 200 KeyBundle);
stub!(list_versions, get "/keys/{name}/versions", ["name"] => 200 KeyList);
stub!(get_key_version, get "/keys/{name}/{version}", ["name", "version"] => 200 KeyBundle);
stub!(update_key, patch "/keys/{name}/{version}", ["name", "version"], UpdateKeyRequest => 200 KeyBundle);
stub!(release, post "/keys/{name}/{version}/release", ["name", "version"], ReleaseRequest => 200 SignedResult);
stub!(release_test, post "/keys/{name}/{version}/release/test", ["name", "version"], ReleaseRequest => 200 ReleaseTestResult);
stub!(wrap_key, post "/keys/{name}/{version}/wrapkey", ["name", "version"], WrapKeyRequest => 200 KeyOperationResult);
stub!(attested_unwrap, post "/keys/{name}/{version}/unwrapkey/attested", ["name", "version"], AttestedUnwrapRequest => 200 SignedResult);
stub!(list_deleted, get "/deletedkeys", [] => 200 KeyList);
stub!(get_deleted, get "/deletedkeys/{name}", ["name"] => 200 KeyBundle);
stub!(purge_key, delete "/deletedkeys/{name}", ["name"] => 204);
stub!(recover_key, post "/deletedkeys/{name}/recover", ["name"] => 200 KeyBundle);
stub!(create_credential, post "/credentials", [], CreateCredentialRequest => 200 NewCredential);
stub!(list_credentials, get "/credentials", [] => 200 CredentialList);
stub!(revoke_credential, delete "/credentials/{id}", ["id"] => 200 Revoked);
stub!(rotate_credential, post "/credentials/{id}/rotate", ["id"] => 200 RotatedCredential);
stub!(audit_log, get "/audit", [] => 200 AuditLog);
stub!(create_vault, post "/vaults/{name}", ["name"] => 200 NewCredential);
stub!(list_regions, get "/regions", [] => 200 RegionList);
stub!(create_region, post "/regions/{region}", ["region"] => 200 RegionCreated);
stub!(rotate_region, post "/regions/{region}/rotate", ["region"] => 200 RegionRotated);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opencvm key vault",
        description = "Key Vault's key API (paths and bodies as Azure Key Vault's; `?api-version=` is accepted and ignored) with Secure Key Release, and opencvm's own operations: credentials, the audit log, vaults and regions. Every operation needs `Authorization: Bearer <credential>`; `x-opencvm-roles` names the roles it admits.",
        license(name = "Apache-2.0")
    ),
    paths(
        list_keys,
        create_key,
        import_key,
        get_key,
        delete_key,
        list_versions,
        get_key_version,
        update_key,
        release,
        release_test,
        wrap_key,
        attested_unwrap,
        list_deleted,
        get_deleted,
        purge_key,
        recover_key,
        create_credential,
        list_credentials,
        revoke_credential,
        rotate_credential,
        audit_log,
        create_vault,
        list_regions,
        create_region,
        rotate_region
    )
)]
struct Doc;

/// The key vault's OpenAPI document (3.1), as checked in at `openapi/keyvault.json`.
pub fn openapi() -> Value {
    let mut doc = api_contract::finish_document(
        serde_json::to_value(Doc::openapi()).unwrap_or(Value::Null),
        env!("CARGO_PKG_VERSION"),
    );
    doc["security"] = json!([{ "bearer": [] }]);
    api_contract::annotate_roles(
        &mut doc,
        crate::OPERATIONS
            .iter()
            .map(|o| (o.path, o.method, o.access.roles())),
    );
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
            assert_eq!(
                (o.path, o.method.to_ascii_lowercase()),
                (path, method.to_string())
            );
            assert!(op["x-opencvm-roles"].is_string());
            seen += 1;
        }
        assert_eq!(seen, crate::OPERATIONS.len());
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.1")),
            Some(true)
        );
    }
}
