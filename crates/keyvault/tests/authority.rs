//! Token validation against a real attestation service on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jose::{Alg, TokenSigner};
use keyvault::authority::{Authorities, http_fetch};
use serde_json::{Map, Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

struct Attest {
    url: String,
    admin: String,
    _dir: tempfile::TempDir,
}

/// An attestation service trusting `emu`'s roots.
fn attest_service(emu: &Platform) -> Attest {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let master = seal::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
    let mut cfg = attest::ServiceConfig::new(state.clone(), String::new(), master);
    let roots = pem("CERTIFICATE", emu.ask_der())
        + &pem("CERTIFICATE", emu.ark_der())
        + &pem("X509 CRL", &emu.issue_crl(&[]).unwrap());
    cfg.emulator_roots
        .push(attest::EmulatorRoots::from_pem(roots.as_bytes()).unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = attest::server::run("127.0.0.1:0", None, None, cfg, |addr, _| {
            tx.send(addr).unwrap();
        });
        panic!("attestation service stopped: {r:?}");
    });
    let addr = rx.recv().unwrap();
    Attest {
        url: format!("http://{addr}"),
        admin: std::fs::read_to_string(state.join("admin.token")).unwrap(),
        _dir: dir,
    }
}

fn post(url: &str, bearer: Option<&str>, body: &[u8]) -> Value {
    let mut r = ureq::post(url).header("Content-Type", "application/json");
    if let Some(b) = bearer {
        r = r.header("Authorization", format!("Bearer {b}"));
    }
    serde_json::from_str(&r.send(body).unwrap().body_mut().read_to_string().unwrap()).unwrap()
}

/// A token for emulated evidence whose runtime data carries an RSA key.
fn token(a: &Attest, emu: &Platform) -> String {
    let guest = emu.launch(LaunchConfig::default()).unwrap();
    let rt = serde_json::to_vec(
        &json!({"keys": [{"kid": "k", "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}),
    )
    .unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let report = emu.get_report(&guest, &rd, 0).unwrap();
    let chain = pem("CERTIFICATE", emu.vcek_der()) + &emu.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    let body = json!({
        "report": B64URL.encode(serde_json::to_vec(&proof).unwrap()),
        "runtimeData": {"data": B64URL.encode(&rt), "dataType": "JSON"},
    });
    let v = post(
        &format!("{}/attest/SevSnpVm", a.url),
        None,
        body.to_string().as_bytes(),
    );
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn forge(header: Value, claims: &Map<String, Value>, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64URL.encode(sig))
}

#[test]
fn tokens_from_the_attestation_service_and_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
    let a = attest_service(&emu);
    let t = token(&a, &emu);
    let auth = Authorities::new(&[format!("{}/", a.url)], http_fetch());
    let v = auth.validate(&t, now()).unwrap();
    assert_eq!(v.issuer, a.url);
    assert_eq!(v.claims["x-ms-attestation-type"], "sevsnpvm");
    assert!(v.jti.is_some());

    let code = |tok: &str, at: i64| auth.validate(tok, at).unwrap_err().code();
    // Expired (and not yet valid).
    assert_eq!(code(&t, now() + 9 * 3600), "token_expired");
    assert_eq!(code(&t, now() - 3600), "token_not_yet_valid");
    // An issuer the vault was not told to trust.
    let other = Authorities::new(
        &["https://sharedeus2.eus2.attest.azure.net".into()],
        http_fetch(),
    );
    assert_eq!(
        other.validate(&t, now()).unwrap_err().code(),
        "token_unknown_issuer"
    );

    let (header, claims) = jose::peek(&t).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    // alg none.
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "kid": kid}).to_string()),
        B64URL.encode(serde_json::to_vec(&claims).unwrap())
    );
    assert_eq!(code(&none, now()), "token_unsigned");
    // HS256 "signed" with the service's public key (the classic confusion attack).
    let jwks: Value = serde_json::from_str(
        &ureq::get(&format!("{}/certs", a.url))
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
    let hs = forge(json!({"alg": "HS256", "kid": kid}), &claims, |m| {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &n);
        aws_lc_rs::hmac::sign(&k, m).as_ref().to_vec()
    });
    assert_eq!(code(&hs, now()), "token_alg_symmetric");
    // Signed by a key that is not in the JWKS: under the service's kid, and under its own.
    let rogue = TokenSigner::generate(Alg::RS256, "rogue", now(), 1).unwrap();
    let forged = forge(json!({"alg": "RS256", "kid": kid}), &claims, |m| {
        rogue.sign_raw(m).unwrap()
    });
    assert_eq!(code(&forged, now()), "token_bad_signature");
    let own = rogue.sign(&claims, "http://rogue/certs").unwrap();
    assert_eq!(code(&own, now()), "token_unknown_key");
    // A payload changed after signing.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    let mut c = claims.clone();
    c.insert(
        "x-ms-compliance-status".into(),
        "azure-compliant-cvm".into(),
    );
    parts[1] = B64URL.encode(serde_json::to_vec(&c).unwrap());
    assert_eq!(code(&parts.join("."), now()), "token_bad_signature");

    // Rotation: the service's new key is fetched when a token names it.
    let eager = Authorities::new(std::slice::from_ref(&a.url), http_fetch())
        .with_min_refresh(std::time::Duration::ZERO);
    eager.validate(&t, now()).unwrap(); // caches the JWKS with the old key only
    let r = post(
        &format!("{}/signing-keys/rotate", a.url),
        Some(&a.admin),
        b"",
    );
    assert!(r["kid"].is_string(), "{r}");
    let t2 = token(&a, &emu);
    assert_ne!(jose::peek(&t2).unwrap().0["kid"], kid);
    // The cache was filled moments ago: within `min_refresh` the unknown key is not
    // looked up again.
    assert_eq!(code(&t2, now()), "token_unknown_key");
    eager.validate(&t2, now()).unwrap();
    // Old and new keys both stay in the JWKS: the first token still validates.
    eager.validate(&t, now()).unwrap();
}
