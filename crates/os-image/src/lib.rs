//! Builds a Debian 12 (bookworm) OS disk image from Debian's own packages, with
//! Debian's tools: no file in it is ours except the boot configuration.
//!
//! The image is a raw GPT disk:
//! - partition 1, the EFI system partition (FAT32, 256 MiB): Debian's signed shim
//!   (`shim-signed`, signed by Microsoft's UEFI CA) as `\EFI\BOOT\BOOTX64.EFI`,
//!   Debian's signed GRUB (`grub-efi-amd64-signed`) beside it as `grubx64.efi`, a
//!   `grub.cfg` (in `\EFI\BOOT` and `\EFI\debian`, where the signed GRUB looks), and
//!   the root's Debian-signed kernel and its initramfs as `\vmlinuz` and
//!   `\initrd.img` (on the ESP so that the boot chain can be checked from the ESP
//!   alone);
//! - partition 2, the root (ext4): `debootstrap --variant=minbase` of bookworm with
//!   `linux-image-amd64` and `systemd-sysv`, then `dracut`, `cryptsetup-bin`,
//!   `tpm2-tools` (with the TPM libraries `systemd-cryptsetup` loads) and `dbus`. The root file
//!   system is named by its UUID (the kernel's `root=`, `/etc/fstab`), which is the
//!   same whether the partition holds it in clear or inside LUKS2. The root also
//!   carries the guest agent (`/usr/local/bin/cvm-guest`, this workspace's, built for
//!   Debian 12's glibc and checked to run in the root) with its systemd unit
//!   `opencvm-guest.service`, enabled.
//!
//! The initramfs is dracut's (systemd in the initramfs, its `crypt` and `tpm2-tss`
//! modules, not host-only) and carries `/etc/crypttab` with one line: the LUKS2
//! volume labelled [`disk::os::ROOT_LABEL`] (the label the platform's pre-encryption
//! gives it) is opened as `root` by `systemd-cryptsetup` with the key the vTPM
//! unseals (`tpm2-device=auto`, the `systemd-tpm2` token), never by asking for a
//! passphrase (`headless`). In an image left in clear no volume has that label, and
//! the line (`nofail`) is passed over.
//!
//! Tools (Debian packages `debootstrap`, `dosfstools`, `mtools`, `e2fsprogs`,
//! `fdisk`, `apt`, `dpkg`) run as child processes; debootstrap needs root (through
//! `sudo` when not root). The packages come from this machine's apt sources, so the
//! build refuses to run on anything but Debian 12: it would label another release's
//! files as Debian 12.

#![forbid(unsafe_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// This machine cannot build the image.
    #[error("{0}")]
    Host(String),
    /// A tool failed.
    #[error("{tool} failed: {output}")]
    Tool {
        /// The command.
        tool: String,
        /// Its last output lines.
        output: String,
    },
    /// A file operation.
    #[error("{what}: {source}")]
    Io {
        /// Which file.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.to_string();
    move |source| BuildError::Io { what, source }
}

/// What was built.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Built {
    /// The disk image.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of it, hex.
    pub sha256: String,
    /// The root partition's PARTUUID.
    pub root_partuuid: String,
    /// The Debian packages the boot chain and root came from, `name version`.
    pub packages: Vec<String>,
    /// `/etc/debian_version` of the root.
    pub debian_version: String,
    /// The root file system's UUID (ext4), what the kernel mounts.
    #[serde(default)]
    pub root_uuid: String,
    /// Which version of this recipe built it ([`RECIPE`]); an image built by an
    /// earlier one is built again, not reused.
    #[serde(default)]
    pub recipe: u32,
    /// The guest agent in it (`cvm-guest VERSION`, as it says with `--version`).
    #[serde(default)]
    pub guest_agent: String,
}

/// The version of the image recipe: 2 added dracut, the crypttab line and the root
/// file system's UUID (so that the guest opens an encrypted root itself); 3 added
/// the guest agent (`cvm-guest` and its systemd unit).
pub const RECIPE: u32 = 3;

/// Where the image carries the guest agent.
pub const GUEST_AGENT_PATH: &str = "usr/local/bin/cvm-guest";

/// The guest agent's systemd unit: after the local file systems (the root is open),
/// its lines on the console as well as in the journal; started again if it fails
/// (an agent that finds no channel to its host ends, and is not).
const GUEST_AGENT_UNIT: &str = "[Unit]\nDescription=opencvm guest agent (cvm-guest)\nAfter=local-fs.target\n\n[Service]\nType=simple\nExecStart=/usr/local/bin/cvm-guest\nStandardOutput=journal+console\nStandardError=journal+console\nRestart=on-failure\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n";

/// The Debian packages added to the root after debootstrap: dracut (its initramfs
/// opens a LUKS2 root with the vTPM), cryptsetup, tpm2-tools (which dracut's
/// `tpm2-tss` module requires, and which lets a guest read its vTPM) and dbus
/// (without it systemd-logind does not run, and an ACPI power-down request, the
/// platform's clean stop, goes unanswered).
const EXTRA_PACKAGES: [&str; 4] = ["dracut", "cryptsetup-bin", "tpm2-tools", "dbus"];

/// The dracut configuration of the image: not host-only (the build machine is not
/// the guest), systemd's `crypt` and `tpm2-tss` modules, the guest's disk and TPM
/// drivers, and the crypttab.
const DRACUT_CONF: &str = "hostonly=\"no\"\nadd_dracutmodules+=\" crypt tpm2-tss \"\nadd_drivers+=\" tpm_crb tpm_tis virtio_blk virtio_pci virtio_scsi dm_crypt \"\ninstall_items+=\" /etc/crypttab \"\n";

/// The ESP's size, MiB.
const ESP_MIB: u64 = 256;

/// Runs `program args`, with `sudo` in front when `root` and we are not root.
fn run(program: &str, args: &[&str], root: bool, cwd: Option<&Path>) -> Result<String, BuildError> {
    let as_root = root && !is_root();
    let mut c = if as_root {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    c.args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Host(format!("{program}: {e} (scripts/setup installs it)")))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        let all = text + &String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = all.lines().rev().take(12).collect();
        return Err(BuildError::Tool {
            tool: format!("{program} {}", args.join(" ")),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(text)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A random UUID (version 4), lower-case.
fn uuid4() -> Result<String, BuildError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| BuildError::Host("no randomness".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Checks that this machine's apt installs Debian 12 packages.
fn check_host() -> Result<(), BuildError> {
    let os = std::fs::read_to_string("/etc/os-release").map_err(io("/etc/os-release"))?;
    let field = |k: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    if field("ID").as_deref() != Some("debian") || field("VERSION_ID").as_deref() != Some("12") {
        return Err(BuildError::Host(format!(
            "building debian-12 needs a Debian 12 machine (its apt fetches the packages); this is {} {}",
            field("ID").unwrap_or_default(),
            field("VERSION_ID").unwrap_or_default()
        )));
    }
    Ok(())
}

/// The first apt source URI for Debian's main archive (deb822 or one-line format),
/// default `http://deb.debian.org/debian`.
fn mirror() -> String {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    for t in texts {
        for l in t.lines() {
            let l = l.trim();
            let uri = l
                .strip_prefix("URIs:")
                .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                        .map(str::to_string)
                });
            if let Some(u) = uri
                && u.starts_with("http")
                && u.trim_end_matches('/').ends_with("/debian")
            {
                return u;
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// Builds the image at `out` in the work directory `work` (which may be removed
/// after), with the guest agent binary `guest_agent`. Progress lines go to
/// `progress`.
pub fn build_debian_12(
    out: &Path,
    work: &Path,
    guest_agent: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    let built = build(out, work, guest_agent, progress);
    // Whatever happened, the work directory (a root-owned root file system among it)
    // and a half-written image go.
    let _ = run(
        "rm",
        &["-rf", "--one-file-system", &work.display().to_string()],
        true,
        None,
    );
    if built.is_err() {
        let _ = std::fs::remove_file(out.with_extension("building"));
    }
    built
}

fn build(
    out: &Path,
    work: &Path,
    guest_agent: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    check_host()?;
    if !guest_agent.is_file() {
        return Err(BuildError::Host(format!(
            "the guest agent {} is missing (`cargo build -p cvm` builds it beside cvm)",
            guest_agent.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(io(work.display()))?;
    let rootfs = work.join("root");
    if rootfs.exists() {
        run("rm", &["-rf", &rootfs.display().to_string()], true, None)?;
    }
    let mirror = mirror();
    progress(&format!(
        "debootstrap bookworm (minbase, linux-image-amd64, systemd-sysv) from {mirror}"
    ));
    run(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=linux-image-amd64,systemd-sysv",
            "bookworm",
            &rootfs.display().to_string(),
            &mirror,
        ],
        true,
        None,
    )?;
    let debian_version = std::fs::read_to_string(rootfs.join("etc/debian_version"))
        .map_err(io("etc/debian_version"))?
        .trim()
        .to_string();
    if !debian_version.starts_with("12.") {
        return Err(BuildError::Host(format!(
            "the root is Debian {debian_version}, not 12"
        )));
    }
    // The initramfs's configuration first, so that dracut, installed next, builds
    // the initramfs with it.
    let crypttab = format!(
        "root LABEL={} none luks,tpm2-device=auto,headless=true,nofail,discard\n",
        disk::os::ROOT_LABEL
    );
    run(
        "mkdir",
        &[
            "-p",
            &rootfs.join("etc/dracut.conf.d").display().to_string(),
        ],
        true,
        None,
    )?;
    put_root_file(work, &rootfs, "etc/dracut.conf.d/opencvm.conf", DRACUT_CONF)?;
    put_root_file(work, &rootfs, "etc/crypttab", &crypttab)?;
    progress(&format!(
        "apt-get install {} (in the root; dracut builds the initramfs)",
        EXTRA_PACKAGES.join(" ")
    ));
    let rootfs_s = rootfs.display().to_string();
    run(
        "chroot",
        &[&rootfs_s, "apt-get", "update", "-q"],
        true,
        None,
    )?;
    let mut install = vec![
        rootfs_s.as_str(),
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    install.extend(EXTRA_PACKAGES);
    run("chroot", &install, true, None)?;
    run("chroot", &[&rootfs_s, "apt-get", "clean"], true, None)?;
    let mut packages = Vec::new();
    let installed = run(
        "chroot",
        &[
            &rootfs.display().to_string(),
            "dpkg-query",
            "-W",
            "-f",
            "${Package} ${Version}\\n",
            "linux-image-*",
            "systemd-sysv",
            "base-files",
            "dracut",
            "cryptsetup-bin",
            "tpm2-tools",
            "dbus",
        ],
        true,
        None,
    )?;
    packages.extend(
        installed
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some())
            .map(str::to_string),
    );
    run(
        "rm",
        &[
            "-rf",
            &rootfs.join("var/cache/apt/archives").display().to_string(),
            &rootfs.join("var/lib/apt/lists").display().to_string(),
        ],
        true,
        None,
    )?;

    progress("apt-get download shim-signed grub-efi-amd64-signed");
    let debs = work.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).map_err(io(debs.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&debs, std::fs::Permissions::from_mode(0o700))
            .map_err(io(debs.display()))?;
    }
    // As root, apt-get download would drop to the _apt user, which cannot write a
    // private directory; it runs as root instead (the directory stays 0700, so no
    // other user can put a package beside the two fetched).
    let sandbox = if is_root() {
        vec!["-o", "APT::Sandbox::User=root"]
    } else {
        Vec::new()
    };
    let mut args = sandbox;
    args.extend(["download", "-q", "shim-signed", "grub-efi-amd64-signed"]);
    run("apt-get", &args, false, Some(&debs))?;
    let x = work.join("x");
    let _ = std::fs::remove_dir_all(&x);
    for name in ["shim-signed", "grub-efi-amd64-signed"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&debs)
            .map_err(io(debs.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .collect();
        let (Some(deb), true) = (found.pop(), found.is_empty()) else {
            return Err(BuildError::Host(format!(
                "apt-get download gave not exactly one {name} package"
            )));
        };
        let p = deb.display().to_string();
        let fields = run("dpkg-deb", &["-f", &p, "Package", "Version"], false, None)?;
        let fields: Vec<&str> = fields
            .lines()
            .map(|l| l.split_once(": ").map_or(l, |(_, v)| v))
            .collect();
        if fields.first() != Some(&name) {
            return Err(BuildError::Host(format!("{p} is not the {name} package")));
        }
        run(
            "dpkg-deb",
            &["-x", &p, &x.display().to_string()],
            false,
            None,
        )?;
        packages.push(fields.join(" "));
    }
    packages.sort();
    let shim = x.join("usr/lib/shim/shimx64.efi.signed");
    let grub = x.join("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed");
    let boot = rootfs.join("boot");
    let find = |prefix: &str| -> Result<PathBuf, BuildError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&boot)
            .map_err(io(boot.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        v.sort();
        v.pop()
            .ok_or_else(|| BuildError::Host(format!("the root has no /boot/{prefix}*")))
    };
    let kernel = find("vmlinuz-")?;
    let initrd = find("initrd.img-")?;

    let root_partuuid = uuid4()?;
    let esp_partuuid = uuid4()?;
    let root_uuid = uuid4()?;
    // debootstrap copies the build machine's hostname; the image gets its own.
    put_root_file(
        work,
        &rootfs,
        "etc/fstab",
        &format!("UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"),
    )?;
    put_root_file(work, &rootfs, "etc/hostname", "debian\n")?;

    progress("the guest agent: /usr/local/bin/cvm-guest and its systemd unit");
    let agent_dest = rootfs.join(GUEST_AGENT_PATH);
    run(
        "install",
        &[
            "-m",
            "0755",
            &guest_agent.display().to_string(),
            &agent_dest.display().to_string(),
        ],
        true,
        None,
    )?;
    put_root_file(
        work,
        &rootfs,
        "etc/systemd/system/opencvm-guest.service",
        GUEST_AGENT_UNIT,
    )?;
    run(
        "ln",
        &[
            "-sf",
            "/etc/systemd/system/opencvm-guest.service",
            &rootfs
                .join("etc/systemd/system/multi-user.target.wants/opencvm-guest.service")
                .display()
                .to_string(),
        ],
        true,
        None,
    )?;
    // It must run on the image's own libraries, not only on this machine's.
    let guest_agent_version = run(
        "chroot",
        &[&rootfs_s, &format!("/{GUEST_AGENT_PATH}"), "--version"],
        true,
        None,
    )?
    .trim()
    .to_string();
    if !guest_agent_version.starts_with("cvm-guest ") {
        return Err(BuildError::Host(format!(
            "the guest agent in the root says {guest_agent_version:?} to --version"
        )));
    }

    progress("mkfs.vfat + mtools: the EFI system partition");
    let esp = work.join("esp.img");
    let f = std::fs::File::create(&esp).map_err(io(esp.display()))?;
    f.set_len(ESP_MIB << 20).map_err(io(esp.display()))?;
    drop(f);
    let esp_s = esp.display().to_string();
    run("mkfs.vfat", &["-F", "32", "-n", "ESP", &esp_s], false, None)?;
    let cfg = work.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "set timeout=0\nlinux /vmlinuz root=UUID={root_uuid} ro console=ttyS0 panic=-1\ninitrd /initrd.img\nboot\n"
        ),
    )
    .map_err(io(cfg.display()))?;
    run(
        "mmd",
        &["-i", &esp_s, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"],
        false,
        None,
    )?;
    for (from, to) in [
        (&shim, "::/EFI/BOOT/BOOTX64.EFI"),
        (&grub, "::/EFI/BOOT/grubx64.efi"),
        (&cfg, "::/EFI/BOOT/grub.cfg"),
        (&cfg, "::/EFI/debian/grub.cfg"),
        (&kernel, "::/vmlinuz"),
        (&initrd, "::/initrd.img"),
    ] {
        run(
            "mcopy",
            &["-i", &esp_s, &from.display().to_string(), to],
            true,
            None,
        )?;
    }

    progress("mkfs.ext4 -d: the root partition");
    let used_kib: u64 = run("du", &["-sk", &rootfs.display().to_string()], true, None)?
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let root_mib = (used_kib / 1024) * 5 / 4 + 256;
    let root_img = work.join("root.img");
    let root_s = root_img.display().to_string();
    let _ = std::fs::remove_file(&root_img);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-L",
            "debian-root",
            "-U",
            &root_uuid,
            "-d",
            &rootfs.display().to_string(),
            &root_s,
            &format!("{root_mib}M"),
        ],
        true,
        None,
    )?;

    progress("sfdisk: the GPT");
    let esp_sectors = ESP_MIB * 2048;
    let root_start = 2048 + esp_sectors;
    let root_sectors = root_mib * 2048;
    let total = (root_start + root_sectors + 2048) * 512;
    let tmp_out = out.with_extension("building");
    let f = std::fs::File::create(&tmp_out).map_err(io(tmp_out.display()))?;
    f.set_len(total).map_err(io(tmp_out.display()))?;
    drop(f);
    let table = format!(
        "label: gpt\nstart=2048, size={esp_sectors}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={esp_partuuid}, name=\"EFI system partition\"\nstart={root_start}, size={root_sectors}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={root_partuuid}, name=\"root\"\n"
    );
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&tmp_out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| BuildError::Host(format!("sfdisk: {e}")))?;
    if let Some(mut i) = sfdisk.stdin.take() {
        i.write_all(table.as_bytes()).map_err(io("sfdisk"))?;
    }
    if !sfdisk.wait().map_err(io("sfdisk"))?.success() {
        return Err(BuildError::Tool {
            tool: "sfdisk".into(),
            output: table,
        });
    }
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp_out)
        .map_err(io(tmp_out.display()))?;
    for (part, start) in [(&esp, 2048u64), (&root_img, root_start)] {
        let mut from = std::fs::File::open(part).map_err(io(part.display()))?;
        disk.seek(SeekFrom::Start(start * 512))
            .map_err(io(tmp_out.display()))?;
        std::io::copy(&mut from, &mut disk).map_err(io(tmp_out.display()))?;
    }
    disk.sync_all().map_err(io(tmp_out.display()))?;
    drop(disk);
    std::fs::rename(&tmp_out, out).map_err(io(out.display()))?;
    let (bytes, sha256) = digest(out)?;
    let built = Built {
        path: out.to_path_buf(),
        bytes,
        sha256,
        root_partuuid,
        packages,
        debian_version,
        root_uuid,
        recipe: RECIPE,
        guest_agent: guest_agent_version,
    };
    let _ = run(
        "rm",
        &["-rf", &rootfs.display().to_string(), &root_s],
        true,
        None,
    );
    let _ = std::fs::remove_file(&esp);
    Ok(built)
}

/// Writes `text` to `file` (a path inside `rootfs`) as root (the root file system
/// belongs to root), through a file in `work`.
fn put_root_file(work: &Path, rootfs: &Path, file: &str, text: &str) -> Result<(), BuildError> {
    let tmp = work.join(file.replace('/', "-"));
    std::fs::write(&tmp, text).map_err(io(tmp.display()))?;
    run(
        "cp",
        &[
            &tmp.display().to_string(),
            &rootfs.join(file).display().to_string(),
        ],
        true,
        None,
    )?;
    Ok(())
}

/// Size and SHA-256 of a file.
pub fn digest(path: &Path) -> Result<(u64, String), BuildError> {
    let mut f = std::fs::File::open(path).map_err(io(path.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(io(path.display()))?;
        if r == 0 {
            break;
        }
        ctx.update(buf.get(..r).unwrap_or_default());
        n += r as u64;
    }
    Ok((n, hex::encode(ctx.finish().as_ref())))
}
