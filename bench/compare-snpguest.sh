#!/usr/bin/env bash
# Whole-process comparison: `cvm evidence verify` vs `snpguest verify ...` on the same
# report and certificates (trustee test-report.bin, its VCEK, AMD's Milan ASK/ARK).
#
#   SNPGUEST=/path/to/snpguest bench/compare-snpguest.sh
#
# Needs: cargo, hyperfine, openssl (to split/convert the certificates), and a snpguest
# binary (not built here; e.g. `cargo install snpguest --root /tmp/snpguest`, which
# needs pkg-config and libssl-dev or builds OpenSSL itself).
# Env: SNPGUEST (default: snpguest on PATH), WARMUP (10), MIN_RUNS (50),
#      SKIP_BUILD=1 to reuse target/release/cvm, OUT=file.md to keep the markdown table.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="$ROOT/testdata/snp"
REPORT="$T/trustee/snp/test-report.bin"
VCEK_DER="$T/trustee/snp/test-vcek.der"
BUNDLE="$T/go-sev-guest/ask_ark_milan.pem"
AT="2025-08-01T00:00:00Z"

die() { echo "compare-snpguest: $*" >&2; exit 2; }

SNPGUEST="${SNPGUEST:-snpguest}"
SNPGUEST_BIN="$(command -v "$SNPGUEST" || true)"
[ -n "$SNPGUEST_BIN" ] && [ -x "$SNPGUEST_BIN" ] ||
    die "snpguest not found ('$SNPGUEST'). Install it somewhere outside the repo, e.g.
  apt-get install -y pkg-config libssl-dev && cargo install snpguest --root /tmp/snpguest
then run: SNPGUEST=/tmp/snpguest/bin/snpguest $0"
command -v hyperfine >/dev/null || die "hyperfine not found (apt-get install -y hyperfine)"
command -v openssl >/dev/null || die "openssl not found (needed to split/convert the certificates)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p cvm)
fi
CVM="$ROOT/target/release/cvm"
[ -x "$CVM" ] || die "$CVM missing (cargo build --release -p cvm)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
case "$ROOT$WORK" in *[[:space:]]*) die "paths with spaces are not supported ($ROOT, $WORK)";; esac
CERTS="$WORK/certs"
mkdir -p "$CERTS"

# snpguest reads <dir>/ark.{pem,der}, ask.{pem,der} and vcek.{pem,der} (or vlek/asvk).
# Split the KDS cert_chain bundle (ASK then ARK) by subject CN rather than by position.
awk -v dir="$WORK" '/-----BEGIN CERTIFICATE-----/{n++} n{print > (dir "/part" n ".pem")}' "$BUNDLE"
for p in "$WORK"/part*.pem; do
    cn="$(openssl x509 -in "$p" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')"
    case "$cn" in
        ARK-*) cp "$p" "$CERTS/ark.pem" ;;
        SEV-*) cp "$p" "$CERTS/ask.pem" ;;
        *) die "unexpected certificate '$cn' in $BUNDLE" ;;
    esac
done
[ -f "$CERTS/ark.pem" ] && [ -f "$CERTS/ask.pem" ] || die "could not find ARK and ASK in $BUNDLE"
openssl x509 -inform der -in "$VCEK_DER" -out "$CERTS/vcek.pem"
cat "$CERTS/ask.pem" "$CERTS/ark.pem" > "$WORK/chain.pem"   # cvm takes the chain as one file
cp "$REPORT" "$WORK/report.bin"                            # raw 1184-byte report for both

CVM_CMD="$CVM evidence verify $WORK/report.bin --vek $CERTS/vcek.pem --chain $WORK/chain.pem --at $AT --offline --cache $WORK/cache"
# A version 2 report names no product; snpguest then needs -p (it cannot tell Milan
# from Genoa by CHIP_ID).
SG_ATT="$SNPGUEST_BIN verify attestation -p milan $CERTS $WORK/report.bin"
SG_CERTS="$SNPGUEST_BIN verify certs $CERTS"

echo "== sanity: every command must succeed on this report"
for c in "$CVM_CMD" "$SG_ATT" "$SG_CERTS"; do
    echo "\$ $c"
    $c || die "command failed: $c"
done

echo
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $("$SNPGUEST_BIN" --version 2>/dev/null || echo snpguest), $("$CVM" --version 2>/dev/null || echo cvm), $(hyperfine --version)"
OUT="${OUT:-$WORK/results.md}"
hyperfine -N --warmup "${WARMUP:-10}" --min-runs "${MIN_RUNS:-50}" --export-markdown "$OUT" \
    -n "cvm evidence verify (chain+VEK binding+signature+policy)" "$CVM_CMD" \
    -n "snpguest verify attestation (TCB/chip-ID binding+signature)" "$SG_ATT" \
    -n "snpguest verify certs (ARK/ASK/VCEK signatures)" "$SG_CERTS"
echo
cat "$OUT"
