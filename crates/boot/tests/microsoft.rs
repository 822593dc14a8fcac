//! Microsoft's published objects (`crates/boot/certs/microsoft`, see its MANIFEST.md):
//! the certificates parse, and the signed dbx update verifies under a Microsoft KEK and
//! under nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use boot::authvar::{APPEND_WRITE, AuthenticatedUpdate, EfiTime, SECURE_BOOT_ATTRIBUTES};
use boot::cert::Cert;
use boot::esl::{MICROSOFT_OWNER, Signature};
use boot::{Entry, HashAlg, SignatureDb};
use tcg_eventlog::Guid;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/microsoft");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap()
}

fn db_of(names: &[&str]) -> SignatureDb {
    SignatureDb {
        entries: names
            .iter()
            .map(|n| Entry {
                owner: MICROSOFT_OWNER,
                signature: Signature::X509(read(n)),
            })
            .collect(),
    }
}

#[test]
fn certificates_parse_with_their_names() {
    for (file, cn) in [
        ("uefi-ca-2011.der", "Microsoft Corporation UEFI CA 2011"),
        ("uefi-ca-2023.der", "Microsoft UEFI CA 2023"),
        (
            "windows-pca-2011.der",
            "Microsoft Windows Production PCA 2011",
        ),
        ("kek-ca-2011.der", "Microsoft Corporation KEK CA 2011"),
        ("kek-2k-ca-2023.der", "Microsoft Corporation KEK 2K CA 2023"),
    ] {
        let der = read(file);
        let cert = Cert::parse(&der).unwrap();
        assert_eq!(cert.subject_name(), cn, "{file}");
    }
    // The thumbprint Microsoft publishes for the third-party CA.
    let der = read("uefi-ca-2011.der");
    assert_eq!(
        Cert::parse(&der).unwrap().thumbprint_sha1(),
        "46def63b5ce61cf8ba0de2e6639c1019d0ed14f3"
    );
}

#[test]
fn the_published_dbx_update_verifies_under_the_microsoft_kek_only() {
    let bytes = read("dbx-update-amd64.bin");
    let update = AuthenticatedUpdate::parse(&bytes).unwrap();
    // Microsoft signs dbx appends with a fixed old timestamp.
    assert_eq!(update.time.to_string(), "2010-03-06T19:17:21Z");
    let payload = SignatureDb::parse(update.payload).unwrap();
    assert!(
        payload.entries.len() > 400,
        "{} entries",
        payload.entries.len()
    );
    assert!(
        payload
            .entries
            .iter()
            .all(|e| matches!(&e.signature, Signature::Hash(HashAlg::Sha256, h) if h.len() == 32))
    );

    let attrs = SECURE_BOOT_ATTRIBUTES | APPEND_WRITE;
    let kek = db_of(&["kek-ca-2011.der", "kek-2k-ca-2023.der"]);
    let dbx = Guid::IMAGE_SECURITY_DATABASE;
    let signer = update.verify("dbx", dbx, attrs, &kek, None).unwrap();
    assert!(signer.starts_with("Microsoft Corporation KEK"), "{signer}");

    // Not under a db certificate, not as another variable, not without APPEND_WRITE.
    let db = db_of(&["uefi-ca-2011.der", "windows-pca-2011.der"]);
    assert!(update.verify("dbx", dbx, attrs, &db, None).is_err());
    assert!(update.verify("db", dbx, attrs, &kek, None).is_err());
    assert!(
        update
            .verify("dbx", dbx, SECURE_BOOT_ATTRIBUTES, &kek, None)
            .is_err()
    );
    // Without APPEND_WRITE an update must be newer than the stored variable.
    let later = EfiTime {
        year: 2024,
        month: 1,
        day: 1,
        ..EfiTime::default()
    };
    let err = update
        .verify("dbx", dbx, SECURE_BOOT_ATTRIBUTES, &kek, Some(later))
        .unwrap_err();
    assert!(err.to_string().contains("not later"), "{err}");

    // One payload byte changed: the signature no longer covers it.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let t = AuthenticatedUpdate::parse(&tampered).unwrap();
    assert!(t.verify("dbx", dbx, attrs, &kek, None).is_err());
}
