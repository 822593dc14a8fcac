#!/usr/bin/env bash
# Create and start N emulated confidential VMs through `cvm up` (release build):
#
#   [N=100] [P=2] [E=4] [CVM=path/to/cvm] bench/control-start.sh
#
# Runs `cvm up` with enough emulated hosts for N DC2as_v5 VMs (32 VMs per host),
# imports the Debian 12 image (`cvm image build debian-12`, cached in target/images),
# makes a tenant with room for them, then:
#  1. creates N VMs (PUT /vms/{name}, P at a time): wall time and throughput;
#  2. starts them (POST /vms/{name}/start, P at a time): wall time and throughput;
#     each start is the whole attested boot (launch with OVMF measured, attestation,
#     the VMGS key created in the vault on first start and released to the token,
#     VMGS created, vTPM process started from it, Secure Boot checked and measured);
#  3. per-step durations from the VMs' own events (percentiles, milliseconds), the
#     attest step split into the wait for a transfer key and the appraisal;
#  4. the attested-boot gates (attest + vmgs_key_release + vmgs) as a share of each
#     start, per VM, in the same run;
#  5. memory: the server's resident memory before and after, and the vTPM processes'
#     (one per running VM);
#  6. E VMs with encrypted OS disks, one at a time: pre-encryption at create, the
#     disk's unlock at the first start (key released) and the second (vTPM), and
#     the gates with it (attest + vmgs_key_release + vmgs + disk_unlock).
# The server, its vTPMs and curl share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
n=${N:-100}
p=${P:-2}
cargo build --release -q -p cvm
cvm="${CVM:-target/release/cvm}"
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$work"' EXIT
hosts=$(( n / 32 + 1 ))
"$cvm" up --state "$work/up" --listen 127.0.0.1:0 --hosts "$hosts" --regions eastus \
  >"$work/up.out" 2>"$work/up.err" &
echo $! >"$work/pid"
# Each new emulated host makes its secure processor's keys (RSA-4096 roots) first.
for _ in $(seq 6000); do
  grep -q '^stop with' "$work/up.out" 2>/dev/null && break
  kill -0 "$(cat "$work/pid")" 2>/dev/null || break
  sleep 0.1
done
url=$(sed -n 's/^ready: //p' "$work/up.out")
[ -n "$url" ] || { echo "cvm up did not start:" >&2; cat "$work/up.err" >&2; exit 1; }
"$cvm" image build debian-12 --state "$work/up" --cache target/images >/dev/null
cred=$("$cvm" tenant create bench --max-vcpus $(( n * 2 + 64 )) --state "$work/up" --json | jq -r .credential)
rss_of() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss0=$(rss_of "$(cat "$work/pid")")
now_ms() { date +%s%3N; }
names=$(seq -f "vm%05g" 1 "$n")
export url cred
echo "N=$n VMs on $hosts emulated hosts, $p requests at a time"

t0=$(now_ms)
echo "$names" | xargs -P "$p" -I{} sh -c 'curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $cred" -H "Content-Type: application/json" \
  -d "{\"vmSize\": \"Standard_DC2as_v5\", \"image\": \"debian-12\", \"securityProfile\": {\"securityType\": \"ConfidentialVM\"}, \"osDisk\": {\"securityEncryptionType\": \"VMGuestStateOnly\"}}" \
  "$url/vms/{}"'
t1=$(now_ms)
echo "1. creates: $(( t1 - t0 )) ms for $n ($(echo "$n $t0 $t1" | awk '{printf "%.1f", $1 * 1000 / ($3 - $2)}') VMs/s)"

echo "$names" | xargs -P "$p" -I{} sh -c 'curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $cred" "$url/vms/{}/start"'
t2=$(now_ms)
running=$(curl -fsS -H "Authorization: Bearer $cred" "$url/vms" | jq '[.value[] | select(.state == "running")] | length')
echo "2. starts: $(( t2 - t1 )) ms for $n ($(echo "$n $t1 $t2" | awk '{printf "%.2f", $1 * 1000 / ($3 - $2)}') VMs/s); running: $running"

for v in $names; do curl -fsS -H "Authorization: Bearer $cred" "$url/vms/$v/events"; echo; done >"$work/events.jsonl"
pct() { sort -n | awk -v s="$1" '{a[NR]=$1} END {printf "   %-17s p50 %4d  p90 %4d  p99 %4d  max %4d  (n=%d)\n", s, a[int(NR*0.5)+1], a[int(NR*0.9)+1], a[int(NR*0.99)+1], a[NR], NR}'; }
echo "3. per-step durations from the VMs' events (ms):"
for step in launch attest vmgs_key_release vmgs vtpm secure_boot running; do
  jq -r --arg s "$step" '.value[] | select(.step == $s) | .durationMs' "$work/events.jsonl" | pct "$step"
done
# The attest step split: waiting for a transfer key (made ahead by the host agent),
# then the report and the attestation service's appraisal.
jq -r '.value[] | select(.step == "attest") | .detail | capture("transfer key ready in (?<k>[0-9]+) ms") | .k' \
  "$work/events.jsonl" | pct "attest: key wait"
jq -r '.value[] | select(.step == "attest") | .detail | capture("report and appraisal (?<k>[0-9]+) ms") | .k' \
  "$work/events.jsonl" | pct "attest: appraisal"
echo "4. the attested-boot gates (attest + vmgs_key_release + vmgs) per start:"
jq -r '[.value[] | select(.step == "attest" or .step == "vmgs_key_release" or .step == "vmgs") | .durationMs] | add' \
  "$work/events.jsonl" | pct "gates (ms)"
jq -r '([.value[] | select(.step == "attest" or .step == "vmgs_key_release" or .step == "vmgs") | .durationMs] | add) as $g
       | ([.value[] | select(.step == "running") | .durationMs] | add) as $t | ($g * 100 / $t | floor)' \
  "$work/events.jsonl" | pct "gates (% of start)"
rss1=$(rss_of "$(cat "$work/pid")")
# RSS counts the pages vTPM processes share (the cvm binary, libtpms, libc) once per
# process; PSS divides shared pages among their users, so its sum is what they cost.
vtpm=0
pss=0
count=0
for pid in $(pgrep -f "vtpm run --kek-stdin --vmgs $work/" || true); do
  vtpm=$(( vtpm + $(rss_of "$pid") ))
  pss=$(( pss + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0) ))
  count=$(( count + 1 ))
done
each() { echo $(( $1 / ($2 > 0 ? $2 : 1) )); }
echo "5. memory: server ${rss0} KiB before, ${rss1} KiB with $running running VMs ($(each $(( rss1 - rss0 )) "$running") KiB each);" \
  "$count vTPM processes: PSS ${pss} KiB in all ($(each "$pss" "$count") KiB each), RSS ${vtpm} KiB ($(each "$vtpm" "$count") KiB each)"

# 6. Encrypted OS disks (DiskWithVMGuestState, platform key): E VMs (default 4; each
# disk is a copy of the 1.4 GB image, so not N of them), one at a time: the create
# with its pre-encryption, the first start (disk key released to the token, disk
# bound to the vTPM), a stop and a second start (disk unsealed by the vTPM).
e=${E:-4}
enc=$(seq -f "enc%03g" 1 "$e")
for v in $enc; do
  curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $cred" -H "Content-Type: application/json" \
    -d '{"vmSize": "Standard_DC2as_v5", "image": "debian-12", "securityProfile": {"securityType": "ConfidentialVM"}, "osDisk": {"securityEncryptionType": "DiskWithVMGuestState"}}' \
    "$url/vms/$v"
  # The create answers `creating`; the disk is pre-encrypted in the background.
  until [ "$(curl -fsS -H "Authorization: Bearer $cred" "$url/vms/$v" | jq -r .state)" != creating ]; do
    sleep 0.2
  done
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $cred" "$url/vms/$v/start"
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $cred" "$url/vms/$v/stop"
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $cred" "$url/vms/$v/start"
done
for v in $enc; do curl -fsS -H "Authorization: Bearer $cred" "$url/vms/$v/events"; echo; done >"$work/enc.jsonl"
running=$(curl -fsS -H "Authorization: Bearer $cred" "$url/vms" | jq '[.value[] | select(.state == "running" and (.name | startswith("enc")))] | length')
echo "6. encrypted OS disks: $e VMs, $running running at the end (ms):"
jq -r '.value[] | select(.step == "disk_pre_encryption") | .durationMs' "$work/enc.jsonl" | pct "pre-encryption"
# Each VM's first start, then its second.
nth() { jq -r --arg s "$1" --argjson i "$2" '[.value[] | select(.step == $s) | .durationMs][$i] // empty' "$work/enc.jsonl"; }
nth disk_unlock 0 | pct "disk_unlock, 1st"
nth disk_unlock 1 | pct "disk_unlock, 2nd"
# The gates of a start (attest + vmgs_key_release + vmgs + disk_unlock).
gates_of() {
  jq -r --argjson i "$1" '[.value] | .[0] as $v
    | ["attest", "vmgs_key_release", "vmgs", "disk_unlock"]
    | map(. as $s | [$v[] | select(.step == $s) | .durationMs][$i]) | add' "$work/enc.jsonl"
}
gates_of 0 | pct "gates, 1st start"
gates_of 1 | pct "gates, 2nd start"
nth running 0 | pct "whole 1st start"
nth running 1 | pct "whole 2nd start"
