//! Prepares a key release for load tests: creates a vault and an exportable AES key
//! bound to an attestation service, attests an emulated guest that holds a transfer
//! key, and writes what a release needs.
//!
//! `release_setup ATTEST_URL KEYVAULT_URL SERVICE_ADMIN_TOKEN_FILE OUT_DIR`
//! writes OUT_DIR/{credential, release.json, release_url}.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use snp::product::Product;
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform, PlatformConfig, pem};

fn post(
    url: &str,
    bearer: Option<&str>,
    body: &Value,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut r = ureq::post(url).header("Content-Type", "application/json");
    if let Some(b) = bearer {
        r = r.header("Authorization", format!("Bearer {b}"));
    }
    Ok(serde_json::from_str(
        &r.send(body.to_string().as_bytes())?
            .body_mut()
            .read_to_string()?,
    )?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [attest, kv, admin_file, out] = args.as_slice() else {
        return Err("usage: release_setup ATTEST_URL KEYVAULT_URL ADMIN_TOKEN_FILE OUT_DIR".into());
    };
    let out = PathBuf::from(out);
    let admin = std::fs::read_to_string(admin_file)?;
    let cred = post(
        &format!("{kv}/vaults/bench"),
        Some(admin.trim()),
        &json!({}),
    )?["credential"]
        .as_str()
        .ok_or("no credential")?
        .to_string();
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": attest, "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": false}]}]});
    let key = post(
        &format!("{kv}/keys/bench-key/create"),
        Some(&cred),
        &json!({"kty": "oct", "attributes": {"exportable": true}, "release_policy": {
            "contentType": "application/json; charset=utf-8",
            "data": B64URL.encode(policy.to_string()), "immutable": false}}),
    )?;
    let kid = key["key"]["kid"].as_str().ok_or("no kid")?.to_string();
    let p = Platform::open_or_create(&out.join("emu"), PlatformConfig::new(Product::Milan))?;
    let guest = p.launch(LaunchConfig::default())?;
    let transfer = keyvault::wrap::UnwrappingKey::generate(2048)?;
    let mut jwk = transfer.public_key().to_jwk();
    jwk["kid"] = "transfer".into();
    let rt = serde_json::to_vec(&json!({"keys": [jwk]}))?;
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &rt).as_ref());
    let report = p.get_report(&guest, &rd, 0)?;
    let chain = pem("CERTIFICATE", p.vcek_der()) + &p.chain_pem();
    let proof = json!({"SnpReport": B64URL.encode(report), "VcekCertChain": B64URL.encode(chain)});
    let token = post(
        &format!("{attest}/attest/SevSnpVm"),
        None,
        &json!({
            "report": B64URL.encode(serde_json::to_vec(&proof)?),
            "runtimeData": {"data": B64URL.encode(&rt), "dataType": "JSON"},
        }),
    )?["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    std::fs::write(out.join("credential"), &cred)?;
    std::fs::write(
        out.join("release.json"),
        json!({"target": token, "enc": "RSA_AES_KEY_WRAP_256"}).to_string(),
    )?;
    std::fs::write(out.join("release_url"), format!("{kid}/release"))?;
    Ok(())
}
