//! Where a LUKS2 volume lives: a whole file, a window of one (a partition inside a
//! disk image), or bytes in memory (read-only, for the fuzz target).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positioned reads and writes, and a flush that makes written data durable.
pub trait Device {
    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn sync(&self) -> io::Result<()>;
}

impl Device for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Device for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::ReadOnlyFilesystem.into())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// `len` bytes of a file from `base`: a partition of a disk image.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    file: &'a File,
    base: u64,
    len: u64,
}

impl<'a> Window<'a> {
    /// The window `[base, base + len)` of `file`.
    pub fn new(file: &'a File, base: u64, len: u64) -> Self {
        Self { file, base, len }
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: u64, n: usize) -> io::Result<u64> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl Device for Window<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self.file, buf, self.at(offset, buf.len())?)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self.file, buf, self.at(offset, buf.len())?)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
