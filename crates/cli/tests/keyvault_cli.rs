//! `cvm keyvault serve` and `cvm key ...` as processes, with `cvm attest serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{attest_serve, cvm, json_of, keyvault, keyvault_with, post, spawn_with_env};
use serde_json::{Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

#[test]
fn serve_import_release_and_policy_test_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    // The master key may not live inside the state directory.
    let out = cvm(&[
        "keyvault",
        "serve",
        "--state",
        d.join("kv").to_str().unwrap(),
        "--master-key",
        d.join("kv/master.key").to_str().unwrap(),
        "--authority",
        &attest.url,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("beside the data"));
    let kv = keyvault(d, &attest.url);
    let service_admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (st, v) = post(
        &format!("{}/vaults/team", kv.url),
        &service_admin,
        &json!({}),
    );
    assert_eq!(st, 200);
    let cred = d.join("team.cred");
    std::fs::write(&cred, v["credential"].as_str().unwrap()).unwrap();
    let c = cred.to_str().unwrap();

    // Import an AES key with a release policy bound to the attestation service.
    let k = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    std::fs::write(d.join("k.hex"), k).unwrap();
    let policy_path = policy_file(d, &attest.url);
    let policy: Value = serde_json::from_slice(&std::fs::read(&policy_path).unwrap()).unwrap();
    let out = cvm(&[
        "key",
        "import",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "disk",
        "--aes-key-hex",
        d.join("k.hex").to_str().unwrap(),
        "--release-policy",
        policy_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let version = version_of(&json_of(&out));
    let out = cvm(&["key", "list", "--url", &kv.url, "--credential-file", c]);
    assert_eq!(json_of(&out)["value"].as_array().unwrap().len(), 1);
    let out = cvm(&[
        "key",
        "policy",
        "show",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "disk",
    ]);
    assert_eq!(json_of(&out)["policy"], policy);
    let out = cvm(&[
        "key",
        "create",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "sig",
        "--kty",
        "EC",
        "--crv",
        "P-384",
    ]);
    assert!(out.status.success());
    assert_eq!(json_of(&out)["key"]["crv"], "P-384");

    // An emulated guest attests with its transfer key; the CLI releases the key to it.
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let t = token_file.to_str().unwrap();
    let out = cvm(&[
        "key",
        "policy",
        "test",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "disk",
        "--version",
        &version,
        "--token-file",
        t,
    ]);
    assert_eq!(json_of(&out)["allowed"], true);
    let out = cvm(&[
        "key",
        "release",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "disk",
        "--version",
        &version,
        "--token-file",
        t,
        "--enc",
        "RSA_AES_KEY_WRAP_384",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(hex::encode(released(&json_of(&out), &transfer)), k);
    // Delete: gone from show (exit 2, key_not_found).
    assert!(
        cvm(&[
            "key",
            "delete",
            "--url",
            &kv.url,
            "--credential-file",
            c,
            "disk"
        ])
        .status
        .success()
    );
    let out = cvm(&[
        "key",
        "show",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "disk",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "key_not_found");
}

#[test]
fn kill_9_during_key_creation_and_rotation_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut kv = keyvault(d, "http://127.0.0.1:9");
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (_, v) = post(&format!("{}/vaults/t", kv.url), &admin, &json!({}));
    let cred = v["credential"].as_str().unwrap().to_string();
    // Clients keep creating keys and new versions (rotation) until the server dies.
    let url = kv.url.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (url, cred) = (url.clone(), cred.clone());
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut acknowledged = 0u32;
                for i in 0.. {
                    let name = format!("k{}", i % 4);
                    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                    let r = agent
                        .post(&format!("{url}/keys/{name}-{w}/create"))
                        .header("Authorization", format!("Bearer {cred}"))
                        .header("Content-Type", "application/json")
                        .send(
                            json!({"kty": if i % 2 == 0 { "oct" } else { "EC" }})
                                .to_string()
                                .as_bytes(),
                        );
                    match r {
                        Ok(r) if r.status() == 200 => {
                            acknowledged += 1;
                            progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => return acknowledged,
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Kill once enough work has been acknowledged (a slow machine takes longer to get
    // there; the kill still lands while the workers are mid-request), plus a little
    // random-ish extra so the kill point varies between runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while progress.load(std::sync::atomic::Ordering::SeqCst) < 12
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let extra = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_millis()) % 200);
    std::thread::sleep(std::time::Duration::from_millis(extra));
    kv.child.kill().unwrap(); // SIGKILL
    kv.child.wait().unwrap();
    let acknowledged: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        acknowledged > 5,
        "only {acknowledged} creations before the kill"
    );
    // An independent reader (Python sqlite3): the database is intact and holds at least
    // every acknowledged version; every key has versions and every version a key.
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             print(c.execute('PRAGMA integrity_check').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM key_versions').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM keys k WHERE NOT EXISTS (SELECT 1 FROM key_versions v WHERE v.vault=k.vault AND v.name=k.name)').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM key_versions v WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE v.vault=k.vault AND v.name=k.name)').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM audit WHERE op = \\'create\\' AND outcome = \\'allowed\\'').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM key_versions v WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.vault=v.vault AND a.key=v.name AND a.version=v.version AND a.op=\\'create\\' AND a.outcome=\\'allowed\\')').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM audit a WHERE a.op=\\'create\\' AND a.outcome=\\'allowed\\' AND NOT EXISTS (SELECT 1 FROM key_versions v WHERE a.vault=v.vault AND a.key=v.name AND a.version=v.version)').fetchone()[0])\n\
             try:\n\
             \x20   c.execute('DELETE FROM audit'); print('audit deletable')\n\
             except sqlite3.DatabaseError as e:\n\
             \x20   print('append-only' if 'append-only' in str(e) else e)",
        )
        .arg(d.join("kv/keyvault.db"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines[0], "ok");
    let versions: u32 = lines[1].parse().unwrap();
    assert!(
        versions >= acknowledged,
        "{versions} stored < {acknowledged} acknowledged"
    );
    assert_eq!((lines[2].as_str(), lines[3].as_str()), ("0", "0"));
    // Every acknowledged creation was audited before it was acknowledged, and a version
    // and its audit entry are committed together: no version without its entry, no
    // entry without its version, even for the creation the kill interrupted. The log
    // refuses deletion.
    let audited: u32 = lines[4].parse().unwrap();
    assert!(
        audited >= acknowledged,
        "{audited} audited < {acknowledged} acknowledged"
    );
    assert_eq!(
        (lines[5].as_str(), lines[6].as_str()),
        ("0", "0"),
        "versions without their audit entry, entries without their version"
    );
    assert_eq!(lines[7], "append-only");
    // The restarted vault serves every key; the newest version of each opens (its
    // public part is served from the same row as its sealed material).
    let kv2 = keyvault(d, "http://127.0.0.1:9");
    let cred_file = d.join("cred");
    std::fs::write(&cred_file, &cred).unwrap();
    let c = cred_file.to_str().unwrap();
    let out = cvm(&["key", "list", "--url", &kv2.url, "--credential-file", c]);
    let names = json_of(&out)["value"].as_array().unwrap().len();
    assert!(names >= 1);
    for w in 0..3 {
        for i in 0..4 {
            let out = cvm(&[
                "key",
                "show",
                "--url",
                &kv2.url,
                "--credential-file",
                c,
                &format!("k{i}-{w}"),
            ]);
            if out.status.success() {
                assert!(json_of(&out)["key"]["kid"].is_string());
            }
        }
    }
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An emulated guest attests with a fresh transfer key: the token (in a file) and the
/// key.
fn attested_guest(
    d: &Path,
    attest_url: &str,
) -> (std::path::PathBuf, keyvault::wrap::UnwrappingKey) {
    let p = Platform::open(&d.join("emu"))
        .or_else(|_| Platform::create(&d.join("emu"), PlatformConfig::new(Product::Milan), None))
        .unwrap();
    let guest = p.launch(LaunchConfig::default()).unwrap();
    let transfer = keyvault::wrap::UnwrappingKey::generate(2048).unwrap();
    let mut jwk = transfer.public_key().to_jwk();
    jwk["kid"] = "transfer".into();
    let rt = serde_json::to_vec(&json!({"keys": [jwk]})).unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let report = p.get_report(&guest, &rd, 0).unwrap();
    let chain = pem("CERTIFICATE", p.vcek_der()) + &p.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    let body = json!({
        "report": B64URL.encode(serde_json::to_vec(&proof).unwrap()),
        "runtimeData": {"data": B64URL.encode(&rt), "dataType": "JSON"},
    });
    let (st, v) = post(&format!("{attest_url}/attest/SevSnpVm"), "", &body);
    assert_eq!(st, 200, "{v}");
    let token_file = d.join("token.jwt");
    std::fs::write(&token_file, v["token"].as_str().unwrap()).unwrap();
    (token_file, transfer)
}

fn policy_file(d: &Path, authority: &str) -> std::path::PathBuf {
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": authority, "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-sevsnpvm-vmpl", "equals": 0}]}]});
    let path = d.join("policy.json");
    std::fs::write(&path, policy.to_string()).unwrap();
    path
}

fn version_of(v: &Value) -> String {
    v["key"]["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("no kid: {v}"))
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// The material of a released key (the JWS a release printed), unwrapped.
fn released(v: &Value, transfer: &keyvault::wrap::UnwrappingKey) -> Vec<u8> {
    let jws = v["value"].as_str().unwrap_or_else(|| panic!("{v}"));
    let payload: Value =
        serde_json::from_slice(&B64URL.decode(jws.split('.').nth(1).unwrap()).unwrap()).unwrap();
    keyvault::wrap::KeyHsm::parse(
        payload["response"]["key"]["key"]["key_hsm"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .unwrap_key(transfer)
    .unwrap()
    .as_bytes()
    .to_vec()
}

#[test]
fn regions_byok_and_jwk_import_through_the_cli() {
    use keyvault::wrap::{KeyHsm, UnwrappingKey, WrapMechanism, WrappingPublicKey};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let kv = keyvault(d, &attest.url);
    let admin_file = d.join("kv/admin.token");
    let admin = admin_file.to_str().unwrap();
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let t = token_file.to_str().unwrap();
    let policy = policy_file(d, &attest.url);
    let pol = policy.to_str().unwrap();
    let key = |c: &str, args: &[&str]| {
        let mut all = vec![
            "key",
            args[0],
            "--url",
            kv.url.as_str(),
            "--credential-file",
            c,
        ];
        all.extend_from_slice(&args[1..]);
        cvm(&all)
    };
    let region = |args: &[&str]| {
        let mut all = vec![
            "keyvault",
            "region",
            args[0],
            "--url",
            kv.url.as_str(),
            "--credential-file",
            admin,
        ];
        all.extend_from_slice(&args[1..]);
        cvm(&all)
    };

    // Regions: created, listed; the platform administrator credential is printed once.
    let out = region(&["create", "westeu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let created = json_of(&out);
    assert_eq!(created["root_version"], 1);
    let platform_file = d.join("platform.cred");
    std::fs::write(&platform_file, created["credential"].as_str().unwrap()).unwrap();
    let p = platform_file.to_str().unwrap();
    let out = region(&["create", "westeu"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "conflict");
    let out = region(&["create", "West_EU"]);
    assert_eq!(json_of(&out)["error"]["code"], "bad_parameter");
    let out = region(&["list"]);
    assert!(out.status.success());
    let list = json_of(&out);
    assert_eq!(list["value"][0]["region"], "westeu");
    assert_eq!(list["value"][0]["root_version"], 1);

    let (st, v) = post(
        &format!("{}/vaults/team", kv.url),
        &std::fs::read_to_string(&admin_file).unwrap(),
        &json!({}),
    );
    assert_eq!(st, 200);
    let cred = d.join("team.cred");
    std::fs::write(&cred, v["credential"].as_str().unwrap()).unwrap();
    let c = cred.to_str().unwrap();
    // A tenant credential does not rotate or list regions.
    let out = cvm(&[
        "keyvault",
        "region",
        "rotate",
        "--url",
        &kv.url,
        "--credential-file",
        c,
        "westeu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "unauthorized");

    // BYOK: a key exchange key in the vault; an AES key and an RSA key wrapped to it in
    // Key Vault's BYOK file format.
    let out = key(c, &["create", "kek", "--kty", "RSA", "--size", "3072"]);
    assert!(out.status.success());
    let kek = json_of(&out);
    let kek_kid = kek["key"]["kid"].as_str().unwrap().to_string();
    let kek_pub = WrappingPublicKey::from_components(
        &B64URL.decode(kek["key"]["n"].as_str().unwrap()).unwrap(),
        &B64URL.decode(kek["key"]["e"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let byok_file = |name: &str, mechanism: WrapMechanism, material: &[u8]| {
        let ct = keyvault::wrap::wrap_key(mechanism, &kek_pub, material).unwrap();
        let f = d.join(name);
        std::fs::write(
            &f,
            serde_json::to_string_pretty(&json!({
                "schema_version": "1.0.0",
                "header": {"kid": kek_kid, "alg": "dir", "enc": mechanism.name()},
                "ciphertext": B64URL.encode(ct),
                "generator": "test",
            }))
            .unwrap(),
        )
        .unwrap();
        f
    };
    let aes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(13)).collect();
    let f = byok_file("aes.byok", WrapMechanism::CkmRsaAesKeyWrap, &aes);
    let out = key(
        c,
        &[
            "import",
            "byok-aes",
            "--byok",
            f.to_str().unwrap(),
            "--kty",
            "oct",
            "--release-policy",
            pol,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json_of(&out);
    assert_eq!(v["attributes"]["managed"], "customer");
    let out = key(
        c,
        &[
            "release",
            "byok-aes",
            "--version",
            &version_of(&v),
            "--token-file",
            t,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(released(&json_of(&out), &transfer), aes);
    let customer = UnwrappingKey::generate(2048).unwrap();
    let f = byok_file(
        "rsa.byok",
        WrapMechanism::RsaAesKeyWrap256,
        customer.to_pkcs8().unwrap().as_bytes(),
    );
    let out = key(
        c,
        &[
            "import",
            "byok-rsa",
            "--byok",
            f.to_str().unwrap(),
            "--kty",
            "RSA",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        json_of(&out)["key"]["n"],
        customer.public_key().to_jwk()["n"]
    );
    // Refusals: not a BYOK file (checked before sending), no --kty, wrapped to a key that
    // is not the vault's (the server's code), no material option at all.
    let bad = d.join("bad.byok");
    std::fs::write(
        &bad,
        json!({"schema_version": "1.0.0", "header": {"kid": kek_kid, "alg": "RSA-OAEP", "enc": "CKM_RSA_AES_KEY_WRAP"}, "ciphertext": "AAAA"}).to_string(),
    )
    .unwrap();
    let out = key(
        c,
        &[
            "import",
            "bad",
            "--byok",
            bad.to_str().unwrap(),
            "--kty",
            "oct",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a BYOK file"));
    let out = key(c, &["import", "bad", "--byok", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let stranger = UnwrappingKey::generate(2048).unwrap();
    let hsm = KeyHsm::wrap(
        WrapMechanism::RsaAesKeyWrap256,
        &stranger.public_key().clone().with_kid(kek_kid.clone()),
        &aes,
    )
    .unwrap();
    std::fs::write(&bad, hsm.to_json().to_string()).unwrap();
    let out = key(
        c,
        &[
            "import",
            "bad",
            "--byok",
            bad.to_str().unwrap(),
            "--kty",
            "oct",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "byok_unwrap_failed");
    let out = key(c, &["import", "bad"]);
    assert!(!out.status.success());
    let out = key(c, &["show", "bad"]);
    assert_eq!(json_of(&out)["error"]["code"], "key_not_found");

    // Plain private JWKs made by Python `cryptography`.
    let keys = d.join("keys");
    let out = Command::new("python3")
        .arg(root().join("tests/oracles/jwk_keys.py"))
        .arg("generate")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwk = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(keys.join(f)).unwrap()).unwrap()
    };
    let path = |f: &str| keys.join(f).to_str().unwrap().to_string();
    let out = key(
        c,
        &[
            "import",
            "rsa-jwk",
            "--jwk",
            &path("rsa.jwk.json"),
            "--release-policy",
            pol,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json_of(&out);
    assert_eq!(v["key"]["n"], jwk("rsa.jwk.json")["n"]);
    assert_eq!(v["key"]["e"], jwk("rsa.jwk.json")["e"]);
    let out = key(
        c,
        &[
            "release",
            "rsa-jwk",
            "--version",
            &version_of(&v),
            "--token-file",
            t,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let der = d.join("released.der");
    std::fs::write(&der, released(&json_of(&out), &transfer)).unwrap();
    let out = Command::new("python3")
        .arg(root().join("tests/oracles/jwk_keys.py"))
        .arg("same-private-key")
        .arg(&der)
        .arg(keys.join("rsa.pk8"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "same");
    let out = key(
        c,
        &["import", "rsa-bad", "--jwk", &path("rsa-mismatch.jwk.json")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "jwk_key_mismatch");
    let out = key(c, &["show", "rsa-bad"]);
    assert_eq!(json_of(&out)["error"]["code"], "key_not_found");
    // A public JWK is not importable (refused before sending).
    let public = d.join("public.jwk.json");
    let mut pubjwk = jwk("ec.jwk.json");
    pubjwk.as_object_mut().unwrap().remove("d");
    std::fs::write(&public, pubjwk.to_string()).unwrap();
    let out = key(c, &["import", "pub", "--jwk", public.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a private JWK"));

    // Into the platform vault: a platform-managed key; the tenant does not see it.
    let out = key(p, &["import", "ec-jwk", "--jwk", &path("ec.jwk.json")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = json_of(&out);
    assert_eq!(v["attributes"]["managed"], "platform");
    assert_eq!(
        (&v["key"]["x"], &v["key"]["y"]),
        (&jwk("ec.jwk.json")["x"], &jwk("ec.jwk.json")["y"])
    );
    let out = key(c, &["show", "ec-jwk"]);
    assert_eq!(json_of(&out)["error"]["code"], "key_not_found");
    let out = key(p, &["show", "rsa-jwk"]);
    assert_eq!(json_of(&out)["error"]["code"], "key_not_found");
    let out = key(
        p,
        &[
            "create",
            "platform-aes",
            "--kty",
            "oct",
            "--release-policy",
            pol,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pv = version_of(&json_of(&out));

    // Rotation through the CLI; the platform key still releases.
    let out = region(&["rotate", "westeu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rot = json_of(&out);
    assert_eq!(
        (rot["root_version"].as_i64(), rot["resealed"].as_i64()),
        (Some(2), Some(2))
    );
    let out = region(&["list"]);
    let list = json_of(&out);
    assert_eq!(
        (
            list["value"][0]["root_version"].as_i64(),
            list["value"][0]["keys"].as_i64()
        ),
        (Some(2), Some(2))
    );
    let out = key(
        p,
        &[
            "release",
            "platform-aes",
            "--version",
            &pv,
            "--token-file",
            t,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(released(&json_of(&out), &transfer).len(), 32);
    let out = region(&["rotate", "nowhere"]);
    assert_eq!(json_of(&out)["error"]["code"], "region_not_found");
}

#[test]
fn kill_9_during_region_root_rotation_leaves_every_platform_key_openable() {
    const KEYS: usize = 240;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let mut kv = keyvault(d, &attest.url);
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let (st, r) = post(&format!("{}/regions/westeu", kv.url), &admin, &json!({}));
    assert_eq!(st, 200, "{r}");
    let platform = r["credential"].as_str().unwrap().to_string();
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": attest.url, "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]}]});
    let envelope = json!({
        "contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(policy.to_string()),
        "immutable": false,
    });
    let material = |name: &str| -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes())
            .as_ref()
            .to_vec()
    };
    let import = {
        let (url, platform, envelope) = (kv.url.clone(), platform.clone(), envelope.clone());
        move |name: &str| -> Result<u16, ureq::Error> {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            let k = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
            agent
                .put(&format!("{url}/keys/{name}"))
                .header("Authorization", format!("Bearer {platform}"))
                .header("Content-Type", "application/json")
                .send(
                    json!({
                        "key": {"kty": "oct", "k": B64URL.encode(k.as_ref())},
                        "attributes": {"exportable": true},
                        "release_policy": envelope,
                    })
                    .to_string()
                    .as_bytes(),
                )
                .map(|r| r.status().as_u16())
        }
    };
    // Many platform keys (three importers).
    std::thread::scope(|s| {
        for w in 0..3 {
            let import = import.clone();
            s.spawn(move || {
                for i in (w..KEYS).step_by(3) {
                    assert_eq!(import(&format!("k{i}")).unwrap(), 200);
                }
            });
        }
    });
    // One client rotates the root again and again, another keeps importing keys, until
    // the server is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotations = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let rotator = {
        let (url, admin, rotations) = (kv.url.clone(), admin.clone(), rotations.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
            loop {
                let r = agent
                    .post(&format!("{url}/regions/westeu/rotate"))
                    .header("Authorization", format!("Bearer {admin}"))
                    .header("Content-Type", "application/json")
                    .send(b"{}".as_slice());
                match r {
                    Ok(mut r) if r.status() == 200 => {
                        let v: Value =
                            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                        assert!(v["resealed"].as_u64().unwrap() >= KEYS as u64, "{v}");
                        rotations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        })
    };
    let importer = {
        let (import, stop) = (import.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let name = format!("late{i}");
                match import(&name) {
                    Ok(200) => acknowledged.push(name),
                    _ => break,
                }
            }
            acknowledged
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while rotations.load(std::sync::atomic::Ordering::SeqCst) < 5
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let extra = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_millis()) % 150);
    std::thread::sleep(std::time::Duration::from_millis(extra));
    kv.child.kill().unwrap(); // SIGKILL, while the rotator has a rotation in flight
    kv.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rotator.join().unwrap();
    let late = importer.join().unwrap();
    let acknowledged = rotations.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        acknowledged >= 5,
        "only {acknowledged} rotations before the kill"
    );

    // An independent reader (Python sqlite3): one root version is left, the one the
    // acknowledged rotations made or the one in flight; every key version of the
    // region's vault is sealed under it.
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             print(c.execute('PRAGMA integrity_check').fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM region_roots WHERE region = \\'westeu\\'').fetchone()[0])\n\
             rid, ver = c.execute('SELECT id, version FROM region_roots WHERE region = \\'westeu\\'').fetchone()\n\
             print(ver)\n\
             print(c.execute('SELECT COUNT(*) FROM key_versions WHERE vault = \\'platform:westeu\\' AND root_id IS NOT ?', (rid,)).fetchone()[0])\n\
             print(c.execute('SELECT COUNT(*) FROM audit WHERE op = \\'region_rotate\\' AND outcome = \\'allowed\\'').fetchone()[0])",
        )
        .arg(d.join("kv/keyvault.db"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines[0], "ok");
    assert_eq!(lines[1], "1");
    let version: u32 = lines[2].parse().unwrap();
    eprintln!(
        "{acknowledged} rotations acknowledged, root version {version}, {} keys imported during them",
        late.len()
    );
    assert!(
        version == acknowledged + 1 || version == acknowledged + 2,
        "root version {version} after {acknowledged} acknowledged rotations"
    );
    assert_eq!(lines[3], "0");
    // The rotation's audit entry was written in the rotation's own transaction.
    assert_eq!(lines[4].parse::<u32>().unwrap(), version - 1);

    // The restarted vault releases every key, with its material.
    let kv2 = keyvault(d, &attest.url);
    let (st, regions) = get(&format!("{}/regions", kv2.url), &admin);
    assert_eq!(st, 200);
    assert_eq!(
        regions["value"][0]["root_version"].as_u64(),
        Some(u64::from(version))
    );
    let names: Vec<String> = (0..KEYS)
        .map(|i| format!("k{i}"))
        .chain(late.iter().cloned())
        .collect();
    let release = |url: &str, name: &str| -> Option<Vec<u8>> {
        let (st, v) = get(&format!("{url}/keys/{name}"), &platform);
        if st != 200 {
            return None;
        }
        let (st, r) = post(
            &format!("{url}/keys/{name}/{}/release", version_of(&v)),
            &platform,
            &json!({"target": token.trim()}),
        );
        assert_eq!(st, 200, "{name}: {r}");
        Some(released(&r, &transfer))
    };
    for name in &names {
        assert_eq!(
            release(&kv2.url, name).as_deref(),
            Some(material(name).as_slice()),
            "{name}"
        );
    }
    // An import in flight at the kill is either there (and opens) or absent.
    let in_flight = format!("late{}", late.len());
    if let Some(m) = release(&kv2.url, &in_flight) {
        assert_eq!(m, material(&in_flight));
    }
    // And the hierarchy still rotates.
    let (st, rot) = post(
        &format!("{}/regions/westeu/rotate", kv2.url),
        &admin,
        &json!({}),
    );
    assert_eq!(st, 200, "{rot}");
    assert_eq!(rot["root_version"].as_u64(), Some(u64::from(version) + 1));
}

fn get(url: &str, bearer: &str) -> (u16, Value) {
    let agent = common::agent();
    let mut r = agent
        .get(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .call()
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

/// The master key from `CVM_KEYVAULT_MASTER_KEY` (nothing written beside the data);
/// the service administrator's credential in a 0600 file; the wrong key opens nothing.
#[test]
fn master_key_from_the_environment_and_a_private_admin_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kv");
    let args = [
        "keyvault",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
        "--authority",
        "http://127.0.0.1:9",
    ];
    let key = "ab".repeat(32);
    let kv = spawn_with_env(&args, &[("CVM_KEYVAULT_MASTER_KEY", &key)]);
    let token_file = state.join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let admin = std::fs::read_to_string(&token_file).unwrap();
    let (st, v) = post(&format!("{}/vaults/t", kv.url), admin.trim(), &json!({}));
    assert_eq!(st, 200, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    let (st, k) = post(
        &format!("{}/keys/k/create", kv.url),
        &cred,
        &json!({"kty": "EC", "crv": "P-256"}),
    );
    assert_eq!(st, 200, "{k}");
    drop(kv);
    // Nothing but the database, the admin credential and the (public) release signing
    // certificate is in the state directory.
    for entry in std::fs::read_dir(&state).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "admin.token"
                || name == "release-signer.pem"
                || name.starts_with("keyvault.db"),
            "{name} in the state directory"
        );
    }
    // The same key opens the store again; another key does not (the service exits 2).
    let kv = spawn_with_env(&args, &[("CVM_KEYVAULT_MASTER_KEY", &key)]);
    let (st, again) = get(&format!("{}/keys/k", kv.url), &cred);
    assert_eq!((st, &again["key"]["x"]), (200, &k["key"]["x"]));
    drop(kv);
    let out = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .env("CVM_KEYVAULT_MASTER_KEY", "cd".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Rewrites of the audit log that the append-only triggers let through (the triggers
/// dropped, `INSERT OR REPLACE`, a deleted entry, a cut-off tail) are each found by
/// `cvm keyvault audit verify`, which names the first entry that does not fit.
#[test]
fn audit_log_rewrites_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kv = keyvault(d, "http://127.0.0.1:1");
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (st, v) = post(&format!("{}/vaults/t", kv.url), &admin, &json!({}));
    assert_eq!(st, 200, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    for i in 0..6 {
        let (st, v) = post(
            &format!("{}/keys/k{i}/create", kv.url),
            &cred,
            &json!({"kty": "oct"}),
        );
        assert_eq!(st, 200, "{v}");
    }
    drop(kv);
    let state = d.join("kv");
    let key = d.join("secrets/master.key");
    let run = |state: &Path, extra: &[&str]| {
        let mut args = vec![
            "keyvault",
            "audit",
            "verify",
            "--state",
            state.to_str().unwrap(),
            "--master-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = cvm(&args);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(&state, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact: 7 entries"), "{text}");
    // A checkpoint kept elsewhere.
    let out = cvm(&[
        "keyvault",
        "audit",
        "checkpoint",
        "--state",
        state.to_str().unwrap(),
        "--master-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let cp_file = d.join("checkpoint.json");
    std::fs::write(&cp_file, &out.stdout).unwrap();
    assert_eq!(json_of(&out)["checkpoint"]["seq"], 7);

    // Each rewrite on a fresh copy of the database (with its write-ahead log: the
    // server was killed), with Python's sqlite3.
    let copy_db = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in ["keyvault.db", "keyvault.db-wal"] {
            if state.join(f).exists() {
                std::fs::copy(state.join(f), to.join(f)).unwrap();
            }
        }
    };
    let tamper = |name: &str, sql: &str| {
        let copy = d.join(name);
        copy_db(&copy);
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
                copy.join("keyvault.db").to_str().unwrap(),
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        copy
    };
    // The triggers refuse a plain UPDATE and DELETE...
    let copy = d.join("plain");
    copy_db(&copy);
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET outcome='denied' WHERE seq=3\")",
            copy.join("keyvault.db").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // ...but not these.
    for (name, sql, first_bad) in [
        (
            "dropped-trigger",
            "DROP TRIGGER audit_append_only_update; UPDATE audit SET outcome = 'denied' WHERE seq = 3;",
            "entry 3",
        ),
        (
            "insert-or-replace",
            "INSERT OR REPLACE INTO audit SELECT seq, ts, vault, 'administrator:forged', op, key, version, outcome, code, jti, issuer, prev, link FROM audit WHERE seq = 4;",
            "entry 4",
        ),
        (
            "deleted",
            "DROP TRIGGER audit_append_only_delete; DELETE FROM audit WHERE seq = 5;",
            "entry 6",
        ),
        (
            "reordered",
            "DROP TRIGGER audit_append_only_update; UPDATE audit SET ts = ts + 1000 WHERE seq = 2;",
            "entry 2",
        ),
    ] {
        let copy = tamper(name, sql);
        let (code, text) = run(&copy, &[]);
        assert_eq!(code, 1, "{name}: {text}");
        assert!(text.contains(first_bad), "{name}: {text}");
    }
    // The tail cut off (with everything after the kept checkpoint): only a checkpoint
    // kept elsewhere shows it.
    let cut = tamper(
        "cut",
        "DROP TRIGGER audit_append_only_delete; DELETE FROM audit WHERE seq >= 6;",
    );
    assert_eq!(run(&cut, &[]).0, 0);
    let (code, text) = run(&cut, &["--expect", cp_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("entry 7") && text.contains("cut off"),
        "{text}"
    );
    assert_eq!(run(&state, &["--expect", cp_file.to_str().unwrap()]).0, 0);
    // The wrong master key cannot check (or forge) anything.
    let other = d.join("other.key");
    std::fs::write(&other, "22".repeat(32)).unwrap();
    let out = cvm(&[
        "keyvault",
        "audit",
        "verify",
        "--state",
        state.to_str().unwrap(),
        "--master-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// A large body is read only once its credential is valid: without one the vault
/// answers 401 at once; with one it waits for the body (and cuts off one that stalls).
#[test]
fn credentials_are_checked_before_large_bodies() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let kv = keyvault(dir.path(), "http://127.0.0.1:1");
    let admin = std::fs::read_to_string(dir.path().join("kv/admin.token")).unwrap();
    let status = |auth: &str| {
        let mut s = std::net::TcpStream::connect(kv.url.trim_start_matches("http://")).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        s.write_all(
            format!("PUT /keys/big HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 500000\r\nConnection: close\r\n\r\n{{")
                .as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(status(""), "401");
    assert_eq!(status("Authorization: Bearer nope\r\n"), "401");
    assert_eq!(status(&format!("Authorization: Bearer {admin}\r\n")), "408");
}

/// `--log-format json`: every line a JSON object; every line written while serving a
/// request carries that request's id, which the answer names in `x-request-id`; server
/// and client errors are there; and no secret (the key's material in any encoding, the
/// credentials, the attestation token, the master key) is ever in the log.
#[test]
fn json_logs_carry_request_ids_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let log = d.join("kv.log");
    let master = d.join("secrets/master.key");
    // A second authority that cannot be reached: a token naming it makes the vault
    // fetch its keys on the blocking pool, and log the failure there.
    let gone = "http://127.0.0.1:9";
    let serve = |level: &str, log: &std::path::Path| {
        keyvault_with(
            d,
            &[&attest.url, gone],
            &["--log-format", "json"],
            &[("CVM_LOG", level)],
            Some(log),
        )
    };
    // A release whose token names the unreachable authority: its request id.
    let unreachable_release = |url: &str, cred: &str, version: &str| -> String {
        let agent = common::agent();
        let part = |v: Value| B64URL.encode(v.to_string());
        let token = format!(
            "{}.{}.{}",
            part(json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})),
            part(json!({"iss": gone, "exp": 4_000_000_000u64})),
            B64URL.encode([1u8; 256])
        );
        let r = agent
            .post(format!("{url}/keys/disk/{version}/release"))
            .header("Authorization", format!("Bearer {cred}"))
            .header("Content-Type", "application/json")
            .send(json!({ "target": token }).to_string().as_bytes())
            .unwrap();
        assert!((400..600).contains(&r.status().as_u16()));
        r.headers()["x-request-id"].to_str().unwrap().to_string()
    };
    // Whether `text` has the warning about the unreachable authority under request `id`.
    let fetch_failed = |text: &str, id: &str| {
        text.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["level"] == "WARN"
                && v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("signing keys failed"))
                && v["span"]["request_id"] == id
        })
    };
    let kv = serve("debug", &log);
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let (st, v) = post(&format!("{}/vaults/team", kv.url), admin.trim(), &json!({}));
    assert_eq!(st, 200, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    std::fs::write(d.join("team.cred"), &cred).unwrap();
    let material = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
    std::fs::write(d.join("k.hex"), material).unwrap();
    let out = cvm(&[
        "key",
        "import",
        "--url",
        &kv.url,
        "--credential-file",
        d.join("team.cred").to_str().unwrap(),
        "disk",
        "--aes-key-hex",
        d.join("k.hex").to_str().unwrap(),
        "--release-policy",
        policy_file(d, &attest.url).to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = version_of(&json_of(&out));
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let token = std::fs::read_to_string(&token_file).unwrap();
    // The release, with its answer's request id.
    let agent = common::agent();
    let mut r = agent
        .post(format!("{}/keys/disk/{version}/release", kv.url))
        .header("Authorization", format!("Bearer {cred}"))
        .header("Content-Type", "application/json")
        .send(json!({ "target": token.trim() }).to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let release_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let answer: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let key = released(&answer, &transfer);
    assert_eq!(hex::encode(&key), material);
    // A refusal and a missing key.
    let (st, _) = post(
        &format!("{}/keys/disk/{version}/release", kv.url),
        &cred,
        &json!({ "target": "not.a.token" }),
    );
    assert!((400..500).contains(&st));
    let (st, _) = post(
        &format!("{}/keys/nope/create", kv.url),
        "wrong-credential",
        &json!({}),
    );
    assert_eq!(st, 401);
    let unreachable_id = unreachable_release(&kv.url, &cred, &version);
    drop(kv);

    let (text, lines) = common::json_log(&log);
    let answered = common::answered(&lines);
    // Vault, import, release, refused release, unauthenticated create, unreachable.
    assert!(answered.len() >= 6, "{text}");
    // A line written on the blocking pool carries its request's id.
    assert!(fetch_failed(&text, &unreachable_id), "{text}");
    for l in &answered {
        let id = l["span"]["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{l}"));
        assert_eq!(id.len(), 16, "{l}");
    }
    assert!(
        answered
            .iter()
            .any(|l| l["span"]["request_id"] == release_id.as_str()
                && l["fields"]["status"] == 200
                && l["span"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/release"))),
        "no log line for request {release_id}: {text}"
    );
    let ids: std::collections::HashSet<&str> = answered
        .iter()
        .filter_map(|l| l["span"]["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), answered.len(), "request ids repeat: {text}");
    let b64 = |b: &[u8]| B64URL.encode(b);
    // The master key file holds the key as hex.
    let master_hex = std::fs::read_to_string(&master).unwrap().trim().to_string();
    let master_bytes = hex::decode(&master_hex).unwrap();
    let material_bytes = hex::decode(material).unwrap();
    for (what, secret) in [
        ("the key's material (hex)", material.to_string()),
        ("the key's material (base64url)", b64(&material_bytes)),
        (
            "the key's material (base64)",
            base64::engine::general_purpose::STANDARD.encode(&material_bytes),
        ),
        ("the vault credential", cred.clone()),
        ("the service admin token", admin.trim().to_string()),
        ("the attestation token", token.trim().to_string()),
        ("the master key (hex)", master_hex.clone()),
        ("the master key (base64url)", b64(&master_bytes)),
    ] {
        assert!(!text.contains(&secret), "{what} is in the log");
    }

    // At CVM_LOG=warn: no answers logged, and the warning still names its request.
    let warn_log = d.join("kv-warn.log");
    let kv = serve("warn", &warn_log);
    let id = unreachable_release(&kv.url, &cred, &version);
    drop(kv);
    let text = std::fs::read_to_string(&warn_log).unwrap();
    assert!(!text.contains("\"answered\""), "{text}");
    assert!(fetch_failed(&text, &id), "{text}");
}

/// The master key replicas share (they must: every secret in the database is sealed
/// under it).
const REPLICA_MASTER_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// A key vault replica with its own state directory `d/name` on the database `url`.
fn replica(d: &Path, name: &str, authority: &str, url: &str) -> common::Served {
    keyvault_with(
        &d.join(name),
        &[authority],
        &["--database", url],
        &[("CVM_KEYVAULT_MASTER_KEY", REPLICA_MASTER_KEY)],
        None,
    )
}

/// `cvm args...` with the replicas' master key.
fn cvm_replica(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .env("CVM_KEYVAULT_MASTER_KEY", REPLICA_MASTER_KEY)
        .output()
        .unwrap()
}

/// Runs `sql` with psql (an independent client): the rows, `|`-separated.
fn psql(url: &str, sql: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn get_json(url: &str, bearer: &str) -> (u16, Value) {
    let mut r = common::agent()
        .get(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .call()
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

#[test]
fn key_vault_replicas_on_one_postgres_database_serve_the_same_tenants() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let a = replica(d, "a", &attest.url, &pg.url);
    let b = replica(d, "b", &attest.url, &pg.url);
    // One service administrator credential for both: the first replica made it; the
    // second found it in the database and wrote none.
    let admin = std::fs::read_to_string(d.join("a/kv/admin.token")).unwrap();
    assert!(!d.join("b/kv/admin.token").exists());
    // The database URL's password is in no log line and no error.
    let bad = cvm_replica(&[
        "keyvault",
        "audit",
        "verify",
        "--state",
        d.join("a/kv").to_str().unwrap(),
        "--database",
        "postgres://opencvm:hunter2@127.0.0.1:1/none",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("postgres://opencvm:***@127.0.0.1:1/none") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    // A vault created through A is served by B.
    let (st, v) = post(&format!("{}/vaults/team", a.url), &admin, &json!({}));
    assert_eq!(st, 200, "{v}");
    let cred = v["credential"].as_str().unwrap().to_string();
    let cred_file = d.join("team.cred");
    std::fs::write(&cred_file, &cred).unwrap();
    let c = cred_file.to_str().unwrap();
    let (st, _) = post(&format!("{}/vaults/team", b.url), &admin, &json!({}));
    assert_eq!(st, 409, "the vault exists for B too");

    // A key imported through A releases through B, to an attested guest.
    let k = "8899aabbccddeeff00112233445566778899aabbccddeeff0011223344556677";
    std::fs::write(d.join("k.hex"), k).unwrap();
    let policy = policy_file(d, &attest.url);
    let out = cvm(&[
        "key",
        "import",
        "--url",
        &a.url,
        "--credential-file",
        c,
        "disk",
        "--aes-key-hex",
        d.join("k.hex").to_str().unwrap(),
        "--release-policy",
        policy.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let version = version_of(&json_of(&out));
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let release = |url: &str| {
        post(
            &format!("{url}/keys/disk/{version}/release"),
            &cred,
            &json!({"target": token, "enc": "RSA_AES_KEY_WRAP_256"}),
        )
    };
    let (st, v) = release(&b.url);
    assert_eq!(st, 200, "{v}");
    assert_eq!(hex::encode(released(&v, &transfer)), k);

    // A rotation (a new key version) through B is the newest version for A.
    let (st, v) = post(
        &format!("{}/keys/sig/create", a.url),
        &cred,
        &json!({"kty": "EC"}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &format!("{}/keys/sig/create", b.url),
        &cred,
        &json!({"kty": "EC"}),
    );
    assert_eq!(st, 200, "{v}");
    let newest = version_of(&v);
    let (st, v) = get_json(&format!("{}/keys/sig", a.url), &cred);
    assert_eq!((st, version_of(&v)), (200, newest));
    // A region's root rotated through A is version 2 for B.
    let (st, v) = post(&format!("{}/regions/west", a.url), &admin, &json!({}));
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(
        &format!("{}/regions/west/rotate", a.url),
        &admin,
        &json!({}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = get_json(&format!("{}/regions", b.url), &admin);
    assert_eq!(
        (st, v["value"][0]["root_version"].clone()),
        (200, json!(2)),
        "{v}"
    );

    // Releases through both replicas at once: every one is audited exactly once, in
    // one unbroken chain.
    let before = psql(&pg.url, "SELECT COUNT(*) FROM audit WHERE op = 'release'");
    let per_replica = 12;
    std::thread::scope(|s| {
        for url in [&a.url, &b.url] {
            let release = &release;
            s.spawn(move || {
                for _ in 0..per_replica {
                    let (st, v) = release(url);
                    assert_eq!(st, 200, "{v}");
                }
            });
        }
    });
    let after = psql(&pg.url, "SELECT COUNT(*) FROM audit WHERE op = 'release'");
    let (before, after): (i64, i64) = (before[0].parse().unwrap(), after[0].parse().unwrap());
    assert_eq!(after - before, 2 * per_replica);
    assert_eq!(
        psql(
            &pg.url,
            "SELECT COUNT(*) = COUNT(DISTINCT seq) AND MIN(seq) = 1 AND MAX(seq) = COUNT(*) FROM audit"
        ),
        ["t"],
        "audit sequence numbers are unique and without gaps"
    );
    let (st, v) = get_json(&format!("{}/audit", b.url), &cred);
    assert_eq!(st, 200);
    let releases = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "release" && e["outcome"] == "allowed")
        .count();
    assert_eq!(releases, 1 + 2 * per_replica as usize);
    let out = cvm_replica(&[
        "keyvault",
        "audit",
        "verify",
        "--state",
        d.join("b/kv").to_str().unwrap(),
        "--database",
        &pg.url,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("intact:"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The log is append-only on PostgreSQL too.
    let out = Command::new("psql")
        .args([&pg.url, "-XAtq", "-c", "DELETE FROM audit"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"));
}

#[test]
fn a_replica_killed_mid_write_leaves_the_shared_database_consistent() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let authority = "http://127.0.0.1:9";
    let b = replica(d, "b", authority, &pg.url);
    let admin = std::fs::read_to_string(d.join("b/kv/admin.token")).unwrap();
    let (_, v) = post(&format!("{}/vaults/t", b.url), &admin, &json!({}));
    let cred = v["credential"].as_str().unwrap().to_string();
    let acknowledged = std::sync::atomic::AtomicU32::new(0);
    // Three rounds: clients create keys and versions through A and through B while A is
    // killed (SIGKILL) mid-write, then restarted.
    for round in 0..3u64 {
        let mut a = replica(d, "a", authority, &pg.url);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for (w, url) in [(0, a.url.clone()), (1, a.url.clone()), (2, b.url.clone())] {
                let (cred, stop, acknowledged) = (&cred, &stop, &acknowledged);
                s.spawn(move || {
                    for i in 0u32.. {
                        if w == 2 && stop.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                        let r = common::agent()
                            .post(&format!("{url}/keys/k{}-{w}/create", i % 3))
                            .header("Authorization", format!("Bearer {cred}"))
                            .header("Content-Type", "application/json")
                            .send(
                                json!({"kty": if i % 2 == 0 { "oct" } else { "EC" }})
                                    .to_string()
                                    .as_bytes(),
                            );
                        match r {
                            Ok(r) if r.status() == 200 => {
                                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            // Any answer but 200 is a failure, on either replica (B
                            // must go on serving while A dies; A dies without answering).
                            Ok(r) => panic!("replica {w}: status {}", r.status()),
                            Err(e) if w == 2 => panic!("B failed: {e}"),
                            Err(_) => return, // A is gone.
                        }
                    }
                });
            }
            let start = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < start + 10
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(37 * round));
            a.child.kill().unwrap(); // SIGKILL
            a.child.wait().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let acknowledged = i64::from(acknowledged.load(std::sync::atomic::Ordering::SeqCst));
    assert!(acknowledged > 20, "only {acknowledged} creations");
    // An independent reader (psql): every acknowledged version is stored, every key
    // has versions and every version a key, and each version has its one audit entry.
    let count = |sql: &str| -> i64 { psql(&pg.url, sql)[0].parse().unwrap() };
    let versions = count("SELECT COUNT(*) FROM key_versions");
    assert!(
        versions >= acknowledged,
        "{versions} stored < {acknowledged} acknowledged"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM keys k WHERE NOT EXISTS (SELECT 1 FROM key_versions v WHERE v.vault = k.vault AND v.name = k.name)"
        ),
        0
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM key_versions v WHERE (SELECT COUNT(*) FROM audit a WHERE a.vault = v.vault AND a.key = v.name AND a.version = v.version AND a.op = 'create' AND a.outcome = 'allowed') <> 1"
        ),
        0,
        "versions without exactly one audit entry"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM audit a WHERE a.op = 'create' AND a.outcome = 'allowed' AND NOT EXISTS (SELECT 1 FROM key_versions v WHERE a.vault = v.vault AND a.key = v.name AND a.version = v.version)"
        ),
        0,
        "audit entries without their version"
    );
    let out = cvm_replica(&[
        "keyvault",
        "audit",
        "verify",
        "--state",
        d.join("b/kv").to_str().unwrap(),
        "--database",
        &pg.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // B still serves every key: the newest version of each opens.
    let cred_file = d.join("cred");
    std::fs::write(&cred_file, &cred).unwrap();
    let out = cvm(&[
        "key",
        "list",
        "--url",
        &b.url,
        "--credential-file",
        cred_file.to_str().unwrap(),
    ]);
    for k in json_of(&out)["value"].as_array().unwrap() {
        let kid = k["kid"].as_str().unwrap();
        let name = kid.rsplit('/').next().unwrap();
        let (st, v) = get_json(&format!("{}/keys/{name}", b.url), &cred);
        assert_eq!(st, 200, "{name}: {v}");
    }
}

/// Runs `scripts/validate-openapi.py` on `records`: its exit code and output.
fn validate_openapi(doc: &Path, records: &[Value]) -> (Option<i32>, String) {
    api_contract::validate_responses(&root(), doc, records)
        .expect("python3 runs scripts/validate-openapi.py (scripts/setup installs its validators)")
}

/// Every operation of the checked-in OpenAPI document answers, on the running server,
/// what the document says: each one's success and its refusals are recorded and checked
/// by independent validators (openapi-spec-validator, openapi-schema-validator). Every
/// operation is reached (a request without a credential is refused with 401, not 404 or
/// 405) and succeeds at least once. Control: a damaged record fails the validator.
#[test]
fn keyvault_responses_match_the_checked_in_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let kv = keyvault(d, &attest.url);
    let doc_path = root().join("openapi/keyvault.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let mut records: Vec<Value> = Vec::new();
    let mut record = |op: &str, (st, body): (u16, Value)| -> Value {
        records.push(json!({"operation": op, "status": st, "body": body}));
        body
    };
    let url = |p: &str| format!("{}{p}", kv.url);

    // Every operation of the document is routed and checks its credential first.
    let mut ops = Vec::new();
    for (path, method, op) in api_contract::operations(&doc) {
        let id = op["operationId"].as_str().unwrap().to_string();
        let concrete = path
            .replace("{name}", "k")
            .replace("{version}", "v")
            .replace("{id}", "x")
            .replace("{region}", "r");
        let m = method.to_ascii_uppercase();
        let (st, body) = common::call(&m, &url(&concrete), None, None);
        assert_eq!(st, 401, "{m} {concrete} without a credential: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        record(&id, (st, body));
        ops.push(id);
    }
    assert_eq!(ops.len(), keyvault_api::OPERATIONS.len());

    // A tenant, its keys, a release to an attested guest.
    let v = record(
        "create_vault",
        common::call("POST", &url("/vaults/t"), Some(&admin), None),
    );
    let cred = v["credential"].as_str().unwrap().to_string();
    let c = Some(cred.as_str());
    let rsa = record(
        "create_key",
        common::call(
            "POST",
            &url("/keys/rsa/create"),
            c,
            Some(&json!({"kty": "RSA", "key_size": 2048})),
        ),
    );
    record(
        "create_key",
        common::call(
            "POST",
            &url("/keys/ec/create"),
            c,
            Some(&json!({"kty": "EC"})),
        ),
    );
    let policy = std::fs::read(policy_file(d, &attest.url)).unwrap();
    let envelope = json!({"contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(&policy), "immutable": false});
    let disk = record(
        "import_key",
        common::call(
            "PUT",
            &url("/keys/disk"),
            c,
            Some(
                &json!({"key": {"kty": "oct", "k": B64URL.encode([7u8; 32])},
                "attributes": {"exportable": true}, "release_policy": envelope}),
            ),
        ),
    );
    let (rv, dv) = (version_of(&rsa), version_of(&disk));
    record("get_key", common::call("GET", &url("/keys/rsa"), c, None));
    record(
        "get_key_version",
        common::call("GET", &url(&format!("/keys/rsa/{rv}")), c, None),
    );
    record("list_keys", common::call("GET", &url("/keys"), c, None));
    record(
        "list_versions",
        common::call("GET", &url("/keys/rsa/versions"), c, None),
    );
    record(
        "update_key",
        common::call(
            "PATCH",
            &url(&format!("/keys/rsa/{rv}")),
            c,
            Some(
                &json!({"attributes": {"enabled": true, "exp": 4102444800i64}, "tags": {"team": "db"}}),
            ),
        ),
    );
    let (token_file, _transfer) = attested_guest(d, &attest.url);
    let token = std::fs::read_to_string(token_file).unwrap();
    let release = json!({"target": token, "enc": "RSA_AES_KEY_WRAP_256", "nonce": "n1"});
    record(
        "release",
        common::call(
            "POST",
            &url(&format!("/keys/disk/{dv}/release")),
            c,
            Some(&release),
        ),
    );
    let t = record(
        "release_test",
        common::call(
            "POST",
            &url(&format!("/keys/disk/{dv}/release/test")),
            c,
            Some(&json!({"target": token})),
        ),
    );
    assert_eq!(t["allowed"], true, "{t}");
    let t = record(
        "release_test",
        common::call(
            "POST",
            &url(&format!("/keys/rsa/{rv}/release/test")),
            c,
            Some(&json!({"target": token})),
        ),
    );
    assert_eq!(t["allowed"], false, "{t}");
    let wrapped = record(
        "wrap_key",
        common::call(
            "POST",
            &url(&format!("/keys/disk/{dv}/wrapkey")),
            c,
            Some(&json!({"alg": "A256KW", "value": B64URL.encode([9u8; 32])})),
        ),
    );
    record(
        "attested_unwrap",
        common::call(
            "POST",
            &url(&format!("/keys/disk/{dv}/unwrapkey/attested")),
            c,
            Some(&json!({"target": token, "alg": "A256KW", "value": wrapped["value"]})),
        ),
    );
    // Refusals: unknown key, a role that may not, a malformed body.
    record("get_key", common::call("GET", &url("/keys/nope"), c, None));
    let user = record(
        "create_credential",
        common::call(
            "POST",
            &url("/credentials"),
            c,
            Some(&json!({"role": "release_user"})),
        ),
    );
    let refused = record(
        "create_key",
        common::call(
            "POST",
            &url("/keys/x/create"),
            user["credential"].as_str(),
            Some(&json!({"kty": "oct"})),
        ),
    );
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let malformed = record(
        "create_key",
        common::call("POST", &url("/keys/x/create"), c, Some(&json!({"kty": 1}))),
    );
    assert_eq!(malformed["error"]["code"], "bad_request", "{malformed}");
    // A body is a JSON object; a role that is not a string is no role.
    let array = record(
        "create_credential",
        common::call(
            "POST",
            &url("/credentials"),
            c,
            Some(&json!(["crypto_user"])),
        ),
    );
    assert_eq!(array["error"]["code"], "bad_request", "{array}");
    let number = record(
        "create_credential",
        common::call("POST", &url("/credentials"), c, Some(&json!({"role": 5}))),
    );
    assert_eq!(number["error"]["code"], "bad_parameter", "{number}");
    // Credentials and the audit log.
    record(
        "list_credentials",
        common::call("GET", &url("/credentials"), c, None),
    );
    let rotated = record(
        "rotate_credential",
        common::call(
            "POST",
            &url(&format!(
                "/credentials/{}/rotate",
                user["id"].as_str().unwrap()
            )),
            c,
            None,
        ),
    );
    record(
        "revoke_credential",
        common::call(
            "DELETE",
            &url(&format!("/credentials/{}", rotated["id"].as_str().unwrap())),
            c,
            None,
        ),
    );
    record("audit_log", common::call("GET", &url("/audit"), c, None));
    // Soft delete, recovery, purge.
    record(
        "delete_key",
        common::call("DELETE", &url("/keys/ec"), c, None),
    );
    record(
        "list_deleted",
        common::call("GET", &url("/deletedkeys"), c, None),
    );
    record(
        "get_deleted",
        common::call("GET", &url("/deletedkeys/ec"), c, None),
    );
    record(
        "recover_key",
        common::call("POST", &url("/deletedkeys/ec/recover"), c, None),
    );
    record(
        "delete_key",
        common::call("DELETE", &url("/keys/ec"), c, None),
    );
    record(
        "purge_key",
        common::call("DELETE", &url("/deletedkeys/ec"), c, None),
    );
    // Regions.
    let a = Some(admin.as_str());
    record(
        "create_region",
        common::call("POST", &url("/regions/west"), a, None),
    );
    record(
        "rotate_region",
        common::call("POST", &url("/regions/west/rotate"), a, None),
    );
    record(
        "list_regions",
        common::call("GET", &url("/regions"), a, None),
    );

    // Every operation succeeded at least once.
    for id in &ops {
        assert!(
            records.iter().any(|r| r["operation"] == *id.as_str()
                && r["status"]
                    .as_u64()
                    .is_some_and(|s| (200..300).contains(&s))),
            "{id} never succeeded: {records:#?}"
        );
    }
    let (code, out) = validate_openapi(&doc_path, &records);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{n} of {n} responses match", n = records.len())),
        "{out}"
    );

    // Control: two damaged answers fail.
    let mut damaged = records.clone();
    let i = damaged
        .iter()
        .position(|r| r["operation"] == "get_key" && r["status"] == 200)
        .unwrap();
    damaged[i]["body"].as_object_mut().unwrap().remove("key");
    let j = damaged
        .iter()
        .position(|r| r["operation"] == "list_keys" && r["status"] == 200)
        .unwrap();
    damaged[j]["body"]["nextLink"] = json!(5);
    let (code, out) = validate_openapi(&doc_path, &damaged);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.matches("FAIL").count(), 2, "{out}");
}

/// The typed client (`keyvault-client`, the contract's trait over HTTP) drives every
/// operation of a running vault, refusals arrive typed, and names are path segments:
/// a name with `/` or `?` cannot reach another route.
#[test]
fn the_typed_client_drives_every_operation() {
    use keyvault_api::*;
    use keyvault_client::Client;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = attest_serve(d);
    let kv = keyvault(d, &attest.url);
    let agent = || keyvault_client::agent(None).unwrap();
    let admin = std::fs::read_to_string(d.join("kv/admin.token")).unwrap();
    let service = Client::new(agent(), &kv.url, admin.trim());

    let v = service.create_vault(&(), "t").unwrap();
    assert_eq!((v.vault.as_str(), v.role.as_str()), ("t", "administrator"));
    assert!(
        !format!("{v:?}").contains(&v.credential),
        "credentials stay out of Debug"
    );
    let c = Client::new(agent(), &kv.url, &v.credential);
    let e = c.create_vault(&(), "u").unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("unauthorized")));

    // Keys: create, import with a release policy, read, list, update.
    let rsa = c
        .create_key(
            &(),
            "rsa",
            CreateKeyRequest {
                kty: "RSA".into(),
                key_size: Some(2048),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(rsa.key.kty, "RSA");
    assert!(rsa.key.n.is_some() && rsa.key.kid.starts_with(&format!("{}/keys/rsa/", kv.url)));
    let policy = std::fs::read(policy_file(d, &attest.url)).unwrap();
    let mut import = ImportKeyRequest::new(
        json!({"kty": "oct", "k": B64URL.encode([5u8; 32])})
            .as_object()
            .unwrap()
            .clone(),
    );
    import.attributes = Some(Attributes {
        exportable: Some(true),
        ..Default::default()
    });
    import.release_policy = Some(json!({"contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(&policy), "immutable": true}));
    let disk = c.import_key(&(), "disk", import).unwrap();
    assert_eq!(
        disk.release_policy.as_ref().map(|p| p.immutable),
        Some(true)
    );
    let dv = disk.key.kid.rsplit('/').next().unwrap().to_string();
    assert_eq!(c.get_key(&(), "disk", Some(&dv)).unwrap(), disk);
    assert_eq!(c.list_keys(&()).unwrap().value.len(), 2);
    assert_eq!(c.list_versions(&(), "disk").unwrap().value.len(), 1);
    let mut tags = serde_json::Map::new();
    tags.insert("team".into(), json!("db"));
    let updated = c
        .update_key(
            &(),
            "disk",
            &dv,
            UpdateKeyRequest {
                tags: Some(tags.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(updated.tags, tags);
    let e = c
        .update_key(
            &(),
            "disk",
            &dv,
            UpdateKeyRequest {
                release_policy: Some(json!({})),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some("release_policy_immutable"))
    );

    // Release, its dry run, wrap and attested unwrap, to an attested guest.
    let (token_file, transfer) = attested_guest(d, &attest.url);
    let token = std::fs::read_to_string(token_file).unwrap();
    let r = c
        .release(
            &(),
            "disk",
            &dv,
            ReleaseRequest {
                target: token.clone(),
                enc: Some("RSA_AES_KEY_WRAP_256".into()),
                nonce: None,
            },
        )
        .unwrap();
    assert_eq!(
        released(&serde_json::to_value(&r).unwrap(), &transfer),
        [5u8; 32]
    );
    let t = c
        .release_test(
            &(),
            "rsa",
            &version_of(&serde_json::to_value(&rsa).unwrap()),
            ReleaseRequest {
                target: token.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        !t.allowed && t.code.as_deref() == Some("key_not_exportable"),
        "{t:?}"
    );
    let w = c
        .wrap_key(
            &(),
            "disk",
            &dv,
            WrapKeyRequest {
                alg: "A256KW".into(),
                value: B64URL.encode([8u8; 32]),
            },
        )
        .unwrap();
    let u = c
        .attested_unwrap(
            &(),
            "disk",
            &dv,
            AttestedUnwrapRequest {
                target: token,
                alg: "A256KW".into(),
                value: w.value,
                enc: None,
                nonce: None,
            },
        )
        .unwrap();
    assert_eq!(u.value.split('.').count(), 3);

    // Credentials: issue, list, rotate (the old one stops), revoke.
    let user = c
        .create_credential(
            &(),
            CreateCredentialRequest {
                role: Some("release_user".into()),
            },
        )
        .unwrap();
    assert_eq!(c.list_credentials(&()).unwrap().value.len(), 2);
    let as_user = Client::new(agent(), &kv.url, &user.credential);
    let e = as_user
        .create_key(
            &(),
            "x",
            CreateKeyRequest {
                kty: "oct".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")));
    let rotated = as_user.rotate_credential(&(), &user.id).unwrap();
    assert_eq!(rotated.replaces, user.id);
    assert_eq!(as_user.list_keys(&()).unwrap_err().status(), Some(401));
    assert!(c.revoke_credential(&(), &rotated.id).unwrap().revoked);
    let log = c.audit_log(&()).unwrap();
    assert!(
        log.value
            .iter()
            .any(|e| e.op == "release" && e.outcome == "allowed")
    );

    // Soft delete, recover, purge.
    let deleted = c.delete_key(&(), "rsa").unwrap();
    assert!(deleted.recovery_id.is_some());
    assert_eq!(c.list_deleted(&()).unwrap().value.len(), 1);
    assert_eq!(c.get_deleted(&(), "rsa").unwrap().key, deleted.key);
    c.recover_key(&(), "rsa").unwrap();
    c.delete_key(&(), "rsa").unwrap();
    c.purge_key(&(), "rsa").unwrap();
    assert_eq!(c.get_deleted(&(), "rsa").unwrap_err().status(), Some(404));

    // Names are one path segment each.
    for name in ["disk/versions", "disk?x=1", "../vaults/z"] {
        let e = c.get_key(&(), name, None).unwrap_err();
        assert_eq!(e.status(), Some(404), "{name}: {e}");
    }

    // Regions.
    let r = service.create_region(&(), "west").unwrap();
    assert_eq!((r.vault.as_str(), r.root_version), ("platform:west", 1));
    assert_eq!(service.rotate_region(&(), "west").unwrap().root_version, 2);
    assert_eq!(service.list_regions(&()).unwrap().value[0].root_version, 2);
}
