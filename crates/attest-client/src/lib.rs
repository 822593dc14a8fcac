//! A typed client of the attestation service: each operation of `attest-api`'s table
//! as a method, for the default provider or a named one ([`Client::for_provider`]),
//! over the one HTTP client stack (`api-client`). The CLI's `cvm attest` commands and
//! the key release (`key-release`) use it.
//!
//! ```no_run
//! # fn main() -> Result<(), api_client::ClientError> {
//! let svc = attest_client::Client::new(api_client::agent(None)?, "https://attest:8443", None);
//! let nonce = svc.for_provider("tenant").nonce()?;
//! println!("{} until {}", nonce.nonce, nonce.expires_at);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub use api_client::{ClientError, agent};
use api_client::{Method, Transport, segment as s};
use attest_api::*;

/// The attestation service at one base URL, with an administrator credential or none.
#[derive(Debug)]
pub struct Client {
    t: Transport,
    /// `""` for the default provider, `/providers/{name}` for a named one.
    prefix: String,
}

type R<T> = Result<T, ClientError>;

impl Client {
    /// The service at `base`; `credential` is an administrator's (none is needed to
    /// attest, for nonces, keys and reference values).
    pub fn new(agent: ureq::Agent, base: &str, credential: Option<&str>) -> Self {
        Client {
            t: Transport::new(agent, base, credential.map(str::to_string)),
            prefix: String::new(),
        }
    }

    /// The same client for the named provider's operations.
    pub fn for_provider(self, name: &str) -> Self {
        Client {
            prefix: format!("/providers/{}", s(name)),
            ..self
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> R<T> {
        self.t
            .call::<(), T>(Method::Get, &format!("{}{path}", self.prefix), None)
    }

    fn send<B: serde::Serialize + ?Sized, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> R<T> {
        self.t.call(method, &format!("{}{path}", self.prefix), body)
    }

    /// The provider's OpenID Connect discovery document.
    pub fn openid_configuration(&self) -> R<OpenIdConfiguration> {
        self.get("/.well-known/openid-configuration")
    }
    /// The provider's signing keys.
    pub fn certs(&self) -> R<Jwks> {
        self.get("/certs")
    }
    /// A nonce for this provider.
    pub fn nonce(&self) -> R<NonceResponse> {
        self.get("/nonce")
    }
    /// Attests SNP evidence: a token (or a dry run, for a draft policy).
    pub fn attest_sev_snp_vm(&self, req: &SevSnpVmRequest) -> R<AttestResponse> {
        self.send(Method::Post, "/attest/SevSnpVm", Some(req))
    }
    /// Attests Azure guest evidence.
    pub fn attest_azure_guest(&self, req: &AzureGuestRequest) -> R<AttestResponse> {
        self.send(Method::Post, "/attest/AzureGuest", Some(req))
    }
    /// The policy in force for `kind` (`SevSnpVm`, `AzureGuest`).
    pub fn get_policy(&self, kind: &str) -> R<PolicyInfo> {
        self.get(&format!("/policies/{}", s(kind)))
    }
    /// Sets the policy for `kind`.
    pub fn set_policy(&self, kind: &str, policy: &str) -> R<PolicySet> {
        let req = PolicyRequest {
            policy: policy.to_string(),
        };
        self.send(Method::Put, &format!("/policies/{}", s(kind)), Some(&req))
    }
    /// A dry run of evidence against the policy in force or a draft.
    pub fn test_policy(&self, kind: &str, req: &PolicyTestRequest) -> R<DryRun> {
        self.send(
            Method::Post,
            &format!("/policies/{}/test", s(kind)),
            Some(req),
        )
    }
    /// The provider's settings.
    pub fn get_settings(&self) -> R<ProviderSettings> {
        self.get("/settings")
    }
    /// Replaces the provider's settings.
    pub fn set_settings(&self, settings: &ProviderSettings) -> R<ProviderSettings> {
        self.send(Method::Put, "/settings", Some(settings))
    }
    /// A new signing key.
    pub fn rotate_signing_key(&self) -> R<SigningKeyRotated> {
        self.send::<(), _>(Method::Post, "/signing-keys/rotate", None)
    }
    /// Revokes signing key `kid`.
    pub fn revoke_signing_key(&self, kid: &str) -> R<SigningKeyRevoked> {
        self.send::<(), _>(
            Method::Post,
            &format!("/signing-keys/{}/revoke", s(kid)),
            None,
        )
    }
    /// A new administrator credential, by the provider's administrator.
    pub fn rotate_admin_credential(&self) -> R<AdminCredential> {
        self.send::<(), _>(Method::Post, "/admin-credential/rotate", None)
    }
    /// A new administrator credential, by the default provider's administrator.
    pub fn reset_admin_credential(&self) -> R<AdminCredential> {
        self.send::<(), _>(Method::Post, "/admin-credential", None)
    }
    /// Revokes the provider's administrator credential.
    pub fn revoke_admin_credential(&self) -> R<AdminRevoked> {
        self.send::<(), _>(Method::Delete, "/admin-credential", None)
    }
    /// The provider's audit log.
    pub fn audit_log(&self) -> R<AuditLog> {
        self.get("/audit")
    }
    /// Creates the named provider `name` (the default provider's administrator).
    pub fn create_provider(&self, name: &str, settings: &ProviderSettings) -> R<ProviderCreated> {
        self.t.call(
            Method::Post,
            &format!("/providers/{}", s(name)),
            Some(settings),
        )
    }
    /// Every registered reference value.
    pub fn reference_values(&self) -> R<ReferenceValueList> {
        self.t.call::<(), _>(Method::Get, "/reference-values", None)
    }
    /// Registers a reference value for `region` (the default provider's administrator).
    pub fn add_reference_value(
        &self,
        region: &str,
        req: &ReferenceValueRequest,
    ) -> R<ReferenceValue> {
        self.t.call(
            Method::Post,
            &format!("/reference-values/{}", s(region)),
            Some(req),
        )
    }
    /// Removes a reference value.
    pub fn remove_reference_value(
        &self,
        region: &str,
        measurement: &str,
    ) -> R<ReferenceValueRemoved> {
        self.t.call::<(), _>(
            Method::Delete,
            &format!("/reference-values/{}/{}", s(region), s(measurement)),
            None,
        )
    }
}
