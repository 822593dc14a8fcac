//! The vTPM's state in a VMGS file: the permanent state in `TPM_NVRAM`, the volatile
//! and saved states in opencvm's `TPM_VOLATILE` and `TPM_SAVESTATE`, each write one
//! VMGS commit (durable when it returns, a crash at any instant leaves the previous or
//! the new state). The VMGS is encrypted: the host sees sizes, never the state.

use std::path::Path;

use libtpms::StateKind;
pub use vmgs::key_protector::Kek;
pub use vmgs::vmgs_format::FileId;
pub use vmgs::{DatastoreKey, VmgsError};
use vmgs::{OpenOptions, Vmgs};

use crate::state::{StateError, StateStore};

/// A VMGS file as the vTPM's state store.
pub struct VmgsState {
    vmgs: Vmgs,
}

impl std::fmt::Debug for VmgsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmgsState")
            .field("vmgs", &self.vmgs)
            .finish()
    }
}

fn file_id(kind: StateKind) -> FileId {
    match kind {
        StateKind::Permanent => FileId::TPM_NVRAM,
        StateKind::Volatile => FileId::TPM_VOLATILE,
        StateKind::SaveState => FileId::TPM_SAVESTATE,
    }
}

impl VmgsState {
    /// Opens the encrypted VMGS at `path` with `key`, or creates it (4 MiB) when
    /// there is no file; the second value tells whether it was created. (An
    /// unencrypted VMGS refuses the key.)
    pub fn open_or_create(path: &Path, key: &DatastoreKey) -> Result<(Self, bool), StateError> {
        Self::open_or_create_with(
            || Vmgs::open_file(path, Some(key), OpenOptions::default()),
            || Vmgs::create_file(path, vmgs::DEFAULT_SIZE, Some(key)),
        )
    }

    /// Opens the VMGS at `path` through its key protector with `kek`, which rotates
    /// its datastore key, or creates it (4 MiB, a fresh datastore key wrapped by
    /// `kek`) when there is no file; the second value tells whether it was created.
    pub fn open_or_create_protected(path: &Path, kek: &Kek) -> Result<(Self, bool), StateError> {
        Self::open_or_create_with(
            || Vmgs::open_file_protected(path, kek, OpenOptions::default()),
            || Vmgs::create_file_protected(path, vmgs::DEFAULT_SIZE, kek),
        )
    }

    fn open_or_create_with(
        open: impl FnOnce() -> Result<(Vmgs, vmgs::Opened), VmgsError>,
        create: impl FnOnce() -> Result<Vmgs, VmgsError>,
    ) -> Result<(Self, bool), StateError> {
        match open() {
            Ok((vmgs, _)) => Ok((VmgsState { vmgs }, false)),
            Err(VmgsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok((VmgsState { vmgs: create()? }, true))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The VMGS.
    pub fn vmgs(&self) -> &Vmgs {
        &self.vmgs
    }

    /// The VMGS, for the VM's other files (its id, for one).
    pub fn vmgs_mut(&mut self) -> &mut Vmgs {
        &mut self.vmgs
    }
}

impl StateStore for VmgsState {
    fn read(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, StateError> {
        match self.vmgs.read_file(file_id(kind)) {
            Ok(d) => Ok(Some(d.to_vec())),
            Err(VmgsError::NoSuchFile(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write(&mut self, kind: StateKind, data: &[u8]) -> Result<(), StateError> {
        Ok(self.vmgs.write_file(file_id(kind), data, false)?)
    }

    fn remove(&mut self, kind: StateKind, must_exist: bool) -> Result<(), StateError> {
        match self.vmgs.delete_file(file_id(kind)) {
            Ok(()) => Ok(()),
            Err(VmgsError::NoSuchFile(_)) if !must_exist => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
