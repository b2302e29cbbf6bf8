"""A call never routes on a state older than what the registry watch or the rule source already
shows, even while their listeners are still running -- except while the balancer is rebuilding
that very state: then the call routes on the state in force and does not wait for the rebuild.
A rules change rebuilds only the services whose rules it changed."""

from __future__ import annotations

import threading
import time

import graylb
from graylb.routing.request import RequestInfo

REQUEST = RequestInfo("GET", "/", {}.get)
RULES = {
    "services": {"orders": {"subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}}, "default": "stable"}}
}


class SlowListener:
    """Holds the publishing thread, as a slow listener would, from the first change after
    ``arm()`` (add_listener calls it once at once with what is current) until ``release()``."""

    def __init__(self) -> None:
        self.armed, self.started, self.released = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, _: object) -> None:
        if self.armed.is_set():
            self.started.set()
            self.released.wait(5)


def _a_and_b() -> tuple[graylb.StaticDiscovery, graylb.Balancer]:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": "10.0.0.1", "port": 80, "version": "1.0.0", "id": "a"},
                {"host": "10.0.0.2", "port": 80, "version": "1.0.0", "id": "b"},
            ]
        }
    )
    return registry, graylb.Balancer(registry, RULES)


def _routed(balancer: graylb.Balancer) -> set[str]:
    return {i.id for i in balancer.decide("orders", REQUEST).picker.instances}


def test_a_published_snapshot_is_routed_on_before_its_listeners_finish() -> None:
    registry, balancer = _a_and_b()
    assert _routed(balancer) == {"a", "b"}
    watch = registry.watch("orders")
    slow = SlowListener()
    watch._listeners = [slow, *watch._listeners]  # ahead of the balancer's rebuild
    slow.armed.set()
    remover = threading.Thread(target=registry.remove, args=("b", "orders"))
    remover.start()
    assert slow.started.wait(5)
    try:
        assert len(registry.snapshot("orders").instances) == 1
        assert _routed(balancer) == {"a"}
    finally:
        slow.released.set()
        remover.join()


def test_applied_rules_are_routed_on_before_their_listeners_finish() -> None:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": "10.0.0.1", "port": 80, "version": "1.0.0"},
                {"host": "10.0.0.2", "port": 80, "version": "2.0.0"},
            ]
        }
    )
    rules = graylb.StaticRules(RULES)
    slow = SlowListener()
    rules.add_listener(slow)  # registered before the balancer's rebuild, so it runs first
    balancer = graylb.Balancer(registry, rules)
    assert balancer.decide("orders", REQUEST).subset == "stable"
    canary_default = {"services": {"orders": {**RULES["services"]["orders"], "default": "canary"}}}
    applier = threading.Thread(target=rules.apply, args=(canary_default,))
    slow.armed.set()
    applier.start()
    assert slow.started.wait(5)
    try:
        while rules.current.service("orders").default != "canary":
            time.sleep(0.001)
        assert balancer.decide("orders", REQUEST).subset == "canary"
    finally:
        slow.released.set()
        applier.join()


def test_a_call_routes_on_the_state_in_force_while_its_rebuild_is_under_way() -> None:
    registry, balancer = _a_and_b()
    assert _routed(balancer) == {"a", "b"}
    entry = balancer._services["orders"]
    entry.lock.acquire()  # a rebuild of this service is under way (held here, as a listener would)
    remover = threading.Thread(target=registry.remove, args=("b", "orders"))
    try:
        remover.start()  # publishes, then its listener waits for the lock
        while registry.watch("orders").revision == entry.revision:
            time.sleep(0.001)
        # Behind the registry, and its rebuild cannot finish while the lock is held: the call
        # neither waits for it nor rebuilds, it routes on the state in force.
        seen: list[set[str]] = []
        caller = threading.Thread(target=lambda: seen.append(_routed(balancer)))
        caller.start()
        caller.join(5)
        assert not caller.is_alive(), "the call waited for the rebuild under way"
        assert seen == [{"a", "b"}]
    finally:
        entry.lock.release()
        remover.join(5)
    assert _routed(balancer) == {"a"}


def test_a_rules_change_rebuilds_only_the_services_it_changes() -> None:
    two = {
        "services": {
            **RULES["services"],
            "payments": {"subsets": {"v1": {"version": "^1"}}, "default": "v1"},
        }
    }
    registry = graylb.StaticDiscovery(
        {
            "orders": [{"host": "10.0.0.1", "port": 80, "version": "1.0.0"}],
            "payments": [{"host": "10.0.0.3", "port": 80, "version": "1.0.0"}],
        }
    )
    rules = graylb.StaticRules(two)
    balancer = graylb.Balancer(registry, rules)
    orders, payments = balancer.state("orders"), balancer.state("payments")
    changed = {"services": {**two["services"], "payments": {**two["services"]["payments"], "fallback": "any"}}}
    rules.apply(changed)
    assert balancer.state("orders") is orders, "orders' rules did not change: its state stands"
    assert balancer.state("payments") is not payments
    assert balancer.state("payments").fallback == "any"
    assert balancer.decide("orders", REQUEST).subset == "stable"
