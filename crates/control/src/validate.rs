//! What a create request may ask for: every check that needs no database, in one pass
//! that reports every refusal (not only the first), each with a stable code, the
//! request field it concerns (`target`, as ARM's `InvalidParameter` names it) and a
//! message in the spirit of Azure's.
//!
//! The rules (research note `control-plane.md` §1.4, §1.6, §1.8):
//! - a feature confidential VMs do not support is refused by name
//!   ([`codes::UNSUPPORTED_FEATURE`]);
//! - `securityType` must be `ConfidentialVM`; `vTpmEnabled` cannot be false;
//!   `securityEncryptionType` is required, `VMGuestStateOnly` or
//!   `DiskWithVMGuestState` (`NonPersistedTPM` is a TDX-only type);
//! - `DiskWithVMGuestState` needs Secure Boot and refuses `encryptionAtHost`;
//! - a customer key needs `DiskWithVMGuestState` (Azure's FAQ: CMK requires full
//!   OS-disk encryption);
//! - the size and image must be in the catalog.

use catalog::{Image, Size};
use control_api::CreateVmRequest;
use control_api::codes;
use serde::Serialize;

/// One refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// A stable code.
    pub code: &'static str,
    /// The request field (`vmSize`, `osDisk.securityEncryptionType`).
    pub target: &'static str,
    /// For people.
    pub message: String,
    /// For `unsupported_feature`: the feature's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<&'static str>,
}

impl Refusal {
    fn new(code: &'static str, target: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            target,
            message: message.into(),
            feature: None,
        }
    }
}

/// How the OS disk is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Only the VMGS is encrypted.
    GuestStateOnly,
    /// The OS disk is encrypted before first boot, and the VMGS.
    DiskWithGuestState,
}

impl Encryption {
    /// Azure's name.
    pub fn name(self) -> &'static str {
        match self {
            Encryption::GuestStateOnly => "VMGuestStateOnly",
            Encryption::DiskWithGuestState => "DiskWithVMGuestState",
        }
    }

    /// The type named `s` (Azure's names, case-exact as ARM takes them).
    pub fn from_name(s: &str) -> Option<Encryption> {
        match s {
            "VMGuestStateOnly" => Some(Encryption::GuestStateOnly),
            "DiskWithVMGuestState" => Some(Encryption::DiskWithGuestState),
            _ => None,
        }
    }
}

/// Who manages the key of the VMGS (and the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyManagement {
    /// A platform-managed key.
    Platform,
    /// The tenant's key of this name in its key vault.
    Customer(String),
}

/// A request every check without a database accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// The region asked for (the caller checks it against its regions).
    pub region: String,
    /// The size.
    pub size: &'static Size,
    /// The image's catalog entry.
    pub image: &'static Image,
    /// Secure Boot.
    pub secure_boot: bool,
    /// OS disk encryption.
    pub encryption: Encryption,
    /// Key management.
    pub key: KeyManagement,
    /// The OS disk in GiB.
    pub os_disk_gib: u32,
    /// The attestation policy.
    pub attestation_policy: String,
}

/// The attestation policy a VM meets unless its request names another.
pub const DEFAULT_ATTESTATION_POLICY: &str = "default";

/// The OS disk size when the request gives none, GiB (Azure's Linux images' size).
pub const DEFAULT_OS_DISK_GIB: u32 = 30;

/// The largest OS disk, GiB (Azure's managed-disk limit for an OS disk).
pub const MAX_OS_DISK_GIB: u32 = 4095;

/// A key name as Key Vault allows it: 1-127 of `[0-9a-zA-Z-]`.
fn valid_key_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The features a confidential VM does not support that `req` asks for.
fn unsupported(req: &CreateVmRequest) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut refuse = |asked: bool, target: &'static str, feature: &'static str| {
        if asked {
            out.push(Refusal {
                code: codes::UNSUPPORTED_FEATURE,
                target,
                message: format!(
                    "Confidential VMs do not support {feature} (parameter '{target}')."
                ),
                feature: Some(feature),
            });
        }
    };
    refuse(req.batch_pool.is_some(), "batchPool", "Azure Batch pools");
    refuse(req.backup_policy.is_some(), "backupPolicy", "Azure Backup");
    refuse(
        req.site_recovery == Some(true),
        "siteRecovery",
        "Azure Site Recovery",
    );
    refuse(
        req.host_group.is_some() || req.host.is_some(),
        if req.host_group.is_some() {
            "hostGroup"
        } else {
            "host"
        },
        "dedicated hosts",
    );
    refuse(
        req.virtual_machine_scale_set.is_some(),
        "virtualMachineScaleSet",
        "virtual machine scale sets",
    );
    let gallery = req.image.to_ascii_lowercase().contains("/galleries/");
    refuse(gallery, "image", "Azure Compute Gallery images");
    let ephemeral = req
        .os_disk
        .as_ref()
        .is_some_and(|d| d.diff_disk_settings.is_some());
    refuse(ephemeral, "osDisk.diffDiskSettings", "ephemeral OS disks");
    let disks = req.data_disks.as_deref().unwrap_or_default();
    refuse(
        disks.iter().any(|d| d.max_shares.is_some_and(|n| n > 1)),
        "dataDisks.maxShares",
        "shared disks",
    );
    refuse(
        disks.iter().any(|d| {
            d.storage_account_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("UltraSSD_LRS"))
        }),
        "dataDisks.storageAccountType",
        "ultra disks",
    );
    refuse(
        req.enable_accelerated_networking == Some(true),
        "enableAcceleratedNetworking",
        "accelerated networking",
    );
    out
}

/// Checks `req` for the VM named `name`; `default_region` is used when it names none.
pub fn validate(req: &CreateVmRequest, default_region: &str) -> Result<VmSpec, Vec<Refusal>> {
    let mut refusals = unsupported(req);
    if let Some(disks) = req.data_disks.as_deref() {
        let unsupported_kind = refusals.iter().any(|r| r.target.starts_with("dataDisks"));
        if !disks.is_empty() && !unsupported_kind {
            refusals.push(Refusal::new(
                codes::INVALID_PARAMETER,
                "dataDisks",
                "data disks are not offered by this release; create the VM without them",
            ));
        }
    }
    let size = catalog::sizes::find(&req.vm_size);
    if size.is_none() {
        refusals.push(Refusal::new(
            codes::UNKNOWN_SIZE,
            "vmSize",
            format!(
                "The VM size '{}' is not supported for creation of VMs with 'ConfidentialVM' security type; the confidential sizes are the DCasv5, DCadsv5, ECasv5 and ECadsv5 series (`cvm size list`).",
                req.vm_size
            ),
        ));
    }
    let image = catalog::images::find(&req.image);
    let gallery = refusals.iter().any(|r| r.target == "image");
    if image.is_none() && !gallery {
        let ids: Vec<_> = catalog::images::ALL.iter().map(|i| i.id).collect();
        refusals.push(Refusal::new(
            codes::UNKNOWN_IMAGE,
            "image",
            format!(
                "The image '{}' is not in the catalog; the images are {} (`cvm image list`).",
                req.image,
                ids.join(", ")
            ),
        ));
    }
    let region = req
        .location
        .clone()
        .unwrap_or_else(|| default_region.to_string());
    if !catalog::regions::valid_name(&region) {
        refusals.push(Refusal::new(
            codes::UNKNOWN_REGION,
            "location",
            format!("'{region}' is not a region name (`cvm region list`)."),
        ));
    }
    let profile = req.security_profile.clone().unwrap_or_default();
    match profile.security_type.as_deref() {
        Some("ConfidentialVM") => {}
        Some(other) => refusals.push(Refusal::new(
            codes::SECURITY_TYPE,
            "securityProfile.securityType",
            format!("The security type '{other}' is not supported here; every VM of this platform is 'ConfidentialVM'."),
        )),
        None => refusals.push(Refusal::new(
            codes::SECURITY_TYPE,
            "securityProfile.securityType",
            "Required parameter 'securityProfile.securityType' is missing (null); set it to 'ConfidentialVM'.",
        )),
    }
    let uefi = profile.uefi_settings.clone().unwrap_or_default();
    if uefi.v_tpm_enabled == Some(false) {
        refusals.push(Refusal::new(
            codes::VTPM_REQUIRED,
            "securityProfile.uefiSettings.vTpmEnabled",
            "vTpmEnabled should be true: a confidential VM always has its own vTPM.",
        ));
    }
    let secure_boot = uefi.secure_boot_enabled.unwrap_or(true);
    let disk = req.os_disk.clone().unwrap_or_default();
    let encryption = match disk.security_encryption_type.as_deref() {
        None => {
            refusals.push(Refusal::new(
                codes::ENCRYPTION_TYPE_MISSING,
                "osDisk.securityEncryptionType",
                "Required parameter for Confidential VMs 'osDisk.securityEncryptionType' is missing (null); set 'VMGuestStateOnly' or 'DiskWithVMGuestState'.",
            ));
            None
        }
        Some(t) => match Encryption::from_name(t) {
            Some(e) => Some(e),
            None => {
                let why = if t == "NonPersistedTPM" {
                    "'NonPersistedTPM' is for Intel TDX sizes; this platform's sizes are AMD SEV-SNP"
                } else {
                    "it is neither 'VMGuestStateOnly' nor 'DiskWithVMGuestState' (case-exact)"
                };
                refusals.push(Refusal::new(
                    codes::ENCRYPTION_TYPE,
                    "osDisk.securityEncryptionType",
                    format!("The security encryption type '{t}' is not supported: {why}."),
                ));
                None
            }
        },
    };
    if encryption == Some(Encryption::DiskWithGuestState) {
        if !secure_boot {
            refusals.push(Refusal::new(
                codes::SECURE_BOOT_REQUIRED,
                "securityProfile.uefiSettings.secureBootEnabled",
                "secureBootEnabled should be true when securityEncryptionType is set to DiskWithVMGuestState.",
            ));
        }
        if profile.encryption_at_host == Some(true) {
            refusals.push(Refusal::new(
                codes::ENCRYPTION_AT_HOST,
                "securityProfile.encryptionAtHost",
                "EncryptionAtHost cannot be set to 'true' when securityEncryptionType is set to DiskWithVMGuestState.",
            ));
        }
    }
    let key = match disk.customer_key.as_deref() {
        None => KeyManagement::Platform,
        Some(k) => {
            if !valid_key_name(k) {
                refusals.push(Refusal::new(
                    codes::INVALID_PARAMETER,
                    "osDisk.customerKey",
                    format!("'{k}' is not a key name (1-127 letters, digits and '-')."),
                ));
            }
            if encryption == Some(Encryption::GuestStateOnly) {
                refusals.push(Refusal::new(
                    codes::CUSTOMER_KEY_REQUIRES_DISK_ENCRYPTION,
                    "osDisk.customerKey",
                    "A customer-managed key requires full OS disk encryption: set securityEncryptionType to 'DiskWithVMGuestState'.",
                ));
            }
            KeyManagement::Customer(k.to_string())
        }
    };
    let os_disk_gib = disk.disk_size_gb.unwrap_or(DEFAULT_OS_DISK_GIB);
    if !(1..=MAX_OS_DISK_GIB).contains(&os_disk_gib) {
        refusals.push(Refusal::new(
            codes::INVALID_PARAMETER,
            "osDisk.diskSizeGB",
            format!("the OS disk size must be 1 to {MAX_OS_DISK_GIB} GiB"),
        ));
    }
    let attestation_policy = req
        .attestation_policy
        .clone()
        .unwrap_or_else(|| DEFAULT_ATTESTATION_POLICY.to_string());
    if !valid_key_name(&attestation_policy) {
        refusals.push(Refusal::new(
            codes::INVALID_PARAMETER,
            "attestationPolicy",
            "an attestation policy name is 1-127 letters, digits and '-'",
        ));
    }
    match (size, image, encryption, refusals.is_empty()) {
        (Some(size), Some(image), Some(encryption), true) => Ok(VmSpec {
            region,
            size,
            image,
            secure_boot,
            encryption,
            key,
            os_disk_gib,
            attestation_policy,
        }),
        _ => Err(refusals),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::{DataDisk, DiffDiskSettings, OsDisk, SecurityProfile, UefiSettings};

    fn good() -> CreateVmRequest {
        CreateVmRequest {
            vm_size: "Standard_DC2as_v5".into(),
            image: "debian-12".into(),
            security_profile: Some(SecurityProfile {
                security_type: Some("ConfidentialVM".into()),
                ..Default::default()
            }),
            os_disk: Some(OsDisk {
                security_encryption_type: Some("DiskWithVMGuestState".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn codes_of(req: &CreateVmRequest) -> Vec<(&'static str, &'static str)> {
        validate(req, "eastus")
            .unwrap_err()
            .into_iter()
            .map(|r| (r.code, r.target))
            .collect()
    }

    #[test]
    fn a_good_request_gets_every_default() {
        let spec = validate(&good(), "eastus").unwrap();
        assert_eq!(spec.region, "eastus");
        assert_eq!(spec.size.vcpus, 2);
        assert!(spec.secure_boot);
        assert_eq!(spec.encryption, Encryption::DiskWithGuestState);
        assert_eq!(spec.key, KeyManagement::Platform);
        assert_eq!(spec.os_disk_gib, 30);
        assert_eq!(spec.attestation_policy, "default");
    }

    #[test]
    fn every_unsupported_feature_is_refused_by_name() {
        type Set = Box<dyn Fn(&mut CreateVmRequest)>;
        let cases: Vec<(&str, Set)> = vec![
            (
                "Azure Batch pools",
                Box::new(|r| r.batch_pool = Some("p".into())),
            ),
            (
                "Azure Backup",
                Box::new(|r| r.backup_policy = Some("daily".into())),
            ),
            (
                "Azure Site Recovery",
                Box::new(|r| r.site_recovery = Some(true)),
            ),
            (
                "dedicated hosts",
                Box::new(|r| r.host_group = Some("g".into())),
            ),
            (
                "virtual machine scale sets",
                Box::new(|r| r.virtual_machine_scale_set = Some("s".into())),
            ),
            (
                "Azure Compute Gallery images",
                Box::new(|r| {
                    r.image = "/subscriptions/x/resourceGroups/g/providers/Microsoft.Compute/galleries/gal/images/i".into()
                }),
            ),
            (
                "ephemeral OS disks",
                Box::new(|r| {
                    r.os_disk.as_mut().unwrap().diff_disk_settings = Some(DiffDiskSettings {
                        option: "Local".into(),
                    })
                }),
            ),
            (
                "shared disks",
                Box::new(|r| {
                    r.data_disks = Some(vec![DataDisk {
                        max_shares: Some(2),
                        ..Default::default()
                    }])
                }),
            ),
            (
                "ultra disks",
                Box::new(|r| {
                    r.data_disks = Some(vec![DataDisk {
                        storage_account_type: Some("UltraSSD_LRS".into()),
                        ..Default::default()
                    }])
                }),
            ),
            (
                "accelerated networking",
                Box::new(|r| r.enable_accelerated_networking = Some(true)),
            ),
        ];
        for (feature, set) in cases {
            let mut r = good();
            set(&mut r);
            let refusals = validate(&r, "eastus").unwrap_err();
            assert_eq!(refusals.len(), 1, "{feature}: {refusals:?}");
            assert_eq!(refusals[0].code, "unsupported_feature");
            assert_eq!(refusals[0].feature, Some(feature));
            assert!(refusals[0].message.contains(feature));
        }
        // Asking for the default of a feature is not asking for it.
        let mut r = good();
        r.enable_accelerated_networking = Some(false);
        r.site_recovery = Some(false);
        assert!(validate(&r, "eastus").is_ok());
    }

    #[test]
    fn azure_s_security_rules_hold_and_all_refusals_are_reported() {
        let mut r = good();
        r.security_profile = None;
        assert_eq!(
            codes_of(&r),
            [("security_type_required", "securityProfile.securityType")]
        );
        let mut r = good();
        r.security_profile.as_mut().unwrap().security_type = Some("TrustedLaunch".into());
        assert_eq!(codes_of(&r)[0].0, "security_type_required");
        let mut r = good();
        r.os_disk = None;
        assert_eq!(
            codes_of(&r),
            [("encryption_type_required", "osDisk.securityEncryptionType")]
        );
        for bad in [
            "NonPersistedTPM",
            "DISK_WITH_VM_GUEST_STATE",
            "vmguueststateonly",
        ] {
            let mut r = good();
            r.os_disk.as_mut().unwrap().security_encryption_type = Some(bad.into());
            assert_eq!(codes_of(&r)[0].0, "invalid_encryption_type", "{bad}");
        }
        let mut r = good();
        r.security_profile.as_mut().unwrap().uefi_settings = Some(UefiSettings {
            secure_boot_enabled: Some(false),
            v_tpm_enabled: Some(false),
        });
        r.security_profile.as_mut().unwrap().encryption_at_host = Some(true);
        assert_eq!(
            codes_of(&r),
            [
                ("vtpm_required", "securityProfile.uefiSettings.vTpmEnabled"),
                (
                    "secure_boot_required",
                    "securityProfile.uefiSettings.secureBootEnabled"
                ),
                (
                    "encryption_at_host_conflict",
                    "securityProfile.encryptionAtHost"
                ),
            ]
        );
        // Secure Boot off is allowed when only the guest state is encrypted.
        let mut r = good();
        r.os_disk.as_mut().unwrap().security_encryption_type = Some("VMGuestStateOnly".into());
        r.security_profile.as_mut().unwrap().uefi_settings = Some(UefiSettings {
            secure_boot_enabled: Some(false),
            v_tpm_enabled: None,
        });
        assert!(!validate(&r, "eastus").unwrap().secure_boot);
        // ... but a customer key is not.
        r.os_disk.as_mut().unwrap().customer_key = Some("my-key".into());
        assert_eq!(
            codes_of(&r),
            [(
                "customer_key_requires_disk_encryption",
                "osDisk.customerKey"
            )]
        );
        let mut r = good();
        r.os_disk.as_mut().unwrap().customer_key = Some("my-key".into());
        assert_eq!(
            validate(&r, "x").unwrap().key,
            KeyManagement::Customer("my-key".into())
        );
    }

    #[test]
    fn unknown_sizes_images_and_regions_have_their_own_codes() {
        let mut r = good();
        r.vm_size = "Standard_D2as_v5".into();
        r.image = "rhel-9".into();
        r.location = Some("East US".into());
        r.os_disk.as_mut().unwrap().disk_size_gb = Some(0);
        assert_eq!(
            codes_of(&r),
            [
                ("unknown_size", "vmSize"),
                ("unknown_image", "image"),
                ("unknown_region", "location"),
                ("invalid_parameter", "osDisk.diskSizeGB"),
            ]
        );
        let mut r = good();
        r.vm_size = "standard_ec96iads_v5".into();
        r.image = "Canonical:0001-com-ubuntu-confidential-vm-focal:20_04-lts-cvm:latest".into();
        let spec = validate(&r, "eastus").unwrap();
        assert_eq!(
            (spec.size.name, spec.image.id),
            ("Standard_EC96iads_v5", "ubuntu-20.04")
        );
    }
}
