//! Hand-built logs: replay rules (StartupLocality, EV_NO_ACTION, D-RTM PCRs, unknown
//! algorithms) and the rules behind the boot facts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use tcg_eventlog::{EventLog, EventType, Guid, HashAlg, PcrValues, initial_pcr_value};

const SHA1: u16 = 0x0004;
const SHA256: u16 = 0x000b;
const SM3: u16 = 0x0012;

const NO_ACTION: u32 = 0x3;
const SEPARATOR: u32 = 0x4;
const POST_CODE: u32 = 0x1;
const DRIVER_CONFIG: u32 = 0x8000_0001;
const EFI_ACTION: u32 = 0x8000_0007;
const AUTHORITY: u32 = 0x8000_00E0;

/// A crypto-agile log under construction.
struct Log {
    algs: Vec<(u16, u16)>,
    bytes: Vec<u8>,
}

impl Log {
    fn new(algs: &[(u16, u16)]) -> Self {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend(0u32.to_le_bytes());
        spec.extend([0, 2, 0, 2]);
        spec.extend((algs.len() as u32).to_le_bytes());
        for (id, size) in algs {
            spec.extend(id.to_le_bytes());
            spec.extend(size.to_le_bytes());
        }
        spec.push(0);
        let mut bytes = 0u32.to_le_bytes().to_vec();
        bytes.extend(NO_ACTION.to_le_bytes());
        bytes.extend([0; 20]);
        bytes.extend((spec.len() as u32).to_le_bytes());
        bytes.extend(spec);
        Self {
            algs: algs.to_vec(),
            bytes,
        }
    }

    /// Appends an event with explicit digests.
    fn raw(mut self, pcr: u32, event_type: u32, digests: &[(u16, Vec<u8>)], data: &[u8]) -> Self {
        self.bytes.extend(pcr.to_le_bytes());
        self.bytes.extend(event_type.to_le_bytes());
        self.bytes.extend((digests.len() as u32).to_le_bytes());
        for (id, d) in digests {
            self.bytes.extend(id.to_le_bytes());
            self.bytes.extend(d);
        }
        self.bytes.extend((data.len() as u32).to_le_bytes());
        self.bytes.extend(data);
        self
    }

    /// Appends an event whose digests are the hashes of its data (a fixed filler for
    /// algorithms this test does not hash).
    fn event(self, pcr: u32, event_type: u32, data: &[u8]) -> Self {
        let digests: Vec<(u16, Vec<u8>)> = self
            .algs
            .iter()
            .map(|&(id, size)| {
                let d = HashAlg::from_tpm(id)
                    .map(|a| a.digest(data))
                    .unwrap_or_else(|| vec![0x5a; size as usize]);
                (id, d)
            })
            .collect();
        self.raw(pcr, event_type, &digests, data)
    }

    fn parse(&self) -> EventLog {
        EventLog::parse(&self.bytes).unwrap()
    }
}

fn extend(alg: HashAlg, old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut cat = old.to_vec();
    cat.extend(digest);
    alg.digest(&cat)
}

fn variable(name: &str, value: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut out = Guid::EFI_GLOBAL_VARIABLE.0.to_vec();
    out.extend((units.len() as u64).to_le_bytes());
    out.extend((value.len() as u64).to_le_bytes());
    for u in units {
        out.extend(u.to_le_bytes());
    }
    out.extend(value);
    out
}

#[test]
fn replay_by_hand() {
    let log = Log::new(&[(SHA1, 20), (SHA256, 32)])
        .event(0, 0x8, b"crtm")
        .event(0, NO_ACTION, b"not extended")
        .event(7, SEPARATOR, &[0; 4])
        .event(0, SEPARATOR, &[0; 4])
        .parse();
    let replay = log.replay();
    for alg in [HashAlg::Sha1, HashAlg::Sha256] {
        let zero = vec![0; alg.digest_len()];
        let pcr0 = extend(
            alg,
            &extend(alg, &zero, &alg.digest(b"crtm")),
            &alg.digest(&[0; 4]),
        );
        assert_eq!(replay.get(alg, 0), Some(&pcr0[..]));
        let pcr7 = extend(alg, &zero, &alg.digest(&[0; 4]));
        assert_eq!(replay.get(alg, 7), Some(&pcr7[..]));
    }
    assert_eq!(replay.len(), 4);
    log.replay_check(&replay).unwrap();
    assert_eq!(log.events()[2].event_type, EventType::NoAction);
}

#[test]
fn startup_locality_sets_pcr0_initial_value() {
    let locality = b"StartupLocality\0\x03";
    let log = Log::new(&[(SHA256, 32)])
        .raw(0, NO_ACTION, &[(SHA256, vec![0; 32])], locality)
        .event(0, 0x8, b"crtm")
        .parse();
    assert_eq!(log.startup_locality(), Some(3));
    let mut init = vec![0u8; 32];
    init[31] = 3;
    assert_eq!(log.initial_value(HashAlg::Sha256, 0), init);
    let expected = extend(HashAlg::Sha256, &init, &HashAlg::Sha256.digest(b"crtm"));
    assert_eq!(log.replay().get(HashAlg::Sha256, 0), Some(&expected[..]));

    // Locality 4 (H-CRTM) with no PCR 0 measurement: PCR 0 is reported as 00..04.
    let log = Log::new(&[(SHA256, 32)])
        .raw(
            0,
            NO_ACTION,
            &[(SHA256, vec![0; 32])],
            b"StartupLocality\0\x04",
        )
        .event(1, POST_CODE, b"x")
        .parse();
    let mut init = vec![0u8; 32];
    init[31] = 4;
    assert_eq!(log.replay().get(HashAlg::Sha256, 0), Some(&init[..]));
    // A quote that says PCR 0 is zero does not match that log.
    let mut quoted = PcrValues::new();
    quoted.insert(HashAlg::Sha256, 0, &[0; 32]).unwrap();
    let m = log.replay_check(&quoted).unwrap_err();
    assert_eq!((m.pcr, m.replayed), (0, Some(init)));
}

#[test]
fn drtm_pcrs_start_at_all_ones() {
    assert_eq!(initial_pcr_value(HashAlg::Sha1, 17, None), vec![0xff; 20]);
    let log = Log::new(&[(SHA256, 32)]).event(18, POST_CODE, b"x").parse();
    let expected = extend(HashAlg::Sha256, &[0xff; 32], &HashAlg::Sha256.digest(b"x"));
    assert_eq!(log.replay().get(HashAlg::Sha256, 18), Some(&expected[..]));
    let mut quoted = log.replay();
    quoted.insert(HashAlg::Sha256, 22, &[0xff; 32]).unwrap();
    quoted.insert(HashAlg::Sha256, 23, &[0; 32]).unwrap();
    log.replay_check(&quoted).unwrap();
}

#[test]
fn unknown_algorithms_are_skipped_and_partial_banks_not_replayed() {
    let log = Log::new(&[(SM3, 32), (SHA256, 32)])
        .event(1, POST_CODE, b"a")
        .parse();
    assert_eq!(log.banks(), &[HashAlg::Sha256]);
    assert_eq!(log.events()[1].digests.len(), 1);
    assert_eq!(log.replay().len(), 1);

    // SHA-1 is missing from the second event: only SHA-256 can be replayed.
    let log = Log::new(&[(SHA1, 20), (SHA256, 32)])
        .event(1, POST_CODE, b"a")
        .raw(
            1,
            POST_CODE,
            &[(SHA256, HashAlg::Sha256.digest(b"b"))],
            b"b",
        )
        .parse();
    assert_eq!(log.banks(), &[HashAlg::Sha256]);
    let mut quoted = log.replay();
    quoted.insert(HashAlg::Sha1, 1, &[0; 20]).unwrap();
    let m = log.replay_check(&quoted).unwrap_err();
    assert_eq!((m.alg, m.replayed), (HashAlg::Sha1, None));
}

fn sb(log: Log) -> Option<bool> {
    log.parse().boot_facts().secure_boot
}

fn base() -> Log {
    Log::new(&[(SHA256, 32)])
}

#[test]
fn secure_boot_rules() {
    let on = variable("SecureBoot", &[1]);
    let off = variable("SecureBoot", &[0]);
    let sep = [0u8; 4];
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &on)
            .event(7, SEPARATOR, &sep)),
        Some(true)
    );
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &off)
            .event(7, SEPARATOR, &sep)),
        Some(false)
    );
    let absent = variable("SecureBoot", &[]);
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &absent)
            .event(7, SEPARATOR, &sep)),
        Some(false)
    );
    // Other variables do not count.
    let pk = variable("PK", &[1]);
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &pk)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // No separator in PCR 7.
    assert_eq!(sb(base().event(7, DRIVER_CONFIG, &on)), None);
    // After the separator: ignored (an OS could append it).
    assert_eq!(
        sb(base()
            .event(7, SEPARATOR, &sep)
            .event(7, DRIVER_CONFIG, &on)),
        None
    );
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &off)
            .event(7, SEPARATOR, &sep)
            .event(7, DRIVER_CONFIG, &on)),
        Some(false)
    );
    // In another PCR: ignored.
    assert_eq!(
        sb(base()
            .event(1, DRIVER_CONFIG, &on)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // Disagreeing values.
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &on)
            .event(7, DRIVER_CONFIG, &off)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // A value other than 0 or 1.
    let two = variable("SecureBoot", &[2]);
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &two)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // Digest that is not the hash of the data.
    assert_eq!(
        sb(base()
            .raw(7, DRIVER_CONFIG, &[(SHA256, vec![1; 32])], &on)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // Data that is not a UEFI_VARIABLE_DATA.
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, b"junk")
            .event(7, DRIVER_CONFIG, &on)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // Other GUID.
    let mut other = on.clone();
    other[0] ^= 1;
    assert_eq!(
        sb(base()
            .event(7, DRIVER_CONFIG, &other)
            .event(7, SEPARATOR, &sep)),
        None
    );
    // An EV_NO_ACTION event with the same data is not a measurement.
    assert_eq!(
        sb(base()
            .raw(7, NO_ACTION, &[(SHA256, vec![0; 32])], &on)
            .event(7, SEPARATOR, &sep)),
        None
    );
}

#[test]
fn other_facts() {
    let facts = base()
        .event(4, EFI_ACTION, b"Calling EFI Application from Boot Option")
        .event(5, EFI_ACTION, b"Exit Boot Services Invocation\0")
        .event(7, AUTHORITY, b"x")
        .event(7, AUTHORITY, b"y")
        .event(3, SEPARATOR, &[0; 4])
        .raw(9, NO_ACTION, &[(SHA256, vec![0; 32])], b"z")
        .parse()
        .boot_facts();
    assert!(facts.exit_boot_services);
    assert_eq!(facts.variable_authority_events, 2);
    assert_eq!(
        facts.extended_pcrs.iter().copied().collect::<Vec<_>>(),
        [3, 4, 5, 7]
    );
    assert_eq!(
        facts.separator_pcrs.iter().copied().collect::<Vec<_>>(),
        [3]
    );
    assert!(!facts.separators_pcr0_to_7);

    let mut log = base();
    for pcr in 0..=7 {
        log = log.event(pcr, SEPARATOR, &[0; 4]);
    }
    assert!(log.parse().boot_facts().separators_pcr0_to_7);

    // The ExitBootServices text with a digest that does not match, or other text.
    for log in [
        base().raw(
            5,
            EFI_ACTION,
            &[(SHA256, vec![1; 32])],
            b"Exit Boot Services Invocation",
        ),
        base().event(5, EFI_ACTION, b"Exit Boot Services Returned with Success"),
        base().event(5, 0x5, b"Exit Boot Services Invocation"),
    ] {
        assert!(!log.parse().boot_facts().exit_boot_services);
    }
}
