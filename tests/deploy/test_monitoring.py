"""The monitoring bundle: PrometheusRule alerts, the gateway's stats and access log, the Grafana dashboard.

promtool checks and unit-tests the rules; a real Prometheus scrapes the real egress-authz after a few Checks,
so every egress-authz series and label the rules and the dashboard use is shown to exist. Envoy's names are
derived from Envoy's stat names and Istio's stats tags (monitoring_names.py).

Needs promtool and prometheus (Debian package `prometheus`) and grpcurl (both: scripts/install.sh
prometheus grpcurl) and the egress-authz binary (EGRESS_AUTHZ_BIN). Missing tools skip these tests
locally and fail them when EGRESS_AUTHZ_REQUIRE_TOOLS=1 or CI is set, as scripts/test.sh does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

import checks
import monitoring_names as names
from conftest import DEPLOY, OVERLAYS, ROOT, kustomize_with_components, load_yaml_docs

ALERTS = DEPLOY / "components" / "alerts"
ACCESS_LOG = DEPLOY / "components" / "gateway-access-log"
SERVICEMONITOR = DEPLOY / "components" / "servicemonitor"
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
FIXTURES = Path(__file__).parent / "monitoring"
# Labels that Kubernetes service discovery adds to every scraped series; the test's static target sets them.
TARGET_LABELS = {"namespace": "istio-system", "pod": "egress-authz-test"}
# Upper bound for anything the test waits on; every wait polls a condition.
WAIT_S = 60


def need_tool(path: str | None, what: str) -> str:
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return path
    msg = f"{what} not found (scripts/install.sh prometheus grpcurl, EGRESS_AUTHZ_BIN)"
    if os.environ.get("EGRESS_AUTHZ_REQUIRE_TOOLS") or os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def promtool() -> str:
    return need_tool(shutil.which("promtool"), "promtool")


def prometheus_bin() -> str:
    return need_tool(shutil.which("prometheus"), "prometheus")


def grpcurl_bin() -> str:
    return need_tool(os.environ.get("GRPCURL_BIN") or str(ROOT / ".tools" / "grpcurl"), "grpcurl")


def egress_authz_bin() -> str:
    path = Path(os.environ.get("EGRESS_AUTHZ_BIN", "target/debug/egress-authz"))
    return need_tool(str(path if path.is_absolute() else ROOT / path), "the egress-authz binary")


def prometheus_rule() -> dict:
    (rule,) = load_yaml_docs(ALERTS / "prometheusrule.yaml")
    return rule


def rule_groups() -> list[dict]:
    return prometheus_rule()["spec"]["groups"]


def all_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in all_rules() if "record" in r}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def write_rules_file(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ rules, offline

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_alerts_component_renders_with_either_overlay(overlay, tmp_path):
    objs = kustomize_with_components(tmp_path, DEPLOY / "overlays" / overlay, [SERVICEMONITOR, ALERTS, ACCESS_LOG])
    rule = checks.one(objs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "istio-system"
    filt = checks.one([o for o in objs if o["metadata"]["name"] == "egress-authz-access-log"], "EnvoyFilter")
    assert filt["spec"]["workloadSelector"]["labels"].items() <= checks.GATEWAY_POD_LABELS.items()


def test_promtool_check_rules(tmp_path):
    proc = subprocess.run([promtool(), "check", "rules", str(write_rules_file(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_fire_and_clear_every_alert(tmp_path):
    write_rules_file(tmp_path)
    shutil.copy(FIXTURES / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    proc = subprocess.run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    tests = yaml.safe_load((FIXTURES / "alerts_test.yaml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in all_rules() if "alert" in r}
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"


def test_latency_alert_threshold_sits_below_the_providers_timeout(mesh_configs):
    """The latency alert reads Envoy's request time in ms; it must fire before the provider's timeout."""
    (rule,) = [r for r in all_rules() if r.get("alert") == "EgressAuthzCheckLatencyNearTimeout"]
    threshold_ms = float(re.search(r">\s*([0-9.]+)\s*$", rule["expr"].strip()).group(1))
    for mesh in mesh_configs.values():
        for p in mesh["extensionProviders"]:
            timeout_ms = float(p["envoyExtAuthzGrpc"]["timeout"].rstrip("s")) * 1000
            assert 0.3 * timeout_ms <= threshold_ms < timeout_ms, (p["name"], threshold_ms, timeout_ms)


# --------------------------------------------------------------------------- gateway stats and access log

def gateway_proxy_configs() -> dict[str, dict]:
    (operator,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istio-operator.yaml")
    (values,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "gateway-values.yaml")
    (gw,) = operator["spec"]["components"]["egressGateways"]
    return {
        "istio-operator": yaml.safe_load(gw["k8s"]["podAnnotations"]["proxy.istio.io/config"]),
        "gateway-values": yaml.safe_load(values["podAnnotations"]["proxy.istio.io/config"]),
    }


def test_both_gateway_install_styles_keep_the_same_stats():
    configs = gateway_proxy_configs()
    assert configs["istio-operator"] == configs["gateway-values"]


def test_gateway_stats_matcher_keeps_every_envoy_stat_the_queries_read():
    """Envoy matches inclusion regexps against the whole stat name (RE2 full match)."""
    regexps = gateway_proxy_configs()["istio-operator"]["proxyStatsMatcher"]["inclusionRegexps"]
    used = set()
    for expr in [r["expr"] for r in all_rules()] + dashboard_exprs():
        used |= {n for n, _ in names.selectors(expr) if n.startswith("envoy_")}
    for stat, histogram in names.envoy_stat_names(authz_clusters()):
        metric, _ = names.envoy_prometheus_series(stat)
        if {metric, metric + "_bucket"} & used:
            assert any(re.fullmatch(r, stat) for r in regexps), f"{stat} is read but Istio drops it"
    # and it keeps no more than ext_authz and the authz cluster: a broad regex would multiply the series
    for other in ("http.outbound_0.0.0.0_8080.downstream_rq_total", "cluster.outbound|443||example.com.upstream_rq_time"):
        assert not any(re.fullmatch(r, other) for r in regexps), other


def test_access_log_carries_the_metadata_keys_the_server_sets():
    src = (ROOT / "src" / "grpc" / "convert.rs").read_text()
    keys = dict(re.findall(r'pub const (\w+): &str = "(\w+)";', src.split("pub mod metadata_keys", 1)[1].split("}", 1)[0]))
    (filt,) = load_yaml_docs(ACCESS_LOG / "envoyfilter.yaml")
    logs = {}
    for patch in filt["spec"]["configPatches"]:
        (log,) = patch["patch"]["value"]["typed_config"]["access_log"]
        logs[patch["match"]["listener"]["filterChain"]["filter"]["name"]] = log["typed_config"]["log_format"]["json_format"]
    for filter_name, namespace in ((checks.HCM, checks.HTTP_EXT_AUTHZ), ("envoy.filters.network.tcp_proxy", checks.NETWORK_EXT_AUTHZ)):
        fmt = logs[filter_name]
        for field, key in (("authz_reason", keys["REASON"]), ("authz_rule", keys["RULE"]), ("authz_decision", keys["DECISION"])):
            assert fmt[field] == f"%DYNAMIC_METADATA({namespace}:{key})%", (filter_name, field)


# ----------------------------------------------------------------------------- names against real exports

def test_envoy_names_derive_from_istio_stats_tags():
    """The gateway's HTTP prefix stays in the name (Istio extracts only numeric/hex prefixes)."""
    assert names.envoy_prometheus_series("http.outbound_0.0.0.0_8080.ext_authz.error") == (
        "envoy_http_outbound_0_0_0_0_8080_ext_authz_error", {})
    assert names.envoy_prometheus_series("cluster.outbound|9000||egress-authz.local.upstream_rq_time") == (
        "envoy_cluster_local_upstream_rq_time", {"cluster_name": "outbound|9000||egress-authz"})


def authz_clusters() -> list[str]:
    """The egress-authz clusters of the bundle's own providers, so moving the Service is noticed here."""
    (operator,) = load_yaml_docs(DEPLOY / "istio" / "mesh" / "istio-operator.yaml")
    return names.authz_clusters(operator["spec"]["meshConfig"])


def check_names(exprs: list[str], exported: set[str], allowed_extra: set[str]) -> list[str]:
    """Problems: names nobody exports, Envoy selectors whose cluster_name no gateway exports."""
    envoy = names.envoy_metric_names(authz_clusters())
    # (name, cluster_name) pairs: Istio's tag moves part of the sidecar overlay's cluster into the name
    envoy_clusters = set()
    for stat, _ in names.envoy_stat_names(authz_clusters()):
        base, labels = names.envoy_prometheus_series(stat)
        envoy_clusters |= {(base + s, labels.get("cluster_name")) for s in ("", "_bucket", "_sum", "_count")}
    problems = []
    for expr in exprs:
        for name, matchers in names.selectors(expr):
            if name not in exported | envoy | allowed_extra:
                problems.append(f"{name} is not exported: {expr!r}")
            for value in re.findall(r'cluster_name="([^"]*)"', matchers):
                if (name, value) not in envoy_clusters:
                    problems.append(f"{name}: no gateway exports it with cluster_name={value!r}")
    return problems


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real egress-authz with rules that make every labelled series appear, after a few Checks."""
    directory = tmp_path_factory.mktemp("egress-authz")
    rules = directory / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)
    tenants = directory / "tenants"
    tenants.mkdir()
    (tenants / "payments.yaml").write_text(TENANT_RULES)
    log = open(directory / "stderr", "w+")
    proc = subprocess.Popen(
        [egress_authz_bin(), "serve", "--rules", str(rules), "--tenant-rules", str(tenants),
         "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        serving = wait_for(lambda: serving_line(directory / "stderr"), "the Serving log line", proc)
        send_checks(serving)
        yield serving
    finally:
        stop(proc)
        log.close()


RULES = """\
defaultAction: DENY
trustDomains: [cluster.local]
rules:
- name: default-to-google
  from: {namespaces: [default]}
  to: {hosts: [developers.google.com]}
- name: block-yahoo-from-default
  action: DENY
  from: {namespaces: [default]}
  to: {hosts: [developer.yahoo.com]}
- name: trial-block-google-for-default
  action: DENY
  dryRun: true
  from: {namespaces: [default]}
  to: {hosts: [developers.google.com]}
tenants:
  payments:
    allowedHosts: [api.stripe.com]
"""
# One valid tenant, so that the per-tenant series exist.
TENANT_RULES = """\
rules:
- name: checkout-to-stripe
  from: {serviceAccounts: [payments/checkout]}
  to: {hosts: [api.stripe.com]}
"""
_SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
CHECKS = [
    # allowed by rule (HTTP), where the dry-run DENY rule would deny: a disagreement
    {"source": {"principal": _SLEEP}, "tls_session": {"sni": "developers.google.com"},
     "request": {"http": {"host": "developers.google.com", "method": "GET", "path": "/"}}},
    # denied by a DENY rule
    {"source": {"principal": _SLEEP}, "tls_session": {"sni": "developer.yahoo.com"},
     "request": {"http": {"host": "developer.yahoo.com", "method": "GET", "path": "/"}}},
    # no rule matches (TCP: no HTTP request)
    {"source": {"principal": "spiffe://cluster.local/ns/other/sa/x"}, "tls_session": {"sni": "example.com"},
     "destination": {"service": "example.com"}},
]


def send_checks(serving: dict) -> None:
    for check in CHECKS:
        send_check(serving["grpc_addr"], check)


def send_check(grpc_addr: str, attributes: dict) -> None:
    proc = subprocess.run(
        [grpcurl_bin(), "-plaintext", "-max-time", "10", "-import-path", str(FIXTURES), "-proto", "check.proto",
         "-d", json.dumps({"attributes": attributes}), grpc_addr, "envoy.service.auth.v3.Authorization/Check"],
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def serving_line(path: Path) -> dict | None:
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("fields", {}).get("message") == "Serving":
            return event["fields"]
    return None


def wait_for(condition, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} while waiting for {what}")
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


def exported_names(admin_addr: str) -> set[str]:
    status, body = http_get(f"http://{admin_addr}/metrics")
    assert status == 200
    return {re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", l).group(0) for l in body.decode().splitlines()
            if l and not l.startswith("#")}


def test_dashboard_queries_name_only_exported_metrics(server):
    exported = exported_names(server["admin_addr"])
    assert "egress_authz_dry_run_total" in exported  # the rules above must make every family appear
    exprs = dashboard_exprs()
    assert exprs
    assert check_names(exprs, exported, allowed_extra=set()) == []


def test_rules_name_only_exported_metrics(server):
    exported = exported_names(server["admin_addr"])
    exprs = [r["expr"] for r in all_rules()]
    extra = names.ISTIO_METRICS | names.OTHER_METRICS | recorded_names()
    assert check_names(exprs, exported, extra) == []


def test_name_check_catches_a_misspelled_metric(server):
    exported = exported_names(server["admin_addr"])
    assert check_names(["sum(rate(egress_authz_check_total[5m]))"], exported, set())
    assert check_names(["rate(envoy_http_outbound_0_0_0_0_9090_ext_authz_error[5m])"], exported, set())
    assert check_names(['rate(envoy_cluster_upstream_rq_time_bucket{cluster_name="outbound|9000||egress-authz"}[5m])'],
                       exported, set())


# ----------------------------------------------------------------------------------- a real Prometheus

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """Prometheus on loopback scraping the server every second, with the bundle's rules loaded."""
    directory = tmp_path_factory.mktemp("prometheus")
    rules = write_rules_file(directory)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            # the ServiceMonitor's job name for the standalone Service
            "job_name": "egress-authz",
            "static_configs": [{"targets": [server["admin_addr"]], "labels": TARGET_LABELS}],
        }],
    }))
    binary = prometheus_bin()
    port = free_port()
    log = open(directory / "prometheus.log", "w+")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(base + "/-/ready")[0] == 200, "Prometheus /-/ready", proc)

        def scraped():
            status, body = http_get(base + "/api/v1/targets")
            active = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return active and all(t["health"] == "up" for t in active)

        wait_for(scraped, "the first successful scrape", proc)
        # Counters that moved before the first scrape have no rate: check again while it scrapes.
        send_checks(server)
        yield base
    finally:
        stop(proc)
        log.close()


def query(base: str, expr: str) -> list[dict]:
    status, body = http_get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    answer = json.loads(body) if body else {}
    assert status == 200 and answer.get("status") == "success", f"{expr!r}: {status} {answer}"
    return answer["data"]["result"]


def all_exprs() -> list[str]:
    return [r["expr"] for r in all_rules()] + [e.replace("$__rate_interval", "1m") for e in dashboard_exprs()]


def test_every_expression_evaluates_in_real_prometheus(prometheus):
    for expr in all_exprs():
        query(prometheus, expr)


def test_every_egress_authz_selector_returns_data(prometheus):
    """Each selector (name and label matchers) the rules and dashboard use matches a real series."""
    seen = set()
    for expr in all_exprs():
        for name, matchers in names.selectors(expr):
            if name.startswith("egress_authz_") and (name, matchers) not in seen:
                seen.add((name, matchers))
                assert query(prometheus, name + matchers), f"no series for {name}{matchers} (in {expr!r})"
    assert len(seen) >= 8


def test_grouping_labels_exist_on_the_series(prometheus):
    """by(...) labels of egress-authz expressions are labels the server exports (or the target's own)."""
    for expr in all_exprs():
        metrics = {n for n, _ in names.selectors(expr) if n.startswith("egress_authz_")}
        if not metrics:
            continue
        for label in names.grouping_labels(expr) - set(TARGET_LABELS) - {"le"}:
            assert any(query(prometheus, f'{m}{{{label}!=""}}') for m in metrics), f"{label} in {expr!r}"


def timestamp(rfc3339: str) -> datetime:
    """Prometheus' RFC 3339 times carry nanoseconds; Python reads up to microseconds."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00"))


def test_rules_load_and_evaluate_without_errors(prometheus):
    status, body = http_get(prometheus + "/api/v1/targets")
    (target,) = json.loads(body)["data"]["activeTargets"]
    scraped = timestamp(target["lastScrape"])

    # Rules evaluated before the first scrape saw no `up` yet; only evaluations after it count.
    def evaluated():
        status, body = http_get(prometheus + "/api/v1/rules")
        groups = json.loads(body)["data"]["groups"] if status == 200 else []
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(timestamp(r["lastEvaluation"]) > scraped for r in rules)
        return rules if done else None

    rules = wait_for(evaluated, "every rule's first evaluation")
    assert len(rules) == len(all_rules())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The server is up with good rules: none of the alerts about the server itself may be pending.
    active = {r["name"] for r in rules if r["type"] == "alerting" and r["state"] != "inactive"}
    assert active & {"EgressAuthzRulesReloadFailing", "EgressAuthzNoReadyReplica", "EgressAuthzRuleDigestMismatch",
                     "EgressAuthzTenantRulesRejected"} == set()


def test_recording_rules_produce_the_labels_the_dashboard_groups_by(prometheus):
    result = wait_for(lambda: query(prometheus, 'egress_authz:checks:rate5m > 0'), "a non-zero check rate")
    labels = {k for r in result for k in r["metric"]}
    assert {"decision", "reason", "protocol", "namespace", "pod"} <= labels
    reasons = {r["metric"]["reason"] for r in result}
    assert {"allowed_by_rule", "denied_by_rule", "no_matching_rule"} <= reasons
