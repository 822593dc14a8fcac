//! Claims drawn from verified evidence, named as Azure Attestation names them.

use serde_json::{Map, Value, json};
use snp::chain::RootTrust;
use snp::verify::VerifiedReport;

/// The claims of a verified SEV-SNP report (`x-ms-sevsnpvm-*`), plus opencvm's
/// `x-opencvm-emulated` and `x-opencvm-trust` labels, `x-opencvm-revocation`
/// (`checked` when the chain's CRL was applied, else `not_checked`) and
/// `x-opencvm-sevsnpvm-reportid-ma` (the migration agent's report ID).
pub fn snp_claims(v: &VerifiedReport) -> Map<String, Value> {
    let r = v.report();
    let tcb = r.reported_tcb();
    let p = r.policy();
    let fw = r.current_firmware();
    let mut m = Map::new();
    let mut put = |k: &str, val: Value| {
        m.insert(format!("x-ms-sevsnpvm-{k}"), val);
    };
    put("authorkeydigest", hex::encode(r.author_key_digest()).into());
    put("bootloader-svn", tcb.bootloader().into());
    put("familyId", hex::encode_upper(r.family_id()).into());
    put("guestsvn", r.guest_svn().into());
    put("hostdata", hex::encode(r.host_data()).into());
    put("idkeydigest", hex::encode(r.id_key_digest()).into());
    put("imageId", hex::encode_upper(r.image_id()).into());
    put("is-debuggable", p.debug().into());
    put("launchmeasurement", hex::encode(r.measurement()).into());
    put("microcode-svn", tcb.microcode().into());
    put("migration-allowed", p.migrate_ma().into());
    put("reportdata", hex::encode(r.report_data()).into());
    put("reportid", hex::encode(r.report_id()).into());
    put("smt-allowed", p.smt().into());
    put("snpfw-svn", tcb.snp().into());
    put("tee-svn", tcb.tee().into());
    put("vmpl", r.vmpl().into());
    put("guestpolicy", p.raw().into());
    put("product", v.product().to_string().into());
    put(
        "signer",
        format!("{:?}", v.signer()).to_ascii_lowercase().into(),
    );
    if let Some(fmc) = tcb.fmc() {
        put("fmc-svn", fmc.into());
    }
    put(
        "firmware-version",
        format!("{}.{}.{}", fw.major, fw.minor, fw.build).into(),
    );
    let (emulated, trust) = match v.trust() {
        RootTrust::Amd => (false, "amd".to_string()),
        RootTrust::Emulated => (true, "emulated".to_string()),
        RootTrust::Dangerous { label } => (true, format!("dangerous:{label}")),
    };
    m.insert("x-opencvm-emulated".into(), emulated.into());
    m.insert("x-opencvm-trust".into(), trust.into());
    m.insert("x-opencvm-revocation".into(), v.revocation().name().into());
    m.insert(
        "x-opencvm-sevsnpvm-reportid-ma".into(),
        hex::encode(r.report_id_ma()).into(),
    );
    m
}

/// Sets `x-ms-compliance-status` in `claims` (a report's claims, from [`snp_claims`]):
/// `azure-compliant-cvm` only for evidence rooted at AMD's keys whose launch
/// measurement is one the platform registered (`registered`: the reference value
/// found for it, then also named in `x-opencvm-reference-value`);
/// `opencvm-emulated-not-compliant` for emulated evidence, so relying parties that
/// check this claim as they do with Azure Attestation never accept it by accident; and
/// no claim at all for a genuine AMD report of firmware the platform does not run (an
/// attacker's own launch, say).
pub fn add_compliance(
    claims: &mut Map<String, Value>,
    registered: Option<&crate::store::ReferenceValue>,
) {
    let emulated = claims.get("x-opencvm-emulated") != Some(&Value::Bool(false));
    claims.remove("x-ms-compliance-status");
    if emulated {
        claims.insert(
            "x-ms-compliance-status".into(),
            json!("opencvm-emulated-not-compliant"),
        );
    } else if let Some(rv) = registered {
        claims.insert(
            "x-ms-compliance-status".into(),
            json!("azure-compliant-cvm"),
        );
        claims.insert(
            "x-opencvm-reference-value".into(),
            json!({ "region": rv.region, "component": rv.component }),
        );
    }
}
