"""A small evaluator of Kubernetes NetworkPolicy ingress rules, enough to say who may open a connection.

It follows the networking.k8s.io/v1 semantics the API documents, not any one CNI:
- a pod that no policy with policyType Ingress selects accepts every connection;
- a selected pod accepts a connection that at least one rule of one selecting policy admits (the union);
- a rule without `from` admits every source, without `ports` every port; a `ports` entry without `port`
  is every port of its protocol (TCP when unset), with `endPort` the range port..endPort;
- a peer with only podSelector means pods of the policy's own namespace, with only namespaceSelector every
  pod of the selected namespaces, with both the selected pods of the selected namespaces; an ipBlock
  matches the source address (pod addresses included, the strictest reading for a fence).

Traffic from the pod's own node and over the pod's loopback is outside NetworkPolicy altogether (the
kubelet's probes, kubectl port-forward): nothing here models it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# Set by the API server on every namespace (GA in Kubernetes 1.22) and immutable: selects a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Source:
    """Who opens the connection: a pod (its namespace, the namespace's labels and its own labels) or, with
    no namespace, an address outside the cluster."""

    description: str
    address: str
    namespace: str | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Destination:
    """The pod connected to: its namespace, labels, and container port names (a policy may name a port)."""

    namespace: str
    pod_labels: dict[str, str]
    named_ports: dict[str, int] = field(default_factory=dict)


def pod_source(description: str, address: str, namespace: str, namespace_labels: dict[str, str] | None = None,
               pod_labels: dict[str, str] | None = None) -> Source:
    """A pod, with the namespace-name label the API server gives every namespace."""
    labels = {NAMESPACE_NAME_LABEL: namespace, **(namespace_labels or {})}
    return Source(description, address, namespace, labels, dict(pod_labels or {}))


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics: every matchLabels pair and every matchExpressions term holds.

    The empty selector selects everything (unlike checks.selects, whose callers treat a missing selector
    as selecting nothing).
    """
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if operator not in held:
            raise ValueError(f"unknown label selector operator {operator!r}")
        if not held[operator]:
            return False
    return True


def isolates_ingress(policy: dict) -> bool:
    """Every policy affects ingress unless its policyTypes lists only Egress."""
    types = policy["spec"].get("policyTypes")
    return types is None or "Ingress" in types


def selecting_policies(policies: list[dict], destination: Destination) -> list[dict]:
    """The Ingress policies that select the destination pod."""
    return [
        p for p in policies
        if p.get("kind") == "NetworkPolicy"
        and p["metadata"].get("namespace") == destination.namespace
        and isolates_ingress(p)
        and selector_matches(p["spec"].get("podSelector", {}), destination.pod_labels)
    ]


def peer_admits(peer: dict, policy_namespace: str, source: Source) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(source.address)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if source.namespace is None:
        return False  # only an ipBlock can admit an address outside the cluster
    if "namespaceSelector" in peer:
        namespace_ok = selector_matches(peer["namespaceSelector"], source.namespace_labels)
    else:
        namespace_ok = source.namespace == policy_namespace
    return namespace_ok and selector_matches(peer.get("podSelector", {}), source.pod_labels)


ALL_PORTS = (1, 65535)


def port_range(entry: dict, destination: Destination, protocol: str) -> tuple[int, int] | None:
    """The ports of `protocol` one `ports` entry admits, or None."""
    if entry.get("protocol", "TCP") != protocol:
        return None
    first = entry.get("port")
    if first is None:
        return ALL_PORTS
    if isinstance(first, str):
        # A named port is the destination container's port of that name; a name it lacks admits nothing.
        number = destination.named_ports.get(first)
        return (number, number) if number is not None else None
    return first, entry.get("endPort", first)


def admitted_ports(policies: list[dict], destination: Destination, source: Source,
                   protocol: str) -> list[tuple[int, int]]:
    """The port ranges of `protocol` on which `source` may open connections to `destination`."""
    selecting = selecting_policies(policies, destination)
    if not selecting:
        return [ALL_PORTS]
    ranges = []
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers, entries = rule.get("from"), rule.get("ports")
            if peers and not any(peer_admits(p, policy["metadata"]["namespace"], source) for p in peers):
                continue
            if not entries:
                return [ALL_PORTS]
            ranges += [r for r in (port_range(e, destination, protocol) for e in entries) if r is not None]
    return sorted(ranges)


def may_connect(policies: list[dict], destination: Destination, source: Source, protocol: str, port: int) -> bool:
    """Whether the NetworkPolicies let `source` open a connection to `destination` on protocol/port."""
    return any(first <= port <= last for first, last in admitted_ports(policies, destination, source, protocol))


def closed_ports(policies: list[dict], destination: Destination, source: Source,
                 protocol: str) -> list[tuple[int, int]]:
    """The port ranges of `protocol` on which `source` may not connect: the complement of admitted_ports."""
    closed, next_open = [], ALL_PORTS[0]
    for first, last in admitted_ports(policies, destination, source, protocol):
        if first > next_open:
            closed.append((next_open, first - 1))
        next_open = max(next_open, last + 1)
    if next_open <= ALL_PORTS[1]:
        closed.append((next_open, ALL_PORTS[1]))
    return closed
