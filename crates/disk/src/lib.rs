//! LUKS2 disk encryption, byte-compatible with cryptsetup and systemd: the binary
//! headers ([`header`]), the JSON metadata ([`metadata`]), keyslots (KDF,
//! anti-forensic split, AES-XTS), the volume-key digest, and streaming AES-XTS over
//! whole images with several threads, crash-safe and resumable ([`stream`]), and
//! whole GPT OS disks with their boot partitions left in clear ([`os`]).
//!
//! Facts and byte layouts: `docs/adr/0013-disk-encryption.md` and the research note
//! on LUKS2 it cites. What opencvm does not support (LUKS1, ciphers other than
//! `aes-xts-plain64` with a 512-bit key, integrity, several segments, an unfinished
//! cryptsetup reencryption) is refused with its name.
// Libraries log through `tracing` (or not at all); only binaries print.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod af;
pub mod device;
pub mod gpt;
pub mod header;
mod image;
pub mod kdf;
pub mod metadata;
pub mod os;
pub mod stream;
pub mod tpm2;

pub use image::{Info, KeyslotInfo, Luks2, TokenInfo, VolumeKey};
pub use kdf::KdfChoice;
pub use stream::{DecryptOptions, EncryptOptions, Outcome};

/// Why a disk operation failed. Nothing is written over an input on any of them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither header copy is valid.
    #[error("not a usable LUKS2 image: {0}")]
    NoHeader(header::HeaderError),
    /// A header copy could not be encoded.
    #[error("the LUKS2 header: {0}")]
    Header(#[from] header::HeaderError),
    /// The JSON metadata is invalid or unsupported.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// No keyslot opens with this passphrase.
    #[error("no keyslot opens with this passphrase")]
    WrongPassphrase,
    /// A key derivation failed.
    #[error("key derivation: {0}")]
    Kdf(String),
    /// The cipher refused a key or buffer.
    #[error("AES-XTS: {0}")]
    Xts(#[from] aes_xts::Error),
    /// The system's random generator failed.
    #[error("the random generator failed")]
    Random,
    /// The data is not a whole number of sectors.
    #[error("{size} bytes of data are not a whole number of {sector}-byte sectors")]
    Unaligned {
        /// The data size.
        size: u64,
        /// The sector size.
        sector: u32,
    },
    /// The output already exists.
    #[error("{} exists; refusing to write over it", .0.display())]
    Exists(PathBuf),
    /// The image's encryption by opencvm has not finished.
    #[error(
        "the image's encryption is unfinished; run the same `cvm disk encrypt` again to resume it"
    )]
    Incomplete,
    /// A partial output does not belong to this input or these options.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The keyslots area has no room for another keyslot.
    #[error("the keyslots area has no room for another keyslot")]
    NoRoom,
    /// The vTPM could not be reached or answered something unreadable.
    #[error("vTPM: {0}")]
    Tpm(String),
    /// The vTPM refused a command (for a policy, PCRs that differ from those sealed
    /// to).
    #[error("the vTPM refused {what}: response code {rc:#x}{}", tpm_rc_hint(*.rc))]
    TpmRefused {
        /// The command.
        what: String,
        /// The TPM response code.
        rc: u32,
    },
    /// A request opencvm refuses.
    #[error("{0}")]
    Refused(String),
}

/// A TPM response code without the parameter, handle or session number that
/// format-one codes carry above bit 7.
pub(crate) fn tpm_rc_code(rc: u32) -> u32 {
    if rc & 0x80 != 0 {
        0x80 | (rc & 0x3f)
    } else {
        rc
    }
}

/// What a TPM response code means, for the messages users see.
fn tpm_rc_hint(rc: u32) -> &'static str {
    match tpm_rc_code(rc) {
        0x84 => " (TPM_RC_VALUE)",
        0x9d => " (TPM_RC_POLICY_FAIL: the PCRs are not those the disk was sealed to)",
        0x9f => " (TPM_RC_INTEGRITY: the sealed blob belongs to another TPM or was changed)",
        0x128 => " (TPM_RC_PCR_CHANGED)",
        0x126 => " (TPM_RC_POLICY)",
        _ => "",
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The fuzz target's body: parses `data` as the start of an image (both header
/// copies and their metadata), and as JSON metadata inside freshly checksummed
/// header copies so that mutations reach the JSON rules; what parses must
/// re-encode and parse to the same metadata, and a `systemd-tpm2` token that
/// parses must re-encode to itself.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(luks) = Luks2::read(data) {
        let _ = luks.info();
        roundtrip(&luks.metadata, luks.header.hdr_size);
    }
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let mut image = Vec::new();
    for primary in [true, false] {
        let h = header::BinaryHeader {
            primary,
            hdr_size: 16384,
            seqid: 1,
            label: String::new(),
            salt: [0; 64],
            uuid: "00000000-0000-4000-8000-000000000000".into(),
            subsystem: String::new(),
            hdr_offset: if primary { 0 } else { 16384 },
        };
        match header::encode_copy(&h, json) {
            Ok(copy) => image.extend_from_slice(&copy),
            Err(_) => return,
        }
    }
    if let Ok(luks) = Luks2::read(&image[..]) {
        roundtrip(&luks.metadata, 16384);
    }
}

fn roundtrip(meta: &metadata::Metadata, hdr_size: u64) {
    for t in meta.tokens.values() {
        if let Ok(token) = tpm2::Tpm2Token::from_token(t) {
            assert_eq!(
                tpm2::Tpm2Token::from_token(&token.to_token()).ok(),
                Some(token)
            );
        }
    }
    let Ok(text) = meta.to_json() else {
        return;
    };
    match metadata::Metadata::parse(&text, hdr_size) {
        Ok(again) if &again == meta => {}
        other => panic!("metadata does not survive a re-encoding: {other:?}"),
    }
}

/// The GPT fuzz target's body: `data` as a whole disk image; a table that parses
/// must encode, for the same disk size, to one that parses back equal.
#[doc(hidden)]
pub fn fuzz_gpt(data: &[u8]) {
    let Ok(table) = gpt::Gpt::parse(data, data.len() as u64) else {
        return;
    };
    for p in &table.partitions {
        let _ = (p.name(), p.bytes(), p.boot_critical());
    }
    let total = data.len() as u64 / gpt::LBA;
    let mut disk = vec![0u8; data.len() - data.len() % gpt::LBA as usize];
    for (off, bytes) in table.encode(total) {
        let off = off as usize;
        disk[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    match gpt::Gpt::parse(&disk, disk.len() as u64) {
        Ok(again) if again == table => {}
        other => panic!("a partition table does not survive re-encoding: {other:?}"),
    }
}
