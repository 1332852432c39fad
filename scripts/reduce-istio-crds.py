#!/usr/bin/env python3
"""Reduce Istio's generated CRD file to the validation structure of the kinds deploy/ uses.

Reads Istio's `crd-all.gen.yaml` (istio/istio, manifests/charts/base/files/crd-all.gen.yaml) and writes a
multi-document YAML with one CustomResourceDefinition per kind we ship, keeping for every served version
only what a validator needs: types, formats, enums, required lists, properties/items/additionalProperties,
oneOf/anyOf/allOf/not, bounds and patterns, and the Kubernetes x-kubernetes-* structure markers.
Descriptions, CEL rules (x-kubernetes-validations), printer columns, status schemas and metadata other
than names are dropped, so the copy stays small and readable in a diff.

    python3 scripts/reduce-istio-crds.py SOURCE [-o tests/deploy/schemas/istio-crds.reduced.yaml]

Needs PyYAML. Re-run it when Istio's CRDs are updated, and record the source commit with --source-note.

To add a kind without re-fetching the whole file (SOURCE may then be an excerpt holding only that CRD), merge
into the existing reduced file: its CRDs are kept, the ones SOURCE holds replace them, and SOURCE's origin is
recorded on its own header line naming the kinds it supplied:

    python3 scripts/reduce-istio-crds.py SOURCE --merge tests/deploy/schemas/istio-crds.reduced.yaml \
        -o tests/deploy/schemas/istio-crds.reduced.yaml --source-note "istio/istio @ COMMIT, PATH"
"""

from __future__ import annotations

import argparse
import re
import sys

import yaml

# Kinds and API versions shipped under deploy/ (keep in step with tests/deploy/test_manifests.py).
KINDS = {
    ("security.istio.io", "AuthorizationPolicy"): ["v1"],
    ("security.istio.io", "PeerAuthentication"): ["v1"],
    ("networking.istio.io", "EnvoyFilter"): ["v1alpha3"],
    ("networking.istio.io", "ServiceEntry"): ["v1"],
    ("networking.istio.io", "Gateway"): ["v1"],
    ("networking.istio.io", "DestinationRule"): ["v1"],
    ("networking.istio.io", "VirtualService"): ["v1"],
    ("extensions.istio.io", "WasmPlugin"): ["v1alpha1"],
}

KEEP = {
    "type", "format", "enum", "required", "properties", "items", "additionalProperties",
    "oneOf", "anyOf", "allOf", "not", "nullable",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
    "pattern", "uniqueItems", "default",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}
# Keys whose value is a map of name -> schema, or a list of schemas, or one schema.
SCHEMA_MAPS = {"properties"}
SCHEMA_LISTS = {"oneOf", "anyOf", "allOf"}
SCHEMA_ONE = {"items", "not", "additionalProperties"}


def reduce_schema(node):
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key not in KEEP:
            continue
        if key in SCHEMA_MAPS:
            out[key] = {name: reduce_schema(sub) for name, sub in value.items()}
        elif key in SCHEMA_LISTS:
            out[key] = [reduce_schema(sub) for sub in value]
        elif key in SCHEMA_ONE and isinstance(value, dict):
            out[key] = reduce_schema(value)
        else:
            out[key] = value
    return out


def reduce_crd(doc, wanted):
    spec = doc["spec"]
    versions = []
    for version in spec["versions"]:
        if not version.get("served", False) or version["name"] not in wanted:
            continue
        schema = version["schema"]["openAPIV3Schema"]
        props = dict(schema.get("properties", {}))
        props.pop("status", None)  # written by Istio, never by us
        schema = dict(schema, properties=props)
        versions.append({"name": version["name"], "schema": {"openAPIV3Schema": reduce_schema(schema)}})
    return {
        "apiVersion": doc["apiVersion"],
        "kind": "CustomResourceDefinition",
        "metadata": {"name": doc["metadata"]["name"]},
        "spec": {
            "group": spec["group"],
            "names": {"kind": spec["names"]["kind"]},
            "scope": spec["scope"],
            "versions": versions,
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


ORIGIN_PREFIX = "# Origin"


def kind_key(doc):
    return (doc["spec"]["group"], doc["spec"]["names"]["kind"])


def read_merge_base(path):
    """(origin header lines, reduced CRDs) of an earlier output of this script."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    origins = [line for line in text.splitlines() if line.startswith(ORIGIN_PREFIX)]
    return origins, [d for d in yaml.safe_load_all(text) if d]


def origin_line(note, kinds=None):
    """`# Origin: NOTE`, or `# Origin of KIND, ...: NOTE` when a merge supplied only some kinds."""
    if kinds is None:
        return f"{ORIGIN_PREFIX}: {note}"
    return f"{ORIGIN_PREFIX} of {', '.join(sorted(kinds))}: {note}"


def supersedes(line, kinds):
    """An older per-kind origin line whose kinds are all replaced now says nothing true any more."""
    match = re.match(rf"{ORIGIN_PREFIX} of ([^:]+):", line)
    return bool(match) and {k.strip() for k in match.group(1).split(",")} <= set(kinds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="Istio's crd-all.gen.yaml")
    parser.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    parser.add_argument(
        "--source-note",
        default="istio/istio manifests/charts/base/files/crd-all.gen.yaml",
        help="where SOURCE came from (repository, path, commit), written into the header",
    )
    parser.add_argument(
        "--merge",
        metavar="REDUCED",
        help="an earlier output of this script: keep its CRDs and origins, replace the kinds SOURCE holds",
    )
    args = parser.parse_args(argv)

    with open(args.source, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    reduced = []
    for doc in docs:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        key = kind_key(doc)
        if key in KINDS:
            reduced.append(reduce_crd(doc, KINDS[key]))
    origins = [origin_line(args.source_note)]
    if args.merge:
        base_origins, base = read_merge_base(args.merge)
        supplied = {kind_key(d) for d in reduced}
        supplied_kinds = [kind for _, kind in supplied]
        reduced += [d for d in base if kind_key(d) not in supplied and kind_key(d) in KINDS]
        if supplied != set(KINDS):  # a full SOURCE stands alone: its one origin line says it all
            origins = [line for line in base_origins if not supersedes(line, supplied_kinds)]
            origins.append(origin_line(args.source_note, supplied_kinds))
    found = {
        (d["spec"]["group"], d["spec"]["names"]["kind"], v["name"]) for d in reduced for v in d["spec"]["versions"]
    }
    missing = {(g, k, v) for (g, k), versions in KINDS.items() for v in versions} - found
    if missing:
        print(f"error: kinds not in {args.source}: {sorted(missing)}", file=sys.stderr)
        return 1
    reduced.sort(key=kind_key)

    header = (
        "# GENERATED by scripts/reduce-istio-crds.py; do not edit by hand.\n"
        + "".join(f"{line}\n" for line in origins)
        + "# (Istio's generated CustomResourceDefinitions, Apache-2.0). Reduced to the kinds and API versions\n"
        "# deploy/ ships (served versions only):\n"
        "# descriptions, CEL rules (x-kubernetes-validations), printer columns and status schemas removed;\n"
        "# types, enums, required fields and structure kept. Used offline by tests/deploy.\n"
    )
    body = yaml.dump_all(reduced, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    text = header + body
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
