//! Running the `cvm` binary from integration tests.

use std::process::{Command, Output};

/// Runs `cvm` with `args`, never reaching the network or a user's cache.
pub fn cvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .env("XDG_CACHE_HOME", "/nonexistent-opencvm-test")
        .output()
        .expect("running cvm")
}
