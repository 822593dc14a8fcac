//! Durable vTPM state writes: the state directory's slot file (the baseline) against
//! the VM's VMGS, the same 64 KiB permanent state, each write durable (`fdatasync`)
//! before it returns; and opening a VMGS, reading the state and writing it back (a
//! vTPM start). Run with `cargo bench -p vtpm --bench state`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::Criterion;
use libtpms::StateKind;
use vtpm::vmgs_state::DatastoreKey;
use vtpm::{StateDir, StateStore, VmgsState};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let key = DatastoreKey::new([9; 32]);

    let mut slots = StateDir::open(&dir.path().join("tpm")).expect("state dir");
    let mut n = 0u8;
    c.bench_function("baseline: 64 KiB permanent state to the slot file", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let mut s = state.clone();
            s[0] = n;
            slots
                .write(StateKind::Permanent, black_box(&s))
                .expect("write");
        })
    });

    let path = dir.path().join("vm.vmgs");
    let (mut vmgs, _) = VmgsState::open_or_create(&path, &key).expect("vmgs");
    c.bench_function("64 KiB permanent state to the VMGS (one commit)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let mut s = state.clone();
            s[0] = n;
            vmgs.write(StateKind::Permanent, black_box(&s))
                .expect("write");
        })
    });
    drop(vmgs);

    c.bench_function("VMGS open + read + write of a 64 KiB state", |b| {
        b.iter(|| {
            let (mut v, _) = VmgsState::open_or_create(&path, &key).expect("open");
            let s = v.read(StateKind::Permanent).expect("read").expect("state");
            v.write(StateKind::Permanent, black_box(&s)).expect("write");
        })
    });
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(4))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
