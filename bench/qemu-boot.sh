#!/usr/bin/env bash
# A real guest's boot on the `qemu` backend against the same QEMU boot with every
# gate off, in one run:
#
#   [RUNS=3] [CVM=path/to/cvm] bench/qemu-boot.sh
#
# 1. gated: `cvm up --backend qemu` (one host), a VM of the Debian 12 image (`cvm image
#    build debian-12`, cached in target/images) without disk encryption; each run is
#    `cvm vm start` (launch, attestation, VMGS key release, VMGS, vTPM, Secure Boot
#    check, QEMU) and the console followed until the guest's login prompt, then
#    `cvm vm stop`: the time to `running` (the start's answer) and to the prompt;
# 2. gates off: the same QEMU command line (OVMF's Secure Boot build with the VM's
#    variable image, a fresh copy-on-write disk over the same image, a vTPM as
#    `cvm vtpm run` on a plain state directory: no attestation, no key release, no
#    VMGS, no host-side checks) until the same prompt;
# 3. memory of the running gated VM: QEMU's and its vTPM's resident and proportional
#    set sizes.
# Everything runs under TCG (no KVM here) and shares the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
cargo build --release -q -p cvm
cvm="${CVM:-target/release/cvm}"
work=$(mktemp -d)
cleanup() {
  kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true
  pkill -f "qemu-system-x86_64.*$work" 2>/dev/null || true
  pkill -f "vtpm run.*$work" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
# Waits until FILE has grown past OFFSET with a login prompt; prints the time.
wait_prompt() {
  local file=$1 from=$2
  for _ in $(seq 3000); do
    if tail -c +"$((from + 1))" "$file" 2>/dev/null | grep -q 'login:'; then
      now_ms
      return
    fi
    sleep 0.1
  done
  echo "no login prompt in $file" >&2
  exit 1
}

"$cvm" up --state "$work/up" --listen 127.0.0.1:0 --hosts 1 --regions eastus --backend qemu \
  >"$work/up.out" 2>"$work/up.err" &
echo $! >"$work/pid"
for _ in $(seq 600); do
  grep -q '^stop with' "$work/up.out" 2>/dev/null && break
  sleep 0.1
done
state=(--state "$work/up")
"$cvm" image build debian-12 "${state[@]}" --cache target/images >/dev/null
"$cvm" vm create bench "${state[@]}" --size Standard_DC2as_v5 --image debian-12 \
  --disk-encryption none >/dev/null
id=$("$cvm" vm show bench "${state[@]}" --json | jq -r .id)
dir="$work/up/hosts/host-1/vms/$id"
echo "gated: cvm vm start, then the console until the login prompt ($runs runs)"
gated=()
for r in $(seq "$runs"); do
  from=$(stat -c %s "$dir/console.log" 2>/dev/null || echo 0)
  t0=$(now_ms)
  "$cvm" vm start bench "${state[@]}" >/dev/null 2>&1
  t1=$(now_ms)
  t2=$(wait_prompt "$dir/console.log" "$from")
  gates=$("$cvm" vm events bench "${state[@]}" --json | jq '[.value[-9:][] | select(.step == "attest" or .step == "vmgs_key_release" or .step == "vmgs") | .durationMs] | add')
  echo "  run $r: running after $((t1 - t0)) ms (attest + key release + VMGS $gates ms), login prompt after $((t2 - t0)) ms"
  gated+=($((t2 - t0)))
  if [ "$r" = "$runs" ]; then
    qpid=$(pgrep -f "qemu-system-x86_64.*$dir" | head -1)
    vpid=$(pgrep -f "vtpm run --kek-stdin --vmgs $dir" | head -1)
    for p in "$qpid" "$vpid"; do
      name=$(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print $1" "$2" "$3}')
      rss=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup")
      pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")
      echo "  memory of the running VM: $name: RSS $((rss / 1024)) MiB, PSS $((pss / 1024)) MiB"
    done
  fi
  "$cvm" vm stop bench "${state[@]}" >/dev/null 2>&1
done

echo "gates off: the same QEMU boot with a plain vTPM ($runs runs)"
cp "$dir/OVMF_VARS.fd" "$work/vars.fd"
image=$(readlink -f target/images/debian-12.img)
off=()
for r in $(seq "$runs"); do
  tpm="$work/off-tpm-$r"
  mkdir -m 700 "$tpm"
  "$cvm" vtpm run --state "$tpm" --ctrl "unix:$tpm/ctrl" >"$work/vtpm-$r.out" 2>&1 &
  for _ in $(seq 100); do [ -S "$tpm/ctrl" ] && break; sleep 0.05; done
  qemu-img create -q -f qcow2 -F raw -b "$image" "$work/off-$r.qcow2"
  cp "$work/vars.fd" "$work/off-vars-$r.fd"
  : >"$work/off-$r.log"
  t0=$(now_ms)
  qemu-system-x86_64 -machine q35,smm=on -accel tcg -m 2048 -smp 2 \
    -display none -monitor none -nic none \
    -global driver=cfi.pflash01,property=secure,value=on \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd \
    -drive "if=pflash,format=raw,unit=1,file=$work/off-vars-$r.fd" \
    -drive "file=$work/off-$r.qcow2,format=qcow2,if=virtio" \
    -chardev "socket,id=chrtpm,path=$tpm/ctrl" -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device tpm-crb,tpmdev=tpm0 \
    -chardev "file,id=console,path=$work/off-$r.log,append=on" -serial chardev:console \
    >/dev/null 2>"$work/off-$r.err" &
  qpid=$!
  t2=$(wait_prompt "$work/off-$r.log" 0)
  echo "  run $r: login prompt after $((t2 - t0)) ms"
  off+=($((t2 - t0)))
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  pkill -f "vtpm run --state $tpm" 2>/dev/null || true
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
g=$(median "${gated[@]}")
o=$(median "${off[@]}")
echo "median to the login prompt: gated $g ms, gates off $o ms: the gates add $((g - o)) ms ($(echo "$g $o" | awk '{printf "%.2f", $1 / $2}')x)"
