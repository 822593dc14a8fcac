#!/usr/bin/env bash
# A real guest's boot on the `qemu` backend against the same QEMU boot with every
# gate off, in one run:
#
#   [RUNS=3] [CVM=path/to/cvm] bench/qemu-boot.sh
#
# 1. gated: `cvm up --backend qemu` (one host), a VM of the Debian 12 image (`cvm image
#    build debian-12`, cached in target/images) without disk encryption; each run is
#    `cvm vm start` (launch, attestation, VMGS key release, VMGS, vTPM, Secure Boot
#    check, QEMU) and the console followed until the guest's login prompt and its
#    guest agent's ready line (it attested with the guest's own evidence through the
#    host agent), then `cvm vm stop`: the time to `running` (the start's answer), to
#    the prompt and to the ready line;
# 2. gates off: the same QEMU command line (OVMF's Secure Boot build with the VM's
#    variable image, a fresh copy-on-write disk over the same image, a vTPM as
#    `cvm vtpm run` on a plain state directory: no attestation, no key release, no
#    VMGS, no host-side checks; the same virtio-serial port, which nothing answers)
#    until the same prompt (there is no ready line: nothing to attest to);
# 3. memory of the running gated VM: QEMU's and its vTPM's resident and proportional
#    set sizes;
# 4. gated with an encrypted OS disk: a second VM created with `--disk-encryption
#    platform-key` (its pre-encryption timed), started the same way: the host unseals
#    the disk's key through the vTPM before QEMU (the first start releases it from the
#    key vault and binds the disk), and the guest's initramfs opens the root itself.
#    Not compared with a gates-off boot: without the gates no vTPM holds the key.
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
# Waits until FILE has grown past OFFSET with a line matching PATTERN (default: a
# login prompt); prints the time.
wait_prompt() {
  local file=$1 from=$2 pattern=${3:-login:}
  for _ in $(seq 3000); do
    if tail -c +"$((from + 1))" "$file" 2>/dev/null | grep -q "$pattern"; then
      now_ms
      return
    fi
    sleep 0.1
  done
  echo "no '$pattern' in $file" >&2
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
# starts NAME ARRAY: RUNS times `cvm vm start NAME`, its console until the login
# prompt, then `cvm vm stop NAME`; prints each run (with the gates' own time, and the
# disk's unlock when it has one) and appends the time to the prompt to ARRAY. The
# last run also prints the memory of the running VM's QEMU and vTPM.
starts() {
  local name=$1 vdir r from t0 t1 t2 t3 ready gates unlock qpid vpid p pname rss pss
  local -n times=$2
  vdir="$work/up/hosts/host-1/vms/$("$cvm" vm show "$name" "${state[@]}" --json | jq -r .id)"
  for r in $(seq "$runs"); do
    from=$(stat -c %s "$vdir/console.log" 2>/dev/null || echo 0)
    t0=$(now_ms)
    "$cvm" vm start "$name" "${state[@]}" >/dev/null 2>&1
    t1=$(now_ms)
    t2=$(wait_prompt "$vdir/console.log" "$from")
    # This start's events: from its last `start` event on.
    read -r gates unlock < <("$cvm" vm events "$name" "${state[@]}" --json | jq -r '
      .value | .[(map(.step) | rindex("start")):]
      | [([.[] | select(.step == "attest" or .step == "vmgs_key_release" or .step == "vmgs") | .durationMs] | add),
         ([.[] | select(.step == "disk_unlock") | .durationMs] | add // "none")] | @tsv')
    ready=$(wait_prompt "$vdir/console.log" "$from" 'opencvm-guest: ready')
    echo "  run $r: running after $((t1 - t0)) ms (attest + key release + VMGS $gates ms, disk_unlock $unlock ms), login prompt after $((t2 - t0)) ms, guest agent ready (attested with its own evidence) after $((ready - t0)) ms"
    times+=($((t2 - t0)))
    readies+=($((ready - t0)))
    if [ "$r" = "$runs" ]; then
      qpid=$(pgrep -f "qemu-system-x86_64.*$vdir" | head -1)
      vpid=$(pgrep -f "vtpm run --kek-stdin --vmgs $vdir" | head -1)
      for p in "$qpid" "$vpid"; do
        pname=$(tr '\0' ' ' <"/proc/$p/cmdline" | awk '{print $1" "$2" "$3}')
        rss=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup")
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")
        echo "  memory of the running VM: $pname: RSS $((rss / 1024)) MiB, PSS $((pss / 1024)) MiB"
      done
    fi
    t3=$(now_ms)
    "$cvm" vm stop "$name" "${state[@]}" >/dev/null 2>&1
    echo "  run $r: stopped after $(($(now_ms) - t3)) ms ($(tail -c 4096 "$vdir/console.log" | grep -q 'reboot: Power down' && echo 'the guest powered off' || echo 'forced'))"
  done
}

"$cvm" vm create bench "${state[@]}" --size Standard_DC2as_v5 --image debian-12 \
  --disk-encryption none >/dev/null
dir="$work/up/hosts/host-1/vms/$("$cvm" vm show bench "${state[@]}" --json | jq -r .id)"
echo "gated: cvm vm start, then the console until the login prompt ($runs runs)"
gated=()
readies=()
starts bench gated
gated_ready=("${readies[@]}")

echo "gated, encrypted OS disk ($runs runs)"
t0=$(now_ms)
"$cvm" vm create benc "${state[@]}" --size Standard_DC2as_v5 --image debian-12 \
  --disk-encryption platform-key >/dev/null 2>&1
echo "  create with pre-encryption: $(($(now_ms) - t0)) ms"
enc=()
readies=()
starts benc enc
enc_ready=("${readies[@]}")

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
    -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=guestagent,path=$work/off-$r.sock,server=on,wait=off" \
    -device virtserialport,bus=vser0.0,chardev=guestagent,name=org.opencvm.guest.0 \
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
e=$(median "${enc[@]}")
echo "median to the login prompt: gated $g ms, gates off $o ms: the gates add $((g - o)) ms ($(echo "$g $o" | awk '{printf "%.2f", $1 / $2}')x); gated with an encrypted disk $e ms"
echo "median to the guest agent's ready line: gated $(median "${gated_ready[@]}") ms, gated with an encrypted disk $(median "${enc_ready[@]}") ms (gates off: none)"
