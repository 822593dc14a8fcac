//! Launch digests of OVMF images against values computed by third parties.
//!
//! - `testdata/snp/virtee-sev/ovmf_*_suffix.bin`: virtee/sev's expected digests (see
//!   `/work/shared/vectors/snp/MANIFEST.md`, "Launch-digest fixtures"), each reproduced
//!   with sev-snp-measure 0.0.13.
//! - `testdata/ovmf/`: a suffix of Debian bookworm's OVMF.fd and VMSA pages dumped by
//!   sev-snp-measure 0.0.13 (see `testdata/ovmf/MANIFEST.md`).
//! - `/usr/share/ovmf/OVMF.fd` from Debian's `ovmf` package, read in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use snp_emu::ovmf::{
    EfiGuid, MeasureOptions, OvmfError, OvmfImage, SectionType, VcpuType, measure_snp, ovmf_hash,
};
use snp_emu::vmsa::{VcpuRole, qemu_vmsa_page};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn amdsev() -> Vec<u8> {
    read("snp/virtee-sev/ovmf_AmdSev_suffix.bin")
}

fn ovmfx64() -> Vec<u8> {
    read("snp/virtee-sev/ovmf_OvmfX64_suffix.bin")
}

fn opts(vcpus: u32, vcpu_type: &str, guest_features: u64) -> MeasureOptions {
    MeasureOptions {
        vcpus,
        vcpu_type: vcpu_type.parse().unwrap(),
        guest_features,
        kernel: None,
        initrd: None,
        append: None,
    }
}

fn with_kernel(
    mut o: MeasureOptions,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    append: Option<&str>,
) -> MeasureOptions {
    o.kernel = Some(kernel.to_vec());
    o.initrd = initrd.map(<[u8]>::to_vec);
    o.append = append.map(str::to_owned);
    o
}

fn hex_measure(ovmf: &[u8], o: &MeasureOptions) -> String {
    hex::encode(measure_snp(ovmf, o).unwrap_or_else(|e| panic!("{o:?}: {e}")))
}

// ---------------------------------------------------------------------------------------
// virtee/sev fixtures (`--kernel /dev/null --initrd /dev/null` is an empty kernel and an
// empty initrd).

#[test]
fn virtee_ovmf_hash() {
    assert_eq!(
        hex::encode(ovmf_hash(&amdsev()).unwrap()),
        "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
    );
}

#[test]
fn virtee_amdsev_with_kernel_and_append() {
    let ovmf = amdsev();
    let append = Some("console=ttyS0 loglevel=7");
    for (features, expected) in [
        (
            0x1,
            "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa",
        ),
        (
            0x21,
            "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977",
        ),
    ] {
        let o = with_kernel(opts(1, "EPYC-v4", features), b"", Some(b""), append);
        assert_eq!(hex_measure(&ovmf, &o), expected, "features {features:#x}");
    }
}

#[test]
fn virtee_amdsev_without_kernel() {
    let ovmf = amdsev();
    for (features, expected) in [
        (
            0x1,
            "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d",
        ),
        (
            0x21,
            "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b",
        ),
    ] {
        assert_eq!(
            hex_measure(&ovmf, &opts(1, "EPYC-v4", features)),
            expected,
            "features {features:#x}"
        );
    }
}

#[test]
fn virtee_amdsev_four_vcpus_with_kernel() {
    let ovmf = amdsev();
    for (features, expected) in [
        (
            0x1,
            "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5",
        ),
        (
            0x21,
            "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942",
        ),
    ] {
        let o = with_kernel(opts(4, "EPYC-v4", features), b"", Some(b""), None);
        assert_eq!(hex_measure(&ovmf, &o), expected, "features {features:#x}");
    }
}

#[test]
fn virtee_ovmfx64_without_kernel() {
    let ovmf = ovmfx64();
    for (features, expected) in [
        (
            0x1,
            "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005",
        ),
        (
            0x21,
            "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385",
        ),
    ] {
        assert_eq!(
            hex_measure(&ovmf, &opts(1, "EPYC-v4", features)),
            expected,
            "features {features:#x}"
        );
    }
}

#[test]
fn virtee_ovmfx64_rejects_kernel_hashes() {
    let ovmf = ovmfx64();
    let o = with_kernel(opts(1, "EPYC-v4", 0x1), b"", Some(b""), None);
    let err = measure_snp(&ovmf, &o).unwrap_err();
    assert_eq!(err, OvmfError::MissingKernelHashesSection);
    assert!(
        err.to_string()
            .contains("OVMF metadata doesn't include SNP_KERNEL_HASHES section"),
        "{err}"
    );
    // With only a command line it is just as impossible (and an error either way).
    let o = with_kernel(opts(1, "EPYC-v4", 0x1), b"k", None, Some("x"));
    assert_eq!(
        measure_snp(&ovmf, &o),
        Err(OvmfError::MissingKernelHashesSection)
    );
}

// ---------------------------------------------------------------------------------------
// What the fixtures contain, as sev-snp-measure parses them.

#[test]
fn amdsev_fixture_structure() {
    let data = amdsev();
    let image = OvmfImage::parse(&data).unwrap();
    assert_eq!(image.gpa(), 0xFFFF_F000);
    assert_eq!(image.sev_es_reset_eip().unwrap(), 0x0080_B004);
    assert_eq!(image.sev_hashes_table_gpa().unwrap(), 0x0081_0C00);
    let sections: Vec<(u32, u32, SectionType)> = image
        .sev_metadata()
        .iter()
        .map(|s| (s.gpa, s.size, s.section_type))
        .collect();
    assert_eq!(
        sections,
        [
            (0x80_0000, 0x9000, SectionType::SnpSecMem),
            (0x80_A000, 0x3000, SectionType::SnpSecMem),
            (0x80_D000, 0x1000, SectionType::SnpSecrets),
            (0x80_E000, 0x1000, SectionType::Cpuid),
            (0x80_F000, 0x1000, SectionType::SvsmCaa),
            (0x81_0000, 0x1000, SectionType::SnpKernelHashes),
            (0x81_1000, 0xF000, SectionType::SnpSecMem),
        ]
    );
    assert_eq!(image.table_entries().count(), 5);
    assert_eq!(
        image.table_entry(&EfiGuid::OVMF_SEV_METADATA).unwrap(),
        &[0x54, 0x05, 0, 0]
    );
}

#[test]
fn ovmfx64_fixture_structure() {
    let data = ovmfx64();
    let image = OvmfImage::parse(&data).unwrap();
    assert_eq!(image.sev_es_reset_eip().unwrap(), 0x0080_B004);
    // The entry is present but zero: this build has no kernel hashes page.
    assert_eq!(image.sev_hashes_table_gpa().unwrap(), 0);
    assert!(!image.has_section(SectionType::SnpKernelHashes));
    assert_eq!(image.sev_metadata().len(), 6);
}

// ---------------------------------------------------------------------------------------
// VMSA pages dumped by `sev-snp-measure --dump-vmsa` (see testdata/ovmf/MANIFEST.md).

#[test]
fn vmsa_pages_match_sev_snp_measure_dump() {
    let bsp = qemu_vmsa_page(VcpuRole::Bsp, VcpuType::EpycMilan, 0x21);
    assert_eq!(
        bsp.as_slice(),
        read("ovmf/vmsa_qemu_EPYC-Milan_0x21_bsp.bin").as_slice()
    );
    let ap = qemu_vmsa_page(
        VcpuRole::Ap {
            reset_eip: 0x0080_B004,
        },
        VcpuType::EpycMilan,
        0x21,
    );
    assert_eq!(
        ap.as_slice(),
        read("ovmf/vmsa_qemu_EPYC-Milan_0x21_ap_0080b004.bin").as_slice()
    );
}

// ---------------------------------------------------------------------------------------
// Debian bookworm's OVMF, as a 4 KiB suffix in the repository.

#[test]
fn debian_suffix_vectors() {
    let ovmf = read("ovmf/debian-bookworm_OVMF_suffix.bin");
    assert_eq!(
        hex::encode(ovmf_hash(&ovmf).unwrap()),
        "86f8e8bee38c149e1275505d41bdf20b058d6410c1de5f6984ae56c8b3deb9dfb911372675dda65d1eec3d0cd692297d"
    );
    for (vcpus, vcpu_type, features, expected) in [
        (
            1,
            "EPYC-v4",
            0x1,
            "cd37cef3852156a45e0b38eb3d05ae6bbf3e04683a08d733e2eabc54bb37e84ffc4146aaf74b429c3eb2c72081f26544",
        ),
        (
            1,
            "EPYC-v4",
            0x21,
            "273da6bf6e0ae963da81cbb1a1aff39073499390f5ab64eec8c2bc143ce5ee374e1efc66926a2f6ce5812682243b3d6a",
        ),
        (
            4,
            "EPYC-Milan",
            0x21,
            "03ee690e908ae798e0f31592b63111618f20704819585749e159e35d96927a455634c66e05aaec50ac037470aa8b21e7",
        ),
        (
            3,
            "EPYC-Genoa",
            0x1,
            "5bf5b427659894993587624a584fda6caf6d79eb36af9f633a239c89117061412b741a6d9cf09b4eacfc047fc7d05738",
        ),
        (
            2,
            "EPYC-Rome-v2",
            0x3,
            "21ccc35d96d5eee0a8bc31427de300d634b26f10d4480eb362eda0cc8b8d1be487e93809b9447cbb9be12b840e8e7f1d",
        ),
    ] {
        assert_eq!(
            hex_measure(&ovmf, &opts(vcpus, vcpu_type, features)),
            expected,
            "{vcpus} x {vcpu_type}, features {features:#x}"
        );
    }
}

/// The kernel and initrd of the pinned kernel vectors (see testdata/ovmf/MANIFEST.md).
fn pinned_kernel() -> (Vec<u8>, Vec<u8>) {
    let kernel = (0..10_000u32).map(|i| ((i * 31 + 7) % 256) as u8).collect();
    let initrd = (0..5_000u32).map(|i| ((i * 13) % 251) as u8).collect();
    (kernel, initrd)
}

#[test]
fn amdsev_kernel_vectors() {
    let ovmf = amdsev();
    let (kernel, initrd) = pinned_kernel();
    let base = || opts(2, "EPYC-Genoa", 0x21);
    for (initrd, append, expected) in [
        (
            None,
            None,
            "3e9e96bbbb865f7181677938ed94387c6912766d11d4726ecd2ed2b3e0cd91b54f7b094f7be5f9e902e00ef4006af97c",
        ),
        (
            Some(initrd.as_slice()),
            None,
            "ae0539968cc83b391df20991dbfcf8e280bacf40a023e4e450d91f3f0dda6843510894364b4a3aed468906211e247e95",
        ),
        (
            Some(initrd.as_slice()),
            Some("console=ttyS0"),
            "d2e2fdd1e9942363cf6ad4141ef00b8249cce5d4791ac5e408ed98161165a7c485e88d08a85418b44ffa6e59955546d9",
        ),
        (
            None,
            Some("console=ttyS0"),
            "856326d4f4be53105616365ad6f9725012713efccc4a4dde4643a1293df084e1ace4d00cebe21190c1fa55bd120d9b85",
        ),
    ] {
        let o = with_kernel(base(), &kernel, initrd, append);
        assert_eq!(hex_measure(&ovmf, &o), expected, "{o:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Debian bookworm's whole OVMF.fd, from the `ovmf` package.

const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// SHA-256 of OVMF.fd in `ovmf` 2022.11-6+deb12u2.
const DEBIAN_OVMF_SHA256: &str = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773";

#[test]
fn debian_ovmf_fd_one_epyc_v4() {
    let ovmf = std::fs::read(DEBIAN_OVMF).unwrap_or_else(|e| {
        panic!("{DEBIAN_OVMF}: {e}; install Debian's OVMF with `apt-get install -y ovmf`")
    });
    let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ovmf));
    assert_eq!(
        sha256, DEBIAN_OVMF_SHA256,
        "{DEBIAN_OVMF} is not the one from ovmf 2022.11-6+deb12u2 (`dpkg -l ovmf`); if Debian \
         updated it, recompute the expected digest with `sev-snp-measure --mode snp --vcpus 1 \
         --vcpu-type EPYC-v4 --ovmf {DEBIAN_OVMF}` and update both constants"
    );
    assert_eq!(
        hex_measure(&ovmf, &opts(1, "EPYC-v4", 0x1)),
        "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3"
    );
    // The image is not an AmdSev build: no kernel hashes.
    let o = with_kernel(opts(1, "EPYC-v4", 0x1), b"", None, None);
    assert_eq!(
        measure_snp(&ovmf, &o),
        Err(OvmfError::MissingKernelHashesSection)
    );
}
