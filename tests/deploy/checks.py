"""Cross-reference checks over rendered manifests.

Each check takes plain objects (as rendered by kustomize) and returns a list of problems, empty when the
wiring holds. Tests run them on the real renders and on mutated copies, to prove they catch breakage.
"""

from __future__ import annotations

import re
from typing import Iterable

from network_policy import Destination, Source, closed_ports, may_connect, pod_source

# Labels of the istio-egressgateway pods (istioctl's egress gateway and the istio/gateway Helm chart with
# release name istio-egressgateway). The sidecar overlay's patch repeats them; a test keeps both in step.
GATEWAY_POD_LABELS = {"app": "istio-egressgateway", "istio": "egressgateway"}
# Istio's mesh root namespace (default rootNamespace) and where the egress gateway runs.
ROOT_NAMESPACE = "istio-system"
GATEWAY_NAMESPACE = "istio-system"
# Listener (container) port of each Gateway server port, per install style. Istio binds a gateway
# listener on the Service's targetPort for that server port, and AuthorizationPolicy ports and
# NetworkPolicy ports both see that listener port. The bundle must work on either layout.
GATEWAY_LAYOUTS = {
    "istioctl": {80: 8080, 443: 8443},   # istio-egressgateway from `istioctl install`
    "helm": {80: 80, 443: 443},          # the istio/gateway chart (charts/gateway/values.yaml)
}
GATEWAY_LISTENER_PORTS = {p for layout in GATEWAY_LAYOUTS.values() for p in layout.values()}

HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"
HTTP_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
NETWORK_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"


# ---------------------------------------------------------------------------------------------- lookups

def find(objs: Iterable[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: Iterable[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selects(selector: dict | None, labels: dict | None) -> bool:
    """matchLabels semantics (plus matchExpressions In/Exists, enough for these manifests)."""
    if not selector:
        return False
    labels = labels or {}
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def egress_authz_container(deployment: dict) -> dict:
    containers = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "egress-authz"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: no single egress-authz container"
    return containers[0]


def server_deployment(objs: list[dict]) -> dict:
    """The Deployment that runs egress-authz in this render (standalone or the gateway patch)."""
    deps = [
        d for d in find(objs, "Deployment")
        if any(c["name"] == "egress-authz" for c in d["spec"]["template"]["spec"]["containers"])
    ]
    assert len(deps) == 1, f"expected one Deployment running egress-authz, found {len(deps)}"
    return deps[0]


def flag(container: dict, name: str) -> str | None:
    """Value of --name=VALUE or --name VALUE in the container's args (or EGRESS_AUTHZ_* env)."""
    args = list(container.get("command", [])) + list(container.get("args", []))
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    env_name = "EGRESS_AUTHZ_" + name.upper().replace("-", "_")
    for env in container.get("env", []):
        if env["name"] == env_name:
            return env.get("value")
    return None


def addr_port(addr: str | None) -> int | None:
    if not addr or ":" not in addr:
        return None
    return int(addr.rsplit(":", 1)[1])


def container_port(container: dict, port: int | str) -> dict | None:
    """The containerPort entry a probe or targetPort refers to, by name or number."""
    for p in container.get("ports", []):
        if (isinstance(port, str) and p.get("name") == port) or p["containerPort"] == port:
            return p
    return None


def served_ports(container: dict) -> dict[str, int]:
    """Ports the server listens on, from its flags: {'grpc': 9000, 'admin': 9090}."""
    return {
        "grpc": addr_port(flag(container, "grpc-addr")),
        "admin": addr_port(flag(container, "admin-addr")),
    }


def resolve_port(container: dict, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    entry = container_port(container, port)
    return entry["containerPort"] if entry else None


# ---------------------------------------------------------------------------------------------- checks

def check_provider_in_mesh(objs: list[dict], mesh_config: dict) -> list[str]:
    problems = []
    providers = {p["name"]: p for p in mesh_config.get("extensionProviders", [])}
    custom = [p for p in find(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"]
    if not custom:
        problems.append("no CUSTOM AuthorizationPolicy")
    for pol in custom:
        name = pol["spec"].get("provider", {}).get("name")
        if name not in providers:
            problems.append(f"AuthorizationPolicy {pol['metadata']['name']}: provider {name!r} not in meshConfig")
        elif "envoyExtAuthzGrpc" not in providers[name]:
            problems.append(f"provider {name!r} is not envoyExtAuthzGrpc (CUSTOM on TCP needs gRPC)")
    return problems


def used_provider(objs: list[dict], mesh_config: dict) -> dict:
    pol = one([p for p in find(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"],
              "AuthorizationPolicy")
    name = pol["spec"]["provider"]["name"]
    return next(p for p in mesh_config["extensionProviders"] if p["name"] == name)["envoyExtAuthzGrpc"]


def check_provider_reaches_server(objs: list[dict], mesh_config: dict) -> list[str]:
    """The provider's service/port lead to a Service (or ServiceEntry) port that is the server's gRPC port."""
    problems = []
    provider = used_provider(objs, mesh_config)
    host = provider["service"].split("/", 1)[-1]
    port = int(provider["port"])
    dep = server_deployment(objs)
    container = egress_authz_container(dep)
    grpc_port = served_ports(container)["grpc"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})

    m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
    if m:
        name, ns = m.groups()
        if "/" in provider["service"] and provider["service"].split("/", 1)[0] != ns:
            problems.append(f"provider service {provider['service']}: the namespace prefix is not the host's")
        svcs = [s for s in find(objs, "Service", name) if s["metadata"].get("namespace") == ns]
        if not svcs:
            return [f"provider service {host}: no Service {ns}/{name} in the render"]
        svc = svcs[0]
        if not selects({"matchLabels": svc["spec"].get("selector", {})}, pod_labels):
            problems.append(f"Service {name} does not select the egress-authz pods")
        ports = [p for p in svc["spec"]["ports"] if p["port"] == port]
        if not ports:
            return problems + [f"Service {name} has no port {port}"]
        sp = ports[0]
        if not (sp.get("name", "").startswith("grpc") or sp.get("appProtocol") == "grpc"):
            problems.append(f"Service {name} port {port} is not named grpc*/appProtocol grpc: Istio would use HTTP/1.1")
        if sp.get("name") != "grpc" or sp.get("appProtocol") != "grpc":
            problems.append(f"Service {name} port {port}: want name grpc and appProtocol grpc")
        target = resolve_port(container, sp.get("targetPort", sp["port"]))
        if target is None:
            problems.append(f"Service {name} targetPort {sp.get('targetPort')!r} is not a container port")
        elif target != grpc_port:
            problems.append(f"Service {name} targets {target}, the server listens for gRPC on {grpc_port}")
    else:
        entries = [se for se in find(objs, "ServiceEntry") if host in se["spec"].get("hosts", [])]
        if not entries:
            return [f"provider service {host}: no Service or ServiceEntry for it in the render"]
        se = entries[0]["spec"]
        ports = [p for p in se.get("ports", []) if p["number"] == port]
        if not ports:
            problems.append(f"ServiceEntry {host} has no port {port}")
        elif ports[0].get("protocol") != "GRPC":
            problems.append(f"ServiceEntry {host} port {port} protocol is not GRPC")
        addrs = [e.get("address") for e in se.get("endpoints", [])]
        if se.get("resolution") != "STATIC" or addrs != ["127.0.0.1"]:
            problems.append(f"ServiceEntry {host}: want resolution STATIC with the one endpoint 127.0.0.1")
        target = (ports[0].get("targetPort") or port) if ports else port
        if target != grpc_port:
            problems.append(f"ServiceEntry {host} reaches port {target}, the server listens for gRPC on {grpc_port}")
        if not selects({"matchLabels": GATEWAY_POD_LABELS}, pod_labels):
            problems.append("the loopback provider needs egress-authz inside the egress gateway pods")
        if addr_port(flag(container, "grpc-addr")) and not flag(container, "grpc-addr").startswith("127.0.0.1:"):
            problems.append("in the gateway pod the gRPC port should listen on loopback only")
    return problems


def check_selectors(objs: list[dict]) -> list[str]:
    problems = []
    dep = server_deployment(objs)
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"], pod_labels):
        problems.append(f"Deployment {dep['metadata']['name']} selector does not match its pod labels")
    for tsc in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        if not selects(tsc.get("labelSelector"), pod_labels):
            problems.append(f"topologySpreadConstraint on {tsc['topologyKey']} does not select the pods")
    for pdb in find(objs, "PodDisruptionBudget"):
        if not selects(pdb["spec"]["selector"], pod_labels):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the pods")
    for hpa in find(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            problems.append(f"HPA {hpa['metadata']['name']} targets {ref['kind']}/{ref['name']}")
    for svc in find(objs, "Service"):
        sel = svc["spec"].get("selector")
        if sel and not selects({"matchLabels": sel}, pod_labels):
            problems.append(f"Service {svc['metadata']['name']} selects no egress-authz pod")
    # Istio policies: the gateway ones select the gateway pods, the others the egress-authz pods.
    for kind in ("AuthorizationPolicy", "PeerAuthentication", "EnvoyFilter"):
        for obj in find(objs, kind):
            spec = obj["spec"]
            sel = spec.get("selector") or (
                {"matchLabels": spec["workloadSelector"]["labels"]} if "workloadSelector" in spec else None
            )
            if sel is None:
                problems.append(f"{kind} {obj['metadata']['name']} has no selector: it would apply namespace-wide")
            elif not (selects(sel, GATEWAY_POD_LABELS) or selects(sel, pod_labels)):
                problems.append(f"{kind} {obj['metadata']['name']} selects neither the gateway nor egress-authz")
    for pol in find(objs, "AuthorizationPolicy"):
        if pol["spec"].get("action") == "CUSTOM" and not selects(pol["spec"]["selector"], GATEWAY_POD_LABELS):
            problems.append(f"CUSTOM AuthorizationPolicy {pol['metadata']['name']} does not select the gateway")
    return problems


def check_probes(objs: list[dict]) -> list[str]:
    problems = []
    container = egress_authz_container(server_deployment(objs))
    admin = served_ports(container)["admin"]
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe_name, path in want.items():
        probe = container.get(probe_name)
        if not probe or "httpGet" not in probe:
            problems.append(f"{probe_name} missing or not httpGet")
            continue
        get = probe["httpGet"]
        if get.get("path") != path:
            problems.append(f"{probe_name} path {get.get('path')!r}, want {path}")
        port = get["port"]
        entry = container_port(container, port)
        if entry is None:
            problems.append(f"{probe_name} port {port!r} is not a container port")
        elif entry["containerPort"] != admin:
            problems.append(f"{probe_name} port {entry['containerPort']} is not the admin port {admin}")
    flag_addr = flag(container, "admin-addr") or ""
    if flag_addr.startswith("127.0.0.1:"):
        problems.append("admin port bound to loopback: the kubelet cannot probe it")
    return problems


def check_rules_mount(objs: list[dict]) -> list[str]:
    problems = []
    dep = server_deployment(objs)
    container = egress_authz_container(dep)
    rules = flag(container, "rules")
    if not rules:
        return ["no --rules flag"]
    cms = {c["metadata"]["name"] for c in find(objs, "ConfigMap")}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == rules.rstrip("/")]
    if not mounts:
        return [f"--rules {rules} is not a volume mount path"]
    mount = mounts[0]
    if "subPath" in mount or "subPathExpr" in mount:
        problems.append("rules mounted with subPath: ConfigMap updates would never reach the pod")
    if not mount.get("readOnly"):
        problems.append("rules mount is not readOnly")
    vol = volumes.get(mount["name"])
    if vol is None or "configMap" not in vol:
        problems.append(f"volume {mount['name']} is not a ConfigMap volume")
    else:
        if vol["configMap"]["name"] not in cms:
            problems.append(f"volume {mount['name']} mounts ConfigMap {vol['configMap']['name']}, not in the render")
        if vol["configMap"].get("items"):
            problems.append("ConfigMap volume lists items: new rule files would not appear")
    return problems


def check_grpc_port_named(objs: list[dict]) -> list[str]:
    problems = []
    for svc in find(objs, "Service"):
        for p in svc["spec"]["ports"]:
            is_grpc = p["port"] == 9000 or "grpc" in (p.get("name", ""), p.get("appProtocol", ""))
            if is_grpc and (p.get("name") != "grpc" or p.get("appProtocol") != "grpc"):
                problems.append(f"Service {svc['metadata']['name']} port {p['port']}: want name grpc, appProtocol grpc")
    return problems


def check_envoyfilter(objs: list[dict]) -> list[str]:
    problems = []
    filters = find(objs, "EnvoyFilter")
    if len(filters) != 1:
        return [f"expected one EnvoyFilter, found {len(filters)}"]
    spec = filters[0]["spec"]
    if not selects({"matchLabels": spec.get("workloadSelector", {}).get("labels", {})}, GATEWAY_POD_LABELS):
        problems.append("EnvoyFilter does not select the egress gateway")
    seen = set()
    for patch in spec.get("configPatches", []):
        match = patch.get("match", {})
        if match.get("context") != "GATEWAY":
            problems.append(f"{patch['applyTo']} patch context is {match.get('context')!r}, want GATEWAY")
        flt = match.get("listener", {}).get("filterChain", {}).get("filter", {})
        value = patch.get("patch", {}).get("value", {})
        typed = value.get("typed_config", {})
        if patch.get("patch", {}).get("operation") != "MERGE":
            problems.append(f"{patch['applyTo']} patch should MERGE into Istio's filter")
        if typed.get("include_tls_session") is not True:
            problems.append(f"{patch['applyTo']} patch does not set include_tls_session")
        if patch["applyTo"] == "HTTP_FILTER":
            if flt.get("name") != HCM or flt.get("subFilter", {}).get("name") != HTTP_EXT_AUTHZ:
                problems.append(f"HTTP_FILTER patch targets {flt}, want {HCM} / {HTTP_EXT_AUTHZ}")
            if typed.get("@type") != HTTP_EXT_AUTHZ_TYPE or value.get("name") != HTTP_EXT_AUTHZ:
                problems.append("HTTP_FILTER patch value has the wrong name or @type")
            seen.add("http")
        elif patch["applyTo"] == "NETWORK_FILTER":
            if flt.get("name") != NETWORK_EXT_AUTHZ:
                problems.append(f"NETWORK_FILTER patch targets {flt.get('name')!r}, want {NETWORK_EXT_AUTHZ}")
            if typed.get("@type") != NETWORK_EXT_AUTHZ_TYPE or value.get("name") != NETWORK_EXT_AUTHZ:
                problems.append("NETWORK_FILTER patch value has the wrong name or @type")
            seen.add("network")
        else:
            problems.append(f"unexpected applyTo {patch['applyTo']}")
    if seen != {"http", "network"}:
        problems.append(f"patches cover {sorted(seen)}, want both http and network ext_authz filters")
    return problems


HTTP_ONLY_KEYS = ("methods", "paths", "hosts", "notMethods", "notPaths", "notHosts")


def rule_matches_port(rule: dict, port: int) -> bool:
    """Whether an AuthorizationPolicy rule can match traffic on a listener port, by its port conditions.

    `from` and `when` are not port conditions; check_custom_policy_ports rejects them separately.
    """
    tos = rule.get("to")
    if not tos:
        return True
    for to in tos:
        op = to.get("operation", {})
        ports, not_ports = op.get("ports"), op.get("notPorts", [])
        if (not ports or str(port) in ports) and str(port) not in not_ports:
            return True
    return False


def custom_policy_checks_port(policy: dict, port: int) -> bool:
    return any(rule_matches_port(r, port) for r in policy["spec"].get("rules", []))


def check_custom_policy_ports(objs: list[dict]) -> list[str]:
    """The CUSTOM policy asks egress-authz about every request and connection, on any gateway port.

    A rule narrowed by ports (or by anything else) leaves traffic unchecked on a gateway whose listeners
    are elsewhere: the Helm chart's gateway listens on 80/443, istioctl's on 8080/8443.
    """
    problems = []
    customs = [p for p in find(objs, "AuthorizationPolicy") if p["spec"].get("action") == "CUSTOM"]
    for pol in customs:
        name = pol["metadata"]["name"]
        rules = pol["spec"].get("rules", [])
        if not rules:
            problems.append(f"CUSTOM policy {name} has no rules: Istio never calls the provider")
        unconditional = [r for r in rules if not r.get("from") and not r.get("to") and not r.get("when")]
        if rules and not unconditional:
            problems.append(f"CUSTOM policy {name}: no rule without conditions, some traffic is never checked")
        for rule in rules:
            for to in rule.get("to", []):
                op = to.get("operation", {})
                if "ports" in op or "notPorts" in op:
                    problems.append(f"CUSTOM policy {name} scoped by ports {op.get('ports') or op.get('notPorts')}: "
                                    "other listener ports go unchecked")
                http_only = [k for k in HTTP_ONLY_KEYS if k in op]
                if http_only:
                    problems.append(f"CUSTOM policy {name} uses HTTP-only fields {http_only}: dropped on TCP")
        for layout, ports in GATEWAY_LAYOUTS.items():
            for port in sorted(set(ports.values())):
                if not custom_policy_checks_port(pol, port):
                    problems.append(f"CUSTOM policy {name} never checks port {port} ({layout} gateway)")
    return problems


def check_peer_authentication(objs: list[dict]) -> list[str]:
    """mTLS to egress-authz is enforced by a PeerAuthentication that Istio actually applies.

    - istiod ignores a PeerAuthentication with a selector in the root namespace, so none may be there;
    - a gateway never applies PeerAuthentication to its listeners, so none may select the gateway (it
      would only suggest a protection that does not exist);
    - when egress-authz is reached over the network (its own pods, not the gateway's), a workload policy
      in its namespace selects its pods with STRICT on the gRPC port.
    """
    problems = []
    dep = server_deployment(objs)
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    server_ns = dep["metadata"].get("namespace")
    grpc = served_ports(egress_authz_container(dep))["grpc"]
    pas = find(objs, "PeerAuthentication")
    for pa in pas:
        name, ns, spec = pa["metadata"]["name"], pa["metadata"].get("namespace"), pa["spec"]
        if ns == ROOT_NAMESPACE and spec.get("selector"):
            problems.append(f"PeerAuthentication {ns}/{name} has a selector in the root namespace: istiod ignores it")
        if selects(spec.get("selector"), GATEWAY_POD_LABELS) or (ns == GATEWAY_NAMESPACE and not spec.get("selector")):
            problems.append(f"PeerAuthentication {ns}/{name} targets the gateway, whose listeners never apply it")
    in_gateway_pod = selects({"matchLabels": GATEWAY_POD_LABELS}, pod_labels)
    if in_gateway_pod:
        return problems  # loopback only: no mesh hop to protect
    if server_ns == ROOT_NAMESPACE:
        problems.append(f"egress-authz runs in the root namespace {server_ns}: its workload PeerAuthentication "
                        "would be ignored")
    strict = []
    for pa in pas:
        spec = pa["spec"]
        if pa["metadata"].get("namespace") != server_ns or not selects(spec.get("selector"), pod_labels):
            continue
        mode = spec.get("portLevelMtls", {}).get(str(grpc), {}).get("mode") or spec.get("mtls", {}).get("mode")
        if mode == "STRICT":
            strict.append(pa)
        else:
            problems.append(f"PeerAuthentication {pa['metadata']['name']}: gRPC port {grpc} is {mode}, not STRICT")
    if not strict:
        problems.append(f"no STRICT workload PeerAuthentication for egress-authz in its namespace {server_ns}")
    return problems


def check_callers_policy(objs: list[dict]) -> list[str]:
    """An ALLOW policy in egress-authz's namespace lets only the gateway's namespace call the gRPC port."""
    dep = server_deployment(objs)
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if selects({"matchLabels": GATEWAY_POD_LABELS}, pod_labels):
        return []
    grpc = str(served_ports(egress_authz_container(dep))["grpc"])
    pols = [
        p for p in find(objs, "AuthorizationPolicy")
        if p["spec"].get("action", "ALLOW") == "ALLOW" and p["metadata"].get("namespace") == dep["metadata"].get(
            "namespace") and selects(p["spec"].get("selector"), pod_labels)
    ]
    if not pols:
        return ["no ALLOW AuthorizationPolicy on the egress-authz pods in their namespace"]
    problems = []
    for pol in pols:
        for rule in pol["spec"].get("rules", []):
            if not rule_matches_port(rule, int(grpc)):
                continue
            sources = [f.get("source", {}) for f in rule.get("from", [])]
            if not sources or any(s.get("namespaces") != [GATEWAY_NAMESPACE] for s in sources):
                problems.append(f"AuthorizationPolicy {pol['metadata']['name']} lets more than {GATEWAY_NAMESPACE} "
                                f"call port {grpc}")
    return problems


# Who may reach the admin port (/metrics, /rules and /traffic, the traffic inventory), in both overlays: the
# namespace Prometheus runs in (kube-prometheus's and the usual kube-prometheus-stack's) and the operator
# namespaces that carry ADMIN_ACCESS_LABEL="true". deploy/README.md documents both.
MONITORING_NAMESPACE = "monitoring"
ADMIN_ACCESS_LABEL = "egress-authz.io/admin-access"
# The Istio agent's ports in the standalone pods: 15020 (merged metrics, and the kubelet probes Istio
# rewrites) and 15021 (Envoy's health).
ISTIO_AGENT_PORTS = (15020, 15021)
# What a gateway pod serves besides its Gateway listeners: 15021 (health, for load balancers) and 15090
# (Envoy's Prometheus stats).
GATEWAY_OWN_PORTS = (15021, 15090)

ADMIN_CALLERS = (
    pod_source("Prometheus in the monitoring namespace", "10.244.1.10", MONITORING_NAMESPACE,
               pod_labels={"app.kubernetes.io/name": "prometheus"}),
    pod_source("a pod of a labelled operator namespace", "10.244.2.10", "platform-ops",
               {ADMIN_ACCESS_LABEL: "true"}, {"run": "toolbox"}),
)
OTHER_CALLERS = (
    pod_source("an application pod", "10.244.3.10", "payments", pod_labels={"app": "payments-api"}),
    pod_source("a pod of namespace default", "10.244.3.11", "default", pod_labels={"run": "curl"}),
    pod_source("a pod labelled like Prometheus outside the monitoring namespace", "10.244.3.12", "shop",
               pod_labels={"app.kubernetes.io/name": "prometheus"}),
    pod_source("a pod carrying the admin-access label itself", "10.244.3.13", "shop",
               pod_labels={ADMIN_ACCESS_LABEL: "true"}),
    pod_source("a pod of a namespace whose admin-access label is not true", "10.244.3.14", "team-a",
               {ADMIN_ACCESS_LABEL: "false"}),
    Source("an address outside the cluster", "203.0.113.7"),
)
GATEWAY_CALLER = pod_source("the egress gateway", "10.244.0.20", GATEWAY_NAMESPACE, pod_labels=GATEWAY_POD_LABELS)


def without_port(ranges: list[tuple[int, int]], port: int) -> list[tuple[int, int]]:
    return [
        (first, last)
        for low, high in ranges
        for first, last in ((low, min(high, port - 1)), (max(low, port + 1), high))
        if first <= last
    ]


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def check_admin_port_fence(objs: list[dict]) -> list[str]:
    """From the rendered NetworkPolicies: only the monitoring namespace and labelled operator namespaces
    reach the admin port of the pods that run egress-authz, and every other port keeps its callers.

    Standalone: 9000 from the gateway pods only, 15020/15021 from anywhere, as before the admin fence.
    Sidecar: the gateway pods keep every other TCP port and every UDP port open to everyone (their Gateway
    listeners differ per install: 8080/8443 or 80/443, plus 15021 and 15090).
    """
    dep = server_deployment(objs)
    container = egress_authz_container(dep)
    namespace = dep["metadata"].get("namespace")
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    destination = Destination(namespace, pod_labels,
                              {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p})
    policies = find(objs, "NetworkPolicy")
    ports = served_ports(container)
    admin = ports["admin"]
    neighbour = pod_source(f"another pod of {namespace}", "10.244.0.30", namespace, pod_labels={"app": "neighbour"})
    others = (*OTHER_CALLERS, neighbour)

    def reaches(source: Source, port: int) -> bool:
        return may_connect(policies, destination, source, "TCP", port)

    problems = [f"admin port {admin} closed to {s.description}" for s in ADMIN_CALLERS if not reaches(s, admin)]
    problems += [f"admin port {admin} open to {s.description}" for s in others if reaches(s, admin)]
    if selects({"matchLabels": GATEWAY_POD_LABELS}, pod_labels):
        served = sorted(GATEWAY_LISTENER_PORTS | set(GATEWAY_OWN_PORTS))
        for source in (*ADMIN_CALLERS, *others):
            closed_tcp = without_port(closed_ports(policies, destination, source, "TCP"), admin)
            closed_udp = closed_ports(policies, destination, source, "UDP")
            if closed_tcp:
                hit = [p for p in served if any(first <= p <= last for first, last in closed_tcp)]
                problems.append(f"gateway pods: TCP {format_ranges(closed_tcp)} closed to {source.description}"
                                + (f" (gateway ports {hit} among them)" if hit else ""))
            if closed_udp:
                problems.append(f"gateway pods: UDP {format_ranges(closed_udp)} closed to {source.description}")
        return problems
    grpc = ports["grpc"]
    if not reaches(GATEWAY_CALLER, grpc):
        problems.append(f"gRPC port {grpc} closed to the egress gateway")
    problems += [f"gRPC port {grpc} open to {s.description}" for s in (*ADMIN_CALLERS, *others) if reaches(s, grpc)]
    for port in ISTIO_AGENT_PORTS:
        problems += [f"Istio agent port {port} closed to {s.description}"
                     for s in (GATEWAY_CALLER, *ADMIN_CALLERS, *others) if not reaches(s, port)]
    return problems


# A Kubernetes object is at most 1 MiB (API server / etcd request limit), metadata included; keep the
# rules well under it so the ConfigMap's labels and managed fields fit too.
CONFIGMAP_LIMIT_BYTES = 1024 * 1024
RULES_BUDGET_BYTES = 900 * 1024


def check_rules_configmap_size(objs: list[dict]) -> list[str]:
    problems = []
    for cm in find(objs, "ConfigMap"):
        size = sum(len(k.encode()) + len(v.encode()) for k, v in cm.get("data", {}).items())
        size += sum(len(k.encode()) + len(v) for k, v in cm.get("binaryData", {}).items())
        if size > RULES_BUDGET_BYTES:
            problems.append(f"ConfigMap {cm['metadata']['name']}: {size} bytes of data, over the "
                            f"{RULES_BUDGET_BYTES} budget under Kubernetes' {CONFIGMAP_LIMIT_BYTES}-byte object limit")
    return problems


def helm_commands(text: str) -> list[str]:
    """helm install/upgrade/template commands in a text (shell continuations joined, comment marks dropped)."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [m.group(0) for m in re.finditer(r"helm\s+(?:upgrade|install|template)\b[^\n`]*", joined)]


def check_helm_versions_pinned(text: str) -> list[str]:
    """Every helm command that installs a chart pins its version: unpinned, it takes the newest chart."""
    return [f"helm command without --version: {cmd.strip()}" for cmd in helm_commands(text)
            if not re.search(r"--version[ =]\S+", cmd)]


MIN_SHUTDOWN_DELAY_S = 5.0


def check_shutdown_timings(objs: list[dict]) -> list[str]:
    """Rollouts without 503 bursts: the server keeps answering while it leaves the endpoints, and the
    kubelet waits for it.

    --shutdown-delay (serve, not ready) must cover endpoint propagation and Envoy's drain (5 s by
    default); terminationGracePeriodSeconds (Kubernetes' default 30 s when unset) must exceed delay plus
    grace, or the kubelet's SIGKILL cuts checks that are still in flight.
    """
    problems = []
    dep = server_deployment(objs)
    container = egress_authz_container(dep)
    delay = flag(container, "shutdown-delay")
    grace = flag(container, "shutdown-grace") or "10s"
    if delay is None:
        return ["no --shutdown-delay: the server closes while endpoints still send checks to it"]
    delay_s, grace_s = duration_seconds(delay), duration_seconds(grace)
    if delay_s < MIN_SHUTDOWN_DELAY_S:
        problems.append(f"--shutdown-delay {delay} is under {MIN_SHUTDOWN_DELAY_S:g}s")
    tgp = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if not tgp > delay_s + grace_s:
        problems.append(f"terminationGracePeriodSeconds {tgp} is not above delay {delay} + grace {grace}")
    return problems


def check_hpa(objs: list[dict]) -> list[str]:
    """The HPA scales on the egress-authz container's CPU, and owns the replica count alone."""
    problems = []
    for hpa in find(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        targets = find(objs, ref["kind"], ref["name"])
        if not targets:
            problems.append(f"HPA {hpa['metadata']['name']} targets {ref['kind']}/{ref['name']}, not rendered")
            continue
        target = targets[0]
        if "replicas" in target["spec"]:
            problems.append(f"{ref['kind']} {ref['name']} sets replicas: every apply resets what the HPA chose")
        containers = {c["name"]: c for c in target["spec"]["template"]["spec"]["containers"]}
        metrics = hpa["spec"].get("metrics", [])
        if not metrics:
            problems.append(f"HPA {hpa['metadata']['name']} has no metrics (defaults to pod CPU)")
        for m in metrics:
            if m.get("type") != "ContainerResource":
                problems.append(f"HPA metric {m.get('type')}: want ContainerResource (the pod's CPU includes "
                                "the sidecar's)")
                continue
            cr = m["containerResource"]
            if cr.get("name") != "cpu" or cr.get("container") != "egress-authz":
                problems.append(f"HPA scales on {cr.get('container')}/{cr.get('name')}, want egress-authz/cpu")
            elif "cpu" not in containers.get("egress-authz", {}).get("resources", {}).get("requests", {}):
                problems.append("HPA CPU utilization needs a CPU request on the egress-authz container")
    return problems


ISTIO_PROVIDER_DEFAULTS = {"timeout": "600s", "failOpen": False}


def check_provider_settings(mesh_config: dict) -> list[str]:
    problems = []
    for p in mesh_config.get("extensionProviders", []):
        grpc = p.get("envoyExtAuthzGrpc")
        if grpc is None:
            continue
        if grpc.get("failOpen") is not False:
            problems.append(f"provider {p['name']}: failOpen must be set to false explicitly")
        timeout = grpc.get("timeout")
        if timeout is None:
            problems.append(f"provider {p['name']}: no timeout (Istio's default is 600s)")
        elif duration_seconds(timeout) > 1.0:
            problems.append(f"provider {p['name']}: timeout {timeout} is too long for an inline check")
    return problems


def duration_seconds(value: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)", str(value))
    assert m, f"not a duration: {value!r}"
    number, unit = float(m.group(1)), m.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def check_hardening(container: dict, pod_spec: dict) -> list[str]:
    problems = []
    sc = container.get("securityContext", {})
    pod_sc = pod_spec.get("securityContext", {})
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        problems.append("runAsNonRoot not set")
    if sc.get("runAsUser", pod_sc.get("runAsUser", 0)) == 0:
        problems.append("runs as uid 0 (or uid unset)")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation not false")
    if sc.get("privileged"):
        problems.append("privileged")
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
        problems.append("capabilities: want drop [ALL] and nothing added")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append("seccompProfile not RuntimeDefault")
    res = container.get("resources", {})
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in res.get(part, {}):
                problems.append(f"resources.{part}.{what} missing")
    image = container.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] and "@" not in image or image.endswith(":latest"):
        problems.append(f"image {image!r} is not pinned to a tag or digest")
    return problems
