"""Metric names the alerts and the dashboard may use, and a small PromQL reader to find the names they do use.

Envoy's names are derived, not typed in: from Envoy's stat names (cited below) through the tag extraction
Istio configures in every proxy's bootstrap, then Envoy's Prometheus name sanitizing. So a name that no
gateway can export (a wrong port, a tag that Istio does not extract) is caught without a cluster.
"""

from __future__ import annotations

import re

# Envoy's HTTP ext_authz filter counters, emitted as http.<connection manager stat_prefix>.ext_authz.<name>:
# envoyproxy/envoy source/extensions/filters/http/ext_authz/ext_authz.h, ALL_EXT_AUTHZ_FILTER_STATS
# (ok, denied, error, disabled, failure_mode_allowed).
HTTP_EXT_AUTHZ_STATS = ("ok", "denied", "error", "disabled", "failure_mode_allowed")
# Istio names a gateway's HTTP connection manager stat_prefix outbound_0.0.0.0_<listener port> (istiod's
# generated listeners, e.g. statPrefix: outbound_0.0.0.0_8080). The gateway listens on 8080/8443 when
# installed by istioctl and on 80/443 from the istio/gateway Helm chart.
GATEWAY_LISTENER_PORTS = (80, 443, 8080, 8443)
# Per-cluster upstream stats (Envoy's cluster manager docs): the request time histogram in ms, timeouts.
CLUSTER_STATS = ("upstream_rq_time", "upstream_rq_timeout")
CLUSTER_HISTOGRAMS = {"upstream_rq_time"}


def authz_clusters(mesh_config: dict) -> list[str]:
    """Istio's cluster for each ext_authz provider's service: outbound|<port>||<host> (the standalone
    overlay's provider is the Service, the sidecar overlay's the ServiceEntry host egress-authz.local)."""
    return [
        f"outbound|{p['envoyExtAuthzGrpc']['port']}||{p['envoyExtAuthzGrpc']['service'].split('/', 1)[-1]}"
        for p in mesh_config["extensionProviders"]
        if "envoyExtAuthzGrpc" in p
    ]


# The tag extractors from Istio's proxy bootstrap (istio/istio tools/packaging/common/envoy_bootstrap.json,
# stats_config.stats_tags, with use_all_default_tags false), the two that apply to the names above;
# POSIX [:digit:] written as 0-9 for Python.
ISTIO_STATS_TAGS = (
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.0-9]*|[_\[\]aAbBcCdDeEfF0-9]*))\.)"),
)

# Istio's standard metrics (istio.io docs, "Istio Standard Metrics"), reported by the gateway's proxy.
ISTIO_METRICS = {"istio_requests_total", "istio_tcp_connections_opened_total"}
# kube-state-metrics (Deployment metrics) and Prometheus' own per-target series.
OTHER_METRICS = {"kube_deployment_status_replicas_available", "up"}


def envoy_stat_names(clusters: list[str]) -> list[tuple[str, bool]]:
    """(Envoy stat name, is histogram) for every stat the gateway-side queries may read."""
    names = [
        (f"http.outbound_0.0.0.0_{port}.ext_authz.{stat}", False)
        for port in GATEWAY_LISTENER_PORTS
        for stat in HTTP_EXT_AUTHZ_STATS
    ]
    names += [(f"cluster.{c}.{s}", s in CLUSTER_HISTOGRAMS) for c in clusters for s in CLUSTER_STATS]
    return names


def envoy_prometheus_series(stat: str) -> tuple[str, dict[str, str]]:
    """The Prometheus name and tag labels Envoy exports for `stat` under Istio's stats tags.

    Envoy's tag extraction takes the regex's second capture group as the tag's value and removes the first
    from the name; the rest becomes envoy_<name> with every character outside [a-zA-Z0-9_] replaced by `_`.
    """
    labels = {}
    for tag, regex in ISTIO_STATS_TAGS:
        m = re.search(regex, stat)
        if m:
            labels[tag] = m.group(2)
            stat = stat[: m.start(1)] + stat[m.end(1):]
    return "envoy_" + re.sub(r"[^a-zA-Z0-9_]", "_", stat), labels


def envoy_metric_names(clusters: list[str]) -> set[str]:
    out = set()
    for stat, histogram in envoy_stat_names(clusters):
        name, _ = envoy_prometheus_series(stat)
        out |= {name + s for s in ("_bucket", "_sum", "_count")} if histogram else {name}
    return out


# ----------------------------------------------------------------------------------------- PromQL reading

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?")


def _strip(expr: str) -> str:
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations, $__rate_interval
    return re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers with braces or "") of every vector selector in `expr`."""
    out = []
    for m in _SELECTOR.finditer(_strip(expr)):
        name, matchers, call = m.group(1), m.group(2) or "", m.group(3)
        if call and not matchers:
            continue  # a function or aggregation
        if name.lower() in _KEYWORDS:
            continue
        out.append((name, matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by(...)/without(...) clauses."""
    labels = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in m.group(1).split(",") if l.strip()}
    return labels
