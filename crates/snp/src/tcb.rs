//! `TCB_VERSION`: the security patch levels of the platform's firmware components.
//!
//! A TCB version is a little-endian `u64` whose byte layout depends on the product
//! (SEV-SNP ABI specification, "TCB_VERSION Structure"):
//!
//! | byte | Milan / Genoa | Turin      |
//! |------|---------------|------------|
//! | 0    | boot loader   | FMC        |
//! | 1    | TEE           | boot loader|
//! | 2    | reserved      | TEE        |
//! | 3    | reserved      | SNP        |
//! | 4–5  | reserved      | reserved   |
//! | 6    | SNP           | reserved   |
//! | 7    | microcode     | microcode  |
//!
//! Reserved bytes must be zero.

use std::fmt;

/// Which byte layout a TCB version uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcbLayout {
    /// Milan and Genoa: boot loader, TEE, SNP, microcode.
    MilanGenoa,
    /// Turin: FMC, boot loader, TEE, SNP, microcode.
    Turin,
}

/// A decoded TCB version: the security patch level (SPL) of each component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcbVersion {
    layout: TcbLayout,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
    fmc: Option<u8>,
}

/// A TCB version whose reserved bytes are not zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TCB version {raw:#018x} has non-zero reserved bytes for the {layout:?} layout")]
pub struct TcbReservedBits {
    /// The raw value.
    pub raw: u64,
    /// The layout it was decoded with.
    pub layout: TcbLayout,
}

impl TcbVersion {
    /// Decodes a raw TCB version with the given layout.
    pub fn decode(raw: u64, layout: TcbLayout) -> Result<Self, TcbReservedBits> {
        let b = raw.to_le_bytes();
        let (reserved_mask, tcb) = match layout {
            TcbLayout::MilanGenoa => (
                0x0000_ffff_ffff_0000u64,
                TcbVersion {
                    layout,
                    bootloader: b[0],
                    tee: b[1],
                    snp: b[6],
                    microcode: b[7],
                    fmc: None,
                },
            ),
            TcbLayout::Turin => (
                0x00ff_ffff_0000_0000u64,
                TcbVersion {
                    layout,
                    fmc: Some(b[0]),
                    bootloader: b[1],
                    tee: b[2],
                    snp: b[3],
                    microcode: b[7],
                },
            ),
        };
        if raw & reserved_mask != 0 {
            return Err(TcbReservedBits { raw, layout });
        }
        Ok(tcb)
    }

    /// Builds a Milan/Genoa TCB version from its parts.
    pub fn milan_genoa(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        TcbVersion {
            layout: TcbLayout::MilanGenoa,
            bootloader,
            tee,
            snp,
            microcode,
            fmc: None,
        }
    }

    /// Builds a Turin TCB version from its parts.
    pub fn turin(fmc: u8, bootloader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        TcbVersion {
            layout: TcbLayout::Turin,
            bootloader,
            tee,
            snp,
            microcode,
            fmc: Some(fmc),
        }
    }

    /// The raw little-endian `u64` encoding.
    pub fn raw(&self) -> u64 {
        let mut b = [0u8; 8];
        match self.layout {
            TcbLayout::MilanGenoa => {
                b[0] = self.bootloader;
                b[1] = self.tee;
                b[6] = self.snp;
                b[7] = self.microcode;
            }
            TcbLayout::Turin => {
                b[0] = self.fmc.unwrap_or(0);
                b[1] = self.bootloader;
                b[2] = self.tee;
                b[3] = self.snp;
                b[7] = self.microcode;
            }
        }
        u64::from_le_bytes(b)
    }

    /// The layout.
    pub fn layout(&self) -> TcbLayout {
        self.layout
    }
    /// Boot loader SPL.
    pub fn bootloader(&self) -> u8 {
        self.bootloader
    }
    /// PSP OS (TEE) SPL.
    pub fn tee(&self) -> u8 {
        self.tee
    }
    /// SNP firmware SPL.
    pub fn snp(&self) -> u8 {
        self.snp
    }
    /// CPU microcode SPL.
    pub fn microcode(&self) -> u8 {
        self.microcode
    }
    /// FMC SPL (Turin only).
    pub fn fmc(&self) -> Option<u8> {
        self.fmc
    }
}

impl fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl serde::Serialize for TcbVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("raw", &format!("{:#018x}", self.raw()))?;
        m.serialize_entry("bootloader", &self.bootloader)?;
        m.serialize_entry("tee", &self.tee)?;
        m.serialize_entry("snp", &self.snp)?;
        m.serialize_entry("microcode", &self.microcode)?;
        if let Some(fmc) = self.fmc {
            m.serialize_entry("fmc", &fmc)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milan_layout() {
        let t = TcbVersion::decode(0xdb18000000000004, TcbLayout::MilanGenoa).unwrap();
        assert_eq!(
            (t.bootloader(), t.tee(), t.snp(), t.microcode()),
            (4, 0, 24, 219)
        );
        assert_eq!(t.fmc(), None);
        assert_eq!(t.raw(), 0xdb18000000000004);
    }

    #[test]
    fn turin_layout() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 5]);
        let t = TcbVersion::decode(raw, TcbLayout::Turin).unwrap();
        assert_eq!(t.fmc(), Some(1));
        assert_eq!(
            (t.bootloader(), t.tee(), t.snp(), t.microcode()),
            (2, 3, 4, 5)
        );
        assert_eq!(t.raw(), raw);
        assert_eq!(TcbVersion::turin(1, 2, 3, 4, 5), t);
    }

    #[test]
    fn reserved_bytes_rejected() {
        assert!(TcbVersion::decode(0x0000_0100_0000_0000, TcbLayout::MilanGenoa).is_err());
        // Byte 6 is SNP on Milan but reserved on Turin.
        assert!(TcbVersion::decode(0x0018_0000_0000_0000, TcbLayout::Turin).is_err());
        assert!(TcbVersion::decode(0x0018_0000_0000_0000, TcbLayout::MilanGenoa).is_ok());
    }
}
