//! HTTP service plumbing shared by opencvm's services (the attestation service, the key
//! vault): a runtime and a listener (HTTPS with rustls when given a certificate), a
//! per-request time limit, bearer credentials, and `{"error": {"code", "message"}}`
//! bodies.

#![forbid(unsafe_code)]

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

/// How long a client may take to send a request's headers (so slow or silent clients
/// cannot hold connections), and to finish a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection limits of a listener.
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max_connections: usize,
    header_timeout: Duration,
}

const LIMITS: ConnLimits = ConnLimits {
    max_connections: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
};

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

/// Middleware: answers 503 `timeout` after [`REQUEST_TIMEOUT`], turns the framework's
/// own plain-text refusals (a path segment that is not UTF-8, say) into JSON errors,
/// notes every 5xx in the service log (stderr: method, path, status; never a body or a
/// header), and marks every response `Cache-Control: no-store` (tokens, keys and
/// credentials must not be cached).
pub async fn limits(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(200).collect();
    let r = tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await;
    let status = r
        .as_ref()
        .map_or(StatusCode::SERVICE_UNAVAILABLE, |r| r.status());
    if status.is_server_error() {
        eprintln!("{method} {path}: {status}");
    }
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
/// at once, and each request's headers (and the TLS handshake) within
/// `limits.header_timeout`.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
        let app = build(addr, format!("{scheme}://{addr}"))?;
        serve(listener, acceptor, app, LIMITS).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server on 127.0.0.1:0 with `limits`, answering `GET /` with "ok".
    fn server(limits: ConnLimits) -> SocketAddr {
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
                let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
                let _ = serve(listener, None, app, limits).await;
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
    fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let addr = server(ConnLimits {
            max_connections: 2,
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
