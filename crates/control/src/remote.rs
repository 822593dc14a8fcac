//! Host agents in processes of their own (`cvm host run`, on the host's machine): the
//! control plane finds a host's agent in the store (where it registered, with the
//! credential it accepts) and calls its HTTP API ([`crate::agent::wire`]). Any
//! replica reaches any host's agent, so nothing about a host lives in one
//! control-plane process.

use std::sync::Arc;

use api_client::{ClientError, Method, Transport, segment};
use control_api::codes::boot as code;

use crate::agent::wire::{
    AttestRequest, KeyCheck, MAX_LINE, Outcome, PreEncryptOutcome, StartLine, VmStatus,
};
use crate::agent::{BootFailure, BootSpec, HostAgent, PreEncrypted, PreEncryption, StepReport};
use crate::store::{AgentEndpoint, Store};

/// The registered agents of every host, as one [`HostAgent`].
pub struct RemoteAgents {
    store: Arc<Store>,
    http: ureq::Agent,
    /// For starts: the answer streams while the boot goes on (a guest's boot under
    /// QEMU takes longer than a call may).
    streaming: ureq::Agent,
    /// For a disk's pre-encryption (one answer when it is done).
    long: ureq::Agent,
}

/// How long a start's answer may stream.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a host agent may take to pre-encrypt a VM's OS disk (it reads and writes
/// the whole disk).
pub const PRE_ENCRYPTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

impl std::fmt::Debug for RemoteAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteAgents")
    }
}

fn failure(step: &str, reason: String) -> BootFailure {
    BootFailure {
        step: step.to_string(),
        code: code::HOST_AGENT,
        reason,
    }
}

impl RemoteAgents {
    /// The agents `store` knows of, whose TLS certificates chain to `ca` (PEM; `None`:
    /// the Mozilla roots).
    pub fn new(store: Arc<Store>, ca: Option<&[u8]>) -> Result<Self, ClientError> {
        Ok(RemoteAgents {
            store,
            http: api_client::agent(ca)?,
            streaming: api_client::streaming_agent(ca, START_TIMEOUT)?,
            long: api_client::long_call_agent(ca, PRE_ENCRYPTION_TIMEOUT)?,
        })
    }

    fn endpoint(&self, step: &str, host: &str) -> Result<AgentEndpoint, BootFailure> {
        match self.store.agent(host) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(BootFailure {
                step: step.to_string(),
                code: control_api::codes::HOST_AGENT_UNAVAILABLE,
                reason: format!("host {host} has no agent: run `cvm host run` for it"),
            }),
            Err(e) => Err(failure(step, format!("the store: {e}"))),
        }
    }

    fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
        host: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, BootFailure> {
        self.call_with(&self.http, step, host, method, path, body)
    }

    fn call_with<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        agent: &ureq::Agent,
        step: &str,
        host: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, BootFailure> {
        let e = self.endpoint(step, host)?;
        let t = Transport::new(
            agent.clone(),
            &e.url,
            Some(e.credential.as_str().to_string()),
        );
        t.call(method, path, body).map_err(|err| {
            failure(
                step,
                match err {
                    // Not the agent's address: tenants read this.
                    ClientError::Transport { source, .. } => {
                        format!("the agent of host {host} is unreachable: {source}")
                    }
                    other => format!("the agent of host {host}: {other}"),
                },
            )
        })
    }
}

fn vm_path(vm_id: &str) -> String {
    format!("/vms/{}", segment(vm_id))
}

/// The most steps a start answer may report.
const MAX_STEPS: usize = 64;

impl HostAgent for RemoteAgents {
    /// The boot's steps are reported as the agent answers each (its answer is
    /// newline-delimited JSON, [`StartLine`]).
    fn start(
        &self,
        spec: &BootSpec,
        report: &mut dyn FnMut(StepReport),
    ) -> Result<(), BootFailure> {
        use std::io::BufRead as _;
        let host = spec.host.as_str();
        let e = self.endpoint("start", host)?;
        let url = format!("{}{}/start", e.url, vm_path(&spec.vm_id));
        let broke = |why: String| failure("start", format!("the agent of host {host}: {why}"));
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(spec).map_err(|err| broke(format!("encoding the spec: {err}")))?,
        );
        let auth = zeroize::Zeroizing::new(format!("Bearer {}", e.credential.as_str()));
        let mut resp = self
            .streaming
            .post(&url)
            .header("Authorization", auth.as_str())
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|err| {
                failure(
                    "start",
                    format!("the agent of host {host} is unreachable: {err}"),
                )
            })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_LINE as u64)
                .read_to_string()
                .unwrap_or_default();
            let why = serde_json::from_str::<api_contract::ErrorResponse>(&text)
                .map(|r| format!("{} {}: {}", status, r.error.code, r.error.message))
                .unwrap_or_else(|_| format!("answered {status}"));
            return Err(broke(why));
        }
        let mut reader = std::io::BufReader::new(
            resp.body_mut()
                .with_config()
                .limit((MAX_STEPS as u64 + 1) * MAX_LINE as u64)
                .reader(),
        );
        let mut steps = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = std::io::Read::take(&mut reader, MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .map_err(|err| broke(format!("its answer broke off after {steps} steps: {err}")))?;
            if n == 0 {
                return Err(broke(format!(
                    "its answer ended after {steps} steps, before the boot did (the agent stopped?)"
                )));
            }
            if line.last() != Some(&b'\n') && n == MAX_LINE {
                return Err(broke(format!(
                    "a line of its answer is over {MAX_LINE} bytes"
                )));
            }
            match serde_json::from_slice::<StartLine>(&line) {
                Ok(StartLine::Step(s)) if steps < MAX_STEPS => {
                    steps += 1;
                    report(s);
                }
                Ok(StartLine::Step(_)) => {
                    return Err(broke(format!("its answer has over {MAX_STEPS} steps")));
                }
                Ok(StartLine::Done { failure: None }) => return Ok(()),
                Ok(StartLine::Done { failure: Some(f) }) => return Err(f),
                Err(err) => {
                    return Err(broke(format!("an answer line is not a step: {err}")));
                }
            }
        }
    }

    fn stop(&self, host: &str, vm_id: &str) -> Result<(), BootFailure> {
        let o: Outcome = self.call(
            "stop",
            host,
            Method::Post,
            &format!("{}/stop", vm_path(vm_id)),
            None::<&()>,
        )?;
        o.failure.map_or(Ok(()), Err)
    }

    fn is_running(&self, host: &str, vm_id: &str) -> bool {
        self.call::<(), VmStatus>("status", host, Method::Get, &vm_path(vm_id), None)
            .is_ok_and(|s| s.running)
    }

    fn attest(&self, spec: &BootSpec, nonce: &[u8]) -> Result<String, BootFailure> {
        let o: Outcome = self.call(
            "attest",
            &spec.host,
            Method::Post,
            &format!("{}/attest", vm_path(&spec.vm_id)),
            Some(&AttestRequest {
                spec: spec.clone(),
                nonce: hex::encode(nonce),
            }),
        )?;
        match (o.token, o.failure) {
            (_, Some(f)) => Err(f),
            (Some(t), None) => Ok(t),
            (None, None) => Err(failure("attest", "the agent sent no token".into())),
        }
    }

    fn console(
        &self,
        host: &str,
        vm_id: &str,
    ) -> Result<Option<crate::agent::wire::Console>, BootFailure> {
        self.call::<(), _>(
            "console",
            host,
            Method::Get,
            &format!("{}/console", vm_path(vm_id)),
            None,
        )
    }

    fn forget(&self, host: &str, vm_id: &str) -> Result<(), BootFailure> {
        let o: Outcome = self.call("forget", host, Method::Delete, &vm_path(vm_id), None::<&()>)?;
        o.failure.map_or(Ok(()), Err)
    }
}

/// The pre-encryption service of the VM's host, through its agent: what `cvm control
/// serve` replicas use (`cvm up` runs the service in its own process).
impl PreEncryption for RemoteAgents {
    /// Asked of any registered agent: they all use the platform's one key vault.
    fn check_customer_key(&self, key: &str) -> Result<(), String> {
        let hosts = self.store.hosts().map_err(|e| format!("the store: {e}"))?;
        let Some(host) = hosts
            .iter()
            .find(|h| matches!(self.store.agent(&h.name), Ok(Some(_))))
        else {
            return Err(format!(
                "the customer key '{key}' cannot be checked: no host agent is registered (run `cvm host run`)"
            ));
        };
        let c: KeyCheck = self
            .call::<(), _>(
                "customer_key",
                &host.name,
                Method::Get,
                &format!("/customer-keys/{}", segment(key)),
                None,
            )
            .map_err(|f| f.reason)?;
        c.why.map_or(Ok(()), Err)
    }

    fn pre_encrypt(&self, spec: &BootSpec) -> Result<PreEncrypted, BootFailure> {
        let step = "disk_pre_encryption";
        let o: PreEncryptOutcome = self.call_with(
            &self.long,
            step,
            &spec.host,
            Method::Post,
            &format!("{}/pre-encryption", vm_path(&spec.vm_id)),
            Some(spec),
        )?;
        match (o.done, o.failure) {
            (_, Some(f)) => Err(f),
            (Some(done), None) => Ok(done),
            (None, None) => Err(failure(
                step,
                "the agent said neither what it made nor why not".into(),
            )),
        }
    }
}
