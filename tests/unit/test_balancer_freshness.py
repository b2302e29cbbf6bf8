"""A call never routes on a state older than what the registry watch or the rule source already
shows, even while their listeners (the balancer's rebuild among them) are still running."""

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


def test_a_published_snapshot_is_routed_on_before_its_listeners_finish() -> None:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": "10.0.0.1", "port": 80, "version": "1.0.0", "id": "a"},
                {"host": "10.0.0.2", "port": 80, "version": "1.0.0", "id": "b"},
            ]
        }
    )
    balancer = graylb.Balancer(registry, RULES)
    assert {i.id for i in balancer.decide("orders", REQUEST).picker.instances} == {"a", "b"}
    watch = registry.watch("orders")
    slow = SlowListener()
    watch._listeners = [slow, *watch._listeners]  # ahead of the balancer's rebuild
    slow.armed.set()
    remover = threading.Thread(target=registry.remove, args=("b", "orders"))
    remover.start()
    assert slow.started.wait(5)
    try:
        assert len(registry.snapshot("orders").instances) == 1
        assert {i.id for i in balancer.decide("orders", REQUEST).picker.instances} == {"a"}
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
