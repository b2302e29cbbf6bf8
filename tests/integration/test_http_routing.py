"""GrayTransport and AsyncGrayTransport against real HTTP servers on 127.0.0.1.

Every test runs for both twins (the ``mode`` fixture), from the same cases.
"""

from __future__ import annotations

import math
from collections import Counter

import httpx
import pytest

import graylb
from graylb.rules.sources import StaticRules
from tests.conftest import Fleet, Sender


def split_rules(canary_weight: int, *, sticky: bool = True) -> dict:
    route = {
        "name": "split",
        "to": [{"subset": "canary", "weight": canary_weight}, {"subset": "stable", "weight": 100 - canary_weight}],
    }
    if sticky:
        route["sticky"] = {"header": "x-user-id"}
    return {
        "services": {
            "orders": {
                "subsets": {"stable": {"version": "^1.4"}, "canary": {"version": "^2.0"}},
                "default": "stable",
                "routes": [
                    {
                        "name": "beta-users",
                        "match": [{"headers": {"user-group": {"exact": "beta"}}}],
                        "to": [{"subset": "canary"}],
                    },
                    route,
                ],
                "outlier_detection": {
                    "consecutive_errors": 3,
                    "base_ejection_time": "30s",
                    "max_ejection_percent": 100,
                },
            }
        }
    }


def three_orders(fleet: Fleet) -> None:
    fleet.start("v1-a", "orders", "1.4.2")
    fleet.start("v1-b", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")


def versions(responses) -> Counter:
    return Counter(r.extensions["graylb"].version for r in responses)


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd


def test_weighted_split_ratio(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, split_rules(30, sticky=False)))
    n = 600
    got = versions(sender.many([("http://orders/x", {}) for _ in range(n)]))
    assert within_binomial(got["2.0.0"], n, 0.30), got
    assert got["1.4.2"] + got["2.0.0"] == n


def test_both_stable_instances_share_traffic(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, split_rules(0, sticky=False) | {}))
    responses = sender.many([("http://orders/x", {}) for _ in range(200)])
    by_instance = Counter(r.extensions["graylb"].instance for r in responses)
    assert set(by_instance) == {"v1-a", "v1-b"}
    assert within_binomial(by_instance["v1-a"], 200, 0.5)


def test_sticky_users_and_raising_weight_only_moves_stable_to_canary(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    rules = StaticRules(split_rules(10))
    sender = Sender(mode, graylb.Balancer(fleet.registry, rules))
    users = [f"user-{i}" for i in range(300)]
    first = sender.many([("http://orders/x", {"x-user-id": u}) for u in users])
    again = sender.many([("http://orders/x", {"x-user-id": u}) for u in users])
    before = {u: r.extensions["graylb"].version for u, r in zip(users, first)}
    assert before == {u: r.extensions["graylb"].version for u, r in zip(users, again)}
    assert 0 < sum(v == "2.0.0" for v in before.values()) < 100

    assert rules.apply(split_rules(40))
    after = {
        u: r.extensions["graylb"].version
        for u, r in zip(users, sender.many([("http://orders/x", {"x-user-id": u}) for u in users]))
    }
    moved_back = [u for u in users if before[u] == "2.0.0" and after[u] != "2.0.0"]
    assert moved_back == []
    assert sum(v == "2.0.0" for v in after.values()) > sum(v == "2.0.0" for v in before.values())


def test_header_match_goes_to_canary(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, split_rules(5)))
    responses = sender.many([("http://orders/x", {"user-group": "beta", "x-user-id": f"u{i}"}) for i in range(50)])
    assert versions(responses) == Counter({"2.0.0": 50})
    served = responses[0].extensions["graylb"]
    assert (served.route, served.subset, served.instance) == ("beta-users", "canary", "v2")
    body = responses[0].json()
    assert body["host_header"] == "orders"  # the Host header keeps the service name


def test_pin_in_context_wins_over_rules(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, split_rules(0)))
    responses = sender.many(
        [("http://orders/x", {}) for _ in range(20)], ctx=graylb.GrayContext(pins={"orders": "2.0.0"})
    )
    assert versions(responses) == Counter({"2.0.0": 20})
    assert responses[0].json()["seen_pins"] == {"orders": "2.0.0"}  # and the pin travelled on


def test_pin_to_missing_version_fails_clearly(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, split_rules(0)))
    err = sender.one("http://orders/x", ctx=graylb.GrayContext(pins={"orders": "9.9.9"}))
    assert isinstance(err, graylb.NoInstanceAvailable)
    assert "orders" in str(err) and "9.9.9" in str(err)


def test_lane_survives_a_two_hop_chain(fleet: Fleet, mode: str) -> None:
    fleet.start("gw", "gateway", "1.0.0", next_hop="orders")
    fleet.start("orders", "orders", "1.4.2", next_hop="inventory")
    fleet.start("inv", "inventory", "3.1.0")
    fleet.start("inv-lane", "inventory", "3.2.0-dev", lane="feature-x")
    balancer = graylb.Balancer(fleet.registry, services=["gateway", "orders", "inventory"])
    fleet.client_box["client"] = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=5)
    try:
        sender = Sender(mode, balancer)
        plain = sender.one("http://gateway/chain").json()
        laned = sender.one("http://gateway/chain", ctx=graylb.GrayContext(lane="feature-x")).json()
    finally:
        fleet.client_box["client"].close()
    assert plain["next"]["next"]["version"] == "3.1.0"
    assert laned["seen_lane"] == "feature-x"
    assert laned["next"]["seen_lane"] == "feature-x"  # orders has no lane instance, but keeps the lane
    assert laned["next"]["next"]["version"] == "3.2.0-dev"


def test_instance_dies_mid_traffic_no_failed_request(fleet: Fleet, mode: str) -> None:
    three_orders(fleet)
    balancer = graylb.Balancer(fleet.registry, split_rules(30))
    sender = Sender(mode, balancer)
    warm = sender.many([("http://orders/x", {"x-user-id": f"u{i}"}) for i in range(100)])
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in warm)
    fleet.servers["v2"].stop()
    responses = sender.many(
        [("http://orders/x", {"x-user-id": f"u{i}", "user-group": "beta" if i % 5 == 0 else ""}) for i in range(200)]
    )
    failures = [r for r in responses if not isinstance(r, httpx.Response) or r.status_code != 200]
    assert failures == []
    assert versions(responses) == Counter({"1.4.2": 200})
    # The dead canary was ejected: beta users now fall back to the default subset.
    served = sender.one("http://orders/x", {"user-group": "beta"}).extensions["graylb"]
    assert served.fallback_from == "canary" and served.subset == "stable"


def test_retry_on_503_goes_to_another_instance(fleet: Fleet, mode: str) -> None:
    fleet.start("bad", "orders", "1.4.2", status=503)
    fleet.start("good", "orders", "1.4.2")
    rules = {
        "services": {
            "orders": {
                "retries": {"attempts": 1, "on": ["503"]},
                "load_balancer": "round_robin",
                "outlier_detection": {"consecutive_errors": 1000, "base_ejection_time": "1s"},
            }
        }
    }
    sender = Sender(mode, graylb.Balancer(fleet.registry, rules))
    responses = sender.many([("http://orders/x", {}) for _ in range(10)])
    assert all(r.status_code == 200 for r in responses)
    assert {r.extensions["graylb"].instance for r in responses} == {"good"}
    assert any(r.extensions["graylb"].attempts == 2 for r in responses)


def test_non_idempotent_post_is_not_retried_on_503(fleet: Fleet) -> None:
    fleet.start("bad", "orders", "1.4.2", status=503)
    rules = {"services": {"orders": {"retries": {"attempts": 2, "on": ["503"]}}}}
    balancer = graylb.Balancer(fleet.registry, rules)
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        r = client.post("http://orders/x", content=b"pay")
    assert r.status_code == 503 and r.extensions["graylb"].attempts == 1


def test_outlier_ejection_and_return(fleet: Fleet, mode: str) -> None:
    fleet.start("bad", "orders", "1.4.2", status=500)
    fleet.start("good", "orders", "1.4.2")
    rules = {
        "services": {
            "orders": {
                "retries": {"attempts": 0},
                "load_balancer": "round_robin",
                "outlier_detection": {"consecutive_errors": 2, "base_ejection_time": "30s", "max_ejection_percent": 50},
            }
        }
    }
    now = [1000.0]
    balancer = graylb.Balancer(fleet.registry, rules, clock=lambda: now[0])
    sender = Sender(mode, balancer)
    first = sender.many([("http://orders/x", {}) for _ in range(6)])
    assert sum(r.status_code == 500 for r in first) == 2  # two errors, then ejected
    assert all(
        r.extensions["graylb"].instance == "good" for r in sender.many([("http://orders/x", {}) for _ in range(10)])
    )
    # The instance is fixed; once the ejection time is over it gets traffic again.
    fleet.status["bad"] = 200
    now[0] += 29
    assert {r.extensions["graylb"].instance for r in sender.many([("http://orders/x", {}) for _ in range(4)])} == {
        "good"
    }
    now[0] += 1
    assert {r.extensions["graylb"].instance for r in sender.many([("http://orders/x", {}) for _ in range(4)])} == {
        "good",
        "bad",
    }


def test_no_instance_names_service_and_subset(fleet: Fleet, mode: str) -> None:
    fleet.start("v1", "orders", "1.4.2")
    rules = {
        "services": {
            "orders": {
                "subsets": {"canary": {"version": "^2"}},
                "routes": [{"name": "all-canary", "to": [{"subset": "canary"}]}],
                "fallback": "fail",
            }
        }
    }
    err = Sender(mode, graylb.Balancer(fleet.registry, rules)).one("http://orders/x")
    assert isinstance(err, graylb.NoInstanceAvailable)
    assert err.service == "orders" and err.subset == "canary"
    assert "fallback is 'fail'" in str(err)


def test_other_hosts_pass_through_untouched(fleet: Fleet, mode: str) -> None:
    server = fleet.start("v1", "orders", "1.4.2")
    r = Sender(mode, graylb.Balancer(fleet.registry, split_rules(5))).one(f"{server.url}/x")
    assert r.status_code == 200 and "graylb" not in r.extensions


def test_garbage_gray_headers_are_harmless(fleet: Fleet, mode: str) -> None:
    server = fleet.start("v1", "orders", "1.4.2")
    garbage = {
        "baggage": "gray.lane=%ZZ,,=,gray.pin.orders=" + "9" * 5000 + ",\x7f",
        "x-gray-lane": "not a lane!!;;;",
        "x-gray-pin": "=,=,orders",
    }
    with httpx.Client() as client:
        r = client.get(f"{server.url}/x", headers=garbage)
    assert r.status_code == 200
    assert r.json()["seen_lane"] is None and r.json()["seen_pins"] == {}


def test_a_cancelled_async_request_ends_its_attempt(fleet: Fleet) -> None:
    """asyncio.wait_for cancelling a slow request must not leave it counted in flight (the
    least-request picker would avoid that instance forever)."""
    import asyncio
    import threading

    release = threading.Event()

    def slow(environ, start_response):
        release.wait(10)
        start_response("200 OK", [])
        return [b"late"]

    from graylb.testing.http_server import serve_wsgi

    server = serve_wsgi(slow)
    try:
        fleet.registry.add(
            {"host": server.host, "port": server.port, "version": "1.0.0", "id": "slow"}, service="orders"
        )
        balancer = graylb.Balancer(fleet.registry, services=["orders"])

        async def main() -> None:
            async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)) as client:
                for _ in range(3):
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(client.get("http://orders/x"), 0.2)

        asyncio.run(main())
        assert balancer.stats.inflight("slow") == 0
    finally:
        release.set()
        server.stop()
