//! The HTTP API (axum on tokio).
//!
//! The default provider answers at the root; a named provider `P` at `/providers/P/...`
//! with the same paths. Every error is a JSON body `{"error": {"code", "message"}}`.
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | `/.well-known/openid-configuration` | anyone |
//! | GET | `/certs` | anyone (JWKS) |
//! | GET | `/nonce` | anyone (a nonce for this provider only) |
//! | POST | `/attest/{SevSnpVm,AzureGuest}` | anyone |
//! | GET/PUT | `/policies/{type}` | provider administrator |
//! | POST | `/policies/{type}/test` | anyone (dry run; never issues a token) |
//! | GET/PUT | `/settings` | provider administrator |
//! | POST | `/signing-keys/rotate` | provider administrator (old keys retire after the grace period) |
//! | POST | `/signing-keys/{kid}/revoke` | provider administrator (out of the JWKS at once) |
//! | POST | `/admin-credential/rotate` | provider administrator |
//! | POST, DELETE | `/admin-credential` | reset: default provider's administrator; revoke: either |
//! | GET | `/audit` | provider administrator |
//! | POST | `/providers/{name}` | default provider's administrator |
//! | GET | `/reference-values` | anyone |
//! | POST, DELETE | `/reference-values/{region}[/{measurement}]` | default provider's administrator |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};

use crate::error::{ApiError, AttestRefusal as _};
use crate::service::{Admitted, DEFAULT_PROVIDER, Service};
use crate::{AttestationType, policy::ProviderSettings};
use attest_api::AttestApi as Api;
use httpd::Credential;

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

type Svc = State<Arc<Service>>;
type ApiResult<T> = Result<axum::Json<T>, ApiError>;

use httpd::bearer;

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    httpd::body_rejection(b, MAX_BODY, "malformed_request")
        .map_err(|(status, code, message)| ApiError::new(status, code, message))
}

fn kind(name: &str) -> Result<AttestationType, ApiError> {
    AttestationType::from_path(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown attestation type {name:?} (SevSnpVm or AzureGuest)"
        ))
    })
}

async fn openid(
    State(s): Svc,
    p: Option<Path<String>>,
) -> ApiResult<attest_api::OpenIdConfiguration> {
    let a = admit(
        &s,
        "openid_configuration",
        &provider(p),
        &Credential::none(),
    )?;
    Ok(axum::Json(Api::openid_configuration(&*s, &a)?))
}

async fn certs(State(s): Svc, p: Option<Path<String>>) -> ApiResult<attest_api::Jwks> {
    let a = admit(&s, "certs", &provider(p), &Credential::none())?;
    Ok(axum::Json(Api::certs(&*s, &a)?))
}

async fn nonce(State(s): Svc, p: Option<Path<String>>) -> ApiResult<attest_api::NonceResponse> {
    let a = admit(&s, "nonce", &provider(p), &Credential::none())?;
    Ok(axum::Json(Api::nonce(&*s, &a)?))
}

fn provider(p: Option<Path<String>>) -> String {
    p.map(|Path(p)| p)
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string())
}

/// The one access check, before any body is read: the request about `provider`,
/// admitted to the contract's operation `id` ([`Service::admit`]).
fn admit(s: &Service, id: &str, provider: &str, cred: &Credential) -> Result<Admitted, ApiError> {
    s.admit_op(id, provider, cred.bearer())
}

/// The client's address, when the listener recorded it.
type PeerExt = Option<axum::Extension<httpd::Peer>>;

fn peer_ip(p: PeerExt) -> Option<std::net::IpAddr> {
    p.map(|axum::Extension(httpd::Peer(a))| a.ip())
}

async fn attest_default(
    State(s): Svc,
    Path(t): Path<String>,
    peer: PeerExt,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::AttestResponse> {
    attest(s, DEFAULT_PROVIDER.into(), t, &cred, peer_ip(peer), b).await
}

async fn attest_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    peer: PeerExt,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::AttestResponse> {
    attest(s, p, t, &cred, peer_ip(peer), b).await
}

/// An attestation runs on the runtime worker that received it. Its work is CPU-bound
/// (about 1.4 ms: report verification, the built-in Rego policy, token signing) and
/// the runtime has one worker per core, so this is the cheapest place for it: moving
/// it to the blocking pool cost 15 % of the throughput (BENCHMARKS.md §4). A tenant's
/// policy runs in a sandbox worker process, awaited without holding the thread; the
/// one blocking I/O, a collateral fetch from the KDS, steps off the worker itself
/// (`evidence.rs`). The body is parsed into the contract's request of its kind with
/// the appraisal's refusal codes (`evidence::parse_request`).
async fn attest(
    s: Arc<Service>,
    p: String,
    t: String,
    cred: &Credential,
    peer: Option<std::net::IpAddr>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::AttestResponse> {
    let k = kind(&t)?;
    let id = match k {
        AttestationType::SevSnpVm => "attest_sev_snp_vm",
        AttestationType::AzureGuest => "attest_azure_guest",
    };
    let a = admit(&s, id, &p, cred)?.from_peer(peer);
    let req = crate::evidence::parse_request(k, &body(b)?)?;
    Ok(axum::Json(s.attest(&a, req).await?))
}

fn policy_text(b: &[u8], headers: &HeaderMap) -> Result<String, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let pb: attest_api::PolicyRequest = crate::evidence::parse_json("policy body", b)?;
        Ok(pb.policy)
    } else {
        String::from_utf8(b.to_vec())
            .map_err(|_| ApiError::bad("invalid_policy", "the policy is not UTF-8"))
    }
}

async fn policy_get(
    s: &Service,
    p: &str,
    t: &str,
    cred: &Credential,
) -> ApiResult<attest_api::PolicyInfo> {
    let k = kind(t)?;
    let a = admit(s, "get_policy", p, cred)?;
    Ok(axum::Json(s.get_policy(&a, k)?))
}

async fn policy_get_default(
    State(s): Svc,
    Path(t): Path<String>,
    cred: Credential,
) -> ApiResult<attest_api::PolicyInfo> {
    policy_get(&s, DEFAULT_PROVIDER, &t, &cred).await
}

async fn policy_get_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    cred: Credential,
) -> ApiResult<attest_api::PolicyInfo> {
    policy_get(&s, &p, &t, &cred).await
}

async fn policy_put(
    s: &Service,
    p: &str,
    t: &str,
    (cred, headers): (&Credential, &HeaderMap),
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::PolicySet> {
    let a = admit(s, "set_policy", p, cred)?;
    let b = body(b)?;
    let text = policy_text(&b, headers)?;
    Ok(axum::Json(s.set_policy(&a, kind(t)?, &text).await?))
}

async fn policy_put_default(
    State(s): Svc,
    Path(t): Path<String>,
    cred: Credential,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::PolicySet> {
    policy_put(&s, DEFAULT_PROVIDER, &t, (&cred, &headers), b).await
}

async fn policy_put_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    cred: Credential,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::PolicySet> {
    policy_put(&s, &p, &t, (&cred, &headers), b).await
}

/// A dry run; like an attestation, it runs on the receiving worker.
async fn policy_test(
    s: Arc<Service>,
    p: &str,
    t: &str,
    cred: &Credential,
    peer: Option<std::net::IpAddr>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::DryRun> {
    let k = kind(t)?;
    let a = admit(&s, "test_policy", p, cred)?.from_peer(peer);
    let b = body(b)?;
    let req: attest_api::PolicyTestRequest = crate::evidence::parse_json("policy test body", &b)?;
    Ok(axum::Json(s.test_policy(&a, k, req).await?))
}

async fn policy_test_default(
    State(s): Svc,
    Path(t): Path<String>,
    peer: PeerExt,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::DryRun> {
    policy_test(s, DEFAULT_PROVIDER, &t, &cred, peer_ip(peer), b).await
}

async fn policy_test_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    peer: PeerExt,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::DryRun> {
    policy_test(s, &p, &t, &cred, peer_ip(peer), b).await
}

/// Provider settings from a request body (`invalid_settings` when they are not).
fn settings(b: &[u8]) -> Result<ProviderSettings, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad("invalid_settings", e.to_string()))
}

async fn settings_get(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<ProviderSettings> {
    let a = admit(&s, "get_settings", &provider(p), &cred)?;
    Ok(axum::Json(s.get_settings(&a)?))
}

async fn settings_put(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<ProviderSettings> {
    let a = admit(&s, "set_settings", &provider(p), &cred)?;
    let settings = settings(&body(b)?)?;
    Ok(axum::Json(s.set_settings(&a, settings)?))
}

async fn rotate(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<attest_api::SigningKeyRotated> {
    let a = admit(&s, "rotate_signing_key", &provider(p), &cred)?;
    Ok(axum::Json(s.rotate_signing_key(&a)?))
}

async fn create_provider(
    State(s): Svc,
    Path(p): Path<String>,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::ProviderCreated> {
    let a = admit(&s, "create_provider", DEFAULT_PROVIDER, &cred)?;
    let b = body(b)?;
    let settings = if b.iter().all(u8::is_ascii_whitespace) {
        ProviderSettings::default()
    } else {
        settings(&b)?
    };
    Ok(axum::Json(s.create_provider(&a, &p, settings)?))
}

async fn revoke_key(
    State(s): Svc,
    Path(params): Path<std::collections::HashMap<String, String>>,
    cred: Credential,
) -> ApiResult<attest_api::SigningKeyRevoked> {
    let provider = params
        .get("provider")
        .cloned()
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
    let kid = params
        .get("kid")
        .ok_or_else(|| ApiError::not_found("no such endpoint"))?;
    let a = admit(&s, "revoke_signing_key", &provider, &cred)?;
    Ok(axum::Json(s.revoke_signing_key(&a, kid)?))
}

async fn admin_rotate(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<attest_api::AdminCredential> {
    let a = admit(&s, "rotate_admin_credential", &provider(p), &cred)?;
    Ok(axum::Json(s.rotate_admin_credential(&a)?))
}

async fn admin_reset(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<attest_api::AdminCredential> {
    let a = admit(&s, "reset_admin_credential", &provider(p), &cred)?;
    Ok(axum::Json(s.reset_admin_credential(&a)?))
}

async fn admin_revoke(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<attest_api::AdminRevoked> {
    let a = admit(&s, "revoke_admin_credential", &provider(p), &cred)?;
    Ok(axum::Json(s.revoke_admin_credential(&a)?))
}

async fn audit_log(
    State(s): Svc,
    p: Option<Path<String>>,
    cred: Credential,
) -> ApiResult<attest_api::AuditLog> {
    let a = admit(&s, "audit_log", &provider(p), &cred)?;
    Ok(axum::Json(s.audit_log(&a)?))
}

async fn reference_values(State(s): Svc) -> ApiResult<attest_api::ReferenceValueList> {
    let a = admit(
        &s,
        "reference_values",
        DEFAULT_PROVIDER,
        &Credential::none(),
    )?;
    Ok(axum::Json(Api::reference_values(&*s, &a)?))
}

async fn reference_value_add(
    State(s): Svc,
    Path(region): Path<String>,
    cred: Credential,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<attest_api::ReferenceValue> {
    let a = admit(&s, "add_reference_value", DEFAULT_PROVIDER, &cred)?;
    let b = body(b)?;
    let req: attest_api::ReferenceValueRequest =
        crate::evidence::parse_json("reference value", &b)?;
    Ok(axum::Json(s.add_reference_value(&a, &region, req)?))
}

async fn reference_value_remove(
    State(s): Svc,
    Path((region, m)): Path<(String, String)>,
    cred: Credential,
) -> ApiResult<attest_api::ReferenceValueRemoved> {
    let a = admit(&s, "remove_reference_value", DEFAULT_PROVIDER, &cred)?;
    Ok(axum::Json(s.remove_reference_value(&a, &region, &m)?))
}

async fn health() -> &'static str {
    "ok"
}

/// Whether a request, by method and path, needs the administrator credential of the
/// provider it names (`None` for requests anyone may make).
fn admin_of(method: &axum::http::Method, path: &str) -> Option<String> {
    use axum::http::Method;
    let (provider, rest) = match path.strip_prefix("/providers/") {
        Some(r) => match r.split_once('/') {
            Some((p, rest)) => (p.to_string(), format!("/{rest}")),
            // `POST /providers/{name}` creates a provider: the default's administrator.
            None => (DEFAULT_PROVIDER.to_string(), String::new()),
        },
        None => (DEFAULT_PROVIDER.to_string(), path.to_string()),
    };
    let admin = match (method, rest.as_str()) {
        (&Method::POST, "") => true,
        (&Method::PUT, _) => true,
        (&Method::POST, r) => {
            r.starts_with("/signing-keys")
                || r.starts_with("/admin-credential")
                || r.starts_with("/reference-values")
        }
        (&Method::DELETE, _) => true,
        _ => false,
    };
    admin.then_some(provider)
}

/// The API's router.
pub fn router(svc: Arc<Service>) -> Router {
    // Administrator routes read a large body only once the credential is valid;
    // `/attest` is open to anyone (its bodies are bounded and must arrive promptly).
    let gate = svc.clone();
    let check: httpd::BodyGate = Arc::new(move |p| {
        if !httpd::large_body(p) {
            return true;
        }
        match admin_of(&p.method, p.uri.path()) {
            None => true,
            Some(provider) => gate.check_admin(&provider, bearer(&p.headers)).is_ok(),
        }
    });
    let per_provider = |prefix: &str| {
        Router::new()
            .route(
                &format!("{prefix}/.well-known/openid-configuration"),
                get(openid),
            )
            .route(&format!("{prefix}/certs"), get(certs))
            .route(&format!("{prefix}/nonce"), get(nonce))
            .route(
                &format!("{prefix}/settings"),
                get(settings_get).put(settings_put),
            )
            .route(&format!("{prefix}/signing-keys/rotate"), post(rotate))
            .route(
                &format!("{prefix}/signing-keys/{{kid}}/revoke"),
                post(revoke_key),
            )
            .route(
                &format!("{prefix}/admin-credential"),
                post(admin_reset).delete(admin_revoke),
            )
            .route(
                &format!("{prefix}/admin-credential/rotate"),
                post(admin_rotate),
            )
            .route(&format!("{prefix}/audit"), get(audit_log))
    };
    let routes = Router::new()
        .merge(per_provider(""))
        .merge(per_provider("/providers/{provider}"))
        .route("/health", get(health))
        .route("/attest/{type}", post(attest_default))
        .route("/providers/{provider}/attest/{type}", post(attest_named))
        .route(
            "/policies/{type}",
            get(policy_get_default).put(policy_put_default),
        )
        .route(
            "/providers/{provider}/policies/{type}",
            get(policy_get_named).put(policy_put_named),
        )
        .route("/policies/{type}/test", post(policy_test_default))
        .route(
            "/providers/{provider}/policies/{type}/test",
            post(policy_test_named),
        )
        .route("/providers/{provider}", post(create_provider))
        .route("/reference-values", get(reference_values))
        .route("/reference-values/{region}", post(reference_value_add))
        .route(
            "/reference-values/{region}/{measurement}",
            axum::routing::delete(reference_value_remove),
        );
    httpd::api_router(routes, MAX_BODY, check).with_state(svc)
}

pub use httpd::{ServeError, TlsFiles};

/// Binds `listen`, builds the service (its issuer from `issuer`, or the bound
/// address), reports the address to `on_listening`, and serves (HTTPS with `tls`)
/// until the process ends.
pub fn run(
    listen: &str,
    issuer: Option<String>,
    tls: Option<TlsFiles>,
    mut cfg: crate::ServiceConfig,
    on_listening: impl FnOnce(SocketAddr, Option<&std::path::Path>),
) -> Result<(), ServeError> {
    crate::policy::install_time_limit(Duration::from_secs(2));
    httpd::run(listen, tls, move |addr, base| {
        cfg.issuer = issuer.unwrap_or(base);
        let (svc, created) = Service::open(cfg).map_err(|e| ServeError::Service(e.to_string()))?;
        on_listening(addr, created.as_deref());
        Ok(router(Arc::new(svc)))
    })
}
