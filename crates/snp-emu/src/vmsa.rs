//! The initial VMSA (VM save area) pages QEMU/KVM give an SEV-SNP guest's vCPUs.
//!
//! Each vCPU's VMSA page is measured into the launch digest, so predicting a digest means
//! rebuilding these pages byte for byte: the x86 reset state as KVM sets it up (plus
//! `EFER.SVME` and `CR4.MCE`, which KVM enables), the guest's `SEV_FEATURES`, and the
//! CPUID signature of the emulated CPU model in `RDX`. The bootstrap processor starts
//! at the architectural reset vector `0xFFFF_FFF0`; application processors start at the
//! address that OVMF publishes in its SEV-ES reset block (see [`crate::ovmf`]).
//!
//! Field offsets follow the SEV-ES save area layout (AMD APM volume 2, table B-4).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::launch::PAGE_SIZE;

/// Errors from choosing a vCPU model or building VMSA pages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VmsaError {
    /// A vCPU type name that is not one of QEMU's AMD EPYC models known here.
    #[error("unknown vCPU type {name:?}; valid types (case-sensitive): {valid}")]
    UnknownVcpuType {
        /// The name given.
        name: String,
        /// The valid names, comma separated.
        valid: String,
    },
}

/// The reset address of the bootstrap processor (the x86 reset vector).
pub const BSP_RESET_EIP: u32 = 0xFFFF_FFF0;

/// The CPUID `Fn0000_0001_EAX` signature (family, model, stepping) of a CPU, as
/// described in AMD's CPUID specification (publication 25481).
///
/// Families above 0xF are split into a base family of 0xF plus an extended family; the
/// model is split into its low and high nibbles.
pub const fn cpuid_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xF {
        (0xF, (family - 0xF) & 0xFF)
    } else {
        (family, 0)
    };
    (ext_family << 20)
        | (((model >> 4) & 0xF) << 16)
        | (base_family << 8)
        | ((model & 0xF) << 4)
        | (stepping & 0xF)
}

macro_rules! vcpu_types {
    ($($(#[$doc:meta])* $variant:ident = $name:literal => ($family:literal, $model:literal, $stepping:literal),)+) => {
        /// A QEMU CPU model, named as sev-snp-measure's `--vcpu-type` names it.
        ///
        /// It determines the CPUID signature placed in each VMSA's `RDX`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum VcpuType {
            $($(#[$doc])* $variant,)+
        }

        impl VcpuType {
            /// Every supported type, in sev-snp-measure's order.
            pub const ALL: &'static [VcpuType] = &[$(VcpuType::$variant,)+];

            /// The QEMU model name (e.g. `EPYC-Milan-v2`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(VcpuType::$variant => $name,)+
                }
            }

            /// The model's (family, model, stepping).
            pub const fn family_model_stepping(self) -> (u32, u32, u32) {
                match self {
                    $(VcpuType::$variant => ($family, $model, $stepping),)+
                }
            }
        }
    };
}

vcpu_types! {
    /// `EPYC` (Naples, family 23 model 1 stepping 2).
    Epyc = "EPYC" => (23, 1, 2),
    /// `EPYC-v1`.
    EpycV1 = "EPYC-v1" => (23, 1, 2),
    /// `EPYC-v2`.
    EpycV2 = "EPYC-v2" => (23, 1, 2),
    /// `EPYC-IBPB` (an alias of `EPYC-v2`).
    EpycIbpb = "EPYC-IBPB" => (23, 1, 2),
    /// `EPYC-v3`.
    EpycV3 = "EPYC-v3" => (23, 1, 2),
    /// `EPYC-v4`.
    EpycV4 = "EPYC-v4" => (23, 1, 2),
    /// `EPYC-Rome` (family 23 model 49 stepping 0).
    EpycRome = "EPYC-Rome" => (23, 49, 0),
    /// `EPYC-Rome-v1`.
    EpycRomeV1 = "EPYC-Rome-v1" => (23, 49, 0),
    /// `EPYC-Rome-v2`.
    EpycRomeV2 = "EPYC-Rome-v2" => (23, 49, 0),
    /// `EPYC-Rome-v3`.
    EpycRomeV3 = "EPYC-Rome-v3" => (23, 49, 0),
    /// `EPYC-Milan` (family 25 model 1 stepping 1).
    EpycMilan = "EPYC-Milan" => (25, 1, 1),
    /// `EPYC-Milan-v1`.
    EpycMilanV1 = "EPYC-Milan-v1" => (25, 1, 1),
    /// `EPYC-Milan-v2`.
    EpycMilanV2 = "EPYC-Milan-v2" => (25, 1, 1),
    /// `EPYC-Genoa` (family 25 model 17 stepping 0).
    EpycGenoa = "EPYC-Genoa" => (25, 17, 0),
    /// `EPYC-Genoa-v1`.
    EpycGenoaV1 = "EPYC-Genoa-v1" => (25, 17, 0),
    /// `EPYC-Turin` (family 26 model 0 stepping 0).
    EpycTurin = "EPYC-Turin" => (26, 0, 0),
}

impl VcpuType {
    /// The CPUID signature QEMU reports for this model, placed in the VMSA's `RDX`.
    pub const fn signature(self) -> u32 {
        let (family, model, stepping) = self.family_model_stepping();
        cpuid_signature(family, model, stepping)
    }

    /// The valid names, comma separated.
    pub fn valid_names() -> String {
        Self::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for VcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VcpuType {
    type Err = VmsaError;

    /// Parses a model name exactly (case-sensitive), as sev-snp-measure does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| VmsaError::UnknownVcpuType {
                name: s.to_owned(),
                valid: Self::valid_names(),
            })
    }
}

/// A segment register as stored in the save area (`struct vmcb_seg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes (type, S, DPL, P, AVL, L, D/B, G in the VMCB's packed form).
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base address.
    pub base: u64,
}

impl Segment {
    const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }

    fn write(&self, page: &mut [u8; PAGE_SIZE], offset: usize) {
        put(page, offset, &self.selector.to_le_bytes());
        put(page, offset + 2, &self.attrib.to_le_bytes());
        put(page, offset + 4, &self.limit.to_le_bytes());
        put(page, offset + 8, &self.base.to_le_bytes());
    }
}

/// Byte offsets of the save-area fields this module sets (all other bytes are zero).
mod offset {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0D0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3B0;
    pub const XCR0: usize = 0x3E8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

fn put(page: &mut [u8; PAGE_SIZE], offset: usize, bytes: &[u8]) {
    // Offsets are the constants above, far below PAGE_SIZE.
    if let Some(dst) = page.get_mut(offset..offset + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// The register state of a vCPU at launch, as the fields of its VMSA page that are not
/// zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveArea {
    /// `ES`.
    pub es: Segment,
    /// `CS`.
    pub cs: Segment,
    /// `SS`.
    pub ss: Segment,
    /// `DS`.
    pub ds: Segment,
    /// `FS`.
    pub fs: Segment,
    /// `GS`.
    pub gs: Segment,
    /// `GDTR`.
    pub gdtr: Segment,
    /// `LDTR`.
    pub ldtr: Segment,
    /// `IDTR`.
    pub idtr: Segment,
    /// `TR`.
    pub tr: Segment,
    /// `EFER`.
    pub efer: u64,
    /// `CR4`.
    pub cr4: u64,
    /// `CR0`.
    pub cr0: u64,
    /// `DR7`.
    pub dr7: u64,
    /// `DR6`.
    pub dr6: u64,
    /// `RFLAGS`.
    pub rflags: u64,
    /// `RIP`.
    pub rip: u64,
    /// Guest `PAT` MSR.
    pub g_pat: u64,
    /// `RDX` (the CPUID signature at reset).
    pub rdx: u64,
    /// `SEV_FEATURES`: the guest features the VMM enabled (bit 0 `SNPActive`, ...).
    pub sev_features: u64,
    /// `XCR0`.
    pub xcr0: u64,
    /// `MXCSR`.
    pub mxcsr: u32,
    /// x87 control word.
    pub x87_fcw: u16,
}

impl SaveArea {
    /// The state QEMU/KVM give a vCPU starting at `eip` (real mode, `CS` based at
    /// `eip & 0xFFFF_0000` with `IP` the low 16 bits).
    pub const fn qemu_reset(eip: u32, sev_features: u64, cpuid_signature: u32) -> Self {
        let data = Segment::new(0, 0x93, 0xFFFF, 0);
        Self {
            es: data,
            cs: Segment::new(0xF000, 0x9B, 0xFFFF, (eip & 0xFFFF_0000) as u64),
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            gdtr: Segment::new(0, 0, 0xFFFF, 0),
            ldtr: Segment::new(0, 0x82, 0xFFFF, 0),
            idtr: Segment::new(0, 0, 0xFFFF, 0),
            tr: Segment::new(0, 0x8B, 0xFFFF, 0),
            // EFER.SVME, which KVM sets for SEV-ES guests.
            efer: 0x1000,
            // CR4.MCE, which KVM sets.
            cr4: 0x40,
            // CR0.ET.
            cr0: 0x10,
            dr7: 0x400,
            dr6: 0xFFFF_0FF0,
            rflags: 0x2,
            rip: (eip & 0xFFFF) as u64,
            // The PAT MSR's reset value (AMD APM volume 2, section A.3).
            g_pat: 0x0007_0406_0007_0406,
            rdx: cpuid_signature as u64,
            sev_features,
            xcr0: 0x1,
            mxcsr: 0x1F80,
            x87_fcw: 0x37F,
        }
    }

    /// The 4096-byte VMSA page.
    pub fn to_page(&self) -> [u8; PAGE_SIZE] {
        let mut page = [0u8; PAGE_SIZE];
        for (seg, off) in [
            (&self.es, offset::ES),
            (&self.cs, offset::CS),
            (&self.ss, offset::SS),
            (&self.ds, offset::DS),
            (&self.fs, offset::FS),
            (&self.gs, offset::GS),
            (&self.gdtr, offset::GDTR),
            (&self.ldtr, offset::LDTR),
            (&self.idtr, offset::IDTR),
            (&self.tr, offset::TR),
        ] {
            seg.write(&mut page, off);
        }
        for (value, off) in [
            (self.efer, offset::EFER),
            (self.cr4, offset::CR4),
            (self.cr0, offset::CR0),
            (self.dr7, offset::DR7),
            (self.dr6, offset::DR6),
            (self.rflags, offset::RFLAGS),
            (self.rip, offset::RIP),
            (self.g_pat, offset::G_PAT),
            (self.rdx, offset::RDX),
            (self.sev_features, offset::SEV_FEATURES),
            (self.xcr0, offset::XCR0),
        ] {
            put(&mut page, off, &value.to_le_bytes());
        }
        put(&mut page, offset::MXCSR, &self.mxcsr.to_le_bytes());
        put(&mut page, offset::X87_FCW, &self.x87_fcw.to_le_bytes());
        page
    }
}

/// Which vCPU a VMSA page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRole {
    /// The bootstrap processor (vCPU 0), starting at [`BSP_RESET_EIP`].
    Bsp,
    /// An application processor, starting at the firmware's SEV-ES AP reset address.
    Ap {
        /// The AP reset address from OVMF's SEV-ES reset block.
        reset_eip: u32,
    },
}

impl VcpuRole {
    /// The address the vCPU starts at.
    pub const fn reset_eip(self) -> u32 {
        match self {
            VcpuRole::Bsp => BSP_RESET_EIP,
            VcpuRole::Ap { reset_eip } => reset_eip,
        }
    }
}

/// The VMSA page QEMU measures for one SEV-SNP vCPU.
pub fn qemu_vmsa_page(role: VcpuRole, vcpu_type: VcpuType, guest_features: u64) -> [u8; PAGE_SIZE] {
    SaveArea::qemu_reset(role.reset_eip(), guest_features, vcpu_type.signature()).to_page()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(VcpuType::EpycV4.signature(), 0x0080_0F12);
        assert_eq!(VcpuType::EpycRome.signature(), 0x0083_0F10);
        assert_eq!(VcpuType::EpycMilan.signature(), 0x00A0_0F11);
        assert_eq!(VcpuType::EpycGenoa.signature(), 0x00A1_0F10);
        assert_eq!(VcpuType::EpycTurin.signature(), 0x00B0_0F00);
        // Families up to 0xF have no extended family.
        assert_eq!(cpuid_signature(0xF, 0x2F, 3), 0x0002_0FF3);
    }

    #[test]
    fn names_parse_exactly() {
        for t in VcpuType::ALL {
            assert_eq!(t.name().parse::<VcpuType>().unwrap(), *t);
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!(VcpuType::ALL.len(), 16);
        let err = "epyc-v4".parse::<VcpuType>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"epyc-v4\""), "{msg}");
        assert!(
            msg.contains("EPYC-v4") && msg.contains("EPYC-Genoa-v1"),
            "{msg}"
        );
        assert!("EPYC-Rome-v4".parse::<VcpuType>().is_err());
    }

    fn u64_at(page: &[u8; PAGE_SIZE], off: usize) -> u64 {
        u64::from_le_bytes(page[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn bsp_and_ap_pages() {
        let bsp = qemu_vmsa_page(VcpuRole::Bsp, VcpuType::EpycMilan, 0x21);
        // CS: selector 0xF000, attrib 0x9B, limit 0xFFFF, base 0xFFFF0000; RIP 0xFFF0.
        assert_eq!(&bsp[0x10..0x14], &[0x00, 0xF0, 0x9B, 0x00]);
        assert_eq!(u64_at(&bsp, 0x18), 0xFFFF_0000);
        assert_eq!(u64_at(&bsp, 0x178), 0xFFF0);
        assert_eq!(u64_at(&bsp, 0x310), 0x00A0_0F11);
        assert_eq!(u64_at(&bsp, 0x3B0), 0x21);

        let ap = qemu_vmsa_page(
            VcpuRole::Ap {
                reset_eip: 0x0080_B004,
            },
            VcpuType::EpycMilan,
            0x21,
        );
        assert_eq!(u64_at(&ap, 0x18), 0x0080_0000);
        assert_eq!(u64_at(&ap, 0x178), 0xB004);
        // Nothing else differs between the two.
        let differing: Vec<usize> = (0..PAGE_SIZE).filter(|&i| bsp[i] != ap[i]).collect();
        assert!(
            differing
                .iter()
                .all(|&i| (0x18..0x20).contains(&i) || (0x178..0x180).contains(&i))
        );
        // The floating-point area is past 0x400; the tail of the page is zero.
        assert!(bsp[0x420..].iter().all(|&b| b == 0));
    }
}
