//! `cvm disk ...`: LUKS2 images that cryptsetup and systemd open, over the `disk`
//! crate (ADR 0013).
//!
//! A passphrase file is used whole, byte for byte, as cryptsetup's `--key-file` is (a
//! trailing newline is part of the passphrase). Exit codes: 0 success; 1 when no
//! keyslot opens with the passphrase; 2 for everything else.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use disk::{DecryptOptions, EncryptOptions, KdfChoice, Luks2, Outcome};
use zeroize::Zeroizing;

/// `cvm disk ...`
#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Encrypt a raw image into a new LUKS2 image (aes-xts-plain64, 512-bit key).
    ///
    /// The output is written as OUT.partial and renamed when every byte is
    /// encrypted and flushed; after a crash, the same command resumes it.
    Encrypt {
        #[command(flatten)]
        job: EncryptArgs,
        /// The volume label.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Encrypt a whole GPT OS disk image (raw, 512-byte sectors): boot partitions
    /// (EFI system, BIOS boot, XBOOTLDR) stay byte-identical, every other partition
    /// becomes LUKS2, keyslot 0 under the passphrase.
    ///
    /// Each encrypted partition grows by 16 MiB for its header, later partitions
    /// move up, and the disk grows to match. Prints a JSON report (which partitions
    /// are encrypted, their LUKS2 UUIDs, what protects them) as the last line on
    /// stdout. Crash-safe and resumable like `encrypt`.
    EncryptOs {
        #[command(flatten)]
        job: EncryptArgs,
        /// Also bind every encrypted partition to this vTPM (tcp:HOST:PORT or
        /// unix:PATH), as `enroll-tpm2` does; the passphrase stays as the recovery
        /// key.
        #[arg(long)]
        vtpm: Option<String>,
        /// The PCRs of that binding (see `enroll-tpm2`).
        #[arg(long, default_value = "7", requires = "vtpm")]
        tpm2_pcrs: String,
    },
    /// Decrypt a LUKS2 image (opencvm's or cryptsetup's) into a raw image.
    Decrypt {
        /// The LUKS2 image (or the data of a detached header).
        #[arg(long = "in")]
        input: PathBuf,
        /// The raw image to make (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A passphrase of one keyslot: the file's bytes, whole.
        #[arg(long, required_unless_present = "vtpm", conflicts_with = "vtpm")]
        passphrase_file: Option<PathBuf>,
        /// Or: unseal the keyslot of the image's systemd-tpm2 token through this vTPM
        /// (tcp:HOST:PORT or unix:PATH).
        #[arg(long)]
        vtpm: Option<String>,
        /// A detached LUKS2 header.
        #[arg(long)]
        header: Option<PathBuf>,
        /// Try only this keyslot.
        #[arg(long)]
        key_slot: Option<u32>,
        /// Decryption threads (default: every CPU).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Show a LUKS2 header: keyslots, segment, tokens. Needs no passphrase.
    Info {
        /// The LUKS2 image or detached header.
        image: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bind the image to a VM's vTPM: seal a new secret to it (optionally to PCR
    /// values) and add a keyslot for it with a `systemd-tpm2` token, as
    /// systemd-cryptenroll does, so that systemd-cryptsetup in the guest unlocks the
    /// disk with `tpm2-device=auto` and `cvm disk decrypt --vtpm` through the vTPM.
    EnrollTpm2 {
        /// The LUKS2 image or detached header.
        image: PathBuf,
        /// An existing passphrase (to recover the volume key).
        #[arg(long)]
        passphrase_file: PathBuf,
        /// The vTPM's data channel: tcp:HOST:PORT or unix:PATH (`cvm vtpm run`,
        /// swtpm protocol).
        #[arg(long)]
        vtpm: String,
        /// PCRs of the policy (SHA-256 bank), systemd-cryptenroll's syntax: "7"
        /// seals to PCR 7 as it is now; "7:sha256=HEX" to the value PCR 7 will have
        /// (what a VM's firmware will measure); "" to the vTPM alone.
        #[arg(long, default_value = "7")]
        tpm2_pcrs: String,
    },
    /// Add a keyslot with a new passphrase, opened with an existing one.
    AddKey {
        /// The LUKS2 image or detached header.
        image: PathBuf,
        /// An existing passphrase.
        #[arg(long)]
        passphrase_file: PathBuf,
        /// The new passphrase.
        #[arg(long)]
        new_passphrase_file: PathBuf,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

/// What `encrypt` and `encrypt-os` share.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// The raw image or disk (a whole number of sectors).
    #[arg(long = "in")]
    input: PathBuf,
    /// The image to make (never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// The passphrase of keyslot 0: the file's bytes, whole.
    #[arg(long)]
    passphrase_file: PathBuf,
    /// The data sector size: 512, 1024, 2048 or 4096 (the data's size must be a
    /// multiple of it, and a filesystem on it needs blocks at least as large).
    #[arg(long, default_value_t = 4096)]
    sector_size: u32,
    #[command(flatten)]
    kdf: KdfArgs,
    /// Encryption threads (default: every CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Flush and record progress every this many MiB: the most a crash makes the
    /// next run redo.
    #[arg(long, default_value_t = 256)]
    checkpoint_mib: u64,
    #[command(flatten)]
    progress: ProgressArgs,
}

impl EncryptArgs {
    fn options(&self, label: String) -> EncryptOptions {
        EncryptOptions {
            sector_size: self.sector_size,
            kdf: self.kdf.choice(),
            threads: thread_count(self.threads),
            label,
            checkpoint: self.checkpoint_mib.max(1) << 20,
            ..EncryptOptions::default()
        }
    }
}

/// The KDF of a new keyslot.
#[derive(Args, Debug)]
pub struct KdfArgs {
    /// The key derivation function.
    #[arg(long, value_enum, default_value_t = KdfName::Argon2id)]
    kdf: KdfName,
    /// Argon2id passes.
    #[arg(long, default_value_t = 4)]
    argon2_time: u32,
    /// Argon2id memory in KiB (default 256 MiB: a small guest must be able to afford
    /// it when it opens its disk).
    #[arg(long, default_value_t = 256 << 10)]
    argon2_memory: u32,
    /// Argon2id lanes.
    #[arg(long, default_value_t = 2)]
    argon2_cpus: u32,
    /// PBKDF2 iterations (default: about two seconds' worth on this machine).
    #[arg(long)]
    pbkdf2_iterations: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum KdfName {
    Argon2id,
    Pbkdf2,
}

impl KdfArgs {
    fn choice(&self) -> KdfChoice {
        match self.kdf {
            KdfName::Argon2id => KdfChoice::Argon2id {
                time: self.argon2_time,
                memory: self.argon2_memory,
                cpus: self.argon2_cpus,
            },
            KdfName::Pbkdf2 => match self.pbkdf2_iterations {
                Some(iterations) => KdfChoice::Pbkdf2 { iterations },
                None => KdfChoice::pbkdf2_calibrated(),
            },
        }
    }
}

/// How progress is shown.
#[derive(Args, Debug)]
pub struct ProgressArgs {
    /// `bar` on a terminal (stderr), `json` lines on stdout for a control plane
    /// (`{"done":N,"total":M}`), or `none`. Default: a bar when stderr is a terminal.
    #[arg(long, value_enum)]
    progress: Option<ProgressMode>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressMode {
    Bar,
    Json,
    None,
}

/// Reports progress: a bar, or a JSON line per batch.
struct Reporter {
    mode: ProgressMode,
    last: Option<Instant>,
}

impl Reporter {
    fn new(args: &ProgressArgs) -> Self {
        let mode = args.progress.unwrap_or(if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::None
        });
        Self { mode, last: None }
    }

    fn report(&mut self, done: u64, total: u64) {
        let end = done >= total;
        // A bar is redrawn at most ten times a second; the JSON stream, read by a
        // program, gets every batch.
        if self.mode == ProgressMode::Bar
            && !end
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        match self.mode {
            ProgressMode::None => {}
            ProgressMode::Json => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", serde_json::json!({"done": done, "total": total}));
                let _ = out.flush();
            }
            ProgressMode::Bar => {
                let pct = (done.saturating_mul(100))
                    .checked_div(total)
                    .unwrap_or(100)
                    .min(100);
                let filled = (pct / 2) as usize;
                eprint!(
                    "\r[{}{}] {pct:3}% {} / {} MiB",
                    "#".repeat(filled),
                    " ".repeat(50 - filled),
                    done >> 20,
                    total >> 20
                );
                if end {
                    eprintln!();
                }
            }
        }
    }
}

/// Runs `cvm disk ...`.
pub fn run(cmd: DiskCommand) -> ExitCode {
    let r = match cmd {
        DiskCommand::Encrypt { job, label } => encrypt(&job, &job.options(label)),
        DiskCommand::EncryptOs {
            job,
            vtpm,
            tpm2_pcrs,
        } => encrypt_os(
            &job,
            &job.options(String::new()),
            vtpm.map(|v| (v, tpm2_pcrs)),
        ),
        DiskCommand::Decrypt {
            input,
            out,
            passphrase_file,
            vtpm,
            header,
            key_slot,
            threads,
            progress,
        } => {
            let opts = DecryptOptions {
                header,
                keyslot: key_slot,
                threads: thread_count(threads),
            };
            decrypt(
                &input,
                &out,
                passphrase_file.as_deref(),
                vtpm.as_deref(),
                &opts,
                &progress,
            )
        }
        DiskCommand::EnrollTpm2 {
            image,
            passphrase_file,
            vtpm,
            tpm2_pcrs,
        } => enroll_tpm2(&image, &passphrase_file, &vtpm, &tpm2_pcrs),
        DiskCommand::Info { image, json } => info(&image, json),
        DiskCommand::AddKey {
            image,
            passphrase_file,
            new_passphrase_file,
            kdf,
        } => add_key(&image, &passphrase_file, &new_passphrase_file, &kdf),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            let wrong = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<disk::Error>(),
                    Some(disk::Error::WrongPassphrase)
                )
            });
            ExitCode::from(if wrong { 1 } else { 2 })
        }
    }
}

fn passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let p = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("reading the passphrase file {}", path.display()))?,
    );
    anyhow::ensure!(
        !p.is_empty(),
        "the passphrase file {} is empty",
        path.display()
    );
    Ok(p)
}

fn thread_count(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn summary(verb: &str, o: &Outcome, took: Duration) {
    let secs = took.as_secs_f64().max(1e-9);
    let resumed = if o.resumed_from > 0 {
        format!(" (resumed at {} MiB)", o.resumed_from >> 20)
    } else {
        String::new()
    };
    eprintln!(
        "{verb} {} MiB in {:.2} s ({:.0} MiB/s){resumed}",
        o.processed >> 20,
        secs,
        o.processed as f64 / 1048576.0 / secs
    );
}

fn encrypt(job: &EncryptArgs, opts: &EncryptOptions) -> Result<()> {
    let (input, out) = (&job.input, &job.out);
    let pass = passphrase(&job.passphrase_file)?;
    let progress = &job.progress;
    let mut reporter = Reporter::new(progress);
    let start = Instant::now();
    let o = disk::stream::encrypt(input, out, &pass, opts, &mut |d, t| reporter.report(d, t))
        .with_context(|| format!("encrypting {} into {}", input.display(), out.display()))?;
    summary("encrypted", &o, start.elapsed());
    Ok(())
}

fn encrypt_os(
    job: &EncryptArgs,
    opts: &EncryptOptions,
    vtpm: Option<(String, String)>,
) -> Result<()> {
    let (input, out) = (&job.input, &job.out);
    let pass = passphrase(&job.passphrase_file)?;
    let progress = &job.progress;
    let mut reporter = Reporter::new(progress);
    let start = Instant::now();
    let (mut tpm, pcrs) = match &vtpm {
        Some((endpoint, pcrs)) => (
            Some(disk::tpm2::connect(endpoint)?),
            Some(disk::tpm2::PcrBinding::parse(pcrs)?),
        ),
        None => (None, None),
    };
    let binding = match (tpm.as_deref_mut(), pcrs.as_ref()) {
        (Some(t), Some(p)) => Some((t as &mut dyn disk::tpm2::Tpm, p)),
        _ => None,
    };
    let report = disk::os::encrypt_os(input, out, &pass, opts, binding, &mut |d, t| {
        reporter.report(d, t)
    })
    .with_context(|| {
        format!(
            "encrypting the disk {} into {}",
            input.display(),
            out.display()
        )
    })?;
    let o = Outcome {
        processed: report.processed,
        total: report.processed,
        resumed_from: 0,
    };
    summary("encrypted or copied (in this run)", &o, start.elapsed());
    warn_unmeasured(&report.unmeasured_pcrs);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn decrypt(
    input: &Path,
    out: &Path,
    passphrase_file: Option<&Path>,
    vtpm: Option<&str>,
    opts: &DecryptOptions,
    progress: &ProgressArgs,
) -> Result<()> {
    let mut reporter = Reporter::new(progress);
    let start = Instant::now();
    let o = match (passphrase_file, vtpm) {
        (Some(f), _) => {
            let pass = passphrase(f)?;
            disk::stream::decrypt(input, out, &pass, opts, &mut |d, t| reporter.report(d, t))
        }
        (None, Some(endpoint)) => {
            let mut tpm = disk::tpm2::connect(endpoint)?;
            disk::stream::decrypt_with(
                input,
                out,
                opts,
                &mut |d, t| reporter.report(d, t),
                &mut |luks, file| disk::tpm2::unlock(luks, file, tpm.as_mut()),
            )
        }
        (None, None) => anyhow::bail!("give --passphrase-file or --vtpm"),
    }
    .with_context(|| format!("decrypting {} into {}", input.display(), out.display()))?;
    summary("decrypted", &o, start.elapsed());
    Ok(())
}

fn enroll_tpm2(image: &Path, passphrase_file: &Path, vtpm: &str, pcrs: &str) -> Result<()> {
    let binding = disk::tpm2::PcrBinding::parse(pcrs)?;
    let (file, mut luks, key) = open_unlocked(image, passphrase_file)?;
    let mut tpm = disk::tpm2::connect(vtpm)?;
    let done = disk::tpm2::enroll(&mut luks, &file, &key, tpm.as_mut(), &binding)?;
    println!(
        "enrolled the vTPM as keyslot {} (token {}, PCRs {:?})",
        done.keyslot, done.token, binding.pcrs
    );
    warn_unmeasured(&done.unmeasured);
    Ok(())
}

fn info(image: &Path, json: bool) -> Result<()> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let info = Luks2::read(&file)
        .with_context(|| format!("reading {}", image.display()))?
        .info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("LUKS2 image {}", image.display());
    println!("uuid:          {}", info.uuid);
    if !info.label.is_empty() {
        println!("label:         {}", info.label);
    }
    println!(
        "metadata:      {} bytes per copy, seqid {}",
        info.metadata_size, info.seqid
    );
    println!("keyslots area: {} bytes", info.keyslots_size);
    println!(
        "data:          offset {}, {}, {}-byte sectors",
        info.data_offset, info.cipher, info.sector_size
    );
    if info.incomplete {
        println!("state:         encryption unfinished (resume with the same `cvm disk encrypt`)");
    }
    for k in &info.keyslots {
        println!(
            "keyslot {}:     {} ({}-bit key, priority {})",
            k.id, k.kdf, k.key_bits, k.priority
        );
    }
    for t in &info.tokens {
        println!(
            "token {}:       {} (keyslots {})",
            t.id,
            t.kind,
            t.keyslots.join(",")
        );
    }
    Ok(())
}

fn add_key(image: &Path, passphrase_file: &Path, new_file: &Path, kdf: &KdfArgs) -> Result<()> {
    let new = passphrase(new_file)?;
    let (file, mut luks, key) = open_unlocked(image, passphrase_file)?;
    let n = luks.add_keyslot(&file, &key, &new, kdf.choice())?;
    println!("added keyslot {n}");
    Ok(())
}

/// Opens a finished image for writing and recovers its volume key with a passphrase.
fn open_unlocked(image: &Path, passphrase_file: &Path) -> Result<(File, Luks2, disk::VolumeKey)> {
    let pass = passphrase(passphrase_file)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let luks = Luks2::read(&file).with_context(|| format!("reading {}", image.display()))?;
    anyhow::ensure!(!luks.metadata.incomplete(), disk::Error::Incomplete);
    let (_, key) = luks.unlock(&file, &pass, None)?;
    Ok((file, luks, key))
}

/// Warns that PCRs were sealed to their unmeasured (all-zero) values.
fn warn_unmeasured(pcrs: &[u32]) {
    if !pcrs.is_empty() {
        eprintln!(
            "warning: PCRs {pcrs:?} are all zero in the vTPM (nothing measured yet); the disk opens \
             through the vTPM only while they stay so. A guest's firmware measures PCR 7 at \
             boot: for a disk that must open there, give the value it will have \
             (--tpm2-pcrs 7:sha256=HEX)."
        );
    }
}
