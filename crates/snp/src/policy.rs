//! Appraisal policy: which verified reports are acceptable.
//!
//! Kept apart from the cryptographic checks in [`crate::verify`]: a policy only sees
//! a [`VerifiedReport`]. Policies are typed and load from TOML or JSON; unknown keys
//! and malformed values are load errors, never ignored.
//!
//! Defaults (ADR 0007 says why): debugging and a migration agent are refused; a
//! migration agent is accepted only with `allow_migration_agent = true` *and* the
//! agent's REPORT_ID_MA pinned in `allowed_report_id_ma`; VMPL 0 is required of a
//! paravisor (HCL) report unless `vmpl` says otherwise ([`Policy::for_hcl`]);
//! provisional firmware (COMMITTED_TCB ≠ CURRENT_TCB) is accepted unless
//! `allow_provisional_firmware = false`. Every other rule that is absent allows
//! everything, and [`Policy::unchecked`] names what was therefore not checked.
//!
//! ```toml
//! allowed_measurements = ["<96 hex chars>"]
//! min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # fmc too on Turin
//! min_launch_tcb = { snp = 8 }
//! min_firmware_api = "1.55"          # CURRENT major.minor
//! min_firmware_build = 21            # CURRENT build
//! allow_provisional_firmware = true
//! min_guest_svn = 1
//! vmpl = 0
//! allow_debug = false
//! allow_migration_agent = false
//! allowed_report_id_ma = ["<64 hex chars>"]
//! allow_smt = true
//! report_data = "<128 hex chars>"
//! allowed_id_key_digests = ["<96 hex chars>"]
//! allowed_author_key_digests = ["<96 hex chars>"]
//! required_platform_info = ["tsme_enabled"]
//! require_revocation_check = false
//! ```

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::tcb::TcbVersion;
use crate::verify::VerifiedReport;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading policy {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not a valid policy.
    #[error("invalid policy: {0}")]
    Invalid(String),
}

/// A byte string of exactly `N` bytes, written as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|e| {
            serde::de::Error::custom(format!("expected {} hex characters ({e})", N * 2))
        })?;
        Ok(HexBytes(out))
    }
}

/// Minimum security patch level per TCB component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// Boot loader.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS (TEE).
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware.
    #[serde(default)]
    pub snp: u8,
    /// Microcode.
    #[serde(default)]
    pub microcode: u8,
    /// FMC (applies to Turin reports only).
    #[serde(default)]
    pub fmc: u8,
}

/// Names of `PLATFORM_INFO` flags a policy may require.
pub const PLATFORM_FLAGS: [&str; 7] = [
    "smt_enabled",
    "tsme_enabled",
    "ecc_enabled",
    "rapl_disabled",
    "ciphertext_hiding_enabled",
    "alias_check_complete",
    "tio_enabled",
];

fn yes() -> bool {
    true
}

/// A firmware API version `major.minor`, written as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("{s:?} is not MAJOR.MINOR (e.g. \"1.55\")"));
        let (a, b) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(ApiVersion {
            major: a.parse().map_err(|_| bad())?,
            minor: b.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An appraisal policy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Launch measurements that are accepted; absent accepts any.
    #[serde(default)]
    pub allowed_measurements: Option<Vec<HexBytes<48>>>,
    /// Minimum REPORTED_TCB, component by component.
    #[serde(default)]
    pub min_tcb: Option<MinTcb>,
    /// Minimum LAUNCH_TCB (the TCB when the guest was launched), component by component.
    #[serde(default)]
    pub min_launch_tcb: Option<MinTcb>,
    /// Minimum firmware API version (CURRENT_MAJOR.CURRENT_MINOR).
    #[serde(default)]
    pub min_firmware_api: Option<ApiVersion>,
    /// Minimum firmware build (CURRENT_BUILD).
    #[serde(default)]
    pub min_firmware_build: Option<u8>,
    /// Accept provisional firmware: CURRENT_TCB differs from COMMITTED_TCB, or the
    /// current firmware version from the committed one (default: yes).
    #[serde(default = "yes")]
    pub allow_provisional_firmware: bool,
    /// Minimum guest SVN.
    #[serde(default)]
    pub min_guest_svn: Option<u32>,
    /// The VMPL the report must have been requested from.
    #[serde(default)]
    pub vmpl: Option<u32>,
    /// Accept guests whose policy allows debugging (default: no).
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent (default: no). Needs
    /// `allowed_report_id_ma`.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// The migration agents (their REPORT_ID_MA) a guest may be associated with.
    #[serde(default)]
    pub allowed_report_id_ma: Option<Vec<HexBytes<32>>>,
    /// Accept guests whose policy allows SMT (default: yes).
    #[serde(default = "yes")]
    pub allow_smt: bool,
    /// The exact REPORT_DATA expected.
    #[serde(default)]
    pub report_data: Option<HexBytes<64>>,
    /// ID key digests accepted; absent accepts any (including none).
    #[serde(default)]
    pub allowed_id_key_digests: Option<Vec<HexBytes<48>>>,
    /// Author key digests accepted; absent accepts any (including none).
    #[serde(default)]
    pub allowed_author_key_digests: Option<Vec<HexBytes<48>>>,
    /// PLATFORM_INFO flags that must be set (names from [`PLATFORM_FLAGS`]).
    #[serde(default)]
    pub required_platform_info: Vec<String>,
    /// Require that the chain was checked against AMD's CRL (default: no).
    #[serde(default)]
    pub require_revocation_check: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_measurements: None,
            min_tcb: None,
            min_launch_tcb: None,
            min_firmware_api: None,
            min_firmware_build: None,
            allow_provisional_firmware: true,
            min_guest_svn: None,
            vmpl: None,
            allow_debug: false,
            allow_migration_agent: false,
            allowed_report_id_ma: None,
            allow_smt: true,
            report_data: None,
            allowed_id_key_digests: None,
            allowed_author_key_digests: None,
            required_platform_info: Vec::new(),
            require_revocation_check: false,
        }
    }
}

/// One rule a report breaks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Stable code, such as `policy.debug`.
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl Policy {
    /// Parses a policy from TOML or JSON text (JSON if it starts with `{`).
    pub fn from_str_any(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Loads a policy file (TOML, or JSON by content).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_str_any(&text)
    }

    /// This policy as applied to a paravisor (HCL) report: VMPL 0 is required unless
    /// the policy names a VMPL (the paravisor runs at VMPL 0 and the guest above it;
    /// a report from a higher VMPL was requested by the guest OS, not the paravisor
    /// that bound the vTPM keys into it).
    pub fn for_hcl(&self) -> Policy {
        let mut p = self.clone();
        if p.vmpl.is_none() {
            p.vmpl = Some(0);
        }
        p
    }

    /// The checks this policy does not make, by name (`measurement`, `freshness`,
    /// `revocation`, ...), for verdicts to list. `freshness` is never checked by the
    /// policy itself: it comes from a nonce bound into REPORT_DATA or a quote.
    pub fn unchecked(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.allowed_measurements.is_none() {
            out.push("measurement");
        }
        if self.report_data.is_none() {
            out.push("report_data");
        }
        if self.min_tcb.is_none() {
            out.push("min_tcb");
        }
        if self.allowed_id_key_digests.is_none() && self.allowed_author_key_digests.is_none() {
            out.push("id_key");
        }
        out
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.allow_migration_agent && self.allowed_report_id_ma.is_none() {
            return Err(PolicyError::Invalid(
                "allow_migration_agent = true needs allowed_report_id_ma: the migration agents' REPORT_ID_MA a guest may be bound to".into(),
            ));
        }
        if let Some(v) = self.vmpl
            && v > 3
        {
            return Err(PolicyError::Invalid(format!("vmpl must be 0..=3, got {v}")));
        }
        for flag in &self.required_platform_info {
            if !PLATFORM_FLAGS.contains(&flag.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "unknown platform_info flag {flag:?} (known: {})",
                    PLATFORM_FLAGS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The rules `verified` breaks; empty means accepted.
    pub fn evaluate(&self, verified: &VerifiedReport) -> Vec<Violation> {
        let r = verified.report();
        let mut out = Vec::new();
        let mut fail = |code: &'static str, message: String| out.push(Violation { code, message });
        let p = r.policy();
        if p.debug() && !self.allow_debug {
            fail("policy.debug", "guest policy allows debugging".into());
        }
        if p.migrate_ma() {
            match (&self.allowed_report_id_ma, self.allow_migration_agent) {
                (Some(list), true) => {
                    if !list.iter().any(|m| &m.0 == r.report_id_ma()) {
                        fail(
                            "policy.migration_agent",
                            format!(
                                "REPORT_ID_MA {} is not an allowed migration agent",
                                hex::encode(r.report_id_ma())
                            ),
                        );
                    }
                }
                _ => fail(
                    "policy.migration_agent",
                    "guest policy allows a migration agent".into(),
                ),
            }
        }
        if !self.allow_provisional_firmware
            && (r.current_tcb() != r.committed_tcb()
                || r.current_firmware() != r.committed_firmware())
        {
            fail(
                "policy.provisional_firmware",
                format!(
                    "firmware is provisional: CURRENT_TCB {} / {} differs from COMMITTED_TCB {} / {}",
                    r.current_tcb(),
                    r.current_firmware(),
                    r.committed_tcb(),
                    r.committed_firmware()
                ),
            );
        }
        let fw = r.current_firmware();
        if let Some(min) = self.min_firmware_api {
            let have = ApiVersion {
                major: fw.major,
                minor: fw.minor,
            };
            if have < min {
                fail(
                    "policy.firmware_api",
                    format!("firmware API version {have} < {min}"),
                );
            }
        }
        if let Some(min) = self.min_firmware_build
            && fw.build < min
        {
            fail(
                "policy.firmware_build",
                format!("firmware build {} < {min}", fw.build),
            );
        }
        if let Some(min) = &self.min_launch_tcb
            && let Some(low) = below(r.launch_tcb(), min)
        {
            fail(
                "policy.launch_tcb",
                format!("LAUNCH_TCB below minimum: {low}"),
            );
        }
        if p.smt() && !self.allow_smt {
            fail("policy.smt", "guest policy allows SMT".into());
        }
        if let Some(list) = &self.allowed_measurements
            && !list.iter().any(|m| &m.0 == r.measurement())
        {
            fail(
                "policy.measurement",
                format!(
                    "measurement {} is not allowed",
                    hex::encode(r.measurement())
                ),
            );
        }
        if let Some(min) = &self.min_tcb
            && let Some(low) = below(r.reported_tcb(), min)
        {
            fail("policy.tcb", format!("REPORTED_TCB below minimum: {low}"));
        }
        if let Some(min) = self.min_guest_svn
            && r.guest_svn() < min
        {
            fail(
                "policy.guest_svn",
                format!("guest SVN {} < {min}", r.guest_svn()),
            );
        }
        if let Some(vmpl) = self.vmpl
            && r.vmpl() != vmpl
        {
            fail(
                "policy.vmpl",
                format!("report is from VMPL {}, policy requires {vmpl}", r.vmpl()),
            );
        }
        if let Some(rd) = &self.report_data
            && &rd.0 != r.report_data()
        {
            fail(
                "policy.report_data",
                "REPORT_DATA differs from the expected value".into(),
            );
        }
        if let Some(list) = &self.allowed_id_key_digests
            && !list.iter().any(|d| &d.0 == r.id_key_digest())
        {
            fail(
                "policy.id_key",
                format!(
                    "ID key digest {} is not allowed",
                    hex::encode(r.id_key_digest())
                ),
            );
        }
        if let Some(list) = &self.allowed_author_key_digests
            && !list.iter().any(|d| &d.0 == r.author_key_digest())
        {
            fail(
                "policy.author_key",
                format!(
                    "author key digest {} is not allowed",
                    hex::encode(r.author_key_digest())
                ),
            );
        }
        if self.require_revocation_check && !verified_revocation_checked(verified) {
            fail(
                "policy.revocation",
                "the chain was not checked against a CRL and the policy requires it".into(),
            );
        }
        let flags = r.platform_info().flags();
        for want in &self.required_platform_info {
            if !flags.iter().any(|(name, set)| name == want && *set) {
                fail(
                    "policy.platform_info",
                    format!("platform_info flag {want} is not set"),
                );
            }
        }
        out
    }
}

fn verified_revocation_checked(v: &VerifiedReport) -> bool {
    v.revocation().is_checked()
}

/// The components of `t` below `min`, described, or `None`.
fn below(t: TcbVersion, min: &MinTcb) -> Option<String> {
    let mut low = Vec::new();
    for (name, have, want) in [
        ("bootloader", t.bootloader(), min.bootloader),
        ("tee", t.tee(), min.tee),
        ("snp", t.snp(), min.snp),
        ("microcode", t.microcode(), min.microcode),
    ] {
        if have < want {
            low.push(format!("{name} {have} < {want}"));
        }
    }
    if let Some(fmc) = t.fmc()
        && fmc < min.fmc
    {
        low.push(format!("fmc {fmc} < {}", min.fmc));
    }
    (!low.is_empty()).then(|| low.join(", "))
}

/// Loads `data` as a policy: the body of the `policy` fuzz target.
pub fn fuzz_policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::from_str_any(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_forbid_debug_and_migration_agents() {
        let p = Policy::from_str_any("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(!p.allow_debug && p.allow_smt && !p.allow_migration_agent);
        assert!(p.allow_provisional_firmware && !p.require_revocation_check);
        assert_eq!(p.vmpl, None);
        assert_eq!(p.for_hcl().vmpl, Some(0));
        assert_eq!(
            Policy::from_str_any("vmpl = 2").unwrap().for_hcl().vmpl,
            Some(2)
        );
        // A migration agent can be allowed only together with the agents' report IDs.
        assert!(Policy::from_str_any("allow_migration_agent = true").is_err());
        let ma = format!(
            "allow_migration_agent = true\nallowed_report_id_ma = [\"{}\"]",
            "ab".repeat(32)
        );
        assert!(Policy::from_str_any(&ma).is_ok());
        assert_eq!(
            Policy::from_str_any("min_firmware_api = \"1.55\"")
                .unwrap()
                .min_firmware_api,
            Some(ApiVersion {
                major: 1,
                minor: 55
            })
        );
        assert!(Policy::from_str_any("min_firmware_api = \"1\"").is_err());
        assert!(Policy::from_str_any("min_firmware_api = \"1.x\"").is_err());
    }

    #[test]
    fn loads_toml_and_json_strictly() {
        let m = "ab".repeat(48);
        let p = Policy::from_str_any(&format!(
            "allowed_measurements = [\"{m}\"]\nmin_tcb = {{ snp = 8 }}\nvmpl = 0\nrequired_platform_info = [\"smt_enabled\"]"
        ))
        .unwrap();
        assert_eq!(p.vmpl, Some(0));
        assert_eq!(p.min_tcb.unwrap().snp, 8);
        let j = Policy::from_str_any(&format!(
            "{{\"allowed_measurements\": [\"{m}\"], \"vmpl\": 0}})"
        ))
        .is_err();
        assert!(j, "trailing garbage must fail");
        assert!(Policy::from_str_any("vmpl = 0\nunknown_rule = 1").is_err());
        assert!(Policy::from_str_any("vmpl = 4").is_err());
        assert!(Policy::from_str_any("allowed_measurements = [\"abcd\"]").is_err());
        assert!(Policy::from_str_any("required_platform_info = [\"fast\"]").is_err());
    }
}
