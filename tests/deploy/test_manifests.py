"""Offline validation of the deploy bundle (deploy/): renders, schemas, hardening and cross-references.

Run: scripts/install.sh deploy-tools && .venv-deploy/bin/pytest -q tests/deploy
Needs kubectl on PATH (for `kubectl kustomize`); reads only files of this repository.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import checks
import validation as schemas
from conftest import (
    DEPLOY, OVERLAYS, PLAIN_MANIFESTS, RENDER_TARGETS, ROOT, kustomize_with_components, load_yaml_docs, rendered,
)

SERVICEMONITOR = DEPLOY / "components" / "servicemonitor"
MESH_SOURCES = ("istio-operator", "istiod-values")
STANDALONE_NAMESPACE = "egress-authz"


def all_shipped_objects():
    """(source id, object) for every object the bundle renders or ships as a plain manifest."""
    for target in RENDER_TARGETS:
        for obj in rendered(target):
            yield target, obj
    for path in PLAIN_MANIFESTS:
        for obj in load_yaml_docs(path):
            yield path.name, obj


def obj_id(item):
    source, obj = item
    return f"{source}:{obj['kind']}/{obj['metadata']['name']}"


SHIPPED = list(all_shipped_objects())
KUBE_OBJECTS = [i for i in SHIPPED if not schemas.is_istio(i[1])]
ISTIO_OBJECTS = [i for i in SHIPPED if schemas.is_istio(i[1])]


# ------------------------------------------------------------------------------------------- rendering

@pytest.mark.parametrize("target", sorted(RENDER_TARGETS))
def test_kustomization_renders(target):
    objs = rendered(target)
    assert objs, f"{target} rendered nothing"
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == expected_namespace(target, obj), obj_id((target, obj))


def expected_namespace(target, obj):
    """The gateway wiring lives with the gateway; the standalone server in its own namespace."""
    gateway_wiring = obj["kind"] == "EnvoyFilter" or (
        obj["kind"] == "AuthorizationPolicy" and obj["spec"].get("action") == "CUSTOM"
    )
    if target == "standalone" and not gateway_wiring:
        return STANDALONE_NAMESPACE
    return checks.GATEWAY_NAMESPACE


def test_standalone_namespace_is_shipped_and_not_the_root():
    objs = rendered("standalone")
    (ns,) = checks.find(objs, "Namespace")
    assert ns["metadata"]["name"] == STANDALONE_NAMESPACE != checks.ROOT_NAMESPACE
    # An injection label would override revision-based installs (istio.io/rev): the pods ask for it instead.
    assert "istio-injection" not in ns["metadata"].get("labels", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_servicemonitor_component(overlay, tmp_path):
    objs = kustomize_with_components(tmp_path, DEPLOY / "overlays" / overlay, [SERVICEMONITOR])
    monitors = checks.find(objs, "ServiceMonitor")
    assert len(monitors) == 1
    # Everything else is the overlay unchanged.
    assert len(objs) == len(rendered(overlay)) + 1


def test_rules_generator_lists_every_rule_file():
    """kustomize has no globs: a rule file added to deploy/rules/ but not to its Kustomization would be lost."""
    rule_files = sorted(p.name for p in (DEPLOY / "rules").iterdir() if p.suffix in (".yaml", ".yml"))
    (kustomization,) = load_yaml_docs(DEPLOY / "rules" / "Kustomization")
    (gen,) = kustomization["configMapGenerator"]
    listed = sorted(Path(f.split("=", 1)[-1]).name for f in gen["files"])
    assert listed == rule_files
    assert gen["options"]["disableNameSuffixHash"] is True, "a hash suffix would restart pods instead of hot reload"
    (cm,) = checks.find(rendered("rules"), "ConfigMap")
    assert sorted(cm["data"]) == rule_files
    # The kustomization itself must not look like a rule file to `--rules deploy/rules`.
    assert not any(p.name.startswith("kustomization.") for p in (DEPLOY / "rules").iterdir())


# --------------------------------------------------------------------------------------------- schemas

# Each object against every Kubernetes version it can run on: an object that needs a newer release (the
# image volume of the Wasm file delivery, see test_istio_wasm.py) is not paired with older schemas, so
# nothing is collected only to be skipped.
KUBE_OBJECT_VERSIONS = [
    pytest.param(item, version, id=f"{obj_id(item)}-{version}")
    for item in KUBE_OBJECTS
    for version in schemas.KUBERNETES_VERSIONS
    if schemas.kubernetes_version_applies(item[1], version)
]


@pytest.mark.parametrize("item,version", KUBE_OBJECT_VERSIONS)
def test_kubernetes_object_validates(item, version):
    source, obj = item
    if (schemas.group_of(obj), obj["kind"]) in schemas.HAND_CHECKED:
        pytest.skip(f"{obj['kind']}: no schema in this repository; see test_servicemonitor_structure")
    assert schemas.kubernetes_errors(obj, version) == []


@pytest.mark.parametrize("item", ISTIO_OBJECTS, ids=obj_id)
def test_istio_object_validates(item):
    assert schemas.istio_errors(item[1]) == []


def test_schema_file_covers_exactly_the_shipped_istio_kinds():
    shipped = {(schemas.group_of(o), o["apiVersion"].split("/")[1], o["kind"]) for _, o in ISTIO_OBJECTS}
    assert shipped == set(schemas.istio_schemas()), "re-run scripts/reduce-istio-crds.py with the kinds in use"
    head = schemas.ISTIO_SCHEMAS.read_text().splitlines()[:6]
    assert any("Origin: istio/istio" in line for line in head), "the reduced schema must name its origin"


def test_schema_validation_catches_mistakes():
    ap = copy.deepcopy(checks.one(rendered("istio-gateway"), "AuthorizationPolicy"))
    ap["spec"]["action"] = "CUSTOMISED"
    assert schemas.istio_errors(ap), "an invalid enum must fail"
    gw = copy.deepcopy(checks.find(rendered("istio-egress"), "Gateway")[0])
    gw["spec"]["servers"][0]["tls"]["mode"] = "ISTIO_MUTUAL_TYPO"
    gw["spec"]["servers"][0]["port"]["numbr"] = 80
    assert len(schemas.istio_errors(gw)) >= 2, "enum and unknown field must both fail"
    ef = copy.deepcopy(checks.one(rendered("istio-gateway"), "EnvoyFilter"))
    ef["spec"]["configPatches"][0]["applyTo"] = "HTTP_FILTERS"
    assert schemas.istio_errors(ef)
    dep = copy.deepcopy(checks.one(rendered("standalone"), "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    assert schemas.kubernetes_errors(dep, schemas.KUBERNETES_VERSIONS[-1]), "unknown field must fail"
    svc = copy.deepcopy(checks.one(rendered("standalone"), "Service"))
    svc["spec"]["ports"][0]["port"] = "nine-thousand"
    assert schemas.kubernetes_errors(svc, schemas.KUBERNETES_VERSIONS[-1])


def test_servicemonitor_structure(tmp_path):
    """ServiceMonitor (Prometheus Operator CRD) has no schema here: hand-written assertions instead."""
    for overlay in OVERLAYS:
        objs = kustomize_with_components(tmp_path, DEPLOY / "overlays" / overlay, [SERVICEMONITOR])
        sm = checks.one(objs, "ServiceMonitor")
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        targets = [
            s for s in checks.find(objs, "Service")
            if checks.selects(sm["spec"]["selector"], s["metadata"].get("labels"))
            and s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
        ]
        assert targets, f"{overlay}: the ServiceMonitor selects no Service"
        container = checks.egress_authz_container(checks.server_deployment(objs))
        admin = checks.served_ports(container)["admin"]
        for ep in sm["spec"]["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert ep["path"] == "/metrics"
            ports = [p for s in targets for p in s["spec"]["ports"] if p.get("name") == ep["port"]]
            assert ports, f"{overlay}: no selected Service has a port named {ep['port']}"
            for p in ports:
                assert checks.resolve_port(container, p.get("targetPort", p["port"])) == admin
            assert checks.duration_seconds(ep["scrapeTimeout"]) <= checks.duration_seconds(ep["interval"])


def test_mesh_config_files_structure(mesh_configs):
    """IstioOperator and Helm values are not Kubernetes objects we can schema-check here: check by hand."""
    (operator,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istio-operator.yaml")
    assert operator["apiVersion"] == "install.istio.io/v1alpha1" and operator["kind"] == "IstioOperator"
    gateways = operator["spec"]["components"]["egressGateways"]
    assert any(g["name"] == "istio-egressgateway" and g["enabled"] for g in gateways)
    (values,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istiod-values.yaml")
    assert set(values) == {"meshConfig"}, "istiod chart values: only meshConfig is set"
    for source, mesh in mesh_configs.items():
        # Registry-only egress cuts off every unregistered host mesh-wide: its own step, not a side effect.
        assert set(mesh) == {"extensionProviders"}, f"{source}: the provider files set only the providers"
        for p in mesh["extensionProviders"]:
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", p["name"]), f"{source}: provider name not a DNS label"
            grpc = p["envoyExtAuthzGrpc"]
            assert set(grpc) <= {"service", "port", "timeout", "failOpen", "statusOnError",
                                 "includeRequestBodyInCheck", "clearRouteCache"}, source
            assert isinstance(grpc["port"], int) and isinstance(grpc["statusOnError"], str), source


def test_registry_only_is_its_own_step():
    (operator,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "registry-only.istio-operator.yaml")
    (values,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "registry-only.istiod-values.yaml")
    assert operator["kind"] == "IstioOperator" and set(operator["spec"]) == {"meshConfig"}
    for mesh in (operator["spec"]["meshConfig"], values["meshConfig"]):
        assert mesh == {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}
    assert set(values) == {"meshConfig"}


DOCS = [ROOT / "README.md", DEPLOY / "README.md", *sorted(DEPLOY.rglob("*.yaml")), *sorted(DEPLOY.rglob("Kustomization"))]


def test_every_helm_command_pins_the_chart_version():
    commands = [c for path in DOCS for c in checks.helm_commands(path.read_text())]
    assert len(commands) >= 4, "the helm commands of the docs were not found"
    for path in DOCS:
        assert checks.check_helm_versions_pinned(path.read_text()) == [], path.name


def test_helm_version_check_catches_an_unpinned_command():
    text = (DEPLOY / "README.md").read_text()
    unpinned = text.replace('--version "$ISTIO_VERSION" ', "", 1)
    assert unpinned != text
    assert len(checks.check_helm_versions_pinned(unpinned)) == 1
    # Continuation lines and comments count: the version may sit on the next line, or be missing there.
    assert checks.check_helm_versions_pinned("#   helm upgrade x istio/istiod \\\n#     --version 1.28.0 -f v.yaml") == []
    assert checks.check_helm_versions_pinned("#   helm upgrade x istio/istiod \\\n#     -f v.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_configmap_fits_the_object_limit(overlay):
    assert checks.check_rules_configmap_size(rendered(overlay)) == []


def test_size_check_catches_rules_near_the_limit():
    objs = mutated("standalone")
    cm = checks.one(objs, "ConfigMap", "egress-authz-rules")
    cm["data"]["big.yaml"] = "#" * (checks.RULES_BUDGET_BYTES + 1)
    assert checks.check_rules_configmap_size(objs)


# -------------------------------------------------------------------------------------------- hardening

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_hardening(overlay):
    dep = checks.server_deployment(rendered(overlay))
    container = checks.egress_authz_container(dep)
    assert checks.check_hardening(container, dep["spec"]["template"]["spec"]) == []


def test_hardening_check_catches_regressions():
    dep = copy.deepcopy(checks.server_deployment(rendered("standalone")))
    pod = dep["spec"]["template"]["spec"]
    c = checks.egress_authz_container(dep)
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    del c["resources"]["limits"]
    c["image"] = "egress-authz:latest"
    assert len(checks.check_hardening(c, pod)) == 5


def test_standalone_availability():
    objs = rendered("standalone")
    dep = checks.one(objs, "Deployment", "egress-authz")
    spec = dep["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {t["topologyKey"] for t in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    hpa = checks.one(objs, "HorizontalPodAutoscaler")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = checks.one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB must allow draining a node"
    assert checks.check_hpa(objs) == []
    # The sidecar carries the checks in; it must not drain away before the server has finished.
    container = checks.egress_authz_container(dep)
    drain = yaml.safe_load(spec["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    shutdown = checks.duration_seconds(checks.flag(container, "shutdown-delay")) + checks.duration_seconds(
        checks.flag(container, "shutdown-grace"))
    assert checks.duration_seconds(drain["terminationDrainDuration"]) >= shutdown
    labels = spec["template"]["metadata"]["labels"]
    assert labels.get("sidecar.istio.io/inject") == "true", "the gateway reaches the server over mesh mTLS"
    sa = checks.one(objs, "ServiceAccount")
    assert spec["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scraping(overlay):
    objs = rendered(overlay)
    dep = checks.server_deployment(objs)
    admin = checks.served_ports(checks.egress_authz_container(dep))["admin"]
    if overlay == "standalone":
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert int(ann["prometheus.io/port"]) == admin
        assert ann["prometheus.io/path"] == "/metrics"
    else:
        # The gateway's own prometheus.io annotations belong to Istio; the patch must not override them.
        assert "annotations" not in dep["spec"]["template"]["metadata"]
        svc = checks.one(objs, "Service", "egress-authz-admin")
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == [admin]


# -------------------------------------------------------------------------------------- cross-references

@pytest.mark.parametrize("source", MESH_SOURCES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_authorizationpolicy_provider_exists_in_mesh_config(overlay, source, mesh_configs):
    assert checks.check_provider_in_mesh(rendered(overlay), mesh_configs[source]) == []


def test_mesh_config_sources_agree(mesh_configs):
    assert mesh_configs["istio-operator"]["extensionProviders"] == mesh_configs["istiod-values"]["extensionProviders"]


@pytest.mark.parametrize("source", MESH_SOURCES)
def test_providers_fail_closed_with_short_timeout(source, mesh_configs):
    assert checks.check_provider_settings(mesh_configs[source]) == []
    for p in mesh_configs[source]["extensionProviders"]:
        assert p["envoyExtAuthzGrpc"]["timeout"] == "0.5s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_provider_reaches_the_server(overlay, mesh_configs):
    assert checks.check_provider_reaches_server(rendered(overlay), mesh_configs["istio-operator"]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_pod_labels(overlay):
    assert checks.check_selectors(rendered(overlay)) == []


def test_sidecar_patch_uses_the_gateway_labels():
    dep = checks.server_deployment(rendered("sidecar"))
    assert dep["metadata"]["name"] == "istio-egressgateway"
    assert dep["spec"]["selector"]["matchLabels"] == checks.GATEWAY_POD_LABELS
    assert dep["spec"]["template"]["metadata"]["labels"] == checks.GATEWAY_POD_LABELS
    # A patch: the container, its volume and a grace period long enough for its shutdown; server-side apply
    # touches nothing else.
    pod = dep["spec"]["template"]["spec"]
    assert set(pod) == {"containers", "volumes", "terminationGracePeriodSeconds"}
    assert [c["name"] for c in pod["containers"]] == ["egress-authz"]
    assert set(dep["spec"]) == {"selector", "template"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_outlasts_endpoint_removal(overlay):
    assert checks.check_shutdown_timings(rendered(overlay)) == []


def test_catches_shutdown_timings_that_cut_checks():
    objs = mutated("sidecar")
    c = checks.egress_authz_container(checks.server_deployment(objs))
    c["args"] = [a for a in c["args"] if not a.startswith("--shutdown-delay")]
    assert any("no --shutdown-delay" in p for p in checks.check_shutdown_timings(objs))
    objs = mutated("standalone")
    c = checks.egress_authz_container(checks.server_deployment(objs))
    c["args"] = [a.replace("--shutdown-delay=5s", "--shutdown-delay=2s") for a in c["args"]]
    assert any("under" in p for p in checks.check_shutdown_timings(objs))
    for overlay, tgp in (("standalone", 15), ("sidecar", None)):
        objs = mutated(overlay)
        pod = checks.server_deployment(objs)["spec"]["template"]["spec"]
        c = checks.egress_authz_container(checks.server_deployment(objs))
        c["args"] = [a.replace("--shutdown-grace=10s", "--shutdown-grace=30s") for a in c["args"]]
        if tgp is None:
            del pod["terminationGracePeriodSeconds"]  # Kubernetes' default 30 s is not above 5 + 30
        else:
            pod["terminationGracePeriodSeconds"] = tgp
        assert any("terminationGracePeriodSeconds" in p for p in checks.check_shutdown_timings(objs)), overlay


def test_catches_hpa_on_pod_cpu_or_fixed_replicas():
    objs = mutated("standalone")
    hpa = checks.one(objs, "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"] = [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    checks.server_deployment(objs)["spec"]["replicas"] = 2
    problems = checks.check_hpa(objs)
    assert any("ContainerResource" in p for p in problems) and any("sets replicas" in p for p in problems)
    objs = mutated("standalone")
    checks.one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["containerResource"]["container"] = \
        "istio-proxy"
    assert checks.check_hpa(objs)
    objs = mutated("standalone")
    del checks.egress_authz_container(checks.server_deployment(objs))["resources"]["requests"]["cpu"]
    assert any("CPU request" in p for p in checks.check_hpa(objs))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_peer_authentication_is_one_istio_applies(overlay):
    assert checks.check_peer_authentication(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_namespace_may_call_the_grpc_port(overlay):
    assert checks.check_callers_policy(rendered(overlay)) == []


def test_catches_peer_authentication_istio_ignores():
    # Back in the root namespace with a selector (the old layout): istiod ignores it.
    objs = mutated("standalone")
    for o in objs:
        if o["metadata"].get("namespace") == STANDALONE_NAMESPACE:
            o["metadata"]["namespace"] = checks.ROOT_NAMESPACE
    problems = checks.check_peer_authentication(objs)
    assert any("root namespace" in p and "selector" in p for p in problems)
    assert any("runs in the root namespace" in p for p in problems)
    # A PeerAuthentication for the gateway: never applied to its listeners.
    objs = mutated("standalone")
    pa = copy.deepcopy(checks.one(objs, "PeerAuthentication"))
    pa["metadata"].update(name="egressgateway-strict-mtls", namespace=checks.GATEWAY_NAMESPACE)
    pa["spec"] = {"selector": {"matchLabels": {"istio": "egressgateway"}}, "mtls": {"mode": "STRICT"}}
    assert any("targets the gateway" in p for p in checks.check_peer_authentication(objs + [pa]))
    assert any("targets the gateway" in p for p in checks.check_peer_authentication(mutated("sidecar") + [pa]))
    # The gRPC port left PERMISSIVE, or no policy at all.
    objs = mutated("standalone")
    checks.one(objs, "PeerAuthentication")["spec"]["portLevelMtls"]["9000"] = {"mode": "PERMISSIVE"}
    assert any("not STRICT" in p for p in checks.check_peer_authentication(objs))
    objs = [o for o in mutated("standalone") if o["kind"] != "PeerAuthentication"]
    assert any("no STRICT" in p for p in checks.check_peer_authentication(objs))


def test_catches_callers_policy_that_lets_anyone_in(mesh_configs):
    objs = mutated("standalone")
    pol = checks.one(objs, "AuthorizationPolicy", "egress-authz-callers")
    pol["spec"]["rules"][0]["from"][0]["source"]["namespaces"] = ["istio-system", "default"]
    assert checks.check_callers_policy(objs)
    objs = mutated("standalone")
    checks.one(objs, "AuthorizationPolicy", "egress-authz-callers")["spec"]["rules"][1]["to"] = []
    assert checks.check_callers_policy(objs), "a rule without ports also opens the gRPC port"
    objs = [o for o in mutated("standalone") if o["metadata"]["name"] != "egress-authz-callers"]
    assert checks.check_callers_policy(objs)
    # The provider host's namespace prefix must name the Service's namespace.
    mesh = copy.deepcopy(mesh_configs["istio-operator"])
    mesh["extensionProviders"][0]["envoyExtAuthzGrpc"]["service"] = "istio-system/egress-authz.egress-authz.svc.cluster.local"
    assert checks.check_provider_reaches_server(rendered("standalone"), mesh)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_served_ports(overlay):
    assert checks.check_probes(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_configmap_mounted_as_directory(overlay):
    assert checks.check_rules_mount(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_service_port_named_grpc(overlay):
    assert checks.check_grpc_port_named(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_envoyfilter_targets_istio_filter_names(overlay):
    assert checks.check_envoyfilter(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_policy_checks_every_gateway_port(overlay):
    assert checks.check_custom_policy_ports(rendered(overlay)) == []


def test_server_flags_are_valid_serve_flags_and_grace_fits_the_pod():
    for overlay in OVERLAYS:
        c = checks.egress_authz_container(checks.server_deployment(rendered(overlay)))
        assert c["args"][0] == "serve"
        assert checks.flag(c, "log-format") in ("json", "text")
        assert checks.flag(c, "decision-log") in ("all", "deny", "none")
        assert re.fullmatch(r"\d+s", checks.flag(c, "shutdown-grace"))
        grace = int(checks.flag(c, "shutdown-grace")[:-1])
        dep = checks.server_deployment(rendered(overlay))
        assert grace < dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)


# ----------------------------------------------------------------- negative tests: the checks catch breakage

def mutated(overlay):
    return copy.deepcopy(rendered(overlay))


def test_catches_grpc_port_without_name(mesh_configs):
    objs = mutated("standalone")
    port = checks.one(objs, "Service")["spec"]["ports"][0]
    port["name"] = "tcp-authz"
    del port["appProtocol"]
    assert checks.check_grpc_port_named(objs)
    assert checks.check_provider_reaches_server(objs, mesh_configs["istio-operator"])


def test_catches_provider_port_or_name_mismatch(mesh_configs):
    objs = mutated("standalone")
    checks.one(objs, "Service")["spec"]["ports"][0]["port"] = 9001
    assert checks.check_provider_reaches_server(objs, mesh_configs["istio-operator"])
    objs = mutated("sidecar")
    checks.one(objs, "AuthorizationPolicy", "egress-authz")["spec"]["provider"]["name"] = "egress-authz-typo"
    assert checks.check_provider_in_mesh(objs, mesh_configs["istiod-values"])
    objs = mutated("sidecar")
    checks.one(objs, "ServiceEntry")["spec"]["endpoints"][0]["address"] = "10.0.0.1"
    assert checks.check_provider_reaches_server(objs, mesh_configs["istio-operator"])


def test_catches_subpath_mount_and_wrong_rules_path():
    objs = mutated("standalone")
    c = checks.egress_authz_container(checks.server_deployment(objs))
    c["volumeMounts"][0]["subPath"] = "egress.yaml"
    assert any("subPath" in p for p in checks.check_rules_mount(objs))
    objs = mutated("sidecar")
    c = checks.egress_authz_container(checks.server_deployment(objs))
    c["args"] = [a if not a.startswith("--rules=") else "--rules=/rules" for a in c["args"]]
    assert checks.check_rules_mount(objs)


def test_catches_probe_on_unserved_port_and_selector_drift():
    objs = mutated("standalone")
    c = checks.egress_authz_container(checks.server_deployment(objs))
    c["readinessProbe"]["httpGet"]["port"] = "http-metrics"
    c["livenessProbe"]["httpGet"]["port"] = 9000
    assert len(checks.check_probes(objs)) == 2
    objs = mutated("standalone")
    checks.one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app"] = "egress-authz-v2"
    checks.one(objs, "Service")["spec"]["selector"] = {"app": "egressauthz"}
    assert len(checks.check_selectors(objs)) == 2


def test_catches_envoyfilter_and_policy_drift():
    objs = mutated("standalone")
    ef = checks.one(objs, "EnvoyFilter")
    ef["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] = \
        "envoy.ext_authz"
    ef["spec"]["configPatches"][1]["patch"]["value"]["typed_config"]["include_tls_session"] = False
    assert len(checks.check_envoyfilter(objs)) == 2



def test_catches_custom_policy_that_skips_some_traffic():
    """Each way the CUSTOM policy can leave gateway traffic unchecked is reported."""
    def problems_after(change):
        objs = mutated("standalone")
        change(checks.one(objs, "AuthorizationPolicy", "egress-authz")["spec"])
        return checks.check_custom_policy_ports(objs)

    # The old istioctl-only scope: Helm-chart gateways (80/443) never call egress-authz.
    old = problems_after(lambda s: s.update(rules=[{"to": [{"operation": {"ports": ["8080", "8443"]}}]}]))
    assert any("scoped by ports" in p for p in old)
    assert any("port 80 (helm" in p for p in old) and any("port 443 (helm" in p for p in old)
    assert problems_after(lambda s: s.update(rules=[{"to": [{"operation": {"notPorts": ["15443"]}}]}]))
    assert any("no rules" in p for p in problems_after(lambda s: s.pop("rules")))
    assert problems_after(lambda s: s.update(rules=[{"to": [{"operation": {"methods": ["GET"]}}]}]))
    assert problems_after(lambda s: s.update(rules=[{"from": [{"source": {"namespaces": ["default"]}}]}]))


def test_catches_fail_open_and_default_timeout(mesh_configs):
    mesh = copy.deepcopy(mesh_configs["istio-operator"])
    mesh["extensionProviders"][0]["envoyExtAuthzGrpc"]["failOpen"] = True
    del mesh["extensionProviders"][1]["envoyExtAuthzGrpc"]["timeout"]
    assert len(checks.check_provider_settings(mesh)) == 2


# --------------------------------------------------------------------------------- rules pass validation

def egress_authz_bin() -> Path | None:
    path = Path(os.environ.get("EGRESS_AUTHZ_BIN", "target/debug/egress-authz"))
    path = path if path.is_absolute() else ROOT / path
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_binary() -> Path:
    binary = egress_authz_bin()
    if binary is None:
        msg = "egress-authz binary not found (build it, or set EGRESS_AUTHZ_BIN)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mounted_rules_pass_egress_authz_validate(overlay, tmp_path):
    binary = require_binary()
    objs = rendered(overlay)
    c = checks.egress_authz_container(checks.server_deployment(objs))
    vol_name = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == checks.flag(c, "rules"))
    pod = checks.server_deployment(objs)["spec"]["template"]["spec"]
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == vol_name)
    cm = checks.one(objs, "ConfigMap", cm_name)
    # Lay the files out as the kubelet does (a directory of keys) and validate the directory, as the pod will.
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for key, text in cm["data"].items():
        (rules_dir / key).write_text(text)
    proc = subprocess.run([str(binary), "validate", str(rules_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(str(p) for p in rules_dir.iterdir())
    proc = subprocess.run([str(binary), "validate", *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_step_rejects_a_broken_rule_file(tmp_path):
    """The validate step above would notice: a rule file with an unknown field fails."""
    binary = require_binary()
    (cm,) = checks.find(rendered("rules"), "ConfigMap")
    key, text = sorted(cm["data"].items())[0]
    (tmp_path / key).write_text(text.replace("defaultAction:", "defaultActoin:", 1))
    proc = subprocess.run([str(binary), "validate", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
