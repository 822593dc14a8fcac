//! The guest agent of a confidential VM (`cvm-guest`, in the Debian image) and its
//! channel to the host agent.
//!
//! At boot the agent reports the guest's status to its host agent (kernel, Secure
//! Boot, whether its root is an open LUKS2 volume), then attests: it gathers the
//! guest's own evidence from its vTPM ([`evidence`]) and has the host agent relay it
//! to the VM's attestation provider, prints the token's main claims on the console
//! and reports it. Later the host agent may ask it for a fresh token
//! ([`wire::Call::Token`]: what `cvm vm attest` does for a VM with a guest).
//!
//! The guest reaches nothing but its host agent, and only through the channel
//! ([`wire`]): it has no network device. The host agent relays three calls, each to
//! the VM's own attestation provider or its own host's secure processor.

#![forbid(unsafe_code)]

pub mod evidence;
pub mod wire;

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::evidence::{EvidenceError, Tpm};
use crate::wire::{Call, Message, Report, RootDevice, WireError};

/// The agent's name and version, as it reports them.
pub const AGENT: &str = concat!("cvm-guest ", env!("CARGO_PKG_VERSION"));

/// The line the agent prints when the guest has attested (the boot's end, for the
/// console's stage and the benchmarks).
pub const READY_LINE: &str = "opencvm-guest: ready";

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The channel.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The host agent closed the channel.
    #[error("the host agent closed the channel")]
    Closed,
}

/// Why an attestation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The evidence.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The host agent, or the service behind it, refused.
    #[error("{0}")]
    Refused(String),
    /// The channel.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Where the agent finds what it reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The firmware's event log.
    pub event_log: PathBuf,
    /// The mount table.
    pub mountinfo: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// The OS release file.
    pub os_release: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            event_log: PathBuf::from(evidence::EVENT_LOG),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            sys: PathBuf::from("/sys"),
            os_release: PathBuf::from("/etc/os-release"),
        }
    }
}

/// The device under `/` from the mount table `mountinfo` and `sys`.
pub fn root_device(mountinfo: &str, sys: &std::path::Path) -> Option<RootDevice> {
    // Fields: id parent MAJOR:MINOR root mountpoint ...; the last mount of / wins.
    let device = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/")).then(|| f.get(2).map(|d| d.to_string()))?
        })
        .next_back()?;
    let dm = sys.join("dev/block").join(&device).join("dm");
    let read = |f: &str| {
        std::fs::read_to_string(dm.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let dm_uuid = read("uuid");
    Some(RootDevice {
        luks2: dm_uuid
            .as_deref()
            .is_some_and(|u| u.starts_with("CRYPT-LUKS2-")),
        dm_name: read("name"),
        dm_uuid,
        device,
    })
}

/// The firmware's `SecureBoot` variable under `sys`.
pub fn secure_boot(sys: &std::path::Path) -> Option<bool> {
    let v = std::fs::read(
        sys.join("firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
    )
    .ok()?;
    // Four bytes of attributes, then the value.
    v.get(4).map(|&b| b == 1)
}

/// The guest agent over one channel.
pub struct Agent<R, W> {
    reader: R,
    writer: W,
    tpm: Tpm,
    sources: Sources,
    next_id: u64,
    /// The host's calls that came while the agent waited for an answer.
    queued: VecDeque<(u64, Call)>,
    say: Box<dyn FnMut(&str)>,
}

impl<R: BufRead, W: Write> Agent<R, W> {
    /// An agent reading `reader` and writing `writer`, its evidence from `tpm` and
    /// `sources`, its console lines to `say`.
    pub fn new(
        reader: R,
        writer: W,
        tpm: Tpm,
        sources: Sources,
        say: Box<dyn FnMut(&str)>,
    ) -> Self {
        Agent {
            reader,
            writer,
            tpm,
            sources,
            next_id: 0,
            queued: VecDeque::new(),
            say,
        }
    }

    fn send(&mut self, m: &Message) -> Result<(), AgentError> {
        Ok(wire::write_message(&mut self.writer, m)?)
    }

    fn next(&mut self) -> Result<Message, AgentError> {
        wire::read_message(&mut self.reader)?.ok_or(AgentError::Closed)
    }

    /// Calls the host agent and waits for its answer (the host's own calls in the
    /// meantime wait their turn).
    fn call(&mut self, call: Call) -> Result<Value, AttestError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&Message::Request { id, call })?;
        loop {
            match self.next()? {
                Message::Response {
                    id: got, ok, error, ..
                } if got == id => {
                    return match (ok, error) {
                        (Some(v), None) => Ok(v),
                        (_, Some(e)) => Err(AttestError::Refused(e)),
                        (None, None) => Err(AttestError::Refused("an empty answer".into())),
                    };
                }
                Message::Request { id, call } => self.queued.push_back((id, call)),
                // A stale answer, or a report (the host sends none): passed over.
                _ => {}
            }
        }
    }

    fn field(v: &Value, name: &str) -> Result<String, AttestError> {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| AttestError::Refused(format!("the host agent's answer has no {name}")))
    }

    /// A token of the guest's own evidence, `user_data` in its report's claims.
    pub fn token(&mut self, user_data: Option<&[u8; 64]>) -> Result<String, AttestError> {
        let nonce = Self::field(&self.call(Call::Nonce)?, "nonce")?;
        let chain = Self::field(&self.call(Call::Certs)?, "chain")?;
        let hcl = self.tpm.report(user_data)?;
        let quote = self.tpm.quote(nonce.as_bytes())?;
        let log = std::fs::read(&self.sources.event_log).ok();
        let distro = std::fs::read_to_string(&self.sources.os_release)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_default();
        let request =
            evidence::azure_guest_request(&hcl, &chain, &quote, log.as_deref(), &nonce, &distro)?;
        Self::field(&self.call(Call::Attest { request })?, "token")
    }

    fn status(&self, stage: &str) -> Report {
        let mountinfo = std::fs::read_to_string(&self.sources.mountinfo).unwrap_or_default();
        Report {
            agent: AGENT.to_string(),
            stage: stage.to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            secure_boot: secure_boot(&self.sources.sys),
            root: root_device(&mountinfo, &self.sources.sys),
            token: None,
            error: None,
        }
    }

    /// Reports the guest's status, attests once, then answers the host's calls until
    /// the channel closes.
    pub fn run(mut self) -> Result<(), AgentError> {
        let started = self.status("started");
        match &started.root {
            Some(RootDevice {
                luks2: true,
                dm_name,
                ..
            }) => (self.say)(&format!(
                "opencvm-guest: the root file system is on the open LUKS2 volume {}",
                dm_name.as_deref().unwrap_or("?")
            )),
            Some(r) => (self.say)(&format!(
                "opencvm-guest: the root file system is on {} (not encrypted)",
                r.device
            )),
            None => (self.say)("opencvm-guest: the root file system's device is unknown"),
        }
        self.send(&Message::Report { report: started })?;
        let mut report = self.status("attested");
        match self.token(None) {
            Ok(token) => {
                let claims = evidence::token_claims(&token).unwrap_or_default();
                (self.say)(&format!(
                    "opencvm-guest: attested by {}: x-ms-attestation-type={} x-ms-azurevm-secureboot={} x-ms-azurevm-vmid={}",
                    claims["iss"].as_str().unwrap_or("?"),
                    claims["x-ms-attestation-type"],
                    claims["x-ms-azurevm-secureboot"],
                    claims["x-ms-azurevm-vmid"],
                ));
                report.token = Some(token);
                (self.say)(READY_LINE);
            }
            Err(AttestError::Agent(e)) => return Err(e),
            Err(e) => {
                (self.say)(&format!("opencvm-guest: attestation failed: {e}"));
                report.stage = "attestation_failed".into();
                report.error = Some(e.to_string());
            }
        }
        self.send(&Message::Report { report })?;
        loop {
            let (id, call) = match self.queued.pop_front() {
                Some(q) => q,
                None => match self.next()? {
                    Message::Request { id, call } => (id, call),
                    _ => continue,
                },
            };
            let answer = match call {
                Call::Token { user_data } => {
                    match parse_user_data(user_data.as_deref())
                        .and_then(|ud| self.token(ud.as_ref()).map_err(|e| e.to_string()))
                    {
                        Ok(token) => Ok(serde_json::json!({ "token": token })),
                        Err(e) => Err(e),
                    }
                }
                other => Err(format!("the guest answers no {other:?} call")),
            };
            let (ok, error) = match answer {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            self.send(&Message::Response { id, ok, error })?;
        }
    }
}

/// User data of a token call: at most 64 bytes as hex, zero-padded to 64.
pub fn parse_user_data(hex_text: Option<&str>) -> Result<Option<[u8; 64]>, String> {
    let Some(h) = hex_text else {
        return Ok(None);
    };
    let bytes = hex::decode(h).map_err(|e| format!("user data: {e}"))?;
    if bytes.len() > 64 {
        return Err(format!("user data of {} bytes (at most 64)", bytes.len()));
    }
    let mut out = [0u8; 64];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_device_is_found_and_judged() {
        let sys = std::env::temp_dir().join(format!("guest-agent-sys-{}", std::process::id()));
        let dm = sys.join("dev/block/254:0/dm");
        std::fs::create_dir_all(&dm).unwrap();
        std::fs::write(dm.join("uuid"), "CRYPT-LUKS2-0123abcd-root\n").unwrap();
        std::fs::write(dm.join("name"), "root\n").unwrap();
        let mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n\
                         1 0 254:0 / / rw,relatime - ext4 /dev/mapper/root rw\n";
        let r = root_device(mountinfo, &sys).unwrap();
        assert_eq!(r.device, "254:0");
        assert!(r.luks2);
        assert_eq!(r.dm_name.as_deref(), Some("root"));
        let clear = "1 0 253:2 / / rw - ext4 /dev/vda2 rw\n";
        let r = root_device(clear, &sys).unwrap();
        assert!(!r.luks2);
        assert_eq!(r.dm_uuid, None);
        assert!(root_device("22 1 0:21 / /proc rw - proc proc rw\n", &sys).is_none());
        std::fs::remove_dir_all(&sys).unwrap();
    }

    #[test]
    fn user_data_is_bounded_hex() {
        assert_eq!(parse_user_data(None).unwrap(), None);
        let ud = parse_user_data(Some("00ff")).unwrap().unwrap();
        assert_eq!(&ud[..2], &[0, 0xff]);
        assert!(ud[2..].iter().all(|&b| b == 0));
        assert!(parse_user_data(Some(&"ab".repeat(65))).is_err());
        assert!(parse_user_data(Some("xyz")).is_err());
    }
}
