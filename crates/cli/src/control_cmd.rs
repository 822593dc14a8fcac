//! `cvm up`, `cvm control serve` and the control plane's client commands: `cvm vm`,
//! `cvm size`, `cvm region`, `cvm image`, `cvm price`, `cvm host`, `cvm tenant`.
//!
//! A client command finds the control plane through `--state DIR` (what `cvm up`
//! wrote: `DIR/control.url`, the local tenant's credential `DIR/tenant.token`, the
//! operator's `DIR/control/operator.token`) or `--url`/`CVM_URL` with
//! `--credential-file`/`CVM_CREDENTIAL_FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use control_api::*;
use control_client::Client;

/// Where the control plane is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The state directory `cvm up` runs in (its URL and credentials are read from
    /// it). Or set CVM_STATE.
    #[arg(long, env = "CVM_STATE")]
    state: Option<PathBuf>,
    /// The control plane's base URL (instead of `--state`). Or set CVM_URL.
    #[arg(long, env = "CVM_URL")]
    url: Option<String>,
    /// A file holding the credential to present (with `--url`). Or set
    /// CVM_CREDENTIAL_FILE.
    #[arg(long, env = "CVM_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,
    /// Trust only these CA certificates (PEM) for HTTPS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Which of the state directory's credentials a command presents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum As {
    Tenant,
    Operator,
}

fn read_trimmed(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

impl Target {
    fn client(&self, who: As) -> Result<Client> {
        let ca = self
            .ca
            .as_ref()
            .map(std::fs::read)
            .transpose()
            .context("--ca")?;
        let agent = control_client::agent(ca.as_deref())?;
        let (url, cred) = match (&self.url, &self.state) {
            (Some(url), _) => {
                let file = self.credential_file.as_ref().context(
                    "--url needs --credential-file (or CVM_CREDENTIAL_FILE) with a credential",
                )?;
                (url.clone(), read_trimmed(file)?)
            }
            (None, Some(state)) => {
                let url_file = state.join(CONTROL_URL);
                let url = std::fs::read_to_string(&url_file)
                    .map(|u| u.trim().to_string())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "reading {}: {e} (is `cvm up --state {}` running?)",
                            url_file.display(),
                            state.display()
                        )
                    })?;
                let cred = match (who, &self.credential_file) {
                    (_, Some(f)) => read_trimmed(f)?,
                    (As::Tenant, None) => read_trimmed(&state.join(control::local::TENANT_TOKEN))?,
                    (As::Operator, None) => {
                        read_trimmed(&state.join("control").join(control::service::OPERATOR_TOKEN))?
                    }
                };
                (url, cred)
            }
            (None, None) => bail!(
                "where is the control plane? give --state DIR (what `cvm up` runs in) or --url URL with --credential-file"
            ),
        };
        Ok(Client::new(agent, &url, &cred))
    }
}

/// The file in the state directory that holds the control plane's URL while `cvm up`
/// runs.
pub const CONTROL_URL: &str = "control.url";

/// `cvm up`
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The state directory: everything the platform keeps (created 0700 if missing).
    #[arg(long, env = "CVM_STATE")]
    state: PathBuf,
    /// The control plane's address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: String,
    /// Emulated SNP hosts in the default region.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    hosts: u32,
    /// The firmware the emulated hosts measure into each VM's launch digest (Debian's
    /// `ovmf` package).
    #[arg(long, default_value = "/usr/share/ovmf/OVMF.fd")]
    ovmf: PathBuf,
    /// Where the hosts' agents run: `in-process` (this process runs every emulated
    /// host), or `external` (each host's agent is a `cvm host run` process that
    /// registers here; a VM on a host without one is not started).
    #[arg(long, value_enum, default_value_t = HostAgents::InProcess)]
    host_agents: HostAgents,
    /// What the emulated hosts run: `emulated` (the attested boot chain against the
    /// image, without a guest) or `qemu` (then the guest itself under QEMU, with
    /// OVMF's Secure Boot build, the VM's vTPM and a console; TCG without KVM).
    /// Default: new hosts `emulated`, existing ones as they were registered.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    #[command(flatten)]
    p: PlatformArgs,
}

/// `cvm up --backend`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The boot chain without a guest.
    Emulated,
    /// The guest under QEMU.
    Qemu,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Emulated => "emulated",
            Backend::Qemu => "qemu",
        }
    }
}

/// The firmware of `qemu` hosts' guests (Debian's `ovmf`), if it is installed;
/// required when `needed`.
fn qemu_firmware(needed: bool) -> Result<Option<host::qemu::Firmware>> {
    let code = Path::new(host::qemu::DEBIAN_CODE);
    let vars = Path::new(host::qemu::DEBIAN_VARS);
    if !(needed || (code.exists() && vars.exists())) {
        return Ok(None);
    }
    Ok(Some(host::qemu::Firmware::load(code, vars).context(
        "the qemu backend runs Debian's OVMF Secure Boot build (apt-get install ovmf qemu-system-x86 qemu-utils; scripts/setup installs them)",
    )?))
}

/// `cvm up --host-agents`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAgents {
    /// `cvm up` runs every host's agent.
    InProcess,
    /// Each host's agent runs as `cvm host run`.
    External,
}

/// What the control plane offers and where it keeps it (`cvm up`, `cvm control serve`).
#[derive(Args, Debug)]
pub struct PlatformArgs {
    /// The regions offered (comma-separated); default: the catalog's.
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// The region VMs go to when a request names none (and `cvm up`'s emulated hosts'
    /// region); default: the first of `--regions`.
    #[arg(long)]
    default_region: Option<String>,
    /// A price table (TOML) to use instead of the built-in one.
    #[arg(long)]
    price_table: Option<PathBuf>,
    /// The database: SQLite (default STATE/control.db; `cvm up`: STATE/control/) or a
    /// PostgreSQL URL that replicas share. Or set CVM_CONTROL_DATABASE.
    #[arg(long, env = "CVM_CONTROL_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// CA certificates (PEM) that host agents serving HTTPS (`cvm host run
    /// --tls-cert`) chain to; default: the Mozilla roots.
    #[arg(long)]
    agent_ca: Option<PathBuf>,
    /// Seconds a replica's lease on a VM's start lasts without renewal (it renews
    /// every third of it): a start whose replica died is taken over by another
    /// replica after that long.
    #[arg(long, default_value_t = control::DEFAULT_SAGA_LEASE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    saga_lease: u64,
}

/// `cvm control ...`
#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Run the control plane alone (HTTP); replicas share a PostgreSQL `--database`.
    /// Prints `listening on http://HOST:PORT` first.
    Serve(ServeArgs),
}

/// `cvm control serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: String,
    /// State directory (database by default, the operator's credential, images).
    #[arg(long)]
    state: PathBuf,
    #[command(flatten)]
    p: PlatformArgs,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`. Required to
    /// listen beyond loopback: credentials travel in every request.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Refuses a plain-HTTP listener beyond loopback: bearer credentials (the operator's
/// too) would cross the network in the clear.
fn require_loopback_or_tls(listen: &str, tls: bool) -> Result<()> {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !tls {
        bail!("{listen} is beyond loopback: serve HTTPS there (--tls-cert, --tls-key)");
    }
    Ok(())
}

fn config(state: &Path, p: &PlatformArgs) -> Result<control::ControlConfig> {
    let (regions, default_region, price_table, database) = (
        &p.regions,
        p.default_region.as_deref(),
        p.price_table.as_deref(),
        p.database.as_deref(),
    );
    let regions: Vec<String> = if regions.is_empty() {
        catalog::regions::defaults()
            .into_iter()
            .map(|r| r.name)
            .collect()
    } else {
        regions.to_vec()
    };
    let default_region = match default_region {
        Some(r) => r.to_string(),
        None => regions.first().cloned().context("--regions is empty")?,
    };
    let prices = match price_table {
        None => catalog::PriceTable::default_table(),
        Some(p) => catalog::PriceTable::parse(
            &std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?,
    };
    Ok(control::ControlConfig {
        state_dir: state.to_path_buf(),
        database: Some(crate::database::for_service(database, state, "control.db")?),
        regions,
        default_region,
        prices,
        agent_ca: p
            .agent_ca
            .as_ref()
            .map(|f| std::fs::read(f).with_context(|| format!("--agent-ca {}", f.display())))
            .transpose()?,
        replica: None,
        saga_lease: std::time::Duration::from_secs(p.saga_lease),
    })
}

/// `cvm up`'s name as a replica, kept in its state directory (`replica`): a restarted
/// `cvm up` resumes the starts it was running at once, as their holder.
fn up_replica(state: &Path) -> Result<String> {
    let path = state.join("replica");
    if let Ok(name) = std::fs::read_to_string(&path)
        && let name = name.trim()
        && !name.is_empty()
    {
        return Ok(name.to_string());
    }
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let name = format!("up-{}", hex::encode(b));
    let tmp = state.join("replica.new");
    std::fs::write(&tmp, format!("{name}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(name)
}

/// `cvm up`: the control plane with the local tenant and emulated hosts.
pub fn up(args: UpArgs) -> ExitCode {
    let r = (|| -> Result<()> {
        require_loopback_or_tls(&args.listen, false).context(
            "cvm up serves plain HTTP on loopback; for a fleet, run `cvm control serve` with TLS",
        )?;
        if !args.state.exists() {
            std::fs::create_dir_all(&args.state)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&args.state, std::fs::Permissions::from_mode(0o700))?;
        }
        // The database and the operator's credential: only this user reads them,
        // whatever the state directory's own mode.
        let control_dir = args.state.join("control");
        std::fs::create_dir_all(&control_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&control_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut cfg = config(&control_dir, &args.p)?;
        cfg.replica = Some(up_replica(&control_dir)?);
        let region = cfg.default_region.clone();
        let state = args.state.clone();
        let hosts = args.hosts;
        let url_file = state.join(CONTROL_URL);
        // A stale URL from an earlier run must not point clients at nothing.
        let _ = std::fs::remove_file(&url_file);
        let ovmf = std::fs::read(&args.ovmf).with_context(|| {
            format!(
                "reading the firmware {} (Debian's `ovmf` package; scripts/setup installs it)",
                args.ovmf.display()
            )
        })?;
        // Each emulated host's secure processor, and its roots for the attestation
        // service (hosts registered by an earlier run included).
        let hosts_dir = state.join("hosts");
        let mut names: Vec<String> = (1..=hosts).map(|i| format!("host-{i}")).collect();
        if let Ok(rd) = std::fs::read_dir(&hosts_dir) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str()
                    && e.path().join("snp").join("platform.json").exists()
                    && !names.iter().any(|m| m == n)
                {
                    names.push(n.to_string());
                }
            }
        }
        let mut roots = Vec::new();
        for n in &names {
            roots.push(host::EmulatedHosts::prepare(&hosts_dir, n)?);
        }
        let services = crate::platform::start(&state, &roots)?;
        let (attest_url, vault_url) =
            (services.attestation_url.clone(), services.vault_url.clone());
        let exe = std::env::current_exe().context("finding the cvm binary for vTPMs")?;
        let pre_encryption =
            host::pre_encryption::PreEncryptionService::new(&hosts_dir, &services.services)?;
        let firmware = qemu_firmware(args.backend == Some(Backend::Qemu))?;
        // This process runs every host's agent: none may run elsewhere meanwhile
        // (each lock is held until the process ends: its file stays open).
        if args.host_agents == HostAgents::InProcess {
            for n in &names {
                std::mem::forget(host::EmulatedHosts::lock_host(&hosts_dir, n)?);
            }
        }
        let agent = match args.host_agents {
            HostAgents::InProcess => {
                let a = host::EmulatedHosts::new(&hosts_dir, &exe, ovmf, services.services)?;
                Some(match firmware {
                    Some(fw) => a.with_qemu(fw),
                    None => a,
                })
            }
            HostAgents::External => None,
        };
        let backend = args.backend;
        httpd::run(&args.listen, None, move |_addr, base| {
            let fail = |e: String| httpd::ServeError::Service(e);
            let (c, _) = control::Control::open(cfg).map_err(|e| fail(e.to_string()))?;
            let local =
                control::local::prepare(&c, &state, hosts, &region, backend.map(Backend::name))
                    .map_err(|e| fail(e.message))?;
            if let Some(agent) = agent {
                c.set_agent(std::sync::Arc::new(agent));
            }
            c.set_pre_encryption(std::sync::Arc::new(pre_encryption));
            // VMs that were running when the platform stopped are `starting` before the
            // first request is answered, and boot again in the background.
            let again = c.interrupted().map_err(|e| fail(e.message))?;
            let c = std::sync::Arc::new(c);
            // Starts another replica on the same database left (it died) are taken
            // over.
            c.keep_sagas();
            if !again.is_empty() {
                let c = c.clone();
                std::thread::spawn(move || {
                    let n = c.resume(&again);
                    tracing::info!("{n} of {} VMs booted again after the restart", again.len());
                });
            }
            std::fs::write(&url_file, format!("{base}\n")).map_err(|e| fail(e.to_string()))?;
            let s = state.display();
            println!("ready: {base}");
            println!("  control plane    {base}  (API: openapi/control.json)");
            println!(
                "  hosts            {} (host-N: emulated AMD SEV-SNP secure processors in {region}{})",
                if local.hosts.is_empty() {
                    "none".to_string()
                } else {
                    local.hosts.join(", ")
                },
                match backend {
                    Some(Backend::Qemu) =>
                        "; backend qemu: the guests run under QEMU (TCG), memory not encrypted",
                    _ => "",
                }
            );
            println!(
                "  tenant           local  (administrator credential: {}/tenant.token)",
                s
            );
            println!("  operator         {s}/control/operator.token");
            println!("  attestation      {attest_url}  (JWKS: {attest_url}/certs)");
            println!(
                "  key vault        {vault_url}  (vault `platform`: the VMs' VMGS and disk keys, customer keys; administrator credential: {s}/secrets/platform-vault-admin.token)"
            );
            println!(
                "  pre-encryption   in-process  (encrypts a DiskWithVMGuestState VM's OS disk on create)"
            );
            match args.host_agents {
                HostAgents::InProcess => println!(
                    "  host agent       in this process: emulated launch, attestation, VMGS key release, vTPM, Secure Boot, disk unlock"
                ),
                HostAgents::External => println!(
                    "  host agents      external: run `cvm host run HOST --state {s}` for each host (VMs of a host without one are not started)"
                ),
            }
            println!("try:");
            println!("  cvm size list --state {s}");
            println!("  cvm image build debian-12 --state {s}");
            println!(
                "  cvm vm create my-vm --state {s} --size Standard_DC2as_v5 --image debian-12 --disk-encryption platform-key"
            );
            println!("  cvm vm start my-vm --state {s}");
            println!("  cvm vm attest my-vm --state {s}");
            println!("stop with Ctrl-C; a restart on the same --state finds everything as it was");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            Ok(control::server::router(c))
        })?;
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::service_failed(&e),
    }
}

/// The certificate chain and key to serve HTTPS with, when both are given.
fn tls_files(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Option<httpd::TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some(httpd::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    }
}

/// `cvm control ...`
pub fn run(cmd: ControlCommand) -> ExitCode {
    let ControlCommand::Serve(a) = cmd;
    let r = (|| -> Result<()> {
        let tls = tls_files(&a.tls_cert, &a.tls_key);
        require_loopback_or_tls(&a.listen, tls.is_some())?;
        let cfg = config(&a.state, &a.p)?;
        control::server::run_server(&a.listen, tls, cfg, |_addr, base, created| {
            println!("listening on {base}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            if let Some(p) = created {
                crate::notice(&format!("operator credential written to {}", p.display()));
            }
        })?;
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::service_failed(&e),
    }
}

// --- client commands ------------------------------------------------------------------

/// `--disk-encryption`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskEncryption {
    /// The OS disk encrypted before first boot, with a platform-managed key
    /// (`DiskWithVMGuestState`).
    PlatformKey,
    /// The OS disk encrypted with the customer key given by `--customer-key`
    /// (`DiskWithVMGuestState`).
    CustomerKey,
    /// Only the VM's guest state (VMGS) is encrypted (`VMGuestStateOnly`).
    None,
}

/// `cvm vm create`'s arguments: `az vm create`'s names where it has them.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The VM's name.
    name: String,
    /// The size (`cvm size list`).
    #[arg(long)]
    size: String,
    /// The image: a catalog id or its Azure URN (`cvm image list`).
    #[arg(long)]
    image: String,
    /// The region (default: the platform's default).
    #[arg(long, alias = "location")]
    region: Option<String>,
    /// OS disk encryption.
    #[arg(long, value_enum, default_value_t = DiskEncryption::PlatformKey)]
    disk_encryption: DiskEncryption,
    /// The customer key (a key of your key vault) for `--disk-encryption customer-key`.
    #[arg(long)]
    customer_key: Option<String>,
    /// Secure Boot (default true).
    #[arg(long, alias = "enable-secure-boot", action = clap::ArgAction::Set, default_value_t = true)]
    secure_boot: bool,
    /// The vTPM (a confidential VM always has it; false is refused).
    #[arg(long, action = clap::ArgAction::Set)]
    enable_vtpm: Option<bool>,
    /// The security type (default ConfidentialVM, the only one offered).
    #[arg(long, default_value = "ConfidentialVM")]
    security_type: String,
    /// The OS disk's size in GiB.
    #[arg(long)]
    os_disk_size_gb: Option<u32>,
    /// The attestation policy the VM's evidence must meet.
    #[arg(long)]
    attestation_policy: Option<String>,
    /// Host-side encryption (refused with an encrypted OS disk).
    #[arg(long)]
    encryption_at_host: bool,
    /// Accelerated networking (not supported by confidential VMs).
    #[arg(long)]
    accelerated_networking: bool,
    /// An ephemeral OS disk (not supported).
    #[arg(long)]
    ephemeral_os_disk: bool,
    /// A dedicated host group (not supported).
    #[arg(long)]
    host_group: Option<String>,
    /// A dedicated host (not supported).
    #[arg(long)]
    host: Option<String>,
    /// A scale set to join (not supported).
    #[arg(long)]
    vmss: Option<String>,
    /// An Azure Backup policy (not supported).
    #[arg(long)]
    backup_policy: Option<String>,
    /// Azure Site Recovery (not supported).
    #[arg(long)]
    site_recovery: bool,
    /// An Azure Batch pool (not supported).
    #[arg(long)]
    batch_pool: Option<String>,
    /// A shared data disk (not supported).
    #[arg(long)]
    shared_disk: bool,
    /// An ultra data disk (not supported).
    #[arg(long)]
    ultra_ssd_enabled: bool,
    #[command(flatten)]
    t: Target,
}

impl CreateArgs {
    fn request(&self) -> Result<CreateVmRequest> {
        let (enc, key) = match (self.disk_encryption, &self.customer_key) {
            (DiskEncryption::CustomerKey, None) => {
                bail!("--disk-encryption customer-key needs --customer-key KEY")
            }
            (DiskEncryption::CustomerKey, Some(k)) => ("DiskWithVMGuestState", Some(k.clone())),
            (DiskEncryption::PlatformKey, None) => ("DiskWithVMGuestState", None),
            // A key without disk encryption goes to the server, which explains why not.
            (DiskEncryption::None, k) => ("VMGuestStateOnly", k.clone()),
            (DiskEncryption::PlatformKey, Some(_)) => {
                bail!("--customer-key goes with --disk-encryption customer-key")
            }
        };
        let mut data_disks = Vec::new();
        if self.shared_disk {
            data_disks.push(DataDisk {
                max_shares: Some(2),
                ..Default::default()
            });
        }
        if self.ultra_ssd_enabled {
            data_disks.push(DataDisk {
                storage_account_type: Some("UltraSSD_LRS".into()),
                ..Default::default()
            });
        }
        Ok(CreateVmRequest {
            location: self.region.clone(),
            vm_size: self.size.clone(),
            image: self.image.clone(),
            security_profile: Some(SecurityProfile {
                security_type: Some(self.security_type.clone()),
                uefi_settings: Some(UefiSettings {
                    secure_boot_enabled: Some(self.secure_boot),
                    v_tpm_enabled: self.enable_vtpm,
                }),
                encryption_at_host: self.encryption_at_host.then_some(true),
            }),
            os_disk: Some(OsDisk {
                security_encryption_type: Some(enc.to_string()),
                customer_key: key,
                diff_disk_settings: self.ephemeral_os_disk.then(|| DiffDiskSettings {
                    option: "Local".into(),
                }),
                disk_size_gb: self.os_disk_size_gb,
            }),
            attestation_policy: self.attestation_policy.clone(),
            enable_accelerated_networking: self.accelerated_networking.then_some(true),
            host_group: self.host_group.clone(),
            host: self.host.clone(),
            virtual_machine_scale_set: self.vmss.clone(),
            data_disks: (!data_disks.is_empty()).then_some(data_disks),
            backup_policy: self.backup_policy.clone(),
            site_recovery: self.site_recovery.then_some(true),
            batch_pool: self.batch_pool.clone(),
        })
    }
}

/// `cvm vm ...`
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Create a confidential VM (validated, priced and placed on an SNP host).
    Create(Box<CreateArgs>),
    /// List your VMs.
    List(Target),
    /// Show a VM: state, host, security settings, price, last failure.
    Show(Named),
    /// Each step of a VM's life with its outcome and duration.
    Events(Named),
    /// The guest's serial console (a VM on a `qemu` host): its last 64 KiB, then with
    /// `--follow` what it prints next, until Ctrl-C. The boot stage it shows goes to
    /// stderr (`--json`: one object with the text and the stage).
    Console {
        /// The VM's name.
        name: String,
        /// Keep printing what the console prints.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        t: Target,
    },
    /// Start a VM: the attested boot on its host (launch through the secure
    /// processor, attestation, VMGS key release, vTPM, Secure Boot), each step shown
    /// as it ends. Exit 1 if the VM ends `failed` (the reason is shown).
    Start(Named),
    /// Stop a VM (its vTPM ends; its VMGS keeps its state).
    Stop(Named),
    /// Stop and start a VM.
    Restart(Named),
    /// A fresh attestation token of a running VM (a JWT, checkable against the
    /// attestation service's JWKS), its evidence binding the nonce.
    Attest {
        /// The VM's name.
        name: String,
        /// A nonce (hex, 1 to 64 bytes) the evidence binds; default: a random one.
        #[arg(long)]
        nonce: Option<String>,
        #[command(flatten)]
        t: Target,
    },
    /// Delete a VM (stopped first; its host's capacity is given back).
    Delete(Named),
    /// Capture an image from a VM (refused: confidential VMs do not support it).
    Capture(Named),
    /// Live-migrate a VM (refused: confidential VMs do not support it).
    Migrate(Named),
}

/// A command on one named VM.
#[derive(Args, Debug)]
pub struct Named {
    /// The VM's name.
    name: String,
    #[command(flatten)]
    t: Target,
}

/// `cvm size ...`
#[derive(Subcommand, Debug)]
pub enum SizeCommand {
    /// Every confidential VM size with its vCPUs, memory and temporary disk.
    List(Target),
}

/// `cvm region ...`
#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Every region, with whether it has SNP hosts and their free vCPUs.
    List(Target),
}

/// `cvm image ...`
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// The image catalog, with each entry's Secure Boot template and artifact.
    List(Target),
    /// Build a catalog entry's disk image from its distribution's signed packages
    /// (`debian-12`: Debian's shim, GRUB and kernel, a debootstrapped root; needs a
    /// Debian 12 machine and root or sudo) and import it (operator). The image is kept
    /// in a cache and reused.
    Build {
        /// The catalog id (`debian-12`).
        id: String,
        /// Where built images are kept (default: $XDG_CACHE_HOME/opencvm/images or
        /// ~/.cache/opencvm/images).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Build again even if the cache holds the image.
        #[arg(long)]
        rebuild: bool,
        /// Only build (into the cache); do not import.
        #[arg(long)]
        no_import: bool,
        #[command(flatten)]
        t: Target,
    },
    /// Import a raw GPT disk image as a catalog entry's artifact (operator). Its boot
    /// loader must pass Secure Boot under the entry's template.
    Import {
        /// The catalog id (`debian-12`).
        id: String,
        /// The disk image (on the control plane's machine).
        file: PathBuf,
        #[command(flatten)]
        t: Target,
    },
}

/// `cvm price`
#[derive(Args, Debug)]
pub struct PriceArgs {
    /// The size.
    #[arg(long)]
    size: String,
    /// The region (default: the platform's default).
    #[arg(long)]
    region: Option<String>,
    /// The image (its OS decides the licence).
    #[arg(long)]
    image: Option<String>,
    /// OS disk encryption (an encrypted disk costs more: it cannot be compressed).
    #[arg(long, value_enum, default_value_t = DiskEncryption::PlatformKey)]
    disk_encryption: DiskEncryption,
    /// The OS disk's size in GiB.
    #[arg(long)]
    os_disk_size_gb: Option<u32>,
    #[command(flatten)]
    t: Target,
}

/// `cvm host ...` (operator)
#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Every host with its capacity and what its VMs hold.
    List(Target),
    /// Register a host (or change what it offers).
    Add {
        /// Its name.
        name: String,
        /// Its region.
        #[arg(long)]
        region: String,
        /// vCPUs it offers.
        #[arg(long, default_value_t = 112)]
        vcpus: u32,
        /// Memory it offers, GiB.
        #[arg(long, default_value_t = 768)]
        memory_gib: u32,
        /// Most VMs.
        #[arg(long, default_value_t = 32)]
        max_vms: u32,
        /// Whether SEV-SNP is enabled in its firmware.
        #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
        snp_enabled: bool,
        /// `emulated` or `hardware`.
        #[arg(long, default_value = "emulated")]
        backend: String,
        #[command(flatten)]
        t: Target,
    },
    /// Run a host's agent: it serves the attested boot of the VMs placed on the host
    /// (HTTP, for the control plane), registers with the control plane, and prints
    /// `ready: agent of HOST at URL` once registered. Stopping it (or kill -9) ends
    /// its VMs' vTPMs; at its next start the control plane boots them again.
    Run(HostRunArgs),
}

/// `cvm host run`
#[derive(Args, Debug)]
pub struct HostRunArgs {
    /// The host (`cvm up --hosts N` provisions host-1 ... host-N's emulated secure
    /// processors, whose roots its attestation service trusts).
    name: String,
    /// The agent's address (port 0 picks a free port). Beyond loopback it must serve
    /// HTTPS (`--tls-cert`, `--tls-key`): its credential travels in every request.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`. The control
    /// plane checks it against its `--agent-ca`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The host name or address the control plane reaches the agent by (its
    /// certificate's name), with the port it listens on; default: the address it
    /// listens on.
    #[arg(long)]
    advertise: Option<String>,
    /// The firmware measured into each VM's launch digest (Debian's `ovmf` package).
    #[arg(long, default_value = "/usr/share/ovmf/OVMF.fd")]
    ovmf: PathBuf,
    /// The control plane to register with (`--state`: the platform's state directory,
    /// whose services and hosts' storage the agent uses; `--url` with an operator's
    /// `--credential-file`: a replica to register with instead).
    #[command(flatten)]
    t: Target,
}

/// `cvm tenant ...` (operator)
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant; prints its administrator credential (shown once).
    Create {
        /// Its name.
        name: String,
        /// The most vCPUs its VMs may hold at once (default 512).
        #[arg(long)]
        max_vcpus: Option<u32>,
        #[command(flatten)]
        t: Target,
    },
}

/// Prints `v` as JSON, or `text(v)`.
/// A reader that stops reading (`cvm size list | head`) ends the output quietly.
fn out<T: serde::Serialize>(t: &Target, v: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    use std::io::Write;
    let s = if t.json {
        serde_json::to_string_pretty(v)? + "\n"
    } else {
        text(v)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// A refusal: its code and message (and every refusal of a create) on stderr, or its
/// JSON body on stdout with `--json`; exit 1. A transport failure: exit 2.
fn finish(t: Option<&Target>, r: Result<()>) -> ExitCode {
    let Err(e) = r else { return ExitCode::SUCCESS };
    if let Some(ce) = e.downcast_ref::<control_client::ClientError>()
        && let (Some(code), Some(status)) = (ce.code(), ce.status())
    {
        if t.is_some_and(|t| t.json) {
            if let Some(body) = ce.body() {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            }
        } else {
            let detail = ce
                .body()
                .and_then(|b| b["error"]["detail"]["refusals"].as_array().cloned());
            match detail {
                Some(all) if all.len() > 1 => {
                    eprintln!("refused ({status}):");
                    for r in all {
                        eprintln!(
                            "  {} [{}]: {}",
                            r["code"].as_str().unwrap_or_default(),
                            r["target"].as_str().unwrap_or_default(),
                            r["message"].as_str().unwrap_or_default()
                        );
                    }
                }
                _ => eprintln!(
                    "refused ({status} {code}): {}",
                    ce.body()
                        .map(|b| b["error"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string())
                        .unwrap_or_default()
                ),
            }
        }
        return ExitCode::from(1);
    }
    eprintln!("error: {}", crate::describe(&e));
    if let Some(state) = t.and_then(|t| t.state.as_ref())
        && e.downcast_ref::<control_client::ClientError>().is_some()
    {
        eprintln!(
            "(is `cvm up --state {}` running? Its URL is in {})",
            state.display(),
            state.join(CONTROL_URL).display()
        );
    }
    ExitCode::from(2)
}

fn money(v: f64) -> String {
    format!("{v:.4}")
}

/// One event as `cvm vm events` and the start progress show it.
fn event_line(ev: &control_api::VmEvent) -> String {
    format!(
        "{:>3} {:<20} {:<13} {:>6} ms  {}\n",
        ev.seq, ev.step, ev.outcome, ev.duration_ms, ev.detail
    )
}

/// `cvm vm start|stop|restart`: the request runs on a thread while new events are
/// shown on stderr as they are recorded; then the VM. Exit 1 when it ends `failed`.
fn lifecycle(n: &Named, op: &'static str) -> ExitCode {
    with_progress(&n.t, &n.name, true, move |c, name| match op {
        "start" => c.start_vm(name),
        "stop" => c.stop_vm(name),
        _ => c.restart_vm(name),
    })
}

/// Runs `call` (a long request about VM `name`) while its new events are shown on
/// stderr as they are recorded, then prints the VM; exit 1 when it ends `failed`.
/// `exists`: the VM has events already (not a create).
fn with_progress(
    t: &Target,
    name: &str,
    exists: bool,
    call: impl FnOnce(&Client, &str) -> std::result::Result<Vm, api_client::ClientError>
    + Send
    + 'static,
) -> ExitCode {
    let r = (|| -> Result<bool> {
        let c = std::sync::Arc::new(t.client(As::Tenant)?);
        let seen = if exists {
            c.vm_events(name)?.value.last().map_or(0, |e| e.seq)
        } else {
            0
        };
        let (owned, worker) = (name.to_string(), c.clone());
        let call = std::thread::spawn(move || call(&worker, &owned));
        let mut shown = seen;
        let mut show = |c: &Client| {
            if let Ok(e) = c.vm_events(name) {
                let from = shown;
                for ev in e.value.iter().filter(|e| e.seq > from) {
                    eprint!("{}", event_line(ev));
                    shown = ev.seq;
                }
            }
        };
        while !call.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(150));
            show(&c);
        }
        let mut vm = call
            .join()
            .map_err(|_| anyhow::anyhow!("the request thread panicked"))??;
        show(&c);
        // A create answers `creating` while the OS disk is pre-encrypted in the
        // background: wait for it, showing its steps.
        while vm.state == control_api::VmState::Creating {
            std::thread::sleep(std::time::Duration::from_millis(200));
            show(&c);
            vm = c.get_vm(name)?;
        }
        show(&c);
        out(t, &vm, vm_text)?;
        // A create fails only by its own step (an existing VM is returned as it is).
        Ok(vm.state == control_api::VmState::Failed
            && (exists
                || vm
                    .last_failure
                    .as_ref()
                    .is_some_and(|f| f.step == "disk_pre_encryption")))
    })();
    match r {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(e) => finish(Some(t), Err(e)),
    }
}

fn vm_text(v: &Vm) -> String {
    let s = &v.security;
    let mut o = format!(
        "{}  {}\n  id          {}\n  size        {} in {}\n  image       {} (Secure Boot template {})\n  host        {}\n  security    {}, Secure Boot {}, vTPM on, {} with a {}-managed key{}\n  attestation policy {}\n  price       {} {}/hour, {} {}/month in all\n",
        v.name,
        v.state.name(),
        v.id,
        v.vm_size,
        v.location,
        v.image,
        s.secure_boot_template,
        v.host.as_deref().unwrap_or("-"),
        s.security_type,
        if s.secure_boot_enabled { "on" } else { "off" },
        s.security_encryption_type,
        s.key_management,
        s.customer_key
            .as_deref()
            .map(|k| format!(" ({k})"))
            .unwrap_or_default(),
        s.attestation_policy,
        money(v.price.compute_per_hour),
        v.price.currency,
        money(v.price.total_per_month),
        v.price.currency,
    );
    if let Some(f) = &v.last_failure {
        o.push_str(&format!(
            "  last failure  {} ({}): {}\n",
            f.step, f.code, f.reason
        ));
    }
    o
}

fn quote_text(q: &PriceQuote) -> String {
    let mut o = format!(
        "{} in {} ({}): {} {}/hour compute; {} {}/month in all ({} hours)\n",
        q.vm_size,
        q.location,
        q.os_type,
        money(q.compute_per_hour),
        q.currency,
        money(q.total_per_month),
        q.currency,
        q.hours_per_month
    );
    for l in &q.lines {
        o.push_str(&format!(
            "  {:<18} {:>10} {} {}  [{}; {}]\n",
            l.item,
            money(l.amount),
            q.currency,
            l.unit,
            l.as_of,
            l.source
        ));
    }
    o.push_str(
        "prices are the platform's table (illustrative defaults unless the operator replaced it)\n",
    );
    o
}

/// `cvm vm ...`
pub fn run_vm(cmd: VmCommand) -> ExitCode {
    match cmd {
        VmCommand::Create(a) => {
            let req = match a.request() {
                Ok(r) => r,
                Err(e) => return finish(Some(&a.t), Err(e)),
            };
            // A create with pre-encryption takes a while: its steps are shown.
            with_progress(&a.t, &a.name, false, move |c, name| c.create_vm(name, &req))
        }
        VmCommand::List(t) => {
            let r = (|| {
                let l = t.client(As::Tenant)?.list_vms()?;
                out(&t, &l, |l| {
                    let mut o = format!(
                        "{:<24} {:<9} {:<22} {:<10} {:<20} {}\n",
                        "NAME", "STATE", "SIZE", "REGION", "ENCRYPTION", "HOST"
                    );
                    for v in &l.value {
                        o.push_str(&format!(
                            "{:<24} {:<9} {:<22} {:<10} {:<20} {}\n",
                            v.name,
                            v.state.name(),
                            v.vm_size,
                            v.location,
                            v.security.security_encryption_type,
                            v.host.as_deref().unwrap_or("-")
                        ));
                    }
                    o
                })
            })();
            finish(Some(&t), r)
        }
        VmCommand::Show(n) => {
            let r = (|| {
                let c = n.t.client(As::Tenant)?;
                let vm = c.get_vm(&n.name)?;
                out(&n.t, &vm, vm_text)
            })();
            finish(Some(&n.t), r)
        }
        VmCommand::Events(n) => {
            let r = (|| {
                let e = n.t.client(As::Tenant)?.vm_events(&n.name)?;
                out(&n.t, &e, |e| {
                    let mut o = String::new();
                    for ev in &e.value {
                        o.push_str(&event_line(ev));
                    }
                    o
                })
            })();
            finish(Some(&n.t), r)
        }
        VmCommand::Console { name, follow, t } => {
            let r = (|| -> Result<()> {
                use std::io::Write;
                let c = t.client(As::Tenant)?;
                let first = c.vm_console(&name)?;
                if t.json {
                    return out(&t, &first, |_| String::new());
                }
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(first.text.as_bytes())?;
                stdout.flush()?;
                // The console's whole output printed so far, in bytes.
                let mut printed = first.offset + first.text.len() as u64;
                let mut stage = first.stage;
                crate::notice(&format!("{name}: boot stage {stage}"));
                if !follow {
                    return Ok(());
                }
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    let now = c.vm_console(&name)?;
                    let end = now.offset + now.text.len() as u64;
                    if end < printed {
                        // The console started again (the VM was deleted and made anew).
                        printed = now.offset;
                    }
                    if now.offset > printed {
                        writeln!(
                            stdout,
                            "\n[... {} bytes not shown ...]",
                            now.offset - printed
                        )?;
                        printed = now.offset;
                    }
                    let mut skip = usize::try_from(printed - now.offset).unwrap_or(usize::MAX);
                    while skip < now.text.len() && !now.text.is_char_boundary(skip) {
                        skip += 1;
                    }
                    if let Some(new) = now.text.get(skip..) {
                        stdout.write_all(new.as_bytes())?;
                        stdout.flush()?;
                    }
                    printed = printed.max(end);
                    if now.stage != stage {
                        crate::notice(&format!("{name}: boot stage {}", now.stage));
                        stage = now.stage.clone();
                    }
                }
            })();
            finish(Some(&t), r)
        }
        VmCommand::Start(n) => lifecycle(&n, "start"),
        VmCommand::Stop(n) => lifecycle(&n, "stop"),
        VmCommand::Restart(n) => lifecycle(&n, "restart"),
        VmCommand::Attest { name, nonce, t } => {
            let r = (|| {
                let c = t.client(As::Tenant)?;
                let a = c.attest_vm(&name, &control_api::AttestVmRequest { nonce })?;
                out(&t, &a, |a| format!("{}\n", a.token))
            })();
            finish(Some(&t), r)
        }
        VmCommand::Delete(n) => {
            let r = (|| {
                n.t.client(As::Tenant)?.delete_vm(&n.name)?;
                out(&n.t, &serde_json::json!({"deleted": n.name}), |_| {
                    format!("deleted {}\n", n.name)
                })
            })();
            finish(Some(&n.t), r)
        }
        VmCommand::Capture(n) => {
            let r = (|| Ok(n.t.client(As::Tenant)?.capture_vm(&n.name)?))();
            finish(Some(&n.t), r)
        }
        VmCommand::Migrate(n) => {
            let r = (|| Ok(n.t.client(As::Tenant)?.migrate_vm(&n.name)?))();
            finish(Some(&n.t), r)
        }
    }
}

/// `cvm size ...`
pub fn run_size(cmd: SizeCommand) -> ExitCode {
    let SizeCommand::List(t) = cmd;
    let r = (|| {
        let l = t.client(As::Tenant)?.list_sizes()?;
        out(&t, &l, |l| {
            let mut o = format!(
                "{:<22} {:<8} {:>5} {:>8} {:>9} {}\n",
                "NAME", "SERIES", "VCPUS", "MEM GiB", "TEMP GiB", ""
            );
            for s in &l.value {
                o.push_str(&format!(
                    "{:<22} {:<8} {:>5} {:>8} {:>9} {}\n",
                    s.name,
                    s.series,
                    s.v_cpus,
                    s.memory_gib,
                    s.temp_disk_gib.map_or("-".to_string(), |g| g.to_string()),
                    if s.isolated {
                        "isolated (whole host)"
                    } else {
                        ""
                    }
                ));
            }
            o
        })
    })();
    finish(Some(&t), r)
}

/// `cvm region ...`
pub fn run_region(cmd: RegionCommand) -> ExitCode {
    let RegionCommand::List(t) = cmd;
    let r = (|| {
        let l = t.client(As::Tenant)?.list_regions()?;
        out(&t, &l, |l| {
            let mut o = format!(
                "{:<20} {:<6} {:>5} {:>10}\n",
                "REGION", "SNP", "HOSTS", "FREE VCPUS"
            );
            for r in &l.value {
                o.push_str(&format!(
                    "{:<20} {:<6} {:>5} {:>10}\n",
                    r.name,
                    if r.snp_available { "yes" } else { "no" },
                    r.hosts,
                    r.free_v_cpus
                ));
            }
            o
        })
    })();
    finish(Some(&t), r)
}

fn images_text(l: &ImageList) -> String {
    let mut o = format!(
        "{:<22} {:<8} {:<10} {}\n",
        "IMAGE", "OS", "TEMPLATE", "ARTIFACT"
    );
    for i in &l.value {
        let art = match (&i.artifact, i.buildable) {
            (Some(a), _) => format!(
                "{} bytes, sha256 {}",
                a.bytes,
                a.sha256.get(..16).unwrap_or_default()
            ),
            (None, true) => format!("none (cvm image build {})", i.id),
            (None, false) => format!("none (cvm image import {} FILE)", i.id),
        };
        o.push_str(&format!(
            "{:<22} {:<8} {:<10} {}\n",
            i.id, i.os_type, i.secure_boot_template, art
        ));
    }
    o
}

/// `cvm image ...`
pub fn run_image(cmd: ImageCommand) -> ExitCode {
    match cmd {
        ImageCommand::List(t) => {
            let r = (|| {
                let l = t.client(As::Tenant)?.list_images()?;
                out(&t, &l, images_text)
            })();
            finish(Some(&t), r)
        }
        ImageCommand::Build {
            id,
            cache,
            rebuild,
            no_import,
            t,
        } => {
            let r = (|| {
                let built = build_image(&id, cache, rebuild)?;
                if no_import {
                    return out(&t, &built, |b| {
                        format!(
                            "built {} ({} bytes, sha256 {})\n",
                            b.path.display(),
                            b.bytes,
                            b.sha256
                        )
                    });
                }
                let i = t.client(As::Operator)?.import_image(
                    &id,
                    &ImportImageRequest {
                        path: built.path.display().to_string(),
                    },
                )?;
                out(&t, &i, |i| {
                    format!(
                        "built and imported {}: {} bytes, sha256 {}\n  from {}\n",
                        i.id,
                        i.artifact.as_ref().map_or(0, |a| a.bytes),
                        i.artifact
                            .as_ref()
                            .map(|a| a.sha256.as_str())
                            .unwrap_or_default(),
                        built.packages.join(", ")
                    )
                })
            })();
            finish(Some(&t), r)
        }
        ImageCommand::Import { id, file, t } => {
            let r = (|| {
                let path =
                    std::fs::canonicalize(&file).with_context(|| format!("{}", file.display()))?;
                let i = t.client(As::Operator)?.import_image(
                    &id,
                    &ImportImageRequest {
                        path: path.display().to_string(),
                    },
                )?;
                out(&t, &i, |i| {
                    format!(
                        "imported {}: {} bytes, sha256 {}\n",
                        i.id,
                        i.artifact.as_ref().map_or(0, |a| a.bytes),
                        i.artifact
                            .as_ref()
                            .map(|a| a.sha256.as_str())
                            .unwrap_or_default()
                    )
                })
            })();
            finish(Some(&t), r)
        }
    }
}

/// Builds `id` into the cache (or finds it there): the image and its manifest
/// (`ID.json`, what [`os_image::Built`] records).
fn build_image(id: &str, cache: Option<PathBuf>, rebuild: bool) -> Result<os_image::Built> {
    if id != "debian-12" {
        match catalog::images::find(id) {
            Some(_) => bail!(
                "the platform cannot build {id}: import its disk with `cvm image import {id} FILE`"
            ),
            None => bail!("{id} is not in the image catalog (`cvm image list`)"),
        }
    }
    let dir = match cache {
        Some(d) => d,
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .context("no cache directory: give --cache")?
            .join("opencvm/images"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let image = dir.join(format!("{id}.img"));
    let manifest = dir.join(format!("{id}.json"));
    // The guest agent goes into the image: the one built beside this cvm, and an
    // image with another version of it is built again.
    let guest_agent = std::env::current_exe()
        .context("this program's path")?
        .with_file_name("cvm-guest");
    let guest_agent_version = format!("cvm-guest {}", env!("CARGO_PKG_VERSION"));
    if !rebuild
        && image.exists()
        && let Ok(text) = std::fs::read(&manifest)
        && let Ok(built) = serde_json::from_slice::<os_image::Built>(&text)
        && built.path == image
        && built.recipe == os_image::RECIPE
        && built.guest_agent == guest_agent_version
    {
        eprintln!(
            "using the cached {} (--rebuild builds it again)",
            image.display()
        );
        return Ok(built);
    }
    let _ = std::fs::remove_file(&manifest);
    let work = dir.join(format!(".{id}.work"));
    let built = os_image::build_debian_12(&image, &work, &guest_agent, &mut |step| {
        eprintln!("build: {step}")
    })?;
    std::fs::write(&manifest, serde_json::to_vec_pretty(&built)?)?;
    Ok(built)
}

/// `cvm price`
pub fn run_price(a: PriceArgs) -> ExitCode {
    let r = (|| {
        let req = PriceRequest {
            vm_size: a.size.clone(),
            location: a.region.clone(),
            image: a.image.clone(),
            security_encryption_type: Some(
                match a.disk_encryption {
                    DiskEncryption::None => "VMGuestStateOnly",
                    _ => "DiskWithVMGuestState",
                }
                .to_string(),
            ),
            os_disk_size_gb: a.os_disk_size_gb,
        };
        let q = a.t.client(As::Tenant)?.quote_price(&req)?;
        out(&a.t, &q, quote_text)
    })();
    finish(Some(&a.t), r)
}

/// `cvm host run`: one host's agent as a process of its own.
fn host_run(a: HostRunArgs) -> ExitCode {
    let r = (|| -> Result<()> {
        let tls = tls_files(&a.tls_cert, &a.tls_key);
        require_loopback_or_tls(&a.listen, tls.is_some())?;
        if let Some(h) = &a.advertise
            && (h.is_empty() || h.contains(['/', '?', '#', '@', ' ']))
        {
            bail!("--advertise {h:?}: a host name or address (the port is the one it listens on)");
        }
        let state = a.t.state.clone().context(
            "--state DIR: the platform's state directory (its services, credentials and hosts' storage)",
        )?;
        let hosts_dir = state.join("hosts");
        if !hosts_dir
            .join(&a.name)
            .join("snp")
            .join("platform.json")
            .exists()
        {
            bail!(
                "host {}'s emulated secure processor is not provisioned in {}: `cvm up --hosts N` provisions host-1 ... host-N (and its attestation service trusts their roots)",
                a.name,
                hosts_dir.display()
            );
        }
        let ovmf = std::fs::read(&a.ovmf).with_context(|| {
            format!(
                "reading the firmware {} (Debian's `ovmf` package)",
                a.ovmf.display()
            )
        })?;
        let services = crate::platform::connect(&state)?;
        // Held until the process ends (the file stays open).
        std::mem::forget(host::EmulatedHosts::lock_host(&hosts_dir, &a.name)?);
        let exe = std::env::current_exe().context("finding the cvm binary for vTPMs")?;
        // Its host's disks are pre-encrypted here too (the control plane asks it).
        let pre_encryption =
            host::pre_encryption::PreEncryptionService::new(&hosts_dir, &services)?;
        let agent = host::EmulatedHosts::new(&hosts_dir, &exe, ovmf, services)?;
        let agent = match qemu_firmware(false)? {
            Some(fw) => agent.with_qemu(fw),
            None => agent,
        };
        let credential = host::server::new_credential()?;
        let control = a.t.client(As::Operator)?;
        let name = a.name.clone();
        let presented = credential.clone();
        let advertise = a.advertise.clone();
        httpd::run(&a.listen, tls, move |addr, base| {
            // Registered once it serves: the control plane asks it at once which VMs
            // still run.
            let url = match &advertise {
                Some(h) => {
                    let scheme = base.split_once("://").map_or("http", |(s, _)| s);
                    let h = if h.contains(':') && !h.starts_with('[') {
                        format!("[{h}]")
                    } else {
                        h.clone()
                    };
                    format!("{scheme}://{h}:{}", addr.port())
                }
                None if addr.ip().is_unspecified() => {
                    return Err(httpd::ServeError::Service(format!(
                        "listening on {addr}: give --advertise with the name the control plane reaches this host by"
                    )));
                }
                None => base.clone(),
            };
            std::thread::spawn(move || {
                let req = control_api::RegisterAgentRequest {
                    url: url.clone(),
                    credential: presented.to_string(),
                };
                let mut tries = 0;
                loop {
                    match control.register_host_agent(&name, &req) {
                        Ok(_) => {
                            println!("ready: agent of {name} at {url}");
                            use std::io::Write;
                            let _ = std::io::stdout().flush();
                            return;
                        }
                        Err(e) if tries < 20 && e.status().is_none() => {
                            tries += 1;
                            crate::notice(&format!(
                                "registering with the control plane: {e}; trying again"
                            ));
                            std::thread::sleep(std::time::Duration::from_millis(500));
                        }
                        Err(e) => {
                            crate::notice(&format!("registering with the control plane: {e}"));
                            std::process::exit(1);
                        }
                    }
                }
            });
            Ok(host::server::router(
                &a.name,
                credential,
                std::sync::Arc::new(agent),
                Some(std::sync::Arc::new(pre_encryption)),
            ))
        })?;
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::service_failed(&e),
    }
}

/// `cvm host ...`
pub fn run_host(cmd: HostCommand) -> ExitCode {
    match cmd {
        HostCommand::Run(a) => host_run(a),
        HostCommand::List(t) => {
            let r = (|| {
                let l = t.client(As::Operator)?.list_hosts()?;
                out(&t, &l, |l| {
                    let mut o = format!(
                        "{:<16} {:<12} {:<4} {:<9} {:>11} {:>13} {:>7}  AGENT\n",
                        "HOST", "REGION", "SNP", "BACKEND", "VCPUS", "MEM GiB", "VMS"
                    );
                    for h in &l.value {
                        o.push_str(&format!(
                            "{:<16} {:<12} {:<4} {:<9} {:>5}/{:<5} {:>6}/{:<6} {:>3}/{:<3}  {}\n",
                            h.name,
                            h.region,
                            if h.snp_enabled { "on" } else { "off" },
                            h.backend,
                            h.used_v_cpus,
                            h.v_cpus,
                            h.used_memory_gib,
                            h.memory_gib,
                            h.vms,
                            h.max_vms,
                            h.agent.as_deref().unwrap_or("-")
                        ));
                    }
                    o
                })
            })();
            finish(Some(&t), r)
        }
        HostCommand::Add {
            name,
            region,
            vcpus,
            memory_gib,
            max_vms,
            snp_enabled,
            backend,
            t,
        } => {
            let r = (|| {
                let h = t.client(As::Operator)?.register_host(
                    &name,
                    &RegisterHostRequest {
                        region,
                        v_cpus: vcpus,
                        memory_gib,
                        max_vms,
                        snp_enabled,
                        backend,
                    },
                )?;
                out(&t, &h, |h| {
                    format!(
                        "host {} in {}: {} vCPUs, {} GiB, {} VMs, SNP {}\n",
                        h.name,
                        h.region,
                        h.v_cpus,
                        h.memory_gib,
                        h.max_vms,
                        if h.snp_enabled { "on" } else { "off" }
                    )
                })
            })();
            finish(Some(&t), r)
        }
    }
}

/// `cvm tenant ...`
pub fn run_tenant(cmd: TenantCommand) -> ExitCode {
    let TenantCommand::Create { name, max_vcpus, t } = cmd;
    let r = (|| {
        let c = t.client(As::Operator)?.create_tenant(
            &name,
            &CreateTenantRequest {
                max_v_cpus: max_vcpus,
            },
        )?;
        // The credential is the output: it is shown once.
        out(&t, &c, |c| format!("{}\n", c.credential))
    })();
    finish(Some(&t), r)
}
