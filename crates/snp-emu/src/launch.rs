//! The SEV-SNP launch digest: a chain of SHA-384 hashes over `PAGE_INFO` structures.
//!
//! Every page the hypervisor adds to a guest with `SNP_LAUNCH_UPDATE` extends the digest:
//! the firmware hashes a 0x70-byte `PAGE_INFO` holding the current digest, a hash of the
//! page's contents (for measured page types), the page type and the guest-physical
//! address, and the result becomes the new current digest (AMD SEV-SNP ABI
//! specification, "Launch Digest Calculation", `PAGE_INFO` layout). The digest starts at
//! 48 zero bytes.
//!
//! [`LaunchDigest`] knows nothing about OVMF: the firmware emulation can feed it pages
//! directly, and [`crate::ovmf`] uses it to predict QEMU's measured launch.

use aws_lc_rs::digest;
use thiserror::Error;

/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// Size of the launch digest (a SHA-384 output) in bytes.
pub const DIGEST_SIZE: usize = 48;

/// Size of the `PAGE_INFO` structure hashed for each page, and the value of its
/// `LENGTH` field.
pub const PAGE_INFO_SIZE: usize = 0x70;

/// The GPA that `PAGE_INFO` carries for a VMSA page.
///
/// The RMP records VMSA pages at GPA `-1`; the measured value is that address
/// page-aligned with bits 63:52 cleared.
pub const VMSA_GPA: u64 = 0x0000_FFFF_FFFF_F000;

const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

/// Errors from extending a launch digest.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaunchError {
    /// A page's guest-physical address is not a multiple of 4096.
    #[error("GPA {gpa:#x} is not page aligned (it must be a multiple of 4096)")]
    UnalignedGpa {
        /// The offending address.
        gpa: u64,
    },
    /// A region's length is not a whole number of pages.
    #[error("region of {len} bytes is not a whole number of 4096-byte pages")]
    UnalignedLength {
        /// The offending length.
        len: usize,
    },
    /// A region runs past the end of the 64-bit address space.
    #[error("region at GPA {gpa:#x} of {len} bytes runs past the end of the address space")]
    GpaOverflow {
        /// Start of the region.
        gpa: u64,
        /// Length of the region in bytes.
        len: usize,
    },
    /// A normal or VMSA page was given without its contents.
    #[error("{page_type:?} pages are measured by their contents, but none were given")]
    MissingContents {
        /// The page type that needs contents.
        page_type: PageType,
    },
    /// Contents were given for a page type the firmware does not hash.
    #[error("{page_type:?} pages are not measured by contents; pass None")]
    UnexpectedContents {
        /// The page type that takes no contents.
        page_type: PageType,
    },
    /// A `PAGE_TYPE` byte that the SNP ABI does not define.
    #[error(
        "unknown SNP page type {0:#04x} (valid: 1 normal, 2 VMSA, 3 zero, 4 unmeasured, 5 secrets, 6 CPUID)"
    )]
    UnknownPageType(u8),
}

/// The `PAGE_TYPE` of an `SNP_LAUNCH_UPDATE`, as encoded in `PAGE_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// A normal page whose contents are measured (`PAGE_TYPE_NORMAL`).
    Normal = 1,
    /// A VMSA page, measured by its contents at [`VMSA_GPA`] (`PAGE_TYPE_VMSA`).
    Vmsa = 2,
    /// A page the firmware zeroes (`PAGE_TYPE_ZERO`).
    Zero = 3,
    /// A page whose contents are not measured (`PAGE_TYPE_UNMEASURED`).
    Unmeasured = 4,
    /// The secrets page the firmware fills in (`PAGE_TYPE_SECRETS`).
    Secrets = 5,
    /// The CPUID page the firmware validates (`PAGE_TYPE_CPUID`).
    Cpuid = 6,
}

impl PageType {
    /// The `PAGE_TYPE` byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether `PAGE_INFO.CONTENTS` is the SHA-384 of the page (normal and VMSA pages);
    /// for the other types it is zero.
    pub const fn is_measured(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }
}

impl TryFrom<u8> for PageType {
    type Error = LaunchError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => PageType::Normal,
            2 => PageType::Vmsa,
            3 => PageType::Zero,
            4 => PageType::Unmeasured,
            5 => PageType::Secrets,
            6 => PageType::Cpuid,
            other => return Err(LaunchError::UnknownPageType(other)),
        })
    }
}

/// Encodes a `PAGE_INFO` structure with `IMI_PAGE` and the VMPL permissions all zero, as
/// for a launch without an IMI and with VMPL0-only access.
pub fn page_info(
    digest_cur: &[u8; DIGEST_SIZE],
    contents: &[u8; DIGEST_SIZE],
    page_type: PageType,
    gpa: u64,
) -> [u8; PAGE_INFO_SIZE] {
    let mut info = [0u8; PAGE_INFO_SIZE];
    info[0x00..0x30].copy_from_slice(digest_cur);
    info[0x30..0x60].copy_from_slice(contents);
    // LENGTH (u16) is the structure's own size.
    info[0x60..0x62].copy_from_slice(&(PAGE_INFO_SIZE as u16).to_le_bytes());
    info[0x62] = page_type.as_u8();
    // 0x63 IMI_PAGE, 0x64..0x67 VMPL3/2/1 permissions, 0x67 reserved: all zero.
    info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
    info
}

fn sha384(data: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut out = [0u8; DIGEST_SIZE];
    out.copy_from_slice(digest::digest(&digest::SHA384, data).as_ref());
    out
}

/// A launch digest being computed, page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    current: [u8; DIGEST_SIZE],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// A digest at the start of a launch (48 zero bytes).
    pub const fn new() -> Self {
        Self {
            current: [0; DIGEST_SIZE],
        }
    }

    /// A digest resumed from an intermediate value, e.g. a precomputed hash of the
    /// firmware pages (sev-snp-measure's `--snp-ovmf-hash`).
    pub const fn from_seed(seed: [u8; DIGEST_SIZE]) -> Self {
        Self { current: seed }
    }

    /// Measures one page at `gpa`.
    ///
    /// `contents_page` must be `Some` exactly for [`PageType::Normal`] and
    /// [`PageType::Vmsa`]. For a VMSA page `gpa` is what goes into `PAGE_INFO`; the
    /// firmware uses [`VMSA_GPA`] (see [`LaunchDigest::update_vmsa`]).
    pub fn update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        contents_page: Option<&[u8; PAGE_SIZE]>,
    ) -> Result<(), LaunchError> {
        if gpa & PAGE_MASK != 0 {
            return Err(LaunchError::UnalignedGpa { gpa });
        }
        let contents = match (page_type.is_measured(), contents_page) {
            (true, Some(page)) => sha384(page),
            (true, None) => return Err(LaunchError::MissingContents { page_type }),
            (false, None) => [0u8; DIGEST_SIZE],
            (false, Some(_)) => return Err(LaunchError::UnexpectedContents { page_type }),
        };
        self.current = sha384(&page_info(&self.current, &contents, page_type, gpa));
        Ok(())
    }

    /// Measures a VMSA page at [`VMSA_GPA`].
    pub fn update_vmsa(&mut self, vmsa_page: &[u8; PAGE_SIZE]) -> Result<(), LaunchError> {
        self.update(VMSA_GPA, PageType::Vmsa, Some(vmsa_page))
    }

    /// Measures `data` as consecutive normal pages starting at `gpa`.
    ///
    /// `gpa` must be page aligned and `data` a whole number of pages; nothing is measured
    /// if either is not.
    pub fn update_normal_range(&mut self, gpa: u64, data: &[u8]) -> Result<(), LaunchError> {
        Self::check_range(gpa, data.len())?;
        let mut page_gpa = gpa;
        for chunk in data.chunks_exact(PAGE_SIZE) {
            let page: &[u8; PAGE_SIZE] = chunk
                .try_into()
                .map_err(|_| LaunchError::UnalignedLength { len: data.len() })?;
            self.update(page_gpa, PageType::Normal, Some(page))?;
            page_gpa = page_gpa.wrapping_add(PAGE_SIZE as u64);
        }
        Ok(())
    }

    /// Measures `len` bytes starting at `gpa` as pages of a type that takes no contents
    /// (zero, unmeasured, secrets or CPUID pages), one `PAGE_INFO` per page.
    ///
    /// `gpa` must be page aligned and `len` a whole number of pages.
    pub fn update_contentless_range(
        &mut self,
        gpa: u64,
        page_type: PageType,
        len: usize,
    ) -> Result<(), LaunchError> {
        if page_type.is_measured() {
            return Err(LaunchError::MissingContents { page_type });
        }
        Self::check_range(gpa, len)?;
        let mut page_gpa = gpa;
        for _ in 0..len / PAGE_SIZE {
            self.update(page_gpa, page_type, None)?;
            page_gpa = page_gpa.wrapping_add(PAGE_SIZE as u64);
        }
        Ok(())
    }

    /// The current digest.
    pub const fn digest(&self) -> [u8; DIGEST_SIZE] {
        self.current
    }

    fn check_range(gpa: u64, len: usize) -> Result<(), LaunchError> {
        if gpa & PAGE_MASK != 0 {
            return Err(LaunchError::UnalignedGpa { gpa });
        }
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(LaunchError::UnalignedLength { len });
        }
        // The last page must start inside the address space.
        if len > 0 {
            u64::try_from(len - PAGE_SIZE)
                .ok()
                .and_then(|last| gpa.checked_add(last))
                .ok_or(LaunchError::GpaOverflow { gpa, len })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn raw_sha384(parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = digest::Context::new(&digest::SHA384);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().to_vec()
    }

    /// The PAGE_INFO tail after DIGEST_CUR and CONTENTS, written out byte by byte.
    fn tail(page_type: u8, gpa: u64) -> Vec<u8> {
        let mut t = vec![0x70, 0x00, page_type, 0, 0, 0, 0, 0];
        t.extend_from_slice(&gpa.to_le_bytes());
        t
    }

    #[test]
    fn starts_at_zero() {
        assert_eq!(LaunchDigest::new().digest(), [0u8; 48]);
        assert_eq!(LaunchDigest::default(), LaunchDigest::new());
    }

    #[test]
    fn page_info_layout() {
        let info = page_info(
            &[0xAA; 48],
            &[0xBB; 48],
            PageType::Secrets,
            0x1122_3344_5566_7000,
        );
        assert_eq!(&info[..48], &[0xAA; 48]);
        assert_eq!(&info[48..96], &[0xBB; 48]);
        assert_eq!(&info[96..], tail(5, 0x1122_3344_5566_7000).as_slice());
    }

    #[test]
    fn two_normal_pages_match_hand_computation() {
        let mut data = vec![0u8; 2 * PAGE_SIZE];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let gpa = 0xFFFF_E000u64;

        let c0 = raw_sha384(&[&data[..PAGE_SIZE]]);
        let d0 = raw_sha384(&[&[0u8; 48], &c0, &tail(1, gpa)]);
        let c1 = raw_sha384(&[&data[PAGE_SIZE..]]);
        let d1 = raw_sha384(&[&d0, &c1, &tail(1, gpa + 0x1000)]);

        let mut ld = LaunchDigest::new();
        ld.update_normal_range(gpa, &data).unwrap();
        assert_eq!(ld.digest().as_slice(), d1.as_slice());

        // The same through single-page updates.
        let mut ld2 = LaunchDigest::new();
        let p0: &[u8; PAGE_SIZE] = data[..PAGE_SIZE].try_into().unwrap();
        let p1: &[u8; PAGE_SIZE] = data[PAGE_SIZE..].try_into().unwrap();
        ld2.update(gpa, PageType::Normal, Some(p0)).unwrap();
        assert_eq!(ld2.digest().as_slice(), d0.as_slice());
        ld2.update(gpa + 0x1000, PageType::Normal, Some(p1))
            .unwrap();
        assert_eq!(ld2, ld);
    }

    #[test]
    fn contentless_and_vmsa_pages_match_hand_computation() {
        let seed = [7u8; 48];
        let vmsa = [0x5Au8; PAGE_SIZE];

        let d0 = raw_sha384(&[&seed, &[0u8; 48], &tail(3, 0x80_0000)]);
        let d1 = raw_sha384(&[&d0, &[0u8; 48], &tail(3, 0x80_1000)]);
        let d2 = raw_sha384(&[&d1, &[0u8; 48], &tail(6, 0x80_2000)]);
        let d3 = raw_sha384(&[&d2, &raw_sha384(&[&vmsa]), &tail(2, 0xFFFF_FFFF_F000)]);

        let mut ld = LaunchDigest::from_seed(seed);
        ld.update_contentless_range(0x80_0000, PageType::Zero, 0x2000)
            .unwrap();
        ld.update(0x80_2000, PageType::Cpuid, None).unwrap();
        ld.update_vmsa(&vmsa).unwrap();
        assert_eq!(ld.digest().as_slice(), d3.as_slice());
    }

    #[test]
    fn empty_range_is_a_no_op() {
        let mut ld = LaunchDigest::new();
        ld.update_normal_range(0x1000, &[]).unwrap();
        ld.update_contentless_range(0x1000, PageType::Zero, 0)
            .unwrap();
        assert_eq!(ld.digest(), [0u8; 48]);
    }

    #[test]
    fn rejects_bad_input_without_changing_the_digest() {
        let page = [0u8; PAGE_SIZE];
        let mut ld = LaunchDigest::new();
        assert_eq!(
            ld.update(0x1001, PageType::Zero, None),
            Err(LaunchError::UnalignedGpa { gpa: 0x1001 })
        );
        assert_eq!(
            ld.update(0x1000, PageType::Normal, None),
            Err(LaunchError::MissingContents {
                page_type: PageType::Normal
            })
        );
        assert_eq!(
            ld.update(0x1000, PageType::Secrets, Some(&page)),
            Err(LaunchError::UnexpectedContents {
                page_type: PageType::Secrets
            })
        );
        assert_eq!(
            ld.update_normal_range(0x1000, &[0u8; 100]),
            Err(LaunchError::UnalignedLength { len: 100 })
        );
        assert_eq!(
            ld.update_normal_range(0xFFFF_FFFF_FFFF_F000, &[0u8; 2 * PAGE_SIZE]),
            Err(LaunchError::GpaOverflow {
                gpa: 0xFFFF_FFFF_FFFF_F000,
                len: 2 * PAGE_SIZE
            })
        );
        assert_eq!(
            ld.update_contentless_range(0, PageType::Vmsa, PAGE_SIZE),
            Err(LaunchError::MissingContents {
                page_type: PageType::Vmsa
            })
        );
        assert_eq!(ld.digest(), [0u8; 48]);
        // The very last page of the address space is fine.
        ld.update_normal_range(0xFFFF_FFFF_FFFF_F000, &page)
            .unwrap();
    }

    #[test]
    fn page_type_bytes_round_trip() {
        for b in 1..=6u8 {
            assert_eq!(PageType::try_from(b).unwrap().as_u8(), b);
        }
        assert_eq!(PageType::try_from(0), Err(LaunchError::UnknownPageType(0)));
        assert_eq!(PageType::try_from(7), Err(LaunchError::UnknownPageType(7)));
    }
}
