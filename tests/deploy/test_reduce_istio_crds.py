"""scripts/reduce-istio-crds.py --merge: adding one kind to the reduced schema file from an excerpt of Istio's
CRDs keeps every other CRD as it was and records where the added kind came from."""

from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

import validation as schemas
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "reduce-istio-crds.py"
EXCERPT = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "wasmplugins.extensions.istio.io", "labels": {"app": "istio-pilot"}},
    "spec": {
        "group": "extensions.istio.io",
        "names": {"kind": "WasmPlugin", "plural": "wasmplugins"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "additionalPrinterColumns": [{"name": "Age", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "description": "dropped",
                                "required": ["url"],
                                "properties": {
                                    "url": {
                                        "type": "string",
                                        "x-kubernetes-validations": [{"rule": "isURL(self)"}],
                                    },
                                    "phase": {"type": "string", "enum": ["AUTHN", "AUTHZ"]},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def crds_by_kind(path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        return {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(fh) if d}


def merge(tmp_path, note: str):
    source = tmp_path / "excerpt.yaml"
    source.write_text(yaml.safe_dump(EXCERPT))
    reduced = tmp_path / "reduced.yaml"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(source), "--merge", str(reduced), "-o", str(reduced), "--source-note", note],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return reduced


def origins(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("# Origin")]


def test_merge_replaces_one_kind_and_keeps_the_others(tmp_path):
    shutil.copy(schemas.ISTIO_SCHEMAS, tmp_path / "reduced.yaml")
    before = crds_by_kind(schemas.ISTIO_SCHEMAS)
    after = crds_by_kind(merge(tmp_path, "istio/istio @ abc, excerpt"))
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "WasmPlugin"} == {
        k: v for k, v in before.items() if k != "WasmPlugin"
    }
    (version,) = after["WasmPlugin"]["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert schema == {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["url"],
                "properties": {"url": {"type": "string"}, "phase": {"type": "string", "enum": ["AUTHN", "AUTHZ"]}},
            }
        },
    }


def test_merge_records_the_added_kinds_origin_once(tmp_path):
    shutil.copy(schemas.ISTIO_SCHEMAS, tmp_path / "reduced.yaml")
    base_origin = [line for line in origins(schemas.ISTIO_SCHEMAS) if line.startswith("# Origin: ")]
    merge(tmp_path, "istio/istio @ first")
    reduced = merge(tmp_path, "istio/istio @ second")
    assert origins(reduced) == [*base_origin, "# Origin of WasmPlugin: istio/istio @ second"]
