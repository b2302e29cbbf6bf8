"""graylb's pytest plugin as a user meets it: inner pytest sessions (pytester) that only
install graylb — no conftest imports — and use its fixtures and markers."""

from __future__ import annotations

import pytest

ORDERS = """
import httpx, pytest, graylb

RULES = {
    "services": {
        "orders": {"subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}}, "default": "stable"}
    }
}

@pytest.fixture
def orders(graylb_registry):
    # Routing is decided before any connection is made, so unopened ports are enough here.
    graylb_registry.add({"host": "127.0.0.1", "port": 9, "version": "1.0.0"}, service="orders")
    graylb_registry.add({"host": "127.0.0.1", "port": 10, "version": "1.0.0"}, service="orders")
    with graylb.Balancer(graylb_registry, RULES) as balancer:
        yield balancer

def decide(balancer):
    return balancer.decide("orders", graylb.RequestInfo("GET", "/", {}.get))
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function", *args
    )


def test_fixtures_come_with_the_install(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--fixtures")
    for name in ("graylb_pin", "graylb_lane", "graylb_registry", "graylb_consul", "graylb_nacos", "graylb_backend"):
        result.stdout.fnmatch_lines([f"{name}*"])


def test_a_pin_routes_every_call_then_goes_away(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        ORDERS
        + """
def test_pinned(orders, graylb_registry, graylb_pin):
    graylb_registry.add({"host": "127.0.0.1", "port": 11, "version": "2.0.0"}, service="orders")
    graylb_pin("orders", "2.0.0")
    d = decide(orders)
    assert d.route == "pin" and {i.version for i in d.picker.instances} == {"2.0.0"}

def test_next_test_is_not_pinned(orders):
    assert decide(orders).route == "default"
    assert graylb.current() == graylb.EMPTY
"""
    )
    _run(pytester).assert_outcomes(passed=2)


def test_a_pin_without_such_version_fails_the_test_with_the_versions_on_offer(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        ORDERS
        + """
def test_call_raises(orders, graylb_pin):
    graylb_pin("orders", "2.0.0")
    decide(orders)

def test_swallowed(orders, graylb_pin):
    graylb_pin("orders", "2.0.0")
    try:
        decide(orders)
    except graylb.NoInstanceAvailable:
        pass  # the code under test shows a fallback page: the test must still fail
"""
    )
    result = _run(pytester)
    result.assert_outcomes(failed=2, errors=0)  # failures of the tests, not of their teardown
    result.stdout.fnmatch_lines(
        [
            "*NoInstanceAvailable: no instance available for service 'orders' subset 'pin 2.0.0'*routable versions: "
            "1.0.0 x2*",
            "*PinNotSatisfied: pin_version('orders', '2.0.0'): 1 call(s) found no instance to serve them*",
        ]
    )


def test_markers_pin_and_lane_a_whole_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest, graylb

@pytest.mark.graylb_pin("orders", "2.0.0")
@pytest.mark.graylb_lane("beta")
def test_marked():
    ctx = graylb.current()
    assert dict(ctx.pins) == {"orders": "2.0.0"} and ctx.lane == "beta"

@pytest.mark.graylb_pin({"orders": "1", "users": "3.1"})
class TestClass:
    def test_inherits(self):
        assert dict(graylb.current().pins) == {"orders": "1", "users": "3.1"}
"""
    )
    _run(pytester, "--strict-markers").assert_outcomes(passed=2)


def test_registry_marker_runs_a_test_on_each_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest, graylb

@pytest.mark.graylb_registry("memory", "consul", "nacos")
def test_everywhere(graylb_backend):
    graylb_backend.set_rules({"services": {"orders": {"subsets": {"canary": {"version": "^2"}}, "default": "canary"}}})
    graylb_backend.add("orders", "127.0.0.1", 9, version="1.0.0")
    balancer = graylb_backend.balancer()
    graylb_backend.add("orders", "127.0.0.1", 10, version="2.0.0")  # returns once the balancer sees it
    d = balancer.decide("orders", graylb.RequestInfo("GET", "/", {}.get))
    assert [i.port for i in d.picker.instances] == [10]
    print("backend", graylb_backend.kind)
"""
    )
    result = _run(pytester, "-v", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*test_everywhere?graylb-memory?*", "*test_everywhere?graylb-consul?*", "*test_everywhere?graylb-nacos?*"]
    )


@pytest.mark.parametrize("how", ["option", "ini"])
def test_option_and_ini_choose_the_backend(pytester: pytest.Pytester, how: str) -> None:
    pytester.makepyfile(
        """
def test_kind(graylb_backend):
    assert graylb_backend.kind == "nacos"
    assert graylb_backend.fake.url.startswith("http://127.0.0.1:")
"""
    )
    if how == "ini":
        pytester.makeini("[pytest]\ngraylb_registry = nacos\n")
        _run(pytester).assert_outcomes(passed=1)
    else:
        _run(pytester, "--graylb-registry=nacos").assert_outcomes(passed=1)


def test_unknown_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.graylb_registry("etcd")
def test_x(graylb_backend):
    pass
"""
    )
    result = _run(pytester)
    result.stdout.fnmatch_lines(["*graylb_registry('etcd'): choose from memory, consul, nacos*"])
    assert result.ret != 0


def test_fake_server_fixtures_serve_graylb_clients(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import graylb

def test_consul(graylb_consul):
    graylb_consul.register("orders", address="127.0.0.1", port=8080, meta={"version": "2.0.0"})
    with graylb.ConsulDiscovery(graylb_consul.url) as discovery:
        assert [
            i.version for i in discovery.watch("orders").wait_ready(5) and discovery.snapshot("orders").instances
        ] == ["2.0.0"]

def test_nacos(graylb_nacos):
    graylb_nacos.register("orders", "127.0.0.1", 8080, metadata={"version": "2.0.0"})
    with graylb.NacosDiscovery(graylb_nacos.url) as discovery:
        assert [
            i.version for i in discovery.watch("orders").wait_ready(5) and discovery.snapshot("orders").instances
        ] == ["2.0.0"]
"""
    )
    _run(pytester).assert_outcomes(passed=2)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(graylb_pin):\n    pass\n")
    result = _run(pytester, "-p", "no:graylb")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'graylb_pin' not found*"])
