//! The OVMF variable store (`OVMF_VARS*.fd`): a firmware volume holding an
//! authenticated variable store, then the fault-tolerant-write (FTW) areas. Reading
//! takes the live records (`VAR_ADDED`, or `IN_DELETED_TRANSITION` with no live
//! copy); writing fills the variable area of a base image with compacted records and
//! keeps everything else of the base (FV header, FTW areas) as it is.

use tcg_eventlog::Guid;

use crate::Error;
use crate::varstore::{Variable, VariableStore};

/// `EFI_SYSTEM_NV_DATA_FV_GUID`, the FileSystemGuid of the variable FV.
const NV_DATA_FV: Guid = Guid::from_fields(
    0xfff1_2b8d,
    0x7696,
    0x4c8b,
    [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50],
);
/// `EFI_AUTHENTICATED_VARIABLE_GUID`: a store of authenticated-variable records.
const AUTH_STORE: Guid = Guid::from_fields(
    0xaaf3_2c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// `EFI_VARIABLE_GUID`: a store of plain records (refused: OVMF builds with Secure
/// Boot use the authenticated format).
const PLAIN_STORE: Guid = Guid::from_fields(
    0xddcf_3616,
    0x3275,
    0x4164,
    [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d],
);

/// `EDKII_WORKING_BLOCK_SIGNATURE_GUID`: the fault-tolerant-write working block.
const FTW_WORKING_BLOCK: Guid = Guid::from_fields(
    0x9e58_292b,
    0x7c68,
    0x497d,
    [0xa0, 0xce, 0x65, 0x00, 0xfd, 0x9f, 0x1b, 0x95],
);

const STORE_HEADER: usize = 28;
const RECORD_HEADER: usize = 60;
const START_ID: u16 = 0x55AA;
const VAR_ADDED: u8 = 0x3F;
const VAR_IN_DELETED_TRANSITION_ADDED: u8 = 0x3E;
/// Images larger than this are refused (Debian's 4M build is 540672 bytes).
pub const MAX_OVMF_VARS: usize = 16 << 20;

fn err(why: impl Into<String>) -> Error {
    Error::Ovmf(why.into())
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Where the variable area of an image lies: (start of records, end of the store).
fn layout(image: &[u8]) -> Result<(usize, usize), Error> {
    if image.len() > MAX_OVMF_VARS {
        return Err(err(format!(
            "{} bytes is over the {MAX_OVMF_VARS}-byte limit",
            image.len()
        )));
    }
    if image.get(40..44) != Some(b"_FVH") {
        return Err(err(
            "no firmware volume signature (_FVH at byte 40): not an OVMF_VARS image",
        ));
    }
    if image.get(16..32) != Some(&NV_DATA_FV.0[..]) {
        return Err(err("the firmware volume is not EFI_SYSTEM_NV_DATA_FV"));
    }
    let fv_header = usize::from(u16_at(image, 48).ok_or_else(|| err("truncated FV header"))?);
    let store = fv_header;
    let sig = image
        .get(store..store + 16)
        .ok_or_else(|| err("truncated variable store header"))?;
    if sig == PLAIN_STORE.0 {
        return Err(err(
            "a non-authenticated variable store (built without Secure Boot) is not supported",
        ));
    }
    if sig != AUTH_STORE.0 {
        return Err(err(
            "the variable store signature is not EFI_AUTHENTICATED_VARIABLE_GUID",
        ));
    }
    let size = u32_at(image, store + 16).ok_or_else(|| err("truncated store header"))? as usize;
    let (format, state) = (image.get(store + 20), image.get(store + 21));
    if format != Some(&0x5A) || state != Some(&0xFE) {
        return Err(err(
            "the variable store is not formatted and healthy (format 0x5A, state 0xFE)",
        ));
    }
    let end = store
        .checked_add(size)
        .filter(|&e| e <= image.len() && size >= STORE_HEADER)
        .ok_or_else(|| err(format!("the store size {size} runs past the image")))?;
    Ok((store + STORE_HEADER, end))
}

/// Reads the live variables of an `OVMF_VARS*.fd` image.
pub fn read(image: &[u8]) -> Result<VariableStore, Error> {
    let (mut at, end) = layout(image)?;
    let mut live: Vec<(u8, Variable)> = Vec::new();
    while at + RECORD_HEADER <= end && u16_at(image, at) == Some(START_ID) {
        let h = &image[at..at + RECORD_HEADER];
        let state = h[2];
        let attributes = u32_at(h, 4).unwrap_or_default();
        let mut time = [0u8; 16];
        time.copy_from_slice(&h[16..32]);
        let name_size = u32_at(h, 36).unwrap_or_default() as usize;
        let data_size = u32_at(h, 40).unwrap_or_default() as usize;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&h[44..60]);
        let name_at = at + RECORD_HEADER;
        let data_at = name_at
            .checked_add(name_size)
            .ok_or_else(|| err("record name size overflows"))?;
        let next = data_at
            .checked_add(data_size)
            .filter(|&n| n <= end)
            .ok_or_else(|| err(format!("the record at {at:#x} runs past the store")))?;
        if state == VAR_ADDED || state == VAR_IN_DELETED_TRANSITION_ADDED {
            let name = decode_name(&image[name_at..data_at])
                .ok_or_else(|| err(format!("the record at {at:#x} has a malformed name")))?;
            live.push((
                state,
                Variable {
                    name,
                    guid: Guid(guid),
                    attributes,
                    time,
                    data: image[data_at..next].to_vec(),
                    digest: None,
                },
            ));
        }
        at = next.div_ceil(4) * 4;
    }
    // A record in deleted transition counts only when no live copy follows.
    let mut variables: Vec<Variable> = Vec::new();
    for (state, v) in &live {
        let superseded = *state == VAR_IN_DELETED_TRANSITION_ADDED
            && live
                .iter()
                .any(|(s, o)| *s == VAR_ADDED && o.name == v.name && o.guid == v.guid);
        if !superseded {
            variables.retain(|o| !(o.name == v.name && o.guid == v.guid));
            variables.push(v.clone());
        }
    }
    Ok(VariableStore { variables })
}

fn decode_name(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let (last, name) = units.split_last()?;
    if *last != 0 || !bytes.len().is_multiple_of(2) {
        return None;
    }
    String::from_utf16(name).ok()
}

/// Whether the image's fault-tolerant-write journal is not empty: it holds a record of
/// a write firmware may not have finished when the image was saved (records are not
/// parsed, so a finished one not yet cleared counts too), which firmware replays at the
/// next boot. The working block follows the variable store at a 4 KiB boundary; an
/// image without one has no journal.
pub fn pending_write(image: &[u8]) -> Result<bool, Error> {
    let (_, end) = layout(image)?;
    let mut at = end.div_ceil(4096) * 4096;
    while at + 32 <= image.len() {
        if image[at..at + 16] == FTW_WORKING_BLOCK.0 {
            let size = image
                .get(at + 24..at + 32)
                .map(|b| {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(b);
                    u64::from_le_bytes(x)
                })
                .unwrap_or(0);
            let queue = usize::try_from(size)
                .ok()
                .and_then(|n| (at + 32).checked_add(n))
                .and_then(|e| image.get(at + 32..e))
                .ok_or_else(|| err("the FTW write queue runs past the image"))?;
            return Ok(queue.iter().any(|&b| b != 0xFF));
        }
        at += 4096;
    }
    Ok(false)
}

/// Writes `store` into a copy of `base` (an OVMF_VARS image of the firmware build the
/// VM runs, e.g. Debian's `OVMF_VARS_4M.fd`): the variable area is erased and the
/// variables written as live records; the rest of `base` is kept. A base with a
/// non-empty fault-tolerant-write journal is refused ([`pending_write`]).
pub fn write(store: &VariableStore, base: &[u8]) -> Result<Vec<u8>, Error> {
    let (start, end) = layout(base)?;
    if pending_write(base)? {
        return Err(err(
            "the base image's fault-tolerant-write journal is not empty, and firmware could replay it over the new variables; use an empty image from the firmware package",
        ));
    }
    let mut out = base.to_vec();
    out[start..end].fill(0xFF);
    let mut at = start;
    for v in &store.variables {
        let name: Vec<u8> = v
            .name
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        let len = RECORD_HEADER + name.len() + v.data.len();
        if at + len > end {
            return Err(err(format!(
                "the variables need more than the {} bytes of the base image's store",
                end - start
            )));
        }
        let r = &mut out[at..at + len];
        r[..2].copy_from_slice(&START_ID.to_le_bytes());
        r[2] = VAR_ADDED;
        r[3] = 0;
        r[4..8].copy_from_slice(&v.attributes.to_le_bytes());
        r[8..16].fill(0); // MonotonicCount: unused by time-based variables
        r[16..32].copy_from_slice(&v.time);
        r[32..36].fill(0); // PubKeyIndex
        r[36..40].copy_from_slice(&(name.len() as u32).to_le_bytes());
        r[40..44].copy_from_slice(&(v.data.len() as u32).to_le_bytes());
        r[44..60].copy_from_slice(&v.guid.0);
        r[60..60 + name.len()].copy_from_slice(&name);
        r[60 + name.len()..].copy_from_slice(&v.data);
        at = (at + len).div_ceil(4) * 4;
    }
    Ok(out)
}
