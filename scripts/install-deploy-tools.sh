#!/usr/bin/env bash
# Installs the tools the deploy manifest tests need into a project-local virtualenv (.venv-deploy).
# Idempotent: re-running only installs what is missing or pinned differently.
# Needs: python3 (3.11+) with the venv module, and access to PyPI. No root, nothing global.
#
#   scripts/install-deploy-tools.sh
#   .venv-deploy/bin/pytest -q tests/deploy
#
# The deploy tests also call `kubectl kustomize` (kubectl has kustomize built in); kubectl itself is not
# installed here. Override the venv location with DEPLOY_VENV=path.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DEPLOY_VENV:-$root/.venv-deploy}"
requirements="$root/tests/deploy/requirements.txt"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "error: $python is $("$python" -V 2>&1); Python 3.11 or newer is needed" >&2
    exit 1
fi

# A venv whose interpreter has gone (e.g. Python upgraded underneath it) is rebuilt.
if [ -d "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "rebuilding broken venv $venv" >&2
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi

# Skip the network when everything pinned is already installed at the pinned version.
if "$venv/bin/python" - "$requirements" <<'PY' >/dev/null 2>&1
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
    echo "deploy tools already installed"
else
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements"
fi

if ! command -v kubectl >/dev/null 2>&1; then
    echo "warning: kubectl not found on PATH; the deploy tests need it for 'kubectl kustomize'" >&2
fi

echo "$venv"
