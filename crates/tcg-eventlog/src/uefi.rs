//! UEFI structures found in event data: `EFI_GUID` and `UEFI_VARIABLE_DATA`.

use std::fmt;

use crate::error::Error;
use crate::reader::Reader;

/// Largest `UEFI_VARIABLE_DATA` accepted: the event data bound.
const MAX_VARIABLE_DATA: usize = crate::MAX_EVENT_DATA;

/// An `EFI_GUID` as stored in memory: `Data1` (u32), `Data2` (u16) and `Data3` (u16)
/// little-endian, then the 8 bytes of `Data4` in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// `EFI_GLOBAL_VARIABLE`, 8be4df61-93ca-11d2-aa0d-00e098032b8c (`SecureBoot`, `PK`,
    /// `KEK`, `Boot####`, ...).
    pub const EFI_GLOBAL_VARIABLE: Guid = Guid::from_fields(
        0x8be4_df61,
        0x93ca,
        0x11d2,
        [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
    );

    /// `EFI_IMAGE_SECURITY_DATABASE_GUID`, d719b2cb-3d3a-4596-a3bc-dad00e67656f (`db`,
    /// `dbx`).
    pub const IMAGE_SECURITY_DATABASE: Guid = Guid::from_fields(
        0xd719_b2cb,
        0x3d3a,
        0x4596,
        [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
    );

    /// The GUID written `d1-d2-d3-d4[0..2]-d4[2..8]` in text.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Guid {
    /// The usual text form, e.g. `8be4df61-93ca-11d2-aa0d-00e098032b8c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            g[3],
            g[2],
            g[1],
            g[0],
            g[5],
            g[4],
            g[7],
            g[6],
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

/// A parsed `UEFI_VARIABLE_DATA`, the event data of `EV_EFI_VARIABLE_DRIVER_CONFIG`,
/// `EV_EFI_VARIABLE_BOOT(2)` and `EV_EFI_VARIABLE_AUTHORITY` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiVariableData {
    /// `VariableName`: the vendor GUID of the variable.
    pub guid: Guid,
    /// `UnicodeName`, decoded from UTF-16LE (no terminating NUL in a well-formed log).
    pub name: String,
    /// `VariableData`.
    pub data: Vec<u8>,
}

impl UefiVariableData {
    /// Same as [`parse_uefi_variable_data`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        parse_uefi_variable_data(bytes)
    }
}

/// Parses a `UEFI_VARIABLE_DATA`: `VariableName` (16-byte GUID), `UnicodeNameLength`
/// (u64, in UTF-16 code units), `VariableDataLength` (u64), `UnicodeName` (UTF-16LE),
/// `VariableData`; all little-endian.
///
/// Strict: the lengths must describe exactly `bytes` (no truncation, no trailing bytes),
/// the name must be valid UTF-16, and the whole structure at most
/// [`crate::MAX_EVENT_DATA`] bytes. Error offsets are relative to the start of `bytes`.
pub fn parse_uefi_variable_data(bytes: &[u8]) -> Result<UefiVariableData, Error> {
    if bytes.len() > MAX_VARIABLE_DATA {
        return Err(Error::TooLarge {
            offset: 0,
            what: "UEFI_VARIABLE_DATA size",
            max: MAX_VARIABLE_DATA as u64,
            got: bytes.len() as u64,
        });
    }
    let mut r = Reader::new(bytes);
    let guid = Guid(r.bytes16("UEFI_VARIABLE_DATA.VariableName")?);
    let name_offset = r.offset();
    let name_len = r.u64("UEFI_VARIABLE_DATA.UnicodeNameLength")?;
    let data_offset = r.offset();
    let data_len = r.u64("UEFI_VARIABLE_DATA.VariableDataLength")?;
    let left = r.rest().len() as u64;
    let name_bytes = name_len.checked_mul(2).filter(|&n| n <= left);
    let Some(name_bytes) = name_bytes else {
        return Err(Error::TooLarge {
            offset: name_offset,
            what: "UEFI_VARIABLE_DATA.UnicodeNameLength",
            max: left / 2,
            got: name_len,
        });
    };
    if data_len > left - name_bytes {
        return Err(Error::TooLarge {
            offset: data_offset,
            what: "UEFI_VARIABLE_DATA.VariableDataLength",
            max: left - name_bytes,
            got: data_len,
        });
    }
    // Both lengths are at most `left`, itself at most MAX_VARIABLE_DATA: they fit a usize.
    let name_bytes = usize::try_from(name_bytes).unwrap_or(usize::MAX);
    let data_len = usize::try_from(data_len).unwrap_or(usize::MAX);
    let unicode_offset = r.offset();
    let raw_name = r.take(name_bytes, "UEFI_VARIABLE_DATA.UnicodeName")?;
    let units: Vec<u16> = raw_name
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let name = String::from_utf16(&units).map_err(|_| Error::InvalidVariableName {
        offset: unicode_offset,
    })?;
    let data = r
        .take(data_len, "UEFI_VARIABLE_DATA.VariableData")?
        .to_vec();
    r.finish("UEFI_VARIABLE_DATA")?;
    Ok(UefiVariableData { guid, name, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn variable(guid: Guid, name: &str, data: &[u8]) -> Vec<u8> {
        let units: Vec<u16> = name.encode_utf16().collect();
        let mut out = guid.0.to_vec();
        out.extend((units.len() as u64).to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        for u in units {
            out.extend(u.to_le_bytes());
        }
        out.extend(data);
        out
    }

    #[test]
    fn guid_text() {
        assert_eq!(
            Guid::EFI_GLOBAL_VARIABLE.to_string(),
            "8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
        assert_eq!(
            Guid::EFI_GLOBAL_VARIABLE.0[..4],
            [0x61, 0xdf, 0xe4, 0x8b],
            "Data1 is little-endian in memory"
        );
        assert_eq!(
            Guid::IMAGE_SECURITY_DATABASE.to_string(),
            "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
        );
    }

    #[test]
    fn parses_and_rejects() {
        let v = variable(Guid::EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]);
        let p = parse_uefi_variable_data(&v).unwrap();
        assert_eq!(p.guid, Guid::EFI_GLOBAL_VARIABLE);
        assert_eq!(p.name, "SecureBoot");
        assert_eq!(p.data, vec![1]);
        assert_eq!(UefiVariableData::parse(&v).unwrap(), p);

        // Every truncation fails.
        for cut in 0..v.len() {
            assert!(parse_uefi_variable_data(&v[..cut]).is_err(), "cut {cut}");
        }
        // Trailing byte.
        let mut long = v.clone();
        long.push(0);
        assert_eq!(
            parse_uefi_variable_data(&long),
            Err(Error::TrailingBytes {
                offset: v.len(),
                what: "UEFI_VARIABLE_DATA",
                count: 1
            })
        );
        // Name length that overflows when doubled, and one over the input.
        for name_len in [u64::MAX, u64::MAX / 2 + 1, 11] {
            let mut bad = v.clone();
            bad[16..24].copy_from_slice(&name_len.to_le_bytes());
            assert!(matches!(
                parse_uefi_variable_data(&bad),
                Err(Error::TooLarge { offset: 16, .. })
            ));
        }
        // Data length over the input.
        for data_len in [u64::MAX, 2] {
            let mut bad = v.clone();
            bad[24..32].copy_from_slice(&data_len.to_le_bytes());
            assert!(matches!(
                parse_uefi_variable_data(&bad),
                Err(Error::TooLarge { offset: 24, .. })
            ));
        }
        // Lone surrogate in the name.
        let mut bad = v.clone();
        bad[32..34].copy_from_slice(&0xd800u16.to_le_bytes());
        assert_eq!(
            parse_uefi_variable_data(&bad),
            Err(Error::InvalidVariableName { offset: 32 })
        );
        // Empty name and data are fine.
        let empty = variable(Guid([0; 16]), "", &[]);
        assert_eq!(parse_uefi_variable_data(&empty).unwrap().name, "");
    }
}
