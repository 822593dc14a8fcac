#!/usr/bin/env bash
# vTPM throughput: opencvm's `cvm vtpm run` against swtpm (Debian) with the same TPM
# command mixes over the same transport (loopback TCP, swtpm socket protocol), both
# emulators and the client pinned to one CPU, runs interleaved. The client is
# bench/tpm_bench.py (Python stdlib; copied from the shared tools, see its header).
#
# Usage: bench/vtpm-bench.sh [SECONDS] [ROUNDS]      (after `cargo build --release -p cvm`)
#   NAMES="swtpm opencvm opencvm-nofsync opencvm-vmgs" picks the emulators (default: the
#   first three); opencvm-vmgs keeps the state in an encrypted 4 MiB VMGS file.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-2}
cpu=${CPU:-1}
cvm=target/release/cvm
[ -x "$cvm" ] || { echo "build first: cargo build --release -p cvm" >&2; exit 2; }
command -v swtpm >/dev/null || { echo "swtpm missing (scripts/setup installs it)" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_pair() {
  python3 - <<'PY'
import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
    finally:
        a.close(); b.close()
PY
}

start() { # start NAME → sets PORT and PID
  local name=$1 port
  port=$(free_pair)
  rm -rf "$work/$name"; mkdir -m 0700 "$work/$name"
  case $name in
    swtpm)
      taskset -c "$cpu" swtpm socket --tpm2 --tpmstate dir="$work/$name" \
        --server type=tcp,port="$port" --ctrl type=tcp,port=$((port + 1)) \
        --flags not-need-init,startup-clear >/dev/null 2>&1 &
      ;;
    opencvm)
      taskset -c "$cpu" "$cvm" vtpm run --state "$work/$name" \
        --server tcp:127.0.0.1:"$port" --dangerously-allow-tcp >/dev/null 2>&1 &
      ;;
    opencvm-vmgs)
      head -c 32 /dev/urandom >"$work/vmgs.key"
      taskset -c "$cpu" "$cvm" vtpm run --vmgs "$work/$name/vm.vmgs" --key-file "$work/vmgs.key" \
        --server tcp:127.0.0.1:"$port" --dangerously-allow-tcp >/dev/null 2>&1 &
      ;;
    opencvm-nofsync)
      taskset -c "$cpu" "$cvm" vtpm run --state "$work/$name" --unsafe-no-fsync \
        --server tcp:127.0.0.1:"$port" --dangerously-allow-tcp >/dev/null 2>&1 &
      ;;
  esac
  PID=$!
  PORT=$port
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && return
    sleep 0.1
  done
  echo "$name did not start" >&2; exit 1
}

run() { # run NAME MIX
  start "$1"
  taskset -c "$cpu" python3 bench/tpm_bench.py --port "$PORT" --seconds "$secs" \
    --mix "$2" --pid "$PID" --json > "$work/out.json" || true
  kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true
  python3 - "$1" "$2" "$work/out.json" <<'PY'
import json, sys
name, mix, path = sys.argv[1:]
d = json.load(open(path))
errs = d.get("errors", 0)
per = d.get("per_command", {})
extra = " ".join(f"{k}={v.get('ops_per_s', 0):.0f}/s" for k, v in per.items())
server = d.get("server", {})
extra += f"  server CPU {server.get('cpu_us_per_op', 0)} us/op"
print(f"{name:16} {mix:40} {d.get('ops_per_s', 0):>9.0f} ops/s  errors={errs}  {extra}")
with open(sys.argv[3] + ".all", "a") as f:
    f.write(json.dumps({"name": name, "mix": mix, "ops": d.get("ops_per_s", 0),
                        "cpu": server.get("cpu_us_per_op", 0), "errors": errs}) + "\n")
PY
}

echo "# $secs s per run, $rounds interleaved rounds, CPU $cpu; $(nproc) CPUs; $(date -u +%FT%TZ)"
for r in $(seq "$rounds"); do
  for mix in ${MIXES:-getrandom,pcr_extend,pcr_read,nv_read quote nv_write}; do
    for name in ${NAMES:-swtpm opencvm opencvm-nofsync}; do
      run "$name" "$mix"
    done
  done
done

echo "# medians over the rounds (ops/s; server CPU us/op)"
python3 - "$work/out.json.all" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = []
for r in rows:
    if (r["mix"], r["name"]) not in keys:
        keys.append((r["mix"], r["name"]))
for mix, name in keys:
    rs = [r for r in rows if r["mix"] == mix and r["name"] == name]
    print(f"{name:16} {mix:40} {statistics.median(r['ops'] for r in rs):>9.0f}  "
          f"{statistics.median(r['cpu'] for r in rs):>6.1f}  errors={sum(r['errors'] for r in rs)}")
PY
