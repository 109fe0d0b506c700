"""The monitoring bundle (image/monitoring/): alert and recording rules checked and unit-tested
by promtool, every metric a rule or dashboard query names found on a live router's /metrics,
the Grafana dashboard checked against the fields Grafana requires, and the ServiceMonitor
checked against the Services it must select."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.metrics.http import MetricsServer
from tests.integration.test_exporter_http import STATUS
from tests.kubelet import ConfigMapVolume
from tests.policy_proxy import connect_reply
from tests.router import Router
from tests.support import HttpOrigin, free_port, http_get, wait_for
from tests.unit.metrics.test_exporter import ALL

ROOT = Path(__file__).resolve().parent.parent.parent
MONITORING = ROOT / "image" / "monitoring"
RULE_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD_FILE = MONITORING / "dashboard.json"
SERVICE_MONITOR_FILE = MONITORING / "servicemonitor.yaml"
UNIT_TESTS = sorted((MONITORING / "tests").glob("*_test.yaml"))
RUNBOOK = ROOT / "docs" / "monitoring.md"
JOB = "haproxy-egress"
PROMTOOL = shutil.which("promtool") or "promtool"

# Series Prometheus makes itself for every target, not read from /metrics.
SYNTHETIC_METRICS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Exported only under EGRESS_WEB_CONFIG_FILE; test_web_config_metrics_exist_on_a_live_endpoint
# proves they are.
WEB_CONFIG_METRICS = frozenset(
    {
        "haproxy_egress_web_config_last_reload_successful",
        "haproxy_egress_web_config_reload_failures_total",
        "haproxy_egress_web_config_last_reload_success_timestamp_seconds",
    }
)

# Exported only for routes with `tls:` (TLS origination); tests/integration/
# test_tls_origination.py reads each of them from a live router.
TLS_METRICS = frozenset(
    {
        "haproxy_egress_tls_not_after_seconds",
        "haproxy_egress_tls_client_cert_info",
        "haproxy_egress_tls_insecure_skip_verify",
        "haproxy_egress_tls_material_rejected",
        "haproxy_egress_tls_handshake_failures_total",
    }
)
# Grafana's built-in panel types (public/app/plugins/panel in Grafana 10/11); anything else
# needs a plugin, and an unknown type imports as a broken "Panel plugin not found" box.
KNOWN_PANEL_TYPES = frozenset(
    {
        "alertlist",
        "annolist",
        "barchart",
        "bargauge",
        "candlestick",
        "canvas",
        "dashlist",
        "datagrid",
        "flamegraph",
        "gauge",
        "geomap",
        "heatmap",
        "histogram",
        "logs",
        "news",
        "nodeGraph",
        "piechart",
        "row",
        "stat",
        "state-timeline",
        "status-history",
        "table",
        "text",
        "timeseries",
        "traces",
        "trend",
        "xychart",
    }
)
GRAFANA_BUILTIN_VARIABLES = frozenset(
    {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
)
# What the variables stand for when a query is checked outside Grafana.
VARIABLE_VALUES = {
    "job": JOB,
    "namespace": ".*",
    "pod": ".*",
    "route": ".*",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "3h",
}


# --- PromQL: the metric names an expression reads ---------------------------------------------

_PROMQL_TOKEN = re.compile(
    r"""
    (?P<braces>\{(?:[^}"'`]|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)*\})
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])
    |(?P<variable>\$\{?\w+\}?)
    |(?P<number>\d[\w.]*)
    |(?P<ident>[A-Za-z_:][\w:]*)
    |(?P<other>\S)
    """,
    re.VERBOSE,
)
_AGGREGATORS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Keywords followed by a parenthesised list of label names, not of expressions.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"})
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*["'`]([\w:]+)["'`]""")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects: bare selectors and `{__name__="..."}` matchers."""
    tokens = [(m.lastgroup, m.group()) for m in _PROMQL_TOKEN.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "braces":
            names.update(_NAME_MATCHER.findall(text))
        elif kind == "ident" and text.lower() in _LABEL_LIST_KEYWORDS and following == "(":
            depth = 0
            while i < len(tokens):  # skip the label list up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(tokens[i][1], 0)
                if depth == 0 and tokens[i][1] == ")":
                    break
                i += 1
        elif kind == "ident" and not (
            following == "("
            or text.lower() in _AGGREGATORS
            or text.lower() in _KEYWORDS
            or text.lower() in _LABEL_LIST_KEYWORDS
        ):
            names.add(text)
        i += 1
    return names


def test_promql_metric_names_reads_selectors_not_functions_labels_or_strings() -> None:
    expr = """
        sum by (namespace, route) (label_replace(rate(a_total{job="x", f=~"}{"}[5m] offset 1h),
          "route", "$1", "frontend", "(.*)"))
        / on (namespace) group_left (pod) max without (server) (b)
        > bool 0.05 and topk(10, c:recorded:rate5m) unless {__name__="d", x="y"}
        or time() - e{pod=~"$pod"} * 1e3 + count_values("v", f)
    """
    assert promql_metric_names(expr) == {"a_total", "b", "c:recorded:rate5m", "d", "e", "f"}
    assert promql_metric_names("vector(1) == 0") == set()


# --- the rules ---------------------------------------------------------------------------------


def rule_spec() -> dict[str, Any]:
    """The PrometheusRule's `spec`: a plain Prometheus rule file (groups)."""
    doc = yaml.safe_load(RULE_FILE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    spec: dict[str, Any] = doc["spec"]
    return spec


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_spec()["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def unit_test_dir(tmp_path: Path, spec: dict[str, Any]) -> Path:
    """The unit tests next to `rules.yaml` holding `spec`, as their rule_files expect."""
    for path in UNIT_TESTS:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec(), sort_keys=False))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rule_unit_tests_pass(tmp_path: Path) -> None:
    assert UNIT_TESTS, "no promtool unit tests in image/monitoring/tests"
    directory = unit_test_dir(tmp_path, rule_spec())
    result = promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=directory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def unit_test_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in UNIT_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_every_alert_has_a_firing_and_a_quiet_unit_test(alert: str) -> None:
    cases = [c for c in unit_test_cases() if c["alertname"] == alert]
    assert any(c["exp_alerts"] for c in cases), f"{alert}: no unit test where it fires"
    assert any(not c["exp_alerts"] for c in cases), f"{alert}: no unit test where it is quiet"


def _mutated(alert: str, **changes: str) -> dict[str, Any]:
    spec = rule_spec()
    for group in spec["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule.update(changes)
    return spec


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_unit_tests_catch_an_alert_that_never_fires(alert: str, tmp_path: Path) -> None:
    directory = unit_test_dir(tmp_path, _mutated(alert, expr="vector(1) == 0"))
    result = promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=directory)
    assert result.returncode != 0, f"{alert} never firing went unnoticed"
    assert f"alertname: {alert}," in result.stdout + result.stderr


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts() if "for" in a])
def test_unit_tests_catch_an_alert_that_fires_too_early(alert: str, tmp_path: Path) -> None:
    directory = unit_test_dir(tmp_path, _mutated(alert, **{"for": "0s"}))
    result = promtool("test", "rules", *(p.name for p in UNIT_TESTS), cwd=directory)
    assert result.returncode != 0, f"{alert} firing without its 'for' went unnoticed"


def markdown_anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_every_alert_says_what_to_do_and_links_its_runbook(alert: dict[str, Any]) -> None:
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert alert["labels"]["severity"] in {"critical", "warning"}
    assert "runbook" in annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/monitoring.md"
    assert anchor == alert["alert"].lower()
    assert anchor in markdown_anchors(RUNBOOK.read_text()), f"no runbook section for {anchor}"


def test_every_rule_selects_the_service_monitors_job() -> None:
    selectors = re.compile(r"\b(haproxy_[\w]+|up)\{([^}]*)\}")
    for rule in rules():
        found = selectors.findall(rule["expr"])
        for name, matchers in found:
            assert f'job="{JOB}"' in matchers, f"{rule}: {name} not restricted to job {JOB}"
        # Recording-rule inputs carry the job already; everything else must name it.
        assert found or ":" in rule["expr"], rule


# --- the dashboard -----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def variable_query(var: dict[str, Any]) -> str:
    """The PromQL inside a query variable (`label_values(EXPR, label)` gives EXPR)."""
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    return match.group(1) if match else query


def dashboard_queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panels, query variables, annotations."""
    queries = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    queries += [variable_query(v) for v in doc["templating"]["list"] if v["type"] == "query"]
    queries += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    return queries


def substitute(query: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLE_VALUES.get(m.group(1), m.group(0)), query)


def test_dashboard_has_the_fields_grafana_requires() -> None:
    doc = dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", doc["uid"])
    assert doc["title"]
    assert isinstance(doc["schemaVersion"], int)
    assert doc["schemaVersion"] >= 36
    assert isinstance(doc["version"], int)
    assert doc["time"].keys() >= {"from", "to"}
    assert isinstance(doc["tags"], list)
    assert isinstance(doc["editable"], bool)
    assert isinstance(doc["annotations"]["list"], list)
    assert "id" not in doc or doc["id"] is None, "a fixed id would overwrite another dashboard"
    names = [v["name"] for v in doc["templating"]["list"]]
    assert len(names) == len(set(names))
    assert {"datasource", "namespace", "pod", "route"} <= set(names)
    datasource = next(v for v in doc["templating"]["list"] if v["name"] == "datasource")
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_dashboard_panels_are_known_types_on_a_valid_grid() -> None:
    doc = dashboard()
    all_panels = list(panels(doc))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels:
        assert panel["type"] in KNOWN_PANEL_TYPES, f"{panel['title']}: unknown {panel['type']}"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "hwxy"), panel["title"]
        assert min(grid["w"], grid["h"]) >= 1, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for i, a in enumerate(all_panels):
        for b in all_panels[i + 1 :]:
            assert not _overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_dashboard_queries_use_the_datasource_and_defined_variables() -> None:
    doc = dashboard()
    defined = {v["name"] for v in doc["templating"]["list"]} | GRAFANA_BUILTIN_VARIABLES
    for panel in panels(doc):
        if panel["type"] in {"row", "text"}:
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
    for query in dashboard_queries(doc):
        used = set(re.findall(r"\$\{?(\w+)\}?", query))
        assert used <= defined, f"undefined variables {used - defined} in {query}"
        assert 'job="$job"' in query, f"not restricted to the router's job: {query}"


def test_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    """Each query, variables filled in, as a recording rule: promtool parses it for real."""
    queries = dashboard_queries(dashboard())
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query_{i}", "expr": substitute(q)} for i, q in enumerate(queries)
        ],
    }
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    result = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


# --- every queried metric exists on a live router ----------------------------------------------


@pytest.fixture(scope="module")
def live_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names on /metrics of a real router: an HTTP route, a TCP route with a dead
    second destination, an allow_from route and a proxy route, after some traffic on each."""
    tmp = tmp_path_factory.mktemp("monitoring")
    origin = HttpOrigin("origin-a").start()
    volume = ConfigMapVolume(tmp / "configmap")
    api, db, blocked, web = free_port(), free_port(), free_port(), free_port()
    dead = free_port()
    volume.write(
        {
            "routes.yaml": {
                "routes": [
                    {
                        "name": "api",
                        "listen": f"127.0.0.1:{api}",
                        "mode": "http",
                        "destinations": [f"127.0.0.1:{origin.port}"],
                    },
                    {
                        "name": "db",
                        "listen": f"127.0.0.1:{db}",
                        "destinations": [f"127.0.0.1:{origin.port}", f"127.0.0.1:{dead}"],
                    },
                    {
                        "name": "blocked",
                        "listen": f"127.0.0.1:{blocked}",
                        "allow_from": ["127.0.0.2/32"],
                        "destinations": [f"127.0.0.1:{origin.port}"],
                    },
                    {
                        "name": "web",
                        "listen": f"127.0.0.1:{web}",
                        "mode": "proxy",
                        "policy": ["127.0.0.0/8"],
                    },
                ]
            }
        }
    )
    router = Router(tmp / "router", config_dir=volume.directory)
    try:
        router.start()
        for _ in range(3):
            assert http_get(api) == "origin-a"
            with pytest.raises(ConnectionError):  # refused: 127.0.0.1 is not in allow_from
                http_get(blocked, timeout=2)
        # A CONNECT the policy denies (no rule allows it; an IP literal: no DNS, nor a
        # connection): the proxy route's decision and per-destination counters.
        assert connect_reply(web, "192.0.2.1:443").startswith(b"HTTP/1.1 403 ")
        wait_for(lambda: router.metric("haproxy_server_up", {"backend": "db"}) is not None, 10)
        text = requests.get(router.url("/metrics"), timeout=5).text
    finally:
        router.stop()
        origin.stop()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def queried_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is queried, for every rule and dashboard query."""
    where: dict[str, set[str]] = {}
    for rule in rules():
        for name in promql_metric_names(rule["expr"]):
            where.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for query in dashboard_queries(dashboard()):
        for name in promql_metric_names(query):
            where.setdefault(name, set()).add("dashboard")
    return where


def test_every_queried_metric_exists_on_a_live_router(live_metric_names: set[str]) -> None:
    where = queried_metric_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    missing = {
        name: sorted(users)
        for name, users in where.items()
        if name
        not in live_metric_names | recorded | SYNTHETIC_METRICS | WEB_CONFIG_METRICS | TLS_METRICS
    }
    assert not missing, f"queried but not exported: {missing}"
    # The check has teeth: the extraction found the router's own metrics and haproxy's.
    assert len(where) >= 30
    assert {"haproxy_egress_route_denied_total", "haproxy_server_up", "up"} <= set(where)


# --- the ServiceMonitor and the kustomize component -----------------------------------------


def metrics_services() -> list[dict[str, Any]]:
    """The metrics Service of the kustomize base and of the template (SERVICE_MONITOR=true)."""
    base = yaml.safe_load_all((ROOT / "image" / "kubernetes" / "services.yaml").read_text())
    template = yaml.safe_load((ROOT / "image" / "openshift-template.yaml").read_text())
    services = [o for o in base if o and o["kind"] == "Service"]
    services += [o for o in template["objects"] if o["kind"] == "Service"]
    found = []
    for service in services:
        labels = {
            k: str(v).replace("${SERVICE_MONITOR}", "true")
            for k, v in service["metadata"].get("labels", {}).items()
        }
        if labels.get("app.kubernetes.io/component") == "metrics":
            found.append({**service, "metadata": {**service["metadata"], "labels": labels}})
    return found


def test_service_monitor_scrapes_both_metrics_services_as_the_rules_job() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR_FILE.read_text())
    assert monitor["kind"] == "ServiceMonitor"
    spec = monitor["spec"]
    services = metrics_services()
    assert len(services) == 2
    for service in services:
        labels = service["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), labels
        assert labels[spec["jobLabel"]] == JOB  # the job every rule and panel selects
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} <= ports
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"


def test_component_bundles_every_piece() -> None:
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert set(component["resources"]) == {SERVICE_MONITOR_FILE.name, RULE_FILE.name}
    (generator,) = component["configMapGenerator"]
    assert generator["files"] == [f"haproxy-egress.json={DASHBOARD_FILE.name}"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"


def test_web_config_metrics_exist_on_a_live_endpoint(tmp_path: Path) -> None:
    """The metrics only a web-config brings, on a real endpoint with one (basic auth)."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"p": hashed}}))
    server = MetricsServer(
        "127.0.0.1",
        0,
        CliSocket(tmp_path / "none.sock", 1.0).command,
        lambda: STATUS,
        ALL,
        web_config=web,
    )
    server.start()
    try:
        text = requests.get(
            f"http://127.0.0.1:{server.port}/metrics", auth=("p", "pw"), timeout=5
        ).text
    finally:
        server.stop()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names >= WEB_CONFIG_METRICS
