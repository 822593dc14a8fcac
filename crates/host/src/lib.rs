//! The host agent: the attested boot of the confidential VMs placed on a host.
//!
//! This release has the `emulated` backend: each host has an emulated AMD secure
//! processor (`snp-emu`, its own chip and roots), and the guest itself is not run.
//! The boot chain runs against the image's real boot components and the VM's real
//! VMGS, key vault and attestation service:
//!
//! 1. **launch**: the host is healthy (SEV-SNP enabled), the firmware (OVMF) is
//!    measured with one VMSA per vCPU as QEMU launches it, and the guest is launched
//!    through the host's secure processor with the default guest policy (no debug;
//!    a host's [`LAUNCHER_CONFIG`] may name another) and `HOST_DATA` = SHA-256 of
//!    `opencvm-vm:` and the VM's id;
//! 2. **attest**: the paravisor side (this agent, for the emulated backend: see ADR
//!    0016 for the trust boundary) takes a fresh RSA transfer key (made ahead of need
//!    by a background thread, used once), asks the secure
//!    processor for a report binding it, and has the attestation service appraise it
//!    under the VM's attestation policy; a refusal stops the boot with the service's
//!    reasons;
//! 3. **vmgs_key_release**: the key vault releases the VM's VMGS key-encryption key
//!    to that token only if it meets the key's immutable release policy (this
//!    attestation service, SEV-SNP, this VM's `HOST_DATA`, VMPL 0, no debug),
//!    wrapped to the transfer key;
//! 4. **vmgs**: the key opens the VM's VMGS (created on first boot with the UEFI
//!    variables of the VM's Secure Boot template, and never created again) and its
//!    datastore key is rotated;
//! 5. **vtpm**: the VM's vTPM starts from the VMGS as its own process (`cvm vtpm
//!    run`), the key-encryption key handed over on its standard input, which also
//!    ends the vTPM when this agent ends;
//! 6. **secure_boot**: firmware's and shim's checks of the image's boot loader and
//!    second stage against the VM's db/dbx (and shim's vendor certificate and SBAT),
//!    each event measured into the vTPM's PCR 7 and the event list kept.
//!
//! 7. **disk_unlock** (`DiskWithVMGuestState` only; the disk was encrypted before
//!    the first boot by [`pre_encryption`]): at the first start the disk key named
//!    in the disk's header is released to the token (step 2's) and opens the disk,
//!    which is then bound to the VM's vTPM (a `systemd-tpm2` keyslot sealed to PCR 7
//!    as step 6 left it, as systemd-cryptenroll binds); every later start has the
//!    vTPM unseal it, so the disk opens only for this VM's vTPM and boot chain.
//!    Either way the volume key is checked against the header's digest, as
//!    cryptsetup checks it before it opens a disk.
//!
//! On a `qemu` host the guest then boots (step **guest**, [`qemu`]): its firmware
//! measures the boot into the vTPM itself. With an encrypted disk steps 6 and 7 run
//! first as above (so a disk that would not open fails the start before QEMU runs),
//! the vTPM is shut down in order, and the guest's own initramfs unseals the disk's
//! key from the vTPM under PCR 7 as its firmware made it (the image's crypttab).

#![forbid(unsafe_code)]

pub mod guest;
pub mod pre_encryption;
pub mod qemu;
pub mod server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use control::agent::{BootFailure, BootSpec, HostAgent, StepReport};
use control_api::codes::boot as code;
use keyvault_api::KeyVaultApi as _;
use serde_json::{Value, json};
use snp_emu::guest::{Guest, LaunchConfig};
use snp_emu::platform::{Platform, PlatformConfig};
use zeroize::Zeroizing;

/// The services a host's VMs attest to and get their keys from.
pub struct Services {
    /// The attestation service's base URL.
    pub attestation_url: String,
    /// The key vault's base URL (the platform's vault).
    pub vault_url: String,
    /// A vault credential that may create keys (the control plane's).
    pub vault_admin: Zeroizing<String>,
    /// A vault credential that may only read and release keys (the paravisor's).
    pub vault_release: Zeroizing<String>,
    /// The vault's release signing certificate (DER): responses signed otherwise are
    /// refused.
    pub vault_signer: Vec<u8>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("attestation_url", &self.attestation_url)
            .field("vault_url", &self.vault_url)
            .finish_non_exhaustive()
    }
}

/// Why the agent could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A host's emulated secure processor.
    #[error("the emulated secure processor of {host}: {source}")]
    Platform {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: snp_emu::platform::PlatformError,
    },
    /// A file.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP client.
    #[error("HTTP client: {0}")]
    Client(String),
    /// Another agent runs the host.
    #[error("another agent runs host {host} (its agent.lock is held): stop it first")]
    Busy {
        /// The host.
        host: String,
    },
}

/// The release policy of a VM's keys (VMGS and platform disk key): tokens of the
/// attestation service at `issuer` (the URL this platform is configured with, not a
/// token's own claim), SEV-SNP, the VM's `HOST_DATA`, VMPL 0 and no debug; immutable.
fn release_policy(issuer: &str, vm_id: &str) -> Value {
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": issuer,
        "allOf": [
            {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
            {"claim": "x-ms-sevsnpvm-hostdata", "equals": hex::encode(host_data(vm_id))},
            {"claim": "x-ms-sevsnpvm-vmpl", "equals": 0},
            {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": false}]}]});
    json!({
        "contentType": "application/json; charset=utf-8",
        "data": B64URL.encode(policy.to_string()),
        "immutable": true,
    })
}

/// The directory of VM `vm_id` on `host` under the hosts' `root`.
fn vm_dir(root: &Path, host: &str, vm_id: &str) -> PathBuf {
    root.join(host).join("vms").join(vm_id)
}

/// A VM whose processes run.
struct Running {
    /// The vTPM process; it ends when `stdin` closes.
    child: Child,
    stdin: Option<ChildStdin>,
    /// The guest as launched (for fresh reports).
    guest: Guest,
    /// The vTPM's data channel.
    endpoint: String,
    /// The guest, on a `qemu` host.
    vm: Option<qemu::Guest>,
    /// The channel to its guest agent, on a `qemu` host.
    channel: Option<std::sync::Arc<guest::Channel>>,
}

/// The host agent of `cvm up`'s emulated hosts.
pub struct EmulatedHosts {
    root: PathBuf,
    cvm: PathBuf,
    ovmf: Vec<u8>,
    services: Services,
    agent: ureq::Agent,
    running: Mutex<HashMap<String, Running>>,
    /// Transfer keys made ahead of need (each used by one attestation only).
    transfer_keys: key_release::TransferKeys,
    /// The firmware of `qemu` hosts' guests, when this agent runs any.
    qemu: Option<qemu::Firmware>,
}

/// The lock of one VM's work on its host, by its directory: a boot, the disk's
/// pre-encryption and the removal of its files never run at once in this process
/// (the agent's), and a second one waits for the first to end. A control plane that
/// took over a saga whose first run still goes on here (its replica died) so waits
/// for it rather than racing it.
pub(crate) fn vm_work_lock(dir: &Path) -> std::sync::Arc<Mutex<()>> {
    static LOCKS: std::sync::LazyLock<
        Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<Mutex<()>>>>,
    > = std::sync::LazyLock::new(|| Mutex::new(std::collections::HashMap::new()));
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Locks nobody holds or waits for are dropped (the map stays as small as the
    // work under way).
    locks.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
    locks.entry(dir.to_path_buf()).or_default().clone()
}

impl std::fmt::Debug for EmulatedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedHosts")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The vCPU model the emulated hosts launch (their secure processors are Milan).
const VCPU_TYPE: &str = "EPYC-Milan";
/// The guest policy VMs launch with: ABI 0.0, SMT allowed, no debug, no migration
/// agent (unless a host's launcher is configured otherwise: [`LAUNCHER_CONFIG`]).
const GUEST_POLICY: u64 = 0x3_0000;
/// An emulated host's launcher configuration, `HOST_DIR/launcher.json`, optional:
/// `{"guest_policy": "0xB0000"}` makes that host launch guests with another policy
/// (a debug policy, say), as a misconfigured or hostile host would; attestation is
/// what refuses such a guest.
pub const LAUNCHER_CONFIG: &str = "launcher.json";
/// Transfer keys kept ready for the paravisor side's attestations (ADR 0016): two,
/// for two starts at once without waiting on RSA key generation.
const TRANSFER_KEYS_AHEAD: usize = 2;
/// How long a guest agent may take to attest for `cvm vm attest` (its tools under
/// TCG take a few seconds; inside a remote agent's 30 s call).
const GUEST_ATTEST_WAIT: Duration = Duration::from_secs(25);
/// How long a vTPM process may take to listen (well inside the 30 s a start request
/// may take).
const VTPM_START: Duration = Duration::from_secs(10);

/// The largest token a guest agent's answer may carry.
const GUEST_TOKEN_MAX: usize = 64 << 10;

/// `token`, a guest agent's answer to a token call, if it says what it must: a JWS of
/// an `azurevm` attestation of VM `vm_id` (its `HOST_DATA`) carrying `nonce` as the
/// report's user data. Not a verification (the guest could forge all of it; the
/// caller verifies the signature against the provider's JWKS): it keeps a guest from
/// answering with something that is not what was asked for.
fn guest_token_checked<'t>(token: &'t str, vm_id: &str, nonce: &[u8]) -> Result<&'t str, String> {
    if token.is_empty() || token.len() > GUEST_TOKEN_MAX {
        return Err(format!("{} bytes", token.len()));
    }
    let claims = guest_agent::evidence::token_claims(token)
        .filter(|_| token.split('.').count() == 3)
        .ok_or("not a JWS")?;
    if claims["x-ms-attestation-type"] != "azurevm" {
        return Err("not an azurevm attestation".into());
    }
    let tee = &claims["x-ms-isolation-tee"];
    if tee["x-ms-sevsnpvm-hostdata"].as_str() != Some(&hex::encode(host_data(vm_id))) {
        return Err("not this VM's HOST_DATA".into());
    }
    let user_data = tee["x-ms-runtime"]["user-data"]
        .as_str()
        .unwrap_or_default();
    if !user_data.starts_with(&hex::encode_upper(nonce)) {
        return Err("its report does not carry the nonce".into());
    }
    Ok(token)
}

/// A service's refusal as its message and detail (a policy's reasons), or the error.
fn refusal(e: api_client::ClientError) -> String {
    match e {
        api_client::ClientError::Refused {
            message, detail, ..
        } => match detail.filter(|d| !d.is_null()) {
            Some(d) => format!("{message} ({d})"),
            None => message,
        },
        e => e.to_string(),
    }
}

fn ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn fail(step: &str, code: &'static str, reason: impl Into<String>) -> BootFailure {
    BootFailure {
        step: step.to_string(),
        code,
        reason: reason.into(),
    }
}

/// `HOST_DATA` of a VM: SHA-256 of `opencvm-vm:` and its id. The launcher sets it,
/// the secure processor signs it in every report, and the VM's key release policies
/// name it (ADR 0016).
pub fn host_data(vm_id: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("opencvm-vm:{vm_id}").as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The VM id as the vTPM and VMGS name it: a UUID made of the 32 hex digits.
fn vm_uuid(vm_id: &str) -> String {
    let h = vm_id.to_uppercase();
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl EmulatedHosts {
    /// The agent of the hosts under `root` (one directory per host), spawning vTPMs
    /// with the `cvm` binary `cvm`, measuring the firmware `ovmf`.
    pub fn new(
        root: &Path,
        cvm: &Path,
        ovmf: Vec<u8>,
        services: Services,
    ) -> Result<Self, HostError> {
        let agent = api_client::agent(None).map_err(|e| HostError::Client(e.to_string()))?;
        Ok(EmulatedHosts {
            root: root.to_path_buf(),
            cvm: cvm.to_path_buf(),
            ovmf,
            services,
            agent,
            running: Mutex::new(HashMap::new()),
            transfer_keys: key_release::TransferKeys::spawn(TRANSFER_KEYS_AHEAD),
            qemu: None,
        })
    }

    /// Runs the guests of `qemu` hosts with `firmware` (without it, their VMs are
    /// refused at launch).
    pub fn with_qemu(mut self, firmware: qemu::Firmware) -> Self {
        self.qemu = Some(firmware);
        self
    }

    /// Takes host `host`'s agent lock (`HOST_DIR/agent.lock`) for as long as the
    /// returned file is open: one agent per host, so two never boot the same VMs.
    pub fn lock_host(root: &Path, host: &str) -> Result<std::fs::File, HostError> {
        let path = root.join(host).join("agent.lock");
        let io = |source| HostError::Io {
            path: path.clone(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(HostError::Busy {
                host: host.to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Creates host `host`'s emulated secure processor (a Milan, SEV-SNP enabled)
    /// unless it exists, and returns its roots as the attestation service pins them
    /// (ASK, ARK and the ARK's CRL, PEM).
    pub fn prepare(root: &Path, host: &str) -> Result<String, HostError> {
        let dir = root.join(host).join("snp");
        let perr = |source| HostError::Platform {
            host: host.to_string(),
            source,
        };
        std::fs::create_dir_all(root.join(host)).map_err(|source| HostError::Io {
            path: root.join(host),
            source,
        })?;
        Platform::open_or_create(&dir, PlatformConfig::new(snp::Product::Milan))
            .and_then(|p| p.roots_pem())
            .map_err(perr)
    }

    fn vm_dir(&self, host: &str, vm_id: &str) -> PathBuf {
        vm_dir(&self.root, host, vm_id)
    }

    /// The guest policy `host` launches with ([`LAUNCHER_CONFIG`]).
    fn guest_policy(&self, host: &str) -> Result<u64, BootFailure> {
        let path = self.root.join(host).join(LAUNCHER_CONFIG);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GUEST_POLICY),
            Err(e) => {
                return Err(fail(
                    "launch",
                    code::HOST_UNHEALTHY,
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        let bad = |why: &str| {
            fail(
                "launch",
                code::HOST_UNHEALTHY,
                format!(
                    "{}: {why} (expected {{\"guest_policy\": \"0x...\"}})",
                    path.display()
                ),
            )
        };
        let v: Value = serde_json::from_slice(&text).map_err(|e| bad(&e.to_string()))?;
        let hex = v["guest_policy"]
            .as_str()
            .and_then(|h| h.strip_prefix("0x"))
            .ok_or_else(|| bad("no guest_policy"))?;
        u64::from_str_radix(hex, 16).map_err(|e| bad(&e.to_string()))
    }

    fn platform(&self, host: &str) -> Result<Platform, BootFailure> {
        Platform::open(&self.root.join(host).join("snp")).map_err(|e| {
            fail(
                "launch",
                code::HOST_UNHEALTHY,
                format!("the secure processor of {host} cannot be opened: {e}"),
            )
        })
    }

    /// The attestation URL of the VM's policy: the service's default provider, or
    /// the provider the policy names.
    fn attestation_url(&self, policy: &str) -> String {
        let base = self.services.attestation_url.trim_end_matches('/');
        if policy == "default" {
            base.to_string()
        } else {
            format!("{base}/providers/{policy}")
        }
    }

    /// What this agent does for the guest agent of `spec`'s VM (a `qemu` guest):
    /// nonces and attestations of the VM's own attestation provider, the chain of its
    /// host's secure processor, and key releases from the platform's vault of keys
    /// tagged for the VM's tenant (never of the VM's own keys: its VMGS and disk keys,
    /// its customer key); nothing else, nowhere else.
    fn relay(&self, spec: &BootSpec) -> guest::Relay {
        let agent = self.agent.clone();
        let url = self.attestation_url(&spec.attestation_policy);
        let chain = Platform::open(&self.root.join(&spec.host).join("snp"))
            .map(|p| p.chain_pem())
            .map_err(|e| format!("the host's secure processor: {e}"));
        let vault_url = self.services.vault_url.clone();
        let vault_release = self.services.vault_release.clone();
        let customer_key = spec.customer_key.clone();
        let tenant = spec.tenant.clone();
        // The vault's refusals reach the guest without their detail: a failed
        // condition of another key's policy (another VM's HOST_DATA) is not the
        // guest's to read.
        let vault_refused = |e: api_client::ClientError| match e {
            api_client::ClientError::Refused { code, message, .. } => format!("{code}: {message}"),
            e => e.to_string(),
        };
        Box::new(move |call| {
            let service = attest_client::Client::new(agent.clone(), &url, None);
            match call {
                guest_agent::wire::Call::Nonce => service
                    .nonce()
                    .map(|n| json!({ "nonce": n.nonce }))
                    .map_err(refusal),
                guest_agent::wire::Call::Certs => chain.clone().map(|c| json!({ "chain": c })),
                guest_agent::wire::Call::Attest { mut request } => {
                    // A dry run is the provider administrator's, not a guest's.
                    request.draft_policy = None;
                    match service.attest_azure_guest(&request) {
                        Ok(attest_api::AttestResponse::Token(t)) => Ok(json!({ "token": t.token })),
                        Ok(attest_api::AttestResponse::DryRun(_)) => {
                            Err("the attestation service answered a dry run".into())
                        }
                        Err(e) => Err(refusal(e)),
                    }
                }
                guest_agent::wire::Call::Release {
                    key,
                    version,
                    request,
                } => {
                    // The VM's VMGS and disk keys are the paravisor's (their policies
                    // name launch evidence the guest's tokens do not carry either).
                    if key.starts_with("vm-") || customer_key.as_deref() == Some(key.as_str()) {
                        return Err(format!(
                            "the VM's own keys (its VMGS and disk keys, vm-*, and its customer key) are not released to its guest: {key}"
                        ));
                    }
                    let vault =
                        keyvault_client::Client::new(agent.clone(), &vault_url, &vault_release);
                    // Only a key tagged for the VM's tenant: a guest may not ask for
                    // another tenant's keys (and learns nothing of them: a missing
                    // key and another's are refused alike).
                    let not_ours = || {
                        format!(
                            "the platform vault holds no key {key} for the guests of tenant '{tenant}' (an operator tags such a key {}: {tenant})",
                            control::agent::TENANT_TAG
                        )
                    };
                    let bundle = match vault.get_key(&(), &key, version.as_deref()) {
                        Ok(b) => b,
                        Err(api_client::ClientError::Refused { status: 404, .. }) => {
                            return Err(not_ours());
                        }
                        Err(e) => return Err(vault_refused(e)),
                    };
                    if tenant.is_empty()
                        || bundle
                            .tags
                            .get(control::agent::TENANT_TAG)
                            .and_then(Value::as_str)
                            != Some(tenant.as_str())
                    {
                        return Err(not_ours());
                    }
                    let version = match version {
                        Some(v) => v,
                        None => bundle
                            .key
                            .kid
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    };
                    vault
                        .release(&(), &key, &version, request)
                        .map(|r| json!({ "value": r.value, "version": version }))
                        .map_err(vault_refused)
                }
                guest_agent::wire::Call::Token { .. } => Err("not a guest's call".into()),
            }
        })
    }

    fn releaser(&self, policy: &str) -> key_release::Releaser {
        key_release::Releaser::new(
            self.agent.clone(),
            &self.attestation_url(policy),
            self.services.vault_release.clone(),
            self.services.vault_signer.clone(),
        )
    }

    /// The VM's VMGS key-encryption key in the vault: created on first boot (an
    /// `oct` key of 256 bits) with an immutable release policy naming the attestation
    /// service this agent is configured with (not the token's own claim), SEV-SNP,
    /// this VM's `HOST_DATA`, VMPL 0 and no debug.
    fn vmgs_kek(&self, spec: &BootSpec) -> Result<key_release::KeyId, BootFailure> {
        let step = "vmgs_key_release";
        // The platform vault trusts the attestation service's default provider only
        // (its issuer is the service's URL); a named provider's tokens carry
        // `URL/providers/NAME`, which no key could be released to.
        if spec.attestation_policy != "default" {
            return Err(fail(
                step,
                code::KEY_RELEASE_DENIED,
                format!(
                    "the platform vault trusts tokens of the attestation service's default provider only, not of provider '{}'; its VMGS key cannot be released (use the attestation policy 'default')",
                    spec.attestation_policy
                ),
            ));
        }
        let issuer = self.attestation_url(&spec.attestation_policy);
        let vault = keyvault_client::Client::new(
            self.agent.clone(),
            &self.services.vault_url,
            &self.services.vault_admin,
        );
        let name = format!("vm-{}-vmgs", spec.vm_id);
        let kid = match vault.get_key(&(), &name, None) {
            Ok(b) => b.key.kid,
            Err(api_client::ClientError::Refused { status: 404, .. }) => {
                let req = keyvault_api::CreateKeyRequest {
                    kty: "oct".into(),
                    key_size: Some(256),
                    attributes: Some(keyvault_api::Attributes {
                        exportable: Some(true),
                        ..keyvault_api::Attributes::default()
                    }),
                    release_policy: Some(release_policy(&issuer, &spec.vm_id)),
                    ..keyvault_api::CreateKeyRequest::default()
                };
                vault
                    .create_key(&(), &name, req)
                    .map_err(|e| {
                        fail(
                            step,
                            code::HOST_AGENT,
                            format!("creating the VM's VMGS key {name}: {e}"),
                        )
                    })?
                    .key
                    .kid
            }
            Err(e) => {
                return Err(fail(
                    step,
                    code::HOST_AGENT,
                    format!("reading the VM's VMGS key {name}: {e}"),
                ));
            }
        };
        key_release::KeyId::parse(&kid).map_err(|e| {
            fail(
                step,
                code::HOST_AGENT,
                format!("the vault's key id {kid}: {e}"),
            )
        })
    }

    fn run_boot(
        &self,
        spec: &BootSpec,
        report: &mut dyn FnMut(StepReport),
    ) -> Result<Running, BootFailure> {
        let mut ok = |step: &str, started: Instant, detail: String| {
            report(StepReport {
                step: step.to_string(),
                outcome: "ok".into(),
                duration_ms: ms(started),
                detail,
            });
        };
        let dir = self.vm_dir(&spec.host, &spec.vm_id);
        std::fs::create_dir_all(&dir).map_err(|e| {
            fail(
                "launch",
                code::HOST_AGENT,
                format!("{}: {e}", dir.display()),
            )
        })?;

        // 1. Launch.
        let t = Instant::now();
        // The firmware measured is the one the guest runs: OVMF as the emulated
        // backend's launcher would load it, or the `qemu` backend's build.
        let (firmware, qemu_fw) = match spec.backend.as_str() {
            "emulated" => (&self.ovmf, None),
            "qemu" => {
                let fw = self.qemu.as_ref().ok_or_else(|| {
                    fail(
                        "launch",
                        code::HOST_UNHEALTHY,
                        format!(
                            "{} is a qemu host, and its agent runs no QEMU guests (start it with --backend qemu)",
                            spec.host
                        ),
                    )
                })?;
                (&fw.code_bytes, Some(fw))
            }
            other => {
                return Err(fail(
                    "launch",
                    code::HOST_UNHEALTHY,
                    format!(
                        "{} has the {other} backend, which this agent does not run (emulated and qemu are built; the hardware backend is not)",
                        spec.host
                    ),
                ));
            }
        };
        let platform = self.platform(&spec.host)?;
        if !platform.config().snp_enabled {
            return Err(fail(
                "launch",
                code::HOST_UNHEALTHY,
                format!(
                    "SEV-SNP is disabled on {}: its secure processor launches no confidential guest",
                    spec.host
                ),
            ));
        }
        let opts = snp_emu::ovmf::MeasureOptions {
            vcpus: spec.vcpus,
            vcpu_type: VCPU_TYPE
                .parse()
                .map_err(|e| fail("launch", code::HOST_AGENT, format!("{e}")))?,
            guest_features: 0x1,
            kernel: None,
            initrd: None,
            append: None,
        };
        let measurement = snp_emu::ovmf::measure_snp(firmware, &opts).map_err(|e| {
            fail(
                "launch",
                code::HOST_AGENT,
                format!("measuring the firmware: {e}"),
            )
        })?;
        let policy = self.guest_policy(&spec.host)?;
        let hd = host_data(&spec.vm_id);
        let guest = platform
            .launch(LaunchConfig {
                policy,
                measurement,
                host_data: hd,
                ..LaunchConfig::default()
            })
            .map_err(|e| {
                fail(
                    "launch",
                    code::HOST_UNHEALTHY,
                    format!("the secure processor refused the launch: {e}"),
                )
            })?;
        let tcb = platform.config().tcb();
        ok(
            "launch",
            t,
            format!(
                "launched through {}'s emulated AMD secure processor ({:?}, TCB {}): {} vCPUs, guest policy {policy:#x}, measurement {}, HOST_DATA {}",
                spec.host,
                platform.config().product,
                hex::encode(tcb.raw().to_le_bytes()),
                spec.vcpus,
                hex::encode(measurement),
                hex::encode(hd)
            ),
        );

        // 2. Attest.
        let t = Instant::now();
        let releaser = self.releaser(&spec.attestation_policy);
        let mut source = Evidence {
            platform: &platform,
            guest: &guest,
        };
        let mut key_ms = 0;
        let attested = self
            .transfer_keys
            .take()
            .and_then(|transfer| {
                key_ms = ms(t);
                releaser.attest_with(transfer, &mut source)
            })
            .map_err(|e| match e {
                key_release::ReleaseError::NotAttested { message, .. } => fail(
                    "attest",
                    code::ATTESTATION_DENIED,
                    format!(
                        "the attestation policy '{}' denied the evidence: {message}",
                        spec.attestation_policy
                    ),
                ),
                other => fail("attest", code::HOST_AGENT, other.to_string()),
            })?;
        // Unverified, for the event's text only: the token came from the service over
        // the connection this agent opened, and the vault verifies it.
        let claims = jose::peek(attested.token())
            .map(|(_, c)| Value::Object(c))
            .unwrap_or(Value::Null);
        let issuer = claims["iss"].as_str().unwrap_or_default().to_string();
        ok(
            "attest",
            t,
            format!(
                "token from {issuer} under policy '{}' (transfer key ready in {key_ms} ms, report and appraisal {} ms): attestation type {}, compliance {}, debuggable {}, emulated platform {}",
                spec.attestation_policy,
                ms(t) - key_ms,
                claims["x-ms-attestation-type"],
                claims["x-ms-compliance-status"],
                claims["x-ms-sevsnpvm-is-debuggable"],
                claims["x-opencvm-emulated"],
            ),
        );

        // 3. The VMGS key, released to the token.
        let t = Instant::now();
        let kid = self.vmgs_kek(spec)?;
        let released = releaser.release_to(&attested, &kid).map_err(|e| match e {
            key_release::ReleaseError::Refused { message, .. } => fail(
                "vmgs_key_release",
                code::KEY_RELEASE_DENIED,
                format!("the key vault refused to release {kid}: {message}"),
            ),
            other => fail("vmgs_key_release", code::HOST_AGENT, other.to_string()),
        })?;
        let kek_bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(released.as_bytes().try_into().map_err(|_| {
                fail(
                    "vmgs_key_release",
                    code::HOST_AGENT,
                    format!("{kid} is not a 256-bit key"),
                )
            })?);
        ok(
            "vmgs_key_release",
            t,
            format!("{kid} released to the token, wrapped to the transfer key"),
        );

        // 4. The VMGS: opened (its datastore key rotated) or created with the
        // template's variables.
        let t = Instant::now();
        let vmgs_path = dir.join("guest.vmgs");
        let kek = vmgs::key_protector::Kek::new(*kek_bytes);
        let (store, created) = open_vmgs(&vmgs_path, &kek, spec)?;
        ok(
            "vmgs",
            t,
            format!(
                "{} {} (key protector opened with the released key, datastore key rotated); Secure Boot {} with the {} template's db/dbx",
                if created { "created" } else { "opened" },
                vmgs_path.display(),
                if store.secure_boot() { "on" } else { "off" },
                spec.secure_boot_template
            ),
        );

        // 5. The vTPM, from the VMGS.
        let t = Instant::now();
        let (mut running, endpoint) =
            self.spawn_vtpm(spec, &dir, &vmgs_path, &kek_bytes, &measurement, guest)?;
        drop(kek_bytes);
        ok(
            "vtpm",
            t,
            format!(
                "vTPM 2.0 running from the VMGS (pid {}), data channel {endpoint}",
                running.child.id()
            ),
        );

        // 6. Secure Boot, measured into the vTPM.
        let t = Instant::now();
        // The VM's own disk when it has one (its boot partitions are the image's,
        // byte for byte, but a disk changed on the host must be the one checked).
        let own = dir.join(pre_encryption::OS_DISK);
        let disk = if own.exists() {
            own
        } else {
            spec.image.clone()
        };
        // A `qemu` guest's firmware measures its own boot; an encrypted disk is
        // still checked here first, under PCR 7 as the firmware will make it (the
        // vTPM is reset when QEMU starts).
        let encrypted = spec.encryption == "DiskWithVMGuestState";
        let measure = (qemu_fw.is_none() || encrypted).then_some(endpoint.as_str());
        match secure_boot(&disk, &store, measure, &dir) {
            Ok(detail) => ok("secure_boot", t, detail),
            Err(f) => {
                stop_child(&mut running);
                return Err(f);
            }
        }

        // 7. The OS disk, opened through the released key (first start) or the vTPM.
        if encrypted {
            let t = Instant::now();
            match unlock_disk(
                spec,
                &dir,
                &self.services.vault_url,
                &releaser,
                &attested,
                &endpoint,
            ) {
                Ok(detail) if qemu_fw.is_some() => {
                    // The guest starts on a vTPM shut down in order (QEMU resets
                    // it; an unordered reset would count against its
                    // dictionary-attack protection).
                    let shut = disk::tpm2::connect(&endpoint)
                        .and_then(|mut tpm| disk::tpm2::shutdown_clear(tpm.as_mut()));
                    if let Err(e) = shut {
                        stop_child(&mut running);
                        return Err(fail(
                            "disk_unlock",
                            code::VTPM_FAILED,
                            format!("shutting the vTPM down before the guest starts: {e}"),
                        ));
                    }
                    ok(
                        "disk_unlock",
                        t,
                        format!(
                            "{detail}; the guest's initramfs opens it itself, through the vTPM (systemd-cryptsetup, tpm2-device=auto)"
                        ),
                    );
                }
                Ok(detail) => ok("disk_unlock", t, detail),
                Err(f) => {
                    stop_child(&mut running);
                    return Err(f);
                }
            }
        }

        // The guest itself, on a `qemu` host.
        if let Some(fw) = qemu_fw {
            let t = Instant::now();
            let own = dir.join(pre_encryption::OS_DISK);
            let ctrl = dir.join("tpm").join("ctrl");
            match qemu::start(
                fw,
                spec,
                &dir,
                own.exists().then_some(own.as_path()),
                &store,
                &ctrl,
            ) {
                Ok((vm, detail)) => {
                    running.vm = Some(vm);
                    match guest::Channel::open(&dir, Duration::from_secs(5), self.relay(spec)) {
                        Ok(ch) => running.channel = Some(ch),
                        Err(e) => {
                            stop_child(&mut running);
                            return Err(fail(
                                "guest",
                                code::HOST_AGENT,
                                format!("the guest agent's channel ({}): {e}", guest::SOCKET),
                            ));
                        }
                    }
                    ok("guest", t, detail);
                }
                Err(f) => {
                    stop_child(&mut running);
                    return Err(f);
                }
            }
        }

        Ok(running)
    }

    fn spawn_vtpm(
        &self,
        spec: &BootSpec,
        dir: &Path,
        vmgs_path: &Path,
        kek: &[u8; 32],
        measurement: &[u8; 48],
        guest: Guest,
    ) -> Result<(Running, String), BootFailure> {
        let step = "vtpm";
        let sock = dir.join("tpm");
        let _ = std::fs::remove_dir_all(&sock);
        let data = format!("unix:{}", sock.join("data").display());
        let ctrl = format!("unix:{}", sock.join("ctrl").display());
        let mut child = Command::new(&self.cvm)
            .args(["vtpm", "run", "--kek-stdin", "--vmgs"])
            .arg(vmgs_path)
            // Each start is a power-on of the VM: the vTPM's PCRs start from zero.
            .arg("--power-on")
            .args([
                "--server",
                &data,
                "--ctrl",
                &ctrl,
                "--vm-id",
                &vm_uuid(&spec.vm_id),
            ])
            .args([
                "--secure-boot",
                if spec.secure_boot { "true" } else { "false" },
            ])
            .arg("--snp-platform")
            .arg(self.root.join(&spec.host).join("snp"))
            .args(["--launch-measurement", &hex::encode(measurement)])
            .args(["--host-data", &hex::encode(host_data(&spec.vm_id))])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(
                    step,
                    code::VTPM_FAILED,
                    format!("starting {}: {e}", self.cvm.display()),
                )
            })?;
        let mut stdin = child.stdin.take();
        if let Some(s) = stdin.as_mut()
            && let Err(e) = s.write_all(kek).and_then(|()| s.flush())
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(
                step,
                code::VTPM_FAILED,
                format!("handing the key to the vTPM: {e}"),
            ));
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Wait for "ctrl ..." on stdout (the vTPM listens), or its end.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with("ctrl ") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        let err_text = std::sync::Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = stderr {
            let keep = err_text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut k) = keep.lock()
                        && k.len() < 16 << 10
                    {
                        k.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut running = Running {
            child,
            stdin,
            guest,
            endpoint: data.clone(),
            vm: None,
            channel: None,
        };
        match rx.recv_timeout(VTPM_START) {
            Ok(()) => Ok((running, data)),
            Err(_) => {
                stop_child(&mut running);
                std::thread::sleep(Duration::from_millis(50));
                let text = err_text.lock().map(|t| t.clone()).unwrap_or_default();
                let last = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("it ended without a message")
                    .trim()
                    .to_string();
                let code = if last.contains("does not open") {
                    code::VMGS_UNOPENABLE
                } else {
                    code::VTPM_FAILED
                };
                Err(fail(step, code, format!("the vTPM did not start: {last}")))
            }
        }
    }
}

/// Opens the VMGS at `path` with `kek` (which rotates its datastore key), or creates
/// it with the Secure Boot template's variables; returns its variable store.
fn open_vmgs(
    path: &Path,
    kek: &vmgs::key_protector::Kek,
    spec: &BootSpec,
) -> Result<(boot::varstore::VariableStore, bool), BootFailure> {
    use vmgs::vmgs_format::FileId;
    let step = "vmgs";
    let opened = vmgs::Vmgs::open_file_protected(path, kek, vmgs::OpenOptions::default());
    let fresh = path.with_extension("vmgs.new");
    let (mut file, created) = match opened {
        Ok((v, _)) => (v, false),
        Err(vmgs::VmgsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && spec.vmgs_created =>
        {
            return Err(fail(
                step,
                code::VMGS_UNOPENABLE,
                format!(
                    "{} is missing, and the VM's VMGS was created at an earlier start: a new one would reset its vTPM and UEFI variables, so the VM does not start",
                    path.display()
                ),
            ));
        }
        Err(vmgs::VmgsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            // Made under another name and renamed once it holds its variables, so a
            // kill while it is made leaves no half-made VMGS under the real name.
            let _ = std::fs::remove_file(&fresh);
            let v = vmgs::Vmgs::create_file_protected(&fresh, vmgs::DEFAULT_SIZE, kek).map_err(
                |e| {
                    fail(
                        step,
                        code::HOST_AGENT,
                        format!("creating {}: {e}", fresh.display()),
                    )
                },
            )?;
            (v, true)
        }
        Err(e) => {
            return Err(fail(
                step,
                code::VMGS_UNOPENABLE,
                format!("the released key does not open {}: {e}", path.display()),
            ));
        }
    };
    let stored = match file.read_file(FileId::BIOS_NVRAM) {
        Ok(d) => Some(d.to_vec()),
        Err(vmgs::VmgsError::NoSuchFile(_)) => None,
        Err(e) => {
            return Err(fail(
                step,
                code::VMGS_UNOPENABLE,
                format!("{}: {e}", path.display()),
            ));
        }
    };
    let store = match stored {
        Some(raw) => boot::varstore::VariableStore::from_json(&raw).map_err(|e| {
            fail(
                step,
                code::VMGS_UNOPENABLE,
                format!("the VMGS's UEFI variables: {e}"),
            )
        })?,
        None => {
            let template: boot::template::Template = spec
                .secure_boot_template
                .parse()
                .map_err(|e| fail(step, code::HOST_AGENT, format!("{e}")))?;
            let keys = boot::template::keys(template)
                .map_err(|e| fail(step, code::HOST_AGENT, format!("{e}")))?;
            let mut store = boot::template::store(&keys, boot::authvar::EfiTime::now());
            if !spec.secure_boot {
                store = without_secure_boot(store);
            }
            file.write_file(FileId::BIOS_NVRAM, store.to_json().as_bytes(), false)
                .map_err(|e| fail(step, code::HOST_AGENT, format!("{}: {e}", path.display())))?;
            store
        }
    };
    if created {
        let io =
            |e: std::io::Error| fail(step, code::HOST_AGENT, format!("{}: {e}", path.display()));
        std::fs::rename(&fresh, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
    }
    Ok((store, created))
}

/// A store whose platform key is removed: firmware then runs in setup mode, with
/// Secure Boot off (the VM asked for it off).
fn without_secure_boot(mut store: boot::varstore::VariableStore) -> boot::varstore::VariableStore {
    store.variables.retain(|v| v.name != "PK");
    store
}

/// The boot chain checked as firmware and shim check it, each PCR 7 event extended
/// into the vTPM at `endpoint`, the event list written to `dir/boot-events.json`,
/// and PCR 7 read back against the replayed value.
fn secure_boot(
    disk: &Path,
    store: &boot::varstore::VariableStore,
    endpoint: Option<&str>,
    dir: &Path,
) -> Result<String, BootFailure> {
    let step = "secure_boot";
    let files = boot::esp::read_boot_files(disk).map_err(|e| {
        fail(
            step,
            code::HOST_AGENT,
            format!("the image's boot files: {e}"),
        )
    })?;
    let (events, chain) = if store.secure_boot() {
        let p = boot::predict::predict(store, &files)
            .map_err(|e| fail(step, code::SECURE_BOOT_VIOLATION, e.to_string()))?;
        let chain: Vec<String> = p
            .chain
            .iter()
            .map(|s| {
                format!(
                    "{} {} verified by {}",
                    s.stage,
                    &s.sha256[..16],
                    s.verified_by
                )
            })
            .collect();
        (p.events, chain.join("; "))
    } else {
        (
            boot::predict::configuration_events(store),
            "Secure Boot off: nothing verified".to_string(),
        )
    };
    // Without an endpoint (the `qemu` backend) the chain is checked here and the real
    // firmware measures it into the vTPM when the guest boots.
    let Some(endpoint) = endpoint else {
        let kernel = checked_kernel(disk, store, &files)?;
        let want = boot::predict::replay(&events, boot::pe::HashAlg::Sha256);
        return Ok(format!(
            "{chain}{}; the firmware measures the boot into the vTPM (PCR 7 predicted {} in SHA-256, {} events)",
            kernel
                .map(|(_, s)| format!("; kernel {} verified by {}", &s.sha256[..16], s.verified_by))
                .unwrap_or_default(),
            hex::encode(&want),
            events.len()
        ));
    };
    let mut tpm =
        disk::tpm2::connect(endpoint).map_err(|e| fail(step, code::VTPM_FAILED, e.to_string()))?;
    disk::tpm2::startup_clear(tpm.as_mut())
        .map_err(|e| fail(step, code::VTPM_FAILED, e.to_string()))?;
    // A vTPM whose platform was killed (kill -9, a host crash) was shut down
    // disorderly, which the TPM counts against its dictionary-attack protection, and
    // a few such counts lock out every DA-protected object (the disk's sealed key
    // among them). At boot the platform clears a count with the lockout hierarchy's
    // authorization while that is the empty default (ADR 0016); a guest that set its
    // own keeps its count (a reset attempt would count against it, so none is made).
    let mut da_note = String::new();
    if let Ok((false, count)) = disk::tpm2::dictionary_attack_state(tpm.as_mut())
        && count > 0
        && disk::tpm2::dictionary_attack_lock_reset(tpm.as_mut()).is_ok()
    {
        da_note = format!(
            "; the vTPM's dictionary-attack count ({count}, from disorderly shutdowns) cleared"
        );
    }
    for e in &events {
        let d1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &e.data);
        let d256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &e.data);
        let d384 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &e.data);
        let d512 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &e.data);
        disk::tpm2::pcr_extend(
            tpm.as_mut(),
            7,
            &[
                (0x0004, d1.as_ref()),
                (0x000B, d256.as_ref()),
                (0x000C, d384.as_ref()),
                (0x000D, d512.as_ref()),
            ],
        )
        .map_err(|e| {
            fail(
                step,
                code::VTPM_FAILED,
                format!("measuring into PCR 7: {e}"),
            )
        })?;
    }
    // The kernel GRUB loads from the ESP: shim checks it (Secure Boot on), and
    // firmware and shim measure shim, GRUB and the kernel into PCR 4.
    let mut pcr4_log = Vec::new();
    let mut pcr4_text = String::new();
    match (checked_kernel(disk, store, &files)?, store.secure_boot()) {
        (Some((kernel, stage)), true) => {
            let kernel = &kernel;
            let pcr4 = boot::predict::pcr4_events(&files, kernel, 0)
                .map_err(|e| fail(step, code::SECURE_BOOT_VIOLATION, e.to_string()))?;
            for e in &pcr4 {
                let digests: Vec<(u16, &[u8])> =
                    e.iter().map(|(alg, d)| (*alg, d.as_slice())).collect();
                disk::tpm2::pcr_extend(tpm.as_mut(), 4, &digests).map_err(|e| {
                    fail(
                        step,
                        code::VTPM_FAILED,
                        format!("measuring into PCR 4: {e}"),
                    )
                })?;
                pcr4_log.push(
                    e.iter()
                        .map(|(alg, d)| (format!("{alg:#06x}"), hex::encode(d)))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                );
            }
            // The SHA-256 bank replayed here, as a verifier replays the log.
            let mut want4 = [0u8; 32].to_vec();
            for e in &pcr4 {
                if let Some((_, d)) = e.iter().find(|(alg, _)| *alg == 0x000B) {
                    want4.extend_from_slice(d);
                    want4 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &want4)
                        .as_ref()
                        .to_vec();
                }
            }
            let want4 = hex::encode(want4);
            let have4 = disk::tpm2::read_pcrs(tpm.as_mut(), &[4])
                .map_err(|e| fail(step, code::VTPM_FAILED, e.to_string()))?;
            let have4 = have4.first().map(hex::encode).unwrap_or_default();
            if have4 != want4 {
                return Err(fail(
                    step,
                    code::VTPM_FAILED,
                    format!("PCR 4 of the vTPM is {have4} after the measurements, not {want4}"),
                ));
            }
            pcr4_text = format!(
                "; kernel {} verified by {}; {} events measured into PCR 4 = {have4} (SHA-256)",
                &stage.sha256[..16],
                stage.verified_by,
                pcr4.len()
            );
        }
        (None, true) => {
            pcr4_text =
                "; the boot loader is not shim: the kernel is not checked and PCR 4 not measured"
                    .into();
        }
        (_, false) => {}
    }
    let want = boot::predict::replay(&events, boot::pe::HashAlg::Sha256);
    let have = disk::tpm2::read_pcrs(tpm.as_mut(), &[7])
        .map_err(|e| fail(step, code::VTPM_FAILED, e.to_string()))?;
    if have.first().map(|v| v.as_slice()) != Some(want.as_slice()) {
        return Err(fail(
            step,
            code::VTPM_FAILED,
            format!(
                "PCR 7 of the vTPM is {} after the measurements, not {} (was it measured before?)",
                have.first().map(hex::encode).unwrap_or_default(),
                hex::encode(&want)
            ),
        ));
    }
    let log =
        serde_json::to_vec_pretty(&json!({"pcr7": events, "pcr4": pcr4_log})).unwrap_or_default();
    let _ = seal::write_secret_file(&dir.join("boot-events.json"), &log);
    Ok(format!(
        "{chain}; {} events measured into PCR 7 = {} (SHA-256){pcr4_text}{da_note}",
        events.len(),
        hex::encode(&want)
    ))
}

/// The kernel GRUB loads from `disk`'s ESP, checked as shim checks it under
/// `store` (Secure Boot on and a shim as the loader; else `None`: not checked).
fn checked_kernel(
    disk: &Path,
    store: &boot::varstore::VariableStore,
    files: &boot::esp::BootFiles,
) -> Result<Option<(Vec<u8>, boot::predict::Stage)>, BootFailure> {
    let step = "secure_boot";
    let is_shim = boot::shim::ShimTrust::parse(&files.loader).is_ok();
    if !(is_shim && store.secure_boot()) {
        return Ok(None);
    }
    let path = kernel_path(disk)?;
    let kernel = boot::esp::read_esp_file(disk, &path)
        .map_err(|e| fail(step, code::HOST_AGENT, format!("the image's kernel: {e}")))?
        .ok_or_else(|| {
            fail(
                step,
                code::SECURE_BOOT_VIOLATION,
                format!("GRUB would load /{path}, which is not on the EFI system partition"),
            )
        })?;
    let stage = boot::predict::verify_kernel(store, files, &kernel)
        .map_err(|e| fail(step, code::SECURE_BOOT_VIOLATION, e.to_string()))?;
    Ok(Some((kernel, stage)))
}

/// Removes the keyslots and tokens of every `systemd-tpm2` binding from `luks`
/// (in memory): what a binding interrupted or refused left.
fn drop_bindings(luks: &mut disk::Luks2) {
    let stale: Vec<u32> = luks
        .metadata
        .tokens
        .iter()
        .filter(|(_, t)| t.kind == disk::tpm2::TOKEN_TYPE)
        .map(|(id, _)| *id)
        .collect();
    for id in stale {
        if let Some(t) = luks.metadata.tokens.remove(&id) {
            for slot in &t.keyslots {
                if let Ok(n) = slot.parse::<u32>() {
                    luks.metadata.keyslots.remove(&n);
                }
                for d in luks.metadata.digests.values_mut() {
                    d.keyslots.retain(|k| k != slot);
                }
            }
        }
    }
}

/// Opens every encrypted partition of the VM's OS disk in `dir`, once its volume
/// keys match the pin its pre-encryption recorded (so a disk the host made or
/// swapped in is refused before any key is asked for):
/// - bound to the vTPM at an earlier start: through the vTPM at `endpoint` only;
/// - else (the first start): with the disk key its header names, which must be the
///   VM's own (`vm-<id>-disk`, or its customer key) in the platform vault at
///   `vault_url`, released to `attested`; then the disk is bound to the vTPM under
///   PCR 7 as it is now (replacing what an interrupted binding left), and the vTPM
///   unseals the new binding once; a binding that does not unseal is removed again.
fn unlock_disk(
    spec: &BootSpec,
    dir: &Path,
    vault_url: &str,
    releaser: &key_release::Releaser,
    attested: &key_release::Attested,
    endpoint: &str,
) -> Result<String, BootFailure> {
    let step = "disk_unlock";
    let locked = |why: String| fail(step, code::DISK_LOCKED, why);
    let path = dir.join(pre_encryption::OS_DISK);
    if !path.exists() {
        return Err(locked(format!(
            "{} is missing: the VM's encrypted OS disk is gone, so it does not start",
            path.display()
        )));
    }
    let want = spec.disk_pin.as_deref().ok_or_else(|| {
        locked(
            "the VM's OS disk has no recorded pre-encryption, so no disk is trusted to be its own"
                .into(),
        )
    })?;
    let (volumes, pin) = pre_encryption::open_pinned(&path)
        .map_err(|e| locked(format!("{}: {e}", path.display())))?;
    if pin != want {
        return Err(locked(format!(
            "{} is not the disk pre-encrypted for this VM (its volume keys' pin is {pin}, the recorded one {want}): no key is released to it",
            path.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| locked(format!("{}: {e}", path.display())))?;
    let mut tpm =
        disk::tpm2::connect(endpoint).map_err(|e| fail(step, code::VTPM_FAILED, e.to_string()))?;
    let expected = match &spec.customer_key {
        Some(k) => k.clone(),
        None => format!("vm-{}-disk", spec.vm_id),
    };
    let mut opened = Vec::new();
    for v in volumes {
        let n = v.number;
        let mut luks = v.luks;
        let window = disk::device::Window::new(&file, v.offset, v.len);
        if spec.disk_bound {
            let (slot, _key) = disk::tpm2::unlock(&luks, &window, tpm.as_mut()).map_err(|e| {
                locked(format!(
                    "the vTPM does not unseal the key of partition {n}: {e} (the disk was bound to this VM's vTPM at an earlier start and opens only through it: another VM's vTPM, a VMGS rolled back, or a PCR 7 other than at that start)"
                ))
            })?;
            opened.push(format!(
                "partition {n}: unsealed by the vTPM under PCR 7 (keyslot {slot}), volume key matches the header's digest"
            ));
            continue;
        }
        let key = pre_encryption::DiskKey::from_luks(&luks)
            .map_err(|e| locked(format!("partition {n}: {e}")))?;
        let kid = key_release::KeyId::parse(key.kid())
            .map_err(|e| locked(format!("partition {n}: the key id {}: {e}", key.kid())))?;
        if kid.vault().trim_end_matches('/') != vault_url.trim_end_matches('/')
            || kid.name() != expected
        {
            return Err(locked(format!(
                "partition {n} names the key {kid}, not the VM's own ({expected} in {vault_url}): no key is released for it"
            )));
        }
        let released = releaser.release_to(attested, &kid).map_err(|e| match e {
            key_release::ReleaseError::Refused { message, .. } => fail(
                step,
                code::KEY_RELEASE_DENIED,
                format!("the key vault refused to release the disk key {kid}: {message}"),
            ),
            key_release::ReleaseError::Transport { .. } => {
                fail(step, code::HOST_AGENT, e.to_string())
            }
            other => locked(format!("the disk key {kid}: {other}")),
        })?;
        let passphrase = key
            .passphrase(released.as_bytes())
            .map_err(|e| locked(format!("partition {n}: {e}")))?;
        drop(released);
        let (_, volume) = luks
            .unlock(&window, &passphrase, Some(0))
            .map_err(|e| locked(format!("the released key does not open partition {n}: {e}")))?;
        drop(passphrase);
        drop_bindings(&mut luks);
        let binding = disk::tpm2::PcrBinding::parse("7")
            .map_err(|e| fail(step, code::HOST_AGENT, e.to_string()))?;
        let enrolled = disk::tpm2::enroll(&mut luks, &window, &volume, tpm.as_mut(), &binding)
            .map_err(|e| {
                fail(
                    step,
                    code::VTPM_FAILED,
                    format!("binding partition {n} to the vTPM: {e}"),
                )
            })?;
        // The binding must hold as the next start will use it: the vTPM unseals
        // the new keyslot's secret under PCR 7 as it is now.
        let checked = luks
            .metadata
            .tokens
            .get(&enrolled.token)
            .ok_or_else(|| "the new token is missing".to_string())
            .and_then(|t| disk::tpm2::Tpm2Token::from_token(t).map_err(|e| e.to_string()))
            .and_then(|t| {
                disk::tpm2::unseal(tpm.as_mut(), &t)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = checked {
            drop_bindings(&mut luks);
            let _ = luks.write(&window);
            return Err(fail(
                step,
                code::VTPM_FAILED,
                format!(
                    "partition {n} does not unseal through the vTPM it was just bound to ({e}); the binding is removed again"
                ),
            ));
        }
        opened.push(format!(
            "partition {n}: {kid} released to the token opened keyslot 0 (volume key matches the header's digest and the recorded pin); bound to the vTPM (keyslot {}, systemd-tpm2 token, PCR 7)",
            enrolled.keyslot
        ));
    }
    file.sync_all()
        .map_err(|e| locked(format!("{}: {e}", path.display())))?;
    Ok(opened.join("; "))
}

/// The kernel GRUB loads from the image at `disk`: the one `linux` command of the
/// ESP's `EFI/BOOT/grub.cfg` (where Debian's signed GRUB looks when booted as
/// `\EFI\BOOT`), as a path on the ESP; `vmlinuz` when there is no such file. A
/// configuration that loads a kernel from elsewhere, or several, is refused: the
/// emulated start checks kernels on the ESP only.
fn kernel_path(disk: &Path) -> Result<String, BootFailure> {
    let step = "secure_boot";
    let cfg = boot::esp::read_esp_file(disk, "EFI/BOOT/grub.cfg")
        .map_err(|e| fail(step, code::HOST_AGENT, format!("the image's grub.cfg: {e}")))?;
    let Some(cfg) = cfg else {
        return Ok(boot::esp::KERNEL.to_string());
    };
    let text = String::from_utf8_lossy(&cfg);
    let mut paths: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            match t.next() {
                Some("linux" | "linuxefi") => t.next(),
                _ => None,
            }
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    match paths[..] {
        [p] if p.starts_with('/') && !p.contains('(') && !p.contains("..") => {
            Ok(p.trim_start_matches('/').to_string())
        }
        _ => Err(fail(
            step,
            code::SECURE_BOOT_VIOLATION,
            format!(
                "grub.cfg loads {paths:?}: the emulated start checks one kernel on the EFI system partition"
            ),
        )),
    }
}

/// Ends the vTPM: its standard input closes (it exits), then it is waited for, and
/// killed if it lingers.
fn stop_child(r: &mut Running) {
    // The guest powers off first (its OS shuts its TPM down in order).
    if let Some(vm) = r.vm.as_mut() {
        vm.stop();
    }
    // An orderly TPM shutdown first, as the guest's OS would send at power-off (a
    // vTPM that just ends counts a disorderly shutdown against its DA protection).
    if matches!(r.child.try_wait(), Ok(None))
        && let Ok(mut tpm) = disk::tpm2::connect(&r.endpoint)
    {
        let _ = disk::tpm2::shutdown_clear(tpm.as_mut());
    }
    r.stdin = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match r.child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = r.child.kill();
                let _ = r.child.wait();
                return;
            }
        }
    }
}

/// Reports of one launched guest, from VMPL 0, with their VCEK chain.
struct Evidence<'a> {
    platform: &'a Platform,
    guest: &'a Guest,
}

impl key_release::EvidenceSource for Evidence<'_> {
    fn snp_evidence(&mut self, report_data: &[u8; 64]) -> Result<key_release::Evidence, String> {
        let report = self
            .platform
            .get_report(self.guest, report_data, 0)
            .map_err(|e| e.to_string())?;
        Ok(key_release::Evidence {
            report: report.to_vec(),
            cert_chain_pem: self.platform.chain_pem(),
        })
    }
}

impl HostAgent for EmulatedHosts {
    fn start(
        &self,
        spec: &BootSpec,
        report: &mut dyn FnMut(StepReport),
    ) -> Result<(), BootFailure> {
        // One boot of a VM at a time: a second (a caller that gave up on the first
        // and asked again, or a replica that took over a dead one's start) waits for
        // the first to end (a boot nobody hears is stopped at its end), then stops
        // whatever runs and boots the VM itself: the later boot wins.
        let lock = vm_work_lock(&self.vm_dir(&spec.host, &spec.vm_id));
        let _work = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.stop(&spec.host, &spec.vm_id)?;
        let running = self.run_boot(spec, report)?;
        let mut map = self
            .running
            .lock()
            .map_err(|_| fail("start", code::HOST_AGENT, "the agent's lock is poisoned"))?;
        map.insert(spec.vm_id.clone(), running);
        Ok(())
    }

    fn stop(&self, host: &str, vm_id: &str) -> Result<(), BootFailure> {
        let taken = self
            .running
            .lock()
            .map_err(|_| fail("stop", code::HOST_AGENT, "the agent's lock is poisoned"))?
            .remove(vm_id);
        match taken {
            Some(mut r) => stop_child(&mut r),
            // Not this agent's: a guest an earlier agent left running is ended.
            None => {
                qemu::kill_stale(&self.vm_dir(host, vm_id));
            }
        }
        Ok(())
    }

    fn is_running(&self, _host: &str, vm_id: &str) -> bool {
        self.running.lock().is_ok_and(|mut m| {
            m.get_mut(vm_id).is_some_and(|r| {
                matches!(r.child.try_wait(), Ok(None)) && r.vm.as_mut().is_none_or(|v| v.alive())
            })
        })
    }

    fn attest(&self, spec: &BootSpec, nonce: &[u8]) -> Result<String, BootFailure> {
        let step = "attest";
        let (guest, channel) = self
            .running
            .lock()
            .map_err(|_| fail(step, code::HOST_AGENT, "the agent's lock is poisoned"))?
            .get(&spec.vm_id)
            .map(|r| (r.guest.clone(), r.channel.clone()))
            .ok_or_else(|| fail(step, code::HOST_AGENT, "the VM is not running on its host"))?;
        // A guest whose agent has attested since it (re)started attests with its own
        // evidence (its vTPM's report, quote and event log: an `azurevm` token), the
        // nonce in the report's user data. Without one (the guest still boots, or its
        // image has no agent) the token is of the launch's evidence (`sevsnpvm`), as
        // on emulated hosts.
        if let Some(ch) = channel.filter(|c| c.reported()) {
            let answer = ch
                .call(
                    guest_agent::wire::Call::Token {
                        user_data: Some(hex::encode(nonce)),
                    },
                    GUEST_ATTEST_WAIT,
                )
                .map_err(|e| match e {
                    guest::CallError::Refused(why) => {
                        let why: String = why.chars().take(1024).collect();
                        fail(
                            step,
                            code::ATTESTATION_DENIED,
                            format!("the guest's own attestation: {why}"),
                        )
                    }
                    guest::CallError::Unanswered(why) => fail(step, code::HOST_AGENT, why),
                })?;
            let token = answer
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return guest_token_checked(token, &spec.vm_id, nonce)
                .map(str::to_string)
                .map_err(|why| {
                    fail(
                        step,
                        code::HOST_AGENT,
                        format!("the guest agent's token is refused: {why}"),
                    )
                });
        }
        let platform = self.platform(&spec.host)?;
        let runtime = serde_json::to_vec(&json!({ "nonce": hex::encode(nonce) }))
            .map_err(|e| fail(step, code::HOST_AGENT, e.to_string()))?;
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &runtime).as_ref(),
        );
        let ev = key_release::EvidenceSource::snp_evidence(
            &mut Evidence {
                platform: &platform,
                guest: &guest,
            },
            &report_data,
        )
        .map_err(|e| fail(step, code::HOST_UNHEALTHY, e))?;
        let proof = json!({
            "SnpReport": B64URL.encode(&ev.report),
            "VcekCertChain": B64URL.encode(ev.cert_chain_pem.as_bytes()),
        });
        let req = attest_api::SevSnpVmRequest {
            report: B64URL.encode(proof.to_string()),
            runtime_data: Some(attest_api::DataField {
                data: B64URL.encode(&runtime),
                data_type: Some("JSON".into()),
                hash_algorithm: None,
            }),
            ..attest_api::SevSnpVmRequest::default()
        };
        let service = attest_client::Client::new(
            self.agent.clone(),
            &self.attestation_url(&spec.attestation_policy),
            None,
        );
        match service.attest_sev_snp_vm(&req) {
            Ok(attest_api::AttestResponse::Token(t)) => Ok(t.token),
            Ok(attest_api::AttestResponse::DryRun(_)) => Err(fail(
                step,
                code::HOST_AGENT,
                "the attestation service answered a dry run",
            )),
            Err(e @ api_client::ClientError::Refused { .. }) => {
                Err(fail(step, code::ATTESTATION_DENIED, refusal(e)))
            }
            Err(e) => Err(fail(step, code::HOST_AGENT, e.to_string())),
        }
    }

    fn console(
        &self,
        host: &str,
        vm_id: &str,
    ) -> Result<Option<control::agent::wire::Console>, BootFailure> {
        let dir = self.vm_dir(host, vm_id);
        // The stage from more of the console than is answered (the kernel's first
        // line is long gone from the tail of a talkative boot).
        let stage =
            qemu::console_tail(&dir, qemu::STAGE_WINDOW).map(|(t, _)| qemu::stage(&t).to_string());
        match qemu::console_tail(&dir, control::agent::CONSOLE_MAX) {
            Ok((text, offset)) => Ok(Some(control::agent::wire::Console {
                stage: stage.unwrap_or_default(),
                text,
                truncated: offset > 0,
                offset,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail("console", code::HOST_AGENT, e.to_string())),
        }
    }

    fn forget(&self, host: &str, vm_id: &str) -> Result<(), BootFailure> {
        // After a boot or a pre-encryption of the VM still running here (a delete
        // through another replica): what it makes goes too.
        let lock = vm_work_lock(&self.vm_dir(host, vm_id));
        let _work = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.stop(host, vm_id)?;
        // The VM's own keys go with it (a customer's key stays the customer's).
        let vault = keyvault_client::Client::new(
            self.agent.clone(),
            &self.services.vault_url,
            &self.services.vault_admin,
        );
        for name in [format!("vm-{vm_id}-vmgs"), format!("vm-{vm_id}-disk")] {
            match vault.delete_key(&(), &name) {
                Ok(_) | Err(api_client::ClientError::Refused { status: 404, .. }) => {}
                Err(e) => {
                    return Err(fail(
                        "delete",
                        code::HOST_AGENT,
                        format!("deleting the VM's key {name}: {e}"),
                    ));
                }
            }
        }
        let dir = self.vm_dir(host, vm_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fail(
                "delete",
                code::HOST_AGENT,
                format!("{}: {e}", dir.display()),
            )),
        }
    }
}

impl Drop for EmulatedHosts {
    fn drop(&mut self) {
        if let Ok(mut m) = self.running.lock() {
            for (_, mut r) in m.drain() {
                stop_child(&mut r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jws(claims: &Value) -> String {
        format!(
            "{}.{}.c2ln",
            B64URL.encode(br#"{"alg":"RS256"}"#),
            B64URL.encode(claims.to_string())
        )
    }

    #[test]
    fn a_guest_token_must_be_what_was_asked_for() {
        let vm = "0123456789abcdef0123456789abcdef";
        let nonce = [0xc0, 0xff, 0xee];
        let good = json!({
            "x-ms-attestation-type": "azurevm",
            "x-ms-isolation-tee": {
                "x-ms-sevsnpvm-hostdata": hex::encode(host_data(vm)),
                "x-ms-runtime": {"user-data": format!("C0FFEE{}", "0".repeat(122))},
            },
        });
        let t = jws(&good);
        assert_eq!(guest_token_checked(&t, vm, &nonce), Ok(t.as_str()));
        let mut other_vm = good.clone();
        other_vm["x-ms-isolation-tee"]["x-ms-sevsnpvm-hostdata"] = json!("00".repeat(32));
        let mut other_nonce = good.clone();
        other_nonce["x-ms-isolation-tee"]["x-ms-runtime"]["user-data"] = json!("0".repeat(128));
        let mut launch = good.clone();
        launch["x-ms-attestation-type"] = json!("sevsnpvm");
        for (bad, why) in [
            (jws(&other_vm), "HOST_DATA"),
            (jws(&other_nonce), "nonce"),
            (jws(&launch), "azurevm"),
            ("not a token".to_string(), "JWS"),
            (String::new(), "0 bytes"),
            ("a".repeat(GUEST_TOKEN_MAX + 1), "bytes"),
        ] {
            let e = guest_token_checked(&bad, vm, &nonce).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
