"""GrayChannel and AioGrayChannel against real grpc servers on 127.0.0.1 (v1/v2 fleets)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import grpc
import pytest

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing.grpc_server import serve_echo
from graylb.transports.grpc import AioGrayChannel, GrayChannel

RULES = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
            "default": "stable",
            "routes": [
                {"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]},
                {
                    "name": "split",
                    "to": [{"subset": "canary", "weight": 30}, {"subset": "stable", "weight": 70}],
                    "sticky": {"header": "x-user-id"},
                },
            ],
            "outlier_detection": {"consecutive_errors": 2, "base_ejection_time": "30s", "max_ejection_percent": 100},
        }
    }
}


@pytest.fixture
def fleet():
    servers = {
        "v1-a": serve_echo("orders", "1.0.0"),
        "v1-b": serve_echo("orders", "1.0.0"),
        "v2": serve_echo("orders", "2.0.0"),
    }
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": s.host, "port": s.port, "version": s_version, "id": key}
                for key, s, s_version in ((k, s, "2.0.0" if k == "v2" else "1.0.0") for k, s in servers.items())
            ]
        }
    )
    yield servers, registry
    for s in servers.values():
        s.stop()


def run_calls(
    mode: str, balancer: graylb.Balancer, requests: list[dict], ctx: graylb.GrayContext | None = None
) -> list:
    """Unary Say calls through the gray channel; returns (reply, served) pairs or exceptions."""
    if mode == "sync":
        out = []
        with GrayChannel(balancer, "orders") as channel, graylb.gray(lane=ctx.lane, pins=ctx.pins) if ctx else _null():
            stub = echo_pb2_grpc.EchoStub(channel)
            for md in requests:
                try:
                    reply, call = stub.Say.with_call(
                        echo_pb2.SayRequest(text="hi"), metadata=list(md.items()), timeout=5
                    )
                    out.append((reply, call.graylb))
                except grpc.RpcError as exc:
                    out.append(exc)
        return out

    async def run():
        res = []
        async with AioGrayChannel(balancer, "orders") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            with graylb.gray(lane=ctx.lane, pins=ctx.pins) if ctx else _null():
                for md in requests:
                    try:
                        call = stub.Say(echo_pb2.SayRequest(text="hi"), metadata=list(md.items()), timeout=5)
                        reply = await call
                        res.append((reply, call.graylb))
                    except grpc.RpcError as exc:
                        res.append(exc)
        return res

    return asyncio.run(run())


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@pytest.fixture(params=["sync", "aio"])
def mode(request) -> str:
    return request.param


def test_split_ratio_and_header_match(fleet, mode: str) -> None:
    _servers, registry = fleet
    balancer = graylb.Balancer(registry, RULES)
    n = 300
    results = run_calls(mode, balancer, [{"x-user-id": f"u{i}"} for i in range(n)])
    versions = Counter(reply.version for reply, _ in results)
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(versions["2.0.0"] - n * 0.3) <= 5 * sd, versions
    beta = run_calls(mode, balancer, [{"user-group": "beta"}] * 20)
    assert {reply.version for reply, _ in beta} == {"2.0.0"}
    assert beta[0][1].route == "beta" and beta[0][1].instance == "v2"


def test_sticky_users(fleet, mode: str) -> None:
    _, registry = fleet
    balancer = graylb.Balancer(registry, RULES)
    users = [{"x-user-id": f"user-{i}"} for i in range(60)]
    first = [reply.version for reply, _ in run_calls(mode, balancer, users)]
    again = [reply.version for reply, _ in run_calls(mode, balancer, users)]
    assert first == again


def test_lane_and_pin_reach_the_server(fleet, mode: str) -> None:
    _servers, registry = fleet
    balancer = graylb.Balancer(registry, RULES)
    ((reply, served),) = run_calls(mode, balancer, [{}], graylb.GrayContext(pins={"orders": "2.0.0"}))
    assert reply.version == "2.0.0" and served.route == "pin"
    assert "x-gray-pin" in reply.seen_metadata


def test_instance_killed_mid_traffic_zero_failed_unary(fleet, mode: str) -> None:
    servers, registry = fleet
    balancer = graylb.Balancer(registry, RULES)
    warm = run_calls(mode, balancer, [{"x-user-id": f"u{i}"} for i in range(30)])
    assert all(not isinstance(r, Exception) for r in warm)
    servers["v2"].stop()
    results = run_calls(
        mode, balancer, [{"x-user-id": f"u{i}", "user-group": "beta" if i % 4 == 0 else ""} for i in range(100)]
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    assert {reply.version for reply, _ in results} == {"1.0.0"}


def test_deadline_is_honoured(fleet, mode: str) -> None:
    servers, registry = fleet
    for s in servers.values():
        s.delay = 2.0
    balancer = graylb.Balancer(registry, RULES)
    if mode == "sync":
        with GrayChannel(balancer, "orders") as channel, pytest.raises(grpc.RpcError) as err:
            echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"), timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:

        async def run():
            async with AioGrayChannel(balancer, "orders") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"), timeout=0.2)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        asyncio.run(run())
    for s in servers.values():
        s.delay = 0.0


def test_stream_stays_on_one_instance(fleet, mode: str) -> None:
    _, registry = fleet
    balancer = graylb.Balancer(registry, RULES)
    if mode == "sync":
        with GrayChannel(balancer, "orders") as channel:
            replies = list(echo_pb2_grpc.EchoStub(channel).Count(echo_pb2.CountRequest(count=20), timeout=5))
    else:

        async def run():
            async with AioGrayChannel(balancer, "orders") as channel:
                return [
                    r async for r in echo_pb2_grpc.EchoStub(channel).Count(echo_pb2.CountRequest(count=20), timeout=5)
                ]

        replies = asyncio.run(run())
    assert [r.seq for r in replies] == list(range(20))
    assert len({r.instance for r in replies}) == 1


def test_subchannels_reused_and_closed_when_instances_leave(fleet) -> None:
    servers, registry = fleet
    balancer = graylb.Balancer(registry, {"services": {"orders": {"load_balancer": "round_robin"}}})
    with GrayChannel(balancer, "orders") as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(12):
            stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
        assert channel.subchannel_count == 3
        registry.remove("v1-b", service="orders")
        assert channel.subchannel_count == 2
        for _ in range(6):
            assert (
                stub.Say(echo_pb2.SayRequest(text="x"), timeout=5).instance
                != f"{servers['v1-b'].host}:{servers['v1-b'].port}"
            )
        assert channel.subchannel_count == 2


def test_aio_subchannels_closed_when_instances_leave(fleet) -> None:
    _servers, registry = fleet
    balancer = graylb.Balancer(registry, {"services": {"orders": {"load_balancer": "round_robin"}}})

    async def run() -> tuple[int, int, int]:
        async with AioGrayChannel(balancer, "orders") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(6):
                await stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
            before = channel.subchannel_count
            registry.remove("v1-b", service="orders")
            after_remove = channel.subchannel_count
            for _ in range(3):
                await stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
            await asyncio.sleep(0)  # let the reap task run
            return before, after_remove, len(channel._pending_close)

    before, after_remove, pending = asyncio.run(run())
    assert (before, after_remove, pending) == (3, 2, 0)


def test_aio_cancellation_ends_the_call_promptly(fleet) -> None:
    servers, registry = fleet
    for s in servers.values():
        s.delay = 5.0
    balancer = graylb.Balancer(registry, RULES)

    async def run() -> None:
        async with AioGrayChannel(balancer, "orders") as channel:
            task = asyncio.ensure_future(echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"), timeout=10))
            while sum(s.calls for s in servers.values()) == 0:  # the RPC reached a server
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(run(), timeout=4))  # the caller is not kept for the 5 s delay
    for s in servers.values():
        s.delay = 0.0
