//! `TPMS_ATTEST` carrying a `TPMS_QUOTE_INFO` (TPM 2.0 Part 2 §10.12), as returned by
//! `TPM2_Quote` and written by `tpm2_quote -m`.

use crate::alg::HashAlg;
use crate::error::Error;
use crate::reader::Reader;

/// `TPM_GENERATED_VALUE`, the magic that starts every TPM-generated attestation.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`, the attestation type of a quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Largest `TPM2B_NAME` (`sizeof(TPMU_NAME)` = a `TPMT_HA` with a SHA-512 digest).
const MAX_NAME: usize = 66;
/// Largest `TPM2B_DATA` (`sizeof(TPMT_HA)`).
const MAX_DATA: usize = 66;
/// Largest `TPM2B_DIGEST` (`sizeof(TPMU_HA)`).
const MAX_DIGEST: usize = 64;
/// Largest `TPML_PCR_SELECTION.count` (`TPM2_NUM_PCR_BANKS` in tpm2-tss).
pub(crate) const MAX_PCR_BANKS: usize = 16;
/// Largest `sizeofSelect` (`TPM2_PCR_SELECT_MAX` in tpm2-tss: 32 PCRs).
const MAX_PCR_SELECT: usize = 4;

/// `TPMS_CLOCK_INFO`: the TPM clock at the time of the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was last cleared.
    pub clock: u64,
    /// Number of TPM resets since the last clear.
    pub reset_count: u32,
    /// Number of restarts since the last reset.
    pub restart_count: u32,
    /// Whether `clock` is known not to have been rolled back.
    pub safe: bool,
}

/// One `TPMS_PCR_SELECTION`: a PCR bank and the PCRs selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    alg: u16,
    bitmap: Vec<u8>,
    pcrs: Vec<u32>,
}

impl PcrSelection {
    /// Builds a selection of `pcrs` (any order, duplicates ignored) in bank `alg`,
    /// with a bitmap of at least 3 bytes as TPMs use.
    pub fn new(alg: HashAlg, pcrs: &[u32]) -> Result<Self, Error> {
        let mut bitmap = vec![0u8; 3];
        for &pcr in pcrs {
            let byte = usize::try_from(pcr / 8).map_err(|_| Error::InvalidValue {
                what: "PCR index",
                got: u64::from(pcr),
            })?;
            if byte >= MAX_PCR_SELECT {
                return Err(Error::InvalidValue {
                    what: "PCR index",
                    got: u64::from(pcr),
                });
            }
            if byte >= bitmap.len() {
                bitmap.resize(byte + 1, 0);
            }
            if let Some(b) = bitmap.get_mut(byte) {
                *b |= 1 << (pcr % 8);
            }
        }
        Ok(Self::from_bitmap(alg.tpm_id(), bitmap))
    }

    pub(crate) fn from_bitmap(alg: u16, bitmap: Vec<u8>) -> Self {
        let mut pcrs = Vec::new();
        for (byte_index, byte) in (0u32..).zip(bitmap.iter()) {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    pcrs.push(byte_index * 8 + bit);
                }
            }
        }
        Self { alg, bitmap, pcrs }
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
        let alg = r.u16("TPMS_PCR_SELECTION.hash")?;
        let size = usize::from(r.u8("TPMS_PCR_SELECTION.sizeofSelect")?);
        if size > MAX_PCR_SELECT {
            return Err(Error::TooLarge {
                what: "TPMS_PCR_SELECTION.sizeofSelect",
                max: MAX_PCR_SELECT,
                got: size,
            });
        }
        let bitmap = r.take(size, "TPMS_PCR_SELECTION.pcrSelect")?.to_vec();
        Ok(Self::from_bitmap(alg, bitmap))
    }

    pub(crate) fn parse_list(r: &mut Reader<'_>) -> Result<Vec<Self>, Error> {
        let count = r.u32("TPML_PCR_SELECTION.count")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_PCR_BANKS {
            return Err(Error::TooLarge {
                what: "TPML_PCR_SELECTION.count",
                max: MAX_PCR_BANKS,
                got: count,
            });
        }
        (0..count).map(|_| Self::parse(r)).collect()
    }

    /// The bank's raw `TPM_ALG_ID` (it may be one this crate does not know).
    pub fn hash_alg_id(&self) -> u16 {
        self.alg
    }

    /// The bank's hash algorithm, `None` if this crate does not know it.
    pub fn hash_alg(&self) -> Option<HashAlg> {
        HashAlg::from_tpm(self.alg)
    }

    /// The selection bitmap (`pcrSelect`) as received.
    pub fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }

    /// The selected PCR indices, ascending.
    pub fn pcrs(&self) -> &[u32] {
        &self.pcrs
    }
}

/// A parsed TPM 2.0 quote: a `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`.
///
/// The raw bytes are kept: the signature covers them exactly as received.
/// Parsing alone proves nothing; use [`crate::verify_quote`] to get a
/// [`crate::VerifiedQuote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    raw: Vec<u8>,
    qualified_signer: Vec<u8>,
    extra_data: Vec<u8>,
    clock_info: ClockInfo,
    firmware_version: u64,
    pcr_selections: Vec<PcrSelection>,
    pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a marshalled `TPMS_ATTEST` that must be a quote, consuming all of `bytes`.
    ///
    /// Rejects a wrong magic, any attestation type other than `TPM_ST_ATTEST_QUOTE`,
    /// sizes beyond the specification's maxima, a `safe` flag other than 0/1,
    /// truncation, and trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("TPMS_ATTEST.magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(Error::BadMagic { got: magic });
        }
        let ty = r.u16("TPMS_ATTEST.type")?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(Error::NotAQuote { got: ty });
        }
        let qualified_signer = r.tpm2b("TPMS_ATTEST.qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("TPMS_ATTEST.extraData", MAX_DATA)?.to_vec();
        let clock = r.u64("TPMS_CLOCK_INFO.clock")?;
        let reset_count = r.u32("TPMS_CLOCK_INFO.resetCount")?;
        let restart_count = r.u32("TPMS_CLOCK_INFO.restartCount")?;
        let safe = match r.u8("TPMS_CLOCK_INFO.safe")? {
            0 => false,
            1 => true,
            other => {
                return Err(Error::InvalidValue {
                    what: "TPMS_CLOCK_INFO.safe",
                    got: u64::from(other),
                });
            }
        };
        let firmware_version = r.u64("TPMS_ATTEST.firmwareVersion")?;
        let pcr_selections = PcrSelection::parse_list(&mut r)?;
        let pcr_digest = r.tpm2b("TPMS_QUOTE_INFO.pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish("TPMS_ATTEST")?;
        Ok(Self {
            raw: bytes.to_vec(),
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            pcr_selections,
            pcr_digest,
        })
    }

    /// The message bytes exactly as received (what the signature covers).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// `qualifiedSigner`: the qualified name of the signing key (`TPM2B_NAME` contents).
    pub fn qualified_signer(&self) -> &[u8] {
        &self.qualified_signer
    }

    /// `extraData` (`TPM2B_DATA` contents): the caller-supplied nonce.
    pub fn extra_data(&self) -> &[u8] {
        &self.extra_data
    }

    /// Same as [`Quote::extra_data`]: the nonce the quote was made over.
    pub fn nonce(&self) -> &[u8] {
        &self.extra_data
    }

    /// `clockInfo`.
    pub fn clock_info(&self) -> ClockInfo {
        self.clock_info
    }

    /// `firmwareVersion` (vendor specific).
    pub fn firmware_version(&self) -> u64 {
        self.firmware_version
    }

    /// `pcrSelect`: the quoted PCR banks and indices, in the order the TPM hashed them.
    pub fn pcr_selections(&self) -> &[PcrSelection] {
        &self.pcr_selections
    }

    /// `pcrDigest`: the digest of the selected PCR values.
    pub fn pcr_digest(&self) -> &[u8] {
        &self.pcr_digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_to_indices() {
        let s = PcrSelection::from_bitmap(0x000b, vec![0xff, 0x40, 0x00]);
        assert_eq!(s.pcrs(), &[0, 1, 2, 3, 4, 5, 6, 7, 14]);
        let s = PcrSelection::new(HashAlg::Sha256, &[23, 0, 14, 14]).unwrap();
        assert_eq!(s.bitmap(), &[0x01, 0x40, 0x80]);
        assert_eq!(s.pcrs(), &[0, 14, 23]);
        assert!(PcrSelection::new(HashAlg::Sha256, &[32]).is_err());
    }
}
