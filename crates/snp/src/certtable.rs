//! The certificate table of an extended attestation report (`SNP_GET_EXT_REPORT`).
//!
//! The host may hand the guest the certificates that endorse its report together with
//! the report (GHCB specification, AMD publication 56421, "SNP Extended Guest Request").
//! The buffer starts with a table of 24-byte entries:
//!
//! | bytes | field |
//! |---|---|
//! | 0–15 | GUID naming the certificate |
//! | 16–19 | offset of the data from the start of the table (little-endian `u32`) |
//! | 20–23 | length of the data (little-endian `u32`) |
//!
//! The table ends with an entry of 24 zero bytes; the data follow it. Whatever follows the
//! last piece of data (usually zero padding to a page) is ignored.
//!
//! GUIDs are stored in RFC 4122 byte order, the bytes in the order the hexadecimal text
//! reads (`63da758d-…` is stored `63 da 75 8d …`), as the hosts that fill the table
//! (virtee/sev, QEMU) and the guests that read it (go-sev-guest, virtee/sev) do.
//!
//! The buffer comes from the untrusted host, so [`CertTable::parse`] checks every offset
//! and length, and rejects tables without terminator, duplicate GUIDs, data that overlap
//! each other or the table, and more than [`MAX_ENTRIES`] entries. Nothing in the table
//! is trusted by being there: the certificates it carries still have to be verified.

use std::fmt;
use std::str::FromStr;

/// Size of one table entry.
pub const ENTRY_LEN: usize = 24;

/// The most entries a table may have (not counting the terminator). The GHCB
/// specification defines five GUIDs; a host has no reason to send dozens.
pub const MAX_ENTRIES: usize = 32;

/// An error parsing or building a certificate table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// The buffer ends inside an entry.
    #[error(
        "certificate table truncated: entry {index} at byte {at} needs 24 bytes, {available} left"
    )]
    Truncated {
        /// Index of the incomplete entry.
        index: usize,
        /// Its byte offset.
        at: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// The buffer ends exactly after the last entry, without the all-zero terminator.
    #[error("certificate table has no all-zero terminator after {entries} entries")]
    MissingTerminator {
        /// Entries read before the buffer ended.
        entries: usize,
    },
    /// More entries than [`MAX_ENTRIES`].
    #[error("certificate table has more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// An entry with the nil GUID that is not the terminator (non-zero offset or length).
    #[error(
        "certificate table entry {index} has the nil GUID but offset {offset} and length {length}"
    )]
    NilGuid {
        /// Index of the entry.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// An entry with no data.
    #[error("certificate table entry {index} ({guid}) has length 0")]
    EmptyEntry {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
    },
    /// An entry whose data lie (partly) outside the buffer.
    #[error(
        "certificate table entry {index} ({guid}) points outside the buffer: offset {offset} + length {length} > {buffer_len}"
    )]
    OutOfBounds {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// Size of the buffer.
        buffer_len: usize,
    },
    /// An entry whose data start inside the table itself.
    #[error(
        "certificate table entry {index} ({guid}) has offset {offset} inside the table ({table_len} bytes)"
    )]
    OverlapsTable {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
        /// Its offset.
        offset: u32,
        /// Size of the table including the terminator.
        table_len: usize,
    },
    /// Two entries whose data overlap.
    #[error("certificate table entries {first} and {second} have overlapping data")]
    OverlappingEntries {
        /// Index of one entry.
        first: usize,
        /// Index of the other.
        second: usize,
    },
    /// The same GUID twice.
    #[error("certificate table has GUID {guid} twice (entries {first} and {second})")]
    DuplicateGuid {
        /// The GUID.
        guid: Guid,
        /// Index of its first entry.
        first: usize,
        /// Index of its second entry.
        second: usize,
    },
    /// A table too large for 32-bit offsets (when building one).
    #[error("certificate table of {size} bytes does not fit 32-bit offsets")]
    TooLarge {
        /// The size it would have.
        size: usize,
    },
    /// Text that is not a GUID.
    #[error("invalid GUID {0:?} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    InvalidGuid(String),
}

/// A GUID, held in the table's (RFC 4122) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The nil GUID (the terminator's).
    pub const NIL: Guid = Guid([0; 16]);
    /// AMD Root Key certificate: `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
    pub const ARK: Guid = Guid([
        0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0,
        0xae,
    ]);
    /// AMD SEV Key certificate (also used for the ASVK):
    /// `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
    pub const ASK: Guid = Guid([
        0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7,
        0x82,
    ]);
    /// VCEK certificate: `63da758d-e664-4564-adc5-f4b93be8accd`.
    pub const VCEK: Guid = Guid([
        0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ]);
    /// VLEK certificate: `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
    pub const VLEK: Guid = Guid([
        0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8,
        0xa1,
    ]);
    /// Certificate revocation list(s): `92f81bc3-5811-4d3d-97ff-d19f88dc67ea`.
    pub const CRL: Guid = Guid([
        0x92, 0xf8, 0x1b, 0xc3, 0x58, 0x11, 0x4d, 0x3d, 0x97, 0xff, 0xd1, 0x9f, 0x88, 0xdc, 0x67,
        0xea,
    ]);

    /// A GUID from its 16 bytes in table order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Guid(bytes)
    }

    /// The 16 bytes in table order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is the nil GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The kind of certificate this GUID names, if it is one the GHCB specification defines.
    pub fn kind(&self) -> Option<CertKind> {
        CertKind::ALL.into_iter().find(|k| k.guid() == *self)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(kind) => write!(f, "Guid({self} {kind:?})"),
            None => write!(f, "Guid({self})"),
        }
    }
}

impl FromStr for Guid {
    type Err = CertTableError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CertTableError::InvalidGuid(s.to_owned());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(groups.concat(), &mut bytes).map_err(|_| invalid())?;
        Ok(Guid(bytes))
    }
}

/// The certificates the GHCB specification names in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (or ASVK).
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// Certificate revocation list(s).
    Crl,
}

impl CertKind {
    /// All kinds.
    pub const ALL: [CertKind; 5] = [
        CertKind::Ark,
        CertKind::Ask,
        CertKind::Vcek,
        CertKind::Vlek,
        CertKind::Crl,
    ];

    /// The GUID of this kind.
    pub fn guid(self) -> Guid {
        match self {
            CertKind::Ark => Guid::ARK,
            CertKind::Ask => Guid::ASK,
            CertKind::Vcek => Guid::VCEK,
            CertKind::Vlek => Guid::VLEK,
            CertKind::Crl => Guid::CRL,
        }
    }
}

/// One certificate (or other blob) from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// What it is.
    pub guid: Guid,
    /// Its bytes (a DER certificate for the known certificate GUIDs).
    pub data: Vec<u8>,
}

/// A parsed certificate table: its entries in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertTable {
    entries: Vec<CertEntry>,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

impl CertTable {
    /// A table of the given entries, checked as [`CertTable::parse`] checks a buffer
    /// (non-nil, unique GUIDs, non-empty data, at most [`MAX_ENTRIES`]).
    pub fn new(entries: Vec<CertEntry>) -> Result<Self, CertTableError> {
        if entries.len() > MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries { max: MAX_ENTRIES });
        }
        for (index, e) in entries.iter().enumerate() {
            if e.guid.is_nil() {
                return Err(CertTableError::NilGuid {
                    index,
                    offset: 0,
                    length: u32::try_from(e.data.len()).unwrap_or(u32::MAX),
                });
            }
            if e.data.is_empty() {
                return Err(CertTableError::EmptyEntry {
                    index,
                    guid: e.guid,
                });
            }
            if let Some(first) = entries[..index].iter().position(|o| o.guid == e.guid) {
                return Err(CertTableError::DuplicateGuid {
                    guid: e.guid,
                    first,
                    second: index,
                });
            }
        }
        Ok(CertTable { entries })
    }

    /// Parses the certificate buffer of an extended report. An empty buffer is an empty
    /// table (the host supplied no certificates).
    pub fn parse(buf: &[u8]) -> Result<Self, CertTableError> {
        if buf.is_empty() {
            return Ok(CertTable::default());
        }
        // (guid, offset, length) of each entry before the terminator.
        let mut raw: Vec<(Guid, u32, u32)> = Vec::new();
        let mut at = 0usize;
        loop {
            let index = raw.len();
            let Some(entry) = buf.get(at..at + ENTRY_LEN) else {
                let available = buf.len() - at;
                return Err(if available == 0 {
                    CertTableError::MissingTerminator { entries: index }
                } else {
                    CertTableError::Truncated {
                        index,
                        at,
                        available,
                    }
                });
            };
            let mut g = [0u8; 16];
            g.copy_from_slice(&entry[..16]);
            let guid = Guid(g);
            let offset = read_u32(entry, 16);
            let length = read_u32(entry, 20);
            at += ENTRY_LEN;
            if guid.is_nil() {
                if offset == 0 && length == 0 {
                    break;
                }
                return Err(CertTableError::NilGuid {
                    index,
                    offset,
                    length,
                });
            }
            if index == MAX_ENTRIES {
                return Err(CertTableError::TooManyEntries { max: MAX_ENTRIES });
            }
            raw.push((guid, offset, length));
        }
        let table_len = at;

        let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(raw.len());
        for (index, &(guid, offset, length)) in raw.iter().enumerate() {
            if let Some(first) = raw[..index].iter().position(|o| o.0 == guid) {
                return Err(CertTableError::DuplicateGuid {
                    guid,
                    first,
                    second: index,
                });
            }
            if length == 0 {
                return Err(CertTableError::EmptyEntry { index, guid });
            }
            let start = offset as usize;
            let end = start.checked_add(length as usize);
            let Some(end) = end.filter(|&e| e <= buf.len()) else {
                return Err(CertTableError::OutOfBounds {
                    index,
                    guid,
                    offset,
                    length,
                    buffer_len: buf.len(),
                });
            };
            if start < table_len {
                return Err(CertTableError::OverlapsTable {
                    index,
                    guid,
                    offset,
                    table_len,
                });
            }
            ranges.push((start, end, index));
        }
        let mut sorted = ranges.clone();
        sorted.sort_unstable();
        for (a, b) in sorted.iter().zip(sorted.iter().skip(1)) {
            if b.0 < a.1 {
                return Err(CertTableError::OverlappingEntries {
                    first: a.2.min(b.2),
                    second: a.2.max(b.2),
                });
            }
        }

        let entries = raw
            .iter()
            .zip(&ranges)
            .map(|(&(guid, _, _), &(start, end, _))| CertEntry {
                guid,
                data: buf[start..end].to_vec(),
            })
            .collect();
        Ok(CertTable { entries })
    }

    /// The entries in table order.
    pub fn entries(&self) -> &[CertEntry] {
        &self.entries
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The data filed under `guid`.
    pub fn get(&self, guid: Guid) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.guid == guid)
            .map(|e| e.data.as_slice())
    }

    /// The data of a certificate kind the specification names.
    pub fn get_kind(&self, kind: CertKind) -> Option<&[u8]> {
        self.get(kind.guid())
    }

    /// The buffer a host would hand the guest: the entries, the terminator, then the data
    /// in entry order. An empty table is an empty buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CertTableError> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let table_len = (self.entries.len() + 1) * ENTRY_LEN;
        let size = self
            .entries
            .iter()
            .fold(table_len, |acc, e| acc.saturating_add(e.data.len()));
        if u32::try_from(size).is_err() {
            return Err(CertTableError::TooLarge { size });
        }
        let mut out = Vec::with_capacity(size);
        let mut offset = table_len;
        for e in &self.entries {
            out.extend_from_slice(e.guid.as_bytes());
            // Both fit: `size` fits a u32 and bounds every offset and length.
            out.extend_from_slice(&(offset as u32).to_le_bytes());
            out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
            offset += e.data.len();
        }
        out.extend_from_slice(&[0u8; ENTRY_LEN]);
        for e in &self.entries {
            out.extend_from_slice(&e.data);
        }
        Ok(out)
    }
}

/// Fuzzing entry point: parsing arbitrary bytes must not panic, and a table that parses
/// must survive a write/parse round trip unchanged.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(table) = CertTable::parse(data) {
        let rebuilt = CertTable::new(table.entries.clone());
        assert_eq!(
            rebuilt.as_ref(),
            Ok(&table),
            "parsed table fails its own checks"
        );
        if let Ok(bytes) = table.to_bytes() {
            assert_eq!(
                CertTable::parse(&bytes).as_ref(),
                Ok(&table),
                "round trip changed the table"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CertTable {
        CertTable::new(vec![
            CertEntry {
                guid: Guid::ARK,
                data: vec![1; 25],
            },
            CertEntry {
                guid: Guid::ASK,
                data: vec![2; 25],
            },
            CertEntry {
                guid: Guid::VCEK,
                data: vec![5; 15],
            },
            CertEntry {
                guid: "fbb6ed74-e73e-44ab-8893-4252792d737a".parse().unwrap(),
                data: vec![7; 6],
            },
        ])
        .unwrap()
    }

    /// The layout virtee/sev's host code writes for the same four entries.
    #[rustfmt::skip]
    const VIRTEE_LAYOUT: [u8; 191] = [
        192, 180, 6, 164, 168, 3, 73, 82, 151, 67, 63, 182, 1, 76, 208, 174, 120, 0, 0, 0,
        25, 0, 0, 0, 74, 183, 179, 121, 187, 172, 79, 228, 160, 47, 5, 174, 243, 39, 199,
        130, 145, 0, 0, 0, 25, 0, 0, 0, 99, 218, 117, 141, 230, 100, 69, 100, 173, 197,
        244, 185, 59, 232, 172, 205, 170, 0, 0, 0, 15, 0, 0, 0, 251, 182, 237, 116, 231,
        62, 68, 171, 136, 147, 66, 82, 121, 45, 115, 122, 185, 0, 0, 0, 6, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2,
        2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
        5, 5, 5, 7, 7, 7, 7, 7, 7,
    ];

    fn entry(guid: Guid, offset: u32, length: u32) -> Vec<u8> {
        let mut e = guid.as_bytes().to_vec();
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&length.to_le_bytes());
        e
    }

    #[test]
    fn guid_text_and_bytes() {
        assert_eq!(
            Guid::VCEK.to_string(),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
        assert_eq!(
            Guid::VLEK.to_string(),
            "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
        );
        assert_eq!(
            Guid::ASK.to_string(),
            "4ab7b379-bbac-4fe4-a02f-05aef327c782"
        );
        assert_eq!(
            Guid::ARK.to_string(),
            "c0b406a4-a803-4952-9743-3fb6014cd0ae"
        );
        assert_eq!(
            Guid::CRL.to_string(),
            "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"
        );
        for kind in CertKind::ALL {
            let g = kind.guid();
            assert_eq!(g.to_string().parse::<Guid>().unwrap(), g);
            assert_eq!(g.kind(), Some(kind));
        }
        assert!(
            "63da758d-e664-4564-adc5-f4b93be8acc"
                .parse::<Guid>()
                .is_err()
        );
        assert!(
            "63da758de664-4564-adc5-f4b93be8accd0"
                .parse::<Guid>()
                .is_err()
        );
        assert!(
            "g3da758d-e664-4564-adc5-f4b93be8accd"
                .parse::<Guid>()
                .is_err()
        );
        assert_eq!(Guid::NIL.kind(), None);
    }

    #[test]
    fn writes_the_layout_hosts_use() {
        assert_eq!(sample().to_bytes().unwrap(), VIRTEE_LAYOUT);
    }

    #[test]
    fn round_trip() {
        let table = sample();
        let mut bytes = table.to_bytes().unwrap();
        assert_eq!(CertTable::parse(&bytes).unwrap(), table);
        // Page padding after the data is ignored.
        bytes.resize(4096, 0);
        let parsed = CertTable::parse(&bytes).unwrap();
        assert_eq!(parsed, table);
        assert_eq!(parsed.get_kind(CertKind::Vcek), Some(&[5u8; 15][..]));
        assert_eq!(parsed.get(Guid::ASK), Some(&[2u8; 25][..]));
        assert_eq!(parsed.get_kind(CertKind::Vlek), None);
        fuzz_parse(&bytes);
    }

    #[test]
    fn empty_tables() {
        assert!(CertTable::parse(&[]).unwrap().is_empty());
        assert!(CertTable::parse(&[0u8; 4096]).unwrap().is_empty());
        assert_eq!(CertTable::default().to_bytes().unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn rejects_out_of_bounds() {
        let mut b = VIRTEE_LAYOUT.to_vec();
        // The last entry's data end the buffer: one more byte is outside.
        b[3 * ENTRY_LEN + 20] = 7;
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::OutOfBounds { index: 3, .. })
        ));
        // Offset near u32::MAX must not overflow.
        let mut b = entry(Guid::VCEK, u32::MAX, u32::MAX);
        b.extend_from_slice(&[0; ENTRY_LEN]);
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::OutOfBounds { index: 0, .. })
        ));
    }

    #[test]
    fn rejects_missing_terminator_and_truncation() {
        let b = entry(Guid::VCEK, 24, 0);
        assert_eq!(
            CertTable::parse(&b),
            Err(CertTableError::MissingTerminator { entries: 1 })
        );
        let b = &VIRTEE_LAYOUT[..ENTRY_LEN + 10];
        assert_eq!(
            CertTable::parse(b),
            Err(CertTableError::Truncated {
                index: 1,
                at: 24,
                available: 10
            })
        );
        // A full table whose data were cut off.
        let b = &VIRTEE_LAYOUT[..VIRTEE_LAYOUT.len() - 1];
        assert!(matches!(
            CertTable::parse(b),
            Err(CertTableError::OutOfBounds { index: 3, .. })
        ));
    }

    #[test]
    fn rejects_duplicates_overlaps_and_oddities() {
        // Duplicate GUID.
        let mut b = entry(Guid::VCEK, 72, 1);
        b.extend(entry(Guid::VCEK, 73, 1));
        b.extend([0; ENTRY_LEN]);
        b.extend([9, 9]);
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::DuplicateGuid {
                first: 0,
                second: 1,
                ..
            })
        ));
        // Overlapping data.
        let mut b = entry(Guid::VCEK, 72, 2);
        b.extend(entry(Guid::ASK, 73, 1));
        b.extend([0; ENTRY_LEN]);
        b.extend([9, 9]);
        assert_eq!(
            CertTable::parse(&b),
            Err(CertTableError::OverlappingEntries {
                first: 0,
                second: 1
            })
        );
        // Data inside the table.
        let mut b = entry(Guid::VCEK, 24, 4);
        b.extend([0; ENTRY_LEN]);
        b.extend([9, 9]);
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::OverlapsTable { table_len: 48, .. })
        ));
        // Zero length.
        let mut b = entry(Guid::VCEK, 48, 0);
        b.extend([0; ENTRY_LEN]);
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::EmptyEntry { index: 0, .. })
        ));
        // Nil GUID with an offset is not a terminator.
        let mut b = entry(Guid::NIL, 48, 1);
        b.extend([0; ENTRY_LEN]);
        b.push(1);
        assert!(matches!(
            CertTable::parse(&b),
            Err(CertTableError::NilGuid { index: 0, .. })
        ));
    }

    #[test]
    fn rejects_absurd_counts() {
        let mut b = Vec::new();
        for i in 0..=MAX_ENTRIES as u8 {
            let mut g = [0xaa; 16];
            g[0] = i;
            b.extend(entry(Guid::from_bytes(g), 0, 1));
        }
        b.extend([0; ENTRY_LEN]);
        assert_eq!(
            CertTable::parse(&b),
            Err(CertTableError::TooManyEntries { max: MAX_ENTRIES })
        );
        let many = (0..=MAX_ENTRIES as u8)
            .map(|i| CertEntry {
                guid: Guid::from_bytes([i + 1; 16]),
                data: vec![i],
            })
            .collect();
        assert!(matches!(
            CertTable::new(many),
            Err(CertTableError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn builder_rejects_what_parse_rejects() {
        let dup = vec![
            CertEntry {
                guid: Guid::ARK,
                data: vec![1],
            },
            CertEntry {
                guid: Guid::ARK,
                data: vec![2],
            },
        ];
        assert!(matches!(
            CertTable::new(dup),
            Err(CertTableError::DuplicateGuid { .. })
        ));
        let empty = vec![CertEntry {
            guid: Guid::ARK,
            data: vec![],
        }];
        assert!(matches!(
            CertTable::new(empty),
            Err(CertTableError::EmptyEntry { .. })
        ));
        let nil = vec![CertEntry {
            guid: Guid::NIL,
            data: vec![1],
        }];
        assert!(matches!(
            CertTable::new(nil),
            Err(CertTableError::NilGuid { .. })
        ));
    }

    #[test]
    fn fuzz_parse_survives_mutations() {
        let base = sample().to_bytes().unwrap();
        // Every single-byte change of the table part, and every truncation.
        for i in 0..5 * ENTRY_LEN {
            for v in [0u8, 1, 0x18, 0x7f, 0xff] {
                let mut b = base.clone();
                b[i] = v;
                fuzz_parse(&b);
            }
        }
        for n in 0..base.len() {
            fuzz_parse(&base[..n]);
        }
    }
}
