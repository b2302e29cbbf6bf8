"""Routing: build_state + route (pins > lanes > routes > default), fallback, explain, and the
Balancer/Call pair (retries, retry policy, outlier ejection) without any network."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest

from graylb.balancer import Balancer
from graylb.call import CONNECT_FAILURE, RESET, TIMEOUT, Call
from graylb.discovery.base import Snapshot
from graylb.discovery.static import StaticDiscovery
from graylb.errors import NoInstanceAvailable
from graylb.instance import Health, Instance
from graylb.propagation.context import EMPTY, GrayContext
from graylb.routing.explain import explain_rules, explain_state
from graylb.routing.request import RequestInfo
from graylb.routing.router import ALL_SUBSET, Decision, ServiceState, build_state, route
from graylb.rules.compiled import CompiledService
from graylb.rules.load import parse_rules

SERVICE = "orders"


@pytest.fixture(autouse=True)
def _seeded_random() -> Iterator[None]:
    """Repeatable draws; the statistical bounds below hold for any seed."""
    saved = random.getstate()
    random.seed(424242)
    yield
    random.setstate(saved)


# --------------------------------------------------------------------------- helpers


def inst(
    name: str,
    version: str | None = None,
    *,
    weight: int = 100,
    lane: str | None = None,
    health: Health = Health.PASSING,
    labels: Mapping[str, str] | None = None,
) -> Instance:
    n = sum(map(ord, name)) % 250 + 1
    return Instance(
        SERVICE,
        f"10.0.{n}.1",
        8080,
        version=version,
        weight=weight,
        lane=lane,
        health=health,
        labels=labels or {},
        id=name,
    )


def compile_service(doc: Mapping[str, Any]) -> CompiledService:
    compiled = parse_rules({"version": 1, "services": {SERVICE: dict(doc)}}).service(SERVICE)
    assert compiled is not None
    return compiled


def make_state(
    instances: Iterable[Instance], doc: Mapping[str, Any] | None = None, *, ejected: Iterable[str] = ()
) -> ServiceState:
    snapshot = Snapshot(SERVICE, tuple(instances), revision=1)
    return build_state(SERVICE, snapshot, compile_service(doc) if doc is not None else None, ejected=frozenset(ejected))


def ctx(
    lane: str | None = None,
    *,
    forced: bool = False,
    pins: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
) -> GrayContext:
    return GrayContext(lane=lane, lane_forced=forced, pins=pins or {}, values=values or {})


def req(headers: Mapping[str, str] | None = None, path: str = "/", method: str = "GET", query: str = "") -> RequestInfo:
    return RequestInfo(method=method, path=path, headers=dict(headers or {}), query_string=query)


def decide(
    state: ServiceState, headers: Mapping[str, str] | None = None, gray: GrayContext = EMPTY, **kw: Any
) -> Decision:
    return route(state, req(headers, **kw), gray)


def candidates(d: Decision) -> set[str]:
    return {i.id for i in d.picker.instances}


def picked(d: Decision, n: int = 200) -> set[str]:
    return {d.picker.pick().id for _ in range(n)}  # type: ignore[union-attr]


def assert_binomial(count: int, n: int, p: float, what: str) -> None:
    """``count`` successes out of ``n`` within 5 sigma of a Binomial(n, p)."""
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 5 * sigma, f"{what}: {count}/{n}, expected {n * p:.0f} +- {5 * sigma:.0f}"


S1, S2 = inst("s1", "1.4.0"), inst("s2", "v1.5.2")
C1, C2 = inst("c1", "2.0.0-rc.1"), inst("c2", "2.0.0-rc.1")
OLD = inst("old1", "1.3.9")
B1 = inst("b1", "2.0.0-rc.1", lane="beta")  # a lane instance whose version also fits "canary"
FLEET = (S1, S2, C1, C2, OLD, B1)

SUBSETS = {
    "stable": {"version": "^1.4"},
    "canary": {"version": "2.0.0-rc.1"},
    "legacy": {"version": "~1.3"},
}

ROUTED = {
    "subsets": SUBSETS,
    "default": "stable",
    "routes": [
        {"name": "beta-users", "match": [{"headers": {"user-group": {"exact": "beta"}}}], "to": [{"subset": "canary"}]},
        {
            "name": "legacy-clients",
            "match": [{"headers": {"x-client": {"prefix": "old-"}}}],
            "to": [{"subset": "legacy"}],
        },
        {
            "name": "v2-api-or-internal",
            "match": [{"path": {"prefix": "/v2/"}}, {"headers": {"x-internal": {"present": True}}}],
            "to": [{"subset": "canary"}],
        },
        {"name": "admin", "match": [{"path": {"prefix": "/admin"}, "method": "POST"}], "to": [{"subset": "legacy"}]},
    ],
}


# --------------------------------------------------------------------------- first match wins


@pytest.mark.parametrize(
    ("headers", "path", "method", "route_name", "subset", "ids"),
    [
        ({}, "/", "GET", "default", "stable", {"s1", "s2"}),
        ({"user-group": "beta"}, "/", "GET", "beta-users", "canary", {"c1", "c2"}),
        ({"User-Group": "beta"}, "/", "GET", "beta-users", "canary", {"c1", "c2"}),  # header names are case-free
        ({"user-group": "BETA"}, "/", "GET", "default", "stable", {"s1", "s2"}),  # values are not
        ({"x-client": "old-ios"}, "/", "GET", "legacy-clients", "legacy", {"old1"}),
        ({"x-client": "new-ios"}, "/", "GET", "default", "stable", {"s1", "s2"}),
        # both beta-users and legacy-clients match: the first one listed wins
        ({"user-group": "beta", "x-client": "old-ios"}, "/", "GET", "beta-users", "canary", {"c1", "c2"}),
        # legacy-clients is listed before v2-api-or-internal
        ({"x-client": "old-ios"}, "/v2/orders", "GET", "legacy-clients", "legacy", {"old1"}),
        ({}, "/v2/orders", "GET", "v2-api-or-internal", "canary", {"c1", "c2"}),  # OR: first clause
        ({"x-internal": ""}, "/", "GET", "v2-api-or-internal", "canary", {"c1", "c2"}),  # OR: second clause
        ({}, "/v2", "GET", "default", "stable", {"s1", "s2"}),
        ({}, "/admin/users", "POST", "admin", "legacy", {"old1"}),  # AND: path and method
        ({}, "/admin/users", "GET", "default", "stable", {"s1", "s2"}),
        ({}, "/orders", "POST", "default", "stable", {"s1", "s2"}),
    ],
)
def test_first_matching_route_wins(
    headers: dict, path: str, method: str, route_name: str, subset: str, ids: set[str]
) -> None:
    d = decide(make_state(FLEET, ROUTED), headers, path=path, method=method)
    assert (d.service, d.route, d.subset, d.fallback_from) == (SERVICE, route_name, subset, None)
    assert candidates(d) == ids


def test_first_matching_route_wins_even_when_its_subset_is_empty() -> None:
    doc = {
        **ROUTED,
        "fallback": "fail",
        "routes": [
            {"name": "to-canary", "match": [{"headers": {"x-try": {"exact": "1"}}}], "to": [{"subset": "canary"}]},
            {"name": "catch-all", "to": [{"subset": "stable"}]},
        ],
    }
    state = make_state([S1, S2], doc)  # no canary instance
    with pytest.raises(NoInstanceAvailable) as err:
        decide(state, {"x-try": "1"})
    assert err.value.subset == "canary"
    assert decide(state, {}).route == "catch-all"


def test_context_values_match_routes() -> None:
    doc = {
        **ROUTED,
        "routes": [{"name": "vip", "match": [{"context": {"tier": {"exact": "vip"}}}], "to": [{"subset": "canary"}]}],
    }
    state = make_state(FLEET, doc)
    assert decide(state, gray=ctx(values={"tier": "vip"})).route == "vip"
    assert decide(state, {"tier": "vip"}).route == "default"  # a header is not a context value


def test_no_rules_routes_to_every_instance_outside_lanes() -> None:
    d = decide(make_state(FLEET, None))
    assert (d.route, d.subset) == ("default", ALL_SUBSET)
    assert candidates(d) == {"s1", "s2", "c1", "c2", "old1"}


def test_no_default_means_every_instance_outside_lanes() -> None:
    doc = {"subsets": SUBSETS, "routes": ROUTED["routes"]}
    d = decide(make_state(FLEET, doc))
    assert (d.route, d.subset) == ("default", ALL_SUBSET)
    assert candidates(d) == {"s1", "s2", "c1", "c2", "old1"}


# --------------------------------------------------------------------------- weighted split


def split_doc(
    weights: list[tuple[str, int]], *, sticky: bool = False, fallback: str = "default", default: str = "stable"
) -> dict:
    route_: dict[str, Any] = {"name": "split", "to": [{"subset": s, "weight": w} for s, w in weights]}
    if sticky:
        route_["sticky"] = {"header": "x-user-id"}
    return {"subsets": SUBSETS, "default": default, "routes": [route_], "fallback": fallback}


@pytest.mark.parametrize(
    "weights",
    [
        [("canary", 20), ("stable", 80)],
        [("stable", 80), ("canary", 20)],
        [("canary", 5), ("stable", 95)],
        [("legacy", 10), ("canary", 30), ("stable", 60)],
        [("canary", 1), ("stable", 1)],
        [("canary", 0), ("stable", 1)],  # weight 0: never
    ],
)
def test_weighted_split_follows_the_weights(weights: list[tuple[str, int]]) -> None:
    state = make_state(FLEET, split_doc(weights))
    n = 20000
    counts = collections.Counter(decide(state).subset for _ in range(n))
    total = sum(w for _, w in weights)
    assert set(counts) == {s for s, w in weights if w}
    for subset, w in weights:
        assert_binomial(counts[subset], n, w / total, subset)


def test_empty_subset_is_dropped_from_the_split_and_the_rest_renormalised() -> None:
    # legacy (10) has no instance: canary 30 / stable 60 become 1/3 and 2/3.
    state = make_state([S1, S2, C1], split_doc([("legacy", 10), ("canary", 30), ("stable", 60)]))
    n = 20000
    counts = collections.Counter(decide(state).subset for _ in range(n))
    assert set(counts) == {"canary", "stable"}
    assert_binomial(counts["canary"], n, 1 / 3, "canary")


@pytest.mark.parametrize(
    "empty_means",
    ["no instance", "all weight 0", "all critical", "all ejected", "only lane instances"],
)
def test_every_kind_of_empty_subset_drops_out_of_the_split(empty_means: str) -> None:
    canary: list[Instance]
    ejected: set[str] = set()
    if empty_means == "no instance":
        canary = []
    elif empty_means == "all weight 0":
        canary = [inst("c1", "2.0.0-rc.1", weight=0)]
    elif empty_means == "all critical":
        canary = [inst("c1", "2.0.0-rc.1", health=Health.CRITICAL)]
    elif empty_means == "all ejected":
        canary, ejected = [C1, C2], {"c1", "c2"}
    else:
        canary = [B1]
    state = make_state([S1, S2, *canary], split_doc([("canary", 50), ("stable", 50)]), ejected=ejected)
    assert {decide(state).subset for _ in range(300)} == {"stable"}


def test_all_targets_empty_goes_through_fallback_from_the_first_target() -> None:
    state = make_state([S1], split_doc([("canary", 50), ("legacy", 50)], fallback="fail"))
    with pytest.raises(NoInstanceAvailable) as err:
        decide(state)
    assert err.value.subset == "canary"
    assert "split" in str(err.value) and "'fail'" in str(err.value)


# --------------------------------------------------------------------------- sticky


def sticky_subsets(state: ServiceState, keys: Iterable[str]) -> dict[str, str]:
    return {k: decide(state, {"x-user-id": k}).subset for k in keys}


KEYS = [f"user-{i}" for i in range(2000)]


def test_sticky_same_key_same_subset_across_fresh_states_and_instance_order() -> None:
    doc = split_doc([("canary", 30), ("stable", 70)], sticky=True)
    first = sticky_subsets(make_state(FLEET, doc), KEYS[:500])
    shuffled = list(FLEET)
    random.shuffle(shuffled)
    again = sticky_subsets(make_state(reversed(FLEET), doc), KEYS[:500])
    third = sticky_subsets(make_state(shuffled, doc), KEYS[:500])
    assert first == again == third
    # Not a constant: both subsets are used, in about the configured share.
    assert_binomial(sum(v == "canary" for v in first.values()), 500, 0.3, "canary keys")


def test_sticky_key_repeats_within_one_state() -> None:
    state = make_state(FLEET, split_doc([("canary", 50), ("stable", 50)], sticky=True))
    for key in KEYS[:50]:
        assert len({decide(state, {"x-user-id": key}).subset for _ in range(10)}) == 1


def test_sticky_without_key_is_a_random_draw() -> None:
    state = make_state(FLEET, split_doc([("canary", 50), ("stable", 50)], sticky=True))
    assert {decide(state).subset for _ in range(100)} == {"canary", "stable"}


def test_sticky_on_query_and_context() -> None:
    for sticky, request, gray in (
        ({"query": "uid"}, {"query": "uid=alice"}, EMPTY),
        ({"context": "user"}, {}, ctx(values={"user": "alice"})),
    ):
        doc = {
            "subsets": SUBSETS,
            "default": "stable",
            "routes": [
                {
                    "name": "split",
                    "to": [{"subset": "canary", "weight": 50}, {"subset": "stable", "weight": 50}],
                    "sticky": sticky,
                }
            ],
        }
        state = make_state(FLEET, doc)
        assert len({route(state, req(**request), gray).subset for _ in range(50)}) == 1


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([("canary", 5), ("stable", 95)], [("canary", 20), ("stable", 80)]),
        ([("stable", 95), ("canary", 5)], [("stable", 80), ("canary", 20)]),
        ([("canary", 5), ("stable", 95)], [("canary", 20), ("stable", 95)]),  # total changes too
        ([("stable", 95), ("canary", 5)], [("stable", 95), ("canary", 40)]),
    ],
)
def test_raising_the_canary_weight_only_moves_keys_stable_to_canary(before: list, after: list) -> None:
    old = sticky_subsets(make_state(FLEET, split_doc(before, sticky=True)), KEYS)
    new = sticky_subsets(make_state(FLEET, split_doc(after, sticky=True)), KEYS)
    back = [k for k in KEYS if old[k] == "canary" and new[k] != "canary"]
    moved = [k for k in KEYS if old[k] == "stable" and new[k] == "canary"]
    assert back == []
    share = lambda ws: dict(ws)["canary"] / sum(w for _, w in ws)  # noqa: E731
    assert_binomial(len(moved), len(KEYS), share(after) - share(before), "keys moved to canary")


def test_removing_the_canary_sends_its_sticky_users_to_stable_and_back_again() -> None:
    doc = split_doc([("canary", 30), ("stable", 70)], sticky=True)
    with_canary = sticky_subsets(make_state(FLEET, doc), KEYS[:300])
    without = sticky_subsets(make_state([S1, S2], doc), KEYS[:300])
    assert set(without.values()) == {"stable"}
    assert sticky_subsets(make_state(FLEET, doc), KEYS[:300]) == with_canary


# --------------------------------------------------------------------------- fallback


CANARY_ONLY = {
    "subsets": SUBSETS,
    "default": "stable",
    "routes": [
        {"name": "beta-users", "match": [{"headers": {"user-group": {"exact": "beta"}}}], "to": [{"subset": "canary"}]}
    ],
}
BETA = {"user-group": "beta"}


def test_fallback_default_sends_an_empty_route_to_the_default_subset() -> None:
    d = decide(make_state([S1, S2, OLD], {**CANARY_ONLY, "fallback": "default"}), BETA)
    assert (d.route, d.subset, d.fallback_from) == ("beta-users", "stable", "canary")
    assert candidates(d) == {"s1", "s2"}


def test_fallback_any_sends_an_empty_route_to_every_instance_outside_lanes() -> None:
    d = decide(make_state([S1, OLD, B1], {**CANARY_ONLY, "fallback": "any"}), BETA)
    assert (d.route, d.subset, d.fallback_from) == ("beta-users", "any", "canary")
    assert candidates(d) == {"s1", "old1"}


def test_fallback_fail_raises_naming_service_subset_and_route() -> None:
    with pytest.raises(NoInstanceAvailable) as err:
        decide(make_state([S1, S2], {**CANARY_ONLY, "fallback": "fail"}), BETA)
    e = err.value
    assert (e.service, e.subset) == (SERVICE, "canary")
    assert "service 'orders'" in str(e) and "subset 'canary'" in str(e)
    assert "beta-users" in str(e) and "'fail'" in str(e)


def test_fallback_is_not_used_while_the_subset_has_an_instance() -> None:
    d = decide(make_state([S1, C1], {**CANARY_ONLY, "fallback": "fail"}), BETA)
    assert (d.subset, d.fallback_from) == ("canary", None)


@pytest.mark.parametrize("fallback", ["default", "fail"])
def test_empty_default_subset_raises_naming_it(fallback: str) -> None:
    with pytest.raises(NoInstanceAvailable) as err:
        decide(make_state([C1, OLD], {**CANARY_ONLY, "fallback": fallback}))
    assert (err.value.service, err.value.subset) == (SERVICE, "stable")
    assert "service 'orders' subset 'stable'" in str(err.value)


def test_empty_default_subset_with_fallback_any() -> None:
    d = decide(make_state([C1, OLD], {**CANARY_ONLY, "fallback": "any"}))
    assert (d.route, d.subset, d.fallback_from) == ("default", "any", "stable")
    assert candidates(d) == {"c1", "old1"}


def test_fallback_default_when_default_is_empty_too() -> None:
    with pytest.raises(NoInstanceAvailable) as err:
        decide(make_state([OLD], {**CANARY_ONLY, "fallback": "default"}), BETA)
    assert err.value.subset == "canary"
    assert "default subset 'stable' is empty too" in str(err.value)  # why the fallback did not help


def test_fallback_any_with_nothing_routable_raises() -> None:
    dead = [inst("s1", "1.4.0", health=Health.CRITICAL), inst("s2", "1.4.0", weight=0)]
    with pytest.raises(NoInstanceAvailable, match="service 'orders'"):
        decide(make_state(dead, {**CANARY_ONLY, "fallback": "any"}), BETA)


def test_empty_snapshot_and_no_snapshot_raise() -> None:
    with pytest.raises(NoInstanceAvailable, match="orders"):
        decide(make_state([], None))
    with pytest.raises(NoInstanceAvailable, match="orders"):
        route(build_state(SERVICE, None, None), req(), EMPTY)


# --------------------------------------------------------------------------- unusable instances


def test_weight_zero_and_critical_instances_are_never_chosen() -> None:
    drained = inst("s3", "1.4.1", weight=0)
    down = inst("s4", "1.4.2", health=Health.CRITICAL)
    warning = inst("s5", "1.4.3", health=Health.WARNING)  # still serves
    state = make_state([S1, drained, down, warning, C1], {**CANARY_ONLY, "fallback": "any"})
    for d in (decide(state), decide(state, gray=ctx(pins={SERVICE: "^1.4"}))):
        assert candidates(d) == {"s1", "s5"}
        assert picked(d) == {"s1", "s5"}


def test_ejected_instances_are_excluded_from_every_subset_lane_and_pin() -> None:
    b2 = inst("b2", "2.0.0-rc.1", lane="beta")
    state = make_state([*FLEET, b2], ROUTED, ejected={"s1", "c2", "b1"})
    assert candidates(decide(state)) == {"s2"}
    assert candidates(decide(state, BETA)) == {"c1"}
    assert candidates(decide(state, gray=ctx("beta"))) == {"b2"}
    assert candidates(decide(state, gray=ctx(pins={SERVICE: "^1.4"}))) == {"s2"}
    assert state.ejected == {"s1", "c2", "b1"}


def test_ejecting_the_whole_chosen_subset_applies_fallback() -> None:
    state = make_state([S1, S2, C1], {**CANARY_ONLY, "fallback": "default"}, ejected={"c1"})
    d = decide(state, BETA)
    assert (d.subset, d.fallback_from) == ("stable", "canary")


# --------------------------------------------------------------------------- lanes


def test_lane_instances_only_take_their_lanes_traffic() -> None:
    state = make_state(FLEET, ROUTED)
    # b1's version fits "canary", but it is a lane instance: canary and default leave it out.
    for headers in ({}, BETA, {"x-internal": "1"}):
        assert "b1" not in candidates(decide(state, headers))
    d = decide(state, gray=ctx("beta"))
    assert (d.route, d.subset) == ("lane", "lane:beta")
    assert candidates(d) == {"b1"}
    # another lane does not get beta's instance
    assert "b1" not in candidates(decide(state, gray=ctx("gamma")))


def test_lane_traffic_takes_the_lane_even_when_a_route_matches() -> None:
    d = decide(make_state(FLEET, ROUTED), {"x-client": "old-ios"}, gray=ctx("beta"))
    assert (d.route, candidates(d)) == ("lane", {"b1"})


def test_lane_call_without_a_lane_instance_goes_to_the_default_subset() -> None:
    state = make_state(FLEET, ROUTED)
    d = decide(state, gray=ctx("gamma"))
    assert (d.route, d.subset) == ("lane-default", "stable")
    assert candidates(d) == {"s1", "s2"}


def test_lane_default_with_an_empty_default_subset_applies_fallback() -> None:
    state = make_state([C1, OLD], {**CANARY_ONLY, "fallback": "any"})
    d = decide(state, gray=ctx("gamma"))
    assert (d.route, d.subset, d.fallback_from) == ("lane-default", "any", "stable")


@pytest.mark.parametrize("why", ["no instance", "ejected", "critical"])
def test_lane_with_no_usable_instance_leaves_the_lane(why: str) -> None:
    lane_inst = inst("b1", "2.0.0-rc.1", lane="beta", health=Health.CRITICAL if why == "critical" else Health.PASSING)
    fleet = [S1, S2] + ([] if why == "no instance" else [lane_inst])
    state = make_state(fleet, ROUTED, ejected={"b1"} if why == "ejected" else ())
    assert decide(state, gray=ctx("beta")).route == "lane-default"


def test_forced_lane_without_a_lane_instance_fails_clearly() -> None:
    state = make_state(FLEET, ROUTED)
    with pytest.raises(NoInstanceAvailable) as err:
        decide(state, gray=ctx("gamma", forced=True))
    assert (err.value.service, err.value.subset) == (SERVICE, "lane:gamma")
    assert "forced" in str(err.value) and "orders" in str(err.value)
    # forced, and the lane exists: served by it
    assert candidates(decide(state, gray=ctx("beta", forced=True))) == {"b1"}


@pytest.mark.parametrize(
    "subset_spec",
    [{"lane": "beta"}, {"labels": {"lane": "beta"}}, {"version": "2.0.0-rc.1", "lane": "beta"}],
)
def test_a_subset_selecting_a_lane_explicitly_gets_lane_instances(subset_spec: dict) -> None:
    doc = {
        "subsets": {**SUBSETS, "beta-lane": subset_spec},
        "default": "stable",
        "routes": [
            {
                "name": "testers",
                "match": [{"headers": {"x-tester": {"present": True}}}],
                "to": [{"subset": "beta-lane"}],
            }
        ],
    }
    d = decide(make_state(FLEET, doc), {"x-tester": "yes"})
    assert (d.route, d.subset, candidates(d)) == ("testers", "beta-lane", {"b1"})


def test_a_subset_selecting_on_other_labels_leaves_lane_instances_out() -> None:
    zoned_lane = inst("b9", "1.4.0", lane="beta", labels={"zone": "a"})
    zoned = inst("s9", "1.4.0", labels={"zone": "a"})
    doc = {"subsets": {"zone-a": {"labels": {"zone": "a"}}}, "default": "zone-a"}
    assert candidates(decide(make_state([zoned, zoned_lane], doc))) == {"s9"}


def test_no_rules_still_keep_lane_instances_for_their_lane() -> None:
    state = make_state(FLEET, None)
    assert candidates(decide(state, gray=ctx("beta"))) == {"b1"}
    assert "b1" not in candidates(decide(state))


# --------------------------------------------------------------------------- pins


def test_pin_wins_over_routes() -> None:
    state = make_state(FLEET, ROUTED)
    d = decide(state, BETA, gray=ctx(pins={SERVICE: "1.4.0"}))
    assert (d.route, d.subset, candidates(d)) == ("pin", "pin:1.4.0", {"s1"})


def test_pin_wins_over_lanes() -> None:
    d = decide(make_state(FLEET, ROUTED), gray=ctx("beta", forced=True, pins={SERVICE: "v1.5.2"}))
    assert (d.route, candidates(d)) == ("pin", {"s2"})


@pytest.mark.parametrize(
    ("pin", "ids"),
    [
        ("^1.4", {"s1", "s2"}),
        ("1.4", {"s1"}),
        ("1.5.2", {"s2"}),  # "v1.5.2" in the registry: same version
        ("~1.3", {"old1"}),
        ("2.0.0-rc.1", {"c1", "c2"}),  # b1 has it too, but a lane instance takes only its lane
    ],
)
def test_pin_selects_by_version_selector(pin: str, ids: set[str]) -> None:
    assert candidates(decide(make_state(FLEET, ROUTED), gray=ctx(pins={SERVICE: pin}))) == ids


def test_pin_reaches_a_lane_instance_when_only_a_lane_has_the_version() -> None:
    lane_only = inst("b7", "3.0.0-feature", lane="beta")
    d = decide(make_state([*FLEET, lane_only], ROUTED), gray=ctx(pins={SERVICE: "3.0.0-feature"}))
    assert (d.route, candidates(d)) == ("pin", {"b7"})


def test_pin_to_a_non_semver_build() -> None:
    build = inst("x1", "commit-abc123")
    d = decide(make_state([S1, build], ROUTED), gray=ctx(pins={SERVICE: "commit-abc123"}))
    assert candidates(d) == {"x1"}


def test_pin_for_another_service_is_ignored() -> None:
    d = decide(make_state(FLEET, ROUTED), gray=ctx(pins={"payments": "9.9.9"}))
    assert (d.route, d.subset) == ("default", "stable")


@pytest.mark.parametrize("pin", ["3.0.0", "^9", "commit-zzz", ">=banana"])
def test_pin_to_a_missing_version_fails_naming_the_pin(pin: str) -> None:
    with pytest.raises(NoInstanceAvailable) as err:
        decide(make_state(FLEET, {**ROUTED, "fallback": "any"}), gray=ctx(pins={SERVICE: pin}))
    assert err.value.service == SERVICE
    assert f"pin {pin}" in str(err.value)


def test_pin_never_picks_critical_or_ejected_instances() -> None:
    down = inst("c3", "2.0.0-rc.1", health=Health.CRITICAL)
    state = make_state([S1, C1, C2, down], ROUTED, ejected={"c1"})
    assert candidates(decide(state, gray=ctx(pins={SERVICE: "2.0.0-rc.1"}))) == {"c2"}
    with pytest.raises(NoInstanceAvailable):
        decide(make_state([S1, down], ROUTED), gray=ctx(pins={SERVICE: "2.0.0-rc.1"}))


# --------------------------------------------------------------------------- explain


def test_explain_state_names_matching_and_skipped_routes() -> None:
    e = explain_state(make_state(FLEET, ROUTED), req({"x-internal": "1"}))
    assert (e.route, e.subset, e.error) == ("v2-api-or-internal", "canary", None)
    assert {i.id for i in e.candidates} == {"c1", "c2"}
    assert "route 'beta-users' does not match" in e.reasons
    assert "route 'legacy-clients' does not match" in e.reasons
    assert "route 'v2-api-or-internal' matches" in e.reasons
    assert "v2-api-or-internal" in str(e) and "10.0." in str(e)


def test_explain_state_default_route() -> None:
    e = explain_state(make_state(FLEET, ROUTED), req())
    assert (e.route, e.subset) == ("default", "stable")
    assert any("no route matches" in r and "'stable'" in r for r in e.reasons)


def test_explain_state_mentions_the_fallback() -> None:
    e = explain_state(make_state([S1, S2], {**CANARY_ONLY, "fallback": "default"}), req(BETA))
    assert (e.route, e.subset) == ("beta-users", "stable")
    assert "route 'beta-users' matches" in e.reasons
    assert any("canary" in r and "fallback 'default'" in r and "stable" in r for r in e.reasons)


def test_explain_state_mentions_a_dropped_split_target() -> None:
    state = make_state([S1, C1], split_doc([("legacy", 10), ("canary", 30), ("stable", 60)], sticky=True))
    e = explain_state(state, req({"x-user-id": "alice"}))
    assert any("legacy" in r and "dropped" in r for r in e.reasons)
    assert any("sticky" in r and "'alice'" in r for r in e.reasons)
    assert e.subset == decide(state, {"x-user-id": "alice"}).subset


def test_explain_state_failure_carries_the_error() -> None:
    e = explain_state(make_state([S1], {**CANARY_ONLY, "fallback": "fail"}), req(BETA))
    assert e.route is None and e.candidates == ()
    assert e.subset == "canary"
    assert e.error is not None and "'fail'" in e.error
    assert "FAILS" in str(e)


def test_explain_state_pins_and_lanes() -> None:
    state = make_state(FLEET, ROUTED)
    pinned = explain_state(state, req(BETA), ctx(pins={SERVICE: "1.4.0"}))
    assert pinned.route == "pin" and any("pins orders=1.4.0" in r for r in pinned.reasons)
    laned = explain_state(state, req(), ctx("beta"))
    assert laned.route == "lane" and any("lane 'beta'" in r for r in laned.reasons)
    left = explain_state(state, req(), ctx("gamma"))
    assert left.route == "lane-default" and any("no instance carries it" in r for r in left.reasons)
    forced = explain_state(state, req(), ctx("gamma", forced=True))
    assert forced.error is not None and any("forced" in r for r in forced.reasons)


def test_explain_state_without_rules() -> None:
    e = explain_state(make_state(FLEET, None), req())
    assert (e.route, e.subset) == ("default", ALL_SUBSET)
    assert any("no rules" in r for r in e.reasons)


def test_explain_rules_without_instances() -> None:
    rules = compile_service(ROUTED)
    e = explain_rules(SERVICE, rules, req({"x-client": "old-android"}))
    assert (e.route, e.subset, e.candidates, e.error) == ("legacy-clients", "legacy", (), None)
    assert any("no registry" in r for r in e.reasons)
    assert "route 'beta-users' does not match" in e.reasons and "route 'legacy-clients' matches" in e.reasons
    d = explain_rules(SERVICE, rules, req())
    assert (d.route, d.subset) == ("default", "stable")


def test_explain_rules_sticky_split_agrees_with_the_router() -> None:
    doc = split_doc([("canary", 30), ("stable", 70)], sticky=True)
    rules, state = compile_service(doc), make_state(FLEET, doc)
    for key in KEYS[:200]:
        assert explain_rules(SERVICE, rules, req({"x-user-id": key})).subset == decide(state, {"x-user-id": key}).subset


def test_explain_rules_random_split_lists_both_and_pins_lanes_win() -> None:
    rules = compile_service(split_doc([("canary", 30), ("stable", 70)]))
    e = explain_rules(SERVICE, rules, req())
    assert e.route == "split" and set(e.subset.split("/")) == {"canary", "stable"}
    assert any("random draw" in r for r in e.reasons)
    p = explain_rules(SERVICE, rules, req(), ctx("beta", pins={SERVICE: "2.0.0"}))
    assert (p.route, p.subset) == ("pin", "pin:2.0.0")
    lane = explain_rules(SERVICE, rules, req(), ctx("beta"))
    assert (lane.route, lane.subset) == ("lane", "lane:beta")
    none = explain_rules(SERVICE, None, req())
    assert (none.route, none.subset) == ("default", ALL_SUBSET)


# =========================================================================== Balancer + Call


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def balancer(instances: Iterable[Instance], doc: Mapping[str, Any] | None, clock: FakeClock | None = None) -> Balancer:
    rules = {"version": 1, "services": {SERVICE: dict(doc)}} if doc is not None else None
    kw = {"clock": clock} if clock is not None else {}
    return Balancer(StaticDiscovery({SERVICE: list(instances)}), rules, **kw)


def attempt_ids(call: Call, n: int) -> list[str]:
    """The instances of ``n`` attempts that all fail."""
    out = []
    for _ in range(n):
        chosen = call.next_instance()
        out.append(chosen.id)
        call.done(chosen, ok=False)
    return out


RETRY_FLEET = [S1, S2, C1, C2, OLD, B1, inst("b2", "2.0.0-rc.1", lane="beta")]


@pytest.mark.parametrize("fallback", ["default", "any"])
def test_retries_go_to_untried_instances_then_to_the_default_subset(fallback: str) -> None:
    for _ in range(30):  # a fresh balancer each time: failures here must not eject anything
        call = balancer(RETRY_FLEET, {**CANARY_ONLY, "fallback": fallback}).start(SERVICE, req(BETA), EMPTY)
        ids = attempt_ids(call, 4)
        assert set(ids[:2]) == {"c1", "c2"}  # the chosen subset first, never the same twice
        assert set(ids[2:]) == {"s1", "s2"}  # then the default subset
        assert call.attempts == 4 and call.tried == ids
        # then instances outside lanes, never lane instances
        assert call.next_instance().id == "old1"
        # everything tried: the chosen subset again rather than failing
        assert call.next_instance().id in {"c1", "c2"}
        assert call.served(C1).route == "beta-users"


def test_retries_with_fallback_fail_stay_in_the_chosen_subset() -> None:
    for _ in range(30):
        call = balancer(RETRY_FLEET, {**CANARY_ONLY, "fallback": "fail"}).start(SERVICE, req(BETA), EMPTY)
        ids = attempt_ids(call, 4)
        assert set(ids[:2]) == {"c1", "c2"}
        assert set(ids[2:]) <= {"c1", "c2"}


def test_retries_of_a_pinned_call_stay_on_the_pin() -> None:
    for _ in range(30):
        call = balancer(RETRY_FLEET, CANARY_ONLY).start(SERVICE, req(), ctx(pins={SERVICE: "1.4.0"}))
        assert attempt_ids(call, 3) == ["s1", "s1", "s1"]


def test_retries_of_a_lane_call_stay_in_the_lane() -> None:
    for _ in range(30):
        call = balancer(RETRY_FLEET, CANARY_ONLY).start(SERVICE, req(), ctx("beta"))
        ids = attempt_ids(call, 4)
        assert set(ids[:2]) == {"b1", "b2"}
        assert set(ids[2:]) <= {"b1", "b2"}


def test_retries_of_a_lane_default_call_may_leave_the_default_subset() -> None:
    b = balancer(RETRY_FLEET, CANARY_ONLY)
    call = b.start(SERVICE, req(), ctx("gamma"))
    assert call.decision.route == "lane-default"
    ids = attempt_ids(call, 3)
    assert set(ids[:2]) == {"s1", "s2"} and ids[2] in {"c1", "c2", "old1"}


def test_unknown_service_fails_naming_it() -> None:
    b = balancer(RETRY_FLEET, CANARY_ONLY)
    with pytest.raises(NoInstanceAvailable, match="service 'payments'"):
        b.start("payments", req(), EMPTY)


def test_served_records_route_subset_fallback_and_attempts() -> None:
    b = balancer([S1, S2], {**CANARY_ONLY, "fallback": "default"})
    call = b.start(SERVICE, req(BETA), EMPTY)
    chosen = call.next_instance()
    s = call.served(chosen)
    assert (s.service, s.route, s.subset, s.fallback_from, s.attempts) == (SERVICE, "beta-users", "stable", "canary", 1)
    assert (s.instance, s.address, s.version) == (chosen.id, chosen.address, chosen.version)


# --------------------------------------------------------------------------- can_retry


def call_after(doc_retries: dict | None, tries: int = 1) -> Call:
    doc = dict(CANARY_ONLY)
    if doc_retries is not None:
        doc["retries"] = doc_retries
    call = balancer([S1, S2], doc).start(SERVICE, req(), EMPTY)
    attempt_ids(call, tries)
    return call


DEFAULT_POLICY = None  # attempts 2, on connect-failure + reset, idempotent only
BROAD = {"attempts": 2, "on": ["connect-failure", "reset", "timeout", 503]}
ANY_METHOD = {**BROAD, "idempotent_only": False}
NO_CONNECT = {"attempts": 2, "on": [503]}


@pytest.mark.parametrize(
    ("policy", "method", "kind", "expected"),
    [
        # connect failures: nothing was sent, so any method
        (DEFAULT_POLICY, "GET", CONNECT_FAILURE, True),
        (DEFAULT_POLICY, "POST", CONNECT_FAILURE, True),
        (DEFAULT_POLICY, "PATCH", CONNECT_FAILURE, True),
        (NO_CONNECT, "GET", CONNECT_FAILURE, False),
        # resets: idempotent methods only
        (DEFAULT_POLICY, "GET", RESET, True),
        (DEFAULT_POLICY, "PUT", RESET, True),
        (DEFAULT_POLICY, "DELETE", RESET, True),
        (DEFAULT_POLICY, "POST", RESET, False),
        (DEFAULT_POLICY, "PATCH", RESET, False),
        (ANY_METHOD, "POST", RESET, True),
        (NO_CONNECT, "GET", RESET, False),
        # timeouts: only when listed
        (DEFAULT_POLICY, "GET", TIMEOUT, False),
        (BROAD, "GET", TIMEOUT, True),
        (BROAD, "POST", TIMEOUT, False),
        (ANY_METHOD, "POST", TIMEOUT, True),
        # statuses: only those listed, idempotent only unless told
        (DEFAULT_POLICY, "GET", 503, False),
        (BROAD, "GET", 503, True),
        (BROAD, "HEAD", 503, True),
        (BROAD, "GET", 500, False),
        (BROAD, "GET", 502, False),
        (BROAD, "POST", 503, False),
        (ANY_METHOD, "POST", 503, True),
        (NO_CONNECT, "OPTIONS", 503, True),
    ],
)
def test_can_retry_table(policy: dict | None, method: str, kind: str | int, expected: bool) -> None:
    assert call_after(policy).can_retry(kind, method) is expected


@pytest.mark.parametrize("kind", [RESET, TIMEOUT, 503])
def test_a_request_that_cannot_be_replayed_is_only_retried_when_never_sent(kind: str | int) -> None:
    call = call_after(ANY_METHOD)
    assert call.can_retry(kind, "GET", replayable=False) is False
    assert call.can_retry(CONNECT_FAILURE, "POST", replayable=False) is True


@pytest.mark.parametrize(("attempts", "allowed_tries"), [(0, 1), (1, 2), (2, 3), (4, 5)])
def test_retries_are_bounded_by_attempts(attempts: int, allowed_tries: int) -> None:
    call = balancer([S1, S2], {**CANARY_ONLY, "retries": {**BROAD, "attempts": attempts}}).start(SERVICE, req(), EMPTY)
    tries = 0
    while True:
        attempt_ids(call, 1)
        tries += 1
        if not call.can_retry(CONNECT_FAILURE, "GET") or tries > 20:
            break
    assert tries == allowed_tries
    assert not call.can_retry(503, "GET")


# --------------------------------------------------------------------------- outlier ejection


OUTLIER_RULES = {
    **CANARY_ONLY,
    "outlier_detection": {"consecutive_errors": 2, "base_ejection_time": "30s", "max_ejection_percent": 50},
}
STABLE3 = [S1, S2, inst("s3", "1.4.9")]


def fail_on(b: Balancer, target: Instance, times: int) -> None:
    for _ in range(times):
        b.start(SERVICE, req(), EMPTY).done(target, ok=False)


def default_candidates(b: Balancer) -> set[str]:
    return candidates(b.start(SERVICE, req(), EMPTY).decision)


def test_consecutive_failures_eject_an_instance_until_base_ejection_time() -> None:
    clock = FakeClock()
    b = balancer(STABLE3, OUTLIER_RULES, clock)
    fail_on(b, S1, 1)
    assert default_candidates(b) == {"s1", "s2", "s3"}  # one failure: not yet
    fail_on(b, S1, 1)
    assert default_candidates(b) == {"s2", "s3"}
    picks = {b.start(SERVICE, req(), EMPTY).next_instance().id for _ in range(300)}
    assert picks == {"s2", "s3"}
    clock.now += 29.5
    assert default_candidates(b) == {"s2", "s3"}
    clock.now += 0.5
    assert default_candidates(b) == {"s1", "s2", "s3"}
    picks = {b.start(SERVICE, req(), EMPTY).next_instance().id for _ in range(300)}
    assert picks == {"s1", "s2", "s3"}


def test_a_success_between_failures_prevents_ejection() -> None:
    b = balancer(STABLE3, OUTLIER_RULES, FakeClock())
    fail_on(b, S1, 1)
    b.start(SERVICE, req(), EMPTY).done(S1, ok=True)
    fail_on(b, S1, 1)
    assert default_candidates(b) == {"s1", "s2", "s3"}


def test_default_outlier_policy_ejects_after_five_errors() -> None:
    b = balancer(STABLE3, CANARY_ONLY, FakeClock())
    fail_on(b, S2, 4)
    assert "s2" in default_candidates(b)
    fail_on(b, S2, 1)
    assert default_candidates(b) == {"s1", "s3"}


def test_ejecting_the_only_canary_sends_its_route_through_fallback_then_back() -> None:
    clock = FakeClock()
    b = balancer([S1, S2, C1], OUTLIER_RULES, clock)
    assert b.start(SERVICE, req(BETA), EMPTY).decision.subset == "canary"
    fail_on(b, C1, 2)
    d = b.start(SERVICE, req(BETA), EMPTY).decision
    assert (d.subset, d.fallback_from) == ("stable", "canary")
    clock.now += 30
    assert b.start(SERVICE, req(BETA), EMPTY).decision.subset == "canary"


def test_ejection_cap_keeps_part_of_a_subset_serving() -> None:
    b = balancer(STABLE3, OUTLIER_RULES, FakeClock())
    for target in STABLE3:
        fail_on(b, target, 2)
    # 50%: only one of three stable instances may be out at a time.
    assert len(default_candidates(b)) == 2


def test_a_call_in_flight_keeps_its_state_while_later_calls_see_the_ejection() -> None:
    b = balancer(STABLE3, OUTLIER_RULES, FakeClock())
    in_flight = b.start(SERVICE, req(), EMPTY)
    fail_on(b, S1, 2)
    assert "s1" in candidates(in_flight.decision)
    assert "s1" not in default_candidates(b)
