//! Boot facts that a verifier turns into claims.

use std::collections::BTreeSet;

use crate::event::{Event, EventType};
use crate::log::EventLog;
use crate::uefi::{Guid, parse_uefi_variable_data};

/// PCR that holds the Secure Boot configuration (`EV_EFI_VARIABLE_DRIVER_CONFIG`).
const SECURE_BOOT_PCR: u32 = 7;
/// Text of the `EV_EFI_ACTION` event measured when `ExitBootServices()` is called.
const EXIT_BOOT_SERVICES: &[u8] = b"Exit Boot Services Invocation";

/// Facts read from a log.
///
/// They are claims of the log only: they mean something once the log has been checked
/// against PCR values from a verified quote ([`EventLog::replay_check`]) that cover the
/// PCRs they come from (PCR 7 for Secure Boot, PCR 5 for `ExitBootServices`, PCRs 0-7
/// for the separators). Facts read from event data (Secure Boot, `ExitBootServices`)
/// only use events whose digests are the hash of their data
/// ([`Event::digests_match_data`]); `EV_NO_ACTION` events, which no PCR covers, are
/// never used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFacts {
    /// The UEFI `SecureBoot` variable as measured into PCR 7 before PCR 7's separator
    /// (`EV_EFI_VARIABLE_DRIVER_CONFIG`, `EFI_GLOBAL_VARIABLE` GUID, name
    /// `"SecureBoot"`):
    /// - `Some(true)`: every such event has the value `[1]`;
    /// - `Some(false)`: every such event has the value `[0]` or is empty (the variable
    ///   does not exist: firmware without Secure Boot);
    /// - `None`: no such event, no separator in PCR 7, events that disagree, another
    ///   value, or an `EV_EFI_VARIABLE_DRIVER_CONFIG` event in that range whose data
    ///   cannot be trusted (digest is not the hash of the data, or not a
    ///   `UEFI_VARIABLE_DATA`).
    pub secure_boot: Option<bool>,
    /// PCRs that at least one event is extended into.
    pub extended_pcrs: BTreeSet<u32>,
    /// Number of `EV_EFI_VARIABLE_AUTHORITY` events (certificates or hashes that
    /// authorised a UEFI image under Secure Boot).
    pub variable_authority_events: usize,
    /// PCRs with at least one `EV_SEPARATOR` event.
    pub separator_pcrs: BTreeSet<u32>,
    /// Whether each of PCRs 0-7 has an `EV_SEPARATOR` event (the firmware finished its
    /// pre-boot measurements).
    pub separators_pcr0_to_7: bool,
    /// Whether an `EV_EFI_ACTION` event says `"Exit Boot Services Invocation"` (the
    /// OS loader called `ExitBootServices()`).
    pub exit_boot_services: bool,
}

impl BootFacts {
    /// Reads the facts of `log`.
    pub fn from_log(log: &EventLog) -> Self {
        let extended: Vec<&Event> = log.events().iter().filter(|e| e.is_extended()).collect();
        let separator_pcrs: BTreeSet<u32> = extended
            .iter()
            .filter(|e| e.event_type == EventType::Separator)
            .map(|e| e.pcr)
            .collect();
        Self {
            secure_boot: secure_boot(&extended),
            extended_pcrs: extended.iter().map(|e| e.pcr).collect(),
            variable_authority_events: extended
                .iter()
                .filter(|e| e.event_type == EventType::EfiVariableAuthority)
                .count(),
            separators_pcr0_to_7: (0..=7).all(|pcr| separator_pcrs.contains(&pcr)),
            separator_pcrs,
            exit_boot_services: extended.iter().any(|e| {
                e.event_type == EventType::EfiAction
                    && e.digests_match_data()
                    && trim_nul(&e.data) == EXIT_BOOT_SERVICES
            }),
        }
    }
}

impl EventLog {
    /// Same as [`BootFacts::from_log`].
    pub fn boot_facts(&self) -> BootFacts {
        BootFacts::from_log(self)
    }
}

fn trim_nul(mut data: &[u8]) -> &[u8] {
    while let [rest @ .., 0] = data {
        data = rest;
    }
    data
}

fn secure_boot(extended: &[&Event]) -> Option<bool> {
    let mut value = None;
    let mut separated = false;
    for e in extended.iter().filter(|e| e.pcr == SECURE_BOOT_PCR) {
        match e.event_type {
            EventType::Separator => {
                separated = true;
                break;
            }
            EventType::EfiVariableDriverConfig => {}
            _ => continue,
        }
        if !e.digests_match_data() {
            return None;
        }
        let var = parse_uefi_variable_data(&e.data).ok()?;
        if var.guid != Guid::EFI_GLOBAL_VARIABLE || var.name != "SecureBoot" {
            continue;
        }
        let this = match var.data.as_slice() {
            [1] => true,
            [] | [0] => false,
            _ => return None,
        };
        if value.is_some_and(|v| v != this) {
            return None;
        }
        value = Some(this);
    }
    // Without PCR 7's separator, events of the firmware cannot be told from later ones.
    value.filter(|_| separated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_trailing_nuls_only() {
        assert_eq!(trim_nul(b"ab\0\0"), b"ab");
        assert_eq!(trim_nul(b"\0ab"), b"\0ab");
        assert_eq!(trim_nul(b"\0"), b"");
        assert_eq!(trim_nul(b""), b"");
    }
}
