#!/usr/bin/env bash
# Authenticode verification of Debian's signed kernel (issue 14's benchmark), whole
# processes, in one run: `cvm boot verify-image vmlinuz --db debian-ca.der` against
# `sbverify --cert debian-ca.pem vmlinuz` (sbsigntool) and `osslsigncode verify
# -CAfile debian-ca.pem`, ROUNDS runs each (default 30), interleaved; median wall time
# per run. Each tool reads the 8 MB image, hashes it and checks one signature chain.
#
#   [ROUNDS=30] bench/boot.sh
#
# Needs the fixtures of scripts/boot-fixtures (fetched if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-30}"
fx=$(bash scripts/boot-fixtures)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

cargo build --release --locked -p cvm -q
cvm="${CARGO_TARGET_DIR:-target}/release/cvm"
"$cvm" boot shim "$fx/shimx64.efi.signed" --vendor-cert "$dir/debian.der" >/dev/null
openssl x509 -inform der -in "$dir/debian.der" -out "$dir/debian.pem"
echo "kernel: $(grep linux-image "$fx/VERSIONS") ($(stat -c %s "$fx/vmlinuz") bytes)"
echo "sbverify: $(dpkg-query -W -f='${Version}' sbsigntool), osslsigncode: $(osslsigncode --version | head -1)"

# Each must verify before it is timed.
"$cvm" boot verify-image "$fx/vmlinuz" --db "$dir/debian.der" >/dev/null
sbverify --cert "$dir/debian.pem" "$fx/vmlinuz" >/dev/null 2>&1
osslsigncode verify -CAfile "$dir/debian.pem" -in "$fx/vmlinuz" >/dev/null 2>&1

python3 - "$rounds" "$cvm" "$fx/vmlinuz" "$dir" <<'PY'
import statistics, subprocess, sys, time
rounds, cvm, kernel, d = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
tools = {
    "cvm boot verify-image": [cvm, "boot", "verify-image", kernel, "--db", d + "/debian.der"],
    "sbverify": ["sbverify", "--cert", d + "/debian.pem", kernel],
    "osslsigncode verify": ["osslsigncode", "verify", "-CAfile", d + "/debian.pem", "-in", kernel],
}
times = {k: [] for k in tools}
for _ in range(rounds):
    for name, cmd in tools.items():
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - t)
        assert r.returncode == 0, name
base = statistics.median(times["sbverify"])
print(f"{'tool':<24} {'median ms':>10} {'vs sbverify':>12}")
for name, ts in times.items():
    m = statistics.median(ts)
    print(f"{name:<24} {m*1000:>10.1f} {base/m:>11.2f}x")
PY
