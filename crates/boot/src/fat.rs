//! A read-only FAT12/16/32 reader, enough to find boot files on an EFI system
//! partition: directories (short and long names, case-insensitive), cluster chains,
//! whole files. Every offset is checked; chains are bounded by the cluster count.

use disk::device::Device;

use crate::Error;

/// Files larger than this are not read (a signed kernel is under 16 MiB).
pub const MAX_FILE: u64 = 256 << 20;

fn err(why: impl Into<String>) -> Error {
    Error::Fat(why.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// An opened FAT filesystem.
pub struct Fat<'a, R: Device + ?Sized> {
    dev: &'a R,
    kind: Kind,
    bytes_per_sector: u64,
    cluster_size: u64,
    fat_offset: u64,
    root_offset: u64,
    root_entries: u64,
    root_cluster: u32,
    data_offset: u64,
    clusters: u32,
}

/// One directory entry.
#[derive(Debug, Clone)]
struct DirEntry {
    short: String,
    long: Option<String>,
    is_dir: bool,
    cluster: u32,
    size: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a, R: Device + ?Sized> Fat<'a, R> {
    /// Reads the boot sector.
    pub fn open(dev: &'a R) -> Result<Self, Error> {
        let mut bs = [0u8; 512];
        dev.read_exact_at(&mut bs, 0)
            .map_err(|e| err(format!("reading the boot sector: {e}")))?;
        if bs[510..512] != [0x55, 0xAA] {
            return Err(err("no boot sector signature: not a FAT filesystem"));
        }
        let bps = u64::from(le16(&bs, 11));
        let spc = u64::from(bs[13]);
        if !(512..=4096).contains(&bps)
            || !bps.is_power_of_two()
            || spc == 0
            || !spc.is_power_of_two()
        {
            return Err(err(
                "implausible sector or cluster size: not a FAT filesystem",
            ));
        }
        let reserved = u64::from(le16(&bs, 14));
        let fats = u64::from(bs[16]);
        let root_entries = u64::from(le16(&bs, 17));
        let total = match le16(&bs, 19) {
            0 => u64::from(le32(&bs, 32)),
            n => u64::from(n),
        };
        let fat_size = match le16(&bs, 22) {
            0 => u64::from(le32(&bs, 36)),
            n => u64::from(n),
        };
        if reserved == 0 || fats == 0 || fat_size == 0 {
            return Err(err("no reserved sectors or no FAT: not a FAT filesystem"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let first_data = reserved + fats * fat_size + root_sectors;
        let clusters = total
            .checked_sub(first_data)
            .ok_or_else(|| err("the FATs and root directory exceed the volume"))?
            / spc;
        let kind = if clusters < 4085 {
            Kind::Fat12
        } else if clusters < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        let clusters = u32::try_from(clusters).map_err(|_| err("too many clusters"))?;
        Ok(Self {
            dev,
            kind,
            bytes_per_sector: bps,
            cluster_size: bps * spc,
            fat_offset: reserved * bps,
            root_offset: (reserved + fats * fat_size) * bps,
            root_entries,
            root_cluster: if kind == Kind::Fat32 {
                le32(&bs, 44)
            } else {
                0
            },
            data_offset: first_data * bps,
            clusters,
        })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.dev
            .read_exact_at(buf, offset)
            .map_err(|e| err(format!("reading at byte {offset}: {e}")))
    }

    fn next(&self, cluster: u32) -> Result<Option<u32>, Error> {
        let c = u64::from(cluster);
        let (value, end) = match self.kind {
            Kind::Fat12 => {
                let mut b = [0u8; 2];
                self.read(self.fat_offset + c + c / 2, &mut b)?;
                let v = u16::from_le_bytes(b);
                (
                    u32::from(if c % 2 == 0 { v & 0xFFF } else { v >> 4 }),
                    0xFF8,
                )
            }
            Kind::Fat16 => {
                let mut b = [0u8; 2];
                self.read(self.fat_offset + c * 2, &mut b)?;
                (u32::from(u16::from_le_bytes(b)), 0xFFF8)
            }
            Kind::Fat32 => {
                let mut b = [0u8; 4];
                self.read(self.fat_offset + c * 4, &mut b)?;
                (u32::from_le_bytes(b) & 0x0FFF_FFFF, 0x0FFF_FFF8)
            }
        };
        if value >= end {
            Ok(None)
        } else if value < 2 || value >= self.clusters + 2 {
            Err(err(format!(
                "cluster {cluster} links to invalid cluster {value}"
            )))
        } else {
            Ok(Some(value))
        }
    }

    /// Reads a cluster chain, at most `limit` bytes.
    fn chain(&self, first: u32, limit: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut cluster = Some(first);
        let mut seen = std::collections::HashSet::new();
        while let Some(c) = cluster {
            if c < 2 || c >= self.clusters + 2 {
                return Err(err(format!("invalid cluster {c}")));
            }
            if out.len() as u64 >= limit {
                break;
            }
            if !seen.insert(c) {
                return Err(err(format!("the cluster chain from {first} loops at {c}")));
            }
            let start = out.len();
            out.resize(start + self.cluster_size as usize, 0);
            let offset = self.data_offset + u64::from(c - 2) * self.cluster_size;
            self.read(offset, &mut out[start..])?;
            cluster = self.next(c)?;
        }
        Ok(out)
    }

    fn root(&self) -> Result<Vec<u8>, Error> {
        if self.kind == Kind::Fat32 {
            self.chain(self.root_cluster, MAX_FILE)
        } else {
            let mut buf = vec![0u8; (self.root_entries * 32) as usize];
            self.read(self.root_offset, &mut buf)?;
            Ok(buf)
        }
    }

    fn entries(&self, dir: &[u8]) -> Vec<DirEntry> {
        let mut out = Vec::new();
        let mut long: Vec<(u8, [u16; 13], u8)> = Vec::new();
        for e in dir.chunks_exact(32) {
            match e[0] {
                0x00 => break,
                0xE5 => {
                    long.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3F == 0x0F {
                let mut units = [0u16; 13];
                for (i, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                    .iter()
                    .enumerate()
                {
                    units[i] = le16(e, *at);
                }
                long.push((e[0] & 0x1F, units, e[13]));
                continue;
            }
            if attr & 0x08 != 0 {
                long.clear();
                continue; // volume label
            }
            let base = String::from_utf8_lossy(&e[..8]).trim_end().to_string();
            let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
            let short = if ext.is_empty() {
                base
            } else {
                format!("{base}.{ext}")
            };
            long.sort_by_key(|(seq, _, _)| *seq);
            // A long name belongs to this entry only if every part carries the short
            // name's checksum and the parts are numbered 1..n; otherwise it is an
            // orphan (as firmware treats it) and only the short name counts.
            let checksum = e[..11]
                .iter()
                .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b));
            let belongs = long
                .iter()
                .enumerate()
                .all(|(i, (seq, _, sum))| usize::from(*seq) == i + 1 && *sum == checksum);
            let long_name = (!long.is_empty() && belongs).then(|| {
                let units: Vec<u16> = long
                    .iter()
                    .flat_map(|(_, u, _)| u.iter().copied())
                    .take_while(|&u| u != 0 && u != 0xFFFF)
                    .collect();
                String::from_utf16_lossy(&units)
            });
            long.clear();
            let cluster = if self.kind == Kind::Fat32 {
                (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26))
            } else {
                u32::from(le16(e, 26))
            };
            out.push(DirEntry {
                short,
                long: long_name,
                is_dir: attr & 0x10 != 0,
                cluster,
                size: le32(e, 28),
            });
        }
        out
    }

    /// Reads the file at `path` (`/`-separated, case-insensitive); `Ok(None)` when it
    /// does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = self.root()?;
        for (i, part) in parts.iter().enumerate() {
            let entries = self.entries(&dir);
            let Some(entry) = entries.into_iter().find(|e| {
                e.short.eq_ignore_ascii_case(part)
                    || e.long
                        .as_deref()
                        .is_some_and(|l| l.eq_ignore_ascii_case(part))
            }) else {
                return Ok(None);
            };
            let last = i + 1 == parts.len();
            if last {
                if entry.is_dir {
                    return Err(err(format!("{path} is a directory")));
                }
                if u64::from(entry.size) > MAX_FILE {
                    return Err(err(format!("{path} is over {MAX_FILE} bytes")));
                }
                if entry.size == 0 {
                    return Ok(Some(Vec::new()));
                }
                let mut data = self.chain(entry.cluster, u64::from(entry.size))?;
                if data.len() < entry.size as usize {
                    return Err(err(format!(
                        "{path}: its cluster chain is shorter than its size"
                    )));
                }
                data.truncate(entry.size as usize);
                return Ok(Some(data));
            }
            if !entry.is_dir {
                return Ok(None);
            }
            dir = self.chain(entry.cluster, MAX_FILE)?;
        }
        Err(err("an empty path names no file"))
    }

    /// The sector size.
    pub fn sector_size(&self) -> u64 {
        self.bytes_per_sector
    }
}
