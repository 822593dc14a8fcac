//! Running the `cvm` binary from integration tests.
#![allow(dead_code)]

pub mod esp;
pub mod qemu;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Runs `cvm` with `args`, never reaching the network or a user's cache.
pub fn cvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .env("XDG_CACHE_HOME", "/nonexistent-opencvm-test")
        .output()
        .expect("running cvm")
}

/// The JSON a command printed; panics with its output when it is not JSON.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A `cvm ... serve` process, killed (SIGKILL) when dropped.
pub struct Served {
    /// The process.
    pub child: Child,
    /// The URL from its first line (`listening on URL`).
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cvm args...` and waits for its `listening on URL` line.
pub fn spawn(args: &[&str]) -> Served {
    spawn_with_env(args, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Served {
    spawn_logged(args, env, None)
}

/// [`spawn_with_env`] with stderr (the service's log) written to `log` when given.
pub fn spawn_logged(args: &[&str], env: &[(&str, &str)], log: Option<&std::path::Path>) -> Served {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).expect("creating the log file")),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .envs(env.iter().copied())
        .env("XDG_CACHE_HOME", "/nonexistent-opencvm-test")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting cvm");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .to_string();
    Served { child, url }
}

/// The emulated platform in `dir/emu` (created by `cvm snp create` if missing) and its
/// roots file written by `cvm snp export-roots`, for `cvm attest serve
/// --dangerously-trust-emulator-roots`.
pub fn emulator_roots(dir: &std::path::Path) -> std::path::PathBuf {
    let platform = dir.join("emu");
    if !platform.join("platform.json").exists() {
        let out = cvm(&[
            "snp",
            "create",
            "--platform",
            platform.to_str().unwrap(),
            "--product",
            "Milan",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let roots = dir.join("emu-roots.pem");
    export_roots(platform.to_str().unwrap(), roots.to_str().unwrap());
    roots
}

/// Writes `platform`'s roots to `out` with `cvm snp export-roots` (the file
/// `--dangerously-trust-emulator-roots` pins) and returns `out`.
pub fn export_roots(platform: &str, out: &str) -> String {
    let r = cvm(&["snp", "export-roots", "--platform", platform, "--out", out]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out.to_owned()
}

/// `cvm keyvault serve` with its state in `dir/kv`, trusting tokens of `authority`.
pub fn keyvault(dir: &std::path::Path, authority: &str) -> Served {
    keyvault_with(dir, &[authority], &[], &[], None)
}

/// `cvm keyvault serve` with its state in `dir/kv` and its master key in
/// `dir/secrets/master.key`, trusting tokens of each of `authorities`, with `extra`
/// arguments, environment variables, and the log written to `log` when given.
pub fn keyvault_with(
    dir: &std::path::Path,
    authorities: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Served {
    let state = dir.join("kv");
    let key = dir.join("secrets/master.key");
    let mut args = vec![
        "keyvault",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
        "--master-key",
        key.to_str().unwrap(),
    ];
    for a in authorities {
        args.extend(["--authority", a]);
    }
    args.extend_from_slice(extra);
    spawn_logged(&args, env, log)
}

/// An HTTP client that answers error statuses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `body` as JSON with a bearer credential: the status and the JSON answer.
pub fn post(url: &str, bearer: &str, body: &Value) -> (u16, Value) {
    let agent = agent();
    let mut r = agent
        .post(url)
        .header("Authorization", format!("Bearer {bearer}"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let st = r.status().as_u16();
    (
        st,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null),
    )
}

/// `cvm attest serve` trusting the emulated platform in `d/emu` (created if missing).
pub fn attest_serve(d: &std::path::Path) -> Served {
    let paths = AttestPaths {
        roots_of: d,
        master: &d.join("attest-master.key"),
        state: &d.join("attest"),
        cache: &d.join("cache"),
    };
    attest_serve_with(&paths, &[], &[], None)
}

/// Where [`attest_serve_with`] keeps things.
pub struct AttestPaths<'a> {
    /// The directory whose emulated platform (`emu`) the service trusts.
    pub roots_of: &'a std::path::Path,
    /// The master key file.
    pub master: &'a std::path::Path,
    /// The state directory.
    pub state: &'a std::path::Path,
    /// The KDS cache.
    pub cache: &'a std::path::Path,
}

/// `cvm attest serve` (offline, on 127.0.0.1:0) with `paths`, `extra` arguments,
/// environment variables, and the log written to `log` when given.
pub fn attest_serve_with(
    paths: &AttestPaths<'_>,
    extra: &[&str],
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Served {
    let roots = emulator_roots(paths.roots_of);
    let mut args = vec![
        "attest",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--dangerously-trust-emulator-roots",
        roots.to_str().unwrap(),
        "--master-key",
        paths.master.to_str().unwrap(),
        "--offline",
        "--state",
        paths.state.to_str().unwrap(),
        "--cache",
        paths.cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let s = spawn_logged(&args, env, log);
    assert!(s.url.starts_with("http"), "{}", s.url);
    s
}

/// The lines of a log written with `--log-format json` (each must be a JSON object),
/// with the text.
pub fn json_log(path: &std::path::Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(path).expect("reading the log");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (text, lines)
}

/// The lines of `lines` that log an answer to a request.
pub fn answered(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == "answered")
        .collect()
}

/// One HTTP request with an optional bearer credential and JSON body: the status and
/// the JSON answer (null when empty).
pub fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut r = match (method, body) {
        ("GET" | "DELETE", None) => {
            let mut req = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call().unwrap()
        }
        (m, b) => {
            let mut req = match m {
                "PUT" => agent.put(url),
                "PATCH" => agent.patch(url),
                _ => agent.post(url),
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.header("Content-Type", "application/json")
                .send(b.unwrap_or(&serde_json::json!({})).to_string().as_bytes())
                .unwrap()
        }
    };
    let st = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}
