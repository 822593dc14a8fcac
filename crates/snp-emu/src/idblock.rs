//! The ID block and its authentication (SEV-SNP ABI, "ID_BLOCK" and
//! "ID_AUTH_INFO"): the guest owner's statement of the expected launch digest, family,
//! image, SVN and policy, signed by an ID key, whose public key may in turn be signed
//! by an author key. LAUNCH_FINISH checks them; reports then carry the digests of the
//! keys.
//!
//! Layouts (little-endian): ID_BLOCK is 96 bytes {LD[48], FAMILY_ID[16], IMAGE_ID[16],
//! VERSION u32 = 1, GUEST_SVN u32, POLICY u64}. ID_AUTH_INFO is 4096 bytes:
//! ID_KEY_ALGO u32 @0x000 and AUTH_KEY_ALGO u32 @0x004 (1 = ECDSA P-384 with
//! SHA-384), ID_BLOCK_SIG @0x040 (0x200), ID_KEY @0x240 (0x404), ID_KEY_SIG @0x680
//! (0x200), AUTHOR_KEY @0x880 (0x404); everything else reserved (zero). A signature is
//! R and S as 72-byte little-endian integers; a public key is CURVE u32 (2 = P-384)
//! then QX and QY as 72-byte little-endian integers.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
};

/// Size of an ID block.
pub const ID_BLOCK_LEN: usize = 96;
/// Size of ID_AUTH_INFO.
pub const ID_AUTH_LEN: usize = 0x1000;
/// Size of a public key structure.
pub const PUBKEY_LEN: usize = 0x404;
const SIG_LEN: usize = 0x200;
const ID_BLOCK_SIG: usize = 0x040;
const ID_KEY: usize = 0x240;
const ID_KEY_SIG: usize = 0x680;
const AUTHOR_KEY: usize = 0x880;
const ALGO_ECDSA_P384_SHA384: u32 = 1;
const CURVE_P384: u32 = 2;

/// Why an ID block or its authentication is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Wrong length.
    #[error("{what} must be {want} bytes, got {got}")]
    Length {
        /// Which structure.
        what: &'static str,
        /// Expected length.
        want: usize,
        /// Actual length.
        got: usize,
    },
    /// An unsupported algorithm, curve or version.
    #[error("{field} {value} is not supported")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// A reserved area is not zero.
    #[error("reserved bytes at {0:#x} are not zero")]
    Reserved(usize),
    /// A signature does not verify.
    #[error("{0} signature does not verify")]
    BadSignature(&'static str),
    /// A key is not a valid P-384 point, or signing failed.
    #[error("invalid key: {0}")]
    Key(&'static str),
}

/// An ID block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdBlock {
    /// The expected launch digest.
    pub ld: [u8; 48],
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// The guest policy the launch must use.
    pub policy: u64,
}

impl IdBlock {
    /// The 96-byte encoding (VERSION = 1).
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_LEN] {
        let mut b = [0u8; ID_BLOCK_LEN];
        b[0..48].copy_from_slice(&self.ld);
        b[48..64].copy_from_slice(&self.family_id);
        b[64..80].copy_from_slice(&self.image_id);
        b[80..84].copy_from_slice(&1u32.to_le_bytes());
        b[84..88].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[88..96].copy_from_slice(&self.policy.to_le_bytes());
        b
    }

    /// Parses the 96-byte encoding.
    pub fn parse(b: &[u8]) -> Result<Self, IdError> {
        let b: &[u8; ID_BLOCK_LEN] = b.try_into().map_err(|_| IdError::Length {
            what: "ID block",
            want: ID_BLOCK_LEN,
            got: b.len(),
        })?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(80);
        if version != 1 {
            return Err(IdError::Unsupported {
                field: "ID block VERSION",
                value: version,
            });
        }
        let mut out = IdBlock {
            ld: [0; 48],
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: u32_at(84),
            policy: 0,
        };
        out.ld.copy_from_slice(&b[0..48]);
        out.family_id.copy_from_slice(&b[48..64]);
        out.image_id.copy_from_slice(&b[64..80]);
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[88..96]);
        out.policy = u64::from_le_bytes(p);
        Ok(out)
    }
}

/// The PUBKEY structure of a P-384 key pair.
fn pubkey_struct(key: &EcdsaKeyPair) -> Result<[u8; PUBKEY_LEN], IdError> {
    let point = key.public_key().as_ref();
    if point.len() != 97 || point[0] != 0x04 {
        return Err(IdError::Key("not an uncompressed P-384 point"));
    }
    let mut out = [0u8; PUBKEY_LEN];
    out[0..4].copy_from_slice(&CURVE_P384.to_le_bytes());
    for i in 0..48 {
        out[4 + i] = point[48 - i];
        out[4 + 72 + i] = point[96 - i];
    }
    Ok(out)
}

/// The uncompressed SEC1 point of a PUBKEY structure.
fn point_of(pubkey: &[u8]) -> Result<[u8; 97], IdError> {
    let curve = u32::from_le_bytes([pubkey[0], pubkey[1], pubkey[2], pubkey[3]]);
    if curve != CURVE_P384 {
        return Err(IdError::Unsupported {
            field: "key CURVE",
            value: curve,
        });
    }
    if pubkey[4 + 48..4 + 72]
        .iter()
        .chain(&pubkey[4 + 72 + 48..4 + 144])
        .any(|&x| x != 0)
    {
        return Err(IdError::Key("coordinate wider than 48 bytes"));
    }
    let mut p = [0u8; 97];
    p[0] = 0x04;
    for i in 0..48 {
        p[48 - i] = pubkey[4 + i];
        p[96 - i] = pubkey[4 + 72 + i];
    }
    Ok(p)
}

/// ECDSA P-384/SHA-384 over `msg`, in the firmware's signature format (R and S as
/// 72-byte little-endian integers, then reserved zeros), as in reports and ID_AUTH.
pub(crate) fn sign(key: &EcdsaKeyPair, msg: &[u8]) -> Result<[u8; SIG_LEN], IdError> {
    let sig = key
        .sign(&SystemRandom::new(), msg)
        .map_err(|_| IdError::Key("signing failed"))?;
    let rs = sig.as_ref();
    if rs.len() != 96 {
        return Err(IdError::Key("unexpected signature size"));
    }
    let mut out = [0u8; SIG_LEN];
    for i in 0..48 {
        out[i] = rs[47 - i];
        out[72 + i] = rs[95 - i];
    }
    Ok(out)
}

fn verify(pubkey: &[u8], sig: &[u8], msg: &[u8], what: &'static str) -> Result<(), IdError> {
    let point = point_of(pubkey)?;
    if sig[48..72].iter().chain(&sig[72 + 48..]).any(|&x| x != 0) {
        return Err(IdError::BadSignature(what));
    }
    let mut rs = [0u8; 96];
    for i in 0..48 {
        rs[47 - i] = sig[i];
        rs[95 - i] = sig[72 + i];
    }
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &point)
        .verify(msg, &rs)
        .map_err(|_| IdError::BadSignature(what))
}

fn sha384(data: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, data).as_ref());
    out
}

/// ID_AUTH_INFO.
#[derive(Clone, PartialEq, Eq)]
pub struct IdAuth {
    bytes: Box<[u8; ID_AUTH_LEN]>,
}

impl std::fmt::Debug for IdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdAuth")
            .field("id_key_digest", &hex::encode(self.id_key_digest()))
            .field("author_key_en", &self.author_key_en())
            .finish()
    }
}

impl IdAuth {
    /// Signs `block` with `id_key`, and the ID key with `author_key` if given.
    pub fn sign(
        block: &IdBlock,
        id_key: &EcdsaKeyPair,
        author_key: Option<&EcdsaKeyPair>,
    ) -> Result<Self, IdError> {
        let mut b = Box::new([0u8; ID_AUTH_LEN]);
        b[0..4].copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        b[ID_BLOCK_SIG..ID_BLOCK_SIG + SIG_LEN].copy_from_slice(&sign(id_key, &block.to_bytes())?);
        let id_pub = pubkey_struct(id_key)?;
        b[ID_KEY..ID_KEY + PUBKEY_LEN].copy_from_slice(&id_pub);
        if let Some(author) = author_key {
            b[4..8].copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
            b[ID_KEY_SIG..ID_KEY_SIG + SIG_LEN].copy_from_slice(&sign(author, &id_pub)?);
            b[AUTHOR_KEY..AUTHOR_KEY + PUBKEY_LEN].copy_from_slice(&pubkey_struct(author)?);
        }
        Ok(IdAuth { bytes: b })
    }

    /// Parses ID_AUTH_INFO, checking algorithms and reserved areas (not signatures).
    pub fn parse(data: &[u8]) -> Result<Self, IdError> {
        let bytes: Box<[u8; ID_AUTH_LEN]> =
            Box::new(data.try_into().map_err(|_| IdError::Length {
                what: "ID_AUTH_INFO",
                want: ID_AUTH_LEN,
                got: data.len(),
            })?);
        let a = IdAuth { bytes };
        let id_algo = a.u32_at(0);
        if id_algo != ALGO_ECDSA_P384_SHA384 {
            return Err(IdError::Unsupported {
                field: "ID_KEY_ALGO",
                value: id_algo,
            });
        }
        let auth_algo = a.u32_at(4);
        if auth_algo > ALGO_ECDSA_P384_SHA384 {
            return Err(IdError::Unsupported {
                field: "AUTH_KEY_ALGO",
                value: auth_algo,
            });
        }
        let reserved = [
            (8, ID_BLOCK_SIG),
            (ID_BLOCK_SIG + 144, ID_BLOCK_SIG + SIG_LEN),
            (ID_KEY + 4 + 144, ID_KEY + PUBKEY_LEN),
            (ID_KEY + PUBKEY_LEN, ID_KEY_SIG),
            (ID_KEY_SIG + 144, ID_KEY_SIG + SIG_LEN),
            (AUTHOR_KEY + 4 + 144, AUTHOR_KEY + PUBKEY_LEN),
            (AUTHOR_KEY + PUBKEY_LEN, ID_AUTH_LEN),
        ];
        for (start, end) in reserved {
            if let Some(pos) = a.bytes[start..end].iter().position(|&x| x != 0) {
                return Err(IdError::Reserved(start + pos));
            }
        }
        Ok(a)
    }

    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[o],
            self.bytes[o + 1],
            self.bytes[o + 2],
            self.bytes[o + 3],
        ])
    }

    /// The 4096-byte encoding.
    pub fn as_bytes(&self) -> &[u8; ID_AUTH_LEN] {
        &self.bytes
    }
    /// Whether an author key signed the ID key.
    pub fn author_key_en(&self) -> bool {
        self.u32_at(4) == ALGO_ECDSA_P384_SHA384
    }
    /// SHA-384 of the ID key structure, as reports carry it.
    pub fn id_key_digest(&self) -> [u8; 48] {
        sha384(&self.bytes[ID_KEY..ID_KEY + PUBKEY_LEN])
    }
    /// SHA-384 of the author key structure, or zero without one.
    pub fn author_key_digest(&self) -> [u8; 48] {
        if self.author_key_en() {
            sha384(&self.bytes[AUTHOR_KEY..AUTHOR_KEY + PUBKEY_LEN])
        } else {
            [0; 48]
        }
    }

    /// Checks the ID block's signature by the ID key and, with an author key, the ID
    /// key's signature by the author key.
    pub fn verify(&self, block: &IdBlock) -> Result<(), IdError> {
        let b = &self.bytes;
        verify(
            &b[ID_KEY..ID_KEY + PUBKEY_LEN],
            &b[ID_BLOCK_SIG..ID_BLOCK_SIG + SIG_LEN],
            &block.to_bytes(),
            "ID block",
        )?;
        if self.author_key_en() {
            verify(
                &b[AUTHOR_KEY..AUTHOR_KEY + PUBKEY_LEN],
                &b[ID_KEY_SIG..ID_KEY_SIG + SIG_LEN],
                &b[ID_KEY..ID_KEY + PUBKEY_LEN],
                "ID key (by the author key)",
            )?;
        }
        Ok(())
    }
}

/// Parses `data` as an ID block and as ID_AUTH_INFO and verifies one against the
/// other, ignoring the results: the body of the `idblock` fuzz target.
pub fn fuzz_parse(data: &[u8]) {
    let block = IdBlock::parse(data.get(..ID_BLOCK_LEN).unwrap_or(data));
    let auth = IdAuth::parse(data.get(ID_BLOCK_LEN..).unwrap_or_default());
    if let (Ok(block), Ok(auth)) = (block, auth) {
        let _ = auth.verify(&block);
        let _ = (auth.id_key_digest(), auth.author_key_digest());
    }
}
