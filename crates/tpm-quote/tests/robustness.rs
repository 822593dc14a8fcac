//! Parsing arbitrary bytes never panics: pseudo-random inputs from a fixed-seed
//! xorshift, and random mutations of the real vectors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use tpm_quote::azure::AzureVtpmQuote;
use tpm_quote::{
    AttestHeader, Certify, ClockInfo, HashAlg, PcrValues, Quote, Signature, TpmPublic, fuzz_parse,
    verify_quote,
};

/// xorshift64* with a fixed seed: reproducible, no dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// Random bytes of a random length below `max`.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let data = rng.bytes(len);
        fuzz_parse(&data);
    }
}

/// A random `TPMS_ATTEST` whose sizes are mostly consistent, so parsing gets deep.
fn random_attest(rng: &mut XorShift) -> Vec<u8> {
    let mut m = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x18];
    for max in [70, 70] {
        let body = rng.some_bytes(max);
        m.extend((body.len() as u16).to_be_bytes());
        m.extend(body);
    }
    m.extend(rng.bytes(8 + 4 + 4));
    m.push(rng.below(3) as u8); // safe: 0, 1 or invalid 2
    m.extend(rng.bytes(8));
    let count = if rng.below(20) == 0 { 17 } else { rng.below(4) };
    m.extend((count as u32).to_be_bytes());
    for _ in 0..count {
        m.extend([0x00, [0x04, 0x0b, 0x0c, 0x0d, 0x12][rng.below(5)]]);
        let size = rng.below(6);
        m.push(size as u8);
        m.extend(rng.bytes(size));
    }
    let digest = rng.some_bytes(67);
    m.extend((digest.len() as u16).to_be_bytes());
    m.extend(digest);
    match rng.below(8) {
        0 => m.truncate(rng.below(m.len())),
        1 => m.push(0),
        2 => {
            let pos = rng.below(m.len());
            m[pos] = rng.next() as u8;
        }
        _ => {}
    }
    m
}

#[test]
fn random_structured_quotes_never_panic() {
    let mut rng = XorShift(42);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let data = random_attest(&mut rng);
        fuzz_parse(&data);
        if let Ok(q) = Quote::parse(&data) {
            parsed += 1;
            assert_eq!(q.raw(), data.as_slice());
            let values = PcrValues::new();
            let _ = values.composite_digest(q.pcr_selections(), HashAlg::Sha256);
            let _ = PcrValues::from_tpm2_pcrread_values(q.pcr_selections(), &data);
        }
    }
    // The generator must reach valid quotes, or it tests only the first fields.
    assert!(parsed > 2_000, "only {parsed} random quotes parsed");
}

#[test]
fn mutated_real_vectors_never_panic() {
    let mut rng = XorShift(7);
    let vectors = common::vectors();
    let blob = common::read("trustee/az-snp-vtpm/quote.bin");
    for round in 0..4_000 {
        let v = &vectors[round % vectors.len()];
        let mut msg = v.message.clone();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(msg.len());
            msg[pos] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            msg.truncate(rng.below(msg.len() + 1));
        }
        fuzz_parse(&msg);
        if let (Ok(q), Some(pcrs)) = (Quote::parse(&msg), &v.pcrs) {
            let _ = pcrs.composite_digest(q.pcr_selections(), HashAlg::Sha256);
            let _ = PcrValues::from_tpm2_pcrread_values(q.pcr_selections(), &msg);
        }
        // Mutated messages never verify with the original signature.
        assert!(
            verify_quote(&msg, &v.signature(), &v.key, None, v.pcrs.as_ref()).is_err()
                || msg == v.message
        );

        let mut b = blob.clone();
        let pos = rng.below(b.len());
        b[pos] = rng.next() as u8;
        let _ = AzureVtpmQuote::parse_bincode(&b);
        let _ = AzureVtpmQuote::parse_bincode(&b[..rng.below(b.len() + 1)]);
    }
}

#[test]
fn signature_tss_roundtrip_random() {
    let mut rng = XorShift(0xdead_beef);
    let hashes = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];
    for _ in 0..2_000 {
        let hash = hashes[rng.below(4)];
        let sig = match rng.below(3) {
            0 => Signature::from_plain_rsa(&rng.some_bytes(513)),
            1 => Signature::from_plain_rsa_with(
                tpm_quote::RsaScheme::Pss,
                hash,
                &rng.some_bytes(513),
            ),
            _ => Signature::Ecdsa {
                hash,
                r: rng.some_bytes(129),
                s: rng.some_bytes(129),
            },
        };
        let tss = sig.to_tss().unwrap();
        assert_eq!(Signature::parse_tss(&tss).unwrap(), sig);
        assert_eq!(Signature::parse_auto(&tss).unwrap(), sig);
        // Any truncation of a TSS signature is an error, never a panic.
        let cut = rng.below(tss.len());
        assert!(Signature::parse_tss(&tss[..cut]).is_err());
    }
    // Too large to marshal.
    assert!(Signature::from_plain_rsa(&[0; 513]).to_tss().is_err());
}

#[test]
fn quote_parse_is_idempotent_on_raw() {
    for v in common::vectors() {
        let q = Quote::parse(&v.message).unwrap();
        assert_eq!(Quote::parse(q.raw()).unwrap(), q);
    }
}

/// A random `TPMT_PUBLIC` (RSA or ECC) whose sizes are mostly consistent, sometimes
/// damaged, sometimes behind a `TPM2B_PUBLIC` size.
fn random_public(rng: &mut XorShift) -> Vec<u8> {
    fn pick(rng: &mut XorShift, options: &[u16]) -> u16 {
        options[rng.below(options.len())]
    }
    fn scheme(rng: &mut XorShift, m: &mut Vec<u8>, ids: &[u16]) {
        let id = pick(rng, ids);
        m.extend(id.to_be_bytes());
        if id != 0x0010 && id != 0x0015 {
            m.extend(pick(rng, &[0x0004, 0x000b, 0x000c, 0x0012, 0x0099]).to_be_bytes());
        }
        if id == 0x001a {
            m.extend(rng.bytes(2));
        }
    }
    let rsa = rng.below(2) == 0;
    let mut m = Vec::new();
    m.extend(if rsa { 0x0001u16 } else { 0x0023 }.to_be_bytes());
    m.extend(pick(rng, &[0x000b, 0x000c, 0x0004, 0x0010]).to_be_bytes());
    let attrs = (rng.next() as u32) & if rng.below(8) == 0 { !0 } else { 0x000f_0cf6 };
    m.extend(attrs.to_be_bytes());
    let policy = [0usize, 32, 48, 20][rng.below(4)];
    m.extend((policy as u16).to_be_bytes());
    m.extend(rng.bytes(policy));
    if rng.below(2) == 0 {
        m.extend(0x0010u16.to_be_bytes());
    } else {
        m.extend(pick(rng, &[0x0006, 0x0013, 0x0026, 0x000a]).to_be_bytes());
        m.extend(pick(rng, &[128, 192, 256, 100]).to_be_bytes());
        m.extend(pick(rng, &[0x0043, 0x0040, 0x0010, 0x0099]).to_be_bytes());
    }
    if rsa {
        scheme(
            rng,
            &mut m,
            &[0x0010, 0x0014, 0x0015, 0x0016, 0x0017, 0x0018],
        );
        let bytes = [256usize, 384, 128, 0][rng.below(4)];
        let bits = if rng.below(10) == 0 { 2047 } else { bytes * 8 };
        m.extend((bits as u16).to_be_bytes());
        m.extend(if rng.below(2) == 0 { 0 } else { 65537u32 }.to_be_bytes());
        m.extend((bytes as u16).to_be_bytes());
        let mut n = rng.bytes(bytes);
        if let Some(top) = n.first_mut() {
            *top |= 0x80;
        }
        m.extend(n);
    } else {
        scheme(rng, &mut m, &[0x0010, 0x0018, 0x001a, 0x001c, 0x0014]);
        m.extend(pick(rng, &[0x0003, 0x0004, 0x0010]).to_be_bytes());
        scheme(rng, &mut m, &[0x0010, 0x0007, 0x0021, 0x0017]);
        for _ in 0..2 {
            let len = [32usize, 48, 0, 129][rng.below(4)];
            m.extend((len as u16).to_be_bytes());
            m.extend(rng.bytes(len));
        }
    }
    match rng.below(8) {
        0 => m.truncate(rng.below(m.len())),
        1 => m.push(0),
        2 => {
            let pos = rng.below(m.len());
            m[pos] = rng.next() as u8;
        }
        _ => {}
    }
    if rng.below(2) == 0 {
        let mut prefixed = (m.len() as u16).to_be_bytes().to_vec();
        prefixed.extend(m);
        m = prefixed;
    }
    m
}

#[test]
fn random_public_areas_never_panic() {
    let mut rng = XorShift(0x7075_626c_6963);
    let mut parsed = 0;
    for _ in 0..20_000 {
        let data = random_public(&mut rng);
        fuzz_parse(&data);
        if let Ok(p) = TpmPublic::parse_auto(&data) {
            parsed += 1;
            assert!(data.ends_with(p.raw()));
            assert_eq!(TpmPublic::parse(p.raw()).unwrap(), p);
            assert_eq!(TpmPublic::parse_tpm2b(&p.to_tpm2b()).unwrap(), p);
            assert_eq!(p.name().len(), 2 + p.name_alg().digest_len());
            let _ = p.public_key();
        }
    }
    assert!(parsed > 500, "only {parsed} random public areas parsed");
}

#[test]
fn mutated_certify_never_panics() {
    let mut rng = XorShift(0x8017);
    let header = AttestHeader {
        qualified_signer: vec![0x00, 0x0b, 1, 2, 3],
        extra_data: b"nonce".to_vec(),
        clock_info: ClockInfo {
            clock: 1,
            reset_count: 2,
            restart_count: 3,
            safe: false,
        },
        firmware_version: 4,
    };
    let good = Certify::encode(&header, &[0x00, 0x0b, 9, 9], &[0x00, 0x0b, 8]).unwrap();
    assert_eq!(Certify::parse(&good).unwrap().header(), &header);
    for _ in 0..10_000 {
        let mut m = good.clone();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(m.len());
            m[pos] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            m.truncate(rng.below(m.len() + 1));
        }
        fuzz_parse(&m);
        if let Ok(c) = Certify::parse(&m) {
            assert_eq!(c.raw(), m.as_slice());
            let again = Certify::encode(c.header(), c.name(), c.qualified_name()).unwrap();
            assert_eq!(again, m);
        }
    }
}
