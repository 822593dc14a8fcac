//! `cvm attest serve|token verify|policy` as processes, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{Served, cvm, json_of};
use serde_json::{Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

fn serve(state: &Path) -> Served {
    serve_with(state, &[])
}

/// `cvm attest serve` trusting the roots of the emulated platform beside `state` (the
/// one [`request`] launches guests on), its master key beside `state` too.
fn serve_with(state: &Path, extra: &[&str]) -> Served {
    serve_logged(state, extra, &[], None)
}

/// [`serve_with`] with environment variables and the log (stderr) written to `log`.
fn serve_logged(state: &Path, extra: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Served {
    let parent = state.parent().unwrap();
    let paths = common::AttestPaths {
        roots_of: parent,
        master: &parent.join("master.key"),
        state,
        cache: &state.join("kds-cache"),
    };
    common::attest_serve_with(&paths, extra, env, log)
}

fn post(url: &str, body: &[u8]) -> (u16, Value) {
    let agent = common::agent();
    let mut r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap(),
    )
}

/// An emulated guest's MAA SevSnpVm request body.
fn request(dir: &Path, debug: bool) -> Vec<u8> {
    request_with(dir, debug, br#"{"purpose":"cli test"}"#)
}

/// [`request`] with the runtime data `rt` (JSON) bound by REPORT_DATA.
fn request_with(dir: &Path, debug: bool, rt: &[u8]) -> Vec<u8> {
    let p = Platform::open(&dir.join("emu"))
        .or_else(|_| Platform::create(&dir.join("emu"), PlatformConfig::new(Product::Milan), None))
        .unwrap();
    let mut cfg = LaunchConfig::default();
    if debug {
        cfg.policy |= 1 << 19;
    }
    let guest = p.launch(cfg).unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rt).as_ref());
    let report = p.get_report(&guest, &rd, 0).unwrap();
    let chain = pem("CERTIFICATE", p.vcek_der()) + &p.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    serde_json::to_vec(&json!({
        "report": B64URL.encode(serde_json::to_vec(&proof).unwrap()),
        "runtimeData": {"data": B64URL.encode(rt), "dataType": "JSON"},
    }))
    .unwrap()
}

#[test]
fn serve_attest_verify_and_manage_policy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = serve(&state);
    let token_file = state.join("admin.token");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );

    let body = request(dir.path(), false);
    let (st, v) = post(
        &format!("{}/attest/SevSnpVm?api-version=2022-08-01", s.url),
        &body,
    );
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();

    // A relying party: the issuer's discovery document names the JWKS.
    let out = cvm(&["attest", "token", "verify", &token, "--issuer", &s.url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_of(&out);
    assert_eq!(j["verdict"], "valid");
    assert_eq!(j["claims"]["x-ms-runtime"]["purpose"], "cli test");
    // JWKS from a file, token from a file.
    let jwks_file = dir.path().join("jwks.json");
    let jwks = ureq::get(&format!("{}/certs", s.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    std::fs::write(&jwks_file, &jwks).unwrap();
    let tf = dir.path().join("token.jwt");
    std::fs::write(&tf, &token).unwrap();
    let out = cvm(&[
        "attest",
        "token",
        "verify",
        tf.to_str().unwrap(),
        "--jwks",
        jwks_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    // Invalid: tampered payload, expired, wrong issuer, only ES384 allowed.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = B64URL.encode(br#"{"exp": 9999999999}"#);
    parts[1] = &forged_payload;
    let forged = parts.join(".");
    for (args, code) in [
        (
            vec![forged.as_str(), "--jwks", jwks_file.to_str().unwrap()],
            "bad_signature",
        ),
        (
            vec![
                token.as_str(),
                "--jwks",
                jwks_file.to_str().unwrap(),
                "--at",
                "2200-01-01T00:00:00Z",
            ],
            "token_expired",
        ),
        (
            vec![
                token.as_str(),
                "--jwks",
                jwks_file.to_str().unwrap(),
                "--issuer",
                "http://elsewhere",
            ],
            "issuer_mismatch",
        ),
        (
            vec![
                token.as_str(),
                "--jwks",
                jwks_file.to_str().unwrap(),
                "--alg",
                "ES384",
            ],
            "alg_not_allowed",
        ),
    ] {
        let mut a = vec!["attest", "token", "verify"];
        a.extend(args);
        let out = cvm(&a);
        assert_eq!(out.status.code(), Some(1), "{code}");
        assert_eq!(json_of(&out)["code"], code);
    }
    // Could not check: no JWKS reachable.
    let out = cvm(&[
        "attest",
        "token",
        "verify",
        &token,
        "--jwks",
        "/nonexistent.json",
    ]);
    assert_eq!(out.status.code(), Some(2));

    // Policies through the CLI.
    let tok = token_file.to_str().unwrap();
    let out = cvm(&[
        "attest",
        "policy",
        "get",
        "--url",
        &s.url,
        "--token-file",
        tok,
    ]);
    assert!(out.status.success());
    assert_eq!(json_of(&out)["default"], true);
    let pol = dir.path().join("p.rego");
    std::fs::write(
        &pol,
        "package policy\nimport rego.v1\ndefault allow := false\nallow if count(deny) == 0\n\
         deny contains {\"rule\": \"purpose\", \"message\": \"wrong purpose\"} if input[\"x-ms-runtime\"].purpose != \"prod\"\n",
    )
    .unwrap();
    let out = cvm(&[
        "attest",
        "policy",
        "set",
        "--url",
        &s.url,
        "--token-file",
        tok,
        pol.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(json_of(&out)["version"], 1);
    let ev = dir.path().join("ev.json");
    std::fs::write(&ev, &body).unwrap();
    let out = cvm(&[
        "attest",
        "policy",
        "test",
        "--url",
        &s.url,
        "--evidence",
        ev.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let j = json_of(&out);
    assert_eq!(
        (j["decision"].as_str(), j["deny"][0]["rule"].as_str()),
        (Some("deny"), Some("purpose"))
    );
    // A draft that allows it, sent by the administrator: allow, and still no token.
    let draft = dir.path().join("draft.rego");
    std::fs::write(&draft, "package policy\nallow := true\n").unwrap();
    let out = cvm(&[
        "attest",
        "policy",
        "test",
        "--url",
        &s.url,
        "--evidence",
        ev.to_str().unwrap(),
        "--policy",
        draft.to_str().unwrap(),
        "--token-file",
        tok,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j = json_of(&out);
    assert_eq!(j["decision"], "allow");
    assert!(j.get("token").is_none());
    // Without the credential: refused, exit 2.
    let bad = dir.path().join("bad.token");
    std::fs::write(&bad, "nope").unwrap();
    let out = cvm(&[
        "attest",
        "policy",
        "set",
        "--url",
        &s.url,
        "--token-file",
        bad.to_str().unwrap(),
        pol.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["error"]["code"], "unauthorized");

    // kill -9, restart on the same state: same signing key, same policy version; the
    // token issued before still verifies against the new process's JWKS.
    let kid_before = json_of(&cvm(&[
        "attest", "token", "verify", &token, "--issuer", &s.url,
    ]))["kid"]
        .clone();
    drop(s);
    let s2 = serve(&state);
    let out = cvm(&[
        "attest",
        "token",
        "verify",
        &token,
        "--jwks",
        &format!("{}/certs", s2.url),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_of(&out)["kid"], kid_before);
    let out = cvm(&[
        "attest",
        "policy",
        "get",
        "--url",
        &s2.url,
        "--token-file",
        tok,
    ]);
    assert_eq!(json_of(&out)["version"], 1);
}

#[test]
fn https_serve_and_verify_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = Command::new("python3")
        .arg(root.join("tests/oracles/make_tls_cert.py"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    let s = serve_with(
        &dir.path().join("state"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    // The admin credential file and the policy API over HTTPS with the private CA.
    let tok = dir.path().join("state/admin.token");
    let out = cvm(&[
        "attest",
        "policy",
        "get",
        "--url",
        &s.url,
        "--token-file",
        tok.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["version"], 0);
    // Without the CA, the Mozilla roots do not vouch for it: could not check (exit 2).
    let out = cvm(&[
        "attest",
        "policy",
        "get",
        "--url",
        &s.url,
        "--token-file",
        tok.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = cvm(&["attest", "token", "verify", "a.b.c", "--issuer", &s.url]);
    assert_eq!(out.status.code(), Some(2));
    let out = cvm(&[
        "attest",
        "token",
        "verify",
        "a.b.c",
        "--issuer",
        &s.url,
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["code"], "malformed_token");
}

/// The master key must live outside the state directory (as the key vault's does), and
/// only an emulator's roots can be pinned as emulator roots.
#[test]
fn master_key_outside_the_state_and_emulator_roots_by_pin() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "attest",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            st,
            "--offline",
        ];
        args.extend_from_slice(extra);
        cvm(&args)
    };
    let out = serve(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--master-key"));
    let inside = state.join("master.key");
    let out = serve(&["--master-key", inside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside --state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!inside.exists());
    // A state directory from before, with its key inside: refused with what to do.
    std::fs::create_dir_all(state.join("keys")).unwrap();
    std::fs::write(state.join("keys/master.key"), "00".repeat(32)).unwrap();
    let outside = dir.path().join("master.key");
    let out = serve(&["--master-key", outside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("move it elsewhere"));
    std::fs::remove_dir_all(state.join("keys")).unwrap();
    // AMD's own roots are not an emulator's.
    let amd = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/snp/go-sev-guest/ask_ark_milan.pem");
    let out = serve(&[
        "--master-key",
        outside.to_str().unwrap(),
        "--dangerously-trust-emulator-roots",
        amd.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an emulated ARK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reference values from the CLI (computed from a real OVMF image as `cvm snp
/// measure` computes it), and the audit log checked offline, then tampered with.
#[test]
fn reference_values_and_the_audit_log_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = serve(&state);
    let token = state.join("admin.token");
    let out = cvm(&[
        "attest",
        "reference-value",
        "add",
        "--url",
        &s.url,
        "--token-file",
        token.to_str().unwrap(),
        "--region",
        "lab",
        "--ovmf",
        "/usr/share/ovmf/OVMF.fd",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = json_of(&out);
    let measured = cvm(&[
        "snp",
        "measure",
        "--ovmf",
        "/usr/share/ovmf/OVMF.fd",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert_eq!(
        added["measurement"].as_str().unwrap(),
        String::from_utf8_lossy(&measured.stdout).trim()
    );
    let out = cvm(&["attest", "reference-value", "list", "--url", &s.url]);
    assert_eq!(json_of(&out)["value"][0]["region"], "lab");
    drop(s);
    let master = dir.path().join("master.key");
    let verify = || {
        cvm(&[
            "attest",
            "audit-verify",
            "--state",
            state.to_str().unwrap(),
            "--master-key",
            master.to_str().unwrap(),
        ])
    };
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let py = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(\"DROP TRIGGER audit_append_only_update; UPDATE audit SET caller='someone else' WHERE seq=1;\"); c.commit()",
            state.join("attest.db").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("entry 1"));
}

/// `--log-format json` on the attestation service: every line a JSON object, each
/// answer logged with the request's id (the one the answer names in `x-request-id`),
/// and neither the administrator credential nor an issued token in the log.
#[test]
fn json_logs_of_the_attestation_service_carry_request_ids_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let master = dir.path().join("master.key");
    let log = dir.path().join("attest.log");
    let s = serve_logged(
        &state,
        &["--log-format", "json"],
        &[("CVM_LOG", "debug")],
        Some(&log),
    );
    let admin = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let agent = common::agent();
    let mut r = agent
        .post(format!("{}/attest/SevSnpVm", s.url))
        .header("Content-Type", "application/json")
        .send(&request(dir.path(), false)[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let (st, _) = post(&format!("{}/attest/SevSnpVm", s.url), b"{}");
    assert_eq!(st, 400);
    let r = agent
        .get(format!("{}/policies/SevSnpVm", s.url))
        .header("Authorization", format!("Bearer {}", admin.trim()))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(s);
    let (text, lines) = common::json_log(&log);
    let answered = common::answered(&lines);
    assert_eq!(answered.len(), 3, "{text}");
    assert!(
        answered
            .iter()
            .any(|l| l["span"]["request_id"] == id.as_str()
                && l["fields"]["status"] == 200
                && l["span"]["path"] == "/attest/SevSnpVm"),
        "{text}"
    );
    assert!(
        answered.iter().any(|l| l["fields"]["status"] == 400),
        "{text}"
    );
    assert!(
        !text.contains(admin.trim()),
        "the administrator credential is in the log"
    );
    assert!(!text.contains(&token), "the token is in the log");
    let master_hex = std::fs::read_to_string(&master).unwrap();
    assert!(
        !text.contains(master_hex.trim()),
        "the master key is in the log"
    );
}

/// The `kid`s of a JWKS document.
fn kids(jwks: &Value) -> Vec<String> {
    let mut k: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

fn get_json(url: &str) -> Value {
    let body = ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

fn post_admin(url: &str, bearer: &str) -> (u16, Value) {
    let mut r = common::agent()
        .post(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .send(&[][..])
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

#[test]
fn attestation_replicas_on_one_postgres_database_share_providers_keys_and_nonces() {
    let Some(pg) = sqldb::scratch::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Both replicas take the master key beside their state directories: the same file.
    let a = serve_with(&d.join("a"), &["--database", &pg.url]);
    let b = serve_with(&d.join("b"), &["--database", &pg.url]);
    let admin = std::fs::read_to_string(d.join("a/admin.token")).unwrap();
    assert!(!d.join("b/admin.token").exists());
    assert_eq!(
        kids(&get_json(&format!("{}/certs", a.url))),
        kids(&get_json(&format!("{}/certs", b.url)))
    );

    // A nonce issued by A is accepted by B, once: a replay through either is refused.
    let nonce = get_json(&format!("{}/nonce", a.url))["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let body = request_with(d, false, json!({"nonce": nonce}).to_string().as_bytes());
    let attest = |url: &str| post(&format!("{url}/attest/SevSnpVm"), &body);
    let (st, v) = attest(&b.url);
    assert_eq!(st, 200, "{v}");
    for url in [&a.url, &b.url] {
        let (st, v) = attest(url);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("nonce_replayed")),
            "{v}"
        );
    }

    // A signing key rotated through A signs B's next token; revoked through A, the old
    // key leaves B's JWKS at once.
    let before = kids(&get_json(&format!("{}/certs", b.url)));
    let (st, v) = post_admin(&format!("{}/signing-keys/rotate", a.url), &admin);
    assert_eq!(st, 200, "{v}");
    let new_kid = v["kid"].as_str().unwrap().to_string();
    let jwks_b = get_json(&format!("{}/certs", b.url));
    assert!(kids(&jwks_b).contains(&new_kid) && kids(&jwks_b).len() == before.len() + 1);
    let (st, v) = post(&format!("{}/attest/SevSnpVm", b.url), &request(d, false));
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap();
    let header: Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
    let (st, v) = post_admin(
        &format!("{}/signing-keys/{}/revoke", a.url, before[0]),
        &admin,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(kids(&get_json(&format!("{}/certs", b.url))), [new_kid]);

    // One audit log, intact, read back from the database.
    let out = cvm(&[
        "attest",
        "audit-verify",
        "--state",
        d.join("b").to_str().unwrap(),
        "--master-key",
        d.join("master.key").to_str().unwrap(),
        "--database",
        &pg.url,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
