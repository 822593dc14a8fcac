//! Property tests of the VMGS structures, with a small deterministic PRNG (no
//! dependencies): random valid headers, file tables and extended tables encode and
//! parse back to themselves; any encoding the parsers accept is the canonical one (the
//! commit digest hashes the re-encoded tables, so a second encoding of the same table
//! would be a change the digest cannot see); every accepted file table keeps its
//! invariants; and random or mutated bytes never make a parser panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vmgs_format::{
    BLOCK_SIZE, Encryption, ExtendedTable, FILE_COUNT, FileAttributes, FileEntry, FileId,
    FileTable, HEADER_SIZE, Header, MAX_BLOCKS, MIN_BLOCKS, MIN_FILE_BLOCK, RawWrappedKey,
};

/// xorshift64*: deterministic, so a failure names its seed and case.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = self.next() as u8;
        }
        b
    }
    fn vec(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A u32 biased towards the edges, where off-by-ones live.
    fn edgy_u32(&mut self) -> u32 {
        match self.next() % 6 {
            0 => 0,
            1 => u32::MAX,
            2 => u32::MAX - self.range(0, 3) as u32,
            3 => self.range(0, 20) as u32,
            _ => self.u32(),
        }
    }
}

fn wrapped_key(r: &mut Rng) -> RawWrappedKey {
    let mut ciphertext = r.bytes::<32>();
    if r.one_in(8) {
        // Mostly zero, but not empty.
        ciphertext = [0; 32];
        ciphertext[r.range(0, 31) as usize] = 1;
    }
    RawWrappedKey {
        nonce: r.bytes(),
        tag: r.bytes(),
        ciphertext,
        ..Default::default()
    }
}

fn header(r: &mut Rng) -> Header {
    let encryption = if r.bool() {
        Encryption::Aes256Gcm
    } else {
        Encryption::None
    };
    let key_slots = match encryption {
        Encryption::None => [None, None],
        Encryption::Aes256Gcm => match r.range(0, 2) {
            0 => [Some(wrapped_key(r)), None],
            1 => [None, Some(wrapped_key(r))],
            _ => [Some(wrapped_key(r)), Some(wrapped_key(r))],
        },
    };
    Header {
        sequence: r.edgy_u32(),
        file_table_offset: r.edgy_u32().max(MIN_FILE_BLOCK),
        encryption,
        reprovisioned: r.bool(),
        key_slots,
    }
}

/// A valid table of a file of `capacity` blocks with its own block at `own`.
fn file_table(r: &mut Rng) -> (FileTable, u32, u32) {
    let capacity = match r.range(0, 3) {
        0 => MIN_BLOCKS,
        1 => MAX_BLOCKS,
        2 => r.edgy_u32().max(MIN_BLOCKS),
        _ => r.range(u64::from(MIN_BLOCKS), 4096) as u32,
    };
    let own = r.range(u64::from(MIN_FILE_BLOCK), u64::from(capacity) - 1) as u32;
    let mut t = FileTable {
        commit_digest: r.bytes(),
        ..FileTable::default()
    };
    // Ids in a random order, extents laid out left to right with random gaps, the
    // table's own block skipped.
    let mut ids: Vec<usize> = (1..FILE_COUNT).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, r.range(0, i as u64) as usize);
    }
    let wanted = r.range(0, (FILE_COUNT - 1) as u64) as usize;
    let mut at = u64::from(MIN_FILE_BLOCK);
    let spread = (u64::from(capacity) / (wanted as u64 + 1)).max(1);
    for &id in ids.iter().take(wanted) {
        let gap = if r.bool() { 0 } else { r.range(0, spread / 2) };
        let blocks = if r.one_in(4) {
            1
        } else {
            r.range(1, spread.max(1))
        };
        let mut start = at + gap;
        if (start..start + blocks).contains(&u64::from(own)) {
            start = u64::from(own) + 1;
        }
        if start + blocks > u64::from(capacity) {
            break;
        }
        at = start + blocks;
        let max_size = blocks * BLOCK_SIZE as u64;
        let size = match r.range(0, 3) {
            0 => 0,
            1 => max_size,
            _ => r.range(0, max_size),
        };
        t.files[id] = Some(FileEntry {
            offset: start as u32,
            blocks: blocks as u32,
            size,
            nonce: r.bytes(),
            tag: r.bytes(),
            attributes: FileAttributes {
                encrypted: r.bool(),
            },
        });
    }
    (t, own, capacity)
}

fn extended_table(r: &mut Rng) -> ExtendedTable {
    let mut t = ExtendedTable::default();
    for k in &mut t.keys {
        if r.bool() {
            *k = Some(if r.one_in(16) { [0; 32] } else { r.bytes() });
        }
    }
    t
}

/// Changes 1-4 bits or bytes of `b`.
fn mutate(r: &mut Rng, b: &mut [u8]) {
    for _ in 0..r.range(1, 4) {
        let i = r.range(0, b.len() as u64 - 1) as usize;
        if r.bool() {
            b[i] ^= 1 << r.range(0, 7);
        } else {
            b[i] = match r.range(0, 2) {
                0 => 0,
                1 => 0xFF,
                _ => r.next() as u8,
            };
        }
    }
}

/// The invariants a parsed table promises (checked here without the parser's code).
fn check_invariants(t: &FileTable, own: u32, capacity: u32) {
    assert!(t.files[0].is_none());
    let mut extents = vec![(u64::from(own), u64::from(own) + 1)];
    for e in t.files.iter().flatten() {
        assert!(e.blocks >= 1);
        assert!(e.offset >= MIN_FILE_BLOCK);
        assert!(e.end() <= u64::from(capacity));
        assert!(e.size <= u64::from(e.blocks) * BLOCK_SIZE as u64);
        extents.push((u64::from(e.offset), e.end()));
    }
    extents.sort_unstable();
    for w in extents.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
}

const CASES: u64 = 3000;

#[test]
fn headers_round_trip_and_accepted_bytes_are_canonical() {
    let mut r = Rng::new(1);
    let mut accepted_mutants = 0;
    for case in 0..CASES {
        let h = header(&mut r);
        let bytes = h.to_bytes();
        assert_eq!(Header::parse(&bytes), Ok(Some(h.clone())), "case {case}");
        // Trailing bytes (the rest of the sector) are not part of the header.
        let mut sector = bytes.to_vec();
        sector.extend(r.vec(64));
        assert_eq!(Header::parse(&sector), Ok(Some(h.clone())), "case {case}");
        assert!(Header::parse(&bytes[..HEADER_SIZE - 1]).is_err());
        for _ in 0..4 {
            let mut m = bytes;
            mutate(&mut r, &mut m);
            if let Ok(Some(p)) = Header::parse(&m) {
                assert_eq!(p.to_bytes(), m, "case {case}: a second encoding");
                accepted_mutants += usize::from(m != bytes);
            }
        }
    }
    // CRC-32 refuses a few-byte change but for 2^-32 luck.
    assert_eq!(accepted_mutants, 0);
}

#[test]
fn file_tables_round_trip_and_accepted_bytes_are_canonical() {
    let mut r = Rng::new(2);
    let (mut files, mut accepted_mutants) = (0, 0);
    for case in 0..CASES {
        let (t, own, capacity) = file_table(&mut r);
        check_invariants(&t, own, capacity);
        files += t.files.iter().flatten().count();
        let block = t.to_block(own, &t.commit_digest);
        assert_eq!(
            FileTable::parse(&block, own, capacity),
            Ok(t.clone()),
            "case {case}"
        );
        // The same bytes read as a table elsewhere, or in a smaller file.
        if own > MIN_FILE_BLOCK {
            assert!(FileTable::parse(&block, own - 1, capacity).is_err());
        }
        let max_end = t.files.iter().flatten().map(FileEntry::end).max();
        if let Some(end) = max_end.filter(|&e| e > u64::from(own) + 1) {
            assert!(FileTable::parse(&block, own, end as u32 - 1).is_err());
        }
        for _ in 0..8 {
            let mut m = block;
            mutate(&mut r, &mut m);
            if let Ok(p) = FileTable::parse(&m, own, capacity) {
                assert_eq!(p.to_block(own, &p.commit_digest), m, "case {case}");
                check_invariants(&p, own, capacity);
                accepted_mutants += usize::from(m != block);
            }
        }
    }
    eprintln!("{CASES} tables with {files} files; {accepted_mutants} mutants accepted");
    assert!(files > CASES as usize * 10, "{files}");
    assert!(accepted_mutants > 1000, "{accepted_mutants}");
}

#[test]
fn extended_tables_round_trip_and_accepted_bytes_are_canonical() {
    let mut r = Rng::new(3);
    let mut accepted_mutants = 0;
    for case in 0..CASES {
        let t = extended_table(&mut r);
        let block = t.to_block();
        assert_eq!(ExtendedTable::parse(&block), Ok(t.clone()), "case {case}");
        for _ in 0..4 {
            let mut m = block;
            mutate(&mut r, &mut m);
            if let Ok(p) = ExtendedTable::parse(&m) {
                assert_eq!(p.to_block(), m, "case {case}");
                accepted_mutants += usize::from(m != block);
            }
        }
    }
    assert!(accepted_mutants > 1000, "{accepted_mutants}");
}

#[test]
fn random_bytes_never_panic() {
    let mut r = Rng::new(4);
    for _ in 0..CASES {
        let len = r.range(0, 2 * BLOCK_SIZE as u64) as usize;
        let mut b = r.vec(len);
        // Mostly-zero blocks with a few random entries get further into the parsers.
        if r.bool() {
            for (i, x) in b.iter_mut().enumerate() {
                if (i / 64) % 7 != 0 {
                    *x = 0;
                }
            }
        }
        let _ = Header::parse(&b);
        let _ = ExtendedTable::parse(&b);
        let (own, capacity) = (r.edgy_u32(), r.edgy_u32());
        if let Ok(t) = FileTable::parse(&b, own, capacity) {
            check_invariants(&t, own, capacity);
        }
    }
    // Valid headers with a field set at random (the CRC recomputed).
    for _ in 0..CASES {
        let mut b = header(&mut r).to_bytes();
        let at = r.range(0, HEADER_SIZE as u64 - 4) as usize;
        b[at..at + 4].copy_from_slice(&r.edgy_u32().to_le_bytes());
        b[12..16].fill(0);
        let crc = vmgs_format::crc32(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        if let Ok(Some(h)) = Header::parse(&b) {
            assert_eq!(h.to_bytes(), b);
        }
    }
}

#[test]
fn file_ids_parse_from_their_names_and_numbers() {
    for n in 0..=255u8 {
        match FileId::new(n) {
            Some(id) => {
                assert_eq!(n.to_string().parse::<FileId>(), Ok(id));
                if let Some(name) = id.name() {
                    assert_eq!(name.parse::<FileId>(), Ok(id));
                    assert_eq!(name.to_lowercase().parse::<FileId>(), Ok(id));
                    assert_eq!(id.to_string(), format!("{n} ({name})"));
                }
            }
            None => assert!(n.to_string().parse::<FileId>().is_err()),
        }
    }
}
