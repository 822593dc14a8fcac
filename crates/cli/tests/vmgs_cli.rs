//! `cvm vmgs` as a process: round trips encrypted and not, `info` without a key,
//! damage and wrong keys refused with exit 1 naming what failed, usage errors exit 2,
//! rekey, and a writer killed (SIGKILL) at random instants never leaving anything but
//! the old or the new content.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{cvm, json_of};

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts exit `code` and that stderr holds every one of `needles`.
fn fails(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn p(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }
    /// A key file of 32 bytes of `fill`.
    fn key(&self, name: &str, fill: u8) -> String {
        let p = self.p(name);
        std::fs::write(&p, [fill; 32]).unwrap();
        p
    }
    /// `vm.vmgs` here, created encrypted under `key`.
    fn create_encrypted(&self, key: &str) -> String {
        let vmgs = self.p("vm.vmgs");
        ok(&cvm(&["vmgs", "create", &vmgs, "--key-file", key]));
        vmgs
    }
    fn data(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.p(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `cvm vmgs read FILE [--key-file K] --file-id ID --out -`.
fn read(file: &str, key: Option<&str>, id: &str) -> Output {
    let mut args = vec!["vmgs", "read", file, "--file-id", id, "--out", "-"];
    if let Some(k) = key {
        args.extend(["--key-file", k]);
    }
    cvm(&args)
}

fn write(file: &str, key: Option<&str>, id: &str, input: &str) -> Output {
    let mut args = vec!["vmgs", "write", file, "--file-id", id, "--in", input];
    if let Some(k) = key {
        args.extend(["--key-file", k]);
    }
    cvm(&args)
}

fn info(file: &str) -> serde_json::Value {
    json_of(ok(&cvm(&["vmgs", "info", file, "--json"])))
}

/// Flips every bit of the byte at `offset`.
fn flip(file: &str, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[!b[0]], offset).unwrap();
}

#[test]
fn round_trips_encrypted_and_not_by_name_and_number() {
    let d = Dir::new();
    let key = d.key("key", 7);
    for encrypted in [true, false] {
        let vmgs = d.p(&format!("vm-{encrypted}.vmgs"));
        let k = encrypted.then_some(key.as_str());
        let mut args = vec!["vmgs", "create", &vmgs];
        if let Some(k) = k {
            args.extend(["--key-file", k]);
        }
        let out = ok(&cvm(&args)).stdout.clone();
        assert!(String::from_utf8_lossy(&out).contains("created"));
        assert_eq!(
            std::fs::metadata(&vmgs).unwrap().len(),
            4 << 20,
            "default size 4 MiB"
        );
        assert_eq!(
            std::fs::metadata(&vmgs).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Never over an existing file.
        fails(&cvm(&args), 2, &[&vmgs]);

        let nvram = pattern(70_000, 1);
        let attest = pattern(100, 2);
        let a = d.data("nvram.bin", &nvram);
        let b = d.data("attest.bin", &attest);
        ok(&write(&vmgs, k, "TPM_NVRAM", &a));
        ok(&write(&vmgs, k, "32", &b));
        // By number and by name (any case) for each.
        for id in ["3", "tpm_nvram", "TPM_NVRAM"] {
            assert_eq!(ok(&read(&vmgs, k, id)).stdout, nvram, "{id}");
        }
        for id in ["32", "ATTESTATION_CONFIG"] {
            assert_eq!(ok(&read(&vmgs, k, id)).stdout, attest, "{id}");
        }
        // Replacing a file keeps the other.
        let nvram2 = pattern(5, 9);
        ok(&write(&vmgs, k, "3", &d.data("nvram2.bin", &nvram2)));
        assert_eq!(ok(&read(&vmgs, k, "TPM_NVRAM")).stdout, nvram2);
        assert_eq!(ok(&read(&vmgs, k, "32")).stdout, attest);
        // --out FILE: 0600, never overwritten.
        let out = d.p(&format!("out-{encrypted}.bin"));
        ok(&cvm(&[
            &["vmgs", "read", &vmgs, "--file-id", "32", "--out", &out][..],
            &k.map(|k| vec!["--key-file", k]).unwrap_or_default()[..],
        ]
        .concat()));
        assert_eq!(std::fs::read(&out).unwrap(), attest);
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fails(
            &cvm(&[
                &["vmgs", "read", &vmgs, "--file-id", "32", "--out", &out][..],
                &k.map(|k| vec!["--key-file", k]).unwrap_or_default()[..],
            ]
            .concat()),
            2,
            &[&out],
        );

        // info: no key, both slots, the active one, the table.
        let v = info(&vmgs);
        let active = v["active"].as_u64().unwrap() as usize;
        let slots = v["slots"].as_array().unwrap();
        assert_eq!(slots.len(), 2);
        for s in slots {
            assert_eq!(s["state"], "valid", "{v}");
        }
        let (a_seq, o_seq) = (
            slots[active]["sequence"].as_u64().unwrap(),
            slots[1 - active]["sequence"].as_u64().unwrap(),
        );
        assert_eq!(a_seq, o_seq + 1, "{v}");
        assert_eq!(
            slots[active]["encryption"],
            if encrypted { "AES-256-GCM" } else { "none" }
        );
        assert_eq!(
            slots[active]["key_slots_in_use"],
            if encrypted {
                serde_json::json!([0])
            } else {
                serde_json::json!([])
            }
        );
        let files = v["file_table"]["files"].as_array().unwrap();
        let nv = files.iter().find(|f| f["id"] == 3).unwrap();
        assert_eq!(nv["name"], "TPM_NVRAM");
        assert_eq!(nv["size"], 5);
        assert_eq!(nv["encrypted"], encrypted);
        assert_eq!(
            files.iter().any(|f| f["name"] == "EXTENDED_FILE_TABLE"),
            encrypted
        );
        let text = ok(&cvm(&["vmgs", "info", &vmgs])).stdout.clone();
        let text = String::from_utf8_lossy(&text);
        for n in ["header slot 0: valid", "header slot 1: valid", "TPM_NVRAM"] {
            assert!(text.contains(n), "{text}");
        }
        assert!(text.contains(&format!("active: header slot {active}")));

        // list --json after a full open.
        let mut args = vec!["vmgs", "list", &vmgs, "--json"];
        if let Some(k) = k {
            args.extend(["--key-file", k]);
        }
        let l = json_of(ok(&cvm(&args)));
        assert_eq!(l["encrypted"], encrypted);
        assert_eq!(l["slot"].as_u64().unwrap() as usize, active);
        let ids: Vec<u64> = l["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [3, 32]);

        // copy-out: every file, DIR 0700, files 0600, nothing overwritten.
        let dir = d.p(&format!("copy-{encrypted}"));
        let mut args = vec!["vmgs", "copy-out", &vmgs, "--dir", &dir];
        if let Some(k) = k {
            args.extend(["--key-file", k]);
        }
        ok(&cvm(&args));
        let dm = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dm, 0o700);
        let p3 = Path::new(&dir).join("3-TPM_NVRAM.bin");
        assert_eq!(std::fs::read(&p3).unwrap(), nvram2);
        assert_eq!(
            std::fs::read(Path::new(&dir).join("32-ATTESTATION_CONFIG.bin")).unwrap(),
            attest
        );
        assert_eq!(
            std::fs::metadata(&p3).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fails(&cvm(&args), 2, &["3-TPM_NVRAM.bin", "exists"]);
    }
}

#[test]
fn plaintext_files_of_an_encrypted_vmgs_read_without_the_key() {
    let d = Dir::new();
    let key = d.key("key", 1);
    let vmgs = d.create_encrypted(&key);
    let kp = d.data("kp.bin", b"wrapped key protector");
    ok(&cvm(&[
        "vmgs",
        "write",
        &vmgs,
        "--key-file",
        &key,
        "--file-id",
        "KEY_PROTECTOR",
        "--in",
        &kp,
        "--plaintext",
    ]));
    ok(&write(&vmgs, Some(&key), "TPM_NVRAM", &kp));
    assert_eq!(
        ok(&read(&vmgs, None, "KEY_PROTECTOR")).stdout,
        b"wrapped key protector"
    );
    // The encrypted one needs the key (a usage error, not damage).
    fails(&read(&vmgs, None, "TPM_NVRAM"), 2, &["datastore key"]);
    let files = info(&vmgs)["file_table"]["files"].clone();
    let enc = |id: u64| {
        files
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .unwrap()["encrypted"]
            .clone()
    };
    assert_eq!(enc(6), false);
    assert_eq!(enc(3), true);
}

#[test]
fn wrong_keys_and_damage_exit_1_naming_what_failed() {
    let d = Dir::new();
    let key = d.key("key", 3);
    let other = d.key("other", 4);
    let vmgs = d.create_encrypted(&key);
    let secret = pattern(10_000, 5);
    ok(&write(
        &vmgs,
        Some(&key),
        "TPM_NVRAM",
        &d.data("s.bin", &secret),
    ));

    // A wrong key.
    fails(
        &read(&vmgs, Some(&other), "TPM_NVRAM"),
        1,
        &["datastore key"],
    );

    // One byte of an encrypted file's data block.
    let v = info(&vmgs);
    let nv = v["file_table"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == 3)
        .unwrap()
        .clone();
    let data_at = nv["offset"].as_u64().unwrap() * 4096 + 1234;
    flip(&vmgs, data_at);
    let out = read(&vmgs, Some(&key), "TPM_NVRAM");
    fails(&out, 1, &["file 3 (TPM_NVRAM)", "authentication"]);
    // Nothing of the secret or the key leaks into the message.
    assert!(out.stdout.is_empty());
    // Every open checks every file: listing fails too, and --recover cannot go back to
    // a state before the file existed... it can: the older state had no such data
    // block in use, so recover opens it and says why.
    let mut list = vec!["vmgs", "list", &vmgs, "--key-file", &key];
    fails(&cvm(&list), 1, &["TPM_NVRAM"]);
    list.push("--recover");
    let out = ok(&cvm(&list)).clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("TPM_NVRAM") && err.contains("skipped"),
        "{err}"
    );
    flip(&vmgs, data_at);
    assert_eq!(ok(&read(&vmgs, Some(&key), "3")).stdout, secret);

    // One byte of the active header.
    let v = info(&vmgs);
    let active = v["active"].as_u64().unwrap() as usize;
    let header_at = v["slots"][active]["offset"].as_u64().unwrap() + 20;
    flip(&vmgs, header_at);
    fails(
        &read(&vmgs, Some(&key), "TPM_NVRAM"),
        1,
        &[&format!("header slot {active}")],
    );
    // info still reports, names the damaged slot and exits 1.
    let out = cvm(&["vmgs", "info", &vmgs, "--json"]);
    fails(&out, 1, &[&format!("header slot {active}")]);
    let v = json_of(&out);
    assert_eq!(v["slots"][active]["state"], "damaged");
    assert!(
        v["slots"][active]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum")
    );
    assert_eq!(v["active"].as_u64().unwrap() as usize, 1 - active);
    // --recover goes back to the other slot and says so: the state before the write,
    // which had no TPM_NVRAM.
    let out = cvm(&[
        "vmgs",
        "read",
        &vmgs,
        "--key-file",
        &key,
        "--file-id",
        "3",
        "--out",
        "-",
        "--recover",
    ]);
    fails(
        &out,
        2,
        &[
            "warning",
            &format!("header slot {active} is damaged"),
            "does not exist",
        ],
    );
    flip(&vmgs, header_at);
    assert_eq!(ok(&read(&vmgs, Some(&key), "3")).stdout, secret);

    // A reserved byte of the active file table (entry 3's).
    let v = info(&vmgs);
    let block = v["slots"][active]["file_table_block"].as_u64().unwrap();
    let table_at = block * 4096 + 3 * 64 + 50;
    flip(&vmgs, table_at);
    let want = format!("file table at block {block}");
    fails(&read(&vmgs, Some(&key), "3"), 1, &[&want]);
    let out = cvm(&["vmgs", "info", &vmgs, "--json"]);
    fails(&out, 1, &[&want, "reserved"]);
    assert!(
        json_of(&out)["file_table_error"]
            .as_str()
            .unwrap()
            .contains(&want)
    );
    flip(&vmgs, table_at);
    assert_eq!(ok(&read(&vmgs, Some(&key), "3")).stdout, secret);

    // An unencrypted VMGS: a flipped data byte fails its hash.
    let plain = d.p("plain.vmgs");
    ok(&cvm(&["vmgs", "create", &plain]));
    ok(&write(
        &plain,
        None,
        "BIOS_NVRAM",
        &d.data("b.bin", b"uefi vars"),
    ));
    let v = info(&plain);
    let off = v["file_table"]["files"][0]["offset"].as_u64().unwrap();
    flip(&plain, off * 4096);
    fails(&read(&plain, None, "1"), 1, &["file 1 (BIOS_NVRAM)"]);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let d = Dir::new();
    let key = d.key("key", 3);
    let vmgs = d.p("vm.vmgs");
    let short_key = d.data("short", &[1; 31]);
    // A key file of the wrong length, for create and for open.
    fails(
        &cvm(&["vmgs", "create", &vmgs, "--key-file", &short_key]),
        2,
        &["31 bytes"],
    );
    assert!(!Path::new(&vmgs).exists());
    ok(&cvm(&[
        "vmgs",
        "create",
        &vmgs,
        "--key-file",
        &key,
        "--size",
        "65536",
    ]));
    fails(&read(&vmgs, Some(&short_key), "3"), 2, &["31 bytes"]);
    // A missing key file, a missing VMGS.
    fails(&read(&vmgs, Some(&d.p("nokey")), "3"), 2, &["nokey"]);
    fails(
        &read(&d.p("missing.vmgs"), Some(&key), "3"),
        2,
        &["missing.vmgs"],
    );
    fails(
        &cvm(&["vmgs", "info", &d.p("missing.vmgs")]),
        2,
        &["missing.vmgs"],
    );
    // Unknown file ids, a reserved one, a file not in the VMGS.
    fails(&read(&vmgs, Some(&key), "NOPE"), 2, &["NOPE"]);
    fails(&read(&vmgs, Some(&key), "64"), 2, &["64"]);
    let data = d.data("d.bin", b"x");
    fails(
        &write(&vmgs, Some(&key), "FILE_TABLE", &data),
        2,
        &["table"],
    );
    fails(
        &read(&vmgs, Some(&key), "TPM_NVRAM"),
        2,
        &["does not exist"],
    );
    // A missing input file.
    fails(
        &write(&vmgs, Some(&key), "3", &d.p("nodata")),
        2,
        &["nodata"],
    );
    // A key for an unencrypted VMGS.
    let plain = d.p("plain.vmgs");
    ok(&cvm(&["vmgs", "create", &plain]));
    fails(&read(&plain, Some(&key), "3"), 2, &["not encrypted"]);
    // A size that is not a VMGS size.
    fails(
        &cvm(&["vmgs", "create", &d.p("odd.vmgs"), "--size", "5000"]),
        2,
        &["5000"],
    );

    // A write that does not fit: exit 2, the old content kept.
    let old = pattern(8192, 4);
    ok(&write(
        &vmgs,
        Some(&key),
        "TPM_NVRAM",
        &d.data("old.bin", &old),
    ));
    let big = d.data("big.bin", &pattern(60_000, 5));
    fails(&write(&vmgs, Some(&key), "TPM_NVRAM", &big), 2, &["full"]);
    assert_eq!(ok(&read(&vmgs, Some(&key), "TPM_NVRAM")).stdout, old);
    ok(&cvm(&["vmgs", "list", &vmgs, "--key-file", &key]));
}

#[test]
fn rekey_retires_the_old_key() {
    let d = Dir::new();
    let old = d.key("old", 1);
    let new = d.key("new", 2);
    let vmgs = d.create_encrypted(&old);
    let secret = pattern(3000, 8);
    ok(&write(
        &vmgs,
        Some(&old),
        "GUEST_SECRET_KEY",
        &d.data("s", &secret),
    ));
    let rekey =
        |k: &str, n: &str| cvm(&["vmgs", "rekey", &vmgs, "--key-file", k, "--new-key-file", n]);
    fails(&rekey(&old, &old), 2, &["already in use"]);
    ok(&rekey(&old, &new));
    fails(&read(&vmgs, Some(&old), "13"), 1, &["datastore key"]);
    assert_eq!(ok(&read(&vmgs, Some(&new), "13")).stdout, secret);
    // The new key's slot is the only one in use.
    let v = info(&vmgs);
    let active = v["active"].as_u64().unwrap() as usize;
    assert_eq!(
        v["slots"][active]["key_slots_in_use"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Rekeying with the retired key fails as a wrong key.
    fails(&rekey(&old, &d.key("third", 3)), 1, &["datastore key"]);
}

/// xorshift64*: enough for random kill delays, reproducible from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// 64 KiB whose 4-byte words are `iteration << 16 | word index`.
fn content(iteration: u32) -> Vec<u8> {
    (0..16384u32)
        .flat_map(|j| ((iteration << 16) | j).to_le_bytes())
        .collect()
}

fn describe(data: &[u8]) -> String {
    match data.get(..4) {
        Some(w) if data.len() == 65536 => format!(
            "content of iteration {}",
            u32::from_le_bytes([w[0], w[1], w[2], w[3]]) >> 16
        ),
        _ => format!("{} bytes", data.len()),
    }
}

#[test]
fn a_writer_killed_at_any_instant_leaves_the_old_or_the_new_content() {
    let trials: u32 = std::env::var("VMGS_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("VMGS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("VMGS_KILL_SEED={seed} VMGS_KILL_TRIALS={trials}");
    let mut rng = Rng(seed);

    let d = Dir::new();
    let key = d.key("key", 9);
    let vmgs = d.create_encrypted(&key);
    let input: PathBuf = d.0.path().join("in.bin");
    std::fs::write(&input, content(0)).unwrap();
    let writer = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cvm"));
        c.args(["vmgs", "write", &vmgs, "--key-file", &key])
            .args(["--file-id", "TPM_NVRAM", "--in"])
            .arg(&input)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // How long a whole write takes here (a debug `cvm` spends tens of milliseconds
    // seeding aws-lc's entropy before it touches the file), so that the kills spread
    // over the writer's whole life and crowd around its commit at the end.
    let mut runs: Vec<Duration> = (0..3)
        .map(|_| {
            let t = Instant::now();
            assert!(writer().status().unwrap().success());
            t.elapsed()
        })
        .collect();
    runs.sort();
    let life = runs[1];
    println!("a write takes {life:?}; kills at 0-120 % of it, half of them at 85-105 %");
    let mut known = content(0);
    let (mut kept_old, mut took_new, mut killed_running) = (0u32, 0u32, 0u32);
    let start = Instant::now();
    for i in 1..=trials {
        let new = content(i);
        std::fs::write(&input, &new).unwrap();
        let life_us = life.as_micros() as u64;
        let delay = Duration::from_micros(if rng.next().is_multiple_of(2) {
            rng.next() % (life_us * 6 / 5)
        } else {
            life_us * 85 / 100 + rng.next() % (life_us / 5)
        });
        let mut child = writer().spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        // SIGKILL (a no-op if it has exited; it is not reaped until `wait`).
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let out = read(&vmgs, Some(&key), "TPM_NVRAM");
        assert!(
            out.status.success(),
            "seed {seed}, trial {i} (delay {delay:?}, writer {status}): the open failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if status.success() {
            // An acknowledged write is there.
            assert!(
                out.stdout == new,
                "seed {seed}, trial {i}: the writer exited 0 but the read gave {}",
                describe(&out.stdout)
            );
        }
        if out.stdout == known {
            kept_old += 1;
        } else if out.stdout == new {
            took_new += 1;
            known = new;
        } else {
            panic!(
                "seed {seed}, trial {i} (delay {delay:?}): read {}, expected iteration {i} \
                 or {}",
                describe(&out.stdout),
                describe(&known)
            );
        }
    }
    println!(
        "{trials} trials in {:?}: {kept_old} kept the old content, {took_new} the new; \
         {killed_running} writers killed while running",
        start.elapsed()
    );
    assert_eq!(kept_old + took_new, trials);
    // The kills landed on both sides of the commit (else this test tested little);
    // with 20 trials or more both outcomes are all but certain.
    if trials >= 20 {
        assert!(killed_running > 0, "no writer was killed while running");
        assert!(took_new > 0, "no write got through before its kill");
        assert!(kept_old > 0, "no write was stopped by its kill");
    }
    // The file is still fully valid (every check, no recovery).
    ok(&cvm(&["vmgs", "list", &vmgs, "--key-file", &key]));
}
