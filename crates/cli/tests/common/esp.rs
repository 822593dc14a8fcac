//! Raw GPT disks with an EFI system partition holding Debian's signed boot chain (the
//! fixtures of `scripts/boot-fixtures`), made with the tools firmware's own users
//! use: mkfs.vfat, mtools and sfdisk.
#![allow(dead_code)]

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The boot fixtures' directory: `OPENCVM_BOOT_FIXTURES` (scripts/test sets it) or
/// `target/boot-fixtures`, holding shim, GRUB and the kernel.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("OPENCVM_BOOT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/boot-fixtures")
        });
    for f in ["shimx64.efi.signed", "grubx64.efi.signed", "vmlinuz"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run scripts/boot-fixtures (scripts/test does)",
            dir.join(f).display()
        );
    }
    dir
}

fn run(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/setup installs it): {e}", args[0]));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A GPT disk `dir/name.img` whose ESP holds `files` (path on the ESP, e.g.
/// `EFI/BOOT/BOOTX64.EFI`, and the file to put there), and, when `data` is given, a
/// Linux partition after it holding those bytes.
pub fn gpt_disk(dir: &Path, name: &str, files: &[(&str, &Path)], data: Option<&[u8]>) -> PathBuf {
    let esp = dir.join(format!("{name}.esp"));
    std::fs::File::create(&esp)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(&["mkfs.vfat", "-F", "32", esp.to_str().unwrap()]);
    let img = esp.to_str().unwrap();
    let mut made = std::collections::BTreeSet::new();
    for (to, from) in files {
        let mut parent = String::new();
        let parts: Vec<&str> = to.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            parent = format!("{parent}/{p}");
            if made.insert(parent.clone()) {
                run(&["mmd", "-i", img, &format!("::{parent}")]);
            }
        }
        run(&[
            "mcopy",
            "-i",
            img,
            from.to_str().unwrap(),
            &format!("::/{to}"),
        ]);
    }
    let disk = dir.join(format!("{name}.img"));
    let data_mib = data.map_or(0, |d| (d.len() as u64).div_ceil(1 << 20));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len((66 + data_mib) << 20)
        .unwrap();
    let mut table =
        "label: gpt\nstart=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
            .to_string();
    if data_mib > 0 {
        table.push_str(&format!(
            "start=133120, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
            data_mib * 2048
        ));
    }
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (scripts/setup installs it)");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let esp_bytes = std::fs::read(&esp).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&esp_bytes).unwrap();
    if let Some(d) = data {
        f.seek(SeekFrom::Start(133120 * 512)).unwrap();
        f.write_all(d).unwrap();
    }
    let _ = std::fs::remove_file(&esp);
    disk
}
