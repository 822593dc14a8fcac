//! The key protector: the datastore key wrapped by a KEK inside the VMGS, rotated at
//! every open, crash-safely.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Faulty, Mem, data};
use vmgs::key_protector::{Kek, KeyProtector};
use vmgs::vmgs_format::FileId;
use vmgs::{DatastoreKey, OpenOptions, Vmgs, VmgsError};

const KEK: [u8; 32] = [0x4b; 32];

/// A protected VMGS of 64 blocks holding a vTPM state.
fn protected() -> Vec<u8> {
    let mut v = Vmgs::format_protected(Mem(vec![0; 64 * 4096]), &Kek::new(KEK)).unwrap();
    v.write_file(FileId::TPM_NVRAM, &data(20_000, 1), false)
        .unwrap();
    v.storage().0.clone()
}

/// The key protector of `image` (a plaintext file: read without any key).
fn key_protector(image: &[u8]) -> KeyProtector {
    let (v, _) = Vmgs::open(Mem(image.to_vec()), None, OpenOptions::default()).unwrap();
    KeyProtector::parse(&v.read_file(FileId::KEY_PROTECTOR).unwrap()).unwrap()
}

/// The datastore key in entry `i` of `image`'s key protector, unwrapped here with
/// aws-lc's RFC 5649 key unwrap (not through the module under test).
fn datastore_key(image: &[u8], i: usize) -> DatastoreKey {
    use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
    let w = key_protector(image).dek[i].unwrap();
    let mut out = [0u8; 40];
    let n = AesKek::new(&AES_256, &KEK)
        .unwrap()
        .unwrap_with_padding(&w, &mut out)
        .unwrap()
        .len();
    DatastoreKey::new(out[..n].try_into().unwrap())
}

#[test]
fn each_open_rotates_the_datastore_key_and_only_the_kek_opens_the_file() {
    let mut image = protected();
    let mut seen = Vec::new();
    for round in 0..4 {
        let kp = key_protector(&image);
        assert!(kp.dek[1 - kp.active].is_none(), "round {round}: {kp:?}");
        let before = datastore_key(&image, kp.active);
        // The key in the protector opens the file as it is...
        Vmgs::open(Mem(image.clone()), Some(&before), OpenOptions::default()).unwrap();
        seen.push(kp.dek[kp.active].unwrap());
        let (v, _) =
            Vmgs::open_protected(Mem(image.clone()), &Kek::new(KEK), OpenOptions::default())
                .unwrap();
        assert_eq!(&*v.read_file(FileId::TPM_NVRAM).unwrap(), &data(20_000, 1));
        image = v.storage().0.clone();
        // ...and not after the open rotated it.
        assert!(matches!(
            Vmgs::open(Mem(image.clone()), Some(&before), OpenOptions::default()),
            Err(VmgsError::WrongKey)
        ));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "a datastore key came back");
    // Another KEK opens nothing.
    let e = Vmgs::open_protected(Mem(image), &Kek::new([0x4c; 32]), OpenOptions::default())
        .unwrap_err();
    assert!(matches!(e, VmgsError::WrongKey), "{e}");
    assert!(e.is_integrity());
}

/// The rotation failed at each of its writes and flushes in turn: the file then opens
/// with the KEK (the next open finishes or redoes the rotation) with its content,
/// and so does every image a power loss at that moment could leave (with `recover`).
#[test]
fn a_rotation_interrupted_at_any_step_still_opens_with_the_kek() {
    let image = protected();
    let kek = Kek::new(KEK);
    let probe = Faulty::new(image.clone());
    let (_v, _) = Vmgs::open_protected(probe.clone(), &kek, OpenOptions::default()).unwrap();
    let ops = probe.ops();
    assert!(ops >= 8, "{ops} operations for four commits");
    for n in 0..=ops {
        let disk = Faulty::new(image.clone());
        disk.fail_in(n);
        let r = Vmgs::open_protected(disk.clone(), &kek, OpenOptions::default());
        assert_eq!(r.is_ok(), n == ops, "failure at operation {n}");
        drop(r);
        let (v, _) = Vmgs::open_protected(Mem(disk.visible()), &kek, OpenOptions::default())
            .unwrap_or_else(|e| panic!("after a failure at operation {n}: {e}"));
        assert_eq!(&*v.read_file(FileId::TPM_NVRAM).unwrap(), &data(20_000, 1));
        for (i, crash) in disk.crash_images().into_iter().enumerate() {
            let (v, _) = Vmgs::open_protected(Mem(crash), &kek, OpenOptions { recover: true })
                .unwrap_or_else(|e| panic!("operation {n}, crash image {i}: {e}"));
            assert_eq!(&*v.read_file(FileId::TPM_NVRAM).unwrap(), &data(20_000, 1));
        }
    }
}

#[test]
fn malformed_key_protectors_are_refused() {
    let kp = KeyProtector {
        dek: [Some([7; 40]), None],
        active: 0,
    };
    let b = kp.to_bytes();
    assert_eq!(b.len(), 2060);
    assert_eq!(KeyProtector::parse(&b).unwrap(), kp);
    for (at, what) in [(100, "DEK padding"), (1024, "GSP"), (2056, "active index")] {
        let mut bad = b.clone();
        bad[at] = 2;
        assert!(KeyProtector::parse(&bad).is_err(), "{what}");
    }
    let mut empty_active = b.clone();
    empty_active[2056] = 1;
    assert!(KeyProtector::parse(&empty_active).is_err());
    assert!(KeyProtector::parse(&b[..2059]).is_err());
}
