//! Real Azure vTPM quotes: positives and negatives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use common::{Vector, expected, hcl_akpub_jwk, read, vectors};
use tpm_quote::{
    Error, HashAlg, PcrSelection, PcrValues, PublicKey, Quote, RsaPublicKey, RsaScheme, Signature,
    verify_quote, verify_signature,
};

fn all_pcrs(sel: &PcrSelection) -> Vec<u32> {
    sel.pcrs().to_vec()
}

#[test]
fn every_vector_verifies_with_nonce_and_pcrs() {
    let vs = vectors();
    assert_eq!(vs.len(), 7);
    for v in &vs {
        let verified = verify_quote(
            &v.message,
            &v.signature(),
            &v.key,
            Some(&v.nonce),
            v.pcrs.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert!(verified.nonce_checked(), "{}", v.name);
        assert_eq!(verified.nonce(), v.nonce.as_slice(), "{}", v.name);
        assert_eq!(verified.hash_alg(), HashAlg::Sha256);
        assert_eq!(verified.quote().raw(), v.message.as_slice());
        assert_eq!(verified.quote().pcr_digest().len(), 32);
        let sels = verified.quote().pcr_selections();
        assert_eq!(sels.len(), 1, "{}", v.name);
        assert_eq!(sels[0].hash_alg(), Some(HashAlg::Sha256));
        match &v.pcrs {
            Some(_) => {
                assert_eq!(all_pcrs(&sels[0]), (0..24).collect::<Vec<_>>());
                let bound = verified.pcrs().unwrap();
                assert_eq!(bound.len(), 24);
            }
            None => {
                assert_eq!(all_pcrs(&sels[0]), vec![0, 1, 2, 3, 4, 5, 6, 7, 14]);
                assert!(verified.pcrs().is_none());
            }
        }
        // Without the optional checks.
        let bare = verify_quote(&v.message, &v.signature(), &v.key, None, None).unwrap();
        assert!(!bare.nonce_checked());
        assert!(bare.pcrs().is_none());
    }
}

#[test]
fn nonce_and_pcrs_match_expected_values() {
    for v in vectors() {
        let q = Quote::parse(&v.message).unwrap();
        let nonce = hex::decode(v.expected["nonce_hex"].as_str().unwrap()).unwrap();
        assert_eq!(q.nonce(), nonce.as_slice(), "{}", v.name);
        assert_eq!(q.extra_data(), q.nonce());
        let Some(list) = v.expected["pcrs_sha256"].as_array() else {
            continue;
        };
        // The expected PCRs, through the JSON form of PcrValues.
        let json = serde_json::json!({
            "sha256": list.iter().enumerate()
                .map(|(i, h)| (i.to_string(), h.clone()))
                .collect::<serde_json::Map<_, _>>()
        });
        let from_json = PcrValues::from_json_str(&json.to_string()).unwrap();
        assert_eq!(Some(&from_json), v.pcrs.as_ref(), "{}", v.name);
        let verified = verify_quote(
            &v.message,
            &v.signature(),
            &v.key,
            Some(&nonce),
            Some(&from_json),
        )
        .unwrap();
        for (i, h) in list.iter().enumerate() {
            assert_eq!(
                verified.pcr(HashAlg::Sha256, i as u32).unwrap(),
                hex::decode(h.as_str().unwrap()).unwrap().as_slice()
            );
        }
        // pcrDigest == SHA-256(PCR0 || ... || PCR23).
        let concat: Vec<u8> = list
            .iter()
            .flat_map(|h| hex::decode(h.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(q.pcr_digest(), HashAlg::Sha256.digest(&concat).as_slice());
    }
}

#[test]
fn hcl_akpub_matches_expected_values() {
    let exp = expected();
    for v in vectors() {
        let Some(jwk) = v.expected.get("hcl_ak_pub") else {
            continue;
        };
        let key = RsaPublicKey::from_jwk_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(PublicKey::from(key.clone()), v.key, "{}", v.name);
        assert_eq!(key.modulus_len(), 256);
        assert_eq!(key.exponent(), &[1, 0, 1]);
    }
    // And the JWK read from the staged HCL report is the one in expected.json.
    let (n, _) = hcl_akpub_jwk(&read("trustee/az-snp-vtpm/hcl-report.bin"));
    assert_eq!(
        exp["trustee/az-snp-vtpm/quote.bin"]["hcl_ak_pub"]["n"]
            .as_str()
            .unwrap(),
        n
    );
}

#[test]
fn tpm_quote_msg_fields() {
    let q = Quote::parse(&read("trustee/az-snp-vtpm/tpm-quote.msg")).unwrap();
    assert_eq!(
        hex::encode(q.qualified_signer()),
        "000bcb7db80a611e921d7f0be5393e5a84d23f40a2d4dfc3bb1efa7a388b9ee401c5"
    );
    assert_eq!(q.extra_data(), b"challenge");
    let c = q.clock_info();
    assert_eq!(
        (c.clock, c.reset_count, c.restart_count, c.safe),
        (861_327_613, 3, 0, true)
    );
    assert_eq!(q.firmware_version(), 0x2020_0312_0012_0003);
    assert_eq!(q.pcr_selections()[0].bitmap(), &[0xff, 0x40, 0x00]);
    assert_eq!(q.pcr_selections()[0].hash_alg_id(), 0x000b);
    assert_eq!(
        hex::encode(q.pcr_digest()),
        "9d608cf40eb5bc7454c6cbc0985c17c2efa45d5e5b28004aa7d77c1285d2fa5d"
    );
}

#[test]
fn same_quote_in_quote_bin_and_v1_json() {
    let vs = vectors();
    let by = |n: &str| vs.iter().find(|v| v.name.ends_with(n)).unwrap();
    let (a, b) = (by("az-snp-vtpm/quote.bin"), by("tpm-quote-v1.json"));
    assert_eq!(a.message, b.message);
    assert_eq!(a.sig, b.sig);
    assert_eq!(a.pcrs, b.pcrs);
}

#[test]
fn signature_formats_tss_plain_auto() {
    for v in vectors() {
        let plain = v.signature();
        let tss = plain.to_tss().unwrap();
        assert_eq!(&tss[..6], &[0x00, 0x14, 0x00, 0x0b, 0x01, 0x00]);
        assert_eq!(Signature::parse_tss(&tss).unwrap(), plain);
        assert_eq!(Signature::parse_auto(&tss).unwrap(), plain);
        assert_eq!(Signature::parse_auto(&v.sig).unwrap(), plain);
        let parsed = Signature::parse_tss(&tss).unwrap();
        verify_quote(&v.message, &parsed, &v.key, Some(&v.nonce), v.pcrs.as_ref()).unwrap();
    }
}

#[test]
fn flipped_signature_bytes_fail() {
    for v in vectors() {
        for pos in [0, 1, 100, 128, 254, 255] {
            let mut sig = v.sig.clone();
            sig[pos] ^= 0x01;
            assert_eq!(
                verify_quote(
                    &v.message,
                    &Signature::from_plain_rsa(&sig),
                    &v.key,
                    None,
                    None
                ),
                Err(Error::BadSignature),
                "{} pos {pos}",
                v.name
            );
        }
        // Too short / too long.
        for sig in [&v.sig[..255], &[v.sig.as_slice(), &[0]].concat()[..]] {
            assert_eq!(
                verify_signature(&v.message, &Signature::from_plain_rsa(sig), &v.key),
                Err(Error::BadSignature)
            );
        }
    }
}

#[test]
fn flipped_message_bytes_fail() {
    for v in vectors() {
        for pos in 0..v.message.len() {
            let mut msg = v.message.clone();
            msg[pos] ^= 0x80;
            assert_eq!(
                verify_quote(&msg, &v.signature(), &v.key, Some(&v.nonce), None),
                Err(Error::BadSignature),
                "{} pos {pos}",
                v.name
            );
        }
    }
}

#[test]
fn wrong_nonce_is_nonce_mismatch() {
    for v in vectors() {
        for wrong in [
            &b"challengf"[..],
            b"",
            b"challenge\0",
            &v.nonce[..v.nonce.len() - 1],
        ] {
            assert_eq!(
                verify_quote(&v.message, &v.signature(), &v.key, Some(wrong), None),
                Err(Error::NonceMismatch {
                    expected: wrong.to_vec(),
                    got: v.nonce.clone()
                }),
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn wrong_pcr_is_pcr_digest_mismatch() {
    for v in vectors() {
        let Some(pcrs) = &v.pcrs else { continue };
        let quoted = Quote::parse(&v.message).unwrap().pcr_digest().to_vec();
        for index in 0..24 {
            let mut bad = pcrs.clone();
            let mut value = pcrs.get(HashAlg::Sha256, index).unwrap().to_vec();
            value[31] ^= 1;
            bad.insert(HashAlg::Sha256, index, &value).unwrap();
            match verify_quote(
                &v.message,
                &v.signature(),
                &v.key,
                Some(&v.nonce),
                Some(&bad),
            ) {
                Err(Error::PcrDigestMismatch {
                    quoted: q,
                    computed,
                }) => {
                    assert_eq!(q, quoted);
                    assert_ne!(computed, quoted);
                }
                other => panic!("{} PCR {index}: {other:?}", v.name),
            }
        }
        // A value for a PCR the quote does not select is refused: it would be reported
        // as checked without being covered by the signature.
        let mut extra = pcrs.clone();
        extra.insert(HashAlg::Sha1, 0, &[0; 20]).unwrap();
        assert_eq!(
            verify_quote(&v.message, &v.signature(), &v.key, None, Some(&extra)),
            Err(Error::PcrNotQuoted {
                alg: HashAlg::Sha1,
                index: 0
            })
        );
        // A missing PCR.
        let mut missing = PcrValues::new();
        for i in 1..24 {
            missing
                .insert(HashAlg::Sha256, i, pcrs.get(HashAlg::Sha256, i).unwrap())
                .unwrap();
        }
        assert_eq!(
            verify_quote(&v.message, &v.signature(), &v.key, None, Some(&missing)),
            Err(Error::MissingPcr {
                alg: HashAlg::Sha256,
                index: 0
            })
        );
    }
    // tpm-quote.msg selects PCRs 0-7 and 14 only; values of another machine do not match.
    let vs = vectors();
    let v = &vs[0];
    let selections = Quote::parse(&v.message).unwrap().pcr_selections().to_vec();
    let other_all = vs[1].pcrs.as_ref().unwrap();
    let other = other_all.subset(&selections).unwrap();
    assert!(matches!(
        verify_quote(&v.message, &v.signature(), &v.key, None, Some(&other)),
        Err(Error::PcrDigestMismatch { .. })
    ));
    // All 24 of them: the unquoted ones are refused first.
    assert!(matches!(
        verify_quote(&v.message, &v.signature(), &v.key, None, Some(other_all)),
        Err(Error::PcrNotQuoted { .. })
    ));
}

#[test]
fn truncated_messages_fail_at_every_length() {
    for v in vectors() {
        for len in 0..v.message.len() {
            let msg = &v.message[..len];
            assert!(
                matches!(Quote::parse(msg), Err(Error::Truncated { .. })),
                "{} len {len}: {:?}",
                v.name,
                Quote::parse(msg)
            );
            assert_eq!(
                verify_quote(msg, &v.signature(), &v.key, None, None),
                Err(Error::BadSignature)
            );
        }
    }
}

#[test]
fn trailing_byte_wrong_magic_wrong_type() {
    for v in vectors() {
        let mut trailing = v.message.clone();
        trailing.push(0);
        assert_eq!(
            Quote::parse(&trailing),
            Err(Error::TrailingBytes {
                what: "TPMS_ATTEST",
                count: 1
            })
        );
        assert_eq!(
            verify_quote(&trailing, &v.signature(), &v.key, None, None),
            Err(Error::BadSignature)
        );

        let mut magic = v.message.clone();
        magic[0] = 0xfe;
        assert_eq!(
            Quote::parse(&magic),
            Err(Error::BadMagic { got: 0xfe54_4347 })
        );

        let mut ty = v.message.clone();
        ty[5] = 0x14; // 0x8014 = TPM_ST_ATTEST_NV
        assert_eq!(Quote::parse(&ty), Err(Error::NotAQuote { got: 0x8014 }));
    }
}

#[test]
fn wrong_key_fails() {
    let vs = vectors();
    for (i, v) in vs.iter().enumerate() {
        for (j, other) in vs.iter().enumerate() {
            if v.key == other.key {
                continue;
            }
            assert_eq!(
                verify_quote(&v.message, &v.signature(), &other.key, None, None),
                Err(Error::BadSignature),
                "{i} with key of {j}"
            );
        }
    }
}

#[test]
fn wrong_scheme_or_hash_fails() {
    for v in vectors() {
        let sha1 = Signature::from_plain_rsa_with(RsaScheme::Pkcs1v15, HashAlg::Sha1, &v.sig);
        assert_eq!(
            verify_quote(&v.message, &sha1, &v.key, None, None),
            Err(Error::HashNotAccepted { alg: HashAlg::Sha1 })
        );
        let sha512 = Signature::from_plain_rsa_with(RsaScheme::Pkcs1v15, HashAlg::Sha512, &v.sig);
        assert_eq!(
            verify_quote(&v.message, &sha512, &v.key, None, None),
            Err(Error::HashNotAccepted {
                alg: HashAlg::Sha512
            })
        );
        for (scheme, hash) in [
            (RsaScheme::Pkcs1v15, HashAlg::Sha384),
            (RsaScheme::Pss, HashAlg::Sha256),
            (RsaScheme::Pss, HashAlg::Sha384),
        ] {
            let s = Signature::from_plain_rsa_with(scheme, hash, &v.sig);
            assert_eq!(
                verify_quote(&v.message, &s, &v.key, None, None),
                Err(Error::BadSignature)
            );
        }
        // An RSA key cannot check an ECDSA signature.
        let ec = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: vec![1; 32],
            s: vec![1; 32],
        };
        assert!(matches!(
            verify_quote(&v.message, &ec, &v.key, None, None),
            Err(Error::KeySignatureMismatch {
                key: "RSA",
                signature: "ECDSA"
            })
        ));
    }
}

#[test]
fn akpub_pem_der_forms_agree() {
    let pem = String::from_utf8(read("azure-cvm-tooling/akpub.pem")).unwrap();
    let PublicKey::Rsa(rsa) = PublicKey::from_pem(&pem).unwrap() else {
        panic!("RSA expected")
    };
    assert_eq!(RsaPublicKey::from_pem(&pem).unwrap(), rsa);
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    assert_eq!(RsaPublicKey::from_spki_der(&der).unwrap(), rsa);
    assert_eq!(RsaPublicKey::from_der(&der).unwrap(), rsa);
    assert_eq!(
        PublicKey::from_der(&der).unwrap(),
        PublicKey::Rsa(rsa.clone())
    );
    // Corrupt PEMs.
    assert!(PublicKey::from_pem(&pem.replace("-----END PUBLIC KEY-----", "")).is_err());
    assert!(PublicKey::from_pem(&pem.replace("PUBLIC KEY", "CERTIFICATE")).is_err());
    assert!(PublicKey::from_pem(&pem.replacen("MII", "MI!", 1)).is_err());
    assert!(PublicKey::from_der(&der[..der.len() - 1]).is_err());
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(PublicKey::from_der(&trailing).is_err());
}

/// Keep the helper struct's fields used.
#[test]
fn vector_names_are_unique() {
    let vs: Vec<Vector> = vectors();
    let mut names: Vec<_> = vs.iter().map(|v| v.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), vs.len());
}
