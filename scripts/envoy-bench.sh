#!/usr/bin/env bash
# Throughput through Envoy (target: "≥ 0.95 of the ceiling through Envoy"). Envoy 1.40 (--concurrency 1)
# with the HTTP ext_authz filter (scripts/loadbench/envoy-ext-authz-bench.yaml: PLAINTEXT h2c listener,
# gRPC ext_authz fail-closed with a 0.5 s timeout, direct_response 200, no upstream) in front of, alternating
# round by round in one run:
#   walkthrough  egress-authz with the walkthrough's rules (deploy/rules/egress.yaml) + the bench rule below
#   10k    egress-authz with 10,000 generated rules (testkit/src/rules.rs) + the bench rule below
#   empty  examples/empty_check_server.rs: answers OK at once (the ceiling)
#   shaped the same server answering with egress-authz's precomputed responses for the two hosts (metadata,
#          403 with header and body): the ceiling for egress-authz's response shape, which the Check contract requires;
#          egress-authz vs shaped is egress-authz's own work, shaped vs empty is Envoy handling that response
#   empty2 a second, identical empty server with its own Envoy: an A/A control. Its ratio to `empty` is
#          this machine's resolution; a difference smaller than that is not a finding.
# Load: h2load (nghttp2-client), two invocations at once per measurement, one with :authority
# developers.google.com (expected 200 everywhere) and one with developer.yahoo.com (expected 403 from
# egress-authz, 200 from the empty server). Plaintext means no peer certificate, so the CheckRequests carry no
# principal: the walkthrough's rules all have `from`, so a rule without `from` (zz-bench-anyone.yaml, written below)
# lets anyone reach developers.google.com; yahoo is denied (reason invalid_principal: no identity).
# Verified per measurement: h2load's status-code counts as expected, no errors/timeouts, and egress-authz's
# egress_authz_checks_total allow/deny deltas lie between h2load's "done" and "started" counts (requests
# in flight when h2load stops its clock were checked but not counted as done).
# Reports req/s (sum of both invocations), h2load's request time (min/max, mean and sd pooled over both) and
# the CPU time per request of the Check server and of Envoy (/proc, all threads), medians over rounds, each as a ratio to the empty server measured in the same run.
#
# Usage: scripts/envoy-bench.sh    (env: DURATION=8 ROUNDS=3 CLIENTS=2 STREAMS=32 PIN=1 SERVER_THREADS=1)
# CLIENTS connections x STREAMS concurrent streams per h2load invocation (two invocations).
# With PIN=1 and 2+ CPUs: Envoy and the Check server on CPU 0, h2load on CPU 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-2}
STREAMS=${STREAMS:-32}
PIN=${PIN:-1}
SERVER_THREADS=${SERVER_THREADS:-1}
ALLOW_HOST=developers.google.com
DENY_HOST=developer.yahoo.com

# shellcheck source=scripts/loadbench/common.sh
source scripts/loadbench/common.sh
need h2load
ENVOY=${ENVOY_BIN:-$(scripts/install.sh path envoy)}

cargo build --release --quiet --bin egress-authz --example empty_check_server --example gen_rules

# start NAME CMD...: runs a Check server and an Envoy in front of it; sets LISTEN_<NAME>, ADMIN_<NAME>
# (egress-authz's admin address, empty for the empty server).
start() {
  local name=$1; shift
  start_server "$name" "$WORK/$name.log" "$@"
  local grpc_var="GRPC_$name"; local grpc=${!grpc_var}
  sed "s/{{AUTHZ_PORT}}/${grpc##*:}/" scripts/loadbench/envoy-ext-authz-bench.yaml >"$WORK/envoy-$name.yaml"
  "${server_cpu[@]}" "$ENVOY" -c "$WORK/envoy-$name.yaml" --concurrency 1 --disable-hot-restart \
    --admin-address-path "$WORK/envoy-$name.admin" -l warning >"$WORK/envoy-$name.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  printf -v "EPID_$name" '%s' "$pid"
  wait_for "$WORK/envoy-$name.admin" "$pid" "envoy ($name)" || { cat "$WORK/envoy-$name.log" >&2; exit 1; }
  local port=""
  for _ in $(seq 1 100); do
    port=$(curl -fsS "http://$(cat "$WORK/envoy-$name.admin")/listeners?format=json" 2>/dev/null |
      jq -r '.listener_statuses[0].local_address.socket_address.port_value // empty') && [[ -n $port && $port != 0 ]] && break
    sleep 0.1
  done
  [[ -n $port && $port != 0 ]] || { echo "envoy ($name): no listener port" >&2; exit 1; }
  printf -v "LISTEN_$name" '%s' "127.0.0.1:$port"
}

# parse OUT -> JSON: h2load's counts and request-time statistics (µs).
parse() {
  awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    /^finished in/ { rps = $4 + 0 }
    /^requests:/ { total = $2; started = $4; done = $6; errored = $12; timeout = $14 }
    /^status codes:/ { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
    /^time for request:/ { mn = us($4); mx = us($5); mean = us($6); sd = us($7) }
    END { printf "{\"rps\":%s,\"total\":%d,\"started\":%d,\"done\":%d,\"errored\":%d,\"timeout\":%d,\"s2xx\":%d,\"s3xx\":%d,\"s4xx\":%d,\"s5xx\":%d,\"min_us\":%s,\"max_us\":%s,\"mean_us\":%s,\"sd_us\":%s}\n",
      rps, total, started, done, errored, timeout, s2, s3, s4, s5, mn, mx, mean, sd }' "$1"
}

mkdir -p "$WORK/walkthrough" "$WORK/10k"
cat >"$WORK/zz-bench-anyone.yaml" <<EOF
# envoy-bench.sh only: plaintext requests carry no principal, so without this rule every check is denied.
rules:
- name: bench-anyone-to-google
  to:
    hosts: [$ALLOW_HOST]
EOF
cp deploy/rules/egress.yaml "$WORK/walkthrough/"
cp "$WORK/zz-bench-anyone.yaml" "$WORK/walkthrough/"
"$BIN/examples/gen_rules" 10000 >"$WORK/10k/rules.yaml"
cp "$WORK/zz-bench-anyone.yaml" "$WORK/10k/"

SERVE=(serve --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json --decision-log none --worker-threads "$SERVER_THREADS")
start walkthrough "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/walkthrough"
start 10k "$BIN/egress-authz" "${SERVE[@]}" --rules "$WORK/10k"
start empty "$BIN/examples/empty_check_server" --grpc-addr 127.0.0.1:0 --worker-threads "$SERVER_THREADS"
start empty2 "$BIN/examples/empty_check_server" --grpc-addr 127.0.0.1:0 --worker-threads "$SERVER_THREADS"
start shaped "$BIN/examples/empty_check_server" --grpc-addr 127.0.0.1:0 --worker-threads "$SERVER_THREADS" \
  --shaped-rules "$WORK/walkthrough" --host "$ALLOW_HOST" --host "$DENY_HOST"

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*/[A-Z]*' | head -1), $(h2load --version | head -1)," \
  "duration ${DURATION}s x ${ROUNDS} rounds, 2 h2load x ${CLIENTS} connections x ${STREAMS} streams, server threads ${SERVER_THREADS}," \
  "pinned: $([[ ${#server_cpu[@]} -gt 0 ]] && echo "Envoy + Check server CPU 0, h2load CPU 1" || echo no)" >&2

# Warm-up (not measured): connections, Envoy's gRPC client, the servers' caches.
TARGETS=(walkthrough 10k empty shaped empty2)
for target in "${TARGETS[@]}"; do
  v="LISTEN_$target"; h2 "$WORK/warm" "${!v}" "$ALLOW_HOST" 1 || true
done

RESULTS="$WORK/results.jsonl"
failed=0
for round in $(seq 1 "$ROUNDS"); do
  # The order rotates each round, so no target always follows the same one.
  for i in "${!TARGETS[@]}"; do
    target=${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}
    lv="LISTEN_$target" av="ADMIN_$target"
    listen=${!lv} admin=${!av:-}
    sv="SERVER_PID_$target" ev="EPID_$target"
    if [[ -n $admin ]]; then a0=$(checks allow "$admin"); d0=$(checks deny "$admin"); fi
    s0=$(cpu "${!sv}") e0=$(cpu "${!ev}")
    h2 "$WORK/allow.out" "$listen" "$ALLOW_HOST" "$DURATION" & ha=$!
    h2 "$WORK/deny.out" "$listen" "$DENY_HOST" "$DURATION" & hd=$!
    wait "$ha" || { cat "$WORK/allow.out" >&2; failed=1; }
    wait "$hd" || { cat "$WORK/deny.out" >&2; failed=1; }
    s1=$(cpu "${!sv}") e1=$(cpu "${!ev}")
    A=$(parse "$WORK/allow.out") D=$(parse "$WORK/deny.out")
    metrics=null
    if [[ -n $admin ]]; then
      metrics=$(jq -nc --argjson a "$(( $(checks allow "$admin") - a0 ))" --argjson d "$(( $(checks deny "$admin") - d0 ))" '{allow: $a, deny: $d}')
    fi
    # Expected: allow host all 2xx; deny host all 403 from egress-authz (and shaped), all 2xx from empty.
    line=$(jq -nc --arg t "$target" --argjson r "$round" --argjson a "$A" --argjson d "$D" --argjson m "$metrics" \
      --argjson sc "$(( (s1 - s0) * TICK_US ))" --argjson ec "$(( (e1 - e0) * TICK_US ))" '
      ($a.done + $d.done) as $n
      | (($a.done * $a.mean_us + $d.done * $d.mean_us) / $n) as $mean
      | {target: $t, round: $r, rps: ($a.rps + $d.rps), requests: $n,
         min_us: ([$a.min_us, $d.min_us] | min), max_us: ([$a.max_us, $d.max_us] | max), mean_us: $mean,
         sd_us: ((($a.done * ($a.sd_us * $a.sd_us + $a.mean_us * $a.mean_us)
                 + $d.done * ($d.sd_us * $d.sd_us + $d.mean_us * $d.mean_us)) / $n - $mean * $mean) | sqrt),
         server_cpu_us_per_req: ($sc / $n), envoy_cpu_us_per_req: ($ec / $n),
         allow: $a, deny: $d, metrics: $m,
         answers_ok: ($a.done > 0 and $d.done > 0 and $a.errored + $a.timeout + $d.errored + $d.timeout == 0
                      and $a.s2xx == $a.done
                      and (if $t == "empty" or $t == "empty2" then $d.s2xx == $d.done else $d.s4xx == $d.done end)),
         metrics_match: (if $m == null then null else
                         ($m.allow >= $a.done and $m.allow <= $a.started and $m.deny >= $d.done and $m.deny <= $d.started) end)}')
    jq -e '.answers_ok and .metrics_match != false' <<<"$line" >/dev/null || failed=1
    jq -c '{target, round, rps: (.rps | round), requests, min_us, max_us, mean_us: (.mean_us | round), sd_us: (.sd_us | round),
            server_cpu_us: (.server_cpu_us_per_req * 10 | round / 10), envoy_cpu_us: (.envoy_cpu_us_per_req * 10 | round / 10),
            allow_2xx: .allow.s2xx, deny_4xx: .deny.s4xx, deny_2xx: .deny.s2xx, metrics, answers_ok, metrics_match}' <<<"$line" >&2
    echo "$line" >>"$RESULTS"
  done
done

echo "## Through Envoy: medians over $ROUNDS rounds; ratio = value / empty server's (req/s: higher is better; time: lower)"
echo "## rps/ceil_rounds: median of the same-round ratios (robust to drift between rounds); rps/shaped: vs the shaped ceiling"
jq -rs '
  def med: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  def stat(t; k): [ .[] | select(.target == t) | .[k] ] | med;
  def r2: . * 100 | round / 100;
  . as $all
  | def round_ratio(t; base): [ $all[] | select(.target == t) | . as $x
        | ($all[] | select(.target == base and .round == $x.round) | .rps) as $b | $x.rps / $b ] | med;
  ["target","req/s","min_ms","max_ms","mean_ms","sd_ms","rps/ceil","rps/ceil_rounds","rps/shaped_rounds","mean/ceil","server_cpu_us/req","envoy_cpu_us/req","requests","answers_ok","metrics_match"],
    ( ["walkthrough","10k","empty","shaped","empty2"][] as $t
      | [ $t, (stat($t;"rps")|round), (stat($t;"min_us")/1000|r2), (stat($t;"max_us")/1000|r2),
          (stat($t;"mean_us")/1000|r2), (stat($t;"sd_us")/1000|r2),
          (stat($t;"rps") / ($all|stat("empty";"rps")) | r2),
          (round_ratio($t; "empty") | r2), (round_ratio($t; "shaped") | r2),
          (stat($t;"mean_us") / ($all|stat("empty";"mean_us")) | r2),
          (stat($t;"server_cpu_us_per_req") * 10 | round / 10), (stat($t;"envoy_cpu_us_per_req") * 10 | round / 10),
          ([ $all[] | select(.target == $t) | .requests ] | add),
          ([ $all[] | select(.target == $t) | .answers_ok ] | map(tostring) | unique | join(",")),
          ([ $all[] | select(.target == $t) | .metrics_match ] | map(tostring) | unique | join(",")) ] )
  | @tsv' "$RESULTS" | column -t
echo "per round req/s: $(jq -rs 'group_by(.target) | map("\(.[0].target) \(map(.rps | round) | join(" "))") | join("; ")' "$RESULTS")"
exit "$failed"
