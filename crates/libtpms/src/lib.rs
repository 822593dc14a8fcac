//! A safe binding to [libtpms], the TPM 2.0 engine that swtpm and QEMU's vTPMs run.
//!
//! libtpms keeps one TPM in process-wide globals, so this crate hands out at most one
//! [`Libtpms`] handle per process ([`Libtpms::claim`]); the vTPM runs one process per
//! VM. The TPM's state does not go to libtpms's own files: libtpms calls back into the
//! [`Nvram`] the handle was claimed with whenever its permanent state changes, and
//! asks it for state on start, so the caller decides how state is made durable.
//!
//! This crate's `unsafe` code lives in its private `ffi` module (the only other
//! `unsafe` in opencvm is `aes-xts`'s binding of aws-lc's AES-XTS; ADR 0013).
//!
//! [libtpms]: https://github.com/stefanberger/libtpms
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

mod ffi;

/// The pieces of state libtpms asks its storage for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Permanent state: seeds, NV indices, persistent objects, hierarchy settings
    /// (libtpms name `permall`).
    Permanent,
    /// Volatile state saved on request, resumed by the next start (`volatilestate`).
    Volatile,
    /// State saved by `TPM2_Shutdown(SU_STATE)` (`savestate`).
    SaveState,
}

impl StateKind {
    /// Every kind, permanent first.
    pub const ALL: [StateKind; 3] = [Self::Permanent, Self::Volatile, Self::SaveState];

    /// The name libtpms uses for this state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Permanent => "permall",
            Self::Volatile => "volatilestate",
            Self::SaveState => "savestate",
        }
    }

    /// The kind libtpms means by `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why an [`Nvram`] operation failed (reported to libtpms as `TPM_FAIL`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NvramError(pub String);

/// Storage for libtpms's state. libtpms calls these from inside [`Libtpms`] methods,
/// on the calling thread; an error makes the TPM operation that needed it fail.
pub trait Nvram: Send {
    /// The stored state of `kind`, `None` if there is none (a new TPM is manufactured
    /// when there is no permanent state).
    fn load(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, NvramError>;
    /// Replaces the stored state of `kind`; must be durable when it returns.
    fn store(&mut self, kind: StateKind, data: &[u8]) -> Result<(), NvramError>;
    /// Deletes the stored state of `kind`; `must_exist` asks for an error if absent.
    fn delete(&mut self, kind: StateKind, must_exist: bool) -> Result<(), NvramError>;
}

/// Errors of this binding.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Another [`Libtpms`] handle is alive in this process.
    #[error("libtpms is already in use in this process (one TPM per process)")]
    InUse,
    /// A libtpms function returned a non-success code.
    #[error("libtpms {op} failed with code {code:#x}")]
    Code {
        /// The libtpms function.
        op: &'static str,
        /// Its `TPM_RESULT`.
        code: u32,
    },
    /// libtpms returned no information.
    #[error("libtpms {0} returned nothing")]
    Empty(&'static str),
}

impl Error {
    /// The `TPM_RESULT` to report over a control channel.
    pub fn code(&self) -> u32 {
        match self {
            Self::Code { code, .. } => *code,
            Self::InUse | Self::Empty(_) => ffi::FAIL,
        }
    }
}

fn check(op: &'static str, code: u32) -> Result<(), Error> {
    if code == ffi::SUCCESS {
        Ok(())
    } else {
        Err(Error::Code { op, code })
    }
}

/// The process-wide claim, the storage, the locality and the last storage error: the
/// state the C callbacks reach.
static CLAIMED: AtomicBool = AtomicBool::new(false);
static NVRAM: Mutex<Option<Box<dyn Nvram>>> = Mutex::new(None);
static LOCALITY: AtomicU8 = AtomicU8::new(0);
static STORE_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// What the C callbacks in `ffi` call.
pub(crate) mod callbacks {
    use super::*;

    fn with_nvram<T>(f: impl FnOnce(&mut dyn Nvram) -> Result<T, NvramError>) -> Result<T, ()> {
        let mut guard = NVRAM.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(nv) = guard.as_mut() else {
            return Err(());
        };
        f(nv.as_mut()).map_err(|e| {
            *STORE_ERROR.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.0);
        })
    }

    pub(crate) fn load(kind: StateKind) -> Result<Option<Vec<u8>>, ()> {
        with_nvram(|nv| nv.load(kind))
    }

    pub(crate) fn store(kind: StateKind, data: &[u8]) -> Result<(), ()> {
        with_nvram(|nv| nv.store(kind, data))
    }

    pub(crate) fn delete(kind: StateKind, must_exist: bool) -> Result<(), ()> {
        with_nvram(|nv| nv.delete(kind, must_exist))
    }

    pub(crate) fn locality() -> u8 {
        LOCALITY.load(Ordering::SeqCst)
    }
}

/// Buffer sizes reported by [`Libtpms::set_buffer_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    /// The size in use.
    pub current: u32,
    /// The smallest size libtpms accepts.
    pub min: u32,
    /// The largest size libtpms accepts.
    pub max: u32,
}

/// The process's one libtpms TPM 2.0. Not `Sync`: libtpms is not thread-safe, so every
/// call goes through `&mut self` (wrap it in a mutex to share it).
pub struct Libtpms {
    running: bool,
    buffer: ffi::ResponseBuffer,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl std::fmt::Debug for Libtpms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libtpms")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Libtpms {
    /// Claims libtpms for this process, selecting TPM 2.0 and routing its state to
    /// `nvram`. The TPM is not started yet ([`Libtpms::init`]).
    pub fn claim(nvram: Box<dyn Nvram>) -> Result<Self, Error> {
        if CLAIMED
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::InUse);
        }
        *NVRAM.lock().unwrap_or_else(PoisonError::into_inner) = Some(nvram);
        if let Err(e) = check("setup", ffi::setup()) {
            *NVRAM.lock().unwrap_or_else(PoisonError::into_inner) = None;
            CLAIMED.store(false, Ordering::SeqCst);
            return Err(e);
        }
        Ok(Self {
            running: false,
            buffer: ffi::ResponseBuffer::new(),
            _not_sync: PhantomData,
        })
    }

    /// libtpms's version as `0x00MMmmpp` (e.g. `0x000902` for 0.9.2).
    pub fn version() -> u32 {
        ffi::version()
    }

    /// Starts the TPM (`TPMLIB_MainInit`): loads state from the storage, or
    /// manufactures a new TPM (fresh seeds) when there is no permanent state. A running
    /// TPM is terminated first.
    pub fn init(&mut self) -> Result<(), Error> {
        if self.running {
            self.terminate();
        }
        self.take_store_error();
        check("MainInit", ffi::main_init())?;
        self.running = true;
        Ok(())
    }

    /// Stops the TPM without saving anything (what power loss does to volatile state).
    pub fn terminate(&mut self) {
        if self.running {
            ffi::terminate();
            self.running = false;
        }
    }

    /// Whether [`Libtpms::init`] succeeded and the TPM was not terminated since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Sets the locality the next commands run at (0–4).
    pub fn set_locality(&mut self, locality: u8) {
        LOCALITY.store(locality, Ordering::SeqCst);
    }

    /// The locality commands run at.
    pub fn locality(&self) -> u8 {
        LOCALITY.load(Ordering::SeqCst)
    }

    /// Executes one TPM command and returns the response (a TPM error is a normal
    /// response; `Err` means libtpms itself failed).
    pub fn process(&mut self, command: &[u8]) -> Result<Vec<u8>, Error> {
        self.buffer.process(command).map_err(|code| Error::Code {
            op: "Process",
            code,
        })
    }

    /// The storage error libtpms last hit (and clears it), if any: a command whose
    /// state could not be saved.
    pub fn take_store_error(&mut self) -> Option<String> {
        STORE_ERROR
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The running TPM's volatile state (`TPMLIB_VolatileAll_Store`).
    pub fn volatile_state(&mut self) -> Result<Vec<u8>, Error> {
        ffi::volatile_all_store().map_err(|code| Error::Code {
            op: "VolatileAll_Store",
            code,
        })
    }

    /// A state blob (`TPMLIB_GetState`): of the running TPM, else the stored one.
    pub fn get_state(&mut self, kind: StateKind) -> Result<Vec<u8>, Error> {
        ffi::get_state(kind).map_err(|code| Error::Code {
            op: "GetState",
            code,
        })
    }

    /// Hands libtpms a state blob to start from at the next [`Libtpms::init`]
    /// (`TPMLIB_SetState`); only while the TPM is stopped.
    pub fn set_state(&mut self, kind: StateKind, blob: &[u8]) -> Result<(), Error> {
        check("SetState", ffi::set_state(kind, blob))
    }

    /// `TPMLIB_CancelCommand`.
    pub fn cancel(&mut self) -> Result<(), Error> {
        check("CancelCommand", ffi::cancel())
    }

    /// Starts a dynamic-root-of-trust hash sequence (`TPM_IO_Hash_Start`).
    pub fn hash_start(&mut self) -> Result<(), Error> {
        check("Hash_Start", ffi::hash_start())
    }

    /// Feeds the hash sequence (`TPM_IO_Hash_Data`).
    pub fn hash_data(&mut self, data: &[u8]) -> Result<(), Error> {
        check("Hash_Data", ffi::hash_data(data))
    }

    /// Ends the hash sequence, extending PCR 17 (`TPM_IO_Hash_End`).
    pub fn hash_end(&mut self) -> Result<(), Error> {
        check("Hash_End", ffi::hash_end())
    }

    /// The TPM-established flag.
    pub fn established(&mut self) -> Result<bool, Error> {
        ffi::established_get().map_err(|code| Error::Code {
            op: "TpmEstablished_Get",
            code,
        })
    }

    /// Resets the TPM-established flag (requires locality 3 or 4).
    pub fn reset_established(&mut self) -> Result<(), Error> {
        check("TpmEstablished_Reset", ffi::established_reset())
    }

    /// Sets (or with 0, queries) the I/O buffer size.
    pub fn set_buffer_size(&mut self, wanted: u32) -> BufferSizes {
        let (current, min, max) = ffi::set_buffer_size(wanted);
        BufferSizes { current, min, max }
    }

    /// libtpms's information document (JSON) for the `TPMLIB_INFO_*` bits in `flags`.
    pub fn info(&mut self, flags: u32) -> Result<String, Error> {
        ffi::get_info(flags).ok_or(Error::Empty("GetInfo"))
    }
}

impl Drop for Libtpms {
    fn drop(&mut self) {
        self.terminate();
        *NVRAM.lock().unwrap_or_else(PoisonError::into_inner) = None;
        CLAIMED.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<HashMap<&'static str, Vec<u8>>>>);

    impl Nvram for Mem {
        fn load(&mut self, kind: StateKind) -> Result<Option<Vec<u8>>, NvramError> {
            Ok(self.0.lock().unwrap().get(kind.name()).cloned())
        }
        fn store(&mut self, kind: StateKind, data: &[u8]) -> Result<(), NvramError> {
            self.0.lock().unwrap().insert(kind.name(), data.to_vec());
            Ok(())
        }
        fn delete(&mut self, kind: StateKind, _: bool) -> Result<(), NvramError> {
            self.0.lock().unwrap().remove(kind.name());
            Ok(())
        }
    }

    const STARTUP_CLEAR: [u8; 12] = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x44, 0, 0];
    const GET_RANDOM_16: [u8; 12] = [0x80, 1, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 16];

    fn rc(resp: &[u8]) -> u32 {
        u32::from_be_bytes(resp[6..10].try_into().unwrap())
    }

    /// One test, because libtpms is one per process.
    #[test]
    fn manufacture_run_persist_and_claim_once() {
        let mem = Mem::default();
        let mut tpm = Libtpms::claim(Box::new(mem.clone())).unwrap();
        assert_eq!(
            Libtpms::claim(Box::new(Mem::default())).unwrap_err(),
            Error::InUse
        );
        assert!(Libtpms::version() >= 0x000900);
        tpm.init().unwrap();
        // A new TPM was manufactured and its permanent state stored at once.
        let perm = mem.0.lock().unwrap().get("permall").cloned().unwrap();
        assert!(perm.len() > 1000);
        assert_eq!(rc(&tpm.process(&STARTUP_CLEAR).unwrap()), 0);
        let r1 = tpm.process(&GET_RANDOM_16).unwrap();
        let r2 = tpm.process(&GET_RANDOM_16).unwrap();
        assert_eq!((rc(&r1), r1.len()), (0, 10 + 2 + 16));
        assert_ne!(r1, r2);
        // Startup twice is TPM_RC_INITIALIZE, a TPM error carried in a response.
        assert_eq!(rc(&tpm.process(&STARTUP_CLEAR).unwrap()), 0x100);
        assert!(tpm.get_state(StateKind::Permanent).unwrap().len() > 1000);
        assert!(!tpm.volatile_state().unwrap().is_empty());
        assert!(tpm.info(1).unwrap().contains("TPMSpecification"));
        assert!(!tpm.established().unwrap());
        // Restart from the stored state: the same TPM (same permanent state), which
        // needs TPM2_Startup again.
        tpm.terminate();
        tpm.init().unwrap();
        assert_eq!(rc(&tpm.process(&GET_RANDOM_16).unwrap()), 0x100); // TPM_RC_INITIALIZE
        assert_eq!(rc(&tpm.process(&STARTUP_CLEAR).unwrap()), 0);
        drop(tpm);
        // The claim is released with the handle.
        let tpm = Libtpms::claim(Box::new(Mem::default())).unwrap();
        assert!(!tpm.is_running());
    }
}
