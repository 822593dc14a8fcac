//! The irreducible cost of one key release, single thread: wrapping a 32-byte key to
//! an RSA-2048 transfer key (RSA-OAEP-256 of a fresh AES key + AES-KWP), and that plus
//! the RS256 signature of the response JWS. `bench/keyvault-load.sh` runs the HTTP load
//! test next to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::Criterion;
use keyvault::wrap::{UnwrappingKey, WrapMechanism, wrap_key};
use serde_json::{Map, json};

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    let transfer = UnwrappingKey::generate(2048).expect("key");
    let material = [7u8; 32];
    c.bench_function("wrap: RSA-OAEP-256 + AES-KWP of a 32-byte key", |b| {
        b.iter(|| {
            black_box(
                wrap_key(
                    WrapMechanism::RsaAesKeyWrap256,
                    transfer.public_key(),
                    &material,
                )
                .expect("wrap"),
            )
        })
    });
    let signer = jose::TokenSigner::generate(jose::Alg::RS256, "bench", 0, 36500).expect("signer");
    let mut payload = Map::new();
    payload.insert(
        "response".into(),
        json!({"key": {"key_hsm": "x".repeat(600)}}),
    );
    c.bench_function("wrap + RS256 JWS of the response", |b| {
        b.iter(|| {
            black_box(
                wrap_key(
                    WrapMechanism::RsaAesKeyWrap256,
                    transfer.public_key(),
                    &material,
                )
                .expect("wrap"),
            );
            black_box(signer.sign_with_x5c(&payload).expect("sign"))
        })
    });
    c.final_summary();
}
