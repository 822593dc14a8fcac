//! Collateral from AMD KDS: an on-disk cache and a fetcher that fills it.
//!
//! [`CollateralCache`] keeps one file per [`KdsRequest`] under a directory, at the
//! request's [`cache_key`](KdsRequest::cache_key). Writes are atomic (a temporary file in
//! the same directory, `fsync`, `rename`), so a crash leaves either the old file or the
//! new one, never a partial one.
//!
//! [`Fetcher`] answers a request from the cache, and in [`FetchMode::Online`] falls back
//! to HTTPS: connect and overall timeouts, retries on connection errors, timeouts and 5xx
//! with exponential backoff, `Retry-After` (seconds, capped) on 429. A response is stored
//! only after a minimal check of its shape ([`validate_collateral`]): a DER certificate
//! for a VCEK, two PEM certificates for a `cert_chain`, a DER CRL for a CRL, at most
//! [`MAX_COLLATERAL_LEN`] bytes. That check is not verification: signatures, chains and
//! validity are the business of the modules that use the collateral.
//!
//! In [`FetchMode::Offline`] the fetcher never touches the network.
//!
//! HTTPS uses rustls with the aws-lc-rs provider and the Mozilla roots of `webpki-roots`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use der::Decode;

use crate::kds::{BodyFormat, KDS_BASE_URL, KdsRequest};

/// The largest collateral accepted, from the network or the cache. AMD's VCEKs are about
/// 1.4 KiB, a `cert_chain` about 4.5 KiB, a CRL a few KiB.
pub const MAX_COLLATERAL_LEN: usize = 64 * 1024;

/// What went wrong getting collateral. [`CollateralError::is_network`] tells failures to
/// reach or be answered by KDS apart from local (cache) problems and bad content.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    /// Offline, and the cache does not have it.
    #[error("{request} is not cached at {} and the fetcher is offline (KDS URL: {url})", path.display())]
    NotCached {
        /// What was asked for.
        request: String,
        /// Where KDS serves it.
        url: String,
        /// Where the cache looked.
        path: PathBuf,
    },
    /// Reading or writing the cache failed.
    #[error("collateral cache I/O error on {}: {source}", path.display())]
    CacheIo {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A cache key that is not a plain relative path (cannot happen for keys built by
    /// [`KdsRequest::cache_key`]).
    #[error("cache key {key:?} is not a safe relative path")]
    UnsafeCacheKey {
        /// The key.
        key: String,
    },
    /// Offline, and the cached file is not what it should be.
    #[error("cached {} is not valid {expected}: {reason}", path.display())]
    CorruptCache {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured base URL is unusable.
    #[error("KDS base URL {base:?} rejected: {reason}")]
    InvalidBaseUrl {
        /// The URL.
        base: String,
        /// Why.
        reason: String,
    },
    /// KDS answered with a status that retrying will not change (e.g. 404: no VCEK for
    /// this hardware ID and TCB).
    #[error("could not fetch {url}: HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Every attempt failed with a retryable error.
    #[error("could not fetch {url}: gave up after {attempts} attempt(s); last failure: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// How the last one failed.
        last: FetchFailure,
    },
    /// A failure that retrying will not fix (TLS, bad URL, redirect loop, ...).
    #[error("could not fetch {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The response body is larger than [`MAX_COLLATERAL_LEN`].
    #[error("response for {url} exceeds {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The response is not the kind of collateral asked for; nothing was cached.
    #[error("response for {url} is not valid {expected}: {reason}")]
    InvalidCollateral {
        /// The URL.
        url: String,
        /// What it should be.
        expected: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl CollateralError {
    /// Whether this is a failure to fetch (unreachable KDS, timeouts, HTTP errors, TLS),
    /// as opposed to a cache or content problem.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            CollateralError::HttpStatus { .. }
                | CollateralError::GaveUp { .. }
                | CollateralError::Transport { .. }
        )
    }
}

/// How one retryable attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// The server answered with this status (429 or 5xx).
    Status(u16),
    /// A connect or overall timeout expired.
    Timeout,
    /// The connection could not be made or broke.
    Connection(String),
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchFailure::Status(s) => write!(f, "HTTP {s}"),
            FetchFailure::Timeout => f.write_str("timed out"),
            FetchFailure::Connection(e) => write!(f, "connection error: {e}"),
        }
    }
}

fn format_name(format: BodyFormat) -> &'static str {
    match format {
        BodyFormat::DerCertificate => "DER X.509 certificate",
        BodyFormat::PemCertificates => "PEM certificate chain (2 certificates)",
        BodyFormat::DerCrl => "DER certificate revocation list",
    }
}

/// The DER certificates of a PEM text; each must parse as an X.509 certificate.
pub fn parse_pem_certificates(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8 text".to_owned())?;
    let certs = crate::pem::decode_blocks(text, "CERTIFICATE", crate::pem::Outside::Reject)?;
    for (i, der) in certs.iter().enumerate() {
        x509_cert::Certificate::from_der(der).map_err(|e| format!("certificate {}: {e}", i + 1))?;
    }
    Ok(certs)
}

/// Checks that `data` has the shape of `format` (see the module documentation).
/// Returns a description of the problem otherwise.
pub fn validate_collateral(format: BodyFormat, data: &[u8]) -> Result<(), String> {
    if data.len() > MAX_COLLATERAL_LEN {
        return Err(format!(
            "{} bytes, more than the {MAX_COLLATERAL_LEN}-byte limit",
            data.len()
        ));
    }
    match format {
        BodyFormat::DerCertificate => x509_cert::Certificate::from_der(data)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        BodyFormat::PemCertificates => match parse_pem_certificates(data)?.len() {
            2 => Ok(()),
            n => Err(format!("{n} certificate(s), expected 2")),
        },
        BodyFormat::DerCrl => x509_cert::crl::CertificateList::from_der(data)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

/// A directory of cached collateral.
#[derive(Debug, Clone)]
pub struct CollateralCache {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn cache_io(path: &Path) -> impl FnOnce(io::Error) -> CollateralError + '_ {
    move |source| CollateralError::CacheIo {
        path: path.to_owned(),
        source,
    }
}

impl CollateralCache {
    /// Opens (creating it if needed) the cache directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CollateralError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(cache_io(&dir))?;
        Ok(CollateralCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `req` is stored.
    pub fn path_for(&self, req: &KdsRequest) -> Result<PathBuf, CollateralError> {
        self.path_for_key(&req.cache_key())
    }

    /// Where a cache key is stored. The key must be relative, `/`-separated, and made of
    /// components of `[0-9A-Za-z_.-]` that do not start with `.`, so it cannot leave the
    /// directory or name a temporary file.
    pub fn path_for_key(&self, key: &str) -> Result<PathBuf, CollateralError> {
        let safe_component = |c: &str| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.len() <= 200
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if key.len() > 1024 || !key.split('/').all(safe_component) {
            return Err(CollateralError::UnsafeCacheKey {
                key: key.to_owned(),
            });
        }
        Ok(key.split('/').fold(self.dir.clone(), |p, c| p.join(c)))
    }

    /// The cached bytes of `req`, if any (at most [`MAX_COLLATERAL_LEN`] + 1 bytes are
    /// read, so an oversized file fails validation instead of filling memory).
    pub fn get(&self, req: &KdsRequest) -> Result<Option<Vec<u8>>, CollateralError> {
        let path = self.path_for(req)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_io(&path)(e)),
        };
        let mut data = Vec::new();
        file.take(MAX_COLLATERAL_LEN as u64 + 1)
            .read_to_end(&mut data)
            .map_err(cache_io(&path))?;
        Ok(Some(data))
    }

    /// Stores `data` for `req`, atomically replacing any previous file. The data are not
    /// checked here; [`Fetcher`] stores only validated responses.
    pub fn put(&self, req: &KdsRequest, data: &[u8]) -> Result<(), CollateralError> {
        let path = self.path_for(req)?;
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        fs::create_dir_all(&parent).map_err(cache_io(&parent))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            // Best effort: the temporary file is invisible to `get` anyway.
            let _ = fs::remove_file(&tmp);
            return Err(cache_io(&path)(e));
        }
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Network settings of [`FetchMode::Online`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineConfig {
    /// KDS base URL, normally [`KDS_BASE_URL`]. Plain `http` is accepted only for a
    /// loopback host (tests, local mirrors).
    pub base_url: String,
    /// Limit for establishing a connection (including TLS).
    pub connect_timeout: Duration,
    /// Limit for one whole request, body included.
    pub timeout: Duration,
    /// Requests to make at most (at least 1).
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub backoff: Duration,
    /// Upper bound of the exponential backoff.
    pub max_backoff: Duration,
    /// Upper bound of a wait asked for by `Retry-After` on HTTP 429.
    pub max_retry_after: Duration,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            base_url: KDS_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            attempts: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Whether a fetcher may use the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchMode {
    /// Cache only; a miss is [`CollateralError::NotCached`].
    Offline,
    /// Cache first, then KDS.
    Online(OnlineConfig),
}

/// Where fetched collateral came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cache.
    Cache,
    /// The network, after this many requests.
    Network {
        /// Requests made.
        attempts: u32,
    },
}

/// Collateral and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes (validated, see [`validate_collateral`]).
    pub data: Vec<u8>,
    /// Where they came from.
    pub source: Source,
}

/// A function that waits; replaceable so tests do not sleep.
pub type Sleeper = Arc<dyn Fn(Duration) + Send + Sync>;

/// Gets collateral from the cache, or from KDS when online.
pub struct Fetcher {
    cache: CollateralCache,
    mode: FetchMode,
    agent: Option<ureq::Agent>,
    sleeper: Sleeper,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("cache", &self.cache)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Whether `base` is acceptable, and whether its host is loopback.
fn check_base_url(base: &str) -> Result<bool, CollateralError> {
    let invalid = |reason: &str| CollateralError::InvalidBaseUrl {
        base: base.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: ureq::http::Uri = base.parse().map_err(|_| invalid("not a URL"))?;
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if uri.query().is_some() {
        return Err(invalid("must not have a query"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(loopback),
        Some("http") if loopback => Ok(true),
        Some("http") => Err(invalid("plain http is only allowed for a loopback host")),
        _ => Err(invalid("scheme must be https")),
    }
}

fn build_agent(config: &OnlineConfig, loopback: bool) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider)
        .root_certs(RootCerts::WebPki)
        .build();
    let mut builder = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .https_only(!loopback)
        .max_redirects(3)
        .timeout_connect(Some(config.connect_timeout))
        .timeout_global(Some(config.timeout))
        .user_agent(concat!("opencvm-snp/", env!("CARGO_PKG_VERSION")));
    if loopback {
        // Never send requests for a local server through an environment proxy.
        builder = builder.proxy(None);
    }
    builder.build().new_agent()
}

/// The outcome of one HTTP attempt.
enum Attempt {
    Done(Vec<u8>),
    Retry {
        failure: FetchFailure,
        retry_after: Option<Duration>,
    },
}

fn classify(url: &str, e: ureq::Error) -> Result<FetchFailure, CollateralError> {
    match e {
        ureq::Error::Timeout(_) => Ok(FetchFailure::Timeout),
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Ok(FetchFailure::Timeout)
        }
        ureq::Error::Io(io) => Ok(FetchFailure::Connection(io.to_string())),
        e @ (ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled) => Ok(FetchFailure::Connection(e.to_string())),
        ureq::Error::BodyExceedsLimit(_) => Err(CollateralError::TooLarge {
            url: url.to_owned(),
            limit: MAX_COLLATERAL_LEN,
        }),
        e => Err(CollateralError::Transport {
            url: url.to_owned(),
            reason: e.to_string(),
        }),
    }
}

impl Fetcher {
    /// A fetcher over `cache` in `mode`.
    pub fn new(cache: CollateralCache, mode: FetchMode) -> Result<Self, CollateralError> {
        let agent = match &mode {
            FetchMode::Offline => None,
            FetchMode::Online(config) => {
                let loopback = check_base_url(&config.base_url)?;
                Some(build_agent(config, loopback))
            }
        };
        Ok(Fetcher {
            cache,
            mode,
            agent,
            sleeper: Arc::new(std::thread::sleep),
        })
    }

    /// A fetcher that only reads `cache`.
    pub fn offline(cache: CollateralCache) -> Self {
        Fetcher {
            cache,
            mode: FetchMode::Offline,
            agent: None,
            sleeper: Arc::new(std::thread::sleep),
        }
    }

    /// A fetcher that reads `cache` and fills it from KDS.
    pub fn online(cache: CollateralCache, config: OnlineConfig) -> Result<Self, CollateralError> {
        Fetcher::new(cache, FetchMode::Online(config))
    }

    /// Replaces the function used to wait between attempts (default: `thread::sleep`).
    pub fn with_sleeper(mut self, sleeper: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.sleeper = Arc::new(sleeper);
        self
    }

    /// The cache.
    pub fn cache(&self) -> &CollateralCache {
        &self.cache
    }

    /// The mode.
    pub fn mode(&self) -> &FetchMode {
        &self.mode
    }

    /// The collateral for `req`: see [`Fetcher::fetch_traced`].
    pub fn fetch(&self, req: &KdsRequest) -> Result<Vec<u8>, CollateralError> {
        self.fetch_traced(req).map(|f| f.data)
    }

    /// The collateral for `req` and where it came from. A valid cached copy is used as
    /// is; online, an invalid cached copy is fetched again and replaced.
    pub fn fetch_traced(&self, req: &KdsRequest) -> Result<Fetched, CollateralError> {
        self.fetch_inner(req, true)
    }

    /// Online: fetches `req` from KDS even if it is cached, and replaces the cached copy
    /// (for collateral that goes stale, such as a CRL past its `nextUpdate`). Offline:
    /// the same as [`Fetcher::fetch_traced`].
    pub fn refresh(&self, req: &KdsRequest) -> Result<Fetched, CollateralError> {
        self.fetch_inner(req, self.agent.is_none())
    }

    fn fetch_inner(&self, req: &KdsRequest, use_cache: bool) -> Result<Fetched, CollateralError> {
        let format = req.body_format();
        let path = self.cache.path_for(req)?;
        let cached = if use_cache {
            self.cache.get(req)?
        } else {
            None
        };
        if let Some(data) = cached {
            match validate_collateral(format, &data) {
                Ok(()) => {
                    return Ok(Fetched {
                        data,
                        source: Source::Cache,
                    });
                }
                Err(reason) => {
                    if self.agent.is_none() {
                        return Err(CollateralError::CorruptCache {
                            path,
                            expected: format_name(format),
                            reason,
                        });
                    }
                }
            }
        }
        let (FetchMode::Online(config), Some(agent)) = (&self.mode, &self.agent) else {
            return Err(CollateralError::NotCached {
                request: req.to_string(),
                url: req.url(KDS_BASE_URL),
                path,
            });
        };
        let url = req.url(&config.base_url);
        let (data, attempts) = self.download(agent, config, &url)?;
        validate_collateral(format, &data).map_err(|reason| {
            CollateralError::InvalidCollateral {
                url: url.clone(),
                expected: format_name(format),
                reason,
            }
        })?;
        self.cache.put(req, &data)?;
        Ok(Fetched {
            data,
            source: Source::Network { attempts },
        })
    }

    fn attempt(&self, agent: &ureq::Agent, url: &str) -> Result<Attempt, CollateralError> {
        let mut resp = match agent.get(url).call() {
            Ok(r) => r,
            Err(e) => {
                return classify(url, e).map(|failure| Attempt::Retry {
                    failure,
                    retry_after: None,
                });
            }
        };
        let status = resp.status().as_u16();
        match status {
            200 => match resp
                .body_mut()
                .with_config()
                .limit(MAX_COLLATERAL_LEN as u64)
                .read_to_vec()
            {
                Ok(body) => Ok(Attempt::Done(body)),
                Err(e) => classify(url, e).map(|failure| Attempt::Retry {
                    failure,
                    retry_after: None,
                }),
            },
            429 => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Ok(Attempt::Retry {
                    failure: FetchFailure::Status(429),
                    retry_after,
                })
            }
            500..=599 => Ok(Attempt::Retry {
                failure: FetchFailure::Status(status),
                retry_after: None,
            }),
            _ => Err(CollateralError::HttpStatus {
                url: url.to_owned(),
                status,
            }),
        }
    }

    /// GET with retries: the body and the number of requests made.
    fn download(
        &self,
        agent: &ureq::Agent,
        config: &OnlineConfig,
        url: &str,
    ) -> Result<(Vec<u8>, u32), CollateralError> {
        let attempts = config.attempts.max(1);
        let mut backoff = config.backoff;
        let mut attempt = 1;
        loop {
            let (failure, retry_after) = match self.attempt(agent, url)? {
                Attempt::Done(body) => return Ok((body, attempt)),
                Attempt::Retry {
                    failure,
                    retry_after,
                } => (failure, retry_after),
            };
            if attempt >= attempts {
                return Err(CollateralError::GaveUp {
                    url: url.to_owned(),
                    attempts: attempt,
                    last: failure,
                });
            }
            let wait = match retry_after {
                Some(d) => d.min(config.max_retry_after),
                None => backoff.min(config.max_backoff),
            };
            (self.sleeper)(wait);
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kds::VekKind;
    use crate::product::Product;
    use crate::tcb::TcbVersion;

    fn vcek_req() -> KdsRequest {
        KdsRequest::vcek(
            Product::Milan,
            &[0x11; 64],
            TcbVersion::milan_genoa(3, 0, 8, 115),
        )
        .unwrap()
    }

    #[test]
    fn cache_put_get_is_atomic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CollateralCache::open(dir.path().join("nested/cache")).unwrap();
        let req = vcek_req();
        assert_eq!(cache.get(&req).unwrap(), None);
        cache.put(&req, b"first").unwrap();
        cache.put(&req, b"second").unwrap();
        assert_eq!(cache.get(&req).unwrap().as_deref(), Some(&b"second"[..]));
        let path = cache.path_for(&req).unwrap();
        assert!(path.starts_with(cache.dir()));
        assert!(path.ends_with(req.cache_key()));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn cache_keys_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CollateralCache::open(dir.path()).unwrap();
        for key in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/../b",
            "",
            ".hidden",
            "a/.x.tmp.1.2",
            "a\\b",
            "a/b\0",
        ] {
            assert!(
                matches!(
                    cache.path_for_key(key),
                    Err(CollateralError::UnsafeCacheKey { .. })
                ),
                "{key:?}"
            );
        }
        assert_eq!(
            cache.path_for_key("crl/vcek/Milan.der").unwrap(),
            dir.path().join("crl").join("vcek").join("Milan.der")
        );
    }

    #[test]
    fn offline_miss_is_not_cached_error() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::offline(CollateralCache::open(dir.path()).unwrap());
        let req = KdsRequest::Crl {
            product: Product::Genoa,
            kind: VekKind::Vlek,
        };
        let err = fetcher.fetch(&req).unwrap_err();
        match &err {
            CollateralError::NotCached { url, .. } => {
                assert_eq!(url, "https://kdsintf.amd.com/vlek/v1/Genoa/crl")
            }
            e => panic!("{e:?}"),
        }
        assert!(!err.is_network());
    }

    #[test]
    fn offline_corrupt_cache_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CollateralCache::open(dir.path()).unwrap();
        let req = vcek_req();
        cache.put(&req, b"garbage").unwrap();
        let err = Fetcher::offline(cache).fetch(&req).unwrap_err();
        assert!(
            matches!(err, CollateralError::CorruptCache { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn base_url_rules() {
        assert!(!check_base_url("https://kdsintf.amd.com").unwrap());
        assert!(check_base_url("http://127.0.0.1:1234").unwrap());
        assert!(check_base_url("http://localhost:1234/").unwrap());
        assert!(check_base_url("http://[::1]:1234").unwrap());
        for bad in [
            "http://kdsintf.amd.com",
            "ftp://127.0.0.1",
            "kdsintf.amd.com",
            "https://x/?a=b",
            "",
        ] {
            assert!(
                matches!(
                    check_base_url(bad),
                    Err(CollateralError::InvalidBaseUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pem_parsing_is_strict() {
        assert!(parse_pem_certificates(b"").unwrap().is_empty());
        assert!(parse_pem_certificates(b"hello").is_err());
        assert!(parse_pem_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(
            parse_pem_certificates(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
        assert!(
            validate_collateral(BodyFormat::PemCertificates, &[b'a'; MAX_COLLATERAL_LEN + 1])
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn fetcher_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Fetcher>();
        assert_send_sync::<CollateralCache>();
    }

    #[test]
    fn agent_builds_with_aws_lc_rs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CollateralCache::open(dir.path()).unwrap();
        let fetcher = Fetcher::online(cache, OnlineConfig::default()).unwrap();
        assert!(matches!(fetcher.mode(), FetchMode::Online(_)));
    }
}
