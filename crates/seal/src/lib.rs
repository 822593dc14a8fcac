//! Secrets at rest: AES-256-GCM under a master key kept outside the database, and
//! files holding secrets written atomically with mode 0600.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Format version of a sealed blob (its first byte).
const SEAL_V1: u8 = 1;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The master key file or variable is unusable.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The blob is not ours, was tampered with, or belongs to another context.
    #[error("sealed secret does not open (wrong master key, tampered, or moved)")]
    Open,
    /// The random source or cipher failed.
    #[error("sealing failed")]
    Seal,
}

/// The 256-bit key that seals secrets. Never logged, zeroized on drop.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut())
            .map_err(|_| SealError::MasterKey("expected 64 hex digits".into()))?;
        Ok(MasterKey(key))
    }

    /// A 256-bit key for one purpose, derived from the master key: HMAC-SHA-256 of
    /// `opencvm derive` and `context` under it. Keys for different contexts are
    /// independent; the master key cannot be recovered from them.
    pub fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.as_ref());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
        ctx.update(b"opencvm derive\0");
        ctx.update(context.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Loads the key from `path`, creating it (mode 0600, random) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let io = |e: std::io::Error| SealError::MasterKey(format!("{}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&Zeroizing::new(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| SealError::Seal)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_secret_file(path, hex::encode(key.as_ref()).as_bytes()).map_err(io)?;
                Ok(MasterKey(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn key(&self) -> Result<LessSafeKey, SealError> {
        let k = UnboundKey::new(&AES_256_GCM, self.0.as_ref()).map_err(|_| SealError::Seal)?;
        Ok(LessSafeKey::new(k))
    }

    /// Seals `secret`, bound to `context` (authenticated, not encrypted).
    pub fn seal(&self, context: &str, secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut buf = secret.to_vec();
        self.key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a blob made by [`MasterKey::seal`] with the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Open)?;
        if version != SEAL_V1 || rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key()?
            .open_in_place(nonce, Aad::from(context.as_bytes()), buf.as_mut())
            .map_err(|_| SealError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename) with mode 0600.
pub fn write_secret_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/master.key");
        let k = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        let blob = k.seal("ctx", b"secret").unwrap();
        assert_eq!(again.open("ctx", &blob).unwrap().as_slice(), b"secret");
        assert!(k.open("other", &blob).is_err());
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(k.open("ctx", &bad).is_err());
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(format!("{k:?}"), "MasterKey(..)");
    }
}
