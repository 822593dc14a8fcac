//! A measured SEV-SNP launch of an OVMF image, as QEMU performs it.
//!
//! QEMU maps the firmware image so that it ends at 4 GiB, measures all of it as normal
//! pages, then walks the SEV metadata sections OVMF declares (zero pages for early
//! memory, the secrets and CPUID pages, and the page holding the kernel hashes table when
//! a kernel is given), and finally measures one VMSA page per vCPU. [`measure_snp`]
//! reproduces that launch digest; the reference for every detail is sev-snp-measure
//! (`--mode snp`, VMM type QEMU).
//!
//! The image is untrusted input: every offset and length read from it is bounds-checked.
//! It may be a whole `OVMF.fd` or any page-aligned suffix of one that still contains the
//! structures below (it is placed at 4 GiB minus its size either way).
//!
//! Structures read from the image:
//! - the footer GUID table, which ends 32 bytes before the end of the image: a footer
//!   entry (GUID `96b582de-1fb2-45f7-baea-a366c55a082d`) gives the table's size, and
//!   entries `{data, u16 length, GUID}` precede it, read backwards;
//! - the SEV metadata (`ASEV` header and `{gpa, size, type}` sections), located by the
//!   table entry `dc886566-984a-4798-a75e-5585a7bf67cc` as an offset from the end;
//! - the SEV-ES reset block `00f771de-1a7e-4fcb-890e-68c77e2fb44e`: the AP reset address;
//! - the SEV hash table entry `7255371f-3a3b-4b04-927b-1da6efa8d454`: where the kernel
//!   hashes table goes.

use std::fmt;

use aws_lc_rs::digest;
use thiserror::Error;

use crate::launch::{DIGEST_SIZE, LaunchDigest, LaunchError, PAGE_SIZE, PageType};
pub use crate::vmsa::VcpuType;
use crate::vmsa::{VcpuRole, qemu_vmsa_page};

/// Where the firmware image ends in guest-physical memory.
pub const FOUR_GIB: u64 = 1 << 32;

/// The most vCPUs [`measure_snp`] accepts (KVM's `KVM_MAX_VCPUS` on x86).
pub const MAX_VCPUS: u32 = 4096;

/// Size of the padded kernel hashes table QEMU writes into the guest.
pub const KERNEL_HASHES_TABLE_SIZE: usize = 176;

/// The footer table ends this many bytes before the end of the image.
const FOOTER_TABLE_END_GAP: usize = 32;
/// `{u16 length, GUID}` that ends every footer table entry.
const ENTRY_HEADER_SIZE: usize = 18;
/// `{signature[4], size u32, version u32, num_items u32}`.
const METADATA_HEADER_SIZE: usize = 16;
/// `{gpa u32, size u32, type u32}`.
const METADATA_SECTION_SIZE: usize = 12;

/// Errors from parsing or measuring an OVMF image.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OvmfError {
    /// The image is empty or not a whole number of pages.
    #[error(
        "OVMF image of {len} bytes is not a non-empty whole number of 4096-byte pages; pass the firmware file (e.g. OVMF.fd) itself"
    )]
    ImageSize {
        /// The image's length.
        len: usize,
    },
    /// The image is larger than the 4 GiB below which it is mapped.
    #[error("OVMF image of {len} bytes does not fit below 4 GiB")]
    ImageTooLarge {
        /// The image's length.
        len: usize,
    },
    /// The footer entry declares a table larger than the image before it.
    #[error(
        "OVMF footer table of {table_size} bytes extends past the start of the image ({available} bytes available); the image is truncated or corrupt"
    )]
    FooterTableOutOfBounds {
        /// Size of the table without its footer entry.
        table_size: usize,
        /// Bytes of image before the footer entry.
        available: usize,
    },
    /// A footer table entry whose length is smaller than its own header.
    #[error("OVMF footer table entry {guid} has invalid length {size} (minimum 18)")]
    TableEntryInvalidSize {
        /// The entry's GUID.
        guid: EfiGuid,
        /// Its declared length.
        size: u16,
    },
    /// A footer table entry longer than what is left of the table.
    #[error(
        "OVMF footer table entry {guid} of {size} bytes extends past the start of the table ({available} bytes left)"
    )]
    TableEntryOutOfBounds {
        /// The entry's GUID.
        guid: EfiGuid,
        /// Its declared length.
        size: u16,
        /// Bytes of table left before it.
        available: usize,
    },
    /// A footer table entry with too little data for what it should hold.
    #[error("OVMF footer table entry {guid} has {len} data bytes, expected at least {need}")]
    TableEntryTooShort {
        /// The entry's GUID.
        guid: EfiGuid,
        /// Its data length.
        len: usize,
        /// The data length needed.
        need: usize,
    },
    /// An entry that the measurement needs is not in the footer table.
    #[error(
        "OVMF footer table has no {name} entry ({guid}); the image was not built with SEV support (use an AmdSev or SEV-capable OvmfX64 build)"
    )]
    MissingTableEntry {
        /// What the entry is.
        name: &'static str,
        /// Its GUID.
        guid: EfiGuid,
    },
    /// The SEV metadata offset points outside the image.
    #[error(
        "SEV metadata at {offset_from_end:#x} bytes from the end lies outside the {len}-byte image (truncated image?)"
    )]
    MetadataOutOfBounds {
        /// The offset from the end of the image.
        offset_from_end: u32,
        /// The image's length.
        len: usize,
    },
    /// The SEV metadata header does not start with `ASEV`.
    #[error("SEV metadata signature is {found:02x?}, expected \"ASEV\"")]
    BadMetadataSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// An SEV metadata version other than 1.
    #[error("SEV metadata version {version} is not supported (expected 1)")]
    BadMetadataVersion {
        /// The version found.
        version: u32,
    },
    /// The SEV metadata sections do not fit in the declared header size or the image.
    #[error(
        "SEV metadata declares {num_items} sections, which do not fit in its {size}-byte size or in the image"
    )]
    MetadataItemsOutOfBounds {
        /// Number of sections declared.
        num_items: u32,
        /// The header's size field.
        size: u32,
    },
    /// An SEV metadata section of a type QEMU does not know.
    #[error("SEV metadata section at GPA {gpa:#x} has unknown type {section_type:#x}")]
    UnknownSectionType {
        /// The section's GPA.
        gpa: u32,
        /// The type found.
        section_type: u32,
    },
    /// The SNP_KERNEL_HASHES section is not exactly one page.
    #[error(
        "SNP_KERNEL_HASHES section at GPA {gpa:#x} is {size:#x} bytes, expected one 4096-byte page"
    )]
    KernelHashesSectionSize {
        /// The section's GPA.
        gpa: u32,
        /// Its size.
        size: u32,
    },
    /// The kernel hashes table would cross the end of its page.
    #[error(
        "kernel hashes table at offset {offset:#x} in its page does not fit ({KERNEL_HASHES_TABLE_SIZE} bytes needed)"
    )]
    KernelHashesOffset {
        /// Offset of the table within its page.
        offset: usize,
    },
    /// Kernel hashes were requested but the image cannot take them.
    #[error(
        "kernel hashes requested (kernel given) but OVMF metadata doesn't include SNP_KERNEL_HASHES section; use an AmdSev OVMF build or measure without kernel/initrd/append"
    )]
    MissingKernelHashesSection,
    /// An initrd or command line was given without a kernel.
    #[error(
        "an initrd or kernel command line was given without a kernel; QEMU measures them only with a kernel"
    )]
    InitrdOrAppendWithoutKernel,
    /// A vCPU count outside 1..=MAX_VCPUS.
    #[error("vCPU count {vcpus} is out of range (1..={MAX_VCPUS})")]
    VcpuCount {
        /// The count given.
        vcpus: u32,
    },
    /// A metadata section that extends beyond 4 GiB.
    #[error("SEV metadata section {section} extends beyond 4 GiB; the image is corrupt")]
    SectionBeyond4Gib {
        /// The section.
        section: SevMetadataSection,
    },
    /// Two metadata sections share pages; the SNP firmware refuses to measure a page twice.
    #[error("SEV metadata sections overlap ({first}; {second}); the image is corrupt")]
    SectionOverlap {
        /// The section starting first.
        first: SevMetadataSection,
        /// The section starting inside it.
        second: SevMetadataSection,
    },
    /// A metadata section overlaps the firmware image mapped below 4 GiB.
    #[error(
        "SEV metadata section {section} overlaps the firmware image mapped at {image_gpa:#x}; the image is corrupt"
    )]
    SectionOverlapsFirmware {
        /// The section.
        section: SevMetadataSection,
        /// Where the image is mapped.
        image_gpa: u64,
    },
    /// Several vCPUs, but the image's SEV-ES reset block gives AP reset address 0.
    #[error("OVMF SEV-ES reset block gives AP reset address 0; only a single vCPU can be launched")]
    NoApResetAddress,
    /// A metadata section that cannot be measured (misaligned or overflowing).
    #[error("measuring SEV metadata section {section}: {source}")]
    Section {
        /// The section.
        section: SevMetadataSection,
        /// Why it failed.
        source: LaunchError,
    },
    /// A page that cannot be measured.
    #[error("measuring OVMF image: {0}")]
    Launch(#[from] LaunchError),
}

/// An EFI GUID in its on-disk byte order (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EfiGuid([u8; 16]);

impl EfiGuid {
    /// The footer of OVMF's GUID table: `96b582de-1fb2-45f7-baea-a366c55a082d`.
    pub const OVMF_TABLE_FOOTER: EfiGuid = EfiGuid::from_fields(
        0x96b5_82de,
        0x1fb2,
        0x45f7,
        [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
    );
    /// Where QEMU puts the kernel hashes table: `7255371f-3a3b-4b04-927b-1da6efa8d454`.
    pub const SEV_HASH_TABLE_RV: EfiGuid = EfiGuid::from_fields(
        0x7255_371f,
        0x3a3b,
        0x4b04,
        [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
    );
    /// The SEV-ES AP reset block: `00f771de-1a7e-4fcb-890e-68c77e2fb44e`.
    pub const SEV_ES_RESET_BLOCK: EfiGuid = EfiGuid::from_fields(
        0x00f7_71de,
        0x1a7e,
        0x4fcb,
        [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
    );
    /// The SEV metadata pointer: `dc886566-984a-4798-a75e-5585a7bf67cc`.
    pub const OVMF_SEV_METADATA: EfiGuid = EfiGuid::from_fields(
        0xdc88_6566,
        0x984a,
        0x4798,
        [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
    );
    /// The kernel hashes table header: `9438d606-4f22-4cc9-b479-a793d411fd21`.
    pub const SEV_HASH_TABLE_HEADER: EfiGuid = EfiGuid::from_fields(
        0x9438_d606,
        0x4f22,
        0x4cc9,
        [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
    );
    /// The kernel entry of the hashes table: `4de79437-abd2-427f-b835-d5b172d2045b`.
    pub const SEV_KERNEL_ENTRY: EfiGuid = EfiGuid::from_fields(
        0x4de7_9437,
        0xabd2,
        0x427f,
        [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
    );
    /// The initrd entry of the hashes table: `44baf731-3a2f-4bd7-9af1-41e29169781d`.
    pub const SEV_INITRD_ENTRY: EfiGuid = EfiGuid::from_fields(
        0x44ba_f731,
        0x3a2f,
        0x4bd7,
        [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
    );
    /// The command-line entry of the hashes table: `97d02dd8-bd20-4c94-aa78-e7714d36ab2a`.
    pub const SEV_CMDLINE_ENTRY: EfiGuid = EfiGuid::from_fields(
        0x97d0_2dd8,
        0xbd20,
        0x4c94,
        [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
    );

    /// A GUID from its textual fields (`d1-d2-d3-d4[0..2]-d4[2..8]`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        EfiGuid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// A GUID from its 16 on-disk bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        EfiGuid(bytes)
    }

    /// The 16 on-disk bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for EfiGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for byte in &b[10..] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EfiGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EfiGuid({self})")
    }
}

/// The type of an SEV metadata section (edk2 `OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionType {
    /// Memory the firmware uses before it validates memory itself: measured as zero pages.
    SnpSecMem,
    /// The SNP secrets page.
    SnpSecrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling-area page: measured as a zero page.
    SvsmCaa,
    /// The page that receives the kernel/initrd/cmdline hashes table.
    SnpKernelHashes,
    /// A type this crate does not know; measuring an image with one fails.
    Unknown(u32),
}

impl SectionType {
    /// The type's value in the metadata.
    pub const fn as_u32(self) -> u32 {
        match self {
            SectionType::SnpSecMem => 1,
            SectionType::SnpSecrets => 2,
            SectionType::Cpuid => 3,
            SectionType::SvsmCaa => 4,
            SectionType::SnpKernelHashes => 0x10,
            SectionType::Unknown(v) => v,
        }
    }
}

impl From<u32> for SectionType {
    fn from(value: u32) -> Self {
        match value {
            1 => SectionType::SnpSecMem,
            2 => SectionType::SnpSecrets,
            3 => SectionType::Cpuid,
            4 => SectionType::SvsmCaa,
            0x10 => SectionType::SnpKernelHashes,
            other => SectionType::Unknown(other),
        }
    }
}

/// One SEV metadata section: a guest-physical range and what QEMU does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMetadataSection {
    /// Start of the range.
    pub gpa: u32,
    /// Length of the range in bytes.
    pub size: u32,
    /// What the range is.
    pub section_type: SectionType,
}

impl fmt::Display for SevMetadataSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} at GPA {:#x}, {:#x} bytes",
            self.section_type, self.gpa, self.size
        )
    }
}

fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    let bytes = data.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn guid_at(data: &[u8], off: usize) -> Option<EfiGuid> {
    let bytes = data.get(off..off.checked_add(16)?)?;
    Some(EfiGuid(bytes.try_into().ok()?))
}

/// A parsed OVMF image, borrowing its bytes.
#[derive(Debug, Clone)]
pub struct OvmfImage<'a> {
    data: &'a [u8],
    gpa: u64,
    /// Footer table entries in the order read (from the end of the table backwards).
    table: Vec<(EfiGuid, &'a [u8])>,
    sections: Vec<SevMetadataSection>,
}

impl<'a> OvmfImage<'a> {
    /// Parses the footer table and SEV metadata of an image.
    ///
    /// An image without a footer table parses (with no entries and no metadata), as it
    /// does for sev-snp-measure; measuring it with [`measure_snp`] then fails for lack of
    /// the SEV-ES reset block.
    pub fn parse(data: &'a [u8]) -> Result<Self, OvmfError> {
        let len = data.len();
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(OvmfError::ImageSize { len });
        }
        let len64 = u64::try_from(len).map_err(|_| OvmfError::ImageTooLarge { len })?;
        let gpa = FOUR_GIB
            .checked_sub(len64)
            .ok_or(OvmfError::ImageTooLarge { len })?;
        let table = Self::parse_footer_table(data)?;
        let mut image = OvmfImage {
            data,
            gpa,
            table,
            sections: Vec::new(),
        };
        image.sections = image.parse_sev_metadata()?;
        Ok(image)
    }

    fn parse_footer_table(data: &'a [u8]) -> Result<Vec<(EfiGuid, &'a [u8])>, OvmfError> {
        let mut table = Vec::new();
        // A non-empty page multiple is at least 4096 bytes, so this does not underflow;
        // the lookups below are checked anyway.
        let Some(footer_at) = data
            .len()
            .checked_sub(FOOTER_TABLE_END_GAP + ENTRY_HEADER_SIZE)
        else {
            return Ok(table);
        };
        let (Some(footer_size), Some(footer_guid)) =
            (u16_at(data, footer_at), guid_at(data, footer_at + 2))
        else {
            return Ok(table);
        };
        if footer_guid != EfiGuid::OVMF_TABLE_FOOTER {
            return Ok(table);
        }
        let Some(table_size) = usize::from(footer_size).checked_sub(ENTRY_HEADER_SIZE) else {
            return Ok(table);
        };
        let start = footer_at
            .checked_sub(table_size)
            .ok_or(OvmfError::FooterTableOutOfBounds {
                table_size,
                available: footer_at,
            })?;
        let mut rest = data.get(start..footer_at).unwrap_or_default();
        while rest.len() >= ENTRY_HEADER_SIZE {
            let header_at = rest.len() - ENTRY_HEADER_SIZE;
            let (Some(size), Some(guid)) = (u16_at(rest, header_at), guid_at(rest, header_at + 2))
            else {
                break;
            };
            let size_usize = usize::from(size);
            if size_usize < ENTRY_HEADER_SIZE {
                return Err(OvmfError::TableEntryInvalidSize { guid, size });
            }
            let entry_start =
                rest.len()
                    .checked_sub(size_usize)
                    .ok_or(OvmfError::TableEntryOutOfBounds {
                        guid,
                        size,
                        available: rest.len(),
                    })?;
            let entry_data = rest.get(entry_start..header_at).unwrap_or_default();
            table.push((guid, entry_data));
            rest = rest.get(..entry_start).unwrap_or_default();
        }
        Ok(table)
    }

    fn parse_sev_metadata(&self) -> Result<Vec<SevMetadataSection>, OvmfError> {
        let Some(entry) = self.table_entry(&EfiGuid::OVMF_SEV_METADATA) else {
            return Ok(Vec::new());
        };
        let offset_from_end = u32_at(entry, 0).ok_or(OvmfError::TableEntryTooShort {
            guid: EfiGuid::OVMF_SEV_METADATA,
            len: entry.len(),
            need: 4,
        })?;
        let data = self.data;
        let out_of_bounds = OvmfError::MetadataOutOfBounds {
            offset_from_end,
            len: data.len(),
        };
        let start = usize::try_from(offset_from_end)
            .ok()
            .and_then(|off| data.len().checked_sub(off))
            .ok_or(out_of_bounds.clone())?;
        let header = data
            .get(start..start.saturating_add(METADATA_HEADER_SIZE))
            .ok_or(out_of_bounds.clone())?;
        let signature: [u8; 4] = header
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(out_of_bounds.clone())?;
        let (Some(size), Some(version), Some(num_items)) =
            (u32_at(header, 4), u32_at(header, 8), u32_at(header, 12))
        else {
            return Err(out_of_bounds);
        };
        if &signature != b"ASEV" {
            return Err(OvmfError::BadMetadataSignature { found: signature });
        }
        if version != 1 {
            return Err(OvmfError::BadMetadataVersion { version });
        }
        let mut sections = Vec::new();
        if num_items == 0 {
            return Ok(sections);
        }
        let too_many = OvmfError::MetadataItemsOutOfBounds { num_items, size };
        // The sections must lie within both the declared size and the image.
        let items_len = usize::try_from(num_items)
            .ok()
            .and_then(|n| n.checked_mul(METADATA_SECTION_SIZE))
            .ok_or(too_many.clone())?;
        let needed = METADATA_HEADER_SIZE
            .checked_add(items_len)
            .ok_or(too_many.clone())?;
        if usize::try_from(size).is_ok_and(|s| needed > s) {
            return Err(too_many);
        }
        let items = start
            .checked_add(needed)
            .and_then(|end| data.get(start + METADATA_HEADER_SIZE..end))
            .ok_or(too_many.clone())?;
        for item in items.chunks_exact(METADATA_SECTION_SIZE) {
            let (Some(gpa), Some(size), Some(kind)) =
                (u32_at(item, 0), u32_at(item, 4), u32_at(item, 8))
            else {
                return Err(too_many);
            };
            sections.push(SevMetadataSection {
                gpa,
                size,
                section_type: SectionType::from(kind),
            });
        }
        Ok(sections)
    }

    /// The image's bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The GPA the image is mapped at (4 GiB minus its size).
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The data of a footer table entry. If a GUID appears more than once, the entry
    /// nearest the start of the image wins, as in sev-snp-measure.
    pub fn table_entry(&self, guid: &EfiGuid) -> Option<&'a [u8]> {
        self.table
            .iter()
            .rev()
            .find(|(g, _)| g == guid)
            .map(|(_, d)| *d)
    }

    /// All footer table entries, from the end of the table backwards.
    pub fn table_entries(&self) -> impl Iterator<Item = (EfiGuid, &'a [u8])> + '_ {
        self.table.iter().copied()
    }

    /// The SEV metadata sections, in image order (empty without SEV metadata).
    pub fn sev_metadata(&self) -> &[SevMetadataSection] {
        &self.sections
    }

    /// Whether the metadata has a section of `section_type`.
    pub fn has_section(&self, section_type: SectionType) -> bool {
        self.sections.iter().any(|s| s.section_type == section_type)
    }

    fn table_u32(&self, guid: EfiGuid, name: &'static str) -> Result<u32, OvmfError> {
        let entry = self
            .table_entry(&guid)
            .ok_or(OvmfError::MissingTableEntry { name, guid })?;
        u32_at(entry, 0).ok_or(OvmfError::TableEntryTooShort {
            guid,
            len: entry.len(),
            need: 4,
        })
    }

    /// The AP reset address from the SEV-ES reset block.
    pub fn sev_es_reset_eip(&self) -> Result<u32, OvmfError> {
        self.table_u32(EfiGuid::SEV_ES_RESET_BLOCK, "SEV-ES reset block")
    }

    /// The GPA where QEMU places the kernel hashes table.
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, OvmfError> {
        self.table_u32(EfiGuid::SEV_HASH_TABLE_RV, "SEV hash table")
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// The SHA-256 hashes QEMU puts in the guest for direct kernel boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of nothing, when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its terminating NUL (`"\0"` when there is none).
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// Hashes a kernel, an optional initrd and an optional command line.
    ///
    /// An absent initrd hashes like an empty one; an absent command line like an empty
    /// one (a lone NUL), as QEMU and sev-snp-measure do.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> Self {
        let mut cmdline = append.unwrap_or("").as_bytes().to_vec();
        cmdline.push(0);
        Self {
            kernel: sha256(kernel),
            initrd: sha256(initrd.unwrap_or_default()),
            cmdline: sha256(&cmdline),
        }
    }

    /// The table QEMU writes: a header `{GUID, u16 length}` and the cmdline, initrd and
    /// kernel entries `{GUID, u16 length, SHA-256}`, zero-padded to a multiple of 16.
    pub fn table(&self) -> [u8; KERNEL_HASHES_TABLE_SIZE] {
        const ENTRY: usize = 16 + 2 + 32;
        const TABLE: usize = 16 + 2 + 3 * ENTRY;
        let mut out = [0u8; KERNEL_HASHES_TABLE_SIZE];
        out[..16].copy_from_slice(EfiGuid::SEV_HASH_TABLE_HEADER.as_bytes());
        out[16..18].copy_from_slice(&(TABLE as u16).to_le_bytes());
        for (i, (guid, hash)) in [
            (EfiGuid::SEV_CMDLINE_ENTRY, &self.cmdline),
            (EfiGuid::SEV_INITRD_ENTRY, &self.initrd),
            (EfiGuid::SEV_KERNEL_ENTRY, &self.kernel),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 18 + i * ENTRY;
            out[at..at + 16].copy_from_slice(guid.as_bytes());
            out[at + 16..at + 18].copy_from_slice(&(ENTRY as u16).to_le_bytes());
            out[at + 18..at + ENTRY].copy_from_slice(hash);
        }
        out
    }

    /// A zero page with [`KernelHashes::table`] at `offset`.
    pub fn page(&self, offset: usize) -> Result<[u8; PAGE_SIZE], OvmfError> {
        let mut page = [0u8; PAGE_SIZE];
        let dst = offset
            .checked_add(KERNEL_HASHES_TABLE_SIZE)
            .and_then(|end| page.get_mut(offset..end))
            .ok_or(OvmfError::KernelHashesOffset { offset })?;
        dst.copy_from_slice(&self.table());
        Ok(page)
    }
}

/// What to launch: the inputs of sev-snp-measure's `--mode snp` with VMM type QEMU.
#[derive(Clone, PartialEq, Eq)]
pub struct MeasureOptions {
    /// Number of vCPUs (1..=[`MAX_VCPUS`]).
    pub vcpus: u32,
    /// QEMU CPU model (its CPUID signature goes into each VMSA).
    pub vcpu_type: VcpuType,
    /// The VMSA `SEV_FEATURES` (sev-snp-measure's `--guest-features`, default `0x1`).
    pub guest_features: u64,
    /// Kernel image for direct boot; when given, its hashes are measured.
    pub kernel: Option<Vec<u8>>,
    /// Initrd; only valid with a kernel.
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line; only valid with a kernel.
    pub append: Option<String>,
}

impl fmt::Debug for MeasureOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeasureOptions")
            .field("vcpus", &self.vcpus)
            .field("vcpu_type", &self.vcpu_type)
            .field(
                "guest_features",
                &format_args!("{:#x}", self.guest_features),
            )
            .field("kernel_len", &self.kernel.as_ref().map(Vec::len))
            .field("initrd_len", &self.initrd.as_ref().map(Vec::len))
            .field("append", &self.append)
            .finish()
    }
}

/// The launch digest after measuring only the firmware pages (sev-snp-measure's
/// `--mode snp:ovmf-hash`); [`LaunchDigest::from_seed`] resumes from it.
pub fn ovmf_hash(ovmf: &[u8]) -> Result<[u8; DIGEST_SIZE], OvmfError> {
    let image = OvmfImage::parse(ovmf)?;
    let mut ld = LaunchDigest::new();
    ld.update_normal_range(image.gpa(), image.data())?;
    Ok(ld.digest())
}

/// The SEV-SNP launch digest QEMU produces when launching `ovmf` with `opts`
/// (sev-snp-measure `--mode snp --vmm-type QEMU`).
pub fn measure_snp(ovmf: &[u8], opts: &MeasureOptions) -> Result<[u8; DIGEST_SIZE], OvmfError> {
    if opts.vcpus == 0 || opts.vcpus > MAX_VCPUS {
        return Err(OvmfError::VcpuCount { vcpus: opts.vcpus });
    }
    let hashes = match &opts.kernel {
        Some(kernel) => Some(KernelHashes::new(
            kernel,
            opts.initrd.as_deref(),
            opts.append.as_deref(),
        )),
        None if opts.initrd.is_some() || opts.append.is_some() => {
            return Err(OvmfError::InitrdOrAppendWithoutKernel);
        }
        None => None,
    };

    let image = OvmfImage::parse(ovmf)?;
    if hashes.is_some() && !image.has_section(SectionType::SnpKernelHashes) {
        return Err(OvmfError::MissingKernelHashesSection);
    }

    check_section_layout(&image)?;

    let mut ld = LaunchDigest::new();
    ld.update_normal_range(image.gpa(), image.data())?;
    for section in image.sev_metadata() {
        measure_section(&mut ld, &image, section, hashes.as_ref())?;
    }

    let ap_eip = image.sev_es_reset_eip()?;
    if opts.vcpus > 1 && ap_eip == 0 {
        return Err(OvmfError::NoApResetAddress);
    }
    let bsp = qemu_vmsa_page(VcpuRole::Bsp, opts.vcpu_type, opts.guest_features);
    ld.update_vmsa(&bsp)?;
    if opts.vcpus > 1 {
        let ap = qemu_vmsa_page(
            VcpuRole::Ap { reset_eip: ap_eip },
            opts.vcpu_type,
            opts.guest_features,
        );
        for _ in 1..opts.vcpus {
            ld.update_vmsa(&ap)?;
        }
    }
    Ok(ld.digest())
}

/// The guest-physical range `[start, end)` a section's pages cover, if its type is known.
fn section_span(section: &SevMetadataSection) -> Option<(u64, u64)> {
    let start = u64::from(section.gpa);
    let len = match section.section_type {
        SectionType::SnpSecMem | SectionType::SvsmCaa | SectionType::SnpKernelHashes => {
            u64::from(section.size)
        }
        SectionType::SnpSecrets | SectionType::Cpuid => PAGE_SIZE as u64,
        SectionType::Unknown(_) => return None,
    };
    Some((start, start + len))
}

/// Rejects layouts no real launch can have: sections beyond 4 GiB, or sharing pages with
/// each other or with the firmware image (the SNP firmware measures a page only once).
/// This also bounds the work to at most 4 GiB worth of pages.
fn check_section_layout(image: &OvmfImage<'_>) -> Result<(), OvmfError> {
    let mut spans: Vec<(u64, u64, SevMetadataSection)> = Vec::new();
    for section in image.sev_metadata() {
        let Some((start, end)) = section_span(section) else {
            continue;
        };
        if end > FOUR_GIB {
            return Err(OvmfError::SectionBeyond4Gib { section: *section });
        }
        if start == end {
            continue;
        }
        if end > image.gpa() {
            return Err(OvmfError::SectionOverlapsFirmware {
                section: *section,
                image_gpa: image.gpa(),
            });
        }
        spans.push((start, end, *section));
    }
    spans.sort_by_key(|&(start, end, _)| (start, end));
    for pair in spans.windows(2) {
        if let [(_, first_end, first), (second_start, _, second)] = pair
            && second_start < first_end
        {
            return Err(OvmfError::SectionOverlap {
                first: *first,
                second: *second,
            });
        }
    }
    Ok(())
}

fn measure_section(
    ld: &mut LaunchDigest,
    image: &OvmfImage<'_>,
    section: &SevMetadataSection,
    hashes: Option<&KernelHashes>,
) -> Result<(), OvmfError> {
    let gpa = u64::from(section.gpa);
    // Saturating on 16-bit targets makes an oversized section fail as unaligned.
    let size = usize::try_from(section.size).unwrap_or(usize::MAX);
    let in_section = |r: Result<(), LaunchError>| {
        r.map_err(|source| OvmfError::Section {
            section: *section,
            source,
        })
    };
    match section.section_type {
        SectionType::SnpSecMem | SectionType::SvsmCaa => {
            in_section(ld.update_contentless_range(gpa, PageType::Zero, size))
        }
        // One page each, whatever the declared size.
        SectionType::SnpSecrets => in_section(ld.update(gpa, PageType::Secrets, None)),
        SectionType::Cpuid => in_section(ld.update(gpa, PageType::Cpuid, None)),
        SectionType::SnpKernelHashes => match hashes {
            Some(hashes) => {
                let table_gpa = image.sev_hashes_table_gpa()?;
                let offset = usize::from((table_gpa & 0xFFF) as u16);
                let page = hashes.page(offset)?;
                if size != PAGE_SIZE {
                    return Err(OvmfError::KernelHashesSectionSize {
                        gpa: section.gpa,
                        size: section.size,
                    });
                }
                in_section(ld.update_normal_range(gpa, &page))
            }
            None => in_section(ld.update_contentless_range(gpa, PageType::Zero, size)),
        },
        SectionType::Unknown(section_type) => Err(OvmfError::UnknownSectionType {
            gpa: section.gpa,
            section_type,
        }),
    }
}

/// Parses `data` as an OVMF image and measures it with one and two vCPUs, ignoring
/// the results: the body of the `ovmf` fuzz target.
pub fn fuzz_measure(data: &[u8]) {
    if OvmfImage::parse(data).is_err() {
        return;
    }
    for vcpus in [1, 2] {
        let opts = MeasureOptions {
            vcpus,
            vcpu_type: VcpuType::ALL[0],
            guest_features: 1,
            kernel: Some(vec![0; 16]),
            initrd: None,
            append: Some("console=ttyS0".into()),
        };
        let _ = measure_snp(data, &opts);
        let _ = measure_snp(
            data,
            &MeasureOptions {
                kernel: None,
                append: None,
                ..opts
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn guid_text_form() {
        assert_eq!(
            EfiGuid::OVMF_TABLE_FOOTER.to_string(),
            "96b582de-1fb2-45f7-baea-a366c55a082d"
        );
        assert_eq!(
            EfiGuid::OVMF_TABLE_FOOTER.as_bytes()[..4],
            [0xde, 0x82, 0xb5, 0x96]
        );
        for (g, s) in [
            (
                EfiGuid::SEV_HASH_TABLE_RV,
                "7255371f-3a3b-4b04-927b-1da6efa8d454",
            ),
            (
                EfiGuid::SEV_ES_RESET_BLOCK,
                "00f771de-1a7e-4fcb-890e-68c77e2fb44e",
            ),
            (
                EfiGuid::OVMF_SEV_METADATA,
                "dc886566-984a-4798-a75e-5585a7bf67cc",
            ),
            (
                EfiGuid::SEV_HASH_TABLE_HEADER,
                "9438d606-4f22-4cc9-b479-a793d411fd21",
            ),
            (
                EfiGuid::SEV_KERNEL_ENTRY,
                "4de79437-abd2-427f-b835-d5b172d2045b",
            ),
            (
                EfiGuid::SEV_INITRD_ENTRY,
                "44baf731-3a2f-4bd7-9af1-41e29169781d",
            ),
            (
                EfiGuid::SEV_CMDLINE_ENTRY,
                "97d02dd8-bd20-4c94-aa78-e7714d36ab2a",
            ),
        ] {
            assert_eq!(g.to_string(), s);
        }
    }

    #[test]
    fn kernel_hashes_table_layout() {
        let h = KernelHashes::new(b"kernel", None, Some("console=ttyS0"));
        assert_eq!(h.kernel, sha256(b"kernel"));
        assert_eq!(h.initrd, sha256(b""));
        assert_eq!(h.cmdline, sha256(b"console=ttyS0\0"));
        // Absent and empty are the same.
        assert_eq!(
            KernelHashes::new(b"k", None, None),
            KernelHashes::new(b"k", Some(b""), Some(""))
        );
        let t = h.table();
        assert_eq!(&t[..16], EfiGuid::SEV_HASH_TABLE_HEADER.as_bytes());
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18..34], EfiGuid::SEV_CMDLINE_ENTRY.as_bytes());
        assert_eq!(&t[34..36], &[50, 0]);
        assert_eq!(&t[36..68], &h.cmdline);
        assert_eq!(&t[68..84], EfiGuid::SEV_INITRD_ENTRY.as_bytes());
        assert_eq!(&t[86..118], &h.initrd);
        assert_eq!(&t[118..134], EfiGuid::SEV_KERNEL_ENTRY.as_bytes());
        assert_eq!(&t[136..168], &h.kernel);
        assert_eq!(&t[168..], &[0u8; 8]);

        let page = h.page(0xC00).unwrap();
        assert_eq!(&page[0xC00..0xC00 + 176], &t);
        assert!(page[..0xC00].iter().chain(&page[0xCB0..]).all(|&b| b == 0));
        assert!(h.page(4096 - 176).is_ok());
        assert_eq!(
            h.page(4096 - 175),
            Err(OvmfError::KernelHashesOffset { offset: 4096 - 175 })
        );
    }

    #[test]
    fn section_types_round_trip() {
        for v in [1, 2, 3, 4, 0x10, 5, 0xFFFF_FFFF] {
            assert_eq!(SectionType::from(v).as_u32(), v);
        }
        assert_eq!(SectionType::from(5), SectionType::Unknown(5));
    }
}
