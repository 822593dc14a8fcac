//! What the control plane asks of a host agent: run the attested boot of a VM placed
//! on its host, stop it, attest it again, forget it. The control plane persists the
//! VM's state and every step the agent reports; the agent owns the VM's processes and
//! files on its host.

use std::path::PathBuf;

/// Everything a host agent needs to boot one VM.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// The VM's platform-unique id (32 hex digits).
    pub vm_id: String,
    /// The host it is placed on.
    pub host: String,
    /// Its vCPUs (measured into the launch digest: one VMSA each).
    pub vcpus: u32,
    /// Whether its firmware enforces Secure Boot.
    pub secure_boot: bool,
    /// Its Secure Boot template (`linux`, `microsoft`): the db/dbx its VMGS starts with.
    pub secure_boot_template: String,
    /// Its OS image artifact (a raw GPT disk).
    pub image: PathBuf,
    /// `VMGuestStateOnly` or `DiskWithVMGuestState`.
    pub encryption: String,
    /// The customer-managed key (a key of the platform vault) that protects the OS
    /// disk's key; `None`: a platform-managed key.
    pub customer_key: Option<String>,
    /// The attestation policy (provider) its evidence must meet.
    pub attestation_policy: String,
    /// Whether an earlier start created its VMGS (a missing VMGS is then refused, not
    /// created again).
    pub vmgs_created: bool,
    /// For an encrypted OS disk: the volume keys' pin the pre-encryption recorded
    /// ([`PreEncrypted::pin`]); `None` while the disk is not pre-encrypted.
    pub disk_pin: Option<String>,
    /// Whether an earlier start bound the encrypted OS disk to the VM's vTPM (it then
    /// opens through the vTPM only).
    pub disk_bound: bool,
}

/// What a pre-encryption made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreEncrypted {
    /// What it did, for people.
    pub detail: String,
    /// A pin of the disk's volume keys (SHA-256 of each encrypted partition's LUKS2
    /// digest and salt, hex, comma-separated): a start opens only a disk whose
    /// volume keys match it, so a disk the host made or swapped in does not open.
    pub pin: String,
}

/// One step's outcome, as the VM's events record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// The step (`launch`, `attest`, `vmgs_key_release`, ...).
    pub step: String,
    /// `ok`, `failed` or `not_enforced`.
    pub outcome: String,
    /// How long it took.
    pub duration_ms: i64,
    /// What happened, for people.
    pub detail: String,
}

/// Why a boot stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct BootFailure {
    /// The step that failed.
    pub step: String,
    /// A stable code (`host_unhealthy`, `attestation_denied`, `key_release_denied`,
    /// `vmgs_unopenable`, `vtpm_failed`, `secure_boot_violation`, `host_agent`).
    pub code: &'static str,
    /// For people: the failing rule, with expected and actual values where the
    /// refusing service gave them.
    pub reason: String,
}

/// The disk pre-encryption service: it encrypts a VM's OS disk from its image onto
/// the VM's host before the first boot (in-process for `cvm up`).
pub trait PreEncryption: Send + Sync {
    /// Whether `key` can protect an OS disk: a key of the platform vault that may be
    /// released (exportable, with a release policy) and wraps keys (RSA). `Err` says
    /// why not, for people.
    fn check_customer_key(&self, key: &str) -> Result<(), String>;
    /// Encrypts the OS disk of `spec`'s VM, its key released later only to that VM's
    /// attested token; nothing when that is done already, from the beginning when an
    /// earlier run was interrupted.
    fn pre_encrypt(&self, spec: &BootSpec) -> Result<PreEncrypted, BootFailure>;
}

/// A host agent (in-process for `cvm up`'s emulated hosts).
pub trait HostAgent: Send + Sync {
    /// Runs the attested boot of `spec`, reporting each step as it ends; on failure
    /// everything the boot started on the host is stopped again.
    fn start(&self, spec: &BootSpec, report: &mut dyn FnMut(StepReport))
    -> Result<(), BootFailure>;
    /// Stops the VM's processes (a VM that is not running is already stopped).
    fn stop(&self, host: &str, vm_id: &str) -> Result<(), BootFailure>;
    /// Whether the VM's processes run on its host.
    fn is_running(&self, host: &str, vm_id: &str) -> bool;
    /// A fresh attestation token for the running VM, its evidence binding `nonce`.
    fn attest(&self, spec: &BootSpec, nonce: &[u8]) -> Result<String, BootFailure>;
    /// Removes the VM's files from its host (after it is deleted).
    fn forget(&self, host: &str, vm_id: &str) -> Result<(), BootFailure>;
}
