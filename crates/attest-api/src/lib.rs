//! The attestation service's API contract, shared by the server (`attest`), clients
//! and the OpenAPI document (`openapi/attest.json`):
//!
//! - the request and response types ([`types`]), named on the wire as Microsoft Azure
//!   Attestation names them (`token`, `draftPolicyForAttestation`, `x-ms-*` claims);
//! - every operation with its method, path and the access it needs ([`OPERATIONS`]);
//!   operations of a provider answer at the root for the default provider and under
//!   `/providers/{provider}` for a named one;
//! - the OpenAPI document, generated from this crate alone ([`openapi`]).

#![forbid(unsafe_code)]

mod doc;
pub mod types;

pub use doc::openapi;
pub use types::*;

/// What an operation needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Anyone,
    /// Anyone; a draft policy in the request (code the service would run) needs the
    /// provider's administrator credential.
    AnyoneDraftNeedsAdmin,
    /// The provider's administrator credential.
    ProviderAdmin,
    /// The default provider's administrator credential (the platform operator).
    DefaultAdmin,
    /// The provider's administrator credential or the default provider's.
    ProviderOrDefaultAdmin,
}

impl Access {
    /// Who may call, as the OpenAPI document says it.
    pub fn who(self) -> &'static str {
        match self {
            Access::Anyone => "anyone",
            Access::AnyoneDraftNeedsAdmin => {
                "anyone; a draft policy needs the provider's administrator credential"
            }
            Access::ProviderAdmin => "the provider's administrator",
            Access::DefaultAdmin => "the default provider's administrator",
            Access::ProviderOrDefaultAdmin => {
                "the provider's administrator or the default provider's"
            }
        }
    }
}

/// One operation of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The OpenAPI `operationId` (for the default provider; a named provider's copy is
    /// `{id}_in_provider`).
    pub id: &'static str,
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template (the default provider's).
    pub path: &'static str,
    /// Who may call.
    pub access: Access,
    /// Whether the operation is a provider's: also served under
    /// `/providers/{provider}`.
    pub per_provider: bool,
}

macro_rules! operations {
    ($($id:ident: $method:literal $path:literal, $access:ident, $per:literal;)*) => {
        /// Every operation of the API.
        pub const OPERATIONS: &[Operation] = &[$(Operation {
            id: stringify!($id),
            method: $method,
            path: $path,
            access: Access::$access,
            per_provider: $per,
        }),*];
    };
}

operations! {
    openid_configuration: "GET" "/.well-known/openid-configuration", Anyone, true;
    certs: "GET" "/certs", Anyone, true;
    nonce: "GET" "/nonce", Anyone, true;
    attest_sev_snp_vm: "POST" "/attest/SevSnpVm", AnyoneDraftNeedsAdmin, true;
    attest_azure_guest: "POST" "/attest/AzureGuest", AnyoneDraftNeedsAdmin, true;
    get_policy: "GET" "/policies/{type}", ProviderAdmin, true;
    set_policy: "PUT" "/policies/{type}", ProviderAdmin, true;
    test_policy: "POST" "/policies/{type}/test", AnyoneDraftNeedsAdmin, true;
    get_settings: "GET" "/settings", ProviderAdmin, true;
    set_settings: "PUT" "/settings", ProviderAdmin, true;
    rotate_signing_key: "POST" "/signing-keys/rotate", ProviderAdmin, true;
    revoke_signing_key: "POST" "/signing-keys/{kid}/revoke", ProviderAdmin, true;
    rotate_admin_credential: "POST" "/admin-credential/rotate", ProviderAdmin, true;
    reset_admin_credential: "POST" "/admin-credential", DefaultAdmin, true;
    revoke_admin_credential: "DELETE" "/admin-credential", ProviderOrDefaultAdmin, true;
    audit_log: "GET" "/audit", ProviderAdmin, true;
    health: "GET" "/health", Anyone, false;
    create_provider: "POST" "/providers/{provider}", DefaultAdmin, false;
    reference_values: "GET" "/reference-values", Anyone, false;
    add_reference_value: "POST" "/reference-values/{region}", DefaultAdmin, false;
    remove_reference_value: "DELETE" "/reference-values/{region}/{measurement}", DefaultAdmin, false;
}

/// The operation named `id` (a named provider's copy, `{id}_in_provider`, too).
pub fn operation(id: &str) -> Option<&'static Operation> {
    let (base, named) = match id.strip_suffix("_in_provider") {
        Some(b) => (b, true),
        None => (id, false),
    };
    OPERATIONS
        .iter()
        .find(|o| o.id == base && (!named || o.per_provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_and_named_copies_only_for_providers() {
        let mut seen = std::collections::HashSet::new();
        for o in OPERATIONS {
            assert!(
                seen.insert((o.method, o.path)),
                "{} {} twice",
                o.method,
                o.path
            );
            assert_eq!(operation(o.id), Some(o));
        }
        assert!(operation("nonce_in_provider").is_some());
        assert!(operation("health_in_provider").is_none());
    }
}
