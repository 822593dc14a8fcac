#!/usr/bin/env bash
# The control plane under load, over real HTTP with oha (release build):
#
#   [CVM=path/to/cvm] bench/control-load.sh
#
# Runs `cvm up` with 40 emulated hosts (room for 1,280 DC2 VMs), imports the Debian 12
# image (`cvm image build debian-12`, cached in target/images), makes a tenant with a
# quota of 4,096 vCPUs, then:
#  1. baseline: GET /sizes (no store access) with 8 connections for 10 s;
#  2. creates of N = 100, then N = 1,000 more VMs (PUT /vms/{random name}, 8
#     connections): throughput and latency percentiles; each create validates,
#     prices, and places the VM with a conditional write and records its events in one
#     SQLite transaction (synchronous=FULL);
#  3. the per-step durations the VMs' events recorded (validate, place);
#  4. reads under load: GET /vms/{name} with 8 connections for 10 s;
#  5. the server's resident memory before and after the 1,100 VMs.
# Server and oha share the machine's cores. VMs are placed, not started, so no figure
# here is of a running VM (bench/control-start.sh starts them).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v oha >/dev/null || cargo install --locked oha
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
cargo build --release -q -p cvm
cvm="${CVM:-target/release/cvm}"
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
"$cvm" up --state "$work/up" --listen 127.0.0.1:0 --hosts 40 --regions eastus >"$work/up.out" 2>"$work/up.err" &
echo $! >"$work/pid"
for _ in $(seq 100); do grep -q '^stop with' "$work/up.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^ready: //p' "$work/up.out")
[ -n "$url" ] || { cat "$work/up.err" >&2; exit 1; }
"$cvm" image build debian-12 --state "$work/up" --cache target/images >/dev/null
# A tenant whose quota holds the 1,100 VMs (the local tenant's default is 512 vCPUs).
cred=$("$cvm" tenant create bench --max-vcpus 4096 --state "$work/up" --json | jq -r .credential)
rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/pid")/status"; }
report() { # label, oha json
  jq -r --arg l "$1" '"  \($l): \(.summary.requestsPerSec | . * 10 | floor / 10) req/s, success \(.summary.successRate * 100)%, p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, statuses \(.statusCodeDistribution)"' "$2"
}
echo "1. baseline, GET /sizes, 8 connections, 10 s:"
oha --no-tui --output-format json -c 8 -z 10s -H "Authorization: Bearer $cred" "$url/sizes" >"$work/sizes.json"
report "GET /sizes" "$work/sizes.json"
base=$(jq '.summary.requestsPerSec' "$work/sizes.json")
rss0=$(rss)
cat >"$work/create.json" <<'JSON'
{"vmSize": "Standard_DC2as_v5", "image": "debian-12", "securityProfile": {"securityType": "ConfidentialVM"}, "osDisk": {"securityEncryptionType": "DiskWithVMGuestState"}}
JSON
echo "2. creates (PUT /vms/{name}), 8 connections:"
for n in 100 1000; do
  oha --no-tui --output-format json -c 8 -n "$n" -m PUT -H "Authorization: Bearer $cred" \
    -H 'Content-Type: application/json' -D "$work/create.json" \
    --rand-regex-url "$url/vms/b[a-z]{16}" >"$work/create-$n.json"
  report "N=$n creates" "$work/create-$n.json"
  rate=$(jq '.summary.requestsPerSec' "$work/create-$n.json")
  echo "    ratio to GET /sizes: $(echo "$rate $base" | awk '{printf "%.3f", $1/$2}')"
done
echo "3. per-step durations from the VMs' events (ms):"
names=$(curl -fsS -H "Authorization: Bearer $cred" "$url/vms" | jq -r '.value[].name')
echo "   $(echo "$names" | wc -l) VMs placed"
for n in $names; do curl -fsS -H "Authorization: Bearer $cred" "$url/vms/$n/events"; echo; done >"$work/events.jsonl"
for step in validate place; do
  jq -r --arg s "$step" '.value[] | select(.step == $s) | .durationMs' "$work/events.jsonl" | sort -n |
    awk -v s="$step" '{a[NR]=$1} END {printf "   %-8s p50 %d  p90 %d  p99 %d  max %d  (n=%d)\n", s, a[int(NR*0.5)+1], a[int(NR*0.9)+1], a[int(NR*0.99)+1], a[NR], NR}'
done
first=$(echo "$names" | head -1)
echo "4. GET /vms/{name}, 8 connections, 10 s:"
oha --no-tui --output-format json -c 8 -z 10s -H "Authorization: Bearer $cred" "$url/vms/$first" >"$work/get.json"
report "GET /vms/{name}" "$work/get.json"
rss1=$(rss)
echo "5. resident memory: ${rss0} KiB before the creates, ${rss1} KiB after 1,100 VMs ($(( (rss1 - rss0) * 1024 / 1100 )) bytes per placed VM)"
