//! The `qemu` backend: after the attested steps, the guest itself runs under QEMU
//! (q35 with SMM, TCG where there is no KVM) with OVMF's Secure Boot build, the VM's
//! UEFI variables from its VMGS (so the firmware enforces the VM's own db/dbx), the
//! VM's vTPM as `-tpmdev emulator` on its control socket, its OS disk (a
//! copy-on-write overlay of the image, kept across starts) and its serial console in
//! the VM's directory. The firmware measures the boot into the vTPM itself.
//!
//! What is not real here: memory encryption. The launch digest is computed over the
//! firmware QEMU runs (`snp_emu::ovmf::measure_snp`) and the report comes from the
//! host's emulated secure processor, but QEMU runs an ordinary guest (ADR 0016).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::agent::{BootFailure, BootSpec};
use control_api::codes::boot as code;

use crate::{HostError, fail};

/// The VM's serial console, in its directory.
pub const CONSOLE: &str = "console.log";
/// The VM's copy-on-write OS disk over its image (qcow2), in its directory.
pub const OVERLAY: &str = "os.qcow2";
/// The UEFI variable image QEMU's firmware runs with, written from the VMGS at each
/// start.
pub const VARS: &str = "OVMF_VARS.fd";
/// How long a start waits to see the guest's kernel on its console before it calls
/// the VM running (the firmware is then still booting; the console tells).
const KERNEL_WAIT: Duration = Duration::from_secs(15);
/// How long a guest may take to power off after an ACPI power-down request (an
/// orderly systemd shutdown under TCG takes a few seconds; with the vTPM's own
/// shutdown the whole stop stays within a remote agent's call deadline of 30 s).
const POWERDOWN_WAIT: Duration = Duration::from_secs(20);
/// The most memory a guest gets here, MiB (its size's memory under TCG on a small
/// host would only be reserved, never used).
const MAX_MEMORY_MIB: u32 = 2048;

/// The firmware a `qemu` host runs its guests with: Debian's `ovmf` Secure Boot
/// build and its variable image template.
pub struct Firmware {
    code: PathBuf,
    /// The code image's bytes (what the launch digest is computed over).
    pub code_bytes: Vec<u8>,
    vars: Vec<u8>,
}

impl std::fmt::Debug for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firmware")
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

/// Debian's OVMF Secure Boot build.
pub const DEBIAN_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Debian's empty OVMF variable image of that build.
pub const DEBIAN_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Firmware {
    /// Reads the code image `code` and the variable image template `vars`.
    pub fn load(code: &Path, vars: &Path) -> Result<Self, HostError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| HostError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(Firmware {
            code: code.to_path_buf(),
            code_bytes: read(code)?,
            vars: read(vars)?,
        })
    }
}

/// A guest QEMU runs.
pub struct Guest {
    child: Child,
    qmp: PathBuf,
}

impl Guest {
    /// Whether QEMU still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the guest to power off (ACPI, through QMP), waits for QEMU to end, and
    /// ends it if it does not.
    pub fn stop(&mut self) {
        if self.alive() {
            let _ = powerdown(&self.qmp);
            let deadline = Instant::now() + POWERDOWN_WAIT;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `system_powerdown` through QEMU's QMP socket at `path`.
fn powerdown(path: &Path) -> std::io::Result<()> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut greeting = String::new();
    r.read_line(&mut greeting)?;
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    s.write_all(b"{\"execute\":\"system_powerdown\"}\n")?;
    line.clear();
    r.read_line(&mut line)?;
    Ok(())
}

/// How much of the console's end [`stage`] is judged on, bytes.
pub const STAGE_WINDOW: u64 = 4 << 20;

/// The line the agent writes on the console before each boot.
pub const BOOT_MARK: &str = "=== opencvm: the guest starts ===";

/// How far the guest's console shows its last boot went (what follows the last
/// [`BOOT_MARK`]).
pub fn stage(console: &str) -> &'static str {
    let console = console
        .rfind(BOOT_MARK)
        .map_or(console, |at| &console[at + BOOT_MARK.len()..]);
    // The firmware's words count before the kernel's first line only (after it, the
    // guest prints what it likes).
    let firmware = console
        .find("Linux version")
        .map_or(console, |at| &console[..at]);
    if firmware.contains("Security Violation") || firmware.contains("Access Denied") {
        "refused by the firmware"
    } else if console.contains("Kernel panic") {
        "kernel panic"
    } else if console.contains(guest_agent::READY_LINE) {
        "guest agent ready"
    } else if console.contains("Welcome to Debian") || console.contains("systemd[1]") {
        "systemd"
    } else if console.contains("Linux version") {
        "kernel"
    } else if console.contains("GRUB") || console.contains("Booting `") {
        "boot loader"
    } else if console.contains("BdsDxe") || console.contains("UEFI") {
        "firmware"
    } else {
        "not yet on the console"
    }
}

/// The last `max` bytes of the VM's console in `dir` (lossy UTF-8), and where they
/// start in it.
pub fn console_tail(dir: &Path, max: u64) -> std::io::Result<(String, u64)> {
    use std::io::Seek as _;
    let mut f = std::fs::File::open(dir.join(CONSOLE))?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(max);
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), from))
}

/// Where QEMU writes its process id, in the VM's directory.
pub const PIDFILE: &str = "qemu.pid";

/// Ends a QEMU of the VM in `dir` that outlived its agent (the agent was killed: its
/// guest is orphaned, its vTPM gone): the process named in [`PIDFILE`] if it is a QEMU
/// running with this directory. Returns whether one was ended.
pub fn kill_stale(dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join(PIDFILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("qemu-system") && cmdline.contains(&opt(&dir.join(VARS)));
    if !ours {
        let _ = std::fs::remove_file(dir.join(PIDFILE));
        return false;
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() && Instant::now() < deadline {
        // A zombie of another parent keeps /proc/PID until reaped: its state tells.
        let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(dir.join(PIDFILE));
    true
}

/// A path as a QEMU option's value: its commas doubled (a single one would start
/// another option).
fn opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The last line of `text` that is not empty.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .chars()
        .take(300)
        .collect()
}

/// Starts the guest of `spec` in `dir`: `disk` (the VM's own raw disk, or, when
/// `None`, a copy-on-write overlay of its image made on first start), the variables
/// `store`, the vTPM's control socket `tpm_ctrl`. Waits until its kernel shows on the
/// console (or [`KERNEL_WAIT`] passes); a firmware refusal stops it there.
pub fn start(
    fw: &Firmware,
    spec: &BootSpec,
    dir: &Path,
    disk: Option<&Path>,
    store: &boot::varstore::VariableStore,
    tpm_ctrl: &Path,
) -> Result<(Guest, String), BootFailure> {
    let step = "guest";
    // A guest an earlier agent left running (it was killed) holds the disk: ended.
    kill_stale(dir);
    let io = |what: &Path, e: std::io::Error| {
        fail(step, code::HOST_AGENT, format!("{}: {e}", what.display()))
    };
    let (disk_path, format) = match disk {
        Some(d) => (d.to_path_buf(), "raw"),
        None => {
            let overlay = dir.join(OVERLAY);
            if !overlay.exists() {
                let image = std::fs::canonicalize(&spec.image).map_err(|e| io(&spec.image, e))?;
                let partial = dir.join(format!("{OVERLAY}.new"));
                let out = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(&image)
                    .arg(&partial)
                    .output()
                    .map_err(|e| {
                        fail(
                            step,
                            code::HOST_AGENT,
                            format!("qemu-img (Debian's qemu-utils): {e}"),
                        )
                    })?;
                if !out.status.success() {
                    return Err(fail(
                        step,
                        code::HOST_AGENT,
                        format!(
                            "qemu-img create: {}",
                            last_line(&String::from_utf8_lossy(&out.stderr))
                        ),
                    ));
                }
                std::fs::rename(&partial, &overlay).map_err(|e| io(&overlay, e))?;
            }
            (overlay, "qcow2")
        }
    };
    let vars = boot::ovmf::write(store, &fw.vars).map_err(|e| {
        fail(
            step,
            code::HOST_AGENT,
            format!("the VM's UEFI variables as an OVMF image: {e}"),
        )
    })?;
    let vars_path = dir.join(VARS);
    seal::write_secret_file(&vars_path, &vars).map_err(|e| {
        fail(
            step,
            code::HOST_AGENT,
            format!("{}: {e}", vars_path.display()),
        )
    })?;
    let console = dir.join(CONSOLE);
    let qmp = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let _ = std::fs::remove_file(dir.join(crate::guest::SOCKET));
    let qemu_log = dir.join("qemu.log");
    let log = std::fs::File::create(&qemu_log).map_err(|e| io(&qemu_log, e))?;
    let memory = spec.memory_mib.clamp(512, MAX_MEMORY_MIB);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35,smm=on", "-accel", "tcg"])
        .args([
            "-m",
            &memory.to_string(),
            "-smp",
            &spec.vcpus.max(1).to_string(),
        ])
        .args(["-display", "none", "-monitor", "none", "-nic", "none"])
        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            opt(&fw.code)
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            opt(&vars_path)
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format={format},if=virtio",
            opt(&disk_path)
        ))
        .arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", opt(tpm_ctrl)))
        .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
        .args(["-device", "tpm-crb,tpmdev=tpm0"])
        // The guest agent's channel: a virtio-serial port on a socket QEMU listens
        // on (the host agent connects once QEMU runs); the guest has no network.
        .args(["-device", "virtio-serial-pci,id=vser0"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=guestagent,path={},server=on,wait=off",
            opt(&dir.join(crate::guest::SOCKET))
        ))
        .arg("-device")
        .arg(format!(
            "virtserialport,bus=vser0.0,chardev=guestagent,name={}",
            guest_agent::wire::PORT_NAME
        ))
        .arg("-chardev")
        .arg(format!("file,id=console,path={},append=on", opt(&console)))
        .args(["-serial", "chardev:console"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", opt(&qmp)))
        .arg("-pidfile")
        .arg(dir.join(PIDFILE))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let started_at = std::fs::metadata(&console).map_or(0, |m| m.len());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
        .and_then(|mut f| writeln!(f, "\n{BOOT_MARK}"))
        .map_err(|e| io(&console, e))?;
    let child = cmd.spawn().map_err(|e| {
        fail(
            step,
            code::HOST_AGENT,
            format!("starting qemu-system-x86_64 (Debian's qemu-system-x86): {e}"),
        )
    })?;
    let mut guest = Guest { child, qmp };
    let deadline = Instant::now() + KERNEL_WAIT;
    let this_boot = || -> String {
        use std::io::Seek as _;
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&console)
            && f.seek(std::io::SeekFrom::Start(started_at)).is_ok()
        {
            let _ = f.take(STAGE_WINDOW).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    loop {
        let out = this_boot();
        let reached = stage(&out);
        if reached == "refused by the firmware" {
            let line = out
                .lines()
                .find(|l| l.contains("Security Violation") || l.contains("Access Denied"))
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            guest.stop();
            return Err(fail(
                "secure_boot",
                code::SECURE_BOOT_VIOLATION,
                format!("the firmware refused to boot the image under the VM's db/dbx: {line}"),
            ));
        }
        if !guest.alive() {
            let why = std::fs::read_to_string(&qemu_log).unwrap_or_default();
            return Err(fail(
                step,
                code::HOST_AGENT,
                format!("QEMU ended at stage {reached}: {}", last_line(&why)),
            ));
        }
        if matches!(
            reached,
            "kernel" | "systemd" | "guest agent ready" | "kernel panic"
        ) || Instant::now() > deadline
        {
            return Ok((
                guest,
                format!(
                    "QEMU (q35, SMM, TCG, {memory} MiB, {} vCPUs) runs the guest with OVMF's Secure Boot build and the VM's own db/dbx, the vTPM as its TPM and {} as its disk; console {} at stage: {reached}",
                    spec.vcpus,
                    disk_path.display(),
                    console.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_is_the_last_boots() {
        assert_eq!(stage(""), "not yet on the console");
        assert_eq!(stage("BdsDxe: loading Boot0001"), "firmware");
        assert_eq!(stage("BdsDxe\nWelcome to GRUB!"), "boot loader");
        assert_eq!(stage("GRUB\n[0.0] Linux version 6.1"), "kernel");
        assert_eq!(
            stage("Linux version\nKernel panic - not syncing"),
            "kernel panic"
        );
        assert_eq!(
            stage("BdsDxe\nSecurity Violation\nLinux version"),
            "refused by the firmware"
        );
        // The guest printing the firmware's words later is not a refusal.
        assert_eq!(stage("Linux version 6.1\nAccess Denied"), "kernel");
        // An earlier boot's lines do not count for the next one.
        let two = format!("Linux version 6.1\nsystemd[1]: ok\n{BOOT_MARK}\nBdsDxe: loading");
        assert_eq!(stage(&two), "firmware");
        assert_eq!(
            stage(&format!(
                "Linux version 6.1\nsystemd[1]: ok\n{}",
                guest_agent::READY_LINE
            )),
            "guest agent ready"
        );
    }
}
