//! The host agent as a process of its own (`cvm host run`): the HTTP API the control
//! plane calls ([`control::agent::wire`]) over one host's [`HostAgent`]. Every route
//! needs the credential the agent made at its start and registered with the control
//! plane; a request for another host's VM, or with a VM id that is not 32 hex digits
//! (it names a directory), is refused before the agent sees it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use control::agent::wire::{
    AttestRequest, KeyCheck, NDJSON, Outcome, PreEncryptOutcome, StartLine, VmStatus,
};
use control::agent::{BootSpec, HostAgent, PreEncryption};
use httpd::{ApiError, Credential, bearer};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// The largest request body accepted (a boot spec is well under 4 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// What the agent's routes share.
struct Agent {
    host: String,
    credential: Zeroizing<String>,
    inner: Arc<dyn HostAgent>,
    /// The pre-encryption service of this host's disks, when the agent runs one.
    pre: Option<Arc<dyn PreEncryption>>,
}

impl Agent {
    fn admits(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                p.as_bytes(),
                self.credential.as_bytes(),
            )
            .is_ok()
        })
    }

    fn authorized(&self, cred: &Credential) -> Result<(), ApiError> {
        if !self.admits(cred.bearer()) {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "a valid credential is required",
            ));
        }
        Ok(())
    }

    /// The pre-encryption service, or 404 when this agent runs none.
    fn pre(&self) -> Result<Arc<dyn PreEncryption>, ApiError> {
        self.pre.clone().ok_or_else(|| {
            ApiError::new(
                404,
                "not_found",
                "this host agent runs no pre-encryption service",
            )
        })
    }

    fn check(&self, cred: &Credential, vm_id: &str) -> Result<(), ApiError> {
        self.authorized(cred)?;
        if vm_id.len() != 32 || !vm_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad("bad_request", "a VM id is 32 hex digits"));
        }
        Ok(())
    }

    /// `spec` is for this host and the VM the path names.
    fn own(&self, spec: &BootSpec, vm_id: &str) -> Result<(), ApiError> {
        if spec.host != self.host || spec.vm_id != vm_id {
            return Err(ApiError::new(
                409,
                "wrong_host",
                format!(
                    "this is the agent of host {}; the request is for VM {} on host {}",
                    self.host, spec.vm_id, spec.host
                ),
            ));
        }
        Ok(())
    }
}

type S = State<Arc<Agent>>;
type Body = Result<Bytes, BytesRejection>;
type R<T> = Result<axum::Json<T>, ApiError>;

fn typed<T: DeserializeOwned>(b: Body) -> Result<T, ApiError> {
    let bytes = httpd::body_rejection(b, MAX_BODY, "bad_request")
        .map_err(|(status, code, message)| ApiError::new(status, code, message))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad(
            "bad_request",
            e.to_string().chars().take(300).collect::<String>(),
        )
    })
}

/// One line of the start answer.
fn line(l: &StartLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    Bytes::from(v)
}

/// Runs the boot on the blocking pool and answers each step as it ends (so the
/// control plane records it at once, and a kill of this agent loses no step that
/// ended). A caller that goes away does not stop the boot: the VM's state is then
/// the control plane's to settle (it boots interrupted VMs again).
async fn start(
    State(a): S,
    Path(id): Path<String>,
    cred: Credential,
    b: Body,
) -> Result<Response, ApiError> {
    a.check(&cred, &id)?;
    let spec: BootSpec = typed(b)?;
    a.own(&spec, &id)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let failure = a
                .inner
                .start(&spec, &mut |s| {
                    let _ = tx.send(line(&StartLine::Step(s)));
                })
                .err();
            let booted = failure.is_none();
            // Nobody hears the outcome (the caller went away, or gave up waiting):
            // the VM is stopped again rather than left running unrecorded; the
            // control plane has it `failed` or boots it again.
            if tx.send(line(&StartLine::Done { failure })).is_err() && booted {
                let _ = a.inner.stop(&a.host, &spec.vm_id);
            }
        })
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|l| (Ok::<_, std::convert::Infallible>(l), rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, NDJSON)
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError::logged("internal", e))
}

async fn stop(State(a): S, Path(id): Path<String>, cred: Credential) -> R<Outcome> {
    a.check(&cred, &id)?;
    httpd::blocking(move || Outcome {
        token: None,
        failure: a.inner.stop(&a.host, &id).err(),
    })
    .await
    .map(axum::Json)
}

async fn status(State(a): S, Path(id): Path<String>, cred: Credential) -> R<VmStatus> {
    a.check(&cred, &id)?;
    httpd::blocking(move || VmStatus {
        running: a.inner.is_running(&a.host, &id),
    })
    .await
    .map(axum::Json)
}

async fn attest(State(a): S, Path(id): Path<String>, cred: Credential, b: Body) -> R<Outcome> {
    a.check(&cred, &id)?;
    let req: AttestRequest = typed(b)?;
    a.own(&req.spec, &id)?;
    let nonce = hex::decode(&req.nonce)
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= 64)
        .ok_or_else(|| ApiError::bad("bad_request", "nonce is 1 to 64 bytes as hex digits"))?;
    httpd::blocking(move || match a.inner.attest(&req.spec, &nonce) {
        Ok(t) => Outcome {
            token: Some(t),
            failure: None,
        },
        Err(f) => Outcome {
            token: None,
            failure: Some(f),
        },
    })
    .await
    .map(axum::Json)
}

async fn console(
    State(a): S,
    Path(id): Path<String>,
    cred: Credential,
) -> Result<axum::Json<Option<control::agent::wire::Console>>, ApiError> {
    a.check(&cred, &id)?;
    httpd::blocking(move || a.inner.console(&a.host, &id))
        .await?
        .map(axum::Json)
        .map_err(|f| ApiError::new(502, f.code, f.reason))
}

async fn forget(State(a): S, Path(id): Path<String>, cred: Credential) -> R<Outcome> {
    a.check(&cred, &id)?;
    httpd::blocking(move || Outcome {
        token: None,
        failure: a.inner.forget(&a.host, &id).err(),
    })
    .await
    .map(axum::Json)
}

/// Encrypts the OS disk of the VM the path names on this host (the pre-encryption
/// service), before its first boot: as long as the disk takes.
async fn pre_encrypt(
    State(a): S,
    Path(id): Path<String>,
    cred: Credential,
    b: Body,
) -> R<PreEncryptOutcome> {
    a.check(&cred, &id)?;
    let spec: BootSpec = typed(b)?;
    a.own(&spec, &id)?;
    let pre = a.pre()?;
    httpd::blocking(move || match pre.pre_encrypt(&spec) {
        Ok(done) => PreEncryptOutcome {
            done: Some(done),
            failure: None,
        },
        Err(f) => PreEncryptOutcome {
            done: None,
            failure: Some(f),
        },
    })
    .await
    .map(axum::Json)
}

/// Whether the platform vault's key `name` can protect an OS disk.
async fn customer_key(State(a): S, Path(name): Path<String>, cred: Credential) -> R<KeyCheck> {
    a.authorized(&cred)?;
    if name.is_empty() || name.len() > 127 {
        return Err(ApiError::bad(
            "bad_request",
            "a key name is 1 to 127 characters",
        ));
    }
    let pre = a.pre()?;
    httpd::blocking(move || KeyCheck {
        why: pre.check_customer_key(&name).err(),
    })
    .await
    .map(axum::Json)
}

/// The agent's router: `host`'s VMs run by `inner` (their disks pre-encrypted by
/// `pre`, when given), for callers presenting `credential`.
pub fn router(
    host: &str,
    credential: Zeroizing<String>,
    inner: Arc<dyn HostAgent>,
    pre: Option<Arc<dyn PreEncryption>>,
) -> Router {
    let agent = Arc::new(Agent {
        host: host.to_string(),
        credential,
        inner,
        pre,
    });
    let gate = agent.clone();
    let check: httpd::BodyGate =
        Arc::new(move |p| !httpd::large_body(p) || gate.admits(bearer(&p.headers)));
    let routes = Router::new()
        .route("/vms/{id}", get(status).delete(forget))
        .route("/vms/{id}/start", post(start))
        .route("/vms/{id}/stop", post(stop))
        .route("/vms/{id}/attest", post(attest))
        .route("/vms/{id}/console", get(console))
        .route("/vms/{id}/pre-encryption", post(pre_encrypt))
        .route("/customer-keys/{name}", get(customer_key));
    httpd::api_router(routes, MAX_BODY, check).with_state(agent)
}

/// A fresh agent credential: 32 random bytes, hex.
pub fn new_credential() -> Result<Zeroizing<String>, crate::HostError> {
    let mut b = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut b[..])
        .map_err(|_| crate::HostError::Client("no randomness for the agent's credential".into()))?;
    Ok(Zeroizing::new(hex::encode(&b[..])))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use control::agent::{BootFailure, StepReport};
    use control::remote::RemoteAgents;
    use control::store::{AgentEndpoint, HostRow, Store};

    const VM: &str = "0123456789abcdef0123456789abcdef";

    /// An agent that boots every VM in one step, except VMs with 4 vCPUs, which its
    /// attestation refuses, and VMs with 8, during whose boot it dies.
    struct Fake;

    impl HostAgent for Fake {
        fn start(
            &self,
            spec: &BootSpec,
            report: &mut dyn FnMut(StepReport),
        ) -> Result<(), BootFailure> {
            report(StepReport {
                step: "launch".into(),
                outcome: "ok".into(),
                duration_ms: 3,
                detail: format!("{} vCPUs", spec.vcpus),
            });
            if spec.vcpus == 8 {
                panic!("the agent dies mid-boot");
            }
            if spec.vcpus == 4 {
                return Err(BootFailure {
                    step: "attest".into(),
                    code: control_api::codes::boot::ATTESTATION_DENIED,
                    reason: "no-debug: expected false, got true".into(),
                });
            }
            Ok(())
        }
        fn stop(&self, _: &str, _: &str) -> Result<(), BootFailure> {
            Ok(())
        }
        fn is_running(&self, host: &str, vm_id: &str) -> bool {
            host == "host-1" && vm_id == VM
        }
        fn attest(&self, spec: &BootSpec, nonce: &[u8]) -> Result<String, BootFailure> {
            Ok(format!("token-{}-{}", spec.vm_id, hex::encode(nonce)))
        }
        fn forget(&self, _: &str, _: &str) -> Result<(), BootFailure> {
            Ok(())
        }
        fn console(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<control::agent::wire::Console>, BootFailure> {
            Ok(Some(control::agent::wire::Console {
                text: "Linux version 6.1".into(),
                truncated: false,
                offset: 0,
                stage: "kernel".into(),
            }))
        }
    }

    fn spec(vcpus: u32) -> BootSpec {
        BootSpec {
            vm_id: VM.into(),
            host: "host-1".into(),
            backend: "emulated".into(),
            vcpus,
            memory_mib: 1024,
            secure_boot: true,
            secure_boot_template: "linux".into(),
            image: "/nonexistent".into(),
            encryption: "VMGuestStateOnly".into(),
            customer_key: None,
            attestation_policy: "default".into(),
            vmgs_created: false,
            disk_pin: None,
            disk_bound: false,
            tenant: "t".into(),
        }
    }

    /// Serves the fake agent of `host-1` on loopback; returns its base URL.
    fn serve(credential: &str) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let credential = Zeroizing::new(credential.to_string());
        std::thread::spawn(move || {
            let _ = httpd::run("127.0.0.1:0", None, move |_, base| {
                let _ = tx.send(base);
                Ok(router("host-1", credential, Arc::new(Fake), None))
            });
        });
        rx.recv().unwrap()
    }

    #[test]
    fn the_control_plane_reaches_a_registered_agent_and_no_one_else_does() {
        let credential = "c".repeat(64);
        let url = serve(&credential);
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&sqldb::Location::sqlite(&dir.path().join("c.db"))).unwrap());
        store.ensure_regions(&["eastus".to_string()]).unwrap();
        for name in ["host-1", "host-2"] {
            store
                .put_host(&HostRow {
                    name: name.into(),
                    region: "eastus".into(),
                    vcpus: 8,
                    memory_gib: 32,
                    max_vms: 2,
                    snp_enabled: true,
                    backend: "emulated".into(),
                    used_vcpus: 0,
                    used_memory_gib: 0,
                    vms: 0,
                    generation: 0,
                })
                .unwrap();
        }
        let remote = RemoteAgents::new(store.clone(), None).unwrap();
        // Not registered yet.
        let e = remote.start(&spec(2), &mut |_| {}).unwrap_err();
        assert_eq!(e.code, control_api::codes::HOST_AGENT_UNAVAILABLE, "{e}");
        assert!(!remote.is_running("host-1", VM));
        let endpoint = AgentEndpoint {
            url: url.clone(),
            credential: Zeroizing::new(credential.clone()),
        };
        assert!(store.put_agent("host-1", &endpoint).unwrap());
        assert!(!store.put_agent("host-9", &endpoint).unwrap());
        assert!(!format!("{endpoint:?}").contains(&credential));
        // An agent without a pre-encryption service says so (404, with the reason)
        // rather than leaving a disk unencrypted.
        {
            use control::agent::PreEncryption as _;
            let e = remote.pre_encrypt(&spec(2)).unwrap_err();
            assert_eq!(e.step, "disk_pre_encryption");
            assert!(e.reason.contains("runs no pre-encryption service"), "{e}");
            let why = remote.check_customer_key("k").unwrap_err();
            assert!(why.contains("runs no pre-encryption service"), "{why}");
        }
        // Through the agent: steps, a refusal with its stable code, status, a token.
        let mut steps = Vec::new();
        remote.start(&spec(2), &mut |s| steps.push(s)).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].detail, "2 vCPUs");
        let e = remote.start(&spec(4), &mut |_| {}).unwrap_err();
        assert_eq!(e.code, control_api::codes::boot::ATTESTATION_DENIED);
        assert_eq!(e.step, "attest");
        assert!(e.reason.contains("no-debug"), "{e}");
        // An agent that stops mid-boot: the steps it reported count, then a failure.
        let mut steps = Vec::new();
        let e = remote.start(&spec(8), &mut |s| steps.push(s)).unwrap_err();
        assert_eq!(steps.len(), 1);
        assert_eq!(e.code, control_api::codes::boot::HOST_AGENT);
        assert!(e.reason.contains("ended after 1 steps"), "{e}");
        assert!(remote.is_running("host-1", VM));
        assert!(!remote.is_running("host-1", &"f".repeat(32)));
        assert_eq!(
            remote.attest(&spec(2), &[0xab, 0xcd]).unwrap(),
            format!("token-{VM}-abcd")
        );
        remote.stop("host-1", VM).unwrap();
        remote.forget("host-1", VM).unwrap();
        // A VM of another host is refused by the agent, not booted there.
        let mut other = spec(2);
        other.host = "host-2".into();
        store.put_agent("host-2", &endpoint).unwrap();
        let e = remote.start(&other, &mut |_| {}).unwrap_err();
        assert_eq!(e.code, control_api::codes::boot::HOST_AGENT);
        assert!(e.reason.contains("wrong_host"), "{e}");
        // Without the credential, with another, with a bad VM id: refused.
        let http = api_client::agent(None).unwrap();
        let call = |cred: Option<&str>, path: &str| {
            api_client::Transport::new(http.clone(), &url, cred.map(str::to_string))
                .call::<(), serde_json::Value>(api_client::Method::Get, path, None)
        };
        let status = |r: Result<serde_json::Value, api_client::ClientError>| {
            r.err().and_then(|e| e.status())
        };
        let path = format!("/vms/{VM}");
        assert_eq!(status(call(None, &path)), Some(401));
        assert_eq!(status(call(Some(&"d".repeat(64)), &path)), Some(401));
        assert_eq!(
            status(call(Some(&credential), "/vms/..%2F..%2Fetc")),
            Some(400)
        );
        assert_eq!(status(call(Some(&credential), "/vms/ABC")), Some(400));
        assert_eq!(
            call(Some(&credential), &path).unwrap(),
            serde_json::json!({"running": true})
        );
        // An unreachable agent: a failure naming it, not a hang or a panic.
        let gone = AgentEndpoint {
            url: "http://127.0.0.1:9".into(),
            credential: Zeroizing::new(credential.clone()),
        };
        store.put_agent("host-1", &gone).unwrap();
        let e = remote.start(&spec(2), &mut |_| {}).unwrap_err();
        assert_eq!(e.code, control_api::codes::boot::HOST_AGENT);
        assert!(e.reason.contains("unreachable"), "{e}");
        assert!(!remote.is_running("host-1", VM));
    }

    #[test]
    fn a_failure_with_an_unknown_code_is_a_host_agent_failure() {
        let f: BootFailure =
            serde_json::from_str(r#"{"step":"x","code":"made_up","reason":"why"}"#).unwrap();
        assert_eq!(f.code, control_api::codes::boot::HOST_AGENT);
        assert_eq!(f.reason, "why (made_up)");
        let f: BootFailure =
            serde_json::from_str(r#"{"step":"vmgs","code":"vmgs_unopenable","reason":"r"}"#)
                .unwrap();
        assert_eq!(f.code, control_api::codes::boot::VMGS_UNOPENABLE);
    }
}
