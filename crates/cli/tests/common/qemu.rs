//! QEMU guests under TCG with OVMF's Secure Boot firmware.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
