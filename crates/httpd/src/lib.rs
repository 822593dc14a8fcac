//! HTTP service plumbing shared by opencvm's services (the attestation service, the key
//! vault): a runtime and a listener (HTTPS with rustls when given a certificate), a
//! per-request time limit, bearer credentials, and `{"error": {"code", "message"}}`
//! bodies.
//!
//! Limits against clients that hold resources: at most [`MAX_CONNECTIONS`] connections
//! at once and [`MAX_CONNECTIONS_PER_ADDRESS`] from one address (more are closed at
//! once); headers within [`HEADER_TIMEOUT`]; a body must keep arriving
//! ([`BODY_STALL_TIMEOUT`] without a byte ends it) and, after [`BODY_GRACE`], at
//! [`BODY_MIN_RATE`] on average ([`body_deadline`]); routes that need a credential check
//! it before reading a body ([`authenticate_first`]). Each request carries its peer
//! address ([`Peer`]).

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod error;

pub use error::ApiError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many connections are served at once; further ones wait in the listen backlog
/// until one closes.
pub const MAX_CONNECTIONS: usize = 512;

/// How many connections one client address may hold at once; further ones are closed
/// as soon as they are accepted, so one client cannot take every slot.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// How long a client may take to send a request's headers (so slow or silent clients
/// cannot hold connections), and to finish a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may pause without a byte arriving.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long, a body must have arrived at [`BODY_MIN_RATE`] on average.
pub const BODY_GRACE: Duration = Duration::from_secs(2);
/// The slowest average rate a body may arrive at after [`BODY_GRACE`] (bytes/s).
pub const BODY_MIN_RATE: u64 = 16 * 1024;

/// The address a request came from (a request extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Connection limits of a listener.
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max_connections: usize,
    max_per_address: usize,
    header_timeout: Duration,
}

const LIMITS: ConnLimits = ConnLimits {
    max_connections: MAX_CONNECTIONS,
    max_per_address: MAX_CONNECTIONS_PER_ADDRESS,
    header_timeout: HEADER_TIMEOUT,
};

/// Connections held per client address.
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back when dropped.
struct AddressSlot(Arc<PerAddress>, std::net::IpAddr);

impl PerAddress {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.0.lock()
            && let Some(n) = m.get_mut(&self.1)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// A TLS certificate chain and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The service could not start.
    #[error("{0}")]
    Service(String),
}

/// The credential a request presents (`Authorization: Bearer ...`): the one extractor
/// the services take a caller's credential with, before their contract's access check
/// turns it into a caller (a role in a vault, a provider's administrator). Kept out of
/// `Debug` and overwritten when dropped.
#[derive(Clone, Default)]
pub struct Credential(Option<zeroize::Zeroizing<String>>);

impl Credential {
    /// A request that presents none.
    pub fn none() -> Self {
        Credential(None)
    }

    /// The bearer credential, if the request presents one.
    pub fn bearer(&self) -> Option<&str> {
        self.0.as_ref().map(|c| c.as_str())
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "Credential(<redacted>)",
            None => "Credential(none)",
        })
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Credential {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Credential(
            bearer(&parts.headers).map(|b| zeroize::Zeroizing::new(b.to_string())),
        ))
    }
}

/// The credential of `Authorization: Bearer ...`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A JSON error response: `{"error": {"code", "message"}}`.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// What went wrong reading a body: `(status, code, message)` — 413 `body_too_large`
/// when over `limit`, else 400 with `bad_code`.
pub fn body_rejection(
    r: Result<Bytes, BytesRejection>,
    limit: usize,
    bad_code: &'static str,
) -> Result<Bytes, (u16, &'static str, String)> {
    r.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            (
                413,
                "body_too_large",
                format!("request bodies are limited to {limit} bytes"),
            )
        } else {
            (400, bad_code, "unreadable request body".to_string())
        }
    })
}

/// The services' rule for blocking work has two tools, both keeping the request's span
/// (so what the work logs carries the request id): a handler's whole operation that
/// owns its inputs goes to tokio's blocking pool ([`blocking`]); a blocking step inside
/// synchronous code that borrows (a KDS fetch in the middle of an appraisal) runs here:
/// on a multi-threaded runtime the runtime moves its other tasks off this worker
/// meanwhile (`block_in_place`); elsewhere `f` just runs.
pub fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Blocking work that owns what it needs (`'static`), on tokio's blocking pool, the
/// request's span kept: the runtime's workers stay free for I/O while it waits.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::logged("internal", e))
}

/// The response header that carries the request's id, as its log lines do.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A fresh request id: 16 lower-case hex digits.
fn request_id() -> String {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // No randomness: a counter still tells this process's requests apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        b = NEXT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_be_bytes();
    }
    hex::encode(b)
}

/// Middleware, outermost: gives each request an id, answered in [`REQUEST_ID_HEADER`],
/// and a `request` span (id, method, path; never a query, a body or a header) that
/// every log line written while serving it carries, blocking work included when it
/// runs in the span. Logs every answer at DEBUG and a server error (5xx) at WARN.
pub async fn request_context(req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = request_id();
    let path: String = req.uri().path().chars().take(200).collect();
    // At ERROR, the lowest level: its fields reach every line whatever level is kept.
    let span = tracing::error_span!("request", request_id = %id, method = %req.method(), %path);
    let started = std::time::Instant::now();
    let mut r = next.run(req).instrument(span.clone()).await;
    let status = r.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if r.status().is_server_error() {
            tracing::warn!(status, micros, "answered with a server error");
        } else {
            tracing::debug!(status, micros, "answered");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// Middleware: answers 503 `timeout` after [`REQUEST_TIMEOUT`], turns the framework's
/// own plain-text refusals (a path segment that is not UTF-8, say) into JSON errors,
/// and marks every response `Cache-Control: no-store` (tokens, keys and credentials
/// must not be cached). Server errors are logged by [`request_context`].
pub async fn limits(req: Request, next: Next) -> Response {
    let r = tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await;
    match r {
        Ok(r) => {
            let json = r
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let status = r.status();
            let mut r = if (status.is_client_error() || status.is_server_error()) && !json {
                let code = status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace([' ', '-'], "_");
                error(
                    status.as_u16(),
                    &code,
                    "the request was refused before it reached the service",
                )
            } else {
                r
            };
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => error(503, "timeout", "the request took too long"),
    }
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

/// Serves `app` (HTTP/1.1, over TLS with `acceptor`): at most `limits.max_connections`
/// at once and `limits.max_per_address` from one address, each request's headers (and
/// the TLS handshake) within `limits.header_timeout`, each request tagged with its
/// [`Peer`].
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_slot) = per_address.take(peer.ip(), limits.max_per_address) else {
            // This address holds its share already: close at once.
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                req
            },
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = http.serve_connection(io, service).await;
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = http.serve_connection(io, service).await;
                }
            }
        });
    }
}

/// How request bodies must arrive.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// The largest body.
    pub max: usize,
    /// The longest pause without a byte.
    pub stall: Duration,
    /// How long before the average rate is enforced.
    pub grace: Duration,
    /// The slowest average rate after `grace` (bytes/s).
    pub min_rate: u64,
}

impl BodyLimits {
    /// Bodies up to `max` bytes, with [`BODY_STALL_TIMEOUT`], [`BODY_GRACE`] and
    /// [`BODY_MIN_RATE`].
    pub fn new(max: usize) -> Self {
        BodyLimits {
            max,
            stall: BODY_STALL_TIMEOUT,
            grace: BODY_GRACE,
            min_rate: BODY_MIN_RATE,
        }
    }
}

/// Middleware: reads the request body within `limits` (a pause longer than `stall`, or
/// an average below `min_rate` after `grace`, ends it with 408 `body_too_slow`; more than
/// `max` bytes is 413 `body_too_large`), then hands the request on with the body in
/// memory.
pub async fn body_deadline(limits: BodyLimits, req: Request, next: Next) -> Response {
    let BodyLimits {
        max: limit,
        stall,
        grace,
        min_rate,
    } = limits;
    use http_body_util::BodyExt as _;
    let (parts, mut body) = req.into_parts();
    let started = tokio::time::Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return error(408, "body_too_slow", "the request body stopped arriving"),
            Ok(None) => break,
            Ok(Some(Err(_))) => return error(400, "bad_request", "unreadable request body"),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return error(
                    413,
                    "body_too_large",
                    &format!("request bodies are limited to {limit} bytes"),
                );
            }
            buf.extend_from_slice(&data);
        }
        let elapsed = started.elapsed();
        if elapsed > grace {
            let rate = u128::from(min_rate) * elapsed.as_millis() / 1000;
            if (buf.len() as u128) < rate {
                return error(
                    408,
                    "body_too_slow",
                    &format!("request bodies must arrive at {min_rate} bytes/s or faster"),
                );
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
        .await
}

/// Bodies up to this size are read before the credential is checked (they cost little);
/// larger ones, and bodies of unknown size, only after ([`authenticate_first`]).
pub const PREAUTH_BODY: u64 = 16 * 1024;

/// Whether a request's body is large enough (or of unknown size) that its credential
/// must be checked before it is read.
pub fn large_body(parts: &axum::http::request::Parts) -> bool {
    use axum::http::Method;
    if matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    ) {
        return false;
    }
    match parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => n > PREAUTH_BODY,
        None => true,
    }
}

/// Middleware: refuses, with 401 and before any of its body is read, a request to a
/// route `needs_credential` says needs one when `authenticated` does not accept its
/// credential. Services put this in front of [`body_deadline`], so an unauthenticated
/// client cannot make them read large bodies.
pub async fn authenticate_first(check: BodyGate, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if !check(&parts) {
        return error(401, "unauthorized", "a valid credential is required");
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Decides, from a request's head alone, whether its body may be read: the credential
/// check [`authenticate_first`] runs before a large body.
pub type BodyGate = Arc<dyn Fn(&axum::http::request::Parts) -> bool + Send + Sync>;

/// Finishes a service's `routes` with the edge every service shares, outermost last:
/// JSON 404 and 405 answers for unknown paths and methods; bodies of at most
/// `max_body` bytes that must arrive promptly ([`body_deadline`]); a large body read
/// only once `gate` admits the request's head ([`authenticate_first`]); the request
/// deadline, JSON for the framework's own refusals and `no-store` ([`limits`]).
/// [`run`] adds the request id and span around it all.
pub fn api_router<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    max_body: usize,
    gate: BodyGate,
) -> Router<S> {
    routes
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(move |req, next| {
            body_deadline(BodyLimits::new(max_body), req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            authenticate_first(gate.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(limits))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

/// Builds a multi-threaded runtime, binds `listen`, calls `build` with the bound
/// address and its base URL (`http://` or `https://`) to make the router, and serves
/// it (HTTPS with `tls`) until the process ends.
pub fn run(
    listen: &str,
    tls: Option<TlsFiles>,
    build: impl FnOnce(SocketAddr, String) -> Result<Router, ServeError>,
) -> Result<(), ServeError> {
    let acceptor = tls.as_ref().map(tls_acceptor).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let app = build(addr, format!("{scheme}://{addr}"))?
            .layer(axum::middleware::from_fn(request_context));
        serve(listener, acceptor, app, LIMITS).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_credential_extractor_reads_the_bearer_and_hides_it() {
        use axum::extract::FromRequestParts as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let extract = |auth: Option<&str>| {
            let mut req = axum::http::Request::builder().uri("/");
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            rt.block_on(Credential::from_request_parts(&mut parts, &()))
                .unwrap()
        };
        let c = extract(Some("Bearer s3cret "));
        assert_eq!(c.bearer(), Some("s3cret"));
        assert_eq!(format!("{c:?}"), "Credential(<redacted>)");
        assert_eq!(extract(Some("Basic s3cret")).bearer(), None);
        assert_eq!(extract(None).bearer(), None);
        assert_eq!(format!("{:?}", Credential::none()), "Credential(none)");
    }

    /// A server on 127.0.0.1:0 with `limits`, answering `GET /` with "ok".
    fn server(limits: ConnLimits) -> SocketAddr {
        serve_app(
            limits,
            Box::new(|| Router::new().route("/", axum::routing::get(|| async { "ok" }))),
        )
    }

    /// Serves the router `app` makes on 127.0.0.1:0 (on its own runtime) with `limits`.
    fn serve_app(limits: ConnLimits, app: Box<dyn FnOnce() -> Router + Send>) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let _ = serve(listener, None, app(), limits).await;
            });
        });
        addr
    }

    fn get(s: &mut std::net::TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let addr = server(ConnLimits {
            max_connections: 8,
            max_per_address: 8,
            header_timeout: Duration::from_millis(300),
        });
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // Without the header timeout this read would wait for ever (the guard below
        // only turns a hang into a failure).
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = Vec::new();
        let r = slow.read_to_end(&mut buf);
        assert!(r.is_ok(), "the connection was not closed: {r:?}");
        // A well-behaved client is still served.
        let mut ok = std::net::TcpStream::connect(addr).unwrap();
        assert!(get(&mut ok).ends_with("ok"));
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let addr = server(ConnLimits {
            max_connections: 16,
            max_per_address: 2,
            header_timeout: Duration::from_secs(60),
        });
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // A third from the same address is closed without an answer...
        let mut third = std::net::TcpStream::connect(addr).unwrap();
        let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        third
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut out = Vec::new();
        let _ = third.read_to_end(&mut out);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        // ...while another address (127.0.0.2 is loopback too) is served.
        let mut c = connect_from([127, 0, 0, 2], addr);
        assert!(get(&mut c).ends_with("ok"));
    }

    /// A server echoing the body's length behind `body_deadline(limits)` and, for
    /// `/private`, `authenticate_first` accepting the bearer `ok`.
    fn body_server(limits: BodyLimits) -> SocketAddr {
        serve_app(
            LIMITS,
            Box::new(move || {
                let check: Arc<dyn Fn(&axum::http::request::Parts) -> bool + Send + Sync> =
                    Arc::new(|p| {
                        p.uri.path() != "/private"
                            || p.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())
                                == Some(b"Bearer ok")
                    });
                Router::new()
                    .route(
                        "/{*p}",
                        axum::routing::post(|b: Bytes| async move { b.len().to_string() }),
                    )
                    .layer(axum::middleware::from_fn(move |req, next| {
                        body_deadline(limits, req, next)
                    }))
                    .layer(axum::middleware::from_fn(move |req, next| {
                        authenticate_first(check.clone(), req, next)
                    }))
            }),
        )
    }

    fn status_of(reply: &str) -> &str {
        reply.split(' ').nth(1).unwrap_or_default()
    }

    #[test]
    fn slow_and_stalled_bodies_are_cut_off_and_credentials_come_first() {
        let limits = BodyLimits {
            max: 1 << 20,
            stall: Duration::from_millis(600),
            grace: Duration::from_millis(300),
            min_rate: 1000,
        };
        let addr = body_server(limits);
        let send = |path: &str, auth: &str, len: usize, chunks: &[(usize, u64)]| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(
                format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            for &(n, pause_ms) in chunks {
                std::thread::sleep(Duration::from_millis(pause_ms));
                if s.write_all(&vec![b'x'; n]).is_err() {
                    break;
                }
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        // A body that arrives promptly is read whole.
        let ok = send("/open", "", 5000, &[(5000, 0)]);
        assert_eq!(status_of(&ok), "200", "{ok}");
        assert!(ok.ends_with("5000"));
        // A body that stops arriving.
        let stalled = send("/open", "", 5000, &[(10, 0)]);
        assert_eq!(status_of(&stalled), "408", "{stalled}");
        assert!(stalled.contains("body_too_slow"));
        // A body that trickles: a byte at a time, never pausing long enough to stall.
        let trickle: Vec<(usize, u64)> = (0..20).map(|_| (1, 100)).collect();
        let slow = send("/open", "", 5000, &trickle);
        assert_eq!(status_of(&slow), "408", "{slow}");
        // Too large.
        let big = send("/open", "", (1 << 20) + 1, &[((1 << 20) + 1, 0)]);
        assert_eq!(status_of(&big), "413", "{big}");
        // A route that needs a credential refuses before reading a byte of the body
        // (had it waited for the body, the stall limit would have answered 408).
        let refused = send("/private", "", 1 << 20, &[]);
        assert_eq!(status_of(&refused), "401", "{refused}");
        let allowed = send("/private", "Authorization: Bearer ok\r\n", 3, &[(3, 0)]);
        assert_eq!(status_of(&allowed), "200", "{allowed}");
    }

    /// A TCP connection from a given local address.
    fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::from((ip, 0))).unwrap();
            sock.connect(to).await.unwrap()
        });
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    }

    #[test]
    fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let addr = server(ConnLimits {
            max_connections: 2,
            max_per_address: 8,
            header_timeout: Duration::from_secs(60),
        });
        // Two connections that send nothing hold both slots.
        let idle1 = std::net::TcpStream::connect(addr).unwrap();
        let _idle2 = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut third = std::net::TcpStream::connect(addr).unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 64];
        let waited = third.read(&mut buf);
        assert!(
            waited.is_err(),
            "a third connection was served while two held the slots: {waited:?}"
        );
        // One closes: the third is served.
        drop(idle1);
        third
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut out = String::new();
        third.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("ok"), "{out}");
    }
}
