//! Durable vTPM state in a directory, each file framed with a format version, its
//! kind and a sequence number, and authenticated (HMAC-SHA256 under the directory's
//! state key) before any of it is interpreted, so a torn, altered or foreign file is
//! refused instead of silently starting a new TPM.
//!
//! - The permanent state (seeds, NV, persistent objects), written whenever it changes,
//!   lives in `permall.slots`: two preallocated slots written alternately, each with
//!   a sequence number inside the authenticated header. A write goes to the older slot
//!   and is made durable with one `fdatasync` (the file's size and metadata never
//!   change, so nothing else needs syncing); the reader takes the valid slot with the
//!   higher sequence, so a write torn by a crash leaves the previous state. When the
//!   state outgrows a slot the file is rebuilt with larger slots (temporary file,
//!   `fsync`, `rename`, `fsync` of the directory).
//! - Volatile and save state (written rarely) are whole files replaced the same
//!   rebuilt way.
//! - The state key (`state.key`, 32 random bytes, 0600) is made with the directory.
//!   It binds every file to this directory and makes the sequence number and kind
//!   tamper-evident: a slot whose sequence was raised, a volatile file presented as
//!   permanent, or a file from another vTPM's directory fails authentication. It does
//!   not protect against whoever can read the directory (the host): that needs the
//!   state sealed under a key the host cannot obtain (the VMGS file, released after
//!   attestation). Nor is there rollback protection against replacing the whole
//!   directory with an older copy; within the slot file, only the newer of the two
//!   slots is ever read.
//! - A directory made by an older build (state format 1: unkeyed SHA-256, no key
//!   file) is read once and written in format 2 from its next change on; once the
//!   key exists, format 1 is refused.
//!
//! The directory is created 0700 (an existing one must belong to this user and have
//! no group or other permissions), temporary files are created exclusively and never
//! through a symbolic link, and the directory is locked (`flock`) for as long as the
//! [`StateDir`] lives: two vTPM processes never share one TPM's state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::{digest, hmac};
use libtpms::{Nvram, NvramError, StateKind};
use zeroize::Zeroizing;

/// Magic at the start of every state file.
pub const MAGIC: [u8; 8] = *b"OCVMTPMS";
/// Version of the state file framing written by this build.
pub const FORMAT_VERSION: u16 = 2;
/// The first format (unkeyed SHA-256, sequence outside the frame): read only from a
/// directory that has no state key yet.
const LEGACY_VERSION: u16 = 1;
/// Framing bytes before the state: magic, version, kind, reserved, sequence, length,
/// HMAC-SHA256 tag.
pub const HEADER_LEN: usize = 8 + 2 + 1 + 1 + 8 + 4 + 32;
/// Framing bytes of format 1: magic, version, kind, reserved, length, SHA-256.
const LEGACY_HEADER_LEN: usize = 8 + 2 + 1 + 1 + 4 + 32;
/// Largest state blob accepted (libtpms permanent state is ~10–100 KiB).
pub const MAX_STATE: usize = 4 << 20;
/// The name of the state key file.
const KEY_FILE: &str = "state.key";
/// `O_NOFOLLOW`: never open a file through a symbolic link.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

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
    /// A directory (state, CA, sockets) others can enter or that is not this user's.
    #[error("{path}: a vTPM directory must be this user's with mode 0700 ({why})")]
    Permissions {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The VMGS file holding the state.
    #[error(transparent)]
    Vmgs(#[from] vmgs::VmgsError),
}

/// Where the vTPM keeps its state blobs: a [`StateDir`], or a VMGS file
/// ([`crate::vmgs_state::VmgsState`]). Every write is durable when it returns.
pub trait StateStore: Send + std::fmt::Debug {
    /// The stored blob of `kind`, if any.
    fn read(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError>;
    /// Replaces the blob of `kind`, durably.
    fn write(&mut self, kind: StateKind, data: &[u8]) -> Result<(), StateError>;
    /// Deletes the blob of `kind`; `must_exist` asks for an error if there is none.
    fn remove(&mut self, kind: StateKind, must_exist: bool) -> Result<(), StateError>;
}

impl StateStore for StateDir {
    fn read(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError> {
        StateDir::read(self, kind)
    }
    fn write(&mut self, kind: StateKind, data: &[u8]) -> Result<(), StateError> {
        StateDir::write(self, kind, data)
    }
    fn remove(&mut self, kind: StateKind, must_exist: bool) -> Result<(), StateError> {
        StateDir::remove(self, kind, must_exist)
    }
}

fn kind_code(kind: StateKind) -> u8 {
    match kind {
        StateKind::Permanent => 1,
        StateKind::Volatile => 2,
        StateKind::SaveState => 3,
    }
}

/// The key that authenticates a directory's state files.
pub struct StateKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl StateKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn tag(&self, head: &[u8], data: &[u8]) -> hmac::Tag {
        let k = hmac::Key::new(hmac::HMAC_SHA256, self.0.as_slice());
        let mut c = hmac::Context::with_key(&k);
        c.update(head);
        c.update(data);
        c.sign()
    }
}

/// Frames `data` as a state file of `kind` with sequence `seq`, authenticated under
/// `key`.
pub fn encode(key: &StateKey, kind: StateKind, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.push(kind_code(kind));
    out.push(0);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let tag = key.tag(&out, data);
    out.extend_from_slice(tag.as_ref());
    out.extend_from_slice(data);
    out
}

/// Authenticates a state file of `kind` (its first bytes; anything after the framed
/// state is ignored, as in a slot) and returns its sequence number and state.
pub fn decode<'a>(
    key: &StateKey,
    kind: StateKind,
    file: &'a [u8],
) -> Result<(u64, &'a [u8]), String> {
    if file.len() < HEADER_LEN {
        return Err(format!("{} bytes is shorter than the header", file.len()));
    }
    if file[..8] != MAGIC {
        return Err("not an opencvm vTPM state file (bad magic)".into());
    }
    let version = u16::from_be_bytes([file[8], file[9]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "state format version {version} is not supported here (this build writes \
             {FORMAT_VERSION}; format {LEGACY_VERSION} is read only from a directory \
             without a state key)"
        ));
    }
    // Only the length is looked at before the tag is checked, to find the tag's extent.
    let len = u32::from_be_bytes([file[20], file[21], file[22], file[23]]) as usize;
    let Some(data) = file.get(HEADER_LEN..HEADER_LEN.saturating_add(len)) else {
        return Err(format!(
            "header says {len} bytes of state, the file holds {}",
            file.len() - HEADER_LEN
        ));
    };
    let expected = key.tag(&file[..HEADER_LEN - 32], data);
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), &file[24..56]).is_err()
    {
        return Err("state authentication failed (torn, altered, or another vTPM's file)".into());
    }
    if file[10] != kind_code(kind) || file[11] != 0 {
        return Err(format!(
            "holds state kind {}, expected {}",
            file[10],
            kind_code(kind)
        ));
    }
    let seq = u64::from_be_bytes(file[12..20].try_into().unwrap_or([0; 8]));
    Ok((seq, data))
}

/// Reads a format-1 file (a directory from before state keys): SHA-256 framing.
fn decode_legacy(kind: StateKind, file: &[u8]) -> Result<&[u8], String> {
    let head = file
        .get(..LEGACY_HEADER_LEN)
        .ok_or("shorter than the header")?;
    if head[..8] != MAGIC || u16::from_be_bytes([head[8], head[9]]) != LEGACY_VERSION {
        return Err("not a format 1 state file".into());
    }
    if head[10] != kind_code(kind) {
        return Err(format!("holds state kind {}", head[10]));
    }
    let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize;
    let data = file
        .get(LEGACY_HEADER_LEN..LEGACY_HEADER_LEN.saturating_add(len))
        .ok_or("truncated")?;
    if digest::digest(&digest::SHA256, data).as_ref() != &head[16..48] {
        return Err("state digest mismatch (torn or altered file)".into());
    }
    Ok(data)
}

/// Initial size of one slot of the permanent state (libtpms's is tens of KiB).
pub const INITIAL_SLOT: usize = 256 << 10;
/// Bytes before the framed state in a format-1 slot: the sequence number.
const LEGACY_SLOT_HEADER: usize = 8;

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
    key: StateKey,
    /// A directory of format 1 whose key is not written yet (see the module docs).
    legacy: bool,
    durable: bool,
    writes: u64,
    slots: Option<Slots>,
}

/// Creates `dir` with mode 0700 (and missing parents), or checks that an existing one
/// is a directory of this user with no group or other permissions.
pub fn private_dir(dir: &Path) -> Result<(), StateError> {
    let bad = |why: String| StateError::Permissions {
        path: dir.to_path_buf(),
        why,
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Io {
                path: dir.to_path_buf(),
                source,
            }),
        Err(source) => Err(StateError::Io {
            path: dir.to_path_buf(),
            source,
        }),
        Ok(m) if !m.file_type().is_dir() => Err(bad("not a directory".into())),
        Ok(m) if m.uid() != rustix::process::geteuid().as_raw() => {
            Err(bad(format!("owned by uid {}", m.uid())))
        }
        Ok(m) if m.mode() & 0o077 != 0 => Err(bad(format!("its mode is {:o}", m.mode() & 0o7777))),
        Ok(_) => Ok(()),
    }
}

/// Opens `path` for writing, creating it exclusively (never an existing file, never
/// through a symbolic link), mode 0600.
fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(path)
}

impl StateDir {
    /// Opens (creating it, mode 0700) and locks `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        private_dir(dir)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(NOFOLLOW)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
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
        let key_path = dir.join(KEY_FILE);
        let (key, legacy) = match OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(&key_path)
        {
            Ok(mut f) => {
                let mut b = Zeroizing::new([0u8; 33]);
                let n = io::Read::read(&mut f, b.as_mut_slice()).map_err(io(&key_path))?;
                if n != 32 {
                    return Err(StateError::Corrupt {
                        path: key_path,
                        reason: "a state key is 32 bytes".into(),
                    });
                }
                let mut k = [0u8; 32];
                k.copy_from_slice(&b[..32]);
                (StateKey::new(k), false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                aws_lc_rs::rand::fill(&mut k).map_err(|_| StateError::Corrupt {
                    path: key_path.clone(),
                    reason: "no randomness for a state key".into(),
                })?;
                let key = StateKey::new(k);
                k.fill(0);
                let has_state = ["permall.slots", "volatilestate.state", "savestate.state"]
                    .iter()
                    .any(|f| dir.join(f).exists());
                (key, has_state)
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: key_path,
                    source,
                });
            }
        };
        let d = Self {
            dir: dir.to_path_buf(),
            _lock: lock,
            key,
            legacy,
            durable: true,
            writes: 0,
            slots: None,
        };
        if !legacy && !d.dir.join(KEY_FILE).exists() {
            d.write_key()?;
        }
        Ok(d)
    }

    /// Writes the state key file (temporary file, rename), durably.
    fn write_key(&self) -> Result<(), StateError> {
        self.replace_file(&self.dir.join(KEY_FILE), self.key.0.as_slice(), true)
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

    /// The state in one slot (`buf`), if valid: (sequence, state).
    fn read_slot(&self, buf: &[u8]) -> Option<(u64, Vec<u8>)> {
        if self.legacy {
            let (seq, frame) = buf.split_at(LEGACY_SLOT_HEADER);
            let seq = u64::from_be_bytes(seq.try_into().ok()?);
            let data = decode_legacy(StateKind::Permanent, frame).ok()?;
            return Some((seq, data.to_vec()));
        }
        let (seq, data) = decode(&self.key, StateKind::Permanent, buf).ok()?;
        Some((seq, data.to_vec()))
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
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(StateError::Io { path, source }),
            };
            let len = file.metadata().map_err(io)?.len() as usize;
            if !len.is_multiple_of(2)
                || !(2 * HEADER_LEN..=2 * (LEGACY_SLOT_HEADER + HEADER_LEN + MAX_STATE))
                    .contains(&len)
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
        let Some(slot_size) = self.slots.as_ref().map(|s| s.slot_size) else {
            return Ok(None);
        };
        let mut best: Option<(u64, usize, Vec<u8>)> = None;
        let mut buf = vec![0u8; slot_size];
        for i in 0..2 {
            if let Some(s) = self.slots.as_ref() {
                s.file
                    .read_exact_at(&mut buf, (i * slot_size) as u64)
                    .map_err(io)?;
            }
            let Some((seq, data)) = self.read_slot(&buf) else {
                continue;
            };
            if seq == 0 || best.as_ref().is_some_and(|b| seq <= b.0) {
                continue;
            }
            best = Some((seq, i, data));
        }
        let Some((seq, i, data)) = best else {
            return Err(StateError::Corrupt {
                path,
                reason: "neither state slot holds a valid state".into(),
            });
        };
        if let Some(slots) = self.slots.as_mut() {
            slots.seq = seq;
            slots.newest = i;
        }
        Ok(Some(data))
    }

    /// Rebuilds the slot file with slots of `slot_size`, `data` in the first
    /// (sequence `seq`), atomically and durably.
    fn rebuild_slots(&mut self, data: &[u8], slot_size: usize, seq: u64) -> Result<(), StateError> {
        let frame = encode(&self.key, StateKind::Permanent, seq, data);
        let mut image = vec![0u8; 2 * slot_size];
        image[..frame.len()].copy_from_slice(&frame);
        let path = self.file(StateKind::Permanent);
        self.slots = None;
        self.replace_file(&path, &image, self.durable)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(&path)
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        self.slots = Some(Slots {
            file,
            slot_size,
            seq,
            newest: 0,
        });
        Ok(())
    }

    /// Replaces `path` with `contents`: temporary file (created exclusively, never
    /// through a link), `fsync`, `rename`, `fsync` of the directory (without the syncs
    /// unless `durable`).
    fn replace_file(&self, path: &Path, contents: &[u8], durable: bool) -> Result<(), StateError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io { path: p, source }
        };
        // Only this process writes here (the directory is locked), so a file at the
        // temporary name is a leftover or a plant: removed, never followed.
        let _ = fs::remove_file(&tmp);
        {
            let mut f = create_exclusive(&tmp).map_err(io(&tmp))?;
            f.write_all(contents).map_err(io(&tmp))?;
            if durable {
                f.sync_all().map_err(io(&tmp))?;
            }
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        if durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// A directory of format 1 becomes format 2 before its first write: the key file
    /// is written first, then every write is in format 2.
    fn leave_legacy(&mut self) -> Result<(), StateError> {
        if self.legacy {
            self.write_key()?;
            self.legacy = false;
        }
        Ok(())
    }

    /// Reads the state of `kind`, absent is `None`; a damaged file is an error.
    pub fn read(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError> {
        if kind == StateKind::Permanent {
            return self.read_slots();
        }
        let path = self.file(kind);
        let bytes = match OpenOptions::new()
            .read(true)
            .custom_flags(NOFOLLOW)
            .open(&path)
            .and_then(|mut f| {
                let mut b = Vec::new();
                io::Read::read_to_end(
                    &mut io::Read::take(&mut f, (MAX_STATE + HEADER_LEN + 1) as u64),
                    &mut b,
                )
                .map(|_| b)
            }) {
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
        let decoded = if self.legacy {
            decode_legacy(kind, &bytes)
        } else {
            decode(&self.key, kind, &bytes).and_then(|(_, d)| {
                if HEADER_LEN + d.len() == bytes.len() {
                    Ok(d)
                } else {
                    Err(format!(
                        "{} bytes after the state",
                        bytes.len() - HEADER_LEN - d.len()
                    ))
                }
            })
        };
        decoded
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
            self.leave_legacy()?;
            let path = self.file(kind);
            self.replace_file(&path, &encode(&self.key, kind, 0, data), self.durable)?;
            self.writes += 1;
            return Ok(());
        }
        let need = HEADER_LEN + data.len();
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
        let next = self.slots.as_ref().map_or(1, |s| s.seq + 1);
        if self.legacy || have < need {
            self.leave_legacy()?;
            let mut size = INITIAL_SLOT;
            while size < need {
                size *= 2;
            }
            self.rebuild_slots(data, size.max(have), next)?;
            self.writes += 1;
            return Ok(());
        }
        let path = self.file(kind);
        let durable = self.durable;
        let image = encode(&self.key, kind, next, data);
        let Some(slots) = self.slots.as_mut() else {
            return Err(StateError::Corrupt {
                path,
                reason: "the slot file is not open".into(),
            });
        };
        let target = 1 - slots.newest;
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
        slots.seq = next;
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

/// The state store as libtpms's storage, shared with the engine (which also reads and
/// writes state blobs for the control channel).
#[derive(Clone, Debug)]
pub struct SharedState(pub std::sync::Arc<std::sync::Mutex<Box<dyn StateStore>>>);

impl SharedState {
    /// Runs `f` on the locked store.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn StateStore) -> T) -> T {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(g.as_mut())
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
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tpm");
        (t, d)
    }

    #[test]
    fn framed_files_refuse_every_damage() {
        let (_t, dir) = dir();
        let mut d = StateDir::open(&dir).unwrap();
        assert!(d.read(StateKind::Volatile).unwrap().is_none());
        d.write(StateKind::Volatile, b"sessions and pcrs").unwrap();
        assert_eq!(
            d.read(StateKind::Volatile).unwrap().unwrap(),
            b"sessions and pcrs"
        );
        // Second opener is refused while the first lives.
        assert!(matches!(StateDir::open(&dir), Err(StateError::Locked(_))));
        let path = d.file(StateKind::Volatile);
        let file = fs::read(&path).unwrap();
        // Truncation, a trailing byte, a flipped bit in the state, the header's kind,
        // reserved byte, sequence or version: all refused.
        let flip = |at: usize| {
            let mut b = file.clone();
            b[at] ^= 1;
            b
        };
        for (i, bad) in [
            file[..file.len() - 1].to_vec(),
            [&file[..], &[0]].concat(),
            flip(HEADER_LEN),
            flip(10),
            flip(11),
            flip(19),
            flip(9),
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(&path, &bad).unwrap();
            let e = d.read(StateKind::Volatile).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "case {i}: {e}");
        }
        // The wrong kind is refused too, and so is a file authenticated under another
        // directory's key.
        assert!(decode(&d.key, StateKind::SaveState, &file).is_err());
        assert!(decode(&StateKey::new([7; 32]), StateKind::Volatile, &file).is_err());
        assert!(decode(&d.key, StateKind::Volatile, &file).is_ok());
        // A leftover temporary file from an interrupted write is cleaned on open.
        drop(d);
        fs::write(dir.join("permall.slots.tmp"), b"half").unwrap();
        let _d = StateDir::open(&dir).unwrap();
        assert!(!dir.join("permall.slots.tmp").exists());
    }

    #[test]
    fn directories_are_private_and_temporary_files_never_follow_links() {
        let (t, dir) = dir();
        let d = StateDir::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        drop(d);
        // An existing directory others can enter is refused.
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let e = StateDir::open(&open).unwrap_err();
        assert!(matches!(e, StateError::Permissions { .. }), "{e}");
        // A symbolic link planted at the temporary name is not written through.
        let mut d = StateDir::open(&dir).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, b"someone else's file").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("volatilestate.state.tmp")).unwrap();
        d.write(StateKind::Volatile, b"pcrs").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"someone else's file");
        assert_eq!(d.read(StateKind::Volatile).unwrap().unwrap(), b"pcrs");
        // Nor is one planted at the state file itself read.
        drop(d);
        fs::remove_file(dir.join("volatilestate.state")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("volatilestate.state")).unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert!(d.read(StateKind::Volatile).is_err());
    }

    #[test]
    fn permanent_slots_alternate_and_a_torn_write_falls_back_to_the_previous_state() {
        let (_t, dir) = dir();
        let mut d = StateDir::open(&dir).unwrap();
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
        img[HEADER_LEN + 1] ^= 0xff;
        fs::write(&path, &img).unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), b"two");
        // The next write replaces the torn slot, not the good one.
        d.write(StateKind::Permanent, b"four").unwrap();
        assert_eq!(d.read(StateKind::Permanent).unwrap().unwrap(), b"four");
        drop(d);
        let mut d = StateDir::open(&dir).unwrap();
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
        let mut d = StateDir::open(&dir).unwrap();
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"small again"
        );
        // Both slots damaged: an error, never an empty (new) TPM.
        drop(d);
        let mut img = fs::read(&path).unwrap();
        let half = img.len() / 2;
        img[HEADER_LEN] ^= 1;
        img[half + HEADER_LEN] ^= 1;
        fs::write(&path, &img).unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert!(matches!(
            d.read(StateKind::Permanent),
            Err(StateError::Corrupt { .. })
        ));
        // A file that is not a pair of slots is refused.
        drop(d);
        fs::write(&path, [0u8; 7]).unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert!(matches!(
            d.read(StateKind::Permanent),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn raising_an_old_slots_sequence_does_not_roll_the_state_back() {
        let (_t, dir) = dir();
        let mut d = StateDir::open(&dir).unwrap();
        d.write(StateKind::Permanent, b"user data v1").unwrap();
        d.write(StateKind::Permanent, b"user data v2").unwrap();
        let path = d.file(StateKind::Permanent);
        drop(d);
        // Slot 0 holds v1 (sequence 1), slot 1 v2 (sequence 2). Give slot 0 a higher
        // sequence number: it no longer authenticates, and v2 stays the state.
        let mut img = fs::read(&path).unwrap();
        img[12..20].copy_from_slice(&9u64.to_be_bytes());
        fs::write(&path, &img).unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"user data v2"
        );
    }

    #[test]
    fn a_directory_of_format_1_is_read_once_then_written_in_format_2() {
        let (_t, dir) = dir();
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let legacy = |kind: StateKind, data: &[u8]| {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&LEGACY_VERSION.to_be_bytes());
            out.push(kind_code(kind));
            out.push(0);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(digest::digest(&digest::SHA256, data).as_ref());
            out.extend_from_slice(data);
            out
        };
        let mut slots = vec![0u8; 2 * INITIAL_SLOT];
        slots[..8].copy_from_slice(&5u64.to_be_bytes());
        let frame = legacy(StateKind::Permanent, b"old permanent");
        slots[8..8 + frame.len()].copy_from_slice(&frame);
        fs::write(dir.join("permall.slots"), &slots).unwrap();
        fs::write(
            dir.join("volatilestate.state"),
            legacy(StateKind::Volatile, b"old volatile"),
        )
        .unwrap();
        let mut d = StateDir::open(&dir).unwrap();
        assert!(!dir.join(KEY_FILE).exists());
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"old permanent"
        );
        assert_eq!(
            d.read(StateKind::Volatile).unwrap().unwrap(),
            b"old volatile"
        );
        d.write(StateKind::Permanent, b"new permanent").unwrap();
        assert!(dir.join(KEY_FILE).exists());
        drop(d);
        let mut d = StateDir::open(&dir).unwrap();
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"new permanent"
        );
        // Once the key exists, format 1 is refused.
        assert!(matches!(
            d.read(StateKind::Volatile),
            Err(StateError::Corrupt { .. })
        ));
    }
}
