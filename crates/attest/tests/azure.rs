//! `POST /attest/AzureGuest`: real Azure vTPM evidence, and complete evidence (event
//! log, ephemeral key) built on the emulated secure processor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use common::azure::*;
use common::*;
use serde_json::{Value, json};
use snp::hcl::HclReport;
use snp::product::Product;
use tpm_quote::{
    AttestHeader, Certify, ClockInfo, HashAlg, ObjectAttributes as A, PcrSelection, PcrValues,
    Quote, RsaTemplate, TpmPublic,
};

fn attest(s: &Server, body: &[u8]) -> (u16, Value) {
    call(
        "POST",
        &format!("{}/attest/AzureGuest?api-version=2020-10-01", s.url),
        None,
        Some(body),
    )
}

#[test]
fn real_azure_vtpm_evidence_is_accepted() {
    let s = start(false);
    for name in ["evidence-v1.json", "evidence-v2.json"] {
        let p = azure_parts(name);
        let (st, v) = attest(&s, &body(&p, None));
        assert_eq!(st, 200, "{name}: {v}");
        let c = claims_of(v["token"].as_str().unwrap());
        assert_eq!(c["x-ms-attestation-type"], "azurevm");
        assert_eq!(c["x-opencvm-emulated"], false);
        // Not a measurement this platform registered: genuine, but not "compliant"
        // (see compliance_needs_a_registered_measurement).
        assert!(c.get("x-ms-compliance-status").is_none(), "{c}");
        let tee = &c["x-ms-isolation-tee"];
        assert_eq!(tee["x-ms-attestation-type"], "sevsnpvm");
        assert_eq!(tee["x-ms-sevsnpvm-vmpl"], 0);
        assert_eq!(tee["x-ms-sevsnpvm-is-debuggable"], false);
        let hcl =
            HclReport::parse(&std::fs::read(vector(&format!("{name}.hcl-report.bin"))).unwrap())
                .unwrap();
        assert_eq!(
            tee["x-ms-sevsnpvm-launchmeasurement"],
            hex::encode(hcl.report().measurement())
        );
        assert_eq!(tee["x-ms-runtime"]["keys"][0]["kid"], "HCLAkPub");
        assert_eq!(
            c["x-ms-azurevm-attested-pcrs"],
            json!((0..24).collect::<Vec<u32>>())
        );
        let quoted = Quote::parse(&azure_parts(name).quote).unwrap();
        assert_eq!(
            c["x-ms-azurevm-quote-nonce"],
            B64URL.encode(quoted.extra_data())
        );
        if name == "evidence-v1.json" {
            assert_eq!(quoted.extra_data(), b"challenge");
        }
        // ClientPayload and OSType are not bound to any evidence: kept apart from the
        // verified claims.
        assert!(c["x-ms-runtime"].get("client-payload").is_none(), "{c}");
        assert!(c.get("x-ms-azurevm-ostype").is_none(), "{c}");
        assert_eq!(
            c["x-opencvm-unverified"]["client-payload"]["nonce"],
            B64.encode(b"client")
        );
        assert_eq!(c["x-opencvm-unverified"]["ostype"], "Linux");
    }
}

#[test]
fn real_azure_evidence_refusals() {
    let s = start(false);
    let code = |p: &Parts, nonce: Option<&str>| {
        let (st, v) = attest(&s, &body(p, nonce));
        (
            st,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
        )
    };
    // A quoted PCR value that is not the one the quote covers.
    let mut p = azure_parts("evidence-v1.json");
    p.pcrs[7].1[0] ^= 1;
    assert_eq!(code(&p, None), (400, "pcr_digest_mismatch".into()));
    // Values for fewer PCRs than the quote covers.
    let mut p = azure_parts("evidence-v1.json");
    p.pcrs.truncate(8);
    assert_eq!(code(&p, None), (400, "missing_pcr".into()));
    // PcrSet claiming other PCRs than the quote's selection.
    let mut p = azure_parts("evidence-v1.json");
    p.pcr_set = (0..8).collect();
    assert_eq!(code(&p, None), (400, "pcr_set_mismatch".into()));
    // A tampered quote.
    let mut p = azure_parts("evidence-v1.json");
    let last = p.quote.len() - 1;
    p.quote[last] ^= 1;
    assert_eq!(code(&p, None), (400, "quote_signature_invalid".into()));
    // An AK that is not the runtime claims' HCLAkPub.
    let mut p = azure_parts("evidence-v1.json");
    let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let comps: RsaPublicKeyComponents<Vec<u8>> = kp.public_key().into();
    p.ak_pub = ak_public(&comps.n);
    assert_eq!(code(&p, None), (400, "ak_unbound".into()));
    // Runtime data the report does not bind.
    let mut p = azure_parts("evidence-v1.json");
    p.runtime.push(b' ');
    assert_eq!(code(&p, None), (400, "runtime_data_unbound".into()));
    // A service nonce the quote does not carry (the vector's quote says "challenge").
    let (_, n) = call("GET", &format!("{}/nonce", s.url), None, None);
    let p = azure_parts("evidence-v1.json");
    assert_eq!(
        code(&p, n["nonce"].as_str()),
        (400, "nonce_not_bound".into())
    );
    // Malformed AttestationInfo.
    let (st, v) = attest(&s, br#"{"AttestationInfo": "e30"}"#);
    common::assert_refused(st, &v, 400, "malformed_json");
}

/// Complete evidence on the emulated secure processor: a real OVMF event log (Secure
/// Boot on) replayed against a quote signed by the AK, and an ephemeral key certified
/// by the AK.
struct Synthetic {
    ak: KeyPair,
    parts: Parts,
}

fn sign(ak: &KeyPair, msg: &[u8]) -> Vec<u8> {
    let mut sig = vec![0u8; ak.public_modulus_len()];
    ak.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
        .unwrap();
    sig
}

/// A recorded boot: `name` in `testdata/eventlog/local-qemu-ovmf`, or `folder/name`.
fn eventlog(name: &str) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    let (folder, name) = name.split_once('/').unwrap_or(("local-qemu-ovmf", name));
    let dir = repo_root().join("testdata/eventlog").join(folder);
    let log = std::fs::read(dir.join(format!("{name}.eventlog.bin"))).unwrap();
    let pcrs: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.pcrs.json"))).unwrap())
            .unwrap();
    let bank = &pcrs["tpm_pcrs_read_in_guest"]["sha256"];
    let values = (0..8)
        .map(|i| {
            (
                i,
                hex::decode(bank[i.to_string()].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    (log, values)
}

fn synthetic(emu: &Emu, nonce: &str, log_name: &str, enc_attrs: A) -> Synthetic {
    let ak = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let comps: RsaPublicKeyComponents<Vec<u8>> = ak.public_key().into();
    let runtime = serde_json::to_vec(&json!({
        "keys": [{"kid": "HCLAkPub", "kty": "RSA", "key_ops": ["sign"],
                  "n": B64URL.encode(&comps.n), "e": B64URL.encode(&comps.e)}],
        "vm-configuration": {"secure-boot": true, "tpm-enabled": true, "console-enabled": false,
                             "vmUniqueId": "7f0b2c61-3a9d-4c1e-9d2b-5e8f1a7c3b40"},
        "user-data": "00".repeat(64),
    }))
    .unwrap();
    let mut rd = [0u8; 64];
    rd[..32]
        .copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &runtime).as_ref());
    let guest = emu.guest(false);
    let report = emu.report(&guest, rd, 0);

    let (log, values) = eventlog(log_name);
    let mut pv = PcrValues::new();
    for (i, d) in &values {
        pv.insert(HashAlg::Sha256, *i, d).unwrap();
    }
    let sel = [PcrSelection::new(HashAlg::Sha256, &(0..8).collect::<Vec<u32>>()).unwrap()];
    let digest = pv.composite_digest(&sel, HashAlg::Sha256).unwrap();
    let header = AttestHeader {
        qualified_signer: vec![0, 0x0b, 1, 2, 3],
        extra_data: nonce.as_bytes().to_vec(),
        clock_info: ClockInfo {
            clock: 1000,
            reset_count: 1,
            restart_count: 0,
            safe: true,
        },
        firmware_version: 0x2020_0312,
    };
    let quote = Quote::encode(&header, &sel, &digest).unwrap();
    let quote_sig = sign(&ak, &quote);

    let enc_key = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let ec: RsaPublicKeyComponents<Vec<u8>> = enc_key.public_key().into();
    let enc_pub = TpmPublic::encode_rsa(&RsaTemplate::new(enc_attrs, &ec.n)).unwrap();
    let enc = TpmPublic::parse(&enc_pub).unwrap();
    let mut cheader = header.clone();
    cheader.extra_data = Vec::new();
    let certify = Certify::encode(&cheader, &enc.name(), &enc.name()).unwrap();
    let certify_sig = sign(&ak, &certify);
    Synthetic {
        parts: Parts {
            report,
            chain_pem: emu.chain_pem(),
            runtime,
            ak_pub: ak_public(&comps.n),
            quote,
            quote_sig,
            pcrs: values,
            pcr_set: (0..8).collect(),
            event_log: Some(log),
            enc: Some((enc_pub, certify, certify_sig)),
        },
        ak,
    }
}

fn enc_attrs() -> A {
    A::FIXED_TPM | A::FIXED_PARENT | A::SENSITIVE_DATA_ORIGIN | A::USER_WITH_AUTH | A::DECRYPT
}

#[test]
fn complete_emulated_evidence_with_event_log_and_ephemeral_key() {
    let s = start(true);
    let emu = emulator(Product::Milan);
    let nonce = || {
        call("GET", &format!("{}/nonce", s.url), None, None).1["nonce"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let n = nonce();
    let syn = synthetic(emu, &n, "sb-ms", enc_attrs());
    let (st, v) = attest(&s, &body(&syn.parts, Some(&n)));
    assert_eq!(st, 200, "{v}");
    let c = claims_of(v["token"].as_str().unwrap());
    assert_eq!(c["nonce"], n.as_str());
    assert_eq!(c["x-opencvm-emulated"], true);
    assert_eq!(
        c["x-ms-compliance-status"],
        "opencvm-emulated-not-compliant"
    );
    assert_eq!(c["x-ms-azurevm-secureboot"], true);
    assert_eq!(c["x-ms-azurevm-eventlog-verified"], true);
    assert_eq!(
        c["x-ms-azurevm-vmid"],
        "7f0b2c61-3a9d-4c1e-9d2b-5e8f1a7c3b40"
    );
    let key = &c["x-ms-runtime"]["keys"][0];
    assert_eq!(key["kid"], "TpmEphemeralEncryptionKey");
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["e"], "AQAB");
    let (enc_pub, _, _) = syn.parts.enc.as_ref().unwrap();
    let tpm_quote::PublicDetails::Rsa(d) = TpmPublic::parse(enc_pub).unwrap().details().clone()
    else {
        panic!()
    };
    assert_eq!(key["n"], B64URL.encode(&d.modulus));
    // The same nonce again: replayed; and the same evidence without the request's
    // `nonce` field too: the quote carries the service nonce, which is held to it.
    let (st, v) = attest(&s, &body(&syn.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "nonce_replayed");
    let (st, v) = attest(&s, &body(&syn.parts, None));
    common::assert_refused(st, &v, 400, "nonce_replayed");

    // A PCR value sent beside the evidence that the quote does not cover.
    let n = nonce();
    let mut extra = synthetic(emu, &n, "sb-ms", enc_attrs());
    extra.parts.pcrs.push((8, vec![0; 32]));
    let (st, v) = attest(&s, &body(&extra.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "pcr_not_quoted");
    // Nothing quoted at all.
    let n = nonce();
    let mut none = synthetic(emu, &n, "sb-ms", enc_attrs());
    none.parts.pcrs.clear();
    let (st, v) = attest(&s, &body(&none.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "no_pcrs_appraised");
    // A nonce issued for another provider is unknown here.
    let (st, _) = call(
        "POST",
        &format!("{}/providers/tenant-x", s.url),
        Some(&s.admin),
        Some(b"{}"),
    );
    assert_eq!(st, 200);
    let foreign = call(
        "GET",
        &format!("{}/providers/tenant-x/nonce", s.url),
        None,
        None,
    )
    .1["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let other = synthetic(emu, &foreign, "sb-ms", enc_attrs());
    let (st, v) = attest(&s, &body(&other.parts, None));
    common::assert_refused(st, &v, 400, "nonce_unknown");

    // Secure Boot off (the plain OVMF log and its PCRs): a token saying so.
    let n = nonce();
    let plain = synthetic(emu, &n, "plain", enc_attrs());
    let (st, v) = attest(&s, &body(&plain.parts, Some(&n)));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        claims_of(v["token"].as_str().unwrap())["x-ms-azurevm-secureboot"],
        false
    );

    // An event log that does not replay to the quoted PCRs.
    let n = nonce();
    let mut bad = synthetic(emu, &n, "sb-ms", enc_attrs());
    bad.parts.event_log = Some(eventlog("plain").0);
    let (st, v) = attest(&s, &body(&bad.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "event_log_mismatch");

    // An encryption key certified by another key than the AK.
    let n = nonce();
    let mut bad = synthetic(emu, &n, "sb-ms", enc_attrs());
    let other = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let (p, info, _) = bad.parts.enc.take().unwrap();
    let forged = sign(&other, &info);
    bad.parts.enc = Some((p, info, forged));
    let (st, v) = attest(&s, &body(&bad.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "enckey_certify_invalid");
    // A certified key that can also sign: not an encryption-only TPM key.
    let n = nonce();
    let bad = synthetic(emu, &n, "sb-ms", enc_attrs() | A::SIGN_ENCRYPT);
    let (st, v) = attest(&s, &body(&bad.parts, Some(&n)));
    common::assert_refused(st, &v, 400, "enckey_invalid");
    drop(syn.ak);
}

/// The documented CVM release policy (Key Vault's, pinned to this authority):
/// isolation TEE SEV-SNP and `x-ms-compliance-status` `azure-compliant-cvm`.
fn documented_cvm_policy(authority: &str) -> Value {
    let p = json!({"version": "1.0.0", "anyOf": [{"authority": authority, "allOf": [
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"}
    ]}]});
    json!({
        "contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(p.to_string()),
        "immutable": false,
    })
}

/// "Compliant" means the platform runs that firmware: a genuine AMD report whose launch
/// measurement is not registered gets no compliance claim, and the documented release
/// policy refuses its key (through a real key vault); once the platform registers the
/// measurement, the claim is there and the policy admits it.
#[test]
fn compliance_needs_a_registered_measurement() {
    let s = start(false);
    let p = azure_parts("evidence-v1.json");
    let measurement = {
        let hcl =
            HclReport::parse(&std::fs::read(vector("evidence-v1.json.hcl-report.bin")).unwrap())
                .unwrap();
        hex::encode(hcl.report().measurement())
    };
    let (st, v) = attest(&s, &body(&p, None));
    assert_eq!(st, 200, "{v}");
    let before = v["token"].as_str().unwrap().to_string();
    let c = claims_of(&before);
    assert_eq!(c["x-opencvm-emulated"], false);
    assert!(
        c["x-ms-isolation-tee"]
            .get("x-ms-compliance-status")
            .is_none(),
        "{c}"
    );
    assert!(c.get("x-ms-compliance-status").is_none(), "{c}");

    // A key vault trusting this service, a key under the documented CVM policy.
    let dir = tempfile::tempdir().unwrap();
    let master = seal::MasterKey::load_or_create(&dir.path().join("kv-master.key")).unwrap();
    let cfg = keyvault::service::VaultConfig {
        state_dir: dir.path().join("kv"),
        master_key: master,
        base_url: String::new(),
        authorities: keyvault::authority::Authorities::new(
            std::slice::from_ref(&s.url),
            keyvault::authority::http_fetch(),
        ),
        database: None,
        store: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = keyvault::server::run("127.0.0.1:0", None, None, cfg, |a, _| tx.send(a).unwrap());
        panic!("key vault stopped: {r:?}");
    });
    let kv = format!("http://{}", rx.recv().unwrap());
    let service = std::fs::read_to_string(dir.path().join("kv/admin.token")).unwrap();
    let (st, vault) = call("POST", &format!("{kv}/vaults/t"), Some(&service), None);
    assert_eq!(st, 200, "{vault}");
    let cred = vault["credential"].as_str().unwrap().to_string();
    let key = json!({"kty": "oct", "attributes": {"exportable": true},
                     "release_policy": documented_cvm_policy(&s.url)});
    let (st, k) = call(
        "POST",
        &format!("{kv}/keys/disk/create"),
        Some(&cred),
        Some(key.to_string().as_bytes()),
    );
    assert_eq!(st, 200, "{k}");
    let release = |token: &str| {
        let kid = k["key"]["kid"].as_str().unwrap();
        let version = kid.rsplit('/').next().unwrap();
        call(
            "POST",
            &format!("{kv}/keys/disk/{version}/release"),
            Some(&cred),
            Some(json!({ "target": token }).to_string().as_bytes()),
        )
    };
    let (st, v) = release(&before);
    assert_refused(st, &v, 403, "release_policy_denied");

    // The platform registers the firmware its hosts run.
    let (st, v) = call(
        "POST",
        &format!("{}/reference-values/westeurope", s.url),
        Some(&s.admin),
        Some(
            json!({"measurement": measurement, "component": "paravisor",
                    "source": "recorded Azure CVM (trustee vector evidence-v1)"})
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(st, 200, "{v}");
    // Only the platform operator registers.
    let (st, v) = call(
        "POST",
        &format!("{}/reference-values/westeurope", s.url),
        None,
        Some(json!({"measurement": measurement}).to_string().as_bytes()),
    );
    assert_refused(st, &v, 401, "unauthorized");
    let (st, v) = attest(&s, &body(&p, None));
    assert_eq!(st, 200, "{v}");
    let after = v["token"].as_str().unwrap().to_string();
    let c = claims_of(&after);
    assert_eq!(
        c["x-ms-isolation-tee"]["x-ms-compliance-status"],
        "azure-compliant-cvm"
    );
    assert_eq!(
        c["x-ms-isolation-tee"]["x-opencvm-reference-value"],
        json!({"region": "westeurope", "component": "paravisor"})
    );
    // The policy admits it now; the evidence has no ephemeral key to wrap to.
    let (st, v) = release(&after);
    assert_refused(st, &v, 403, "no_encryption_key");
    let (st, list) = call("GET", &format!("{}/reference-values", s.url), None, None);
    assert_eq!(st, 200);
    assert_eq!(list["value"][0]["measurement"], measurement.as_str());
}

#[test]
fn boot_claims_of_a_secure_boot_chain_are_in_the_token() {
    // Debian's shim → GRUB → kernel under the Microsoft template, recorded with our
    // vTPM (testdata/eventlog/opencvm-qemu-shim); the quote covers PCRs 0-7.
    let s = start(true);
    let emu = emulator(Product::Milan);
    let n = call("GET", &format!("{}/nonce", s.url), None, None).1["nonce"]
        .as_str()
        .unwrap()
        .to_string();
    let syn = synthetic(emu, &n, "opencvm-qemu-shim/shim-grub-kernel", enc_attrs());
    let (st, v) = attest(&s, &body(&syn.parts, Some(&n)));
    assert_eq!(st, 200, "{v}");
    let c = claims_of(v["token"].as_str().unwrap());
    let b = &c["x-opencvm-boot"];
    assert_eq!(b["secure-boot"], true, "{c}");
    // The applications by digest (shim, GRUB, kernel), as PCR 4 binds them; who
    // verified each is not claimed (ADR 0014).
    assert_eq!(
        b["boot-applications"],
        json!([
            "80a66d53a945d2286fcadd780fae1c225aa732079cd67b5225dc78aaab4e2ff8",
            "a68f6d71ebddaa19751ff8d729f67d11b0df8e4c49400c3e7e90de16119e1265",
            "61e79ca0acd7e9f18984bea7b44650801ed54fd95a8786c16c583b86acf9d538"
        ])
    );
    let subjects: Vec<&str> = b["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["subject"].as_str())
        .collect();
    assert_eq!(
        subjects,
        [
            "Microsoft Corporation UEFI CA 2011",
            "Debian Secure Boot CA"
        ]
    );
    assert_eq!(b["sbat-level"], "sbat,1,2025021800\nshim,4\ngrub,5\n");
    // db as the store holds it (the template's), hashed.
    let store: Value = serde_json::from_slice(
        &std::fs::read(
            repo_root().join("testdata/eventlog/opencvm-qemu-shim/microsoft-template.vars.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let db = store["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "db")
        .unwrap();
    let db = hex::decode(db["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        b["db-sha256"],
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &db))
    );
    // PCR 8 is not quoted: GRUB's command line, though in the log, is not claimed.
    assert!(b.get("kernel-cmdline").is_none(), "{b}");
}
