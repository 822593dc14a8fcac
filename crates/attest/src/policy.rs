//! Attestation policies in Rego, evaluated with `regorus`.
//!
//! A policy is a Rego module in `package policy`. Its input is the claims drawn from
//! the evidence; `data.settings` holds the provider's settings (see
//! [`ProviderSettings`]). The decision is the rule `allow` (a boolean; undefined means
//! deny). The optional set `deny` explains refusals: each element is an object
//! `{"rule": NAME, "message": TEXT}` (or a plain string), reported by dry runs and in
//! refusals so users see which rule denied and why.
//!
//! A policy is compiled once per version (and per settings change) into a
//! [`CompiledPolicy`]; evaluation never re-parses it.

use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Serialize;
use serde_json::Value;

use crate::AttestationType;

/// The largest policy text accepted.
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// Why a policy could not be compiled or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is too large, not Rego, or not in `package policy`.
    #[error("invalid policy: {0}")]
    Invalid(String),
    /// Evaluation failed (runtime error, time limit).
    #[error("policy evaluation failed: {0}")]
    Eval(String),
}

/// A provider's settings (visible to policies as `data.settings`), the minimum TCB
/// they may set, and a policy's reasons to deny: the API contract's types.
pub use attest_api::{DenyReason, MinTcb, ProviderSettings};

/// The outcome of evaluating a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the policy allows issuing a token.
    pub allow: bool,
    /// The reasons the policy gives for denying (may be non-empty even if `allow`
    /// is true when a policy's `allow` ignores `deny`).
    pub deny: Vec<DenyReason>,
}

/// Entry point wrapped around every user policy.
const WRAPPER: &str = r#"
package opencvm_eval
import rego.v1

default allow := false
allow := data.policy.allow if is_boolean(data.policy.allow)

deny_set contains d if {
  some d in data.policy.deny
}

result := {"allow": allow, "deny": deny_set}
"#;

/// The default policy for an attestation type.
pub fn default_policy(kind: AttestationType) -> String {
    let tee = match kind {
        AttestationType::SevSnpVm => "input",
        AttestationType::AzureGuest => "object.get(input, \"x-ms-isolation-tee\", {})",
    };
    format!(
        r#"package policy
import rego.v1

# opencvm default policy for {name}: no debug, VMPL 0, no migration agent unless the
# provider pins it, no emulated platform unless the provider allows it; a minimum TCB,
# a measurement allow-list and a checked CRL when the provider asks for them
# (data.settings). A missing claim never passes a check.

tee := {tee}

default allow := false
allow if count(deny) == 0

deny contains {{"rule": "no-debug", "message": "the guest policy allows debugging"}} if {{
  object.get(tee, "x-ms-sevsnpvm-is-debuggable", true) != false
}}

deny contains {{"rule": "vmpl-0", "message": sprintf("the report was requested from VMPL %v, not 0", [object.get(tee, "x-ms-sevsnpvm-vmpl", "(unknown)")])}} if {{
  object.get(tee, "x-ms-sevsnpvm-vmpl", -1) != 0
}}

deny contains {{"rule": "no-migration-agent", "message": "the guest policy allows a migration agent and this provider pins none"}} if {{
  object.get(tee, "x-ms-sevsnpvm-migration-allowed", true) != false
  count(object.get(data.settings, "migration_agents", [])) == 0
}}

deny contains {{"rule": "no-migration-agent", "message": sprintf("migration agent %v is not one this provider pins", [object.get(tee, "x-opencvm-sevsnpvm-reportid-ma", "(unknown)")])}} if {{
  object.get(tee, "x-ms-sevsnpvm-migration-allowed", true) != false
  count(object.get(data.settings, "migration_agents", [])) > 0
  not object.get(tee, "x-opencvm-sevsnpvm-reportid-ma", "") in data.settings.migration_agents
}}

deny contains {{"rule": "revocation-checked", "message": "the certificate chain was not checked against a CRL and this provider requires it"}} if {{
  data.settings.require_revocation_check
  object.get(tee, "x-opencvm-revocation", "not_checked") != "checked"
}}

deny contains {{"rule": "no-emulated-platform", "message": "the evidence comes from an emulated AMD secure processor and this provider does not allow emulated platforms"}} if {{
  object.get(tee, "x-opencvm-emulated", true) != false
  not data.settings.allow_emulated
}}

deny contains {{"rule": "min-tcb", "message": sprintf("%v SVN %v is below the minimum %v", [part, have, want])}} if {{
  some part, want in data.settings.min_tcb
  part != "fmc"
  have := object.get(tee, sprintf("x-ms-sevsnpvm-%v-svn", [svn_claim[part]]), -1)
  have < want
}}

# Only Turin reports have an FMC SVN.
deny contains {{"rule": "min-tcb", "message": sprintf("fmc SVN %v is below the minimum %v", [have, want])}} if {{
  want := data.settings.min_tcb.fmc
  have := tee["x-ms-sevsnpvm-fmc-svn"]
  have < want
}}

svn_claim := {{"bootloader": "bootloader", "tee": "tee", "snp": "snpfw", "microcode": "microcode"}}

deny contains {{"rule": "measurement-allow-list", "message": sprintf("launch measurement %v is not on the provider's allow-list", [tee["x-ms-sevsnpvm-launchmeasurement"]])}} if {{
  count(data.settings.measurements) > 0
  not object.get(tee, "x-ms-sevsnpvm-launchmeasurement", "") in data.settings.measurements
}}
"#,
        name = kind.path_name(),
    )
}

/// `x-ms-policy-hash` as Azure Attestation computes it:
/// BASE64URL(SHA-256(UTF-8(BASE64URL(UTF-8(policy text))))).
pub fn policy_hash(text: &str) -> String {
    let inner = B64URL.encode(text.as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, inner.as_bytes());
    B64URL.encode(digest.as_ref())
}

/// A compiled policy, ready to evaluate concurrently.
#[derive(Clone)]
pub struct CompiledPolicy {
    compiled: regorus::CompiledPolicy,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledPolicy")
    }
}

/// Limits every evaluation's wall-clock time (a policy from a dry run is untrusted).
pub fn install_time_limit(limit: Duration) {
    regorus::utils::limits::set_fallback_execution_timer_config(Some(
        regorus::utils::limits::ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::MIN,
        },
    ));
}

impl CompiledPolicy {
    /// Parses and compiles `text` with `settings` as `data.settings`.
    pub fn compile(text: &str, settings: &ProviderSettings) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::Invalid(format!(
                "longer than {MAX_POLICY_LEN} bytes"
            )));
        }
        if !text
            .lines()
            .map(str::trim)
            .any(|l| l == "package policy" || l.starts_with("package policy "))
        {
            return Err(PolicyError::Invalid(
                "the policy must be a Rego module in `package policy`".into(),
            ));
        }
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("policy.rego".into(), text.into())
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        engine
            .add_policy("opencvm_eval.rego".into(), WRAPPER.into())
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let settings = serde_json::json!({ "settings": settings });
        engine
            .add_data(regorus::Value::from(settings))
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let compiled = engine
            .compile_with_entrypoint(&"data.opencvm_eval.result".into())
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        Ok(CompiledPolicy { compiled })
    }

    /// Evaluates the policy on `claims`.
    pub fn evaluate(&self, claims: &Value) -> Result<Decision, PolicyError> {
        self.evaluate_input(regorus::Value::from(claims.clone()))
    }

    /// [`Self::evaluate`] on claims already in the engine's own value type (the
    /// sandbox's worker parses its input straight into it).
    pub fn evaluate_input(&self, claims: regorus::Value) -> Result<Decision, PolicyError> {
        let out = self
            .compiled
            .eval_with_input(claims)
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        let json: Value = serde_json::from_str(
            &out.to_json_str()
                .map_err(|e| PolicyError::Eval(e.to_string()))?,
        )
        .map_err(|e| PolicyError::Eval(e.to_string()))?;
        let allow = json.get("allow") == Some(&Value::Bool(true));
        let mut deny = Vec::new();
        if let Some(items) = json.get("deny").and_then(Value::as_array) {
            for item in items {
                deny.push(match item {
                    Value::String(s) => DenyReason {
                        rule: "deny".into(),
                        message: s.clone(),
                    },
                    Value::Object(o) => DenyReason {
                        rule: o
                            .get("rule")
                            .and_then(Value::as_str)
                            .unwrap_or("deny")
                            .to_string(),
                        message: o
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_else(|| item.to_string()),
                    },
                    other => DenyReason {
                        rule: "deny".into(),
                        message: other.to_string(),
                    },
                });
            }
        }
        if !allow && deny.is_empty() {
            deny.push(DenyReason {
                rule: "allow".into(),
                message: "the policy's `allow` rule is not true and no `deny` rule names a reason"
                    .into(),
            });
        }
        Ok(Decision { allow, deny })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Value {
        json!({
            "x-ms-sevsnpvm-is-debuggable": false,
            "x-ms-sevsnpvm-migration-allowed": false,
            "x-opencvm-sevsnpvm-reportid-ma": "ff".repeat(32),
            "x-opencvm-revocation": "not_checked",
            "x-ms-sevsnpvm-vmpl": 0,
            "x-opencvm-emulated": false,
            "x-ms-sevsnpvm-bootloader-svn": 4,
            "x-ms-sevsnpvm-tee-svn": 0,
            "x-ms-sevsnpvm-snpfw-svn": 22,
            "x-ms-sevsnpvm-microcode-svn": 213,
            "x-ms-sevsnpvm-launchmeasurement": "ab".repeat(48),
        })
    }

    fn with(k: &str, v: Value) -> Value {
        let mut c = claims();
        c[k] = v;
        c
    }

    #[test]
    fn default_policy_table() {
        let lenient = ProviderSettings::default();
        let emulated_ok = ProviderSettings {
            allow_emulated: true,
            ..ProviderSettings::default()
        };
        let min_tcb = ProviderSettings {
            min_tcb: Some(MinTcb {
                bootloader: 3,
                snp: 23,
                ..MinTcb::default()
            }),
            ..ProviderSettings::default()
        };
        let min_fmc = ProviderSettings {
            min_tcb: Some(MinTcb {
                fmc: 2,
                ..MinTcb::default()
            }),
            ..ProviderSettings::default()
        };
        let allow_list = ProviderSettings {
            measurements: vec!["cd".repeat(48)],
            ..ProviderSettings::default()
        };
        let allow_list_ok = ProviderSettings {
            measurements: vec!["cd".repeat(48), "ab".repeat(48)],
            ..ProviderSettings::default()
        };
        let revocation = ProviderSettings {
            require_revocation_check: true,
            ..ProviderSettings::default()
        };
        let ma = ProviderSettings {
            migration_agents: vec!["ab".repeat(32)],
            ..ProviderSettings::default()
        };
        // (settings, claims, expected denying rules)
        let cases: Vec<(&ProviderSettings, Value, Vec<&str>)> = vec![
            (&lenient, claims(), vec![]),
            (
                &lenient,
                with("x-ms-sevsnpvm-is-debuggable", json!(true)),
                vec!["no-debug"],
            ),
            (
                &lenient,
                with("x-ms-sevsnpvm-vmpl", json!(1)),
                vec!["vmpl-0"],
            ),
            (
                &lenient,
                with("x-opencvm-emulated", json!(true)),
                vec!["no-emulated-platform"],
            ),
            (
                &emulated_ok,
                with("x-opencvm-emulated", json!(true)),
                vec![],
            ),
            (&min_tcb, claims(), vec!["min-tcb"]),
            (&min_tcb, with("x-ms-sevsnpvm-snpfw-svn", json!(23)), vec![]),
            // An FMC minimum applies to Turin reports (which carry the claim) only.
            (&min_fmc, claims(), vec![]),
            (
                &min_fmc,
                with("x-ms-sevsnpvm-fmc-svn", json!(1)),
                vec!["min-tcb"],
            ),
            (&min_fmc, with("x-ms-sevsnpvm-fmc-svn", json!(2)), vec![]),
            (&allow_list, claims(), vec!["measurement-allow-list"]),
            (&revocation, claims(), vec!["revocation-checked"]),
            (
                &revocation,
                with("x-opencvm-revocation", json!("checked")),
                vec![],
            ),
            (
                &lenient,
                with("x-ms-sevsnpvm-migration-allowed", json!(true)),
                vec!["no-migration-agent"],
            ),
            (
                &ma,
                with("x-ms-sevsnpvm-migration-allowed", json!(true)),
                vec!["no-migration-agent"],
            ),
            (
                &ma,
                {
                    let mut c = with("x-ms-sevsnpvm-migration-allowed", json!(true));
                    c["x-opencvm-sevsnpvm-reportid-ma"] = json!("ab".repeat(32));
                    c
                },
                vec![],
            ),
            (&allow_list_ok, claims(), vec![]),
            // A claim that is missing never passes: no debug flag means "maybe debug".
            (
                &lenient,
                {
                    let mut c = claims();
                    c.as_object_mut()
                        .unwrap()
                        .remove("x-ms-sevsnpvm-is-debuggable");
                    c
                },
                vec!["no-debug"],
            ),
            (
                &lenient,
                {
                    let mut c = with("x-ms-sevsnpvm-is-debuggable", json!(true));
                    c["x-ms-sevsnpvm-vmpl"] = json!(3);
                    c
                },
                vec!["no-debug", "vmpl-0"],
            ),
        ];
        let text = default_policy(AttestationType::SevSnpVm);
        for (i, (settings, input, want)) in cases.into_iter().enumerate() {
            let p = CompiledPolicy::compile(&text, settings).unwrap();
            let d = p.evaluate(&input).unwrap();
            let mut rules: Vec<&str> = d.deny.iter().map(|r| r.rule.as_str()).collect();
            rules.sort_unstable();
            assert_eq!(rules, want, "case {i}");
            assert_eq!(d.allow, want.is_empty(), "case {i}");
        }
    }

    #[test]
    fn azure_default_policy_reads_the_isolation_tee() {
        let p = CompiledPolicy::compile(
            &default_policy(AttestationType::AzureGuest),
            &ProviderSettings::default(),
        )
        .unwrap();
        assert!(
            p.evaluate(&json!({"x-ms-isolation-tee": claims()}))
                .unwrap()
                .allow
        );
        let d = p
            .evaluate(&json!({"x-ms-isolation-tee": with("x-ms-sevsnpvm-vmpl", json!(2))}))
            .unwrap();
        assert_eq!(d.deny[0].rule, "vmpl-0");
        assert!(!p.evaluate(&claims()).unwrap().allow);
    }

    #[test]
    fn bad_policies_are_refused() {
        let s = ProviderSettings::default();
        for text in [
            "allow := true",
            "package other\nallow := true",
            "package policy\nallow := (",
            &format!("package policy\n#{}", "x".repeat(MAX_POLICY_LEN)),
        ] {
            assert!(CompiledPolicy::compile(text, &s).is_err(), "{text:.40}");
        }
    }

    #[test]
    fn policy_hash_is_maa_s() {
        // BASE64URL(SHA256(BASE64URL("abc"))): BASE64URL("abc") = "YWJj".
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"YWJj");
        assert_eq!(policy_hash("abc"), B64URL.encode(d.as_ref()));
    }

    #[test]
    fn a_runaway_draft_policy_is_stopped() {
        install_time_limit(Duration::from_millis(200));
        let text = "package policy\nimport rego.v1\nr := numbers.range(1, 2000)\nallow if count([1 | some a in r; some b in r; some c in r]) > 0\n";
        let p = CompiledPolicy::compile(text, &ProviderSettings::default()).unwrap();
        let started = std::time::Instant::now();
        assert!(p.evaluate(&json!({})).is_err());
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
