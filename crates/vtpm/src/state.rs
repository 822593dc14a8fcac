//! Durable vTPM state in a directory: one file per libtpms state kind, each written
//! atomically and durably (temporary file, `fsync`, `rename`, `fsync` of the
//! directory) and framed with a format version and a SHA-256 so a torn or foreign
//! file is refused instead of silently starting a new TPM.
//!
//! The directory is locked (`flock`) for as long as the [`StateDir`] lives: two vTPM
//! processes never share one TPM's state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
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

/// A locked directory holding one vTPM's state.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
    durable: bool,
    writes: u64,
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
        self.dir.join(format!("{}.state", kind.name()))
    }

    /// Reads the state of `kind`, `None` if absent; a damaged file is an error.
    pub fn read(&self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError> {
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
        let path = self.file(kind);
        let tmp = self.dir.join(format!("{}.state.tmp", kind.name()));
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
            f.write_all(&encode(kind, data)).map_err(io(&tmp))?;
            if self.durable {
                f.sync_all().map_err(io(&tmp))?;
            }
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        if self.durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        self.writes += 1;
        Ok(())
    }

    /// Removes the state of `kind`; absent is an error only with `must_exist`.
    pub fn remove(&mut self, kind: StateKind, must_exist: bool) -> Result<(), StateError> {
        let path = self.file(kind);
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
    fn round_trip_and_every_damage_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut d = StateDir::open(t.path()).unwrap();
        assert!(d.read(StateKind::Permanent).unwrap().is_none());
        d.write(StateKind::Permanent, b"seeds and nv").unwrap();
        assert_eq!(
            d.read(StateKind::Permanent).unwrap().unwrap(),
            b"seeds and nv"
        );
        // Second opener is refused while the first lives.
        assert!(matches!(
            StateDir::open(t.path()),
            Err(StateError::Locked(_))
        ));
        let file = fs::read(d.file(StateKind::Permanent)).unwrap();
        // Truncation, a flipped bit, a future version, the wrong kind: all refused.
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
            fs::write(d.file(StateKind::Permanent), &bad).unwrap();
            let e = d.read(StateKind::Permanent).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "case {i}: {e}");
        }
        assert!(decode(StateKind::Volatile, &file).is_err());
        // A leftover temporary file from an interrupted write is cleaned on open.
        drop(d);
        fs::write(t.path().join("permall.state.tmp"), b"half").unwrap();
        let _d = StateDir::open(t.path()).unwrap();
        assert!(!t.path().join("permall.state.tmp").exists());
    }
}
