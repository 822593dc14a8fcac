//! One SQL database for every service store: SQLite (the embedded default, one file,
//! WAL) or PostgreSQL (fleets: several replicas on one database).
//!
//! Stores write SQL once, in the subset both engines read (`?1`-style parameters,
//! `ON CONFLICT`, `RETURNING`, integers, text and byte strings), and pass and read
//! [`Value`]s, so the store code has one path for both engines. What must differ is
//! chosen by [`Queries::engine`].
//!
//! Writes have one rule on both engines: a write transaction ([`Conn::write`]) holds
//! the database's one writer lock from its first statement (SQLite `BEGIN IMMEDIATE`;
//! on PostgreSQL a transaction-scoped advisory lock), so a transaction that reads
//! before it writes sees every earlier commit of every replica and cannot interleave
//! with another writer. That is the guarantee the stores were written against on
//! SQLite; on PostgreSQL it holds across processes.
//!
//! Schemas evolve by numbered [`migrate::Migration`]s applied to both engines and
//! recorded in `schema_migrations`; [`schema::dump`] prints a schema in a form two
//! databases can be compared by.

#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::types::Type;

pub mod migrate;
pub mod schema;
#[cfg(feature = "scratch")]
pub mod scratch;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) reported an error.
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A column held another type than the store expected.
    #[error("column {index}: expected {expected}, found {found}")]
    Type {
        /// Column index.
        index: usize,
        /// What the store asked for.
        expected: &'static str,
        /// What the row held.
        found: &'static str,
    },
    /// The database could not be reached a moment ago; the next try is after a short
    /// pause.
    #[error("the database is unavailable (reconnecting)")]
    Unavailable,
    /// A query that must return a row returned none.
    #[error("no row")]
    NoRow,
    /// The database location is not usable.
    #[error("database location: {0}")]
    Location(String),
    /// The database belongs to another service (one database per service).
    #[error(
        "the database holds {found}'s schema, not {expected}'s (give each service its own database)"
    )]
    OtherComponent {
        /// Whose it is.
        found: String,
        /// Whose it was expected to be.
        expected: String,
    },
    /// The database was migrated by a newer release than this one.
    #[error("the database is at schema version {found}, newer than this release's {known}")]
    NewerSchema {
        /// The database's version.
        found: i64,
        /// The newest version this release knows.
        known: i64,
    },
}

/// PostgreSQL's own message (with its SQLSTATE) when the server sent one; otherwise
/// the client's, with its causes (a TLS handshake says why it failed).
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut out = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                cause = c.source();
            }
            out
        }
    }
}

impl Error {
    /// Whether the statement's own data was refused (a type, a value, a constraint):
    /// another statement on the same session can still succeed. Not for errors of the
    /// session, the lock or the server.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Type { .. } => true,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TypeMismatch
                    | rusqlite::ErrorCode::TooBig
            ),
            Error::Postgres(e) => e
                .as_db_error()
                .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23")),
            _ => false,
        }
    }

    /// Whether the statement broke a primary-key or unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            ),
            Error::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// Which engine a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (embedded, one file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Where a database is: a SQLite file or a PostgreSQL URL. `Debug` and `Display` never
/// show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/database`).
    Postgres(PgUrl),
}

/// A PostgreSQL connection URL, checked when parsed.
///
/// `sslmode=require` connects over TLS and verifies the server: its certificate must
/// chain to a CA of `sslrootcert=FILE` (PEM; without it, to the Mozilla roots) and name
/// the host. That is libpq's `verify-full`, stricter than libpq's `require`; there is
/// no TLS without verification. Any other `sslmode` connects without TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL as given.
    url: String,
    /// The URL the driver reads (`sslrootcert` taken out).
    driver_url: String,
    /// `sslrootcert`.
    ca: Option<PathBuf>,
}

impl PgUrl {
    /// Parses and checks a `postgres://` URL.
    fn parse(s: &str) -> Result<PgUrl, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::Location(format!("{}: {e}", redact(s)));
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let mut ca = None;
        let mut rest = Vec::new();
        for p in query.split('&').filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some(("sslrootcert", path)) => ca = Some(PathBuf::from(percent_decode(path))),
                _ => rest.push(p),
            }
        }
        let driver_url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let cfg: postgres::Config = driver_url.parse().map_err(|e| bad(&e))?;
        if ca.is_some() && cfg.get_ssl_mode() != postgres::config::SslMode::Require {
            return Err(bad(&"sslrootcert needs sslmode=require"));
        }
        Ok(PgUrl {
            url: s.to_string(),
            driver_url,
            ca,
        })
    }

    /// The URL without its password.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// `%XX` escapes decoded (as the driver decodes its own parameters); a malformed escape
/// is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The TLS connector for `sslmode=require`: our one crypto backend, the CAs of `ca`
/// (or the Mozilla roots), host names checked.
fn pg_tls(ca: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Location(format!("sslrootcert {}: {e}", path.display()))
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Location(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A URL without its password: `scheme://user:***@host/...`, with the value of a
/// `password=` query parameter replaced too. The user information is taken to end at
/// the *last* `@`, so a password holding `/` or `@` is hidden whichever way a parser
/// splits it.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The user information ends at the last `@` anywhere (a password may hold `/`, `?`
    // or `@`); hiding too much of a URL is harmless.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo.split(':').next().unwrap_or_default()), rest),
        None => (None, rest),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(user) = user {
        out.push_str(&format!("{user}:***@"));
    }
    out.push_str(rest);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => f.write_str(&u.redacted()),
        }
    }
}

impl Location {
    /// `postgres://…` or `postgresql://…` is a PostgreSQL URL (checked now); anything
    /// else is a SQLite file path.
    pub fn parse(s: &str) -> Result<Location, Error> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Location::Postgres(PgUrl::parse(s)?))
        } else if let Some((scheme, _)) = s.split_once("://") {
            // Not a file path: a mistyped URL must not become a local SQLite file.
            Err(Error::Location(format!(
                "unsupported scheme {scheme:?} (a PostgreSQL URL starts with postgres://)"
            )))
        } else if s.is_empty() {
            Err(Error::Location("empty".into()))
        } else {
            Ok(Location::Sqlite(PathBuf::from(s)))
        }
    }

    /// The host, when this is a PostgreSQL database on another host reached without
    /// TLS (not loopback, not a Unix socket, no `sslmode=require`): worth a warning.
    pub fn plaintext_remote_host(&self) -> Option<String> {
        let Location::Postgres(url) = self else {
            return None;
        };
        let cfg: postgres::Config = url.driver_url.parse().ok()?;
        if cfg.get_ssl_mode() == postgres::config::SslMode::Require {
            return None;
        }
        cfg.get_hosts().iter().find_map(|h| match h {
            postgres::config::Host::Tcp(host) => {
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                (!loopback).then(|| host.clone())
            }
            postgres::config::Host::Unix(_) => None,
        })
    }

    /// A SQLite file.
    pub fn sqlite(path: &Path) -> Location {
        Location::Sqlite(path.to_path_buf())
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        match self {
            Location::Sqlite(_) => Engine::Sqlite,
            Location::Postgres(_) => Engine::Postgres,
        }
    }
}

/// A value passed to or read from a statement: the four kinds both engines store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (`INTEGER` in SQLite, `BIGINT` in PostgreSQL; also booleans,
    /// stored as 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
    /// A byte string (`BLOB` / `BYTEA`).
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Self {
        Value::Blob(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Statement arguments: `args![a, b, c]` is `&[Value::from(a), …]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[$crate::Value] };
    ($($x:expr),+ $(,)?) => { &[$($crate::Value::from($x)),+] as &[$crate::Value] };
}

/// A value a column can be read as.
pub trait FromValue: Sized {
    /// What it is called in errors.
    const NAME: &'static str;
    /// Converts, or `None` if `v` is another kind.
    fn from_value(v: Value) -> Option<Self>;
}

impl FromValue for i64 {
    const NAME: &'static str = "integer";
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}
impl FromValue for bool {
    const NAME: &'static str = "boolean";
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i != 0),
            _ => None,
        }
    }
}
impl FromValue for String {
    const NAME: &'static str = "text";
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    const NAME: &'static str = "bytes";
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}
impl FromValue for Value {
    const NAME: &'static str = "value";
    fn from_value(v: Value) -> Option<Self> {
        Some(v)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `index` as a `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, Error> {
        let v = self.0.get(index).cloned().ok_or(Error::Type {
            index,
            expected: T::NAME,
            found: "no such column",
        })?;
        let found = v.kind();
        T::from_value(v).ok_or(Error::Type {
            index,
            expected: T::NAME,
            found,
        })
    }

    /// The row's values.
    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

// --- SQLite ------------------------------------------------------------------------

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn lite_value(v: rusqlite::types::ValueRef<'_>, index: usize) -> Result<Value, Error> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|_| Error::Type {
                index,
                expected: "text",
                found: "invalid UTF-8",
            })?)
        }
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        // No schema here has a REAL column: one found was written behind the store's
        // back. It reads as its 8 bytes big-endian, so a store's typed read refuses it
        // and an audit chain check names the entry (rather than failing to read).
        ValueRef::Real(f) => Value::Blob(f.to_be_bytes().to_vec()),
    })
}

/// Text with a NUL character is refused on both engines (PostgreSQL cannot store it;
/// SQLite could, and the engines must agree).
fn check_args(args: &[Value]) -> Result<(), Error> {
    for (index, a) in args.iter().enumerate() {
        if let Value::Text(t) = a
            && t.contains('\0')
        {
            return Err(Error::Type {
                index,
                expected: "text without NUL characters",
                found: "a NUL character",
            });
        }
    }
    Ok(())
}

fn lite_query(c: &rusqlite::Connection, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
    check_args(args)?;
    let mut stmt = c.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(lite_value(r.get_ref(i)?, i)?);
        }
        out.push(Row(values));
    }
    Ok(out)
}

fn lite_execute(c: &rusqlite::Connection, sql: &str, args: &[Value]) -> Result<u64, Error> {
    check_args(args)?;
    let mut stmt = c.prepare_cached(sql)?;
    let n = stmt.execute(rusqlite::params_from_iter(args.iter()))?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

// --- PostgreSQL --------------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Sync + Send>;

const PG_TYPES: [Type; 8] = [
    Type::INT8,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::TEXT,
    Type::VARCHAR,
    Type::NAME,
    Type::BYTEA,
];

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, BoxError> {
        let mismatch = || -> BoxError {
            format!("a {} value for a parameter of type {ty}", self.kind()).into()
        };
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else {
                    Err(mismatch())
                }
            }
            Value::Text(s) if [Type::TEXT, Type::VARCHAR, Type::NAME].contains(ty) => {
                s.as_str().to_sql(ty, out)
            }
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Text(_) | Value::Blob(_) => Err(mismatch()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        PG_TYPES.contains(ty)
    }

    postgres::types::to_sql_checked!();
}

impl<'a> postgres::types::FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(if *ty == Type::INT8 {
            Value::Int(i64::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::Int(i32::from_sql(ty, raw)?.into())
        } else if *ty == Type::INT2 {
            Value::Int(i16::from_sql(ty, raw)?.into())
        } else if *ty == Type::BOOL {
            Value::Int(bool::from_sql(ty, raw)?.into())
        } else if *ty == Type::BYTEA {
            Value::Blob(raw.to_vec())
        } else {
            Value::Text(String::from_sql(ty, raw)?)
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        PG_TYPES.contains(ty)
    }
}

/// Runs `f`, which blocks on PostgreSQL, where blocking is allowed. The `postgres`
/// client drives its connection on a runtime of its own, which cannot start on a
/// thread that is driving async tasks: on a multi-threaded Tokio runtime's worker `f`
/// runs in `block_in_place` (the worker's other tasks move elsewhere meanwhile); on a
/// current-thread runtime, on a scoped thread; elsewhere, directly.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

/// Prepared statements of one PostgreSQL session, by SQL text.
/// What a PostgreSQL session keeps besides its client: its prepared statements, and
/// whether it failed in a way that ends the session (replaced before the next use).
#[derive(Default)]
struct StatementCache {
    statements: HashMap<String, postgres::Statement>,
    broken: bool,
}

impl StatementCache {
    fn clear(&mut self) {
        self.statements.clear();
    }

    /// Notes whether `r` failed in a way that ends the session: the connection closed,
    /// an I/O or protocol error, or a FATAL or PANIC from the server (it was ended, or
    /// is shutting down).
    fn watch<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Postgres(e)) = &r {
            let fatal = e.as_db_error().is_some_and(|db| {
                matches!(
                    db.parsed_severity(),
                    Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic)
                )
            });
            let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
            if e.is_closed() || fatal || io {
                self.broken = true;
            }
        }
        r
    }
}

/// The most statements kept prepared per session.
const MAX_CACHED_STATEMENTS: usize = 256;

/// Each character of `sql` with whether it is code: not inside a quoted string, a
/// quoted identifier or a `--` comment (quotes and comment text are not code).
pub(crate) fn code_chars(sql: &str) -> Vec<(char, bool)> {
    let mut out = Vec::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if comment {
            comment = c != '\n';
        } else if quote.is_none() && c == '-' && chars.peek() == Some(&'-') {
            comment = true;
        } else {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, _) => {
                    out.push((c, true));
                    continue;
                }
                _ => {}
            }
        }
        out.push((c, false));
    }
    out
}

/// `?N` parameters as PostgreSQL's `$N` (in code only, see [`code_chars`]).
fn dollar_params(sql: &str) -> String {
    code_chars(sql)
        .into_iter()
        .map(|(c, code)| if code && c == '?' { '$' } else { c })
        .collect()
}

fn pg_statement<C: postgres::GenericClient>(
    c: &mut C,
    cache: &mut StatementCache,
    sql: &str,
) -> Result<postgres::Statement, Error> {
    if let Some(s) = cache.statements.get(sql) {
        return Ok(s.clone());
    }
    let s = c.prepare(&dollar_params(sql))?;
    if cache.statements.len() >= MAX_CACHED_STATEMENTS {
        cache.clear();
    }
    cache.statements.insert(sql.to_string(), s.clone());
    Ok(s)
}

fn pg_args(args: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_query<C: postgres::GenericClient + Send>(
    c: &mut C,
    cache: &mut StatementCache,
    sql: &str,
    args: &[Value],
) -> Result<Vec<Row>, Error> {
    check_args(args)?;
    let r = off_runtime(|| {
        let stmt = pg_statement(c, cache, sql)?;
        let rows = c.query(&stmt, &pg_args(args))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Value>(i).map_err(Error::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    });
    cache.watch(r)
}

fn pg_execute<C: postgres::GenericClient + Send>(
    c: &mut C,
    cache: &mut StatementCache,
    sql: &str,
    args: &[Value],
) -> Result<u64, Error> {
    check_args(args)?;
    let r = off_runtime(|| {
        let stmt = pg_statement(c, cache, sql)?;
        Ok(c.execute(&stmt, &pg_args(args))?)
    });
    cache.watch(r)
}

fn pg_batch<C: postgres::GenericClient + Send>(
    c: &mut C,
    cache: &mut StatementCache,
    sql: &str,
) -> Result<(), Error> {
    let r = off_runtime(|| Ok(c.batch_execute(sql)?));
    cache.watch(r)
}

/// The advisory lock every write transaction of a PostgreSQL database takes (advisory
/// locks are per database): "opencvm" in ASCII.
const WRITER_LOCK: i64 = 0x006f_7065_6e63_766d;

// --- Connections and transactions ----------------------------------------------------

/// Statements, on a connection or in a transaction.
pub trait Queries {
    /// The engine.
    fn engine(&self) -> Engine;
    /// Runs a statement that returns no rows; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Error>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error>;
    /// Runs statements separated by `;`, without parameters.
    fn batch(&mut self, sql: &str) -> Result<(), Error>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Every row, each converted by `f`.
    fn query_map<T>(
        &mut self,
        sql: &str,
        args: &[Value],
        f: impl Fn(&Row) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error>
    where
        Self: Sized,
    {
        self.query(sql, args)?.iter().map(f).collect()
    }

    /// The first row; [`Error::NoRow`] if there is none.
    fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, Error> {
        self.query_opt(sql, args)?.ok_or(Error::NoRow)
    }

    /// Whether a table of that name exists (in the current schema, on PostgreSQL).
    fn table_exists(&mut self, name: &str) -> Result<bool, Error> {
        let sql = match self.engine() {
            Engine::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            Engine::Postgres => {
                "SELECT 1 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = ?1"
            }
        };
        Ok(self.query_opt(sql, args![name])?.is_some())
    }
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres {
        client: Box<postgres::Client>,
        cache: StatementCache,
    },
    /// Only while dropping.
    Closed,
}

/// One connection to a database.
pub struct Conn {
    inner: Inner,
    location: Location,
    read_only: bool,
    /// After a failed reconnection, none is tried before this (callers fail fast
    /// meanwhile instead of each waiting for a connect timeout).
    retry_after: Option<std::time::Instant>,
}

/// How long after a failed reconnection the next is tried.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(2);

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing a PostgreSQL session blocks on the client's runtime.
        if let Inner::Postgres { client, .. } = std::mem::replace(&mut self.inner, Inner::Closed) {
            off_runtime(move || drop(client));
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({:?})", self.engine())
    }
}

/// How long a connection waits for the writer lock or a PostgreSQL connection.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a PostgreSQL session may sit idle inside a transaction before the server
/// ends it (and releases its writer lock).
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

/// A new session. A SQLite file is created if missing (unless `read_only`) and set up
/// for durability: WAL, `synchronous = FULL` (a commit survives power loss), foreign
/// keys, `secure_delete` (deleted rows are zeroed), a busy timeout of [`WAIT`].
fn connect(location: &Location, read_only: bool) -> Result<Inner, Error> {
    match location {
        Location::Sqlite(path) if read_only => {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            conn.busy_timeout(WAIT)?;
            Ok(Inner::Sqlite(conn))
        }
        Location::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.pragma_update(None, "secure_delete", "ON")?;
            conn.busy_timeout(WAIT)?;
            Ok(Inner::Sqlite(conn))
        }
        Location::Postgres(url) => {
            let mut cfg: postgres::Config = url
                .driver_url
                .parse()
                .map_err(|e| Error::Location(format!("{}: {e}", url.redacted())))?;
            let tls = match cfg.get_ssl_mode() {
                postgres::config::SslMode::Require => Some(pg_tls(url.ca.as_deref())?),
                _ => {
                    cfg.ssl_mode(postgres::config::SslMode::Disable);
                    None
                }
            };
            if cfg.get_connect_timeout().is_none() {
                cfg.connect_timeout(WAIT);
            }
            if cfg.get_application_name().is_none() {
                cfg.application_name("opencvm");
            }
            // A server that vanished without closing (a cut network, a paused VM) is
            // noticed within about a minute: keepalives after 30 s idle, 3 probes 10 s
            // apart, and at most 60 s for sent data to be acknowledged.
            cfg.keepalives(true);
            cfg.keepalives_idle(Duration::from_secs(30));
            cfg.keepalives_interval(Duration::from_secs(10));
            cfg.keepalives_retries(3);
            cfg.tcp_user_timeout(Duration::from_secs(60));
            let client = off_runtime(|| -> Result<_, Error> {
                let mut client = match tls {
                    Some(tls) => cfg.connect(tls)?,
                    None => cfg.connect(postgres::NoTls)?,
                };
                // A writer waits for the writer lock at most WAIT, then fails; a session
                // that stalls inside a transaction (holding the lock) is ended by the
                // server after IDLE_IN_TRANSACTION, so it cannot stop every replica's
                // writes.
                // The server probes this session's client the same way, so a vanished
                // replica's session (and its writer lock) ends within about a minute.
                let mut setup = format!(
                    "SET lock_timeout = '{}s'; SET idle_in_transaction_session_timeout = '{}s';
                     SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10;
                     SET tcp_keepalives_count = 3;",
                    WAIT.as_secs(),
                    IDLE_IN_TRANSACTION.as_secs()
                );
                if read_only {
                    setup.push_str("SET default_transaction_read_only = on;");
                }
                client.batch_execute(&setup)?;
                Ok(client)
            })?;
            Ok(Inner::Postgres {
                client: Box::new(client),
                cache: StatementCache::default(),
            })
        }
    }
}

impl Conn {
    /// Opens a connection. A SQLite file is created if missing and set up for
    /// durability: WAL, `synchronous = FULL` (a commit survives power loss), foreign
    /// keys, `secure_delete` (deleted rows are zeroed), a busy timeout of [`WAIT`].
    pub fn open(location: &Location) -> Result<Conn, Error> {
        Ok(Conn {
            inner: connect(location, false)?,
            location: location.clone(),
            read_only: false,
            retry_after: None,
        })
    }

    /// Opens a read-only connection to an existing SQLite file; a PostgreSQL
    /// connection whose transactions are read-only.
    pub fn open_read_only(location: &Location) -> Result<Conn, Error> {
        Ok(Conn {
            inner: connect(location, true)?,
            location: location.clone(),
            read_only: true,
            retry_after: None,
        })
    }

    /// Replaces a PostgreSQL session that the server or the network closed by a new
    /// one (its prepared statements are made again). A session shows as closed once a
    /// statement on it failed: after an outage the first statement fails, the next one
    /// reconnects. Nothing is retried here: whether a failed write happened is for the
    /// caller to find out.
    fn reopen_if_closed(&mut self) -> Result<(), Error> {
        if let Inner::Postgres { client, cache } = &self.inner
            && (cache.broken || client.is_closed())
        {
            if self
                .retry_after
                .is_some_and(|t| std::time::Instant::now() < t)
            {
                return Err(Error::Unavailable);
            }
            tracing::warn!(database = %self.location, "the database session was closed; reconnecting");
            let fresh = match connect(&self.location, self.read_only) {
                Ok(c) => c,
                Err(e) => {
                    self.retry_after = Some(std::time::Instant::now() + RECONNECT_BACKOFF);
                    return Err(e);
                }
            };
            self.retry_after = None;
            let old = std::mem::replace(&mut self.inner, fresh);
            off_runtime(move || drop(old));
        }
        Ok(())
    }

    /// A write transaction: it holds the database's writer lock from its start, so it
    /// sees every earlier commit and no other writer (of any process) runs until it
    /// commits or is dropped (rolled back).
    pub fn write(&mut self) -> Result<Tx<'_>, Error> {
        self.reopen_if_closed()?;
        Ok(Tx {
            inner: match &mut self.inner {
                Inner::Sqlite(c) => TxInner::Sqlite(Some(
                    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
                )),
                Inner::Postgres { client, cache } => {
                    let tx = cache.watch(off_runtime(|| -> Result<_, Error> {
                        // READ COMMITTED whatever the server's default: each statement
                        // after the lock sees every commit made before it.
                        let mut tx = client
                            .build_transaction()
                            .isolation_level(postgres::IsolationLevel::ReadCommitted)
                            .start()?;
                        // One round trip (the simple protocol, nothing to prepare).
                        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({WRITER_LOCK})"))?;
                        Ok(tx)
                    }))?;
                    TxInner::Postgres(Some(tx), cache)
                }
                Inner::Closed => return Err(closed()),
            },
        })
    }

    /// A read transaction: every query in it sees one snapshot.
    pub fn read(&mut self) -> Result<Tx<'_>, Error> {
        self.reopen_if_closed()?;
        Ok(Tx {
            inner: match &mut self.inner {
                Inner::Sqlite(c) => TxInner::Sqlite(Some(
                    c.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?,
                )),
                Inner::Postgres { client, cache } => {
                    let tx = cache.watch(off_runtime(|| {
                        Ok(client
                            .build_transaction()
                            .isolation_level(postgres::IsolationLevel::RepeatableRead)
                            .read_only(true)
                            .start()?)
                    }))?;
                    TxInner::Postgres(Some(tx), cache)
                }
                Inner::Closed => return Err(closed()),
            },
        })
    }

    /// The SQLite connection, for what only SQLite has (pragmas, checkpoints).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            _ => None,
        }
    }

    /// Forgets prepared statements (after a schema change).
    pub fn forget_statements(&mut self) {
        match &mut self.inner {
            Inner::Sqlite(c) => c.flush_prepared_statement_cache(),
            Inner::Postgres { cache, .. } => cache.clear(),
            Inner::Closed => {}
        }
    }
}

impl Queries for Conn {
    fn engine(&self) -> Engine {
        match self.inner {
            Inner::Sqlite(_) => Engine::Sqlite,
            _ => Engine::Postgres,
        }
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        self.reopen_if_closed()?;
        match &mut self.inner {
            Inner::Sqlite(c) => lite_execute(c, sql, args),
            Inner::Postgres { client, cache } => pg_execute(client.as_mut(), cache, sql, args),
            Inner::Closed => Err(closed()),
        }
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
        self.reopen_if_closed()?;
        match &mut self.inner {
            Inner::Sqlite(c) => lite_query(c, sql, args),
            Inner::Postgres { client, cache } => pg_query(client.as_mut(), cache, sql, args),
            Inner::Closed => Err(closed()),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        self.reopen_if_closed()?;
        match &mut self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres { client, cache } => pg_batch(client.as_mut(), cache, sql),
            Inner::Closed => Err(closed()),
        }
    }
}

fn closed() -> Error {
    Error::Location("the connection is closed".into())
}

/// Each `None` once committed.
enum TxInner<'a> {
    Sqlite(Option<rusqlite::Transaction<'a>>),
    Postgres(Option<postgres::Transaction<'a>>, &'a mut StatementCache),
}

/// A transaction; dropped without [`Tx::commit`], it rolls back.
pub struct Tx<'a> {
    inner: TxInner<'a>,
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // Rolling back blocks on the client's runtime.
        if let TxInner::Postgres(tx @ Some(_), _) = &mut self.inner {
            let tx = tx.take();
            off_runtime(move || drop(tx));
        }
    }
}

fn pg_tx<'t, 'a>(
    tx: &'t mut Option<postgres::Transaction<'a>>,
) -> Result<&'t mut postgres::Transaction<'a>, Error> {
    tx.as_mut().ok_or_else(closed)
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tx({:?})", self.engine())
    }
}

impl Tx<'_> {
    /// Commits.
    pub fn commit(mut self) -> Result<(), Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => Ok(tx.take().ok_or_else(closed)?.commit()?),
            TxInner::Postgres(tx, cache) => {
                let tx = tx.take().ok_or_else(closed)?;
                cache.watch(off_runtime(move || Ok(tx.commit()?)))
            }
        }
    }
}

impl Queries for Tx<'_> {
    fn engine(&self) -> Engine {
        match self.inner {
            TxInner::Sqlite(_) => Engine::Sqlite,
            TxInner::Postgres(..) => Engine::Postgres,
        }
    }

    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => lite_execute(tx.as_ref().ok_or_else(closed)?, sql, args),
            TxInner::Postgres(tx, cache) => pg_execute(pg_tx(tx)?, cache, sql, args),
        }
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => lite_query(tx.as_ref().ok_or_else(closed)?, sql, args),
            TxInner::Postgres(tx, cache) => pg_query(pg_tx(tx)?, cache, sql, args),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => Ok(tx.as_ref().ok_or_else(closed)?.execute_batch(sql)?),
            TxInner::Postgres(tx, cache) => pg_batch(pg_tx(tx)?, cache, sql),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_params("SELECT '?1', \"a?\" FROM t -- it's ?3\nWHERE x = ?1 AND y = ?12"),
            "SELECT '?1', \"a?\" FROM t -- it's ?3\nWHERE x = $1 AND y = $12"
        );
    }

    #[test]
    fn passwords_are_hidden_however_the_url_is_split() {
        assert_eq!(
            redact("postgres://u:pa/ss@h:5432/db?password=x&sslmode=disable"),
            "postgres://u:***@h:5432/db?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://u:a@b@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u:p?w@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        let e = Location::parse("postgresql+x://u:secret@h/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(Location::parse("Postgres://u:secret@h/db").is_err());
    }

    #[test]
    fn sslrootcert_is_percent_decoded_and_needs_tls() {
        assert_eq!(percent_decode("/etc/a%20b%26c.pem"), "/etc/a b&c.pem");
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        let Location::Postgres(u) =
            Location::parse("postgres://u@h/db?sslmode=require&sslrootcert=/x%20y.pem").unwrap()
        else {
            panic!("not PostgreSQL")
        };
        assert_eq!(u.ca.as_deref(), Some(Path::new("/x y.pem")));
        assert_eq!(u.driver_url, "postgres://u@h/db?sslmode=require");
        assert!(Location::parse("postgres://u@h/db?sslrootcert=/x.pem").is_err());
    }

    #[test]
    fn plaintext_to_another_host_is_named() {
        let host = |u: &str| Location::parse(u).unwrap().plaintext_remote_host();
        assert_eq!(
            host("postgres://u:p@db.internal:5432/kv"),
            Some("db.internal".into())
        );
        assert_eq!(
            host("postgres://u:p@10.0.0.7/kv?sslmode=prefer"),
            Some("10.0.0.7".into())
        );
        assert_eq!(host("postgres://u:p@db.internal/kv?sslmode=require"), None);
        assert_eq!(host("postgres://u:p@127.0.0.1/kv"), None);
        assert_eq!(host("postgres://u:p@localhost/kv"), None);
        assert_eq!(host("postgres://u:p@[::1]/kv"), None);
        assert_eq!(
            Location::sqlite(Path::new("/x.db")).plaintext_remote_host(),
            None
        );
    }

    #[test]
    fn text_with_nul_is_refused_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Conn::open(&Location::sqlite(&dir.path().join("t.db"))).unwrap();
        c.batch("CREATE TABLE t (s TEXT)").unwrap();
        let e = c
            .execute("INSERT INTO t VALUES (?1)", args!["a\0b"])
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn locations_hide_passwords() {
        let l = Location::parse("postgres://opencvm:s3cret@127.0.0.1:5432/kv").unwrap();
        assert_eq!(l.engine(), Engine::Postgres);
        assert_eq!(format!("{l}"), "postgres://opencvm:***@127.0.0.1:5432/kv");
        assert!(!format!("{l:?}").contains("s3cret"));
        let bad = Location::parse("postgres://u:s3cret@h:notaport/x").unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
        assert_eq!(
            Location::parse("/var/lib/kv.db").unwrap(),
            Location::Sqlite("/var/lib/kv.db".into())
        );
    }

    #[test]
    fn sqlite_round_trips_every_kind_and_rolls_back_dropped_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Conn::open(&Location::sqlite(&dir.path().join("t.db"))).unwrap();
        c.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n INTEGER)")
            .unwrap();
        {
            let mut tx = c.write().unwrap();
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                args![-7i64, "é", vec![0u8, 255], None::<i64>],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        {
            let mut tx = c.write().unwrap();
            tx.execute("DELETE FROM t", args![]).unwrap();
        }
        let r = c.query_one("SELECT i, s, b, n FROM t", args![]).unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), -7);
        assert_eq!(r.get::<String>(1).unwrap(), "é");
        assert_eq!(r.get::<Vec<u8>>(2).unwrap(), vec![0, 255]);
        assert_eq!(r.get::<Option<i64>>(3).unwrap(), None);
        let e = r.get::<Vec<u8>>(0).unwrap_err();
        assert!(
            e.to_string().contains("expected bytes, found integer"),
            "{e}"
        );
    }
}
