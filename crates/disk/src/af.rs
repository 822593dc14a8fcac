//! The anti-forensic splitter LUKS keyslots store their key through (the LUKS1
//! algorithm, kept by LUKS2): a key of `n` bytes becomes `n × stripes` bytes, all of
//! which are needed to recover it, so wiping any part of a keyslot destroys it.

use aws_lc_rs::{digest, rand};
use zeroize::Zeroizing;

use crate::metadata::Hash;

fn algorithm(hash: Hash) -> &'static digest::Algorithm {
    match hash {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    }
}

/// Diffuses `buf` in place: each hash-sized piece `i` becomes `H(be32(i) ‖ piece)`,
/// truncated to the piece's length.
fn diffuse(buf: &mut [u8], hash: Hash) {
    let alg = algorithm(hash);
    for (i, piece) in buf.chunks_mut(hash.output_len()).enumerate() {
        let mut ctx = digest::Context::new(alg);
        ctx.update(&(i as u32).to_be_bytes());
        ctx.update(piece);
        let d = ctx.finish();
        let n = piece.len();
        piece.copy_from_slice(&d.as_ref()[..n]);
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// Splits `key` into `key.len() × stripes` bytes.
pub fn split(key: &[u8], stripes: u32, hash: Hash) -> Result<Zeroizing<Vec<u8>>, crate::Error> {
    let n = key.len();
    let stripes = stripes as usize;
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    if stripes == 0 {
        return Ok(out);
    }
    rand::fill(&mut out[..n * (stripes - 1)]).map_err(|_| crate::Error::Random)?;
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for block in out[..n * (stripes - 1)].chunks(n) {
        xor_into(&mut acc, block);
        diffuse(&mut acc, hash);
    }
    let last = &mut out[n * (stripes - 1)..];
    last.copy_from_slice(key);
    xor_into(last, &acc);
    Ok(out)
}

/// Recovers a key of `key_len` bytes from its split form.
pub fn merge(split: &[u8], key_len: usize, stripes: u32, hash: Hash) -> Zeroizing<Vec<u8>> {
    let stripes = stripes as usize;
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    if stripes == 0 || split.len() < key_len * stripes {
        return acc;
    }
    for block in split[..key_len * (stripes - 1)].chunks(key_len) {
        xor_into(&mut acc, block);
        diffuse(&mut acc, hash);
    }
    xor_into(&mut acc, &split[key_len * (stripes - 1)..key_len * stripes]);
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_returns_the_key_and_any_damage_destroys_it() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64).collect();
            let mut s = split(&key, 4000, hash).unwrap();
            assert_eq!(s.len(), 64 * 4000);
            assert_eq!(&merge(&s, 64, 4000, hash)[..], &key[..]);
            s[1000] ^= 1;
            assert_ne!(&merge(&s, 64, 4000, hash)[..], &key[..]);
        }
    }
}
