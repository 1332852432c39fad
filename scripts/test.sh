#!/usr/bin/env bash
# Installs what the tests need (scripts/install.sh test) and runs the whole suite: unit, socket-level and
# CLI tests, the ops tests, the end-to-end tests against a real Envoy 1.40, and the offline validation of
# the deploy bundle (with its alert rules and dashboard, checked by promtool and against a real Prometheus).
# Needs only what a fresh machine has: cargo (with cargo-nextest), Python 3.11 with pip, kubectl, and root
# with apt-get for the Debian packages (openssl's command line tool, Prometheus) when they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== installing test dependencies" >&2
scripts/install.sh test
ENVOY_BIN="$(scripts/install.sh path envoy)"
GRPCURL_BIN="$(scripts/install.sh path grpcurl)"
# Tests that need Envoy or grpcurl skip themselves when it is missing in a plain `cargo test`; here they must run.
export ENVOY_BIN GRPCURL_BIN EGRESS_AUTHZ_REQUIRE_ENVOY=1 EGRESS_AUTHZ_REQUIRE_TOOLS=1

echo "== the decision logic builds for wasm32-wasip1 (what the proxy-wasm filter runs)" >&2
cargo build --locked -p egress-authz-policy --target wasm32-wasip1

echo "== the proxy-wasm filter (wasm-filter/: its own workspace), which the e2e suite runs in Envoy" >&2
cargo test --locked --manifest-path wasm-filter/Cargo.toml
cargo build --locked --release --target wasm32-wasip1 --manifest-path wasm-filter/Cargo.toml
wasm_target_dir="${CARGO_TARGET_DIR:-wasm-filter/target}"
case "$wasm_target_dir" in /*) ;; *) wasm_target_dir="$PWD/$wasm_target_dir" ;; esac
# The kit finds the module here; with EGRESS_AUTHZ_REQUIRE_ENVOY=1 a missing one fails the filter's tests.
export EGRESS_AUTHZ_WASM_MODULE="$wasm_target_dir/wasm32-wasip1/release/egress_authz_wasm.wasm"

echo "== Rust tests" >&2
cargo build --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi

echo "== deploy bundle validation" >&2
EGRESS_AUTHZ_BIN="$PWD/target/debug/egress-authz" "$(scripts/install.sh path deploy-venv)/bin/pytest" -q tests/deploy
