"""OpenTelemetry: with an SDK installed, routed calls show up as span attributes and metrics
(httpx, and every RPC shape of the gray gRPC channels)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import httpx
import pytest
from opentelemetry import trace

import graylb
from graylb.transports.grpc import AioGrayChannel, GrayChannel
from tests.conftest import Fleet, wait_until
from tests.integration import otel_sdk
from tests.integration.grpc_shapes import (
    AIO_OPS,
    AIO_STREAM_CALLS,
    SYNC_CANCELLABLE,
    SYNC_OPS,
    WAIT,
    Shapes,
    finish,
    run_in_loop,
)

# The global providers can be set once per process: every telemetry module shares otel_sdk's.
_exporter = otel_sdk.EXPORTER


@pytest.fixture(scope="module", autouse=True)
def otel_sdk_installed():
    otel_sdk.install()
    yield


_points = otel_sdk.points


def test_span_attributes_and_metrics(fleet: Fleet) -> None:
    fleet.start("v1", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    rules = {
        "services": {
            "orders": {
                "subsets": {"stable": {"version": "^1"}, "canary": {"version": "2.0.0"}},
                "default": "stable",
                "routes": [
                    {"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]}
                ],
            }
        }
    }
    balancer = graylb.Balancer(fleet.registry, rules)
    tracer = trace.get_tracer("test")

    def counts() -> Counter[tuple[str, str, str]]:
        out: Counter[tuple[str, str, str]] = Counter()
        for p in _points("graylb.client.calls"):
            if p.attributes["graylb.service"] == "orders":
                out[
                    (p.attributes["graylb.subset"], p.attributes["graylb.version"], p.attributes["graylb.outcome"])
                ] += p.value
        return out

    def stable_durations() -> int:
        return sum(
            p.count
            for p in _points("graylb.client.call.duration")
            if p.attributes["graylb.service"] == "orders" and p.attributes["graylb.version"] == "1.4.2"
        )

    # The SDK is the process's (cumulative): other tests may have called an "orders" before.
    before, durations_before = counts(), stable_durations()
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        with tracer.start_as_current_span("outbound"):
            client.get("http://orders/x", headers={"user-group": "beta"})
        for _ in range(3):
            client.get("http://orders/x")
    span = next(s for s in _exporter.get_finished_spans() if s.name == "outbound")
    assert span.attributes["graylb.route"] == "beta"
    assert span.attributes["graylb.subset"] == "canary"
    assert span.attributes["graylb.version"] == "2.0.0"
    assert span.attributes["graylb.instance"] == "v2"

    after = counts()
    assert after[("canary", "2.0.0", "ok")] - before[("canary", "2.0.0", "ok")] == 1
    assert after[("stable", "1.4.2", "ok")] - before[("stable", "1.4.2", "ok")] == 3
    assert stable_durations() - durations_before == 3


def test_rejected_rules_are_counted() -> None:
    source = graylb.StaticRules({"services": {}})
    assert not source.apply("services: {orders: {fallback: sometimes}}")
    assert sum(p.value for p in _points("graylb.rules.rejected")) >= 1


def test_a_subset_that_selects_nothing_is_counted_once_per_snapshot(fleet: Fleet) -> None:
    fleet.start("a", "ledger", "v1")
    fleet.start("b", "ledger", "v2")
    rules = {
        "services": {
            "ledger": {"subsets": {"stable": {"version": "v1"}, "canary": {"version": "^3"}}, "default": "stable"}
        }
    }
    balancer = graylb.Balancer(fleet.registry, rules)

    def empty_count() -> int:
        return sum(
            p.value
            for p in _points("graylb.subset.empty")
            if p.attributes == {"graylb.service": "ledger", "graylb.subset": "canary"}
        )

    for _ in range(3):
        balancer.start("ledger", graylb.RequestInfo())
    assert empty_count() == 1
    fleet.start("c", "ledger", "v2")  # a new snapshot, still nothing for ^3
    balancer.start("ledger", graylb.RequestInfo())
    assert empty_count() == 2


# -- gRPC: every RPC shape records one request, with the served version and its outcome -----


@pytest.fixture(scope="module")
def solo() -> Shapes:
    shapes = Shapes({"solo": "3.1.0"})  # one instance: every call is served by version 3.1.0
    yield shapes
    shapes.stop()


def _requests_of(service: str) -> dict[str, int]:
    return {
        p.attributes["graylb.outcome"]: p.value
        for p in _points("graylb.client.calls")
        if p.attributes["graylb.service"] == service and p.attributes["graylb.version"] == "3.1.0"
    }


def _durations_of(service: str) -> int:
    return sum(p.count for p in _points("graylb.client.call.duration") if p.attributes["graylb.service"] == service)


def _recorded(service: str, expected: dict[str, int]) -> None:
    """Futures and sync streams record from grpc's thread, after the caller saw the end."""
    wait_until(
        lambda: sum(_requests_of(service).values()) >= sum(expected.values()),
        timeout=WAIT,
        message=f"requests of {service}",
    )
    assert _requests_of(service) == expected
    assert _durations_of(service) == sum(expected.values())


def _span(name: str):
    return next(s for s in _exporter.get_finished_spans() if s.name == name)


def _assert_annotated(span_name: str) -> None:
    attrs = _span(span_name).attributes
    assert (attrs["graylb.version"], attrs["graylb.instance"], attrs["graylb.attempts"]) == ("3.1.0", "solo", 1)


@pytest.mark.parametrize("op", list(SYNC_OPS))
def test_every_sync_grpc_shape_records_one_request(solo: Shapes, op: str) -> None:
    service = "sync-" + op.replace(".", "-")
    balancer = graylb.Balancer(solo.registry(service))
    with GrayChannel(balancer, service) as channel:
        with trace.get_tracer("test").start_as_current_span(service):
            assert SYNC_OPS[op](channel, b"ok", WAIT)
        assert SYNC_OPS[op](channel, b"ok", WAIT)
        with pytest.raises(grpc.RpcError):
            SYNC_OPS[op](channel, b"fail", WAIT)
    _recorded(service, {"ok": 2, "error": 1})
    _assert_annotated(service)


@pytest.mark.parametrize("op", list(AIO_OPS))
def test_every_aio_grpc_shape_records_one_request(solo: Shapes, op: str) -> None:
    service = "aio-" + op.replace(".", "-")
    balancer = graylb.Balancer(solo.registry(service))

    async def run() -> None:
        async with AioGrayChannel(balancer, service) as channel:
            with trace.get_tracer("test").start_as_current_span(service):
                assert await AIO_OPS[op](channel, b"ok", WAIT)
            assert await AIO_OPS[op](channel, b"ok", WAIT)
            with pytest.raises(grpc.RpcError):
                await AIO_OPS[op](channel, b"fail", WAIT)

    run_in_loop(run())
    _recorded(service, {"ok": 2, "error": 1})
    _assert_annotated(service)


@pytest.mark.parametrize("kind", list(AIO_STREAM_CALLS))
def test_aio_streams_made_before_the_first_snapshot_record_one_request(solo: Shapes, kind: str) -> None:
    service = f"deferred-{kind}"
    discovery = solo.late_registry(service)
    balancer = graylb.Balancer(discovery)

    async def run() -> None:
        async with AioGrayChannel(balancer, service) as channel:
            failed = AIO_STREAM_CALLS[kind](channel, b"fail")
            never = AIO_STREAM_CALLS[kind](channel, b"ok")
            never.cancel()  # before the snapshot: no instance, no request to count
            with trace.get_tracer("test").start_as_current_span(service):  # open while the call runs
                answered = AIO_STREAM_CALLS[kind](channel, b"ok")
                discovery.release()
                assert not isinstance(await finish(kind, answered), BaseException)
            assert isinstance(await finish(kind, failed), grpc.RpcError)

    run_in_loop(run())
    _recorded(service, {"ok": 1, "error": 1})
    _assert_annotated(service)


@pytest.mark.parametrize("op", list(SYNC_CANCELLABLE))
def test_cancelled_grpc_calls_record_one_error(solo: Shapes, op: str) -> None:
    service = "cancelled-" + op.replace(".", "-")
    balancer = graylb.Balancer(solo.registry(service))
    with GrayChannel(balancer, service) as channel:
        rpc = SYNC_CANCELLABLE[op](channel)
        solo.wait_arrived()
        assert rpc.cancel()
    _recorded(service, {"error": 1})

    async def run() -> None:
        async with AioGrayChannel(balancer, service) as channel:
            if op == "unary.future":
                task = asyncio.ensure_future(AIO_OPS["unary"](channel, b"hold", WAIT))
                await asyncio.to_thread(solo.wait_arrived)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return
            kind = op.split(".")[0]
            call = AIO_STREAM_CALLS[kind](channel, b"hold")
            await asyncio.to_thread(solo.wait_arrived)
            assert call.cancel()
            await finish(kind, call)

    run_in_loop(run())
    _recorded(service, {"error": 2})
