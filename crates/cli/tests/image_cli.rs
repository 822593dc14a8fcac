//! The Debian 12 image `cvm image build debian-12` makes (into `target/images`, the
//! cache the quick start fills too; built there if missing, from Debian's packages):
//! checked with tools nobody here wrote (sfdisk, debugfs, mtools) and booted under
//! QEMU/OVMF with Secure Boot on, under the linux template's UEFI variables, to
//! Debian's login prompt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The built image (from the cache, or built now) and its manifest.
fn image() -> (PathBuf, Value) {
    common::qemu::debian_image()
}

fn tool(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn cvm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_debian_image_is_debians_boot_chain_and_root_and_boots_with_secure_boot() {
    let (img, manifest) = image();
    let s = img.to_str().unwrap();
    // The manifest names Debian's packages and a Debian 12 root.
    let packages: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "shim-signed ",
        "grub-efi-amd64-signed ",
        "linux-image-amd64 ",
        "systemd-sysv ",
        "dracut ",
        "tpm2-tools ",
    ] {
        assert!(
            packages.iter().any(|x| x.starts_with(p)),
            "{p}: {packages:?}"
        );
    }
    assert!(
        manifest["debian_version"]
            .as_str()
            .unwrap()
            .starts_with("12.")
    );
    // The GPT: an ESP and an x86-64 root whose PARTUUID the manifest (and fstab) name.
    let table: Value = serde_json::from_str(&tool(&["sfdisk", "--json", s])).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let partuuid = manifest["root_partuuid"].as_str().unwrap();
    assert_eq!(parts[1]["uuid"].as_str().unwrap().to_lowercase(), partuuid);
    // The root, read by debugfs.
    let root = format!("{s}?offset={}", parts[1]["start"].as_u64().unwrap() * 512);
    let cat = |f: &str| tool(&["debugfs", "-R", &format!("cat {f}"), &root]);
    assert_eq!(
        cat("/etc/debian_version").trim(),
        manifest["debian_version"].as_str().unwrap()
    );
    // The root file system is named by its UUID (the same in clear or inside LUKS2),
    // and the initramfs's crypttab opens a LUKS2 root by the label the platform's
    // pre-encryption gives it, with the vTPM only.
    let uuid = manifest["root_uuid"].as_str().unwrap();
    assert_eq!(manifest["recipe"], os_image::RECIPE);
    assert!(cat("/etc/fstab").contains(&format!("UUID={uuid} / ext4")));
    let crypttab = cat("/etc/crypttab");
    assert!(
        crypttab.contains(&format!("root LABEL={} none ", disk::os::ROOT_LABEL))
            && crypttab.contains("tpm2-device=auto")
            && crypttab.contains("headless=true"),
        "{crypttab}"
    );
    assert!(cat("/usr/lib/os-release").contains("VERSION_ID=\"12\""));
    // The guest agent: this workspace's `cvm-guest` (the build ran it in the root),
    // executable, its unit enabled for multi-user boots.
    assert_eq!(
        manifest["guest_agent"],
        format!("cvm-guest {}", env!("CARGO_PKG_VERSION"))
    );
    let unit = cat("/etc/systemd/system/opencvm-guest.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/cvm-guest"),
        "{unit}"
    );
    let wants = tool(&[
        "debugfs",
        "-R",
        "ls /etc/systemd/system/multi-user.target.wants",
        &root,
    ]);
    assert!(wants.contains("opencvm-guest.service"), "{wants}");
    let stat = tool(&["debugfs", "-R", "stat /usr/local/bin/cvm-guest", &root]);
    assert!(stat.contains("Mode:  0755"), "{stat}");
    // The ESP, read by mtools: the kernel there is the root's.
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    let start = parts[0]["start"].as_u64().unwrap() * 512;
    let len = parts[0]["size"].as_u64().unwrap() * 512;
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&esp, &bytes[start as usize..(start + len) as usize]).unwrap();
    drop(bytes);
    let listing = tool(&["mdir", "-i", esp.to_str().unwrap(), "-/", "-b", "::/"]);
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/EFI/BOOT/grubx64.efi",
        "::/EFI/debian/grub.cfg",
        "::/vmlinuz",
        "::/initrd.img",
    ] {
        assert!(
            listing.lines().any(|l| l.eq_ignore_ascii_case(f)),
            "{f} in {listing}"
        );
    }
    let esp_kernel = dir.path().join("vmlinuz");
    tool(&[
        "mcopy",
        "-i",
        esp.to_str().unwrap(),
        "::/vmlinuz",
        esp_kernel.to_str().unwrap(),
    ]);
    let ls = tool(&["debugfs", "-R", "ls -l /boot", &root]);
    let name = ls
        .split_whitespace()
        .find(|w| w.starts_with("vmlinuz-"))
        .unwrap();
    let root_kernel = dir.path().join("root-vmlinuz");
    tool(&[
        "debugfs",
        "-R",
        &format!("dump /boot/{name} {}", root_kernel.display()),
        &root,
    ]);
    assert_eq!(
        std::fs::read(&esp_kernel).unwrap(),
        std::fs::read(&root_kernel).unwrap()
    );

    // Boot it: OVMF with Secure Boot, the linux template's variables, the disk as a
    // snapshot (the cached image is not written).
    let store = dir.path().join("vars.json");
    let vars = dir.path().join("vars.fd");
    assert!(
        cvm(&[
            "boot",
            "vars",
            "create",
            "--template",
            "linux",
            "--store",
            store.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert!(
        cvm(&[
            "boot",
            "vars",
            "export",
            "--store",
            store.to_str().unwrap(),
            "--ovmf",
            vars.to_str().unwrap()
        ])
        .status
        .success()
    );
    let serial = boot(dir.path(), &vars, &img);
    assert!(
        serial.contains("secureboot: Secure boot enabled"),
        "{serial}"
    );
    assert!(serial.contains("Debian Secure Boot CA"), "{serial}");
    assert!(
        serial.contains("Debian GNU/Linux 12 debian ttyS0"),
        "{serial}"
    );
    assert!(serial.contains("debian login:"), "{serial}");
}

/// Runs QEMU until the login prompt, a firmware refusal, its exit or 300 s.
fn boot(dir: &Path, vars: &Path, disk: &Path) -> String {
    common::qemu::secure_boot(
        &dir.join("serial.log"),
        vars,
        disk,
        &["-snapshot".to_string()],
        &[
            "login:",
            "Security Violation",
            "Access Denied",
            "Kernel panic",
        ],
        std::time::Duration::from_secs(300),
    )
    .replace('\r', "")
}
