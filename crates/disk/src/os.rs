//! Whole OS disks: a GPT disk image in, a GPT disk image out whose boot partitions
//! (EFI system, BIOS boot, XBOOTLDR) are byte-identical and whose every other
//! partition is a LUKS2 volume holding the original contents. Each encrypted
//! partition grows by the LUKS2 header and keyslots (16 MiB), the partitions after
//! it move up, and the backup table moves to the new end; partition numbers, types,
//! GUIDs, names and attributes stay, so a stock initramfs finds the root partition
//! by its type (the Discoverable Partitions Specification allows it to be LUKS2).
//!
//! Crash-safe and resumable like [`crate::stream::encrypt`]: the output is built as
//! `OUT.partial` (its partition table written first), each encrypted partition
//! carries its own progress token, and `OUT` appears by rename when every partition
//! is complete. Running the same command again resumes.

use std::fs::File;

/// The LUKS2 label the platform's pre-encryption gives an OS disk's encrypted
/// partitions, and by which the guest's initramfs finds its root volume (the
/// `LABEL=` of its crypttab line, `os_image`): a label, unlike a UUID, is known
/// before the disk is encrypted.
pub const ROOT_LABEL: &str = "opencvm-root";
use std::path::Path;

use serde::Serialize;

use crate::device::{Device, Window};
use crate::gpt::{Gpt, LBA};
use crate::image::VolumeKey;
use crate::stream::{self, EncryptOptions, Fill, VolumeState};
use crate::tpm2::{self, PcrBinding, Tpm};
use crate::{Error, Luks2, io};

/// What `encrypt-os` did to one partition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionReport {
    /// Partition number.
    pub number: u32,
    /// Partition name.
    pub name: String,
    /// Type GUID.
    pub type_guid: String,
    /// Whether it is now a LUKS2 volume.
    pub encrypted: bool,
    /// First LBA in the input.
    pub input_first_lba: u64,
    /// First LBA in the output.
    pub first_lba: u64,
    /// Last LBA in the output.
    pub last_lba: u64,
    /// The LUKS2 UUID, for an encrypted partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub luks_uuid: Option<String>,
}

/// What protects the disk and how it was laid out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OsReport {
    /// The key protector of every encrypted partition's keyslot 0.
    pub protector: String,
    /// Output size in bytes.
    pub size: u64,
    /// Bytes of partition data processed in this run.
    pub processed: u64,
    /// Every partition.
    pub partitions: Vec<PartitionReport>,
    /// PCRs sealed to their current value while it is all zero (nothing measured
    /// yet): a guest will not open the disk through the vTPM once its firmware
    /// measures them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmeasured_pcrs: Vec<u32>,
}

/// The output layout for `input`: partitions moved and grown.
fn layout(input: &Gpt, header_lbas: u64, sector: u32) -> Result<(Gpt, Vec<bool>), Error> {
    let mut out = input.clone();
    let mut shift = 0u64;
    let mut encrypted = Vec::new();
    for p in &mut out.partitions {
        let enc = !p.boot_critical();
        if enc && !p.bytes().is_multiple_of(u64::from(sector)) {
            return Err(Error::Refused(format!(
                "partition {} ({} bytes) is not a whole number of {sector}-byte sectors; use --sector-size 512",
                p.number,
                p.bytes()
            )));
        }
        p.first += shift;
        p.last += shift;
        if enc {
            p.last += header_lbas;
            shift += header_lbas;
        }
        encrypted.push(enc);
    }
    if !encrypted.iter().any(|e| *e) {
        return Err(Error::Refused(
            "the disk has no partition to encrypt (only boot partitions)".into(),
        ));
    }
    Ok((out, encrypted))
}

/// Encrypts the GPT disk image `input` into `output` (see the module docs); every
/// encrypted partition's keyslot 0 opens with `passphrase` (the recovery key). With
/// `vtpm`, each is also bound to that vTPM (a keyslot and a `systemd-tpm2` token,
/// [`crate::tpm2::enroll`]) before the output gets its name.
pub fn encrypt_os(
    input: &Path,
    output: &Path,
    passphrase: &[u8],
    opts: &EncryptOptions,
    mut vtpm: Option<(&mut dyn Tpm, &PcrBinding)>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<OsReport, Error> {
    if output.exists() {
        return Err(Error::Exists(output.to_owned()));
    }
    stream::check_sector_size(opts.sector_size)?;
    let src = File::open(input).map_err(io(format!("opening {}", input.display())))?;
    let len = src
        .metadata()
        .map_err(io("reading the input's size"))?
        .len();
    if !len.is_multiple_of(LBA) {
        return Err(Error::Unaligned {
            size: len,
            sector: LBA as u32,
        });
    }
    let mut head = vec![0u8; (len.min(Gpt::HEAD_LEN as u64)) as usize];
    src.read_exact_at(&mut head, 0)
        .map_err(io("reading the input's partition table"))?;
    let gpt =
        Gpt::parse(&head, len).map_err(|e| Error::Refused(format!("{}: {e}", input.display())))?;
    let header_lbas = stream::data_offset(opts) / LBA;
    let (new, encrypted) = layout(&gpt, header_lbas, opts.sector_size)?;
    let grow: u64 = encrypted.iter().filter(|e| **e).count() as u64 * header_lbas;
    let total = len / LBA + grow;
    let table = new.encode(total);

    let partial = stream::partial_path(output);
    let file = if partial.exists() {
        let file = stream::open_rw(&partial)?;
        let plen = file
            .metadata()
            .map_err(io("reading the partial output's size"))?
            .len();
        let mut phead = vec![0u8; (plen.min(Gpt::HEAD_LEN as u64)) as usize];
        file.read_exact_at(&mut phead, 0)
            .map_err(io("reading the partial output"))?;
        match Gpt::parse(&phead, plen) {
            Ok(t) if t == new && plen == total * LBA => file,
            _ => {
                return Err(Error::Resume(format!(
                    "{} was started from another disk; remove it to start over",
                    partial.display()
                )));
            }
        }
    } else {
        let scratch = stream::scratch_path(&partial);
        let file = stream::create_scratch(&scratch)?;
        file.set_len(total * LBA).map_err(io("sizing the output"))?;
        for (off, bytes) in &table {
            file.write_all_at(bytes, *off)
                .map_err(io("writing the partition table"))?;
        }
        file.sync_data()
            .map_err(io("flushing the partition table"))?;
        std::fs::rename(&scratch, &partial)
            .map_err(io(format!("renaming {}", scratch.display())))?;
        stream::sync_dir(&partial)?;
        file
    };

    let all: u64 = gpt.partitions.iter().map(|p| p.bytes()).sum();
    let mut base = 0u64;
    let mut processed = 0u64;
    let mut reports = Vec::new();
    let mut unmeasured = Vec::new();
    for ((old, p), enc) in gpt.partitions.iter().zip(&new.partitions).zip(&encrypted) {
        let size = old.bytes();
        let src_off = old.first * LBA;
        let window = Window::new(&file, p.first * LBA, p.bytes());
        let at = base;
        let mut step = |done: u64, _: u64| progress(at + done, all);
        let mut luks_uuid = None;
        if *enc {
            let what = format!("partition {} of {}", p.number, partial.display());
            let (mut luks, key) = match stream::volume_state(&window) {
                VolumeState::Finished(luks) => {
                    let key = stream::check_finished(
                        &window, &luks, &what, passphrase, &src, src_off, size,
                    )?;
                    step(size, size);
                    (luks, key)
                }
                state => {
                    let fp = stream::fingerprint(&src, src_off, size)?;
                    let (luks, key, done) = match state {
                        VolumeState::Unfinished(luks) => stream::resume_volume(
                            &window,
                            luks,
                            &what,
                            passphrase,
                            size,
                            &fp,
                            opts.sector_size,
                        )?,
                        // Absent (a finished one is handled above).
                        _ => {
                            let (luks, key) =
                                stream::begin_volume(&window, passphrase, size, &fp, opts)?;
                            (luks, key, 0)
                        }
                    };
                    let mut fill = Fill {
                        src: &src,
                        src_off,
                        size,
                        dst: &window,
                        fp: &fp,
                        opts,
                    };
                    let luks = fill.run(luks, &key, done, &mut step)?;
                    processed += size - done;
                    (luks, key)
                }
            };
            if let Some((tpm, binding)) = vtpm.as_mut() {
                unmeasured.extend(bind(&mut luks, &window, &key, &mut **tpm, binding)?);
            }
            luks_uuid = Some(luks.header.uuid);
        } else {
            copy(&src, src_off, &window, size, &mut step)?;
            processed += size;
        }
        base += size;
        reports.push(report(old, p, *enc, luks_uuid));
    }
    file.sync_data().map_err(io("flushing the output"))?;
    drop(file);
    stream::finish(&partial, output)?;
    reports.sort_by_key(|r| r.number);
    let protector = match &vtpm {
        None => "passphrase".to_owned(),
        Some((_, b)) => format!("passphrase and vTPM (systemd-tpm2, PCRs {:?})", b.pcrs),
    };
    Ok(OsReport {
        protector,
        size: total * LBA,
        processed,
        partitions: reports,
        unmeasured_pcrs: {
            unmeasured.sort_unstable();
            unmeasured.dedup();
            unmeasured
        },
    })
}

/// Binds a finished volume to the vTPM. A run before a kill may have done it: then
/// the token must bind as asked (same PCRs and policy, a blob this vTPM loads), or
/// the partial output is refused rather than reported as bound otherwise.
fn bind(
    luks: &mut Luks2,
    window: &Window<'_>,
    key: &VolumeKey,
    tpm: &mut dyn Tpm,
    binding: &PcrBinding,
) -> Result<Vec<u32>, Error> {
    let existing = luks
        .metadata
        .tokens
        .values()
        .find(|t| t.kind == tpm2::TOKEN_TYPE);
    if let Some(token) = existing {
        let token = tpm2::Tpm2Token::from_token(token)?;
        if tpm2::binds_as(tpm, &token, binding)? {
            return Ok(Vec::new());
        }
        return Err(Error::Resume(
            "an earlier run bound this disk to another vTPM or other PCRs; remove the partial output to start over".into(),
        ));
    }
    tpm2::enroll(luks, window, key, tpm, binding).map(|e| e.unmeasured)
}

fn report(
    old: &crate::gpt::Partition,
    p: &crate::gpt::Partition,
    encrypted: bool,
    luks_uuid: Option<String>,
) -> PartitionReport {
    PartitionReport {
        number: p.number,
        name: p.name(),
        type_guid: p.type_guid.to_string(),
        encrypted,
        input_first_lba: old.first,
        first_lba: p.first,
        last_lba: p.last,
        luks_uuid,
    }
}

/// Copies a partition in clear, as it is.
fn copy(
    src: &File,
    src_off: u64,
    dst: &Window<'_>,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), Error> {
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], src_off + pos)
            .map_err(io("reading the input"))?;
        dst.write_all_at(&buf[..n], pos)
            .map_err(io("writing the output"))?;
        pos += n as u64;
        progress(pos, size);
    }
    Ok(())
}
