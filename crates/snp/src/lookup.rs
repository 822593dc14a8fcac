//! Finding the collateral a report needs: its VEK, the ASK/ASVK and ARK, and the ARK's
//! CRLs. One lookup for every verifier (the `cvm evidence` command and the attestation
//! service), so a rule fixed here holds everywhere.
//!
//! Sources, in order:
//! 1. certificates given with the evidence: files on the command line, a request's
//!    `VcekCertChain`, an extended report's certificate table (all through
//!    [`crate::cert::parse_bundle`]);
//! 2. the collateral cache, then AMD KDS when the [`Fetcher`] is online: the VCEK by
//!    `CHIP_ID` and `REPORTED_TCB` (a VLEK cannot be fetched), the product's chain;
//! 3. CRLs: those given; otherwise, for a chain under one of AMD's pinned ARKs, the
//!    product's CRL from the cache or KDS (refreshed when the cached one is past its
//!    `nextUpdate` and the fetcher is online); for any other root (an emulator's), only
//!    the CRLs its caller registered for that root ([`RootCrls`]).
//!
//! A CRL that is found is always applied, and must then verify under the chain's ARK
//! and be current ([`crate::chain::CertChain::verify`]); when none is found the
//! verdict says revocation was not checked, and why ([`Collateral::no_crl_reason`]).

use std::collections::HashMap;

use crate::cert::{AmdCert, CertError, Vek, VekKind};
use crate::chain::{CertChain, ChainError, is_amd_ark};
use crate::collateral::{CollateralError, Fetcher};
use crate::crl::{Crl, CrlError};
use crate::kds::{KdsError, KdsRequest, VcekQuery};
use crate::product::Product;
use crate::report::{AttestationReport, SigningKey};
pub use crate::verify::Collateral;

/// Why the collateral for a report could not be assembled. Every variant means "could
/// not verify" (exit 2, HTTP 424 or 400), never "the evidence is bad".
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nothing given and nothing obtainable.
    #[error("missing collateral: {0}")]
    Missing(String),
    /// The cache or KDS failed.
    #[error("missing collateral: {what}: {source}")]
    Fetch {
        /// What was being fetched.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: CollateralError,
    },
    /// A certificate given or fetched is malformed.
    #[error("{what}: {source}")]
    Cert {
        /// Where it came from.
        what: &'static str,
        /// The problem.
        #[source]
        source: CertError,
    },
    /// A CRL given or fetched is malformed.
    #[error("{what}: {source}")]
    Crl {
        /// Where it came from.
        what: &'static str,
        /// The problem.
        #[source]
        source: CrlError,
    },
    /// The certificates given do not form a chain for the VEK.
    #[error("certificate chain: {0}")]
    Chain(#[source] ChainError),
    /// The report's identity cannot name a VCEK to fetch.
    #[error("missing collateral: {0}")]
    Kds(#[from] KdsError),
}

impl LookupError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LookupError::Missing(_) | LookupError::Fetch { .. } | LookupError::Kds(_) => {
                "missing_collateral"
            }
            LookupError::Cert { .. } => "malformed_certificate",
            LookupError::Crl { .. } => "malformed_crl",
            LookupError::Chain(_) => "missing_collateral",
        }
    }
}

/// CRLs registered for roots that are not AMD's (an emulated secure processor's), by
/// the SHA-256 of the ARK certificate.
#[derive(Clone, Debug, Default)]
pub struct RootCrls {
    by_ark: HashMap<[u8; 32], Vec<Crl>>,
}

impl RootCrls {
    /// No CRLs.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers `crl` for the root whose certificate has SHA-256 `ark_sha256`.
    pub fn add(&mut self, ark_sha256: [u8; 32], crl: Crl) {
        self.by_ark.entry(ark_sha256).or_default().push(crl);
    }
    /// The CRLs registered for a root.
    pub fn get(&self, ark_sha256: &[u8; 32]) -> &[Crl] {
        self.by_ark.get(ark_sha256).map_or(&[], Vec::as_slice)
    }
}

/// Where the CRL of an AMD product comes from when none is given: by default the
/// [`Fetcher`] (cache, then KDS); a long-running service puts a memory cache with
/// negative caching in front ([`FetcherCrls`] is the plain one).
pub trait CrlProvider: Send + Sync {
    /// The CRLs of `product`'s ARK for `kind` chains at time `at`, or why there are
    /// none.
    fn amd_crls(
        &self,
        product: Product,
        kind: VekKind,
        at: i64,
    ) -> Result<(Vec<Crl>, Option<String>), LookupError>;
}

/// CRLs straight from a [`Fetcher`]: the cached CRL, refreshed online when it is past
/// its `nextUpdate`; none (with the reason) when it is not cached and cannot be
/// fetched.
#[derive(Debug)]
pub struct FetcherCrls<'a>(pub &'a Fetcher);

impl CrlProvider for FetcherCrls<'_> {
    fn amd_crls(
        &self,
        product: Product,
        kind: VekKind,
        at: i64,
    ) -> Result<(Vec<Crl>, Option<String>), LookupError> {
        fetch_crl(self.0, product, kind, at)
    }
}

/// What a lookup may use.
#[derive(Default)]
pub struct Sources<'a> {
    /// Certificates given with the evidence (VEK, ASK/ASVK, ARK in any order).
    pub certs: Vec<AmdCert>,
    /// CRLs given with the evidence; when non-empty, no other CRL is looked up.
    pub crls: Vec<Crl>,
    /// The cache and, online, KDS.
    pub fetcher: Option<&'a Fetcher>,
    /// CRLs for non-AMD roots.
    pub root_crls: Option<&'a RootCrls>,
    /// Where AMD CRLs come from when none is given (default: [`FetcherCrls`] over
    /// `fetcher`).
    pub crl_provider: Option<&'a dyn CrlProvider>,
    /// The product, for a version 2 report (which does not say) whose VCEK must be
    /// fetched.
    pub product: Option<Product>,
}

impl std::fmt::Debug for Sources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("certs", &self.certs.len())
            .field("crls", &self.crls.len())
            .field("fetcher", &self.fetcher)
            .finish_non_exhaustive()
    }
}

/// Finds the VEK and chain for `report`, then the CRLs for that chain, at time `at`.
pub fn lookup(
    report: &AttestationReport,
    sources: &Sources<'_>,
    at: i64,
) -> Result<Collateral, LookupError> {
    let (vek, chain) = find_chain(report, sources)?;
    let (crls, no_crl_reason) = find_crls(&chain, vek.kind(), sources, at)?;
    Ok(Collateral {
        vek,
        chain,
        crls,
        no_crl_reason,
    })
}

/// The VEK and its chain: given, else cached or fetched.
pub fn find_chain(
    report: &AttestationReport,
    sources: &Sources<'_>,
) -> Result<(Vek, CertChain), LookupError> {
    let certs = &sources.certs;
    let vek = match certs
        .iter()
        .find(|c| matches!(c.subject_cn(), "SEV-VCEK" | "SEV-VLEK"))
    {
        Some(c) => Vek::from_cert(c.clone()).map_err(|source| LookupError::Cert {
            what: "the VEK given",
            source,
        })?,
        None => {
            let product = report.product().or(sources.product).ok_or_else(|| {
                LookupError::Missing(
                    "no VEK given, and a version 2 report needs its product to fetch one".into(),
                )
            })?;
            if report.signing_key() != SigningKey::Vcek {
                return Err(LookupError::Missing(
                    "no VEK given, and only VCEKs can be fetched from AMD KDS".into(),
                ));
            }
            let fetcher = sources.fetcher.ok_or_else(|| {
                LookupError::Missing("no VEK given and no collateral cache to look in".into())
            })?;
            let req = KdsRequest::Vcek(VcekQuery::new(
                product,
                report.chip_id(),
                report.reported_tcb(),
            )?);
            let der = fetcher.fetch(&req).map_err(|source| LookupError::Fetch {
                what: "fetching the VCEK",
                source,
            })?;
            Vek::parse(&der).map_err(|source| LookupError::Cert {
                what: "the fetched VCEK",
                source,
            })?
        }
    };
    let chain = match CertChain::from_certs_for(certs, vek.kind()) {
        Ok(c) => c,
        // Some of a chain given but not all of it: say what is missing rather than
        // fetching another one silently.
        Err(e) if certs.iter().any(|c| c.subject_cn().starts_with("ARK-")) => {
            return Err(LookupError::Chain(e));
        }
        Err(_) => {
            let fetcher = sources.fetcher.ok_or_else(|| {
                LookupError::Missing(format!(
                    "no {} chain given and no collateral cache to look in",
                    vek.kind()
                ))
            })?;
            let pem = fetcher
                .fetch(&KdsRequest::CertChain {
                    product: vek.product(),
                    kind: vek.kind(),
                })
                .map_err(|source| LookupError::Fetch {
                    what: "fetching the ASK/ARK chain",
                    source,
                })?;
            let fetched = crate::cert::parse_bundle(&pem).map_err(|source| LookupError::Cert {
                what: "the fetched chain",
                source,
            })?;
            CertChain::from_certs_for(&fetched, vek.kind()).map_err(LookupError::Chain)?
        }
    };
    Ok((vek, chain))
}

/// The CRLs to apply to `chain`, or why there are none.
pub fn find_crls(
    chain: &CertChain,
    kind: VekKind,
    sources: &Sources<'_>,
    at: i64,
) -> Result<(Vec<Crl>, Option<String>), LookupError> {
    if !sources.crls.is_empty() {
        return Ok((sources.crls.clone(), None));
    }
    let ark = chain.ark().sha256();
    if !is_amd_ark(&ark) {
        let registered = sources.root_crls.map_or(&[][..], |r| r.get(&ark));
        return Ok(if registered.is_empty() {
            (
                Vec::new(),
                Some("no CRL is registered for this (non-AMD) root".into()),
            )
        } else {
            (registered.to_vec(), None)
        });
    }
    let product = chain
        .ark()
        .subject_cn()
        .strip_prefix("ARK-")
        .and_then(|p| p.parse::<Product>().ok());
    let Some(product) = product else {
        return Ok((Vec::new(), Some("the ARK names no product".into())));
    };
    if let Some(provider) = sources.crl_provider {
        return provider.amd_crls(product, kind, at);
    }
    match sources.fetcher {
        Some(fetcher) => fetch_crl(fetcher, product, kind, at),
        None => Ok((
            Vec::new(),
            Some("no CRL given and no collateral cache to look in".into()),
        )),
    }
}

/// The product's CRL from the cache, refreshed online when stale.
fn fetch_crl(
    fetcher: &Fetcher,
    product: Product,
    kind: VekKind,
    at: i64,
) -> Result<(Vec<Crl>, Option<String>), LookupError> {
    let req = KdsRequest::Crl { product, kind };
    let crl = match fetcher.fetch(&req) {
        Ok(der) => Crl::parse(&der).map_err(|source| LookupError::Crl {
            what: "the cached CRL",
            source,
        })?,
        Err(CollateralError::NotCached { .. }) => {
            return Ok((
                Vec::new(),
                Some(format!(
                    "no {product} CRL is cached and the lookup is offline"
                )),
            ));
        }
        Err(e) if e.is_network() => {
            return Ok((
                Vec::new(),
                Some(format!("the {product} CRL could not be fetched: {e}")),
            ));
        }
        Err(source) => {
            return Err(LookupError::Fetch {
                what: "reading the cached CRL",
                source,
            });
        }
    };
    let current = crl.this_update() <= at && crl.next_update().is_some_and(|n| at <= n);
    if current || !matches!(fetcher.mode(), crate::collateral::FetchMode::Online(_)) {
        // Offline, a stale CRL is still applied: it then fails as "not current".
        return Ok((vec![crl], None));
    }
    let fresh = fetcher.refresh(&req).map_err(|source| LookupError::Fetch {
        what: "refreshing the CRL",
        source,
    })?;
    let crl = Crl::parse(&fresh.data).map_err(|source| LookupError::Crl {
        what: "the fetched CRL",
        source,
    })?;
    Ok((vec![crl], None))
}
