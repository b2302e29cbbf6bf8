"""``graylb rules explain FILE -s SERVICE --consul URL`` / ``--nacos URL``: the decision on the
instances the registry lists right now, run as a user runs it (a subprocess over HTTP to the
fakes). Exit 1 when the explained call would fail, so a script can gate a push on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graylb.testing.fake_consul import FakeConsul
from graylb.testing.fake_nacos import FakeNacos

ROOT = Path(__file__).resolve().parents[2]
RULES = """
services:
  orders:
    subsets:
      stable: {version: v1}
      canary: {version: v2}
      next: {version: "^3"}
    default: stable
    routes:
      - name: beta-users
        match: [{headers: {user-group: beta}}]
        to: [{subset: canary}]
      - name: next-testers
        match: [{headers: {user-group: next}}]
        to: [{subset: next}]
    fallback: fail
"""


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fake: Any = FakeConsul().start() if kind == "consul" else FakeNacos().start()

    def register(self, ip: str, port: int, version: str) -> None:
        if self.kind == "consul":
            self.fake.register("orders", id=f"orders-{ip}-{port}", address=ip, port=port, meta={"version": version})
        else:
            self.fake.register("orders", ip, port, metadata={"version": version})

    def explain(self, rules: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}
        flag = f"--{self.kind}"
        cmd = [
            sys.executable,
            "-m",
            "graylb.cli",
            "rules",
            "explain",
            str(rules),
            "-s",
            "orders",
            flag,
            url or self.fake.url,
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    reg = Registry(request.param)
    reg.register("10.0.0.1", 8080, "v1")
    reg.register("10.0.0.2", 8080, "v1")
    reg.register("10.0.0.3", 8080, "v2")
    yield reg
    reg.fake.stop()


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def test_explain_shows_the_live_candidates(registry: Registry, rules: Path) -> None:
    r = registry.explain(rules, "-H", "user-group:beta")
    assert r.returncode == 0, r.stderr
    assert "route 'beta-users' matches" in r.stdout
    assert "=> route 'beta-users', subset 'canary', 1 candidate(s)" in r.stdout
    assert "10.0.0.3:8080" in r.stdout and "version=v2" in r.stdout
    assert f"3 instance(s) of 'orders' from {registry.kind} at " in r.stderr
    # The subset written for labels nobody uses is named, with what is on offer.
    assert "subset 'next' {version: ^3} matches none of: v1 x2, v2" in r.stdout


def test_explain_exits_1_when_the_call_would_fail(registry: Registry, rules: Path) -> None:
    r = registry.explain(rules, "-H", "user-group:next")
    assert r.returncode == 1
    assert "=> FAILS: no instance available for service 'orders' subset 'next'" in r.stdout
    pinned = registry.explain(rules, "--pin", "orders=v3")
    assert pinned.returncode == 1 and "a pin that matches: orders=v1, orders=v2" in pinned.stdout
    assert registry.explain(rules, "--pin", "orders=2").returncode == 0


def test_explain_against_an_unreachable_registry_says_so(registry: Registry, rules: Path) -> None:
    registry.fake.stop()
    r = registry.explain(rules, "--timeout", "5")
    assert r.returncode == 1
    assert f"no snapshot of 'orders' from {registry.kind} at " in r.stderr


def test_status_names_a_subset_that_selects_nothing(registry: Registry, rules: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "graylb.cli", *args, f"--{registry.kind}", registry.fake.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)

    pushed = cli("rules", "push", str(rules), "--key", "graylb-rules")
    assert pushed.returncode == 0, pushed.stderr
    r = cli("status", "orders", "--key", "graylb-rules")
    assert r.returncode == 0, r.stderr
    assert "    stable: 2 routable" in r.stdout and "    canary: 1 routable" in r.stdout
    assert "    next: 0 routable — SELECTS NOTHING: {version: ^3} matches none of: v1 x2, v2" in r.stdout
    assert "route 'beta-users' when header user-group == 'beta'" in r.stdout
