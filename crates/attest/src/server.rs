//! The HTTP API (axum on tokio).
//!
//! The default provider answers at the root; a named provider `P` at `/providers/P/...`
//! with the same paths. Every error is a JSON body `{"error": {"code", "message"}}`.
//!
//! | method | path | who |
//! |---|---|---|
//! | GET | `/.well-known/openid-configuration` | anyone |
//! | GET | `/certs` | anyone (JWKS) |
//! | GET | `/nonce` | anyone |
//! | POST | `/attest/{SevSnpVm,AzureGuest}` | anyone |
//! | GET/PUT | `/policies/{type}` | provider administrator |
//! | POST | `/policies/{type}/test` | anyone (dry run; never issues a token) |
//! | GET/PUT | `/settings` | provider administrator |
//! | POST | `/signing-keys/rotate` | provider administrator |
//! | POST | `/providers/{name}` | default provider's administrator |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::service::{DEFAULT_PROVIDER, Service};
use crate::{AttestationType, policy::ProviderSettings};

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

type Svc = State<Arc<Service>>;
type ApiResult = Result<axum::Json<Value>, ApiError>;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                "body_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            )
        } else {
            ApiError::bad("malformed_request", "unreadable request body")
        }
    })
}

fn kind(name: &str) -> Result<AttestationType, ApiError> {
    AttestationType::from_path(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown attestation type {name:?} (SevSnpVm or AzureGuest)"
        ))
    })
}

async fn openid(State(s): Svc, p: Option<Path<String>>) -> ApiResult {
    Ok(axum::Json(s.openid_configuration(&provider(p))?))
}

async fn certs(State(s): Svc, p: Option<Path<String>>) -> ApiResult {
    let jwks = s.jwks(&provider(p))?;
    Ok(axum::Json(
        serde_json::to_value(jwks).map_err(|_| ApiError::internal("jwks"))?,
    ))
}

async fn nonce(State(s): Svc) -> ApiResult {
    Ok(axum::Json(s.issue_nonce()?))
}

fn provider(p: Option<Path<String>>) -> String {
    p.map(|Path(p)| p)
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string())
}

async fn attest_default(
    State(s): Svc,
    Path(t): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    attest(s, DEFAULT_PROVIDER.into(), t, &h, b)
}

async fn attest_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    attest(s, p, t, &h, b)
}

fn attest(
    s: Arc<Service>,
    p: String,
    t: String,
    h: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let k = kind(&t)?;
    let b = body(b)?;
    Ok(axum::Json(s.attest(&p, k, &b, bearer(h))?))
}

#[derive(Deserialize)]
struct PolicyBody {
    policy: String,
}

fn policy_text(b: &[u8], headers: &HeaderMap) -> Result<String, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let pb: PolicyBody = crate::evidence::parse_json("policy body", b)?;
        Ok(pb.policy)
    } else {
        String::from_utf8(b.to_vec())
            .map_err(|_| ApiError::bad("invalid_policy", "the policy is not UTF-8"))
    }
}

async fn policy_get_default(State(s): Svc, Path(t): Path<String>, h: HeaderMap) -> ApiResult {
    Ok(axum::Json(s.get_policy(
        DEFAULT_PROVIDER,
        bearer(&h),
        kind(&t)?,
    )?))
}

async fn policy_get_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    h: HeaderMap,
) -> ApiResult {
    Ok(axum::Json(s.get_policy(&p, bearer(&h), kind(&t)?)?))
}

async fn policy_put_default(
    State(s): Svc,
    Path(t): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    s.check_admin(DEFAULT_PROVIDER, bearer(&h))?;
    let b = body(b)?;
    let text = policy_text(&b, &h)?;
    Ok(axum::Json(s.set_policy(
        DEFAULT_PROVIDER,
        bearer(&h),
        kind(&t)?,
        &text,
    )?))
}

async fn policy_put_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    s.check_admin(&p, bearer(&h))?;
    let b = body(b)?;
    let text = policy_text(&b, &h)?;
    Ok(axum::Json(s.set_policy(
        &p,
        bearer(&h),
        kind(&t)?,
        &text,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    #[serde(default)]
    policy: Option<String>,
    evidence: Value,
}

fn policy_test(
    s: Arc<Service>,
    p: &str,
    t: &str,
    h: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let k = kind(t)?;
    let b = body(b)?;
    let tb: TestBody = crate::evidence::parse_json("policy test body", &b)?;
    let ev = serde_json::to_vec(&tb.evidence).map_err(|_| ApiError::internal("json"))?;
    Ok(axum::Json(s.test_policy(
        p,
        k,
        tb.policy.as_deref(),
        &ev,
        bearer(h),
    )?))
}

async fn policy_test_default(
    State(s): Svc,
    Path(t): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    policy_test(s, DEFAULT_PROVIDER, &t, &h, b)
}

async fn policy_test_named(
    State(s): Svc,
    Path((p, t)): Path<(String, String)>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    policy_test(s, &p, &t, &h, b)
}

async fn settings_get(State(s): Svc, p: Option<Path<String>>, h: HeaderMap) -> ApiResult {
    Ok(axum::Json(s.get_settings(&provider(p), bearer(&h))?))
}

async fn settings_put(
    State(s): Svc,
    p: Option<Path<String>>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let b = body(b)?;
    Ok(axum::Json(s.set_settings(&provider(p), bearer(&h), &b)?))
}

async fn rotate(State(s): Svc, p: Option<Path<String>>, h: HeaderMap) -> ApiResult {
    Ok(axum::Json(s.rotate_signing_key(&provider(p), bearer(&h))?))
}

async fn create_provider(
    State(s): Svc,
    Path(p): Path<String>,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let b = body(b)?;
    let settings: ProviderSettings = if b.iter().all(u8::is_ascii_whitespace) {
        ProviderSettings::default()
    } else {
        serde_json::from_slice(&b).map_err(|e| ApiError::bad("invalid_settings", e.to_string()))?
    };
    Ok(axum::Json(s.create_provider(bearer(&h), &p, settings)?))
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn limits(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(mut r) => {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => ApiError::new(503, "timeout", "the request took too long").into_response(),
    }
}

/// The API's router.
pub fn router(svc: Arc<Service>) -> Router {
    let per_provider = |prefix: &str| {
        Router::new()
            .route(
                &format!("{prefix}/.well-known/openid-configuration"),
                get(openid),
            )
            .route(&format!("{prefix}/certs"), get(certs))
            .route(
                &format!("{prefix}/settings"),
                get(settings_get).put(settings_put),
            )
            .route(&format!("{prefix}/signing-keys/rotate"), post(rotate))
    };
    Router::new()
        .merge(per_provider(""))
        .merge(per_provider("/providers/{provider}"))
        .route("/nonce", get(nonce))
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
        .fallback(not_found)
        .layer(axum::middleware::from_fn(limits))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The service could not start.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A TLS certificate chain and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        ServeError::Tls(format!("{}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS: each connection's handshake is bounded in time, then HTTP/1.1.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

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
    let acceptor = tls.as_ref().map(tls_acceptor).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        cfg.issuer = issuer.unwrap_or_else(|| format!("{scheme}://{addr}"));
        let (svc, created) = Service::open(cfg)?;
        on_listening(addr, created.as_deref());
        let app = router(Arc::new(svc));
        match acceptor {
            Some(a) => serve_tls(listener, a, app).await?,
            None => axum::serve(listener, app).await?,
        }
        Ok(())
    })
}
