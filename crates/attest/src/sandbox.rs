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
//! JSON document, one request and one response at a time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// How many workers (default: the number of CPUs).
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
    /// Defaults: a worker per CPU, half of them (at least one) per provider, 768 MiB,
    /// 2 s per evaluation, 10 s in the queue.
    pub fn new(program: PathBuf, args: Vec<String>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = cpus.max(2);
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

#[derive(Serialize, Deserialize)]
struct Request {
    /// `compile` or `eval`.
    op: String,
    policy: String,
    settings: ProviderSettings,
    #[serde(default)]
    input: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok { allow: bool, deny: Vec<DenyReason> },
    Compiled,
    Invalid(String),
    Failed(String),
    TimeLimit,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Result<Vec<u8>, String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

impl Worker {
    fn start(cfg: &SandboxConfig) -> Result<Self, SandboxError> {
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
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| SandboxError::Worker("no stdin".into()))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| SandboxError::Worker("no stdout".into()))?;
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("policy-worker-reader".into())
            .spawn(move || {
                loop {
                    let r = match read_frame(&mut stdout) {
                        Ok(Some(f)) => Ok(f),
                        Ok(None) => Err("the worker exited".to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let end = r.is_err();
                    if tx.send(r).is_err() || end {
                        break;
                    }
                }
            })
            .map_err(|e| SandboxError::Worker(e.to_string()))?;
        Ok(Worker {
            child,
            stdin,
            replies,
        })
    }

    /// One request; the worker is unusable afterwards if this fails with a limit.
    fn call(&mut self, req: &Request, deadline: Duration) -> Result<Response, SandboxError> {
        let body = serde_json::to_vec(req).map_err(|e| SandboxError::Worker(e.to_string()))?;
        if write_frame(&mut self.stdin, &body).is_err() {
            // Died since its last answer (for instance killed from outside).
            return Err(SandboxError::Limit("memory"));
        }
        match self.replies.recv_timeout(deadline) {
            Ok(Ok(frame)) => {
                serde_json::from_slice(&frame).map_err(|e| SandboxError::Worker(e.to_string()))
            }
            // It died mid-evaluation: out of memory (allocation failure or RLIMIT_AS)
            // or stack.
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Err(SandboxError::Limit("memory")),
            Err(RecvTimeoutError::Timeout) => Err(SandboxError::Limit("time")),
        }
    }
}

/// The pool of policy workers.
pub struct Sandbox {
    cfg: SandboxConfig,
    slots: Vec<Mutex<Option<Worker>>>,
    /// Busy slots, and how many each provider holds.
    busy: Mutex<(Vec<bool>, HashMap<String, usize>)>,
    freed: Condvar,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A slot taken for one provider, given back when dropped.
struct Lease<'a> {
    sandbox: &'a Sandbox,
    slot: usize,
    provider: String,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.sandbox.busy.lock() {
            b.0[self.slot] = false;
            if let Some(n) = b.1.get_mut(&self.provider) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    b.1.remove(&self.provider);
                }
            }
        }
        self.sandbox.freed.notify_all();
    }
}

impl Sandbox {
    /// A pool per `cfg`; workers start when first needed.
    pub fn new(cfg: SandboxConfig) -> Self {
        let n = cfg.workers.max(1);
        Sandbox {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            busy: Mutex::new((vec![false; n], HashMap::new())),
            freed: Condvar::new(),
            cfg,
        }
    }

    fn lease(&self, provider: &str) -> Result<Lease<'_>, SandboxError> {
        let started = Instant::now();
        let mut b = self
            .busy
            .lock()
            .map_err(|_| SandboxError::Worker("pool lock poisoned".into()))?;
        loop {
            let held = b.1.get(provider).copied().unwrap_or(0);
            if held < self.cfg.per_provider
                && let Some(slot) = b.0.iter().position(|busy| !busy)
            {
                b.0[slot] = true;
                *b.1.entry(provider.to_string()).or_insert(0) += 1;
                return Ok(Lease {
                    sandbox: self,
                    slot,
                    provider: provider.to_string(),
                });
            }
            let left = self
                .cfg
                .queue_timeout
                .checked_sub(started.elapsed())
                .ok_or(SandboxError::Busy)?;
            b = self
                .freed
                .wait_timeout(b, left)
                .map_err(|_| SandboxError::Worker("pool lock poisoned".into()))?
                .0;
        }
    }

    fn run(&self, provider: &str, req: &Request) -> Result<Response, SandboxError> {
        let lease = self.lease(provider)?;
        let mut slot = self.slots[lease.slot]
            .lock()
            .map_err(|_| SandboxError::Worker("slot lock poisoned".into()))?;
        if slot.is_none() {
            *slot = Some(Worker::start(&self.cfg)?);
        }
        let deadline = self.cfg.time + Duration::from_secs(1);
        let r = match slot.as_mut() {
            Some(w) => w.call(req, deadline),
            None => Err(SandboxError::Worker("no worker".into())),
        };
        if r.is_err() {
            // Killed (dropped) and replaced on the next use.
            *slot = None;
        }
        r
    }

    /// Checks that `policy` compiles, in a worker.
    pub fn compile(
        &self,
        provider: &str,
        policy: &str,
        settings: &ProviderSettings,
    ) -> Result<(), SandboxError> {
        let req = Request {
            op: "compile".into(),
            policy: policy.to_string(),
            settings: settings.clone(),
            input: Value::Null,
        };
        match self.run(provider, &req)? {
            Response::Compiled | Response::Ok { .. } => Ok(()),
            Response::Invalid(m) => Err(SandboxError::Invalid(m)),
            Response::Failed(m) => Err(SandboxError::Policy(m)),
            Response::TimeLimit => Err(SandboxError::Limit("time")),
        }
    }

    /// Evaluates `policy` on `input`, in a worker.
    pub fn evaluate(
        &self,
        provider: &str,
        policy: &str,
        settings: &ProviderSettings,
        input: &Value,
    ) -> Result<Decision, SandboxError> {
        let req = Request {
            op: "eval".into(),
            policy: policy.to_string(),
            settings: settings.clone(),
            input: input.clone(),
        };
        match self.run(provider, &req)? {
            Response::Ok { allow, deny } => Ok(Decision { allow, deny }),
            Response::Compiled => Err(SandboxError::Worker("no decision".into())),
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
    let mut cache: HashMap<[u8; 32], CompiledPolicy> = HashMap::new();
    while let Ok(Some(frame)) = read_frame(&mut stdin) {
        let resp = match serde_json::from_slice::<Request>(&frame) {
            Err(e) => Response::Failed(format!("bad request: {e}")),
            Ok(req) => handle(&req, &mut cache),
        };
        let Ok(body) = serde_json::to_vec(&resp) else {
            return 2;
        };
        if write_frame(&mut stdout, &body).is_err() {
            return 0;
        }
    }
    0
}

fn handle(req: &Request, cache: &mut HashMap<[u8; 32], CompiledPolicy>) -> Response {
    let mut key = [0u8; 32];
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(req.policy.as_bytes());
    ctx.update(
        serde_json::to_string(&req.settings)
            .unwrap_or_default()
            .as_bytes(),
    );
    key.copy_from_slice(ctx.finish().as_ref());
    if !cache.contains_key(&key) {
        match CompiledPolicy::compile(&req.policy, &req.settings) {
            Ok(c) => {
                if cache.len() >= 64 {
                    cache.clear();
                }
                cache.insert(key, c);
            }
            Err(e) => return Response::Invalid(e.to_string()),
        }
    }
    if req.op == "compile" {
        return Response::Compiled;
    }
    let Some(compiled) = cache.get(&key) else {
        return Response::Failed("compiled policy missing".into());
    };
    match compiled.evaluate(&req.input) {
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
