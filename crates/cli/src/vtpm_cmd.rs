//! `cvm vtpm run`: one VM's TPM 2.0 as a process of its own.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
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
    #[arg(long)]
    state: PathBuf,
    /// Data channel (swtpm) or command port (mssim): tcp:HOST:PORT (loopback only;
    /// port 0 picks a free pair) or unix:PATH.
    #[arg(long)]
    server: Option<String>,
    /// Control channel (swtpm) or platform port (mssim); default: the server's port
    /// plus one, as tpm2-tss's TCTIs expect.
    #[arg(long)]
    ctrl: Option<String>,
    /// Protocol.
    #[arg(long, value_enum, default_value = "swtpm")]
    protocol: ProtocolArg,
    /// Wait for CMD_INIT (or a simulator power-on) instead of starting the TPM at once.
    #[arg(long)]
    need_init: bool,
}

/// Runs a vtpm subcommand.
pub fn run(cmd: VtpmCommand) -> ExitCode {
    let r = match cmd {
        VtpmCommand::Run(a) => run_vtpm(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
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
    };
    let dir = StateDir::open(&a.state).context("opening the vTPM state")?;
    let mut engine = LibtpmsEngine::new(dir)?;
    if !a.need_init {
        engine
            .start(false)
            .context("starting the TPM from its state")?;
    }
    let server = Server::start(Vtpm::new(Box::new(engine)), config)?;
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
