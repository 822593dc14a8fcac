//! Scratch PostgreSQL databases for tests: each test gets a database of its own on
//! the server named by [`ENV`] (a role that may create databases), dropped when the
//! [`ScratchDb`] is. The README's test command (`scripts/test`) starts a server on
//! loopback and sets [`ENV`]; without it a test that needs PostgreSQL fails, unless
//! [`SKIP_ENV`] is set to `1`, which skips it and says so.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Location};

/// The variable naming the test server: `postgres://user:password@127.0.0.1:5432/db`.
pub const ENV: &str = "OPENCVM_TEST_POSTGRES";
/// Set to `1` to skip PostgreSQL tests on a machine without a server.
pub const SKIP_ENV: &str = "OPENCVM_SKIP_POSTGRES";
/// The variable naming the PEM file of the CA that signed the test server's
/// certificate (for 127.0.0.1), for TLS tests.
pub const CA_ENV: &str = "OPENCVM_TEST_POSTGRES_CA";

/// The test server's CA file, or `None` (after saying so) when [`SKIP_ENV`] is `1`
/// and [`CA_ENV`] is unset.
///
/// # Panics
/// When neither is set.
#[allow(clippy::print_stderr, clippy::panic)]
pub fn postgres_ca() -> Option<std::path::PathBuf> {
    match std::env::var(CA_ENV) {
        Ok(p) => Some(p.into()),
        Err(_) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no PostgreSQL test CA ({CA_ENV} unset, {SKIP_ENV}=1)");
            None
        }
        Err(_) => panic!(
            "this test needs the test server's CA: set {CA_ENV} (scripts/test does), or \
             {SKIP_ENV}=1 to skip it"
        ),
    }
}

/// A database that exists until this is dropped.
pub struct ScratchDb {
    admin: String,
    name: String,
    /// Where it is.
    pub location: Location,
    /// Its URL (with the password), for a server process's `--database`.
    pub url: String,
}

impl std::fmt::Debug for ScratchDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDb")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    format!("{scheme}://{authority}/{name}{query}")
}

/// A fresh database, or `None` (after saying so) when [`SKIP_ENV`] is `1` and [`ENV`]
/// is unset.
///
/// # Panics
/// When neither is set, or the server refuses: a test needing PostgreSQL must not pass
/// without it.
#[allow(clippy::print_stderr, clippy::panic)]
pub fn postgres() -> Option<ScratchDb> {
    let Ok(admin) = std::env::var(ENV) else {
        if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            eprintln!("SKIPPED: no PostgreSQL ({ENV} unset, {SKIP_ENV}=1)");
            return None;
        }
        panic!(
            "this test needs PostgreSQL: set {ENV} (scripts/test starts a server on \
             loopback and sets it), or {SKIP_ENV}=1 to skip it"
        );
    };
    match create(&admin) {
        Ok(db) => Some(db),
        Err(e) => panic!(
            "creating a scratch database on {}: {e}",
            crate::redact(&admin)
        ),
    }
}

fn create(admin: &str) -> Result<ScratchDb, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "opencvm_test_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = admin
        .parse::<postgres::Config>()?
        .connect(postgres::NoTls)?;
    client.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let url = with_database(admin, &name);
    Ok(ScratchDb {
        admin: admin.to_string(),
        name,
        location: Location::parse(&url)?,
        url,
    })
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self
            .admin
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_is_the_path() {
        assert_eq!(
            super::with_database(
                "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
                "x"
            ),
            "postgres://u:p@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://u@localhost", "x"),
            "postgres://u@localhost/x"
        );
    }
}
