//! Running the `cvm` binary from integration tests.

use std::process::{Command, Output};

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
