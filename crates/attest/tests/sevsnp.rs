//! The real server on 127.0.0.1:0 with emulated SEV-SNP evidence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use attest::jwt::{Jwks, VerifyOptions, verify};
use common::*;
use serde_json::{Value, json};
use snp::product::Product;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn jwks(s: &Server, prefix: &str) -> Jwks {
    let (st, v) = call("GET", &format!("{}{prefix}/certs", s.url), None, None);
    assert_eq!(st, 200);
    serde_json::from_value(v).unwrap()
}

#[test]
fn emulated_evidence_to_token_checked_by_pyjwt() {
    let s = start(true);
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let (st, n) = call("GET", &format!("{}/nonce", s.url), None, None);
    assert_eq!(st, 200);
    let nonce = n["nonce"].as_str().unwrap().to_string();
    let runtime =
        json!({ "nonce": nonce, "keys": [{"kid": "k1", "kty": "RSA", "n": "AQAB", "e": "AQAB"}] });
    let body = emu.request(&guest, &runtime, Some(&nonce));
    // A nonce is used up only by a token: neither evidence the policy denies nor a dry
    // run uses it.
    let debug = emu.request(&emu.guest(true), &runtime, Some(&nonce));
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&debug),
    );
    common::assert_refused(st, &v, 403, "policy_denied");
    let dry = json!({"evidence": serde_json::from_slice::<Value>(&body).unwrap()});
    let (st, v) = call(
        "POST",
        &format!("{}/policies/SevSnpVm/test", s.url),
        None,
        Some(dry.to_string().as_bytes()),
    );
    assert_eq!((st, &v["decision"]), (200, &json!("allow")), "{v}");
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm?api-version=2022-08-01", s.url),
        None,
        Some(&body),
    );
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap();

    // Our own verifier, against the served JWKS.
    let mut o = VerifyOptions::at(now());
    o.issuer = Some(s.url.clone());
    let verified = verify(token, &jwks(&s, ""), &o).unwrap();
    let c = &verified.claims;
    assert_eq!(c["x-ms-attestation-type"], "sevsnpvm");
    assert_eq!(c["x-opencvm-emulated"], true);
    assert_eq!(
        c["x-ms-compliance-status"],
        "opencvm-emulated-not-compliant"
    );
    assert_eq!(c["nonce"], nonce.as_str());
    assert_eq!(c["x-ms-runtime"], runtime);
    assert_eq!(c["x-ms-sevsnpvm-launchmeasurement"], "11".repeat(48));
    assert_eq!(c["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(c["x-ms-sevsnpvm-vmpl"], 0);
    assert_eq!(verified.header["jku"], format!("{}/certs", s.url));
    // x-ms-policy-hash is that of the default policy in force.
    let (_, pol) = call(
        "GET",
        &format!("{}/policies/SevSnpVm", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(c["x-ms-policy-hash"], pol["policyHash"]);
    assert_eq!(
        c["x-ms-policy-hash"].as_str().unwrap(),
        attest::policy::policy_hash(pol["policy"].as_str().unwrap())
    );

    // An independent client: PyJWT via OIDC discovery + JWKS (x5c checked too).
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("token");
    std::fs::write(&tf, token).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/oracles/verify_jwt.py"))
        .arg(&s.url)
        .arg(&tf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["jti"], c["jti"]);
    assert_eq!(py["x-ms-sevsnpvm-reportid"], c["x-ms-sevsnpvm-reportid"]);

    // The same nonce again: replayed.
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&body),
    );
    common::assert_refused(st, &v, 400, "nonce_replayed");
    // The same evidence without the request's `nonce` field: the runtime data still
    // binds the used service nonce, so no second token either.
    let mut stripped: Value = serde_json::from_slice(&body).unwrap();
    stripped.as_object_mut().unwrap().remove("nonce");
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(stripped.to_string().as_bytes()),
    );
    common::assert_refused(st, &v, 400, "nonce_replayed");
    // A fresh service nonce bound only in the runtime data is checked and used up too.
    let fresh = call("GET", &format!("{}/nonce", s.url), None, None).1["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let implicit = emu.request(&guest, &json!({ "nonce": fresh }), None);
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&implicit),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        claims_of(v["token"].as_str().unwrap())["nonce"],
        fresh.as_str()
    );
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&implicit),
    );
    common::assert_refused(st, &v, 400, "nonce_replayed");
}

#[test]
fn refusals_have_their_own_codes() {
    let s = start(true);
    let emu = emulator(Product::Genoa);
    let guest = emu.guest(false);
    let url = format!("{}/attest/SevSnpVm", s.url);
    let code = |body: &[u8]| {
        let (st, v) = call("POST", &url, None, Some(body));
        (
            st,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
        )
    };
    let fresh = || {
        call("GET", &format!("{}/nonce", s.url), None, None).1["nonce"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // A nonce never issued.
    let rt = json!({ "nonce": "bm90LWlzc3VlZA" });
    assert_eq!(
        code(&emu.request(&guest, &rt, Some("bm90LWlzc3VlZA"))),
        (400, "nonce_unknown".into())
    );
    // A nonce issued but not the one inside the evidence.
    let (a, b) = (fresh(), fresh());
    assert_eq!(
        code(&emu.request(&guest, &json!({ "nonce": a }), Some(&b))),
        (400, "nonce_not_bound".into())
    );

    // A debug guest: the default policy denies it and says which rule.
    let dbg = emu.guest(true);
    let (st, v) = call(
        "POST",
        &url,
        None,
        Some(&emu.request(&dbg, &json!({}), None)),
    );
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_denied");
    assert_eq!(v["error"]["detail"]["deny"][0]["rule"], "no-debug");

    // A report requested from VMPL 2.
    let rt = serde_json::to_vec(&json!({})).unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let r2 = emu.report(&guest, rd, 2);
    let (st, v) = call(
        "POST",
        &url,
        None,
        Some(&request_json(&r2, Some(&emu.chain_pem()), Some(&rt), None)),
    );
    assert_eq!(
        (st, v["error"]["detail"]["deny"][0]["rule"].as_str()),
        (403, Some("vmpl-0")),
        "{v}"
    );

    // Tampered report: one byte of the measurement flipped.
    let mut t = emu.report(&guest, rd, 0);
    t[0x90] ^= 1;
    assert_eq!(
        code(&request_json(&t, Some(&emu.chain_pem()), Some(&rt), None)),
        (400, "bad_signature".into())
    );
    // Runtime data the report does not bind.
    let other = serde_json::to_vec(&json!({"x": 1})).unwrap();
    let good = emu.report(&guest, rd, 0);
    assert_eq!(
        code(&request_json(
            &good,
            Some(&emu.chain_pem()),
            Some(&other),
            None
        )),
        (400, "runtime_data_unbound".into())
    );
    // Malformed JSON, a truncated report, no chain and no cache, an oversized body.
    assert_eq!(code(b"{not json"), (400, "malformed_json".into()));
    assert_eq!(
        code(&request_json(
            &good[..100],
            Some(&emu.chain_pem()),
            None,
            None
        )),
        (400, "malformed_report".into())
    );
    assert_eq!(
        code(&request_json(&good, None, None, None)),
        (424, "missing_collateral".into())
    );
    let big = vec![b' '; attest::server::MAX_BODY + 1];
    assert_eq!(code(&big), (413, "body_too_large".into()));
    // Unknown attestation type and unknown endpoint: JSON 404s.
    let (st, v) = call("POST", &format!("{}/attest/Tdx", s.url), None, Some(b"{}"));
    common::assert_refused(st, &v, 404, "not_found");
    // A known path with another method: a JSON 405.
    let (st, v) = call("GET", &format!("{}/attest/SevSnpVm", s.url), None, None);
    common::assert_refused(st, &v, 405, "method_not_allowed");
}

#[test]
fn emulated_evidence_needs_the_service_and_the_provider_to_allow_it() {
    // Service without --allow-emulated: the emulator's root is not trusted at all.
    let s = start(false);
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&body),
    );
    common::assert_refused(st, &v, 400, "emulated_root");

    // Service trusts the emulator, but a named provider does not allow it by default.
    let s = start(true);
    let (st, v) = call(
        "POST",
        &format!("{}/providers/tenant-a", s.url),
        Some(&s.admin),
        Some(b""),
    );
    assert_eq!(st, 200, "{v}");
    let tenant_admin = v["adminToken"].as_str().unwrap().to_string();
    let url = format!("{}/providers/tenant-a/attest/SevSnpVm", s.url);
    let (st, v) = call("POST", &url, None, Some(&body));
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        v["error"]["detail"]["deny"][0]["rule"],
        "no-emulated-platform"
    );
    // Its administrator allows emulated platforms: now a token, signed by its own key.
    let (st, _) = call(
        "PUT",
        &format!("{}/providers/tenant-a/settings", s.url),
        Some(&tenant_admin),
        Some(br#"{"allow_emulated": true}"#),
    );
    assert_eq!(st, 200);
    let (st, v) = call("POST", &url, None, Some(&body));
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap();
    let issuer = format!("{}/providers/tenant-a", s.url);
    let mut o = VerifyOptions::at(now());
    o.issuer = Some(issuer.clone());
    verify(token, &jwks(&s, "/providers/tenant-a"), &o).unwrap();
    // Not with the default provider's keys.
    assert_eq!(
        verify(token, &jwks(&s, ""), &o).unwrap_err().code(),
        "unknown_kid"
    );
    // The tenant's credential does not administer the default provider.
    let (st, _) = call(
        "GET",
        &format!("{}/policies/SevSnpVm", s.url),
        Some(&tenant_admin),
        None,
    );
    assert_eq!(st, 401);
    // A provider settings measurement allow-list: the guest's measurement is not on it.
    let (st, _) = call(
        "PUT",
        &format!("{}/providers/tenant-a/settings", s.url),
        Some(&tenant_admin),
        Some(
            json!({"allow_emulated": true, "measurements": ["22".repeat(48)]})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(st, 200);
    let (st, v) = call("POST", &url, None, Some(&body));
    assert_eq!(
        (st, v["error"]["detail"]["deny"][0]["rule"].as_str()),
        (403, Some("measurement-allow-list")),
        "{v}"
    );
}

#[test]
fn policies_are_versioned_and_dry_runs_name_the_rule() {
    let s = start(true);
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    let purl = format!("{}/policies/SevSnpVm", s.url);
    // Without the credential: refused.
    let (st, v) = call("PUT", &purl, None, Some(b"package policy\nallow := true"));
    common::assert_refused(st, &v, 401, "unauthorized");
    // Not Rego: refused with the parser's message.
    let (st, v) = call(
        "PUT",
        &purl,
        Some(&s.admin),
        Some(br#"{"policy": "package policy\nallow := ("}"#),
    );
    common::assert_refused(st, &v, 400, "invalid_policy");
    // A policy that requires guest SVN >= 5.
    let policy = r#"package policy
import rego.v1
default allow := false
allow if count(deny) == 0
deny contains {"rule": "min-guest-svn", "message": sprintf("guest SVN %v < 5", [input["x-ms-sevsnpvm-guestsvn"]])} if {
  input["x-ms-sevsnpvm-guestsvn"] < 5
}
"#;
    let (st, v) = call(
        "PUT",
        &purl,
        Some(&s.admin),
        Some(json!({"policy": policy}).to_string().as_bytes()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 1);
    let (_, got) = call("GET", &purl, Some(&s.admin), None);
    assert_eq!(
        (got["version"].as_i64(), got["policy"].as_str()),
        (Some(1), Some(policy))
    );
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&body),
    );
    assert_eq!(st, 403);
    assert_eq!(v["error"]["detail"]["deny"][0]["rule"], "min-guest-svn");
    assert_eq!(
        v["error"]["detail"]["deny"][0]["message"],
        "guest SVN 0 < 5"
    );

    // Dry run through the test endpoint with a draft that allows it: decision and
    // claims, no token.
    let draft = "package policy\nimport rego.v1\nallow if input[\"x-ms-sevsnpvm-vmpl\"] == 0\n";
    let req: Value = serde_json::from_slice(&body).unwrap();
    let draft_body = json!({"policy": draft, "evidence": req}).to_string();
    // A draft policy is code the service runs: only the administrator may send one.
    let (st, v) = call(
        "POST",
        &format!("{purl}/test"),
        None,
        Some(draft_body.as_bytes()),
    );
    common::assert_refused(st, &v, 401, "unauthorized");
    let (st, v) = call(
        "POST",
        &format!("{purl}/test"),
        Some(&s.admin),
        Some(draft_body.as_bytes()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["decision"], "allow");
    assert!(v.get("token").is_none());
    assert_eq!(v["claims"]["x-ms-sevsnpvm-vmpl"], 0);
    // The policy in force (no draft): deny, naming the rule.
    let (_, v) = call(
        "POST",
        &format!("{purl}/test"),
        None,
        Some(json!({"evidence": req}).to_string().as_bytes()),
    );
    assert_eq!(
        (v["decision"].as_str(), v["deny"][0]["rule"].as_str()),
        (Some("deny"), Some("min-guest-svn"))
    );
    // draftPolicyForAttestation on the attest endpoint is a dry run too: never a token.
    let mut with_draft = req.clone();
    with_draft["draftPolicyForAttestation"] = "package policy\nallow := true".into();
    let url = format!("{}/attest/SevSnpVm", s.url);
    let (st, _) = call("POST", &url, None, Some(with_draft.to_string().as_bytes()));
    assert_eq!(st, 401);
    let (st, v) = call(
        "POST",
        &url,
        Some(&s.admin),
        Some(with_draft.to_string().as_bytes()),
    );
    assert_eq!((st, v["decision"].as_str()), (200, Some("allow")));
    assert!(
        v.get("token").is_none(),
        "a draft policy must never mint a token"
    );
    // A policy whose allow is false without reasons: the dry run says `allow`.
    let (_, v) = call(
        "POST",
        &format!("{purl}/test"),
        Some(&s.admin),
        Some(
            json!({"policy": "package policy\nallow := false", "evidence": req})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(v["deny"][0]["rule"], "allow");
}

#[test]
fn signing_key_rotation_keeps_old_tokens_verifiable() {
    let s = start_with(true, |c| c.token_alg = attest::jwt::Alg::ES384);
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    let url = format!("{}/attest/SevSnpVm", s.url);
    let (_, v) = call("POST", &url, None, Some(&body));
    let old = v["token"].as_str().unwrap().to_string();
    let (st, _) = call(
        "POST",
        &format!("{}/signing-keys/rotate", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200);
    let (_, v) = call("POST", &url, None, Some(&body));
    let new = v["token"].as_str().unwrap().to_string();
    let keys = jwks(&s, "");
    assert_eq!(keys.keys.len(), 2);
    let o = VerifyOptions::at(now());
    let a = verify(&old, &keys, &o).unwrap();
    let b = verify(&new, &keys, &o).unwrap();
    assert_eq!(a.alg, attest::jwt::Alg::ES384);
    assert_ne!(a.header["kid"], b.header["kid"]);
}

#[test]
fn without_a_chain_the_vek_comes_from_the_collateral_cache() {
    use snp::collateral::{CollateralCache, Fetcher};
    use snp::kds::{KdsRequest, VcekQuery};
    let emu = emulator(Product::Genoa);
    let guest = emu.guest(false);
    let rt = serde_json::to_vec(&json!({})).unwrap();
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let report = emu.report(&guest, rd, 0);
    let parsed = snp::report::AttestationReport::parse(&report).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CollateralCache::open(cache_dir.path()).unwrap();
    let vcek = KdsRequest::Vcek(
        VcekQuery::new(Product::Genoa, parsed.chip_id(), parsed.reported_tcb()).unwrap(),
    );
    cache.put(&vcek, emu.platform.vcek_der()).unwrap();
    cache
        .put(
            &KdsRequest::CertChain {
                product: Product::Genoa,
                kind: snp::cert::VekKind::Vcek,
            },
            (snp_emu::platform::pem("CERTIFICATE", emu.platform.ask_der())
                + &snp_emu::platform::pem("CERTIFICATE", emu.platform.ark_der()))
                .as_bytes(),
        )
        .unwrap();
    let s = start_with(true, |c| c.collateral = Some(Fetcher::offline(cache)));
    let body = request_json(&report, None, Some(&rt), None);
    let (st, v) = call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(&body),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        claims_of(v["token"].as_str().unwrap())["x-ms-sevsnpvm-product"],
        "Genoa"
    );
}

#[test]
fn signing_keys_are_sealed_at_rest() {
    let s = start(true);
    // The service has made and stored its RSA signing key by now.
    let (st, _) = call("GET", &format!("{}/certs", s.url), None, None);
    assert_eq!(st, 200);
    let db = std::fs::read(s.state.join("attest.db")).unwrap();
    let wal = std::fs::read(s.state.join("attest.db-wal")).unwrap_or_default();
    // An RSA PKCS#8 private key starts its key field with the rsaEncryption algorithm
    // identifier followed by an OCTET STRING; a certificate's public key has a BIT STRING
    // there instead. Neither file may hold a plaintext private key.
    let pkcs8_marker: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x04,
    ];
    let spki_marker: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x03,
    ];
    let all = [db, wal].concat();
    assert!(
        all.windows(spki_marker.len()).any(|w| w == spki_marker),
        "the certificate is stored"
    );
    assert!(
        !all.windows(pkcs8_marker.len()).any(|w| w == pkcs8_marker),
        "a private key is in plaintext"
    );
    // The master key lives in its own file, mode 0600, outside the state directory.
    assert!(!s.state.join("keys").exists());
    let meta = std::fs::metadata(s.state.parent().unwrap().join("master.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn https_with_a_certificate_and_pyjwt_over_tls() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/oracles/make_tls_cert.py"))
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls = attest::server::TlsFiles {
        cert: certs.path().join("cert.pem"),
        key: certs.path().join("key.pem"),
    };
    let s = start_full(true, Some(tls), |_| {});
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let ca = CertificateDer::from_pem_file(certs.path().join("ca.pem")).unwrap();
    let agent = tls_agent(&ca);
    let emu = emulator(Product::Milan);
    let body = emu.request(&emu.guest(false), &json!({}), None);
    let mut r = agent
        .post(&format!("{}/attest/SevSnpVm", s.url))
        .header("Content-Type", "application/json")
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(
        claims_of(token)["iss"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    // PyJWT fetches discovery and JWKS over HTTPS, trusting only our test CA.
    let tf = certs.path().join("token");
    std::fs::write(&tf, token).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/oracles/verify_jwt.py"))
        .arg(&s.url)
        .arg(&tf)
        .env("SSL_CERT_FILE", certs.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that does not trust the certificate cannot talk to it.
    let other = tempfile::tempdir().unwrap();
    Command::new("python3")
        .arg(repo_root().join("tests/oracles/make_tls_cert.py"))
        .arg(other.path())
        .status()
        .unwrap();
    let wrong = CertificateDer::from_pem_file(other.path().join("ca.pem")).unwrap();
    assert!(
        tls_agent(&wrong)
            .get(&format!("{}/certs", s.url))
            .call()
            .is_err()
    );
}

/// Binary and SHA-384-bound runtime data, init-time data bound by HOST_DATA, field
/// limits, and nonce expiry, over HTTP.
#[test]
fn runtime_and_init_time_data_forms_limits_and_nonce_expiry() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use snp_emu::guest::LaunchConfig;
    let s = start_with(true, |c| c.nonce_ttl = std::time::Duration::from_secs(1));
    let emu = emulator(Product::Milan);
    let init = br#"{"tenant":"t1"}"#;
    let host_data: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, init)
        .as_ref()
        .try_into()
        .unwrap();
    let guest = emu
        .platform
        .launch(LaunchConfig {
            measurement: [0x11; 48],
            host_data,
            ..LaunchConfig::default()
        })
        .unwrap();
    let url = format!("{}/attest/SevSnpVm", s.url);
    let post = |req: &Value| call("POST", &url, None, Some(req.to_string().as_bytes()));
    let data = |bytes: &[u8], kind: &str| json!({"data": B64URL.encode(bytes), "dataType": kind});
    // Binary runtime data, SHA-384 (opencvm's hashAlgorithm), plus init-time data.
    let bin = [0xa5u8; 100];
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &bin).as_ref());
    let report = emu.report(&guest, rd, 0);
    let mut req: Value =
        serde_json::from_slice(&request_json(&report, Some(&emu.chain_pem()), None, None)).unwrap();
    let mut rt = data(&bin, "Binary");
    rt["hashAlgorithm"] = "SHA384".into();
    req["runtimeData"] = rt.clone();
    req["initTimeData"] = data(init, "JSON");
    let (st, v) = post(&req);
    assert_eq!(st, 200, "{v}");
    let c = claims_of(v["token"].as_str().unwrap());
    assert_eq!(c["x-ms-sevsnpvm-reportdata"], hex::encode(rd));
    assert_eq!(c["x-ms-sevsnpvm-hostdata"], hex::encode(host_data));
    assert_eq!(c["x-ms-inittime"], json!({"tenant": "t1"}));
    // The same data declared SHA-256 is not what REPORT_DATA holds.
    req["runtimeData"]["hashAlgorithm"] = "SHA256".into();
    let (st, v) = post(&req);
    assert_refused(st, &v, 400, "runtime_data_unbound");
    // Init-time data that HOST_DATA does not hold.
    req["runtimeData"] = rt;
    req["initTimeData"] = data(br#"{"tenant":"t2"}"#, "JSON");
    let (st, v) = post(&req);
    assert_refused(st, &v, 400, "inittime_data_unbound");
    // A runtime data field over its limit (the body is still under 1 MiB).
    req["runtimeData"] = data(&vec![0u8; 100 * 1024], "Binary");
    let (st, v) = post(&req);
    assert_refused(st, &v, 400, "field_too_large");

    // A nonce used after its lifetime: expired.
    let (_, n) = call("GET", &format!("{}/nonce", s.url), None, None);
    let nonce = n["nonce"].as_str().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let body = emu.request(&emu.guest(false), &json!({"nonce": nonce}), Some(nonce));
    let (st, v) = call("POST", &url, None, Some(&body));
    assert_refused(st, &v, 400, "nonce_expired");
}
