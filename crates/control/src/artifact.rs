//! Image artifacts: a raw GPT disk image an operator imports for a catalog entry.
//!
//! An artifact is accepted only if it is a disk a confidential VM of that entry boots:
//! a GPT with an EFI system partition holding `\EFI\BOOT\BOOTX64.EFI`, and that boot
//! loader passes Secure Boot under the entry's template (its db and Microsoft's dbx,
//! `boot::verify`). The disk is first copied into the platform's state under a unique
//! temporary name, then the copy (not the operator's file, which could change meanwhile)
//! is checked, synced and renamed into place under a name with its SHA-256; a kill
//! leaves the old artifact or the new one, and a temporary file the next start removes
//! ([`remove_stale`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use control_api::codes;
use httpd::ApiError;

use crate::store::ImageRow;

/// The largest artifact, bytes.
pub const MAX_BYTES: u64 = 256 << 30;

/// `O_NONBLOCK` on Linux: opening a FIFO for reading must not wait for a writer.
const NONBLOCK: i32 = 0o4000;

/// The suffix of an import's temporary file.
const IMPORTING: &str = ".importing";

fn invalid(path: &Path, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad(
        codes::INVALID_ARTIFACT,
        format!("{}: {why}", path.display()),
    )
}

/// Removes the temporary files of imports a kill interrupted.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(IMPORTING) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes the temporary copy unless it was renamed into place.
struct Temp(PathBuf, bool);

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Copies the disk at `path` (absolute, on this machine) into `dir`, checks the copy
/// for `entry`, and puts it in place.
pub fn import(entry: &catalog::Image, path: &Path, dir: &Path) -> Result<ImageRow, ApiError> {
    if !path.is_absolute() {
        return Err(invalid(
            path,
            "give an absolute path (the control plane reads it)",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| ApiError::logged("images", e))?;
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ApiError::internal("random"))?;
    let mut tmp = Temp(
        dir.join(format!(".{}.{}{IMPORTING}", entry.id, hex::encode(nonce))),
        false,
    );
    let (len, sha256) = copy(path, &tmp.0)?;
    if len == 0 || len % 512 != 0 {
        return Err(invalid(
            path,
            format!("a raw disk image is a positive multiple of 512 bytes ({len})"),
        ));
    }
    let files = boot::esp::read_boot_files(&tmp.0).map_err(|e| invalid(path, e))?;
    let template: boot::template::Template = entry
        .secure_boot_template
        .parse()
        .map_err(|e| ApiError::logged("template", e))?;
    let keys = boot::template::keys(template).map_err(|e| ApiError::logged("template", e))?;
    let verdict = boot::verify::verify_image(&files.loader, &keys.db, &keys.dbx, None)
        .map_err(|e| invalid(path, format!("its boot loader: {e}")))?;
    if let Err(refusal) = &verdict.result {
        return Err(invalid(
            path,
            format!(
                "its boot loader would not pass Secure Boot under the '{}' template: {refusal}",
                entry.secure_boot_template
            ),
        ));
    }
    let dest = dir.join(format!(
        "{}-{}.img",
        entry.id,
        sha256.get(..16).unwrap_or(&sha256)
    ));
    std::fs::rename(&tmp.0, &dest).map_err(|e| ApiError::logged("images", e))?;
    tmp.1 = true;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(ImageRow {
        id: entry.id.to_string(),
        sha256,
        bytes: i64::try_from(len).unwrap_or(i64::MAX),
        boot_loader_digest: verdict.sha256.clone(),
        path: dest.display().to_string(),
        imported: time::OffsetDateTime::now_utc().unix_timestamp(),
    })
}

/// Copies `from` to the new file `to` (synced) up to [`MAX_BYTES`]: its length and
/// SHA-256.
fn copy(from: &Path, to: &Path) -> Result<(u64, String), ApiError> {
    // Not following a FIFO or device the path may name: opened without blocking,
    // then checked on the handle itself.
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(NONBLOCK)
        .open(from)
        .map_err(|e| invalid(from, e))?;
    if !src.metadata().map_err(|e| invalid(from, e))?.is_file() {
        return Err(invalid(from, "not a regular file"));
    }
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| ApiError::logged("images", e))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(|e| invalid(from, e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > MAX_BYTES {
            return Err(invalid(from, format!("larger than {MAX_BYTES} bytes")));
        }
        let chunk = buf.get(..n).unwrap_or_default();
        ctx.update(chunk);
        dst.write_all(chunk)
            .map_err(|e| ApiError::logged("images", e))?;
    }
    dst.sync_all().map_err(|e| ApiError::logged("images", e))?;
    Ok((len, hex::encode(ctx.finish().as_ref())))
}
