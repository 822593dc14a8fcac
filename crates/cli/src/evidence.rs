//! `cvm evidence show|verify`.
//!
//! Exit status: 0 accepted (or shown), 1 verified and rejected, 2 could not verify
//! (usage, I/O, missing collateral).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use snp::cert::{AmdCert, parse_bundle};
use snp::chain::{RootTrust, TrustAnchors};
use snp::collateral::{CollateralCache, Fetcher, OnlineConfig};
use snp::crl::Crl;
use snp::emulator_roots::{EmulatorRoots, RootsError};
use snp::hcl::HclReport;
use snp::input::{Evidence, parse_evidence};
use snp::kds;
use snp::lookup::RootCrls;
use snp::policy::Policy;
use snp::verify::Verifier;
use snp::{AttestationReport, Product};

/// Evidence subcommands.
#[derive(Subcommand, Debug)]
pub enum EvidenceCommand {
    /// Parse a report and print its fields (no verification).
    Show(ShowArgs),
    /// Verify a report's signature, certificate chain and binding, then appraise it.
    Verify(Box<VerifyArgs>),
}

/// Arguments of `cvm evidence show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A raw report, a hex dump of one, or an Azure HCL report.
    report: PathBuf,
    /// The product, for a version 2 report (which does not say).
    #[arg(long)]
    product: Option<Product>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cvm evidence verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A raw report, a hex dump of one, or an Azure HCL report.
    report: PathBuf,
    /// The VCEK or VLEK certificate (DER or PEM; a PEM bundle may also hold ASK and ARK).
    #[arg(long)]
    vek: Option<PathBuf>,
    /// The AMD chain: ASK (or ASVK) and ARK, DER or PEM; may also hold the VEK. An
    /// extended report's certificate table is accepted too.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// A CRL to check (DER or PEM); repeatable.
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// An appraisal policy (TOML or JSON); the default rejects debug guests.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Verification time (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    #[command(flatten)]
    collateral: CollateralArgs,
    /// The product, for a version 2 report whose collateral must be fetched.
    #[arg(long)]
    product: Option<Product>,
    /// TPM2 quote message (TPMS_ATTEST, as `tpm2_quote -m` writes it).
    #[arg(long, requires = "quote_sig")]
    quote: Option<PathBuf>,
    /// TPM2 quote signature (TPMT_SIGNATURE as `tpm2_quote -s` writes it, or a raw RSA signature).
    #[arg(long, requires = "quote")]
    quote_sig: Option<PathBuf>,
    /// Expected quote nonce (hex).
    #[arg(long, requires = "quote")]
    nonce: Option<String>,
    /// PCR values the quote's digest must match (JSON: {"sha256": {"0": "hex", ...}}).
    #[arg(long, requires = "quote")]
    pcrs: Option<PathBuf>,
    /// Trust this ARK (PEM/DER) as a root although it is not AMD's. Evidence under it is
    /// labelled as not from AMD hardware.
    #[arg(long = "dangerously-trust-ark", value_name = "FILE")]
    dangerously_trust_ark: Vec<PathBuf>,
    /// Trust evidence from this emulated AMD secure processor: its roots file, as `cvm
    /// snp export-roots` writes it (ARK pinned by fingerprint, its CRL applied);
    /// repeatable. Evidence under it is labelled `trust: "emulated"`: it is not from
    /// AMD hardware. No other emulator's evidence verifies, whatever its certificates
    /// call themselves.
    #[arg(long = "dangerously-trust-emulator-roots", value_name = "FILE")]
    dangerously_trust_emulator_roots: Vec<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs an evidence subcommand.
pub fn run(cmd: EvidenceCommand) -> ExitCode {
    match cmd {
        EvidenceCommand::Show(a) => match show(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", crate::describe(&e));
                ExitCode::from(2)
            }
        },
        EvidenceCommand::Verify(a) => verify(&a),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn load_evidence(path: &Path) -> Result<Evidence> {
    let data = read(path)?;
    parse_evidence(&data).with_context(|| format!("parsing {}", path.display()))
}

fn show(a: &ShowArgs) -> Result<()> {
    let ev = load_evidence(&a.report)?;
    let report = match a.product {
        Some(p) => ev.report().with_product(p)?,
        None => ev.report().clone(),
    };
    let mut out = json!({ "report": snp::view::report_json(&report) });
    if let Evidence::Hcl(h) = &ev {
        add_hcl(&mut out, h);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn add_hcl(out: &mut Value, h: &HclReport) {
    out["runtime_claims"] = Value::Object(h.claims().clone());
    out["runtime_data_bound"] = json!(h.runtime_data_bound());
}

fn print_human(r: &AttestationReport) {
    println!("version:      {}", r.version().number());
    println!(
        "product:      {}",
        r.product()
            .map_or("unknown (version 2 report)", |p| p.name())
    );
    println!("signing key:  {}", r.signing_key());
    println!("vmpl:         {}", r.vmpl());
    println!(
        "policy:       {:#x} (debug {}, smt {}, migrate_ma {})",
        r.policy().raw(),
        r.policy().debug(),
        r.policy().smt(),
        r.policy().migrate_ma()
    );
    println!("guest svn:    {}", r.guest_svn());
    println!("measurement:  {}", hex::encode(r.measurement()));
    println!("report data:  {}", hex::encode(r.report_data()));
    println!("reported tcb: {}", r.reported_tcb());
    println!("firmware:     {}", r.current_firmware());
    println!("chip id:      {}", hex::encode(r.chip_id()));
}

/// A reason for a verdict.
struct Reason {
    code: String,
    message: String,
}

enum Outcome {
    Accepted,
    Rejected(Vec<Reason>),
    Error(Reason),
}

fn verify(a: &VerifyArgs) -> ExitCode {
    let mut out = json!({});
    let outcome = match verify_inner(a, &mut out) {
        Ok(o) => o,
        Err(e) => Outcome::Error(Reason {
            code: error_code(&e).into(),
            message: crate::describe(&e),
        }),
    };
    let (verdict, reasons, code) = match &outcome {
        Outcome::Accepted => ("accepted", Vec::new(), 0),
        Outcome::Rejected(r) => ("rejected", r.iter().collect(), 1),
        Outcome::Error(r) => ("error", vec![r], 2),
    };
    if !matches!(outcome, Outcome::Accepted) {
        // Nothing of a report that was not accepted may be read as verified.
        out["verified"] = json!(false);
        for key in ["report", "runtime_claims", "runtime_data_bound"] {
            if let Some(v) = out.as_object_mut().and_then(|m| m.remove(key)) {
                out[format!("unverified_{key}")] = v;
            }
        }
    } else {
        out["verified"] = json!(true);
    }
    if a.json {
        out["verdict"] = json!(verdict);
        out["reasons"] = reasons
            .iter()
            .map(|r| json!({"code": r.code, "message": r.message}))
            .collect();
        match serde_json::to_string_pretty(&out) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        match &outcome {
            Outcome::Accepted => {
                let trust = out["trust"].as_str().unwrap_or("amd");
                println!("accepted ({trust})");
                match &out["revocation_detail"] {
                    d if d["crl_numbers"].is_array() => println!(
                        "  revocation: checked (CRL {})",
                        d["crl_numbers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    d => println!(
                        "  revocation: not checked ({})",
                        d["reason"].as_str().unwrap_or("no CRL")
                    ),
                }
                print_not_checked(&out, false);
            }
            Outcome::Rejected(_) => {
                println!("rejected");
                for r in &reasons {
                    println!("  {}: {}", r.code, r.message);
                }
                // What the verdict would not have vouched for had nothing failed.
                print_not_checked(&out, true);
            }
            Outcome::Error(r) => eprintln!("error: {}", r.message),
        }
    }
    ExitCode::from(code)
}

/// Prints the verdict's `not_checked` entries, one line each (revocation only with
/// `with_revocation`: an accepted verdict names it on a line of its own).
fn print_not_checked(out: &Value, with_revocation: bool) {
    for n in out["not_checked"].as_array().into_iter().flatten() {
        if with_revocation || n["check"] != "revocation" {
            println!(
                "  not checked: {} ({})",
                n["check"].as_str().unwrap_or_default(),
                n["why"].as_str().unwrap_or_default()
            );
        }
    }
}

/// Collateral that is neither given nor obtainable: we could not verify.
#[derive(Debug)]
struct MissingCollateral(String);

impl std::fmt::Display for MissingCollateral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "missing collateral: {}", self.0)
    }
}

impl std::error::Error for MissingCollateral {}

fn missing(what: &str) -> anyhow::Error {
    MissingCollateral(what.to_owned()).into()
}

/// A stable code for the error that stopped verification (the verdict is `error`).
fn error_code(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if cause.is::<MissingCollateral>() || cause.is::<snp::collateral::CollateralError>() {
            return "missing_collateral";
        }
        if let Some(v) = cause.downcast_ref::<snp::verify::VerifyError>() {
            return v.code();
        }
        if cause.is::<snp::policy::PolicyError>() {
            return "invalid_policy";
        }
        if cause.is::<snp::input::InputError>()
            || cause.is::<snp::report::ReportError>()
            || cause.is::<snp::cert::CertError>()
            || cause.is::<snp::crl::CrlError>()
            || cause.is::<snp::chain::ChainError>()
            || cause.is::<RootsError>()
        {
            return "malformed_input";
        }
        if cause.is::<std::io::Error>() {
            return "io";
        }
    }
    "usage"
}

pub(crate) fn parse_time(at: Option<&str>) -> Result<i64> {
    match at {
        None => Ok(time::OffsetDateTime::now_utc().unix_timestamp()),
        Some(s) => Ok(time::OffsetDateTime::parse(
            s,
            &time::format_description::well_known::Rfc3339,
        )
        .with_context(|| format!("--at {s:?} is not an RFC 3339 time"))?
        .unix_timestamp()),
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("opencvm/kds");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/opencvm/kds"),
        None => PathBuf::from(".opencvm-kds-cache"),
    }
}

fn fetcher(a: &VerifyArgs) -> Result<Fetcher> {
    a.collateral.fetcher()
}

/// Where AMD collateral (VEKs, chains, CRLs) comes from.
#[derive(Args, Debug)]
pub struct CollateralArgs {
    /// Collateral cache directory (VEKs, chains, CRLs from AMD KDS).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Never use the network: collateral comes from the arguments or the cache.
    #[arg(long)]
    offline: bool,
    /// KDS base URL.
    #[arg(long, default_value = kds::KDS_BASE_URL, hide = true)]
    kds_url: String,
}

impl CollateralArgs {
    /// The cache (or the user's default), online through KDS unless `--offline`.
    pub(crate) fn fetcher(&self) -> Result<Fetcher> {
        collateral_fetcher(self.cache.as_deref(), self.offline, &self.kds_url)
    }
}

fn collateral_fetcher(cache: Option<&Path>, offline: bool, kds_url: &str) -> Result<Fetcher> {
    let dir = cache
        .map(Path::to_path_buf)
        .unwrap_or_else(default_cache_dir);
    let cache =
        CollateralCache::open(&dir).with_context(|| format!("opening cache {}", dir.display()))?;
    if offline {
        return Ok(Fetcher::offline(cache));
    }
    let config = OnlineConfig {
        base_url: kds_url.to_string(),
        timeout: Duration::from_secs(10),
        ..OnlineConfig::default()
    };
    Ok(Fetcher::online(cache, config)?)
}

/// The collateral for `report`: what the command line gives (`--vek`, `--chain`, a cert
/// table, `--crl`), then the cache and KDS, through the same lookup the attestation
/// service uses; `root_crls` are the CRLs of pinned emulator roots.
fn collect_collateral(
    a: &VerifyArgs,
    report: &AttestationReport,
    root_crls: &RootCrls,
    at: i64,
) -> Result<snp::lookup::Collateral> {
    let mut certs: Vec<AmdCert> = Vec::new();
    for path in a.vek.iter().chain(a.chain.iter()) {
        certs.extend(
            parse_bundle(&read(path)?).with_context(|| format!("parsing {}", path.display()))?,
        );
    }
    let mut crls = Vec::new();
    for path in &a.crl {
        crls.extend(
            Crl::parse_all(&read(path)?)
                .with_context(|| format!("parsing CRL {}", path.display()))?,
        );
    }
    let fetcher = fetcher(a)?;
    let sources = snp::lookup::Sources {
        certs,
        crls,
        fetcher: Some(&fetcher),
        root_crls: Some(root_crls),
        crl_provider: None,
        product: a.product,
    };
    snp::lookup::lookup(report, &sources, at).map_err(|e| match e {
        e @ (snp::lookup::LookupError::Missing(_)
        | snp::lookup::LookupError::Fetch { .. }
        | snp::lookup::LookupError::Kds(_)
        | snp::lookup::LookupError::Chain(_)) => missing(&e.to_string()),
        e => anyhow::Error::new(e),
    })
}

/// What the verdict did not check, each with why: `{"check", "why"}`.
fn not_checked(
    policy: &Policy,
    revocation: Option<&snp::verify::Revocation>,
    nonce_checked: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let skipped = policy.unchecked();
    if skipped.contains(&"measurement") {
        out.push((
            "measurement",
            "no allowed_measurements in the policy: any launched image is accepted".to_owned(),
        ));
    }
    if skipped.contains(&"report_data") && !nonce_checked {
        out.push((
            "freshness",
            "no expected report_data in the policy and no quote nonce: the evidence may be replayed"
                .to_owned(),
        ));
    }
    if let Some(snp::verify::Revocation::NotChecked { reason }) = revocation {
        out.push(("revocation", reason.clone()));
    }
    if skipped.contains(&"min_tcb") {
        out.push((
            "min_tcb",
            "no min_tcb in the policy: any firmware and microcode level is accepted".to_owned(),
        ));
    }
    out
}

fn verify_inner(a: &VerifyArgs, out: &mut Value) -> Result<Outcome> {
    let at = parse_time(a.at.as_deref())?;
    let ev = load_evidence(&a.report)?;
    let mut policy = match &a.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    if let Evidence::Hcl(_) = &ev {
        policy = policy.for_hcl();
    }
    let report = match a.product {
        Some(p) => ev.report().with_product(p)?,
        None => ev.report().clone(),
    };
    out["report"] = snp::view::report_json(&report);
    if let Evidence::Hcl(h) = &ev {
        add_hcl(out, h);
    }
    let mut anchors = TrustAnchors::amd();
    let mut root_crls = RootCrls::new();
    for path in &a.dangerously_trust_emulator_roots {
        EmulatorRoots::from_pem(&read(path)?)
            .with_context(|| format!("{}", path.display()))?
            .install(&mut anchors, &mut root_crls);
    }
    let collateral = collect_collateral(a, &report, &root_crls, at)?;
    for path in &a.dangerously_trust_ark {
        let ark = AmdCert::from_der_or_pem(&read(path)?)?;
        let product = ark
            .subject_cn()
            .strip_prefix("ARK-")
            .and_then(|p| p.parse::<Product>().ok())
            .ok_or_else(|| anyhow!("{} is not an ARK-<product> certificate", path.display()))?;
        anchors.dangerous_add_root(product, ark.sha256(), &path.display().to_string());
    }
    let verifier = Verifier::new(anchors);
    let verified = match verifier.verify_collateral(&report, &collateral, at) {
        Ok(v) => v,
        Err(e) if e.is_collateral_problem() => {
            return Err(anyhow::Error::new(e).context("could not verify"));
        }
        Err(e) => {
            // Rejected before the policy ran: what the policy leaves open is listed too
            // (the revocation state is not known here, so it is not listed).
            out["not_checked"] = not_checked(&policy, None, false)
                .into_iter()
                .map(|(check, why)| json!({ "check": check, "why": why }))
                .collect();
            return Ok(Outcome::Rejected(vec![Reason {
                code: e.code().into(),
                message: e.to_string(),
            }]));
        }
    };
    let vek = &collateral.vek;
    out["report"] = snp::view::report_json(verified.report());
    out["signer"] = json!(vek.kind().name());
    out["trust"] = match verified.trust() {
        RootTrust::Amd => json!("amd"),
        RootTrust::Emulated => json!("emulated"),
        RootTrust::Dangerous { label } => json!(format!("dangerous:{label}")),
    };
    out["emulated"] = json!(!verified.trust().is_amd());
    out["revocation"] = json!(verified.revocation().name());
    out["revocation_detail"] = match verified.revocation() {
        snp::verify::Revocation::Checked { crl_numbers } => json!({ "crl_numbers": crl_numbers }),
        snp::verify::Revocation::NotChecked { reason } => json!({ "reason": reason }),
    };
    let mut reasons: Vec<Reason> = policy
        .evaluate(&verified)
        .into_iter()
        .map(|v| Reason {
            code: v.code.into(),
            message: v.message,
        })
        .collect();
    if let Evidence::Hcl(h) = &ev
        && !h.runtime_data_bound()
    {
        reasons.push(Reason {
            code: "runtime_data_unbound".into(),
            message: "REPORT_DATA is not the hash of the runtime claims".into(),
        });
    }
    if let Some(msg) = &a.quote {
        let Evidence::Hcl(h) = &ev else {
            bail!("--quote needs an HCL report: the attestation key comes from its runtime claims");
        };
        reasons.extend(crate::evidence::quote::check(a, msg, h, out)?);
    }
    let nonce_checked = out["quote"]["nonce_checked"].as_bool() == Some(true);
    out["not_checked"] = not_checked(&policy, Some(verified.revocation()), nonce_checked)
        .into_iter()
        .map(|(check, why)| json!({ "check": check, "why": why }))
        .collect();
    Ok(if reasons.is_empty() {
        Outcome::Accepted
    } else {
        Outcome::Rejected(reasons)
    })
}

mod quote {
    //! Checking a TPM quote against the attestation key in HCL runtime claims.
    use super::*;
    use tpm_quote::{PcrValues, PublicKey, RsaPublicKey, Signature, verify_quote};

    /// Verifies the quote given by `--quote`/`--quote-sig` with `HCLAkPub`; a failed
    /// check is a rejection reason, unreadable inputs are errors.
    pub(super) fn check(
        a: &VerifyArgs,
        msg: &Path,
        h: &HclReport,
        out: &mut Value,
    ) -> Result<Vec<Reason>> {
        let message = read(msg)?;
        let sig_path = a
            .quote_sig
            .as_deref()
            .ok_or_else(|| anyhow!("--quote needs --quote-sig"))?;
        let signature = Signature::parse_auto(&read(sig_path)?)
            .with_context(|| format!("parsing quote signature {}", sig_path.display()))?;
        let (n, e) = h
            .rsa_key_components("HCLAkPub")
            .ok_or_else(|| anyhow!("the HCL runtime claims hold no RSA HCLAkPub key"))?;
        let key = PublicKey::Rsa(RsaPublicKey::from_jwk_components(n, e).context("HCLAkPub")?);
        let nonce = match &a.nonce {
            Some(hexstr) => Some(hex::decode(hexstr.trim()).context("--nonce is not hex")?),
            None => None,
        };
        let pcrs = match &a.pcrs {
            Some(p) => Some(
                PcrValues::from_json_str(&String::from_utf8_lossy(&read(p)?))
                    .with_context(|| format!("parsing PCR values {}", p.display()))?,
            ),
            None => None,
        };
        match verify_quote(&message, &signature, &key, nonce.as_deref(), pcrs.as_ref()) {
            Ok(v) => {
                // The PCRs whose values were checked against the quote, by bank.
                let mut checked = serde_json::Map::new();
                for (alg, index, _) in v.pcrs().iter().flat_map(|p| p.iter()) {
                    let bank = checked
                        .entry(alg.name().to_owned())
                        .or_insert_with(|| json!([]));
                    if let Some(list) = bank.as_array_mut() {
                        list.push(json!(index));
                    }
                }
                out["quote"] = json!({
                    "verified": true,
                    "nonce": hex::encode(v.nonce()),
                    "nonce_checked": v.nonce_checked(),
                    "pcr_digest": hex::encode(v.quote().pcr_digest()),
                    "pcrs_checked": checked,
                });
                Ok(Vec::new())
            }
            Err(e) => {
                out["quote"] = json!({ "verified": false });
                Ok(vec![Reason {
                    code: format!("quote.{}", e.code()),
                    message: format!("TPM quote: {e}"),
                }])
            }
        }
    }
}
