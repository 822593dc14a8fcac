//! `cvm boot verify-image` and `cvm boot shim` on real signed binaries from Debian's
//! archive (fetched by `scripts/boot-fixtures`, never committed), with tools nobody
//! here wrote as oracles: osslsigncode (Authenticode digests), efitools
//! (`hash-to-efi-sig-list`, `cert-to-efi-sig-list`: signature lists), openssl; and
//! `cvm eventlog replay --json` on every real event log in `testdata/eventlog`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use boot::esl::{OPENCVM_OWNER, Signature};
use boot::{Entry, HashAlg, SignatureDb};

fn fixtures() -> PathBuf {
    common::esp::fixtures()
}

fn microsoft(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../boot/certs/microsoft")
        .join(name)
}

fn cvm(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cvm"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs verify-image and returns (exit code, stdout+stderr).
fn verify(image: &Path, db: &[&Path], dbx: &[&Path], extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cvm"));
    cmd.args(["boot", "verify-image"]).arg(image);
    for d in db {
        cmd.arg("--db").arg(d);
    }
    for d in dbx {
        cmd.arg("--dbx").arg(d);
    }
    cmd.args(extra);
    let o = cmd.output().unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

fn tool(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(program);
    for a in args {
        cmd.arg(a);
    }
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs it)"));
    assert!(o.status.success(), "{program} failed: {}", text(&o));
    o
}

/// `cvm boot vars create --template TEMPLATE --store PATH`; returns PATH.
fn template_store(path: &Path, template: &str) -> PathBuf {
    let o = cvm(&[
        &"boot",
        &"vars",
        &"create",
        &"--template",
        &template,
        &"--store",
        &path,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    path.to_path_buf()
}

/// `cvm boot vars export --store STORE --ovmf OUT`.
fn export_vars(store: &Path, out: &Path) {
    let o = cvm(&[
        &"boot", &"vars", &"export", &"--store", &store, &"--ovmf", &out,
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The shim's vendor certificate (Debian Secure Boot CA), written by `cvm boot shim`.
fn debian_ca(dir: &Path) -> PathBuf {
    let out = dir.join("debian-ca.der");
    let o = cvm(&[
        &"boot",
        &"shim",
        &fixtures().join("shimx64.efi.signed"),
        &"--vendor-cert",
        &out,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("vendor certificate: Debian Secure Boot CA"),
        "{}",
        text(&o)
    );
    // openssl reads what we extracted as the same certificate.
    let subject = tool(
        "openssl",
        &[
            &"x509",
            &"-inform",
            &"der",
            &"-in",
            &out,
            &"-noout",
            &"-subject",
        ],
    );
    assert!(String::from_utf8_lossy(&subject.stdout).contains("CN = Debian Secure Boot CA"));
    out
}

/// A copy of `image` with one byte of its first section flipped.
fn altered(image: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(image).unwrap();
    let pe = boot::PeImage::parse(&bytes).unwrap();
    let text_section = pe.sections().iter().find(|s| s.raw_size > 0).unwrap();
    let at = text_section.raw_offset as usize + 100;
    drop(pe);
    bytes[at] ^= 0x01;
    let out = dir.join(format!(
        "{}.altered",
        image.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// A signature list holding the image's Authenticode SHA-256. (efitools'
/// `hash-to-efi-sig-list` 1.9.2 fails on these images and writes a zero hash; the
/// digest itself is checked against osslsigncode below.)
fn digest_list(image: &Path, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(image).unwrap();
    let digest = boot::PeImage::parse(&bytes)
        .unwrap()
        .authenticode_digest(HashAlg::Sha256)
        .unwrap();
    let list = SignatureDb {
        entries: vec![Entry {
            owner: OPENCVM_OWNER,
            signature: Signature::Hash(HashAlg::Sha256, digest),
        }],
    };
    let out = dir.join(format!(
        "{}.hash.esl",
        image.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&out, list.encode()).unwrap();
    out
}

#[test]
fn authenticode_digests_equal_osslsigncode() {
    let dir = fixtures();
    for name in ["grubx64.efi.signed", "vmlinuz"] {
        let image = dir.join(name);
        let o = Command::new("osslsigncode")
            .args(["verify", "-in"])
            .arg(&image)
            .output()
            .expect("osslsigncode (scripts/setup installs it)");
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let theirs = out
            .lines()
            .find_map(|l| l.strip_prefix("Calculated message digest :"))
            .unwrap_or_else(|| panic!("osslsigncode printed no digest for {name}: {out}"))
            .trim()
            .to_lowercase();
        let (_, json) = verify(&image, &[&microsoft("uefi-ca-2011.der")], &[], &["--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["sha256"].as_str().unwrap(), theirs, "{name}");
    }
}

#[test]
fn shim_verifies_against_either_microsoft_uefi_ca_and_nothing_else() {
    let dir = fixtures();
    let shim = dir.join("shimx64.efi.signed");
    let tmp = tempfile::tempdir().unwrap();
    let ca2011 = microsoft("uefi-ca-2011.der");
    let ca2023 = microsoft("uefi-ca-2023.der");

    // Each of its two signatures verifies on its own path.
    let (code, out) = verify(&shim, &[&ca2011], &[], &["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["verdict"], "verified");
    assert_eq!(
        v["result"]["authority"]["subject"],
        "Microsoft Corporation UEFI CA 2011"
    );
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(v["signatures"][0]["result"], "db");
    assert_eq!(v["signatures"][1]["result"], "no_chain");
    let (code, out) = verify(&shim, &[&ca2023], &[], &["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["result"]["authority"]["subject"],
        "Microsoft UEFI CA 2023"
    );
    assert_eq!(v["signatures"][0]["result"], "no_chain");
    assert_eq!(v["signatures"][1]["result"], "db");

    // A wrong db: the Windows production CA, or Debian's own CA.
    let (code, out) = verify(&shim, &[&microsoft("windows-pca-2011.der")], &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused: no signature chains to a db certificate"),
        "{out}"
    );
    let (code, out) = verify(&shim, &[&debian_ca(tmp.path())], &[], &[]);
    assert_eq!(code, 1, "{out}");

    // One byte changed: both signatures fail.
    let (code, out) = verify(&altered(&shim, tmp.path()), &[&ca2011, &ca2023], &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the image was changed after signing"), "{out}");

    // Its digest in dbx.
    let hash_esl = digest_list(&shim, tmp.path());
    let (code, out) = verify(&shim, &[&ca2011, &ca2023], &[&hash_esl], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the image digest is in dbx"), "{out}");

    // A signer chain certificate in dbx refuses the image even though the other
    // signature chains to db (edk2: any forbidden signature denies).
    let (code, out) = verify(&shim, &[&ca2011, &ca2023], &[&ca2011], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Microsoft Corporation UEFI CA 2011") && out.contains("is in dbx"),
        "{out}"
    );

    // Microsoft's published dbx (an authenticated update) does not revoke this shim.
    let (code, out) = verify(
        &shim,
        &[&ca2011],
        &[&microsoft("dbx-update-amd64.bin")],
        &[],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn grub_and_the_kernel_verify_against_debians_ca_as_shim_would() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let debian = debian_ca(tmp.path());
    // The same certificate as an EFI signature list written by efitools.
    let pem = tmp.path().join("debian.pem");
    tool(
        "openssl",
        &[&"x509", &"-inform", &"der", &"-in", &debian, &"-out", &pem],
    );
    let debian_esl = tmp.path().join("debian.esl");
    tool("cert-to-efi-sig-list", &[&pem, &debian_esl]);

    for name in ["grubx64.efi.signed", "vmlinuz"] {
        let image = dir.join(name);
        for db in [&debian, &pem, &debian_esl] {
            let (code, out) = verify(&image, &[db], &[], &[]);
            assert_eq!(code, 0, "{name} with {}: {out}", db.display());
            assert!(
                out.contains("verified: signed by a chain to \"Debian Secure Boot CA\""),
                "{out}"
            );
        }
        // Wrong db.
        let (code, out) = verify(&image, &[&microsoft("uefi-ca-2011.der")], &[], &[]);
        assert_eq!(code, 1, "{name}: {out}");
        // One byte changed.
        let (code, out) = verify(&altered(&image, tmp.path()), &[&debian], &[], &[]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains("changed after signing"), "{out}");
        // Its digest in dbx.
        let hash_esl = digest_list(&image, tmp.path());
        let (code, out) = verify(&image, &[&debian], &[&hash_esl], &[]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains("digest is in dbx"), "{out}");
        // Its signer's CA in dbx as a certificate (efitools' list).
        let (code, out) = verify(&image, &[&debian], &[&debian_esl], &[]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains("Debian Secure Boot CA") && out.contains("in dbx"),
            "{out}"
        );
        // Its signing certificate in dbx as an EFI_CERT_X509_SHA256 (TBS hash) entry.
        // As in edk2, TBS hashes are matched against the certificates the signature
        // carries (the CA is not among them).
        let bytes = std::fs::read(&image).unwrap();
        let pe = boot::PeImage::parse(&bytes).unwrap();
        let blob = pe.signatures().unwrap()[0].unwrap();
        let sd = boot::pkcs7::SignedData::parse(blob).unwrap();
        let leaf = sd
            .certificates
            .iter()
            .find(|c| c.subject_name().starts_with("Debian Secure Boot Signer"))
            .unwrap();
        let tbs = leaf.tbs_hash(HashAlg::Sha256);
        let tbs_esl = tmp.path().join("tbs.esl");
        let list = SignatureDb {
            entries: vec![Entry {
                owner: OPENCVM_OWNER,
                signature: Signature::TbsHash(HashAlg::Sha256, tbs, [0; 16]),
            }],
        };
        std::fs::write(&tbs_esl, list.encode()).unwrap();
        let (code, out) = verify(&image, &[&debian], &[&tbs_esl], &[]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.contains("Debian Secure Boot Signer 2022") && out.contains("in dbx"),
            "{out}"
        );
        // The image digest in db (no chain needed).
        let (code, out) = verify(&image, &[&hash_esl], &[], &[]);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains("image digest in db"), "{out}");
    }
}

#[test]
fn grub_is_checked_against_sbat_levels() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let debian = debian_ca(tmp.path());
    let grub = dir.join("grubx64.efi.signed");
    // shim's own levels, as it would apply them.
    let (latest, previous) = (tmp.path().join("latest"), tmp.path().join("previous"));
    let o = cvm(&[
        &"boot",
        &"shim",
        &dir.join("shimx64.efi.signed"),
        &"--sbat-latest",
        &latest,
        &"--sbat-previous",
        &previous,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for level in [&latest, &previous] {
        let l = level.to_str().unwrap();
        let (code, out) = verify(&grub, &[&debian], &[], &["--sbat-level", l]);
        assert_eq!(
            code,
            0,
            "{}: {out}",
            std::fs::read_to_string(level).unwrap()
        );
    }
    // A level above its generation, for the component and for Debian's vendor entry.
    for (level, component) in [
        ("sbat,1,2099010100\ngrub,6\n", "grub"),
        ("sbat,1,2099010100\ngrub.debian,6\n", "grub.debian"),
    ] {
        let path = tmp.path().join("level");
        std::fs::write(&path, level).unwrap();
        let (code, out) = verify(
            &grub,
            &[&debian],
            &[],
            &["--sbat-level", path.to_str().unwrap()],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!(
                "SBAT: component {component} generation 5 is revoked"
            )),
            "{out}"
        );
    }
    // The JSON lists the components.
    let (_, out) = verify(&grub, &[&debian], &[], &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["sbat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.starts_with(&["sbat", "grub"]), "{names:?}");
}

#[test]
fn bad_input_is_a_usage_error_naming_the_problem() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let db = microsoft("uefi-ca-2011.der");
    let truncated = tmp.path().join("truncated.efi");
    let bytes = std::fs::read(dir.join("grubx64.efi.signed")).unwrap();
    std::fs::write(&truncated, &bytes[..300]).unwrap();
    let (code, out) = verify(&truncated, &[&db], &[], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("malformed PE/COFF image"), "{out}");
    let (code, out) = verify(&tmp.path().join("absent"), &[&db], &[], &[]);
    assert_eq!(code, 2, "{out}");
    let junk = tmp.path().join("junk");
    std::fs::write(
        &junk,
        b"not a list at all, but long enough to look like one....",
    )
    .unwrap();
    let (code, out) = verify(&dir.join("vmlinuz"), &[&junk], &[], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not a signature list or certificate"), "{out}");
}

#[test]
fn eventlog_replay_json_matches_every_real_log() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/eventlog");
    let mut checked = 0;
    for (folder, expected_file) in [
        ("tpm2-tools", "expected-pcrs.json"),
        ("go-eventlog", "expected-pcrs.json"),
    ] {
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(folder).join(expected_file)).unwrap())
                .unwrap();
        for (_, entry) in expected.as_object().unwrap() {
            let name = Path::new(entry["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_owned();
            check_replay(&root.join(folder).join(name), &entry["expected"], false);
            checked += 1;
        }
    }
    for (folder, scenario) in [
        ("local-qemu-ovmf", "plain"),
        ("local-qemu-ovmf", "sb-ms"),
        ("local-qemu-ovmf", "uki-signed"),
        ("opencvm-qemu-shim", "shim-grub-kernel"),
    ] {
        let dir = root.join(folder);
        let pcrs: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{scenario}.pcrs.json"))).unwrap(),
        )
        .unwrap();
        // Read in the guest: PCRs 8 and up also hold the guest kernel's measurements
        // (IMA in PCR 10), which no firmware log describes.
        check_replay(
            &dir.join(format!("{scenario}.eventlog.bin")),
            &pcrs["tpm_pcrs_read_in_guest"],
            true,
        );
        checked += 1;
    }
    assert_eq!(checked, 18);
}

fn check_replay(log: &Path, expected: &serde_json::Value, firmware_pcrs_only: bool) {
    let o = cvm(&[&"eventlog", &"replay", &log, &"--json"]);
    assert!(o.status.success(), "{}: {}", log.display(), text(&o));
    let ours: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (bank, values) in expected.as_object().unwrap() {
        let got = ours["pcrs"][bank.as_str()]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no {bank} bank in {ours}", log.display()));
        for (pcr, value) in values.as_object().unwrap() {
            let want = value.as_str().unwrap();
            let index: u32 = pcr.parse().unwrap();
            match got.get(pcr) {
                Some(v) => assert_eq!(
                    v.as_str().unwrap(),
                    want,
                    "{} {bank} PCR {pcr}",
                    log.display()
                ),
                None if firmware_pcrs_only && index >= 8 => {}
                // A PCR the log never extends keeps its reset value.
                None => {
                    let reset = if (17..=22).contains(&index) { 'f' } else { '0' };
                    assert!(
                        want.chars().all(|c| c == reset),
                        "{} {bank} PCR {pcr} missing",
                        log.display()
                    );
                }
            }
        }
    }
    // `show` reads it too.
    let o = cvm(&[&"eventlog", &"show", &log]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).lines().count() > 1);
}

use common::qemu::{guest_report, initramfs, os_disk};

/// [`os_disk`] without a data partition.
fn boot_disk(dir: &Path, name: &str, loader: &Path, grub: &Path) -> PathBuf {
    os_disk(dir, name, loader, grub, None)
}

/// A running `cvm vtpm run` for one VM: QEMU's control channel on a Unix socket and,
/// when `tcp`, a TCP data channel on loopback (for sealing before and unsealing after
/// a boot). Killed when dropped.
struct VmTpm {
    child: std::process::Child,
    sock: PathBuf,
    endpoint: Option<String>,
}

impl Drop for VmTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VmTpm {
    fn start(dir: &Path, name: &str, tcp: bool) -> Self {
        let state = dir.join(format!("{name}.tpm"));
        std::fs::create_dir(&state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = dir.join(format!("{name}.run")).join("ctrl.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cvm"));
        cmd.args(["vtpm", "run", "--state"])
            .arg(&state)
            .arg("--ctrl")
            .arg(format!("unix:{}", sock.display()));
        if tcp {
            cmd.args(["--server", "tcp:127.0.0.1:0", "--dangerously-allow-tcp"]);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        // Every line it prints is read before the pipe is dropped: a vTPM whose stdout
        // is closed dies on its next write.
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut endpoint = None;
        for _ in 0..(1 + usize::from(tcp)) {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            if let Some(server) = line.trim().strip_prefix("server ") {
                endpoint = Some(server.to_string());
            } else {
                assert!(line.starts_with("ctrl unix:"), "{line}");
            }
        }
        Self {
            child,
            sock,
            endpoint,
        }
    }
}

/// Boots `disk` under QEMU (TCG) with Secure Boot OVMF, the OVMF variable image
/// `vars` and a fresh vTPM; returns the serial console (see [`run_qemu`]).
fn boot(dir: &Path, name: &str, vars: &Path, disk: &Path) -> String {
    let tpm = VmTpm::start(dir, name, false);
    run_qemu(dir, name, vars, disk, &tpm)
}

/// Runs QEMU until the guest printed its event log, firmware or shim refused, QEMU
/// exited, or 240 s passed; then kills it (the vTPM keeps its PCRs).
fn run_qemu(dir: &Path, name: &str, vars: &Path, disk: &Path, tpm: &VmTpm) -> String {
    let extra: Vec<String> = [
        "-chardev".to_string(),
        format!("socket,id=chrtpm,path={}", tpm.sock.display()),
        "-tpmdev".to_string(),
        "emulator,id=tpm0,chardev=chrtpm".to_string(),
        "-device".to_string(),
        "tpm-crb,tpmdev=tpm0".to_string(),
    ]
    .into();
    common::qemu::secure_boot(
        &dir.join(format!("{name}.serial")),
        vars,
        disk,
        &extra,
        &[
            "OPENCVM-EVENTLOG-END",
            "Security Violation",
            "Access Denied",
        ],
        std::time::Duration::from_secs(240),
    )
}

#[test]
fn qemu_secure_boot_runs_debians_signed_chain_and_pcr7_is_predicted() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    initramfs(dir, false);
    let (shim, grub) = (fx.join("shimx64.efi.signed"), fx.join("grubx64.efi.signed"));

    // The VM's store from the Microsoft template, exported for OVMF.
    let store = template_store(&dir.join("vars.json"), "microsoft");
    let vars_image = |name: &str| {
        let out = dir.join(format!("{name}.vars.fd"));
        export_vars(&store, &out);
        out
    };

    // The good chain: predicted before the boot, then booted.
    let disk = boot_disk(dir, "good", &shim, &grub);
    let kernel = fx.join("vmlinuz");
    let o = cvm(&[
        &"boot",
        &"predict",
        &"--store",
        &store,
        &"--image",
        &disk,
        &"--kernel",
        &kernel,
        &"--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let prediction: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let serial = boot(dir, "good", &vars_image("good"), &disk);
    assert!(
        serial.contains("Linux version"),
        "the kernel did not start:\n{serial}"
    );
    let (log, pcrs) = guest_report(&serial);
    assert_eq!(pcrs.len(), 8, "{serial}");
    // PCR 7 as the vTPM holds it (read by the guest kernel) is the prediction.
    assert_eq!(pcrs["7"], prediction["pcr7"]["sha256"].as_str().unwrap());
    // So is PCR 4 (shim, GRUB, the kernel; one failed boot option before the disk).
    assert_eq!(pcrs["4"], prediction["pcr4"]["sha256"].as_str().unwrap());
    // The event log replays to every firmware PCR the vTPM reports, with ours and
    // with tpm2_eventlog reading it.
    let log_file = dir.join("eventlog.bin");
    std::fs::write(&log_file, &log).unwrap();
    let o = cvm(&[&"eventlog", &"replay", &log_file, &"--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let replayed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (i, v) in &pcrs {
        assert_eq!(
            replayed["pcrs"]["sha256"][i].as_str().unwrap(),
            v,
            "PCR {i}"
        );
    }
    tool("tpm2_eventlog", &[&log_file]);
    // PCR 4 records shim, GRUB and the kernel by their Authenticode digests.
    let o = cvm(&[&"eventlog", &"show", &log_file]);
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    for image in [&shim, &grub, &fx.join("vmlinuz")] {
        let (_, json) = verify(image, &[&microsoft("uefi-ca-2011.der")], &[], &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(json.as_bytes()).unwrap();
        assert!(
            shown.contains(v["sha256"].as_str().unwrap()),
            "{} not measured:\n{shown}",
            image.display()
        );
    }

    // The claims the log supports.
    let o = cvm(&[&"eventlog", &"claims", &log_file]);
    assert!(o.status.success(), "{}", text(&o));
    let claims: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(claims["secure_boot"], true);
    assert_eq!(claims["kernel_cmdline"], "/vmlinuz console=ttyS0 panic=-1");
    let apps = claims["boot_applications"].as_array().unwrap();
    let authorities: Vec<&str> = apps
        .iter()
        .map(|a| a["authority"].as_str().unwrap())
        .collect();
    assert_eq!(
        authorities,
        [
            "Microsoft Corporation UEFI CA 2011",
            "Debian Secure Boot CA",
            "Debian Secure Boot CA"
        ]
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let db_hex = stored["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "db")
        .unwrap()["data"]
        .as_str()
        .unwrap()
        .to_string();
    let db_sha = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &hex::decode(db_hex).unwrap(),
    ));
    assert_eq!(claims["variables"]["db"], db_sha);

    // GRUB without its signature: shim refuses it, and so does the prediction.
    let unsigned = dir.join("grub-unsigned.efi");
    std::fs::copy(&grub, &unsigned).unwrap();
    tool("sbattach", &[&"--remove", &unsigned]);
    let disk = boot_disk(dir, "unsigned", &shim, &unsigned);
    let o = cvm(&[&"boot", &"predict", &"--store", &store, &"--image", &disk]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("shim refuses grubx64.efi"),
        "{}",
        text(&o)
    );
    let serial = boot(dir, "unsigned", &vars_image("unsigned"), &disk);
    assert!(
        !serial.contains("Linux version"),
        "an unsigned GRUB booted:\n{serial}"
    );
    assert!(serial.contains("Security Violation"), "{serial}");

    // shim with one byte changed: firmware refuses it.
    let disk = boot_disk(dir, "altered", &altered(&shim, dir), &grub);
    let o = cvm(&[&"boot", &"predict", &"--store", &store, &"--image", &disk]);
    assert!(
        text(&o).contains("firmware refuses the boot loader"),
        "{}",
        text(&o)
    );
    let serial = boot(dir, "altered", &vars_image("altered"), &disk);
    assert!(
        !serial.contains("Linux version"),
        "an altered shim booted:\n{serial}"
    );
    assert!(
        serial.contains("Access Denied") || serial.contains("Security Violation"),
        "{serial}"
    );
}

/// The variables of a QEMU uefi-vars JSON document, as comparable tuples.
fn variables_of(json: &serde_json::Value) -> Vec<(String, String, u64, String)> {
    let mut v: Vec<_> = json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["guid"].as_str().unwrap().to_lowercase(),
                v["attr"].as_u64().unwrap(),
                v["data"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ovmf_images_round_trip_with_virt_firmware() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let virt = |args: &[&dyn AsRef<std::ffi::OsStr>]| tool("virt-fw-vars", args);
    let read_json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };

    // Ours → OVMF image → virt-fw-vars reads the same variables.
    let store = template_store(&dir.join("ours.json"), "linux");
    let image = dir.join("ours.fd");
    export_vars(&store, &image);
    let theirs = dir.join("theirs.json");
    virt(&[&"-i", &image, &"--output-json", &theirs]);
    let ours = read_json(&store);
    assert_eq!(variables_of(&read_json(&theirs)), variables_of(&ours));
    assert_eq!(variables_of(&ours).len(), 6);

    // virt-fw-vars enrols Microsoft's keys into Debian's empty image → we read what it
    // reads.
    let enrolled = dir.join("enrolled.fd");
    virt(&[
        &"-i",
        &"/usr/share/OVMF/OVMF_VARS_4M.fd",
        &"-o",
        &enrolled,
        &"--enroll-microsoft",
    ]);
    let theirs = dir.join("enrolled.json");
    virt(&[&"-i", &enrolled, &"--output-json", &theirs]);
    let imported = dir.join("imported.json");
    let o = cvm(&[
        &"boot", &"vars", &"import", &"--ovmf", &enrolled, &"--store", &imported,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        variables_of(&read_json(&imported)),
        variables_of(&read_json(&theirs))
    );
    // Importing again without --force would lose the store: refused.
    let o = cvm(&[
        &"boot", &"vars", &"import", &"--ovmf", &enrolled, &"--store", &imported,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("already holds a variable store"),
        "{}",
        text(&o)
    );

    // Debian's Microsoft image, with its deleted records: the live set is the same.
    let debian = dir.join("debian.json");
    virt(&[
        &"-i",
        &"/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        &"--output-json",
        &debian,
    ]);
    let ours = dir.join("debian-ours.json");
    let o = cvm(&[
        &"boot",
        &"vars",
        &"import",
        &"--ovmf",
        &"/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        &"--store",
        &ours,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        variables_of(&read_json(&ours)),
        variables_of(&read_json(&debian))
    );

    // Not an OVMF image: a clear refusal.
    let o = cvm(&[
        &"boot",
        &"vars",
        &"show",
        &"--ovmf",
        &fixtures().join("vmlinuz"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not an OVMF_VARS image"), "{}", text(&o));
}

#[test]
fn the_variable_store_lives_in_the_vms_vmgs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vmgs = dir.join("vm.vmgs");
    let key = dir.join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let o = cvm(&[&"vmgs", &"create", &vmgs, &"--key-file", &key]);
    assert!(o.status.success(), "{}", text(&o));
    let at: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--vmgs", &vmgs, &"--key-file", &key];
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.to_vec();
        all.extend_from_slice(&at);
        cvm(&all)
    };
    let o = run(&[&"boot", &"vars", &"create", &"--template", &"microsoft"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[&"boot", &"vars", &"show"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("secure boot: on"), "{}", text(&o));
    assert!(
        text(&o).contains("\"Microsoft Windows Production PCA 2011\""),
        "{}",
        text(&o)
    );
    // It is file 1 (BIOS_NVRAM), encrypted with the VMGS.
    let o = cvm(&[&"vmgs", &"list", &vmgs, &"--key-file", &key, &"--json"]);
    assert!(text(&o).contains("BIOS_NVRAM"), "{}", text(&o));
    // The wrong key opens nothing.
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, [8u8; 32]).unwrap();
    let o = cvm(&[
        &"boot",
        &"vars",
        &"show",
        &"--vmgs",
        &vmgs,
        &"--key-file",
        &wrong,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Exported for OVMF and predicted from the VMGS store as from a file.
    let image = dir.join("vars.fd");
    let o = run(&[&"boot", &"vars", &"export", &"--ovmf", &image]);
    assert!(o.status.success(), "{}", text(&o));
    let fx = fixtures();
    let o = run(&[
        &"boot",
        &"predict",
        &"--loader",
        &fx.join("shimx64.efi.signed"),
        &"--second-stage",
        &fx.join("grubx64.efi.signed"),
        &"--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The same as a store made from the template directly (timestamps are not measured).
    let o = cvm(&[
        &"boot",
        &"predict",
        &"--template",
        &"microsoft",
        &"--loader",
        &fx.join("shimx64.efi.signed"),
        &"--second-stage",
        &fx.join("grubx64.efi.signed"),
        &"--json",
    ]);
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["pcr7"], t["pcr7"]);
    // The VMGS holds the store encrypted: no certificate name in clear.
    let raw = std::fs::read(&vmgs).unwrap();
    assert!(!raw.windows(22).any(|w| w == b"Windows OEM Devices PK"));
}

#[test]
fn the_recorded_shim_boot_is_predicted_event_for_event() {
    // testdata/eventlog/opencvm-qemu-shim (MANIFEST.md): a QEMU boot of Debian's chain
    // under the Microsoft template with our vTPM.
    let fx = fixtures();
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/eventlog/opencvm-qemu-shim");
    let store = dir.join("microsoft-template.vars.json");
    // The template still makes this store (apart from the write times).
    let tmp = tempfile::tempdir().unwrap();
    let fresh = template_store(&tmp.path().join("fresh.json"), "microsoft");
    let strip_time = |p: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        for var in v["variables"].as_array_mut().unwrap() {
            var.as_object_mut().unwrap().remove("time");
        }
        v
    };
    assert_eq!(strip_time(&fresh), strip_time(&store));

    let log = tcg_eventlog::EventLog::parse(
        &std::fs::read(dir.join("shim-grub-kernel.eventlog.bin")).unwrap(),
    )
    .unwrap();
    // PCR 7 depends on shim (its signer, its SBAT level), not on the GRUB or kernel
    // build (any Debian-signed one adds the same event). The recorded boot ran the
    // shim the archive has now; if Debian ships another, this fails and says so.
    let recorded_shim = log
        .events()
        .iter()
        .find(|e| e.pcr == 4 && e.event_type == tcg_eventlog::EventType::EfiBootServicesApplication)
        .and_then(|e| e.digest(tcg_eventlog::HashAlg::Sha256))
        .map(hex::encode)
        .unwrap();
    let shim = std::fs::read(fx.join("shimx64.efi.signed")).unwrap();
    let shim_digest = hex::encode(
        boot::PeImage::parse(&shim)
            .unwrap()
            .authenticode_digest(HashAlg::Sha256)
            .unwrap(),
    );
    assert_eq!(
        shim_digest, recorded_shim,
        "Debian's shim-signed changed since the boot in testdata/eventlog/opencvm-qemu-shim \
         was recorded: record it again (its MANIFEST.md says how)"
    );
    let o = cvm(&[
        &"boot",
        &"predict",
        &"--store",
        &store,
        &"--loader",
        &fx.join("shimx64.efi.signed"),
        &"--second-stage",
        &fx.join("grubx64.efi.signed"),
        &"--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shim-grub-kernel.pcrs.json")).unwrap())
            .unwrap();
    for bank in ["sha1", "sha256", "sha384"] {
        let r = &reported["tpm_pcrs_read_in_guest"][bank];
        assert_eq!(p["pcr7"][bank], r["7"], "PCR 7 {bank}");
    }
    // Event for event: the predicted PCR 7 events are the log's, data included. (PCR 4
    // names the GRUB and kernel builds; the QEMU test checks it on the current ones.)
    let logged: Vec<(u32, String)> = log
        .events()
        .iter()
        .filter(|e| e.pcr == 7 && e.is_extended())
        .map(|e| (e.event_type.value(), hex::encode(&e.data)))
        .collect();
    let predicted: Vec<(u32, String)> = p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_u64().unwrap() as u32,
                e["data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(predicted, logged);
}

/// A copy of `image` with `f` applied to the bytes of its first signature.
fn with_signature(
    image: &Path,
    dir: &Path,
    name: &str,
    f: impl Fn(&mut [u8], &boot::pkcs7::SignedData<'_>, usize),
) -> PathBuf {
    let mut bytes = std::fs::read(image).unwrap();
    let copy = bytes.clone();
    let pe = boot::PeImage::parse(&copy).unwrap();
    let blob = pe.signatures().unwrap()[0].unwrap();
    let offset = blob.as_ptr() as usize - copy.as_ptr() as usize;
    let sd = boot::pkcs7::SignedData::parse(blob).unwrap();
    f(&mut bytes[offset..offset + blob.len()], &sd, offset);
    let out = dir.join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn broken_signatures_and_forged_anchors_are_refused() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let debian = debian_ca(tmp.path());
    let grub = fx.join("grubx64.efi.signed");
    // The last byte of the blob is the signer's RSA signature (GRUB's SignerInfo has
    // no unsigned attributes): the image digest still matches, the signature does not.
    let bad_sig = with_signature(&grub, tmp.path(), "bad-sig.efi", |b, _, _| {
        let last = b.iter().rposition(|&x| x != 0).unwrap();
        b[last] ^= 1;
    });
    let (code, out) = verify(&bad_sig, &[&debian], &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    // The signed messageDigest attribute changed: it no longer matches the content.
    let bad_digest = with_signature(&grub, tmp.path(), "bad-digest.efi", |b, _, _| {
        // messageDigest: OID 1.2.840.113549.1.9.4, then SET { OCTET STRING (32) }.
        let oid = [
            0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04,
        ];
        let at = b.windows(oid.len()).position(|w| w == oid).unwrap();
        b[at + oid.len() + 4] ^= 1;
    });
    let (code, out) = verify(&bad_digest, &[&debian], &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("messageDigest does not match"), "{out}");
    // A forged anchor: Debian's CA with another public key (same subject, same
    // issuer name): names match, signatures do not, so nothing chains.
    let der = std::fs::read(&debian).unwrap();
    let cert = boot::cert::Cert::parse(&der).unwrap();
    let key_at = cert.public_key().as_ptr() as usize - der.as_ptr() as usize;
    let mut forged = der.clone();
    forged[key_at + 40] ^= 0x10; // inside the modulus
    let forged_path = tmp.path().join("forged.der");
    std::fs::write(&forged_path, &forged).unwrap();
    let (code, out) = verify(&grub, &[&forged_path], &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not chain to db"), "{out}");
}

#[test]
fn dbx_is_checked_before_a_signature_is() {
    // shim's first signature broken (its RSA signature changed) but still carrying the
    // UEFI CA 2011, which dbx revokes; its second signature chains to the 2023 CA in
    // db. edk2 checks the carried certificates against dbx before anything else, so the
    // image is refused; without dbx it runs on the second signature.
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let shim = fx.join("shimx64.efi.signed");
    let broken = with_signature(&shim, tmp.path(), "shim-broken.efi", |b, sd, _| {
        assert!(
            sd.certificates
                .iter()
                .any(|c| c.subject_name() == "Microsoft Corporation UEFI CA 2011")
        );
        // The last signer's signature ends the SignerInfo; the Microsoft signature has
        // an unsigned timestamp after it, so flip a byte of the first RSA-2048-sized
        // OCTET STRING after the signed attributes instead: find `04 82 01 00`.
        let at = b
            .windows(4)
            .rposition(|w| w == [0x04, 0x82, 0x01, 0x00])
            .unwrap();
        b[at + 4 + 100] ^= 1;
    });
    let (ca2011, ca2023) = (microsoft("uefi-ca-2011.der"), microsoft("uefi-ca-2023.der"));
    let (code, out) = verify(&broken, &[&ca2011, &ca2023], &[], &["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["signatures"][0]["result"], "invalid", "{v}");
    assert_eq!(v["signatures"][1]["result"], "db", "{v}");
    let (code, out) = verify(&broken, &[&ca2011, &ca2023], &[&ca2011], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Microsoft Corporation UEFI CA 2011") && out.contains("in dbx"),
        "{out}"
    );
}

#[test]
fn dbx_hashes_of_any_algorithm_refuse() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let debian = debian_ca(tmp.path());
    let kernel = fx.join("vmlinuz");
    let bytes = std::fs::read(&kernel).unwrap();
    let pe = boot::PeImage::parse(&bytes).unwrap();
    for alg in [HashAlg::Sha1, HashAlg::Sha384, HashAlg::Sha512] {
        let list = SignatureDb {
            entries: vec![Entry {
                owner: OPENCVM_OWNER,
                signature: Signature::Hash(alg, pe.authenticode_digest(alg).unwrap()),
            }],
        };
        let path = tmp.path().join(format!("{}.esl", alg.name()));
        std::fs::write(&path, list.encode()).unwrap();
        let (code, out) = verify(&kernel, &[&debian], &[&path], &[]);
        assert_eq!(code, 1, "{}: {out}", alg.name());
        assert!(out.contains("digest is in dbx"), "{out}");
        // With that hash in db instead, the image runs (its signature chains to nothing
        // there).
        let (code, out) = verify(&kernel, &[&path], &[], &[]);
        assert_eq!(code, 0, "{}: {out}", alg.name());
    }
}

#[test]
fn signed_dbx_updates_apply_only_under_the_stores_kek() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The owner's own PK (openssl), Microsoft's KEKs, one db CA, no dbx.
    let (key, pk) = (dir.join("pk.key"), dir.join("pk.pem"));
    tool(
        "openssl",
        &[
            &"req",
            &"-x509",
            &"-newkey",
            &"rsa:2048",
            &"-nodes",
            &"-keyout",
            &key,
            &"-out",
            &pk,
            &"-days",
            &"1",
            &"-subj",
            &"/CN=opencvm test PK",
        ],
    );
    let create = |store: &Path, keks: &[&Path]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"boot", &"vars", &"create", &"--store", &store, &"--pk", &pk,
        ];
        for k in keks {
            args.push(&"--kek");
            args.push(k);
        }
        let db = microsoft("uefi-ca-2011.der");
        let o = {
            let mut all = args.clone();
            all.push(&"--db");
            all.push(&db);
            cvm(&all)
        };
        assert!(o.status.success(), "{}", text(&o));
    };
    let update = microsoft("dbx-update-amd64.bin");
    let apply = |store: &Path, file: &Path| {
        cvm(&[
            &"boot",
            &"vars",
            &"update",
            &"--store",
            &store,
            &"--name",
            &"dbx",
            &"--in",
            &file,
            &"--append",
        ])
    };

    let store = dir.join("vars.json");
    create(
        &store,
        &[
            &microsoft("kek-ca-2011.der"),
            &microsoft("kek-2k-ca-2023.der"),
        ],
    );
    let o = apply(&store, &update);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("signed under \"Microsoft Corporation KEK"),
        "{}",
        text(&o)
    );
    let count = |store: &Path| {
        let o = cvm(&[&"boot", &"vars", &"show", &"--store", &store]);
        text(&o)
            .lines()
            .find(|l| l.starts_with("dbx:"))
            .unwrap()
            .to_string()
    };
    let after_one = count(&store);
    let published = boot::template::microsoft_dbx().unwrap().entries.len();
    assert!(
        after_one.contains(&format!("{published} other entries")),
        "{after_one}"
    );
    // Appending the same update again adds nothing.
    let o = apply(&store, &update);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count(&store), after_one);

    // A changed byte, or a store whose KEK is not Microsoft's: refused, store unchanged.
    let mut bytes = std::fs::read(&update).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = dir.join("tampered.bin");
    std::fs::write(&tampered, bytes).unwrap();
    let before = std::fs::read(&store).unwrap();
    let o = apply(&store, &tampered);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read(&store).unwrap(), before);
    // PK holds one certificate: it cannot be appended to.
    let o = cvm(&[
        &"boot",
        &"vars",
        &"update",
        &"--store",
        &store,
        &"--name",
        &"PK",
        &"--in",
        &update,
        &"--append",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("PK cannot be appended to"),
        "{}",
        text(&o)
    );
    let own = dir.join("own.json");
    create(&own, &[&pk]);
    let o = apply(&own, &update);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("does not chain to any of the 2 authority certificates"),
        "{}",
        text(&o)
    );
}

/// The bytes of partition `n` (1-based) of a GPT disk image, read with sfdisk.
fn partition(disk: &Path, n: usize) -> Vec<u8> {
    let o = tool("sfdisk", &[&"--json", &disk]);
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &table["partitiontable"]["partitions"][n - 1];
    let (start, size) = (
        p["start"].as_u64().unwrap() as usize,
        p["size"].as_u64().unwrap() as usize,
    );
    std::fs::read(disk).unwrap()[start * 512..(start + size) * 512].to_vec()
}

#[test]
fn a_disk_sealed_to_the_predicted_pcr7_opens_only_after_its_vm_booted() {
    // Issue 13 meets issue 14: an OS disk is encrypted before its VM ever ran, its key
    // sealed to the vTPM under the PCR 7 `cvm boot predict` gives for the VM's store
    // and this disk; the VM boots (Secure Boot, OVMF, Debian's chain); only then does
    // the vTPM unseal the key.
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    initramfs(dir, true);
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let disk = os_disk(
        dir,
        "os",
        &fx.join("shimx64.efi.signed"),
        &fx.join("grubx64.efi.signed"),
        Some(&data),
    );
    let store = template_store(&dir.join("vars.json"), "microsoft");
    let predict = |args: &[&dyn AsRef<std::ffi::OsStr>]| -> String {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"boot", &"predict", &"--image", &disk, &"--json"];
        all.extend_from_slice(args);
        let o = cvm(&all);
        assert!(o.status.success(), "{}", text(&o));
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        p["pcr7"]["sha256"].as_str().unwrap().to_string()
    };
    let pcr7 = predict(&[&"--store", &store]);
    let other = predict(&[&"--template", &"linux"]);
    assert_ne!(pcr7, other);

    let tpm = VmTpm::start(dir, "os", true);
    let endpoint = tpm.endpoint.clone().unwrap();
    // TPM2_Startup(CLEAR) over the data channel (its control channel is QEMU's Unix
    // socket, which tpm2-tss's swtpm TCTI cannot use).
    {
        use std::io::{Read, Write};
        let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0])
            .unwrap();
        let mut rsp = [0u8; 10];
        c.read_exact(&mut rsp).unwrap();
        assert_eq!(&rsp[6..10], &[0, 0, 0, 0], "TPM2_Startup failed");
    }
    let pass = dir.join("recovery.key");
    std::fs::write(&pass, b"a recovery passphrase kept offline").unwrap();
    let encrypt = |out: &Path, pcr: &str| {
        let pcrs = format!("7:sha256={pcr}");
        let o = cvm(&[
            &"disk",
            &"encrypt-os",
            &"--in",
            &disk,
            &"--out",
            &out,
            &"--passphrase-file",
            &pass,
            &"--vtpm",
            &endpoint,
            &"--tpm2-pcrs",
            &pcrs,
            &"--kdf",
            &"pbkdf2",
            &"--pbkdf2-iterations",
            &"1000",
            &"--progress",
            &"none",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    };
    let (sealed, wrong) = (dir.join("os.enc"), dir.join("os-wrong.enc"));
    encrypt(&sealed, &pcr7);
    encrypt(&wrong, &other);
    // The ESP stays in clear: the encrypted disk predicts the same.
    let o = cvm(&[
        &"boot", &"predict", &"--store", &store, &"--image", &sealed, &"--json",
    ]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["pcr7"]["sha256"], pcr7.as_str());
    let unseal = |disk: &Path, name: &str| {
        let vol = dir.join(format!("{name}.luks"));
        std::fs::write(&vol, partition(disk, 2)).unwrap();
        let out = dir.join(format!("{name}.plain"));
        let o = cvm(&[
            &"disk",
            &"decrypt",
            &"--in",
            &vol,
            &"--out",
            &out,
            &"--vtpm",
            &endpoint,
            &"--progress",
            &"none",
        ]);
        (o, out)
    };
    // Before the boot PCR 7 does not hold that value yet: the vTPM refuses.
    let (o, _) = unseal(&sealed, "before");
    assert!(
        !o.status.success() && text(&o).contains("are not those the disk was sealed to"),
        "unsealed before the VM booted, or failed for another reason: {}",
        text(&o)
    );

    let vars = dir.join("os.vars.fd");
    export_vars(&store, &vars);
    let serial = run_qemu(dir, "os", &vars, &sealed, &tpm);
    assert!(
        serial.contains("Linux version"),
        "the kernel did not start:\n{serial}"
    );
    let (_, pcrs) = guest_report(&serial);
    assert_eq!(pcrs["7"], pcr7);

    let (o, plain) = unseal(&sealed, "after");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(&plain).unwrap() == data,
        "the decrypted partition differs"
    );
    // Sealed to another template's PCR 7: still refused.
    let (o, _) = unseal(&wrong, "wrong");
    assert!(
        !o.status.success() && text(&o).contains("are not those the disk was sealed to"),
        "{}",
        text(&o)
    );
}
