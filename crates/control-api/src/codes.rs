//! The stable refusal codes of the control plane (`error.code`), beside the shared
//! ones (`unauthorized`, `forbidden`, `not_found`, `bad_request`).

/// A feature confidential VMs do not support; `detail.feature` names it and
/// `detail.target` the request field.
pub const UNSUPPORTED_FEATURE: &str = "unsupported_feature";
/// The size is not in the catalog.
pub const UNKNOWN_SIZE: &str = "unknown_size";
/// The image is not in the catalog.
pub const UNKNOWN_IMAGE: &str = "unknown_image";
/// The image is in the catalog but no artifact was imported or built for it.
pub const IMAGE_NOT_AVAILABLE: &str = "image_not_available";
/// The region is not one the platform knows.
pub const UNKNOWN_REGION: &str = "unknown_region";
/// The region has no host with SEV-SNP enabled.
pub const NO_SNP_CAPACITY: &str = "region_without_snp";
/// Every SNP host of the region is full (HTTP 409, as Azure's `AllocationFailed`).
pub const ALLOCATION_FAILED: &str = "allocation_failed";
/// `securityProfile.securityType` is missing or not `ConfidentialVM`.
pub const SECURITY_TYPE: &str = "security_type_required";
/// `osDisk.securityEncryptionType` is missing.
pub const ENCRYPTION_TYPE_MISSING: &str = "encryption_type_required";
/// `osDisk.securityEncryptionType` is not one an SNP VM takes.
pub const ENCRYPTION_TYPE: &str = "invalid_encryption_type";
/// `uefiSettings.vTpmEnabled` is false: a confidential VM always has its vTPM.
pub const VTPM_REQUIRED: &str = "vtpm_required";
/// Secure Boot off with a confidentially encrypted OS disk.
pub const SECURE_BOOT_REQUIRED: &str = "secure_boot_required";
/// A customer key without full OS-disk encryption.
pub const CUSTOMER_KEY_REQUIRES_DISK_ENCRYPTION: &str = "customer_key_requires_disk_encryption";
/// `encryptionAtHost` with a confidentially encrypted OS disk.
pub const ENCRYPTION_AT_HOST: &str = "encryption_at_host_conflict";
/// The tenant's vCPU quota would be exceeded (HTTP 409).
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
/// A name (VM, tenant, host) that is not well formed.
pub const INVALID_NAME: &str = "invalid_name";
/// A parameter out of range (disk size, host capacity).
pub const INVALID_PARAMETER: &str = "invalid_parameter";
/// A VM of that name exists with another request body.
pub const CONFLICT: &str = "conflict";
/// The VM has no guest console: its host's backend runs no guest (409).
pub const NO_CONSOLE: &str = "no_console";
/// The `Idempotency-Key` was used for another request (422).
pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
/// The request first sent with this `Idempotency-Key` is still running (409).
pub const REQUEST_IN_PROGRESS: &str = "request_in_progress";
/// The image artifact is not a disk a confidential VM boots.
pub const INVALID_ARTIFACT: &str = "invalid_artifact";
/// No host agent serves the control plane: VMs can be created, not started (409).
pub const HOST_AGENT_UNAVAILABLE: &str = "host_agent_unavailable";

/// Why an attested boot stopped (a `failed` VM's `lastFailure.code`).
pub mod boot {
    /// The host cannot run confidential VMs (SEV-SNP disabled, its secure processor
    /// unusable).
    pub const HOST_UNHEALTHY: &str = "host_unhealthy";
    /// The attestation service refused the VM's evidence; the reason names the rules.
    pub const ATTESTATION_DENIED: &str = "attestation_denied";
    /// The key vault refused to release the VMGS key to the VM's token; the reason
    /// names the release policy's condition.
    pub const KEY_RELEASE_DENIED: &str = "key_release_denied";
    /// The released key does not open the VM's VMGS (a VMGS of another VM, say).
    pub const VMGS_UNOPENABLE: &str = "vmgs_unopenable";
    /// The VM's vTPM did not start.
    pub const VTPM_FAILED: &str = "vtpm_failed";
    /// Firmware or shim refuses a boot component under the VM's db/dbx.
    pub const SECURE_BOOT_VIOLATION: &str = "secure_boot_violation";
    /// The OS disk could not be pre-encrypted (its image unreadable, the vault
    /// unreachable); the reason says which.
    pub const PRE_ENCRYPTION_FAILED: &str = "pre_encryption_failed";
    /// The customer key cannot protect a disk (missing, not RSA, not exportable,
    /// without a release policy).
    pub const CUSTOMER_KEY_UNUSABLE: &str = "customer_key_unusable";
    /// The encrypted OS disk did not open: its key was not released, the vTPM
    /// refused to unseal it (another VM's disk, a changed boot chain), or the disk is
    /// missing.
    pub const DISK_LOCKED: &str = "disk_locked";
    /// The host agent could not do its part (a service unreachable, a file missing).
    pub const HOST_AGENT: &str = "host_agent";
}
