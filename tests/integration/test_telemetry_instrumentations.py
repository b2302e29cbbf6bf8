"""graylb next to opentelemetry-instrumentation-httpx / -grpc: those instrument the transports and
channels graylb sends through (``httpx.HTTPTransport``, the channels ``grpc.insecure_channel`` /
``grpc.aio.insecure_channel`` make). For a routed attempt graylb's span is the one: the
instrumentation is suppressed underneath it (OpenTelemetry's suppress-instrumentation context
keys), so exactly one CLIENT span and one ``traceparent`` per attempt. Requests graylb does not
route stay instrumented. Each test uninstruments in teardown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import SpanKind

import graylb
from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.transports.grpc import AioGrayChannel, GrayChannel
from tests.integration import otel_sdk
from tests.integration.traced_backends import GrpcBackend, HttpBackend, graylb_spans, traceparent

HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"
GRPC_SCOPE = "opentelemetry.instrumentation.grpc"


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    otel_sdk.install()


@pytest.fixture
def httpx_instrumented() -> Iterator[None]:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def backend() -> Iterator[HttpBackend]:
    b = HttpBackend()
    yield b
    b.server.stop()


def _scope_spans(scope: str) -> list:
    return [s for s in otel_sdk.spans() if s.instrumentation_scope.name.startswith(scope)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_httpx_instrumentation_adds_no_span_and_no_header_to_a_routed_call(
    httpx_instrumented: None, backend: HttpBackend, mode: str
) -> None:
    service = f"dedupe-http-{mode}"
    balancer = graylb.Balancer(graylb.StaticDiscovery({service: [backend.entry("1.0.0", "b1")]}), services=[service])
    before_spans, before_metrics = len(_scope_spans(HTTPX_SCOPE)), otel_sdk.recorded(HTTPX_SCOPE)

    async def async_get(url: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=graylb.AsyncGrayTransport(balancer)) as client:
            return await client.get(url)

    def get(url: str) -> httpx.Response:
        if mode == "async":
            return asyncio.run(async_get(url))
        with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
            return client.get(url)

    with trace.get_tracer("test").start_as_current_span(f"parent-{mode}"):
        assert get(f"http://{service}/").status_code == 200
    (span,) = graylb_spans(service)
    assert backend.received == [traceparent(span)]  # one header line, graylb's
    assert len(_scope_spans(HTTPX_SCOPE)) == before_spans  # no second client span
    assert otel_sdk.recorded(HTTPX_SCOPE) == before_metrics  # nor a second duration measurement

    # A request graylb does not route, through the same transport, is the instrumentation's.
    assert get(f"{backend.server.url}/plain").status_code == 200
    (plain,) = _scope_spans(HTTPX_SCOPE)[before_spans:]
    assert plain.kind is SpanKind.CLIENT and backend.received[-1] == traceparent(plain)
    assert len(graylb_spans(service)) == 1


def test_a_client_instrumented_around_graylb_still_sends_one_traceparent(backend: HttpBackend) -> None:
    """``instrument_client`` on a gray client wraps graylb from the outside: its span is the
    parent of graylb's attempt spans (README: prefer ``instrument()``), and the header the
    instance receives is graylb's, written last, never two."""
    service = "dedupe-wrapped"
    balancer = graylb.Balancer(graylb.StaticDiscovery({service: [backend.entry("1.0.0", "b1")]}), services=[service])
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        HTTPXClientInstrumentor.instrument_client(client)
        try:
            assert client.get(f"http://{service}/").status_code == 200
        finally:
            HTTPXClientInstrumentor.uninstrument_client(client)
    (span,) = graylb_spans(service)
    assert backend.received == [traceparent(span)]
    outer = next(s for s in _scope_spans(HTTPX_SCOPE) if s.context.span_id == span.parent.span_id)
    assert outer.context.trace_id == span.context.trace_id


@pytest.fixture
def grpc_instrumented() -> Iterator[None]:
    sync, aio = GrpcInstrumentorClient(), GrpcAioInstrumentorClient()
    sync.instrument()
    aio.instrument()
    try:
        yield
    finally:
        sync.uninstrument()
        aio.uninstrument()


def test_grpc_instrumentation_adds_no_span_and_no_metadata_to_a_routed_call(grpc_instrumented: None) -> None:
    backend = GrpcBackend("4.0.0")
    balancer = graylb.Balancer(graylb.StaticDiscovery({"dedupe-rpc": [backend.entry("r1")]}))
    before = len(_scope_spans(GRPC_SCOPE))
    try:
        with GrayChannel(balancer, "dedupe-rpc") as channel:  # sub-channels made by the instrumented grpc
            stub = echo_pb2_grpc.EchoStub(channel)
            unary = json.loads(stub.Say(echo_pb2.SayRequest(text="x"), timeout=5).text)
            future = json.loads(stub.Say.future(echo_pb2.SayRequest(text="x"), timeout=5).result().text)

        async def run() -> dict:
            async with AioGrayChannel(balancer, "dedupe-rpc") as channel:
                return json.loads((await echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.SayRequest(text="x"))).text)

        aio = asyncio.run(run())
    finally:
        backend.server.stop(None)
    spans = graylb_spans("dedupe-rpc")
    assert len(spans) == 3
    assert sorted(seen["traceparent"][0] for seen in (unary, future, aio)) == sorted(traceparent(s) for s in spans)
    assert all(len(seen["traceparent"]) == 1 for seen in (unary, future, aio))
    assert len(_scope_spans(GRPC_SCOPE)) == before
