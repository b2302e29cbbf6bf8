"""``action: rollback``: the fleet follows one tripped guard. Three processes route orders by rules
in FakeConsul's KV, with a canary that fails half its requests; the first guard to trip writes the
rollback (one compare-and-set write, annotated), every process applies it through its rule
source and stops sending to the canary; ``graylb rules undo`` brings the split back."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graylb import admin
from graylb.consul import ConsulConfig
from graylb.consul.store import ConsulKVStore
from graylb.testing import FakeConsul
from graylb.testing.http_server import WSGIServer, serve_wsgi
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)

APP = Path(__file__).with_name("guard_fleet_app.py")
KEY = "graylb/rules"
RULES = {
    "version": 1,
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
            "default": "stable",
            "routes": [
                {"name": "split", "to": [{"subset": "canary", "weight": 30}, {"subset": "stable", "weight": 70}]}
            ],
            "guard": {"canary": "canary", "window": "30s", "min_requests": 30, "action": "rollback"},
        }
    },
}


def _app(version: str, fails: Callable[[], bool]) -> Any:
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        start_response("500 Boom" if fails() else "200 OK", [("Content-Type", "text/plain")])
        return [version.encode()]

    return app


class Process:
    def __init__(self, consul: str, instances: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), consul, KEY, json.dumps(instances)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self.read() == {"ready": True}

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the process exited ({self.proc.poll()})"
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def fleet() -> Iterator[tuple[FakeConsul, list[Process]]]:
    rng, lock = random.Random(3), threading.Lock()

    def half() -> bool:
        with lock:
            return rng.random() < 0.5

    servers: list[WSGIServer] = []
    instances = {}
    for key, version, fails in (
        ("stable-a", "1.4.2", lambda: False),
        ("stable-b", "1.4.2", lambda: False),
        ("canary", "2.0.0", half),
    ):
        server = serve_wsgi(_app(version, fails))
        servers.append(server)
        instances[key] = [server.host, server.port, version]
    consul = FakeConsul().start()
    consul.kv_put(KEY, yaml.safe_dump(RULES))
    processes = []
    try:
        processes = [Process(consul.url, instances) for _ in range(3)]
        yield consul, processes
    finally:
        for p in processes:
            p.stop()
        consul.stop()
        for server in servers:
            server.stop()


def _rules_writes(consul: FakeConsul) -> list[Any]:
    return [r for r in consul.requests if r.method == "PUT" and r.path.endswith("/v1/kv/" + KEY)]


def test_one_trip_one_rollback_write_and_every_process_follows(fleet: tuple[FakeConsul, list[Process]]) -> None:
    consul, processes = fleet
    writes_before = len(_rules_writes(consul))

    def routes_in_kv() -> list[Any]:
        return list(yaml.safe_load(consul.kv_get(KEY) or b"")["services"]["orders"]["routes"])

    for _ in range(60):  # until a guard trips and writes (the canary fails half its requests)
        for p in processes:
            p.ask("send 20")
        if not routes_in_kv():
            break
    else:
        raise AssertionError("no guard tripped and wrote the rollback")

    def rolled_back_everywhere() -> bool:
        return all(p.ask("status")["routes"] == [] for p in processes)

    wait_until(rolled_back_everywhere, timeout=30, interval=0.2, message="every process to apply the rollback")
    writes = _rules_writes(consul)[writes_before:]
    assert len(writes) == 1, [w.target for w in writes]
    assert "cas=" in writes[0].target  # a compare-and-set write
    stored = yaml.safe_load(consul.kv_get(KEY) or b"")
    note = stored["services"]["orders"]["annotations"]["graylb.guard/rolled-back"]
    assert "errors" in note and ":" in note  # when, by which process, why
    for p in processes:  # nobody sends to the canary any more
        assert p.ask("send 50")["versions"] == {"1.4.2": 50}

    with ConsulKVStore(ConsulConfig(consul.url)) as store:
        admin.undo(store, KEY)

    def split_back() -> bool:
        return all(p.ask("status")["routes"] == ["split"] for p in processes)

    wait_until(split_back, timeout=30, interval=0.2, message="every process to apply the undo")
    reached = [p.ask("send 20")["versions"].get("2.0.0", 0) for p in processes]
    assert sum(reached) > 0, reached  # judged afresh: the canary takes its share again
