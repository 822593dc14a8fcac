#!/usr/bin/env bash
# The services on SQLite and on PostgreSQL, in one run: key releases per second
# (bench/keyvault-load.sh: every release appends an audit entry, a durable commit) and
# attestations per second (bench/attest-load.sh phase 1: on PostgreSQL every request
# reads the store generation, so replicas see each other's changes), alternating
# engines for ROUNDS rounds.
#
#   [PG=postgres://user:password@127.0.0.1:5432/postgres] [ROUNDS=3] bench/engines.sh [SECONDS]
#
# PG names a role that may create databases (default: scripts/test-postgres starts
# Debian's server on loopback and makes one); each PostgreSQL run gets a fresh,
# empty database, dropped afterwards. The server is on the same machine, so it shares
# the 2 cores with the service and the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
pg="${PG:-$(bash scripts/test-postgres)}"
base="${pg%/*}"
# Databases made so far, one name per line (`fresh` runs in command substitutions,
# subshells, so a file and not a variable keeps the list).
made=$(mktemp)
trap 'while read -r d; do psql "$pg" -XAtqc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done <"$made"; rm -f "$made"' EXIT
fresh() { # -> the URL of a new empty database
  local name
  name="opencvm_bench_$$_$(wc -l <"$made")"
  echo "$name" >>"$made"
  psql "$pg" -XAtqc "CREATE DATABASE $name" >/dev/null || exit 1
  echo "$base/$name"
}
for round in $(seq "${ROUNDS:-3}"); do
  for engine in sqlite postgres; do
    kv_args="" serve_args=""
    if [ "$engine" = postgres ]; then
      kv_url=$(fresh)
      attest_url=$(fresh)
      kv_args="--database $kv_url"
      serve_args="--database $attest_url"
    fi
    echo "round $round, $engine, key releases:"
    KV_ARGS="$kv_args" CRITERION=0 bash bench/keyvault-load.sh "$secs" | grep releases/s
    echo "round $round, $engine, attestations (built-in policy):"
    SERVE_ARGS="$serve_args" CRITERION=0 PHASES=1 bash bench/attest-load.sh "$secs" | grep req/s
  done
done
