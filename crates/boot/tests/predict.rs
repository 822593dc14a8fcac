//! PCR 7 predicted from Debian's OVMF variable stores (package `ovmf`, installed by
//! scripts/setup) equals PCR 7 as QEMU's TPM reported it in the event-log vectors of
//! `testdata/eventlog/local-qemu-ovmf` (recorded with the same OVMF build).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use boot::HashAlg;
use boot::predict::{configuration_events, db_authority_event, replay};

fn vars(name: &str) -> boot::varstore::VariableStore {
    let path = format!("/usr/share/OVMF/{name}");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (scripts/setup installs ovmf)"));
    boot::ovmf::read(&bytes).unwrap()
}

fn reported(scenario: &str, bank: &str) -> String {
    let path = format!(
        "{}/../../testdata/eventlog/local-qemu-ovmf/{scenario}.pcrs.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["tpm_pcrs_read_in_guest"][bank]["7"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn secure_boot_off_with_no_keys() {
    let store = vars("OVMF_VARS_4M.fd");
    assert!(!store.secure_boot());
    let events = configuration_events(&store);
    for (alg, bank) in [
        (HashAlg::Sha256, "sha256"),
        (HashAlg::Sha1, "sha1"),
        (HashAlg::Sha384, "sha384"),
    ] {
        assert_eq!(
            hex::encode(replay(&events, alg)),
            reported("plain", bank),
            "{bank}"
        );
    }
}

#[test]
fn microsoft_keys_before_any_authority_event() {
    // The sb-ms boot used -kernel, which OVMF ran unverified: no authority event.
    let store = vars("OVMF_VARS_4M.ms.fd");
    assert!(store.secure_boot());
    let events = configuration_events(&store);
    assert_eq!(
        hex::encode(replay(&events, HashAlg::Sha256)),
        reported("sb-ms", "sha256")
    );
    assert_eq!(
        hex::encode(replay(&events, HashAlg::Sha384)),
        reported("sb-ms", "sha384")
    );
}

#[test]
fn snakeoil_keys_and_one_db_authority() {
    // A UKI signed with the snakeoil key, verified by the one db entry.
    let store = vars("OVMF_VARS_4M.snakeoil.fd");
    let db = store.signature_db("db").unwrap();
    assert_eq!(db.entries.len(), 1);
    let mut events = configuration_events(&store);
    events.push(db_authority_event(&db.entries[0]));
    assert_eq!(
        hex::encode(replay(&events, HashAlg::Sha256)),
        reported("uki-signed", "sha256")
    );
}
