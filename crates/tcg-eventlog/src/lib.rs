//! TCG PC Client firmware event logs: strict parsing, PCR replay and boot facts.
//!
//! - [`EventLog::parse`]: SHA-1 logs (`TCG_PCR_EVENT` only) and crypto-agile logs
//!   (`"Spec ID Event03"` header, then `TCG_PCR_EVENT2`), as firmware leaves them in
//!   memory and Linux exposes them in `/sys/kernel/security/tpm0/binary_bios_measurements`.
//!   All fields are little-endian. Every length is bounds-checked and capped; errors
//!   name the byte offset and the field ([`Error`]). Zero padding after the last event
//!   is accepted, anything else after it is not.
//! - [`Event`] / [`EventType`]: the events, with the PC Client event types named.
//! - [`EventLog::replay`]: the PCR values the log implies, as [`tpm_quote::PcrValues`]
//!   so they compare directly with quoted PCRs; [`EventLog::replay_check`] reports the
//!   first quoted PCR the log does not explain ([`Mismatch`]);
//!   [`EventLog::replay_check_logged`] only checks the quoted PCRs the log has events
//!   for.
//! - [`BootFacts`]: Secure Boot state, extended PCRs, `EV_EFI_VARIABLE_AUTHORITY`
//!   count, separators, `ExitBootServices`; [`parse_uefi_variable_data`] for
//!   `UEFI_VARIABLE_DATA`.
//!
//! A log is untrusted until [`EventLog::replay_check`] succeeds against the PCR values of
//! a verified quote; only then do its events and facts describe the boot, and only for
//! the PCRs the quote covers.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tcg_eventlog::EventLog;
//! # let (bytes, quoted_pcrs) = (vec![0u8], tpm_quote::PcrValues::new());
//! let log = EventLog::parse(&bytes)?;
//! log.replay_check(&quoted_pcrs)?; // quoted_pcrs: bound by a verified quote
//! let facts = log.boot_facts();
//! println!("secure boot: {:?}", facts.secure_boot);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod error;
mod event;
mod facts;
mod log;
mod reader;
mod replay;
mod uefi;

pub use error::Error;
pub use event::{Event, EventType};
pub use facts::BootFacts;
pub use log::{
    AlgorithmSize, EventLog, LogFormat, MAX_ALGORITHMS, MAX_EVENT_DATA, MAX_EVENTS, MAX_LOG_SIZE,
    MAX_PCR, SpecIdEvent,
};
pub use replay::{Mismatch, initial_pcr_value};
pub use tpm_quote::{HashAlg, PcrValues};
pub use uefi::{Guid, UefiVariableData, parse_uefi_variable_data};

/// Runs the parsers of this crate on `data` and everything that follows a successful
/// parse (replay, replay check, boot facts), ignoring the results: the entry point of a
/// fuzz target. It must never panic.
pub fn fuzz_parse(data: &[u8]) {
    let _ = parse_uefi_variable_data(data);
    if let Ok(log) = EventLog::parse(data) {
        let replayed = log.replay();
        let _ = log.replay_check(&replayed);
        let _ = log.replay_check(&PcrValues::new());
        let _ = log.replay_check_logged(&replayed);
        let _ = log.boot_facts();
        for event in log.events() {
            let _ = event.event_type.name();
            let _ = event.digests_match_data();
            let _ = parse_uefi_variable_data(&event.data);
        }
    }
}
