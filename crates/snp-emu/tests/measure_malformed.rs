//! Malformed OVMF images and options: every defect is reported with the right error, and
//! no mutation of a real image makes the parser or the measurement panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use snp_emu::launch::LaunchError;
use snp_emu::ovmf::{
    EfiGuid, MeasureOptions, OvmfError, OvmfImage, SectionType, VcpuType, measure_snp, ovmf_hash,
};

fn amdsev() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/snp/virtee-sev/ovmf_AmdSev_suffix.bin");
    std::fs::read(p).unwrap()
}

fn opts(vcpus: u32) -> MeasureOptions {
    MeasureOptions {
        vcpus,
        vcpu_type: VcpuType::EpycV4,
        guest_features: 0x1,
        kernel: None,
        initrd: None,
        append: None,
    }
}

fn with_kernel(vcpus: u32) -> MeasureOptions {
    MeasureOptions {
        kernel: Some(b"kernel".to_vec()),
        ..opts(vcpus)
    }
}

// Layout of the AmdSev fixture (4096 bytes).
/// The footer entry `{u16 size, GUID}`.
const FOOTER: usize = 4096 - 32 - 18;
/// The `ASEV` header, 0x554 bytes from the end.
const META: usize = 4096 - 0x554;
/// The SEV metadata section descriptors.
const ITEMS: usize = META + 16;

fn put_u16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offset of the GUID of the footer table entry `guid`.
fn entry_guid_at(d: &[u8], guid: &EfiGuid) -> usize {
    d[..FOOTER]
        .windows(16)
        .rposition(|w| w == guid.as_bytes())
        .unwrap()
}

/// Offset of the 4-byte data of the footer table entry `guid`.
fn entry_data_at(d: &[u8], guid: &EfiGuid) -> usize {
    entry_guid_at(d, guid) - 2 - 4
}

#[test]
fn fixture_layout_is_what_these_tests_assume() {
    let d = amdsev();
    assert_eq!(
        &d[FOOTER + 2..FOOTER + 18],
        EfiGuid::OVMF_TABLE_FOOTER.as_bytes()
    );
    assert_eq!(&d[META..META + 4], b"ASEV");
    assert_eq!(&d[META + 12..META + 16], &[7, 0, 0, 0]);
    let eip = entry_data_at(&d, &EfiGuid::SEV_ES_RESET_BLOCK);
    assert_eq!(&d[eip..eip + 4], &0x0080_B004u32.to_le_bytes());
    measure_snp(&d, &with_kernel(2)).unwrap();
}

#[test]
fn image_sizes() {
    for len in [0, 1, 50, 4095, 4097, 8191] {
        let d = vec![0u8; len];
        assert_eq!(
            OvmfImage::parse(&d).unwrap_err(),
            OvmfError::ImageSize { len }
        );
        assert_eq!(measure_snp(&d, &opts(1)), Err(OvmfError::ImageSize { len }));
        assert_eq!(ovmf_hash(&d), Err(OvmfError::ImageSize { len }));
    }
}

#[test]
fn image_without_footer_table() {
    let d = vec![0u8; 4096];
    let image = OvmfImage::parse(&d).unwrap();
    assert_eq!(image.table_entries().count(), 0);
    assert!(image.sev_metadata().is_empty());
    // The firmware pages can still be hashed, but there is no AP reset address to launch.
    ovmf_hash(&d).unwrap();
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::MissingTableEntry {
            guid: EfiGuid::SEV_ES_RESET_BLOCK,
            ..
        })
    ));
    // A footer entry shorter than its own header means an empty table too.
    let mut d = amdsev();
    put_u16(&mut d, FOOTER, 17);
    assert_eq!(OvmfImage::parse(&d).unwrap().table_entries().count(), 0);
}

#[test]
fn footer_table_bounds() {
    let mut d = amdsev();
    put_u16(&mut d, FOOTER, 0xFFFF);
    assert_eq!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::FooterTableOutOfBounds {
            table_size: 0xFFFF - 18,
            available: FOOTER
        }
    );

    let mut d = amdsev();
    let g = entry_guid_at(&d, &EfiGuid::SEV_ES_RESET_BLOCK);
    put_u16(&mut d, g - 2, 3);
    assert!(matches!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::TableEntryInvalidSize { size: 3, .. }
    ));

    let mut d = amdsev();
    put_u16(&mut d, g - 2, 0xF000);
    assert!(matches!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::TableEntryOutOfBounds { size: 0xF000, .. }
    ));
}

#[test]
fn sev_metadata_defects() {
    let meta_ptr = entry_data_at(&amdsev(), &EfiGuid::OVMF_SEV_METADATA);

    for offset_from_end in [4097, 0xFFFF_FFFF, 15, 0] {
        let mut d = amdsev();
        put_u32(&mut d, meta_ptr, offset_from_end);
        assert_eq!(
            OvmfImage::parse(&d).unwrap_err(),
            OvmfError::MetadataOutOfBounds {
                offset_from_end,
                len: 4096
            },
            "{offset_from_end}"
        );
    }

    let mut d = amdsev();
    d[META] = b'B';
    assert_eq!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::BadMetadataSignature { found: *b"BSEV" }
    );

    let mut d = amdsev();
    put_u32(&mut d, META + 8, 2);
    assert_eq!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::BadMetadataVersion { version: 2 }
    );

    for num_items in [8, 1000, 0xFFFF_FFFF] {
        let mut d = amdsev();
        put_u32(&mut d, META + 12, num_items);
        assert!(matches!(
            OvmfImage::parse(&d).unwrap_err(),
            OvmfError::MetadataItemsOutOfBounds { .. }
        ));
    }
    // A larger declared size lets more items be read, as long as they are in the image.
    let mut d = amdsev();
    put_u32(&mut d, META + 4, 0x1000);
    put_u32(&mut d, META + 12, 8);
    assert_eq!(OvmfImage::parse(&d).unwrap().sev_metadata().len(), 8);
    put_u32(&mut d, META + 12, 200);
    assert!(matches!(
        OvmfImage::parse(&d).unwrap_err(),
        OvmfError::MetadataItemsOutOfBounds { .. }
    ));
}

#[test]
fn unknown_section_type() {
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 8, 5);
    let image = OvmfImage::parse(&d).unwrap();
    assert_eq!(
        image.sev_metadata()[0].section_type,
        SectionType::Unknown(5)
    );
    ovmf_hash(&d).unwrap();
    assert_eq!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::UnknownSectionType {
            gpa: 0x80_0000,
            section_type: 5
        })
    );
}

#[test]
fn section_layout_defects() {
    // Unaligned size.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 4, 0x8FFF);
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::Section {
            source: LaunchError::UnalignedLength { len: 0x8FFF },
            ..
        })
    ));
    // Unaligned GPA.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS, 0x80_0010);
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::Section {
            source: LaunchError::UnalignedGpa { gpa: 0x80_0010 },
            ..
        })
    ));
    // Overlapping the next section.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 4, 0xB000);
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::SectionOverlap { .. })
    ));
    // Beyond 4 GiB, and a huge section that would otherwise take a long time.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 4, 0xFFFF_F000);
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::SectionBeyond4Gib { .. })
    ));
    // Over the firmware image itself.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 6 * 12, 0xFFFF_F000);
    put_u32(&mut d, ITEMS + 6 * 12 + 4, 0x1000);
    assert!(matches!(
        measure_snp(&d, &opts(1)),
        Err(OvmfError::SectionOverlapsFirmware {
            image_gpa: 0xFFFF_F000,
            ..
        })
    ));
    // A zero-sized section measures nothing and overlaps nothing.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 6 * 12 + 4, 0);
    measure_snp(&d, &opts(1)).unwrap();
}

#[test]
fn kernel_hashes_defects() {
    // The kernel hashes section must be one page when it is filled in.
    let mut d = amdsev();
    put_u32(&mut d, ITEMS + 5 * 12 + 4, 0x800);
    assert_eq!(
        measure_snp(&d, &with_kernel(1)),
        Err(OvmfError::KernelHashesSectionSize {
            gpa: 0x81_0000,
            size: 0x800
        })
    );
    // The table must fit in its page.
    let mut d = amdsev();
    let at = entry_data_at(&d, &EfiGuid::SEV_HASH_TABLE_RV);
    // That entry holds {u32 gpa, u32 size}: the gpa is 4 bytes earlier.
    let gpa_at = at - 4;
    assert_eq!(&d[gpa_at..gpa_at + 4], &0x0081_0C00u32.to_le_bytes());
    put_u32(&mut d, gpa_at, 0x0081_0FF0);
    assert_eq!(
        measure_snp(&d, &with_kernel(1)),
        Err(OvmfError::KernelHashesOffset { offset: 0xFF0 })
    );
    // Without a kernel the page is a zero page and the entry is not read.
    measure_snp(&d, &opts(1)).unwrap();
}

#[test]
fn option_defects() {
    let d = amdsev();
    assert_eq!(
        measure_snp(&d, &opts(0)),
        Err(OvmfError::VcpuCount { vcpus: 0 })
    );
    assert_eq!(
        measure_snp(&d, &opts(4097)),
        Err(OvmfError::VcpuCount { vcpus: 4097 })
    );
    measure_snp(&d, &opts(4096)).unwrap();
    for o in [
        MeasureOptions {
            initrd: Some(Vec::new()),
            ..opts(1)
        },
        MeasureOptions {
            append: Some(String::new()),
            ..opts(1)
        },
    ] {
        assert_eq!(
            measure_snp(&d, &o),
            Err(OvmfError::InitrdOrAppendWithoutKernel)
        );
    }
}

#[test]
fn ap_reset_address_zero() {
    let mut d = amdsev();
    let at = entry_data_at(&d, &EfiGuid::SEV_ES_RESET_BLOCK);
    put_u32(&mut d, at, 0);
    measure_snp(&d, &opts(1)).unwrap();
    assert_eq!(measure_snp(&d, &opts(2)), Err(OvmfError::NoApResetAddress));
}

/// Every single-byte change to the table and metadata area parses or fails cleanly, and
/// measures or fails cleanly.
#[test]
fn byte_mutations_never_panic() {
    let original = amdsev();
    let mut measured = 0;
    for at in META..4096 {
        for value in [
            0x00,
            0xFF,
            0x80,
            original[at] ^ 0x01,
            original[at].wrapping_add(0x10),
        ] {
            let mut d = original.clone();
            d[at] = value;
            let Ok(image) = OvmfImage::parse(&d) else {
                continue;
            };
            let pages: u64 = image
                .sev_metadata()
                .iter()
                .map(|s| u64::from(s.size) / 4096)
                .sum();
            // Keep the test quick: huge sections are measured page by page.
            if pages > 4096 {
                continue;
            }
            let _ = measure_snp(&d, &with_kernel(2));
            measured += 1;
        }
    }
    assert!(measured > 1000, "{measured}");
}
