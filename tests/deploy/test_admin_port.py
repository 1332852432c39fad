"""Who may reach the admin port (9090: /metrics, /rules and the traffic inventory /traffic).

The rendered NetworkPolicies of each overlay go through a NetworkPolicy evaluator (network_policy.py):
only the monitoring namespace and labelled operator namespaces reach 9090, every other port keeps its
callers. The evaluator itself is tested here first, since the verdicts rest on it.
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
from conftest import DEPLOY, OVERLAYS, kustomize, rendered
from network_policy import (
    Destination, Source, admitted_ports, closed_ports, may_connect, pod_source, selector_matches,
)
from test_manifests import require_binary

README = DEPLOY / "README.md"


# ------------------------------------------------------------------------------------------- evaluator

@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ({}, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    # Both parts must hold.
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_label_selector_semantics(selector, labels, expected):
    assert selector_matches(selector, labels) is expected


def mk_policy(ingress, pod_selector=None, namespace="srv", policy_types=("Ingress",)):
    spec = {"podSelector": pod_selector or {}, "ingress": ingress}
    if policy_types is not None:
        spec["policyTypes"] = list(policy_types)
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


SERVER = Destination("srv", {"app": "server"}, {"http-admin": 9090})
NEIGHBOUR = pod_source("neighbour", "10.0.0.2", "srv", pod_labels={"app": "client"})
OPS = pod_source("ops", "10.0.1.2", "ops", {"team": "ops"}, {"app": "client"})
APP = pod_source("app", "10.0.2.2", "app", pod_labels={"app": "web"})
OUTSIDE = Source("outside", "192.0.2.1")


def test_a_pod_no_ingress_policy_selects_accepts_everything():
    egress_only = mk_policy([], policy_types=("Egress",))
    other_pods = mk_policy([], pod_selector={"matchLabels": {"app": "other"}})
    other_namespace = mk_policy([], namespace="elsewhere")
    for policies in ([], [egress_only], [other_pods], [other_namespace]):
        assert may_connect(policies, SERVER, APP, "TCP", 12345)
    # Without policyTypes a policy still isolates for ingress: it has no rules, so nothing gets in.
    assert not may_connect([mk_policy([], policy_types=None)], SERVER, APP, "TCP", 12345)


def test_selected_pods_allow_the_union_of_rules():
    only_ops = mk_policy([{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                           "ports": [{"port": 9090}]}])
    only_neighbours = mk_policy([{"from": [{"podSelector": {}}], "ports": [{"port": 8000}]}])
    policies = [only_ops, only_neighbours]
    assert may_connect(policies, SERVER, OPS, "TCP", 9090)
    assert not may_connect(policies, SERVER, OPS, "TCP", 8000), "a podSelector alone means the policy's namespace"
    assert may_connect(policies, SERVER, NEIGHBOUR, "TCP", 8000)
    assert not may_connect(policies, SERVER, NEIGHBOUR, "TCP", 9090)
    assert not may_connect(policies, SERVER, APP, "TCP", 9090)
    assert not may_connect(policies, SERVER, OPS, "UDP", 9090), "protocol defaults to TCP"


def test_peer_selectors_and_within_one_peer_or_across_peers():
    both = {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "admin"}}}
    anded = [mk_policy([{"from": [both]}])]
    assert not may_connect(anded, SERVER, OPS, "TCP", 9090)
    assert may_connect(anded, SERVER, pod_source("ops admin", "10.0.1.3", "ops", {"team": "ops"},
                                                 {"app": "admin"}), "TCP", 9090)
    ored = [mk_policy([{"from": [{"namespaceSelector": both["namespaceSelector"]},
                                 {"podSelector": both["podSelector"]}]}])]
    assert may_connect(ored, SERVER, OPS, "TCP", 9090)
    assert may_connect(ored, SERVER, pod_source("admin", "10.0.0.3", "srv", pod_labels={"app": "admin"}),
                       "TCP", 9090)
    assert not may_connect(ored, SERVER, APP, "TCP", 9090)
    assert not may_connect(ored, SERVER, OUTSIDE, "TCP", 9090), "only an ipBlock admits an outside address"


def test_ip_blocks_match_the_source_address_minus_exceptions():
    policies = [mk_policy([{"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.2.0/24"]}}]}])]
    assert may_connect(policies, SERVER, OUTSIDE, "TCP", 9090)
    assert may_connect(policies, SERVER, OPS, "TCP", 9090), "pod addresses are addresses too"
    assert not may_connect(policies, SERVER, APP, "TCP", 9090)


def test_ports_ranges_named_ports_and_whole_protocols():
    policies = [mk_policy([{"ports": [{"port": 1, "endPort": 99}, {"protocol": "TCP", "port": "http-admin"},
                                      {"protocol": "TCP", "port": "no-such-port"}, {"protocol": "UDP"}]}])]
    assert admitted_ports(policies, SERVER, APP, "TCP") == [(1, 99), (9090, 9090)]
    assert closed_ports(policies, SERVER, APP, "TCP") == [(100, 9089), (9091, 65535)]
    assert closed_ports(policies, SERVER, APP, "UDP") == []
    assert admitted_ports(policies, SERVER, APP, "SCTP") == []
    # A rule without ports admits every port of every protocol.
    assert closed_ports([mk_policy([{"from": [{"podSelector": {}}]}])], SERVER, NEIGHBOUR, "SCTP") == []


# ------------------------------------------------------------------------------------------ the bundle

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_admin_port_reaches_only_monitoring_and_operators(overlay):
    assert checks.check_admin_port_fence(rendered(overlay)) == []


def mutated(overlay):
    return copy.deepcopy(rendered(overlay))


def admin_rule(policy):
    (rule,) = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 9090} in r.get("ports", [])]
    return rule


def test_catches_admin_port_opened_to_more_callers():
    def problems_after(overlay, change):
        objs = mutated(overlay)
        change(checks.one(objs, "NetworkPolicy"))
        return checks.check_admin_port_fence(objs)

    # 9090 back in a rule without `from`, as before the fence.
    reopened = problems_after("standalone", lambda p: admin_rule(p).pop("from"))
    assert any("open to an application pod" in p for p in reopened)
    assert any("open to an address outside the cluster" in p for p in reopened)
    # Every address: pods included.
    anywhere = problems_after("sidecar", lambda p: admin_rule(p)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}))
    assert any("open to an application pod" in p for p in anywhere)
    # The operator label read from pods of any namespace instead of from the namespace.
    on_pods = problems_after("standalone", lambda p: admin_rule(p)["from"][1].update(
        podSelector=admin_rule(p)["from"][1]["namespaceSelector"], namespaceSelector={}))
    assert any("closed to a pod of a labelled operator namespace" in p for p in on_pods)
    assert any("open to a pod carrying the admin-access label itself" in p for p in on_pods)
    # Any value of the label instead of "true".
    any_value = problems_after("sidecar", lambda p: admin_rule(p)["from"][1].update(namespaceSelector={
        "matchExpressions": [{"key": checks.ADMIN_ACCESS_LABEL, "operator": "Exists"}]}))
    assert any("whose admin-access label is not true" in p for p in any_value)
    # The sidecar policy gone, or selecting other pods: the gateway pods are open again.
    without = [o for o in mutated("sidecar") if o["kind"] != "NetworkPolicy"]
    assert any("open to an application pod" in p for p in checks.check_admin_port_fence(without))
    other_pods = problems_after("sidecar", lambda p: p["spec"]["podSelector"]["matchLabels"].update(
        istio="ingressgateway"))
    assert any("open to an application pod" in p for p in other_pods)
    # The monitoring namespace no longer allowed.
    no_monitoring = problems_after("standalone", lambda p: admin_rule(p)["from"].pop(0))
    assert no_monitoring == ["admin port 9090 closed to Prometheus in the monitoring namespace"]


def test_catches_other_ports_closed_or_opened():
    def problems_after(overlay, change):
        objs = mutated(overlay)
        change(checks.one(objs, "NetworkPolicy")["spec"]["ingress"])
        return checks.check_admin_port_fence(objs)

    # Without endPort the first range is port 1 alone: the gateway listeners close.
    no_range = problems_after("sidecar", lambda rules: rules[0]["ports"][0].pop("endPort"))
    assert any("TCP 2-9089 closed to an application pod" in p and "8080" in p and "443" in p for p in no_range)
    no_udp = problems_after("sidecar", lambda rules: rules[0]["ports"].pop(2))
    assert any("UDP 1-65535 closed" in p for p in no_udp)
    # Off by one around the admin port.
    narrow = problems_after("sidecar", lambda rules: rules[0]["ports"][1].update(port=9092))
    assert any("TCP 9091 closed" in p for p in narrow)
    wide = problems_after("sidecar", lambda rules: rules[0]["ports"][0].update(endPort=9090))
    assert any("admin port 9090 open to an application pod" in p for p in wide)
    # Standalone: the gRPC port keeps its one caller, the agent ports stay open.
    grpc_open = problems_after("standalone", lambda rules: rules[0].pop("from"))
    assert any("gRPC port 9000 open to an application pod" in p for p in grpc_open)
    grpc_closed = problems_after("standalone", lambda rules: rules.pop(0))
    assert "gRPC port 9000 closed to the egress gateway" in grpc_closed
    no_agent = problems_after("standalone", lambda rules: rules[2]["ports"].pop(0))
    assert any("Istio agent port 15020 closed" in p for p in no_agent)


# ------------------------------------------------------------------------------------------------ docs

def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


SECTION = "The admin port and the traffic inventory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_readme_label_command_grants_access(overlay):
    """The documented `kubectl label namespace` grants exactly the access the policies give."""
    (namespace, key, value), = re.findall(r"kubectl label namespace (\S+) ([\w./-]+)=(\S+)",
                                          readme_section(SECTION))
    objs = rendered(overlay)
    container = checks.egress_authz_container(checks.server_deployment(objs))
    dep = checks.server_deployment(objs)
    destination = Destination(dep["metadata"]["namespace"], dep["spec"]["template"]["metadata"]["labels"])
    admin = checks.served_ports(container)["admin"]
    policies = checks.find(objs, "NetworkPolicy")
    labelled = pod_source("labelled", "10.1.0.1", namespace, {key: value})
    unlabelled = pod_source("unlabelled", "10.1.0.1", namespace)
    assert may_connect(policies, destination, labelled, "TCP", admin)
    assert not may_connect(policies, destination, unlabelled, "TCP", admin)


def test_readme_names_the_server_flags():
    """The flags and environment variables the section names are the server's."""
    section = readme_section(SECTION)
    named = set(re.findall(r"--traffic-[a-z-]+", section)) | set(re.findall(r"EGRESS_AUTHZ_[A-Z_]+", section))
    assert {"--traffic-max-entries", "--traffic-file", "EGRESS_AUTHZ_TRAFFIC_FILE"} <= named
    proc = subprocess.run([str(require_binary()), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [n for n in sorted(named) if n not in proc.stdout] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_readme_traffic_file_patch_mounts_a_writable_directory(overlay, tmp_path):
    """The documented patch, applied to each overlay, puts the traffic file on a writable volume."""
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme_section(SECTION), re.S) if "patches:" in b]
    kustomization = yaml.safe_load(block)
    patch = yaml.safe_load(kustomization["patches"][0]["patch"])
    if overlay == "sidecar":
        patch["metadata"].update(name="istio-egressgateway", namespace=checks.GATEWAY_NAMESPACE)
    kustomization["patches"][0]["patch"] = yaml.safe_dump(patch)
    # kustomize takes only relative resource paths.
    kustomization["resources"] = [os.path.relpath(DEPLOY / "overlays" / overlay, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objs = kustomize(tmp_path)
    dep = checks.server_deployment(objs)
    container = checks.egress_authz_container(dep)
    traffic_file = checks.flag(container, "traffic-file")
    assert traffic_file, "the patch sets no --traffic-file"
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(traffic_file).parent)]
    assert len(mounts) == 1 and not mounts[0].get("readOnly"), "the file's directory must be a writable mount"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[0]["name"]]
    # The rules stay mounted as before.
    assert checks.check_rules_mount(objs) == []
