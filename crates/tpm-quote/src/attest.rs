//! `TPMS_ATTEST` (TPM 2.0 Part 2 §10.12) carrying a `TPMS_QUOTE_INFO`, as returned by
//! `TPM2_Quote` and written by `tpm2_quote -m`, or a `TPMS_CERTIFY_INFO`, as returned
//! by `TPM2_Certify`; and their encoders.

use crate::alg::HashAlg;
use crate::error::Error;
use crate::reader::Reader;
use crate::writer::Writer;

/// `TPM_GENERATED_VALUE`, the magic that starts every TPM-generated attestation.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`, the attestation type of a quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ST_ATTEST_CERTIFY`, the attestation type of `TPM2_Certify`.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// Largest `TPM2B_NAME` (`sizeof(TPMU_NAME)` = a `TPMT_HA` with a SHA-512 digest).
pub(crate) const MAX_NAME: usize = 66;
/// Largest `TPM2B_DATA` (`sizeof(TPMT_HA)`).
const MAX_DATA: usize = 66;
/// Largest `TPM2B_DIGEST` (`sizeof(TPMU_HA)`).
pub(crate) const MAX_DIGEST: usize = 64;
/// Largest `TPML_PCR_SELECTION.count` (`TPM2_NUM_PCR_BANKS` in tpm2-tss).
pub(crate) const MAX_PCR_BANKS: usize = 16;
/// Largest `sizeofSelect` (`TPM2_PCR_SELECT_MAX` in tpm2-tss: 32 PCRs).
const MAX_PCR_SELECT: usize = 4;

/// `TPMS_CLOCK_INFO`: the TPM clock at the time of the attestation.
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

impl ClockInfo {
    fn parse(r: &mut Reader<'_>) -> Result<Self, Error> {
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
        Ok(Self {
            clock,
            reset_count,
            restart_count,
            safe,
        })
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.clock);
        w.u32(self.reset_count);
        w.u32(self.restart_count);
        w.u8(u8::from(self.safe));
    }
}

/// The fields every `TPMS_ATTEST` carries between its `type` and its type-specific
/// `attested` part.
///
/// Parsed values are untrusted until the attestation's signature is verified. The
/// public fields let tests and emulators build attestations with [`Quote::encode`] and
/// [`Certify::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestHeader {
    /// `qualifiedSigner`: the qualified name of the signing key (`TPM2B_NAME`
    /// contents, at most 66 bytes).
    pub qualified_signer: Vec<u8>,
    /// `extraData` (`TPM2B_DATA` contents, at most 66 bytes): the caller-supplied
    /// qualifying data (nonce).
    pub extra_data: Vec<u8>,
    /// `clockInfo`.
    pub clock_info: ClockInfo,
    /// `firmwareVersion` (vendor specific).
    pub firmware_version: u64,
}

impl AttestHeader {
    /// Reads `magic` and `type`, returning the type; the caller checks it before
    /// reading on, so a wrong type is reported before any later field.
    fn parse_magic_and_type(r: &mut Reader<'_>) -> Result<u16, Error> {
        let magic = r.u32("TPMS_ATTEST.magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(Error::BadMagic { got: magic });
        }
        r.u16("TPMS_ATTEST.type")
    }

    /// Reads the fields after `type`, up to the `attested` union.
    fn parse_rest(r: &mut Reader<'_>) -> Result<Self, Error> {
        let qualified_signer = r.tpm2b("TPMS_ATTEST.qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("TPMS_ATTEST.extraData", MAX_DATA)?.to_vec();
        let clock_info = ClockInfo::parse(r)?;
        let firmware_version = r.u64("TPMS_ATTEST.firmwareVersion")?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
        })
    }

    /// Writes `magic`, `ty` and the header fields.
    fn encode(&self, ty: u16, w: &mut Writer) -> Result<(), Error> {
        w.u32(TPM_GENERATED_VALUE);
        w.u16(ty);
        w.tpm2b(
            "TPMS_ATTEST.qualifiedSigner",
            MAX_NAME,
            &self.qualified_signer,
        )?;
        w.tpm2b("TPMS_ATTEST.extraData", MAX_DATA, &self.extra_data)?;
        self.clock_info.encode(w);
        w.u64(self.firmware_version);
        Ok(())
    }
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

    /// Writes a `TPML_PCR_SELECTION`.
    pub(crate) fn encode_list(selections: &[Self], w: &mut Writer) -> Result<(), Error> {
        let count = u32::try_from(selections.len())
            .ok()
            .filter(|_| selections.len() <= MAX_PCR_BANKS)
            .ok_or(Error::TooLarge {
                what: "TPML_PCR_SELECTION.count",
                max: MAX_PCR_BANKS,
                got: selections.len(),
            })?;
        w.u32(count);
        for sel in selections {
            let size = u8::try_from(sel.bitmap.len())
                .ok()
                .filter(|_| sel.bitmap.len() <= MAX_PCR_SELECT)
                .ok_or(Error::TooLarge {
                    what: "TPMS_PCR_SELECTION.sizeofSelect",
                    max: MAX_PCR_SELECT,
                    got: sel.bitmap.len(),
                })?;
            w.u16(sel.alg);
            w.u8(size);
            w.bytes(&sel.bitmap);
        }
        Ok(())
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
    header: AttestHeader,
    pcr_selections: Vec<PcrSelection>,
    pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a marshalled `TPMS_ATTEST` that must be a quote, consuming all of `bytes`.
    ///
    /// Rejects a wrong magic, any attestation type other than `TPM_ST_ATTEST_QUOTE`
    /// ([`Error::NotAQuote`]), sizes beyond the specification's maxima, a `safe` flag
    /// other than 0/1, truncation, and trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let ty = AttestHeader::parse_magic_and_type(&mut r)?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(Error::NotAQuote { got: ty });
        }
        let header = AttestHeader::parse_rest(&mut r)?;
        let pcr_selections = PcrSelection::parse_list(&mut r)?;
        let pcr_digest = r.tpm2b("TPMS_QUOTE_INFO.pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish("TPMS_ATTEST")?;
        Ok(Self {
            raw: bytes.to_vec(),
            header,
            pcr_selections,
            pcr_digest,
        })
    }

    /// Marshals a quote `TPMS_ATTEST` (the inverse of [`Quote::parse`]): for tests
    /// and TPM emulators, which then sign the returned bytes.
    ///
    /// `pcr_digest` is taken as given; compute it with
    /// [`crate::PcrValues::composite_digest`] using the hash of the signing scheme.
    /// Fails with [`Error::TooLarge`] if a field exceeds what [`Quote::parse`] accepts.
    pub fn encode(
        header: &AttestHeader,
        pcr_selections: &[PcrSelection],
        pcr_digest: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut w = Writer::new();
        header.encode(TPM_ST_ATTEST_QUOTE, &mut w)?;
        PcrSelection::encode_list(pcr_selections, &mut w)?;
        w.tpm2b("TPMS_QUOTE_INFO.pcrDigest", MAX_DIGEST, pcr_digest)?;
        Ok(w.finish())
    }

    /// The fields shared by all attestation types.
    pub fn header(&self) -> &AttestHeader {
        &self.header
    }

    /// The message bytes exactly as received (what the signature covers).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// `qualifiedSigner`: the qualified name of the signing key (`TPM2B_NAME` contents).
    pub fn qualified_signer(&self) -> &[u8] {
        &self.header.qualified_signer
    }

    /// `extraData` (`TPM2B_DATA` contents): the caller-supplied nonce.
    pub fn extra_data(&self) -> &[u8] {
        &self.header.extra_data
    }

    /// Same as [`Quote::extra_data`]: the nonce the quote was made over.
    pub fn nonce(&self) -> &[u8] {
        &self.header.extra_data
    }

    /// `clockInfo`.
    pub fn clock_info(&self) -> ClockInfo {
        self.header.clock_info
    }

    /// `firmwareVersion` (vendor specific).
    pub fn firmware_version(&self) -> u64 {
        self.header.firmware_version
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

/// A parsed `TPM2_Certify` attestation: a `TPMS_ATTEST` of type
/// `TPM_ST_ATTEST_CERTIFY` whose `attested` part is a `TPMS_CERTIFY_INFO`.
///
/// It states that the TPM holds an object with the Name [`Certify::name`]. The raw
/// bytes are kept: the signature covers them exactly as received. Parsing alone
/// proves nothing; use [`crate::verify_certify`] to get a [`crate::VerifiedCertify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certify {
    raw: Vec<u8>,
    header: AttestHeader,
    name: Vec<u8>,
    qualified_name: Vec<u8>,
}

impl Certify {
    /// Parses a marshalled `TPMS_ATTEST` that must be a certification, consuming all
    /// of `bytes`.
    ///
    /// Rejects a wrong magic, any attestation type other than `TPM_ST_ATTEST_CERTIFY`
    /// ([`Error::WrongAttestType`]), sizes beyond the specification's maxima, a `safe`
    /// flag other than 0/1, truncation, and trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let ty = AttestHeader::parse_magic_and_type(&mut r)?;
        if ty != TPM_ST_ATTEST_CERTIFY {
            return Err(Error::WrongAttestType {
                expected: TPM_ST_ATTEST_CERTIFY,
                got: ty,
            });
        }
        let header = AttestHeader::parse_rest(&mut r)?;
        let name = r.tpm2b("TPMS_CERTIFY_INFO.name", MAX_NAME)?.to_vec();
        let qualified_name = r
            .tpm2b("TPMS_CERTIFY_INFO.qualifiedName", MAX_NAME)?
            .to_vec();
        r.finish("TPMS_ATTEST")?;
        Ok(Self {
            raw: bytes.to_vec(),
            header,
            name,
            qualified_name,
        })
    }

    /// Marshals a certify `TPMS_ATTEST` (the inverse of [`Certify::parse`]): for tests
    /// and TPM emulators, which then sign the returned bytes with the certifying key.
    ///
    /// `name` is normally [`crate::TpmPublic::name`] of the certified object. Fails
    /// with [`Error::TooLarge`] if a field exceeds what [`Certify::parse`] accepts.
    pub fn encode(
        header: &AttestHeader,
        name: &[u8],
        qualified_name: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut w = Writer::new();
        header.encode(TPM_ST_ATTEST_CERTIFY, &mut w)?;
        w.tpm2b("TPMS_CERTIFY_INFO.name", MAX_NAME, name)?;
        w.tpm2b("TPMS_CERTIFY_INFO.qualifiedName", MAX_NAME, qualified_name)?;
        Ok(w.finish())
    }

    /// The message bytes exactly as received (what the signature covers).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The fields shared by all attestation types.
    pub fn header(&self) -> &AttestHeader {
        &self.header
    }

    /// `qualifiedSigner`: the qualified name of the signing key (`TPM2B_NAME` contents).
    pub fn qualified_signer(&self) -> &[u8] {
        &self.header.qualified_signer
    }

    /// `extraData` (`TPM2B_DATA` contents): the caller-supplied qualifying data.
    pub fn extra_data(&self) -> &[u8] {
        &self.header.extra_data
    }

    /// `clockInfo`.
    pub fn clock_info(&self) -> ClockInfo {
        self.header.clock_info
    }

    /// `firmwareVersion` (vendor specific).
    pub fn firmware_version(&self) -> u64 {
        self.header.firmware_version
    }

    /// `TPMS_CERTIFY_INFO.name`: the Name of the certified object (`nameAlg` as a
    /// big-endian u16, then the digest of its `TPMT_PUBLIC`).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// `TPMS_CERTIFY_INFO.qualifiedName`: the Qualified Name of the certified object
    /// (it depends on the object's whole ancestry, so it cannot be checked from its
    /// public area alone).
    pub fn qualified_name(&self) -> &[u8] {
        &self.qualified_name
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

    fn header() -> AttestHeader {
        AttestHeader {
            qualified_signer: [&[0x00, 0x0b][..], &[0x11; 32]].concat(),
            extra_data: b"qualifying data".to_vec(),
            clock_info: ClockInfo {
                clock: 0x0102_0304_0506_0708,
                reset_count: 9,
                restart_count: 10,
                safe: true,
            },
            firmware_version: 0x2019_0608_0000_0001,
        }
    }

    fn name(fill: u8) -> Vec<u8> {
        [&[0x00, 0x0b][..], &[fill; 32]].concat()
    }

    #[test]
    fn quote_encode_roundtrip() {
        let sels = vec![
            PcrSelection::new(HashAlg::Sha256, &[0, 7, 14]).unwrap(),
            PcrSelection::new(HashAlg::Sha1, &[23]).unwrap(),
        ];
        let bytes = Quote::encode(&header(), &sels, &[0xdd; 32]).unwrap();
        let q = Quote::parse(&bytes).unwrap();
        assert_eq!(q.raw(), bytes.as_slice());
        assert_eq!(q.header(), &header());
        assert_eq!(q.qualified_signer(), header().qualified_signer.as_slice());
        assert_eq!(q.extra_data(), b"qualifying data");
        assert_eq!(q.clock_info(), header().clock_info);
        assert_eq!(q.firmware_version(), header().firmware_version);
        assert_eq!(q.pcr_selections(), sels.as_slice());
        assert_eq!(q.pcr_digest(), &[0xdd; 32]);
        // The same bytes are not a certification.
        assert_eq!(
            Certify::parse(&bytes),
            Err(Error::WrongAttestType {
                expected: TPM_ST_ATTEST_CERTIFY,
                got: TPM_ST_ATTEST_QUOTE
            })
        );
        // Unsafe clock, no selection, empty digest.
        let mut h = header();
        h.clock_info.safe = false;
        let bytes = Quote::encode(&h, &[], &[]).unwrap();
        assert_eq!(Quote::parse(&bytes).unwrap().header(), &h);
    }

    #[test]
    fn quote_encode_errors() {
        let mut h = header();
        h.extra_data = vec![0; 67];
        assert_eq!(
            Quote::encode(&h, &[], &[]),
            Err(Error::TooLarge {
                what: "TPMS_ATTEST.extraData",
                max: 66,
                got: 67
            })
        );
        let mut h = header();
        h.qualified_signer = vec![0; 67];
        assert!(matches!(
            Quote::encode(&h, &[], &[]),
            Err(Error::TooLarge {
                what: "TPMS_ATTEST.qualifiedSigner",
                ..
            })
        ));
        assert!(matches!(
            Quote::encode(&header(), &[], &[0; 65]),
            Err(Error::TooLarge {
                what: "TPMS_QUOTE_INFO.pcrDigest",
                ..
            })
        ));
        let many = vec![PcrSelection::new(HashAlg::Sha256, &[0]).unwrap(); 17];
        assert!(matches!(
            Quote::encode(&header(), &many, &[]),
            Err(Error::TooLarge {
                what: "TPML_PCR_SELECTION.count",
                max: 16,
                got: 17
            })
        ));
        let wide = PcrSelection::from_bitmap(0x000b, vec![0; 5]);
        assert!(matches!(
            Quote::encode(&header(), &[wide], &[]),
            Err(Error::TooLarge {
                what: "TPMS_PCR_SELECTION.sizeofSelect",
                ..
            })
        ));
    }

    #[test]
    fn certify_roundtrip() {
        let bytes = Certify::encode(&header(), &name(0xaa), &name(0xbb)).unwrap();
        let c = Certify::parse(&bytes).unwrap();
        assert_eq!(c.raw(), bytes.as_slice());
        assert_eq!(c.header(), &header());
        assert_eq!(c.qualified_signer(), header().qualified_signer.as_slice());
        assert_eq!(c.extra_data(), b"qualifying data");
        assert_eq!(c.clock_info(), header().clock_info);
        assert_eq!(c.firmware_version(), header().firmware_version);
        assert_eq!(c.name(), name(0xaa).as_slice());
        assert_eq!(c.qualified_name(), name(0xbb).as_slice());
        assert_eq!(&bytes[4..6], &TPM_ST_ATTEST_CERTIFY.to_be_bytes());
        // The same bytes are not a quote.
        assert_eq!(
            Quote::parse(&bytes),
            Err(Error::NotAQuote {
                got: TPM_ST_ATTEST_CERTIFY
            })
        );
        // Empty names are structurally valid.
        let bytes = Certify::encode(&header(), &[], &[]).unwrap();
        assert!(Certify::parse(&bytes).unwrap().name().is_empty());
    }

    #[test]
    fn certify_parse_errors() {
        let good = Certify::encode(&header(), &name(0xaa), &name(0xbb)).unwrap();
        for cut in 0..good.len() {
            assert!(
                matches!(Certify::parse(&good[..cut]), Err(Error::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Certify::parse(&trailing),
            Err(Error::TrailingBytes {
                what: "TPMS_ATTEST",
                count: 1
            })
        );
        let mut magic = good.clone();
        magic[0] = 0xfe;
        assert_eq!(
            Certify::parse(&magic),
            Err(Error::BadMagic { got: 0xfe54_4347 })
        );
        // The type is checked before any later field is read.
        for ty in [0x8014u16, 0x8015, 0x8016, 0x8018, 0x801a, 0x0000] {
            let mut wrong = good[..6].to_vec();
            wrong[4..6].copy_from_slice(&ty.to_be_bytes());
            assert_eq!(
                Certify::parse(&wrong),
                Err(Error::WrongAttestType {
                    expected: 0x8017,
                    got: ty
                })
            );
        }
        let safe_at = 4 + 2 + 2 + 34 + 2 + 15 + 8 + 4 + 4;
        let mut unsafe_flag = good.clone();
        assert_eq!(unsafe_flag[safe_at], 1);
        unsafe_flag[safe_at] = 2;
        assert_eq!(
            Certify::parse(&unsafe_flag),
            Err(Error::InvalidValue {
                what: "TPMS_CLOCK_INFO.safe",
                got: 2
            })
        );
        for (n, qn, what) in [
            (vec![0; 67], vec![], "TPMS_CERTIFY_INFO.name"),
            (vec![], vec![0; 67], "TPMS_CERTIFY_INFO.qualifiedName"),
        ] {
            assert_eq!(
                Certify::encode(&header(), &n, &qn),
                Err(Error::TooLarge {
                    what,
                    max: 66,
                    got: 67
                })
            );
            // The parser refuses the same.
            let mut m = good[..safe_at + 1 + 8].to_vec();
            for v in [&n, &qn] {
                m.extend((v.len() as u16).to_be_bytes());
                m.extend(v);
            }
            assert_eq!(
                Certify::parse(&m),
                Err(Error::TooLarge {
                    what,
                    max: 66,
                    got: 67
                })
            );
        }
    }
}
