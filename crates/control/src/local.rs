//! The one-machine platform `cvm up` runs: a tenant for the local user (its
//! administrator credential in the state directory) and N emulated SNP hosts in the
//! default region, each of an Azure DCasv5/ECasv5 host's size (112 vCPUs, 768 GiB,
//! at most 32 VMs). Preparing twice changes nothing: the tenant and hosts stay as
//! they are, with their VMs.

use std::path::{Path, PathBuf};

use httpd::ApiError;

use crate::service::Control;

/// The local tenant's name.
pub const LOCAL_TENANT: &str = "local";
/// The local tenant's administrator credential, in the state directory.
pub const TENANT_TOKEN: &str = "tenant.token";

/// What [`prepare`] set up.
#[derive(Debug)]
pub struct LocalPlatform {
    /// The local tenant's credential file.
    pub tenant_token: PathBuf,
    /// Whether it was created now.
    pub created_tenant: bool,
    /// Every registered host's name (the emulated ones first).
    pub hosts: Vec<String>,
}

/// An Azure DCasv5-/ECasv5-Type1 host (research note §1.3).
const HOST_VCPUS: u32 = 112;
const HOST_MEMORY_GIB: u32 = 768;
const HOST_MAX_VMS: u32 = 32;

/// Makes sure the local tenant and `hosts` emulated hosts (`host-1`, ...) in `region`
/// exist. With `backend` (`emulated`, or `qemu`: their guests run under QEMU) every
/// one of them has it: a host registered with another is changed over, unless it
/// holds VMs (409). Without, new hosts are `emulated` and existing ones stay as they
/// are.
pub fn prepare(
    control: &Control,
    state: &Path,
    hosts: u32,
    region: &str,
    backend: Option<&str>,
) -> Result<LocalPlatform, ApiError> {
    let tenant_token = state.join(TENANT_TOKEN);
    let mut created_tenant = false;
    // A credential file the store does not know (its database was replaced, say) is
    // replaced by a valid one.
    let valid =
        std::fs::read_to_string(&tenant_token).is_ok_and(|t| control.authenticated(Some(t.trim())));
    if !valid {
        let cred = match control
            .create_tenant(LOCAL_TENANT, &control_api::CreateTenantRequest::default())
        {
            Ok(c) => c,
            Err(e) if e.status == 409 => {
                // The tenant exists but its credential file was removed: a new
                // administrator credential for it (the old one stays valid).
                let caller = crate::Caller::Tenant {
                    tenant: LOCAL_TENANT.to_string(),
                    role: crate::Role::Administrator,
                };
                control.create_credential(
                    &caller,
                    &control_api::CreateCredentialRequest {
                        role: "administrator".into(),
                    },
                )?
            }
            Err(e) => return Err(e),
        };
        seal::write_secret_file(&tenant_token, cred.credential.as_bytes())
            .map_err(|e| ApiError::logged("state", e))?;
        created_tenant = true;
    }
    let existing = control.hosts()?.value;
    let mut names = Vec::new();
    for i in 1..=hosts {
        let name = format!("host-{i}");
        let same = existing
            .iter()
            .find(|h| h.name == name)
            .map(|h| backend.is_none_or(|b| h.backend == b));
        if same == Some(false) && existing.iter().any(|h| h.name == name && h.vms > 0) {
            return Err(ApiError::new(
                409,
                "conflict",
                format!(
                    "{name} holds VMs under another backend than {}: delete them first, or start without --backend",
                    backend.unwrap_or_default()
                ),
            ));
        }
        if same != Some(true) {
            control.register_host(
                &name,
                &control_api::RegisterHostRequest {
                    region: region.to_string(),
                    v_cpus: HOST_VCPUS,
                    memory_gib: HOST_MEMORY_GIB,
                    max_vms: HOST_MAX_VMS,
                    snp_enabled: true,
                    backend: backend.unwrap_or("emulated").to_string(),
                },
            )?;
        }
        names.push(name);
    }
    // Hosts an earlier start (or the operator) registered stay, with their VMs.
    for h in control.hosts()?.value {
        if !names.contains(&h.name) {
            names.push(h.name);
        }
    }
    Ok(LocalPlatform {
        tenant_token,
        created_tenant,
        hosts: names,
    })
}
