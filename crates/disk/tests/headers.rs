//! Headers cryptsetup 2.6.1 wrote (testdata/disk/MANIFEST.md): they parse, say what
//! cryptsetup was asked for, and re-encode to the very JSON text cryptsetup wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use disk::Luks2;
use disk::header;
use disk::metadata::Kdf;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../testdata/disk/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn cryptsetups_headers_parse_and_reencode_byte_for_byte() {
    for (name, kdf, sector) in [
        ("cryptsetup-argon2id-4096.hdr", "argon2id", 4096),
        ("cryptsetup-argon2id-512.hdr", "argon2id", 512),
        ("cryptsetup-pbkdf2-4096.hdr", "pbkdf2", 4096),
        ("cryptsetup-pbkdf2-512.hdr", "pbkdf2", 512),
    ] {
        let bytes = fixture(name);
        let luks = Luks2::read(&bytes[..]).unwrap();
        assert_eq!(luks.header.label, "fuzz-seed", "{name}");
        assert_eq!(luks.header.hdr_size, 16384);
        let (_, seg) = luks.metadata.segment().unwrap();
        assert_eq!(seg.sector_size, sector, "{name}");
        assert_eq!(seg.offset, 16 << 20);
        let slot = &luks.metadata.keyslots[&0];
        assert_eq!(slot.kdf.name(), kdf, "{name}");
        if let Kdf::Argon2id { memory, time, .. } = &slot.kdf {
            assert_eq!((*memory, *time), (8192, 4));
        }
        // The JSON text cryptsetup wrote, and ours for the same metadata, are equal.
        let (_, json) = header::parse_copy(&bytes, 0).unwrap();
        assert_eq!(luks.metadata.to_json().unwrap(), json, "{name}");
        // The secondary copy alone is enough.
        let mut no_primary = bytes.clone();
        no_primary[..4096].fill(0);
        assert_eq!(
            Luks2::read(&no_primary[..]).unwrap().metadata,
            luks.metadata
        );
    }
}

#[test]
fn the_fuzz_body_accepts_the_seeds() {
    for name in ["cryptsetup-argon2id-4096.hdr", "opencvm-pbkdf2-4096.hdr"] {
        let bytes = fixture(name);
        assert!(Luks2::read(&bytes[..]).is_ok(), "{name}");
        disk::fuzz_parse(&bytes);
    }
    disk::fuzz_parse(br#"{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#);
}

#[test]
fn sfdisks_partition_table_parses() {
    // testdata/disk/sfdisk-gpt-64k.img: sfdisk 2.38.1 (MANIFEST.md).
    let disk = fixture("sfdisk-gpt-64k.img");
    let gpt = disk::gpt::Gpt::parse(&disk, disk.len() as u64).unwrap();
    assert_eq!(gpt.partitions.len(), 2);
    assert_eq!(gpt.partitions[0].type_guid, disk::gpt::ESP);
    assert!(gpt.partitions[0].boot_critical() && !gpt.partitions[1].boot_critical());
    assert_eq!((gpt.partitions[1].first, gpt.partitions[1].last), (50, 89));
    assert_eq!(gpt.partitions[1].name(), "root");
    assert_eq!(
        gpt.partitions[1].guid.to_string(),
        "DAC8F8BF-E27A-9645-BDAA-F62257608044"
    );
    disk::fuzz_gpt(&disk);
    // Our encoding of the same table is byte-identical to sfdisk's (MBR aside:
    // sfdisk leaves CHS fields as it computes them).
    let mut ours = disk.clone();
    for (off, bytes) in gpt.encode(disk.len() as u64 / 512) {
        ours[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
    }
    assert_eq!(ours[512..], disk[512..]);
}

#[test]
fn a_usable_area_over_the_backup_table_is_refused() {
    // Found by the gpt fuzz target (testdata/disk/MANIFEST.md).
    let disk = fixture("fuzz-gpt-usable-over-backup.bin");
    let err = disk::gpt::Gpt::parse(&disk, disk.len() as u64).unwrap_err();
    assert!(err.to_string().contains("usable LBAs"), "{err}");
    disk::fuzz_gpt(&disk);
}
