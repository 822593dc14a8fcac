//! A typed client of the key vault: [`KeyVaultApi`] over HTTP, with one vault
//! credential (or the service administrator's). The CLI's `cvm key`, `cvm keyvault
//! region` and the tests use it; so will the host agent.
//!
//! ```no_run
//! use keyvault_api::KeyVaultApi as _;
//! # fn main() -> Result<(), api_client::ClientError> {
//! let vault = keyvault_client::Client::new(api_client::agent(None)?, "https://vault:8443", "credential");
//! for key in vault.list_keys(&())?.value {
//!     println!("{}", key.kid);
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub use api_client::{ClientError, agent};
use api_client::{Method, Transport, segment as s};
use keyvault_api::*;

/// The key vault at one base URL, called with one credential.
#[derive(Debug)]
pub struct Client {
    t: Transport,
}

impl Client {
    /// The vault at `base`, presenting `credential`.
    pub fn new(agent: ureq::Agent, base: &str, credential: &str) -> Self {
        Client {
            t: Transport::new(agent, base, Some(credential.to_string())),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.t.call::<(), T>(Method::Get, path, None)
    }

    fn send<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.t.call(method, path, Some(body))
    }

    fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.t.call::<(), T>(Method::Post, path, None)
    }
}

impl KeyVaultApi for Client {
    type Caller = ();
    type Error = ClientError;

    fn list_keys(&self, _: &()) -> Result<KeyList, ClientError> {
        self.get("/keys")
    }
    fn create_key(
        &self,
        _: &(),
        name: &str,
        req: CreateKeyRequest,
    ) -> Result<KeyBundle, ClientError> {
        self.send(Method::Post, &format!("/keys/{}/create", s(name)), &req)
    }
    fn import_key(
        &self,
        _: &(),
        name: &str,
        req: ImportKeyRequest,
    ) -> Result<KeyBundle, ClientError> {
        self.send(Method::Put, &format!("/keys/{}", s(name)), &req)
    }
    fn get_key(&self, _: &(), name: &str, version: Option<&str>) -> Result<KeyBundle, ClientError> {
        match version {
            None => self.get(&format!("/keys/{}", s(name))),
            Some(v) => self.get(&format!("/keys/{}/{}", s(name), s(v))),
        }
    }
    fn delete_key(&self, _: &(), name: &str) -> Result<KeyBundle, ClientError> {
        self.t
            .call::<(), _>(Method::Delete, &format!("/keys/{}", s(name)), None)
    }
    fn list_versions(&self, _: &(), name: &str) -> Result<KeyList, ClientError> {
        self.get(&format!("/keys/{}/versions", s(name)))
    }
    fn update_key(
        &self,
        _: &(),
        name: &str,
        version: &str,
        req: UpdateKeyRequest,
    ) -> Result<KeyBundle, ClientError> {
        self.send(
            Method::Patch,
            &format!("/keys/{}/{}", s(name), s(version)),
            &req,
        )
    }
    fn release(
        &self,
        _: &(),
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<SignedResult, ClientError> {
        self.send(
            Method::Post,
            &format!("/keys/{}/{}/release", s(name), s(version)),
            &req,
        )
    }
    fn release_test(
        &self,
        _: &(),
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<ReleaseTestResult, ClientError> {
        self.send(
            Method::Post,
            &format!("/keys/{}/{}/release/test", s(name), s(version)),
            &req,
        )
    }
    fn wrap_key(
        &self,
        _: &(),
        name: &str,
        version: &str,
        req: WrapKeyRequest,
    ) -> Result<KeyOperationResult, ClientError> {
        self.send(
            Method::Post,
            &format!("/keys/{}/{}/wrapkey", s(name), s(version)),
            &req,
        )
    }
    fn attested_unwrap(
        &self,
        _: &(),
        name: &str,
        version: &str,
        req: AttestedUnwrapRequest,
    ) -> Result<SignedResult, ClientError> {
        self.send(
            Method::Post,
            &format!("/keys/{}/{}/unwrapkey/attested", s(name), s(version)),
            &req,
        )
    }
    fn list_deleted(&self, _: &()) -> Result<KeyList, ClientError> {
        self.get("/deletedkeys")
    }
    fn get_deleted(&self, _: &(), name: &str) -> Result<KeyBundle, ClientError> {
        self.get(&format!("/deletedkeys/{}", s(name)))
    }
    fn purge_key(&self, _: &(), name: &str) -> Result<(), ClientError> {
        self.t
            .call::<(), ()>(Method::Delete, &format!("/deletedkeys/{}", s(name)), None)
    }
    fn recover_key(&self, _: &(), name: &str) -> Result<KeyBundle, ClientError> {
        self.post(&format!("/deletedkeys/{}/recover", s(name)))
    }
    fn create_credential(
        &self,
        _: &(),
        req: CreateCredentialRequest,
    ) -> Result<NewCredential, ClientError> {
        self.send(Method::Post, "/credentials", &req)
    }
    fn list_credentials(&self, _: &()) -> Result<CredentialList, ClientError> {
        self.get("/credentials")
    }
    fn revoke_credential(&self, _: &(), id: &str) -> Result<Revoked, ClientError> {
        self.t
            .call::<(), _>(Method::Delete, &format!("/credentials/{}", s(id)), None)
    }
    fn rotate_credential(&self, _: &(), id: &str) -> Result<RotatedCredential, ClientError> {
        self.post(&format!("/credentials/{}/rotate", s(id)))
    }
    fn audit_log(&self, _: &()) -> Result<AuditLog, ClientError> {
        self.get("/audit")
    }
    fn create_vault(&self, _: &(), name: &str) -> Result<NewCredential, ClientError> {
        self.post(&format!("/vaults/{}", s(name)))
    }
    fn list_regions(&self, _: &()) -> Result<RegionList, ClientError> {
        self.get("/regions")
    }
    fn create_region(&self, _: &(), region: &str) -> Result<RegionCreated, ClientError> {
        self.post(&format!("/regions/{}", s(region)))
    }
    fn rotate_region(&self, _: &(), region: &str) -> Result<RegionRotated, ClientError> {
        self.post(&format!("/regions/{}/rotate", s(region)))
    }
}
