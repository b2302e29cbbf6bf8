"""Warm-up (slow start): an instance new to a caller gets a share of its weight that ramps up
over the rules' window; the clock is a fake one, so nothing sleeps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import graylb

N = 20_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rules(policy: str = "weighted_random", **warmup: object) -> dict:
    service: dict = {"load_balancer": {"policy": policy}}
    if policy == "ring_hash":
        service["load_balancer"]["hash_on"] = {"header": "x-user-id"}
    if warmup is not None:
        service["warmup"] = {"window": "100s", **warmup}
    return {"services": {"orders": service}}


def inst(name: str, version: str = "1.0.0") -> dict:
    return {"host": "10.0.0." + str(len(name)), "port": 8000 + ord(name[0]), "version": version, "id": name}


def shares(balancer: graylb.Balancer, n: int = N, **headers: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in range(n):
        info = graylb.RequestInfo(headers={"x-user-id": f"u{i}", **headers})
        counts[balancer.start("orders", info).next_instance().id] += 1
    return counts


def new_instance_share(balancer: graylb.Balancer) -> float:
    return shares(balancer)["new"] / N


@pytest.fixture
def clock() -> Clock:
    random.seed(19)  # the pickers draw from random.random: the same draws every run, no flakes
    return Clock()


def test_a_new_instance_ramps_from_its_minimum_share_to_its_full_weight(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b")]})
    balancer = graylb.Balancer(static, rules(), clock=clock)
    assert "new" not in shares(balancer, 100)
    static.add(inst("new"), "orders")
    # share of weight s -> s / (2 + s) of the calls: 0.1 -> 4.8 %, 0.5 -> 20 %, 1 -> 33 %
    for elapsed, share in ((0, 0.1), (25, 0.25), (50, 0.5), (99, 0.99), (100, 1.0), (500, 1.0)):
        clock.now = 1000.0 + elapsed
        expected = share / (2 + share)
        assert new_instance_share(balancer) == pytest.approx(expected, abs=0.012), (elapsed, expected)


def test_the_instances_of_the_first_snapshot_are_warm(clock: Clock) -> None:
    balancer = graylb.Balancer(graylb.StaticDiscovery({"orders": [inst("a"), inst("new")]}), rules(), clock=clock)
    assert new_instance_share(balancer) == pytest.approx(0.5, abs=0.015)


def test_min_share_sets_where_the_ramp_starts(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b")]})
    balancer = graylb.Balancer(static, rules(min_share=0.5), clock=clock)
    shares(balancer, 10)
    static.add(inst("new"), "orders")
    assert new_instance_share(balancer) == pytest.approx(0.5 / 2.5, abs=0.012)


def test_without_warmup_in_the_rules_a_new_instance_gets_its_full_share_at_once(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b")]})
    balancer = graylb.Balancer(static, {"services": {"orders": {}}}, clock=clock)
    shares(balancer, 10)
    static.add(inst("new"), "orders")
    assert new_instance_share(balancer) == pytest.approx(1 / 3, abs=0.012)


def test_an_instance_alone_in_its_subset_takes_all_of_the_subset_s_traffic(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a")]})
    doc = rules()
    doc["services"]["orders"] |= {
        "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
        "default": "stable",
        "routes": [{"match": [{"headers": {"user-group": {"exact": "beta"}}}], "to": [{"subset": "canary"}]}],
    }
    balancer = graylb.Balancer(static, doc, clock=clock)
    shares(balancer, 10)
    static.add(inst("new", "2.0.0"), "orders")
    assert shares(balancer, 500, **{"user-group": "beta"}) == Counter({"new": 500})


def test_ring_hash_keys_stay_where_they_hash_during_a_warm_up(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b")]})
    balancer = graylb.Balancer(static, rules("ring_hash"), clock=clock)
    shares(balancer, 10)
    static.add(inst("new"), "orders")
    placed = {}
    for elapsed in (0, 30, 70, 200):
        clock.now = 1000.0 + elapsed
        for user in range(300):
            info = graylb.RequestInfo(headers={"x-user-id": f"u{user}"})
            placed.setdefault(user, set()).add(balancer.start("orders", info).next_instance().id)
    assert all(len(where) == 1 for where in placed.values())  # no key moved as the ramp climbed
    assert any("new" in where for where in placed.values())


def test_an_instance_that_leaves_and_comes_back_warms_up_again(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b"), inst("new")]})
    balancer = graylb.Balancer(static, rules(), clock=clock)
    shares(balancer, 10)
    static.remove("new", "orders")
    shares(balancer, 10)
    clock.now += 1000
    static.add(inst("new"), "orders")
    assert new_instance_share(balancer) == pytest.approx(0.1 / 2.1, abs=0.012)


def test_turning_warmup_on_later_leaves_the_instances_already_there_warm(clock: Clock) -> None:
    static = graylb.StaticDiscovery({"orders": [inst("a"), inst("b")]})
    source = graylb.StaticRules({"services": {"orders": {}}})
    balancer = graylb.Balancer(static, source, clock=clock)
    shares(balancer, 10)
    static.add(inst("new"), "orders")
    shares(balancer, 10)
    source.apply(rules())
    assert new_instance_share(balancer) == pytest.approx(1 / 3, abs=0.012)  # was there: warm
    static.add(inst("newer"), "orders")
    assert shares(balancer)["newer"] / N == pytest.approx(0.1 / 3.1, abs=0.012)
