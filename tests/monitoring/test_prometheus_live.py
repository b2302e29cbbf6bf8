"""A real Prometheus scraping a running graylb process with a bad canary.

The process is ``graylb demo --metrics-port N --no-checks``: orders 1.4.2 x2 and 2.0.0, 5 % of
users plus beta users on the canary, which answers 503 to 5 % of its requests (and to all of them
for its first 1.5 s). Prometheus (each version the manifest has) loads monitoring/prometheus's
rule files as shipped -- only the alerts' ``for:`` shortened to 5s and the intervals to 1s, so the
test takes seconds, not minutes -- and the test reads its HTTP API like Grafana and Alertmanager
would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.monitoring.conftest import MONITORING, PROMETHEUS_VERSIONS, free_port, program, running_prometheus, stop

pytestmark = pytest.mark.timeout(300)

BASELINE, CANARY = "1.4.2", "2.0.0"
DASHBOARD = MONITORING / "grafana" / "graylb-dashboard.json"
# What Grafana would substitute; the test's Prometheus scrapes every second.
VARIABLES = {"$service": "orders", "$__rate_interval": "1m", "$__range": "1h", "$__interval": "5s"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of the running demo's /metrics."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo") / "demo.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graylb.cli", "demo", "--metrics-port", str(port), "--no-checks", "--rate", "100"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/metrics"

    def canary_measured() -> bool:
        assert proc.poll() is None, f"the demo exited: {log_path.read_text()}"
        try:
            return f'graylb_version="{CANARY}"' in httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            return False

    try:
        wait_until(canary_measured, timeout=30, interval=0.2, message=f"the demo's {url} to show canary series")
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
    assert proc.returncode == 0, log_path.read_text()


@dataclass
class Prometheus:
    key: str
    version: str
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def firing(self) -> list[dict[str, str]]:
        alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a["labels"] for a in alerts if a["state"] == "firing"]


@pytest.fixture(scope="module", params=PROMETHEUS_VERSIONS)
def prometheus(
    request: pytest.FixtureRequest, demo: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    entry = program(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    shutil.copy(MONITORING / "prometheus" / "recording-rules.yml", directory)
    alerts = (MONITORING / "prometheus" / "alerts.yml").read_text()
    (directory / "alerts.yml").write_text(re.sub(r"^(\s*)for: \S+$", r"\1for: 5s", alerts, flags=re.MULTILINE))
    with running_prometheus(
        entry["binary"], directory, demo, ["recording-rules.yml", "alerts.yml"], "graylb-demo"
    ) as url:
        yield Prometheus(request.param, entry["version"], url)


def _versions(result: list[dict[str, Any]]) -> dict[str, float]:
    return {s["metric"].get("graylb_version", ""): float(s["value"][1]) for s in result}


def test_the_canary_error_alert_fires_and_the_baseline_shows_no_error(prometheus: Prometheus) -> None:
    def canary_alert() -> list[dict[str, str]]:
        return [a for a in prometheus.firing() if a["alertname"] == "GraylbCanaryErrorRatioHigh"]

    firing = wait_until(
        canary_alert, timeout=180, interval=0.5, message=f"GraylbCanaryErrorRatioHigh to fire on {prometheus.key}"
    )
    assert [(a["graylb_service"], a["graylb_version"], a["severity"]) for a in firing] == [
        ("orders", CANARY, "critical")
    ]
    # The baseline is what the rules' default subset selects, and it failed nothing.
    assert set(_versions(prometheus.query('graylb:baseline_version{graylb_service="orders"}'))) == {BASELINE}
    ratios = _versions(prometheus.query('graylb_version:attempt_error_ratio:rate5m{graylb_service="orders"}'))
    assert ratios[BASELINE] == 0.0, ratios
    assert ratios[CANARY] > 0.02, ratios
    assert not [a for a in prometheus.firing() if a.get("graylb_version") == BASELINE]


def _dashboard_queries() -> list[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    out = []
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            if expr:
                out.append((f"{panel['title']} [{target.get('refId')}]", expr))
    return out


def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    """Each panel query, as Grafana would send it for service orders, answers with series; the
    per-version panels answer for both versions."""
    queries = _dashboard_queries()
    assert len(queries) >= 10
    for title, expr in queries:
        per_version = ("graylb_version:attempt" in expr or "graylb_version:calls" in expr) and "canary" not in expr

        def answered(expr: str = expr, per_version: bool = per_version) -> list[dict[str, Any]] | None:
            result = prometheus.query(expr)
            if not result or (per_version and not {BASELINE, CANARY} <= set(_versions(result))):
                return None
            return result

        wait_until(answered, timeout=120, interval=0.5, message=f"panel {title!r} on {prometheus.key}: {expr}")
