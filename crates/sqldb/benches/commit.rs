//! What one durable write costs on each engine: a write transaction (the writer lock,
//! one insert, commit) as the key vault's audit writer makes one per batch. SQLite:
//! WAL, `synchronous = FULL` (an fsync per commit). PostgreSQL: the server named by
//! `OPENCVM_TEST_POSTGRES` (a scratch database), `synchronous_commit` as the server has
//! it (on by default: the commit waits for its WAL flush), over loopback.
//!
//!     OPENCVM_TEST_POSTGRES=$(scripts/test-postgres) cargo bench -p sqldb --bench commit
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use criterion::{Criterion, criterion_group, criterion_main};
use sqldb::{Conn, Location, Queries, args};

fn one_commit(c: &mut Conn, i: &mut i64) {
    *i += 1;
    let mut tx = c.write().expect("begin");
    tx.execute(
        "INSERT INTO t (n, s) VALUES (?1, ?2)",
        args![*i, "an audit entry's worth"],
    )
    .expect("insert");
    tx.commit().expect("commit");
}

fn bench(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("durable write transaction");
    g.sample_size(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lite = Conn::open(&Location::sqlite(&dir.path().join("b.db"))).expect("sqlite");
    lite.batch("CREATE TABLE t (n INTEGER, s TEXT)")
        .expect("schema");
    let mut i = 0;
    g.bench_function("sqlite", |b| b.iter(|| one_commit(&mut lite, &mut i)));
    // The PostgreSQL half needs a server; without one it says so and is left out.
    match std::env::var(sqldb::scratch::ENV) {
        Ok(_) => {
            let pg = sqldb::scratch::postgres().expect("scratch database");
            let mut c = Conn::open(&pg.location).expect("postgres");
            c.batch("CREATE TABLE t (n BIGINT, s TEXT)")
                .expect("schema");
            g.bench_function("postgres", |b| b.iter(|| one_commit(&mut c, &mut i)));
        }
        Err(_) => println!("postgres: not measured ({} is unset)", sqldb::scratch::ENV),
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
