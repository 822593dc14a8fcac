//! Image artifacts: a raw GPT disk image an operator imports for a catalog entry.
//!
//! An artifact is accepted only if it is a disk a confidential VM of that entry boots:
//! a GPT with an EFI system partition holding `\EFI\BOOT\BOOTX64.EFI`, and that boot
//! loader passes Secure Boot under the entry's template (its db and Microsoft's dbx,
//! `boot::verify`). The disk is copied into the platform's state (a temporary file,
//! synced, then renamed, so a kill leaves the old artifact or the new, never half of
//! one) under a name with its SHA-256.

use std::io::{Read, Write};
use std::path::Path;

use control_api::codes;
use httpd::ApiError;

use crate::store::ImageRow;

/// The largest artifact, bytes (a 4 TiB OS disk is Azure's limit; a local platform
/// has no use for more than this).
pub const MAX_BYTES: u64 = 256 << 30;

fn invalid(path: &Path, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad(
        codes::INVALID_ARTIFACT,
        format!("{}: {why}", path.display()),
    )
}

/// Checks the disk at `path` for `entry` and copies it into `dir`.
pub fn import(entry: &catalog::Image, path: &Path, dir: &Path) -> Result<ImageRow, ApiError> {
    let meta = std::fs::metadata(path).map_err(|e| invalid(path, e))?;
    if !meta.is_file() {
        return Err(invalid(path, "not a regular file"));
    }
    let len = meta.len();
    if len == 0 || len % 512 != 0 || len > MAX_BYTES {
        return Err(invalid(
            path,
            format!(
                "a raw disk image is a positive multiple of 512 bytes up to {MAX_BYTES} ({len})"
            ),
        ));
    }
    let files = boot::esp::read_boot_files(path).map_err(|e| invalid(path, e))?;
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
    std::fs::create_dir_all(dir).map_err(|e| ApiError::logged("images", e))?;
    let tmp = dir.join(format!(".{}.importing", entry.id));
    let copy = || -> std::io::Result<String> {
        let mut from = std::fs::File::open(path)?;
        let mut to = std::fs::File::create(&tmp)?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            ctx.update(chunk);
            to.write_all(chunk)?;
        }
        to.sync_all()?;
        Ok(hex::encode(ctx.finish().as_ref()))
    };
    let sha256 = copy().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ApiError::logged("images", e)
    })?;
    let dest = dir.join(format!(
        "{}-{}.img",
        entry.id,
        sha256.get(..16).unwrap_or(&sha256)
    ));
    std::fs::rename(&tmp, &dest).map_err(|e| ApiError::logged("images", e))?;
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
