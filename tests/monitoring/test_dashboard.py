"""monitoring/grafana/graylb-dashboard.json: the Grafana dashboard of a gray release.

Offline checks: the JSON is a dashboard Grafana imports and that follows its ``datasource`` and
``service`` variables; its queries cover the signals of a gray release (per-version attempts,
errors and latency, live split against the configured weights, retries, fallbacks, ejections,
registry snapshot age); every metric a query names is one graylb exports or a rule of
monitoring/prometheus/recording-rules.yml records; and promtool (each Prometheus version the
cache has) parses every query. Whether each query returns data from a Prometheus scraping graylb
is checked against a live server elsewhere.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import MONITORING

DASHBOARD = MONITORING / "grafana" / "graylb-dashboard.json"
RECORDING_RULES = MONITORING / "prometheus" / "recording-rules.yml"

DATASOURCE = "${datasource}"
#: Variables a query may use, and what they become for promtool.
ALLOWED_VARIABLES = {"service": "orders", "__rate_interval": "1m", "__range": "1h", "__interval": "15s"}

#: graylb's raw metrics under their Prometheus names (OpenTelemetry Prometheus exporter).
_HISTOGRAMS = ("http_client_request_duration_seconds", "rpc_client_call_duration_seconds")
_HISTOGRAMS += ("graylb_client_call_duration_seconds",)
RAW_METRICS = {f"{h}_{suffix}" for h in _HISTOGRAMS for suffix in ("bucket", "count", "sum")} | {
    "graylb_client_calls_total",
    "graylb_client_retries_total",
    "graylb_client_fallbacks_total",
    "graylb_outlier_ejections_total",
    "graylb_subset_empty_total",
    "graylb_rules_rejected_total",
    "graylb_registry_snapshot_age_seconds",
    "graylb_route_weight",
    "graylb_subset_instances",
}
OTHER_METRICS = {"ALERTS"}  # Prometheus' own series of the alerts in alerts.yml
RAW_PREFIXES = ("graylb_", "http_client_", "rpc_client_")

# PromQL words that are not metric names (functions are recognised by the "(" that follows them).
PROMQL_WORDS = {
    *("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"),
    *("bool", "offset", "inf", "nan"),
    *("sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile"),
    *("count_values", "limitk", "limit_ratio"),
}
_STR = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_MATCHERS = rf"\{{(?:[^{{}}\"'`]|{_STR})*\}}"
# One PromQL token of interest, leftmost first: strings, label lists and ranges are skipped whole,
# so neither label names nor variables inside them read as metric names.
_TOKEN = re.compile(
    rf"(?P<string>{_STR})"
    r"|(?P<labels>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\))"
    r"|(?P<range>\[[^\[\]]*\])"
    rf"|(?<![\w.$])(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?P<matchers>{_MATCHERS})?(?P<call>\s*\()?"
    rf"|(?P<bare>{_MATCHERS})"
)
_SERVICE_MATCHER = re.compile(r'graylb_service\s*=~?\s*"\$service\|?"')
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")

# -- reading the dashboard -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    return [(p, t) for p in query_panels(dashboard) for t in p.get("targets", [])]


def substitute(expr: str) -> str:
    """``expr`` as Prometheus gets it from Grafana, with example values for the variables."""
    for name, value in sorted(ALLOWED_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of each series selector of a PromQL expression; the name is
    "" for a bare ``{...}`` selector, the matchers "" for a bare name."""
    found = []
    for token in _TOKEN.finditer(expr):
        if token["bare"]:
            found.append(("", token["bare"]))
        elif token["name"] and not token["call"]:
            if token["name"].lower() not in PROMQL_WORDS:
                found.append((token["name"], token["matchers"] or ""))
            elif token["matchers"]:  # `or {__name__="..."}`: the keyword is no name of the selector
                found.append(("", token["matchers"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded rule) names a PromQL expression selects."""
    return {name for name, _ in selectors(expr) if name}


def recorded_rules() -> set[str]:
    doc = yaml.safe_load(RECORDING_RULES.read_text(encoding="utf-8"))
    return {rule["record"] for group in doc["groups"] for rule in group["rules"] if "record" in rule}


def names_by_panel(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> the metric names its queries select."""
    used: dict[str, set[str]] = {}
    for panel, target in targets(dashboard):
        used.setdefault(panel["title"], set()).update(metric_names(target["expr"]))
    return used


def test_promql_reader() -> None:
    """The reader the checks below rely on: label names, functions, keywords, strings and
    variables are not metrics, and each selector keeps its own matchers."""
    expr = (
        'sum by (graylb_version) (rate(graylb_client_retries_total{graylb_service="$service", '
        'error_type=~"a|b}"}[$__rate_interval])) / on (graylb_service) group_left () '
        "histogram_quantile(0.99, graylb_version:attempt_duration_seconds_bucket:rate5m) > 0 "
        'or ALERTS{alertname=~"Graylb.*"} unless graylb_route_weight offset 5m '
        'or {__name__="graylb_subset_instances"}'
    )
    assert selectors(expr) == [
        ("graylb_client_retries_total", '{graylb_service="$service", error_type=~"a|b}"}'),
        ("graylb_version:attempt_duration_seconds_bucket:rate5m", ""),
        ("ALERTS", '{alertname=~"Graylb.*"}'),
        ("graylb_route_weight", ""),
        ("", '{__name__="graylb_subset_instances"}'),
    ]
    assert metric_names(expr) == {
        "graylb_client_retries_total",
        "graylb_version:attempt_duration_seconds_bucket:rate5m",
        "ALERTS",
        "graylb_route_weight",
    }


# -- 1. structure ----------------------------------------------------------------------------


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "graylb-gray-release"
    assert dashboard["title"] == "graylb \u2014 gray release"
    assert "graylb" in dashboard["tags"]
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"]["from"] == "now-30m"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    # an exported dashboard carries no instance id: Grafana assigns one on import
    assert dashboard.get("id") is None


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None, "no `datasource` variable"
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"

    service = variables.get("service")
    assert service is not None, "no `service` variable"
    assert service["type"] == "query"
    assert service["datasource"] == {"type": "prometheus", "uid": DATASOURCE}
    query = service["query"]["query"] if isinstance(service["query"], dict) else service["query"]
    assert re.fullmatch(
        r"label_values\(\s*(graylb_route_weight|graylb_client_calls_total)\s*,\s*graylb_service\s*\)", query
    ), query
    # the panels match graylb_service="$service": one service at a time, no "All"
    assert not service.get("multi") and not service.get("includeAll")


def test_every_panel_queries_prometheus_through_the_variable(dashboard: dict[str, Any]) -> None:
    panels = query_panels(dashboard)
    assert panels, "the dashboard has no panels"
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), f"{where}: no title"
        assert panel.get("datasource") == {"type": "prometheus", "uid": DATASOURCE}, where
        assert panel.get("targets"), f"{where}: no query"
        for target in panel["targets"]:
            assert target.get("datasource") == {"type": "prometheus", "uid": DATASOURCE}, where
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{where}: empty expr"


def test_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [p.get("id") for p in all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in query_panels(dashboard):
        refs = [t.get("refId") for t in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), f"panel {panel['title']!r}: refIds {refs}"


def test_layout_fits_the_grid_without_overlaps(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:  # top-level: Grafana lays these out (collapsed rows hold the rest)
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r} at x={x} y={y}"


def test_every_query_follows_the_service_variable(dashboard: dict[str, Any]) -> None:
    """Every selector of graylb's series is narrowed to the chosen service; ALERTS need not be
    (the alerts without a service label belong on every service's page)."""
    for panel, target in targets(dashboard):
        expr = target["expr"]
        found = selectors(expr)
        assert found, f"{panel['title']!r}: no series selector in {expr}"
        for name, matchers in found:
            if name in OTHER_METRICS:
                continue
            assert _SERVICE_MATCHER.search(matchers), (
                f"{panel['title']!r} {target['refId']}: {name}{matchers} ignores $service in {expr}"
            )


def test_queries_use_only_grafana_variables_we_substitute(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        found = {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(target["expr"])}
        unknown = found - set(ALLOWED_VARIABLES)
        assert not unknown, f"{panel['title']!r} uses {sorted(unknown)}: {target['expr']}"


def test_per_version_panels_have_a_version_legend(dashboard: dict[str, Any]) -> None:
    for panel, target in targets(dashboard):
        if any(n.startswith("graylb_version:") for n in metric_names(target["expr"])):
            assert "{{graylb_version}}" in target.get("legendFormat", ""), f"{panel['title']!r} {target['refId']}"


# -- 2. coverage -----------------------------------------------------------------------------

REQUIRED_SIGNALS = {
    "attempts per version": {"graylb_version:attempts:rate5m"},
    "error ratio per version": {"graylb_version:attempt_error_ratio:rate5m"},
    "latency p50 and p99 per version": {
        "graylb_version:attempt_duration_seconds:p50_5m",
        "graylb_version:attempt_duration_seconds:p99_5m",
    },
    "live split next to the configured weight": {"graylb_route_subset:calls:share5m", "graylb_route_weight"},
    "share of calls per version": {"graylb_version:calls:share5m"},
    "canary against baseline": {
        "graylb_version:canary_error_ratio_excess:rate5m",
        "graylb_version:canary_p99_ratio:rate5m",
    },
    "retries, fallbacks, ejections": {
        "graylb_client_retries_total",
        "graylb_client_fallbacks_total",
        "graylb_outlier_ejections_total",
    },
    "registry snapshot age": {"graylb_registry_snapshot_age_seconds"},
    "instances per subset": {"graylb_subset_instances"},
}


@pytest.mark.parametrize("signal", sorted(REQUIRED_SIGNALS))
def test_covers(dashboard: dict[str, Any], signal: str) -> None:
    """Each signal's metrics are charted together, in one panel."""
    wanted = REQUIRED_SIGNALS[signal]
    by_panel = names_by_panel(dashboard)
    assert any(wanted <= names for names in by_panel.values()), (
        f"no panel charts {signal} ({sorted(wanted)}); panels: { {t: sorted(n) for t, n in by_panel.items()} }"
    )


@pytest.mark.parametrize(
    ("metric", "unit"),
    [
        ("graylb_version:attempt_error_ratio:rate5m", "percentunit"),
        ("graylb_route_subset:calls:share5m", "percentunit"),
        ("graylb_route_weight", "percentunit"),
        ("graylb_version:calls:share5m", "percentunit"),
        ("graylb_version:canary_error_ratio_excess:rate5m", "percentunit"),
        ("graylb_version:attempt_duration_seconds:p99_5m", "s"),
        ("graylb_registry_snapshot_age_seconds", "s"),
    ],
)
def test_units(dashboard: dict[str, Any], metric: str, unit: str) -> None:
    """Ratios read as percentages and durations as time, in whichever panel charts them."""
    seen = False
    for panel, target in targets(dashboard):
        if metric not in metric_names(target["expr"]):
            continue
        seen = True
        effective = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            if override["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}:
                effective = next((p["value"] for p in override["properties"] if p["id"] == "unit"), effective)
        assert effective == unit, f"{panel['title']!r} {target['refId']} shows {metric} in {effective!r}"
    assert seen, f"no query charts {metric}"


# -- 3. names ----------------------------------------------------------------------------------


def test_queries_name_only_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    recorded = recorded_rules()
    assert "graylb_version:attempts:rate5m" in recorded  # the rules file is the one we think
    for panel, target in targets(dashboard):
        names = metric_names(target["expr"])
        assert names, f"{panel['title']!r}: no metric in {target['expr']}"
        for name in names:
            where = f"{panel['title']!r} {target['refId']}: {name}"
            if ":" in name:
                assert name in recorded, f"{where} is not recorded by {RECORDING_RULES.name}"
            elif name.startswith(RAW_PREFIXES):
                assert name in RAW_METRICS, f"{where} is not a metric graylb exports"
            else:
                assert name in OTHER_METRICS, f"{where} is neither graylb's nor a recorded rule"


# -- 4. syntax, by promtool --------------------------------------------------------------------


def test_promtool_parses_every_query(promtool: str, dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:panel{panel['id']}_{target['refId']}", "expr": substitute(target["expr"])}
        for panel, target in targets(dashboard)
    ]
    assert rules
    leftover = [r["expr"] for r in rules if "$" in r["expr"]]
    assert not leftover, f"variables left after substitution: {leftover}"
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "graylb-dashboard", "rules": rules}]}, sort_keys=False))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"promtool check rules: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
