//! Appraisal policy: which verified reports are acceptable.
//!
//! Kept apart from the cryptographic checks in [`crate::verify`]: a policy only sees
//! a [`VerifiedReport`]. Policies are typed and load from TOML or JSON; unknown keys
//! and malformed values are load errors, never ignored. Every rule that is absent
//! allows everything, except debugging, which is forbidden unless `allow_debug` is
//! set.
//!
//! ```toml
//! allowed_measurements = ["<96 hex chars>"]
//! min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # fmc too on Turin
//! min_guest_svn = 1
//! vmpl = 0
//! allow_debug = false
//! allow_migration_agent = false
//! allow_smt = true
//! report_data = "<128 hex chars>"
//! allowed_id_key_digests = ["<96 hex chars>"]
//! allowed_author_key_digests = ["<96 hex chars>"]
//! required_platform_info = ["tsme_enabled"]
//! ```

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::report::AttestationReport;
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
    /// Minimum guest SVN.
    #[serde(default)]
    pub min_guest_svn: Option<u32>,
    /// The VMPL the report must have been requested from.
    #[serde(default)]
    pub vmpl: Option<u32>,
    /// Accept guests whose policy allows debugging (default: no).
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent (default: yes).
    #[serde(default = "yes")]
    pub allow_migration_agent: bool,
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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_measurements: None,
            min_tcb: None,
            min_guest_svn: None,
            vmpl: None,
            allow_debug: false,
            allow_migration_agent: true,
            allow_smt: true,
            report_data: None,
            allowed_id_key_digests: None,
            allowed_author_key_digests: None,
            required_platform_info: Vec::new(),
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

    fn validate(&self) -> Result<(), PolicyError> {
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
        self.evaluate_report(verified.report())
    }

    fn evaluate_report(&self, r: &AttestationReport) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut fail = |code: &'static str, message: String| out.push(Violation { code, message });
        let p = r.policy();
        if p.debug() && !self.allow_debug {
            fail("policy.debug", "guest policy allows debugging".into());
        }
        if p.migrate_ma() && !self.allow_migration_agent {
            fail(
                "policy.migration_agent",
                "guest policy allows a migration agent".into(),
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
        if let Some(min) = &self.min_tcb {
            let t = r.reported_tcb();
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
            if !low.is_empty() {
                fail(
                    "policy.tcb",
                    format!("REPORTED_TCB below minimum: {}", low.join(", ")),
                );
            }
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
    fn default_forbids_debug_only() {
        let p = Policy::from_str_any("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(!p.allow_debug && p.allow_smt && p.allow_migration_agent);
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
