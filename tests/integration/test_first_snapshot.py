"""The first calls to a service, made at once from many threads or tasks, all wait for its first
snapshot — whoever opened the watch — and none fails (issue: "concurrent first calls fail").

One table of callers (sync and async httpx transports, sync and aio gray channels) runs over
FakeConsul and FakeNacos; each caller serves both an HTTP server and a gRPC Echo server
registered under the same service name, so the picks are real calls over loopback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.nacos.client import NacosConfig
from graylb.nacos.discovery import NacosDiscovery
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.fake_nacos import FakeNacos
from graylb.testing.grpc_server import EchoServer
from graylb.testing.http_server import serve_wsgi
from tests.conftest import version_app, wait_until

N = 16  # concurrent first callers


class Registry:
    """A started fake registry and how to reach it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fake: Any = FakeConsul().start() if kind == "consul" else FakeNacos().start()

    def register(self, host: str, port: int, version: str, protocol: str) -> None:
        meta = {"version": version, "protocol": protocol}
        if self.kind == "consul":
            self.fake.register("orders", id=f"orders-{protocol}-{port}", address=host, port=port, meta=meta)
        else:
            self.fake.register("orders", host, port, metadata=meta)

    def discovery(self, **kw: Any) -> graylb.Discovery:
        if self.kind == "consul":
            return ConsulDiscovery(ConsulConfig(self.fake.url), **kw)
        return NacosDiscovery(NacosConfig(self.fake.url), **kw)

    def stop(self) -> None:
        self.fake.stall(0)  # release stalled requests before stopping
        self.fake.stop()


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    reg = Registry(request.param)
    yield reg
    reg.stop()


@pytest.fixture
def upstreams(registry: Registry) -> Iterator[None]:
    """One HTTP and one gRPC server for 'orders' v1, each registered with its protocol."""
    http = serve_wsgi(version_app("orders", "1.0.0"))
    grpc_server = EchoServer("orders", "1.0.0")
    registry.register(http.host, http.port, "1.0.0", "http")
    registry.register(grpc_server.host, grpc_server.port, "1.0.0", "grpc")
    yield
    http.stop()
    grpc_server.stop()


# Each caller makes N first calls at once and returns one result per call: the version that
# answered, or the exception. Async callers also report whether the event loop kept running
# while they waited (a ticker task must tick before any call has finished).
PROTOCOL = {"httpx-sync": "http", "httpx-async": "http", "grpc-sync": "grpc", "grpc-aio": "grpc"}
RULES_BY_PROTOCOL = {
    protocol: {
        "services": {
            "orders": {"subsets": {"stable": {"version": "^1", "labels": {"protocol": protocol}}}, "default": "stable"}
        }
    }
    for protocol in ("http", "grpc")
}


def _threads(call: Callable[[], str]) -> list[str | BaseException]:
    barrier = threading.Barrier(N)

    def one() -> str | BaseException:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc

    with ThreadPoolExecutor(N) as pool:
        return list(pool.map(lambda _: one(), range(N)))


async def _tasks(call: Callable[[int], Any]) -> tuple[list[str | BaseException], bool]:
    finished = 0
    loop_ran_while_waiting = False

    async def ticker() -> None:
        nonlocal loop_ran_while_waiting
        while finished == 0:
            await asyncio.sleep(0.01)
            loop_ran_while_waiting = loop_ran_while_waiting or finished == 0

    async def one(i: int) -> str | BaseException:
        nonlocal finished
        try:
            return await call(i)
        except Exception as exc:  # noqa: BLE001
            return exc
        finally:
            finished += 1

    tick = asyncio.ensure_future(ticker())
    results = await asyncio.gather(*(one(i) for i in range(N)))
    await tick
    return list(results), loop_ran_while_waiting


def run_first_calls(caller: str, balancer: graylb.Balancer) -> tuple[list[str | BaseException], bool | None]:
    if caller == "httpx-sync":
        with httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10) as client:
            return _threads(lambda: client.get("http://orders/").json()["version"]), None
    if caller == "grpc-sync":
        with graylb.GrayChannel(balancer, "orders") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            return _threads(lambda: stub.Say(echo_pb2.SayRequest(text="hi"), timeout=10).version), None
    if caller == "httpx-async":

        async def main() -> tuple[list[str | BaseException], bool]:
            async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer), timeout=10) as client:
                return await _tasks(lambda i: _ahttp(client))

        return asyncio.run(main())

    async def aio_main() -> tuple[list[str | BaseException], bool]:
        channel = graylb.AioGrayChannel(balancer, "orders")
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            # Half unary, half server-streaming: a streaming call object is handed back at once,
            # before any snapshot, and must still start once it is there.
            return await _tasks(lambda i: _aio_say(stub) if i % 2 else _aio_count(stub))
        finally:
            await channel.close()

    return asyncio.run(aio_main())


async def _ahttp(client: httpx.AsyncClient) -> str:
    return (await client.get("http://orders/")).json()["version"]


async def _aio_say(stub: Any) -> str:
    return (await stub.Say(echo_pb2.SayRequest(text="hi"), timeout=10)).version


async def _aio_count(stub: Any) -> str:
    replies = [r async for r in stub.Count(echo_pb2.CountRequest(count=2), timeout=10)]
    assert [r.seq for r in replies] == [0, 1]
    return replies[0].version


CALLERS = list(PROTOCOL)


def _balancer(registry: Registry, caller: str, **kw: Any) -> graylb.Balancer:
    return graylb.Balancer(registry.discovery(), RULES_BY_PROTOCOL[PROTOCOL[caller]], **kw)


@pytest.mark.parametrize("caller", CALLERS)
def test_concurrent_first_calls_all_succeed(registry: Registry, upstreams: None, caller: str) -> None:
    with _balancer(registry, caller) as balancer:
        results, _loop_ran = run_first_calls(caller, balancer)
    assert results == ["1.0.0"] * N, [r for r in results if r != "1.0.0"]


@pytest.mark.parametrize("caller", CALLERS)
def test_registry_slow_to_answer_first_calls_wait_and_succeed(registry: Registry, upstreams: None, caller: str) -> None:
    registry.fake.stall(1.0)  # every registry request answers after 1 s, the first one too
    with _balancer(registry, caller) as balancer:
        results, loop_ran = run_first_calls(caller, balancer)
    assert results == ["1.0.0"] * N, [r for r in results if r != "1.0.0"]
    if loop_ran is not None:
        assert loop_ran, "the event loop was blocked while the first calls waited for a snapshot"


@pytest.mark.parametrize("caller", CALLERS)
def test_registry_that_never_answers_gives_a_clear_error(registry: Registry, upstreams: None, caller: str) -> None:
    registry.fake.stall(60)
    with _balancer(registry, caller, first_snapshot_timeout=0.5) as balancer:
        results, loop_ran = run_first_calls(caller, balancer)
        where = balancer.discovery.describe()
    assert all(isinstance(r, graylb.NoSnapshot) for r in results), results
    message = str(results[0])
    assert f"no snapshot of 'orders' from {where} after 0.5 s: no answer yet" in message, message
    assert where == f"{registry.kind} at {registry.fake.url}"
    if loop_ran is not None:
        assert loop_ran, "the event loop was blocked while the first calls waited for a snapshot"


def test_calls_after_the_deadline_fail_at_once_then_route_when_the_registry_answers(
    registry: Registry, upstreams: None
) -> None:
    registry.fake.stall(60)
    with (
        _balancer(registry, "httpx-sync", first_snapshot_timeout=0.3) as balancer,
        httpx.Client(transport=graylb.GrayTransport(balancer)) as client,
    ):
        with pytest.raises(graylb.NoSnapshot):
            client.get("http://orders/")
        # The deadline has passed: later callers are not held again, they fail with the
        # same clear error until the registry answers.
        errors = _threads(lambda: client.get("http://orders/").text)
        assert all(isinstance(e, graylb.NoSnapshot) for e in errors)
        registry.fake.stall(0)
        wait_until(lambda: balancer.ready("orders"), message="the first snapshot after the stall ended")
        assert client.get("http://orders/").json()["version"] == "1.0.0"


def test_refused_registry_error_names_the_registry_and_its_last_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        unused_tcp_port = sock.getsockname()[1]
    discovery = ConsulDiscovery(ConsulConfig(f"http://127.0.0.1:{unused_tcp_port}"))
    with graylb.Balancer(discovery, RULES_BY_PROTOCOL["http"], first_snapshot_timeout=0.5) as balancer:
        with pytest.raises(graylb.NoSnapshot) as caught:
            balancer.start("orders", graylb.RequestInfo("GET", "/"))
    err = caught.value
    assert err.service == "orders" and err.registry == f"consul at http://127.0.0.1:{unused_tcp_port}"
    assert err.last_error and "no answer yet" not in str(err)
    assert (
        f"no snapshot of 'orders' from consul at http://127.0.0.1:{unused_tcp_port} after 0.5 s: {err.last_error}"
        in str(err)
    )


@pytest.mark.parametrize("caller", ["httpx-sync", "grpc-aio"])
def test_a_reopened_watch_gives_the_same_guarantee(registry: Registry, upstreams: None, caller: str) -> None:
    """A watch dropped after an idle spell is re-opened by the next calls: all of them wait for
    the new watch's first snapshot, none sees the gap."""
    with graylb.Balancer(registry.discovery(idle_timeout=0.2), RULES_BY_PROTOCOL[PROTOCOL[caller]]) as balancer:
        assert run_first_calls(caller, balancer)[0] == ["1.0.0"] * N
        first_watch = balancer.discovery.watch("orders")  # the watch the first calls opened
        wait_until(lambda: first_watch.closed, message="the idle watch dropped")
        registry.fake.stall(0.5)  # the re-opened watch's first answer takes a while
        results, _ = run_first_calls(caller, balancer)
    assert results == ["1.0.0"] * N, [r for r in results if r != "1.0.0"]


def test_channel_ready_awaits_the_first_snapshot(registry: Registry, upstreams: None) -> None:
    registry.fake.stall(0.5)

    async def main(balancer: graylb.Balancer) -> tuple[bool, bool]:
        channel = graylb.AioGrayChannel(balancer, "orders")
        try:
            before = balancer.ready("orders")
            await channel.channel_ready()
            return before, balancer.ready("orders")
        finally:
            await channel.close()

    with _balancer(registry, "grpc-aio") as balancer:
        assert asyncio.run(main(balancer)) == (False, True)
    registry.fake.stall(60)
    with _balancer(registry, "grpc-aio", first_snapshot_timeout=0.3) as balancer, pytest.raises(graylb.NoSnapshot):
        asyncio.run(main(balancer))
