#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: unit, socket-level and CLI tests, the ops tests,
# the end-to-end tests against a real Envoy 1.40, and the offline validation of the deploy bundle (with its
# alert rules and dashboard, checked by promtool and against a real Prometheus).
# Needs only what a fresh machine has: cargo (with cargo-nextest), Python 3.11 with pip, kubectl; on Debian
# it installs the openssl command line tool and Prometheus with apt-get when they are missing (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== installing test dependencies" >&2
# The end-to-end tests send TLS server names that are not host names; rustls cannot, `openssl s_client`
# can. Debian's base system does not include the openssl CLI (only the library).
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >&2
  else
    echo "error: the openssl command line tool is needed (Debian: apt-get install openssl)" >&2
    exit 1
  fi
fi
ENVOY_BIN="$(scripts/install-envoy.sh)"
export ENVOY_BIN
scripts/install-deploy-tools.sh >&2
# promtool and Prometheus for the alert-rule and dashboard tests in tests/deploy.
scripts/install-prometheus.sh
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
