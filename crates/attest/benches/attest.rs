//! Single-thread costs of one attestation, in process (no HTTP):
//! - baseline: one P-384 report verification (chain cached) + one RS256 token
//!   signature, the two operations an attestation cannot avoid;
//! - `attest/SevSnpVm`: the whole path (JSON, base64, chain lookup, verification,
//!   claims, compiled Rego policy, token) on the same evidence.
//!
//! The HTTP load test (`bench/attest-load.sh`) runs next to this one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use attest::jwt::{Alg, TokenSigner};
use attest::{AttestationType, Service, ServiceConfig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use criterion::Criterion;
use serde_json::{Map, json};
use snp::cert::{AmdCert, Vek, parse_bundle};
use snp::chain::{CertChain, TrustAnchors};
use snp::product::Product;
use snp::report::AttestationReport;
use snp::verify::Verifier;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Platform::create(
        &dir.path().join("emu"),
        PlatformConfig::new(Product::Milan),
        None,
    )
    .expect("platform");
    let guest = p.launch(LaunchConfig::default()).expect("launch");
    let runtime = br#"{"keys":[]}"#;
    let mut rd = [0u8; 64];
    rd[..32]
        .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, runtime).as_ref());
    let report = p.get_report(&guest, &rd, 0).expect("report");
    let chain_pem = pem("CERTIFICATE", p.vcek_der()) + &p.chain_pem();

    // Baseline: P-384 verify (cached chain) + RS256 sign, the emulator's ARK pinned.
    let mut anchors = TrustAnchors::amd();
    anchors
        .dangerously_trust_emulator_root(&AmdCert::from_der(p.ark_der()).expect("ark"))
        .expect("emulated ark");
    let verifier = Verifier::new(anchors);
    let certs = parse_bundle(chain_pem.as_bytes()).expect("bundle");
    let vek = Vek::from_cert(certs[0].clone()).expect("vek");
    let chain = CertChain::from_certs_for(&certs, vek.kind()).expect("chain");
    let parsed = AttestationReport::parse(&report).expect("parse");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signer = TokenSigner::generate(Alg::RS256, "bench", now, 1).expect("signer");
    let mut claims = Map::new();
    claims.insert("x".into(), json!("y"));
    c.bench_function("baseline: P-384 report verify + RS256 token sign", |b| {
        b.iter(|| {
            black_box(verifier.verify(&parsed, &vek, &chain, now).expect("verify"));
            black_box(signer.sign(&claims, "http://x/certs").expect("sign"));
        })
    });

    // The whole in-process path, the emulator's roots pinned with their CRL (so every
    // attestation applies a CRL, as with AMD's).
    let master = seal::MasterKey::load_or_create(&dir.path().join("master.key")).expect("key");
    let mut cfg = ServiceConfig::new(
        dir.path().join("state"),
        "http://127.0.0.1:1".into(),
        master,
    );
    let roots = pem("CERTIFICATE", p.ask_der())
        + &pem("CERTIFICATE", p.ark_der())
        + &pem("X509 CRL", &p.issue_crl(&[]).expect("crl"));
    cfg.emulator_roots
        .push(attest::EmulatorRoots::from_pem(roots.as_bytes()).expect("roots"));
    let (svc, _) = Service::open(cfg).expect("service");
    let proof =
        json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(&chain_pem)});
    let body = serde_json::to_vec(&json!({
        "report": B64URL.encode(serde_json::to_vec(&proof).expect("json")),
        "runtimeData": {"data": B64URL.encode(runtime), "dataType": "JSON"},
    }))
    .expect("json");
    // The built-in policy never awaits: `block_on` only polls the future once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let attest = || {
        let anyone = svc
            .admit_op("attest_sev_snp_vm", "default", None)
            .expect("admit");
        let req =
            attest::evidence::parse_request(AttestationType::SevSnpVm, &body).expect("request");
        rt.block_on(svc.attest(&anyone, req))
    };
    attest().expect("attest");
    c.bench_function("attest/SevSnpVm in process", |b| {
        b.iter(|| black_box(attest().expect("attest")))
    });

    // The policy step alone, on this evidence's claims: the built-in rules compiled in
    // process, the same rules in a sandbox worker (one round trip over its pipes), and
    // in process again with the evaluation time limit the workers run under.
    let tester = svc.admit_op("test_policy", "default", None).expect("admit");
    let req = attest_api::PolicyTestRequest {
        policy: None,
        evidence: serde_json::from_slice(&body).expect("json"),
    };
    let dry = rt
        .block_on(svc.test_policy(&tester, AttestationType::SevSnpVm, req))
        .expect("dry run");
    let claims = serde_json::Value::Object(dry.claims.clone());
    let rules = attest::policy::default_policy(AttestationType::SevSnpVm);
    let settings = svc
        .provider("default")
        .expect("provider")
        .settings()
        .clone();
    let compiled = attest::policy::CompiledPolicy::compile(&rules, &settings).expect("compile");
    c.bench_function("policy: built-in rules in process", |b| {
        b.iter(|| black_box(compiled.evaluate(&claims).expect("evaluate")))
    });
    let mut sb = attest::sandbox::SandboxConfig::new(
        env!("CARGO_BIN_EXE_attest-policy-worker").into(),
        Vec::new(),
    );
    sb.workers = 1;
    let sandbox = attest::sandbox::Sandbox::new(sb);
    let in_worker = || rt.block_on(sandbox.evaluate("bench", &rules, &settings, &claims));
    in_worker().expect("sandbox");
    c.bench_function("policy: the same rules in a sandbox worker", |b| {
        b.iter(|| black_box(in_worker().expect("sandbox")))
    });
    attest::policy::install_time_limit(std::time::Duration::from_secs(2));
    c.bench_function(
        "policy: built-in rules in process, with the time limit",
        |b| b.iter(|| black_box(compiled.evaluate(&claims).expect("evaluate"))),
    );
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
