//! The attestation service's API contract, shared by the server (`attest`), clients
//! and the OpenAPI document (`openapi/attest.json`):
//!
//! - the request and response types ([`types`]), named on the wire as Microsoft Azure
//!   Attestation names them (`token`, `draftPolicyForAttestation`, `x-ms-*` claims);
//! - every operation with its method, path and the access it needs ([`OPERATIONS`]);
//!   operations of a provider answer at the root for the default provider and under
//!   `/providers/{provider}` for a named one;
//! - the API as a trait ([`AttestApi`]), which the service implements;
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

/// The attestation service's API. `C` is what the edge admitted a call as: the
/// provider it concerns, what the caller is to it, and (on the server) the address it
/// comes from. Each method is the operation of [`OPERATIONS`] of the same name (an
/// attestation of either kind is `attest`); those that may run a tenant's policy, or
/// compile one, are async.
pub trait AttestApi {
    /// Who calls, about which provider.
    type Caller;
    /// Why a call failed.
    type Error;

    /// `GET /.well-known/openid-configuration`.
    fn openid_configuration(&self, c: &Self::Caller) -> Result<OpenIdConfiguration, Self::Error>;
    /// `GET /certs`.
    fn certs(&self, c: &Self::Caller) -> Result<Jwks, Self::Error>;
    /// `GET /nonce`.
    fn nonce(&self, c: &Self::Caller) -> Result<NonceResponse, Self::Error>;
    /// `POST /attest/SevSnpVm`, `POST /attest/AzureGuest`.
    fn attest(
        &self,
        c: &Self::Caller,
        req: AttestRequest,
    ) -> impl Future<Output = Result<AttestResponse, Self::Error>> + Send;
    /// `GET /policies/{type}`.
    fn get_policy(
        &self,
        c: &Self::Caller,
        kind: AttestationType,
    ) -> Result<PolicyInfo, Self::Error>;
    /// `PUT /policies/{type}`.
    fn set_policy(
        &self,
        c: &Self::Caller,
        kind: AttestationType,
        policy: &str,
    ) -> impl Future<Output = Result<PolicySet, Self::Error>> + Send;
    /// `POST /policies/{type}/test`.
    fn test_policy(
        &self,
        c: &Self::Caller,
        kind: AttestationType,
        req: PolicyTestRequest,
    ) -> impl Future<Output = Result<DryRun, Self::Error>> + Send;
    /// `GET /settings`.
    fn get_settings(&self, c: &Self::Caller) -> Result<ProviderSettings, Self::Error>;
    /// `PUT /settings`.
    fn set_settings(
        &self,
        c: &Self::Caller,
        settings: ProviderSettings,
    ) -> Result<ProviderSettings, Self::Error>;
    /// `POST /signing-keys/rotate`.
    fn rotate_signing_key(&self, c: &Self::Caller) -> Result<SigningKeyRotated, Self::Error>;
    /// `POST /signing-keys/{kid}/revoke`.
    fn revoke_signing_key(
        &self,
        c: &Self::Caller,
        kid: &str,
    ) -> Result<SigningKeyRevoked, Self::Error>;
    /// `POST /admin-credential/rotate`.
    fn rotate_admin_credential(&self, c: &Self::Caller) -> Result<AdminCredential, Self::Error>;
    /// `POST /admin-credential`.
    fn reset_admin_credential(&self, c: &Self::Caller) -> Result<AdminCredential, Self::Error>;
    /// `DELETE /admin-credential`.
    fn revoke_admin_credential(&self, c: &Self::Caller) -> Result<AdminRevoked, Self::Error>;
    /// `GET /audit`.
    fn audit_log(&self, c: &Self::Caller) -> Result<AuditLog, Self::Error>;
    /// `POST /providers/{provider}`.
    fn create_provider(
        &self,
        c: &Self::Caller,
        name: &str,
        settings: ProviderSettings,
    ) -> Result<ProviderCreated, Self::Error>;
    /// `GET /reference-values`.
    fn reference_values(&self, c: &Self::Caller) -> Result<ReferenceValueList, Self::Error>;
    /// `POST /reference-values/{region}`.
    fn add_reference_value(
        &self,
        c: &Self::Caller,
        region: &str,
        req: ReferenceValueRequest,
    ) -> Result<ReferenceValue, Self::Error>;
    /// `DELETE /reference-values/{region}/{measurement}`.
    fn remove_reference_value(
        &self,
        c: &Self::Caller,
        region: &str,
        measurement: &str,
    ) -> Result<ReferenceValueRemoved, Self::Error>;
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
