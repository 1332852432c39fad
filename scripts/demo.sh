#!/usr/bin/env bash
# Local demo of egress-authz behind a real Envoy 1.40 configured like an Istio egress gateway with a CUSTOM
# AuthorizationPolicy, no Kubernetes: builds egress-authz and the demo, starts Envoy, egress-authz and loopback stand-ins for
# developers.google.com / developer.yahoo.com on 127.0.0.1, replays the Istio egress walkthrough's `curl -I` requests for
# every stage (HTTP and opaque TLS path) and prints caller, destination, path, expected, actual and the
# deciding rule. Everything it starts is stopped when it ends or is interrupted.
#
# Usage: scripts/install.sh demo && scripts/demo.sh      (ENVOY_BIN=/path/to/envoy to use another Envoy)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY_BIN="${ENVOY_BIN:-$(scripts/install.sh path envoy)}"
export ENVOY_BIN
echo "demo: building egress-authz and the demo (cargo build)" >&2
cargo build --quiet --bin egress-authz --example demo
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export EGRESS_AUTHZ_BIN="$TARGET_DIR/debug/egress-authz"

demo_pid=""
stop() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    # the demo stops Envoy and egress-authz itself on SIGTERM
    kill -TERM "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

"$TARGET_DIR/debug/examples/demo" &
demo_pid=$!
set +e
wait "$demo_pid"
rc=$?
set -e
demo_pid=""
exit "$rc"
