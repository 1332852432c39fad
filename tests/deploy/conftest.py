"""Shared fixtures for the deploy manifest tests: rendering with `kubectl kustomize`, schemas, paths.

Everything here reads files of this repository only; nothing touches a cluster or the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("standalone", "sidecar")

# Every kustomization the suite renders, by a short id.
RENDER_TARGETS = {
    "standalone": DEPLOY / "overlays" / "standalone",
    "sidecar": DEPLOY / "overlays" / "sidecar",
    "istio-gateway": DEPLOY / "istio" / "gateway",
    "istio-egress": DEPLOY / "istio" / "egress",
    "istio-wasm": DEPLOY / "istio" / "wasm",
    "istio-wasm-file": DEPLOY / "istio" / "wasm" / "file",
    "rules": DEPLOY / "rules",
    "tenants": DEPLOY / "tenants",
}
# Plain manifests applied with `kubectl apply -f`, not through kustomize.
PLAIN_MANIFESTS = (DEPLOY / "istio" / "networkpolicy" / "egress-via-gateway.yaml",)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is needed for `kubectl kustomize` (it has kustomize built in)")
    return path


def kustomize(directory: Path) -> list[dict]:
    """Render a kustomization directory and return its objects."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def kustomize_with_components(tmp_dir: Path, base: Path, components: list[Path]) -> list[dict]:
    """Render `base` with extra kustomize components, as a user's own kustomization would.

    kustomize accepts only relative paths for resources and components, so the throwaway kustomization
    refers to them relative to its own directory.
    """
    rel = lambda p: os.path.relpath(p, tmp_dir)  # noqa: E731
    (tmp_dir / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(base)],
                "components": [rel(c) for c in components],
            }
        )
    )
    return kustomize(tmp_dir)


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


_render_cache: dict[str, list[dict]] = {}


def rendered(target: str) -> list[dict]:
    if target not in _render_cache:
        _render_cache[target] = kustomize(RENDER_TARGETS[target])
    return _render_cache[target]


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict]]:
    return {name: rendered(name) for name in RENDER_TARGETS}


@pytest.fixture(scope="session")
def mesh_configs() -> dict[str, dict]:
    """meshConfig from the IstioOperator overlay and from the istiod Helm values."""
    (operator,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istio-operator.yaml")
    (values,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istiod-values.yaml")
    return {"istio-operator": operator["spec"]["meshConfig"], "istiod-values": values["meshConfig"]}
