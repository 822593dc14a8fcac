//! Report verification throughput, on one real Milan report (trustee `test-report.bin`,
//! its VCEK and AMD's Milan ASK/ARK), all groups in one run so that their ratios mean
//! something:
//!
//! * `baseline/ecdsa_p384_verify`: a bare aws-lc-rs ECDSA P-384/SHA-384 verification of
//!   report bytes `0x000..0x2A0` with the pre-parsed VCEK key: the irreducible cost;
//! * `parse/report`: [`AttestationReport::parse`] alone;
//! * `verify/cached`: [`Verifier::verify`] with one verifier reused, so the chain and
//!   VEK come from its cache (certificates parsed once, outside the loop);
//! * `verify/cold`: everything from bytes: parse report, VCEK and PEM chain, fresh
//!   [`Verifier`], full chain check (three RSA-4096 PSS verifications) and the report;
//! * `breakdown/*`: pieces of the cached path, to see where time goes beyond the ECDSA.
//!
//! After the groups it times the baseline and `verify/cached` once more with a plain
//! loop and prints verified reports per second on one core, by wall clock and by the
//! thread's on-CPU time (Linux schedstat; robust to a shared, busy machine).
//!
//! Run: `cargo bench -p snp --bench verify` (add `-- --quick` for a faster, rougher run).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey, VerificationAlgorithm};
use criterion::Criterion;
use snp::AttestationReport;
use snp::cert::{Vek, parse_bundle};
use snp::chain::{CertChain, TrustAnchors};
use snp::verify::Verifier;

/// 2025-08-01T00:00:00Z: every certificate of the vectors is valid then.
const AT: i64 = 1_754_006_400;
/// Bytes covered by the report signature.
const SIGNED_LEN: usize = 0x2A0;

const REPORT: &str = "trustee/snp/test-report.bin";
const VCEK: &str = "trustee/snp/test-vcek.der";
const CHAIN: &str = "go-sev-guest/ask_ark_milan.pem";

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

fn vector(rel: &str) -> Vec<u8> {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/snp")
        .join(rel);
    ok(std::fs::read(&path), &path.display().to_string())
}

struct Inputs {
    report_bytes: Vec<u8>,
    vcek_der: Vec<u8>,
    chain_pem: Vec<u8>,
    report: AttestationReport,
    vek: Vek,
    chain: CertChain,
}

fn inputs() -> Inputs {
    let report_bytes = vector(REPORT);
    let vcek_der = vector(VCEK);
    let chain_pem = vector(CHAIN);
    let report = ok(AttestationReport::parse(&report_bytes), "parse report");
    let vek = ok(Vek::parse(&vcek_der), "parse VCEK");
    let chain = ok(
        CertChain::from_certs(&ok(parse_bundle(&chain_pem), "parse chain")),
        "pick ARK/ASK",
    );
    Inputs {
        report_bytes,
        vcek_der,
        chain_pem,
        report,
        vek,
        chain,
    }
}

/// A fresh verifier that has already verified (and cached) the chain and VEK.
fn warm_verifier(i: &Inputs) -> Verifier {
    let verifier = Verifier::new(TrustAnchors::amd());
    let verified = ok(verifier.verify(&i.report, &i.vek, &i.chain, AT), "verify");
    assert!(verified.trust().is_amd(), "the vectors chain to AMD's ARK");
    verifier
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

fn benches(c: &mut Criterion) {
    let i = inputs();

    // (a) The irreducible cost: one ECDSA P-384 verification, key already parsed.
    let key = ok(
        ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, i.vek.cert().public_key_bits()),
        "VCEK key",
    );
    let signed = &i.report_bytes[..SIGNED_LEN];
    let sig = i.report.signature_fixed();
    ok(key.verify_sig(signed, &sig), "baseline signature");
    c.benchmark_group("baseline")
        .bench_function("ecdsa_p384_verify", |b| {
            b.iter(|| black_box(&key).verify_sig(black_box(signed), black_box(&sig)))
        });
    // The same through the unparsed-key API (parses the SEC1 point every call).
    let raw_key = i.vek.cert().public_key_bits();
    c.benchmark_group("baseline")
        .bench_function("ecdsa_p384_verify_unparsed_key", |b| {
            b.iter(|| {
                ECDSA_P384_SHA384_FIXED.verify_sig(
                    black_box(raw_key),
                    black_box(signed),
                    black_box(&sig),
                )
            })
        });

    // (b) Parsing only.
    c.benchmark_group("parse").bench_function("report", |b| {
        b.iter(|| AttestationReport::parse(black_box(&i.report_bytes)))
    });

    // (c) Cached collateral: one verifier, certificates parsed once.
    let verifier = warm_verifier(&i);
    c.benchmark_group("verify").bench_function("cached", |b| {
        b.iter(|| verifier.verify(black_box(&i.report), &i.vek, &i.chain, AT))
    });
    // Cached, but from report bytes (parse + verify): what a server pays per request.
    c.benchmark_group("verify")
        .bench_function("cached_from_bytes", |b| {
            b.iter(|| {
                let r = ok(
                    AttestationReport::parse(black_box(&i.report_bytes)),
                    "parse",
                );
                verifier.verify(&r, &i.vek, &i.chain, AT)
            })
        });

    // (d) Cold: everything from bytes, fresh verifier, full RSA-4096 chain.
    c.benchmark_group("verify").bench_function("cold", |b| {
        b.iter(|| {
            let r = ok(
                AttestationReport::parse(black_box(&i.report_bytes)),
                "parse",
            );
            let vek = ok(Vek::parse(black_box(&i.vcek_der)), "VCEK");
            let certs = ok(parse_bundle(black_box(&i.chain_pem)), "chain");
            let chain = ok(CertChain::from_certs(&certs), "ARK/ASK");
            Verifier::new(TrustAnchors::amd()).verify(&r, &vek, &chain, AT)
        })
    });

    // Pieces of the cached path beyond the ECDSA verification.
    let mut g = c.benchmark_group("breakdown");
    g.bench_function("cache_key_sha256_x3", |b| {
        b.iter(|| {
            (
                black_box(&i.chain).ark().sha256(),
                i.chain.ask().sha256(),
                i.vek.cert().sha256(),
            )
        })
    });
    g.bench_function("with_product", |b| {
        b.iter(|| black_box(&i.report).with_product(i.vek.product()))
    });
    g.bench_function("verify_chain_only_cached", |b| {
        b.iter(|| verifier.verify_chain_only(black_box(&i.vek), &i.chain, AT))
    });
    g.finish();
}

/// On-CPU time of this thread in nanoseconds (Linux `schedstat`), so that a busy shared
/// machine (time slices lost to other processes) does not count against us.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `f` in batches for about `budget`; returns (calls, wall seconds, CPU seconds).
fn timed(budget: Duration, mut f: impl FnMut()) -> (u64, f64, Option<f64>) {
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    (n, wall, cpu)
}

/// Prints verified reports per second on one core for the cached path (and the bare
/// ECDSA baseline next to it), timed with a plain loop, by wall clock and by this
/// thread's on-CPU time.
fn throughput(_c: &mut Criterion) {
    let i = inputs();
    let verifier = warm_verifier(&i);
    let key = ok(
        ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, i.vek.cert().public_key_bits()),
        "VCEK key",
    );
    let sig = i.report.signature_fixed();
    let quick = std::env::args().any(|a| a == "--quick" || a == "--test");
    let budget = Duration::from_millis(if quick { 200 } else { 1500 });
    let base = timed(budget, || {
        ok(
            black_box(&key).verify_sig(black_box(&i.report_bytes[..SIGNED_LEN]), &sig),
            "baseline",
        )
    });
    let cached = timed(budget, || {
        ok(
            verifier.verify(black_box(&i.report), &i.vek, &i.chain, AT),
            "verify",
        );
    });
    let per_op =
        |(n, wall, cpu): (u64, f64, Option<f64>)| (wall / n as f64, cpu.map(|c| c / n as f64));
    let (bw, bc) = per_op(base);
    let (cw, cc) = per_op(cached);
    println!(
        "plain-loop summary (one thread; spec goal: >= 3000 verified reports/s per core, cached):"
    );
    println!(
        "  baseline ECDSA P-384 : {:8.1} us wall  {:>8} us on-CPU",
        bw * 1e6,
        bc.map_or("n/a".into(), |c| format!("{:.1}", c * 1e6))
    );
    println!(
        "  verify/cached        : {:8.1} us wall  {:>8} us on-CPU  ({:.2}x baseline on-CPU)",
        cw * 1e6,
        cc.map_or("n/a".into(), |c| format!("{:.1}", c * 1e6)),
        match (cc, bc) {
            (Some(c), Some(b)) => c / b,
            _ => cw / bw,
        }
    );
    println!(
        "verify/cached throughput: {:.0} verified reports/s per core by wall clock, {} by on-CPU time ({} reports)",
        1.0 / cw,
        cc.map_or("n/a".into(), |c| format!("{:.0}", 1.0 / c)),
        cached.0
    );
}

fn main() {
    // What `criterion_group!`/`criterion_main!` expand to, without their undocumented
    // public function (the workspace warns on missing docs).
    let mut c = config();
    benches(&mut c);
    throughput(&mut c);
    c.final_summary();
}
