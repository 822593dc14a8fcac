//! The FAT reader on filesystems that dosfstools (mkfs.vfat) made and mtools filled:
//! FAT12, FAT16 and FAT32, short and long names, nested directories, files spanning
//! many clusters; and the boot files found on them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use boot::fat::Fat;

fn run(program: &str, args: &[&str]) {
    let o = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (scripts/setup installs dosfstools and mtools)")
        });
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A FAT image of `fat` bits and `size_kib`, holding `files` (path, contents).
fn image(dir: &Path, fat: u32, size_kib: u64, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let img = dir.join(format!("fat{fat}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size_kib * 1024).unwrap();
    drop(f);
    let s = img.to_str().unwrap();
    run("mkfs.vfat", &["-F", &fat.to_string(), s]);
    for (i, (path, data)) in files.iter().enumerate() {
        let parent = Path::new(path).parent().unwrap().to_str().unwrap();
        let mut at = String::from("::");
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            at.push('/');
            at.push_str(part);
            let o = Command::new("mmd")
                .args(["-D", "s", "-i", s, &at])
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap();
            let _ = o; // existing directories are fine
        }
        let src = dir.join(format!("src{i}"));
        std::fs::write(&src, data).unwrap();
        run(
            "mcopy",
            &["-i", s, src.to_str().unwrap(), &format!("::{path}")],
        );
    }
    std::fs::read(&img).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn files_read_back_from_fat12_fat16_and_fat32() {
    let tmp = tempfile::tempdir().unwrap();
    for (fat, kib) in [(12u32, 1440u64), (16, 32 * 1024), (32, 64 * 1024)] {
        let files = vec![
            ("/EFI/BOOT/BOOTX64.EFI", pattern(70_000, 1)),
            ("/EFI/BOOT/grubx64.efi", pattern(5_000, 2)),
            ("/EFI/debian/A long file name.cfg", pattern(10, 3)),
            ("/empty", Vec::new()),
        ];
        let bytes = image(tmp.path(), fat, kib, &files);
        let fs = Fat::open(bytes.as_slice()).unwrap();
        for (path, data) in &files {
            assert_eq!(
                fs.read_file(path).unwrap().as_ref(),
                Some(data),
                "FAT{fat} {path}"
            );
            // Case does not matter, as on firmware.
            assert_eq!(
                fs.read_file(&path.to_uppercase()).unwrap().as_ref(),
                Some(data)
            );
        }
        assert_eq!(fs.read_file("/EFI/BOOT/missing.efi").unwrap(), None);
        assert!(
            fs.read_file("/EFI/BOOT").is_err(),
            "a directory is not a file"
        );
        let boot = boot::esp::read_from_fat(bytes.as_slice()).unwrap();
        assert_eq!(boot.loader, files[0].1);
        assert_eq!(boot.second_stage.as_deref(), Some(files[1].1.as_slice()));
    }
}

#[test]
fn broken_filesystems_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = image(
        tmp.path(),
        16,
        32 * 1024,
        &[("/EFI/BOOT/BOOTX64.EFI", pattern(70_000, 1))],
    );
    assert!(Fat::open(&bytes[..100]).is_err());
    // Point the FAT at a loop: every cluster of the file links to itself.
    let fs = Fat::open(bytes.as_slice()).unwrap();
    assert!(fs.read_file("/EFI/BOOT/BOOTX64.EFI").unwrap().is_some());
    let reserved = u16::from_le_bytes([bytes[14], bytes[15]]) as usize * 512;
    for c in 2..200usize {
        let at = reserved + c * 2;
        bytes[at..at + 2].copy_from_slice(&(c as u16).to_le_bytes());
    }
    let fs = Fat::open(bytes.as_slice()).unwrap();
    let e = fs.read_file("/EFI/BOOT/BOOTX64.EFI").unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
    assert!(boot::esp::read_from_fat(bytes.as_slice()).is_err());
    // Not a FAT filesystem at all.
    assert!(Fat::open(vec![0u8; 4096].as_slice()).is_err());
}
