//! The swtpm control-channel protocol (`CMD_*` of swtpm's `tpm_ioctl.h`), as QEMU's
//! `-tpmdev emulator`, `swtpm_ioctl` and tpm2-tss's `swtpm` TCTI speak it: a 32-bit
//! big-endian command code followed by its request structure; every response starts
//! with a 32-bit `TPM_RESULT`, except `CMD_GET_CAPABILITY`'s which is the result and
//! the capability bits.

use libtpms::StateKind;

use crate::Vtpm;
use crate::engine::{TPM_BAD_LOCALITY, TPM_BAD_ORDINAL, TPM_BAD_PARAMETER, TPM_FAIL};

/// Control command codes.
pub mod cmd {
    /// `CMD_GET_CAPABILITY`.
    pub const GET_CAPABILITY: u32 = 1;
    /// `CMD_INIT`.
    pub const INIT: u32 = 2;
    /// `CMD_SHUTDOWN`: stop the TPM and end the process.
    pub const SHUTDOWN: u32 = 3;
    /// `CMD_GET_TPMESTABLISHED`.
    pub const GET_TPMESTABLISHED: u32 = 4;
    /// `CMD_SET_LOCALITY`.
    pub const SET_LOCALITY: u32 = 5;
    /// `CMD_HASH_START`.
    pub const HASH_START: u32 = 6;
    /// `CMD_HASH_DATA`.
    pub const HASH_DATA: u32 = 7;
    /// `CMD_HASH_END`.
    pub const HASH_END: u32 = 8;
    /// `CMD_CANCEL_TPM_CMD`.
    pub const CANCEL_TPM_CMD: u32 = 9;
    /// `CMD_STORE_VOLATILE`.
    pub const STORE_VOLATILE: u32 = 10;
    /// `CMD_RESET_TPMESTABLISHED`.
    pub const RESET_TPMESTABLISHED: u32 = 11;
    /// `CMD_GET_STATEBLOB`.
    pub const GET_STATEBLOB: u32 = 12;
    /// `CMD_SET_STATEBLOB`.
    pub const SET_STATEBLOB: u32 = 13;
    /// `CMD_STOP`.
    pub const STOP: u32 = 14;
    /// `CMD_GET_CONFIG`.
    pub const GET_CONFIG: u32 = 15;
    /// `CMD_SET_DATAFD`: the data channel is a socket passed with `SCM_RIGHTS`.
    pub const SET_DATAFD: u32 = 16;
    /// `CMD_SET_BUFFERSIZE`.
    pub const SET_BUFFERSIZE: u32 = 17;
    /// `CMD_GET_INFO`.
    pub const GET_INFO: u32 = 18;
    /// `CMD_LOCK_STORAGE`.
    pub const LOCK_STORAGE: u32 = 19;
}

/// Capability bits (`PTM_CAP_*`) this vTPM advertises: every command above. QEMU
/// requires INIT, SHUTDOWN, GET_TPMESTABLISHED, SET_LOCALITY, RESET_TPMESTABLISHED,
/// SET_DATAFD, STOP and SET_BUFFERSIZE for a TPM 2.0.
pub const CAPABILITIES: u32 = 1 // INIT
    | 1 << 1 // SHUTDOWN
    | 1 << 2 // GET_TPMESTABLISHED
    | 1 << 3 // SET_LOCALITY
    | 1 << 4 // HASHING
    | 1 << 5 // CANCEL_TPM_CMD
    | 1 << 6 // STORE_VOLATILE
    | 1 << 7 // RESET_TPMESTABLISHED
    | 1 << 8 // GET_STATEBLOB
    | 1 << 9 // SET_STATEBLOB
    | 1 << 10 // STOP
    | 1 << 11 // GET_CONFIG
    | 1 << 12 // SET_DATAFD
    | 1 << 13 // SET_BUFFERSIZE
    | 1 << 14 // GET_INFO
    | 1 << 15 // SEND_COMMAND_HEADER
    | 1 << 16; // LOCK_STORAGE

/// `PTM_INIT_FLAG_DELETE_VOLATILE`.
pub const INIT_FLAG_DELETE_VOLATILE: u32 = 1;
/// `PTM_STATE_FLAG_ENCRYPTED`: set on every blob handed out (sealed under the
/// migration key, see [`crate::blob`]).
pub const STATE_FLAG_ENCRYPTED: u32 = 2;
/// Largest state blob accepted by `CMD_SET_STATEBLOB` (swtpm's limit).
pub const MAX_STATE_BLOB: u32 = 512 * 1024;
/// Largest `CMD_HASH_DATA` payload accepted in one request.
pub const MAX_HASH_DATA: u32 = 1 << 20;

/// A parsed control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CMD_GET_CAPABILITY`.
    GetCapability,
    /// `CMD_INIT` with its flags.
    Init(u32),
    /// `CMD_SHUTDOWN`.
    Shutdown,
    /// `CMD_GET_TPMESTABLISHED`.
    GetTpmEstablished,
    /// `CMD_SET_LOCALITY`.
    SetLocality(u8),
    /// `CMD_HASH_START`.
    HashStart,
    /// `CMD_HASH_DATA` with the data.
    HashData(Vec<u8>),
    /// `CMD_HASH_END`.
    HashEnd,
    /// `CMD_CANCEL_TPM_CMD`.
    Cancel,
    /// `CMD_STORE_VOLATILE`.
    StoreVolatile,
    /// `CMD_RESET_TPMESTABLISHED` acting at a locality.
    ResetTpmEstablished(u8),
    /// `CMD_GET_STATEBLOB`.
    GetStateBlob {
        /// `state_flags`.
        flags: u32,
        /// The blob type (1 permanent, 2 volatile, 3 savestate).
        kind: u32,
        /// Offset to read from.
        offset: u32,
    },
    /// `CMD_SET_STATEBLOB`.
    SetStateBlob {
        /// `state_flags`.
        flags: u32,
        /// The blob type.
        kind: u32,
        /// The blob.
        data: Vec<u8>,
    },
    /// `CMD_STOP`.
    Stop,
    /// `CMD_GET_CONFIG`.
    GetConfig,
    /// `CMD_SET_DATAFD` (the descriptor travels beside the message).
    SetDataFd,
    /// `CMD_SET_BUFFERSIZE` (0 queries).
    SetBufferSize(u32),
    /// `CMD_GET_INFO`.
    GetInfo {
        /// `SWTPM_INFO_*` bits.
        flags: u64,
        /// Offset into the document.
        offset: u32,
    },
    /// `CMD_LOCK_STORAGE`.
    LockStorage(u32),
    /// A command code this vTPM does not know.
    Unknown(u32),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// How many bytes the request that `buf` starts needs in total, as far as `buf`
/// already tells (the receiver reads until it has that many; extra bytes that came in
/// the same read are part of the message and ignored, as swtpm does).
pub fn needed(buf: &[u8]) -> usize {
    let Some(code) = be32(buf, 0) else {
        return 4;
    };
    let body = &buf[4..];
    4 + match code {
        cmd::INIT => 4,
        cmd::SET_LOCALITY | cmd::RESET_TPMESTABLISHED => 1,
        cmd::GET_STATEBLOB => 12,
        cmd::SET_BUFFERSIZE | cmd::LOCK_STORAGE => 4,
        cmd::GET_INFO => 16,
        cmd::HASH_DATA => match be32(body, 0) {
            Some(len) if len <= MAX_HASH_DATA => 4 + len as usize,
            Some(_) => 4, // refused by `parse`
            None => 4,
        },
        cmd::SET_STATEBLOB => match be32(body, 8) {
            Some(len) if len <= MAX_STATE_BLOB => 12 + len as usize,
            Some(_) => 12,
            None => 12,
        },
        _ => 0,
    }
}

/// Whether `buf` declares a payload over the limits (`CMD_HASH_DATA`,
/// `CMD_SET_STATEBLOB`): its bytes are not read, so the connection must end after the
/// answer rather than read them as further messages.
pub fn oversize(buf: &[u8]) -> bool {
    let body = buf.get(4..).unwrap_or_default();
    match be32(buf, 0) {
        Some(cmd::HASH_DATA) => be32(body, 0).is_some_and(|l| l > MAX_HASH_DATA),
        Some(cmd::SET_STATEBLOB) => be32(body, 8).is_some_and(|l| l > MAX_STATE_BLOB),
        _ => false,
    }
}

/// Parses one complete control message; `Err` carries the `TPM_RESULT` to answer.
pub fn parse(buf: &[u8]) -> Result<Request, u32> {
    let code = be32(buf, 0).ok_or(TPM_BAD_PARAMETER)?;
    let body = &buf[4..];
    let no_input = |r: Request| {
        if body.is_empty() {
            Ok(r)
        } else {
            Err(TPM_BAD_PARAMETER)
        }
    };
    match code {
        cmd::GET_CAPABILITY => Ok(Request::GetCapability),
        cmd::INIT if body.len() == 4 => Ok(Request::Init(be32(body, 0).unwrap_or(0))),
        cmd::INIT => Err(TPM_BAD_PARAMETER),
        cmd::SHUTDOWN => no_input(Request::Shutdown),
        cmd::GET_TPMESTABLISHED => no_input(Request::GetTpmEstablished),
        cmd::SET_LOCALITY => body
            .first()
            .map(|&l| Request::SetLocality(l))
            .ok_or(TPM_BAD_PARAMETER),
        cmd::HASH_START => no_input(Request::HashStart),
        cmd::HASH_DATA => {
            let len = be32(body, 0).ok_or(TPM_BAD_PARAMETER)?;
            let data = body.get(4..).ok_or(TPM_BAD_PARAMETER)?;
            if len > MAX_HASH_DATA || data.len() != len as usize {
                return Err(TPM_BAD_PARAMETER);
            }
            Ok(Request::HashData(data.to_vec()))
        }
        cmd::HASH_END => no_input(Request::HashEnd),
        cmd::CANCEL_TPM_CMD => no_input(Request::Cancel),
        cmd::STORE_VOLATILE => no_input(Request::StoreVolatile),
        cmd::RESET_TPMESTABLISHED => body
            .first()
            .map(|&l| Request::ResetTpmEstablished(l))
            .ok_or(TPM_BAD_PARAMETER),
        cmd::GET_STATEBLOB => Ok(Request::GetStateBlob {
            flags: be32(body, 0).ok_or(TPM_BAD_PARAMETER)?,
            kind: be32(body, 4).ok_or(TPM_BAD_PARAMETER)?,
            offset: be32(body, 8).ok_or(TPM_BAD_PARAMETER)?,
        }),
        cmd::SET_STATEBLOB => {
            let flags = be32(body, 0).ok_or(TPM_BAD_PARAMETER)?;
            let kind = be32(body, 4).ok_or(TPM_BAD_PARAMETER)?;
            let len = be32(body, 8).ok_or(TPM_BAD_PARAMETER)?;
            if len > MAX_STATE_BLOB {
                return Err(TPM_FAIL);
            }
            let data = body.get(12..).ok_or(TPM_BAD_PARAMETER)?;
            if data.len() < len as usize {
                return Err(TPM_BAD_PARAMETER);
            }
            Ok(Request::SetStateBlob {
                flags,
                kind,
                data: data[..len as usize].to_vec(),
            })
        }
        cmd::STOP => no_input(Request::Stop),
        cmd::GET_CONFIG => no_input(Request::GetConfig),
        cmd::SET_DATAFD => Ok(Request::SetDataFd),
        cmd::SET_BUFFERSIZE => Ok(Request::SetBufferSize(
            be32(body, 0).ok_or(TPM_BAD_PARAMETER)?,
        )),
        cmd::GET_INFO => {
            let hi = be32(body, 0).ok_or(TPM_BAD_PARAMETER)?;
            let lo = be32(body, 4).ok_or(TPM_BAD_PARAMETER)?;
            Ok(Request::GetInfo {
                flags: u64::from(hi) << 32 | u64::from(lo),
                offset: be32(body, 8).ok_or(TPM_BAD_PARAMETER)?,
            })
        }
        cmd::LOCK_STORAGE => Ok(Request::LockStorage(
            be32(body, 0).ok_or(TPM_BAD_PARAMETER)?,
        )),
        other => Ok(Request::Unknown(other)),
    }
}

/// What the connection does after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Nothing special.
    Continue,
    /// Use the descriptor that came with the message as the data channel.
    UseDataFd,
    /// The vTPM process ends (`CMD_SHUTDOWN`).
    Terminate,
}

fn kind_of(blob_type: u32) -> Option<StateKind> {
    match blob_type {
        1 => Some(StateKind::Permanent),
        2 => Some(StateKind::Volatile),
        3 => Some(StateKind::SaveState),
        _ => None,
    }
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Executes a control request on `vtpm`. `fd_passed` says whether a descriptor came
/// with the message (for `CMD_SET_DATAFD`).
pub fn handle(vtpm: &mut Vtpm, req: Request, fd_passed: bool) -> (Vec<u8>, After) {
    let running = vtpm.engine.is_running();
    let res = |r: Result<(), crate::engine::EngineError>| words(&[r.err().map_or(0, |e| e.code)]);
    let not_running = words(&[TPM_BAD_ORDINAL]);
    let reply = match req {
        Request::GetCapability => words(&[0, CAPABILITIES]),
        Request::Init(flags) => {
            let r = vtpm.start_engine(flags & INIT_FLAG_DELETE_VOLATILE != 0);
            if let Err(e) = &r {
                vtpm.log(&format!("CMD_INIT failed: {e}"));
            }
            res(r)
        }
        Request::Stop => {
            vtpm.engine.stop(true);
            words(&[0])
        }
        Request::Shutdown => {
            // An orderly end: the volatile state is kept for the next start to resume
            // (once), then the TPM gets its TPM2_Shutdown.
            if running && let Err(e) = vtpm.engine.store_volatile() {
                vtpm.log(&format!("saving the volatile state failed: {e}"));
            }
            vtpm.engine.stop(true);
            return (words(&[0]), After::Terminate);
        }
        Request::GetTpmEstablished if running => match vtpm.engine.established() {
            Ok(bit) => {
                let mut v = words(&[0]);
                v.extend_from_slice(&[u8::from(bit), 0, 0, 0]);
                v
            }
            Err(e) => {
                let mut v = words(&[e.code]);
                v.extend_from_slice(&[0; 4]);
                v
            }
        },
        Request::ResetTpmEstablished(loc) if running => {
            if loc > 4 {
                words(&[TPM_BAD_LOCALITY])
            } else {
                res(vtpm.engine.reset_established(loc))
            }
        }
        Request::SetLocality(loc) => {
            if loc > 4 || (loc == 4 && vtpm.refuse_locality_4) {
                words(&[TPM_BAD_LOCALITY])
            } else {
                vtpm.locality = loc;
                words(&[0])
            }
        }
        Request::HashStart if running => res(vtpm.engine.hash_start()),
        Request::HashData(data) if running => res(vtpm.engine.hash_data(&data)),
        Request::HashEnd if running => res(vtpm.engine.hash_end()),
        Request::Cancel if running => res(vtpm.engine.cancel()),
        Request::StoreVolatile if running => res(vtpm.engine.store_volatile()),
        Request::GetStateBlob { kind, offset, .. } if running => {
            // Sealed under the migration key; without one, state never leaves. A read
            // at an offset continues the blob sealed by the read at offset 0.
            let sealed = match (&vtpm.migration_key, kind_of(kind)) {
                (None, _) => Err(TPM_FAIL),
                (_, None) => Err(TPM_BAD_PARAMETER),
                (Some(_), Some(_)) if offset > 0 => vtpm
                    .sealed_blob
                    .as_ref()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, b)| b.clone())
                    .ok_or(TPM_BAD_PARAMETER),
                (Some(key), Some(k)) => vtpm
                    .engine
                    .state_blob(k)
                    .map_err(|e| e.code)
                    .and_then(|plain| key.seal(k, &plain).map_err(|_| TPM_FAIL)),
            };
            match sealed {
                Ok(blob) => {
                    let rest = blob.get(offset as usize..).unwrap_or_default();
                    let n = rest.len() as u32;
                    let mut v = words(&[0, STATE_FLAG_ENCRYPTED, n, n]);
                    v.extend_from_slice(rest);
                    vtpm.sealed_blob = Some((kind, blob));
                    v
                }
                Err(code) => {
                    if vtpm.migration_key.is_none() {
                        vtpm.log("CMD_GET_STATEBLOB refused: no migration key");
                    }
                    words(&[code, 0, 0, 0])
                }
            }
        }
        Request::SetStateBlob { kind, data, .. } => {
            if running {
                not_running.clone()
            } else {
                match (&vtpm.migration_key, kind_of(kind)) {
                    (None, _) => {
                        vtpm.log("CMD_SET_STATEBLOB refused: no migration key");
                        words(&[TPM_FAIL])
                    }
                    (_, None) => words(&[TPM_FAIL]),
                    (Some(key), Some(k)) => match key.open(k, &data) {
                        Ok(plain) => res(vtpm.engine.set_state_blob(k, &plain)),
                        Err(e) => {
                            vtpm.log(&format!("CMD_SET_STATEBLOB refused: {e}"));
                            words(&[TPM_BAD_PARAMETER])
                        }
                    },
                }
            }
        }
        Request::GetConfig => words(&[0, 0]),
        Request::SetDataFd => {
            if vtpm.data_fd_in_use {
                words(&[crate::engine::TPM_IOERROR])
            } else if !fd_passed {
                words(&[TPM_BAD_PARAMETER])
            } else {
                vtpm.data_fd_in_use = true;
                return (words(&[0]), After::UseDataFd);
            }
        }
        Request::SetBufferSize(size) => match vtpm.engine.set_buffer_size(size) {
            Ok(s) => {
                vtpm.buffer_size = s.current;
                words(&[0, s.current, s.min, s.max])
            }
            Err(e) => words(&[e.code]),
        },
        Request::GetInfo { flags, offset } => match vtpm.engine.info(flags) {
            Ok(info) => {
                let mut doc = info.into_bytes();
                doc.push(0);
                if offset as usize >= doc.len() - 1 {
                    words(&[TPM_BAD_PARAMETER])
                } else {
                    // One chunk of at most 3 KiB, as swtpm's PTM_GETINFO_SIZE.
                    let chunk = &doc[offset as usize..];
                    let chunk = &chunk[..chunk.len().min(3 * 1024)];
                    let mut v = words(&[0, doc.len() as u32, chunk.len() as u32]);
                    v.extend_from_slice(chunk);
                    v
                }
            }
            Err(e) => words(&[e.code]),
        },
        Request::LockStorage(_) => words(&[0]), // the state directory is locked at start
        Request::Unknown(_) => words(&[TPM_BAD_ORDINAL]),
        // Commands that need a running TPM, sent while it is stopped.
        Request::GetTpmEstablished
        | Request::ResetTpmEstablished(_)
        | Request::HashStart
        | Request::HashData(_)
        | Request::HashEnd
        | Request::Cancel
        | Request::StoreVolatile
        | Request::GetStateBlob { .. } => not_running,
    };
    (reply, After::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_and_parse_follow_the_request_layouts() {
        assert_eq!(needed(&[]), 4);
        assert_eq!(needed(&[0, 0, 0, 2]), 8);
        assert_eq!(parse(&[0, 0, 0, 2, 0, 0, 0, 1]), Ok(Request::Init(1)));
        assert_eq!(parse(&[0, 0, 0, 2, 0, 0, 1]), Err(TPM_BAD_PARAMETER));
        assert_eq!(
            parse(&[0, 0, 0, 5, 3, 0, 0, 0]),
            Ok(Request::SetLocality(3))
        );
        assert_eq!(parse(&[0, 0, 0, 14, 1]), Err(TPM_BAD_PARAMETER));
        let mut set = vec![0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3];
        assert_eq!(needed(&set), 4 + 12 + 3);
        set.extend_from_slice(b"abc");
        assert_eq!(
            parse(&set),
            Ok(Request::SetStateBlob {
                flags: 0,
                kind: 1,
                data: b"abc".to_vec()
            })
        );
        // An oversized blob is refused, not allocated.
        let huge = [0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(needed(&huge), 16);
        assert_eq!(parse(&huge), Err(TPM_FAIL));
        assert_eq!(
            parse(&[0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0]),
            Ok(Request::GetInfo {
                flags: 1,
                offset: 5
            })
        );
        assert_eq!(parse(&[0, 0, 0, 99]), Ok(Request::Unknown(99)));
    }
}
