"""A progressive rollout (graylb.rollout) gated by a real Prometheus on the kit's recording rules.

The traffic runs in its own process (rollout_traffic_app.py: orders 1.4.2 x2 and 2.0.0 behind a
Balancer whose rules come from FakeConsul KV, about 100 calls a second, graylb's metrics served
for Prometheus). Prometheus (3.x from the manifest; 1s scrape and evaluation) loads
monitoring/prometheus/recording-rules.yml as shipped. The test writes the rollout to the same
KV key and drives it with ``rollout.run``: the gate reads
``graylb_version:canary_error_ratio_excess:rate5m`` -- a canary failing 5 % of its calls is
aborted at the first step, a healthy one goes through every step to the default subset.

The gate's volume query is the canary's attempt rate (every version but the baseline's), so a
canary Prometheus has not seen yet is "unknown" (the step holds), never "pass".
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from graylb import rollout
from graylb.consul import ConsulConfig
from graylb.consul.store import ConsulKVStore
from graylb.testing import FakeConsul
from tests.conftest import wait_until
from tests.monitoring.conftest import MONITORING, program, running_prometheus, stop

pytestmark = pytest.mark.timeout(240)

KEY = "graylb/rules"
APP = Path(__file__).with_name("rollout_traffic_app.py")
REPO = Path(__file__).resolve().parents[2]
RULES = {
    "version": 1,
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
            "default": "stable",
        }
    },
}
PAUSE = 8.0
CANARY_VOLUME = (
    'graylb_version:attempts:rate5m{graylb_service="{service}", graylb_version!=""}'
    " unless on (graylb_service, graylb_version) graylb:baseline_version"
)


def _gate(url: str) -> dict[str, Any]:
    return {
        "name": "errors",
        "prometheus": {
            "url": url,
            "query": 'graylb_version:canary_error_ratio_excess:rate5m{graylb_service="{service}"}',
            "max": 0.02,
            "volume_query": CANARY_VOLUME,
            "min_volume": 0.1,
        },
    }


@dataclass
class Setup:
    store: ConsulKVStore
    prometheus: str

    def service(self) -> dict[str, Any]:
        text = self.store.get(KEY)[0]
        return dict(yaml.safe_load(text or "")["services"]["orders"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body.get("status") == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextmanager
def _traffic(consul: str, failure: float, directory: Path) -> Iterator[str]:
    """Start rollout_traffic_app.py; ``host:port`` of its /metrics while it runs."""
    log_path = directory / "traffic.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(APP), "--consul", consul, "--key", KEY, "--canary-failure", str(failure)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, f"the traffic process exited: {log_path.read_text()[-3000:]}"
        yield f"127.0.0.1:{json.loads(line)['metrics_port']}"
        assert proc.poll() is None, f"the traffic process died: {log_path.read_text()[-3000:]}"
        proc.stdin.close()  # asks it to stop
        proc.wait(timeout=15)
        assert proc.returncode == 0, log_path.read_text()[-3000:]
    finally:
        stop(proc)


@contextmanager
def _prometheus(target: str, directory: Path) -> Iterator[str]:
    shutil.copy(MONITORING / "prometheus" / "recording-rules.yml", directory)
    with running_prometheus(
        program("prometheus")["binary"], directory, target, ["recording-rules.yml"], "graylb-rollout"
    ) as url:
        yield url


@contextmanager
def _running(failure: float, directory: Path) -> Iterator[Setup]:
    """FakeConsul with the rules, the traffic process, Prometheus scraping it; yields once
    Prometheus knows the baseline (the default subset's version) with traffic on it."""
    program("prometheus")  # skip (fail in CI) before starting anything
    consul = FakeConsul().start()
    try:
        consul.kv_put(KEY, yaml.safe_dump(RULES))
        with (
            _traffic(consul.url, failure, directory) as target,
            _prometheus(target, directory) as url,
            ConsulKVStore(ConsulConfig(consul.url)) as store,
        ):
            setup = Setup(store, url)

            def baseline_measured() -> bool:
                versions = {
                    s["metric"].get("graylb_version")
                    for s in setup.query('graylb:baseline_version{graylb_service="orders"}')
                }
                volume = setup.query('graylb_service:baseline_attempts:rate5m{graylb_service="orders"} > 0')
                return versions == {"1.4.2"} and bool(volume)

            wait_until(baseline_measured, timeout=60, interval=0.5, message="Prometheus to measure the baseline")
            yield setup
    finally:
        consul.stop()


def _run_rollout(setup: Setup, timeout: float) -> str:
    """``rollout.run`` in a thread until the rollout ends; its final phase."""
    stop = threading.Event()
    outcome: list[Any] = []

    def runner() -> None:
        try:
            outcome.append(rollout.run(setup.store, KEY, "orders", by="gate-test", poll=0.5, stop=stop))
        except BaseException as exc:  # reported by the test thread
            outcome.append(exc)

    thread = threading.Thread(target=runner, name="rollout-runner", daemon=True)
    thread.start()
    try:
        thread.join(timeout)
    finally:
        stop.set()
        thread.join(15)
    assert outcome, f"the rollout did not end within {timeout}s:\n{rollout.describe(setup.store, KEY, 'orders')}"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return str(outcome[0])


def test_a_failing_canary_is_aborted_by_the_prometheus_gate(tmp_path: Path) -> None:
    with _running(0.05, tmp_path) as setup:
        # No call has reached the canary yet: Prometheus has no canary series, and the gate
        # says "unknown" (the step would hold) -- not "pass".
        before = {"state": {"step_started": "2000-01-01T00:00:00.000000Z"}, "gates": [_gate(setup.prometheus)]}
        [verdict] = rollout.evaluate_gates("orders", setup.service(), before)
        assert verdict.result == "unknown", verdict
        rollout.start(setup.store, KEY, "orders", "canary", [20, 50, 100], pause=PAUSE, gates=[_gate(setup.prometheus)])
        phase = _run_rollout(setup, timeout=120)
        svc = setup.service()
        events = svc["rollout"]["history"]
        assert phase == "aborted", rollout.history(setup.store, KEY, "orders")
        assert [(e["action"], e["step"]) for e in events] == [("start", 0), ("abort", 0)], events
        text = events[-1]["verdicts"]["errors"]
        found = re.fullmatch(r"fail: (\S+) > max 0\.02", text)
        assert found and float(found[1]) > 0.02, text
        assert "errors: fail" in events[-1]["why"]
        assert svc["default"] == "stable"
        assert rollout.ROUTE not in [r.get("name") for r in svc.get("routes") or []]


def test_a_healthy_canary_completes(tmp_path: Path) -> None:
    with _running(0.0, tmp_path) as setup:
        rollout.start(setup.store, KEY, "orders", "canary", [20, 50, 100], pause=PAUSE, gates=[_gate(setup.prometheus)])
        phase = _run_rollout(setup, timeout=150)
        svc = setup.service()
        events = svc["rollout"]["history"]
        assert phase == "completed", rollout.history(setup.store, KEY, "orders")
        moves = [(e["action"], e["step"], e["weight"]) for e in events]
        assert moves == [("start", 0, 20), ("promote", 1, 50), ("promote", 2, 100), ("complete", 2, 100)], events
        for event in events[1:]:
            assert event["verdicts"]["errors"].startswith("pass: "), event
        assert svc["default"] == "canary"
        assert rollout.ROUTE not in [r.get("name") for r in svc.get("routes") or []]
        # The canary really took traffic (the gate judged measured calls, not an empty window).
        canary = setup.query('graylb_version:attempts:rate5m{graylb_service="orders", graylb_version="2.0.0"} > 0')
        assert canary, "no canary attempts in Prometheus"
