//! Boot claims from the recorded Debian shim boot (testdata/eventlog/opencvm-qemu-shim),
//! and what events appended after boot (which replay, since whoever can extend a PCR
//! can log it) can and cannot change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use boot::claims::from_log;
use boot::predict::uefi_variable_data;
use tcg_eventlog::{EventLog, Guid, HashAlg};

fn recorded() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/eventlog/opencvm-qemu-shim/shim-grub-kernel.eventlog.bin"
    ))
    .unwrap()
}

/// A crypto-agile TCG_PCR_EVENT2 with `digested` hashed for every bank of `log`.
fn event(log: &EventLog, pcr: u32, event_type: u32, data: &[u8], digested: &[u8]) -> Vec<u8> {
    let mut e = pcr.to_le_bytes().to_vec();
    e.extend_from_slice(&event_type.to_le_bytes());
    e.extend_from_slice(&(log.banks().len() as u32).to_le_bytes());
    for alg in log.banks() {
        e.extend_from_slice(&alg.tpm_id().to_le_bytes());
        e.extend_from_slice(&alg.digest(digested));
    }
    e.extend_from_slice(&(data.len() as u32).to_le_bytes());
    e.extend_from_slice(data);
    e
}

#[test]
fn the_recorded_boot_says_what_booted() {
    let log = EventLog::parse(&recorded()).unwrap();
    let c = from_log(&log);
    assert_eq!(c.secure_boot, Some(true));
    assert_eq!(
        c.kernel_cmdline.as_deref(),
        Some("/vmlinuz console=ttyS0 panic=-1")
    );
    assert_eq!(
        c.sbat_level.as_deref(),
        Some("sbat,1,2025021800\nshim,4\ngrub,5\n")
    );
    assert_eq!(c.variables.len(), 4);
    let apps: Vec<_> = c
        .boot_applications
        .iter()
        .map(|a| a.authority.as_deref())
        .collect();
    assert_eq!(
        apps,
        [
            Some("Microsoft Corporation UEFI CA 2011"),
            Some("Debian Secure Boot CA"),
            Some("Debian Secure Boot CA")
        ]
    );
    assert_eq!(
        c.boot_applications[0].sha256,
        "80a66d53a945d2286fcadd780fae1c225aa732079cd67b5225dc78aaab4e2ff8"
    );
}

#[test]
fn events_appended_after_boot_do_not_replace_what_firmware_measured() {
    let bytes = recorded();
    let log = EventLog::parse(&bytes).unwrap();
    let before = from_log(&log);
    let mut forged = bytes.clone();
    // A second "db" configuration event, a later SBAT level and another command line.
    let db = uefi_variable_data(Guid::IMAGE_SECURITY_DATABASE, "db", b"forged db");
    forged.extend(event(&log, 7, 0x8000_0001, &db, &db));
    let sbat = uefi_variable_data(
        boot::varstore::SHIM_LOCK_GUID,
        "SbatLevel",
        b"sbat,1,2099010100\n",
    );
    forged.extend(event(&log, 7, 0x8000_00E0, &sbat, &sbat));
    forged.extend(event(
        &log,
        8,
        0xD,
        b"kernel_cmdline: init=/bin/sh",
        b"init=/bin/sh",
    ));
    let log = EventLog::parse(&forged).unwrap();
    // They replay: a quote after them would match.
    assert_ne!(
        log.replay().get(HashAlg::Sha256, 7),
        EventLog::parse(&bytes)
            .unwrap()
            .replay()
            .get(HashAlg::Sha256, 7)
    );
    let after = from_log(&log);
    assert_eq!(
        after.variables, before.variables,
        "db after the separator was taken"
    );
    assert_eq!(after.sbat_level, before.sbat_level);
    assert_eq!(after.kernel_cmdline, before.kernel_cmdline);
    // The appended authority is listed (a relying party sees it), not hidden.
    assert_eq!(after.authorities.len(), before.authorities.len() + 1);
}
