//! Durable vTPM state in a directory, framed with a format version and a SHA-256 so
//! a torn or foreign file is refused instead of silently starting a new TPM.
//!
//! - The permanent state (seeds, NV, persistent objects), written whenever it changes,
//!   lives in `permall.slots`: two preallocated slots written alternately, each with
//!   a sequence number. A write goes to the older slot and is made durable with one
//!   `fdatasync` (the file's size and metadata never change, so nothing else needs
//!   syncing); the reader takes the valid slot with the higher sequence, so a write
//!   torn by a crash leaves the previous state. When the state outgrows a slot the
//!   file is rebuilt with larger slots (temporary file, `fsync`, `rename`, `fsync` of
//!   the directory).
//! - Volatile and save state (written rarely) are whole files replaced the same
//!   rebuilt way.
//!
//! The directory is locked (`flock`) for as long as the [`StateDir`] lives: two vTPM
//! processes never share one TPM's state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use libtpms::{Nvram, NvramError, StateKind};

/// Magic at the start of every state file.
pub const MAGIC: [u8; 8] = *b"OCVMTPMS";
/// Version of the state file framing written by this build.
pub const FORMAT_VERSION: u16 = 1;
/// Framing bytes before the state: magic, version, kind, reserved, length, SHA-256.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 1 + 4 + 32;
/// Largest state blob accepted (libtpms permanent state is ~10–100 KiB).
pub const MAX_STATE: usize = 4 << 20;

/// Errors opening or reading a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("{0}: the vTPM state is in use by another process")]
    Locked(PathBuf),
    /// A state file that is not a valid opencvm vTPM state file.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn kind_code(kind: StateKind) -> u8 {
    match kind {
        StateKind::Permanent => 1,
        StateKind::Volatile => 2,
        StateKind::SaveState => 3,
    }
}

/// Frames `data` as a state file of `kind`.
pub fn encode(kind: StateKind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.push(kind_code(kind));
    out.push(0);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out.extend_from_slice(data);
    out
}

/// Checks the framing of a state file of `kind` and returns the state it holds.
pub fn decode(kind: StateKind, file: &[u8]) -> Result<&[u8], String> {
    if file.len() < HEADER_LEN {
        return Err(format!("{} bytes is shorter than the header", file.len()));
    }
    let (head, data) = file.split_at(HEADER_LEN);
    if head[..8] != MAGIC {
        return Err("not an opencvm vTPM state file (bad magic)".into());
    }
    let version = u16::from_be_bytes([head[8], head[9]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "state format version {version} is not supported (this build reads {FORMAT_VERSION})"
        ));
    }
    if head[10] != kind_code(kind) {
        return Err(format!(
            "holds state kind {}, expected {}",
            head[10],
            kind_code(kind)
        ));
    }
    let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize;
    if len != data.len() {
        return Err(format!(
            "header says {len} bytes of state, the file holds {}",
            data.len()
        ));
    }
    if digest::digest(&digest::SHA256, data).as_ref() != &head[16..48] {
        return Err("state digest mismatch (torn or altered file)".into());
    }
    Ok(data)
}

/// Initial size of one slot of the permanent state (libtpms's is tens of KiB).
pub const INITIAL_SLOT: usize = 256 << 10;
/// Bytes before the framed state in a slot: the sequence number.
const SLOT_HEADER: usize = 8;

/// The open slot file of the permanent state.
#[derive(Debug)]
struct Slots {
    file: File,
    slot_size: usize,
    /// Sequence number of the newest valid slot.
    seq: u64,
    /// Which slot holds it.
    newest: usize,
}

/// A locked directory holding one vTPM's state.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
    durable: bool,
    writes: u64,
    slots: Option<Slots>,
}

impl StateDir {
    /// Opens (creating it, mode 0700) and locks `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| StateError::Io {
                path: lock_path.clone(),
                source,
            })?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| StateError::Locked(dir.to_path_buf()))?;
        // Leftovers of writes interrupted by a crash are never the committed state.
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            durable: true,
            writes: 0,
            slots: None,
        })
    }

    /// Turns `fsync` off (atomic but not durable, as swtpm writes): for measuring what
    /// durability costs, never for real VMs.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// How many state files were written since opening.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file holding `kind`.
    pub fn file(&self, kind: StateKind) -> PathBuf {
        match kind {
            StateKind::Permanent => self.dir.join("permall.slots"),
            _ => self.dir.join(format!("{}.state", kind.name())),
        }
    }

    /// Opens the slot file (if any) and returns its newest valid state; `None` when
    /// there is no slot file.
    fn read_slots(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.file(StateKind::Permanent);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        if self.slots.is_none() {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(StateError::Io { path, source }),
            };
            let len = file.metadata().map_err(io)?.len() as usize;
            let min = SLOT_HEADER + HEADER_LEN;
            if !len.is_multiple_of(2)
                || len < 2 * min
                || len > 2 * (SLOT_HEADER + HEADER_LEN + MAX_STATE)
            {
                return Err(StateError::Corrupt {
                    path,
                    reason: format!("{len} bytes is not a pair of state slots"),
                });
            }
            self.slots = Some(Slots {
                file,
                slot_size: len / 2,
                seq: 0,
                newest: 1,
            });
        }
        let Some(slots) = self.slots.as_mut() else {
            return Ok(None);
        };
        let mut best: Option<(u64, usize, Vec<u8>)> = None;
        let mut buf = vec![0u8; slots.slot_size];
        for i in 0..2 {
            slots
                .file
                .read_exact_at(&mut buf, (i * slots.slot_size) as u64)
                .map_err(io)?;
            let (seq, frame) = buf.split_at(SLOT_HEADER);
            let seq = u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]));
            let Some(len) = frame
                .get(12..16)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            else {
                continue;
            };
            let Some(frame) = frame.get(..HEADER_LEN.saturating_add(len)) else {
                continue;
            };
            if seq == 0 || best.as_ref().is_some_and(|b| seq <= b.0) {
                continue;
            }
            if let Ok(data) = decode(StateKind::Permanent, frame) {
                best = Some((seq, i, data.to_vec()));
            }
        }
        let Some((seq, i, data)) = best else {
            return Err(StateError::Corrupt {
                path,
                reason: "neither state slot holds a valid state".into(),
            });
        };
        slots.seq = seq;
        slots.newest = i;
        Ok(Some(data))
    }

    /// Rebuilds the slot file with slots of `slot_size`, `data` in the first
    /// (sequence 1), atomically and durably.
    fn rebuild_slots(&mut self, data: &[u8], slot_size: usize) -> Result<(), StateError> {
        let frame = encode(StateKind::Permanent, data);
        let mut image = vec![0u8; 2 * slot_size];
        image[..SLOT_HEADER].copy_from_slice(&1u64.to_be_bytes());
        image[SLOT_HEADER..SLOT_HEADER + frame.len()].copy_from_slice(&frame);
        let path = self.file(StateKind::Permanent);
        self.slots = None;
        self.replace_file(&path, &image)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        self.slots = Some(Slots {
            file,
            slot_size,
            seq: 1,
            newest: 0,
        });
        Ok(())
    }

    /// Replaces `path` with `contents`: temporary file, `fsync`, `rename`, `fsync` of
    /// the directory (without the syncs when durability is off).
    fn replace_file(&self, path: &Path, contents: &[u8]) -> Result<(), StateError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io { path: p, source }
        };
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(contents).map_err(io(&tmp))?;
            if self.durable {
                f.sync_all().map_err(io(&tmp))?;
            }
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        if self.durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// Reads the state of `kind`, absent is `None`; a damaged file is an error.
    pub fn read(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError> {
        if kind == StateKind::Permanent {
            return self.read_slots();
        }
        let path = self.file(kind);

        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        if bytes.len() > MAX_STATE + HEADER_LEN {
            return Err(StateError::Corrupt {
                path,
                reason: format!("{} bytes is larger than any TPM state", bytes.len()),
            });
        }
        decode(kind, &bytes)
            .map(|d| Some(d.to_vec()))
            .map_err(|reason| StateError::Corrupt { path, reason })
    }

    /// Replaces the state of `kind` atomically (and durably unless turned off).
    pub fn write(&mut self, kind: StateKind, data: &[u8]) -> Result<(), StateError> {
        if data.len() > MAX_STATE {
            return Err(StateError::Corrupt {
                path: self.file(kind),
                reason: format!("{} bytes of state exceed the limit", data.len()),
            });
        }
        if kind != StateKind::Permanent {
            let path = self.file(kind);
            self.replace_file(&path, &encode(kind, data))?;
            self.writes += 1;
            return Ok(());
        }
        let need = SLOT_HEADER + HEADER_LEN + data.len();
        // The newest slot is known once the file was read; read it the first time.
        let have = match self.slots.as_ref() {
            Some(s) => Ok(Some(s.slot_size)),
            None => self
                .read_slots()
                .map(|found| found.and(self.slots.as_ref().map(|s| s.slot_size))),
        };
        let have = match have {
            Ok(Some(size)) => size,
            // No slot file yet, or one without a valid slot: start afresh.
            Ok(None) | Err(StateError::Corrupt { .. }) => 0,
            Err(e) => return Err(e),
        };
        if have < need {
            let mut size = INITIAL_SLOT;
            while size < need {
                size *= 2;
            }
            self.rebuild_slots(data, size)?;
            self.writes += 1;
            return Ok(());
        }
        let path = self.file(kind);
        let durable = self.durable;
        let Some(slots) = self.slots.as_mut() else {
            return Err(StateError::Corrupt {
                path,
                reason: "the slot file is not open".into(),
            });
        };
        let target = 1 - slots.newest;
        let seq = slots.seq + 1;
        let mut image = Vec::with_capacity(need);
        image.extend_from_slice(&seq.to_be_bytes());
        image.extend_from_slice(&encode(kind, data));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        slots
            .file
            .write_all_at(&image, (target * slots.slot_size) as u64)
            .map_err(io)?;
        if durable {
            slots.file.sync_data().map_err(io)?;
        }
        slots.seq = seq;
        slots.newest = target;
        self.writes += 1;
        Ok(())
    }

    /// Removes the state of `kind`; absent is an error only with `must_exist`.
    pub fn remove(&mut self, kind: StateKind, must_exist: bool) -> Result<(), StateError> {
        let path = self.file(kind);
        if kind == StateKind::Permanent {
            self.slots = None;
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

/// The [`StateDir`] as libtpms's storage, shared with the engine (which also reads and
/// writes state blobs for the control channel).
#[derive(Clone, Debug)]
pub struct SharedState(pub std::sync::Arc<std::sync::Mutex<StateDir>>);

impl SharedState {
    /// Runs `f` on the locked directory.
    pub fn with<T>(&self, f: impl FnOnce(&mut StateDir) -> T) -> T {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
}

impl Nvram for SharedState {
    fn load(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, NvramError> {
        self.with(|d| d.read(kind))
            .map_err(|e| NvramError(e.to_string()))
    }

    fn store(&mut self, kind: StateKind, data: &[u8]) -> Result<(), NvramError> {
        self.with(|d| d.write(kind, data))
            .map_err(|e| NvramError(e.to_string()))
    }

    fn delete(&mut self, kind: StateKind, must_exist: bool) -> Result<(), NvramError> {
        self.with(|d| d.remove(kind, must_exist))
            .map_err(|e| NvramError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_files_refuse_every_damage() {
        let t = tempfile::tempdir().unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert!(d.read(StateKind::Volatile).unwrap().is_none());
        d.write(StateKind::Volatile, b"sessions and pcrs").unwrap();
        assert_eq!(
            d.read(StateKind::Volatile).unwrap().unwrap(),
            b"sessions and pcrs"
        );
        // Second opener is refused while the first lives.
        assert!(matches!(
            StateDir::open(t.path()),
            Err(StateError::Locked(_))
        ));
        let path = d.file(StateKind::Volatile);
        let file = fs::read(&path).unwrap();
        // Truncation, a flipped bit, a future version: all refused.
        for (i, bad) in [
            file[..file.len() - 1].to_vec(),
            {
                let mut b = file.clone();
                b[HEADER_LEN] ^= 1;
                b
            },
            {
                let mut b = file.clone();
                b[9] = 2;
                b
            },
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(&path, &bad).unwrap();
            let e = d.read(StateKind::Volatile).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "case {i}: {e}");
        }
        // The wrong kind is refused too.
        assert!(decode(StateKind::Permanent, &file).is_err());
        // A leftover temporary file from an interrupted write is cleaned on open.
        drop(d);
        fs::write(t.path().join("permall.slots.tmp"), b"half").unwrap();
        let _d = StateDir::open(t.path()).unwrap();
        assert!(!t.path().join("permall.slots.tmp").exists());
    }

    #[test]
    fn permanent_slots_alternate_and_a_torn_write_falls_back_to_the_previous_state() {
        let t = tempfile::tempdir().unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert!(d.read(StateKind::Permanent).unwrap().is_none());
        for v in [&b"one"[..], b"two", b"three"] {
            d.write(StateKind::Permanent, v).unwrap();
            assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), v);
        }
        let path = d.file(StateKind::Permanent);
        let size = fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(
            size,
            2 * INITIAL_SLOT,
            "the file never grows for small states"
        );
        drop(d);
        // "three" (sequence 3) is in slot 0; tear it: the reader falls back to "two".
        let mut img = fs::read(&path).unwrap();
        img[SLOT_HEADER + HEADER_LEN + 1] ^= 0xff;
        fs::write(&path, &img).unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), b"two");
        // The next write replaces the torn slot, not the good one.
        d.write(StateKind::Permanent, b"four").unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), b"four");
        drop(d);
        let mut d = StateDir::open(t.path()).unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), b"four");
        // A state larger than a slot rebuilds the file with larger slots.
        let big = vec![0x5a; INITIAL_SLOT + 10];
        d.write(StateKind::Permanent, &big).unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), big);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            4 * INITIAL_SLOT
        );
        d.write(StateKind::Permanent, b"small again").unwrap();
        drop(d);
        let mut d = StateDir::open(t.path()).unwrap();
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"small again"
        );
        // Both slots damaged: an error, never an empty (new) TPM.
        drop(d);
        let mut img = fs::read(&path).unwrap();
        let half = img.len() / 2;
        img[SLOT_HEADER + HEADER_LEN] ^= 1;
        img[half + SLOT_HEADER + HEADER_LEN] ^= 1;
        fs::write(&path, &img).unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert!(matches!(
            d.read(StateKind::Permanent),
            Err(StateError::Corrupt { .. })
        ));
        // A file that is not a pair of slots is refused.
        drop(d);
        fs::write(&path, [0u8; 7]).unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert!(matches!(
            d.read(StateKind::Permanent),
            Err(StateError::Corrupt { .. })
        ));
    }
}
