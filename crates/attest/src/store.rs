//! Persistent state: providers, their token-signing keys (sealed) and their policy
//! versions, in SQLite (WAL, synchronous FULL: a committed write survives kill -9 and
//! power loss). The store is an interface so PostgreSQL can follow for fleets.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A lock was poisoned by a panic elsewhere.
    #[error("database lock poisoned")]
    Poisoned,
    /// The thing already exists.
    #[error("{0} already exists")]
    Exists(String),
}

/// A stored provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRow {
    /// Its name (`default` for the default provider).
    pub name: String,
    /// SHA-256 of its administrator credential.
    pub admin_sha256: Vec<u8>,
    /// Provider settings as JSON (see `ProviderSettings`).
    pub settings_json: String,
}

/// A stored token-signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyRow {
    /// JOSE algorithm name.
    pub alg: String,
    /// The sealed PKCS#8 document.
    pub sealed_pkcs8: Vec<u8>,
    /// Self-signed certificate (DER).
    pub cert_der: Vec<u8>,
    /// Creation time (Unix seconds).
    pub created: i64,
}

/// A stored policy version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRow {
    /// Version number, from 1.
    pub version: i64,
    /// The Rego text.
    pub text: String,
    /// When it was set (Unix seconds).
    pub created: i64,
}

/// Where providers, keys and policies live.
pub trait Store: Send + Sync {
    /// Every provider.
    fn providers(&self) -> Result<Vec<ProviderRow>, StoreError>;
    /// Creates a provider with its first signing key, atomically.
    fn create_provider(&self, p: &ProviderRow, key: &SigningKeyRow) -> Result<(), StoreError>;
    /// Replaces a provider's settings.
    fn set_settings(&self, provider: &str, settings_json: &str) -> Result<(), StoreError>;
    /// A provider's signing keys, newest first.
    fn signing_keys(&self, provider: &str) -> Result<Vec<SigningKeyRow>, StoreError>;
    /// Adds a signing key (the newest signs).
    fn add_signing_key(&self, provider: &str, key: &SigningKeyRow) -> Result<(), StoreError>;
    /// The newest policy version of a provider for an attestation type.
    fn latest_policy(&self, provider: &str, kind: &str) -> Result<Option<PolicyRow>, StoreError>;
    /// Stores a new policy version; returns its number.
    fn put_policy(
        &self,
        provider: &str,
        kind: &str,
        text: &str,
        now: i64,
    ) -> Result<i64, StoreError>;
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
CREATE TABLE IF NOT EXISTS providers (
  name TEXT PRIMARY KEY,
  admin_sha256 BLOB NOT NULL,
  settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  provider TEXT NOT NULL REFERENCES providers(name),
  alg TEXT NOT NULL,
  sealed_pkcs8 BLOB NOT NULL,
  cert_der BLOB NOT NULL,
  created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
  provider TEXT NOT NULL REFERENCES providers(name),
  kind TEXT NOT NULL,
  version INTEGER NOT NULL,
  text TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (provider, kind, version)
);
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
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

fn insert_key(conn: &Connection, provider: &str, key: &SigningKeyRow) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO signing_keys (provider, alg, sealed_pkcs8, cert_der, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![provider, key.alg, key.sealed_pkcs8, key.cert_der, key.created],
    )
}

impl Store for SqliteStore {
    fn providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT name, admin_sha256, settings FROM providers")?;
        let rows = stmt.query_map([], |r| {
            Ok(ProviderRow {
                name: r.get(0)?,
                admin_sha256: r.get(1)?,
                settings_json: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn create_provider(&self, p: &ProviderRow, key: &SigningKeyRow) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT name FROM providers WHERE name = ?1",
                [&p.name],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::Exists(format!("provider {:?}", p.name)));
        }
        tx.execute(
            "INSERT INTO providers (name, admin_sha256, settings) VALUES (?1, ?2, ?3)",
            params![p.name, p.admin_sha256, p.settings_json],
        )?;
        insert_key(&tx, &p.name, key)?;
        tx.commit()?;
        Ok(())
    }

    fn set_settings(&self, provider: &str, settings_json: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE providers SET settings = ?2 WHERE name = ?1",
            params![provider, settings_json],
        )?;
        Ok(())
    }

    fn signing_keys(&self, provider: &str) -> Result<Vec<SigningKeyRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT alg, sealed_pkcs8, cert_der, created FROM signing_keys WHERE provider = ?1 ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([provider], |r| {
            Ok(SigningKeyRow {
                alg: r.get(0)?,
                sealed_pkcs8: r.get(1)?,
                cert_der: r.get(2)?,
                created: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_signing_key(&self, provider: &str, key: &SigningKeyRow) -> Result<(), StoreError> {
        let conn = self.conn()?;
        insert_key(&conn, provider, key)?;
        Ok(())
    }

    fn latest_policy(&self, provider: &str, kind: &str) -> Result<Option<PolicyRow>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT version, text, created FROM policies WHERE provider = ?1 AND kind = ?2 ORDER BY version DESC LIMIT 1",
                [provider, kind],
                |r| {
                    Ok(PolicyRow {
                        version: r.get(0)?,
                        text: r.get(1)?,
                        created: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn put_policy(
        &self,
        provider: &str,
        kind: &str,
        text: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let version: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE provider = ?1 AND kind = ?2",
            [provider, kind],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO policies (provider, kind, version, text, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![provider, kind, version, text, now],
        )?;
        tx.commit()?;
        Ok(version)
    }
}
