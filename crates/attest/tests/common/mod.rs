//! Shared helpers: a real server on 127.0.0.1:0 and emulated SNP evidence.
#![allow(dead_code)]

pub mod azure;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use snp::product::Product;
use snp_emu::guest::{Guest, LaunchConfig};
use snp_emu::platform::{Platform, PlatformConfig};

pub struct Server {
    pub url: String,
    pub state: PathBuf,
    pub admin: String,
    _dir: tempfile::TempDir,
}

pub fn start(allow_emulated: bool) -> Server {
    start_with(allow_emulated, |_| {})
}

pub fn start_with(allow_emulated: bool, tweak: impl FnOnce(&mut attest::ServiceConfig)) -> Server {
    start_full(allow_emulated, None, tweak)
}

/// A service; with `allow_emulated`, it trusts the roots of the shared emulated
/// platforms of [`emulator`] (one per product), as `cvm attest serve
/// --dangerously-trust-emulator-roots` would.
pub fn start_full(
    allow_emulated: bool,
    tls: Option<attest::server::TlsFiles>,
    tweak: impl FnOnce(&mut attest::ServiceConfig),
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let master = seal::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
    let mut cfg = attest::ServiceConfig::new(state.clone(), String::new(), master);
    if allow_emulated {
        for product in Product::ALL {
            cfg.emulator_roots.push(emulator(product).roots());
        }
    }
    // Tenant policies run in worker processes, as `cvm attest serve` runs them.
    let mut sandbox = attest::sandbox::SandboxConfig::new(
        env!("CARGO_BIN_EXE_attest-policy-worker").into(),
        Vec::new(),
    );
    sandbox.workers = 2;
    sandbox.per_provider = 1;
    cfg.policy_sandbox = Some(sandbox);
    tweak(&mut cfg);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = attest::server::run("127.0.0.1:0", None, tls, cfg, |addr, _| {
            tx.send(addr).unwrap();
        });
        panic!("server stopped: {r:?}");
    });
    let addr = rx.recv().unwrap();
    let admin = std::fs::read_to_string(state.join("admin.token")).unwrap();
    Server {
        url: format!("{scheme}://{addr}"),
        state,
        admin,
        _dir: dir,
    }
}

/// A client trusting only `ca_der` for HTTPS.
pub fn tls_agent(ca_der: &[u8]) -> ureq::Agent {
    use std::sync::Arc;
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(vec![
            Certificate::from_der(ca_der).to_owned(),
        ])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, JSON body)
pub fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<&[u8]>) -> (u16, Value) {
    let a = agent();
    let mut resp = match (method, body) {
        ("DELETE", _) => {
            let mut r = a.delete(url);
            if let Some(b) = bearer {
                r = r.header("Authorization", format!("Bearer {b}"));
            }
            r.call().unwrap()
        }
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(b) = bearer {
                r = r.header("Authorization", format!("Bearer {b}"));
            }
            r.call().unwrap()
        }
        (m, b) => {
            let mut r = if m == "PUT" { a.put(url) } else { a.post(url) };
            if let Some(t) = bearer {
                r = r.header("Authorization", format!("Bearer {t}"));
            }
            r.header("Content-Type", "application/json")
                .send(b.unwrap_or_default())
                .unwrap()
        }
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub struct Emu {
    pub platform: Platform,
    _dir: tempfile::TempDir,
}

/// The emulated platform of `product` shared by this test binary (its roots are the
/// ones [`start`] trusts).
pub fn emulator(product: Product) -> &'static Emu {
    use std::sync::{Mutex, OnceLock};
    static SHARED: OnceLock<Mutex<Vec<(Product, &'static Emu)>>> = OnceLock::new();
    let mut all = SHARED
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap();
    if let Some((_, e)) = all.iter().find(|(p, _)| *p == product) {
        return e;
    }
    let e: &'static Emu = Box::leak(Box::new(unshared_emulator(product)));
    all.push((product, e));
    e
}

/// A platform of its own, whose roots no test service trusts.
pub fn unshared_emulator(product: Product) -> Emu {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::create(dir.path(), PlatformConfig::new(product), None).unwrap();
    Emu {
        platform,
        _dir: dir,
    }
}

impl Emu {
    /// The platform's roots file, as `cvm snp export-roots` writes it.
    pub fn roots_pem(&self) -> String {
        let p = &self.platform;
        snp_emu::platform::pem("CERTIFICATE", p.ask_der())
            + &snp_emu::platform::pem("CERTIFICATE", p.ark_der())
            + &snp_emu::platform::pem("X509 CRL", &p.issue_crl(&[]).unwrap())
    }

    pub fn roots(&self) -> attest::EmulatorRoots {
        attest::EmulatorRoots::from_pem(self.roots_pem().as_bytes()).unwrap()
    }

    pub fn guest(&self, debug: bool) -> Guest {
        let mut cfg = LaunchConfig {
            measurement: [0x11; 48],
            ..LaunchConfig::default()
        };
        if debug {
            cfg.policy |= 1 << 19;
        }
        self.platform.launch(cfg).unwrap()
    }

    /// VCEK + ASK + ARK as PEM.
    pub fn chain_pem(&self) -> String {
        snp_emu::platform::pem("CERTIFICATE", self.platform.vcek_der()) + &self.platform.chain_pem()
    }

    pub fn report(&self, guest: &Guest, report_data: [u8; 64], vmpl: u32) -> Vec<u8> {
        self.platform
            .get_report(guest, &report_data, vmpl)
            .unwrap()
            .to_vec()
    }

    /// An MAA SevSnpVm request with JSON runtime data bound by SHA-256.
    pub fn request(&self, guest: &Guest, runtime: &Value, nonce: Option<&str>) -> Vec<u8> {
        let rt = serde_json::to_vec(runtime).unwrap();
        let mut rd = [0u8; 64];
        rd[..32]
            .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
        let report = self.report(guest, rd, 0);
        request_json(&report, Some(&self.chain_pem()), Some(&rt), nonce)
    }
}

pub fn request_json(
    report: &[u8],
    chain: Option<&str>,
    runtime: Option<&[u8]>,
    nonce: Option<&str>,
) -> Vec<u8> {
    let mut proof = json!({ "SnpReport": B64URL.encode(report) });
    if let Some(c) = chain {
        proof["VcekCertChain"] = B64URL.encode(c).into();
    }
    let mut req = json!({ "report": B64URL.encode(serde_json::to_vec(&proof).unwrap()) });
    if let Some(rt) = runtime {
        req["runtimeData"] = json!({ "data": B64URL.encode(rt), "dataType": "JSON" });
    }
    if let Some(n) = nonce {
        req["nonce"] = n.into();
    }
    serde_json::to_vec(&req).unwrap()
}

pub fn claims_of(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(p).unwrap()).unwrap()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Asserts an error response: its status and its stable `code`.
#[track_caller]
pub fn assert_refused(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (want_status, Some(want_code)),
        "{body}"
    );
}
