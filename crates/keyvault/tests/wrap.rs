#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Key transfer wrapping: round trips, refusals and the `key_hsm` blob.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keyvault::wrap::{
    KeyHsm, MAX_MATERIAL_LEN, UnwrappingKey, WrapError, WrapMechanism, WrappingPublicKey,
    unwrap_key, wrap_key,
};
use serde_json::{Value, json};

/// A 1024-bit RSA key (PKCS#8 DER, base64) made for this test with Python `cryptography`;
/// too small to wrap to.
const RSA_1024_PKCS8: &str = "\
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAPnLpGFqAh0ytlM37Hvd8fndF6L1\
/awrBwcJrJ18gZE2DQH3yN96DR2ZmbZQf9TclR0LLhGB1fhjOogZOCpHm7Z67ste1FRdLJ6Nx72L\
xdKYJsNeoWO1pSTHcXILvePtQkoRmbrzgDafF2Ibfygl7jpU/SWhbQ3t0e+smf8KwgsXAgMBAAEC\
gYABTLr1Osz6A+qI8lCLsHLy3uChm3APdkXaFoXMZ/pwm/xjVzu3VfY9gjAXj8GqhN9NwGIj+y32\
1eVXEfKF3cuEm+tytJ1gZ7eSn3Wvwj9zuy9nZQy8RRoyxzPA/N3+pcwE+fa++KldexGHD+7oGnb8\
yOb795ex5PHIeE+U+OH84QJBAP4m9rfzwC9e5T+mksNcwk92oDjZDqZxUOpmDE2aCs66YH7DjdJM\
Cvf6gdE4G1fYrzjHLUCIL5cL3y+TuKVs6ycCQQD7nJHKGZ6ebiAhmp8yGwDKdqVvQbYGl8PMIQav\
I3Yty6YFKA4LLg7MpKkkA3TgyMgAm2rOwTfyauohZWfUeJaRAkA0+jBBhgjQlwpYa0N6f7JtV//r\
+arpHQPN6Hm2D18jWoxUwDSm2n0K1egLkZN5i0xzHGmdYwXwiWP7ieJacUrPAkEAivvkiDd4p9j7\
BLTtZPcHi87X+UnZ63Bfpl1D3PCAsjFAxq5me4R4hlAaYhtKr3QZDkTLTePrLIwkQkhKf1IREQJA\
C+N+eqW2UGbzSixeAvikBdSHeu7ZaJBXdLP6xlV4gnu3q/GhaZ7IG4oJttRz3rKp4tQB/Kfj+Jlw\
JYU1F7LlnQ==";

/// The modulus of that key, base64url.
const RSA_1024_N: &str = "-cukYWoCHTK2Uzfse93x-d0XovX9rCsHBwmsnXyBkTYNAffI33oNHZmZtlB_1NyVHQsuEYHV-GM6iBk4Kkebtnruy17UVF0sno3HvYvF0pgmw16hY7WlJMdxcgu94-1CShGZuvOANp8XYht_KCXuOlT9JaFtDe3R76yZ_wrCCxc";

fn key(bits: usize) -> &'static UnwrappingKey {
    static K2048: OnceLock<UnwrappingKey> = OnceLock::new();
    static K3072: OnceLock<UnwrappingKey> = OnceLock::new();
    static K4096: OnceLock<UnwrappingKey> = OnceLock::new();
    let cell = match bits {
        2048 => &K2048,
        3072 => &K3072,
        4096 => &K4096,
        _ => unreachable!(),
    };
    cell.get_or_init(|| UnwrappingKey::generate(bits).unwrap())
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut v).unwrap();
    v
}

#[test]
fn mechanism_names() {
    let names: Vec<&str> = WrapMechanism::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        [
            "CKM_RSA_AES_KEY_WRAP",
            "RSA_AES_KEY_WRAP_256",
            "RSA_AES_KEY_WRAP_384"
        ]
    );
    for m in WrapMechanism::ALL {
        assert_eq!(WrapMechanism::from_name(m.name()).unwrap(), m);
        assert_eq!(m.to_string().parse::<WrapMechanism>().unwrap(), m);
    }
    assert_eq!(WrapMechanism::RsaAesKeyWrap384.oaep_hash(), "SHA-384");
    let e = WrapMechanism::from_name("ckm_rsa_aes_key_wrap").unwrap_err();
    assert_eq!(e.code(), "unknown_wrap_mechanism");
    assert!(WrapMechanism::from_name("RSA-OAEP-256").is_err());
}

#[test]
fn round_trip_every_mechanism_key_size_and_length() {
    let rsa_pkcs8 = UnwrappingKey::generate(2048).unwrap().to_pkcs8().unwrap();
    for bits in [2048, 3072, 4096] {
        let k = key(bits);
        assert_eq!(k.bits(), bits);
        let public = k.public_key();
        for m in WrapMechanism::ALL {
            let mut materials: Vec<Vec<u8>> = (1..=70).map(random).collect();
            materials.push(random(32)); // an AES-256 key
            materials.push(rsa_pkcs8.as_bytes().to_vec()); // a PKCS#8 RSA private key
            for material in materials {
                let ct = wrap_key(m, public, &material).unwrap();
                // c1 is one modulus long; c2 is RFC 5649 output.
                assert_eq!(ct.len(), bits / 8 + 8 + material.len().div_ceil(8) * 8);
                let back = unwrap_key(m, k, &ct).unwrap();
                assert_eq!(
                    back.as_bytes(),
                    &material[..],
                    "{m} RSA-{bits} len {}",
                    material.len()
                );
            }
        }
    }
}

#[test]
fn wrapping_is_randomised() {
    let k = key(2048);
    let material = random(32);
    let a = wrap_key(WrapMechanism::RsaAesKeyWrap256, k.public_key(), &material).unwrap();
    let b = wrap_key(WrapMechanism::RsaAesKeyWrap256, k.public_key(), &material).unwrap();
    assert_ne!(a, b);
    // Fresh AES key each time: the KWP parts differ too.
    assert_ne!(a[256..], b[256..]);
}

#[test]
fn wrong_key_or_mechanism_fails() {
    let material = random(32);
    let other = UnwrappingKey::generate(2048).unwrap();
    for m in WrapMechanism::ALL {
        let ct = wrap_key(m, key(2048).public_key(), &material).unwrap();
        assert_eq!(
            unwrap_key(m, &other, &ct).unwrap_err(),
            WrapError::UnwrapFailed
        );
        for wrong in WrapMechanism::ALL.into_iter().filter(|w| *w != m) {
            let e = unwrap_key(wrong, key(2048), &ct).unwrap_err();
            assert_eq!(e, WrapError::UnwrapFailed, "{m} unwrapped as {wrong}");
            assert_eq!(e.code(), "unwrap_failed");
        }
        // A key of another size sees a wrong length or fails.
        assert!(unwrap_key(m, key(3072), &ct).is_err());
    }
}

#[test]
fn tampered_ciphertext_fails() {
    let k = key(2048);
    let material = random(45);
    for m in WrapMechanism::ALL {
        let ct = wrap_key(m, k.public_key(), &material).unwrap();
        // Flip one bit at several places: in c1, at the c1/c2 boundary, in c2's integrity
        // block, in the wrapped data and in its last byte.
        for pos in [0, 100, 255, 256, 260, 270, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[pos] ^= 0x01;
            assert_eq!(
                unwrap_key(m, k, &bad).unwrap_err(),
                WrapError::UnwrapFailed,
                "{m} flip at {pos}"
            );
        }
        // Truncated or extended by one KWP block: the integrity check fails.
        assert_eq!(
            unwrap_key(m, k, &ct[..ct.len() - 8]).unwrap_err(),
            WrapError::UnwrapFailed
        );
        let mut longer = ct.clone();
        longer.extend_from_slice(&[0u8; 8]);
        assert_eq!(
            unwrap_key(m, k, &longer).unwrap_err(),
            WrapError::UnwrapFailed
        );
        // Lengths that cannot be c1 || c2.
        for len in [0, 255, 256, 256 + 8, ct.len() - 1] {
            let e = unwrap_key(m, k, &ct[..len]).unwrap_err();
            assert_eq!(e.code(), "invalid_ciphertext_length", "len {len}");
        }
        // Still fine untouched.
        assert_eq!(unwrap_key(m, k, &ct).unwrap().as_bytes(), &material[..]);
    }
}

#[test]
fn small_keys_are_refused() {
    // A real 1024-bit key, as a JWK...
    let jwk = json!({"kty": "RSA", "kid": "small", "n": RSA_1024_N, "e": "AQAB"});
    let e = WrappingPublicKey::from_jwk(&jwk).unwrap_err();
    assert_eq!(e, WrapError::KeyTooSmall { bits: 1024 });
    assert_eq!(e.code(), "wrapping_key_too_small");
    assert_eq!(
        e.to_string(),
        "wrapping key is RSA-1024; at least 2048 bits are required"
    );
    // ...as components...
    let n = URL_SAFE_NO_PAD.decode(RSA_1024_N).unwrap();
    assert_eq!(
        WrappingPublicKey::from_components(&n, &[1, 0, 1]).unwrap_err(),
        WrapError::KeyTooSmall { bits: 1024 }
    );
    // ...and as a private key.
    let pkcs8 = STANDARD.decode(RSA_1024_PKCS8).unwrap();
    let e = UnwrappingKey::from_pkcs8(&pkcs8).unwrap_err();
    assert_eq!(e.code(), "invalid_private_key");
    assert_eq!(
        UnwrappingKey::generate(1024).unwrap_err(),
        WrapError::KeyTooSmall { bits: 1024 }
    );
    // 2047 bits: still too small.
    let mut n2047 = vec![0xffu8; 256];
    n2047[0] = 0x7f;
    assert_eq!(
        WrappingPublicKey::from_components(&n2047, &[3]).unwrap_err(),
        WrapError::KeyTooSmall { bits: 2047 }
    );
    // Over 8192 bits.
    let big = vec![0xffu8; 1025];
    assert_eq!(
        WrappingPublicKey::from_components(&big, &[3]).unwrap_err(),
        WrapError::KeyTooLarge { bits: 8200 }
    );
}

#[test]
fn jwk_parsing() {
    let k = key(2048);
    let jwk = k
        .public_key()
        .clone()
        .with_kid("TpmEphemeralEncryptionKey")
        .to_jwk();
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["e"], "AQAB");
    let p = WrappingPublicKey::from_jwk(&jwk).unwrap();
    assert_eq!(p.kid(), Some("TpmEphemeralEncryptionKey"));
    assert_eq!(p.bits(), 2048);
    assert_eq!(p.modulus_len(), 256);
    // What attested environments publish (x-ms-runtime.keys) has key_ops ["encrypt"].
    let mut runtime = jwk.clone();
    runtime["key_ops"] = json!(["encrypt"]);
    runtime["use"] = json!("enc");
    let material = random(32);
    let ct = wrap_key(
        WrapMechanism::CkmRsaAesKeyWrap,
        &WrappingPublicKey::from_jwk(&runtime).unwrap(),
        &material,
    )
    .unwrap();
    assert_eq!(
        unwrap_key(WrapMechanism::CkmRsaAesKeyWrap, k, &ct)
            .unwrap()
            .as_bytes(),
        &material[..]
    );
    // A leading zero byte on n is tolerated.
    let mut n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    n.insert(0, 0);
    let mut padded = jwk.clone();
    padded["n"] = json!(URL_SAFE_NO_PAD.encode(&n));
    assert_eq!(WrappingPublicKey::from_jwk(&padded).unwrap(), p);

    let refuse = |patch: Value, want: &str| {
        let mut j = jwk.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                j.as_object_mut().unwrap().remove(k);
            } else {
                j[k] = v.clone();
            }
        }
        let e = WrappingPublicKey::from_jwk(&j).unwrap_err();
        assert_eq!(e.code(), "invalid_wrapping_key", "{patch}");
        assert!(e.to_string().contains(want), "{patch}: {e}");
    };
    refuse(json!({"kty": "EC"}), "kty is \"EC\"");
    refuse(json!({"kty": null}), "missing kty");
    refuse(json!({"n": null}), "missing n");
    refuse(json!({"e": 65537}), "e must be a string");
    refuse(json!({"n": "a+b/"}), "n is not base64url");
    refuse(json!({"e": "AQA"}), "not an odd number >= 3"); // 0x0100 = 256
    refuse(json!({"e": "AQ"}), "not an odd number >= 3"); // 1
    refuse(json!({"e": "AQAAAAE"}), "2^32 or more");
    refuse(json!({"use": "sig"}), "an encryption key");
    refuse(
        json!({"key_ops": ["sign", "verify"]}),
        "neither wrapKey nor encrypt",
    );
    refuse(json!({"kid": 7}), "kid must be a string");
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    refuse(
        json!({"n": URL_SAFE_NO_PAD.encode(&even)}),
        "the modulus is even",
    );
    assert!(WrappingPublicKey::from_jwk(&json!("x")).is_err());
}

#[test]
fn material_length_limits() {
    let p = key(2048).public_key();
    let m = WrapMechanism::RsaAesKeyWrap256;
    assert_eq!(
        wrap_key(m, p, &[]).unwrap_err(),
        WrapError::MaterialLength { len: 0 }
    );
    let max = random(MAX_MATERIAL_LEN);
    let ct = wrap_key(m, p, &max).unwrap();
    assert_eq!(unwrap_key(m, key(2048), &ct).unwrap().as_bytes(), &max[..]);
    let e = wrap_key(m, p, &random(MAX_MATERIAL_LEN + 1)).unwrap_err();
    assert_eq!(e.code(), "invalid_key_material_length");
}

#[test]
fn key_hsm_round_trip_and_shape() {
    let k = UnwrappingKey::generate(2048)
        .unwrap()
        .with_kid("https://vault.example/keys/tee-enc/1");
    let public = k.public_key().clone();
    let material = random(32);
    for m in WrapMechanism::ALL {
        let hsm = KeyHsm::wrap(m, &public, &material).unwrap();
        let encoded = hsm.encode();
        assert!(!encoded.contains(['=', '+', '/']));
        let doc: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&encoded).unwrap()).unwrap();
        assert_eq!(doc["schema_version"], "1.0");
        assert_eq!(
            doc["header"],
            json!({"kid": "https://vault.example/keys/tee-enc/1", "alg": "dir", "enc": m.name()})
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(doc["ciphertext"].as_str().unwrap())
                .unwrap(),
            hsm.ciphertext()
        );
        let parsed = KeyHsm::parse(&encoded).unwrap();
        assert_eq!(parsed, hsm);
        assert_eq!(parsed.mechanism(), m);
        assert_eq!(parsed.kid(), "https://vault.example/keys/tee-enc/1");
        assert_eq!(parsed.unwrap_key(&k).unwrap().as_bytes(), &material[..]);
        // The free function agrees.
        assert_eq!(
            unwrap_key(m, &k, parsed.ciphertext()).unwrap().as_bytes(),
            &material[..]
        );
    }

    // The BYOK spelling of the schema version, padding, and extra members are accepted.
    let hsm = KeyHsm::wrap(WrapMechanism::CkmRsaAesKeyWrap, &public, &material).unwrap();
    let mut doc = hsm.to_json();
    doc["schema_version"] = json!("1.0.0");
    doc["generator"] = json!("some BYOK tool");
    let enc = base64::engine::general_purpose::URL_SAFE.encode(doc.to_string());
    assert_eq!(KeyHsm::parse(&enc).unwrap(), hsm);

    // A key with another kid refuses; one without a kid does not check.
    let other_kid = UnwrappingKey::from_pkcs8(k.to_pkcs8().unwrap().as_bytes())
        .unwrap()
        .with_kid("another");
    let e = hsm.unwrap_key(&other_kid).unwrap_err();
    assert_eq!(e.code(), "kid_mismatch");
    let no_kid = UnwrappingKey::from_pkcs8(k.to_pkcs8().unwrap().as_bytes()).unwrap();
    assert_eq!(hsm.unwrap_key(&no_kid).unwrap().as_bytes(), &material[..]);

    // Wrapping needs a kid for the header.
    let e = KeyHsm::wrap(
        WrapMechanism::CkmRsaAesKeyWrap,
        no_kid.public_key(),
        &material,
    )
    .unwrap_err();
    assert_eq!(e, WrapError::MissingKid);

    // new() + encode() for a ciphertext made elsewhere.
    let ct = wrap_key(WrapMechanism::RsaAesKeyWrap384, &public, &material).unwrap();
    let made = KeyHsm::new("kid-1", WrapMechanism::RsaAesKeyWrap384, ct);
    assert_eq!(KeyHsm::parse(&made.encode()).unwrap(), made);
}

#[test]
fn key_hsm_parse_errors() {
    let good = json!({
        "schema_version": "1.0",
        "header": {"kid": "k", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": "AAAA",
    });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    assert!(KeyHsm::parse(&enc(&good)).is_ok());
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"schema_version": "2.0"}),
            "unsupported schema_version \"2.0\"",
        ),
        (json!({"schema_version": null}), "missing schema_version"),
        (json!({"header": null}), "missing header"),
        (
            json!({"header": {"alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"}}),
            "missing header.kid",
        ),
        (
            json!({"header": {"kid": "", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"}}),
            "missing header.kid",
        ),
        (
            json!({"header": {"kid": "k", "alg": "RSA-OAEP", "enc": "CKM_RSA_AES_KEY_WRAP"}}),
            "header.alg is \"RSA-OAEP\"",
        ),
        (
            json!({"header": {"kid": "k", "enc": "CKM_RSA_AES_KEY_WRAP"}}),
            "missing header.alg",
        ),
        (
            json!({"header": {"kid": "k", "alg": "dir"}}),
            "missing header.enc",
        ),
        (json!({"ciphertext": null}), "missing ciphertext"),
        (json!({"ciphertext": "a+b/"}), "ciphertext is not base64url"),
    ];
    for (patch, want) in cases {
        let mut v = good.clone();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        let e = KeyHsm::parse(&enc(&v)).unwrap_err();
        assert_eq!(e.code(), "malformed_key_hsm", "{patch}: {e}");
        assert!(e.to_string().contains(want), "{patch}: {e}");
    }
    let mut v = good.clone();
    v["header"]["enc"] = json!("AES_KEY_WRAP_PAD");
    assert_eq!(
        KeyHsm::parse(&enc(&v)).unwrap_err().code(),
        "unknown_wrap_mechanism"
    );
    assert!(
        KeyHsm::parse("not base64!")
            .unwrap_err()
            .to_string()
            .contains("not base64url")
    );
    assert!(
        KeyHsm::parse(&URL_SAFE_NO_PAD.encode("[1,2]"))
            .unwrap_err()
            .to_string()
            .contains("not a JSON object")
    );
    assert!(
        KeyHsm::parse(&URL_SAFE_NO_PAD.encode("{"))
            .unwrap_err()
            .to_string()
            .contains("not JSON")
    );
    assert!(KeyHsm::parse(&"A".repeat(70_000)).is_err());
}

#[test]
fn secrets_stay_out_of_debug() {
    let k = key(2048);
    let pkcs8 = k.to_pkcs8().unwrap();
    let dbg = format!("{k:?} {pkcs8:?} {:?}", k.public_key());
    assert!(dbg.contains("bits: 2048"), "{dbg}");
    assert!(dbg.contains("REDACTED"), "{dbg}");
    // No run of key bytes, in any of the usual renderings.
    let probe = &pkcs8.as_bytes()[100..108];
    assert!(!dbg.contains(&hex::encode(probe)));
    assert!(!dbg.contains(format!("{:?}", &probe[..4]).trim_matches(['[', ']'])));
    let material = random(32);
    let ct = wrap_key(WrapMechanism::RsaAesKeyWrap256, k.public_key(), &material).unwrap();
    let back = unwrap_key(WrapMechanism::RsaAesKeyWrap256, k, &ct).unwrap();
    assert_eq!(format!("{back:?}"), "SecretBytes([REDACTED; 32 bytes])");
    assert_eq!(back.len(), 32);
    assert!(!back.is_empty());
    assert_eq!(&back.clone().into_zeroizing()[..], &material[..]);
    let hsm = KeyHsm::new("k", WrapMechanism::RsaAesKeyWrap256, ct);
    assert!(!format!("{hsm:?}").contains(&hex::encode(&hsm.ciphertext()[..8])));
}

#[test]
fn pkcs8_round_trip() {
    let k = key(3072);
    let again = UnwrappingKey::from_pkcs8(k.to_pkcs8().unwrap().as_bytes()).unwrap();
    assert_eq!(again.public_key(), k.public_key());
    assert_eq!(again.bits(), 3072);
    assert_eq!(
        UnwrappingKey::from_pkcs8(b"not der").unwrap_err().code(),
        "invalid_private_key"
    );
}
