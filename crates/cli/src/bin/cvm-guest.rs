//! `cvm-guest`: the guest agent of an opencvm confidential VM (in its Debian image,
//! run by systemd at boot). See the `guest-agent` crate.

use std::io::{BufReader, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use guest_agent::evidence::Tpm;
use guest_agent::{Agent, Sources};

/// The guest agent: reports the VM's status to its host agent, attests with the VM's
/// own vTPM evidence, and answers the host's calls for fresh tokens.
#[derive(Parser, Debug)]
#[command(name = "cvm-guest", version)]
struct Args {
    /// The channel to the host agent (a virtio-serial port).
    #[arg(long, default_value_t = format!("/dev/virtio-ports/{}", guest_agent::wire::PORT_NAME))]
    port: String,
    /// The vTPM, as a tpm2-tools TCTI.
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    tcti: String,
    /// How long to wait for the port to appear, seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Scratch files.
    #[arg(long, default_value = "/run/cvm-guest")]
    work: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while !std::path::Path::new(&args.port).exists() {
        if Instant::now() > deadline {
            // A VM without the channel (the image booted elsewhere): nothing to do,
            // and nothing to start again.
            println!(
                "opencvm-guest: no channel to the host agent at {} (the VM has none)",
                args.port
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args.port)
        .with_context(|| args.port.clone())?;
    let reader = BufReader::new(port.try_clone().context("the port")?);
    let tpm = Tpm::new(&args.tcti, &args.work)?;
    let say = Box::new(|line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    Agent::new(reader, port, tpm, Sources::default(), say).run()?;
    Ok(())
}
