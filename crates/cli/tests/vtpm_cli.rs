//! `cvm vtpm run` against real TPM software nobody here wrote: tpm2-tools through
//! tpm2-tss's `swtpm` and `mssim` TCTIs, and swtpm's own `swtpm_ioctl`.
//! (`scripts/setup` installs tpm2-tools, the TCTIs and swtpm-tools.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use aws_lc_rs::digest;

/// A child process killed (SIGKILL) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cvm vtpm run --state STATE ARGS` and returns it with the two endpoints it
/// prints first (`server ENDPOINT`, `ctrl ENDPOINT`), without their labels.
fn spawn_vtpm(state: &Path, args: &[&str]) -> (KillOnDrop, String, String) {
    spawn_vtpm_in(&[std::ffi::OsStr::new("--state"), state.as_os_str()], args)
}

/// [`spawn_vtpm`] with the state given by `store` (`--state DIR`, or `--vmgs FILE
/// --key-file K`).
fn spawn_vtpm_in(store: &[&std::ffi::OsStr], args: &[&str]) -> (KillOnDrop, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["vtpm", "run"])
        .args(store)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut server, mut ctrl) = (String::new(), String::new());
    out.read_line(&mut server).unwrap();
    out.read_line(&mut ctrl).unwrap();
    let field = |line: &str, label: &str| {
        line.trim()
            .strip_prefix(label)
            .unwrap_or_else(|| panic!("expected {label:?}, got {line:?}"))
            .to_string()
    };
    let (server, ctrl) = (field(&server, "server "), field(&ctrl, "ctrl "));
    (KillOnDrop(child), server, ctrl)
}

/// A running `cvm vtpm run` on loopback TCP, killed (SIGKILL) when dropped.
struct Vt {
    child: KillOnDrop,
    host: String,
    port: u16,
    ctrl_port: u16,
}

fn port_of(line: &str) -> u16 {
    line.trim().rsplit(':').next().unwrap().parse().unwrap()
}

fn start(state: &Path, protocol: &str) -> Vt {
    start_with(state, protocol, &[])
}

fn start_with(state: &Path, protocol: &str, extra: &[&str]) -> Vt {
    start_in(
        &[std::ffi::OsStr::new("--state"), state.as_os_str()],
        protocol,
        extra,
    )
}

fn start_in(store: &[&std::ffi::OsStr], protocol: &str, extra: &[&str]) -> Vt {
    let mut args = vec![
        "--server",
        "tcp:127.0.0.1:0",
        "--protocol",
        protocol,
        "--dangerously-allow-tcp",
    ];
    args.extend_from_slice(extra);
    let (child, server, ctrl) = spawn_vtpm_in(store, &args);
    assert!(server.starts_with("tcp:127.0.0.1:"), "{server:?}");
    assert!(ctrl.starts_with("tcp:127.0.0.1:"), "{ctrl:?}");
    let (port, ctrl_port) = (port_of(&server), port_of(&ctrl));
    assert_eq!(ctrl_port, port + 1, "the TCTIs expect the next port");
    Vt {
        child,
        host: "127.0.0.1".into(),
        port,
        ctrl_port,
    }
}

impl Vt {
    fn tcti(&self, protocol: &str) -> String {
        format!("{protocol}:host={},port={}", self.host, self.port)
    }

    /// An orderly end (CMD_SHUTDOWN): the process exits by itself, successfully.
    fn shut_down(mut self) {
        ok(self.ioctl(&["-s"]), "swtpm_ioctl -s");
        assert!(self.child.0.wait().unwrap().success());
    }

    fn ioctl(&self, args: &[&str]) -> Output {
        Command::new("swtpm_ioctl")
            .args(["--tcp", &format!("{}:{}", self.host, self.ctrl_port)])
            .args(args)
            .output()
            .unwrap()
    }
}

/// Runs a tpm2-tools command in `dir` through `tcti`.
fn tpm(tcti: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tcti)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs tpm2-tools)", args[0]))
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The sha256 value of PCR `n` as tpm2_pcrread prints it.
fn pcr16(tcti: &str, dir: &Path) -> Vec<u8> {
    let o = ok(tpm(tcti, dir, &["tpm2_pcrread", "sha256:16"]), "pcrread");
    let s = stdout(&o);
    let hexv = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("16: 0x"))
        .unwrap_or_else(|| panic!("{s}"));
    hex::decode(hexv.trim()).unwrap()
}

/// The tpm2-tools suite of the issue, on a fresh vTPM; returns the NV contents written.
fn suite(tcti: &str, dir: &Path) -> Vec<u8> {
    // Without a resource manager, objects a tool loads stay loaded: flush transient
    // objects after each step, as a resource manager would.
    let t = |args: &[&str]| {
        let o = ok(tpm(tcti, dir, args), args[0]);
        if args[0] != "tpm2_startup" {
            ok(tpm(tcti, dir, &["tpm2_flushcontext", "-t"]), "flushcontext");
        }
        o
    };
    t(&["tpm2_startup", "-c"]);
    let fixed = stdout(&t(&["tpm2_getcap", "properties-fixed"]));
    assert!(fixed.contains("TPM2_PT_FAMILY_INDICATOR"), "{fixed}");
    assert!(fixed.contains("value: \"2.0\""), "{fixed}");
    t(&["tpm2_getrandom", "32", "-o", "r1"]);
    t(&["tpm2_getrandom", "32", "-o", "r2"]);
    let (r1, r2) = (
        std::fs::read(dir.join("r1")).unwrap(),
        std::fs::read(dir.join("r2")).unwrap(),
    );
    assert_eq!((r1.len(), r2.len()), (32, 32));
    assert_ne!(r1, r2);

    // PCR extend: the value read back is SHA-256(old || digest), computed here.
    let old = pcr16(tcti, dir);
    let d = [0x5au8; 32];
    t(&["tpm2_pcrextend", &format!("16:sha256={}", hex::encode(d))]);
    let expected = digest::digest(&digest::SHA256, &[old.as_slice(), &d].concat());
    assert_eq!(pcr16(tcti, dir), expected.as_ref());

    // Keys: a primary, a child created and loaded under it.
    t(&["tpm2_createprimary", "-C", "o", "-c", "primary.ctx"]);
    t(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
    ]);
    t(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "key.pub",
        "-r",
        "key.priv",
        "-c",
        "key.ctx",
    ]);

    // EK and AK, the AK made persistent, a quote checked by tpm2_checkquote.
    t(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    t(&[
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-c",
        "ak.ctx",
        "-G",
        "rsa",
        "-g",
        "sha256",
        "-s",
        "rsassa",
        "-u",
        "ak.pem",
        "-f",
        "pem",
        "-n",
        "ak.name",
    ]);
    t(&["tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", "0x81010002"]);
    quote_and_check(tcti, dir, "0x81010002");

    // NV: define, write, read back.
    let nv: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ 0xa5).collect();
    std::fs::write(dir.join("nv.in"), &nv).unwrap();
    t(&[
        "tpm2_nvdefine",
        "0x1500016",
        "-C",
        "o",
        "-s",
        "32",
        "-a",
        "ownerread|ownerwrite|authread|authwrite",
    ]);
    t(&["tpm2_nvwrite", "0x1500016", "-C", "o", "-i", "nv.in"]);
    let read = t(&["tpm2_nvread", "0x1500016", "-C", "o", "-s", "32"]);
    assert_eq!(read.stdout, nv);

    // A secret sealed to PCR 16: unseals now, not after PCR 16 changes.
    t(&["tpm2_pcrread", "sha256:16", "-o", "pcr.bin"]);
    t(&[
        "tpm2_createpolicy",
        "--policy-pcr",
        "-l",
        "sha256:16",
        "-f",
        "pcr.bin",
        "-L",
        "policy.dat",
    ]);
    std::fs::write(dir.join("secret.txt"), b"disk key for vm-1").unwrap();
    t(&[
        "tpm2_create",
        "-C",
        "primary.ctx",
        "-L",
        "policy.dat",
        "-a",
        "fixedtpm|fixedparent",
        "-i",
        "secret.txt",
        "-u",
        "seal.pub",
        "-r",
        "seal.priv",
    ]);
    t(&[
        "tpm2_load",
        "-C",
        "primary.ctx",
        "-u",
        "seal.pub",
        "-r",
        "seal.priv",
        "-c",
        "seal.ctx",
    ]);
    let un = t(&["tpm2_unseal", "-c", "seal.ctx", "-p", "pcr:sha256:16"]);
    assert_eq!(un.stdout, b"disk key for vm-1");
    t(&[
        "tpm2_pcrextend",
        &format!("16:sha256={}", hex::encode([1u8; 32])),
    ]);
    let refused = tpm(
        tcti,
        dir,
        &["tpm2_unseal", "-c", "seal.ctx", "-p", "pcr:sha256:16"],
    );
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .to_lowercase()
            .contains("0x99d"),
        "expected TPM_RC_POLICY_FAIL: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    nv
}

/// Quotes PCRs 0 and 16 with the AK at `handle` and checks the quote with
/// tpm2_checkquote (also that a different nonce is refused).
fn quote_and_check(tcti: &str, dir: &Path, handle: &str) {
    let t = |args: &[&str]| ok(tpm(tcti, dir, args), args[0]);
    t(&[
        "tpm2_quote",
        "-c",
        handle,
        "-l",
        "sha256:0,16",
        "-q",
        "c0ffee0123",
        "-m",
        "q.msg",
        "-s",
        "q.sig",
        "-o",
        "q.pcrs",
        "-g",
        "sha256",
    ]);
    let check = |nonce: &str| {
        let args = [
            "tpm2_checkquote",
            "-u",
            "ak.pem",
            "-m",
            "q.msg",
            "-s",
            "q.sig",
            "-f",
            "q.pcrs",
            "-g",
            "sha256",
            "-q",
            nonce,
        ];
        tpm(tcti, dir, &args)
    };
    ok(check("c0ffee0123"), "tpm2_checkquote");
    let wrong = check("c0ffee0124");
    assert!(
        !wrong.status.success(),
        "a quote with another nonce verified"
    );
}

/// After a restart: the NV index and the persistent AK are still there.
fn after_restart(tcti: &str, dir: &Path, nv: &[u8]) {
    let t = |args: &[&str]| ok(tpm(tcti, dir, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    let read = t(&["tpm2_nvread", "0x1500016", "-C", "o", "-s", "32"]);
    assert_eq!(read.stdout, nv);
    let handles = stdout(&t(&["tpm2_getcap", "handles-persistent"]));
    assert!(handles.contains("0x81010002"), "{handles}");
    quote_and_check(tcti, dir, "0x81010002");
}

fn workdir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    (t, state, work)
}

#[test]
fn tpm2_tools_suite_through_the_swtpm_tcti_survives_a_restart() {
    let (_t, state, work) = workdir();
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    let nv = suite(&tcti, &work);
    vt.shut_down();
    let vt = start(&state, "swtpm");
    after_restart(&vt.tcti("swtpm"), &work, &nv);
}

/// `--vmgs VMGS FLAG KEY`: the state in a VMGS, opened with a key file
/// (`--key-file`) or through its key protector (`--kek-file`).
fn vmgs_store<'a>(vmgs: &'a Path, flag: &'static str, key: &'a Path) -> [&'a std::ffi::OsStr; 4] {
    [
        std::ffi::OsStr::new("--vmgs"),
        vmgs.as_os_str(),
        std::ffi::OsStr::new(flag),
        key.as_os_str(),
    ]
}

/// `cvm vtpm run` with the state `store` does not start, saying `why`; returns its
/// stderr.
fn refused_start(store: &[&std::ffi::OsStr], why: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["vtpm", "run"])
        .args(store)
        .args(["--server", "tcp:127.0.0.1:0", "--dangerously-allow-tcp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(why), "{err}");
    err
}

/// The state in an encrypted VMGS instead of a directory: the EK, the NV index, the
/// persistent AK and a sealed object survive an orderly stop and a start; the VMGS is
/// created on first start and no other key opens it.
#[test]
fn tpm2_tools_suite_with_the_state_in_a_vmgs_survives_a_restart_and_needs_its_key() {
    let (t, _state, work) = workdir();
    let vmgs = t.path().join("vm.vmgs");
    let key = t.path().join("vmgs.key");
    std::fs::write(&key, [0x42u8; 32]).unwrap();
    let store = vmgs_store(&vmgs, "--key-file", &key);
    let vt = start_in(&store, "swtpm", &[]);
    let tcti = vt.tcti("swtpm");
    let nv = suite(&tcti, &work);
    let ek_before = std::fs::read(work.join("ek.pub")).unwrap();
    vt.shut_down();
    assert!(
        !std::fs::read(&vmgs)
            .unwrap()
            .windows(17)
            .any(|w| w == b"disk key for vm-1")
    );

    let vt = start_in(&store, "swtpm", &[]);
    let tcti = vt.tcti("swtpm");
    after_restart(&tcti, &work, &nv);
    // No resource manager: flush what the checks above left loaded or saved, and the
    // transient objects after each step, as a resource manager would.
    for what in ["-t", "-l", "-s"] {
        ok(
            tpm(&tcti, &work, &["tpm2_flushcontext", what]),
            "flushcontext",
        );
    }
    let t2 = |args: &[&str]| {
        let o = ok(tpm(&tcti, &work, args), args[0]);
        ok(
            tpm(&tcti, &work, &["tpm2_flushcontext", "-t"]),
            "flushcontext",
        );
        o
    };
    t2(&[
        "tpm2_createek",
        "-c",
        "ek2.ctx",
        "-G",
        "rsa",
        "-u",
        "ek2.pub",
    ]);
    t2(&["tpm2_flushcontext", "-t"]);
    assert_eq!(std::fs::read(work.join("ek2.pub")).unwrap(), ek_before);
    // The object sealed before the restart, to PCR 16 after one extend from zero: the
    // same primary (the owner seed survived), PCR 16 reset (the orderly stop saved
    // and the start resumed its later value) and extended the same way, the secret
    // back.
    t2(&["tpm2_createprimary", "-C", "o", "-c", "primary2.ctx"]);
    t2(&[
        "tpm2_load",
        "-C",
        "primary2.ctx",
        "-u",
        "seal.pub",
        "-r",
        "seal.priv",
        "-c",
        "seal2.ctx",
    ]);
    t2(&["tpm2_pcrreset", "16"]);
    t2(&[
        "tpm2_pcrextend",
        &format!("16:sha256={}", hex::encode([0x5au8; 32])),
    ]);
    let un = t2(&["tpm2_unseal", "-c", "seal2.ctx", "-p", "pcr:sha256:16"]);
    assert_eq!(un.stdout, b"disk key for vm-1");
    drop(vt);

    // Another key does not open it.
    std::fs::write(&key, [0x43u8; 32]).unwrap();
    refused_start(&store, "does not open this VMGS");
}

/// Starts the TPM behind `vt`, defines NV index 0x1500020 (32 bytes), writes it and
/// shuts the vTPM down in order; returns what was written.
fn nv_define_and_write(vt: Vt, work: &Path) -> Vec<u8> {
    let nv: Vec<u8> = (0..32u8).map(|i| i ^ 0x3c).collect();
    std::fs::write(work.join("nv.in"), &nv).unwrap();
    let tcti = vt.tcti("swtpm");
    let t1 = |args: &[&str]| ok(tpm(&tcti, work, args), args[0]);
    t1(&["tpm2_startup", "-c"]);
    t1(&[
        "tpm2_nvdefine",
        "0x1500020",
        "-C",
        "o",
        "-s",
        "32",
        "-a",
        "ownerread|ownerwrite|authread|authwrite",
    ]);
    t1(&["tpm2_nvwrite", "0x1500020", "-C", "o", "-i", "nv.in"]);
    vt.shut_down();
    nv
}

/// Starts the TPM behind `vt`, reads NV index 0x1500020 and checks it holds `nv`;
/// shuts the vTPM down in order.
fn nv_read_back(vt: Vt, work: &Path, nv: &[u8]) {
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, work, &["tpm2_startup", "-c"]), "startup");
    let read = ok(
        tpm(
            &tcti,
            work,
            &["tpm2_nvread", "0x1500020", "-C", "o", "-s", "32"],
        ),
        "nvread",
    );
    assert_eq!(read.stdout, nv);
    vt.shut_down();
}

/// The VMGS opened through its key protector with a key-encryption key: an NV index
/// survives two restarts, every start rotates the datastore key (the key protector,
/// a plaintext file of the VMGS, changes), and another KEK does not open the file.
#[test]
fn with_a_kek_each_start_rotates_the_vmgs_datastore_key_and_keeps_the_state() {
    let (t, _state, work) = workdir();
    let vmgs = t.path().join("vm.vmgs");
    let kek = t.path().join("vmgs.kek");
    std::fs::write(&kek, [0x24u8; 32]).unwrap();
    let store = vmgs_store(&vmgs, "--kek-file", &kek);
    let key_protector = || {
        let out = Command::new(env!("CARGO_BIN_EXE_cvm"))
            .args(["vmgs", "read"])
            .arg(&vmgs)
            .args(["--file-id", "KEY_PROTECTOR", "--out", "-"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len(), 2060);
        out.stdout
    };
    let nv = nv_define_and_write(start_in(&store, "swtpm", &[]), &work);
    let mut seen = vec![key_protector()];
    for _ in 0..2 {
        nv_read_back(start_in(&store, "swtpm", &[]), &work, &nv);
        seen.push(key_protector());
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "a start did not rotate the datastore key");
    std::fs::write(&kek, [0x25u8; 32]).unwrap();
    refused_start(&store, "does not open this VMGS");
}

/// `args` as the `&OsStr`s the spawn helpers take.
fn refs(args: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(|s| s.as_os_str()).collect()
}

/// The KEK of the VMGS's key protector released by the real key vault after the real
/// attestation service appraised the VM's emulated SNP report (both on 127.0.0.1):
/// each VM's KEK has a release policy naming its HOST_DATA. The VM keeps its NV index
/// across restarts; a copy of its VMGS given to another VM opens neither with that
/// VM's own key (wrong KEK) nor by asking for the first VM's key (the vault refuses:
/// the report is the other VM's). A response not signed by the pinned vault
/// certificate is refused.
#[test]
fn a_vmgs_kek_released_after_attestation_opens_only_on_its_own_vm() {
    use common::{attest_serve, cvm, json_of, keyvault, post};
    let (t, _state, work) = workdir();
    let d = t.path();
    let attest = attest_serve(d);
    let kv = keyvault(d, &attest.url);
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (st, v) = post(
        &format!("{}/vaults/team", kv.url),
        &admin,
        &serde_json::json!({}),
    );
    assert_eq!(st, 200, "{v}");
    let admin_cred = d.join("team-admin.cred");
    std::fs::write(&admin_cred, v["credential"].as_str().unwrap()).unwrap();
    // The vTPM holds a credential that may only read and release: it cannot rewrite a
    // key's release policy (which is immutable besides).
    let (st, v) = post(
        &format!("{}/credentials", kv.url),
        v["credential"].as_str().unwrap(),
        &serde_json::json!({"role": "release_user"}),
    );
    assert_eq!(st, 200, "{v}");
    let cred = d.join("team-release.cred");
    std::fs::write(&cred, v["credential"].as_str().unwrap()).unwrap();
    // One KEK per VM, released only to a report carrying that VM's HOST_DATA.
    let kek_for = |name: &str, host_data: &str| -> String {
        let policy = serde_json::json!({"version": "1.0.0", "anyOf": [{"authority": attest.url,
            "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                      {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data}]}]});
        let path = d.join(format!("{name}.policy.json"));
        std::fs::write(&path, policy.to_string()).unwrap();
        let out = cvm(&[
            "key",
            "create",
            "--url",
            &kv.url,
            "--credential-file",
            admin_cred.to_str().unwrap(),
            name,
            "--kty",
            "oct",
            "--release-policy",
            path.to_str().unwrap(),
            "--immutable",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)["key"]["kid"].as_str().unwrap().to_string()
    };
    let (host_a, host_b) = ("a1".repeat(32), "b2".repeat(32));
    let (kid_a, kid_b) = (kek_for("vm-a-kek", &host_a), kek_for("vm-b-kek", &host_b));
    let emu = d.join("emu");
    let signer = d.join("kv/release-signer.pem");
    let vm = |vmgs: &Path, kid: &str, host: &str, signer: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["--vmgs".into(), vmgs.into()];
        for (flag, val) in [
            ("--key-release", std::ffi::OsStr::new(kid)),
            ("--attestation-url", attest.url.as_ref()),
            ("--vault-credential-file", cred.as_os_str()),
            ("--vault-signer", signer.as_os_str()),
            ("--snp-platform", emu.as_os_str()),
            ("--host-data", host.as_ref()),
        ] {
            v.push(flag.into());
            v.push(val.into());
        }
        v
    };

    let vmgs_a = d.join("a.vmgs");
    let a = vm(&vmgs_a, &kid_a, &host_a, &signer);
    let nv = nv_define_and_write(start_in(&refs(&a), "swtpm", &[]), &work);
    nv_read_back(start_in(&refs(&a), "swtpm", &[]), &work, &nv);

    let vmgs_b = d.join("b.vmgs");
    std::fs::copy(&vmgs_a, &vmgs_b).unwrap();
    // VM B with its own KEK: released, but it does not open VM A's key protector.
    refused_start(
        &refs(&vm(&vmgs_b, &kid_b, &host_b, &signer)),
        "does not open this VMGS",
    );
    // VM B asking for VM A's KEK: its report carries B's HOST_DATA; the vault's policy
    // refuses, naming the claim.
    let stderr = refused_start(
        &refs(&vm(&vmgs_b, &kid_a, &host_b, &signer)),
        "the key vault refused to release",
    );
    assert!(stderr.contains("release_policy_denied"), "{stderr}");
    assert!(stderr.contains("x-ms-sevsnpvm-hostdata"), "{stderr}");
    // A pinned certificate that is not the vault's: the response is refused.
    let other = d.join("emu-roots.pem");
    refused_start(
        &refs(&vm(&vmgs_a, &kid_a, &host_a, &other)),
        "the release response is not the vault's",
    );
    // VM A still opens its VMGS, which none of the refusals changed.
    nv_read_back(start_in(&refs(&a), "swtpm", &[]), &work, &nv);
}

#[test]
fn tpm2_tools_suite_through_the_mssim_tcti_survives_kill_9() {
    let (_t, state, work) = workdir();
    let vt = start(&state, "mssim");
    let nv = suite(&vt.tcti("mssim"), &work);
    drop(vt); // SIGKILL: no orderly shutdown; committed state must be there.
    let vt = start(&state, "mssim");
    after_restart(&vt.tcti("mssim"), &work, &nv);
}

#[test]
fn swtpm_ioctl_capabilities_init_established_info_and_state_blobs() {
    let (_t, state, work) = workdir();
    // Without a migration key no state blob leaves or enters the vTPM.
    {
        let (_t2, state2, work2) = workdir();
        let vt = start(&state2, "swtpm");
        let out = work2.join("plain.blob");
        let o = vt.ioctl(&["--save", "permanent", out.to_str().unwrap()]);
        assert!(
            !o.status.success(),
            "a state blob left without a migration key"
        );
    }
    let key = work.join("migration.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    let vt = start_with(&state, "swtpm", &["--migration-key", key.to_str().unwrap()]);
    let tcti = vt.tcti("swtpm");
    let caps = stdout(&ok(vt.ioctl(&["-c"]), "-c"));
    let bits = u32::from_str_radix(caps.trim().trim_start_matches("ptm capability is 0x"), 16)
        .unwrap_or_else(|_| panic!("{caps}"));
    // What QEMU requires of a TPM 2.0 emulator: INIT, SHUTDOWN, GET_TPMESTABLISHED,
    // SET_LOCALITY, RESET_TPMESTABLISHED, SET_DATAFD, STOP, SET_BUFFERSIZE.
    let qemu = 1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 7 | 1 << 12 | 1 << 10 | 1 << 13;
    assert_eq!(bits & qemu, qemu, "{caps}");
    assert!(stdout(&ok(vt.ioctl(&["-e"]), "-e")).contains("tpmEstablished is 0"));
    let info = stdout(&ok(vt.ioctl(&["--info", "1"]), "--info"));
    assert!(info.contains("\"family\":\"2.0\""), "{info}");
    // CMD_INIT restarts the TPM: it needs TPM2_Startup again.
    ok(vt.ioctl(&["-i"]), "-i");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    let nv = [0x42u8; 16];
    std::fs::write(work.join("nv.in"), nv).unwrap();
    t(&[
        "tpm2_nvdefine",
        "0x1500020",
        "-C",
        "o",
        "-s",
        "16",
        "-a",
        "ownerread|ownerwrite",
    ]);
    t(&["tpm2_nvwrite", "0x1500020", "-C", "o", "-i", "nv.in"]);

    // Save the permanent state blob, make a change, stop, load the saved blob back:
    // the change is gone, the saved index is there.
    let blob = work.join("perm.blob");
    ok(
        vt.ioctl(&["--save", "permanent", blob.to_str().unwrap()]),
        "--save",
    );
    assert!(std::fs::metadata(&blob).unwrap().len() > 1000);
    // Sealed: the NV contents written above do not appear in it, and a blob with one
    // bit flipped is refused.
    let sealed = std::fs::read(&blob).unwrap();
    assert!(!sealed.windows(nv.len()).any(|w| w == nv));
    let mut flipped = sealed.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    let tampered = work.join("tampered.blob");
    std::fs::write(&tampered, &flipped).unwrap();
    t(&[
        "tpm2_nvdefine",
        "0x1500021",
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        "ownerread|ownerwrite",
    ]);
    ok(vt.ioctl(&["--stop"]), "--stop");
    // A command while stopped is answered with TPM_RC_FAILURE.
    assert!(!tpm(&tcti, &work, &["tpm2_getrandom", "8"]).status.success());
    // A garbage or tampered blob is refused and changes nothing: the TPM restarts as
    // it was.
    let junk = work.join("junk.blob");
    std::fs::write(&junk, [7u8; 3000]).unwrap();
    for bad in [&junk, &tampered] {
        assert!(
            !vt.ioctl(&["--load", "permanent", bad.to_str().unwrap()])
                .status
                .success(),
            "a bad state blob was accepted"
        );
    }
    ok(vt.ioctl(&["-i"]), "-i after a refused load");
    t(&["tpm2_startup", "-c"]);
    let listed = stdout(&t(&["tpm2_getcap", "handles-nv-index"]));
    assert!(listed.contains("0x1500021"), "{listed}");
    ok(vt.ioctl(&["--stop"]), "--stop");
    ok(
        vt.ioctl(&["--load", "permanent", blob.to_str().unwrap()]),
        "--load",
    );
    ok(vt.ioctl(&["-i"]), "-i after load");
    t(&["tpm2_startup", "-c"]);
    let read = t(&["tpm2_nvread", "0x1500020", "-C", "o", "-s", "16"]);
    assert_eq!(read.stdout, nv);
    let listed = stdout(&t(&["tpm2_getcap", "handles-nv-index"]));
    assert!(
        listed.contains("0x1500020") && !listed.contains("0x1500021"),
        "{listed}"
    );
    // The loaded state is now the stored one: it survives a kill -9 and restart.
    drop(vt);
    let vt = start_with(&state, "swtpm", &["--migration-key", key.to_str().unwrap()]);
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    let listed = stdout(&ok(
        tpm(&tcti, &work, &["tpm2_getcap", "handles-nv-index"]),
        "getcap",
    ));
    assert!(
        listed.contains("0x1500020") && !listed.contains("0x1500021"),
        "{listed}"
    );
}

#[test]
fn kill_9_during_nv_writes_leaves_the_last_committed_state() {
    let (_t, state, work) = workdir();
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    t(&[
        "tpm2_nvdefine",
        "0x1500030",
        "-C",
        "o",
        "-s",
        "8",
        "-a",
        "ownerread|ownerwrite",
    ]);
    // Writes acknowledged one after another; the server dies in the middle of them.
    let writer = {
        let (tcti, work) = (tcti.clone(), work.clone());
        std::thread::spawn(move || {
            let mut acknowledged = 0u64;
            for i in 1u64.. {
                let f = work.join(format!("v{}", i % 2));
                std::fs::write(&f, i.to_be_bytes()).unwrap();
                let o = tpm(
                    &tcti,
                    &work,
                    &[
                        "tpm2_nvwrite",
                        "0x1500030",
                        "-C",
                        "o",
                        "-i",
                        f.to_str().unwrap(),
                    ],
                );
                if !o.status.success() {
                    return acknowledged;
                }
                acknowledged = i;
            }
            acknowledged
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(work.join("v1")).is_err() || std::time::Instant::now() < deadline {
        if work.join("v0").exists() && work.join("v1").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(vt); // SIGKILL
    let acknowledged = writer.join().unwrap();
    assert!(
        acknowledged >= 2,
        "only {acknowledged} writes before the kill"
    );
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    ok(
        tpm(&tcti, &work, &["tpm2_startup", "-c"]),
        "startup after kill",
    );
    let read = ok(
        tpm(
            &tcti,
            &work,
            &["tpm2_nvread", "0x1500030", "-C", "o", "-s", "8"],
        ),
        "nvread",
    );
    let value = u64::from_be_bytes(read.stdout.try_into().unwrap());
    // The last acknowledged write, or the one in flight when the process died.
    assert!(
        value == acknowledged || value == acknowledged + 1,
        "read {value}, last acknowledged {acknowledged}"
    );
}

#[test]
fn bad_endpoints_and_a_locked_state_are_refused() {
    let (_t, state, _work) = workdir();
    // `cvm vtpm run --state STATE` with `args` exits 2 and says `what`.
    let refused = |args: &[&str], what: &str| {
        let mut all = vec!["vtpm", "run", "--state", state.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = common::cvm(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    };
    let tcp = ["--server", "tcp:127.0.0.1:0", "--dangerously-allow-tcp"];
    refused(
        &["--server", "tcp:0.0.0.0:0", "--dangerously-allow-tcp"],
        "loopback",
    );
    // TCP at all only when explicitly allowed: any local user can connect to a port.
    refused(&tcp[..2], "--dangerously-allow-tcp");
    // A VM id that is not a UUID (it goes into the report's JSON claims).
    refused(
        &[&tcp[..], &["--vm-id", "x\",\"secure-boot\":false"]].concat(),
        "not a UUID",
    );
    let _vt = start(&state, "swtpm");
    refused(&tcp, "in use by another process");
}

#[test]
fn a_command_cut_short_or_an_idle_tool_connection_does_not_hold_the_channel() {
    use std::io::{Read, Write};
    let (_t, state, _work) = workdir();
    let vt = start(&state, "swtpm");
    // Half a command, then silence: the connection is closed within the 5 s a
    // command may take to arrive, not held open.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", vt.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(&[0x80, 0x01, 0, 0, 0, 12, 0]).unwrap();
    // (The client waits up to 30 s: a read timing out means it was held open.)
    let mut b = [0u8; 16];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0)), "not closed: {r:?}");
    // The channel serves the next client.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", vt.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(&[0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x44, 0, 0])
        .unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[..2], [0x80, 0x01]);
}

/// TPM2_PCR_Read of SHA-256 PCRs 0–7 sent raw on a data channel.
fn read_pcrs_raw(port: u16) -> Vec<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let body = [0, 0, 0, 1, 0x00, 0x0b, 3, 0xff, 0, 0];
    let mut cmd = vec![0x80, 0x01];
    cmd.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
    cmd.extend_from_slice(&0x17eu32.to_be_bytes());
    cmd.extend_from_slice(&body);
    s.write_all(&cmd).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    let size = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
    assert_eq!(&head[6..10], &[0, 0, 0, 0], "PCR_Read failed");
    let mut rest = vec![0u8; size - 10];
    s.read_exact(&mut rest).unwrap();
    // updateCounter, TPML_PCR_SELECTION (one selection of 3 bytes), TPML_DIGEST.
    let mut at = 4 + 4 + 2 + 1 + 3;
    let count = u32::from_be_bytes(rest[at..at + 4].try_into().unwrap());
    at += 4;
    (0..count)
        .map(|_| {
            let n = u16::from_be_bytes([rest[at], rest[at + 1]]) as usize;
            let d = rest[at + 2..at + 2 + n].to_vec();
            at += 2 + n;
            d
        })
        .collect()
}

#[test]
fn qemu_ovmf_boots_with_the_vtpm_and_the_measured_pcrs_are_readable() {
    let (t, state, _work) = workdir();
    // In a directory the vTPM creates private (0700).
    let sock = t.path().join("run").join("ctrl.sock");
    // The control channel on a Unix socket, as QEMU's `-tpmdev emulator` wants it (it
    // passes its data channel over it with CMD_SET_DATAFD); a TCP data channel beside
    // it for reading the PCRs once the guest is gone.
    let ctrl = format!("unix:{}", sock.display());
    let (child, server, _) = spawn_vtpm(
        &state,
        &[
            "--server",
            "tcp:127.0.0.1:0",
            "--dangerously-allow-tcp",
            "--ctrl",
            &ctrl,
        ],
    );
    let vt = Vt {
        child,
        host: "127.0.0.1".into(),
        port: port_of(&server),
        ctrl_port: 0,
    };

    let serial = t.path().join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-nic",
            "none",
        ])
        .args([
            "-no-reboot",
            "-monitor",
            "none",
            "-bios",
            "/usr/share/ovmf/OVMF.fd",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", sock.display()))
        .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
        .args(["-device", "tpm-tis,tpmdev=tpm0", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (scripts/setup installs qemu-system-x86)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    let reached = loop {
        let log = std::fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&log).contains("Shell>") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = qemu.stderr.take().unwrap().read_to_string(&mut err);
            panic!("qemu exited ({status}) before the UEFI shell: {err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    // Power the guest off (QEMU holds the one data channel a vTPM serves at a time
    // while it runs), then read the PCRs the firmware extended: the TPM keeps them
    // until it is initialised again.
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(reached, "OVMF did not reach the UEFI shell");
    let pcrs = read_pcrs_raw(vt.port);
    assert_eq!(pcrs.len(), 8);
    // OVMF measured its firmware (PCR 0), configuration and boot attempts: PCRs 0–7
    // hold measurements, all different from the reset value.
    for (i, d) in pcrs.iter().enumerate() {
        assert_ne!(d, &[0u8; 32], "PCR {i} was never extended");
    }
    // The vTPM outlives the guest's connection and still answers on its Unix control
    // channel (swtpm_ioctl --unix).
    let caps = Command::new("swtpm_ioctl")
        .arg("--unix")
        .arg(&sock)
        .arg("-c")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&caps.stdout).contains("ptm capability is 0x"));
    drop(vt);
}

/// The runtime claims of an HCL report, parsed by az-cvm-vtpm's parser.
fn hcl_claims(hcl: &[u8]) -> serde_json::Value {
    let r = az_cvm_vtpm::hcl::HclReport::new(hcl.to_vec()).expect("az-cvm-vtpm parses the report");
    serde_json::from_slice(r.var_data()).unwrap()
}

#[test]
fn provisioned_vtpm_holds_ek_ak_certificate_report_and_a_locked_platform_hierarchy() {
    let (t, state, work) = workdir();
    let ca = t.path().join("ca");
    let snp_dir = t.path().join("snp");
    let vm_id = "911B0EF8-9DBA-48B0-B275-4E4DF2D39252";
    let args = [
        "--ca",
        ca.to_str().unwrap(),
        "--snp-platform",
        snp_dir.to_str().unwrap(),
        "--vm-id",
        vm_id,
    ];
    let vt = start_with(&state, "swtpm", &args);
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    let read = |f: &str| std::fs::read(work.join(f)).unwrap();
    t(&["tpm2_startup", "-c"]);

    // The EK at 0x81010001 is the TCG default EK, as tpm2_createek derives it.
    t(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    t(&["tpm2_flushcontext", "-t"]);
    t(&[
        "tpm2_readpublic",
        "-c",
        "0x81010001",
        "-o",
        "ek-persistent.pub",
    ]);
    assert_eq!(read("ek.pub"), read("ek-persistent.pub"));
    // The AK at 0x81000003: a restricted RSA signing key.
    t(&["tpm2_readpublic", "-c", "0x81000003", "-o", "ak.pub"]);
    let ak = tpm_quote::TpmPublic::parse_tpm2b(&read("ak.pub")).unwrap();
    assert!(ak.is_restricted_signing_key());
    let tpm_quote::PublicDetails::Rsa(ak_rsa) = ak.details() else {
        panic!("the AK is not RSA")
    };

    // The HCL report, read the usual way (tpm2_nvread uses an HMAC session with
    // response encryption), parses with az-cvm-vtpm, binds its claims, and names the AK.
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-o", "hcl.bin"]);
    let hcl = read("hcl.bin");
    let parsed = az_cvm_vtpm::hcl::HclReport::new(hcl.clone()).unwrap();
    assert_eq!(parsed.report_type(), az_cvm_vtpm::hcl::ReportType::Snp);
    let claims = hcl_claims(&hcl);
    assert_eq!(claims["vm-configuration"]["vmUniqueId"], vm_id);
    assert_eq!(claims["vm-configuration"]["secure-boot"], true);
    assert_eq!(claims["vm-configuration"]["tpm-enabled"], true);
    assert_eq!(claims["user-data"], "0".repeat(128));
    let ak_jwk = &claims["keys"][0];
    assert_eq!(ak_jwk["kid"], "HCLAkPub");
    assert_eq!(
        ak_jwk["n"].as_str().unwrap(),
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &ak_rsa.modulus
        )
    );
    assert_eq!(&snp_report_data(&hcl)[..32], parsed.var_data_sha256());
    // Azure's current layout: 2600 bytes, both keys; HCLEkPub is the EK.
    assert_eq!(hcl.len(), 2600);
    let ek = tpm_quote::TpmPublic::parse_tpm2b(&read("ek.pub")).unwrap();
    let tpm_quote::PublicDetails::Rsa(ek_rsa) = ek.details() else {
        panic!("the EK is not RSA")
    };
    assert_eq!(claims["keys"][1]["kid"], "HCLEkPub");
    assert_eq!(
        claims["keys"][1]["n"].as_str().unwrap(),
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &ek_rsa.modulus
        )
    );
    // The same bytes with a second session encrypting the response (AES-CFB), read
    // in chunks at offsets, and with the index's own authorization.
    t(&["tpm2_startauthsession", "-S", "enc.ctx", "--hmac-session"]);
    t(&["tpm2_sessionconfig", "enc.ctx", "--enable-encrypt"]);
    for (offset, size) in [(0usize, 1024usize), (1024, 1024), (2048, 552)] {
        t(&[
            "tpm2_nvread",
            "0x01400001",
            "-C",
            "o",
            "-S",
            "enc.ctx",
            "-s",
            &size.to_string(),
            "--offset",
            &offset.to_string(),
            "-o",
            "chunk.bin",
        ]);
        assert_eq!(
            read("chunk.bin"),
            &hcl[offset..offset + size],
            "chunk at {offset}"
        );
    }
    t(&["tpm2_flushcontext", "enc.ctx"]);
    t(&[
        "tpm2_nvread",
        "0x01400001",
        "-C",
        "0x01400001",
        "-o",
        "hcl-index-auth.bin",
    ]);
    assert_eq!(read("hcl-index-auth.bin"), hcl);
    // A password session (as tss-esapi clients such as az-cvm-vtpm's use), sent raw:
    // libtpms checks the password; after the owner's authorization changes, the
    // right password reads and an empty one is refused.
    let raw_read_at = |password: &[u8], size: u16, offset: u16| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", vt.port)).unwrap();
        s.write_all(&vtpm::tpm::nv_read(
            vtpm::tpm::RH_OWNER,
            0x0140_0001,
            password,
            size,
            offset,
        ))
        .unwrap();
        let mut head = [0u8; 10];
        s.read_exact(&mut head).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize - 10];
        s.read_exact(&mut rest).unwrap();
        (u32::from_be_bytes(head[6..10].try_into().unwrap()), rest)
    };
    let raw_read = |password: &[u8]| raw_read_at(password, 64, 0);
    let (rc, body) = raw_read(b"");
    assert_eq!(rc, 0);
    // Reading past the end is TPM_RC_NV_RANGE, as for any index.
    assert_eq!(raw_read_at(b"", 16, 2590).0, 0x146);
    assert_eq!(&body[6..6 + 64], &hcl[..64]);
    // An HMAC session keyed with a wrong owner password fails its check, with
    // TPM_RC_BAD_AUTH: the index has TPMA_NV_NO_DA.
    let wrong = tpm(
        &tcti,
        &work,
        &[
            "tpm2_nvread",
            "0x01400001",
            "-C",
            "o",
            "-P",
            "wrong",
            "-s",
            "8",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .to_lowercase()
            .contains("0x9a2"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    t(&["tpm2_changeauth", "-c", "o", "owner-secret"]);
    assert_eq!(raw_read(b"").0, 0x9a2);
    let (rc, body) = raw_read(b"owner-secret");
    assert_eq!(rc, 0);
    assert_eq!(&body[6..6 + 64], &hcl[..64]);
    t(&["tpm2_changeauth", "-c", "o", "-p", "owner-secret"]);

    // Our verifier accepts it under the emulator's roots, with a quote by the AK.
    let roots = work.join("roots.pem");
    common::export_roots(snp_dir.to_str().unwrap(), roots.to_str().unwrap());
    let vcek = std::fs::read_dir(snp_dir.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vcek-")
        })
        .unwrap();
    t(&[
        "tpm2_quote",
        "-c",
        "0x81000003",
        "-l",
        "sha256:0,1,2,3",
        "-q",
        "5eed",
        "-m",
        "q.msg",
        "-s",
        "q.sig",
        "-g",
        "sha256",
    ]);
    let out = common::cvm(&[
        "evidence",
        "verify",
        work.join("hcl.bin").to_str().unwrap(),
        "--vek",
        vcek.to_str().unwrap(),
        "--chain",
        roots.to_str().unwrap(),
        "--dangerously-trust-emulator-roots",
        roots.to_str().unwrap(),
        "--offline",
        "--quote",
        work.join("q.msg").to_str().unwrap(),
        "--quote-sig",
        work.join("q.sig").to_str().unwrap(),
        "--nonce",
        "5eed",
        "--json",
    ]);
    let v = common::json_of(&out);
    assert_eq!(v["quote"]["verified"], true, "{v}");
    assert_eq!(v["trust"], "emulated", "{v}");
    assert!(out.status.success(), "{v}");

    // The AK certificate at 0x01C101D0 is issued by the vTPM CA for the AK, checked by
    // Python `cryptography`.
    t(&["tpm2_nvread", "0x01C101D0", "-C", "o", "-o", "akcert.der"]);
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from cryptography import x509\n\
             c=x509.load_der_x509_certificate(open(sys.argv[1],'rb').read())\n\
             ca=x509.load_der_x509_certificate(open(sys.argv[2],'rb').read())\n\
             c.verify_directly_issued_by(ca)\n\
             eku=c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value\n\
             assert '2.23.133.8.3' in [o.dotted_string for o in eku]\n\
             print('%x' % c.public_key().public_numbers().n)",
        )
        .arg(work.join("akcert.der"))
        .arg(ca.join("ca-cert.der"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        hex::encode(&ak_rsa.modulus).trim_start_matches('0')
    );

    // 64 bytes of user data written to 0x01400002 come back in a fresh report.
    let user_data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    std::fs::write(work.join("ud.bin"), &user_data).unwrap();
    t(&["tpm2_nvwrite", "0x01400002", "-C", "o", "-i", "ud.bin"]);
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-o", "hcl2.bin"]);
    let hcl2 = read("hcl2.bin");
    let claims2 = hcl_claims(&hcl2);
    assert_eq!(claims2["user-data"], hex::encode_upper(&user_data));
    let parsed2 = az_cvm_vtpm::hcl::HclReport::new(hcl2.clone()).unwrap();
    assert_eq!(&snp_report_data(&hcl2)[..32], parsed2.var_data_sha256());
    assert_ne!(snp_report_data(&hcl2), snp_report_data(&hcl));
    // Refreshes are rate-limited: a burst gets TPM_RC_RETRY (0x922) for some writes.
    let refused = (0..12)
        .filter(|_| {
            let o = tpm(
                &tcti,
                &work,
                &["tpm2_nvwrite", "0x01400002", "-C", "o", "-i", "ud.bin"],
            );
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("0x922")
        })
        .count();
    assert!(refused > 0, "no user-data write was rate-limited");

    // The platform hierarchy is locked: no clear, no changes to platform indices.
    for args in [
        &["tpm2_clear", "-c", "p"][..],
        &["tpm2_nvundefine", "0x01400001", "-C", "p"],
        &["tpm2_nvwrite", "0x01400001", "-C", "p", "-i", "ud.bin"],
        &["tpm2_changeauth", "-c", "p", "guess"],
    ] {
        // Exactly an authorization failure of the platform hierarchy, not any error
        // (session exhaustion, say, would fail these commands too).
        refused_with(tpm(&tcti, &work, args), "0x9A2");
    }
    // Nor through the lockout hierarchy: disableClear is set by the platform.
    refused_with(tpm(&tcti, &work, &["tpm2_clear", "-c", "l"]), "0x120");
    // The owner still uses its own hierarchy (the lock is the platform's only).
    t(&["tpm2_createprimary", "-C", "o", "-c", "owner.ctx"]);
    t(&["tpm2_flushcontext", "-t"]);

    // After kill -9 and a restart: the same AK, the same certificate (not re-issued), a
    // fresh report with zero user data.
    let cert1 = read("akcert.der");
    drop(vt);
    let vt = start_with(&state, "swtpm", &args);
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    t(&["tpm2_readpublic", "-c", "0x81000003", "-o", "ak2.pub"]);
    assert_eq!(read("ak.pub"), read("ak2.pub"));
    t(&["tpm2_nvread", "0x01C101D0", "-C", "o", "-o", "akcert2.der"]);
    assert_eq!(cert1, read("akcert2.der"));
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-o", "hcl3.bin"]);
    assert_eq!(hcl_claims(&read("hcl3.bin"))["user-data"], "0".repeat(128));
    assert!(
        !tpm(&tcti, &work, &["tpm2_clear", "-c", "p"])
            .status
            .success()
    );
}

/// Asserts that a tpm2-tools command failed with the TPM response code `rc` (as the
/// tools print it, e.g. `0x9A2`).
fn refused_with(o: Output, rc: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded: {}", stdout(&o));
    assert!(
        err.to_ascii_uppercase()
            .contains(&format!("({})", rc.to_ascii_uppercase())),
        "expected TPM response {rc}, got: {err}"
    );
}

#[test]
fn a_key_the_guest_puts_at_the_ak_handle_never_becomes_hclakpub() {
    let (t, state, work) = workdir();
    let ca = t.path().join("ca");
    let snp_dir = t.path().join("snp");
    let args = [
        "--ca",
        ca.to_str().unwrap(),
        "--snp-platform",
        snp_dir.to_str().unwrap(),
    ];
    let read = |f: &str| std::fs::read(work.join(f)).unwrap();
    // The guest loads the imported key and persists it where the AK was.
    let plant = |tcti: &str| {
        let t = |args: &[&str]| ok(tpm(tcti, &work, args), args[0]);
        t(&["tpm2_createprimary", "-C", "o", "-c", "parent.ctx"]);
        t(&["tpm2_flushcontext", "-t"]);
        t(&[
            "tpm2_load",
            "-C",
            "parent.ctx",
            "-u",
            "imp.pub",
            "-r",
            "imp.priv",
            "-c",
            "imp.ctx",
        ]);
        t(&["tpm2_evictcontrol", "-C", "o", "-c", "0x81000003"]);
        t(&[
            "tpm2_evictcontrol",
            "-C",
            "o",
            "-c",
            "imp.ctx",
            "0x81000003",
        ]);
        t(&["tpm2_flushcontext", "-t"]);
    };
    let vt = start_with(&state, "swtpm", &args);
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    t(&["tpm2_readpublic", "-c", "0x81000003", "-o", "ak.pub"]);
    t(&["tpm2_readpublic", "-c", "0x81010001", "-o", "ek.pub"]);
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-o", "hcl1.bin"]);
    let claims1 = hcl_claims(&read("hcl1.bin"));

    // The guest (owner authorization is empty) evicts the AK and the EK, and puts an
    // RSA key it generated outside the TPM at the AK's handle.
    t(&["tpm2_evictcontrol", "-C", "o", "-c", "0x81010001"]);
    let key = work.join("guest.pem");
    let o = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(o.status.success());
    t(&["tpm2_createprimary", "-C", "o", "-c", "parent.ctx"]);
    t(&["tpm2_flushcontext", "-t"]);
    t(&[
        "tpm2_import",
        "-C",
        "parent.ctx",
        "-G",
        "rsa",
        "-i",
        "guest.pem",
        "-u",
        "imp.pub",
        "-r",
        "imp.priv",
    ]);
    t(&["tpm2_flushcontext", "-t"]);
    plant(&tcti);
    t(&["tpm2_readpublic", "-c", "0x81000003", "-o", "planted.pub"]);
    assert_ne!(read("planted.pub"), read("ak.pub"));

    // The VM is powered off and on: the vTPM derives its own keys again, evicts the
    // planted one and reports and certifies only what it derived.
    drop(vt);
    let vt = start_with(&state, "swtpm", &args);
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    t(&["tpm2_readpublic", "-c", "0x81000003", "-o", "ak2.pub"]);
    assert_eq!(
        read("ak.pub"),
        read("ak2.pub"),
        "the AK handle holds the vTPM's AK"
    );
    t(&["tpm2_readpublic", "-c", "0x81010001", "-o", "ek2.pub"]);
    assert_eq!(
        read("ek.pub"),
        read("ek2.pub"),
        "the EK handle holds the vTPM's EK"
    );
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-o", "hcl2.bin"]);
    let claims2 = hcl_claims(&read("hcl2.bin"));
    assert_eq!(
        claims1["keys"], claims2["keys"],
        "HCLAkPub/HCLEkPub unchanged"
    );
    t(&["tpm2_nvread", "0x01C101D0", "-C", "o", "-o", "akcert.der"]);
    let planted = tpm_quote::TpmPublic::parse_tpm2b(&read("planted.pub")).unwrap();
    let tpm_quote::PublicDetails::Rsa(planted) = planted.details() else {
        panic!("not RSA")
    };
    let cert = read("akcert.der");
    assert!(
        !cert
            .windows(planted.modulus.len())
            .any(|w| w == planted.modulus.as_slice()),
        "the AK certificate certifies the planted key"
    );

    // If the guest also changes the owner authorization, so that the handle cannot
    // be restored, the report still names the vTPM's own AK, never the planted key.
    plant(&tcti);
    t(&["tpm2_changeauth", "-c", "o", "owner-secret"]);
    drop(vt);
    let vt = start_with(&state, "swtpm", &args);
    let tcti = vt.tcti("swtpm");
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    t(&["tpm2_startup", "-c"]);
    t(&[
        "tpm2_nvread",
        "0x01400001",
        "-C",
        "0x01400001",
        "-o",
        "hcl3.bin",
    ]);
    assert_eq!(claims1["keys"], hcl_claims(&read("hcl3.bin"))["keys"]);
}

/// REPORT_DATA of the SNP report inside an HCL report.
fn snp_report_data(hcl: &[u8]) -> Vec<u8> {
    hcl[0x20 + 0x50..0x20 + 0x90].to_vec()
}

/// Starts the vTPM on `state`, extends PCR 16 and shuts it down in order
/// (`CMD_SHUTDOWN`: the volatile state, PCRs included, is saved for the next start);
/// returns PCR 16.
fn extend_pcr16_and_shut_down(state: &Path, work: &Path) -> Vec<u8> {
    let vt = start(state, "swtpm");
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, work, &["tpm2_startup", "-c"]), "startup");
    let d = format!("16:sha256={}", hex::encode([7u8; 32]));
    ok(tpm(&tcti, work, &["tpm2_pcrextend", &d]), "pcrextend");
    let extended = pcr16(&tcti, work);
    assert_ne!(extended, [0u8; 32]);
    vt.shut_down();
    extended
}

#[test]
fn an_orderly_shutdown_is_resumed_once_and_a_kill_never_rolls_pcrs_back() {
    let (_t, state, work) = workdir();
    let extended = extend_pcr16_and_shut_down(&state, &work);
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    assert_eq!(pcr16(&tcti, &work), extended, "PCR 16 was not resumed");
    // The saved volatile state was used once: after a kill -9 the TPM starts fresh
    // (PCRs reset), never from the old volatile state.
    drop(vt);
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    assert_eq!(pcr16(&tcti, &work), [0u8; 32]);
}

/// `--power-on` (what the host agent runs for each VM start): the VM powers on, so
/// volatile state an orderly shutdown saved is discarded and PCRs start from zero
/// (without it the same state would be resumed, as the test above shows).
#[test]
fn power_on_discards_the_saved_volatile_state() {
    let (_t, state, work) = workdir();
    extend_pcr16_and_shut_down(&state, &work);
    assert!(state.join("volatilestate.state").exists());
    let vt = start_with(&state, "swtpm", &["--power-on"]);
    let tcti = vt.tcti("swtpm");
    // Not resumed: the TPM waits for its TPM2_Startup like a machine powered on.
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    assert_eq!(pcr16(&tcti, &work), [0u8; 32]);
    drop(vt);
    assert!(!state.join("volatilestate.state").exists());
}

/// The response code of a raw TPM2_GetRandom(8) sent on a data channel.
fn raw_getrandom_rc(port: u16) -> u32 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8])
        .unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    u32::from_be_bytes(head[6..10].try_into().unwrap())
}

#[test]
fn need_init_keeps_the_tpm_stopped_until_cmd_init() {
    let (_t, state, work) = workdir();
    let vt = start_with(&state, "swtpm", &["--need-init"]);
    let tcti = vt.tcti("swtpm");
    // Before CMD_INIT every command gets TPM_RC_FAILURE; the vTPM keeps serving.
    assert_eq!(raw_getrandom_rc(vt.port), 0x101);
    assert!(!tpm(&tcti, &work, &["tpm2_startup", "-c"]).status.success());
    assert_eq!(raw_getrandom_rc(vt.port), 0x101);
    ok(vt.ioctl(&["-i"]), "swtpm_ioctl -i");
    // Now it runs, from the state provisioned before the stop: the EK is there.
    assert_eq!(
        raw_getrandom_rc(vt.port),
        0x100,
        "TPM_RC_INITIALIZE before Startup"
    );
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    assert_eq!(raw_getrandom_rc(vt.port), 0);
    let handles = stdout(&ok(
        tpm(&tcti, &work, &["tpm2_getcap", "handles-persistent"]),
        "getcap",
    ));
    assert!(handles.contains("0x81010001"), "{handles}");
    // Without the flag the TPM runs at once (it only waits for TPM2_Startup).
    drop(vt);
    let vt = start(&state, "swtpm");
    assert_eq!(raw_getrandom_rc(vt.port), 0x100);
}

/// `--bare` (hidden; for the IBM TSS regression suite, which needs the platform
/// hierarchy): nothing provisioned and no lock. It cannot be combined with the
/// platform's CA or secure processor.
#[test]
fn bare_mode_provisions_nothing_and_leaves_the_platform_hierarchy_open() {
    let (_t, state, work) = workdir();
    let ca = work.join("ca");
    let o = common::cvm(&[
        "vtpm",
        "run",
        "--state",
        state.to_str().unwrap(),
        "--bare",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!ca.exists());
    let vt = start_with(&state, "mssim", &["--bare"]);
    let tcti = vt.tcti("mssim");
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    let handles = stdout(&ok(
        tpm(&tcti, &work, &["tpm2_getcap", "handles-persistent"]),
        "getcap",
    ));
    assert!(!handles.contains("0x81"), "{handles}");
    ok(tpm(&tcti, &work, &["tpm2_clear", "-c", "p"]), "clear -c p");
}

/// A TPM resumed from saved volatile state cannot write its platform hierarchy (the
/// authorization died with the previous process). When provisioning must (here: a CA
/// given for the first time, so an AK certificate to store), the vTPM drops the
/// resumed state and starts the TPM fresh instead of failing to start.
#[test]
fn a_resumed_tpm_that_must_be_reprovisioned_starts_fresh() {
    let (_t, state, work) = workdir();
    extend_pcr16_and_shut_down(&state, &work);
    let ca = work.join("ca");
    let vt = start_with(&state, "swtpm", &["--ca", ca.to_str().unwrap()]);
    let tcti = vt.tcti("swtpm");
    // Fresh: the guest starts it (a resumed TPM would refuse TPM2_Startup), PCR 16 is
    // reset, and the new AK certificate is there.
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    assert_eq!(pcr16(&tcti, &work), [0u8; 32]);
    ok(
        tpm(
            &tcti,
            &work,
            &["tpm2_nvread", "0x01C101D0", "-C", "o", "-o", "ak.der"],
        ),
        "nvread AK certificate",
    );
    assert!(std::fs::metadata(work.join("ak.der")).unwrap().len() > 100);
}

/// The sha256 value of PCR `n`.
fn pcr(tcti: &str, dir: &Path, n: u32) -> Vec<u8> {
    let o = ok(
        tpm(tcti, dir, &["tpm2_pcrread", &format!("sha256:{n}")]),
        "pcrread",
    );
    let s = stdout(&o);
    let prefix = format!("{n}: 0x");
    let hexv = s
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{s}"));
    hex::decode(hexv.trim()).unwrap()
}

#[test]
fn swtpm_ioctl_hashing_established_locality_buffer_volatile_config_cancel() {
    let (_t, state, work) = workdir();
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    // CMD_HASH_START/DATA/END: the dynamic root of trust measurement resets PCR 17
    // and extends it with the hash of the data (at locality 4), and sets the
    // TPM-established flag.
    assert_eq!(pcr(&tcti, &work, 17), [0xff; 32]);
    ok(vt.ioctl(&["-h", "opencvm drtm"]), "-h");
    let data_hash = digest::digest(&digest::SHA256, b"opencvm drtm");
    let expected = digest::digest(
        &digest::SHA256,
        &[[0u8; 32].as_slice(), data_hash.as_ref()].concat(),
    );
    assert_eq!(pcr(&tcti, &work, 17), expected.as_ref());
    assert!(stdout(&ok(vt.ioctl(&["-e"]), "-e")).contains("tpmEstablished is 1"));
    // Resetting the flag needs locality 3 or 4.
    assert!(!vt.ioctl(&["-r", "0"]).status.success());
    ok(vt.ioctl(&["-r", "3"]), "-r 3");
    assert!(stdout(&ok(vt.ioctl(&["-e"]), "-e")).contains("tpmEstablished is 0"));
    // Localities 0-4 only; commands keep working after a change.
    assert!(!vt.ioctl(&["-l", "5"]).status.success());
    ok(vt.ioctl(&["-l", "3"]), "-l 3");
    ok(
        tpm(&tcti, &work, &["tpm2_getrandom", "8"]),
        "getrandom at locality 3",
    );
    ok(vt.ioctl(&["-l", "0"]), "-l 0");
    // Buffer size: queried while running, not changed while running.
    let sizes = stdout(&ok(vt.ioctl(&["-b", "0"]), "-b 0"));
    assert!(
        sizes.contains("TPM buffersize") && sizes.contains("4096"),
        "{sizes}"
    );
    assert!(!vt.ioctl(&["-b", "2048"]).status.success());
    // Configuration flags: no file or migration key.
    assert!(stdout(&ok(vt.ioctl(&["-g"]), "-g")).contains("0x0"));
    ok(vt.ioctl(&["-C"]), "-C");
    // CMD_STORE_VOLATILE writes the volatile state file.
    ok(vt.ioctl(&["-v"]), "-v");
    assert!(state.join("volatilestate.state").exists());
    // Unknown commands and a stopped TPM answer errors, and the channel stays usable.
    ok(vt.ioctl(&["--stop"]), "--stop");
    assert!(!vt.ioctl(&["-e"]).status.success());
    assert!(!vt.ioctl(&["-h", "x"]).status.success());
    ok(vt.ioctl(&["-i"]), "-i");
    ok(
        tpm(&tcti, &work, &["tpm2_startup", "-c"]),
        "startup after init",
    );
}

/// Runs an IBM TSS tool (Debian `tss2`) against the simulator ports of `vt`.
fn ibm(vt: &Vt, dir: &Path, args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM_INTERFACE_TYPE", "socsim")
        .env("TPM_SERVER_TYPE", "mssim")
        .env("TPM_SERVER_NAME", &vt.host)
        .env("TPM_COMMAND_PORT", vt.port.to_string())
        .env("TPM_PLATFORM_PORT", vt.ctrl_port.to_string())
        .env("TPM_DATA_DIR", dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs tss2)", args[0]))
}

#[test]
fn ibm_tss_through_the_simulator_ports_power_cycles_the_tpm() {
    let (_t, state, work) = workdir();
    let vt = start(&state, "mssim");
    let t = |args: &[&str]| ok(ibm(&vt, &work, args), args[0]);
    t(&["tsspowerup"]);
    t(&["tssstartup"]);
    let random = stdout(&t(&["tssgetrandom", "-by", "8"]));
    assert!(random.contains("randomBytes length 8"), "{random}");
    t(&["tsspcrextend", "-ha", "16", "-ic", "hello"]);
    let extended = stdout(&t(&["tsspcrread", "-ha", "16", "-halg", "sha256"]));
    t(&[
        "tssnvdefinespace",
        "-hi",
        "o",
        "-ha",
        "01500001",
        "-sz",
        "16",
    ]);
    t(&["tssnvwrite", "-ha", "01500001", "-ic", "abcdefgh"]);
    // A power cycle on the platform port: PCRs reset, NV kept, Startup needed again.
    t(&["tsspowerup"]);
    assert!(
        !ibm(&vt, &work, &["tssgetrandom", "-by", "8"])
            .status
            .success()
    );
    t(&["tssstartup"]);
    let after = stdout(&t(&["tsspcrread", "-ha", "16", "-halg", "sha256"]));
    assert_ne!(after, extended);
    assert!(
        after.contains("00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        "{after}"
    );
    let nv = stdout(&t(&["tssnvread", "-ha", "01500001", "-sz", "8"]));
    assert!(nv.contains("61 62 63 64 65 66 67 68"), "{nv}");
    // The platform hierarchy is locked here too.
    let clear = ibm(&vt, &work, &["tssclear", "-hi", "p"]);
    assert!(!clear.status.success());
    assert!(stdout(&clear).contains("000009a2"), "{}", stdout(&clear));
}

#[test]
fn connections_are_bounded_and_malformed_commands_do_not_kill_the_vtpm() {
    use std::io::{Read, Write};
    let (_t, state, work) = workdir();
    let vt = start(&state, "swtpm");
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, &work, &["tpm2_startup", "-c"]), "startup");
    let connect = || std::net::TcpStream::connect(("127.0.0.1", vt.port)).unwrap();
    let idle: Vec<_> = (0..32).map(|_| connect()).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut extra = connect();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        extra.read(&mut b).unwrap_or(0),
        0,
        "connection 33 was served"
    );
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A command whose size is out of bounds is answered TPM_RC_COMMAND_SIZE and the
    // connection closed; junk likewise; the vTPM keeps serving.
    let mut s = connect();
    s.write_all(&[0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0x7b])
        .unwrap();
    let mut r = Vec::new();
    s.read_to_end(&mut r).unwrap();
    assert_eq!(r, [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x42]);
    // A message that is not a TPM command is refused (TPM_RC_BAD_TAG) as a whole,
    // and the connection stays in step.
    let mut s = connect();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&[0x13; 10]).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0x1e]);
    s.write_all(&[0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8])
        .unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        r[..2],
        [0x80, 0x01],
        "a TPM response after the refused message"
    );
    drop(s);
    ok(
        tpm(&tcti, &work, &["tpm2_getrandom", "8"]),
        "getrandom after junk",
    );
    // Garbage on the control channel gets an error code, not a crash.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", vt.ctrl_port)).unwrap();
    c.write_all(&[0, 0, 0, 99]).unwrap();
    let mut r = [0u8; 4];
    c.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r), 10); // TPM_BAD_ORDINAL
    ok(vt.ioctl(&["-c"]), "-c after garbage");
}

/// A `cvm vtpm run` on Unix sockets only (the host side as a VM gets it).
fn start_unix(state: &Path, dir: &Path, protocol: &str, extra: &[&str]) -> KillOnDrop {
    let data = format!("unix:{}", dir.join("data.sock").display());
    let ctrl = format!("unix:{}", dir.join("ctrl.sock").display());
    let mut args = vec!["--protocol", protocol, "--server", &data, "--ctrl", &ctrl];
    args.extend_from_slice(extra);
    let (child, server, ctrl) = spawn_vtpm(state, &args);
    assert!(server.starts_with("unix:"), "{server:?}");
    assert!(ctrl.starts_with("unix:"), "{ctrl:?}");
    child
}

/// Sends `msg` on `s` and reads `n` bytes of answer.
fn exchange(s: &mut std::os::unix::net::UnixStream, msg: &[u8], n: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    s.write_all(msg).unwrap();
    let mut r = vec![0u8; n];
    s.read_exact(&mut r).unwrap();
    r
}

/// The response code of a raw TPM response.
fn rc_of(r: &[u8]) -> u32 {
    u32::from_be_bytes(r[6..10].try_into().unwrap())
}

const STARTUP_CLEAR: [u8; 12] = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x44, 0, 0];
const GET_RANDOM_8: [u8; 12] = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8];

#[test]
fn host_channels_are_private_unix_sockets_and_carry_exactly_one_command_per_message() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let (t, state, _work) = workdir();
    let dir = t.path().join("run").join("vm1");

    // A socket directory that others can enter is refused.
    let open_dir = t.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = common::cvm(&[
        "vtpm",
        "run",
        "--state",
        state.to_str().unwrap(),
        "--ctrl",
        &format!("unix:{}/ctrl.sock", open_dir.display()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mode 0700"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    std::fs::create_dir(t.path().join("run")).unwrap();
    let mut child = start_unix(&state, &dir, "swtpm", &["--refuse-locality-4"]);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the socket directory is created private");
    let ctrl = dir.join("ctrl.sock");
    let data = dir.join("data.sock");

    // Another user cannot talk to the control channel even when the directory and the
    // socket are opened up: the peer's uid is checked.
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&ctrl, std::fs::Permissions::from_mode(0o666)).unwrap();
        let probe = |uid: u32| {
            let o = Command::new("python3")
                .args([
                    "-c",
                    "import os,socket,sys\n\
                     u=int(sys.argv[2])\n\
                     if u: os.setgid(u); os.setuid(u)\n\
                     s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n\
                     try: s.sendall(b'\\0\\0\\0\\1'); print(len(s.recv(100)))\n\
                     except OSError as e: print('error', e)",
                ])
                .arg(&ctrl)
                .arg(uid.to_string())
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!(probe(0), "8", "the owner gets CMD_GET_CAPABILITY's answer");
        let other = probe(65534);
        assert!(
            other == "0" || other.starts_with("error"),
            "uid 65534 got {other}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: the other-uid check must run there"
        );
        eprintln!("not root: the other-uid connection check needs root to switch users");
    }

    // The data channel: raw commands, one per message.
    let mut d = UnixStream::connect(&data).unwrap();
    d.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(rc_of(&exchange(&mut d, &STARTUP_CLEAR, 10)), 0);
    // The simulator's prefix (locality 2) is refused, and the channel goes on.
    let mut pre = vec![0, 0, 0, 8, 2, 0, 0, 0, 12];
    pre.extend_from_slice(&GET_RANDOM_8);
    assert_eq!(rc_of(&exchange(&mut d, &pre, 10)), 0x1E, "TPM_RC_BAD_TAG");
    // Two commands in one message are one refused message, not two commands.
    let two = [GET_RANDOM_8, GET_RANDOM_8].concat();
    assert_eq!(rc_of(&exchange(&mut d, &two, 10)), 0x142);
    let r = exchange(&mut d, &GET_RANDOM_8, 20);
    assert_eq!((rc_of(&r), r.len()), (0, 20), "still in step");

    // One data connection at a time: a second waits until the first is gone.
    let mut d2 = UnixStream::connect(&data).unwrap();
    std::io::Write::write_all(&mut d2, &GET_RANDOM_8).unwrap();
    d2.set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 20];
    assert!(
        d2.read(&mut b).is_err(),
        "served beside the first connection"
    );
    drop(d);
    d2.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    d2.read_exact(&mut b).unwrap();
    assert_eq!(rc_of(&b), 0);
    drop(d2);

    // Locality comes from the control channel only; 4 is refused with the option.
    let mut c = UnixStream::connect(&ctrl).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert_eq!(exchange(&mut c, &[0, 0, 0, 5, 3], 4), [0, 0, 0, 0]);
    assert_ne!(exchange(&mut c, &[0, 0, 0, 5, 4], 4), [0, 0, 0, 0]);
    // A control payload over the limit ends the connection; the bytes after it (here
    // a CMD_SHUTDOWN) are never read as a message of their own.
    let mut big = vec![0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff];
    big.extend_from_slice(&[0, 0, 0, 3]);
    let reply = exchange(&mut c, &big, 4);
    assert_ne!(reply, [0, 0, 0, 0]);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.0.try_wait().unwrap().is_none(), "the vTPM shut down");
    let mut c = UnixStream::connect(&ctrl).unwrap();
    assert_eq!(exchange(&mut c, &[0, 0, 0, 1], 8)[..4], [0, 0, 0, 0]);
    drop(child);

    // The simulator's command port takes localities 0-4 only.
    let child = start_unix(&state, &dir, "mssim", &[]);
    let mut m = UnixStream::connect(&data).unwrap();
    let mut send = |loc: u8, cmd: &[u8]| {
        let mut f = vec![0, 0, 0, 8, loc];
        f.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        f.extend_from_slice(cmd);
        let r = exchange(&mut m, &f, 4);
        let n = u32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; n + 4];
        m.read_exact(&mut body).unwrap();
        rc_of(&body[..n])
    };
    assert_eq!(send(5, &GET_RANDOM_8), 0x907, "TPM_RC_LOCALITY");
    assert_ne!(send(0, &GET_RANDOM_8), 0x907);
    drop(child);
}

/// A raw TPM client on a vTPM's command channel: the swtpm data channel (one command
/// per message) or the simulator's command port (`TPM_SEND_COMMAND` framing).
struct RawTpm {
    s: std::net::TcpStream,
    mssim: bool,
}

impl RawTpm {
    fn connect(vt: &Vt, mssim: bool) -> Self {
        let s = std::net::TcpStream::connect((vt.host.as_str(), vt.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        Self { s, mssim }
    }

    /// Sends `cmd` and returns the whole response.
    fn call(&mut self, cmd: &[u8]) -> Vec<u8> {
        use std::io::{Read, Write};
        if self.mssim {
            let mut f = vec![0, 0, 0, 8, 0];
            f.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
            f.extend_from_slice(cmd);
            self.s.write_all(&f).unwrap();
            let mut n = [0u8; 4];
            self.s.read_exact(&mut n).unwrap();
            let mut r = vec![0u8; u32::from_be_bytes(n) as usize + 4];
            self.s.read_exact(&mut r).unwrap();
            r.truncate(r.len() - 4);
            return r;
        }
        self.s.write_all(cmd).unwrap();
        let mut head = [0u8; 10];
        self.s.read_exact(&mut head).unwrap();
        let size = u32::from_be_bytes(head[2..6].try_into().unwrap()) as usize;
        let mut r = head.to_vec();
        r.resize(size, 0);
        self.s.read_exact(&mut r[10..]).unwrap();
        r
    }

    /// A command with `tag`, `code` and `body`, sent; its response.
    fn cmd(&mut self, tag: u16, code: u32, body: &[u8]) -> Vec<u8> {
        let mut c = tag.to_be_bytes().to_vec();
        c.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
        c.extend_from_slice(&code.to_be_bytes());
        c.extend_from_slice(body);
        self.call(&c)
    }

    /// `TPM2_Startup(SU_CLEAR)`'s response code.
    fn startup(&mut self) -> u32 {
        rc_of(&self.call(&STARTUP_CLEAR))
    }

    /// Starts an unsalted, unbound SHA-256 HMAC session (no symmetric algorithm), as
    /// a guest would: `(handle, nonceTPM)`.
    fn hmac_session(&mut self) -> (u32, Vec<u8>) {
        let mut b = Vec::new();
        b.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // tpmKey: TPM_RH_NULL
        b.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // bind: TPM_RH_NULL
        b.extend_from_slice(&tpm2b(&[0x11; 32])); // nonceCaller
        b.extend_from_slice(&[0, 0]); // encryptedSalt
        b.push(0x00); // TPM_SE_HMAC
        b.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: TPM_ALG_NULL
        b.extend_from_slice(&0x000Bu16.to_be_bytes()); // authHash: SHA-256
        let r = self.cmd(0x8001, 0x176, &b);
        assert_eq!(rc_of(&r), 0, "StartAuthSession");
        let handle = u32::from_be_bytes(r[10..14].try_into().unwrap());
        let n = u16::from_be_bytes([r[14], r[15]]) as usize;
        (handle, r[16..16 + n].to_vec())
    }

    /// The report index's Name (`TPM2_NV_ReadPublic`), or the response code.
    fn report_name(&mut self) -> Result<Vec<u8>, u32> {
        let r = self.cmd(0x8001, 0x169, &0x0140_0001u32.to_be_bytes());
        if rc_of(&r) != 0 {
            return Err(rc_of(&r));
        }
        let public = u16::from_be_bytes([r[10], r[11]]) as usize;
        let at = 12 + public;
        let n = u16::from_be_bytes([r[at], r[at + 1]]) as usize;
        Ok(r[at + 2..at + 2 + n].to_vec())
    }

    /// The response code of `TPM2_NV_Read(auth, 0x01400001)` of 8 bytes at offset 0,
    /// authorized by the HMAC session `(handle, nonce_tpm)` with `nonce_caller`, its
    /// HMAC keyed with `auth_value` (the session key is empty: unsalted, unbound).
    fn hmac_report_read(
        &mut self,
        auth: u32,
        auth_value: &[u8],
        (handle, nonce_tpm): (u32, &[u8]),
        nonce_caller: &[u8],
    ) -> u32 {
        use aws_lc_rs::hmac;
        let index_name = self.report_name().unwrap();
        let auth_name = if auth == 0x0140_0001 {
            index_name.clone()
        } else {
            auth.to_be_bytes().to_vec()
        };
        let params = [0u8, 8, 0, 0];
        let cp_hash = digest::digest(
            &digest::SHA256,
            &[
                &0x14Eu32.to_be_bytes()[..],
                &auth_name,
                &index_name,
                &params,
            ]
            .concat(),
        );
        let attrs = 0x01u8; // continueSession
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, auth_value),
            &[cp_hash.as_ref(), nonce_caller, nonce_tpm, &[attrs]].concat(),
        );
        let mut area = handle.to_be_bytes().to_vec();
        area.extend_from_slice(&tpm2b(nonce_caller));
        area.push(attrs);
        area.extend_from_slice(&tpm2b(mac.as_ref()));
        let mut b = auth.to_be_bytes().to_vec();
        b.extend_from_slice(&0x0140_0001u32.to_be_bytes());
        b.extend_from_slice(&(area.len() as u32).to_be_bytes());
        b.extend_from_slice(&area);
        b.extend_from_slice(&params);
        rc_of(&self.cmd(0x8002, 0x14E, &b))
    }
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A vTPM serving a report (`--ca`, `--snp-platform` under `t`).
fn start_reporting(t: &Path, state: &Path, protocol: &str, extra: &[&str]) -> Vt {
    let (ca, snp_dir) = (t.join("ca"), t.join("snp"));
    let mut args = vec![
        "--ca",
        ca.to_str().unwrap(),
        "--snp-platform",
        snp_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start_with(state, protocol, &args)
}

/// Starts a vTPM serving a report and starts its TPM; the tpm2-tools TCTI.
fn started_reporting(t: &Path, state: &Path, work: &Path) -> (Vt, String) {
    let vt = start_reporting(t, state, "swtpm", &[]);
    let tcti = vt.tcti("swtpm");
    ok(tpm(&tcti, work, &["tpm2_startup", "-c"]), "startup");
    (vt, tcti)
}

const OWNER: u32 = 0x4000_0001;
const PLATFORM: u32 = 0x4000_000C;
const REPORT_INDEX: u32 = 0x0140_0001;

/// An HMAC session authorizing TPM_RH_PLATFORM on the report index is keyed with the
/// platform's authValue, a secret only the vTPM process holds: an empty key fails
/// (TPM_RC_BAD_AUTH for session 1), through tpm2-tools and raw.
#[test]
fn report_index_hmac_platform_reads_need_the_platform_secret() {
    let (t, state, work) = workdir();
    let (vt, tcti) = started_reporting(t.path(), &state, &work);
    {
        let mut raw = RawTpm::connect(&vt, false);
        let (h, nonce_tpm) = raw.hmac_session();
        let s = (h, &nonce_tpm[..]);
        assert_eq!(raw.hmac_report_read(PLATFORM, b"", s, &[7; 16]), 0x9A2);
        // The same session reads with the index's own (empty) authValue.
        assert_eq!(raw.hmac_report_read(REPORT_INDEX, b"", s, &[7; 16]), 0);
    }
    refused_with(
        tpm(
            &tcti,
            &work,
            &["tpm2_nvread", "0x01400001", "-C", "p", "-s", "8"],
        ),
        "0x9A2",
    );
}

/// An HMAC session authorizing the owner on the report index is checked only when
/// libtpms confirms the owner's authValue is empty; once the owner has a password the
/// vTPM cannot check it and refuses (TPM_RC_AUTH_UNAVAILABLE), whatever the key, while
/// the index's own authorization and the owner's password session still read.
#[test]
fn report_index_hmac_owner_reads_only_with_an_empty_owner_auth() {
    let (t, state, work) = workdir();
    let (vt, tcti) = started_reporting(t.path(), &state, &work);
    let t = |args: &[&str]| ok(tpm(&tcti, &work, args), args[0]);
    {
        let mut raw = RawTpm::connect(&vt, false);
        let (h, nonce_tpm) = raw.hmac_session();
        assert_eq!(
            raw.hmac_report_read(OWNER, b"", (h, &nonce_tpm), &[7; 32]),
            0
        );
    }
    t(&["tpm2_nvread", "0x01400001", "-C", "o", "-s", "8"]);
    t(&["tpm2_changeauth", "-c", "o", "owner-secret"]);
    {
        let mut raw = RawTpm::connect(&vt, false);
        let (h, nonce_tpm) = raw.hmac_session();
        let s = (h, &nonce_tpm[..]);
        assert_eq!(raw.hmac_report_read(OWNER, b"", s, &[7; 16]), 0x12F);
        assert_eq!(
            raw.hmac_report_read(OWNER, b"owner-secret", s, &[7; 16]),
            0x12F
        );
        assert_eq!(raw.hmac_report_read(REPORT_INDEX, b"", s, &[7; 16]), 0);
    }
    refused_with(
        tpm(
            &tcti,
            &work,
            &["tpm2_nvread", "0x01400001", "-C", "o", "-s", "8"],
        ),
        "0x12F",
    );
    refused_with(
        tpm(
            &tcti,
            &work,
            &[
                "tpm2_nvread",
                "0x01400001",
                "-C",
                "o",
                "-P",
                "owner-secret",
                "-s",
                "8",
            ],
        ),
        "0x12F",
    );
    t(&["tpm2_nvread", "0x01400001", "-C", "0x01400001", "-s", "8"]);
    let r = RawTpm::connect(&vt, false).call(&vtpm::tpm::nv_read(
        OWNER,
        REPORT_INDEX,
        b"owner-secret",
        8,
        0,
    ));
    assert_eq!(rc_of(&r), 0);
}

/// A failed HMAC on the report index is TPM_RC_BAD_AUTH (0x9A2 for session 1), not
/// TPM_RC_AUTH_FAIL (0x98E): the index has TPMA_NV_NO_DA and the owner hierarchy is
/// exempt from dictionary-attack protection, as libtpms answers a wrong password.
#[test]
fn report_index_failed_hmac_is_bad_auth_for_the_no_da_index() {
    let (t, state, work) = workdir();
    let (vt, tcti) = started_reporting(t.path(), &state, &work);
    {
        let mut raw = RawTpm::connect(&vt, false);
        let (h, nonce_tpm) = raw.hmac_session();
        let s = (h, &nonce_tpm[..]);
        assert_eq!(
            raw.hmac_report_read(REPORT_INDEX, b"wrong", s, &[7; 16]),
            0x9A2
        );
        assert_eq!(raw.hmac_report_read(OWNER, b"wrong", s, &[7; 16]), 0x9A2);
    }
    let wrong_password = RawTpm::connect(&vt, false).call(&vtpm::tpm::nv_read(
        REPORT_INDEX,
        REPORT_INDEX,
        b"wrong",
        8,
        0,
    ));
    assert_eq!(
        rc_of(&wrong_password),
        0x9A2,
        "libtpms's answer, for comparison"
    );
    for auth in ["o", "0x01400001"] {
        refused_with(
            tpm(
                &tcti,
                &work,
                &[
                    "tpm2_nvread",
                    "0x01400001",
                    "-C",
                    auth,
                    "-P",
                    "wrong",
                    "-s",
                    "8",
                ],
            ),
            "0x9A2",
        );
    }
}

/// A session on the report index needs a nonceCaller of 16 bytes up to the session
/// hash's digest size (TPM_RC_NONCE for session 1 otherwise); a password session's
/// nonce must be empty (libtpms checks the session as sent).
#[test]
fn report_index_refuses_a_short_nonce_caller() {
    let (t, state, work) = workdir();
    let (vt, _tcti) = started_reporting(t.path(), &state, &work);
    let mut raw = RawTpm::connect(&vt, false);
    let (h, nonce_tpm) = raw.hmac_session();
    let s = (h, &nonce_tpm[..]);
    for bad in [&[][..], &[7; 8], &[7; 15], &[7; 33]] {
        assert_eq!(
            raw.hmac_report_read(REPORT_INDEX, b"", s, bad),
            0x98F,
            "nonceCaller of {} bytes",
            bad.len()
        );
    }
    assert_eq!(raw.hmac_report_read(REPORT_INDEX, b"", s, &[7; 16]), 0);
    assert_eq!(raw.hmac_report_read(REPORT_INDEX, b"", s, &[7; 32]), 0);
    // TPM2_NV_Read with a password session: handles end at 18, the area size at 22,
    // the session's nonce size is at 26..28.
    let pw = vtpm::tpm::nv_read(REPORT_INDEX, REPORT_INDEX, b"", 8, 0);
    let mut with_nonce = pw[..26].to_vec();
    with_nonce.extend_from_slice(&tpm2b(&[1; 16]));
    with_nonce.extend_from_slice(&pw[28..]);
    let area = u32::from_be_bytes(with_nonce[18..22].try_into().unwrap()) + 16;
    with_nonce[18..22].copy_from_slice(&area.to_be_bytes());
    let n = with_nonce.len() as u32;
    with_nonce[2..6].copy_from_slice(&n.to_be_bytes());
    assert_eq!(rc_of(&raw.call(&with_nonce)), 0x98F);
    assert_eq!(rc_of(&raw.call(&pw)), 0);
}

/// Before TPM2_Startup the report index is not served (TPM_RC_INITIALIZE, as every
/// command gets), after a start of the vTPM and after a power cycle on the simulator's
/// platform port.
#[test]
fn report_index_answers_tpm_rc_initialize_before_startup() {
    let (t, state, _work) = workdir();
    let vt = start_reporting(t.path(), &state, "swtpm", &[]);
    let mut raw = RawTpm::connect(&vt, false);
    assert_eq!(raw.report_name(), Err(0x100));
    let pw_read = vtpm::tpm::nv_read(0x4000_0001, 0x0140_0001, b"", 8, 0);
    assert_eq!(rc_of(&raw.call(&pw_read)), 0x100);
    assert_eq!(raw.startup(), 0);
    assert!(raw.report_name().is_ok());
    assert_eq!(rc_of(&raw.call(&pw_read)), 0);
    drop((raw, vt));

    let vt = start_reporting(t.path(), &state, "mssim", &[]);
    let mut raw = RawTpm::connect(&vt, true);
    assert_eq!(raw.startup(), 0);
    assert!(raw.report_name().is_ok());
    // Power off and on (TPM_SIGNAL_POWER_OFF, TPM_SIGNAL_POWER_ON), each acked with 0.
    let mut platform = std::net::TcpStream::connect((vt.host.as_str(), vt.ctrl_port)).unwrap();
    for signal in [2u32, 1] {
        use std::io::{Read, Write};
        platform.write_all(&signal.to_be_bytes()).unwrap();
        let mut ack = [0u8; 4];
        platform.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0; 4]);
    }
    assert_eq!(raw.report_name(), Err(0x100));
    assert_eq!(rc_of(&raw.call(&pw_read)), 0x100);
    assert_eq!(raw.startup(), 0);
    assert!(raw.report_name().is_ok());
}

/// A session the TPM lost (CMD_INIT and Startup, a power cycle on the simulator's
/// platform port) is never accepted on the report index with the state tracked
/// before: the vTPM forgets its sessions with the TPM's.
#[test]
fn report_index_forgets_sessions_when_the_tpm_restarts() {
    let (t, state, _work) = workdir();
    let vt = start_reporting(t.path(), &state, "swtpm", &[]);
    let index = 0x0140_0001u32;
    let mut raw = RawTpm::connect(&vt, false);
    assert_eq!(raw.startup(), 0);
    let (h, nonce_tpm) = raw.hmac_session();
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0
    );
    // CMD_INIT and TPM2_Startup: the session is gone from libtpms, and from the vTPM.
    ok(vt.ioctl(&["-i"]), "swtpm_ioctl -i");
    assert_eq!(raw.startup(), 0);
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0x12F
    );
    // CMD_INIT alone, resuming volatile state stored before the session was started
    // (no TPM2_Startup follows: the TPM runs as it was then): libtpms has no such
    // session (it answers TPM_RC_REFERENCE_S0), and the vTPM forgot it too.
    ok(vt.ioctl(&["-v"]), "swtpm_ioctl -v");
    let (h, nonce_tpm) = raw.hmac_session();
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0
    );
    ok(vt.ioctl(&["-i"]), "swtpm_ioctl -i");
    assert_eq!(raw.startup(), 0x100, "resumed, started already");
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0x12F
    );
    drop((raw, vt));

    let vt = start_reporting(t.path(), &state, "mssim", &[]);
    let mut raw = RawTpm::connect(&vt, true);
    assert_eq!(raw.startup(), 0);
    let (h, nonce_tpm) = raw.hmac_session();
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0
    );
    let mut platform = std::net::TcpStream::connect((vt.host.as_str(), vt.ctrl_port)).unwrap();
    for signal in [2u32, 1] {
        use std::io::{Read, Write};
        platform.write_all(&signal.to_be_bytes()).unwrap();
        let mut ack = [0u8; 4];
        platform.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0; 4]);
    }
    assert_eq!(raw.startup(), 0);
    assert_eq!(
        raw.hmac_report_read(index, b"", (h, &nonce_tpm), &[7; 16]),
        0x12F
    );
}
