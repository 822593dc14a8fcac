//! PCR values supplied alongside a quote, and the quote's PCR composite digest.

use std::collections::BTreeMap;

use crate::alg::HashAlg;
use crate::attest::{MAX_PCR_BANKS, PcrSelection};
use crate::error::Error;
use crate::reader::Reader;

/// PCR indices accepted: 0..32, the range a 4-byte `pcrSelect` bitmap can name.
pub const MAX_PCR_INDEX: u32 = 31;
/// Largest number of `TPML_DIGEST` lists in a tpm2-tools PCR file (`TPM2_MAX_PCRS`).
const MAX_DIGEST_LISTS: usize = 32;
/// Largest `TPML_DIGEST.count`.
const MAX_DIGESTS_PER_LIST: usize = 8;

/// PCR values: a digest per (bank, PCR index).
///
/// Values are untrusted claims until a verified quote's `pcrDigest` binds them
/// (see [`crate::verify_quote`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrValues {
    map: BTreeMap<(HashAlg, u32), Vec<u8>>,
}

impl PcrValues {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets PCR `index` of bank `alg`, returning the previous value. The digest must
    /// be exactly the bank's digest size and `index` at most [`MAX_PCR_INDEX`].
    pub fn insert(
        &mut self,
        alg: HashAlg,
        index: u32,
        digest: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        if index > MAX_PCR_INDEX {
            return Err(Error::InvalidValue {
                what: "PCR index",
                got: u64::from(index),
            });
        }
        if digest.len() != alg.digest_len() {
            return Err(Error::PcrValueSize {
                alg,
                index,
                expected: alg.digest_len(),
                got: digest.len(),
            });
        }
        Ok(self.map.insert((alg, index), digest.to_vec()))
    }

    /// Sets PCRs 0, 1, 2, ... of bank `alg` from `values` in order (e.g. the 24 SHA-256
    /// PCRs that Azure's vTPM evidence carries).
    pub fn insert_bank<I, T>(&mut self, alg: HashAlg, values: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        for (index, value) in (0u32..).zip(values) {
            self.insert(alg, index, value.as_ref())?;
        }
        Ok(())
    }

    /// The value of PCR `index` in bank `alg`, if present.
    pub fn get(&self, alg: HashAlg, index: u32) -> Option<&[u8]> {
        self.map.get(&(alg, index)).map(Vec::as_slice)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All values as (bank, index, digest), ordered by bank then index.
    pub fn iter(&self) -> impl Iterator<Item = (HashAlg, u32, &[u8])> {
        self.map.iter().map(|(&(a, i), v)| (a, i, v.as_slice()))
    }

    /// Parses the JSON form `{"sha256": {"0": "<hex>", "1": "<hex>", ...}, "sha1": {...}}`.
    ///
    /// Bank names are those of tpm2-tools (`sha1`, `sha256`, `sha384`, `sha512`);
    /// indices are decimal strings; values are hex digests of the bank's size.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| Error::Json {
            reason: e.to_string(),
        })?;
        Self::from_json_value(&value)
    }

    /// Same as [`PcrValues::from_json_str`] on an already parsed JSON value.
    pub fn from_json_value(value: &serde_json::Value) -> Result<Self, Error> {
        let json_err = |reason: String| Error::Json { reason };
        let banks = value
            .as_object()
            .ok_or_else(|| json_err("top level must be an object of banks".into()))?;
        let mut out = Self::new();
        for (bank, pcrs) in banks {
            let alg = HashAlg::from_name(bank)
                .ok_or_else(|| json_err(format!("unknown PCR bank {bank:?}")))?;
            let pcrs = pcrs
                .as_object()
                .ok_or_else(|| json_err(format!("bank {bank:?} must be an object")))?;
            for (index, hex) in pcrs {
                let valid_index = !index.is_empty()
                    && index.bytes().all(|b| b.is_ascii_digit())
                    && (index == "0" || !index.starts_with('0'));
                let index_num = index
                    .parse::<u32>()
                    .ok()
                    .filter(|_| valid_index)
                    .ok_or_else(|| json_err(format!("bad PCR index {index:?} in {bank}")))?;
                let hex = hex
                    .as_str()
                    .ok_or_else(|| json_err(format!("{bank}:{index} must be a hex string")))?;
                let digest = decode_hex(hex).ok_or_else(|| Error::Hex {
                    what: format!("PCR {bank}:{index}"),
                })?;
                out.insert(alg, index_num, &digest)?;
            }
        }
        Ok(out)
    }

    /// Parses what `tpm2_pcrread -o FILE` writes by default (`-F values`): the selected
    /// digests concatenated, bank by bank in `selections` order, PCRs ascending, with
    /// no framing. The file does not say what it holds, so the caller passes the
    /// selection that was read (usually the quote's [`crate::Quote::pcr_selections`]).
    pub fn from_tpm2_pcrread_values(
        selections: &[PcrSelection],
        bytes: &[u8],
    ) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let mut out = Self::new();
        for (alg, index) in selected(selections)? {
            let digest = r.take(alg.digest_len(), "PCR value")?;
            out.insert(alg, index, digest)?;
        }
        r.finish("PCR values")?;
        Ok(out)
    }

    /// Parses `tpm2_pcrread -F marshaled -o FILE` (also `tpm2_quote -F marshaled -o`):
    /// a TSS-marshalled `TPML_PCR_SELECTION`, a big-endian u32 count, then that many
    /// `TPML_DIGEST`s whose digests follow the selection order.
    ///
    /// The `serialized` format (tpm2_quote's default for `-o`) is a dump of C
    /// structs in host byte order with compiler padding and is not supported.
    pub fn from_tpm2_pcrread_marshaled(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let selections = PcrSelection::parse_list(&mut r)?;
        let lists = usize::try_from(r.u32("PCR digest list count")?).unwrap_or(usize::MAX);
        if lists > MAX_DIGEST_LISTS {
            return Err(Error::TooLarge {
                what: "PCR digest list count",
                max: MAX_DIGEST_LISTS,
                got: lists,
            });
        }
        let mut digests = Vec::new();
        for _ in 0..lists {
            let count = usize::try_from(r.u32("TPML_DIGEST.count")?).unwrap_or(usize::MAX);
            if count > MAX_DIGESTS_PER_LIST {
                return Err(Error::TooLarge {
                    what: "TPML_DIGEST.count",
                    max: MAX_DIGESTS_PER_LIST,
                    got: count,
                });
            }
            for _ in 0..count {
                digests.push(r.tpm2b("TPML_DIGEST.digests", 64)?);
            }
        }
        r.finish("tpm2-tools marshaled PCR file")?;
        let slots = selected(&selections)?;
        if slots.len() != digests.len() {
            return Err(Error::InvalidValue {
                what: "number of PCR digests (does not match the selection)",
                got: u64::try_from(digests.len()).unwrap_or(u64::MAX),
            });
        }
        let mut out = Self::new();
        for ((alg, index), digest) in slots.into_iter().zip(digests) {
            out.insert(alg, index, digest)?;
        }
        Ok(out)
    }

    /// The PCR composite digest a TPM puts in `TPMS_QUOTE_INFO.pcrDigest`:
    /// `hash(value_1 || value_2 || ...)` over the selected PCRs, bank by bank in
    /// `selections` order and PCR index ascending within a bank.
    ///
    /// `hash` is the hash of the signing scheme (`TPM2_Quote` computes the digest with
    /// it), which is not necessarily the bank's hash.
    pub fn composite_digest(
        &self,
        selections: &[PcrSelection],
        hash: HashAlg,
    ) -> Result<Vec<u8>, Error> {
        let mut ctx = aws_lc_rs::digest::Context::new(hash.aws_algorithm());
        for (alg, index) in selected(selections)? {
            ctx.update(
                self.get(alg, index)
                    .ok_or(Error::MissingPcr { alg, index })?,
            );
        }
        Ok(ctx.finish().as_ref().to_vec())
    }

    /// Only the values named by `selections` (fails if one is missing).
    pub fn subset(&self, selections: &[PcrSelection]) -> Result<Self, Error> {
        let mut out = Self::new();
        for (alg, index) in selected(selections)? {
            let v = self
                .get(alg, index)
                .ok_or(Error::MissingPcr { alg, index })?;
            out.insert(alg, index, v)?;
        }
        Ok(out)
    }
}

/// The (bank, index) pairs a selection list names, in TPM hashing order.
fn selected(selections: &[PcrSelection]) -> Result<Vec<(HashAlg, u32)>, Error> {
    if selections.len() > MAX_PCR_BANKS {
        return Err(Error::TooLarge {
            what: "TPML_PCR_SELECTION.count",
            max: MAX_PCR_BANKS,
            got: selections.len(),
        });
    }
    let mut out = Vec::new();
    for sel in selections {
        let alg = sel.hash_alg().ok_or(Error::UnsupportedAlgorithm {
            what: "PCR bank",
            id: sel.hash_alg_id(),
        })?;
        out.extend(sel.pcrs().iter().map(|&i| (alg, i)));
    }
    Ok(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00fFa1"), Some(vec![0, 0xff, 0xa1]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex(""), Some(vec![]));
    }

    #[test]
    fn json_strictness() {
        let ok = format!(
            r#"{{"sha256": {{"0": "{}", "23": "{}"}}}}"#,
            "00".repeat(32),
            "ff".repeat(32)
        );
        let v = PcrValues::from_json_str(&ok).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.get(HashAlg::Sha256, 23), Some(&[0xff; 32][..]));
        for bad in [
            r#"[]"#.to_string(),
            r#"{"md5": {}}"#.to_string(),
            format!(r#"{{"sha256": {{"01": "{}"}}}}"#, "00".repeat(32)),
            format!(r#"{{"sha256": {{"+1": "{}"}}}}"#, "00".repeat(32)),
            format!(r#"{{"sha256": {{"32": "{}"}}}}"#, "00".repeat(32)),
            format!(r#"{{"sha256": {{"1": "{}"}}}}"#, "00".repeat(20)),
            r#"{"sha256": {"1": "xyz"}}"#.to_string(),
            r#"{"sha256": {"1": 5}}"#.to_string(),
            "not json".to_string(),
        ] {
            assert!(PcrValues::from_json_str(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn composite_and_missing() {
        let mut v = PcrValues::new();
        v.insert(HashAlg::Sha1, 0, &[1; 20]).unwrap();
        v.insert(HashAlg::Sha256, 3, &[2; 32]).unwrap();
        let sels = vec![
            PcrSelection::new(HashAlg::Sha256, &[3]).unwrap(),
            PcrSelection::new(HashAlg::Sha1, &[0]).unwrap(),
        ];
        let mut concat = vec![2u8; 32];
        concat.extend([1u8; 20]);
        assert_eq!(
            v.composite_digest(&sels, HashAlg::Sha384).unwrap(),
            HashAlg::Sha384.digest(&concat)
        );
        let sels = vec![PcrSelection::new(HashAlg::Sha256, &[3, 4]).unwrap()];
        assert_eq!(
            v.composite_digest(&sels, HashAlg::Sha256),
            Err(Error::MissingPcr {
                alg: HashAlg::Sha256,
                index: 4
            })
        );
        let unknown = vec![PcrSelection::from_bitmap(0x0012, vec![1])];
        assert!(matches!(
            v.composite_digest(&unknown, HashAlg::Sha256),
            Err(Error::UnsupportedAlgorithm { id: 0x0012, .. })
        ));
    }

    #[test]
    fn pcrread_formats() {
        let sels = vec![
            PcrSelection::new(HashAlg::Sha256, &[0, 2]).unwrap(),
            PcrSelection::new(HashAlg::Sha1, &[1]).unwrap(),
        ];
        let mut values = vec![0xa0; 32];
        values.extend([0xa2; 32]);
        values.extend([0xb1; 20]);
        let v = PcrValues::from_tpm2_pcrread_values(&sels, &values).unwrap();
        assert_eq!(v.get(HashAlg::Sha256, 2), Some(&[0xa2; 32][..]));
        assert_eq!(v.get(HashAlg::Sha1, 1), Some(&[0xb1; 20][..]));
        assert!(PcrValues::from_tpm2_pcrread_values(&sels, &values[1..]).is_err());
        let mut extra = values.clone();
        extra.push(0);
        assert!(PcrValues::from_tpm2_pcrread_values(&sels, &extra).is_err());

        // Marshaled: selection, 2 lists (2 digests + 1 digest).
        let mut m = vec![
            0, 0, 0, 2, 0x00, 0x0b, 3, 0b101, 0, 0, 0x00, 0x04, 3, 0b10, 0, 0,
        ];
        m.extend([0, 0, 0, 2]);
        m.extend([0, 0, 0, 2, 0, 32]);
        m.extend([0xa0; 32]);
        m.extend([0, 32]);
        m.extend([0xa2; 32]);
        m.extend([0, 0, 0, 1, 0, 20]);
        m.extend([0xb1; 20]);
        assert_eq!(PcrValues::from_tpm2_pcrread_marshaled(&m).unwrap(), v);
        for cut in 0..m.len() {
            assert!(PcrValues::from_tpm2_pcrread_marshaled(&m[..cut]).is_err());
        }
        // A digest of the wrong size for its bank.
        let mut wrong = m.clone();
        let last_size = wrong.len() - 22;
        wrong[last_size + 1] = 19;
        wrong.pop();
        assert!(PcrValues::from_tpm2_pcrread_marshaled(&wrong).is_err());
    }
}
