//! Tamper-evident audit logs, independent of where the entries are stored.
//!
//! Every entry carries a **link**: HMAC-SHA-256, under a key only the service holds
//! (derived from its master key, which never sits beside the data), of the previous
//! entry's link, the entry's sequence number and its fields. Whoever can write the
//! database but not read the master key cannot change, insert, reorder or delete an
//! entry without the chain breaking at that entry, and cannot forge a replacement
//! chain ([`verify`] names the first entry that does not fit).
//!
//! **Checkpoints** sign `(seq, link, time)` with an ECDSA P-256 key derived from the
//! same secret: their public key ([`CheckpointKey::public_key`]) lets anyone check
//! them, so a checkpoint kept elsewhere (by an auditor, a relying party) later proves
//! that the log still holds everything up to it. What no local scheme can prove is that
//! the newest entries were not cut off together with the checkpoints after them (a
//! rollback of the whole file): that needs a checkpoint kept outside, which
//! [`verify`] takes as `expect`.

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

#[cfg(feature = "sql")]
pub mod table;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The link before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The checkpoint key could not be derived (cannot happen for a 32-byte secret
    /// in practice).
    #[error("deriving the checkpoint key failed")]
    Key,
    /// Signing failed.
    #[error("signing a checkpoint failed")]
    Sign,
}

/// Both keys of a log, derived from one 32-byte secret (which the service derives
/// from its master key).
#[derive(Debug)]
pub struct Keys {
    /// Links entries.
    pub chain: ChainKey,
    /// Signs checkpoints.
    pub checkpoint: CheckpointKey,
}

impl Keys {
    /// Both keys from `secret`.
    pub fn derive(secret: &[u8; 32]) -> Result<Self, AuditError> {
        Ok(Keys {
            chain: ChainKey::new(secret),
            checkpoint: CheckpointKey::derive(secret)?,
        })
    }
}

/// The key that links entries, derived by the service from its master key.
pub struct ChainKey(hmac::Key);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// A chain key from a 32-byte secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        ChainKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The link of an entry: over the previous link, the sequence number and each
    /// field (absent and empty fields differ).
    pub fn link(&self, prev: &[u8; 32], seq: i64, fields: &[Option<&[u8]>]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"opencvm audit link v1\0");
        ctx.update(prev);
        ctx.update(&seq.to_be_bytes());
        for f in fields {
            match f {
                None => ctx.update(&[0]),
                Some(b) => {
                    ctx.update(&[1]);
                    ctx.update(&u64::try_from(b.len()).unwrap_or(u64::MAX).to_be_bytes());
                    ctx.update(b);
                }
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// The key that signs checkpoints (ECDSA P-256), derived from a 32-byte secret so the
/// service can always recreate it.
pub struct CheckpointKey(EcdsaKeyPair);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", hex::encode(self.public_key()))
    }
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

impl CheckpointKey {
    /// Derives the key: the first HMAC-SHA-256(secret, label ‖ counter) that is a
    /// valid P-256 scalar.
    pub fn derive(secret: &[u8; 32]) -> Result<Self, AuditError> {
        for counter in 0u32..16 {
            let scalar = hmac256(
                secret,
                &[b"opencvm audit checkpoint key", &counter.to_be_bytes()],
            );
            // RFC 5915 ECPrivateKey { version 1, privateKey, [0] prime256v1 }.
            let mut der = Zeroizing::new(vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20]);
            der.extend_from_slice(&scalar[..]);
            der.extend_from_slice(&[
                0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]);
            if let Ok(k) =
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            {
                return Ok(CheckpointKey(k));
            }
        }
        Err(AuditError::Key)
    }

    /// The public key (uncompressed SEC1 point), for anyone who checks checkpoints.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    /// Signs a checkpoint of the entry `seq` whose link is `link`, at time `ts`.
    pub fn sign(&self, seq: i64, link: &[u8; 32], ts: i64) -> Result<Checkpoint, AuditError> {
        let sig = self
            .0
            .sign(
                &aws_lc_rs::rand::SystemRandom::new(),
                &checkpoint_message(seq, link, ts),
            )
            .map_err(|_| AuditError::Sign)?;
        Ok(Checkpoint {
            seq,
            link: hex::encode(link),
            ts,
            signature: hex::encode(sig.as_ref()),
        })
    }
}

fn checkpoint_message(seq: i64, link: &[u8; 32], ts: i64) -> Vec<u8> {
    let mut m = b"opencvm audit checkpoint v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(link);
    m.extend_from_slice(&ts.to_be_bytes());
    m
}

/// A signed statement that the log's entry `seq` has link `link` (hex), made at `ts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The entry's sequence number.
    pub seq: i64,
    /// Its link, hex.
    pub link: String,
    /// When the checkpoint was made (Unix seconds).
    pub ts: i64,
    /// ECDSA P-256 SHA-256 signature (r ‖ s), hex.
    pub signature: String,
}

impl Checkpoint {
    /// Whether the signature verifies under `public_key`.
    pub fn verifies(&self, public_key: &[u8]) -> bool {
        let (Ok(link), Ok(sig)) = (hex::decode(&self.link), hex::decode(&self.signature)) else {
            return false;
        };
        let Ok(link) = <[u8; 32]>::try_from(link) else {
            return false;
        };
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
            .verify(&checkpoint_message(self.seq, &link, self.ts), &sig)
            .is_ok()
    }
}

/// One stored entry, as read back for verification.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    /// Its sequence number.
    pub seq: i64,
    /// Its fields, in the order they were linked.
    pub fields: Vec<Option<Vec<u8>>>,
    /// The previous entry's link, as stored.
    pub prev: Vec<u8>,
    /// Its link, as stored.
    pub link: Vec<u8>,
}

/// Where the log stops being what was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {problem}")]
pub struct Tampered {
    /// The first entry that does not fit (for a missing checkpointed entry, the
    /// checkpoint's sequence number).
    pub seq: i64,
    /// What is wrong.
    pub problem: String,
}

/// What a verification found intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intact {
    /// Entries checked.
    pub entries: usize,
    /// The last entry's sequence number and link, if any.
    pub head: Option<(i64, [u8; 32])>,
    /// Checkpoints checked (stored and expected).
    pub checkpoints: usize,
}

/// Verifies `entries` (oldest first) as one chain from [`GENESIS`], every stored
/// checkpoint and every `expect`ed one (kept outside the log) against them.
pub fn verify(
    key: &ChainKey,
    public_key: &[u8],
    entries: impl IntoIterator<Item = StoredEntry>,
    checkpoints: &[Checkpoint],
    expect: &[Checkpoint],
) -> Result<Intact, Tampered> {
    let mut prev = GENESIS;
    let mut last_seq = i64::MIN;
    let mut count = 0usize;
    let mut links: std::collections::HashMap<i64, [u8; 32]> = std::collections::HashMap::new();
    for e in entries {
        if e.seq <= last_seq {
            return Err(Tampered {
                seq: e.seq,
                problem: format!("out of order after entry {last_seq}"),
            });
        }
        if e.prev.as_slice() != prev.as_slice() {
            return Err(Tampered {
                seq: e.seq,
                problem: if count == 0 {
                    "the first entry does not start the chain (entries before it were removed)"
                        .into()
                } else {
                    format!(
                        "its link to entry {last_seq} does not match: an entry in between was removed, or entry {last_seq} was rewritten"
                    )
                },
            });
        }
        let fields: Vec<Option<&[u8]>> = e.fields.iter().map(|f| f.as_deref()).collect();
        let link = key.link(&prev, e.seq, &fields);
        if e.link.as_slice() != link.as_slice() {
            return Err(Tampered {
                seq: e.seq,
                problem: "its contents or sequence number were changed (the link does not verify)"
                    .into(),
            });
        }
        links.insert(e.seq, link);
        prev = link;
        last_seq = e.seq;
        count += 1;
    }
    for (origin, cps) in [("stored", checkpoints), ("expected", expect)] {
        for cp in cps {
            if !cp.verifies(public_key) {
                return Err(Tampered {
                    seq: cp.seq,
                    problem: format!(
                        "the {origin} checkpoint of this entry is not signed by the log's key"
                    ),
                });
            }
            match links.get(&cp.seq) {
                Some(l) if hex::encode(l) == cp.link => {}
                Some(_) => {
                    return Err(Tampered {
                        seq: cp.seq,
                        problem: format!("differs from its {origin} checkpoint"),
                    });
                }
                None => {
                    return Err(Tampered {
                        seq: cp.seq,
                        problem: format!(
                            "is missing: the log was cut off before its {origin} checkpoint"
                        ),
                    });
                }
            }
        }
    }
    Ok(Intact {
        entries: count,
        head: (count > 0).then_some((last_seq, prev)),
        checkpoints: checkpoints.len() + expect.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &ChainKey, n: i64) -> Vec<StoredEntry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let f = vec![Some(format!("op{seq}").into_bytes()), None];
                let refs: Vec<Option<&[u8]>> = f.iter().map(|x| x.as_deref()).collect();
                let link = key.link(&prev, seq, &refs);
                let e = StoredEntry {
                    seq,
                    fields: f,
                    prev: prev.to_vec(),
                    link: link.to_vec(),
                };
                prev = link;
                e
            })
            .collect()
    }

    #[test]
    fn every_rewrite_is_found_at_its_entry() {
        let key = ChainKey::new(&[7; 32]);
        let cpk = CheckpointKey::derive(&[7; 32]).unwrap();
        let pk = cpk.public_key();
        let log = chain(&key, 10);
        let cp = cpk
            .sign(
                8,
                &<[u8; 32]>::try_from(log[7].link.as_slice()).unwrap(),
                100,
            )
            .unwrap();
        let ok = verify(&key, &pk, log.clone(), std::slice::from_ref(&cp), &[]).unwrap();
        assert_eq!(ok.entries, 10);

        // A field changed.
        let mut l = log.clone();
        l[4].fields[0] = Some(b"forged".to_vec());
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 5);
        // NULL and empty differ.
        let mut l = log.clone();
        l[4].fields[1] = Some(Vec::new());
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 5);
        // An entry removed from the middle, or from the start.
        let mut l = log.clone();
        l.remove(3);
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 5);
        let mut l = log.clone();
        l.remove(0);
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 2);
        // An entry rewritten with a re-computed link under another key.
        let other = ChainKey::new(&[8; 32]);
        let mut l = log.clone();
        l[2].link = other
            .link(
                &<[u8; 32]>::try_from(l[2].prev.as_slice()).unwrap(),
                3,
                &[Some(b"x"), None],
            )
            .to_vec();
        l[2].fields[0] = Some(b"x".to_vec());
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 3);
        // Reordered, renumbered.
        let mut l = log.clone();
        l.swap(5, 6);
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 7);
        let mut l = log.clone();
        l[6].seq = 70;
        assert_eq!(verify(&key, &pk, l, &[], &[]).unwrap_err().seq, 70);
        // Cut off before a checkpoint, a checkpoint that disagrees, a forged checkpoint.
        let cut: Vec<_> = log.iter().take(6).cloned().collect();
        let e = verify(&key, &pk, cut.clone(), &[], std::slice::from_ref(&cp)).unwrap_err();
        assert_eq!(e.seq, 8);
        assert!(e.problem.contains("cut off"), "{e}");
        assert!(
            verify(&key, &pk, cut, &[], &[]).is_ok(),
            "a bare truncation needs a checkpoint"
        );
        let mut wrong = cp.clone();
        wrong.seq = 9;
        assert_eq!(
            verify(&key, &pk, log.clone(), &[wrong], &[])
                .unwrap_err()
                .seq,
            9
        );
        let forged = CheckpointKey::derive(&[9; 32])
            .unwrap()
            .sign(
                8,
                &<[u8; 32]>::try_from(log[7].link.as_slice()).unwrap(),
                100,
            )
            .unwrap();
        let e = verify(&key, &pk, log, &[forged], &[]).unwrap_err();
        assert!(e.problem.contains("not signed"), "{e}");
    }

    #[test]
    fn the_checkpoint_key_is_reproducible_from_its_secret() {
        let a = CheckpointKey::derive(&[1; 32]).unwrap();
        let b = CheckpointKey::derive(&[1; 32]).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(
            a.public_key(),
            CheckpointKey::derive(&[2; 32]).unwrap().public_key()
        );
    }
}
