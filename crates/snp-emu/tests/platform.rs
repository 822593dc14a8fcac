//! The emulated secure processor end to end: its reports verify with the `snp`
//! verifier only when emulator roots are trusted, every field round-trips, TCB changes
//! rotate the VCEK, SNP-disabled hosts refuse, derived keys behave.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use snp::Product;
use snp::cert::{Vek, parse_bundle};
use snp::chain::{CertChain, ChainError, RootTrust, TrustAnchors};
use snp::verify::{Verifier, VerifyError};
use snp_emu::guest::{FieldSelect, Guest, GuestError, KeyRequest, LaunchConfig};
use snp_emu::platform::{Platform, PlatformConfig, PlatformError};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Trusts this platform's ARK, pinned (as `cvm snp export-roots` and
/// `--dangerously-trust-emulator-roots` do), not every root labelled an emulator's.
fn pin_roots(anchors: &mut TrustAnchors, p: &Platform) {
    let ark = snp::cert::AmdCert::from_der(p.ark_der()).unwrap();
    anchors.dangerously_trust_emulator_root(&ark).unwrap();
}

fn verify(
    p: &Platform,
    report: &[u8],
    emulator: bool,
) -> Result<snp::verify::VerifiedReport, VerifyError> {
    let certs = parse_bundle(p.chain_pem().as_bytes()).unwrap();
    let vek = Vek::from_cert(certs[0].clone()).unwrap();
    let chain = CertChain::from_certs(&certs).unwrap();
    let mut anchors = TrustAnchors::amd();
    if emulator {
        pin_roots(&mut anchors, p);
    }
    let r = snp::AttestationReport::parse(report).unwrap();
    Verifier::new(anchors).verify(&r, &vek, &chain, now())
}

#[test]
fn every_product_verifies_only_with_emulator_roots_trusted() {
    for product in Product::ALL {
        let dir = tempfile::tempdir().unwrap();
        let p = Platform::create(
            dir.path(),
            PlatformConfig::new(product),
            Some(b"snp-emu test seed: products"),
        )
        .unwrap();
        let guest = p.launch(LaunchConfig::default()).unwrap();
        let rd = [7u8; 64];
        let report = p.get_report(&guest, &rd, 0).unwrap();
        let v = verify(&p, &report, true).unwrap_or_else(|e| panic!("{product}: {e}"));
        assert_eq!(v.trust(), &RootTrust::Emulated);
        assert_eq!(v.product(), product);
        assert_eq!(v.report().report_data(), &rd);
        let e = verify(&p, &report, false).unwrap_err();
        assert!(
            matches!(e, VerifyError::Chain(ChainError::EmulatedRoot { .. })),
            "{product}: {e}"
        );
        assert!(e.to_string().contains("emulator"), "{e}");
        assert_eq!(e.code(), "emulated_root");
    }
}

#[test]
fn fields_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::new(Product::Genoa);
    config.tsme = true;
    let p = Platform::create(dir.path(), config, None).unwrap();
    let launch = LaunchConfig {
        policy: 0x3_001f | 1 << 18,
        measurement: [0xab; 48],
        host_data: [0xcd; 32],
        family_id: [1; 16],
        image_id: [2; 16],
        guest_svn: 9,
        id_key_digest: [3; 48],
        author_key_digest: [4; 48],
        mask_chip_id: false,
    };
    let guest = p.launch(launch.clone()).unwrap();
    let report = p.get_report(&guest, &[5; 64], 2).unwrap();
    let v = verify(&p, &report, true).unwrap();
    let r = v.report();
    assert_eq!(r.version().number(), 3);
    assert_eq!(r.policy().raw(), launch.policy);
    assert!(r.policy().migrate_ma());
    assert_eq!(r.measurement(), &launch.measurement);
    assert_eq!(r.host_data(), &launch.host_data);
    assert_eq!(r.family_id(), &launch.family_id);
    assert_eq!(r.image_id(), &launch.image_id);
    assert_eq!(r.guest_svn(), 9);
    assert_eq!(r.id_key_digest(), &launch.id_key_digest);
    assert_eq!(r.author_key_digest(), &launch.author_key_digest);
    assert!(r.author_key_en());
    assert_eq!(r.vmpl(), 2);
    assert_eq!(r.chip_id(), p.chip_id());
    assert_eq!(r.report_id(), guest.report_id());
    assert_eq!(r.reported_tcb(), p.config().tcb());
    assert_eq!(r.launch_tcb(), p.config().tcb());
    assert!(r.platform_info().tsme_enabled() && r.platform_info().smt_enabled());
    assert_eq!(r.current_firmware(), p.config().firmware_version());
    assert_eq!(r.cpuid().map(|c| (c.family, c.model)), Some((0x19, 0x11)));

    // Turin: version 5 layout, 8-byte hwID, fmc in the TCB.
    let dir = tempfile::tempdir().unwrap();
    let t = Platform::create(dir.path(), PlatformConfig::new(Product::Turin), None).unwrap();
    let g = t
        .launch(LaunchConfig {
            mask_chip_id: true,
            ..LaunchConfig::default()
        })
        .unwrap();
    let v = verify(&t, &t.get_report(&g, &[0; 64], 0).unwrap(), true).unwrap();
    assert_eq!(v.report().version().number(), 5);
    assert_eq!(v.report().chip_id(), &[0; 64], "masked");
    assert_eq!(v.report().reported_tcb().fmc(), Some(1));
}

#[test]
fn state_persists_and_a_tcb_change_rotates_the_vcek() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::create(
        dir.path(),
        PlatformConfig::new(Product::Milan),
        Some(b"snp-emu test seed: persistence"),
    )
    .unwrap();
    let (chip, vcek) = (*p.chip_id(), p.vcek_der().to_vec());
    assert!(matches!(
        Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None),
        Err(PlatformError::Exists(_))
    ));
    let reopened = Platform::open(dir.path()).unwrap();
    assert_eq!(
        (reopened.chip_id(), reopened.vcek_der()),
        (&chip, &vcek[..])
    );
    // The same seed gives the same chip and the same VCEK key.
    let dir2 = tempfile::tempdir().unwrap();
    let twin = Platform::create(
        dir2.path(),
        PlatformConfig::new(Product::Milan),
        Some(b"snp-emu test seed: persistence"),
    )
    .unwrap();
    assert_eq!(twin.chip_id(), &chip);
    let key = |p: &Platform| {
        Vek::parse(p.vcek_der())
            .unwrap()
            .cert()
            .public_key_bits()
            .to_vec()
    };
    assert_eq!(key(&twin), key(&reopened));
    // ... and the same roots.
    let root_key = |der: &[u8]| {
        snp::cert::AmdCert::from_der(der)
            .unwrap()
            .public_key_bits()
            .to_vec()
    };
    assert_eq!(root_key(twin.ark_der()), root_key(reopened.ark_der()));
    assert_eq!(root_key(twin.ask_der()), root_key(reopened.ask_der()));
    assert_ne!(root_key(twin.ark_der()), root_key(twin.ask_der()));

    let newer = snp::TcbVersion::milan_genoa(4, 0, 25, 220);
    p.set_tcb(newer).unwrap();
    assert_ne!(key(&p), key(&reopened), "new TCB, new VCEK");
    let g = p.launch(LaunchConfig::default()).unwrap();
    let v = verify(&p, &p.get_report(&g, &[0; 64], 0).unwrap(), true).unwrap();
    assert_eq!(v.report().reported_tcb(), newer);
    // An old-TCB VCEK does not verify a new-TCB report.
    let old = Vek::parse(&vcek).unwrap();
    let certs = parse_bundle(p.chain_pem().as_bytes()).unwrap();
    let chain = CertChain::from_certs(&certs).unwrap();
    let mut anchors = TrustAnchors::amd();
    pin_roots(&mut anchors, &p);
    let r = snp::AttestationReport::parse(&p.get_report(&g, &[0; 64], 0).unwrap()).unwrap();
    assert!(matches!(
        Verifier::new(anchors).verify(&r, &old, &chain, now()),
        Err(VerifyError::TcbMismatch { .. })
    ));
    assert_eq!(Platform::open(dir.path()).unwrap().config().tcb(), newer);
}

#[test]
fn snp_disabled_host_launches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::new(Product::Milan);
    config.snp_enabled = false;
    let p = Platform::create(dir.path(), config, None).unwrap();
    let e = p.launch(LaunchConfig::default()).unwrap_err();
    assert!(matches!(
        e,
        GuestError::Platform(PlatformError::SnpDisabled)
    ));
    assert!(e.to_string().contains("not SNP-capable"), "{e}");
}

#[test]
fn launch_refuses_policies_the_platform_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
    for (policy, why) in [
        (0x1_0000u64, "bit 17"),
        (0x2_0000, "SMT"),
        (0x3_0000 | 1 << 24, "ciphertext hiding"),
        (0x3_0000 | 0x0200, "ABI"),
        (0x3_0000 | 1 << 40, "reserved"),
    ] {
        let e = p
            .launch(LaunchConfig {
                policy,
                ..LaunchConfig::default()
            })
            .unwrap_err();
        assert!(matches!(e, GuestError::Policy(_)), "{policy:#x}: {e}");
        let _ = why;
    }
    // A debug guest launches (the verifier's policy decides about it).
    p.launch(LaunchConfig {
        policy: 0x3_0000 | 1 << 19,
        ..LaunchConfig::default()
    })
    .unwrap();
}

#[test]
fn derived_keys_are_stable_and_bound_to_selected_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(
        dir.path(),
        PlatformConfig::new(Product::Milan),
        Some(b"snp-emu test seed: derived keys"),
    )
    .unwrap();
    let base = LaunchConfig {
        guest_svn: 3,
        measurement: [1; 48],
        ..LaunchConfig::default()
    };
    let g = p.launch(base.clone()).unwrap();
    let all = KeyRequest {
        fields: FieldSelect::from_bits(0x3f).unwrap(),
        guest_svn: 3,
        tcb_version: p.config().tcb().raw(),
        ..KeyRequest::default()
    };
    let derive = |g: &Guest, r: KeyRequest| *p.get_derived_key(g, 0, &r).unwrap();
    let k = derive(&g, all);
    assert_eq!(k, derive(&g, all), "stable");
    assert_eq!(
        k,
        *p.get_derived_key(&g, 0, &KeyRequest::parse(&all.to_bytes()).unwrap())
            .unwrap(),
        "the same through the message bytes"
    );
    assert_ne!(k, derive(&g, KeyRequest { vmpl: 1, ..all }), "VMPL");
    assert_ne!(
        k,
        derive(
            &g,
            KeyRequest {
                guest_svn: 2,
                ..all
            }
        ),
        "guest SVN"
    );
    let older = snp::TcbVersion::milan_genoa(4, 0, 24, 218).raw();
    assert_ne!(
        k,
        derive(
            &g,
            KeyRequest {
                tcb_version: older,
                ..all
            }
        ),
        "TCB"
    );
    assert!(
        p.get_derived_key(
            &g,
            0,
            &KeyRequest {
                guest_svn: 4,
                ..all
            }
        )
        .is_err(),
        "newer SVN than the guest's"
    );
    for change in [
        LaunchConfig {
            measurement: [2; 48],
            ..base.clone()
        },
        LaunchConfig {
            policy: 0x3_0001,
            ..base.clone()
        },
        LaunchConfig {
            image_id: [9; 16],
            ..base.clone()
        },
        LaunchConfig {
            family_id: [9; 16],
            ..base.clone()
        },
    ] {
        let other = p.launch(change).unwrap();
        assert_ne!(k, derive(&other, all));
    }
    // A field that is not selected does not matter.
    let none = KeyRequest::default();
    let other = p
        .launch(LaunchConfig {
            measurement: [2; 48],
            ..base.clone()
        })
        .unwrap();
    assert_eq!(derive(&g, none), derive(&other, none));
    // Another chip derives other keys.
    let dir2 = tempfile::tempdir().unwrap();
    let q = Platform::create(
        dir2.path(),
        PlatformConfig::new(Product::Milan),
        Some(b"snp-emu test seed: another chip"),
    )
    .unwrap();
    let gq = q.launch(base).unwrap();
    assert_ne!(k, *q.get_derived_key(&gq, 0, &all).unwrap());
}

#[test]
fn extended_report_carries_the_certificate_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
    let g = p.launch(LaunchConfig::default()).unwrap();
    let (report, table) = p.get_ext_report(&g, &[1; 64], 0).unwrap();
    let certs = parse_bundle(&table).unwrap();
    let vek = Vek::from_cert(certs[0].clone()).unwrap();
    let chain = CertChain::from_certs(&certs).unwrap();
    let mut anchors = TrustAnchors::amd();
    pin_roots(&mut anchors, &p);
    let r = snp::AttestationReport::parse(&report).unwrap();
    Verifier::new(anchors)
        .verify(&r, &vek, &chain, now())
        .unwrap();
}

#[test]
fn vlek_platforms_sign_with_the_vlek() {
    use snp_emu::guest::KeySelect;
    let dir = tempfile::tempdir().unwrap();
    let mut config = PlatformConfig::new(Product::Milan);
    config.vlek = true;
    let p = Platform::create(dir.path(), config, None).unwrap();
    let g = p.launch(LaunchConfig::default()).unwrap();
    let mut anchors = TrustAnchors::amd();
    pin_roots(&mut anchors, &p);
    let verifier = Verifier::new(anchors);
    let vlek_certs = parse_bundle(p.vlek_chain_pem().unwrap().as_bytes()).unwrap();
    let vlek = Vek::from_cert(vlek_certs[0].clone()).unwrap();
    assert_eq!(vlek.kind(), snp::cert::VekKind::Vlek);
    assert_eq!(
        vlek.extensions().csp_id.as_deref(),
        Some(snp_emu::platform::EMULATOR_CSP_ID)
    );
    assert!(vlek.extensions().hw_id.is_none());
    let vlek_chain = CertChain::from_certs(&vlek_certs).unwrap();

    // Default: the VLEK signs.
    let r = snp::AttestationReport::parse(&p.get_report(&g, &[1; 64], 0).unwrap()).unwrap();
    assert_eq!(r.signing_key(), snp::report::SigningKey::Vlek);
    let v = verifier.verify(&r, &vlek, &vlek_chain, now()).unwrap();
    assert_eq!(v.signer(), snp::cert::VekKind::Vlek);
    // Asked for, the VCEK signs; the VLEK's chain then does not fit.
    let r = snp::AttestationReport::parse(
        &p.get_report_with(&g, &[1; 64], 0, KeySelect::Vcek).unwrap(),
    )
    .unwrap();
    assert_eq!(r.signing_key(), snp::report::SigningKey::Vcek);
    verify(&p, r.as_bytes(), true).unwrap();
    assert!(matches!(
        verifier.verify(&r, &vlek, &vlek_chain, now()),
        Err(VerifyError::SignerMismatch { .. })
    ));
    // The extended report carries the VLEK chain.
    let (report, table) = p.get_ext_report(&g, &[2; 64], 0).unwrap();
    let certs = parse_bundle(&table).unwrap();
    let vek = Vek::from_cert(certs[0].clone()).unwrap();
    let chain = CertChain::from_certs(&certs).unwrap();
    let r = snp::AttestationReport::parse(&report).unwrap();
    verifier.verify(&r, &vek, &chain, now()).unwrap();
    // Reopened, the same VLEK.
    let q = Platform::open(dir.path()).unwrap();
    assert_eq!(q.vlek_der(), p.vlek_der());

    // Without a VLEK, asking for one is an error.
    let dir = tempfile::tempdir().unwrap();
    let plain = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
    let g = plain.launch(LaunchConfig::default()).unwrap();
    assert!(matches!(
        plain.get_report_with(&g, &[0; 64], 0, KeySelect::Vlek),
        Err(GuestError::Request(_))
    ));
}

/// The emulator issues a CRL for its own ARK, so emulated evidence can meet a policy
/// that requires revocation checking; an ASK it revokes is refused; and a verifier that
/// pins this platform's root trusts no other emulator's.
#[test]
fn emulator_crl_and_pinned_emulator_roots() {
    use snp::crl::Crl;
    use snp::lookup::{RootCrls, Sources, lookup};
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(dir.path(), PlatformConfig::new(Product::Genoa), None).unwrap();
    let guest = p.launch(LaunchConfig::default()).unwrap();
    let report = p.get_report(&guest, &[1; 64], 0).unwrap();
    let r = snp::AttestationReport::parse(&report).unwrap();
    let certs = parse_bundle(p.chain_pem().as_bytes()).unwrap();
    let ark = certs
        .iter()
        .find(|c| c.subject_cn() == "ARK-Genoa")
        .unwrap()
        .clone();
    let mut anchors = TrustAnchors::amd();
    anchors.dangerously_trust_emulator_root(&ark).unwrap();

    // The CRL verifies under the ARK, is current, and is applied through the lookup.
    let crl = Crl::parse(&p.issue_crl(&[]).unwrap()).unwrap();
    crl.verify(&ark, now()).unwrap();
    let mut roots = RootCrls::new();
    roots.add(ark.sha256(), crl);
    let sources = Sources {
        certs: certs.clone(),
        root_crls: Some(&roots),
        ..Sources::default()
    };
    let collateral = lookup(&r, &sources, now()).unwrap();
    let v = Verifier::new(anchors.clone())
        .verify_collateral(&r, &collateral, now())
        .unwrap();
    assert_eq!(v.trust(), &RootTrust::Emulated);
    assert_eq!(v.revocation().name(), "checked");
    // Without a registered CRL the verdict says so.
    let bare = lookup(
        &r,
        &Sources {
            certs: certs.clone(),
            ..Sources::default()
        },
        now(),
    )
    .unwrap();
    let v = Verifier::new(anchors.clone())
        .verify_collateral(&r, &bare, now())
        .unwrap();
    assert!(
        matches!(v.revocation(), snp::verify::Revocation::NotChecked { reason } if reason.contains("no CRL is registered")),
        "{:?}",
        v.revocation()
    );

    // A CRL revoking the ASK.
    let ask = certs
        .iter()
        .find(|c| c.subject_cn() == "SEV-Genoa")
        .unwrap();
    let revoking = Crl::parse(&p.issue_crl(&[ask.serial()]).unwrap()).unwrap();
    let mut roots = RootCrls::new();
    roots.add(ark.sha256(), revoking);
    let collateral = lookup(
        &r,
        &Sources {
            certs: certs.clone(),
            root_crls: Some(&roots),
            ..Sources::default()
        },
        now(),
    )
    .unwrap();
    let e = Verifier::new(anchors.clone())
        .verify_collateral(&r, &collateral, now())
        .unwrap_err();
    assert_eq!(e.code(), "revoked", "{e}");

    // Another emulated platform's evidence is not trusted by this pin.
    let dir2 = tempfile::tempdir().unwrap();
    let other = Platform::create(dir2.path(), PlatformConfig::new(Product::Genoa), None).unwrap();
    let g2 = other.launch(LaunchConfig::default()).unwrap();
    let r2 = snp::AttestationReport::parse(&other.get_report(&g2, &[1; 64], 0).unwrap()).unwrap();
    let c2 = parse_bundle(other.chain_pem().as_bytes()).unwrap();
    let e = Verifier::new(anchors.clone())
        .verify(
            &r2,
            &Vek::from_cert(c2[0].clone()).unwrap(),
            &CertChain::from_certs(&c2).unwrap(),
            now(),
        )
        .unwrap_err();
    assert_eq!(e.code(), "emulated_root", "{e}");
    // A real AMD ARK cannot be pinned as an emulator's.
    let amd = parse_bundle(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../testdata/snp/go-sev-guest/ask_ark_genoa.pem"),
        )
        .unwrap(),
    )
    .unwrap();
    let amd_ark = amd.iter().find(|c| c.subject_cn() == "ARK-Genoa").unwrap();
    assert!(anchors.dangerously_trust_emulator_root(amd_ark).is_err());
}
