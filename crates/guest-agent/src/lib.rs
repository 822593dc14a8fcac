//! The guest agent of a confidential VM (`cvm-guest`, in the Debian image) and its
//! channel to the host agent.
//!
//! At boot the agent reports the guest's status to its host agent (kernel, Secure
//! Boot, whether its root is an open LUKS2 volume), then attests: it gathers the
//! guest's own evidence from its vTPM ([`evidence`]) and has the host agent relay it
//! to the VM's attestation provider, prints the token's main claims on the console
//! and reports it. Then it releases the keys the image's owner listed
//! ([`KeysConfig`]): secure key release inside the guest, each key wrapped by the
//! vault to a decryption key its vTPM holds ([`Agent::release`]). Later the host
//! agent may ask it for a fresh token ([`wire::Call::Token`]: what `cvm vm attest`
//! does for a VM with a guest).
//!
//! The guest reaches nothing but its host agent, and only through the channel
//! ([`wire`]): it has no network device. The host agent relays four calls, each to
//! the VM's own attestation provider, its own host's secure processor or the
//! platform's key vault.

#![forbid(unsafe_code)]

pub mod evidence;
pub mod wire;

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::evidence::{EncryptionKey, EvidenceError, Tpm};
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
    /// The keys to release at boot ([`KeysConfig`]).
    pub keys_config: PathBuf,
    /// Where released keys are written.
    pub keys_dir: PathBuf,
}

/// Where the image's owner names the keys to release at boot.
pub const KEYS_CONFIG: &str = "/etc/opencvm/keys.json";
/// The most keys [`KEYS_CONFIG`] may list.
pub const MAX_KEYS: usize = 16;
/// Where released keys go (a tmpfs: never on a disk).
pub const KEYS_DIR: &str = "/run/opencvm/keys";

/// The keys a guest releases at boot (`/etc/opencvm/keys.json`, on the VM's own
/// disk): `{"vault_signer": PEM_FILE, "keys": [{"name": N, "version": V}]}`. The
/// vault's release signing certificate is pinned here, in the guest's own files:
/// the host relays the vault's answers and must not be trusted to say who signed
/// them. Without `version` the host names the version released, and a host that
/// can import keys into the vault could name one of its own: pin a version (ADR
/// 0016).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The key vault's release signing certificate (a PEM file).
    pub vault_signer: PathBuf,
    /// The keys.
    pub keys: Vec<KeyRequest>,
}

/// One key to release.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Its name in the vault (letters, digits and `-`, at most 127).
    pub name: String,
    /// Its version (default: the newest).
    #[serde(default)]
    pub version: Option<String>,
}

impl KeysConfig {
    /// Parses and checks the file's text.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let c: KeysConfig = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if c.keys.len() > MAX_KEYS {
            return Err(format!(
                "{} keys (at most {MAX_KEYS}: each costs four calls of the host's relay)",
                c.keys.len()
            ));
        }
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 127
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        for k in &c.keys {
            if !ok(&k.name) || k.version.as_deref().is_some_and(|v| !ok(v)) {
                return Err(format!(
                    "key {:?}: names and versions are letters, digits and '-' (at most 127)",
                    k.name
                ));
            }
        }
        Ok(c)
    }
}

/// Writes a released key to `dir/name`, readable by root only.
fn write_key(dir: &std::path::Path, name: &str, material: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(material)?;
    Ok(path)
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            event_log: PathBuf::from(evidence::EVENT_LOG),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            sys: PathBuf::from("/sys"),
            os_release: PathBuf::from("/etc/os-release"),
            keys_config: PathBuf::from(KEYS_CONFIG),
            keys_dir: PathBuf::from(KEYS_DIR),
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
        self.token_with(user_data, None)
    }

    /// A token of the guest's own evidence naming `enc` (for a key release).
    fn token_with(
        &mut self,
        user_data: Option<&[u8; 64]>,
        enc: Option<&EncryptionKey>,
    ) -> Result<String, AttestError> {
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
        let request = evidence::azure_guest_request(
            &hcl,
            &chain,
            &quote,
            log.as_deref(),
            &nonce,
            &distro,
            enc,
        )?;
        Self::field(&self.call(Call::Attest { request })?, "token")
    }

    /// Secure key release of `key` inside the guest: a fresh decryption key in the
    /// vTPM, certified by its AK; a token of the guest's evidence naming it; the
    /// vault's answer through the host agent, checked against the pinned `signer`
    /// (DER; the host relays the answer and must not be able to forge one), the key in
    /// it unwrapped by the vTPM. Returns the version and the key.
    pub fn release(
        &mut self,
        signer: &[u8],
        key: &KeyRequest,
    ) -> Result<(String, keyvault::wrap::SecretBytes), AttestError> {
        let refused = |e: &dyn std::fmt::Display| AttestError::Refused(e.to_string());
        let enc = self.tpm.encryption_key("release")?;
        let token = self.token_with(None, Some(&enc))?;
        let mut n = [0u8; 16];
        aws_lc_rs::rand::fill(&mut n).map_err(|_| refused(&"no randomness"))?;
        let nonce = hex::encode(n);
        let mechanism = keyvault::wrap::WrapMechanism::RsaAesKeyWrap256;
        let answer = self.call(Call::Release {
            key: key.name.clone(),
            version: key.version.clone(),
            request: keyvault_api::ReleaseRequest {
                target: token,
                nonce: Some(nonce.clone()),
                enc: Some(mechanism.name().to_string()),
            },
        })?;
        let jws = Self::field(&answer, "value")?;
        let version = Self::field(&answer, "version")?;
        if key.version.as_ref().is_some_and(|v| *v != version) {
            return Err(refused(&format!(
                "the host answered version {version}, not the one asked for"
            )));
        }
        let hsm = key_release::checked_release(&jws, signer, &nonce, &key.name, &version)
            .map_err(|e| refused(&e))?;
        let hsm = keyvault::wrap::KeyHsm::parse(&hsm).map_err(|e| refused(&e))?;
        if hsm.mechanism() != mechanism {
            return Err(refused(&format!(
                "the key is wrapped with {}, not {}",
                hsm.mechanism().name(),
                mechanism.name()
            )));
        }
        let tpm = &self.tpm;
        let material = keyvault::wrap::unwrap_key_by(enc.modulus_len, hsm.ciphertext(), |c1| {
            tpm.decrypt(&enc, c1)
                .map_err(|_| keyvault::wrap::WrapError::UnwrapFailed)
        })
        .map_err(|e| refused(&e))?;
        Ok((version, material))
    }

    /// The releases [`KEYS_CONFIG`] asks for, each key written to
    /// `KEYS_DIR/NAME` (0600) and only its fingerprint said.
    fn release_configured(&mut self) -> Vec<wire::KeyReport> {
        let text = match std::fs::read(&self.sources.keys_config) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                (self.say)(&format!(
                    "opencvm-guest: {}: {e}",
                    self.sources.keys_config.display()
                ));
                return Vec::new();
            }
        };
        let config = match KeysConfig::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                (self.say)(&format!(
                    "opencvm-guest: {}: {e}",
                    self.sources.keys_config.display()
                ));
                return Vec::new();
            }
        };
        let signer = std::fs::read(&config.vault_signer)
            .map_err(|e| format!("{}: {e}", config.vault_signer.display()))
            .and_then(|pem| {
                snp::collateral::parse_pem_certificates(&pem)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("{}: no certificate", config.vault_signer.display()))
            });
        let mut reports = Vec::new();
        for key in &config.keys {
            let done = signer
                .clone()
                .map_err(AttestError::Refused)
                .and_then(|signer| self.release(&signer, key))
                .and_then(|(version, material)| {
                    write_key(&self.sources.keys_dir, &key.name, material.as_bytes())
                        .map(|path| (version, material, path))
                        .map_err(|e| AttestError::Refused(e.to_string()))
                });
            match done {
                Ok((version, material, path)) => {
                    let fp =
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material.as_bytes());
                    (self.say)(&format!(
                        "opencvm-guest: released key {} version {version} ({} bytes, fingerprint {}) to {}",
                        key.name,
                        material.len(),
                        hex::encode(&fp.as_ref()[..8]),
                        path.display()
                    ));
                    reports.push(wire::KeyReport {
                        name: key.name.clone(),
                        version: Some(version),
                        error: None,
                    });
                }
                Err(e) => {
                    (self.say)(&format!(
                        "opencvm-guest: key {} not released: {e}",
                        key.name
                    ));
                    reports.push(wire::KeyReport {
                        name: key.name.clone(),
                        version: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        reports
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
            keys: Vec::new(),
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
        let mut report = Report {
            stage: "attested".into(),
            ..started.clone()
        };
        self.send(&Message::Report { report: started })?;
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
                report.keys = self.release_configured();
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
                Call::Nonce | Call::Certs | Call::Attest { .. } | Call::Release { .. } => {
                    Err("the guest answers token calls only".to_string())
                }
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
    fn the_keys_file_is_checked() {
        let c = KeysConfig::parse(
            br#"{"vault_signer": "/etc/opencvm/s.pem", "keys": [{"name": "app-key"}, {"name": "k2", "version": "0a1b"}]}"#,
        )
        .unwrap();
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[1].version.as_deref(), Some("0a1b"));
        for bad in [
            &br#"{"vault_signer": "s", "keys": [{"name": "../etc/passwd"}]}"#[..],
            br#"{"vault_signer": "s", "keys": [{"name": ""}]}"#,
            br#"{"vault_signer": "s", "keys": [{"name": "a", "version": "1/2"}]}"#,
            br#"{"vault_signer": "s", "keys": [{"name": "a", "extra": 1}]}"#,
            br#"{"keys": []}"#,
        ] {
            assert!(
                KeysConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A released key is written for root only.
        let dir = std::env::temp_dir().join(format!("guest-agent-keys-{}", std::process::id()));
        let p = write_key(&dir, "k", b"secret").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
