#!/usr/bin/env bash
# Load test of key releases over real HTTP with oha, next to the single-thread cost of
# the wrap (RSA-OAEP-256 + AES-KWP) and wrap + JWS signature (criterion, same run).
#
#   [CVM=path/to/cvm] [KV_ARGS="--database postgres://..."] [CRITERION=0] \
#     bench/keyvault-load.sh [SECONDS]
#
# CVM runs another build of both servers (for a same-run comparison of two commits);
# KV_ARGS are extra arguments of `cvm keyvault serve` (an empty PostgreSQL database,
# for instance: bench/engines.sh does that); CRITERION=0 leaves out the single-thread
# step at the end.
#
# Runs `cvm attest serve` (trusting the emulator's roots) and `cvm keyvault serve` (release builds),
# prepares one exportable AES key and one attestation token for an emulated guest
# (`cargo run -p keyvault --example release_setup`), then drives
# `POST /keys/bench-key/{version}/release` with 32 connections (closed loop). Every
# release validates the token (signature, issuer, lifetime; JWKS cached), evaluates the
# release policy, wraps the key to the guest's transfer key, signs the JWS response and
# appends an audit entry (SQLite, synchronous=FULL; or PostgreSQL with KV_ARGS). Server, attestation service and
# oha share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
command -v oha >/dev/null || cargo install --locked oha
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
cargo build --release -q -p cvm
cargo build --release -q -p keyvault --example release_setup
cvm="${CVM:-target/release/cvm}"
work=$(mktemp -d)
# `start` runs in a command substitution (a subshell), so the servers' pids go to a
# file, not a variable, for the exit trap to find.
trap 'kill $(cat "$work/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
start() { # name, args...
  local name=$1; shift
  "$cvm" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >>"$work/pids"
  for _ in $(seq 100); do grep -q listening "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/$name.out" || { cat "$work/$name.err" >&2; exit 1; }
  sed -n 's/^listening on //p' "$work/$name.out"
}
target/release/cvm snp create --platform "$work/emu" --product Milan >/dev/null
target/release/cvm snp export-roots --platform "$work/emu" --out "$work/roots.pem"
attest=$(start attest attest serve --listen 127.0.0.1:0 --state "$work/attest" --master-key "$work/secret/attest.key" \
  --dangerously-trust-emulator-roots "$work/roots.pem" --offline --cache "$work/cache")
kv=$(start kv keyvault serve --listen 127.0.0.1:0 --state "$work/kv" --master-key "$work/secret/master.key" --authority "$attest" ${KV_ARGS:-})
target/release/examples/release_setup "$attest" "$kv" "$work/kv/admin.token" "$work"
url="$(cat "$work/release_url")?api-version=7.4"
cred=$(cat "$work/credential")
curl -fsS -H "Authorization: Bearer $cred" -H 'Content-Type: application/json' --data-binary @"$work/release.json" "$url" >/dev/null
echo "closed loop, 32 connections, ${secs}s:"
oha --no-tui --output-format json -m POST -c 32 -z "${secs}s" -H "Authorization: Bearer $cred" \
  -H 'Content-Type: application/json' -D "$work/release.json" "$url" >"$work/oha.json"
jq -r '"  \(.summary.requestsPerSec | floor) releases/s, success \(.summary.successRate * 100)%, p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, statuses \(.statusCodeDistribution)"' "$work/oha.json"
[ "${CRITERION:-1}" = 0 ] && exit 0
echo "single-thread costs (criterion):"
cargo bench -q -p keyvault --bench release 2>/dev/null | grep -E '^(wrap)|time:'
