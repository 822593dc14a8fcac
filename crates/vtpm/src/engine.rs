//! The TPM engine behind the vTPM: a trait, so the engine can be swapped, and its
//! implementation over libtpms.

use std::collections::HashMap;

use libtpms::{BufferSizes, Libtpms, StateKind};

use crate::state::{SharedState, StateError, StateStore};

/// `TPM_FAIL`, the generic failure code of the control channel.
pub const TPM_FAIL: u32 = 9;
/// `TPM_BAD_PARAMETER`.
pub const TPM_BAD_PARAMETER: u32 = 3;
/// `TPM_BAD_ORDINAL`: the control channel's "not in this state".
pub const TPM_BAD_ORDINAL: u32 = 10;
/// `TPM_IOERROR`.
pub const TPM_IOERROR: u32 = 31;
/// `TPM_BAD_LOCALITY`.
pub const TPM_BAD_LOCALITY: u32 = 61;

/// An engine failure, with the `TPM_RESULT` a control channel reports for it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// The `TPM_RESULT` code.
    pub code: u32,
    /// What failed.
    pub message: String,
}

impl EngineError {
    /// An error with `code`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<libtpms::Error> for EngineError {
    fn from(e: libtpms::Error) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<StateError> for EngineError {
    fn from(e: StateError) -> Self {
        Self::new(TPM_IOERROR, e.to_string())
    }
}

/// A TPM 2.0 engine as the vTPM's protocols drive it (the operations of swtpm's
/// control channel and of the simulator's platform port).
pub trait Engine: Send {
    /// Starts (or restarts) the TPM from its stored state; with `delete_volatile`
    /// the stored volatile state is removed once it is loaded.
    fn start(&mut self, delete_volatile: bool) -> Result<(), EngineError>;
    /// Stops the TPM. `orderly` first sends `TPM2_Shutdown(SU_STATE)` (falling back to
    /// `SU_CLEAR`) unless the last command was a `TPM2_Shutdown`, as a host does before
    /// removing power.
    fn stop(&mut self, orderly: bool);
    /// Whether the TPM is running.
    fn is_running(&self) -> bool;
    /// Executes one command at `locality`; TPM errors are normal responses.
    fn execute(&mut self, locality: u8, command: &[u8]) -> Result<Vec<u8>, EngineError>;
    /// The TPM-established flag.
    fn established(&mut self) -> Result<bool, EngineError>;
    /// Resets the TPM-established flag, acting at `locality`.
    fn reset_established(&mut self, locality: u8) -> Result<(), EngineError>;
    /// Starts a `_TPM_Hash_Start` sequence at locality 4.
    fn hash_start(&mut self) -> Result<(), EngineError>;
    /// Feeds `_TPM_Hash_Data`.
    fn hash_data(&mut self, data: &[u8]) -> Result<(), EngineError>;
    /// `_TPM_Hash_End`.
    fn hash_end(&mut self) -> Result<(), EngineError>;
    /// Cancels the running command (commands run synchronously, so this only
    /// records the request).
    fn cancel(&mut self) -> Result<(), EngineError>;
    /// Saves the volatile state so the next start resumes it.
    fn store_volatile(&mut self) -> Result<(), EngineError>;
    /// A state blob for migration or backup (volatile: of the running TPM).
    fn state_blob(&mut self, kind: StateKind) -> Result<Vec<u8>, EngineError>;
    /// Installs a state blob to start from; only while stopped. Nothing stored is
    /// replaced until a start with it succeeds.
    fn set_state_blob(&mut self, kind: StateKind, blob: &[u8]) -> Result<(), EngineError>;
    /// Sets (or with 0 queries) the command buffer size; only while stopped.
    fn set_buffer_size(&mut self, wanted: u32) -> Result<BufferSizes, EngineError>;
    /// The engine's information document (JSON) for `flags`.
    fn info(&mut self, flags: u64) -> Result<String, EngineError>;
}

/// `TPM2_CC_Shutdown`.
const CC_SHUTDOWN: u32 = 0x145;

/// The command code of a TPM 2.0 command, if `command` has a header.
pub fn command_code(command: &[u8]) -> Option<u32> {
    command
        .get(6..10)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The response code of a TPM 2.0 response, if `response` has a header.
pub fn response_code(response: &[u8]) -> Option<u32> {
    command_code(response)
}

/// A `TPM2_Shutdown` command of `kind` (0 = `SU_CLEAR`, 1 = `SU_STATE`).
fn shutdown_command(kind: u16) -> [u8; 12] {
    let mut c = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x45, 0, 0];
    c[10..12].copy_from_slice(&kind.to_be_bytes());
    c
}

/// libtpms as the engine, its state in a [`StateStore`] (a state directory or a VMGS).
pub struct LibtpmsEngine {
    tpm: Libtpms,
    state: SharedState,
    pending: HashMap<StateKind, Vec<u8>>,
    last_command: Option<u32>,
}

impl std::fmt::Debug for LibtpmsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibtpmsEngine")
            .field("running", &self.tpm.is_running())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl LibtpmsEngine {
    /// Claims libtpms for this process with its state in `store` (not started yet).
    pub fn new(store: Box<dyn StateStore>) -> Result<Self, EngineError> {
        let state = SharedState(std::sync::Arc::new(std::sync::Mutex::new(store)));
        let tpm = Libtpms::claim(Box::new(state.clone()))?;
        Ok(Self {
            tpm,
            state,
            pending: HashMap::new(),
            last_command: None,
        })
    }

    /// The state store.
    pub fn state(&self) -> &SharedState {
        &self.state
    }
}

impl Engine for LibtpmsEngine {
    fn start(&mut self, delete_volatile: bool) -> Result<(), EngineError> {
        if self.tpm.is_running() {
            self.stop(true);
        }
        let pending = std::mem::take(&mut self.pending);
        self.tpm.init().map_err(|e| {
            let detail = self.tpm.take_store_error();
            EngineError::new(
                e.code(),
                match detail {
                    Some(d) => format!("{e}: {d}"),
                    None => e.to_string(),
                },
            )
        })?;
        self.last_command = None;
        // A permanent state installed over the control channel becomes the stored one
        // only now that libtpms has accepted it.
        if let Some(perm) = pending.get(&StateKind::Permanent) {
            self.state.with(|d| d.write(StateKind::Permanent, perm))?;
        }
        if delete_volatile {
            self.state.with(|d| d.remove(StateKind::Volatile, false))?;
        }
        Ok(())
    }

    fn stop(&mut self, orderly: bool) {
        if !self.tpm.is_running() {
            return;
        }
        if orderly && self.last_command != Some(CC_SHUTDOWN) {
            for kind in [1u16, 0] {
                let ok = self
                    .tpm
                    .process(&shutdown_command(kind))
                    .ok()
                    .and_then(|r| response_code(&r))
                    == Some(0);
                if ok {
                    break;
                }
            }
        }
        self.tpm.terminate();
    }

    fn is_running(&self) -> bool {
        self.tpm.is_running()
    }

    fn execute(&mut self, locality: u8, command: &[u8]) -> Result<Vec<u8>, EngineError> {
        if !self.tpm.is_running() {
            return Err(EngineError::new(TPM_BAD_ORDINAL, "the TPM is not running"));
        }
        self.tpm.set_locality(locality);
        let resp = self.tpm.process(command)?;
        self.last_command = command_code(command);
        if let Some(e) = self.tpm.take_store_error() {
            return Err(EngineError::new(
                TPM_IOERROR,
                format!("the TPM state could not be saved: {e}"),
            ));
        }
        Ok(resp)
    }

    fn established(&mut self) -> Result<bool, EngineError> {
        Ok(self.tpm.established()?)
    }

    fn reset_established(&mut self, locality: u8) -> Result<(), EngineError> {
        let old = self.tpm.locality();
        self.tpm.set_locality(locality);
        let r = self.tpm.reset_established();
        self.tpm.set_locality(old);
        Ok(r?)
    }

    fn hash_start(&mut self) -> Result<(), EngineError> {
        Ok(self.tpm.hash_start()?)
    }

    fn hash_data(&mut self, data: &[u8]) -> Result<(), EngineError> {
        Ok(self.tpm.hash_data(data)?)
    }

    fn hash_end(&mut self) -> Result<(), EngineError> {
        Ok(self.tpm.hash_end()?)
    }

    fn cancel(&mut self) -> Result<(), EngineError> {
        Ok(self.tpm.cancel()?)
    }

    fn store_volatile(&mut self) -> Result<(), EngineError> {
        let v = self.tpm.volatile_state()?;
        self.state.with(|d| d.write(StateKind::Volatile, &v))?;
        Ok(())
    }

    fn state_blob(&mut self, kind: StateKind) -> Result<Vec<u8>, EngineError> {
        if kind == StateKind::Volatile && self.tpm.is_running() {
            return Ok(self.tpm.volatile_state()?);
        }
        Ok(self.tpm.get_state(kind)?)
    }

    fn set_state_blob(&mut self, kind: StateKind, blob: &[u8]) -> Result<(), EngineError> {
        if self.tpm.is_running() {
            return Err(EngineError::new(
                TPM_BAD_ORDINAL,
                "state can only be set while the TPM is stopped",
            ));
        }
        self.tpm.set_state(kind, blob)?;
        self.pending.insert(kind, blob.to_vec());
        Ok(())
    }

    fn set_buffer_size(&mut self, wanted: u32) -> Result<BufferSizes, EngineError> {
        if wanted > 0 && self.tpm.is_running() {
            return Err(EngineError::new(
                TPM_BAD_ORDINAL,
                "the buffer size can only be set while the TPM is stopped",
            ));
        }
        Ok(self.tpm.set_buffer_size(wanted))
    }

    fn info(&mut self, flags: u64) -> Result<String, EngineError> {
        let flags = u32::try_from(flags)
            .map_err(|_| EngineError::new(TPM_BAD_PARAMETER, "unknown information flags"))?;
        Ok(self.tpm.info(flags)?)
    }
}
