//! The policy sandbox's pool on its own: workers keep compiled policies (the text
//! crosses the pipe once) and a request that is cancelled mid-evaluation gives its
//! worker and its provider's share back.

use std::time::Duration;

use attest::policy::ProviderSettings;
use attest::sandbox::{Sandbox, SandboxConfig, SandboxError};
use serde_json::json;

fn sandbox(per_provider: usize, time: Duration) -> Sandbox {
    let mut cfg = SandboxConfig::new(
        env!("CARGO_BIN_EXE_attest-policy-worker").into(),
        Vec::new(),
    );
    cfg.workers = 1;
    cfg.per_provider = per_provider;
    cfg.time = time;
    cfg.queue_timeout = Duration::from_secs(2);
    Sandbox::new(cfg)
}

/// Allows exactly when `input.n` is `n`.
fn policy(n: usize) -> String {
    format!("package policy\nimport rego.v1\ndefault allow := false\nallow if input.n == {n}\n")
}

/// One worker sees more policies than it keeps (64): the first policy, forgotten by
/// then, is sent again when the worker says it does not know it, and every decision
/// is the policy's own.
#[tokio::test]
async fn a_worker_that_forgot_a_policy_is_sent_it_again() {
    let sb = sandbox(1, Duration::from_secs(2));
    let settings = ProviderSettings::default();
    for round in 0..2 {
        for n in 0..70 {
            let d = sb
                .evaluate("p", &policy(n), &settings, &json!({ "n": n }))
                .await
                .unwrap_or_else(|e| panic!("round {round}, policy {n}: {e}"));
            assert!(d.allow, "round {round}, policy {n}");
            let d = sb
                .evaluate("p", &policy(n), &settings, &json!({ "n": n + 1 }))
                .await
                .unwrap();
            assert!(!d.allow, "round {round}, policy {n} on another input");
        }
    }
    // A policy that does not compile is reported, and the worker stays usable.
    let e = sb
        .evaluate("p", "package policy\nallow if {", &settings, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Invalid(_)), "{e}");
    let d = sb
        .evaluate("p", &policy(3), &settings, &json!({ "n": 3 }))
        .await
        .unwrap();
    assert!(d.allow);
}

/// A spinning evaluation whose request goes away (the client hung up) is stopped: its
/// worker is killed, the only worker slot and the provider's only share come back at
/// once, and the next request of that provider gets a fresh worker.
#[tokio::test]
async fn a_cancelled_evaluation_gives_back_its_worker_and_share() {
    let sb = sandbox(1, Duration::from_secs(30));
    let settings = ProviderSettings::default();
    let spin = "package policy\nimport rego.v1\nr := numbers.range(1, 3000)\nallow if count([1 | some a in r; some b in r; some c in r]) > 0\n";
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        sb.evaluate("p", spin, &settings, &json!({})),
    )
    .await;
    assert!(cancelled.is_err(), "the spin finished: {cancelled:?}");
    // Without the slot and share back, this would wait 2 s and fail with Busy; with
    // the spinning worker still in the pool, it would wait for the spin to end.
    let d = sb
        .evaluate("p", &policy(1), &settings, &json!({ "n": 1 }))
        .await
        .unwrap();
    assert!(d.allow);
}
