//! Attestation tokens from configured authorities: the issuer must be one the vault was
//! told to trust; its signing keys come from OpenID Connect discovery and its JWKS,
//! cached and refreshed when a token names a key the cache does not have (rotation).
//!
//! Fetches are rate-limited per issuer whatever their outcome (a failed fetch is not
//! retried for `min_refresh` either, so tokens naming made-up issuers' keys or a dead
//! authority cannot make the vault hammer it), and single-flight (concurrent requests
//! for the same issuer wait for one fetch). Why a fetch failed goes to the service log;
//! callers only learn that the keys were unavailable.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use jose::{Alg, Jwks, JwtError, VerifyOptions};
use serde_json::{Map, Value};

/// Algorithms a token may be signed with: never `none` nor HMAC.
pub const ALLOWED_ALGS: [Alg; 7] = Alg::ALL;

/// The largest discovery document or JWKS fetched.
const MAX_DOC: u64 = 256 * 1024;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or no `iss`.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The issuer is not a configured authority.
    #[error("issuer {0:?} is not a configured authority")]
    UnknownIssuer(String),
    /// The authority's keys could not be fetched (why is in the service log, not here:
    /// an upstream's answer is not the caller's business).
    #[error("could not fetch the signing keys of {issuer}")]
    Keys {
        /// The authority.
        issuer: String,
        /// Why (for the service log).
        reason: String,
    },
    /// Signature, algorithm, key or lifetime check failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

impl TokenError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnknownIssuer(_) => "token_unknown_issuer",
            TokenError::Keys { .. } => "token_keys_unavailable",
            TokenError::Jwt(e) => match e {
                JwtError::Unsigned => "token_unsigned",
                JwtError::SymmetricAlg(_) => "token_alg_symmetric",
                JwtError::AlgNotAllowed(_) => "token_alg_not_allowed",
                JwtError::UnknownKid(_) => "token_unknown_key",
                JwtError::BadSignature | JwtError::KeyAlgMismatch { .. } => "token_bad_signature",
                JwtError::Expired(_) => "token_expired",
                JwtError::NotYetValid(_) => "token_not_yet_valid",
                JwtError::IssuerMismatch(_) => "token_unknown_issuer",
                JwtError::CriticalHeader(_) => "token_crit_unsupported",
                JwtError::KeyUse { .. } => "token_bad_key_use",
                JwtError::IssuedInFuture(_) => "token_issued_in_future",
                _ => "token_malformed",
            },
        }
    }
}

/// A verified token.
#[derive(Clone, Debug)]
pub struct ValidToken {
    /// The authority that issued it (as configured).
    pub issuer: String,
    /// Its claims.
    pub claims: Map<String, Value>,
    /// `jti`, if any (for the audit log).
    pub jti: Option<String>,
}

/// What is known of one issuer's keys.
#[derive(Default)]
struct IssuerKeys {
    jwks: Option<Arc<Jwks>>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    in_flight: bool,
    /// Callers waiting for the fetch in flight (tests watch it).
    #[cfg(test)]
    waiting: usize,
}

/// Fetches a document; a function so tests and other transports can stand in.
pub type Fetch = dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync;

/// The configured authorities and their cached keys.
pub struct Authorities {
    issuers: Vec<String>,
    fetch: Box<Fetch>,
    ttl: Duration,
    min_refresh: Duration,
    leeway: i64,
    cache: Mutex<HashMap<String, IssuerKeys>>,
    fetched: Condvar,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// Whether `url` may be fetched: HTTPS, or HTTP to a loopback host (tests, `cvm up`).
pub fn fetchable(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// An HTTP(S) fetcher with timeouts and a size limit (rustls with aws-lc-rs, Mozilla
/// roots).
pub fn http_fetch() -> Box<Fetch> {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(RootCerts::WebPki)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    Box::new(move |url: &str| {
        if !fetchable(url) {
            return Err(format!(
                "{url}: only https (or http to loopback) is fetched"
            ));
        }
        let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
        resp.body_mut()
            .with_config()
            .limit(MAX_DOC)
            .read_to_vec()
            .map_err(|e| e.to_string())
    })
}

impl Authorities {
    /// Trust tokens from `issuers`, fetching their keys with `fetch`.
    pub fn new(issuers: &[String], fetch: Box<Fetch>) -> Self {
        Authorities {
            issuers: issuers.iter().map(|i| normalize(i)).collect(),
            fetch,
            ttl: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(10),
            leeway: 60,
            cache: Mutex::new(HashMap::new()),
            fetched: Condvar::new(),
        }
    }

    /// Refetch an authority's keys for an unknown `kid` at most this often (default
    /// 10 s), so tokens naming made-up keys cannot make the vault hammer the authority.
    pub fn with_min_refresh(mut self, d: Duration) -> Self {
        self.min_refresh = d;
        self
    }

    /// Allowed clock skew for `exp`/`nbf` in seconds (default 60).
    pub fn with_leeway(mut self, seconds: i64) -> Self {
        self.leeway = seconds;
        self
    }

    /// The configured issuers.
    pub fn issuers(&self) -> &[String] {
        &self.issuers
    }

    fn fetch_jwks(&self, issuer: &str) -> Result<Jwks, TokenError> {
        let keys_err = |reason: String| TokenError::Keys {
            issuer: issuer.to_string(),
            reason,
        };
        let conf: Value = serde_json::from_slice(
            &(self.fetch)(&format!("{issuer}/.well-known/openid-configuration"))
                .map_err(keys_err)?,
        )
        .map_err(|e| keys_err(format!("discovery document: {e}")))?;
        if conf
            .get("issuer")
            .and_then(Value::as_str)
            .map(normalize)
            .as_deref()
            != Some(issuer)
        {
            return Err(keys_err(
                "the discovery document names another issuer".into(),
            ));
        }
        let uri = conf
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| keys_err("the discovery document has no jwks_uri".into()))?;
        Jwks::from_json(&(self.fetch)(uri).map_err(keys_err)?).map_err(|e| keys_err(e.to_string()))
    }

    fn keys(&self, issuer: &str, refresh: bool) -> Result<Arc<Jwks>, TokenError> {
        let unavailable = |reason: String| TokenError::Keys {
            issuer: issuer.to_string(),
            reason,
        };
        let poisoned = || unavailable("key cache lock poisoned".into());
        let mut cache = self.cache.lock().map_err(|_| poisoned())?;
        loop {
            let k = cache.entry(issuer.to_string()).or_default();
            if k.in_flight {
                // Single flight: someone is fetching this issuer's keys; wait for them.
                #[cfg(test)]
                {
                    k.waiting += 1;
                }
                cache = self.fetched.wait(cache).map_err(|_| poisoned())?;
                #[cfg(test)]
                if let Some(k) = cache.get_mut(issuer) {
                    k.waiting -= 1;
                }
                continue;
            }
            let fresh = k.fetched.is_some_and(|f| f.elapsed() < self.ttl);
            let recently_tried = k
                .last_attempt
                .is_some_and(|a| a.elapsed() < self.min_refresh);
            match (&k.jwks, fresh, recently_tried) {
                (Some(j), true, _) if !refresh => return Ok(j.clone()),
                // A refresh (or a stale cache) is not tried again so soon, success or not.
                (Some(j), _, true) => return Ok(j.clone()),
                (None, _, true) => {
                    return Err(unavailable(
                        k.last_error
                            .clone()
                            .unwrap_or_else(|| "not fetched yet".into()),
                    ));
                }
                _ => {}
            }
            k.in_flight = true;
            k.last_attempt = Some(Instant::now());
            break;
        }
        drop(cache);
        let result = self.fetch_jwks(issuer);
        let mut cache = self.cache.lock().map_err(|_| poisoned())?;
        let k = cache.entry(issuer.to_string()).or_default();
        k.in_flight = false;
        let out = match result {
            Ok(jwks) => {
                let jwks = Arc::new(jwks);
                k.jwks = Some(jwks.clone());
                k.fetched = Some(Instant::now());
                k.last_error = None;
                Ok(jwks)
            }
            Err(e) => {
                let reason = match &e {
                    TokenError::Keys { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                tracing::warn!(%issuer, %reason, "fetching an authority's signing keys failed");
                k.last_error = Some(reason);
                match &k.jwks {
                    // Keep serving the keys we have while the authority is down.
                    Some(j) if refresh => Ok(j.clone()),
                    _ => Err(e),
                }
            }
        };
        self.fetched.notify_all();
        out
    }

    /// Validates `token` at `now` (Unix seconds): issuer configured, signature by a key
    /// of its JWKS with an allowed algorithm, `exp`/`nbf` within the leeway.
    pub fn validate(&self, token: &str, now: i64) -> Result<ValidToken, TokenError> {
        let (_, claims) = jose::peek(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .map(normalize)
            .ok_or_else(|| TokenError::Malformed("no iss claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| **i == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.clone()))?
            .clone();
        let opts = VerifyOptions {
            algs: ALLOWED_ALGS.to_vec(),
            issuer: None,
            now,
            leeway: self.leeway,
        };
        let jwks = self.keys(&issuer, false)?;
        let verified = match jose::verify(token, &jwks, &opts) {
            // A key we have not seen: the authority may have rotated; look again (at
            // most every `min_refresh`).
            Err(JwtError::UnknownKid(_)) => {
                jose::verify(token, &*self.keys(&issuer, true)?, &opts)?
            }
            other => other?,
        };
        let jti = verified
            .claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(ValidToken {
            issuer,
            claims: verified.claims,
            jti,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ISSUER: &str = "https://attest.invalid";

    fn token_from(issuer: &str) -> String {
        let h = B64URL.encode(br#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let c = B64URL.encode(format!(r#"{{"iss":"{issuer}","exp":9999999999}}"#));
        format!("{h}.{c}.AAAA")
    }

    fn failing(calls: Arc<AtomicUsize>, delay: Duration) -> Box<Fetch> {
        Box::new(move |_url: &str| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
            Err("upstream said: secret internal detail".to_string())
        })
    }

    /// A dead authority is asked at most once per `min_refresh`, however many tokens
    /// arrive, and the upstream's words never reach the caller.
    #[test]
    fn failed_fetches_are_rate_limited_and_not_echoed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let a = Authorities::new(&[ISSUER.into()], failing(calls.clone(), Duration::ZERO))
            .with_min_refresh(Duration::from_secs(60));
        for _ in 0..20 {
            let e = a.validate(&token_from(ISSUER), 1).unwrap_err();
            assert_eq!(e.code(), "token_keys_unavailable");
            assert!(!e.to_string().contains("secret internal detail"), "{e}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// An authority serving a JWKS that the test can change, counting JWKS fetches;
    /// each JWKS fetch waits until `open` is true.
    struct Upstream {
        jwks: Mutex<Jwks>,
        fetches: AtomicUsize,
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Upstream {
        fn new(keys: Vec<jose::Jwk>, open: bool) -> Arc<Self> {
            Arc::new(Upstream {
                jwks: Mutex::new(Jwks { keys }),
                fetches: AtomicUsize::new(0),
                open: Mutex::new(open),
                opened: Condvar::new(),
            })
        }

        fn fetch(self: Arc<Self>) -> Box<Fetch> {
            Box::new(move |url: &str| {
                if url == format!("{ISSUER}/.well-known/openid-configuration") {
                    let conf =
                        serde_json::json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/keys")});
                    return Ok(conf.to_string().into_bytes());
                }
                self.fetches.fetch_add(1, Ordering::SeqCst);
                let mut open = self.open.lock().unwrap();
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
                drop(open);
                Ok(serde_json::to_vec(&*self.jwks.lock().unwrap()).unwrap())
            })
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    fn signer() -> jose::TokenSigner {
        jose::TokenSigner::generate(Alg::ES384, "authority test", 0, 1).unwrap()
    }

    fn signed(signer: &jose::TokenSigner) -> String {
        let mut claims = Map::new();
        claims.insert("iss".into(), ISSUER.into());
        claims.insert("exp".into(), 9_999_999_999i64.into());
        signer.sign(&claims, &format!("{ISSUER}/keys")).unwrap()
    }

    /// Concurrent requests for one issuer share one fetch, and all of them get its
    /// keys: while one caller's fetch is held open, the others wait for it (rather than
    /// being refused as "recently tried", which rate limiting alone would do).
    #[test]
    fn fetches_are_single_flight() {
        const CALLERS: usize = 8;
        let key = signer();
        let up = Upstream::new(vec![key.jwk()], false);
        let a = Arc::new(
            Authorities::new(&[ISSUER.into()], up.clone().fetch())
                .with_min_refresh(Duration::from_secs(60)),
        );
        let token = signed(&key);
        let threads: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (a, token) = (a.clone(), token.clone());
                std::thread::spawn(move || a.validate(&token, 1).map(|_| ()).map_err(|e| e.code()))
            })
            .collect();
        // Hold the fetch until every other caller waits for it (the deadline only
        // keeps a broken single flight from hanging the test; the asserts then fail).
        let waiting = || a.cache.lock().unwrap().get(ISSUER).map_or(0, |k| k.waiting);
        let deadline = Instant::now() + Duration::from_secs(20);
        while (up.fetches() == 0 || waiting() < CALLERS - 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        up.open();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
        assert_eq!(up.fetches(), 1);
    }

    /// A token naming a key the cached JWKS lacks makes the vault fetch the JWKS again
    /// (the authority rotated) once; another unknown key within `min_refresh` of that
    /// fetch does not.
    #[test]
    fn an_unknown_kid_refetches_once_per_window() {
        let (old, new, later) = (signer(), signer(), signer());
        let up = Upstream::new(vec![old.jwk()], true);
        let a = Authorities::new(&[ISSUER.into()], up.clone().fetch())
            .with_min_refresh(Duration::from_secs(60));
        a.validate(&signed(&old), 1).unwrap();
        a.validate(&signed(&old), 1).unwrap();
        assert_eq!(up.fetches(), 1, "a known kid is served from the cache");
        // Within the window of the first fetch an unknown kid is not fetched for.
        assert_eq!(
            a.validate(&signed(&new), 1).unwrap_err().code(),
            "token_unknown_key"
        );
        assert_eq!(up.fetches(), 1);
        // `min_refresh` later (the last attempt moved back), the authority has rotated.
        up.jwks.lock().unwrap().keys.push(new.jwk());
        let back_date = |a: &Authorities| {
            let mut cache = a.cache.lock().unwrap();
            let k = cache.get_mut(ISSUER).unwrap();
            k.last_attempt = k
                .last_attempt
                .and_then(|t| t.checked_sub(Duration::from_secs(61)));
        };
        back_date(&a);
        a.validate(&signed(&new), 1).unwrap();
        assert_eq!(up.fetches(), 2, "the unknown kid was fetched for, once");
        a.validate(&signed(&new), 1).unwrap();
        assert_eq!(up.fetches(), 2);
        // A second unknown kid within the window: no fetch, although the authority
        // has the key by now.
        up.jwks.lock().unwrap().keys.push(later.jwk());
        assert_eq!(
            a.validate(&signed(&later), 1).unwrap_err().code(),
            "token_unknown_key"
        );
        assert_eq!(up.fetches(), 2);
        // And once the window has passed, it is.
        back_date(&a);
        a.validate(&signed(&later), 1).unwrap();
        assert_eq!(up.fetches(), 3);
    }
}
