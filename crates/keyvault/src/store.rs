//! Persistent state: vaults, credentials, keys and their versions (material sealed),
//! region root keys (sealed) with their platform vaults, and an append-only audit log,
//! in SQLite (WAL, synchronous FULL; every change is one transaction, so kill -9 leaves
//! either the old or the new state). Transactions that read before they write take the
//! write lock when they begin (`BEGIN IMMEDIATE`): a deferred one could not upgrade its
//! read snapshot once the audit writer's connection had committed, and would fail with
//! `SQLITE_BUSY` instead of waiting. The store is a trait so PostgreSQL can follow.
//!
//! The audit log is tamper-evident (the `audit` crate): every entry is linked to the
//! previous one by an HMAC under a key derived from the master key, and every
//! [`CHECKPOINT_EVERY`]th entry gets a signed checkpoint; [`verify_audit`] checks a
//! database file, naming the first entry that does not fit. The append-only triggers
//! stay as a first line; the chain is what holds when they are dropped.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// One audit log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Sequence number (assigned by the store).
    pub seq: i64,
    /// When (Unix seconds).
    pub ts: i64,
    /// Vault.
    pub vault: String,
    /// The caller's role.
    pub caller: String,
    /// Operation (`create`, `release`, ...).
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
const AUDIT: audit::sqlite::Table<'static> = audit::sqlite::Table {
    name: "audit",
    columns: &[
        "ts", "vault", "caller", "op", "key", "version", "outcome", "code", "jti", "issuer",
    ],
    checkpoint_every: CHECKPOINT_EVERY,
};

/// The SQLite store. Audit entries go through one writer thread with its own
/// connection that commits whatever is queued in one transaction (group commit): each
/// caller still waits until its entry is durable, but concurrent releases share fsyncs,
/// and key reads never wait behind an audit fsync.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    audit_tx: Mutex<std::sync::mpsc::Sender<(AuditEntry, AuditAck)>>,
    keys: Arc<AuditKeys>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

const SCHEMA: &str = "
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

/// Schema 1 → 2: vault kinds (tenant and platform vaults in separate namespaces),
/// regions with versioned root keys, and the root each key version is sealed under.
const MIGRATE_2: &str = "
ALTER TABLE vaults ADD COLUMN kind TEXT NOT NULL DEFAULT 'customer';
CREATE TABLE regions (
  name TEXT PRIMARY KEY,
  vault TEXT NOT NULL UNIQUE REFERENCES vaults(name),
  created INTEGER NOT NULL
);
CREATE TABLE region_roots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  region TEXT NOT NULL REFERENCES regions(name),
  version INTEGER NOT NULL,
  sealed BLOB NOT NULL,
  created INTEGER NOT NULL,
  UNIQUE (region, version)
);
ALTER TABLE key_versions ADD COLUMN root_id INTEGER REFERENCES region_roots(id);
CREATE INDEX key_versions_root ON key_versions(root_id);
UPDATE meta SET value = '2' WHERE key = 'schema';
";

/// Schema 2 → 3: the audit log's links and checkpoints. Entries written before are
/// linked now, in order (they were not protected before this migration).
const MIGRATE_3: &str = "
ALTER TABLE audit ADD COLUMN prev BLOB;
ALTER TABLE audit ADD COLUMN link BLOB;
UPDATE meta SET value = '3' WHERE key = 'schema';
";

fn migrate(conn: &mut Connection, keys: &AuditKeys) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut schema: String =
        tx.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })?;
    if schema == "1" {
        tx.execute_batch(MIGRATE_2)?;
        schema = "2".into();
    }
    if schema == "2" {
        tx.execute_batch(MIGRATE_3)?;
        tx.execute_batch(&AUDIT.create_sql())?;
        AUDIT.link_unlinked(&tx, &keys.0)?;
    }
    tx.commit()?;
    Ok(())
}

const AUDIT_SELECT: &str =
    "SELECT seq, ts, vault, caller, op, key, version, outcome, code, jti, issuer FROM audit";

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
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

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `keys` link its audit log.
    pub fn open(path: &Path, keys: AuditKeys) -> Result<Self, StoreError> {
        let keys = Arc::new(keys);
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows (purged key material) are overwritten with zeros, not left in
        // free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&mut conn, &keys)?;
        let audit_conn = Connection::open(path)?;
        audit_conn.pragma_update(None, "synchronous", "FULL")?;
        audit_conn.pragma_update(None, "secure_delete", "ON")?;
        audit_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = std::sync::mpsc::channel::<(AuditEntry, AuditAck)>();
        let writer_keys = keys.clone();
        std::thread::Builder::new()
            .name("keyvault-audit".into())
            .spawn(move || audit_writer(audit_conn, &rx, &writer_keys))
            .map_err(|e| StoreError::Audit(format!("writer thread: {e}")))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            audit_tx: Mutex::new(tx),
            keys,
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// The most entries committed in one audit transaction.
const MAX_AUDIT_BATCH: usize = 512;

fn audit_writer(
    mut conn: Connection,
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
        let result = (|| -> rusqlite::Result<()> {
            // IMMEDIATE: the chain's head is read and extended under the write lock.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (e, _) in &batch {
                insert_audit(&tx, e, keys)?;
            }
            tx.commit()
        })()
        .map_err(|e| e.to_string());
        for (_, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
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

fn root_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RootRow> {
    Ok(RootRow {
        id: r.get(0)?,
        region: r.get(1)?,
        version: r.get(2)?,
        sealed: r.get(3)?,
        created: r.get(4)?,
    })
}

/// Appends `e` to the chain, in the caller's (immediate) transaction.
fn insert_audit(
    tx: &rusqlite::Transaction<'_>,
    e: &AuditEntry,
    keys: &AuditKeys,
) -> rusqlite::Result<()> {
    use rusqlite::types::Value as V;
    let t = |s: &str| V::Text(s.to_owned());
    AUDIT.append(
        tx,
        &keys.0,
        e.ts,
        &[
            V::Integer(e.ts),
            t(&e.vault),
            t(&e.caller),
            t(&e.op),
            t(&e.key),
            t(&e.version),
            t(&e.outcome),
            t(&e.code),
            t(&e.jti),
            t(&e.issuer),
        ],
    )?;
    Ok(())
}

/// Why a database's audit log could not be checked.
pub use audit::sqlite::VerifyError as VerifyAuditError;

/// Checks the audit log of the database at `path` (read-only): every entry's link and
/// every stored checkpoint, and that each of `expect` (checkpoints kept elsewhere) is
/// still in it.
pub fn verify_audit(
    path: &Path,
    keys: &AuditKeys,
    expect: &[audit::Checkpoint],
) -> Result<audit::Intact, VerifyAuditError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    AUDIT.verify(&conn, &keys.0, expect)
}

/// A signed checkpoint of the newest entry of the database at `path` (read-only), to
/// keep elsewhere and pass to [`verify_audit`] later; `None` for an empty log.
pub fn checkpoint_head(
    path: &Path,
    keys: &AuditKeys,
    now: i64,
) -> Result<Option<audit::Checkpoint>, VerifyAuditError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    AUDIT.checkpoint_head(&conn, &keys.0, now)
}

impl Store for SqliteStore {
    fn create_vault(&self, vault: &str, admin_sha256: &[u8], now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO vaults (name, created) VALUES (?1, ?2)",
            params![vault, now],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(format!("vault {vault:?}")));
        }
        tx.execute(
            "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, 'administrator', ?3)",
            params![admin_sha256, vault, now],
        )?;
        tx.commit()?;
        Ok(())
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
            params![sha256, vault, role, now],
        )?;
        Ok(())
    }

    fn credential(&self, sha256: &[u8]) -> Result<Option<CredentialRow>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT c.vault, c.role, r.name FROM credentials c
                 LEFT JOIN regions r ON r.vault = c.vault WHERE c.sha256 = ?1",
                [sha256],
                |r| {
                    Ok(CredentialRow {
                        vault: r.get(0)?,
                        role: r.get(1)?,
                        region: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn credentials(&self, vault: &str) -> Result<Vec<(Vec<u8>, String, i64)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT sha256, role, created FROM credentials WHERE vault = ?1 ORDER BY created, sha256",
        )?;
        let rows = stmt.query_map([vault], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn retire_credential(
        &self,
        vault: &str,
        sha256: &[u8],
        new_sha256: Option<&[u8]>,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let role: Option<String> = tx
            .query_row(
                "SELECT role FROM credentials WHERE vault = ?1 AND sha256 = ?2",
                params![vault, sha256],
                |r| r.get(0),
            )
            .optional()?;
        let Some(role) = role else {
            return Ok(false);
        };
        if new_sha256.is_none() && role == "administrator" {
            let admins: i64 = tx.query_row(
                "SELECT COUNT(*) FROM credentials WHERE vault = ?1 AND role = 'administrator'",
                [vault],
                |r| r.get(0),
            )?;
            if admins <= 1 {
                return Err(StoreError::Exists(
                    "the vault's last administrator credential".into(),
                ));
            }
        }
        tx.execute(
            "DELETE FROM credentials WHERE vault = ?1 AND sha256 = ?2",
            params![vault, sha256],
        )?;
        if let Some(new) = new_sha256 {
            tx.execute(
                "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, ?3, ?4)",
                params![new, vault, role, now],
            )?;
        }
        insert_audit(&tx, audit, &self.keys)?;
        tx.commit()?;
        Ok(true)
    }

    fn add_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted: Option<bool> = tx
            .query_row(
                "SELECT deleted FROM keys WHERE vault = ?1 AND name = ?2",
                params![vault, row.name],
                |r| r.get(0),
            )
            .optional()?;
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
                    params![vault, row.name],
                )?;
            }
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE vault = ?1 AND name = ?2",
            params![vault, row.name],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO key_versions (vault, name, version, kty, public_jwk, sealed, exportable, enabled, nbf, exp, tags, release_policy, created, updated, seq, root_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                vault,
                row.name,
                row.version,
                row.kty,
                row.public_jwk,
                row.sealed,
                row.exportable,
                row.enabled,
                row.nbf,
                row.exp,
                row.tags,
                row.release_policy,
                row.created,
                row.updated,
                seq,
                row.root_id
            ],
        )?;
        insert_audit(&tx, audit, &self.keys)?;
        tx.commit()?;
        Ok(())
    }

    fn versions(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT v.name, v.version, v.kty, v.public_jwk, v.sealed, v.exportable, v.enabled, v.nbf, v.exp, v.tags, v.release_policy, v.created, v.updated, v.root_id
             FROM key_versions v JOIN keys k ON k.vault = v.vault AND k.name = v.name
             WHERE v.vault = ?1 AND v.name = ?2 AND k.deleted = ?3 ORDER BY v.seq DESC",
        )?;
        let rows = stmt.query_map(params![vault, name, deleted], version_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn key_names(&self, vault: &str, deleted: bool) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT name FROM keys WHERE vault = ?1 AND deleted = ?2 ORDER BY name")?;
        let rows = stmt.query_map(params![vault, deleted], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn update_version(
        &self,
        vault: &str,
        row: &VersionRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE key_versions SET enabled = ?4, nbf = ?5, exp = ?6, tags = ?7, release_policy = ?8, updated = ?9
             WHERE vault = ?1 AND name = ?2 AND version = ?3",
            params![
                vault,
                row.name,
                row.version,
                row.enabled,
                row.nbf,
                row.exp,
                row.tags,
                row.release_policy,
                row.updated
            ],
        )?;
        insert_audit(&tx, audit, &self.keys)?;
        tx.commit()?;
        Ok(())
    }

    fn set_deleted(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE keys SET deleted = ?3, deleted_at = ?4 WHERE vault = ?1 AND name = ?2 AND deleted = ?5",
            params![vault, name, deleted, deleted.then_some(now), !deleted],
        )?;
        if n > 0 {
            insert_audit(&tx, audit, &self.keys)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn purge(&self, vault: &str, name: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM key_versions WHERE vault = ?1 AND name = ?2 AND EXISTS
             (SELECT 1 FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1)",
            params![vault, name],
        )?;
        let k = tx.execute(
            "DELETE FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1",
            params![vault, name],
        )?;
        if n + k > 0 {
            insert_audit(&tx, audit, &self.keys)?;
        }
        tx.commit()?;
        if n + k > 0 {
            // The purged rows are zeroed in their pages (secure_delete); copy those pages
            // into the database file now and empty the write-ahead log, which still holds
            // earlier images of them. Best effort: a busy checkpoint happens later.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
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
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{AUDIT_SELECT} WHERE vault = ?1 ORDER BY seq"))?;
        let rows = stmt.query_map([vault], audit_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()?
            .query_row("SELECT sealed FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT OR IGNORE INTO secrets (name, sealed) VALUES (?1, ?2)",
            params![name, sealed],
        )?;
        Ok(
            conn.query_row("SELECT sealed FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })?,
        )
    }

    fn create_region(&self, r: &NewRegion<'_>) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM regions WHERE name = ?1", [r.region], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        let n = tx.execute(
            "INSERT OR IGNORE INTO vaults (name, created, kind) VALUES (?1, ?2, ?3)",
            params![r.vault, r.now, VaultKind::Platform.name()],
        )?;
        if exists || n == 0 {
            return Err(StoreError::Exists(format!("region {:?}", r.region)));
        }
        tx.execute(
            "INSERT INTO credentials (sha256, vault, role, created) VALUES (?1, ?2, 'administrator', ?3)",
            params![r.admin_sha256, r.vault, r.now],
        )?;
        tx.execute(
            "INSERT INTO regions (name, vault, created) VALUES (?1, ?2, ?3)",
            params![r.region, r.vault, r.now],
        )?;
        tx.execute(
            "INSERT INTO region_roots (region, version, sealed, created) VALUES (?1, 1, ?2, ?3)",
            params![r.region, r.root_sealed, r.now],
        )?;
        insert_audit(&tx, r.audit, &self.keys)?;
        tx.commit()?;
        Ok(())
    }

    fn region_vault(&self, region: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_row("SELECT vault FROM regions WHERE name = ?1", [region], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn region_root(&self, region: &str) -> Result<Option<RootRow>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, region, version, sealed, created FROM region_roots
                 WHERE region = ?1 ORDER BY version DESC LIMIT 1",
                [region],
                root_row,
            )
            .optional()?)
    }

    fn sealed_with_root(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Vec<u8>, RootRow)>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT r.id, r.region, r.version, r.sealed, r.created, v.sealed
                 FROM key_versions v JOIN region_roots r ON r.id = v.root_id
                 WHERE v.vault = ?1 AND v.name = ?2 AND v.version = ?3",
                params![vault, name, version],
                |r| Ok((r.get(5)?, root_row(r)?)),
            )
            .optional()?)
    }

    fn sealed_versions(&self, vault: &str) -> Result<Vec<SealedVersion>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name, version, root_id, sealed FROM key_versions WHERE vault = ?1
             ORDER BY name, seq",
        )?;
        let rows = stmt.query_map([vault], |r| {
            Ok(SealedVersion {
                name: r.get(0)?,
                version: r.get(1)?,
                root_id: r.get(2)?,
                sealed: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn rotate_root(&self, r: &Rotation<'_>) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, version FROM region_roots WHERE region = ?1
                 ORDER BY version DESC LIMIT 1",
                [r.region],
                |x| Ok((x.get(0)?, x.get(1)?)),
            )
            .optional()?;
        match current {
            Some((id, version)) if id == r.old_root_id && version + 1 == r.new_version => {}
            _ => {
                return Err(StoreError::Conflict(format!(
                    "the root of region {:?} changed meanwhile",
                    r.region
                )));
            }
        }
        tx.execute(
            "INSERT INTO region_roots (region, version, sealed, created) VALUES (?1, ?2, ?3, ?4)",
            params![r.region, r.new_version, r.new_sealed, r.now],
        )?;
        let new_id = tx.last_insert_rowid();
        for v in r.resealed {
            let n = tx.execute(
                "UPDATE key_versions SET sealed = ?1, root_id = ?2
                 WHERE vault = ?3 AND name = ?4 AND version = ?5 AND root_id = ?6",
                params![v.sealed, new_id, r.vault, v.name, v.version, r.old_root_id],
            )?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "key {:?} version {} changed meanwhile",
                    v.name, v.version
                )));
            }
        }
        let left: i64 = tx.query_row(
            "SELECT COUNT(*) FROM key_versions WHERE root_id = ?1",
            [r.old_root_id],
            |x| x.get(0),
        )?;
        if left != 0 {
            return Err(StoreError::Conflict(format!(
                "{left} key versions of region {:?} were not resealed",
                r.region
            )));
        }
        tx.execute("DELETE FROM region_roots WHERE id = ?1", [r.old_root_id])?;
        insert_audit(&tx, r.audit, &self.keys)?;
        tx.commit()?;
        Ok(())
    }

    fn regions(&self) -> Result<Vec<RegionRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT g.name, g.vault, r.version, r.created, g.created,
               (SELECT COUNT(*) FROM keys k WHERE k.vault = g.vault AND k.deleted = 0),
               (SELECT COUNT(*) FROM key_versions v WHERE v.vault = g.vault)
             FROM regions g JOIN region_roots r ON r.region = g.name
             WHERE r.version = (SELECT MAX(version) FROM region_roots m WHERE m.region = g.name)
             ORDER BY g.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RegionRow {
                name: r.get(0)?,
                vault: r.get(1)?,
                root_version: r.get(2)?,
                root_created: r.get(3)?,
                created: r.get(4)?,
                keys: r.get(5)?,
                versions: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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

    fn region(s: &SqliteStore) -> RootRow {
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

    #[test]
    fn a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
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
        for _ in 0..2 {
            let s = SqliteStore::open(&path, test_keys()).unwrap();
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
                .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(schema, "3");
            // The entries from before the migration are linked, and new ones follow.
            s.audit(&AuditEntry {
                ts: 3,
                vault: "t".into(),
                op: "after".into(),
                ..AuditEntry::default()
            })
            .unwrap();
        }
        let intact = verify_audit(&path, &test_keys(), &[]).unwrap();
        assert_eq!(intact.entries, 4);
    }

    #[test]
    fn regions_are_platform_vaults_apart_from_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("kv.db"), test_keys()).unwrap();
        s.create_vault("r1", b"tenant", 1).unwrap();
        let root = region(&s);
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
            .query_row(
                "SELECT kind FROM vaults WHERE name = 'platform:r1'",
                [],
                |r| r.get(0),
            )
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
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("kv.db"), test_keys()).unwrap();
        let root = region(&s);
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
        let unchanged = |s: &SqliteStore| {
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
        unchanged(&s);
        assert!(matches!(
            rotate(root.id + 1, 2, &["a", "b"]),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            rotate(root.id, 3, &["a", "b"]),
            Err(StoreError::Conflict(_))
        ));
        unchanged(&s);
        // The whole set: the new root, every version under it, the old root gone.
        rotate(root.id, 2, &["a", "b"]).unwrap();
        let new = s.region_root("r1").unwrap().unwrap();
        assert_eq!((new.version, new.sealed.as_slice()), (2, &b"root-2"[..]));
        let (sealed, r) = s.sealed_with_root(v, "b", "1").unwrap().unwrap();
        assert_eq!((sealed.as_slice(), r), (&b"b-new"[..], new.clone()));
        let roots: i64 = s
            .conn()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM region_roots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(roots, 1);
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
