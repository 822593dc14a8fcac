//! The HTTP client stack opencvm's typed clients (`keyvault-client`, ...) share: one
//! blocking client (ureq over rustls with aws-lc-rs, the project's one crypto backend),
//! trusting the Mozilla roots or only given CA certificates; a bearer credential per
//! call; JSON request and response bodies, overwritten in memory once used (they may
//! carry keys and credentials); and a service's refusal (`{"error": {"code",
//! "message", "detail"?}}`) as [`ClientError::Refused`].

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroizing;

/// How long one call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest response body read.
pub const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered with a refusal.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The service's stable code.
        code: String,
        /// Its message.
        message: String,
        /// Extra detail, if any.
        detail: Option<Value>,
    },
    /// The service could not be reached, or the exchange broke off.
    #[error("{method} {url}: {source}")]
    Transport {
        /// The request's method.
        method: &'static str,
        /// The request's URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The answer is not what the contract says.
    #[error("{method} {url}: the answer ({status}) is not the expected JSON: {message}")]
    Unexpected {
        /// The request's method.
        method: &'static str,
        /// The request's URL.
        url: String,
        /// Its status.
        status: u16,
        /// What is wrong.
        message: String,
    },
    /// A request body could not be encoded.
    #[error("encoding the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The CA certificates are unusable.
    #[error("CA certificates: {0}")]
    Certificates(String),
}

impl ClientError {
    /// The refusal's HTTP status, for a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The refusal's code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A refusal as the service sent it: `{"error": {"code", "message", "detail"?}}`.
    pub fn body(&self) -> Option<Value> {
        let ClientError::Refused {
            code,
            message,
            detail,
            ..
        } = self
        else {
            return None;
        };
        serde_json::to_value(api_contract::ErrorResponse::new(
            code,
            message,
            detail.clone(),
        ))
        .ok()
    }
}

/// An HTTP(S) agent: rustls with aws-lc-rs, trusting the Mozilla roots, or only the
/// certificates in `ca` (PEM; one or more) when given. Error statuses are answers, not
/// failures; each call must finish within [`CALL_TIMEOUT`].
pub fn agent(ca: Option<&[u8]>) -> Result<ureq::Agent, ClientError> {
    agent_timed(ca, Some(CALL_TIMEOUT), CALL_TIMEOUT, None)
}

/// [`agent`] for calls whose answer comes only when long work is done (a VM's disk
/// encrypted on its host): the connection within [`CALL_TIMEOUT`], the whole call
/// within `total`.
pub fn long_call_agent(ca: Option<&[u8]>, total: Duration) -> Result<ureq::Agent, ClientError> {
    agent_timed(ca, Some(total), total, None)
}

/// [`agent`] for answers that stream while work goes on (a VM's boot, reported step
/// by step): the connection and the answer's head must come within [`CALL_TIMEOUT`],
/// and the whole body within `body`.
pub fn streaming_agent(ca: Option<&[u8]>, body: Duration) -> Result<ureq::Agent, ClientError> {
    agent_timed(ca, None, CALL_TIMEOUT, Some(body))
}

fn agent_timed(
    ca: Option<&[u8]>,
    global: Option<Duration>,
    response: Duration,
    body: Option<Duration>,
) -> Result<ureq::Agent, ClientError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots = match ca {
        None => RootCerts::WebPki,
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Certificates(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientError::Certificates("no PEM certificate".into()));
            }
            RootCerts::Specific(Arc::new(
                certs
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect(),
            ))
        }
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(roots)
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(global)
        .timeout_connect(Some(CALL_TIMEOUT))
        .timeout_recv_response(Some(response))
        .timeout_recv_body(body)
        .build()
        .into())
}

/// A path segment, percent-encoded: anything but RFC 3986's unreserved characters is
/// escaped, so a name cannot add segments, a query or a fragment.
pub fn segment(s: &str) -> String {
    // `.` and `..` would be taken as a path's dot segments (and resolved away by a
    // proxy that normalizes paths): escaped, they are names.
    if s == "." || s == ".." {
        return "%2E".repeat(s.len());
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request this client will not send.
fn unexpected_request(method: &'static str, url: &str, why: &str) -> ClientError {
    ClientError::Unexpected {
        method,
        url: url.to_string(),
        status: 0,
        message: why.to_string(),
    }
}

/// HTTP methods the services use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One service's base URL, reached with one agent and one bearer credential.
pub struct Transport {
    agent: ureq::Agent,
    base: String,
    credential: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Calls to `base` (`https://host:port`, no trailing slash needed) with `agent`,
    /// presenting `credential` (if any) as `Authorization: Bearer`.
    pub fn new(agent: ureq::Agent, base: &str, credential: Option<String>) -> Self {
        Transport {
            agent,
            base: base.trim_end_matches('/').to_string(),
            credential: credential.map(Zeroizing::new),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with `body` (JSON) if given; the answer's JSON as `T` on a 2xx
    /// status, a refusal as [`ClientError::Refused`]. An empty 2xx answer is JSON
    /// `null` (so `T = ()` reads a 204).
    pub fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call_with(method, path, body, &[])
    }

    /// [`Transport::call`] with extra request headers (`Idempotency-Key`, say).
    pub fn call_with<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let m = method.name();
        let transport = |source| ClientError::Transport {
            method: m,
            url: url.clone(),
            source: Box::new(source),
        };
        let auth = self
            .credential
            .as_ref()
            .map(|c| Zeroizing::new(format!("Bearer {}", c.as_str())));
        if method == Method::Get && body.is_some() {
            return Err(unexpected_request(m, &url, "a GET has no body"));
        }
        let mut resp = match (method, body) {
            (Method::Get | Method::Delete, None) => {
                let mut req = match method {
                    Method::Get => self.agent.get(&url),
                    _ => self.agent.delete(&url),
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a.as_str());
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            (_, body) => {
                let bytes = Zeroizing::new(match body {
                    Some(b) => serde_json::to_vec(b).map_err(ClientError::Encode)?,
                    None => b"{}".to_vec(),
                });
                let mut req = match method {
                    Method::Put => self.agent.put(&url),
                    Method::Patch => self.agent.patch(&url),
                    Method::Delete => self.agent.delete(&url).force_send_body(),
                    Method::Post | Method::Get => self.agent.post(&url),
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a.as_str());
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.header("Content-Type", "application/json")
                    .send(&bytes[..])
            }
        }
        .map_err(transport)?;
        let status = resp.status().as_u16();
        let text = Zeroizing::new(
            resp.body_mut()
                .with_config()
                .limit(MAX_RESPONSE)
                .read_to_string()
                .map_err(transport)?,
        );
        let unexpected = |message: String| ClientError::Unexpected {
            method: m,
            url: url.clone(),
            status,
            message,
        };
        if !(200..300).contains(&status) {
            let e: api_contract::ErrorResponse = serde_json::from_str(&text).map_err(|_| {
                unexpected("a refusal without {\"error\": {\"code\", \"message\"}}".into())
            })?;
            return Err(ClientError::Refused {
                status,
                code: e.error.code,
                message: e.error.message,
                detail: e.error.detail,
            });
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            text.as_str()
        };
        serde_json::from_str(text).map_err(|e| unexpected(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(segment("disk-01"), "disk-01");
        assert_eq!(segment("../x?y#z"), "..%2Fx%3Fy%23z");
        assert_eq!(segment("é"), "%C3%A9");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
        assert_eq!(segment("..."), "...");
    }

    #[test]
    fn a_refusal_keeps_its_body_and_the_transport_hides_its_credential() {
        let e = ClientError::Refused {
            status: 403,
            code: "forbidden".into(),
            message: "no".into(),
            detail: Some(serde_json::json!({"x": 1})),
        };
        assert_eq!(e.status(), Some(403));
        assert_eq!(
            e.body(),
            Some(
                serde_json::json!({"error": {"code": "forbidden", "message": "no", "detail": {"x": 1}}})
            )
        );
        let t = Transport::new(
            ureq::Agent::new_with_defaults(),
            "http://h/",
            Some("s3cret".into()),
        );
        assert_eq!(t.base(), "http://h");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
