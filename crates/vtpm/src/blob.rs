//! State blobs on the control channel (`CMD_GET_STATEBLOB`/`CMD_SET_STATEBLOB`),
//! sealed under the vTPM's migration key: AES-256-GCM with a fresh random nonce, the
//! blob's kind and format in the associated data. Without a migration key the vTPM
//! neither hands out nor takes state blobs: they hold every secret of the TPM (seeds,
//! keys, NV), and whoever reaches the control channel is not thereby trusted with them.
//!
//! Layout: `OCVMBLOB` (8) ‖ format 1 (u16 BE) ‖ kind (u8) ‖ reserved 0 (u8) ‖ nonce
//! (12) ‖ ciphertext ‖ tag (16).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use libtpms::StateKind;
use zeroize::Zeroizing;

/// Magic of a sealed state blob.
pub const MAGIC: [u8; 8] = *b"OCVMBLOB";
/// Format written by this build.
pub const FORMAT: u16 = 1;
const HEADER: usize = 8 + 2 + 1 + 1;
const TAG_LEN: usize = 16;

/// A sealed blob that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not a sealed blob of this format, or of another kind.
    #[error("not a sealed vTPM state blob of this kind and format")]
    Format,
    /// The blob does not authenticate under this migration key.
    #[error("the state blob does not authenticate under the migration key")]
    Authentication,
    /// The crypto backend failed.
    #[error("sealing failed")]
    Crypto,
}

/// The key state blobs are sealed under (32 bytes, AES-256-GCM).
pub struct MigrationKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigrationKey(..)")
    }
}

fn kind_code(kind: StateKind) -> u8 {
    match kind {
        StateKind::Permanent => 1,
        StateKind::Volatile => 2,
        StateKind::SaveState => 3,
    }
}

fn header(kind: StateKind) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT.to_be_bytes());
    h[10] = kind_code(kind);
    h
}

impl MigrationKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Reads a key file: 32 raw bytes or 64 hex digits (whitespace around them is
    /// ignored).
    pub fn parse(file: &[u8]) -> Option<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        if file.len() == 32 {
            k.copy_from_slice(file);
            return Some(Self(k));
        }
        let text = std::str::from_utf8(file).ok()?.trim();
        hex::decode_to_slice(text, k.as_mut_slice()).ok()?;
        Some(Self(k))
    }

    fn key(&self) -> Result<LessSafeKey, BlobError> {
        UnboundKey::new(&AES_256_GCM, self.0.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| BlobError::Crypto)
    }

    /// Seals `plain` (a state blob of `kind`).
    pub fn seal(&self, kind: StateKind, plain: &[u8]) -> Result<Vec<u8>, BlobError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| BlobError::Crypto)?;
        let head = header(kind);
        let mut out = Vec::with_capacity(HEADER + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&head);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head),
                &mut body,
            )
            .map_err(|_| BlobError::Crypto)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed blob of `kind`.
    pub fn open(&self, kind: StateKind, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, BlobError> {
        let head = header(kind);
        if sealed.len() < HEADER + NONCE_LEN + TAG_LEN || sealed[..HEADER] != head {
            return Err(BlobError::Format);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[HEADER..HEADER + NONCE_LEN]);
        let mut body = Zeroizing::new(sealed[HEADER + NONCE_LEN..].to_vec());
        let n = self
            .key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head),
                body.as_mut_slice(),
            )
            .map_err(|_| BlobError::Authentication)?
            .len();
        body.truncate(n);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_only_unaltered_under_their_key_and_kind() {
        let k = MigrationKey::new([9; 32]);
        let plain = b"seeds and NV".to_vec();
        let s = k.seal(StateKind::Permanent, &plain).unwrap();
        assert!(!s.windows(plain.len()).any(|w| w == plain.as_slice()));
        assert_eq!(
            k.open(StateKind::Permanent, &s).unwrap().as_slice(),
            plain.as_slice()
        );
        // Two seals differ (fresh nonce).
        assert_ne!(s, k.seal(StateKind::Permanent, &plain).unwrap());
        for i in 0..s.len() {
            let mut bad = s.clone();
            bad[i] ^= 1;
            assert!(k.open(StateKind::Permanent, &bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            k.open(StateKind::Volatile, &s),
            Err(BlobError::Format)
        ));
        assert!(matches!(
            MigrationKey::new([8; 32]).open(StateKind::Permanent, &s),
            Err(BlobError::Authentication)
        ));
        assert!(k.open(StateKind::Permanent, &plain).is_err());
        assert!(MigrationKey::parse(&[1; 32]).is_some());
        assert!(MigrationKey::parse(format!("{}\n", "ab".repeat(32)).as_bytes()).is_some());
        assert!(MigrationKey::parse(b"short").is_none());
    }
}
