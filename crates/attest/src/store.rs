//! Persistent state: providers, their token-signing keys (sealed), their policy
//! versions, the platform's reference values, and a tamper-evident audit log of every
//! administrative change, in SQLite (WAL, synchronous FULL: a committed write survives
//! kill -9 and power loss; every change and its audit entry commit in one
//! transaction). The store is an interface so PostgreSQL can follow for fleets.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

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
    /// The thing is not there (nothing was written).
    #[error("{0} not found")]
    NotFound(String),
    /// The audit keys could not be derived.
    #[error("audit log: {0}")]
    Audit(String),
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
    /// Store id (0 before it is stored).
    pub id: i64,
    /// JOSE algorithm name.
    pub alg: String,
    /// The sealed PKCS#8 document.
    pub sealed_pkcs8: Vec<u8>,
    /// Self-signed certificate (DER).
    pub cert_der: Vec<u8>,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// When the key leaves the JWKS (set when a newer key takes over); `None` while it
    /// is the key in use.
    pub retire_after: Option<i64>,
    /// Revoked: out of the JWKS at once, whatever `retire_after` says.
    pub revoked: bool,
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

/// A launch measurement the platform runs, registered by its operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReferenceValue {
    /// The region whose hosts run it.
    pub region: String,
    /// The SNP launch measurement (96 lower-case hex digits).
    pub measurement: String,
    /// What it measures (`ovmf`, `paravisor`, ...).
    pub component: String,
    /// How it was obtained (for instance the `cvm snp measure` command line).
    pub source: String,
    /// When it was registered (Unix seconds).
    pub created: i64,
}

/// One audit entry: who changed what.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Sequence number (assigned by the store).
    pub seq: i64,
    /// When (Unix seconds).
    pub ts: i64,
    /// The provider concerned.
    pub provider: String,
    /// Who: `administrator` (of `provider`) or `default-administrator`.
    pub caller: String,
    /// The change (`signing_key_rotate`, `admin_credential_rotate`, ...).
    pub op: String,
    /// What it concerned (a key id, a policy type, ...).
    pub subject: String,
    /// `allowed` or `denied`.
    pub outcome: String,
    /// The refusal code, if any.
    pub code: String,
}

/// Where providers, keys and policies live.
pub trait Store: Send + Sync {
    /// Every provider.
    fn providers(&self) -> Result<Vec<ProviderRow>, StoreError>;
    /// Creates a provider with its first signing key, atomically, with its audit
    /// entry.
    fn create_provider(
        &self,
        p: &ProviderRow,
        key: &SigningKeyRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Replaces a provider's settings.
    fn set_settings(
        &self,
        provider: &str,
        settings_json: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Replaces a provider's administrator credential (its SHA-256).
    fn set_admin(
        &self,
        provider: &str,
        sha256: &[u8],
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// A provider's signing keys, newest first (retired and revoked ones too).
    fn signing_keys(&self, provider: &str) -> Result<Vec<SigningKeyRow>, StoreError>;
    /// Adds a signing key (the newest signs); every older key still in use retires at
    /// `retire_older_at`.
    fn add_signing_key(
        &self,
        provider: &str,
        key: &SigningKeyRow,
        retire_older_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Revokes signing key `id`; with `replacement`, adds it as the key in use first
    /// (for revoking the key that signs). False if the provider has no such key.
    fn revoke_signing_key(
        &self,
        provider: &str,
        id: i64,
        replacement: Option<&SigningKeyRow>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// The newest policy version of a provider for an attestation type.
    fn latest_policy(&self, provider: &str, kind: &str) -> Result<Option<PolicyRow>, StoreError>;
    /// Stores a new policy version; returns its number.
    fn put_policy(
        &self,
        provider: &str,
        kind: &str,
        text: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<i64, StoreError>;
    /// Every reference value.
    fn reference_values(&self) -> Result<Vec<ReferenceValue>, StoreError>;
    /// Registers a reference value (replacing one of the same region and
    /// measurement).
    fn add_reference_value(
        &self,
        rv: &ReferenceValue,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Removes one; false if there was none.
    fn remove_reference_value(
        &self,
        region: &str,
        measurement: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Appends an audit entry on its own (for refusals).
    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError>;
    /// A provider's audit entries, oldest first.
    fn audit_log(&self, provider: &str) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The audit table: its columns in link order.
pub const AUDIT: audit::sqlite::Table<'static> = audit::sqlite::Table {
    name: "audit",
    columns: &[
        "ts", "provider", "caller", "op", "subject", "outcome", "code",
    ],
    checkpoint_every: 64,
};

/// The audit keys of a service whose master key is `master`.
pub fn audit_keys(master: &seal::MasterKey) -> Result<audit::Keys, StoreError> {
    audit::Keys::derive(&master.derive("opencvm-attest/audit-chain"))
        .map_err(|e| StoreError::Audit(e.to_string()))
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    keys: audit::Keys,
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

/// Schema 1 → 2: signing keys retire and can be revoked; reference values; the audit
/// log. Keys present before keep signing until the next rotation, which retires them.
const MIGRATE_2: &str = "
ALTER TABLE signing_keys ADD COLUMN retire_after INTEGER;
ALTER TABLE signing_keys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
CREATE TABLE reference_values (
  region TEXT NOT NULL,
  measurement TEXT NOT NULL,
  component TEXT NOT NULL,
  source TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (region, measurement)
);
UPDATE meta SET value = '2' WHERE key = 'schema';
";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `keys` link its audit log.
    pub fn open(path: &Path, keys: audit::Keys) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let schema: String =
            tx.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })?;
        if schema == "1" {
            tx.execute_batch(MIGRATE_2)?;
            tx.execute_batch(&AUDIT.create_sql())?;
        }
        tx.commit()?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            keys,
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in one immediate transaction and appends `audit` in it.
    fn with_audit<T>(
        &self,
        audit: &AuditEntry,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        append(&tx, &self.keys, audit)?;
        tx.commit()?;
        Ok(out)
    }
}

fn append(
    tx: &rusqlite::Transaction<'_>,
    keys: &audit::Keys,
    e: &AuditEntry,
) -> rusqlite::Result<()> {
    let t = |s: &str| Sql::Text(s.to_owned());
    AUDIT.append(
        tx,
        keys,
        e.ts,
        &[
            Sql::Integer(e.ts),
            t(&e.provider),
            t(&e.caller),
            t(&e.op),
            t(&e.subject),
            t(&e.outcome),
            t(&e.code),
        ],
    )?;
    Ok(())
}

/// Checks the audit log of the database at `path` (read-only).
pub fn verify_audit(
    path: &Path,
    keys: &audit::Keys,
    expect: &[audit::Checkpoint],
) -> Result<audit::Intact, audit::sqlite::VerifyError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    AUDIT.verify(&conn, keys, expect)
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

    fn create_provider(
        &self,
        p: &ProviderRow,
        key: &SigningKeyRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
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
            insert_key(tx, &p.name, key)?;
            Ok(())
        })
    }

    fn set_settings(
        &self,
        provider: &str,
        settings_json: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            tx.execute(
                "UPDATE providers SET settings = ?2 WHERE name = ?1",
                params![provider, settings_json],
            )?;
            Ok(())
        })
    }

    fn set_admin(
        &self,
        provider: &str,
        sha256: &[u8],
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            tx.execute(
                "UPDATE providers SET admin_sha256 = ?2 WHERE name = ?1",
                params![provider, sha256],
            )?;
            Ok(())
        })
    }

    fn signing_keys(&self, provider: &str) -> Result<Vec<SigningKeyRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, alg, sealed_pkcs8, cert_der, created, retire_after, revoked FROM signing_keys
             WHERE provider = ?1 ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([provider], |r| {
            Ok(SigningKeyRow {
                id: r.get(0)?,
                alg: r.get(1)?,
                sealed_pkcs8: r.get(2)?,
                cert_der: r.get(3)?,
                created: r.get(4)?,
                retire_after: r.get(5)?,
                revoked: r.get::<_, i64>(6)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_signing_key(
        &self,
        provider: &str,
        key: &SigningKeyRow,
        retire_older_at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            tx.execute(
                "UPDATE signing_keys SET retire_after = ?2
                 WHERE provider = ?1 AND retire_after IS NULL AND revoked = 0",
                params![provider, retire_older_at],
            )?;
            insert_key(tx, provider, key)?;
            Ok(())
        })
    }

    fn revoke_signing_key(
        &self,
        provider: &str,
        id: i64,
        replacement: Option<&SigningKeyRow>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        self.with_audit(audit, |tx| {
            let n = tx.execute(
                "UPDATE signing_keys SET revoked = 1 WHERE provider = ?1 AND id = ?2 AND revoked = 0",
                params![provider, id],
            )?;
            if n == 0 {
                // Rolls the transaction back: no audit entry for nothing.
                return Err(StoreError::NotFound(format!("signing key {id}")));
            }
            if let Some(key) = replacement {
                insert_key(tx, provider, key)?;
            }
            Ok(true)
        })
        .or_else(|e| match e {
            StoreError::NotFound(_) => Ok(false),
            e => Err(e),
        })
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
        audit: &AuditEntry,
    ) -> Result<i64, StoreError> {
        self.with_audit(audit, |tx| {
            let version: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE provider = ?1 AND kind = ?2",
                [provider, kind],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO policies (provider, kind, version, text, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![provider, kind, version, text, now],
            )?;
            Ok(version)
        })
    }

    fn reference_values(&self) -> Result<Vec<ReferenceValue>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT region, measurement, component, source, created FROM reference_values
             ORDER BY region, measurement",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReferenceValue {
                region: r.get(0)?,
                measurement: r.get(1)?,
                component: r.get(2)?,
                source: r.get(3)?,
                created: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_reference_value(
        &self,
        rv: &ReferenceValue,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO reference_values (region, measurement, component, source, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rv.region, rv.measurement, rv.component, rv.source, rv.created],
            )?;
            Ok(())
        })
    }

    fn remove_reference_value(
        &self,
        region: &str,
        measurement: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM reference_values WHERE region = ?1 AND measurement = ?2",
            params![region, measurement],
        )?;
        if n > 0 {
            append(&tx, &self.keys, audit)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.with_audit(e, |_| Ok(()))
    }

    fn audit_log(&self, provider: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, ts, provider, caller, op, subject, outcome, code FROM audit
             WHERE provider = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([provider], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                ts: r.get(1)?,
                provider: r.get(2)?,
                caller: r.get(3)?,
                op: r.get(4)?,
                subject: r.get(5)?,
                outcome: r.get(6)?,
                code: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> audit::Keys {
        audit_keys(&seal::MasterKey::from_hex(&"33".repeat(32)).unwrap()).unwrap()
    }

    fn key(created: i64) -> SigningKeyRow {
        SigningKeyRow {
            id: 0,
            alg: "RS256".into(),
            sealed_pkcs8: vec![1],
            cert_der: vec![2],
            created,
            retire_after: None,
            revoked: false,
        }
    }

    fn entry(op: &str) -> AuditEntry {
        AuditEntry {
            ts: 1,
            provider: "p".into(),
            caller: "administrator".into(),
            op: op.into(),
            outcome: "allowed".into(),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn rotation_retires_and_revocation_is_immediate_each_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let s = SqliteStore::open(&path, keys()).unwrap();
        s.create_provider(
            &ProviderRow {
                name: "p".into(),
                admin_sha256: vec![0; 32],
                settings_json: "{}".into(),
            },
            &key(1),
            &entry("provider_create"),
        )
        .unwrap();
        s.add_signing_key("p", &key(2), 500, &entry("signing_key_rotate"))
            .unwrap();
        let ks = s.signing_keys("p").unwrap();
        assert_eq!((ks[0].retire_after, ks[1].retire_after), (None, Some(500)));
        // A second rotation does not push the first key's retirement back.
        s.add_signing_key("p", &key(3), 900, &entry("signing_key_rotate"))
            .unwrap();
        let ks = s.signing_keys("p").unwrap();
        assert_eq!(
            ks.iter().map(|k| k.retire_after).collect::<Vec<_>>(),
            vec![None, Some(900), Some(500)]
        );
        assert!(
            s.revoke_signing_key("p", ks[1].id, None, &entry("signing_key_revoke"))
                .unwrap()
        );
        assert!(s.signing_keys("p").unwrap()[1].revoked);
        // Revoking again, or a key that is not there, writes nothing.
        assert!(
            !s.revoke_signing_key("p", ks[1].id, None, &entry("signing_key_revoke"))
                .unwrap()
        );
        let ops: Vec<String> = s
            .audit_log("p")
            .unwrap()
            .into_iter()
            .map(|e| e.op)
            .collect();
        assert_eq!(
            ops,
            [
                "provider_create",
                "signing_key_rotate",
                "signing_key_rotate",
                "signing_key_revoke"
            ]
        );
        drop(s);
        assert_eq!(verify_audit(&path, &keys(), &[]).unwrap().entries, 4);
    }
}
