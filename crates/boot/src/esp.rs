//! The boot files of a disk image: its GPT, its EFI system partition, and on it the
//! default boot loader (`\EFI\BOOT\BOOTX64.EFI`) and, when that is shim, the second
//! stage it loads from the same directory (`grubx64.efi`).

use std::path::Path;

use disk::device::{Device, Window};
use disk::gpt::{ESP, Gpt};

use crate::Error;
use crate::fat::Fat;

/// The removable-media default path of the x86-64 boot loader.
pub const DEFAULT_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";
/// What shim loads next, from its own directory.
pub const SHIM_SECOND_STAGE: &str = "EFI/BOOT/grubx64.efi";

/// The boot files found on a disk.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The first stage firmware loads.
    pub loader: Vec<u8>,
    /// `grubx64.efi` next to it, when present.
    pub second_stage: Option<Vec<u8>>,
}

/// Where the Debian images of `cvm image build` keep the kernel GRUB loads (the ESP's
/// root, so that the boot chain can be checked without the root partition).
pub const KERNEL: &str = "vmlinuz";

/// Reads the boot files of the raw disk image at `path`.
pub fn read_boot_files(path: &Path) -> Result<BootFiles, Error> {
    with_esp(path, |fat| read_from_fat(fat))
}

/// Reads the file `name` (a path on the ESP, `/`-separated) of the raw disk image at
/// `path`: `None` when the ESP has no such file.
pub fn read_esp_file(path: &Path, name: &str) -> Result<Option<Vec<u8>>, Error> {
    with_esp(path, |fat| Fat::open(fat)?.read_file(name))
}

/// Runs `f` on the EFI system partition of the raw disk image at `path`.
fn with_esp<T>(path: &Path, f: impl FnOnce(&Window<'_>) -> Result<T, Error>) -> Result<T, Error> {
    let io = |e: std::io::Error| Error::Usage(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = vec![0u8; Gpt::HEAD_LEN.min(len as usize)];
    Device::read_exact_at(&file, &mut head, 0).map_err(io)?;
    let gpt =
        Gpt::parse(&head, len).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let esp = gpt
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP)
        .ok_or_else(|| Error::Usage(format!("{}: no EFI system partition", path.display())))?;
    f(&Window::new(&file, esp.first * disk::gpt::LBA, esp.bytes()))
}

/// Reads the boot files from a FAT filesystem.
pub fn read_from_fat<R: Device + ?Sized>(dev: &R) -> Result<BootFiles, Error> {
    let fat = Fat::open(dev)?;
    let loader = fat
        .read_file(DEFAULT_LOADER)?
        .ok_or_else(|| Error::Usage(format!("the EFI system partition has no {DEFAULT_LOADER}")))?;
    let second_stage = fat.read_file(SHIM_SECOND_STAGE)?;
    Ok(BootFiles {
        loader,
        second_stage,
    })
}
