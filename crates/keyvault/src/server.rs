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
use axum::http::StatusCode;
use axum::routing::{get, post};
use httpd::Credential;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::service::{Authorized, Vault, VaultConfig, VaultError};
use keyvault_api::KeyVaultApi as Api;

/// The largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

type S = State<Arc<Vault>>;
type Body = Result<Bytes, BytesRejection>;
type R<T> = Result<axum::Json<T>, VaultError>;

use httpd::bearer;

/// The one access check, before any body is read: the caller of `cred`,
/// admitted to the operation `id` of the contract ([`Vault::authorize`]).
fn admit(v: &Vault, cred: &Credential, id: &str) -> Result<Authorized, VaultError> {
    v.authorize_op(cred.bearer(), id)
}

/// Where a malformed body's refusal is audited: the operation's audit name, key name
/// and version.
type AuditAs<'a> = Option<(&'a str, &'a str, &'a str)>;

/// The request body as the operation's typed request: 413 over [`MAX_BODY`], 400
/// `bad_request` when it is not that request (audited as `audit`, if given).
fn typed<T: DeserializeOwned>(
    v: &Vault,
    a: &Authorized,
    b: Body,
    audit: AuditAs<'_>,
) -> Result<T, VaultError> {
    let bytes =
        httpd::body_rejection(b, MAX_BODY, "bad_request").map_err(|(status, code, message)| {
            VaultError {
                status,
                code,
                message,
                detail: None,
            }
        })?;
    // Every body is a JSON object (serde would also take an array for a struct).
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = match object {
        true => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        false => Err("the request body is not a JSON object".to_string()),
    };
    parsed.map_err(|e| {
        let e = VaultError::bad("bad_request", e.chars().take(200).collect::<String>());
        if let Some((op, key, version)) = audit {
            v.audit_refusal(a, op, key, version, &e);
        }
        e
    })
}

/// Runs an operation on the blocking pool ([`httpd::blocking`]): release validates a
/// token (which may fetch the authority's keys with a blocking HTTP client) and
/// writes an audit entry durably; a rotation reseals every key. In one run, running
/// it on the request's task with `block_in_place` instead gave a higher p99.
async fn blocking<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> R<T> {
    httpd::blocking(f).await?.map(axum::Json)
}

async fn create(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "create_key")?;
    let req = typed(&v, &a, b, Some(("create", &n, "")))?;
    Ok(axum::Json(Api::create_key(&*v, &a, &n, req)?))
}
async fn import(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "import_key")?;
    let req = typed(&v, &a, b, Some(("import", &n, "")))?;
    Ok(axum::Json(Api::import_key(&*v, &a, &n, req)?))
}
async fn get_latest(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "get_key")?;
    Ok(axum::Json(Api::get_key(&*v, &a, &n, None)?))
}
async fn get_version(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "get_key_version")?;
    Ok(axum::Json(Api::get_key(&*v, &a, &n, Some(&ver))?))
}
async fn versions(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::KeyList> {
    let a = admit(&v, &cred, "list_versions")?;
    Ok(axum::Json(Api::list_versions(&*v, &a, &n)?))
}
async fn deleted(State(v): S, cred: Credential) -> R<keyvault_api::KeyList> {
    let a = admit(&v, &cred, "list_deleted")?;
    Ok(axum::Json(Api::list_deleted(&*v, &a)?))
}
async fn list(State(v): S, cred: Credential) -> R<keyvault_api::KeyList> {
    let a = admit(&v, &cred, "list_keys")?;
    Ok(axum::Json(Api::list_keys(&*v, &a)?))
}
async fn update(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "update_key")?;
    let req = typed(&v, &a, b, Some(("update", &n, &ver)))?;
    Ok(axum::Json(Api::update_key(&*v, &a, &n, &ver, req)?))
}
async fn delete(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "delete_key")?;
    Ok(axum::Json(Api::delete_key(&*v, &a, &n)?))
}
async fn get_deleted(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "get_deleted")?;
    Ok(axum::Json(Api::get_deleted(&*v, &a, &n)?))
}
async fn purge(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> Result<StatusCode, VaultError> {
    let a = admit(&v, &cred, "purge_key")?;
    Api::purge_key(&*v, &a, &n)?;
    Ok(StatusCode::NO_CONTENT)
}
async fn recover(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::KeyBundle> {
    let a = admit(&v, &cred, "recover_key")?;
    Ok(axum::Json(Api::recover_key(&*v, &a, &n)?))
}
async fn release(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::SignedResult> {
    blocking(move || {
        let a = admit(&v, &cred, "release")?;
        let req = typed(&v, &a, b, Some(("release", &n, &ver)))?;
        Api::release(&*v, &a, &n, &ver, req)
    })
    .await
}
async fn release_test(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::ReleaseTestResult> {
    blocking(move || {
        let a = admit(&v, &cred, "release_test")?;
        let req = typed(&v, &a, b, None)?;
        Api::release_test(&*v, &a, &n, &ver, req)
    })
    .await
}
async fn wrapkey(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::KeyOperationResult> {
    let a = admit(&v, &cred, "wrap_key")?;
    let req = typed(&v, &a, b, Some(("wrapkey", &n, &ver)))?;
    Ok(axum::Json(Api::wrap_key(&*v, &a, &n, &ver, req)?))
}
async fn attested_unwrap(
    State(v): S,
    Path((n, ver)): Path<(String, String)>,
    cred: Credential,
    b: Body,
) -> R<keyvault_api::SignedResult> {
    blocking(move || {
        let a = admit(&v, &cred, "attested_unwrap")?;
        let req = typed(&v, &a, b, Some(("attested_unwrap", &n, &ver)))?;
        Api::attested_unwrap(&*v, &a, &n, &ver, req)
    })
    .await
}
async fn credentials(State(v): S, cred: Credential, b: Body) -> R<keyvault_api::NewCredential> {
    let a = admit(&v, &cred, "create_credential")?;
    let req = typed(&v, &a, b, None)?;
    Ok(axum::Json(Api::create_credential(&*v, &a, req)?))
}
async fn list_credentials(State(v): S, cred: Credential) -> R<keyvault_api::CredentialList> {
    let a = admit(&v, &cred, "list_credentials")?;
    Ok(axum::Json(Api::list_credentials(&*v, &a)?))
}
async fn revoke_credential(
    State(v): S,
    Path(id): Path<String>,
    cred: Credential,
) -> R<keyvault_api::Revoked> {
    let a = admit(&v, &cred, "revoke_credential")?;
    Ok(axum::Json(Api::revoke_credential(&*v, &a, &id)?))
}
async fn rotate_credential(
    State(v): S,
    Path(id): Path<String>,
    cred: Credential,
) -> R<keyvault_api::RotatedCredential> {
    let a = admit(&v, &cred, "rotate_credential")?;
    Ok(axum::Json(Api::rotate_credential(&*v, &a, &id)?))
}
async fn audit(State(v): S, cred: Credential) -> R<keyvault_api::AuditLog> {
    let a = admit(&v, &cred, "audit_log")?;
    Ok(axum::Json(Api::audit_log(&*v, &a)?))
}
async fn vault(
    State(v): S,
    Path(n): Path<String>,
    cred: Credential,
) -> R<keyvault_api::NewCredential> {
    let a = admit(&v, &cred, "create_vault")?;
    Ok(axum::Json(Api::create_vault(&*v, &a, &n)?))
}
async fn create_region(
    State(v): S,
    Path(r): Path<String>,
    cred: Credential,
) -> R<keyvault_api::RegionCreated> {
    let a = admit(&v, &cred, "create_region")?;
    Ok(axum::Json(Api::create_region(&*v, &a, &r)?))
}
async fn rotate_region(
    State(v): S,
    Path(r): Path<String>,
    cred: Credential,
) -> R<keyvault_api::RegionRotated> {
    blocking(move || {
        let a = admit(&v, &cred, "rotate_region")?;
        Api::rotate_region(&*v, &a, &r)
    })
    .await
}
async fn regions(State(v): S, cred: Credential) -> R<keyvault_api::RegionList> {
    let a = admit(&v, &cred, "list_regions")?;
    Ok(axum::Json(Api::list_regions(&*v, &a)?))
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
