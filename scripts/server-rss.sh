#!/usr/bin/env bash
# Resident memory of the real server on a rule path: right after it reports Serving, and after the
# allocator's decay period (jemalloc returns freed pages about 10 s after they were freed).
# Usage: scripts/server-rss.sh RULES_PATH [SETTLE_SECONDS]    (builds the release binary first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rules="$1"
settle="${2:-12}"
cargo build --quiet --release --bin egress-authz
log="$(mktemp)"
target/release/egress-authz serve --rules "$rules" --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  --log-format json 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  grep -q '"Serving"' "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
grep -q '"Serving"' "$log" || { echo "server did not start" >&2; exit 1; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
echo "rss_after_start_mib=$(rss) peak_mib=$(hwm)"
sleep "$settle"
echo "rss_after_${settle}s_mib=$(rss)"
