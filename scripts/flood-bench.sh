#!/usr/bin/env bash
# Overload benchmark: egress-authz (the walkthrough's rules, default limits: 1024 checks in flight, 1024 connections,
# 1024 streams per connection) first at its capacity, then flooded, in one run:
#   baseline  closed loop, CONNECTIONS x CONCURRENCY streams (the load benchmark's shape): capacity, p50/p99
#   floods    closed loop with far more checks outstanding than --max-checks-in-flight, for each
#             CONNSxSTREAMS in FLOODS (streams per connection); 2000 connections also exceed
#             --max-connections, so about half of them wait in the kernel's accept queue
# For each flood, with examples/load_gen.rs --flood: checks/s decided vs shed (client side, and the
# egress_authz_checks_total deltas on /metrics), p50/p99 of the decided checks as a ratio to the baseline's,
# checks unanswered after TIMEOUT_MS, the server's RSS sampled from /proc every 100 ms (peak vs idle), the
# "Overloaded" warnings logged, and recovery: the flood's connections are closed, then the time until a
# probe check on a fresh connection is decided, and the first 100 ms window whose p99 is within
# P99_FACTOR of the baseline's, under the baseline's load shape.
#
# Usage: scripts/flood-bench.sh   (env: DURATION=10 CONNECTIONS=2 CONCURRENCY=64 FLOODS="1000x8 2000x4"
#                                       TIMEOUT_MS=2000 RECOVER=5 P99_FACTOR=1.5 SERVER_THREADS=1 PIN=1
#                                       SETTLE=12 SERVER_FLAGS=)
# With PIN=1 and 2+ CPUs, the server runs on CPU 0 and the generator on CPU 1 (one thread each).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-2}
CONCURRENCY=${CONCURRENCY:-64}
FLOODS=${FLOODS:-1000x8 2000x4}
TIMEOUT_MS=${TIMEOUT_MS:-2000}
RECOVER=${RECOVER:-5}
P99_FACTOR=${P99_FACTOR:-1.5}
SERVER_THREADS=${SERVER_THREADS:-1}
PIN=${PIN:-1}
SETTLE=${SETTLE:-12}

cargo build --release --quiet --bin egress-authz --example load_gen
# shellcheck source=scripts/loadbench/common.sh
source scripts/loadbench/common.sh

# The generator holds one socket per connection, the server as many again; 2000 connections need more
# than the usual 1024 descriptors.
ulimit -n 8192 2>/dev/null || true

RULES=deploy/rules/egress.yaml
# shellcheck disable=SC2206 # SERVER_FLAGS is split on purpose: extra `serve` flags to try.
start_server authz "$WORK/authz.log" "$BIN/egress-authz" serve --rules "$RULES" --grpc-addr 127.0.0.1:0 \
  --admin-addr 127.0.0.1:0 --log-format json --worker-threads "$SERVER_THREADS" ${SERVER_FLAGS:-}
pid=$SERVER_PID_authz
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# counter REASON: egress_authz_checks_total summed over the series with reason="REASON" ("" for all).
counter() {
  curl -fsS "http://$ADMIN_authz/metrics" | awk -v r="reason=\"$1\"" \
    '/^egress_authz_checks_total\{/ && (r == "reason=\"\"" || index($0, r)) { s += $NF } END { printf "%d\n", s }'
}
warnings() { grep -c '"Overloaded: shedding checks' "$WORK/authz.log" || true; }

# sample_rss OUT: the server's VmRSS in KiB every 100 ms (at most 10 minutes), until killed.
sample_rss() {
  for _ in $(seq 1 6000); do
    awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || return 0
    sleep 0.1
  done >"$1"
}

load() { # load CONNECTIONS STREAMS EXTRA... -> JSON line
  local connections=$1 streams=$2; shift 2
  "${client_cpu[@]}" "$BIN/examples/load_gen" --addr "$GRPC_authz" --mix walkthrough --rules "$RULES" \
    --duration-secs "$DURATION" --connections "$connections" --concurrency "$streams" \
    --flood --timeout-ms "$TIMEOUT_MS" "$@"
}

idle=$(rss_kib)
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, ${DURATION}s per run, server threads $SERVER_THREADS, pinned: $([[ ${#server_cpu[@]} -gt 0 ]] && echo "server CPU 0, generator CPU 1" || echo no), server flags: ${SERVER_FLAGS:-defaults}" >&2
echo "idle RSS after start: $(mib "$idle") MiB" >&2

failed=0
RESULTS="$WORK/results.jsonl"
run() { # run NAME CONNECTIONS STREAMS EXTRA...: one load run with RSS sampling and /metrics deltas
  local name=$1 connections=$2 streams=$3; shift 3
  local shed0 all0 warn0 sampler out
  shed0=$(counter overloaded) all0=$(counter "") warn0=$(warnings)
  sample_rss "$WORK/rss-$name" & sampler=$!
  out=$(load "$connections" "$streams" "$@") || failed=1
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local peak; peak=$(sort -n "$WORK/rss-$name" | tail -1)
  local shed=$(( $(counter overloaded) - shed0 )) all=$(( $(counter "") - all0 ))
  jq -c --arg n "$name" --argjson shed "$shed" --argjson decided "$(( all - shed ))" \
    --argjson peak "${peak:-0}" --argjson samples "$(wc -l <"$WORK/rss-$name")" \
    --argjson rss "$(rss_kib)" --argjson warn "$(( $(warnings) - warn0 ))" \
    '. + {name: $n, server_shed: $shed, server_decided: $decided, peak_rss_kib: $peak, rss_samples: $samples,
          rss_after_kib: $rss, overload_warnings: $warn}' <<<"$out" | tee -a "$RESULTS" >&2
}

run baseline "$CONNECTIONS" "$CONCURRENCY"
for flood in $FLOODS; do
  conns=${flood%x*} per=${flood#*x}
  run "flood-${flood}" "$conns" $(( conns * per )) --recover-secs "$RECOVER" \
    --recover-connections "$CONNECTIONS" --recover-concurrency "$CONCURRENCY"
done
sleep "$SETTLE"
settled=$(rss_kib)

echo "## Overload: ratios to the baseline run above (decided = answered by the rules; shed = 503 overloaded)"
jq -rs --argjson idle "$idle" --argjson settled "$settled" --argjson f "$P99_FACTOR" --argjson d "$DURATION" '
  def r2: (. * 100 | round) / 100;
  def mib: (. / 1024 * 10 | round) / 10;
  (.[] | select(.name == "baseline")) as $b
  | ["run","outstanding","decided/s","shed/s","decided/s ÷ base","server decided/s","server shed/s",
     "p50 ms","p99 ms","p50 ÷ base","p99 ÷ base","timeouts","errors+wrong","peak RSS MiB","peak ÷ idle",
     "warnings","first decided after ms","p99 ≤ factor×base after ms"],
    ( .[] | [ .name, .streams, .rps, (.shed_rps // 0), (.rps / $b.rps | r2),
              (.server_decided / $d | round), (.server_shed / $d | round),
              (.p50_us / 1000 | r2), (.p99_us / 1000 | r2), (.p50_us / $b.p50_us | r2), (.p99_us / $b.p99_us | r2),
              .timeouts, (.errors + .wrong), (.peak_rss_kib | mib), (.peak_rss_kib / $idle | r2),
              .overload_warnings,
              (.recovery.first_decided_ms // "-"),
              ( if .recovery then
                  ([ .recovery.windows[] | select(.[1] > 0 and .[2] <= $b.p99_us * $f) ][0][0] // "never")
                else "-" end ) ] )
  | @tsv' "$RESULTS" | column -t -s $'\t'
echo "idle RSS $(mib "$idle") MiB; RSS ${SETTLE}s after the last flood: $(mib "$settled") MiB"
exit "$failed"
