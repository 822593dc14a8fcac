//! What the host side needs to answer a command itself on behalf of the TPM when the
//! command is authorized with sessions: the state of the guest's unsalted, unbound
//! HMAC sessions (their `nonceTPM`, hash and symmetric algorithm, as seen on the wire)
//! and the session cryptography of TPM 2.0 Part 1 §19–21 (cpHash/rpHash, session
//! HMACs, KDFa, AES-CFB parameter encryption).
//!
//! Such a session's key is empty (no salt, no bind entity), so its HMACs and
//! parameter-encryption keys depend only on the nonces, which travel in the clear,
//! and the authorized entity's authValue. Salted or bound sessions are recorded as
//! unusable here: their key is known only to libtpms.

use std::collections::HashMap;

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{digest, hmac};

use crate::tpm::{RS_PW, cc, take_tpm2b};

/// `TPM_RH_NULL`.
const RH_NULL: u32 = 0x4000_0007;
/// `TPM_ALG_AES`, `TPM_ALG_CFB`, `TPM_ALG_NULL`.
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ALG_NULL: u16 = 0x0010;
/// Session attribute bits.
pub const ATTR_CONTINUE: u8 = 0x01;
/// `decrypt`: the first command parameter is encrypted.
pub const ATTR_DECRYPT: u8 = 0x20;
/// `encrypt`: the first response parameter is encrypted.
pub const ATTR_ENCRYPT: u8 = 0x40;
/// `audit`.
pub const ATTR_AUDIT: u8 = 0x80;

/// The smallest `nonceCaller` a session accepts (TPM 2.0 Part 1: "at least 16
/// octets").
pub const MIN_NONCE: usize = 16;

/// A session hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionHash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

impl SessionHash {
    fn from_alg(alg: u16) -> Option<Self> {
        match alg {
            0x000B => Some(Self::Sha256),
            0x000C => Some(Self::Sha384),
            _ => None,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha384 => hmac::HMAC_SHA384,
        }
    }

    /// The digest size in bytes.
    pub fn size(self) -> usize {
        self.digest().output_len()
    }

    /// Whether `nonce` is a valid `nonceCaller` for a session with this hash (TPM 2.0
    /// Part 1, session nonces): at least [`MIN_NONCE`] bytes and no larger than the
    /// session hash's digest.
    pub fn nonce_ok(self, nonce: &[u8]) -> bool {
        (MIN_NONCE..=self.size()).contains(&nonce.len())
    }

    /// `H(parts...)`.
    pub fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        let mut c = digest::Context::new(self.digest());
        for p in parts {
            c.update(p);
        }
        c.finish().as_ref().to_vec()
    }

    /// `HMAC(key, parts...)`.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let k = hmac::Key::new(self.hmac(), key);
        let mut c = hmac::Context::with_key(&k);
        for p in parts {
            c.update(p);
        }
        c.sign().as_ref().to_vec()
    }

    /// KDFa of TPM 2.0 Part 1 §11.4.10.2 (SP 800-108 counter mode with HMAC).
    pub fn kdfa(self, key: &[u8], label: &[u8], u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
        let bytes = bits.div_ceil(8) as usize;
        let mut out = Vec::with_capacity(bytes + 64);
        let mut counter = 1u32;
        while out.len() < bytes {
            out.extend(self.mac(
                key,
                &[
                    &counter.to_be_bytes(),
                    label,
                    &[0],
                    u,
                    v,
                    &bits.to_be_bytes(),
                ],
            ));
            counter += 1;
        }
        out.truncate(bytes);
        out
    }
}

/// A guest session as seen on the wire.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session hash.
    pub hash: SessionHash,
    /// Whether its key is known (unsalted, unbound HMAC session).
    pub usable: bool,
    /// The `nonceTPM` of the last response.
    pub nonce_tpm: Vec<u8>,
    /// AES key bits for parameter encryption (CFB), if any.
    pub aes_bits: Option<u16>,
}

/// One session of a command's authorization area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSession {
    /// Its handle.
    pub handle: u32,
    /// `nonceCaller`.
    pub nonce: Vec<u8>,
    /// `sessionAttributes`.
    pub attrs: u8,
    /// The HMAC or password.
    pub hmac: Vec<u8>,
}

/// Parses an authorization area: `(sessions, bytes used)`.
fn parse_sessions(mut b: &[u8]) -> Option<Vec<CommandSession>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let handle = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        let (nonce, rest) = take_tpm2b(b.get(4..)?)?;
        let attrs = *rest.first()?;
        let (hmac, rest) = take_tpm2b(rest.get(1..)?)?;
        out.push(CommandSession {
            handle,
            nonce: nonce.to_vec(),
            attrs,
            hmac: hmac.to_vec(),
        });
        b = rest;
        if out.len() > 3 {
            return None;
        }
    }
    Some(out)
}

fn plausible_session(h: u32) -> bool {
    h == RS_PW || (h >> 24) == 0x02 || (h >> 24) == 0x03
}

/// Splits a command with sessions into (handles, sessions, parameters), finding the
/// number of handles (0–3) for which the authorization area parses exactly.
pub fn split_command(command: &[u8]) -> Option<(Vec<u32>, Vec<CommandSession>, &[u8])> {
    if command.get(..2)? != [0x80, 0x02] {
        return None;
    }
    (0..=3usize).find_map(|n| {
        let at = 10 + 4 * n;
        let size = u32::from_be_bytes(command.get(at..at + 4)?.try_into().ok()?) as usize;
        let area = command.get(at + 4..at + 4 + size)?;
        let sessions = parse_sessions(area)?;
        if sessions.is_empty() || !sessions.iter().all(|s| plausible_session(s.handle)) {
            return None;
        }
        let handles = (0..n)
            .map(|i| {
                let b = &command[10 + 4 * i..14 + 4 * i];
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            })
            .collect();
        Some((handles, sessions, command.get(at + 4 + size..)?))
    })
}

/// The `(nonceTPM, attrs)` of each session in a response with `count` sessions.
fn response_nonces(response: &[u8], count: usize) -> Option<Vec<(Vec<u8>, u8)>> {
    if response.get(..2)? != [0x80, 0x02] {
        return None;
    }
    (0..=1usize).find_map(|n| {
        let at = 10 + 4 * n;
        let size = u32::from_be_bytes(response.get(at..at + 4)?.try_into().ok()?) as usize;
        let mut b = response.get(at + 4 + size..)?;
        let mut out = Vec::new();
        for _ in 0..count {
            let (nonce, rest) = take_tpm2b(b)?;
            let attrs = *rest.first()?;
            let (_, rest) = take_tpm2b(rest.get(1..)?)?;
            out.push((nonce.to_vec(), attrs));
            b = rest;
        }
        b.is_empty().then_some(out)
    })
}

/// The guest's sessions, tracked from the commands and responses the vTPM relays.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<u32, Session>,
}

impl Sessions {
    /// The session `handle`, if tracked.
    pub fn get(&self, handle: u32) -> Option<&Session> {
        self.map.get(&handle)
    }

    /// Updates the table from a command the engine executed and its response.
    pub fn observe(&mut self, command: &[u8], response: &[u8]) {
        let (Some(code), Some(rc)) = (
            crate::engine::command_code(command),
            crate::engine::response_code(response),
        ) else {
            return;
        };
        // Nothing to track: the common case costs no parsing.
        if rc != 0 || (self.map.is_empty() && code != cc::START_AUTH_SESSION) {
            return;
        }
        match code {
            cc::START_AUTH_SESSION => {
                if let Some((handle, s)) = parse_start(command, response) {
                    self.map.insert(handle, s);
                }
            }
            cc::FLUSH_CONTEXT => {
                if let Some(b) = command.get(10..14) {
                    self.map
                        .remove(&u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            _ => {
                let Some((_, sessions, _)) = split_command(command) else {
                    return;
                };
                let Some(nonces) = response_nonces(response, sessions.len()) else {
                    return;
                };
                for (s, (nonce, _)) in sessions.iter().zip(nonces) {
                    if s.attrs & ATTR_CONTINUE == 0 {
                        self.map.remove(&s.handle);
                    } else if let Some(t) = self.map.get_mut(&s.handle) {
                        t.nonce_tpm = nonce;
                    }
                }
            }
        }
    }

    /// Forgets every session: the TPM was (re)initialised or started, which ends
    /// every loaded session (`_TPM_Init`; `TPM2_Startup` of any type). The
    /// context-saved sessions a TPM Restart or Resume keeps are forgotten too: they are
    /// then refused on the report index (`TPM_RC_AUTH_UNAVAILABLE`), never accepted
    /// with stale state.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets `handle` (a session the vTPM ended itself).
    pub fn forget(&mut self, handle: u32) {
        self.map.remove(&handle);
    }
}

/// `(handle, session)` from a successful `TPM2_StartAuthSession`.
fn parse_start(command: &[u8], response: &[u8]) -> Option<(u32, Session)> {
    let tpm_key = u32::from_be_bytes(command.get(10..14)?.try_into().ok()?);
    let bind = u32::from_be_bytes(command.get(14..18)?.try_into().ok()?);
    let (_nonce_caller, rest) = take_tpm2b(command.get(18..)?)?;
    let (_salt, rest) = take_tpm2b(rest)?;
    let session_type = *rest.first()?;
    let alg = u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]);
    let (aes_bits, rest) = if alg == ALG_NULL {
        (None, rest.get(3..)?)
    } else {
        let bits = u16::from_be_bytes([*rest.get(3)?, *rest.get(4)?]);
        let mode = u16::from_be_bytes([*rest.get(5)?, *rest.get(6)?]);
        (
            (alg == ALG_AES && mode == ALG_CFB).then_some(bits),
            rest.get(7..)?,
        )
    };
    let hash = SessionHash::from_alg(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]))?;
    let handle = u32::from_be_bytes(response.get(10..14)?.try_into().ok()?);
    let (nonce_tpm, _) = take_tpm2b(response.get(14..)?)?;
    Some((
        handle,
        Session {
            hash,
            usable: tpm_key == RH_NULL && bind == RH_NULL && session_type == 0x00,
            nonce_tpm: nonce_tpm.to_vec(),
            aes_bits: if alg == ALG_NULL { None } else { aes_bits },
        },
    ))
}

/// Encrypts `data` in place with AES-CFB under `key || iv` of KDFa(`hmac_key`,
/// "CFB", `nonce_newer`, `nonce_older`), as a session with the `encrypt` attribute
/// protects a response's first parameter.
pub fn cfb_encrypt(
    hash: SessionHash,
    aes_bits: u16,
    hmac_key: &[u8],
    nonce_newer: &[u8],
    nonce_older: &[u8],
    data: &mut [u8],
) -> Option<()> {
    let key_bytes = usize::from(aes_bits / 8);
    let material = hash.kdfa(
        hmac_key,
        b"CFB",
        nonce_newer,
        nonce_older,
        u32::from(aes_bits) + 128,
    );
    let (key, iv) = material.split_at(key_bytes);
    let alg = match aes_bits {
        128 => &AES_128,
        256 => &AES_256,
        _ => return None,
    };
    let k = EncryptingKey::cfb128(UnboundCipherKey::new(alg, key).ok()?).ok()?;
    let iv: [u8; 16] = iv.try_into().ok()?;
    k.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .ok()?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_counter_mode_and_split_command() {
        // Two HMAC blocks for 384 bits, the counter big-endian from 1.
        let k = SessionHash::Sha256.kdfa(b"key", b"CFB", b"u", b"v", 384);
        let b1 =
            SessionHash::Sha256.mac(b"key", &[&[0, 0, 0, 1], b"CFB\0uv", &384u32.to_be_bytes()]);
        assert_eq!(&k[..32], &b1[..]);
        assert_eq!(k.len(), 48);
        // NV_Read(owner, 0x01400001) with one password session.
        let cmd = crate::tpm::nv_read(0x4000_0001, 0x0140_0001, b"pw", 16, 32);
        let (handles, sessions, params) = split_command(&cmd).unwrap();
        assert_eq!(handles, [0x4000_0001, 0x0140_0001]);
        assert_eq!(sessions[0].handle, RS_PW);
        assert_eq!(sessions[0].hmac, b"pw");
        assert_eq!(params, [0, 16, 0, 32]);
    }

    #[test]
    fn nonce_caller_sizes_and_clearing_the_table() {
        let h = SessionHash::Sha256;
        assert!(!h.nonce_ok(&[]) && !h.nonce_ok(&[0; 15]) && !h.nonce_ok(&[0; 33]));
        assert!(h.nonce_ok(&[0; 16]) && h.nonce_ok(&[0; 32]));
        assert!(SessionHash::Sha384.nonce_ok(&[0; 48]));
        // A table holding a session forgets it when cleared.
        let start = crate::tpm::Command::new(cc::START_AUTH_SESSION, false)
            .u32(RH_NULL)
            .u32(RH_NULL)
            .tpm2b(&[1; 16])
            .u16(0)
            .bytes(&[0x00])
            .u16(ALG_NULL)
            .u16(0x000B)
            .finish();
        let mut response = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 16];
        response.extend_from_slice(&[2; 16]);
        let mut table = Sessions::default();
        table.observe(&start, &response);
        assert!(table.get(0x0200_0000).is_some_and(|s| s.usable));
        table.clear();
        assert!(table.is_empty());
    }
}
