//! The on-disk structures of a VMGS (VM guest state) file, laid out as OpenVMM's VMGS v3
//! (`docs/formats/vmgs.md` lists every deviation): two header slots, 4 KiB blocks, a
//! file table of 64 fixed-size entries, and an extended file table that holds the
//! per-file keys.
//!
//! Raw structures (`Raw*`) are plain little-endian bytes with their sizes checked at
//! compile time; the parsed types ([`Header`], [`FileTable`], [`ExtendedTable`]) hold
//! only what passed every check, so the file layer never sees an offset past the end
//! of the file or a header with a wrong checksum. Parsing never panics on any input
//! (fuzzed: `fuzz/fuzz_targets/vmgs.rs`).
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
use zeroize::Zeroize;

/// Bytes per block; every offset and allocation in the file table counts blocks.
pub const BLOCK_SIZE: usize = 4096;
/// `GUESTRTS` read as a little-endian u64.
pub const SIGNATURE: u64 = 0x5354_5254_5345_5547;
/// The format version written and accepted: 3.0.
pub const VERSION: u32 = 0x0003_0000;
/// Bytes of a header.
pub const HEADER_SIZE: usize = 168;
/// Byte offset of header slot `i` (each slot is one 4 KiB sector, the header at its start).
pub const fn header_offset(slot: usize) -> u64 {
    (slot * BLOCK_SIZE) as u64
}
/// The first block a file may occupy (blocks 0 and 1 are the header slots).
pub const MIN_FILE_BLOCK: u32 = 2;
/// Entries in the file table (file ids 0..=63).
pub const FILE_COUNT: usize = 64;
/// The smallest file this crate formats or opens: the header slots, two file tables, two
/// extended tables and a few data blocks.
pub const MIN_BLOCKS: u32 = 16;
/// The largest: 4 GiB (block indices fit in `u32`, and nothing needs more).
pub const MAX_BLOCKS: u32 = 1 << 20;

/// A wrapped 32-byte key as stored in a header slot (64 bytes): AES-256-GCM nonce,
/// reserved, tag, ciphertext.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawWrappedKey {
    /// The AES-GCM nonce.
    pub nonce: [u8; 12],
    /// Zero.
    pub reserved: U32,
    /// The AES-GCM tag.
    pub tag: [u8; 16],
    /// The encrypted 32-byte metadata key (all zero: the slot is empty).
    pub ciphertext: [u8; 32],
}

/// A header as stored (168 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawHeader {
    /// [`SIGNATURE`].
    pub signature: U64,
    /// [`VERSION`].
    pub version: U32,
    /// CRC-32 (IEEE) of the 168 bytes with this field zero.
    pub checksum: U32,
    /// +1 per commit, wrapping.
    pub sequence: U32,
    /// [`HEADER_SIZE`].
    pub header_size: U32,
    /// Block of the file table.
    pub file_table_offset: U32,
    /// Blocks of the file table: 1.
    pub file_table_size: U32,
    /// 0 none, 1 AES-256-GCM.
    pub encryption_algorithm: U16,
    /// Bit 0: reprovisioned; the rest zero.
    pub markers: U16,
    /// The metadata key wrapped by up to two datastore keys.
    pub metadata_keys: [RawWrappedKey; 2],
    /// Zero.
    pub reserved: U32,
}

/// A file table entry as stored (64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawFileEntry {
    /// First block.
    pub offset: U32,
    /// Blocks allocated (0: no such file).
    pub allocation_size: U32,
    /// Bytes of data.
    pub valid_data_size: U64,
    /// AES-GCM nonce of an encrypted file.
    pub nonce: [u8; 12],
    /// AES-GCM tag of an encrypted file; the first 16 bytes of the SHA-256 of a
    /// plaintext file's data (an opencvm addition).
    pub tag: [u8; 16],
    /// [`FileAttributes`] bits.
    pub attributes: U32,
    /// Zero.
    pub reserved: [u8; 16],
}

/// An extended file table entry as stored (64 bytes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RawExtendedEntry {
    /// [`FileAttributes`] bits.
    pub attributes: U32,
    /// The file's AES-256 key.
    pub key: [u8; 32],
    /// Zero.
    pub reserved: [u8; 28],
}

const _: () = assert!(size_of::<RawWrappedKey>() == 64);
const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(size_of::<RawFileEntry>() == 64);
const _: () = assert!(size_of::<RawExtendedEntry>() == 64);
const _: () = assert!(size_of::<[RawFileEntry; FILE_COUNT]>() == BLOCK_SIZE);
const _: () = assert!(size_of::<[RawExtendedEntry; FILE_COUNT]>() == BLOCK_SIZE);

/// Why bytes are not a valid structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure.
    #[error("{what}: {got} bytes, need {need}")]
    Short {
        /// The structure.
        what: &'static str,
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not the `GUESTRTS` signature.
    #[error("not a VMGS header (signature {0:#018x})")]
    Signature(u64),
    /// A VMGS version other than 3.0.
    #[error("VMGS version {0:#010x} is not supported (only 3.0)")]
    Version(u32),
    /// The CRC-32 does not match.
    #[error("header checksum {stored:#010x} does not match its contents ({computed:#010x})")]
    Checksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A field outside its allowed values.
    #[error("{field}: {value} is not allowed")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A file table entry pointing outside the file or into the header slots.
    #[error(
        "file {id}: blocks {offset}..{end} are outside the file's data blocks ({min}..{capacity})"
    )]
    Extent {
        /// The file id.
        id: u8,
        /// First block.
        offset: u32,
        /// One past the last block.
        end: u64,
        /// First data block.
        min: u32,
        /// Blocks in the file.
        capacity: u32,
    },
    /// A file whose size exceeds its allocation.
    #[error("file {id}: {size} bytes do not fit in {blocks} blocks")]
    Size {
        /// The file id.
        id: u8,
        /// Its size.
        size: u64,
        /// Its allocation.
        blocks: u32,
    },
    /// Two files sharing a block.
    #[error("files {0} and {1} overlap")]
    Overlap(u8, u8),
    /// Reserved bytes or bits that are not zero.
    #[error("{0}: reserved bytes are not zero")]
    Reserved(&'static str),
    /// An unknown file id or name.
    #[error("{0:?} is not a VMGS file id (a number 0-63 or a name such as TPM_NVRAM)")]
    FileId(String),
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// A file id (0-63). Ids 0 (the file table) and 63 (the extended file table) are the
/// format's own and cannot be written as files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(u8);

/// Names of the known file ids (OpenVMM's, and opencvm's 32-34).
const NAMES: &[(u8, &str)] = &[
    (0, "FILE_TABLE"),
    (1, "BIOS_NVRAM"),
    (2, "TPM_PPI"),
    (3, "TPM_NVRAM"),
    (4, "RTC_SKEW"),
    (5, "ATTEST"),
    (6, "KEY_PROTECTOR"),
    (7, "VM_UNIQUE_ID"),
    (8, "GUEST_FIRMWARE"),
    (9, "CUSTOM_UEFI"),
    (10, "GUEST_WATCHDOG"),
    (11, "HW_KEY_PROTECTOR"),
    (13, "GUEST_SECRET_KEY"),
    (14, "HIBERNATION_TOKEN"),
    (15, "PLATFORM_SEED"),
    (16, "PROVENANCE_DOC"),
    (17, "TPM_NVRAM_BACKUP"),
    (18, "PROVISIONING_MARKER"),
    (32, "ATTESTATION_CONFIG"),
    (33, "TPM_VOLATILE"),
    (34, "TPM_SAVESTATE"),
    (63, "EXTENDED_FILE_TABLE"),
];

impl FileId {
    /// The file table itself.
    pub const FILE_TABLE: FileId = FileId(0);
    /// UEFI variables (Secure Boot PK/KEK/db/dbx among them).
    pub const BIOS_NVRAM: FileId = FileId(1);
    /// The vTPM's state.
    pub const TPM_NVRAM: FileId = FileId(3);
    /// The key protector: the wrapped datastore key (plaintext, readable before unlock).
    pub const KEY_PROTECTOR: FileId = FileId(6);
    /// The VM's unique id.
    pub const VM_UNIQUE_ID: FileId = FileId(7);
    /// A secret for the guest.
    pub const GUEST_SECRET_KEY: FileId = FileId(13);
    /// The VM's attestation configuration (opencvm; unassigned in OpenVMM).
    pub const ATTESTATION_CONFIG: FileId = FileId(32);
    /// The vTPM's volatile state, saved on request (opencvm).
    pub const TPM_VOLATILE: FileId = FileId(33);
    /// The vTPM's state saved by `TPM2_Shutdown(SU_STATE)` (opencvm).
    pub const TPM_SAVESTATE: FileId = FileId(34);
    /// The extended file table (per-file keys).
    pub const EXTENDED_FILE_TABLE: FileId = FileId(63);

    /// The id `n`, if below 64.
    pub fn new(n: u8) -> Option<FileId> {
        (usize::from(n) < FILE_COUNT).then_some(FileId(n))
    }

    /// The number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether a caller may write this id (not the format's own tables).
    pub fn is_user_file(self) -> bool {
        self != Self::FILE_TABLE && self != Self::EXTENDED_FILE_TABLE
    }

    /// Its name, if it has one.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(n, _)| *n == self.0).map(|(_, s)| *s)
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({n})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::str::FromStr for FileId {
    type Err = FormatError;

    /// A number (0-63) or a name such as `TPM_NVRAM` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, FormatError> {
        if let Ok(n) = s.parse::<u8>() {
            return FileId::new(n).ok_or_else(|| FormatError::FileId(s.to_string()));
        }
        NAMES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
            .map(|(n, _)| FileId(*n))
            .ok_or_else(|| FormatError::FileId(s.to_string()))
    }
}

/// The file attribute bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileAttributes {
    /// AES-256-GCM under the file's own key (OpenVMM sets `authenticated` with it).
    pub encrypted: bool,
}

impl FileAttributes {
    const ENCRYPTED: u32 = 1;
    const AUTHENTICATED: u32 = 2;

    fn parse(bits: u32, what: &'static str) -> Result<Self, FormatError> {
        match bits {
            0 => Ok(FileAttributes { encrypted: false }),
            b if b == Self::ENCRYPTED | Self::AUTHENTICATED => {
                Ok(FileAttributes { encrypted: true })
            }
            b => Err(FormatError::Field {
                field: what,
                value: u64::from(b),
            }),
        }
    }

    fn bits(self) -> u32 {
        if self.encrypted {
            Self::ENCRYPTED | Self::AUTHENTICATED
        } else {
            0
        }
    }
}

/// How the files are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// No encryption: data are checked against a SHA-256 prefix, tables against a
    /// SHA-256 (integrity against accidents, not against the host).
    None,
    /// AES-256-GCM under keys only a datastore key unlocks.
    Aes256Gcm,
}

/// A parsed, checked header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// +1 per commit, wrapping.
    pub sequence: u32,
    /// Block of the file table (≥ [`MIN_FILE_BLOCK`], checked against the file's
    /// size when the table is read).
    pub file_table_offset: u32,
    /// The encryption.
    pub encryption: Encryption,
    /// The `reprovisioned` marker.
    pub reprovisioned: bool,
    /// The metadata key wrapped under each datastore-key slot, `None` when empty.
    pub key_slots: [Option<RawWrappedKey>; 2],
}

impl Header {
    /// Parses a header slot: `Ok(None)` when its 168 bytes are all zero (never
    /// written), else the header if every check passes.
    pub fn parse(bytes: &[u8]) -> Result<Option<Header>, FormatError> {
        let bytes = bytes.get(..HEADER_SIZE).ok_or(FormatError::Short {
            what: "header",
            got: bytes.len(),
            need: HEADER_SIZE,
        })?;
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let raw = RawHeader::read_from_bytes(bytes).map_err(|_| FormatError::Short {
            what: "header",
            got: bytes.len(),
            need: HEADER_SIZE,
        })?;
        if raw.signature.get() != SIGNATURE {
            return Err(FormatError::Signature(raw.signature.get()));
        }
        if raw.version.get() != VERSION {
            return Err(FormatError::Version(raw.version.get()));
        }
        let mut zeroed = raw;
        zeroed.checksum = U32::new(0);
        let computed = crc32(zeroed.as_bytes());
        if computed != raw.checksum.get() {
            return Err(FormatError::Checksum {
                stored: raw.checksum.get(),
                computed,
            });
        }
        let field = |field, value: u64| FormatError::Field { field, value };
        if raw.header_size.get() as usize != HEADER_SIZE {
            return Err(field("header_size", raw.header_size.get().into()));
        }
        if raw.file_table_size.get() != 1 {
            return Err(field("file_table_size", raw.file_table_size.get().into()));
        }
        if raw.file_table_offset.get() < MIN_FILE_BLOCK {
            return Err(field(
                "file_table_offset",
                raw.file_table_offset.get().into(),
            ));
        }
        let encryption = match raw.encryption_algorithm.get() {
            0 => Encryption::None,
            1 => Encryption::Aes256Gcm,
            v => return Err(field("encryption_algorithm", v.into())),
        };
        if raw.markers.get() & !1 != 0 {
            return Err(FormatError::Reserved("header markers"));
        }
        if raw.reserved.get() != 0 {
            return Err(FormatError::Reserved("header"));
        }
        let mut key_slots = [None, None];
        for (slot, k) in key_slots.iter_mut().zip(raw.metadata_keys) {
            if k.reserved.get() != 0 {
                return Err(FormatError::Reserved("header key slot"));
            }
            if k != RawWrappedKey::default() {
                if encryption == Encryption::None {
                    return Err(FormatError::Reserved("key slot of an unencrypted file"));
                }
                *slot = Some(k);
            }
        }
        if encryption == Encryption::Aes256Gcm && key_slots.iter().all(Option::is_none) {
            return Err(field("key slots in use", 0));
        }
        Ok(Some(Header {
            sequence: raw.sequence.get(),
            file_table_offset: raw.file_table_offset.get(),
            encryption,
            reprovisioned: raw.markers.get() & 1 != 0,
            key_slots,
        }))
    }

    /// The 168 bytes, checksum computed.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut raw = RawHeader {
            signature: U64::new(SIGNATURE),
            version: U32::new(VERSION),
            checksum: U32::new(0),
            sequence: U32::new(self.sequence),
            header_size: U32::new(HEADER_SIZE as u32),
            file_table_offset: U32::new(self.file_table_offset),
            file_table_size: U32::new(1),
            encryption_algorithm: U16::new(match self.encryption {
                Encryption::None => 0,
                Encryption::Aes256Gcm => 1,
            }),
            markers: U16::new(u16::from(self.reprovisioned)),
            metadata_keys: self.key_slots.map(Option::unwrap_or_default),
            reserved: U32::new(0),
        };
        raw.checksum = U32::new(crc32(raw.as_bytes()));
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }
}

/// A file's entry in the file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// First block.
    pub offset: u32,
    /// Blocks allocated (≥ 1).
    pub blocks: u32,
    /// Bytes of data (≤ blocks × 4096).
    pub size: u64,
    /// AES-GCM nonce (encrypted files).
    pub nonce: [u8; 12],
    /// AES-GCM tag, or a plaintext file's SHA-256 prefix.
    pub tag: [u8; 16],
    /// Attributes.
    pub attributes: FileAttributes,
}

impl FileEntry {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.blocks)
    }
}

/// The file table: an entry per file id; entry 0 (the table itself) carries the
/// commit digest (see [`FileTable::commit_digest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTable {
    /// Entries of ids 1..=63 (`None`: no such file). Entry 0 is not a file.
    pub files: [Option<FileEntry>; FILE_COUNT],
    /// The commit digest kept in entry 0's nonce, tag and attribute bytes.
    pub commit_digest: [u8; 32],
    /// A keyless check of the header and this table (an opencvm addition in entry 0's
    /// reserved bytes), so a torn commit is found even without the key.
    pub table_check: [u8; 16],
}

impl Default for FileTable {
    fn default() -> Self {
        FileTable {
            files: [None; FILE_COUNT],
            commit_digest: [0; 32],
            table_check: [0; 16],
        }
    }
}

impl FileTable {
    /// Parses a file table block of a file with `capacity` blocks whose table sits at
    /// block `own_offset`: every extent inside the data blocks, no two overlapping,
    /// sizes within allocations, reserved bytes zero.
    pub fn parse(block: &[u8], own_offset: u32, capacity: u32) -> Result<FileTable, FormatError> {
        let raw = <[RawFileEntry; FILE_COUNT]>::ref_from_bytes(block.get(..BLOCK_SIZE).ok_or(
            FormatError::Short {
                what: "file table",
                got: block.len(),
                need: BLOCK_SIZE,
            },
        )?)
        .map_err(|_| FormatError::Short {
            what: "file table",
            got: block.len(),
            need: BLOCK_SIZE,
        })?;
        let mut table = FileTable::default();
        let own = &raw[0];
        if own.offset.get() != own_offset
            || own.allocation_size.get() != 1
            || own.valid_data_size.get() != BLOCK_SIZE as u64
        {
            return Err(FormatError::Field {
                field: "file table entry 0",
                value: own.offset.get().into(),
            });
        }
        table.commit_digest[..12].copy_from_slice(&own.nonce);
        table.commit_digest[12..28].copy_from_slice(&own.tag);
        table.commit_digest[28..].copy_from_slice(own.attributes.as_bytes());
        table.table_check = own.reserved;
        let mut extents: Vec<(u32, u64, u8)> = vec![(own_offset, u64::from(own_offset) + 1, 0)];
        for (i, e) in raw.iter().enumerate().skip(1) {
            let id = i as u8;
            if e.allocation_size.get() == 0 {
                if *e != RawFileEntry::default() {
                    return Err(FormatError::Reserved("unused file table entry"));
                }
                continue;
            }
            if e.reserved != [0; 16] {
                return Err(FormatError::Reserved("file table entry"));
            }
            let entry = FileEntry {
                offset: e.offset.get(),
                blocks: e.allocation_size.get(),
                size: e.valid_data_size.get(),
                nonce: e.nonce,
                tag: e.tag,
                attributes: FileAttributes::parse(e.attributes.get(), "file attributes")?,
            };
            if entry.offset < MIN_FILE_BLOCK || entry.end() > u64::from(capacity) {
                return Err(FormatError::Extent {
                    id,
                    offset: entry.offset,
                    end: entry.end(),
                    min: MIN_FILE_BLOCK,
                    capacity,
                });
            }
            if entry.size > u64::from(entry.blocks) * BLOCK_SIZE as u64 {
                return Err(FormatError::Size {
                    id,
                    size: entry.size,
                    blocks: entry.blocks,
                });
            }
            extents.push((entry.offset, entry.end(), id));
            table.files[i] = Some(entry);
        }
        if own_offset < MIN_FILE_BLOCK || own_offset >= capacity {
            return Err(FormatError::Extent {
                id: 0,
                offset: own_offset,
                end: u64::from(own_offset) + 1,
                min: MIN_FILE_BLOCK,
                capacity,
            });
        }
        extents.sort_unstable();
        for w in extents.windows(2) {
            if u64::from(w[1].0) < w[0].1 {
                return Err(FormatError::Overlap(w[0].2, w[1].2));
            }
        }
        Ok(table)
    }

    /// The table block for a table at block `own_offset`, with `digest` in entry 0
    /// (all zero while the digest itself is computed).
    pub fn to_block(&self, own_offset: u32, digest: &[u8; 32]) -> [u8; BLOCK_SIZE] {
        let mut raw = [RawFileEntry::default(); FILE_COUNT];
        raw[0].offset = U32::new(own_offset);
        raw[0].allocation_size = U32::new(1);
        raw[0].valid_data_size = U64::new(BLOCK_SIZE as u64);
        raw[0].nonce.copy_from_slice(&digest[..12]);
        raw[0].tag.copy_from_slice(&digest[12..28]);
        let mut attr = [0u8; 4];
        attr.copy_from_slice(&digest[28..]);
        raw[0].attributes = U32::from_bytes(attr);
        raw[0].reserved = self.table_check;
        for (r, e) in raw.iter_mut().zip(&self.files).skip(1) {
            if let Some(e) = e {
                *r = RawFileEntry {
                    offset: U32::new(e.offset),
                    allocation_size: U32::new(e.blocks),
                    valid_data_size: U64::new(e.size),
                    nonce: e.nonce,
                    tag: e.tag,
                    attributes: U32::new(e.attributes.bits()),
                    reserved: [0; 16],
                };
            }
        }
        let mut out = [0u8; BLOCK_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }
}

/// The decrypted extended file table: each encrypted file's key.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtendedTable {
    /// The key of each encrypted file, by id.
    pub keys: [Option<[u8; 32]>; FILE_COUNT],
}

impl std::fmt::Debug for ExtendedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<usize> = (0..FILE_COUNT)
            .filter(|&i| self.keys[i].is_some())
            .collect();
        f.debug_struct("ExtendedTable")
            .field("keys_for", &ids)
            .finish_non_exhaustive()
    }
}

impl Default for ExtendedTable {
    fn default() -> Self {
        ExtendedTable {
            keys: [None; FILE_COUNT],
        }
    }
}

impl ExtendedTable {
    /// Parses a decrypted extended table block.
    pub fn parse(block: &[u8]) -> Result<ExtendedTable, FormatError> {
        let short = || FormatError::Short {
            what: "extended file table",
            got: block.len(),
            need: BLOCK_SIZE,
        };
        let raw = <[RawExtendedEntry; FILE_COUNT]>::ref_from_bytes(
            block.get(..BLOCK_SIZE).ok_or_else(short)?,
        )
        .map_err(|_| short())?;
        let mut t = ExtendedTable::default();
        for (k, e) in t.keys.iter_mut().zip(raw.iter()) {
            if e.reserved != [0; 28] {
                return Err(FormatError::Reserved("extended file table entry"));
            }
            match FileAttributes::parse(e.attributes.get(), "extended file attributes")? {
                FileAttributes { encrypted: true } => *k = Some(e.key),
                FileAttributes { encrypted: false } if e.key == [0; 32] => {}
                _ => return Err(FormatError::Reserved("extended file table entry")),
            }
        }
        Ok(t)
    }

    /// The plaintext block (keys included: prefer [`Self::write_block`] into a buffer
    /// that is zeroized after use).
    pub fn to_block(&self) -> [u8; BLOCK_SIZE] {
        let mut out = [0u8; BLOCK_SIZE];
        self.write_block(&mut out);
        out
    }

    /// Writes the plaintext block into `out`; the temporary copy is zeroized.
    pub fn write_block(&self, out: &mut [u8; BLOCK_SIZE]) {
        let mut raw = [RawExtendedEntry::default(); FILE_COUNT];
        for (r, k) in raw.iter_mut().zip(&self.keys) {
            if let Some(k) = k {
                r.attributes = U32::new(FileAttributes { encrypted: true }.bits());
                r.key = *k;
            }
        }
        out.copy_from_slice(raw.as_bytes());
        raw.as_mut_bytes().zeroize();
    }
}

impl Drop for ExtendedTable {
    fn drop(&mut self) {
        for k in self.keys.iter_mut().flatten() {
            k.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_crc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn header(seq: u32) -> Header {
        Header {
            sequence: seq,
            file_table_offset: 7,
            encryption: Encryption::Aes256Gcm,
            reprovisioned: seq.is_multiple_of(2),
            key_slots: [
                None,
                Some(RawWrappedKey {
                    nonce: [seq as u8; 12],
                    reserved: U32::new(0),
                    tag: [3; 16],
                    ciphertext: [9; 32],
                }),
            ],
        }
    }

    #[test]
    fn headers_round_trip_and_every_bit_flip_is_refused() {
        for seq in [0, 1, 0x7FFF_FFFF, u32::MAX] {
            let h = header(seq);
            let bytes = h.to_bytes();
            assert_eq!(Header::parse(&bytes), Ok(Some(h.clone())));
            assert_eq!(&bytes[..8], b"GUESTRTS");
            for bit in 0..HEADER_SIZE * 8 {
                let mut b = bytes;
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(Header::parse(&b).is_err(), "bit {bit} of sequence {seq}");
            }
        }
        assert_eq!(Header::parse(&[0u8; HEADER_SIZE]), Ok(None));
    }

    #[test]
    fn file_tables_round_trip_and_bad_extents_are_refused() {
        let mut t = FileTable::default();
        t.files[3] = Some(FileEntry {
            offset: 10,
            blocks: 2,
            size: 5000,
            nonce: [1; 12],
            tag: [2; 16],
            attributes: FileAttributes { encrypted: true },
        });
        t.files[6] = Some(FileEntry {
            offset: 12,
            blocks: 1,
            size: 0,
            nonce: [0; 12],
            tag: [4; 16],
            attributes: FileAttributes::default(),
        });
        t.commit_digest = [7; 32];
        let block = t.to_block(5, &[7; 32]);
        assert_eq!(FileTable::parse(&block, 5, 16), Ok(t.clone()));
        // Past the end, into the headers, overlapping the table or another file.
        assert!(FileTable::parse(&block, 5, 12).is_err());
        for (offset, blocks) in [(1, 1), (4, 2), (11, 2), (12, 1)] {
            let mut bad = t.clone();
            if let Some(e) = bad.files[3].as_mut() {
                e.offset = offset;
                e.blocks = blocks;
                e.size = 1;
            }
            assert!(
                FileTable::parse(&bad.to_block(5, &[0; 32]), 5, 16).is_err(),
                "{offset}+{blocks}"
            );
        }
        let mut bad = t.clone();
        if let Some(e) = bad.files[3].as_mut() {
            e.size = 8193;
        }
        assert!(FileTable::parse(&bad.to_block(5, &[0; 32]), 5, 16).is_err());
    }

    #[test]
    fn extended_tables_round_trip() {
        let mut t = ExtendedTable::default();
        t.keys[3] = Some([5; 32]);
        t.keys[13] = Some([6; 32]);
        assert_eq!(ExtendedTable::parse(&t.to_block()), Ok(t));
        let mut b = ExtendedTable::default().to_block();
        b[64 + 4] = 1; // a key without the encrypted attribute
        assert!(ExtendedTable::parse(&b).is_err());
    }

    #[test]
    fn file_ids_parse_by_number_and_name() {
        assert_eq!("TPM_NVRAM".parse::<FileId>(), Ok(FileId::TPM_NVRAM));
        assert_eq!("tpm_nvram".parse::<FileId>(), Ok(FileId::TPM_NVRAM));
        assert_eq!("13".parse::<FileId>(), Ok(FileId::GUEST_SECRET_KEY));
        assert!("64".parse::<FileId>().is_err());
        assert!("NOPE".parse::<FileId>().is_err());
        assert!(!FileId::FILE_TABLE.is_user_file());
        assert!(!FileId::EXTENDED_FILE_TABLE.is_user_file());
        assert_eq!(FileId::BIOS_NVRAM.to_string(), "1 (BIOS_NVRAM)");
    }
}
