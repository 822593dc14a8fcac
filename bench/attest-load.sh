#!/usr/bin/env bash
# Load test of the attestation service over real HTTP with oha (crates.io), next to
# the single-thread cost of one P-384 report verification plus one RS256 token
# signature (criterion, same run).
#
#   [TOKEN_ALG=rs256|es384] [CVM=path/to/cvm] [CRITERION=0] [SERVE_ARGS=...] [PHASES=1]
#     bench/attest-load.sh [SECONDS]
#
# CVM runs another build of the server (for a same-run comparison of two commits);
# CRITERION=0 leaves out the single-thread step at the end; SERVE_ARGS are extra
# arguments of `cvm attest serve` (`--database postgres://...`: bench/engines.sh);
# PHASES=1 runs only phase 1.
#
# The server is `cvm attest serve --dangerously-trust-emulator-roots` (release build,
# the emulator's roots and CRL pinned, so every attestation applies a CRL); the request
# is an MAA SevSnpVm body with emulated evidence and its chain (collateral and policy
# cached after the first request). Phases:
#   1. default provider, built-in policy (in process): closed loop, 32 connections;
#   2. the same at half that rate (open loop), for latency;
#   3. a tenant whose own policy (the same rules, written by the tenant) runs in the
#      policy sandbox's worker processes: closed loop, 32 connections;
#   4. that tenant again while a second tenant's policy is a memory or CPU bomb, fired
#      continuously by another client: the first tenant's rate and p99.
# The server, oha and the bomb loop share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
command -v oha >/dev/null || cargo install --locked oha
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
cargo build --release -q -p cvm
cargo build --release -q -p attest --example snp_request
cvm="${CVM:-target/release/cvm}"
work=$(mktemp -d)
trap 'kill $server ${bomber:-} 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/examples/snp_request "$work/emu" "$work/req.json"
"$cvm" snp export-roots --platform "$work/emu" --out "$work/roots.pem"
"$cvm" attest serve --listen 127.0.0.1:0 --state "$work/state" --master-key "$work/master.key" \
  --dangerously-trust-emulator-roots "$work/roots.pem" --offline --cache "$work/cache" \
  --token-alg "${TOKEN_ALG:-rs256}" ${SERVE_ARGS:-} >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/out" || { echo "server did not start:" >&2; cat "$work/err" >&2; exit 1; }
base="$(sed -n 's/^listening on //p' "$work/out")"
url="$base/attest/SevSnpVm?api-version=2022-08-01"
admin=$(cat "$work/state/admin.token")
curl -fsS -H 'Content-Type: application/json' --data-binary @"$work/req.json" "$url" >/dev/null
run() {
  local target=$1; shift
  oha --no-tui --output-format json -m POST -H 'Content-Type: application/json' \
    -D "$work/req.json" "$@" "$target" >"$work/oha.json"
  jq -r '"  \(.summary.requestsPerSec | floor) req/s, success \(.summary.successRate * 100)%, p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, statuses \(.statusCodeDistribution)"' "$work/oha.json"
}
echo "1. built-in policy, closed loop, 32 connections, ${secs}s:"
run "$url" -c 32 -z "${secs}s"
rate=$(jq -r '.summary.requestsPerSec | floor' "$work/oha.json")
if [ "${PHASES:-}" = 1 ]; then exit 0; fi
half=$((rate / 2))
echo "2. built-in policy, open loop at ${half} req/s (half the sustained rate), ${secs}s:"
run "$url" -c 32 -q "$half" -z "${secs}s"
# Two tenants: "calm" with the default rules as its own policy, "bombs" with a bomb.
tenant() { # name -> its administrator credential
  curl -fsS -X POST -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    --data '{"allow_emulated": true}' "$base/providers/$1" | jq -r .adminToken
}
calm=$(tenant calm)
bombs=$(tenant bombs)
"$cvm" attest policy get --url "$base" --type SevSnpVm --token-file "$work/state/admin.token" \
  | jq -r .policy >"$work/rules.rego"
set_policy() { # provider credential file
  jq -Rs '{policy: .}' "$3" | curl -fsS -X PUT -H "Authorization: Bearer $2" \
    -H 'Content-Type: application/json' --data-binary @- "$base/providers/$1/policies/SevSnpVm" >/dev/null
}
set_policy calm "$calm" "$work/rules.rego"
printf 'package policy\nimport rego.v1\nallow if count(numbers.range(1, 1e15)) > 0\n' >"$work/bomb.rego"
set_policy bombs "$bombs" "$work/bomb.rego"
curl -fsS -H 'Content-Type: application/json' --data-binary @"$work/req.json" "$base/providers/calm/attest/SevSnpVm" >/dev/null
echo "3. tenant policy (sandboxed worker processes), closed loop, 32 connections, ${secs}s:"
run "$base/providers/calm/attest/SevSnpVm" -c 32 -z "${secs}s"
( while :; do curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary @"$work/req.json" \
    "$base/providers/bombs/attest/SevSnpVm"; done ) &
bomber=$!
echo "4. the same while another tenant's memory bomb is fired continuously, ${secs}s:"
run "$base/providers/calm/attest/SevSnpVm" -c 32 -z "${secs}s"
kill $bomber; bomber=
[ "${CRITERION:-1}" = 0 ] && exit 0
echo "single-thread costs (criterion):"
cargo bench -q -p attest --bench attest 2>/dev/null | grep -E '^(baseline|attest)|time:'
