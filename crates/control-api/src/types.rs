//! Request and response bodies, in Azure's names (camelCase). Requests refuse unknown
//! members: a misspelt field is an error, not a silently ignored wish.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use api_contract::{ErrorBody, ErrorResponse};

/// `uefiSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UefiSettings {
    /// Secure Boot (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot_enabled: Option<bool>,
    /// The vTPM (always true for a confidential VM; false is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_tpm_enabled: Option<bool>,
}

/// `securityProfile`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityProfile {
    /// `ConfidentialVM` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_type: Option<String>,
    /// UEFI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi_settings: Option<UefiSettings>,
    /// Host-side encryption (refused with `DiskWithVMGuestState`, as Azure does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_at_host: Option<bool>,
}

/// `osDisk.diffDiskSettings` (ephemeral OS disks; refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiffDiskSettings {
    /// `Local`.
    pub option: String,
}

/// The OS disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsDisk {
    /// `VMGuestStateOnly` (only the VMGS is encrypted) or `DiskWithVMGuestState` (the
    /// OS disk is encrypted before first boot too). Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_encryption_type: Option<String>,
    /// A key of the tenant's key vault to encrypt the disk and VMGS with (a
    /// customer-managed key); without it, a platform-managed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<String>,
    /// Ephemeral OS disk settings (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_disk_settings: Option<DiffDiskSettings>,
    /// The disk's size in GiB (default: the image's).
    #[serde(
        default,
        rename = "diskSizeGB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_gb: Option<u32>,
}

/// A data disk (refused when shared or ultra).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataDisk {
    /// Size in GiB.
    #[serde(
        default,
        rename = "diskSizeGB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_gb: Option<u32>,
    /// How many VMs may attach it (above 1: a shared disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shares: Option<u32>,
    /// `Premium_LRS`, `StandardSSD_LRS`, `UltraSSD_LRS`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_account_type: Option<String>,
}

/// `PUT /vms/{name}`: a confidential VM, in the fields `az vm create` users know.
/// The fields after `attestationPolicy` name features a confidential VM does not
/// support; they are accepted so that the refusal can say so by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVmRequest {
    /// The region (default: the platform's default region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The size, `Standard_DC2as_v5`.
    pub vm_size: String,
    /// The image: a catalog id (`debian-12`) or its Azure URN.
    pub image: String,
    /// The security profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_profile: Option<SecurityProfile>,
    /// The OS disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_disk: Option<OsDisk>,
    /// The attestation policy the VM's evidence must meet (the tenant's policy name;
    /// default: the platform's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_policy: Option<String>,
    /// Accelerated networking (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_accelerated_networking: Option<bool>,
    /// A dedicated host group (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_group: Option<String>,
    /// A dedicated host (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A scale set to join (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_scale_set: Option<String>,
    /// Data disks (shared and ultra disks are not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disks: Option<Vec<DataDisk>>,
    /// An Azure Backup policy (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_policy: Option<String>,
    /// Azure Site Recovery replication (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_recovery: Option<bool>,
    /// An Azure Batch pool (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_pool: Option<String>,
}

/// A VM's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Being created (placement, disk pre-encryption).
    Creating,
    /// Created and placed, not running.
    Stopped,
    /// The attested boot is under way.
    Starting,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// A step failed; `lastFailure` says which and why.
    Failed,
    /// Being deleted.
    Deleting,
}

impl VmState {
    /// The state's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Failed => "failed",
            VmState::Deleting => "deleting",
        }
    }

    /// The state named `s`.
    pub fn from_name(s: &str) -> Option<VmState> {
        [
            VmState::Creating,
            VmState::Stopped,
            VmState::Starting,
            VmState::Running,
            VmState::Stopping,
            VmState::Failed,
            VmState::Deleting,
        ]
        .into_iter()
        .find(|v| v.name() == s)
    }
}

/// Why a VM is `failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The step that failed.
    pub step: String,
    /// A stable code.
    pub code: String,
    /// For people.
    pub reason: String,
    /// When (Unix seconds).
    pub at: i64,
}

/// The security settings a VM was created with, every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSecurity {
    /// `ConfidentialVM`.
    pub security_type: String,
    /// Secure Boot.
    pub secure_boot_enabled: bool,
    /// The vTPM (always true).
    pub v_tpm_enabled: bool,
    /// `VMGuestStateOnly` or `DiskWithVMGuestState`.
    pub security_encryption_type: String,
    /// `platform` or `customer`: who manages the key of the VMGS (and disk).
    pub key_management: String,
    /// The customer key's name, for `customer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key: Option<String>,
    /// The Secure Boot template (`linux`, `microsoft`) of its UEFI variables.
    pub secure_boot_template: String,
    /// The attestation policy its evidence must meet.
    pub attestation_policy: String,
}

/// A VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    /// Its name (unique in the tenant).
    pub name: String,
    /// Its id (unique on the platform; the VM's identity in evidence and keys).
    pub id: String,
    /// Its region.
    pub location: String,
    /// Its size.
    pub vm_size: String,
    /// Its image's catalog id.
    pub image: String,
    /// The OS disk size in GiB.
    #[serde(rename = "osDiskSizeGB")]
    pub os_disk_size_gb: u32,
    /// Its state.
    pub state: VmState,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// The host it is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its security settings.
    pub security: VmSecurity,
    /// Its price.
    pub price: PriceQuote,
    /// Created (Unix seconds).
    pub created: i64,
}

/// `GET /vms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// The tenant's VMs, by name.
    pub value: Vec<Vm>,
}

/// One step of a VM's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmEvent {
    /// Order within the VM.
    pub seq: i64,
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// The step (`validate`, `place`, `attest`, ...).
    pub step: String,
    /// `ok`, `failed` or `not_enforced` (a step of the attested boot this release
    /// does not perform yet).
    pub outcome: String,
    /// How long it took.
    pub duration_ms: i64,
    /// What happened, for people.
    pub detail: String,
}

/// `POST /vms/{name}/attest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestVmRequest {
    /// A nonce the VM's evidence binds (hex, 1 to 64 bytes); a fresh random one when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The answer to `POST /vms/{name}/attest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestVmResponse {
    /// The attestation service's token (a JWT; its `x-ms-runtime.nonce` is `nonce`).
    pub token: String,
    /// The nonce the evidence binds (hex).
    pub nonce: String,
}

/// `GET /vms/{name}/console`: the end of the guest's serial console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmConsole {
    /// The console's last bytes (at most 64 KiB, lossy UTF-8).
    pub text: String,
    /// Whether earlier output was left out.
    pub truncated: bool,
    /// Where `text` starts in the console's whole output, bytes (a follower asks
    /// again and prints what lies past what it printed).
    pub offset: u64,
    /// How far the boot went, as the console shows it (`firmware`, `boot loader`,
    /// `kernel`, `systemd`, `guest agent ready`, `kernel panic`, `refused by the
    /// firmware`, ...).
    pub stage: String,
}

/// `GET /vms/{name}/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmEvents {
    /// In order.
    pub value: Vec<VmEvent>,
}

/// A size, with Azure's published figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Size {
    /// `Standard_DC2as_v5`.
    pub name: String,
    /// `DCasv5`, ...
    pub series: String,
    /// vCPUs.
    pub v_cpus: u32,
    /// Memory in GiB.
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u32,
    /// Temporary disk in GiB (`d` sizes).
    #[serde(
        default,
        rename = "tempDiskGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub temp_disk_gib: Option<u32>,
    /// Most data disks.
    pub max_data_disks: u32,
    /// Most NICs.
    pub max_nics: u32,
    /// Network bandwidth, Mbps.
    pub network_mbps: u32,
    /// Takes a whole host.
    pub isolated: bool,
    /// `SNP` (Azure's `ConfidentialComputingType` capability).
    pub confidential_computing_type: String,
}

/// `GET /sizes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SizeList {
    /// Every size.
    pub value: Vec<Size>,
}

/// A region and its confidential capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    /// `eastus`.
    pub name: String,
    /// Whether a host with SEV-SNP enabled is registered there.
    pub snp_available: bool,
    /// Hosts registered there (any).
    pub hosts: u32,
    /// Free vCPUs on its SNP hosts.
    pub free_v_cpus: u64,
}

/// `GET /regions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionList {
    /// Every region.
    pub value: Vec<Region>,
}

/// An imported disk artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// SHA-256 of the disk image, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The boot loader on its ESP (`\EFI\BOOT\BOOTX64.EFI`), SHA-256 of its
    /// Authenticode digest, hex.
    pub boot_loader_digest: String,
    /// Imported (Unix seconds).
    pub imported: i64,
}

/// An OS image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `debian-12`.
    pub id: String,
    /// A human name.
    pub title: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// Its VMs' Secure Boot template.
    pub secure_boot_template: String,
    /// The Azure Marketplace URN of the same OS's confidential image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_urn: Option<String>,
    /// Whether the platform builds it (`cvm image build`).
    pub buildable: bool,
    /// Its disk artifact, once imported or built; VMs need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
}

/// `GET /images`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    /// Every catalog entry.
    pub value: Vec<Image>,
}

/// `PUT /images/{id}/artifact`: a disk image file on the control plane's machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    /// The raw GPT disk image's path.
    pub path: String,
}

/// `POST /prices`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceRequest {
    /// The size.
    pub vm_size: String,
    /// The region (default: the platform's default region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The image (its OS decides the licence; default Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `VMGuestStateOnly` (default) or `DiskWithVMGuestState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_encryption_type: Option<String>,
    /// The OS disk's size in GiB (default 30).
    #[serde(
        default,
        rename = "osDiskSizeGB",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_disk_size_gb: Option<u32>,
}

/// One line of a quote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceLine {
    /// What is charged.
    pub item: String,
    /// The amount.
    pub amount: f64,
    /// Per what.
    pub unit: String,
    /// When the table's figure was captured.
    pub as_of: String,
    /// Where it comes from (`estimate: ...` for ours).
    pub source: String,
}

/// The price of one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceQuote {
    /// The size.
    pub vm_size: String,
    /// The region.
    pub location: String,
    /// `linux` or `windows`.
    pub os_type: String,
    /// The currency.
    pub currency: String,
    /// Compute per hour.
    pub compute_per_hour: f64,
    /// Compute per month.
    pub compute_per_month: f64,
    /// The VMGS disk per month.
    pub vmgs_per_month: f64,
    /// The encrypted OS disk's surcharge per month.
    pub encrypted_os_disk_per_month: f64,
    /// Everything per month.
    pub total_per_month: f64,
    /// Hours billed in a month.
    pub hours_per_month: u32,
    /// How each figure was reached.
    pub lines: Vec<PriceLine>,
}

/// `PUT /hosts/{name}`: a host and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterHostRequest {
    /// Its region.
    pub region: String,
    /// vCPUs it offers to VMs.
    pub v_cpus: u32,
    /// Memory it offers to VMs, GiB.
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u32,
    /// Most VMs at once (Azure's hosts stop at 32).
    pub max_vms: u32,
    /// Whether SEV-SNP is enabled in its firmware.
    pub snp_enabled: bool,
    /// `emulated` (the emulated secure processor; the boot chain runs without a
    /// guest), `qemu` (the guest runs under QEMU after the attested steps) or
    /// `hardware`.
    pub backend: String,
}

/// `PUT /hosts/{name}/agent`: where the host's agent (`cvm host run`) listens and the
/// credential the control plane calls it with. Registering again replaces both (an
/// agent that restarted); the host's VMs that were running are booted again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterAgentRequest {
    /// The agent's base URL (`http://` on loopback, else `https://`).
    pub url: String,
    /// The bearer credential the agent accepts (it made it at its start).
    pub credential: String,
}

impl std::fmt::Debug for RegisterAgentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterAgentRequest")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// Its name.
    pub name: String,
    /// Its region.
    pub region: String,
    /// vCPUs offered.
    pub v_cpus: u32,
    /// Memory offered, GiB.
    #[serde(rename = "memoryGiB")]
    pub memory_gib: u32,
    /// Most VMs.
    pub max_vms: u32,
    /// SEV-SNP enabled.
    pub snp_enabled: bool,
    /// `emulated` or `hardware`.
    pub backend: String,
    /// vCPUs held by placed VMs.
    pub used_v_cpus: u32,
    /// Memory held by placed VMs, GiB.
    #[serde(rename = "usedMemoryGiB")]
    pub used_memory_gib: u32,
    /// VMs placed.
    pub vms: u32,
    /// Bumped by every placement and release.
    pub generation: i64,
    /// Where its agent (`cvm host run`) listens, once one registered; absent for the
    /// hosts `cvm up` runs in its own process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// `GET /hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    /// Every host.
    pub value: Vec<Host>,
}

/// `PUT /tenants/{name}`: a tenant and its quota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// The most vCPUs the tenant's VMs may hold at once (Azure's per-family cores
    /// quota); default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_v_cpus: Option<u32>,
}

/// `POST /credentials`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentialRequest {
    /// `administrator`, `contributor` or `reader`.
    pub role: String,
}

/// A new credential: shown once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
pub struct NewCredential {
    /// The tenant.
    pub tenant: String,
    /// The role.
    pub role: String,
    /// Its id (names it in events; reveals nothing of it).
    pub id: String,
    /// The secret to present as `Authorization: Bearer ...`.
    pub credential: String,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .field("id", &self.id)
            .field("credential", &"<redacted>")
            .finish()
    }
}
