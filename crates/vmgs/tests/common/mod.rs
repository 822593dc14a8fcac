//! Shared helpers for the VMGS proof tests: in-memory storages (one that fails on
//! demand and models a disk cache that loses unflushed writes), and readers of a
//! VMGS's whole content.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use vmgs::vmgs_format::{BLOCK_SIZE, FileId, FileTable, HEADER_SIZE, Header, header_offset};
use vmgs::{DatastoreKey, OpenOptions, Opened, Storage, Vmgs, VmgsError};

/// Bytes of `n` blocks.
pub const fn blocks(n: usize) -> usize {
    n * BLOCK_SIZE
}

/// Deterministic test data.
pub fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

fn read_slice(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let src = start
        .checked_add(buf.len())
        .and_then(|end| data.get(start..end))
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(src);
    Ok(())
}

fn write_slice(data: &mut [u8], buf: &[u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let dst = start
        .checked_add(buf.len())
        .and_then(|end| data.get_mut(start..end))
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    dst.copy_from_slice(buf);
    Ok(())
}

/// A VMGS image in memory.
#[derive(Clone, Debug)]
pub struct Mem(pub Vec<u8>);

impl Storage for Mem {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(&self.0, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_slice(&mut self.0, buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// A borrowed, read-only image: opening it costs no copy (for the bit-flip loops).
/// A write is an error.
pub struct Borrowed<'a>(pub &'a [u8]);

impl Storage for Borrowed<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(self.0, buf, offset)
    }
    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only test storage"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("read-only test storage"))
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// One operation a commit made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write of `len` bytes at `offset`.
    Write { offset: u64, len: usize },
    /// A flush.
    Flush,
}

impl Op {
    /// Whether this is a write into a header slot (blocks 0 and 1).
    pub fn is_header_write(&self) -> bool {
        matches!(self, Op::Write { offset, .. } if *offset < header_offset(2))
    }
}

/// The state of a [`Faulty`] storage.
#[derive(Debug, Default)]
pub struct Disk {
    /// What a reader sees (every write that succeeded).
    pub visible: Vec<u8>,
    /// What survives a power loss: updated only by a flush.
    pub durable: Vec<u8>,
    /// Writes since the last flush, in order.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// Writes and flushes so far, counted from 0.
    pub ops: usize,
    /// Fail (and do nothing) at this operation.
    pub fail_at: Option<usize>,
    /// The operation that failed, if one did.
    pub failed: Option<Op>,
    /// Every operation, in order.
    pub log: Vec<Op>,
}

/// A storage that counts writes and flushes, fails at the N-th (writing nothing), and
/// keeps a durable copy that only a flush updates. Cloning gives another handle on
/// the same disk, so a test can look at it while a `Vmgs` owns the storage.
#[derive(Clone, Debug)]
pub struct Faulty(pub Rc<RefCell<Disk>>);

impl Faulty {
    /// A disk holding `image`, all of it durable.
    pub fn new(image: Vec<u8>) -> Self {
        Faulty(Rc::new(RefCell::new(Disk {
            durable: image.clone(),
            visible: image,
            ..Disk::default()
        })))
    }

    /// Fail the `n`-th operation from now (0: the next one).
    pub fn fail_in(&self, n: usize) {
        let mut d = self.0.borrow_mut();
        d.fail_at = Some(d.ops + n);
    }

    /// Stop failing.
    pub fn heal(&self) {
        self.0.borrow_mut().fail_at = None;
    }

    pub fn ops(&self) -> usize {
        self.0.borrow().ops
    }

    pub fn failed(&self) -> Option<Op> {
        self.0.borrow().failed.clone()
    }

    pub fn visible(&self) -> Vec<u8> {
        self.0.borrow().visible.clone()
    }

    /// The images a power loss now can leave: the durable copy with each subset of
    /// the unflushed writes applied (each write whole or not at all, in order).
    pub fn crash_images(&self) -> Vec<Vec<u8>> {
        let d = self.0.borrow();
        let n = d.pending.len();
        assert!(n <= 12, "{n} unflushed writes: too many subsets");
        (0..1u32 << n)
            .map(|mask| {
                let mut img = d.durable.clone();
                for (i, (offset, bytes)) in d.pending.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        write_slice(&mut img, bytes, *offset).unwrap();
                    }
                }
                img
            })
            .collect()
    }

    fn step(&self, op: Op) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        let n = d.ops;
        d.ops += 1;
        d.log.push(op.clone());
        if d.fail_at == Some(n) {
            d.failed = Some(op);
            return Err(io::Error::other(format!(
                "injected failure at operation {n}"
            )));
        }
        Ok(())
    }
}

impl Storage for Faulty {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(&self.0.borrow().visible, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.step(Op::Write {
            offset,
            len: buf.len(),
        })?;
        let mut d = self.0.borrow_mut();
        write_slice(&mut d.visible, buf, offset)?;
        d.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.step(Op::Flush)?;
        let mut d = self.0.borrow_mut();
        d.durable = d.visible.clone();
        d.pending.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.borrow().visible.len() as u64)
    }
}

/// A VMGS's content: every file, by id.
pub type Content = BTreeMap<FileId, Vec<u8>>;

/// Reads every file (the encrypted ones need the VMGS unlocked).
pub fn content<S: Storage>(v: &Vmgs<S>) -> Content {
    v.list()
        .into_iter()
        .map(|f| (f.id, v.read_file(f.id).unwrap().to_vec()))
        .collect()
}

/// Opens a copy-free view of `image`.
pub fn open<'a>(
    image: &'a [u8],
    key: Option<&DatastoreKey>,
    recover: bool,
) -> Result<(Vmgs<Borrowed<'a>>, Opened), VmgsError> {
    Vmgs::open(Borrowed(image), key, OpenOptions { recover })
}

/// Formats an image of `n` blocks in memory.
pub fn format(n: usize, key: Option<&DatastoreKey>) -> Vmgs<Mem> {
    Vmgs::format(Mem(vec![0; blocks(n)]), key).unwrap()
}

/// The 168 header bytes of `slot`.
pub fn header_bytes(image: &[u8], slot: usize) -> &[u8] {
    let at = header_offset(slot) as usize;
    &image[at..at + HEADER_SIZE]
}

/// The parsed header of `slot`.
pub fn header(image: &[u8], slot: usize) -> Header {
    Header::parse(header_bytes(image, slot)).unwrap().unwrap()
}

/// The block `b` of an image.
pub fn block(image: &[u8], b: u32) -> &[u8] {
    let at = b as usize * BLOCK_SIZE;
    &image[at..at + BLOCK_SIZE]
}

/// The file table of the header in `slot`.
pub fn table(image: &[u8], slot: usize) -> FileTable {
    let h = header(image, slot);
    let capacity = (image.len() / BLOCK_SIZE) as u32;
    FileTable::parse(
        block(image, h.file_table_offset),
        h.file_table_offset,
        capacity,
    )
    .unwrap()
}

/// Flips bit `bit` (counted from byte `at`) of `image`.
pub fn flip(image: &mut [u8], at: usize, bit: usize) {
    image[at + bit / 8] ^= 1 << (bit % 8);
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
