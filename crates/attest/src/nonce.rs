//! Short-lived, single-use nonces issued by `GET /nonce`.
//!
//! Nonces live in memory: a restart invalidates outstanding ones (callers ask again).
//! A used nonce is remembered until it would have expired, so a replay is reported as
//! such rather than as unknown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// The longest nonce string a request may carry.
pub const MAX_NONCE_LEN: usize = 128;

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
    /// Too many nonces outstanding.
    #[error("too many outstanding nonces; try again later")]
    Full,
}

impl NonceError {
    /// A stable code.
    pub fn code(self) -> &'static str {
        match self {
            NonceError::Unknown => "nonce_unknown",
            NonceError::Expired => "nonce_expired",
            NonceError::Replayed => "nonce_replayed",
            NonceError::Full => "nonce_capacity",
        }
    }
}

struct Entry {
    expires: Instant,
    used: bool,
}

/// Outstanding and recently used nonces.
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for NonceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl NonceStore {
    /// Nonces valid for `ttl`, at most `capacity` remembered at once.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        NonceStore {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long a nonce lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a fresh nonce (256 random bits, base64url).
    pub fn issue(&self) -> Result<String, NonceError> {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| NonceError::Full)?;
        let nonce = B64URL.encode(raw);
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| NonceError::Full)?;
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        entries.insert(
            nonce.clone(),
            Entry {
                expires: now + self.ttl,
                used: false,
            },
        );
        Ok(nonce)
    }

    /// Uses `nonce`: it must have been issued here, be unexpired and unused.
    pub fn consume(&self, nonce: &str) -> Result<(), NonceError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| NonceError::Unknown)?;
        let entry = entries.get_mut(nonce).ok_or(NonceError::Unknown)?;
        if entry.used {
            return Err(NonceError::Replayed);
        }
        if entry.expires <= now {
            entries.remove(nonce);
            return Err(NonceError::Expired);
        }
        entry.used = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiry_and_capacity() {
        let s = NonceStore::new(Duration::from_secs(60), 2);
        let a = s.issue().unwrap();
        assert_eq!(s.consume("nope"), Err(NonceError::Unknown));
        assert_eq!(s.consume(&a), Ok(()));
        assert_eq!(s.consume(&a), Err(NonceError::Replayed));
        let _b = s.issue().unwrap();
        assert_eq!(s.issue(), Err(NonceError::Full));
        let short = NonceStore::new(Duration::from_millis(1), 10);
        let c = short.issue().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.consume(&c), Err(NonceError::Expired));
        assert_eq!(short.consume(&c), Err(NonceError::Unknown));
    }
}
