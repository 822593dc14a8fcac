//! Short-lived, single-use nonces issued by `GET /nonce`.
//!
//! A nonce is self-authenticating: its issue time and 128 random bits, with an
//! HMAC-SHA-256 tag under the service's nonce key, over those and the provider
//! (tenant) it was issued for. Issuing one therefore stores nothing, so `GET /nonce`
//! (which anyone may call) cannot fill the service's memory, and a nonce issued for
//! one provider is unknown to every other. A nonce is remembered only once it is
//! *used*, i.e. when a token is issued for evidence bound to it, until it would have
//! expired; each provider has its own bounded set, so one tenant's traffic cannot
//! exhaust another's.
//!
//! Two homes for the key and the used set. A single service ([`NonceStore::new`])
//! keeps both in memory: a restart invalidates outstanding nonces (callers ask again),
//! so a nonce used before a restart cannot be used after it. Replicas on one database
//! ([`NonceStore::shared`]) share a key kept in that database and record used nonces
//! there ([`SharedNonces`]): a nonce issued by one replica is accepted by every other,
//! and used once across all of them.
//!
//! A service nonce has one shape, 54 base64url characters ([`looks_like_service_nonce`]):
//! evidence that carries a string of that shape where a nonce goes is held to it
//! whether or not the request names it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// The longest nonce string a request may carry.
pub const MAX_NONCE_LEN: usize = 128;

/// Issue time (8 bytes, big-endian seconds) ‖ random (16) ‖ tag (16).
const RAW_LEN: usize = 40;

/// How far in the future an issue time may lie (clock steps) before it is refused.
const FUTURE_SKEW_SECS: u64 = 5;

/// Why a nonce was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Never issued here (or issued before a restart).
    #[error("nonce was not issued by this service")]
    Unknown,
    /// Issued, but its lifetime is over.
    #[error("nonce expired")]
    Expired,
    /// Already used by an earlier attestation.
    #[error("nonce was already used")]
    Replayed,
    /// Too many nonces used within one lifetime.
    #[error("too many nonces in use; try again later")]
    Full,
    /// The shared used set could not be read or written.
    #[error("the nonce store is unavailable")]
    Unavailable,
}

impl NonceError {
    /// A stable code.
    pub fn code(self) -> &'static str {
        match self {
            NonceError::Unknown => "nonce_unknown",
            NonceError::Expired => "nonce_expired",
            NonceError::Replayed => "nonce_replayed",
            NonceError::Full => "nonce_capacity",
            NonceError::Unavailable => "nonce_store_unavailable",
        }
    }
}

/// Whether `s` has the shape of a nonce this service issues (base64url of 40 bytes).
/// A client's own freshness value of that exact shape is taken for one of ours.
pub fn looks_like_service_nonce(s: &str) -> bool {
    s.len() == 54
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What recording a nonce as used found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseOutcome {
    /// It was unused; now it is used.
    Fresh,
    /// It was used before.
    Replayed,
    /// The provider's set is full (nothing was recorded).
    Full,
}

/// The used nonces of every replica, in their shared database.
pub trait SharedNonces: Send + Sync {
    /// Whether `raw` was used for `provider`.
    fn nonce_used(&self, provider: &str, raw: &[u8]) -> Result<bool, crate::store::StoreError>;
    /// Records `raw` as used for `provider` until `expires` (Unix seconds), unless it
    /// was used already or the provider already has `capacity` unexpired ones at
    /// `now`; forgets the provider's expired ones.
    fn use_nonce(
        &self,
        provider: &str,
        raw: &[u8],
        expires: i64,
        now: i64,
        capacity: usize,
    ) -> Result<UseOutcome, crate::store::StoreError>;
}

/// Per provider: used nonces (their raw bytes) and when they expire (Unix seconds).
type UsedInMemory = HashMap<String, HashMap<[u8; RAW_LEN], u64>>;

enum Used {
    Memory(Mutex<UsedInMemory>),
    Shared(std::sync::Arc<dyn SharedNonces>),
}

/// Issues and checks nonces; remembers the used ones until they expire.
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    key: hmac::Key,
    used: Used,
}

impl std::fmt::Debug for NonceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl NonceStore {
    /// Nonces valid for `ttl`; at most `capacity` used ones remembered at once per
    /// provider.
    pub fn new(ttl: Duration, capacity: usize) -> Result<Self, NonceError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| NonceError::Unknown)?;
        Ok(NonceStore {
            ttl,
            capacity,
            key,
            used: Used::Memory(Mutex::new(HashMap::new())),
        })
    }

    /// Nonces of replicas sharing `key` (32 bytes, kept in their database) and the
    /// used set `used`.
    pub fn shared(
        ttl: Duration,
        capacity: usize,
        key: &[u8; 32],
        used: std::sync::Arc<dyn SharedNonces>,
    ) -> Self {
        NonceStore {
            ttl,
            capacity,
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            used: Used::Shared(used),
        }
    }

    /// How long a nonce lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn tag(&self, provider: &str, body: &[u8]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(body);
        ctx.update(provider.as_bytes());
        let t = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(t.as_ref().get(..16).unwrap_or(&[0; 16]));
        out
    }

    /// Issues a fresh nonce for `provider` (base64url, 54 characters). Stores nothing.
    pub fn issue(&self, provider: &str) -> Result<String, NonceError> {
        self.issue_at(provider, unix_now())
    }

    fn issue_at(&self, provider: &str, now: u64) -> Result<String, NonceError> {
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&now.to_be_bytes());
        aws_lc_rs::rand::fill(&mut raw[8..24]).map_err(|_| NonceError::Full)?;
        let tag = self.tag(provider, &raw[..24]);
        raw[24..].copy_from_slice(&tag);
        Ok(B64URL.encode(raw))
    }

    /// Checks that `nonce` was issued here, is unexpired and unused, without using it;
    /// returns its raw bytes and when it expires.
    fn check_at(
        &self,
        provider: &str,
        nonce: &str,
        now: u64,
    ) -> Result<([u8; RAW_LEN], u64), NonceError> {
        let bytes = B64URL
            .decode(nonce.as_bytes())
            .map_err(|_| NonceError::Unknown)?;
        let raw: [u8; RAW_LEN] = bytes.try_into().map_err(|_| NonceError::Unknown)?;
        let tag = self.tag(provider, &raw[..24]);
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag, &raw[24..])
            .map_err(|_| NonceError::Unknown)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let issued = u64::from_be_bytes(ts);
        if issued > now.saturating_add(FUTURE_SKEW_SECS) {
            return Err(NonceError::Unknown);
        }
        let expires = issued.saturating_add(self.ttl.as_secs());
        if now >= expires {
            return Err(NonceError::Expired);
        }
        let used = match &self.used {
            Used::Memory(m) => m
                .lock()
                .map_err(|_| NonceError::Unknown)?
                .get(provider)
                .is_some_and(|u| u.contains_key(&raw)),
            // The store may wait (for the database): off the async worker.
            Used::Shared(s) => {
                httpd::off_worker(|| s.nonce_used(provider, &raw)).map_err(unavailable)?
            }
        };
        if used {
            return Err(NonceError::Replayed);
        }
        Ok((raw, expires))
    }

    /// Checks `nonce` (issued here for `provider`, unexpired, unused) without using it.
    pub fn check(&self, provider: &str, nonce: &str) -> Result<(), NonceError> {
        self.check_at(provider, nonce, unix_now()).map(|_| ())
    }

    /// Uses `nonce`: it must pass `check`, and can never be used again.
    pub fn consume(&self, provider: &str, nonce: &str) -> Result<(), NonceError> {
        self.consume_at(provider, nonce, unix_now())
    }

    fn consume_at(&self, provider: &str, nonce: &str, now: u64) -> Result<(), NonceError> {
        let (raw, expires) = self.check_at(provider, nonce, now)?;
        let all = match &self.used {
            Used::Memory(m) => m,
            Used::Shared(s) => {
                let t = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                return match httpd::off_worker(|| {
                    s.use_nonce(provider, &raw, t(expires), t(now), self.capacity)
                })
                .map_err(unavailable)?
                {
                    UseOutcome::Fresh => Ok(()),
                    UseOutcome::Replayed => Err(NonceError::Replayed),
                    UseOutcome::Full => Err(NonceError::Full),
                };
            }
        };
        let mut all = all.lock().map_err(|_| NonceError::Unknown)?;
        let used = all.entry(provider.to_owned()).or_default();
        if used.len() >= self.capacity {
            used.retain(|_, e| *e > now);
            if used.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        // A concurrent use of the same nonce since `check_at` is caught here.
        if used.insert(raw, expires).is_some() {
            return Err(NonceError::Replayed);
        }
        Ok(())
    }
}

/// A shared store that failed: logged here (its message may name the database), and
/// answered as unavailable.
fn unavailable(e: crate::store::StoreError) -> NonceError {
    tracing::error!(error = %e, "nonce store");
    NonceError::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiry_and_capacity() {
        let s = NonceStore::new(Duration::from_secs(60), 2).unwrap();
        let now = 1_000_000;
        let p = "default";
        let a = s.issue_at(p, now).unwrap();
        assert_eq!(a.len(), 54);
        assert!(looks_like_service_nonce(&a));
        assert!(!looks_like_service_nonce("challenge"));
        assert_eq!(s.consume_at(p, "nope", now), Err(NonceError::Unknown));
        assert_eq!(s.check(p, &a), Err(NonceError::Expired), "issued long ago");
        assert!(s.check_at(p, &a, now).is_ok());
        assert_eq!(s.consume_at(p, &a, now + 1), Ok(()));
        assert_eq!(s.consume_at(p, &a, now + 2), Err(NonceError::Replayed));
        assert_eq!(
            s.check_at(p, &a, now + 2).unwrap_err(),
            NonceError::Replayed
        );
        // Issuing stores nothing: any number may be outstanding.
        let many: Vec<String> = (0..1000).map(|_| s.issue_at(p, now).unwrap()).collect();
        assert_eq!(s.consume_at(p, &many[0], now), Ok(()));
        // Two used within a lifetime fill a provider's store of capacity 2; once they
        // expire there is room again.
        assert_eq!(s.consume_at(p, &many[1], now), Err(NonceError::Full));
        let later = s.issue_at(p, now + 60).unwrap();
        assert_eq!(s.consume_at(p, &later, now + 60), Ok(()));
        // Expiry, a future issue time, a flipped bit, another process's key.
        assert_eq!(s.check_at(p, &many[2], now + 60), Err(NonceError::Expired));
        assert_eq!(s.check_at(p, &later, now + 54), Err(NonceError::Unknown));
        let mut raw = B64URL.decode(&many[3]).unwrap();
        raw[10] ^= 1;
        assert_eq!(
            s.check_at(p, &B64URL.encode(&raw), now),
            Err(NonceError::Unknown)
        );
        let other = NonceStore::new(Duration::from_secs(60), 2).unwrap();
        assert_eq!(other.check_at(p, &many[3], now), Err(NonceError::Unknown));
        assert!(s.check_at(p, &many[3], now).is_ok());
    }

    #[test]
    fn providers_have_their_own_nonces_and_used_sets() {
        let s = NonceStore::new(Duration::from_secs(60), 1).unwrap();
        let now = 2_000_000;
        let a = s.issue_at("a", now).unwrap();
        // A nonce issued for one provider is unknown to another.
        assert_eq!(s.check_at("b", &a, now), Err(NonceError::Unknown));
        assert_eq!(s.consume_at("a", &a, now), Ok(()));
        // Provider a's used set is full; b's is not.
        let a2 = s.issue_at("a", now).unwrap();
        assert_eq!(s.consume_at("a", &a2, now), Err(NonceError::Full));
        let b = s.issue_at("b", now).unwrap();
        assert_eq!(s.consume_at("b", &b, now), Ok(()));
    }
}
