"""Progressive rollouts (graylb.rollout) on an in-memory store: the plan in the document, steps by
compare-and-set, pauses counted from the store, gates, abort, completion and the rollback back to
the named baseline. (The same against FakeConsul, FakeNacos and the real Consul: tests/contract.)"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import pytest
import yaml

import graylb
from graylb import admin, rollout
from graylb.errors import GraylbError
from graylb.rules.load import parse_rules
from graylb.testing.rule_store import MemoryRuleStore
from tests.conftest import Sender

KEY = "graylb/rules"
RULES = {
    "version": 1,
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
            "default": "stable",
            "routes": [
                {
                    "name": "beta",
                    "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                    "to": [{"subset": "canary"}],
                }
            ],
        }
    },
}


@pytest.fixture
def store() -> MemoryRuleStore:
    s = MemoryRuleStore()
    s.put(KEY, yaml.safe_dump(RULES))
    return s


def _service(store: MemoryRuleStore) -> dict[str, Any]:
    return yaml.safe_load(store.get(KEY)[0] or "")["services"]["orders"]


def _weights(store: MemoryRuleStore) -> dict[str, int]:
    route = next((r for r in _service(store)["routes"] if r["name"] == rollout.ROUTE), None)
    return {t["subset"]: t["weight"] for t in route["to"]} if route else {}


def test_a_full_rollout_ends_with_the_canary_as_default_and_the_baseline_named(store: MemoryRuleStore) -> None:
    rollout.start(store, KEY, "orders", "canary", [5, 25, 50, 100], pause=0.05, by="ci")
    svc = _service(store)
    assert _weights(store) == {"canary": 5, "stable": 95}
    assert [r["name"] for r in svc["routes"]] == ["beta", "rollout"]  # testers keep precedence
    seen: list[str] = []
    assert rollout.run(store, KEY, "orders", by="runner", poll=0.01, on_tick=seen.append) == "completed"
    svc = _service(store)
    assert svc["default"] == "canary" and svc["rollout"]["baseline"] == "stable"
    assert rollout.ROUTE not in [r["name"] for r in svc["routes"]]
    actions = [(e["action"], e["step"], e["weight"]) for e in svc["rollout"]["history"]]
    assert actions == [
        ("start", 0, 5),
        ("promote", 1, 25),
        ("promote", 2, 50),
        ("promote", 3, 100),
        ("complete", 3, 100),
    ]
    assert all(e["by"] == "runner" for e in svc["rollout"]["history"][1:])
    parse_rules(store.get(KEY)[0] or "")  # the document stays valid rules throughout

    # A later rollback goes back to the named baseline, explicitly.
    change = admin.rollback(store, KEY, "orders")
    svc = _service(store)
    assert svc["default"] == "stable" and svc["routes"] == []
    assert "the baseline 'stable' of its rollout" in str(change)
    assert svc["rollout"]["history"][-1]["action"] == "rollback"


def test_the_pause_counts_from_the_store_so_a_restarted_runner_does_not_double_step(store: MemoryRuleStore) -> None:
    t0 = 1_000_000.0
    rollout.start(store, KEY, "orders", "canary", [10, 50, 100], pause=60, now=t0)
    assert rollout.tick(store, KEY, "orders", now=t0 + 30) == "waiting"  # a runner, then killed
    assert rollout.tick(store, KEY, "orders", now=t0 + 61) == "promoted"  # a new runner: the pause is over
    assert rollout.tick(store, KEY, "orders", now=t0 + 62) == "waiting"  # and the next pause starts then
    assert _weights(store) == {"canary": 50, "stable": 50}
    steps = Counter(e["step"] for e in _service(store)["rollout"]["history"] if e["action"] == "promote")
    assert steps == Counter({1: 1})


def test_two_runners_at_once_write_one_history(store: MemoryRuleStore) -> None:
    rollout.start(store, KEY, "orders", "canary", [5, 25, 50, 100], pause=0.05)
    results: list[str] = []
    runners = [
        threading.Thread(target=lambda n=n: results.append(rollout.run(store, KEY, "orders", by=f"r{n}", poll=0.005)))
        for n in range(2)
    ]
    for t in runners:
        t.start()
    for t in runners:
        t.join(30)
    assert results == ["completed", "completed"]
    moves = [(e["action"], e["step"]) for e in _service(store)["rollout"]["history"] if e["action"] != "start"]
    assert moves == [("promote", 1), ("promote", 2), ("promote", 3), ("complete", 3)]  # each once, whoever took it


def test_an_abort_sends_everything_back_to_the_baseline_at_once(store: MemoryRuleStore, fleet: Any) -> None:
    fleet.start("v1", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    rollout.start(store, KEY, "orders", "canary", [50, 100])  # manual steps
    balancer = graylb.Balancer(fleet.registry, store.rule_source(KEY))
    sender = Sender("sync", balancer)

    def versions() -> Counter[str]:
        responses = sender.many([("http://orders/x", {}) for _ in range(100)])
        return Counter(r.extensions["graylb"].version for r in responses)  # type: ignore[union-attr]

    assert versions()["2.0.0"] > 20
    rollout.abort(store, KEY, "orders", why="error budget burning")
    assert versions() == Counter({"1.4.2": 100})  # the next call after the write: one propagation
    svc = _service(store)
    assert svc["rollout"]["state"]["phase"] == "aborted" and svc["rollout"]["steps"]  # plan kept
    assert "error budget burning" in rollout.history(store, KEY, "orders")
    rollout.retry(store, KEY, "orders")
    assert _weights(store) == {"canary": 50, "stable": 50}


def test_pause_resume_promote_full_and_refusals(store: MemoryRuleStore) -> None:
    with pytest.raises(GraylbError, match="no rollout"):
        rollout.promote(store, KEY, "orders")
    rollout.start(store, KEY, "orders", "canary", [(5, 0.01), (25, None), (100, None)])
    with pytest.raises(GraylbError, match="already has a rollout progressing"):
        rollout.start(store, KEY, "orders", "canary", [50])
    rollout.pause(store, KEY, "orders")
    assert rollout.tick(store, KEY, "orders", now=10**10) == "waiting"  # paused: never due
    rollout.resume(store, KEY, "orders")
    rollout.promote(store, KEY, "orders", full=True, why="looks great")
    assert _service(store)["default"] == "canary"
    text = rollout.describe(store, KEY, "orders")
    assert "completed" in text and "looks great" in text
    with pytest.raises(GraylbError, match="completed: nothing to promote"):
        rollout.promote(store, KEY, "orders")


def test_a_gate_that_cannot_be_evaluated_holds_the_step(store: MemoryRuleStore) -> None:
    gate = {
        "name": "errors",
        "prometheus": {"url": "http://127.0.0.1:9", "query": "vector(0)", "max": 0.02, "timeout": "1s"},
    }
    t0 = 2_000_000.0
    rollout.start(store, KEY, "orders", "canary", [5, 100], pause=10, gates=[gate], now=t0)
    assert rollout.tick(store, KEY, "orders", now=t0 + 11) == "held"
    assert _weights(store) == {"canary": 5, "stable": 95}  # not advanced


def test_a_prometheus_gate_passes_or_aborts_on_the_value(store: MemoryRuleStore) -> None:
    values = {"ok": 0.001, "bad": 0.05}
    current = {"value": "ok"}

    def prometheus(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query" and "orders" in request.url.params["query"]
        value = values[current["value"]]
        return httpx.Response(
            200,
            json={
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {"graylb_service": "orders"}, "value": [0, str(value)]}],
                },
            },
        )

    client = httpx.Client(transport=httpx.MockTransport(prometheus))
    gate = {
        "name": "errors",
        "prometheus": {"url": "http://prometheus:9090", "query": 'x{graylb_service="{service}"}', "max": 0.02},
    }
    t0 = 3_000_000.0
    rollout.start(store, KEY, "orders", "canary", [5, 25, 100], pause=10, gates=[gate], now=t0)
    assert rollout.tick(store, KEY, "orders", now=t0 + 11, client=client) == "promoted"
    current["value"] = "bad"
    assert rollout.tick(store, KEY, "orders", now=t0 + 22, client=client) == "aborted"
    last = _service(store)["rollout"]["history"][-1]
    assert last["action"] == "abort" and "0.05 > max 0.02" in last["verdicts"]["errors"]


def test_a_guard_rollback_written_to_the_store_aborts_the_rollout(store: MemoryRuleStore) -> None:
    t0 = 4_000_000.0
    rollout.start(store, KEY, "orders", "canary", [5, 100], pause=600, gates=[{"name": "guard", "guard": True}], now=t0)
    digest = parse_rules(store.get(KEY)[0] or "").services["orders"].digest
    note = {"graylb.guard/rolled-back": "2099-01-01T00:00:00Z by host:1: errors: canary 9/100"}
    admin.rollback(store, KEY, "orders", expect_digest=digest, annotations=note)  # what a tripped guard writes
    svc = _service(store)
    assert svc["rollout"]["state"]["phase"] == "aborted" and svc["default"] == "stable"  # mid-pause: at once
    assert svc["rollout"]["history"][-1]["action"] == "rollback" and svc["routes"] == []
    assert rollout.tick(store, KEY, "orders", now=t0 + 1) == "done"  # the runner stops there


def test_the_cli_works_on_a_rules_file(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """--rules-file: no registry, the --key is the path (compare-and-set under a lock)."""
    from graylb.cli import main

    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES))
    common = ["--rules-file", "--key", str(path)]
    assert main(["rollout", "start", "orders", "--canary", "canary", "--steps", "10,50,100", *common]) == 0
    assert main(["rollout", "promote", "orders", *common]) == 0
    assert main(["rollout", "abort", "orders", "--why", "latency", *common]) == 0
    assert main(["rules", "history", "orders", *common]) == 0
    out = capsys.readouterr().out
    assert "step 2 of 3: 50% to the canary" in out and "-- latency" in out
    svc = yaml.safe_load(path.read_text())["services"]["orders"]
    assert svc["rollout"]["state"]["phase"] == "aborted" and svc["default"] == "stable"
    assert main(["status", "orders", *common]) == 1  # a rules file holds no instances: said, not crashed
    assert main(["rules", "undo", *common]) == 0  # undo takes back one step: the abort
    svc = yaml.safe_load(path.read_text())["services"]["orders"]
    assert svc["rollout"]["state"] == {**svc["rollout"]["state"], "phase": "progressing", "step": 1}
    assert main(["rules", "explain", str(path), "--service", "orders"]) == 0
    assert "route 'rollout' belongs to a progressive rollout" in capsys.readouterr().out


def test_a_comparison_gate_is_not_judged_at_100_percent_nor_before_the_pause_is_over(store: MemoryRuleStore) -> None:
    """At 100 % no baseline traffic is left to compare with (the canary-vs-baseline series go
    away): the gate is not judged there, rather than holding the rollout forever; and
    Prometheus is not asked while a pause runs."""
    asked: list[str] = []

    def prometheus(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["query"])
        return httpx.Response(
            200,
            json={"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0"]}]}},
        )

    client = httpx.Client(transport=httpx.MockTransport(prometheus))
    gate = {"name": "errors", "prometheus": {"url": "http://prometheus:9090", "query": "q", "max": 0.02}}
    t0 = 6_000_000.0
    rollout.start(store, KEY, "orders", "canary", [50, 100], pause=10, gates=[gate], now=t0)
    assert rollout.tick(store, KEY, "orders", now=t0 + 5, client=client) == "waiting"
    assert asked == []  # mid-pause
    assert rollout.tick(store, KEY, "orders", now=t0 + 11, client=client) == "promoted"
    assert asked == ["q"]
    assert rollout.tick(store, KEY, "orders", now=t0 + 22, client=client) == "promoted"  # 100 %: completes
    assert asked == ["q"] and _service(store)["default"] == "canary"
    last = _service(store)["rollout"]["history"][-1]
    assert last["action"] == "complete" and "not judged at 100 %" in last["verdicts"]["errors"]
