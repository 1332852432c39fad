"""The in-proxy filter's Istio bundle (deploy/istio/wasm): WasmPlugins for the egress gateway, in both
deliveries of the module (an OCI image, a file on an image volume), with the rule file in pluginConfig.

Schema validation of every WasmPlugin runs with the other Istio objects (test_manifests.py); this file checks
what the schema cannot: which gateway, which phase, what happens on failure, that pluginConfig carries the
rules the server serves, and that the file delivery's url points into the volume it mounts.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

import checks
import validation as schemas
from conftest import DEPLOY, load_yaml_docs, rendered
from test_manifests import require_binary

VARIANTS = ("istio-wasm", "istio-wasm-file")
RULES_DIR = DEPLOY / "rules"
# The one platform rule file the filter carries, and the files of deploy/rules it may leave out because
# they hold no rule a decision could use (guardrails only bound tenant files, which the filter has none of).
CARRIED_RULE_FILE = "egress.yaml"
DECISION_FREE_KEYS = {"tenants"}
GATEWAY_SELECTOR = {"istio": "egressgateway"}
OCI_PREFIX = "oci://"
FILE_PREFIX = "file://"


def plugins(variant: str) -> list[dict]:
    return checks.find(rendered(variant), "WasmPlugin")


def by_type(variant: str) -> dict[str, dict]:
    return {p["spec"]["type"]: p for p in plugins(variant)}


# ------------------------------------------------------------------------------------------ the plugins

@pytest.mark.parametrize("variant", VARIANTS)
def test_one_http_and_one_network_plugin_decide_in_the_authz_phase(variant):
    assert sorted(by_type(variant)) == ["HTTP", "NETWORK"]
    for plugin in plugins(variant):
        spec = plugin["spec"]
        assert spec["phase"] == "AUTHZ"
        # FAIL_OPEN would let traffic through unchecked when the module cannot be fetched or crashes.
        assert spec["failStrategy"] == "FAIL_CLOSE"
        # A port list would leave every port it misses unchecked, with no error (as for the CUSTOM policy).
        assert "match" not in spec
        assert plugin["metadata"]["namespace"] == checks.GATEWAY_NAMESPACE


@pytest.mark.parametrize("variant", VARIANTS)
def test_plugins_select_the_egress_gateway_like_the_ext_authz_wiring(variant):
    (policy,) = checks.find(rendered("istio-gateway"), "AuthorizationPolicy")
    for plugin in plugins(variant):
        selector = plugin["spec"]["selector"]
        assert selector == {"matchLabels": GATEWAY_SELECTOR}
        assert selector == policy["spec"]["selector"]
        assert checks.selects(selector, checks.GATEWAY_POD_LABELS)
        assert not {"targetRef", "targetRefs"} & set(plugin["spec"]), "Istio allows one of selector/targetRefs"


@pytest.mark.parametrize("variant", VARIANTS)
def test_plugin_config_is_the_rule_file_text(variant):
    rule_text = (RULES_DIR / CARRIED_RULE_FILE).read_text(encoding="utf-8")
    for plugin in plugins(variant):
        config = plugin["spec"]["pluginConfig"]
        # The shape the filter accepts: a JSON object with one string field, the rule file's YAML.
        assert set(config) == {"rules"}
        assert config["rules"] == rule_text
    # The rules ConfigMap was only the copy's source; the server overlays own it.
    assert not checks.find(rendered(variant), "ConfigMap")


def test_every_rule_file_with_decisions_is_carried():
    """The filter takes one rule file; a second platform file in deploy/rules would be enforced by the
    server only, and the two paths would disagree without any error."""
    left_out = []
    for path in sorted(RULES_DIR.iterdir()):
        if path.suffix not in (".yaml", ".yml") or path.name == CARRIED_RULE_FILE:
            continue
        (doc,) = load_yaml_docs(path)
        if not set(doc) <= DECISION_FREE_KEYS:
            left_out.append(path.name)
    assert left_out == [], "carry these rules in deploy/istio/wasm/plugins too, or merge them into " + CARRIED_RULE_FILE


def test_plugin_rules_pass_egress_authz_validate(tmp_path):
    binary = require_binary()
    rules = by_type("istio-wasm")["HTTP"]["spec"]["pluginConfig"]["rules"]
    path = tmp_path / CARRIED_RULE_FILE
    path.write_text(rules, encoding="utf-8")
    proc = subprocess.run([str(binary), "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- delivery

def test_oci_delivery_pulls_the_module_image():
    for plugin in plugins("istio-wasm"):
        spec = plugin["spec"]
        assert spec["url"].startswith(OCI_PREFIX)
        assert spec["url"].rsplit("/", 1)[-1].startswith("egress-authz-wasm:")
        assert spec["imagePullPolicy"] == "IfNotPresent"


def test_file_delivery_reads_the_module_from_the_mounted_image():
    objs = rendered("istio-wasm-file")
    gateway = checks.one(objs, "Deployment")
    pod = gateway["spec"]["template"]
    assert pod["metadata"]["labels"] == checks.GATEWAY_POD_LABELS
    assert gateway["spec"]["selector"]["matchLabels"] == checks.GATEWAY_POD_LABELS
    (proxy,) = pod["spec"]["containers"]
    assert proxy["name"] == "istio-proxy", "Envoy runs in the gateway's istio-proxy container"
    oci_url = by_type("istio-wasm")["HTTP"]["spec"]["url"]
    for plugin in plugins("istio-wasm-file"):
        spec = plugin["spec"]
        assert spec["url"].startswith(FILE_PREFIX)
        assert "imagePullPolicy" not in spec
        module_path = spec["url"][len(FILE_PREFIX):]
        (mount,) = [m for m in proxy["volumeMounts"] if module_path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mount.get("readOnly") is True
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        # The same image the OCI delivery names: one module build, two ways to deliver it.
        assert OCI_PREFIX + volume["image"]["reference"] == oci_url


def test_image_volume_is_outside_the_oldest_kubernetes_schema():
    """Why the file delivery's Deployment is validated from Kubernetes 1.33 on only."""
    gateway = checks.one(rendered("istio-wasm-file"), "Deployment")
    assert schemas.oldest_kubernetes(gateway) == schemas.IMAGE_VOLUME_SINCE
    assert schemas.kubernetes_errors(gateway, schemas.KUBERNETES_VERSIONS[0])
    assert schemas.kubernetes_errors(gateway, schemas.IMAGE_VOLUME_SINCE) == []


# ------------------------------------------------------------------------------- the schema catches it

@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("phase", "AUTHORIZATION"),  # not one of Istio's phases
        ("type", "TCP"),  # the network type is NETWORK
        ("failStrategy", "FAIL_CLOSED"),  # Istio spells it FAIL_CLOSE
        ("imagePullPolicy", "Never"),  # not offered for Wasm modules
        ("pluginConfig", "rules: []"),  # a Struct, not a string
        ("sha256", "not-a-digest"),
        ("pluginConfg", {"rules": ""}),  # unknown field
    ],
)
def test_wasmplugin_schema_catches_mistakes(field, value):
    plugin = copy.deepcopy(by_type("istio-wasm")["HTTP"])
    assert schemas.istio_errors(plugin) == []
    plugin["spec"][field] = value
    assert schemas.istio_errors(plugin), f"spec.{field}: {value!r} must fail"


def test_wasmplugin_schema_requires_a_url():
    plugin = copy.deepcopy(by_type("istio-wasm")["NETWORK"])
    del plugin["spec"]["url"]
    assert schemas.istio_errors(plugin)


def test_wasmplugin_schema_leaves_plugin_config_to_the_filter():
    """pluginConfig is free-form for Istio (any Struct), hence test_plugin_config_is_the_rule_file_text."""
    plugin = copy.deepcopy(by_type("istio-wasm")["HTTP"])
    plugin["spec"]["pluginConfig"] = {"rulez": yaml.safe_dump({"rules": []})}
    assert schemas.istio_errors(plugin) == []
