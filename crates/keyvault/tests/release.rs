//! The key vault and the attestation service, both real servers on 127.0.0.1:0:
//! emulated CVM evidence → token → release → the key unwrapped by Python
//! `cryptography`; every refusal with its code and an audit entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use keyvault::authority::{Authorities, http_fetch};
use keyvault::service::VaultConfig;
use keyvault::wrap::{KeyHsm, UnwrappingKey};
use serde_json::{Map, Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

/// Asserts an error response: its status and its stable `code`.
#[track_caller]
fn assert_refused(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (want_status, Some(want_code)),
        "{body}"
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The emulated platform this test binary's guests run on; every attestation service
/// here trusts its roots (as `--dangerously-trust-emulator-roots` would).
fn emu() -> &'static Platform {
    static EMU: std::sync::OnceLock<(tempfile::TempDir, Platform)> = std::sync::OnceLock::new();
    &EMU.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
        (dir, p)
    })
    .1
}

fn emu_roots() -> attest::EmulatorRoots {
    let p = emu();
    let pem = pem("CERTIFICATE", p.ask_der())
        + &pem("CERTIFICATE", p.ark_der())
        + &pem("X509 CRL", &p.issue_crl(&[]).unwrap());
    attest::EmulatorRoots::from_pem(pem.as_bytes()).unwrap()
}

fn attest_service(dir: &Path, lifetime: Duration) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let master = seal::MasterKey::load_or_create(&dir.join("master.key")).unwrap();
    let mut cfg = attest::ServiceConfig::new(dir.join("state"), String::new(), master);
    cfg.emulator_roots.push(emu_roots());
    cfg.token_lifetime = lifetime;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = attest::server::run("127.0.0.1:0", None, None, cfg, |a, _| tx.send(a).unwrap());
        panic!("attestation service stopped: {r:?}");
    });
    format!("http://{}", rx.recv().unwrap())
}

struct Kv {
    url: String,
    admin: String,
}

/// An attestation service and a key vault with one tenant vault `t`: the authority's
/// URL, the vault, and `t`'s administrator credential.
fn one_tenant(dir: &Path) -> (String, Kv, String) {
    let a1 = attest_service(&dir.join("a1"), Duration::from_secs(3600));
    let kv = keyvault(dir, std::slice::from_ref(&a1));
    let (_, va) = call("POST", &format!("{}/vaults/t", kv.url), &kv.admin, None);
    let admin = va["credential"].as_str().unwrap().to_string();
    (a1, kv, admin)
}

fn keyvault(dir: &Path, authorities: &[String]) -> Kv {
    let keydir = dir.join("elsewhere");
    std::fs::create_dir_all(&keydir).unwrap();
    let master = seal::MasterKey::load_or_create(&keydir.join("master.key")).unwrap();
    let state = dir.join("kv");
    let cfg = VaultConfig {
        state_dir: state.clone(),
        master_key: master,
        base_url: String::new(),
        authorities: Authorities::new(authorities, http_fetch()).with_leeway(0),
        database: None,
        store: None,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = keyvault::server::run("127.0.0.1:0", None, None, cfg, |a, _| tx.send(a).unwrap());
        panic!("key vault stopped: {r:?}");
    });
    let url = format!("http://{}", rx.recv().unwrap());
    Kv {
        url,
        admin: std::fs::read_to_string(state.join("admin.token")).unwrap(),
    }
}

fn call(method: &str, url: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {bearer}");
    let mut resp = match method {
        "GET" => agent.get(url).header("Authorization", &auth).call(),
        "DELETE" => agent.delete(url).header("Authorization", &auth).call(),
        m => {
            let b = body.unwrap_or(json!({})).to_string();
            let r = match m {
                "PUT" => agent.put(url),
                "PATCH" => agent.patch(url),
                _ => agent.post(url),
            };
            r.header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.as_bytes())
        }
    }
    .unwrap();
    let st = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A token for an emulated guest whose runtime data is `runtime`.
fn token(attest_url: &str, emu: &Platform, runtime: &Value, debug: bool) -> String {
    let mut cfg = LaunchConfig::default();
    if debug {
        cfg.policy |= 1 << 19;
    }
    let guest = emu.launch(cfg).unwrap();
    let rt = serde_json::to_vec(runtime).unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let report = emu.get_report(&guest, &rd, 0).unwrap();
    let chain = pem("CERTIFICATE", emu.vcek_der()) + &emu.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    let body = json!({
        "report": B64URL.encode(serde_json::to_vec(&proof).unwrap()),
        "runtimeData": {"data": B64URL.encode(&rt), "dataType": "JSON"},
    });
    let mut r = ureq::post(&format!("{attest_url}/attest/SevSnpVm"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn policy(authority: &str, extra: Value) -> Value {
    let mut all = vec![
        json!({"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}),
        json!({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": false}),
        json!({"claim": "x-ms-sevsnpvm-vmpl", "equals": 0}),
    ];
    if !extra.is_null() {
        all.push(extra);
    }
    let p = json!({"version": "1.0.0", "anyOf": [{"authority": authority, "allOf": all}]});
    json!({
        "contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(p.to_string()),
        "immutable": false,
    })
}

fn forge(header: Value, claims: &Map<String, Value>, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig))
}

#[test]
fn release_to_an_attested_guest_and_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = attest_service(&dir.path().join("a1"), Duration::from_secs(3600));
    let short = attest_service(&dir.path().join("a2"), Duration::from_secs(1));
    let stranger = attest_service(&dir.path().join("a3"), Duration::from_secs(3600));
    let kv = keyvault(dir.path(), &[a1.clone(), short.clone()]);
    let emu = emu();

    // Two tenants; tenant A issues a release-only credential.
    let (st, va) = call(
        "POST",
        &format!("{}/vaults/tenant-a", kv.url),
        &kv.admin,
        None,
    );
    assert_eq!(st, 200, "{va}");
    let admin_a = va["credential"].as_str().unwrap().to_string();
    let (_, vb) = call(
        "POST",
        &format!("{}/vaults/tenant-b", kv.url),
        &kv.admin,
        None,
    );
    let admin_b = vb["credential"].as_str().unwrap().to_string();
    let (_, r) = call(
        "POST",
        &format!("{}/credentials", kv.url),
        &admin_a,
        Some(json!({"role": "release_user"})),
    );
    let releaser = r["credential"].as_str().unwrap().to_string();
    // Audit entries name a credential by its id (a hash prefix), never by itself.
    let releaser_id = format!("release_user:{}", r["id"].as_str().unwrap());
    assert_eq!(releaser_id.len(), "release_user:".len() + 16);

    // A customer-managed AES-256 key, exportable under a release policy.
    let k: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    let (st, key) = call(
        "PUT",
        &format!("{}/keys/disk-key?api-version=7.4", kv.url),
        &admin_a,
        Some(json!({
            "key": {"kty": "oct-HSM", "k": B64URL.encode(&k)},
            "attributes": {"exportable": true},
            "release_policy": policy(&a1, Value::Null),
        })),
    );
    assert_eq!(st, 200, "{key}");
    let kid = key["key"]["kid"].as_str().unwrap().to_string();
    let version = kid.rsplit('/').next().unwrap().to_string();
    assert!(
        key["key"].get("k").is_none(),
        "a key's material is never returned"
    );

    // The guest's wrapping key goes into its runtime data, hence into the token.
    let guest_key = UnwrappingKey::generate(2048).unwrap();
    let mut jwk = guest_key.public_key().to_jwk();
    jwk["kid"] = "guest-transfer-key".into();
    jwk["key_ops"] = json!(["encrypt"]);
    let token_a = token(&a1, emu, &json!({"keys": [jwk]}), false);
    let release_url = format!("{}/keys/disk-key/{version}/release", kv.url);

    let pkcs8 = dir.path().join("guest.pk8");
    std::fs::write(&pkcs8, guest_key.to_pkcs8().unwrap().as_bytes()).unwrap();
    for enc in [
        "CKM_RSA_AES_KEY_WRAP",
        "RSA_AES_KEY_WRAP_256",
        "RSA_AES_KEY_WRAP_384",
    ] {
        let (st, v) = call(
            "POST",
            &release_url,
            &releaser,
            Some(json!({"target": token_a, "enc": enc, "nonce": "n-1"})),
        );
        assert_eq!(st, 200, "{enc}: {v}");
        let jws = v["value"].as_str().unwrap();
        let payload = jws_payload(&v);
        assert_eq!(payload["request"]["enc"], enc);
        assert_eq!(payload["request"]["nonce"], "n-1");
        let hsm = released_hsm(&v);
        assert_eq!(hsm.kid(), "guest-transfer-key");
        // Python `cryptography` unwraps it to the key material.
        let ct = dir.path().join("ct.bin");
        std::fs::write(&ct, hsm.ciphertext()).unwrap();
        let out = Command::new("python3")
            .arg(root().join("tests/oracles/skr_unwrap.py"))
            .args([pkcs8.as_os_str(), enc.as_ref(), ct.as_os_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            hex::encode(&k),
            "{enc}"
        );
        // The JWS is signed by the vault's certificate (x5c), checked by PyJWT.
        let out = Command::new("python3")
            .arg("-c")
            .arg(
                "import base64,jwt,sys\n\
                 from cryptography import x509\n\
                 t=sys.argv[1]; h=jwt.get_unverified_header(t)\n\
                 k=x509.load_der_x509_certificate(base64.b64decode(h['x5c'][0])).public_key()\n\
                 print(jwt.decode(t, key=k, algorithms=['RS256'])['request']['enc'])",
            )
            .arg(jws)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), enc);
    }

    // Refusals, each with its own code.
    let release = |cred: &str, url: &str, target: &str| {
        let (st, v) = call("POST", url, cred, Some(json!({"target": target})));
        (
            st,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
            v,
        )
    };
    let check = |got: (u16, String, Value), status: u16, code: &str| {
        assert_eq!((got.0, got.1.as_str()), (status, code), "{}", got.2);
        let text = got.2.to_string();
        assert!(!text.contains(&hex::encode(&k)) && !text.contains(&B64URL.encode(&k)));
    };
    // A token from an authority the vault does not trust.
    let t = token(&stranger, emu, &json!({"keys": [jwk]}), false);
    check(
        release(&releaser, &release_url, &t),
        401,
        "token_unknown_issuer",
    );
    // An expired token.
    let t = token(&short, emu, &json!({"keys": [jwk]}), false);
    std::thread::sleep(Duration::from_millis(2100));
    check(release(&releaser, &release_url, &t), 401, "token_expired");
    // alg none, HS256 keyed with the service's public key, a key not in the JWKS.
    let (header, claims) = jose::peek(&token_a).unwrap();
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "kid": header["kid"]}).to_string()),
        B64URL.encode(serde_json::to_vec(&claims).unwrap())
    );
    check(
        release(&releaser, &release_url, &none),
        401,
        "token_unsigned",
    );
    let jwks: Value = serde_json::from_str(
        &ureq::get(&format!("{a1}/certs"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let n = B64URL
        .decode(jwks["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    let hs = forge(
        json!({"alg": "HS256", "kid": header["kid"]}),
        &claims,
        |m| {
            aws_lc_rs::hmac::sign(
                &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &n),
                m,
            )
            .as_ref()
            .to_vec()
        },
    );
    check(
        release(&releaser, &release_url, &hs),
        401,
        "token_alg_symmetric",
    );
    let rogue = jose::TokenSigner::generate(jose::Alg::RS256, "rogue", 0, 36500).unwrap();
    let forged = forge(
        json!({"alg": "RS256", "kid": header["kid"]}),
        &claims,
        |m| rogue.sign_raw(m).unwrap(),
    );
    check(
        release(&releaser, &release_url, &forged),
        401,
        "token_bad_signature",
    );
    // A release policy the token does not match (it wants guest SVN 7), and the
    // answer says which condition failed.
    let (st, strict) = call(
        "PUT",
        &format!("{}/keys/strict-key", kv.url),
        &admin_a,
        Some(json!({
            "key": {"kty": "oct", "k": B64URL.encode(&k)},
            "attributes": {"exportable": true},
            "release_policy": policy(&a1, json!({"claim": "x-ms-sevsnpvm-guestsvn", "equals": 7})),
        })),
    );
    assert_eq!(st, 200, "{strict}");
    let strict_v = strict["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let strict_url = format!("{}/keys/strict-key/{strict_v}/release", kv.url);
    let got = release(&releaser, &strict_url, &token_a);
    assert!(
        got.2["error"]["detail"]
            .to_string()
            .contains("x-ms-sevsnpvm-guestsvn"),
        "{}",
        got.2
    );
    check(got, 403, "release_policy_denied");
    // The dry run explains the same denial and releases nothing.
    let (st, v) = call(
        "POST",
        &format!("{strict_url}/test"),
        &releaser,
        Some(json!({"target": token_a})),
    );
    assert_eq!((st, v["allowed"].as_bool()), (200, Some(false)), "{v}");
    assert!(v["policy"].to_string().contains("x-ms-sevsnpvm-guestsvn"));
    assert!(!v.to_string().contains("key_hsm"));
    // A token without an RSA encryption key.
    let t = token(&a1, emu, &json!({"purpose": "no keys"}), false);
    check(
        release(&releaser, &release_url, &t),
        403,
        "no_encryption_key",
    );
    // Another tenant's credential does not see tenant A's key.
    check(
        release(&admin_b, &release_url, &token_a),
        404,
        "key_not_found",
    );
    // A non-exportable key.
    let (_, rsa) = call(
        "POST",
        &format!("{}/keys/signing/create", kv.url),
        &admin_a,
        Some(json!({"kty": "RSA", "key_size": 2048})),
    );
    let rsa_v = rsa["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    check(
        release(
            &releaser,
            &format!("{}/keys/signing/{rsa_v}/release", kv.url),
            &token_a,
        ),
        403,
        "key_not_exportable",
    );
    // A disabled key.
    let (st, _) = call(
        "PATCH",
        &format!("{}/keys/disk-key/{version}", kv.url),
        &admin_a,
        Some(json!({"attributes": {"enabled": false}})),
    );
    assert_eq!(st, 200);
    check(
        release(&releaser, &release_url, &token_a),
        403,
        "key_disabled",
    );
    // A release user may not create keys.
    let (st, v) = call(
        "POST",
        &format!("{}/keys/x/create", kv.url),
        &releaser,
        Some(json!({"kty": "oct"})),
    );
    assert_refused(st, &v, 403, "forbidden");
    // A known path with another method: a JSON 405.
    let (st, v) = call("GET", &format!("{}/keys/x/create", kv.url), &releaser, None);
    assert_refused(st, &v, 405, "method_not_allowed");
    // A key name that is not UTF-8: the framework's refusal, still as JSON.
    let (st, v) = call("GET", &format!("{}/keys/%FF", kv.url), &releaser, None);
    assert_refused(st, &v, 400, "bad_request");

    // The audit log has an entry for each, with the token's issuer and jti, and no key.
    let (st, log) = call("GET", &format!("{}/audit", kv.url), &admin_a, None);
    assert_eq!(st, 200);
    let entries = log["value"].as_array().unwrap();
    let codes: Vec<&str> = entries
        .iter()
        .filter(|e| e["op"] == "release")
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    for c in [
        "",
        "token_unknown_issuer",
        "token_expired",
        "token_unsigned",
        "token_alg_symmetric",
        "token_bad_signature",
        "release_policy_denied",
        "no_encryption_key",
        "key_not_exportable",
        "key_disabled",
    ] {
        assert!(
            codes.contains(&c),
            "no audit entry with code {c:?}: {codes:?}"
        );
    }
    let allowed = entries
        .iter()
        .find(|e| e["op"] == "release" && e["outcome"] == "allowed")
        .unwrap();
    assert_eq!(allowed["issuer"], a1.as_str());
    assert_eq!(allowed["caller"], releaser_id.as_str());
    // The refused create (role) is audited too, as are the credentials issued.
    assert!(
        entries.iter().any(|e| e["op"] == "create_keys"
            && e["outcome"] == "denied"
            && e["code"] == "forbidden"
            && e["caller"] == releaser_id.as_str()),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["op"] == "credential_create" && e["key"] == "release_user")
    );
    assert!(!log.to_string().contains(&releaser));
    assert_eq!(allowed["jti"], claims["jti"]);
    let text = log.to_string();
    assert!(
        !text.contains(&hex::encode(&k))
            && !text.contains(&B64URL.encode(&k))
            && !text.contains(&B64.encode(&k))
    );
    // Tenant B's log does not show tenant A's work, except its own refused attempt.
    let (_, log_b) = call("GET", &format!("{}/audit", kv.url), &admin_b, None);
    let log_b = log_b["value"].as_array().unwrap();
    assert!(log_b.iter().all(|e| e["vault"] == "tenant-b"), "{log_b:?}");
    assert!(
        log_b.iter().any(|e| e["op"] == "release"
            && e["outcome"] == "denied"
            && e["code"] == "key_not_found"),
        "tenant B's refused release is not in its log: {log_b:?}"
    );
}

#[test]
fn key_lifecycle_versions_soft_delete_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, kv, admin) = one_tenant(dir.path());
    let u = |p: &str| format!("{}{p}", kv.url);
    // Exportable without a policy: refused.
    let (st, v) = call(
        "POST",
        &u("/keys/k/create"),
        &admin,
        Some(json!({"kty": "EC", "crv": "P-384", "attributes": {"exportable": true}})),
    );
    assert_refused(st, &v, 400, "release_policy_required");
    // Two versions; GET returns the newest; public parts only.
    let (st, v1) = call(
        "POST",
        &u("/keys/k/create"),
        &admin,
        Some(json!({"kty": "EC", "crv": "P-384"})),
    );
    assert_eq!(st, 200, "{v1}");
    assert_eq!(v1["key"]["crv"], "P-384");
    assert!(v1["key"].get("d").is_none());
    let mut pol = policy(&a1, Value::Null);
    pol["immutable"] = true.into();
    let (_, v2) = call(
        "POST",
        &u("/keys/k/create"),
        &admin,
        Some(
            json!({"kty": "RSA", "key_size": 3072, "attributes": {"exportable": true}, "release_policy": pol, "tags": {"env": "test"}}),
        ),
    );
    assert_eq!(v2["key"]["kty"], "RSA");
    let (_, latest) = call("GET", &u("/keys/k"), &admin, None);
    assert_eq!(latest["key"]["kid"], v2["key"]["kid"]);
    assert_eq!(latest["tags"]["env"], "test");
    let v1_id = v1["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (st, old) = call("GET", &u(&format!("/keys/k/{v1_id}")), &admin, None);
    assert_eq!((st, old["key"]["kty"].as_str()), (200, Some("EC")));
    // Key Vault's version listing: newest first, no key material.
    let (st, list) = call("GET", &u("/keys/k/versions?api-version=7.4"), &admin, None);
    assert_eq!(st, 200, "{list}");
    let kids: Vec<&Value> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["kid"])
        .collect();
    assert_eq!(kids, [&v2["key"]["kid"], &v1["key"]["kid"]]);
    assert_eq!(list["value"][0]["tags"]["env"], "test");
    assert_eq!(call("GET", &u("/keys/nokey/versions"), &admin, None).0, 404);
    // An immutable release policy never changes.
    let v2_id = v2["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (st, v) = call(
        "PATCH",
        &u(&format!("/keys/k/{v2_id}")),
        &admin,
        Some(json!({"release_policy": policy(&a1, Value::Null)})),
    );
    assert_refused(st, &v, 409, "release_policy_immutable");
    // A malformed release policy: refused with the grammar error.
    let bad = json!({"contentType": "application/json; charset=utf-8", "data": B64URL.encode(r#"{"version":"1.0.0","anyOf":[{"authority":"x","allOf":[{"claim":"a","equal":"b"}]}]}"#), "immutable": false});
    let (st, v) = call(
        "POST",
        &u("/keys/j/create"),
        &admin,
        Some(json!({"kty": "oct", "attributes": {"exportable": true}, "release_policy": bad})),
    );
    assert_refused(st, &v, 400, "bad_release_policy");
    // List, soft delete, recover, purge.
    let (_, list) = call("GET", &u("/keys"), &admin, None);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let (st, _) = call("DELETE", &u("/keys/k"), &admin, None);
    assert_eq!(st, 200);
    assert_eq!(call("GET", &u("/keys/k"), &admin, None).0, 404);
    let (st, deleted) = call("GET", &u("/deletedkeys/k"), &admin, None);
    assert_eq!((st, deleted["recoveryId"].is_string()), (200, true));
    let (st, all_deleted) = call("GET", &u("/deletedkeys"), &admin, None);
    assert_eq!(st, 200, "{all_deleted}");
    assert_eq!(all_deleted["value"].as_array().unwrap().len(), 1);
    assert_eq!(all_deleted["value"][0]["recoveryId"], deleted["recoveryId"]);
    assert!(
        all_deleted["value"][0]["kid"]
            .as_str()
            .unwrap()
            .ends_with("/keys/k")
    );
    // A deleted name cannot be reused until recovered or purged.
    assert_eq!(
        call(
            "POST",
            &u("/keys/k/create"),
            &admin,
            Some(json!({"kty": "oct"}))
        )
        .0,
        409
    );
    let (st, _) = call("POST", &u("/deletedkeys/k/recover"), &admin, None);
    assert_eq!(st, 200);
    let (_, again) = call("GET", &u("/keys/k"), &admin, None);
    assert_eq!(again["key"]["kid"], v2["key"]["kid"]);
    call("DELETE", &u("/keys/k"), &admin, None);
    assert_eq!(call("DELETE", &u("/deletedkeys/k"), &admin, None).0, 204);
    assert_eq!(call("GET", &u("/deletedkeys/k"), &admin, None).0, 404);
    assert_eq!(
        call(
            "POST",
            &u("/keys/k/create"),
            &admin,
            Some(json!({"kty": "oct"}))
        )
        .0,
        200
    );
    // No credential, a wrong one, an unknown endpoint.
    assert_eq!(call("GET", &u("/keys"), "wrong", None).0, 401);
    assert_eq!(call("GET", &u("/nope"), &admin, None).0, 404);
}

#[test]
fn byok_import_and_attested_unwrap() {
    use keyvault::wrap::{WrapMechanism, WrappingPublicKey};
    let dir = tempfile::tempdir().unwrap();
    let (a1, kv, admin) = one_tenant(dir.path());
    let u = |p: &str| format!("{}{p}", kv.url);
    let emu = emu();
    let guest_key = UnwrappingKey::generate(2048).unwrap();
    let mut jwk = guest_key.public_key().to_jwk();
    jwk["kid"] = "guest".into();
    let token_a = token(&a1, emu, &json!({"keys": [jwk]}), false);

    // BYOK: a key exchange key in the vault; the customer wraps its key to it.
    let (_, kek) = call(
        "POST",
        &u("/keys/kek/create"),
        &admin,
        Some(json!({"kty": "RSA", "key_size": 3072})),
    );
    let kek_kid = kek["key"]["kid"].as_str().unwrap().to_string();
    let n = B64URL.decode(kek["key"]["n"].as_str().unwrap()).unwrap();
    let e = B64URL.decode(kek["key"]["e"].as_str().unwrap()).unwrap();
    let kek_pub = WrappingPublicKey::from_components(&n, &e)
        .unwrap()
        .with_kid(kek_kid.clone());
    let aes: Vec<u8> = (100u8..132).collect();
    let hsm = KeyHsm::wrap(WrapMechanism::CkmRsaAesKeyWrap, &kek_pub, &aes).unwrap();
    let (st, v) = call(
        "PUT",
        &u("/keys/byok"),
        &admin,
        Some(json!({
            "key": {"kty": "oct-HSM", "key_hsm": hsm.encode()},
            "attributes": {"exportable": true},
            "release_policy": policy(&a1, Value::Null),
        })),
    );
    assert_eq!(st, 200, "{v}");
    let ver = v["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (st, r) = call(
        "POST",
        &u(&format!("/keys/byok/{ver}/release")),
        &admin,
        Some(json!({"target": token_a})),
    );
    assert_eq!(st, 200, "{r}");
    let released = released_hsm(&r);
    assert_eq!(
        released.unwrap_key(&guest_key).unwrap().as_bytes(),
        &aes[..]
    );
    // An RSA key brought in the same way: its public part is the customer's.
    let customer = UnwrappingKey::generate(2048).unwrap();
    let hsm = KeyHsm::wrap(
        WrapMechanism::RsaAesKeyWrap256,
        &kek_pub,
        customer.to_pkcs8().unwrap().as_bytes(),
    )
    .unwrap();
    let (st, v) = call(
        "PUT",
        &u("/keys/byok-rsa"),
        &admin,
        Some(json!({"key": {"kty": "RSA-HSM", "key_hsm": hsm.encode()}})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["key"]["n"], customer.public_key().to_jwk()["n"]);
    // Wrapped to a key that is not in this vault: refused.
    let stranger = UnwrappingKey::generate(2048).unwrap();
    let hsm = KeyHsm::wrap(
        WrapMechanism::RsaAesKeyWrap256,
        &stranger.public_key().clone().with_kid(kek_kid.clone()),
        &aes,
    )
    .unwrap();
    let (st, v) = call(
        "PUT",
        &u("/keys/bad"),
        &admin,
        Some(json!({"key": {"kty": "oct", "key_hsm": hsm.encode()}})),
    );
    assert_refused(st, &v, 400, "byok_unwrap_failed");

    // Attested unwrap: a non-exportable AES key wraps a data key; only an attested caller
    // gets the data key back, wrapped to its own key. The AES key never leaves.
    let (st, k) = call(
        "POST",
        &u("/keys/dek-kek/create"),
        &admin,
        Some(json!({"kty": "oct", "release_policy": policy(&a1, Value::Null)})),
    );
    assert_eq!(st, 200, "{k}");
    let kv_ver = k["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let dek = [0x5au8; 32];
    let (st, w) = call(
        "POST",
        &u(&format!("/keys/dek-kek/{kv_ver}/wrapkey")),
        &admin,
        Some(json!({"alg": "A256KW", "value": B64URL.encode(dek)})),
    );
    assert_eq!(st, 200, "{w}");
    let wrapped = w["value"].as_str().unwrap().to_string();
    let url = u(&format!("/keys/dek-kek/{kv_ver}/unwrapkey/attested"));
    let (st, r) = call(
        "POST",
        &url,
        &admin,
        Some(json!({"target": token_a, "alg": "A256KW", "value": wrapped})),
    );
    assert_eq!(st, 200, "{r}");
    let got = unwrapped_hsm(&r);
    assert_eq!(got.unwrap_key(&guest_key).unwrap().as_bytes(), &dek[..]);
    // The same key cannot be released (not exportable).
    let (st, v) = call(
        "POST",
        &u(&format!("/keys/dek-kek/{kv_ver}/release")),
        &admin,
        Some(json!({"target": token_a})),
    );
    assert_refused(st, &v, 403, "key_not_exportable");
    // Refusals: a token without an RSA key, a value that is not wrapped under the key,
    // a key without a release policy.
    let bare = token(&a1, emu, &json!({}), false);
    let (st, v) = call(
        "POST",
        &url,
        &admin,
        Some(json!({"target": bare, "alg": "A256KW", "value": wrapped})),
    );
    assert_refused(st, &v, 403, "no_encryption_key");
    let junk = B64URL.encode([7u8; 40]);
    let (st, v) = call(
        "POST",
        &url,
        &admin,
        Some(json!({"target": token_a, "alg": "A256KW", "value": junk})),
    );
    assert_refused(st, &v, 400, "unwrap_failed");
    let (_, plain) = call(
        "POST",
        &u("/keys/plain/create"),
        &admin,
        Some(json!({"kty": "oct"})),
    );
    let pv = plain["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (st, v) = call(
        "POST",
        &u(&format!("/keys/plain/{pv}/unwrapkey/attested")),
        &admin,
        Some(json!({"target": token_a, "alg": "A256KW", "value": wrapped})),
    );
    assert_refused(st, &v, 403, "no_release_policy");
    // Audited.
    let (_, log) = call("GET", &u("/audit"), &admin, None);
    let ops: Vec<(&str, &str)> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "attested_unwrap")
        .map(|e| (e["outcome"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert!(
        ops.contains(&("allowed", "")) && ops.contains(&("denied", "no_encryption_key")),
        "{ops:?}"
    );
    assert!(
        log["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["op"] == "wrapkey" && e["key"] == "dek-kek" && e["outcome"] == "allowed")
    );
    assert!(!log.to_string().contains(&B64URL.encode(dek)));
}

fn version_of(bundle: &Value) -> String {
    bundle["key"]["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("no kid: {bundle}"))
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// The payload of the JWS in a release or attested-unwrap response.
fn jws_payload(resp: &Value) -> Value {
    let jws = resp["value"].as_str().unwrap_or_else(|| panic!("{resp}"));
    serde_json::from_slice(&B64URL.decode(jws.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The wrapped key of a release response (`response.key.key.key_hsm`).
fn released_hsm(resp: &Value) -> KeyHsm {
    let payload = jws_payload(resp);
    KeyHsm::parse(
        payload["response"]["key"]["key"]["key_hsm"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

/// The wrapped data key of an attested-unwrap response (`response.key_hsm`).
fn unwrapped_hsm(resp: &Value) -> KeyHsm {
    KeyHsm::parse(jws_payload(resp)["response"]["key_hsm"].as_str().unwrap()).unwrap()
}

/// The key material in a release response, unwrapped with the guest's key.
fn released_material(resp: &Value, guest: &UnwrappingKey) -> Vec<u8> {
    released_hsm(resp)
        .unwrap_key(guest)
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[test]
fn plain_private_jwk_import_rsa_and_ec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a1, kv, admin) = one_tenant(d);
    let u = |p: &str| format!("{}{p}", kv.url);
    let emu = emu();
    let guest_key = UnwrappingKey::generate(2048).unwrap();
    let mut jwk = guest_key.public_key().to_jwk();
    jwk["kid"] = "guest".into();
    let token_a = token(&a1, emu, &json!({"keys": [jwk]}), false);
    let guest_pk8 = d.join("guest.pk8");
    std::fs::write(&guest_pk8, guest_key.to_pkcs8().unwrap().as_bytes()).unwrap();

    // Keys made by Python `cryptography`, written as private JWKs.
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
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(keys.join(f)).unwrap()).unwrap()
    };
    let same_key = |a: &Path, b: &Path| -> bool {
        let out = Command::new("python3")
            .arg(root().join("tests/oracles/jwk_keys.py"))
            .arg("same-private-key")
            .args([a, b])
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim() == "same"
    };

    for (name, file, pk8, public) in [
        ("rsa-jwk", "rsa.jwk.json", "rsa.pk8", &["kty", "n", "e"][..]),
        (
            "ec-jwk",
            "ec.jwk.json",
            "ec.pk8",
            &["kty", "crv", "x", "y"][..],
        ),
    ] {
        let private = read(file);
        let (st, v) = call(
            "PUT",
            &u(&format!("/keys/{name}")),
            &admin,
            Some(json!({
                "key": private,
                "attributes": {"exportable": true},
                "release_policy": policy(&a1, Value::Null),
            })),
        );
        assert_eq!(st, 200, "{name}: {v}");
        // The vault's public part is the JWK's public part; nothing private comes back.
        for m in public {
            assert_eq!(v["key"][m], private[m], "{name}: {m}");
        }
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(v["key"].get(m).is_none(), "{name}: {m} returned");
        }
        assert_eq!(v["attributes"]["managed"], "customer");
        let (_, got) = call("GET", &u(&format!("/keys/{name}")), &admin, None);
        assert_eq!(got["key"]["kid"], v["key"]["kid"]);
        // Released, the key unwraps (Python oracle for the transfer) to the same private
        // key (Python compares the private numbers).
        let ver = version_of(&v);
        let (st, r) = call(
            "POST",
            &u(&format!("/keys/{name}/{ver}/release")),
            &admin,
            Some(json!({"target": token_a, "enc": "RSA_AES_KEY_WRAP_256"})),
        );
        assert_eq!(st, 200, "{r}");
        let hsm = released_hsm(&r);
        let ct = d.join(format!("{name}.ct"));
        std::fs::write(&ct, hsm.ciphertext()).unwrap();
        let out = Command::new("python3")
            .arg(root().join("tests/oracles/skr_unwrap.py"))
            .args([
                guest_pk8.as_os_str(),
                "RSA_AES_KEY_WRAP_256".as_ref(),
                ct.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let released = d.join(format!("{name}.released.der"));
        std::fs::write(
            &released,
            hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap(),
        )
        .unwrap();
        assert!(same_key(&released, &keys.join(pk8)), "{name}");
        // The oracle does tell different keys apart.
        let other = if pk8 == "rsa.pk8" {
            "ec.pk8"
        } else {
            "rsa.pk8"
        };
        assert!(!same_key(&released, &keys.join(other)));
    }

    // d from another key: refused, nothing stored, the private member not echoed.
    for (name, file) in [
        ("rsa-bad", "rsa-mismatch.jwk.json"),
        ("ec-bad", "ec-mismatch.jwk.json"),
    ] {
        let private = read(file);
        let (st, v) = call(
            "PUT",
            &u(&format!("/keys/{name}")),
            &admin,
            Some(json!({"key": private})),
        );
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("jwk_key_mismatch")),
            "{name}: {v}"
        );
        assert!(!v.to_string().contains(private["d"].as_str().unwrap()));
        let (st, v) = call("GET", &u(&format!("/keys/{name}")), &admin, None);
        assert_refused(st, &v, 404, "key_not_found");
    }
    // The modulus of another key with this key's private members: refused too.
    let mut other_n = read("rsa.jwk.json");
    let n = B64URL.decode(other_n["n"].as_str().unwrap()).unwrap();
    let mut n2 = n.clone();
    *n2.last_mut().unwrap() ^= 2;
    other_n["n"] = B64URL.encode(&n2).into();
    let (st, v) = call(
        "PUT",
        &u("/keys/rsa-bad"),
        &admin,
        Some(json!({"key": other_n})),
    );
    assert_refused(st, &v, 400, "jwk_key_mismatch");
    // Malformed: a CRT member missing, d of the wrong length, an unknown curve.
    let mut no_qi = read("rsa.jwk.json");
    no_qi.as_object_mut().unwrap().remove("qi");
    let mut short_d = read("ec.jwk.json");
    short_d["d"] = B64URL.encode([1u8; 31]).into();
    let mut k1 = read("ec.jwk.json");
    k1["crv"] = "secp256k1".into();
    let mut off_curve = read("ec.jwk.json");
    let mut y = B64URL.decode(off_curve["y"].as_str().unwrap()).unwrap();
    *y.last_mut().unwrap() ^= 1;
    off_curve["y"] = B64URL.encode(&y).into();
    let mut long_d = read("rsa.jwk.json");
    long_d["d"] = B64URL.encode([0xffu8; 257]).into();
    for (bad, code) in [
        (no_qi, "malformed_jwk"),
        (long_d, "malformed_jwk"),
        (short_d, "malformed_jwk"),
        (k1, "bad_parameter"),
        (off_curve, "invalid_private_key"),
    ] {
        let (st, v) = call("PUT", &u("/keys/bad"), &admin, Some(json!({"key": bad})));
        assert_refused(st, &v, 400, code);
    }
    assert_eq!(call("GET", &u("/keys/bad"), &admin, None).0, 404);
    // The audit log holds the refusals and no private member.
    let (_, log) = call("GET", &u("/audit"), &admin, None);
    let codes: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"] == "import")
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == "jwk_key_mismatch").count(),
        3,
        "{codes:?}"
    );
    for f in ["rsa.jwk.json", "ec.jwk.json"] {
        assert!(!log.to_string().contains(read(f)["d"].as_str().unwrap()));
    }
}

/// Opens a key version's sealed material the way the store layout says: directly under
/// the master key (customer keys) or under its region root, itself under the master key.
fn open_at_rest(db: &Path, master: &seal::MasterKey, vault: &str, name: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (version, sealed, root_id): (String, Vec<u8>, Option<i64>) = conn
        .query_row(
            "SELECT version, sealed, root_id FROM key_versions WHERE vault = ?1 AND name = ?2 ORDER BY seq DESC LIMIT 1",
            [vault, name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let ctx = format!("opencvm-keyvault/key/{vault}/{name}/{version}");
    match root_id {
        None => master.open(&ctx, &sealed).unwrap().to_vec(),
        Some(id) => {
            assert!(
                master.open(&ctx, &sealed).is_err(),
                "a platform key opens under the master key"
            );
            let root = root_key(&conn, master, id);
            root.open(&ctx, &sealed).unwrap().to_vec()
        }
    }
}

fn root_key(conn: &rusqlite::Connection, master: &seal::MasterKey, id: i64) -> seal::MasterKey {
    let (region, v, sealed): (String, i64, Vec<u8>) = conn
        .query_row(
            "SELECT region, version, sealed FROM region_roots WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let raw = master
        .open(
            &format!("opencvm-keyvault/region-root/{region}/{v}"),
            &sealed,
        )
        .unwrap();
    assert_eq!(raw.len(), 32);
    seal::MasterKey::from_hex(&hex::encode(&*raw)).unwrap()
}

#[test]
fn platform_keys_under_a_rotating_region_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a1 = attest_service(&d.join("a1"), Duration::from_secs(3600));
    let kv = keyvault(d, std::slice::from_ref(&a1));
    let master = seal::MasterKey::load_or_create(&d.join("elsewhere/master.key")).unwrap();
    let db = d.join("kv/keyvault.db");
    let u = |p: &str| format!("{}{p}", kv.url);
    let emu = emu();
    let guest_key = UnwrappingKey::generate(2048).unwrap();
    let mut jwk = guest_key.public_key().to_jwk();
    jwk["kid"] = "guest".into();
    let token_a = token(&a1, emu, &json!({"keys": [jwk]}), false);

    // A tenant vault named like the region: tenant and platform namespaces are apart.
    let (st, t) = call("POST", &u("/vaults/westeu"), &kv.admin, None);
    assert_eq!(st, 200, "{t}");
    let tenant = t["credential"].as_str().unwrap().to_string();
    // Only the service administrator creates regions; names are checked.
    let (st, v) = call("POST", &u("/regions/westeu"), &tenant, None);
    assert_refused(st, &v, 401, "unauthorized");
    for bad in ["West-EU", "west_eu", &"a".repeat(33)] {
        let (st, v) = call("POST", &u(&format!("/regions/{bad}")), &kv.admin, None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("bad_parameter")),
            "{bad}"
        );
    }
    let (st, r) = call("POST", &u("/regions/westeu"), &kv.admin, None);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["root_version"], 1);
    assert_eq!(r["role"], "administrator");
    let platform = r["credential"].as_str().unwrap().to_string();
    let (st, v) = call("POST", &u("/regions/westeu"), &kv.admin, None);
    assert_refused(st, &v, 409, "conflict");
    // The platform vault's name cannot be taken by a tenant vault.
    let (st, _) = call(
        "POST",
        &u(&format!("/vaults/{}", r["vault"].as_str().unwrap())),
        &kv.admin,
        None,
    );
    assert_eq!(st, 400);
    // The platform administrator issues credentials like a tenant administrator.
    let (st, c) = call(
        "POST",
        &u("/credentials"),
        &platform,
        Some(json!({"role": "release_user"})),
    );
    assert_eq!(st, 200, "{c}");
    let platform_releaser = c["credential"].as_str().unwrap().to_string();

    // Platform keys: imported (known material) and created; a customer key beside them.
    let material: Vec<u8> = (0u8..32).map(|i| i ^ 0xa5).collect();
    let import = |cred: &str, name: &str, k: &[u8]| {
        call(
            "PUT",
            &u(&format!("/keys/{name}")),
            cred,
            Some(json!({
                "key": {"kty": "oct", "k": B64URL.encode(k)},
                "attributes": {"exportable": true},
                "release_policy": policy(&a1, Value::Null),
            })),
        )
    };
    let (st, pk) = import(&platform, "platform-disk", &material);
    assert_eq!(st, 200, "{pk}");
    assert_eq!(pk["attributes"]["managed"], "platform");
    let tenant_material = [0x11u8; 32];
    let (st, tk) = import(&tenant, "tenant-disk", &tenant_material);
    assert_eq!(st, 200, "{tk}");
    assert_eq!(tk["attributes"]["managed"], "customer");
    // The same key name in both vaults: each sees its own.
    assert_eq!(import(&platform, "shared", &material).0, 200);
    assert_eq!(import(&tenant, "shared", &tenant_material).0, 200);
    let (_, s1) = call("GET", &u("/keys/shared"), &platform, None);
    let (_, s2) = call("GET", &u("/keys/shared"), &tenant, None);
    assert_eq!(s1["attributes"]["managed"], "platform");
    assert_eq!(s2["attributes"]["managed"], "customer");
    // `managed` is read-only: sent back in an update, it is ignored.
    let (st, v) = call(
        "PATCH",
        &u(&format!("/keys/shared/{}", version_of(&s1))),
        &platform,
        Some(json!({"attributes": {"managed": "customer", "enabled": true}})),
    );
    assert_eq!(
        (st, v["attributes"]["managed"].as_str()),
        (200, Some("platform")),
        "{v}"
    );
    let (st, rsa) = call(
        "POST",
        &u("/keys/platform-rsa/create"),
        &platform,
        Some(json!({"kty": "RSA", "key_size": 2048})),
    );
    assert_eq!(
        (st, rsa["attributes"]["managed"].as_str()),
        (200, Some("platform"))
    );
    let (st, kek) = call(
        "POST",
        &u("/keys/platform-kek/create"),
        &platform,
        Some(json!({"kty": "oct", "release_policy": policy(&a1, Value::Null)})),
    );
    assert_eq!(st, 200, "{kek}");
    let kek_v = version_of(&kek);

    // At rest: the platform key is under the region root (not the master key), the
    // customer key directly under the master key.
    let pvault = r["vault"].as_str().unwrap();
    assert_eq!(
        open_at_rest(&db, &master, pvault, "platform-disk"),
        material
    );
    assert_eq!(
        open_at_rest(&db, &master, "westeu", "tenant-disk"),
        tenant_material
    );

    // Release, dry run, wrapkey and attested unwrap work for platform keys.
    let pv = version_of(&pk);
    let release_url = u(&format!("/keys/platform-disk/{pv}/release"));
    let (st, rel) = call(
        "POST",
        &release_url,
        &platform_releaser,
        Some(json!({"target": token_a})),
    );
    assert_eq!(st, 200, "{rel}");
    assert_eq!(released_material(&rel, &guest_key), material);
    let (st, dry) = call(
        "POST",
        &format!("{release_url}/test"),
        &platform_releaser,
        Some(json!({"target": token_a})),
    );
    assert_eq!((st, dry["allowed"].as_bool()), (200, Some(true)), "{dry}");
    let dek = [0x3cu8; 32];
    let (st, w) = call(
        "POST",
        &u(&format!("/keys/platform-kek/{kek_v}/wrapkey")),
        &platform,
        Some(json!({"alg": "A256KW", "value": B64URL.encode(dek)})),
    );
    assert_eq!(st, 200, "{w}");
    let wrapped = w["value"].as_str().unwrap().to_string();
    let unwrap_url = u(&format!("/keys/platform-kek/{kek_v}/unwrapkey/attested"));
    let attested_unwrap = |cred: &str| {
        call(
            "POST",
            &unwrap_url,
            cred,
            Some(json!({"target": token_a, "alg": "A256KW", "value": wrapped})),
        )
    };
    let (st, au) = attested_unwrap(&platform_releaser);
    assert_eq!(st, 200, "{au}");
    let got = unwrapped_hsm(&au);
    assert_eq!(got.unwrap_key(&guest_key).unwrap().as_bytes(), &dek[..]);
    // The same release-policy rules: a policy the token does not satisfy refuses, and
    // the dry run says which condition failed.
    let (st, strict) = call(
        "PUT",
        &u("/keys/platform-strict"),
        &platform,
        Some(json!({
            "key": {"kty": "oct", "k": B64URL.encode(&material)},
            "attributes": {"exportable": true},
            "release_policy": policy(&a1, json!({"claim": "x-ms-sevsnpvm-guestsvn", "equals": 7})),
        })),
    );
    assert_eq!(st, 200, "{strict}");
    let strict_url = u(&format!(
        "/keys/platform-strict/{}/release",
        version_of(&strict)
    ));
    let (st, v) = call(
        "POST",
        &strict_url,
        &platform_releaser,
        Some(json!({"target": token_a})),
    );
    assert_refused(st, &v, 403, "release_policy_denied");
    let (st, v) = call(
        "POST",
        &format!("{strict_url}/test"),
        &platform_releaser,
        Some(json!({"target": token_a})),
    );
    assert_eq!((st, v["allowed"].as_bool()), (200, Some(false)), "{v}");
    assert!(v["policy"].to_string().contains("x-ms-sevsnpvm-guestsvn"));
    assert_eq!(
        call("DELETE", &u("/keys/platform-strict"), &platform, None).0,
        200
    );
    assert_eq!(
        call(
            "DELETE",
            &u("/deletedkeys/platform-strict"),
            &platform,
            None
        )
        .0,
        204
    );

    // Tenant credentials do not see platform keys, nor platform credentials tenant keys.
    let tv = version_of(&tk);
    let tenant_release_url = u(&format!("/keys/tenant-disk/{tv}/release"));
    for (cred, url, get) in [
        (&tenant, &release_url, "/keys/platform-disk"),
        (&platform, &tenant_release_url, "/keys/tenant-disk"),
        (&platform_releaser, &tenant_release_url, "/keys/tenant-disk"),
    ] {
        let (st, v) = call("GET", &u(get), cred, None);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("key_not_found")),
            "{get}"
        );
        let (st, v) = call("POST", url, cred, Some(json!({"target": token_a})));
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("key_not_found")),
            "{url}"
        );
        let (st, v) = call(
            "POST",
            &format!("{url}/test"),
            cred,
            Some(json!({"target": token_a})),
        );
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("key_not_found")),
            "{url}"
        );
    }
    let (st, v) = attested_unwrap(&tenant);
    assert_refused(st, &v, 404, "key_not_found");
    let (_, list) = call("GET", &u("/keys"), &tenant, None);
    assert!(!list.to_string().contains("platform-"), "{list}");
    // The service administrator has no vault of its own.
    assert_eq!(call("GET", &u("/keys"), &kv.admin, None).0, 401);

    // GET /regions: service administrator only.
    assert_eq!(call("GET", &u("/regions"), &platform, None).0, 401);
    let (st, regions) = call("GET", &u("/regions"), &kv.admin, None);
    assert_eq!(st, 200, "{regions}");
    assert_eq!(regions["value"].as_array().unwrap().len(), 1);
    assert_eq!(regions["value"][0]["region"], "westeu");
    assert_eq!(regions["value"][0]["root_version"], 1);
    assert_eq!(regions["value"][0]["keys"], 4);

    // A soft-deleted platform key is resealed too: recovered after the rotation, it opens.
    assert_eq!(call("DELETE", &u("/keys/shared"), &platform, None).0, 200);
    let (st, v) = call("POST", &u("/regions/westeu/rotate"), &platform, None);
    assert_refused(st, &v, 401, "unauthorized");
    let (st, v) = call("POST", &u("/regions/nowhere/rotate"), &kv.admin, None);
    assert_refused(st, &v, 404, "region_not_found");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let old_id: i64 = conn
        .query_row(
            "SELECT id FROM region_roots WHERE region = 'westeu'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let old_root = root_key(&conn, &master, old_id);
    let (st, rot) = call("POST", &u("/regions/westeu/rotate"), &kv.admin, None);
    assert_eq!(st, 200, "{rot}");
    assert_eq!(
        (
            rot["root_version"].as_i64(),
            rot["previous_root_version"].as_i64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(rot["resealed"], 4);
    // One root version is left; every platform key version is sealed under it, and no
    // longer under the old one.
    let roots: Vec<(i64, i64)> = conn
        .prepare("SELECT id, version FROM region_roots WHERE region = 'westeu'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].1, 2);
    let new_id = roots[0].0;
    let (sealed, root_id, version): (Vec<u8>, i64, String) = conn
        .query_row(
            "SELECT sealed, root_id, version FROM key_versions WHERE vault = ?1 AND name = 'platform-disk'",
            [pvault],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(root_id, new_id);
    let ctx = format!("opencvm-keyvault/key/{pvault}/platform-disk/{version}");
    assert!(
        old_root.open(&ctx, &sealed).is_err(),
        "still opens under the old root"
    );
    assert_eq!(
        open_at_rest(&db, &master, pvault, "platform-disk"),
        material
    );
    let untouched: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM key_versions WHERE vault = ?1 AND root_id IS NOT ?2",
            rusqlite::params![pvault, new_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(untouched, 0);
    // The customer key is untouched.
    assert_eq!(
        open_at_rest(&db, &master, "westeu", "tenant-disk"),
        tenant_material
    );

    // After the rotation: release, attested unwrap of the data key wrapped before it, the
    // recovered key, and a new key (sealed under the new root) all work.
    let (st, rel) = call(
        "POST",
        &release_url,
        &platform_releaser,
        Some(json!({"target": token_a})),
    );
    assert_eq!(st, 200, "{rel}");
    assert_eq!(released_material(&rel, &guest_key), material);
    let (st, au) = attested_unwrap(&platform_releaser);
    assert_eq!(st, 200, "{au}");
    assert_eq!(
        call("POST", &u("/deletedkeys/shared/recover"), &platform, None).0,
        200
    );
    let (_, s1) = call("GET", &u("/keys/shared"), &platform, None);
    let (st, rel) = call(
        "POST",
        &u(&format!("/keys/shared/{}/release", version_of(&s1))),
        &platform,
        Some(json!({"target": token_a})),
    );
    assert_eq!(st, 200, "{rel}");
    assert_eq!(released_material(&rel, &guest_key), material);
    let new_material = [0x77u8; 32];
    assert_eq!(import(&platform, "after", &new_material).0, 200);
    assert_eq!(open_at_rest(&db, &master, pvault, "after"), new_material);
    let (_, regions) = call("GET", &u("/regions"), &kv.admin, None);
    assert_eq!(regions["value"][0]["root_version"], 2);
    assert_eq!(regions["value"][0]["keys"], 5);

    // Audited in the platform vault's log, not in the tenant's.
    let (_, log) = call("GET", &u("/audit"), &platform, None);
    let ops: Vec<(String, String, String, String)> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["op"].as_str().unwrap().starts_with("region_"))
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("op"), s("caller"), s("version"), s("outcome"))
        })
        .collect();
    // Refusals too (the second create, a conflict), but not those of callers without
    // the service administrator's credential (a tenant's create, the platform
    // administrator's rotate): unauthenticated requests write nothing.
    let row = |op: &str, caller: &str, version: &str, outcome: &str| {
        (op.into(), caller.into(), version.into(), outcome.into())
    };
    let sa = "service_administrator";
    assert_eq!(
        ops,
        vec![
            row("region_create", sa, "1", "allowed"),
            row("region_create", sa, "", "denied"),
            row("region_rotate", sa, "2", "allowed"),
        ]
    );
    let (_, tlog) = call("GET", &u("/audit"), &tenant, None);
    assert!(!tlog.to_string().contains("region_"));
    assert!(!log.to_string().contains(&B64URL.encode(&material)));
}

#[test]
fn key_types_validity_window_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, kv, admin) = one_tenant(dir.path());
    let u = |p: &str| format!("{}{p}", kv.url);
    let b64len = |v: &Value| B64URL.decode(v.as_str().unwrap()).unwrap().len();

    // Every key type and size the issue lists: public parts of the right sizes.
    for (body, n_or_x) in [
        (json!({"kty": "RSA", "key_size": 2048}), 256),
        (json!({"kty": "RSA", "key_size": 4096}), 512),
        (json!({"kty": "RSA-HSM"}), 256),
        (json!({"kty": "EC", "crv": "P-256"}), 32),
        (json!({"kty": "EC-HSM", "crv": "P-384"}), 48),
    ] {
        let (st, v) = call("POST", &u("/keys/t1/create"), &admin, Some(body.clone()));
        assert_eq!(st, 200, "{body}: {v}");
        let k = &v["key"];
        assert!(k.get("d").is_none() && k.get("p").is_none(), "{k}");
        if k["kty"] == "RSA" {
            assert_eq!(b64len(&k["n"]), n_or_x, "{body}");
            assert_eq!(b64len(&k["e"]), 3);
        } else {
            assert_eq!((b64len(&k["x"]), b64len(&k["y"])), (n_or_x, n_or_x));
        }
    }
    for bad in [
        json!({"kty": "RSA", "key_size": 1024}),
        json!({"kty": "EC", "crv": "P-521"}),
        json!({"kty": "oct", "key_size": 128}),
        json!({"kty": "DES"}),
    ] {
        let (st, v) = call("POST", &u("/keys/t2/create"), &admin, Some(bad.clone()));
        assert_refused(st, &v, 400, "bad_parameter");
    }

    // nbf/exp: a key outside its window is not released (checked before the token).
    let (_, k) = call(
        "POST",
        &u("/keys/w/create"),
        &admin,
        Some(json!({"kty": "oct", "attributes": {"exportable": true},
                    "release_policy": policy(&a1, Value::Null)})),
    );
    let ver = version_of(&k);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let patch = |attrs: Value| {
        let (st, v) = call(
            "PATCH",
            &u(&format!("/keys/w/{ver}")),
            &admin,
            Some(json!({"attributes": attrs, "tags": {"stage": "window"}})),
        );
        assert_eq!(st, 200, "{v}");
        v
    };
    let release = |t: &str| {
        call(
            "POST",
            &u(&format!("/keys/w/{ver}/release")),
            &admin,
            Some(json!({"target": t})),
        )
    };
    let v = patch(json!({"exp": now - 60}));
    assert_eq!(
        (v["attributes"]["exp"].as_i64(), &v["tags"]["stage"]),
        (Some(now - 60), &json!("window"))
    );
    let (st, v) = release("not-a-token");
    assert_refused(st, &v, 403, "key_not_valid_now");
    patch(json!({"exp": now + 3600, "nbf": now + 600}));
    let (st, v) = release("not-a-token");
    assert_refused(st, &v, 403, "key_not_valid_now");
    patch(json!({"nbf": now - 600}));
    let (st, v) = release("not-a-token");
    assert_refused(st, &v, 401, "token_malformed");
    // exportable never changes after creation.
    let (st, v) = call(
        "PATCH",
        &u(&format!("/keys/w/{ver}")),
        &admin,
        Some(json!({"attributes": {"exportable": false}})),
    );
    assert_refused(st, &v, 400, "bad_parameter");

    // Roles: a crypto user creates, imports, reads and updates, but does not delete,
    // purge, issue credentials or read the audit log; a release user only reads and
    // releases.
    let cred = |role: &str| {
        let (st, c) = call(
            "POST",
            &u("/credentials"),
            &admin,
            Some(json!({"role": role})),
        );
        assert_eq!(st, 200, "{c}");
        c["credential"].as_str().unwrap().to_string()
    };
    let crypto = cred("crypto_user");
    let releaser = cred("release_user");
    let (st, c) = call(
        "POST",
        &u("/keys/c/create"),
        &crypto,
        Some(json!({"kty": "oct"})),
    );
    assert_eq!(st, 200, "{c}");
    let cv = version_of(&c);
    let aes = B64URL.encode([9u8; 32]);
    let (st, _) = call(
        "PUT",
        &u("/keys/ci"),
        &crypto,
        Some(json!({"key": {"kty": "oct", "k": aes}})),
    );
    assert_eq!(st, 200);
    assert_eq!(call("GET", &u("/keys/c"), &crypto, None).0, 200);
    assert_eq!(
        call(
            "PATCH",
            &u(&format!("/keys/c/{cv}")),
            &crypto,
            Some(json!({"tags": {"a": "b"}}))
        )
        .0,
        200
    );
    for (method, path, who) in [
        ("DELETE", "/keys/c", &crypto),
        ("DELETE", "/deletedkeys/c", &crypto),
        ("POST", "/deletedkeys/c/recover", &crypto),
        ("POST", "/credentials", &crypto),
        ("GET", "/audit", &crypto),
        ("POST", "/keys/r/create", &releaser),
        ("PUT", "/keys/r", &releaser),
        ("DELETE", "/keys/c", &releaser),
        ("GET", "/audit", &releaser),
    ] {
        let body = (method != "GET" && method != "DELETE").then(|| json!({"role": "release_user"}));
        let (st, v) = call(method, &u(path), who, body);
        assert_refused(st, &v, 403, "forbidden");
    }
    let (st, v) = call(
        "PATCH",
        &u(&format!("/keys/c/{cv}")),
        &releaser,
        Some(json!({"tags": {}})),
    );
    assert_refused(st, &v, 403, "forbidden");
    assert_eq!(call("GET", &u("/keys/c"), &releaser, None).0, 200);
    // The administrator sees every refusal in the log.
    let (_, log) = call("GET", &u("/audit"), &admin, None);
    let refused = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "forbidden")
        .count();
    assert_eq!(refused, 10, "{log}");
}

/// The store is chosen by the embedder (`VaultConfig::store`): the vault keeps
/// everything there and nothing in its state directory's default database.
#[test]
fn the_store_is_injectable() {
    use keyvault::store::{SqlStore, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("db");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let db = elsewhere.join("vaults.db");
    let keys = || {
        let m = seal::MasterKey::load_or_create(&elsewhere.join("master.key")).unwrap();
        keyvault::store::AuditKeys::from_master(&m).unwrap()
    };
    let cfg = VaultConfig {
        state_dir: dir.path().join("state"),
        master_key: seal::MasterKey::load_or_create(&elsewhere.join("master.key")).unwrap(),
        base_url: "http://vault.test".into(),
        authorities: Authorities::new(&[], http_fetch()),
        database: None,
        store: Some(Box::new(
            SqlStore::open(&sqldb::Location::sqlite(&db), keys()).unwrap(),
        )),
    };
    let (vault, created) = keyvault::service::Vault::open(cfg).unwrap();
    let admin = std::fs::read_to_string(created.unwrap()).unwrap();
    use keyvault_api::KeyVaultApi;
    let service = vault.authorize_op(Some(&admin), "create_vault").unwrap();
    let v = vault.create_vault(&service, "t").unwrap();
    let writer = vault
        .authorize_op(Some(&v.credential), "create_key")
        .unwrap();
    let req = keyvault_api::CreateKeyRequest {
        kty: "oct".into(),
        ..Default::default()
    };
    vault.create_key(&writer, "k", req).unwrap();
    drop(vault);
    assert!(!dir.path().join("state/keyvault.db").exists());
    let s = SqlStore::open(&sqldb::Location::sqlite(&db), keys()).unwrap();
    assert!(matches!(
        s.create_vault("t", b"x", 0),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(s.key_names("t", false).unwrap(), ["k"]);
}
