//! The LUKS2 JSON metadata: keyslots, tokens, segments, digests and config, with the
//! wire conventions cryptsetup uses (64-bit numbers as decimal strings, binary as
//! base64, object keys as decimal strings).
//!
//! [`Metadata::parse`] reads and validates; what opencvm does not support (another
//! cipher, a second segment, an unfinished cryptsetup reencryption) is refused with
//! its name. Fields and tokens opencvm does not know are kept, so a rewrite loses
//! nothing.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one cipher opencvm reads and writes.
pub const CIPHER: &str = "aes-xts-plain64";
/// The marker opencvm puts in `config.requirements.mandatory` while an image is
/// being encrypted: cryptsetup refuses to activate a volume with a requirement it
/// does not know, so a half-written image is never opened as a whole one.
pub const INCOMPLETE: &str = "opencvm-encryption-incomplete";
/// The token that records how far an unfinished encryption got.
pub const PROGRESS_TOKEN: &str = "opencvm-progress";
/// At most this many keyslots, tokens and segments (LUKS2 limit).
pub const MAX_OBJECTS: u32 = 32;

/// Why the metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not valid JSON or not the LUKS2 schema.
    #[error("the LUKS2 JSON metadata is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// A rule of the format is broken.
    #[error("the LUKS2 metadata is invalid: {0}")]
    Invalid(String),
    /// Valid LUKS2 that opencvm does not handle.
    #[error("not supported: {0}")]
    Unsupported(String),
}

fn invalid(msg: impl Into<String>) -> MetadataError {
    MetadataError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> MetadataError {
    MetadataError::Unsupported(msg.into())
}

/// 64-bit numbers travel as decimal strings.
mod u64_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(D::Error::custom(format!(
                "{s:?} is not a decimal uint64 string"
            )));
        }
        s.parse().map_err(D::Error::custom)
    }
}

/// Binary values travel as base64.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::B64;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.trim()).map_err(D::Error::custom)
    }
}

/// A hash LUKS2 names in AF, KDF and digest objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hash {
    /// SHA-1 (old headers).
    Sha1,
    /// SHA-256 (cryptsetup's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512 (systemd's enrollments).
    Sha512,
}

impl Hash {
    /// The digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// A keyslot's key derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC hash.
        hash: Hash,
        /// Iterations.
        iterations: u32,
        /// Salt.
        #[serde(with = "b64")]
        salt: Vec<u8>,
    },
    /// Argon2i.
    Argon2i {
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory: u32,
        /// Lanes.
        cpus: u32,
        /// Salt.
        #[serde(with = "b64")]
        salt: Vec<u8>,
    },
    /// Argon2id.
    Argon2id {
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory: u32,
        /// Lanes.
        cpus: u32,
        /// Salt.
        #[serde(with = "b64")]
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// The name cryptsetup shows.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pbkdf2 { .. } => "pbkdf2",
            Self::Argon2i { .. } => "argon2i",
            Self::Argon2id { .. } => "argon2id",
        }
    }
}

/// The anti-forensic splitter of a keyslot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Af {
    /// Always `luks1`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 4000.
    pub stripes: u32,
    /// The diffusion hash.
    pub hash: Hash,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Where a keyslot's split key lives and how it is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    /// Always `raw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset from the device start.
    #[serde(with = "u64_str")]
    pub offset: u64,
    /// Bytes reserved.
    #[serde(with = "u64_str")]
    pub size: u64,
    /// The dm-crypt cipher spec.
    pub encryption: String,
    /// Bytes of the key that encrypts the area (the KDF's output length).
    pub key_size: u32,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A keyslot: a copy of the volume key, encrypted under a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyslot {
    /// Always `luks2` here (`reencrypt` keyslots are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes of the volume key.
    pub key_size: u32,
    /// 0 ignore, 1 normal, 2 high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The splitter.
    pub af: Af,
    /// The area.
    pub area: Area,
    /// The KDF.
    pub kdf: Kdf,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A segment's size: fixed, or to the end of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentSize {
    /// To the end of the device.
    Dynamic,
    /// This many bytes.
    Bytes(u64),
}

impl Serialize for SegmentSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Dynamic => s.serialize_str("dynamic"),
            Self::Bytes(n) => s.serialize_str(&n.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for SegmentSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "dynamic" {
            return Ok(Self::Dynamic);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!("segment size {s:?}")));
        }
        s.parse().map(Self::Bytes).map_err(serde::de::Error::custom)
    }
}

/// A data segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// `crypt` (the only one supported).
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset of the data.
    #[serde(with = "u64_str")]
    pub offset: u64,
    /// Size of the data.
    pub size: SegmentSize,
    /// Added to every sector number (512-byte units).
    #[serde(with = "u64_str")]
    pub iv_tweak: u64,
    /// The dm-crypt cipher spec.
    pub encryption: String,
    /// The encryption unit: 512, 1024, 2048 or 4096 bytes.
    pub sector_size: u32,
    /// Segment flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Fields opencvm does not know (for instance `integrity`, which is refused).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A volume-key digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Always `pbkdf2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The keyslots whose key this digest checks.
    pub keyslots: Vec<String>,
    /// The segments that key encrypts.
    pub segments: Vec<String>,
    /// The HMAC hash.
    pub hash: Hash,
    /// Iterations.
    pub iterations: u32,
    /// 32-byte salt.
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// The digest.
    #[serde(with = "b64")]
    pub digest: Vec<u8>,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Requirements a reader must meet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// A reader that does not know one of these must not activate the volume.
    #[serde(default)]
    pub mandatory: Vec<String>,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The config object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// JSON area size: `hdr_size` − 4096.
    #[serde(with = "u64_str")]
    pub json_size: u64,
    /// Bytes of the keyslots area.
    #[serde(with = "u64_str")]
    pub keyslots_size: u64,
    /// Activation flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
    /// Fields opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A token: a type, the keyslots it opens, anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The token type (`systemd-tpm2`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The keyslots it opens.
    pub keyslots: Vec<String>,
    /// Everything else, as it was.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The whole JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Keyslots by number.
    pub keyslots: BTreeMap<u32, Keyslot>,
    /// Tokens by number.
    pub tokens: BTreeMap<u32, Token>,
    /// Segments by number.
    pub segments: BTreeMap<u32, Segment>,
    /// Digests by number.
    pub digests: BTreeMap<u32, Digest>,
    /// Config.
    pub config: Config,
    /// Top-level objects opencvm does not know, kept as they were.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Metadata {
    /// Parses and validates the JSON of a header whose copies are `hdr_size` bytes.
    pub fn parse(json: &str, hdr_size: u64) -> Result<Self, MetadataError> {
        let meta: Metadata = serde_json::from_str(json)?;
        meta.validate(hdr_size)?;
        Ok(meta)
    }

    /// The JSON text, compact, as it goes into the header.
    pub fn to_json(&self) -> Result<String, MetadataError> {
        Ok(serde_json::to_string(self)?)
    }

    /// The one data segment.
    pub fn segment(&self) -> Result<(u32, &Segment), MetadataError> {
        self.segments
            .iter()
            .next()
            .map(|(id, s)| (*id, s))
            .ok_or_else(|| invalid("there is no data segment"))
    }

    /// Whether opencvm's own encryption of this image is unfinished.
    pub fn incomplete(&self) -> bool {
        self.config
            .requirements
            .as_ref()
            .is_some_and(|r| r.mandatory.iter().any(|m| m == INCOMPLETE))
    }

    /// The digest that checks keyslot `slot`'s key.
    pub fn digest_of(&self, slot: u32) -> Option<&Digest> {
        let slot = slot.to_string();
        self.digests.values().find(|d| d.keyslots.contains(&slot))
    }

    /// The lowest free keyslot number.
    pub fn free_slot(&self) -> Option<u32> {
        (0..MAX_OBJECTS).find(|n| !self.keyslots.contains_key(n))
    }

    /// The byte range `[start, end)` of the keyslots area.
    pub fn keyslots_area(&self) -> (u64, u64) {
        let start = self.config.json_size.saturating_add(4096).saturating_mul(2);
        (start, start.saturating_add(self.config.keyslots_size))
    }

    /// Checks the rules of the format and what opencvm supports.
    pub fn validate(&self, hdr_size: u64) -> Result<(), MetadataError> {
        if self.config.json_size.checked_add(4096) != Some(hdr_size) {
            return Err(invalid(format!(
                "config.json_size {} does not match the header size {hdr_size}",
                self.config.json_size
            )));
        }
        if let Some(other) = self
            .config
            .requirements
            .iter()
            .flat_map(|r| &r.mandatory)
            .find(|m| *m != INCOMPLETE)
        {
            return Err(unsupported(format!(
                "the mandatory requirement {other:?} (for instance an unfinished cryptsetup reencryption)"
            )));
        }
        if !self.config.keyslots_size.is_multiple_of(4096) {
            return Err(invalid("config.keyslots_size is not a multiple of 4096"));
        }
        for (what, n) in [
            ("keyslots", self.keyslots.len()),
            ("tokens", self.tokens.len()),
            ("segments", self.segments.len()),
        ] {
            if n > MAX_OBJECTS as usize {
                return Err(invalid(format!("more than {MAX_OBJECTS} {what}")));
            }
        }
        if let Some(id) = self
            .keyslots
            .keys()
            .chain(self.tokens.keys())
            .chain(self.segments.keys())
            .chain(self.digests.keys())
            .find(|id| **id >= MAX_OBJECTS)
        {
            return Err(invalid(format!("object number {id} is out of range")));
        }
        let (area_start, area_end) = self.keyslots_area();
        let mut areas: Vec<(u64, u64, u32)> = Vec::new();
        for (id, slot) in &self.keyslots {
            if slot.kind != "luks2" {
                return Err(unsupported(format!("keyslot {id} of type {:?}", slot.kind)));
            }
            if slot.af.kind != "luks1" || slot.af.stripes != 4000 {
                return Err(unsupported(format!(
                    "keyslot {id}'s splitter {:?} with {} stripes",
                    slot.af.kind, slot.af.stripes
                )));
            }
            if slot.area.kind != "raw" {
                return Err(unsupported(format!(
                    "keyslot {id}'s area type {:?}",
                    slot.area.kind
                )));
            }
            if slot.area.encryption != CIPHER || slot.area.key_size != 64 {
                return Err(unsupported(format!(
                    "keyslot {id}'s area cipher {} with a {}-bit key (only {CIPHER} with 512 bits)",
                    slot.area.encryption,
                    u64::from(slot.area.key_size) * 8
                )));
            }
            if slot.key_size == 0 || slot.key_size > 512 {
                return Err(invalid(format!(
                    "keyslot {id}'s key_size {}",
                    slot.key_size
                )));
            }
            let need = split_area_len(slot.key_size, slot.af.stripes);
            let end = slot.area.offset.checked_add(slot.area.size);
            if slot.area.size < need
                || slot.area.offset < area_start
                || end.is_none_or(|e| e > area_end)
            {
                return Err(invalid(format!(
                    "keyslot {id}'s area lies outside the keyslots area"
                )));
            }
            areas.push((slot.area.offset, slot.area.offset + slot.area.size, *id));
            if self.digest_of(*id).is_none() {
                return Err(invalid(format!(
                    "keyslot {id} is not referenced by any digest"
                )));
            }
            match &slot.kdf {
                Kdf::Pbkdf2 { iterations, .. } if *iterations < 1 => {
                    return Err(invalid(format!("keyslot {id}'s PBKDF2 has no iterations")));
                }
                Kdf::Argon2i {
                    time, memory, cpus, ..
                }
                | Kdf::Argon2id {
                    time, memory, cpus, ..
                } => {
                    if *time < 1 || !(8..=4 << 20).contains(memory) || !(1..=16).contains(cpus) {
                        return Err(invalid(format!(
                            "keyslot {id}'s Argon2 parameters (time {time}, memory {memory} KiB, cpus {cpus}) are out of range"
                        )));
                    }
                }
                Kdf::Pbkdf2 { .. } => {}
            }
        }
        areas.sort_unstable();
        for pair in areas.windows(2) {
            if pair[0].1 > pair[1].0 {
                return Err(invalid(format!(
                    "the areas of keyslots {} and {} overlap",
                    pair[0].2, pair[1].2
                )));
            }
        }
        if self.segments.len() != 1 {
            return Err(unsupported(format!(
                "{} data segments (only one)",
                self.segments.len()
            )));
        }
        let (sid, seg) = self.segment()?;
        if seg.kind != "crypt" {
            return Err(unsupported(format!("segment {sid} of type {:?}", seg.kind)));
        }
        if seg.encryption != CIPHER {
            return Err(unsupported(format!(
                "the data cipher {} (only {CIPHER})",
                seg.encryption
            )));
        }
        if seg.other.contains_key("integrity") {
            return Err(unsupported("a segment with integrity protection"));
        }
        if ![512, 1024, 2048, 4096].contains(&seg.sector_size) {
            return Err(invalid(format!("sector_size {}", seg.sector_size)));
        }
        let ss = u64::from(seg.sector_size);
        if seg.offset % ss != 0 || matches!(seg.size, SegmentSize::Bytes(n) if n % ss != 0) {
            return Err(invalid("the segment is not aligned to its sector size"));
        }
        if seg.offset != 0 && seg.offset < area_end {
            return Err(invalid("the data segment overlaps the keyslots area"));
        }
        let sid = sid.to_string();
        let bound = self.digests.values().any(|d| d.segments.contains(&sid));
        for (id, d) in &self.digests {
            if d.kind != "pbkdf2" {
                return Err(unsupported(format!("digest {id} of type {:?}", d.kind)));
            }
            if d.salt.len() != 32 {
                return Err(invalid(format!("digest {id}'s salt is not 32 bytes")));
            }
            if d.digest.len() != 20 && d.digest.len() != d.hash.output_len() {
                return Err(invalid(format!("digest {id} has {} bytes", d.digest.len())));
            }
            if d.iterations < 1 {
                return Err(invalid(format!("digest {id} has no iterations")));
            }
        }
        if !bound {
            return Err(invalid("no digest is assigned to the data segment"));
        }
        for (id, t) in &self.tokens {
            if t.kind.starts_with("luks2-") {
                return Err(unsupported(format!(
                    "token {id} of reserved type {:?}",
                    t.kind
                )));
            }
        }
        Ok(())
    }
}

/// The bytes a keyslot's split key fills, padded to 512: `key_size × stripes`.
pub fn split_area_len(key_size: u32, stripes: u32) -> u64 {
    let raw = u64::from(key_size) * u64::from(stripes);
    raw.div_ceil(512) * 512
}

/// The area a new keyslot reserves: the split key rounded up to 4096.
pub fn keyslot_area_size(key_size: u32) -> u64 {
    split_area_len(key_size, 4000).div_ceil(4096) * 4096
}

/// Base64 as the metadata writes it (for tokens built elsewhere).
pub fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of cryptsetup 2.6.1's `luksDump --dump-json-metadata` for a fresh
    // `luksFormat` (research note luks2.md, section 3), with short salts replaced.
    const CRYPTSETUP: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"argon2id","time":4,"memory":444572,"cpus":2,"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}},"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":256000,"salt":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

    #[test]
    fn cryptsetups_document_parses_and_round_trips() {
        let meta = Metadata::parse(CRYPTSETUP, 16384).unwrap();
        assert_eq!(meta.to_json().unwrap(), CRYPTSETUP);
        let (_, seg) = meta.segment().unwrap();
        assert_eq!(seg.sector_size, 4096);
        assert_eq!(meta.keyslots_area(), (32768, 32768 + 16744448));
        assert_eq!(keyslot_area_size(64), 258048);
        assert_eq!(keyslot_area_size(32), 131072);
    }

    #[test]
    fn unknown_fields_and_tokens_survive() {
        let with = CRYPTSETUP.replace(
            r#""tokens":{}"#,
            r#""tokens":{"0":{"type":"systemd-tpm2","keyslots":["0"],"tpm2-pcrs":[7]}}"#,
        );
        let meta = Metadata::parse(&with, 16384).unwrap();
        assert_eq!(meta.to_json().unwrap(), with);
    }

    #[test]
    fn what_is_unsupported_is_named() {
        let cases = [
            (CRYPTSETUP.replace(r#""encryption":"aes-xts-plain64","sector_size""#, r#""encryption":"serpent-xts-plain64","sector_size""#), "serpent"),
            (CRYPTSETUP.replace(r#""keyslots_size":"16744448""#, r#""keyslots_size":"16744448","requirements":{"mandatory":["online-reencrypt-v2"]}"#), "online-reencrypt-v2"),
            (CRYPTSETUP.replace(r#""json_size":"12288""#, r#""json_size":"12289""#), "json_size"),
            (CRYPTSETUP.replace(r#""offset":"32768""#, r#""offset":"4096""#), "outside"),
            (CRYPTSETUP.replace(r#""sector_size":4096"#, r#""sector_size":4096,"integrity":{}"#), "integrity"),
        ];
        for (json, word) in cases {
            let err = Metadata::parse(&json, 16384).unwrap_err().to_string();
            assert!(err.contains(word), "{err} lacks {word}");
        }
    }
}
