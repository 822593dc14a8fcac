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

/// The location of an existing database, for commands that only read one: a missing
/// SQLite file is an error, not a new empty database.
pub(crate) fn existing(arg: Option<&str>, state: &Path, default_file: &str) -> Result<Location> {
    let l = location(arg, state, default_file)?;
    if let Location::Sqlite(p) = &l {
        anyhow::ensure!(p.exists(), "{} does not exist", p.display());
    }
    Ok(l)
}
