"""Traced test backends: an HTTP and a gRPC server that report the ``traceparent`` they
received (and, for gRPC, the trace their handler ran in), and readers of graylb's spans."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from graylb._proto.graylb.demo.v1 import echo_pb2, echo_pb2_grpc
from graylb.testing.http_server import WSGIServer, serve_wsgi
from graylb.transports.grpc_interceptors import GrayServerInterceptor
from tests.integration import otel_sdk


def graylb_spans(service: str) -> list[ReadableSpan]:
    """graylb's attempt spans for ``service``, in the order they started."""
    found = [
        s
        for s in otel_sdk.spans()
        if s.instrumentation_scope.name == "graylb" and s.attributes.get("graylb.service") == service
    ]
    return sorted(found, key=lambda s: s.start_time)


def traceparent(span: ReadableSpan) -> str:
    """The W3C header for ``span`` (the SDK sets the sampled and random-trace-id flags: 03)."""
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def span_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


class HttpBackend:
    """A WSGI server that answers ``status`` and remembers the ``traceparent`` it received
    (the test server joins repeated header lines with ",", so a duplicate would show)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[str | None] = []
        self.server: WSGIServer = serve_wsgi(self.app)

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        self.received.append(environ.get("HTTP_TRACEPARENT"))
        start_response(f"{self.status} X", [("Content-Type", "text/plain")])
        return [b"ok"]

    def entry(self, version: str, key: str) -> dict[str, Any]:
        return {"host": self.server.host, "port": self.server.port, "version": version, "id": key}


class TracedEcho(echo_pb2_grpc.EchoServicer):
    """Answers with the ``traceparent`` metadata it received and the trace its handler runs in."""

    def __init__(self, version: str) -> None:
        self.version = version

    def Say(self, request, context):
        received = [v for k, v in context.invocation_metadata() if k == "traceparent"]
        current = trace.get_current_span().get_span_context()
        seen = {"traceparent": received, "trace_id": format(current.trace_id, "032x") if current.is_valid else None}
        return echo_pb2.SayReply(service="orders", version=self.version, text=json.dumps(seen))


class GrpcBackend:
    def __init__(self, version: str, *, stopped: bool = False) -> None:
        self.version = version
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[GrayServerInterceptor()],
            options=[("grpc.so_reuseport", 0)],
        )
        echo_pb2_grpc.add_EchoServicer_to_server(TracedEcho(version), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        if stopped:
            self.server.stop(None).wait()

    def entry(self, key: str) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "version": self.version, "id": key}
