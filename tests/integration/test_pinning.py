"""Test pins and lanes (graylb.testing.pin_version / lane, the graylb_pin / graylb_lane fixtures)
reach every call in the process: sync and async HTTP, gRPC and aio gRPC, threads nobody handed
the context to, asyncio tasks; and a pin without an instance fails loudly."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import httpx
import pytest

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing import PinNotSatisfied, lane, pin_version
from graylb.testing.grpc_server import serve_echo

RULES = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
            "default": "stable",
            "routes": [{"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]}],
        }
    }
}


@pytest.fixture
def orders(fleet):
    fleet.start("v1-a", "orders", "1.4.2")
    fleet.start("v1-b", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    fleet.start("v2-beta", "orders", "2.1.0", lane="beta")
    balancer = graylb.Balancer(fleet.registry, RULES)
    yield balancer
    balancer.close()


def _versions_from_everywhere(mode: str, balancer: graylb.Balancer, n: int = 20) -> Counter:
    """Calls orders from the test thread, from a bare thread (no context handed over) and, for
    async, from several tasks; returns the versions that answered."""
    seen: Counter = Counter()

    if mode == "sync":
        client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=5)

        def call() -> None:
            for _ in range(n):
                seen[client.get("http://orders/").json()["version"]] += 1

        call()
        t = threading.Thread(target=call)  # a thread the code under test starts itself
        t.start()
        t.join()
        client.close()
        return seen

    async def main() -> None:
        async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer), timeout=5) as client:

            async def call() -> None:
                for _ in range(n):
                    seen[(await client.get("http://orders/")).json()["version"]] += 1

            await asyncio.gather(*(asyncio.create_task(call()) for _ in range(3)))

    t = threading.Thread(target=asyncio.run, args=(main(),))  # an event loop in its own thread
    t.start()
    t.join()
    return seen


def test_graylb_pin_reaches_threads_and_tasks(mode, orders, graylb_pin):
    assert set(_versions_from_everywhere(mode, orders)) == {"1.4.2"}  # the rules' default, unpinned
    graylb_pin("orders", "2.0.0")
    assert set(_versions_from_everywhere(mode, orders)) == {"2.0.0"}


def test_graylb_pin_beats_the_callers_own_context_and_rules(mode, orders, graylb_pin):
    graylb_pin("orders", "1.4")
    with graylb.gray(pins={"orders": "2.0.0"}):  # what an inbound x-gray-pin header would set
        r = httpx.Client(transport=graylb.GrayTransport(orders)).get("http://orders/", headers={"user-group": "beta"})
    assert r.json()["version"] == "1.4.2"
    assert r.extensions["graylb"].route == "pin"


def test_graylb_lane_sends_every_call_to_the_lane(mode, orders, graylb_lane):
    graylb_lane("beta")
    assert set(_versions_from_everywhere(mode, orders)) == {"2.1.0"}


def test_pin_is_carried_to_the_next_hop(fleet, graylb_pin):
    """The pin rides the outbound headers, so a downstream process honours it too."""
    seen = {}

    def downstream(environ, start_response):
        seen["pin"] = environ.get("HTTP_X_GRAY_PIN")
        start_response("200 OK", [])
        return [b"ok"]

    server = graylb.testing.serve_wsgi(downstream)
    fleet.registry.add({"host": server.host, "port": server.port, "version": "2.0.0"}, service="orders")
    graylb_pin("orders", "2.0.0")
    with graylb.Balancer(fleet.registry, services=["orders"]) as balancer:
        httpx.Client(transport=graylb.GrayTransport(balancer), timeout=5).get("http://orders/")
    server.stop()
    assert seen["pin"] and "orders" in seen["pin"] and "2.0.0" in seen["pin"]


@pytest.mark.parametrize("aio", [False, True], ids=["grpc", "grpc-aio"])
def test_graylb_pin_reaches_grpc_calls(aio, graylb_pin):
    v1, v2 = serve_echo("orders", "1.4.2"), serve_echo("orders", "2.0.0")
    registry = graylb.StaticDiscovery({"orders": [v1.static_entry(), v2.static_entry()]})
    balancer = graylb.Balancer(registry, RULES)
    graylb_pin("orders", "2.0.0")
    try:
        if aio:

            async def calls() -> set[str]:
                channel = graylb.AioGrayChannel(balancer, "orders")
                stub = echo_pb2_grpc.EchoStub(channel)
                replies = await asyncio.gather(*(stub.Say(echo_pb2.SayRequest(text="hi")) for _ in range(10)))
                await channel.close()
                return {r.version for r in replies}

            versions = asyncio.run(calls())
        else:
            stub = echo_pb2_grpc.EchoStub(graylb.GrayChannel(balancer, "orders"))
            versions = {stub.Say(echo_pb2.SayRequest(text="hi")).version for _ in range(10)}
    finally:
        balancer.close()
        v1.stop(), v2.stop()
    assert versions == {"2.0.0"}


def test_a_missing_version_fails_the_call_and_names_what_exists(orders):
    client = httpx.Client(transport=graylb.GrayTransport(orders), timeout=5)
    with pytest.raises(PinNotSatisfied) as block:
        with pin_version("orders", "3.0.0"):
            with pytest.raises(graylb.NoInstanceAvailable) as call:
                client.get("http://orders/")
    assert "service 'orders'" in str(call.value) and "3.0.0" in str(call.value)
    assert "routable versions: 1.4.2 x2, 2.0.0, 2.1.0" in str(call.value)
    assert "pin_version('orders', '3.0.0'): 1 call(s) found no instance" in str(block.value)


def test_a_swallowed_miss_still_fails_the_block(orders):
    """Code under test that turns the error into a fallback must not hide a wrong pin."""
    client = httpx.Client(transport=graylb.GrayTransport(orders), timeout=5)

    def checkout() -> str:
        try:
            return client.get("http://orders/").json()["version"]
        except graylb.NoInstanceAvailable:
            return "fallback"

    with pytest.raises(PinNotSatisfied, match="orders: 1 call"):
        with pin_version("orders", "9"):
            assert checkout() == "fallback"
    with pin_version("orders", "9", strict=False):  # opted out: only the call fails
        assert checkout() == "fallback"


def test_pins_end_with_their_block_and_nest(orders):
    client = httpx.Client(transport=graylb.GrayTransport(orders), timeout=5)
    version = lambda: client.get("http://orders/").json()["version"]  # noqa: E731
    with pin_version("orders", "2"):
        with pin_version({"orders": "1.4.2"}):
            assert version() == "1.4.2"  # the inner pin wins
        assert version() == "2.0.0"
        with lane("beta"):
            assert version() == "2.0.0"  # a pin outranks the lane
    assert version() == "1.4.2"
    assert graylb.current() == graylb.EMPTY


def test_pin_version_decorates_sync_async_and_classes(orders):
    client = httpx.Client(transport=graylb.GrayTransport(orders), timeout=5)

    @pin_version("orders", "2.0.0")
    def sync_call() -> str:
        return client.get("http://orders/").json()["version"]

    @pin_version("orders", "2.0.0")
    async def async_call() -> str:
        async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(orders), timeout=5) as c:
            return (await c.get("http://orders/")).json()["version"]

    @lane("beta")
    class Suite:
        def test_one(self) -> str:
            return client.get("http://orders/").json()["version"]

    assert sync_call() == "2.0.0" and sync_call() == "2.0.0"  # reusable: a fresh activation per call
    assert asyncio.run(async_call()) == "2.0.0"
    assert Suite().test_one() == "2.1.0"
    assert client.get("http://orders/").json()["version"] == "1.4.2"


@pytest.mark.parametrize(
    "args, message",
    [
        (("orders",), "which version?"),
        (("orders", ">>nonsense<<"), "service 'orders': bad version selector '>>nonsense<<'"),
        (("", "1.0"), "service name must be a non-empty string"),
        (({"orders": "1"}, "2"), "either a mapping of pins or a service and a version"),
    ],
)
def test_bad_pins_are_refused_up_front(args, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("?", r"\?").replace("(", r"\(")):
        pin_version(*args)
