#!/usr/bin/env bash
# What the traffic inventory (learn mode) costs on the Check path. In one run, alternating round by round,
# the in-repo load generator (examples/load_gen.rs) drives four egress-authz servers:
#   walkthrough-on / walkthrough-off   the walkthrough's rules and requests
#   10k-on / 10k-off                   10,000 generated rules and their sample requests
# Both mixes repeat a handful of flows, as a gateway's steady state does: every check updates a key the
# inventory already holds, the path that runs on every check (a new key is the rare case).
# "on" is the default (--traffic-max-entries 100000), "off" is --traffic-max-entries 0. Reported per target:
# throughput, p50/p99, and server CPU per check (utime + stime from /proc over the checks answered), each
# "on" as a ratio to its "off" twin measured in the same run. The flow keys the "on" servers hold at the
# end are read from egress_authz_traffic_entries.
#
# Usage: scripts/traffic-bench.sh   (env: DURATION=5 ROUNDS=3 CONCURRENCY=64 CONNECTIONS=2 SERVER_THREADS=1 PIN=1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-2}
SERVER_THREADS=${SERVER_THREADS:-1}
PIN=${PIN:-1}

cargo build --release --quiet --bin egress-authz --example load_gen --example gen_rules
# shellcheck source=scripts/loadbench/common.sh
source scripts/loadbench/common.sh

mkdir -p "$WORK/rules10k"
"$BIN/examples/gen_rules" 10000 >"$WORK/rules10k/rules.yaml"
SERVE=(serve --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json --worker-threads "$SERVER_THREADS")
start_server walkthrough_on "$WORK/w-on.log" "$BIN/egress-authz" "${SERVE[@]}" --rules deploy/rules/egress.yaml
start_server walkthrough_off "$WORK/w-off.log" "$BIN/egress-authz" "${SERVE[@]}" --rules deploy/rules/egress.yaml --traffic-max-entries 0
start_server 10k_on "$WORK/10k-on.log" "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/rules10k"
start_server 10k_off "$WORK/10k-off.log" "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/rules10k" --traffic-max-entries 0

declare -A MIX=(
  [walkthrough_on]="walkthrough --rules deploy/rules/egress.yaml"
  [walkthrough_off]="walkthrough --rules deploy/rules/egress.yaml"
  [10k_on]="generated:10000 --rules $WORK/rules10k"
  [10k_off]="generated:10000 --rules $WORK/rules10k"
)
TARGETS=(walkthrough_on walkthrough_off 10k_on 10k_off)
RESULTS="$WORK/results.jsonl"
failed=0
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, duration ${DURATION}s x ${ROUNDS} rounds, ${CONNECTIONS} connections, ${CONCURRENCY} streams, server threads ${SERVER_THREADS}, pinned: $([[ ${#server_cpu[@]} -gt 0 ]] && echo "servers CPU 0, generator CPU 1" || echo no)" >&2
for round in $(seq 1 "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    pid_var="SERVER_PID_$target" addr_var="GRPC_$target"
    c0=$(cpu "${!pid_var}")
    # shellcheck disable=SC2086 # MIX holds several arguments on purpose.
    if ! out=$("${client_cpu[@]}" "$BIN/examples/load_gen" --addr "${!addr_var}" --duration-secs "$DURATION" \
      --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" --mix ${MIX[$target]}); then failed=1; fi
    c1=$(cpu "${!pid_var}")
    jq -c --arg t "$target" --argjson r "$round" --argjson cpu_us "$(( (c1 - c0) * TICK_US ))" \
      '. + {target: $t, round: $r, cpu_us_per_check: ($cpu_us / ((.allow + .deny) | if . == 0 then 1 else . end))}' \
      <<<"$out" | tee -a "$RESULTS" >&2
  done
done

entries() { curl -fsS "http://$1/metrics" | awk '/^egress_authz_traffic_entries / { print $2 }'; }
echo "## Traffic inventory on vs off: medians over $ROUNDS rounds; ratio = on / off (throughput: higher is better; CPU and latency: lower)"
echo "flow keys held at the end: walkthrough $(entries "$ADMIN_walkthrough_on"), 10k $(entries "$ADMIN_10k_on")"
jq -rs '
  def med: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  def stat(t; k): [ .[] | select(.target == t) | .[k] ] | med;
  def ratio(a; b): (a / b * 1000 | round) / 1000;
  . as $all
  | ["mix","rps_on","rps_off","rps_on/off","cpu_us_on","cpu_us_off","cpu_on/off","p50_on/off","p99_on/off","wrong"],
    ( ["walkthrough","10k"][] as $m
      | ($m + "_on") as $on | ($m + "_off") as $off
      | [ $m, (stat($on;"rps")|round), (stat($off;"rps")|round), ratio(stat($on;"rps"); stat($off;"rps")),
          ((stat($on;"cpu_us_per_check") * 100 | round) / 100), ((stat($off;"cpu_us_per_check") * 100 | round) / 100),
          ratio(stat($on;"cpu_us_per_check"); stat($off;"cpu_us_per_check")),
          ratio(stat($on;"p50_us"); stat($off;"p50_us")), ratio(stat($on;"p99_us"); stat($off;"p99_us")),
          ([ $all[] | select(.target == $on or .target == $off) | .wrong + .errors ] | add) ] )
  | @tsv' "$RESULTS" | column -t
exit "$failed"
