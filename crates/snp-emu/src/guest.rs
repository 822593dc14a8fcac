//! Guests on an emulated platform: launch with a policy, then guest requests
//! (SNP_GET_REPORT, SNP_GET_EXT_REPORT, SNP_GET_DERIVED_KEY).
//!
//! LAUNCH_START refuses a policy the platform cannot honour, as the SNP firmware does
//! (SEV-SNP ABI, LAUNCH_START): the must-be-one bit 17 clear, an ABI version newer
//! than the firmware's, SMT disallowed on a platform with SMT enabled, ciphertext
//! hiding required on a platform without it, or reserved bits set.

use zeroize::Zeroizing;

use snp::report::{REPORT_LEN, SIGNED_LEN};

use crate::idblock::{IdAuth, IdBlock, IdError};
use crate::launch::{LaunchDigest, LaunchError, PAGE_SIZE, PageType};
use crate::platform::{Platform, PlatformError};

/// Why a guest could not be launched or served.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The platform cannot launch anything.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The guest policy is not acceptable to this platform.
    #[error("LAUNCH_START refused: {0}")]
    Policy(String),
    /// A request field is out of range.
    #[error("invalid request: {0}")]
    Request(String),
    /// Signing failed.
    #[error("signing the report failed")]
    Signing,
    /// LAUNCH_UPDATE refused a page.
    #[error("LAUNCH_UPDATE refused: {0}")]
    Update(#[from] LaunchError),
    /// LAUNCH_FINISH refused the ID block or its authentication.
    #[error("LAUNCH_FINISH refused the ID block: {0}")]
    IdBlock(String),
}

impl From<IdError> for GuestError {
    fn from(e: IdError) -> Self {
        GuestError::IdBlock(e.to_string())
    }
}

/// A launch between LAUNCH_START and LAUNCH_FINISH.
#[derive(Debug)]
pub struct LaunchContext<'p> {
    platform: &'p Platform,
    policy: u64,
    digest: LaunchDigest,
}

impl LaunchContext<'_> {
    /// LAUNCH_UPDATE: measures one page of `page_type` at `gpa` (contents for normal
    /// and VMSA pages only).
    pub fn update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        page: Option<&[u8; PAGE_SIZE]>,
    ) -> Result<(), GuestError> {
        Ok(self.digest.update(gpa, page_type, page)?)
    }

    /// The launch digest so far.
    pub fn measurement(&self) -> [u8; 48] {
        self.digest.digest()
    }

    /// LAUNCH_FINISH: with an ID block, its signature (and the author key's over the
    /// ID key) must verify, its launch digest must equal the measurement and its policy
    /// the launch policy; the report then carries its family, image, SVN and key
    /// digests.
    pub fn finish(
        self,
        id: Option<(&IdBlock, &IdAuth)>,
        host_data: [u8; 32],
        mask_chip_id: bool,
    ) -> Result<Guest, GuestError> {
        let measurement = self.measurement();
        let mut config = LaunchConfig {
            policy: self.policy,
            measurement,
            host_data,
            mask_chip_id,
            ..LaunchConfig::default()
        };
        if let Some((block, auth)) = id {
            auth.verify(block)?;
            if block.ld != measurement {
                return Err(GuestError::IdBlock(format!(
                    "its launch digest {} is not the measurement {}",
                    hex::encode(block.ld),
                    hex::encode(measurement)
                )));
            }
            if block.policy != self.policy {
                return Err(GuestError::IdBlock(format!(
                    "its policy {:#x} is not the launch policy {:#x}",
                    block.policy, self.policy
                )));
            }
            config.family_id = block.family_id;
            config.image_id = block.image_id;
            config.guest_svn = block.guest_svn;
            config.id_key_digest = auth.id_key_digest();
            config.author_key_digest = auth.author_key_digest();
        }
        self.platform.launch(config)
    }
}

/// What the host supplies at launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Guest policy (POLICY).
    pub policy: u64,
    /// Launch digest (from [`crate::launch::LaunchDigest`] or `measure_snp`).
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// FAMILY_ID from the ID block.
    pub family_id: [u8; 16],
    /// IMAGE_ID from the ID block.
    pub image_id: [u8; 16],
    /// Guest SVN from the ID block.
    pub guest_svn: u32,
    /// SHA-384 of the ID key, or zero.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key, or zero.
    pub author_key_digest: [u8; 48],
    /// Mask CHIP_ID in reports (MASK_CHIP_ID): the field is all zero.
    pub mask_chip_id: bool,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig {
            // ABI 0.0, SMT allowed, must-be-one bit.
            policy: 0x3_0000,
            measurement: [0; 48],
            host_data: [0; 32],
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            mask_chip_id: false,
        }
    }
}

/// A launched guest.
#[derive(Clone, Debug)]
pub struct Guest {
    config: LaunchConfig,
    launch_tcb: u64,
    report_id: [u8; 32],
}

impl Guest {
    /// What it was launched with.
    pub fn config(&self) -> &LaunchConfig {
        &self.config
    }
    /// Its report ID.
    pub fn report_id(&self) -> &[u8; 32] {
        &self.report_id
    }
}

/// Which key signs a report (MSG_REPORT_REQ `KEY_SEL`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeySelect {
    /// The VLEK if one is loaded, else the VCEK.
    #[default]
    Default,
    /// The VCEK.
    Vcek,
    /// The VLEK (an error without one).
    Vlek,
}

/// Fields a derived-key request mixes in (GUEST_FIELD_SELECT bits 0..5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldSelect {
    /// The guest policy.
    pub policy: bool,
    /// The image ID.
    pub image_id: bool,
    /// The family ID.
    pub family_id: bool,
    /// The launch measurement.
    pub measurement: bool,
    /// The guest SVN.
    pub guest_svn: bool,
    /// The TCB version.
    pub tcb_version: bool,
}

impl Platform {
    /// LAUNCH_START: checks `policy` against the platform.
    fn check_policy(&self, policy: u64) -> Result<(), GuestError> {
        self.require_snp()?;
        let p =
            snp::report::GuestPolicy::new(policy).map_err(|e| GuestError::Policy(e.to_string()))?;
        let pc = self.config();
        if !p.mbo() {
            return Err(GuestError::Policy("policy bit 17 must be one".into()));
        }
        let fw = pc.firmware_version();
        if (p.abi_major(), p.abi_minor()) > (fw.major, fw.minor) {
            return Err(GuestError::Policy(format!(
                "policy requires ABI {}.{}, firmware is {}.{}",
                p.abi_major(),
                p.abi_minor(),
                fw.major,
                fw.minor
            )));
        }
        if pc.smt && !p.smt() {
            return Err(GuestError::Policy(
                "SMT is enabled on the platform but the policy forbids it".into(),
            ));
        }
        if p.ciphertext_hiding() && !pc.ciphertext_hiding {
            return Err(GuestError::Policy(
                "policy requires ciphertext hiding, which the platform lacks".into(),
            ));
        }
        Ok(())
    }

    /// LAUNCH_START..LAUNCH_FINISH in one step, for a host that measured the guest
    /// itself (for example with [`crate::ovmf::measure_snp`]): checks the policy and
    /// records the guest with the given fields.
    pub fn launch(&self, config: LaunchConfig) -> Result<Guest, GuestError> {
        self.check_policy(config.policy)?;
        let mut report_id = [0u8; 32];
        aws_lc_rs::rand::fill(&mut report_id).map_err(|_| GuestError::Signing)?;
        Ok(Guest {
            config,
            launch_tcb: self.config().tcb().raw(),
            report_id,
        })
    }

    /// LAUNCH_START: begins a launch whose pages are measured as they are added.
    pub fn launch_start(&self, policy: u64) -> Result<LaunchContext<'_>, GuestError> {
        self.check_policy(policy)?;
        Ok(LaunchContext {
            platform: self,
            policy,
            digest: LaunchDigest::new(),
        })
    }

    /// SNP_GET_REPORT: a signed attestation report for `guest` with `report_data`,
    /// requested from `vmpl`, signed by the VLEK when one is loaded, else the VCEK.
    pub fn get_report(
        &self,
        guest: &Guest,
        report_data: &[u8; 64],
        vmpl: u32,
    ) -> Result<[u8; REPORT_LEN], GuestError> {
        self.get_report_with(guest, report_data, vmpl, KeySelect::Default)
    }

    /// SNP_GET_REPORT with the request's key selection (MSG_REPORT_REQ `KEY_SEL`).
    pub fn get_report_with(
        &self,
        guest: &Guest,
        report_data: &[u8; 64],
        vmpl: u32,
        key: KeySelect,
    ) -> Result<[u8; REPORT_LEN], GuestError> {
        self.require_snp()?;
        let (signer, signing_key_bits) = match (key, self.vlek_key()) {
            (KeySelect::Vcek, _) | (KeySelect::Default, None) => (self.vcek_key(), 0u32),
            (KeySelect::Vlek | KeySelect::Default, Some(vlek)) => (vlek, 1u32),
            (KeySelect::Vlek, None) => {
                return Err(GuestError::Request(
                    "no VLEK is loaded on this platform".into(),
                ));
            }
        };
        if vmpl > 3 {
            return Err(GuestError::Request(format!("VMPL {vmpl} is not 0..=3")));
        }
        let pc = self.config();
        let c = &guest.config;
        let tcb = pc.tcb().raw().to_le_bytes();
        let mut b = [0u8; REPORT_LEN];
        let put = |b: &mut [u8; REPORT_LEN], off: usize, v: &[u8]| {
            b[off..off + v.len()].copy_from_slice(v)
        };
        put(&mut b, 0x00, &pc.report_version.to_le_bytes());
        put(&mut b, 0x04, &c.guest_svn.to_le_bytes());
        put(&mut b, 0x08, &c.policy.to_le_bytes());
        put(&mut b, 0x10, &c.family_id);
        put(&mut b, 0x20, &c.image_id);
        put(&mut b, 0x30, &vmpl.to_le_bytes());
        put(&mut b, 0x34, &1u32.to_le_bytes());
        put(&mut b, 0x38, &tcb);
        put(&mut b, 0x40, &pc.platform_info().to_le_bytes());
        let author_key_en = c.author_key_digest != [0; 48];
        // SIGNING_KEY (bits 4:2): 0 VCEK, 1 VLEK; MASK_CHIP_KEY (bit 1) stays clear.
        let key_info = u32::from(author_key_en) | signing_key_bits << 2;
        put(&mut b, 0x48, &key_info.to_le_bytes());
        put(&mut b, 0x50, report_data);
        put(&mut b, 0x90, &c.measurement);
        put(&mut b, 0xC0, &c.host_data);
        put(&mut b, 0xE0, &c.id_key_digest);
        put(&mut b, 0x110, &c.author_key_digest);
        put(&mut b, 0x140, &guest.report_id);
        put(&mut b, 0x160, &[0xff; 32]);
        put(&mut b, 0x180, &tcb);
        let (family, model, stepping) = pc.cpuid();
        put(&mut b, 0x188, &[family, model, stepping]);
        if !c.mask_chip_id {
            put(&mut b, 0x1A0, self.chip_id());
        }
        put(&mut b, 0x1E0, &tcb);
        let fw = pc.firmware;
        put(&mut b, 0x1E8, &[fw[2], fw[1], fw[0]]);
        put(&mut b, 0x1EC, &[fw[2], fw[1], fw[0]]);
        put(&mut b, 0x1F0, &guest.launch_tcb.to_le_bytes());
        if pc.report_version >= 5 {
            put(&mut b, 0x1F8, &0u64.to_le_bytes());
            put(&mut b, 0x200, &0u64.to_le_bytes());
        }
        // The report's SIGNATURE field has the firmware's signature format.
        let sig =
            crate::idblock::sign(signer, &b[..SIGNED_LEN]).map_err(|_| GuestError::Signing)?;
        b[SIGNED_LEN..].copy_from_slice(&sig);
        Ok(b)
    }

    /// SNP_GET_EXT_REPORT: the report and the certificate table of its signer (VCEK,
    /// ASK, ARK; or VLEK, ASVK, ARK).
    pub fn get_ext_report(
        &self,
        guest: &Guest,
        report_data: &[u8; 64],
        vmpl: u32,
    ) -> Result<([u8; REPORT_LEN], Vec<u8>), GuestError> {
        use snp::certtable::{CertEntry, CertKind, CertTable};
        let report = self.get_report(guest, report_data, vmpl)?;
        let entry = |kind: CertKind, der: &[u8]| CertEntry {
            guid: kind.guid(),
            data: der.to_vec(),
        };
        // The signer's chain: the VLEK with its ASVK (under the ASK GUID, as hosts
        // publish it) when a VLEK signs, else the VCEK and ASK.
        let entries = match (self.vlek_der(), self.asvk_der()) {
            (Some(vlek), Some(asvk)) => vec![
                entry(CertKind::Vlek, vlek),
                entry(CertKind::Ask, asvk),
                entry(CertKind::Ark, self.ark_der()),
            ],
            _ => vec![
                entry(CertKind::Vcek, self.vcek_der()),
                entry(CertKind::Ask, self.ask_der()),
                entry(CertKind::Ark, self.ark_der()),
            ],
        };
        let table = CertTable::new(entries)
            .and_then(|t| t.to_bytes())
            .map_err(|e| GuestError::Request(e.to_string()))?;
        Ok((report, table))
    }

    /// SNP_GET_DERIVED_KEY: a 32-byte key derived from the chip secret (VCEK root) and
    /// the guest fields `select` names, for `vmpl`. Stable for the same inputs.
    pub fn get_derived_key(
        &self,
        guest: &Guest,
        select: FieldSelect,
        vmpl: u32,
        guest_svn: u32,
        tcb_version: u64,
    ) -> Result<Zeroizing<[u8; 32]>, GuestError> {
        self.require_snp()?;
        if vmpl > 3 {
            return Err(GuestError::Request(format!("VMPL {vmpl} is not 0..=3")));
        }
        let c = &guest.config;
        if guest_svn > c.guest_svn {
            return Err(GuestError::Request(
                "guest SVN is newer than the guest's".into(),
            ));
        }
        if select.tcb_version && tcb_version > self.config().tcb().raw() {
            return Err(GuestError::Request(
                "TCB version is newer than the platform's".into(),
            ));
        }
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, self.chip_secret());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(b"opencvm derived key");
        ctx.update(&vmpl.to_le_bytes());
        let sel = [
            select.policy,
            select.image_id,
            select.family_id,
            select.measurement,
            select.guest_svn,
            select.tcb_version,
        ];
        let bits = sel
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, &on)| acc | (u8::from(on) << i));
        ctx.update(&[bits]);
        if select.policy {
            ctx.update(&c.policy.to_le_bytes());
        }
        if select.image_id {
            ctx.update(&c.image_id);
        }
        if select.family_id {
            ctx.update(&c.family_id);
        }
        if select.measurement {
            ctx.update(&c.measurement);
        }
        if select.guest_svn {
            ctx.update(&guest_svn.to_le_bytes());
        }
        if select.tcb_version {
            ctx.update(&tcb_version.to_le_bytes());
        }
        let tag = ctx.sign();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&tag.as_ref()[..32]);
        Ok(out)
    }
}
