//! Fault injection: every commit, failed at each of its writes and flushes, leaves a
//! file that opens as exactly the old state or exactly the new one; a failure once the
//! header may be on disk poisons the `Vmgs`; and a power loss that keeps any subset of
//! the unflushed writes (each whole or not at all) leaves a file that opens, with
//! `recover`, as the old or the new state (without it: one of those, or an integrity
//! error). The guarantees tested are those of `crates/vmgs/src/lib.rs`'s module docs
//! and `docs/research/vmgs.md` §12.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Content, Faulty, Op, blocks, content, data, open};
use vmgs::vmgs_format::FileId;
use vmgs::{DatastoreKey, OpenOptions, Vmgs, VmgsError};

const KEY_A: [u8; 32] = [0xA1; 32];
const KEY_B: [u8; 32] = [0xB2; 32];

/// What a file opens as with each of the scenario's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    sequence: u32,
    content: Content,
    /// Whether each key of the scenario opens it.
    opens: Vec<bool>,
}

fn key(k: &Option<[u8; 32]>) -> Option<DatastoreKey> {
    k.map(DatastoreKey::new)
}

/// The state of a clean (untorn) image; every key either opens it or is refused as
/// `WrongKey`, and the keys that open it agree.
fn snapshot(image: &[u8], keys: &[Option<[u8; 32]>]) -> Snapshot {
    let mut found: Option<(u32, Content)> = None;
    let mut opens = Vec::new();
    for k in keys {
        match open(image, key(k).as_ref(), false) {
            Ok((v, o)) => {
                let state = (o.sequence, content(&v));
                if let Some(f) = &found {
                    assert_eq!(f, &state, "two keys open different states");
                }
                found = Some(state);
                opens.push(true);
            }
            Err(VmgsError::WrongKey) => opens.push(false),
            Err(e) => panic!("a clean image does not open: {e}"),
        }
    }
    let (sequence, content) = found.expect("no key opens the image");
    Snapshot {
        sequence,
        content,
        opens,
    }
}

type Commit = Box<dyn Fn(&mut Vmgs<Faulty>) -> Result<(), VmgsError>>;

struct Scenario {
    name: &'static str,
    /// The image before.
    base: Vec<u8>,
    /// The keys to try (`[None]` for an unencrypted file); the first opens `base`.
    keys: Vec<Option<[u8; 32]>>,
    /// The operation: one commit, or two for a rekey.
    op: Commit,
}

/// Counters for the report at the end of a test.
#[derive(Default, Debug)]
struct Tally {
    failures: usize,
    crash_images: usize,
    opens: usize,
}

/// Runs `s` once without faults to learn its commits (each ends with a flush) and the
/// state after each, then fails it at every operation.
fn run(s: &Scenario, tally: &mut Tally) {
    let open_for_commit = |disk: &Faulty| {
        let (v, _) = Vmgs::open(
            disk.clone(),
            key(&s.keys[0]).as_ref(),
            OpenOptions::default(),
        )
        .unwrap();
        v
    };

    // The reference run.
    let disk = Faulty::new(s.base.clone());
    let mut v = open_for_commit(&disk);
    let before = disk.ops();
    (s.op)(&mut v).unwrap();
    let log: Vec<Op> = disk.0.borrow().log[before..].to_vec();
    let total = log.len();
    // commit_end[i]: the operation index one past commit i's flush.
    let commit_end: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, op)| **op == Op::Flush)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        commit_end.last(),
        Some(&total),
        "{}: ends with a flush",
        s.name
    );
    for (i, w) in commit_end.windows(2).enumerate() {
        assert!(w[0] < w[1], "{}: commit {i} is empty", s.name);
    }
    // Every commit writes exactly one header, right before its flush.
    for &end in &commit_end {
        assert!(log[end - 2].is_header_write(), "{}: {log:?}", s.name);
        let start = commit_end.iter().rev().find(|&&e| e < end).copied();
        let headers = log[start.unwrap_or(0)..end]
            .iter()
            .filter(|op| op.is_header_write())
            .count();
        assert_eq!(headers, 1, "{}: {log:?}", s.name);
    }

    // The states: before, and after each commit (a failure at the first operation of
    // commit i+1 leaves exactly the state after commit i).
    let mut states = vec![snapshot(&s.base, &s.keys)];
    for &end in &commit_end {
        let disk = Faulty::new(s.base.clone());
        let mut v = open_for_commit(&disk);
        disk.fail_in(end);
        let r = (s.op)(&mut v);
        assert_eq!(r.is_ok(), end == total, "{}", s.name);
        states.push(snapshot(&disk.visible(), &s.keys));
    }
    for w in states.windows(2) {
        assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1), "{}", s.name);
    }

    for n in 0..=total + 1 {
        let disk = Faulty::new(s.base.clone());
        let mut v = open_for_commit(&disk);
        disk.fail_in(n);
        let r = (s.op)(&mut v);
        let ctx = format!("{}: failure at operation {n} of {total} ({log:?})", s.name);
        // The commit the failure hit (`commit_end.len()`: none did).
        let c = commit_end.iter().filter(|&&e| e <= n).count();
        if n >= total {
            r.unwrap();
            assert_eq!(disk.failed(), None, "{ctx}");
        } else {
            let e = r.expect_err(&ctx);
            assert!(matches!(e, VmgsError::Io { .. }), "{ctx}: {e}");
            assert_eq!(disk.failed().as_ref(), Some(&log[n]), "{ctx}");
            tally.failures += 1;
        }

        // The bytes as written: exactly the old state, or exactly the new one if the
        // header write of the failed commit went through.
        let header_written = log[..n.min(total)]
            .iter()
            .rev()
            .take_while(|op| **op != Op::Flush)
            .any(Op::is_header_write);
        let last = states.len() - 1;
        let expected = &states[if header_written { c + 1 } else { c }.min(last)];
        let visible = disk.visible();
        let got = snapshot(&visible, &s.keys);
        assert_eq!(&got, expected, "{ctx}");
        tally.opens += s.keys.len();

        // A power loss now: the durable bytes plus any subset of the unflushed writes.
        let (old, new) = (&states[c.min(last)], &states[(c + 1).min(last)]);
        crash_check(s, &disk, old, new, &ctx, tally);

        if n < total {
            if log[n].is_header_write() || log[n] == Op::Flush {
                // The header may be on disk: the Vmgs refuses to go on.
                let id = *expected.content.keys().next().unwrap();
                assert!(matches!(v.read_file(id), Err(VmgsError::Poisoned)), "{ctx}");
                assert!(
                    matches!(v.write_file(id, b"x", false), Err(VmgsError::Poisoned)),
                    "{ctx}"
                );
                assert!(
                    matches!(v.delete_file(id), Err(VmgsError::Poisoned)),
                    "{ctx}"
                );
            } else {
                // Nothing changed: the Vmgs reads the old content and can retry.
                let id = *states[c].content.keys().next().unwrap();
                assert_eq!(&*v.read_file(id).unwrap(), &states[c].content[&id], "{ctx}");
                if c == 0 {
                    disk.heal();
                    (s.op)(&mut v).unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
                    let after = snapshot(&disk.visible(), &s.keys);
                    assert_eq!(after.content, states[last].content, "{ctx}");
                    assert_eq!(after.opens, states[last].opens, "{ctx}");
                }
            }
        }
    }
}

/// Every image a power loss can leave opens as `old` or `new`.
fn crash_check(
    s: &Scenario,
    disk: &Faulty,
    old: &Snapshot,
    new: &Snapshot,
    ctx: &str,
    tally: &mut Tally,
) {
    // A key that opens both states must exist: there is no moment where no key
    // opens the file.
    let probe = (0..s.keys.len())
        .find(|&i| old.opens[i] && new.opens[i])
        .unwrap_or_else(|| panic!("{ctx}: no key opens both {old:?} and {new:?}"));
    for (i, image) in disk.crash_images().iter().enumerate() {
        tally.crash_images += 1;
        let ctx = format!("{ctx}, crash image {i}");
        let mut recovered = None;
        let mut strict = None;
        for (k, kb) in s.keys.iter().enumerate() {
            for recover in [true, false] {
                tally.opens += 1;
                match open(image, key(kb).as_ref(), recover) {
                    Ok((v, o)) => {
                        let got = (o.sequence, content(&v));
                        let state = [old, new]
                            .into_iter()
                            .find(|st| st.sequence == got.0)
                            .unwrap_or_else(|| {
                                panic!("{ctx}: key {k} recover {recover}: sequence {}", got.0)
                            });
                        assert_eq!(got.1, state.content, "{ctx}: key {k} recover {recover}");
                        assert!(state.opens[k], "{ctx}: key {k} opens a state it must not");
                        if k == probe {
                            if recover {
                                recovered = Some(got);
                            } else {
                                strict = Some(got);
                            }
                        }
                    }
                    Err(e) => {
                        assert!(
                            !(recover && k == probe),
                            "{ctx}: with recover, key {k} must open the old or new state: {e}"
                        );
                        assert!(
                            e.is_integrity(),
                            "{ctx}: key {k} recover {recover}: not an integrity error: {e}"
                        );
                    }
                }
            }
        }
        if let Some(st) = strict {
            assert_eq!(Some(st), recovered, "{ctx}: recover picks another state");
        }
    }
}

fn encrypted_base() -> Vec<u8> {
    let key = DatastoreKey::new(KEY_A);
    let mut v = common::format(128, Some(&key));
    v.write_file(FileId::TPM_NVRAM, &data(blocks(16), 1), false)
        .unwrap();
    v.write_file(FileId::BIOS_NVRAM, &data(5000, 2), false)
        .unwrap();
    v.write_file(FileId::KEY_PROTECTOR, &data(2060, 3), true)
        .unwrap();
    v.write_file(FileId::VM_UNIQUE_ID, &data(16, 4), false)
        .unwrap();
    v.storage().0.clone()
}

fn plain_base() -> Vec<u8> {
    let mut v = common::format(128, None);
    v.write_file(FileId::TPM_NVRAM, &data(blocks(16), 5), false)
        .unwrap();
    v.write_file(FileId::BIOS_NVRAM, &data(5000, 6), false)
        .unwrap();
    v.write_file(FileId::VM_UNIQUE_ID, &data(16, 7), false)
        .unwrap();
    v.storage().0.clone()
}

fn write(id: FileId, d: Vec<u8>, plaintext: bool) -> Commit {
    Box::new(move |v| v.write_file(id, &d, plaintext))
}

fn scenarios() -> Vec<Scenario> {
    let enc = encrypted_base();
    let plain = plain_base();
    let ekeys = vec![Some(KEY_A), Some(KEY_B)];
    let e = |name, op| Scenario {
        name,
        base: enc.clone(),
        keys: ekeys.clone(),
        op,
    };
    let p = |name, op| Scenario {
        name,
        base: plain.clone(),
        keys: vec![None],
        op,
    };
    vec![
        e(
            "encrypted: write a new file",
            write(FileId::GUEST_SECRET_KEY, data(100, 8), false),
        ),
        e(
            "encrypted: write an empty file",
            write(FileId::ATTESTATION_CONFIG, Vec::new(), false),
        ),
        e(
            "encrypted: overwrite with a bigger file",
            write(FileId::TPM_NVRAM, data(blocks(20) + 7, 9), false),
        ),
        e(
            "encrypted: overwrite with a smaller file",
            write(FileId::TPM_NVRAM, data(1024, 10), false),
        ),
        e(
            "encrypted: overwrite a plaintext file",
            write(FileId::KEY_PROTECTOR, data(3000, 11), true),
        ),
        e(
            "encrypted: delete",
            Box::new(|v| v.delete_file(FileId::BIOS_NVRAM)),
        ),
        e(
            "encrypted: rekey (two commits)",
            Box::new(|v| v.rekey(&DatastoreKey::new(KEY_B))),
        ),
        p(
            "unencrypted: write a new file",
            write(FileId::GUEST_SECRET_KEY, data(100, 12), false),
        ),
        p(
            "unencrypted: overwrite with a bigger file",
            write(FileId::TPM_NVRAM, data(blocks(20) + 7, 13), false),
        ),
        p(
            "unencrypted: overwrite with a smaller file",
            write(FileId::BIOS_NVRAM, data(10, 14), false),
        ),
        p(
            "unencrypted: delete",
            Box::new(|v| v.delete_file(FileId::TPM_NVRAM)),
        ),
    ]
}

#[test]
fn every_commit_failed_at_every_step_leaves_the_old_or_the_new_state() {
    let t = std::time::Instant::now();
    let mut tally = Tally::default();
    for s in scenarios() {
        run(&s, &mut tally);
    }
    // 11 scenarios, each commit at least a data write, a header write and a flush
    // (adjacent blocks go out in one write); the exact counts are printed for the
    // record.
    eprintln!("{tally:?} in {:?}", t.elapsed());
    assert!(tally.failures >= 33, "{tally:?}");
}

/// The format commit itself: a failure at any step leaves a file that is refused
/// (damaged or empty header slots, or a half-written first state) or, when only the
/// flush failed, the complete empty VMGS; never anything else.
#[test]
fn a_failed_format_leaves_no_vmgs_or_an_empty_one() {
    for encrypted in [false, true] {
        let k = DatastoreKey::new(KEY_A);
        let k = encrypted.then_some(&k);
        let disk = Faulty::new(vec![0xEE; blocks(16)]);
        Vmgs::format(disk.clone(), k).unwrap();
        let total = disk.ops();
        for n in 0..total {
            let disk = Faulty::new(vec![0xEE; blocks(16)]);
            disk.fail_in(n);
            Vmgs::format(disk.clone(), k).unwrap_err();
            let image = disk.visible();
            match open(&image, k, false) {
                // The header went through before the flush failed: a complete format.
                Ok((v, o)) => {
                    assert_eq!(o.sequence, 1, "failure at {n}");
                    assert!(v.list().is_empty(), "failure at {n}");
                    assert!(disk.0.borrow().log[..n].iter().any(Op::is_header_write));
                }
                Err(e) => assert!(e.is_integrity(), "failure at {n}: {e}"),
            }
            for image in disk.crash_images() {
                match open(&image, k, true) {
                    Ok((v, _)) => assert!(v.list().is_empty(), "failure at {n}"),
                    Err(e) => assert!(e.is_integrity(), "failure at {n}: {e}"),
                }
            }
        }
    }
}

/// A rekey whose second commit failed (or a crash between its two commits) leaves a
/// file both keys open; calling `rekey` with the new key again must finish the
/// rotation, so that the retired key no longer opens the file.
#[test]
fn an_interrupted_rekey_can_be_finished() {
    let base = encrypted_base();
    let (a, b) = (DatastoreKey::new(KEY_A), DatastoreKey::new(KEY_B));
    // The first commit of a rekey takes as many operations as a commit that changes
    // no file: ext table, file table, header, flush.
    let disk = Faulty::new(base.clone());
    let (mut v, _) = Vmgs::open(disk.clone(), Some(&a), OpenOptions::default()).unwrap();
    v.rekey(&b).unwrap();
    let per_commit = disk.ops() / 2;

    // A failure at the first write of the second commit: not poisoned.
    let disk = Faulty::new(base.clone());
    let (mut v, _) = Vmgs::open(disk.clone(), Some(&a), OpenOptions::default()).unwrap();
    disk.fail_in(per_commit);
    v.rekey(&b).unwrap_err();
    let mid = disk.visible();
    assert!(open(&mid, Some(&a), false).is_ok());
    assert!(open(&mid, Some(&b), false).is_ok());
    disk.heal();
    let finished = v.rekey(&b);
    assert!(
        finished.is_ok(),
        "after a failed second commit, rekey(new) cannot finish: {finished:?}"
    );
    let done = disk.visible();
    assert!(matches!(
        open(&done, Some(&a), false),
        Err(VmgsError::WrongKey)
    ));
    assert!(open(&done, Some(&b), false).is_ok());

    // A crash between the two commits, then the VM opens with the new key.
    let (mut v, _) = Vmgs::open(common::Mem(mid), Some(&b), OpenOptions::default()).unwrap();
    let finished = v.rekey(&b);
    assert!(
        finished.is_ok(),
        "after a crash between the commits, rekey(new) cannot finish: {finished:?}"
    );
    let done = v.storage().0.clone();
    assert!(matches!(
        open(&done, Some(&a), false),
        Err(VmgsError::WrongKey)
    ));
}
