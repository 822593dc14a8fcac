//! Azure guest evidence for the tests: real Azure vTPM evidence (trustee's
//! az-snp-vtpm vectors) as MAA's AzureGuest request.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::{Value, json};
use snp::hcl::HclReport;
use tpm_quote::{HashAlg, KeyScheme, ObjectAttributes as A, RsaTemplate, TpmPublic};

use super::repo_root;

/// The attestation key's object attributes.
pub const AK_ATTRS: u32 = 0x0005_0472;

/// A file of the az-snp-vtpm vectors.
pub fn vector(name: &str) -> std::path::PathBuf {
    repo_root()
        .join("testdata/snp/trustee/az-snp-vtpm")
        .join(name)
}

/// A TPM2B_PUBLIC of an attestation key with `modulus`.
pub fn ak_public(modulus: &[u8]) -> Vec<u8> {
    let mut t = RsaTemplate::new(A::from_bits(AK_ATTRS).unwrap(), modulus);
    t.scheme = KeyScheme::rsassa(HashAlg::Sha256);
    TpmPublic::encode_rsa(&t).unwrap()
}

/// The parts of an AzureGuest request.
pub struct Parts {
    pub report: Vec<u8>,
    pub chain_pem: String,
    pub runtime: Vec<u8>,
    pub ak_pub: Vec<u8>,
    pub quote: Vec<u8>,
    pub quote_sig: Vec<u8>,
    pub pcrs: Vec<(u32, Vec<u8>)>,
    pub pcr_set: Vec<u32>,
    pub event_log: Option<Vec<u8>>,
    pub enc: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

/// The AzureGuest request body of `p`.
pub fn body(p: &Parts, nonce: Option<&str>) -> Vec<u8> {
    let proof = json!({
        "SnpReport": B64URL.encode(&p.report),
        "VcekCertChain": B64.encode(&p.chain_pem),
    });
    let mut tpm = json!({
        "AikPub": B64.encode(&p.ak_pub),
        "PcrQuote": B64.encode(&p.quote),
        "PcrSignature": B64.encode(&p.quote_sig),
        "PcrSet": p.pcr_set,
        "PCRs": p.pcrs.iter().map(|(i, d)| json!({"Index": i, "Digest": B64.encode(d)})).collect::<Vec<_>>(),
    });
    if let Some((pub_, info, sig)) = &p.enc {
        tpm["EncKeyPub"] = B64.encode(pub_).into();
        tpm["EncKeyCertifyInfo"] = B64.encode(info).into();
        tpm["EncKeyCertifyInfoSignature"] = B64.encode(sig).into();
    }
    let mut info = json!({
        "AttestationProtocolVersion": "2.0",
        "ClientPayload": {"nonce": B64.encode(b"client")},
        "IsolationInfo": {
            "Type": "SevSnp",
            "Evidence": {
                "Proof": B64.encode(serde_json::to_vec(&proof).unwrap()),
                "RunTimeData": B64.encode(&p.runtime),
            }
        },
        "OSType": B64.encode("Linux"),
        "TpmInfo": tpm,
    });
    if let Some(log) = &p.event_log {
        info["TcgLogs"] = B64.encode(log).into();
    }
    let mut req = json!({ "AttestationInfo": B64URL.encode(serde_json::to_vec(&info).unwrap()) });
    if let Some(n) = nonce {
        req["nonce"] = n.into();
    }
    serde_json::to_vec(&req).unwrap()
}

/// Real Azure evidence (trustee's az-snp-vtpm vectors): HCL report + quote + PCRs.
pub fn azure_parts(name: &str) -> Parts {
    let ev: Value = serde_json::from_slice(&std::fs::read(vector(name)).unwrap()).unwrap();
    let hcl = HclReport::parse(&std::fs::read(vector(&format!("{name}.hcl-report.bin"))).unwrap())
        .unwrap();
    let vcek = std::fs::read(vector(&format!("{name}.vcek.der"))).unwrap();
    let chain =
        std::fs::read_to_string(repo_root().join("testdata/snp/go-sev-guest/ask_ark_milan.pem"))
            .unwrap();
    let (n, _) = hcl.rsa_key_components("HCLAkPub").unwrap();
    let modulus = B64URL.decode(n.trim_end_matches('=')).unwrap();
    let q = &ev["tpm_quote"];
    let pcrs: Vec<(u32, Vec<u8>)> = q["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u32, hex::decode(h.as_str().unwrap()).unwrap()))
        .collect();
    Parts {
        report: hcl.report().as_bytes().to_vec(),
        chain_pem: snp_emu::platform::pem("CERTIFICATE", &vcek) + &chain,
        runtime: hcl.runtime_data().to_vec(),
        ak_pub: ak_public(&modulus),
        quote: hex::decode(q["message"].as_str().unwrap()).unwrap(),
        quote_sig: hex::decode(q["signature"].as_str().unwrap()).unwrap(),
        pcr_set: (0..24).collect(),
        pcrs,
        event_log: None,
        enc: None,
    }
}
