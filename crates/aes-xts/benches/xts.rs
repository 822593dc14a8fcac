//! AES-256-XTS throughput through aws-lc, single thread and two threads, on 4096-byte
//! and 512-byte data units. `bench/disk.sh` runs it beside `openssl speed -evp
//! aes-256-xts` (the bound) and the end-to-end image encryption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aes_xts::Xts;
use criterion::{Criterion, Throughput};

const BUF: usize = 1 << 20;

fn key() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(73).wrapping_add(5))
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("xts");
    for unit in [4096usize, 512] {
        g.throughput(Throughput::Bytes(BUF as u64));
        let mut xts = Xts::new(&key()).unwrap();
        let mut buf = vec![0x5au8; BUF];
        g.bench_function(format!("encrypt_1_thread_{unit}"), |b| {
            b.iter(|| {
                xts.encrypt_units(black_box(&mut buf), unit, 0, (unit / 512) as u64)
                    .unwrap()
            })
        });
    }
    // Two threads, each on its half of a buffer twice as large (what `cvm disk
    // encrypt --threads 2` does per batch).
    g.throughput(Throughput::Bytes(2 * BUF as u64));
    let mut workers = [Xts::new(&key()).unwrap(), Xts::new(&key()).unwrap()];
    let mut buf = vec![0x5au8; 2 * BUF];
    g.bench_function("encrypt_2_threads_4096", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for (i, (xts, half)) in workers.iter_mut().zip(buf.chunks_mut(BUF)).enumerate() {
                    s.spawn(move || {
                        xts.encrypt_units(half, 4096, (i * BUF / 512) as u64, 8)
                            .unwrap()
                    });
                }
            })
        })
    });
    g.finish();
    c.final_summary();
}
