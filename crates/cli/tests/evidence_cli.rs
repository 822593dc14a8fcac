//! `cvm evidence` run as a process: exit codes, JSON contract, every input format.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{cvm, json_of};

use std::path::{Path, PathBuf};

use serde_json::Value;

fn td(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
        .display()
        .to_string()
}

const AT: &str = "2025-08-01T00:00:00Z";

fn verify_json(extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["evidence", "verify", "--json", "--offline"];
    if !extra.contains(&"--at") {
        args.extend_from_slice(&["--at", AT]);
    }
    args.extend_from_slice(extra);
    let out = cvm(&args);
    (out.status.code().unwrap(), json_of(&out))
}

fn codes(v: &Value) -> Vec<String> {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn accepted_real_reports_exit_0_with_the_contract_fields() {
    let cases = [
        (
            "snp/trustee/snp/test-report.bin",
            "snp/trustee/snp/test-vcek.der",
            "snp/go-sev-guest/ask_ark_milan.pem",
            "Milan",
        ),
        (
            "snp/virtee-sev/report_milan.hex",
            "snp/virtee-sev/vcek_milan.der",
            "snp/virtee-sev/cert_chain_milan",
            "Milan",
        ),
        (
            "snp/routex-client-lua/attestation_spec.lua.genoa-v3.report.bin",
            "snp/routex-client-lua/vcek-chain-genoa.pem",
            "snp/routex-client-lua/vcek-chain-genoa.pem",
            "Genoa",
        ),
        (
            "snp/trustee/snp/test-vlek-report.bin",
            "snp/trustee/snp/test-vlek.der",
            "snp/go-sev-guest/ask_ark_milan_vlek.pem",
            "Milan",
        ),
    ];
    for (report, vek, chain, product) in cases {
        let (code, v) = verify_json(&[&td(report), "--vek", &td(vek), "--chain", &td(chain)]);
        assert_eq!(code, 0, "{report}: {v}");
        assert_eq!(v["verdict"], "accepted");
        assert_eq!(v["reasons"].as_array().unwrap().len(), 0);
        assert_eq!(v["trust"], "amd");
        let r = &v["report"];
        assert_eq!(r["product"], product, "{report}");
        for key in [
            "version",
            "guest_svn",
            "vmpl",
            "signing_key",
            "measurement",
            "report_data",
            "host_data",
            "chip_id",
            "id_key_digest",
            "author_key_digest",
            "family_id",
            "image_id",
            "firmware",
        ] {
            assert!(!r[key].is_null(), "{report}: {key}");
        }
        for key in [
            "raw",
            "debug",
            "smt",
            "migrate_ma",
            "single_socket",
            "abi_major",
            "abi_minor",
        ] {
            assert!(!r["policy"][key].is_null(), "{report}: policy.{key}");
        }
        for key in ["bootloader", "tee", "snp", "microcode"] {
            assert!(
                r["reported_tcb"][key].is_u64(),
                "{report}: reported_tcb.{key}"
            );
        }
        assert!(r["platform_info"]["smt_enabled"].is_boolean());
        let m = r["measurement"].as_str().unwrap();
        assert_eq!(m.len(), 96);
        assert_eq!(m, m.to_lowercase());
    }
}

#[test]
fn rejected_evidence_exits_1_with_a_reason() {
    // A debug guest under the default policy.
    let (code, v) = verify_json(&[
        &td("snp/go-sev-guest/attestation.bin"),
        "--vek",
        &td("snp/go-sev-guest/vcek.testcer"),
        "--chain",
        &td("snp/go-sev-guest/ask_ark_milan.pem"),
    ]);
    assert_eq!((code, v["verdict"].as_str()), (1, Some("rejected")));
    assert_eq!(codes(&v), vec!["policy.debug"]);

    // A flipped measurement byte.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(td("snp/trustee/snp/test-report.bin")).unwrap();
    bytes[0x90] ^= 1;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &bytes).unwrap();
    let (code, v) = verify_json(&[
        bad.to_str().unwrap(),
        "--vek",
        &td("snp/trustee/snp/test-vcek.der"),
        "--chain",
        &td("snp/go-sev-guest/ask_ark_milan.pem"),
    ]);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["bad_signature"]);

    // The VLEK expired on 2025-12-10.
    let out = cvm(&[
        "evidence",
        "verify",
        "--json",
        "--at",
        "2026-01-01T00:00:00Z",
        &td("snp/trustee/snp/test-vlek-report.bin"),
        "--vek",
        &td("snp/trustee/snp/test-vlek.der"),
        "--chain",
        &td("snp/go-sev-guest/ask_ark_milan_vlek.pem"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(codes(&json_of(&out)), vec!["certificate_expired"]);
}

#[test]
fn vmpl_policy_file_in_toml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("p.toml");
    std::fs::write(&toml, "vmpl = 0\n").unwrap();
    let json = dir.path().join("p.json");
    std::fs::write(&json, "{\"vmpl\": 0}").unwrap();
    for policy in [&toml, &json] {
        let (code, v) = verify_json(&[
            &td("snp/trustee/snp/test-vlek-report.bin"),
            "--vek",
            &td("snp/trustee/snp/test-vlek.der"),
            "--chain",
            &td("snp/go-sev-guest/ask_ark_milan_vlek.pem"),
            "--policy",
            policy.to_str().unwrap(),
        ]);
        assert_eq!(code, 1);
        assert_eq!(codes(&v), vec!["policy.vmpl"]);
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "vmpl = \"zero\"\n").unwrap();
    let (code, v) = verify_json(&[
        &td("snp/trustee/snp/test-report.bin"),
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")));
}

#[test]
fn revoked_ask_and_emulated_roots() {
    let syn = |f: &str| td(&format!("synthetic/{f}"));
    let base = [
        syn("report.bin"),
        "--vek".into(),
        syn("vcek.der"),
        "--chain".into(),
        syn("chain.pem"),
    ];
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    let at = ["--at", "2026-06-01T00:00:00Z"];
    // Without the dangerous option the test root is not trusted.
    let mut args = base.clone();
    args.extend_from_slice(&at);
    let (code, v) = verify_json(&args);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["untrusted_root"]);
    // With it the evidence is accepted, and labelled.
    let ark = syn("ark.pem");
    args.extend_from_slice(&["--dangerously-trust-ark", &ark]);
    let (code, v) = verify_json(&args);
    assert_eq!(code, 0, "{v}");
    assert!(v["trust"].as_str().unwrap().starts_with("dangerous:"));
    // A CRL that revokes the ASK rejects it.
    let crl = syn("crl-revokes-ask.der");
    let mut revoked = args.clone();
    revoked.extend_from_slice(&["--crl", &crl]);
    let (code, v) = verify_json(&revoked);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["revoked"]);
    // A CRL with a bad signature means we could not check: exit 2.
    let forged = syn("crl-revokes-ask-wrong-signer.der");
    let mut bad = args.clone();
    bad.extend_from_slice(&["--crl", &forged]);
    let (code, v) = verify_json(&bad);
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")));
    assert_eq!(codes(&v), vec!["crl_unusable"]);
}

#[test]
fn the_real_amd_crl_is_checked() {
    let (code, v) = verify_json(&[
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
        "--chain",
        &td("snp/routex-client-lua/vcek-chain-milan.pem"),
        "--crl",
        &td("snp/atakit/milan.crl.der"),
        "--at",
        "2026-07-01T00:00:00Z",
    ]);
    assert_eq!(code, 0, "{v}");
    // Outside the CRL's window it cannot be used.
    let (code, _) = verify_json(&[
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
        "--chain",
        &td("snp/routex-client-lua/vcek-chain-milan.pem"),
        "--crl",
        &td("snp/atakit/milan.crl.der"),
        "--at",
        "2026-09-01T00:00:00Z",
    ]);
    assert_eq!(code, 2);
}

/// The real Milan CRL is applied and the verdict says so; a CRL of another product's
/// ARK (given, or planted in the cache) is not skipped but means "could not verify".
#[test]
fn revocation_state_and_foreign_crls() {
    let milan = [
        td("snp/trustee/snp/test-report.bin"),
        "--vek".into(),
        td("snp/trustee/snp/test-vcek.der"),
        "--chain".into(),
        td("snp/go-sev-guest/ask_ark_milan.pem"),
    ];
    let milan: Vec<&str> = milan.iter().map(String::as_str).collect();
    let crl = td("snp/atakit/milan.crl.der");
    let mut with_crl = milan.clone();
    with_crl.extend_from_slice(&["--crl", &crl, "--at", "2026-07-01T00:00:00Z"]);
    let (code, v) = verify_json(&with_crl);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["revocation"], "checked");
    assert_eq!(v["revocation_detail"]["crl_numbers"][0], "09");
    let human = cvm(&[&["evidence", "verify", "--offline"], &with_crl[..]].concat());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("accepted (amd)\n"), "{text}");
    assert!(text.contains("revocation: checked (CRL 09)"), "{text}");
    // Without a CRL: not_checked, named in JSON and in the human output, and a policy
    // can require it.
    let (code, v) = verify_json(&milan);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["revocation"], "not_checked");
    let skipped: Vec<&str> = v["not_checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        vec!["measurement", "freshness", "revocation", "min_tcb"]
    );
    let human = cvm(&[&["evidence", "verify", "--offline", "--at", AT], &milan[..]].concat());
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains("revocation: not checked (no Milan CRL is cached"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "require_revocation_check = true\n").unwrap();
    let mut strict = milan.clone();
    strict.extend_from_slice(&["--policy", policy.to_str().unwrap()]);
    let (code, v) = verify_json(&strict);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["policy.revocation"]);
    let mut strict_ok = with_crl.clone();
    strict_ok.extend_from_slice(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(verify_json(&strict_ok).0, 0);

    // A Milan CRL given for a Genoa chain.
    let genoa = [
        td("snp/routex-client-lua/attestation_spec.lua.genoa-v3.report.bin"),
        "--chain".into(),
        td("snp/routex-client-lua/vcek-chain-genoa.pem"),
    ];
    let genoa: Vec<&str> = genoa.iter().map(String::as_str).collect();
    let at = ["--at", "2026-07-01T00:00:00Z"];
    let mut foreign = genoa.clone();
    foreign.extend_from_slice(&["--crl", &crl]);
    foreign.extend_from_slice(&at);
    let (code, v) = verify_json(&foreign);
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")), "{v}");
    assert_eq!(codes(&v), vec!["crl_unusable"]);
    assert!(
        v["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ARK-Milan"),
        "{v}"
    );
    // The same CRL planted in the cache as Genoa's.
    let cache = tempfile::tempdir().unwrap();
    let c = snp::collateral::CollateralCache::open(cache.path()).unwrap();
    c.put(
        &snp::kds::KdsRequest::Crl {
            product: snp::Product::Genoa,
            kind: snp::cert::VekKind::Vcek,
        },
        &std::fs::read(&crl).unwrap(),
    )
    .unwrap();
    let mut planted = genoa.clone();
    planted.extend_from_slice(&["--cache", cache.path().to_str().unwrap()]);
    planted.extend_from_slice(&at);
    let (code, v) = verify_json(&planted);
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")), "{v}");
    assert_eq!(codes(&v), vec!["crl_unusable"]);
}

/// A quote whose selection omits a PCR the caller appraises is refused (before, it was
/// accepted with `pcrs_checked: true`); `pcrs_checked` lists the PCRs checked. (The
/// vTPM tests check the same with a quote of a few PCRs from tpm2-tools.)
#[test]
fn quoted_pcrs_must_cover_the_appraised_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ev: Value = serde_json::from_slice(
        &std::fs::read(td("snp/trustee/az-snp-vtpm/tpm-quote-v1.json")).unwrap(),
    )
    .unwrap();
    let msg = dir.path().join("q.msg");
    std::fs::write(&msg, hex::decode(ev["message"].as_str().unwrap()).unwrap()).unwrap();
    let sig = dir.path().join("q.sig");
    std::fs::write(
        &sig,
        hex::decode(ev["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let mut bank = serde_json::Map::new();
    for (i, p) in ev["pcrs"].as_array().unwrap().iter().enumerate() {
        bank.insert(i.to_string(), p.clone());
    }
    let run = |pcrs: &Value| {
        let path = dir.path().join("pcrs.json");
        std::fs::write(&path, pcrs.to_string()).unwrap();
        verify_json(&[
            &td("snp/trustee/az-snp-vtpm/hcl-report.bin"),
            "--chain",
            &td("snp/trustee/az-snp-vtpm/vcek.pem"),
            "--quote",
            msg.to_str().unwrap(),
            "--quote-sig",
            sig.to_str().unwrap(),
            "--pcrs",
            path.to_str().unwrap(),
        ])
    };
    let (code, v) = run(&serde_json::json!({ "sha256": bank }));
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["quote"]["pcrs_checked"]["sha256"],
        serde_json::json!((0..24).collect::<Vec<u32>>())
    );
    // The quote selects no SHA-1 bank: a SHA-1 value cannot be checked.
    let (code, v) = run(&serde_json::json!({ "sha256": bank, "sha1": {"0": "00".repeat(20)} }));
    assert_eq!(code, 1, "{v}");
    assert_eq!(codes(&v), vec!["quote.pcr_not_quoted"]);
    // Nothing to check is not "checked".
    let (code, v) = run(&serde_json::json!({ "sha256": {} }));
    assert_eq!(code, 1, "{v}");
    assert_eq!(codes(&v), vec!["quote.no_pcrs_appraised"]);
}

/// A paravisor (HCL) report must come from VMPL 0 unless the policy names a VMPL; a
/// guest policy allowing a migration agent is refused unless the agent is pinned.
#[test]
fn hcl_reports_need_vmpl_0_and_migration_agents_need_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("amd-sp");
    let claims = br#"{"keys":[],"vm-configuration":{"secure-boot":true}}"#;
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, claims);
    let emulate = |name: &str, policy: &str, vmpl: &str| {
        let out = dir.path().join(format!("{name}.bin"));
        let chain = dir.path().join(format!("{name}.pem"));
        let r = cvm(&[
            "snp",
            "report",
            "--platform",
            platform.to_str().unwrap(),
            "--product",
            "Genoa",
            "--report-data",
            &hex::encode(hash.as_ref()),
            "--policy",
            policy,
            "--vmpl",
            vmpl,
            "--out",
            out.to_str().unwrap(),
            "--chain-out",
            chain.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        (out, chain)
    };
    let hcl_of = |report: &Path| {
        let bytes: [u8; 1184] = std::fs::read(report).unwrap().try_into().unwrap();
        let path = report.with_extension("hcl");
        std::fs::write(&path, snp::hcl::encode(&bytes, claims, 2600).unwrap()).unwrap();
        path
    };
    // The platform's roots, pinned (exported once the first report made the platform).
    let roots = dir.path().join("amd-sp-roots.pem");
    let verify = |evidence: &Path, chain: &Path, extra: &[&str]| {
        if !roots.exists() {
            common::export_roots(platform.to_str().unwrap(), roots.to_str().unwrap());
        }
        let mut args = vec![
            evidence.to_str().unwrap(),
            "--chain",
            chain.to_str().unwrap(),
            "--dangerously-trust-emulator-roots",
            roots.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut full = vec!["evidence", "verify", "--json", "--offline"];
        full.extend_from_slice(&args);
        let out = cvm(&full);
        (out.status.code().unwrap(), json_of(&out))
    };
    let (vmpl1, chain) = emulate("vmpl1", "0x30000", "1");
    // A bare report from VMPL 1 passes the default policy; the same inside an HCL
    // report does not.
    assert_eq!(verify(&vmpl1, &chain, &[]).0, 0);
    let (code, v) = verify(&hcl_of(&vmpl1), &chain, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(codes(&v), vec!["policy.vmpl"]);
    let p1 = dir.path().join("vmpl1.toml");
    std::fs::write(&p1, "vmpl = 1\n").unwrap();
    assert_eq!(
        verify(&hcl_of(&vmpl1), &chain, &["--policy", p1.to_str().unwrap()]).0,
        0
    );
    // Bit 18 of the guest policy: a migration agent may be associated.
    let (ma, chain) = emulate("ma", "0x70000", "0");
    let (code, v) = verify(&ma, &chain, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(codes(&v), vec!["policy.migration_agent"]);
    let report_id_ma = v["unverified_report"]["report_id_ma"]
        .as_str()
        .unwrap()
        .to_owned();
    let pinned = dir.path().join("ma.toml");
    std::fs::write(
        &pinned,
        format!("allow_migration_agent = true\nallowed_report_id_ma = [\"{report_id_ma}\"]\n"),
    )
    .unwrap();
    assert_eq!(
        verify(&ma, &chain, &["--policy", pinned.to_str().unwrap()]).0,
        0
    );
    let other = dir.path().join("ma-other.toml");
    std::fs::write(
        &other,
        format!(
            "allow_migration_agent = true\nallowed_report_id_ma = [\"{}\"]\n",
            "00".repeat(32)
        ),
    )
    .unwrap();
    let (code, v) = verify(&ma, &chain, &["--policy", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["policy.migration_agent"]);
}

#[test]
fn missing_collateral_offline_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = cvm(&[
        "evidence",
        "verify",
        "--json",
        "--offline",
        "--cache",
        dir.path().to_str().unwrap(),
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v = json_of(&out);
    assert_eq!(v["verdict"], "error");
    assert!(
        v["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("missing collateral"),
        "{v}"
    );
    // The report was still parsed and shown, marked as unverified: nothing of it sits
    // where an accepted verdict puts verified fields.
    assert_eq!(v["verified"], false);
    assert!(v.get("report").is_none(), "{v}");
    assert_eq!(v["unverified_report"]["product"], "Milan");
}

#[test]
fn offline_verification_from_a_filled_cache() {
    // Fill a cache the way KDS would, then verify with only the report.
    let dir = tempfile::tempdir().unwrap();
    let report = td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin");
    let bytes = std::fs::read(&report).unwrap();
    let r = snp::AttestationReport::parse(&bytes).unwrap();
    let cache = snp::collateral::CollateralCache::open(dir.path()).unwrap();
    let certs = snp::cert::parse_bundle(
        &std::fs::read(td("snp/routex-client-lua/vcek-chain-milan.pem")).unwrap(),
    )
    .unwrap();
    let vcek = certs.iter().find(|c| c.subject_cn() == "SEV-VCEK").unwrap();
    let req = snp::kds::KdsRequest::vcek_for_report(&r, snp::Product::Milan).unwrap();
    cache.put(&req, vcek.der()).unwrap();
    let chain = snp::kds::KdsRequest::CertChain {
        product: snp::Product::Milan,
        kind: snp::cert::VekKind::Vcek,
    };
    cache
        .put(
            &chain,
            &std::fs::read(td("snp/go-sev-guest/ask_ark_milan.pem")).unwrap(),
        )
        .unwrap();
    let crl = snp::kds::KdsRequest::Crl {
        product: snp::Product::Milan,
        kind: snp::cert::VekKind::Vcek,
    };
    cache
        .put(
            &crl,
            &std::fs::read(td("snp/atakit/milan.crl.der")).unwrap(),
        )
        .unwrap();
    let out = cvm(&[
        "evidence",
        "verify",
        "--json",
        "--offline",
        "--at",
        "2026-07-01T00:00:00Z",
        "--cache",
        dir.path().to_str().unwrap(),
        &report,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = cvm(&["evidence", "verify"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cvm(&["evidence", "verify", "/nonexistent/report.bin", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_of(&out)["verdict"], "error");
    let out = cvm(&[
        "evidence",
        "verify",
        &td("snp/trustee/snp/test-report.bin"),
        "--at",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A truncated report is unparseable input, not a verdict on evidence.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(
        &short,
        &std::fs::read(td("snp/trustee/snp/test-report.bin")).unwrap()[..1000],
    )
    .unwrap();
    let out = cvm(&["evidence", "show", short.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1184"));
}

#[test]
fn show_prints_the_report_object() {
    let out = cvm(&[
        "evidence",
        "show",
        &td("snp/virtee-sev/report_milan.hex"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert_eq!(v["report"]["version"], 2);
    assert!(
        v["report"]["product"].is_null(),
        "a v2 report does not name its product"
    );
    assert_eq!(v["report"]["firmware"], "1.52.4");
    let out = cvm(&[
        "evidence",
        "show",
        &td("snp/virtee-sev/report_milan.hex"),
        "--json",
        "--product",
        "Milan",
    ]);
    assert_eq!(json_of(&out)["report"]["product"], "Milan");
    let out = cvm(&[
        "evidence",
        "show",
        &td("snp/trustee/az-snp-vtpm/hcl-report.bin"),
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(v["runtime_data_bound"], true);
    assert!(v["runtime_claims"]["keys"].is_array());
}

/// SIGNATURE_ALGO (offset 0x34) is shown as read, a number with its name: a real
/// report's 1, and an altered value as altered. A signed report (VCEK or VLEK) with an
/// algorithm other than 1 is refused when parsed, naming the field and its value.
#[test]
fn show_prints_signature_algo_as_read() {
    let show = |path: &str| cvm(&["evidence", "show", path, "--json"]);
    let real_path = td("snp/trustee/snp/test-report.bin");
    let out = show(&real_path);
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert!(v["report"]["signature_algo"].is_u64(), "{v}");
    assert_eq!(v["report"]["signature_algo"], 1);
    assert_eq!(v["report"]["signature_algo_name"], "ecdsa-p384-sha384");

    let real = std::fs::read(&real_path).unwrap();
    assert_eq!(real.len(), 1184);
    assert_eq!(
        real[0x34..0x38],
        1u32.to_le_bytes(),
        "SIGNATURE_ALGO at 0x34"
    );
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let altered = 0x0102_0309u32;
    // No signing key (KEY_INFO.SIGNING_KEY, bits 4:2 at 0x48, = 7): the report is
    // unsigned and its SIGNATURE_ALGO is whatever it says.
    let mut unsigned = real.clone();
    unsigned[0x34..0x38].copy_from_slice(&altered.to_le_bytes());
    unsigned[0x48] = (unsigned[0x48] & !0x1c) | (7 << 2);
    let out = show(&write("unsigned.bin", &unsigned));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out);
    assert_eq!(v["report"]["signing_key"], "none");
    assert_eq!(v["report"]["signature_algo"], u64::from(altered));
    assert_eq!(v["report"]["signature_algo_name"], "unknown");
    // The same value in the report as signed by its VCEK.
    let mut signed = real.clone();
    signed[0x34..0x38].copy_from_slice(&altered.to_le_bytes());
    let out = show(&write("signed.bin", &signed));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIGNATURE_ALGO") && err.contains("0x1020309"),
        "{err}"
    );
}

/// A rejected verdict shows the report (and an HCL report's runtime claims) only as
/// unverified, and names what the appraisal did not check, in JSON and in the human
/// output.
#[test]
fn rejected_verdicts_are_unverified_and_name_what_was_not_checked() {
    let debug = [
        td("snp/go-sev-guest/attestation.bin"),
        "--vek".into(),
        td("snp/go-sev-guest/vcek.testcer"),
        "--chain".into(),
        td("snp/go-sev-guest/ask_ark_milan.pem"),
    ];
    let debug: Vec<&str> = debug.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut forged = std::fs::read(td("snp/trustee/snp/test-report.bin")).unwrap();
    forged[0x90] ^= 1;
    let forged_path = dir.path().join("forged.bin");
    std::fs::write(&forged_path, &forged).unwrap();
    let bad_signature = [
        forged_path.to_str().unwrap().to_owned(),
        "--vek".into(),
        td("snp/trustee/snp/test-vcek.der"),
        "--chain".into(),
        td("snp/go-sev-guest/ask_ark_milan.pem"),
    ];
    let bad_signature: Vec<&str> = bad_signature.iter().map(String::as_str).collect();
    // Rejected by the policy (a debug guest), and before it (a bad signature).
    for (args, code) in [(&debug, "policy.debug"), (&bad_signature, "bad_signature")] {
        let (exit, v) = verify_json(args);
        assert_eq!((exit, v["verdict"].as_str()), (1, Some("rejected")), "{v}");
        assert_eq!(codes(&v), vec![code]);
        assert_eq!(v["verified"], false);
        assert!(v.get("report").is_none(), "{v}");
        assert_eq!(v["unverified_report"]["signing_key"], "vcek", "{v}");
        assert!(v["unverified_report"]["measurement"].is_string(), "{v}");
        let unchecked: Vec<&str> = v["not_checked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["check"].as_str().unwrap())
            .collect();
        for check in ["measurement", "freshness", "min_tcb"] {
            assert!(unchecked.contains(&check), "{code}: {check}: {v}");
        }

        let mut human = vec!["evidence", "verify", "--offline", "--at", AT];
        human.extend_from_slice(args);
        let out = cvm(&human);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("rejected\n"), "{text}");
        assert!(text.contains(code), "{text}");
        for check in ["measurement", "freshness", "min_tcb"] {
            assert!(
                text.contains(&format!("  not checked: {check} (")),
                "{code}: {check}: {text}"
            );
        }
    }

    // An HCL report rejected (its quote carries another nonce): the runtime claims
    // are unverified too.
    let (msg, sig, pcrs, hcl, _) = write_quote_from_evidence(dir.path(), "evidence-v2.json");
    let (exit, v) = verify_json(&[
        hcl.to_str().unwrap(),
        "--vek",
        &td("snp/trustee/az-snp-vtpm/evidence-v2.json.vcek.der"),
        "--chain",
        &td("snp/go-sev-guest/ask_ark_milan.pem"),
        "--quote",
        msg.to_str().unwrap(),
        "--quote-sig",
        sig.to_str().unwrap(),
        "--nonce",
        "00112233",
        "--pcrs",
        pcrs.to_str().unwrap(),
    ]);
    assert_eq!(exit, 1, "{v}");
    assert_eq!(codes(&v), vec!["quote.nonce_mismatch"]);
    assert_eq!(v["verified"], false);
    for key in ["report", "runtime_claims", "runtime_data_bound"] {
        assert!(v.get(key).is_none(), "{key}: {v}");
        assert!(!v[format!("unverified_{key}")].is_null(), "{key}: {v}");
    }
    assert!(v["unverified_runtime_claims"]["keys"].is_array(), "{v}");
}

fn write_quote_from_evidence(
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf, PathBuf, PathBuf, String) {
    let ev: Value = serde_json::from_slice(
        &std::fs::read(td(&format!("snp/trustee/az-snp-vtpm/{name}"))).unwrap(),
    )
    .unwrap();
    let q = &ev["tpm_quote"];
    let msg = dir.join("quote.msg");
    std::fs::write(&msg, hex::decode(q["message"].as_str().unwrap()).unwrap()).unwrap();
    let sig = dir.join("quote.sig");
    std::fs::write(&sig, hex::decode(q["signature"].as_str().unwrap()).unwrap()).unwrap();
    let mut bank = serde_json::Map::new();
    for (i, p) in q["pcrs"].as_array().unwrap().iter().enumerate() {
        bank.insert(i.to_string(), p.clone());
    }
    let pcrs = dir.join("pcrs.json");
    std::fs::write(&pcrs, serde_json::json!({ "sha256": bank }).to_string()).unwrap();
    let quote = tpm_quote::Quote::parse(&std::fs::read(&msg).unwrap()).unwrap();
    (
        msg,
        sig,
        pcrs,
        PathBuf::from(td(&format!(
            "snp/trustee/az-snp-vtpm/{name}.hcl-report.bin"
        ))),
        hex::encode(quote.nonce()),
    )
}

#[test]
fn azure_hcl_report_with_quote_nonce_and_pcrs() {
    let dir = tempfile::tempdir().unwrap();
    let (msg, sig, pcrs, hcl, nonce) = write_quote_from_evidence(dir.path(), "evidence-v2.json");
    let vek = td("snp/trustee/az-snp-vtpm/evidence-v2.json.vcek.der");
    let chain = td("snp/go-sev-guest/ask_ark_milan.pem");
    let args = |nonce: &str| {
        verify_json(&[
            hcl.to_str().unwrap(),
            "--vek",
            &vek,
            "--chain",
            &chain,
            "--quote",
            msg.to_str().unwrap(),
            "--quote-sig",
            sig.to_str().unwrap(),
            "--nonce",
            nonce,
            "--pcrs",
            pcrs.to_str().unwrap(),
        ])
    };
    let (code, v) = args(&nonce);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["runtime_data_bound"], true);
    assert_eq!(v["quote"]["verified"], true);
    assert_eq!(v["quote"]["nonce"], nonce.as_str());
    assert!(v["runtime_claims"]["keys"].is_array());
    // The wrong nonce.
    let (code, v) = args("00112233");
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["quote.nonce_mismatch"]);
    // A PCR that differs from the quoted digest.
    let mut p: Value = serde_json::from_slice(&std::fs::read(&pcrs).unwrap()).unwrap();
    p["sha256"]["7"] = Value::String("11".repeat(32));
    std::fs::write(&pcrs, p.to_string()).unwrap();
    let (code, v) = args(&nonce);
    assert_eq!(code, 1);
    assert_eq!(codes(&v), vec!["quote.pcr_digest_mismatch"]);
}

#[test]
fn quote_on_a_bare_report_is_a_usage_error() {
    let q = td("snp/trustee/az-snp-vtpm/tpm-quote.msg");
    let s = td("snp/trustee/az-snp-vtpm/tpm-quote.sig");
    let (code, _) = verify_json(&[
        &td("snp/trustee/snp/test-report.bin"),
        "--vek",
        &td("snp/trustee/snp/test-vcek.der"),
        "--chain",
        &td("snp/go-sev-guest/ask_ark_milan.pem"),
        "--quote",
        &q,
        "--quote-sig",
        &s,
    ]);
    assert_eq!(code, 2);
}

#[test]
fn extended_report_certificate_table_as_chain() {
    use snp::certtable::{CertEntry, CertKind, CertTable};
    let certs = snp::cert::parse_bundle(
        &std::fs::read(td("snp/routex-client-lua/vcek-chain-milan.pem")).unwrap(),
    )
    .unwrap();
    let kind = |c: &snp::cert::AmdCert| match c.subject_cn() {
        "SEV-VCEK" => CertKind::Vcek,
        "SEV-Milan" => CertKind::Ask,
        _ => CertKind::Ark,
    };
    let table = CertTable::new(
        certs
            .iter()
            .map(|c| CertEntry {
                guid: kind(c).guid(),
                data: c.der().to_vec(),
            })
            .collect(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.bin");
    std::fs::write(&path, table.to_bytes().unwrap()).unwrap();
    let (code, v) = verify_json(&[
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
        "--chain",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn product_contradicting_the_report_is_an_error() {
    let (code, v) = verify_json(&[
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
        "--chain",
        &td("snp/routex-client-lua/vcek-chain-milan.pem"),
        "--product",
        "Genoa",
    ]);
    assert_eq!((code, v["verdict"].as_str()), (2, Some("error")), "{v}");
    assert!(
        v["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Genoa"),
        "{v}"
    );
    // The same flag agreeing with the report is fine.
    let (code, v) = verify_json(&[
        &td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin"),
        "--chain",
        &td("snp/routex-client-lua/vcek-chain-milan.pem"),
        "--product",
        "Milan",
    ]);
    assert_eq!(code, 0, "{v}");
}

/// A loopback KDS serving the real Milan collateral for one report; counts requests.
fn kds_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let certs = snp::cert::parse_bundle(
        &std::fs::read(td("snp/routex-client-lua/vcek-chain-milan.pem")).unwrap(),
    )
    .unwrap();
    let vcek = certs
        .iter()
        .find(|c| c.subject_cn() == "SEV-VCEK")
        .unwrap()
        .der()
        .to_vec();
    let chain = std::fs::read(td("snp/go-sev-guest/ask_ark_milan.pem")).unwrap();
    let crl = std::fs::read(td("snp/atakit/milan.crl.der")).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() <= 2 {
                    break;
                }
            }
            log.lock().unwrap().push(path.clone());
            let body = if path.starts_with("/vcek/v1/Milan/cert_chain") {
                chain.clone()
            } else if path.starts_with("/vcek/v1/Milan/crl") {
                crl.clone()
            } else if path.starts_with("/vcek/v1/Milan/") {
                vcek.clone()
            } else {
                Vec::new()
            };
            let status = if body.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (base, seen)
}

#[test]
fn online_collateral_is_fetched_cached_and_a_stale_crl_refreshed() {
    let (base, seen) = kds_server();
    let cache = tempfile::tempdir().unwrap();
    let report = td("snp/routex-client-lua/attestation_spec.lua.milan-v3.report.bin");
    let run = |at: &str| {
        cvm(&[
            "evidence",
            "verify",
            &report,
            "--cache",
            cache.path().to_str().unwrap(),
            "--kds-url",
            &base,
            "--at",
            at,
            "--json",
        ])
    };
    // Inside the CRL's window: VCEK, chain and CRL fetched once, then from the cache.
    let out = run("2026-07-01T00:00:00Z");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());
    assert_eq!(run("2026-07-02T00:00:00Z").status.code(), Some(0));
    assert_eq!(seen.lock().unwrap().len(), 3, "served from the cache");
    // After its nextUpdate the cached CRL is stale: it is fetched again (KDS still
    // serves the same one, so verification cannot complete: exit 2, crl_unusable).
    let out = run("2026-09-01T00:00:00Z");
    assert_eq!(out.status.code(), Some(2));
    let v = json_of(&out);
    assert_eq!(v["reasons"][0]["code"], "crl_unusable");
    let paths = seen.lock().unwrap().clone();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(paths[3].starts_with("/vcek/v1/Milan/crl"), "{paths:?}");
}
