"""Per-version metrics you can trust: every attempt is recorded against the version that
produced it, the call as a whole under its own instruments, and the events around routing
(retries, fallbacks, ejections, registry snapshot age) on counters and a gauge."""

from __future__ import annotations

import bisect
import gc
import random
import threading
import time
import weakref

import httpx
import pytest
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.metrics.http_metrics import HTTP_CLIENT_REQUEST_DURATION

import graylb
from graylb import telemetry
from graylb.served import Served
from tests.conftest import Fleet, Sender
from tests.integration import otel_sdk

ATTEMPTS = HTTP_CLIENT_REQUEST_DURATION  # "http.client.request.duration": one point per attempt
CALLS = "graylb.client.calls"


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    otel_sdk.install()


def _count(metric: str, **want: object) -> int:
    """Measurements on ``metric`` whose attributes include ``want`` (keyword names stand for the
    attribute names in _ATTRIBUTES); histogram points count their samples."""
    wanted = {_ATTRIBUTES[k]: v for k, v in want.items()}
    total = 0
    for p in otel_sdk.points(metric):
        if all(p.attributes.get(k) == v for k, v in wanted.items()):
            total += p.count if hasattr(p, "count") else p.value
    return total


_ATTRIBUTES = {
    "service": "graylb.service",
    "route": "graylb.route",
    "subset": "graylb.subset",
    "version": "graylb.version",
    "outcome": "graylb.outcome",
    "status": "graylb.status",
    "fallback_from": "graylb.fallback_from",
    "error_type": ERROR_TYPE,
    "http_status": HTTP_RESPONSE_STATUS_CODE,
}


def _canary_rules(service: str, on: tuple = (503,)) -> dict:
    return {
        "services": {
            service: {
                "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
                "default": "stable",
                "routes": [
                    {"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]}
                ],
                "retries": {"attempts": 2, "on": list(on)},
            }
        }
    }


def _assert_one_canary_error_then_stable(service: str, canary_error: str, canary_outcome: str) -> None:
    # the attempt instrument: one canary failure, one stable success -- each under its version
    assert _count(ATTEMPTS, service=service) == 2
    assert (
        _count(
            ATTEMPTS,
            service=service,
            version="2.0.0",
            subset="canary",
            route="beta",
            outcome=canary_outcome,
            error_type=canary_error,
        )
        == 1
    )
    assert (
        _count(
            ATTEMPTS,
            service=service,
            version="1.4.2",
            outcome="ok",
            status="2xx",
            http_status=200,
        )
        == 1
    )
    # the call instrument: one call, ok, served by stable in the end
    assert _count(CALLS, service=service) == 1
    assert _count(CALLS, service=service, version="1.4.2", outcome="ok") == 1
    assert _count("graylb.client.call.duration", service=service) == 1
    # the retry, charged to the version that failed
    assert _count("graylb.client.retries", service=service) == 1
    assert _count("graylb.client.retries", service=service, version="2.0.0", error_type=canary_error) == 1


def test_a_canary_503_retried_onto_stable_is_one_canary_error_and_one_stable_success(fleet: Fleet, mode: str) -> None:
    service = f"orders-503-{mode}"
    fleet.start("stable", service, "1.4.2")
    fleet.start("canary", service, "2.0.0", status=503)
    sender = Sender(mode, graylb.Balancer(fleet.registry, _canary_rules(service)))
    response = sender.one(f"http://{service}/x", {"user-group": "beta"})
    assert response.status_code == 200 and response.extensions["graylb"].attempts == 2
    _assert_one_canary_error_then_stable(service, "503", "http_5xx")
    assert _count(ATTEMPTS, service=service, version="2.0.0", status="5xx") == 1
    assert _count(ATTEMPTS, service=service, version="2.0.0", http_status=503) == 1


def test_a_canary_refusing_connections_is_one_canary_error_and_one_stable_success(fleet: Fleet, mode: str) -> None:
    service = f"orders-refused-{mode}"
    fleet.start("stable", service, "1.4.2")
    fleet.start("canary", service, "2.0.0").stop()  # registered, but its port refuses connections
    sender = Sender(mode, graylb.Balancer(fleet.registry, _canary_rules(service, on=(503, "connect-failure"))))
    response = sender.one(f"http://{service}/x", {"user-group": "beta"})
    assert response.status_code == 200 and response.extensions["graylb"].instance == "stable"
    _assert_one_canary_error_then_stable(service, "ConnectError", "error")


def test_attempt_attributes_are_bounded_and_follow_the_conventions(fleet: Fleet) -> None:
    service = "orders-attrs"
    fleet.start("stable", service, "1.4.2")
    sender = Sender("sync", graylb.Balancer(fleet.registry, _canary_rules(service)))
    with graylb.gray(lane="feature-x"):
        assert sender.one(f"http://{service}/x?user=alice", {"x-user-id": "alice"}).status_code == 200
    (point,) = [p for p in otel_sdk.points(ATTEMPTS) if p.attributes["graylb.service"] == service]
    assert dict(point.attributes) == {
        "graylb.service": service,
        "graylb.route": "lane-default",
        "graylb.subset": "stable",
        "graylb.version": "1.4.2",
        "graylb.lane": True,
        "graylb.outcome": "ok",
        "graylb.status": "2xx",
        HTTP_REQUEST_METHOD: "GET",
        HTTP_RESPONSE_STATUS_CODE: 200,
        "server.address": service,
        "server.port": 80,
    }
    (call,) = [p for p in otel_sdk.points(CALLS) if p.attributes["graylb.service"] == service]
    assert dict(call.attributes) == {
        "graylb.service": service,
        "graylb.route": "lane-default",
        "graylb.subset": "stable",
        "graylb.version": "1.4.2",
        "graylb.lane": True,
        "graylb.outcome": "ok",
        "graylb.status": "2xx",
    }
    assert ERROR_TYPE not in point.attributes
    # nothing per instance, per user or per URL: no instance id or address, no path, no query
    values = {str(v) for p in (point, call) for v in p.attributes.values()}
    server = fleet.servers["stable"]
    assert not any(server.host in v or str(server.port) in v or "alice" in v or "/x" in v for v in values)


# -- histogram buckets: a p99 read back from the exported buckets is right -------------------


def _histogram_quantile(q: float, bounds: list[float], counts: list[int]) -> float:
    """Prometheus's ``histogram_quantile``: linear interpolation inside the bucket that holds
    the rank (the lowest bucket starts at 0; the +Inf bucket answers its lower bound)."""
    total = sum(counts)
    rank = q * total
    cumulative = 0
    for i, count in enumerate(counts):
        if cumulative + count >= rank and count:
            if i == len(bounds):  # +Inf
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1]


def _bucket(bounds: list[float], value: float) -> int:
    return bisect.bisect_left(bounds, value)  # bucket i holds (bounds[i-1], bounds[i]]


def _buckets_of(bounds: list[float], values: list[float]) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[_bucket(bounds, v)] += 1
    return counts


SDK_DEFAULT_BOUNDS = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]


@pytest.mark.parametrize("latency", [0.003, 0.020, 0.200, 1.5])
def test_p99_from_the_exported_buckets_is_within_one_bucket(latency: float) -> None:
    service = f"p99-{latency}"
    rng = random.Random(latency)
    # Latencies around the target: mostly +-20 %, a 2 % tail up to 3x (where a p99 lives).
    values = [latency * rng.uniform(0.8, 1.2) for _ in range(980)] + [
        latency * rng.uniform(1.2, 3.0) for _ in range(20)
    ]
    served = Served(service, "default", "stable", "i-1", "10.0.0.1:80", "1.4.2", None, 1)
    for v in values:  # through graylb's own recording function, as the transports call it
        telemetry.record_call(served, False, "ok", v, "2xx")
    (point,) = [p for p in otel_sdk.points("graylb.client.call.duration") if p.attributes["graylb.service"] == service]
    bounds = list(point.explicit_bounds)
    assert bounds == list(telemetry.DURATION_BUCKETS)  # the advisory was used: no View configured
    assert point.count == len(values)
    assert list(point.bucket_counts) == _buckets_of(bounds, values)

    true_p99 = sorted(values)[int(0.99 * len(values)) - 1]
    estimate = _histogram_quantile(0.99, bounds, list(point.bucket_counts))
    assert abs(_bucket(bounds, estimate) - _bucket(bounds, true_p99)) <= 1, (estimate, true_p99)
    # (The SDK's default boundaries, for milliseconds, would be off by a mile under 5 s.)
    if latency < 1:
        wrong = _histogram_quantile(0.99, SDK_DEFAULT_BOUNDS, _buckets_of(SDK_DEFAULT_BOUNDS, values))
        assert wrong > 10 * true_p99


def test_every_duration_histogram_advises_the_same_buckets(fleet: Fleet) -> None:
    fleet.start("one", "buckets", "1.0.0")
    Sender("sync", graylb.Balancer(fleet.registry, services=["buckets"])).one("http://buckets/")
    for name in (ATTEMPTS, "graylb.client.call.duration"):
        points = [p for p in otel_sdk.points(name) if p.attributes["graylb.service"] == "buckets"]
        assert points and all(list(p.explicit_bounds) == list(telemetry.DURATION_BUCKETS) for p in points), name
        assert otel_sdk.metric(name).unit == "s"


# -- routing events ---------------------------------------------------------------------------


def test_ejections_are_counted_by_service_and_version() -> None:
    registry = graylb.StaticDiscovery(
        {
            "ledger": [
                {"host": "10.0.0.1", "port": 80, "version": "1.0.0", "id": "a"},
                {"host": "10.0.0.2", "port": 80, "version": "1.1.0", "id": "b"},
            ]
        }
    )
    rules = {"services": {"ledger": {"outlier_detection": {"consecutive_errors": 2}, "load_balancer": "round_robin"}}}
    balancer = graylb.Balancer(registry, rules)
    before = _count("graylb.outlier.ejections", service="ledger")
    for _ in range(6):
        call = balancer.start("ledger", graylb.RequestInfo())
        instance = call.next_instance()
        call.done(instance, ok=instance.id != "b")  # b fails every time
    assert _count("graylb.outlier.ejections", service="ledger") == before + 1
    assert _count("graylb.outlier.ejections", service="ledger", version="1.1.0") == 1
    assert all("b" not in map(str, p.attributes.values()) for p in otel_sdk.points("graylb.outlier.ejections"))


def test_calls_served_by_the_fallback_subset_are_counted(fleet: Fleet) -> None:
    fleet.start("stable", "fallbacks", "1.4.2")
    rules = {
        "services": {
            "fallbacks": {
                "subsets": {"stable": {"version": "^1"}, "next": {"version": "^3"}},
                "default": "stable",
                "routes": [{"name": "next-testers", "match": [{"headers": {"g": "next"}}], "to": [{"subset": "next"}]}],
            }
        }
    }
    sender = Sender("sync", graylb.Balancer(fleet.registry, rules))
    responses = sender.many(
        [("http://fallbacks/", {"g": "next"}), ("http://fallbacks/", {}), ("http://fallbacks/", {"g": "next"})]
    )
    assert [r.extensions["graylb"].fallback_from for r in responses] == ["next", None, "next"]
    assert _count("graylb.client.fallbacks", service="fallbacks") == 2
    assert (
        _count(
            "graylb.client.fallbacks",
            service="fallbacks",
            route="next-testers",
            subset="stable",
            fallback_from="next",
        )
        == 2
    )


def _ages(service: str) -> list[float]:
    return [
        p.value for p in otel_sdk.points("graylb.registry.snapshot.age") if p.attributes["graylb.service"] == service
    ]


def _aged_balancer(fetched_ago: float) -> weakref.ref[graylb.Balancer]:
    registry = graylb.StaticDiscovery({"aged": [{"host": "10.0.0.1", "port": 80, "version": "1.0.0"}]})
    balancer = graylb.Balancer(registry, services=["aged"])
    balancer.start("aged", graylb.RequestInfo())  # opens the watch
    watch = registry.watch("aged")
    watch.publish(watch.snapshot.instances, source="static", fetched_at=time.time() - fetched_ago)
    (age,) = _ages("aged")
    assert fetched_ago <= age < fetched_ago + 60
    point = next(p for p in otel_sdk.points("graylb.registry.snapshot.age") if p.attributes["graylb.service"] == "aged")
    assert dict(point.attributes) == {"graylb.service": "aged", "graylb.registry": "static"}
    return weakref.ref(balancer)


def test_snapshot_age_is_observed_per_watched_service_without_keeping_balancers_alive() -> None:
    assert otel_sdk.metric("graylb.registry.snapshot.age") is None or not _ages("aged")
    gone = _aged_balancer(42)  # confirmed by the registry 42 s ago
    assert otel_sdk.metric("graylb.registry.snapshot.age").unit == "s"
    gc.collect()
    assert gone() is None  # the gauge's callback holds the Balancer weakly
    assert not any(o.attributes["graylb.service"] == "aged" for o in telemetry._observe_snapshot_ages(None))


def test_requests_that_find_no_instance_are_counted_as_calls() -> None:
    balancer = graylb.Balancer(graylb.StaticDiscovery({"nobody": []}), services=["nobody"])
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client, pytest.raises(graylb.NoInstanceAvailable):
        client.get("http://nobody/")
    assert _count(CALLS, service="nobody", outcome="no_instance") == 1


def _gauge(metric: str, service: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(str(v) for k, v in sorted(p.attributes.items()) if k != "graylb.service"): p.value
        for p in otel_sdk.points(metric)
        if p.attributes["graylb.service"] == service
    }


def test_the_configured_split_and_the_baseline_subset_are_observed() -> None:
    """graylb.route.weight: each route's configured shares; route 'default' names the baseline."""
    registry = graylb.StaticDiscovery({"weighed": [{"host": "10.0.0.1", "port": 80, "version": "v1"}]})
    rules = {
        "version": 1,
        "services": {
            "weighed": {
                "subsets": {"stable": {"version": "v1"}, "canary": {"version": "v2"}},
                "default": "stable",
                "routes": [
                    {
                        "name": "beta",
                        "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                        "to": [{"subset": "canary"}],
                    },
                    {"name": "split", "to": [{"subset": "canary", "weight": 1}, {"subset": "stable", "weight": 19}]},
                ],
            }
        },
    }
    balancer = graylb.Balancer(registry, rules, services=["weighed"])
    balancer.start("weighed", graylb.RequestInfo())
    assert _gauge("graylb.route.weight", "weighed") == {
        ("default", "stable"): 1.0,
        ("beta", "canary"): 1.0,
        ("split", "canary"): 0.05,
        ("split", "stable"): 0.95,
    }


def test_subset_instances_are_observed_by_version_and_an_empty_subset_is_a_zero() -> None:
    """graylb.subset.instances: the v1/v2 label case -- a selector that takes nothing shows as 0."""
    registry = graylb.StaticDiscovery(
        {
            "sized": [
                {"host": "10.0.0.1", "port": 80, "version": "v1"},
                {"host": "10.0.0.2", "port": 80, "version": "v1"},
                {"host": "10.0.0.3", "port": 80, "version": "v1.1"},
                {"host": "10.0.0.4", "port": 80, "version": "v1", "weight": 0},  # drained: takes no traffic
            ]
        }
    )
    rules = {
        "version": 1,
        "services": {
            "sized": {
                "subsets": {"stable": {"version": "v1"}, "canary": {"version": "commit-abc123"}},
                "default": "stable",
            }
        },
    }
    balancer = graylb.Balancer(registry, rules, services=["sized"])
    balancer.start("sized", graylb.RequestInfo())
    assert _gauge("graylb.subset.instances", "sized") == {
        ("stable", "v1"): 2,
        ("stable", "v1.1"): 1,
        ("canary", ""): 0,
    }


def test_deferred_measurements_from_many_threads_all_reach_the_sdk() -> None:
    """Calls queue their measurements and the SDK gets them off the call path: every one of
    them, whichever thread made it, by the next collection."""

    class Instant(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"ok")

    registry = graylb.StaticDiscovery({"deferred": [{"host": "10.9.9.9", "port": 80, "version": "1.0.0"}]})
    balancer = graylb.Balancer(registry, services=["deferred"])
    transport = graylb.GrayTransport(balancer, Instant())

    def caller() -> None:
        with httpx.Client(transport=transport) as client:
            for _ in range(250):
                client.get("http://deferred/")

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _count(CALLS, service="deferred", outcome="ok") == 2000  # a collection hands the queue over first
    assert _count(ATTEMPTS, service="deferred", outcome="ok") == 2000
    assert not telemetry._pending


def test_with_the_queue_full_a_call_records_its_own_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferral is bounded: a process whose flusher falls behind goes back to recording on the
    call path rather than queue without end."""

    class Instant(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"ok")

    monkeypatch.setattr(telemetry, "_MAX_PENDING", 0)
    registry = graylb.StaticDiscovery({"bounded": [{"host": "10.9.9.8", "port": 80, "version": "1.0.0"}]})
    balancer = graylb.Balancer(registry, services=["bounded"])
    with httpx.Client(transport=graylb.GrayTransport(balancer, Instant())) as client:
        client.get("http://bounded/")
    assert not telemetry._pending, "nothing queued"
    assert _count(CALLS, service="bounded", outcome="ok") == 1
