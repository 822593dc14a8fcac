//! A LUKS2 header on a file: reading the newer valid copy, writing both copies the
//! way cryptsetup does, opening and adding keyslots.

use aws_lc_rs::rand;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::device::Device;
use crate::header::{self, BinaryHeader, HDR_SIZES, HeaderError};
use crate::kdf::{self, KdfChoice};
use crate::metadata::{self, Af, Area, Hash, Keyslot, Metadata, MetadataError, SegmentSize};
use crate::{Error, af, io};

/// A volume key: the AES-XTS key of the data segment. Wiped on drop, never shown.
pub struct VolumeKey(Zeroizing<Vec<u8>>);

impl VolumeKey {
    /// A new random 64-byte key whose halves differ.
    pub fn generate() -> Result<Self, Error> {
        let mut key = Zeroizing::new(vec![0u8; aes_xts::KEY_LEN]);
        loop {
            rand::fill(&mut key).map_err(|_| Error::Random)?;
            if key[..32] != key[32..] {
                return Ok(Self(key));
            }
        }
    }

    /// Wraps key bytes (for instance from `cryptsetup --dump-volume-key`).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<redacted>)")
    }
}

/// A parsed LUKS2 header: the fields of its newer valid copy and its metadata.
#[derive(Debug, Clone)]
pub struct Luks2 {
    /// The binary header fields (of the primary copy as it will be written).
    pub header: BinaryHeader,
    /// The JSON metadata.
    pub metadata: Metadata,
}

fn read_copy<D: Device + ?Sized>(file: &D, offset: u64) -> Result<(BinaryHeader, Metadata), Error> {
    let mut first = vec![0u8; header::BINARY_LEN];
    file.read_exact_at(&mut first, offset).map_err(|_| {
        Error::NoHeader(HeaderError::Truncated {
            have: 0,
            need: offset + 4096,
        })
    })?;
    let (_, size) = header::peek_size(&first, offset).map_err(Error::NoHeader)?;
    let mut copy = vec![0u8; size as usize];
    file.read_exact_at(&mut copy, offset).map_err(|_| {
        Error::NoHeader(HeaderError::Truncated {
            have: first.len(),
            need: size,
        })
    })?;
    let (hdr, json) = header::parse_copy(&copy, offset).map_err(Error::NoHeader)?;
    if hdr.primary != (offset == 0) {
        return Err(Error::NoHeader(HeaderError::Magic(offset)));
    }
    let meta = Metadata::parse(json, hdr.hdr_size)?;
    Ok((hdr, meta))
}

impl Luks2 {
    /// Reads the header of `file` (a file, a window of one, or bytes): both copies, the higher `seqid` of the valid ones
    /// wins (a primary destroyed by a crash or by hand is replaced by the secondary).
    pub fn read<D: Device + ?Sized>(file: &D) -> Result<Self, Error> {
        let primary = read_copy(file, 0);
        let secondary = match &primary {
            Ok((h, _)) => read_copy(file, h.hdr_size),
            Err(_) => HDR_SIZES
                .iter()
                .map(|off| read_copy(file, *off))
                .find(Result::is_ok)
                .unwrap_or(Err(Error::NoHeader(HeaderError::Magic(HDR_SIZES[0])))),
        };
        let (hdr, meta) = match (primary, secondary) {
            (Ok(p), Ok(s)) => {
                if s.0.seqid > p.0.seqid {
                    s
                } else {
                    p
                }
            }
            (Ok(p), Err(_)) => p,
            (Err(_), Ok(s)) => s,
            // Unsupported metadata is reported as such, not as a missing header.
            (Err(e @ Error::Metadata(MetadataError::Unsupported(_))), Err(_)) => return Err(e),
            (Err(e), Err(_)) => return Err(e),
        };
        Ok(Self {
            header: BinaryHeader {
                primary: true,
                hdr_offset: 0,
                ..hdr
            },
            metadata: meta,
        })
    }

    /// A new header: `hdr_size` bytes per copy, `keyslots_size` bytes of keyslots,
    /// one data segment at `2 × hdr_size + keyslots_size` (or `data_offset`).
    pub fn new(
        hdr_size: u64,
        keyslots_size: u64,
        data_offset: u64,
        sector_size: u32,
        label: &str,
    ) -> Result<Self, Error> {
        if !HDR_SIZES.contains(&hdr_size) {
            return Err(HeaderError::HdrSize(hdr_size).into());
        }
        let mut uuid = [0u8; 16];
        rand::fill(&mut uuid).map_err(|_| Error::Random)?;
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let h = hex::encode(uuid);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let segment = metadata::Segment {
            kind: "crypt".into(),
            offset: data_offset,
            size: SegmentSize::Dynamic,
            iv_tweak: 0,
            encryption: metadata::CIPHER.into(),
            sector_size,
            flags: None,
            other: Default::default(),
        };
        let metadata = Metadata {
            keyslots: Default::default(),
            tokens: Default::default(),
            segments: [(0, segment)].into(),
            digests: Default::default(),
            config: metadata::Config {
                json_size: hdr_size - header::BINARY_LEN as u64,
                keyslots_size,
                flags: None,
                requirements: None,
                other: Default::default(),
            },
            other: Default::default(),
        };
        Ok(Self {
            header: BinaryHeader {
                primary: true,
                hdr_size,
                seqid: 0,
                label: label.to_owned(),
                salt: [0; 64],
                uuid,
                subsystem: String::new(),
                hdr_offset: 0,
            },
            metadata,
        })
    }

    /// Writes both copies with the next `seqid`: the primary, flushed, then the
    /// secondary, flushed. A crash between leaves one valid copy with the newer
    /// metadata or the older, never a mix.
    pub fn write<D: Device + ?Sized>(&mut self, file: &D) -> Result<(), Error> {
        self.metadata.validate(self.header.hdr_size)?;
        let json = self.metadata.to_json()?;
        self.header.seqid = self.header.seqid.checked_add(1).ok_or_else(|| {
            Error::Refused("the header's sequence number is at its maximum".into())
        })?;
        for primary in [true, false] {
            let mut h = self.header.clone();
            h.primary = primary;
            h.hdr_offset = if primary { 0 } else { h.hdr_size };
            rand::fill(&mut h.salt).map_err(|_| Error::Random)?;
            let copy = header::encode_copy(&h, &json)?;
            file.write_all_at(&copy, h.hdr_offset)
                .map_err(io("writing the LUKS2 header"))?;
            file.sync().map_err(io("flushing the LUKS2 header"))?;
        }
        Ok(())
    }

    /// Opens a keyslot with `passphrase` (only `slot` if given; otherwise every slot
    /// of priority 2, then 1) and returns its number and the volume key.
    pub fn unlock<D: Device + ?Sized>(
        &self,
        file: &D,
        passphrase: &[u8],
        slot: Option<u32>,
    ) -> Result<(u32, VolumeKey), Error> {
        let mut order: Vec<(u32, &Keyslot)> = match slot {
            Some(n) => {
                let ks = self
                    .metadata
                    .keyslots
                    .get(&n)
                    .ok_or_else(|| Error::Refused(format!("there is no keyslot {n}")))?;
                vec![(n, ks)]
            }
            None => self
                .metadata
                .keyslots
                .iter()
                .filter(|(_, k)| k.priority != Some(0))
                .map(|(n, k)| (*n, k))
                .collect(),
        };
        order.sort_by_key(|(n, k)| (std::cmp::Reverse(k.priority.unwrap_or(1)), *n));
        for (n, ks) in order {
            if let Some(key) = self.open_keyslot(file, n, ks, passphrase)? {
                return Ok((n, key));
            }
        }
        Err(Error::WrongPassphrase)
    }

    fn open_keyslot<D: Device + ?Sized>(
        &self,
        file: &D,
        n: u32,
        ks: &Keyslot,
        passphrase: &[u8],
    ) -> Result<Option<VolumeKey>, Error> {
        let digest = self
            .metadata
            .digest_of(n)
            .ok_or_else(|| Error::Refused(format!("keyslot {n} has no digest")))?;
        let kek = kdf::derive(&ks.kdf, passphrase, ks.area.key_size as usize)?;
        let len = metadata::split_area_len(ks.key_size, ks.af.stripes) as usize;
        let mut area = Zeroizing::new(vec![0u8; len]);
        file.read_exact_at(&mut area, ks.area.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Refused(format!(
                    "the image is truncated: keyslot {n}'s area ends at byte {}",
                    ks.area.offset + len as u64
                ))
            } else {
                Error::Io {
                    what: format!("reading keyslot {n}"),
                    source: e,
                }
            }
        })?;
        aes_xts::Xts::new(&kek)?.decrypt_units(&mut area, 512, 0, 1)?;
        let key = af::merge(&area, ks.key_size as usize, ks.af.stripes, ks.af.hash);
        if kdf::check_digest(digest, &key)? {
            Ok(Some(VolumeKey(key)))
        } else {
            Ok(None)
        }
    }

    /// Adds a keyslot holding `key` under `passphrase` and writes the header. The
    /// keyslot's area is written and flushed before the metadata that names it.
    /// With no digest yet, one is made for `key` and the data segment.
    pub fn add_keyslot<D: Device + ?Sized>(
        &mut self,
        file: &D,
        key: &VolumeKey,
        passphrase: &[u8],
        choice: KdfChoice,
    ) -> Result<u32, Error> {
        let n = self.stage_keyslot(file, key, passphrase, choice)?;
        self.write(file)?;
        Ok(n)
    }

    /// [`Luks2::add_keyslot`] without the header write: the area is written and
    /// flushed, the metadata changed in memory only (for a caller that adds more
    /// before one write).
    pub(crate) fn stage_keyslot<D: Device + ?Sized>(
        &mut self,
        file: &D,
        key: &VolumeKey,
        passphrase: &[u8],
        choice: KdfChoice,
    ) -> Result<u32, Error> {
        let n = self.metadata.free_slot().ok_or(Error::NoRoom)?;
        let key_size = u32::try_from(key.bytes().len())
            .map_err(|_| Error::Refused("volume key too long".into()))?;
        let af_hash = if choice == KdfChoice::Minimal {
            Hash::Sha512
        } else {
            Hash::Sha256
        };
        let size = metadata::keyslot_area_size(key_size);
        let offset = self.free_area(size)?;
        let kdf = choice.instantiate()?;
        let kek = kdf::derive(&kdf, passphrase, aes_xts::KEY_LEN)?;
        let mut split = af::split(key.bytes(), 4000, af_hash)?;
        let padded = metadata::split_area_len(key_size, 4000) as usize;
        split.resize(padded, 0);
        aes_xts::Xts::new(&kek)?.encrypt_units(&mut split, 512, 0, 1)?;
        file.write_all_at(&split, offset)
            .map_err(io("writing a keyslot"))?;
        file.sync().map_err(io("flushing a keyslot"))?;
        let (seg, _) = self.metadata.segment()?;
        match self.metadata.digests.values_mut().next() {
            Some(d) => {
                if !kdf::check_digest(d, key.bytes())? {
                    return Err(Error::Refused("the key is not this volume's key".into()));
                }
                d.keyslots.push(n.to_string());
            }
            None => {
                // The digest checks a random 512-bit volume key, which no iteration
                // count protects further; cryptsetup still spends about 125 ms on it,
                // and so does this for a passphrase keyslot. A volume whose first
                // keyslot is for a key of full entropy (`Minimal`, a platform's disk
                // key) gets cryptsetup's minimum, 1000, so that opening it costs no
                // more than its keyslot does.
                let iterations = if choice == KdfChoice::Minimal {
                    1000
                } else {
                    kdf::calibrate(Hash::Sha256, std::time::Duration::from_millis(125))
                };
                self.metadata
                    .digests
                    .insert(0, kdf::make_digest(key.bytes(), iterations, n, seg)?);
            }
        }
        self.metadata.keyslots.insert(
            n,
            Keyslot {
                kind: "luks2".into(),
                key_size,
                priority: None,
                af: Af {
                    kind: "luks1".into(),
                    stripes: 4000,
                    hash: af_hash,
                    other: Default::default(),
                },
                area: Area {
                    kind: "raw".into(),
                    offset,
                    size,
                    encryption: metadata::CIPHER.into(),
                    key_size: aes_xts::KEY_LEN as u32,
                    other: Default::default(),
                },
                kdf,
                other: Default::default(),
            },
        );
        Ok(n)
    }

    /// The first gap of `size` bytes in the keyslots area.
    fn free_area(&self, size: u64) -> Result<u64, Error> {
        let (start, end) = self.metadata.keyslots_area();
        let mut used: Vec<(u64, u64)> = self
            .metadata
            .keyslots
            .values()
            .map(|k| (k.area.offset, k.area.offset + k.area.size))
            .collect();
        used.sort_unstable();
        let mut at = start;
        for (s, e) in used {
            if at + size <= s {
                break;
            }
            at = at.max(e);
        }
        if at + size <= end {
            Ok(at)
        } else {
            Err(Error::NoRoom)
        }
    }

    /// What `cvm disk info` shows.
    pub fn info(&self) -> Info {
        let seg = self.metadata.segment().ok().map(|(_, s)| s.clone());
        Info {
            uuid: self.header.uuid.clone(),
            label: self.header.label.clone(),
            seqid: self.header.seqid,
            metadata_size: self.header.hdr_size,
            keyslots_size: self.metadata.config.keyslots_size,
            data_offset: seg.as_ref().map_or(0, |s| s.offset),
            cipher: seg
                .as_ref()
                .map_or_else(String::new, |s| s.encryption.clone()),
            sector_size: seg.as_ref().map_or(0, |s| s.sector_size),
            incomplete: self.metadata.incomplete(),
            keyslots: self
                .metadata
                .keyslots
                .iter()
                .map(|(n, k)| KeyslotInfo {
                    id: *n,
                    kdf: k.kdf.name().into(),
                    key_bits: k.key_size * 8,
                    priority: k.priority.unwrap_or(1),
                })
                .collect(),
            tokens: self
                .metadata
                .tokens
                .iter()
                .map(|(n, t)| TokenInfo {
                    id: *n,
                    kind: t.kind.clone(),
                    keyslots: t.keyslots.clone(),
                })
                .collect(),
        }
    }
}

/// A summary of a LUKS2 header.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// Volume UUID.
    pub uuid: String,
    /// Label.
    pub label: String,
    /// Metadata sequence number.
    pub seqid: u64,
    /// Bytes per metadata copy.
    pub metadata_size: u64,
    /// Bytes of the keyslots area.
    pub keyslots_size: u64,
    /// Where the data starts.
    pub data_offset: u64,
    /// The data cipher.
    pub cipher: String,
    /// The data sector size.
    pub sector_size: u32,
    /// Whether opencvm's encryption of the image is unfinished.
    pub incomplete: bool,
    /// Keyslots.
    pub keyslots: Vec<KeyslotInfo>,
    /// Tokens.
    pub tokens: Vec<TokenInfo>,
}

/// One keyslot in [`Info`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyslotInfo {
    /// Number.
    pub id: u32,
    /// KDF name.
    pub kdf: String,
    /// Volume key bits.
    pub key_bits: u32,
    /// Priority (0 ignore, 1 normal, 2 high).
    pub priority: u8,
}

/// One token in [`Info`].
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Number.
    pub id: u32,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslots it opens.
    pub keyslots: Vec<String>,
}
