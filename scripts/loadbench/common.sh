# Shared by the load, Envoy and flood benchmarks (sourced, not run): the tools they need, the scratch
# directory and process cleanup, CPU pinning, starting a Check server, reading its counters, waiting for
# a process's file, CPU time from /proc, and one h2load run.
# Expects PIN (1 to pin) and `set -euo pipefail` from the caller.

# need COMMAND: fails, naming the installer, when the command is missing (benchmarks install nothing).
need() {
  command -v "$1" >/dev/null || { echo "$1 is missing: run scripts/install.sh bench" >&2; exit 1; }
}
need jq
need curl

BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# With PIN=1 and 2+ CPUs: servers (and Envoy) on CPU 0, the load generator on CPU 1.
server_cpu=() client_cpu=()
if [[ $PIN == 1 && $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
  server_cpu=(taskset -c 0) client_cpu=(taskset -c 1)
fi

# start_server NAME LOG CMD...: runs a Check server on the server CPU, waits for its JSON "Serving" line
# and sets SERVER_PID_<NAME>, GRPC_<NAME> and ADMIN_<NAME> (empty for the empty server, which has none).
start_server() {
  local name=$1 log=$2; shift 2
  "${server_cpu[@]}" "$@" >"$log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  for _ in $(seq 1 600); do
    grep -q '"Serving"' "$log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "$name exited" >&2; exit 1; }
    sleep 0.1
  done
  local line; line=$(grep -m1 '"Serving"' "$log") || { echo "$name did not start" >&2; exit 1; }
  printf -v "SERVER_PID_$name" '%s' "$pid"
  printf -v "GRPC_$name" '%s' "$(jq -r '.grpc_addr // .fields.grpc_addr' <<<"$line")"
  printf -v "ADMIN_$name" '%s' "$(jq -r '.admin_addr // .fields.admin_addr // empty' <<<"$line")"
}

# checks DECISION ADMIN: sum of egress_authz_checks_total{decision=…}.
checks() {
  curl -fsS "http://$2/metrics" | awk -v d="decision=\"$1\"" '/^egress_authz_checks_total\{/ && index($0, d) { s += $NF } END { printf "%d\n", s }'
}

# wait_for FILE PID WHAT: until FILE is non-empty (60 s at most), failing early if PID exits.
wait_for() {
  for _ in $(seq 1 600); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not start" >&2; return 1
}

# cpu PID: user + system CPU time of a process (all threads), in clock ticks; TICK_US converts them to µs.
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# h2 OUT LISTEN HOST SECONDS: one h2load run (CLIENTS connections x STREAMS streams) with :authority HOST;
# its output in OUT.
h2() {
  timeout $(( $4 + 30 )) "${client_cpu[@]}" h2load -D "$4" -c "$CLIENTS" -m "$STREAMS" \
    -H ":authority: $3" "http://$2/" >"$1" 2>&1
}
