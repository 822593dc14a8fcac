//! Files written to a VMGS read back after the file is closed and opened again, with
//! and without encryption, across a key rotation.

use vmgs::vmgs_format::FileId;
use vmgs::{DatastoreKey, OpenOptions, Vmgs, VmgsError};

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn files_survive_reopen_encrypted_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    for encrypted in [false, true] {
        let path = dir.path().join(format!("g{encrypted}.vmgs"));
        let key = DatastoreKey::new([7; 32]);
        let k = encrypted.then_some(&key);
        let mut v = Vmgs::create_file(&path, vmgs::DEFAULT_SIZE, k).unwrap();
        let files = [
            (FileId::TPM_NVRAM, data(65536, 1)),
            (FileId::BIOS_NVRAM, data(4097, 2)),
            (FileId::VM_UNIQUE_ID, data(16, 3)),
            (FileId::GUEST_SECRET_KEY, Vec::new()),
        ];
        for (id, d) in &files {
            v.write_file(*id, d, false).unwrap();
        }
        // Rewrites go to new blocks.
        v.write_file(FileId::TPM_NVRAM, &data(65536, 9), false)
            .unwrap();
        v.write_file(FileId::KEY_PROTECTOR, b"wrapped", true)
            .unwrap();
        drop(v);
        let (v, opened) = Vmgs::open_file(&path, k, OpenOptions::default()).unwrap();
        assert_eq!(opened.recovered_from, None);
        assert_eq!(opened.sequence, 7);
        assert_eq!(&*v.read_file(FileId::TPM_NVRAM).unwrap(), &data(65536, 9));
        assert_eq!(&*v.read_file(FileId::BIOS_NVRAM).unwrap(), &data(4097, 2));
        assert_eq!(&*v.read_file(FileId::GUEST_SECRET_KEY).unwrap(), b"");
        assert_eq!(&*v.read_file(FileId::KEY_PROTECTOR).unwrap(), b"wrapped");
        let list = v.list();
        assert_eq!(list.len(), 5);
        assert!(
            list.iter()
                .all(|f| f.encrypted == (encrypted && f.id != FileId::KEY_PROTECTOR))
        );
        drop(v);
        if encrypted {
            // Without the key: plaintext files only.
            let (v, _) = Vmgs::open_file(&path, None, OpenOptions::default()).unwrap();
            assert_eq!(&*v.read_file(FileId::KEY_PROTECTOR).unwrap(), b"wrapped");
            assert!(matches!(
                v.read_file(FileId::TPM_NVRAM),
                Err(VmgsError::KeyRequired(_))
            ));
            drop(v);
            let wrong = DatastoreKey::new([8; 32]);
            assert!(matches!(
                Vmgs::open_file(&path, Some(&wrong), OpenOptions::default()),
                Err(VmgsError::WrongKey)
            ));
        }
    }
}

#[test]
fn rekey_moves_the_file_to_the_new_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.vmgs");
    let old = DatastoreKey::new([1; 32]);
    let new = DatastoreKey::new([2; 32]);
    let mut v = Vmgs::create_file(&path, 1 << 20, Some(&old)).unwrap();
    v.write_file(FileId::TPM_NVRAM, b"state", false).unwrap();
    v.rekey(&new).unwrap();
    v.write_file(FileId::BIOS_NVRAM, b"vars", false).unwrap();
    drop(v);
    assert!(matches!(
        Vmgs::open_file(&path, Some(&old), OpenOptions::default()),
        Err(VmgsError::WrongKey)
    ));
    let (v, _) = Vmgs::open_file(&path, Some(&new), OpenOptions::default()).unwrap();
    assert_eq!(&*v.read_file(FileId::TPM_NVRAM).unwrap(), b"state");
    assert_eq!(&*v.read_file(FileId::BIOS_NVRAM).unwrap(), b"vars");
}

#[test]
fn a_full_vmgs_refuses_the_write_and_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.vmgs");
    let key = DatastoreKey::new([1; 32]);
    let mut v = Vmgs::create_file(&path, 16 * 4096, Some(&key)).unwrap();
    v.write_file(FileId::TPM_NVRAM, &data(5 * 4096, 1), false)
        .unwrap();
    let e = v
        .write_file(FileId::TPM_NVRAM, &data(9 * 4096, 2), false)
        .unwrap_err();
    assert!(matches!(e, VmgsError::NoSpace { .. }), "{e}");
    drop(v);
    let (v, _) = Vmgs::open_file(&path, Some(&key), OpenOptions::default()).unwrap();
    assert_eq!(
        &*v.read_file(FileId::TPM_NVRAM).unwrap(),
        &data(5 * 4096, 1)
    );
}
