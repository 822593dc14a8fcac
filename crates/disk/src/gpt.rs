//! GUID partition tables (UEFI 2.10, section 5.3) on 512-byte-sector disk images:
//! parsing with every check (signatures, CRC32s, bounds, overlaps) and writing a
//! primary and backup table for a new layout.

use std::fmt;

/// The logical block size this module handles.
pub const LBA: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_LEN: usize = 92;
const ENTRY_LEN: usize = 128;
/// At most this many entries (128 is what every partitioning tool writes).
pub const MAX_ENTRIES: u32 = 1024;

/// Why a partition table was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    /// The image is smaller than a table needs.
    #[error("the disk image is too small for a GPT ({0} bytes)")]
    TooSmall(u64),
    /// No GPT signature at LBA 1.
    #[error(
        "no GPT at LBA 1 (a disk with 4096-byte logical sectors or an MBR-only disk is not supported)"
    )]
    NoGpt,
    /// A header field is out of range.
    #[error("the GPT header is invalid: {0}")]
    Header(String),
    /// A CRC32 does not match.
    #[error("the GPT {0} CRC32 does not match")]
    Crc(&'static str),
    /// A partition entry is out of range or overlaps another.
    #[error("GPT partition {index}: {why}")]
    Entry {
        /// 1-based partition number.
        index: u32,
        /// What is wrong.
        why: String,
    },
}

/// A GUID in its on-disk (mixed-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the textual form `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`.
    pub const fn parse(text: &str) -> Guid {
        let t = text.as_bytes();
        // Textual byte i comes from these hex digit positions.
        const POS: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = hex(t[POS[i]]) << 4 | hex(t[POS[i] + 1]);
            i += 1;
        }
        Guid(out)
    }
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The EFI system partition: firmware reads it, so it stays in clear.
pub const ESP: Guid = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// A BIOS boot partition (GRUB's core image): read before any key exists.
pub const BIOS_BOOT: Guid = Guid::parse("21686148-6449-6E6F-744E-656564454649");
/// An extended boot loader partition (XBOOTLDR, `/boot` of the Boot Loader
/// Specification): read by the boot loader, so it stays in clear.
pub const XBOOTLDR: Guid = Guid::parse("BC13C2FF-59E6-4262-A352-B275FD6F7172");

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (its entry index + 1).
    pub number: u32,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub guid: Guid,
    /// First LBA.
    pub first: u64,
    /// Last LBA, inclusive.
    pub last: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// The name field as stored (72 bytes of UTF-16LE).
    pub name_raw: [u8; 72],
}

impl Partition {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.last - self.first + 1) * LBA
    }

    /// Its name, decoded.
    pub fn name(&self) -> String {
        let units: Vec<u16> = self
            .name_raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        String::from_utf16_lossy(&units)
    }

    /// Whether boot firmware or a boot loader reads it before the OS has a key.
    pub fn boot_critical(&self) -> bool {
        [ESP, BIOS_BOOT, XBOOTLDR].contains(&self.type_guid)
    }
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// The disk GUID.
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable: u64,
    /// Number of entry slots.
    pub num_entries: u32,
    /// The used entries, by first LBA.
    pub partitions: Vec<Partition>,
    /// The first 446 bytes of the MBR (boot code), kept as they were.
    pub mbr_boot_code: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

/// CRC-32 (IEEE 802.3, reflected, as UEFI uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl Gpt {
    /// The bytes [`Gpt::parse`] needs from the start of the disk: the MBR, the header
    /// and the largest entry array it allows.
    pub const HEAD_LEN: usize = (2 * LBA as usize) + (MAX_ENTRIES as usize * ENTRY_LEN);

    /// Parses the primary table from `head` (the disk's first bytes, up to
    /// [`Gpt::HEAD_LEN`]) of a disk of `disk_len` bytes.
    pub fn parse(head: &[u8], disk_len: u64) -> Result<Self, GptError> {
        if disk_len < 34 * LBA || head.len() < 34 * LBA as usize {
            return Err(GptError::TooSmall(disk_len));
        }
        let total = disk_len / LBA;
        let h = &head[LBA as usize..2 * LBA as usize];
        if &h[..8] != SIGNATURE {
            return Err(GptError::NoGpt);
        }
        let bad = |why: String| GptError::Header(why);
        let header_len = u32_at(h, 12) as usize;
        if !(HEADER_LEN..=LBA as usize).contains(&header_len) {
            return Err(bad(format!("header size {header_len}")));
        }
        let mut copy = h[..header_len].to_vec();
        copy[16..20].fill(0);
        if crc32(&copy) != u32_at(h, 16) {
            return Err(GptError::Crc("header"));
        }
        if u64_at(h, 24) != 1 {
            return Err(bad("the primary header does not say it is at LBA 1".into()));
        }
        let first_usable = u64_at(h, 40);
        let last_usable = u64_at(h, 48);
        let entries_lba = u64_at(h, 72);
        let num_entries = u32_at(h, 80);
        let entry_len = u32_at(h, 84) as usize;
        if entry_len != ENTRY_LEN {
            return Err(bad(format!(
                "entries of {entry_len} bytes (only 128 are supported)"
            )));
        }
        if num_entries == 0 || num_entries > MAX_ENTRIES {
            return Err(bad(format!("{num_entries} entries")));
        }
        let array_len = num_entries as usize * ENTRY_LEN;
        let start = usize::try_from(entries_lba.saturating_mul(LBA)).unwrap_or(usize::MAX);
        let Some(array) = start
            .checked_add(array_len)
            .and_then(|end| head.get(start..end))
        else {
            return Err(bad(format!(
                "the entry array at LBA {entries_lba} is outside the disk's first sectors"
            )));
        };
        if entries_lba < 2 || first_usable < entries_lba + (array_len as u64).div_ceil(LBA) {
            return Err(bad("the entry array overlaps the usable area".into()));
        }
        let array_lbas = (array_len as u64).div_ceil(LBA);
        // The backup array and header take the disk's last LBAs.
        if last_usable.saturating_add(array_lbas + 2) > total || first_usable > last_usable {
            return Err(bad(format!(
                "usable LBAs {first_usable}..{last_usable} on a disk of {total}"
            )));
        }
        if crc32(array) != u32_at(h, 88) {
            return Err(GptError::Crc("partition entry array"));
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&h[56..72]);
        let mut partitions = Vec::new();
        for (i, e) in array.chunks_exact(ENTRY_LEN).enumerate() {
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let number = i as u32 + 1;
            let (first, last) = (u64_at(e, 32), u64_at(e, 40));
            if first > last || first < first_usable || last > last_usable {
                return Err(GptError::Entry {
                    index: number,
                    why: format!(
                        "LBAs {first}..{last} are outside the usable {first_usable}..{last_usable}"
                    ),
                });
            }
            let mut type_guid = [0u8; 16];
            type_guid.copy_from_slice(&e[..16]);
            let mut guid = [0u8; 16];
            guid.copy_from_slice(&e[16..32]);
            let mut name_raw = [0u8; 72];
            name_raw.copy_from_slice(&e[56..128]);
            partitions.push(Partition {
                number,
                type_guid: Guid(type_guid),
                guid: Guid(guid),
                first,
                last,
                attributes: u64_at(e, 48),
                name_raw,
            });
        }
        partitions.sort_by_key(|p| p.first);
        for w in partitions.windows(2) {
            if w[1].first <= w[0].last {
                return Err(GptError::Entry {
                    index: w[1].number,
                    why: format!("overlaps partition {}", w[0].number),
                });
            }
        }
        Ok(Self {
            disk_guid: Guid(disk_guid),
            first_usable,
            num_entries,
            partitions,
            mbr_boot_code: head[..446].to_vec(),
        })
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; self.num_entries as usize * ENTRY_LEN];
        for p in &self.partitions {
            let e = &mut array[(p.number as usize - 1) * ENTRY_LEN..][..ENTRY_LEN];
            e[..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.guid.0);
            e[32..40].copy_from_slice(&p.first.to_le_bytes());
            e[40..48].copy_from_slice(&p.last.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            e[56..128].copy_from_slice(&p.name_raw);
        }
        array
    }

    fn array_lbas(&self) -> u64 {
        (self.num_entries as u64 * ENTRY_LEN as u64).div_ceil(LBA)
    }

    /// The last usable LBA on a disk of `total` LBAs (the backup array and header
    /// take the end).
    pub fn last_usable(&self, total: u64) -> u64 {
        total - 2 - self.array_lbas()
    }

    fn header(&self, total: u64, backup: bool, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; LBA as usize];
        let (mine, other) = if backup {
            (total - 1, 1)
        } else {
            (1, total - 1)
        };
        let entries = if backup {
            total - 1 - self.array_lbas()
        } else {
            2
        };
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[24..32].copy_from_slice(&mine.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable(total).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_LEN]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The table for a disk of `total` LBAs, as (byte offset, bytes) writes: the
    /// protective MBR (boot code kept), the primary header and array, the backup
    /// array and header.
    pub fn encode(&self, total: u64) -> Vec<(u64, Vec<u8>)> {
        let array = self.entry_array();
        let crc = crc32(&array);
        let mut mbr = vec![0u8; LBA as usize];
        mbr[..446].copy_from_slice(&self.mbr_boot_code);
        let p = &mut mbr[446..462];
        p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        p[4] = 0xee;
        p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        p[8..12].copy_from_slice(&1u32.to_le_bytes());
        p[12..16].copy_from_slice(&u32::try_from(total - 1).unwrap_or(u32::MAX).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        vec![
            (0, mbr),
            (LBA, self.header(total, false, crc)),
            (2 * LBA, array.clone()),
            ((total - 1 - self.array_lbas()) * LBA, array),
            ((total - 1) * LBA, self.header(total, true, crc)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_written() {
        assert_eq!(ESP.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(ESP.0[..4], [0x28, 0x73, 0x2a, 0xc1]);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn an_encoded_table_parses_back_and_damage_is_named() {
        let mut name = [0u8; 72];
        name[..8].copy_from_slice(&[b'r', 0, b'o', 0, b'o', 0, b't', 0]);
        let gpt = Gpt {
            disk_guid: Guid([7; 16]),
            first_usable: 34,
            num_entries: 128,
            partitions: vec![Partition {
                number: 2,
                type_guid: ESP,
                guid: Guid([1; 16]),
                first: 2048,
                last: 4095,
                attributes: 0,
                name_raw: name,
            }],
            mbr_boot_code: vec![0; 446],
        };
        let total = 8192;
        let mut disk = vec![0u8; (total * LBA) as usize];
        for (off, bytes) in gpt.encode(total) {
            disk[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        }
        let back = Gpt::parse(&disk, disk.len() as u64).unwrap();
        assert_eq!(back, gpt);
        assert_eq!(back.partitions[0].name(), "root");
        disk[2 * LBA as usize + 200] ^= 1;
        assert_eq!(
            Gpt::parse(&disk, disk.len() as u64).unwrap_err(),
            GptError::Crc("partition entry array")
        );
        disk[LBA as usize] = b'X';
        assert_eq!(
            Gpt::parse(&disk, disk.len() as u64).unwrap_err(),
            GptError::NoGpt
        );
    }
}
