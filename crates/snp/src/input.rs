//! Recognising evidence files: a raw report, a hex dump of one, or an HCL report.

use crate::hcl::{HclError, HclReport};
use crate::report::{AttestationReport, REPORT_LEN, ReportError};

/// Evidence as read from a file.
#[derive(Clone, Debug)]
pub enum Evidence {
    /// A bare SNP attestation report.
    Report(AttestationReport),
    /// An Azure HCL report with an SNP report inside.
    Hcl(Box<HclReport>),
}

impl Evidence {
    /// The SNP report.
    pub fn report(&self) -> &AttestationReport {
        match self {
            Evidence::Report(r) => r,
            Evidence::Hcl(h) => h.report(),
        }
    }
}

/// Why a file is not evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A raw or hex report did not parse.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// An HCL report did not parse.
    #[error(transparent)]
    Hcl(#[from] HclError),
    /// Neither a report, its hex dump, nor an HCL report.
    #[error(
        "unrecognised evidence: {len} bytes, neither a {REPORT_LEN}-byte report, a hex dump of one, nor an HCL report"
    )]
    Unrecognised {
        /// The input length.
        len: usize,
    },
}

/// Decodes whitespace-separated hex, or `None` if `data` is not hex text.
fn hex_text(data: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    hex::decode(digits).ok()
}

/// Recognises and parses evidence.
pub fn parse_evidence(data: &[u8]) -> Result<Evidence, InputError> {
    if HclReport::looks_like(data) {
        return Ok(Evidence::Hcl(Box::new(HclReport::parse(data)?)));
    }
    if data.len() == REPORT_LEN {
        return Ok(Evidence::Report(AttestationReport::parse(data)?));
    }
    match hex_text(data) {
        Some(bytes) if HclReport::looks_like(&bytes) => {
            Ok(Evidence::Hcl(Box::new(HclReport::parse(&bytes)?)))
        }
        Some(bytes) if bytes.len() == REPORT_LEN => {
            Ok(Evidence::Report(AttestationReport::parse(&bytes)?))
        }
        Some(bytes) => Err(ReportError::Length { got: bytes.len() }.into()),
        None if data.len() < 2 * REPORT_LEN => Err(ReportError::Length { got: data.len() }.into()),
        None => Err(InputError::Unrecognised { len: data.len() }),
    }
}

/// Parses anything, ignoring the result: the body of the fuzz targets.
pub fn fuzz_evidence(data: &[u8]) {
    if let Ok(e) = parse_evidence(data)
        && let Evidence::Hcl(h) = e
    {
        let _ = h.runtime_data_bound();
    }
}
