//! Tenant policies run in worker processes with bounded memory and time.
//!
//! A tenant administrator writes Rego, and the Rego engine has no per-evaluation memory
//! bound: `count(numbers.range(1, 1e15))` asks for petabytes and aborts the process,
//! a recursive function overflows the stack, a string built in a loop runs for minutes.
//! So every policy a tenant wrote (and every draft policy of a dry run) is compiled and
//! evaluated in a worker process: its address space is capped (`RLIMIT_AS`), the
//! engine's own timer stops an evaluation at the time limit, and the service kills a
//! worker that does not answer within a little more than that. A worker that dies or is
//! killed is replaced on the next use; the service itself never runs tenant Rego.
//!
//! Fairness: at most `per_provider` of the `workers` run one provider's policies at once
//! (a tenant whose policy spins cannot take every worker), and a request that waits
//! longer than `queue_timeout` for a worker is refused (503 `policy_busy`).
//!
//! The built-in default policies are the service's own code and run in process. A
//! service configured without a sandbox runs no tenant policy at all: it refuses them
//! (501 `policy_sandbox_unavailable`) rather than run them in process.
//!
//! Protocol on the worker's stdin/stdout: frames of a 4-byte big-endian length and a
//! JSON document, one request and one response at a time. A worker keeps what it
//! compiled under the SHA-256 of policy and settings, so the policy text crosses the
//! pipe only the first time a worker sees it; after that a request is the key and the
//! input. The service waits for a worker, and for its answer, without holding a
//! runtime thread (the pipes are non-blocking on the runtime).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Semaphore;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{CompiledPolicy, Decision, DenyReason, ProviderSettings};

/// The largest frame either side accepts.
const MAX_FRAME: usize = 4 * 1024 * 1024;

/// How the workers are started and bounded.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The worker program (`cvm`, or the `attest-policy-worker` binary).
    pub program: PathBuf,
    /// Its arguments (`["attest", "policy-worker"]` for `cvm`).
    pub args: Vec<String>,
    /// How many workers (default: two per CPU, at least 4).
    pub workers: usize,
    /// How many of them one provider may use at once.
    pub per_provider: usize,
    /// Each worker's address-space limit, bytes.
    pub memory: u64,
    /// Each evaluation's time limit.
    pub time: Duration,
    /// How long a request may wait for a worker.
    pub queue_timeout: Duration,
}

impl SandboxConfig {
    /// Defaults: four workers per CPU (at least 8, at most 64; started on demand),
    /// half of them per provider, 768 MiB, 2 s per evaluation, 10 s in the queue. Four
    /// per CPU because a provider's requests queue for its share of workers, and a
    /// worker spends much of each request waiting on its pipes: on two CPUs a tenant's
    /// policy ran at 60 % of the built-in policy's rate with one worker per CPU, 83 %
    /// with two and about 92 % with four (BENCHMARKS.md §4).
    pub fn new(program: PathBuf, args: Vec<String>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = cpus.saturating_mul(4).clamp(8, 64);
        SandboxConfig {
            program,
            args,
            workers,
            per_provider: (workers / 2).max(1),
            memory: 768 * 1024 * 1024,
            time: Duration::from_secs(2),
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a sandboxed policy gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The policy hit a bound (memory, time, stack): a denial.
    #[error("the policy exceeded its {0} limit and was stopped")]
    Limit(&'static str),
    /// The policy does not compile.
    #[error("{0}")]
    Invalid(String),
    /// The policy failed at run time (not a bound).
    #[error("{0}")]
    Policy(String),
    /// No worker became free in time.
    #[error("every policy worker for this provider is busy")]
    Busy,
    /// A worker could not be started or spoke nonsense.
    #[error("policy worker: {0}")]
    Worker(String),
}

/// A request frame. The policy and settings travel only when the worker may not have
/// compiled them yet: a worker keeps its compiled policies by `key` (the SHA-256 of
/// policy text and settings) and answers [`Response::Unknown`] to a key it lacks.
/// The service sends the claims as `&Value`; the worker parses them straight into the
/// policy engine's value type.
#[derive(Serialize, Deserialize)]
struct Request<'a, I> {
    /// `compile` or `eval`.
    op: Cow<'a, str>,
    key: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<Cow<'a, ProviderSettings>>,
    input: I,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok {
        allow: bool,
        deny: Vec<DenyReason>,
    },
    Compiled,
    Invalid(String),
    Failed(String),
    TimeLimit,
    /// The worker has no compiled policy under the request's key: send the policy.
    Unknown,
}

/// The cache key of a policy with its settings, as lower-case hex.
fn policy_key(policy: &str, settings: &ProviderSettings) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(policy.as_bytes());
    ctx.update(&[0]);
    ctx.update(
        serde_json::to_string(settings)
            .unwrap_or_default()
            .as_bytes(),
    );
    hex::encode(ctx.finish().as_ref())
}

/// The frame of `body`: a 4-byte big-endian length, then the body.
fn frame(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn frame_len(len: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    Ok(len)
}

/// One worker process and our ends of its pipes (non-blocking, on the runtime).
struct Worker {
    child: Child,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    /// Keys this worker was sent the policy for (it may have dropped some since).
    sent: HashSet<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SIGKILL, then reap: the wait is immediate once the signal is delivered.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(cfg: &SandboxConfig) -> Result<Self, SandboxError> {
        let worker = |e: std::io::Error| SandboxError::Worker(e.to_string());
        let mut child = Command::new(&cfg.program)
            .args(&cfg.args)
            .env("CVM_POLICY_WORKER_MEMORY", cfg.memory.to_string())
            .env(
                "CVM_POLICY_WORKER_TIME_MS",
                cfg.time.as_millis().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SandboxError::Worker(format!("{}: {e}", cfg.program.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Worker("no pipes".into()));
        };
        Ok(Worker {
            stdin: pipe::Sender::from_owned_fd(stdin.into()).map_err(worker)?,
            stdout: pipe::Receiver::from_owned_fd(stdout.into()).map_err(worker)?,
            child,
            sent: HashSet::new(),
        })
    }

    /// One frame out and one back.
    async fn exchange(&mut self, req: &Request<'_, &Value>) -> std::io::Result<Vec<u8>> {
        let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        self.stdin.write_all(&frame(&body)?).await?;
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len).await?;
        let mut buf = vec![0u8; frame_len(len)?];
        self.stdout.read_exact(&mut buf).await?;
        Ok(buf)
    }

    /// One request (with the policy if this worker was not sent it, or has dropped
    /// it); the worker is unusable afterwards if this fails.
    async fn call(
        &mut self,
        mut req: Request<'_, &Value>,
        policy: &str,
        settings: &ProviderSettings,
        deadline: Duration,
    ) -> Result<Response, SandboxError> {
        let limit = tokio::time::Instant::now() + deadline;
        let mut with_policy = !self.sent.contains(req.key.as_ref());
        loop {
            if with_policy {
                req.policy = Some(Cow::Borrowed(policy));
                req.settings = Some(Cow::Borrowed(settings));
            }
            let frame = match tokio::time::timeout_at(limit, self.exchange(&req)).await {
                Ok(Ok(f)) => f,
                // It died: out of memory (allocation failure or RLIMIT_AS) or stack,
                // mid-evaluation or since its last answer (killed from outside).
                Ok(Err(_)) => return Err(SandboxError::Limit("memory")),
                Err(_) => return Err(SandboxError::Limit("time")),
            };
            let resp: Response =
                serde_json::from_slice(&frame).map_err(|e| SandboxError::Worker(e.to_string()))?;
            match resp {
                Response::Unknown if !with_policy => {
                    self.sent.remove(req.key.as_ref());
                    with_policy = true;
                }
                Response::Unknown => {
                    return Err(SandboxError::Worker("the policy was not kept".into()));
                }
                r => {
                    if with_policy && !matches!(r, Response::Invalid(_)) {
                        self.sent.insert(req.key.into_owned());
                    }
                    return Ok(r);
                }
            }
        }
    }
}

/// The pool of policy workers. Its methods are async: a request waiting for a worker
/// or for its answer holds no runtime thread. Workers do their I/O on the runtime
/// that first ran them, so a `Sandbox` is used from one runtime.
pub struct Sandbox {
    cfg: SandboxConfig,
    /// Workers not in use; a request takes one (or starts one) and gives it back.
    idle: Mutex<Vec<Worker>>,
    /// One permit per worker.
    total: Semaphore,
    /// Each provider's share (`per_provider` permits); dropped when unused.
    providers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> SandboxError {
    SandboxError::Worker("pool lock poisoned".into())
}

impl Sandbox {
    /// A pool per `cfg`; workers start when first needed.
    pub fn new(cfg: SandboxConfig) -> Self {
        Sandbox {
            idle: Mutex::new(Vec::new()),
            total: Semaphore::new(cfg.workers.max(1)),
            providers: Mutex::new(HashMap::new()),
            cfg,
        }
    }

    fn share(&self, provider: &str) -> Result<Arc<Semaphore>, SandboxError> {
        let mut map = self.providers.lock().map_err(poisoned)?;
        Ok(map
            .entry(provider.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_provider.max(1))))
            .clone())
    }

    /// Forgets `provider`'s share when no request holds or waits for it.
    fn release_share(&self, provider: &str, share: Arc<Semaphore>) {
        drop(share);
        if let Ok(mut map) = self.providers.lock()
            && map.get(provider).is_some_and(|s| Arc::strong_count(s) == 1)
        {
            map.remove(provider);
        }
    }

    async fn run(
        &self,
        provider: &str,
        op: &str,
        policy: &str,
        settings: &ProviderSettings,
        input: &Value,
    ) -> Result<Response, SandboxError> {
        let queue = tokio::time::Instant::now() + self.cfg.queue_timeout;
        let share = self.share(provider)?;
        let r = async {
            let _mine = tokio::time::timeout_at(queue, share.acquire())
                .await
                .map_err(|_| SandboxError::Busy)?
                .map_err(poisoned)?;
            let _any = tokio::time::timeout_at(queue, self.total.acquire())
                .await
                .map_err(|_| SandboxError::Busy)?
                .map_err(poisoned)?;
            let pooled = self.idle.lock().map_err(poisoned)?.pop();
            let mut worker = match pooled {
                Some(w) => w,
                None => Worker::start(&self.cfg)?,
            };
            let req = Request {
                op: Cow::Borrowed(op),
                key: Cow::Owned(policy_key(policy, settings)),
                policy: None,
                settings: None,
                input,
            };
            let deadline = self.cfg.time + Duration::from_secs(1);
            let r = worker.call(req, policy, settings, deadline).await;
            // A worker that failed is dropped (killed) and replaced on a later use; one
            // dropped mid-call, because the request was cancelled, likewise.
            if r.is_ok() {
                self.idle.lock().map_err(poisoned)?.push(worker);
            }
            r
        }
        .await;
        self.release_share(provider, share);
        r
    }

    /// Checks that `policy` compiles, in a worker.
    pub async fn compile(
        &self,
        provider: &str,
        policy: &str,
        settings: &ProviderSettings,
    ) -> Result<(), SandboxError> {
        match self
            .run(provider, "compile", policy, settings, &Value::Null)
            .await?
        {
            Response::Compiled | Response::Ok { .. } => Ok(()),
            Response::Invalid(m) => Err(SandboxError::Invalid(m)),
            Response::Failed(m) => Err(SandboxError::Policy(m)),
            Response::TimeLimit => Err(SandboxError::Limit("time")),
            Response::Unknown => Err(SandboxError::Worker("no answer".into())),
        }
    }

    /// Evaluates `policy` on `input`, in a worker.
    pub async fn evaluate(
        &self,
        provider: &str,
        policy: &str,
        settings: &ProviderSettings,
        input: &Value,
    ) -> Result<Decision, SandboxError> {
        match self.run(provider, "eval", policy, settings, input).await? {
            Response::Ok { allow, deny } => Ok(Decision { allow, deny }),
            Response::Compiled | Response::Unknown => {
                Err(SandboxError::Worker("no decision".into()))
            }
            Response::Invalid(m) => Err(SandboxError::Invalid(m)),
            Response::Failed(m) => Err(SandboxError::Policy(m)),
            Response::TimeLimit => Err(SandboxError::Limit("time")),
        }
    }
}

/// The worker process's main loop (`cvm attest policy-worker`): caps its own address
/// space, then compiles and evaluates policies from stdin until stdin closes. Returns
/// the process exit code.
pub fn worker_main() -> i32 {
    let memory: u64 = std::env::var("CVM_POLICY_WORKER_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(768 * 1024 * 1024);
    let time_ms: u64 = std::env::var("CVM_POLICY_WORKER_TIME_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let limit = rustix::process::Rlimit {
        current: Some(memory),
        maximum: Some(memory),
    };
    if rustix::process::setrlimit(rustix::process::Resource::As, limit).is_err() {
        return 2;
    }
    crate::policy::install_time_limit(Duration::from_millis(time_ms));
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut cache: HashMap<String, CompiledPolicy> = HashMap::new();
    loop {
        let mut len = [0u8; 4];
        if stdin.read_exact(&mut len).is_err() {
            return 0;
        }
        let Ok(len) = frame_len(len) else {
            return 2;
        };
        let mut body = vec![0u8; len];
        if stdin.read_exact(&mut body).is_err() {
            return 0;
        }
        let resp = match serde_json::from_slice::<Request<regorus::Value>>(&body) {
            Err(e) => Response::Failed(format!("bad request: {e}")),
            Ok(req) => handle(req, &mut cache),
        };
        let Ok(out) = serde_json::to_vec(&resp)
            .map_err(std::io::Error::other)
            .and_then(|b| frame(&b))
        else {
            return 2;
        };
        if stdout
            .write_all(&out)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return 0;
        }
    }
}

/// Compiles (when the request carries the policy) and evaluates one request.
fn handle(
    req: Request<'_, regorus::Value>,
    cache: &mut HashMap<String, CompiledPolicy>,
) -> Response {
    if let (Some(policy), Some(settings)) = (&req.policy, &req.settings) {
        if policy_key(policy, settings) != req.key {
            return Response::Failed("the request's key does not match its policy".into());
        }
        if !cache.contains_key(req.key.as_ref()) {
            match CompiledPolicy::compile(policy, settings) {
                Ok(c) => {
                    if cache.len() >= 64 {
                        cache.clear();
                    }
                    cache.insert(req.key.to_string(), c);
                }
                Err(e) => return Response::Invalid(e.to_string()),
            }
        }
    }
    let Some(compiled) = cache.get(req.key.as_ref()) else {
        return Response::Unknown;
    };
    if req.op == "compile" {
        return Response::Compiled;
    }
    match compiled.evaluate_input(req.input) {
        Ok(d) => Response::Ok {
            allow: d.allow,
            deny: d.deny,
        },
        Err(e) => {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("time") {
                Response::TimeLimit
            } else {
                Response::Failed(text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        op: &'a str,
        key: String,
        policy: Option<&'a str>,
        input: Value,
    ) -> Request<'a, regorus::Value> {
        Request {
            op: Cow::Borrowed(op),
            key: Cow::Owned(key),
            policy: policy.map(Cow::Borrowed),
            settings: policy.map(|_| Cow::Owned(ProviderSettings::default())),
            input: regorus::Value::from(input),
        }
    }

    /// The worker's side of the cache protocol: a key it never compiled is `Unknown`,
    /// a policy sent under another policy's key is refused, and a compiled policy is
    /// evaluated from its key alone.
    #[test]
    fn a_worker_evaluates_by_key_only_what_it_compiled_under_that_key() {
        let text =
            "package policy\nimport rego.v1\ndefault allow := false\nallow if input.n == 1\n";
        let other = "package policy\nimport rego.v1\ndefault allow := true\n";
        let key = policy_key(text, &ProviderSettings::default());
        let mut cache = HashMap::new();
        let input = serde_json::json!({ "n": 1 });
        assert!(matches!(
            handle(
                request("eval", key.clone(), None, input.clone()),
                &mut cache
            ),
            Response::Unknown
        ));
        assert!(matches!(
            handle(
                request("compile", key.clone(), Some(other), Value::Null),
                &mut cache
            ),
            Response::Failed(_)
        ));
        assert!(cache.is_empty());
        assert!(matches!(
            handle(
                request("compile", key.clone(), Some(text), Value::Null),
                &mut cache
            ),
            Response::Compiled
        ));
        assert!(matches!(
            handle(request("eval", key.clone(), None, input), &mut cache),
            Response::Ok { allow: true, .. }
        ));
        assert!(matches!(
            handle(
                request("eval", key, None, serde_json::json!({ "n": 2 })),
                &mut cache
            ),
            Response::Ok { allow: false, .. }
        ));
    }
}
