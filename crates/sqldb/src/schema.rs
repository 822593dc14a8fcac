//! A database's schema as text, in a form two databases of one engine can be
//! compared by: tables with their columns in order (type, nullability, default, key),
//! indexes, constraints and triggers, each sorted by name. Bookkeeping
//! (`schema_migrations`' rows) is not part of it.

use crate::{Engine, Error, Queries, args};

/// The schema of the database `q` is connected to.
pub fn dump(q: &mut dyn Queries) -> Result<String, Error> {
    let mut out = String::new();
    match q.engine() {
        Engine::Sqlite => {
            let tables = q.query(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
                args![],
            )?;
            for t in tables {
                let name: String = t.get(0)?;
                out.push_str(&format!("table {name}\n"));
                for c in q.query(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)
                     ORDER BY cid",
                    args![name.as_str()],
                )? {
                    out.push_str(&format!(
                        "  {} {} notnull={} default={} pk={}\n",
                        c.get::<String>(0)?,
                        c.get::<String>(1)?,
                        c.get::<i64>(2)?,
                        c.get::<Option<String>>(3)?.unwrap_or_default(),
                        c.get::<i64>(4)?,
                    ));
                }
                for k in q.query(
                    "SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1)
                     ORDER BY id, seq",
                    args![name.as_str()],
                )? {
                    out.push_str(&format!(
                        "  foreign key {} -> {}({})\n",
                        k.get::<String>(1)?,
                        k.get::<String>(0)?,
                        k.get::<Option<String>>(2)?.unwrap_or_default(),
                    ));
                }
            }
            for r in q.query(
                "SELECT type, name, tbl_name, COALESCE(sql, '') FROM sqlite_master
                 WHERE type IN ('index', 'trigger') ORDER BY type, name",
                args![],
            )? {
                let sql: String = r.get(3)?;
                out.push_str(&format!(
                    "{} {} on {}: {}\n",
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    sql.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
        }
        Engine::Postgres => {
            let mut table = String::new();
            for c in q.query(
                "SELECT table_name::text, column_name::text, data_type::text,
                        is_nullable::text, COALESCE(column_default, '')::text,
                        is_identity::text
                 FROM information_schema.columns WHERE table_schema = current_schema()
                 ORDER BY table_name, ordinal_position",
                args![],
            )? {
                let t: String = c.get(0)?;
                if t != table {
                    out.push_str(&format!("table {t}\n"));
                    table = t;
                }
                out.push_str(&format!(
                    "  {} {} nullable={} default={} identity={}\n",
                    c.get::<String>(1)?,
                    c.get::<String>(2)?,
                    c.get::<String>(3)?,
                    c.get::<String>(4)?,
                    c.get::<String>(5)?,
                ));
            }
            for r in q.query(
                "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
                 ORDER BY 1, 2",
                args![],
            )? {
                out.push_str(&format!(
                    "constraint {} on {}: {}\n",
                    r.get::<String>(1)?,
                    r.get::<String>(0)?,
                    r.get::<String>(2)?
                ));
            }
            for r in q.query(
                "SELECT indexname::text, tablename::text, indexdef FROM pg_indexes
                 WHERE schemaname = current_schema() ORDER BY indexname",
                args![],
            )? {
                out.push_str(&format!(
                    "index {} on {}: {}\n",
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?
                ));
            }
            for r in q.query(
                "SELECT trigger_name::text, event_object_table::text,
                        string_agg(event_manipulation::text, ',' ORDER BY event_manipulation),
                        action_timing::text
                 FROM information_schema.triggers WHERE trigger_schema = current_schema()
                 GROUP BY 1, 2, 4 ORDER BY 1, 2",
                args![],
            )? {
                out.push_str(&format!(
                    "trigger {} on {}: {} {}\n",
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(3)?,
                    r.get::<String>(2)?
                ));
            }
        }
    }
    Ok(out)
}

/// Whether `dump` equals the schema checked in at `path`; with `OPENCVM_BLESS=1` in
/// the environment, writes it there first (after a migration, to review the diff).
/// The error says what to do.
pub fn matches_checked_in(dump: &str, path: &std::path::Path) -> Result<(), String> {
    if std::env::var("OPENCVM_BLESS").as_deref() == Ok("1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, dump).map_err(|e| e.to_string())?;
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    if want == dump {
        Ok(())
    } else {
        Err(format!(
            "the schema differs from {} (a migration changed it: run the test with \
             OPENCVM_BLESS=1 and review the diff):\n{dump}",
            path.display()
        ))
    }
}
