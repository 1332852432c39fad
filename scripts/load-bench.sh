#!/usr/bin/env bash
# Load benchmark. In one run, alternating round by round, drives with the in-repo load generator
# (examples/load_gen.rs: Envoy-shaped CheckRequests, many concurrent HTTP/2 streams, every answer checked):
#   walkthrough  egress-authz with the walkthrough's rules (deploy/rules/egress.yaml)
#   10k    egress-authz with 10,000 generated rules (testkit/src/rules.rs)
#   empty  examples/empty_check_server.rs: answers OK at once, same tonic and server settings (the ceiling)
# and reports throughput and p50/p99/p99.9 latency, each as a ratio to the ceiling measured in the same run.
# Besides the generator's own per-answer check, the egress_authz_checks_total deltas on /metrics must equal
# the allows and denies the generator saw.
# Then, reload under load: egress-authz on a directory holding a 100k-rule file, a steady-state run, and a
# run during which the file is rewritten 20 times (the server hot-reloads it): no failed or wrong check,
# p99 during reloads vs steady state.
#
# Usage: scripts/load-bench.sh            (env: DURATION=10 ROUNDS=3 CONCURRENCY=64 CONNECTIONS=2
#                                                SERVER_THREADS=1 PIN=1 RELOADS=20 SKIP_RELOAD=0 SKIP_DIRECT=0
#                                                RELOAD_LOAD=0.5 RELOAD_GAP=0 SERVER_FLAGS=)
# With PIN=1 and 2+ CPUs, servers run on CPU 0 and the generator on CPU 1, so the servers compare on
# one core each and the generator does not steal from them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-2}
SERVER_THREADS=${SERVER_THREADS:-1}
PIN=${PIN:-1}
RELOADS=${RELOADS:-20}
SKIP_RELOAD=${SKIP_RELOAD:-0}
SKIP_DIRECT=${SKIP_DIRECT:-0}

cargo build --release --quiet --bin egress-authz --example empty_check_server --example load_gen --example gen_rules
# shellcheck source=scripts/loadbench/common.sh
source scripts/loadbench/common.sh

load() { # load ADDR MIX EXPECT... -> JSON line
  local addr=$1 mix=$2; shift 2
  "${client_cpu[@]}" "$BIN/examples/load_gen" --addr "$addr" --mix "$mix" --duration-secs "$DURATION" \
    --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" "$@"
}

mkdir -p "$WORK/rules10k" "$WORK/rules100k"
"$BIN/examples/gen_rules" 10000 >"$WORK/rules10k/rules.yaml"
failed=0
# shellcheck disable=SC2206 # SERVER_FLAGS is split on purpose: extra `serve` flags to try.
SERVE=(serve --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json --worker-threads "$SERVER_THREADS" ${SERVER_FLAGS:-})
if [[ $SKIP_DIRECT != 1 ]]; then
start_server walkthrough "$WORK/walkthrough.log" "$BIN/egress-authz" "${SERVE[@]}" --rules deploy/rules/egress.yaml
start_server 10k "$WORK/10k.log" "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/rules10k"
start_server empty "$WORK/empty.log" "$BIN/examples/empty_check_server" --grpc-addr 127.0.0.1:0 --worker-threads "$SERVER_THREADS"

declare -A ARGS=(
  [walkthrough]="walkthrough --rules deploy/rules/egress.yaml"
  [10k]="generated:10000 --rules $WORK/rules10k"
  [empty]="walkthrough --expect-ok"
)
RESULTS="$WORK/results.jsonl"
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, duration ${DURATION}s x ${ROUNDS} rounds, ${CONNECTIONS} connections, ${CONCURRENCY} streams, server threads ${SERVER_THREADS}, pinned: $([[ ${#server_cpu[@]} -gt 0 ]] && echo "servers CPU 0, generator CPU 1" || echo no)" >&2
for round in $(seq 1 "$ROUNDS"); do
  for target in walkthrough 10k empty; do
    addr_var="GRPC_$target" admin_var="ADMIN_$target"
    admin=${!admin_var:-}
    if [[ -n $admin ]]; then a0=$(checks allow "$admin"); d0=$(checks deny "$admin"); fi
    # shellcheck disable=SC2086
    if ! out=$(load "${!addr_var}" ${ARGS[$target]}); then failed=1; fi
    verified=null
    if [[ -n $admin ]]; then
      da=$(( $(checks allow "$admin") - a0 )) dd=$(( $(checks deny "$admin") - d0 ))
      if [[ $da == $(jq .allow <<<"$out") && $dd == $(jq .deny <<<"$out") ]]; then verified=true; else verified=false failed=1; fi
    fi
    jq -c --arg t "$target" --argjson r "$round" --argjson v "$verified" '. + {target: $t, round: $r, metrics_match: $v}' <<<"$out" | tee -a "$RESULTS" >&2
  done
done

echo "## Direct Check load: medians over $ROUNDS rounds; ratio = value / empty server's (throughput: higher is better; latency: lower)"
jq -rs '
  def med: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  def stat(t; k): [ .[] | select(.target == t) | .[k] ] | med;
  . as $all
  | ["target","rps","p50_us","p99_us","p999_us","rps/ceil","p50/ceil","p99/ceil","p999/ceil","allow","deny","wrong","metrics_match"],
    ( ["walkthrough","10k","empty"][] as $t
      | [ $t, (stat($t;"rps")|round), stat($t;"p50_us"), stat($t;"p99_us"), stat($t;"p999_us"),
          ((stat($t;"rps") / ($all|stat("empty";"rps"))) * 100 | round / 100),
          ((stat($t;"p50_us") / ($all|stat("empty";"p50_us"))) * 100 | round / 100),
          ((stat($t;"p99_us") / ($all|stat("empty";"p99_us"))) * 100 | round / 100),
          ((stat($t;"p999_us") / ($all|stat("empty";"p999_us"))) * 100 | round / 100),
          ([ $all[] | select(.target == $t) | .allow ] | add),
          ([ $all[] | select(.target == $t) | .deny ] | add),
          ([ $all[] | select(.target == $t) | .wrong + .errors ] | add),
          ([ $all[] | select(.target == $t) | .metrics_match ] | map(tostring) | unique | join(",")) ] )
  | @tsv' "$RESULTS" | column -t

for pid in "$SERVER_PID_walkthrough" "$SERVER_PID_10k" "$SERVER_PID_empty"; do kill "$pid" 2>/dev/null || true; done
fi

if [[ $SKIP_RELOAD != 1 ]]; then
  "$BIN/examples/gen_rules" 100000 >"$WORK/gen100k.yaml"
  cp "$WORK/gen100k.yaml" "$WORK/rules100k/rules.yaml"
  start_server 100k "$WORK/100k.log" "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/rules100k"
  rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$SERVER_PID_100k/status"; }
  reloads() { curl -fsS "http://$ADMIN_100k/metrics" | awk '/^egress_authz_reloads_total\{/ && /result="success"/ { s += $NF } END { printf "%d\n", s }'; }
  echo "## Reload under load (100k rules; server RSS after start: $(rss) MiB)"
  # Saturated (closed loop) the p99 is queueing behind whatever else uses the CPU, so a reload's
  # compile shows up one-for-one. The latency comparison runs paced at RELOAD_LOAD of that capacity.
  capacity=$(load "$GRPC_100k" generated:100000 --rules "$WORK/rules100k")
  echo "capacity (closed loop): $capacity"
  rate=$(jq -r --argjson f "${RELOAD_LOAD:-0.5}" '.rps * $f | floor' <<<"$capacity")
  steady=$(load "$GRPC_100k" generated:100000 --rules "$WORK/rules100k" --rate "$rate")
  echo "steady at $rate/s:  $steady"
  r0=$(reloads)
  # Rewrite the file RELOADS times while the load runs; each version differs (a comment), so each reload
  # really compiles and swaps. Written beside and renamed over, as editors and ConfigMap updates do.
  (
    for i in $(seq 1 "$RELOADS"); do
      { cat "$WORK/gen100k.yaml"; echo "# rewrite $i"; } >"$WORK/rules100k/.next"
      mv "$WORK/rules100k/.next" "$WORK/rules100k/rules.yaml"
      for _ in $(seq 1 100); do [[ $(reloads) -ge $((r0 + i)) ]] && break; sleep 0.1; done
      sleep "${RELOAD_GAP:-0}"
    done
  ) &
  writer=$!
  DURATION_SAVED=$DURATION
  # Long enough to cover every rewrite (compiling 100k rules takes about a second).
  DURATION=$(( RELOADS * 3 / 2 + RELOADS * ${RELOAD_GAP:-0} ))
  during=$(load "$GRPC_100k" generated:100000 --rules "$WORK/rules100k" --rate "$rate") || failed=1
  DURATION=$DURATION_SAVED
  wait "$writer"
  applied=$(( $(reloads) - r0 ))
  echo "during reloads at $rate/s: $during"
  echo "reloads applied during the run: $applied of $RELOADS; server RSS now: $(rss) MiB"
  jq -rn --argjson s "$steady" --argjson d "$during" \
    '"p99 during reloads / steady: \(($d.p99_us / $s.p99_us * 100 | round) / 100); p99.9: \(($d.p999_us / $s.p999_us * 100 | round) / 100); p50: \(($d.p50_us / $s.p50_us * 100 | round) / 100)"'
  [[ $applied -ge $RELOADS ]] || { echo "only $applied reloads were applied" >&2; failed=1; }
fi
exit "$failed"
