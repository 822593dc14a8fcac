//! `--database`: where a service keeps its state, a SQLite file (the default, in the
//! state directory) or a PostgreSQL database that replicas share.

use std::path::Path;

use anyhow::{Context, Result};
use sqldb::Location;

/// The location `--database` names, or `STATE/default_file`. The error never shows a
/// password.
pub(crate) fn location(arg: Option<&str>, state: &Path, default_file: &str) -> Result<Location> {
    match arg {
        Some(s) => Location::parse(s).context("--database"),
        None => Ok(Location::sqlite(&state.join(default_file))),
    }
}

/// [`location`] for a service, which warns when it would reach a database on another
/// host without TLS.
pub(crate) fn for_service(arg: Option<&str>, state: &Path, default_file: &str) -> Result<Location> {
    let l = location(arg, state, default_file)?;
    if let Some(host) = l.plaintext_remote_host() {
        tracing::warn!(
            host,
            "the database on another host is reached without TLS: add \
             ?sslmode=require&sslrootcert=CA.pem to --database"
        );
    }
    Ok(l)
}

/// The location of an existing database, for commands that only read one: a missing
/// SQLite file is an error, not a new empty database.
pub(crate) fn existing(arg: Option<&str>, state: &Path, default_file: &str) -> Result<Location> {
    let l = location(arg, state, default_file)?;
    if let Location::Sqlite(p) = &l {
        anyhow::ensure!(p.exists(), "{} does not exist", p.display());
    }
    Ok(l)
}
