"""Client spans: one CLIENT span per attempt, made by graylb through opentelemetry-api, carrying
the version that served it; its context goes out as ``traceparent`` (the global propagator), so
a trace crosses hops -- HTTP and gRPC -- with no other instrumentation."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing.http_server import serve_wsgi
from graylb.transports.grpc import AioGrayChannel, GrayChannel
from tests.conftest import wait_until
from tests.integration import otel_sdk
from tests.integration.traced_backends import (
    GrpcBackend,
    HttpBackend,
    graylb_spans,
    trace_id,
    traceparent,
)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    otel_sdk.install()


# -- HTTP -------------------------------------------------------------------------------------


@pytest.fixture
def backends() -> Iterator[list[HttpBackend]]:
    made: list[HttpBackend] = []
    yield made
    for b in made:
        b.server.stop()


def _canary_setup(service: str, backends: list[HttpBackend]) -> tuple[graylb.Balancer, HttpBackend, HttpBackend]:
    stable, canary = HttpBackend(200), HttpBackend(503)
    backends += [stable, canary]
    registry = graylb.StaticDiscovery({service: [stable.entry("1.4.2", "s1"), canary.entry("2.0.0", "c1")]})
    rules = {
        "services": {
            service: {
                "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
                "default": "stable",
                "routes": [{"name": "beta", "match": [{"headers": {"g": "beta"}}], "to": [{"subset": "canary"}]}],
                "retries": {"attempts": 2, "on": [503]},
            }
        }
    }
    return graylb.Balancer(registry, rules), stable, canary


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_client_span_per_attempt_with_the_version_that_served_it(backends: list[HttpBackend], mode: str) -> None:
    service = f"spans-{mode}"
    balancer, stable, canary = _canary_setup(service, backends)
    tracer = trace.get_tracer("test")

    def sync_call() -> httpx.Response:
        with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
            return client.get(f"http://{service}/orders?id=7", headers={"g": "beta"})

    async def async_call() -> httpx.Response:
        async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)) as client:
            return await client.get(f"http://{service}/orders?id=7", headers={"g": "beta"})

    with tracer.start_as_current_span(f"checkout-{mode}") as parent:
        response = sync_call() if mode == "sync" else asyncio.run(async_call())
    assert response.status_code == 200

    first, second = graylb_spans(service)
    (app_span,) = otel_sdk.spans(f"checkout-{mode}")
    for span in (first, second):
        assert span.kind is SpanKind.CLIENT and span.name == "GET"
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert span.attributes["graylb.route"] == "beta" and span.attributes["url.full"] == (
            f"http://{service}/orders?id=7"
        )
        assert span.attributes["server.address"] == service and span.attributes["http.request.method"] == "GET"
    assert (first.attributes["graylb.subset"], first.attributes["graylb.version"]) == ("canary", "2.0.0")
    assert (first.attributes["graylb.instance"], first.attributes["graylb.attempt"]) == ("c1", 1)
    assert first.attributes["http.response.status_code"] == 503 and first.attributes["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert (second.attributes["graylb.version"], second.attributes["graylb.instance"]) == ("1.4.2", "s1")
    assert (second.attributes["graylb.attempt"], second.attributes["http.request.resend_count"]) == (2, 1)
    assert second.attributes["http.response.status_code"] == 200 and "error.type" not in second.attributes
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes["network.peer.address"], second.attributes["network.peer.port"]) == (
        stable.server.host,
        stable.server.port,
    )
    # each instance received exactly one traceparent: its own attempt's span
    assert canary.received == [traceparent(first)]
    assert stable.received == [traceparent(second)]
    # the caller's span still gets the summary of the call
    assert app_span.attributes["graylb.version"] == "1.4.2" and app_span.attributes["graylb.attempts"] == 2


def test_a_failed_attempt_span_records_the_exception(backends: list[HttpBackend]) -> None:
    dead = HttpBackend()
    dead.server.stop()
    registry = graylb.StaticDiscovery({"dead": [dead.entry("1.0.0", "d1")]})
    balancer = graylb.Balancer(registry, {"services": {"dead": {"retries": {"attempts": 0}}}})
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        with pytest.raises(httpx.ConnectError):
            client.get("http://dead/")
    (span,) = graylb_spans("dead")
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "ConnectError"
    assert span.parent is None  # no caller span: graylb's is the root
    assert [e.name for e in span.events] == ["exception"]


def test_without_an_sdk_nothing_is_injected_and_telemetry_is_off() -> None:
    script = textwrap.dedent(
        """
        import httpx, graylb
        from graylb import telemetry
        from graylb.testing import serve_wsgi
        seen = []
        def app(environ, start):
            seen.append(sorted(k for k in environ if k.startswith("HTTP_")))
            start("200 OK", [])
            return [b"ok"]
        server = serve_wsgi(app)
        registry = graylb.StaticDiscovery({"orders": [{"host": server.host, "port": server.port, "version": "1"}]})
        with httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, services=["orders"]))) as c:
            c.get("http://orders/")
        server.stop()
        assert telemetry.observer() is None
        print(seen[0])
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "TRACEPARENT" not in r.stdout and "HTTP_HOST" in r.stdout


# -- gRPC -------------------------------------------------------------------------------------


def test_grpc_unary_retry_is_one_span_per_attempt_with_rpc_attributes() -> None:
    good, gone = GrpcBackend("2.1.0"), GrpcBackend("2.0.0", stopped=True)
    registry = graylb.StaticDiscovery({"rpc-spans": [gone.entry("gone"), good.entry("good")]})
    rules = {
        "services": {"rpc-spans": {"load_balancer": "round_robin", "outlier_detection": {"consecutive_errors": 99}}}
    }
    balancer = graylb.Balancer(registry, rules)
    try:
        with GrayChannel(balancer, "rpc-spans") as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            replies = [stub.Say(echo_pb2.SayRequest(text="x"), timeout=5) for _ in range(2)]
    finally:
        good.server.stop(None)
    spans = graylb_spans("rpc-spans")
    failed = [s for s in spans if s.attributes["graylb.instance"] == "gone"]
    served = [s for s in spans if s.attributes["graylb.instance"] == "good"]
    # round robin: each call that met the dead instance first was retried onto the live one
    assert len(served) == 2 and 1 <= len(failed) <= 2
    assert all(s.attributes["graylb.attempt"] == 1 for s in failed)
    assert sorted(s.attributes["graylb.attempt"] for s in served) == sorted([2] * len(failed) + [1] * (2 - len(failed)))
    for span in spans:
        assert span.kind is SpanKind.CLIENT and span.name == "graylb.demo.v1.Echo/Say"
        assert (
            span.attributes["rpc.system.name"] == "grpc" and span.attributes["rpc.method"] == "graylb.demo.v1.Echo/Say"
        )
    assert failed[0].attributes["rpc.response.status_code"] == "UNAVAILABLE"
    assert failed[0].attributes["error.type"] == "UNAVAILABLE" and failed[0].status.status_code is StatusCode.ERROR
    assert failed[0].attributes["graylb.version"] == "2.0.0"
    retried = next(s for s in served if s.attributes["graylb.attempt"] == 2)
    assert retried.attributes["graylb.version"] == "2.1.0" and retried.attributes["rpc.response.status_code"] == "OK"
    # each answered attempt's span is what the server received, once, and its handler ran in that trace
    received = [json.loads(r.text) for r in replies]
    assert sorted(r["traceparent"][0] for r in received) == sorted(traceparent(s) for s in served)
    assert all(len(r["traceparent"]) == 1 for r in received)
    assert sorted(r["trace_id"] for r in received) == sorted(trace_id(s) for s in served)


def test_grpc_futures_and_aio_calls_have_their_span() -> None:
    backend = GrpcBackend("3.0.0")
    balancer = graylb.Balancer(graylb.StaticDiscovery({"rpc-shapes": [backend.entry("only")]}))
    try:
        with GrayChannel(balancer, "rpc-shapes") as channel:
            future = echo_pb2_grpc.EchoStub(channel).Say.future(echo_pb2.SayRequest(text="x"), timeout=5)
            sync_seen = json.loads(future.result().text)

        async def run() -> dict:
            async with AioGrayChannel(balancer, "rpc-shapes") as channel:
                return json.loads((await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"))).text)

        aio_seen = asyncio.run(run())
    finally:
        backend.server.stop(None)
    wait_until(lambda: len(graylb_spans("rpc-shapes")) == 2, message="both spans ended")
    spans = graylb_spans("rpc-shapes")
    assert {s.attributes["rpc.response.status_code"] for s in spans} == {"OK"}
    assert sorted([sync_seen["traceparent"][0], aio_seen["traceparent"][0]]) == sorted(traceparent(s) for s in spans)


# -- two hops: HTTP -> gRPC is one trace --------------------------------------------------------


@pytest.fixture(params=["graylb-only", "with-otel-instrumentations"])
def instrumentations(request: pytest.FixtureRequest) -> Iterator[str]:
    """Either nothing else, or opentelemetry-instrumentation-httpx and -grpc instrumenting too
    (uninstrumented in teardown)."""
    if request.param == "graylb-only":
        yield ""
        return
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    httpx_instrumentor, grpc_instrumentor = HTTPXClientInstrumentor(), GrpcInstrumentorClient()
    httpx_instrumentor.instrument()
    grpc_instrumentor.instrument()
    try:
        yield "-instrumented"
    finally:
        httpx_instrumentor.uninstrument()
        grpc_instrumentor.uninstrument()


def test_an_http_then_grpc_call_chain_is_one_trace_with_a_graylb_span_per_hop(instrumentations: str) -> None:
    gateway_service, orders_service = f"chain-gateway{instrumentations}", f"chain-orders{instrumentations}"
    registry = graylb.StaticDiscovery()
    balancer = graylb.Balancer(registry, services=[gateway_service, orders_service])
    orders = GrpcBackend("2.0.0")
    registry.add(orders.entry("orders-1"), service=orders_service)
    channel = GrayChannel(balancer, orders_service)
    stub = echo_pb2_grpc.EchoStub(channel)
    seen_by_gateway: dict[str, Any] = {}

    def gateway(environ: dict, start_response: Callable) -> list[bytes]:
        seen_by_gateway["traceparent"] = environ.get("HTTP_TRACEPARENT")
        reply = stub.Say(echo_pb2.SayRequest(text="x"), timeout=5)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [reply.text.encode()]

    gw = serve_wsgi(graylb.GrayWSGIMiddleware(gateway))
    registry.add({"host": gw.host, "port": gw.port, "version": "1.0.0", "id": "gw-1"}, service=gateway_service)
    try:
        with httpx.Client(transport=graylb.GrayTransport(balancer), timeout=5) as client:
            spans_before = len(otel_sdk.spans())
            orders_saw = client.get(f"http://{gateway_service}/").json()
    finally:
        channel.close()
        orders.server.stop(None)
        gw.stop()

    (hop1,) = graylb_spans(gateway_service)
    (hop2,) = graylb_spans(orders_service)
    # graylb's two client spans are the only spans of the call: no instrumentation added one
    assert sorted(s.name for s in otel_sdk.spans()[spans_before:]) == ["GET", "graylb.demo.v1.Echo/Say"]
    assert (hop1.name, hop1.attributes["graylb.version"], hop1.kind) == ("GET", "1.0.0", SpanKind.CLIENT)
    assert (hop2.name, hop2.attributes["graylb.version"], hop2.kind) == (
        "graylb.demo.v1.Echo/Say",
        "2.0.0",
        SpanKind.CLIENT,
    )
    assert hop1.parent is None  # the test made no span: hop 1 starts the trace
    assert hop2.context.trace_id == hop1.context.trace_id  # ONE trace
    assert hop2.parent is not None and hop2.parent.span_id == hop1.context.span_id and hop2.parent.is_remote
    assert TRACEPARENT.match(seen_by_gateway["traceparent"])
    assert seen_by_gateway["traceparent"] == traceparent(hop1)
    assert orders_saw["traceparent"] == [traceparent(hop2)]
    assert orders_saw["trace_id"] == trace_id(hop1)  # the gRPC server interceptor extracted it too


# -- the server side: graylb's middleware makes the caller's trace context current -------------

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_asgi_and_wsgi_middleware_continue_the_callers_trace_unless_a_span_is_current() -> None:
    seen: list[trace.SpanContext] = []

    async def asgi_app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span().get_span_context())

    def wsgi_app(environ: dict, start_response: Callable) -> list[bytes]:
        seen.append(trace.get_current_span().get_span_context())
        start_response("200 OK", [])
        return [b""]

    asgi = graylb.GrayASGIMiddleware(asgi_app)
    wsgi = graylb.GrayWSGIMiddleware(wsgi_app)
    scope = {"type": "http", "headers": [(b"host", b"x"), (b"traceparent", PARENT.encode())]}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_TRACEPARENT": PARENT}
    asyncio.run(asgi(scope, None, None))
    wsgi(environ, lambda *a: None)
    for ctx in seen:
        assert (ctx.trace_id, ctx.span_id, ctx.is_remote) == (
            0x0AF7651916CD43DD8448EB211C80319C,
            0xB7AD6B7169203331,
            True,
        )
    assert not trace.get_current_span().get_span_context().is_valid  # nothing left attached

    # A span already current -- an OpenTelemetry server instrumentation outside graylb's
    # middleware, which extracted the caller's context itself -- stays the parent.
    seen.clear()
    with trace.get_tracer("test").start_as_current_span("server") as server_span:
        asyncio.run(asgi(scope, None, None))
        wsgi(environ, lambda *a: None)
    assert [ctx.span_id for ctx in seen] == [server_span.get_span_context().span_id] * 2
