//! The collateral fetcher against a real HTTP server on 127.0.0.1 serving real AMD data.

// Test helpers outside #[test] functions panic on setup failures too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use snp::collateral::{
    CollateralCache, CollateralError, FetchFailure, Fetcher, OnlineConfig, Source,
};
use snp::kds::{KdsRequest, VekKind};
use snp::{Product, TcbVersion};

/// Where the AMD test vectors live, relative to this crate: the repository's own
/// `testdata/snp` once it exists, else the staging copy in `shared/` beside the repository.
const VECTOR_DIRS: [&str; 2] = ["../../testdata/snp", "../../../shared/vectors/snp"];

fn vectors() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    VECTOR_DIRS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join("trustee/snp/test-vcek.der").is_file())
        .unwrap_or_else(|| panic!("no SNP test vectors in any of {VECTOR_DIRS:?}"))
}

fn vector(name: &str) -> Vec<u8> {
    let path = vectors().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The VCEK request for trustee's Milan report, from its CHIP_ID (0x1A0) and
/// REPORTED_TCB (0x180).
fn report_request() -> KdsRequest {
    let report = vector("trustee/snp/test-report.bin");
    let chip_id = &report[0x1A0..0x1E0];
    let tcb_raw = u64::from_le_bytes(report[0x180..0x188].try_into().unwrap());
    let tcb = TcbVersion::decode(tcb_raw, Product::Milan.tcb_layout()).unwrap();
    KdsRequest::vcek(Product::Milan, chip_id, tcb).unwrap()
}

#[test]
fn report_helper_builds_the_same_request() {
    let report = snp::AttestationReport::parse_for_product(
        &vector("trustee/snp/test-report.bin"),
        Product::Milan,
    )
    .unwrap();
    let req = KdsRequest::vcek_for_report(&report, Product::Milan).unwrap();
    assert_eq!(req, report_request());
    assert_eq!(req.path_and_query(), REPORT_VCEK_PATH);
}

/// The KDS path for that report, written out by hand.
const REPORT_VCEK_PATH: &str = "/vcek/v1/Milan/c38427a30d4c7af9d96f7a15b97269825a64cb76a2352ffd5d18115d89ad473f8e8c0bcd9a5d9286612bad4aadfb4426205a3b9e4fea82301135a170e477524e?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115";

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 200,
            headers: vec![],
            body,
            delay: Duration::ZERO,
        }
    }
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            body: b"error".to_vec(),
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

struct Server {
    base: String,
    paths: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Server {
    fn requests(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// At most this many connections per server; the accept loop ends after them.
const MAX_CONNECTIONS: usize = 32;

/// A one-request-per-connection HTTP/1.1 server; `handler` gets the request's index and
/// path (with query).
fn serve(handler: impl Fn(usize, &str) -> Reply + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let paths = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (p, c) = (paths.clone(), connections.clone());
    thread::spawn(move || {
        for stream in listener.incoming().take(MAX_CONNECTIONS) {
            let Ok(mut stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let Some(path) = read_request_path(&mut stream) else {
                continue;
            };
            let index = {
                let mut p = p.lock().unwrap();
                p.push(path.clone());
                p.len() - 1
            };
            let reply = handler(index, &path);
            thread::sleep(reply.delay);
            let mut head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                reply.status,
                reply.body.len()
            );
            for (name, value) in &reply.headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&reply.body);
            let _ = stream.flush();
        }
    });
    Server {
        base,
        paths,
        connections,
    }
}

fn read_request_path(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_owned)
}

fn config(server: &Server) -> OnlineConfig {
    OnlineConfig {
        base_url: server.base.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        attempts: 3,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(250),
        max_retry_after: Duration::from_secs(10),
    }
}

/// A fetcher whose waits are recorded instead of slept.
fn fetcher(dir: &Path, config: OnlineConfig) -> (Fetcher, Arc<Mutex<Vec<Duration>>>) {
    let sleeps = Arc::new(Mutex::new(Vec::new()));
    let s = sleeps.clone();
    let f = Fetcher::online(CollateralCache::open(dir).unwrap(), config)
        .unwrap()
        .with_sleeper(move |d| s.lock().unwrap().push(d));
    (f, sleeps)
}

/// Every file under `dir`, temporary ones included.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn vcek_is_fetched_once_then_served_from_cache() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let body = vcek.clone();
    let server = serve(move |_, _| Reply::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (f, sleeps) = fetcher(dir.path(), config(&server));
    let req = report_request();

    let first = f.fetch_traced(&req).unwrap();
    assert_eq!(first.source, Source::Network { attempts: 1 });
    assert_eq!(first.data, vcek);
    assert_eq!(server.requests(), [REPORT_VCEK_PATH]);

    let second = f.fetch_traced(&req).unwrap();
    assert_eq!(second.source, Source::Cache);
    assert_eq!(second.data, vcek);
    assert_eq!(
        server.requests().len(),
        1,
        "second fetch must not hit the server"
    );
    assert!(sleeps.lock().unwrap().is_empty());

    // Stored under the product / hwID / TCB key, and nothing else is left behind.
    let stored = dir.path().join(format!(
        "vcek/Milan/{}/7308000000000003.der",
        &REPORT_VCEK_PATH[15..15 + 128]
    ));
    assert_eq!(std::fs::read(&stored).unwrap(), vcek);
    assert_eq!(files(dir.path()), [stored]);
}

#[test]
fn cert_chain_and_crl_use_kds_paths() {
    let pem = vector("go-sev-guest/ask_ark_milan.pem");
    let crl = vector("atakit/milan.crl.der");
    let (p, c) = (pem.clone(), crl.clone());
    let server = serve(move |_, path| match path {
        "/vcek/v1/Milan/cert_chain" => Reply::ok(p.clone()),
        "/vcek/v1/Milan/crl" => Reply::ok(c.clone()),
        _ => Reply::status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), config(&server));
    let chain_req = KdsRequest::CertChain {
        product: Product::Milan,
        kind: VekKind::Vcek,
    };
    let crl_req = KdsRequest::Crl {
        product: Product::Milan,
        kind: VekKind::Vcek,
    };
    assert_eq!(f.fetch(&chain_req).unwrap(), pem);
    assert_eq!(f.fetch(&crl_req).unwrap(), crl);
    assert_eq!(
        server.requests(),
        ["/vcek/v1/Milan/cert_chain", "/vcek/v1/Milan/crl"]
    );
    assert_eq!(
        std::fs::read(dir.path().join("cert_chain/vcek/Milan.pem")).unwrap(),
        pem
    );
    assert_eq!(
        std::fs::read(dir.path().join("crl/vcek/Milan.der")).unwrap(),
        crl
    );

    // The VLEK chain path is distinct and 404 is final, not retried.
    let vlek = KdsRequest::CertChain {
        product: Product::Milan,
        kind: VekKind::Vlek,
    };
    let err = f.fetch(&vlek).unwrap_err();
    assert!(
        matches!(err, CollateralError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.is_network());
    assert_eq!(
        server.requests().last().unwrap(),
        "/vlek/v1/Milan/cert_chain"
    );
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn offline_uses_cache_and_never_connects() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let body = vcek.clone();
    let server = serve(move |_, _| Reply::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let req = report_request();

    // Offline on an empty cache: NotCached, naming the KDS URL, and no connection.
    let offline = Fetcher::offline(CollateralCache::open(dir.path()).unwrap());
    match offline.fetch(&req).unwrap_err() {
        CollateralError::NotCached { url, path, .. } => {
            assert_eq!(url, format!("https://kdsintf.amd.com{REPORT_VCEK_PATH}"));
            assert!(path.starts_with(dir.path()));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(server.connections(), 0);

    // Fill the cache online, then offline reads it.
    let (online, _) = fetcher(dir.path(), config(&server));
    online.fetch(&req).unwrap();
    assert_eq!(server.connections(), 1);
    let hit = offline.fetch_traced(&req).unwrap();
    assert_eq!(hit.source, Source::Cache);
    assert_eq!(hit.data, vcek);

    // Still nothing for another request, and still no new connection.
    let other = KdsRequest::Crl {
        product: Product::Genoa,
        kind: VekKind::Vlek,
    };
    assert!(matches!(
        offline.fetch(&other),
        Err(CollateralError::NotCached { .. })
    ));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(server.connections(), 1);
}

#[test]
fn rate_limit_honours_retry_after() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let server = serve(move |i, _| match i {
        0 => Reply::status(429).header("Retry-After", "7"),
        _ => Reply::ok(vcek.clone()),
    });
    let dir = tempfile::tempdir().unwrap();
    let (f, sleeps) = fetcher(dir.path(), config(&server));
    let got = f.fetch_traced(&report_request()).unwrap();
    assert_eq!(got.source, Source::Network { attempts: 2 });
    assert_eq!(server.requests().len(), 2);
    assert_eq!(*sleeps.lock().unwrap(), [Duration::from_secs(7)]);
}

#[test]
fn rate_limit_wait_is_capped_and_falls_back_to_backoff() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let server = serve(move |i, _| match i {
        0 => Reply::status(429).header("Retry-After", "3600"),
        1 => Reply::status(429),
        _ => Reply::ok(vcek.clone()),
    });
    let dir = tempfile::tempdir().unwrap();
    let (f, sleeps) = fetcher(dir.path(), config(&server));
    let got = f.fetch_traced(&report_request()).unwrap();
    assert_eq!(got.source, Source::Network { attempts: 3 });
    // Capped at max_retry_after (10 s); then the doubled backoff (200 ms).
    assert_eq!(
        *sleeps.lock().unwrap(),
        [Duration::from_secs(10), Duration::from_millis(200)]
    );
}

#[test]
fn server_errors_exhaust_retries() {
    let server = serve(|_, _| Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server);
    cfg.attempts = 4;
    let (f, sleeps) = fetcher(dir.path(), cfg);
    let err = f.fetch(&report_request()).unwrap_err();
    match &err {
        CollateralError::GaveUp { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert_eq!(*last, FetchFailure::Status(503));
        }
        e => panic!("{e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("after 4 attempt"), "{msg}");
    assert!(msg.contains("HTTP 503"), "{msg}");
    assert!(err.is_network());
    assert_eq!(server.requests().len(), 4);
    // 100 ms, 200 ms, then capped at max_backoff (250 ms).
    assert_eq!(
        *sleeps.lock().unwrap(),
        [100, 200, 250].map(Duration::from_millis)
    );
    assert!(files(dir.path()).is_empty());
}

#[test]
fn slow_server_times_out() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let server = serve(move |_, _| Reply {
        delay: Duration::from_secs(3),
        ..Reply::ok(vcek.clone())
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server);
    cfg.timeout = Duration::from_millis(300);
    cfg.attempts = 1;
    let (f, _) = fetcher(dir.path(), cfg);
    let start = Instant::now();
    let err = f.fetch(&report_request()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            err,
            CollateralError::GaveUp {
                attempts: 1,
                last: FetchFailure::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(files(dir.path()).is_empty());
}

#[test]
fn invalid_bodies_are_rejected_and_not_cached() {
    let crl = vector("atakit/milan.crl.der");
    let pem = vector("go-sev-guest/ask_ark_milan.pem");
    let one_cert = {
        let text = String::from_utf8(pem.clone()).unwrap();
        let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
        text.as_bytes()[..end].to_vec()
    };
    let server = serve(move |_, path| {
        if path.starts_with("/vcek/v1/Milan/cert_chain") {
            Reply::ok(one_cert.clone())
        } else if path.starts_with("/vcek/v1/Genoa/") {
            // A valid DER structure, but a CRL where a certificate belongs.
            Reply::ok(crl.clone())
        } else {
            Reply::ok(b"this is not a certificate".to_vec())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), config(&server));

    let req = report_request();
    let err = f.fetch(&req).unwrap_err();
    assert!(
        matches!(err, CollateralError::InvalidCollateral { .. }),
        "{err:?}"
    );
    assert!(!err.is_network());
    assert_eq!(f.cache().get(&req).unwrap(), None);

    let chain = KdsRequest::CertChain {
        product: Product::Milan,
        kind: VekKind::Vcek,
    };
    let err = f.fetch(&chain).unwrap_err();
    assert!(
        err.to_string().contains("1 certificate(s), expected 2"),
        "{err}"
    );

    let report = vector("trustee/snp/test-report.bin");
    let genoa = KdsRequest::vcek(
        Product::Genoa,
        &report[0x1A0..0x1E0],
        TcbVersion::milan_genoa(3, 0, 8, 115),
    )
    .unwrap();
    assert!(matches!(
        f.fetch(&genoa),
        Err(CollateralError::InvalidCollateral { .. })
    ));

    // Invalid answers are not retried, and nothing was written.
    assert_eq!(server.requests().len(), 3);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[test]
fn oversized_body_is_rejected() {
    let server = serve(|_, _| Reply::ok(vec![0x30; 70 * 1024]));
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), config(&server));
    let err = f.fetch(&report_request()).unwrap_err();
    assert!(matches!(err, CollateralError::TooLarge { .. }), "{err:?}");
    assert!(files(dir.path()).is_empty());
}

#[test]
fn corrupt_cache_entry_is_refetched_online() {
    let vcek = vector("trustee/snp/test-vcek.der");
    let body = vcek.clone();
    let server = serve(move |_, _| Reply::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), config(&server));
    let req = report_request();
    f.cache().put(&req, b"truncated").unwrap();
    let got = f.fetch_traced(&req).unwrap();
    assert_eq!(got.source, Source::Network { attempts: 1 });
    assert_eq!(f.cache().get(&req).unwrap(), Some(vcek));
}

#[test]
fn refresh_bypasses_the_cache() {
    let crl = vector("atakit/milan.crl.der");
    let body = crl.clone();
    let server = serve(move |_, _| Reply::ok(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(dir.path(), config(&server));
    let req = KdsRequest::Crl {
        product: Product::Milan,
        kind: VekKind::Vcek,
    };
    assert_eq!(
        f.fetch_traced(&req).unwrap().source,
        Source::Network { attempts: 1 }
    );
    assert_eq!(f.fetch_traced(&req).unwrap().source, Source::Cache);
    assert_eq!(
        f.refresh(&req).unwrap().source,
        Source::Network { attempts: 1 }
    );
    assert_eq!(server.requests().len(), 2);
    // Offline, refresh is a cache read.
    let offline = Fetcher::offline(CollateralCache::open(dir.path()).unwrap());
    assert_eq!(offline.refresh(&req).unwrap().source, Source::Cache);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn connection_refused_is_retried_then_reported() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = OnlineConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        attempts: 2,
        backoff: Duration::from_millis(10),
        ..OnlineConfig::default()
    };
    let (f, sleeps) = fetcher(dir.path(), cfg);
    let err = f.fetch(&report_request()).unwrap_err();
    assert!(
        matches!(
            err,
            CollateralError::GaveUp {
                attempts: 2,
                last: FetchFailure::Connection(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(sleeps.lock().unwrap().len(), 1);
}

#[test]
fn https_goes_through_rustls_with_aws_lc_rs() {
    // A server that answers the TLS ClientHello with plain HTTP: the handshake must fail
    // cleanly (no panic about a missing crypto provider or root store).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let handshakes = Arc::new(AtomicUsize::new(0));
    let h = handshakes.clone();
    thread::spawn(move || {
        if let Some(Ok(mut stream)) = listener.incoming().next() {
            let mut hello = [0u8; 5];
            if stream.read_exact(&mut hello).is_ok() && hello[0] == 0x16 {
                // A TLS handshake record.
                h.fetch_add(1, Ordering::SeqCst);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = OnlineConfig {
        base_url: base,
        attempts: 1,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        ..OnlineConfig::default()
    };
    let (f, _) = fetcher(dir.path(), cfg);
    let err = f.fetch(&report_request()).unwrap_err();
    assert!(err.is_network(), "{err:?}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = OnlineConfig {
        base_url: "http://kdsintf.amd.com".to_owned(),
        ..OnlineConfig::default()
    };
    let err = Fetcher::online(CollateralCache::open(dir.path()).unwrap(), cfg).unwrap_err();
    assert!(
        matches!(err, CollateralError::InvalidBaseUrl { .. }),
        "{err:?}"
    );
}
