//! Negative siblings: every way evidence can be wrong is rejected with the right error.
//!
//! Real AMD vectors are used where the defect can be made without AMD's keys (flipped
//! bytes, wrong chip, truncation, expiry); the rest use the synthetic chain in
//! `testdata/synthetic` (AMD's certificate shapes under a test root, see its MANIFEST),
//! trusted only through `TrustAnchors::dangerous_add_root`.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use snp::cert::{Vek, parse_bundle};
use snp::chain::{CertChain, ChainError, RootTrust, TrustAnchors};
use snp::crl::{Crl, CrlError};
use snp::policy::Policy;
use snp::report::ReportError;
use snp::verify::{Verifier, VerifyError};
use snp::{AttestationReport, Product};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// 2025-08-01T00:00:00Z.
const AT_2025: i64 = 1_754_006_400;
/// 2026-06-01T00:00:00Z: inside the synthetic CRLs' window.
const AT_2026: i64 = 1_780_272_000;

fn real() -> (Vec<u8>, Vek, CertChain) {
    let report = read("snp/trustee/snp/test-report.bin");
    let vek = Vek::parse(&read("snp/trustee/snp/test-vcek.der")).unwrap();
    let chain =
        CertChain::from_certs(&parse_bundle(&read("snp/go-sev-guest/ask_ark_milan.pem")).unwrap())
            .unwrap();
    (report, vek, chain)
}

fn verify_real(bytes: &[u8], vek: &Vek, chain: &CertChain) -> Result<(), VerifyError> {
    let r = AttestationReport::parse(bytes).map_err(VerifyError::Report)?;
    Verifier::new(TrustAnchors::amd())
        .verify(&r, vek, chain, AT_2025)
        .map(|_| ())
}

fn test_anchors() -> TrustAnchors {
    let mut anchors = TrustAnchors::amd();
    for (file, product) in [
        ("synthetic/ark.sha256", Product::Milan),
        ("synthetic/turin/ark.sha256", Product::Turin),
    ] {
        let text = String::from_utf8(read(file)).unwrap();
        let mut fp = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut fp).unwrap();
        anchors.dangerous_add_root(product, fp, "synthetic test root");
    }
    anchors
}

fn synthetic(
    report: &str,
    vek: &str,
    chain: &str,
    crls: &[&str],
    at: i64,
) -> Result<snp::verify::VerifiedReport, VerifyError> {
    let r = AttestationReport::parse(&read(&format!("synthetic/{report}"))).unwrap();
    let vek = Vek::parse(&read(&format!("synthetic/{vek}"))).unwrap();
    let chain = CertChain::from_certs(&parse_bundle(&read(&format!("synthetic/{chain}"))).unwrap())
        .unwrap();
    let crls = crls
        .iter()
        .map(|c| Crl::parse(&read(&format!("synthetic/{c}"))).unwrap())
        .collect();
    Verifier::new(test_anchors())
        .with_crls(crls)
        .verify(&r, &vek, &chain, at)
}

#[test]
fn real_report_baseline_verifies() {
    let (bytes, vek, chain) = real();
    verify_real(&bytes, &vek, &chain).unwrap();
}

#[test]
fn flipped_signature_byte_is_rejected() {
    let (mut bytes, vek, chain) = real();
    bytes[0x2A0 + 5] ^= 1;
    assert!(matches!(
        verify_real(&bytes, &vek, &chain),
        Err(VerifyError::BadSignature(_))
    ));
    let (mut bytes, ..) = real();
    bytes[0x2E8] ^= 0x80;
    assert!(matches!(
        verify_real(&bytes, &vek, &chain),
        Err(VerifyError::BadSignature(_))
    ));
}

#[test]
fn flipped_measurement_byte_is_rejected() {
    let (mut bytes, vek, chain) = real();
    bytes[0x90 + 47] ^= 1;
    assert!(matches!(
        verify_real(&bytes, &vek, &chain),
        Err(VerifyError::BadSignature(_))
    ));
}

#[test]
fn vek_of_another_chip_is_rejected() {
    // A real VCEK of another Milan chip at the same TCB.
    let (bytes, _, chain) = real();
    let other = Vek::parse(&read("snp/trustee/az-snp-vtpm/vcek.pem")).unwrap();
    assert!(matches!(
        verify_real(&bytes, &other, &chain),
        Err(VerifyError::ChipIdMismatch { .. })
    ));
    // Synthetic: the signature verifies, only hwID differs.
    let e = synthetic(
        "report-other-chip.bin",
        "vcek-other-chip.der",
        "chain.pem",
        &[],
        AT_2025,
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::ChipIdMismatch { .. }), "{e}");
    assert_eq!(e.code(), "chip_id_mismatch");
}

#[test]
fn vek_with_other_spls_is_rejected() {
    let e = synthetic(
        "report-other-spls.bin",
        "vcek-other-spls.der",
        "chain.pem",
        &[],
        AT_2025,
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::TcbMismatch { .. }), "{e}");
    // A real VCEK for the same chip family but another TCB.
    let (bytes, _, chain) = real();
    let other_tcb = Vek::parse(&read("snp/go-sev-guest/vcek.testcer")).unwrap();
    assert!(matches!(
        verify_real(&bytes, &other_tcb, &chain),
        Err(VerifyError::TcbMismatch { .. })
    ));
}

#[test]
fn expired_vlek_is_rejected() {
    let r = AttestationReport::parse(&read("snp/trustee/snp/test-vlek-report.bin")).unwrap();
    let vek = Vek::parse(&read("snp/trustee/snp/test-vlek.der")).unwrap();
    let chain = CertChain::from_certs(
        &parse_bundle(&read("snp/go-sev-guest/ask_ark_milan_vlek.pem")).unwrap(),
    )
    .unwrap();
    let v = Verifier::new(TrustAnchors::amd());
    v.verify(&r, &vek, &chain, AT_2025).unwrap();
    let after = vek.cert().not_after() + 1;
    let e = v.verify(&r, &vek, &chain, after).unwrap_err();
    assert!(
        matches!(e, VerifyError::Chain(ChainError::Expired { .. })),
        "{e}"
    );
    assert_eq!(e.code(), "certificate_expired");
    // Synthetic VLEK: good before 2026-01-01, expired after.
    synthetic(
        "vlek/report.bin",
        "vlek/vlek.der",
        "vlek/chain.pem",
        &[],
        AT_2025,
    )
    .unwrap();
    let e = synthetic(
        "vlek/report.bin",
        "vlek/vlek.der",
        "vlek/chain.pem",
        &[],
        AT_2026,
    )
    .unwrap_err();
    assert!(
        matches!(e, VerifyError::Chain(ChainError::Expired { .. })),
        "{e}"
    );
}

#[test]
fn vlek_report_with_a_vcek_is_a_signer_mismatch() {
    let r = AttestationReport::parse(&read("snp/trustee/snp/test-vlek-report.bin")).unwrap();
    let (_, vcek, chain) = real();
    let e = Verifier::new(TrustAnchors::amd())
        .verify(&r, &vcek, &chain, AT_2025)
        .unwrap_err();
    assert!(matches!(e, VerifyError::SignerMismatch { .. }), "{e}");
}

#[test]
fn vlek_under_the_vcek_chain_is_rejected() {
    let r = AttestationReport::parse(&read("snp/trustee/snp/test-vlek-report.bin")).unwrap();
    let vek = Vek::parse(&read("snp/trustee/snp/test-vlek.der")).unwrap();
    let (_, _, vcek_chain) = real();
    let e = Verifier::new(TrustAnchors::amd())
        .verify(&r, &vek, &vcek_chain, AT_2025)
        .unwrap_err();
    assert!(
        matches!(e, VerifyError::Chain(ChainError::Mismatch { .. })),
        "{e}"
    );
}

#[test]
fn crl_that_revokes_the_ask_rejects() {
    let ok = synthetic(
        "report.bin",
        "vcek.der",
        "chain.pem",
        &["crl-empty.der"],
        AT_2026,
    )
    .unwrap();
    assert!(matches!(ok.trust(), RootTrust::Dangerous { .. }));
    let e = synthetic(
        "report.bin",
        "vcek.der",
        "chain.pem",
        &["crl-revokes-ask.der"],
        AT_2026,
    )
    .unwrap_err();
    assert!(
        matches!(e, VerifyError::Chain(ChainError::Revoked { .. })),
        "{e}"
    );
    assert_eq!(e.code(), "revoked");
    assert!(!e.is_collateral_problem());
}

#[test]
fn unusable_crls_mean_we_could_not_verify() {
    for (crl, want) in [
        ("crl-revokes-ask-wrong-signer.der", "signature"),
        ("crl-expired.der", "current"),
    ] {
        let e = synthetic("report.bin", "vcek.der", "chain.pem", &[crl], AT_2026).unwrap_err();
        assert!(e.is_collateral_problem(), "{crl}: {e}");
        assert!(e.to_string().contains(want), "{crl}: {e}");
        let VerifyError::Chain(ChainError::Crl(inner)) = e else {
            panic!("{crl}")
        };
        assert!(matches!(
            inner,
            CrlError::BadSignature(_) | CrlError::NotCurrent { .. }
        ));
    }
}

/// A CRL that is not the chain ARK's (here the Milan test root's CRL given for a Turin
/// chain) was skipped before; now it means "could not verify".
#[test]
fn a_crl_of_another_ark_means_we_could_not_verify() {
    let r = AttestationReport::parse(&read("synthetic/turin/report.bin")).unwrap();
    let vek = Vek::parse(&read("synthetic/turin/vcek.der")).unwrap();
    let chain =
        CertChain::from_certs(&parse_bundle(&read("synthetic/turin/chain.pem")).unwrap()).unwrap();
    let v = Verifier::new(test_anchors());
    let ok = v.verify(&r, &vek, &chain, AT_2026).unwrap();
    assert_eq!(ok.revocation().name(), "not_checked");
    let e = Verifier::new(test_anchors())
        .with_crls(vec![
            Crl::parse(&read("synthetic/crl-revokes-ask.der")).unwrap(),
        ])
        .verify(&r, &vek, &chain, AT_2026)
        .unwrap_err();
    assert!(e.is_collateral_problem(), "{e}");
    assert!(
        matches!(
            &e,
            VerifyError::Chain(ChainError::Crl(CrlError::Issuer { crl_issuer, .. })) if crl_issuer == "ARK-Milan"
        ),
        "{e}"
    );
    // The revocation state says which CRLs were applied.
    let checked = synthetic(
        "report.bin",
        "vcek.der",
        "chain.pem",
        &["crl-empty.der"],
        AT_2026,
    )
    .unwrap();
    assert_eq!(
        checked.revocation(),
        &snp::verify::Revocation::Checked {
            crl_numbers: vec!["01".into()]
        }
    );
}

/// The ARK and ASK must be CAs allowed to sign (the ARK also CRLs); the VEK must not
/// be a CA. Each fixture breaks one constraint of the otherwise valid synthetic chain.
#[test]
fn ca_constraints_are_checked() {
    let r = AttestationReport::parse(&read("synthetic/report.bin")).unwrap();
    let vek = Vek::parse(&read("synthetic/vcek.der")).unwrap();
    let mut anchors = test_anchors();
    let pin = String::from_utf8(read("synthetic/constraints/ark-no-crlsign.sha256")).unwrap();
    let mut fp = [0u8; 32];
    hex::decode_to_slice(pin.trim(), &mut fp).unwrap();
    anchors.dangerous_add_root(Product::Milan, fp, "synthetic ARK without cRLSign");
    for (chain, want) in [
        ("chain-ask-not-ca.pem", "cA: TRUE"),
        ("chain-ask-no-keycertsign.pem", "keyCertSign"),
        ("chain-ark-no-crlsign.pem", "cRLSign"),
    ] {
        let chain = CertChain::from_certs(
            &parse_bundle(&read(&format!("synthetic/constraints/{chain}"))).unwrap(),
        )
        .unwrap();
        let e = Verifier::new(anchors.clone())
            .verify(&r, &vek, &chain, AT_2025)
            .unwrap_err();
        assert_eq!(e.code(), "certificate_constraints", "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(!e.is_collateral_problem());
    }
    let chain =
        CertChain::from_certs(&parse_bundle(&read("synthetic/chain.pem")).unwrap()).unwrap();
    let ca_vek = Vek::parse(&read("synthetic/constraints/vcek-ca.der")).unwrap();
    let e = Verifier::new(anchors.clone())
        .verify(&r, &ca_vek, &chain, AT_2025)
        .unwrap_err();
    assert_eq!(e.code(), "certificate_constraints", "{e}");
    assert!(e.to_string().contains("must not be a CA"), "{e}");
    // The unbroken chain verifies under the same anchors.
    Verifier::new(anchors)
        .verify(&r, &vek, &chain, AT_2025)
        .unwrap();
}

#[test]
fn synthetic_root_is_untrusted_without_the_dangerous_option() {
    let r = AttestationReport::parse(&read("synthetic/report.bin")).unwrap();
    let vek = Vek::parse(&read("synthetic/vcek.der")).unwrap();
    let chain =
        CertChain::from_certs(&parse_bundle(&read("synthetic/chain.pem")).unwrap()).unwrap();
    let e = Verifier::new(TrustAnchors::amd())
        .verify(&r, &vek, &chain, AT_2025)
        .unwrap_err();
    assert!(
        matches!(e, VerifyError::Chain(ChainError::UntrustedRoot { .. })),
        "{e}"
    );
    assert_eq!(e.code(), "untrusted_root");
}

#[test]
fn turin_and_v5_reports_verify() {
    let v = synthetic(
        "turin/report.bin",
        "turin/vcek.der",
        "turin/chain.pem",
        &[],
        AT_2025,
    )
    .unwrap();
    let r = v.report();
    assert_eq!(r.product(), Some(Product::Turin));
    let t = r.reported_tcb();
    assert_eq!(
        (t.fmc(), t.bootloader(), t.tee(), t.snp(), t.microcode()),
        (Some(1), 2, 3, 4, 5)
    );
    let v5 = synthetic("report-v5.bin", "vcek.der", "chain.pem", &[], AT_2025).unwrap();
    assert_eq!(v5.report().version().number(), 5);
    assert_eq!(v5.report().launch_mit_vector(), Some(3));
    assert_eq!(v5.report().current_mit_vector(), Some(7));
}

#[test]
fn turin_report_with_a_milan_vcek_is_a_product_mismatch() {
    let e = synthetic("turin/report.bin", "vcek.der", "chain.pem", &[], AT_2025).unwrap_err();
    assert!(
        matches!(e, VerifyError::Report(ReportError::ProductMismatch { .. })),
        "{e}"
    );
}

#[test]
fn non_zero_reserved_unknown_version_truncated() {
    let (bytes, ..) = real();
    for off in [0x4C, 0x18C, 0x1F8, 0x29F, 0x330, 0x49F] {
        let mut b = bytes.clone();
        b[off] = 0xff;
        assert!(
            matches!(AttestationReport::parse(&b), Err(ReportError::Reserved { offset, .. }) if offset <= off),
            "offset {off:#x}"
        );
    }
    // (Version 4 is read with version 3's layout: see report.rs's unit tests.)
    for v in [0u32, 1, 6, 0xffff_ffff] {
        let mut b = bytes.clone();
        b[0..4].copy_from_slice(&v.to_le_bytes());
        assert_eq!(
            AttestationReport::parse(&b).unwrap_err(),
            ReportError::UnsupportedVersion(v)
        );
    }
    for n in 0..bytes.len() {
        assert_eq!(
            AttestationReport::parse(&bytes[..n]).unwrap_err(),
            ReportError::Length { got: n }
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(AttestationReport::parse(&long).is_err());
}

fn policy_violations(report: &str, policy: &str) -> Vec<&'static str> {
    let v = synthetic(report, "vcek.der", "chain.pem", &[], AT_2025).unwrap();
    Policy::from_str_any(policy)
        .unwrap()
        .evaluate(&v)
        .into_iter()
        .map(|v| v.code)
        .collect()
}

#[test]
fn debug_guest_fails_the_default_policy() {
    assert_eq!(
        policy_violations("report-debug.bin", ""),
        vec!["policy.debug"]
    );
    assert!(policy_violations("report-debug.bin", "allow_debug = true").is_empty());
    assert!(policy_violations("report.bin", "").is_empty());
    // A real debug report (go-sev-guest) too.
    let r = AttestationReport::parse(&read("snp/go-sev-guest/attestation.bin")).unwrap();
    let vek = Vek::parse(&read("snp/go-sev-guest/vcek.testcer")).unwrap();
    let (_, _, chain) = real();
    let v = Verifier::new(TrustAnchors::amd())
        .verify(&r, &vek, &chain, AT_2025)
        .unwrap();
    let codes: Vec<_> = Policy::default()
        .evaluate(&v)
        .into_iter()
        .map(|v| v.code)
        .collect();
    assert_eq!(codes, vec!["policy.debug"]);
}

#[test]
fn vmpl_1_where_0_is_required() {
    assert_eq!(
        policy_violations("report-vmpl1.bin", "vmpl = 0"),
        vec!["policy.vmpl"]
    );
    assert!(policy_violations("report-vmpl1.bin", "vmpl = 1").is_empty());
    assert_eq!(
        policy_violations("report.bin", "vmpl = 1"),
        vec!["policy.vmpl"]
    );
}

#[test]
fn every_policy_rule_can_fail() {
    let r = AttestationReport::parse(&read("synthetic/report.bin")).unwrap();
    let m = hex::encode(r.measurement());
    let other = "00".repeat(48);
    let t = r.reported_tcb();
    assert!(
        policy_violations("report.bin", &format!("allowed_measurements = [\"{m}\"]")).is_empty()
    );
    assert_eq!(
        policy_violations(
            "report.bin",
            &format!("allowed_measurements = [\"{other}\"]")
        ),
        vec!["policy.measurement"]
    );
    let ok_tcb = format!(
        "min_tcb = {{ bootloader = {}, snp = {}, microcode = {} }}",
        t.bootloader(),
        t.snp(),
        t.microcode()
    );
    assert!(policy_violations("report.bin", &ok_tcb).is_empty());
    let high = format!(
        "min_tcb = {{ microcode = {} }}",
        u16::from(t.microcode()) + 1
    );
    assert_eq!(policy_violations("report.bin", &high), vec!["policy.tcb"]);
    assert_eq!(
        policy_violations("report.bin", "min_guest_svn = 99"),
        vec!["policy.guest_svn"]
    );
    let rd = hex::encode(r.report_data());
    assert!(policy_violations("report.bin", &format!("report_data = \"{rd}\"")).is_empty());
    assert_eq!(
        policy_violations(
            "report.bin",
            &format!("report_data = \"{}\"", "11".repeat(64))
        ),
        vec!["policy.report_data"]
    );
    assert_eq!(
        policy_violations(
            "report.bin",
            &format!("allowed_id_key_digests = [\"{}\"]", "11".repeat(48))
        ),
        vec!["policy.id_key"]
    );
    assert_eq!(
        policy_violations(
            "report.bin",
            &format!("allowed_author_key_digests = [\"{}\"]", "22".repeat(48))
        ),
        vec!["policy.author_key"]
    );
    // The base report (platform_info 0x25) has SMT and ECC, not TSME.
    assert!(
        policy_violations("report.bin", "required_platform_info = [\"smt_enabled\"]").is_empty()
    );
    assert_eq!(
        policy_violations("report.bin", "required_platform_info = [\"tsme_enabled\"]"),
        vec!["policy.platform_info"]
    );
    assert_eq!(
        policy_violations("report.bin", "allow_smt = false"),
        vec!["policy.smt"]
    );
    // LAUNCH_TCB, firmware API and build (the base report: launch TCB = reported TCB,
    // firmware 1.55.29).
    let lt = r.launch_tcb();
    assert!(
        policy_violations(
            "report.bin",
            &format!("min_launch_tcb = {{ snp = {} }}", lt.snp())
        )
        .is_empty()
    );
    assert_eq!(
        policy_violations(
            "report.bin",
            &format!("min_launch_tcb = {{ snp = {} }}", u16::from(lt.snp()) + 1)
        ),
        vec!["policy.launch_tcb"]
    );
    assert_eq!(r.current_firmware().to_string(), "1.55.29");
    assert!(policy_violations("report.bin", "min_firmware_api = \"1.55\"").is_empty());
    assert_eq!(
        policy_violations("report.bin", "min_firmware_api = \"1.56\""),
        vec!["policy.firmware_api"]
    );
    assert_eq!(
        policy_violations("report.bin", "min_firmware_api = \"2.0\""),
        vec!["policy.firmware_api"]
    );
    assert!(policy_violations("report.bin", "min_firmware_build = 29").is_empty());
    assert_eq!(
        policy_violations("report.bin", "min_firmware_build = 30"),
        vec!["policy.firmware_build"]
    );
    // No CRL was applied to this verification.
    assert_eq!(
        policy_violations("report.bin", "require_revocation_check = true"),
        vec!["policy.revocation"]
    );
    let checked = synthetic(
        "report.bin",
        "vcek.der",
        "chain.pem",
        &["crl-empty.der"],
        AT_2026,
    )
    .unwrap();
    assert!(
        Policy::from_str_any("require_revocation_check = true")
            .unwrap()
            .evaluate(&checked)
            .is_empty()
    );
}

/// The quick start's real Milan report runs microcode 206 over a committed 115: its
/// firmware is provisional. Accepted by default, refused on request.
#[test]
fn provisional_firmware_can_be_refused() {
    let (bytes, vek, chain) = real();
    let r = AttestationReport::parse(&bytes).unwrap();
    assert_ne!(r.current_tcb(), r.committed_tcb());
    let v = Verifier::new(TrustAnchors::amd())
        .verify(&r, &vek, &chain, AT_2025)
        .unwrap();
    assert!(Policy::default().evaluate(&v).is_empty());
    let codes: Vec<_> = Policy::from_str_any("allow_provisional_firmware = false")
        .unwrap()
        .evaluate(&v)
        .into_iter()
        .map(|v| v.code)
        .collect();
    assert_eq!(codes, vec!["policy.provisional_firmware"]);
    // A report whose committed and current TCB agree passes the same policy.
    assert!(policy_violations("report.bin", "allow_provisional_firmware = false").is_empty());
}
