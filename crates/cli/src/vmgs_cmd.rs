//! `cvm vmgs ...`: create, inspect, read and write a VM guest state (VMGS) file, over
//! the `vmgs` crate (format: `docs/formats/vmgs.md`).
//!
//! Exit codes: 0 success; 1 when the VMGS is damaged, tampered with or the key is wrong
//! ([`vmgs::VmgsError::is_integrity`]); 2 for usage and I/O errors.

use std::fs::{DirBuilder, File, OpenOptions as FsOpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use vmgs::vmgs_format::{Encryption, FileId, Header};
use vmgs::{DatastoreKey, FileInfo, Inspection, OpenOptions, SlotState, Vmgs, VmgsError};
use zeroize::Zeroizing;

/// `cvm vmgs ...`
#[derive(Subcommand, Debug)]
pub enum VmgsCommand {
    /// Create and format a new VMGS file (an existing file is never overwritten).
    Create {
        /// The file to create (mode 0600).
        file: PathBuf,
        /// Its size in bytes: a multiple of 4096, at least 64 KiB.
        #[arg(long, default_value_t = vmgs::DEFAULT_SIZE)]
        size: u64,
        /// Encrypt under this datastore key (a file of exactly 32 bytes); without it
        /// the VMGS is not encrypted.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Show both header slots and the active file table, without a key.
    ///
    /// Nothing is decrypted and no file's data are checked. With a damaged slot the
    /// active one is the one `--recover` would use. Exit 1 when a header slot or the
    /// table is damaged (after printing what is there).
    Info {
        /// The VMGS file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the files after a full open (every check).
    List {
        #[command(flatten)]
        o: OpenArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read one file's data.
    Read {
        #[command(flatten)]
        o: OpenArgs,
        /// The file id: a number (0-63) or a name such as TPM_NVRAM.
        #[arg(long)]
        file_id: FileId,
        /// Where to write the data (created 0600, never overwritten); `-` for stdout.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write (replace) one file's data in one crash-safe commit.
    Write {
        #[command(flatten)]
        o: OpenArgs,
        /// The file id: a number (1-62) or a name such as TPM_NVRAM.
        #[arg(long)]
        file_id: FileId,
        /// The data; `-` for stdin.
        #[arg(long = "in")]
        input: PathBuf,
        /// Store the file unencrypted in an encrypted VMGS (for data read before the
        /// key is known, such as the key protector).
        #[arg(long)]
        plaintext: bool,
    },
    /// Rotate the datastore key.
    ///
    /// Two commits: a crash between them leaves a file either key opens; afterwards
    /// only the new key does.
    Rekey {
        /// The VMGS file.
        file: PathBuf,
        /// The current datastore key (32 bytes).
        #[arg(long)]
        key_file: PathBuf,
        /// The new datastore key (32 bytes).
        #[arg(long)]
        new_key_file: PathBuf,
    },
    /// Write every file to DIR/<id>-<NAME or id>.bin.
    ///
    /// DIR is created 0700 (an existing one must be 0700), the files 0600; nothing is
    /// overwritten, and every file is read and checked before the first is written.
    CopyOut {
        #[command(flatten)]
        o: OpenArgs,
        /// The output directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// How to open a VMGS for `list`, `read`, `write` and `copy-out`.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The VMGS file.
    file: PathBuf,
    /// The datastore key of an encrypted VMGS (32 bytes).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// When the newest state fails its checks, use the older one if that passes (after
    /// a power loss tore the last commit). Prints a warning saying why.
    #[arg(long)]
    recover: bool,
}

/// Runs a `cvm vmgs` subcommand.
pub fn run(cmd: VmgsCommand) -> ExitCode {
    let r = match cmd {
        VmgsCommand::Create {
            file,
            size,
            key_file,
        } => create(&file, size, key_file.as_deref()),
        VmgsCommand::Info { file, json } => info(&file, json),
        VmgsCommand::List { o, json } => list(&o, json),
        VmgsCommand::Read { o, file_id, out } => read(&o, file_id, &out),
        VmgsCommand::Write {
            o,
            file_id,
            input,
            plaintext,
        } => write(&o, file_id, &input, plaintext),
        VmgsCommand::Rekey {
            file,
            key_file,
            new_key_file,
        } => rekey(&file, &key_file, &new_key_file),
        VmgsCommand::CopyOut { o, dir } => copy_out(&o, &dir),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            let integrity = e.chain().any(|c| {
                c.downcast_ref::<VmgsError>()
                    .is_some_and(VmgsError::is_integrity)
                    || c.is::<Damaged>()
            });
            ExitCode::from(if integrity { 1 } else { 2 })
        }
    }
}

fn key(path: Option<&Path>) -> Result<Option<DatastoreKey>> {
    Ok(path.map(DatastoreKey::from_file).transpose()?)
}

/// Opens the VMGS (every check) and warns on stderr about what `--recover` skipped.
fn open(o: &OpenArgs) -> Result<Vmgs> {
    let key = key(o.key_file.as_deref())?;
    let (v, opened) = Vmgs::open_file(&o.file, key.as_ref(), OpenOptions { recover: o.recover })?;
    if let Some(why) = &opened.recovered_from {
        eprintln!(
            "warning: --recover: the newest state fails its checks and was skipped; using \
             header slot {} (sequence {}): {why}",
            opened.slot, opened.sequence
        );
    } else if o.recover {
        // A damaged header slot is ignored by the open without being reported.
        if let Ok(i) = Vmgs::inspect(v.storage()) {
            for (slot, s) in i.slots.iter().enumerate() {
                if let SlotState::Damaged(e) = s {
                    eprintln!(
                        "warning: --recover: header slot {slot} is damaged and was ignored; \
                         using header slot {} (sequence {}): {e}",
                        opened.slot, opened.sequence
                    );
                }
            }
        }
    }
    if v.is_encrypted() && key.is_none() {
        eprintln!(
            "warning: no --key-file: this VMGS is encrypted; its encrypted files and its \
             commit digest were not checked"
        );
    }
    Ok(v)
}

fn create(file: &Path, size: u64, key_file: Option<&Path>) -> Result<()> {
    let key = key(key_file)?;
    Vmgs::create_file(file, size, key.as_ref())?;
    println!(
        "created {} ({size} bytes, {})",
        file.display(),
        if key.is_some() {
            "encrypted (AES-256-GCM)"
        } else {
            "not encrypted"
        }
    );
    Ok(())
}

fn encryption_name(e: Encryption) -> &'static str {
    match e {
        Encryption::None => "none",
        Encryption::Aes256Gcm => "AES-256-GCM",
    }
}

fn key_slots(h: &Header) -> Vec<usize> {
    (0..2).filter(|&i| h.key_slots[i].is_some()).collect()
}

fn slot_json(slot: usize, s: &SlotState) -> Value {
    let offset = vmgs::vmgs_format::header_offset(slot);
    match s {
        SlotState::Empty => json!({ "slot": slot, "offset": offset, "state": "empty" }),
        SlotState::Valid(h) => json!({
            "slot": slot,
            "offset": offset,
            "state": "valid",
            "sequence": h.sequence,
            "encryption": encryption_name(h.encryption),
            "key_slots_in_use": key_slots(h),
            "reprovisioned": h.reprovisioned,
            "file_table_block": h.file_table_offset,
        }),
        SlotState::Damaged(e) => json!({
            "slot": slot,
            "offset": offset,
            "state": "damaged",
            "reason": e.to_string(),
        }),
    }
}

fn file_json(f: &FileInfo) -> Value {
    json!({
        "id": f.id.get(),
        "name": f.id.name(),
        "offset": f.offset,
        "blocks": f.blocks,
        "size": f.size,
        "encrypted": f.encrypted,
    })
}

/// The active table's entries (the extended file table included), as `FileInfo`s.
fn table_files(i: &Inspection) -> Option<Vec<FileInfo>> {
    let Some(Ok(t)) = &i.table else {
        return None;
    };
    Some(
        t.files
            .iter()
            .enumerate()
            .filter_map(|(n, e)| {
                let id = FileId::new(u8::try_from(n).ok()?)?;
                e.as_ref().map(|e| FileInfo::of(id, e))
            })
            .collect(),
    )
}

fn info(file: &Path, as_json: bool) -> Result<()> {
    let i = Vmgs::inspect_file(file)?;
    let files = table_files(&i);
    let table_block = i.active.as_ref().ok().and_then(|&s| match &i.slots[s] {
        SlotState::Valid(h) => Some(h.file_table_offset),
        _ => None,
    });
    let table_error = match &i.table {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    };
    if as_json {
        let out = json!({
            "blocks": i.blocks,
            "size": u64::from(i.blocks) * vmgs::vmgs_format::BLOCK_SIZE as u64,
            "slots": [slot_json(0, &i.slots[0]), slot_json(1, &i.slots[1])],
            "active": i.active.as_ref().ok(),
            "active_error": i.active.as_ref().err(),
            "file_table": files.as_ref().map(|f| json!({
                "block": table_block,
                "files": f.iter().map(file_json).collect::<Vec<_>>(),
            })),
            "file_table_error": table_error,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mut o = std::io::stdout().lock();
        writeln!(
            o,
            "{}: {} blocks ({} bytes)",
            file.display(),
            i.blocks,
            u64::from(i.blocks) * vmgs::vmgs_format::BLOCK_SIZE as u64
        )?;
        for (slot, s) in i.slots.iter().enumerate() {
            let what = match s {
                SlotState::Empty => "empty".to_string(),
                SlotState::Valid(h) => format!(
                    "valid, sequence {}, encryption {}, key slots in use {:?}, reprovisioned {}, \
                     file table at block {}",
                    h.sequence,
                    encryption_name(h.encryption),
                    key_slots(h),
                    if h.reprovisioned { "yes" } else { "no" },
                    h.file_table_offset
                ),
                SlotState::Damaged(e) => format!("damaged: {e}"),
            };
            writeln!(o, "header slot {slot}: {what}")?;
        }
        match &i.active {
            Ok(s) => writeln!(o, "active: header slot {s}")?,
            Err(e) => writeln!(o, "active: none ({e})")?,
        }
        if let Some(e) = &table_error {
            writeln!(o, "damaged: {e}")?;
        }
        if let Some(f) = &files {
            print_files(&mut o, f)?;
        }
    }
    // The report is out; now say whether an open would refuse the file.
    if let Some((slot, e)) = i.slots.iter().enumerate().find_map(|(n, s)| match s {
        SlotState::Damaged(e) => Some((n, e)),
        _ => None,
    }) {
        bail!(Damaged(format!("header slot {slot} is damaged: {e}")));
    }
    if let Err(e) = &i.active {
        bail!(Damaged(e.clone()));
    }
    if let Some(e) = table_error {
        bail!(Damaged(e));
    }
    Ok(())
}

/// Damage `info` found (exit 1), known only by its description.
#[derive(Debug)]
struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

fn print_files(o: &mut impl Write, files: &[FileInfo]) -> Result<()> {
    writeln!(
        o,
        "{:>3}  {:<22} {:>8} {:>7} {:>10}  encrypted",
        "id", "name", "offset", "blocks", "size"
    )?;
    for f in files {
        writeln!(
            o,
            "{:>3}  {:<22} {:>8} {:>7} {:>10}  {}",
            f.id.get(),
            f.id.name().unwrap_or("-"),
            f.offset,
            f.blocks,
            f.size,
            if f.encrypted { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

fn list(o: &OpenArgs, as_json: bool) -> Result<()> {
    let v = open(o)?;
    let (slot, sequence) = v.position();
    let files = v.list();
    if as_json {
        let out = json!({
            "slot": slot,
            "sequence": sequence,
            "encrypted": v.is_encrypted(),
            "files": files.iter().map(file_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "header slot {slot}, sequence {sequence}, {}",
            if v.is_encrypted() {
                "encrypted (AES-256-GCM)"
            } else {
                "not encrypted"
            }
        )?;
        print_files(&mut out, &files)?;
    }
    Ok(())
}

/// Creates `path` for secret output: mode 0600, never over an existing file or
/// through a symbolic link.
fn create_private(path: &Path) -> Result<File> {
    FsOpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn read(o: &OpenArgs, id: FileId, out: &Path) -> Result<()> {
    let v = open(o)?;
    let data = v.read_file(id)?;
    if out == Path::new("-") {
        let mut s = std::io::stdout().lock();
        s.write_all(&data)?;
        s.flush()?;
    } else {
        let mut f = create_private(out)?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn write(o: &OpenArgs, id: FileId, input: &Path, plaintext: bool) -> Result<()> {
    let data = if input == Path::new("-") {
        let mut b = Zeroizing::new(Vec::new());
        std::io::stdin().read_to_end(&mut b)?;
        b
    } else {
        Zeroizing::new(
            std::fs::read(input).with_context(|| format!("reading {}", input.display()))?,
        )
    };
    let mut v = open(o)?;
    v.write_file(id, &data, plaintext)?;
    let (slot, sequence) = v.position();
    println!(
        "wrote file {id}: {} bytes (header slot {slot}, sequence {sequence})",
        data.len()
    );
    Ok(())
}

fn rekey(file: &Path, old: &Path, new: &Path) -> Result<()> {
    let new_key = DatastoreKey::from_file(new)?;
    let mut v = open(&OpenArgs {
        file: file.to_path_buf(),
        key_file: Some(old.to_path_buf()),
        recover: false,
    })?;
    v.rekey(&new_key)?;
    println!("rekeyed {}: only the new key opens it", file.display());
    Ok(())
}

fn copy_out(o: &OpenArgs, dir: &Path) -> Result<()> {
    let v = open(o)?;
    let files = v.list();
    // Every file is read (and so checked) before anything is written.
    let mut out = Vec::new();
    for f in &files {
        let name = match f.id.name() {
            Some(n) => format!("{}-{n}.bin", f.id.get()),
            None => format!("{0}-{0}.bin", f.id.get()),
        };
        out.push((dir.join(name), v.read_file(f.id)?));
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)
                .with_context(|| format!("checking {}", dir.display()))?;
            if !meta.is_dir() || meta.permissions().mode() & 0o077 != 0 {
                bail!(
                    "{} exists and is not a directory only its owner can read (mode 0700)",
                    dir.display()
                );
            }
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    if let Some((p, _)) = out.iter().find(|(p, _)| p.symlink_metadata().is_ok()) {
        bail!("{} exists; nothing was written", p.display());
    }
    for (path, data) in &out {
        let mut f = create_private(path)?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{} ({} bytes)", path.display(), data.len());
    }
    Ok(())
}
