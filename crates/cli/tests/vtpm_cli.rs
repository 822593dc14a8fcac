//! `cvm vtpm run` against real TPM software nobody here wrote: tpm2-tools through
//! tpm2-tss's `swtpm` and `mssim` TCTIs, and swtpm's own `swtpm_ioctl`.
//! (`scripts/setup` installs tpm2-tools, the TCTIs and swtpm-tools.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use aws_lc_rs::digest;

/// A running `cvm vtpm run`, killed (SIGKILL) when dropped.
struct Vt {
    child: Child,
    host: String,
    port: u16,
    ctrl_port: u16,
}

impl Drop for Vt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(line: &str) -> u16 {
    line.trim().rsplit(':').next().unwrap().parse().unwrap()
}

fn start(state: &Path, protocol: &str) -> Vt {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["vtpm", "run", "--state"])
        .arg(state)
        .args(["--server", "tcp:127.0.0.1:0", "--protocol", protocol])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut server, mut ctrl) = (String::new(), String::new());
    out.read_line(&mut server).unwrap();
    out.read_line(&mut ctrl).unwrap();
    assert!(server.starts_with("server tcp:127.0.0.1:"), "{server:?}");
    assert!(ctrl.starts_with("ctrl tcp:127.0.0.1:"), "{ctrl:?}");
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
    t(&[
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
        "c0ffee0123",
    ]);
    let wrong = tpm(
        tcti,
        dir,
        &[
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
            "c0ffee0124",
        ],
    );
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
    // An orderly end (CMD_SHUTDOWN): the process exits by itself.
    let mut vt = vt;
    ok(vt.ioctl(&["-s"]), "swtpm_ioctl -s");
    let status = vt.child.wait().unwrap();
    assert!(status.success());
    let vt = start(&state, "swtpm");
    after_restart(&vt.tcti("swtpm"), &work, &nv);
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
    let vt = start(&state, "swtpm");
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
    // A garbage blob is refused and changes nothing: the TPM restarts as it was.
    let junk = work.join("junk.blob");
    std::fs::write(&junk, [7u8; 3000]).unwrap();
    assert!(
        !vt.ioctl(&["--load", "permanent", junk.to_str().unwrap()])
            .status
            .success(),
        "a garbage state blob was accepted"
    );
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
    let vt = start(&state, "swtpm");
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
    let o = common::cvm(&[
        "vtpm",
        "run",
        "--state",
        state.to_str().unwrap(),
        "--server",
        "tcp:0.0.0.0:0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback"));
    let _vt = start(&state, "swtpm");
    let o = common::cvm(&[
        "vtpm",
        "run",
        "--state",
        state.to_str().unwrap(),
        "--server",
        "tcp:127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
