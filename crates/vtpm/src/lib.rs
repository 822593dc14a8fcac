//! A TPM 2.0 for one confidential VM, run outside the VM's reach.
//!
//! - [`engine`]: the [`Engine`] trait and its libtpms implementation (libtpms keeps
//!   one TPM in process globals, so a vTPM process serves exactly one VM);
//! - [`state`]: the TPM's state, saved atomically and durably whenever it changes,
//!   framed with a format version;
//! - [`ctrl`] and [`data`]: swtpm's control and data channels, as QEMU's
//!   `-tpmdev emulator`, `swtpm_ioctl` and tpm2-tss's `swtpm` TCTI speak them;
//! - [`mssim`]: the TPM simulator's command and platform ports (tpm2-tss `mssim`
//!   TCTI, IBM TSS);
//! - [`server`]: loopback TCP and Unix-socket listeners for either protocol.
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod blob;
pub mod ca;
pub mod ctrl;
pub mod data;
pub mod engine;
pub mod mssim;
pub mod platform;
pub mod server;
pub mod sessions;
pub mod state;
pub mod tpm;
pub mod vmgs_state;

pub use engine::{Engine, EngineError, LibtpmsEngine};
pub use libtpms::StateKind;
pub use server::{Endpoint, Protocol, Server, ServerConfig};
pub use state::{StateDir, StateStore};
pub use vmgs_state::VmgsState;

/// `TPM_RC_FAILURE`: the answer to a command while the TPM is not running.
pub const TPM_RC_FAILURE: u32 = 0x101;
/// `TPM_RC_COMMAND_SIZE`: the answer to a command whose size is out of bounds.
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;

/// A bare TPM 2.0 error response (`TPM_ST_NO_SESSIONS`, 10 bytes) with `rc`.
pub fn error_response(rc: u32) -> Vec<u8> {
    let mut r = vec![0x80, 0x01, 0, 0, 0, 10];
    r.extend_from_slice(&rc.to_be_bytes());
    r
}

/// Locks the shared [`Vtpm`]; a panic elsewhere does not make the TPM unusable (its
/// state is libtpms's, consistent after every command).
pub(crate) fn lock(v: &std::sync::Mutex<Vtpm>) -> std::sync::MutexGuard<'_, Vtpm> {
    v.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One VM's TPM as the protocols share it: the engine, the locality commands run at,
/// whether a data channel was passed over the control channel, the buffer size.
pub struct Vtpm {
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) locality: u8,
    pub(crate) data_fd_in_use: bool,
    pub(crate) buffer_size: u32,
    pub(crate) platform: Option<platform::Platform>,
    pub(crate) refuse_locality_4: bool,
    pub(crate) migration_key: Option<blob::MigrationKey>,
    /// The blob sealed by the last `CMD_GET_STATEBLOB` at offset 0 (blob type, bytes),
    /// which reads at further offsets continue.
    pub(crate) sealed_blob: Option<(u32, Vec<u8>)>,
}

impl std::fmt::Debug for Vtpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtpm")
            .field("running", &self.engine.is_running())
            .field("locality", &self.locality)
            .finish_non_exhaustive()
    }
}

impl Vtpm {
    /// Wraps an engine (started or not).
    pub fn new(mut engine: Box<dyn Engine>) -> Self {
        let buffer_size = engine.set_buffer_size(0).map_or(4096, |s| s.current);
        Self {
            engine,
            locality: 0,
            data_fd_in_use: false,
            buffer_size,
            platform: None,
            refuse_locality_4: false,
            migration_key: None,
            sealed_blob: None,
        }
    }

    /// Wraps an engine with the host side of a confidential VM's vTPM: `platform`
    /// provisions the engine now (EK, AK, certificate, report; the engine is left
    /// waiting for the guest's `TPM2_Startup`) and then serves the report index and
    /// locks the platform hierarchy at every startup.
    pub fn with_platform(
        mut engine: Box<dyn Engine>,
        mut platform: platform::Platform,
    ) -> Result<Self, EngineError> {
        if !engine.is_running() {
            engine.start(false)?;
        }
        platform.provision(engine.as_mut())?;
        let mut v = Self::new(engine);
        v.platform = Some(platform);
        Ok(v)
    }

    /// Lets state blobs cross the control channel, sealed under `key` (without a key
    /// `CMD_GET_STATEBLOB` and `CMD_SET_STATEBLOB` are refused).
    pub fn set_migration_key(&mut self, key: blob::MigrationKey) {
        self.migration_key = Some(key);
    }

    /// The platform side, if any.
    pub fn platform(&self) -> Option<&platform::Platform> {
        self.platform.as_ref()
    }

    /// The engine.
    pub fn engine(&mut self) -> &mut dyn Engine {
        self.engine.as_mut()
    }

    /// The locality set over the control channel.
    pub fn locality(&self) -> u8 {
        self.locality
    }

    /// The largest command accepted (the engine's buffer size).
    pub fn max_command(&self) -> usize {
        self.buffer_size.max(4096) as usize
    }

    /// Executes `command` at `locality` (the control channel's when `None`) and
    /// returns the response; a stopped TPM or an engine failure answers
    /// `TPM_RC_FAILURE`.
    pub fn execute(&mut self, locality: Option<u8>, command: &[u8]) -> Vec<u8> {
        if !self.engine.is_running() {
            return error_response(TPM_RC_FAILURE);
        }
        let loc = locality.unwrap_or(self.locality);
        if let Some(p) = self.platform.as_mut()
            && let Some(r) = p.before(self.engine.as_mut(), loc, command)
        {
            return r;
        }
        match self.engine.execute(loc, command) {
            Ok(r) => {
                if let Some(p) = self.platform.as_mut() {
                    p.after(self.engine.as_mut(), command, &r);
                }
                r
            }
            Err(e) => {
                self.log(&format!("command failed: {e}"));
                error_response(TPM_RC_FAILURE)
            }
        }
    }

    /// Starts (or restarts) the engine (`CMD_INIT`, a simulator power-on or reset):
    /// the TPM's loaded sessions die with it, so the platform forgets the sessions it
    /// tracked, whether or not the start succeeds.
    pub(crate) fn start_engine(&mut self, delete_volatile: bool) -> Result<(), EngineError> {
        if let Some(p) = self.platform.as_mut() {
            p.tpm_initialised();
        }
        self.engine.start(delete_volatile)
    }

    pub(crate) fn log(&self, msg: &str) {
        tracing::warn!("{msg}");
    }
}

/// The libtpms version in use, as `(major, minor, patch)`.
pub fn libtpms_version() -> (u32, u32, u32) {
    let v = libtpms::Libtpms::version();
    (v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// Runs every parser of untrusted vTPM input on `data` (for fuzzing): control
/// messages, data-channel frames, state files. Never panics.
pub fn fuzz_parse(data: &[u8]) {
    let _ = ctrl::needed(data);
    let _ = ctrl::parse(data);
    let _ = sessions::split_command(data);
    let mut buf = vec![0u8; 4097];
    let t = data::Timeouts {
        idle: None,
        within: std::time::Duration::from_secs(1),
    };
    let _ = data::read_command(&mut { data }, &mut buf, 4096, t);
    for kind in libtpms::StateKind::ALL {
        let _ = state::decode(&state::StateKey::new([0; 32]), kind, data);
    }
}
