//! The quote blob of Microsoft's `az-snp-vtpm` / `az-tdx-vtpm` crates
//! (`azure-cvm-tooling`): `bincode` 1.x serialisation of
//! `struct Quote { signature: Vec<u8>, message: Vec<u8>, pcrs: Vec<[u8; 32]> }`.
//!
//! Layout: u64 LE length + signature bytes, u64 LE length + message bytes, u64 LE
//! count + `count` × 32-byte SHA-256 PCR values (PCR 0, 1, ...). The signature is a
//! plain RSASSA-PKCS1-v1_5/SHA-256 signature by the vTPM attestation key (`HCLAkPub`).

use crate::alg::HashAlg;
use crate::error::Error;
use crate::pcr::{MAX_PCR_INDEX, PcrValues};
use crate::reader::Reader;
use crate::signature::Signature;

/// Largest signature accepted (an RSA-8192 signature).
const MAX_SIGNATURE: usize = 1024;
/// Largest message accepted (far above any `TPMS_ATTEST`).
const MAX_MESSAGE: usize = 4096;

/// An Azure vTPM quote blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureVtpmQuote {
    signature: Vec<u8>,
    message: Vec<u8>,
    pcrs: Vec<[u8; 32]>,
}

impl AzureVtpmQuote {
    /// Parses the bincode blob (e.g. `quote.bin` in azure-cvm-tooling and trustee
    /// test data), consuming all of `bytes`.
    pub fn parse_bincode(bytes: &[u8]) -> Result<Self, Error> {
        fn len(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<usize, Error> {
            let n = r.u64_le(what)?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or(Error::TooLarge {
                    what,
                    max,
                    got: usize::try_from(n).unwrap_or(usize::MAX),
                })
        }
        let mut r = Reader::new(bytes);
        let n = len(&mut r, "vTPM quote signature length", MAX_SIGNATURE)?;
        let signature = r.take(n, "vTPM quote signature")?.to_vec();
        let n = len(&mut r, "vTPM quote message length", MAX_MESSAGE)?;
        let message = r.take(n, "vTPM quote message")?.to_vec();
        let max_pcrs = usize::try_from(MAX_PCR_INDEX).unwrap_or(0) + 1;
        let n = len(&mut r, "vTPM quote PCR count", max_pcrs)?;
        let mut pcrs = Vec::with_capacity(n);
        for _ in 0..n {
            let pcr = r.take(32, "vTPM quote PCR value")?;
            let value = <[u8; 32]>::try_from(pcr).map_err(|_| Error::Truncated {
                what: "vTPM quote PCR value",
                need: 32,
                got: pcr.len(),
            })?;
            pcrs.push(value);
        }
        r.finish("vTPM quote blob")?;
        Ok(Self {
            signature,
            message,
            pcrs,
        })
    }

    /// The raw signature bytes.
    pub fn signature_bytes(&self) -> &[u8] {
        &self.signature
    }

    /// The signature as a plain RSASSA-PKCS1-v1_5/SHA-256 [`Signature`].
    pub fn signature(&self) -> Signature {
        Signature::from_plain_rsa(&self.signature)
    }

    /// The `TPMS_ATTEST` message bytes.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// The SHA-256 PCR values, PCR 0 first.
    pub fn pcrs_sha256(&self) -> &[[u8; 32]] {
        &self.pcrs
    }

    /// The PCR values as [`PcrValues`] (bank SHA-256, indices 0..n).
    pub fn pcr_values(&self) -> Result<PcrValues, Error> {
        let mut v = PcrValues::new();
        v.insert_bank(HashAlg::Sha256, &self.pcrs)?;
        Ok(v)
    }
}
