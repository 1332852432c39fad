"""The egress routing (deploy/istio/egress) and the NetworkPolicy agree with the gateway wiring."""

from __future__ import annotations

import copy

import pytest

import checks
from conftest import DEPLOY, load_yaml_docs, rendered

EGRESS_GW_HOST = "istio-egressgateway.istio-system.svc.cluster.local"


def test_every_host_has_both_mtls_servers_and_routes():
    objs = rendered("istio-egress")
    entries = {h: se for se in checks.find(objs, "ServiceEntry") for h in se["spec"]["hosts"]}
    assert set(entries) == {"developers.google.com", "developer.yahoo.com"}
    (gw_dr,) = [d for d in checks.find(objs, "DestinationRule") if d["spec"]["host"] == EGRESS_GW_HOST]
    subsets = {s["name"]: s for s in gw_dr["spec"]["subsets"]}
    gateways = {f"{g['metadata']['namespace']}/{g['metadata']['name']}": g for g in checks.find(objs, "Gateway")}
    for host, se in entries.items():
        assert se["spec"]["location"] == "MESH_EXTERNAL"
        assert {(p["number"], p["protocol"]) for p in se["spec"]["ports"]} == {(80, "HTTP"), (443, "TLS")}
        (vs,) = [v for v in checks.find(objs, "VirtualService") if host in v["spec"]["hosts"]]
        (gw_ref,) = [g for g in vs["spec"]["gateways"] if g != "mesh"]
        gw = gateways[gw_ref]
        assert checks.selects({"matchLabels": gw["spec"]["selector"]}, checks.GATEWAY_POD_LABELS)
        servers = {s["port"]["number"]: s for s in gw["spec"]["servers"]}
        assert set(servers) == set(checks.GATEWAY_LAYOUTS["istioctl"]), "HTTP-in-mTLS on 80, TLS-in-mTLS on 443"
        assert servers[80]["port"]["protocol"] == "HTTPS" and servers[443]["port"]["protocol"] == "TLS"
        for s in servers.values():
            assert s["tls"]["mode"] == "ISTIO_MUTUAL", "no principal unless the gateway terminates mesh mTLS"
            assert s["hosts"] == [host], "one host per server: the SNI selects it"
        # Sidecar legs go to the gateway subset whose SNI is the host.
        legs = [r for r in vs["spec"]["http"] + vs["spec"]["tls"] if r["match"][0]["gateways"] == ["mesh"]]
        assert len(legs) == 2
        for leg in legs:
            dest = leg["route"][0]["destination"]
            assert dest["host"] == EGRESS_GW_HOST and dest["port"]["number"] in servers
            tls = subsets[dest["subset"]]["trafficPolicy"]["tls"]
            assert tls == {"mode": "ISTIO_MUTUAL", "sni": host}
        # Gateway legs leave for the real host: HTTP with TLS origination, TLS passed through as is.
        (http_out,) = [r for r in vs["spec"]["http"] if r["match"][0]["gateways"] == [gw_ref]]
        (tcp_out,) = vs["spec"]["tcp"]
        assert tcp_out["match"][0]["gateways"] == [gw_ref]
        assert http_out["route"][0]["destination"]["host"] == host
        assert tcp_out["route"][0]["destination"] == {"host": host, "port": {"number": 443}}
        (host_dr,) = [d for d in checks.find(objs, "DestinationRule") if d["spec"]["host"] == host]
        (orig,) = host_dr["spec"]["subsets"]
        assert http_out["route"][0]["destination"]["subset"] == orig["name"]
        (pls,) = orig["trafficPolicy"]["portLevelSettings"]
        assert pls["tls"] == {"mode": "SIMPLE", "sni": host}
        assert "trafficPolicy" not in host_dr["spec"], "a host-wide TLS policy would re-wrap the passthrough TLS"


@pytest.mark.parametrize("layout", sorted(checks.GATEWAY_LAYOUTS))
def test_custom_policy_covers_the_gateway_servers(layout):
    """Every Gateway server egress uses is a listener the CUSTOM policy checks, whichever way the gateway was
    installed (listener ports are the Service's targetPorts)."""
    ap = checks.one(rendered("istio-gateway"), "AuthorizationPolicy")
    servers = [s for gw in checks.find(rendered("istio-egress"), "Gateway") for s in gw["spec"]["servers"]]
    assert servers
    for server in servers:
        listener = checks.GATEWAY_LAYOUTS[layout][server["port"]["number"]]
        assert checks.custom_policy_checks_port(ap, listener), f"{layout}: port {listener} unchecked"


def test_port_coverage_catches_a_policy_scoped_to_one_layout():
    """The old policy (ports 8080/8443) checked nothing on a Helm-installed gateway."""
    ap = copy.deepcopy(checks.one(rendered("istio-gateway"), "AuthorizationPolicy"))
    ap["spec"]["rules"] = [{"to": [{"operation": {"ports": ["8080", "8443"]}}]}]
    assert all(checks.custom_policy_checks_port(ap, p) for p in checks.GATEWAY_LAYOUTS["istioctl"].values())
    assert not any(checks.custom_policy_checks_port(ap, p) for p in checks.GATEWAY_LAYOUTS["helm"].values())
    ap["spec"]["rules"] = [{"to": [{"operation": {"notPorts": ["443"]}}]}]
    assert not checks.custom_policy_checks_port(ap, 443)
    assert checks.custom_policy_checks_port(ap, 8443)


def test_networkpolicy_lets_apps_out_only_through_the_gateway():
    (np,) = load_yaml_docs(DEPLOY / "istio" / "networkpolicy" / "egress-via-gateway.yaml")
    spec = np["spec"]
    assert spec["podSelector"] == {} and spec["policyTypes"] == ["Egress"]
    assert "namespace" not in np["metadata"], "applied per application namespace with -n"
    for rule in spec["egress"]:
        assert rule.get("to"), "a rule without `to` would allow every destination"
        for peer in rule["to"]:
            assert "ipBlock" not in peer, "no direct route to outside addresses"
    gw_rules = [
        r for r in spec["egress"]
        if any(checks.selects(p.get("podSelector"), checks.GATEWAY_POD_LABELS) and "namespaceSelector" in p
               for p in r["to"])
    ]
    (gw_rule,) = gw_rules
    assert networkpolicy_gateway_ports(np) == checks.GATEWAY_LISTENER_PORTS
    dns = [r for r in spec["egress"] if any(p.get("port") == 53 for p in r.get("ports", []))]
    assert dns and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}


def networkpolicy_gateway_ports(np: dict) -> set[int]:
    """TCP ports the NetworkPolicy opens towards the egress gateway pods."""
    return {
        p["port"]
        for r in np["spec"]["egress"]
        if any(checks.selects(peer.get("podSelector"), checks.GATEWAY_POD_LABELS) for peer in r.get("to", []))
        for p in r.get("ports", [])
        if p.get("protocol", "TCP") == "TCP"
    }


@pytest.mark.parametrize("layout", sorted(checks.GATEWAY_LAYOUTS))
def test_networkpolicy_opens_every_gateway_listener(layout):
    (np,) = load_yaml_docs(DEPLOY / "istio" / "networkpolicy" / "egress-via-gateway.yaml")
    assert set(checks.GATEWAY_LAYOUTS[layout].values()) <= networkpolicy_gateway_ports(np)


def test_networkpolicy_check_catches_a_missing_layout():
    (np,) = load_yaml_docs(DEPLOY / "istio" / "networkpolicy" / "egress-via-gateway.yaml")
    for rule in np["spec"]["egress"]:
        if "ports" in rule:
            rule["ports"] = [p for p in rule["ports"] if p["port"] not in (80, 443)]
    assert not set(checks.GATEWAY_LAYOUTS["helm"].values()) <= networkpolicy_gateway_ports(np)
