//! The OpenAPI document, generated from this crate alone: one stub per operation
//! carries its path, parameters and bodies; [`openapi`] adds the roles each operation
//! needs ([`crate::OPERATIONS`]) and the bearer scheme.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::types::*;

use api_contract::operation_stub as stub;

stub!(list_sizes, get "/sizes", [] => 200 SizeList);
stub!(list_regions, get "/regions", [] => 200 RegionList);
stub!(list_images, get "/images", [] => 200 ImageList);
stub!(quote_price, post "/prices", [], PriceRequest => 200 PriceQuote);
stub!(list_vms, get "/vms", [] => 200 VmList);
stub!(create_vm, put "/vms/{name}", ["name"], CreateVmRequest => 200 Vm);
stub!(get_vm, get "/vms/{name}", ["name"] => 200 Vm);
stub!(delete_vm, delete "/vms/{name}", ["name"] => 204);
stub!(vm_events, get "/vms/{name}/events", ["name"] => 200 VmEvents);
stub!(vm_console, get "/vms/{name}/console", ["name"] => 200 VmConsole);
stub!(start_vm, post "/vms/{name}/start", ["name"] => 200 Vm);
stub!(stop_vm, post "/vms/{name}/stop", ["name"] => 200 Vm);
stub!(restart_vm, post "/vms/{name}/restart", ["name"] => 200 Vm);
stub!(attest_vm, post "/vms/{name}/attest", ["name"], AttestVmRequest => 200 AttestVmResponse);
stub!(capture_vm, post "/vms/{name}/capture", ["name"] => 204);
stub!(migrate_vm, post "/vms/{name}/migrate", ["name"] => 204);
stub!(create_credential, post "/credentials", [], CreateCredentialRequest => 200 NewCredential);
stub!(create_tenant, put "/tenants/{name}", ["name"], CreateTenantRequest => 200 NewCredential);
stub!(list_hosts, get "/hosts", [] => 200 HostList);
stub!(register_host, put "/hosts/{name}", ["name"], RegisterHostRequest => 200 Host);
stub!(register_host_agent, put "/hosts/{name}/agent", ["name"], RegisterAgentRequest => 200 Host);
stub!(import_image, put "/images/{id}/artifact", ["id"], ImportImageRequest => 200 Image);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opencvm control plane",
        description = "Confidential VMs in Azure's model (sizes, regions, images, prices; `securityProfile`, `uefiSettings`, `osDisk.securityEncryptionType`), tenants and hosts. Every operation needs `Authorization: Bearer <credential>`; `x-opencvm-roles` names the roles it admits. A refusal is `{\"error\": {code, message, detail}}` with a stable code.",
        license(name = "Apache-2.0")
    ),
    paths(
        list_sizes,
        list_regions,
        list_images,
        quote_price,
        list_vms,
        create_vm,
        get_vm,
        delete_vm,
        vm_events,
        vm_console,
        start_vm,
        stop_vm,
        restart_vm,
        attest_vm,
        capture_vm,
        migrate_vm,
        create_credential,
        create_tenant,
        list_hosts,
        register_host,
        register_host_agent,
        import_image
    )
)]
struct Doc;

/// The control plane's OpenAPI document (3.1), as checked in at `openapi/control.json`.
pub fn openapi() -> Value {
    let mut doc = api_contract::finish_document(
        serde_json::to_value(Doc::openapi()).unwrap_or(Value::Null),
        env!("CARGO_PKG_VERSION"),
    );
    doc["security"] = json!([{ "bearer": [] }]);
    for (_, op) in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.iter_mut())
        .flat_map(|(_, item)| item.as_object_mut().into_iter().flat_map(|m| m.iter_mut()))
    {
        let keyed = op["operationId"]
            .as_str()
            .is_some_and(|id| crate::IDEMPOTENT_OPERATIONS.contains(&id));
        if keyed && let Some(params) = op["parameters"].as_array_mut() {
            params.push(json!({
                "name": crate::IDEMPOTENCY_KEY,
                "in": "header",
                "required": false,
                "description": "Names this request for safe retries: a retry with the same key gets the first answer (with `Idempotent-Replayed: true`) instead of running again; another request with the key is refused (422 `idempotency_key_reused`), one while the first runs too (409 `request_in_progress`). 1 to 64 visible ASCII characters, kept a day per tenant; answers of 500 and above are not kept.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[!-~]{1,64}$"}
            }));
        }
    }
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
            let keyed = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == crate::IDEMPOTENCY_KEY && p["in"] == "header");
            assert_eq!(keyed, crate::IDEMPOTENT_OPERATIONS.contains(&id), "{id}");
            seen += 1;
        }
        assert_eq!(seen, crate::OPERATIONS.len());
    }
}
