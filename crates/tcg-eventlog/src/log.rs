//! Parsing of whole logs: the header event and the `TCG_PCR_EVENT` /
//! `TCG_PCR_EVENT2` records that follow.

use tpm_quote::HashAlg;

use crate::error::Error;
use crate::event::{Event, EventType};
use crate::reader::Reader;

/// Largest number of events accepted, the header event included.
pub const MAX_EVENTS: usize = 10_000;
/// Largest `eventSize` accepted (1 MiB).
pub const MAX_EVENT_DATA: usize = 1 << 20;
/// Largest log accepted (16 MiB), trailing padding included.
pub const MAX_LOG_SIZE: usize = 16 << 20;
/// Highest PCR index accepted (PC Client TPMs have PCRs 0-23).
pub const MAX_PCR: u32 = 23;
/// Largest `numberOfAlgorithms` accepted in a `TCG_EfiSpecIDEvent`.
pub const MAX_ALGORITHMS: usize = 16;
/// Largest digest size accepted for an algorithm of the header.
const MAX_DIGEST_SIZE: u16 = 128;

/// Signature of the crypto-agile header (`TCG_EfiSpecIDEvent`).
const SPEC_ID_EVENT03: &[u8; 16] = b"Spec ID Event03\0";
/// Signature of the header of SHA-1 logs (`TCG_PCClientSpecIdEventStruct`).
const SPEC_ID_EVENT00: &[u8; 16] = b"Spec ID Event00\0";
/// Prefix of the `EV_NO_ACTION` event that records the locality of `TPM2_Startup`.
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";
/// Size of the SHA-1 digest of a `TCG_PCR_EVENT`.
const SHA1_LEN: usize = 20;

/// The two log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Every event is a `TCG_PCR_EVENT` with one SHA-1 digest (TPM 1.2 style). The first
    /// event is either a `"Spec ID Event00"` header or an ordinary event.
    Sha1,
    /// A `TCG_PCR_EVENT` header carrying a `TCG_EfiSpecIDEvent` (`"Spec ID Event03"`),
    /// then `TCG_PCR_EVENT2` records with one digest per algorithm.
    CryptoAgile,
}

/// An algorithm declared in the crypto-agile header, with its digest size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlgorithmSize {
    /// `TPM_ALG_ID`.
    pub alg_id: u16,
    /// Digest size in bytes.
    pub digest_size: u16,
}

impl AlgorithmSize {
    /// The hash algorithm, if this crate knows it.
    pub fn hash_alg(&self) -> Option<HashAlg> {
        HashAlg::from_tpm(self.alg_id)
    }
}

/// The crypto-agile header (`TCG_EfiSpecIDEvent`, signature `"Spec ID Event03"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIdEvent {
    /// `platformClass` (0 = client, 1 = server).
    pub platform_class: u32,
    /// `specVersionMinor` (always 0 here).
    pub spec_version_minor: u8,
    /// `specVersionMajor` (always 2 here).
    pub spec_version_major: u8,
    /// `specErrata`.
    pub spec_errata: u8,
    /// `uintnSize`: 1 for 32-bit `UINTN`, 2 for 64-bit.
    pub uintn_size: u8,
    /// `digestSizes`, in header order; at least one, no algorithm twice.
    pub algorithms: Vec<AlgorithmSize>,
    /// `vendorInfo`.
    pub vendor_info: Vec<u8>,
}

impl SpecIdEvent {
    /// The digest size the header declares for `alg_id`.
    pub fn digest_size(&self, alg_id: u16) -> Option<u16> {
        self.algorithms
            .iter()
            .find(|a| a.alg_id == alg_id)
            .map(|a| a.digest_size)
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    format: LogFormat,
    spec_id: Option<SpecIdEvent>,
    events: Vec<Event>,
    startup_locality: Option<u8>,
    banks: Vec<HashAlg>,
    padding: usize,
}

impl EventLog {
    /// Parses a log in either format (see [`LogFormat`]).
    ///
    /// The log ends at the end of input, or where a run of zero bytes reaches the end
    /// of input (the padding of firmware log areas). Anything else that is not a
    /// complete event is an error. The checks:
    ///
    /// - every length and count is bounded ([`MAX_LOG_SIZE`], [`MAX_EVENTS`],
    ///   [`MAX_EVENT_DATA`], [`MAX_ALGORITHMS`]) and every read is bounds-checked;
    /// - PCR indices are at most [`MAX_PCR`];
    /// - a first event of type `EV_NO_ACTION` is a header: it must be on PCR 0 with a
    ///   zero digest and carry a known signature; a `"Spec ID Event03"` header must be
    ///   version 2.0, declare 1 to [`MAX_ALGORITHMS`] distinct algorithms with the right
    ///   digest size for those this crate knows, and have no trailing bytes;
    /// - in crypto-agile logs, every event carries 1 to `numberOfAlgorithms` digests,
    ///   each of a declared algorithm and none twice (digests of algorithms this crate
    ///   does not know are skipped using the declared size);
    /// - at most one `StartupLocality` event, on PCR 0, 17 bytes, locality 0, 3 or 4,
    ///   before any event extended into PCR 0.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::Empty);
        }
        if bytes.len() > MAX_LOG_SIZE {
            return Err(Error::InputTooLarge {
                max: MAX_LOG_SIZE,
                got: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let first = read_pcr_event(&mut r, 0)?;
        let (format, spec_id) = if first.event.event_type == EventType::NoAction {
            check_header_event(&first)?;
            let signature = first.event.data.get(..16).unwrap_or(&first.event.data);
            if signature == SPEC_ID_EVENT03 {
                let header_bytes = bytes.get(..first.end).unwrap_or_default();
                let spec = parse_spec_id(Reader::at(header_bytes, first.data_offset))?;
                (LogFormat::CryptoAgile, Some(spec))
            } else if signature == SPEC_ID_EVENT00 {
                (LogFormat::Sha1, None)
            } else {
                return Err(Error::UnknownHeaderSignature {
                    offset: first.data_offset,
                    signature: signature.to_vec(),
                });
            }
        } else {
            (LogFormat::Sha1, None)
        };

        // Where the run of zero bytes that ends the input starts (found once: checking
        // the rest at every event would be quadratic).
        let zero_tail = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
        let mut events = vec![first.event];
        let mut startup_locality = None;
        let mut padding = 0;
        loop {
            let offset = r.offset();
            if r.is_empty() {
                break;
            }
            if offset >= zero_tail {
                padding = bytes.len() - offset;
                break;
            }
            if events.len() >= MAX_EVENTS {
                return Err(Error::TooManyEvents {
                    offset,
                    max: MAX_EVENTS,
                });
            }
            // Bounded by MAX_EVENTS.
            let index = u32::try_from(events.len()).unwrap_or(u32::MAX);
            let event = match &spec_id {
                Some(spec) => read_pcr_event2(&mut r, index, spec)?,
                None => read_pcr_event(&mut r, index)?.event,
            };
            if event.event_type == EventType::NoAction && event.data.starts_with(STARTUP_LOCALITY) {
                let locality = startup_locality_of(&event, &events, offset)?;
                if startup_locality.replace(locality).is_some() {
                    return Err(Error::InvalidStartupLocality {
                        offset,
                        reason: "second StartupLocality event",
                    });
                }
            }
            events.push(event);
        }

        let banks = complete_banks(format, spec_id.as_ref(), &events);
        Ok(Self {
            format,
            spec_id,
            events,
            startup_locality,
            banks,
            padding,
        })
    }

    /// The format of the log.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The crypto-agile header, `None` for SHA-1 logs.
    pub fn spec_id(&self) -> Option<&SpecIdEvent> {
        self.spec_id.as_ref()
    }

    /// Every event in log order, the header event (if any) first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The locality of a `StartupLocality` event, if the log has one.
    pub fn startup_locality(&self) -> Option<u8> {
        self.startup_locality
    }

    /// The PCR banks the log can be replayed for: SHA-1 for SHA-1 logs; for
    /// crypto-agile logs, the declared algorithms this crate knows (in header order)
    /// for which every extended event carries a digest.
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// Number of zero bytes that followed the last event (0 if none).
    pub fn padding_len(&self) -> usize {
        self.padding
    }
}

/// A `TCG_PCR_EVENT` and where its parts are.
struct PcrEvent {
    event: Event,
    /// Offset of `pcrIndex`.
    start: usize,
    /// Offset of `digest`.
    digest_offset: usize,
    /// Offset of `event` (the data).
    data_offset: usize,
    /// Offset just after the event.
    end: usize,
}

/// Reads a `TCG_PCR_EVENT`: pcrIndex, eventType, SHA-1 digest, eventSize, event.
fn read_pcr_event(r: &mut Reader<'_>, index: u32) -> Result<PcrEvent, Error> {
    let start = r.offset();
    let pcr = read_pcr(r, "TCG_PCR_EVENT.pcrIndex")?;
    let event_type = EventType::from(r.u32("TCG_PCR_EVENT.eventType")?);
    let digest_offset = r.offset();
    let digest = r.take(SHA1_LEN, "TCG_PCR_EVENT.digest")?.to_vec();
    let data = read_event_data(r, "TCG_PCR_EVENT.eventSize", "TCG_PCR_EVENT.event")?;
    let data_offset = r.offset() - data.len();
    Ok(PcrEvent {
        event: Event {
            index,
            pcr,
            event_type,
            digests: vec![(HashAlg::Sha1, digest)],
            data,
        },
        start,
        digest_offset,
        data_offset,
        end: r.offset(),
    })
}

/// Reads a `TCG_PCR_EVENT2`: pcrIndex, eventType, `TPML_DIGEST_VALUES`, eventSize,
/// event.
fn read_pcr_event2(r: &mut Reader<'_>, index: u32, spec: &SpecIdEvent) -> Result<Event, Error> {
    let pcr = read_pcr(r, "TCG_PCR_EVENT2.pcrIndex")?;
    let event_type = EventType::from(r.u32("TCG_PCR_EVENT2.eventType")?);
    let count_offset = r.offset();
    let count = r.u32("TPML_DIGEST_VALUES.count")?;
    // The header has at most MAX_ALGORITHMS entries.
    let declared = u32::try_from(spec.algorithms.len()).unwrap_or(u32::MAX);
    if count == 0 || count > declared {
        return Err(Error::DigestCountMismatch {
            offset: count_offset,
            declared,
            got: count,
        });
    }
    let mut seen = Vec::new();
    let mut digests = Vec::new();
    for _ in 0..count {
        let alg_offset = r.offset();
        let alg_id = r.u16("TPMT_HA.hashAlg")?;
        let size = spec
            .digest_size(alg_id)
            .ok_or(Error::AlgorithmNotDeclared {
                offset: alg_offset,
                alg_id,
            })?;
        if seen.contains(&alg_id) {
            return Err(Error::DuplicateDigest {
                offset: alg_offset,
                alg_id,
            });
        }
        seen.push(alg_id);
        let digest = r.take(usize::from(size), "TPMT_HA.digest")?;
        if let Some(alg) = HashAlg::from_tpm(alg_id) {
            digests.push((alg, digest.to_vec()));
        }
    }
    let data = read_event_data(r, "TCG_PCR_EVENT2.eventSize", "TCG_PCR_EVENT2.event")?;
    Ok(Event {
        index,
        pcr,
        event_type,
        digests,
        data,
    })
}

fn read_pcr(r: &mut Reader<'_>, what: &'static str) -> Result<u32, Error> {
    let offset = r.offset();
    let pcr = r.u32(what)?;
    if pcr > MAX_PCR {
        return Err(Error::PcrIndexOutOfRange { offset, pcr });
    }
    Ok(pcr)
}

/// Reads `eventSize` (named `size_what`) and the event data (named `data_what`).
fn read_event_data(
    r: &mut Reader<'_>,
    size_what: &'static str,
    data_what: &'static str,
) -> Result<Vec<u8>, Error> {
    let size_offset = r.offset();
    let size = r.u32(size_what)?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_EVENT_DATA {
        return Err(Error::TooLarge {
            offset: size_offset,
            what: size_what,
            max: MAX_EVENT_DATA as u64,
            got: size as u64,
        });
    }
    Ok(r.take(size, data_what)?.to_vec())
}

/// The header's `TCG_PCR_EVENT` must be on PCR 0 with an all-zero digest.
fn check_header_event(first: &PcrEvent) -> Result<(), Error> {
    if first.event.pcr != 0 {
        return Err(Error::InvalidHeader {
            offset: first.start,
            what: "pcrIndex of the header event (must be 0)",
            got: u64::from(first.event.pcr),
        });
    }
    let digest = first.event.digest(HashAlg::Sha1).unwrap_or_default();
    if let Some(pos) = digest.iter().position(|&b| b != 0) {
        return Err(Error::InvalidHeader {
            offset: first.digest_offset + pos,
            what: "digest of the header event (must be zero)",
            got: u64::from(digest.get(pos).copied().unwrap_or_default()),
        });
    }
    Ok(())
}

/// Parses a `TCG_EfiSpecIDEvent`; `r` spans exactly the header's event data.
fn parse_spec_id(mut r: Reader<'_>) -> Result<SpecIdEvent, Error> {
    r.take(16, "TCG_EfiSpecIDEvent.signature")?;
    let platform_class = r.u32("TCG_EfiSpecIDEvent.platformClass")?;
    let minor_offset = r.offset();
    let spec_version_minor = r.u8("TCG_EfiSpecIDEvent.specVersionMinor")?;
    let spec_version_major = r.u8("TCG_EfiSpecIDEvent.specVersionMajor")?;
    let spec_errata = r.u8("TCG_EfiSpecIDEvent.specErrata")?;
    let uintn_offset = r.offset();
    let uintn_size = r.u8("TCG_EfiSpecIDEvent.uintnSize")?;
    if spec_version_minor != 0 {
        return Err(Error::InvalidHeader {
            offset: minor_offset,
            what: "specVersionMinor (must be 0)",
            got: u64::from(spec_version_minor),
        });
    }
    if spec_version_major != 2 {
        return Err(Error::InvalidHeader {
            offset: minor_offset + 1,
            what: "specVersionMajor (must be 2)",
            got: u64::from(spec_version_major),
        });
    }
    if !matches!(uintn_size, 1 | 2) {
        return Err(Error::InvalidHeader {
            offset: uintn_offset,
            what: "uintnSize (must be 1 or 2)",
            got: u64::from(uintn_size),
        });
    }
    let count_offset = r.offset();
    let count = r.u32("TCG_EfiSpecIDEvent.numberOfAlgorithms")?;
    if count == 0 {
        return Err(Error::InvalidHeader {
            offset: count_offset,
            what: "numberOfAlgorithms (must be at least 1)",
            got: 0,
        });
    }
    if usize::try_from(count).map_or(true, |c| c > MAX_ALGORITHMS) {
        return Err(Error::TooLarge {
            offset: count_offset,
            what: "TCG_EfiSpecIDEvent.numberOfAlgorithms",
            max: MAX_ALGORITHMS as u64,
            got: u64::from(count),
        });
    }
    let mut algorithms: Vec<AlgorithmSize> = Vec::new();
    for _ in 0..count {
        let offset = r.offset();
        let alg_id = r.u16("TCG_EfiSpecIDEvent.digestSizes.algorithmId")?;
        let digest_size = r.u16("TCG_EfiSpecIDEvent.digestSizes.digestSize")?;
        if algorithms.iter().any(|a| a.alg_id == alg_id) {
            return Err(Error::InvalidHeader {
                offset,
                what: "algorithmId declared twice",
                got: u64::from(alg_id),
            });
        }
        let size_ok = match HashAlg::from_tpm(alg_id) {
            Some(alg) => usize::from(digest_size) == alg.digest_len(),
            None => (1..=MAX_DIGEST_SIZE).contains(&digest_size),
        };
        if !size_ok {
            return Err(Error::InvalidHeader {
                offset: offset + 2,
                what: "digestSize (wrong for the algorithm)",
                got: u64::from(digest_size),
            });
        }
        algorithms.push(AlgorithmSize {
            alg_id,
            digest_size,
        });
    }
    let vendor_info_size = r.u8("TCG_EfiSpecIDEvent.vendorInfoSize")?;
    let vendor_info = r
        .take(
            usize::from(vendor_info_size),
            "TCG_EfiSpecIDEvent.vendorInfo",
        )?
        .to_vec();
    r.finish("TCG_EfiSpecIDEvent")?;
    Ok(SpecIdEvent {
        platform_class,
        spec_version_minor,
        spec_version_major,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

/// Validates a `StartupLocality` event (whose data starts with the signature) found at
/// `offset` after `before`, and returns its locality.
fn startup_locality_of(event: &Event, before: &[Event], offset: usize) -> Result<u8, Error> {
    let invalid = |reason| Error::InvalidStartupLocality { offset, reason };
    if event.pcr != 0 {
        return Err(invalid("not on PCR 0"));
    }
    let [locality] = event.data.get(STARTUP_LOCALITY.len()..).unwrap_or_default() else {
        return Err(invalid("event data is not 17 bytes"));
    };
    if !matches!(locality, 0 | 3 | 4) {
        return Err(invalid("locality is not 0, 3 or 4"));
    }
    if before.iter().any(|e| e.pcr == 0 && e.is_extended()) {
        return Err(invalid("after an event extended into PCR 0"));
    }
    Ok(*locality)
}

/// See [`EventLog::banks`].
fn complete_banks(format: LogFormat, spec: Option<&SpecIdEvent>, events: &[Event]) -> Vec<HashAlg> {
    match (format, spec) {
        (LogFormat::CryptoAgile, Some(spec)) => spec
            .algorithms
            .iter()
            .filter_map(AlgorithmSize::hash_alg)
            .filter(|&alg| {
                events
                    .iter()
                    .skip(1)
                    .filter(|e| e.is_extended())
                    .all(|e| e.digest(alg).is_some())
            })
            .collect(),
        _ => vec![HashAlg::Sha1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: u16 = 0x0004;
    const SHA256: u16 = 0x000b;
    const SM3: u16 = 0x0012;

    /// `TCG_EfiSpecIDEvent` data.
    fn spec_id(algs: &[(u16, u16)], vendor: &[u8]) -> Vec<u8> {
        let mut d = SPEC_ID_EVENT03.to_vec();
        d.extend(0u32.to_le_bytes()); // platformClass
        d.extend([0, 2, 0, 2]); // minor, major, errata, uintnSize
        d.extend((algs.len() as u32).to_le_bytes());
        for (id, size) in algs {
            d.extend(id.to_le_bytes());
            d.extend(size.to_le_bytes());
        }
        d.push(vendor.len() as u8);
        d.extend(vendor);
        d
    }

    /// A `TCG_PCR_EVENT`.
    fn event1(pcr: u32, event_type: u32, digest: [u8; 20], data: &[u8]) -> Vec<u8> {
        let mut e = pcr.to_le_bytes().to_vec();
        e.extend(event_type.to_le_bytes());
        e.extend(digest);
        e.extend((data.len() as u32).to_le_bytes());
        e.extend(data);
        e
    }

    /// A `TCG_PCR_EVENT2`.
    fn event2(pcr: u32, event_type: u32, digests: &[(u16, Vec<u8>)], data: &[u8]) -> Vec<u8> {
        let mut e = pcr.to_le_bytes().to_vec();
        e.extend(event_type.to_le_bytes());
        e.extend((digests.len() as u32).to_le_bytes());
        for (id, d) in digests {
            e.extend(id.to_le_bytes());
            e.extend(d);
        }
        e.extend((data.len() as u32).to_le_bytes());
        e.extend(data);
        e
    }

    fn header(data: &[u8]) -> Vec<u8> {
        event1(0, 3, [0; 20], data)
    }

    fn agile(algs: &[(u16, u16)], events: &[Vec<u8>]) -> Vec<u8> {
        let mut log = header(&spec_id(algs, &[]));
        for e in events {
            log.extend(e);
        }
        log
    }

    /// Offset of the header's event data (the `TCG_EfiSpecIDEvent`).
    const DATA: usize = 32;

    #[test]
    fn minimal_agile_log() {
        let log = EventLog::parse(&header(&spec_id(&[(SHA256, 32)], b"vendor"))).unwrap();
        assert_eq!(log.format(), LogFormat::CryptoAgile);
        assert_eq!(log.events().len(), 1);
        let spec = log.spec_id().unwrap();
        assert_eq!(spec.vendor_info, b"vendor");
        assert_eq!(spec.uintn_size, 2);
        assert_eq!(spec.digest_size(SHA256), Some(32));
        assert_eq!(spec.digest_size(SHA1), None);
        assert_eq!(log.banks(), &[HashAlg::Sha256]);
        assert!(log.replay().is_empty());
    }

    #[test]
    fn header_errors() {
        let good = spec_id(&[(SHA1, 20), (SHA256, 32)], &[]);
        let set = |off: usize, bytes: &[u8]| {
            let mut d = good.clone();
            d[off..off + bytes.len()].copy_from_slice(bytes);
            EventLog::parse(&header(&d))
        };
        assert!(set(0, &[]).is_ok());

        // Signature.
        assert_eq!(
            set(14, b"4"),
            Err(Error::UnknownHeaderSignature {
                offset: DATA,
                signature: b"Spec ID Event04\0".to_vec()
            })
        );
        assert_eq!(
            EventLog::parse(&header(b"short")),
            Err(Error::UnknownHeaderSignature {
                offset: DATA,
                signature: b"short".to_vec()
            })
        );
        // Version and uintnSize.
        assert!(matches!(
            set(20, &[1]),
            Err(Error::InvalidHeader { offset: 52, what, got: 1 }) if what.contains("Minor")
        ));
        assert!(matches!(
            set(21, &[1]),
            Err(Error::InvalidHeader {
                offset: 53,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            set(23, &[3]),
            Err(Error::InvalidHeader {
                offset: 55,
                got: 3,
                ..
            })
        ));
        assert!(set(23, &[1]).is_ok());
        // numberOfAlgorithms: 0, over the bound, more than present.
        assert!(matches!(
            set(24, &0u32.to_le_bytes()),
            Err(Error::InvalidHeader {
                offset: 56,
                got: 0,
                ..
            })
        ));
        assert!(matches!(
            set(24, &u32::MAX.to_le_bytes()),
            Err(Error::TooLarge { offset: 56, .. })
        ));
        assert!(matches!(
            set(24, &3u32.to_le_bytes()),
            Err(Error::Truncated { .. })
        ));
        // Fewer algorithms than present: the rest is read as vendor info and leftovers.
        assert!(set(24, &1u32.to_le_bytes()).is_err());
        // Known algorithm with the wrong size; unknown one with size 0.
        assert!(matches!(
            set(30, &21u16.to_le_bytes()),
            Err(Error::InvalidHeader {
                offset: 62,
                got: 21,
                ..
            })
        ));
        assert!(matches!(
            EventLog::parse(&header(&spec_id(&[(SM3, 0)], &[]))),
            Err(Error::InvalidHeader { got: 0, .. })
        ));
        // Same algorithm twice.
        assert!(matches!(
            EventLog::parse(&header(&spec_id(&[(SHA1, 20), (SHA1, 20)], &[]))),
            Err(Error::InvalidHeader {
                offset: 64,
                got: 4,
                ..
            })
        ));
        // vendorInfoSize over the data; trailing bytes after vendorInfo.
        let last = good.len() - 1;
        assert!(matches!(set(last, &[1]), Err(Error::Truncated { .. })));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            EventLog::parse(&header(&long)),
            Err(Error::TrailingBytes {
                offset: DATA + good.len(),
                what: "TCG_EfiSpecIDEvent",
                count: 1
            })
        );
        // The header event itself: PCR and digest.
        assert!(matches!(
            EventLog::parse(&event1(1, 3, [0; 20], &good)),
            Err(Error::InvalidHeader {
                offset: 0,
                got: 1,
                ..
            })
        ));
        let mut digest = [0; 20];
        digest[5] = 9;
        assert!(matches!(
            EventLog::parse(&event1(0, 3, digest, &good)),
            Err(Error::InvalidHeader {
                offset: 13,
                got: 9,
                ..
            })
        ));
        // Every truncation of the header fails.
        let full = header(&good);
        for cut in 1..full.len() {
            assert!(EventLog::parse(&full[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(EventLog::parse(&[]), Err(Error::Empty));
    }

    #[test]
    fn event_errors() {
        let algs = [(SHA1, 20), (SHA256, 32), (SM3, 32)];
        let ok = event2(
            4,
            0x8000_0007,
            &[(SHA1, vec![1; 20]), (SHA256, vec![2; 32])],
            b"x",
        );
        let log = EventLog::parse(&agile(&algs, std::slice::from_ref(&ok))).unwrap();
        let base = log.events().len();
        assert_eq!(base, 2);
        // Offset of the second event.
        let at = header(&spec_id(&algs, &[])).len();

        // PCR index 24.
        let e = event2(24, 1, &[(SHA1, vec![1; 20])], b"");
        assert_eq!(
            EventLog::parse(&agile(&algs, &[e])),
            Err(Error::PcrIndexOutOfRange {
                offset: at,
                pcr: 24
            })
        );
        // Digest count 0 and over the declared number.
        for n in [0u32, 4, u32::MAX] {
            let mut e = ok.clone();
            e[8..12].copy_from_slice(&n.to_le_bytes());
            assert_eq!(
                EventLog::parse(&agile(&algs, &[e])),
                Err(Error::DigestCountMismatch {
                    offset: at + 8,
                    declared: 3,
                    got: n
                })
            );
        }
        // Undeclared algorithm (SHA-384 is known but not in this header).
        let e = event2(1, 1, &[(0x000c, vec![1; 48])], b"");
        assert_eq!(
            EventLog::parse(&agile(&algs, &[e])),
            Err(Error::AlgorithmNotDeclared {
                offset: at + 12,
                alg_id: 0x000c
            })
        );
        // Same algorithm twice.
        let e = event2(1, 1, &[(SHA1, vec![1; 20]), (SHA1, vec![1; 20])], b"");
        assert_eq!(
            EventLog::parse(&agile(&algs, &[e])),
            Err(Error::DuplicateDigest {
                offset: at + 34,
                alg_id: SHA1
            })
        );
        // Event data over the bound.
        let mut e = ok.clone();
        let size_at = e.len() - 5;
        e[size_at..size_at + 4].copy_from_slice(&(MAX_EVENT_DATA as u32 + 1).to_le_bytes());
        assert!(matches!(
            EventLog::parse(&agile(&algs, &[e])),
            Err(Error::TooLarge { offset, .. }) if offset == at + size_at
        ));
        // Unknown algorithm digests are skipped with their declared size.
        let e = event2(1, 1, &[(SM3, vec![7; 32]), (SHA1, vec![1; 20])], b"abc");
        let log = EventLog::parse(&agile(&algs, &[e])).unwrap();
        let ev = &log.events()[1];
        assert_eq!(ev.digests, vec![(HashAlg::Sha1, vec![1; 20])]);
        assert_eq!(ev.data, b"abc");
        assert_eq!(ev.event_type, EventType::PostCode);
        // Only SHA-1 is in every event: SHA-256 is not a complete bank.
        assert_eq!(log.banks(), &[HashAlg::Sha1]);
    }

    #[test]
    fn event_count_bound() {
        let e = event2(1, 1, &[(SHA256, vec![1; 32])], b"");
        let many: Vec<Vec<u8>> = vec![e; MAX_EVENTS];
        let bytes = agile(&[(SHA256, 32)], &many);
        assert!(matches!(
            EventLog::parse(&bytes),
            Err(Error::TooManyEvents {
                max: MAX_EVENTS,
                ..
            })
        ));
        let ok = agile(&[(SHA256, 32)], &many[1..]);
        assert_eq!(EventLog::parse(&ok).unwrap().events().len(), MAX_EVENTS);
        assert!(matches!(
            EventLog::parse(&vec![0u8; MAX_LOG_SIZE + 1]),
            Err(Error::InputTooLarge { .. })
        ));
    }

    #[test]
    fn sha1_logs() {
        // Without a header: the first event is an ordinary one.
        let mut bytes = event1(0, 8, [1; 20], b"ver");
        bytes.extend(event1(7, 4, [2; 20], &[0; 4]));
        let log = EventLog::parse(&bytes).unwrap();
        assert_eq!(log.format(), LogFormat::Sha1);
        assert!(log.spec_id().is_none());
        assert_eq!(log.events().len(), 2);
        assert_eq!(log.events()[1].event_type, EventType::Separator);
        assert_eq!(log.banks(), &[HashAlg::Sha1]);
        // With a "Spec ID Event00" header.
        let mut with_header = header(b"Spec ID Event00\0rest-of-struct");
        with_header.extend(&bytes);
        let log = EventLog::parse(&with_header).unwrap();
        assert_eq!(log.format(), LogFormat::Sha1);
        assert_eq!(log.events().len(), 3);
        assert_eq!(log.events()[2].index, 2);
        // A PCR index over 23 in a SHA-1 event.
        let mut bad = bytes.clone();
        bad.extend(event1(30, 1, [0; 20], b""));
        assert_eq!(
            EventLog::parse(&bad),
            Err(Error::PcrIndexOutOfRange {
                offset: bytes.len(),
                pcr: 30
            })
        );
    }

    #[test]
    fn startup_locality_rules() {
        let algs = [(SHA256, 32)];
        let loc = |pcr: u32, data: &[u8]| event2(pcr, 3, &[(SHA256, vec![0; 32])], data);
        let ext = |pcr: u32| event2(pcr, 1, &[(SHA256, vec![5; 32])], b"");
        let good = loc(0, b"StartupLocality\0\x03");
        let log = EventLog::parse(&agile(&algs, &[good.clone(), ext(0)])).unwrap();
        assert_eq!(log.startup_locality(), Some(3));
        for bad in [
            vec![loc(1, b"StartupLocality\0\x03")],
            vec![loc(0, b"StartupLocality\0\x02")],
            vec![loc(0, b"StartupLocality\0")],
            vec![loc(0, b"StartupLocality\0\x03\x00")],
            vec![good.clone(), good.clone()],
            vec![ext(0), good.clone()],
        ] {
            assert!(
                matches!(
                    EventLog::parse(&agile(&algs, &bad)),
                    Err(Error::InvalidStartupLocality { .. })
                ),
                "{bad:?}"
            );
        }
        // After events on other PCRs is fine.
        assert!(EventLog::parse(&agile(&algs, &[ext(1), good])).is_ok());
    }

    #[test]
    fn padding_and_garbage() {
        let algs = [(SHA256, 32)];
        let e = event2(1, 1, &[(SHA256, vec![1; 32])], b"");
        let bytes = agile(&algs, &[e]);
        for pad in [1, 3, 100] {
            let mut padded = bytes.clone();
            padded.extend(vec![0; pad]);
            let log = EventLog::parse(&padded).unwrap();
            assert_eq!(log.events().len(), 2);
            assert_eq!(log.padding_len(), pad);
        }
        let mut garbage = bytes.clone();
        garbage.extend([0, 0, 0, 0, 0xff]);
        assert!(EventLog::parse(&garbage).is_err());
        let mut garbage = bytes.clone();
        garbage.push(1);
        assert_eq!(
            EventLog::parse(&garbage).map_err(|e| e.offset()),
            Err(bytes.len())
        );
    }

    #[test]
    fn long_zero_runs() {
        // All-zero SHA-1 events (PCR 0, EV_PREBOOT_CERT, zero digest, no data) followed by
        // one non-zero byte are events, not padding; parsing them stays linear.
        let mut bytes = event1(0, 8, [1; 20], b"v");
        let first = bytes.len();
        bytes.extend(vec![0u8; 32 * 5000]);
        let padded = EventLog::parse(&bytes).unwrap();
        assert_eq!(padded.events().len(), 1);
        assert_eq!(padded.padding_len(), 32 * 5000);
        bytes.push(1);
        assert_eq!(
            EventLog::parse(&bytes),
            Err(Error::Truncated {
                offset: first + 32 * 5000,
                what: "TCG_PCR_EVENT.pcrIndex",
                need: 4,
                got: 1
            })
        );
        let mut bytes = event1(0, 8, [1; 20], b"v");
        bytes.extend(vec![0u8; 32 * MAX_EVENTS]);
        bytes.push(1);
        assert!(matches!(
            EventLog::parse(&bytes),
            Err(Error::TooManyEvents { .. })
        ));
    }
}
