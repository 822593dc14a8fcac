//! `cvm vtpm run`: one VM's TPM 2.0 as a process of its own.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use snp_emu::guest::LaunchConfig;
use snp_emu::platform::{Platform as SnpPlatform, PlatformConfig};
use vtpm::ca::VtpmCa;
use vtpm::platform::{Platform, ReportSource, VmConfig};
use vtpm::{Endpoint, Engine, LibtpmsEngine, Protocol, Server, ServerConfig, StateDir, Vtpm};

/// `cvm vtpm ...`
#[derive(Subcommand, Debug)]
pub enum VtpmCommand {
    /// Run one VM's vTPM. Prints `server ENDPOINT` (if any) and `ctrl ENDPOINT` first;
    /// runs until a client sends CMD_SHUTDOWN.
    Run(RunArgs),
}

/// Which protocol the endpoints speak.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ProtocolArg {
    /// swtpm's data and control channels (QEMU `-tpmdev emulator`, tpm2-tss `swtpm`).
    Swtpm,
    /// The TPM simulator's command and platform ports (tpm2-tss `mssim`, IBM TSS).
    Mssim,
}

/// `cvm vtpm run`
#[derive(Args, Debug)]
pub struct RunArgs {
    /// State directory (created 0700; locked while running).
    #[arg(long, required_unless_present = "vmgs", conflicts_with = "vmgs")]
    state: Option<PathBuf>,
    /// Keep the state in this VM's VMGS file instead (encrypted; created, 4 MiB, when
    /// missing; locked while running): the permanent state in TPM_NVRAM.
    #[arg(long)]
    vmgs: Option<PathBuf>,
    /// The VMGS's datastore key: a file of exactly 32 bytes.
    #[arg(long, requires = "vmgs", conflicts_with = "kek_file")]
    key_file: Option<PathBuf>,
    /// Or: the key-encryption key (32 bytes) of the VMGS's key protector, which holds
    /// the datastore key, from a file; each start rotates the datastore key.
    #[arg(long, requires = "vmgs", conflicts_with = "key_release")]
    kek_file: Option<PathBuf>,
    /// Or: read that key-encryption key (32 bytes) from standard input, and end when
    /// standard input closes: for a host agent that owns this vTPM (its end ends the
    /// vTPM, even when it is killed).
    #[arg(long, requires = "vmgs", conflicts_with_all = ["key_release", "kek_file", "key_file"])]
    kek_stdin: bool,
    /// Or: the key protector's key-encryption key released by the key vault after
    /// attestation: the key's id as the vault prints it (VAULT_URL/keys/NAME/VERSION,
    /// an `oct` key of 256 bits). The vTPM attests a report from --snp-platform with
    /// a fresh transfer key at --attestation-url, and the vault releases the key to
    /// that token if it meets the key's release policy. Each start rotates the
    /// datastore key.
    #[arg(
        long,
        value_name = "KEY_ID",
        requires_all = ["vmgs", "attestation_url", "vault_credential_file", "vault_signer", "snp_platform"],
        conflicts_with = "key_file"
    )]
    key_release: Option<String>,
    /// The attestation service (`cvm attest serve`) for --key-release.
    #[arg(long, requires = "key_release")]
    attestation_url: Option<String>,
    /// A file with the vault credential that may release the key.
    #[arg(long, requires = "key_release")]
    vault_credential_file: Option<PathBuf>,
    /// The vault's release signing certificate (PEM or DER; the vault writes it to
    /// `STATE/release-signer.pem`): a release response signed otherwise is refused.
    #[arg(long, requires = "key_release")]
    vault_signer: Option<PathBuf>,
    /// CA certificates (PEM) for HTTPS to both services (default: the Mozilla roots).
    #[arg(long, requires = "key_release")]
    tls_ca: Option<PathBuf>,
    /// Data channel (swtpm) or command port (mssim): unix:PATH (its directory is
    /// created 0700, or must be this user's with mode 0700; only this user or root may
    /// connect) or, with --dangerously-allow-tcp, tcp:HOST:PORT (loopback only; port 0
    /// picks a free pair).
    #[arg(long)]
    server: Option<String>,
    /// Control channel (swtpm) or platform port (mssim); default: the server's port
    /// plus one, as tpm2-tss's TCTIs expect.
    #[arg(long)]
    ctrl: Option<String>,
    /// Protocol.
    #[arg(long, value_enum, default_value = "swtpm")]
    protocol: ProtocolArg,
    /// Allow TCP endpoints. Any local user can connect to a TCP port, and the control
    /// channel reads and replaces every secret of the TPM: for tests, benchmarks and
    /// tools that speak only TCP, never for a VM.
    #[arg(long)]
    dangerously_allow_tcp: bool,
    /// Refuse CMD_SET_LOCALITY to locality 4 (as swtpm's `reject-locality-4`).
    #[arg(long)]
    refuse_locality_4: bool,
    /// A file with the migration key (32 bytes, raw or as 64 hex digits): state blobs
    /// cross the control channel (CMD_GET_STATEBLOB/CMD_SET_STATEBLOB, `swtpm_ioctl
    /// --save/--load`) only sealed under it (AES-256-GCM). Without it they are refused.
    #[arg(long)]
    migration_key: Option<PathBuf>,
    /// Wait for CMD_INIT (or a simulator power-on) instead of starting the TPM at once.
    #[arg(long)]
    need_init: bool,
    /// The VM powers on: volatile state an earlier run saved (at its orderly end) is
    /// discarded, not resumed, as a power-on resets a TPM (its PCRs start from zero).
    /// Without it the saved state is resumed once (a vTPM process restarted under a
    /// running guest).
    #[arg(long)]
    power_on: bool,
    /// The platform's vTPM CA directory (created on first use): issues the AK
    /// certificate at NV 0x01C101D0. Without it there is no AK certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The host's emulated AMD secure processor (a `cvm snp create` directory, created
    /// as a Milan platform if missing): signs the attestation report at NV
    /// 0x01400001. Without it there is no report.
    #[arg(long)]
    snp_platform: Option<PathBuf>,
    /// The VM's launch measurement in the report (96 hex characters).
    #[arg(long)]
    launch_measurement: Option<String>,
    /// The VM's HOST_DATA in the report (64 hex characters, default zero): set at
    /// launch by whoever launches the VM and covered by the report, so a key's release
    /// policy can name the one VM it is for.
    #[arg(long, requires = "snp_platform")]
    host_data: Option<String>,
    /// The VM's unique id (a UUID; default: generated once and kept in the state
    /// directory).
    #[arg(long)]
    vm_id: Option<String>,
    /// Whether the VM boots with Secure Boot (reported in `vm-configuration`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    secure_boot: bool,
    /// Whether the VM has a serial console (reported in `vm-configuration`).
    #[arg(long)]
    console: bool,
    /// Benchmarks only: write state atomically but without fsync (as swtpm does), to
    /// measure what durability costs. A host crash can then lose acknowledged writes.
    #[arg(long, hide = true, conflicts_with = "vmgs")]
    unsafe_no_fsync: bool,
    /// Conformance tests only (IBM TSS regression suite): serve the bare TPM, with
    /// nothing provisioned, no report index and the platform hierarchy left open, as
    /// swtpm does. Never for a VM.
    #[arg(long, hide = true, conflicts_with_all = ["ca", "snp_platform"])]
    bare: bool,
}

/// Runs a vtpm subcommand.
pub fn run(cmd: VtpmCommand) -> ExitCode {
    let r = match cmd {
        VtpmCommand::Run(a) => run_vtpm(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::service_failed(&e),
    }
}

fn run_vtpm(a: RunArgs) -> Result<()> {
    let parse = |s: &Option<String>| -> Result<Option<Endpoint>> {
        s.as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::from)
    };
    let config = ServerConfig {
        protocol: match a.protocol {
            ProtocolArg::Swtpm => Protocol::Swtpm,
            ProtocolArg::Mssim => Protocol::Mssim,
        },
        server: parse(&a.server)?,
        ctrl: parse(&a.ctrl)?,
        allow_tcp: a.dangerously_allow_tcp,
        refuse_locality_4: a.refuse_locality_4,
    };
    config.check()?;
    if a.dangerously_allow_tcp {
        tracing::warn!(
            "--dangerously-allow-tcp: every local user can reach this TPM's TCP \
             endpoints"
        );
    }
    let mut snp = match &a.snp_platform {
        Some(dir) => Some(EmulatedSnp::open(
            dir,
            a.launch_measurement.as_deref(),
            a.host_data.as_deref(),
        )?),
        None => None,
    };
    let given = a.vm_id.as_deref();
    let (store, vm_id): (Box<dyn vtpm::StateStore>, String) = match (&a.state, &a.vmgs, &a.key_file)
    {
        (_, Some(path), key_file) => {
            let opened = match (key_file, &a.kek_file) {
                (Some(key), _) => {
                    let key = vtpm::vmgs_state::DatastoreKey::from_file(key)?;
                    vtpm::VmgsState::open_or_create(path, &key)
                }
                (None, Some(kek)) => {
                    let kek = vtpm::vmgs_state::Kek::from_file(kek)?;
                    vtpm::VmgsState::open_or_create_protected(path, &kek)
                }
                (None, None) if a.kek_stdin => {
                    let kek = kek_from_stdin()?;
                    vtpm::VmgsState::open_or_create_protected(path, &kek)
                }
                (None, None) => match (&a.key_release, snp.as_mut()) {
                    (Some(kid), Some(snp)) => {
                        let kek = release_kek(&a, kid, snp)?;
                        vtpm::VmgsState::open_or_create_protected(path, &kek)
                    }
                    _ => anyhow::bail!("--vmgs needs --key-file, --kek-file or --key-release"),
                },
            };
            let (mut store, created) =
                opened.with_context(|| format!("opening the VMGS {}", path.display()))?;
            if created {
                tracing::info!("created the VMGS {}", path.display());
            }
            let stored = vm_id_from_vmgs(&store)?;
            let had_one = stored.is_some();
            let id = vm_id(given, || Ok(stored), |_| Ok(()))?;
            if !had_one {
                vm_id_to_vmgs(&mut store, &id)?;
            }
            (Box::new(store), id)
        }
        (Some(state), _, _) => {
            let mut dir = StateDir::open(state).context("opening the vTPM state")?;
            if a.unsafe_no_fsync {
                tracing::warn!("--unsafe-no-fsync: vTPM state writes are not durable");
                dir.set_durable(false);
            }
            let path = state.join("vm-id");
            let id = vm_id(
                given,
                || {
                    Ok(std::fs::read_to_string(&path)
                        .ok()
                        .map(|s| s.trim().to_string()))
                },
                |id| {
                    std::fs::write(&path, id).with_context(|| format!("writing {}", path.display()))
                },
            )?;
            (Box::new(dir), id)
        }
        _ => anyhow::bail!("--state DIR or --vmgs FILE --key-file K"),
    };
    let mut store = store;
    if a.power_on {
        store
            .remove(vtpm::StateKind::Volatile, false)
            .context("discarding the saved volatile state at power-on")?;
    }
    let (major, minor, patch) = vtpm::libtpms_version();
    tracing::info!(
        "libtpms {major}.{minor}.{patch} (it must carry the fixes for \
         CVE-2023-1017/1018 and CVE-2025-49133; see the README)"
    );
    let mut engine = LibtpmsEngine::new(store)?;
    // Volatile state saved by an orderly shutdown is resumed once, then deleted: a
    // later start never rolls PCRs back to it.
    engine
        .start(true)
        .context("starting the TPM from its state")?;
    let ca =
        a.ca.as_deref()
            .map(VtpmCa::open_or_create)
            .transpose()
            .context("opening the vTPM CA")?;
    let reports = snp.map(|s| Box::new(s) as Box<dyn ReportSource>);
    let vm = VmConfig {
        vm_id,
        secure_boot: a.secure_boot,
        tpm_enabled: true,
        console_enabled: a.console,
    };
    let mut vtpm = if a.bare {
        tracing::warn!("--bare: no provisioning and an open platform hierarchy");
        Vtpm::new(Box::new(engine))
    } else {
        Vtpm::with_platform(Box::new(engine), Platform::new(vm, reports, ca))
            .context("provisioning the vTPM")?
    };
    if let Some(path) = &a.migration_key {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let key = vtpm::blob::MigrationKey::parse(&bytes).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: a migration key is 32 bytes, raw or as 64 hex digits",
                path.display()
            )
        })?;
        vtpm.set_migration_key(key);
    }
    if a.need_init {
        vtpm.engine().stop(true);
    }
    let server = Server::start(vtpm, config)?;
    {
        let mut out = std::io::stdout().lock();
        if let Some(s) = server.server() {
            writeln!(out, "server {s}")?;
        }
        writeln!(out, "ctrl {}", server.ctrl())?;
        out.flush()?;
    }
    server.wait();
    Ok(())
}

/// The KEK from the first 32 bytes of standard input; then a thread waits for the end
/// of standard input and ends the process (every state change is already durable).
fn kek_from_stdin() -> Result<vtpm::vmgs_state::Kek> {
    use std::io::Read;
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    std::io::stdin()
        .read_exact(k.as_mut())
        .context("reading the key-encryption key (32 bytes) from standard input")?;
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        // No log line here: the agent that held the pipe is gone, and with it the
        // reader of stderr (a write there would fail, and a failed log write must
        // not keep this process alive).
        std::process::exit(0);
    });
    Ok(vtpm::vmgs_state::Kek::new(*k))
}

/// The key protector's KEK, released by the key vault to this VM's attested report.
fn release_kek(a: &RunArgs, kid: &str, snp: &mut EmulatedSnp) -> Result<vtpm::vmgs_state::Kek> {
    let (Some(url), Some(cred), Some(signer)) = (
        &a.attestation_url,
        &a.vault_credential_file,
        &a.vault_signer,
    ) else {
        anyhow::bail!(
            "--key-release needs --attestation-url, --vault-credential-file and --vault-signer"
        );
    };
    let key = key_release::KeyId::parse(kid)?;
    let credential = zeroize::Zeroizing::new(
        std::fs::read_to_string(cred)
            .with_context(|| format!("reading {}", cred.display()))?
            .trim()
            .to_string(),
    );
    let signer = crate::attest_cmd::certificate_der(signer)?;
    let agent = crate::attest_cmd::agent(a.tls_ca.as_deref())?;
    let releaser = key_release::Releaser::new(agent, url, credential, signer);
    let released = releaser
        .release(&key, snp)
        .context("the VMGS key-encryption key was not released")?;
    let k: [u8; 32] = released.as_bytes().try_into().map_err(|_| {
        anyhow::anyhow!(
            "the released key {key} is {} bytes; a key-encryption key is 32 (an oct key of 256 bits)",
            released.as_bytes().len()
        )
    })?;
    tracing::info!("the key vault released {key} to this VM");
    Ok(vtpm::vmgs_state::Kek::new(k))
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hex form.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The VM id: given, or kept with the state (generated on first start): `load` reads
/// the stored one, `save` stores a generated one.
fn vm_id(
    given: Option<&str>,
    load: impl FnOnce() -> Result<Option<String>>,
    save: impl FnOnce(&str) -> Result<()>,
) -> Result<String> {
    if let Some(id) = given {
        if !is_uuid(id) {
            anyhow::bail!("--vm-id {id:?} is not a UUID (8-4-4-4-12 hex digits)");
        }
        return Ok(id.to_uppercase());
    }
    if let Some(id) = load()? {
        if !is_uuid(&id) {
            anyhow::bail!("the stored VM id {id:?} is not a UUID");
        }
        return Ok(id.to_uppercase());
    }
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let id = uuid_text(&b);
    save(&id)?;
    Ok(id)
}

/// A UUID's text from its 16 bytes in RFC 4122 order.
fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The VMGS `VM_UNIQUE_ID` file (OpenVMM's layout, 20 bytes: the id as a Windows GUID,
/// whose first three fields are little-endian, then a `ported` byte and 3 zero bytes)
/// to and from RFC 4122 bytes.
fn guid_swap(b: &[u8; 16]) -> [u8; 16] {
    let mut g = *b;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

fn vm_id_from_vmgs(store: &vtpm::VmgsState) -> Result<Option<String>> {
    use vtpm::vmgs_state::FileId;
    match store.vmgs().read_file(FileId::VM_UNIQUE_ID) {
        Ok(d) => {
            let g: [u8; 16] = d
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .filter(|_| d.len() == 20)
                .ok_or_else(|| anyhow::anyhow!("the VMGS's VM_UNIQUE_ID is not 20 bytes"))?;
            Ok(Some(uuid_text(&guid_swap(&g))))
        }
        Err(vtpm::vmgs_state::VmgsError::NoSuchFile(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn vm_id_to_vmgs(store: &mut vtpm::VmgsState, id: &str) -> Result<()> {
    let mut b = [0u8; 16];
    hex::decode_to_slice(id.replace('-', ""), &mut b).context("the VM id")?;
    let mut file = guid_swap(&b).to_vec();
    file.extend_from_slice(&[0; 4]);
    store
        .vmgs_mut()
        .write_file(vtpm::vmgs_state::FileId::VM_UNIQUE_ID, &file, false)?;
    Ok(())
}

/// Reports from the emulated AMD secure processor, for a guest launched with the
/// default policy (no debug) and the given measurement, requested at VMPL 0 (where a
/// paravisor runs).
struct EmulatedSnp {
    platform: SnpPlatform,
    guest: snp_emu::guest::Guest,
}

impl EmulatedSnp {
    fn open(
        dir: &std::path::Path,
        measurement: Option<&str>,
        host_data: Option<&str>,
    ) -> Result<Self> {
        let platform =
            SnpPlatform::open_or_create(dir, PlatformConfig::new(snp::Product::Milan))
                .with_context(|| format!("opening the emulated SNP platform {}", dir.display()))?;
        let mut launch = LaunchConfig::default();
        if let Some(m) = measurement {
            let b = hex::decode(m.trim()).context("--launch-measurement is not hex")?;
            launch.measurement = b
                .try_into()
                .map_err(|_| anyhow::anyhow!("--launch-measurement must be 48 bytes"))?;
        }
        if let Some(h) = host_data {
            let b = hex::decode(h.trim()).context("--host-data is not hex")?;
            launch.host_data = b
                .try_into()
                .map_err(|_| anyhow::anyhow!("--host-data must be 32 bytes"))?;
        }
        let guest = platform.launch(launch)?;
        Ok(Self { platform, guest })
    }
}

impl ReportSource for EmulatedSnp {
    fn report(&mut self, report_data: &[u8; 64]) -> std::result::Result<[u8; 1184], String> {
        self.platform
            .get_report(&self.guest, report_data, 0)
            .map_err(|e| e.to_string())
    }
}

impl key_release::EvidenceSource for EmulatedSnp {
    fn snp_evidence(
        &mut self,
        report_data: &[u8; 64],
    ) -> std::result::Result<key_release::Evidence, String> {
        let report = self.report(report_data)?;
        Ok(key_release::Evidence {
            report: report.to_vec(),
            cert_chain_pem: self.platform.chain_pem(),
        })
    }
}
