//! Request and response bodies, named on the wire as Key Vault names them (`recoveryId`,
//! `nextLink`, `key_ops`). Requests that Key Vault clients send with members we ignore
//! accept unknown members; the opencvm-only ones refuse them. Secrets (credentials,
//! key material to wrap, private JWK members) are kept out of `Debug` and zeroized on
//! drop where the type owns them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop};

fn redacted(f: &mut std::fmt::Formatter<'_>, name: &str, fields: &[&str]) -> std::fmt::Result {
    let mut d = f.debug_struct(name);
    for n in fields {
        d.field(n, &"<redacted>");
    }
    d.finish_non_exhaustive()
}

/// A key's attributes as a request sets them; every member optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    /// Whether the key may be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Whether the key may be released (create and import only; needs a release
    /// policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
    /// Accepted and ignored (Key Vault returns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    /// Accepted and ignored.
    #[serde(
        default,
        rename = "recoveryLevel",
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_level: Option<String>,
    /// Accepted and ignored: whether a key is platform- or customer-managed follows
    /// from its vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<String>,
}

/// A release policy as Key Vault carries it: the policy document (JSON), base64url.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyReleasePolicy {
    /// `application/json; charset=utf-8`.
    #[serde(rename = "contentType")]
    pub content_type: String,
    /// The policy document, base64url.
    pub data: String,
    /// An immutable policy never changes.
    pub immutable: bool,
}

/// `POST /keys/{name}/create`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateKeyRequest {
    /// `RSA`, `EC` or `oct` (a `-HSM` suffix is accepted).
    pub kty: String,
    /// RSA modulus size: 2048, 3072 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<u32>,
    /// EC curve: `P-256` or `P-384`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Accepted and ignored: a key's operations follow from its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    /// Tags (stored as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
    /// The release policy (an exportable key needs one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<KeyReleasePolicy>)]
    pub release_policy: Option<Value>,
}

/// `PUT /keys/{name}`: a plain private JWK, or a BYOK blob in `key.key_hsm`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImportKeyRequest {
    /// The key: a private JWK (`oct`: `k`; `RSA`: `n`, `e`, `d`, `p`, `q`, `dp`, `dq`,
    /// `qi`; `EC`: `crv`, `x`, `y`, `d`), or `kty` and `key_hsm` (BYOK).
    #[schema(value_type = Object)]
    pub key: Map<String, Value>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
    /// The release policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<KeyReleasePolicy>)]
    pub release_policy: Option<Value>,
    /// Accepted and ignored.
    #[serde(default, rename = "Hsm", skip_serializing_if = "Option::is_none")]
    pub hsm: Option<bool>,
}

impl ImportKeyRequest {
    /// An import of `key` with no attributes, tags or release policy.
    pub fn new(key: Map<String, Value>) -> Self {
        ImportKeyRequest {
            key,
            attributes: None,
            tags: None,
            release_policy: None,
            hsm: None,
        }
    }
}

/// Overwrites every string in `v`.
fn zeroize_value(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(zeroize_value),
        Value::Object(o) => o.values_mut().for_each(zeroize_value),
        _ => {}
    }
}

/// The key's members (private ones among them) are overwritten when the request is
/// dropped, on the server and in a client alike.
impl Drop for ImportKeyRequest {
    fn drop(&mut self) {
        self.key.values_mut().for_each(zeroize_value);
    }
}

impl std::fmt::Debug for ImportKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(f, "ImportKeyRequest", &["key"])
    }
}

/// `PATCH /keys/{name}/{version}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// Attributes to change (`exportable` cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    /// New tags (replace the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
    /// A new release policy (refused when the current one is immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<KeyReleasePolicy>)]
    pub release_policy: Option<Value>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
}

/// `POST /keys/{name}/{version}/release` and `.../release/test`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The attestation token.
    pub target: String,
    /// Echoed in the signed response (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// `CKM_RSA_AES_KEY_WRAP` (default), `RSA_AES_KEY_WRAP_256` or
    /// `RSA_AES_KEY_WRAP_384`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<String>,
}

/// `POST /keys/{name}/{version}/wrapkey`: `value` is the key to wrap (secret).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct WrapKeyRequest {
    /// `A256KW`.
    pub alg: String,
    /// The key to wrap, base64url.
    pub value: String,
}

impl std::fmt::Debug for WrapKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(f, "WrapKeyRequest", &["value"])
    }
}

/// `POST /keys/{name}/{version}/unwrapkey/attested`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestedUnwrapRequest {
    /// The attestation token.
    pub target: String,
    /// `A256KW`.
    pub alg: String,
    /// The wrapped key, base64url.
    pub value: String,
    /// As for release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<String>,
    /// Echoed in the signed response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `POST /credentials`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateCredentialRequest {
    /// `administrator`, `crypto_user` or `release_user` (a value that is not a string
    /// names no role, and is refused as an unknown one).
    #[serde(default, deserialize_with = "string_or_none")]
    pub role: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Value::deserialize(d)?.as_str().map(str::to_string))
}

/// A key's public part, as a JWK.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JsonWebKey {
    /// `{vault}/keys/{name}/{version}`.
    #[serde(default)]
    pub kid: String,
    /// `RSA`, `EC` or `oct`.
    pub kty: String,
    /// What the key may do.
    #[serde(default)]
    pub key_ops: Vec<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The key wrapped to the release target (only inside a signed release response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hsm: Option<String>,
}

/// A key version's attributes as the vault reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyAttributes {
    /// Whether the key may be used.
    pub enabled: bool,
    /// Created (Unix seconds).
    pub created: i64,
    /// Last changed (Unix seconds).
    pub updated: i64,
    /// Always `Recoverable+Purgeable`.
    #[serde(rename = "recoveryLevel")]
    pub recovery_level: String,
    /// Whether the key may be released.
    pub exportable: bool,
    /// `platform` (in a region's platform vault) or `customer`.
    pub managed: String,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

/// One key version: public part, attributes, tags, release policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyBundle {
    /// The public part.
    pub key: JsonWebKey,
    /// Attributes.
    pub attributes: KeyAttributes,
    /// Tags.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
    /// The release policy, if the key has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<KeyReleasePolicy>,
    /// For a deleted key: `{vault}/deletedkeys/{name}`.
    #[serde(
        default,
        rename = "recoveryId",
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_id: Option<String>,
}

/// A key in a list: its id, and for versions and deleted keys its attributes and tags.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyItem {
    /// `{vault}/keys/{name}` or `{vault}/keys/{name}/{version}`.
    pub kid: String,
    /// For a deleted key: `{vault}/deletedkeys/{name}`.
    #[serde(
        default,
        rename = "recoveryId",
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_id: Option<String>,
    /// Attributes (versions and deleted keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    /// Tags (versions and deleted keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
}

/// A page of keys (the only page: `nextLink` is null).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// The keys.
    pub value: Vec<KeyItem>,
    /// Always null.
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

/// A JWS signed by the vault (release, attested unwrap).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedResult {
    /// The compact JWS; its header carries the vault's certificate (`x5c`).
    pub value: String,
}

/// The payload of a release's JWS (`SignedResult::value`): what was asked, and the key
/// wrapped to the token's key (`response.key.key.key_hsm`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleasePayload {
    /// What was asked.
    pub request: ReleasePayloadRequest,
    /// The key.
    pub response: ReleasePayloadResponse,
}

/// The request a release answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleasePayloadRequest {
    /// `7.4`.
    #[serde(rename = "api-version")]
    pub api_version: String,
    /// The wrapping mechanism.
    pub enc: String,
    /// The key version released.
    pub kid: String,
    /// The request's nonce, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The key a release carries: its bundle, `key.key_hsm` set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleasePayloadResponse {
    /// The key version, wrapped.
    pub key: KeyBundle,
}

/// The payload of an attested unwrap's JWS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnwrapPayload {
    /// What was asked.
    pub request: UnwrapPayloadRequest,
    /// The data key, wrapped to the token's key.
    pub response: UnwrapPayloadResponse,
}

/// The request an attested unwrap answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnwrapPayloadRequest {
    /// The wrapping mechanism.
    pub enc: String,
    /// The key version that unwrapped.
    pub kid: String,
    /// The request's nonce, echoed (null without one).
    pub nonce: Option<String>,
}

/// An attested unwrap's wrapped data key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnwrapPayloadResponse {
    /// The data key in Key Vault's `key_hsm` form.
    pub key_hsm: String,
}

/// `wrapkey`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyOperationResult {
    /// The key version used.
    pub kid: String,
    /// The wrapped key, base64url.
    pub value: String,
}

/// A dry run's answer: whether the token would release the key, and why not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseTestResult {
    /// Whether a release with this token would succeed.
    pub allowed: bool,
    /// Why not (a refusal code), or null.
    pub code: Option<String>,
    /// Why not, in words (when the key or the token failed before the policy ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy's decision: which authority blocks matched and which conditions
    /// failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<Value>,
}

/// A credential issued now (shown this once): a new vault's first, or `POST
/// /credentials`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct NewCredential {
    /// The vault.
    pub vault: String,
    /// The credential (a bearer token).
    pub credential: String,
    /// Its id (named in audit entries; used to revoke or rotate it).
    pub id: String,
    /// Its role.
    pub role: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(f, "NewCredential", &["credential"])
    }
}

/// A credential that replaced another (shown this once).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct RotatedCredential {
    /// The vault.
    pub vault: String,
    /// The new credential.
    pub credential: String,
    /// Its id.
    pub id: String,
    /// The id of the credential it replaces (which no longer works).
    pub replaces: String,
}

impl std::fmt::Debug for RotatedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(f, "RotatedCredential", &["credential"])
    }
}

/// A credential as listed (never the credential itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialInfo {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Issued (Unix seconds).
    pub created: i64,
}

/// `GET /credentials`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CredentialList {
    /// The vault's credentials.
    pub value: Vec<CredentialInfo>,
}

/// `DELETE /credentials/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revoked {
    /// The credential's id.
    pub id: String,
    /// Always true.
    pub revoked: bool,
}

/// One entry of a vault's audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Sequence number.
    pub seq: i64,
    /// When (Unix seconds).
    pub ts: i64,
    /// The vault.
    pub vault: String,
    /// `role:credential id`.
    pub caller: String,
    /// The operation (`create`, `release`, ...).
    pub op: String,
    /// Key name.
    pub key: String,
    /// Key version.
    pub version: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// The refusal code, if any.
    pub code: String,
    /// The attestation token's `jti`.
    pub jti: String,
    /// The attestation token's issuer.
    pub issuer: String,
}

/// `GET /audit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// The vault's entries, oldest first.
    pub value: Vec<AuditRecord>,
}

/// `POST /regions/{region}`: the region's platform vault and its first administrator
/// credential (shown this once).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct RegionCreated {
    /// The region.
    pub region: String,
    /// Its platform vault (`platform:{region}`).
    pub vault: String,
    /// The root key's version (1).
    pub root_version: i64,
    /// The platform vault's administrator credential.
    pub credential: String,
    /// Its id.
    pub id: String,
    /// `administrator`.
    pub role: String,
}

impl std::fmt::Debug for RegionCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(f, "RegionCreated", &["credential"])
    }
}

/// `POST /regions/{region}/rotate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionRotated {
    /// The region.
    pub region: String,
    /// Its platform vault.
    pub vault: String,
    /// The new root version.
    pub root_version: i64,
    /// The retired one.
    pub previous_root_version: i64,
    /// How many key versions were resealed.
    pub resealed: u64,
}

/// A region as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionInfo {
    /// The region.
    pub region: String,
    /// Its platform vault.
    pub vault: String,
    /// The current root version.
    pub root_version: i64,
    /// When that root was made (Unix seconds).
    pub root_created: i64,
    /// Live and deleted keys.
    pub keys: i64,
    /// Their versions.
    pub key_versions: i64,
    /// Created (Unix seconds).
    pub created: i64,
}

/// `GET /regions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionList {
    /// The regions.
    pub value: Vec<RegionInfo>,
}

pub use api_contract::{ErrorBody, ErrorResponse};
