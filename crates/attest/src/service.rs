//! The attestation service: providers (tenants), their keys and policies, and the
//! evidence → claims → policy → token path. HTTP lives in [`crate::server`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value};
use snp::cert::Vek;
use snp::chain::{CertChain, TrustAnchors};
use snp::collateral::Fetcher;
use snp::lookup::RootCrls;
use snp::verify::Verifier;
use zeroize::Zeroizing;

use crate::collateral::{CrlMemo, EmulatorRoots, ServiceCrls};
use crate::error::{ApiError, AttestRefusal as _};
use crate::jwt::{Alg, TokenSigner};
use crate::nonce::NonceStore;
use crate::policy::{self, CompiledPolicy, Decision, ProviderSettings};
use crate::store::{AuditEntry, ProviderRow, SigningKeyRow, SqlStore, Store};
use crate::{AttestationType, evidence};
use attest_api::{
    Access, AdminCredential, AdminRevoked, AttestApi, AttestRequest, AttestResponse, AuditLog,
    DryRun, NonceResponse, OpenIdConfiguration, Operation, PolicyInfo, PolicySet,
    PolicyTestRequest, ProviderCreated, ReferenceValueList, ReferenceValueRemoved,
    ReferenceValueRequest, SigningKeyRevoked, SigningKeyRotated, TokenResponse,
};
use seal::MasterKey;

/// A parsed VEK and its chain, shared.
pub(crate) type ParsedChain = Arc<(Vek, CertChain)>;

/// How many parsed certificate chains the service remembers.
const MAX_CACHED_CHAINS: usize = 4096;

/// The name of the provider served at the root paths.
pub const DEFAULT_PROVIDER: &str = "default";

/// How a service is set up.
#[derive(Debug)]
pub struct ServiceConfig {
    /// Where the database and the admin credential live.
    pub state_dir: PathBuf,
    /// The master key that seals the signing keys; it must not be stored in the state
    /// directory (the CLI refuses that), so a copy of the database alone opens nothing.
    pub master_key: MasterKey,
    /// The public base URL (the default provider's issuer).
    pub issuer: String,
    /// Emulated secure processors whose evidence is trusted (labelled emulated), each
    /// pinned by its ARK's fingerprint; on first start the default provider's settings
    /// then allow emulated evidence. Empty: no emulated evidence verifies.
    pub emulator_roots: Vec<EmulatorRoots>,
    /// Signing algorithm for new providers' keys.
    pub token_alg: Alg,
    /// Token lifetime.
    pub token_lifetime: Duration,
    /// Nonce lifetime.
    pub nonce_ttl: Duration,
    /// Where VEKs and chains come from when a request carries none.
    pub collateral: Option<Fetcher>,
    /// Check certificate validity at this time (Unix seconds) instead of now, for
    /// recorded evidence.
    pub evidence_time: Option<i64>,
    /// How long a signing key stays in the JWKS after a rotation replaced it (default:
    /// the token lifetime, so tokens it signed verify until they expire).
    pub signing_key_grace: Option<Duration>,
    /// Where tenant policies run. `None`: nowhere. Only the built-in default policies
    /// apply; setting a tenant policy, a dry run with a draft, and attesting to a
    /// provider whose stored policy a tenant wrote are refused (501
    /// `policy_sandbox_unavailable`), since tenant Rego in this process could exhaust
    /// its memory or stall it.
    pub policy_sandbox: Option<crate::sandbox::SandboxConfig>,
    /// The database: a SQLite file or a PostgreSQL URL; `None` is SQLite at
    /// `state_dir/attest.db`.
    pub database: Option<sqldb::Location>,
}

impl ServiceConfig {
    /// Defaults: RS256, 8 h tokens, 5 min nonces, no emulator, no collateral source.
    pub fn new(state_dir: PathBuf, issuer: String, master_key: MasterKey) -> Self {
        ServiceConfig {
            state_dir,
            master_key,
            issuer,
            emulator_roots: Vec::new(),
            token_alg: Alg::RS256,
            token_lifetime: Duration::from_secs(8 * 3600),
            nonce_ttl: Duration::from_secs(300),
            collateral: None,
            evidence_time: None,
            signing_key_grace: None,
            policy_sandbox: None,
            database: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The master key or a sealed secret failed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// A key could not be made or loaded.
    #[error(transparent)]
    Jwt(#[from] crate::jwt::JwtError),
    /// A stored policy no longer compiles.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The state directory is unusable.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    /// Stored settings are not valid JSON.
    #[error("stored settings: {0}")]
    Settings(#[from] serde_json::Error),
    /// The nonce key could not be made.
    #[error("nonces: {0}")]
    Nonces(#[from] crate::nonce::NonceError),
    /// The shared nonce key could not be made or read back.
    #[error("the shared nonce key: {0}")]
    NonceKey(&'static str),
}

/// A policy version in force: compiled here when it is the service's own default, run
/// in the sandbox when a tenant wrote it (refused when the service has no sandbox).
#[derive(Debug)]
pub struct ActivePolicy {
    /// Version (0 for the built-in default).
    pub version: i64,
    /// The Rego text.
    pub text: String,
    /// `x-ms-policy-hash`.
    pub hash: String,
    compiled: Option<CompiledPolicy>,
}

/// A token-signing key in memory, with when it leaves the JWKS.
#[derive(Debug)]
struct Signer {
    id: i64,
    signer: TokenSigner,
    retire_after: Option<i64>,
}

impl Signer {
    fn published_at(&self, t: i64) -> bool {
        self.retire_after.is_none_or(|r| t < r)
    }
}

/// A provider (tenant) loaded in memory.
#[derive(Debug)]
pub struct Provider {
    name: String,
    admin_sha256: Vec<u8>,
    settings: ProviderSettings,
    /// Not revoked, newest first; the first signs; each is in the JWKS until it retires.
    signers: Vec<Signer>,
    policies: HashMap<AttestationType, Arc<ActivePolicy>>,
}

impl Provider {
    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its settings.
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }
    /// The policy in force for `kind`.
    pub fn policy(&self, kind: AttestationType) -> Option<&Arc<ActivePolicy>> {
        self.policies.get(&kind)
    }
}

/// The attestation service.
pub struct Service {
    issuer_base: String,
    store: Arc<dyn Store>,
    /// Replicas share the database (PostgreSQL): what is kept in memory is reloaded
    /// when the store's generation moves.
    shared: bool,
    /// The store generation the providers and reference values in memory are from.
    seen: std::sync::atomic::AtomicI64,
    /// Held while reloading, so concurrent requests reload once.
    reloading: std::sync::Mutex<()>,
    master: MasterKey,
    verifier: Verifier,
    root_crls: RootCrls,
    crl_memo: CrlMemo,
    kds_guard: crate::collateral::KdsGuard,
    /// The launch measurements the platform runs, by measurement (hex).
    reference: RwLock<HashMap<String, crate::store::ReferenceValue>>,
    fetcher: Option<Fetcher>,
    nonces: NonceStore,
    providers: RwLock<HashMap<String, Arc<Provider>>>,
    chains: RwLock<HashMap<[u8; 32], ParsedChain>>,
    token_alg: Alg,
    token_lifetime: i64,
    key_grace: i64,
    evidence_time: Option<i64>,
    state_dir: PathBuf,
    sandbox: Option<crate::sandbox::Sandbox>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("issuer", &self.issuer_base)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn new_credential() -> Result<Zeroizing<String>, ApiError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| ApiError::internal("random"))?;
    Ok(Zeroizing::new(B64URL.encode(raw.as_ref())))
}

/// Whether `name` is a valid provider name: 1-48 of `[a-z0-9-]`, not starting with `-`.
pub fn valid_provider_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Service {
    /// Opens (or initialises) the service state. On first start the default
    /// provider is created and its administrator credential written to
    /// `STATE/admin.token` (mode 0600); that path is returned then.
    pub fn open(cfg: ServiceConfig) -> Result<(Self, Option<PathBuf>), ServiceError> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let location = cfg
            .database
            .clone()
            .unwrap_or_else(|| sqldb::Location::sqlite(&cfg.state_dir.join("attest.db")));
        let shared = location.engine() == sqldb::Engine::Postgres;
        let store: Arc<dyn Store> = Arc::new(SqlStore::open(
            &location,
            crate::store::audit_keys(&cfg.master_key)?,
        )?);
        let generation = store.generation()?;
        let nonces = if shared {
            let key = Self::shared_nonce_key(store.as_ref(), &cfg.master_key)?;
            NonceStore::shared(cfg.nonce_ttl, 100_000, &key, store.clone())
        } else {
            NonceStore::new(cfg.nonce_ttl, 100_000)?
        };
        let mut anchors = TrustAnchors::amd();
        let mut root_crls = RootCrls::new();
        for roots in &cfg.emulator_roots {
            roots.install(&mut anchors, &mut root_crls);
        }
        let allow_emulated = !cfg.emulator_roots.is_empty();
        let svc = Service {
            issuer_base: cfg.issuer.trim_end_matches('/').to_string(),
            store,
            shared,
            seen: std::sync::atomic::AtomicI64::new(generation),
            reloading: std::sync::Mutex::new(()),
            master: cfg.master_key,
            verifier: Verifier::new(anchors),
            root_crls,
            crl_memo: CrlMemo::default(),
            kds_guard: crate::collateral::KdsGuard::default(),
            reference: RwLock::new(HashMap::new()),
            fetcher: cfg.collateral,
            nonces,
            providers: RwLock::new(HashMap::new()),
            chains: RwLock::new(HashMap::new()),
            token_alg: cfg.token_alg,
            token_lifetime: i64::try_from(cfg.token_lifetime.as_secs()).unwrap_or(i64::MAX),
            key_grace: i64::try_from(
                cfg.signing_key_grace
                    .unwrap_or(cfg.token_lifetime)
                    .as_secs(),
            )
            .unwrap_or(i64::MAX),
            evidence_time: cfg.evidence_time,
            state_dir: cfg.state_dir.clone(),
            sandbox: cfg.policy_sandbox.map(crate::sandbox::Sandbox::new),
        };
        let mut created = None;
        if !svc
            .store
            .providers()?
            .iter()
            .any(|p| p.name == DEFAULT_PROVIDER)
        {
            let settings = ProviderSettings {
                allow_emulated,
                ..ProviderSettings::default()
            };
            match svc.create_provider_row(DEFAULT_PROVIDER, &settings) {
                Ok(token) => {
                    let path = cfg.state_dir.join("admin.token");
                    seal::write_secret_file(&path, token.as_bytes())?;
                    created = Some(path);
                }
                // A replica sharing the database created it meanwhile.
                Err(e) if e.code == "provider_exists" => {}
                Err(e) => return Err(std::io::Error::other(e.message).into()),
            }
        }
        svc.reload_reference_values()?;
        for row in svc.store.providers()? {
            let p = svc.load_provider(&row)?;
            if let Ok(mut map) = svc.providers.write() {
                map.insert(row.name.clone(), Arc::new(p));
            }
        }
        Ok((svc, created))
    }

    /// The nonce key replicas share: made by the first, sealed under the master key in
    /// the database.
    fn shared_nonce_key(
        store: &dyn Store,
        master: &MasterKey,
    ) -> Result<Zeroizing<[u8; 32]>, ServiceError> {
        const NAME: &str = "nonce-key";
        const CONTEXT: &str = "opencvm-attest/nonce-key";
        let sealed = match store.secret(NAME)? {
            Some(s) => s,
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(key.as_mut())
                    .map_err(|_| ServiceError::NonceKey("no randomness"))?;
                store.put_secret(NAME, &master.seal(CONTEXT, key.as_ref())?)?
            }
        };
        let opened = Zeroizing::new(master.open(CONTEXT, &sealed)?);
        let mut key = Zeroizing::new([0u8; 32]);
        if opened.len() != 32 {
            return Err(ServiceError::NonceKey("the stored key is not 32 bytes"));
        }
        key.copy_from_slice(&opened);
        Ok(key)
    }

    /// On a shared database, reloads providers and reference values when another
    /// replica (or this one) changed them since they were loaded: one query per call,
    /// off the async worker (it may wait for the store or for a reload in progress).
    fn refresh(&self) -> Result<(), ApiError> {
        if !self.shared {
            return Ok(());
        }
        httpd::off_worker(|| self.refresh_now())
    }

    fn refresh_now(&self) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        let store_err = |e| ApiError::logged("store", e);
        let generation = self.store.generation().map_err(store_err)?;
        if generation == self.seen.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self
            .reloading
            .lock()
            .map_err(|_| ApiError::internal("reload"))?;
        if generation <= self.seen.load(Ordering::Acquire) {
            return Ok(());
        }
        self.reload_reference_values().map_err(store_err)?;
        let mut fresh = HashMap::new();
        for row in self.store.providers().map_err(store_err)? {
            let p = self
                .load_provider(&row)
                .map_err(|_| ApiError::internal("load_provider"))?;
            fresh.insert(row.name.clone(), Arc::new(p));
        }
        if let Ok(mut map) = self.providers.write() {
            *map = fresh;
        }
        self.seen.store(generation, Ordering::Release);
        tracing::debug!(generation, "reloaded providers from the shared database");
        Ok(())
    }

    fn seal_context(provider: &str) -> String {
        format!("opencvm-attest/signing-key/{provider}")
    }

    fn new_signing_key_row(&self, provider: &str) -> Result<SigningKeyRow, ApiError> {
        let t = now();
        let signer = TokenSigner::generate(
            self.token_alg,
            &format!("opencvm attestation token signing ({provider})"),
            t,
            365,
        )
        .map_err(|_| ApiError::internal("key_generation"))?;
        let pkcs8 = signer
            .to_pkcs8()
            .map_err(|_| ApiError::internal("key_generation"))?;
        let sealed = self
            .master
            .seal(&Self::seal_context(provider), &pkcs8)
            .map_err(|_| ApiError::internal("seal"))?;
        Ok(SigningKeyRow {
            id: 0,
            alg: self.token_alg.name().to_string(),
            sealed_pkcs8: sealed,
            cert_der: signer.cert_der().to_vec(),
            created: t,
            retire_after: None,
            revoked: false,
        })
    }

    fn create_provider_row(
        &self,
        name: &str,
        settings: &ProviderSettings,
    ) -> Result<Zeroizing<String>, ApiError> {
        let token = new_credential()?;
        let row = ProviderRow {
            name: name.to_string(),
            admin_sha256: sha256(token.as_bytes()),
            settings_json: serde_json::to_string(settings)
                .map_err(|_| ApiError::internal("settings"))?,
        };
        let key = self.new_signing_key_row(name)?;
        let caller = if name == DEFAULT_PROVIDER {
            "setup"
        } else {
            DEFAULT_ADMIN
        };
        let audit = audit_entry(name, caller, "provider_create", "");
        self.store
            .create_provider(&row, &key, &audit)
            .map_err(|e| match e {
                crate::store::StoreError::Exists(_) => ApiError::new(
                    409,
                    "provider_exists",
                    format!("provider {name:?} already exists"),
                ),
                e => ApiError::logged("store", e),
            })?;
        Ok(token)
    }

    fn load_provider(&self, row: &ProviderRow) -> Result<Provider, ServiceError> {
        let settings: ProviderSettings = serde_json::from_str(&row.settings_json)?;
        let mut signers = Vec::new();
        let t = now();
        for k in self.store.signing_keys(&row.name)? {
            if k.revoked || k.retire_after.is_some_and(|r| r <= t) {
                continue;
            }
            let alg = Alg::from_name(&k.alg).unwrap_or(Alg::RS256);
            let pkcs8 = self
                .master
                .open(&Self::seal_context(&row.name), &k.sealed_pkcs8)?;
            signers.push(Signer {
                id: k.id,
                signer: TokenSigner::from_pkcs8(alg, &pkcs8, k.cert_der)?,
                retire_after: k.retire_after,
            });
        }
        let mut policies = HashMap::new();
        for kind in AttestationType::ALL {
            let active = match self.store.latest_policy(&row.name, kind.path_name())? {
                // A tenant's policy never runs in this process (not even to compile: a
                // policy stored before could be a bomb); without a sandbox it is refused
                // when used.
                Some(p) => ActivePolicy {
                    version: p.version,
                    hash: policy::policy_hash(&p.text),
                    compiled: None,
                    text: p.text,
                },
                None => {
                    let text = policy::default_policy(kind);
                    ActivePolicy {
                        version: 0,
                        hash: policy::policy_hash(&text),
                        compiled: Some(CompiledPolicy::compile(&text, &settings)?),
                        text,
                    }
                }
            };
            policies.insert(kind, Arc::new(active));
        }
        Ok(Provider {
            name: row.name.clone(),
            admin_sha256: row.admin_sha256.clone(),
            settings,
            signers,
            policies,
        })
    }

    /// The provider `name` as just changed here. On a shared database everything is
    /// reloaded under the reload lock (so a copy read here can never overwrite a newer
    /// one another request loaded meanwhile).
    fn reload(&self, name: &str) -> Result<Arc<Provider>, ApiError> {
        if self.shared {
            self.refresh()?;
            return self
                .providers
                .read()
                .ok()
                .and_then(|m| m.get(name).cloned())
                .ok_or_else(|| ApiError::not_found(format!("no provider {name:?}")));
        }
        let rows = self
            .store
            .providers()
            .map_err(|e| ApiError::logged("store", e))?;
        let row = rows
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no provider {name:?}")))?;
        let p = Arc::new(
            self.load_provider(row)
                .map_err(|_| ApiError::internal("load_provider"))?,
        );
        if let Ok(mut map) = self.providers.write() {
            map.insert(name.to_string(), p.clone());
        }
        Ok(p)
    }

    /// The provider named `name` (on a shared database, as the newest change of any
    /// replica left it).
    pub fn provider(&self, name: &str) -> Result<Arc<Provider>, ApiError> {
        self.refresh()?;
        self.providers
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| ApiError::not_found(format!("no attestation provider {name:?}")))
    }

    /// The issuer URL of a provider.
    pub fn issuer(&self, provider: &str) -> String {
        if provider == DEFAULT_PROVIDER {
            self.issuer_base.clone()
        } else {
            format!("{}/providers/{provider}", self.issuer_base)
        }
    }

    /// Checks a bearer credential against the provider's administrator credential.
    pub fn check_admin(&self, provider: &str, bearer: Option<&str>) -> Result<(), ApiError> {
        let p = self.provider(provider)?;
        let token = bearer.ok_or_else(ApiError::unauthorized)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &sha256(token.as_bytes()),
            &p.admin_sha256,
        )
        .map_err(|_| ApiError::unauthorized())
    }

    /// The edge's one access check: admits a request about `provider` to `op` as the
    /// contract's operation table says ([`attest_api::OPERATIONS`]): for an
    /// administrator operation, 404 for an unknown provider, then 401 for a credential
    /// that is not the administrator's the operation needs. Runs before the request's
    /// body is read.
    pub fn admit(
        &self,
        op: &Operation,
        provider: &str,
        bearer: Option<&str>,
    ) -> Result<Admitted, ApiError> {
        let role = match op.access {
            Access::Anyone | Access::AnyoneDraftNeedsAdmin => Role::Anyone,
            Access::ProviderAdmin => {
                self.check_admin(provider, bearer)?;
                Role::ProviderAdmin
            }
            Access::DefaultAdmin => {
                self.check_admin(DEFAULT_PROVIDER, bearer)?;
                Role::DefaultAdmin
            }
            Access::ProviderOrDefaultAdmin => {
                if self.check_admin(provider, bearer).is_ok() {
                    Role::ProviderAdmin
                } else {
                    self.check_admin(DEFAULT_PROVIDER, bearer)?;
                    Role::DefaultAdmin
                }
            }
        };
        Ok(Admitted {
            provider: provider.to_string(),
            peer: None,
            role,
            // Kept only where a draft policy may need it checked later.
            bearer: match op.access {
                Access::AnyoneDraftNeedsAdmin => bearer.map(|b| Zeroizing::new(b.to_string())),
                _ => None,
            },
        })
    }

    /// [`Service::admit`] to the operation named `id` in the contract.
    pub fn admit_op(
        &self,
        id: &str,
        provider: &str,
        bearer: Option<&str>,
    ) -> Result<Admitted, ApiError> {
        let op = attest_api::operation(id).ok_or_else(|| ApiError::internal("operation"))?;
        self.admit(op, provider, bearer)
    }

    /// That an admitted request may run a draft policy (code the service runs): its
    /// provider's administrator.
    fn require_admin(&self, a: &Admitted) -> Result<(), ApiError> {
        match a.role {
            Role::ProviderAdmin => Ok(()),
            _ => self.check_admin(&a.provider, a.bearer.as_ref().map(|b| b.as_str())),
        }
    }

    /// Creates a named provider (requires the default provider's administrator);
    /// returns its administrator credential, shown only this once.
    pub fn create_provider(
        &self,
        a: &Admitted,
        name: &str,
        settings: ProviderSettings,
    ) -> Result<ProviderCreated, ApiError> {
        a.expect(Role::DefaultAdmin)?;
        if !valid_provider_name(name) || name == DEFAULT_PROVIDER {
            return Err(ApiError::bad(
                "invalid_provider_name",
                "a provider name is 1-48 characters of a-z, 0-9 and '-'",
            ));
        }
        let token = self.create_provider_row(name, &settings)?;
        self.reload(name)?;
        Ok(ProviderCreated {
            name: name.to_string(),
            issuer: self.issuer(name),
            admin_token: token.to_string(),
        })
    }

    /// The provider's JWKS (every key it has signed with, newest first).
    pub fn jwks(&self, provider: &str) -> Result<attest_api::Jwks, ApiError> {
        let p = self.provider(provider)?;
        Ok(attest_api::Jwks {
            keys: p
                .signers
                .iter()
                .filter(|s| s.published_at(now()))
                .map(|s| s.signer.jwk())
                .collect(),
        })
    }

    /// The provider's OpenID Connect discovery document.
    pub fn openid_configuration(&self, provider: &str) -> Result<OpenIdConfiguration, ApiError> {
        let p = self.provider(provider)?;
        let iss = self.issuer(provider);
        let mut algs: Vec<&str> = p.signers.iter().map(|s| s.signer.alg().name()).collect();
        algs.dedup();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Ok(OpenIdConfiguration {
            jwks_uri: format!("{iss}/certs"),
            issuer: iss,
            id_token_signing_alg_values_supported: strings(&algs),
            response_types_supported: strings(&["token", "none"]),
            subject_types_supported: strings(&["public"]),
            claims_supported: strings(&[
                "iss",
                "iat",
                "nbf",
                "exp",
                "jti",
                "nonce",
                "x-ms-ver",
                "x-ms-attestation-type",
                "x-ms-compliance-status",
                "x-ms-policy-hash",
                "x-ms-runtime",
                "x-ms-isolation-tee",
                "x-opencvm-emulated",
            ]),
            revocation_endpoint: None,
        })
    }

    /// Adds a new signing key, which signs from now on; the keys it replaces stay in
    /// the JWKS for the grace period (default: the token lifetime) and then retire.
    pub fn rotate_signing_key(&self, a: &Admitted) -> Result<SigningKeyRotated, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let row = self.new_signing_key_row(provider)?;
        let retire_at = now().saturating_add(self.key_grace);
        let audit = audit_entry(provider, "administrator", "signing_key_rotate", "");
        self.store
            .add_signing_key(provider, &row, retire_at, &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        let p = self.reload(provider)?;
        let kid = p.signers.first().map(|s| s.signer.kid().to_string());
        Ok(SigningKeyRotated {
            kid,
            previous_keys_retire_at: retire_at,
        })
    }

    /// Revokes signing key `kid` at once: it leaves the JWKS, so tokens it signed stop
    /// verifying. Revoking the key in use makes a new one first.
    pub fn revoke_signing_key(
        &self,
        a: &Admitted,
        kid: &str,
    ) -> Result<SigningKeyRevoked, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let p = self.provider(provider)?;
        let pos = p
            .signers
            .iter()
            .position(|s| s.signer.kid() == kid)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "signing_key_not_found",
                    format!("no signing key {kid:?}"),
                )
            })?;
        let replacement = match pos {
            0 => Some(self.new_signing_key_row(provider)?),
            _ => None,
        };
        let audit = audit_entry(provider, "administrator", "signing_key_revoke", kid);
        let revoked = self
            .store
            .revoke_signing_key(provider, p.signers[pos].id, replacement.as_ref(), &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        if !revoked {
            return Err(ApiError::new(
                404,
                "signing_key_not_found",
                format!("no signing key {kid:?}"),
            ));
        }
        let p = self.reload(provider)?;
        let kid_now = p.signers.first().map(|s| s.signer.kid().to_string());
        Ok(SigningKeyRevoked {
            revoked: kid.to_string(),
            kid: kid_now,
        })
    }

    /// A new administrator credential for the provider, replacing the current one at
    /// once, by its administrator. Shown this once.
    pub fn rotate_admin_credential(&self, a: &Admitted) -> Result<AdminCredential, ApiError> {
        a.expect(Role::ProviderAdmin)?;
        self.new_admin_credential(a.provider(), "administrator", "admin_credential_rotate")
    }

    /// A new administrator credential for the provider, by the default provider's
    /// administrator (for a lost or revoked credential). Shown this once.
    pub fn reset_admin_credential(&self, a: &Admitted) -> Result<AdminCredential, ApiError> {
        a.expect(Role::DefaultAdmin)?;
        self.new_admin_credential(a.provider(), DEFAULT_ADMIN, "admin_credential_reset")
    }

    fn new_admin_credential(
        &self,
        provider: &str,
        caller: &str,
        op: &str,
    ) -> Result<AdminCredential, ApiError> {
        self.provider(provider)?;
        let token = new_credential()?;
        let audit = audit_entry(provider, caller, op, "");
        self.store
            .set_admin(provider, &sha256(token.as_bytes()), &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        if provider == DEFAULT_PROVIDER {
            // The file written at first start no longer holds a valid credential.
            let _ = std::fs::remove_file(self.state_dir.join("admin.token"));
        }
        self.reload(provider)?;
        Ok(AdminCredential {
            provider: provider.to_string(),
            admin_token: token.to_string(),
        })
    }

    /// Revokes `provider`'s administrator credential (by its administrator or the
    /// default provider's): nothing administers it until the default provider's
    /// administrator issues a new one. The default provider's own credential can only be
    /// rotated (revoking it would leave the service without an administrator).
    pub fn revoke_admin_credential(&self, a: &Admitted) -> Result<AdminRevoked, ApiError> {
        let provider = a.provider();
        let caller = match a.role {
            Role::ProviderAdmin => "administrator",
            Role::DefaultAdmin => DEFAULT_ADMIN,
            Role::Anyone => return Err(ApiError::unauthorized()),
        };
        if provider == DEFAULT_PROVIDER {
            return Err(ApiError::new(
                409,
                "default_admin_required",
                "the default provider's administrator credential can be rotated, not revoked",
            ));
        }
        // A hash no credential has: 32 random bytes.
        let mut unusable = [0u8; 32];
        aws_lc_rs::rand::fill(&mut unusable).map_err(|_| ApiError::internal("random"))?;
        let audit = audit_entry(provider, caller, "admin_credential_revoke", "");
        self.store
            .set_admin(provider, &unusable, &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        self.reload(provider)?;
        Ok(AdminRevoked {
            provider: provider.to_string(),
            revoked: true,
        })
    }

    fn reload_reference_values(&self) -> Result<(), crate::store::StoreError> {
        let all = self.store.reference_values()?;
        if let Ok(mut m) = self.reference.write() {
            *m = all
                .into_iter()
                .map(|rv| (rv.measurement.clone(), rv))
                .collect();
        }
        Ok(())
    }

    /// After a change of reference values here: reload them (on a shared database,
    /// everything, under the reload lock).
    fn reference_values_changed(&self) -> Result<(), ApiError> {
        if self.shared {
            return self.refresh();
        }
        self.reload_reference_values()
            .map_err(|e| ApiError::logged("store", e))
    }

    /// The reference value registered for a launch measurement, if any.
    pub(crate) fn reference_value(
        &self,
        measurement: &[u8; 48],
    ) -> Option<crate::store::ReferenceValue> {
        self.reference
            .read()
            .ok()?
            .get(&hex::encode(measurement))
            .cloned()
    }

    /// Every registered reference value (anyone may read them).
    pub fn reference_values(&self) -> Result<ReferenceValueList, ApiError> {
        let all = self
            .store
            .reference_values()
            .map_err(|e| ApiError::logged("store", e))?;
        Ok(ReferenceValueList { value: all })
    }

    /// Registers (default provider's administrator: the platform operator) a launch
    /// measurement that hosts of `region` run: `{"measurement", "component", "source"}`.
    /// Evidence from AMD hardware with that measurement is then called compliant.
    pub fn add_reference_value(
        &self,
        a: &Admitted,
        region: &str,
        b: ReferenceValueRequest,
    ) -> Result<attest_api::ReferenceValue, ApiError> {
        a.expect(Role::DefaultAdmin)?;
        let valid_word = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        };
        if !valid_word(region, 64) || !valid_word(&b.component, 64) || b.source.len() > 1024 {
            return Err(ApiError::bad(
                "invalid_reference_value",
                "region and component are 1-64 of [A-Za-z0-9_-]; source at most 1024 bytes",
            ));
        }
        let m = b.measurement.trim().to_ascii_lowercase();
        if m.len() != 96 || !m.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad(
                "invalid_reference_value",
                "measurement is 96 hex digits (an SNP launch measurement)",
            ));
        }
        let rv = crate::store::ReferenceValue {
            region: region.to_string(),
            measurement: m.clone(),
            component: b.component,
            source: b.source,
            created: now(),
        };
        let audit = audit_entry(
            DEFAULT_PROVIDER,
            "administrator",
            "reference_value_add",
            &format!("{region}/{m}"),
        );
        self.store
            .add_reference_value(&rv, &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        self.reference_values_changed()?;
        Ok(rv)
    }

    /// Removes a reference value (default provider's administrator).
    pub fn remove_reference_value(
        &self,
        a: &Admitted,
        region: &str,
        measurement: &str,
    ) -> Result<ReferenceValueRemoved, ApiError> {
        a.expect(Role::DefaultAdmin)?;
        let m = measurement.to_ascii_lowercase();
        let audit = audit_entry(
            DEFAULT_PROVIDER,
            "administrator",
            "reference_value_remove",
            &format!("{region}/{m}"),
        );
        let removed = self
            .store
            .remove_reference_value(region, &m, &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        if !removed {
            return Err(ApiError::not_found(format!(
                "no reference value {region}/{m}"
            )));
        }
        self.reference_values_changed()?;
        Ok(ReferenceValueRemoved {
            removed: format!("{region}/{m}"),
        })
    }

    /// The provider's audit log (its administrator).
    pub fn audit_log(&self, a: &Admitted) -> Result<AuditLog, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let log = self
            .store
            .audit_log(provider)
            .map_err(|e| ApiError::logged("store", e))?;
        Ok(AuditLog { value: log })
    }

    /// Issues a nonce for `provider` (it is unknown to every other provider).
    pub fn issue_nonce(&self, provider: &str) -> Result<NonceResponse, ApiError> {
        self.provider(provider)?;
        let nonce = self
            .nonces
            .issue(provider)
            .map_err(|e| ApiError::new(503, e.code(), e.to_string()))?;
        let ttl = i64::try_from(self.nonces.ttl().as_secs()).unwrap_or(i64::MAX);
        Ok(NonceResponse {
            nonce,
            expires_at: now().saturating_add(ttl),
        })
    }

    /// Checks a nonce named by evidence (issued here for `provider`, unexpired,
    /// unused); it is used up only when a token is issued for that evidence.
    pub(crate) fn check_nonce(&self, provider: &str, nonce: &str) -> Result<(), ApiError> {
        self.nonces.check(provider, nonce).map_err(nonce_error)
    }

    pub(crate) fn cached_chain(&self, key: &[u8; 32]) -> Option<ParsedChain> {
        self.chains.read().ok()?.get(key).cloned()
    }

    pub(crate) fn cache_chain(&self, key: [u8; 32], parsed: ParsedChain) {
        if let Ok(mut m) = self.chains.write() {
            if m.len() >= MAX_CACHED_CHAINS {
                m.clear();
            }
            m.insert(key, parsed);
        }
    }

    /// Fetches through the KDS guard what looking up `report`'s VCEK and chain would
    /// fetch, given the certificates the request carries.
    pub(crate) fn prefetch(
        &self,
        report: &snp::AttestationReport,
        certs: &[snp::cert::AmdCert],
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), ApiError> {
        use crate::collateral::GuardError;
        use snp::kds::KdsRequest;
        let Some(fetcher) = self.fetcher.as_ref() else {
            return Ok(());
        };
        let has = |cn: &str| certs.iter().any(|c| c.subject_cn() == cn);
        let mut wanted = Vec::new();
        if let Some(product) = report.product() {
            if !has("SEV-VCEK")
                && !has("SEV-VLEK")
                && report.signing_key() == snp::report::SigningKey::Vcek
                && let Ok(req) = KdsRequest::vcek(product, report.chip_id(), report.reported_tcb())
            {
                wanted.push(req);
            }
            if !certs.iter().any(|c| c.subject_cn().starts_with("ARK-")) {
                let kind = match report.signing_key() {
                    snp::report::SigningKey::Vlek => snp::cert::VekKind::Vlek,
                    _ => snp::cert::VekKind::Vcek,
                };
                wanted.push(KdsRequest::CertChain { product, kind });
            }
        }
        for req in wanted {
            match self.kds_guard.fetch(fetcher, &req, peer) {
                Ok(()) => {}
                Err(GuardError::Miss(why)) => {
                    return Err(ApiError::new(
                        424,
                        "missing_collateral",
                        format!("{req} could not be fetched from AMD KDS recently ({why})"),
                    ));
                }
                Err(GuardError::RateLimited) => {
                    return Err(ApiError::new(
                        429,
                        "kds_rate_limited",
                        "this client has caused too many collateral fetches; send the VCEK chain with the report",
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn root_crls(&self) -> &RootCrls {
        &self.root_crls
    }

    pub(crate) fn crl_provider(&self) -> ServiceCrls<'_> {
        ServiceCrls {
            fetcher: self.fetcher.as_ref(),
            memo: &self.crl_memo,
        }
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub(crate) fn fetcher(&self) -> Option<&Fetcher> {
        self.fetcher.as_ref()
    }

    pub(crate) fn evidence_time(&self) -> i64 {
        self.evidence_time.unwrap_or_else(now)
    }

    /// The policy in force for `kind`: `{version, policy, policyHash}`.
    pub fn get_policy(&self, a: &Admitted, kind: AttestationType) -> Result<PolicyInfo, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let p = self.provider(provider)?;
        let a = p
            .policy(kind)
            .ok_or_else(|| ApiError::internal("no_policy"))?;
        Ok(PolicyInfo {
            attestation_type: kind.path_name().into(),
            version: a.version,
            default: a.version == 0,
            policy: a.text.clone(),
            policy_hash: a.hash.clone(),
        })
    }

    /// Sets a new policy version for `kind` (it must compile).
    pub async fn set_policy(
        &self,
        a: &Admitted,
        kind: AttestationType,
        text: &str,
    ) -> Result<PolicySet, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let p = self.provider(provider)?;
        if text.len() > policy::MAX_POLICY_LEN {
            return Err(ApiError::bad(
                "invalid_policy",
                format!("longer than {} bytes", policy::MAX_POLICY_LEN),
            ));
        }
        let sb = self.sandbox.as_ref().ok_or_else(no_sandbox)?;
        sb.compile(provider, text, &p.settings)
            .await
            .map_err(sandbox_error)?;
        let audit = audit_entry(provider, "administrator", "policy_set", kind.path_name());
        let version = self
            .store
            .put_policy(provider, kind.path_name(), text, now(), &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        self.reload(provider)?;
        Ok(PolicySet {
            attestation_type: kind.path_name().into(),
            version,
            policy_hash: policy::policy_hash(text),
        })
    }

    /// The provider's settings.
    pub fn get_settings(&self, a: &Admitted) -> Result<ProviderSettings, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        let p = self.provider(provider)?;
        Ok(p.settings.clone())
    }

    /// Replaces the provider's settings (policies are recompiled with them).
    pub fn set_settings(
        &self,
        a: &Admitted,
        settings: ProviderSettings,
    ) -> Result<ProviderSettings, ApiError> {
        let provider = a.expect(Role::ProviderAdmin)?;
        for m in &settings.measurements {
            if m.len() != 96
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ApiError::bad(
                    "invalid_settings",
                    "measurements are 96 lower-case hex digits",
                ));
            }
        }
        let json = serde_json::to_string(&settings).map_err(|_| ApiError::internal("settings"))?;
        let audit = audit_entry(provider, "administrator", "settings_set", "");
        self.store
            .set_settings(provider, &json, &audit)
            .map_err(|e| ApiError::logged("store", e))?;
        self.reload(provider)?;
        Ok(settings)
    }

    /// Attests `body` (an MAA-shaped request for `kind`) for `provider`: a token, or
    /// with `draftPolicyForAttestation` a dry run that issues none. A draft policy is
    /// code the service runs, so it needs the provider's administrator credential.
    pub async fn attest(
        &self,
        a: &Admitted,
        req: AttestRequest,
    ) -> Result<AttestResponse, ApiError> {
        let provider = a.provider();
        let kind = req.kind();
        let p = self.provider(provider)?;
        let ev = evidence::evaluate(self, provider, req, a.peer)?;
        if let Some(draft) = ev.draft_policy.clone() {
            self.require_admin(a)?;
            return Ok(AttestResponse::DryRun(
                self.dry_run(&p, kind, Some(&draft), ev).await?,
            ));
        }
        let active = p
            .policy(kind)
            .ok_or_else(|| ApiError::internal("no_policy"))?
            .clone();
        let input = Value::Object(ev.claims.clone());
        let decision = self
            .decide(&p, active.compiled.as_ref(), &active.text, &input)
            .await?;
        if !decision.allow {
            let detail = serde_json::to_value(attest_api::PolicyDenied {
                deny: decision.deny.clone(),
                policy_version: active.version,
            })
            .map_err(|_| ApiError::internal("json"))?;
            let first = decision
                .deny
                .first()
                .map(|d| format!("{}: {}", d.rule, d.message))
                .unwrap_or_default();
            return Err(ApiError::new(
                403,
                "policy_denied",
                format!("the attestation policy denied the evidence ({first})"),
            )
            .with_detail(detail));
        }
        if let Some(n) = &ev.nonce {
            self.nonces.consume(provider, n).map_err(nonce_error)?;
        }
        let token = self.token(&p, kind, ev.claims, &active.hash, ev.nonce.as_deref())?;
        Ok(AttestResponse::Token(TokenResponse { token }))
    }

    /// A dry run: the decision, the claims and the reasons, with `policy` (or the
    /// policy in force). Never issues a token. A draft policy needs the provider's
    /// administrator credential; the policy in force does not.
    pub async fn test_policy(
        &self,
        a: &Admitted,
        kind: AttestationType,
        req: PolicyTestRequest,
    ) -> Result<DryRun, ApiError> {
        let provider = a.provider();
        let p = self.provider(provider)?;
        if req.policy.is_some() {
            self.require_admin(a)?;
        }
        // The evidence is an attestation request of `kind`, refused as one would be.
        let evidence_body =
            serde_json::to_vec(&req.evidence).map_err(|_| ApiError::internal("json"))?;
        let evidence = evidence::parse_request(kind, &evidence_body)?;
        let ev = evidence::evaluate(self, provider, evidence, a.peer)?;
        if ev.draft_policy.is_some() {
            self.require_admin(a)?;
        }
        let draft = req.policy.or(ev.draft_policy.clone());
        self.dry_run(&p, kind, draft.as_deref(), ev).await
    }

    async fn dry_run(
        &self,
        p: &Provider,
        kind: AttestationType,
        draft: Option<&str>,
        ev: evidence::Evaluated,
    ) -> Result<DryRun, ApiError> {
        let input = Value::Object(ev.claims.clone());
        let (Decision { allow, deny }, hash, version) = match draft {
            // A draft is untrusted Rego: the sandbox, or refused without one.
            Some(text) => (
                self.decide(p, None, text, &input).await?,
                policy::policy_hash(text),
                None,
            ),
            None => {
                let a = p
                    .policy(kind)
                    .ok_or_else(|| ApiError::internal("no_policy"))?;
                (
                    self.decide(p, a.compiled.as_ref(), &a.text, &input).await?,
                    a.hash.clone(),
                    Some(a.version),
                )
            }
        };
        Ok(DryRun {
            dry_run: true,
            decision: if allow { "allow" } else { "deny" }.into(),
            deny,
            policy_hash: hash,
            policy_version: version,
            claims: ev.claims,
        })
    }

    /// Evaluates a policy: `compiled` in process (the default policies), else `text` in
    /// the sandbox; tenant Rego is refused when the service has none.
    async fn decide(
        &self,
        p: &Provider,
        compiled: Option<&CompiledPolicy>,
        text: &str,
        input: &Value,
    ) -> Result<Decision, ApiError> {
        let eval_err = |e: crate::policy::PolicyError| match e {
            crate::policy::PolicyError::Invalid(m) => ApiError::bad("invalid_policy", m),
            e => ApiError::bad("policy_evaluation_failed", e.to_string()),
        };
        if let Some(c) = compiled {
            return c.evaluate(input).map_err(eval_err);
        }
        let sb = self.sandbox.as_ref().ok_or_else(no_sandbox)?;
        sb.evaluate(&p.name, text, &p.settings, input)
            .await
            .map_err(sandbox_error)
    }

    fn token(
        &self,
        p: &Provider,
        kind: AttestationType,
        mut claims: Map<String, Value>,
        policy_hash: &str,
        nonce: Option<&str>,
    ) -> Result<String, ApiError> {
        let signer = p
            .signers
            .first()
            .ok_or_else(|| ApiError::internal("no_signing_key"))?;
        let t = now();
        let mut jti = [0u8; 32];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| ApiError::internal("random"))?;
        let iss = self.issuer(&p.name);
        claims.insert("iss".into(), iss.clone().into());
        claims.insert("iat".into(), t.into());
        claims.insert("nbf".into(), t.into());
        claims.insert("exp".into(), t.saturating_add(self.token_lifetime).into());
        claims.insert("jti".into(), hex::encode(jti).into());
        if let Some(n) = nonce {
            claims.insert("nonce".into(), n.into());
        }
        claims.insert("x-ms-ver".into(), "1.0".into());
        claims.insert("x-ms-attestation-type".into(), kind.claim_name().into());
        claims.insert("x-ms-policy-hash".into(), policy_hash.into());
        signer
            .signer
            .sign(&claims, &format!("{iss}/certs"))
            .map_err(|_| ApiError::internal("signing"))
    }
}

/// How the default provider's administrator appears in other providers' audit logs.
const DEFAULT_ADMIN: &str = "default-administrator";

fn audit_entry(provider: &str, caller: &str, op: &str, subject: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        ts: now(),
        provider: provider.to_string(),
        caller: caller.to_string(),
        op: op.to_string(),
        subject: subject.to_string(),
        outcome: "allowed".into(),
        code: String::new(),
    }
}

/// Tenant Rego without a sandbox to run it in: refused, never run in this process.
fn no_sandbox() -> ApiError {
    ApiError::new(
        501,
        "policy_sandbox_unavailable",
        "this service runs no tenant policies: it has no policy sandbox (only the built-in \
         default policies apply)",
    )
}

fn sandbox_error(e: crate::sandbox::SandboxError) -> ApiError {
    use crate::sandbox::SandboxError as E;
    match e {
        E::Limit(_) => ApiError::new(403, "policy_limit_exceeded", e.to_string()),
        E::Invalid(m) => ApiError::bad("invalid_policy", m),
        E::Policy(m) => ApiError::bad("policy_evaluation_failed", m),
        E::Busy => ApiError::new(503, "policy_busy", e.to_string()),
        e @ E::Worker(_) => ApiError::logged("policy_worker", e),
    }
}

fn nonce_error(e: crate::nonce::NonceError) -> ApiError {
    match e {
        crate::nonce::NonceError::Full | crate::nonce::NonceError::Unavailable => {
            ApiError::new(503, e.code(), e.to_string())
        }
        _ => ApiError::bad(e.code(), e.to_string()),
    }
}

/// What an admitted caller is to the provider its request concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Anyone (no credential was needed).
    Anyone,
    /// The provider's administrator.
    ProviderAdmin,
    /// The default provider's administrator (the platform operator).
    DefaultAdmin,
}

/// A request admitted to one operation of the contract by [`Service::admit`], the only
/// way to make one: the service's methods take it, so none runs without the access
/// check, and a provider's operation acts on the provider it was admitted for.
pub struct Admitted {
    provider: String,
    peer: Option<std::net::IpAddr>,
    role: Role,
    bearer: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("provider", &self.provider)
            .field("role", &self.role)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Admitted {
    /// The provider the request concerns.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// What the caller is to it.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The same caller, calling from `peer` (the address collateral fetches it causes
    /// are rate-limited by).
    pub fn from_peer(mut self, peer: Option<std::net::IpAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// The provider, when the caller was admitted as `role` (401 otherwise: an
    /// operation called with a caller admitted for another fails closed).
    fn expect(&self, role: Role) -> Result<&str, ApiError> {
        if self.role == role {
            Ok(&self.provider)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// The contract's API on the service: the HTTP edge ([`crate::server`]) admits a
/// request with [`Service::admit`] and calls these.
impl AttestApi for Service {
    type Caller = Admitted;
    type Error = ApiError;

    fn openid_configuration(&self, c: &Admitted) -> Result<OpenIdConfiguration, ApiError> {
        Service::openid_configuration(self, c.provider())
    }
    fn certs(&self, c: &Admitted) -> Result<attest_api::Jwks, ApiError> {
        self.jwks(c.provider())
    }
    fn nonce(&self, c: &Admitted) -> Result<NonceResponse, ApiError> {
        self.issue_nonce(c.provider())
    }
    fn attest(
        &self,
        c: &Admitted,
        req: AttestRequest,
    ) -> impl Future<Output = Result<AttestResponse, ApiError>> + Send {
        Service::attest(self, c, req)
    }
    fn get_policy(&self, c: &Admitted, kind: AttestationType) -> Result<PolicyInfo, ApiError> {
        Service::get_policy(self, c, kind)
    }
    fn set_policy(
        &self,
        c: &Admitted,
        kind: AttestationType,
        policy: &str,
    ) -> impl Future<Output = Result<PolicySet, ApiError>> + Send {
        Service::set_policy(self, c, kind, policy)
    }
    fn test_policy(
        &self,
        c: &Admitted,
        kind: AttestationType,
        req: PolicyTestRequest,
    ) -> impl Future<Output = Result<DryRun, ApiError>> + Send {
        Service::test_policy(self, c, kind, req)
    }
    fn get_settings(&self, c: &Admitted) -> Result<ProviderSettings, ApiError> {
        Service::get_settings(self, c)
    }
    fn set_settings(
        &self,
        c: &Admitted,
        settings: ProviderSettings,
    ) -> Result<ProviderSettings, ApiError> {
        Service::set_settings(self, c, settings)
    }
    fn rotate_signing_key(&self, c: &Admitted) -> Result<SigningKeyRotated, ApiError> {
        Service::rotate_signing_key(self, c)
    }
    fn revoke_signing_key(&self, c: &Admitted, kid: &str) -> Result<SigningKeyRevoked, ApiError> {
        Service::revoke_signing_key(self, c, kid)
    }
    fn rotate_admin_credential(&self, c: &Admitted) -> Result<AdminCredential, ApiError> {
        Service::rotate_admin_credential(self, c)
    }
    fn reset_admin_credential(&self, c: &Admitted) -> Result<AdminCredential, ApiError> {
        Service::reset_admin_credential(self, c)
    }
    fn revoke_admin_credential(&self, c: &Admitted) -> Result<AdminRevoked, ApiError> {
        Service::revoke_admin_credential(self, c)
    }
    fn audit_log(&self, c: &Admitted) -> Result<AuditLog, ApiError> {
        Service::audit_log(self, c)
    }
    fn create_provider(
        &self,
        c: &Admitted,
        name: &str,
        settings: ProviderSettings,
    ) -> Result<ProviderCreated, ApiError> {
        Service::create_provider(self, c, name, settings)
    }
    fn reference_values(&self, _: &Admitted) -> Result<ReferenceValueList, ApiError> {
        Service::reference_values(self)
    }
    fn add_reference_value(
        &self,
        c: &Admitted,
        region: &str,
        req: ReferenceValueRequest,
    ) -> Result<attest_api::ReferenceValue, ApiError> {
        Service::add_reference_value(self, c, region, req)
    }
    fn remove_reference_value(
        &self,
        c: &Admitted,
        region: &str,
        measurement: &str,
    ) -> Result<ReferenceValueRemoved, ApiError> {
        Service::remove_reference_value(self, c, region, measurement)
    }
}
