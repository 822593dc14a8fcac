//! What shim carries besides its own code: the vendor certificate (or signature list)
//! it trusts for GRUB and kernels, the vendor dbx, and its built-in SBAT levels.

use crate::Error;
use crate::esl::{Entry, Signature, SignatureDb};
use crate::pe::PeImage;
use crate::sbat::{self, Level};
use crate::varstore::SHIM_LOCK_GUID;

/// shim's embedded trust: `.vendor_cert` and `.sbatlevel`.
#[derive(Debug, Clone)]
pub struct ShimTrust {
    /// The vendor's allowed certificates (as shim's `vendor_db`/vendor certificate).
    pub vendor_db: SignatureDb,
    /// The vendor's revocations.
    pub vendor_dbx: SignatureDb,
    /// The raw authorized entry as shim measures it into PCR 7 (`Shim` authority event
    /// data when it is a certificate).
    pub vendor_cert_raw: Vec<u8>,
    /// shim's "previous" and "latest" SBAT levels, when it has a `.sbatlevel` section.
    pub levels: Option<(Level, Level)>,
    /// The same levels as raw strings, as shim writes them into `SbatLevel`.
    pub level_strings: Option<(Vec<u8>, Vec<u8>)>,
}

fn field(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

impl ShimTrust {
    /// Reads a shim image. The `.vendor_cert` section holds four u32 (authorized size,
    /// deauthorized size, authorized offset, deauthorized offset; offsets from the
    /// section start), then the data. The authorized part is one DER certificate or a
    /// signature list.
    pub fn parse(image: &[u8]) -> Result<Self, Error> {
        let pe = PeImage::parse(image)?;
        let bad = |why: &str| Error::Pe {
            why: format!(".vendor_cert: {why}"),
        };
        let section = pe.section_data(".vendor_cert").ok_or_else(|| {
            bad("no such section: not a shim with an embedded vendor certificate")
        })?;
        let (Some(auth_size), Some(deauth_size), Some(auth_off), Some(deauth_off)) = (
            field(section, 0),
            field(section, 4),
            field(section, 8),
            field(section, 12),
        ) else {
            return Err(bad("truncated header"));
        };
        let slice = |off: usize, size: usize| {
            off.checked_add(size)
                .and_then(|end| section.get(off..end))
                .ok_or_else(|| bad("an entry runs past the section"))
        };
        let authorized = slice(auth_off, auth_size)?;
        let deauthorized = slice(deauth_off, deauth_size)?;
        let vendor_db = if authorized.first() == Some(&0x30) {
            crate::cert::Cert::parse(authorized)?;
            SignatureDb {
                entries: vec![Entry {
                    // shim lists its vendor certificate in MokListRT under its own GUID.
                    owner: SHIM_LOCK_GUID,
                    signature: Signature::X509(authorized.to_vec()),
                }],
            }
        } else {
            SignatureDb::parse(authorized)?
        };
        let vendor_dbx = SignatureDb::parse(deauthorized)?;
        let section = pe.section_data(".sbatlevel");
        let levels = section.map(sbat::parse_shim_levels).transpose()?;
        let level_strings = section
            .map(sbat::shim_level_strings)
            .transpose()?
            .map(|(p, l)| (p.to_vec(), l.to_vec()));
        Ok(Self {
            vendor_db,
            vendor_dbx,
            vendor_cert_raw: authorized.to_vec(),
            levels,
            level_strings,
        })
    }
}
