//! Guests on an emulated platform: launch with a policy, then guest requests
//! (SNP_GET_REPORT, SNP_GET_EXT_REPORT, SNP_GET_DERIVED_KEY).
//!
//! LAUNCH_START refuses a policy the platform cannot honour, as the SNP firmware does
//! (SEV-SNP ABI, LAUNCH_START): the must-be-one bit 17 clear, an ABI version newer
//! than the firmware's, SMT disallowed on a platform with SMT enabled, ciphertext
//! hiding required on a platform without it, or reserved bits set.
//!
//! SNP_GET_DERIVED_KEY takes a [`KeyRequest`], the guest's MSG_KEY_REQ (SEV-SNP ABI,
//! "MSG_KEY_REQ Message Structure", message version 1, 32 bytes), and refuses what the
//! firmware refuses: reserved bits or bytes set, a VMPL more privileged than the
//! requester's, a guest SVN above the launch SVN, a TCB_VERSION any component of which
//! exceeds the platform's committed TCB. See `docs/adr/0009-emulated-secure-processor.md`.

use zeroize::Zeroizing;

use snp::report::{REPORT_LEN, SIGNED_LEN};
use snp::tcb::TcbVersion;

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
    /// SNP_GET_DERIVED_KEY refused the MSG_KEY_REQ.
    #[error("SNP_GET_DERIVED_KEY refused: {0}")]
    KeyRequest(#[from] KeyRequestError),
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

/// Fields a derived-key request mixes in (GUEST_FIELD_SELECT bits 0..=5).
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

impl FieldSelect {
    /// GUEST_FIELD_SELECT bit 6, LAUNCH_MIT_VECTOR: defined only for message version 2.
    const LAUNCH_MIT_VECTOR: u64 = 1 << 6;

    /// The GUEST_FIELD_SELECT bitmask.
    pub fn bits(self) -> u64 {
        [
            self.policy,
            self.image_id,
            self.family_id,
            self.measurement,
            self.guest_svn,
            self.tcb_version,
        ]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &on)| acc | (u64::from(on) << i))
    }

    /// Decodes GUEST_FIELD_SELECT of a version 1 message: bits 63:6 must be zero
    /// (bit 6, LAUNCH_MIT_VECTOR, exists only in version 2, which the emulator does
    /// not implement).
    pub fn from_bits(bits: u64) -> Result<Self, KeyRequestError> {
        if bits >> 6 != 0 {
            return Err(KeyRequestError::FieldSelect {
                bits,
                launch_mit_vector: bits & Self::LAUNCH_MIT_VECTOR != 0,
            });
        }
        let on = |i: u32| bits & (1 << i) != 0;
        Ok(FieldSelect {
            policy: on(0),
            image_id: on(1),
            family_id: on(2),
            measurement: on(3),
            guest_svn: on(4),
            tcb_version: on(5),
        })
    }
}

/// Why SNP_GET_DERIVED_KEY refused a MSG_KEY_REQ (the firmware answers
/// INVALID_PARAM, or INVALID_KEY for a key it does not hold).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRequestError {
    /// The message is not the 32 bytes of a version 1 MSG_KEY_REQ.
    #[error("MSG_KEY_REQ is {got} bytes, not {}", KeyRequest::LEN)]
    Length {
        /// Its length.
        got: usize,
    },
    /// A reserved field is not zero.
    #[error("reserved {field} is {value:#x}, not zero")]
    Reserved {
        /// Which field (offset and bits).
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// ROOT_KEY_SELECT asks for the VMRK: only a guest imported with a migration
    /// agent has one, and the emulator has no migration agents.
    #[error("ROOT_KEY_SELECT asks for the VMRK, which this guest does not have")]
    NoVmrk,
    /// KEY_SEL is 3, a reserved value.
    #[error("KEY_SEL 3 is reserved")]
    KeySelReserved,
    /// KEY_SEL asks for the VLEK and none is loaded.
    #[error("KEY_SEL asks for the VLEK and none is loaded")]
    NoVlek,
    /// GUEST_FIELD_SELECT has bits beyond TCB_VERSION (bit 5) set.
    #[error(
        "GUEST_FIELD_SELECT {bits:#x} sets bits above 5{}",
        if *launch_mit_vector { " (LAUNCH_MIT_VECTOR needs message version 2, not emulated)" } else { "" }
    )]
    FieldSelect {
        /// The field.
        bits: u64,
        /// Bit 6 (LAUNCH_MIT_VECTOR) is among them.
        launch_mit_vector: bool,
    },
    /// The requesting VMPL is not 0..=3.
    #[error("the request comes from VMPL {0}, not 0..=3")]
    RequesterVmpl(u32),
    /// The VMPL to mix in is not 0..=3.
    #[error("VMPL {0} is not 0..=3")]
    Vmpl(u32),
    /// The VMPL to mix in is more privileged (lower) than the requester's.
    #[error("VMPL {requested} is more privileged than the requester's VMPL {requester}")]
    VmplBelowRequester {
        /// The VMPL in the request.
        requested: u32,
        /// The VMPL the request came from.
        requester: u32,
    },
    /// GUEST_SVN exceeds the guest SVN of the ID block at launch.
    #[error("GUEST_SVN {requested} exceeds the guest's launch SVN {launched}")]
    GuestSvn {
        /// The SVN in the request.
        requested: u32,
        /// The guest's SVN at launch.
        launched: u32,
    },
    /// TCB_VERSION has bytes set that the product's layout reserves.
    #[error("TCB_VERSION {0:#018x} sets bytes the product's layout reserves")]
    TcbReserved(u64),
    /// A component of TCB_VERSION exceeds the platform's committed TCB.
    #[error("TCB_VERSION {component} SVN {requested} exceeds the committed TCB's {committed}")]
    TcbNewer {
        /// The component (`bootloader`, `tee`, `snp`, `microcode`, `fmc`).
        component: &'static str,
        /// Its SVN in the request.
        requested: u8,
        /// Its SVN in the committed TCB.
        committed: u8,
    },
}

/// A guest's MSG_KEY_REQ, message version 1 (SEV-SNP ABI, "MSG_KEY_REQ Message
/// Structure"):
///
/// | offset | bits | field |
/// |--------|------|-------|
/// | 0x00 | 0 | ROOT_KEY_SELECT (0 VCEK, 1 VMRK) |
/// | 0x00 | 2:1 | KEY_SEL (0 VLEK if loaded else VCEK, 1 VCEK, 2 VLEK, 3 reserved) |
/// | 0x00 | 31:3 | reserved |
/// | 0x04 | 31:0 | reserved |
/// | 0x08 | 63:0 | GUEST_FIELD_SELECT (bits 5:0; 63:6 reserved) |
/// | 0x10 | 31:0 | VMPL |
/// | 0x14 | 31:0 | GUEST_SVN |
/// | 0x18 | 63:0 | TCB_VERSION |
///
/// ROOT_KEY_SELECT is not a field here: the emulator has no VMRK, so a request for
/// it is refused when parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyRequest {
    /// KEY_SEL: which chip key the derivation starts from.
    pub key: KeySelect,
    /// GUEST_FIELD_SELECT.
    pub fields: FieldSelect,
    /// The VMPL to mix in; at least the requester's.
    pub vmpl: u32,
    /// The guest SVN to mix in; at most the launch SVN.
    pub guest_svn: u32,
    /// The raw TCB_VERSION to mix in; each component at most the committed TCB's.
    pub tcb_version: u64,
}

impl KeyRequest {
    /// The length of a version 1 MSG_KEY_REQ.
    pub const LEN: usize = 0x20;

    /// Parses a version 1 MSG_KEY_REQ, refusing reserved bits and bytes that are set.
    /// The platform checks the values ([`Platform::get_derived_key`]).
    pub fn parse(msg: &[u8]) -> Result<Self, KeyRequestError> {
        let msg: &[u8; Self::LEN] = msg
            .try_into()
            .map_err(|_| KeyRequestError::Length { got: msg.len() })?;
        let u32_at =
            |off: usize| u32::from_le_bytes([msg[off], msg[off + 1], msg[off + 2], msg[off + 3]]);
        let u64_at = |off: usize| u64::from(u32_at(off)) | u64::from(u32_at(off + 4)) << 32;
        let select = u32_at(0x00);
        if select >> 3 != 0 {
            return Err(KeyRequestError::Reserved {
                field: "0x00 bits 31:3",
                value: u64::from(select >> 3),
            });
        }
        if u32_at(0x04) != 0 {
            return Err(KeyRequestError::Reserved {
                field: "0x04",
                value: u64::from(u32_at(0x04)),
            });
        }
        if select & 1 != 0 {
            return Err(KeyRequestError::NoVmrk);
        }
        let key = match (select >> 1) & 0b11 {
            0 => KeySelect::Default,
            1 => KeySelect::Vcek,
            2 => KeySelect::Vlek,
            _ => return Err(KeyRequestError::KeySelReserved),
        };
        Ok(KeyRequest {
            key,
            fields: FieldSelect::from_bits(u64_at(0x08))?,
            vmpl: u32_at(0x10),
            guest_svn: u32_at(0x14),
            tcb_version: u64_at(0x18),
        })
    }

    /// The message bytes (ROOT_KEY_SELECT 0, reserved fields zero).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let key_sel: u32 = match self.key {
            KeySelect::Default => 0,
            KeySelect::Vcek => 1,
            KeySelect::Vlek => 2,
        };
        let mut b = [0u8; Self::LEN];
        b[0x00..0x04].copy_from_slice(&(key_sel << 1).to_le_bytes());
        b[0x08..0x10].copy_from_slice(&self.fields.bits().to_le_bytes());
        b[0x10..0x14].copy_from_slice(&self.vmpl.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&self.tcb_version.to_le_bytes());
        b
    }
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

    /// SNP_GET_DERIVED_KEY: a 32-byte key derived from a chip key (the VCEK's or, with
    /// KEY_SEL, the VLEK's root) and the guest fields `request` selects, for a request
    /// that came from `requester_vmpl` (the VMPL whose VMPCK protected the message).
    /// Stable for the same inputs.
    ///
    /// Refused, whether or not the field is selected: a requester VMPL or VMPL beyond
    /// 3; a VMPL more privileged (lower) than the requester's; a GUEST_SVN above the
    /// launch SVN; a TCB_VERSION with reserved bytes set for the product's layout, or
    /// any component (boot loader, TEE, SNP, microcode, FMC) above the committed TCB's
    /// (the emulator commits every TCB it runs, so committed is current).
    pub fn get_derived_key(
        &self,
        guest: &Guest,
        requester_vmpl: u32,
        request: &KeyRequest,
    ) -> Result<Zeroizing<[u8; 32]>, GuestError> {
        self.require_snp()?;
        if requester_vmpl > 3 {
            return Err(KeyRequestError::RequesterVmpl(requester_vmpl).into());
        }
        if request.vmpl > 3 {
            return Err(KeyRequestError::Vmpl(request.vmpl).into());
        }
        if request.vmpl < requester_vmpl {
            return Err(KeyRequestError::VmplBelowRequester {
                requested: request.vmpl,
                requester: requester_vmpl,
            }
            .into());
        }
        let c = &guest.config;
        if request.guest_svn > c.guest_svn {
            return Err(KeyRequestError::GuestSvn {
                requested: request.guest_svn,
                launched: c.guest_svn,
            }
            .into());
        }
        self.check_key_request_tcb(request.tcb_version)?;
        let vlek = match (request.key, self.vlek_key()) {
            (KeySelect::Vcek, _) | (KeySelect::Default, None) => false,
            (KeySelect::Vlek | KeySelect::Default, Some(_)) => true,
            (KeySelect::Vlek, None) => return Err(KeyRequestError::NoVlek.into()),
        };
        let select = request.fields;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, self.chip_secret());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        // VCEK-rooted keys keep the derivation input they always had.
        ctx.update(if vlek {
            b"opencvm derived key (VLEK)".as_slice()
        } else {
            b"opencvm derived key".as_slice()
        });
        ctx.update(&request.vmpl.to_le_bytes());
        // Bits 5:0 only, as one byte (checked by the type).
        ctx.update(&[select.bits().to_le_bytes()[0]]);
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
            ctx.update(&request.guest_svn.to_le_bytes());
        }
        if select.tcb_version {
            ctx.update(&request.tcb_version.to_le_bytes());
        }
        let tag = ctx.sign();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&tag.as_ref()[..32]);
        Ok(out)
    }

    /// A MSG_KEY_REQ's TCB_VERSION: reserved bytes zero for the product's layout, and
    /// no component newer than the committed TCB's (compared one by one: the packed
    /// `u64` orders by microcode first, so a higher boot loader, TEE or SNP SVN
    /// would hide behind a lower microcode SVN).
    fn check_key_request_tcb(&self, raw: u64) -> Result<(), KeyRequestError> {
        let committed = self.config().tcb();
        let requested = TcbVersion::decode(raw, committed.layout())
            .map_err(|_| KeyRequestError::TcbReserved(raw))?;
        let parts = [
            ("bootloader", requested.bootloader(), committed.bootloader()),
            ("tee", requested.tee(), committed.tee()),
            ("snp", requested.snp(), committed.snp()),
            ("microcode", requested.microcode(), committed.microcode()),
            (
                "fmc",
                requested.fmc().unwrap_or(0),
                committed.fmc().unwrap_or(0),
            ),
        ];
        match parts.into_iter().find(|(_, r, c)| r > c) {
            Some((component, requested, committed)) => Err(KeyRequestError::TcbNewer {
                component,
                requested,
                committed,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::OnceLock;

    use snp::Product;

    use super::*;
    use crate::platform::PlatformConfig;

    /// One Milan platform (TCB bootloader=4 tee=0 snp=24 microcode=219) and a guest
    /// launched with guest SVN 3, shared by the tests.
    fn milan() -> &'static (tempfile::TempDir, Platform, Guest) {
        static P: OnceLock<(tempfile::TempDir, Platform, Guest)> = OnceLock::new();
        P.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let p =
                Platform::create(dir.path(), PlatformConfig::new(Product::Milan), None).unwrap();
            let g = p
                .launch(LaunchConfig {
                    guest_svn: 3,
                    ..LaunchConfig::default()
                })
                .unwrap();
            (dir, p, g)
        })
    }

    fn request(tcb: TcbVersion) -> KeyRequest {
        KeyRequest {
            fields: FieldSelect {
                tcb_version: true,
                ..FieldSelect::default()
            },
            tcb_version: tcb.raw(),
            ..KeyRequest::default()
        }
    }

    fn refused(p: &Platform, g: &Guest, vmpl: u32, r: &KeyRequest) -> KeyRequestError {
        match p.get_derived_key(g, vmpl, r) {
            Err(GuestError::KeyRequest(e)) => e,
            Err(e) => panic!("{r:?}: refused for another reason: {e}"),
            Ok(_) => panic!("{r:?}: accepted"),
        }
    }

    #[test]
    fn tcb_newer_in_any_component_is_refused_even_with_an_older_microcode() {
        let (_, p, g) = milan();
        assert_eq!(
            p.config().tcb(),
            TcbVersion::milan_genoa(4, 0, 24, 219),
            "fixture"
        );
        // Each of these packs below the platform's TCB (microcode is the top byte), so
        // a packed comparison accepted them.
        for (tcb, component) in [
            (TcbVersion::milan_genoa(5, 0, 24, 218), "bootloader"),
            (TcbVersion::milan_genoa(4, 1, 24, 218), "tee"),
            (TcbVersion::milan_genoa(4, 0, 25, 218), "snp"),
            (TcbVersion::milan_genoa(255, 255, 255, 0), "bootloader"),
        ] {
            assert!(tcb.raw() < p.config().tcb().raw(), "{tcb}");
            assert!(
                matches!(
                    refused(p, g, 0, &request(tcb)),
                    KeyRequestError::TcbNewer { component: c, .. } if c == component
                ),
                "{tcb}"
            );
        }
        assert!(matches!(
            refused(p, g, 0, &request(TcbVersion::milan_genoa(4, 0, 24, 220))),
            KeyRequestError::TcbNewer {
                component: "microcode",
                requested: 220,
                committed: 219
            }
        ));
        // The same or older in every component is accepted.
        for tcb in [
            TcbVersion::milan_genoa(4, 0, 24, 219),
            TcbVersion::milan_genoa(0, 0, 0, 0),
            TcbVersion::milan_genoa(3, 0, 24, 219),
        ] {
            p.get_derived_key(g, 0, &request(tcb)).unwrap();
        }
        // Checked whether or not TCB_VERSION is mixed in.
        let unselected = KeyRequest {
            fields: FieldSelect::default(),
            ..request(TcbVersion::milan_genoa(5, 0, 24, 218))
        };
        assert!(matches!(
            refused(p, g, 0, &unselected),
            KeyRequestError::TcbNewer { .. }
        ));
    }

    #[test]
    fn turin_fmc_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = Platform::create(dir.path(), PlatformConfig::new(Product::Turin), None).unwrap();
        let g = p.launch(LaunchConfig::default()).unwrap();
        // Platform: fmc=1 bootloader=1 tee=1 snp=4 microcode=5.
        let newer_fmc = TcbVersion::turin(2, 1, 1, 4, 4);
        assert!(newer_fmc.raw() < p.config().tcb().raw());
        assert!(matches!(
            refused(&p, &g, 0, &request(newer_fmc)),
            KeyRequestError::TcbNewer {
                component: "fmc",
                ..
            }
        ));
        p.get_derived_key(&g, 0, &request(p.config().tcb()))
            .unwrap();
    }

    #[test]
    fn tcb_with_reserved_bytes_is_refused() {
        let (_, p, g) = milan();
        let current = p.config().tcb().raw();
        // Milan/Genoa reserve bytes 2..=5.
        for byte in 2..=5 {
            let raw = (current & !(0xff << 56)) | 1 << (8 * byte);
            let r = KeyRequest {
                tcb_version: raw,
                ..request(p.config().tcb())
            };
            assert_eq!(
                refused(p, g, 0, &r),
                KeyRequestError::TcbReserved(raw),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn reserved_bits_and_bytes_of_the_message_are_refused() {
        let good = request(TcbVersion::milan_genoa(4, 0, 24, 219)).to_bytes();
        assert_eq!(
            KeyRequest::parse(&good).unwrap(),
            request(TcbVersion::milan_genoa(4, 0, 24, 219))
        );
        let with = |off: usize, byte: u8| {
            let mut m = good;
            m[off] |= byte;
            KeyRequest::parse(&m)
        };
        // 0x00 bits 31:3 and 0x04..0x08 are reserved.
        for (off, byte) in [
            (0x00, 0x08),
            (0x00, 0x80),
            (0x03, 0x80),
            (0x04, 1),
            (0x07, 0x80),
        ] {
            assert!(
                matches!(with(off, byte), Err(KeyRequestError::Reserved { .. })),
                "{off:#x} {byte:#x}"
            );
        }
        // GUEST_FIELD_SELECT bits 63:6 (bit 6 is LAUNCH_MIT_VECTOR, version 2 only).
        for (off, byte, mit) in [(0x08, 0x40, true), (0x08, 0x80, false), (0x0f, 0x80, false)] {
            assert_eq!(
                with(off, byte).unwrap_err(),
                KeyRequestError::FieldSelect {
                    bits: u64::from_le_bytes(good[0x08..0x10].try_into().unwrap())
                        | u64::from(byte) << (8 * (off - 0x08)),
                    launch_mit_vector: mit,
                }
            );
        }
        assert_eq!(with(0x00, 0x01).unwrap_err(), KeyRequestError::NoVmrk);
        assert_eq!(
            with(0x00, 0x06).unwrap_err(),
            KeyRequestError::KeySelReserved
        );
        for len in [0, KeyRequest::LEN - 1, KeyRequest::LEN + 8, 0x60] {
            let mut m = good.to_vec();
            m.resize(len, 0);
            assert_eq!(
                KeyRequest::parse(&m).unwrap_err(),
                KeyRequestError::Length { got: len }
            );
        }
        // KEY_SEL 1 and 2 are fields, not reserved bits.
        assert_eq!(with(0x00, 0x02).unwrap().key, KeySelect::Vcek);
        assert_eq!(with(0x00, 0x04).unwrap().key, KeySelect::Vlek);
    }

    #[test]
    fn a_vmpl_more_privileged_than_the_requester_is_refused() {
        let (_, p, g) = milan();
        let at = |vmpl| KeyRequest {
            vmpl,
            ..KeyRequest::default()
        };
        assert_eq!(
            refused(p, g, 2, &at(0)),
            KeyRequestError::VmplBelowRequester {
                requested: 0,
                requester: 2
            }
        );
        assert!(matches!(
            refused(p, g, 3, &at(2)),
            KeyRequestError::VmplBelowRequester { .. }
        ));
        // The requester's own VMPL and less privileged ones are allowed, and differ.
        let k2 = p.get_derived_key(g, 2, &at(2)).unwrap();
        let k3 = p.get_derived_key(g, 2, &at(3)).unwrap();
        assert_ne!(*k2, *k3);
        // The key depends on the VMPL asked for, not on who asked.
        assert_eq!(*p.get_derived_key(g, 0, &at(3)).unwrap(), *k3);
        assert_eq!(refused(p, g, 0, &at(4)), KeyRequestError::Vmpl(4));
        assert_eq!(refused(p, g, 4, &at(4)), KeyRequestError::RequesterVmpl(4));
    }

    #[test]
    fn guest_svn_above_the_launch_svn_is_refused() {
        let (_, p, g) = milan();
        let r = KeyRequest {
            guest_svn: 4,
            ..KeyRequest::default()
        };
        assert_eq!(
            refused(p, g, 0, &r),
            KeyRequestError::GuestSvn {
                requested: 4,
                launched: 3
            }
        );
    }

    #[test]
    fn key_sel_picks_the_root() {
        let (_, p, g) = milan();
        let vcek = KeyRequest {
            key: KeySelect::Vcek,
            ..KeyRequest::default()
        };
        // Without a VLEK, the default is the VCEK; asking for the VLEK is refused.
        assert_eq!(
            *p.get_derived_key(g, 0, &vcek).unwrap(),
            *p.get_derived_key(g, 0, &KeyRequest::default()).unwrap()
        );
        let vlek = KeyRequest {
            key: KeySelect::Vlek,
            ..KeyRequest::default()
        };
        assert_eq!(refused(p, g, 0, &vlek), KeyRequestError::NoVlek);

        let dir = tempfile::tempdir().unwrap();
        let mut config = PlatformConfig::new(Product::Milan);
        config.vlek = true;
        let q = Platform::create(dir.path(), config, None).unwrap();
        let gq = q.launch(LaunchConfig::default()).unwrap();
        let from_vlek = q.get_derived_key(&gq, 0, &vlek).unwrap();
        assert_eq!(
            *from_vlek,
            *q.get_derived_key(&gq, 0, &KeyRequest::default()).unwrap(),
            "the default is the VLEK when one is loaded"
        );
        assert_ne!(*from_vlek, *q.get_derived_key(&gq, 0, &vcek).unwrap());
    }
}
