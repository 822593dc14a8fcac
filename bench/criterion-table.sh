#!/usr/bin/env bash
# Runs the snp `verify` criterion benchmark and prints a markdown table of the results
# with each one's ratio to the bare ECDSA baseline from the same run.
#
#   bench/criterion-table.sh            # full run (about a minute)
#   bench/criterion-table.sh --quick    # criterion's quick mode
#   NO_RUN=1 bench/criterion-table.sh   # only tabulate target/criterion from the last run
#
# Time per op is criterion's slope estimate (median when there is no slope), wall clock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${NO_RUN:-0}" != 1 ]; then
    cargo bench -p snp --bench verify -- "$@" 2>&1 | grep -E '^(plain-loop|  baseline ECDSA|  verify/cached|verify/cached throughput)' || true
    echo
fi
python3 - "${CARGO_TARGET_DIR:-$ROOT/target}/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]
order = ["baseline/ecdsa_p384_verify", "baseline/ecdsa_p384_verify_unparsed_key",
         "parse/report", "verify/cached", "verify/cached_from_bytes", "verify/cold",
         "breakdown/cache_key_sha256_x3", "breakdown/with_product",
         "breakdown/verify_chain_only_cached"]
def est(name):
    p = os.path.join(root, name, "new", "estimates.json")
    if not os.path.exists(p):
        return None
    e = json.load(open(p))
    s = e.get("slope") or e["median"]
    ci = s["confidence_interval"]
    return s["point_estimate"], ci["lower_bound"], ci["upper_bound"]
def fmt(ns):
    return f"{ns/1e6:.3f} ms" if ns >= 1e6 else f"{ns/1e3:.2f} µs" if ns >= 1e3 else f"{ns:.0f} ns"
base = est(order[0])
if base is None:
    sys.exit(f"no criterion results under {root}; run the benchmark first")
print("| benchmark | time per op (95% CI) | ops/s (1 thread) | ratio to baseline |")
print("|---|---|---|---|")
for name in order:
    r = est(name)
    if r is None:
        continue
    t, lo, hi = r
    print(f"| `{name}` | {fmt(t)} ({fmt(lo)} – {fmt(hi)}) | {1e9/t:,.0f} | {t/base[0]:.3g} |")
PY
