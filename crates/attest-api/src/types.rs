//! Request and response bodies. Names on the wire are Microsoft Azure Attestation's
//! where MAA has the operation (`token`, `runtimeData`, `draftPolicyForAttestation`);
//! opencvm's own operations use camelCase likewise. Administrator credentials are kept
//! out of `Debug` and zeroized on drop.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The kinds of evidence the service attests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestationType {
    /// A raw SEV-SNP report (`/attest/SevSnpVm`).
    SevSnpVm,
    /// vTPM evidence with an SNP isolation report (`/attest/AzureGuest`).
    AzureGuest,
}

impl AttestationType {
    /// Every type.
    pub const ALL: [AttestationType; 2] = [AttestationType::SevSnpVm, AttestationType::AzureGuest];

    /// The name in API paths.
    pub fn path_name(self) -> &'static str {
        match self {
            AttestationType::SevSnpVm => "SevSnpVm",
            AttestationType::AzureGuest => "AzureGuest",
        }
    }

    /// The `x-ms-attestation-type` claim value.
    pub fn claim_name(self) -> &'static str {
        match self {
            AttestationType::SevSnpVm => "sevsnpvm",
            AttestationType::AzureGuest => "azurevm",
        }
    }

    /// Parses a path name (case-insensitive).
    pub fn from_path(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.path_name().eq_ignore_ascii_case(name))
    }
}

/// An attestation request, of either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttestRequest {
    /// `POST /attest/SevSnpVm`.
    SevSnpVm(SevSnpVmRequest),
    /// `POST /attest/AzureGuest`.
    AzureGuest(AzureGuestRequest),
}

impl AttestRequest {
    /// Its kind.
    pub fn kind(&self) -> AttestationType {
        match self {
            AttestRequest::SevSnpVm(_) => AttestationType::SevSnpVm,
            AttestRequest::AzureGuest(_) => AttestationType::AzureGuest,
        }
    }
}

/// Minimum security patch level per TCB component (the appraisal's `min_tcb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// Boot loader.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS (TEE).
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware.
    #[serde(default)]
    pub snp: u8,
    /// Microcode.
    #[serde(default)]
    pub microcode: u8,
    /// FMC (applies to Turin reports only).
    #[serde(default)]
    pub fmc: u8,
}

/// A provider's settings, visible to its policies as `data.settings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Accept evidence signed by the emulated AMD secure processor.
    #[serde(default)]
    pub allow_emulated: bool,
    /// Minimum reported TCB components, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<MinTcb>,
    /// Allowed launch measurements (hex, lower case); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<String>,
    /// Refuse evidence whose certificate chain was not checked against AMD's CRL (the
    /// emulator's, for emulated evidence).
    #[serde(default)]
    pub require_revocation_check: bool,
    /// Migration agents (their REPORT_ID_MA, 64 lower-case hex digits) a guest whose
    /// policy allows one may be bound to; empty: such guests are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migration_agents: Vec<String>,
}

/// `runtimeData` / `initTimeData` of an attestation request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataField {
    /// The data, base64url.
    pub data: String,
    /// `Binary` (default) or `JSON`.
    #[serde(rename = "dataType", default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// `SHA256` (default) or `SHA384`: how REPORT_DATA binds it (opencvm extension).
    #[serde(
        rename = "hashAlgorithm",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hash_algorithm: Option<String>,
}

/// `POST /attest/SevSnpVm`: an SNP report with its certificates, as MAA takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SevSnpVmRequest {
    /// base64url of `{"SnpReport": base64url(report), "VcekCertChain"?: base64url(PEM
    /// chain)}`.
    pub report: String,
    /// Data bound by REPORT_DATA (its hash).
    #[serde(
        rename = "runtimeData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_data: Option<DataField>,
    /// Data bound by HOST_DATA (its SHA-256).
    #[serde(
        rename = "initTimeData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub init_time_data: Option<DataField>,
    /// A nonce from `GET /nonce`, also bound in JSON `runtimeData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// A draft policy (Rego) to evaluate instead of the one in force: a dry run that
    /// issues no token (needs the provider's administrator credential).
    #[serde(
        rename = "draftPolicyForAttestation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub draft_policy: Option<String>,
}

/// `POST /attest/AzureGuest`: Azure's guest attestation (TPM quote, event log, HCL
/// report), as MAA takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AzureGuestRequest {
    /// base64url of the guest's `AttestationInfo` JSON.
    #[serde(rename = "AttestationInfo")]
    pub attestation_info: String,
    /// A nonce from `GET /nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// A draft policy, as for SevSnpVm.
    #[serde(
        rename = "draftPolicyForAttestation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub draft_policy: Option<String>,
}

/// An attestation token (a JWT signed by the provider; its keys at `/certs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
}

/// Why a policy denied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DenyReason {
    /// The rule's name.
    pub rule: String,
    /// Why.
    pub message: String,
}

/// The detail of a `policy_denied` refusal: the policy's reasons and its version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyDenied {
    /// The policy's reasons to deny.
    pub deny: Vec<DenyReason>,
    /// The version of the policy in force.
    #[serde(rename = "policyVersion")]
    pub policy_version: i64,
}

/// A dry run's answer: the decision, why, and the claims a token would carry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Always true.
    #[serde(rename = "dryRun")]
    pub dry_run: bool,
    /// `allow` or `deny`.
    pub decision: String,
    /// The policy's reasons to deny.
    pub deny: Vec<DenyReason>,
    /// The policy's hash (`x-ms-policy-hash`).
    #[serde(rename = "policyHash")]
    pub policy_hash: String,
    /// The version of the policy in force; null for a draft.
    #[serde(rename = "policyVersion")]
    pub policy_version: Option<i64>,
    /// The claims.
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
}

/// An attestation's answer: a token, or a dry run's decision for a draft policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AttestResponse {
    /// A token.
    Token(TokenResponse),
    /// A dry run (the request carried `draftPolicyForAttestation`).
    DryRun(DryRun),
}

/// `GET /nonce`: a nonce for this provider only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NonceResponse {
    /// The nonce.
    pub nonce: String,
    /// When it expires (Unix seconds).
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
}

/// The provider's OpenID Connect discovery document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpenIdConfiguration {
    /// The issuer (`iss` of its tokens).
    pub issuer: String,
    /// `{issuer}/certs`.
    pub jwks_uri: String,
    /// The token signing algorithms.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// `token`, `none`.
    pub response_types_supported: Vec<String>,
    /// `public`.
    pub subject_types_supported: Vec<String>,
    /// The claims tokens may carry.
    pub claims_supported: Vec<String>,
    /// Always null.
    pub revocation_endpoint: Option<String>,
}

/// A public signing key, and the provider's set of them (`GET /certs`).
pub use jose::{Jwk, Jwks};

/// `PUT /policies/{type}` as JSON (a `text/plain` body is the policy itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRequest {
    /// The policy (Rego).
    pub policy: String,
}

/// The policy in force for an attestation type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    /// `SevSnpVm` or `AzureGuest`.
    #[serde(rename = "attestationType")]
    pub attestation_type: String,
    /// Its version (0: the built-in default).
    pub version: i64,
    /// Whether it is the built-in default.
    pub default: bool,
    /// The policy (Rego).
    pub policy: String,
    /// Its hash.
    #[serde(rename = "policyHash")]
    pub policy_hash: String,
}

/// A policy set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicySet {
    /// `SevSnpVm` or `AzureGuest`.
    #[serde(rename = "attestationType")]
    pub attestation_type: String,
    /// Its new version.
    pub version: i64,
    /// Its hash.
    #[serde(rename = "policyHash")]
    pub policy_hash: String,
}

/// `POST /policies/{type}/test`: evidence (an attestation request's body) and,
/// optionally, a draft policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestRequest {
    /// A draft policy (needs the provider's administrator credential); default: the
    /// policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The evidence, as an attestation request of the type.
    #[schema(value_type = Object)]
    pub evidence: Value,
}

/// A named provider, created; its administrator credential is shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct ProviderCreated {
    /// Its name.
    pub name: String,
    /// Its issuer URL.
    pub issuer: String,
    /// Its administrator credential.
    #[serde(rename = "adminToken")]
    pub admin_token: String,
}

impl std::fmt::Debug for ProviderCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderCreated")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A provider's new administrator credential (shown this once).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct AdminCredential {
    /// The provider.
    pub provider: String,
    /// The credential.
    #[serde(rename = "adminToken")]
    pub admin_token: String,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredential")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// A provider's administrator credential, revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminRevoked {
    /// The provider.
    pub provider: String,
    /// Always true.
    pub revoked: bool,
}

/// A new signing key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyRotated {
    /// The key that signs from now on.
    pub kid: Option<String>,
    /// When the keys it replaces leave the JWKS (Unix seconds).
    #[serde(rename = "previousKeysRetireAt")]
    pub previous_keys_retire_at: i64,
}

/// A signing key, revoked (out of the JWKS at once).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyRevoked {
    /// The revoked key.
    pub revoked: String,
    /// The key that signs now.
    pub kid: Option<String>,
}

/// `POST /reference-values/{region}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValueRequest {
    /// The SNP launch measurement (96 hex digits).
    pub measurement: String,
    /// What it measures (default `ovmf`).
    #[serde(default = "ovmf")]
    pub component: String,
    /// How it was obtained.
    #[serde(default)]
    pub source: String,
}

fn ovmf() -> String {
    "ovmf".into()
}

/// A launch measurement the platform runs, registered by its operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReferenceValue {
    /// The region whose hosts run it.
    pub region: String,
    /// The measurement (96 lower-case hex digits).
    pub measurement: String,
    /// What it measures.
    pub component: String,
    /// How it was obtained.
    pub source: String,
    /// When it was registered (Unix seconds).
    pub created: i64,
}

/// `GET /reference-values`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReferenceValueList {
    /// Every registered reference value.
    pub value: Vec<ReferenceValue>,
}

/// A reference value, removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReferenceValueRemoved {
    /// `{region}/{measurement}`.
    pub removed: String,
}

/// One entry of a provider's audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Sequence number.
    pub seq: i64,
    /// When (Unix seconds).
    pub ts: i64,
    /// The provider concerned.
    pub provider: String,
    /// `administrator` or `default-administrator`.
    pub caller: String,
    /// The change.
    pub op: String,
    /// What it concerned.
    pub subject: String,
    /// `allowed` or `denied`.
    pub outcome: String,
    /// The refusal code, if any.
    pub code: String,
}

/// `GET /audit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// The provider's entries, oldest first.
    pub value: Vec<AuditRecord>,
}

pub use api_contract::{ErrorBody, ErrorResponse};
