//! The policy worker process of the attestation service's sandbox (see
//! `attest::sandbox`): what `cvm attest policy-worker` runs, as its own binary for
//! embedders and tests.

fn main() {
    std::process::exit(attest::sandbox::worker_main());
}
