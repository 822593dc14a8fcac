//! `cvm`: the opencvm command line. A thin layer over the libraries: it parses
//! arguments, reads files, calls the library and prints the result.

#![forbid(unsafe_code)]

mod attest_cmd;
mod boot_cmd;
mod control_cmd;
mod database;
mod disk_cmd;
mod evidence;
mod keyvault_cmd;
mod master_key;
mod platform;
mod snp_cmd;
mod vmgs_cmd;
mod vtpm_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// opencvm: confidential VMs on AMD SEV-SNP with attestation before boot.
#[derive(Parser, Debug)]
#[command(name = "cvm", version, about, long_about = None)]
struct Cli {
    /// How services and the vTPM write their log (stderr): `text`, or `json` (one
    /// object per line, with the request id of the request it belongs to). The level
    /// comes from CVM_LOG (error, warn, info, debug, trace; default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The log's format.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Installs the log subscriber: events of CVM_LOG's level and above to stderr (a
/// CVM_LOG that names no level is warned about and taken as info).
fn init_log(format: LogFormat) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match std::env::var("CVM_LOG") {
        Ok(v) => v.parse::<LevelFilter>().unwrap_or_else(|_| {
            eprintln!(
                "warning: CVM_LOG={v:?} is not a level (error, warn, info, debug, trace, \
                 off); logging at info"
            );
            LevelFilter::INFO
        }),
        Err(_) => LevelFilter::INFO,
    };
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect and verify SEV-SNP attestation evidence.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// The emulated AMD secure processor: platforms, reports, launch measurements.
    #[command(subcommand)]
    Snp(snp_cmd::SnpCommand),
    /// The attestation service: serve it, verify its tokens, manage its policies.
    #[command(subcommand)]
    Attest(attest_cmd::AttestCommand),
    /// The key vault service.
    #[command(subcommand)]
    Keyvault(keyvault_cmd::KeyvaultCommand),
    /// Keys in a key vault: create, import, show, list, delete, release, policies.
    #[command(subcommand)]
    Key(keyvault_cmd::KeyCommand),
    /// A VM's TPM 2.0 (libtpms), for QEMU and TPM software.
    #[command(subcommand)]
    Vtpm(vtpm_cmd::VtpmCommand),
    /// A VM's guest state file (VMGS): create, inspect, read and write its files, rekey.
    #[command(subcommand)]
    Vmgs(vmgs_cmd::VmgsCommand),
    /// LUKS2 disk images that cryptsetup and systemd open: encrypt, decrypt, inspect, add keys.
    #[command(subcommand)]
    Disk(disk_cmd::DiskCommand),
    /// Secure Boot: verify EFI images against db/dbx as firmware does, inspect shim.
    #[command(subcommand)]
    Boot(boot_cmd::BootCommand),
    /// TCG event logs: show the events, replay them to PCR values.
    #[command(subcommand)]
    Eventlog(boot_cmd::EventlogCommand),
    /// Run the platform on this machine: the control plane, a local tenant and
    /// emulated SNP hosts, on embedded defaults under one state directory.
    Up(control_cmd::UpArgs),
    /// The control plane service.
    #[command(subcommand)]
    Control(control_cmd::ControlCommand),
    /// Confidential VMs: create, list, show, events, delete.
    #[command(subcommand)]
    Vm(control_cmd::VmCommand),
    /// The confidential VM sizes.
    #[command(subcommand)]
    Size(control_cmd::SizeCommand),
    /// Regions and their SNP capacity.
    #[command(subcommand)]
    Region(control_cmd::RegionCommand),
    /// The OS image catalog and image artifacts.
    #[command(subcommand)]
    Image(control_cmd::ImageCommand),
    /// The price of a VM.
    Price(control_cmd::PriceArgs),
    /// Hosts (operator).
    #[command(subcommand)]
    Host(control_cmd::HostCommand),
    /// Tenants (operator).
    #[command(subcommand)]
    Tenant(control_cmd::TenantCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_log(cli.log_format);
    match cli.command {
        Command::Evidence(cmd) => evidence::run(cmd),
        Command::Snp(cmd) => snp_cmd::run(cmd),
        Command::Attest(cmd) => attest_cmd::run(cmd),
        Command::Keyvault(cmd) => keyvault_cmd::run(cmd),
        Command::Key(cmd) => keyvault_cmd::run_key(cmd),
        Command::Vtpm(cmd) => vtpm_cmd::run(cmd),
        Command::Vmgs(cmd) => vmgs_cmd::run(cmd),
        Command::Disk(cmd) => disk_cmd::run(cmd),
        Command::Boot(cmd) => boot_cmd::run(cmd),
        Command::Eventlog(cmd) => boot_cmd::run_eventlog(cmd),
        Command::Up(a) => control_cmd::up(a),
        Command::Control(cmd) => control_cmd::run(cmd),
        Command::Vm(cmd) => control_cmd::run_vm(cmd),
        Command::Size(cmd) => control_cmd::run_size(cmd),
        Command::Region(cmd) => control_cmd::run_region(cmd),
        Command::Image(cmd) => control_cmd::run_image(cmd),
        Command::Price(a) => control_cmd::run_price(a),
        Command::Host(cmd) => control_cmd::run_host(cmd),
        Command::Tenant(cmd) => control_cmd::run_tenant(cmd),
    }
}

/// How a service (or the vTPM) that could not start or stopped on an error ends: the
/// error in its log (so a JSON log stays JSON), exit status 2.
pub(crate) fn service_failed(e: &anyhow::Error) -> ExitCode {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{}", describe(e));
    } else {
        eprintln!("error: {}", describe(e));
    }
    ExitCode::from(2)
}

/// Something the operator must see (where a credential was written): in the log at
/// INFO, or on stderr as plain text when the log keeps less than that.
pub(crate) fn notice(msg: &str) {
    if tracing::enabled!(tracing::Level::INFO) {
        tracing::info!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// An error and its causes on one line, each joined by ": ", leaving out a cause
/// whose text is already there (library errors often carry their source's message in
/// their own).
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let s = c.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
