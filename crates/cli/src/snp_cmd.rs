//! `cvm snp`: the emulated AMD secure processor.
//!
//! Exit status: 0 success, 1 the platform refused (SEV-SNP disabled, policy refused),
//! 2 usage or I/O errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use snp::Product;
use snp_emu::guest::{GuestError, KeySelect, LaunchConfig};
use snp_emu::platform::{MIN_SEED_LEN, Platform, PlatformConfig, PlatformError, pem};
use zeroize::Zeroizing;

/// `cvm snp` subcommands.
#[derive(Subcommand, Debug)]
pub enum SnpCommand {
    /// Create an emulated platform (chip identity, TCB, ARK/ASK/VCEK) in a directory.
    Create(CreateArgs),
    /// Show a platform's identity, TCB and certificates.
    Show(ShowArgs),
    /// Write the platform's roots (ASK, ASVK if a VLEK is loaded, ARK) and a fresh CRL
    /// of its ARK as one PEM file, for verifiers that pin this platform
    /// (`cvm attest serve --dangerously-trust-emulator-roots`).
    ExportRoots(ExportArgs),
    /// Write a fresh CRL of the platform's ARK (PEM), optionally revoking certificates.
    Crl(CrlArgs),
    /// Launch a guest and produce a signed attestation report (creates the platform
    /// on first use).
    Report(Box<ReportArgs>),
    /// Compute the SEV-SNP launch digest of an OVMF image as QEMU launches it.
    Measure(MeasureArgs),
}

/// Arguments of `cvm snp measure`.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The OVMF image (OVMF.fd, or AmdSev build for kernel hashes).
    #[arg(long)]
    ovmf: PathBuf,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// vCPU type, as QEMU's `-cpu` names it (EPYC-v4, EPYC-Milan, EPYC-Genoa, ...).
    #[arg(long)]
    vcpu_type: String,
    /// Kernel measured into the hashes table (direct boot).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd measured into the hashes table.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line measured into the hashes table.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// SEV features of the guest (VMSA sev_features), hex.
    #[arg(long, default_value = "0x1")]
    guest_features: String,
}

/// Arguments of `cvm snp create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The platform's state directory.
    #[arg(long)]
    platform: PathBuf,
    /// The product to emulate.
    #[arg(long, default_value = "Milan")]
    product: Product,
    /// DANGEROUS, for tests only: derive every key (chip identity and secret, VCEK,
    /// VLEK, derived keys, ARK, ASK, ASVK) from this seed, so anyone who knows it can
    /// forge this platform's evidence. HEX is the seed in hexadecimal (an optional 0x
    /// prefix), at least 16 bytes once decoded, that is at least 32 hex digits. The
    /// platform records `seeded: true` and `cvm snp show` says so.
    #[arg(long = "dangerously-seed", value_name = "HEX")]
    dangerously_seed: Option<String>,
    /// Emulate a host with SEV-SNP disabled (nothing launches there).
    #[arg(long)]
    snp_disabled: bool,
    /// The TCB: `bootloader=N,tee=N,snp=N,microcode=N` (and `fmc=N` on Turin); parts
    /// not named keep the product's default.
    #[arg(long)]
    tcb: Option<String>,
    /// The firmware version `major.minor.build`.
    #[arg(long)]
    firmware: Option<String>,
    /// Disable SMT on the platform.
    #[arg(long)]
    no_smt: bool,
    /// Enable transparent SME.
    #[arg(long)]
    tsme: bool,
    /// Enable ciphertext hiding.
    #[arg(long)]
    ciphertext_hiding: bool,
    /// Load a VLEK (with its ASVK), as a cloud provider would; reports are then
    /// signed with it unless `--key vcek` asks otherwise.
    #[arg(long)]
    vlek: bool,
}

/// Applies `--tcb` and `--firmware` to a configuration.
fn apply_tcb_and_firmware(
    config: &mut PlatformConfig,
    tcb: Option<&str>,
    firmware: Option<&str>,
) -> Result<()> {
    for part in tcb
        .into_iter()
        .flat_map(|t| t.split(','))
        .filter(|p| !p.trim().is_empty())
    {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--tcb part {part:?} is not name=value"))?;
        let value: u8 = value
            .trim()
            .parse()
            .with_context(|| format!("--tcb {name} is not 0..=255"))?;
        match name.trim() {
            "bootloader" => config.bootloader = value,
            "tee" => config.tee = value,
            "snp" => config.snp = value,
            "microcode" => config.microcode = value,
            "fmc" if config.product == Product::Turin => config.fmc = Some(value),
            other => anyhow::bail!("--tcb has no part {other:?} for {}", config.product),
        }
    }
    if let Some(fw) = firmware {
        let parts: Vec<u8> = fw
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("--firmware {fw:?} is not major.minor.build"))?;
        config.firmware = <[u8; 3]>::try_from(parts)
            .map_err(|_| anyhow::anyhow!("--firmware {fw:?} is not major.minor.build"))?;
    }
    Ok(())
}

/// Arguments of `cvm snp show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The platform's state directory.
    #[arg(long)]
    platform: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cvm snp export-roots`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The platform's state directory.
    #[arg(long)]
    platform: PathBuf,
    /// Where to write the PEM (ASK, ASVK, ARK, then the CRL).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `cvm snp crl`.
#[derive(Args, Debug)]
pub struct CrlArgs {
    /// The platform's state directory.
    #[arg(long)]
    platform: PathBuf,
    /// Where to write the CRL (PEM).
    #[arg(long)]
    out: PathBuf,
    /// Revoke the platform's ASK (and ASVK, if any): to test that verifiers refuse.
    #[arg(long)]
    revoke_ask: bool,
}

/// Arguments of `cvm snp report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The platform's state directory (created on first use).
    #[arg(long)]
    platform: PathBuf,
    /// The product, when the platform is created.
    #[arg(long, default_value = "Milan")]
    product: Product,
    /// REPORT_DATA: up to 64 bytes of hex (zero-padded).
    #[arg(long)]
    report_data: String,
    /// Where to write the 1184-byte report.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the VCEK, ASK and ARK as one PEM bundle.
    #[arg(long)]
    chain_out: Option<PathBuf>,
    /// The guest policy (hex).
    #[arg(long, default_value = "0x30000")]
    policy: String,
    /// The launch measurement (96 hex characters), as `cvm snp measure` prints it.
    #[arg(long)]
    measurement: Option<String>,
    /// HOST_DATA (64 hex characters).
    #[arg(long)]
    host_data: Option<String>,
    /// The VMPL the request comes from.
    #[arg(long, default_value_t = 0)]
    vmpl: u32,
    /// Which key signs: `default` (the VLEK if loaded, else the VCEK), `vcek`, `vlek`.
    #[arg(long, default_value = "default", value_parser = ["default", "vcek", "vlek"])]
    key: String,
}

/// Runs a `cvm snp` subcommand.
pub fn run(cmd: SnpCommand) -> ExitCode {
    let result = match cmd {
        SnpCommand::Create(a) => create(&a),
        SnpCommand::Show(a) => show(&a),
        SnpCommand::ExportRoots(a) => export(&a),
        SnpCommand::Crl(a) => crl(&a),
        SnpCommand::Report(a) => report(&a),
        SnpCommand::Measure(a) => measure(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            let refused = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<PlatformError>(),
                    Some(PlatformError::SnpDisabled)
                ) || matches!(
                    c.downcast_ref::<GuestError>(),
                    Some(GuestError::Policy(_) | GuestError::Platform(PlatformError::SnpDisabled))
                )
            });
            ExitCode::from(if refused { 1 } else { 2 })
        }
    }
}

fn hex_fixed<const N: usize>(what: &str, s: &str, pad: bool) -> Result<[u8; N]> {
    let s = s.trim().trim_start_matches("0x");
    let bytes = hex::decode(s).with_context(|| format!("{what} is not hex"))?;
    if bytes.len() > N || (!pad && bytes.len() != N) {
        anyhow::bail!(
            "{what} must be {} {N} bytes, got {}",
            if pad { "at most" } else { "exactly" },
            bytes.len()
        );
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok(out)
}

fn open(dir: &Path) -> Result<Platform> {
    Platform::open(dir).with_context(|| format!("opening platform {}", dir.display()))
}

fn create(a: &CreateArgs) -> Result<()> {
    let mut config = PlatformConfig::new(a.product);
    config.snp_enabled = !a.snp_disabled;
    config.smt = !a.no_smt;
    config.tsme = a.tsme;
    config.ciphertext_hiding = a.ciphertext_hiding;
    config.vlek = a.vlek;
    apply_tcb_and_firmware(&mut config, a.tcb.as_deref(), a.firmware.as_deref())?;
    let seed = a.dangerously_seed.as_deref().map(parse_seed).transpose()?;
    let p = Platform::create(&a.platform, config, seed.as_deref().map(|s| &s[..]))?;
    println!(
        "created emulated {} platform, chip id {}{}",
        a.product,
        hex::encode(p.chip_id()),
        if p.seeded() {
            " (seeded: every key follows from the seed; for tests only)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `--dangerously-seed`: hex (optional `0x`), at least [`MIN_SEED_LEN`] bytes decoded.
fn parse_seed(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let seed = Zeroizing::new(
        hex::decode(s.trim().trim_start_matches("0x")).context("--dangerously-seed is not hex")?,
    );
    if seed.len() < MIN_SEED_LEN {
        anyhow::bail!(
            "--dangerously-seed must be at least {MIN_SEED_LEN} bytes ({} hex digits), got {}",
            2 * MIN_SEED_LEN,
            seed.len()
        );
    }
    Ok(seed)
}

fn show(a: &ShowArgs) -> Result<()> {
    let p = open(&a.platform)?;
    let c = p.config();
    let out = json!({
        "emulated": true,
        "product": c.product.name(),
        "chip_id": hex::encode(p.chip_id()),
        "tcb": c.tcb(),
        "firmware": c.firmware_version().to_string(),
        "report_version": c.report_version,
        "snp_enabled": c.snp_enabled,
        "seeded": p.seeded(),
        "platform_info": format!("{:#x}", c.platform_info()),
        "certificates": {
            "vcek": pem("CERTIFICATE", p.vcek_der()),
            "ask": pem("CERTIFICATE", p.ask_der()),
            "ark": pem("CERTIFICATE", p.ark_der()),
        },
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("emulated {} platform (not AMD hardware)", c.product);
        println!("chip id:     {}", hex::encode(p.chip_id()));
        println!("tcb:         {}", c.tcb());
        println!("firmware:    {}", c.firmware_version());
        println!(
            "SEV-SNP:     {}",
            if c.snp_enabled { "enabled" } else { "disabled" }
        );
        println!(
            "seeded:      {}",
            if p.seeded() {
                "yes: every key follows from a test seed (DANGEROUS, tests only)"
            } else {
                "no"
            }
        );
    }
    Ok(())
}

fn export(a: &ExportArgs) -> Result<()> {
    let bundle = open(&a.platform)?.roots_pem()?;
    std::fs::write(&a.out, bundle).with_context(|| format!("writing {}", a.out.display()))
}

fn crl(a: &CrlArgs) -> Result<()> {
    let p = open(&a.platform)?;
    let mut revoked = Vec::new();
    if a.revoke_ask {
        for der in [Some(p.ask_der()), p.asvk_der()].into_iter().flatten() {
            revoked.push(snp::cert::AmdCert::from_der(der)?.serial().to_vec());
        }
    }
    let refs: Vec<&[u8]> = revoked.iter().map(Vec::as_slice).collect();
    let crl = pem("X509 CRL", &p.issue_crl(&refs)?);
    std::fs::write(&a.out, crl).with_context(|| format!("writing {}", a.out.display()))
}

fn report(a: &ReportArgs) -> Result<()> {
    let p = if a.platform.join("platform.json").exists() {
        open(&a.platform)?
    } else {
        Platform::create(&a.platform, PlatformConfig::new(a.product), None)?
    };
    let policy = u64::from_str_radix(a.policy.trim().trim_start_matches("0x"), 16)
        .context("--policy is not hex")?;
    let mut launch = LaunchConfig {
        policy,
        ..LaunchConfig::default()
    };
    if let Some(m) = &a.measurement {
        launch.measurement = hex_fixed("--measurement", m, false)?;
    }
    if let Some(h) = &a.host_data {
        launch.host_data = hex_fixed("--host-data", h, false)?;
    }
    let report_data: [u8; 64] = hex_fixed("--report-data", &a.report_data, true)?;
    let guest = p.launch(launch)?;
    let key = match a.key.as_str() {
        "vcek" => KeySelect::Vcek,
        "vlek" => KeySelect::Vlek,
        _ => KeySelect::Default,
    };
    let report = p.get_report_with(&guest, &report_data, a.vmpl, key)?;
    std::fs::write(&a.out, report).with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(chain) = &a.chain_out {
        // The chain of the key that signed (SIGNING_KEY, bits 4:2 of KEY_INFO).
        let vlek_signed = (report[0x48] >> 2) & 0x7 == 1;
        let pem = match (vlek_signed, p.vlek_chain_pem()) {
            (true, Some(vlek_chain)) => vlek_chain,
            _ => p.chain_pem(),
        };
        std::fs::write(chain, pem).with_context(|| format!("writing {}", chain.display()))?;
    }
    Ok(())
}

fn measure(a: &MeasureArgs) -> Result<()> {
    use snp_emu::ovmf::{MeasureOptions, VcpuType, measure_snp};
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let ovmf = read(&a.ovmf)?;
    let opts = MeasureOptions {
        vcpus: a.vcpus,
        vcpu_type: a.vcpu_type.parse::<VcpuType>()?,
        guest_features: u64::from_str_radix(a.guest_features.trim().trim_start_matches("0x"), 16)
            .context("--guest-features is not hex")?,
        kernel: a.kernel.as_deref().map(read).transpose()?,
        initrd: a.initrd.as_deref().map(read).transpose()?,
        append: a.append.clone(),
    };
    let digest =
        measure_snp(&ovmf, &opts).with_context(|| format!("measuring {}", a.ovmf.display()))?;
    println!("{}", hex::encode(digest));
    Ok(())
}
