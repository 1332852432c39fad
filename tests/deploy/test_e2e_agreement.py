"""The end-to-end suite's Envoy bootstraps (tests/e2e/envoy/) and these manifests describe the same wiring.

The bootstraps stand in for what istiod generates from deploy/istio/ at the egress gateway, so the parts
that decide behaviour must agree: the ext_authz filter names (which the EnvoyFilter patches), fail-closed
(failure_mode_allow false = failOpen false), the check timeout, an HTTP/2 cluster for the gRPC provider and
its port. Known differences (loopback ephemeral ports, the omitted shadow RBAC filter) are documented in
deploy/README.md ("Manifests and the end-to-end bootstraps").
"""

from __future__ import annotations

import re

import pytest
import yaml

import checks
from conftest import ROOT

BOOTSTRAP_DIR = ROOT / "tests" / "e2e" / "envoy"
# The gateways that call egress-authz over ext_authz. The *-wasm.yaml ones run the proxy-wasm filter
# instead and have no provider to agree with; they stand in for the WasmPlugin resources.
BOOTSTRAPS = (
    sorted(p for p in BOOTSTRAP_DIR.glob("*.yaml") if not p.name.endswith("-wasm.yaml"))
    if BOOTSTRAP_DIR.is_dir()
    else []
)

pytestmark = pytest.mark.skipif(not BOOTSTRAPS, reason="no end-to-end Envoy bootstraps in tests/e2e/envoy")



def load_bootstrap(path):
    return load_bootstrap_text(path.read_text())


def load_bootstrap_text(text):
    """Parse a bootstrap template: {{NAME}} placeholders become a port number or a path."""
    text = re.sub(r"\{\{(\w*PORT\w*)\}\}", "10000", text)
    text = re.sub(r"\{\{(\w+)\}\}", r"/placeholder/\1", text)
    return yaml.safe_load(text)


def ext_authz_filters(bootstrap):
    """(filter name, config, enclosing network filter name) for every ext_authz filter."""
    out = []
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if flt["name"] == checks.NETWORK_EXT_AUTHZ:
                    out.append((flt["name"], flt["typed_config"], None))
                for http in flt.get("typed_config", {}).get("http_filters", []):
                    if "ext_authz" in http["name"]:
                        out.append((http["name"], http["typed_config"], flt["name"]))
    return out


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=lambda p: p.name)
def test_bootstrap_matches_manifests(path, mesh_configs):
    assert_agrees(path, load_bootstrap(path), mesh_configs)


def test_agreement_catches_another_provider_host(mesh_configs):
    path = BOOTSTRAP_DIR / "tcp-istio.yaml"
    text = path.read_text().replace("egress-authz.egress-authz.svc", "egress-authz.default.svc")
    with pytest.raises(AssertionError, match="no provider's service host"):
        assert_agrees(path, load_bootstrap_text(text), mesh_configs)
    # The name from before egress-authz had a namespace of its own is rejected too.
    text = path.read_text().replace("egress-authz.egress-authz.svc", "egress-authz.istio-system.svc")
    with pytest.raises(AssertionError, match="no provider's service host"):
        assert_agrees(path, load_bootstrap_text(text), mesh_configs)
    text = path.read_text().replace("authority: egress-authz.egress-authz.svc.cluster.local", "authority: x")
    with pytest.raises(AssertionError, match="authority"):
        assert_agrees(path, load_bootstrap_text(text), mesh_configs)


def assert_agrees(path, bootstrap, mesh_configs):
    filters = ext_authz_filters(bootstrap)
    assert filters, f"{path.name}: no ext_authz filter"
    providers = [p["envoyExtAuthzGrpc"] for p in mesh_configs["istio-operator"]["extensionProviders"]]
    timeouts = {p["timeout"] for p in providers}
    hosts = {p["service"].split("/", 1)[-1] for p in providers}
    ports = {int(p["port"]) for p in providers}
    assert not any(p["failOpen"] for p in providers)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    for name, cfg, parent in filters:
        # Names: the ones the EnvoyFilter patches.
        if parent is None:
            assert name == checks.NETWORK_EXT_AUTHZ
            assert cfg["@type"] == checks.NETWORK_EXT_AUTHZ_TYPE
        else:
            assert (parent, name) == (checks.HCM, checks.HTTP_EXT_AUTHZ)
            assert cfg["@type"] == checks.HTTP_EXT_AUTHZ_TYPE
        # Failure mode and timeout: the provider's.
        assert cfg.get("failure_mode_allow", False) is False, f"{path.name}: fails open, the mesh fails closed"
        assert cfg["grpc_service"]["timeout"] in timeouts, f"{path.name}: timeout differs from the provider"
        # HTTP errors answer with the provider's statusOnError (TCP has none: the connection closes).
        if parent is not None:
            codes = {"403": "Forbidden", "503": "ServiceUnavailable"}
            wanted = {codes[p["statusOnError"]] for p in providers}
            assert cfg.get("status_on_error", {}).get("code", "Forbidden") in wanted, f"{path.name}: status_on_error"
        if "include_tls_session" in cfg:
            assert cfg["include_tls_session"] is True  # what the EnvoyFilter merges in
        # The provider cluster: Istio's outbound|PORT||HOST naming, HTTP/2, the provider's port.
        cluster_name = cfg["grpc_service"]["envoy_grpc"]["cluster_name"]
        m = re.fullmatch(r"outbound\|(\d+)\|\|(.+)", cluster_name)
        assert m, f"{path.name}: cluster {cluster_name} is not named like Istio's"
        assert int(m.group(1)) in ports
        assert m.group(2) in hosts, f"{path.name}: cluster host {m.group(2)} is no provider's service host"
        # Istio sets :authority to the provider host; without it Envoy sends the cluster name, which h2 rejects.
        assert cfg["grpc_service"]["envoy_grpc"].get("authority") == m.group(2), f"{path.name}: authority"
        cluster = clusters[cluster_name]
        opts = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in opts["explicit_http_config"], "gRPC needs an HTTP/2 cluster"
