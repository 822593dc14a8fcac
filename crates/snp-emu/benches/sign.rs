//! Reports signed per second by the emulated secure processor, against a bare
//! aws-lc-rs ECDSA P-384/SHA-384 signature of the same 0x2A0 bytes (the irreducible
//! cost) measured in the same run.
//!
//! Run: `cargo bench -p snp-emu --bench sign` (`-- --test` runs each once).

use std::hint::black_box;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use criterion::Criterion;
use snp::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig};

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let dir = ok(tempfile::tempdir(), "tempdir");
    let platform = ok(
        Platform::create(
            dir.path(),
            PlatformConfig::new(Product::Milan),
            Some(b"snp-emu sign benchmark"),
        ),
        "platform",
    );
    let guest = ok(platform.launch(LaunchConfig::default()), "launch");
    let rng = SystemRandom::new();
    let key = ok(
        EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING),
        "key",
    );
    let msg = [0x5au8; 0x2A0];
    let mut g = c.benchmark_group("sign");
    g.bench_function("baseline/ecdsa_p384_sign", |b| {
        b.iter(|| ok(key.sign(&rng, black_box(&msg)), "sign"))
    });
    let mut rd = [0u8; 64];
    g.bench_function("emulator/get_report", |b| {
        b.iter(|| {
            rd[0] = rd[0].wrapping_add(1);
            ok(platform.get_report(&guest, black_box(&rd), 0), "report")
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
