"""The graylb command as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_RULES = ROOT / "graylb" / "demo" / "rules.yaml"


def graylb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graylb.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_validate_good_file() -> None:
    r = graylb("rules", "validate", str(DEMO_RULES))
    assert r.returncode == 0, r.stderr
    assert "orders: subsets [stable, canary]" in r.stdout and "OK" in r.stdout


def test_validate_bad_file_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        DEMO_RULES.read_text().replace("to: [{subset: canary, weight: 5}", "to: [{subset: canery, weight: 5}")
    )
    r = graylb("rules", "validate", str(bad))
    assert r.returncode == 1
    assert "services.orders.routes[1].to[0].subset: unknown subset 'canery'" in r.stderr


def test_validate_missing_file() -> None:
    r = graylb("rules", "validate", "/nonexistent/rules.yaml")
    assert r.returncode != 0 and "cannot read" in r.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-H", "user-group:beta"], "route 'beta-users', subset 'canary'"),
        (["-H", "x-user-id:alice"], "route 'five-percent'"),
        (["--lane", "feature-x"], "lane 'feature-x': instances carrying it win"),
        (["--pin", "orders=2.0.0"], "pins orders=2.0.0"),
    ],
)
def test_explain_rules_only(args: list[str], expected: str) -> None:
    r = graylb("rules", "explain", str(DEMO_RULES), "--service", "orders", *args)
    assert r.returncode == 0, r.stderr
    assert expected in r.stdout


def test_explain_with_registry_lists_candidates(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "orders:\n  - {address: '10.0.0.1:8080', version: 1.4.2}\n  - {address: '10.0.0.2:8080', version: 2.0.0}\n"
    )
    r = graylb(
        "rules", "explain", str(DEMO_RULES), "-s", "orders", "-H", "user-group:beta", "--registry", str(registry)
    )
    assert r.returncode == 0, r.stderr
    assert "route 'beta-users', subset 'canary', 1 candidate(s)" in r.stdout
    assert "10.0.0.2:8080" in r.stdout and "10.0.0.1:8080" not in r.stdout
