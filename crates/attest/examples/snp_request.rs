//! Writes an MAA-shaped `POST /attest/SevSnpVm` request body with evidence from the
//! emulated AMD secure processor (for load tests and manual trials).
//!
//! `cargo run --release -p attest --example snp_request -- PLATFORM_DIR OUT.json`
//! (the platform is created in PLATFORM_DIR if it does not exist).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::json;
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(dir), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: snp_request PLATFORM_DIR OUT.json".into());
    };
    let p = Platform::open_or_create(&dir, PlatformConfig::new(Product::Milan))?;
    let guest = p.launch(LaunchConfig {
        measurement: [0x42; 48],
        ..LaunchConfig::default()
    })?;
    let runtime = serde_json::to_vec(&json!({"keys": [], "purpose": "load test"}))?;
    let mut rd = [0u8; 64];
    rd[..32]
        .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &runtime).as_ref());
    let report = p.get_report(&guest, &rd, 0)?;
    let chain = pem("CERTIFICATE", p.vcek_der()) + &p.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    let body = json!({
        "report": B64URL.encode(serde_json::to_vec(&proof)?),
        "runtimeData": {"data": B64URL.encode(&runtime), "dataType": "JSON"},
    });
    std::fs::write(&out, serde_json::to_vec(&body)?)?;
    Ok(())
}
