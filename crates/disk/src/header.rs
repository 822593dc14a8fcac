//! The LUKS2 binary header: two copies of `hdr_size` bytes (a 4 KiB binary header,
//! then the JSON area), each with a SHA-256 checksum over the whole copy.
//!
//! Pure byte handling, no I/O: [`parse_copy`] checks one copy, [`encode_copy`] makes
//! one. All integers are big-endian (LUKS2 on-disk format, section 2).

use aws_lc_rs::digest;

/// The primary copy's magic.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// The secondary copy's magic.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The binary header's length; the JSON area follows it.
pub const BINARY_LEN: usize = 4096;
/// The metadata sizes (binary + JSON) LUKS2 allows; the secondary copy sits at one
/// of these offsets.
pub const HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_LABEL: usize = 24;
const OFF_CSUM_ALG: usize = 72;
const OFF_SALT: usize = 104;
const OFF_UUID: usize = 168;
const OFF_SUBSYSTEM: usize = 208;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const LEN_LABEL: usize = 48;
const LEN_CSUM_ALG: usize = 32;
const LEN_SALT: usize = 64;
const LEN_UUID: usize = 40;
const LEN_SUBSYSTEM: usize = 48;
const LEN_CSUM: usize = 64;

/// Why a header copy was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a binary header, or than the copy claims.
    #[error("the header is truncated ({have} bytes, {need} needed)")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: u64,
    },
    /// Not a LUKS2 header copy.
    #[error("no LUKS magic at offset {0}")]
    Magic(u64),
    /// A LUKS version other than 2 (LUKS1 is not supported).
    #[error("LUKS version {0} is not supported (only LUKS2)")]
    Version(u16),
    /// `hdr_size` is not one of the sizes LUKS2 allows.
    #[error("a metadata size of {0} bytes is not one LUKS2 allows")]
    HdrSize(u64),
    /// The copy says it sits elsewhere than where it was read.
    #[error("the header copy at offset {found} says it belongs at {claimed}")]
    Offset {
        /// Where the copy was read.
        found: u64,
        /// Its `hdr_offset` field.
        claimed: u64,
    },
    /// A checksum algorithm other than sha256.
    #[error("header checksum algorithm {0:?} is not supported (only sha256)")]
    ChecksumAlgorithm(String),
    /// The checksum does not match.
    #[error("the header checksum at offset {0} does not match")]
    Checksum(u64),
    /// A text field is not NUL-terminated ASCII/UTF-8.
    #[error("the header's {0} field is not a NUL-terminated string")]
    Text(&'static str),
    /// The JSON area is not NUL-terminated UTF-8.
    #[error("the JSON area is not a NUL-terminated UTF-8 string")]
    JsonArea,
    /// The JSON does not fit the area.
    #[error("{len} bytes of JSON do not fit a {area}-byte JSON area")]
    JsonTooLong {
        /// The JSON's length with its NUL.
        len: usize,
        /// The area's length.
        area: usize,
    },
    /// A text field is too long for its slot.
    #[error("the {0} field is too long")]
    FieldTooLong(&'static str),
}

/// The fields of one binary header copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// Whether this is the primary copy (magic `LUKS\xba\xbe`).
    pub primary: bool,
    /// Binary header plus JSON area, in bytes.
    pub hdr_size: u64,
    /// Incremented on every metadata update; both copies carry the same value.
    pub seqid: u64,
    /// The volume label (may be empty).
    pub label: String,
    /// Random per copy; only there so that copies differ.
    pub salt: [u8; LEN_SALT],
    /// The volume UUID, textual.
    pub uuid: String,
    /// The subsystem label (may be empty).
    pub subsystem: String,
    /// This copy's own offset: 0 for the primary, `hdr_size` for the secondary.
    pub hdr_offset: u64,
}

impl BinaryHeader {
    /// The length of the JSON area.
    pub fn json_len(&self) -> u64 {
        self.hdr_size - BINARY_LEN as u64
    }
}

fn be_u64(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_be_bytes(b)
}

fn text(bytes: &[u8], field: &'static str) -> Result<String, HeaderError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(HeaderError::Text(field))?;
    std::str::from_utf8(&bytes[..end])
        .map(str::to_owned)
        .map_err(|_| HeaderError::Text(field))
}

/// The `hdr_size` a copy at the start of `bytes` claims, after checking its magic and
/// version; used to find how much more to read.
pub fn peek_size(bytes: &[u8], offset: u64) -> Result<(bool, u64), HeaderError> {
    if bytes.len() < BINARY_LEN {
        return Err(HeaderError::Truncated {
            have: bytes.len(),
            need: BINARY_LEN as u64,
        });
    }
    let primary = if bytes[..6] == MAGIC_PRIMARY {
        true
    } else if bytes[..6] == MAGIC_SECONDARY {
        false
    } else {
        return Err(HeaderError::Magic(offset));
    };
    let version = u16::from_be_bytes([bytes[OFF_VERSION], bytes[OFF_VERSION + 1]]);
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    let hdr_size = be_u64(bytes, OFF_HDR_SIZE);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(HeaderError::HdrSize(hdr_size));
    }
    Ok((primary, hdr_size))
}

/// Checks one header copy read at `offset`: magic, version, size, own offset,
/// checksum, then returns its fields and its JSON text.
pub fn parse_copy(bytes: &[u8], offset: u64) -> Result<(BinaryHeader, &str), HeaderError> {
    let (primary, hdr_size) = peek_size(bytes, offset)?;
    let len = usize::try_from(hdr_size).map_err(|_| HeaderError::HdrSize(hdr_size))?;
    let Some(copy) = bytes.get(..len) else {
        return Err(HeaderError::Truncated {
            have: bytes.len(),
            need: hdr_size,
        });
    };
    let hdr_offset = be_u64(copy, OFF_HDR_OFFSET);
    if hdr_offset != offset {
        return Err(HeaderError::Offset {
            found: offset,
            claimed: hdr_offset,
        });
    }
    let alg = text(&copy[OFF_CSUM_ALG..OFF_CSUM_ALG + LEN_CSUM_ALG], "csum_alg")?;
    if alg != "sha256" {
        return Err(HeaderError::ChecksumAlgorithm(alg));
    }
    if checksum(copy) != copy[OFF_CSUM..OFF_CSUM + 32] {
        return Err(HeaderError::Checksum(offset));
    }
    let json_area = &copy[BINARY_LEN..];
    let end = json_area
        .iter()
        .position(|&b| b == 0)
        .ok_or(HeaderError::JsonArea)?;
    let json = std::str::from_utf8(&json_area[..end]).map_err(|_| HeaderError::JsonArea)?;
    let mut salt = [0u8; LEN_SALT];
    salt.copy_from_slice(&copy[OFF_SALT..OFF_SALT + LEN_SALT]);
    let header = BinaryHeader {
        primary,
        hdr_size,
        seqid: be_u64(copy, OFF_SEQID),
        label: text(&copy[OFF_LABEL..OFF_LABEL + LEN_LABEL], "label")?,
        salt,
        uuid: text(&copy[OFF_UUID..OFF_UUID + LEN_UUID], "uuid")?,
        subsystem: text(
            &copy[OFF_SUBSYSTEM..OFF_SUBSYSTEM + LEN_SUBSYSTEM],
            "subsystem",
        )?,
        hdr_offset,
    };
    Ok((header, json))
}

/// SHA-256 over a whole copy with its checksum field taken as zero.
fn checksum(copy: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&copy[..OFF_CSUM]);
    ctx.update(&[0u8; LEN_CSUM]);
    ctx.update(&copy[OFF_CSUM + LEN_CSUM..]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn put_text(
    out: &mut [u8],
    off: usize,
    len: usize,
    value: &str,
    field: &'static str,
) -> Result<(), HeaderError> {
    let bytes = value.as_bytes();
    if bytes.len() >= len || bytes.contains(&0) {
        return Err(HeaderError::FieldTooLong(field));
    }
    out[off..off + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// One header copy of `header.hdr_size` bytes: the binary header, the JSON text
/// NUL-terminated and zero-filled, and the checksum.
pub fn encode_copy(header: &BinaryHeader, json: &str) -> Result<Vec<u8>, HeaderError> {
    if !HDR_SIZES.contains(&header.hdr_size) {
        return Err(HeaderError::HdrSize(header.hdr_size));
    }
    let len =
        usize::try_from(header.hdr_size).map_err(|_| HeaderError::HdrSize(header.hdr_size))?;
    let area = len - BINARY_LEN;
    if json.len() + 1 > area || json.as_bytes().contains(&0) {
        return Err(HeaderError::JsonTooLong {
            len: json.len() + 1,
            area,
        });
    }
    let mut out = vec![0u8; len];
    out[..6].copy_from_slice(if header.primary {
        &MAGIC_PRIMARY
    } else {
        &MAGIC_SECONDARY
    });
    out[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&2u16.to_be_bytes());
    out[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&header.hdr_size.to_be_bytes());
    out[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&header.seqid.to_be_bytes());
    put_text(&mut out, OFF_LABEL, LEN_LABEL, &header.label, "label")?;
    put_text(&mut out, OFF_CSUM_ALG, LEN_CSUM_ALG, "sha256", "csum_alg")?;
    out[OFF_SALT..OFF_SALT + LEN_SALT].copy_from_slice(&header.salt);
    put_text(&mut out, OFF_UUID, LEN_UUID, &header.uuid, "uuid")?;
    put_text(
        &mut out,
        OFF_SUBSYSTEM,
        LEN_SUBSYSTEM,
        &header.subsystem,
        "subsystem",
    )?;
    out[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&header.hdr_offset.to_be_bytes());
    out[BINARY_LEN..BINARY_LEN + json.len()].copy_from_slice(json.as_bytes());
    let sum = checksum(&out);
    out[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(primary: bool) -> BinaryHeader {
        BinaryHeader {
            primary,
            hdr_size: 16384,
            seqid: 7,
            label: "root".into(),
            salt: [9; 64],
            uuid: "0b1f4c2e-7e0b-4d8e-9a51-3c1b7f9e2a10".into(),
            subsystem: String::new(),
            hdr_offset: if primary { 0 } else { 16384 },
        }
    }

    #[test]
    fn a_copy_round_trips_and_its_checksum_covers_the_json() {
        let h = header(true);
        let mut copy = encode_copy(&h, "{\"a\":1}").unwrap();
        let (parsed, json) = parse_copy(&copy, 0).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(json, "{\"a\":1}");
        copy[BINARY_LEN + 3] ^= 1;
        assert_eq!(parse_copy(&copy, 0).unwrap_err(), HeaderError::Checksum(0));
    }

    #[test]
    fn a_copy_read_elsewhere_is_refused() {
        let copy = encode_copy(&header(false), "{}").unwrap();
        assert!(parse_copy(&copy, 16384).is_ok());
        assert_eq!(
            parse_copy(&copy, 0).unwrap_err(),
            HeaderError::Offset {
                found: 0,
                claimed: 16384
            }
        );
        assert!(matches!(
            parse_copy(&copy[..9000], 16384),
            Err(HeaderError::Truncated { .. })
        ));
    }

    #[test]
    fn luks1_and_oversized_json_are_named() {
        let mut copy = encode_copy(&header(true), "{}").unwrap();
        copy[7] = 1;
        assert_eq!(parse_copy(&copy, 0).unwrap_err(), HeaderError::Version(1));
        let big = "x".repeat(12288);
        assert!(matches!(
            encode_copy(&header(true), &big),
            Err(HeaderError::JsonTooLong { .. })
        ));
    }
}
