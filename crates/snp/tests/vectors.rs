//! Every real report in `testdata/snp` parses to exactly the values its
//! `expected-values.json` records (computed independently with Python `cryptography`),
//! and verifies with its VEK and AMD chain.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use snp::cert::{AmdCert, Vek, parse_bundle};
use snp::chain::{CertChain, TrustAnchors};
use snp::crl::Crl;
use snp::hcl::HclReport;
use snp::input::{Evidence, parse_evidence};
use snp::verify::Verifier;
use snp::{AttestationReport, TcbVersion};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/snp")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn expected() -> Value {
    serde_json::from_slice(&read("expected-values.json")).unwrap()
}

/// 2025-08-01T00:00:00Z: inside the validity window of every VEK in the vectors.
const AT: i64 = 1_754_006_400;

fn tcb_matches(t: TcbVersion, e: &Value, what: &str) {
    assert_eq!(
        format!("{:#018x}", t.raw()),
        e["raw"].as_str().unwrap(),
        "{what} raw"
    );
    assert_eq!(
        u64::from(t.bootloader()),
        e["bl"].as_u64().unwrap(),
        "{what} bl"
    );
    assert_eq!(u64::from(t.tee()), e["tee"].as_u64().unwrap(), "{what} tee");
    assert_eq!(u64::from(t.snp()), e["snp"].as_u64().unwrap(), "{what} snp");
    assert_eq!(
        u64::from(t.microcode()),
        e["ucode"].as_u64().unwrap(),
        "{what} ucode"
    );
    assert_eq!(
        t.fmc().map(u64::from),
        e.get("fmc").and_then(Value::as_u64),
        "{what} fmc"
    );
}

fn hexs(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn check_fields(r: &AttestationReport, e: &Value, name: &str) {
    assert_eq!(
        u64::from(r.version().number()),
        e["version"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(
        u64::from(r.guest_svn()),
        e["guest_svn"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(
        format!("{:#x}", r.policy().raw()),
        hexs(&e["policy"]),
        "{name}"
    );
    assert_eq!(u64::from(r.vmpl()), e["vmpl"].as_u64().unwrap(), "{name}");
    assert_eq!(
        format!("{:#x}", r.platform_info().raw()),
        hexs(&e["platform_info"]),
        "{name}"
    );
    assert_eq!(r.current_firmware().to_string(), hexs(&e["fw"]), "{name}");
    assert_eq!(
        hex::encode(r.measurement()),
        hexs(&e["measurement"]),
        "{name}"
    );
    assert_eq!(
        hex::encode(r.report_data()),
        hexs(&e["report_data"]),
        "{name}"
    );
    assert_eq!(hex::encode(r.chip_id()), hexs(&e["chip_id"]), "{name}");
    assert_eq!(hex::encode(r.host_data()), hexs(&e["host_data"]), "{name}");
    assert_eq!(
        hex::encode(r.id_key_digest()),
        hexs(&e["id_key_digest"]),
        "{name}"
    );
    assert_eq!(
        hex::encode(r.author_key_digest()),
        hexs(&e["author_key_digest"]),
        "{name}"
    );
    assert_eq!(hex::encode(r.family_id()), hexs(&e["family_id"]), "{name}");
    assert_eq!(hex::encode(r.image_id()), hexs(&e["image_id"]), "{name}");
    assert_eq!(hex::encode(r.report_id()), hexs(&e["report_id"]), "{name}");
    let signer = match e["signer_info"].as_str().unwrap() {
        "0x0" => "vcek",
        "0x4" => "vlek",
        other => panic!("{name}: signer_info {other}"),
    };
    assert_eq!(r.signing_key().name(), signer, "{name}");
    tcb_matches(r.reported_tcb(), &e["reported_tcb"], name);
    tcb_matches(r.current_tcb(), &e["current_tcb"], name);
    tcb_matches(r.committed_tcb(), &e["committed_tcb"], name);
    tcb_matches(r.launch_tcb(), &e["launch_tcb"], name);
    match e["cpuid"].as_array() {
        Some(c) => {
            let got = r.cpuid().unwrap();
            let want: Vec<u64> = c.iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(
                vec![
                    u64::from(got.family),
                    u64::from(got.model),
                    u64::from(got.stepping)
                ],
                want,
                "{name}"
            );
        }
        None => assert!(r.cpuid().is_none(), "{name}"),
    }
    // Version 2/3 reports have no mitigation vectors; the checker printed them as zero.
    if let Some(m) = e.get("launch_mit_vector") {
        assert_eq!(
            format!("{:#x}", r.launch_mit_vector().unwrap_or(0)),
            hexs(m),
            "{name}"
        );
    }
    if let Some(sha) = e.get("sha256") {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, r.as_bytes());
        assert_eq!(hex::encode(d.as_ref()), hexs(sha), "{name}");
    }
}

/// The VEK for `vek_file` and an AMD chain for it.
fn collateral(vek_file: &str) -> (Vek, CertChain) {
    let certs = parse_bundle(&read(vek_file)).unwrap();
    let vek = certs
        .iter()
        .find(|c| c.subject_cn().starts_with("SEV-V"))
        .map(|c| Vek::from_cert(c.clone()).unwrap())
        .unwrap();
    let chain = CertChain::from_certs(&certs).unwrap_or_else(|_| {
        let suffix = match (vek.kind(), vek.product()) {
            (snp::cert::VekKind::Vcek, snp::Product::Turin) => "_vcek",
            (snp::cert::VekKind::Vcek, _) => "",
            (snp::cert::VekKind::Vlek, _) => "_vlek",
        };
        let file = format!(
            "go-sev-guest/ask_ark_{}{suffix}.pem",
            vek.product().name().to_lowercase()
        );
        CertChain::from_certs(&parse_bundle(&read(&file)).unwrap()).unwrap()
    });
    (vek, chain)
}

#[test]
fn reports_parse_to_expected_values_and_verify() {
    let exp = expected();
    let verifier = Verifier::new(TrustAnchors::amd());
    let mut verified = 0;
    for (name, e) in exp["reports"].as_object().unwrap() {
        let (file, in_hcl) = match name.split_once('#') {
            Some((f, _)) => (f, true),
            None => (name.as_str(), false),
        };
        let ev = parse_evidence(&read(file)).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(matches!(ev, Evidence::Hcl(_)), in_hcl, "{name}");
        let r = ev.report();
        check_fields(r, e, name);
        let product = e["product"].as_str().unwrap();
        match r.product() {
            Some(p) => assert_eq!(p.name(), product, "{name}"),
            None => assert!(product.starts_with("Milan-or-Genoa"), "{name}: {product}"),
        }
        if let Some(vek_file) = e.get("vek_file").and_then(Value::as_str) {
            assert_eq!(e["sig"], "OK");
            let (vek, chain) = collateral(vek_file);
            let v = verifier
                .verify(r, &vek, &chain, AT)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(v.trust().is_amd());
            assert_eq!(v.report().product(), Some(vek.product()));
            verified += 1;
        }
    }
    assert_eq!(verified, 8, "every report with a VEK verified");
}

#[test]
fn vek_extensions_match() {
    let exp = expected();
    for (file, e) in exp["veks"].as_object().unwrap() {
        let certs = parse_bundle(&read(file)).unwrap();
        let cert = certs
            .iter()
            .find(|c| c.subject_cn().starts_with("SEV-V"))
            .unwrap();
        let vek = Vek::from_cert(cert.clone()).unwrap_or_else(|err| panic!("{file}: {err}"));
        let x = vek.extensions();
        let ext = &e["ext"];
        assert_eq!(x.product_name, hexs(&ext["productName"]), "{file}");
        assert_eq!(
            u64::from(x.struct_version),
            ext["structVersion"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            u64::from(x.bl_spl),
            ext["blSPL"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            u64::from(x.tee_spl),
            ext["teeSPL"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            u64::from(x.snp_spl),
            ext["snpSPL"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            u64::from(x.ucode_spl),
            ext["ucodeSPL"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            x.fmc_spl.map(u64::from),
            ext.get("fmcSPL").and_then(Value::as_u64),
            "{file}"
        );
        for (i, key) in ["spl4", "spl5", "spl6", "spl7"].iter().enumerate() {
            assert_eq!(
                x.spl4_7[i].map(u64::from),
                ext.get(*key).and_then(Value::as_u64),
                "{file} {key}"
            );
        }
        assert_eq!(
            x.hw_id.as_ref().map(hex::encode).as_deref(),
            ext.get("hwID").and_then(Value::as_str),
            "{file}"
        );
        assert_eq!(
            x.csp_id.as_deref(),
            ext.get("cspID").and_then(Value::as_str),
            "{file}"
        );

        // The chain verdict of the independent checker.
        let (vek, chain) = collateral(file);
        let at = vek.cert().not_before() + 86_400;
        let ok = Verifier::new(TrustAnchors::amd()).verify_chain_only(&vek, &chain, at);
        assert_eq!(
            ok.is_ok(),
            hexs(&e["chain"]).starts_with("OK"),
            "{file}: {ok:?}"
        );
    }
}

#[test]
fn turin_vcek_and_chain() {
    let vek = Vek::parse(&read("virtee-sev/vcek_turin.der")).unwrap();
    assert_eq!(vek.product(), snp::Product::Turin);
    assert_eq!(vek.extensions().hw_id.as_ref().map(Vec::len), Some(8));
    assert!(vek.tcb().fmc().is_some());
    let chain = CertChain::from_certs(&parse_bundle(&read("virtee-sev/cert_chain_turin")).unwrap())
        .unwrap();
    let at = vek.cert().not_before() + 86_400;
    Verifier::new(TrustAnchors::amd())
        .verify_chain_only(&vek, &chain, at)
        .unwrap();
}

#[test]
fn amd_crl_verifies_under_the_milan_ark() {
    let exp = expected();
    let e = &exp["crls"]["atakit/milan.crl.der"];
    let crl = Crl::parse(&read("atakit/milan.crl.der")).unwrap();
    assert!(crl.revoked_serials().is_empty());
    assert_eq!(
        i64::from_str_radix(&crl.number_hex(), 16).unwrap(),
        e["crl_number"].as_i64().unwrap()
    );
    assert_eq!(crl.reencode().unwrap(), read("atakit/milan.crl.der"));
    let certs = parse_bundle(&read("go-sev-guest/ask_ark_milan.pem")).unwrap();
    let chain = CertChain::from_certs(&certs).unwrap();
    let inside = crl.this_update() + 3600;
    crl.verify(chain.ark(), inside).unwrap();
    // Outside its window, or against another issuer, it is unusable.
    assert!(
        crl.verify(chain.ark(), crl.next_update().unwrap() + 1)
            .is_err()
    );
    assert!(crl.verify(chain.ask(), inside).is_err());
    let genoa =
        CertChain::from_certs(&parse_bundle(&read("go-sev-guest/ask_ark_genoa.pem")).unwrap())
            .unwrap();
    assert!(crl.verify(genoa.ark(), inside).is_err());
    // The chain verifies with the CRL applied (the ASK is not listed).
    chain.verify(&TrustAnchors::amd(), &[crl], inside).unwrap();
}

#[test]
fn azure_hcl_reports_bind_their_runtime_claims() {
    let exp = expected();
    for (name, e) in exp["azure"].as_object().unwrap() {
        let Some(hdr) = e.get("hcl_header") else {
            continue;
        };
        let file = if name.ends_with(".json") {
            format!("{name}.hcl-report.bin")
        } else {
            name.clone()
        };
        let h = HclReport::parse(&read(&file)).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(u64::from(h.version()), hdr["version"].as_u64().unwrap());
        assert_eq!(
            u64::from(h.request_type()),
            hdr["request_type"].as_u64().unwrap()
        );
        assert_eq!(
            h.runtime_data().len() as u64,
            e["igvm"]["variable_data_size"].as_u64().unwrap()
        );
        assert_eq!(
            h.runtime_data_bound(),
            e["var_data_sha256_matches_report_data"].as_bool().unwrap(),
            "{name}"
        );
        assert!(h.runtime_data_bound());
        assert_eq!(
            Value::Object(h.claims().clone()),
            e["var_data_json"],
            "{name}"
        );
        assert!(h.rsa_key_components("HCLAkPub").is_some(), "{name}");
        // The encoder opencvm's vTPM uses reproduces Azure's paravisor byte for byte.
        let raw = read(&file);
        assert_eq!(
            snp::hcl::encode(h.report().as_bytes(), h.runtime_data(), raw.len()).unwrap(),
            raw,
            "{name}"
        );
        if e.get("measurement").is_some() {
            check_fields(h.report(), e, name);
            let vek_file = if name.ends_with(".json") {
                format!("{name}.vcek.der")
            } else {
                "trustee/az-snp-vtpm/vcek.pem".to_owned()
            };
            let (vek, chain) = if dir().join(&vek_file).exists() {
                collateral(&vek_file)
            } else {
                // evidence-v0.json carries its VCEK as PEM inside the JSON.
                let j: Value = serde_json::from_slice(&read(name)).unwrap();
                let vek = Vek::parse(j["vcek"].as_str().unwrap().as_bytes()).unwrap();
                let (_, chain) = collateral("trustee/az-snp-vtpm/vcek.pem");
                (vek, chain)
            };
            Verifier::new(TrustAnchors::amd())
                .verify(h.report(), &vek, &chain, AT)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }
}

/// Newer Azure paravisors write header version 2 (same layout). The header is not
/// signed, so a real version 1 report with its version field set to 2 is exactly what
/// such a host writes for the same guest: it must parse and verify like the original.
#[test]
fn azure_hcl_header_version_2_reads_like_version_1() {
    let raw = read("trustee/az-snp-vtpm/hcl-report.bin");
    let v1 = HclReport::parse(&raw).unwrap();
    let mut v2_bytes = raw.clone();
    v2_bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = HclReport::parse(&v2_bytes).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.report().as_bytes(), v1.report().as_bytes());
    assert_eq!(v2.claims(), v1.claims());
    assert!(v2.runtime_data_bound());
    let (vek, chain) = collateral("trustee/az-snp-vtpm/vcek.pem");
    Verifier::new(TrustAnchors::amd())
        .verify(v2.report(), &vek, &chain, AT)
        .unwrap();
    for unknown in [0u32, 3, 0x100] {
        let mut b = raw.clone();
        b[4..8].copy_from_slice(&unknown.to_le_bytes());
        let e = HclReport::parse(&b).unwrap_err();
        assert!(e.to_string().contains("version"), "{unknown}: {e}");
    }
    // The IGVM request data stays at version 1.
    let mut b = v2_bytes;
    b[0x4C0 + 4..0x4C0 + 8].copy_from_slice(&2u32.to_le_bytes());
    assert!(HclReport::parse(&b).is_err());
}

#[test]
fn ark_pins_match_the_bundled_chains() {
    for p in ["milan", "genoa", "turin_vcek"] {
        let certs = parse_bundle(&read(&format!("go-sev-guest/ask_ark_{p}.pem"))).unwrap();
        let ark: &AmdCert = certs
            .iter()
            .find(|c| c.subject_cn().starts_with("ARK-"))
            .unwrap();
        let pinned = snp::chain::AMD_ARK_SHA256
            .iter()
            .any(|(_, fp)| *fp == hex::encode(ark.sha256()));
        assert!(pinned, "{p}");
    }
}

#[test]
fn bundles_with_both_ask_and_asvk_pick_by_vek_kind() {
    let certs = parse_bundle(&read("trustee/ca-bundles/milan_ask_ark_asvk.pem")).unwrap();
    assert!(
        CertChain::from_certs(&certs).is_err(),
        "ambiguous without a VEK"
    );
    let vcek = CertChain::from_certs_for(&certs, snp::cert::VekKind::Vcek).unwrap();
    assert_eq!(vcek.ask().subject_cn(), "SEV-Milan");
    let vlek = CertChain::from_certs_for(&certs, snp::cert::VekKind::Vlek).unwrap();
    assert_eq!(vlek.ask().subject_cn(), "SEV-VLEK-Milan");
    let r = AttestationReport::parse(&read("trustee/snp/test-vlek-report.bin")).unwrap();
    let vek = Vek::parse(&read("trustee/snp/test-vlek.der")).unwrap();
    Verifier::new(TrustAnchors::amd())
        .verify(&r, &vek, &vlek, AT)
        .unwrap();
}
