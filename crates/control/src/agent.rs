//! What the control plane asks of a host agent: run the attested boot of a VM placed
//! on its host, stop it, attest it again, forget it. The control plane persists the
//! VM's state and every step the agent reports; the agent owns the VM's processes and
//! files on its host.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a host agent needs to boot one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// The VM's platform-unique id (32 hex digits).
    pub vm_id: String,
    /// The host it is placed on.
    pub host: String,
    /// Its host's backend: `emulated` (the boot chain without a guest) or `qemu`
    /// (the guest runs under QEMU).
    #[serde(default = "emulated")]
    pub backend: String,
    /// Its vCPUs (measured into the launch digest: one VMSA each).
    pub vcpus: u32,
    /// Its memory, MiB.
    #[serde(default)]
    pub memory_mib: u32,
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
    /// The tenant the VM belongs to: its guest may ask only for keys tagged for it
    /// ([`TENANT_TAG`]).
    #[serde(default)]
    pub tenant: String,
}

/// The tag of a platform vault key that a tenant's guests may ask for: its value is
/// the tenant's name. (The key's release policy still decides whether it is
/// released; the tag decides whose guests may ask.)
pub const TENANT_TAG: &str = "opencvm-tenant";

fn emulated() -> String {
    "emulated".into()
}

/// What a pre-encryption made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreEncrypted {
    /// What it did, for people.
    pub detail: String,
    /// A pin of the disk's volume keys (SHA-256 of each encrypted partition's LUKS2
    /// digest and salt, hex, comma-separated): a start opens only a disk whose
    /// volume keys match it, so a disk the host made or swapped in does not open.
    pub pin: String,
}

/// One step's outcome, as the VM's events record it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
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
    /// The end of the VM's guest console (at most [`CONSOLE_MAX`] bytes); `None`
    /// when it has none (its host runs no guest, or it never booted).
    fn console(&self, host: &str, vm_id: &str) -> Result<Option<wire::Console>, BootFailure>;
}

/// The most of a console an agent answers, bytes.
pub const CONSOLE_MAX: u64 = 64 * 1024;

/// The stable codes a [`BootFailure`] may carry.
pub const BOOT_CODES: [&str; 11] = {
    use control_api::codes::boot::*;
    [
        HOST_UNHEALTHY,
        ATTESTATION_DENIED,
        KEY_RELEASE_DENIED,
        VMGS_UNOPENABLE,
        VTPM_FAILED,
        SECURE_BOOT_VIOLATION,
        PRE_ENCRYPTION_FAILED,
        CUSTOMER_KEY_UNUSABLE,
        DISK_LOCKED,
        HOST_AGENT,
        control_api::codes::HOST_AGENT_UNAVAILABLE,
    ]
};

impl<'de> Deserialize<'de> for BootFailure {
    /// A failure as an agent sent it; a code this control plane does not know is
    /// `host_agent` (the agent's own code kept in the reason).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            step: String,
            code: String,
            reason: String,
        }
        let w = Wire::deserialize(d)?;
        Ok(match BOOT_CODES.iter().find(|c| **c == w.code) {
            Some(code) => BootFailure {
                step: w.step,
                code,
                reason: w.reason,
            },
            None => BootFailure {
                step: w.step,
                code: control_api::codes::boot::HOST_AGENT,
                reason: format!(
                    "{} ({})",
                    w.reason,
                    w.code.chars().take(64).collect::<String>()
                ),
            },
        })
    }
}

/// The host agent's HTTP API (`cvm host run`; `host::server` serves it, [`crate::remote`]
/// calls it): every route under `/vms/{id}` with the agent's bearer credential.
pub mod wire {
    use serde::{Deserialize, Serialize};

    use super::{BootFailure, BootSpec, PreEncrypted, StepReport};

    /// `POST /vms/{id}/pre-encryption`'s answer (body: [`BootSpec`]): the VM's OS disk
    /// encrypted on the agent's host (the pre-encryption service), or why not.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PreEncryptOutcome {
        /// What it made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub done: Option<PreEncrypted>,
        /// Why it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure: Option<BootFailure>,
    }

    /// `GET /customer-keys/{name}`: whether the platform vault's key `name` can
    /// protect an OS disk (`why`: why not, for people).
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KeyCheck {
        /// Why it cannot; absent when it can.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub why: Option<String>,
    }

    /// One line of `POST /vms/{id}/start`'s answer (body: [`BootSpec`]), which is
    /// newline-delimited JSON (`application/x-ndjson`) sent as the boot goes: a line
    /// per step as it ends, then one `done` line. An answer that ends without `done`
    /// broke off (the agent stopped).
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub enum StartLine {
        /// A step ended.
        Step(StepReport),
        /// The boot is over: `failure` says why it stopped; `None`, the VM runs.
        Done {
            /// Why the boot stopped.
            failure: Option<BootFailure>,
        },
    }

    /// The start answer's media type.
    pub const NDJSON: &str = "application/x-ndjson";

    /// The longest line of a start answer a control plane reads.
    pub const MAX_LINE: usize = 64 * 1024;

    /// `GET /vms/{id}/console` (`null`: the VM has no console).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Console {
        /// Its last bytes, lossy UTF-8.
        pub text: String,
        /// Whether earlier output was left out.
        pub truncated: bool,
        /// Where `text` starts in the console's whole output, bytes.
        pub offset: u64,
        /// How far the boot went, as the console shows it.
        pub stage: String,
    }

    /// `GET /vms/{id}`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct VmStatus {
        /// Whether the VM's processes run on the agent's host.
        pub running: bool,
    }

    /// `POST /vms/{id}/attest`.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AttestRequest {
        /// The VM.
        pub spec: BootSpec,
        /// The caller's nonce, hex.
        pub nonce: String,
    }

    /// `POST /vms/{id}/attest`'s answer, and the answer of stop and forget (`token`
    /// absent).
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Outcome {
        /// The fresh token (attest only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token: Option<String>,
        /// Why the agent could not do it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure: Option<BootFailure>,
    }
}
