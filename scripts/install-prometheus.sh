#!/usr/bin/env bash
# Installs promtool and the Prometheus server (Debian package `prometheus`) for the monitoring tests in
# tests/deploy: promtool checks and unit-tests the alert rules, and the test starts its own Prometheus on
# loopback. Idempotent; needs root and apt-get when they are missing. Fails loudly when it cannot
# install: the suite would otherwise skip the monitoring tests.
# On a machine with systemd the package also enables a prometheus service; the tests never use it.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  promtool --version 2>&1 | head -1 >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "error: promtool and prometheus are needed (Debian: apt-get install prometheus), and this" \
    "script can install them only as root with apt-get" >&2
  exit 1
fi
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "error: the prometheus package installed no promtool/prometheus on PATH" >&2
  exit 1
fi
promtool --version 2>&1 | head -1 >&2
