//! VMGS: the structure parsers on the raw input, then `Vmgs::open` on the input as a
//! file image (padded or cut to 16-64 blocks) with no key and with a fixed key, once
//! as given and once with its checksums, commit digests and plaintext-file hashes
//! recomputed so that mutations reach the code behind them. What opens must read
//! back, take a commit, and open again with the commit in it.
//!
//! The harness lives here rather than in the library (as the other targets' do)
//! because `vmgs` keeps no test hooks in its source.
#![no_main]

use std::io;

use aws_lc_rs::digest;
use vmgs::{DatastoreKey, OpenOptions, Storage, Vmgs};
use vmgs_format::{
    BLOCK_SIZE, ExtendedTable, FileId, FileTable, HEADER_SIZE, Header, header_offset,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

struct Mem(Vec<u8>);

impl Storage for Mem {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|s| self.0.get_mut(s..s.checked_add(buf.len())?))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

const KEY: [u8; 32] = [0x42; 32];

fn u32_at(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fn run(data: &[u8]) {
    // The parsers alone; what they accept must encode back to the same bytes (the
    // commit digest hashes the re-encoded tables).
    if let Ok(Some(h)) = Header::parse(data) {
        assert_eq!(&h.to_bytes()[..], &data[..HEADER_SIZE]);
    }
    let (own, capacity) = (u32_at(data, 0), u32_at(data, 4));
    if let Some(block) = data.get(8..) {
        if let Ok(t) = FileTable::parse(block, own, capacity) {
            assert_eq!(&t.to_block(own, &t.commit_digest)[..], &block[..BLOCK_SIZE]);
        }
    }
    if let Ok(t) = ExtendedTable::parse(data) {
        assert_eq!(&t.to_block()[..], &data[..BLOCK_SIZE]);
    }

    // The input as a file image.
    let blocks = data.len().div_ceil(BLOCK_SIZE).clamp(16, 64);
    let mut image = data.to_vec();
    image.resize(blocks * BLOCK_SIZE, 0);
    open_and_use(&image);
    let fixed = fix_up(&image);
    if fixed != image {
        open_and_use(&fixed);
    }
}

fn open_and_use(image: &[u8]) {
    let key = DatastoreKey::new(KEY);
    for k in [None, Some(&key)] {
        for recover in [false, true] {
            let Ok((mut v, opened)) = Vmgs::open(Mem(image.to_vec()), k, OpenOptions { recover })
            else {
                continue;
            };
            let files = v.list();
            let mut readable = Vec::new();
            for f in &files {
                if let Ok(d) = v.read_file(f.id) {
                    assert_eq!(d.len() as u64, f.size);
                    readable.push((f.id, d.to_vec()));
                }
            }
            if opened.recovered_from.is_some() {
                assert!(recover);
            }
            // A commit on whatever was accepted, then a clean open must show it.
            let id = FileId::GUEST_SECRET_KEY;
            let written = b"fuzz".to_vec();
            if v.write_file(id, &written, false).is_err() {
                continue;
            }
            let (_, seq) = v.position();
            assert_eq!(seq, opened.sequence.wrapping_add(1));
            let Mem(after) = v.storage();
            let (w, reopened) = Vmgs::open(Mem(after.clone()), k, OpenOptions::default())
                .unwrap_or_else(|e| panic!("a committed file does not open: {e}"));
            assert_eq!(reopened.sequence, seq);
            assert_eq!(w.read_file(id).map(|d| d.to_vec()).ok(), Some(written));
            for (fid, d) in readable.iter().filter(|(fid, _)| *fid != id) {
                assert_eq!(w.read_file(*fid).map(|x| x.to_vec()).ok().as_ref(), Some(d));
            }
        }
    }
}

/// The image with, in each header slot that holds a header-like record: the
/// plaintext-file hashes and the table check recomputed (and an unencrypted state's
/// commit digest), then the header's CRC.
fn fix_up(image: &[u8]) -> Vec<u8> {
    let mut out = image.to_vec();
    let capacity = (out.len() / BLOCK_SIZE) as u32;
    for slot in 0..2 {
        let at = header_offset(slot) as usize;
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&out[at..at + HEADER_SIZE]);
        if h.iter().all(|&b| b == 0) {
            continue;
        }
        let encryption = u16::from_le_bytes([h[32], h[33]]);
        let table_block = u32_at(&h, 24);
        if table_block < capacity {
            let tb = table_block as usize * BLOCK_SIZE;
            if let Ok(mut t) = FileTable::parse(&out[tb..tb + BLOCK_SIZE], table_block, capacity) {
                for e in t.files.iter_mut().flatten() {
                    if !e.attributes.encrypted {
                        let d = e.offset as usize * BLOCK_SIZE;
                        let d = digest::digest(&digest::SHA256, &out[d..d + e.size as usize]);
                        e.tag.copy_from_slice(&d.as_ref()[..16]);
                    }
                }
                // The table check (both kinds; the first 16 bytes of the SHA-256 of
                // the header and the table with digest and check zeroed) and, when
                // unencrypted, the digest (that whole SHA-256).
                let mut hz = h;
                hz[12..16].fill(0);
                t.table_check = [0; 16];
                let mut ctx = digest::Context::new(&digest::SHA256);
                ctx.update(&hz);
                ctx.update(&t.to_block(table_block, &[0; 32]));
                let d = ctx.finish();
                t.table_check.copy_from_slice(&d.as_ref()[..16]);
                if encryption == 0 {
                    t.commit_digest.copy_from_slice(d.as_ref());
                }
                out[tb..tb + BLOCK_SIZE]
                    .copy_from_slice(&t.to_block(table_block, &t.commit_digest));
            }
        }
        h[12..16].fill(0);
        let crc = vmgs_format::crc32(&h);
        out[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
    }
    out
}
