"""The canary guard behind real loopback servers: a canary failing (or slow) against a healthy
baseline trips the guard, which sheds it from the weighted routes at once and tells the
application; testers and pins keep reaching it unless the rules say ``testers: shed``; a change of
the service's rules or a reset brings it back. Sync and async transports from one table."""

from __future__ import annotations

import gc
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import graylb
from graylb.guard.trip import GuardTrip
from graylb.testing.http_server import WSGIServer, serve_wsgi
from tests.conftest import Sender, wait_until

CANARY, STABLE = "2.0.0", "1.4.2"


def _app(version: str, fail: Callable[[], bool], delay: float = 0.0) -> Any:
    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if delay:
            time.sleep(delay)  # the server's own work: what the client measures
        status = "500 Internal Server Error" if fail() else "200 OK"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps({"version": version}).encode()]

    return app


class Orders:
    """orders: stable x2 (healthy), canary x1 failing ``canary_errors`` of its requests."""

    def __init__(self, canary_errors: float = 0.0, canary_delay: float = 0.0, stable_delay: float = 0.0) -> None:
        rng = random.Random(5)
        lock = threading.Lock()

        def canary_fails() -> bool:
            with lock:
                return rng.random() < canary_errors

        self.servers: list[WSGIServer] = []
        self.registry = graylb.StaticDiscovery()
        for key, version, fail, delay in (
            ("stable-a", STABLE, lambda: False, stable_delay),
            ("stable-b", STABLE, lambda: False, stable_delay),
            ("canary", CANARY, canary_fails, canary_delay),
        ):
            server = serve_wsgi(_app(version, fail, delay))
            self.servers.append(server)
            self.registry.add(
                {"host": server.host, "port": server.port, "version": version, "id": key}, service="orders"
            )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _rules(**guard: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "services": {
            "orders": {
                "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
                "default": "stable",
                "routes": [
                    {
                        "name": "testers",
                        "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                        "to": [{"subset": "canary"}],
                    },
                    {"name": "split", "to": [{"subset": "canary", "weight": 30}, {"subset": "stable", "weight": 70}]},
                ],
                "guard": {"canary": "canary", "window": "30s", "min_requests": 30, **guard},
            }
        },
    }


@pytest.fixture
def trips() -> Iterator[list[GuardTrip]]:
    yield []


def _balancer(orders: Orders, trips: list[GuardTrip], **guard: Any) -> graylb.Balancer:
    balancer = graylb.Balancer(orders.registry, _rules(**guard))
    balancer.on_guard_trip(trips.append)
    return balancer


def _versions(responses: list[Any]) -> Counter[str]:
    return Counter(r.extensions["graylb"].version if hasattr(r, "extensions") else type(r).__name__ for r in responses)


def _send_until_trip(sender: Sender, trips: list[GuardTrip], limit: int = 3000) -> int:
    sent = 0
    while sent < limit:
        sender.many([("http://orders/x", {"x-user-id": f"u{sent + i}"}) for i in range(50)])
        sent += 50
        if sender.balancer.guard_view("orders").trip is not None:  # type: ignore[union-attr]
            return sent
    raise AssertionError(
        f"the guard did not trip within {limit} requests: {sender.balancer.guard_view('orders').lines()}"
    )  # type: ignore[union-attr]


def test_a_failing_canary_trips_the_guard_and_is_shed_from_the_split(
    mode: str, trips: list[GuardTrip], caplog: pytest.LogCaptureFixture
) -> None:
    orders = Orders(canary_errors=0.3)
    try:
        balancer = _balancer(orders, trips)
        sender = Sender(mode, balancer)
        with caplog.at_level(logging.WARNING, logger="graylb"):
            _send_until_trip(sender, trips)
        # Shed at once: the weighted split sends nothing new to the canary, sticky users included.
        after = sender.many([("http://orders/x", {"x-user-id": f"after-{i}"}) for i in range(200)])
        assert _versions(after) == Counter({STABLE: 200})
        # Testers keep reaching it by default: a matched route, and a version pin.
        assert _versions(sender.many([("http://orders/x", {"user-group": "beta"})] * 5)) == Counter({CANARY: 5})
        pinned = sender.one("http://orders/x", ctx=graylb.GrayContext(pins={"orders": "2.0.0"}))
        assert pinned.extensions["graylb"].version == CANARY  # type: ignore[union-attr]
        # Told: the log line with the evidence, the callback with the trip.
        line = next(r.getMessage() for r in caplog.records if "TRIPPED" in r.getMessage())
        assert "service 'orders'" in line and "errors" in line and "canary" in line and STABLE not in line.split(":")[0]
        assert wait_until(lambda: trips, timeout=10, message="the on_guard_trip callback")
        (trip,) = trips
        assert (trip.service, trip.canary, trip.baseline, trip.reason, trip.versions) == (
            "orders",
            "canary",
            "stable",
            "errors",
            (CANARY,),
        )
        assert trip.evidence and trip.summary
        # The live view says the same.
        view = balancer.guard_view("orders")
        assert view is not None and view.trip is trip and "TRIPPED" in view.lines()[0]
    finally:
        orders.stop()


def test_a_slow_canary_trips_on_latency(mode: str, trips: list[GuardTrip]) -> None:
    orders = Orders(canary_delay=0.05, stable_delay=0.001)
    try:
        balancer = _balancer(orders, trips, latency={"p99_ratio": 2.0, "min_requests": 30, "min_delta": "10ms"})
        _send_until_trip(Sender(mode, balancer), trips)
        trip = balancer.guard_view("orders").trip  # type: ignore[union-attr]
        assert trip is not None and trip.reason == "latency", trip
    finally:
        orders.stop()


def test_a_healthy_canary_does_not_trip(mode: str, trips: list[GuardTrip]) -> None:
    orders = Orders()
    try:
        balancer = _balancer(orders, trips)
        sender = Sender(mode, balancer)
        responses = sender.many([("http://orders/x", {"x-user-id": f"u{i}"}) for i in range(600)])
        assert balancer.guard_view("orders").trip is None  # type: ignore[union-attr]
        assert _versions(responses)[CANARY] > 100  # the canary kept its share
    finally:
        orders.stop()


def test_testers_shed_too_when_the_rules_say_so(trips: list[GuardTrip]) -> None:
    orders = Orders()
    try:
        balancer = _balancer(orders, trips, testers="shed")
        sender = Sender("sync", balancer)
        assert sender.one("http://orders/x", {"user-group": "beta"}).extensions["graylb"].version == CANARY  # type: ignore[union-attr]
        assert balancer.guard_trip("orders")
        assert _versions(sender.many([("http://orders/x", {"user-group": "beta"})] * 5)) == Counter({STABLE: 5})
        pinned = sender.one("http://orders/x", ctx=graylb.GrayContext(pins={"orders": "2.0.0"}))
        assert pinned.extensions["graylb"].version == STABLE  # type: ignore[union-attr]
    finally:
        orders.stop()


def test_a_trip_lasts_until_the_services_rules_change_or_a_reset(trips: list[GuardTrip]) -> None:
    orders = Orders()
    try:
        source = graylb.StaticRules(_rules())
        balancer = graylb.Balancer(orders.registry, source)
        sender = Sender("sync", balancer)
        sender.one("http://orders/x")  # routed once: the guard exists
        assert balancer.guard_trip("orders")
        assert not balancer.guard_trip("orders")  # sticky: tripped once

        def canary_share() -> int:
            return _versions(sender.many([("http://orders/x", {"x-user-id": f"u{i}"}) for i in range(100)]))[CANARY]

        assert canary_share() == 0
        other = _rules()
        other["services"]["inventory"] = {}  # another service's rules change: still tripped
        assert source.apply(other)
        assert canary_share() == 0
        changed = _rules(window="20s")  # orders' own rules change: judged afresh
        assert source.apply(changed)
        assert canary_share() > 0
        assert balancer.guard_trip("orders")
        assert canary_share() == 0
        assert balancer.guard_reset("orders")
        assert canary_share() > 0
    finally:
        orders.stop()


def test_each_process_shows_its_guard_on_gauges(trips: list[GuardTrip]) -> None:
    """graylb.guard.window.requests / .errors per side and graylb.guard.tripped: the live view of
    this process's guard, for dashboards next to every other process's."""
    from tests.integration import otel_sdk

    otel_sdk.install()
    gc.collect()  # the balancers of earlier tests (held weakly by the gauges) are gone
    orders = Orders()
    try:
        balancer = _balancer(orders, trips)
        sender = Sender("sync", balancer)

        def gauge(name: str) -> dict[str, float]:
            return {
                str(p.attributes.get("graylb.guard.side", "")): p.value
                for p in otel_sdk.points(name)
                if p.attributes["graylb.service"] == "orders"
            }

        sender.one("http://orders/x")  # routed once: the guard exists
        before = gauge("graylb.guard.window.requests")
        sender.many([("http://orders/x", {"x-user-id": f"u{i}"}) for i in range(100)])
        requests = gauge("graylb.guard.window.requests")
        assert sum(requests.values()) - sum(before.values()) == 100 and requests["canary"] > before["canary"]
        assert gauge("graylb.guard.window.errors") == {"canary": 0, "baseline": 0}
        assert gauge("graylb.guard.tripped") == {"": 0}
        balancer.guard_trip("orders")
        assert gauge("graylb.guard.tripped") == {"": 1}
        assert any(
            p.attributes == {"graylb.service": "orders", "graylb.subset": "canary", "graylb.guard.reason": "manual"}
            for p in otel_sdk.points("graylb.guard.trips")
        )
    finally:
        orders.stop()


def test_a_trip_reaches_the_webhook_of_the_rules(trips: list[GuardTrip]) -> None:
    """The rules' webhook gets the trip as JSON, off the call's thread."""
    received: list[dict[str, Any]] = []
    arrived = threading.Event()

    def hook(environ: dict, start_response: Callable) -> list[bytes]:
        received.append(json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))))
        arrived.set()
        start_response("204 No Content", [])
        return [b""]

    server = serve_wsgi(hook)
    orders = Orders()
    try:
        balancer = _balancer(orders, trips, webhook={"url": f"http://{server.host}:{server.port}/hooks/s3cret"})
        Sender("sync", balancer).one("http://orders/x")
        assert balancer.guard_trip("orders", summary="by the test")
        assert arrived.wait(10), "no webhook call"
        (body,) = received
        assert (body["service"], body["canary"], body["reason"], body["summary"]) == (
            "orders",
            "canary",
            "manual",
            "by the test",
        )
    finally:
        orders.stop()
        server.stop()


def test_a_rules_file_takes_the_fleets_rollback_once(tmp_path: Any, trips: list[GuardTrip]) -> None:
    """action: rollback with rules from a file: the file is rewritten (routes removed, annotated)
    by one compare-and-set; a second balancer's trip on the same rules writes nothing more."""
    import yaml

    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(_rules(action="rollback")))
    orders = Orders()
    first = graylb.Balancer(orders.registry, graylb.FileRuleSource(path, reload_interval=None))
    second = graylb.Balancer(orders.registry, graylb.FileRuleSource(path, reload_interval=None))
    try:
        for b in (first, second):
            Sender("sync", b).one("http://orders/x")
        assert first.guard_trip("orders", summary="first")

        def rolled_back() -> dict[str, Any] | None:
            svc = yaml.safe_load(path.read_text())["services"]["orders"]
            return svc if svc["routes"] == [] else None

        svc = wait_until(rolled_back, timeout=10, message="the rollback written to the rules file")
        assert "first" in svc["annotations"]["graylb.guard/rolled-back"]
        text = path.read_text()
        assert second.guard_trip("orders", summary="second")  # judged the same old rules
        wait_until(lambda: not any(t.name == "graylb-guard-rollback" for t in threading.enumerate()), timeout=10)
        assert path.read_text() == text  # the service changed since: nothing written
        assert (tmp_path / "rules.yaml.previous").exists()
    finally:
        first.close()
        second.close()
        orders.stop()


def test_status_in_a_process_shows_its_guard_and_a_trip_is_a_span_event(trips: list[GuardTrip]) -> None:
    """graylb.admin.status(..., balancer=) run inside the process: the rules' guard and this
    process's live view (counts, ratios, the trip); and the trip is an event on the current span."""
    import yaml
    from opentelemetry import trace

    from graylb import admin
    from graylb.testing.rule_store import MemoryRuleStore
    from tests.integration import otel_sdk

    otel_sdk.install()
    store = MemoryRuleStore()
    store.put("graylb/rules", yaml.safe_dump(_rules()))
    orders = Orders()
    try:
        balancer = graylb.Balancer(orders.registry, store.rule_source("graylb/rules"))
        Sender("sync", balancer).many([("http://orders/x", {"x-user-id": f"u{i}"}) for i in range(60)])
        report = admin.status(store, "orders", "graylb/rules", balancer=balancer)
        assert "canary guard: subset 'canary' judged against 'stable'" in report
        assert "in this process:" in report and "watching" in report and "canary " in report
        counts = [int(n) for n in re.findall(r"(?:canary|baseline)\s+(\d+) requests", report)]
        assert len(counts) == 2 and sum(counts) == 60, report
        with trace.get_tracer("test").start_as_current_span("operator") as span:
            assert balancer.guard_trip("orders", summary="by the operator")
        assert "TRIPPED (manual: by the operator)" in admin.status(store, "orders", "graylb/rules", balancer=balancer)
        (event,) = [e for e in span.events if e.name == "graylb.guard.trip"]  # type: ignore[attr-defined]
        assert event.attributes["graylb.service"] == "orders" and event.attributes["graylb.guard.reason"] == "manual"
    finally:
        orders.stop()
