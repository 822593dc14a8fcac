//! The key vault: vaults (tenants) with role-bearing credentials, versioned keys whose
//! material is sealed at rest, soft delete, and Secure Key Release to attested callers.
//! HTTP lives in [`crate::server`].
//!
//! Two kinds of vault share the credential and role model:
//!
//! - tenant vaults (`POST /vaults/{name}`) hold customer-managed keys, sealed directly
//!   under the master key;
//! - one platform vault per region (`POST /regions/{region}`, named
//!   `platform:{region}`, which no tenant vault name can be) holds platform-managed keys,
//!   sealed under the region's root key, an AES-256 key-encryption key itself sealed
//!   under the master key. `POST /regions/{region}/rotate` makes a new root version and
//!   reseals every key of the region in one store transaction.

use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jose::{Alg, TokenSigner};
use seal::MasterKey;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::authority::{Authorities, ValidToken};
use crate::jwk::strip;
use crate::release_policy::ReleasePolicyEnvelope;
use keyvault_api::{
    Access, AttestedUnwrapRequest, AuditLog, CreateCredentialRequest, CreateKeyRequest,
    CredentialInfo, CredentialList, ImportKeyRequest, JsonWebKey, KeyAttributes, KeyBundle,
    KeyItem, KeyList, KeyOperationResult, KeyVaultApi, NewCredential, Operation, RegionCreated,
    RegionInfo, RegionList, RegionRotated, ReleasePayload, ReleasePayloadRequest,
    ReleasePayloadResponse, ReleaseRequest, ReleaseTestResult, Revoked, RotatedCredential,
    SignedResult, UnwrapPayload, UnwrapPayloadRequest, UnwrapPayloadResponse, UpdateKeyRequest,
    WrapKeyRequest,
};
use sqldb::Location;

use crate::store::{
    AuditEntry, NewRegion, RootRow, Rotation, SealedVersion, SqlStore, Store, StoreError,
    VersionRow,
};
use crate::wrap::{KeyHsm, WrapMechanism, WrappingPublicKey};

/// A refusal, as the API reports it: the services' one error type.
pub type VaultError = httpd::ApiError;

/// The key vault's own refusals.
trait VaultRefusal {
    fn unauthorized() -> Self;
    fn forbidden(role: &str, op: &str) -> Self;
    fn not_found(name: &str) -> Self;
    fn region_not_found(region: &str) -> Self;
}

impl VaultRefusal for VaultError {
    fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a valid vault credential is required (Authorization: Bearer ...)",
        )
    }
    fn forbidden(role: &str, op: &str) -> Self {
        Self::new(403, "forbidden", format!("the {role} role may not {op}"))
    }
    fn not_found(name: &str) -> Self {
        Self::new(
            404,
            "key_not_found",
            format!("no key {name:?} in this vault"),
        )
    }
    fn region_not_found(region: &str) -> Self {
        Self::new(404, "region_not_found", format!("no region {region:?}"))
    }
}

fn store_err(e: StoreError) -> VaultError {
    match e {
        StoreError::Exists(what) | StoreError::Conflict(what) => {
            VaultError::new(409, "conflict", what)
        }
        // The cause goes to the service log only; the caller gets a plain 500.
        e => VaultError::logged("store", e),
    }
}

/// A credential's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, including credentials, deletion and purge.
    Administrator,
    /// Create, import, read, update and release keys.
    CryptoUser,
    /// Read public parts and release keys.
    ReleaseUser,
}

impl Role {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::CryptoUser => "crypto_user",
            Role::ReleaseUser => "release_user",
        }
    }
    /// Parses a stored name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "administrator" => Role::Administrator,
            "crypto_user" => Role::CryptoUser,
            "release_user" => Role::ReleaseUser,
            _ => return None,
        })
    }
    fn may(self, op: Op) -> bool {
        match self {
            Role::Administrator => true,
            Role::CryptoUser => !matches!(op, Op::Admin | Op::Delete),
            Role::ReleaseUser => matches!(op, Op::Read | Op::Release),
        }
    }
}

/// What a caller wants to do (for access control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Manage credentials, read the audit log.
    Admin,
    /// Create, import, update keys.
    Write,
    /// Read public parts, list.
    Read,
    /// Delete, recover, purge.
    Delete,
    /// Release.
    Release,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Its credential's id (`credential_id`), named in audit entries.
    pub id: String,
    /// Its vault.
    pub vault: String,
    /// Its role.
    pub role: Role,
    /// The region, when the vault is a region's platform vault (its keys are
    /// platform-managed, sealed under the region root).
    pub region: Option<String>,
}

/// Who an admitted request comes from.
#[derive(Clone, Debug)]
enum Principal {
    /// A vault credential.
    Vault(Caller),
    /// The service administrator.
    ServiceAdmin,
}

/// A caller admitted to one operation by [`Vault::authorize`], the only way to make
/// one: the API's methods take it, and each checks that it was admitted for that very
/// operation (a caller admitted for another fails closed, with 500 `wrong_operation`:
/// a bug of the edge, not the caller's), so none runs without its access check.
#[derive(Clone, Debug)]
pub struct Authorized {
    principal: Principal,
    op: &'static Operation,
}

impl Authorized {
    /// The vault credential's caller, admitted for the operation `id` (`get_key` also
    /// stands for `get_key_version`).
    fn caller_for(&self, id: &str) -> Result<&Caller, VaultError> {
        self.check_op(id)?;
        match &self.principal {
            Principal::Vault(c) => Ok(c),
            Principal::ServiceAdmin => Err(VaultError::unauthorized()),
        }
    }

    /// That this is the service administrator, admitted for the operation `id`.
    fn service_admin_for(&self, id: &str) -> Result<(), VaultError> {
        self.check_op(id)?;
        match self.principal {
            Principal::ServiceAdmin => Ok(()),
            Principal::Vault(_) => Err(VaultError::unauthorized()),
        }
    }

    fn check_op(&self, id: &str) -> Result<(), VaultError> {
        let ok = self.op.id == id || (id == "get_key" && self.op.id == "get_key_version");
        if ok {
            Ok(())
        } else {
            tracing::error!(admitted = self.op.id, called = id, "operation mismatch");
            Err(VaultError::internal("wrong_operation"))
        }
    }

    /// The operation this caller was admitted for.
    pub fn operation(&self) -> &'static Operation {
        self.op
    }
}

/// How the vault is set up.
pub struct VaultConfig {
    /// State directory (database, service administrator credential).
    pub state_dir: PathBuf,
    /// The master key (never stored in the state directory).
    pub master_key: MasterKey,
    /// Public base URL (key ids are `{base}/keys/{name}/{version}`).
    pub base_url: String,
    /// Trusted attestation authorities.
    pub authorities: Authorities,
    /// The database: a SQLite file or a PostgreSQL URL (several replicas may share
    /// one PostgreSQL database); `None` is SQLite at `state_dir/keyvault.db`.
    pub database: Option<Location>,
    /// A store to use instead of opening `database` (tests).
    pub store: Option<Box<dyn Store>>,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("state_dir", &self.state_dir)
            .field("database", &self.database)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The key vault.
pub struct Vault {
    store: Box<dyn Store>,
    master: MasterKey,
    base_url: String,
    authorities: Authorities,
    signer: TokenSigner,
    service_admin_sha256: Vec<u8>,
    /// Platform key writes (sealing under the current root, then storing) hold this
    /// shared; a root rotation holds it exclusively, so no key is ever stored sealed
    /// under a root version that a rotation is retiring.
    rotation: std::sync::RwLock<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// A credential's id: the first 8 bytes of its SHA-256, in hex. It names the
/// credential in audit entries and reveals nothing of it.
pub fn credential_id(sha256: &[u8]) -> String {
    hex::encode(sha256.get(..8).unwrap_or(sha256))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn random_token() -> Result<Zeroizing<String>, VaultError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| VaultError::internal("random"))?;
    Ok(Zeroizing::new(B64URL.encode(raw.as_ref())))
}

/// The audit log's name for entries that belong to no vault (service-level refusals);
/// no vault may take it.
pub const SERVICE_VAULT: &str = "service";

/// Key names as Key Vault allows them: 1-127 of `[0-9a-zA-Z-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Region names: 1-32 of `[0-9a-z-]`.
pub fn valid_region(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The platform vault of `region`. The `:` keeps it out of the tenant vault namespace
/// (tenant vault names are [`valid_name`]s).
pub fn platform_vault(region: &str) -> String {
    format!("platform:{region}")
}

/// The role name the service administrator has in audit entries.
const SERVICE_ADMIN: &str = "service_administrator";

/// Why the vault could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed secret did not open (wrong master key?).
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The signing key failed.
    #[error(transparent)]
    Jwt(#[from] jose::JwtError),
    /// The state directory is unusable.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

pub use keyvault_api::Attributes;

/// What a new key version is made of.
struct NewKey<'a> {
    kty: &'a str,
    secret: &'a [u8],
    public: Map<String, Value>,
    attributes: Option<Attributes>,
    tags: Option<Map<String, Value>>,
    release_policy: Option<Value>,
}

/// New key material and its public JWK.
struct Material {
    kty: &'static str,
    secret: Zeroizing<Vec<u8>>,
    public: Map<String, Value>,
}

fn generate(body: &CreateKeyRequest) -> Result<Material, VaultError> {
    let (kty, secret): (&'static str, Zeroizing<Vec<u8>>) = match body.kty.trim_end_matches("-HSM")
    {
        "RSA" => {
            let size = match body.key_size.unwrap_or(2048) {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                _ => {
                    return Err(VaultError::bad(
                        "bad_parameter",
                        "RSA key_size is 2048, 3072 or 4096",
                    ));
                }
            };
            let kp = aws_lc_rs::rsa::KeyPair::generate(size)
                .map_err(|_| VaultError::internal("keygen"))?;
            let der: Pkcs8V1Der<'static> =
                kp.as_der().map_err(|_| VaultError::internal("keygen"))?;
            ("RSA", Zeroizing::new(der.as_ref().to_vec()))
        }
        "EC" => {
            let alg = match body.crv.as_deref().unwrap_or("P-256") {
                "P-256" => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                "P-384" => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => return Err(VaultError::bad("bad_parameter", "EC crv is P-256 or P-384")),
            };
            let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                .map_err(|_| VaultError::internal("keygen"))?;
            ("EC", Zeroizing::new(doc.as_ref().to_vec()))
        }
        "oct" => {
            if body.key_size.unwrap_or(256) != 256 {
                return Err(VaultError::bad(
                    "bad_parameter",
                    "oct keys are AES-256 (key_size 256)",
                ));
            }
            let mut k = Zeroizing::new(vec![0u8; 32]);
            aws_lc_rs::rand::fill(k.as_mut()).map_err(|_| VaultError::internal("random"))?;
            ("oct", k)
        }
        other => {
            return Err(VaultError::bad(
                "bad_parameter",
                format!("kty {other:?} is not RSA, EC or oct"),
            ));
        }
    };
    // The public JWK of a generated key is derived exactly as an imported one's.
    material_public(kty, secret)
}

/// Checks imported key material of type `kty` (`oct`: 32 raw bytes; `RSA`/`EC`:
/// PKCS#8) and derives its public JWK.
fn material_public(kty: &str, k: Zeroizing<Vec<u8>>) -> Result<Material, VaultError> {
    let mut public = Map::new();
    let kty = match kty {
        "oct" => {
            if k.len() != 32 {
                return Err(VaultError::bad(
                    "bad_parameter",
                    "an oct key is 32 bytes (AES-256)",
                ));
            }
            "oct"
        }
        "RSA" => {
            let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(&k).map_err(|_| {
                VaultError::bad("bad_parameter", "the key is not an RSA PKCS#8 private key")
            })?;
            let comps: RsaPublicKeyComponents<Vec<u8>> = kp.public_key().into();
            if !matches!(comps.n.len() * 8, 2048 | 3072 | 4096) {
                return Err(VaultError::bad(
                    "bad_parameter",
                    "RSA keys are 2048, 3072 or 4096 bits",
                ));
            }
            public.insert("n".into(), B64URL.encode(strip(&comps.n)).into());
            public.insert("e".into(), B64URL.encode(strip(&comps.e)).into());
            "RSA"
        }
        "EC" => {
            let curves = [
                (
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    "P-256",
                    32,
                ),
                (
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    "P-384",
                    48,
                ),
            ];
            let (kp, crv, n) = curves
                .iter()
                .find_map(|(alg, crv, n)| {
                    EcdsaKeyPair::from_pkcs8(alg, &k)
                        .ok()
                        .map(|kp| (kp, *crv, *n))
                })
                .ok_or_else(|| {
                    VaultError::bad(
                        "bad_parameter",
                        "the key is not a P-256 or P-384 PKCS#8 private key",
                    )
                })?;
            let point = kp.public_key().as_ref();
            let (x, y) = point
                .get(1..)
                .unwrap_or_default()
                .split_at(n.min(point.len().saturating_sub(1)));
            public.insert("crv".into(), crv.into());
            public.insert("x".into(), B64URL.encode(x).into());
            public.insert("y".into(), B64URL.encode(y).into());
            "EC"
        }
        other => {
            return Err(VaultError::bad(
                "bad_parameter",
                format!("kty {other:?} is not RSA, EC or oct"),
            ));
        }
    };
    public.insert("kty".into(), kty.into());
    Ok(Material {
        kty,
        secret: k,
        public,
    })
}

/// How an audit entry names an outcome: allowed, denied (4xx) or failed (5xx).
fn outcome_name(outcome: Result<(), &VaultError>) -> &'static str {
    match outcome {
        Ok(()) => "allowed",
        Err(e) if e.status >= 500 => "failed",
        Err(_) => "denied",
    }
}

/// The file in the state directory that holds the certificate signing release
/// responses (PEM): what an attested party pins to check them.
pub const RELEASE_SIGNER_FILE: &str = "release-signer.pem";

/// Writes `cert` as PEM to `dir/`[`RELEASE_SIGNER_FILE`] unless it already holds it
/// (replaced atomically: a reader never sees half a certificate).
fn publish_release_signer(dir: &std::path::Path, cert: &[u8]) -> std::io::Result<()> {
    use base64::engine::general_purpose::STANDARD;
    let b64 = STANDARD.encode(cert);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let path = dir.join(RELEASE_SIGNER_FILE);
    if std::fs::read(&path).is_ok_and(|old| old == pem.as_bytes()) {
        return Ok(());
    }
    let tmp = dir.join(format!("{RELEASE_SIGNER_FILE}.tmp"));
    std::fs::write(&tmp, pem)?;
    std::fs::rename(&tmp, &path)
}

impl Vault {
    /// Opens the vault's state. On first start a service administrator credential
    /// (which creates vaults) is written to `STATE/admin.token` (0600); its path is
    /// returned then. The release signing certificate is published at every open in
    /// `STATE/`[`RELEASE_SIGNER_FILE`].
    pub fn open(cfg: VaultConfig) -> Result<(Self, Option<PathBuf>), OpenError> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let store: Box<dyn Store> = match cfg.store {
            Some(s) => s,
            None => Box::new(SqlStore::open(
                &cfg.database
                    .clone()
                    .unwrap_or_else(|| Location::sqlite(&cfg.state_dir.join("keyvault.db"))),
                crate::store::AuditKeys::from_master(&cfg.master_key)?,
            )?),
        };
        let mut created = None;
        let admin_hash = match store.secret("service-admin-sha256")? {
            Some(h) => h,
            None => {
                let token = random_token().map_err(|e| std::io::Error::other(e.message))?;
                let path = cfg.state_dir.join("admin.token");
                seal::write_secret_file(&path, token.as_bytes())?;
                let ours = sha256(token.as_bytes());
                let stored = store.put_secret("service-admin-sha256", &ours)?;
                if stored == ours {
                    created = Some(path);
                } else {
                    // A replica sharing the database made the credential first; this
                    // one is not valid, so it does not stay on disk.
                    let _ = std::fs::remove_file(&path);
                }
                stored
            }
        };
        let sealed = match store.secret("release-signing-key")? {
            Some(s) => s,
            None => {
                let signer = TokenSigner::generate(
                    Alg::RS256,
                    "opencvm key vault release signing",
                    now(),
                    3650,
                )?;
                let mut blob = signer.cert_der().len().to_be_bytes().to_vec();
                blob.extend_from_slice(signer.cert_der());
                blob.extend_from_slice(&signer.to_pkcs8()?);
                store.put_secret(
                    "release-signing-key",
                    &cfg.master_key
                        .seal("opencvm-keyvault/release-signing-key", &blob)?,
                )?
            }
        };
        let blob = cfg
            .master_key
            .open("opencvm-keyvault/release-signing-key", &sealed)?;
        let (len, rest) = blob.split_at(8.min(blob.len()));
        let cert_len = usize::try_from(u64::from_be_bytes(len.try_into().unwrap_or([0; 8])))
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let (cert, pkcs8) = rest.split_at(cert_len);
        let signer = TokenSigner::from_pkcs8(Alg::RS256, pkcs8, cert.to_vec())?;
        publish_release_signer(&cfg.state_dir, signer.cert_der())?;
        Ok((
            Vault {
                store,
                master: cfg.master_key,
                base_url: cfg.base_url.trim_end_matches('/').to_string(),
                authorities: cfg.authorities,
                signer,
                service_admin_sha256: admin_hash,
                rotation: std::sync::RwLock::new(()),
            },
            created,
        ))
    }

    /// The certificate that signs release responses (DER).
    pub fn release_signing_cert(&self) -> &[u8] {
        self.signer.cert_der()
    }

    /// Whether `bearer` is a vault credential or the service administrator's.
    pub fn authenticated(&self, bearer: Option<&str>) -> bool {
        self.caller(bearer).is_ok() || self.service_admin(bearer).is_ok()
    }

    /// Authenticates a bearer credential.
    pub fn caller(&self, bearer: Option<&str>) -> Result<Caller, VaultError> {
        let token = bearer.ok_or_else(VaultError::unauthorized)?;
        let hash = sha256(token.as_bytes());
        let cred = self
            .store
            .credential(&hash)
            .map_err(store_err)?
            .ok_or_else(VaultError::unauthorized)?;
        Ok(Caller {
            id: credential_id(&hash),
            role: Role::from_name(&cred.role).ok_or_else(|| VaultError::internal("role"))?,
            vault: cred.vault,
            region: cred.region,
        })
    }

    /// The edge's one access check: authenticates `bearer` and admits it to `op` as
    /// the contract's operation table says ([`keyvault_api::OPERATIONS`]): 401 for an
    /// unknown credential (or one of the wrong kind), 403 for a role that may not (that
    /// refusal is audited in the caller's vault). Runs before the request's body is
    /// read.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
        op: &'static Operation,
    ) -> Result<Authorized, VaultError> {
        let role_op = match op.access {
            Access::ServiceAdmin => {
                self.service_admin(bearer)?;
                return Ok(Authorized {
                    principal: Principal::ServiceAdmin,
                    op,
                });
            }
            Access::Holder => {
                return Ok(Authorized {
                    principal: Principal::Vault(self.caller(bearer)?),
                    op,
                });
            }
            Access::Admin => Op::Admin,
            Access::Write => Op::Write,
            Access::Read => Op::Read,
            Access::Delete => Op::Delete,
            Access::Release => Op::Release,
        };
        let c = self.caller(bearer)?;
        if !c.role.may(role_op) {
            // An authenticated caller refused by its role: audited in its vault.
            let e = VaultError::forbidden(c.role.name(), op.what);
            self.audit(&c, &op.what.replace(' ', "_"), "", "", Err(&e), None);
            return Err(e);
        }
        Ok(Authorized {
            principal: Principal::Vault(c),
            op,
        })
    }

    /// [`Vault::authorize`] for the operation named `id` in the contract.
    pub fn authorize_op(&self, bearer: Option<&str>, id: &str) -> Result<Authorized, VaultError> {
        let op = keyvault_api::operation(id).ok_or_else(|| VaultError::internal("operation"))?;
        self.authorize(bearer, op)
    }

    /// Audits the refusal of an authorized request whose body was not acceptable (the
    /// body is read only after the access check, so a malformed one is audited as its
    /// operation, as any other refusal).
    pub fn audit_refusal(
        &self,
        a: &Authorized,
        op: &str,
        key: &str,
        version: &str,
        e: &VaultError,
    ) {
        if let Principal::Vault(c) = &a.principal {
            self.audit(c, op, key, version, Err(e), None);
        }
    }

    /// An audit entry for `c`'s `op` on `key`/`version`.
    fn audit_entry(
        c: &Caller,
        op: &str,
        key: &str,
        version: &str,
        outcome: Result<(), &VaultError>,
        token: Option<&ValidToken>,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            ts: now(),
            vault: c.vault.clone(),
            caller: format!("{}:{}", c.role.name(), c.id),
            op: op.to_string(),
            key: key.to_string(),
            version: version.to_string(),
            outcome: outcome_name(outcome).into(),
            code: outcome
                .err()
                .map(|e| e.code.to_string())
                .unwrap_or_default(),
            jti: token.and_then(|t| t.jti.clone()).unwrap_or_default(),
            issuer: token.map(|t| t.issuer.clone()).unwrap_or_default(),
        }
    }

    /// Writes an audit entry on its own. Key changes are audited in their own store
    /// transaction instead (`add_version` and the like); this is for everything else
    /// and for refusals.
    fn audit(
        &self,
        c: &Caller,
        op: &str,
        key: &str,
        version: &str,
        outcome: Result<(), &VaultError>,
        token: Option<&ValidToken>,
    ) -> bool {
        let e = Self::audit_entry(c, op, key, version, outcome, token);
        // The audit log must not silently lose entries: a failure is reported in the
        // service's own log (stderr), and a release whose entry was not written does
        // not release (see `release`).
        let r = self.store.audit(&e);
        if let Err(err) = &r {
            tracing::error!(error = %err, "audit log write failed");
        }
        r.is_ok()
    }

    /// Checks the service administrator credential.
    fn service_admin(&self, bearer: Option<&str>) -> Result<(), VaultError> {
        let token = bearer.ok_or_else(VaultError::unauthorized)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &sha256(token.as_bytes()),
            &self.service_admin_sha256,
        )
        .map_err(|_| VaultError::unauthorized())
    }

    /// Issues a credential with `role` for the caller's vault (administrator).
    fn create_credential(
        &self,
        a: &Authorized,
        b: CreateCredentialRequest,
    ) -> Result<NewCredential, VaultError> {
        let c = a.caller_for("create_credential")?;
        let role = b.role.as_deref().and_then(Role::from_name).ok_or_else(|| {
            VaultError::bad(
                "bad_parameter",
                "role is administrator, crypto_user or release_user",
            )
        })?;
        let cred = random_token()?;
        let hash = sha256(cred.as_bytes());
        self.store
            .add_credential(&c.vault, &hash, role.name(), now())
            .map_err(store_err)?;
        let id = credential_id(&hash);
        self.audit(c, "credential_create", role.name(), &id, Ok(()), None);
        Ok(NewCredential {
            vault: c.vault.clone(),
            credential: cred.to_string(),
            id,
            role: role.name().into(),
        })
    }

    fn credential_by_id(&self, c: &Caller, id: &str) -> Result<Vec<u8>, VaultError> {
        self.store
            .credentials(&c.vault)
            .map_err(store_err)?
            .into_iter()
            .map(|(sha, _, _)| sha)
            .find(|sha| credential_id(sha) == id)
            .ok_or_else(|| {
                VaultError::new(404, "credential_not_found", format!("no credential {id:?}"))
            })
    }

    /// A JWS of `payload` (a JSON object) signed by the vault, its certificate in `x5c`.
    fn sign(&self, payload: &impl serde::Serialize) -> Result<String, VaultError> {
        let Ok(Value::Object(m)) = serde_json::to_value(payload) else {
            return Err(VaultError::internal("payload"));
        };
        self.signer
            .sign_with_x5c(&m)
            .map_err(|_| VaultError::internal("signing"))
    }

    fn kid(&self, name: &str, version: &str) -> String {
        format!("{}/keys/{name}/{version}", self.base_url)
    }

    fn seal_context(vault: &str, name: &str, version: &str) -> String {
        format!("opencvm-keyvault/key/{vault}/{name}/{version}")
    }

    fn bundle(&self, row: &VersionRow, deleted: bool) -> KeyBundle {
        // The stored public JWK was written by `material_public`: kty and its public
        // members.
        let mut key: JsonWebKey = serde_json::from_str(&row.public_jwk).unwrap_or_default();
        key.kid = self.kid(&row.name, &row.version);
        let ops: &[&str] = match row.kty.as_str() {
            "RSA" => &[
                "encrypt",
                "decrypt",
                "sign",
                "verify",
                "wrapKey",
                "unwrapKey",
            ],
            "EC" => &["sign", "verify"],
            _ => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        };
        key.key_ops = ops.iter().map(|o| o.to_string()).collect();
        KeyBundle {
            key,
            attributes: KeyAttributes {
                enabled: row.enabled,
                created: row.created,
                updated: row.updated,
                recovery_level: "Recoverable+Purgeable".into(),
                exportable: row.exportable,
                managed: if row.root_id.is_some() {
                    "platform"
                } else {
                    "customer"
                }
                .into(),
                nbf: row.nbf,
                exp: row.exp,
            },
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            release_policy: row
                .release_policy
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            recovery_id: deleted.then(|| format!("{}/deletedkeys/{}", self.base_url, row.name)),
        }
    }

    /// Stores a new version of key `name`, audited as `op` in the same transaction.
    fn new_version(
        &self,
        c: &Caller,
        op: &str,
        name: &str,
        key: NewKey<'_>,
    ) -> Result<VersionRow, VaultError> {
        if !valid_name(name) {
            return Err(VaultError::bad(
                "bad_parameter",
                "a key name is 1-127 of [0-9a-zA-Z-]",
            ));
        }
        let NewKey {
            kty,
            secret,
            public,
            attributes,
            tags,
            release_policy,
        } = key;
        let attrs = attributes.unwrap_or_default();
        let exportable = attrs.exportable.unwrap_or(false);
        let policy = release_policy
            .map(|p| ReleasePolicyEnvelope::parse(&p))
            .transpose()
            .map_err(|e| VaultError::bad("bad_release_policy", e.to_string()))?;
        if exportable && policy.is_none() {
            return Err(VaultError::bad(
                "release_policy_required",
                "an exportable key must have a release policy",
            ));
        }
        let mut v = [0u8; 16];
        aws_lc_rs::rand::fill(&mut v).map_err(|_| VaultError::internal("random"))?;
        let version = hex::encode(v);
        let t = now();
        let context = Self::seal_context(&c.vault, name, &version);
        // A platform key is sealed under the region's current root, and stored before
        // any rotation can retire that root (see `rotation`).
        let _shared = match &c.region {
            Some(_) => Some(
                self.rotation
                    .read()
                    .map_err(|_| VaultError::internal("lock"))?,
            ),
            None => None,
        };
        let (sealed, root_id) = match &c.region {
            None => (
                self.master
                    .seal(&context, secret)
                    .map_err(|_| VaultError::internal("seal"))?,
                None,
            ),
            Some(region) => {
                let root = self
                    .store
                    .region_root(region)
                    .map_err(store_err)?
                    .ok_or_else(|| VaultError::internal("region_root"))?;
                let kek = self.open_root(&root)?;
                (
                    kek.seal(&context, secret)
                        .map_err(|_| VaultError::internal("seal"))?,
                    Some(root.id),
                )
            }
        };
        let row = VersionRow {
            name: name.to_string(),
            version: version.clone(),
            kty: kty.to_string(),
            public_jwk: Value::Object(public).to_string(),
            sealed,
            root_id,
            exportable,
            enabled: attrs.enabled.unwrap_or(true),
            nbf: attrs.nbf,
            exp: attrs.exp,
            tags: Value::Object(tags.unwrap_or_default()).to_string(),
            release_policy: policy.map(|p| p.to_json().to_string()),
            created: t,
            updated: t,
        };
        let audit = Self::audit_entry(c, op, name, &row.version, Ok(()), None);
        self.store
            .add_version(&c.vault, &row, &audit)
            .map_err(store_err)?;
        Ok(row)
    }

    /// `POST /keys/{name}/create`.
    fn create_key(
        &self,
        a: &Authorized,
        name: &str,
        b: CreateKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("create_key")?;
        let r = (|| {
            let _ = &b.key_ops;
            let m = generate(&b)?;
            self.new_version(
                c,
                "create",
                name,
                NewKey {
                    kty: m.kty,
                    secret: &m.secret,
                    public: m.public,
                    attributes: b.attributes,
                    tags: b.tags,
                    release_policy: b.release_policy,
                },
            )
        })();
        self.audited_bundle(c, "create", name, r)
    }

    /// Audits the creation of a key version as `action` and answers with its bundle.
    fn audited_bundle(
        &self,
        c: &Caller,
        action: &str,
        name: &str,
        r: Result<VersionRow, VaultError>,
    ) -> Result<KeyBundle, VaultError> {
        // A created version's entry was written with it; a refusal's is written here.
        if let Err(e) = &r {
            self.audit(c, action, name, "", Err(e), None);
        }
        Ok(self.bundle(&r?, false))
    }

    /// `PUT /keys/{name}`: import a key, either wrapped (`key.key_hsm`, BYOK) or as a
    /// plain private JWK: `oct` (AES-256, `k`), `RSA` (`n`, `e`, `d`, `p`, `q`, `dp`,
    /// `dq`, `qi`) or `EC` (`crv` P-256/P-384, `x`, `y`, `d`), whose public members must
    /// belong to its private key (`jwk_key_mismatch` otherwise). In a platform vault the
    /// key is platform-managed.
    fn import_key(
        &self,
        a: &Authorized,
        name: &str,
        mut b: ImportKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("import_key")?;
        let r = (|| {
            let kty = b
                .key
                .get("kty")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim_end_matches("-HSM")
                .to_string();
            // BYOK: the key arrives wrapped (CKM_RSA_AES_KEY_WRAP...) to an RSA key of
            // this vault (the KEK, named by the key_hsm header's kid).
            let m = match b.key.get("key_hsm").and_then(Value::as_str) {
                Some(hsm) => self.unwrap_byok(c, hsm, &kty)?,
                None => {
                    let r = Self::plain_jwk(&kty, &b.key);
                    crate::jwk::zeroize_private_members(&mut b.key);
                    r?
                }
            };
            self.new_version(
                c,
                "import",
                name,
                NewKey {
                    kty: m.kty,
                    secret: &m.secret,
                    public: m.public,
                    attributes: b.attributes.take(),
                    tags: b.tags.take(),
                    release_policy: b.release_policy.take(),
                },
            )
        })();
        self.audited_bundle(c, "import", name, r)
    }

    /// The material and public JWK of a plain (unwrapped) private JWK.
    fn plain_jwk(kty: &str, key: &Map<String, Value>) -> Result<Material, VaultError> {
        match kty {
            "oct" => {
                let k = Zeroizing::new(
                    key.get("k")
                        .and_then(Value::as_str)
                        .and_then(|k| B64URL.decode(k.trim_end_matches('=')).ok())
                        .ok_or_else(|| {
                            VaultError::bad("bad_parameter", "an oct key needs k (base64url)")
                        })?,
                );
                material_public("oct", k)
            }
            "RSA" | "EC" => {
                let p = crate::jwk::private_jwk_to_pkcs8(key)
                    .map_err(|e| VaultError::bad(e.code(), e.to_string()))?;
                material_public(p.kty, p.pkcs8)
            }
            other => Err(VaultError::bad(
                "bad_parameter",
                format!("kty {other:?} is not RSA, EC or oct"),
            )),
        }
    }

    fn version(
        &self,
        c: &Caller,
        name: &str,
        version: Option<&str>,
    ) -> Result<VersionRow, VaultError> {
        let rows = self
            .store
            .versions(&c.vault, name, false)
            .map_err(store_err)?;
        match version.filter(|v| !v.is_empty()) {
            None => rows.into_iter().next(),
            Some(v) => rows.into_iter().find(|r| r.version == v),
        }
        .ok_or_else(|| VaultError::not_found(name))
    }

    /// `GET /keys/{name}[/{version}]`: public parts only.
    fn get_key(
        &self,
        a: &Authorized,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("get_key")?;
        Ok(self.bundle(&self.version(c, name, version)?, false))
    }

    /// `PATCH /keys/{name}/{version}`: enabled, nbf, exp, tags, release policy (an
    /// immutable policy never changes).
    fn update_key(
        &self,
        a: &Authorized,
        name: &str,
        version: &str,
        b: UpdateKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("update_key")?;
        let r = (|| {
            let _ = &b.key_ops;
            let mut row = self.version(c, name, Some(version))?;
            if let Some(a) = b.attributes {
                if a.exportable.is_some_and(|e| e != row.exportable) {
                    return Err(VaultError::bad(
                        "bad_parameter",
                        "exportable cannot change after creation",
                    ));
                }
                row.enabled = a.enabled.unwrap_or(row.enabled);
                row.nbf = a.nbf.or(row.nbf);
                row.exp = a.exp.or(row.exp);
            }
            if let Some(t) = b.tags {
                row.tags = Value::Object(t).to_string();
            }
            if let Some(p) = b.release_policy {
                // A stored policy that no longer parses may have been immutable: fail
                // closed and keep it (it was valid when written; only a newer grammar
                // or a damaged row makes it unreadable).
                let immutable = match Self::stored_policy(&row) {
                    None => false,
                    Some(Ok(current)) => current.immutable(),
                    Some(Err(_)) => true,
                };
                if immutable {
                    return Err(VaultError::new(
                        409,
                        "release_policy_immutable",
                        "the key's release policy is immutable",
                    ));
                }
                let new = ReleasePolicyEnvelope::parse(&p)
                    .map_err(|e| VaultError::bad("bad_release_policy", e.to_string()))?;
                row.release_policy = Some(new.to_json().to_string());
            }
            row.updated = now();
            let audit = Self::audit_entry(c, "update", name, version, Ok(()), None);
            self.store
                .update_version(&c.vault, &row, &audit)
                .map_err(store_err)?;
            Ok(row)
        })();
        if let Err(e) = &r {
            self.audit(c, "update", name, version, Err(e), None);
        }
        Ok(self.bundle(&r?, false))
    }

    /// The key version a `kid` (`{base}/keys/{name}/{version}`) names in the caller's
    /// vault.
    fn by_kid(&self, c: &Caller, kid: &str) -> Result<VersionRow, VaultError> {
        let rest = kid
            .strip_prefix(&format!("{}/keys/", self.base_url))
            .ok_or_else(|| {
                VaultError::bad(
                    "bad_parameter",
                    format!("kid {kid:?} is not a key of this vault"),
                )
            })?;
        let (name, version) = rest.split_once('/').unwrap_or((rest, ""));
        self.version(c, name, Some(version))
    }

    fn unseal(&self, c: &Caller, row: &VersionRow) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let context = Self::seal_context(&c.vault, &row.name, &row.version);
        if row.root_id.is_none() {
            return self
                .master
                .open(&context, &row.sealed)
                .map_err(|_| VaultError::internal("unseal"));
        }
        // A platform key: its material and root are read together, since a rotation
        // may have resealed it since `row` was read.
        let (sealed, root) = self
            .store
            .sealed_with_root(&c.vault, &row.name, &row.version)
            .map_err(store_err)?
            .ok_or_else(|| VaultError::not_found(&row.name))?;
        self.open_root(&root)?
            .open(&context, &sealed)
            .map_err(|_| VaultError::internal("unseal"))
    }

    fn root_context(region: &str, version: i64) -> String {
        format!("opencvm-keyvault/region-root/{region}/{version}")
    }

    /// A region root key version, opened with the master key.
    fn open_root(&self, root: &RootRow) -> Result<MasterKey, VaultError> {
        let raw = self
            .master
            .open(
                &Self::root_context(&root.region, root.version),
                &root.sealed,
            )
            .map_err(|_| VaultError::internal("unseal_root"))?;
        Self::kek(&raw)
    }

    fn kek(raw: &[u8]) -> Result<MasterKey, VaultError> {
        if raw.len() != 32 {
            return Err(VaultError::internal("root_key"));
        }
        MasterKey::from_hex(&Zeroizing::new(hex::encode(raw)))
            .map_err(|_| VaultError::internal("root_key"))
    }

    /// A new random root key: its bytes and the key made of them.
    fn new_root_key() -> Result<(Zeroizing<Vec<u8>>, MasterKey), VaultError> {
        let mut raw = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| VaultError::internal("random"))?;
        let kek = Self::kek(&raw)?;
        Ok((raw, kek))
    }

    fn service_audit(
        vault: &str,
        op: &str,
        version: &str,
        outcome: Result<(), &VaultError>,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            ts: now(),
            vault: vault.to_string(),
            caller: SERVICE_ADMIN.to_string(),
            op: op.to_string(),
            key: String::new(),
            version: version.to_string(),
            outcome: outcome_name(outcome).into(),
            code: outcome
                .err()
                .map(|e| e.code.to_string())
                .unwrap_or_default(),
            ..AuditEntry::default()
        }
    }

    /// Audits a failed region operation in the region's platform vault log (under
    /// `service` when the name is not a region name at all); successes are audited in
    /// the operation's own transaction.
    fn audit_region_failure(&self, region: &str, op: &str, e: Option<&VaultError>) {
        let Some(e) = e else { return };
        if e.status == 401 {
            // A caller without a valid credential writes nothing: otherwise anyone could
            // fill the log (and the disk) without authenticating.
            return;
        }
        let vault = if valid_region(region) {
            platform_vault(region)
        } else {
            SERVICE_VAULT.to_string()
        };
        let entry = Self::service_audit(&vault, op, "", Err(e));
        if let Err(err) = self.store.audit(&entry) {
            tracing::error!(error = %err, "audit log write failed");
        }
    }

    fn create_region_inner(
        &self,
        a: &Authorized,
        region: &str,
    ) -> Result<RegionCreated, VaultError> {
        a.service_admin_for("create_region")?;
        if !valid_region(region) {
            return Err(VaultError::bad(
                "bad_parameter",
                "a region name is 1-32 of [0-9a-z-]",
            ));
        }
        let vault = platform_vault(region);
        let (raw, _) = Self::new_root_key()?;
        let root_sealed = self
            .master
            .seal(&Self::root_context(region, 1), &raw)
            .map_err(|_| VaultError::internal("seal"))?;
        let cred = random_token()?;
        let t = now();
        let audit = Self::service_audit(&vault, "region_create", "1", Ok(()));
        self.store
            .create_region(&NewRegion {
                region,
                vault: &vault,
                admin_sha256: &sha256(cred.as_bytes()),
                root_sealed: &root_sealed,
                now: t,
                audit: &audit,
            })
            .map_err(store_err)?;
        Ok(RegionCreated {
            region: region.to_string(),
            vault,
            root_version: 1,
            credential: cred.to_string(),
            id: credential_id(&sha256(cred.as_bytes())),
            role: Role::Administrator.name().into(),
        })
    }

    fn rotate_inner(&self, region: &str, vault: &str) -> Result<RegionRotated, VaultError> {
        let _exclusive = self
            .rotation
            .write()
            .map_err(|_| VaultError::internal("lock"))?;
        let old = self
            .store
            .region_root(region)
            .map_err(store_err)?
            .ok_or_else(|| VaultError::internal("region_root"))?;
        let old_kek = self.open_root(&old)?;
        let (raw, new_kek) = Self::new_root_key()?;
        let new_version = old.version + 1;
        let new_sealed = self
            .master
            .seal(&Self::root_context(region, new_version), &raw)
            .map_err(|_| VaultError::internal("seal"))?;
        let mut resealed = Vec::new();
        for v in self.store.sealed_versions(vault).map_err(store_err)? {
            if v.root_id != Some(old.id) {
                return Err(VaultError::internal("root_mismatch"));
            }
            let context = Self::seal_context(vault, &v.name, &v.version);
            let secret = old_kek
                .open(&context, &v.sealed)
                .map_err(|_| VaultError::internal("unseal"))?;
            let sealed = new_kek
                .seal(&context, &secret)
                .map_err(|_| VaultError::internal("seal"))?;
            resealed.push(SealedVersion {
                sealed,
                root_id: None,
                ..v
            });
        }
        let audit = Self::service_audit(vault, "region_rotate", &new_version.to_string(), Ok(()));
        self.store
            .rotate_root(&Rotation {
                region,
                vault,
                old_root_id: old.id,
                new_version,
                new_sealed: &new_sealed,
                resealed: &resealed,
                now: now(),
                audit: &audit,
            })
            .map_err(store_err)?;
        Ok(RegionRotated {
            region: region.to_string(),
            vault: vault.to_string(),
            root_version: new_version,
            previous_root_version: old.version,
            resealed: resealed.len() as u64,
        })
    }

    fn unwrap_byok(&self, c: &Caller, key_hsm: &str, kty: &str) -> Result<Material, VaultError> {
        let hsm =
            KeyHsm::parse(key_hsm).map_err(|e| VaultError::bad("bad_parameter", e.to_string()))?;
        let kek = self.by_kid(c, hsm.kid())?;
        if kek.kty != "RSA" {
            return Err(VaultError::bad(
                "bad_parameter",
                "the key exchange key must be an RSA key",
            ));
        }
        // A disabled or expired key exchange key imports nothing.
        Self::check_usable(&kek, now())?;
        let private = crate::wrap::UnwrappingKey::from_pkcs8(&self.unseal(c, &kek)?)
            .map_err(|_| VaultError::internal("kek"))?;
        let material = crate::wrap::unwrap_key(hsm.mechanism(), &private, hsm.ciphertext())
            .map_err(|e| VaultError::bad("byok_unwrap_failed", e.to_string()))?;
        material_public(kty, material.into_zeroizing())
    }

    /// `POST /keys/{name}/{version}/wrapkey` with `alg: A256KW` (AES key wrap, RFC
    /// 3394) under an oct key: how a data key gets wrapped for attested unwrap.
    fn wrap_key(
        &self,
        a: &Authorized,
        name: &str,
        version: &str,
        b: WrapKeyRequest,
    ) -> Result<KeyOperationResult, VaultError> {
        let c = a.caller_for("wrap_key")?;
        let r = self.wrap_key_inner(c, name, version, &b);
        let logged = self.audit(c, "wrapkey", name, version, r.as_ref().map(|_| ()), None);
        // As with a release: no wrapped key leaves unless its audit entry was written.
        if r.is_ok() && !logged {
            return Err(VaultError::new(
                503,
                "audit_unavailable",
                "the audit log could not be written; nothing was wrapped",
            ));
        }
        r
    }

    fn wrap_key_inner(
        &self,
        c: &Caller,
        name: &str,
        version: &str,
        b: &WrapKeyRequest,
    ) -> Result<KeyOperationResult, VaultError> {
        use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
        if b.alg != "A256KW" {
            return Err(VaultError::bad("bad_parameter", "alg is A256KW"));
        }
        let row = self.version(c, name, Some(version))?;
        if row.kty != "oct" {
            return Err(VaultError::bad("bad_parameter", "wrapkey needs an oct key"));
        }
        Self::check_usable(&row, now())?;
        let dek = Zeroizing::new(
            B64URL
                .decode(b.value.trim_end_matches('='))
                .map_err(|_| VaultError::bad("bad_parameter", "value is not base64url"))?,
        );
        if dek.len() < 16 || dek.len() % 8 != 0 || dek.len() > 4096 {
            return Err(VaultError::bad(
                "bad_parameter",
                "A256KW wraps 16-4096 bytes, a multiple of 8",
            ));
        }
        let kek = AesKek::new(&AES_256, &self.unseal(c, &row)?)
            .map_err(|_| VaultError::internal("kek"))?;
        let mut out = vec![0u8; dek.len() + 8];
        let wrapped = kek
            .wrap(&dek, &mut out)
            .map_err(|_| VaultError::internal("wrap"))?;
        Ok(KeyOperationResult {
            kid: self.kid(name, &row.version),
            value: B64URL.encode(wrapped),
        })
    }

    /// `POST /keys/{name}/{version}/unwrapkey/attested` (opencvm extension): the key
    /// never leaves; for a caller whose attestation token satisfies the key's release
    /// policy, the vault unwraps `value` (A256KW) and returns the data key wrapped to the
    /// token's RSA key (`enc` as for release), in a JWS signed by the vault.
    fn attested_unwrap(
        &self,
        a: &Authorized,
        name: &str,
        version: &str,
        b: AttestedUnwrapRequest,
    ) -> Result<SignedResult, VaultError> {
        let c = a.caller_for("attested_unwrap")?;
        let mut token = None;
        let r = self.attested_unwrap_inner(c, name, version, &b, &mut token);
        let audited = self.audit(
            c,
            "attested_unwrap",
            name,
            version,
            r.as_ref().map(|_| ()),
            token.as_ref(),
        );
        if !audited && r.is_ok() {
            return Err(VaultError::internal("audit_failed"));
        }
        r
    }

    fn attested_unwrap_inner(
        &self,
        c: &Caller,
        name: &str,
        version: &str,
        b: &AttestedUnwrapRequest,
        token: &mut Option<ValidToken>,
    ) -> Result<SignedResult, VaultError> {
        use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
        if b.alg != "A256KW" {
            return Err(VaultError::bad("bad_parameter", "alg is A256KW"));
        }
        let mechanism =
            WrapMechanism::from_name(b.enc.as_deref().unwrap_or("RSA_AES_KEY_WRAP_256"))
                .map_err(|e| VaultError::bad("bad_parameter", e.to_string()))?;
        let row = self.version(c, name, Some(version))?;
        let t = now();
        if !row.enabled || row.nbf.is_some_and(|n| t < n) || row.exp.is_some_and(|e| t > e) {
            return Err(VaultError::new(
                403,
                "key_disabled",
                "the key is disabled or outside its nbf/exp window",
            ));
        }
        if row.kty != "oct" {
            return Err(VaultError::bad(
                "bad_parameter",
                "attested unwrap needs an oct key",
            ));
        }
        let envelope = Self::stored_policy(&row)
            .and_then(Result::ok)
            .ok_or_else(|| {
                VaultError::new(403, "no_release_policy", "the key has no release policy")
            })?;
        let wrapping = self.admit(&envelope, &b.target, t, token)?;
        let wrapped = B64URL
            .decode(b.value.trim_end_matches('='))
            .map_err(|_| VaultError::bad("bad_parameter", "value is not base64url"))?;
        if wrapped.len() < 24 || wrapped.len() > 4104 {
            return Err(VaultError::bad(
                "bad_parameter",
                "value is not an A256KW-wrapped key",
            ));
        }
        let kek = AesKek::new(&AES_256, &self.unseal(c, &row)?)
            .map_err(|_| VaultError::internal("kek"))?;
        let mut buf = Zeroizing::new(vec![0u8; wrapped.len()]);
        let dek_len = kek
            .unwrap(&wrapped, &mut buf)
            .map_err(|_| VaultError::bad("unwrap_failed", "value does not unwrap under this key"))?
            .len();
        let hsm = KeyHsm::wrap(mechanism, &wrapping, &buf[..dek_len])
            .map_err(|e| VaultError::bad(e.code(), e.to_string()))?;
        let payload = UnwrapPayload {
            request: UnwrapPayloadRequest {
                enc: mechanism.name().into(),
                kid: self.kid(name, &row.version),
                nonce: b.nonce.clone(),
            },
            response: UnwrapPayloadResponse {
                key_hsm: hsm.encode(),
            },
        };
        let jws = self.sign(&payload)?;
        Ok(SignedResult { value: jws })
    }

    /// A key version may be used at `t`: enabled and inside its nbf/exp window.
    fn check_usable(row: &VersionRow, t: i64) -> Result<(), VaultError> {
        if !row.enabled {
            return Err(VaultError::new(403, "key_disabled", "the key is disabled"));
        }
        if row.nbf.is_some_and(|n| t < n) || row.exp.is_some_and(|e| t > e) {
            return Err(VaultError::new(
                403,
                "key_not_valid_now",
                "the key is outside its nbf/exp window",
            ));
        }
        Ok(())
    }

    fn check_releasable(row: &VersionRow, t: i64) -> Result<ReleasePolicyEnvelope, VaultError> {
        Self::check_usable(row, t)?;
        if !row.exportable {
            return Err(VaultError::new(
                403,
                "key_not_exportable",
                "the key is not exportable",
            ));
        }
        Self::stored_policy(row).ok_or_else(|| {
            VaultError::new(403, "key_not_exportable", "the key has no release policy")
        })?
    }

    /// A version's stored release policy: `None` without one; an error if what is
    /// stored no longer parses (it was validated when written).
    fn stored_policy(row: &VersionRow) -> Option<Result<ReleasePolicyEnvelope, VaultError>> {
        let text = row.release_policy.as_deref()?;
        let unreadable = || VaultError::internal("stored_policy");
        Some(
            serde_json::from_str::<Value>(text)
                .map_err(|_| unreadable())
                .and_then(|v| ReleasePolicyEnvelope::parse(&v).map_err(|_| unreadable())),
        )
    }

    /// Validates a release token and evaluates the key's release policy on it; returns
    /// the RSA key of the token's `x-ms-runtime.keys` to wrap to. The validated token is
    /// left in `token` for the audit log, whatever the outcome.
    fn admit(
        &self,
        envelope: &ReleasePolicyEnvelope,
        target: &str,
        t: i64,
        token: &mut Option<ValidToken>,
    ) -> Result<WrappingPublicKey, VaultError> {
        let valid = self
            .authorities
            .validate(target, t)
            .map_err(|e| VaultError::new(401, e.code(), e.to_string()))?;
        *token = Some(valid.clone());
        let decision = envelope
            .policy()
            .evaluate(&valid.issuer, &Value::Object(valid.claims.clone()));
        if !decision.allowed {
            let mut e = VaultError::new(
                403,
                "release_policy_denied",
                "the token does not satisfy the key's release policy",
            );
            e.detail = Some(decision.to_json());
            return Err(e);
        }
        Self::wrapping_key(&valid.claims)
    }

    /// The first RSA key in the token's `x-ms-runtime.keys` usable for encryption.
    fn wrapping_key(claims: &Map<String, Value>) -> Result<WrappingPublicKey, VaultError> {
        claims
            .get("x-ms-runtime")
            .and_then(|r| r.get("keys"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|k| k.get("kty").and_then(Value::as_str) == Some("RSA"))
            .find_map(|k| {
                let kid = k
                    .get("kid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                WrappingPublicKey::from_jwk(k).ok().map(|w| w.with_kid(kid))
            })
            .ok_or_else(|| {
                VaultError::new(
                    403,
                    "no_encryption_key",
                    "the token's x-ms-runtime.keys holds no RSA key usable for encryption",
                )
            })
    }

    /// `POST /keys/{name}/{version}/release`: validates the attestation token, checks
    /// the key's release policy, wraps the key to the token's RSA key and returns a JWS
    /// signed by the vault.
    fn release(
        &self,
        a: &Authorized,
        name: &str,
        version: &str,
        b: ReleaseRequest,
    ) -> Result<SignedResult, VaultError> {
        let c = a.caller_for("release")?;
        let mut token = None;
        let r = self.release_inner(c, name, version, &b, &mut token);
        let v = r
            .as_ref()
            .map(|(row, _)| row.version.clone())
            .unwrap_or_else(|_| version.to_string());
        let audited = self.audit(
            c,
            "release",
            name,
            &v,
            r.as_ref().map(|_| ()),
            token.as_ref(),
        );
        // No key leaves without its audit entry.
        if !audited && r.is_ok() {
            return Err(VaultError::internal("audit_failed"));
        }
        r.map(|(_, out)| out)
    }

    fn release_inner(
        &self,
        c: &Caller,
        name: &str,
        version: &str,
        b: &ReleaseRequest,
        token: &mut Option<ValidToken>,
    ) -> Result<(VersionRow, SignedResult), VaultError> {
        let mechanism =
            WrapMechanism::from_name(b.enc.as_deref().unwrap_or("CKM_RSA_AES_KEY_WRAP"))
                .map_err(|e| VaultError::bad("bad_parameter", e.to_string()))?;
        if b.nonce.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(VaultError::bad(
                "bad_parameter",
                "nonce is longer than 256 characters",
            ));
        }
        let row = self.version(c, name, Some(version))?;
        let t = now();
        let envelope = Self::check_releasable(&row, t)?;
        let wrapping = self.admit(&envelope, &b.target, t, token)?;
        let secret = self.unseal(c, &row)?;
        let hsm = KeyHsm::wrap(mechanism, &wrapping, &secret)
            .map_err(|e| VaultError::bad(e.code(), e.to_string()))?;
        let mut bundle = self.bundle(&row, false);
        bundle.key.key_hsm = Some(hsm.encode());
        let payload = ReleasePayload {
            request: ReleasePayloadRequest {
                api_version: "7.4".into(),
                enc: mechanism.name().into(),
                kid: self.kid(name, &row.version),
                nonce: b.nonce.clone(),
            },
            response: ReleasePayloadResponse { key: bundle },
        };
        let jws = self.sign(&payload)?;
        Ok((row, SignedResult { value: jws }))
    }

    /// Dry run of a release (opencvm extension): the token is validated and the policy
    /// evaluated; the answer says which condition failed. Nothing is released.
    fn release_test(
        &self,
        a: &Authorized,
        name: &str,
        version: &str,
        b: ReleaseRequest,
    ) -> Result<ReleaseTestResult, VaultError> {
        let c = a.caller_for("release_test")?;
        let row = self.version(c, name, Some(version))?;
        let envelope = match Self::check_releasable(&row, now()) {
            Ok(e) => e,
            Err(e) => {
                return Ok(ReleaseTestResult {
                    allowed: false,
                    code: Some(e.code.into()),
                    reason: Some(e.message),
                    policy: None,
                });
            }
        };
        let valid = match self.authorities.validate(&b.target, now()) {
            Ok(v) => v,
            Err(e) => {
                return Ok(ReleaseTestResult {
                    allowed: false,
                    code: Some(e.code().into()),
                    reason: Some(e.to_string()),
                    policy: None,
                });
            }
        };
        let d = envelope
            .policy()
            .evaluate(&valid.issuer, &Value::Object(valid.claims.clone()));
        let key = if d.allowed {
            Self::wrapping_key(&valid.claims).err()
        } else {
            None
        };
        Ok(ReleaseTestResult {
            allowed: d.allowed && key.is_none(),
            code: key.as_ref().map(|e| e.code.into()),
            reason: None,
            policy: Some(d.to_json()),
        })
    }
}

/// The contract's API on the vault: the HTTP edge ([`crate::server`]) admits a caller
/// with [`Vault::authorize`] and calls these.
impl KeyVaultApi for Vault {
    type Caller = Authorized;
    type Error = VaultError;

    /// `GET /keys`.
    fn list_keys(&self, a: &Authorized) -> Result<KeyList, VaultError> {
        let c = a.caller_for("list_keys")?;
        let names = self.store.key_names(&c.vault, false).map_err(store_err)?;
        let value = names
            .iter()
            .map(|n| KeyItem {
                kid: format!("{}/keys/{n}", self.base_url),
                ..KeyItem::default()
            })
            .collect();
        Ok(KeyList {
            value,
            next_link: None,
        })
    }

    fn create_key(
        &self,
        c: &Authorized,
        name: &str,
        req: CreateKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        Vault::create_key(self, c, name, req)
    }

    fn import_key(
        &self,
        c: &Authorized,
        name: &str,
        req: ImportKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        Vault::import_key(self, c, name, req)
    }

    fn get_key(
        &self,
        c: &Authorized,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyBundle, VaultError> {
        Vault::get_key(self, c, name, version)
    }

    /// `DELETE /keys/{name}`: soft delete.
    fn delete_key(&self, a: &Authorized, name: &str) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("delete_key")?;
        let r = (|| {
            let row = self.version(c, name, None)?;
            let audit = Self::audit_entry(c, "delete", name, "", Ok(()), None);
            if !self
                .store
                .set_deleted(&c.vault, name, true, now(), &audit)
                .map_err(store_err)?
            {
                return Err(VaultError::not_found(name));
            }
            Ok(row)
        })();
        if let Err(e) = &r {
            self.audit(c, "delete", name, "", Err(e), None);
        }
        Ok(self.bundle(&r?, true))
    }

    /// `GET /keys/{name}/versions`: every version of a live key, newest first, as Key
    /// Vault's key items (kid, attributes, tags).
    fn list_versions(&self, a: &Authorized, name: &str) -> Result<KeyList, VaultError> {
        let c = a.caller_for("list_versions")?;
        let rows = self
            .store
            .versions(&c.vault, name, false)
            .map_err(store_err)?;
        if rows.is_empty() {
            return Err(VaultError::not_found(name));
        }
        let value = rows
            .iter()
            .map(|r| {
                let b = self.bundle(r, false);
                KeyItem {
                    kid: b.key.kid,
                    recovery_id: None,
                    attributes: Some(b.attributes),
                    tags: Some(b.tags),
                }
            })
            .collect();
        Ok(KeyList {
            value,
            next_link: None,
        })
    }

    fn update_key(
        &self,
        c: &Authorized,
        name: &str,
        version: &str,
        req: UpdateKeyRequest,
    ) -> Result<KeyBundle, VaultError> {
        Vault::update_key(self, c, name, version, req)
    }

    fn release(
        &self,
        c: &Authorized,
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<SignedResult, VaultError> {
        Vault::release(self, c, name, version, req)
    }

    fn release_test(
        &self,
        c: &Authorized,
        name: &str,
        version: &str,
        req: ReleaseRequest,
    ) -> Result<ReleaseTestResult, VaultError> {
        Vault::release_test(self, c, name, version, req)
    }

    fn wrap_key(
        &self,
        c: &Authorized,
        name: &str,
        version: &str,
        req: WrapKeyRequest,
    ) -> Result<KeyOperationResult, VaultError> {
        Vault::wrap_key(self, c, name, version, req)
    }

    fn attested_unwrap(
        &self,
        c: &Authorized,
        name: &str,
        version: &str,
        req: AttestedUnwrapRequest,
    ) -> Result<SignedResult, VaultError> {
        Vault::attested_unwrap(self, c, name, version, req)
    }

    /// `GET /deletedkeys`: the soft-deleted keys (their newest version's attributes).
    fn list_deleted(&self, a: &Authorized) -> Result<KeyList, VaultError> {
        let c = a.caller_for("list_deleted")?;
        let mut value = Vec::new();
        for name in self.store.key_names(&c.vault, true).map_err(store_err)? {
            if let Some(r) = self
                .store
                .versions(&c.vault, &name, true)
                .map_err(store_err)?
                .first()
            {
                let b = self.bundle(r, true);
                value.push(KeyItem {
                    kid: format!("{}/keys/{name}", self.base_url),
                    recovery_id: b.recovery_id,
                    attributes: Some(b.attributes),
                    tags: Some(b.tags),
                });
            }
        }
        Ok(KeyList {
            value,
            next_link: None,
        })
    }

    /// `GET /deletedkeys/{name}`.
    fn get_deleted(&self, a: &Authorized, name: &str) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("get_deleted")?;
        let row = self
            .store
            .versions(&c.vault, name, true)
            .map_err(store_err)?
            .into_iter()
            .next()
            .ok_or_else(|| VaultError::not_found(name))?;
        Ok(self.bundle(&row, true))
    }

    /// `DELETE /deletedkeys/{name}`: purge for good.
    fn purge_key(&self, a: &Authorized, name: &str) -> Result<(), VaultError> {
        let c = a.caller_for("purge_key")?;
        let audit = Self::audit_entry(c, "purge", name, "", Ok(()), None);
        let r = match self.store.purge(&c.vault, name, &audit).map_err(store_err) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VaultError::not_found(name)),
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.audit(c, "purge", name, "", Err(e), None);
        }
        r
    }

    /// `POST /deletedkeys/{name}/recover`.
    fn recover_key(&self, a: &Authorized, name: &str) -> Result<KeyBundle, VaultError> {
        let c = a.caller_for("recover_key")?;
        let r = (|| {
            let audit = Self::audit_entry(c, "recover", name, "", Ok(()), None);
            if !self
                .store
                .set_deleted(&c.vault, name, false, now(), &audit)
                .map_err(store_err)?
            {
                return Err(VaultError::not_found(name));
            }
            self.version(c, name, None)
        })();
        if let Err(e) = &r {
            self.audit(c, "recover", name, "", Err(e), None);
        }
        Ok(self.bundle(&r?, false))
    }

    fn create_credential(
        &self,
        c: &Authorized,
        req: CreateCredentialRequest,
    ) -> Result<NewCredential, VaultError> {
        Vault::create_credential(self, c, req)
    }

    /// `GET /credentials` (administrator): the vault's credentials (id, role, created);
    /// never the credentials themselves, which are stored only as hashes.
    fn list_credentials(&self, a: &Authorized) -> Result<CredentialList, VaultError> {
        let c = a.caller_for("list_credentials")?;
        let value = self
            .store
            .credentials(&c.vault)
            .map_err(store_err)?
            .into_iter()
            .map(|(sha, role, created)| CredentialInfo {
                id: credential_id(&sha),
                role,
                created,
            })
            .collect();
        Ok(CredentialList { value })
    }

    /// `DELETE /credentials/{id}` (administrator): the credential stops working at once.
    /// The vault's last administrator credential cannot be revoked (409).
    fn revoke_credential(&self, a: &Authorized, id: &str) -> Result<Revoked, VaultError> {
        let c = a.caller_for("revoke_credential")?;
        let r = (|| {
            let sha = self.credential_by_id(c, id)?;
            let audit = Self::audit_entry(c, "credential_revoke", "", id, Ok(()), None);
            match self
                .store
                .retire_credential(&c.vault, &sha, None, now(), &audit)
            {
                Ok(true) => Ok(Revoked {
                    id: id.to_string(),
                    revoked: true,
                }),
                Ok(false) => Err(VaultError::new(404, "credential_not_found", id.to_string())),
                Err(StoreError::Exists(_)) => Err(VaultError::new(
                    409,
                    "last_administrator",
                    "the vault's last administrator credential cannot be revoked",
                )),
                Err(e) => Err(store_err(e)),
            }
        })();
        if let Err(e) = &r {
            self.audit(c, "credential_revoke", "", id, Err(e), None);
        }
        r
    }

    /// `POST /credentials/{id}/rotate`: a new credential with the same role replaces
    /// the one named (which stops working at once); an administrator rotates any of the
    /// vault's credentials, any other caller only its own. The new credential is shown
    /// this once.
    fn rotate_credential(&self, a: &Authorized, id: &str) -> Result<RotatedCredential, VaultError> {
        let c = a.caller_for("rotate_credential")?;
        if c.id != id && !c.role.may(Op::Admin) {
            let e = VaultError::forbidden(c.role.name(), "rotate other credentials");
            self.audit(c, "credential_rotate", "", id, Err(&e), None);
            return Err(e);
        }
        let r = (|| {
            let sha = self.credential_by_id(c, id)?;
            let cred = random_token()?;
            let new_sha = sha256(cred.as_bytes());
            let new_id = credential_id(&new_sha);
            let audit = Self::audit_entry(c, "credential_rotate", &new_id, id, Ok(()), None);
            match self
                .store
                .retire_credential(&c.vault, &sha, Some(&new_sha), now(), &audit)
                .map_err(store_err)?
            {
                true => Ok(RotatedCredential {
                    vault: c.vault.clone(),
                    credential: cred.to_string(),
                    id: new_id,
                    replaces: id.to_string(),
                }),
                false => Err(VaultError::new(404, "credential_not_found", id.to_string())),
            }
        })();
        if let Err(e) = &r {
            self.audit(c, "credential_rotate", "", id, Err(e), None);
        }
        r
    }

    /// The vault's audit log (administrator).
    fn audit_log(&self, a: &Authorized) -> Result<AuditLog, VaultError> {
        let c = a.caller_for("audit_log")?;
        let value = self.store.audit_log(&c.vault).map_err(store_err)?;
        Ok(AuditLog { value })
    }

    /// Creates a vault (service administrator); returns its administrator credential.
    fn create_vault(&self, a: &Authorized, name: &str) -> Result<NewCredential, VaultError> {
        a.service_admin_for("create_vault")?;
        if !valid_name(name) {
            return Err(VaultError::bad(
                "bad_parameter",
                "a vault name is 1-127 of [0-9a-zA-Z-]",
            ));
        }
        if name.eq_ignore_ascii_case(SERVICE_VAULT) {
            return Err(VaultError::bad(
                "bad_parameter",
                "the vault name \"service\" is reserved (the service's own audit entries)",
            ));
        }
        let cred = random_token()?;
        let hash = sha256(cred.as_bytes());
        self.store
            .create_vault(name, &hash, now())
            .map_err(store_err)?;
        let id = credential_id(&hash);
        if let Err(err) = self
            .store
            .audit(&Self::service_audit(name, "vault_create", &id, Ok(())))
        {
            tracing::error!(error = %err, "audit log write failed");
        }
        Ok(NewCredential {
            vault: name.to_string(),
            credential: cred.to_string(),
            id,
            role: Role::Administrator.name().into(),
        })
    }

    /// `GET /regions` (service administrator): every region with its current root
    /// version and key counts.
    fn list_regions(&self, a: &Authorized) -> Result<RegionList, VaultError> {
        a.service_admin_for("list_regions")?;
        let value = self
            .store
            .regions()
            .map_err(store_err)?
            .into_iter()
            .map(|r| RegionInfo {
                region: r.name,
                vault: r.vault,
                root_version: r.root_version,
                root_created: r.root_created,
                keys: r.keys,
                key_versions: r.versions,
                created: r.created,
            })
            .collect();
        Ok(RegionList { value })
    }

    /// `POST /regions/{region}` (service administrator): creates the region's root key
    /// (version 1, sealed under the master key) and its platform vault; returns the
    /// platform vault's administrator credential (once).
    fn create_region(&self, a: &Authorized, region: &str) -> Result<RegionCreated, VaultError> {
        let r = self.create_region_inner(a, region);
        self.audit_region_failure(region, "region_create", r.as_ref().err());
        r
    }

    /// `POST /regions/{region}/rotate` (service administrator): a new root key version;
    /// every key version of the region's platform vault (soft-deleted ones too) is
    /// resealed under it and the old version deleted, in one store transaction.
    fn rotate_region(&self, a: &Authorized, region: &str) -> Result<RegionRotated, VaultError> {
        let r = (|| {
            a.service_admin_for("rotate_region")?;
            if !valid_region(region) {
                return Err(VaultError::region_not_found(region));
            }
            let vault = self
                .store
                .region_vault(region)
                .map_err(store_err)?
                .ok_or_else(|| VaultError::region_not_found(region))?;
            self.rotate_inner(region, &vault)
        })();
        self.audit_region_failure(region, "region_rotate", r.as_ref().err());
        r
    }
}

/// Shared handle.
pub type SharedVault = Arc<Vault>;
