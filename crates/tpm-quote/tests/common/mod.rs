//! Loading of the real vectors in `testdata/tpm-quote/` (see its MANIFEST.md).

#![allow(dead_code)]

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;
use tpm_quote::azure::AzureVtpmQuote;
use tpm_quote::{HashAlg, PcrValues, PublicKey, RsaPublicKey, Signature};

/// A vector's path: the files only this crate uses are in `testdata/tpm-quote`, the
/// real evidence shared with the `snp` crate stays in `testdata/snp`.
pub fn testdata(path: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let own = base.join("tpm-quote").join(path);
    if own.exists() {
        own
    } else {
        base.join("snp").join(path)
    }
}

pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(testdata(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn read_json(path: &str) -> Value {
    serde_json::from_slice(&read(path)).unwrap()
}

pub fn expected() -> Value {
    read_json("expected.json")
}

/// The runtime-claims JSON of an Azure HCL report: length u32 LE at 0x4D0 (IGVM
/// request data `variable_data_size`), JSON at 0x4D4.
pub fn hcl_runtime_claims(report: &[u8]) -> Value {
    let size = u32::from_le_bytes(report[0x4D0..0x4D4].try_into().unwrap()) as usize;
    serde_json::from_slice(&report[0x4D4..0x4D4 + size]).unwrap()
}

/// The `HCLAkPub` JWK (n, e) of an HCL report.
pub fn hcl_akpub_jwk(report: &[u8]) -> (String, String) {
    let claims = hcl_runtime_claims(report);
    let key = claims["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "HCLAkPub")
        .expect("HCLAkPub in runtime claims");
    (
        key["n"].as_str().unwrap().to_owned(),
        key["e"].as_str().unwrap().to_owned(),
    )
}

pub fn hcl_akpub(report: &[u8]) -> PublicKey {
    let (n, e) = hcl_akpub_jwk(report);
    RsaPublicKey::from_jwk_components(&n, &e).unwrap().into()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => hex::decode(s).unwrap(),
        Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("not bytes: {other}"),
    }
}

/// The SHA-256 PCR bank from a `pcrs` array (hex strings or byte arrays).
pub fn pcrs_of(v: &Value) -> PcrValues {
    let mut out = PcrValues::new();
    out.insert_bank(HashAlg::Sha256, v.as_array().unwrap().iter().map(bytes_of))
        .unwrap();
    out
}

pub struct Vector {
    pub name: &'static str,
    pub message: Vec<u8>,
    /// Raw (plain) RSA signature bytes.
    pub sig: Vec<u8>,
    pub key: PublicKey,
    pub nonce: Vec<u8>,
    /// PCR values shipped with the quote, if any.
    pub pcrs: Option<PcrValues>,
    /// The entry of expected.json.
    pub expected: Value,
}

impl Vector {
    pub fn signature(&self) -> Signature {
        Signature::from_plain_rsa(&self.sig)
    }
}

fn from_quote_json(q: &Value) -> (Vec<u8>, Vec<u8>, PcrValues) {
    (
        bytes_of(&q["message"]),
        bytes_of(&q["signature"]),
        pcrs_of(&q["pcrs"]),
    )
}

pub fn vectors() -> Vec<Vector> {
    let exp = expected();
    let e = |name: &str| exp[name].clone();
    let nonce = |name: &str| hex::decode(exp[name]["nonce_hex"].as_str().unwrap()).unwrap();
    let mut out = Vec::new();

    // tpm-quote.msg/.sig: plain files, key from the 2023 HCL report.
    let name = "trustee/az-snp-vtpm/tpm-quote.msg";
    out.push(Vector {
        name,
        message: read(name),
        sig: read("trustee/az-snp-vtpm/tpm-quote.sig"),
        key: hcl_akpub(&read("trustee/az-snp-vtpm/tpm-quote.hcl-report-2023.bin")),
        nonce: nonce(name),
        pcrs: None,
        expected: e(name),
    });

    let hcl = read("trustee/az-snp-vtpm/hcl-report.bin");

    // quote.bin: bincode blob.
    let name = "trustee/az-snp-vtpm/quote.bin";
    let blob = AzureVtpmQuote::parse_bincode(&read(name)).unwrap();
    out.push(Vector {
        name,
        message: blob.message().to_vec(),
        sig: blob.signature_bytes().to_vec(),
        key: hcl_akpub(&hcl),
        nonce: nonce(name),
        pcrs: Some(blob.pcr_values().unwrap()),
        expected: e(name),
    });

    // tpm-quote-v1.json: hex.
    let name = "trustee/az-snp-vtpm/tpm-quote-v1.json";
    let (message, sig, pcrs) = from_quote_json(&read_json(name));
    out.push(Vector {
        name,
        message,
        sig,
        key: hcl_akpub(&hcl),
        nonce: nonce(name),
        pcrs: Some(pcrs),
        expected: e(name),
    });

    // evidence-v0.json: byte arrays, HCL report under "report".
    let name = "trustee/az-snp-vtpm/evidence-v0.json";
    let ev = read_json(name);
    let (message, sig, pcrs) = from_quote_json(&ev["quote"]);
    out.push(Vector {
        name,
        message,
        sig,
        key: hcl_akpub(&bytes_of(&ev["report"])),
        nonce: nonce(name),
        pcrs: Some(pcrs),
        expected: e(name),
    });

    // evidence-v1/v2.json: hex, HCL report base64url under "hcl_report".
    for name in [
        "trustee/az-snp-vtpm/evidence-v1.json",
        "trustee/az-snp-vtpm/evidence-v2.json",
    ] {
        let ev = read_json(name);
        let (message, sig, pcrs) = from_quote_json(&ev["tpm_quote"]);
        let report = base64::engine::general_purpose::URL_SAFE
            .decode(ev["hcl_report"].as_str().unwrap())
            .unwrap();
        out.push(Vector {
            name,
            message,
            sig,
            key: hcl_akpub(&report),
            nonce: nonce(name),
            pcrs: Some(pcrs),
            expected: e(name),
        });
    }

    // azure-cvm-tooling: bincode blob + SPKI PEM.
    let name = "azure-cvm-tooling/quote.bin";
    let blob = AzureVtpmQuote::parse_bincode(&read(name)).unwrap();
    let pem = String::from_utf8(read("azure-cvm-tooling/akpub.pem")).unwrap();
    out.push(Vector {
        name,
        message: blob.message().to_vec(),
        sig: blob.signature_bytes().to_vec(),
        key: PublicKey::from_pem(&pem).unwrap(),
        nonce: nonce(name),
        pcrs: Some(blob.pcr_values().unwrap()),
        expected: e(name),
    });
    out
}
