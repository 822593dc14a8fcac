//! The raw libtpms interface (`libtpms/tpm_library.h`, `tpm_tis.h`, `tpm_memory.h`)
//! and thin wrappers that own every pointer handed across it. This module and
//! `aes-xts`'s `ffi` are the only ones in opencvm with `unsafe` code; each block says
//! why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uchar};
use std::ptr;

use crate::{StateKind, callbacks};

type TpmResult = u32;
type TpmBool = c_uchar;

/// `TPM_SUCCESS`.
pub(crate) const SUCCESS: TpmResult = 0;
/// `TPM_FAIL`.
pub(crate) const FAIL: TpmResult = 9;
/// `TPM_RETRY`: what a load callback answers when there is no such state yet.
const RETRY: TpmResult = 0x800;
/// `TPMLIB_TPM_VERSION_2`.
const TPM_VERSION_2: c_int = 1;

#[repr(C)]
struct LibtpmsCallbacks {
    size_of_struct: c_int,
    tpm_nvram_init: Option<extern "C" fn() -> TpmResult>,
    tpm_nvram_loaddata:
        Option<extern "C" fn(*mut *mut c_uchar, *mut u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_storedata:
        Option<extern "C" fn(*const c_uchar, u32, u32, *const c_char) -> TpmResult>,
    tpm_nvram_deletename: Option<extern "C" fn(u32, *const c_char, TpmBool) -> TpmResult>,
    tpm_io_init: Option<extern "C" fn() -> TpmResult>,
    tpm_io_getlocality: Option<extern "C" fn(*mut u32, u32) -> TpmResult>,
    tpm_io_getphysicalpresence: Option<extern "C" fn(*mut TpmBool, u32) -> TpmResult>,
}

#[link(name = "tpms")]
unsafe extern "C" {
    fn TPMLIB_GetVersion() -> u32;
    fn TPMLIB_ChooseTPMVersion(ver: c_int) -> TpmResult;
    fn TPMLIB_RegisterCallbacks(callbacks: *mut LibtpmsCallbacks) -> TpmResult;
    fn TPMLIB_MainInit() -> TpmResult;
    fn TPMLIB_Terminate();
    fn TPMLIB_Process(
        respbuffer: *mut *mut c_uchar,
        resp_size: *mut u32,
        respbufsize: *mut u32,
        command: *mut c_uchar,
        command_size: u32,
    ) -> TpmResult;
    fn TPMLIB_VolatileAll_Store(buffer: *mut *mut c_uchar, buflen: *mut u32) -> TpmResult;
    fn TPMLIB_CancelCommand() -> TpmResult;
    fn TPMLIB_GetInfo(flags: c_int) -> *mut c_char;
    fn TPMLIB_SetBufferSize(wanted: u32, min_size: *mut u32, max_size: *mut u32) -> u32;
    fn TPMLIB_SetState(st: c_int, buffer: *const c_uchar, buflen: u32) -> TpmResult;
    fn TPMLIB_GetState(st: c_int, buffer: *mut *mut c_uchar, buflen: *mut u32) -> TpmResult;
    fn TPM_IO_Hash_Start() -> TpmResult;
    fn TPM_IO_Hash_Data(data: *const c_uchar, data_length: u32) -> TpmResult;
    fn TPM_IO_Hash_End() -> TpmResult;
    fn TPM_IO_TpmEstablished_Get(established: *mut TpmBool) -> TpmResult;
    fn TPM_IO_TpmEstablished_Reset() -> TpmResult;
    fn TPM_Malloc(buffer: *mut *mut c_uchar, size: u32) -> TpmResult;
    fn TPM_Free(buffer: *mut c_uchar);
}

/// libtpms's version as `0x00MMmmpp`.
pub(crate) fn version() -> u32 {
    // SAFETY: takes no arguments and only reads constants.
    unsafe { TPMLIB_GetVersion() }
}

/// Selects TPM 2.0 and registers the callbacks of [`callbacks`]; called once per
/// process, before the first `MainInit`, while the caller holds the process claim.
pub(crate) fn setup() -> TpmResult {
    // SAFETY: plain integer argument; libtpms records the choice in its globals, which
    // no other thread touches because the caller holds the process-wide claim.
    let rc = unsafe { TPMLIB_ChooseTPMVersion(TPM_VERSION_2) };
    if rc != SUCCESS {
        return rc;
    }
    let mut cbs = LibtpmsCallbacks {
        size_of_struct: std::mem::size_of::<LibtpmsCallbacks>() as c_int,
        tpm_nvram_init: Some(cb_nvram_init),
        tpm_nvram_loaddata: Some(cb_nvram_loaddata),
        tpm_nvram_storedata: Some(cb_nvram_storedata),
        tpm_nvram_deletename: Some(cb_nvram_deletename),
        tpm_io_init: Some(cb_io_init),
        tpm_io_getlocality: Some(cb_io_getlocality),
        tpm_io_getphysicalpresence: Some(cb_io_getphysicalpresence),
    };
    // SAFETY: `cbs` is a valid, fully initialised struct with the C layout libtpms
    // expects (sizeOfStruct tells it which fields exist); libtpms copies the function
    // pointers out of it before returning, so the stack lifetime is enough. The
    // functions are `extern "C"` with the declared signatures and never unwind.
    unsafe { TPMLIB_RegisterCallbacks(&mut cbs) }
}

/// `TPMLIB_MainInit`: loads the state through the callbacks (or manufactures a TPM).
pub(crate) fn main_init() -> TpmResult {
    // SAFETY: no arguments; the callbacks it calls are sound on their own.
    unsafe { TPMLIB_MainInit() }
}

/// `TPMLIB_Terminate`: frees libtpms's in-memory TPM.
pub(crate) fn terminate() {
    // SAFETY: no arguments; safe to call whether or not the TPM was initialised.
    unsafe { TPMLIB_Terminate() }
}

/// Takes ownership of a buffer libtpms allocated, copies it out and frees it.
fn take_buffer(buf: *mut c_uchar, len: u32) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: libtpms returned `buf` with at least `len` initialised bytes (its API
    // contract for every function passing a buffer out); we copy before freeing.
    let out = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
    // SAFETY: `buf` came from libtpms's allocator and is freed exactly once here.
    unsafe { TPM_Free(buf) };
    out
}

/// A response buffer libtpms allocated, reused across commands (libtpms grows it with
/// its own allocator when a response needs more room), freed on drop.
pub(crate) struct ResponseBuffer {
    ptr: *mut c_uchar,
    cap: u32,
    /// A private copy of the command: libtpms's signature wants it mutable.
    command: Vec<u8>,
}

// SAFETY: the buffer is owned by exactly one `ResponseBuffer` (never aliased, never
// shared); moving it to another thread moves that ownership with it. libtpms only
// touches it inside `process`, called with `&mut self`.
unsafe impl Send for ResponseBuffer {}

impl ResponseBuffer {
    pub(crate) fn new() -> Self {
        Self {
            ptr: ptr::null_mut(),
            cap: 0,
            command: Vec::with_capacity(4096),
        }
    }

    /// `TPMLIB_Process`: executes one TPM command and returns its response.
    pub(crate) fn process(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmResult> {
        let len = u32::try_from(command.len()).map_err(|_| FAIL)?;
        self.command.clear();
        self.command.extend_from_slice(command);
        let mut resp_size = 0u32;
        // SAFETY: `self.command` is a live buffer of `len` bytes; `self.ptr`/`self.cap`
        // are null/0 or a buffer of `cap` bytes that libtpms allocated in an earlier
        // call (it reallocates it with its allocator when too small and updates both);
        // the out-pointers are valid for the call.
        let rc = unsafe {
            TPMLIB_Process(
                &mut self.ptr,
                &mut resp_size,
                &mut self.cap,
                self.command.as_mut_ptr(),
                len,
            )
        };
        if rc != SUCCESS {
            return Err(rc);
        }
        if self.ptr.is_null() {
            return Ok(Vec::new());
        }
        let n = resp_size.min(self.cap) as usize;
        // SAFETY: libtpms wrote `resp_size` bytes of response into the buffer of `cap`
        // bytes at `self.ptr`; we copy at most `cap` of them while no one else holds it.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, n) }.to_vec())
    }
}

impl Drop for ResponseBuffer {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the buffer came from libtpms's allocator and is freed once.
            unsafe { TPM_Free(self.ptr) };
        }
    }
}

/// `TPMLIB_VolatileAll_Store`: the volatile state of the running TPM.
pub(crate) fn volatile_all_store() -> Result<Vec<u8>, TpmResult> {
    let mut buf: *mut c_uchar = ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: valid out-pointers; libtpms allocates the buffer, `take_buffer` frees it.
    let rc = unsafe { TPMLIB_VolatileAll_Store(&mut buf, &mut len) };
    let out = take_buffer(buf, len);
    if rc != SUCCESS {
        return Err(rc);
    }
    Ok(out)
}

fn state_type(kind: StateKind) -> c_int {
    match kind {
        StateKind::Permanent => 1,
        StateKind::Volatile => 2,
        StateKind::SaveState => 4,
    }
}

/// `TPMLIB_GetState`.
pub(crate) fn get_state(kind: StateKind) -> Result<Vec<u8>, TpmResult> {
    let mut buf: *mut c_uchar = ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: valid out-pointers; libtpms allocates the buffer, `take_buffer` frees it.
    let rc = unsafe { TPMLIB_GetState(state_type(kind), &mut buf, &mut len) };
    let out = take_buffer(buf, len);
    if rc != SUCCESS {
        return Err(rc);
    }
    Ok(out)
}

/// `TPMLIB_SetState`: a state blob to use at the next `MainInit`.
pub(crate) fn set_state(kind: StateKind, blob: &[u8]) -> TpmResult {
    let Ok(len) = u32::try_from(blob.len()) else {
        return FAIL;
    };
    // SAFETY: `blob` is a live buffer of `len` bytes that libtpms only reads (it copies
    // what it keeps).
    unsafe { TPMLIB_SetState(state_type(kind), blob.as_ptr(), len) }
}

/// `TPMLIB_CancelCommand`.
pub(crate) fn cancel() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPMLIB_CancelCommand() }
}

/// `TPMLIB_GetInfo`: a JSON document.
pub(crate) fn get_info(flags: u32) -> Option<String> {
    // SAFETY: integer argument; libtpms returns a malloc'ed NUL-terminated string or NULL.
    let p = unsafe { TPMLIB_GetInfo(flags as c_int) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a valid NUL-terminated string (checked non-null above) that stays
    // alive until it is freed below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: libtpms allocated `p` with malloc; TPM_Free is its free wrapper.
    unsafe { TPM_Free(p.cast()) };
    Some(s)
}

/// `TPMLIB_SetBufferSize`: returns (size in use, minimum, maximum).
pub(crate) fn set_buffer_size(wanted: u32) -> (u32, u32, u32) {
    let (mut min, mut max) = (0u32, 0u32);
    // SAFETY: valid out-pointers to locals.
    let size = unsafe { TPMLIB_SetBufferSize(wanted, &mut min, &mut max) };
    (size, min, max)
}

/// `TPM_IO_Hash_Start`.
pub(crate) fn hash_start() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_Hash_Start() }
}

/// `TPM_IO_Hash_Data`.
pub(crate) fn hash_data(data: &[u8]) -> TpmResult {
    let Ok(len) = u32::try_from(data.len()) else {
        return FAIL;
    };
    // SAFETY: `data` is a live buffer of `len` bytes that libtpms only reads.
    unsafe { TPM_IO_Hash_Data(data.as_ptr(), len) }
}

/// `TPM_IO_Hash_End`.
pub(crate) fn hash_end() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_Hash_End() }
}

/// `TPM_IO_TpmEstablished_Get`.
pub(crate) fn established_get() -> Result<bool, TpmResult> {
    let mut bit: TpmBool = 0;
    // SAFETY: valid out-pointer to a local.
    let rc = unsafe { TPM_IO_TpmEstablished_Get(&mut bit) };
    if rc != SUCCESS {
        return Err(rc);
    }
    Ok(bit != 0)
}

/// `TPM_IO_TpmEstablished_Reset` (uses the locality the callback reports).
pub(crate) fn established_reset() -> TpmResult {
    // SAFETY: no arguments.
    unsafe { TPM_IO_TpmEstablished_Reset() }
}

// ---- callbacks: libtpms calls these (on the thread that called into it) ----

fn kind_of(name: *const c_char) -> Option<StateKind> {
    if name.is_null() {
        return None;
    }
    // SAFETY: libtpms passes a valid NUL-terminated constant name ("permall", ...).
    let name = unsafe { CStr::from_ptr(name) };
    StateKind::from_name(name.to_str().ok()?)
}

/// Runs a callback body, turning a panic into `TPM_FAIL` (unwinding into C is UB).
fn guarded(f: impl FnOnce() -> TpmResult) -> TpmResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(FAIL)
}

extern "C" fn cb_nvram_init() -> TpmResult {
    SUCCESS
}

extern "C" fn cb_io_init() -> TpmResult {
    SUCCESS
}

extern "C" fn cb_nvram_loaddata(
    data: *mut *mut c_uchar,
    length: *mut u32,
    _tpm_number: u32,
    name: *const c_char,
) -> TpmResult {
    guarded(|| {
        if data.is_null() || length.is_null() {
            return FAIL;
        }
        let Some(kind) = kind_of(name) else {
            return FAIL;
        };
        match callbacks::load(kind) {
            Err(()) => FAIL,
            Ok(None) => RETRY,
            Ok(Some(blob)) if blob.is_empty() => RETRY,
            Ok(Some(blob)) => {
                let Ok(len) = u32::try_from(blob.len()) else {
                    return FAIL;
                };
                let mut buf: *mut c_uchar = ptr::null_mut();
                // SAFETY: valid out-pointer; libtpms frees this buffer with TPM_Free.
                let rc = unsafe { TPM_Malloc(&mut buf, len) };
                if rc != SUCCESS || buf.is_null() {
                    return FAIL;
                }
                // SAFETY: `buf` has room for `len` bytes (just allocated) and does not
                // overlap `blob`; `data`/`length` were checked non-null and point to
                // libtpms's out-parameters.
                unsafe {
                    ptr::copy_nonoverlapping(blob.as_ptr(), buf, blob.len());
                    *data = buf;
                    *length = len;
                }
                SUCCESS
            }
        }
    })
}

extern "C" fn cb_nvram_storedata(
    data: *const c_uchar,
    length: u32,
    _tpm_number: u32,
    name: *const c_char,
) -> TpmResult {
    guarded(|| {
        let Some(kind) = kind_of(name) else {
            return FAIL;
        };
        let blob: &[u8] = if data.is_null() || length == 0 {
            &[]
        } else {
            // SAFETY: libtpms passes `length` readable bytes at `data` for the duration
            // of the call; we copy what we keep.
            unsafe { std::slice::from_raw_parts(data, length as usize) }
        };
        match callbacks::store(kind, blob) {
            Ok(()) => SUCCESS,
            Err(()) => FAIL,
        }
    })
}

extern "C" fn cb_nvram_deletename(
    _tpm_number: u32,
    name: *const c_char,
    must_exist: TpmBool,
) -> TpmResult {
    guarded(|| {
        let Some(kind) = kind_of(name) else {
            return FAIL;
        };
        match callbacks::delete(kind, must_exist != 0) {
            Ok(()) => SUCCESS,
            Err(()) => FAIL,
        }
    })
}

extern "C" fn cb_io_getlocality(locality: *mut u32, _tpm_number: u32) -> TpmResult {
    if locality.is_null() {
        return FAIL;
    }
    // SAFETY: checked non-null; libtpms passes a pointer to its out-parameter.
    unsafe { *locality = u32::from(callbacks::locality()) };
    SUCCESS
}

extern "C" fn cb_io_getphysicalpresence(pp: *mut TpmBool, _tpm_number: u32) -> TpmResult {
    if pp.is_null() {
        return FAIL;
    }
    // SAFETY: checked non-null; libtpms passes a pointer to its out-parameter.
    unsafe { *pp = 0 };
    SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn callback_struct_has_the_c_layout() {
        // sizeOfStruct (int, padded to 8) + 7 function pointers on LP64.
        assert_eq!(std::mem::size_of::<super::LibtpmsCallbacks>(), 8 + 7 * 8);
    }
}
