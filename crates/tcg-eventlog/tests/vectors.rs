//! Real event logs in `testdata/eventlog/` (see its MANIFEST.md): parsing, replay against
//! the stated PCR values, boot facts, tampering, truncation and padding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tcg_eventlog::{
    BootFacts, Error, EventLog, EventType, Guid, HashAlg, LogFormat, PcrValues,
    parse_uefi_variable_data,
};

fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/eventlog")
        .join(path)
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(testdata(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn read_json(path: &str) -> Value {
    serde_json::from_slice(&read(path)).unwrap()
}

fn parse(path: &str) -> EventLog {
    EventLog::parse(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every log, its format and its number of events (header included), as the manifest's
/// "Replay results" table states them (go-eventlog formats: not stated there; these are
/// what the files hold).
const LOGS: &[(&str, LogFormat, usize)] = &[
    (
        "tpm2-tools/event-arch-linux.bin",
        LogFormat::CryptoAgile,
        25,
    ),
    (
        "tpm2-tools/event-bootorder.bin",
        LogFormat::CryptoAgile,
        104,
    ),
    (
        "tpm2-tools/event-gce-ubuntu-2104-log.bin",
        LogFormat::CryptoAgile,
        112,
    ),
    (
        "tpm2-tools/event-moklisttrusted.bin",
        LogFormat::CryptoAgile,
        97,
    ),
    ("tpm2-tools/event-postcode.bin", LogFormat::CryptoAgile, 59),
    (
        "tpm2-tools/event-sd-boot-fedora37.bin",
        LogFormat::CryptoAgile,
        28,
    ),
    ("tpm2-tools/event-uefi-sha1-log.bin", LogFormat::Sha1, 17),
    ("tpm2-tools/event-uefiaction.bin", LogFormat::CryptoAgile, 2),
    (
        "tpm2-tools/event-uefiservices.bin",
        LogFormat::CryptoAgile,
        2,
    ),
    ("tpm2-tools/event-uefivar.bin", LogFormat::CryptoAgile, 2),
    ("go-eventlog/rhel8-uefi.bin", LogFormat::CryptoAgile, 83),
    (
        "go-eventlog/ubuntu-1804-amd-sev.bin",
        LogFormat::CryptoAgile,
        88,
    ),
    (
        "go-eventlog/arch-linux-workstation.bin",
        LogFormat::CryptoAgile,
        25,
    ),
    ("go-eventlog/debian-10.bin", LogFormat::Sha1, 25),
    (
        "local-qemu-ovmf/plain.eventlog.bin",
        LogFormat::CryptoAgile,
        25,
    ),
    (
        "local-qemu-ovmf/sb-ms.eventlog.bin",
        LogFormat::CryptoAgile,
        23,
    ),
    (
        "local-qemu-ovmf/uki-signed.eventlog.bin",
        LogFormat::CryptoAgile,
        39,
    ),
];

const QEMU: &[&str] = &["plain", "sb-ms", "uki-signed"];

#[test]
fn every_log_parses_with_the_stated_format_and_event_count() {
    for &(path, format, count) in LOGS {
        let log = parse(path);
        assert_eq!(log.format(), format, "{path}");
        assert_eq!(log.events().len(), count, "{path}");
        assert_eq!(log.padding_len(), 0, "{path}");
        assert_eq!(log.startup_locality(), None, "{path}");
        for (i, e) in log.events().iter().enumerate() {
            assert_eq!(e.index as usize, i, "{path}");
        }
        // The header of crypto-agile logs is event 0, never extended.
        if format == LogFormat::CryptoAgile {
            assert_eq!(log.events()[0].event_type, EventType::NoAction);
            assert!(log.spec_id().is_some());
        }
    }
}

#[test]
fn banks_of_each_log() {
    use HashAlg::*;
    let cases: &[(&str, &[HashAlg])] = &[
        (
            "tpm2-tools/event-gce-ubuntu-2104-log.bin",
            &[Sha1, Sha256, Sha384],
        ),
        ("tpm2-tools/event-moklisttrusted.bin", &[Sha256]),
        ("tpm2-tools/event-uefi-sha1-log.bin", &[Sha1]),
        ("go-eventlog/debian-10.bin", &[Sha1]),
        (
            "local-qemu-ovmf/plain.eventlog.bin",
            &[Sha1, Sha256, Sha384, Sha512],
        ),
        // The header declares SHA-384 and SHA-512, but the one event only carries
        // SHA-1 and SHA-256 digests (a synthetic tpm2-tools fixture).
        ("tpm2-tools/event-uefivar.bin", &[Sha1, Sha256]),
        ("tpm2-tools/event-uefiaction.bin", &[Sha1, Sha256]),
    ];
    for &(path, banks) in cases {
        assert_eq!(parse(path).banks(), banks, "{path}");
    }
    let spec = parse("tpm2-tools/event-uefivar.bin");
    assert_eq!(spec.spec_id().unwrap().algorithms.len(), 4);
}

/// Checks that `log` replays to every value of `expected` and that the stated PCRs are
/// those the log extends.
fn check_stated(name: &str, log: &EventLog, expected: &PcrValues) {
    assert!(!expected.is_empty(), "{name}");
    log.replay_check(expected)
        .unwrap_or_else(|m| panic!("{name}: {m}"));
    let replayed = log.replay();
    for (alg, pcr, value) in expected.iter() {
        assert_eq!(
            replayed.get(alg, pcr),
            Some(value),
            "{name} {alg} PCR {pcr}"
        );
    }
}

#[test]
fn tpm2_tools_logs_replay_to_the_stated_values() {
    let all = read_json("tpm2-tools/expected-pcrs.json");
    let all = all.as_object().unwrap();
    assert_eq!(all.len(), 10);
    for (name, v) in all {
        let path = format!("tpm2-tools/{name}.bin");
        assert_eq!(
            v["file"].as_str().unwrap(),
            format!("test/integration/fixtures/{name}.bin")
        );
        let log = parse(&path);
        assert_eq!(
            log.events().len() as u64,
            v["events"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            log.format() == LogFormat::CryptoAgile,
            v["agile"].as_bool().unwrap(),
            "{name}"
        );
        assert!(v["replay_matches"].as_bool().unwrap());
        let expected = PcrValues::from_json_value(&v["expected"]).unwrap();
        check_stated(name, &log, &expected);
    }
}

#[test]
fn go_eventlog_logs_replay_to_the_stated_values() {
    let all = read_json("go-eventlog/expected-pcrs.json");
    let all = all.as_object().unwrap();
    assert_eq!(all.len(), 4);
    for (name, v) in all {
        let file = v["file"].as_str().unwrap().rsplit('/').next().unwrap();
        let log = parse(&format!("go-eventlog/{file}"));
        let expected = PcrValues::from_json_value(&v["expected"]).unwrap();
        check_stated(name, &log, &expected);
    }
}

#[test]
fn qemu_logs_replay_to_the_pcrs_read_in_the_guest() {
    for name in QEMU {
        let log = parse(&format!("local-qemu-ovmf/{name}.eventlog.bin"));
        let v = read_json(&format!("local-qemu-ovmf/{name}.pcrs.json"));
        // The "replay" section is exactly what replay() computes, all four banks.
        let replay = PcrValues::from_json_value(&v["replay"]).unwrap();
        assert_eq!(log.replay(), replay, "{name}");

        // What the TPM reported: sha1/sha256/sha384, PCRs 0-16 and 23.
        let guest = PcrValues::from_json_value(&v["tpm_pcrs_read_in_guest"]).unwrap();
        assert_eq!(guest.len(), 3 * 18, "{name}");
        // PCR 10 holds the kernel's IMA measurements, which are not in the firmware
        // log: the strict check names it.
        let m = log.replay_check(&guest).unwrap_err();
        assert_eq!((m.alg, m.pcr), (HashAlg::Sha1, 10), "{name}");
        assert_eq!(m.replayed, Some(vec![0; 20]));
        assert_eq!(m.expected, guest.get(HashAlg::Sha1, 10).unwrap());
        // Every other quoted PCR matches, including those the log never touches (8,
        // 11-16, 23 are zero in the TPM).
        let mut without_ima = PcrValues::new();
        for (alg, pcr, value) in guest.iter().filter(|&(_, pcr, _)| pcr != 10) {
            without_ima.insert(alg, pcr, value).unwrap();
        }
        log.replay_check(&without_ima)
            .unwrap_or_else(|m| panic!("{name}: {m}"));
        // A bank the log covers but the TPM did not report: no problem; a bank the TPM
        // reports that the log does not cover would be (see tampering tests).
    }
}

#[test]
fn manifest_samples() {
    // PCR 7 prefixes quoted in the manifest's table (SHA-256, or SHA-1 for SHA-1 logs),
    // and the scenario notes.
    let cases: &[(&str, HashAlg, u32, &str)] = &[
        (
            "tpm2-tools/event-arch-linux.bin",
            HashAlg::Sha256,
            7,
            "3b4a4db44b7a8725",
        ),
        (
            "tpm2-tools/event-bootorder.bin",
            HashAlg::Sha256,
            7,
            "65caf8dd1e0ea7a6",
        ),
        (
            "tpm2-tools/event-gce-ubuntu-2104-log.bin",
            HashAlg::Sha256,
            7,
            "ca37324eeffabd31",
        ),
        (
            "tpm2-tools/event-moklisttrusted.bin",
            HashAlg::Sha256,
            7,
            "56c7ba6010e0a8a2",
        ),
        (
            "tpm2-tools/event-postcode.bin",
            HashAlg::Sha256,
            7,
            "cea0b7475867ab2c",
        ),
        (
            "tpm2-tools/event-sd-boot-fedora37.bin",
            HashAlg::Sha256,
            7,
            "b5710bf57d25623e",
        ),
        (
            "tpm2-tools/event-uefi-sha1-log.bin",
            HashAlg::Sha1,
            7,
            "9216fc0727c344b3",
        ),
        (
            "tpm2-tools/event-uefivar.bin",
            HashAlg::Sha256,
            7,
            "e58ada1ba75f2e47",
        ),
        (
            "go-eventlog/rhel8-uefi.bin",
            HashAlg::Sha256,
            7,
            "5fd54361d580eb75",
        ),
        (
            "go-eventlog/ubuntu-1804-amd-sev.bin",
            HashAlg::Sha256,
            7,
            "61af3f499f1a86be",
        ),
        (
            "go-eventlog/arch-linux-workstation.bin",
            HashAlg::Sha256,
            7,
            "3b4a4db44b7a8725",
        ),
        (
            "go-eventlog/debian-10.bin",
            HashAlg::Sha1,
            7,
            "9e6c57e850f371c2",
        ),
        (
            "local-qemu-ovmf/plain.eventlog.bin",
            HashAlg::Sha256,
            7,
            "65caf8dd",
        ),
        (
            "local-qemu-ovmf/sb-ms.eventlog.bin",
            HashAlg::Sha256,
            7,
            "4387f18f",
        ),
        // sb-ms: the kernel is not measured, PCR 4 = EV_EFI_ACTION + separator, the same
        // value as in event-sd-boot-fedora37.
        (
            "local-qemu-ovmf/sb-ms.eventlog.bin",
            HashAlg::Sha256,
            4,
            "7a94ffe8",
        ),
        (
            "tpm2-tools/event-sd-boot-fedora37.bin",
            HashAlg::Sha256,
            4,
            "7a94ffe8",
        ),
    ];
    for &(path, alg, pcr, prefix) in cases {
        let value = hex::encode(parse(path).replay().get(alg, pcr).unwrap());
        assert!(value.starts_with(prefix), "{path} {alg} PCR {pcr}: {value}");
    }
    // The two one-event logs without PCR 7.
    for path in [
        "tpm2-tools/event-uefiaction.bin",
        "tpm2-tools/event-uefiservices.bin",
    ] {
        assert_eq!(parse(path).replay().get(HashAlg::Sha256, 7), None);
    }
    // sb-ms: PCR 4 holds exactly an EV_EFI_ACTION and a separator.
    let log = parse("local-qemu-ovmf/sb-ms.eventlog.bin");
    let pcr4: Vec<EventType> = log
        .events()
        .iter()
        .filter(|e| e.pcr == 4)
        .map(|e| e.event_type)
        .collect();
    assert_eq!(pcr4, vec![EventType::EfiAction, EventType::Separator]);
    // uki-signed: the signed UKI's Authenticode SHA-256 in PCR 4, VARIABLE_AUTHORITY in
    // PCR 7, systemd-stub EV_IPL in PCR 11, EV_EVENT_TAG in PCR 9.
    let log = parse("local-qemu-ovmf/uki-signed.eventlog.bin");
    let uki =
        hex::decode("792ee2858e2cbe30fff0bee9f68f33ec966f953c2a1e750f3875affed1d58e34").unwrap();
    assert!(log.events().iter().any(|e| e.pcr == 4
        && e.event_type == EventType::EfiBootServicesApplication
        && e.digest(HashAlg::Sha256) == Some(&uki[..])));
    let has = |pcr: u32, t: EventType| {
        log.events()
            .iter()
            .any(|e| e.pcr == pcr && e.event_type == t)
    };
    assert!(has(7, EventType::EfiVariableAuthority));
    assert!(has(11, EventType::Ipl));
    assert!(has(9, EventType::EventTag));
}

/// Expected facts per log: secure boot, number of EV_EFI_VARIABLE_AUTHORITY events,
/// ExitBootServices, separators in all of PCRs 0-7.
const FACTS: &[(&str, Option<bool>, usize, bool, bool)] = &[
    // SecureBoot measured with no data: the variable does not exist.
    (
        "tpm2-tools/event-arch-linux.bin",
        Some(false),
        0,
        false,
        true,
    ),
    ("tpm2-tools/event-bootorder.bin", Some(false), 0, true, true),
    (
        "tpm2-tools/event-gce-ubuntu-2104-log.bin",
        Some(false),
        1,
        true,
        true,
    ),
    (
        "tpm2-tools/event-moklisttrusted.bin",
        Some(true),
        4,
        true,
        true,
    ),
    ("tpm2-tools/event-postcode.bin", Some(true), 3, false, true),
    (
        "tpm2-tools/event-sd-boot-fedora37.bin",
        Some(false),
        0,
        true,
        true,
    ),
    (
        "tpm2-tools/event-uefi-sha1-log.bin",
        Some(false),
        0,
        false,
        true,
    ),
    ("tpm2-tools/event-uefiaction.bin", None, 0, false, false),
    ("tpm2-tools/event-uefiservices.bin", None, 0, false, false),
    // SecureBoot = 1 is measured, but without PCR 7's separator it is not trusted.
    ("tpm2-tools/event-uefivar.bin", None, 0, false, false),
    ("go-eventlog/rhel8-uefi.bin", Some(true), 2, true, true),
    (
        "go-eventlog/ubuntu-1804-amd-sev.bin",
        Some(false),
        0,
        true,
        true,
    ),
    (
        "go-eventlog/arch-linux-workstation.bin",
        Some(false),
        0,
        false,
        true,
    ),
    ("go-eventlog/debian-10.bin", Some(true), 2, false, true),
    (
        "local-qemu-ovmf/plain.eventlog.bin",
        Some(false),
        0,
        true,
        true,
    ),
    (
        "local-qemu-ovmf/sb-ms.eventlog.bin",
        Some(true),
        0,
        true,
        true,
    ),
    (
        "local-qemu-ovmf/uki-signed.eventlog.bin",
        Some(true),
        1,
        true,
        true,
    ),
];

#[test]
fn boot_facts_of_each_log() {
    assert_eq!(FACTS.len(), LOGS.len());
    for &(path, secure_boot, authority, ebs, separators) in FACTS {
        let log = parse(path);
        let facts = log.boot_facts();
        assert_eq!(facts, BootFacts::from_log(&log));
        assert_eq!(facts.secure_boot, secure_boot, "{path}");
        assert_eq!(facts.variable_authority_events, authority, "{path}");
        assert_eq!(facts.exit_boot_services, ebs, "{path}");
        assert_eq!(facts.separators_pcr0_to_7, separators, "{path}");
        let extended: BTreeSet<u32> = log.replay().iter().map(|(_, pcr, _)| pcr).collect();
        assert_eq!(facts.extended_pcrs, extended, "{path}");
        if separators {
            assert!((0..=7).all(|p| facts.separator_pcrs.contains(&p)), "{path}");
        }
    }
    let pcrs =
        |path: &str| -> Vec<u32> { parse(path).boot_facts().extended_pcrs.into_iter().collect() };
    assert_eq!(pcrs("tpm2-tools/event-uefivar.bin"), vec![7]);
    assert_eq!(
        pcrs("local-qemu-ovmf/uki-signed.eventlog.bin"),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 9, 11]
    );
    assert_eq!(
        pcrs("tpm2-tools/event-sd-boot-fedora37.bin"),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 9, 12]
    );
}

#[test]
fn secure_boot_variable_data() {
    // The measured SecureBoot variables, parsed directly.
    for (path, value) in [
        ("local-qemu-ovmf/sb-ms.eventlog.bin", vec![1]),
        ("local-qemu-ovmf/plain.eventlog.bin", vec![0]),
        ("tpm2-tools/event-uefivar.bin", vec![1]),
        ("tpm2-tools/event-arch-linux.bin", vec![]),
    ] {
        let log = parse(path);
        let vars: Vec<_> = log
            .events()
            .iter()
            .filter(|e| e.event_type == EventType::EfiVariableDriverConfig)
            .map(|e| parse_uefi_variable_data(&e.data).unwrap())
            .collect();
        let sb: Vec<_> = vars.iter().filter(|v| v.name == "SecureBoot").collect();
        assert_eq!(sb.len(), 1, "{path}");
        assert_eq!(sb[0].guid, Guid::EFI_GLOBAL_VARIABLE);
        assert_eq!(
            sb[0].guid.to_string(),
            "8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
        assert_eq!(sb[0].data, value, "{path}");
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        if path.ends_with("uefivar.bin") {
            // The synthetic one-event fixture.
            assert_eq!(names, ["SecureBoot"]);
        } else {
            assert_eq!(names, ["SecureBoot", "PK", "KEK", "db", "dbx"], "{path}");
            assert_eq!(vars[3].guid, Guid::IMAGE_SECURITY_DATABASE);
        }
    }
}

#[test]
fn variable_data_of_every_log() {
    // Every EV_EFI_VARIABLE_DRIVER_CONFIG / EV_EFI_VARIABLE_BOOT event holds a
    // well-formed UEFI_VARIABLE_DATA. Of EV_EFI_VARIABLE_AUTHORITY events, all but the
    // three "Shim" ones of old shim builds do (those declare 6 bytes fewer than they
    // have).
    let mut malformed = Vec::new();
    for &(path, _, _) in LOGS {
        for e in parse(path).events() {
            if !matches!(
                e.event_type,
                EventType::EfiVariableDriverConfig
                    | EventType::EfiVariableBoot
                    | EventType::EfiVariableAuthority
            ) {
                continue;
            }
            if let Err(err) = parse_uefi_variable_data(&e.data) {
                assert!(
                    matches!(err, Error::TrailingBytes { count: 6, .. }),
                    "{path} event {}: {err}",
                    e.index
                );
                assert_eq!(e.event_type, EventType::EfiVariableAuthority);
                malformed.push((path, e.index));
            }
        }
    }
    assert_eq!(
        malformed,
        [
            ("tpm2-tools/event-postcode.bin", 40),
            ("tpm2-tools/event-postcode.bin", 54),
            ("go-eventlog/debian-10.bin", 23)
        ]
    );
}

/// The event types, PCRs, sizes and digests tpm2_eventlog printed for the tpm2-tools
/// logs, read from its YAML (only the few keys needed).
struct YamlEvent {
    pcr: u32,
    event_type: String,
    size: usize,
    digests: Vec<(String, String)>,
}

fn yaml_events(text: &str) -> (Vec<YamlEvent>, Vec<(String, u32, String)>) {
    let mut events: Vec<YamlEvent> = Vec::new();
    let mut pcrs = Vec::new();
    let mut alg = None;
    let mut bank = None;
    let mut in_pcrs = false;
    for line in text.lines() {
        if line == "pcrs:" {
            in_pcrs = true;
            continue;
        }
        if in_pcrs {
            let t = line.trim();
            if let Some(b) = t.strip_suffix(':') {
                bank = Some(b.to_string());
            } else if let Some((pcr, value)) = t.split_once(':') {
                let value = value.trim().strip_prefix("0x").unwrap().to_string();
                pcrs.push((bank.clone().unwrap(), pcr.trim().parse().unwrap(), value));
            }
            continue;
        }
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(v) = t.strip_prefix("PCRIndex: ") {
            events.push(YamlEvent {
                pcr: v.parse().unwrap(),
                event_type: String::new(),
                size: 0,
                digests: Vec::new(),
            });
        } else if let Some(v) = t.strip_prefix("EventType: ") {
            events.last_mut().unwrap().event_type = v.to_string();
        } else if let Some(v) = t.strip_prefix("EventSize: ") {
            events.last_mut().unwrap().size = v.parse().unwrap();
        } else if let Some(v) = t.strip_prefix("AlgorithmId: ") {
            alg = Some(v.to_string());
        } else if let Some(v) = t.strip_prefix("Digest: ") {
            let d = v.trim_matches('"').to_string();
            let a = alg.take().unwrap_or_else(|| "header".to_string());
            events.last_mut().unwrap().digests.push((a, d));
        }
    }
    (events, pcrs)
}

#[test]
fn tpm2_tools_logs_match_tpm2_eventlog_output() {
    for &(path, _, _) in LOGS.iter().filter(|(p, _, _)| p.starts_with("tpm2-tools/")) {
        let log = parse(path);
        let text = String::from_utf8(read(&format!("{path}.tpm2_eventlog.yaml"))).unwrap();
        let (yaml, pcrs) = yaml_events(&text);
        assert_eq!(yaml.len(), log.events().len(), "{path}");
        for (y, e) in yaml.iter().zip(log.events()) {
            let at = format!("{path} event {}", e.index);
            assert_eq!(y.pcr, e.pcr, "{at}");
            assert_eq!(y.event_type, e.event_type.name(), "{at}");
            assert_eq!(y.size, e.data.len(), "{at}");
            if y.digests.len() == 1 && y.digests[0].0 == "header" {
                assert_eq!(e.digest(HashAlg::Sha1), Some(&[0u8; 20][..]), "{at}");
                continue;
            }
            let ours: Vec<(String, String)> = e
                .digests
                .iter()
                .map(|(a, d)| (a.name().to_string(), hex::encode(d)))
                .collect();
            assert_eq!(y.digests, ours, "{at}");
        }
        // tpm2_eventlog's own replay.
        assert!(!pcrs.is_empty(), "{path}");
        let replayed = log.replay();
        for (bank, pcr, value) in pcrs {
            let alg = HashAlg::from_name(&bank).unwrap();
            assert_eq!(
                replayed.get(alg, pcr).map(hex::encode),
                Some(value),
                "{path} {bank} PCR {pcr}"
            );
        }
    }
}

/// Finds the only occurrence of `needle` in `haystack`.
fn find_unique(haystack: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1);
    hits[0]
}

#[test]
fn tampered_logs_fail_the_check_naming_the_pcr() {
    let path = "local-qemu-ovmf/sb-ms.eventlog.bin";
    let bytes = read(path);
    let log = EventLog::parse(&bytes).unwrap();
    let quoted = log.replay(); // stands for the quoted values, which it equals
    log.replay_check(&quoted).unwrap();

    // Flip one byte of the SHA-256 digest of the SecureBoot event (PCR 7).
    let sb = log
        .events()
        .iter()
        .find(|e| e.event_type == EventType::EfiVariableDriverConfig)
        .unwrap();
    assert_eq!(sb.pcr, 7);
    let at = find_unique(&bytes, sb.digest(HashAlg::Sha256).unwrap());
    let mut tampered = bytes.clone();
    tampered[at + 5] ^= 0x01;
    let bad = EventLog::parse(&tampered).unwrap();
    let m = bad.replay_check(&quoted).unwrap_err();
    assert_eq!((m.alg, m.pcr), (HashAlg::Sha256, 7));
    assert_eq!(m.expected, quoted.get(HashAlg::Sha256, 7).unwrap());
    assert_ne!(m.replayed.as_deref(), Some(&m.expected[..]));
    assert!(m.to_string().contains("PCR 7"), "{m}");
    // The digest no longer matches the data, so the Secure Boot fact is withdrawn.
    assert_eq!(bad.boot_facts().secure_boot, None);

    // Flip a byte of the event data instead: the replay still matches (digests are
    // what is extended), but the fact is withdrawn because data and digest disagree.
    let data_at = find_unique(&bytes, &sb.data);
    let mut tampered = bytes.clone();
    tampered[data_at + sb.data.len() - 1] ^= 0x01; // SecureBoot 1 -> 0
    let bad = EventLog::parse(&tampered).unwrap();
    bad.replay_check(&quoted).unwrap();
    assert_eq!(bad.boot_facts().secure_boot, None);

    // A SHA-1-only log: tamper with the PCR 0 S-CRTM version event.
    let path = "tpm2-tools/event-uefi-sha1-log.bin";
    let bytes = read(path);
    let log = EventLog::parse(&bytes).unwrap();
    let mut tampered = bytes.clone();
    tampered[8] ^= 0x80; // first byte of the first event's digest
    let m = EventLog::parse(&tampered)
        .unwrap()
        .replay_check(&log.replay())
        .unwrap_err();
    assert_eq!((m.alg, m.pcr), (HashAlg::Sha1, 0));

    // A quoted PCR the log never touches must hold its initial value.
    let mut quoted = log.replay();
    quoted.insert(HashAlg::Sha1, 12, &[0; 20]).unwrap();
    quoted.insert(HashAlg::Sha1, 17, &[0xff; 20]).unwrap();
    log.replay_check(&quoted).unwrap();
    quoted.insert(HashAlg::Sha1, 12, &[1; 20]).unwrap();
    let m = log.replay_check(&quoted).unwrap_err();
    assert_eq!((m.pcr, m.replayed), (12, Some(vec![0; 20])));
    // A quoted bank the log does not have.
    let mut quoted = log.replay();
    quoted.insert(HashAlg::Sha256, 0, &[0; 32]).unwrap();
    let m = log.replay_check(&quoted).unwrap_err();
    assert_eq!((m.alg, m.pcr, m.replayed), (HashAlg::Sha256, 0, None));
}

#[test]
fn truncation_at_every_offset_errors_or_yields_a_prefix() {
    for path in [
        "tpm2-tools/event-uefivar.bin",
        "tpm2-tools/event-uefiaction.bin",
        "tpm2-tools/event-sd-boot-fedora37.bin",
        "tpm2-tools/event-uefi-sha1-log.bin",
    ] {
        let bytes = read(path);
        let full = EventLog::parse(&bytes).unwrap();
        let mut ok_cuts = 0;
        for cut in 0..bytes.len() {
            match EventLog::parse(&bytes[..cut]) {
                Err(e) => assert!(e.offset() <= cut, "{path} cut {cut}: {e}"),
                Ok(log) => {
                    // Only possible at an event boundary (possibly followed by zero
                    // bytes that read as padding): the events are a strict prefix.
                    ok_cuts += 1;
                    let n = log.events().len();
                    assert!(n < full.events().len(), "{path} cut {cut}");
                    assert_eq!(log.events(), &full.events()[..n], "{path} cut {cut}");
                }
            }
        }
        // At most a handful of accepted cuts per event boundary.
        assert!(ok_cuts <= 8 * full.events().len(), "{path}: {ok_cuts}");
    }
    // Cutting the 202-byte log anywhere inside its only measured event fails.
    let bytes = read("tpm2-tools/event-uefivar.bin");
    let header_end = 32 + 45;
    for cut in header_end + 5..bytes.len() {
        assert!(EventLog::parse(&bytes[..cut]).is_err(), "cut {cut}");
    }
}

#[test]
fn trailing_zeros_accepted_trailing_garbage_rejected() {
    for &(path, _, count) in LOGS {
        let bytes = read(path);
        for pad in [1, 4, 31, 4096] {
            let mut padded = bytes.clone();
            padded.extend(vec![0u8; pad]);
            let log = EventLog::parse(&padded).unwrap_or_else(|e| panic!("{path} +{pad}: {e}"));
            assert_eq!(log.events().len(), count, "{path}");
            assert_eq!(log.padding_len(), pad);
            assert_eq!(log.replay(), parse(path).replay());
        }
        for garbage in [
            &[0xffu8][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            let mut bad = bytes.clone();
            bad.extend(garbage);
            let err = EventLog::parse(&bad).unwrap_err();
            assert!(err.offset() >= bytes.len(), "{path}: {err}");
        }
        // Zeros, then garbage.
        let mut bad = bytes.clone();
        bad.extend([0u8; 64]);
        bad.push(0x5a);
        assert!(EventLog::parse(&bad).is_err(), "{path}");
    }
}

#[test]
fn fuzz_entry_point_accepts_every_vector_and_mutation() {
    for &(path, _, _) in LOGS {
        let bytes = read(path);
        tcg_eventlog::fuzz_parse(&bytes);
        for i in (0..bytes.len()).step_by(97) {
            let mut m = bytes.clone();
            m[i] ^= 0xff;
            tcg_eventlog::fuzz_parse(&m);
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    // xorshift64*: deterministic, no dependency. TCG_EVENTLOG_MUTATIONS raises the
    // number of mutated inputs per log for a longer local run.
    let rounds: usize = std::env::var("TCG_EVENTLOG_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for &(path, _, _) in LOGS {
        let bytes = read(path);
        for _ in 0..rounds {
            let mut m = bytes.clone();
            for _ in 0..=(next() % 4) {
                let at = (next() as usize) % m.len();
                match next() % 4 {
                    // Small values in a length/count field, or random bytes.
                    0 => m[at] = (next() % 4) as u8,
                    1 => m[at] = 0xff,
                    2 => m[at] ^= 1 << (next() % 8),
                    _ => m.truncate(at.max(1)),
                }
            }
            tcg_eventlog::fuzz_parse(&m);
        }
    }
}

#[test]
fn logged_check_skips_only_pcrs_without_events() {
    for name in QEMU {
        let log = parse(&format!("local-qemu-ovmf/{name}.eventlog.bin"));
        let v = read_json(&format!("local-qemu-ovmf/{name}.pcrs.json"));
        let guest = PcrValues::from_json_value(&v["tpm_pcrs_read_in_guest"]).unwrap();
        // PCR 10 (IMA) has no event in the firmware log: skipped.
        assert!(log.replay_check(&guest).is_err());
        log.replay_check_logged(&guest)
            .unwrap_or_else(|m| panic!("{name}: {m}"));
        // A changed PCR 7 is still caught.
        let mut bad = guest.clone();
        bad.insert(HashAlg::Sha384, 7, &[0; 48]).unwrap();
        let m = log.replay_check_logged(&bad).unwrap_err();
        assert_eq!((m.alg, m.pcr), (HashAlg::Sha384, 7));
        // A PCR without events is not checked, whatever its value.
        let mut other = guest.clone();
        other.insert(HashAlg::Sha256, 15, &[7; 32]).unwrap();
        log.replay_check_logged(&other).unwrap();
        assert!(log.replay_check(&other).is_err());
    }
    // A bank the log cannot replay still fails for logged PCRs.
    let log = parse("tpm2-tools/event-moklisttrusted.bin");
    let mut quoted = PcrValues::new();
    quoted.insert(HashAlg::Sha1, 7, &[0; 20]).unwrap();
    let m = log.replay_check_logged(&quoted).unwrap_err();
    assert_eq!((m.alg, m.pcr, m.replayed), (HashAlg::Sha1, 7, None));
}
