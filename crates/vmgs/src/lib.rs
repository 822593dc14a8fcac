//! A VM guest state (VMGS) file: a small file holding a confidential VM's vTPM state,
//! UEFI variables, key protector and identity, in the layout of `vmgs-format`.
//!
//! **Commits are copy-on-write.** A write puts the new data, a new extended file table
//! and a new file table into blocks the current state does not use, then the new
//! header into the header slot that is not in use, then makes it durable with one
//! `fdatasync`. A reader takes the header with the newer sequence number (the two
//! must be consecutive) and checks everything that header vouches for before using
//! it. A crash at any instant therefore leaves the old state or the new one.
//!
//! **What is checked at open.** The header's CRC; a *commit digest* kept in the file
//! table's own entry, covering the header and the file table (HMAC-SHA256 of their
//! SHA-256 under a key derived from the metadata key when the file is encrypted, that
//! SHA-256 otherwise); the extended table's AES-GCM tag, which the table holds; and
//! every file's data (its AES-GCM tag, or for a
//! plaintext file a SHA-256 prefix in the table). By default ([`OpenOptions::recover`]
//! off) any failure is an error naming the slot, block or file, never a silent fall
//! back to the older state: a process killed mid-commit cannot produce such a state
//! (the header is written last, in one write within one sector), so a failure means the
//! file was damaged or altered. With `recover`, a newest state that fails is skipped
//! for the older one when that one passes (for a commit torn by a power loss).
//!
//! **Keys.** Every encrypted file has its own AES-256 key, fresh at every write; the
//! per-file keys are in the extended file table, encrypted under the metadata key; the
//! metadata key is wrapped by a datastore key in one of two header slots, so the
//! datastore key can be rotated ([`Vmgs::rekey`]) without a moment where neither key
//! opens the file. Keys are zeroized when dropped and never printed.
//!
//! Not detected: replacing the whole file with an older copy of itself (a rollback);
//! that needs a counter outside the file (`docs/formats/vmgs.md`).
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{digest, hmac, rand};
use vmgs_format::{
    BLOCK_SIZE, Encryption, ExtendedTable, FILE_COUNT, FileAttributes, FileEntry, FileId,
    FileTable, FormatError, HEADER_SIZE, Header, MAX_BLOCKS, MIN_BLOCKS, MIN_FILE_BLOCK,
    RawWrappedKey, header_offset,
};
use zeroize::{Zeroize, Zeroizing};

pub use vmgs_format;

pub mod key_protector;

/// The default size of a new file: 4 MiB.
pub const DEFAULT_SIZE: u64 = 4 << 20;

/// A 32-byte datastore key: what unlocks an encrypted VMGS.
pub struct DatastoreKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DatastoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatastoreKey(..)")
    }
}

impl DatastoreKey {
    /// The key `bytes`.
    pub fn new(bytes: [u8; 32]) -> Self {
        DatastoreKey(Zeroizing::new(bytes))
    }

    /// A random key.
    pub fn generate() -> Result<Self, VmgsError> {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::fill(k.as_mut()).map_err(|_| VmgsError::Crypto("random"))?;
        Ok(DatastoreKey(k))
    }

    /// Reads a key file: exactly 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, VmgsError> {
        Ok(DatastoreKey(read_key_file(path, "a datastore key")?))
    }

    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why a VMGS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmgsError {
    /// Reading or writing the file.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A file size that is not a whole number of blocks in the allowed range.
    #[error("a VMGS file is a multiple of 4096 bytes between {min} and {max} bytes, not {0}", min = u64::from(MIN_BLOCKS) * BLOCK_SIZE as u64, max = u64::from(MAX_BLOCKS) * BLOCK_SIZE as u64)]
    Size(u64),
    /// A key file that is not 32 bytes.
    #[error("key file {path}: {len} bytes, {what} is exactly 32")]
    KeyFile {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
        /// Which key it should hold ("a datastore key", "a key-encryption key").
        what: &'static str,
    },
    /// Both header slots are empty: not a formatted VMGS.
    #[error("both header slots are empty: the file was never formatted")]
    Empty,
    /// A header slot that is neither empty nor a valid header.
    #[error("header slot {slot} is damaged: {source}")]
    HeaderDamaged {
        /// The slot (0 or 1).
        slot: usize,
        /// What is wrong.
        source: FormatError,
    },
    /// Two valid headers whose sequence numbers are not consecutive (one was replaced
    /// by a header of another time or another file).
    #[error(
        "the headers' sequence numbers {0} (slot 0) and {1} (slot 1) are not consecutive: a header was replayed or mixed in from another copy"
    )]
    OutOfSequence(u32, u32),
    /// The state a header points to fails a check.
    #[error("header slot {slot} (sequence {sequence}): {source}")]
    State {
        /// The slot.
        slot: usize,
        /// Its sequence number.
        sequence: u32,
        /// What failed.
        #[source]
        source: Box<VmgsError>,
    },
    /// The file table block is not a valid table.
    #[error("file table at block {block}: {source}")]
    Table {
        /// Its block.
        block: u32,
        /// What is wrong.
        source: FormatError,
    },
    /// The header and file table do not match the table's keyless check.
    #[error(
        "the file table at block {0} does not match its check: a torn commit, or the header or table was altered"
    )]
    TableCheck(u32),
    /// The commit digest does not cover what is on disk.
    #[error(
        "the commit digest does not match the header and tables (altered, or from another file)"
    )]
    Digest,
    /// A file's data fail their tag or hash.
    #[error(
        "file {id} (blocks {offset}..{end}): its data fail authentication (altered, swapped or damaged)"
    )]
    FileData {
        /// The file.
        id: FileId,
        /// Its first block.
        offset: u32,
        /// One past its last block.
        end: u64,
    },
    /// The extended file table fails authentication or parsing.
    #[error("extended file table at block {block}: {reason}")]
    ExtendedTable {
        /// Its block.
        block: u32,
        /// What failed.
        reason: String,
    },
    /// No key slot opens with the key given.
    #[error("the datastore key does not open this VMGS (no key slot unwraps with it)")]
    WrongKey,
    /// An encrypted VMGS opened without a key, for something that needs it.
    #[error("this VMGS is encrypted: {0} needs its datastore key")]
    KeyRequired(&'static str),
    /// A key given for a VMGS that is not encrypted.
    #[error("this VMGS is not encrypted; it takes no key")]
    NotEncrypted,
    /// The file id holds no file.
    #[error("file {0} does not exist in this VMGS")]
    NoSuchFile(FileId),
    /// A file id the format keeps for itself.
    #[error("file {0} is the format's own table and cannot be written")]
    ReservedId(FileId),
    /// Not enough free blocks for the write; nothing was changed.
    #[error(
        "the VMGS is full: the write needs {need} free blocks in a row and the largest free run is {largest}; the old content is kept"
    )]
    NoSpace {
        /// Blocks needed.
        need: u64,
        /// The largest free run.
        largest: u64,
    },
    /// A previous commit failed after its header may have reached the file: the
    /// in-memory state may differ from the file's, so it must be opened again.
    #[error("a previous commit failed part-way; open the file again")]
    Poisoned,
    /// The rekey has nothing to do.
    #[error("the new datastore key is the key already in use")]
    SameKey,
    /// The crypto library failed (never expected).
    #[error("crypto: {0}")]
    Crypto(&'static str),
    /// Another process has the file open.
    #[error("{0}: the VMGS is in use by another process")]
    Locked(String),
    /// The key protector file is not one this build reads.
    #[error("the key protector: {0}")]
    KeyProtector(String),
}

impl VmgsError {
    /// Whether this is damage, tampering or a wrong key (exit 1 in the CLI) rather
    /// than a usage or I/O error (exit 2).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            VmgsError::Empty
                | VmgsError::HeaderDamaged { .. }
                | VmgsError::OutOfSequence(..)
                | VmgsError::State { .. }
                | VmgsError::Table { .. }
                | VmgsError::TableCheck(_)
                | VmgsError::Digest
                | VmgsError::FileData { .. }
                | VmgsError::ExtendedTable { .. }
                | VmgsError::WrongKey
                | VmgsError::KeyProtector(_)
        )
    }
}

/// Where a VMGS lives: a file, or in tests a writer that fails on demand.
pub trait Storage {
    /// Fills `buf` from byte `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The size in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// How [`Vmgs::open`] treats a newest state that fails its checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Fall back to the older state when the newest fails and the older passes
    /// (after a power loss tore the last commit); a damaged header slot is then
    /// ignored too. Off: every failure is an error.
    pub recover: bool,
}

/// What [`Vmgs::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The header slot in use.
    pub slot: usize,
    /// Its sequence number.
    pub sequence: u32,
    /// With `recover`: why the newest state was skipped.
    pub recovered_from: Option<String>,
}

/// A header slot as found on disk, for `info`.
#[derive(Clone, Debug)]
pub enum SlotState {
    /// All zero.
    Empty,
    /// A valid header.
    Valid(Header),
    /// Neither.
    Damaged(FormatError),
}

/// What can be read without a key and without checking any data: for `info`.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The file's size in blocks.
    pub blocks: u32,
    /// The two header slots.
    pub slots: [SlotState; 2],
    /// The slot the reader would use, if the headers allow one.
    pub active: Result<usize, String>,
    /// The active header's file table, as stored (or why it could not be read).
    pub table: Option<Result<FileTable, String>>,
}

/// One file, as [`Vmgs::list`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Its id.
    pub id: FileId,
    /// Bytes of data.
    pub size: u64,
    /// Its first block.
    pub offset: u32,
    /// Blocks allocated.
    pub blocks: u32,
    /// Encrypted under its own key.
    pub encrypted: bool,
}

impl FileInfo {
    /// File `id` as its table entry `e` describes it.
    pub fn of(id: FileId, e: &FileEntry) -> Self {
        FileInfo {
            id,
            size: e.size,
            offset: e.offset,
            blocks: e.blocks,
            encrypted: e.attributes.encrypted,
        }
    }
}

/// The unlocked key material of an encrypted VMGS (each part zeroized on drop).
struct Unlocked {
    metadata_key: Zeroizing<[u8; 32]>,
    ext: ExtendedTable,
    datastore: DatastoreKey,
    /// The header slot the datastore key unwrapped.
    key_slot: usize,
}

/// The state one header describes.
struct State {
    header: Header,
    table: FileTable,
}

/// An open VMGS.
pub struct Vmgs<S: Storage = File> {
    storage: S,
    blocks: u32,
    slot: usize,
    state: State,
    keys: Option<Unlocked>,
    poisoned: bool,
}

impl<S: Storage> std::fmt::Debug for Vmgs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmgs")
            .field("blocks", &self.blocks)
            .field("slot", &self.slot)
            .field("sequence", &self.state.header.sequence)
            .field("unlocked", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

const AAD_METADATA_KEY: &[u8] = b"opencvm vmgs metadata key";
const AAD_EXTENDED_TABLE: &[u8] = b"opencvm vmgs extended file table";
const COMMIT_KEY_LABEL: &[u8] = b"opencvm vmgs commit digest key";

fn random<const N: usize>() -> Result<[u8; N], VmgsError> {
    let mut b = [0u8; N];
    rand::fill(&mut b).map_err(|_| VmgsError::Crypto("random"))?;
    Ok(b)
}

fn file_aad(id: FileId, size: u64) -> Vec<u8> {
    let mut aad = b"opencvm vmgs file".to_vec();
    aad.push(id.get());
    aad.extend_from_slice(&size.to_le_bytes());
    aad
}

/// AES-256-GCM with a random nonce: (nonce, tag); `data` is encrypted in place.
fn seal(key: &[u8; 32], aad: &[u8], data: &mut [u8]) -> Result<([u8; 12], [u8; 16]), VmgsError> {
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| VmgsError::Crypto("aes key"))?,
    );
    let nonce = random::<12>()?;
    let tag = k
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
        .map_err(|_| VmgsError::Crypto("seal"))?;
    let mut t = [0u8; 16];
    t.copy_from_slice(tag.as_ref());
    Ok((nonce, t))
}

/// Decrypts `data` in place; `false` when the tag does not verify.
fn open_sealed(
    key: &[u8; 32],
    nonce: &[u8; 12],
    tag: &[u8; 16],
    aad: &[u8],
    data: &mut Vec<u8>,
) -> bool {
    let Ok(k) = UnboundKey::new(&AES_256_GCM, key) else {
        return false;
    };
    let k = LessSafeKey::new(k);
    data.extend_from_slice(tag);
    let n = match k.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data) {
        Ok(plain) => plain.len(),
        Err(_) => return false,
    };
    data.truncate(n);
    true
}

/// The 32 bytes of the key file `path`, which holds `what` (for the error).
fn read_key_file(path: &Path, what: &'static str) -> Result<Zeroizing<[u8; 32]>, VmgsError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| VmgsError::Io {
        what: format!("key file {}", path.display()),
        source,
    })?);
    let mut k = Zeroizing::new([0u8; 32]);
    if bytes.len() != k.len() {
        return Err(VmgsError::KeyFile {
            path: path.display().to_string(),
            len: bytes.len(),
            what,
        });
    }
    k.copy_from_slice(&bytes);
    Ok(k)
}

fn hash_prefix(data: &[u8]) -> [u8; 16] {
    let d = digest::digest(&digest::SHA256, data);
    let mut t = [0u8; 16];
    t.copy_from_slice(&d.as_ref()[..16]);
    t
}

/// The bytes the commit digest and the table check cover: the header (checksum
/// zeroed) and the table block (digest and check zeroed).
struct Covered {
    header: [u8; HEADER_SIZE],
    table: [u8; BLOCK_SIZE],
}

impl Covered {
    fn new(header: &Header, table: &FileTable) -> Self {
        let mut h = header.to_bytes();
        h[12..16].fill(0);
        let mut t = table.to_block(header.file_table_offset, &[0; 32]);
        // Entry 0's reserved bytes: the table check.
        t[48..64].fill(0);
        Covered {
            header: h,
            table: t,
        }
    }

    /// Their SHA-256: the commit digest of an unencrypted VMGS, and its first 16
    /// bytes the keyless table check of either kind, which finds a torn commit or a
    /// damaged table without the key.
    fn sha256(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.header);
        ctx.update(&self.table);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// The commit digest of an encrypted VMGS: HMAC-SHA256, under a key derived from the
/// metadata key, of `sha` (the covered bytes' SHA-256). The extended table is bound
/// through its AES-GCM tag, which sits in the covered table.
fn commit_mac(metadata_key: &[u8; 32], sha: &[u8; 32]) -> [u8; 32] {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, metadata_key),
        COMMIT_KEY_LABEL,
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), sha).as_ref(),
    );
    out
}

fn first16(d: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The blocks of a file of `size` bytes, if that is an allowed VMGS size.
fn blocks_of(size: u64) -> Result<u32, VmgsError> {
    let blocks = size / BLOCK_SIZE as u64;
    if !size.is_multiple_of(BLOCK_SIZE as u64)
        || blocks < u64::from(MIN_BLOCKS)
        || blocks > u64::from(MAX_BLOCKS)
    {
        return Err(VmgsError::Size(size));
    }
    Ok(blocks as u32)
}

fn blocks_for(len: u64) -> u64 {
    len.div_ceil(BLOCK_SIZE as u64).max(1)
}

impl<S: Storage> Vmgs<S> {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> VmgsError {
        let what = what.into();
        move |source| VmgsError::Io { what, source }
    }

    fn capacity(storage: &S) -> Result<u32, VmgsError> {
        blocks_of(storage.size().map_err(Self::io("size"))?)
    }

    /// A handle whose state is an empty table under a sequence-0 header that is not
    /// on disk: what `format` commits on top of, and what `open` replaces.
    fn unloaded(
        storage: S,
        blocks: u32,
        slot: usize,
        encryption: Encryption,
        key_slots: [Option<RawWrappedKey>; 2],
        keys: Option<Unlocked>,
    ) -> Self {
        Vmgs {
            storage,
            blocks,
            slot,
            state: State {
                header: Header {
                    sequence: 0,
                    file_table_offset: MIN_FILE_BLOCK,
                    encryption,
                    reprovisioned: false,
                    key_slots,
                },
                table: FileTable::default(),
            },
            keys,
            poisoned: false,
        }
    }

    /// Formats `storage` (its whole size) as an empty VMGS, encrypted when `key` is
    /// given. Both header slots are overwritten.
    pub fn format(mut storage: S, key: Option<&DatastoreKey>) -> Result<Self, VmgsError> {
        let blocks = Self::capacity(&storage)?;
        storage
            .write_at(&[0u8; 2 * BLOCK_SIZE], 0)
            .map_err(Self::io("clearing the header slots"))?;
        let keys = match key {
            None => None,
            Some(k) => {
                let mk = Zeroizing::new(random::<32>()?);
                Some(Unlocked {
                    metadata_key: mk,
                    ext: ExtendedTable::default(),
                    datastore: DatastoreKey::new(*k.bytes()),
                    key_slot: 0,
                })
            }
        };
        let encryption = if keys.is_some() {
            Encryption::Aes256Gcm
        } else {
            Encryption::None
        };
        let mut key_slots = [None, None];
        if let Some(u) = &keys {
            key_slots[0] = Some(wrap(&u.datastore, &u.metadata_key)?);
        }
        // A state "before the first", never on disk: the first commit writes slot 0
        // with sequence 1 (so its predecessor is slot 1, sequence 0).
        let mut v = Vmgs::unloaded(storage, blocks, 1, encryption, key_slots, keys);
        let header = v.state.header.clone();
        let alloc = Allocator::empty(blocks);
        v.commit_full(FileTable::default(), header, alloc, &[], None, |_| {})?;
        Ok(v)
    }

    /// Reads what the headers and the active file table say, without a key and
    /// without checking any file's data.
    pub fn inspect(storage: &S) -> Result<Inspection, VmgsError> {
        let blocks = Self::capacity(storage)?;
        let slots = Self::read_slots(storage)?;
        let active = Self::order(&slots, true)
            .map(|o| o[0])
            .map_err(|e| e.to_string());
        let table = active.as_ref().ok().and_then(|&s| match &slots[s] {
            SlotState::Valid(h) => {
                Some(Self::read_table(storage, h, blocks).map_err(|e| e.to_string()))
            }
            _ => None,
        });
        Ok(Inspection {
            blocks,
            slots,
            active,
            table,
        })
    }

    fn read_slots(storage: &S) -> Result<[SlotState; 2], VmgsError> {
        let mut out = [SlotState::Empty, SlotState::Empty];
        for (i, s) in out.iter_mut().enumerate() {
            let mut b = [0u8; HEADER_SIZE];
            storage
                .read_at(&mut b, header_offset(i))
                .map_err(Self::io(format!("header slot {i}")))?;
            *s = match Header::parse(&b) {
                Ok(None) => SlotState::Empty,
                Ok(Some(h)) => SlotState::Valid(h),
                Err(e) => SlotState::Damaged(e),
            };
        }
        Ok(out)
    }

    /// The slots to try, newest first.
    fn order(slots: &[SlotState; 2], recover: bool) -> Result<Vec<usize>, VmgsError> {
        match (&slots[0], &slots[1]) {
            (SlotState::Valid(a), SlotState::Valid(b)) => {
                if a.sequence == b.sequence.wrapping_add(1) {
                    Ok(vec![0, 1])
                } else if b.sequence == a.sequence.wrapping_add(1) {
                    Ok(vec![1, 0])
                } else {
                    Err(VmgsError::OutOfSequence(a.sequence, b.sequence))
                }
            }
            (SlotState::Valid(_), SlotState::Empty) => Ok(vec![0]),
            (SlotState::Empty, SlotState::Valid(_)) => Ok(vec![1]),
            (SlotState::Empty, SlotState::Empty) => Err(VmgsError::Empty),
            (SlotState::Valid(_), SlotState::Damaged(_)) if recover => Ok(vec![0]),
            (SlotState::Damaged(_), SlotState::Valid(_)) if recover => Ok(vec![1]),
            (SlotState::Damaged(e), _) => Err(VmgsError::HeaderDamaged {
                slot: 0,
                source: e.clone(),
            }),
            (_, SlotState::Damaged(e)) => Err(VmgsError::HeaderDamaged {
                slot: 1,
                source: e.clone(),
            }),
        }
    }

    fn read_table(storage: &S, header: &Header, blocks: u32) -> Result<FileTable, VmgsError> {
        let block = header.file_table_offset;
        if block >= blocks {
            return Err(VmgsError::Table {
                block,
                source: FormatError::Extent {
                    id: 0,
                    offset: block,
                    end: u64::from(block) + 1,
                    min: MIN_FILE_BLOCK,
                    capacity: blocks,
                },
            });
        }
        let mut b = vec![0u8; BLOCK_SIZE];
        storage
            .read_at(&mut b, u64::from(block) * BLOCK_SIZE as u64)
            .map_err(Self::io(format!("file table at block {block}")))?;
        FileTable::parse(&b, block, blocks).map_err(|source| VmgsError::Table { block, source })
    }

    fn read_blocks(&self, e: &FileEntry, what: &str) -> Result<Vec<u8>, VmgsError> {
        let len = usize::try_from(e.size).map_err(|_| VmgsError::Size(e.size))?;
        let mut b = vec![0u8; len];
        self.storage
            .read_at(&mut b, u64::from(e.offset) * BLOCK_SIZE as u64)
            .map_err(Self::io(what.to_string()))?;
        Ok(b)
    }

    /// Opens a formatted VMGS: with `key` for an encrypted one, checking the newest
    /// state completely. Without a key, an encrypted VMGS opens for reading its
    /// plaintext files only: their hashes are checked, but nothing authenticates the
    /// table they are found through (the commit digest needs the key), and nothing can
    /// be written.
    pub fn open(
        storage: S,
        key: Option<&DatastoreKey>,
        opts: OpenOptions,
    ) -> Result<(Self, Opened), VmgsError> {
        let blocks = Self::capacity(&storage)?;
        let slots = Self::read_slots(&storage)?;
        let order = Self::order(&slots, opts.recover)?;
        // With `recover`, `order` passes over a damaged slot: say so.
        let mut first_failure: Option<VmgsError> =
            slots.iter().enumerate().find_map(|(slot, s)| match s {
                SlotState::Damaged(e) => Some(VmgsError::HeaderDamaged {
                    slot,
                    source: e.clone(),
                }),
                _ => None,
            });
        // Replaced by the state of the slot that loads.
        let mut v = Vmgs::unloaded(storage, blocks, 0, Encryption::None, [None, None], None);
        for &slot in &order {
            let SlotState::Valid(header) = &slots[slot] else {
                continue;
            };
            match v.load(slot, header.clone(), key) {
                Ok(()) => {
                    let recovered_from = first_failure.map(|e| e.to_string());
                    let opened = Opened {
                        slot,
                        sequence: header.sequence,
                        recovered_from,
                    };
                    return Ok((v, opened));
                }
                Err(e @ (VmgsError::WrongKey | VmgsError::NotEncrypted | VmgsError::Io { .. })) => {
                    return Err(e);
                }
                Err(e) => {
                    let e = VmgsError::State {
                        slot,
                        sequence: header.sequence,
                        source: Box::new(e),
                    };
                    if !opts.recover {
                        return Err(e);
                    }
                    if first_failure.is_none() {
                        first_failure = Some(e);
                    } else {
                        return Err(e);
                    }
                }
            }
        }
        Err(first_failure.unwrap_or(VmgsError::Empty))
    }

    /// Loads and checks the state of `slot`.
    fn load(
        &mut self,
        slot: usize,
        header: Header,
        key: Option<&DatastoreKey>,
    ) -> Result<(), VmgsError> {
        let table = Self::read_table(&self.storage, &header, self.blocks)?;
        let covered = Covered::new(&header, &table);
        let sha = covered.sha256();
        if first16(&sha) != table.table_check {
            return Err(VmgsError::TableCheck(header.file_table_offset));
        }
        let keys = match (header.encryption, key) {
            (Encryption::None, Some(_)) => return Err(VmgsError::NotEncrypted),
            (Encryption::None, None) | (Encryption::Aes256Gcm, None) => None,
            (Encryption::Aes256Gcm, Some(k)) => {
                let (key_slot, mk) = header
                    .key_slots
                    .iter()
                    .enumerate()
                    .find_map(|(i, w)| w.as_ref().and_then(|w| unwrap(k, w).map(|mk| (i, mk))))
                    .ok_or(VmgsError::WrongKey)?;
                Some((key_slot, mk, DatastoreKey::new(*k.bytes())))
            }
        };
        let ext_entry = table.files[usize::from(FileId::EXTENDED_FILE_TABLE.get())];
        let (ext_cipher, ext_block) = match (header.encryption, ext_entry) {
            (Encryption::Aes256Gcm, Some(e))
                if e.attributes.encrypted && e.blocks == 1 && e.size == BLOCK_SIZE as u64 =>
            {
                (Some(self.read_blocks(&e, "extended file table")?), Some(e))
            }
            (Encryption::Aes256Gcm, _) => {
                return Err(VmgsError::ExtendedTable {
                    block: 0,
                    reason: "an encrypted VMGS without an extended file table entry".into(),
                });
            }
            (Encryption::None, None) => (None, None),
            (Encryption::None, Some(_)) => {
                return Err(VmgsError::ExtendedTable {
                    block: 0,
                    reason: "an unencrypted VMGS with an extended file table".into(),
                });
            }
        };
        let unlocked = match keys {
            None => None,
            Some((key_slot, mk, datastore)) => {
                let (Some(mut plain), Some(e)) = (ext_cipher, ext_block) else {
                    return Err(VmgsError::Crypto("extended table"));
                };
                if !constant_time_eq(&commit_mac(&mk, &sha), &table.commit_digest) {
                    return Err(VmgsError::Digest);
                }
                let plain_ok = open_sealed(&mk, &e.nonce, &e.tag, AAD_EXTENDED_TABLE, &mut plain);
                let plain = Zeroizing::new(plain);
                if !plain_ok {
                    return Err(VmgsError::ExtendedTable {
                        block: e.offset,
                        reason: "fails authentication".into(),
                    });
                }
                let ext = ExtendedTable::parse(&plain).map_err(|err| VmgsError::ExtendedTable {
                    block: e.offset,
                    reason: err.to_string(),
                })?;
                Some(Unlocked {
                    metadata_key: mk,
                    ext,
                    datastore,
                    key_slot,
                })
            }
        };
        if header.encryption == Encryption::None && sha != table.commit_digest {
            return Err(VmgsError::Digest);
        }
        self.slot = slot;
        self.state = State { header, table };
        self.keys = unlocked;
        // Every file's data, now that the tables are trusted.
        for id in self.file_ids() {
            match self.read_checked(id) {
                Ok(_) | Err(VmgsError::KeyRequired(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn file_ids(&self) -> Vec<FileId> {
        (0..FILE_COUNT as u8)
            .filter_map(FileId::new)
            .filter(|id| {
                id.is_user_file() && self.state.table.files[usize::from(id.get())].is_some()
            })
            .collect()
    }

    /// The files, by id.
    pub fn list(&self) -> Vec<FileInfo> {
        self.file_ids()
            .into_iter()
            .filter_map(|id| {
                self.state.table.files[usize::from(id.get())]
                    .as_ref()
                    .map(|e| FileInfo::of(id, e))
            })
            .collect()
    }

    /// Whether the file is encrypted (`AES-256-GCM`).
    pub fn is_encrypted(&self) -> bool {
        self.state.header.encryption == Encryption::Aes256Gcm
    }

    /// The header slot and sequence number in use.
    pub fn position(&self) -> (usize, u32) {
        (self.slot, self.state.header.sequence)
    }

    /// The storage (for tests and benchmarks).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Unlocks a VMGS opened without a key: checks the state in use again, completely,
    /// with `key` (the commit digest, the extended table, every file).
    pub fn unlock(&mut self, key: &DatastoreKey) -> Result<(), VmgsError> {
        if self.poisoned {
            return Err(VmgsError::Poisoned);
        }
        if self.keys.is_some() {
            return Ok(());
        }
        let header = self.state.header.clone();
        let slot = self.slot;
        self.load(slot, header, Some(key))
            .map_err(|e| match e {
                e @ (VmgsError::WrongKey | VmgsError::NotEncrypted) => e,
                e => VmgsError::State {
                    slot,
                    sequence: self.state.header.sequence,
                    source: Box::new(e),
                },
            })
            .inspect_err(|_| self.keys = None)
    }

    fn read_checked(&self, id: FileId) -> Result<Zeroizing<Vec<u8>>, VmgsError> {
        let e = self.state.table.files[usize::from(id.get())].ok_or(VmgsError::NoSuchFile(id))?;
        let mut data = self.read_blocks(&e, &format!("file {id}"))?;
        let bad = VmgsError::FileData {
            id,
            offset: e.offset,
            end: e.end(),
        };
        if e.attributes.encrypted {
            let keys = self
                .keys
                .as_ref()
                .ok_or(VmgsError::KeyRequired("reading an encrypted file"))?;
            let key =
                keys.ext.keys[usize::from(id.get())].ok_or_else(|| VmgsError::ExtendedTable {
                    block: 0,
                    reason: format!("no key for encrypted file {id}"),
                })?;
            let mut key = Zeroizing::new(key);
            let ok = open_sealed(&key, &e.nonce, &e.tag, &file_aad(id, e.size), &mut data);
            key.zeroize();
            let data = Zeroizing::new(data);
            if !ok {
                return Err(bad);
            }
            Ok(data)
        } else {
            if hash_prefix(&data) != e.tag || e.nonce != [0; 12] {
                return Err(bad);
            }
            Ok(Zeroizing::new(data))
        }
    }

    /// Reads file `id`.
    pub fn read_file(&self, id: FileId) -> Result<Zeroizing<Vec<u8>>, VmgsError> {
        if self.poisoned {
            return Err(VmgsError::Poisoned);
        }
        self.read_checked(id)
    }

    /// Writes file `id` (replacing it) in one commit; encrypted under a fresh key when
    /// the VMGS is encrypted, unless `plaintext` (for files read before unlocking, such
    /// as the key protector). On an error before the header write, nothing changed.
    pub fn write_file(
        &mut self,
        id: FileId,
        data: &[u8],
        plaintext: bool,
    ) -> Result<(), VmgsError> {
        if !id.is_user_file() {
            return Err(VmgsError::ReservedId(id));
        }
        let encrypt = self.is_encrypted() && !plaintext;
        let mut table = self.state.table.clone();
        let mut alloc = self.allocator();
        let need = blocks_for(data.len() as u64);
        // The file table, the extended table and the data in one run when there is
        // one, so the commit is one write before the header's.
        let meta = 1 + u64::from(self.is_encrypted());
        let offset = match alloc.take(need + meta) {
            Ok(start) => {
                alloc.meta = Some(start);
                start + meta as u32
            }
            Err(_) => alloc.take(need)?,
        };
        // Encrypted in place: after `seal` the buffer holds only ciphertext (or the
        // caller's plaintext file), so it is not zeroized, except when sealing fails.
        let mut buf = data.to_vec();
        buf.resize((need as usize) * BLOCK_SIZE, 0);
        let (nonce, tag, key) = if encrypt {
            let key = Zeroizing::new(random::<32>()?);
            let sealed = seal(
                &key,
                &file_aad(id, data.len() as u64),
                &mut buf[..data.len()],
            );
            let (n, t) = sealed.inspect_err(|_| buf.zeroize())?;
            (n, t, Some(key))
        } else {
            ([0; 12], hash_prefix(data), None)
        };
        table.files[usize::from(id.get())] = Some(FileEntry {
            offset,
            blocks: need as u32,
            size: data.len() as u64,
            nonce,
            tag,
            attributes: FileAttributes { encrypted: encrypt },
        });
        let header = self.state.header.clone();
        self.commit_with(table, header, alloc, &[(offset, buf.as_slice())], |ext| {
            ext.keys[usize::from(id.get())] = key.as_deref().copied();
        })
    }

    /// Removes file `id` in one commit.
    pub fn delete_file(&mut self, id: FileId) -> Result<(), VmgsError> {
        if !id.is_user_file() {
            return Err(VmgsError::ReservedId(id));
        }
        if self.state.table.files[usize::from(id.get())].is_none() {
            return Err(VmgsError::NoSuchFile(id));
        }
        let mut table = self.state.table.clone();
        table.files[usize::from(id.get())] = None;
        let alloc = self.allocator();
        let header = self.state.header.clone();
        self.commit_with(table, header, alloc, &[], |ext| {
            ext.keys[usize::from(id.get())] = None
        })
    }

    /// Rotates the datastore key to `new` in two commits: the first wraps a fresh
    /// metadata key under both keys (a crash after it leaves a file either key
    /// opens), the second drops the old key's slot. When the file was opened with
    /// `new` while the old key's slot is still filled (the second commit did not
    /// happen), only the second commit is made.
    pub fn rekey(&mut self, new: &DatastoreKey) -> Result<(), VmgsError> {
        let keys = self.keys.as_ref().ok_or(VmgsError::KeyRequired("rekey"))?;
        let in_use = keys.key_slot;
        if constant_time_eq(keys.datastore.bytes(), new.bytes()) {
            if self.state.header.key_slots[1 - in_use].is_none() {
                return Err(VmgsError::SameKey);
            }
            return self.drop_key_slot(1 - in_use);
        }
        let old_slot = in_use;
        let new_slot = 1 - old_slot;
        let mk = Zeroizing::new(random::<32>()?);
        let mut header = self.state.header.clone();
        header.key_slots[old_slot] = Some(wrap(&keys.datastore, &mk)?);
        header.key_slots[new_slot] = Some(wrap(new, &mk)?);
        let table = self.state.table.clone();
        let alloc = self.allocator();
        self.commit_full(table, header, alloc, &[], Some(mk), |_| {})?;
        // Now the new key is the one in use.
        if let Some(k) = self.keys.as_mut() {
            k.datastore = DatastoreKey::new(*new.bytes());
            k.key_slot = new_slot;
        }
        self.drop_key_slot(old_slot)
    }

    /// One commit that empties header key slot `slot`.
    fn drop_key_slot(&mut self, slot: usize) -> Result<(), VmgsError> {
        let mut header = self.state.header.clone();
        header.key_slots[slot] = None;
        let table = self.state.table.clone();
        let alloc = self.allocator();
        self.commit_with(table, header, alloc, &[], |_| {})
    }

    /// Blocks free for a commit: those the current state does not use.
    fn allocator(&self) -> Allocator {
        Allocator::new(
            self.blocks,
            &self.state.table,
            self.state.header.file_table_offset,
        )
    }

    fn commit_with(
        &mut self,
        table: FileTable,
        header: Header,
        alloc: Allocator,
        writes: &[(u32, &[u8])],
        edit_ext: impl FnOnce(&mut ExtendedTable),
    ) -> Result<(), VmgsError> {
        self.commit_full(table, header, alloc, writes, None, edit_ext)
    }

    /// One commit: `writes` (already in blocks `alloc` handed out), a new extended
    /// table (with `edit_ext` applied; under `new_mk` if given) and the new file table
    /// (in the blocks `alloc` reserved for them, else where it finds room), each run
    /// of adjacent blocks in one write,
    /// then the header in the slot not in use, then one flush.
    fn commit_full(
        &mut self,
        mut table: FileTable,
        mut header: Header,
        mut alloc: Allocator,
        writes: &[(u32, &[u8])],
        new_mk: Option<Zeroizing<[u8; 32]>>,
        edit_ext: impl FnOnce(&mut ExtendedTable),
    ) -> Result<(), VmgsError> {
        if self.poisoned {
            return Err(VmgsError::Poisoned);
        }
        if self.is_encrypted() && self.keys.is_none() {
            return Err(VmgsError::KeyRequired("writing"));
        }
        let table_block = alloc.take_meta(0)?;
        header.sequence = self.state.header.sequence.wrapping_add(1);
        header.file_table_offset = table_block;
        let mut new_ext = None;
        let mut ext_write: Option<(u32, Vec<u8>)> = None;
        if let Some(keys) = &self.keys {
            let mut ext = ExtendedTable {
                keys: keys.ext.keys,
            };
            edit_ext(&mut ext);
            let mk = new_mk.unwrap_or_else(|| Zeroizing::new(*keys.metadata_key));
            let ext_block = alloc.take_meta(1)?;
            let mut plain = Zeroizing::new(vec![0u8; BLOCK_SIZE]);
            let block: &mut [u8; BLOCK_SIZE] = plain
                .as_mut_slice()
                .try_into()
                .map_err(|_| VmgsError::Crypto("extended table"))?;
            ext.write_block(block);
            let (nonce, tag) = seal(&mk, AAD_EXTENDED_TABLE, &mut plain)?;
            // Sealed in place: the buffer holds ciphertext now.
            let cipher = std::mem::take(&mut *plain);
            table.files[usize::from(FileId::EXTENDED_FILE_TABLE.get())] = Some(FileEntry {
                offset: ext_block,
                blocks: 1,
                size: BLOCK_SIZE as u64,
                nonce,
                tag,
                attributes: FileAttributes { encrypted: true },
            });
            ext_write = Some((ext_block, cipher));
            new_ext = Some((ext, mk));
        }
        let covered = Covered::new(&header, &table);
        let sha = covered.sha256();
        table.table_check = first16(&sha);
        table.commit_digest = match &new_ext {
            Some((_, mk)) => commit_mac(mk, &sha),
            None => sha,
        };
        let table_bytes = table.to_block(table_block, &table.commit_digest);
        // Data, extended table, file table: all in blocks the current state does not
        // use, so a failure here leaves the current state intact. Adjacent pieces go
        // out in one write.
        let mut pieces: Vec<(u32, &[u8])> = writes.to_vec();
        if let Some((block, c)) = &ext_write {
            pieces.push((*block, c.as_slice()));
        }
        pieces.push((table_block, &table_bytes));
        pieces.sort_by_key(|p| p.0);
        let mut i = 0;
        while i < pieces.len() {
            let start = pieces[i].0;
            // Ciphertext, tables and plaintext files only: nothing to zeroize.
            let mut run = pieces[i].1.to_vec();
            let mut next = u64::from(start) + blocks_for(pieces[i].1.len() as u64);
            i += 1;
            while i < pieces.len() && u64::from(pieces[i].0) == next {
                run.extend_from_slice(pieces[i].1);
                next += blocks_for(pieces[i].1.len() as u64);
                i += 1;
            }
            self.storage
                .write_at(&run, u64::from(start) * BLOCK_SIZE as u64)
                .map_err(Self::io(format!("writing blocks from {start}")))?;
        }
        // The header, last, in one write of its whole sector.
        let target = 1 - self.slot;
        let mut sector = vec![0u8; BLOCK_SIZE];
        sector[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
        if let Err(e) = self.storage.write_at(&sector, header_offset(target)) {
            self.poisoned = true;
            return Err(Self::io(format!("writing header slot {target}"))(e));
        }
        if let Err(e) = self.storage.flush() {
            self.poisoned = true;
            return Err(Self::io("flushing the commit")(e));
        }
        self.slot = target;
        self.state = State { header, table };
        if let (Some(keys), Some((ext, mk))) = (self.keys.as_mut(), new_ext) {
            keys.ext = ext;
            keys.metadata_key = mk;
        }
        Ok(())
    }
}

impl Vmgs<File> {
    /// Creates `path` (it must not exist; mode 0600) of `size` bytes and formats it.
    pub fn create_file(
        path: &Path,
        size: u64,
        key: Option<&DatastoreKey>,
    ) -> Result<Self, VmgsError> {
        Self::create_with(path, size, |file| Vmgs::format(file, key))
    }

    /// Creates `path` like [`Vmgs::create_file`], encrypted under a fresh datastore
    /// key kept in its key protector under `kek`.
    pub fn create_file_protected(
        path: &Path,
        size: u64,
        kek: &key_protector::Kek,
    ) -> Result<Self, VmgsError> {
        Self::create_with(path, size, |file| Vmgs::format_protected(file, kek))
    }

    /// Creates, locks and writes through a new file of `size` bytes, formats it with
    /// `format`, and makes its directory entry durable.
    fn create_with(
        path: &Path,
        size: u64,
        format: impl FnOnce(File) -> Result<Self, VmgsError>,
    ) -> Result<Self, VmgsError> {
        blocks_of(size)?;
        let what = || path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(Self::io(what()))?;
        lock(&file, path)?;
        // Every block written once now (zeros), so a commit never allocates file space:
        // its flush then carries data only, not the file system's extent changes.
        let zeros = vec![0u8; 256 * BLOCK_SIZE];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(Self::io(what()))?;
            at += n as u64;
        }
        file.sync_all().map_err(Self::io(what()))?;
        let v = format(file)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Self::io(dir.display().to_string()))?;
        }
        Ok(v)
    }

    /// Opens `path` with its key protector and `kek`, rotating the datastore key
    /// ([`Vmgs::open_protected`]), locked against other processes.
    pub fn open_file_protected(
        path: &Path,
        kek: &key_protector::Kek,
        opts: OpenOptions,
    ) -> Result<(Self, Opened), VmgsError> {
        Vmgs::open_protected(Self::locked_file(path)?, kek, opts)
    }

    /// Opens `path` for reading and writing, locked against other processes.
    pub fn open_file(
        path: &Path,
        key: Option<&DatastoreKey>,
        opts: OpenOptions,
    ) -> Result<(Self, Opened), VmgsError> {
        Vmgs::open(Self::locked_file(path)?, key, opts)
    }

    /// `path` opened for reading and writing (never through a symbolic link) and
    /// locked.
    fn locked_file(path: &Path) -> Result<File, VmgsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(Self::io(path.display().to_string()))?;
        lock(&file, path)?;
        Ok(file)
    }

    /// [`Vmgs::inspect`] of `path` (opened read-only, not locked).
    pub fn inspect_file(path: &Path) -> Result<Inspection, VmgsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(Self::io(path.display().to_string()))?;
        Vmgs::inspect(&file)
    }
}

fn lock(file: &File, path: &Path) -> Result<(), VmgsError> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| VmgsError::Locked(path.display().to_string()))
}

fn wrap(datastore: &DatastoreKey, mk: &[u8; 32]) -> Result<RawWrappedKey, VmgsError> {
    if mk.iter().all(|&b| b == 0) {
        return Err(VmgsError::Crypto("an all-zero metadata key"));
    }
    let mut c = *mk;
    let (nonce, tag) = seal(datastore.bytes(), AAD_METADATA_KEY, &mut c)?;
    let w = RawWrappedKey {
        nonce,
        tag,
        ciphertext: c,
        ..Default::default()
    };
    c.zeroize();
    Ok(w)
}

fn unwrap(datastore: &DatastoreKey, w: &RawWrappedKey) -> Option<Zeroizing<[u8; 32]>> {
    let mut data = w.ciphertext.to_vec();
    let ok = open_sealed(
        datastore.bytes(),
        &w.nonce,
        &w.tag,
        AAD_METADATA_KEY,
        &mut data,
    );
    let data = Zeroizing::new(data);
    if !ok {
        return None;
    }
    let mk: [u8; 32] = data.as_slice().try_into().ok()?;
    // An all-zero metadata key is never made here; one in a file means a writer
    // with OpenVMM's zero-key bug, or a forgery.
    (mk != [0; 32]).then(|| Zeroizing::new(mk))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hands out blocks not used by the current state (copy-on-write), best fit.
struct Allocator {
    /// Free runs: (first block, length).
    free: Vec<(u32, u64)>,
    /// Blocks reserved for the file table and the extended table (in that order),
    /// next to the data they describe.
    meta: Option<u32>,
}

impl Allocator {
    fn empty(blocks: u32) -> Self {
        Allocator {
            free: vec![(MIN_FILE_BLOCK, u64::from(blocks - MIN_FILE_BLOCK))],
            meta: None,
        }
    }

    /// The free runs of a file of `blocks` whose live state is `live` with its table
    /// at `table_block`.
    fn new(blocks: u32, live: &FileTable, table_block: u32) -> Self {
        let mut used: Vec<(u64, u64)> = live
            .files
            .iter()
            .flatten()
            .map(|e| (u64::from(e.offset), e.end()))
            .collect();
        used.push((u64::from(table_block), u64::from(table_block) + 1));
        used.sort_unstable();
        let mut free = Vec::new();
        let mut at = u64::from(MIN_FILE_BLOCK);
        for (start, end) in used {
            if start > at {
                free.push((at as u32, start - at));
            }
            at = at.max(end);
        }
        if u64::from(blocks) > at {
            free.push((at as u32, u64::from(blocks) - at));
        }
        Allocator { free, meta: None }
    }

    /// Block `i` of the reserved metadata run (0 the file table, 1 the extended
    /// table), or a free block when none was reserved.
    fn take_meta(&mut self, i: u32) -> Result<u32, VmgsError> {
        match self.meta {
            Some(b) => Ok(b + i),
            None => self.take(1),
        }
    }

    fn take(&mut self, n: u64) -> Result<u32, VmgsError> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, (_, len))| *len >= n)
            .min_by_key(|(_, (_, len))| *len)
            .map(|(i, _)| i);
        let Some(i) = best else {
            return Err(VmgsError::NoSpace {
                need: n,
                largest: self.free.iter().map(|f| f.1).max().unwrap_or(0),
            });
        };
        let (start, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (start + n as u32, len - n);
        }
        Ok(start)
    }
}
