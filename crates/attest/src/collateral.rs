//! Collateral the service holds itself: the emulator roots it pins, with their CRLs,
//! and AMD's CRLs in memory in front of the collateral cache.
//!
//! Evidence is verified through [`snp::lookup`], the same path as `cvm evidence`; this
//! module only decides where CRLs come from for a long-running service:
//! - AMD products: the CRL from the [`Fetcher`] (cache, then KDS when online), kept in
//!   memory while it is current and re-read at most every [`CRL_RECHECK`]; a failure to
//!   get one is remembered for [`CRL_RETRY`] (negative cache), so a KDS outage does not
//!   turn every attestation into a slow fetch;
//! - emulated platforms: only the CRLs in the roots file the operator gave
//!   (`cvm snp export-roots`), registered by the ARK's fingerprint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use snp::Product;
use snp::cert::VekKind;
use snp::collateral::Fetcher;
use snp::crl::Crl;
use snp::lookup::{CrlProvider, FetcherCrls, LookupError};

/// How often a CRL held in memory is read again from the cache (or KDS).
pub const CRL_RECHECK: Duration = Duration::from_secs(3600);
/// How long a failure to get a CRL is remembered before the next try.
pub const CRL_RETRY: Duration = Duration::from_secs(60);

// The roots file is read by the `snp` crate, the one rule `cvm evidence verify` follows
// too: emulator roots are trusted only by pin.
pub use snp::emulator_roots::{EmulatorRoots, RootsError};

struct Held {
    result: Result<Crl, String>,
    read_at: Instant,
}

/// AMD CRLs in memory, in front of a [`Fetcher`].
#[derive(Default)]
pub(crate) struct CrlMemo {
    held: Mutex<HashMap<(Product, VekKind), Held>>,
}

impl std::fmt::Debug for CrlMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CrlMemo")
    }
}

/// A [`CrlProvider`] over the service's fetcher and memo.
pub(crate) struct ServiceCrls<'a> {
    pub fetcher: Option<&'a Fetcher>,
    pub memo: &'a CrlMemo,
}

impl CrlProvider for ServiceCrls<'_> {
    fn amd_crls(
        &self,
        product: Product,
        kind: VekKind,
        at: i64,
    ) -> Result<(Vec<Crl>, Option<String>), LookupError> {
        let Some(fetcher) = self.fetcher else {
            return Ok((
                Vec::new(),
                Some("this service has no collateral cache to take AMD's CRL from".into()),
            ));
        };
        let key = (product, kind);
        if let Ok(held) = self.memo.held.lock()
            && let Some(h) = held.get(&key)
        {
            let age = h.read_at.elapsed();
            match &h.result {
                Ok(crl)
                    if age < CRL_RECHECK
                        && crl.this_update() <= at
                        && crl.next_update().is_some_and(|n| at <= n) =>
                {
                    return Ok((vec![crl.clone()], None));
                }
                Err(reason) if age < CRL_RETRY => {
                    return Ok((Vec::new(), Some(reason.clone())));
                }
                _ => {}
            }
        }
        let (crls, reason) =
            httpd::off_worker(|| FetcherCrls(fetcher).amd_crls(product, kind, at))?;
        let result = match (crls.first(), &reason) {
            (Some(crl), _) => Ok(crl.clone()),
            (None, Some(r)) => Err(r.clone()),
            (None, None) => Err(format!("no {product} CRL")),
        };
        if let Ok(mut held) = self.memo.held.lock() {
            held.insert(
                key,
                Held {
                    result,
                    read_at: Instant::now(),
                },
            );
        }
        Ok((crls, reason))
    }
}

/// How long a failed KDS fetch (404: no such VCEK, or unreachable) is remembered.
pub const KDS_MISS_TTL: Duration = Duration::from_secs(300);
/// KDS fetches one client address may cause per minute.
pub const KDS_FETCHES_PER_CLIENT: u32 = 10;
/// How many misses and clients are remembered at most.
const KDS_MEMO_CAP: usize = 4096;

/// Remembered KDS misses and per-client fetch counts: a client sending reports of made
/// up chips cannot make the service hammer AMD's KDS (and be rate-limited by it for
/// everyone).
#[derive(Default)]
pub(crate) struct KdsGuard {
    misses: Mutex<HashMap<String, (Instant, String)>>,
    clients: Mutex<HashMap<std::net::IpAddr, (Instant, u32)>>,
}

impl std::fmt::Debug for KdsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KdsGuard")
    }
}

/// Why a guarded fetch was not made or failed.
#[derive(Debug)]
pub(crate) enum GuardError {
    /// KDS failed for this recently; the reason.
    Miss(String),
    /// This client caused too many fetches this minute.
    RateLimited,
}

impl KdsGuard {
    /// Fetches `req` through `fetcher` unless it is cached (then nothing happens), it
    /// failed within [`KDS_MISS_TTL`], or `client` is over its budget.
    pub(crate) fn fetch(
        &self,
        fetcher: &Fetcher,
        req: &snp::kds::KdsRequest,
        client: Option<std::net::IpAddr>,
    ) -> Result<(), GuardError> {
        if fetcher.cache().get(req).ok().flatten().is_some()
            || !matches!(fetcher.mode(), snp::collateral::FetchMode::Online(_))
        {
            // Cached, or offline (the lookup then reports the miss itself).
            return Ok(());
        }
        let key = req.cache_key();
        if let Ok(mut m) = self.misses.lock() {
            match m.get(&key) {
                Some((at, why)) if at.elapsed() < KDS_MISS_TTL => {
                    return Err(GuardError::Miss(why.clone()));
                }
                Some(_) => {
                    m.remove(&key);
                }
                None => {}
            }
        }
        if let (Some(ip), Ok(mut c)) = (client, self.clients.lock()) {
            if c.len() >= KDS_MEMO_CAP {
                c.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
            }
            let e = c.entry(ip).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= Duration::from_secs(60) {
                *e = (Instant::now(), 0);
            }
            if e.1 >= KDS_FETCHES_PER_CLIENT {
                return Err(GuardError::RateLimited);
            }
            e.1 += 1;
        }
        match httpd::off_worker(|| fetcher.fetch(req)) {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = e.to_string();
                if let Ok(mut m) = self.misses.lock() {
                    if m.len() >= KDS_MEMO_CAP {
                        m.retain(|_, (at, _)| at.elapsed() < KDS_MISS_TTL);
                    }
                    m.insert(key, (Instant::now(), why.clone()));
                }
                Err(GuardError::Miss(why))
            }
        }
    }
}
