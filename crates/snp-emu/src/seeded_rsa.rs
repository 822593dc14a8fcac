//! Deterministic RSA-4096 keys for seeded platforms (tests need the same ARK and ASK
//! from the same seed; aws-lc-rs generates RSA keys only from the system RNG).
//!
//! Candidates come from an HMAC-SHA384 counter-mode stream keyed by the seed; each
//! prime has its top two bits set (so the modulus has exactly 4096 bits), passes trial
//! division by the primes below 2000, is coprime to e - 1 = 65536 (i.e. odd) and to e
//! (p mod 65537 != 1), and passes 16 Miller-Rabin rounds with bases from the same
//! stream. The key is then handed to aws-lc-rs as PKCS#8, which validates it. These
//! keys are for emulated, test-only roots; production platforms use
//! `aws_lc_rs::rsa::KeyPair::generate`.

use der::Encode;
use der::asn1::{OctetString, UintRef};
use num_bigint::BigUint;
use zeroize::Zeroizing;

const E: u32 = 65_537;

/// A deterministic byte stream: HMAC-SHA384(seed, label || counter).
struct Stream {
    key: aws_lc_rs::hmac::Key,
    label: Vec<u8>,
    counter: u64,
}

impl Stream {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(48) {
            let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
            ctx.update(&self.label);
            ctx.update(&self.counter.to_le_bytes());
            self.counter += 1;
            let tag = ctx.sign();
            chunk.copy_from_slice(&tag.as_ref()[..chunk.len()]);
        }
    }
}

fn small_primes() -> Vec<u32> {
    (3u32..2000)
        .step_by(2)
        .filter(|&n| {
            (3..n)
                .step_by(2)
                .take_while(|d| d * d <= n)
                .all(|d| n % d != 0)
        })
        .collect()
}

fn miller_rabin(n: &BigUint, rounds: usize, stream: &mut Stream) -> bool {
    let one = BigUint::from(1u32);
    let two = BigUint::from(2u32);
    let n_minus_1 = n - &one;
    let s = n_minus_1.trailing_zeros().unwrap_or(0);
    let d = &n_minus_1 >> s;
    let bytes = usize::try_from(n.bits().div_ceil(8)).unwrap_or(256);
    let mut buf = vec![0u8; bytes];
    'rounds: for _ in 0..rounds {
        stream.fill(&mut buf);
        // A base in [2, n - 2].
        let a = BigUint::from_bytes_be(&buf) % (&n_minus_1 - &one) + &two;
        let mut x = a.modpow(&d, n);
        if x == one || x == n_minus_1 {
            continue;
        }
        for _ in 1..s {
            x = x.modpow(&two, n);
            if x == n_minus_1 {
                continue 'rounds;
            }
        }
        return false;
    }
    true
}

fn prime(bits: usize, stream: &mut Stream, primes: &[u32]) -> BigUint {
    let mut buf = vec![0u8; bits / 8];
    loop {
        stream.fill(&mut buf);
        buf[0] |= 0xC0;
        if let Some(last) = buf.last_mut() {
            *last |= 1;
        }
        let p = BigUint::from_bytes_be(&buf);
        if primes.iter().any(|&q| &p % q == BigUint::ZERO) {
            continue;
        }
        if &p % E == BigUint::from(1u32) {
            continue;
        }
        if miller_rabin(&p, 16, stream) {
            return p;
        }
    }
}

/// An RSA-4096 key pair derived from `seed` and `label`, as PKCS#8 DER.
pub(crate) fn rsa4096_pkcs8(seed: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, der::Error> {
    let mut stream = Stream {
        key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, seed),
        label: format!("opencvm seeded RSA {label}").into_bytes(),
        counter: 0,
    };
    let primes = small_primes();
    let one = BigUint::from(1u32);
    loop {
        let p = prime(2048, &mut stream, &primes);
        let q = prime(2048, &mut stream, &primes);
        if p == q {
            continue;
        }
        let (p, q) = if p > q { (p, q) } else { (q, p) };
        let n = &p * &q;
        let phi = (&p - &one) * (&q - &one);
        let e = BigUint::from(E);
        let (Some(d), Some(qinv)) = (e.modinv(&phi), q.modinv(&p)) else {
            continue;
        };
        let dp = &d % (&p - &one);
        let dq = &d % (&q - &one);
        let ints: Vec<Zeroizing<Vec<u8>>> = [&n, &e, &d, &p, &q, &dp, &dq, &qinv]
            .iter()
            .map(|v| Zeroizing::new(v.to_bytes_be()))
            .collect();
        // RSAPrivateKey ::= SEQUENCE { version 0, n, e, d, p, q, dp, dq, qinv }
        let mut body = Zeroizing::new(0u8.to_der()?);
        for i in ints.iter() {
            body.extend_from_slice(&UintRef::new(i)?.to_der()?);
        }
        let rsa_key = Zeroizing::new(seq(&body));
        // PrivateKeyInfo ::= SEQUENCE { version 0, rsaEncryption with NULL, OCTET STRING }
        let mut info = Zeroizing::new(0u8.to_der()?);
        info.extend_from_slice(&[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ]);
        info.extend_from_slice(&OctetString::new(rsa_key.to_vec())?.to_der()?);
        return Ok(Zeroizing::new(seq(&info)));
    }
}

fn seq(body: &[u8]) -> Vec<u8> {
    crate::certs::tlv(0x30, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_key_and_aws_lc_accepts_it() {
        let a = rsa4096_pkcs8(b"seed", "ARK").unwrap();
        let b = rsa4096_pkcs8(b"seed", "ARK").unwrap();
        assert_eq!(*a, *b);
        let k = aws_lc_rs::rsa::KeyPair::from_pkcs8(&a).unwrap();
        assert_eq!(k.public_modulus_len(), 512);
        let c = rsa4096_pkcs8(b"seed", "ASK").unwrap();
        assert_ne!(*a, *c);
    }

    #[test]
    fn miller_rabin_knows_primes() {
        let mut s = Stream {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, b"t"),
            label: Vec::new(),
            counter: 0,
        };
        // 2^127 - 1 is prime; 2^127 + 1 is divisible by 3; a Carmichael number.
        let m127 = (BigUint::from(1u32) << 127) - BigUint::from(1u32);
        assert!(miller_rabin(&m127, 16, &mut s));
        assert!(!miller_rabin(&(&m127 + BigUint::from(2u32)), 16, &mut s));
        assert!(!miller_rabin(&BigUint::from(561u32), 16, &mut s));
    }
}
