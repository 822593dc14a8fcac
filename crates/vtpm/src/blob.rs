//! State blobs on the control channel (`CMD_GET_STATEBLOB`/`CMD_SET_STATEBLOB`),
//! sealed under the vTPM's migration key with the workspace's one sealing format
//! ([`seal`]: AES-256-GCM, a fresh random nonce per sealing), the blob's kind and this
//! format bound in the associated data. Without a migration key the vTPM neither hands
//! out nor takes state blobs: they hold every secret of the TPM (seeds, keys, NV), and
//! reaching the control channel does not entitle anyone to them.

use libtpms::StateKind;
use zeroize::Zeroizing;

/// A sealed blob that cannot be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not sealed under this key for this kind of state, or altered.
    #[error(
        "the state blob does not open under the migration key (tampered, another key, or another kind of state)"
    )]
    Open,
    /// The crypto backend failed.
    #[error("sealing the state blob failed")]
    Seal,
}

/// The key state blobs are sealed under (32 bytes).
#[derive(Debug)]
pub struct MigrationKey(seal::MasterKey);

/// The associated data of a sealed blob of `kind`.
fn context(kind: StateKind) -> String {
    format!("opencvm vTPM state blob v1: {}", kind.name())
}

impl MigrationKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(seal::MasterKey::from_bytes(bytes))
    }

    /// Reads a key file: 32 raw bytes or 64 hex digits (whitespace around them is
    /// ignored).
    pub fn parse(file: &[u8]) -> Option<Self> {
        if let Ok(raw) = <[u8; 32]>::try_from(file) {
            let raw = Zeroizing::new(raw);
            return Some(Self::new(*raw));
        }
        let text = std::str::from_utf8(file).ok()?;
        seal::MasterKey::from_hex(text).ok().map(Self)
    }

    /// Seals `plain` (a state blob of `kind`).
    pub fn seal(&self, kind: StateKind, plain: &[u8]) -> Result<Vec<u8>, BlobError> {
        self.0
            .seal(&context(kind), plain)
            .map_err(|_| BlobError::Seal)
    }

    /// Opens a sealed blob of `kind`.
    pub fn open(&self, kind: StateKind, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, BlobError> {
        self.0
            .open(&context(kind), sealed)
            .map_err(|_| BlobError::Open)
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
        assert!(k.open(StateKind::Volatile, &s).is_err());
        assert!(
            MigrationKey::new([8; 32])
                .open(StateKind::Permanent, &s)
                .is_err()
        );
        assert!(k.open(StateKind::Permanent, &plain).is_err());
        assert!(MigrationKey::parse(&[1; 32]).is_some());
        assert!(MigrationKey::parse(format!("{}\n", "ab".repeat(32)).as_bytes()).is_some());
        assert!(MigrationKey::parse(b"short").is_none());
    }
}
