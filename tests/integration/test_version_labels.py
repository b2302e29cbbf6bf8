"""Versions as teams label them — ``v1`` / ``v2``, ``{"version": "v2", "weight": 10}`` — routed,
pinned and reported over real HTTP servers (the two reproductions of the "labels v1/v2 matched
nothing" report are the first tests). Sync and async transports from one table (``mode``).
"""

from __future__ import annotations

import logging
from collections import Counter

import httpx
import pytest

import graylb
from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.testing import pin_version
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.http_server import serve_wsgi
from tests.conftest import Fleet, Sender, version_app

SPLIT = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "v1"}, "canary": {"version": "v2"}},
            "default": "stable",
            "routes": [
                {
                    "name": "ten-percent",
                    "to": [{"subset": "canary", "weight": 10}, {"subset": "stable", "weight": 90}],
                    "sticky": {"header": "x-user-id"},
                }
            ],
        }
    }
}
USERS = [{"x-user-id": f"user-{n}"} for n in range(400)]


def labelled_fleet(fleet: Fleet) -> None:
    fleet.start("v1-a", "orders", "v1")
    fleet.start("v1-b", "orders", "v1")
    fleet.start("v2", "orders", "v2")


def served_versions(responses: list) -> Counter:
    assert not [r for r in responses if isinstance(r, Exception)], [r for r in responses if isinstance(r, Exception)][
        :3
    ]
    return Counter(r.extensions["graylb"].version for r in responses)


def test_a_10_90_route_by_v1_v2_labels_splits_traffic(fleet: Fleet, mode: str) -> None:
    """Reproduction 1: subsets {version: v1} / {version: v2} selected nothing and the call raised
    "the default subset 'stable' is empty too"."""
    labelled_fleet(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, SPLIT))
    got = served_versions(sender.many([("http://orders/x", h) for h in USERS]))
    assert set(got) == {"v1", "v2"} and 20 <= got["v2"] <= 70, got  # 10 % of 400 sticky users, by hash


@pytest.mark.parametrize("pin", ["v2", "2", "^2"])
def test_a_pin_by_short_label_lands_on_it(fleet: Fleet, mode: str, pin: str) -> None:
    """Reproduction 2: pin orders=v2 failed with "no routable instance has a version matching
    the pin (routable versions: v1, v2)"."""
    labelled_fleet(fleet)
    sender = Sender(mode, graylb.Balancer(fleet.registry, SPLIT))
    ctx = graylb.GrayContext(pins={"orders": pin})
    assert served_versions(sender.many([("http://orders/x", h) for h in USERS[:40]], ctx)) == {"v2": 40}


def test_pin_version_and_the_x_gray_pin_header_read_labels_the_same_way(fleet: Fleet) -> None:
    labelled_fleet(fleet)
    fleet.start("gw", "gateway", "v1", next_hop="orders")
    balancer = graylb.Balancer(fleet.registry, SPLIT, services=["gateway"])
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        fleet.client_box["client"] = client
        with pin_version("orders", "v2"):
            assert {client.get("http://orders/x", headers=h).json()["version"] for h in USERS[:20]} == {"v2"}
        # An inbound x-gray-pin at the gateway is carried to its call to orders.
        hops = [client.get("http://gateway/chain", headers={"x-gray-pin": "orders=v2", **h}).json() for h in USERS[:20]]
    assert {hop["next"]["version"] for hop in hops} == {"v2"}
    assert {hop["next"]["seen_pins"]["orders"] for hop in hops} == {"v2"}


def test_labels_version_in_a_subset_is_a_version_selector(fleet: Fleet, mode: str) -> None:
    labelled_fleet(fleet)
    rules = {
        "services": {
            "orders": {
                "subsets": {"stable": {"labels": {"version": "1"}}, "canary": {"labels": {"version": "v2"}}},
                "default": "canary",
            }
        }
    }
    sender = Sender(mode, graylb.Balancer(fleet.registry, rules))
    assert served_versions(sender.many([("http://orders/x", {})] * 10)) == {"v2": 10}


def test_a_pin_that_matches_nothing_says_what_would_match(fleet: Fleet) -> None:
    labelled_fleet(fleet)
    balancer = graylb.Balancer(fleet.registry, SPLIT)
    with pytest.raises(graylb.NoInstanceAvailable) as caught:
        balancer.start("orders", graylb.RequestInfo(), graylb.GrayContext(pins={"orders": "v3"}))
    assert (
        "no routable instance has a version matching the pin (routable versions: v1 x2, v2); a pin that matches: "
        "orders=v1, orders=v2" in str(caught.value)
    )
    with pytest.raises(
        graylb.NoInstanceAvailable, match="the pin is not a version selector: invalid version range '>=banana'"
    ):
        balancer.start("orders", graylb.RequestInfo(), graylb.GrayContext(pins={"orders": ">=banana"}))


def test_a_subset_that_selects_nothing_is_logged_once_per_snapshot(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    labelled_fleet(fleet)
    rules = {
        "services": {
            "orders": {
                "subsets": {"stable": {"version": "v1"}, "canary": {"version": "^3"}},
                "default": "stable",
                "routes": [
                    {"name": "split", "to": [{"subset": "canary", "weight": 10}, {"subset": "stable", "weight": 90}]}
                ],
            }
        }
    }
    balancer = graylb.Balancer(fleet.registry, rules)
    warning = "graylb: service 'orders' subset 'canary' {version: ^3} matches none of: v1 x2, v2"
    with caplog.at_level(logging.WARNING, logger="graylb"):
        for _ in range(5):
            balancer.start("orders", graylb.RequestInfo())
        assert [r.getMessage() for r in caplog.records].count(warning) == 1
        fleet.start("v1-c", "orders", "v1")  # a new snapshot: said again, with what is on offer now
        balancer.start("orders", graylb.RequestInfo())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(warning) == 1 and messages.count(warning.replace("v1 x2", "v1 x3")) == 1


def test_registry_metadata_version_v2_weight_10_over_consul() -> None:
    """The convention as a Go / Spring Cloud team registers it: Meta {"version": "v2", "weight":
    "10"} next to two v1 instances; with no rules the registry weight alone makes the split."""
    servers = [serve_wsgi(version_app("orders", v)) for v in ("v1", "v1", "v2")]
    try:
        with FakeConsul() as consul:
            for n, (server, meta) in enumerate(
                zip(
                    servers,
                    [
                        {"version": "v1", "weight": "45"},
                        {"version": "v1", "weight": "45"},
                        {"version": "v2", "weight": "10"},
                    ],
                )
            ):
                consul.register("orders", id=f"orders-{n}", address=server.host, port=server.port, meta=meta)
            rules = {"services": {"orders": {"subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}}}}}
            with (
                graylb.Balancer(ConsulDiscovery(ConsulConfig(consul.url)), rules) as balancer,
                httpx.Client(transport=graylb.GrayTransport(balancer)) as client,
            ):
                got = Counter(client.get("http://orders/x").json()["version"] for _ in range(400))
                assert set(got) == {"v1", "v2"} and 15 <= got["v2"] <= 75, got  # 10 % by weight, 5 sigma
                assert balancer.state("orders").unmatched == ()
                with graylb.gray(pins={"orders": "v2"}):
                    assert client.get("http://orders/x").json()["version"] == "v2"
    finally:
        for server in servers:
            server.stop()
