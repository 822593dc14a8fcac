//! Persistent state: providers, their token-signing keys (sealed), their policy
//! versions, the platform's reference values, and a tamper-evident audit log of every
//! administrative change, on SQLite (WAL, synchronous FULL: a committed write survives
//! kill -9 and power loss) or PostgreSQL (`sqldb`). Every change and its audit entry
//! commit in one write transaction, which holds the database's writer lock from its
//! start. The schema is [`MIGRATIONS`], applied to both engines.

use std::sync::Mutex;

use sqldb::migrate::Migration;
use sqldb::{Conn, Location, Queries, Tx, args};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] sqldb::Error),
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

/// A launch measurement the platform runs, registered by its operator (the API's
/// type, as the store keeps it).
pub use attest_api::ReferenceValue;

/// One audit entry, who changed what: the API's audit record, as the store keeps it.
pub use attest_api::AuditRecord as AuditEntry;

/// Where providers, keys and policies live (and the used nonces of replicas).
pub trait Store: crate::nonce::SharedNonces {
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
    /// A service secret (sealed), by name.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a service secret unless one has that name; returns the one stored (a
    /// replica that lost the race gets the winner's).
    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// The generation: raised by every change of providers, signing keys, policies or
    /// reference values.
    fn generation(&self) -> Result<i64, StoreError>;
}

/// The audit table: its columns in link order.
pub const AUDIT: audit::table::Table<'static> = audit::table::Table {
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

/// The schema's numbered migrations (`crates/attest/migrations/`), applied to both
/// engines.
pub const MIGRATIONS: [Migration<'static>; 3] = [
    Migration {
        version: 1,
        name: "providers",
        sql: include_str!("../migrations/0001_providers.sql"),
        postgres: None,
    },
    Migration {
        version: 2,
        name: "rotation, reference values, audit",
        sql: include_str!("../migrations/0002_rotation_reference_values_audit.sql"),
        postgres: None,
    },
    Migration {
        version: 3,
        name: "replicas",
        sql: include_str!("../migrations/0003_replicas.sql"),
        postgres: None,
    },
];

/// Applies what is pending of `migrations` (a prefix of [`MIGRATIONS`]); the audit log
/// becomes append-only with migration 2.
fn migrate_to(conn: &mut Conn, migrations: &[Migration<'_>], now: i64) -> Result<(), StoreError> {
    sqldb::migrate::apply(
        conn,
        "attest",
        migrations,
        &|tx| sqldb::migrate::own_meta_schema_version(tx, "providers", "attest"),
        &mut |tx, version| {
            if version == 2 {
                AUDIT.protect(tx)?;
            }
            Ok(())
        },
        now,
    )?;
    Ok(())
}

/// The store, on SQLite or PostgreSQL.
pub struct SqlStore {
    conn: Mutex<Conn>,
    keys: audit::Keys,
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
    pub fn open(location: &Location, keys: audit::Keys) -> Result<Self, StoreError> {
        let mut conn = Conn::open(location)?;
        migrate_to(&mut conn, &MIGRATIONS, unix_now())?;
        Ok(SqlStore {
            conn: Mutex::new(conn),
            keys,
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Conn>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs the change `f` in one write transaction, raises the generation and appends
    /// `audit`, all in it.
    fn with_audit<T>(
        &self,
        audit: &AuditEntry,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.write()?;
        let out = f(&mut tx)?;
        raise_generation(&mut tx)?;
        append(&mut tx, &self.keys, audit)?;
        tx.commit()?;
        Ok(out)
    }
}

fn raise_generation(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE generation SET value = value + 1 WHERE id = 1",
        args![],
    )?;
    Ok(())
}

/// How long past its expiry a used nonce is still remembered: replicas' clocks may
/// differ by up to this much without a nonce becoming usable again on the slower one.
pub const NONCE_EXPIRY_GRACE_SECS: i64 = 120;

impl crate::nonce::SharedNonces for SqlStore {
    fn nonce_used(&self, provider: &str, raw: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT 1 FROM used_nonces WHERE provider = ?1 AND nonce = ?2",
                args![provider, raw],
            )?
            .is_some())
    }

    fn use_nonce(
        &self,
        provider: &str,
        raw: &[u8],
        expires: i64,
        now: i64,
        capacity: usize,
    ) -> Result<crate::nonce::UseOutcome, StoreError> {
        use crate::nonce::UseOutcome;
        let mut conn = self.conn()?;
        let mut tx = conn.write()?;
        tx.execute(
            "DELETE FROM used_nonces WHERE provider = ?1 AND expires <= ?2",
            args![provider, now.saturating_sub(NONCE_EXPIRY_GRACE_SECS)],
        )?;
        // Under the writer lock: no other replica uses a nonce between these.
        if tx
            .query_opt(
                "SELECT 1 FROM used_nonces WHERE provider = ?1 AND nonce = ?2",
                args![provider, raw],
            )?
            .is_some()
        {
            tx.commit()?;
            return Ok(UseOutcome::Replayed);
        }
        let n: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM used_nonces WHERE provider = ?1",
                args![provider],
            )?
            .get(0)?;
        if usize::try_from(n).unwrap_or(usize::MAX) >= capacity {
            tx.commit()?;
            return Ok(UseOutcome::Full);
        }
        tx.execute(
            "INSERT INTO used_nonces (provider, nonce, expires) VALUES (?1, ?2, ?3)",
            args![provider, raw, expires],
        )?;
        tx.commit()?;
        Ok(UseOutcome::Fresh)
    }
}

fn append(tx: &mut Tx<'_>, keys: &audit::Keys, e: &AuditEntry) -> Result<(), StoreError> {
    AUDIT
        .append(
            tx,
            keys,
            e.ts,
            args![
                e.ts,
                e.provider.as_str(),
                e.caller.as_str(),
                e.op.as_str(),
                e.subject.as_str(),
                e.outcome.as_str(),
                e.code.as_str()
            ],
        )
        .map_err(|e| StoreError::Audit(e.to_string()))?;
    Ok(())
}

/// Checks the audit log of the database at `location` (read-only, one snapshot).
pub fn verify_audit(
    location: &Location,
    keys: &audit::Keys,
    expect: &[audit::Checkpoint],
) -> Result<audit::Intact, audit::table::VerifyError> {
    let mut conn = Conn::open_read_only(location)?;
    let mut tx = conn.read()?;
    AUDIT.verify(&mut tx, keys, expect)
}

fn insert_key(tx: &mut Tx<'_>, provider: &str, key: &SigningKeyRow) -> Result<u64, StoreError> {
    Ok(tx.execute(
        "INSERT INTO signing_keys (provider, alg, sealed_pkcs8, cert_der, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![provider, key.alg.as_str(), key.sealed_pkcs8.as_slice(), key.cert_der.as_slice(), key.created],
    )?)
}

impl Store for SqlStore {
    fn providers(&self) -> Result<Vec<ProviderRow>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT name, admin_sha256, settings FROM providers",
            args![],
            |r| {
                Ok(ProviderRow {
                    name: r.get(0)?,
                    admin_sha256: r.get(1)?,
                    settings_json: r.get(2)?,
                })
            },
        )?)
    }

    fn create_provider(
        &self,
        p: &ProviderRow,
        key: &SigningKeyRow,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            let exists = tx
                .query_opt(
                    "SELECT name FROM providers WHERE name = ?1",
                    args![p.name.as_str()],
                )?
                .is_some();
            if exists {
                return Err(StoreError::Exists(format!("provider {:?}", p.name)));
            }
            tx.execute(
                "INSERT INTO providers (name, admin_sha256, settings) VALUES (?1, ?2, ?3)",
                args![
                    p.name.as_str(),
                    p.admin_sha256.as_slice(),
                    p.settings_json.as_str()
                ],
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
                args![provider, settings_json],
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
                args![provider, sha256],
            )?;
            Ok(())
        })
    }

    fn signing_keys(&self, provider: &str) -> Result<Vec<SigningKeyRow>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT id, alg, sealed_pkcs8, cert_der, created, retire_after, revoked FROM signing_keys
             WHERE provider = ?1 ORDER BY id DESC",
            args![provider],
            |r| {
                Ok(SigningKeyRow {
                    id: r.get(0)?,
                    alg: r.get(1)?,
                    sealed_pkcs8: r.get(2)?,
                    cert_der: r.get(3)?,
                    created: r.get(4)?,
                    retire_after: r.get(5)?,
                    revoked: r.get(6)?,
                })
            },
        )?)
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
                args![provider, retire_older_at],
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
                args![provider, id],
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
            .query_opt(
                "SELECT version, text, created FROM policies WHERE provider = ?1 AND kind = ?2 ORDER BY version DESC LIMIT 1",
                args![provider, kind],
            )?
            .map(|r| -> Result<_, sqldb::Error> {
                Ok(PolicyRow {
                    version: r.get(0)?,
                    text: r.get(1)?,
                    created: r.get(2)?,
                })
            })
            .transpose()?)
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
            let version: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE provider = ?1 AND kind = ?2",
                    args![provider, kind],
                )?
                .get(0)?;
            tx.execute(
                "INSERT INTO policies (provider, kind, version, text, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![provider, kind, version, text, now],
            )?;
            Ok(version)
        })
    }

    fn reference_values(&self) -> Result<Vec<ReferenceValue>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT region, measurement, component, source, created FROM reference_values
             ORDER BY region, measurement",
            args![],
            |r| {
                Ok(ReferenceValue {
                    region: r.get(0)?,
                    measurement: r.get(1)?,
                    component: r.get(2)?,
                    source: r.get(3)?,
                    created: r.get(4)?,
                })
            },
        )?)
    }

    fn add_reference_value(
        &self,
        rv: &ReferenceValue,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.with_audit(audit, |tx| {
            tx.execute(
                "INSERT INTO reference_values (region, measurement, component, source, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (region, measurement) DO UPDATE SET component = excluded.component,
                   source = excluded.source, created = excluded.created",
                args![
                    rv.region.as_str(),
                    rv.measurement.as_str(),
                    rv.component.as_str(),
                    rv.source.as_str(),
                    rv.created
                ],
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
        let mut tx = conn.write()?;
        let n = tx.execute(
            "DELETE FROM reference_values WHERE region = ?1 AND measurement = ?2",
            args![region, measurement],
        )?;
        if n > 0 {
            raise_generation(&mut tx)?;
            append(&mut tx, &self.keys, audit)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        // Not a change: the generation stays (a refusal makes no replica reload).
        let mut conn = self.conn()?;
        let mut tx = conn.write()?;
        append(&mut tx, &self.keys, e)?;
        tx.commit()?;
        Ok(())
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

    fn generation(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()?
            .query_one("SELECT value FROM generation WHERE id = 1", args![])?
            .get(0)?)
    }

    fn audit_log(&self, provider: &str) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.conn()?.query_map(
            "SELECT seq, ts, provider, caller, op, subject, outcome, code FROM audit
             WHERE provider = ?1 ORDER BY seq",
            args![provider],
            |r| {
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
            },
        )?)
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

    /// Opens a store at `location` (applying what is pending) and compares the schema
    /// with `schema/<engine>.txt` (`OPENCVM_BLESS=1` rewrites it).
    fn check_schema(engine: &str, location: &Location) {
        drop(SqlStore::open(location, keys()).unwrap());
        let dump = sqldb::schema::dump(&mut Conn::open(location).unwrap()).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(format!("{engine}.txt"));
        if let Err(e) = sqldb::schema::matches_checked_in(&dump, &path) {
            panic!("{e}");
        }
    }

    #[test]
    fn the_schema_is_the_checked_in_one_on_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        check_schema("sqlite", &Location::sqlite(&dir.path().join("a.db")));
        if let Some(pg) = sqldb::scratch::postgres() {
            check_schema("postgres", &pg.location);
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
                migrate_to(&mut c, &MIGRATIONS[..k], 1).unwrap();
                drop(c);
                check_schema(engine, location);
            }
        }
    }

    /// Schema 1 as the service created it before migrations were numbered (frozen).
    const LEGACY_SCHEMA_1: &str = "
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

    /// Schema 1 → 2 as the service applied it then (frozen), with the audit tables
    /// `audit::sqlite` created: untyped columns, SQLite triggers.
    const LEGACY_MIGRATE_2: &str = "
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
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts, provider, caller, op, subject, outcome, code, prev BLOB, link BLOB);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  seq INTEGER PRIMARY KEY, link BLOB NOT NULL, ts INTEGER NOT NULL, signature TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_append_only_update BEFORE UPDATE ON audit_checkpoints
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_append_only_delete BEFORE DELETE ON audit_checkpoints
  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

    #[test]
    fn databases_from_before_numbered_migrations_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let dump = |l: &Location| sqldb::schema::dump(&mut Conn::open(l).unwrap()).unwrap();
        let fresh = Location::sqlite(&dir.path().join("fresh.db"));
        drop(SqlStore::open(&fresh, keys()).unwrap());
        for (version, ddl) in [
            (1, LEGACY_SCHEMA_1.to_string()),
            (2, format!("{LEGACY_SCHEMA_1}{LEGACY_MIGRATE_2}")),
        ] {
            let old = Location::sqlite(&dir.path().join(format!("v{version}.db")));
            {
                let mut c = Conn::open(&old).unwrap();
                c.batch(&ddl).unwrap();
                c.batch(
                    "INSERT INTO providers VALUES ('p', x'00', '{}');
                     INSERT INTO signing_keys (provider, alg, sealed_pkcs8, cert_der, created)
                       VALUES ('p', 'RS256', x'01', x'02', 1);",
                )
                .unwrap();
            }
            let s = SqlStore::open(&old, keys()).unwrap();
            let k = s.signing_keys("p").unwrap();
            assert_eq!((k.len(), k[0].retire_after, k[0].revoked), (1, None, false));
            s.audit(&entry("after")).unwrap();
            assert_eq!(s.generation().unwrap(), 0);
            drop(s);
            assert_eq!(verify_audit(&old, &keys(), &[]).unwrap().entries, 1);
            let (old_dump, fresh_dump) = (dump(&old), dump(&fresh));
            if version == 1 {
                assert_eq!(old_dump, fresh_dump);
            } else {
                // A version 2 database keeps its audit table's untyped column
                // declarations (SQLite stores the same values either way); the rest is
                // the fresh schema.
                let without_audit = |d: &str| -> Vec<String> {
                    let mut in_audit = false;
                    d.lines()
                        .filter(|l| {
                            if !l.starts_with("  ") {
                                in_audit = *l == "table audit";
                            }
                            !in_audit
                        })
                        .map(|l| l.to_string())
                        .collect()
                };
                assert_ne!(old_dump, fresh_dump);
                assert_eq!(without_audit(&old_dump), without_audit(&fresh_dump));
            }
        }
    }

    #[test]
    fn rotation_retires_and_revocation_is_immediate_each_audited() {
        let dir = tempfile::tempdir().unwrap();
        rotation_and_revocation(&Location::sqlite(&dir.path().join("a.db")));
        if let Some(pg) = sqldb::scratch::postgres() {
            rotation_and_revocation(&pg.location);
        }
    }

    fn rotation_and_revocation(location: &Location) {
        let s = SqlStore::open(location, keys()).unwrap();
        let g0 = s.generation().unwrap();
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
        // Reference values replace one of the same region and measurement.
        let rv = |source: &str| ReferenceValue {
            region: "r".into(),
            measurement: "ab".repeat(48),
            component: "ovmf".into(),
            source: source.into(),
            created: 7,
        };
        s.add_reference_value(&rv("first"), &entry("reference_value_add"))
            .unwrap();
        s.add_reference_value(&rv("second"), &entry("reference_value_add"))
            .unwrap();
        assert_eq!(s.reference_values().unwrap(), [rv("second")]);
        assert!(
            s.remove_reference_value("r", &"ab".repeat(48), &entry("reference_value_remove"))
                .unwrap()
        );
        assert!(s.reference_values().unwrap().is_empty());
        assert_eq!(
            s.put_policy("p", "SevSnpVm", "package x", 9, &entry("policy_set"))
                .unwrap(),
            1
        );
        assert_eq!(
            s.put_policy("p", "SevSnpVm", "package y", 9, &entry("policy_set"))
                .unwrap(),
            2
        );
        assert_eq!(
            s.latest_policy("p", "SevSnpVm").unwrap().unwrap().text,
            "package y"
        );
        // Every change raised the generation (replicas reload); a refusal, audited on
        // its own, did not.
        let g = s.generation().unwrap();
        assert_eq!(g - g0, 9);
        s.audit(&entry("denied")).unwrap();
        assert_eq!(s.generation().unwrap(), g);
        // Used nonces: once per provider, bounded, expired ones forgotten.
        use crate::nonce::{SharedNonces, UseOutcome};
        let used =
            |p: &str, n: &[u8], expires: i64, now: i64| s.use_nonce(p, n, expires, now, 2).unwrap();
        assert_eq!(used("p", b"n1", 100, 10), UseOutcome::Fresh);
        assert_eq!(used("p", b"n1", 100, 11), UseOutcome::Replayed);
        assert_eq!(used("q", b"n1", 100, 11), UseOutcome::Fresh);
        assert_eq!(used("p", b"n2", 100, 12), UseOutcome::Fresh);
        assert_eq!(used("p", b"n3", 100, 13), UseOutcome::Full);
        assert!(!s.nonce_used("p", b"n3").unwrap());
        // Expired, but within the grace for replicas' clocks: still remembered.
        let grace = NONCE_EXPIRY_GRACE_SECS;
        assert_eq!(used("p", b"n1", 100, 100 + grace - 1), UseOutcome::Replayed);
        assert_eq!(used("p", b"n3", 1000, 100 + grace), UseOutcome::Fresh);
        assert!(!s.nonce_used("p", b"n1").unwrap(), "expired, forgotten");
        drop(s);
        assert_eq!(verify_audit(location, &keys(), &[]).unwrap().entries, 10);
    }
}
