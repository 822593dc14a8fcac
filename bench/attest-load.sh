#!/usr/bin/env bash
# Load test of the attestation service over real HTTP with oha (crates.io), next to
# the single-thread cost of one P-384 report verification plus one RS256 token
# signature (criterion, same run).
#
#   [TOKEN_ALG=rs256|es384] bench/attest-load.sh [SECONDS]
#
# The server is `cvm attest serve --dangerously-trust-emulator-roots` (release build,
# the emulator's roots and CRL pinned, so every attestation applies a CRL); the request
# is an MAA SevSnpVm body with emulated evidence and its chain (collateral and policy
# cached after the first request). Phase 1: closed loop, 32 connections, for the sustained
# rate. Phase 2: open loop at half that rate, for latency. Both the server and oha share
# the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
command -v oha >/dev/null || cargo install --locked oha
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
cargo build --release -q -p cvm
cargo build --release -q -p attest --example snp_request
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/examples/snp_request "$work/emu" "$work/req.json"
target/release/cvm snp export-roots --platform "$work/emu" --out "$work/roots.pem"
target/release/cvm attest serve --listen 127.0.0.1:0 --state "$work/state" --master-key "$work/master.key" \
  --dangerously-trust-emulator-roots "$work/roots.pem" --offline --cache "$work/cache" \
  --token-alg "${TOKEN_ALG:-rs256}" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/out" || { echo "server did not start:" >&2; cat "$work/err" >&2; exit 1; }
url="$(sed -n 's/^listening on //p' "$work/out")/attest/SevSnpVm?api-version=2022-08-01"
curl -fsS -H 'Content-Type: application/json' --data-binary @"$work/req.json" "$url" >/dev/null
run() {
  oha --no-tui --output-format json -m POST -H 'Content-Type: application/json' \
    -D "$work/req.json" "$@" "$url" >"$work/oha.json"
  jq -r '"  \(.summary.requestsPerSec | floor) req/s, success \(.summary.successRate * 100)%, p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, statuses \(.statusCodeDistribution)"' "$work/oha.json"
}
echo "closed loop, 32 connections, ${secs}s:"
run -c 32 -z "${secs}s"
rate=$(jq -r '.summary.requestsPerSec | floor' "$work/oha.json")
half=$((rate / 2))
echo "open loop at ${half} req/s (half the sustained rate), ${secs}s:"
run -c 32 -q "$half" -z "${secs}s"
echo "single-thread costs (criterion):"
cargo bench -q -p attest --bench attest 2>/dev/null | grep -E '^(baseline|attest)|time:'
