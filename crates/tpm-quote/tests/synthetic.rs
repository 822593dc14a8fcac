//! Quotes signed here with fresh aws-lc-rs keys: RSA-PSS, PKCS#1 SHA-384, ECDSA
//! P-256/P-384 in TSS and DER form, multi-bank PCR selections, and messages that are
//! validly signed but malformed (so the parser, not the signature, must reject them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair as _};
use tpm_quote::{
    EcCurve, EcdsaPublicKey, Error, HashAlg, PcrValues, PublicKey, Quote, RsaPublicKey, RsaScheme,
    Signature, verify_quote,
};

/// A marshalled `TPMS_ATTEST`.
fn attest(ty: u16, nonce: &[u8], sels: &[(u16, &[u8])], digest: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(0xff54_4347u32.to_be_bytes());
    m.extend(ty.to_be_bytes());
    let name = [0x00, 0x0b]
        .iter()
        .chain(&[0x11; 32])
        .copied()
        .collect::<Vec<_>>();
    m.extend((name.len() as u16).to_be_bytes());
    m.extend(&name);
    m.extend((nonce.len() as u16).to_be_bytes());
    m.extend(nonce);
    m.extend(1234u64.to_be_bytes());
    m.extend(5u32.to_be_bytes());
    m.extend(6u32.to_be_bytes());
    m.push(1);
    m.extend(0x0102_0304_0506_0708u64.to_be_bytes());
    m.extend((sels.len() as u32).to_be_bytes());
    for (alg, bitmap) in sels {
        m.extend(alg.to_be_bytes());
        m.push(bitmap.len() as u8);
        m.extend(*bitmap);
    }
    m.extend((digest.len() as u16).to_be_bytes());
    m.extend(digest);
    m
}

/// PCR values for sha1 PCRs 0-3 and sha256 PCRs 0-23, all distinct.
fn pcr_values() -> PcrValues {
    let mut v = PcrValues::new();
    for i in 0..24u32 {
        v.insert(HashAlg::Sha256, i, &[i as u8; 32]).unwrap();
        if i < 4 {
            v.insert(HashAlg::Sha1, i, &[0x80 | i as u8; 20]).unwrap();
        }
    }
    v
}

/// Exactly the values [`quote_message`] selects.
fn quoted_values() -> PcrValues {
    let mut v = PcrValues::new();
    for (alg, i) in [
        (HashAlg::Sha256, 1),
        (HashAlg::Sha256, 16),
        (HashAlg::Sha1, 0),
        (HashAlg::Sha1, 3),
    ] {
        v.insert(alg, i, pcr_values().get(alg, i).unwrap()).unwrap();
    }
    v
}

/// A quote over sha256 {1, 16} and sha1 {0, 3} with a digest computed with `hash`.
fn quote_message(nonce: &[u8], hash: HashAlg) -> Vec<u8> {
    let sels = [
        (0x000b, &[0x02, 0x00, 0x01][..]),
        (0x0004, &[0x09, 0x00, 0x00][..]),
    ];
    let mut concat = Vec::new();
    for (alg, i) in [
        (HashAlg::Sha256, 1),
        (HashAlg::Sha256, 16),
        (HashAlg::Sha1, 0),
        (HashAlg::Sha1, 3),
    ] {
        concat.extend(pcr_values().get(alg, i).unwrap());
    }
    attest(0x8018, nonce, &sels, &hash.digest(&concat))
}

struct Rsa {
    kp: RsaKeyPair,
}

impl Rsa {
    fn new() -> Self {
        Self {
            kp: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }
    fn sign(&self, alg: &'static dyn sig::RsaEncoding, msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0; self.kp.public_modulus_len()];
        self.kp
            .sign(alg, &SystemRandom::new(), msg, &mut out)
            .unwrap();
        out
    }
    fn public(&self) -> PublicKey {
        RsaPublicKey::from_pkcs1_der(self.kp.public_key().as_ref())
            .unwrap()
            .into()
    }
}

#[test]
fn rsa_schemes_in_tss_form() {
    let rsa = Rsa::new();
    let key = rsa.public();
    // Both DER forms give the same key.
    let spki = rsa.kp.public_key().as_der().unwrap();
    assert_eq!(PublicKey::from_spki_der(spki.as_ref()).unwrap(), key);
    assert_eq!(
        PublicKey::from_der(rsa.kp.public_key().as_ref()).unwrap(),
        key
    );

    let cases: [(u16, RsaScheme, HashAlg, &'static dyn sig::RsaEncoding); 4] = [
        (
            0x0014,
            RsaScheme::Pkcs1v15,
            HashAlg::Sha256,
            &sig::RSA_PKCS1_SHA256,
        ),
        (
            0x0014,
            RsaScheme::Pkcs1v15,
            HashAlg::Sha384,
            &sig::RSA_PKCS1_SHA384,
        ),
        (
            0x0016,
            RsaScheme::Pss,
            HashAlg::Sha256,
            &sig::RSA_PSS_SHA256,
        ),
        (
            0x0016,
            RsaScheme::Pss,
            HashAlg::Sha384,
            &sig::RSA_PSS_SHA384,
        ),
    ];
    for (alg_id, scheme, hash, encoding) in cases {
        let nonce = b"0123456789abcdef0123456789abcdef";
        let msg = quote_message(nonce, hash);
        let raw = rsa.sign(encoding, &msg);
        let mut tss = Vec::new();
        tss.extend(alg_id.to_be_bytes());
        tss.extend(hash.tpm_id().to_be_bytes());
        tss.extend((raw.len() as u16).to_be_bytes());
        tss.extend(&raw);
        let signature = Signature::parse_tss(&tss).unwrap();
        assert_eq!(
            signature,
            Signature::from_plain_rsa_with(scheme, hash, &raw)
        );
        assert_eq!(Signature::parse_auto(&tss).unwrap(), signature);

        let pcrs = quoted_values();
        let v = verify_quote(&msg, &signature, &key, Some(nonce), Some(&pcrs)).unwrap();
        assert_eq!(v.hash_alg(), hash);
        assert_eq!(v.pcrs().unwrap().len(), 4);
        assert_eq!(v.pcr(HashAlg::Sha1, 3), Some(&[0x83; 20][..]));
        assert_eq!(v.pcr(HashAlg::Sha256, 2), None);

        // The composite digest uses the scheme's hash: a quote whose digest was made
        // with the other hash does not match.
        let other = if hash == HashAlg::Sha256 {
            HashAlg::Sha384
        } else {
            HashAlg::Sha256
        };
        let msg2 = quote_message(nonce, other);
        let sig2 = Signature::from_plain_rsa_with(scheme, hash, &rsa.sign(encoding, &msg2));
        assert!(matches!(
            verify_quote(&msg2, &sig2, &key, None, Some(&pcrs)),
            Err(Error::PcrDigestMismatch { .. })
        ));

        // Scheme confusion fails.
        let wrong = match scheme {
            RsaScheme::Pkcs1v15 => RsaScheme::Pss,
            RsaScheme::Pss => RsaScheme::Pkcs1v15,
        };
        assert_eq!(
            verify_quote(
                &msg,
                &Signature::from_plain_rsa_with(wrong, hash, &raw),
                &key,
                None,
                None
            ),
            Err(Error::BadSignature)
        );
    }
}

/// A PCR value to appraise that the quote does not select is refused, never reported
/// as checked: in another bank, or not selected at all.
#[test]
fn appraised_pcrs_must_be_quoted() {
    let rsa = Rsa::new();
    let key = rsa.public();
    let msg = quote_message(b"n", HashAlg::Sha256);
    let signature = Signature::from_plain_rsa(&rsa.sign(&sig::RSA_PKCS1_SHA256, &msg));
    let v = verify_quote(&msg, &signature, &key, None, Some(&quoted_values())).unwrap();
    assert_eq!(v.pcrs().unwrap().len(), 4);
    // All 24 SHA-256 PCRs and 4 SHA-1 PCRs: most of them are not quoted.
    assert!(matches!(
        verify_quote(&msg, &signature, &key, None, Some(&pcr_values())),
        Err(Error::PcrNotQuoted { .. })
    ));
    let mut extra = quoted_values();
    extra.insert(HashAlg::Sha256, 0, &[0; 32]).unwrap();
    assert!(matches!(
        verify_quote(&msg, &signature, &key, None, Some(&extra)),
        Err(Error::PcrNotQuoted {
            alg: HashAlg::Sha256,
            index: 0
        })
    ));
    // PCR 1 is quoted in SHA-256, not SHA-1.
    let mut other_bank = quoted_values();
    other_bank.insert(HashAlg::Sha1, 1, &[0x81; 20]).unwrap();
    let e = verify_quote(&msg, &signature, &key, None, Some(&other_bank)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PcrNotQuoted {
                alg: HashAlg::Sha1,
                index: 1
            }
        ),
        "{e}"
    );
    assert_eq!(e.code(), "pcr_not_quoted");
    assert!(e.is_rejection());
}

#[test]
fn signed_but_malformed_messages_are_rejected_by_the_parser() {
    let rsa = Rsa::new();
    let key = rsa.public();
    let sign = |m: &[u8]| Signature::from_plain_rsa(&rsa.sign(&sig::RSA_PKCS1_SHA256, m));

    let good = quote_message(b"n", HashAlg::Sha256);
    verify_quote(
        &good,
        &sign(&good),
        &key,
        Some(b"n"),
        Some(&quoted_values()),
    )
    .unwrap();

    let mut trailing = good.clone();
    trailing.push(0xaa);
    assert_eq!(
        verify_quote(&trailing, &sign(&trailing), &key, None, None),
        Err(Error::TrailingBytes {
            what: "TPMS_ATTEST",
            count: 1
        })
    );

    let mut magic = good.clone();
    magic[3] = 0x48;
    assert_eq!(
        verify_quote(&magic, &sign(&magic), &key, None, None),
        Err(Error::BadMagic { got: 0xff54_4348 })
    );

    let certify = attest(0x8017, b"n", &[], &[]);
    assert_eq!(
        verify_quote(&certify, &sign(&certify), &key, None, None),
        Err(Error::NotAQuote { got: 0x8017 })
    );

    let short = &good[..good.len() - 3];
    assert!(matches!(
        verify_quote(short, &sign(short), &key, None, None),
        Err(Error::Truncated {
            what: "TPMS_QUOTE_INFO.pcrDigest",
            need: 32,
            got: 29
        })
    ));

    // safe must be 0 or 1.
    let mut unsafe_flag = good.clone();
    let safe_at = 4 + 2 + 2 + 34 + 2 + 1 + 8 + 4 + 4;
    assert_eq!(unsafe_flag[safe_at], 1);
    unsafe_flag[safe_at] = 2;
    assert_eq!(
        Quote::parse(&unsafe_flag),
        Err(Error::InvalidValue {
            what: "TPMS_CLOCK_INFO.safe",
            got: 2
        })
    );

    // Oversized fields.
    let big_nonce = attest(0x8018, &[0; 67], &[], &[0; 32]);
    assert!(matches!(
        Quote::parse(&big_nonce),
        Err(Error::TooLarge {
            what: "TPMS_ATTEST.extraData",
            max: 66,
            got: 67
        })
    ));
    let big_select = attest(0x8018, b"n", &[(0x000b, &[0xff; 5])], &[0; 32]);
    assert!(matches!(
        Quote::parse(&big_select),
        Err(Error::TooLarge {
            what: "TPMS_PCR_SELECTION.sizeofSelect",
            ..
        })
    ));
    let mut many_banks = attest(0x8018, b"n", &[], &[0; 32]);
    let count_at = safe_at + 1 + 8;
    many_banks[count_at..count_at + 4].copy_from_slice(&17u32.to_be_bytes());
    assert!(matches!(
        Quote::parse(&many_banks),
        Err(Error::TooLarge {
            what: "TPML_PCR_SELECTION.count",
            max: 16,
            got: 17
        })
    ));

    // Unknown PCR bank: parses, but PCR checking is refused.
    let sm3 = attest(0x8018, b"n", &[(0x0012, &[0x01, 0, 0])], &[0; 32]);
    let q = Quote::parse(&sm3).unwrap();
    assert_eq!(q.pcr_selections()[0].hash_alg(), None);
    assert_eq!(q.pcr_selections()[0].hash_alg_id(), 0x0012);
    verify_quote(&sm3, &sign(&sm3), &key, Some(b"n"), None).unwrap();
    assert!(matches!(
        verify_quote(&sm3, &sign(&sm3), &key, None, Some(&pcr_values())),
        Err(Error::UnsupportedAlgorithm {
            what: "PCR bank",
            id: 0x0012
        })
    ));
}

fn ecdsa_case(curve: EcCurve) {
    let (fixed_alg, asn1_alg, hash) = match curve {
        EcCurve::P256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            HashAlg::Sha256,
        ),
        EcCurve::P384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
            HashAlg::Sha384,
        ),
    };
    let kp = EcdsaKeyPair::generate(fixed_alg).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let key: PublicKey = EcdsaPublicKey::from_sec1(curve, &point).unwrap().into();
    let spki = kp.public_key().as_der().unwrap();
    assert_eq!(PublicKey::from_spki_der(spki.as_ref()).unwrap(), key);
    assert_eq!(
        EcdsaPublicKey::from_spki_der(spki.as_ref())
            .unwrap()
            .curve(),
        curve
    );
    assert!(RsaPublicKey::from_spki_der(spki.as_ref()).is_err());
    let len = curve.field_len();
    assert_eq!(
        EcdsaPublicKey::from_affine(curve, &point[1..1 + len], &point[1 + len..]).unwrap(),
        EcdsaPublicKey::from_sec1(curve, &point).unwrap()
    );

    let nonce = [0x42u8; 48];
    let msg = quote_message(&nonce, hash);
    let pcrs = quoted_values();

    // TSS form: r and s as TPM2B, with leading zeros stripped as a TPM may do.
    for _ in 0..8 {
        let fixed = kp.sign(&SystemRandom::new(), &msg).unwrap();
        let (r, s) = fixed.as_ref().split_at(len);
        let strip = |v: &[u8]| {
            v.iter()
                .copied()
                .skip_while(|&b| b == 0)
                .collect::<Vec<u8>>()
        };
        let mut tss = vec![0x00, 0x18];
        tss.extend(hash.tpm_id().to_be_bytes());
        for part in [strip(r), strip(s)] {
            tss.extend((part.len() as u16).to_be_bytes());
            tss.extend(part);
        }
        let signature = Signature::parse_tss(&tss).unwrap();
        verify_quote(&msg, &signature, &key, Some(&nonce), Some(&pcrs)).unwrap();
        // Extra leading zeros are harmless, a flipped bit is not.
        let Signature::Ecdsa { hash: h, r, s } = signature.clone() else {
            panic!()
        };
        let padded = Signature::Ecdsa {
            hash: h,
            r: [&[0, 0][..], &r].concat(),
            s: s.clone(),
        };
        verify_quote(&msg, &padded, &key, None, None).unwrap();
        let mut bad_s = s.clone();
        *bad_s.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify_quote(
                &msg,
                &Signature::Ecdsa {
                    hash: h,
                    r: r.clone(),
                    s: bad_s
                },
                &key,
                None,
                None
            ),
            Err(Error::BadSignature)
        );
        // r longer than the field.
        let long = Signature::Ecdsa {
            hash: h,
            r: vec![1; len + 1],
            s,
        };
        assert_eq!(
            verify_quote(&msg, &long, &key, None, None),
            Err(Error::BadSignature)
        );
    }

    // Plain (DER) form, as tpm2_quote -f plain writes for ECC keys.
    let asn1 = EcdsaKeyPair::from_pkcs8(asn1_alg, kp.to_pkcs8v1().unwrap().as_ref()).unwrap();
    let der = asn1.sign(&SystemRandom::new(), &msg).unwrap();
    let signature = Signature::from_ecdsa_der(hash, der.as_ref()).unwrap();
    verify_quote(&msg, &signature, &key, Some(&nonce), Some(&pcrs)).unwrap();
    assert!(Signature::from_ecdsa_der(hash, &der.as_ref()[1..]).is_err());

    // Wrong curve key / RSA key.
    let other_curve = match curve {
        EcCurve::P256 => EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        EcCurve::P384 => EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
    };
    let other =
        PublicKey::from_spki_der(other_curve.public_key().as_der().unwrap().as_ref()).unwrap();
    assert!(verify_quote(&msg, &signature, &other, None, None).is_err());
    let rsa = Rsa::new().public();
    assert!(matches!(
        verify_quote(&msg, &signature, &rsa, None, None),
        Err(Error::KeySignatureMismatch {
            key: "RSA",
            signature: "ECDSA"
        })
    ));
    let rsa_sig = Signature::from_plain_rsa(&[1; 256]);
    assert!(matches!(
        verify_quote(&msg, &rsa_sig, &key, None, None),
        Err(Error::KeySignatureMismatch {
            signature: "RSA",
            ..
        })
    ));
}

#[test]
fn ecdsa_p256() {
    ecdsa_case(EcCurve::P256);
}

#[test]
fn ecdsa_p384() {
    ecdsa_case(EcCurve::P384);
}

#[test]
fn rsa_pem_pkcs1_and_jwk() {
    use base64::Engine as _;
    let rsa = Rsa::new();
    let pkcs1 = rsa.kp.public_key().as_ref().to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pkcs1);
    let mut pem = String::from("-----BEGIN RSA PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END RSA PUBLIC KEY-----\n");
    let key = RsaPublicKey::from_pem(&pem).unwrap();
    assert_eq!(
        PublicKey::from_pem(&pem).unwrap(),
        PublicKey::Rsa(key.clone())
    );
    assert_eq!(RsaPublicKey::from_der(&pkcs1).unwrap(), key);
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let from_jwk =
        RsaPublicKey::from_jwk_components(&url.encode(key.modulus()), &url.encode(key.exponent()))
            .unwrap();
    assert_eq!(from_jwk, key);
    // Leading zero bytes in components are ignored.
    let padded = [&[0u8][..], key.modulus()].concat();
    assert_eq!(
        RsaPublicKey::from_components(&padded, key.exponent()).unwrap(),
        key
    );
}

/// Curve/hash pairs aws-lc-rs cannot sign with (fixtures made with python
/// `cryptography`, see testdata/tpm-quote/MANIFEST.md): verified through the ASN.1 path.
#[test]
fn ecdsa_cross_curve_hash_fixtures() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/tpm-quote/synthetic");
    for (base, hash, curve) in [
        ("ecdsa-p256-sha384", HashAlg::Sha384, EcCurve::P256),
        ("ecdsa-p384-sha256", HashAlg::Sha256, EcCurve::P384),
    ] {
        let read = |ext: &str| std::fs::read(dir.join(format!("{base}.{ext}"))).unwrap();
        let msg = read("msg");
        let pem = String::from_utf8(read("pub.pem")).unwrap();
        let key = PublicKey::from_pem(&pem).unwrap();
        assert!(matches!(&key, PublicKey::Ecdsa(k) if k.curve() == curve));
        let signature = Signature::from_ecdsa_der(hash, &read("sig.der")).unwrap();
        let nonce = format!("cross-{}", &base[6..]);
        // No PCRs selected: pcrDigest = H(""), H being the scheme's hash; with nothing
        // quoted there is nothing to appraise.
        let v = verify_quote(&msg, &signature, &key, Some(nonce.as_bytes()), None).unwrap();
        assert_eq!(v.quote().pcr_digest(), hash.digest(b"").as_slice());
        assert!(matches!(
            verify_quote(&msg, &signature, &key, None, Some(&PcrValues::new())),
            Err(Error::NoPcrsAppraised)
        ));
        let mut one = PcrValues::new();
        one.insert(HashAlg::Sha256, 7, &[7; 32]).unwrap();
        assert!(matches!(
            verify_quote(&msg, &signature, &key, None, Some(&one)),
            Err(Error::PcrNotQuoted { index: 7, .. })
        ));
        // Round trip through the TSS form.
        let tss = signature.to_tss().unwrap();
        assert_eq!(Signature::parse_tss(&tss).unwrap(), signature);
        verify_quote(&msg, &Signature::parse_tss(&tss).unwrap(), &key, None, None).unwrap();
        // The other hash fails.
        let Signature::Ecdsa { r, s, .. } = signature else {
            panic!()
        };
        let other = if hash == HashAlg::Sha256 {
            HashAlg::Sha384
        } else {
            HashAlg::Sha256
        };
        assert_eq!(
            verify_quote(
                &msg,
                &Signature::Ecdsa { hash: other, r, s },
                &key,
                None,
                None
            ),
            Err(Error::BadSignature)
        );
    }
}
