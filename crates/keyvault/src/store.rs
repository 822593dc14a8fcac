//! Persistent state: vaults, credentials, keys and their versions (material sealed),
//! and an append-only audit log, in SQLite (WAL, synchronous FULL; every change is
//! one transaction, so kill -9 leaves either the old or the new state). The store is a
//! trait so PostgreSQL can follow.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

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
    /// Key material (PKCS#8 or raw AES key), sealed under the master key.
    pub sealed: Vec<u8>,
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
    /// The vault and role of a credential.
    fn credential(&self, sha256: &[u8]) -> Result<Option<(String, String)>, StoreError>;
    /// Adds a key version (creating the key if needed). Refused while the key is
    /// deleted.
    fn add_version(&self, vault: &str, row: &VersionRow) -> Result<(), StoreError>;
    /// A key's versions, newest first; `deleted` selects live or soft-deleted keys.
    fn versions(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
    ) -> Result<Vec<VersionRow>, StoreError>;
    /// Live key names.
    fn key_names(&self, vault: &str) -> Result<Vec<String>, StoreError>;
    /// Replaces a version's mutable attributes.
    fn update_version(&self, vault: &str, row: &VersionRow) -> Result<(), StoreError>;
    /// Soft-deletes (or recovers, with `deleted == false`) a key; false if no such key.
    fn set_deleted(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Removes a soft-deleted key and its versions for good.
    fn purge(&self, vault: &str, name: &str) -> Result<bool, StoreError>;
    /// Appends to the audit log.
    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError>;
    /// The vault's audit log, oldest first.
    fn audit_log(&self, vault: &str) -> Result<Vec<AuditEntry>, StoreError>;
    /// A service-level secret (sealed), by name.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a service-level secret if none has that name; returns the one stored.
    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError>;
}

type AuditAck = std::sync::mpsc::SyncSender<Result<(), String>>;

/// The SQLite store. Audit entries go through one writer thread with its own
/// connection that commits whatever is queued in one transaction (group commit): each
/// caller still waits until its entry is durable, but concurrent releases share fsyncs,
/// and key reads never wait behind an audit fsync.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    audit_tx: Mutex<std::sync::mpsc::Sender<(AuditEntry, AuditAck)>>,
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

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let audit_conn = Connection::open(path)?;
        audit_conn.pragma_update(None, "synchronous", "FULL")?;
        audit_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = std::sync::mpsc::channel::<(AuditEntry, AuditAck)>();
        std::thread::Builder::new()
            .name("keyvault-audit".into())
            .spawn(move || audit_writer(audit_conn, &rx))
            .map_err(|e| StoreError::Audit(format!("writer thread: {e}")))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            audit_tx: Mutex::new(tx),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// The most entries committed in one audit transaction.
const MAX_AUDIT_BATCH: usize = 512;

fn audit_writer(mut conn: Connection, rx: &std::sync::mpsc::Receiver<(AuditEntry, AuditAck)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_AUDIT_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for (e, _) in &batch {
                tx.execute(
                    "INSERT INTO audit (ts, vault, caller, op, key, version, outcome, code, jti, issuer)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        e.ts, e.vault, e.caller, e.op, e.key, e.version, e.outcome, e.code, e.jti,
                        e.issuer
                    ],
                )?;
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
    })
}

impl Store for SqliteStore {
    fn create_vault(&self, vault: &str, admin_sha256: &[u8], now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
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

    fn credential(&self, sha256: &[u8]) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT vault, role FROM credentials WHERE sha256 = ?1",
                [sha256],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn add_version(&self, vault: &str, row: &VersionRow) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
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
            "INSERT INTO key_versions (vault, name, version, kty, public_jwk, sealed, exportable, enabled, nbf, exp, tags, release_policy, created, updated, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                seq
            ],
        )?;
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
            "SELECT v.name, v.version, v.kty, v.public_jwk, v.sealed, v.exportable, v.enabled, v.nbf, v.exp, v.tags, v.release_policy, v.created, v.updated
             FROM key_versions v JOIN keys k ON k.vault = v.vault AND k.name = v.name
             WHERE v.vault = ?1 AND v.name = ?2 AND k.deleted = ?3 ORDER BY v.seq DESC",
        )?;
        let rows = stmt.query_map(params![vault, name, deleted], version_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn key_names(&self, vault: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT name FROM keys WHERE vault = ?1 AND deleted = 0 ORDER BY name")?;
        let rows = stmt.query_map([vault], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn update_version(&self, vault: &str, row: &VersionRow) -> Result<(), StoreError> {
        self.conn()?.execute(
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
        Ok(())
    }

    fn set_deleted(
        &self,
        vault: &str,
        name: &str,
        deleted: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self.conn()?.execute(
            "UPDATE keys SET deleted = ?3, deleted_at = ?4 WHERE vault = ?1 AND name = ?2 AND deleted = ?5",
            params![vault, name, deleted, deleted.then_some(now), !deleted],
        )?;
        Ok(n > 0)
    }

    fn purge(&self, vault: &str, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM key_versions WHERE vault = ?1 AND name = ?2 AND EXISTS
             (SELECT 1 FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1)",
            params![vault, name],
        )?;
        let k = tx.execute(
            "DELETE FROM keys WHERE vault = ?1 AND name = ?2 AND deleted = 1",
            params![vault, name],
        )?;
        tx.commit()?;
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
        let mut stmt = conn.prepare(
            "SELECT seq, ts, vault, caller, op, key, version, outcome, code, jti, issuer FROM audit WHERE vault = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([vault], |r| {
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
        })?;
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
}
