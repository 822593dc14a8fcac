//! `cvm boot` (Secure Boot: image verification, shim's embedded trust) and
//! `cvm eventlog` (TCG event logs: show, replay).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use boot::esl::{OPENCVM_OWNER, parse_guid, read_signature_db};
use boot::sbat::Level;
use boot::shim::ShimTrust;
use boot::{SignatureDb, verify_image};
use clap::Subcommand;
use tcg_eventlog::{EventLog, EventType, UefiVariableData};

use crate::describe;

/// Largest file these commands read (a signed kernel is under 16 MiB).
const MAX_INPUT: u64 = 256 << 20;

/// `cvm boot`.
#[derive(Debug, Subcommand)]
pub enum BootCommand {
    /// Decide as firmware would whether an EFI image runs with this db and dbx.
    ///
    /// Exit status: 0 verified, 1 refused (the reason is printed), 2 usage error or
    /// unreadable or malformed input.
    VerifyImage {
        /// The PE/COFF image (boot loader, shim, GRUB, kernel).
        image: PathBuf,
        /// Allowed signatures: an EFI signature list, an authenticated update of one,
        /// or X.509 certificates (PEM, or one DER). Repeat to combine.
        #[arg(long, required = true)]
        db: Vec<PathBuf>,
        /// Forbidden signatures, in the same forms. Repeat to combine.
        #[arg(long)]
        dbx: Vec<PathBuf>,
        /// An SBAT revocation level (`sbat,1,DATE` then `component,generation` records)
        /// to check the image's `.sbat` section against, as shim does.
        #[arg(long)]
        sbat_level: Option<PathBuf>,
        /// Signature owner GUID given to entries read from bare certificates.
        #[arg(long, default_value_t = OPENCVM_OWNER.to_string())]
        owner: String,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a shim binary trusts: its vendor certificate, vendor dbx and SBAT levels.
    Shim {
        /// The shim image (e.g. `shimx64.efi.signed`).
        image: PathBuf,
        /// Write the vendor certificate (DER) or signature list here.
        #[arg(long)]
        vendor_cert: Option<PathBuf>,
        /// Write shim's "latest" SBAT level here (for `verify-image --sbat-level`).
        #[arg(long)]
        sbat_latest: Option<PathBuf>,
        /// Write shim's "previous" SBAT level here.
        #[arg(long)]
        sbat_previous: Option<PathBuf>,
    },
}

/// `cvm eventlog`.
#[derive(Debug, Subcommand)]
pub enum EventlogCommand {
    /// Print each event: index, PCR, type, SHA-256 digest and what its data names.
    Show {
        /// The binary log (`binary_bios_measurements`).
        file: PathBuf,
    },
    /// Replay the log and print the PCR values it implies, per bank.
    Replay {
        /// The binary log.
        file: PathBuf,
        /// `{"pcrs": {"sha256": {"0": "<hex>", …}, …}}`.
        #[arg(long)]
        json: bool,
    },
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_INPUT,
        "{} is {} bytes, over the {MAX_INPUT}-byte limit",
        path.display(),
        meta.len()
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_dbs(paths: &[PathBuf], owner: &str) -> Result<SignatureDb> {
    let owner = parse_guid(owner)?;
    let mut db = SignatureDb::default();
    for p in paths {
        let bytes = read_input(p)?;
        let part = read_signature_db(&bytes, owner)
            .with_context(|| format!("{}: not a signature list or certificate", p.display()))?;
        db.entries.extend(part.entries);
    }
    Ok(db)
}

/// Runs `cvm boot`.
pub fn run(cmd: BootCommand) -> ExitCode {
    match cmd {
        BootCommand::VerifyImage {
            image,
            db,
            dbx,
            sbat_level,
            owner,
            json,
        } => match verify(&image, &db, &dbx, sbat_level.as_deref(), &owner, json) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {}", describe(&e));
                ExitCode::from(2)
            }
        },
        BootCommand::Shim {
            image,
            vendor_cert,
            sbat_latest,
            sbat_previous,
        } => finish(shim(&image, vendor_cert, sbat_latest, sbat_previous)),
    }
}

fn finish(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

fn verify(
    image: &Path,
    db: &[PathBuf],
    dbx: &[PathBuf],
    level: Option<&Path>,
    owner: &str,
    json: bool,
) -> Result<bool> {
    let bytes = read_input(image)?;
    let db = read_dbs(db, owner)?;
    let dbx = read_dbs(dbx, owner)?;
    let level = level
        .map(|p| -> Result<Level> {
            let text = read_input(p)?;
            Level::parse(&text).with_context(|| format!("{}", p.display()))
        })
        .transpose()?;
    let verdict = verify_image(&bytes, &db, &dbx, level.as_ref())
        .with_context(|| format!("{}", image.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        for (i, s) in verdict.signatures.iter().enumerate() {
            let outcome = match &s.outcome {
                boot::verify::SignatureOutcome::Db { anchor, .. } => {
                    format!("chains to db: {anchor}")
                }
                boot::verify::SignatureOutcome::Dbx { certificate, .. } => {
                    format!("revoked by dbx: {certificate}")
                }
                boot::verify::SignatureOutcome::NoChain => "does not chain to db".into(),
                boot::verify::SignatureOutcome::Invalid { reason } => format!("invalid: {reason}"),
            };
            println!(
                "signature {}: {} — {outcome}",
                i + 1,
                s.signer.as_deref().unwrap_or("(unreadable)")
            );
        }
        println!("authenticode sha256: {}", verdict.sha256);
        match &verdict.result {
            Ok(boot::Authority::Certificate { subject, .. }) => {
                println!("verified: signed by a chain to {subject:?}")
            }
            Ok(boot::Authority::Hash { db_entry }) => {
                println!("verified: image digest in db (entry {db_entry})")
            }
            Err(refusal) => println!("refused: {refusal}"),
        }
    }
    Ok(verdict.result.is_ok())
}

fn shim(
    image: &Path,
    vendor_cert: Option<PathBuf>,
    latest: Option<PathBuf>,
    previous: Option<PathBuf>,
) -> Result<()> {
    let bytes = read_input(image)?;
    let trust = ShimTrust::parse(&bytes).with_context(|| format!("{}", image.display()))?;
    for (_, cert) in trust.vendor_db.certificates() {
        println!("vendor certificate: {}", cert.subject_name());
    }
    println!("vendor dbx: {} entries", trust.vendor_dbx.entries.len());
    if let Some((prev, last)) = &trust.levels {
        println!("sbat level previous: {}", prev.datestamp);
        println!("sbat level latest: {}", last.datestamp);
    }
    if let Some(out) = vendor_cert {
        std::fs::write(&out, &trust.vendor_cert_raw)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    for (out, pick_latest) in [(latest, true), (previous, false)] {
        let Some(out) = out else { continue };
        let (prev, last) = trust
            .levels
            .as_ref()
            .context("this shim has no .sbatlevel section")?;
        let level = if pick_latest { last } else { prev };
        let mut text = format!("sbat,{},{}\n", level.minimums[0].1, level.datestamp);
        for (name, generation) in &level.minimums[1..] {
            text.push_str(&format!("{name},{generation}\n"));
        }
        std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Runs `cvm eventlog`.
pub fn run_eventlog(cmd: EventlogCommand) -> ExitCode {
    finish(match cmd {
        EventlogCommand::Show { file } => show(&file),
        EventlogCommand::Replay { file, json } => replay(&file, json),
    })
}

fn read_log(file: &Path) -> Result<EventLog> {
    let bytes = read_input(file)?;
    EventLog::parse(&bytes).with_context(|| format!("{}: not a TCG event log", file.display()))
}

fn show(file: &Path) -> Result<()> {
    let log = read_log(file)?;
    println!(
        "{:?} log, banks: {}",
        log.format(),
        log.banks()
            .iter()
            .map(|b| bank_name(*b))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for e in log.events() {
        let digest = e
            .digest(tcg_eventlog::HashAlg::Sha256)
            .or_else(|| e.digests.first().map(|(_, d)| d.as_slice()))
            .map(hex::encode)
            .unwrap_or_default();
        let detail = match e.event_type {
            EventType::EfiVariableDriverConfig
            | EventType::EfiVariableAuthority
            | EventType::EfiVariableBoot
            | EventType::EfiVariableBoot2 => UefiVariableData::parse(&e.data)
                .map(|v| format!("{} {} ({} bytes)", v.guid, v.name, v.data.len()))
                .unwrap_or_else(|_| "(malformed UEFI_VARIABLE_DATA)".into()),
            EventType::EfiAction | EventType::Action | EventType::PostCode | EventType::Ipl => {
                printable(&e.data)
            }
            _ => format!("{} bytes", e.data.len()),
        };
        println!(
            "{:>4} PCR{:<2} {:<36} {} {}",
            e.index,
            e.pcr,
            e.event_type.to_string(),
            digest,
            detail
        );
    }
    Ok(())
}

fn printable(data: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(data)
        .chars()
        .filter(|c| *c != '\0')
        .map(|c| if c.is_control() { '.' } else { c })
        .take(120)
        .collect();
    format!("{text:?}")
}

fn bank_name(alg: tcg_eventlog::HashAlg) -> &'static str {
    match alg {
        tcg_eventlog::HashAlg::Sha1 => "sha1",
        tcg_eventlog::HashAlg::Sha256 => "sha256",
        tcg_eventlog::HashAlg::Sha384 => "sha384",
        tcg_eventlog::HashAlg::Sha512 => "sha512",
    }
}

fn replay(file: &Path, json: bool) -> Result<()> {
    let log = read_log(file)?;
    let pcrs = log.replay();
    let mut banks: std::collections::BTreeMap<&str, serde_json::Map<String, serde_json::Value>> =
        Default::default();
    for (alg, index, value) in pcrs.iter() {
        banks
            .entry(bank_name(alg))
            .or_default()
            .insert(index.to_string(), hex::encode(value).into());
    }
    if json {
        let out = serde_json::json!({ "pcrs": banks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (alg, index, value) in pcrs.iter() {
            println!("{}:{index:<2} {}", bank_name(alg), hex::encode(value));
        }
    }
    Ok(())
}
