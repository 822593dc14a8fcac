//! PE/COFF images as UEFI loads them: headers, sections, the certificate table, and
//! the Authenticode image digest.
//!
//! The digest follows edk2's `HashPeImage`: the headers without the CheckSum field and
//! the certificate-table directory entry, every section with raw data in file order,
//! then the bytes after the last section that are not the certificate table. Nothing
//! is padded (the Microsoft specification pads to 8 bytes; signed images are already
//! aligned, so this only matters for unsigned images allowed by hash, where firmware
//! is what counts).

use aws_lc_rs::digest;

use crate::Error;

/// Images larger than this are refused (a signed kernel is under 16 MiB).
pub const MAX_IMAGE_SIZE: usize = 256 << 20;
/// More sections than this are refused (the PE loader's limit is 96).
pub const MAX_SECTIONS: usize = 96;

const PE32_MAGIC: u16 = 0x10B;
const PE32_PLUS_MAGIC: u16 = 0x20B;
/// `WIN_CERT_REVISION_2_0`.
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// The hash algorithms of Authenticode digests and signature lists: the same four as
/// TPM PCR banks (SHA-1 digests are read in db/dbx; SHA-1 signatures are refused).
pub use tcg_eventlog::HashAlg;

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NUL padding removed (`.text`, `.sbat`, …).
    pub name: String,
    /// VirtualSize: the loaded size.
    pub virtual_size: u32,
    /// SizeOfRawData.
    pub raw_size: u32,
    /// PointerToRawData (a file offset).
    pub raw_offset: u32,
}

/// A parsed PE/COFF image borrowing its bytes.
#[derive(Debug, Clone)]
pub struct PeImage<'a> {
    bytes: &'a [u8],
    pe32_plus: bool,
    machine: u16,
    checksum_offset: usize,
    /// File offset of the certificate-table directory entry, when the image has one.
    cert_entry_offset: Option<usize>,
    size_of_headers: usize,
    sections: Vec<Section>,
    /// (file offset, size) of the certificate table; size 0 when unsigned.
    cert_table: (usize, usize),
}

fn u16_at(b: &[u8], at: usize, field: &'static str) -> Result<u16, Error> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(Error::Pe {
            why: format!("truncated at {field} (offset {at})"),
        })
}

fn u32_at(b: &[u8], at: usize, field: &'static str) -> Result<u32, Error> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Error::Pe {
            why: format!("truncated at {field} (offset {at})"),
        })
}

fn pe_err(why: impl Into<String>) -> Error {
    Error::Pe { why: why.into() }
}

impl<'a> PeImage<'a> {
    /// Parses the headers of `bytes`, checking every offset against the file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_IMAGE_SIZE {
            return Err(pe_err(format!(
                "image of {} bytes is over the {MAX_IMAGE_SIZE}-byte limit",
                bytes.len()
            )));
        }
        if bytes.get(..2) != Some(b"MZ") {
            return Err(pe_err("no MZ signature: not a PE/COFF image"));
        }
        let pe = u32_at(bytes, 0x3C, "e_lfanew")? as usize;
        if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(pe_err(format!("no PE signature at e_lfanew {pe:#x}")));
        }
        let coff = pe + 4;
        let machine = u16_at(bytes, coff, "Machine")?;
        let sections_n = usize::from(u16_at(bytes, coff + 2, "NumberOfSections")?);
        if sections_n > MAX_SECTIONS {
            return Err(pe_err(format!(
                "{sections_n} sections, over the limit of {MAX_SECTIONS}"
            )));
        }
        let symbols = u32_at(bytes, coff + 8, "PointerToSymbolTable")? as usize;
        let symbol_count = u32_at(bytes, coff + 12, "NumberOfSymbols")? as usize;
        let opt_size = usize::from(u16_at(bytes, coff + 16, "SizeOfOptionalHeader")?);
        let opt = coff + 20;
        let magic = u16_at(bytes, opt, "optional header Magic")?;
        let (pe32_plus, rva_count_at, dir_at) = match magic {
            PE32_MAGIC => (false, 92, 96),
            PE32_PLUS_MAGIC => (true, 108, 112),
            other => return Err(pe_err(format!("unknown optional header magic {other:#x}"))),
        };
        if opt_size < rva_count_at + 4 {
            return Err(pe_err("optional header too small for its data directories"));
        }
        let size_of_headers = u32_at(bytes, opt + 60, "SizeOfHeaders")? as usize;
        let checksum_offset = opt + 64;
        let rva_count = u32_at(bytes, opt + rva_count_at, "NumberOfRvaAndSizes")? as usize;
        if dir_at + rva_count.min(16) * 8 > opt_size {
            return Err(pe_err("data directories run past the optional header"));
        }
        let (cert_entry_offset, cert_table) = if rva_count > 4 {
            let entry = opt + dir_at + 4 * 8;
            let offset = u32_at(bytes, entry, "certificate table offset")? as usize;
            let size = u32_at(bytes, entry + 4, "certificate table size")? as usize;
            (Some(entry), (offset, size))
        } else {
            (None, (0, 0))
        };
        let section_table = opt + opt_size;
        let mut sections = Vec::with_capacity(sections_n);
        for i in 0..sections_n {
            let at = section_table + i * 40;
            let header = bytes
                .get(at..at + 40)
                .ok_or_else(|| pe_err(format!("section header {i} is truncated")))?;
            let name_bytes = &header[..8];
            let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(8);
            let mut name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
            // Names over 8 bytes are "/N": offset N into the COFF string table, which
            // follows the symbol table (18-byte records).
            if let Some(offset) = name.strip_prefix('/').and_then(|n| n.parse::<usize>().ok()) {
                name = symbols
                    .checked_add(symbol_count.saturating_mul(18))
                    .and_then(|table| table.checked_add(offset))
                    .and_then(|at| bytes.get(at..))
                    .map(|s| {
                        let s = &s[..s.len().min(256)];
                        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
                        String::from_utf8_lossy(&s[..end]).into_owned()
                    })
                    .ok_or_else(|| {
                        pe_err(format!("section name {name:?} is outside the string table"))
                    })?;
            }
            let virtual_size = u32_at(header, 8, "VirtualSize")?;
            let raw_size = u32_at(header, 16, "SizeOfRawData")?;
            let raw_offset = u32_at(header, 20, "PointerToRawData")?;
            if raw_size != 0 && raw_offset as usize + raw_size as usize > bytes.len() {
                return Err(pe_err(format!(
                    "section {name:?} runs past the end of the file ({} + {} > {})",
                    raw_offset,
                    raw_size,
                    bytes.len()
                )));
            }
            sections.push(Section {
                name,
                virtual_size,
                raw_size,
                raw_offset,
            });
        }
        if size_of_headers > bytes.len() || size_of_headers < section_table + sections_n * 40 {
            return Err(pe_err(format!(
                "SizeOfHeaders {size_of_headers} does not cover the headers or exceeds the file"
            )));
        }
        if let Some(entry) = cert_entry_offset
            && entry + 8 > size_of_headers
        {
            return Err(pe_err(
                "the certificate-table entry lies outside SizeOfHeaders",
            ));
        }
        let (cert_offset, cert_size) = cert_table;
        if cert_size != 0
            && (cert_offset < size_of_headers
                || cert_offset
                    .checked_add(cert_size)
                    .is_none_or(|end| end > bytes.len()))
        {
            return Err(pe_err(format!(
                "certificate table at {cert_offset} size {cert_size} lies outside the file"
            )));
        }
        Ok(Self {
            bytes,
            pe32_plus,
            machine,
            checksum_offset,
            cert_entry_offset,
            size_of_headers,
            sections,
            cert_table,
        })
    }

    /// Whether this is PE32+ (64-bit).
    pub fn is_pe32_plus(&self) -> bool {
        self.pe32_plus
    }

    /// The COFF Machine field (0x8664 for x86-64).
    pub fn machine(&self) -> u16 {
        self.machine
    }

    /// The section headers in table order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The loaded contents of the first section called `name` (its raw data cut to its
    /// VirtualSize when that is smaller).
    pub fn section_data(&self, name: &str) -> Option<&'a [u8]> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        let len = if s.virtual_size != 0 {
            s.virtual_size.min(s.raw_size)
        } else {
            s.raw_size
        } as usize;
        self.bytes
            .get(s.raw_offset as usize..s.raw_offset as usize + len)
    }

    /// The Authenticode digest of the image with `alg`.
    pub fn authenticode_digest(&self, alg: HashAlg) -> Result<Vec<u8>, Error> {
        let b = self.bytes;
        let mut ctx = digest::Context::new(alg.aws_algorithm());
        ctx.update(&b[..self.checksum_offset]);
        match self.cert_entry_offset {
            Some(entry) => {
                ctx.update(&b[self.checksum_offset + 4..entry]);
                ctx.update(&b[entry + 8..self.size_of_headers]);
            }
            None => ctx.update(&b[self.checksum_offset + 4..self.size_of_headers]),
        }
        let mut sections: Vec<&Section> =
            self.sections.iter().filter(|s| s.raw_size != 0).collect();
        sections.sort_by_key(|s| s.raw_offset);
        let mut hashed = self.size_of_headers;
        for s in sections {
            let start = s.raw_offset as usize;
            let end = start + s.raw_size as usize;
            ctx.update(&b[start..end]);
            hashed += s.raw_size as usize;
        }
        let (_, cert_size) = self.cert_table;
        if b.len() > hashed {
            let trailing = (b.len() - hashed).checked_sub(cert_size).ok_or_else(|| {
                pe_err("the certificate table overlaps hashed data (sections or headers)")
            })?;
            if hashed + trailing > b.len() {
                return Err(pe_err("sections overlap each other"));
            }
            ctx.update(&b[hashed..hashed + trailing]);
        } else if hashed > b.len() {
            return Err(pe_err("sections overlap the headers or each other"));
        }
        Ok(ctx.finish().as_ref().to_vec())
    }

    /// The PKCS#7 blobs of the certificate table's `WIN_CERTIFICATE` entries, in order.
    /// An entry of another type is returned as its type code.
    pub fn signatures(&self) -> Result<Vec<Result<&'a [u8], u16>>, Error> {
        let (offset, size) = self.cert_table;
        if size == 0 {
            return Ok(Vec::new());
        }
        let table = offset
            .checked_add(size)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or_else(|| pe_err("the certificate table lies outside the file"))?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < table.len() {
            let len = u32_at(table, at, "WIN_CERTIFICATE dwLength")? as usize;
            let revision = u16_at(table, at + 4, "WIN_CERTIFICATE wRevision")?;
            let kind = u16_at(table, at + 6, "WIN_CERTIFICATE wCertificateType")?;
            if len < 8 || at + len > table.len() {
                return Err(pe_err(format!(
                    "WIN_CERTIFICATE at table offset {at} has length {len}, outside the table"
                )));
            }
            if revision != WIN_CERT_REVISION_2_0 {
                return Err(pe_err(format!(
                    "WIN_CERTIFICATE revision {revision:#x} (only 0x0200 is defined)"
                )));
            }
            if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
                out.push(Ok(&table[at + 8..at + len]));
            } else {
                out.push(Err(kind));
            }
            if out.len() > 16 {
                return Err(pe_err("more than 16 signatures"));
            }
            // Entries are quadword aligned.
            at = at
                .checked_add(len.div_ceil(8) * 8)
                .ok_or_else(|| pe_err("certificate table overflow"))?;
        }
        Ok(out)
    }

    /// Whether the image carries a certificate table.
    pub fn is_signed(&self) -> bool {
        self.cert_table.1 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE32+ image with no sections and 0x200 bytes of headers.
    fn minimal(cert: (u32, u32)) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..2].copy_from_slice(b"MZ");
        b[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&PE32_PLUS_MAGIC.to_le_bytes());
        b[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        b[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let entry = opt + 112 + 32;
        b[entry..entry + 4].copy_from_slice(&cert.0.to_le_bytes());
        b[entry + 4..entry + 8].copy_from_slice(&cert.1.to_le_bytes());
        b
    }

    #[test]
    fn an_empty_certificate_entry_with_a_wild_offset_is_unsigned() {
        // Found by the fuzzer: size 0 at an offset past the end of the file.
        let b = minimal((0xFFFF_0000, 0));
        let pe = PeImage::parse(&b).unwrap();
        assert!(!pe.is_signed());
        assert!(pe.signatures().unwrap().is_empty());
        // Checksum and certificate entry are excluded from the digest.
        let mut changed = b.clone();
        changed[0x44 + 20 + 64] ^= 0xFF; // CheckSum
        changed[0x44 + 20 + 112 + 32] ^= 0x01; // certificate table offset
        let digest = |bytes: &[u8]| {
            PeImage::parse(bytes)
                .unwrap()
                .authenticode_digest(HashAlg::Sha256)
                .unwrap()
        };
        assert_eq!(digest(&b), digest(&changed));
        changed[0x100] ^= 1; // any other header byte counts
        assert_ne!(digest(&b), digest(&changed));
    }

    #[test]
    fn certificate_tables_outside_the_file_are_refused() {
        assert!(PeImage::parse(&minimal((0x1F0, 0x100))).is_err());
        assert!(
            PeImage::parse(&minimal((0x100, 8))).is_err(),
            "inside the headers"
        );
        assert!(PeImage::parse(&minimal((u32::MAX, u32::MAX))).is_err());
        let mut b = minimal((0, 0));
        b.truncate(0x150);
        assert!(PeImage::parse(&b).is_err());
    }
}
