//! An audit table in SQLite: `seq`, the caller's columns, `prev` and `link`, beside a
//! `<table>_checkpoints` table, both append-only by triggers (a first line; the chain
//! is what holds when they are dropped).
//!
//! Column values are linked canonically: an integer as 8 bytes big-endian, text and
//! blobs as their bytes, NULL as absent.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params_from_iter};

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

/// Why a log could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The database could not be read.
    #[error("reading the audit log: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The log was changed.
    #[error("tampered: {0}")]
    Tampered(#[from] Tampered),
}

fn canonical(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_be_bytes().to_vec()),
        Value::Real(f) => Some(f.to_be_bytes().to_vec()),
        Value::Text(t) => Some(t.as_bytes().to_vec()),
        Value::Blob(b) => Some(b.clone()),
    }
}

impl Table<'_> {
    /// The statements that create the table, its checkpoints and their triggers (for a
    /// new database or a migration).
    pub fn create_sql(&self) -> String {
        let n = self.name;
        format!(
            "CREATE TABLE IF NOT EXISTS {n} (seq INTEGER PRIMARY KEY, {}, prev BLOB, link BLOB);
             CREATE TABLE IF NOT EXISTS {n}_checkpoints (
               seq INTEGER PRIMARY KEY, link BLOB NOT NULL, ts INTEGER NOT NULL, signature TEXT NOT NULL);
             {}",
            self.columns.join(", "),
            self.trigger_sql()
        )
    }

    /// The append-only triggers.
    pub fn trigger_sql(&self) -> String {
        let mut out = String::new();
        for t in [self.name.to_string(), format!("{}_checkpoints", self.name)] {
            for (what, verb) in [("update", "UPDATE"), ("delete", "DELETE")] {
                out.push_str(&format!(
                    "CREATE TRIGGER IF NOT EXISTS {t}_append_only_{what} BEFORE {verb} ON {t}
                       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
                ));
            }
        }
        out
    }

    /// Appends an entry with `values` (one per column) after the newest, linked to it,
    /// in `tx` (which must be `IMMEDIATE`: the head is read and extended under the write
    /// lock); signs a checkpoint every `checkpoint_every` entries. Returns its `seq`.
    pub fn append(
        &self,
        tx: &Transaction<'_>,
        keys: &Keys,
        ts: i64,
        values: &[Value],
    ) -> rusqlite::Result<i64> {
        let n = self.name;
        let head: Option<(i64, Option<Vec<u8>>)> = tx
            .query_row(
                &format!("SELECT seq, link FROM {n} ORDER BY seq DESC LIMIT 1"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (seq, prev) = match head {
            None => (1, GENESIS),
            Some((seq, link)) => (
                seq + 1,
                link.and_then(|l| <[u8; 32]>::try_from(l).ok())
                    .unwrap_or(GENESIS),
            ),
        };
        let fields: Vec<Option<Vec<u8>>> = values.iter().map(canonical).collect();
        let refs: Vec<Option<&[u8]>> = fields.iter().map(|f| f.as_deref()).collect();
        let link = keys.chain.link(&prev, seq, &refs);
        let placeholders: Vec<String> = (1..=values.len() + 3).map(|i| format!("?{i}")).collect();
        let mut all: Vec<Value> = vec![Value::Integer(seq)];
        all.extend(values.iter().cloned());
        all.push(Value::Blob(prev.to_vec()));
        all.push(Value::Blob(link.to_vec()));
        tx.execute(
            &format!(
                "INSERT INTO {n} (seq, {}, prev, link) VALUES ({})",
                self.columns.join(", "),
                placeholders.join(", ")
            ),
            params_from_iter(all),
        )?;
        if self.checkpoint_every > 0 && seq % self.checkpoint_every == 0 {
            let cp = keys
                .checkpoint
                .sign(seq, &link, ts)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute(
                &format!(
                    "INSERT INTO {n}_checkpoints (seq, link, ts, signature) VALUES (?1, ?2, ?3, ?4)"
                ),
                rusqlite::params![seq, link.to_vec(), cp.ts, cp.signature],
            )?;
        }
        Ok(seq)
    }

    /// Links entries written before the table had links (a migration), in order, in `tx`.
    pub fn link_unlinked(&self, tx: &Transaction<'_>, keys: &Keys) -> rusqlite::Result<()> {
        let n = self.name;
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {n}_append_only_update;"))?;
        let rows = self.rows(tx)?;
        let mut prev = GENESIS;
        for e in rows {
            let refs: Vec<Option<&[u8]>> = e.fields.iter().map(|f| f.as_deref()).collect();
            let link = keys.chain.link(&prev, e.seq, &refs);
            tx.execute(
                &format!("UPDATE {n} SET prev = ?2, link = ?3 WHERE seq = ?1"),
                rusqlite::params![e.seq, prev.to_vec(), link.to_vec()],
            )?;
            prev = link;
        }
        tx.execute_batch(&self.trigger_sql())?;
        Ok(())
    }

    fn rows(&self, conn: &Connection) -> rusqlite::Result<Vec<StoredEntry>> {
        let n = self.name;
        let cols = self.columns.len();
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, {}, prev, link FROM {n} ORDER BY seq",
            self.columns.join(", ")
        ))?;
        let rows = stmt.query_map([], |r| {
            let mut fields = Vec::with_capacity(cols);
            for i in 0..cols {
                fields.push(canonical(&r.get::<_, Value>(i + 1)?));
            }
            let prev: Option<Vec<u8>> = r.get(cols + 1)?;
            let link: Option<Vec<u8>> = r.get(cols + 2)?;
            Ok(StoredEntry {
                seq: r.get(0)?,
                fields,
                prev: prev.unwrap_or_default(),
                link: link.unwrap_or_default(),
            })
        })?;
        rows.collect()
    }

    /// Checks the log in `conn`: every link, every stored checkpoint, and each of
    /// `expect` (checkpoints kept elsewhere).
    pub fn verify(
        &self,
        conn: &Connection,
        keys: &Keys,
        expect: &[Checkpoint],
    ) -> Result<Intact, VerifyError> {
        let entries = self.rows(conn)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, link, ts, signature FROM {}_checkpoints ORDER BY seq",
            self.name
        ))?;
        let checkpoints = stmt
            .query_map([], |r| {
                let link: Vec<u8> = r.get(1)?;
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    link: hex::encode(link),
                    ts: r.get(2)?,
                    signature: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
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
        conn: &Connection,
        keys: &Keys,
        now: i64,
    ) -> Result<Option<Checkpoint>, VerifyError> {
        let intact = self.verify(conn, keys, &[])?;
        match intact.head {
            None => Ok(None),
            Some((seq, link)) => Ok(Some(keys.checkpoint.sign(seq, &link, now).map_err(
                |e| VerifyError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
            )?)),
        }
    }
}
