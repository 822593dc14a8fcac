//! The key vault's HTTP API (axum), with Key Vault's paths and bodies; the vault is the
//! one the bearer credential belongs to. `?api-version=` is accepted and ignored.
//!
//! | method | path | role |
//! |---|---|---|
//! | POST | `/keys/{name}/create` | administrator, crypto user |
//! | PUT | `/keys/{name}` (import) | administrator, crypto user |
//! | GET | `/keys`, `/keys/{name}`, `/keys/{name}/versions`, `/keys/{name}/{version}` | any |
//! | PATCH | `/keys/{name}/{version}` | administrator, crypto user |
//! | DELETE | `/keys/{name}` | administrator |
//! | GET | `/deletedkeys` | any |
//! | GET, DELETE | `/deletedkeys/{name}` | any / administrator (purge) |
//! | POST | `/deletedkeys/{name}/recover` | administrator |
//! | POST | `/keys/{name}/{version}/release` | any |
//! | POST | `/keys/{name}/{version}/release/test` | any (dry run) |
//! | POST | `/keys/{name}/{version}/wrapkey` (A256KW) | administrator, crypto user |
//! | POST | `/keys/{name}/{version}/unwrapkey/attested` | any (attested unwrap) |
//! | POST/GET | `/credentials`, GET `/audit` | administrator |
//! | DELETE | `/credentials/{id}` | administrator (revoke) |
//! | POST | `/credentials/{id}/rotate` | administrator, or the credential's holder |
//! | POST | `/vaults/{name}` | the service administrator |
//! | POST | `/regions/{region}` (root key + platform vault) | the service administrator |
//! | POST | `/regions/{region}/rotate` (new root version) | the service administrator |
//! | GET | `/regions` | the service administrator |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::Value;

use crate::service::{Vault, VaultConfig, VaultError};

/// The largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

type S = State<Arc<Vault>>;
type R = Result<axum::Json<Value>, VaultError>;

use httpd::bearer;

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, VaultError> {
    httpd::body_rejection(b, MAX_BODY, "bad_request").map_err(|(status, code, message)| {
        VaultError {
            status,
            code,
            message,
            detail: None,
        }
    })
}

async fn create(
    State(v): S,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    Ok(axum::Json(v.create_key(bearer(&h), &n, &body(b)?)?))
}
async fn import(
    State(v): S,
    Path(n): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    Ok(axum::Json(v.import_key(bearer(&h), &n, &body(b)?)?))
}
async fn get_latest(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.get_key(bearer(&h), &n, None)?))
}
async fn get_version(State(v): S, Path((n, ver)): Path<(String, String)>, h: HeaderMap) -> R {
    Ok(axum::Json(v.get_key(bearer(&h), &n, Some(&ver))?))
}
async fn versions(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.list_versions(bearer(&h), &n)?))
}
async fn deleted(State(v): S, h: HeaderMap) -> R {
    Ok(axum::Json(v.list_deleted(bearer(&h))?))
}
async fn list(State(v): S, h: HeaderMap) -> R {
    Ok(axum::Json(v.list_keys(bearer(&h))?))
}
async fn update(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    Ok(axum::Json(v.update_key(bearer(&h), &n, &ver, &body(b)?)?))
}
async fn delete(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.delete_key(bearer(&h), &n)?))
}
async fn get_deleted(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.get_deleted(bearer(&h), &n)?))
}
async fn purge(State(v): S, Path(n): Path<String>, h: HeaderMap) -> Result<StatusCode, VaultError> {
    v.purge_key(bearer(&h), &n)?;
    Ok(StatusCode::NO_CONTENT)
}
async fn recover(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.recover_key(bearer(&h), &n)?))
}
/// Release validates a token, which may fetch the authority's keys with a blocking
/// HTTP client, writes an audit entry durably, and a rotation reseals every key:
/// blocking work, on the blocking pool ([`httpd::blocking`]; in one run, running it
/// on the request's task with `block_in_place` instead gave a higher p99).
async fn blocking(f: impl FnOnce() -> Result<Value, VaultError> + Send + 'static) -> R {
    httpd::blocking(f).await?.map(axum::Json)
}

/// A key operation that validates an attestation token.
type TokenOp = fn(&Vault, Option<&str>, &str, &str, &[u8]) -> Result<Value, VaultError>;

/// Runs `op` on key `n` version `ver` on the blocking pool.
async fn token_op(
    v: Arc<Vault>,
    (n, ver): (String, String),
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
    op: TokenOp,
) -> R {
    let b = body(b)?;
    let t = bearer(&h).map(str::to_string);
    blocking(move || op(&v, t.as_deref(), &n, &ver, &b)).await
}

async fn release(
    State(v): S,
    Path(p): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    token_op(v, p, h, b, Vault::release).await
}
async fn release_test(
    State(v): S,
    Path(p): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    token_op(v, p, h, b, Vault::release_test).await
}
async fn wrapkey(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    Ok(axum::Json(v.wrap_key(bearer(&h), &n, &ver, &body(b)?)?))
}
async fn attested_unwrap(
    State(v): S,
    Path(p): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> R {
    token_op(v, p, h, b, Vault::attested_unwrap).await
}
async fn credentials(State(v): S, h: HeaderMap, b: Result<Bytes, BytesRejection>) -> R {
    Ok(axum::Json(v.create_credential(bearer(&h), &body(b)?)?))
}
async fn list_credentials(State(v): S, h: HeaderMap) -> R {
    Ok(axum::Json(v.list_credentials(bearer(&h))?))
}
async fn revoke_credential(State(v): S, Path(id): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.revoke_credential(bearer(&h), &id)?))
}
async fn rotate_credential(State(v): S, Path(id): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.rotate_credential(bearer(&h), &id)?))
}
async fn audit(State(v): S, h: HeaderMap) -> R {
    Ok(axum::Json(v.audit_log(bearer(&h))?))
}
async fn vault(State(v): S, Path(n): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.create_vault(bearer(&h), &n)?))
}
async fn create_region(State(v): S, Path(r): Path<String>, h: HeaderMap) -> R {
    Ok(axum::Json(v.create_region(bearer(&h), &r)?))
}
/// A rotation reseals every key of the region: run it on the blocking pool.
async fn rotate_region(State(v): S, Path(r): Path<String>, h: HeaderMap) -> R {
    let t = bearer(&h).map(str::to_string);
    blocking(move || v.rotate_region(t.as_deref(), &r)).await
}
async fn regions(State(v): S, h: HeaderMap) -> R {
    Ok(axum::Json(v.list_regions(bearer(&h))?))
}

/// The API's router.
pub fn router(v: Arc<Vault>) -> Router {
    // Every route needs a credential: a large body is read only once it is valid.
    let gate = v.clone();
    let check: httpd::BodyGate =
        Arc::new(move |p| !httpd::large_body(p) || gate.authenticated(bearer(&p.headers)));
    let routes = Router::new()
        .route("/keys", get(list))
        .route("/keys/{name}", get(get_latest).put(import).delete(delete))
        .route("/keys/{name}/create", post(create))
        .route("/keys/{name}/versions", get(versions))
        .route("/keys/{name}/{version}", get(get_version).patch(update))
        .route("/keys/{name}/{version}/release", post(release))
        .route("/keys/{name}/{version}/release/test", post(release_test))
        .route("/keys/{name}/{version}/wrapkey", post(wrapkey))
        .route(
            "/keys/{name}/{version}/unwrapkey/attested",
            post(attested_unwrap),
        )
        .route("/deletedkeys", get(deleted))
        .route("/deletedkeys/{name}", get(get_deleted).delete(purge))
        .route("/deletedkeys/{name}/recover", post(recover))
        .route("/credentials", post(credentials).get(list_credentials))
        .route(
            "/credentials/{id}",
            axum::routing::delete(revoke_credential),
        )
        .route("/credentials/{id}/rotate", post(rotate_credential))
        .route("/audit", get(audit))
        .route("/vaults/{name}", post(vault))
        .route("/regions", get(regions))
        .route("/regions/{region}", post(create_region))
        .route("/regions/{region}/rotate", post(rotate_region));
    httpd::api_router(routes, MAX_BODY, check).with_state(v)
}

pub use httpd::{ServeError, TlsFiles};

/// Binds `listen`, opens the vault (base URL from the bound address unless given),
/// reports the address, and serves (HTTPS with `tls`) until the process ends.
pub fn run(
    listen: &str,
    base_url: Option<String>,
    tls: Option<TlsFiles>,
    mut cfg: VaultConfig,
    on_listening: impl FnOnce(SocketAddr, Option<&std::path::Path>),
) -> Result<(), ServeError> {
    httpd::run(listen, tls, move |addr, base| {
        cfg.base_url = base_url.unwrap_or(base);
        let (vault, created) = Vault::open(cfg).map_err(|e| ServeError::Service(e.to_string()))?;
        on_listening(addr, created.as_deref());
        Ok(router(Arc::new(vault)))
    })
}
