#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: unit, socket-level and CLI tests, the ops tests,
# the end-to-end tests against a real Envoy 1.40, and the offline validation of the deploy bundle.
# Needs only what a fresh machine has: cargo (with cargo-nextest), Python 3.11 with pip, kubectl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== installing test dependencies" >&2
ENVOY_BIN="$(scripts/install-envoy.sh)"
export ENVOY_BIN
scripts/install-deploy-tools.sh >&2
GRPCURL_BIN="$(scripts/install-grpcurl.sh)"
export GRPCURL_BIN
# The Envoy tests skip themselves when Envoy is missing in a plain `cargo test`; here they must run.
export EGRESS_AUTHZ_REQUIRE_ENVOY=1 EGRESS_AUTHZ_REQUIRE_TOOLS=1

echo "== Rust tests" >&2
cargo build --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

echo "== deploy bundle validation" >&2
EGRESS_AUTHZ_BIN="$PWD/target/debug/egress-authz" .venv-deploy/bin/pytest -q tests/deploy
