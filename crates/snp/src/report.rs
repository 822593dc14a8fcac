//! `ATTESTATION_REPORT`: the structure the AMD secure processor signs for a guest.
//!
//! Layout from the SEV-SNP Firmware ABI specification (publication 56860), table
//! "ATTESTATION_REPORT Structure". Versions 2, 3, 4 and 5 are understood; version 3
//! added the CPUID family/model/stepping bytes, version 5 the mitigation vectors.
//! Version 4 is read with version 3's layout, as go-sev-guest and virtee/sev read it
//! (firmware between the two emitted it without new fields); because every byte that
//! version 3 reserves must still be zero, a version 4 report that used any of them
//! would be rejected, never misread. Any other version is rejected rather than read
//! with a guessed layout.
//!
//! On Turin the chip identifier is 8 bytes: bytes 8..64 of `CHIP_ID` must be zero.
//!
//! Parsing checks every reserved field and reserved bit. The received bytes are
//! kept: the signature is verified over them, never over a re-encoding.

use std::fmt;

use crate::product::Product;
use crate::tcb::{TcbLayout, TcbReservedBits, TcbVersion};

/// Size of an attestation report in bytes.
pub const REPORT_LEN: usize = 0x4A0;
/// The report bytes covered by the signature: `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;

/// Why a report could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The input is not exactly [`REPORT_LEN`] bytes.
    #[error("attestation report must be {REPORT_LEN} bytes, got {got}")]
    Length {
        /// The length received.
        got: usize,
    },
    /// A version this parser does not understand.
    #[error("unsupported attestation report version {0} (supported: 2, 3, 4, 5)")]
    UnsupportedVersion(u32),
    /// A reserved field holds non-zero bytes.
    #[error("reserved field {field} at offset {offset:#05x} is not zero")]
    Reserved {
        /// The field's name.
        field: &'static str,
        /// Its offset in the report.
        offset: usize,
    },
    /// A reserved bit of a bit field is set.
    #[error("{field} has reserved bits set: {value:#x}")]
    ReservedBits {
        /// The field's name.
        field: &'static str,
        /// The field's value.
        value: u64,
    },
    /// A field holds a value outside its defined range.
    #[error("{field} has invalid value {value:#x}")]
    InvalidValue {
        /// The field's name.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A TCB version field is malformed for the product's layout.
    #[error("{field}: {source}")]
    Tcb {
        /// The field's name.
        field: &'static str,
        /// The decoding error.
        source: TcbReservedBits,
    },
    /// The CPUID fields name a CPU without a known SEV-SNP product.
    #[error("CPUID family {family:#04x} model {model:#04x} is not a known SEV-SNP product")]
    UnknownCpu {
        /// CPUID family.
        family: u8,
        /// CPUID model.
        model: u8,
    },
    /// The product given for the report contradicts what the report says.
    #[error("report is from {report}, not {claimed}")]
    ProductMismatch {
        /// What the report's CPUID (or version) says.
        report: String,
        /// What was claimed (for example by the VEK certificate).
        claimed: Product,
    },
    /// A signature component does not fit in 48 bytes.
    #[error("signature component {0} has non-zero high bytes")]
    SignatureEncoding(&'static str),
}

/// Report structure versions this crate understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReportVersion {
    /// Version 2 (SNP ABI 1.51+).
    V2,
    /// Version 3: adds CPUID family/model/stepping.
    V3,
    /// Version 4: version 3's layout.
    V4,
    /// Version 5: adds launch and current mitigation vectors.
    V5,
}

impl ReportVersion {
    /// The numeric version.
    pub fn number(self) -> u32 {
        match self {
            ReportVersion::V2 => 2,
            ReportVersion::V3 => 3,
            ReportVersion::V4 => 4,
            ReportVersion::V5 => 5,
        }
    }
    fn from_number(v: u32) -> Result<Self, ReportError> {
        match v {
            2 => Ok(ReportVersion::V2),
            3 => Ok(ReportVersion::V3),
            4 => Ok(ReportVersion::V4),
            5 => Ok(ReportVersion::V5),
            other => Err(ReportError::UnsupportedVersion(other)),
        }
    }
}

/// The guest policy the guest was launched with (`POLICY`, offset 0x08).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestPolicy(u64);

impl GuestPolicy {
    /// Bits 63:26 are reserved in ABI 1.58.
    const RESERVED: u64 = !((1u64 << 26) - 1);

    /// Decodes a policy, rejecting reserved bits.
    pub fn new(raw: u64) -> Result<Self, ReportError> {
        if raw & Self::RESERVED != 0 {
            return Err(ReportError::ReservedBits {
                field: "POLICY",
                value: raw,
            });
        }
        Ok(GuestPolicy(raw))
    }
    fn bit(self, n: u32) -> bool {
        self.0 & (1 << n) != 0
    }
    /// The raw value.
    pub fn raw(self) -> u64 {
        self.0
    }
    /// Minimum ABI minor version required.
    pub fn abi_minor(self) -> u8 {
        self.0 as u8
    }
    /// Minimum ABI major version required.
    pub fn abi_major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// SMT is allowed (bit 16).
    pub fn smt(self) -> bool {
        self.bit(16)
    }
    /// Must-be-one bit 17.
    pub fn mbo(self) -> bool {
        self.bit(17)
    }
    /// Association with a migration agent is allowed (bit 18).
    pub fn migrate_ma(self) -> bool {
        self.bit(18)
    }
    /// Debugging is allowed: the hypervisor can read and write guest memory (bit 19).
    pub fn debug(self) -> bool {
        self.bit(19)
    }
    /// The guest can run on one socket only (bit 20).
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }
    /// CXL may be populated with guest memory (bit 21).
    pub fn cxl_allow(self) -> bool {
        self.bit(21)
    }
    /// AES-256-XTS is required for memory encryption (bit 22).
    pub fn mem_aes_256_xts(self) -> bool {
        self.bit(22)
    }
    /// Running power limit (RAPL) must be disabled (bit 23).
    pub fn rapl_dis(self) -> bool {
        self.bit(23)
    }
    /// Ciphertext hiding for DRAM must be enabled (bit 24).
    pub fn ciphertext_hiding(self) -> bool {
        self.bit(24)
    }
    /// Guest support for page swap is disabled (bit 25).
    pub fn page_swap_disable(self) -> bool {
        self.bit(25)
    }
}

/// Platform state when the report was made (`PLATFORM_INFO`, offset 0x40).
///
/// Unknown bits are kept in [`PlatformInfo::raw`]: firmware adds flags over time and
/// they describe the platform, not a relaxation the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlatformInfo(u64);

impl PlatformInfo {
    /// Wraps a raw value.
    pub fn new(raw: u64) -> Self {
        PlatformInfo(raw)
    }
    fn bit(self, n: u32) -> bool {
        self.0 & (1 << n) != 0
    }
    /// The raw value.
    pub fn raw(self) -> u64 {
        self.0
    }
    /// SMT is enabled on the platform (bit 0).
    pub fn smt_enabled(self) -> bool {
        self.bit(0)
    }
    /// Transparent SME is enabled (bit 1).
    pub fn tsme_enabled(self) -> bool {
        self.bit(1)
    }
    /// The platform uses error-correcting memory (bit 2).
    pub fn ecc_enabled(self) -> bool {
        self.bit(2)
    }
    /// RAPL is disabled (bit 3).
    pub fn rapl_disabled(self) -> bool {
        self.bit(3)
    }
    /// Ciphertext hiding for DRAM is enabled (bit 4).
    pub fn ciphertext_hiding_enabled(self) -> bool {
        self.bit(4)
    }
    /// The alias check completed (bit 5).
    pub fn alias_check_complete(self) -> bool {
        self.bit(5)
    }
    /// SEV-TIO is enabled (bit 7).
    pub fn tio_enabled(self) -> bool {
        self.bit(7)
    }
    /// The named flags and whether each is set, in bit order.
    pub fn flags(self) -> [(&'static str, bool); 7] {
        [
            ("smt_enabled", self.smt_enabled()),
            ("tsme_enabled", self.tsme_enabled()),
            ("ecc_enabled", self.ecc_enabled()),
            ("rapl_disabled", self.rapl_disabled()),
            (
                "ciphertext_hiding_enabled",
                self.ciphertext_hiding_enabled(),
            ),
            ("alias_check_complete", self.alias_check_complete()),
            ("tio_enabled", self.tio_enabled()),
        ]
    }
}

/// Which key signed the report (`SIGNING_KEY`, bits 4:2 at offset 0x48).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningKey {
    /// The versioned chip endorsement key.
    Vcek,
    /// The versioned loaded endorsement key (provisioned by a cloud provider).
    Vlek,
    /// The report is not signed.
    None,
}

impl SigningKey {
    /// Lower-case name, as used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            SigningKey::Vcek => "vcek",
            SigningKey::Vlek => "vlek",
            SigningKey::None => "none",
        }
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Firmware version `major.minor.build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// CPUID family, model and stepping of the platform (report version 3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Cpuid {
    /// Combined family.
    pub family: u8,
    /// Combined model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

/// A parsed, structurally valid attestation report. Its signature is not yet checked:
/// see [`crate::verify`].
#[derive(Clone)]
pub struct AttestationReport {
    bytes: Box<[u8; REPORT_LEN]>,
    version: ReportVersion,
    signature_algo: u32,
    guest_svn: u32,
    policy: GuestPolicy,
    vmpl: u32,
    current_tcb: TcbVersion,
    platform_info: PlatformInfo,
    author_key_en: bool,
    mask_chip_key: bool,
    signing_key: SigningKey,
    reported_tcb: TcbVersion,
    committed_tcb: TcbVersion,
    launch_tcb: TcbVersion,
    cpuid: Option<Cpuid>,
    product: Option<Product>,
    current_fw: FirmwareVersion,
    committed_fw: FirmwareVersion,
    launch_mit_vector: Option<u64>,
    current_mit_vector: Option<u64>,
}

impl fmt::Debug for AttestationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationReport")
            .field("version", &self.version)
            .field("product", &self.product)
            .field("measurement", &hex::encode(self.measurement()))
            .field("reported_tcb", &self.reported_tcb)
            .finish_non_exhaustive()
    }
}

fn u32_at(b: &[u8; REPORT_LEN], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8; REPORT_LEN], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn zero(
    b: &[u8; REPORT_LEN],
    field: &'static str,
    start: usize,
    end: usize,
) -> Result<(), ReportError> {
    if b[start..end].iter().any(|&x| x != 0) {
        return Err(ReportError::Reserved {
            field,
            offset: start,
        });
    }
    Ok(())
}

impl AttestationReport {
    /// Parses a report. The product is taken from the CPUID fields of a version 3+
    /// report; a version 2 report has none, and its product stays unknown until
    /// [`AttestationReport::with_product`] supplies one (from the VEK certificate).
    pub fn parse(data: &[u8]) -> Result<Self, ReportError> {
        Self::parse_inner(data, None)
    }

    /// Parses a report that is known to come from `product`; a version 3+ report whose
    /// CPUID names another product is rejected.
    pub fn parse_for_product(data: &[u8], product: Product) -> Result<Self, ReportError> {
        Self::parse_inner(data, Some(product))
    }

    /// Re-reads this report as coming from `product` (for example the product named by
    /// its VEK certificate), rejecting a contradiction with the report itself.
    pub fn with_product(&self, product: Product) -> Result<Self, ReportError> {
        if self.product == Some(product) {
            return Ok(self.clone());
        }
        Self::parse_inner(&self.bytes[..], Some(product))
    }

    fn parse_inner(data: &[u8], claimed: Option<Product>) -> Result<Self, ReportError> {
        let bytes: Box<[u8; REPORT_LEN]> = match <[u8; REPORT_LEN]>::try_from(data) {
            Ok(a) => Box::new(a),
            Err(_) => return Err(ReportError::Length { got: data.len() }),
        };
        let b = &*bytes;
        let version = ReportVersion::from_number(u32_at(b, 0x00))?;
        let policy = GuestPolicy::new(u64_at(b, 0x08))?;
        let vmpl = u32_at(b, 0x30);
        if vmpl > 3 {
            return Err(ReportError::InvalidValue {
                field: "VMPL",
                value: vmpl.into(),
            });
        }
        let sig_algo = u32_at(b, 0x34);
        let key_info = u32_at(b, 0x48);
        if key_info & !0x1f != 0 {
            return Err(ReportError::ReservedBits {
                field: "KEY_INFO",
                value: key_info.into(),
            });
        }
        let signing_key = match (key_info >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => {
                return Err(ReportError::InvalidValue {
                    field: "SIGNING_KEY",
                    value: other.into(),
                });
            }
        };
        match (signing_key, sig_algo) {
            (SigningKey::None, _) | (_, 1) => {}
            (_, other) => {
                return Err(ReportError::InvalidValue {
                    field: "SIGNATURE_ALGO",
                    value: other.into(),
                });
            }
        }
        zero(b, "reserved (0x4C)", 0x4C, 0x50)?;

        // CPUID bytes exist from version 3 on.
        let (cpuid, cpu_product) = if version >= ReportVersion::V3 {
            let cpuid = Cpuid {
                family: b[0x188],
                model: b[0x189],
                stepping: b[0x18A],
            };
            let product =
                Product::from_cpuid(cpuid.family, cpuid.model).ok_or(ReportError::UnknownCpu {
                    family: cpuid.family,
                    model: cpuid.model,
                })?;
            zero(b, "reserved (0x18B)", 0x18B, 0x1A0)?;
            (Some(cpuid), Some(product))
        } else {
            zero(b, "reserved (0x188)", 0x188, 0x1A0)?;
            (None, None)
        };

        let product = match (cpu_product, claimed) {
            (Some(r), Some(c)) if r != c => {
                return Err(ReportError::ProductMismatch {
                    report: r.to_string(),
                    claimed: c,
                });
            }
            // Turin firmware emits report version 3 or later, with CPUID bytes.
            (None, Some(Product::Turin)) => {
                return Err(ReportError::ProductMismatch {
                    report: "a version 2 report (Milan or Genoa)".into(),
                    claimed: Product::Turin,
                });
            }
            (r, c) => r.or(c),
        };
        // Turin's chip identifier is 8 bytes; the rest of CHIP_ID is reserved.
        if product == Some(Product::Turin) {
            zero(b, "CHIP_ID bytes 8..64 (Turin)", 0x1A8, 0x1E0)?;
        }
        // A version 2 report comes from Milan or Genoa, which share one TCB layout.
        let layout = product.map_or(TcbLayout::MilanGenoa, Product::tcb_layout);
        let tcb = |field: &'static str, off: usize| {
            TcbVersion::decode(u64_at(b, off), layout)
                .map_err(|source| ReportError::Tcb { field, source })
        };

        zero(b, "reserved (0x1EB)", 0x1EB, 0x1EC)?;
        zero(b, "reserved (0x1EF)", 0x1EF, 0x1F0)?;
        let (launch_mit_vector, current_mit_vector) = if version >= ReportVersion::V5 {
            zero(b, "reserved (0x208)", 0x208, SIGNED_LEN)?;
            (Some(u64_at(b, 0x1F8)), Some(u64_at(b, 0x200)))
        } else {
            zero(b, "reserved (0x1F8)", 0x1F8, SIGNED_LEN)?;
            (None, None)
        };
        // Signature: R and S are 72-byte little-endian integers; P-384 needs 48.
        if signing_key != SigningKey::None {
            if b[0x2A0 + 48..0x2E8].iter().any(|&x| x != 0) {
                return Err(ReportError::SignatureEncoding("R"));
            }
            if b[0x2E8 + 48..0x330].iter().any(|&x| x != 0) {
                return Err(ReportError::SignatureEncoding("S"));
            }
        }
        zero(b, "signature reserved (0x330)", 0x330, REPORT_LEN)?;

        Ok(AttestationReport {
            version,
            signature_algo: sig_algo,
            guest_svn: u32_at(b, 0x04),
            policy,
            vmpl,
            current_tcb: tcb("CURRENT_TCB", 0x38)?,
            platform_info: PlatformInfo::new(u64_at(b, 0x40)),
            author_key_en: key_info & 1 != 0,
            mask_chip_key: key_info & 2 != 0,
            signing_key,
            reported_tcb: tcb("REPORTED_TCB", 0x180)?,
            committed_tcb: tcb("COMMITTED_TCB", 0x1E0)?,
            launch_tcb: tcb("LAUNCH_TCB", 0x1F0)?,
            cpuid,
            product,
            current_fw: FirmwareVersion {
                build: b[0x1E8],
                minor: b[0x1E9],
                major: b[0x1EA],
            },
            committed_fw: FirmwareVersion {
                build: b[0x1EC],
                minor: b[0x1ED],
                major: b[0x1EE],
            },
            launch_mit_vector,
            current_mit_vector,
            bytes,
        })
    }

    /// The report exactly as received.
    pub fn as_bytes(&self) -> &[u8; REPORT_LEN] {
        &self.bytes
    }
    /// The bytes covered by the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..SIGNED_LEN]
    }
    /// The signature as `r || s`, each 48 bytes big-endian (the fixed encoding of
    /// ECDSA P-384).
    pub fn signature_fixed(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        for i in 0..48 {
            out[47 - i] = self.bytes[0x2A0 + i];
            out[95 - i] = self.bytes[0x2E8 + i];
        }
        out
    }
    /// Structure version.
    pub fn version(&self) -> ReportVersion {
        self.version
    }
    /// `SIGNATURE_ALGO` as read (1 = ECDSA P-384 with SHA-384; any value when the
    /// report is unsigned).
    pub fn signature_algo(&self) -> u32 {
        self.signature_algo
    }
    /// The guest's security version number.
    pub fn guest_svn(&self) -> u32 {
        self.guest_svn
    }
    /// The guest policy.
    pub fn policy(&self) -> GuestPolicy {
        self.policy
    }
    /// The family ID given at launch.
    pub fn family_id(&self) -> &[u8; 16] {
        self.array(0x10)
    }
    /// The image ID given at launch.
    pub fn image_id(&self) -> &[u8; 16] {
        self.array(0x20)
    }
    /// The VMPL of the request (0–3).
    pub fn vmpl(&self) -> u32 {
        self.vmpl
    }
    /// The current TCB.
    pub fn current_tcb(&self) -> TcbVersion {
        self.current_tcb
    }
    /// Platform information.
    pub fn platform_info(&self) -> PlatformInfo {
        self.platform_info
    }
    /// Whether AUTHOR_KEY_DIGEST holds the digest of an author key.
    pub fn author_key_en(&self) -> bool {
        self.author_key_en
    }
    /// Whether CHIP_ID is masked (zero).
    pub fn mask_chip_key(&self) -> bool {
        self.mask_chip_key
    }
    /// The key that signed the report.
    pub fn signing_key(&self) -> SigningKey {
        self.signing_key
    }
    /// Guest-supplied data (64 bytes).
    pub fn report_data(&self) -> &[u8; 64] {
        self.array(0x50)
    }
    /// The launch measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        self.array(0x90)
    }
    /// Data the host supplied at launch.
    pub fn host_data(&self) -> &[u8; 32] {
        self.array(0xC0)
    }
    /// SHA-384 of the ID key that signed the ID block, or zero.
    pub fn id_key_digest(&self) -> &[u8; 48] {
        self.array(0xE0)
    }
    /// SHA-384 of the author key that certified the ID key, or zero.
    pub fn author_key_digest(&self) -> &[u8; 48] {
        self.array(0x110)
    }
    /// The guest's report ID.
    pub fn report_id(&self) -> &[u8; 32] {
        self.array(0x140)
    }
    /// The report ID of the guest's migration agent.
    pub fn report_id_ma(&self) -> &[u8; 32] {
        self.array(0x160)
    }
    /// The TCB the VEK was derived from.
    pub fn reported_tcb(&self) -> TcbVersion {
        self.reported_tcb
    }
    /// CPUID family/model/stepping (version 3+).
    pub fn cpuid(&self) -> Option<Cpuid> {
        self.cpuid
    }
    /// The product, if known from CPUID or supplied by [`Self::with_product`].
    pub fn product(&self) -> Option<Product> {
        self.product
    }
    /// The chip identifier (zero when masked).
    pub fn chip_id(&self) -> &[u8; 64] {
        self.array(0x1A0)
    }
    /// The committed TCB.
    pub fn committed_tcb(&self) -> TcbVersion {
        self.committed_tcb
    }
    /// The running firmware version.
    pub fn current_firmware(&self) -> FirmwareVersion {
        self.current_fw
    }
    /// The committed firmware version.
    pub fn committed_firmware(&self) -> FirmwareVersion {
        self.committed_fw
    }
    /// The TCB at the time the guest was launched or imported.
    pub fn launch_tcb(&self) -> TcbVersion {
        self.launch_tcb
    }
    /// Mitigations applied at launch (version 5).
    pub fn launch_mit_vector(&self) -> Option<u64> {
        self.launch_mit_vector
    }
    /// Mitigations applied now (version 5).
    pub fn current_mit_vector(&self) -> Option<u64> {
        self.current_mit_vector
    }

    fn array<const N: usize>(&self, off: usize) -> &[u8; N] {
        // The offsets are constants inside REPORT_LEN; the conversion cannot fail.
        match <&[u8; N]>::try_from(&self.bytes[off..off + N]) {
            Ok(a) => a,
            Err(_) => unreachable!("fixed offset inside the report"),
        }
    }
}

/// Parses `data` as a report with and without each product, checking that accessors
/// never panic: the body of the `report` fuzz target.
pub fn fuzz_report(data: &[u8]) {
    let parsed = [
        AttestationReport::parse(data),
        AttestationReport::parse_for_product(data, Product::Milan),
        AttestationReport::parse_for_product(data, Product::Turin),
    ];
    for r in parsed.into_iter().flatten() {
        let _ = r.signature_fixed();
        let _ = (r.reported_tcb().raw(), r.current_firmware().to_string());
        let _ = crate::view::report_json(&r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> [u8; REPORT_LEN] {
        let mut b = [0u8; REPORT_LEN];
        b[0..4].copy_from_slice(&version.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&0x30000u64.to_le_bytes());
        b[0x34] = 1;
        if version >= 3 {
            b[0x188] = 0x19;
            b[0x189] = 0x01;
        }
        b
    }

    #[test]
    fn minimal_versions_parse() {
        for v in [2, 3, 5] {
            let r = AttestationReport::parse(&blank(v)).unwrap();
            assert_eq!(r.version().number(), v);
        }
        // Version 4 is read with version 3's layout: CPUID, no mitigation vectors.
        let v4 = AttestationReport::parse(&blank(4)).unwrap();
        assert_eq!(v4.version(), ReportVersion::V4);
        assert!(v4.cpuid().is_some() && v4.launch_mit_vector().is_none());
        let mut b = blank(4);
        b[0x1F8] = 1; // a v5 field is reserved in v4
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::Reserved { .. })
        ));
        for v in [0, 1, 6, 0xffff_ffff] {
            assert_eq!(
                AttestationReport::parse(&blank(v)).unwrap_err(),
                ReportError::UnsupportedVersion(v)
            );
        }
    }

    #[test]
    fn reserved_fields_are_checked() {
        for (v, off) in [
            (2, 0x18A),
            (3, 0x18B),
            (2, 0x1F8),
            (5, 0x208),
            (3, 0x4C),
            (3, 0x400),
            (3, 0x1EB),
        ] {
            let mut b = blank(v);
            b[off] = 1;
            let e = AttestationReport::parse(&b).unwrap_err();
            assert!(
                matches!(e, ReportError::Reserved { .. }),
                "offset {off:#x}: {e}"
            );
        }
        let mut b = blank(3);
        b[0x0F] = 0x80; // policy bit 63
        assert!(matches!(
            AttestationReport::parse(&b),
            Err(ReportError::ReservedBits {
                field: "POLICY",
                ..
            })
        ));
    }

    #[test]
    fn turin_chip_id_is_eight_bytes() {
        let mut b = blank(3);
        b[0x188] = 0x1A; // Turin: family 0x1A, model 0x02
        b[0x189] = 0x02;
        b[0x1A0..0x1A8].copy_from_slice(&[7; 8]);
        let r = AttestationReport::parse(&b).unwrap();
        assert_eq!(r.product(), Some(Product::Turin));
        for off in [0x1A8, 0x1C0, 0x1DF] {
            let mut bad = b;
            bad[off] = 1;
            assert!(
                matches!(
                    AttestationReport::parse(&bad),
                    Err(ReportError::Reserved { offset: 0x1A8, .. })
                ),
                "{off:#x}"
            );
        }
        // On Milan all 64 bytes are the chip ID.
        let mut milan = blank(3);
        milan[0x1DF] = 1;
        assert!(AttestationReport::parse(&milan).is_ok());
    }

    #[test]
    fn signature_algo_is_kept_as_read() {
        assert_eq!(
            AttestationReport::parse(&blank(3))
                .unwrap()
                .signature_algo(),
            1
        );
        let mut unsigned = blank(3);
        unsigned[0x48] = 7 << 2; // SIGNING_KEY = none
        unsigned[0x34] = 9;
        assert_eq!(
            AttestationReport::parse(&unsigned)
                .unwrap()
                .signature_algo(),
            9
        );
    }

    #[test]
    fn v5_mitigation_vectors() {
        let mut b = blank(5);
        b[0x1F8] = 3;
        b[0x200] = 7;
        let r = AttestationReport::parse(&b).unwrap();
        assert_eq!(r.launch_mit_vector(), Some(3));
        assert_eq!(r.current_mit_vector(), Some(7));
        // In a v3 report the same bytes are reserved.
        b[0] = 3;
        assert!(AttestationReport::parse(&b).is_err());
    }

    #[test]
    fn truncated_and_product_mismatch() {
        let b = blank(3);
        for n in [0, 1, 0x2A0, REPORT_LEN - 1] {
            assert_eq!(
                AttestationReport::parse(&b[..n]).unwrap_err(),
                ReportError::Length { got: n }
            );
        }
        assert!(matches!(
            AttestationReport::parse_for_product(&b, Product::Genoa),
            Err(ReportError::ProductMismatch { .. })
        ));
        let v2 = AttestationReport::parse(&blank(2)).unwrap();
        assert_eq!(v2.product(), None);
        assert_eq!(
            v2.with_product(Product::Genoa).unwrap().product(),
            Some(Product::Genoa)
        );
        assert!(v2.with_product(Product::Turin).is_err());
    }
}
