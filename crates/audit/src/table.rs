//! An audit table in a SQL database (SQLite or PostgreSQL, through `sqldb`): `seq`,
//! the caller's columns, `prev` and `link`, beside a `<table>_checkpoints` table, both
//! append-only by triggers (a first line; the chain is what holds when they are
//! dropped).
//!
//! Column values are linked canonically: an integer as 8 bytes big-endian, text and
//! byte strings as their bytes, NULL as absent.

use sqldb::{Engine, Queries, Tx, Value, args};

use crate::{Checkpoint, GENESIS, Intact, Keys, StoredEntry, Tampered};

/// An audit table's layout.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    /// The table's name.
    pub name: &'a str,
    /// Its columns besides `seq`, `prev` and `link`, in link order.
    pub columns: &'a [&'a str],
    /// Every how many entries a checkpoint is signed.
    pub checkpoint_every: i64,
}

/// Why a log could not be checked or extended.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The database could not be read or written.
    #[error("reading the audit log: {0}")]
    Database(#[from] sqldb::Error),
    /// The log was changed.
    #[error("tampered: {0}")]
    Tampered(#[from] Tampered),
    /// A checkpoint could not be signed.
    #[error("signing a checkpoint: {0}")]
    Sign(#[from] crate::AuditError),
}

fn canonical(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Int(i) => Some(i.to_be_bytes().to_vec()),
        Value::Text(t) => Some(t.as_bytes().to_vec()),
        Value::Blob(b) => Some(b.clone()),
    }
}

impl Table<'_> {
    /// Creates the append-only triggers on the table and its checkpoints (both must
    /// exist), in the engine's own syntax.
    pub fn protect(&self, q: &mut dyn Queries) -> Result<(), sqldb::Error> {
        let mut sql = String::new();
        let tables = [self.name.to_string(), format!("{}_checkpoints", self.name)];
        match q.engine() {
            Engine::Sqlite => {
                for t in &tables {
                    for (what, verb) in [("update", "UPDATE"), ("delete", "DELETE")] {
                        sql.push_str(&format!(
                            "CREATE TRIGGER IF NOT EXISTS {t}_append_only_{what} BEFORE {verb} ON {t}
                               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
                        ));
                    }
                }
            }
            Engine::Postgres => {
                sql.push_str(
                    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger
                       LANGUAGE plpgsql AS $$
                       BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;\n",
                );
                for t in &tables {
                    sql.push_str(&format!(
                        "CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}
                           FOR EACH ROW EXECUTE FUNCTION audit_append_only();
                         CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
                           FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();\n"
                    ));
                }
            }
        }
        q.batch(&sql)
    }

    fn unprotect_updates(&self, q: &mut dyn Queries) -> Result<(), sqldb::Error> {
        let n = self.name;
        q.batch(&match q.engine() {
            Engine::Sqlite => format!("DROP TRIGGER IF EXISTS {n}_append_only_update;"),
            Engine::Postgres => format!("DROP TRIGGER IF EXISTS {n}_append_only ON {n};"),
        })
    }

    /// Appends an entry with `values` (one per column) after the newest, linked to it,
    /// in `tx` (a write transaction: the head is read and extended under the writer
    /// lock); signs a checkpoint every `checkpoint_every` entries. Returns its `seq`.
    pub fn append(
        &self,
        tx: &mut Tx<'_>,
        keys: &Keys,
        ts: i64,
        values: &[Value],
    ) -> Result<i64, VerifyError> {
        let n = self.name;
        let head = tx.query_opt(
            &format!("SELECT seq, link FROM {n} ORDER BY seq DESC LIMIT 1"),
            args![],
        )?;
        let (seq, prev) = match head {
            None => (1, GENESIS),
            Some(r) => (
                r.get::<i64>(0)? + 1,
                r.get::<Option<Vec<u8>>>(1)?
                    .and_then(|l| <[u8; 32]>::try_from(l).ok())
                    .unwrap_or(GENESIS),
            ),
        };
        // A NUL character (from a request path, say) cannot be stored on every engine:
        // it is recorded as U+FFFD, so the entry is written rather than refused.
        let values: Vec<Value> = values
            .iter()
            .map(|v| match v {
                Value::Text(t) if t.contains('\0') => Value::Text(t.replace('\0', "\u{fffd}")),
                v => v.clone(),
            })
            .collect();
        let fields: Vec<Option<Vec<u8>>> = values.iter().map(canonical).collect();
        let refs: Vec<Option<&[u8]>> = fields.iter().map(|f| f.as_deref()).collect();
        let link = keys.chain.link(&prev, seq, &refs);
        let placeholders: Vec<String> = (1..=values.len() + 3).map(|i| format!("?{i}")).collect();
        let mut all: Vec<Value> = vec![Value::Int(seq)];
        all.extend(values);
        all.push(Value::Blob(prev.to_vec()));
        all.push(Value::Blob(link.to_vec()));
        tx.execute(
            &format!(
                "INSERT INTO {n} (seq, {}, prev, link) VALUES ({})",
                self.columns.join(", "),
                placeholders.join(", ")
            ),
            &all,
        )?;
        if self.checkpoint_every > 0 && seq % self.checkpoint_every == 0 {
            let cp = keys.checkpoint.sign(seq, &link, ts)?;
            tx.execute(
                &format!(
                    "INSERT INTO {n}_checkpoints (seq, link, ts, signature) VALUES (?1, ?2, ?3, ?4)"
                ),
                args![seq, link.to_vec(), cp.ts, cp.signature],
            )?;
        }
        Ok(seq)
    }

    /// Links entries written before the table had links (a migration), in order, in
    /// `tx`, then protects the table and its checkpoints.
    pub fn link_unlinked(&self, tx: &mut Tx<'_>, keys: &Keys) -> Result<(), sqldb::Error> {
        let n = self.name;
        self.unprotect_updates(tx)?;
        let rows = self.rows(tx)?;
        let mut prev = GENESIS;
        for e in rows {
            let refs: Vec<Option<&[u8]>> = e.fields.iter().map(|f| f.as_deref()).collect();
            let link = keys.chain.link(&prev, e.seq, &refs);
            tx.execute(
                &format!("UPDATE {n} SET prev = ?2, link = ?3 WHERE seq = ?1"),
                args![e.seq, prev.to_vec(), link.to_vec()],
            )?;
            prev = link;
        }
        self.protect(tx)
    }

    fn rows(&self, q: &mut dyn Queries) -> Result<Vec<StoredEntry>, sqldb::Error> {
        let n = self.name;
        let cols = self.columns.len();
        let rows = q.query(
            &format!(
                "SELECT seq, {}, prev, link FROM {n} ORDER BY seq",
                self.columns.join(", ")
            ),
            args![],
        )?;
        rows.into_iter()
            .map(|r| {
                let fields = r
                    .values()
                    .get(1..=cols)
                    .unwrap_or_default()
                    .iter()
                    .map(canonical)
                    .collect();
                Ok(StoredEntry {
                    seq: r.get(0)?,
                    fields,
                    prev: r.get::<Option<Vec<u8>>>(cols + 1)?.unwrap_or_default(),
                    link: r.get::<Option<Vec<u8>>>(cols + 2)?.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Checks the log `q` reads (give it a read transaction, for one snapshot): every
    /// link, every stored checkpoint, and each of `expect` (checkpoints kept
    /// elsewhere).
    pub fn verify(
        &self,
        q: &mut dyn Queries,
        keys: &Keys,
        expect: &[Checkpoint],
    ) -> Result<Intact, VerifyError> {
        let entries = self.rows(q)?;
        let checkpoints = q
            .query(
                &format!(
                    "SELECT seq, link, ts, signature FROM {}_checkpoints ORDER BY seq",
                    self.name
                ),
                args![],
            )?
            .into_iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    link: hex::encode(r.get::<Vec<u8>>(1)?),
                    ts: r.get(2)?,
                    signature: r.get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqldb::Error>>()?;
        Ok(crate::verify(
            &keys.chain,
            &keys.checkpoint.public_key(),
            entries,
            &checkpoints,
            expect,
        )?)
    }

    /// A signed checkpoint of the newest entry (after checking the whole log), or
    /// `None` for an empty log.
    pub fn checkpoint_head(
        &self,
        q: &mut dyn Queries,
        keys: &Keys,
        now: i64,
    ) -> Result<Option<Checkpoint>, VerifyError> {
        let intact = self.verify(q, keys, &[])?;
        match intact.head {
            None => Ok(None),
            Some((seq, link)) => Ok(Some(keys.checkpoint.sign(seq, &link, now)?)),
        }
    }
}
