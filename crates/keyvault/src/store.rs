//! Persistent state: vaults, credentials, keys and their versions (material sealed),
//! region root keys (sealed) with their platform vaults, and an append-only audit log,
//! on SQLite (WAL, synchronous FULL) or PostgreSQL (`sqldb`). Every change is one
//! transaction, so kill -9 leaves either the old or the new state. Transactions that
//! read before they write hold the database's writer lock from their start
//! (`sqldb::Conn::write`), on SQLite as on PostgreSQL, where several vault replicas
//! share one database: a rotation or a credential change on one replica cannot
//! interleave with a write on another. The schema is [`MIGRATIONS`], applied to both
//! engines.
//!
//! The audit log is tamper-evident (the `audit` crate): every entry is linked to the
//! previous one by an HMAC under a key derived from the master key, and every
//! [`CHECKPOINT_EVERY`]th entry gets a signed checkpoint; [`verify_audit`] checks a
//! database, naming the first entry that does not fit. The append-only triggers
//! stay as a first line; the chain is what holds when they are dropped.

use std::sync::{Arc, Mutex};

use sqldb::migrate::Migration;
use sqldb::{Conn, Location, Queries, Row, Tx, args};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] sqldb::Error),
    /// A lock was poisoned.
    #[error("database lock poisoned")]
    Poisoned,
    /// The thing already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The audit log could not be written.
    #[error("audit log: {0}")]
    Audit(String),
    /// The state changed under the caller (a region root rotated meanwhile); nothing
    /// was written.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A stored key version.
#[derive(Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Key name.
    pub name: String,
    /// Version (32 hex digits).
    pub version: String,
    /// `RSA`, `EC` or `oct`.
    pub kty: String,
    /// The public JWK (no private parts; empty object for `oct`).
    pub public_jwk: String,
    /// Key material (PKCS#8 or raw AES key), sealed under the master key (customer
    /// keys) or under a region root key (platform keys, see `root_id`).
    pub sealed: Vec<u8>,
    /// The region root key (its [`RootRow::id`]) that `sealed` is sealed under; `None`
    /// for a customer key, sealed under the master key.
    pub root_id: Option<i64>,
    /// Whether the key may leave the vault under its release policy.
    pub exportable: bool,
    /// Enabled.
    pub enabled: bool,
    /// Not before (Unix seconds).
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    pub exp: Option<i64>,
    /// Tags (JSON object).
    pub tags: String,
    /// The release policy envelope (JSON), if any.
    pub release_policy: Option<String>,
    /// Created (Unix seconds).
    pub created: i64,
    /// Updated (Unix seconds).
    pub updated: i64,
}

impl std::fmt::Debug for VersionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRow")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("kty", &self.kty)
            .field("root_id", &self.root_id)
            .finish_non_exhaustive()
    }
}

/// A vault's kind: tenant vaults and platform vaults live in separate namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaultKind {
    /// A tenant's vault (customer-managed keys, sealed under the master key).
    Customer,
    /// A region's platform vault (platform-managed keys, sealed under the region root).
    Platform,
}

impl VaultKind {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            VaultKind::Customer => "customer",
            VaultKind::Platform => "platform",
        }
    }
}

/// What a credential grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRow {
    /// The vault.
    pub vault: String,
    /// The role's stored name.
    pub role: String,
    /// The vault's region, for a platform vault.
    pub region: Option<String>,
}

/// One version of a region's root key (an AES-256 key-encryption key).
#[derive(Clone, PartialEq, Eq)]
pub struct RootRow {
    /// Store-wide id (what key versions reference).
    pub id: i64,
    /// The region.
    pub region: String,
    /// Version within the region (1, 2, ...).
    pub version: i64,
    /// The root key, sealed under the master key.
    pub sealed: Vec<u8>,
    /// Created (Unix seconds).
    pub created: i64,
}

impl std::fmt::Debug for RootRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootRow")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A region as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRow {
    /// The region's name.
    pub name: String,
    /// Its platform vault.
    pub vault: String,
    /// The current root key version.
    pub root_version: i64,
    /// When the current root version was made (Unix seconds).
    pub root_created: i64,
    /// Live (not deleted) keys in the platform vault.
    pub keys: i64,
    /// Key versions (of live and soft-deleted keys) sealed under the root.
    pub versions: i64,
    /// Created (Unix seconds).
    pub created: i64,
}

/// A key version's sealed material, as a root rotation reseals it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedVersion {
    /// Key name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The root key it is sealed under.
    pub root_id: Option<i64>,
    /// The sealed material.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("root_id", &self.root_id)
            .finish_non_exhaustive()
    }
}

/// A new region: its platform vault, the vault's first administrator credential and
/// root key version 1.
pub struct NewRegion<'a> {
    /// The region's name.
    pub region: &'a str,
    /// The platform vault's name.
    pub vault: &'a str,
    /// SHA-256 of the administrator credential.
    pub admin_sha256: &'a [u8],
    /// Root key version 1, sealed under the master key.
    pub root_sealed: &'a [u8],
    /// Now (Unix seconds).
    pub now: i64,
    /// The audit entry, written in the same transaction.
    pub audit: &'a AuditEntry,
}

impl std::fmt::Debug for NewRegion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRegion")
            .field("region", &self.region)
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

/// A root rotation: the new root version and every key version of the region's
/// platform vault resealed under it, written in one transaction that also deletes the
/// old root version.
pub struct Rotation<'a> {
    /// The region.
    pub region: &'a str,
    /// Its platform vault.
    pub vault: &'a str,
    /// The root version being replaced (must still be the current one).
    pub old_root_id: i64,
    /// The new root's version (the old one's plus one).
    pub new_version: i64,
    /// The new root key, sealed under the master key.
    pub new_sealed: &'a [u8],
    /// Every key version of the vault, resealed under the new root (their `root_id`
    /// is not read: the new root's id is assigned in the transaction).
    pub resealed: &'a [SealedVersion],
    /// Now (Unix seconds).
    pub now: i64,
    /// The audit entry, written in the same transaction.
    pub audit: &'a AuditEntry,
}

impl std::fmt::Debug for Rotation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("region", &self.region)
            .field("old_root_id", &self.old_root_id)
            .field("new_version", &self.new_version)
            .field("resealed", &self.resealed.len())
            .finish_non_exhaustive()
    }
}

/// One audit log entry: the API's audit record, as the store keeps it.
pub use keyvault_api::AuditRecord as AuditEntry;

/// Where the vault's state lives.
pub trait Store: Send + Sync {
    /// Creates a vault with its first (administrator) credential.
    fn create_vault(&self, vault: &str, admin_sha256: &[u8], now: i64) -> Result<(), StoreError>;
    /// Adds a credential.
    fn add_credential(
        &self,
        vault: &str,
        sha256: &[u8],
        role: &str,
        now: i64,
    ) -> Result<(), StoreError>;
    /// The vault, role (and the vault's region, for a platform vault) of a credential.
    fn credential(&self, sha256: &[u8]) -> Result<Option<CredentialRow>, StoreError>;
    /// A vault's credentials: SHA-256, role, creation time.
    fn credentials(&self, vault: &str) -> Result<Vec<(Vec<u8>, String, i64)>, StoreError>;
    /// Revokes a credential (`new_sha256: None`) or replaces it by one with the same
    /// role, with the audit entry, in one transaction; false if the vault has no such
    /// credential. Refused (nothing written) when it would leave the vault without an
    /// administrator credential.
    fn retire_credential(
        &self,
        vault: &str,
        sha256: &[u8],
        new_sha256: Option<&[u8]>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Adds a key version (creating the key if needed). Refused while the key is
    /// deleted.
    /// `audit` is the change's audit entry, written in the same transaction.
    fn add_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// A key's versions, newest first; `deleted` selects live or soft-deleted keys.
    fn versions(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
    ) -> Result<Vec<VersionRow>, StoreError>;
    /// Key names, live or (with `deleted`) soft-deleted.
    fn key_names(&self, vault: &str, deleted: bool) -> Result<Vec<String>, StoreError>;
    /// Replaces a version's mutable attributes, with its audit entry in the same
    /// transaction.
    fn update_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Soft-deletes (or recovers, with `deleted == false`) a key; false if no such key.
    /// The audit entry is written, in the same transaction, only when the key changed.
    fn set_deleted(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Removes a soft-deleted key and its versions for good; false if there was none.
    /// The audit entry is written, in the same transaction, only when something was.
    fn purge(&self, vault: &str, name: &str, audit: &AuditEntry) -> Result<bool, StoreError>;
    /// Appends to the audit log.
    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError>;
    /// The vault's audit log, oldest first.
    fn audit_log(&self, vault: &str) -> Result<Vec<AuditEntry>, StoreError>;
    /// A service-level secret (sealed), by name.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a service-level secret if none has that name; returns the one stored.
    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Creates a region (its platform vault, administrator credential and root key
    /// version 1) and its audit entry, in one transaction.
    fn create_region(&self, r: &NewRegion<'_>) -> Result<(), StoreError>;
    /// A region's platform vault, if the region exists.
    fn region_vault(&self, region: &str) -> Result<Option<String>, StoreError>;
    /// A region's current root key version.
    fn region_root(&self, region: &str) -> Result<Option<RootRow>, StoreError>;
    /// The root key a platform key version is sealed under, read together with that
    /// version's sealed material in one statement (so a concurrent rotation never
    /// pairs a blob with the wrong root).
    fn sealed_with_root(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Vec<u8>, RootRow)>, StoreError>;
    /// Every key version of a vault (live and soft-deleted) with its sealed material.
    fn sealed_versions(&self, vault: &str) -> Result<Vec<SealedVersion>, StoreError>;
    /// Replaces a region's root key version and reseals the region's keys, in one
    /// transaction; refused (nothing written) unless `old_root_id` is still current
    /// and `resealed` covers every key version sealed under it.
    fn rotate_root(&self, r: &Rotation<'_>) -> Result<(), StoreError>;
    /// Every region, by name.
    fn regions(&self) -> Result<Vec<RegionRow>, StoreError>;
}

type AuditAck = std::sync::mpsc::SyncSender<Result<(), String>>;

/// Every how many entries a signed checkpoint is stored.
pub const CHECKPOINT_EVERY: i64 = 256;

/// The keys that protect the audit log, derived from the master key.
pub struct AuditKeys(audit::Keys);

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeys(..)")
    }
}

impl AuditKeys {
    /// The audit keys of the vault whose master key is `master`.
    pub fn from_master(master: &seal::MasterKey) -> Result<Self, StoreError> {
        let secret = master.derive("opencvm-keyvault/audit-chain");
        Ok(AuditKeys(
            audit::Keys::derive(&secret).map_err(|e| StoreError::Audit(e.to_string()))?,
        ))
    }

    /// The public key that verifies the log's checkpoints (SEC1, uncompressed).
    pub fn checkpoint_public_key(&self) -> Vec<u8> {
        self.0.checkpoint.public_key()
    }
}

/// The audit table: its columns in link order.
const AUDIT: audit::table::Table<'static> = audit::table::Table {
    name: "audit",
    columns: &[
        "ts", "vault", "caller", "op", "key", "version", "outcome", "code", "jti", "issuer",
    ],
    checkpoint_every: CHECKPOINT_EVERY,
};

/// The schema's numbered migrations (`crates/keyvault/migrations/`), applied to both
/// engines.
pub const MIGRATIONS: [Migration<'static>; 3] = [
    Migration {
        version: 1,
        name: "vaults, keys, audit",
        sql: include_str!("../migrations/0001_vaults_keys_audit.sql"),
        postgres: None,
    },
    Migration {
        version: 2,
        name: "regions",
        sql: include_str!("../migrations/0002_regions.sql"),
        postgres: None,
    },
    Migration {
        version: 3,
        name: "audit chain",
        sql: include_str!("../migrations/0003_audit_chain.sql"),
        postgres: None,
    },
];

/// Brings the database to the newest schema (the audit chain's code runs with
/// migration 3).
fn migrate(conn: &mut Conn, keys: &AuditKeys, now: i64) -> Result<(), StoreError> {
    migrate_to(conn, &MIGRATIONS, keys, now)
}

/// Applies what is pending of `migrations` (a prefix of [`MIGRATIONS`]).
fn migrate_to(
    conn: &mut Conn,
    migrations: &[Migration<'_>],
    keys: &AuditKeys,
    now: i64,
) -> Result<(), StoreError> {
    sqldb::migrate::apply(
        conn,
        "keyvault",
        migrations,
        &|tx| sqldb::migrate::own_meta_schema_version(tx, "vaults", "keyvault"),
        &mut |tx, version| {
            if version == 3 {
                AUDIT.link_unlinked(tx, &keys.0)?;
            }
            Ok(())
        },
        now,
    )?;
    Ok(())
}

const AUDIT_SELECT: &str =
    "SELECT seq, ts, vault, caller, op, key, version, outcome, code, jti, issuer FROM audit";

fn audit_row(r: &Row) -> Result<AuditEntry, sqldb::Error> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts: r.get(1)?,
        vault: r.get(2)?,
        caller: r.get(3)?,
        op: r.get(4)?,
        key: r.get(5)?,
        version: r.get(6)?,
        outcome: r.get(7)?,
        code: r.get(8)?,
        jti: r.get(9)?,
        issuer: r.get(10)?,
    })
}

/// The store, on SQLite or PostgreSQL. Audit entries go through one writer thread
/// with its own connection that commits whatever is queued in one transaction (group
/// commit): each caller still waits until its entry is durable, but concurrent
/// releases share commits, and key reads never wait behind an audit commit.
pub struct SqlStore {
    conn: Mutex<Conn>,
    audit_tx: Mutex<std::sync::mpsc::Sender<(AuditEntry, AuditAck)>>,
    keys: Arc<AuditKeys>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlStore")
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl SqlStore {
    /// Opens (creating if needed) the database at `location` and brings its schema up
    /// to date; `keys` link its audit log.
    pub fn open(location: &Location, keys: AuditKeys) -> Result<Self, StoreError> {
        let keys = Arc::new(keys);
        let mut conn = Conn::open(location)?;
        migrate(&mut conn, &keys, unix_now())?;
        let audit_conn = Conn::open(location)?;
        let (tx, rx) = std::sync::mpsc::channel::<(AuditEntry, AuditAck)>();
        let writer_keys = keys.clone();
        std::thread::Builder::new()
            .name("keyvault-audit".into())
            .spawn(move || audit_writer(audit_conn, &rx, &writer_keys))
            .map_err(|e| StoreError::Audit(format!("writer thread: {e}")))?;
        Ok(SqlStore {
            conn: Mutex::new(conn),
            audit_tx: Mutex::new(tx),
            keys,
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Conn>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in one write transaction and commits.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.write()?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// The most entries committed in one audit transaction.
const MAX_AUDIT_BATCH: usize = 512;

fn audit_writer(
    mut conn: Conn,
    rx: &std::sync::mpsc::Receiver<(AuditEntry, AuditAck)>,
    keys: &AuditKeys,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_AUDIT_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        // The chain's head is read and extended under the writer lock.
        let commit = |conn: &mut Conn, entries: &[&AuditEntry]| -> Result<(), StoreError> {
            let mut tx = conn.write()?;
            for e in entries {
                insert_audit(&mut tx, e, keys)?;
            }
            Ok(tx.commit()?)
        };
        let all: Vec<&AuditEntry> = batch.iter().map(|(e, _)| e).collect();
        match commit(&mut conn, &all) {
            // One entry's own data was refused before the commit: the others queued
            // with it must not fail for it, so each is committed on its own. Any other
            // failure (the session, the lock, the commit itself, whose outcome may be
            // unknown) fails the batch as it is: nothing is written twice.
            Err(StoreError::Database(e)) if e.is_data_error() && batch.len() > 1 => {
                for (e, ack) in batch {
                    let _ = ack.send(commit(&mut conn, &[&e]).map_err(|e| e.to_string()));
                }
            }
            result => {
                let result = result.map_err(|e| e.to_string());
                for (_, ack) in batch {
                    let _ = ack.send(result.clone());
                }
            }
        }
    }
}

fn version_row(r: &Row) -> Result<VersionRow, sqldb::Error> {
    Ok(VersionRow {
        name: r.get(0)?,
        version: r.get(1)?,
        kty: r.get(2)?,
        public_jwk: r.get(3)?,
        sealed: r.get(4)?,
        exportable: r.get(5)?,
        enabled: r.get(6)?,
        nbf: r.get(7)?,
        exp: r.get(8)?,
        tags: r.get(9)?,
        release_policy: r.get(10)?,
        created: r.get(11)?,
        updated: r.get(12)?,
        root_id: r.get(13)?,
    })
}

fn root_row(r: &Row) -> Result<RootRow, sqldb::Error> {
    Ok(RootRow {
        id: r.get(0)?,
        region: r.get(1)?,
        version: r.get(2)?,
        sealed: r.get(3)?,
        created: r.get(4)?,
    })
}

/// Appends `e` to the chain, in the caller's write transaction.
fn insert_audit(tx: &mut Tx<'_>, e: &AuditEntry, keys: &AuditKeys) -> Result<(), StoreError> {
    AUDIT
        .append(
            tx,
            &keys.0,
            e.ts,
            args![
                e.ts,
                e.vault.as_str(),
                e.caller.as_str(),
                e.op.as_str(),
                e.key.as_str(),
                e.version.as_str(),
                e.outcome.as_str(),
                e.code.as_str(),
                e.jti.as_str(),
                e.issuer.as_str()
            ],
        )
        .map_err(|e| match e {
            audit::table::VerifyError::Database(e) => StoreError::Database(e),
            e => StoreError::Audit(e.to_string()),
        })?;
    Ok(())
}

/// Why a database's audit log could not be checked.
pub use audit::table::VerifyError as VerifyAuditError;

/// Checks the audit log of the database at `location` (read-only, one snapshot):
/// every entry's link and every stored checkpoint, and that each of `expect`
/// (checkpoints kept elsewhere) is still in it.
pub fn verify_audit(
    location: &Location,
    keys: &AuditKeys,
    expect: &[audit::Checkpoint],
) -> Result<audit::Intact, VerifyAuditError> {
    let mut conn = Conn::open_read_only(location)?;
    let mut tx = conn.read()?;
    AUDIT.verify(&mut tx, &keys.0, expect)
}

/// A signed checkpoint of the newest entry of the database at `location` (read-only),
/// to keep elsewhere and pass to [`verify_audit`] later; `None` for an empty log.
pub fn checkpoint_head(
    location: &Location,
    keys: &AuditKeys,
    now: i64,
) -> Result<Option<audit::Checkpoint>, VerifyAuditError> {
    let mut conn = Conn::open_read_only(location)?;
    let mut tx = conn.read()?;
    AUDIT.checkpoint_head(&mut tx, &keys.0, now)
}

impl Store for SqlStore {
    fn create_vault(&self, vault: &str, admin_sha256: &[u8], now: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO vaults (name, created) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                args![vault, now],
            )?;
            if n == 0 {
                return Err(StoreError::Exists(format!("vault {vault:?}")));
            }
            tx.execute(
                "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, 'administrator', ?3)",
                args![admin_sha256, vault, now],
            )?;
            Ok(())
        })
    }

    fn add_credential(
        &self,
        vault: &str,
        sha256: &[u8],
        role: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, ?3, ?4)",
            args![sha256, vault, role, now],
        )?;
        Ok(())
    }

    fn credential(&self, sha256: &[u8]) -> Result<Option<CredentialRow>, StoreError> {
        let row = self.conn()?.query_opt(
            "SELECT c.vault, c.role, r.name FROM credentials c
             LEFT JOIN regions r ON r.vault = c.vault WHERE c.sha256 = ?1",
            args![sha256],
        )?;
        Ok(row
            .map(|r| -> Result<_, sqldb::Error> {
                Ok(CredentialRow {
                    vault: r.get(0)?,
                    role: r.get(1)?,
                    region: r.get(2)?,
                })
            })
            .transpose()?)
    }

    fn credentials(&self, vault: &str) -> Result<Vec<(Vec<u8>, String, i64)>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT sha256, role, created FROM credentials WHERE vault = ?1 ORDER BY created, sha256",
            args![vault],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    fn retire_credential(
        &self,
        vault: &str,
        sha256: &[u8],
        new_sha256: Option<&[u8]>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let role: Option<String> = tx
                .query_opt(
                    "SELECT role FROM credentials WHERE vault = ?1 AND sha256 = ?2",
                    args![vault, sha256],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            let Some(role) = role else {
                return Ok(false);
            };
            if new_sha256.is_none() && role == "administrator" {
                let admins: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM credentials WHERE vault = ?1 AND role = 'administrator'",
                        args![vault],
                    )?
                    .get(0)?;
                if admins <= 1 {
                    return Err(StoreError::Exists(
                        "the vault's last administrator credential".into(),
                    ));
                }
            }
            tx.execute(
                "DELETE FROM credentials WHERE vault = ?1 AND sha256 = ?2",
                args![vault, sha256],
            )?;
            if let Some(new) = new_sha256 {
                tx.execute(
                    "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, ?3, ?4)",
                    args![new, vault, role, now],
                )?;
            }
            insert_audit(tx, audit, &self.keys)?;
            Ok(true)
        })
    }

    fn add_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let deleted: Option<bool> = tx
                .query_opt(
                    "SELECT deleted FROM keys WHERE vault = ?1 AND name = ?2",
                    args![vault, row.name.as_str()],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            match deleted {
                Some(true) => {
                    return Err(StoreError::Exists(format!(
                        "deleted key {:?} (recover or purge it first)",
                        row.name
                    )));
                }
                Some(false) => {}
                None => {
                    tx.execute(
                        "INSERT INTO keys (vault, name) VALUES (?1, ?2)",
                        args![vault, row.name.as_str()],
                    )?;
                }
            }
            let seq: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE vault = ?1 AND name = ?2",
                    args![vault, row.name.as_str()],
                )?
                .get(0)?;
            tx.execute(
                "INSERT INTO key_versions (vault, name, version, kty, public_jwk, sealed, exportable, enabled, nbf, exp, tags, release_policy, created, updated, seq, root_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                args![
                    vault,
                    row.name.as_str(),
                    row.version.as_str(),
                    row.kty.as_str(),
                    row.public_jwk.as_str(),
                    row.sealed.as_slice(),
                    row.exportable,
                    row.enabled,
                    row.nbf,
                    row.exp,
                    row.tags.as_str(),
                    row.release_policy.as_deref(),
                    row.created,
                    row.updated,
                    seq,
                    row.root_id
                ],
            )?;
            insert_audit(tx, audit, &self.keys)
        })
    }

    fn versions(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
    ) -> Result<Vec<VersionRow>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT v.name, v.version, v.kty, v.public_jwk, v.sealed, v.exportable, v.enabled, v.nbf, v.exp, v.tags, v.release_policy, v.created, v.updated, v.root_id
             FROM key_versions v JOIN keys k ON k.vault = v.vault AND k.name = v.name
             WHERE v.vault = ?1 AND v.name = ?2 AND k.deleted = ?3 ORDER BY v.seq DESC",
            args![vault, name, deleted],
            version_row,
        )?)
    }

    fn key_names(&self, vault: &str, deleted: bool) -> Result<Vec<String>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT name FROM keys WHERE vault = ?1 AND deleted = ?2 ORDER BY name",
            args![vault, deleted],
            |r| r.get(0),
        )?)
    }

    fn update_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE key_versions SET enabled = ?4, nbf = ?5, exp = ?6, tags = ?7, release_policy = ?8, updated = ?9
                 WHERE vault = ?1 AND name = ?2 AND version = ?3",
                args![
                    vault,
                    row.name.as_str(),
                    row.version.as_str(),
                    row.enabled,
                    row.nbf,
                    row.exp,
                    row.tags.as_str(),
                    row.release_policy.as_deref(),
                    row.updated
                ],
            )?;
            insert_audit(tx, audit, &self.keys)
        })
    }

    fn set_deleted(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE keys SET deleted = ?3, deleted_at = ?4 WHERE vault = ?1 AND name = ?2 AND deleted = ?5",
                args![vault, name, deleted, deleted.then_some(now), !deleted],
            )?;
            if n > 0 {
                insert_audit(tx, audit, &self.keys)?;
            }
            Ok(n > 0)
        })
    }

    fn purge(&self, vault: &str, name: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.write()?;
        let n = tx.execute(
            "DELETE FROM key_versions WHERE vault = ?1 AND name = ?2 AND EXISTS
             (SELECT 1 FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1)",
            args![vault, name],
        )?;
        let k = tx.execute(
            "DELETE FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1",
            args![vault, name],
        )?;
        if n + k > 0 {
            insert_audit(&mut tx, audit, &self.keys)?;
        }
        tx.commit()?;
        if let Some(lite) = conn.as_sqlite().filter(|_| n + k > 0) {
            // The purged rows are zeroed in their pages (secure_delete); copy those pages
            // into the database file now and empty the write-ahead log, which still holds
            // earlier images of them. Best effort: a busy checkpoint happens later.
            // (PostgreSQL reclaims dead rows by VACUUM.)
            let _ = lite.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(n + k > 0)
    }

    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.audit_tx
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .send((e.clone(), ack))
            .map_err(|_| StoreError::Audit("the writer thread is gone".into()))?;
        done.recv()
            .map_err(|_| StoreError::Audit("the writer thread is gone".into()))?
            .map_err(StoreError::Audit)
    }

    fn audit_log(&self, vault: &str) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.conn()?.query_map(
            &format!("{AUDIT_SELECT} WHERE vault = ?1 ORDER BY seq"),
            args![vault],
            audit_row,
        )?)
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()?
            .query_opt("SELECT sealed FROM secrets WHERE name = ?1", args![name])?
            .map(|r| r.get(0))
            .transpose()?)
    }

    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO secrets (name, sealed) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![name, sealed],
        )?;
        Ok(conn
            .query_one("SELECT sealed FROM secrets WHERE name = ?1", args![name])?
            .get(0)?)
    }

    fn create_region(&self, r: &NewRegion<'_>) -> Result<(), StoreError> {
        self.write(|tx| {
            let exists = tx
                .query_opt("SELECT 1 FROM regions WHERE name = ?1", args![r.region])?
                .is_some();
            let n = tx.execute(
                "INSERT INTO vaults (name, created, kind) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                args![r.vault, r.now, VaultKind::Platform.name()],
            )?;
            if exists || n == 0 {
                return Err(StoreError::Exists(format!("region {:?}", r.region)));
            }
            tx.execute(
                "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, 'administrator', ?3)",
                args![r.admin_sha256, r.vault, r.now],
            )?;
            tx.execute(
                "INSERT INTO regions (name, vault, created) VALUES (?1, ?2, ?3)",
                args![r.region, r.vault, r.now],
            )?;
            tx.execute(
                "INSERT INTO region_roots (region, version, sealed, created) VALUES (?1, 1, ?2, ?3)",
                args![r.region, r.root_sealed, r.now],
            )?;
            insert_audit(tx, r.audit, &self.keys)
        })
    }

    fn region_vault(&self, region: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_opt("SELECT vault FROM regions WHERE name = ?1", args![region])?
            .map(|r| r.get(0))
            .transpose()?)
    }

    fn region_root(&self, region: &str) -> Result<Option<RootRow>, StoreError> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT id, region, version, sealed, created FROM region_roots
                 WHERE region = ?1 ORDER BY version DESC LIMIT 1",
                args![region],
            )?
            .map(|r| root_row(&r))
            .transpose()?)
    }

    fn sealed_with_root(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Vec<u8>, RootRow)>, StoreError> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT r.id, r.region, r.version, r.sealed, r.created, v.sealed
                 FROM key_versions v JOIN region_roots r ON r.id = v.root_id
                 WHERE v.vault = ?1 AND v.name = ?2 AND v.version = ?3",
                args![vault, name, version],
            )?
            .map(|r| -> Result<_, sqldb::Error> { Ok((r.get(5)?, root_row(&r)?)) })
            .transpose()?)
    }

    fn sealed_versions(&self, vault: &str) -> Result<Vec<SealedVersion>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT name, version, root_id, sealed FROM key_versions WHERE vault = ?1
             ORDER BY name, seq",
            args![vault],
            |r| {
                Ok(SealedVersion {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    root_id: r.get(2)?,
                    sealed: r.get(3)?,
                })
            },
        )?)
    }

    fn rotate_root(&self, r: &Rotation<'_>) -> Result<(), StoreError> {
        self.write(|tx| {
            let current: Option<(i64, i64)> = tx
                .query_opt(
                    "SELECT id, version FROM region_roots WHERE region = ?1
                     ORDER BY version DESC LIMIT 1",
                    args![r.region],
                )?
                .map(|x| -> Result<_, sqldb::Error> { Ok((x.get(0)?, x.get(1)?)) })
                .transpose()?;
            match current {
                Some((id, version)) if id == r.old_root_id && version + 1 == r.new_version => {}
                _ => {
                    return Err(StoreError::Conflict(format!(
                        "the root of region {:?} changed meanwhile",
                        r.region
                    )));
                }
            }
            let new_id: i64 = tx
                .query_one(
                    "INSERT INTO region_roots (region, version, sealed, created) VALUES (?1, ?2, ?3, ?4)
                     RETURNING id",
                    args![r.region, r.new_version, r.new_sealed, r.now],
                )?
                .get(0)?;
            for v in r.resealed {
                let n = tx.execute(
                    "UPDATE key_versions SET sealed = ?1, root_id = ?2
                     WHERE vault = ?3 AND name = ?4 AND version = ?5 AND root_id = ?6",
                    args![
                        v.sealed.as_slice(),
                        new_id,
                        r.vault,
                        v.name.as_str(),
                        v.version.as_str(),
                        r.old_root_id
                    ],
                )?;
                if n != 1 {
                    return Err(StoreError::Conflict(format!(
                        "key {:?} version {} changed meanwhile",
                        v.name, v.version
                    )));
                }
            }
            let left: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM key_versions WHERE root_id = ?1",
                    args![r.old_root_id],
                )?
                .get(0)?;
            if left != 0 {
                return Err(StoreError::Conflict(format!(
                    "{left} key versions of region {:?} were not resealed",
                    r.region
                )));
            }
            tx.execute("DELETE FROM region_roots WHERE id = ?1", args![r.old_root_id])?;
            insert_audit(tx, r.audit, &self.keys)
        })
    }

    fn regions(&self) -> Result<Vec<RegionRow>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT g.name, g.vault, r.version, r.created, g.created,
               (SELECT COUNT(*) FROM keys k WHERE k.vault = g.vault AND k.deleted = 0),
               (SELECT COUNT(*) FROM key_versions v WHERE v.vault = g.vault)
             FROM regions g JOIN region_roots r ON r.region = g.name
             WHERE r.version = (SELECT MAX(version) FROM region_roots m WHERE m.region = g.name)
             ORDER BY g.name",
            args![],
            |r| {
                Ok(RegionRow {
                    name: r.get(0)?,
                    vault: r.get(1)?,
                    root_version: r.get(2)?,
                    root_created: r.get(3)?,
                    created: r.get(4)?,
                    keys: r.get(5)?,
                    versions: r.get(6)?,
                })
            },
        )?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn test_keys() -> AuditKeys {
        AuditKeys::from_master(&seal::MasterKey::from_hex(&"11".repeat(32)).unwrap()).unwrap()
    }

    fn row(name: &str, version: &str, root_id: Option<i64>, sealed: &[u8]) -> VersionRow {
        VersionRow {
            name: name.into(),
            version: version.into(),
            kty: "oct".into(),
            public_jwk: "{}".into(),
            sealed: sealed.to_vec(),
            root_id,
            exportable: false,
            enabled: true,
            nbf: None,
            exp: None,
            tags: "{}".into(),
            release_policy: None,
            created: 1,
            updated: 1,
        }
    }

    fn audit(vault: &str, op: &str) -> AuditEntry {
        AuditEntry {
            vault: vault.into(),
            op: op.into(),
            ..AuditEntry::default()
        }
    }

    /// Runs `f` on a store on a fresh SQLite file and on a fresh PostgreSQL database.
    fn on_both(f: impl Fn(&SqlStore)) {
        let dir = tempfile::tempdir().unwrap();
        f(&SqlStore::open(&Location::sqlite(&dir.path().join("kv.db")), test_keys()).unwrap());
        if let Some(pg) = sqldb::scratch::postgres() {
            f(&SqlStore::open(&pg.location, test_keys()).unwrap());
        }
    }

    fn count(s: &SqlStore, sql: &str) -> i64 {
        s.conn()
            .unwrap()
            .query_one(sql, args![])
            .unwrap()
            .get(0)
            .unwrap()
    }

    fn region(s: &SqlStore) -> RootRow {
        s.create_region(&NewRegion {
            region: "r1",
            vault: "platform:r1",
            admin_sha256: b"admin",
            root_sealed: b"root-1",
            now: 1,
            audit: &audit("platform:r1", "region_create"),
        })
        .unwrap();
        s.region_root("r1").unwrap().unwrap()
    }

    /// Schema 1 as the store created it before migrations were numbered (frozen).
    const LEGACY_SCHEMA_1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vaults (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
  sha256 BLOB PRIMARY KEY,
  vault TEXT NOT NULL REFERENCES vaults(name),
  role TEXT NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
  vault TEXT NOT NULL REFERENCES vaults(name),
  name TEXT NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  deleted_at INTEGER,
  PRIMARY KEY (vault, name)
);
CREATE TABLE IF NOT EXISTS key_versions (
  vault TEXT NOT NULL,
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  kty TEXT NOT NULL,
  public_jwk TEXT NOT NULL,
  sealed BLOB NOT NULL,
  exportable INTEGER NOT NULL,
  enabled INTEGER NOT NULL,
  nbf INTEGER,
  exp INTEGER,
  tags TEXT NOT NULL,
  release_policy TEXT,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (vault, name, version),
  FOREIGN KEY (vault, name) REFERENCES keys(vault, name)
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ts INTEGER NOT NULL, vault TEXT NOT NULL, caller TEXT NOT NULL, op TEXT NOT NULL,
  key TEXT NOT NULL, version TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT NOT NULL,
  jti TEXT NOT NULL, issuer TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

    #[test]
    fn another_services_old_database_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attest.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema', '3');
                 CREATE TABLE providers (name TEXT PRIMARY KEY);",
            )
            .unwrap();
        }
        let e = SqlStore::open(&Location::sqlite(&path), test_keys()).unwrap_err();
        assert!(e.to_string().contains("another service"), "{e}");
        let c = rusqlite::Connection::open(&path).unwrap();
        let tables: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2, "nothing was created");
    }

    #[test]
    fn a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        {
            // A database as the store made it before migrations were numbered: schema
            // 1 with its append-only triggers, `meta.schema` = 1.
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(LEGACY_SCHEMA_1).unwrap();
            c.execute_batch(
                "INSERT INTO vaults VALUES ('t', 1);
                 INSERT INTO credentials VALUES (x'01', 't', 'administrator', 1);
                 INSERT INTO keys (vault, name) VALUES ('t', 'k');
                 INSERT INTO key_versions (vault, name, version, kty, public_jwk, sealed, exportable, enabled, tags, created, updated, seq)
                   VALUES ('t', 'k', 'v1', 'oct', '{}', x'99', 0, 1, '{}', 1, 1, 1);
                 INSERT INTO audit (ts, vault, caller, op, key, version, outcome, code, jti, issuer)
                   VALUES (1, 't', 'administrator', 'create', 'k', 'v1', 'allowed', '', '', '');
                 INSERT INTO audit (ts, vault, caller, op, key, version, outcome, code, jti, issuer)
                   VALUES (2, 't', 'release_user', 'release', 'k', 'v1', 'denied', 'x', '', '');",
            )
            .unwrap();
        }
        let location = Location::sqlite(&path);
        for _ in 0..2 {
            let s = SqlStore::open(&location, test_keys()).unwrap();
            let cred = s.credential(&[1]).unwrap().unwrap();
            assert_eq!((cred.vault.as_str(), cred.region), ("t", None));
            let v = s.versions("t", "k", false).unwrap();
            assert_eq!(
                (v.len(), v[0].root_id, v[0].sealed.as_slice()),
                (1, None, &[0x99u8][..])
            );
            let schema: String = s
                .conn()
                .unwrap()
                .query_one("SELECT value FROM meta WHERE key = 'schema'", args![])
                .unwrap()
                .get(0)
                .unwrap();
            assert_eq!(schema, "3");
            assert_eq!(count(&s, "SELECT MAX(version) FROM schema_migrations"), 3);
            // The entries from before the migration are linked, and new ones follow.
            s.audit(&AuditEntry {
                ts: 3,
                vault: "t".into(),
                op: "after".into(),
                ..AuditEntry::default()
            })
            .unwrap();
        }
        let intact = verify_audit(&location, &test_keys(), &[]).unwrap();
        assert_eq!(intact.entries, 4);
        // The migrated schema is the one a new database gets.
        let fresh = Location::sqlite(&dir.path().join("fresh.db"));
        drop(SqlStore::open(&fresh, test_keys()).unwrap());
        let dump = |l: &Location| sqldb::schema::dump(&mut Conn::open(l).unwrap()).unwrap();
        assert_eq!(dump(&location), dump(&fresh));
    }

    #[test]
    fn the_schema_is_the_checked_in_one_on_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        let lite = Location::sqlite(&dir.path().join("kv.db"));
        drop(SqlStore::open(&lite, test_keys()).unwrap());
        let dump = sqldb::schema::dump(&mut Conn::open(&lite).unwrap()).unwrap();
        check_schema("sqlite", &dump);
        if let Some(pg) = sqldb::scratch::postgres() {
            drop(SqlStore::open(&pg.location, test_keys()).unwrap());
            let dump = sqldb::schema::dump(&mut Conn::open(&pg.location).unwrap()).unwrap();
            check_schema("postgres", &dump);
        }
    }

    #[test]
    fn a_database_at_each_older_version_migrates_to_the_fresh_schema_on_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        for k in 1..MIGRATIONS.len() {
            let lite = Location::sqlite(&dir.path().join(format!("v{k}.db")));
            let pg = sqldb::scratch::postgres();
            for (engine, location) in [
                ("sqlite", Some(&lite)),
                ("postgres", pg.as_ref().map(|p| &p.location)),
            ] {
                let Some(location) = location else { continue };
                let mut c = Conn::open(location).unwrap();
                migrate_to(&mut c, &MIGRATIONS[..k], &test_keys(), 1).unwrap();
                drop(c);
                drop(SqlStore::open(location, test_keys()).unwrap());
                let dump = sqldb::schema::dump(&mut Conn::open(location).unwrap()).unwrap();
                check_schema(engine, &dump);
            }
        }
    }

    /// Compares `dump` with `schema/<engine>.txt` (`OPENCVM_BLESS=1` rewrites it).
    fn check_schema(engine: &str, dump: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(format!("{engine}.txt"));
        if let Err(e) = sqldb::schema::matches_checked_in(dump, &path) {
            panic!("{e}");
        }
    }

    #[test]
    fn regions_are_platform_vaults_apart_from_tenants() {
        on_both(regions_apart);
    }

    fn regions_apart(s: &SqlStore) {
        s.create_vault("r1", b"tenant", 1).unwrap();
        let root = region(s);
        assert_eq!((root.version, root.sealed.as_slice()), (1, &b"root-1"[..]));
        let cred = s.credential(b"admin").unwrap().unwrap();
        assert_eq!(
            (
                cred.vault.as_str(),
                cred.role.as_str(),
                cred.region.as_deref()
            ),
            ("platform:r1", "administrator", Some("r1"))
        );
        assert_eq!(s.credential(b"tenant").unwrap().unwrap().region, None);
        let kind: String = s
            .conn()
            .unwrap()
            .query_one(
                "SELECT kind FROM vaults WHERE name = 'platform:r1'",
                args![],
            )
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(kind, "platform");
        // A second creation is refused and writes nothing (no second audit entry).
        let again = s.create_region(&NewRegion {
            region: "r1",
            vault: "platform:r1",
            admin_sha256: b"other",
            root_sealed: b"x",
            now: 2,
            audit: &audit("platform:r1", "region_create"),
        });
        assert!(matches!(again, Err(StoreError::Exists(_))));
        assert!(s.credential(b"other").unwrap().is_none());
        assert_eq!(s.audit_log("platform:r1").unwrap().len(), 1);
    }

    #[test]
    fn a_rotation_is_all_or_nothing() {
        on_both(rotation_all_or_nothing);
    }

    fn rotation_all_or_nothing(s: &SqlStore) {
        let root = region(s);
        let v = "platform:r1";
        s.add_version(
            v,
            &row("a", "1", Some(root.id), b"a-old"),
            &audit(v, "create"),
        )
        .unwrap();
        s.add_version(
            v,
            &row("b", "1", Some(root.id), b"b-old"),
            &audit(v, "create"),
        )
        .unwrap();
        assert!(s.set_deleted(v, "b", true, 5, &audit(v, "delete")).unwrap());
        let resealed = |names: &[&str]| -> Vec<SealedVersion> {
            names
                .iter()
                .map(|n| SealedVersion {
                    name: (*n).into(),
                    version: "1".into(),
                    root_id: None,
                    sealed: format!("{n}-new").into_bytes(),
                })
                .collect()
        };
        let rotate = |old: i64, new_version: i64, names: &[&str]| {
            s.rotate_root(&Rotation {
                region: "r1",
                vault: v,
                old_root_id: old,
                new_version,
                new_sealed: b"root-2",
                resealed: &resealed(names),
                now: 2,
                audit: &audit(v, "region_rotate"),
            })
        };
        let unchanged = |s: &SqlStore| {
            assert_eq!(s.region_root("r1").unwrap().unwrap(), root);
            let all = s.sealed_versions(v).unwrap();
            assert_eq!(
                all.iter()
                    .map(|x| (x.sealed.clone(), x.root_id))
                    .collect::<Vec<_>>(),
                vec![
                    (b"a-old".to_vec(), Some(root.id)),
                    (b"b-old".to_vec(), Some(root.id))
                ]
            );
            // region_create, two creates and a delete; no rotation entry.
            assert_eq!(s.audit_log(v).unwrap().len(), 4);
        };
        // A key version left out (here the soft-deleted one), a stale root, a wrong new
        // version: refused, nothing written.
        assert!(matches!(
            rotate(root.id, 2, &["a"]),
            Err(StoreError::Conflict(_))
        ));
        unchanged(s);
        assert!(matches!(
            rotate(root.id + 1, 2, &["a", "b"]),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            rotate(root.id, 3, &["a", "b"]),
            Err(StoreError::Conflict(_))
        ));
        unchanged(s);
        // The whole set: the new root, every version under it, the old root gone.
        rotate(root.id, 2, &["a", "b"]).unwrap();
        let new = s.region_root("r1").unwrap().unwrap();
        assert_eq!((new.version, new.sealed.as_slice()), (2, &b"root-2"[..]));
        let (sealed, r) = s.sealed_with_root(v, "b", "1").unwrap().unwrap();
        assert_eq!((sealed.as_slice(), r), (&b"b-new"[..], new.clone()));
        assert_eq!(count(s, "SELECT COUNT(*) FROM region_roots"), 1);
        assert_eq!(
            s.audit_log(v)
                .unwrap()
                .iter()
                .map(|e| e.op.as_str())
                .collect::<Vec<_>>(),
            [
                "region_create",
                "create",
                "create",
                "delete",
                "region_rotate"
            ]
        );
        let listed = s.regions().unwrap();
        assert_eq!(
            (
                listed.len(),
                listed[0].root_version,
                listed[0].keys,
                listed[0].versions
            ),
            (1, 2, 1, 2)
        );
        // A version sealed under the retired root cannot be stored any more.
        assert!(
            s.add_version(v, &row("c", "1", Some(root.id), b"c"), &audit(v, "create"))
                .is_err()
        );
        assert!(s.versions(v, "c", false).unwrap().is_empty());
        // ... and its audit entry, written in the same transaction, is not there either.
        assert_eq!(s.audit_log(v).unwrap().len(), 5);
    }
}
