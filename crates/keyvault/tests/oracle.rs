#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Independent check of the key transfer: what we wrap, Python `cryptography` unwraps
//! (tests/oracles/skr_unwrap.py: RSA-OAEP with the mechanism's hash, then RFC 5649).

use std::path::{Path, PathBuf};
use std::process::Command;

use keyvault::wrap::{KeyHsm, UnwrappingKey, WrapMechanism, wrap_key};

fn oracle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracles/skr_unwrap.py")
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut v).unwrap();
    v
}

/// Runs the oracle; Ok(hex output) or Err(stderr).
fn python_unwrap(
    dir: &Path,
    key_file: &Path,
    mechanism: &str,
    ct: &[u8],
) -> Result<String, String> {
    let ct_file = dir.join("ciphertext.bin");
    std::fs::write(&ct_file, ct).unwrap();
    let out = Command::new("python3")
        .arg(oracle())
        .arg(key_file)
        .arg(mechanism)
        .arg(&ct_file)
        .output()
        .expect("python3 must be installed (scripts/setup installs it and `cryptography`)");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn python_unwraps_what_we_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let target_rsa = UnwrappingKey::generate(2048).unwrap().to_pkcs8().unwrap();
    for (m, bits) in WrapMechanism::ALL.into_iter().zip([2048, 3072, 4096]) {
        // A fresh wrapping key per mechanism, its private half on disk for the oracle.
        let k = UnwrappingKey::generate(bits).unwrap();
        let key_file = dir.path().join(format!("wrapping-{bits}.der"));
        std::fs::write(&key_file, k.to_pkcs8().unwrap().as_bytes()).unwrap();

        let mut len_byte = [0u8; 1];
        aws_lc_rs::rand::fill(&mut len_byte).unwrap();
        let materials = [
            random(1 + usize::from(len_byte[0]) % 70), // random length 1..=70
            random(1),
            random(32),                     // an AES-256 key
            target_rsa.as_bytes().to_vec(), // a PKCS#8 RSA private key
        ];
        for material in &materials {
            let ct = wrap_key(m, k.public_key(), material).unwrap();
            let hex = python_unwrap(dir.path(), &key_file, m.name(), &ct).unwrap_or_else(|e| {
                panic!("oracle refused {m} RSA-{bits} len {}: {e}", material.len())
            });
            assert_eq!(
                hex,
                hex::encode(material),
                "{m} RSA-{bits} len {}",
                material.len()
            );
        }

        // The key_hsm carries the same ciphertext.
        let hsm =
            KeyHsm::wrap(m, &k.public_key().clone().with_kid("oracle"), &materials[2]).unwrap();
        let parsed = KeyHsm::parse(&hsm.encode()).unwrap();
        let hex = python_unwrap(
            dir.path(),
            &key_file,
            parsed.mechanism().name(),
            parsed.ciphertext(),
        )
        .unwrap();
        assert_eq!(hex, hex::encode(&materials[2]));

        // The oracle discriminates: another mechanism's hash does not unwrap it.
        let ct = wrap_key(m, k.public_key(), &materials[2]).unwrap();
        for wrong in WrapMechanism::ALL.into_iter().filter(|w| *w != m) {
            assert!(
                python_unwrap(dir.path(), &key_file, wrong.name(), &ct).is_err(),
                "{m} ciphertext unwrapped by the oracle as {wrong}"
            );
        }
    }
}
