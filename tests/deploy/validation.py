"""Offline schema validation: Kubernetes kinds via kubernetes-validate, Istio kinds via Istio's CRD schemas.

The Istio schemas come from schemas/istio-crds.reduced.yaml (made by scripts/reduce-istio-crds.py). They are
checked the way the API server does with strict field validation (kubectl's default): an object schema with
`properties` and without x-kubernetes-preserve-unknown-fields rejects unknown fields.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ISTIO_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "istio-crds.reduced.yaml"
# Kubernetes versions to validate against (shipped by the pinned kubernetes-validate): the oldest we claim
# to support and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io")
# Kinds with no schema in this repository, checked by hand-written assertions instead.
HAND_CHECKED = {("monitoring.coreos.com", "ServiceMonitor"), ("install.istio.io", "IstioOperator")}
# Image volumes (a pod volume filled from an OCI image) are in the API from Kubernetes 1.31 and beta from
# 1.33; the bundle's file delivery of the Wasm module needs them, so its object is checked from 1.33 on.
IMAGE_VOLUME_SINCE = "1.33.0"


def group_of(obj: dict) -> str:
    api = obj["apiVersion"]
    return api.split("/", 1)[0] if "/" in api else ""


def is_istio(obj: dict) -> bool:
    return group_of(obj) in ISTIO_GROUPS


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def oldest_kubernetes(obj: dict) -> str:
    """The oldest Kubernetes version whose API has every field this object uses (of those we track)."""
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    if any("image" in volume for volume in pod.get("volumes", [])):
        return IMAGE_VOLUME_SINCE
    return KUBERNETES_VERSIONS[0]


def kubernetes_version_applies(obj: dict, version: str) -> bool:
    return _version_key(version) >= _version_key(oldest_kubernetes(obj))


def _strict(schema):
    """Copy of a structural schema where objects with declared properties reject unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k in ("items", "not", "additionalProperties") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    for key in ("oneOf", "anyOf", "allOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _nullable(schema):
    """OpenAPI `nullable: true` -> JSON Schema type list with null."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "properties":
            out[k] = {pk: _nullable(pv) for pk, pv in v.items()}
        elif k in ("items", "not", "additionalProperties", "oneOf", "anyOf", "allOf"):
            out[k] = _nullable(v)
        else:
            out[k] = v
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@functools.lru_cache(maxsize=1)
def istio_schemas() -> dict[tuple[str, str, str], dict]:
    """{(group, version, kind): JSON schema} from the reduced CRD file."""
    out = {}
    with open(ISTIO_SCHEMAS, encoding="utf-8") as fh:
        for crd in yaml.safe_load_all(fh):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                out[(spec["group"], version["name"], spec["names"]["kind"])] = _nullable(_strict(schema))
    return out


def istio_errors(obj: dict) -> list[str]:
    group, version = obj["apiVersion"].split("/", 1)
    schema = istio_schemas().get((group, version, obj["kind"]))
    if schema is None:
        return [f"no schema for {obj['apiVersion']} {obj['kind']} in {ISTIO_SCHEMAS.name}"]
    body = copy.deepcopy(obj)
    body.pop("metadata", None)  # validated by the API server's ObjectMeta, not by the CRD schema
    body.pop("apiVersion", None)
    body.pop("kind", None)
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{obj['kind']}/{obj['metadata'].get('name')}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(body)
    ]


def kubernetes_errors(obj: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {err}"]
    except kubernetes_validate.SchemaNotFoundError as err:  # unknown apiVersion/kind
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {err}"]
    return []
