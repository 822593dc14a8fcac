//! The key protector: the datastore key wrapped by a key-encryption key (KEK), kept in
//! the VMGS as its plaintext `KEY_PROTECTOR` file, so the file carries what unlocks it
//! and only the KEK's holder can use it. The KEK comes from the key vault's secure key
//! release after attestation (crate `key-release`, `cvm vtpm run --key-release`) or a
//! file; this module takes it as given.
//!
//! Layout: OpenVMM's 2060 bytes (two 512-byte DEK entries, two GSP entries of a u32
//! length and 512 bytes, the active entry's index as a u32). A DEK entry here holds the
//! datastore key wrapped with AES-256 key wrap with padding (RFC 5649; 40 bytes) under
//! the KEK, zero-padded; an all-zero entry is empty. The GSP entries are unused (zero).
//!
//! **Each unlock rotates the datastore key**, crash-safely: the new key is wrapped into
//! the entry not in use (a commit), the VMGS is rekeyed to it (two commits), and the
//! entries are switched with the old one cleared (a commit). A crash anywhere leaves a
//! file one of the two entries opens, and the next unlock tries both.

use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use vmgs_format::FileId;
use zeroize::Zeroizing;

use crate::{DatastoreKey, OpenOptions, Opened, Storage, Vmgs, VmgsError};

/// Bytes of the key protector file.
pub const LEN: usize = 2060;
const DEK: usize = 512;
const ACTIVE: usize = 2056;
/// Bytes of a wrapped 32-byte key (RFC 5649).
const WRAPPED: usize = 40;

/// A 32-byte AES-256 key-encryption key.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// The KEK `bytes`.
    pub fn new(bytes: [u8; 32]) -> Self {
        Kek(Zeroizing::new(bytes))
    }

    /// Reads a key file: exactly 32 bytes.
    pub fn from_file(path: &std::path::Path) -> Result<Self, VmgsError> {
        Ok(Kek(crate::read_key_file(path, "a key-encryption key")?))
    }

    fn wrap(&self, key: &DatastoreKey) -> Result<[u8; WRAPPED], VmgsError> {
        let kek = AesKek::new(&AES_256, &self.0[..]).map_err(|_| VmgsError::Crypto("kek"))?;
        let mut out = [0u8; WRAPPED];
        let n = kek
            .wrap_with_padding(key.bytes(), &mut out)
            .map_err(|_| VmgsError::Crypto("key wrap"))?
            .len();
        if n != WRAPPED {
            return Err(VmgsError::Crypto("key wrap length"));
        }
        Ok(out)
    }

    /// The datastore key in `wrapped`, if this KEK wrapped it.
    fn unwrap(&self, wrapped: &[u8; WRAPPED]) -> Option<DatastoreKey> {
        let kek = AesKek::new(&AES_256, &self.0[..]).ok()?;
        let mut out = Zeroizing::new([0u8; WRAPPED]);
        let n = kek.unwrap_with_padding(wrapped, &mut out[..]).ok()?.len();
        let key: [u8; 32] = out.get(..n)?.try_into().ok()?;
        Some(DatastoreKey::new(key))
    }
}

/// The parsed key protector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProtector {
    /// The two DEK entries.
    pub dek: [Option<[u8; WRAPPED]>; 2],
    /// The entry in use (0 or 1).
    pub active: usize,
}

impl KeyProtector {
    /// Parses the file: 2060 bytes, DEK entries holding a 40-byte wrap and zeros, GSP
    /// entries zero, the active index 0 or 1 naming a filled entry.
    pub fn parse(b: &[u8]) -> Result<Self, VmgsError> {
        let bad = |why: &str| VmgsError::KeyProtector(why.to_string());
        if b.len() != LEN {
            return Err(bad(&format!("{} bytes, not {LEN}", b.len())));
        }
        let mut dek = [None, None];
        for (i, d) in dek.iter_mut().enumerate() {
            let e = &b[i * DEK..(i + 1) * DEK];
            if e[WRAPPED..].iter().any(|&x| x != 0) {
                return Err(bad("a DEK entry longer than a wrapped 32-byte key"));
            }
            if e[..WRAPPED].iter().any(|&x| x != 0) {
                let mut w = [0u8; WRAPPED];
                w.copy_from_slice(&e[..WRAPPED]);
                *d = Some(w);
            }
        }
        if b[2 * DEK..ACTIVE].iter().any(|&x| x != 0) {
            return Err(bad("GSP entries are not supported"));
        }
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[ACTIVE..]);
        let active = match u32::from_le_bytes(a) {
            0 => 0,
            1 => 1,
            n => return Err(bad(&format!("active entry {n}"))),
        };
        if dek[active].is_none() {
            return Err(bad("the active entry is empty"));
        }
        Ok(KeyProtector { dek, active })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; LEN];
        for (i, d) in self.dek.iter().enumerate() {
            if let Some(w) = d {
                b[i * DEK..i * DEK + WRAPPED].copy_from_slice(w);
            }
        }
        b[ACTIVE..].copy_from_slice(&(self.active as u32).to_le_bytes());
        b
    }
}

impl<S: Storage> Vmgs<S> {
    /// Formats `storage` as an encrypted VMGS under a fresh datastore key, kept in the
    /// key protector wrapped by `kek`.
    pub fn format_protected(storage: S, kek: &Kek) -> Result<Self, VmgsError> {
        let key = DatastoreKey::generate()?;
        let mut v = Vmgs::format(storage, Some(&key))?;
        let kp = KeyProtector {
            dek: [Some(kek.wrap(&key)?), None],
            active: 0,
        };
        v.write_file(FileId::KEY_PROTECTOR, &kp.to_bytes(), true)?;
        Ok(v)
    }

    /// Opens a VMGS whose datastore key is in its key protector: unwraps it with `kek`
    /// (trying the active entry, then the other, after an interrupted rotation), opens
    /// the file with it, and rotates the datastore key before returning.
    pub fn open_protected(
        storage: S,
        kek: &Kek,
        opts: OpenOptions,
    ) -> Result<(Self, Opened), VmgsError> {
        let (mut v, opened) = Vmgs::open(storage, None, opts)?;
        if !v.is_encrypted() {
            return Err(VmgsError::NotEncrypted);
        }
        let kp = KeyProtector::parse(&v.read_file(FileId::KEY_PROTECTOR)?)?;
        let mut unlocked_with = None;
        for i in [kp.active, 1 - kp.active] {
            let Some(key) = kp.dek[i].as_ref().and_then(|w| kek.unwrap(w)) else {
                continue;
            };
            match v.unlock(&key) {
                Ok(()) => {
                    unlocked_with = Some(i);
                    break;
                }
                Err(VmgsError::WrongKey) => continue,
                Err(e) => return Err(e),
            }
        }
        let cur = unlocked_with.ok_or(VmgsError::WrongKey)?;
        v.rotate_protected(kp, cur, kek)?;
        Ok((v, opened))
    }

    /// The rotation: a fresh key into entry `1 - cur`, the VMGS rekeyed to it, then
    /// the entries switched and `cur` cleared.
    fn rotate_protected(
        &mut self,
        mut kp: KeyProtector,
        cur: usize,
        kek: &Kek,
    ) -> Result<(), VmgsError> {
        let next = DatastoreKey::generate()?;
        kp.dek[1 - cur] = Some(kek.wrap(&next)?);
        kp.active = cur;
        self.write_file(FileId::KEY_PROTECTOR, &kp.to_bytes(), true)?;
        self.rekey(&next)?;
        kp.active = 1 - cur;
        kp.dek[cur] = None;
        self.write_file(FileId::KEY_PROTECTOR, &kp.to_bytes(), true)
    }
}
