//! `TPM2_Certify` as an attestation service sees it: an attestation key (a restricted
//! RSASSA signing key) certifies a decrypt-only key; public areas and attestations
//! are built with this crate's encoders and signed with fresh aws-lc-rs keys. Also a
//! check of Names against the real Azure quotes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use tpm_quote::alg::TPM_ALG_RSA;
use tpm_quote::{
    AttestHeader, Certify, ClockInfo, Error, HashAlg, KeyScheme, ObjectAttributes, ObjectType,
    PcrSelection, PcrValues, PublicDetails, PublicKey, Quote, RsaPublicKey, RsaTemplate, Signature,
    SymDefObject, TPM_RH_ENDORSEMENT, TPM_RH_OWNER, TpmPublic, verify_certify, verify_quote,
};

/// The attributes of Azure's vTPM attestation key (found in the real quotes, see
/// `real_quotes_are_signed_by_the_reconstructed_ak`).
const AK_ATTRS: ObjectAttributes = ObjectAttributes::FIXED_TPM
    .union(ObjectAttributes::FIXED_PARENT)
    .union(ObjectAttributes::SENSITIVE_DATA_ORIGIN)
    .union(ObjectAttributes::USER_WITH_AUTH)
    .union(ObjectAttributes::NO_DA)
    .union(ObjectAttributes::RESTRICTED)
    .union(ObjectAttributes::SIGN_ENCRYPT);

/// A TPM-generated, non-duplicable decrypt-only key.
const DECRYPT_ATTRS: ObjectAttributes = ObjectAttributes::FIXED_TPM
    .union(ObjectAttributes::FIXED_PARENT)
    .union(ObjectAttributes::SENSITIVE_DATA_ORIGIN)
    .union(ObjectAttributes::USER_WITH_AUTH)
    .union(ObjectAttributes::DECRYPT);

struct Key {
    kp: RsaKeyPair,
}

impl Key {
    fn new() -> Self {
        Self {
            kp: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    fn rsa(&self) -> RsaPublicKey {
        RsaPublicKey::from_pkcs1_der(self.kp.public_key().as_ref()).unwrap()
    }

    /// The key's public area, round-tripped through the `TPM2B_PUBLIC` form.
    fn public_area(&self, attributes: ObjectAttributes, scheme: KeyScheme) -> TpmPublic {
        let rsa = self.rsa();
        assert_eq!(rsa.exponent(), &[1, 0, 1]);
        let mut template = RsaTemplate::new(attributes, rsa.modulus());
        template.scheme = scheme;
        let tpmt = TpmPublic::encode_rsa(&template).unwrap();
        let public = TpmPublic::parse(&tpmt).unwrap();
        let tpm2b = public.to_tpm2b();
        assert_eq!(TpmPublic::parse_tpm2b(&tpm2b).unwrap(), public);
        assert_eq!(TpmPublic::parse_auto(&tpm2b).unwrap(), public);
        public
    }

    /// RSASSA-PKCS1-v1_5 / SHA-256, as a TPM signs with an RSASSA-SHA256 AK.
    fn sign(&self, msg: &[u8]) -> Signature {
        let mut out = vec![0; self.kp.public_modulus_len()];
        self.kp
            .sign(&sig::RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut out)
            .unwrap();
        Signature::from_plain_rsa(&out)
    }
}

fn header(ak: &TpmPublic, extra_data: &[u8]) -> AttestHeader {
    AttestHeader {
        qualified_signer: ak.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes()),
        extra_data: extra_data.to_vec(),
        clock_info: ClockInfo {
            clock: 123_456_789,
            reset_count: 3,
            restart_count: 0,
            safe: true,
        },
        firmware_version: 0x0001_0002_0003_0004,
    }
}

#[test]
fn ak_certifies_a_decrypt_only_key() {
    let ak_key = Key::new();
    let bound_key = Key::new();
    let ak = ak_key.public_area(AK_ATTRS, KeyScheme::rsassa(HashAlg::Sha256));
    let bound = bound_key.public_area(DECRYPT_ATTRS, KeyScheme::NULL);

    // What the verifier can tell from the public areas alone.
    assert!(ak.is_restricted_signing_key());
    assert!(!ak.is_decryption_key());
    assert!(bound.is_decryption_key());
    assert!(!bound.is_restricted_signing_key());
    assert_eq!(ak.object_type(), ObjectType::Rsa);
    assert_eq!(ak.raw()[..2], TPM_ALG_RSA.to_be_bytes());
    assert_eq!(ak.public_key().unwrap(), PublicKey::Rsa(ak_key.rsa()));
    assert_eq!(bound.public_key().unwrap(), PublicKey::Rsa(bound_key.rsa()));
    assert_eq!(bound.symmetric(), SymDefObject::Null);
    let PublicDetails::Rsa(d) = bound.details() else {
        panic!("not RSA")
    };
    assert_eq!(
        (d.key_bits, d.exponent, d.effective_exponent()),
        (2048, 0, 65537)
    );
    let name = bound.name();
    assert_eq!(name.len(), 34);
    assert_eq!(&name[..2], &[0x00, 0x0b]);
    assert_eq!(&name[2..], HashAlg::Sha256.digest(bound.raw()).as_slice());

    let nonce = b"certify nonce: 32 bytes of data!";
    let qualified_name = bound.qualified_name(&ak.qualified_name(&[]));
    let attest = Certify::encode(&header(&ak, nonce), &name, &qualified_name).unwrap();
    let signature = ak_key.sign(&attest);
    let signer = ak.public_key().unwrap();

    let verified = verify_certify(&attest, &signature, &signer, &bound, Some(nonce)).unwrap();
    assert!(verified.extra_data_checked());
    assert_eq!(verified.extra_data(), nonce);
    assert_eq!(verified.hash_alg(), HashAlg::Sha256);
    assert_eq!(verified.certified(), &bound);
    let c = verified.certify();
    assert_eq!(c.raw(), attest.as_slice());
    assert_eq!(c.name(), name.as_slice());
    assert_eq!(c.qualified_name(), qualified_name.as_slice());
    assert_eq!(c.header(), &header(&ak, nonce));
    assert_eq!(
        c.qualified_signer(),
        ak.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes())
    );
    assert_eq!(c.clock_info().clock, 123_456_789);
    assert_eq!(c.firmware_version(), 0x0001_0002_0003_0004);
    assert_eq!(verified.clone().into_certify(), *c);

    // The TSS form of the same signature verifies too.
    let tss = Signature::parse_tss(&signature.to_tss().unwrap()).unwrap();
    verify_certify(&attest, &tss, &signer, &bound, Some(nonce)).unwrap();

    // Without the expected extraData, the caller is told it was not checked.
    let unchecked = verify_certify(&attest, &signature, &signer, &bound, None).unwrap();
    assert!(!unchecked.extra_data_checked());
    assert_eq!(unchecked.extra_data(), nonce);

    // Wrong name: another key's public area, or the same key with other attributes.
    let other = Key::new().public_area(DECRYPT_ATTRS, KeyScheme::NULL);
    let sign_too = bound_key.public_area(
        DECRYPT_ATTRS | ObjectAttributes::SIGN_ENCRYPT,
        KeyScheme::NULL,
    );
    for wrong in [&other, &sign_too, &ak] {
        let err = verify_certify(&attest, &signature, &signer, wrong, Some(nonce)).unwrap_err();
        assert_eq!(
            err,
            Error::CertifiedNameMismatch {
                expected: wrong.name(),
                got: name.clone()
            }
        );
        assert_eq!(err.code(), "certified_name_mismatch");
        assert!(err.is_rejection());
    }

    // Wrong extraData.
    let err =
        verify_certify(&attest, &signature, &signer, &bound, Some(b"other nonce")).unwrap_err();
    assert_eq!(
        err,
        Error::ExtraDataMismatch {
            expected: b"other nonce".to_vec(),
            got: nonce.to_vec()
        }
    );
    assert_eq!(err.code(), "extra_data_mismatch");

    // Bad signatures: a flipped bit, another key's signature, the wrong key. The
    // signature is checked first, so a wrong name or nonce does not show.
    let Signature::Rsa { sig: raw, .. } = &signature else {
        panic!("not RSA")
    };
    let mut flipped = raw.clone();
    flipped[100] ^= 0x01;
    let bad = [
        (Signature::from_plain_rsa(&flipped), signer.clone()),
        (bound_key.sign(&attest), signer.clone()),
        (signature.clone(), bound.public_key().unwrap()),
    ];
    for (sig, key) in &bad {
        assert_eq!(
            verify_certify(&attest, sig, key, &other, Some(b"x")),
            Err(Error::BadSignature)
        );
    }
    // A tampered attestation under the original signature.
    let mut tampered = attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert_eq!(
        verify_certify(&tampered, &signature, &signer, &bound, None),
        Err(Error::BadSignature)
    );
    // RSA-PSS confusion.
    assert_eq!(
        verify_certify(
            &attest,
            &Signature::from_plain_rsa_with(tpm_quote::RsaScheme::Pss, HashAlg::Sha256, raw),
            &signer,
            &bound,
            None
        ),
        Err(Error::BadSignature)
    );

    // A validly signed attestation of another type is not a certification.
    let quote = Quote::encode(&header(&ak, nonce), &[], &HashAlg::Sha256.digest(b"")).unwrap();
    let err =
        verify_certify(&quote, &ak_key.sign(&quote), &signer, &bound, Some(nonce)).unwrap_err();
    assert_eq!(
        err,
        Error::WrongAttestType {
            expected: 0x8017,
            got: 0x8018
        }
    );
    assert_eq!(err.code(), "wrong_attest_type");

    // Validly signed but malformed: trailing bytes.
    let mut trailing = attest.clone();
    trailing.push(0);
    assert_eq!(
        verify_certify(&trailing, &ak_key.sign(&trailing), &signer, &bound, None),
        Err(Error::TrailingBytes {
            what: "TPMS_ATTEST",
            count: 1
        })
    );

    // A validly signed certification of another key's name.
    let attest_other = Certify::encode(&header(&ak, nonce), &other.name(), &[]).unwrap();
    assert!(matches!(
        verify_certify(
            &attest_other,
            &ak_key.sign(&attest_other),
            &signer,
            &bound,
            Some(nonce)
        ),
        Err(Error::CertifiedNameMismatch { .. })
    ));
}

/// The quote encoder output verifies end to end, with the PCR digest from
/// `PcrValues::composite_digest`.
#[test]
fn encoded_quote_verifies() {
    let ak_key = Key::new();
    let ak = ak_key.public_area(AK_ATTRS, KeyScheme::rsassa(HashAlg::Sha256));
    let mut pcrs = PcrValues::new();
    pcrs.insert_bank(HashAlg::Sha256, (0..24u8).map(|i| [i; 32]))
        .unwrap();
    let sels = vec![PcrSelection::new(HashAlg::Sha256, &(0..24).collect::<Vec<_>>()).unwrap()];
    let digest = pcrs.composite_digest(&sels, HashAlg::Sha256).unwrap();
    let msg = Quote::encode(&header(&ak, b"challenge"), &sels, &digest).unwrap();
    let v = verify_quote(
        &msg,
        &ak_key.sign(&msg),
        &ak.public_key().unwrap(),
        Some(b"challenge"),
        Some(&pcrs),
    )
    .unwrap();
    assert_eq!(v.pcrs().unwrap().len(), 24);
    assert_eq!(
        v.quote().qualified_signer(),
        ak.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes())
    );
}

/// No real `TPM2B_PUBLIC` file is in testdata; the real Azure quotes still check
/// `name()`/`qualified_name()` and the encoder: their `qualifiedSigner`, computed by
/// the vTPM, is the Qualified Name of an AK public area rebuilt from the `HCLAkPub`
/// modulus (attributes 0x00050472, RSASSA-SHA256, nameAlg SHA-256, exponent 0, no
/// policy) as a primary key of the endorsement hierarchy. A SHA-256 match means the
/// rebuilt bytes are exactly the vTPM's AK public area.
#[test]
fn real_quotes_are_signed_by_the_reconstructed_ak() {
    let vectors = common::vectors();
    assert_eq!(vectors.len(), 7);
    for v in vectors {
        let PublicKey::Rsa(key) = &v.key else {
            panic!("{}: not RSA", v.name)
        };
        assert_eq!(key.exponent(), &[1, 0, 1]);
        let mut template = RsaTemplate::new(AK_ATTRS, key.modulus());
        template.scheme = KeyScheme::rsassa(HashAlg::Sha256);
        let ak = TpmPublic::parse(&TpmPublic::encode_rsa(&template).unwrap()).unwrap();
        assert_eq!(ak.attributes().bits(), 0x0005_0472);
        assert_eq!(ak.public_key().unwrap(), v.key, "{}", v.name);
        let quote = Quote::parse(&v.message).unwrap();
        assert_eq!(
            quote.qualified_signer(),
            ak.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes()),
            "{}",
            v.name
        );
        // Any other attribute set, scheme or hierarchy gives another Qualified Name.
        assert_ne!(
            quote.qualified_signer(),
            ak.qualified_name(&TPM_RH_OWNER.to_be_bytes())
        );
        template.attributes = AK_ATTRS.union(ObjectAttributes::ST_CLEAR);
        let other = TpmPublic::parse(&TpmPublic::encode_rsa(&template).unwrap()).unwrap();
        assert_ne!(
            quote.qualified_signer(),
            other.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes())
        );
    }
}
