//! The TPM 2.0 simulator protocol ("mssim", the reference simulator's
//! `TpmTcpProtocol.h`), as tpm2-tss's `mssim` TCTI and the IBM TSS speak it: a command
//! port carrying `TPM_SEND_COMMAND` (locality, size, command → size, response, 0) and
//! a platform port for power, NV and session signals, each answered with a 32-bit 0.

use std::io::{self, Read, Write};

use crate::Vtpm;

/// Simulator command codes.
pub mod code {
    /// `TPM_SIGNAL_POWER_ON`.
    pub const POWER_ON: u32 = 1;
    /// `TPM_SIGNAL_POWER_OFF`.
    pub const POWER_OFF: u32 = 2;
    /// `TPM_SIGNAL_PHYS_PRES_ON`.
    pub const PHYS_PRES_ON: u32 = 3;
    /// `TPM_SIGNAL_PHYS_PRES_OFF`.
    pub const PHYS_PRES_OFF: u32 = 4;
    /// `TPM_SIGNAL_HASH_START`.
    pub const HASH_START: u32 = 5;
    /// `TPM_SIGNAL_HASH_DATA`.
    pub const HASH_DATA: u32 = 6;
    /// `TPM_SIGNAL_HASH_END`.
    pub const HASH_END: u32 = 7;
    /// `TPM_SEND_COMMAND`.
    pub const SEND_COMMAND: u32 = 8;
    /// `TPM_SIGNAL_CANCEL_ON`.
    pub const CANCEL_ON: u32 = 9;
    /// `TPM_SIGNAL_CANCEL_OFF`.
    pub const CANCEL_OFF: u32 = 10;
    /// `TPM_SIGNAL_NV_ON`.
    pub const NV_ON: u32 = 11;
    /// `TPM_SIGNAL_NV_OFF`.
    pub const NV_OFF: u32 = 12;
    /// `TPM_SIGNAL_KEY_CACHE_ON`.
    pub const KEY_CACHE_ON: u32 = 13;
    /// `TPM_SIGNAL_KEY_CACHE_OFF`.
    pub const KEY_CACHE_OFF: u32 = 14;
    /// `TPM_REMOTE_HANDSHAKE`.
    pub const REMOTE_HANDSHAKE: u32 = 15;
    /// `TPM_SET_ALTERNATIVE_RESULT`.
    pub const SET_ALTERNATIVE_RESULT: u32 = 16;
    /// `TPM_SIGNAL_RESET`.
    pub const RESET: u32 = 17;
    /// `TPM_SIGNAL_RESTART`.
    pub const RESTART: u32 = 18;
    /// `TPM_SESSION_END`.
    pub const SESSION_END: u32 = 20;
    /// `TPM_STOP`.
    pub const STOP: u32 = 21;
    /// `TPM_GET_COMMAND_RESPONSE_SIZES`.
    pub const GET_COMMAND_RESPONSE_SIZES: u32 = 25;
    /// `TPM_TEST_FAILURE_MODE`.
    pub const TEST_FAILURE_MODE: u32 = 30;
}

/// `TPM_RC_LOCALITY`: the answer to a command sent at a locality above 4.
pub const TPM_RC_LOCALITY: u32 = 0x907;

/// Largest `TPM_SIGNAL_HASH_DATA` payload accepted.
const MAX_HASH_DATA: u32 = 1 << 20;

fn read_u32(r: &mut impl Read) -> io::Result<Option<u32>> {
    let mut b = [0u8; 4];
    Ok(crate::data::read_exact_or_eof(r, &mut b)?.then(|| u32::from_be_bytes(b)))
}

fn read_sized(r: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let len = read_u32(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes exceed the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn ack(w: &mut impl Write, words: &[u32]) -> io::Result<()> {
    let out: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    w.write_all(&out)?;
    w.flush()
}

/// Serves one command-port connection until the client ends the session.
pub fn serve_command(
    conn: &mut (impl Read + Write),
    vtpm: &std::sync::Mutex<Vtpm>,
) -> io::Result<()> {
    let lock = || crate::lock(vtpm);
    while let Some(code) = read_u32(conn)? {
        match code {
            code::SEND_COMMAND => {
                let mut loc = [0u8; 1];
                conn.read_exact(&mut loc)?;
                let max = lock().max_command() as u32;
                let command = read_sized(conn, max)?;
                // Localities 0-4 only (the extended localities 32-255 are not modelled).
                let response = if loc[0] > 4 {
                    crate::error_response(TPM_RC_LOCALITY)
                } else {
                    lock().execute(Some(loc[0]), &command)
                };
                let mut out = Vec::with_capacity(response.len() + 8);
                out.extend_from_slice(&(response.len() as u32).to_be_bytes());
                out.extend_from_slice(&response);
                out.extend_from_slice(&0u32.to_be_bytes());
                conn.write_all(&out)?;
                conn.flush()?;
            }
            code::HASH_START => {
                let _ = lock().engine.hash_start();
                ack(conn, &[0])?;
            }
            code::HASH_DATA => {
                let data = read_sized(conn, MAX_HASH_DATA)?;
                let _ = lock().engine.hash_data(&data);
                ack(conn, &[0])?;
            }
            code::HASH_END => {
                let _ = lock().engine.hash_end();
                ack(conn, &[0])?;
            }
            code::REMOTE_HANDSHAKE => {
                let _client_version = read_u32(conn)?;
                // Server version 1; flags: raw mode, platform available, supports PP.
                ack(conn, &[1, 0x1 | 0x4 | 0x8, 0])?;
            }
            code::GET_COMMAND_RESPONSE_SIZES => {
                let max = lock().max_command() as u32;
                ack(conn, &[max, max, 0])?;
            }
            code::SESSION_END | code::STOP => return Ok(()),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown simulator command {other}"),
                ));
            }
        }
    }
    Ok(())
}

/// Serves one platform-port connection until the client ends the session.
pub fn serve_platform(
    conn: &mut (impl Read + Write),
    vtpm: &std::sync::Mutex<Vtpm>,
) -> io::Result<()> {
    let lock = || crate::lock(vtpm);
    while let Some(c) = read_u32(conn)? {
        match c {
            code::POWER_ON => {
                // Idempotent, as the simulator's: powering on a running TPM is a no-op.
                let mut v = lock();
                if !v.engine.is_running()
                    && let Err(e) = v.start_engine(false)
                {
                    v.log(&format!("power on failed: {e}"));
                    ack(conn, &[1])?;
                    continue;
                }
            }
            code::POWER_OFF => lock().engine.stop(false),
            code::RESET | code::RESTART => {
                let mut v = lock();
                v.engine.stop(false);
                if let Err(e) = v.start_engine(false) {
                    v.log(&format!("reset failed: {e}"));
                }
            }
            code::CANCEL_ON => {
                let _ = lock().engine.cancel();
            }
            code::PHYS_PRES_ON
            | code::PHYS_PRES_OFF
            | code::CANCEL_OFF
            | code::NV_ON
            | code::NV_OFF
            | code::KEY_CACHE_ON
            | code::KEY_CACHE_OFF => {}
            code::SET_ALTERNATIVE_RESULT | code::TEST_FAILURE_MODE => {
                // Test hooks of the reference simulator that libtpms does not have.
                ack(conn, &[1])?;
                continue;
            }
            code::SESSION_END | code::STOP => return Ok(()),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown platform command {other}"),
                ));
            }
        }
        ack(conn, &[0])?;
    }
    Ok(())
}
