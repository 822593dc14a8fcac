//! The JSON shape of a report, as `cvm evidence show/verify --json` print it.
//!
//! Field names are part of the CLI contract that scripts depend on; hex strings are
//! lower-case.

use serde_json::{Map, Value, json};

use crate::report::AttestationReport;

/// The report's fields as a JSON object.
pub fn report_json(r: &AttestationReport) -> Value {
    let p = r.policy();
    let pi = r.platform_info();
    let mut platform = Map::new();
    platform.insert("raw".into(), json!(format!("{:#x}", pi.raw())));
    for (name, set) in pi.flags() {
        platform.insert(name.into(), json!(set));
    }
    let mut out = json!({
        "version": r.version().number(),
        "guest_svn": r.guest_svn(),
        "policy": {
            "raw": format!("{:#x}", p.raw()),
            "abi_major": p.abi_major(),
            "abi_minor": p.abi_minor(),
            "smt": p.smt(),
            "migrate_ma": p.migrate_ma(),
            "debug": p.debug(),
            "single_socket": p.single_socket(),
            "cxl_allow": p.cxl_allow(),
            "mem_aes_256_xts": p.mem_aes_256_xts(),
            "rapl_dis": p.rapl_dis(),
            "ciphertext_hiding": p.ciphertext_hiding(),
            "page_swap_disable": p.page_swap_disable(),
        },
        "family_id": hex::encode(r.family_id()),
        "image_id": hex::encode(r.image_id()),
        "vmpl": r.vmpl(),
        "signature_algo": r.signature_algo(),
        "signature_algo_name": match r.signature_algo() {
            1 => "ecdsa-p384-sha384",
            _ => "unknown",
        },
        "signing_key": r.signing_key().name(),
        "author_key_en": r.author_key_en(),
        "mask_chip_key": r.mask_chip_key(),
        "product": r.product().map(|p| p.name()),
        "current_tcb": r.current_tcb(),
        "reported_tcb": r.reported_tcb(),
        "committed_tcb": r.committed_tcb(),
        "launch_tcb": r.launch_tcb(),
        "platform_info": platform,
        "report_data": hex::encode(r.report_data()),
        "measurement": hex::encode(r.measurement()),
        "host_data": hex::encode(r.host_data()),
        "id_key_digest": hex::encode(r.id_key_digest()),
        "author_key_digest": hex::encode(r.author_key_digest()),
        "report_id": hex::encode(r.report_id()),
        "report_id_ma": hex::encode(r.report_id_ma()),
        "chip_id": hex::encode(r.chip_id()),
        "firmware": r.current_firmware().to_string(),
        "committed_firmware": r.committed_firmware().to_string(),
    });
    if let Value::Object(m) = &mut out {
        if let Some(c) = r.cpuid() {
            m.insert("cpuid".into(), json!(c));
        }
        if let Some(v) = r.launch_mit_vector() {
            m.insert("launch_mit_vector".into(), json!(format!("{v:#x}")));
        }
        if let Some(v) = r.current_mit_vector() {
            m.insert("current_mit_vector".into(), json!(format!("{v:#x}")));
        }
    }
    out
}
