//! Page-by-page launch with an ID block: LAUNCH_FINISH checks the ID block and its
//! authentication, and reports carry what it says.

// Test helpers outside #[test] functions may panic on bad fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use snp::Product;
use snp_emu::guest::GuestError;
use snp_emu::idblock::{IdAuth, IdBlock, IdError};
use snp_emu::launch::{LaunchDigest, PageType};
use snp_emu::platform::{Platform, PlatformConfig};

fn key() -> EcdsaKeyPair {
    EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap()
}

fn sha384(d: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, d)
        .as_ref()
        .to_vec()
}

#[test]
fn launch_with_an_id_block() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
    let policy = 0x3_0000;
    let page = [0x42u8; 4096];

    // The measurement is the chained digest of exactly the pages added.
    let mut ctx = p.launch_start(policy).unwrap();
    ctx.update(0x1000, PageType::Normal, Some(&page)).unwrap();
    ctx.update(0x2000, PageType::Zero, None).unwrap();
    ctx.update(0x3000, PageType::Secrets, None).unwrap();
    let mut expect = LaunchDigest::new();
    expect
        .update(0x1000, PageType::Normal, Some(&page))
        .unwrap();
    expect.update(0x2000, PageType::Zero, None).unwrap();
    expect.update(0x3000, PageType::Secrets, None).unwrap();
    assert_eq!(ctx.measurement(), expect.digest());
    assert!(matches!(
        ctx.update(0x1001, PageType::Zero, None),
        Err(GuestError::Update(_))
    ));

    let block = IdBlock {
        ld: ctx.measurement(),
        family_id: [0xf1; 16],
        image_id: [0x1a; 16],
        guest_svn: 7,
        policy,
    };
    let (id_key, author) = (key(), key());
    let auth = IdAuth::sign(&block, &id_key, Some(&author)).unwrap();
    assert_eq!(IdAuth::parse(auth.as_bytes()).unwrap(), auth);
    assert_eq!(IdBlock::parse(&block.to_bytes()).unwrap(), block);
    let guest = ctx.finish(Some((&block, &auth)), [9; 32], false).unwrap();
    let report =
        snp::AttestationReport::parse(&p.get_report(&guest, &[0; 64], 0).unwrap()).unwrap();
    assert_eq!(report.measurement(), &block.ld);
    assert_eq!(report.family_id(), &block.family_id);
    assert_eq!(report.image_id(), &block.image_id);
    assert_eq!(report.guest_svn(), 7);
    assert_eq!(report.host_data(), &[9; 32]);
    assert_eq!(
        report.id_key_digest()[..],
        sha384(&auth.as_bytes()[0x240..0x644])[..]
    );
    assert_eq!(
        report.author_key_digest()[..],
        sha384(&auth.as_bytes()[0x880..0xC84])[..]
    );
    assert!(report.author_key_en());

    // Without an author key.
    let ctx = p.launch_start(policy).unwrap();
    let block0 = IdBlock {
        ld: ctx.measurement(),
        ..block.clone()
    };
    let auth0 = IdAuth::sign(&block0, &id_key, None).unwrap();
    let guest = ctx.finish(Some((&block0, &auth0)), [0; 32], false).unwrap();
    let report =
        snp::AttestationReport::parse(&p.get_report(&guest, &[0; 64], 0).unwrap()).unwrap();
    assert!(!report.author_key_en());
    assert_eq!(report.author_key_digest(), &[0; 48]);
    assert_eq!(report.id_key_digest(), &auth0.id_key_digest());
}

#[test]
fn launch_finish_refuses_bad_id_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::create(dir.path(), PlatformConfig::new(Product::Genoa), None).unwrap();
    let policy = 0x3_0000;
    let ld = p.launch_start(policy).unwrap().measurement();
    let good = IdBlock {
        ld,
        family_id: [1; 16],
        image_id: [2; 16],
        guest_svn: 1,
        policy,
    };
    let id_key = key();
    let finish = |block: &IdBlock, auth: &IdAuth| {
        p.launch_start(policy)
            .unwrap()
            .finish(Some((block, auth)), [0; 32], false)
            .map(|_| ())
    };
    let auth = IdAuth::sign(&good, &id_key, None).unwrap();
    finish(&good, &auth).unwrap();

    let wrong_ld = IdBlock {
        ld: [0xee; 48],
        ..good.clone()
    };
    let e = finish(&wrong_ld, &IdAuth::sign(&wrong_ld, &id_key, None).unwrap()).unwrap_err();
    assert!(e.to_string().contains("launch digest"), "{e}");
    let wrong_policy = IdBlock {
        policy: 0x3_0001,
        ..good.clone()
    };
    let e = finish(
        &wrong_policy,
        &IdAuth::sign(&wrong_policy, &id_key, None).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("policy"), "{e}");
    // Signed for another block.
    let other = IdBlock {
        guest_svn: 2,
        ..good.clone()
    };
    assert!(matches!(finish(&other, &auth), Err(GuestError::IdBlock(_))));
    // A flipped signature byte.
    let mut bytes = *auth.as_bytes();
    bytes[0x40] ^= 1;
    let tampered = IdAuth::parse(&bytes).unwrap();
    assert!(matches!(
        finish(&good, &tampered),
        Err(GuestError::IdBlock(_))
    ));
    // Structure checks.
    let mut bytes = *auth.as_bytes();
    bytes[0x10] = 1;
    assert_eq!(IdAuth::parse(&bytes).unwrap_err(), IdError::Reserved(0x10));
    let mut bytes = *auth.as_bytes();
    bytes[0] = 2;
    assert!(matches!(
        IdAuth::parse(&bytes),
        Err(IdError::Unsupported { .. })
    ));
    assert!(matches!(
        IdAuth::parse(&bytes[..100]),
        Err(IdError::Length { .. })
    ));
    let mut b = good.to_bytes();
    b[80] = 2;
    assert!(matches!(
        IdBlock::parse(&b),
        Err(IdError::Unsupported { .. })
    ));
}
