//! AMD Key Distribution Service (KDS): which URL serves which piece of collateral.
//!
//! KDS (`https://kdsintf.amd.com`, AMD publication 57230) serves, per product:
//!
//! | collateral | path |
//! |---|---|
//! | VCEK of one chip at one TCB | `/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..` |
//! | ASK + ARK (PEM) | `/vcek/v1/{product}/cert_chain` |
//! | ASVK + ARK (PEM) | `/vlek/v1/{product}/cert_chain` |
//! | CRL (DER, ARK-signed) | `/vcek/v1/{product}/crl`, `/vlek/v1/{product}/crl` |
//!
//! `{hwid}` is the report's `CHIP_ID` in lower-case hexadecimal: all 64 bytes on Milan
//! and Genoa, the first 8 bytes on Turin, whose query also carries `fmcSPL` (first, as
//! AMD's tools write it). Each SPL is written in decimal with at least two digits.
//!
//! VLEKs are not served by KDS to guests (they are provisioned to the cloud provider and
//! come with the report), so there is no VLEK request here.
//!
//! A [`KdsRequest`] also names the file it is cached under ([`KdsRequest::cache_key`]):
//! a relative path built only from the product, the hardware ID and the TCB.

use std::fmt;

use crate::product::Product;
use crate::report::AttestationReport;
use crate::tcb::{TcbLayout, TcbVersion};

/// The public AMD KDS endpoint.
pub const KDS_BASE_URL: &str = "https://kdsintf.amd.com";

/// Length of `CHIP_ID` in an attestation report.
pub const CHIP_ID_LEN: usize = 64;

/// Length of the hardware ID that identifies a Turin chip in KDS (the first bytes of
/// `CHIP_ID`).
pub const TURIN_HWID_LEN: usize = 8;

/// An error building a KDS request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdsError {
    /// The chip ID has the wrong length.
    #[error("CHIP_ID for {product} must be {expected} bytes, got {got}")]
    ChipIdLength {
        /// The product the request is for.
        product: Product,
        /// The length that was expected.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The chip ID is all zeros: the host masked it (`MASK_CHIP_ID`), so KDS cannot
    /// identify the chip; the VCEK must come from elsewhere (e.g. the extended report).
    #[error("CHIP_ID is all zeros (masked by the host): KDS cannot serve a VCEK for it")]
    ChipIdMasked,
    /// The TCB version was decoded with a layout that is not the product's.
    #[error("TCB version uses the {layout:?} layout, but {product} uses {expected:?}")]
    TcbLayoutMismatch {
        /// The product the request is for.
        product: Product,
        /// The layout of the TCB version given.
        layout: TcbLayout,
        /// The product's layout.
        expected: TcbLayout,
    },
}

pub use crate::cert::VekKind;

/// The hardware ID under which KDS files a chip's VCEKs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HwId(Vec<u8>);

impl HwId {
    /// The hardware ID of a chip from the report's 64-byte `CHIP_ID`: all of it on
    /// Milan and Genoa, the first 8 bytes on Turin. Turin's ID may also be given as
    /// just those 8 bytes.
    pub fn from_chip_id(product: Product, chip_id: &[u8]) -> Result<HwId, KdsError> {
        let id = match product {
            Product::Milan | Product::Genoa => {
                if chip_id.len() != CHIP_ID_LEN {
                    return Err(KdsError::ChipIdLength {
                        product,
                        expected: CHIP_ID_LEN,
                        got: chip_id.len(),
                    });
                }
                chip_id
            }
            Product::Turin => match chip_id.len() {
                CHIP_ID_LEN | TURIN_HWID_LEN => &chip_id[..TURIN_HWID_LEN],
                got => {
                    return Err(KdsError::ChipIdLength {
                        product,
                        expected: CHIP_ID_LEN,
                        got,
                    });
                }
            },
        };
        if id.iter().all(|&b| b == 0) {
            return Err(KdsError::ChipIdMasked);
        }
        Ok(HwId(id.to_vec()))
    }

    /// The raw bytes (64 bytes, or 8 on Turin).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hexadecimal, as in KDS URLs.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for HwId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HwId({})", self.to_hex())
    }
}

impl fmt::Display for HwId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A request for one chip's VCEK at one TCB. Built with [`VcekQuery::new`], which checks
/// that the hardware ID and the TCB layout fit the product.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VcekQuery {
    product: Product,
    hwid: HwId,
    tcb: TcbVersion,
}

impl VcekQuery {
    /// A VCEK query for `chip_id` (the report's `CHIP_ID`, see [`HwId::from_chip_id`])
    /// at `tcb` (normally the report's `REPORTED_TCB`).
    pub fn new(product: Product, chip_id: &[u8], tcb: TcbVersion) -> Result<Self, KdsError> {
        let expected = product.tcb_layout();
        if tcb.layout() != expected {
            return Err(KdsError::TcbLayoutMismatch {
                product,
                layout: tcb.layout(),
                expected,
            });
        }
        let hwid = HwId::from_chip_id(product, chip_id)?;
        Ok(VcekQuery { product, hwid, tcb })
    }

    /// The product.
    pub fn product(&self) -> Product {
        self.product
    }

    /// The hardware ID.
    pub fn hwid(&self) -> &HwId {
        &self.hwid
    }

    /// The TCB version.
    pub fn tcb(&self) -> TcbVersion {
        self.tcb
    }
}

/// One piece of collateral that KDS serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KdsRequest {
    /// A chip's VCEK at one TCB (DER X.509 certificate).
    Vcek(VcekQuery),
    /// The intermediate and root of a product's VCEK (ASK + ARK) or VLEK (ASVK + ARK)
    /// chain (two PEM certificates, intermediate first).
    CertChain {
        /// The product.
        product: Product,
        /// Whose chain.
        kind: VekKind,
    },
    /// A product's certificate revocation list (DER, signed by the ARK).
    Crl {
        /// The product.
        product: Product,
        /// Under which path it is fetched.
        kind: VekKind,
    },
}

/// What a KDS response body must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    /// One DER X.509 certificate.
    DerCertificate,
    /// PEM certificates (KDS `cert_chain`: exactly two).
    PemCertificates,
    /// One DER certificate revocation list.
    DerCrl,
}

impl KdsRequest {
    /// A VCEK request; see [`VcekQuery::new`].
    pub fn vcek(product: Product, chip_id: &[u8], tcb: TcbVersion) -> Result<Self, KdsError> {
        VcekQuery::new(product, chip_id, tcb).map(KdsRequest::Vcek)
    }

    /// The request for the VCEK that signed `report` on a `product` chip: its `CHIP_ID`
    /// at its `REPORTED_TCB`. Fails for a masked `CHIP_ID` and for a report whose TCB was
    /// decoded for another product.
    pub fn vcek_for_report(report: &AttestationReport, product: Product) -> Result<Self, KdsError> {
        Self::vcek(product, report.chip_id(), report.reported_tcb())
    }

    /// The product the collateral belongs to.
    pub fn product(&self) -> Product {
        match self {
            KdsRequest::Vcek(q) => q.product,
            KdsRequest::CertChain { product, .. } | KdsRequest::Crl { product, .. } => *product,
        }
    }

    /// The format the response must have.
    pub fn body_format(&self) -> BodyFormat {
        match self {
            KdsRequest::Vcek(_) => BodyFormat::DerCertificate,
            KdsRequest::CertChain { .. } => BodyFormat::PemCertificates,
            KdsRequest::Crl { .. } => BodyFormat::DerCrl,
        }
    }

    /// The path and query of the request, starting with `/`.
    pub fn path_and_query(&self) -> String {
        match self {
            KdsRequest::Vcek(q) => {
                let t = &q.tcb;
                let fmc = match (q.product, t.fmc()) {
                    (Product::Turin, Some(fmc)) => format!("fmcSPL={fmc:02}&"),
                    // VcekQuery::new guarantees Turin has the Turin layout, which has an FMC.
                    _ => String::new(),
                };
                format!(
                    "/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
                    q.product.name(),
                    q.hwid.to_hex(),
                    t.bootloader(),
                    t.tee(),
                    t.snp(),
                    t.microcode()
                )
            }
            KdsRequest::CertChain { product, kind } => {
                format!("/{}/v1/{}/cert_chain", kind.name(), product.name())
            }
            KdsRequest::Crl { product, kind } => {
                format!("/{}/v1/{}/crl", kind.name(), product.name())
            }
        }
    }

    /// The full URL under `base` (for example [`KDS_BASE_URL`]; a trailing `/` is ignored).
    pub fn url(&self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.path_and_query())
    }

    /// The relative path this collateral is cached under, keyed by product, hardware ID
    /// and TCB: `vcek/Milan/<hwid>/<raw TCB as 16 hex digits>.der`,
    /// `cert_chain/vcek/Milan.pem` or `crl/vcek/Milan.der`. Only `[0-9A-Za-z_./]`.
    pub fn cache_key(&self) -> String {
        match self {
            KdsRequest::Vcek(q) => format!(
                "vcek/{}/{}/{:016x}.der",
                q.product.name(),
                q.hwid.to_hex(),
                q.tcb.raw()
            ),
            KdsRequest::CertChain { product, kind } => {
                format!("cert_chain/{}/{}.pem", kind.name(), product.name())
            }
            KdsRequest::Crl { product, kind } => {
                format!("crl/{}/{}.der", kind.name(), product.name())
            }
        }
    }
}

impl fmt::Display for KdsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KdsRequest::Vcek(q) => write!(f, "{} VCEK {} at TCB {}", q.product, q.hwid, q.tcb),
            KdsRequest::CertChain { product, kind } => {
                write!(f, "{product} {kind} certificate chain")
            }
            KdsRequest::Crl { product, kind } => write!(f, "{product} CRL ({kind} path)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip_id() -> Vec<u8> {
        (0u8..64)
            .map(|i| i.wrapping_mul(7).wrapping_add(1))
            .collect()
    }

    #[test]
    fn milan_vcek_url_uses_full_chip_id() {
        let tcb = TcbVersion::milan_genoa(4, 0, 24, 219);
        let req = KdsRequest::vcek(Product::Milan, &chip_id(), tcb).unwrap();
        let hex = hex::encode(chip_id());
        assert_eq!(hex.len(), 128);
        assert_eq!(
            req.url(KDS_BASE_URL),
            format!(
                "https://kdsintf.amd.com/vcek/v1/Milan/{hex}?blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=219"
            )
        );
        assert_eq!(
            req.cache_key(),
            format!("vcek/Milan/{hex}/db18000000000004.der")
        );
        assert_eq!(req.body_format(), BodyFormat::DerCertificate);
    }

    #[test]
    fn genoa_vcek_url_and_trailing_slash() {
        let tcb = TcbVersion::milan_genoa(9, 0, 23, 72);
        let req = KdsRequest::vcek(Product::Genoa, &chip_id(), tcb).unwrap();
        let hex = hex::encode(chip_id());
        assert_eq!(
            req.url("http://127.0.0.1:8080/"),
            format!(
                "http://127.0.0.1:8080/vcek/v1/Genoa/{hex}?blSPL=09&teeSPL=00&snpSPL=23&ucodeSPL=72"
            )
        );
    }

    #[test]
    fn turin_vcek_url_uses_eight_bytes_and_fmc_first() {
        let tcb = TcbVersion::turin(1, 2, 3, 4, 5);
        let full = chip_id();
        let req = KdsRequest::vcek(Product::Turin, &full, tcb).unwrap();
        assert_eq!(
            req.url(KDS_BASE_URL),
            "https://kdsintf.amd.com/vcek/v1/Turin/01080f161d242b32?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05"
        );
        // The 8-byte hwID alone names the same chip.
        let short = KdsRequest::vcek(Product::Turin, &full[..8], tcb).unwrap();
        assert_eq!(short, req);
        assert_eq!(
            req.cache_key(),
            format!("vcek/Turin/01080f161d242b32/{:016x}.der", tcb.raw())
        );
    }

    #[test]
    fn vcek_request_rejects_bad_inputs() {
        let milan_tcb = TcbVersion::milan_genoa(1, 2, 3, 4);
        assert_eq!(
            KdsRequest::vcek(Product::Milan, &[1u8; 8], milan_tcb),
            Err(KdsError::ChipIdLength {
                product: Product::Milan,
                expected: 64,
                got: 8
            })
        );
        assert_eq!(
            KdsRequest::vcek(Product::Milan, &[0u8; 64], milan_tcb),
            Err(KdsError::ChipIdMasked)
        );
        // A Turin chip ID is masked when its first 8 bytes are zero.
        let mut turin_chip = [0u8; 64];
        turin_chip[9] = 1;
        assert_eq!(
            KdsRequest::vcek(
                Product::Turin,
                &turin_chip,
                TcbVersion::turin(1, 1, 1, 1, 1)
            ),
            Err(KdsError::ChipIdMasked)
        );
        assert!(matches!(
            KdsRequest::vcek(Product::Turin, &chip_id(), milan_tcb),
            Err(KdsError::TcbLayoutMismatch { .. })
        ));
        assert!(matches!(
            KdsRequest::vcek(Product::Genoa, &chip_id(), TcbVersion::turin(1, 1, 1, 1, 1)),
            Err(KdsError::TcbLayoutMismatch { .. })
        ));
        assert!(matches!(
            KdsRequest::vcek(Product::Turin, &[1u8; 16], TcbVersion::turin(1, 1, 1, 1, 1)),
            Err(KdsError::ChipIdLength { got: 16, .. })
        ));
    }

    #[test]
    fn chain_and_crl_urls() {
        for product in Product::ALL {
            let p = product.name();
            for (kind, seg) in [(VekKind::Vcek, "vcek"), (VekKind::Vlek, "vlek")] {
                let chain = KdsRequest::CertChain { product, kind };
                assert_eq!(
                    chain.url(KDS_BASE_URL),
                    format!("https://kdsintf.amd.com/{seg}/v1/{p}/cert_chain")
                );
                assert_eq!(chain.cache_key(), format!("cert_chain/{seg}/{p}.pem"));
                assert_eq!(chain.body_format(), BodyFormat::PemCertificates);
                let crl = KdsRequest::Crl { product, kind };
                assert_eq!(
                    crl.url(KDS_BASE_URL),
                    format!("https://kdsintf.amd.com/{seg}/v1/{p}/crl")
                );
                assert_eq!(crl.cache_key(), format!("crl/{seg}/{p}.der"));
                assert_eq!(crl.body_format(), BodyFormat::DerCrl);
                assert_eq!(crl.product(), product);
            }
        }
    }

    #[test]
    fn cache_keys_are_distinct_and_safe() {
        let mut keys = std::collections::HashSet::new();
        let tcbs = [
            TcbVersion::milan_genoa(1, 0, 1, 1),
            TcbVersion::milan_genoa(1, 0, 1, 2),
        ];
        let mut other = chip_id();
        other[63] ^= 0xff;
        for chip in [chip_id(), other] {
            for tcb in tcbs {
                for product in [Product::Milan, Product::Genoa] {
                    let key = KdsRequest::vcek(product, &chip, tcb).unwrap().cache_key();
                    assert!(
                        key.bytes().all(|b| b.is_ascii_alphanumeric()
                            || b == b'/'
                            || b == b'.'
                            || b == b'_')
                    );
                    assert!(!key.starts_with('/') && !key.contains(".."));
                    assert!(keys.insert(key));
                }
            }
        }
    }
}
