//! QEMU guests under TCG with OVMF's Secure Boot firmware.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian 12 image `cvm image build debian-12` makes, from the cache the quick
/// start fills (`target/images`; built there now if missing), and its manifest.
pub fn debian_image() -> (PathBuf, serde_json::Value) {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/images");
    let o = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args([
            "image",
            "build",
            "debian-12",
            "--no-import",
            "--json",
            "--cache",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cvm image build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (PathBuf::from(manifest["path"].as_str().unwrap()), manifest)
}

/// Boots `disk` (virtio) with Debian's Secure Boot OVMF and the variables image `vars`
/// (q35, SMM, 1 GiB), the serial console to `serial`, with `extra` arguments; stops it
/// once the console shows one of `done`, QEMU exits, or `timeout` passes. The console.
pub fn secure_boot(
    serial: &Path,
    vars: &Path,
    disk: &Path,
    extra: &[String],
    done: &[&str],
    timeout: Duration,
) -> String {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,smm=on",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nographic",
        ])
        .args(["-nic", "none", "-no-reboot", "-monitor", "none"])
        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
        .args([
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .args(extra)
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs qemu-system-x86)");
    let deadline = Instant::now() + timeout;
    let read = || String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).to_string();
    let out = loop {
        let log = read();
        let finished = done.iter().any(|m| log.contains(m));
        if finished || Instant::now() > deadline || qemu.try_wait().unwrap().is_some() {
            // Let a refusal message finish printing.
            std::thread::sleep(Duration::from_millis(500));
            break read();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    out
}

/// Files for one guest: an initramfs whose init prints the PCRs the kernel reads from
/// the vTPM and the firmware event log, then powers off.
pub fn initramfs(dir: &Path, hold: bool) -> PathBuf {
    let root = dir.join("initrd");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (scripts/setup installs busybox-static)");
    let init = "#!/bin/busybox sh\n\
/bin/busybox --install -s /bin\n\
mkdir -p /proc /sys\n\
mount -t proc proc /proc\n\
mount -t sysfs sysfs /sys\n\
mount -t securityfs securityfs /sys/kernel/security\n\
echo 1 > /proc/sys/kernel/printk\n\
for i in 0 1 2 3 4 5 6 7; do echo OPENCVM-PCR sha256 $i $(cat /sys/class/tpm/tpm0/pcr-sha256/$i); done\n\
echo OPENCVM-EVENTLOG-BEGIN\n\
base64 /sys/kernel/security/tpm0/binary_bios_measurements\n\
echo OPENCVM-EVENTLOG-END\n";
    // Held: the guest stays up (the test kills QEMU, so the vTPM keeps its PCRs for
    // unsealing); otherwise it powers off.
    let init = format!(
        "{init}{}",
        if hold {
            "while true; do sleep 3600; done\n"
        } else {
            "poweroff -f\n"
        }
    );
    std::fs::write(root.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initrd.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$0\"")
        .arg(&out)
        .current_dir(&root)
        .status()
        .expect("cpio (scripts/setup installs it)");
    assert!(status.success());
    out
}

/// A raw GPT disk whose EFI system partition holds `loader` as the default boot
/// loader, `grub` beside it, Debian's kernel (the boot fixtures'), the initramfs
/// [`initramfs`] made in `dir` and a grub.cfg that boots them; when `data` is given, a
/// second (Linux) partition holding it.
pub fn os_disk(dir: &Path, name: &str, loader: &Path, grub: &Path, data: Option<&[u8]>) -> PathBuf {
    let cfg = dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        "set timeout=0\nlinux /vmlinuz console=ttyS0 panic=-1\ninitrd /initrd.img\nboot\n",
    )
    .unwrap();
    let initrd = dir.join("initrd.img");
    let kernel = super::esp::fixtures().join("vmlinuz");
    super::esp::gpt_disk(
        dir,
        name,
        &[
            ("EFI/BOOT/BOOTX64.EFI", loader),
            ("EFI/BOOT/grubx64.efi", grub),
            ("EFI/BOOT/grub.cfg", &cfg),
            ("EFI/debian/grub.cfg", &cfg),
            ("vmlinuz", &kernel),
            ("initrd.img", &initrd),
        ],
        data,
    )
}

/// The base64 event log and the PCRs the guest printed.
pub fn guest_report(serial: &str) -> (Vec<u8>, std::collections::BTreeMap<String, String>) {
    use base64::Engine as _;
    let mut pcrs = std::collections::BTreeMap::new();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("OPENCVM-PCR sha256 ") {
            let mut f = rest.split_whitespace();
            let (i, v) = (f.next().unwrap(), f.next().unwrap_or_default());
            pcrs.insert(i.to_string(), v.to_lowercase());
        }
    }
    let start = serial.find("OPENCVM-EVENTLOG-BEGIN").expect("no event log")
        + "OPENCVM-EVENTLOG-BEGIN".len();
    let end = serial.find("OPENCVM-EVENTLOG-END").unwrap();
    // Kernel messages may still interleave with the guest's output: only lines of
    // base64 belong to the log.
    let b64: String = serial[start..end]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        })
        .collect();
    (
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        pcrs,
    )
}
