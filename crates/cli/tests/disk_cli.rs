//! `cvm disk` against the real client: Debian's cryptsetup (2.6) reads, opens and
//! decrypts our images; our decryption reads cryptsetup's; Python `cryptography`
//! (OpenSSL's AES-XTS) decrypts our sectors with the volume key cryptsetup dumps.
//! There is no device-mapper here, so cryptsetup works on the files themselves.
//! (`scripts/setup` installs cryptsetup-bin.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{cvm, json_of};
use tempfile::TempDir;

const PASS: &[u8] = b"correct horse battery staple";

fn cryptsetup(args: &[&str]) -> Output {
    Command::new("cryptsetup")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cryptsetup: {e} (scripts/setup installs cryptsetup-bin)"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: TempDir::new().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }

    /// A file of `len` pseudo-random bytes (a different stream per seed).
    fn data(&self, name: &str, len: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(seed);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        std::fs::write(self.path(name), &v).unwrap();
        v
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        std::fs::write(self.path(name), bytes).unwrap();
        self.s(name)
    }
}

/// Fast KDF settings for tests (the defaults cost seconds by design).
const FAST_ARGON2: &[&str] = &[
    "--kdf",
    "argon2id",
    "--argon2-memory",
    "8192",
    "--argon2-time",
    "4",
];
const FAST_PBKDF2: &[&str] = &["--kdf", "pbkdf2", "--pbkdf2-iterations", "1000"];

/// `cvm disk VERB --in IN --out OUT --passphrase-file PASS EXTRA...`.
fn disk_io(verb: &str, input: &str, out: &str, pass: &str, extra: &[&str]) -> Output {
    let head = [
        "disk",
        verb,
        "--in",
        input,
        "--out",
        out,
        "--passphrase-file",
        pass,
    ];
    cvm(&[&head[..], extra].concat())
}

/// `cvm disk decrypt --in IN --out OUT --passphrase-file PASS`.
fn decrypt(input: &str, out: &str, pass: &str) -> Output {
    disk_io("decrypt", input, out, pass, &["--progress", "none"])
}

/// `cvm disk decrypt --in IN --out OUT --vtpm ENDPOINT`.
fn decrypt_vtpm(input: &str, out: &str, endpoint: &str) -> Output {
    cvm(&[
        "disk",
        "decrypt",
        "--in",
        input,
        "--out",
        out,
        "--vtpm",
        endpoint,
        "--progress",
        "none",
    ])
}

/// `cvm disk enroll-tpm2 IMAGE --passphrase-file PASS --vtpm ENDPOINT --tpm2-pcrs PCRS`.
fn enroll_tpm2(image: &str, pass: &str, endpoint: &str, pcrs: &str) -> Output {
    cvm(&[
        "disk",
        "enroll-tpm2",
        image,
        "--passphrase-file",
        pass,
        "--vtpm",
        endpoint,
        "--tpm2-pcrs",
        pcrs,
    ])
}

/// `cvm disk encrypt` of scratch files, with the passphrase [`PASS`].
fn encrypt(s: &Scratch, input: &str, out: &str, extra: &[&str]) -> Output {
    let pass = s.write("pass", PASS);
    disk_io(
        "encrypt",
        &s.s(input),
        &s.s(out),
        &pass,
        &[&["--progress", "none"][..], extra].concat(),
    )
}

/// Decrypts every data sector of `image` with Python `cryptography`, given the volume
/// key cryptsetup dumped, and returns the plaintext.
fn python_decrypt(image: &Path, key: &Path, offset: u64, sector: u64, len: u64) -> Vec<u8> {
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, key, off, sector, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
vk = open(key, 'rb').read()
f = open(img, 'rb'); f.seek(off); data = f.read(n)
res = bytearray()
for k in range(n // sector):
    iv = (k * sector // 512).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(vk), modes.XTS(iv)).decryptor()
    res += d.update(data[k*sector:(k+1)*sector]) + d.finalize()
open(out, 'wb').write(res)
"#;
    let out = key.with_extension("plain");
    let (image, key) = (image.to_str().unwrap(), key.to_str().unwrap());
    let (offset, sector, len) = (offset.to_string(), sector.to_string(), len.to_string());
    python(
        script,
        &[image, key, &offset, &sector, &len, out.to_str().unwrap()],
    );
    std::fs::read(out).unwrap()
}

/// Runs a Python script (with `cryptography`, which scripts/setup installs).
fn python(script: &str, args: &[&str]) {
    let st = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .status()
        .expect("python3 with cryptography (scripts/setup installs it)");
    assert!(st.success(), "the Python oracle failed");
}

#[test]
fn our_images_open_in_cryptsetup_and_decrypt_with_independent_code() {
    for (sector, kdf, kdf_name) in [
        ("4096", FAST_ARGON2, "argon2id"),
        ("512", FAST_PBKDF2, "pbkdf2"),
    ] {
        let s = Scratch::new();
        let raw = s.data("raw", 3 << 20, 1);
        let extra: Vec<&str> = [&["--sector-size", sector, "--label", "root"][..], kdf].concat();
        ok(&encrypt(&s, "raw", "img", &extra), "cvm disk encrypt");
        let img = s.s("img");
        let pass = s.s("pass");

        // cryptsetup reads the header as we mean it.
        let dump = ok(&cryptsetup(&["luksDump", &img]), "luksDump");
        for want in [
            "Version:       \t2",
            "Label:         \troot",
            "cipher: aes-xts-plain64",
            &format!("sector: {sector} [bytes]"),
            "offset: 16777216 [bytes]",
            &format!("PBKDF:      {kdf_name}"),
            "Key:        512 bits",
            "AF stripes: 4000",
        ] {
            assert!(dump.contains(want), "luksDump lacks {want:?}:\n{dump}");
        }
        let json: serde_json::Value = serde_json::from_str(&ok(
            &cryptsetup(&["luksDump", "--dump-json-metadata", &img]),
            "dump json",
        ))
        .unwrap();
        assert_eq!(
            json["segments"]["0"]["sector_size"],
            sector.parse::<u64>().unwrap()
        );
        assert_eq!(json["digests"]["0"]["keyslots"], serde_json::json!(["0"]));
        assert!(
            json["config"].get("requirements").is_none(),
            "a finished image keeps no requirement"
        );
        assert_eq!(json["tokens"], serde_json::json!({}));

        // The right passphrase opens keyslot 0; a wrong one does not.
        ok(
            &cryptsetup(&["open", "--test-passphrase", "--key-file", &pass, &img]),
            "test-passphrase",
        );
        let wrong = s.write("wrong", b"correct horse battery stapler");
        assert!(
            !cryptsetup(&["open", "--test-passphrase", "--key-file", &wrong, &img])
                .status
                .success()
        );

        // cryptsetup's volume key decrypts every sector with OpenSSL's XTS.
        let vk = s.s("vk");
        ok(
            &cryptsetup(&[
                "luksDump",
                "--dump-volume-key",
                "--volume-key-file",
                &vk,
                "--key-file",
                &pass,
                "--batch-mode",
                &img,
            ]),
            "dump volume key",
        );
        let plain = python_decrypt(
            &s.path("img"),
            &s.path("vk"),
            16 << 20,
            sector.parse().unwrap(),
            raw.len() as u64,
        );
        assert!(
            plain == raw,
            "Python's decryption differs from the input ({sector}, {kdf_name})"
        );

        // cryptsetup's own offline decryption returns the input.
        let hdr = s.s("hdr.export");
        ok(
            &cryptsetup(&[
                "reencrypt",
                "--decrypt",
                "--force-offline-reencrypt",
                "--header",
                &hdr,
                "--key-file",
                &pass,
                "--batch-mode",
                &img,
            ]),
            "reencrypt --decrypt",
        );
        let back = std::fs::read(s.path("img")).unwrap();
        assert!(
            back[..raw.len()] == raw[..],
            "cryptsetup's decryption differs from the input"
        );
    }
}

#[test]
fn a_detached_header_from_cryptsetup_decrypts_with_cvm() {
    let s = Scratch::new();
    let raw = s.data("raw", 2 << 20, 11);
    let pass = s.write("pass", PASS);
    let (img, hdr) = (s.s("raw"), s.s("hdr"));
    ok(
        &cryptsetup(&[
            "reencrypt",
            "--encrypt",
            "--force-offline-reencrypt",
            "--header",
            &hdr,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            &pass,
            "--batch-mode",
            &img,
        ]),
        "reencrypt --encrypt --header",
    );
    assert!(
        std::fs::read(&img).unwrap() != raw,
        "the data was not encrypted in place"
    );
    let out = s.s("out");
    let r = disk_io(
        "decrypt",
        &img,
        &out,
        &pass,
        &["--header", &hdr, "--progress", "none"],
    );
    ok(&r, "cvm disk decrypt --header");
    assert!(std::fs::read(&out).unwrap() == raw);
}

#[test]
fn cryptsetups_images_decrypt_with_cvm() {
    for (sector, kdf) in [
        (
            "4096",
            [
                "--pbkdf",
                "argon2id",
                "--pbkdf-memory",
                "8192",
                "--pbkdf-force-iterations",
                "4",
            ],
        ),
        (
            "512",
            [
                "--pbkdf",
                "argon2id",
                "--pbkdf-memory",
                "8192",
                "--pbkdf-force-iterations",
                "4",
            ],
        ),
        (
            "4096",
            [
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--hash",
                "sha256",
            ],
        ),
        (
            "512",
            [
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--hash",
                "sha512",
            ],
        ),
    ] {
        let s = Scratch::new();
        let raw = s.data("raw", 2 << 20, 2);
        // In-place offline encryption of a device with 32 MiB to spare at its end.
        let mut dev = raw.clone();
        dev.resize(raw.len() + (32 << 20), 0);
        let img = s.write("dev", &dev);
        let pass = s.write("pass", PASS);
        let mut args: Vec<&str> = [
            &[
                "reencrypt",
                "--encrypt",
                "--force-offline-reencrypt",
                "--reduce-device-size",
                "32M",
                "--sector-size",
                sector,
                "--key-file",
                &pass,
                "--batch-mode",
            ][..],
            &kdf,
        ]
        .concat();
        args.push(&img);
        ok(&cryptsetup(&args), "reencrypt --encrypt");
        let out = s.s("out");
        ok(&decrypt(&img, &out, &pass), "cvm disk decrypt");
        let plain = std::fs::read(&out).unwrap();
        assert!(
            plain[..raw.len()] == raw[..],
            "cvm's decryption differs ({sector}, {kdf:?})"
        );

        // A header made by luksFormat with a volume key we chose, over data that
        // Python encrypted: cvm decrypts it too.
        let s2 = Scratch::new();
        let vk: Vec<u8> = (0u8..64)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let vkf = s2.write("vk", &vk);
        let pass2 = s2.write("pass", PASS);
        let fmt = s2.write("fmt", &vec![0u8; (16 << 20) + (1 << 20)]);
        let mut args: Vec<&str> = [
            &[
                "luksFormat",
                "--type",
                "luks2",
                "--batch-mode",
                "--volume-key-file",
                &vkf,
                "--key-size",
                "512",
                "--sector-size",
                sector,
                "--key-file",
                &pass2,
            ][..],
            &kdf,
        ]
        .concat();
        args.push(&fmt);
        ok(&cryptsetup(&args), "luksFormat");
        let raw2 = s2.data("raw2", 1 << 20, 3);
        let enc = python_encrypt(&raw2, &vk, sector.parse().unwrap());
        let mut image = std::fs::read(&fmt).unwrap();
        image[16 << 20..].copy_from_slice(&enc);
        std::fs::write(&fmt, &image).unwrap();
        let out2 = s2.s("out");
        ok(
            &decrypt(&fmt, &out2, &pass2),
            "cvm disk decrypt of a luksFormat image",
        );
        assert!(
            std::fs::read(&out2).unwrap() == raw2,
            "luksFormat image ({sector}, {kdf:?})"
        );
    }
}

fn python_encrypt(plain: &[u8], key: &[u8], sector: u64) -> Vec<u8> {
    let dir = TempDir::new().unwrap();
    let (p, k, o) = (
        dir.path().join("p"),
        dir.path().join("k"),
        dir.path().join("o"),
    );
    std::fs::write(&p, plain).unwrap();
    std::fs::write(&k, key).unwrap();
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
p, k, sector, o = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read(), int(sys.argv[3]), sys.argv[4]
res = bytearray()
for i in range(len(p) // sector):
    e = Cipher(algorithms.AES(k), modes.XTS((i * sector // 512).to_bytes(16, 'little'))).encryptor()
    res += e.update(p[i*sector:(i+1)*sector]) + e.finalize()
open(o, 'wb').write(res)
"#;
    let sector = sector.to_string();
    python(
        script,
        &[
            p.to_str().unwrap(),
            k.to_str().unwrap(),
            &sector,
            o.to_str().unwrap(),
        ],
    );
    std::fs::read(o).unwrap()
}

#[test]
fn added_keys_open_in_cryptsetup_and_cryptsetups_metadata_survives_ours() {
    let s = Scratch::new();
    s.data("raw", 1 << 20, 4);
    ok(&encrypt(&s, "raw", "img", FAST_PBKDF2), "encrypt");
    let img = s.s("img");
    let pass = s.s("pass");
    let new = s.write("new", b"a second passphrase");
    let args: Vec<&str> = [
        &[
            "disk",
            "add-key",
            &img,
            "--passphrase-file",
            &pass,
            "--new-passphrase-file",
            &new,
        ][..],
        FAST_ARGON2,
    ]
    .concat();
    ok(&cvm(&args), "add-key");
    ok(
        &cryptsetup(&[
            "open",
            "--test-passphrase",
            "--key-slot",
            "1",
            "--key-file",
            &new,
            &img,
        ]),
        "new key in slot 1",
    );
    ok(
        &cryptsetup(&[
            "open",
            "--test-passphrase",
            "--key-slot",
            "0",
            "--key-file",
            &pass,
            &img,
        ]),
        "old key in slot 0",
    );

    // cryptsetup adds a keyslot and a token of its own; ours keeps both.
    let third = s.write("third", b"third");
    ok(
        &cryptsetup(&[
            "luksAddKey",
            "--batch-mode",
            "--key-file",
            &pass,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            &img,
            &third,
        ]),
        "luksAddKey",
    );
    let token = s.write(
        "token.json",
        br#"{"type":"example-token","keyslots":["2"],"note":"kept"}"#,
    );
    ok(
        &cryptsetup(&["token", "import", "--json-file", &token, &img]),
        "token import",
    );
    let fourth = s.write("fourth", b"fourth");
    let args: Vec<&str> = [
        &[
            "disk",
            "add-key",
            &img,
            "--passphrase-file",
            &third,
            "--new-passphrase-file",
            &fourth,
        ][..],
        FAST_PBKDF2,
    ]
    .concat();
    ok(&cvm(&args), "add-key after cryptsetup");
    for (slot, key) in [("2", &third), ("3", &fourth)] {
        ok(
            &cryptsetup(&[
                "open",
                "--test-passphrase",
                "--key-slot",
                slot,
                "--key-file",
                key,
                &img,
            ]),
            "slot",
        );
    }
    let exported = ok(
        &cryptsetup(&["token", "export", "--token-id", "0", &img]),
        "token export",
    );
    assert!(exported.contains(r#""note":"kept""#), "{exported}");
    let info = json_of(&cvm(&["disk", "info", &img, "--json"]));
    assert_eq!(info["keyslots"].as_array().unwrap().len(), 4);
    assert_eq!(info["tokens"][0]["type"], "example-token");
}

#[test]
fn bad_input_gets_a_clear_error_and_nothing_is_overwritten() {
    let s = Scratch::new();
    let raw = s.data("raw", 1 << 20, 5);
    ok(&encrypt(&s, "raw", "img", FAST_PBKDF2), "encrypt");
    let img = s.s("img");
    let pass = s.s("pass");
    let before = std::fs::read(&img).unwrap();

    // A wrong passphrase: exit 1, named.
    let wrong = s.write("wrong", b"nope");
    let out_path = s.s("out");
    let r = decrypt(&img, &out_path, &wrong);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no keyslot opens with this passphrase"));
    assert!(!s.path("out").exists() && !s.path("out.partial").exists());

    // An existing output is never written over.
    let r = encrypt(&s, "raw", "img", FAST_PBKDF2);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("refusing to write over it"));
    assert_eq!(std::fs::read(&img).unwrap(), before);

    // An input that is not whole sectors.
    s.write("odd", &raw[..4096 * 3 + 512]);
    let r = encrypt(&s, "odd", "odd.img", FAST_PBKDF2);
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a whole number of 4096-byte sectors"));

    // The primary header destroyed: the secondary serves, as in cryptsetup.
    let mut broken = before.clone();
    broken[..4096].fill(0);
    let b = s.write("broken", &broken);
    ok(&decrypt(&b, &s.s("from-secondary"), &pass), "secondary");
    assert!(std::fs::read(s.path("from-secondary")).unwrap() == raw);

    // Both copies damaged, a truncated image, no header at all, a LUKS1 header:
    // refused by name.
    let mut both = before.clone();
    both[5000] ^= 1;
    both[16384 + 5000] ^= 1;
    let mut luks1 = vec![0u8; 1 << 20];
    luks1[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x01");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("both", both, "checksum"),
        ("short", before[..100 << 10].to_vec(), "truncated"),
        ("zeros", vec![0u8; 1 << 20], "no LUKS magic"),
        ("luks1", luks1, "LUKS version 1 is not supported"),
    ];
    for (name, bytes, word) in cases {
        let p = s.write(name, &bytes);
        let snapshot = bytes.clone();
        let r = decrypt(&p, &s.s(&format!("{name}.out")), &pass);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(word), "{name}: {err}");
        assert_eq!(std::fs::read(&p).unwrap(), snapshot, "{name} was modified");
        assert!(!s.path(&format!("{name}.out")).exists());
    }
}

#[test]
fn info_and_the_progress_stream() {
    let s = Scratch::new();
    s.data("raw", 12 << 20, 6);
    let mut args = FAST_PBKDF2.to_vec();
    args.extend_from_slice(&["--threads", "2"]);
    let pass = s.write("pass", PASS);
    let (i, o) = (s.s("raw"), s.s("img"));
    let out = disk_io(
        "encrypt",
        &i,
        &o,
        &pass,
        &[&["--progress", "json"][..], &args].concat(),
    );
    let stdout = ok(&out, "encrypt");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], 12 << 20);
    assert_eq!(last["total"], 12 << 20);
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["done"].as_u64() <= w[1]["done"].as_u64())
    );
    let info = json_of(&cvm(&["disk", "info", &o, "--json"]));
    assert_eq!(info["cipher"], "aes-xts-plain64");
    assert_eq!(info["sector_size"], 4096);
    assert_eq!(info["data_offset"], 16 << 20);
    assert_eq!(info["incomplete"], false);
    assert_eq!(info["keyslots"][0]["kdf"], "pbkdf2");
    let text = ok(&cvm(&["disk", "info", &o]), "info");
    assert!(
        text.contains("keyslot 0:     pbkdf2 (512-bit key"),
        "{text}"
    );
}

/// Runs `cvm disk encrypt` to completion after a kill (unless the killed run had
/// finished), checks the result against the input, and says whether it resumed.
fn finish_and_check(s: &Scratch, out: &str, raw: &[u8], args: &[&str]) -> bool {
    let mut stderr = String::new();
    if !s.path(out).exists() {
        let r = encrypt(s, "raw", out, args);
        stderr = ok(&r, "encrypt after a kill") + &String::from_utf8_lossy(&r.stderr);
    }
    assert!(!s.path(&format!("{out}.partial")).exists());
    let plain = s.s(&format!("{out}.plain"));
    ok(
        &decrypt(&s.s(out), &plain, &s.s("pass")),
        "decrypt after a kill",
    );
    assert!(
        std::fs::read(&plain).unwrap() == raw,
        "{out} decrypts to something else"
    );
    std::fs::remove_file(&plain).unwrap();
    stderr.contains("resumed at")
}

#[test]
fn kill_9_at_random_points_leaves_an_image_that_resumes_or_is_absent() {
    use std::time::Instant;

    let s = Scratch::new();
    let raw = s.data("raw", 32 << 20, 7);
    s.write("pass", PASS);
    // One thread, 512-byte sectors, a checkpoint after every batch: many header
    // rewrites for a kill to land in.
    let args: Vec<&str> = [
        FAST_PBKDF2,
        &[
            "--threads",
            "1",
            "--sector-size",
            "512",
            "--checkpoint-mib",
            "1",
        ],
    ]
    .concat();
    // The time a whole run takes, warm.
    let mut runs = Vec::new();
    for i in 0..3 {
        let start = Instant::now();
        assert!(!finish_and_check(&s, &format!("timing{i}"), &raw, &args));
        runs.push(start.elapsed());
    }
    runs.sort();
    let full = runs[1];

    let exe = env!("CARGO_BIN_EXE_cvm");
    let (mut seed, mut resumed, mut absent, mut finished) = (0x2545_f491_4f6c_dd1du64, 0, 0, 0);
    for trial in 0..100 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let out = format!("img{trial}");
        let mut cmd = Command::new(exe);
        cmd.args([
            "disk",
            "encrypt",
            "--in",
            &s.s("raw"),
            "--out",
            &s.s(&out),
            "--passphrase-file",
            &s.s("pass"),
        ])
        .args(["--progress", "json"])
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        if trial % 2 == 0 {
            // Anywhere in the run: key derivation, header writes, data.
            std::thread::sleep(full.mul_f64((seed % 1000) as f64 / 1000.0));
        } else {
            // In the data phase: after 1 to 8 batches have been reported (of 8),
            // then up to 2 ms more.
            use std::io::BufRead;
            let batches = 1 + (seed >> 10) % 8;
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            for _ in 0..batches {
                if lines.next().is_none() {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_micros((seed >> 20) % 2000));
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        let partial = s.path(&format!("{out}.partial"));
        if s.path(&out).exists() {
            finished += 1;
            assert!(!partial.exists());
        } else if partial.exists() {
            // Whatever the kill interrupted, the header never claims more than is
            // encrypted: the bytes its progress token covers decrypt to the input.
            let f = std::fs::File::open(&partial).unwrap();
            // A partial file always has a header: it is renamed into place only
            // once its first header is durable.
            {
                let luks = disk::Luks2::read(&f).unwrap_or_else(|e| {
                    panic!("trial {trial}: a partial file without a usable header: {e}")
                });
                // A kill between the last header write and the rename leaves a
                // finished image under the partial name: all of it must be right.
                let done = disk::stream::progress_of(&luks).unwrap_or(raw.len() as u64);
                let (_, key) = luks.unlock(&f, PASS, None).unwrap();
                let got = disk::stream::read_plaintext(&f, &luks, &key, 0, done).unwrap();
                assert!(
                    got[..] == raw[..done as usize],
                    "trial {trial}: the token claims unencrypted bytes"
                );
                // An unfinished image is not decrypted as if it were whole.
                if luks.metadata.incomplete() {
                    let r = decrypt(partial.to_str().unwrap(), &s.s("x"), &s.s("pass"));
                    assert!(
                        String::from_utf8_lossy(&r.stderr).contains("unfinished"),
                        "trial {trial}"
                    );
                }
            }
        } else {
            absent += 1;
        }
        if finish_and_check(&s, &out, &raw, &args) {
            resumed += 1;
        }
        let _ = std::fs::remove_file(s.path(&out));
    }
    eprintln!(
        "100 kills: {finished} finished before the kill, {absent} before the partial file, {resumed} resumed"
    );
    assert!(
        resumed >= 25,
        "only {resumed} of 100 kills landed after a checkpoint"
    );
}

#[test]
fn cryptsetup_and_cvm_refuse_to_use_an_unfinished_image() {
    let s = Scratch::new();
    let raw = s.data("raw", 8 << 20, 8);
    s.write("pass", PASS);
    ok(&encrypt(&s, "raw", "img", FAST_PBKDF2), "encrypt");
    // Make an unfinished image the way a kill leaves one: the finished image with
    // the requirement and progress token put back.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path("img"))
        .unwrap();
    let mut luks = disk::Luks2::read(&f).unwrap();
    luks.metadata.config.requirements = Some(disk::metadata::Requirements {
        mandatory: vec![disk::metadata::INCOMPLETE.into()],
        other: Default::default(),
    });
    luks.write(&f).unwrap();
    let img = s.s("img");
    let dump = ok(&cryptsetup(&["luksDump", &img]), "luksDump");
    assert!(dump.contains("opencvm-encryption-incomplete"), "{dump}");
    // Activation (`open` with a name) needs device-mapper, which is not here; what
    // cryptsetup checks the same way without it is a metadata change.
    let other = s.write("other", b"another passphrase");
    let r = cryptsetup(&[
        "luksAddKey",
        "--batch-mode",
        "--key-file",
        &s.s("pass"),
        &img,
        &other,
    ]);
    assert!(
        !r.status.success(),
        "cryptsetup changed an unfinished image"
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("Unmet LUKS2 requirements detected"));
    // Ours refuses to decrypt or add keys to it, and names why.
    let r = decrypt(&img, &s.s("x"), &s.s("pass"));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unfinished"));
    assert!(!s.path("x").exists());
    let before = std::fs::read(&img).unwrap();
    let r = cvm(&[
        "disk",
        "add-key",
        &img,
        "--passphrase-file",
        &s.s("pass"),
        "--new-passphrase-file",
        &other,
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unfinished"));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "add-key changed an unfinished image"
    );
    drop(raw);
}

/// A GPT disk made with sfdisk: an EFI system partition of random bytes, a root and
/// a data partition each holding an ext4 filesystem made by mke2fs with files in it.
/// Returns the disk and the three partitions' original bytes.
fn os_disk(s: &Scratch) -> (String, Vec<Vec<u8>>) {
    let disk = s.path("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(72 << 20).unwrap();
    drop(f);
    let layout = "label: gpt\nfirst-lba: 2048\n\
        start=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\"\n\
        start=18432, size=81920, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n\
        start=100352, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"data\"\n";
    let mut child = Command::new("sfdisk")
        .args(["--quiet", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (scripts/setup installs fdisk)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let esp = s.data("esp", 8 << 20, 9);
    let mut parts = vec![esp];
    for (name, mib) in [("root", 40), ("data", 20)] {
        let tree = s.path(&format!("{name}.tree"));
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), format!("{name}-host\n")).unwrap();
        s.data(&format!("{name}.tree/blob"), 3 << 20, mib as u8);
        let img = s.s(&format!("{name}.fs"));
        let out = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-d",
                tree.to_str().unwrap(),
                &img,
                &format!("{mib}M"),
            ])
            .output()
            .expect("mkfs.ext4 (scripts/setup installs e2fsprogs)");
        ok(&out, "mkfs.ext4");
        parts.push(std::fs::read(&img).unwrap());
    }
    let mut bytes = std::fs::read(&disk).unwrap();
    for (p, lba) in parts.iter().zip([2048usize, 18432, 100352]) {
        bytes[lba * 512..lba * 512 + p.len()].copy_from_slice(p);
    }
    std::fs::write(&disk, &bytes).unwrap();
    (disk.to_str().unwrap().to_owned(), parts)
}

fn partition_bytes(image: &[u8], first: u64, last: u64) -> &[u8] {
    &image[(first * 512) as usize..((last + 1) * 512) as usize]
}

/// Checks an encrypt-os output against the original partitions, with sfdisk,
/// sgdisk, cryptsetup, cvm disk decrypt and fsck.
fn check_os_disk(s: &Scratch, out: &str, parts: &[Vec<u8>], tag: &str) {
    let dump = ok(
        &Command::new("sfdisk")
            .args(["--dump", out])
            .output()
            .unwrap(),
        "sfdisk --dump",
    );
    for want in [
        "start=        2048, size=       16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "start=       18432, size=      114688, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "start=      133120, size=       73728, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    ] {
        assert!(dump.contains(want), "sfdisk --dump lacks {want:?}:\n{dump}");
    }
    let verify = Command::new("sgdisk")
        .args(["--verify", out])
        .output()
        .expect("sgdisk (scripts/setup installs gdisk)");
    let text = ok(&verify, "sgdisk --verify");
    assert!(text.contains("No problems found"), "{text}");

    let image = std::fs::read(out).unwrap();
    assert!(
        partition_bytes(&image, 2048, 18431) == &parts[0][..],
        "the ESP changed"
    );
    for (i, (first, last)) in [(18432u64, 18432 + 114688 - 1), (133120, 133120 + 73728 - 1)]
        .into_iter()
        .enumerate()
    {
        let vol = s.write(
            &format!("{tag}-vol{i}"),
            partition_bytes(&image, first, last),
        );
        ok(
            &cryptsetup(&[
                "open",
                "--test-passphrase",
                "--key-file",
                &s.s("pass"),
                &vol,
            ]),
            "test-passphrase on a partition",
        );
        let plain = s.s(&format!("{tag}-plain{i}"));
        ok(&decrypt(&vol, &plain, &s.s("pass")), "decrypt a partition");
        assert!(
            std::fs::read(&plain).unwrap() == parts[i + 1],
            "partition {} differs",
            i + 2
        );
        let fsck = Command::new("fsck.ext4")
            .args(["-n", "-f", &plain])
            .output()
            .unwrap();
        ok(&fsck, "fsck.ext4 -n -f");
    }
}

#[test]
fn encrypt_os_keeps_the_esp_and_encrypts_root_and_data_into_luks2() {
    let s = Scratch::new();
    let (disk, parts) = os_disk(&s);
    let pass = s.write("pass", PASS);
    let out = s.s("disk.enc");
    let r = disk_io(
        "encrypt-os",
        &disk,
        &out,
        &pass,
        &[&["--progress", "none"][..], FAST_PBKDF2].concat(),
    );
    let report: serde_json::Value = serde_json::from_str(ok(&r, "encrypt-os").trim()).unwrap();
    assert_eq!(report["protector"], "passphrase");
    assert_eq!(report["size"], (72 << 20) + 2 * (16 << 20));
    let p = report["partitions"].as_array().unwrap();
    assert_eq!(
        p.iter()
            .map(|p| p["encrypted"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [false, true, true]
    );
    assert_eq!(p[1]["name"], "root");
    check_os_disk(&s, &out, &parts, "once");
    // The report names each volume's LUKS2 UUID, as cryptsetup reads it.
    let image = std::fs::read(&out).unwrap();
    let vol = s.write(
        "vol-uuid",
        partition_bytes(&image, 18432, 18432 + 114688 - 1),
    );
    let uuid = ok(&cryptsetup(&["luksUUID", &vol]), "luksUUID");
    assert_eq!(uuid.trim(), p[1]["luks_uuid"].as_str().unwrap());

    // Refusals: a file that is not whole sectors, a disk without a GPT.
    let r = disk_io("encrypt-os", &pass, "/nonexistent/x", &pass, FAST_PBKDF2);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not a whole number"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let plain = s.write("plain.raw", &vec![0u8; 1 << 20]);
    let r = disk_io("encrypt-os", &plain, "/nonexistent/x", &pass, FAST_PBKDF2);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no GPT at LBA 1"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn encrypt_os_resumes_after_kill_9() {
    use std::io::BufRead;
    let s = Scratch::new();
    let (disk, parts) = os_disk(&s);
    let pass = s.write("pass", PASS);
    let args: Vec<&str> = [
        FAST_PBKDF2,
        &[
            "--threads",
            "1",
            "--checkpoint-mib",
            "1",
            "--progress",
            "json",
        ],
    ]
    .concat();
    let mut resumed = 0;
    // Kill after 1 to 12 progress lines (of 17: 2 ESP batches, 10 root, 5 data).
    for (trial, lines_before_kill) in [1usize, 3, 6, 9, 12].into_iter().enumerate() {
        let out = s.s(&format!("enc{trial}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
            .args([
                "disk",
                "encrypt-os",
                "--in",
                &disk,
                "--out",
                &out,
                "--passphrase-file",
                &pass,
            ])
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..lines_before_kill {
            let _ = lines.next();
        }
        let _ = child.kill();
        child.wait().unwrap();
        if !std::path::Path::new(&out).exists() {
            assert!(
                std::path::Path::new(&format!("{out}.partial")).exists(),
                "trial {trial}: nothing left to resume"
            );
            let r = disk_io("encrypt-os", &disk, &out, &pass, &args);
            let report = ok(&r, "encrypt-os after a kill");
            let report: serde_json::Value =
                serde_json::from_str(report.lines().last().unwrap()).unwrap();
            // Killed past the ESP (2 batches) and into root, the rerun redid less
            // than all 68 MiB of partitions: it resumed, not restarted.
            if lines_before_kill >= 6 {
                assert!(
                    report["processed"].as_u64().unwrap() < 68 << 20,
                    "trial {trial}: {report}"
                );
            }
            resumed += 1;
        }
        check_os_disk(&s, &out, &parts, &format!("t{trial}"));
    }
    assert!(resumed >= 3, "only {resumed} kills left work to resume");
}

/// A running `cvm vtpm run` (swtpm protocol on loopback TCP), killed when dropped,
/// started with TPM2_Startup; `tcti` is tpm2-tss's string for it.
struct Vtpm {
    child: std::process::Child,
    port: String,
    tcti: String,
}

impl Drop for Vtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vtpm {
    fn start(s: &Scratch) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
            .args([
                "vtpm",
                "run",
                "--state",
                &s.s("vtpm-state"),
                "--server",
                "tcp:127.0.0.1:0",
            ])
            .args(["--protocol", "swtpm", "--dangerously-allow-tcp"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(s.path("vtpm.log")).unwrap())
            .spawn()
            .unwrap();
        // Both lines (server, ctrl) are read before the pipe is dropped: a vTPM
        // whose stdout is closed dies on its next write.
        let (mut line, mut ctrl) = (String::new(), String::new());
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        out.read_line(&mut ctrl).unwrap();
        assert!(ctrl.starts_with("ctrl "), "{ctrl:?}");
        let port = line.trim().rsplit(':').next().unwrap().to_owned();
        let tcti = format!("swtpm:host=127.0.0.1,port={port}");
        let vt = Self { child, port, tcti };
        ok(&vt.tool(s, &["tpm2_startup", "-c"]), "tpm2_startup");
        vt
    }

    /// Debian's systemd-cryptenroll (252) enrolling `image` against this vTPM over
    /// tpm2-tss's swtpm TCTI, with keyslot 0's passphrase [`PASS`]. The vTPM's log
    /// is printed when it fails.
    fn systemd_enroll(&self, s: &Scratch, image: &str, pcrs: &str) -> Output {
        let out = Command::new("systemd-cryptenroll")
            .args([
                &format!("--tpm2-device={}", self.tcti),
                &format!("--tpm2-pcrs={pcrs}"),
                image,
            ])
            .env("PASSWORD", std::str::from_utf8(PASS).unwrap())
            .output()
            .expect("systemd-cryptenroll (Debian's systemd package)");
        if !out.status.success() {
            eprintln!(
                "vtpm log: {}",
                std::fs::read_to_string(s.path("vtpm.log")).unwrap_or_default()
            );
        }
        out
    }

    fn endpoint(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    /// Runs a tpm2-tools command in the scratch directory, then flushes transient
    /// objects (there is no resource manager).
    fn tool(&self, s: &Scratch, args: &[&str]) -> Output {
        let run = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .current_dir(s.dir.path())
                .env("TPM2TOOLS_TCTI", &self.tcti)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs tpm2-tools)", args[0]))
        };
        let out = run(args);
        if args[0] != "tpm2_startup" {
            run(&["tpm2_flushcontext", "-t"]);
        }
        out
    }

    /// The tpm2-tools unseal of a systemd-tpm2 token (research note luks2.md §8):
    /// the primary from systemd's template, the blob's halves loaded under it, a
    /// policy session with PolicyPCR over the token's PCRs. Returns the secret.
    fn oracle_unseal(&self, s: &Scratch, token: &serde_json::Value) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(token["tpm2-blob"].as_str().unwrap())
            .unwrap();
        let n = 2 + usize::from(u16::from_be_bytes([blob[0], blob[1]]));
        s.write("seal.priv", &blob[..n]);
        s.write("seal.pub", &blob[n..]);
        let pcrs: Vec<String> = token["tpm2-pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let steps: [&[&str]; 5] = [
            &[
                "tpm2_createprimary",
                "-Q",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc",
                "-a",
                "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth",
                "-c",
                "prim.ctx",
            ],
            &[
                "tpm2_load",
                "-Q",
                "-C",
                "prim.ctx",
                "-u",
                "seal.pub",
                "-r",
                "seal.priv",
                "-c",
                "seal.ctx",
            ],
            &[
                "tpm2_startauthsession",
                "--policy-session",
                "-S",
                "session.ctx",
            ],
            &[
                "tpm2_policypcr",
                "-Q",
                "-S",
                "session.ctx",
                "-l",
                &format!("sha256:{}", pcrs.join(",")),
            ],
            &[
                "tpm2_unseal",
                "-p",
                "session:session.ctx",
                "-c",
                "seal.ctx",
                "-o",
                "secret.bin",
            ],
        ];
        let mut result = Ok(());
        for step in steps {
            let out = self.tool(s, step);
            if !out.status.success() {
                result = Err(format!(
                    "{}: {}",
                    step[0],
                    String::from_utf8_lossy(&out.stderr)
                ));
                break;
            }
        }
        self.tool(s, &["tpm2_flushcontext", "-s"]);
        result.map(|()| std::fs::read(s.path("secret.bin")).unwrap())
    }
}

fn token_json(image: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(
        &cryptsetup(&["token", "export", "--token-id", id, image]),
        "token export",
    ))
    .unwrap()
}

#[test]
fn the_tpm2_token_is_systemds_and_unseals_only_with_the_pcrs_it_was_sealed_to() {
    use base64::Engine as _;
    let s = Scratch::new();
    let vt = Vtpm::start(&s);
    let raw = s.data("raw", 2 << 20, 10);
    ok(&encrypt(&s, "raw", "ours.img", FAST_PBKDF2), "encrypt");
    std::fs::copy(s.path("ours.img"), s.path("systemd.img")).unwrap();
    let (ours, theirs, pass) = (s.s("ours.img"), s.s("systemd.img"), s.s("pass"));

    // systemd-cryptenroll 252 (Debian's) enrolls our vTPM over tpm2-tss's swtpm
    // TCTI; cvm enrolls the other copy against the same vTPM and PCRs.
    ok(&vt.systemd_enroll(&s, &theirs, "7"), "systemd-cryptenroll");
    let r = enroll_tpm2(&ours, &pass, &vt.endpoint(), "7");
    ok(&r, "cvm disk enroll-tpm2");
    // Nothing is measured in this vTPM yet: the enrollment says so.
    assert!(String::from_utf8_lossy(&r.stderr).contains("warning: PCRs [7] are all zero"));

    // The token, field by field: the same names and types, the same values where
    // they are not random, and a blob of the same structure.
    let (a, b) = (token_json(&ours, "0"), token_json(&theirs, "0"));
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b), "field names");
    for field in [
        "type",
        "tpm2-pcrs",
        "tpm2-pcr-bank",
        "tpm2-primary-alg",
        "tpm2-policy-hash",
        "tpm2-pin",
    ] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(a["keyslots"], serde_json::json!(["1"]));
    let blob = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v["tpm2-blob"].as_str().unwrap())
            .unwrap()
    };
    let (ba, bb) = (blob(&a), blob(&b));
    assert_eq!(ba.len(), bb.len(), "blob length");
    let n = 2 + usize::from(u16::from_be_bytes([bb[0], bb[1]]));
    assert_eq!(ba[..2], bb[..2], "TPM2B_PRIVATE size");
    // TPM2B_PUBLIC: everything but the unique field (a hash over the secret).
    assert_eq!(
        ba[n..ba.len() - 32],
        bb[n..bb.len() - 32],
        "the sealed object's public area"
    );
    // The keyslot the token opens: PBKDF2-SHA512, 1000 iterations, AF sha512.
    let slot = |img: &str| {
        let j: serde_json::Value = serde_json::from_str(&ok(
            &cryptsetup(&["luksDump", "--dump-json-metadata", img]),
            "dump",
        ))
        .unwrap();
        let mut k = j["keyslots"]["1"].clone();
        k["kdf"]["salt"] = serde_json::Value::Null;
        k
    };
    assert_eq!(slot(&ours), slot(&theirs), "the token's keyslot");

    // Our unlock path opens both (systemd's token through our unseal), and the
    // independent tpm2-tools path opens ours, whose secret opens the keyslot in
    // cryptsetup.
    for (img, name) in [(&ours, "ours"), (&theirs, "theirs")] {
        let out = s.s(&format!("{name}.plain"));
        ok(&decrypt_vtpm(img, &out, &vt.endpoint()), name);
        assert!(std::fs::read(&out).unwrap() == raw, "{name}");
    }
    let secret = vt.oracle_unseal(&s, &a).unwrap();
    assert_eq!(secret.len(), 32);
    let key = s.write(
        "tpm.key",
        base64::engine::general_purpose::STANDARD
            .encode(&secret)
            .as_bytes(),
    );
    ok(
        &cryptsetup(&[
            "open",
            "--test-passphrase",
            "--key-slot",
            "1",
            "--key-file",
            &key,
            &ours,
        ]),
        "the unsealed secret",
    );

    // No PCRs: the empty policy, as systemd-cryptenroll --tpm2-pcrs= seals it; each
    // side opens the other's.
    std::fs::copy(s.path("raw"), s.path("raw3")).unwrap();
    ok(
        &encrypt(&s, "raw3", "nopcr-ours.img", FAST_PBKDF2),
        "encrypt",
    );
    std::fs::copy(s.path("nopcr-ours.img"), s.path("nopcr-systemd.img")).unwrap();
    let (np_ours, np_theirs) = (s.s("nopcr-ours.img"), s.s("nopcr-systemd.img"));
    ok(
        &vt.systemd_enroll(&s, &np_theirs, ""),
        "systemd-cryptenroll --tpm2-pcrs=",
    );
    let r = enroll_tpm2(&np_ours, &pass, &vt.endpoint(), "");
    ok(&r, "cvm disk enroll-tpm2 --tpm2-pcrs ''");
    let (a0, b0) = (token_json(&np_ours, "0"), token_json(&np_theirs, "0"));
    assert_eq!(a0["tpm2-pcrs"], serde_json::json!([]));
    assert_eq!(
        a0["tpm2-policy-hash"], b0["tpm2-policy-hash"],
        "the empty policy"
    );
    for (img, name) in [(&np_ours, "nopcr-ours"), (&np_theirs, "nopcr-theirs")] {
        let out = s.s(&format!("{name}.plain"));
        ok(&decrypt_vtpm(img, &out, &vt.endpoint()), name);
        assert!(std::fs::read(&out).unwrap() == raw, "{name}");
    }

    // Sealing to a value PCR 7 will have (what firmware will measure): the
    // prediction unseals only once PCR 7 has it.
    let measurement = "ab".repeat(32);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&[0u8; 32]);
    ctx.update(&hex::decode(&measurement).unwrap());
    let predicted = hex::encode(ctx.finish().as_ref());
    std::fs::copy(s.path("raw"), s.path("raw2")).unwrap();
    ok(
        &encrypt(&s, "raw2", "predicted.img", FAST_PBKDF2),
        "encrypt",
    );
    let predicted_img = s.s("predicted.img");
    let spec = format!("7:sha256={predicted}");
    ok(
        &enroll_tpm2(&predicted_img, &pass, &vt.endpoint(), &spec),
        "enroll predicted",
    );
    let r = decrypt_vtpm(&predicted_img, &s.s("p0"), &vt.endpoint());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("are not those the disk was sealed to"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // PCR 7 changes (as when Secure Boot state changes): the earlier tokens no
    // longer unseal, by our path or by tpm2-tools; the predicted one now does.
    ok(
        &vt.tool(&s, &["tpm2_pcrextend", &format!("7:sha256={measurement}")]),
        "pcrextend",
    );
    for (img, name) in [(&ours, "ours"), (&theirs, "theirs")] {
        let r = decrypt_vtpm(img, &s.s(&format!("{name}.after")), &vt.endpoint());
        assert_eq!(r.status.code(), Some(2), "{name}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("are not those the disk was sealed to"),
            "{name}"
        );
        assert!(!s.path(&format!("{name}.after")).exists());
    }
    let refused = vt.oracle_unseal(&s, &a).unwrap_err();
    assert!(refused.contains("tpm2_unseal"), "{refused}");
    ok(
        &decrypt_vtpm(&predicted_img, &s.s("p1"), &vt.endpoint()),
        "predicted",
    );
    assert!(std::fs::read(s.path("p1")).unwrap() == raw);
}

#[test]
fn encrypt_os_binds_every_encrypted_partition_to_the_vtpm() {
    let s = Scratch::new();
    let vt = Vtpm::start(&s);
    let (disk, parts) = os_disk(&s);
    let pass = s.write("pass", PASS);
    let out = s.s("disk.enc");
    let endpoint = vt.endpoint();
    let extra = [
        "--vtpm",
        &endpoint,
        "--tpm2-pcrs",
        "7",
        "--progress",
        "none",
    ];
    let r = disk_io(
        "encrypt-os",
        &disk,
        &out,
        &pass,
        &[&extra[..], FAST_PBKDF2].concat(),
    );
    let report: serde_json::Value =
        serde_json::from_str(ok(&r, "encrypt-os --vtpm").trim()).unwrap();
    assert_eq!(
        report["protector"],
        "passphrase and vTPM (systemd-tpm2, PCRs [7])"
    );
    assert_eq!(report["unmeasured_pcrs"], serde_json::json!([7]));
    check_os_disk(&s, &out, &parts, "bound");
    let image = std::fs::read(&out).unwrap();
    for (i, (first, last)) in [(18432u64, 18432 + 114688 - 1), (133120, 133120 + 73728 - 1)]
        .into_iter()
        .enumerate()
    {
        let vol = s.write(&format!("tpm-vol{i}"), partition_bytes(&image, first, last));
        let token = token_json(&vol, "0");
        assert_eq!(token["type"], "systemd-tpm2");
        assert_eq!(token["keyslots"], serde_json::json!(["1"]));
        let plain = s.s(&format!("tpm-plain{i}"));
        ok(&decrypt_vtpm(&vol, &plain, &endpoint), "decrypt --vtpm");
        assert!(std::fs::read(&plain).unwrap() == parts[i + 1]);
    }
}
