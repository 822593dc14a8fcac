//! The same statements on SQLite and on a real PostgreSQL server (scratch databases on
//! the server `OPENCVM_TEST_POSTGRES` names; see `sqldb::scratch`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqldb::migrate::{Migration, apply};
use sqldb::{Conn, Engine, Location, Queries, Tx, args};

/// Runs `f` on a fresh SQLite file and on a fresh PostgreSQL database.
fn on_both(f: impl Fn(&Location)) {
    let dir = tempfile::tempdir().unwrap();
    f(&Location::sqlite(&dir.path().join("t.db")));
    if let Some(pg) = sqldb::scratch::postgres() {
        f(&pg.location);
    }
}

const MIGRATIONS: [Migration<'static>; 2] = [
    Migration {
        version: 1,
        name: "items",
        sql: "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                                  body BLOB, n INTEGER NOT NULL DEFAULT 0);",
        postgres: None,
    },
    Migration {
        version: 2,
        name: "flag",
        sql: "ALTER TABLE items ADD COLUMN flag INTEGER NOT NULL DEFAULT 0;
              CREATE INDEX items_flag ON items(flag);",
        postgres: None,
    },
];

fn none(_: &mut Tx<'_>) -> Result<i64, sqldb::Error> {
    Ok(0)
}

#[test]
fn values_round_trip_and_constraints_are_named_alike() {
    on_both(|loc| {
        let mut c = Conn::open(loc).unwrap();
        apply(&mut c, "t", &MIGRATIONS, &none, &mut |_, _| Ok(()), 1).unwrap();
        let mut tx = c.write().unwrap();
        let id: i64 = tx
            .query_one(
                "INSERT INTO items (name, body, n, flag) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                args!["a", vec![0u8, 1, 255], i64::MIN, true],
            )
            .unwrap()
            .get(0)
            .unwrap();
        tx.commit().unwrap();
        let r = c
            .query_one(
                "SELECT name, body, n, flag, id FROM items WHERE id = ?1",
                args![id],
            )
            .unwrap();
        assert_eq!(r.get::<String>(0).unwrap(), "a");
        assert_eq!(r.get::<Vec<u8>>(1).unwrap(), [0, 1, 255]);
        assert_eq!(r.get::<i64>(2).unwrap(), i64::MIN);
        assert!(r.get::<bool>(3).unwrap());
        let dup = c
            .execute("INSERT INTO items (name) VALUES (?1)", args!["a"])
            .unwrap_err();
        assert!(dup.is_unique_violation(), "{dup}");
        let n = c
            .execute(
                "INSERT INTO items (name) VALUES (?1) ON CONFLICT DO NOTHING",
                args!["a"],
            )
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            c.query_one("SELECT body FROM items WHERE name = ?1", args!["none"])
                .unwrap_err()
                .to_string(),
            "no row"
        );
        // A dropped transaction rolls back.
        {
            let mut tx = c.write().unwrap();
            tx.execute("DELETE FROM items", args![]).unwrap();
        }
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM items", args![])
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 1);
    });
}

#[test]
fn writers_of_separate_connections_never_interleave() {
    on_both(|loc| {
        let mut c = Conn::open(loc).unwrap();
        apply(&mut c, "t", &MIGRATIONS, &none, &mut |_, _| Ok(()), 1).unwrap();
        c.execute("INSERT INTO items (name, n) VALUES ('counter', 0)", args![])
            .unwrap();
        // Read, then write what was read plus one: lost updates would show as a total
        // below 4 × 25.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut c = Conn::open(loc).unwrap();
                    for _ in 0..25 {
                        let mut tx = c.write().unwrap();
                        let n: i64 = tx
                            .query_one("SELECT n FROM items WHERE name = 'counter'", args![])
                            .unwrap()
                            .get(0)
                            .unwrap();
                        tx.execute(
                            "UPDATE items SET n = ?1 WHERE name = 'counter'",
                            args![n + 1],
                        )
                        .unwrap();
                        tx.commit().unwrap();
                    }
                });
            }
        });
        let n: i64 = c
            .query_one("SELECT n FROM items WHERE name = 'counter'", args![])
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 100);
    });
}

#[test]
fn a_migrated_schema_equals_a_fresh_one_and_migrations_run_once() {
    on_both(|loc| {
        let mut old = Conn::open(loc).unwrap();
        let a = apply(
            &mut old,
            "t",
            &MIGRATIONS[..1],
            &none,
            &mut |_, _| Ok(()),
            1,
        )
        .unwrap();
        assert_eq!(a.applied, [1]);
        old.execute("INSERT INTO items (name) VALUES ('kept')", args![])
            .unwrap();
        let a = apply(&mut old, "t", &MIGRATIONS, &none, &mut |_, _| Ok(()), 2).unwrap();
        assert_eq!((a.from, a.applied), (1, vec![2]));
        let migrated = sqldb::schema::dump(&mut old).unwrap();
        assert!(migrated.contains("flag"), "{migrated}");
        let kept: i64 = old
            .query_one("SELECT flag FROM items WHERE name = 'kept'", args![])
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(kept, 0);

        let dir = tempfile::tempdir().unwrap();
        let scratch;
        let fresh_loc = match loc.engine() {
            Engine::Sqlite => Location::sqlite(&dir.path().join("fresh.db")),
            Engine::Postgres => {
                scratch = sqldb::scratch::postgres().unwrap();
                scratch.location.clone()
            }
        };
        let mut fresh = Conn::open(&fresh_loc).unwrap();
        apply(&mut fresh, "t", &MIGRATIONS, &none, &mut |_, _| Ok(()), 3).unwrap();
        assert_eq!(sqldb::schema::dump(&mut fresh).unwrap(), migrated);
    });
}

#[test]
fn a_postgres_session_the_server_closed_is_replaced() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let mut c = Conn::open(&pg.location).unwrap();
    c.batch("CREATE TABLE t (x BIGINT)").unwrap();
    // Another session ends every other session of this database (a server restart or a
    // network cut, as the client sees it).
    let mut admin = Conn::open(&pg.location).unwrap();
    let ended: i64 = admin
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()) x",
            args![],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(ended, 1);
    // At most the first statement after it fails; the next one runs on a new session.
    let mut failures = 0;
    for i in 0..3i64 {
        match c.execute("INSERT INTO t VALUES (?1)", args![i]) {
            Ok(_) => {}
            Err(_) => failures += 1,
        }
    }
    assert!(failures <= 1, "{failures} failures");
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM t", args![])
        .unwrap()
        .get(0)
        .unwrap();
    // A failed insert may still have committed (the session ended after its commit,
    // before the answer): that is for the caller to find out, as here.
    assert!(
        (3 - failures..=3).contains(&n),
        "{n} rows, {failures} failures"
    );
}

#[test]
fn tls_to_postgres_verifies_the_server() {
    let (Some(pg), Some(ca)) = (sqldb::scratch::postgres(), sqldb::scratch::postgres_ca()) else {
        return;
    };
    let tls = |query: &str| Location::parse(&format!("{}?{query}", pg.url));
    let mut c = Conn::open(&tls(&format!("sslmode=require&sslrootcert={}", ca.display())).unwrap())
        .unwrap();
    let encrypted: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            args![],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert!(encrypted);
    // Without the CA that signed the server's certificate (the Mozilla roots instead):
    // refused, not connected without verification.
    let e = Conn::open(&tls("sslmode=require").unwrap()).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // Any other mode is plaintext, as the connection says.
    let mut plain = Conn::open(&tls("sslmode=prefer").unwrap()).unwrap();
    let encrypted: bool = plain
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            args![],
        )
        .unwrap()
        .get(0)
        .unwrap();
    assert!(!encrypted);
    // A CA file without TLS is a mistake, said at parse time.
    assert!(tls(&format!("sslrootcert={}", ca.display())).is_err());
}

#[test]
fn text_with_nul_is_refused_on_both_engines_alike() {
    on_both(|loc| {
        let mut c = Conn::open(loc).unwrap();
        c.batch("CREATE TABLE n (s TEXT)").unwrap();
        let e = c
            .execute("INSERT INTO n VALUES (?1)", args!["a\0b"])
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(e.is_data_error());
        // The session is fine afterwards.
        c.execute("INSERT INTO n VALUES (?1)", args!["ab"]).unwrap();
    });
}
