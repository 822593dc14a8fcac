#!/usr/bin/env bash
# Disk encryption throughput, all in one run (issue 13's benchmark):
#  1. the cipher bound: `openssl speed -evp aes-256-xts -bytes 4096`, one thread;
#  2. our AES-XTS (aws-lc through crate aes-xts), criterion, 1 and 2 threads;
#  3. end to end, a SIZE_MIB image (default 1024): `cvm disk encrypt` with 1 and 2
#     threads against `cryptsetup reencrypt --encrypt --force-offline-reencrypt` on a
#     copy of the same file, ROUNDS rounds (default 3) alternating, median wall time.
#     Both use PBKDF2 with 1000 iterations for their keyslot so that the key
#     derivation (seconds by design) is not what is measured; both still calibrate
#     their volume-key digest (about 125 ms). Both flush their output (the time
#     includes it).
#
#   [SIZE_MIB=1024] [ROUNDS=3] [DIR=/var/tmp] bench/disk.sh
#
# The files live in DIR (on disk, not tmpfs); both tools flush their output.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${SIZE_MIB:-1024}"
rounds="${ROUNDS:-3}"
dir=$(mktemp -d "${DIR:-/var/tmp}/opencvm-disk-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cargo build --release --locked -p cvm -q
cvm="${CARGO_TARGET_DIR:-target}/release/cvm"

echo "== 1. openssl speed -evp aes-256-xts -bytes 4096 (1 thread)"
openssl version
ossl=$(openssl speed -evp aes-256-xts -bytes 4096 -seconds 3 2>/dev/null | awk '/^AES-256-XTS/ {sub("k","",$2); print $2*1000}')
echo "openssl: $(python3 -c "print(f'{$ossl/1e9:.2f}')") GB/s"

echo "== 2. aes-xts (criterion)"
cargo bench --locked -p aes-xts --bench xts -- --noplot 2>&1 | grep -E '^xts/|thrpt' || true
crit="${CARGO_TARGET_DIR:-target}/criterion/xts"
xts() { # name -> bytes per second from criterion's mean
  python3 - "$crit/$1/new" <<'PY'
import json, sys
d = sys.argv[1]
t = json.load(open(d + "/estimates.json"))["mean"]["point_estimate"]  # ns per iteration
b = json.load(open(d + "/benchmark.json"))["throughput"]["Bytes"]
print(b / t * 1e9)
PY
}
x1=$(xts encrypt_1_thread_4096)
x1s=$(xts encrypt_1_thread_512)
x2=$(xts encrypt_2_threads_4096)

echo "== 3. end to end, $size MiB, $rounds rounds"
head -c "$((size << 20))" /dev/urandom >"$dir/raw"
printf 'bench passphrase' >"$dir/pass"
t_cvm1=() t_cvm2=() t_cs=() t_cpcs=()
now() { date +%s.%N; }
# One untimed run first (the first write of a large file here is several times
# slower than the next ones, whichever tool makes it), and `sync` before each timed
# run so that none pays for the previous one's writeback.
"$cvm" disk encrypt --in "$dir/raw" --out "$dir/img" --passphrase-file "$dir/pass" \
  --kdf pbkdf2 --pbkdf2-iterations 1000 --progress none 2>/dev/null
for r in $(seq "$rounds"); do
  for n in 1 2; do
    rm -f "$dir/img"
    sync
    s=$(now)
    "$cvm" disk encrypt --in "$dir/raw" --out "$dir/img" --passphrase-file "$dir/pass" \
      --kdf pbkdf2 --pbkdf2-iterations 1000 --threads "$n" --progress none 2>/dev/null
    e=$(now)
    t=$(python3 -c "print($e-$s)")
    if [ "$n" = 1 ]; then t_cvm1+=("$t"); else t_cvm2+=("$t"); fi
    echo "round $r: cvm --threads $n: $t s"
  done
  rm -f "$dir/img"
  sync
  # cryptsetup encrypts in place: the same job as ours (input kept, a new image
  # out) is a copy and then the encryption. Both are timed, apart.
  s=$(now)
  cp "$dir/raw" "$dir/dev"
  truncate -s "+32M" "$dir/dev"
  m=$(now)
  cryptsetup reencrypt --encrypt --force-offline-reencrypt --reduce-device-size 32M \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$dir/pass" --batch-mode "$dir/dev"
  e=$(now)
  t=$(python3 -c "print($e-$m)")
  tc=$(python3 -c "print($e-$s)")
  t_cs+=("$t")
  t_cpcs+=("$tc")
  echo "round $r: cryptsetup reencrypt --encrypt: $t s (with the copy before it: $tc s)"
  rm -f "$dir/dev"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(median "${t_cvm1[@]}") m2=$(median "${t_cvm2[@]}") mc=$(median "${t_cs[@]}")
mcc=$(median "${t_cpcs[@]}")

python3 - "$size" "$ossl" "$x1" "$x1s" "$x2" "$m1" "$m2" "$mc" "$mcc" <<'PY'
import sys
size, ossl, x1, x1s, x2, m1, m2, mc, mcc = sys.argv[1:]
size = int(size) << 20
ossl, x1, x1s, x2, m1, m2, mc, mcc = map(float, (ossl, x1, x1s, x2, m1, m2, mc, mcc))
g = lambda b: f"{b/1e9:.2f} GB/s"
print()
print("| measurement | throughput | ratio |")
print("|---|---|---|")
print(f"| openssl speed aes-256-xts, 4096 B, 1 thread (bound) | {g(ossl)} | 1.00 |")
print(f"| aes-xts, 4096-byte units, 1 thread | {g(x1)} | {x1/ossl:.2f}× openssl |")
print(f"| aes-xts, 512-byte units, 1 thread | {g(x1s)} | {x1s/ossl:.2f}× openssl |")
print(f"| aes-xts, 4096-byte units, 2 threads | {g(x2)} | {x2/x1:.2f}× 1 thread |")
e1, e2, ec, ecc = size/m1, size/m2, size/mc, size/mcc
print(f"| cryptsetup reencrypt --encrypt, {size>>20} MiB, in place | {g(ec)} ({mc:.2f} s) | 1.00 |")
print(f"| cp + cryptsetup reencrypt --encrypt (input kept, new image) | {g(ecc)} ({mcc:.2f} s) | {ecc/ec:.2f}× |")
print(f"| cvm disk encrypt --threads 1, {size>>20} MiB (input kept, new image) | {g(e1)} ({m1:.2f} s) | {e1/ec:.2f}× cryptsetup in place, {e1/ecc:.2f}× cp + cryptsetup, {e1/ossl:.2f}× the 1-thread bound |")
print(f"| cvm disk encrypt --threads 2, {size>>20} MiB (input kept, new image) | {g(e2)} ({m2:.2f} s) | {e2/ec:.2f}× cryptsetup in place, {e2/ecc:.2f}× cp + cryptsetup, {e2/(2*ossl):.2f}× the 2-thread bound |")
PY
