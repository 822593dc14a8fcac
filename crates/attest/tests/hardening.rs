//! Issue 10's attestation-service findings, each against a real server on 127.0.0.1:0:
//! CRLs applied and named in the claims, emulator roots trusted only by pin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashMap;

use serde_json::{Value, json};
use snp::collateral::{CollateralCache, Fetcher};
use snp::kds::KdsRequest;
use snp::product::Product;

/// 2026-07-01T00:00:00Z: inside the real Milan CRL's window (2026-06-22..08-08).
const IN_CRL_WINDOW: i64 = 1_782_864_000;

fn td(rel: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("testdata").join(rel)).unwrap()
}

/// A SevSnpVm request for a real report with its VCEK chain.
fn real_request(report: &str, chain: &str) -> Vec<u8> {
    request_json(
        &td(report),
        Some(&String::from_utf8(td(chain)).unwrap()),
        None,
        None,
    )
}

fn attest(s: &Server, body: &[u8]) -> (u16, Value) {
    call(
        "POST",
        &format!("{}/attest/SevSnpVm", s.url),
        None,
        Some(body),
    )
}

fn cache_with(crl_for: Option<(Product, &[u8])>) -> (tempfile::TempDir, Fetcher) {
    let dir = tempfile::tempdir().unwrap();
    let cache = CollateralCache::open(dir.path()).unwrap();
    if let Some((product, der)) = crl_for {
        cache
            .put(
                &KdsRequest::Crl {
                    product,
                    kind: snp::cert::VekKind::Vcek,
                },
                der,
            )
            .unwrap();
    }
    (dir, Fetcher::offline(cache))
}

#[test]
fn amd_crls_are_applied_and_named_in_the_claims() {
    let milan_crl = td("snp/atakit/milan.crl.der");
    // The quick start's real Milan report, its VCEK and AMD's Milan chain.
    let milan = {
        let chain = String::from_utf8(td("snp/go-sev-guest/ask_ark_milan.pem")).unwrap()
            + &snp_emu::platform::pem("CERTIFICATE", &td("snp/trustee/snp/test-vcek.der"));
        request_json(
            &td("snp/trustee/snp/test-report.bin"),
            Some(&chain),
            None,
            None,
        )
    };

    // The product's CRL in the collateral cache: applied, and the claim says so.
    let (_d1, with_crl) = cache_with(Some((Product::Milan, &milan_crl)));
    let s = start_with(false, |c| {
        c.collateral = Some(with_crl);
        c.evidence_time = Some(IN_CRL_WINDOW);
    });
    let (st, v) = attest(&s, &milan);
    assert_eq!(st, 200, "{v}");
    let claims = claims_of(v["token"].as_str().unwrap());
    assert_eq!(claims["x-opencvm-revocation"], "checked");
    assert_eq!(claims["x-opencvm-emulated"], false);

    // No CRL to be had: not_checked, and a provider can require the check.
    let (_d2, empty) = cache_with(None);
    let s = start_with(false, |c| {
        c.collateral = Some(empty);
        c.evidence_time = Some(IN_CRL_WINDOW);
    });
    let (st, v) = attest(&s, &milan);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        claims_of(v["token"].as_str().unwrap())["x-opencvm-revocation"],
        "not_checked"
    );
    let (st, v) = call(
        "PUT",
        &format!("{}/settings", s.url),
        Some(&s.admin),
        Some(br#"{"require_revocation_check": true}"#),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = attest(&s, &milan);
    assert_refused(st, &v, 403, "policy_denied");
    assert_eq!(
        v["error"]["detail"]["deny"][0]["rule"],
        "revocation-checked"
    );

    // The Milan CRL planted in the cache as Genoa's: could not verify, not skipped.
    let (_d3, planted) = cache_with(Some((Product::Genoa, &milan_crl)));
    let s = start_with(false, |c| {
        c.collateral = Some(planted);
        c.evidence_time = Some(IN_CRL_WINDOW);
    });
    let genoa = real_request(
        "snp/routex-client-lua/attestation_spec.lua.genoa-v3.report.bin",
        "snp/routex-client-lua/vcek-chain-genoa.pem",
    );
    let (st, v) = attest(&s, &genoa);
    assert_refused(st, &v, 424, "crl_unusable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ARK-Milan"),
        "{v}"
    );
}

#[test]
fn emulator_roots_are_trusted_by_pin_with_their_crl() {
    let s = start(true);
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let (st, v) = attest(&s, &emu.request(&guest, &json!({}), None));
    assert_eq!(st, 200, "{v}");
    let claims = claims_of(v["token"].as_str().unwrap());
    assert_eq!(claims["x-opencvm-emulated"], true);
    // The roots file carries the emulator's CRL: emulated evidence can meet a policy
    // that requires revocation checking.
    assert_eq!(claims["x-opencvm-revocation"], "checked");

    // Another emulated platform calls itself an emulator too, but is not pinned.
    let other = unshared_emulator(Product::Milan);
    let g2 = other.guest(false);
    let (st, v) = attest(&s, &other.request(&g2, &json!({}), None));
    assert_refused(st, &v, 400, "emulated_root");

    // A roots file whose CRL revokes the platform's ASK.
    let revoked_emu = unshared_emulator(Product::Genoa);
    let ask = snp::cert::AmdCert::from_der(revoked_emu.platform.ask_der()).unwrap();
    let pem = snp_emu::platform::pem("CERTIFICATE", revoked_emu.platform.ask_der())
        + &snp_emu::platform::pem("CERTIFICATE", revoked_emu.platform.ark_der())
        + &snp_emu::platform::pem(
            "X509 CRL",
            &revoked_emu.platform.issue_crl(&[ask.serial()]).unwrap(),
        );
    let roots = attest::EmulatorRoots::from_pem(pem.as_bytes()).unwrap();
    let s = start_with(false, move |c| c.emulator_roots.push(roots));
    let g3 = revoked_emu.guest(false);
    let (st, v) = attest(&s, &revoked_emu.request(&g3, &json!({}), None));
    assert_refused(st, &v, 400, "revoked");

    // Only an emulator's ARK can be pinned this way.
    let amd = td("snp/go-sev-guest/ask_ark_milan.pem");
    assert!(attest::EmulatorRoots::from_pem(&amd).is_err());
}

/// Raw HTTP: the status of a request with `headers` and a declared body of `len`
/// bytes of which only `send` are sent.
fn raw_status(url: &str, head: &str, send: usize) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'{'; send]).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ').nth(1).unwrap_or_default().to_string()
}

/// An administrator route answers 401 before reading a large body it was not
/// authorized to send; the public attest route reads its body but cuts off one that
/// stops arriving.
#[test]
fn credentials_before_large_bodies_and_stalled_bodies() {
    let s = start(false);
    let head = |path: &str, auth: &str| {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/plain\r\nContent-Length: 900000\r\nConnection: close\r\n\r\n"
        )
    };
    assert_eq!(
        raw_status(&s.url, &head("/policies/SevSnpVm", ""), 0),
        "401"
    );
    assert_eq!(
        raw_status(
            &s.url,
            &head(
                "/providers/default/policies/SevSnpVm",
                "Authorization: Bearer wrong\r\n"
            ),
            0
        ),
        "401"
    );
    // With the credential the body is awaited (and, never coming, cut off).
    let auth = format!("Authorization: Bearer {}\r\n", s.admin);
    assert_eq!(
        raw_status(&s.url, &head("/policies/SevSnpVm", &auth), 10),
        "408"
    );
    let attest = "POST /attest/SevSnpVm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&s.url, attest, 10), "408");
}

fn jwks_kids(s: &Server, prefix: &str) -> Vec<String> {
    let (st, v) = call("GET", &format!("{}{prefix}/certs", s.url), None, None);
    assert_eq!(st, 200);
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn token_kid(token: &str) -> String {
    use base64::Engine as _;
    let h = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_string()
}

/// Rotation retires the old signing key after the grace period (here none); revoking
/// takes a key out of the JWKS at once, the key in use included (a new one signs).
#[test]
fn signing_keys_retire_and_are_revoked() {
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    // Default grace (the token lifetime): both keys are published after a rotation.
    let s = start(true);
    let first = jwks_kids(&s, "");
    let (st, v) = call(
        "POST",
        &format!("{}/signing-keys/rotate", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let kids = jwks_kids(&s, "");
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&first[0]));
    // Revoke the key in use: a new key signs, the revoked one is gone.
    let (_, t) = attest(&s, &body);
    let signing = token_kid(t["token"].as_str().unwrap());
    let (st, v) = call(
        "POST",
        &format!("{}/signing-keys/{signing}/revoke", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(!jwks_kids(&s, "").contains(&signing));
    let (_, t) = attest(&s, &body);
    assert_ne!(token_kid(t["token"].as_str().unwrap()), signing);
    let (st, v) = call(
        "POST",
        &format!("{}/signing-keys/{signing}/revoke", s.url),
        Some(&s.admin),
        None,
    );
    assert_refused(st, &v, 404, "signing_key_not_found");
    // No grace: the old key leaves the JWKS with the rotation.
    let s = start_with(true, |c| {
        c.signing_key_grace = Some(std::time::Duration::ZERO)
    });
    let (st, _) = call(
        "POST",
        &format!("{}/signing-keys/rotate", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(jwks_kids(&s, "").len(), 1);
    // Each change is audited, and the log verifies.
    let (st, log) = call("GET", &format!("{}/audit", s.url), Some(&s.admin), None);
    assert_eq!(st, 200, "{log}");
    let ops: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["provider_create", "signing_key_rotate"]);
}

/// Administrator credentials rotate (the old one stops working), a named provider's
/// can be revoked and reset by the default administrator, the default one cannot be
/// revoked; each change is in the audit log, which verifies.
#[test]
fn admin_credentials_rotate_revoke_and_reset() {
    let s = start(false);
    let (st, v) = call(
        "POST",
        &format!("{}/providers/tenant-a", s.url),
        Some(&s.admin),
        Some(b"{}"),
    );
    assert_eq!(st, 200, "{v}");
    let tenant = v["adminToken"].as_str().unwrap().to_string();
    let settings = |cred: &str| {
        call(
            "GET",
            &format!("{}/providers/tenant-a/settings", s.url),
            Some(cred),
            None,
        )
        .0
    };
    assert_eq!(settings(&tenant), 200);
    // The tenant rotates its own credential.
    let (st, v) = call(
        "POST",
        &format!("{}/providers/tenant-a/admin-credential/rotate", s.url),
        Some(&tenant),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let rotated = v["adminToken"].as_str().unwrap().to_string();
    assert_eq!(settings(&tenant), 401);
    assert_eq!(settings(&rotated), 200);
    // The default administrator revokes it, then issues a new one.
    let (st, _) = call(
        "DELETE",
        &format!("{}/providers/tenant-a/admin-credential", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(settings(&rotated), 401);
    let (st, v) = call(
        "POST",
        &format!("{}/providers/tenant-a/admin-credential", s.url),
        Some(&rotated),
        None,
    );
    assert_refused(st, &v, 401, "unauthorized");
    let (st, v) = call(
        "POST",
        &format!("{}/providers/tenant-a/admin-credential", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(settings(v["adminToken"].as_str().unwrap()), 200);
    // The default provider's credential can be rotated, not revoked.
    let (st, v) = call(
        "DELETE",
        &format!("{}/admin-credential", s.url),
        Some(&s.admin),
        None,
    );
    assert_refused(st, &v, 409, "default_admin_required");
    let (st, v) = call(
        "POST",
        &format!("{}/admin-credential/rotate", s.url),
        Some(&s.admin),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let new_default = v["adminToken"].as_str().unwrap().to_string();
    assert!(
        !s.state.join("admin.token").exists(),
        "the stale credential file is removed"
    );
    let (st, log) = call(
        "GET",
        &format!("{}/providers/tenant-a/audit", s.url),
        Some(&new_default),
        None,
    );
    assert_eq!(
        st, 401,
        "another provider's administrator does not read its log: {log}"
    );
    let (st, log) = call("GET", &format!("{}/audit", s.url), Some(&new_default), None);
    assert_eq!(st, 200);
    let ops: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["provider_create", "admin_credential_rotate"]);
    // The whole log (every provider's entries) verifies with the master key.
    let master =
        seal::MasterKey::load_or_create(&s.state.parent().unwrap().join("master.key")).unwrap();
    let keys = attest::store::audit_keys(&master).unwrap();
    let intact = attest::store::verify_audit(
        &sqldb::Location::sqlite(&s.state.join("attest.db")),
        &keys,
        &[],
    )
    .unwrap();
    assert_eq!(intact.entries, 6, "{intact:?}");
}

/// Memory bombs (a range, an array, a string, deep recursion) and a CPU loop in one
/// tenant's policy are each stopped with a denial of their own code; the service stays
/// up, and another tenant's attestations all succeed meanwhile (the bombing tenant
/// holds at most one of the two workers).
#[test]
fn tenant_policies_cannot_crash_or_stall_the_service() {
    let s = start(true);
    let emu = emulator(Product::Genoa);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    let mut creds = HashMap::new();
    for name in ["bombs", "calm"] {
        let (st, v) = call(
            "POST",
            &format!("{}/providers/{name}", s.url),
            Some(&s.admin),
            Some(br#"{"allow_emulated": true}"#),
        );
        assert_eq!(st, 200, "{v}");
        creds.insert(name, v["adminToken"].as_str().unwrap().to_string());
    }
    let set = |provider: &str, text: &str| {
        call(
            "PUT",
            &format!("{}/providers/{provider}/policies/SevSnpVm", s.url),
            Some(&creds[provider]),
            Some(serde_json::json!({ "policy": text }).to_string().as_bytes()),
        )
    };
    let (st, v) = set(
        "calm",
        "package policy\nimport rego.v1\ndefault allow := false\nallow if input[\"x-ms-sevsnpvm-vmpl\"] == 0\n",
    );
    assert_eq!(st, 200, "{v}");
    // The calm tenant attests in a loop while the bombs go off.
    let url = s.url.clone();
    let calm_body = body.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let calm = std::thread::spawn(move || {
        let mut results = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) || results.len() < 5 {
            let t = std::time::Instant::now();
            let (st, v) = call(
                "POST",
                &format!("{url}/providers/calm/attest/SevSnpVm"),
                None,
                Some(&calm_body),
            );
            results.push((st, t.elapsed(), v));
        }
        results
    });
    let bombs = [
        ("range", "allow if count(numbers.range(1, 1e15)) > 0"),
        (
            "array",
            "allow if count([i | some i in numbers.range(1, 1000000000)]) > 0",
        ),
        (
            "string",
            "s := concat(\"\", [x | some i in numbers.range(1, 100000000); x := \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"])\nallow if count(s) > 0",
        ),
        ("recursion", "f(x) := f(x)\nallow if f(1)"),
        (
            "loop",
            "r := numbers.range(1, 3000)\nallow if count([1 | some a in r; some b in r; some c in r]) > 0",
        ),
    ];
    for (name, rule) in bombs {
        let text = format!("package policy\nimport rego.v1\n{rule}\n");
        let (st, v) = set("bombs", &text);
        assert_eq!(st, 200, "{name}: {v}");
        let (st, v) = call(
            "POST",
            &format!("{}/providers/bombs/attest/SevSnpVm", s.url),
            None,
            Some(&body),
        );
        assert_refused(st, &v, 403, "policy_limit_exceeded");
        // The same bomb as a draft in a dry run.
        let (st, v) = call(
            "POST",
            &format!("{}/providers/bombs/policies/SevSnpVm/test", s.url),
            Some(&creds["bombs"]),
            Some(
                json!({"policy": text, "evidence": serde_json::from_slice::<Value>(&body).unwrap()})
                    .to_string()
                    .as_bytes(),
            ),
        );
        assert_refused(st, &v, 403, "policy_limit_exceeded");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = calm.join().unwrap();
    for (st, _, v) in &results {
        assert_eq!(*st, 200, "{v}");
    }
    let mut latencies: Vec<_> = results.iter().map(|(_, d, _)| *d).collect();
    latencies.sort();
    eprintln!(
        "calm tenant during the bombs: {} attestations, median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let (st, _) = call("GET", &format!("{}/health", s.url), None, None);
    assert_eq!(st, 200);
}

/// Creates provider `name` (emulated evidence allowed) with `policy` for SevSnpVm.
fn provider_with_policy(s: &Server, name: &str, policy: &str) {
    let (st, v) = call(
        "POST",
        &format!("{}/providers/{name}", s.url),
        Some(&s.admin),
        Some(br#"{"allow_emulated": true}"#),
    );
    assert_eq!(st, 200, "{v}");
    let cred = v["adminToken"].as_str().unwrap().to_string();
    let (st, v) = call(
        "PUT",
        &format!("{}/providers/{name}/policies/SevSnpVm", s.url),
        Some(&cred),
        Some(json!({ "policy": policy }).to_string().as_bytes()),
    );
    assert_eq!(st, 200, "{v}");
}

/// A tenant policy that allows VMPL 0.
const VMPL0_POLICY: &str = "package policy\nimport rego.v1\ndefault allow := false\nallow if input[\"x-ms-sevsnpvm-vmpl\"] == 0\n";

/// The per-provider share of the policy workers is a limit, not a hint: with two
/// workers and a share of one, three concurrent evaluations of one provider's spinning
/// policy get one worker (stopped at the time limit, 403 `policy_limit_exceeded`) and
/// two 503 `policy_busy` although the other worker is free; that worker meanwhile
/// serves another provider (200).
#[test]
fn one_provider_cannot_take_more_than_its_share_of_policy_workers() {
    let s = start_with(true, |c| {
        let sb = c.policy_sandbox.as_mut().unwrap();
        sb.workers = 2;
        sb.per_provider = 1;
        // A spinning evaluation holds its worker for the whole time limit; a request
        // gives up waiting for a worker after a small part of it.
        sb.time = std::time::Duration::from_secs(8);
        sb.queue_timeout = std::time::Duration::from_millis(500);
    });
    let emu = emulator(Product::Genoa);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    provider_with_policy(
        &s,
        "spin",
        "package policy\nimport rego.v1\nr := numbers.range(1, 3000)\nallow if count([1 | some a in r; some b in r; some c in r]) > 0\n",
    );
    provider_with_policy(&s, "calm", VMPL0_POLICY);
    let attest_to = |provider: &str| {
        call(
            "POST",
            &format!("{}/providers/{provider}/attest/SevSnpVm", s.url),
            None,
            Some(&body),
        )
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let tx = tx.clone();
            scope.spawn(move || tx.send(attest_to("spin")).unwrap());
        }
        // The two requests beyond the share are refused first, while the third still
        // spins in its worker.
        for _ in 0..2 {
            let (st, v) = rx.recv().unwrap();
            assert_refused(st, &v, 503, "policy_busy");
        }
        // The other worker is free for another provider.
        let (st, v) = attest_to("calm");
        assert_eq!(st, 200, "{v}");
        let (st, v) = rx.recv().unwrap();
        assert_refused(st, &v, 403, "policy_limit_exceeded");
    });
}

/// Without a policy sandbox the service runs no tenant Rego (fail closed): setting a
/// policy and a dry run of a draft are refused, a tenant policy stored while there was
/// a sandbox is refused when used, and the built-in default policy still applies.
#[tokio::test]
async fn without_a_sandbox_tenant_policies_are_refused() {
    use attest::AttestationType::SevSnpVm;
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(Product::Milan);
    let guest = emu.guest(false);
    let body = emu.request(&guest, &json!({}), None);
    let open = |sandbox: bool| {
        let master = seal::MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let mut cfg = attest::ServiceConfig::new(dir.path().join("state"), String::new(), master);
        cfg.emulator_roots.push(emu.roots());
        if sandbox {
            let mut sb = attest::sandbox::SandboxConfig::new(
                env!("CARGO_BIN_EXE_attest-policy-worker").into(),
                Vec::new(),
            );
            sb.workers = 1;
            cfg.policy_sandbox = Some(sb);
        }
        attest::Service::open(cfg).unwrap().0
    };
    fn refused<T: std::fmt::Debug>(r: Result<T, attest::ApiError>) {
        let e = r.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (501, "policy_sandbox_unavailable"),
            "{e}"
        );
    }
    let svc = open(true);
    let admin = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let admit = |svc: &attest::Service, op: &str, provider: &str, bearer: Option<&str>| {
        svc.admit_op(op, provider, bearer).unwrap()
    };
    let evidence: Value = serde_json::from_slice(&body).unwrap();
    let request =
        |b: &[u8]| attest::evidence::parse_request(attest::AttestationType::SevSnpVm, b).unwrap();
    let test = |policy: Option<&str>| attest_api::PolicyTestRequest {
        policy: policy.map(str::to_string),
        evidence: evidence.clone(),
    };
    let a = admit(&svc, "set_policy", "default", Some(&admin));
    svc.set_policy(&a, SevSnpVm, VMPL0_POLICY).await.unwrap();
    let anyone = admit(&svc, "attest_sev_snp_vm", "default", None);
    svc.attest(&anyone, request(&body)).await.unwrap();
    drop(svc);

    let svc = open(false);
    let anyone = admit(&svc, "attest_sev_snp_vm", "default", None);
    refused(svc.attest(&anyone, request(&body)).await);
    let tester = admit(&svc, "test_policy", "default", None);
    refused(svc.test_policy(&tester, SevSnpVm, test(None)).await);
    let a = admit(&svc, "set_policy", "default", Some(&admin));
    refused(svc.set_policy(&a, SevSnpVm, VMPL0_POLICY).await);
    let settings = attest::policy::ProviderSettings {
        allow_emulated: true,
        ..Default::default()
    };
    let a = admit(&svc, "create_provider", "default", Some(&admin));
    let plain = svc.create_provider(&a, "plain", settings).unwrap();
    let tester = admit(&svc, "test_policy", "plain", Some(&plain.admin_token));
    refused(
        svc.test_policy(&tester, SevSnpVm, test(Some(VMPL0_POLICY)))
            .await,
    );
    // A provider on the built-in default policy attests as before.
    let anyone = admit(&svc, "attest_sev_snp_vm", "plain", None);
    let v = svc.attest(&anyone, request(&body)).await.unwrap();
    assert!(
        matches!(&v, attest_api::AttestResponse::Token(t) if t.token.split('.').count() == 3),
        "{v:?}"
    );
}

/// A fake AMD KDS on loopback that answers 404 to everything and counts requests.
fn fake_kds() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, count)
}

/// Reports of chips KDS does not know: a miss is remembered (not asked again), and one
/// client may cause only so many KDS fetches a minute.
#[test]
fn kds_misses_are_remembered_and_fetches_capped_per_client() {
    use snp::collateral::OnlineConfig;
    let (kds, hits) = fake_kds();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CollateralCache::open(cache_dir.path()).unwrap();
    let fetcher = Fetcher::online(
        cache,
        OnlineConfig {
            base_url: kds,
            attempts: 1,
            ..OnlineConfig::default()
        },
    )
    .unwrap();
    let s = start_with(false, |c| c.collateral = Some(fetcher));
    // A real Milan v3 report with its CHIP_ID changed: an unknown chip (the request
    // fails at the VCEK lookup, before the signature is checked).
    let report_of = |chip: u8| {
        let mut r = td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin");
        r[0x1A0] = chip;
        request_json(&r, None, None, None)
    };
    let count = || hits.load(std::sync::atomic::Ordering::SeqCst);
    let (st, v) = attest(&s, &report_of(1));
    assert_refused(st, &v, 424, "missing_collateral");
    let after_first = count();
    assert!(after_first >= 1);
    for _ in 0..5 {
        let (st, v) = attest(&s, &report_of(1));
        assert_refused(st, &v, 424, "missing_collateral");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("recently"),
            "{v}"
        );
    }
    assert_eq!(
        count(),
        after_first,
        "a remembered miss is not fetched again"
    );
    // Other chips from the same client: ten fetches a minute, then 429.
    let mut limited = 0;
    for chip in 2..=20u8 {
        let (st, v) = attest(&s, &report_of(chip));
        if st == 429 {
            assert_eq!(v["error"]["code"], "kds_rate_limited");
            limited += 1;
        }
    }
    assert_eq!(
        limited,
        19 - 9,
        "chips 2..=10 are fetched (the budget is 10), the rest refused"
    );
}
