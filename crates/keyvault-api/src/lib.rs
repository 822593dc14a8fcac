//! The key vault's API contract, shared by the server (`keyvault`), its typed client
//! (`keyvault-client`) and the OpenAPI document (`openapi/keyvault.json`):
//!
//! - the request and response types ([`types`]), with Key Vault's names on the wire;
//! - every operation with its method, path and the access it needs ([`OPERATIONS`]);
//!   the server checks that access before it reads a body, from this table;
//! - the API as a trait ([`KeyVaultApi`]): the server implements it on the vault, the
//!   client over HTTP;
//! - the OpenAPI document, generated from this crate alone ([`openapi`]).

#![forbid(unsafe_code)]

mod doc;
pub mod types;

pub use doc::openapi;
pub use types::*;

/// What an operation needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A vault credential whose role may manage credentials and read the audit log
    /// (administrator).
    Admin,
    /// A vault credential whose role may create, import, update and wrap keys
    /// (administrator, crypto user).
    Write,
    /// A vault credential whose role may read public parts and list (any role).
    Read,
    /// A vault credential whose role may delete, recover and purge (administrator).
    Delete,
    /// A vault credential whose role may release (any role).
    Release,
    /// Any vault credential; the operation decides (a credential may rotate itself).
    Holder,
    /// The service administrator's credential.
    ServiceAdmin,
}

impl Access {
    /// The roles that have this access, as the OpenAPI document names them.
    pub fn roles(self) -> &'static str {
        match self {
            Access::Admin | Access::Delete => "administrator",
            Access::Write => "administrator, crypto_user",
            Access::Read | Access::Release => "administrator, crypto_user, release_user",
            Access::Holder => "administrator (any credential), or the credential's holder",
            Access::ServiceAdmin => "the service administrator",
        }
    }
}

/// One operation of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The OpenAPI `operationId` (and the [`KeyVaultApi`] method's name).
    pub id: &'static str,
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path template, `{name}` for parameters.
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// What a refused caller was not allowed to do ("create keys"), for the refusal's
    /// message and audit entry.
    pub what: &'static str,
}

macro_rules! operations {
    ($($id:ident: $method:literal $path:literal, $access:ident, $what:literal;)*) => {
        /// Every operation of the API, in the order the OpenAPI document lists them.
        pub const OPERATIONS: &[Operation] = &[$(Operation {
            id: stringify!($id),
            method: $method,
            path: $path,
            access: Access::$access,
            what: $what,
        }),*];
    };
}

operations! {
    list_keys: "GET" "/keys", Read, "list keys";
    create_key: "POST" "/keys/{name}/create", Write, "create keys";
    import_key: "PUT" "/keys/{name}", Write, "import keys";
    get_key: "GET" "/keys/{name}", Read, "read keys";
    delete_key: "DELETE" "/keys/{name}", Delete, "delete keys";
    list_versions: "GET" "/keys/{name}/versions", Read, "list key versions";
    get_key_version: "GET" "/keys/{name}/{version}", Read, "read keys";
    update_key: "PATCH" "/keys/{name}/{version}", Write, "update keys";
    release: "POST" "/keys/{name}/{version}/release", Release, "release keys";
    release_test: "POST" "/keys/{name}/{version}/release/test", Release, "test releases";
    wrap_key: "POST" "/keys/{name}/{version}/wrapkey", Write, "wrap keys";
    attested_unwrap: "POST" "/keys/{name}/{version}/unwrapkey/attested", Release, "unwrap for attested callers";
    list_deleted: "GET" "/deletedkeys", Read, "list deleted keys";
    get_deleted: "GET" "/deletedkeys/{name}", Read, "read deleted keys";
    purge_key: "DELETE" "/deletedkeys/{name}", Delete, "purge keys";
    recover_key: "POST" "/deletedkeys/{name}/recover", Delete, "recover keys";
    create_credential: "POST" "/credentials", Admin, "manage credentials";
    list_credentials: "GET" "/credentials", Admin, "manage credentials";
    revoke_credential: "DELETE" "/credentials/{id}", Admin, "manage credentials";
    rotate_credential: "POST" "/credentials/{id}/rotate", Holder, "rotate other credentials";
    audit_log: "GET" "/audit", Admin, "read the audit log";
    create_vault: "POST" "/vaults/{name}", ServiceAdmin, "create vaults";
    list_regions: "GET" "/regions", ServiceAdmin, "list regions";
    create_region: "POST" "/regions/{region}", ServiceAdmin, "create regions";
    rotate_region: "POST" "/regions/{region}/rotate", ServiceAdmin, "rotate region roots";
}

/// The operation named `id`.
pub fn operation(id: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.id == id)
}

/// The key vault's API. `C` is what authenticates a call: on the server, the caller
/// the edge authenticated and authorized for the operation (per [`OPERATIONS`]); on a
/// client, `()` (the client holds its credential). Each method is the operation of
/// [`OPERATIONS`] of the same name; `get_key` with a version is `get_key_version`.
pub trait KeyVaultApi {
    /// Who calls.
    type Caller;
    /// Why a call failed.
    type Error;

    /// `GET /keys`.
    fn list_keys(&self, c: &Self::Caller) -> Result<KeyList, Self::Error>;
    /// `POST /keys/{name}/create`.
    fn create_key(
        &self,
        c: &Self::Caller,
        name: &str,
        req: CreateKeyRequest,
    ) -> Result<KeyBundle, Self::Error>;
    /// `PUT /keys/{name}`.
    fn import_key(
        &self,
        c: &Self::Caller,
        name: &str,
        req: ImportKeyRequest,
    ) -> Result<KeyBundle, Self::Error>;
    /// `GET /keys/{name}` (`version` `None`) and `GET /keys/{name}/{version}`.
    fn get_key(
        &self,
        c: &Self::Caller,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyBundle, Self::Error>;
    /// `DELETE /keys/{name}`.
    fn delete_key(&self, c: &Self::Caller, name: &str) -> Result<KeyBundle, Self::Error>;
    /// `GET /keys/{name}/versions`.
    fn list_versions(&self, c: &Self::Caller, name: &str) -> Result<KeyList, Self::Error>;
    /// `PATCH /keys/{name}/{version}`.
    fn update_key(
        &self,
        c: &Self::Caller,
        name: &str,
        version: &str,
        req: UpdateKeyRequest,
    ) -> Result<KeyBundle, Self::Error>;
    /// `POST /keys/{name}/{version}/release`.
    fn release(
        &self,
        c: &Self::Caller,
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<SignedResult, Self::Error>;
    /// `POST /keys/{name}/{version}/release/test`.
    fn release_test(
        &self,
        c: &Self::Caller,
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<ReleaseTestResult, Self::Error>;
    /// `POST /keys/{name}/{version}/wrapkey`.
    fn wrap_key(
        &self,
        c: &Self::Caller,
        name: &str,
        version: &str,
        req: WrapKeyRequest,
    ) -> Result<KeyOperationResult, Self::Error>;
    /// `POST /keys/{name}/{version}/unwrapkey/attested`.
    fn attested_unwrap(
        &self,
        c: &Self::Caller,
        name: &str,
        version: &str,
        req: AttestedUnwrapRequest,
    ) -> Result<SignedResult, Self::Error>;
    /// `GET /deletedkeys`.
    fn list_deleted(&self, c: &Self::Caller) -> Result<KeyList, Self::Error>;
    /// `GET /deletedkeys/{name}`.
    fn get_deleted(&self, c: &Self::Caller, name: &str) -> Result<KeyBundle, Self::Error>;
    /// `DELETE /deletedkeys/{name}`.
    fn purge_key(&self, c: &Self::Caller, name: &str) -> Result<(), Self::Error>;
    /// `POST /deletedkeys/{name}/recover`.
    fn recover_key(&self, c: &Self::Caller, name: &str) -> Result<KeyBundle, Self::Error>;
    /// `POST /credentials`.
    fn create_credential(
        &self,
        c: &Self::Caller,
        req: CreateCredentialRequest,
    ) -> Result<NewCredential, Self::Error>;
    /// `GET /credentials`.
    fn list_credentials(&self, c: &Self::Caller) -> Result<CredentialList, Self::Error>;
    /// `DELETE /credentials/{id}`.
    fn revoke_credential(&self, c: &Self::Caller, id: &str) -> Result<Revoked, Self::Error>;
    /// `POST /credentials/{id}/rotate`.
    fn rotate_credential(
        &self,
        c: &Self::Caller,
        id: &str,
    ) -> Result<RotatedCredential, Self::Error>;
    /// `GET /audit`.
    fn audit_log(&self, c: &Self::Caller) -> Result<AuditLog, Self::Error>;
    /// `POST /vaults/{name}`.
    fn create_vault(&self, c: &Self::Caller, name: &str) -> Result<NewCredential, Self::Error>;
    /// `GET /regions`.
    fn list_regions(&self, c: &Self::Caller) -> Result<RegionList, Self::Error>;
    /// `POST /regions/{region}`.
    fn create_region(&self, c: &Self::Caller, region: &str) -> Result<RegionCreated, Self::Error>;
    /// `POST /regions/{region}/rotate`.
    fn rotate_region(&self, c: &Self::Caller, region: &str) -> Result<RegionRotated, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_by_id_and_by_route() {
        let mut ids = std::collections::HashSet::new();
        let mut routes = std::collections::HashSet::new();
        for o in OPERATIONS {
            assert!(ids.insert(o.id), "{} twice", o.id);
            assert!(
                routes.insert((o.method, o.path)),
                "{} {} twice",
                o.method,
                o.path
            );
        }
        assert_eq!(
            operation("release").map(|o| o.access),
            Some(Access::Release)
        );
        assert!(operation("nope").is_none());
    }
}
