//! `cvm keyvault serve` and `cvm key ...` as processes, with `cvm attest serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{Served, cvm, json_of, spawn};
use serde_json::{Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

fn keyvault(dir: &Path, authority: &str) -> Served {
    let state = dir.join("kv");
    let key = dir.join("secrets/master.key");
    spawn(&[
        "keyvault",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
        "--master-key",
        key.to_str().unwrap(),
        "--authority",
        authority,
    ])
}

fn post(url: &str, bearer: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

#[test]
fn serve_import_release_and_policy_test_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let attest = spawn(&[
        "attest",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--allow-emulated",
        "--offline",
        "--state",
        d.join("attest").to_str().unwrap(),
        "--cache",
        d.join("cache").to_str().unwrap(),
    ]);
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
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": attest.url, "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-sevsnpvm-vmpl", "equals": 0}]}]});
    std::fs::write(d.join("policy.json"), policy.to_string()).unwrap();
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
        d.join("policy.json").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let version = json_of(&out)["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
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
    let p = Platform::create(&d.join("emu"), PlatformConfig::new(Product::Milan), None).unwrap();
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
    let (st, v) = post(&format!("{}/attest/SevSnpVm", attest.url), "", &body);
    assert_eq!(st, 200, "{v}");
    let token_file = d.join("token.jwt");
    std::fs::write(&token_file, v["token"].as_str().unwrap()).unwrap();
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
    let jws = json_of(&out)["value"].as_str().unwrap().to_string();
    let payload: Value =
        serde_json::from_slice(&B64URL.decode(jws.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let hsm = keyvault::wrap::KeyHsm::parse(
        payload["response"]["key"]["key"]["key_hsm"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        hex::encode(hsm.unwrap_key(&transfer).unwrap().as_bytes()),
        k
    );
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
    // Every acknowledged creation was audited before it was acknowledged; the log
    // refuses deletion.
    let audited: u32 = lines[4].parse().unwrap();
    assert!(
        audited >= acknowledged,
        "{audited} audited < {acknowledged} acknowledged"
    );
    assert_eq!(lines[5], "append-only");
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
