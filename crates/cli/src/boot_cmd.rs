//! `cvm boot` (Secure Boot: image verification, shim's embedded trust) and
//! `cvm eventlog` (TCG event logs: show, replay).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use boot::esl::{OPENCVM_OWNER, parse_guid, read_signature_db};
use boot::sbat::Level;
use boot::shim::ShimTrust;
use boot::varstore::VariableStore;
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
    /// A VM's UEFI variable store: create from a template, show, export to and import
    /// from OVMF.
    #[command(subcommand)]
    Vars(VarsCommand),
    /// Predict PCR 7 for a VM with this variable store booting this disk, before it
    /// first boots (to seal a disk key to it).
    Predict {
        /// The store (or --template for a store made from a built-in template).
        #[command(flatten)]
        at: StoreArgs,
        /// A built-in template instead of a store.
        #[arg(long, conflicts_with_all = ["store", "vmgs"])]
        template: Option<String>,
        /// The raw disk image (GPT with an EFI system partition).
        #[arg(long, required_unless_present = "loader")]
        image: Option<PathBuf>,
        /// The first-stage boot loader itself, instead of a disk.
        #[arg(long, conflicts_with = "image")]
        loader: Option<PathBuf>,
        /// With --loader shim: the second stage it loads.
        #[arg(long, requires = "loader")]
        second_stage: Option<PathBuf>,
        /// The kernel GRUB boots: also predict PCR 4 (shim → GRUB → kernel chains).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Boot options firmware fails to load before the disk (PCR 4 counts them;
        /// QEMU's q35 machine has a CD-ROM drive OVMF tries first).
        #[arg(long, default_value_t = 1)]
        failed_boot_attempts: u32,
        /// Print the prediction (values, chain, events) as JSON.
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

/// Where a VM's UEFI variable store lives: a JSON file (QEMU `uefi-vars` format) or
/// the VM's VMGS file (file 1, BIOS_NVRAM).
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The store as a JSON file.
    #[arg(long, conflicts_with = "vmgs")]
    store: Option<PathBuf>,
    /// The VM's VMGS file (the store is its BIOS_NVRAM file).
    #[arg(long)]
    vmgs: Option<PathBuf>,
    /// The datastore key of an encrypted VMGS (32 bytes).
    #[arg(long, requires = "vmgs")]
    key_file: Option<PathBuf>,
}

/// `cvm boot vars`.
#[derive(Debug, Subcommand)]
pub enum VarsCommand {
    /// Create a VM's variable store from a template, Secure Boot on.
    ///
    /// Templates: `microsoft` (Windows and shim-signed Linux), `linux` (shim-signed
    /// Linux only); or a custom one from --pk, --kek, --db (and --dbx).
    Create {
        #[command(flatten)]
        at: StoreArgs,
        /// A built-in template.
        #[arg(long, conflicts_with_all = ["pk", "kek", "db"])]
        template: Option<String>,
        /// Custom template: the platform key (one certificate, PEM or DER).
        #[arg(long, requires_all = ["kek", "db"])]
        pk: Option<PathBuf>,
        /// Custom template: key exchange keys (certificates or signature lists). Repeat.
        #[arg(long)]
        kek: Vec<PathBuf>,
        /// Custom template: allowed signatures. Repeat.
        #[arg(long)]
        db: Vec<PathBuf>,
        /// Forbidden signatures (custom templates; built-in ones carry Microsoft's dbx).
        #[arg(long)]
        dbx: Vec<PathBuf>,
        /// Owner GUID of entries read from bare certificates.
        #[arg(long, default_value_t = OPENCVM_OWNER.to_string())]
        owner: String,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
    },
    /// List the variables and what PK, KEK, db and dbx hold.
    Show {
        #[command(flatten)]
        at: StoreArgs,
        /// Read an OVMF variable store image instead.
        #[arg(long, conflicts_with_all = ["store", "vmgs"])]
        ovmf: Option<PathBuf>,
    },
    /// Write the store as an OVMF variable store image (OVMF_VARS.fd layout) for
    /// QEMU's second pflash drive; OVMF then enforces exactly this store's db/dbx.
    Export {
        #[command(flatten)]
        at: StoreArgs,
        /// The image to write.
        #[arg(long)]
        ovmf: PathBuf,
        /// An empty variable image of the firmware build the VM runs.
        #[arg(long, default_value = "/usr/share/OVMF/OVMF_VARS_4M.fd")]
        base: PathBuf,
    },
    /// Apply a signed update of PK, KEK, db or dbx (EFI_VARIABLE_AUTHENTICATION_2, as
    /// Microsoft publishes dbx updates): verified under the store's PK or KEK as
    /// firmware would, then written.
    Update {
        #[command(flatten)]
        at: StoreArgs,
        /// The variable: PK, KEK, db, dbx or dbt.
        #[arg(long)]
        name: String,
        /// The signed update.
        #[arg(long = "in")]
        input: PathBuf,
        /// Append to the variable (APPEND_WRITE, as dbx updates are signed) instead of
        /// replacing it.
        #[arg(long)]
        append: bool,
    },
    /// Read an OVMF variable store image (after a boot, with what firmware and shim
    /// wrote) into the store.
    Import {
        #[command(flatten)]
        at: StoreArgs,
        /// The image to read.
        #[arg(long)]
        ovmf: PathBuf,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
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
    /// Print the boot claims the log supports: Secure Boot, PK/KEK/db/dbx digests,
    /// authorities, boot applications with the authority that verified each, SBAT
    /// level, kernel command line. They mean something only once the log replays to
    /// PCR values from a verified quote.
    Claims {
        /// The binary log.
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
        BootCommand::Vars(cmd) => finish(vars(cmd)),
        BootCommand::Predict {
            at,
            template,
            image,
            loader,
            second_stage,
            kernel,
            failed_boot_attempts,
            json,
        } => finish(predict(
            &at,
            template.as_deref(),
            (image, loader, second_stage),
            kernel.map(|k| (k, failed_boot_attempts)),
            json,
        )),
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
        EventlogCommand::Claims { file } => read_log(&file).and_then(|log| {
            println!(
                "{}",
                serde_json::to_string_pretty(&boot::claims::from_log(&log))?
            );
            Ok(())
        }),
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

impl StoreArgs {
    fn describe(&self) -> String {
        match (&self.store, &self.vmgs) {
            (Some(p), _) => p.display().to_string(),
            (_, Some(v)) => format!("{} (BIOS_NVRAM)", v.display()),
            _ => "(no store)".into(),
        }
    }

    fn open_vmgs(&self, vmgs: &Path) -> Result<vmgs::Vmgs> {
        let key = self
            .key_file
            .as_deref()
            .map(vmgs::DatastoreKey::from_file)
            .transpose()?;
        let (v, _) =
            vmgs::Vmgs::open_file(vmgs, key.as_ref(), vmgs::OpenOptions { recover: false })
                .with_context(|| format!("opening {}", vmgs.display()))?;
        Ok(v)
    }

    /// The stored bytes, `None` when there is no store yet.
    fn read_raw(&self) -> Result<Option<Vec<u8>>> {
        match (&self.store, &self.vmgs) {
            (Some(p), _) => match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                _ => read_input(p).map(Some),
            },
            (_, Some(v)) => {
                let vmgs = self.open_vmgs(v)?;
                match vmgs.read_file(vmgs::vmgs_format::FileId::BIOS_NVRAM) {
                    Ok(data) => Ok(Some(data.to_vec())),
                    Err(vmgs::VmgsError::NoSuchFile(_)) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            _ => anyhow::bail!("give --store FILE or --vmgs FILE"),
        }
    }

    fn read(&self) -> Result<VariableStore> {
        let raw = self.read_raw()?.with_context(|| {
            format!(
                "{}: no variable store yet (cvm boot vars create)",
                self.describe()
            )
        })?;
        VariableStore::from_json(&raw).with_context(|| self.describe())
    }

    /// Writes the store: a file is replaced atomically (temporary file, fsync, rename);
    /// a VMGS file is written in one crash-safe commit.
    fn write(&self, store: &VariableStore, force: bool) -> Result<()> {
        if !force && self.read_raw()?.is_some() {
            anyhow::bail!(
                "{} already holds a variable store (--force replaces it)",
                self.describe()
            );
        }
        let json = store.to_json();
        match (&self.store, &self.vmgs) {
            (Some(p), _) => write_atomic(p, json.as_bytes()),
            (_, Some(v)) => {
                let mut vmgs = self.open_vmgs(v)?;
                vmgs.write_file(
                    vmgs::vmgs_format::FileId::BIOS_NVRAM,
                    json.as_bytes(),
                    false,
                )?;
                Ok(())
            }
            _ => anyhow::bail!("give --store FILE or --vmgs FILE"),
        }
    }
}

/// Replaces `path` with `data` so that a crash leaves the old or the new contents:
/// written to `path.tmp`, synced, renamed, and the directory synced.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn template_keys(name: &str) -> Result<boot::template::Keys> {
    Ok(boot::template::keys(
        name.parse::<boot::template::Template>()?,
    )?)
}

fn vars(cmd: VarsCommand) -> Result<()> {
    match cmd {
        VarsCommand::Create {
            at,
            template,
            pk,
            kek,
            db,
            dbx,
            owner,
            force,
        } => {
            let keys = match (template, pk) {
                (Some(t), _) => {
                    anyhow::ensure!(
                        dbx.is_empty(),
                        "--dbx is for custom templates (built-in ones carry Microsoft's dbx)"
                    );
                    template_keys(&t)?
                }
                (None, Some(pk)) => boot::template::custom(boot::template::Keys {
                    pk: read_dbs(&[pk], &owner)?,
                    kek: read_dbs(&kek, &owner)?,
                    db: read_dbs(&db, &owner)?,
                    dbx: read_dbs(&dbx, &owner)?,
                })?,
                (None, None) => {
                    anyhow::bail!("give --template microsoft|linux, or --pk, --kek and --db")
                }
            };
            let store = boot::template::store(&keys, boot::authvar::EfiTime::now());
            at.write(&store, force)?;
            println!(
                "created {}: PK {}, KEK {}, db {}, dbx {} entries; Secure Boot on",
                at.describe(),
                keys.pk.entries.len(),
                keys.kek.entries.len(),
                keys.db.entries.len(),
                keys.dbx.entries.len()
            );
            Ok(())
        }
        VarsCommand::Show { at, ovmf } => {
            let store = match ovmf {
                Some(p) => boot::ovmf::read(&read_input(&p)?)
                    .with_context(|| format!("{}", p.display()))?,
                None => at.read()?,
            };
            show_store(&store)
        }
        VarsCommand::Export { at, ovmf, base } => {
            let store = at.read()?;
            let base_bytes = read_input(&base)?;
            let image = boot::ovmf::write(&store, &base_bytes)
                .with_context(|| format!("{}", base.display()))?;
            write_atomic(&ovmf, &image)?;
            println!(
                "wrote {} ({} variables)",
                ovmf.display(),
                store.variables.len()
            );
            Ok(())
        }
        VarsCommand::Update {
            at,
            name,
            input,
            append,
        } => {
            let mut store = at.read()?;
            let attributes = boot::authvar::SECURE_BOOT_ATTRIBUTES
                | if append {
                    boot::authvar::APPEND_WRITE
                } else {
                    0
                };
            let subject = store
                .apply_update(&name, &read_input(&input)?, attributes)
                .with_context(|| format!("{}", input.display()))?;
            at.write(&store, true)?;
            println!(
                "{name} updated ({} entries), signed under {subject:?}",
                store.signature_db(&name)?.entries.len()
            );
            Ok(())
        }
        VarsCommand::Import { at, ovmf, force } => {
            let image = read_input(&ovmf)?;
            if boot::ovmf::pending_write(&image).unwrap_or(false) {
                eprintln!(
                    "warning: {} has a non-empty fault-tolerant-write journal (a write firmware may not have finished); its variable area is read as it stands",
                    ovmf.display()
                );
            }
            let store = boot::ovmf::read(&image).with_context(|| format!("{}", ovmf.display()))?;
            at.write(&store, force)?;
            println!(
                "imported {} variables into {}",
                store.variables.len(),
                at.describe()
            );
            Ok(())
        }
    }
}

fn show_store(store: &VariableStore) -> Result<()> {
    println!(
        "secure boot: {}",
        if store.secure_boot() { "on" } else { "off" }
    );
    for v in &store.variables {
        println!(
            "{} {} attr={:#x} {} bytes",
            v.guid,
            v.name,
            v.attributes,
            v.data.len()
        );
    }
    for name in ["PK", "KEK", "db", "dbx"] {
        let db = store.signature_db(name).with_context(|| name.to_string())?;
        let certs: Vec<String> = db.certificates().map(|(_, c)| c.subject_name()).collect();
        let hashes = db.entries.len() - certs.len();
        println!(
            "{name}: {} certificates {:?}, {hashes} other entries",
            certs.len(),
            certs
        );
    }
    Ok(())
}

fn predict(
    at: &StoreArgs,
    template: Option<&str>,
    (image, loader, second_stage): (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    kernel: Option<(PathBuf, u32)>,
    json: bool,
) -> Result<()> {
    let store = match template {
        Some(t) => boot::template::store(&template_keys(t)?, boot::authvar::EfiTime::now()),
        None => at.read()?,
    };
    let files = match (image, loader) {
        (Some(image), _) => boot::esp::read_boot_files(&image)?,
        (None, Some(loader)) => boot::esp::BootFiles {
            loader: read_input(&loader)?,
            second_stage: second_stage.as_deref().map(read_input).transpose()?,
        },
        (None, None) => anyhow::bail!("give --image DISK or --loader FILE"),
    };
    let mut prediction = boot::predict::predict(&store, &files)?;
    if let Some((kernel, attempts)) = kernel {
        let kernel = read_input(&kernel)?;
        prediction.pcr4 = Some(boot::predict::predict_pcr4(&files, &kernel, attempts)?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&prediction)?);
    } else {
        for stage in &prediction.chain {
            println!(
                "{}: {} verified by {}",
                stage.stage, stage.sha256, stage.verified_by
            );
        }
        for (bank, value) in &prediction.pcr7 {
            println!("pcr7 {bank}: {value}");
        }
        for (bank, value) in prediction.pcr4.iter().flatten() {
            println!("pcr4 {bank}: {value}");
        }
    }
    Ok(())
}
