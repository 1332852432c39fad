#!/usr/bin/env bash
# The in-proxy filter against the alternatives, through one Envoy 1.40 worker (--concurrency 1), in one run,
# alternating round by round, with the same h2load load as scripts/envoy-bench.sh (two invocations at once:
# :authority developers.google.com, expected 200; developer.yahoo.com, expected 403 except for the empty
# server):
#   rbac          Envoy's in-process RBAC filter allowing developers.google.com (the in-proxy baseline)
#   wasm          the egress-authz proxy-wasm filter with the walkthrough's rules (deploy/rules/egress.yaml)
#   wasm10k       the same filter with 10,000 generated rules (testkit/src/rules.rs)
#   extauthz      ext_authz to egress-authz with the walkthrough's rules
#   empty         ext_authz to examples/empty_check_server.rs, which answers OK at once (the ext_authz ceiling)
# Every rule set gets one extra rule letting anyone reach developers.google.com, since plaintext requests
# carry no principal (see envoy-bench.sh). Reports req/s, Envoy's CPU per request and the Check server's
# (/proc, all threads), medians over rounds, with the ratios the targets name: wasm / extauthz (target
# >= 2.5) and wasm / rbac (target >= 0.6). Then memory: Envoy's resident set with the filter loaded over
# 10k and 100k rules, minus that of the RBAC Envoy (the filter's memory per worker: one worker, plus the
# main thread's VM that compiles the configuration).
#
# Usage: scripts/wasm-bench.sh    (env: DURATION=8 ROUNDS=3 CLIENTS=2 STREAMS=32 PIN=1 SERVER_THREADS=1)
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
rustup target list --installed | grep -qx wasm32-wasip1 || { echo "the wasm32-wasip1 target is missing: run scripts/install.sh wasm" >&2; exit 1; }

cargo build --release --quiet --bin egress-authz --example empty_check_server --example gen_rules
cargo build --release --quiet --locked --target wasm32-wasip1 --manifest-path wasm-filter/Cargo.toml
MODULE=$PWD/wasm-filter/target/wasm32-wasip1/release/egress_authz_wasm.wasm
[[ -f $MODULE ]] || { echo "no module at $MODULE" >&2; exit 1; }

BENCH_RULE="- name: bench-anyone-to-google
  to:
    hosts: [$ALLOW_HOST]"
# with_bench_rule SOURCE OUT: SOURCE's rules plus the bench rule (both end in a block list of rules).
with_bench_rule() { { cat "$1"; echo; echo "$BENCH_RULE"; } >"$2"; }
with_bench_rule deploy/rules/egress.yaml "$WORK/walkthrough.yaml"
"$BIN/examples/gen_rules" 10000 >"$WORK/gen10k.yaml" && with_bench_rule "$WORK/gen10k.yaml" "$WORK/10k.yaml"
"$BIN/examples/gen_rules" 100000 >"$WORK/gen100k.yaml" && with_bench_rule "$WORK/gen100k.yaml" "$WORK/100k.yaml"
mkdir -p "$WORK/walkthrough-dir" && cp "$WORK/walkthrough.yaml" "$WORK/walkthrough-dir/rules.yaml"

# envoy NAME BOOTSTRAP: starts an Envoy; sets EPID_<NAME> and LISTEN_<NAME> once its listener is up.
envoy() {
  local name=$1 bootstrap=$2
  "${server_cpu[@]}" "$ENVOY" -c "$bootstrap" --concurrency 1 --disable-hot-restart \
    --admin-address-path "$WORK/envoy-$name.admin" -l warning >"$WORK/envoy-$name.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  printf -v "EPID_$name" '%s' "$pid"
  wait_for "$WORK/envoy-$name.admin" "$pid" "envoy ($name)" || { cat "$WORK/envoy-$name.log" >&2; exit 1; }
  local port=""
  for _ in $(seq 1 600); do
    port=$(curl -fsS "http://$(cat "$WORK/envoy-$name.admin")/listeners?format=json" 2>/dev/null |
      jq -r '.listener_statuses[0].local_address.socket_address.port_value // empty') && [[ -n $port && $port != 0 ]] && break
    sleep 0.1
  done
  [[ -n $port && $port != 0 ]] || { cat "$WORK/envoy-$name.log" >&2; echo "envoy ($name): no listener port" >&2; exit 1; }
  printf -v "LISTEN_$name" '%s' "127.0.0.1:$port"
}

# wasm_bootstrap RULES OUT: the filter's bootstrap with RULES as its configuration.
wasm_bootstrap() {
  # The rules as a JSON string (a valid YAML double-quoted scalar); through files, since a 100k-rule file
  # is too long for a command-line argument or an environment variable.
  python3 - "$1" "$MODULE" scripts/loadbench/envoy-wasm-bench.yaml "$2" <<'PY'
import json, sys
rules, module, template, out = sys.argv[1:]
text = open(template).read().replace("{{WASM_MODULE}}", module)
open(out, "w").write(text.replace("{{RULES_JSON}}", json.dumps(open(rules).read())))
PY
}

# extauthz NAME CMD...: a Check server and an Envoy in front of it.
extauthz() {
  local name=$1; shift
  start_server "$name" "$WORK/$name.log" "$@"
  local grpc_var="GRPC_$name"; local grpc=${!grpc_var}
  sed "s/{{AUTHZ_PORT}}/${grpc##*:}/" scripts/loadbench/envoy-ext-authz-bench.yaml >"$WORK/envoy-$name.yaml"
  envoy "$name" "$WORK/envoy-$name.yaml"
}

envoy rbac scripts/loadbench/envoy-rbac-bench.yaml
wasm_bootstrap "$WORK/walkthrough.yaml" "$WORK/envoy-wasm.yaml" && envoy wasm "$WORK/envoy-wasm.yaml"
wasm_bootstrap "$WORK/10k.yaml" "$WORK/envoy-wasm10k.yaml" && envoy wasm10k "$WORK/envoy-wasm10k.yaml"
extauthz extauthz "$BIN/egress-authz" serve --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json \
  --decision-log none --traffic-max-entries 0 --worker-threads "$SERVER_THREADS" --rules "$WORK/walkthrough-dir"
extauthz empty "$BIN/examples/empty_check_server" --grpc-addr 127.0.0.1:0 --worker-threads "$SERVER_THREADS"

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
parse() { # OUT -> JSON
  awk '
    /^finished in/ { rps = $4 + 0 }
    /^requests:/ { total = $2; started = $4; done = $6; errored = $12; timeout = $14 }
    /^status codes:/ { s2 = $3; s4 = $7; s5 = $9 }
    END { printf "{\"rps\":%s,\"done\":%d,\"errored\":%d,\"timeout\":%d,\"s2xx\":%d,\"s4xx\":%d,\"s5xx\":%d}\n", rps, done, errored, timeout, s2, s4, s5 }' "$1"
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, $("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*/[A-Z]*' | head -1)," \
  "duration ${DURATION}s x ${ROUNDS} rounds, 2 h2load x ${CLIENTS} connections x ${STREAMS} streams," \
  "pinned: $([[ ${#server_cpu[@]} -gt 0 ]] && echo "Envoy + Check server CPU 0, h2load CPU 1" || echo no)" >&2

TARGETS=(rbac wasm wasm10k extauthz empty)
for target in "${TARGETS[@]}"; do v="LISTEN_$target"; h2 "$WORK/warm" "${!v}" "$ALLOW_HOST" 1 || true; done
RESULTS="$WORK/results.jsonl"
failed=0
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!TARGETS[@]}"; do
    target=${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}
    lv="LISTEN_$target" ev="EPID_$target" sv="SERVER_PID_$target"
    server=${!sv:-}
    e0=$(cpu "${!ev}") s0=0; [[ -n $server ]] && s0=$(cpu "$server")
    h2 "$WORK/allow.out" "${!lv}" "$ALLOW_HOST" "$DURATION" & ha=$!
    h2 "$WORK/deny.out" "${!lv}" "$DENY_HOST" "$DURATION" & hd=$!
    wait "$ha" || { cat "$WORK/allow.out" >&2; failed=1; }
    wait "$hd" || { cat "$WORK/deny.out" >&2; failed=1; }
    e1=$(cpu "${!ev}") s1=0; [[ -n $server ]] && s1=$(cpu "$server")
    line=$(jq -nc --arg t "$target" --argjson r "$round" --argjson a "$(parse "$WORK/allow.out")" --argjson d "$(parse "$WORK/deny.out")" \
      --argjson ec "$(( (e1 - e0) * TICK_US ))" --argjson sc "$(( (s1 - s0) * TICK_US ))" '
      ($a.done + $d.done) as $n
      | {target: $t, round: $r, rps: ($a.rps + $d.rps), requests: $n,
         envoy_cpu_us: ($ec / $n), server_cpu_us: ($sc / $n),
         answers_ok: ($a.done > 0 and $d.done > 0 and $a.errored + $a.timeout + $d.errored + $d.timeout == 0
                      and $a.s2xx == $a.done
                      and (if $t == "empty" then $d.s2xx == $d.done else $d.s4xx == $d.done end))}')
    jq -e .answers_ok <<<"$line" >/dev/null || failed=1
    echo "$line" | tee -a "$RESULTS" >&2
  done
done

echo "## Through one Envoy worker: medians over $ROUNDS rounds (req/s: higher is better; CPU per request: lower)"
jq -rs '
  def med: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  def stat(t; k): [ .[] | select(.target == t) | .[k] ] | med;
  def r2: . * 100 | round / 100;
  . as $all
  | ["target","req/s","rps/rbac","rps/extauthz","envoy_cpu_us/req","server_cpu_us/req","answers_ok"],
    ( ["rbac","wasm","wasm10k","extauthz","empty"][] as $t
      | [ $t, (stat($t;"rps")|round), (stat($t;"rps") / ($all|stat("rbac";"rps")) | r2),
          (stat($t;"rps") / ($all|stat("extauthz";"rps")) | r2),
          (stat($t;"envoy_cpu_us") * 10 | round / 10), (stat($t;"server_cpu_us") * 10 | round / 10),
          ([ $all[] | select(.target == $t) | .answers_ok ] | map(tostring) | unique | join(",")) ] )
  | @tsv' "$RESULTS" | column -t

# Memory: the filter over 10k and 100k rules, each in an Envoy of its own, against the RBAC Envoy (warmed up).
wasm_bootstrap "$WORK/100k.yaml" "$WORK/envoy-wasm100k.yaml" && envoy wasm100k "$WORK/envoy-wasm100k.yaml"
h2 "$WORK/warm" "$LISTEN_wasm100k" "$ALLOW_HOST" 1 || true
base=$(rss_kib "$EPID_rbac")
echo "## Envoy resident memory (MiB): rbac $((base / 1024)); with the filter: walkthrough $(( $(rss_kib "$EPID_wasm") / 1024 )), 10k rules $(( $(rss_kib "$EPID_wasm10k") / 1024 )), 100k rules $(( $(rss_kib "$EPID_wasm100k") / 1024 ))"
echo "## the filter's memory over RBAC's Envoy (one worker + the main thread's VM): 10k rules $(( ($(rss_kib "$EPID_wasm10k") - base) / 1024 )) MiB, 100k rules $(( ($(rss_kib "$EPID_wasm100k") - base) / 1024 )) MiB"
exit "$failed"
