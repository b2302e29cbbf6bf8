"""monitoring/prometheus checked by promtool of both Prometheus versions (3.x built from source,
Debian's 2.42): the rule files load, the config loads, and the alert unit tests pass -- each alert
fires on a bad series, stays quiet on a healthy one and below its volume floor."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.monitoring.conftest import MONITORING

PROMETHEUS_DIR = MONITORING / "prometheus"


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("rule_file", ["recording-rules.yml", "alerts.yml"])
def test_rule_file_passes_promtool_check(promtool: str, rule_file: str) -> None:
    proc = _promtool(promtool, "check", "rules", rule_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_prometheus_config_passes_promtool_check(promtool: str) -> None:
    proc = _promtool(promtool, "check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_pass(promtool: str) -> None:
    proc = _promtool(promtool, "test", "rules", "tests/alerts-test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def _load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text())


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """No alert ships without a case where it fires and one where it must not."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in _load("tests/alerts-test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_alert_says_what_happened_and_which_graylb_command_to_run() -> None:
    for rule in _alerts():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), rule["alert"]
        runbook = annotations.get("runbook", "")
        assert "graylb " in runbook, f"{rule['alert']}: the runbook names no graylb command: {runbook!r}"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), rule["alert"]
