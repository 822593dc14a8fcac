#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Release policy grammar, evaluation and explanations.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use keyvault::release_policy::{
    Decision, FailureReason, GroupKind, MAX_CONDITIONS, MAX_POLICY_BYTES, PolicyError,
    PolicyVersion, ReleasePolicy, ReleasePolicyEnvelope,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Example policies, written from the public Azure Key Vault / confidential VM Secure Key
// Release documentation (not copied from any code).

/// Documented confidential-VM SKR policy: an SEV-SNP CVM that MAA judged Azure-compliant.
const DOC_CVM_POLICY: &str = r#"{
  "version": "1.0.0",
  "anyOf": [
    {
      "authority": "https://sharedeus2.eus2.attest.azure.net/",
      "allOf": [
        { "claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm" },
        { "claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm" }
      ]
    }
  ]
}"#;

/// Documented-style policy binding a key to one VM: the VM id and the attestation type
/// (authority written without a trailing slash).
const DOC_VMID_POLICY: &str = r#"{
  "version": "1.0.0",
  "anyOf": [
    {
      "authority": "https://sharedweu.weu.attest.azure.net",
      "allOf": [
        { "claim": "x-ms-azurevm-vmid", "equals": "6f9a5f3e-2b5c-4d7e-9a61-0c2d8f4e1b37" },
        { "claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm" }
      ]
    }
  ]
}"#;

/// Documented-style SGX enclave policy: signer, minimum security version, not debuggable
/// (a JSON boolean, as Key Vault policies often write it).
const DOC_SGX_POLICY: &str = r#"{
  "anyOf": [
    {
      "authority": "https://sharedeus.eus.attest.azure.net/",
      "allOf": [
        { "claim": "x-ms-sgx-mrsigner", "equals": "c0d1b2a3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f" },
        { "claim": "x-ms-sgx-svn", "greaterOrEquals": 2 },
        { "claim": "x-ms-sgx-is-debuggable", "equals": false }
      ]
    }
  ],
  "version": "1.0.0"
}"#;

const CVM_ISSUER: &str = "https://sharedeus2.eus2.attest.azure.net";
const WEU_ISSUER: &str = "https://sharedweu.weu.attest.azure.net";
const SGX_ISSUER: &str = "https://sharedeus.eus.attest.azure.net";
const VMID: &str = "6f9a5f3e-2b5c-4d7e-9a61-0c2d8f4e1b37";
const MRSIGNER: &str = "c0d1b2a3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";

fn cvm_claims(attestation_type: &str, compliance: Option<&str>) -> Value {
    let mut tee = json!({ "x-ms-attestation-type": attestation_type });
    if let Some(c) = compliance {
        tee["x-ms-compliance-status"] = json!(c);
    }
    json!({
        "iss": CVM_ISSUER,
        "x-ms-attestation-type": "azurevm",
        "x-ms-azurevm-vmid": VMID,
        "x-ms-isolation-tee": tee,
    })
}

fn sgx_claims(mrsigner: &str, svn: Value, debuggable: Value) -> Value {
    json!({
        "iss": SGX_ISSUER,
        "x-ms-attestation-type": "sgx",
        "x-ms-sgx-mrsigner": mrsigner,
        "x-ms-sgx-svn": svn,
        "x-ms-sgx-is-debuggable": debuggable,
    })
}

/// An expected failing leaf: (path, claim, reason).
type Fail = (&'static str, &'static str, FailureReason);

struct Case {
    name: &'static str,
    policy: &'static str,
    issuer: &'static str,
    claims: Value,
    allowed: bool,
    /// For denials: the failing leaves, or empty when no authority block matched.
    failures: Vec<Fail>,
}

fn cases() -> Vec<Case> {
    use FailureReason::*;
    vec![
        // --- confidential VM policy
        Case {
            name: "cvm: compliant SNP CVM",
            policy: DOC_CVM_POLICY,
            issuer: CVM_ISSUER,
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "cvm: issuer with trailing slash (policy has one too)",
            policy: DOC_CVM_POLICY,
            issuer: "https://sharedeus2.eus2.attest.azure.net/",
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "cvm: wrong compliance status",
            policy: DOC_CVM_POLICY,
            issuer: CVM_ISSUER,
            claims: cvm_claims("sevsnpvm", Some("azure-noncompliant-cvm")),
            allowed: false,
            failures: vec![(
                "anyOf[0].allOf[1]",
                "x-ms-isolation-tee.x-ms-compliance-status",
                Mismatch,
            )],
        },
        Case {
            name: "cvm: TDX instead of SNP and status missing",
            policy: DOC_CVM_POLICY,
            issuer: CVM_ISSUER,
            claims: cvm_claims("tdxvm", None),
            allowed: false,
            failures: vec![
                (
                    "anyOf[0].allOf[0]",
                    "x-ms-isolation-tee.x-ms-attestation-type",
                    Mismatch,
                ),
                (
                    "anyOf[0].allOf[1]",
                    "x-ms-isolation-tee.x-ms-compliance-status",
                    Missing,
                ),
            ],
        },
        Case {
            name: "cvm: no isolation-tee object at all",
            policy: DOC_CVM_POLICY,
            issuer: CVM_ISSUER,
            claims: json!({ "x-ms-attestation-type": "sevsnpvm" }),
            allowed: false,
            failures: vec![
                (
                    "anyOf[0].allOf[0]",
                    "x-ms-isolation-tee.x-ms-attestation-type",
                    Missing,
                ),
                (
                    "anyOf[0].allOf[1]",
                    "x-ms-isolation-tee.x-ms-compliance-status",
                    Missing,
                ),
            ],
        },
        Case {
            name: "cvm: claims flattened with dotted names are not nested claims",
            policy: DOC_CVM_POLICY,
            issuer: CVM_ISSUER,
            claims: json!({
                "x-ms-isolation-tee.x-ms-attestation-type": "sevsnpvm",
                "x-ms-isolation-tee.x-ms-compliance-status": "azure-compliant-cvm",
            }),
            allowed: false,
            failures: vec![
                (
                    "anyOf[0].allOf[0]",
                    "x-ms-isolation-tee.x-ms-attestation-type",
                    Missing,
                ),
                (
                    "anyOf[0].allOf[1]",
                    "x-ms-isolation-tee.x-ms-compliance-status",
                    Missing,
                ),
            ],
        },
        Case {
            name: "cvm: other region's attestation service",
            policy: DOC_CVM_POLICY,
            issuer: "https://sharedweu.weu.attest.azure.net",
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: false,
            failures: vec![],
        },
        Case {
            name: "cvm: issuer with two trailing slashes",
            policy: DOC_CVM_POLICY,
            issuer: "https://sharedeus2.eus2.attest.azure.net//",
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: false,
            failures: vec![],
        },
        Case {
            name: "cvm: issuer compared case-sensitively",
            policy: DOC_CVM_POLICY,
            issuer: "https://SharedEus2.eus2.attest.azure.net",
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: false,
            failures: vec![],
        },
        Case {
            name: "cvm: issuer that merely starts with the authority",
            policy: DOC_CVM_POLICY,
            issuer: "https://sharedeus2.eus2.attest.azure.net.evil.example",
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: false,
            failures: vec![],
        },
        // --- VM-id-bound policy
        Case {
            name: "vmid: the bound VM",
            policy: DOC_VMID_POLICY,
            issuer: WEU_ISSUER,
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "vmid: issuer with trailing slash (policy has none)",
            policy: DOC_VMID_POLICY,
            issuer: "https://sharedweu.weu.attest.azure.net/",
            claims: cvm_claims("sevsnpvm", None),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "vmid: another VM",
            policy: DOC_VMID_POLICY,
            issuer: WEU_ISSUER,
            claims: {
                let mut c = cvm_claims("sevsnpvm", None);
                c["x-ms-azurevm-vmid"] = json!("00000000-0000-0000-0000-000000000001");
                c
            },
            allowed: false,
            failures: vec![("anyOf[0].allOf[0]", "x-ms-azurevm-vmid", Mismatch)],
        },
        Case {
            name: "vmid: VM id compared case-sensitively",
            policy: DOC_VMID_POLICY,
            issuer: WEU_ISSUER,
            claims: {
                let mut c = cvm_claims("sevsnpvm", None);
                c["x-ms-azurevm-vmid"] = json!(VMID.to_uppercase());
                c
            },
            allowed: false,
            failures: vec![("anyOf[0].allOf[0]", "x-ms-azurevm-vmid", Mismatch)],
        },
        Case {
            name: "vmid: no VM id claim",
            policy: DOC_VMID_POLICY,
            issuer: WEU_ISSUER,
            claims: json!({ "x-ms-isolation-tee": { "x-ms-attestation-type": "sevsnpvm" } }),
            allowed: false,
            failures: vec![("anyOf[0].allOf[0]", "x-ms-azurevm-vmid", Missing)],
        },
        Case {
            name: "vmid: right VM, not SNP",
            policy: DOC_VMID_POLICY,
            issuer: WEU_ISSUER,
            claims: cvm_claims("vbs", None),
            allowed: false,
            failures: vec![(
                "anyOf[0].allOf[1]",
                "x-ms-isolation-tee.x-ms-attestation-type",
                Mismatch,
            )],
        },
        Case {
            name: "vmid: wrong issuer",
            policy: DOC_VMID_POLICY,
            issuer: CVM_ISSUER,
            claims: cvm_claims("sevsnpvm", None),
            allowed: false,
            failures: vec![],
        },
        // --- SGX policy
        Case {
            name: "sgx: signer, svn above minimum, boolean false",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(MRSIGNER, json!(3), json!(false)),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "sgx: svn exactly the minimum, debuggable as the string \"false\"",
            policy: DOC_SGX_POLICY,
            issuer: "https://sharedeus.eus.attest.azure.net/",
            claims: sgx_claims(MRSIGNER, json!(2), json!("false")),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "sgx: svn written as float",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(MRSIGNER, json!(2.0), json!(false)),
            allowed: true,
            failures: vec![],
        },
        Case {
            name: "sgx: svn below minimum",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(MRSIGNER, json!(1), json!(false)),
            allowed: false,
            failures: vec![("anyOf[0].allOf[1]", "x-ms-sgx-svn", Mismatch)],
        },
        Case {
            name: "sgx: svn as a string is not compared with a number",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(MRSIGNER, json!("5"), json!(false)),
            allowed: false,
            failures: vec![("anyOf[0].allOf[1]", "x-ms-sgx-svn", TypeMismatch)],
        },
        Case {
            name: "sgx: other signer, debuggable enclave",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(&"00".repeat(32), json!(9), json!(true)),
            allowed: false,
            failures: vec![
                ("anyOf[0].allOf[0]", "x-ms-sgx-mrsigner", Mismatch),
                ("anyOf[0].allOf[2]", "x-ms-sgx-is-debuggable", Mismatch),
            ],
        },
        Case {
            name: "sgx: debuggable as the string \"true\"",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: sgx_claims(MRSIGNER, json!(9), json!("true")),
            allowed: false,
            failures: vec![("anyOf[0].allOf[2]", "x-ms-sgx-is-debuggable", Mismatch)],
        },
        Case {
            name: "sgx: missing svn",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: json!({ "x-ms-sgx-mrsigner": MRSIGNER, "x-ms-sgx-is-debuggable": false }),
            allowed: false,
            failures: vec![("anyOf[0].allOf[1]", "x-ms-sgx-svn", Missing)],
        },
        Case {
            name: "sgx: CVM token from the SGX authority",
            policy: DOC_SGX_POLICY,
            issuer: SGX_ISSUER,
            claims: cvm_claims("sevsnpvm", Some("azure-compliant-cvm")),
            allowed: false,
            failures: vec![
                ("anyOf[0].allOf[0]", "x-ms-sgx-mrsigner", Missing),
                ("anyOf[0].allOf[1]", "x-ms-sgx-svn", Missing),
                ("anyOf[0].allOf[2]", "x-ms-sgx-is-debuggable", Missing),
            ],
        },
        Case {
            name: "sgx: wrong issuer",
            policy: DOC_SGX_POLICY,
            issuer: CVM_ISSUER,
            claims: sgx_claims(MRSIGNER, json!(3), json!(false)),
            allowed: false,
            failures: vec![],
        },
    ]
}

fn check_case(c: &Case) -> Decision {
    let policy = ReleasePolicy::parse(c.policy.as_bytes()).unwrap();
    let d = policy.evaluate(c.issuer, &c.claims);
    let text = d.to_string();
    assert_eq!(d.allowed, c.allowed, "{}: {text}", c.name);
    let got: Vec<(&str, &str, FailureReason)> = d
        .failures
        .iter()
        .map(|f| (f.path.as_str(), f.claim.as_str(), f.reason))
        .collect();
    assert_eq!(got, c.failures, "{}: {text}", c.name);
    if c.allowed {
        assert!(
            text.starts_with("allowed: authority block anyOf[0] ("),
            "{text}"
        );
        assert!(text.ends_with(") is satisfied"), "{text}");
        assert_eq!(d.allowed_by.as_deref(), Some("anyOf[0]"));
    } else if c.failures.is_empty() {
        assert!(d.matched_authorities.is_empty(), "{}", c.name);
        let expect = format!("no authority block for issuer {:?}", c.issuer);
        assert!(text.contains(&expect), "{}: {text}", c.name);
    } else {
        assert_eq!(d.matched_authorities.len(), 1, "{}", c.name);
        assert!(!d.matched_authorities[0].satisfied);
        for f in &d.failures {
            // The explanation names each failing condition and what was found.
            assert!(text.contains(&f.path), "{}: {text}", c.name);
            assert!(text.contains(&format!("{:?}", f.claim)), "{text}");
            match f.reason {
                FailureReason::Missing => {
                    assert!(f.actual.is_none());
                    assert!(text.contains("claim missing"), "{text}");
                }
                _ => assert!(f.actual.is_some()),
            }
        }
    }
    d
}

#[test]
fn documented_policies_table() {
    let cases = cases();
    for c in &cases {
        check_case(c);
    }
    assert!(cases.len() >= 25);
}

#[test]
fn explanation_details_for_wrong_value() {
    let policy = ReleasePolicy::parse(DOC_CVM_POLICY.as_bytes()).unwrap();
    let d = policy.evaluate(CVM_ISSUER, &cvm_claims("sevsnpvm", Some("nope")));
    assert!(!d.allowed);
    let f = &d.failures[0];
    assert_eq!(f.path, "anyOf[0].allOf[1]");
    assert_eq!(f.authority, "https://sharedeus2.eus2.attest.azure.net/");
    assert_eq!(f.operator, "equals");
    assert_eq!(f.expected, json!("azure-compliant-cvm"));
    assert_eq!(f.actual, Some(json!("nope")));
    assert_eq!(
        d.to_string(),
        "denied: the conditions of authority block anyOf[0] (\"https://sharedeus2.eus2.attest.azure.net/\") \
         for issuer \"https://sharedeus2.eus2.attest.azure.net\" do not hold\n  \
         - anyOf[0].allOf[1]: claim \"x-ms-isolation-tee.x-ms-compliance-status\" equals \"azure-compliant-cvm\": actual \"nope\""
    );
    let j = d.to_json();
    assert_eq!(j["allowed"], json!(false));
    assert_eq!(j["matchedAuthorities"][0]["path"], json!("anyOf[0]"));
    assert_eq!(j["matchedAuthorities"][0]["satisfied"], json!(false));
    assert_eq!(
        j["failures"][0]["claim"],
        json!("x-ms-isolation-tee.x-ms-compliance-status")
    );
    assert_eq!(j["failures"][0]["operator"], json!("equals"));
    assert_eq!(j["failures"][0]["expected"], json!("azure-compliant-cvm"));
    assert_eq!(j["failures"][0]["actual"], json!("nope"));
    assert_eq!(j["failures"][0]["reason"], json!("mismatch"));
    assert!(j.get("allowedBy").is_none());

    // Missing: no "actual" member, reason "missing".
    let d = policy.evaluate(CVM_ISSUER, &cvm_claims("sevsnpvm", None));
    let j = d.to_json();
    assert_eq!(j["failures"][0]["reason"], json!("missing"));
    assert!(j["failures"][0].get("actual").is_none());
    assert!(d.to_string().ends_with(
        "anyOf[0].allOf[1]: claim \"x-ms-isolation-tee.x-ms-compliance-status\" equals \"azure-compliant-cvm\": claim missing"
    ));
}

#[test]
fn explanation_for_unknown_issuer() {
    let policy = ReleasePolicy::parse(DOC_CVM_POLICY.as_bytes()).unwrap();
    let d = policy.evaluate("https://attacker.example", &cvm_claims("sevsnpvm", None));
    assert_eq!(
        d.reason,
        "no authority block for issuer \"https://attacker.example\" (the policy names \"https://sharedeus2.eus2.attest.azure.net/\")"
    );
    assert!(d.failures.is_empty());
    assert_eq!(d.to_json()["matchedAuthorities"], json!([]));
}

fn eval(policy: Value, claims: Value) -> Decision {
    let p = ReleasePolicy::from_value(&policy).unwrap();
    p.evaluate("https://issuer.example", &claims)
}

fn one(cond: Value) -> Value {
    json!({"version": "1.0.0", "anyOf": [{"authority": "https://issuer.example/", "allOf": [cond]}]})
}

#[test]
fn operator_semantics() {
    let claims = json!({
        "s": "abc",
        "n": 10,
        "f": 2.5,
        "big": u64::MAX,
        "neg": -3,
        "t": true,
        "ts": "true",
        "nul": null,
        "arr": ["a", "b"],
        "obj": { "inner": { "x-y-z": "deep" } },
    });
    let t = |cond: Value| eval(one(cond), claims.clone()).allowed;
    // equals / notEquals
    assert!(t(json!({"claim": "s", "equals": "abc"})));
    assert!(!t(json!({"claim": "s", "equals": "ABC"})));
    assert!(t(json!({"claim": "n", "equals": 10.0})));
    assert!(!t(json!({"claim": "n", "equals": "10"})));
    assert!(t(json!({"claim": "t", "equals": true})));
    assert!(t(json!({"claim": "t", "equals": "true"})));
    assert!(t(json!({"claim": "ts", "equals": true})));
    assert!(!t(json!({"claim": "ts", "equals": false})));
    assert!(!t(json!({"claim": "t", "equals": "True"})));
    assert!(!t(json!({"claim": "t", "equals": 1})));
    assert!(t(json!({"claim": "big", "equals": u64::MAX})));
    assert!(!t(json!({"claim": "big", "equals": u64::MAX - 1})));
    assert!(t(json!({"claim": "obj.inner.x-y-z", "equals": "deep"})));
    assert!(!t(json!({"claim": "nul", "equals": "null"})));
    assert!(t(json!({"claim": "s", "notEquals": "xyz"})));
    assert!(!t(json!({"claim": "s", "notEquals": "abc"})));
    assert!(t(json!({"claim": "n", "notEquals": "10"})));
    // An array, object or null claim is not comparable: notEquals is false for it (it
    // was true before, so an unexpected claim shape passed a notEquals condition).
    assert!(!t(json!({"claim": "arr", "notEquals": "a"})));
    assert!(!t(json!({"claim": "obj", "notEquals": "a"})));
    assert!(!t(json!({"claim": "nul", "notEquals": "a"})));
    assert!(!t(json!({"claim": "missing", "notEquals": "abc"})));
    // arrays are not indexed and not searched
    assert!(!t(json!({"claim": "arr", "equals": "a"})));
    assert!(!t(json!({"claim": "arr.0", "exists": true})));
    // ordering
    assert!(t(json!({"claim": "n", "less": 11})));
    assert!(!t(json!({"claim": "n", "less": 10})));
    assert!(t(json!({"claim": "n", "lessOrEquals": 10})));
    assert!(t(json!({"claim": "n", "greater": 9.5})));
    assert!(t(json!({"claim": "f", "greaterOrEquals": 2.5})));
    assert!(t(json!({"claim": "neg", "less": 0})));
    assert!(t(json!({"claim": "big", "greater": i64::MAX})));
    assert!(t(json!({"claim": "neg", "less": u64::MAX})));
    assert!(t(json!({"claim": "s", "less": "abd"})));
    assert!(t(json!({"claim": "s", "greaterOrEquals": "abc"})));
    assert!(!t(json!({"claim": "s", "greater": 1})));
    assert!(!t(json!({"claim": "n", "greater": "1"})));
    assert!(!t(json!({"claim": "t", "greater": 0})));
    assert!(!t(json!({"claim": "missing", "less": 5})));
    // exists
    assert!(t(json!({"claim": "nul", "exists": true})));
    assert!(t(json!({"claim": "obj.inner", "exists": true})));
    assert!(!t(json!({"claim": "obj.other", "exists": true})));
    assert!(t(json!({"claim": "obj.other", "exists": false})));
    assert!(t(json!({"claim": "s.below.a.string", "exists": false})));
    assert!(!t(json!({"claim": "s", "exists": false})));

    // Type mismatch is reported as such.
    let d = eval(one(json!({"claim": "s", "greater": 1})), claims.clone());
    assert_eq!(d.failures[0].reason, FailureReason::TypeMismatch);
    assert!(
        d.to_string()
            .contains("actual \"abc\" is a string, not comparable with a number"),
        "{d}"
    );
    // exists: false on a present claim shows the value.
    let d = eval(one(json!({"claim": "n", "exists": false})), claims.clone());
    assert_eq!(d.failures[0].reason, FailureReason::Mismatch);
    assert_eq!(d.failures[0].actual, Some(json!(10)));

    // Claims that are not an object: everything is missing.
    let d = eval(one(json!({"claim": "s", "equals": "abc"})), json!("abc"));
    assert_eq!(d.failures[0].reason, FailureReason::Missing);
}

#[test]
fn nested_groups_and_multiple_blocks() {
    let policy = json!({
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": "https://issuer.example",
                "allOf": [
                    {"claim": "tee", "equals": "sevsnpvm"},
                    {"anyOf": [
                        {"claim": "vmid", "equals": "a"},
                        {"allOf": [
                            {"claim": "svn", "greaterOrEquals": 3},
                            {"claim": "debug", "equals": false}
                        ]}
                    ]}
                ]
            },
            {
                "authority": "https://issuer.example/",
                "anyOf": [{"claim": "break-glass", "equals": "yes"}]
            },
            {
                "authority": "https://other.example",
                "anyOf": [{"claim": "tee", "exists": true}]
            }
        ]
    });
    let p = ReleasePolicy::from_value(&policy).unwrap();
    let ev = |c: Value| p.evaluate("https://issuer.example/", &c);

    let d = ev(json!({"tee": "sevsnpvm", "vmid": "a"}));
    assert!(d.allowed);
    assert_eq!(d.allowed_by.as_deref(), Some("anyOf[0]"));
    assert!(d.failures.is_empty());

    let d = ev(json!({"tee": "sevsnpvm", "vmid": "b", "svn": 4, "debug": false}));
    assert!(d.allowed, "{d}");

    let d = ev(json!({"break-glass": "yes"}));
    assert!(d.allowed);
    assert_eq!(d.allowed_by.as_deref(), Some("anyOf[1]"));
    assert_eq!(d.matched_authorities.len(), 2);
    assert!(!d.matched_authorities[0].satisfied);
    assert!(d.matched_authorities[1].satisfied);
    assert!(d.failures.is_empty());

    // Denied: the failures are exactly the leaves that made each matched block fail.
    let d = ev(json!({"tee": "sevsnpvm", "vmid": "b", "svn": 2, "debug": false}));
    assert!(!d.allowed);
    let paths: Vec<&str> = d.failures.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "anyOf[0].allOf[1].anyOf[0]",
            "anyOf[0].allOf[1].anyOf[1].allOf[0]",
            "anyOf[1].anyOf[0]",
        ]
    );
    assert_eq!(
        d.reason,
        "the conditions of authority blocks anyOf[0] (\"https://issuer.example\"), anyOf[1] (\"https://issuer.example/\") for issuer \"https://issuer.example/\" do not hold"
    );
    assert_eq!(d.failures[2].authority, "https://issuer.example/");

    // A passing sub-group's failing leaves are not reasons for the denial.
    let d = ev(json!({"tee": "tdx", "vmid": "b", "svn": 9, "debug": false}));
    let paths: Vec<&str> = d.failures.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["anyOf[0].allOf[0]", "anyOf[1].anyOf[0]"]);

    // Structure is exposed.
    assert_eq!(p.version(), PolicyVersion::V1_0_0);
    assert_eq!(p.authorities().len(), 3);
    assert_eq!(p.authorities()[0].group().kind(), GroupKind::AllOf);
    assert_eq!(p.authorities()[1].group().kind(), GroupKind::AnyOf);
    assert!(p.authorities()[2].matches_issuer("https://other.example/"));
}

#[test]
fn normalised_form_round_trips() {
    for text in [DOC_CVM_POLICY, DOC_VMID_POLICY, DOC_SGX_POLICY] {
        let p = ReleasePolicy::parse(text.as_bytes()).unwrap();
        let again = ReleasePolicy::from_value(&p.to_value()).unwrap();
        assert_eq!(p, again);
        let original: Value = serde_json::from_str(text).unwrap();
        assert_eq!(p.to_value(), original);
    }
}

// ---------------------------------------------------------------------------------
// Parse errors

fn parse_err(v: Value) -> PolicyError {
    let text = serde_json::to_vec(&v).unwrap();
    let e = ReleasePolicy::parse(&text).unwrap_err();
    // from_value agrees with parse.
    assert_eq!(ReleasePolicy::from_value(&v).unwrap_err(), e);
    e
}

fn in_block(conds: Value) -> Value {
    json!({"version": "1.0.0", "anyOf": [{"authority": "https://a.example", "allOf": conds}]})
}

#[test]
fn unknown_operator_names_the_path() {
    let e = parse_err(in_block(json!([
        {"claim": "a", "equals": "x"},
        {"claim": "b", "exists": true},
        {"claim": "c", "equal": "x"}
    ])));
    assert_eq!(e.code(), "policy_unknown_operator");
    assert!(
        e.to_string()
            .starts_with("anyOf[0].allOf[2]: unknown operator \"equal\""),
        "{e}"
    );

    let e = parse_err(in_block(json!([
        {"anyOf": [{"claim": "a", "equals": 1}, {"claim": "b", "EQUALS": 1}]}
    ])));
    assert!(
        e.to_string()
            .starts_with("anyOf[0].allOf[0].anyOf[1]: unknown operator \"EQUALS\""),
        "{e}"
    );
}

#[test]
fn grammar_violations() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"version": "1.0.0", "anyOf": [], "extra": 1}),
            "policy_unknown_key",
            "(root): unknown key \"extra\"",
        ),
        (
            json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "a", "exists": true}]}]}),
            "policy_invalid",
            "(root): missing \"version\"",
        ),
        (
            json!({"version": "2.0", "anyOf": []}),
            "policy_unsupported_version",
            "version: unsupported release policy version \"2.0\"",
        ),
        (
            json!({"version": 1, "anyOf": []}),
            "policy_invalid",
            "version: must be a string",
        ),
        (
            json!({"version": "1.0.0", "allOf": []}),
            "policy_invalid",
            "(root): the top level is \"anyOf\"",
        ),
        (
            json!({"version": "1.0.0"}),
            "policy_invalid",
            "(root): missing \"anyOf\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": []}),
            "policy_invalid",
            "anyOf: empty",
        ),
        (
            json!({"version": "1.0.0", "anyOf": {}}),
            "policy_invalid",
            "anyOf: must be an array",
        ),
        (
            json!([]),
            "policy_invalid",
            "(root): a release policy is a JSON object",
        ),
        (
            json!({"version": "1.0.0", "anyOf": ["https://a"]}),
            "policy_invalid",
            "anyOf[0]: an authority block is an object",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "exists": true}]}]}),
            "policy_invalid",
            "anyOf[0]: missing \"authority\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "", "allOf": [{"claim": "a", "exists": true}]}]}),
            "policy_invalid",
            "anyOf[0]: \"authority\" is empty",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a b", "allOf": [{"claim": "a", "exists": true}]}]}),
            "policy_invalid",
            "anyOf[0]: \"authority\" \"https://a b\" contains whitespace",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a"}]}),
            "policy_invalid",
            "anyOf[0]: missing \"anyOf\" or \"allOf\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a", "allOf": [{"claim": "a", "exists": true}], "anyOf": [{"claim": "a", "exists": true}]}]}),
            "policy_invalid",
            "anyOf[0]: has both \"anyOf\" and \"allOf\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a", "claim": "x", "equals": 1}]}),
            "policy_unknown_key",
            "anyOf[0]: unknown key \"claim\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a", "allOf": []}]}),
            "policy_invalid",
            "anyOf[0].allOf: empty \"allOf\"",
        ),
        (
            json!({"version": "1.0.0", "anyOf": [{"authority": "https://a", "anyOf": {"claim": "a"}}]}),
            "policy_invalid",
            "anyOf[0].anyOf: \"anyOf\" must be an array",
        ),
        (
            in_block(json!(["claim"])),
            "policy_invalid",
            "anyOf[0].allOf[0]: a condition is an object",
        ),
        (
            in_block(json!([{}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: empty condition",
        ),
        (
            in_block(json!([{"claims": "a", "value": 1}])),
            "policy_unknown_key",
            "anyOf[0].allOf[0]: unknown key \"claims\"",
        ),
        (
            in_block(json!([{"equals": "a"}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: missing \"claim\"",
        ),
        (
            in_block(json!([{"anyOf": [{"claim": "a", "exists": true}], "note": "x"}])),
            "policy_unknown_key",
            "anyOf[0].allOf[0]: unknown key \"note\"",
        ),
        (
            in_block(json!([{"anyOf": []}])),
            "policy_invalid",
            "anyOf[0].allOf[0].anyOf: empty \"anyOf\"",
        ),
        (
            in_block(json!([{"claim": "a", "anyOf": [{"claim": "b", "exists": true}]}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: a claim condition cannot also have \"anyOf\"",
        ),
        (
            in_block(json!([{"claim": "a"}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: missing operator",
        ),
        (
            in_block(json!([{"claim": "a", "equals": 1, "exists": true}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: more than one operator (equals, exists)",
        ),
        (
            in_block(json!([{"claim": 5, "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" must be a string",
        ),
        (
            in_block(json!([{"claim": "a", "exists": "true"}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: the operand of \"exists\" must be true or false",
        ),
        (
            in_block(json!([{"claim": "a", "less": true}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: the operand of \"less\" must be a number or a string",
        ),
        (
            in_block(json!([{"claim": "a", "equals": null}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: the operand of \"equals\" must be a string, number or boolean",
        ),
        (
            in_block(json!([{"claim": "a", "notEquals": ["x"]}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: the operand of \"notEquals\"",
        ),
        (
            in_block(json!([{"claim": "", "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" is empty",
        ),
        (
            in_block(json!([{"claim": "a..b", "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" \"a..b\" has an empty segment",
        ),
        (
            in_block(json!([{"claim": "a.", "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" \"a.\" has an empty segment",
        ),
        (
            in_block(json!([{"claim": "x-ms-runtime.keys[0].kid", "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" \"x-ms-runtime.keys[0].kid\": array indexing is not supported",
        ),
        (
            in_block(json!([{"claim": "a b", "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" \"a b\" contains whitespace",
        ),
        (
            in_block(json!([{"claim": "a".repeat(257), "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" is 257 bytes; the limit is 256",
        ),
        (
            in_block(json!([{"claim": vec!["a"; 17].join("."), "equals": 1}])),
            "policy_invalid",
            "anyOf[0].allOf[0]: \"claim\" \"a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a\" has 17 segments; the limit is 16",
        ),
    ];
    for (policy, code, msg) in cases {
        let e = parse_err(policy.clone());
        assert_eq!(e.code(), code, "{policy}: {e}");
        assert!(
            e.to_string().starts_with(msg),
            "{policy}: got {e}, want {msg}"
        );
    }
    // Only Key Vault's "1.0.0": "1.0" (accepted before) and others are refused.
    for v in ["1.0", "1", "2.0.0", "1.0.0 "] {
        let e = ReleasePolicy::from_value(&json!({"version": v, "anyOf": [
            {"authority": "https://a", "anyOf": [{"claim": "a", "exists": true}]}
        ]}))
        .unwrap_err();
        assert_eq!(e.code(), "policy_unsupported_version", "{v}");
    }
    let p = ReleasePolicy::from_value(&json!({"version": "1.0.0", "anyOf": [
        {"authority": "https://a", "anyOf": [{"claim": "a", "exists": true}]}
    ]}))
    .unwrap();
    assert_eq!(p.version(), PolicyVersion::V1_0_0);
    // 256-byte, 16-segment claims are fine.
    let long = format!("{}.{}", vec!["a"; 15].join("."), "b".repeat(256 - 30));
    assert_eq!(long.len(), 256);
    ReleasePolicy::from_value(&in_block(json!([{"claim": long, "exists": true}]))).unwrap();
}

fn nest(levels: usize) -> Value {
    let mut c = json!({"claim": "a", "exists": true});
    for _ in 0..levels {
        c = json!({"anyOf": [c]});
    }
    in_block(json!([c]))
}

#[test]
fn limits() {
    // Top-level anyOf (1) + block allOf (2) + six nested groups = depth 8.
    ReleasePolicy::from_value(&nest(6)).unwrap();
    let e = parse_err(nest(7));
    assert_eq!(e.code(), "policy_too_deep");
    assert_eq!(
        e.to_string(),
        "anyOf[0].allOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf[0].anyOf: anyOf/allOf nested deeper than 8 levels"
    );
    // Deeper still is refused the same way (no stack trouble).
    assert_eq!(parse_err(nest(40)).code(), "policy_too_deep");

    let conds: Vec<Value> = (0..MAX_CONDITIONS)
        .map(|i| json!({"claim": format!("c{i}"), "exists": true}))
        .collect();
    ReleasePolicy::from_value(&in_block(Value::Array(conds.clone()))).unwrap();
    let mut over = conds.clone();
    over.push(json!({"claim": "one-more", "exists": true}));
    let e = parse_err(in_block(Value::Array(over)));
    assert_eq!(e.code(), "policy_too_many_conditions");
    assert!(
        e.to_string()
            .starts_with("anyOf[0].allOf[64]: more than 64"),
        "{e}"
    );
    // The limit is for the whole policy, across blocks.
    let block = json!({"authority": "https://a", "anyOf": conds[..40]});
    let e = parse_err(json!({"version": "1.0.0", "anyOf": [block.clone(), block]}));
    assert!(e.to_string().starts_with("anyOf[1].anyOf[24]:"), "{e}");

    let big = vec![b' '; MAX_POLICY_BYTES + 1];
    let e = ReleasePolicy::parse(&big).unwrap_err();
    assert_eq!(e.code(), "policy_too_large");
}

#[test]
fn text_level_errors() {
    let e = ReleasePolicy::parse(b"{\"version\": \"1.0.0\", ").unwrap_err();
    assert_eq!(e.code(), "policy_not_json");
    // A repeated key must not silently mean its last value.
    let dup = br#"{"version": "1.0.0", "anyOf": [{"authority": "https://a", "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm", "equals": "anything"}]}]}"#;
    let e = ReleasePolicy::parse(dup).unwrap_err();
    assert_eq!(e.code(), "policy_not_json");
    assert!(e.to_string().contains("duplicate key \"equals\""), "{e}");
    let dup = br#"{"version": "1.0.0", "version": "1.0", "anyOf": []}"#;
    assert_eq!(
        ReleasePolicy::parse(dup).unwrap_err().code(),
        "policy_not_json"
    );
}

// ---------------------------------------------------------------------------------
// The release_policy envelope

#[test]
fn envelope_round_trip_keeps_exact_bytes() {
    // Odd formatting on purpose: it must come back byte for byte.
    let text = DOC_CVM_POLICY.replace("  ", "\t");
    let env = json!({
        "contentType": "application/json; charset=utf-8",
        "data": URL_SAFE_NO_PAD.encode(&text),
        "immutable": true,
    });
    let e = ReleasePolicyEnvelope::parse(&env).unwrap();
    assert_eq!(e.data(), text.as_bytes());
    assert!(e.immutable());
    assert_eq!(e.content_type(), "application/json; charset=utf-8");
    assert_eq!(e.to_json(), env);
    assert!(
        e.policy()
            .evaluate(
                CVM_ISSUER,
                &cvm_claims("sevsnpvm", Some("azure-compliant-cvm"))
            )
            .allowed
    );

    // Defaults; padded base64url accepted; output unpadded.
    let mut sgx = DOC_SGX_POLICY.to_string();
    while sgx.len().is_multiple_of(3) {
        sgx.push('\n');
    }
    let padded = URL_SAFE.encode(&sgx);
    assert!(padded.ends_with('='));
    let e = ReleasePolicyEnvelope::parse(&json!({"data": padded, "contentType": null})).unwrap();
    assert!(!e.immutable());
    assert_eq!(e.content_type(), "application/json; charset=utf-8");
    assert_eq!(e.to_json()["data"], json!(URL_SAFE_NO_PAD.encode(&sgx)));
    assert_eq!(e.data(), sgx.as_bytes());
    assert_eq!(e.to_json()["immutable"], json!(false));

    let made = ReleasePolicyEnvelope::new(DOC_VMID_POLICY.as_bytes(), false).unwrap();
    assert_eq!(ReleasePolicyEnvelope::parse(&made.to_json()).unwrap(), made);

    // Other spellings of JSON + UTF-8 are accepted and kept.
    for ct in ["application/json", "Application/JSON;charset=UTF-8"] {
        let e = ReleasePolicyEnvelope::parse(
            &json!({"contentType": ct, "data": URL_SAFE_NO_PAD.encode(DOC_CVM_POLICY)}),
        )
        .unwrap();
        assert_eq!(e.to_json()["contentType"], json!(ct));
    }
}

#[test]
fn envelope_errors() {
    let data = URL_SAFE_NO_PAD.encode(DOC_CVM_POLICY);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!("x"),
            "release_policy_invalid",
            "release_policy.(root): expected an object",
        ),
        (
            json!({}),
            "release_policy_invalid",
            "release_policy.data: missing",
        ),
        (
            json!({"data": 5}),
            "release_policy_invalid",
            "release_policy.data: must be a base64url string",
        ),
        (
            json!({"data": "a+b/"}),
            "release_policy_invalid",
            "release_policy.data: not base64url",
        ),
        (
            json!({"data": data, "contentType": "text/plain"}),
            "release_policy_invalid",
            "release_policy.contentType: unsupported content type \"text/plain\"",
        ),
        (
            json!({"data": data, "contentType": "application/json; charset=latin1"}),
            "release_policy_invalid",
            "release_policy.contentType: unsupported",
        ),
        (
            json!({"data": data, "immutable": "yes"}),
            "release_policy_invalid",
            "release_policy.immutable: must be a boolean",
        ),
        (
            json!({"data": data, "policy": {}}),
            "release_policy_invalid",
            "release_policy.policy: unknown member",
        ),
        (
            json!({"data": URL_SAFE_NO_PAD.encode("not json")}),
            "policy_not_json",
            "release policy is not valid JSON",
        ),
        (
            json!({"data": URL_SAFE_NO_PAD.encode(r#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"a","equal":1}]}]}"#)}),
            "policy_unknown_operator",
            "anyOf[0].allOf[0]: unknown operator \"equal\"",
        ),
        (
            json!({"data": "A".repeat(MAX_POLICY_BYTES * 2)}),
            "policy_too_large",
            "release policy is",
        ),
    ];
    for (env, code, msg) in cases {
        let e = ReleasePolicyEnvelope::parse(&env).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().starts_with(msg), "got {e}, want {msg}");
    }
    assert_eq!(
        ReleasePolicyEnvelope::new(b"{}", false).unwrap_err().code(),
        "policy_invalid"
    );
}
