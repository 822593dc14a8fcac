//! Boot claims read from a replayed event log: what a relying party learns about a
//! VM's Secure Boot and boot chain once the log matched PCR values from a verified
//! quote (the caller's duty; see `tcg_eventlog::EventLog::replay_check`).
//!
//! Only events whose digests are the hash of their data are read for variable
//! contents (configuration and authority events); boot applications are identified by
//! their digest (the Authenticode hash), which is what PCR 4 binds.

use serde::Serialize;
use tcg_eventlog::{EventLog, EventType, HashAlg as LogHash, UefiVariableData};

use crate::cert::Cert;
use crate::pe::HashAlg;

/// One authority event: a signature database entry that verified an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorityClaim {
    /// The variable it came from (`db`, `MokListRT`, `Shim`, `SbatLevel`, …).
    pub variable: String,
    /// Its vendor GUID.
    pub guid: String,
    /// The certificate's subject, when the entry is an X.509 certificate.
    pub subject: Option<String>,
    /// SHA-256 of the event data's variable content.
    pub sha256: String,
}

/// One boot application measured into PCR 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplicationClaim {
    /// Its Authenticode SHA-256 (the PCR 4 digest).
    pub sha256: String,
    /// The subject of the last certificate authority measured before it in the log:
    /// for shim boots, the db CA for shim and shim's vendor certificate for GRUB and
    /// the kernel (shim measures an authority once, so a later image verified by the
    /// same one has no event of its own). Inferred from the order of events across
    /// PCRs 4 and 7, which no quote binds: see [`from_log`].
    pub authority: Option<String>,
}

/// The claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootClaims {
    /// Secure Boot as measured (`None`: not determinable from the log).
    pub secure_boot: Option<bool>,
    /// SHA-256 of PK, KEK, db and dbx as measured (empty string: measured empty).
    pub variables: std::collections::BTreeMap<String, String>,
    /// The authority events in PCR 7, in order.
    pub authorities: Vec<AuthorityClaim>,
    /// The SBAT level shim measured, as text.
    pub sbat_level: Option<String>,
    /// Boot applications in load order.
    pub boot_applications: Vec<ApplicationClaim>,
    /// The kernel command line GRUB measured (PCR 8, `kernel_cmdline: …`).
    pub kernel_cmdline: Option<String>,
}

/// Reads the claims of `log`.
///
/// A log is bound only PCR by PCR (replay fixes the order of events within one PCR, not
/// across PCRs), and anyone who can extend a PCR after boot can append events that
/// replay. So: PK/KEK/db/dbx are read only from PCR 7's configuration events before its
/// separator, each from its first event; the SBAT level and the kernel command line
/// from their first event; authorities and applications are listed in full, in their
/// PCR's order, appended ones included. [`ApplicationClaim::authority`] pairs PCR 4
/// with PCR 7 by log order, which no quote binds: it describes the log, and a token
/// must not carry it (the attestation service does not).
pub fn from_log(log: &EventLog) -> BootClaims {
    let mut claims = BootClaims {
        secure_boot: log.boot_facts().secure_boot,
        ..BootClaims::default()
    };
    let mut last_authority: Option<String> = None;
    let mut pcr7_separated = false;
    for e in log.events().iter().filter(|e| e.is_extended()) {
        match (e.pcr, e.event_type) {
            (7, EventType::Separator) => pcr7_separated = true,
            (7, EventType::EfiVariableDriverConfig)
                if !pcr7_separated && e.digests_match_data() =>
            {
                if let Ok(v) = UefiVariableData::parse(&e.data)
                    && ["PK", "KEK", "db", "dbx"].contains(&v.name.as_str())
                    && !claims.variables.contains_key(&v.name)
                {
                    let digest = if v.data.is_empty() {
                        String::new()
                    } else {
                        hex::encode(HashAlg::Sha256.digest(&v.data))
                    };
                    claims.variables.insert(v.name, digest);
                }
            }
            (7, EventType::EfiVariableAuthority) if e.digests_match_data() => {
                let Ok(v) = UefiVariableData::parse(&e.data) else {
                    continue;
                };
                if v.name == "SbatLevel" && claims.sbat_level.is_none() {
                    claims.sbat_level = Some(String::from_utf8_lossy(&v.data).into_owned());
                }
                // An EFI_SIGNATURE_DATA (owner GUID, then a certificate, maybe padded),
                // or a bare certificate (some shims' `Shim` event).
                let subject = v
                    .data
                    .get(16..)
                    .and_then(|d| Cert::parse(crate::esl::x509_der(d)).ok())
                    .or_else(|| Cert::parse(&v.data).ok())
                    .map(|c| c.subject_name());
                // A signature-database authority that is not a certificate (an image
                // hash) ends the previous certificate's run; SbatLevel and other
                // non-database events do not.
                if subject.is_some() || v.name == "db" || v.name.starts_with("MokList") {
                    last_authority.clone_from(&subject);
                }
                claims.authorities.push(AuthorityClaim {
                    variable: v.name,
                    guid: v.guid.to_string(),
                    subject,
                    sha256: hex::encode(HashAlg::Sha256.digest(&v.data)),
                });
            }
            (4, EventType::EfiBootServicesApplication) => {
                if let Some(d) = e.digest(LogHash::Sha256) {
                    let sha256 = hex::encode(d);
                    // Loaders measured twice in a row (GRUB, then LoadImage) count once.
                    if claims.boot_applications.last().map(|a| &a.sha256) != Some(&sha256) {
                        claims.boot_applications.push(ApplicationClaim {
                            sha256,
                            authority: last_authority.clone(),
                        });
                    }
                }
            }
            // GRUB's digest is of the command line without its "kernel_cmdline: "
            // prefix: the claim is taken only when every digest matches that text.
            (8, EventType::Ipl) if claims.kernel_cmdline.is_none() => {
                let text = String::from_utf8_lossy(&e.data);
                if let Some(cmdline) = text.trim_end_matches('\0').strip_prefix("kernel_cmdline: ")
                    && !e.digests.is_empty()
                    && e.digests
                        .iter()
                        .all(|(alg, d)| alg.digest(cmdline.as_bytes()) == *d)
                {
                    claims.kernel_cmdline = Some(cmdline.to_string());
                }
            }
            _ => {}
        }
    }
    claims
}
