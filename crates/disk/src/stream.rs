//! Whole-image encryption and decryption: AES-XTS over batches of sectors on several
//! threads, with progress, crash-safe and resumable.
//!
//! Encryption writes `OUT.partial`, never `OUT`: its header carries the mandatory
//! requirement [`metadata::INCOMPLETE`] (cryptsetup will not activate it) and a
//! progress token saying how many bytes are encrypted and flushed. The token only
//! moves forward after the data it covers is on disk. When every byte is, the header
//! is rewritten without them and the file is renamed to `OUT`, so `OUT` exists only
//! complete. Running the same command again after a crash resumes from the token.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use aes_xts::Xts;
use aws_lc_rs::digest;
use serde_json::Value;

use crate::device::Device;
use crate::image::{Luks2, VolumeKey};
use crate::kdf::KdfChoice;
use crate::metadata::{self, Requirements, SegmentSize, Token};
use crate::{Error, io};

/// Bytes each thread encrypts per batch.
const CHUNK: usize = 4 << 20;
/// Batches queued between the reading and the writing thread.
const IN_FLIGHT: usize = 2;

/// How to encrypt an image.
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// The data sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// The first keyslot's KDF.
    pub kdf: KdfChoice,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// The volume label.
    pub label: String,
    /// Bytes per metadata copy (16 KiB as cryptsetup).
    pub metadata_size: u64,
    /// Bytes of the keyslots area (16 MiB − 32 KiB as cryptsetup).
    pub keyslots_size: u64,
    /// A checkpoint (data flushed, then the progress token moved) after at least this
    /// many bytes: the most a crash makes the next run redo.
    pub checkpoint: u64,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        Self {
            sector_size: 4096,
            kdf: KdfChoice::DEFAULT_ARGON2ID,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            label: String::new(),
            metadata_size: 16 << 10,
            keyslots_size: (16 << 20) - (32 << 10),
            checkpoint: 256 << 20,
        }
    }
}

/// How to decrypt an image.
#[derive(Debug, Clone, Default)]
pub struct DecryptOptions {
    /// A detached header file (the image then holds only data).
    pub header: Option<PathBuf>,
    /// Only this keyslot.
    pub keyslot: Option<u32>,
    /// Worker threads (at least 1).
    pub threads: usize,
}

/// What an encryption or decryption did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes of data processed in this run.
    pub processed: u64,
    /// Bytes of data in all.
    pub total: u64,
    /// Bytes that an earlier, interrupted run had already done.
    pub resumed_from: u64,
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Where an output is built until it is complete.
pub(crate) fn partial_path(out: &Path) -> PathBuf {
    with_suffix(out, ".partial")
}

/// A fingerprint of an input range, so that a resume refuses an input that is not
/// the one the partial output was started from: SHA-256 over the range's size, the
/// input file's modification time and its first and last MiB. (An input changed in
/// its middle without its modification time changing would go unnoticed.)
pub(crate) fn fingerprint(input: &File, off: u64, size: u64) -> Result<String, Error> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&size.to_le_bytes());
    let modified = input
        .metadata()
        .and_then(|m| m.modified())
        .map_err(io("reading the input's modification time"))?;
    let since = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ctx.update(&since.as_nanos().to_le_bytes());
    let n = size.min(1 << 20) as usize;
    let mut buf = vec![0u8; n];
    for at in [off, off + size - n as u64] {
        input
            .read_exact_at(&mut buf, at)
            .map_err(io("reading the input"))?;
        ctx.update(&buf);
    }
    Ok(hex::encode(ctx.finish()))
}

fn progress_token(done: u64, size: u64, fp: &str, sector: u32) -> Token {
    let mut other = serde_json::Map::new();
    other.insert("done".into(), Value::String(done.to_string()));
    other.insert("input_size".into(), Value::String(size.to_string()));
    other.insert("input_sha256".into(), Value::String(fp.into()));
    other.insert("sector_size".into(), Value::from(sector));
    Token {
        kind: metadata::PROGRESS_TOKEN.into(),
        keyslots: vec![],
        other,
    }
}

/// How many data bytes an unfinished encryption has encrypted and flushed, from
/// its progress token; `None` for a finished image.
pub fn progress_of(luks: &Luks2) -> Option<u64> {
    if !luks.metadata.incomplete() {
        return None;
    }
    luks.metadata
        .tokens
        .values()
        .find(|t| t.kind == metadata::PROGRESS_TOKEN)
        .and_then(|t| token_field(t, "done"))
        .and_then(|d| d.parse().ok())
}

/// Decrypts `len` bytes of `luks`'s data segment from byte `at` of it, read from
/// `data` with `key`.
pub fn read_plaintext<D: Device + ?Sized>(
    data: &D,
    luks: &Luks2,
    key: &VolumeKey,
    at: u64,
    len: u64,
) -> Result<Vec<u8>, Error> {
    let (_, seg) = luks.metadata.segment()?;
    let n = usize::try_from(len).map_err(|_| Error::Refused("too large to read at once".into()))?;
    let mut buf = vec![0u8; n];
    data.read_exact_at(&mut buf, seg.offset + at)
        .map_err(io("reading the image"))?;
    let mut w = workers(key, 1)?;
    run(
        &mut w,
        &mut buf,
        seg.sector_size,
        seg.iv_tweak.wrapping_add(at / 512),
        false,
    )?;
    Ok(buf)
}

fn token_field<'a>(t: &'a Token, name: &str) -> Option<&'a str> {
    t.other.get(name).and_then(Value::as_str)
}

/// Encrypts the raw image `input` into a new LUKS2 image `output` whose first
/// keyslot opens with `passphrase`; or, if `OUTPUT.partial` is there from an
/// interrupted run with the same input and passphrase, finishes it. `progress` is
/// called with (bytes done, total) after every batch.
pub fn encrypt(
    input: &Path,
    output: &Path,
    passphrase: &[u8],
    opts: &EncryptOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, Error> {
    if output.exists() {
        return Err(Error::Exists(output.to_owned()));
    }
    check_sector_size(opts.sector_size)?;
    let src = File::open(input).map_err(io(format!("opening {}", input.display())))?;
    let size = src
        .metadata()
        .map_err(io("reading the input's size"))?
        .len();
    if size == 0 || !size.is_multiple_of(u64::from(opts.sector_size)) {
        return Err(Error::Unaligned {
            size,
            sector: opts.sector_size,
        });
    }
    let fp = fingerprint(&src, 0, size)?;
    let partial = partial_path(output);
    let what = partial.display().to_string();
    let (file, luks, key, done) = if partial.exists() {
        let file = open_rw(&partial)?;
        match volume_state(&file) {
            VolumeState::Finished(luks) => {
                check_finished(&file, &luks, &what, passphrase, &src, 0, size)?;
                drop(file);
                finish(&partial, output)?;
                return Ok(Outcome {
                    processed: 0,
                    total: size,
                    resumed_from: size,
                });
            }
            VolumeState::Unfinished(luks) => {
                let (luks, key, done) =
                    resume_volume(&file, luks, &what, passphrase, size, &fp, opts.sector_size)?;
                (file, luks, key, done)
            }
            VolumeState::Absent(e) => {
                return Err(Error::Resume(format!(
                    "{what} is left from an earlier run but its header is unusable ({e}); remove it to start over"
                )));
            }
        }
    } else {
        let scratch = scratch_path(&partial);
        let file = create_scratch(&scratch)?;
        file.set_len(data_offset(opts) + size)
            .map_err(io("sizing the image"))?;
        let (luks, key) = begin_volume(&file, passphrase, size, &fp, opts)?;
        // Renamed once its first header is on disk: `OUT.partial` always has one.
        std::fs::rename(&scratch, &partial)
            .map_err(io(format!("renaming {}", scratch.display())))?;
        sync_dir(&partial)?;
        (file, luks, key, 0)
    };
    let mut job = Fill {
        src: &src,
        src_off: 0,
        size,
        dst: &file,
        fp: &fp,
        opts,
    };
    job.run(luks, &key, done, progress)?;
    drop(file);
    finish(&partial, output)?;
    Ok(Outcome {
        processed: size - done,
        total: size,
        resumed_from: done,
    })
}

pub(crate) fn check_sector_size(sector: u32) -> Result<(), Error> {
    if [512, 1024, 2048, 4096].contains(&sector) {
        Ok(())
    } else {
        Err(Error::Refused(format!("a sector size of {sector} bytes")))
    }
}

/// Where the data of a new volume starts.
pub(crate) fn data_offset(opts: &EncryptOptions) -> u64 {
    2 * opts.metadata_size + opts.keyslots_size
}

pub(crate) fn open_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))
}

pub(crate) fn scratch_path(partial: &Path) -> PathBuf {
    with_suffix(partial, ".new")
}

/// A new scratch file; one left by a kill holds nothing worth keeping.
pub(crate) fn create_scratch(scratch: &Path) -> Result<File, Error> {
    match std::fs::remove_file(scratch) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!("removing {}", scratch.display()))(e));
        }
        _ => {}
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(scratch)
        .map_err(io(format!("creating {}", scratch.display())))
}

/// Renames the finished partial output to its name and makes that durable.
pub(crate) fn finish(partial: &Path, output: &Path) -> Result<(), Error> {
    std::fs::rename(partial, output).map_err(io("renaming the finished image"))?;
    sync_dir(output)
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing the output directory"))
}

/// What a device holds of a volume being encrypted, with its header when it has one.
pub(crate) enum VolumeState {
    /// No usable header (not started, or started under a scratch name).
    Absent(Error),
    /// A header with the unfinished requirement and a progress token.
    Unfinished(Luks2),
    /// A finished volume.
    Finished(Luks2),
}

pub(crate) fn volume_state<D: Device + ?Sized>(dst: &D) -> VolumeState {
    match Luks2::read(dst) {
        Err(e) => VolumeState::Absent(e),
        Ok(l) if l.metadata.incomplete() => VolumeState::Unfinished(l),
        Ok(l) => VolumeState::Finished(l),
    }
}

/// Opens a volume left by an earlier run with this run's passphrase; one that does
/// not open is named, with what to do.
fn unlock_to_resume<D: Device + ?Sized>(
    dst: &D,
    luks: &Luks2,
    what: &str,
    passphrase: &[u8],
) -> Result<VolumeKey, Error> {
    match luks.unlock(dst, passphrase, None) {
        Ok((_, key)) => Ok(key),
        Err(Error::WrongPassphrase) => Err(Error::Resume(format!(
            "the passphrase does not open {what}; remove it to start over"
        ))),
        Err(e) => Err(e),
    }
}

/// Writes a new volume's header on `dst`: marked unfinished, progress 0, keyslot 0
/// under `passphrase`.
pub(crate) fn begin_volume<D: Device + ?Sized>(
    dst: &D,
    passphrase: &[u8],
    size: u64,
    fp: &str,
    opts: &EncryptOptions,
) -> Result<(Luks2, VolumeKey), Error> {
    let mut luks = Luks2::new(
        opts.metadata_size,
        opts.keyslots_size,
        data_offset(opts),
        opts.sector_size,
        &opts.label,
    )?;
    luks.metadata.config.requirements = Some(Requirements {
        mandatory: vec![metadata::INCOMPLETE.into()],
        other: Default::default(),
    });
    luks.metadata
        .tokens
        .insert(0, progress_token(0, size, fp, opts.sector_size));
    let key = VolumeKey::generate()?;
    luks.add_keyslot(dst, &key, passphrase, opts.kdf)?;
    Ok((luks, key))
}

/// An unfinished volume's key and progress, after checking that it was started
/// from this input with this passphrase.
pub(crate) fn resume_volume<D: Device + ?Sized>(
    dst: &D,
    luks: Luks2,
    what: &str,
    passphrase: &[u8],
    size: u64,
    fp: &str,
    sector: u32,
) -> Result<(Luks2, VolumeKey, u64), Error> {
    let token = luks
        .metadata
        .tokens
        .values()
        .find(|t| t.kind == metadata::PROGRESS_TOKEN)
        .filter(|_| luks.metadata.incomplete())
        .ok_or_else(|| Error::Resume(format!("{what} has no progress record")))?;
    if token_field(token, "input_sha256") != Some(fp)
        || token_field(token, "input_size") != Some(&size.to_string())
    {
        return Err(Error::Resume(format!(
            "{what} was started from another input; remove it to start over"
        )));
    }
    let (_, seg) = luks.metadata.segment()?;
    if seg.sector_size != sector {
        return Err(Error::Resume(format!(
            "{what} was started with {}-byte sectors",
            seg.sector_size
        )));
    }
    let done: u64 = token_field(token, "done")
        .and_then(|d| d.parse().ok())
        .filter(|d| *d <= size && d % u64::from(sector) == 0)
        .ok_or_else(|| Error::Resume("the progress record is malformed".into()))?;
    let key = unlock_to_resume(dst, &luks, what, passphrase)?;
    Ok((luks, key, done))
}

/// A kill between a volume's last header write and what follows (the rename)
/// leaves it finished: accept it if it holds this input (its first and last MiB
/// decrypt to the input's) under this passphrase, and return its volume key.
pub(crate) fn check_finished<D: Device + ?Sized>(
    dst: &D,
    luks: &Luks2,
    what: &str,
    passphrase: &[u8],
    src: &File,
    src_off: u64,
    size: u64,
) -> Result<VolumeKey, Error> {
    let other = || {
        Error::Resume(format!(
            "{what} is a finished image of another input; remove it to start over"
        ))
    };
    let key = unlock_to_resume(dst, luks, what, passphrase)?;
    let n = size.min(1 << 20);
    for at in [0, size - n] {
        let mut plain = vec![0u8; n as usize];
        src.read_exact_at(&mut plain, src_off + at)
            .map_err(io("reading the input"))?;
        if read_plaintext(dst, luks, &key, at, n).map_err(|_| other())? != plain {
            return Err(other());
        }
    }
    Ok(key)
}

/// Fills a volume: `size` bytes of `src` from `src_off`, encrypted into `dst`'s data
/// segment, with checkpoints; then the header loses its unfinished marks. Returns
/// the finished header.
pub(crate) struct Fill<'a, D: Device + Sync + ?Sized> {
    pub(crate) src: &'a File,
    pub(crate) src_off: u64,
    pub(crate) size: u64,
    pub(crate) dst: &'a D,
    pub(crate) fp: &'a str,
    pub(crate) opts: &'a EncryptOptions,
}

impl<D: Device + Sync + ?Sized> Fill<'_, D> {
    /// Reading and encrypting run on this thread (the encryption itself on
    /// `opts.threads` workers), writing and checkpoints on another, with a few
    /// batches in flight between them: on a page cache, copying in and out costs
    /// more than AES-XTS, and the two copies then overlap.
    pub(crate) fn run(
        &mut self,
        mut luks: Luks2,
        key: &VolumeKey,
        done: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Luks2, Error> {
        let (_, seg) = luks.metadata.segment()?;
        let (offset, sector, tweak0) = (seg.offset, seg.sector_size, seg.iv_tweak);
        let mut workers = workers(key, self.opts.threads)?;
        let size = self.size;
        let batch_len = CHUNK * workers.len();
        let (dst, fp, every) = (self.dst, self.fp, self.opts.checkpoint);
        let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(IN_FLIGHT);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        for _ in 0..=IN_FLIGHT {
            let _ = free_tx.send(vec![0u8; batch_len]);
        }
        let luks = std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<Luks2, Error> {
                let mut last_checkpoint = done;
                for (pos, buf) in full_rx {
                    dst.write_all_at(&buf, offset + pos)
                        .map_err(io("writing the image"))?;
                    let end = pos + buf.len() as u64;
                    if end - last_checkpoint >= every && end < size {
                        checkpoint(dst, &mut luks, end, size, fp, sector)?;
                        last_checkpoint = end;
                    }
                    // The reader may have stopped on an error; then nobody waits.
                    let _ = free_tx.send(buf);
                }
                Ok(luks)
            });
            let mut pos = done;
            let read = (|| {
                while pos < size {
                    let Ok(mut buf) = free_rx.recv() else { break };
                    let n = (size - pos).min(batch_len as u64) as usize;
                    buf.resize(n, 0);
                    self.src
                        .read_exact_at(&mut buf, self.src_off + pos)
                        .map_err(io("reading the input"))?;
                    run(
                        &mut workers,
                        &mut buf,
                        sector,
                        tweak0.wrapping_add(pos / 512),
                        true,
                    )?;
                    if full_tx.send((pos, buf)).is_err() {
                        break; // the writer failed; its error is the one to report
                    }
                    pos += n as u64;
                    progress(pos, size);
                }
                Ok::<(), Error>(())
            })();
            drop(full_tx);
            let written = writer
                .join()
                .map_err(|_| Error::Refused("the writing thread panicked".into()))?;
            read?;
            let luks = written?;
            if pos < size {
                return Err(Error::Refused("the encryption stopped early".into()));
            }
            Ok(luks)
        });
        let mut luks = luks?;
        self.dst.sync().map_err(io("flushing the image"))?;
        // Every byte is on disk: the header may now say so.
        luks.metadata
            .tokens
            .retain(|_, t| t.kind != metadata::PROGRESS_TOKEN);
        luks.metadata.config.requirements = None;
        luks.write(self.dst)?;
        Ok(luks)
    }
}

fn checkpoint<D: Device + ?Sized>(
    file: &D,
    luks: &mut Luks2,
    done: u64,
    size: u64,
    fp: &str,
    sector: u32,
) -> Result<(), Error> {
    // The data first: the token must never get ahead of what is durable.
    file.sync().map_err(io("flushing the image"))?;
    for t in luks.metadata.tokens.values_mut() {
        if t.kind == metadata::PROGRESS_TOKEN {
            *t = progress_token(done, size, fp, sector);
        }
    }
    luks.write(file)
}

fn workers(key: &VolumeKey, threads: usize) -> Result<Vec<Xts>, Error> {
    let first = Xts::new(key.bytes())?;
    let mut all = Vec::with_capacity(threads.max(1));
    for _ in 1..threads.max(1) {
        all.push(first.try_clone()?);
    }
    all.push(first);
    Ok(all)
}

/// Runs one batch through the workers: each takes a run of whole sectors.
fn run(
    workers: &mut [Xts],
    batch: &mut [u8],
    sector: u32,
    first_tweak: u64,
    encrypt: bool,
) -> Result<(), Error> {
    let sector = sector as usize;
    let step = (sector / 512) as u64;
    let sectors = batch.len() / sector;
    let per = sectors.div_ceil(workers.len()).max(1) * sector;
    if workers.len() == 1 || batch.len() <= sector {
        let xts = &mut workers[0];
        return if encrypt {
            xts.encrypt_units(batch, sector, first_tweak, step)
        } else {
            xts.decrypt_units(batch, sector, first_tweak, step)
        }
        .map_err(Error::from);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(batch.chunks_mut(per))
            .enumerate()
            .map(|(i, (xts, chunk))| {
                let tweak = first_tweak.wrapping_add((i * per / 512) as u64);
                s.spawn(move || {
                    if encrypt {
                        xts.encrypt_units(chunk, sector, tweak, step)
                    } else {
                        xts.decrypt_units(chunk, sector, tweak, step)
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Error::Refused("an encryption thread panicked".into()))??;
        }
        Ok(())
    })
}

/// Decrypts the LUKS2 image `image` (its header in it, or in `opts.header`) into a
/// new raw image `output` (written as `OUTPUT.partial`, renamed when complete).
pub fn decrypt(
    image: &Path,
    output: &Path,
    passphrase: &[u8],
    opts: &DecryptOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Outcome, Error> {
    let slot = opts.keyslot;
    decrypt_with(image, output, opts, progress, &mut |luks, file| {
        luks.unlock(file, passphrase, slot)
    })
}

/// How [`decrypt_with`] gets the volume key from the header and its file.
pub type Unlocker<'a> = dyn FnMut(&Luks2, &File) -> Result<(u32, VolumeKey), Error> + 'a;

/// [`decrypt`] with the volume key from `unlock` (a passphrase, a vTPM token).
pub fn decrypt_with(
    image: &Path,
    output: &Path,
    opts: &DecryptOptions,
    progress: &mut dyn FnMut(u64, u64),
    unlock: &mut Unlocker<'_>,
) -> Result<Outcome, Error> {
    if output.exists() {
        return Err(Error::Exists(output.to_owned()));
    }
    let data = File::open(image).map_err(io(format!("opening {}", image.display())))?;
    let header_file = match &opts.header {
        Some(h) => File::open(h).map_err(io(format!("opening {}", h.display())))?,
        None => data.try_clone().map_err(io("opening the image"))?,
    };
    let luks = Luks2::read(&header_file)?;
    if luks.metadata.incomplete() {
        return Err(Error::Incomplete);
    }
    let (_, seg) = luks.metadata.segment()?;
    let data_len = data
        .metadata()
        .map_err(io("reading the image's size"))?
        .len();
    let size = match seg.size {
        SegmentSize::Bytes(n) => n,
        SegmentSize::Dynamic => data_len.saturating_sub(seg.offset),
    };
    if seg
        .offset
        .checked_add(size)
        .is_none_or(|end| end > data_len)
    {
        return Err(Error::Refused(format!(
            "the image is truncated: its data segment needs {} bytes, it has {data_len}",
            seg.offset.saturating_add(size)
        )));
    }
    if size % u64::from(seg.sector_size) != 0 {
        return Err(Error::Unaligned {
            size,
            sector: seg.sector_size,
        });
    }
    let (_, key) = unlock(&luks, &header_file)?;
    let partial = partial_path(output);
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(io(format!("creating {}", partial.display())))?;
    out.set_len(size).map_err(io("sizing the output"))?;
    let mut workers = workers(&key, opts.threads)?;
    let mut buf = vec![0u8; CHUNK * workers.len()];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        let batch = &mut buf[..n];
        data.read_exact_at(batch, seg.offset + pos)
            .map_err(io("reading the image"))?;
        run(
            &mut workers,
            batch,
            seg.sector_size,
            seg.iv_tweak.wrapping_add(pos / 512),
            false,
        )?;
        out.write_all_at(batch, pos)
            .map_err(io("writing the output"))?;
        pos += n as u64;
        progress(pos, size);
    }
    out.sync_all().map_err(io("flushing the output"))?;
    drop(out);
    std::fs::rename(&partial, output).map_err(io("renaming the output"))?;
    sync_dir(output)?;
    Ok(Outcome {
        processed: size,
        total: size,
        resumed_from: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::header;
    use crate::metadata::Metadata;

    /// A device in memory that checks, at every header write, that the header
    /// claims no more encrypted data than was flushed before it.
    struct Recorder {
        bytes: Mutex<Vec<u8>>,
        /// (data written so far, data flushed so far), in bytes past the data offset.
        data: Mutex<(u64, u64)>,
        data_offset: u64,
        size: u64,
        headers: Mutex<Vec<u64>>,
    }

    impl Device for Recorder {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.bytes.lock().unwrap()[..].read_exact_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            if offset >= self.data_offset {
                let mut d = self.data.lock().unwrap();
                d.0 = d.0.max(offset - self.data_offset + buf.len() as u64);
            } else if offset == 0 && buf.len() == 16384 {
                let (h, json) = header::parse_copy(buf, 0).unwrap();
                let meta = Metadata::parse(json, h.hdr_size).unwrap();
                let luks = Luks2 {
                    header: h,
                    metadata: meta,
                };
                let claimed = progress_of(&luks).unwrap_or(self.size);
                let flushed = self.data.lock().unwrap().1;
                assert!(
                    claimed <= flushed,
                    "a header claims {claimed} bytes with {flushed} flushed"
                );
                self.headers.lock().unwrap().push(claimed);
            }
            let mut b = self.bytes.lock().unwrap();
            let end = offset as usize + buf.len();
            if b.len() < end {
                b.resize(end, 0);
            }
            b[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn sync(&self) -> std::io::Result<()> {
            let mut d = self.data.lock().unwrap();
            d.1 = d.0;
            Ok(())
        }
    }

    #[test]
    fn no_header_claims_data_that_was_not_flushed_before_it() {
        let size = 24u64 << 20;
        let mut input = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::io::Write::write_all(&mut input, &data).unwrap();
        let opts = EncryptOptions {
            kdf: KdfChoice::Pbkdf2 { iterations: 1000 },
            threads: 2,
            checkpoint: 1,
            ..EncryptOptions::default()
        };
        let dev = Recorder {
            bytes: Mutex::new(Vec::new()),
            data: Mutex::new((0, 0)),
            data_offset: data_offset(&opts),
            size,
            headers: Mutex::new(Vec::new()),
        };
        let fp = fingerprint(&input, 0, size).unwrap();
        let (luks, key) = begin_volume(&dev, b"pass", size, &fp, &opts).unwrap();
        let mut fill = Fill {
            src: &input,
            src_off: 0,
            size,
            dst: &dev,
            fp: &fp,
            opts: &opts,
        };
        fill.run(luks, &key, 0, &mut |_, _| {}).unwrap();
        // Progress moved forward through the checkpoints, and ended complete.
        let claims = dev.headers.lock().unwrap().clone();
        assert!(claims.len() >= 4, "{claims:?}");
        assert!(claims.windows(2).all(|w| w[0] <= w[1]), "{claims:?}");
        assert_eq!(*claims.last().unwrap(), size);
        // And the image decrypts to the input.
        let luks = Luks2::read(&dev).unwrap();
        assert_eq!(progress_of(&luks), None);
        let (_, key) = luks.unlock(&dev, b"pass", None).unwrap();
        let bytes = dev.bytes.lock().unwrap().clone();
        let mut plain = bytes[dev.data_offset as usize..].to_vec();
        let mut w = workers(&key, 1).unwrap();
        run(&mut w, &mut plain, 4096, 0, false).unwrap();
        assert!(plain == data);
    }
}
